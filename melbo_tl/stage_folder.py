"""A folder of results derived from a run (``analysis/``, ``triage/``, ``tasks/<name>/``), tied to
the settings that made them.

Opening it with the settings it was written with keeps every finished file, so an interrupted
stage resumes; opening it with other settings removes what the old settings made first, so no
file mixes two settings. Every write is atomic (:mod:`melbo_tl.artifacts`).

>>> folder = StageFolder(run_dir / "triage", cfg.to_dict())
>>> if not folder.has("behaviours.json"):
...     folder.write_csv("behaviours.csv", rows)
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl

SETTINGS_FILE = "settings.json"


def csv_text(rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text with a header (``fieldnames``: the columns, default the first row's keys;
    keys outside them are left out)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames or rows[0]), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class StageFolder:
    """A results folder whose ``settings.json`` says what made its files.

    ``stale`` are the glob patterns (relative to the folder) of the files other settings would
    have made differently, removed when the settings change; by default every file but
    ``settings.json``.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any], *, stale: Iterable[str] = ("*",)) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        saved = self.path / SETTINGS_FILE
        self.fresh = not saved.is_file() or json.loads(saved.read_text()) != json.loads(json.dumps(settings))
        if self.fresh:
            for pattern in stale:
                for old in self.path.glob(pattern):
                    if old.is_file() and old.name != SETTINGS_FILE:
                        old.unlink()
        atomic_write_json(saved, settings)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def write_json(self, name: str, data: Any) -> Path:
        atomic_write_json(self.path / name, data)
        return self.path / name

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> Path:
        atomic_write_jsonl(self.path / name, rows)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def write_csv(self, name: str, rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
        return self.write_text(name, csv_text(rows, fieldnames))

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.path / name)
