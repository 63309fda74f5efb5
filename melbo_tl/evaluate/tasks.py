"""Ranking a run's vectors by accuracy on a held-out task of prompts with known answers.

A task is a JSONL file, one item a line: ``prompt`` (a user message, or a list of
``{"role", "content"}`` messages, e.g. few-shot turns), ``answer`` (string or number), an
optional ``extract`` regex and optional ``operands`` (``{"a1": 4, …}``: the numbers the answer is
computed from; with them the vectors also get an answer-change triage, :mod:`.answer_change`).
Any metric a user can write as prompts and answers becomes a way to rank steering vectors:
:func:`rank_by_task` generates greedy completions of every item unsteered and under every
vector of a run (batched, several vectors per generate), scores them by exact match of the
extracted answer (:mod:`.task_items`: the regex's last match) and ranks the vectors by accuracy
with 95 % Wilson intervals.

Outputs go to ``RUN/tasks/<task name>/``: ``completions.jsonl`` (checkpointed after every chunk of
vectors: a rerun with the same settings and task never redoes a finished vector),
``ranking.jsonl``, ``ranking.csv``, ``ranking.md``, ``settings.json`` and, when every item has
operands, ``answer_change.json``/``.md``; all written atomically.

>>> ranking = rank_by_task(model, "runs/arith/dct", "arith_test.jsonl", extract=r"-?\\d+")
>>> ranking.baseline.accuracy, ranking.scores[0]
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from melbo_tl.artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_text, load_run, read_jsonl
from melbo_tl.evaluate.answer_change import AnswerChangeConfig, AnswerChangeReport, answer_change_of
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.evaluate.task_config import TaskConfig  # lives there, without torch
from melbo_tl.evaluate.task_items import (
    TaskItem,
    is_correct,
    load_task,
    parse_item,
)
from melbo_tl.runs import check_index, generate_conditions, intervention_from_run, n_interventions
from melbo_tl.stage_folder import SETTINGS_FILE as STAGE_SETTINGS
from melbo_tl.stage_folder import StageFolder, csv_text

TASKS_DIR = "tasks"
SETTINGS_FILE = STAGE_SETTINGS  # what made the files (melbo_tl.stage_folder)
COMPLETIONS_FILE = "completions.jsonl"
RANKING_JSONL = "ranking.jsonl"
RANKING_CSV = "ranking.csv"
RANKING_MD = "ranking.md"
# What other settings would have made differently (removed when the settings change).
STALE = (COMPLETIONS_FILE, RANKING_JSONL, RANKING_CSV, RANKING_MD)
ANSWER_CHANGE_JSON = "answer_change.json"
ANSWER_CHANGE_MD = "answer_change.md"
UNSTEERED = -1  # the vector index of the unsteered baseline
# settings that change neither the completions nor which exist: a rerun with new ones resumes
SCORING_ONLY = ("extract", "indices", "vectors_per_chunk", "batch_size")


@dataclass
class VectorScore:
    """One row of a ranking: ``vector`` index (-1: unsteered baseline), ``rank`` (1 = best),
    ``correct`` of ``n`` items, ``accuracy`` and its 95 % Wilson interval [``low``, ``high``],
    ``mean_tokens`` generated per item, ``finished`` share of completions that stopped before
    ``max_new_tokens``, and ``example`` (the completion of item 0)."""

    vector: int
    rank: int
    correct: int
    n: int
    accuracy: float
    low: float
    high: float
    mean_tokens: float
    finished: float
    example: str = ""

    @property
    def label(self) -> str:
        return "unsteered" if self.vector == UNSTEERED else str(self.vector)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskRanking:
    """The result of :func:`rank_by_task`: ``scores`` best first (the unsteered baseline among
    them), ``baseline`` (its row), ``task`` name, ``folder`` the files went to, ``rows`` every
    completion with its ``correct`` flag, ``seconds`` spent generating in this call, and
    ``answer_change`` (when every item has operands: which vectors' wrong answers follow another
    function of them)."""

    task: str
    scores: list[VectorScore]
    baseline: VectorScore
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    answer_change: AnswerChangeReport | None = None

    def better_than_baseline(self) -> list[VectorScore]:
        """Vectors whose Wilson interval lies wholly above the baseline's."""
        return [s for s in self.scores if s.vector != UNSTEERED and s.low > self.baseline.high]

    def markdown(self, top: int | None = None) -> str:
        """The ranking as a markdown table (``top`` rows, baseline always included)."""
        shown = self.scores if top is None else self.scores[:top]
        if self.baseline not in shown:
            shown = [*shown, self.baseline]
        lines = [
            f"Task `{self.task}`: exact-match accuracy on {self.baseline.n} items, 95 % Wilson intervals.",
            "",
            "| rank | vector | correct | accuracy | 95 % CI | mean tokens | finished |",
            "|---:|---|---:|---:|---|---:|---:|",
        ]
        for s in shown:
            lines.append(
                f"| {s.rank} | {s.label} | {s.correct}/{s.n} | {s.accuracy:.3f} | [{s.low:.3f}, {s.high:.3f}] | "
                f"{s.mean_tokens:.1f} | {s.finished:.2f} |"
            )
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        keys = [k for k in VectorScore.__dataclass_fields__ if k != "example"]
        return csv_text([s.to_dict() for s in self.scores], keys)


