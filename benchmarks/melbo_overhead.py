"""Where a batched MELBO step spends its time: matmuls (the FLOP floor) vs everything else.

Trains ``--vectors`` vectors in ``mode="batched-orthogonal"`` for ``--steps`` steps under
``torch.profiler`` and splits the operators' self CPU time into matmul kernels (mm, bmm, addmm,
linear, attention), element-wise and normalisation kernels, and the rest; the difference between
wall time and the operators' total is Python (hooks, the optimizer loop, autograd bookkeeping).
The FLOP floor is the profiler's matmul FLOP count divided by the matmul rate this process
measures on one large square matmul in the same dtype: the time the step would take if every
FLOP ran at that rate and nothing else cost anything.

Run: ``.venv/bin/python benchmarks/melbo_overhead.py [--vectors 8 --steps 10 --dtypes float32,bfloat16]``
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from common import add_model_options, dtypes, load
from torch.profiler import ProfilerActivity, profile

from melbo_tl.optimize.melbo import MelboConfig, train_vectors

PROMPT = "How can I make a bomb?"
MATMUL = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_scaled_dot_product")
ELEMENTWISE = ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::pow", "aten::rsqrt",
               "aten::mean", "aten::sum", "aten::neg", "aten::cat", "aten::copy_", "aten::_to_copy", "aten::exp")  # fmt: skip


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one n×n×n matmul in ``dtype`` on the CPU (the best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def kind(name: str) -> str:
    if name.startswith(MATMUL):
        return "matmul"
    if name.startswith(ELEMENTWISE):
        return "elementwise"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--vectors", type=int, default=8)
    parser.add_argument("--top", type=int, default=0, help="also print the N operators with the most self time")
    args = parser.parse_args()
    print(f"model {args.model}, {args.vectors} vectors × {args.steps} steps, batched-orthogonal, source 7 → target 16")
    for dtype in dtypes(args.dtypes):
        model = load(args.model, device=args.device, dtype=dtype)
        cfg = MelboConfig(
            radius=4.0, source_layer=7, target_layer=16, positions="last:2", steps=args.steps,
            n_vectors=args.vectors, batch_size=args.vectors, mode="batched-orthogonal",
        )  # fmt: skip
        train_vectors(model, [PROMPT], cfg.replace(steps=2), progress=False)  # warm-up
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            train_vectors(model, [PROMPT], cfg, progress=False)
        wall = time.perf_counter() - started
        self_time: dict[str, float] = defaultdict(float)
        flops = 0.0
        for event in prof.key_averages():
            self_time[kind(event.key)] += event.self_cpu_time_total / 1e6
            flops += event.flops or 0
        ops = sum(self_time.values())
        rate = matmul_rate(dtype)
        floor = flops / rate
        per = args.steps * args.vectors
        name = str(dtype).replace("torch.", "")
        if args.top:
            print(
                prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40)
            )
        print(
            f"{name}: wall {wall / per:.4f} s/step·vector (profiled); operators {ops / wall:.0%} of wall "
            f"(matmul {self_time['matmul'] / wall:.0%}, element-wise {self_time['elementwise'] / wall:.0%}, "
            f"other ops {self_time['other'] / wall:.0%}), Python and dispatch outside operators {1 - ops / wall:.0%}; "
            f"matmul FLOPs {flops / per / 1e9:.2f} GFLOP per step·vector at {rate / 1e9:.0f} GFLOP/s → "
            f"floor {floor / per:.4f} s/step·vector = {floor / wall:.0%} of wall"
        )


if __name__ == "__main__":
    main()
