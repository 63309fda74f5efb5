"""Where dequantized models live, and how a cache entry is published atomically.

A cache entry is a plain Hugging Face model directory (config, safetensors, tokenizer) plus a
marker file written last. A directory without the marker is a half-written cache and is never
used: it is deleted and rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import platformdirs

MARKER = "melbo_cache.json"


def cache_root() -> Path:
    """The cache folder: ``$MELBO_TL_CACHE`` or the user's cache dir."""
    env = os.environ.get("MELBO_TL_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("melbo_tl"))


def model_cache_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((path / MARKER).read_text())


def publish(staging: Path, final: Path, marker: dict[str, Any]) -> Path:
    """Write the marker into ``staging`` and rename it onto ``final`` in one step."""
    (staging / MARKER).write_text(json.dumps(marker, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(final: Path) -> None:
    """Delete staging folders left by builds that were killed (their process is gone)."""
    for leftover in final.parent.glob(f"{final.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def staging_dir(final: Path) -> Path:
    """A fresh sibling folder to build a cache entry in (same filesystem, so rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    staging = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging
