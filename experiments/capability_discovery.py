"""Capability discovery: do unsupervised vectors trained on one direct-answer arithmetic prompt
elicit step-by-step reasoning, and does it raise held-out accuracy?

After Mack & Turner's "Capability Discovery" section (Qwen-1.8B, one-shot direct-answer prompt:
7/32 MELBO vectors elicited chain-of-thought; the best lifted held-out accuracy from 11 % to 63 %).
Here:

1. a task of arithmetic items (``--task``, see :data:`TASKS`) posed as a chat with ``--shots``
   few-shot turns whose assistant answers are the number only, so the unsteered model answers
   directly; one training instance and ``--n-test`` held-out instances with other numbers;
2. ``--vectors`` DCT vectors (``--radius auto``) trained on the one training prompt;
3. every vector ranked by exact-match accuracy on the held-out items (``melbo_tl.evaluate.tasks``:
   greedy, ``--max-new-tokens``, the last number in the completion is the answer), the unsteered
   baseline included, 95 % Wilson intervals;
4. each vector's completions checked for worked arithmetic with :func:`shows_work`.

**Step-by-step detector** (the rule): a completion *shows work* if it contains arithmetic (an
``=``, or an operator + - * × between digits) and at least two distinct numbers that are not
numbers of the question: at least one intermediate result besides the final answer. The direct
answer ``122`` and the restatement ``59 + 63 = 122`` do not show work; ``50+60=110, 9+3=12,
110+12=122`` does. A vector *elicits step-by-step reasoning* if at least half of its held-out
completions show work.

Writes into ``--out``: ``task.jsonl`` (the held-out items), ``run/`` (the DCT run folder, with
``run/tasks/task/`` the ranking files), ``results.json`` and ``results.md``. Every stage resumes
(the DCT run with ``resume=True``, the ranking from its checkpointed completions).

    nice -n 5 .venv/bin/python experiments/capability_discovery.py --out runs/capability
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages import Stages

from melbo_tl.artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_text, load_run
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.evaluate.tasks import UNSTEERED, rank_by_task
from melbo_tl.models import load_model
from melbo_tl.optimize.dct import DCTConfig
from melbo_tl.training import train_to_folder

NUMBER = r"-?\d+"
ARITHMETIC = re.compile(r"=|\d\s*[-+*×]\s*\d")


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+", text.replace(",", "")))


def shows_work(completion: str, question: str) -> bool:
    """True if the completion does arithmetic with ≥ 2 numbers not in the question (module docstring)."""
    return ARITHMETIC.search(completion) is not None and len(numbers(completion) - numbers(question)) >= 2


def _ab(rng: random.Random) -> tuple[str, int]:
    """a = a1 + a2, b = b1 + b2 with single digits; the answer a·b."""
    a1, a2, b1, b2 = (rng.randint(1, 9) for _ in range(4))
    return f"a={a1}+{a2}, b={b1}+{b2}. What is a*b?", (a1 + a2) * (b1 + b2)


def _mul1(rng: random.Random) -> tuple[str, int]:
    """One digit times two digits."""
    a, b = rng.randint(3, 9), rng.randint(12, 49)
    return f"What is {a}*{b}?", a * b


def _mul2(rng: random.Random) -> tuple[str, int]:
    """Two digits times two digits."""
    a, b = rng.randint(11, 99), rng.randint(11, 99)
    return f"What is {a}*{b}?", a * b


def _add2(rng: random.Random) -> tuple[str, int]:
    """Two two-digit numbers added."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a}+{b}?", a + b


TASKS: dict[str, Callable[[random.Random], tuple[str, int]]] = {"ab": _ab, "mul1": _mul1, "mul2": _mul2, "add2": _add2}