def task_folder(run_dir: str | Path, task_name: str) -> Path:
    return Path(run_dir) / TASKS_DIR / task_name


def _task_name(task: str | Path | Sequence[TaskItem]) -> str:
    return Path(task).stem if isinstance(task, (str, Path)) else "task"


def _items_key(items: Sequence[TaskItem]) -> str:
    """What the completions depend on (operands only change the scoring)."""
    data = json.dumps([{k: getattr(i, k) for k in ("prompt", "answer", "extract")} for i in items], sort_keys=True)
    data = data.encode()
    return hashlib.sha256(data).hexdigest()[:16]


def score_rows(rows: Sequence[dict[str, Any]], items: Sequence[TaskItem], extract: str | None) -> list[VectorScore]:
    """Rank the vectors in ``rows`` (completion rows: vector, item, completion, n_tokens,
    finished) by exact-match accuracy; sets each row's ``correct``. Ties: higher Wilson lower
    bound first, then the baseline, then lower index."""
    by_vector: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        r["correct"] = is_correct(r["completion"], items[r["item"]], extract)
        by_vector.setdefault(r["vector"], []).append(r)
    scores: list[VectorScore] = []
    for vector, mine in by_vector.items():
        mine.sort(key=lambda r: r["item"])
        ci = rate_with_ci(sum(r["correct"] for r in mine), len(mine))
        scores.append(
            VectorScore(
                vector=vector, rank=0, correct=ci.k, n=ci.n, accuracy=ci.rate, low=ci.low, high=ci.high,
                mean_tokens=sum(r["n_tokens"] for r in mine) / len(mine),
                finished=sum(bool(r["finished"]) for r in mine) / len(mine), example=mine[0]["completion"],
            )
        )  # fmt: skip
    scores.sort(key=lambda s: (-s.accuracy, -s.low, s.vector != UNSTEERED, s.vector))
    for rank, s in enumerate(scores, start=1):
        s.rank = rank
    return scores


