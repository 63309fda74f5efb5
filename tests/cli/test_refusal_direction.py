"""`melbo refusal-direction` end to end on the tiny model, and its user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

from melbo_tl.artifacts import load_run
from tests.helpers import HARMFUL, HARMLESS


def _artifacts(tmp_path, vector, meta):
    torch.save(vector, tmp_path / "direction.pt")
    (tmp_path / "direction_metadata.json").write_text(json.dumps(meta))
    return tmp_path / "direction.pt", tmp_path / "direction_metadata.json"


def _prompt_files(tmp_path):
    (tmp_path / "harmful.txt").write_text("\n".join(HARMFUL) + "\n")
    (tmp_path / "harmless.json").write_text(json.dumps(HARMLESS))
    return str(tmp_path / "harmful.txt"), str(tmp_path / "harmless.json")


def test_cli_refusal_direction_writes_a_run_folder(tiny_model_dir, tmp_path):
    harmful, harmless = _prompt_files(tmp_path)
    out = tmp_path / "run"
    args = [
        "refusal-direction",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--harmful",
        harmful,
        "--harmless",
        harmless,
        "--n-train",
        "4",
        "--n-val",
        "2",
        "--layers",
        "0-1",
        "--positions",
        "-2,-1",
        "--kl-threshold",
        "1e9",
        "--induce-threshold",
        "-1e9",
    ]
    env = {**os.environ, "MELBO_TL_CACHE": os.environ.get("MELBO_TL_CACHE", "/tmp/mcache")}
    proc = subprocess.run(
        [sys.executable, "-m", "melbo_tl.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "CHOSEN" in proc.stdout and "chosen: layer" in proc.stdout
    run = load_run(out)
    assert run.meta["method"] == "refusal-direction" and len(run.meta["scores"]) == 4
    assert [(r["layer"], r["pos"]) for r in run.meta["scores"]] == [(0, -2), (0, -1), (1, -2), (1, -1)]
    assert run.meta["config"]["n_train"] == 4 and len(run.meta["prompts"]["harmful_train"]) == 4
    assert len(run.meta["prompts"]["harmless_val"]) == 2
    assert set(run.meta["prompts"]["harmful_val"]) <= set(HARMFUL)


def test_cli_user_errors_exit_2(tiny_model_dir, tmp_path):
    from melbo_tl.cli import app

    harmful, harmless = _prompt_files(tmp_path)
    runner = CliRunner()
    base = [
        "refusal-direction",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "r"),
        "--harmful",
        harmful,
        "--harmless",
        harmless,
    ]
    res = runner.invoke(app, base + ["--n-val", "6"])
    assert res.exit_code == 2 and "leaves none for training" in res.stderr
    res = runner.invoke(app, base + ["--layers", "3-1"])
    assert res.exit_code == 2 and "runs backwards" in res.stderr
    res = runner.invoke(app, base + ["--resume"])
    assert res.exit_code == 2 and "has no run to resume" in res.stderr
    strict = base + ["--n-train", "2", "--n-val", "2", "--layers", "1", "--positions=-2,-1"]
    res = runner.invoke(app, strict + ["--kl-threshold", "-1"])
    assert res.exit_code == 2 and "No candidate direction passed" in res.stderr and "baseline refusal" in res.stdout
    checkpoint = json.loads((tmp_path / "r" / "run.json").read_text())
    assert checkpoint["status"] == "running" and checkpoint["n_vectors"] == 0  # no direction chosen
    saved = json.loads((tmp_path / "r" / "candidate_scores.json").read_text())
    assert [(r["layer"], r["pos"]) for r in saved["scores"]] == [(1, -2), (1, -1)]
    # Re-selecting with other thresholds reuses every score; other settings are refused.
    res = runner.invoke(app, strict + ["--kl-threshold", "1e9", "--induce-threshold", "-1e9", "--resume"])
    assert res.exit_code == 0, res.stderr
    assert "2 candidates already scored" in res.stderr and "s per candidate" not in res.stdout
    assert load_run(tmp_path / "r").meta["scores"] == [{**r, "rejected": ""} for r in saved["scores"]]
    res = runner.invoke(app, strict + ["--seed", "1", "--resume"])
    assert res.exit_code == 2 and "its settings differ (seed: saved 0 vs now 1)" in res.stderr, res.stderr
    pt, meta = _artifacts(tmp_path, torch.randn(48), {"pos": -1, "layer": 0})
    res = runner.invoke(
        app,
        [
            "import-refusal-direction",
            "--direction",
            str(pt),
            "--metadata",
            str(meta),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "imp"),
        ],
    )
    assert res.exit_code == 2 and "d_model = 64" in res.stderr
    pt, meta = _artifacts(tmp_path, torch.randn(64), {"pos": -1, "layer": 0})
    res = runner.invoke(
        app,
        [
            "import-refusal-direction",
            "--direction",
            str(pt),
            "--metadata",
            str(meta),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "imp"),
        ],
    )
    assert res.exit_code == 0 and "imported layer 0, pos -1" in res.stdout
