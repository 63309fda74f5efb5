"""One-shot steering on the tiny model: losses, early stop, norm ball, satisficing, errors."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.models import chat_tokenizer
from melbo_tl.optimize.oneshot import Example, completion_loss, optimize_vector
from melbo_tl.prompts import Positions, prepare_prompts
from melbo_tl.steering import AddVector

FAST = dict(layer=1, lr=0.1, progress=False)


def direct_loss(
    model, prompt: str, completion: str, vector: torch.Tensor, layer: int, coldness: float, sign: int
) -> float:
    """The loss from one unbatched full forward pass and an explicit log-softmax."""
    tok = chat_tokenizer(model)
    text = prepare_prompts(model, [prompt])[0]
    p_ids = tok(text, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logits = model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", lambda a, hook: a + vector)])
    logprobs = torch.log_softmax(coldness * logits[0].float(), dim=-1)
    total = 0.0
    for j, token in enumerate(c_ids):
        lp = logprobs[len(p_ids) + j - 1, token]
        total += float(-lp) if sign > 0 else float(-torch.log1p(-lp.exp()))
    return total


def test_loss_matches_direct_log_softmax_for_promote_and_suppress(tiny_model):
    result = optimize_vector(
        tiny_model, "Hello there", promote=["Sure thing"], suppress=["No way, sorry"], steps=3, **FAST
    )
    expected = direct_loss(tiny_model, "Hello there", "Sure thing", result.vector, 1, 0.7, +1) + direct_loss(
        tiny_model, "Hello there", "No way, sorry", result.vector, 1, 0.7, -1
    )
    assert result.final_loss == pytest.approx(expected, rel=1e-4)


def test_batched_loss_equals_full_forward_with_intervention(tiny_model):
    examples = [
        Example("Hello there", ("Sure thing",), ("No",)),
        Example("Write a poem about the sea", ("Here is",), ()),
    ]
    for positions in ("all", "prompt", "last:2"):
        result = optimize_vector(tiny_model, examples, steps=2, positions=positions, **FAST)
        full = completion_loss(
            tiny_model, examples, interventions=[AddVector(result.vector, result.hook, Positions.parse(positions))]
        )
        assert result.final_loss == pytest.approx(full, rel=1e-4), positions


def test_promotion_lowers_loss(tiny_model):
    result = optimize_vector(tiny_model, "Hello there", promote=["Sure thing"], steps=25, **FAST)
    assert result.final_loss < result.losses[0] - 1.0
    assert result.hook == "blocks.1.hook_resid_pre"


def test_early_stop_at_target_loss(tiny_model):
    start = optimize_vector(tiny_model, "Hello there", promote=["Sure thing"], steps=0, **FAST).final_loss
    target = start - 1.0
    result = optimize_vector(tiny_model, "Hello there", promote=["Sure thing"], steps=200, target_loss=target, **FAST)
    assert result.stopped_early
    assert result.losses[-1] <= target < result.losses[-2]
    assert len(result.losses) < 200


def test_satisficing_settles_at_target_where_plain_promotion_overshoots(tiny_model):
    start = optimize_vector(tiny_model, "Hello there", promote=["Sure thing"], steps=0, **FAST).final_loss
    target = start - 1.0
    plain = optimize_vector(tiny_model, "Hello there", promote=["Sure thing"], steps=60, **FAST)
    result = optimize_vector(
        tiny_model, "Hello there", promote=["Sure thing"], steps=60, target_loss=target, satisfice=True, **FAST
    )
    assert not result.stopped_early and len(result.losses) == 60
    assert abs(result.final_loss - target) < 0.1
    assert plain.final_loss < target - 0.03


def test_max_norm_ball(tiny_model):
    result = optimize_vector(tiny_model, "Hello there", promote=["Sure thing"], steps=30, max_norm=0.5, **FAST)
    assert float(result.vector.norm()) <= 0.5 + 1e-5


def test_same_seed_same_vector(tiny_model):
    a = optimize_vector(tiny_model, "Hello", promote=["Hi"], steps=3, seed=5, **FAST)
    b = optimize_vector(tiny_model, "Hello", promote=["Hi"], steps=3, seed=5, **FAST)
    assert torch.equal(a.vector, b.vector)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(promote=[""]), "empty"),
        (dict(), "at least one completion"),
        (dict(promote=["x"], layer=4), "out of range"),
        (dict(promote=["x"], satisfice=True), "target_loss"),
        (dict(promote=["x"], max_norm=0.0), "max_norm"),
        (dict(promote=["x"], lr=0.0), "lr"),
    ],
)
def test_bad_inputs(tiny_model, kwargs, match):
    args = dict(FAST, steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        optimize_vector(tiny_model, "Hello", **args)
