"""`melbo export` and `melbo import-control-vector` end to end on the tiny model."""

from __future__ import annotations

import torch

from melbo_tl.artifacts import load_run, save_run
from melbo_tl.export.gguf_control_vector import read_control_vector
from tests.cli.test_train import run_cli
from tests.helpers import vector_run


def test_export_then_import_round_trips_through_the_cli(tiny_qwen, tmp_path):
    run = vector_run(tiny_qwen, n=2, hooks=["blocks.2.hook_resid_post", "blocks.3.hook_resid_pre"])
    folder = save_run(tmp_path / "run", run)
    res = run_cli(
        "export", str(folder), "--vector", "1", "--scale", "2", "--format", "gguf", "--out", str(tmp_path / "v.gguf")
    )
    assert res.returncode == 0, res.stderr
    assert "direction.2 (= blocks.3.hook_resid_pre" in res.stdout and "--control-vector" in res.stdout
    cv = read_control_vector(tmp_path / "v.gguf")
    torch.testing.assert_close(cv.directions[2], 2 * run.vectors[1])

    res = run_cli("import-control-vector", str(tmp_path / "v.gguf"), "--out", str(tmp_path / "imported"))
    assert res.returncode == 0, res.stderr
    assert "vector 0: blocks.2.hook_resid_post" in res.stdout
    imported = load_run(tmp_path / "imported", tiny_qwen)
    torch.testing.assert_close(imported.vectors[0], 2 * run.vectors[1])


def test_export_errors_are_one_line(tiny_qwen, tmp_path):
    folder = save_run(tmp_path / "run", vector_run(tiny_qwen, n=1, hooks=["blocks.0.hook_resid_post"]))
    res = run_cli("export", str(folder), "--out", str(tmp_path / "v.gguf"))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "output of block 0" in res.stderr
    res = run_cli("export", str(folder), "--format", "safetensors", "--out", str(tmp_path / "v.gguf"))
    assert res.returncode == 2 and "Unknown export format 'safetensors'; valid: gguf" in res.stderr
    res = run_cli("import-control-vector", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert not (tmp_path / "v.gguf").exists()
