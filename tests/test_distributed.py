"""Runs split over Ray workers (melbo_tl.distributed) equal the single-process runs, survive a
dead worker and a killed driver, and leave Ray unimported without ``--ray``.

One local Ray instance (2 CPUs) serves the whole module; workers load the tiny random-weight
model from its temp directory, as a cluster's workers load a model from their own disk.
Vectors are compared with ``torch.equal``: a unit computes the same rows in the same forward
passes as the single process. The one difference left is the thread count (a worker with
``--ray-cpus 1`` runs torch on one thread, and CPU kernels split reductions by thread: 1 vs 2
threads moves some vectors by ~1e-7 after a few hundred steps), so the single-process
references here run on one thread too.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import ray
import torch
from typer.testing import CliRunner

from melbo_tl.artifacts import load_run, read_jsonl
from melbo_tl.cli import app
from melbo_tl.cli.app import imply_values
from melbo_tl.distributed import (
    CRASH_ONCE_ENV,
    UNITS_DIR,
    RayCluster,
    UnitReport,
    UnitStore,
    WorkerModel,
    sweep_radius_ray,
)
from melbo_tl.distributed import train_to_folder_ray as ray_train
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.optimize.sweep import sweep_radius
from melbo_tl.training import train_to_folder

PROMPTS = ["Hello there", "Tell me a joke"]


@pytest.fixture(scope="module")
def cluster():
    """The address of a 2-CPU Ray instance started for this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def independent(n: int = 4, steps: int = 4, **kw) -> MelboConfig:
    return MelboConfig(
        radius=2.0, source_layer=0, target_layer=3, positions="last:2", n_vectors=n, steps=steps,
        mode="independent", batch_size=2, **kw,
    )  # fmt: skip


@contextlib.contextmanager
def one_thread():
    """Single-process references with the workers' torch thread count (--ray-cpus 1): CPU
    kernels split reductions by thread, so 1 vs 2 threads moves later vectors by ~1e-7."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def same_run(a, b) -> None:
    """Identical vectors and run.json except the wall times."""
    assert torch.equal(a.vectors, b.vectors)
    strip = lambda meta: {**meta, "per_vector": [{**r, "seconds": 0} for r in meta["per_vector"]]}  # noqa: E731
    assert strip(a.meta) == strip(b.meta)
    assert list(a.meta) == list(b.meta)


def test_sweep_split_over_two_workers_equals_the_single_process(cluster, tiny_model, tiny_model_dir, tmp_path):
    cfg = MelboConfig(radius=1.0, source_layer=0, target_layer=3, positions="last:2", n_vectors=2, steps=4)
    radii = [1.0, 4.0]
    with one_thread():
        single = sweep_radius(tiny_model, PROMPTS[0], radii, cfg, max_new_tokens=4, embedder="model", progress=False)
    report = UnitReport()
    split = sweep_radius_ray(
        WorkerModel(str(tiny_model_dir), device="cpu"), PROMPTS[0], radii, cfg, out=tmp_path, max_new_tokens=4,
        embedder="model", cluster=RayCluster(address=cluster, workers=2), progress=False, report=report,
    )  # fmt: skip
    assert report.units == 2 and report.workers == 2 and not report.retried
    for a, b in zip(single.results, split.results, strict=True):
        assert torch.equal(a.vectors, b.vectors)
        assert a.losses == b.losses and a.objectives == b.objectives and a.hook == b.hook
    no_time = lambda table: [{**r, "seconds": 0} for r in table["rows"]]  # noqa: E731
    assert no_time(single.to_dict()) == no_time(split.to_dict())
    assert {k: v for k, v in single.to_dict().items() if k != "rows"} == {
        k: v for k, v in split.to_dict().items() if k != "rows"
    }
    kept = sorted(p.name for p in (tmp_path / UNITS_DIR).glob("radius-*.pt"))  # until the CLI calls finish()
    assert kept == ["radius-0.pt", "radius-1.pt"]


def test_a_worker_killed_mid_run_loses_only_its_unit(cluster, tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    cfg = independent()
    with one_thread():
        train_to_folder(tiny_model, "melbo", PROMPTS, cfg, tmp_path / "single", progress=False)
    monkeypatch.setenv(CRASH_ONCE_ENV, str(tmp_path / "crashed"))  # the first unit's worker exits
    report = UnitReport()
    out = ray_train(
        WorkerModel(str(tiny_model_dir), device="cpu"), "melbo", PROMPTS, cfg, tmp_path / "split",
        cluster=RayCluster(address=cluster, workers=2), progress=False, report=report,
    )  # fmt: skip
    assert (tmp_path / "crashed").is_file()
    assert len(report.retried) == 1 and report.workers == 3 and report.units == 2
    same_run(load_run(tmp_path / "single"), load_run(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


def test_killed_driver_resumes_after_its_finished_units(cluster, tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    """`melbo train --ray ADDRESS`, its driver stopped dead right after the first unit reached the
    disk (what SIGKILL leaves: atomic unit files, no run.json), then rerun with --resume: the
    finished unit is not redone, and the folder is the single process's plus its outputs."""
    cfg = independent(n=6)
    with one_thread():
        train_to_folder(tiny_model, "melbo", PROMPTS, cfg, tmp_path / "single", progress=False)
    out = tmp_path / "split"
    args = [
        "train", "--model", str(tiny_model_dir), "--device", "cpu", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
        "-n", "6", "--radius", "2", "--source", "resid_post.0", "--target", "3", "--steps", "4", "--positions", "last:2",
        "--mode", "independent", "--batch-size", "2", "--max-new-tokens", "3", "--out", str(out), "--ray", cluster,
        "--ray-workers", "1",
    ]  # fmt: skip
    save = UnitStore.save

    def save_then_die(self, key, result):
        save(self, key, result)
        raise KeyboardInterrupt  # the driver stops here, as if killed

    monkeypatch.setattr(UnitStore, "save", save_then_die)
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 130, res.output  # interrupted
    monkeypatch.setattr(UnitStore, "save", save)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / UNITS_DIR).glob("vectors-*.pt")}
    assert list(finished) == ["vectors-0-1.pt"] and not (out / "run.json").exists()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--resume" in res.output  # a folder with units is not overwritten
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert "3 units (1 finished before, 0 retried)" in res.output
    same_run(load_run(tmp_path / "single"), load_run(out))
    assert not (out / UNITS_DIR).exists()
    rows = read_jsonl(out / "generations.jsonl")
    assert len(rows) == 2 * (1 + 6) and "[vector 5]" in res.output
    assert (out / "losses.html").is_file()


