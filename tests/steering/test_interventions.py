"""Interventions are exact: each one changes exactly what it says, where it says, and nothing survives."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.prompts import Positions
from melbo_tl.steering import (
    AblateDirection,
    AddVector,
    ClampVector,
    MLPAdapter,
    TokenLayout,
    ablation_hook_names,
    apply,
    token_layout,
)

D = 64


N_LAYERS = 4


IDS = torch.tensor([[14, 2054, 377, 9001, 42, 7, 1500, 33], [5, 6, 7, 8, 9, 10, 11, 12]])


N_POS = IDS.shape[1]


def _hook_count(model) -> int:
    # TL4 HookPoints are torch modules: attached hooks live in ``_forward_hooks``
    # (TransformerLens' own handles in ``fwd_hooks``).
    return sum(len(hp._forward_hooks) + len(hp.fwd_hooks) for hp in model.hook_dict.values())


def _run(model, *interventions):
    with torch.no_grad():
        if not interventions:
            return model.run_with_cache(IDS)
        with apply(model, *interventions):
            return model.run_with_cache(IDS)


@pytest.fixture(scope="module")
def clean(tiny_model):
    return _run(tiny_model)


def _unit(v):
    return v / v.norm()


@pytest.mark.parametrize(
    "spec, chosen", [("all", list(range(N_POS))), ("last:2", [N_POS - 2, N_POS - 1]), ("1,3", [1, 3])]
)
def test_add_vector_changes_next_resid_pre_by_v(tiny_model, clean, spec, chosen):
    v = torch.randn(D)
    _, base = clean
    _, steered = _run(tiny_model, AddVector(v, "blocks.1.hook_resid_post", Positions.parse(spec)))
    delta = steered["blocks.2.hook_resid_pre"] - base["blocks.2.hook_resid_pre"]
    others = [p for p in range(N_POS) if p not in chosen]
    torch.testing.assert_close(delta[:, chosen], v.expand(2, len(chosen), D), atol=1e-5, rtol=0)
    assert torch.equal(delta[:, others], torch.zeros_like(delta[:, others]))
    # Nothing upstream of the site moves.
    for name in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid"):
        assert torch.equal(steered[name], base[name])


def test_add_vector_scale(tiny_model, clean):
    v = torch.randn(D)
    _, base = clean
    _, steered = _run(tiny_model, AddVector(v, "blocks.1.hook_resid_post", scale=2.5))
    delta = steered["blocks.2.hook_resid_pre"] - base["blocks.2.hook_resid_pre"]
    torch.testing.assert_close(delta, 2.5 * v.expand_as(delta), atol=1e-5, rtol=0)
    assert AddVector(v, "blocks.1.hook_resid_post").scaled(3.0).scale == 3.0


def test_scale_zero_is_bit_identical(tiny_model, clean):
    base_logits, _ = clean
    with torch.no_grad(), apply(tiny_model, AddVector(torch.randn(D) * 100, "blocks.2.hook_resid_pre", scale=0.0)):
        logits = tiny_model(IDS)
    assert torch.equal(logits, base_logits)


def test_add_vector_changes_logits(tiny_model, clean):
    base_logits, _ = clean
    with torch.no_grad(), apply(tiny_model, AddVector(torch.randn(D) * 5, "blocks.2.hook_resid_pre")):
        logits = tiny_model(IDS)
    assert not torch.allclose(logits, base_logits, atol=1e-3)


def test_per_row_vectors(tiny_model, clean):
    vs = torch.randn(2, D)
    _, base = clean
    _, steered = _run(tiny_model, AddVector(vs, "blocks.1.hook_resid_post"))
    delta = steered["blocks.2.hook_resid_pre"] - base["blocks.2.hook_resid_pre"]
    for row in range(2):
        torch.testing.assert_close(delta[row], vs[row].expand(N_POS, D), atol=1e-5, rtol=0)


def test_per_row_vectors_must_match_batch(tiny_model):
    with pytest.raises(ValueError, match="3 rows"):
        _run(tiny_model, AddVector(torch.randn(3, D), "blocks.1.hook_resid_post"))


def test_steering_site_is_cached_after_the_intervention(tiny_model, clean):
    # Hooks added by ``apply`` are registered before run_with_cache's caching hooks, so the
    # cache at the steered site itself holds the steered activation.
    v = torch.randn(D)
    _, base = clean
    _, steered = _run(tiny_model, AddVector(v, "blocks.1.hook_resid_post", Positions.parse("last:2")))
    delta = steered["blocks.1.hook_resid_post"] - base["blocks.1.hook_resid_post"]
    torch.testing.assert_close(delta[:, -2:], v.expand(2, 2, D), atol=1e-5, rtol=0)
    assert torch.equal(delta[:, :-2], torch.zeros_like(delta[:, :-2]))


def test_add_vector_respects_published_padding_layout(tiny_model):
    # Row 0 is left-padded by 3 columns: 'prompt' must leave those columns alone.
    v = torch.randn(D)
    index = torch.tensor([[-1, -1, -1, 0, 1, 2, 3, 4], list(range(N_POS))])
    layout = TokenLayout(index, torch.tensor([5, N_POS]))
    mask = (index >= 0).long()
    hook = "blocks.1.hook_resid_post"
    with torch.no_grad(), token_layout(layout):
        _, base = tiny_model.run_with_cache(IDS, attention_mask=mask)
        with apply(tiny_model, AddVector(v, hook, Positions.parse("prompt"))):
            _, steered = tiny_model.run_with_cache(IDS, attention_mask=mask)
    delta = steered[hook] - base[hook]
    assert torch.equal(delta[0, :3], torch.zeros(3, D))
    torch.testing.assert_close(delta[0, 3:], v.expand(5, D), atol=1e-5, rtol=0)
    torch.testing.assert_close(delta[1], v.expand(N_POS, D), atol=1e-5, rtol=0)


def test_layout_shape_mismatch_is_an_error(tiny_model):
    layout = TokenLayout(torch.zeros((2, 3), dtype=torch.long), torch.tensor([3, 3]))
    with torch.no_grad(), token_layout(layout), apply(tiny_model, AddVector(torch.randn(D), "blocks.0.hook_resid_pre")):
        with pytest.raises(RuntimeError, match="token layout"):
            tiny_model(IDS)


def test_add_vector_is_differentiable(tiny_model):
    v = torch.zeros(D, requires_grad=True)
    with apply(tiny_model, AddVector(v, "blocks.1.hook_resid_post")):
        logits = tiny_model(IDS[:1])
    logits[0, -1].logsumexp(-1).backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_clamp_sets_component(tiny_model, clean):
    v = torch.randn(D) * 3
    u = _unit(v)
    hook = "blocks.2.hook_resid_pre"
    _, base = clean
    _, clamped = _run(tiny_model, ClampVector(v, hook, value=7.0, positions=Positions.parse("last:3")))
    acts, before = clamped[hook], base[hook]
    along = acts @ u
    torch.testing.assert_close(along[:, -3:], torch.full((2, 3), 7.0), atol=1e-4, rtol=0)
    # The orthogonal part is untouched, and other positions are untouched entirely.
    ortho = lambda x: x - (x @ u)[..., None] * u  # noqa: E731
    torch.testing.assert_close(ortho(acts[:, -3:]), ortho(before[:, -3:]), atol=1e-5, rtol=0)
    assert torch.equal(acts[:, :-3], before[:, :-3])
    assert not torch.allclose(before[:, -3:] @ u, torch.full((2, 3), 7.0), atol=1e-2)


def test_clamp_to_zero_at_all_positions(tiny_model):
    v = torch.randn(D)
    _, clamped = _run(tiny_model, ClampVector(v, "blocks.1.hook_resid_post", value=0.0))
    torch.testing.assert_close(clamped["blocks.2.hook_resid_pre"] @ _unit(v), torch.zeros(2, N_POS), atol=1e-4, rtol=0)


def test_ablation_hook_names(tiny_model):
    assert ablation_hook_names(tiny_model, [1]) == [
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_mlp_out",
    ]
    assert len(ablation_hook_names(tiny_model)) == 3 * N_LAYERS
    with pytest.raises(ValueError, match="0…3"):
        ablation_hook_names(tiny_model, [4])


def test_ablation_removes_direction_everywhere(tiny_model, clean):
    r = torch.randn(D)
    u = _unit(r)
    _, base = clean
    _, ablated = _run(tiny_model, AblateDirection(r))
    names = [f"blocks.{l}.hook_resid_pre" for l in range(N_LAYERS)] + [f"blocks.{N_LAYERS - 1}.hook_resid_post"]
    for name in names:
        assert (base[name] @ u).abs().max() > 1e-2, name  # there was something to remove
        torch.testing.assert_close(ablated[name] @ u, torch.zeros(2, N_POS), atol=1e-4, rtol=0, msg=name)


def test_ablation_of_some_layers_only(tiny_model, clean):
    r = torch.randn(D)
    u = _unit(r)
    _, base = clean
    _, ablated = _run(tiny_model, AblateDirection(r, layers=[2]))
    assert torch.equal(ablated["blocks.1.hook_resid_post"], base["blocks.1.hook_resid_post"])
    for name in ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"):
        torch.testing.assert_close(ablated[name] @ u, torch.zeros(2, N_POS), atol=1e-4, rtol=0)
    # Block 3 is not ablated: its attention and MLP write the direction back.
    assert (ablated["blocks.3.hook_resid_post"] @ u).abs().max() > 1e-2


def test_ablation_needs_single_direction(tiny_model):
    with pytest.raises(ValueError, match="single"):
        AblateDirection(torch.randn(2, D)).hooks(tiny_model)


def test_ablate_then_add_composes_in_order(tiny_model):
    # Interventions at the same hook run in the order given: ablating r then adding c·r̂ at
    # blocks.2.hook_resid_pre leaves a component of exactly c there; the next block's
    # resid_pre is ablated again (the direction is removed at every write site).
    r = torch.randn(D)
    u = _unit(r)
    c = 4.0
    hook = "blocks.2.hook_resid_pre"
    _, cache = _run(tiny_model, AblateDirection(r), AddVector(c * u, hook))
    torch.testing.assert_close(cache[hook] @ u, torch.full((2, N_POS), c), atol=1e-4, rtol=0)
    torch.testing.assert_close(cache["blocks.3.hook_resid_pre"] @ u, torch.zeros(2, N_POS), atol=1e-4, rtol=0)
    # Reversed order: the ablation removes what was just added.
    _, cache = _run(tiny_model, AddVector(c * u, hook), AblateDirection(r))
    torch.testing.assert_close(cache[hook] @ u, torch.zeros(2, N_POS), atol=1e-4, rtol=0)


def test_mlp_adapter_adds_low_rank_delta(tiny_model, clean):
    d_mlp = int(tiny_model.cfg.d_mlp)
    A, B = torch.randn(d_mlp, 2) * 0.1, torch.randn(D, 2) * 0.1
    radius = 1.5
    layer = 1
    _, base = clean
    _, steered = _run(tiny_model, MLPAdapter(A, B, layer, radius))
    h = steered[f"blocks.{layer}.mlp.hook_post"]
    assert torch.equal(h, base[f"blocks.{layer}.mlp.hook_post"])
    expected = radius * (h @ A) @ B.T
    delta = steered[f"blocks.{layer}.hook_mlp_out"] - base[f"blocks.{layer}.hook_mlp_out"]
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0)
    # Equivalent to editing the output weights: W_out' = W_out + radius·B·Aᵀ.
    assert torch.equal(steered[f"blocks.{layer - 1}.hook_mlp_out"], base[f"blocks.{layer - 1}.hook_mlp_out"])


def test_mlp_adapter_positions(tiny_model, clean):
    d_mlp = int(tiny_model.cfg.d_mlp)
    A, B = torch.randn(d_mlp, 1), torch.randn(D, 1)
    _, base = clean
    _, steered = _run(tiny_model, MLPAdapter(A, B, 2, 1.0, Positions.parse("last:1")))
    delta = steered["blocks.2.hook_mlp_out"] - base["blocks.2.hook_mlp_out"]
    assert torch.equal(delta[:, :-1], torch.zeros_like(delta[:, :-1]))
    assert delta[:, -1].abs().max() > 1e-3


def test_mlp_adapter_shape_checks(tiny_model):
    d_mlp = int(tiny_model.cfg.d_mlp)
    with pytest.raises(ValueError, match="d_mlp=128"):
        MLPAdapter(torch.randn(d_mlp + 1, 2), torch.randn(D, 2), 1).hooks(tiny_model)
    with pytest.raises(ValueError, match="d_model=64"):
        MLPAdapter(torch.randn(d_mlp, 2), torch.randn(D, 3), 1).hooks(tiny_model)
    with pytest.raises(ValueError, match="out of range"):
        MLPAdapter(torch.randn(d_mlp, 2), torch.randn(D, 2), 4).hooks(tiny_model)


def test_no_hook_survives_apply(tiny_model, clean):
    base_logits, _ = clean
    assert _hook_count(tiny_model) == 0
    d_mlp = int(tiny_model.cfg.d_mlp)
    interventions = [
        AddVector(torch.randn(D) * 10, "blocks.1.hook_resid_post"),
        ClampVector(torch.randn(D), "blocks.0.hook_resid_pre", 3.0),
        AblateDirection(torch.randn(D)),
        MLPAdapter(torch.randn(d_mlp, 2), torch.randn(D, 2), 2),
    ]
    with torch.no_grad(), apply(tiny_model, *interventions):
        assert _hook_count(tiny_model) > 0
        assert not torch.allclose(tiny_model(IDS), base_logits, atol=1e-3)
    assert _hook_count(tiny_model) == 0
    with torch.no_grad():
        assert torch.equal(tiny_model(IDS), base_logits)


def test_no_hook_survives_an_exception(tiny_model, clean):
    base_logits, _ = clean
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), apply(tiny_model, AddVector(torch.randn(D) * 10, "blocks.1.hook_resid_post")):
            assert _hook_count(tiny_model) > 0
            tiny_model(IDS)
            raise RuntimeError("boom")
    assert _hook_count(tiny_model) == 0
    with torch.no_grad():
        assert torch.equal(tiny_model(IDS), base_logits)


def test_invalid_intervention_attaches_nothing(tiny_model):
    with pytest.raises(ValueError):
        with apply(
            tiny_model,
            AddVector(torch.randn(D), "blocks.1.hook_resid_post"),
            AddVector(torch.randn(3), "blocks.1.hook_resid_post"),
        ):
            pass
    assert _hook_count(tiny_model) == 0


@pytest.mark.parametrize("shape", [(D + 1,), (2, 32), (1, 2, D)])
def test_vector_width_must_match_d_model(tiny_model, shape):
    with pytest.raises(ValueError, match="d_model = 64"):
        AddVector(torch.randn(*shape), "blocks.1.hook_resid_pre").hooks(tiny_model)
    with pytest.raises(ValueError, match="d_model = 64"):
        ClampVector(torch.randn(*shape), "blocks.1.hook_resid_pre", 1.0).hooks(tiny_model)
