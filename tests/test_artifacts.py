"""Run folders: roundtrip, atomic writes, and refusing to load into the wrong model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import melbo_tl
from melbo_tl.artifacts import (
    FORMAT_VERSION,
    RUN_FILE,
    VECTORS_FILE,
    Run,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    load_run,
    read_jsonl,
    run_meta,
    save_run,
)
from melbo_tl.models import build_tiny_model, load_model, model_info
from melbo_tl.prompts import Positions

HOOKS = ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory):
    directory = build_tiny_model(tmp_path_factory.mktemp("tiny_narrow"), n_layers=2, d_model=32, d_mlp=64)
    return load_model(str(directory))


def _run(model, n: int = 3, **extra) -> Run:
    tensors = {"vectors": torch.randn(n, 64), "adapter_A": torch.randn(128, 2)}
    meta = run_meta(model, method="melbo", hooks=HOOKS[:n], positions=str(Positions.parse("last:2")), **extra)
    return Run(tensors, meta)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


def test_roundtrip(tiny_model, tmp_path):
    run = _run(tiny_model, prompts=["a", "b"], metrics=[{"loss": 1.5}, {"loss": 2.0}, {"loss": 0.25}])
    save_run(tmp_path, run)
    loaded = load_run(tmp_path, tiny_model)

    assert set(loaded.tensors) == {"vectors", "adapter_A"}
    for name, tensor in run.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    assert loaded.hooks == HOOKS
    meta = loaded.meta
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["library_version"] == melbo_tl.__version__
    assert meta["method"] == "melbo"
    assert meta["model"] == model_info(tiny_model).to_dict()
    assert meta["d_model"] == 64 and meta["n_layers"] == 4
    assert meta["chat_template"] == tiny_model.chat_tokenizer.chat_template
    assert meta["positions"] == "last:2"
    assert meta["prompts"] == ["a", "b"]
    assert meta["metrics"][2] == {"loss": 0.25}
    assert meta["n_vectors"] == 3
    assert torch.equal(loaded.vector(1), run.tensors["vectors"][1])
    with pytest.raises(ValueError, match="Vector index -1 is out of range"):
        loaded.vector(-1)  # a slip, not the last vector
    # Without a model, load_run reads the folder without checks.
    assert torch.equal(load_run(tmp_path).vectors, run.vectors)


def test_saved_run_leaves_no_temp_files(tiny_model, tmp_path):
    save_run(tmp_path, _run(tiny_model))
    save_run(tmp_path, _run(tiny_model))  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RUN_FILE, VECTORS_FILE])
    assert json.loads((tmp_path / RUN_FILE).read_text())["hooks"] == HOOKS


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"version": "old"})

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"version": "new"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": "old"}
    assert _leftovers(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    # An interrupt (Ctrl-C) after the temp file was written but before the rename.
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "complete")

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "torn")
    monkeypatch.undo()
    assert path.read_text() == "complete"
    assert _leftovers(tmp_path) == []


def test_jsonl_roundtrip(tmp_path):
    rows = [{"i": 0, "t": torch.tensor([1.0, 2.0])}, {"i": 1, "path": tmp_path}]
    atomic_write_jsonl(tmp_path / "g.jsonl", rows)
    assert read_jsonl(tmp_path / "g.jsonl") == [{"i": 0, "t": [1.0, 2.0]}, {"i": 1, "path": str(tmp_path)}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_load_into_a_model_of_another_width(tiny_model, narrow_model, tmp_path):
    save_run(tmp_path, _run(tiny_model))
    with pytest.raises(ValueError, match=r"width 64.*d_model = 32"):
        load_run(tmp_path, narrow_model)


def test_load_into_another_model_of_the_same_width(tiny_model, tiny_qwen, tmp_path):
    save_run(tmp_path, _run(tiny_model))
    with pytest.raises(ValueError, match="Vectors only mean something in the model they were fitted to"):
        load_run(tmp_path, tiny_qwen)


def test_load_checks_hook_names(tiny_model, tmp_path):
    save_run(tmp_path, _run(tiny_model))
    meta = json.loads((tmp_path / RUN_FILE).read_text())
    meta["hooks"][1] = "blocks.7.hook_resid_pre"
    (tmp_path / RUN_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="blocks.7.hook_resid_pre"):
        load_run(tmp_path, tiny_model)


@pytest.mark.parametrize("hooks", [HOOKS[:2], HOOKS + ["blocks.0.hook_resid_pre"], []])
def test_mismatched_hook_count(tiny_model, tmp_path, hooks):
    run = _run(tiny_model)
    run.meta["hooks"] = hooks
    with pytest.raises(ValueError, match=f"{len(hooks)} hook names for 3 vectors"):
        save_run(tmp_path, run)
    assert not (tmp_path / RUN_FILE).exists()


def test_mismatched_hook_count_on_load(tiny_model, tmp_path):
    save_run(tmp_path, _run(tiny_model))
    meta = json.loads((tmp_path / RUN_FILE).read_text())
    meta["hooks"] = meta["hooks"][:2]
    (tmp_path / RUN_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="2 hook names for 3 vectors"):
        load_run(tmp_path)


def test_run_needs_vectors(tmp_path):
    with pytest.raises(ValueError, match="'vectors'"):
        save_run(tmp_path, Run({"other": torch.zeros(2)}, {"hooks": []}))


def test_newer_format_is_refused(tiny_model, tmp_path):
    save_run(tmp_path, _run(tiny_model))
    meta = json.loads((tmp_path / RUN_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / RUN_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version"):
        load_run(tmp_path)


def test_incomplete_folder_is_not_a_run(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(tmp_path)
    save_run(tmp_path, _run(tiny_model))
    (tmp_path / RUN_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=RUN_FILE):
        load_run(tmp_path)


@pytest.mark.parametrize("index", [3, 7, -1, -4])
def test_vector_index_out_of_range(tiny_model, index):
    run = _run(tiny_model)
    with pytest.raises(ValueError, match=r"3 vectors \(valid 0…2\)"):
        run.vector(index)


# --- run folders written by earlier versions --------------------------------------------------

LEGACY = Path(__file__).parent / "data" / "legacy_runs"


@pytest.mark.parametrize(
    ("folder", "method", "config_type", "intervention"),
    [
        ("melbo", "melbo", "MelboConfig", "AddVector"),
        ("melbo_random", "melbo-random", "MelboConfig", "AddVector"),
        ("adapter", "melbo-adapter", "AdapterConfig", "MLPAdapter"),
        ("oneshot", "oneshot", "OneShotConfig", "AddVector"),
        ("refusal_direction", "refusal-direction", "RefusalDirectionConfig", "AddVector"),
    ],
)
def test_format_1_run_folders_still_load_steer_and_report_their_config(
    tiny_model, tmp_path, folder, method, config_type, intervention
):
    from melbo_tl.runs import intervention_from_run, n_interventions, write_generations
    from melbo_tl.training import config_of

    run = load_run(LEGACY / folder, tiny_model)
    assert run.meta["format_version"] == 1 and run.meta["method"] == method
    cfg = config_of(run)
    assert type(cfg).__name__ == config_type
    steer = intervention_from_run(run, 0)
    assert type(steer).__name__ == intervention
    rows = write_generations(tiny_model, run, tmp_path, ["Hi"], max_new_tokens=2)
    assert len(rows) == 1 + n_interventions(run)


def test_format_1_configs_carry_the_old_settings(tiny_model):
    from melbo_tl.training import config_of

    melbo = config_of(load_run(LEGACY / "melbo"))
    assert (melbo.source.hook, melbo.target.hook, melbo.radius, melbo.positions, melbo.steps) == (
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_pre",
        2.0,
        "last:2",
        3,
    )
    adapter = config_of(load_run(LEGACY / "adapter"))
    assert (adapter.rank, adapter.n_adapters, adapter.radius) == (2, 2, 0.5)
    oneshot = config_of(load_run(LEGACY / "oneshot"))
    assert (oneshot.site.hook, oneshot.promote, oneshot.steps) == ("blocks.1.hook_resid_pre", ("Sure",), 3)
    refusal = config_of(load_run(LEGACY / "refusal_direction"))
    assert (refusal.n_train, refusal.n_val, refusal.layers, refusal.positions) == (8, 4, (1, 2), (-2, -1))


def test_a_format_1_melbo_run_resumes_to_more_vectors(tiny_model, tmp_path):
    import shutil

    from melbo_tl.training import config_of, train_to_folder

    shutil.copytree(LEGACY / "melbo", tmp_path / "run")
    old = load_run(tmp_path / "run")
    cfg = config_of(old).replace(n_vectors=3)
    out = train_to_folder(tiny_model, "melbo", old.meta["prompts"], cfg, tmp_path / "run", resume=True, progress=False)
    new = load_run(out)
    assert new.vectors.shape[0] == 3 and new.meta["format_version"] == 2
    torch.testing.assert_close(new.vectors[:2], old.vectors)
    gram = new.vectors @ new.vectors.T / 4.0
    torch.testing.assert_close(gram, torch.eye(3), atol=1e-4, rtol=0)  # still orthogonal, ‖θ‖ = 2
