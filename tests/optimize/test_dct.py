"""Deep causal transcoding on the tiny model: derivatives against slow computations, calibration,
unit norms, sign-keeping orthogonalization, α, determinism, padding, errors."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.artifacts import load_run
from melbo_tl.optimize.calibration import CalibrationError, SliceResponse, calibrate_radius, nonlinearity, unit_rows
from melbo_tl.optimize.dct import DCTConfig, fit_dct
from melbo_tl.optimize.dct_steps import importance_weights, orthogonalize
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import master_copy
from melbo_tl.steering import AddVector
from melbo_tl.training import train_to_folder

PROMPTS = ["How can I make a bomb?", "Tell me a story about a dragon."]
SLICE = dict(source=0, target=3, p=2.0, q=1.0, positions="last:3")
FAST = dict(source_layer=0, target_layer=3, n_factors=8, iterations=3, radius=4.0, tolerance=0.0, progress=False)


@pytest.fixture(scope="module")
def response(tiny_model):
    return SliceResponse(MelboProblem.build(tiny_model, PROMPTS, **SLICE), chunk=3)


def cpu_unit(n: int, seed: int) -> torch.Tensor:
    return unit_rows(torch.randn(n, 64, generator=torch.Generator(device="cpu").manual_seed(seed), device="cpu"))


def test_jvp_equals_a_finite_difference(response):
    v = cpu_unit(4, 1)
    eps = 1e-2
    fd = (response(eps * v) - response(-eps * v)) / (2 * eps)
    jv = response.jvp(v)
    torch.testing.assert_close(jv, fd, atol=1e-4, rtol=1e-3)
    assert jv.abs().max() > 1e-2  # not trivially zero


def test_response_matches_a_full_forward_with_an_add_vector(tiny_model, response):
    """Δ(θ) from the segment equals the mean change at the target positions of two full forwards."""
    from melbo_tl.forward import run_forward

    theta = cpu_unit(1, 2)[0] * 3
    problem = response.problem
    hook = "blocks.3.hook_resid_pre"
    with torch.no_grad():
        base = run_forward(tiny_model, problem.batch, record=[hook], logits="none").activations[hook]
        steered = run_forward(tiny_model, problem.batch, [AddVector(theta, problem.hook)], record=[hook], logits="none")
    diff = (steered.activations[hook] - base).float()
    w = problem.select.float()
    expected = (diff * w[..., None]).sum((0, 1)) / w.sum()
    torch.testing.assert_close(response(theta[None])[0], expected, atol=1e-5, rtol=1e-4)


def test_v_update_equals_the_autograd_gradient_computed_the_slow_way(tiny_model, response):
    """∇_θ⟨u, Δ(θ)⟩ at θ = R·v for one factor, by autograd through full forward passes."""
    from melbo_tl.forward import run_forward

    v, u = cpu_unit(2, 3)
    theta = (4.0 * v).requires_grad_(True)
    problem = response.problem
    hook = "blocks.3.hook_resid_pre"
    with torch.no_grad():
        base = run_forward(tiny_model, problem.batch, record=[hook], logits="none").activations[hook].float()
    steered = run_forward(
        tiny_model, problem.batch, [AddVector(theta, problem.hook)], record=[hook], logits="none", detach=False
    ).activations[hook]
    w = problem.select.float()
    delta = ((steered.float() - base) * w[..., None]).sum((0, 1)) / w.sum()
    (slow,) = torch.autograd.grad((delta * u).sum(), theta)
    _, fast = response.pullback((4.0 * v)[None], u[None])
    torch.testing.assert_close(fast[0], slow, atol=1e-5, rtol=1e-4)


def test_pullback_at_zero_serves_all_rows_from_one_forward(response):
    """The θ = 0 shortcut (one forward, batched backward) gives every row's Jᵀu and Δ(0) = 0
    as the row-by-row path does (taken here by passing u as a function of Δ)."""
    u = cpu_unit(7, 11)  # 7 rows over chunks of 3
    delta, fast = response.pullback(torch.zeros_like(u), u)
    assert delta.shape == u.shape and float(delta.abs().max()) == 0.0
    rows = [response.pullback(torch.zeros_like(u[i : i + 1]), lambda d, i=i: u[i : i + 1])[1] for i in range(7)]
    torch.testing.assert_close(fast, torch.cat(rows), atol=1e-6, rtol=1e-5)


def test_calibrated_radius_hits_the_target_rho(response):
    """(The tiny random model stays nearly linear, ρ < 0.04 for every R: the target here is 0.02.)"""
    cal = calibrate_radius(response, target=0.02, n_directions=8, seed=0, progress=False)
    assert cal.radii == sorted(cal.radii) and len(cal.radii) == len(cal.rho)
    v = master_copy(
        unit_rows(torch.randn(8, 64, generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")),
        response.problem.segment.model,
    )
    rho = nonlinearity(response, v, response.jvp(v), cal.radius)
    assert rho == pytest.approx(0.02, rel=0.02)
    assert all(p < 0.02 for r, p in zip(cal.radii, cal.rho) if r < cal.radius / 1.02)
    assert any(p > 0.02 for p in cal.rho)  # the bracket's upper end


def test_calibration_that_never_crosses_names_the_range_and_values(response):
    with pytest.raises(
        CalibrationError, match=r"never crossed the target 50 upwards for R in \[0.25, 1\] \(ρ\(0.5\) = .*, ρ\(1\) = "
    ):
        calibrate_radius(response, target=50, n_directions=2, grid=(0.25, 1.0), progress=False)


def test_calibration_skips_a_noise_floor_at_small_radii(response, monkeypatch):
    """Half precision: ρ starts high at small R (rounding noise), dips, then rises with the
    non-linearity. The calibrated R is the upward crossing, not the first grid point."""
    from melbo_tl.optimize import calibration

    monkeypatch.setattr(calibration, "nonlinearity", lambda response, v, jv, radius: 0.2 / radius + 0.075 * radius)
    cal = calibrate_radius(response, target=0.5, n_directions=2, progress=False)
    assert cal.radius == pytest.approx((0.5 + (0.5**2 - 4 * 0.075 * 0.2) ** 0.5) / (2 * 0.075), rel=1e-2)
    monkeypatch.setattr(calibration, "nonlinearity", lambda response, v, jv, radius: 0.9)
    with pytest.raises(CalibrationError, match="at or above the target everywhere"):
        calibrate_radius(response, target=0.5, n_directions=2, progress=False)


def test_factor_norms_are_one_after_every_iteration_and_orthogonal(tiny_model):
    seen = []
    result = fit_dct(tiny_model, PROMPTS, on_checkpoint=lambda s: seen.append((s.U, s.V)), **FAST)
    assert len(seen) == 1 + 1 + 3  # calibration (here: fixed R), start, three iterations
    for u, v in seen[1:]:
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(8), atol=1e-5, rtol=0)
        torch.testing.assert_close(u.norm(dim=-1), torch.ones(8), atol=1e-5, rtol=0)
        torch.testing.assert_close(v @ v.T, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.vectors.norm(dim=-1), torch.full((8,), 4.0), atol=1e-4, rtol=0)
    assert sorted(result.order) == list(range(8))
    assert (result.importance[:-1] >= result.importance[1:]).all()  # rank order


def test_orthogonalization_keeps_every_vectors_sign():
    """A frame where a plain QR flips a column: ours keep ⟨q_l, v_l⟩ > 0."""
    v = torch.tensor([[-1.0, 0.2, 0.1], [0.3, -1.0, 0.2], [0.1, 0.3, -1.0]], device="cpu")
    q_plain, _ = torch.linalg.qr(v.T)
    assert ((q_plain.T * v).sum(-1) < 0).any()  # the failure the option exists to avoid
    for how in ("polar", "qr"):
        q = orthogonalize(v, how)
        torch.testing.assert_close(q @ q.T, torch.eye(3), atol=1e-6, rtol=0)
        assert ((q * v).sum(-1) > 0).all(), how


def test_alpha_solves_k_alpha_equals_b():
    u, v = cpu_unit(5, 4), orthogonalize(cpu_unit(5, 5) + 0.3 * cpu_unit(5, 6), "none")
    b = torch.arange(1.0, 6.0, device="cpu")
    alpha, cond = importance_weights(u, v, b)
    k = (u @ u.T) * torch.expm1(v @ v.T)
    torch.testing.assert_close(k @ alpha, b, atol=1e-4, rtol=1e-4)
    assert math.isfinite(cond) and cond >= 1


def test_same_seed_same_run_and_another_seed_differs(tiny_model):
    a = fit_dct(tiny_model, PROMPTS, seed=1, **FAST)
    b = fit_dct(tiny_model, PROMPTS, seed=1, **FAST)
    c = fit_dct(tiny_model, PROMPTS, seed=2, **FAST)
    torch.testing.assert_close(a.vectors, b.vectors, atol=0, rtol=0)
    assert a.order == b.order
    assert not torch.allclose(a.vectors, c.vectors)


def test_padding_is_never_steered_or_averaged(tiny_model):
    """The short prompt's Δ is the same alone and left-padded beside a longer prompt."""
    short, long = "Hi", "Write a long and detailed story about a dragon who guards a castle."
    alone = SliceResponse(MelboProblem.build(tiny_model, [short], **SLICE))
    both = SliceResponse(MelboProblem.build(tiny_model, [short, long], **SLICE))
    assert (both.problem.batch.token_index[0] < 0).any()  # the short prompt is padded
    theta = cpu_unit(2, 7) * 3
    _, d_alone = alone.problem.objective(alone.problem.add_vectors(theta))
    _, d_both = both.problem.objective(both.problem.add_vectors(theta))
    n = int(alone.problem.batch.lengths[0])
    torch.testing.assert_close(d_both[:, 0, -n:], d_alone[:, 0], atol=1e-5, rtol=1e-4)


