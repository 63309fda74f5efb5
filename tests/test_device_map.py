"""Models spread over devices: ``load_model(device_map=…)`` and the segment runner walking blocks
on different devices.

No GPU here, so two stand-ins: a model whose later blocks are moved to the "meta" device (a
forward there computes shapes only, and mixing a CPU tensor into a meta block fails), which
checks that the segment runner carries the residual, the block arguments and the token layout
to each block's device; and accelerate's disk offload (blocks whose weights live on disk and
run on the CPU), which goes through the same dispatch hooks a multi-GPU ``device_map`` uses and
must give the plain model's numbers.
"""

from __future__ import annotations

import pytest
import torch

from melbo_tl.forward import as_batch, run_forward
from melbo_tl.models import load_model
from melbo_tl.placement import module_device, to_device
from melbo_tl.prompts import prepare_prompts
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering import current_layout

PROMPTS = ["Hi", "Tell me a long story about a lighthouse keeper."]
# Blocks 1 and 3 on disk (run on the CPU), the rest on the CPU: accelerate's hooks on every block.
OFFLOAD = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def offloaded(tiny_model_dir, tmp_path_factory):
    return load_model(str(tiny_model_dir), device_map=OFFLOAD, offload_folder=tmp_path_factory.mktemp("offload"))


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    obj = {"a": (torch.ones(2), [torch.zeros(1), 3]), "b": None}
    moved = to_device(obj, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == 3 and moved["b"] is None and isinstance(moved["a"][1], list)


def test_segment_walks_blocks_split_across_cpu_and_meta(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu")
    batch = as_batch(model, prepare_prompts(model, PROMPTS))
    seg = ResidualSegment.capture(model, batch, start=1, stop=4)
    for layer in (2, 3):
        model.blocks[layer].to("meta")
    assert [module_device(model.blocks[i]).type for i in range(4)] == ["cpu", "cpu", "meta", "meta"]
    # Without the walk, block 2 would get the CPU residual: that fails.
    with pytest.raises((RuntimeError, NotImplementedError)):
        model.blocks[2](seg.residual, **seg.block_kwargs)
    seen = []

    def record(module, args, kwargs):
        layout = current_layout(args[0].shape[0], args[0].shape[1], args[0].device)
        tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        tensors += [t for v in kwargs.values() if isinstance(v, tuple) for t in v if isinstance(t, torch.Tensor)]
        seen.append((args[0].device.type, {t.device.type for t in tensors}, layout.token_index.device.type))

    handles = [model.blocks[i].register_forward_pre_hook(record, with_kwargs=True) for i in (1, 2, 3)]
    try:
        with torch.no_grad():
            out = seg.run(seg.residual)
    finally:
        for h in handles:
            h.remove()
    assert out.device.type == "meta" and out.shape == seg.residual.shape
    assert seen == [("cpu", {"cpu"}, "cpu"), ("meta", {"meta"}, "meta"), ("meta", {"meta"}, "meta")]


def test_device_map_load_equals_a_plain_load(offloaded, tiny_model):
    assert offloaded.melbo_info.device == "cpu,disk"
    assert next(offloaded.blocks[1].parameters()).device.type == "meta"  # weights on disk until used
    assert module_device(offloaded.blocks[1]) == torch.device("cpu")  # where accelerate runs it
    batch = as_batch(tiny_model, prepare_prompts(tiny_model, PROMPTS))
    hook = "blocks.3.hook_resid_pre"
    a = run_forward(tiny_model, batch, record=[hook]).activations[hook]
    b = run_forward(offloaded, batch, record=[hook]).activations[hook]
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_segment_on_an_offloaded_model_equals_the_plain_model_with_gradients(offloaded, tiny_model):
    v = torch.randn(64)
    outs, grads = [], []
    for model in (tiny_model, offloaded):
        batch = as_batch(model, prepare_prompts(model, PROMPTS))
        seg = ResidualSegment.capture(model, batch, start=0, stop=4)
        w = v.clone().requires_grad_(True)
        real = (batch.token_index >= 0)[..., None].float()
        out = seg.run(seg.residual + w * real)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.pow(2).sum(), w)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-5)


def test_device_map_errors_name_the_fix(tiny_model_dir):
    with pytest.raises(ValueError, match="not both"):
        load_model(str(tiny_model_dir), device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="auto, balanced"):
        load_model(str(tiny_model_dir), device_map="everywhere")