def make_items(kind: str, n_test: int, shots: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training item, held-out items): distinct questions, each prompt a chat of ``shots``
    direct-answer examples then the question."""
    rng = random.Random(seed)
    seen: set[str] = set()
    questions: list[tuple[str, int]] = []
    while len(questions) < shots + 1 + n_test:
        q, a = TASKS[kind](rng)
        if q not in seen:
            seen.add(q)
            questions.append((q, a))
    examples, rest = questions[:shots], questions[shots:]
    turns: list[dict[str, str]] = []
    for q, a in examples:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": str(a)}]
    items = [{"prompt": [*turns, {"role": "user", "content": q}], "answer": str(a)} for q, a in rest]
    return items[:1], items[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/capability_discovery"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--task", choices=sorted(TASKS), default="add2")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--vectors", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--vectors-per-chunk", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rank-vectors", type=int, default=None, help="rank only the first K vectors (DCT rank order) [default: all]"
    )
    parser.add_argument("--radius", default="auto", help="DCT R, or auto (calibrated: ρ(R) = 0.5)")
    parser.add_argument("--source", type=int, default=None, help="DCT source layer [default: 7]")
    parser.add_argument("--target", type=int, default=None, help="DCT target layer [default: n_layers − 8]")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stage = Stages()
    timings = stage.timings

    train, test = make_items(args.task, args.n_test, args.shots, args.seed)
    task_file = args.out / "task.jsonl"
    atomic_write_jsonl(task_file, test)
    model = stage("load", lambda: load_model(args.model, dtype="float32"))  # the README figures are float32
    cfg = DCTConfig(
        n_factors=args.vectors, radius=args.radius, seed=args.seed, source_layer=args.source, target_layer=args.target
    )
    run_dir = stage(
        "dct", lambda: train_to_folder(model, "dct", [train[0]["prompt"]], cfg, args.out / "run", resume=True)
    )
    ranking = stage(
        "rank",
        lambda: rank_by_task(
            model, run_dir, task_file, extract=NUMBER, max_new_tokens=args.max_new_tokens,
            vectors_per_chunk=args.vectors_per_chunk, batch_size=args.batch_size,
            indices=None if args.rank_vectors is None else list(range(args.rank_vectors)),
        ),
    )  # fmt: skip

    work: dict[int, list[bool]] = {}
    for row in ranking.rows:
        question = test[row["item"]]["prompt"][-1]["content"]
        work.setdefault(row["vector"], []).append(shows_work(row["completion"], question))
    work_share = {v: sum(flags) / len(flags) for v, flags in work.items()}
    reasoning = sorted(v for v, share in work_share.items() if v != UNSTEERED and share >= 0.5)
    vectors = [s for s in ranking.scores if s.vector != UNSTEERED]
    base = ranking.baseline
    correct_by = {(r["vector"], r["item"]): r["correct"] for r in ranking.rows}
    reasoning_acc = (
        rate_with_ci(sum(correct_by[(v, i)] for v in reasoning for i in range(len(test))), len(reasoning) * len(test))
        if reasoning
        else None
    )
    meta = load_run(run_dir).meta
    examples = {
        s.vector: [r["completion"] for r in ranking.rows if r["vector"] == s.vector][:3] for s in [base, *vectors[:3]]
    }
    results = {
        "model": args.model,
        "task": args.task,
        "shots": args.shots,
        "train_prompt": train[0]["prompt"],
        "train_answer": train[0]["answer"],
        "n_test": len(test),
        "method": "dct",
        "n_vectors": len(vectors),
        "n_trained": args.vectors,
        "radius": meta.get("radius"),
        "source": meta.get("config", {}).get("source"),
        "target": meta.get("config", {}).get("target"),
        "max_new_tokens": args.max_new_tokens,
        "extract": NUMBER + " (last match)",
        "detector": "shows work = completion matches " + ARITHMETIC.pattern + " and holds ≥ 2 distinct numbers not in "
        "the question; a vector elicits step-by-step if ≥ 50 % of its held-out completions show work",
        "unsteered": {**base.to_dict(), "shows_work": work_share[UNSTEERED]},
        "vectors": [{**s.to_dict(), "shows_work": work_share[s.vector]} for s in vectors],
        "n_step_by_step": len(reasoning),
        "step_by_step_vectors": reasoning,
        "step_by_step_pooled_accuracy": None if reasoning_acc is None else reasoning_acc.to_dict(),
        "n_better_than_unsteered": len(ranking.better_than_baseline()),
        "examples": {str(k): v for k, v in examples.items()},
        "timings_s": {**timings, "rank_generation_this_call": round(ranking.seconds, 1)},
    }
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "results.md", markdown(results))
    print(markdown(results))


def markdown(r: dict[str, Any]) -> str:
    def ci(s: dict[str, Any]) -> str:
        return f"{s['correct']}/{s['n']} = {s['accuracy']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"

    lines = [
        f"Capability discovery: {r['model']}, task `{r['task']}` ({r['shots']}-shot direct answer), "
        f"{r['n_vectors']} of {r['n_trained']} DCT vectors (R = {r['radius']:.3g}, layers {r['source_layer']}→{r['target_layer']}) "
        f"trained on one prompt, scored on {r['n_test']} held-out items (greedy, {r['max_new_tokens']} new tokens, "
        "exact match of the last number; 95 % Wilson intervals).",
        "",
        "| condition | accuracy | shows work |",
        "|---|---|---:|",
        f"| unsteered | {ci(r['unsteered'])} | {r['unsteered']['shows_work']:.2f} |",
    ]
    for s in r["vectors"][:5]:
        lines.append(f"| vector {s['vector']} | {ci(s)} | {s['shows_work']:.2f} |")
    pooled = r["step_by_step_pooled_accuracy"]
    lines += [
        "",
        f"- vectors eliciting step-by-step reasoning (≥ 50 % of held-out completions show work: arithmetic with "
        f"≥ 2 numbers not in the question): "
        f"{r['n_step_by_step']}/{r['n_vectors']} {r['step_by_step_vectors']}"
        + (
            f"; their pooled accuracy {pooled['rate']:.2f} [{pooled['low']:.2f}, {pooled['high']:.2f}]"
            if pooled
            else ""
        ),
        f"- vectors whose interval lies wholly above the unsteered one: {r['n_better_than_unsteered']}",
        f"- time (s): {r['timings_s']}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
