"""`melbo rank` on a tiny run: bad task rows fail before loading, a ranking prints and is written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from melbo_tl.artifacts import read_jsonl
from melbo_tl.cli import app
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.training import train_to_folder


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    cfg = MelboConfig(radius=12.0, source_layer=0, target_layer=3, steps=0, n_vectors=3, mode="independent")
    return train_to_folder(tiny_model, "melbo", ["Hi"], cfg, tmp_path_factory.mktemp("runs") / "r", progress=False)


def test_rank_reports_a_bad_row_with_its_line(run, tmp_path):
    task = tmp_path / "bad.jsonl"
    task.write_text(json.dumps({"prompt": "1+1?", "answer": 2}) + "\n" + json.dumps({"prompt": "2+2?"}) + "\n")
    result = CliRunner().invoke(app, ["rank", str(run), "--task", str(task), "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "line 2: missing field 'answer'" in result.stderr
    assert "loading" not in result.stderr  # failed before any model was loaded


def test_rank_reports_a_bad_regex(run, tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"prompt": "1+1?", "answer": 2}) + "\n")
    result = CliRunner().invoke(app, ["rank", str(run), "--task", str(task), "--extract", "(", "--model", "x"])
    assert result.exit_code == 2 and "--extract: extract is not a valid regular expression" in result.stderr


def test_rank_prints_and_writes_the_ranking(run, tiny_model_dir, tmp_path):
    task = tmp_path / "arith.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"{i}+1?", "answer": i + 1}) + "\n" for i in range(3)))
    args = ["rank", str(run), "--task", str(task), "--model", str(tiny_model_dir), "--max-new-tokens", "2",
            "--extract", r"-?\d+", "--vectors", "0-1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| rank | vector | correct |" in result.stdout and "unsteered" in result.stdout
    assert "beat the unsteered baseline" in result.stderr
    folder = run / "tasks" / "arith"
    assert sorted(r["vector"] for r in read_jsonl(folder / "ranking.jsonl")) == [-1, 0, 1]
    assert (folder / "ranking.md").is_file() and (folder / "ranking.csv").is_file()
    assert f"wrote {folder}" in result.stdout


def test_rank_with_operands_prints_the_answer_changes(run, tiny_model_dir, tmp_path):
    task = tmp_path / "ops.jsonl"
    rows = [{"prompt": f"{i}+{j}?", "answer": i + j, "operands": {"x": i, "y": j}} for i, j in [(1, 2), (3, 4), (2, 2)]]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["rank", str(run), "--task", str(task), "--model", str(tiny_model_dir), "--max-new-tokens", "2"]
    bad = CliRunner().invoke(app, [*base, "--alternative", "x ** y"])
    assert bad.exit_code == 2 and "only operand names" in bad.stderr and "loading" not in bad.stderr
    result = CliRunner().invoke(app, [*base, "--extract", r"-?\d+", "--min-matches", "1", "--alternative", "x * y"])
    assert result.exit_code == 0, result.output
    assert "Answer changes: 4 vectors" in result.stdout and "right answer = x + y" in result.stdout
    saved = json.loads((run / "tasks" / "ops" / "answer_change.json").read_text())
    assert saved["config"]["alternatives"] == ["x * y"] and saved["reference"][0] == "x + y"


def test_bad_operands_are_named(run, tmp_path):
    task = tmp_path / "bad_ops.jsonl"
    task.write_text(json.dumps({"prompt": "1+1?", "answer": 2, "operands": {"x": "one"}}) + "\n")
    result = CliRunner().invoke(app, ["rank", str(run), "--task", str(task), "--model", "x"])
    assert result.exit_code == 2 and "line 1: field 'operands' must be" in result.stderr
