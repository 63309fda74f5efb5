"""The vector search of experiments/capability_discovery.py: DCT vectors fitted on the ONE
training instance's direct prompt → screen → validation (the best vector chosen there) → the
same for random vectors at the best vector's R and sites → the disjoint test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from capability_stages import Setup

from melbo_tl.artifacts import atomic_write_json, load_run
from melbo_tl.evaluate.reasoning import Instance, prompt_messages, shows_work, task_items
from melbo_tl.evaluate.tasks import UNSTEERED, TaskRanking, rank_by_task
from melbo_tl.optimize.dct import DCTConfig
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.steering.sites import Site
from melbo_tl.training import config_of, train_to_folder

ELICITS = 0.5  # a vector elicits step-by-step text if at least this share of its screen completions show work


def _rank(setup: Setup, run: Path, items: list[Any], name: str, indices: list[int] | None) -> TaskRanking:
    """The ranking of ``indices`` (None: all) on ``items``; the screen at ``--screen-tokens``, the
    validation and test splits at ``--tokens``."""
    a = setup.args
    tokens = a.screen_tokens if name == "screen" else a.tokens
    return rank_by_task(
        setup.model(), run, items, name=name, max_new_tokens=tokens, vectors_per_chunk=4,
        batch_size=a.batch_size, indices=indices, progress=False,
    )  # fmt: skip


def _work_share(ranking: TaskRanking, instances: list[Instance]) -> dict[int, float]:
    flags: dict[int, list[bool]] = {}
    for r in ranking.rows:
        flags.setdefault(r["vector"], []).append(shows_work(r["completion"], instances[r["item"]].question))
    return {v: sum(f) / len(f) for v, f in flags.items()}


def _sites(run: Path) -> dict[str, Any]:
    cfg = config_of(load_run(run))
    return {"radius": float(load_run(run).meta["radius"]), "source": str(cfg.source), "target": str(cfg.target)}


def _complete(folder: Path) -> bool:
    return (folder / "run.json").is_file() and load_run(folder).meta.get("status") == "complete"


def train_configs(setup: Setup, prompt: Any) -> list[tuple[str, Path]]:
    """DCT runs: every layer pair at R = calibrated × each multiple (the calibrated run first),
    fitted in ``--fit-dtype``."""
    a = setup.args
    pairs: list[tuple[Site | None, Site | None]] = [(None, None)] if a.layers is None else [
        (Site(s, "resid_post"), Site(t)) for s, t in a.layers
    ]  # fmt: skip
    runs = []
    started = time.perf_counter()
    for source, target in pairs:
        name = "default" if source is None else f"s{source.layer}-t{target.layer}"
        base = setup.out / "dct" / f"{name}-x1"
        cfg = DCTConfig(n_factors=a.vectors, source=source, target=target, radius="auto", seed=a.seed)
        if not _complete(base):
            train_to_folder(setup.model(dtype=a.fit_dtype), "dct", [prompt], cfg, base, resume=True, progress=False)
        radius = float(load_run(base).meta["radius"])
        for m in a.radius_multiples:
            folder = base if m == 1 else setup.out / "dct" / f"{name}-x{m:g}"
            if m != 1 and not _complete(folder):
                cfg = DCTConfig(n_factors=a.vectors, source=source, target=target, radius=m * radius, seed=a.seed)
                train_to_folder(
                    setup.model(dtype=a.fit_dtype), "dct", [prompt], cfg, folder, resume=True, progress=False
                )
            runs.append((folder.name, folder))
    setup.timed("dct fit", started)
    return runs


def _score(s: Any) -> dict[str, Any]:
    return {"correct": s.correct, "n": s.n, "accuracy": s.accuracy, "low": s.low, "high": s.high,
            "mean_tokens": s.mean_tokens, "finished": s.finished}  # fmt: skip


def search(setup: Setup, runs: list[tuple[str, Path]], splits: dict[str, list[Instance]], label: str) -> dict[str, Any]:
    """Screen every vector of ``runs``, validate the ``--top-k`` most accurate (ties: more work
    shown) and every vector that elicits step-by-step text, choose the best on validation
    (accuracy, then Wilson low, then work shown)."""
    a = setup.args
    screen_items = task_items(splits["screen"], "direct", splits["shots"])
    val_items = task_items(splits["val"], "direct", splits["shots"])
    candidates, per_config = [], []
    started = time.perf_counter()
    for config, run in runs:
        ranking = _rank(setup, run, screen_items, "screen", None)
        work = _work_share(ranking, splits["screen"])
        eliciting = sorted(v for v, w in work.items() if v != UNSTEERED and w >= ELICITS)
        per_config.append({
            "config": config, **_sites(run), "n_vectors": len(ranking.scores) - 1, "eliciting": eliciting,
            "unsteered_screen": _score(ranking.baseline),
            "eliciting_accuracy": {str(s.vector): s.accuracy for s in ranking.scores if s.vector in eliciting},
            "examples": {str(v): [r["completion"] for r in ranking.rows if r["vector"] == v][:3] for v in eliciting},
        })  # fmt: skip
        candidates += [
            (s.accuracy, work[s.vector], config, run, s.vector) for s in ranking.scores if s.vector != UNSTEERED
        ]
        print(f"  screen {label} {config}: {len(eliciting)} eliciting; best {ranking.scores[0].label}", flush=True)
    setup.timed(f"screen {label}", started)
    candidates.sort(key=lambda c: (-c[0], -c[1], c[2], c[4]))
    chosen: dict[Path, list[int]] = {}
    for k, (_, work_share, _, run, vector) in enumerate(candidates):
        if k < a.top_k or work_share >= ELICITS:  # the most accurate, and every vector that elicits work
            chosen.setdefault(run, []).append(vector)
    started = time.perf_counter()
    validated, unsteered_val, names = [], None, {run: config for config, run in runs}
    for run, vectors in chosen.items():
        ranking = _rank(setup, run, val_items, "val", vectors)
        work = _work_share(ranking, splits["val"])
        unsteered_val = _score(ranking.baseline)
        validated += [{"config": names[run], "run": str(run), "vector": s.vector, **_score(s), "shows_work": work[s.vector]}
                      for s in ranking.scores if s.vector != UNSTEERED]  # fmt: skip
    setup.timed(f"val {label}", started)
    validated.sort(key=lambda v: (-v["accuracy"], -v["low"], -v["shows_work"]))
    screen = [
        {"config": c, "vector": v, "screen_accuracy": acc, "screen_shows_work": w} for acc, w, c, _, v in candidates
    ]
    return {"configs": per_config, "screen": screen, "validated": validated, "unsteered_val": unsteered_val,
            "best": validated[0]}  # fmt: skip


def random_run(setup: Setup, best: dict[str, Any], prompt: Any) -> Path:
    """``--random-vectors`` random directions at the best DCT vector's R and sites (MELBO with 0 steps)."""
    a = setup.args
    sites = _sites(Path(best["run"]))
    folder = setup.out / "random" / best["config"]
    if _complete(folder):
        return folder
    cfg = MelboConfig(
        radius=sites["radius"], source=sites["source"], target=sites["target"], n_vectors=a.random_vectors, steps=0,
        mode="batched-orthogonal", batch_size=a.random_vectors, seed=a.seed,
    )  # fmt: skip
    train_to_folder(setup.model(dtype=a.fit_dtype), "melbo", [prompt], cfg, folder, resume=True, progress=False)
    return folder


