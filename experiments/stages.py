"""Timed stages for the experiment scripts: each prints its wall time and keeps it for the results."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Stages:
    """``stage = Stages(); x = stage("dct", lambda: ...)``; ``stage.timings`` maps names to seconds."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        self.timings[name] = round(time.perf_counter() - started, 1)
        print(f"== {name}: {self.timings[name]} s", flush=True)
        return result
