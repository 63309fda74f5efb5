"""Capability discovery with a measured ceiling: can a DCT vector trained on ONE direct-answer
prompt unlock the accuracy the model reaches when asked to think step by step?

After Mack & Turner's "Capability Discovery" (Qwen-1.8B: 7/32 vectors elicited chain-of-thought,
the best lifted held-out accuracy from 11 % to 63 %). Stages, each resumable (files under ``--out``):

1. **survey** — every model of ``--survey-models`` × task of ``--survey-tasks`` × prompt style
   (``direct``, ``step``, ``step-shot``: :mod:`melbo_tl.evaluate.reasoning`) on the first
   ``--survey-n`` validation instances with ``--survey-tokens`` new tokens (enough for the wordy
   ``step`` style to finish). The gap is the better step-by-step style minus direct; with ``--model``/``--task auto``
   the (model, task) with the largest validation gap is studied.
2. **ceiling** — the chosen model and task on the test split: the direct prompt and the ceiling,
   the step style that was more accurate on validation.
3. **dct** — DCT vectors fitted on the ONE training instance's direct prompt, for every layer pair
   of ``--layers`` and radius R = calibrated × each ``--radius-multiples``.
4. **screen** — every vector on the screen split (``--screen-tokens``); the ``--top-k`` most
   accurate (ties: more work shown) and every vector eliciting step-by-step text go on to
5. **val** — the validation split, where the best vector (and so its R and layers) is chosen.
6. **random** — ``--random-vectors`` random directions at the best vector's R and sites, screened
   and validated the same way (the best random vector is chosen on validation too).
7. **test** — unsteered, the best DCT vector and the best random vector on the disjoint test split.

Every condition after the survey and screen (ceiling, unsteered, steered; validation and test) is
greedy with the same ``--tokens`` budget and ``--dtype``.
One answer rule for every condition: the last number in the completion
(:func:`~melbo_tl.evaluate.reasoning.final_answer`). A completion *shows work* if it does
arithmetic with ≥ 2 numbers not in the question (:func:`~melbo_tl.evaluate.reasoning.shows_work`);
a vector *elicits step-by-step text* if ≥ half of its screen completions show work.

    /work/bin/heavy .venv/bin/python experiments/capability_discovery.py --out runs/capability_discovery

A rerun with the same settings generates nothing again (completions, runs and rankings are read back).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from capability_search import vector_stages
from capability_stages import Setup, ceiling_stage, choose, survey_stage
from capability_tables import markdown

from melbo_tl.artifacts import atomic_write_json, atomic_write_text
from melbo_tl.evaluate.reasoning import GENERATORS

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def parse_layers(text: str) -> list[tuple[int, int]] | None:
    """``S:T,…`` (add after block S, read entering block T) or ``default`` (the reference's sites)."""
    if text == "default":
        return None
    pairs = []
    for part in text.split(","):
        try:
            s, t = (int(x) for x in part.split(":"))
        except ValueError:
            raise SystemExit(f"--layers: {part!r} is not SOURCE:TARGET (e.g. 7:16) or 'default'.") from None
        pairs.append((s, t))
    return pairs


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/capability_discovery"))
    p.add_argument("--results", type=Path, default=Path("experiments/results/capability_discovery"),
                   help="where results.json/.md are copied (small files)")  # fmt: skip
    p.add_argument("--stages", default="survey,ceiling,vectors", help="any of survey, ceiling, vectors")
    p.add_argument("--survey-models", default=",".join(MODELS))
    p.add_argument("--survey-tasks", default=",".join(GENERATORS))
    p.add_argument("--survey-n", type=int, default=24, help="validation instances per survey cell (the first n)")
    p.add_argument("--survey-tokens", type=int, default=256,
                   help="new tokens allowed in the survey (enough for the step style to finish)")  # fmt: skip
    p.add_argument("--model", default="auto", help="auto: the survey's largest validation gap")
    p.add_argument("--task", choices=["auto", *sorted(GENERATORS)], default="auto")
    p.add_argument("--dtype", default="bfloat16", help="dtype of every generation")
    p.add_argument("--fit-dtype", default="float32", help="dtype the DCT vectors are fitted in")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--n-screen", type=int, default=10)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--tokens", type=int, default=192, help="new tokens allowed in every condition (greedy)")
    p.add_argument("--screen-tokens", type=int, default=None,
                   help="new tokens allowed on the screen split (a cheaper first pass; default: --tokens)")  # fmt: skip
    p.add_argument("--vectors", type=int, default=32, help="DCT vectors per (layers, R) configuration")
    p.add_argument("--layers", type=parse_layers, default=parse_layers("default"),
                   help="S:T,… (vector added after block S, response read entering block T) or default")  # fmt: skip
    p.add_argument("--radius-multiples", default="1,2", help="R = calibrated R × each")
    p.add_argument("--top-k", type=int, default=6, help="vectors of the screen that go on to validation")
    p.add_argument("--random-vectors", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    for name in args.survey_models.split(","):
        if name not in MODELS:
            p.error(f"--survey-models: {name!r} is not one of {', '.join(MODELS)}")
    if args.model not in ("auto", *MODELS):
        p.error(f"--model: {args.model!r} is not auto or one of {', '.join(MODELS)}")
    for name in args.survey_tasks.split(","):
        if name not in GENERATORS:
            p.error(f"--survey-tasks: {name!r} is not one of {', '.join(GENERATORS)}")
    for name in args.stages.split(","):
        if name not in ("survey", "ceiling", "vectors"):
            p.error(f"--stages: {name!r} is not one of survey, ceiling, vectors")
    try:
        args.radius_multiples = [float(x) for x in args.radius_multiples.split(",")]
    except ValueError:
        p.error(f"--radius-multiples: {args.radius_multiples!r} is not a comma-separated list of numbers")
    for flag, value in (("--n-val", args.n_val), ("--n-screen", args.n_screen), ("--n-test", args.n_test),
                        ("--tokens", args.tokens), ("--survey-n", args.survey_n),
                        ("--survey-tokens", args.survey_tokens), ("--vectors", args.vectors), ("--top-k", args.top_k),
                        ("--random-vectors", args.random_vectors)):  # fmt: skip
        if value < 1:
            p.error(f"{flag} must be ≥ 1, got {value}")
    args.screen_tokens = args.screen_tokens or args.tokens
    if args.screen_tokens < 1:
        p.error(f"--screen-tokens must be ≥ 1, got {args.screen_tokens}")
    if args.survey_n > args.n_val:
        p.error(f"--survey-n ({args.survey_n}) must be ≤ --n-val ({args.n_val}): the survey reads the validation split")
    return args


def main() -> None:
    args = arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    setup = Setup(args)
    stages = args.stages.split(",")
    survey_file = args.out / "survey.json"
    if "survey" in stages:
        survey = survey_stage(setup, args.survey_models.split(","), args.survey_tasks.split(","))
    else:
        survey = json.loads(survey_file.read_text()) if survey_file.is_file() else None
    choice = choose(setup, survey)
    print(f"chosen: {choice}", flush=True)
    results: dict[str, Any] = {"settings": setup.describe(), "choice": choice}
    if survey is not None:
        results["survey"] = survey
    if "ceiling" in stages:
        results["ceiling"] = ceiling_stage(setup, choice)
    if "vectors" in stages:
        results["vectors"] = vector_stages(setup)
    results["seconds"] = setup.timings
    atomic_write_json(args.out / "results.json", results)
    atomic_write_text(args.out / "results.md", markdown(results))
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md"):
        shutil.copyfile(args.out / name, args.results / name)
    print(markdown(results))


if __name__ == "__main__":
    main()
