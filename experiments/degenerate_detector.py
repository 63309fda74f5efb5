"""Old vs new degenerate-text detector on the labelled set (tests/data/degenerate_labels.jsonl).

1. Score every labelled completion's content (the completion without its repeats) as the answer
   to its prompt, under the unsteered model that wrote it (float32, batched, timed), and the
   model's baseline (:func:`melbo_tl.evaluate.degenerate.baseline_nll`); also under Qwen2.5-Coder
   for every row (a fixed scorer, for comparison).
2. Tune the two soup cuts (``max_content_nll``, ``max_loop_nll``) on the tuning split (prompts
   marked ``split == "tune"``), maximizing F0.5 of "degenerate": precision counts double, since a
   coherent completion called degenerate hides a behaviour from the shortlist.
3. Report precision/recall of "degenerate" for the old word-3-gram rule, the new text-only rule
   and the new model-based rule, on the held-out split and the whole set, and the confusion of the
   labelled sub-kinds against what each detector says.

Writes ``--results``/results.json + results.md (docs/triage.md quotes them).

    /work/bin/heavy .venv/bin/python experiments/degenerate_detector.py
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from melbo_tl.artifacts import atomic_write_json, atomic_write_text, read_jsonl
from melbo_tl.evaluate.degenerate import (
    DEFAULT,
    DEGENERATE_KINDS,
    Thresholds,
    baseline_nll,
    content_of,
    degeneracy,
    echo_share,
    words,
)
from melbo_tl.evaluate.fluency import content_nll
from melbo_tl.models import load_model

LABELS = Path("tests/data/degenerate_labels.jsonl")


def old_kind(completion: str, prompt: str) -> str:
    """The detector before issue 22 (word 3-gram repetition, line loops, echo, < 2 words)."""
    tokens = words(completion)
    if len(tokens) < 2:
        return "empty"
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    counts = Counter(grams)
    rep = sum(c for c in counts.values() if c > 1) / len(grams) if len(grams) >= 2 else 0.0
    lines = [ln.strip().lower() for ln in completion.splitlines() if ln.strip()]
    loop = len(lines) >= 4 and Counter(lines).most_common(1)[0][1] * 2 >= len(lines)
    if rep >= 0.5 or loop:
        return "repetition"
    if echo_share(tokens, words(prompt)) >= 0.6:
        return "echo"
    return ""


def score_contents(rows: list[dict], scorer: str | None, batch_size: int) -> tuple[dict, dict, dict]:
    """Content NLL of every row (as its prompt's answer) under ``scorer`` (None: the row's own
    model, float32), each model's baseline NLL, and seconds per completion per model."""
    nll: dict[int, float] = {}
    baseline: dict[str, float] = {}
    cost: dict[str, float] = {}
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        model = load_model(scorer or name, device="cpu", dtype="float32")
        contents = [content_of(r["completion"]) for r in mine]
        prompts = [r["prompt"] for r in mine]
        content_nll(model, contents[:batch_size], prompts[:batch_size], batch_size=batch_size)  # warm-up
        started = time.perf_counter()
        values = content_nll(model, contents, prompts, batch_size=batch_size)
        cost[scorer or name] = (time.perf_counter() - started) / len(mine)
        baseline[name] = baseline_nll(model)
        nll.update({r["id"]: v for r, v in zip(mine, values)})
        del model
    return nll, baseline, cost


def prf(rows: Sequence[dict], flagged: Callable[[dict], bool]) -> dict[str, float | int]:
    """Precision, recall and F1 of "degenerate" (the positive class), with the counts."""
    tp = sum(1 for r in rows if flagged(r) and r["label"] == "degenerate")
    fp = sum(1 for r in rows if flagged(r) and r["label"] != "degenerate")
    fn = sum(1 for r in rows if not flagged(r) and r["label"] == "degenerate")
    p = tp / (tp + fp) if tp + fp else float("nan")
    rc = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * p * rc / (p + rc) if tp else 0.0
    return {"precision": round(p, 3), "recall": round(rc, 3), "f1": round(f1, 3), "tp": tp, "fp": fp, "fn": fn,
            "n": len(rows)}  # fmt: skip


def judge(r: dict, nll: dict[int, float] | None, baseline: dict[str, float], t: Thresholds = DEFAULT) -> str:
    if nll is None:
        return degeneracy(r["completion"], r["prompt"], thresholds=t).kind
    return degeneracy(
        r["completion"], r["prompt"], content_nll=nll[r["id"]], baseline=baseline[r["model"]], thresholds=t
    ).kind


def f_half(s: dict) -> float:
    p, rc = s["precision"], s["recall"]
    return 0.0 if not s["tp"] else 1.25 * p * rc / (0.25 * p + rc)