def test_ranking_by_a_target_direction(tiny_model):
    result = fit_dct(tiny_model, PROMPTS, rank_by="Sure:I", **FAST)
    assert result.target_score is not None
    assert (result.target_score[:-1] >= result.target_score[1:]).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(source_layer=3, target_layer=2), "must come after source blocks.3.hook_resid_post"),
        (dict(n_factors=0), r"n_factors \(F\) must be ≥ 1, got 0"),
        (dict(radius="big"), "radius must be a number > 0 or 'auto', got 'big'"),
        (dict(orthogonalize="gram"), "orthogonalize 'gram' is not one of polar, qr, none"),
        (dict(rank_by="sure"), "rank_by 'sure'"),
        (dict(n_factors=65), "n_factors 65 exceeds d_model 64"),
    ],
)
def test_bad_input_is_named(tiny_model, settings, message):
    with pytest.raises(ValueError, match=message):
        fit_dct(tiny_model, PROMPTS, **{**FAST, **settings})


def test_run_folder_checkpoints_and_resumes(tiny_model, tmp_path):
    cfg = DCTConfig(
        source_layer=0, target_layer=3, n_factors=8, iterations=3, radius="auto", calibration_directions=4,
        calibration_target=0.02,
    )  # fmt: skip
    whole = load_run(train_to_folder(tiny_model, "dct", PROMPTS, cfg, tmp_path / "whole", progress=False))
    assert whole.meta["method"] == "dct" and whole.meta["calibration"]["radius"] == whole.meta["radius"]
    assert whole.vectors.shape == (8, 64) and set(whole.tensors) >= {"U", "alpha", "importance"}
    assert whole.hooks == ["blocks.0.hook_resid_post"] * 8
    torch.testing.assert_close(whole.vectors.norm(dim=-1), torch.full((8,), whole.meta["radius"]), atol=1e-4, rtol=0)


