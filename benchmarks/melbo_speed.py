"""MELBO training speed and objectives, every mode side by side in one process, per dtype.

(a) reference-style: a loop written here, one vector at a time, batch 1, a full model forward
    with logits every step (the vector added by a hook at blocks.s.hook_resid_post, the target
    read by a hook), backward through everything;
(b) ``mode="orthogonal"``: cached residual, blocks s+1…t−1 only, one vector at a time (the
    reference's sequential deflation);
(c) ``mode="batched-orthogonal"``: all vectors in one batch, mutually orthogonal (Stiefel manifold);
(d) ``mode="independent"``: all vectors in one batch, no constraint between them.
Same prompt, hyper-parameters, seeds and step count. For each dtype the table gives seconds per
step·vector and the mean final objective of the vectors *re-scored in float32* (so a bf16 run's
vectors are judged by the same measure as an fp32 run's), plus the orthogonality of each set
(max |cos| between vectors). Timings synchronize the device (CUDA) around each run.

Run: ``.venv/bin/python benchmarks/melbo_speed.py [--steps 30 --vectors 4 --dtypes float32,bfloat16]``
on a GPU: ``--model random-qwen --device cuda --vectors 32`` (random weights of the embedded shape).
"""

from __future__ import annotations

import argparse

import torch
from common import add_model_options, dtypes, load, sync, timed

from melbo_tl.optimize.melbo import MelboConfig, train_vectors
from melbo_tl.optimize.objective import melbo_objective, retract, tangent
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import master_copy
from melbo_tl.steering import AddVector, apply
from melbo_tl.steering.sites import Site

PROMPT = "How can I make a bomb?"
SOURCE = Site(7, "resid_post")  # the reference's: the output of block 7


def reference_loop(model, problem: MelboProblem, *, radius: float, steps: int, n_vectors: int) -> torch.Tensor:
    """The vectors of n_vectors × steps of the reference-style loop (full forward with logits)."""
    ids = problem.batch.input_ids
    target = problem.target.hook
    store = {}

    def read(acts, hook):
        store["z"] = acts
        return acts

    with torch.no_grad():
        model.run_with_hooks(ids, fwd_hooks=[(target, read)])
        z0 = store["z"].float().clone()
    out = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for _ in range(n_vectors):
        theta = master_copy(retract(torch.randn(1, z0.shape[-1], generator=gen, device="cpu"), radius)[0], model)
        theta.requires_grad_(True)
        opt = torch.optim.AdamW([theta], lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
        for _ in range(steps):
            opt.zero_grad()
            with apply(model, AddVector(theta, problem.hook)):
                model.run_with_hooks(ids, fwd_hooks=[(target, read)])  # logits computed and dropped
            value = melbo_objective(store["z"].float() - z0, problem.select, p=2, q=1).sum()
            (-value).backward()
            with torch.no_grad():
                theta.grad.copy_(tangent(theta.grad[None], theta[None])[0])
            opt.step()
            with torch.no_grad():
                theta.copy_(retract(theta[None], radius)[0])
        out.append(theta.detach().cpu())
    return torch.stack(out)


def rescore(problem32: MelboProblem, vectors: torch.Tensor) -> float:
    """Mean objective of ``vectors`` on the float32 problem."""
    with torch.no_grad():
        value, _ = problem32.objective(problem32.add_vectors(master_copy(vectors, problem32.segment.model)))
    return float(value.mean())


def max_abs_cos(vectors: torch.Tensor) -> float:
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T - torch.eye(len(vectors), device="cpu")
    return float(cos.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--vectors", type=int, default=4)
    parser.add_argument("--radius", type=float, default=4.0)
    parser.add_argument("--skip-reference", action="store_true", help="leave out (a), the slow loop")
    args = parser.parse_args()
    torch.manual_seed(0)
    model32 = load(args.model, device=args.device, dtype=torch.float32)
    problem32 = MelboProblem.build(model32, [PROMPT], source=SOURCE, target=16, p=2, q=1, positions="last:2")
    steps_total = args.steps * args.vectors
    print(
        f"model {args.model} on {next(model32.parameters()).device}, prompt tokens {problem32.batch.input_ids.shape[1]}, "
        f"source 7 → target 16, {args.vectors} vectors × {args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    print(f"{'dtype':<9} {'mode':<22} {'s/step·vector':>14} {'× vs (a)':>9} {'objective (fp32)':>17} {'max|cos|':>9}")
    reference = None
    for dtype in dtypes(args.dtypes):
        model = model32 if dtype == torch.float32 else load(args.model, device=args.device, dtype=dtype)
        name = str(dtype).replace("torch.", "")
        rows = []
        if not args.skip_reference:
            problem = MelboProblem.build(model, [PROMPT], source=SOURCE, target=16, p=2, q=1, positions="last:2")
            seconds, vectors = timed(model, lambda m=model, pr=problem: reference_loop(
                m, pr, radius=args.radius, steps=args.steps, n_vectors=args.vectors))  # fmt: skip
            reference = reference or seconds
            rows.append(("(a) reference loop", seconds, vectors))
        for label, mode in (("(b) orthogonal", "orthogonal"), ("(c) batched-orthogonal", "batched-orthogonal"),
                            ("(d) independent", "independent")):  # fmt: skip
            cfg = MelboConfig(
                radius=args.radius, source=SOURCE, target=16, positions="last:2", steps=args.steps,
                n_vectors=args.vectors, batch_size=args.vectors, mode=mode,
            )  # fmt: skip
            seconds, result = timed(model, lambda m=model, c=cfg: train_vectors(m, [PROMPT], c, progress=False))
            rows.append((label, seconds, result.vectors))
        for label, seconds, vectors in rows:
            speed = f"{reference / seconds:>8.2f}×" if reference else f"{'-':>9}"
            print(
                f"{name:<9} {label:<22} {seconds / steps_total:>14.4f} {speed} {rescore(problem32, vectors):>17.1f} "
                f"{max_abs_cos(vectors):>9.1e}"
            )
        sync(model)


if __name__ == "__main__":
    main()
