"""Load-time benchmark of the embedded model: cold (build the cache) and warm (read the cache).

With a fresh, temporary ``MELBO_TL_CACHE``:

* **cold**: one fresh Python process runs ``load_model()``; it assembles the GGUF from the wheels,
  checks its sha256, dequantizes it, writes the safetensors cache and loads it.
* **warm**: ``--warm-runs`` fresh processes each run ``load_model()`` on the built cache. Reported:
  the whole process's wall time (interpreter start and every import included: what a user of
  ``melbo …`` waits) and, inside the process, ``load_model()`` alone, timed after ``melbo_tl``,
  ``transformer_lens`` and ``transformers`` (with its auto classes) have been imported.

Target: a warm load under 5 s. The temporary cache is deleted at the end. Takes ~2 minutes.

    .venv/bin/python benchmarks/load.py [--model NAME] [--warm-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_WARM_S = 5.0

# Must be set before melbo_tl is imported anywhere (here and, by inheritance, in the children).
CACHE = tempfile.mkdtemp(prefix="melbo_bench_cache_")
os.environ["MELBO_TL_CACHE"] = CACHE
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import transformer_lens.model_bridge
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (import cost not counted as load)
from melbo_tl.models import load_model
t1 = time.perf_counter()
model = load_model(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "d_model": model.cfg.d_model}))
"""


def run_child(model: str) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, model], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"load of {model!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="embedded model name [default: the default model]")
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()

    from melbo_tl.models import DEFAULT_MODEL, EMBEDDED

    name = args.model or DEFAULT_MODEL
    if name not in EMBEDDED:
        raise SystemExit(f"--model must be an embedded model: {', '.join(EMBEDDED)}")
    entry = EMBEDDED[name]
    print(f"model {name}; fresh cache {CACHE}; {os.cpu_count()} cpus; load average {os.getloadavg()[0]:.1f}")
    if entry.is_cached():
        raise SystemExit(f"{entry.cache_dir} is not fresh")
    cold = run_child(name)
    if not entry.is_cached():
        raise SystemExit(f"the cold load did not leave a complete cache entry in {entry.cache_dir}")
    marker = json.loads((entry.cache_dir / "melbo_cache.json").read_text())
    warm = [run_child(name) for _ in range(args.warm_runs)]

    warm_wall = statistics.median(r["wall_s"] for r in warm)
    warm_load = statistics.median(r["load_s"] for r in warm)
    warm_import = statistics.median(r["import_s"] for r in warm)
    rows = [
        (
            "cold s (process)",
            cold["wall_s"],
            f"dequantize + cache {marker.get('dequantize_seconds')} s; load_model {cold['load_s']:.1f} s",
        ),
        (
            f"warm s (process, median of {len(warm)})",
            warm_wall,
            "runs: " + ", ".join(f"{r['wall_s']:.1f}" for r in warm),
        ),
        (
            "warm in-process s (median)",
            warm_load,
            "load_model() after imports; runs: " + ", ".join(f"{r['load_s']:.2f}" for r in warm),
        ),
        ("imports s (median)", warm_import, "melbo_tl.models + transformer_lens + transformers auto classes"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for label, value, note in rows:
        print(f"{label.ljust(width)}  {value:7.2f}  {note}")
    print()
    met = warm_wall < TARGET_WARM_S
    print(
        f"target: warm load < {TARGET_WARM_S:g} s (fresh process, median): {'met' if met else 'NOT met'} ({warm_wall:.1f} s)"
    )
    in_met = warm_load < TARGET_WARM_S
    print(f"        in-process load_model() alone: {'met' if in_met else 'NOT met'} ({warm_load:.1f} s)")
    return 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)
        print(f"removed the temporary cache {CACHE}")
    sys.exit(code)
