"""Where a distributed run goes: what each worker loads (:class:`WorkerModel`), the Ray cluster
and how wide (:class:`RayCluster`), and joining it (:func:`connect`) with the driver's code and
settings on every worker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Environment a worker gets from the driver (on a local cluster it inherits the rest anyway).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


@dataclass(frozen=True)
class WorkerModel:
    """What each worker loads: ``spec`` as for :func:`~melbo_tl.models.load_model` (every node
    needs it: an embedded name, a directory present on every node, or a hub id), ``device`` or
    ``device_map``, ``dtype`` (auto | float32 | bfloat16 | float16; ``auto`` is resolved by each
    worker for its own device, as :func:`~melbo_tl.models.load_model` does)."""

    spec: str
    device: str | None = None
    dtype: str = "auto"
    device_map: str | dict[str, Any] | None = None


@dataclass(frozen=True)
class RayCluster:
    """Where and how wide to run: ``address`` ``"local"`` (start a Ray instance on this machine),
    ``"auto"`` (join the cluster ``ray start --head`` started) or ``host:port`` / ``ray://…``;
    ``workers`` how many model-holding workers (None: as many as the cluster's CPUs, or GPUs
    when ``gpus_per_worker`` > 0, allow); ``cpus_per_worker`` also sets each worker's torch
    threads; ``max_retries`` how often a unit is resubmitted after its worker died."""

    address: str = "local"
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}.")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(
                f"cpus_per_worker must be > 0 and gpus_per_worker ≥ 0, got {self.cpus_per_worker}, {self.gpus_per_worker}."
            )


def connect(address: str) -> None:
    """Join (or start) the Ray cluster at ``address`` unless this process already did."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)


def _package_root() -> str:
    import melbo_tl

    return str(Path(melbo_tl.__file__).resolve().parents[1])


def runtime_env() -> dict[str, Any]:
    """Workers import the driver's melbo_tl (its source tree first on the path) and get the
    MELBO_TL_* and offline settings of the driver's environment."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MELBO_TL_") or k in FORWARDED_ENV}
    path = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = _package_root() + (os.pathsep + path if path else "")
    return {"env_vars": env}
