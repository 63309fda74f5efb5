"""`melbo train` / `melbo sweep` end to end on the tiny model, including kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from melbo_tl.artifacts import load_run, read_jsonl

MELBO = [sys.executable, "-m", "melbo_tl.cli"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*MELBO, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def test_train_writes_run_folder_with_generations_and_figure(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    res = run_cli(
        "train",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hello there",
        "--prompt",
        "Tell me a joke",
        "-n",
        "2",
        "--radius",
        "2",
        "--source",
        "resid_post.0",
        "--target",
        "3",
        "--steps",
        "3",
        "--positions",
        "last:2",
        "--out",
        str(out),
        "--max-new-tokens",
        "5",
    )
    assert res.returncode == 0, res.stderr
    run = load_run(out)
    assert run.vectors.shape == (2, 64)
    assert run.meta["method"] == "melbo" and run.meta["status"] == "complete"
    assert run.hooks == ["blocks.0.hook_resid_post"] * 2
    assert run.meta["config"]["positions"] == "last:2" and run.meta["target"] == "blocks.3.hook_resid_pre"
    assert [len(v["losses"]) for v in run.meta["per_vector"]] == [3, 3]
    rows = read_jsonl(out / "generations.jsonl")
    # unsteered + 2 vectors, on each of the 2 prompts
    assert sorted((r["vector"] is None, r["prompt_index"]) for r in rows) == sorted(
        [(True, 0), (True, 1)] + [(False, 0), (False, 1)] * 2
    )
    assert (out / "losses.html").read_text().count("<html") == 1


def test_train_refuses_to_overwrite_without_resume(tiny_model_dir, tmp_path):
    args = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hi",
        "-n",
        "1",
        "--source",
        "resid_post.0",
        "--target",
        "2",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "r"),
        "--max-new-tokens",
        "2",
    ]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_bad_layer_is_one_line_error(tiny_model_dir, tmp_path):
    res = run_cli(
        "train",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hi",
        "--source",
        "resid_post.0",
        "--target",
        "7",
        "--out",
        str(tmp_path / "r"),
    )
    assert res.returncode == 2
    assert "error:" in res.stderr and "0…3" in res.stderr and "Traceback" not in res.stderr


def test_interrupted_train_resumes_after_last_finished_vector(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hello there",
        "-n",
        "3",
        "--radius",
        "2",
        "--source",
        "resid_post.0",
        "--target",
        "3",
        "--steps",
        "150",
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
    ]
    proc = subprocess.Popen(
        [*MELBO, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            meta = out / "run.json"
            if meta.is_file() and len(json.loads(meta.read_text())["per_vector"]) >= 1:
                break
            assert proc.poll() is None, "training finished before it could be interrupted"
            time.sleep(0.05)
        # SIGKILL: the harshest interruption (and SIGINT may be ignored when the suite itself runs
        # as a background job of a non-interactive shell).
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = load_run(out)
    assert interrupted.meta["status"] == "running"
    kept = interrupted.vectors.clone()
    assert kept.shape[0] in (1, 2)

    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    final = load_run(out)
    assert final.meta["status"] == "complete" and final.vectors.shape == (3, 64)
    assert torch.equal(final.vectors[: kept.shape[0]], kept)
    gram = final.vectors @ final.vectors.T / 4
    assert torch.allclose(gram, torch.eye(3), atol=1e-5)


def test_resume_with_other_settings_is_refused(tiny_model_dir, tmp_path):
    def args(target: str) -> list[str]:
        return [
            "train",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "Hi",
            "-n",
            "1",
            "--source",
            "resid_post.0",
            "--target",
            target,
            "--steps",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--max-new-tokens",
            "2",
        ]

    assert run_cli(*args("2")).returncode == 0
    res = run_cli(*args("3"), "--resume")
    assert res.returncode == 2 and "target: saved 'blocks.2.hook_resid_pre'" in res.stderr


def test_adapters_and_random_baseline_runs(tiny_model_dir, tmp_path):
    res = run_cli(
        "train",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hi there",
        "-n",
        "2",
        "--radius",
        "0.5",
        "--source",
        "resid_post.1",
        "--target",
        "3",
        "--steps",
        "2",
        "--adapters",
        "--rank",
        "3",
        "--out",
        str(tmp_path / "ad"),
        "--max-new-tokens",
        "3",
    )
    assert res.returncode == 0, res.stderr
    run = load_run(tmp_path / "ad")
    assert run.meta["method"] == "melbo-adapter"
    assert run.tensors["A"].shape == (2, 128, 3) and run.tensors["B"].shape == (2, 64, 3)
    assert run.hooks == ["blocks.1.hook_mlp_out"] * 2

    res = run_cli(
        "train",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hi there",
        "-n",
        "2",
        "--radius",
        "3",
        "--source",
        "resid_post.0",
        "--target",
        "3",
        "--random-baseline",
        "--out",
        str(tmp_path / "rnd"),
        "--max-new-tokens",
        "3",
    )
    assert res.returncode == 0, res.stderr
    run = load_run(tmp_path / "rnd")
    assert run.meta["method"] == "melbo" and run.meta["random_baseline"] and run.meta["config"]["steps"] == 0
    assert torch.allclose(run.vectors.norm(dim=-1), torch.full((2,), 3.0), atol=1e-5)


def test_sweep_writes_table_and_figure(tiny_model_dir, tmp_path):
    res = run_cli(
        "sweep",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hello",
        "--radii",
        "0.5,8",
        "-n",
        "2",
        "--source",
        "resid_post.0",
        "--target",
        "3",
        "--steps",
        "2",
        "--max-new-tokens",
        "6",
        "--out",
        str(tmp_path / "sw"),
    )
    assert res.returncode == 0, res.stderr
    table = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["radius"] for r in table["rows"]] == [0.5, 8.0]
    for row in table["rows"]:
        assert 0.0 <= row["diversity"] <= 2.0 and row["perplexity"] > 1.0 and len(row["completions"]) == 2
    assert table["best_radius"] in (0.5, 8.0)
    html = (tmp_path / "sw" / "sweep.html").read_text()
    assert "diversity" in html and "perplexity" in html
    assert Path(tmp_path / "sw" / "sweep.json").stat().st_size > 0


def test_dct_command_writes_a_ranked_run_and_completions_of_the_top_vectors(tiny_model_dir, tmp_path):
    out = tmp_path / "dct"
    res = run_cli(
        "dct", "--model", str(tiny_model_dir), "--prompt", "Hello there", "--factors", "6", "--source", "resid_post.0",
        "--target", "3", "--radius", "auto", "--rho", "0.02", "--iterations", "2", "--vectors", "top:2",
        "--max-new-tokens", "3", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "calibrated R = " in res.stderr and "K condition number" in res.stderr
    run = load_run(out)
    assert run.meta["method"] == "dct" and run.vectors.shape == (6, 64)
    assert run.meta["config"]["radius"] == "auto" and run.meta["radius"] == run.meta["calibration"]["radius"]
    rows = read_jsonl(out / "generations.jsonl")
    assert [r["vector"] for r in rows] == [None, 0, 1]


def test_dct_command_takes_the_variant_and_its_options(tiny_model_dir, tmp_path):
    out = tmp_path / "ref"
    args = ["dct", "--model", str(tiny_model_dir), "--prompt", "Hello there", "--factors", "4", "--source", "0",
            "--target", "3", "--radius", "4", "--iterations", "2", "--vectors", "top:1", "--max-new-tokens", "2"]  # fmt: skip
    res = run_cli(*args, "--variant", "reference", "--beta", "0.5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "last movement (1 − cos) median" in res.stderr and "order: alpha2" in res.stderr
    cfg = load_run(out).meta["config"]
    assert (cfg["variant"], cfg["update"], cfg["beta"], cfg["start"]) == (
        "reference",
        "simultaneous",
        0.5,
        "jacobian-svd",
    )
    bad = run_cli(*args, "--variant", "paper", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "variant 'paper' is not one of melbo_tl, reference" in bad.stderr


def test_train_with_a_calibrated_radius(tiny_model_dir, tmp_path):
    out = tmp_path / "auto"
    res = run_cli(
        "train", "--model", str(tiny_model_dir), "--prompt", "Hello there", "-n", "2", "--radius", "auto",
        "--rho", "0.02", "--source", "resid_post.0", "--target", "3", "--steps", "2", "--out", str(out), "--max-new-tokens", "2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = load_run(out)
    assert run.meta["config"]["radius"] == "auto" and run.meta["calibration"]["target"] == 0.02
    assert run.vectors.norm(dim=-1).allclose(torch.full((2,), run.meta["radius"]), atol=1e-4)
