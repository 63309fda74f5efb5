"""A radius sweep on 1 vs 2 Ray workers, against the single process, with the vectors compared.

Four runs of the same ``melbo sweep`` (same prompt, radii, seed, steps):

- ``single-2threads``: one process, torch on its default threads (2 on the 2-core test machine);
- ``single-1thread``: one process, ``torch.set_num_threads(1)``;
- ``ray-1worker``: a local Ray instance, one worker (1 CPU, 1 torch thread) doing every radius;
- ``ray-2workers``: two workers (1 CPU, 1 thread each), one radius each.

Fair comparisons: ``ray-2workers`` vs ``single-2threads`` (both use 2 cores: processes vs
threads), ``ray-1worker`` vs ``single-1thread`` (the cost of Ray itself). ``wall`` includes model
loading (in the workers for Ray, plus starting them); ``units`` is the time from the first unit
submitted to the last result. Every run's vectors are compared with the ``single-1thread`` ones
(``torch.equal`` and the max abs difference). The machine may be shared: the load average before
and after each run is recorded.

Run: ``.venv/bin/python benchmarks/ray_sweep.py [--model smollm2-135m-instruct --steps 200]``;
writes ``benchmarks/results/ray_sweep.json`` (``--out``). The README's figures:
``--steps 10 --vectors 1`` (``results/ray_sweep_steps10.json``) and ``--steps 40 --vectors 1
--runs ray-2workers,ray-1worker,single-1thread,single-2threads`` (``results/ray_sweep_steps40.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from melbo_tl.optimize.melbo import MelboConfig

PROMPT = "How can I make a bomb?"


def single(args: argparse.Namespace, cfg: MelboConfig, threads: int) -> tuple[dict, list[torch.Tensor]]:
    from melbo_tl.models import load_model
    from melbo_tl.optimize.sweep import sweep_radius

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        model = load_model(args.model, device="cpu")
        units = time.perf_counter()
        result = sweep_radius(model, PROMPT, args.radii, cfg, max_new_tokens=args.max_new_tokens, embedder="model")
        end = time.perf_counter()
    finally:
        torch.set_num_threads(before)
    return {"wall": end - started, "units": end - units}, [r.vectors for r in result.results]


def on_ray(args: argparse.Namespace, cfg: MelboConfig, workers: int) -> tuple[dict, list[torch.Tensor]]:
    import ray

    from melbo_tl.distributed import RayCluster, UnitReport, WorkerModel, finish, sweep_radius_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = UnitReport()
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = sweep_radius_ray(
                WorkerModel(args.model, device="cpu"), PROMPT, args.radii, cfg, out=out, max_new_tokens=args.max_new_tokens,
                embedder="model", cluster=RayCluster(workers=workers), report=report,
            )  # fmt: skip
            wall = time.perf_counter() - started
            finish(out)
    finally:
        ray.shutdown()
    return {"wall": wall, "units": report.seconds, "workers": report.workers}, [r.vectors for r in result.results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--radii", default="2,8", help="comma-separated radii (one unit each)")
    parser.add_argument("--vectors", type=int, default=2, help="vectors per radius (orthogonal mode)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--runs", default="single-2threads,single-1thread,ray-1worker,ray-2workers")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_sweep.json"))
    args = parser.parse_args()
    args.radii = [float(r) for r in args.radii.split(",")]
    cfg = MelboConfig(radius=args.radii[0], n_vectors=args.vectors, steps=args.steps, seed=0)
    runners = {
        "single-2threads": lambda: single(args, cfg, 2),
        "single-1thread": lambda: single(args, cfg, 1),
        "ray-1worker": lambda: on_ray(args, cfg, 1),
        "ray-2workers": lambda: on_ray(args, cfg, 2),
    }
    rows, vectors = {}, {}
    for name in args.runs.split(","):
        load = os.getloadavg()[0]
        timing, vectors[name] = runners[name]()
        rows[name] = {**timing, "load_before": load, "load_after": os.getloadavg()[0]}
        print(name, json.dumps(rows[name]), flush=True)
    reference = vectors.get("single-1thread")
    for name, vs in vectors.items():
        if reference is not None:
            rows[name]["equal_to_single_1thread"] = [torch.equal(a, b) for a, b in zip(vs, reference)]
            rows[name]["max_abs_diff"] = [float((a - b).abs().max()) for a, b in zip(vs, reference)]  # per radius
            rows[name]["finite"] = [bool(torch.isfinite(a).all()) for a in vs]
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "cpus": os.cpu_count(),
        "prompt": PROMPT,
        "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
