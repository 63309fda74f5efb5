"""Runs on Ray workers merged into the single-process run folders: independent MELBO batches
(``train``), radii (``sweep``) and the row chunks of every DCT Δ evaluation (``dct``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from melbo_tl.artifacts import Run, atomic_write_bytes, load_run, save_run
from melbo_tl.distributed.workers import (
    UNITS_DIR,
    OutputWriter,
    RayCluster,
    Unit,
    UnitReport,
    UnitStore,
    WorkerModel,
    WorkerPool,
)
from melbo_tl.filenames import RUN_FILE
from melbo_tl.optimize.melbo import MelboConfig, MelboResult, independent_batches
from melbo_tl.optimize.sweep import SweepResult, SweepRow
from melbo_tl.registry import get_method
from melbo_tl.training import COMPLETE, check_resumable, stored_prompts


class WorkerResponse:
    """A DCT's Δ(θ) (:class:`~melbo_tl.optimize.calibration.SliceResponse`) whose row chunks run
    on Ray workers, one unit per chunk of ``chunk_size`` rows, the chunks the local response would
    compute; ``problem`` and ``d_model`` stay the local ones (the driver holds the model too)."""

    def __init__(self, local: Any, pool: WorkerPool, prompts: list[Any], cfg: dict[str, Any]) -> None:
        self.local, self.pool, self.prompts, self.cfg = local, pool, prompts, cfg
        self.problem, self.chunk = local.problem, local.chunk
        self.calls = 0

    @property
    def d_model(self) -> int:
        return int(self.local.d_model)

    def _rows(self, op: str, theta: torch.Tensor, outputs: Any = None) -> list[Any]:
        units = []
        for n, i in enumerate(range(0, len(theta), self.chunk)):
            out = outputs[i : i + self.chunk].cpu() if isinstance(outputs, torch.Tensor) else outputs
            args = (self.prompts, self.cfg, op, theta[i : i + self.chunk].detach().cpu(), out)
            units.append(Unit(f"{op}-{n}", "dct_rows", args))
        self.calls += 1
        done = self.pool.run(units, None, progress=False)
        return [done[u.key] for u in units]

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._rows("delta", theta)).to(theta.device)

    def jvp(self, directions: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._rows("jvp", directions)).to(directions.device)

    def pullback(self, theta: torch.Tensor, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._rows("pullback", theta, outputs)
        delta = torch.cat([d for d, _ in parts]).to(theta.device)
        return delta, torch.cat([g for _, g in parts]).to(theta.device)


@dataclass
class DCTWorkers:
    """The backend a DCT fit takes (``train_to_folder(…, backend=…)``, ``fit_dct(…, response=…)``):
    called with the local Δ, it returns the :class:`WorkerResponse` computing its row chunks on
    ``pool``."""

    pool: WorkerPool
    prompts: list[Any]
    cfg: dict[str, Any]

    def __call__(self, local: Any) -> WorkerResponse:
        return WorkerResponse(local, self.pool, self.prompts, self.cfg)


@contextlib.contextmanager
def dct_on_workers(
    model: WorkerModel, prompts: Sequence[Any] | Any, cfg: Any, *, cluster: RayCluster
) -> Iterator[DCTWorkers]:
    """Ray workers for the DCT fits on ``prompts`` with ``cfg``: pass what the block gets as
    ``backend`` (e.g. ``train_to_folder(…, "dct", …, backend=workers)`` on the driver's own copy of
    the model: calibration bookkeeping, orthogonalization, ranking, checkpoints and ``--resume`` as
    ever), and its Δ evaluations, the forward and backward passes over F rows, run as chunk-sized
    units on the workers. The same chunks give the single process's numbers."""
    with WorkerPool(model, cluster) as pool:
        yield DCTWorkers(pool, stored_prompts(prompts), cfg.to_dict())


def _merge_vector_runs(parts: Sequence[dict[str, Any]]) -> Run:
    """Batches of one run, in index order, as the one run a single process writes."""
    tensors = {k: torch.cat([p["tensors"][k] for p in parts]) for k in parts[0]["tensors"]}
    meta = dict(parts[0]["meta"])
    meta["hooks"] = [h for p in parts for h in p["meta"]["hooks"]]
    meta["per_vector"] = [row for p in parts for row in p["meta"]["per_vector"]]
    meta["status"] = COMPLETE
    meta.pop("n_vectors", None)
    return Run(tensors, meta)


