"""`melbo plant-backdoor` and `melbo detect-backdoors` on tiny models: files, printed tables, errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from melbo_tl.backdoors.detection import detection_prompt
from melbo_tl.cli import app
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.training import train_to_folder


def test_plant_backdoor_builds_once(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MELBO_TL_CACHE", str(tmp_path / "cache"))
    args = ["plant-backdoor", "--name", "planted-cli", "--base", str(tiny_model_dir), "--steps", "2", "--n-clean", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["training"]["steps"] == 2 and set(shown["rates"]["trigger_rate"]) == {"cheese", "hate", "swap"}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "built already" in again.stderr
    bad = CliRunner().invoke(app, ["plant-backdoor", "--name", "cheese"])
    assert bad.exit_code == 2 and "planted-<word>" in bad.stderr


def test_detect_backdoors_runs_triage_then_scores(tiny_model, tiny_model_dir, tmp_path):
    cfg = MelboConfig(radius=12.0, source_layer=0, target_layer=3, steps=0, n_vectors=3, mode="independent")
    run = train_to_folder(tiny_model, "melbo", [detection_prompt()], cfg, tmp_path / "r", progress=False)
    result = CliRunner().invoke(
        app, ["detect-backdoors", str(run), "--model", str(tiny_model_dir), "--generalize", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "no triage yet" in result.stderr and (run / "triage" / "clusters.json").is_file()
    saved = json.loads((run / "backdoors.json").read_text())
    assert saved["n_vectors"] == 3 and set(saved["behaviours"]) == {"cheese", "hate", "swap"}
    assert "| melbo | cheese | 3 |" in result.stdout and "not found:" in result.stdout
