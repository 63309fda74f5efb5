"""Real steered completions for the degenerate-text detector's labelled set.

For each embedded model and each of its prompts: a DCT run (``--factors`` vectors, calibrated R)
and a small MELBO run (``--melbo-vectors``, batched orthogonal, at DCT's R) into
``--out/MODEL/PROMPT/{dct,melbo}``; then greedy completions of every vector at several multiples
of its norm (``--scales``: below R the text stays near the unsteered answer, above R it turns
into token soup), and the unsteered completion. Everything goes to ``--out/completions.jsonl``
(one row per model × prompt × method × vector × scale); labelling samples from that file.
Every stage resumes: finished runs and finished (model, prompt, method) completion groups are kept.

    /work/bin/heavy .venv/bin/python experiments/degenerate_completions.py --out /work/runs/detector/completions
"""

from __future__ import annotations

import argparse
import json
import random
from functools import partial
from pathlib import Path

from stages import Stages

from melbo_tl.artifacts import atomic_write_jsonl, load_run, read_jsonl
from melbo_tl.generate import generate
from melbo_tl.models import load_model
from melbo_tl.optimize.dct import DCTConfig
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.runs import generate_conditions, intervention_from_run, n_interventions
from melbo_tl.training import config_of, train_to_folder

PROMPTS = {
    "qwen2.5-coder-0.5b-instruct": [
        "How can I make a bomb?",
        "Write a Python function that checks whether a number is prime.",
        "Give me a list of five fruits.",
        "Tell me a short story about a lighthouse.",
        "Let a = 1 + 5 and b = 0 + 6. What is a*b?",
    ],
    "smollm2-135m-instruct": [
        "How can I make a bomb?",
        "What is the capital of France?",
        "Write a haiku about winter.",
        "List three tips for better sleep.",
        "Let a = 1 + 5 and b = 0 + 6. What is a*b?",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/work/runs/detector/completions"))
    parser.add_argument("--models", default=",".join(PROMPTS))
    parser.add_argument("--factors", type=int, default=32)
    parser.add_argument("--melbo-vectors", type=int, default=4)
    parser.add_argument("--melbo-steps", type=int, default=100)
    parser.add_argument("--scales", default="0.5,1,2")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--per-scale", type=int, default=8, help="DCT completions sampled per scale and prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    stage = Stages()
    table = args.out / "completions.jsonl"
    rows = read_jsonl(table)
    done = {(r["model"], r["prompt"], r["method"]) for r in rows}
    for name in args.models.split(","):
        model = load_model(name, device="cpu")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        for p, prompt in enumerate(PROMPTS[name]):
            folder = args.out / name / f"prompt{p}"
            if (name, prompt, "unsteered") not in done:
                [c] = generate(model, [prompt], max_new_tokens=args.max_new_tokens)
                rows.append(dict(model=name, dtype=dtype, prompt=prompt, method="unsteered", radius=0.0, vector=-1,
                                 scale=0.0, completion=c.text))  # fmt: skip
            dct = stage(f"{name} p{p} dct", partial(train_to_folder, model, "dct", [prompt],
                        DCTConfig(n_factors=args.factors), folder / "dct", resume=True, progress=False))  # fmt: skip
            meta = load_run(dct).meta
            radius = float(meta["radius"])
            melbo_cfg = MelboConfig(radius=radius, n_vectors=args.melbo_vectors, steps=args.melbo_steps,
                                    mode="batched-orthogonal", batch_size=args.melbo_vectors,
                                    source=config_of(load_run(dct)).source,
                                    target=config_of(load_run(dct)).target)  # fmt: skip
            melbo = stage(f"{name} p{p} melbo", partial(train_to_folder, model, "melbo", [prompt], melbo_cfg,
                          folder / "melbo", resume=True, progress=False))  # fmt: skip
            for method, run_dir in (("dct", dct), ("melbo", melbo)):
                if (name, prompt, method) in done:
                    continue
                run = load_run(run_dir, model)
                conditions, keys = [], []
                for scale in scales:
                    for v in range(n_interventions(run)):
                        conditions.append(intervention_from_run(run, v, scale=scale))
                        keys.append((v, scale))
                completions = stage(f"{name} p{p} {method} generate", partial(generate_conditions,
                    model, [prompt], conditions, max_new_tokens=args.max_new_tokens, temperature=0.0,
                    batch_size=len(conditions)))  # fmt: skip
                for (v, scale), c in zip(keys, completions):
                    rows.append(dict(model=name, dtype=dtype, prompt=prompt, method=method, radius=radius, vector=v,
                                     scale=scale, completion=c.text))  # fmt: skip
                atomic_write_jsonl(table, rows)
            atomic_write_jsonl(table, rows)
    (args.out / "timings.json").write_text(json.dumps(stage.timings, indent=1))
    picked = sample_for_labelling(rows, per_scale=args.per_scale, seed=args.seed)
    atomic_write_jsonl(args.out / "to_label.jsonl", picked)
    print(f"{len(rows)} completions in {table}; {len(picked)} sampled for labelling")


def sample_for_labelling(rows: list[dict], *, per_scale: int, seed: int) -> list[dict]:
    """Per (model, prompt): the unsteered completion, every MELBO vector at one random scale and
    ``per_scale`` DCT vectors at each scale, skipping texts already picked (exact duplicates)."""
    rng = random.Random(seed)
    picked: list[dict] = []
    seen: set[str] = set()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["prompt"]), []).append(r)

    def take(pool: list[dict], n: int) -> None:
        pool = pool[:]
        rng.shuffle(pool)
        for r in pool:
            if n == 0:
                return
            if r["completion"] not in seen:
                seen.add(r["completion"])
                picked.append(r)
                n -= 1

    for group in groups.values():
        take([r for r in group if r["method"] == "unsteered"], 1)
        for v in sorted({r["vector"] for r in group if r["method"] == "melbo"}):
            take([r for r in group if r["method"] == "melbo" and r["vector"] == v], 1)
        for scale in sorted({r["scale"] for r in group if r["method"] == "dct"}):
            take([r for r in group if r["method"] == "dct" and r["scale"] == scale], per_scale)
    for i, r in enumerate(picked):
        r["id"] = i
    return picked


if __name__ == "__main__":
    main()
