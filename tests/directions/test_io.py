"""Refusal directions as run folders, and import of the public pipeline artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from melbo_tl.artifacts import load_run
from melbo_tl.directions import (
    import_refusal_direction_artifacts,
    load_refusal_direction,
    save_refusal_direction,
)
from melbo_tl.runs import intervention_from_run


def _artifacts(tmp_path, vector, meta):
    torch.save(vector, tmp_path / "direction.pt")
    (tmp_path / "direction_metadata.json").write_text(json.dumps(meta))
    return tmp_path / "direction.pt", tmp_path / "direction_metadata.json"


def test_run_folder_roundtrip(tiny_model, selection, tmp_path):
    save_refusal_direction(selection, tiny_model, tmp_path, prompts={"seed": 3})
    direction, layer, pos = load_refusal_direction(tmp_path, tiny_model)
    torch.testing.assert_close(direction, selection.direction)
    assert (layer, pos) == (selection.layer, selection.pos)
    run = load_run(tmp_path, tiny_model)
    torch.testing.assert_close(run.tensors["raw"], selection.raw)
    assert run.meta["method"] == "refusal-direction" and run.hooks == [selection.hook]
    assert run.meta["raw_norm"] == pytest.approx(float(selection.raw.norm()))
    assert len(run.meta["scores"]) == len(selection.scores) and run.meta["scores"][0]["layer"] == 0
    assert run.meta["prompts"] == {"seed": 3}
    assert (run.meta["n_harmful_val"], run.meta["n_harmless_val"]) == (2, 2)
    steer = intervention_from_run(run, 0, scale=run.meta["raw_norm"])
    torch.testing.assert_close(steer.vector * steer.scale, selection.raw)
    assert steer.hook == selection.hook


def test_import_refusal_direction_artifacts(tiny_model, tmp_path):
    raw = torch.randn(64) * 5
    pt, meta = _artifacts(tmp_path, raw, {"pos": -2, "layer": 3})
    out = import_refusal_direction_artifacts(pt, meta, tiny_model, tmp_path / "run")
    direction, layer, pos = load_refusal_direction(out, tiny_model)
    torch.testing.assert_close(direction, raw / raw.norm())
    assert (layer, pos) == (3, -2)
    run = load_run(out)
    torch.testing.assert_close(run.tensors["raw"], raw)
    assert run.hooks == ["blocks.3.hook_resid_pre"]


@pytest.mark.parametrize(
    "vector, meta, message",
    [
        (torch.randn(32), {"pos": -1, "layer": 1}, r"shape \(32,\), but the model has d_model = 64"),
        (torch.randn(64), {"pos": -1, "layer": 4}, r"layer 4, but the model has 4 blocks \(valid 0…3\)"),
        (torch.randn(64), {"layer": 1}, r'must hold \{"pos": int, "layer": int\}'),
        (torch.randn(64), {"pos": 2, "layer": 1}, "negative offsets"),
    ],
)
def test_import_rejects_artifacts_that_do_not_fit(tiny_model, tmp_path, vector, meta, message):
    pt, meta_path = _artifacts(tmp_path, vector, meta)
    with pytest.raises(ValueError, match=message):
        import_refusal_direction_artifacts(pt, meta_path, tiny_model, tmp_path / "run")
    assert not (tmp_path / "run").exists()
