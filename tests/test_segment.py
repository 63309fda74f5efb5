"""The residual segment: blocks [start, stop) from a cached residual equal a full forward pass,
in value and gradient, for tiled rows, with the batch's token layout published inside."""

from __future__ import annotations

import torch

from melbo_tl.forward import as_batch, run_forward
from melbo_tl.prompts import Positions, prepare_prompts
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering import AddVector, apply

PROMPTS = ["Hi", "Tell me a long story about a lighthouse keeper."]


def full(model, batch, interventions=(), at="blocks.3.hook_resid_pre"):
    return run_forward(model, batch, interventions, record=[at], logits="none", detach=False).activations[at]


def test_segment_equals_a_full_pass_in_value_and_gradient(tiny_model):
    batch = as_batch(tiny_model, prepare_prompts(tiny_model, PROMPTS))
    seg = ResidualSegment.capture(tiny_model, batch, start=1, stop=3)
    v = torch.randn(64, requires_grad=True)
    real = (batch.token_index >= 0)[..., None].float()  # an AddVector never steers padding
    fast = seg.run(seg.residual + v * real)
    (g_fast,) = torch.autograd.grad(fast.pow(2).sum(), v)
    w = v.detach().clone().requires_grad_(True)
    slow = full(tiny_model, batch, [AddVector(w, "blocks.1.hook_resid_pre")])
    (g_slow,) = torch.autograd.grad(slow.pow(2).sum(), w)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_slow, atol=1e-4, rtol=1e-4)


def test_tiled_rows_are_the_prompts_repeated(tiny_model):
    batch = as_batch(tiny_model, prepare_prompts(tiny_model, PROMPTS))
    seg = ResidualSegment.capture(tiny_model, batch, start=1, stop=3)
    with torch.no_grad():
        once = seg.run(seg.residual)
        twice = seg.run(seg.residual.repeat(2, 1, 1))
    torch.testing.assert_close(twice, once.repeat(2, 1, 1))


def test_interventions_inside_the_segment_see_the_batch_layout(tiny_model):
    """A last:1 vector at a hook inside the segment steers each row's last real token only, as it
    does in a full pass on the left-padded batch."""
    batch = as_batch(tiny_model, prepare_prompts(tiny_model, PROMPTS))
    seg = ResidualSegment.capture(tiny_model, batch, start=1, stop=3)
    steer = AddVector(torch.randn(64) * 5, "blocks.2.hook_resid_pre", Positions.parse("last:1"))
    with torch.no_grad(), apply(tiny_model, steer):
        fast = seg.run(seg.residual.repeat(2, 1, 1))[:2]
    with torch.no_grad():
        slow = full(tiny_model, batch, [steer])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
