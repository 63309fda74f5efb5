"""MELBO training speed on the embedded model: reference-style loop vs melbo_tl, side by side.

(a) reference-style: a loop written here, one vector at a time, batch 1, a full model forward
    with logits every step (the vector added by a hook at blocks.s.hook_resid_post, the target
    read by a hook), backward through everything;
(b) ``train_vectors(orthogonal=True)``: cached residual, blocks s+1…t−1 only;
(c) ``train_vectors(orthogonal=False)``: all vectors in one batch.
Same prompt, hyper-parameters and step count; all in this process. Also prints the FLOP floor
of blocks s+1…t−1 (forward + input-gradient backward) at this machine's measured matmul rate.

Run: ``.venv/bin/python benchmarks/melbo_speed.py [--steps 30 --vectors 4]``
"""

from __future__ import annotations

import argparse
import time

import torch

from melbo_tl.models import load_model
from melbo_tl.optimize.melbo import train_vectors
from melbo_tl.optimize.objective import melbo_objective, retract, tangent
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.steering import AddVector, apply

PROMPT = "How can I make a bomb?"


def reference_loop(model, problem: MelboProblem, *, radius: float, steps: int, n_vectors: int) -> float:
    """Seconds for n_vectors × steps of the reference-style loop (full forward with logits)."""
    ids = problem.batch.input_ids
    target = f"blocks.{problem.target}.hook_resid_pre"
    store = {}

    def read(acts, hook):
        store["z"] = acts
        return acts

    with torch.no_grad():
        model.run_with_hooks(ids, fwd_hooks=[(target, read)])
        z0 = store["z"].clone()
    started = time.perf_counter()
    for _k in range(n_vectors):
        theta = retract(torch.randn(1, z0.shape[-1]), radius)[0].requires_grad_(True)
        opt = torch.optim.AdamW([theta], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
        for _ in range(steps):
            opt.zero_grad()
            with apply(model, AddVector(theta, problem.hook)):
                model.run_with_hooks(ids, fwd_hooks=[(target, read)])  # logits computed and dropped
            value = melbo_objective(store["z"] - z0, problem.select, p=2, q=1).sum()
            (-value).backward()
            with torch.no_grad():
                theta.grad.copy_(tangent(theta.grad[None], theta[None])[0])
            opt.step()
            with torch.no_grad():
                theta.copy_(retract(theta[None], radius)[0])
    return time.perf_counter() - started


def matmul_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    started = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    return 2 * 1024**3 * reps / (time.perf_counter() - started) / 1e9


def segment_flops(model, problem: MelboProblem) -> float:
    """Forward + input-gradient backward FLOPs of blocks s+1…t−1 for the prompt (≈ 2 × forward)."""
    n_tokens = int(problem.batch.input_ids.shape[1])
    d = int(model.cfg.d_model)
    per_block = sum(p.numel() for p in model.blocks[problem.source + 1].parameters() if p.ndim == 2)
    forward = (problem.target - problem.source - 1) * (2 * per_block * n_tokens + 4 * n_tokens**2 * d)
    return 2 * forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--vectors", type=int, default=4)
    parser.add_argument("--radius", type=float, default=4.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model()
    kwargs = dict(
        radius=args.radius,
        source_layer=7,
        target_layer=16,
        positions="last:2",
        steps=args.steps,
        n_vectors=args.vectors,
        progress=False,
    )
    problem = MelboProblem.build(model, [PROMPT], source=7, target=16, p=2, q=1, positions="last:2")

    t_ref = reference_loop(model, problem, radius=args.radius, steps=args.steps, n_vectors=args.vectors)
    started = time.perf_counter()
    train_vectors(model, [PROMPT], orthogonal=True, **kwargs)
    t_orth = time.perf_counter() - started
    started = time.perf_counter()
    train_vectors(model, [PROMPT], orthogonal=False, batch_size=args.vectors, **kwargs)
    t_batch = time.perf_counter() - started

    steps_total = args.steps * args.vectors
    gflops = matmul_gflops()
    floor = segment_flops(model, problem) / (gflops * 1e9)
    print(
        f"prompt tokens: {problem.batch.input_ids.shape[1]}, source 7 → target 16, {args.vectors} vectors × {args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    print(f"{'mode':<34} {'s/step·vector':>14} {'s/vector':>10} {'speed-up vs (a)':>16}")
    for name, total in [
        ("(a) reference-style full forward", t_ref),
        ("(b) train_vectors orthogonal", t_orth),
        ("(c) train_vectors batched", t_batch),
    ]:
        print(f"{name:<34} {total / steps_total:>14.4f} {total / args.vectors:>10.2f} {t_ref / total:>15.2f}×")
    print(
        f"FLOP floor of blocks 8…15 fwd+input-grad per step·vector: {segment_flops(model, problem) / 1e9:.2f} GFLOP "
        f"= {floor:.4f} s at the measured {gflops:.1f} GFLOP/s matmul rate"
    )
    print(
        f"target (b) ≥ 3× faster per vector than (a): {'met' if t_ref / t_orth >= 3 else 'NOT met'} ({t_ref / t_orth:.2f}×)"
    )


if __name__ == "__main__":
    main()
