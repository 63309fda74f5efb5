"""Task items: the rows of a task file, validated, and how an answer is read from a completion.

A row is ``prompt`` (a user message or a list of ``{"role", "content"}`` messages), ``answer``
(string or number), an optional ``extract`` regex and optional ``operands`` (the named numbers
the answer is computed from). Extraction: the regex's **last** match counts (group 1 if it has a
group), no regex means the whole completion; comparison strips surrounding whitespace and, for
numbers, thousands separators and a zero fractional part (``1,081`` = ``1081``, ``72.0`` = ``72``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melbo_tl.config import require

if TYPE_CHECKING:  # no torch at import time: the command line reads tasks before loading a model
    from melbo_tl.prompts import PromptLike

ROLES = ("system", "user", "assistant")
_NUMBER = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?")


@dataclass(frozen=True)
class TaskItem:
    """One held-out item: ``prompt`` (user message or message list), expected ``answer``, its
    own ``extract`` regex (None: the ranking's default) and ``operands`` (None, or the named
    numbers the answer is computed from)."""

    prompt: PromptLike
    answer: str
    extract: str | None = None
    operands: dict[str, float] | None = None


def compile_extract(pattern: str, where: str) -> re.Pattern[str]:
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
    unknown = sorted(set(row) - {"prompt", "answer", "extract", "operands"})
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: prompt, answer, extract, operands."
        )
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
        compile_extract(extract, where)
    return TaskItem(prompt, answer, extract, _check_operands(row.get("operands"), where))


def _check_operands(operands: Any, where: str) -> dict[str, float] | None:
    if operands is None:
        return None
    ok = (
        isinstance(operands, dict)
        and operands
        and all(
            isinstance(k, str) and k.isidentifier() and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in operands.items()
        )
    )
    if not ok:
        raise ValueError(
            f"{where}: field 'operands' must be a non-empty object of name → number (names are identifiers), "
            f"got {operands!r}."
        )
    return dict(operands)


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
    """Whitespace stripped; a number loses its thousands separators and a zero fractional part."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return text
    return re.sub(r"\.0+$", "", text.replace(",", ""))


def extract_answer(completion: str, pattern: str | None) -> str | None:
    """The answer in ``completion``: the last match of ``pattern`` (group 1 if it has a group),
    the whole completion with no pattern, None if the pattern does not match."""
    if pattern is None:
        return completion.strip()
    compiled = compile_extract(pattern, "extraction")
    matches = list(compiled.finditer(completion))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if compiled.groups else last.group(0)


def is_correct(completion: str, item: TaskItem, extract: str | None = None) -> bool:
    """Exact match of the extracted answer (the item's regex first, else ``extract``) with the item's."""
    got = extract_answer(completion, item.extract if item.extract is not None else extract)
    return got is not None and normalize(got) == normalize(item.answer)
