"""Survey and ceiling stages of experiments/capability_discovery.py, and what they share (the
settings, one model at a time, a summary of scored completions). Every stage writes its files
atomically and reads them back on a rerun instead of generating again."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import atomic_write_json, atomic_write_jsonl, read_jsonl
from melbo_tl.evaluate.reasoning import STYLES, Instance, final_answer, make_splits, prompt_messages, shows_work
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.generate import generate
from melbo_tl.models import load_model

STEP_STYLES = ("step", "step-shot")
RULES = {
    "answer": "the last number in the completion (thousands separators and a zero fraction dropped), "
    "the same rule for every prompt style and every steered completion",
    "shows_work": "an '=' or an operator between digits, and >= 2 distinct numbers not in the question",
    "elicits": ">= 50 % of a vector's screen completions show work",
    "choice": "the (model, task) with the largest validation gap (best step-by-step style - direct); "
    "the ceiling's step style is the one more accurate on validation",
}


@dataclass
class Setup:
    """The command line's settings, the chosen model and task, one loaded model at a time
    (name and dtype), and wall times per stage."""

    args: argparse.Namespace
    model_name: str = ""
    task: str = ""
    _model: Any = None
    _loaded: tuple[str, str] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.args.out

    def sizes(self) -> dict[str, int]:
        a = self.args
        return {"shots": 1, "train": 1, "val": a.n_val, "screen": a.n_screen, "test": a.n_test}

    def splits(self, task: str | None = None) -> dict[str, list[Instance]]:
        return make_splits(task or self.task, self.sizes(), seed=self.args.seed)

    def model(self, name: str | None = None, dtype: str | None = None) -> Any:
        key = (name or self.model_name, dtype or self.args.dtype)
        if self._loaded != key:
            self._model = None
            self._model = load_model(key[0], device="cpu", dtype=key[1])
            self._loaded = key
        return self._model

    def describe(self) -> dict[str, Any]:
        a = self.args
        return {
            "model": self.model_name, "task": self.task, "dtype": a.dtype, "fit_dtype": a.fit_dtype, "seed": a.seed,
            "splits": self.sizes(), "tokens_allowed": a.tokens, "screen_tokens": a.screen_tokens,
            "survey_n": a.survey_n, "survey_tokens": a.survey_tokens, "decoding": "greedy", "vectors_per_config": a.vectors,
            "layers": "default" if a.layers is None else [f"{s}:{t}" for s, t in a.layers],
            "radius_multiples": a.radius_multiples, "top_k": a.top_k, "random_vectors": a.random_vectors,
            "rules": RULES,
        }  # fmt: skip

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 1)


def summarize(rows: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    """Accuracy with its Wilson interval, tokens, finished and shows-work shares of scored rows."""
    ci = rate_with_ci(sum(bool(r["correct"]) for r in rows), len(rows))
    return {
        "n": ci.n, "correct": ci.k, "accuracy": ci.rate, "low": ci.low, "high": ci.high, "tokens_allowed": tokens,
        "mean_tokens": round(sum(r["n_tokens"] for r in rows) / len(rows), 1),
        "finished": sum(bool(r["finished"]) for r in rows) / len(rows),
        "shows_work": sum(bool(r["shows_work"]) for r in rows) / len(rows),
    }  # fmt: skip


def style_cell(
    setup: Setup, path: Path, model_name: str, instances: list[Instance], shots: list[Instance], style: str, tokens: int
) -> list[dict[str, Any]]:
    """Completions of ``instances`` posed in ``style`` with ``tokens`` new tokens allowed, scored
    (read back from ``path`` when it holds the same questions at the same token budget)."""
    rows = read_jsonl(path)
    same = len(rows) == len(instances) and all(r["question"] == i.question for r, i in zip(rows, instances))
    if same and rows[0].get("tokens_allowed") == tokens:
        return rows
    model = setup.model(model_name)
    started = time.perf_counter()
    prompts = [prompt_messages(i, style, shots) for i in instances]
    completions = generate(model, prompts, max_new_tokens=tokens, batch_size=setup.args.batch_size)
    rows = [
        {"item": k, "question": i.question, "answer": i.answer, "completion": c.text, "n_tokens": len(c.token_ids),
         "finished": c.finished, "tokens_allowed": tokens, "correct": final_answer(c.text) == str(i.answer),
         "shows_work": shows_work(c.text, i.question)}
        for k, (i, c) in enumerate(zip(instances, completions))
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(path, rows)
    seconds = time.perf_counter() - started
    s = summarize(rows, tokens)
    print(f"  {model_name} {path.parent.name} {path.stem}: {s['correct']}/{s['n']} ({seconds:.0f} s)", flush=True)
    return rows


def _val_cells(setup: Setup, model_name: str, task: str) -> dict[str, dict[str, Any]]:
    """Every style on the first ``--survey-n`` validation instances, ``--survey-tokens`` allowed."""
    a = setup.args
    splits = setup.splits(task)
    cells = {}
    for style in STYLES:
        path = setup.out / "survey" / model_name / task / f"{style}.jsonl"
        started = time.perf_counter()
        rows = style_cell(setup, path, model_name, splits["val"][: a.survey_n], splits["shots"], style, a.survey_tokens)
        setup.timed(f"survey {model_name}", started)
        cells[style] = {**summarize(rows, a.survey_tokens), "examples": [r["completion"] for r in rows[:2]]}
    return cells


def _gap(cells: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """The step style more accurate on validation (step on a tie), and its gap over direct."""
    best = max(STEP_STYLES, key=lambda s: cells[s]["accuracy"])
    return best, round(cells[best]["accuracy"] - cells["direct"]["accuracy"], 3)


def survey_stage(setup: Setup, models: list[str], tasks: list[str]) -> dict[str, Any]:
    """Every model × task × style on the validation split; the gap per (model, task), largest first."""
    cells, gaps = [], []
    for model_name in models:
        for task in tasks:
            by_style = _val_cells(setup, model_name, task)
            cells += [{"model": model_name, "task": task, "style": s, **c} for s, c in by_style.items()]
            style, gap = _gap(by_style)
            gaps.append({"model": model_name, "task": task, "best_step_style": style, "gap": gap})
    gaps.sort(key=lambda g: -g["gap"])
    out = {
        "split": "val",
        "n": setup.args.survey_n,
        "tokens_allowed": setup.args.survey_tokens,
        "cells": cells,
        "gaps": gaps,
    }
    atomic_write_json(setup.out / "survey.json", out)
    return out


def choose(setup: Setup, survey: dict[str, Any] | None) -> dict[str, Any]:
    """Set the model and task (the command line's, or the survey's largest validation gap) and
    return the choice with the step style for the ceiling, chosen on validation."""
    a = setup.args
    if "auto" in (a.model, a.task):
        if survey is None:
            raise SystemExit("--model/--task auto need the survey stage (add survey to --stages).")
        fits = [g for g in survey["gaps"] if a.model in ("auto", g["model"]) and a.task in ("auto", g["task"])]
        if not fits:
            raise SystemExit(f"The survey holds no (model, task) matching --model {a.model} --task {a.task}.")
        pick = fits[0]
        setup.model_name, setup.task = pick["model"], pick["task"]
        reason = f"largest validation gap among the surveyed pairs matching --model {a.model} --task {a.task}"
    else:
        setup.model_name, setup.task = a.model, a.task
        reason = "given on the command line"
    cells = _val_cells(setup, setup.model_name, setup.task)
    style, gap = _gap(cells)
    return {"model": setup.model_name, "task": setup.task, "step_style": style, "val_gap": gap, "reason": reason}


def ceiling_stage(setup: Setup, choice: dict[str, Any]) -> dict[str, Any]:
    """The chosen model and task on the test split: the direct prompt and the step style chosen
    on validation (``ceiling_style``), at the steered conditions' token budget."""
    splits = setup.splits()
    styles = {}
    started = time.perf_counter()
    for style in ("direct", choice["step_style"]):
        path = setup.out / "ceiling" / f"{style}.jsonl"
        rows = style_cell(setup, path, setup.model_name, splits["test"], splits["shots"], style, setup.args.tokens)
        styles[style] = {**summarize(rows, setup.args.tokens), "examples": [r["completion"] for r in rows[:3]]}
    setup.timed("ceiling", started)
    return {"split": "test", "styles": styles, "ceiling_style": choice["step_style"]}
