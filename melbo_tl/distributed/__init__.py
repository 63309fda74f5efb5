"""Discovery on a Ray cluster: independent units of a run on workers that each hold the model.

A MELBO run in independent mode is a list of vector batches whose vectors depend only on the
seed and their indices (:func:`~melbo_tl.optimize.melbo.independent_batches`); a radius sweep is a
list of radii, each trained and scored on its own. Those are the *units*. Each Ray worker is an
actor that loads the model once (from the local melbo_tl cache or a model directory) and runs
units; the driver loads no model at all. The driver

- writes every finished unit atomically into ``<out>/.ray-units/`` (so a killed driver, rerun
  with ``resume``, skips what is finished);
- resubmits a unit whose worker died (``RayActorError``) on a fresh worker, up to
  ``max_retries`` times, so a lost worker costs only its unit;
- merges the units into exactly the folder a single-process run writes (``run.json`` +
  ``vectors.safetensors`` as :func:`~melbo_tl.training.train_to_folder` writes them; for a sweep
  the :class:`~melbo_tl.optimize.sweep.SweepResult` the CLI writes as ``sweep.json``), then
  deletes ``.ray-units``.

Same seeds, same units, same vectors: a split run computes each batch exactly as the single
process does (the same rows in one forward pass), so only timings differ.

Ray is imported here and nowhere else; the CLI imports this module only when ``--ray`` is given.

>>> cluster = RayCluster(address="auto", workers=4, gpus_per_worker=1)
>>> train_to_folder_ray(WorkerModel("path/to/model", device="cuda"), "melbo", prompts, cfg, "runs/x", cluster=cluster)
"""

from melbo_tl.distributed.cluster import RayCluster, WorkerModel, connect
from melbo_tl.distributed.runs import (
    DCTWorkers,
    WorkerResponse,
    dct_on_workers,
    finish,
    report_dict,
    sweep_radius_ray,
    train_to_folder_ray,
)
from melbo_tl.distributed.workers import (
    CRASH_ONCE_ENV,
    PLAN_FILE,
    UNITS_DIR,
    ModelWorker,
    Unit,
    UnitReport,
    UnitStore,
    WorkerPool,
)

__all__ = [
    "CRASH_ONCE_ENV",
    "PLAN_FILE",
    "UNITS_DIR",
    "DCTWorkers",
    "ModelWorker",
    "RayCluster",
    "Unit",
    "UnitReport",
    "UnitStore",
    "WorkerModel",
    "WorkerPool",
    "WorkerResponse",
    "connect",
    "dct_on_workers",
    "finish",
    "report_dict",
    "sweep_radius_ray",
    "train_to_folder_ray",
]
