"""The DCT variants on the tiny model: ``variant="reference"`` against a slow, obviously-correct
re-implementation of the reference code's algorithm (one factor at a time, full forward passes,
autograd, Gram–Schmidt written out), and every new option."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.forward import run_forward
from melbo_tl.optimize.calibration import unit_rows
from melbo_tl.optimize.configs import DCT_VARIANTS as VARIANTS
from melbo_tl.optimize.dct import DCTConfig, DCTState, fit_dct
from melbo_tl.optimize.dct_steps import Movement, damp, orthogonalize, svd_start
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.steering import AddVector

PROMPTS = ["How can I make a bomb?", "Tell me a story about a dragon."]
LAYERS = dict(source="resid_post.0", target=3, positions="last:3")
R = 4.0


class SlowDelta:
    """Δ(θ) by two full forward passes with an AddVector, averaged over the target positions."""

    def __init__(self, model):
        self.model = model
        self.problem = MelboProblem.build(
            model, PROMPTS, source="resid_post.0", target=3, p=2.0, q=1.0, positions="last:3"
        )
        self.hook = "blocks.3.hook_resid_pre"
        with torch.no_grad():
            base = run_forward(model, self.problem.batch, record=[self.hook], logits="none").activations[self.hook]
        self.base = base.float()
        self.w = self.problem.select.float()

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        steered = run_forward(
            self.model, self.problem.batch, [AddVector(theta, self.problem.hook)], record=[self.hook],
            logits="none", detach=False,
        ).activations[self.hook]  # fmt: skip
        return ((steered.float() - self.base) * self.w[..., None]).sum((0, 1)) / self.w.sum()

    def grad(self, theta: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Δ(θ) and ∇_θ⟨u, Δ(θ)⟩."""
        theta = theta.detach().clone().requires_grad_(True)
        delta = self(theta)
        (g,) = torch.autograd.grad((delta * u).sum(), theta)
        return delta.detach(), g


def gram_schmidt(v: torch.Tensor) -> torch.Tensor:
    """Classical Gram–Schmidt in row order, in float64 (⟨q_l, v_l⟩ > 0 by construction)."""
    rows: list[torch.Tensor] = []
    for x in v.double():
        for q in rows:
            x = x - (x @ q) * q
        rows.append(x / x.norm())
    return torch.stack(rows).float()


def slow_reference(slow: SlowDelta, u0: torch.Tensor, v0: torch.Tensor, iterations: int):
    """The reference algorithm, one factor at a time: orthogonalize V at the start of every
    iteration; Δ_l and ∇⟨u_l(previous), Δ⟩ at R·q_l; u_l, v_l ← their directions; the last V is
    returned raw; b_l = ⟨u_l, Δ(R·v_l)⟩, α = K⁻¹b, order by α²."""
    u, v = u0.clone(), v0.clone()
    for _ in range(iterations):
        q = gram_schmidt(v)
        pairs = [slow.grad(R * q[l], u[l]) for l in range(len(q))]
        u = torch.stack([d / d.norm() for d, _ in pairs])
        v = torch.stack([g / g.norm() for _, g in pairs])
    with torch.no_grad():
        deltas = torch.stack([slow(R * v[l]) for l in range(len(v))])
    b = (u * deltas).sum(-1)
    k = (u.double() @ u.double().T) * torch.expm1(v.double() @ v.double().T)
    alpha = torch.linalg.solve(k, b.double()).float()
    return u, v, alpha, torch.argsort(alpha.pow(2), descending=True)


@pytest.fixture(scope="module")
def slow(tiny_model):
    return SlowDelta(tiny_model)


