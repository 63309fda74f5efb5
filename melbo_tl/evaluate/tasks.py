"""Ranking a run's vectors by accuracy on a held-out task of prompts with known answers.

A task is a JSONL file, one item a line: ``prompt`` (a user message, or a list of
``{"role", "content"}`` messages, e.g. few-shot turns), ``answer`` (string or number) and an
optional ``extract`` regex. Any metric a user can write as prompts and answers becomes a way to
rank steering vectors: :func:`rank_by_task` generates greedy completions of every item
unsteered and under every vector of a run (batched, several vectors per generate), scores them
by exact match and ranks the vectors by accuracy with 95 % Wilson intervals.

Scoring: the extraction regex (the item's own, else the ranking's ``extract``) is searched in the
completion and the **last** match counts (reasoning puts its final answer last); if the pattern
has a capture group, group 1 is the answer. With no regex, the whole completion is the answer.
The extracted text and the expected answer are compared after stripping surrounding whitespace
(and, for numbers, thousands separators: ``1,081`` = ``1081``).

Outputs go to ``RUN/tasks/<task name>/``: ``completions.jsonl`` (checkpointed after every chunk of
vectors: a rerun with the same settings and task never redoes a finished vector),
``ranking.jsonl``, ``ranking.csv``, ``ranking.md`` and ``settings.json``; all written atomically.

>>> ranking = rank_by_task(model, "runs/arith/dct", "arith_test.jsonl", extract=r"-?\\d+")
>>> ranking.baseline.accuracy, ranking.scores[0]
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from melbo_tl.artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_text, load_run, read_jsonl
from melbo_tl.config import Config, require
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.prompts import PromptLike
from melbo_tl.runs import check_index, generate_conditions, intervention_from_run, n_interventions

TASKS_DIR = "tasks"
SETTINGS_FILE = "settings.json"
COMPLETIONS_FILE = "completions.jsonl"
RANKING_JSONL = "ranking.jsonl"
RANKING_CSV = "ranking.csv"
RANKING_MD = "ranking.md"
UNSTEERED = -1  # the vector index of the unsteered baseline
# settings that change neither the completions nor which exist: a rerun with new ones resumes
SCORING_ONLY = ("extract", "indices", "vectors_per_chunk", "batch_size")
ROLES = ("system", "user", "assistant")
_NUMBER = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")


@dataclass(frozen=True)
class TaskItem:
    """One held-out item: ``prompt`` (user message or message list), expected ``answer``, and its
    own ``extract`` regex (None: the ranking's default)."""

    prompt: PromptLike
    answer: str
    extract: str | None = None


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: extract is not a valid regular expression ({exc}): {pattern!r}.") from None


def _check_prompt(prompt: Any, where: str) -> PromptLike:
    if isinstance(prompt, str):
        require(bool(prompt.strip()), f"{where}: field 'prompt' is empty.")
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(
            f"{where}: field 'prompt' must be a string or a non-empty list of {{'role', 'content'}} messages, "
            f"got {type(prompt).__name__}."
        )
    for j, message in enumerate(prompt):
        ok = isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)
        if not ok:
            raise ValueError(
                f"{where}: prompt message {j} must be {{'role': one of {', '.join(ROLES)}, 'content': text}}, "
                f"got {message!r}."
            )
    if prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the last prompt message must have role 'user', got {prompt[-1]['role']!r}.")
    return [dict(m) for m in prompt]


def parse_item(row: Any, where: str = "item") -> TaskItem:
    """A :class:`TaskItem` from one decoded JSON row; errors name ``where`` and the bad field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with 'prompt' and 'answer', got {type(row).__name__}.")
    unknown = sorted(set(row) - {"prompt", "answer", "extract"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: prompt, answer, extract.")
    for name in ("prompt", "answer"):
        if name not in row:
            raise ValueError(f"{where}: missing field {name!r}.")
    prompt = _check_prompt(row["prompt"], where)
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"{where}: field 'answer' must be a string or a number, got {answer!r}.")
    answer = str(answer).strip()
    require(bool(answer), f"{where}: field 'answer' is empty.")
    extract = row.get("extract")
    if extract is not None:
        if not isinstance(extract, str) or not extract:
            raise ValueError(f"{where}: field 'extract' must be a non-empty regex string, got {extract!r}.")
        _compile(extract, where)
    return TaskItem(prompt, answer, extract)


def load_task(path: str | Path) -> list[TaskItem]:
    """Read and validate a task file (JSONL); the error names the file, line and field at fault."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Task file {path} does not exist (one JSON object a line: prompt, answer[, extract]).")
    items: list[TaskItem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg}).") from None
        items.append(parse_item(row, where))
    if not items:
        raise ValueError(f"Task file {path} holds no items.")
    return items


def normalize(text: str) -> str:
    """Whitespace stripped; a number written with thousands separators loses them."""
    text = text.strip()
    return text.replace(",", "") if _NUMBER.fullmatch(text) else text


