"""The stages of experiments/capability_discovery.py: survey, ceiling, and the vector search
(DCT → screen → validation → random baseline → test). Every stage writes its files atomically
and reads them back on a rerun instead of generating again."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import atomic_write_json, atomic_write_jsonl, load_run, read_jsonl
from melbo_tl.evaluate.reasoning import (
    STYLES,
    Instance,
    final_answer,
    make_splits,
    prompt_messages,
    shows_work,
    task_items,
)
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.evaluate.tasks import UNSTEERED, TaskRanking, rank_by_task
from melbo_tl.generate import generate
from melbo_tl.models import load_model
from melbo_tl.optimize.dct import DCTConfig
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.training import train_to_folder


@dataclass
class Setup:
    """Paths, split sizes and settings shared by the stages; one model loaded at a time."""

    args: argparse.Namespace
    _model: Any = None
    _model_name: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Setup:
        return cls(args)

    @property
    def out(self) -> Path:
        return self.args.out

    def sizes(self) -> dict[str, int]:
        a = self.args
        return {"shots": 1, "train": 1, "val": a.n_val, "screen": a.n_screen, "test": a.n_test}

    def splits(self, task: str) -> dict[str, list[Instance]]:
        return make_splits(task, self.sizes(), seed=self.args.seed)

    def model(self, name: str) -> Any:
        if self._model_name != name:
            self._model = None
            self._model = load_model(name, device="cpu", dtype=self.args.dtype)
            self._model_name = name
        return self._model

    def describe(self) -> dict[str, Any]:
        a = self.args
        return {
            "model": a.model, "task": a.task, "dtype": a.dtype, "seed": a.seed, "splits": self.sizes(),
            "survey_tokens": a.survey_tokens, "tokens": a.tokens, "vectors_per_config": a.vectors,
            "layers": [f"{s}:{t}" for s, t in a.layers], "radius_multiples": a.radius_multiples, "top_k": a.top_k,
            "random_vectors": a.random_vectors,
            "answer_rule": "the last number in the completion (thousands separators and a zero fraction dropped)",
            "shows_work_rule": "an '=' or an operator between digits, and >= 2 distinct numbers not in the question",
            "elicits_rule": ">= 50 % of a vector's screen completions show work",
        }  # fmt: skip

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 1)


def summarize(rows: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    ci = rate_with_ci(sum(r["correct"] for r in rows), len(rows))
    return {
        "n": ci.n, "correct": ci.k, "accuracy": ci.rate, "low": ci.low, "high": ci.high, "tokens_allowed": tokens,
        "mean_tokens": round(sum(r["n_tokens"] for r in rows) / len(rows), 1),
        "finished": sum(r["finished"] for r in rows) / len(rows),
        "shows_work": sum(r["shows_work"] for r in rows) / len(rows),
    }  # fmt: skip


def style_cell(
    setup: Setup, path: Path, model_name: str, instances: list[Instance], shots: list[Instance], style: str, tokens: int
) -> list[dict[str, Any]]:
    """Completions of ``instances`` posed in ``style`` (read back from ``path`` when it holds them)."""
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
    print(f"  {model_name} {path.parent.name} {style}: {summarize(rows, tokens)} ({seconds:.0f} s)", flush=True)
    return rows


def survey_stage(setup: Setup, models: list[str], tasks: list[str]) -> dict[str, Any]:
    """Every model × task × style on the validation split; the gap per (model, task)."""
    cells, gaps = [], []
    tokens = setup.args.survey_tokens
    for model_name in models:
        for task in tasks:
            splits = setup.splits(task)
            by_style = {}
            for style in STYLES:
                path = setup.out / "survey" / model_name / task / f"{style}.jsonl"
                started = time.perf_counter()
                rows = style_cell(setup, path, model_name, splits["val"], splits["shots"], style, tokens)
                setup.timed(f"survey {model_name}", started)
                by_style[style] = summarize(rows, tokens)
                cells.append({"model": model_name, "task": task, "style": style, **by_style[style],
                              "examples": [r["completion"] for r in rows[:2]]})  # fmt: skip
            best_step = max(("step", "step-shot"), key=lambda s: by_style[s]["accuracy"])
            gap = by_style[best_step]["accuracy"] - by_style["direct"]["accuracy"]
            gaps.append({"model": model_name, "task": task, "best_step_style": best_step, "gap": round(gap, 3)})
    gaps.sort(key=lambda g: -g["gap"])
    return {"split": "val", "tokens_allowed": tokens, "cells": cells, "gaps": gaps, "seconds": setup.timings}


def ceiling_stage(setup: Setup) -> dict[str, Any]:
    """The chosen model and task: every style on the test split, at the steered conditions' token budget."""
    a = setup.args
    splits = setup.splits(a.task)
    out = {}
    for style in STYLES:
        path = setup.out / "ceiling" / f"{style}.jsonl"
        rows = style_cell(setup, path, a.model, splits["test"], splits["shots"], style, a.tokens)
        out[style] = {**summarize(rows, a.tokens), "examples": [r["completion"] for r in rows[:3]]}
    return out


