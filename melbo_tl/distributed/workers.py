"""Ray workers that each hold the model, the pool that feeds them units (retrying a unit whose
worker died) and the store of finished units (``<out>/.ray-units``, atomic files, so a killed
driver resumes). The package docstring (:mod:`melbo_tl.distributed`) says how runs use them."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run, atomic_write_bytes, atomic_write_json, save_run
from melbo_tl.distributed.cluster import RayCluster, WorkerModel, connect, runtime_env
from melbo_tl.filenames import RUN_FILE, VECTORS_FILE
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.registry import get_method

OutputWriter = Callable[[Any, Path], Any]  # (model, run folder) → writes files into the folder
UNITS_DIR = ".ray-units"
PLAN_FILE = "plan.json"
# Test hook: a worker that starts a unit while this file does not exist yet creates it and exits
# at once (as a worker killed mid-run would), so tests can check that the run still completes.
CRASH_ONCE_ENV = "MELBO_TL_RAY_CRASH_ONCE"


@dataclass
class Unit:
    """One independent piece of a run: ``key`` (its file name in ``.ray-units``), the worker
    ``task`` to call and its ``args``."""

    key: str
    task: str
    args: tuple[Any, ...]


@dataclass
class UnitReport:
    """What a distributed run did: ``units`` in the plan, ``skipped`` (finished before, e.g. by
    a killed driver), ``retried`` unit keys resubmitted after their worker died, ``workers``
    started (including replacements), ``seconds`` wall time of the units."""

    units: int = 0
    skipped: int = 0
    retried: list[str] = field(default_factory=list)
    workers: int = 0
    seconds: float = 0.0


# --- the worker ------------------------------------------------------------------------------


class ModelWorker:
    """A Ray actor holding one loaded model; each method runs one unit and returns plain data
    (tensors, numbers, strings), never files: on a multi-node cluster only the driver's disk
    holds the run folder."""

    def __init__(self, model: WorkerModel, threads: int) -> None:
        from melbo_tl.models import load_model

        torch.set_num_threads(max(1, threads))
        self.model = load_model(model.spec, device=model.device, dtype=model.dtype, device_map=model.device_map)

    def ready(self) -> int:
        return os.getpid()

    def _started(self) -> None:
        marker = os.environ.get(CRASH_ONCE_ENV)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)

    def config(self, method: str, cfg: dict[str, Any]) -> dict[str, Any]:
        """``cfg`` with this model's defaults filled in and checked against it (as
        ``train_to_folder`` stores it)."""
        from melbo_tl.training import checked_config

        m = get_method(method)
        return checked_config(m, m.config.from_dict(cfg), self.model).to_dict()

    def calibrate(self, prompts: list[Any], cfg: dict[str, Any]) -> dict[str, Any]:
        from melbo_tl.optimize.calibration import SliceResponse, calibrate_radius
        from melbo_tl.optimize.problem import MelboProblem

        self._started()
        c = MelboConfig.from_dict(cfg).for_model(self.model)
        problem = MelboProblem.build(
            self.model, prompts, source=c.source, target=c.target, p=c.p, q=c.q, positions=c.positions,
            chat=c.chat,
        )  # fmt: skip
        cal = calibrate_radius(SliceResponse(problem), target=c.calibration_target, seed=c.seed, progress=False)
        return {"calibration": cal.to_dict()}

    def melbo_batch(
        self, prompts: list[Any], cfg: dict[str, Any], start: int, stop: int, calibration: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Vectors start…stop−1 as a stamped run (run.json head from this worker's model)."""
        from melbo_tl.optimize.calibration import Calibration
        from melbo_tl.optimize.melbo import batch_run, train_batch
        from melbo_tl.training import RUNNING, checked_config, stamp

        self._started()
        method = get_method("melbo")
        c = checked_config(method, MelboConfig.from_dict(cfg), self.model)
        cal = None if calibration is None else Calibration(**calibration)
        result = train_batch(self.model, prompts, c, range(start, stop), calibration=cal)
        run = stamp(self.model, method, prompts, c, batch_run(result, range(start, stop)), RUNNING)
        return {"tensors": run.tensors, "meta": run.meta}

    def sweep_cell(
        self, prompt: Any, radius: float, cfg: dict[str, Any], max_new_tokens: int, embedder: str
    ) -> dict[str, Any]:
        """One radius of a sweep: its row (diversity, perplexity, …) and its vectors."""
        from melbo_tl.optimize.sweep import sweep_radius

        self._started()
        result = sweep_radius(
            self.model, prompt, [radius], MelboConfig.from_dict(cfg), max_new_tokens=max_new_tokens,
            embedder=embedder, progress=False,
        )  # fmt: skip
        trained = result.results[0]
        return {
            "row": result.rows[0].to_dict(),
            "embedder": result.embedder,
            "settings": result.settings,
            "vectors": trained.vectors,
            "hook": trained.hook,
            "config": trained.config.to_dict(),
            "losses": trained.losses,
            "objectives": trained.objectives,
            "seconds": trained.seconds,
            "texts": trained.texts,
        }

    def dct_rows(
        self, prompts: list[Any], cfg: dict[str, Any], op: str, theta: torch.Tensor, outputs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One chunk of rows of a DCT's Δ evaluation (``op``: delta | jvp | pullback), on this
        worker's copy of the problem (built once per prompts and settings)."""
        from melbo_tl.optimize.calibration import SliceResponse
        from melbo_tl.optimize.dct import DCTConfig
        from melbo_tl.optimize.problem import MelboProblem
        from melbo_tl.placement import master_copy, to_result

        self._started()
        key = json.dumps([prompts, cfg], default=str)
        if getattr(self, "_dct_key", None) != key:
            c = DCTConfig.from_dict(cfg).for_model(self.model)
            problem = MelboProblem.build(
                self.model, prompts, source=c.source, target=c.target, p=2.0, q=1.0, positions=c.positions,
                chat=c.chat,
            )  # fmt: skip
            self._dct_key, self._dct_response = key, SliceResponse(problem, chunk=max(1, c.chunk_size))
        response = self._dct_response
        theta = master_copy(theta, self.model)
        if op == "delta":
            return to_result(response(theta))
        if op == "jvp":
            return to_result(response.jvp(theta))
        outputs = outputs if callable(outputs) else master_copy(outputs, self.model)
        delta, grad = response.pullback(theta, outputs)
        return to_result(delta), to_result(grad)

    def run_outputs(
        self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], write: OutputWriter
    ) -> dict[str, bytes]:
        """``write(model, folder)`` on a copy of a finished run folder (e.g. the CLI's greedy
        completions and figures); the files it adds, as contents for the driver to write."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_run(folder, Run(tensors, meta))
            write(self.model, folder)
            return {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in (RUN_FILE, VECTORS_FILE)}


# --- the driver ------------------------------------------------------------------------------


class UnitStore:
    """Finished units in ``<out>/.ray-units``: one file per unit, written atomically, plus the
    plan they belong to (a rerun with other settings must not mix its units in)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / PLAN_FILE).is_file()

    def start(self, plan: dict[str, Any]) -> None:
        path = self.folder / PLAN_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved != json.loads(json.dumps(plan)):
                raise ValueError(
                    f"{self.folder} holds units of a run with other settings ({saved}); delete it or use another --out."
                )
            return
        atomic_write_json(path, plan)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def save(self, key: str, result: Any) -> None:
        buffer = io.BytesIO()
        torch.save(result, buffer)
        atomic_write_bytes(self._path(key), buffer.getvalue())

    def load(self, key: str) -> Any:
        return torch.load(self._path(key), weights_only=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class WorkerPool:
    """Model-holding actors and the loop that feeds them units (see the module docstring)."""

    def __init__(self, model: WorkerModel, cluster: RayCluster) -> None:
        connect(cluster.address)
        self.model, self.cluster = model, cluster
        resources = ray.cluster_resources()
        if cluster.workers is not None:
            self.size = cluster.workers
        elif cluster.gpus_per_worker > 0:
            self.size = max(1, int(resources.get("GPU", 0) // cluster.gpus_per_worker))
        else:
            self.size = max(1, int(resources.get("CPU", 1) // cluster.cpus_per_worker))
        self.actors: list[Any] = []
        self.started = 0

    def _new(self) -> Any:
        cls = ray.remote(ModelWorker).options(
            num_cpus=self.cluster.cpus_per_worker,
            num_gpus=self.cluster.gpus_per_worker,
            max_restarts=0,
            runtime_env=runtime_env(),
        )
        self.started += 1
        return cls.remote(self.model, int(self.cluster.cpus_per_worker))

    def _wait_ready(self, actors: Sequence[Any]) -> None:
        try:
            ray.get([a.ready.remote() for a in actors])
        except (RayActorError, RayTaskError) as exc:
            raise RuntimeError(f"A Ray worker could not load {self.model.spec!r}: {exc}") from None

    def grow(self, n: int) -> None:
        """Start workers until there are ``min(n, size)`` and wait until each holds its model."""
        new = [self._new() for _ in range(max(0, min(n, self.size) - len(self.actors)))]
        self._wait_ready(new)
        self.actors.extend(new)

    def call(self, task: str, *args: Any) -> Any:
        """Run one task on the first worker (e.g. the calibration every unit shares)."""
        return self.run([Unit("_call", task, args)], None, progress=False)["_call"]

    def run(
        self, units: Sequence[Unit], store: UnitStore | None, *, progress: bool = True, report: UnitReport | None = None
    ) -> dict[str, Any]:
        """Every unit's result (from ``store`` when finished before); new results are saved there
        as they arrive. A unit whose worker died goes to a fresh worker; an error a unit raises is
        raised here (the original exception, not Ray's wrapper)."""
        report = report or UnitReport()
        results: dict[str, Any] = {}
        todo: deque[Unit] = deque()
        for unit in units:
            if store is not None and store.has(unit.key):
                results[unit.key] = store.load(unit.key)
            else:
                todo.append(unit)
        report.units += len(units)
        report.skipped += len(units) - len(todo)
        if not todo:
            return results
        self.grow(len(todo))
        started = time.perf_counter()
        idle = deque(range(len(self.actors)))
        running: dict[Any, tuple[int, Unit]] = {}
        tries: dict[str, int] = {}
        bar = tqdm(total=len(todo), desc=f"units on {len(self.actors)} Ray workers", disable=not progress)
        try:
            while todo or running:
                while todo and idle:
                    slot, unit = idle.popleft(), todo.popleft()
                    ref = getattr(self.actors[slot], unit.task).remote(*unit.args)
                    running[ref] = (slot, unit)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                slot, unit = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError:
                    tries[unit.key] = tries.get(unit.key, 0) + 1
                    if tries[unit.key] > self.cluster.max_retries:
                        raise RuntimeError(
                            f"Unit {unit.key} lost its worker {tries[unit.key]} times; giving up "
                            f"(max_retries={self.cluster.max_retries})."
                        ) from None
                    report.retried.append(unit.key)
                    bar.write(f"worker died during unit {unit.key}; retrying it on a new worker", file=sys.stderr)
                    self.actors[slot] = self._new()
                    self._wait_ready([self.actors[slot]])
                    todo.appendleft(unit)
                    idle.append(slot)
                    continue
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, Exception) else exc
                    raise cause from None
                if store is not None:
                    store.save(unit.key, result)
                results[unit.key] = result
                idle.append(slot)
                bar.update(1)
        finally:
            bar.close()
            report.seconds += time.perf_counter() - started
            report.workers = self.started
        return results

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