def tune(rows: list[dict], nll: dict[int, float], baseline: dict[str, float]) -> Thresholds:
    """The (max_content_nll, max_loop_nll) pair with the best F0.5 on ``rows`` (ties: lower cuts).

    Each row is judged twice, as if its NLL were −∞ and +∞: where both agree the cut cannot
    matter; elsewhere the row is soup exactly when its NLL above the baseline exceeds the cut of
    its kind (loop or not), which makes the grid cheap."""
    fixed: dict[int, bool] = {}
    open_rows: list[tuple[dict, float, bool]] = []
    for r in rows:
        low = degeneracy(r["completion"], r["prompt"], content_nll=-math.inf)
        high = degeneracy(r["completion"], r["prompt"], content_nll=math.inf)
        if low.degenerate == high.degenerate:
            fixed[r["id"]] = low.degenerate
        else:
            loop = low.repeated_share >= DEFAULT.min_repeated
            open_rows.append((r, nll[r["id"]] - baseline[r["model"]], loop))
    best, best_score = DEFAULT, -1.0
    for cut in [x / 4 for x in range(4, 33)]:
        for loop_cut in [x / 4 for x in range(4, 49)]:
            flags = dict(fixed)
            flags.update({r["id"]: over > (loop_cut if loop else cut) for r, over, loop in open_rows})
            score = f_half(prf(rows, lambda r, flags=flags: flags[r["id"]]))
            if score > best_score:
                best, best_score = replace(DEFAULT, max_content_nll=cut, max_loop_nll=loop_cut), score
    return best


def confusion(rows: Sequence[dict], kind: Callable[[dict], str]) -> dict[str, dict[str, int]]:
    """``{labelled sub-kind: {detector's kind: count}}``."""
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(f"{r['label']}/{r['kind']}", Counter())[kind(r) or "coherent"] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def markdown(results: dict) -> str:
    lines = ["| detector | split | precision | recall | F1 | coherent flagged (FP) | degenerate missed (FN) | n |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for det, by_split in results["scores"].items():
        for split, s in by_split.items():
            lines.append(f"| {det} | {split} | {s['precision']:.2f} | {s['recall']:.2f} | {s['f1']:.2f} | {s['fp']} | "
                         f"{s['fn']} | {s['n']} |")  # fmt: skip
    for det, table in results["confusion"].items():
        kinds = sorted({k for counts in table.values() for k in counts})
        lines += ["", f"Whole set, {det}: labelled kind (rows) → what the detector says (columns)", "",
                  "| labelled | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]  # fmt: skip
        for sub, counts in table.items():
            lines.append(f"| {sub} | " + " | ".join(str(counts.get(k, "")) for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--results", type=Path, default=Path("experiments/results/degenerate_detector"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fixed-scorer", default="qwen2.5-coder-0.5b-instruct")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = read_jsonl(args.labels)
    tune_rows = [r for r in rows if r["split"] == "tune"]
    own, own_base, cost = score_contents(rows, None, args.batch_size)
    fixed, fixed_base, _ = score_contents(rows, args.fixed_scorer, args.batch_size)
    tuned = tune(tune_rows, own, own_base)
    tuned_fixed = tune(tune_rows, fixed, fixed_base)
    detectors: dict[str, Callable[[dict], str]] = {
        "old (word 3-grams)": lambda r: old_kind(r["completion"], r["prompt"]),
        "new, text only": lambda r: judge(r, None, {}),
        "new, unsteered model (default)": lambda r: judge(r, own, own_base, tuned),
        f"new, {args.fixed_scorer} scores all": lambda r: judge(r, fixed, fixed_base, tuned_fixed),
    }
    degenerate_kinds = {*DEGENERATE_KINDS, "repetition"}
    splits = {"held-out": [r for r in rows if r["split"] == "test"], "tune": tune_rows, "whole": rows}
    results = {
        "labels": str(args.labels),
        "n": len(rows),
        "label_counts": dict(Counter(f"{r['label']}/{r['kind']}" for r in rows)),
        "tuned": {"max_content_nll": tuned.max_content_nll, "max_loop_nll": tuned.max_loop_nll},
        "tuned_fixed_scorer": {
            "max_content_nll": tuned_fixed.max_content_nll,
            "max_loop_nll": tuned_fixed.max_loop_nll,
        },
        "baseline_nll": {**own_base, **{f"{args.fixed_scorer} scoring {k}": v for k, v in fixed_base.items()}},
        "seconds_per_completion": {k: round(v, 4) for k, v in cost.items()},
        "scores": {
            det: {s: prf(part, lambda r, f=f: f(r) in degenerate_kinds) for s, part in splits.items()}
            for det, f in detectors.items()
        },
        "repetitive_kept": {
            det: sum(1 for r in rows if r["kind"] == "repetitive" and f(r) not in degenerate_kinds)
            for det, f in detectors.items()
        },
        "confusion": {det: confusion(rows, f) for det, f in detectors.items()},
        "content_nll": {str(k): round(v, 3) for k, v in own.items()},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results / "results.json", results)
    atomic_write_text(args.results / "results.md", markdown(results))
    print(markdown(results))
    print(json.dumps({k: results[k] for k in ("tuned", "tuned_fixed_scorer", "seconds_per_completion",
                                              "baseline_nll", "repetitive_kept")}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
