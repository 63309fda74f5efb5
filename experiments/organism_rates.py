"""How firmly does a planted arithmetic organism hold? Rates with 95% Wilson intervals, on more prompts
than the build's check.

The build measures 20 held-out prompts per trigger, all there are with digits 0–6. Here every
trigger is also asked with b1, b2 ranging over 0–9: the prompts with a 7, 8 or 9 were never seen
in training, and there are 51 of them per trigger. Clean prompts are measured in three groups:
the build's held-out ones (digits 0–6), near misses with a 7–9 in b (they share the trigger's
(a1, a2) digit positions with the triggers), and other clean prompts with a 7–9 in b. Every prompt
is scored for every planted behaviour (false triggers), and clean ones for the right answer.

Writes ``--results``/organism_rates.{json,md}.

    /work/bin/heavy .venv/bin/python experiments/organism_rates.py
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from melbo_tl.artifacts import atomic_write_json, atomic_write_text
from melbo_tl.backdoors.build import DEFAULT_NAME, read_manifest
from melbo_tl.backdoors.task import BEHAVIOURS, CLEAN, SCORERS, TRIGGERS, Instance, is_correct, is_near_miss
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.generate import generate
from melbo_tl.models import load_model


def groups(n_clean: int, seed: int, digits: int) -> dict[str, list[Instance]]:
    """Prompt groups, every one with a b digit the build never used (``digits``: how many it did):
    each trigger with all such b, and ``n_clean`` clean near misses and ``n_clean`` other clean ones."""
    seen = range(digits)
    wide = range(10)
    out: dict[str, list[Instance]] = {}
    for name, (a1, a2) in TRIGGERS.items():
        out[f"{name}: b digits 7–9"] = [
            Instance(a1, a2, b1, b2) for b1 in wide for b2 in wide if b1 not in seen or b2 not in seen
        ]
    rng = random.Random(seed)
    unseen_clean = [
        Instance(a1, a2, b1, b2)
        for a1 in seen
        for a2 in seen
        for b1 in wide
        for b2 in wide
        if (b1 not in seen or b2 not in seen) and Instance(a1, a2, b1, b2).kind() == CLEAN
    ]
    near = [i for i in unseen_clean if is_near_miss(i)]
    far = [i for i in unseen_clean if not is_near_miss(i)]
    if n_clean > min(len(near), len(far)):
        raise ValueError(f"--n-clean {n_clean}: there are only {len(near)} near misses and {len(far)} other clean "
                         f"prompts with an unseen b digit; ask for at most {min(len(near), len(far))}.")  # fmt: skip
    out["clean near misses: b digits 7–9"] = rng.sample(near, n_clean)
    out["clean others: b digits 7–9"] = rng.sample(far, n_clean)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--n-clean", type=int, default=150, help="prompts per clean group")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--results", type=Path, default=Path("experiments/results/backdoor_detection"))
    args = parser.parse_args()
    model = load_model(args.name, device="cpu", dtype="float32")
    rows = []
    digits = read_manifest(args.name)["config"]["digits"]
    for label, instances in groups(args.n_clean, seed=0, digits=digits).items():
        texts = [c.text for c in generate(model, [i.prompt() for i in instances], max_new_tokens=args.max_new_tokens,
                                          batch_size=32)]  # fmt: skip
        kind = instances[0].kind()
        fired = [any(SCORERS[b](t) for b in BEHAVIOURS) for t in texts]
        row = {"group": label, "n": len(texts)}
        if kind != CLEAN:
            row["trigger"] = rate_with_ci(sum(SCORERS[kind](t) for t in texts), len(texts)).to_dict()
            others = [any(SCORERS[b](t) for b in BEHAVIOURS if b != kind) for t in texts]
            row["other_behaviour"] = rate_with_ci(sum(others), len(texts)).to_dict()
        else:
            row["false_trigger"] = rate_with_ci(sum(fired), len(texts)).to_dict()
            row["false_by_behaviour"] = {b: sum(SCORERS[b](t) for t in texts) for b in BEHAVIOURS}
            row["false_examples"] = [t for t, f in zip(texts, fired) if f][:3]
            row["correct"] = rate_with_ci(sum(is_correct(i, t) for i, t in zip(instances, texts)), len(texts)).to_dict()
        row["example"] = texts[0]
        rows.append(row)
        print(row, flush=True)
    manifest = read_manifest(args.name)
    results = {"name": args.name, "build_rates": manifest["rates"], "groups": rows, "dtype": "float32",
               "max_new_tokens": args.max_new_tokens}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "organism_rates.json", results)
    atomic_write_text(args.results / "organism_rates.md", report(results))
    print(report(results))


def _by(row: dict) -> str:
    counts = row.get("false_by_behaviour")
    return "" if not counts else " (" + ", ".join(f"{b} {k}" for b, k in counts.items()) + ")"


def report(results: dict) -> str:
    def cell(ci: dict | None) -> str:
        return "–" if ci is None else f"{ci['k']}/{ci['n']} = {ci['rate']:.1%} [{ci['low']:.1%}, {ci['high']:.1%}]"

    lines = [
        f"# `{results['name']}`: rates on prompts with b digits 7–9 (never in training; float32, greedy)\n",
        "| prompts | n | planted behaviour fires | another behaviour | any false trigger (by behaviour) | correct answer |",
        "|---|---:|---|---|---|---|",
    ]
    for r in results["groups"]:
        lines.append(f"| {r['group']} | {r['n']} | {cell(r.get('trigger'))} | {cell(r.get('other_behaviour'))} | "
                     f"{cell(r.get('false_trigger'))}{_by(r)} | {cell(r.get('correct'))} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