def train_to_folder_ray(
    model: WorkerModel,
    method: str,
    prompts: Sequence[Any] | Any,
    cfg: MelboConfig,
    out: str | Path,
    *,
    cluster: RayCluster,
    resume: bool = False,
    progress: bool = True,
    outputs: OutputWriter | None = None,
    report: UnitReport | None = None,
) -> Path:
    """:func:`~melbo_tl.training.train_to_folder` with the vector batches on Ray workers.

    Only ``melbo`` in mode ``independent`` splits (its batches are independent); ``resume``
    continues after the finished batches of a killed driver (or returns a complete run as it
    is). ``outputs(model, folder)`` then runs on one worker on a copy of the finished run (e.g.
    the CLI's ``generations.jsonl`` and ``losses.html``); the files it adds are copied into ``out``.
    """
    m = get_method(method)
    if m.name != "melbo" or not isinstance(cfg, MelboConfig):
        raise ValueError(f"--ray splits MELBO runs (method 'melbo' with a MelboConfig), not {method!r}.")
    batches = independent_batches(cfg)
    prompts = stored_prompts(prompts)
    out = Path(out)
    store = UnitStore(out / UNITS_DIR)
    if ((out / RUN_FILE).is_file() or store.exists()) and not resume:
        raise ValueError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it, or choose another folder."
        )
    with WorkerPool(model, cluster) as pool:
        pool.grow(len(batches))  # all workers load the model at once
        cfg = MelboConfig.from_dict(pool.call("config", m.name, cfg.to_dict()))  # as train_to_folder stores it
        if (out / RUN_FILE).is_file():
            previous = load_run(out)
            check_resumable(out, previous, m, cfg, prompts)
            if previous.meta.get("status") == COMPLETE and len(previous.hooks) == cfg.n_vectors:
                return out
        store.start({"method": m.name, "config": cfg.to_dict(), "prompts": prompts})
        plain = cfg.to_dict()
        calibration = None
        if cfg.radius == "auto":
            done = pool.run([Unit("calibration", "calibrate", (prompts, plain))], store, report=report)
            calibration = done["calibration"]["calibration"]
        units = [
            Unit(f"vectors-{b.start}-{b.stop - 1}", "melbo_batch", (prompts, plain, b.start, b.stop, calibration))
            for b in batches
        ]
        parts = pool.run(units, store, progress=progress, report=report)
        run = _merge_vector_runs([parts[u.key] for u in units])
        save_run(out, run)
        if outputs is not None:
            files = pool.call("run_outputs", run.tensors, run.meta, outputs)
            for name, data in files.items():
                atomic_write_bytes(out / name, data)
    store.remove()
    return out


def sweep_radius_ray(
    model: WorkerModel,
    prompt: Any,
    radii: Sequence[float],
    cfg: MelboConfig,
    *,
    out: str | Path,
    cluster: RayCluster,
    resume: bool = False,
    max_new_tokens: int = 48,
    embedder: str = "auto",
    progress: bool = True,
    report: UnitReport | None = None,
) -> SweepResult:
    """:func:`~melbo_tl.optimize.sweep.sweep_radius` with one radius per unit on Ray workers.
    Finished radii are kept in ``<out>/.ray-units`` until the caller has written the result
    (then call :func:`finish`), so a rerun with ``resume`` skips them."""
    if not radii:
        raise ValueError("Give at least one radius.")
    store = UnitStore(Path(out) / UNITS_DIR)
    if store.exists() and not resume:
        raise ValueError(
            f"{out} holds an interrupted --ray sweep; pass --resume to continue it, or choose another folder."
        )
    plain = cfg.to_dict()
    store.start({"sweep": [float(r) for r in radii], "prompt": prompt, "config": plain, "max_new_tokens": max_new_tokens,
                 "embedder": embedder})  # fmt: skip
    units = [
        Unit(f"radius-{i}", "sweep_cell", (prompt, float(r), plain, max_new_tokens, embedder))
        for i, r in enumerate(radii)
    ]
    with WorkerPool(model, cluster) as pool:
        cells = pool.run(units, store, progress=progress, report=report)
    parts = [cells[u.key] for u in units]
    keys = ("vectors", "hook", "losses", "objectives", "seconds", "texts")
    results = [MelboResult(config=MelboConfig.from_dict(p["config"]), **{k: p[k] for k in keys}) for p in parts]
    rows = [SweepRow(**p["row"]) for p in parts]
    return SweepResult(rows, parts[0]["embedder"], parts[0]["settings"], results)


def finish(out: str | Path) -> None:
    """Delete ``<out>/.ray-units`` once the merged result is written."""
    UnitStore(Path(out) / UNITS_DIR).remove()


def report_dict(report: UnitReport) -> dict[str, Any]:
    return asdict(report)
