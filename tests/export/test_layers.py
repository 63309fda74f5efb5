"""The hook ↔ llama.cpp layer mapping: both directions, every refusal, and the equivalence it rests on."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.export.layers import hook_for_llama_cpp_layer, llama_cpp_layer, valid_llama_cpp_layers
from melbo_tl.prompts import Positions
from melbo_tl.steering.interventions import AddVector, apply

N_LAYERS = 4  # the tiny models' block count


def test_resid_post_keeps_the_block_number_and_resid_pre_takes_the_block_before():
    assert [llama_cpp_layer(f"blocks.{s}.hook_resid_post", N_LAYERS) for s in (1, 2, 3)] == [1, 2, 3]
    assert [llama_cpp_layer(f"blocks.{s}.hook_resid_pre", N_LAYERS) for s in (2, 3)] == [1, 2]
    assert list(valid_llama_cpp_layers(N_LAYERS)) == [1, 2, 3]


def test_both_directions_are_inverse():
    for layer in valid_llama_cpp_layers(N_LAYERS):
        hook = hook_for_llama_cpp_layer(layer, N_LAYERS)
        assert hook == f"blocks.{layer}.hook_resid_post"
        assert llama_cpp_layer(hook, N_LAYERS) == layer
    for s in range(2, N_LAYERS):
        layer = llama_cpp_layer(f"blocks.{s}.hook_resid_pre", N_LAYERS)
        assert hook_for_llama_cpp_layer(layer, N_LAYERS) == f"blocks.{s - 1}.hook_resid_post"


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        ("blocks.0.hook_resid_post", "output of block 0"),
        ("blocks.1.hook_resid_pre", "output of block 0"),
        ("blocks.0.hook_resid_pre", "embedding output"),
        ("blocks.1.hook_attn_out", "hook_resid_post"),
        ("blocks.2.hook_resid_mid", "hook_resid_post"),
        ("blocks.4.hook_resid_post", "has 4 blocks"),
    ],
)
def test_sites_llama_cpp_never_steers_are_refused_with_the_valid_range(hook, says):
    with pytest.raises(ValueError, match=says):
        llama_cpp_layer(hook, N_LAYERS)


@pytest.mark.parametrize("layer", [0, 4, -1, True])
def test_layers_outside_the_applied_range_are_refused(layer):
    with pytest.raises(ValueError, match="valid 1…3"):
        hook_for_llama_cpp_layer(layer, N_LAYERS)


@pytest.mark.parametrize("s", [2, 3])
def test_the_mapped_site_steers_the_model_exactly_like_the_original(tiny_qwen, s):
    """resid_pre of block s and resid_post of block s − 1 are one tensor: the mapped site adds the
    vector to the same residual, so the logits agree; a neighbouring site does not."""
    tokens = torch.tensor([[3, 17, 29, 4, 11, 8]])
    v = torch.randn(64) * 4
    mapped = hook_for_llama_cpp_layer(llama_cpp_layer(f"blocks.{s}.hook_resid_pre", N_LAYERS), N_LAYERS)

    def logits(hook: str) -> torch.Tensor:
        with torch.no_grad(), apply(tiny_qwen, AddVector(v, hook, Positions("all"))):
            return tiny_qwen(tokens)

    original = logits(f"blocks.{s}.hook_resid_pre")
    torch.testing.assert_close(logits(mapped), original, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(f"blocks.{s}.hook_resid_post"), original, atol=1e-3)
