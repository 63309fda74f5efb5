"""Capability discovery with a measured ceiling: can a DCT vector trained on ONE direct-answer
prompt unlock the accuracy the model reaches when asked to think step by step?

After Mack & Turner's "Capability Discovery" (Qwen-1.8B: 7/32 vectors elicited chain-of-thought,
the best lifted held-out accuracy from 11 % to 63 %). Stages, each resumable (files under ``--out``):

1. **survey** — every model of ``--survey-models`` × task of ``--survey-tasks`` ×
   prompt style (``direct``, ``step``, ``step-shot``: :mod:`melbo_tl.evaluate.reasoning`) on the
   validation split, greedy, ``--survey-tokens`` new tokens for every style. The gap is the best
   step-by-step style minus direct; the (model, task) to study is chosen here, on validation.
2. **ceiling** — the chosen model and task, all three styles, on the test split.
3. **dct** — DCT vectors trained on the ONE training instance's direct prompt, for every
   source:target layer pair of ``--layers`` and radius R = calibrated × each ``--radius-multiples``.
4. **screen** — every vector on the screen split (validation); the ``--top-k`` most accurate go on
5. **val** — to the validation split, where the best vector is chosen (accuracy, then Wilson low).
6. **random** — ``--random-vectors`` random directions at the best vector's R and layers, screened
   and validated the same way (the best random vector chosen on validation too).
7. **test** — unsteered, the best vector and the best random vector on the disjoint test split.

One answer rule for every condition: the last number in the completion
(:func:`~melbo_tl.evaluate.reasoning.final_answer`). A completion *shows work* if it does
arithmetic with ≥ 2 numbers not in the question (:func:`~melbo_tl.evaluate.reasoning.shows_work`);
a vector *elicits step-by-step text* if ≥ half of its screen completions show work.

    /work/bin/heavy .venv/bin/python experiments/capability_discovery.py --out runs/capability_discovery
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from capability_stages import Setup, ceiling_stage, survey_stage, vector_stages
from capability_tables import markdown

from melbo_tl.artifacts import atomic_write_json, atomic_write_text
from melbo_tl.evaluate.reasoning import GENERATORS, STYLES

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def parse_layers(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        try:
            s, t = (int(x) for x in part.split(":"))
        except ValueError:
            raise SystemExit(f"--layers: {part!r} is not SOURCE:TARGET (e.g. 7:16).") from None
        pairs.append((s, t))
    return pairs


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/capability_discovery"))
    p.add_argument("--results", type=Path, default=Path("experiments/results/capability_discovery"),
                   help="where results.json/.md and the tables are copied (small files)")  # fmt: skip
    p.add_argument("--stages", default="survey,ceiling,vectors", help="any of survey, ceiling, vectors")
    p.add_argument("--survey-models", default=",".join(MODELS))
    p.add_argument("--survey-tasks", default=",".join(GENERATORS))
    p.add_argument("--survey-tokens", type=int, default=256)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", choices=sorted(GENERATORS), default="ab")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--n-screen", type=int, default=10)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--tokens", type=int, default=160, help="new tokens for every steered and test condition")
    p.add_argument("--vectors", type=int, default=32, help="DCT vectors per (layers, R) configuration")
    p.add_argument("--layers", type=parse_layers, default=parse_layers("7:16"))
    p.add_argument("--radius-multiples", default="1,2")
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--random-vectors", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    for name in args.survey_models.split(","):
        if name not in MODELS:
            p.error(f"--survey-models: {name!r} is not one of {', '.join(MODELS)}")
    for name in args.survey_tasks.split(","):
        if name not in GENERATORS:
            p.error(f"--survey-tasks: {name!r} is not one of {', '.join(GENERATORS)}")
    for name in args.stages.split(","):
        if name not in ("survey", "ceiling", "vectors"):
            p.error(f"--stages: {name!r} is not one of survey, ceiling, vectors")
    args.radius_multiples = [float(x) for x in args.radius_multiples.split(",")]
    return args


def main() -> None:
    args = arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    setup = Setup.from_args(args)
    stages = args.stages.split(",")
    results: dict[str, Any] = {"settings": setup.describe(), "styles": list(STYLES)}
    if "survey" in stages:
        results["survey"] = survey_stage(setup, args.survey_models.split(","), args.survey_tasks.split(","))
    if "ceiling" in stages:
        results["ceiling"] = ceiling_stage(setup)
    if "vectors" in stages:
        results["vectors"] = vector_stages(setup)
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "results.md", markdown(results))
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md"):
        shutil.copyfile(args.out / name, args.results / name)
    print(markdown(results))


if __name__ == "__main__":
    main()