def test_pick(setup: Setup, pick: dict[str, Any], splits: dict[str, list[Instance]]) -> dict[str, Any]:
    """The unsteered model and the picked vector on the test split."""
    test_items = task_items(splits["test"], "direct", splits["shots"])
    ranking = _rank(setup, Path(pick["run"]), test_items, "test", [pick["vector"]])
    work = _work_share(ranking, splits["test"])
    rows = {s.vector: {**_score(s), "shows_work": work[s.vector]} for s in ranking.scores}
    examples = [r["completion"] for r in ranking.rows if r["vector"] == pick["vector"]][:4]
    return {"unsteered": rows[UNSTEERED], "vector": {**rows[pick["vector"]], "examples": examples}}


def vector_stages(setup: Setup) -> dict[str, Any]:
    splits = setup.splits()
    prompt = prompt_messages(splits["train"][0], "direct", splits["shots"])
    runs = train_configs(setup, prompt)
    dct = search(setup, runs, splits, "dct")
    started = time.perf_counter()
    random_folder = random_run(setup, dct["best"], prompt)
    setup.timed("random vectors", started)
    rnd = search(setup, [(f"random {dct['best']['config']}", random_folder)], splits, "random")
    started = time.perf_counter()
    test_dct = test_pick(setup, dct["best"], splits)
    test_random = test_pick(setup, rnd["best"], splits)
    setup.timed("test", started)
    out = {
        "train_prompt": prompt, "train_answer": splits["train"][0].answer, "dct": dct, "random": rnd,
        "test": {"unsteered": test_dct["unsteered"], "best_dct": {**dct["best"], "test": test_dct["vector"]},
                 "best_random": {**rnd["best"], "test": test_random["vector"]},
                 "unsteered_again": test_random["unsteered"]},
    }  # fmt: skip
    atomic_write_json(setup.out / "vectors.json", out)
    return out