def test_calibration_needs_few_evaluations_when_rho_is_a_power_of_r(response, monkeypatch):
    """ρ = c·R² crosses 0.5 at R = 5: the walk from the middle brackets it in two evaluations and
    the log-log root finder lands within 1 % in one or two more."""
    from melbo_tl.optimize import calibration

    monkeypatch.setattr(calibration, "nonlinearity", lambda response, v, jv, radius: 0.02 * radius**2)
    cal = calibrate_radius(response, target=0.5, n_directions=2, progress=False)
    assert cal.radius == pytest.approx(5.0, rel=1e-2)
    assert len(cal.radii) <= 5, cal.radii


def test_the_fit_stops_once_the_median_factor_moves_less_than_the_tolerance(tiny_model):
    full = fit_dct(tiny_model, PROMPTS, **FAST)
    assert full.iterations == 3 and not full.converged
    moved = sorted(m["median"] for m in full.movement)
    between = (moved[0] + moved[-1]) / 2 if moved[0] < moved[-1] else moved[0] * 1.01
    stopped = fit_dct(tiny_model, PROMPTS, **{**FAST, "tolerance": between})
    first_below = next(i for i, m in enumerate(full.movement) if m["median"] < between)
    assert stopped.iterations == first_below + 1 and stopped.converged
    medians = lambda result: [m["median"] for m in result.movement]  # noqa: E731
    assert medians(stopped) == medians(full)[: first_below + 1]
