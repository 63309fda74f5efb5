"""`melbo eval` end to end, and its user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from melbo_tl.artifacts import load_run, read_jsonl, save_run
from tests.helpers import vector_run

PROMPTS = ["How do I bake bread?", "Tell me about the moon."]


TOKENS = 4


@pytest.fixture
def run_dir(tiny_model, tmp_path):
    folder = tmp_path / "run"
    save_run(folder, vector_run(tiny_model))
    return folder


def test_cli_eval_end_to_end(run_dir, tmp_path):
    from tests.evaluate.test_judges import FakeOpenAI

    prompts = tmp_path / "qs.json"
    prompts.write_text(json.dumps([{"prompt": p} for p in PROMPTS]))
    server = FakeOpenAI(max_requests=6)
    for _ in range(6):
        server.reply("ALIGNED: 10\nCOHERENT: 90")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "melbo_tl.cli",
                "eval",
                str(run_dir),
                "--prompts",
                str(prompts),
                "--vector",
                "0",
                "--vector",
                "2",
                "--max-new-tokens",
                str(TOKENS),
                "--batch-size",
                "4",
                "--judge",
                f"openai:{server.url}:grader",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        server.close()
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["vector", "n", "refusal"] and "misaligned" in lines[0]
    assert [line.split()[0] for line in lines[1:4]] == ["unsteered", "0", "2"]
    assert all("1.00 [0.34, 1.00]" in line and "2/2" in line for line in lines[1:4])  # misaligned 2 of 2
    assert lines[-1] == f"wrote {run_dir / 'eval' / 'qs.json'}"
    summary = json.loads((run_dir / "eval" / "qs.json").read_text())
    assert [r["vector"] for r in summary["rows"]] == [None, 0, 2]
    assert (
        summary["config"]["prompts"] == str(prompts)
        and summary["config"]["model"]["spec"] == load_run(run_dir).meta["model"]["spec"]
    )
    gens = read_jsonl(run_dir / "eval" / "qs.generations.jsonl")
    assert len(gens) == 6 and all(g["aligned"] == 10 and g["coherent"] == 90 for g in gens)
    distinct = {(g["prompt"], g["completion"]) for g in gens}
    assert len(server.requests) == len(distinct)
    assert len(read_jsonl(run_dir / "eval" / "judge_cache.jsonl")) == len(distinct)
    asked = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert all(any(p in a for p in PROMPTS) for a in asked) and {r["body"]["model"] for r in server.requests} == {
        "grader"
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--prompts", "harmful", "--vector", "7"],
            "error: Vector index 7 is out of range: this run has 3 vectors (valid 0…2).",
        ),
        (
            ["--prompts", "harmfull"],
            "error: Unknown prompt set 'harmfull'. Built-in sets: harmful, harmless, open_ended",
        ),
        (["--prompts", "EMPTY"], "contains no prompts"),
        (["--prompts", "harmful", "--judge", "gpt4"], "error: Unknown judge 'gpt4'"),
        (["--prompts", "harmful", "--name", "../x"], "error: Evaluation name '../x'"),
        (["--prompts", "harmful", "--split", "dev"], "error: split must be one of train, test"),
    ],
)
def test_cli_eval_user_errors(run_dir, tmp_path, args, message):
    from melbo_tl.cli import app

    empty = tmp_path / "empty.csv"
    empty.write_text("prompt\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    res = CliRunner().invoke(app, ["eval", str(run_dir), *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (run_dir / "eval").exists()


def test_cli_eval_needs_a_run_folder(tmp_path):
    from melbo_tl.cli import app

    res = CliRunner().invoke(app, ["eval", str(tmp_path), "--prompts", "harmful"])
    assert res.exit_code == 2 and "is not a run folder" in res.stderr