# --- the vector search ------------------------------------------------------------------------


def _rank(setup: Setup, run: Path, items: list[Any], name: str, indices: list[int] | None) -> TaskRanking:
    a = setup.args
    return rank_by_task(
        setup.model(a.model), run, items, name=name, max_new_tokens=a.tokens, vectors_per_chunk=4,
        batch_size=a.batch_size, indices=indices,
    )  # fmt: skip


def _work_share(ranking: TaskRanking, instances: list[Instance]) -> dict[int, float]:
    flags: dict[int, list[bool]] = {}
    for r in ranking.rows:
        flags.setdefault(r["vector"], []).append(shows_work(r["completion"], instances[r["item"]].question))
    return {v: sum(f) / len(f) for v, f in flags.items()}


def _train_configs(setup: Setup, prompt: Any) -> list[tuple[str, Path]]:
    """DCT runs: every layer pair at R = calibrated × each multiple (the calibrated run first)."""
    a = setup.args
    model = setup.model(a.model)
    runs = []
    for s, t in a.layers:
        base = setup.out / "dct" / f"s{s}-t{t}-x1"
        started = time.perf_counter()
        cfg = DCTConfig(n_factors=a.vectors, source_layer=s, target_layer=t, radius="auto", seed=a.seed)
        train_to_folder(model, "dct", [prompt], cfg, base, resume=True, progress=False)
        radius = float(load_run(base).meta["radius"])
        for m in a.radius_multiples:
            folder = base if m == 1 else setup.out / "dct" / f"s{s}-t{t}-x{m:g}"
            if m != 1:
                cfg = DCTConfig(n_factors=a.vectors, source_layer=s, target_layer=t, radius=m * radius, seed=a.seed)
                train_to_folder(model, "dct", [prompt], cfg, folder, resume=True, progress=False)
            runs.append((folder.name, folder))
        setup.timed("dct", started)
    return runs


