"""How fast the command line rejects bad input that needs no model (target: under 1 s, wall).

Each case runs ``python -m melbo_tl.cli …`` in a fresh process (``--repeats`` times; the median
is reported) and must exit with code 2 and one ``error:`` line. The test suite checks the same
cases never import torch (tests/cli/test_options.py); this measures the time.

    .venv/bin/python benchmarks/cli_errors.py [--repeats 5] [--out benchmarks/results/cli_errors.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "tests" / "data" / "legacy_runs" / "melbo"
CASES = [
    ["dct", "-p", "hi", "--out", "{tmp}/o", "--source", "16", "--target", "7"],
    ["triage", str(RUN), "--projection", "umap"],
    ["analyze", str(RUN), "--vectors", "1,x"],
    ["export", str(RUN), "--out", "{tmp}/v.gguf", "--vector", "-1"],
    ["train", "-p", "hi", "--out", "{tmp}/o", "--mode", "diagonal"],
    ["oneshot", "-p", "hi", "--out", "{tmp}/o", "--site", "attn_out.3", "--promote", "x"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            argv = [a.format(tmp=tmp) for a in case]
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "melbo_tl.cli", *argv], capture_output=True, text=True, env=env
                )
                seconds.append(time.perf_counter() - started)
                if done.returncode != 2 or not done.stderr.startswith("error: "):
                    raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}, {done.stderr[:300]!r}")
            median = statistics.median(seconds)
            rows.append({"command": " ".join(case[:1] + case[1:]).replace(str(RUN), "RUN"), "median_s": round(median, 3),
                         "max_s": round(max(seconds), 3), "error": done.stderr.strip()[:120]})  # fmt: skip
            print(
                f"{median:6.3f} s (max {max(seconds):.3f})  melbo {rows[-1]['command']}\n         {rows[-1]['error']}"
            )
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    result = {"python": sys.version.split()[0], "load_average": load, "repeats": args.repeats, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