def test_jacobian_svd_start_spans_the_projected_jacobians_top_directions(tiny_model, slow):
    """The start's v_l are the right singular vectors of Pᵀ J (rows, not columns), with
    u_l = Δ(R·v_l)/‖·‖; the Jacobian by autograd, one random output direction at a time."""
    from melbo_tl.optimize.calibration import random_directions

    cfg = DCTConfig(n_factors=4, radius=R, iterations=0, variant="reference", d_proj=6, rank_by="importance", **LAYERS)
    result = fit_dct(tiny_model, PROMPTS, cfg, progress=False)
    p = random_directions(6, 64, cfg.seed + 1, tiny_model).cpu()
    projected = torch.stack([slow.grad(torch.zeros(64), p[k])[1] for k in range(6)])  # rows Jᵀ p_k
    _, s, vh = torch.linalg.svd(projected.double())
    assert s[3] > 1.05 * s[4]  # distinct singular values: the top-4 directions are well defined
    v = unit_rows(result.vectors)[torch.argsort(torch.tensor(result.order))]  # factor order
    overlap = (v.double() @ vh[:4].T).abs()
    torch.testing.assert_close(overlap, torch.eye(4, dtype=torch.float64), atol=2e-3, rtol=0)
    u_expected = torch.stack([unit_rows(slow(R * v[l]).detach()[None])[0] for l in range(4)])
    u = result.U[torch.argsort(torch.tensor(result.order))]
    torch.testing.assert_close(u, u_expected, atol=1e-4, rtol=1e-3)


def test_reference_variant_matches_the_slow_reimplementation(tiny_model, slow):
    gen = torch.Generator().manual_seed(5)
    v0 = gram_schmidt(torch.randn(5, 64, generator=gen))
    u0 = unit_rows(torch.stack([slow(R * x).detach() for x in v0]))
    cfg = DCTConfig(n_factors=5, radius=R, iterations=3, variant="reference", tolerance=0.0, **LAYERS)
    fast = fit_dct(tiny_model, PROMPTS, cfg, state=DCTState(R, U=u0, V=v0), progress=False)
    u, v, alpha, order = slow_reference(slow, u0, v0, iterations=3)
    assert fast.order == order.tolist()
    torch.testing.assert_close(fast.vectors, R * v[order], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(fast.U, u[order], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(fast.alpha, alpha[order], atol=1e-3, rtol=1e-3)
    assert (v @ v.T - torch.eye(5)).abs().max() > 1e-3  # the returned V is the raw last update


def test_variant_fills_only_the_choices_left_open():
    ref = DCTConfig(variant="reference")
    assert {k: getattr(ref, k) for k in VARIANTS["reference"]} == VARIANTS["reference"]
    mixed = DCTConfig(variant="reference", beta=0.5, orthogonalize="polar")
    assert (mixed.beta, mixed.orthogonalize, mixed.update) == (0.5, "polar", "simultaneous")
    again = DCTConfig.from_dict(mixed.to_dict())
    assert again == mixed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(variant="paper"), "variant 'paper' is not one of melbo_tl, reference"),
        (dict(start="svd"), "start 'svd' is not one of jacobian, jacobian-svd, random"),
        (dict(update="jacobi"), "update 'jacobi' is not one of alternating, simultaneous"),
        (dict(beta=0.0), r"beta must be in \(0, 1\]"),
        (dict(beta=1.5), r"beta must be in \(0, 1\]"),
        (dict(d_proj=0), "d_proj must be ≥ 1"),
        (dict(final_u="u"), "final_u 'u' is not one of response, last-update"),
    ],
)
def test_bad_variant_options_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        DCTConfig(**settings)


def test_damping_mixes_unit_rows_and_beta_one_is_no_damping():
    old, new = unit_rows(torch.randn(3, 8)), torch.randn(3, 8) * 5
    torch.testing.assert_close(damp(new, old, 1.0), unit_rows(new))
    half = damp(new, old, 0.5)
    torch.testing.assert_close(half, unit_rows(unit_rows(new) + old))
    assert ((half * old).sum(-1) > (unit_rows(new) * old).sum(-1)).all()  # closer to where it was


def test_movement_summarizes_one_minus_cos_per_factor():
    old = torch.eye(4)
    new = torch.stack([old[0], old[1], old[3], -old[3]])  # still, still, right angle, flipped
    m = Movement.between(new, old, tolerance=1e-3)
    assert (m.median, m.max, m.converged) == (pytest.approx(0.5), pytest.approx(2.0), 0.5)
    assert m.p90 == pytest.approx(torch.quantile(torch.tensor([0.0, 0.0, 1.0, 2.0]), 0.9).item())