def extract_answer(completion: str, pattern: str | None) -> str | None:
    """The answer in ``completion``: the last match of ``pattern`` (group 1 if it has a group),
    the whole completion with no pattern, None if the pattern does not match."""
    if pattern is None:
        return completion.strip()
    compiled = _compile(pattern, "extraction")
    matches = list(compiled.finditer(completion))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if compiled.groups else last.group(0)


def is_correct(completion: str, item: TaskItem, extract: str | None = None) -> bool:
    """Exact match of the extracted answer (the item's regex first, else ``extract``) with the item's."""
    got = extract_answer(completion, item.extract if item.extract is not None else extract)
    return got is not None and normalize(got) == normalize(item.answer)


@dataclass
class TaskConfig(Config):
    """Settings of a task ranking: ``extract`` default regex for items without their own;
    ``max_new_tokens`` per greedy completion; ``vectors_per_chunk`` vectors generated together
    (and checkpointed together); ``batch_size`` rows per forward pass; ``scale`` on every
    vector; ``system`` prompt; ``chat`` (format with the chat template, else raw text);
    ``indices`` the vectors to rank (None: all)."""

    extract: str | None = None
    max_new_tokens: int = 48
    vectors_per_chunk: int = 4
    batch_size: int = 32
    scale: float = 1.0
    system: str | None = None
    chat: bool = True
    indices: list[int] | None = None

    def validate(self) -> None:
        require(self.max_new_tokens >= 1, f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}.")
        require(self.vectors_per_chunk >= 1, f"vectors_per_chunk must be ≥ 1, got {self.vectors_per_chunk}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        if self.extract is not None:
            require(bool(self.extract), "extract must be a non-empty regex (or None: the whole completion).")
            _compile(self.extract, "--extract")
        if self.indices is not None:
            require(len(self.indices) > 0, "indices is empty; give at least one vector index (or None: all).")


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
    completion with its ``correct`` flag, and ``seconds`` spent generating in this call."""

    task: str
    scores: list[VectorScore]
    baseline: VectorScore
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

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
        buffer = io.StringIO()
        keys = [k for k in VectorScore.__dataclass_fields__ if k != "example"]
        writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for s in self.scores:
            writer.writerow(s.to_dict())
        return buffer.getvalue()


def task_folder(run_dir: str | Path, task_name: str) -> Path:
    return Path(run_dir) / TASKS_DIR / task_name


def _task_name(task: str | Path | Sequence[TaskItem]) -> str:
    return Path(task).stem if isinstance(task, (str, Path)) else "task"


def _items_key(items: Sequence[TaskItem]) -> str:
    data = json.dumps([asdict(i) for i in items], sort_keys=True).encode()
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
    progress: bool = True,
    **settings: Any,
) -> TaskRanking:
    """Rank the vectors of the run in ``run_dir`` by exact-match accuracy on ``task`` (a task
    file or items), the unsteered baseline included; writes ``RUN/tasks/<name>/`` (module
    docstring). ``name`` defaults to the task file's stem. A rerun with the same settings and
    items resumes; with different ones, the folder's previous results are replaced."""
    cfg = TaskConfig.build(cfg, **settings)
    items = load_task(task) if isinstance(task, (str, Path)) else [parse_item(asdict(i), f"item {k}")
                                                                   for k, i in enumerate(task)]  # fmt: skip
    if not items:
        raise ValueError("The task holds no items.")
    run = load_run(run_dir, model)
    n = n_interventions(run)
    indices = list(range(n)) if cfg.indices is None else [check_index(i, n, "vector") for i in cfg.indices]
    vectors = [UNSTEERED, *dict.fromkeys(indices)]
    name = name or _task_name(task)
    out = task_folder(run_dir, name)
    out.mkdir(parents=True, exist_ok=True)
    settings_now = {"config": {k: v for k, v in cfg.to_dict().items() if k not in SCORING_ONLY},
                    "items": _items_key(items), "n_items": len(items)}  # fmt: skip
    saved = out / SETTINGS_FILE
    if saved.is_file() and json.loads(saved.read_text()) != settings_now:
        for stale in (COMPLETIONS_FILE, RANKING_JSONL, RANKING_CSV, RANKING_MD):
            (out / stale).unlink(missing_ok=True)
    atomic_write_json(saved, settings_now)
    rows, seconds = _generate(model, run, out, items, vectors, cfg, progress)
    scores = score_rows(rows, items, cfg.extract)
    baseline = next(s for s in scores if s.vector == UNSTEERED)
    ranking = TaskRanking(name, scores, baseline, out, sorted(rows, key=lambda r: (r["vector"], r["item"])), seconds)
    atomic_write_jsonl(out / RANKING_JSONL, [s.to_dict() for s in scores])
    atomic_write_text(out / RANKING_CSV, ranking.csv())
    atomic_write_text(out / RANKING_MD, ranking.markdown())
    return ranking
