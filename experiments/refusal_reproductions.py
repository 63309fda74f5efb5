"""Reproductions 1–3 on the embedded model: refusal direction, one-shot bypass, vector arithmetic.

Needs two run folders made beforehand (see README "Results"):
  --refusal  from `melbo refusal-direction`
  --oneshot  from `melbo oneshot` (a vector fitted on ONE harmful training prompt)
Evaluates on the held-out test split of the built-in prompt sets (never used for fitting):
  1. substring attack success on harmful prompts, unsteered vs refusal direction ablated at
     every layer; harmless refusal rate with the raw diff-in-means vector added at its layer;
  2. the one-shot vector: attack success on harmful test prompts, harmless still answered;
  3. subtracting the one-shot vector (scale −1): refusal rate on harmless prompts.
Writes every table and generation to --out.

Run: .venv/bin/python experiments/refusal_reproductions.py --refusal runs/refusal_direction \
        --oneshot runs/oneshot_refusal --out runs/reproductions
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from melbo_tl.artifacts import atomic_write_json, load_run
from melbo_tl.directions import load_refusal_direction
from melbo_tl.evaluate.datasets import load_prompts
from melbo_tl.evaluate.harness import evaluate_interventions, format_table, save_eval
from melbo_tl.models import load_model
from melbo_tl.runs import intervention_from_run
from melbo_tl.steering import AblateDirection, AddVector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refusal", type=Path, required=True)
    parser.add_argument("--oneshot", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="prompts per set (default: the whole test split)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    model = load_model(dtype="float32")  # the README figures are float32
    harmful = load_prompts("harmful", split="test", limit=args.limit)
    harmless = load_prompts("harmless", split="test", limit=args.limit)
    direction, layer, pos = load_refusal_direction(args.refusal, model)
    refusal_run = load_run(args.refusal, model)
    raw = refusal_run.tensors["raw"].reshape(-1)
    oneshot_run = load_run(args.oneshot, model)
    v = intervention_from_run(oneshot_run, 0)
    minus_v = intervention_from_run(oneshot_run, 0, scale=-1.0)
    add_raw = AddVector(raw, f"blocks.{layer}.hook_resid_pre")
    opts = dict(max_new_tokens=args.max_new_tokens, progress=True)

    summary: dict[str, dict[str, float]] = {}
    for name, prompts, conditions in [
        ("harmful", harmful, {"unsteered": [], "ablate refusal dir": [AblateDirection(direction)], "one-shot v": [v]}),
        (
            "harmless",
            harmless,
            {"unsteered": [], "add refusal dir": [add_raw], "one-shot v": [v], "minus one-shot v": [minus_v]},
        ),
    ]:
        result = evaluate_interventions(model, conditions, prompts, **opts)
        save_eval(result, args.out, name)
        print(f"\n== {name} test prompts (n = {len(prompts)})")
        print(format_table(result))
        summary[name] = {row.label: row.refusal.rate for row in result.rows}
    atomic_write_json(
        args.out / "summary.json",
        {
            "refusal_direction": {"layer": layer, "pos": pos},
            "refusal_rate": summary,
            "oneshot": {k: oneshot_run.meta.get(k) for k in ("layer", "options", "prompts")},
        },
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
