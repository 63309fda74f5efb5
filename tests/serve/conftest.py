"""A live server on a free port with the tiny model, and the run folders it serves.

Runs: ``melbo`` (3 random vectors at blocks.1.hook_resid_pre, norm 20, with triage files written
by the real triage dataclasses), ``refusal`` (a refusal-direction run at the same site), and a
GGUF control vector file for registration tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.helpers import HOOK_A, vector_run

MODEL_ID = "tiny"


@dataclass
class Live:
    """A running server: ``url`` (no trailing slash), its engine and store, and the run folders."""

    url: str
    app: Any
    runs: dict[str, Path]
    gguf: Path

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    @property
    def store(self) -> Any:
        return self.app.state.store

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


def write_triage(folder: Path, n: int) -> None:
    from melbo_tl.artifacts import atomic_write_json
    from melbo_tl.evaluate.triage_files import (
        BEHAVIOURS_FILE,
        CLUSTERS_FILE,
        BehaviourCluster,
        VectorBehaviour,
        triage_dir,
    )

    rows = [VectorBehaviour(-1, 0, 0.0, 10.0, 1.0, 20.0, "", completion="I can't help with that.")]
    rows += [
        VectorBehaviour(i, 1 + i % 2, 0.5, 12.0, 0.0, 30.0, "", shortlist=i, completion=f"text {i}") for i in range(n)
    ]
    clusters = [
        BehaviourCluster(0, ["help", "can't"], 1, [-1], -1, "I can't help with that.", 1.0, unsteered_like=True),
        BehaviourCluster(1, ["recipe", "steps"], (n + 1) // 2, list(range(0, n, 2)), 0, "text 0", 0.0),
        BehaviourCluster(2, ["poem"], n // 2, list(range(1, n, 2)), 1, "text 1", 0.0),
    ]
    out = triage_dir(folder)
    atomic_write_json(out / CLUSTERS_FILE, [c.to_dict() for c in clusters])
    atomic_write_json(out / BEHAVIOURS_FILE, {"rows": [r.to_dict() for r in rows]})


def write_runs(model: Any, root: Path) -> tuple[dict[str, Path], Path]:
    from melbo_tl.artifacts import Run, run_meta, save_run
    from melbo_tl.directions.io import METHOD, direction_run
    from melbo_tl.export.gguf_control_vector import ControlVector, write_control_vector

    melbo = save_run(root / "melbo", vector_run(model, n=3))
    write_triage(melbo, 3)
    raw = torch.randn(64, generator=torch.Generator().manual_seed(7)) * 5
    direction = direction_run(raw, 1, -1)
    fields = {k: v for k, v in direction.meta.items() if k != "hooks"}
    refusal = save_run(
        root / "refusal", Run(direction.tensors, run_meta(model, method=METHOD, hooks=direction.hooks, **fields))
    )
    gguf = write_control_vector(
        root / "control.gguf",
        ControlVector({2: torch.randn(64, generator=torch.Generator().manual_seed(8))}, n_layers=4),
    )
    return {"melbo": melbo, "refusal": refusal}, gguf


def start(app: Any) -> tuple[str, Any, threading.Thread]:
    from melbo_tl.serve.background import serve_in_thread

    return serve_in_thread(app)


def stop(server: Any, thread: threading.Thread) -> None:
    from melbo_tl.serve.background import stop_thread_server

    stop_thread_server(server, thread)


@pytest.fixture(scope="session")
def live(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from melbo_tl.serve import Settings, VectorStore, create_app

    runs, gguf = write_runs(tiny_model, tmp_path_factory.mktemp("serve_runs"))
    store = VectorStore(tiny_model)
    for name, folder in runs.items():
        store.add_run(folder, name)
    app = create_app(
        tiny_model, store, Settings(model_id=MODEL_ID, n_ctx=512, max_tokens=64), max_batch=8, max_queue=16
    )
    url, server, thread = start(app)
    yield Live(url, app, runs, gguf)
    stop(server, thread)


HOOK = HOOK_A