def test_bad_ray_requests_fail_before_any_cluster_starts(tmp_path):
    runner = CliRunner()
    base = ["train", "--prompt", "Hi", "--out", str(tmp_path / "x"), "--steps", "1"]
    res = runner.invoke(app, [*base, "--ray"])  # mode orthogonal (the default) does not split
    assert res.exit_code == 2 and "Only mode 'independent'" in res.output
    res = runner.invoke(app, [*base, "--ray-workers", "2"])
    assert res.exit_code == 2 and "give --ray too" in res.output
    res = runner.invoke(app, ["sweep", "--prompt", "Hi", "--out", str(tmp_path / "y"), "--resume"])
    assert res.exit_code == 2 and "--ray" in res.output


def test_ray_without_a_value_means_local():
    assert imply_values(["train", "--ray"]) == ["train", "--ray", "local"]
    assert imply_values(["train", "--ray", "--out", "x"]) == ["train", "--ray", "local", "--out", "x"]
    assert imply_values(["train", "--ray", "auto", "--out", "x"]) == ["train", "--ray", "auto", "--out", "x"]


def test_without_ray_nothing_imports_ray(tiny_model_dir, tmp_path):
    code = f"""
import sys, json
from typer.testing import CliRunner
from melbo_tl.cli import app
res = CliRunner().invoke(app, ["train", "--model", {str(tiny_model_dir)!r}, "--prompt", "Hi", "-n", "1",
    "--steps", "1", "--source", "resid_post.0", "--target", "3", "--max-new-tokens", "2", "--out", {str(tmp_path / "r")!r}])
print(json.dumps([res.exit_code, "ray" in sys.modules, "melbo_tl.distributed" in sys.modules]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [0, False, False], res.stderr


def test_dct_with_its_row_chunks_on_two_workers_equals_the_single_process(cluster, tiny_model, tiny_model_dir):
    """DCT fits every factor jointly, so its units are the chunks of rows each Δ evaluation
    (calibration, start, every iteration, ranking) passes through the model."""
    from melbo_tl.distributed import dct_on_workers
    from melbo_tl.optimize.dct import DCTConfig
    from melbo_tl.training import train

    cfg = DCTConfig(
        n_factors=8, source_layer=0, target_layer=3, iterations=2, chunk_size=4, calibration_directions=8,
        calibration_target=0.02,
    )  # fmt: skip
    with one_thread():
        single = train(tiny_model, "dct", PROMPTS, cfg, progress=False)
    with dct_on_workers(
        WorkerModel(str(tiny_model_dir), device="cpu"), PROMPTS, cfg, cluster=RayCluster(address=cluster, workers=2)
    ) as workers:
        split = train(tiny_model, "dct", PROMPTS, cfg, progress=False, backend=workers)
    assert workers.pool.started == 2  # both workers got units (a pool grows only for units)
    assert single.tensors.keys() == split.tensors.keys()
    for key in single.tensors:
        assert torch.equal(single.tensors[key], split.tensors[key]), key
    drop = lambda meta: {  # noqa: E731  (wall times differ)
        **{k: v for k, v in meta.items() if k != "seconds"},
        "calibration": {k: v for k, v in meta["calibration"].items() if k != "seconds"},
    }
    assert drop(single.meta) == drop(split.meta)


def test_melbo_sweep_with_ray_writes_the_single_process_sweep_json(cluster, tiny_model, tiny_model_dir, tmp_path):
    args = [
        "sweep", "--model", str(tiny_model_dir), "--device", "cpu", "--prompt", PROMPTS[0], "--radii", "1,4",
        "-n", "2", "--source", "resid_post.0", "--target", "3", "--steps", "3", "--positions", "last:2",
        "--max-new-tokens", "4", "--embedder", "model",
    ]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "split"), "--ray", cluster])
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "split" / "sweep.json").read_text())
    cfg = MelboConfig(radius=1.0, source_layer=0, target_layer=3, positions="last:2", n_vectors=2, steps=3)
    with one_thread():
        single = sweep_radius(
            tiny_model, PROMPTS[0], [1.0, 4.0], cfg, max_new_tokens=4, embedder="model", progress=False
        )
    expected = {**single.to_dict(), "prompt": PROMPTS[0]}
    no_time = lambda t: {**t, "rows": [{**r, "seconds": 0} for r in t["rows"]]}  # noqa: E731
    assert no_time(table) == no_time(json.loads(json.dumps(expected)))
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["sweep.html", "sweep.json"]
