"""Prompt sets for evaluation: the ones shipped with melbo_tl, user files and Hugging Face datasets.

Built-in sets (written for this package, in ``melbo_tl/evaluate/data/``; every item has
``id``, ``category`` and ``prompt``):

- ``harmful``: plain one-sentence requests a safe assistant should refuse, across weapons,
  cyber, fraud, drugs, harassment, violence, self-harm, misinformation, privacy, theft and
  extremism;
- ``harmless``: ordinary instructions (coding, cooking, writing, science, travel, …);
- ``open_ended``: open questions for misalignment checks, each ending in " Be brief.";
- the coding task (:func:`load_coding_task`): a prompt asking for a tiny http.server request
  handler with a benign answer and a malicious one that differs by one inserted line.

>>> load_prompts("harmful", limit=3)
>>> load_prompts("my_prompts.csv")                    # column prompt/instruction/goal/text, else the first
>>> load_prompts("hf:walledai/AdvBench:train:prompt") # needs: pip install 'melbo_tl[hf]'
>>> load_prompts("harmful", split="train")            # deterministic 75 % / 25 % split
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BUILTIN_SETS: tuple[str, ...] = ("harmful", "harmless", "open_ended")
TEXT_FIELDS: tuple[str, ...] = ("prompt", "instruction", "goal", "text")
SPLITS: tuple[str, ...] = ("train", "test")
TRAIN_FRACTION = 0.75
SPLIT_SEED = 0
HF_PREFIX = "hf:"


# ---------------------------------------------------------------------------------------------
# Built-in data
# ---------------------------------------------------------------------------------------------


def _data_text(filename: str) -> str:
    return resources.files("melbo_tl.evaluate").joinpath("data", filename).read_text(encoding="utf-8")


def load_items(name: str) -> list[dict[str, Any]]:
    """The items (``id``, ``category``, ``prompt``) of a built-in set."""
    if name not in BUILTIN_SETS:
        raise ValueError(f"Unknown prompt set {name!r}. Built-in sets: {', '.join(BUILTIN_SETS)}.")
    return json.loads(_data_text(f"{name}.json"))


def load_coding_task() -> dict[str, Any]:
    """The coding task: ``prompt``, ``benign`` and ``malicious`` completions (identical but for
    one inserted line, ``malicious_line``, that runs a shell command taken from the request),
    plus ``id``, ``category`` and ``description``."""
    return json.loads(_data_text("coding_task.json"))


# ---------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------


def train_test_split(prompts: Sequence[T], n_train: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """Shuffle ``prompts`` with ``seed`` (a private RNG: same input, same split, on any machine)
    and return the first ``n_train`` and the rest, each in the original order."""
    n = len(prompts)
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 0 <= n_train <= n:
        raise ValueError(f"n_train must be an integer in 0…{n} for {n} prompts, got {n_train!r}.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n_train])
    train = [p for i, p in enumerate(prompts) if i in chosen]
    test = [p for i, p in enumerate(prompts) if i not in chosen]
    return train, test


def _apply_split(prompts: list[str], split: str | None, source: str) -> list[str]:
    if split is None:
        return prompts
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (or None for all), got {split!r}.")
    n_train = int(len(prompts) * TRAIN_FRACTION)
    if n_train == 0 or n_train == len(prompts):
        raise ValueError(f"{source} has {len(prompts)} prompt(s): too few to split into train and test.")
    train, test = train_test_split(prompts, n_train, SPLIT_SEED)
    return train if split == "train" else test


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _text_of(item: Any, where: str) -> str:
    if isinstance(item, str):
        text = item
    elif isinstance(item, dict):
        key = next((k for k in TEXT_FIELDS if k in item), None)
        if key is None:
            raise ValueError(
                f"{where} has no field {'/'.join(TEXT_FIELDS)} (keys: {', '.join(map(str, item)) or 'none'})."
            )
        text = item[key]
        if not isinstance(text, str):
            raise ValueError(f"{where}: field {key!r} is {type(text).__name__}, not text.")
    else:
        raise ValueError(
            f"{where} is {type(item).__name__}; expected a string or an object with a {'/'.join(TEXT_FIELDS)} field."
        )
    if not text.strip():
        raise ValueError(f"{where} is an empty prompt.")
    return text


def _read_json(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}.") from None
    if isinstance(data, dict):  # {"prompts": [...]} or similar single-list wrapper
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(
                f"{path} holds a JSON object; expected a list of prompts (or an object with exactly one list)."
            )
        data = lists[0]
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected a list of prompts.")
    return [_text_of(item, f"{path} item {i}") for i, item in enumerate(data)]


def _read_jsonl(path: Path) -> list[str]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {lineno} is not valid JSON: {exc}.") from None
        out.append(_text_of(item, f"{path} line {lineno}"))
    return out


def _read_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(k) for k in TEXT_FIELDS if k in header), 0)
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if column >= len(row) or not row[column].strip():
            raise ValueError(f"{path} row {lineno} has no text in column {rows[0][column]!r}.")
        out.append(row[column])
    return out


def _read_txt(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": _read_txt}


def _read_file(path: Path) -> list[str]:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use {', '.join(READERS)}.")
    try:
        return reader(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason}).") from None


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


def _load_hf(spec: str, split: str | None) -> list[str]:
    """``hf:<dataset>[:<split>][:<column>]`` through ``datasets.load_dataset``."""
    parts = spec[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"{spec!r}: write a Hugging Face dataset as hf:<dataset>[:<split>][:<column>].")
    name = parts[0]
    hf_split = (parts[1] if len(parts) > 1 and parts[1] else None) or split or "train"
    column = parts[2] if len(parts) > 2 and parts[2] else None
    try:
        import datasets
    except ImportError:
        raise ValueError(f"Loading {spec!r} needs the datasets package: pip install 'melbo_tl[hf]'.") from None
    try:
        ds = datasets.load_dataset(name, split=hf_split)
    except Exception as exc:  # network, unknown dataset or split: one clear message
        raise ValueError(
            f"Could not load Hugging Face dataset {name!r} (split {hf_split!r}): {' '.join(str(exc).split())}"
        ) from None
    columns = list(ds.column_names)
    if column is None:
        column = next((c for c in TEXT_FIELDS if c in columns), None)
        if column is None:
            column = next(
                (c for c in columns if getattr(ds.features.get(c), "dtype", None) in ("string", "large_string")), None
            )
        if column is None:
            raise ValueError(
                f"Dataset {name!r} has no text column ({', '.join(columns)}); name one: {HF_PREFIX}{name}:{hf_split}:<column>."
            )
    elif column not in columns:
        raise ValueError(f"Dataset {name!r} has no column {column!r}; columns: {', '.join(columns)}.")
    return [_text_of(t, f"{name} [{hf_split}] row {i} column {column!r}") for i, t in enumerate(ds[column])]


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def load_prompts(name_or_path: str | Path, *, split: str | None = None, limit: int | None = None) -> list[str]:
    """User prompts from a built-in set, a file or a Hugging Face dataset.

    ``name_or_path``: one of :data:`BUILTIN_SETS`; a ``.json`` file (a list of strings or of
    objects with a ``prompt``/``instruction``/``goal``/``text`` field), ``.jsonl`` (one such
    item per line), ``.csv`` (the column named as above, else the first column) or ``.txt``
    (one prompt per line); or ``hf:<dataset>[:<split>][:<column>]``.

    ``split``: for built-in sets and files, ``"train"`` or ``"test"`` picks a deterministic
    75 %/25 % split (:func:`train_test_split`, seed 0); for a Hugging Face dataset it is the
    dataset split when the spec names none (default ``"train"``). ``limit`` keeps the first N.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}.")
    spec = str(name_or_path)
    if spec.startswith(HF_PREFIX):
        prompts, source = _load_hf(spec, split), spec
    elif spec in BUILTIN_SETS:
        prompts, source = [item["prompt"] for item in load_items(spec)], f"prompt set {spec!r}"
        prompts = _apply_split(prompts, split, source)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            looks_like_file = path.suffix or "/" in spec or "\\" in spec
            if looks_like_file:
                raise ValueError(f"Prompt file {spec!r} does not exist.")
            raise ValueError(
                f"Unknown prompt set {spec!r}. Built-in sets: {', '.join(BUILTIN_SETS)}; or give a "
                f".json/.jsonl/.csv/.txt file or hf:<dataset>[:<split>][:<column>]."
            )
        if not path.is_file():
            raise ValueError(f"{path} is a directory; give a prompt file.")
        prompts, source = _read_file(path), str(path)
        if prompts:
            prompts = _apply_split(prompts, split, source)
    if not prompts:
        raise ValueError(f"{source} contains no prompts.")
    return prompts[:limit] if limit is not None else prompts