def _generate(
    model: Any, run: Any, out: Path, items: Sequence[TaskItem], vectors: list[int], cfg: TaskConfig, progress: bool
) -> tuple[list[dict[str, Any]], float]:
    """Completions of every item under every condition; chunks of vectors are appended to
    ``completions.jsonl`` as they finish, and vectors found there are not generated again."""
    done = read_jsonl(out / COMPLETIONS_FILE)
    have = {r["vector"] for r in done}
    todo = [v for v in vectors if v not in have]
    prompts = [i.prompt for i in items]
    options = dict(
        max_new_tokens=cfg.max_new_tokens, temperature=0.0, system=cfg.system, batch_size=cfg.batch_size,
        chat=cfg.chat,
    )  # fmt: skip
    started = time.perf_counter()
    bar = tqdm(total=len(todo), desc="rank: generate", unit="vector", disable=not progress or not todo)
    for start in range(0, len(todo), cfg.vectors_per_chunk):
        chunk = todo[start : start + cfg.vectors_per_chunk]
        conditions = [None if v == UNSTEERED else intervention_from_run(run, v, scale=cfg.scale) for v in chunk]
        completions = generate_conditions(model, prompts, conditions, **options)
        for j, vector in enumerate(chunk):
            for p in range(len(prompts)):
                c = completions[j * len(prompts) + p]
                done.append({"vector": vector, "item": p, "completion": c.text, "n_tokens": len(c.token_ids),
                             "finished": c.finished})  # fmt: skip
        atomic_write_jsonl(out / COMPLETIONS_FILE, done)
        bar.update(len(chunk))
    bar.close()
    wanted = set(vectors)
    rows = [r for r in done if r["vector"] in wanted]
    if len(rows) != len(vectors) * len(items):
        raise RuntimeError(f"{out / COMPLETIONS_FILE} holds {len(rows)} completions, expected "
                           f"{len(vectors) * len(items)}; delete it to start the ranking over.")  # fmt: skip
    return rows, time.perf_counter() - started


def rank_by_task(
    model: Any,
    run_dir: str | Path,
    task: str | Path | Sequence[TaskItem],
    cfg: TaskConfig | None = None,
    *,
    name: str | None = None,
    answer_change: AnswerChangeConfig | None = None,
    progress: bool = True,
    **settings: Any,
) -> TaskRanking:
    """Rank the vectors of the run in ``run_dir`` by exact-match accuracy on ``task`` (a task
    file or items), the unsteered baseline included; writes ``RUN/tasks/<name>/`` (module
    docstring). ``name`` defaults to the task file's stem. A rerun with the same settings and
    items resumes; with different ones, the folder's previous results are replaced. When every
    item has operands, the answer-change triage (``answer_change`` settings) runs too."""
    cfg = TaskConfig.build(cfg, **settings)
    items = load_task(task) if isinstance(task, (str, Path)) else [parse_item(asdict(i), f"item {k}")
                                                                   for k, i in enumerate(task)]  # fmt: skip
    if not items:
        raise ValueError("The task holds no items.")
    if answer_change is not None and items[0].operands is not None:
        answer_change.check_operands(list(items[0].operands))  # before any generation
    run = load_run(run_dir, model)
    n = n_interventions(run)
    indices = list(range(n)) if cfg.indices is None else [check_index(i, n, "vector") for i in cfg.indices]
    vectors = [UNSTEERED, *dict.fromkeys(indices)]
    name = name or _task_name(task)
    settings_now = {"config": {k: v for k, v in cfg.to_dict().items() if k not in SCORING_ONLY},
                    "items": _items_key(items), "n_items": len(items)}  # fmt: skip
    out = StageFolder(task_folder(run_dir, name), settings_now, stale=STALE).path
    rows, seconds = _generate(model, run, out, items, vectors, cfg, progress)
    scores = score_rows(rows, items, cfg.extract)
    baseline = next(s for s in scores if s.vector == UNSTEERED)
    ranking = TaskRanking(name, scores, baseline, out, sorted(rows, key=lambda r: (r["vector"], r["item"])), seconds)
    atomic_write_jsonl(out / RANKING_JSONL, [s.to_dict() for s in scores])
    atomic_write_text(out / RANKING_CSV, ranking.csv())
    atomic_write_text(out / RANKING_MD, ranking.markdown())
    ranking.answer_change = answer_change_of(ranking.rows, items, cfg.extract, answer_change)
    if ranking.answer_change is not None:
        atomic_write_json(out / ANSWER_CHANGE_JSON, ranking.answer_change.to_dict())
        atomic_write_text(out / ANSWER_CHANGE_MD, ranking.answer_change.markdown())
    return ranking
