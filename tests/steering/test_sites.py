"""Hook sites: names checked against the model, with errors naming what exists."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.steering import (
    AddVector,
    check_hook,
    check_layer,
    resid_hook,
)


def test_unknown_hook_name(tiny_model):
    with pytest.raises(ValueError, match="blocks.1.hook_resid_typo"):
        AddVector(torch.randn(64), "blocks.1.hook_resid_typo").hooks(tiny_model)
    with pytest.raises(ValueError, match="Unknown hook 'not_a_hook'"):
        check_hook(tiny_model, "not_a_hook")
    with pytest.raises(ValueError, match="non-empty"):
        check_hook(tiny_model, "")


def test_layer_out_of_range(tiny_model):
    with pytest.raises(ValueError, match=r"block 99.*4 blocks \(valid 0…3\)"):
        AddVector(torch.randn(64), "blocks.99.hook_resid_pre").hooks(tiny_model)
    with pytest.raises(ValueError, match="valid layers are 0…3"):
        check_layer(tiny_model, 4)
    with pytest.raises(ValueError, match="out of range"):
        check_layer(tiny_model, -1)
    assert check_layer(tiny_model, 4, allow_end=True) == 4


def test_resid_hook_names(tiny_model):
    assert resid_hook(3) == "blocks.3.hook_resid_pre"
    assert resid_hook(0, "post") == "blocks.0.hook_resid_post"
    for layer in range(4):
        for kind in ("pre", "mid", "post"):
            assert check_hook(tiny_model, resid_hook(layer, kind)) == resid_hook(layer, kind)
    with pytest.raises(ValueError, match="not one of"):
        resid_hook(0, "final")


def test_legacy_hook_name_resolves_to_canonical_hook_point(tiny_model):
    legacy = "blocks.1.hook_resid_pre"
    assert legacy in tiny_model.hook_dict
    seen: list[str] = []

    def record(acts, hook):
        seen.append(hook.name)
        return acts

    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[(legacy, record)]):
        tiny_model(torch.tensor([[14, 2054, 377, 9001, 42, 7, 1500, 33]]))
    assert len(seen) == 1
    canonical = seen[0]
    # TL 4 calls the block input 'blocks.1.hook_in'; the legacy name is an alias of it.
    assert canonical.startswith("blocks.1.")
    assert tiny_model.hook_dict[canonical] is tiny_model.hook_dict[legacy]