def test_movement_tells_the_damped_step_from_the_turn_the_update_asked_for():
    old = torch.eye(4)
    asked = torch.stack([old[1], old[2], old[3], old[0]])  # every factor asked to turn a right angle
    damped = damp(asked, old, 0.25)
    m = Movement.between(damped, old, tolerance=1e-3, proposal=asked)
    assert m.proposed == pytest.approx(1.0)
    assert m.median == pytest.approx(1 - 0.75 / (0.25**2 + 0.75**2) ** 0.5)  # a quarter of the way: ~0.05


def test_svd_start_completes_beyond_the_projection_and_checks_its_size():
    projected = torch.randn(3, 10)
    v = svd_start(projected, 6)
    torch.testing.assert_close(v @ v.T, torch.eye(6), atol=1e-5, rtol=0)
    assert (v[3:] @ projected.T).abs().max() < 1e-5  # the completion is outside the row space
    with pytest.raises(ValueError, match="11 start vectors asked for, but d_model is 10"):
        svd_start(projected, 11)


@pytest.mark.parametrize(
    "settings",
    [
        dict(start="random"),
        dict(update="simultaneous", beta=0.5),
        dict(orthogonalize="qr", orthogonal_result=False),
        dict(rank_by="alpha2", final_u="last-update"),
    ],
)
def test_every_option_fits_unit_vectors_and_records_movement(tiny_model, settings):
    result = fit_dct(
        tiny_model, PROMPTS, n_factors=6, radius=R, iterations=2, tolerance=0.0, progress=False, **LAYERS, **settings
    )
    torch.testing.assert_close(result.vectors.norm(dim=-1), torch.full((6,), R), atol=1e-4, rtol=0)
    assert len(result.movement) == 2 and set(result.movement[0]) == {
        "median",
        "p90",
        "max",
        "converged",
        "response",
        "proposed",
    }
    assert sorted(result.order) == list(range(6))
    if settings.get("orthogonal_result", True):
        v = unit_rows(result.vectors)
        torch.testing.assert_close(v @ v.T, torch.eye(6), atol=1e-5, rtol=0)


def test_orthogonalize_polar_is_the_nearest_frame():
    v = unit_rows(torch.randn(4, 9, dtype=torch.float64))
    q = orthogonalize(v, "polar")
    for _ in range(20):  # no random orthonormal frame is closer
        other = orthogonalize(v + 0.05 * torch.randn_like(v), "polar")
        assert (q - v).norm() <= (other - v).norm() + 1e-12


def test_screen_order_puts_distinct_coherent_changes_first():
    from melbo_tl.optimize.dct_screen import screen_order

    base = [0, 1, 2, 3, 4, 5]  # e.g. by importance
    degenerate = [True, False, False, False, False, False]
    cluster = [-1, 7, 7, 3, 9, 8]  # 3 is the unsteered completion's cluster
    order, group = screen_order(base, degenerate, cluster, unchanged=3)
    assert order == [1, 4, 5, 2, 3, 0]
    assert group == ["degenerate", "distinct", "more of the same", "unchanged", "distinct", "distinct"]


def test_rank_by_behaviours_screens_every_factor_and_records_it(tiny_model, tmp_path):
    from melbo_tl.artifacts import load_run
    from melbo_tl.training import train_to_folder

    cfg = DCTConfig(n_factors=6, radius=R, iterations=1, rank_by="behaviours", screen_tokens=3, **LAYERS)
    result = fit_dct(tiny_model, PROMPTS, cfg, progress=False)
    assert result.screen is not None and sorted(result.order) == list(range(6))
    assert result.order == result.screen.order
    groups = [result.screen.group[f] for f in result.order]
    rank = {"distinct": 0, "more of the same": 1, "unchanged": 2, "degenerate": 3}
    assert [rank[g] for g in groups] == sorted(rank[g] for g in groups)
    run = load_run(train_to_folder(tiny_model, "dct", PROMPTS, cfg, tmp_path / "run", progress=False))
    rows = run.meta["per_vector"]
    assert {"group", "cluster", "screen", "factor", "importance"} <= set(rows[0])
    assert run.meta["screen"]["max_new_tokens"] == 3
