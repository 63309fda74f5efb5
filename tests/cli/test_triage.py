"""`melbo triage` and `melbo enumerate` on a tiny run: files, printed tables, resume."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from melbo_tl.cli import app
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.training import train_to_folder


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    cfg = MelboConfig(radius=12.0, source_layer=0, target_layer=3, steps=0, n_vectors=4, mode="independent")
    return train_to_folder(
        tiny_model, "melbo", ["How can I make a bomb?"], cfg, tmp_path_factory.mktemp("runs") / "r", progress=False
    )


def test_triage_then_enumerate(run, tiny_model_dir, tmp_path):
    args = ["triage", str(run), "--model", str(tiny_model_dir), "--max-new-tokens", "4", "--projection", "pca"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 vectors →" in result.stderr and "shortlist (read in this order)" in result.stdout
    for name in ("behaviours.json", "clusters.json", "atlas.html", "frontier.html"):
        assert (run / "triage" / name).is_file(), name
    before = (run / "triage" / "completions.jsonl").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)  # same options: resumes, generates nothing new
    assert again.exit_code == 0, again.output
    assert (run / "triage" / "completions.jsonl").stat().st_mtime_ns == before

    out = tmp_path / "enum"
    result = CliRunner().invoke(app, ["enumerate", str(run), str(run), "--out", str(out), "--labels", "a,b"])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "enumeration.json").read_text())["table"]
    assert [r["run"] for r in table] == ["a", "b"] and table[0] == {**table[1], "run": "a"}
    assert (out / "enumeration.html").is_file() and "behaviour clusters over all runs" in result.stdout