def search(setup: Setup, runs: list[tuple[str, Path]], splits: dict[str, list[Instance]], label: str) -> dict[str, Any]:
    """Screen every vector of ``runs``, validate the top-k, choose the best on validation."""
    a = setup.args
    screen_items = task_items(splits["screen"], "direct", splits["shots"])
    val_items = task_items(splits["val"], "direct", splits["shots"])
    candidates, per_config = [], []
    started = time.perf_counter()
    for config, run in runs:
        ranking = _rank(setup, run, screen_items, "screen", None)
        work = _work_share(ranking, splits["screen"])
        eliciting = sorted(v for v, w in work.items() if v != UNSTEERED and w >= 0.5)
        per_config.append({
            "config": config, "radius": float(load_run(run).meta["radius"]), "n_vectors": len(ranking.scores) - 1,
            "eliciting": eliciting, "unsteered_screen": ranking.baseline.accuracy,
            "examples": {str(v): [r["completion"] for r in ranking.rows if r["vector"] == v][:2] for v in eliciting},
        })  # fmt: skip
        candidates += [
            (s.accuracy, work[s.vector], config, run, s.vector) for s in ranking.scores if s.vector != UNSTEERED
        ]
    setup.timed(f"screen {label}", started)
    candidates.sort(key=lambda c: (-c[0], -c[1]))
    top = candidates[: a.top_k]
    chosen: dict[Path, list[int]] = {}
    for _, _, _, run, vector in top:
        chosen.setdefault(run, []).append(vector)
    started = time.perf_counter()
    validated = []
    for run, vectors in chosen.items():
        ranking = _rank(setup, run, val_items, "val", vectors)
        work = _work_share(ranking, splits["val"])
        validated += [{"config": run.name, "run": str(run), "vector": s.vector, **_score(s), "shows_work": work[s.vector]}
                      for s in ranking.scores if s.vector != UNSTEERED]  # fmt: skip
    setup.timed(f"val {label}", started)
    validated.sort(key=lambda v: (-v["accuracy"], -v["shows_work"]))
    screen = [
        {"config": c, "vector": v, "screen_accuracy": acc, "screen_shows_work": w} for acc, w, c, _, v in candidates
    ]
    return {"configs": per_config, "screen": screen, "validated": validated, "best": validated[0]}


def _score(s: Any) -> dict[str, Any]:
    return {"correct": s.correct, "n": s.n, "accuracy": s.accuracy, "low": s.low, "high": s.high,
            "mean_tokens": s.mean_tokens, "finished": s.finished}  # fmt: skip


def _random_run(setup: Setup, best: dict[str, Any], prompt: Any) -> Path:
    a = setup.args
    meta = load_run(best["run"]).meta
    folder = setup.out / "random" / best["config"]
    cfg = MelboConfig(
        radius=float(meta["radius"]), source_layer=int(meta["source_layer"]), target_layer=int(meta["target_layer"]),
        n_vectors=a.random_vectors, steps=0, mode="batched-orthogonal", batch_size=a.random_vectors, seed=a.seed,
    )  # fmt: skip
    train_to_folder(setup.model(a.model), "melbo", [prompt], cfg, folder, resume=True, progress=False)
    return folder


def _test(setup: Setup, pick: dict[str, Any], splits: dict[str, list[Instance]]) -> dict[str, Any]:
    test_items = task_items(splits["test"], "direct", splits["shots"])
    ranking = _rank(setup, Path(pick["run"]), test_items, "test", [pick["vector"]])
    work = _work_share(ranking, splits["test"])
    rows = {s.vector: {**_score(s), "shows_work": work[s.vector]} for s in ranking.scores}
    examples = [r["completion"] for r in ranking.rows if r["vector"] == pick["vector"]][:4]
    return {"unsteered": rows[UNSTEERED], "vector": {**rows[pick["vector"]], "examples": examples}}


def vector_stages(setup: Setup) -> dict[str, Any]:
    a = setup.args
    splits = setup.splits(a.task)
    prompt = prompt_messages(splits["train"][0], "direct", splits["shots"])
    runs = _train_configs(setup, prompt)
    dct = search(setup, runs, splits, "dct")
    random_folder = _random_run(setup, dct["best"], prompt)
    rnd = search(setup, [(f"random {dct['best']['config']}", random_folder)], splits, "random")
    started = time.perf_counter()
    test_dct = _test(setup, dct["best"], splits)
    test_random = _test(setup, rnd["best"], splits)
    setup.timed("test", started)
    out = {
        "train_prompt": prompt, "train_answer": splits["train"][0].answer, "dct": dct, "random": rnd,
        "test": {"unsteered": test_dct["unsteered"], "best_dct": {**dct["best"], "test": test_dct["vector"]},
                 "best_random": {**rnd["best"], "test": test_random["vector"]},
                 "unsteered_again": test_random["unsteered"]},
        "seconds": setup.timings,
    }  # fmt: skip
    atomic_write_json(setup.out / "vectors.json", out)
    return out
