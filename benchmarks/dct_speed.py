"""DCT against MELBO on the bomb prompt, side by side in one process: seconds per vector.

Same source/target layers and target positions for all: calibration time; DCT seconds per vector
for F = 64 and F = 256 (calibrated R, 10 iterations at most); MELBO batched (independent) and
orthogonal seconds per vector with the demo's steps (300) on a few vectors; the ratios. Targets
(issue "Deep causal transcoding"): 256 DCT vectors in ≤ 10 min on this 2-core machine with the fit
itself ≤ 5 min, and ≥ 50× fewer seconds per vector than orthogonal MELBO.

Run: ``.venv/bin/python benchmarks/dct_speed.py [--factors 64,256 --melbo-vectors 2]``;
on a GPU: ``--model random-qwen --device cuda`` (random weights of the embedded shape).
"""

from __future__ import annotations

import argparse

import torch
from common import add_model_options, dtypes, load, timed

from melbo_tl.optimize.calibration import SliceResponse, calibrate_radius
from melbo_tl.optimize.dct import fit_dct
from melbo_tl.optimize.melbo import MelboConfig, train_vectors
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.steering.sites import Site

PROMPT = "How can I make a bomb?"


def main() -> None:
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    parser.add_argument("--factors", default="64,256")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--melbo-vectors", type=int, default=2, help="vectors per MELBO mode (300 steps each)")
    parser.add_argument("--melbo-steps", type=int, default=300)
    parser.add_argument("--source", type=Site.parse, default=Site(7, "resid_post"), help="site (default resid_post.7)")
    parser.add_argument("--target", type=Site.parse, default=Site(16), help="site (default 16: the input of block 16)")
    parser.add_argument("--positions", default="last:3")
    args = parser.parse_args()
    torch.manual_seed(0)
    for dtype in dtypes(args.dtypes):
        model = load(args.model, device=args.device, dtype=dtype)
        name = str(dtype).replace("torch.", "")
        problem = MelboProblem.build(
            model, [PROMPT], source=args.source, target=args.target, p=2, q=1, positions=args.positions
        )
        t_cal, cal = timed(model, lambda m=model, pr=problem: calibrate_radius(SliceResponse(pr), progress=False))
        print(f"[{name}] calibration: R = {cal.radius:.3f} in {t_cal:.1f} s; ρ(R) curve:")
        print("   " + ", ".join(f"ρ({r:.3g}) = {p:.3f}" for r, p in zip(cal.radii, cal.rho)))
        rows = []
        for f in (int(x) for x in args.factors.split(",")):
            total, result = timed(model, lambda m=model, f=f, r=cal.radius: fit_dct(
                m, [PROMPT], n_factors=f, source=args.source, target=args.target,
                positions=args.positions, radius=r, iterations=args.iterations, progress=False,
            ))  # fmt: skip
            rows.append((f"DCT F={f} ({result.iterations} iterations, fit only)", total, f))
            print(
                f"   F={f}: fit {result.seconds['fit']:.1f} s, ranking {result.seconds['ranking']:.1f} s, total {total:.1f} s"
            )
        for mode in ("orthogonal", "independent"):
            cfg = MelboConfig(
                radius=cal.radius, source=args.source, target=args.target, positions=args.positions,
                steps=args.melbo_steps, n_vectors=args.melbo_vectors, batch_size=args.melbo_vectors, mode=mode,
            )  # fmt: skip
            total, _ = timed(model, lambda m=model, c=cfg: train_vectors(m, [PROMPT], c, progress=False))
            rows.append((f"MELBO {mode} ({args.melbo_steps} steps)", total, args.melbo_vectors))
        orthogonal = next(t / n for label, t, n in rows if "orthogonal" in label)
        print(f"{'':<4}{'method':<44} {'s/vector':>9} {'vs orthogonal MELBO':>20}")
        for label, total, n in rows:
            print(f"{'':<4}{label:<44} {total / n:>9.3f} {orthogonal / (total / n):>19.1f}×")
        dct256 = [t for label, t, n in rows if label.startswith("DCT F=256")]
        if dct256:
            whole = dct256[0] + t_cal
            print(
                f"   256 DCT vectors incl. calibration: {whole:.0f} s (target ≤ 600 s): {'met' if whole <= 600 else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
