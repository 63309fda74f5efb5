"""Placement: carried tensors are cast to the activations' device and dtype once per set of hooks,
recast after an in-place change, differentiable, and results come back as CPU float32."""

from __future__ import annotations

import torch

from melbo_tl.placement import OnActivations, master_copy, model_device, model_dtype, on_model, to_result


def test_cast_once_and_reused():
    placed = OnActivations(torch.ones(4))
    acts = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    first = placed.like(acts)
    assert first.dtype == torch.bfloat16 and placed.like(acts) is first


def test_in_place_change_invalidates_the_cast():
    v = torch.ones(4)
    placed = OnActivations(v)
    acts = torch.zeros(1, 1, 4, dtype=torch.float16)
    before = placed.like(acts)
    v.mul_(3)
    after = placed.like(acts)
    assert before is not after and float(after[0]) == 3.0


def test_gradient_flows_through_the_cast():
    v = torch.ones(4, requires_grad=True)
    placed = OnActivations(v)
    acts = torch.ones(1, 2, 4, dtype=torch.bfloat16)
    (acts + placed.like(acts)).float().sum().backward()
    assert torch.equal(v.grad, torch.full((4,), 2.0))


def test_master_copy_and_results(tiny_model):
    m = master_copy(torch.ones(3, dtype=torch.bfloat16), tiny_model)
    assert m.dtype == torch.float32 and m.device == model_device(tiny_model)
    assert on_model(torch.ones(3, dtype=torch.float64), tiny_model).dtype == model_dtype(tiny_model)
    r = to_result(torch.ones(2, dtype=torch.bfloat16, requires_grad=True) * 2)
    assert r.dtype == torch.float32 and r.device.type == "cpu" and not r.requires_grad
    assert to_result(torch.arange(3)).dtype == torch.int64
