"""Checkpointing MELBO training into a run folder, and resuming from one.

After every finished vector (or adapter) the run folder is rewritten atomically with all
vectors so far and ``status: "running"``; at the end ``status: "complete"``. A rerun with
``resume=True`` reads the finished ones back, checks that the hyper-parameters match, and
continues at the next index, so an interrupted run loses at most the vector in progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from melbo_tl.artifacts import RUN_FILE, Run, load_run, run_meta, save_run
from melbo_tl.optimize.adapters import AdapterRecord
from melbo_tl.optimize.melbo import MelboConfig, VectorRecord
from melbo_tl.steering.sites import resid_hook

# Settings that must match for a resumed run to continue the same optimization.
_RESUME_KEYS = (
    "source_layer",
    "target_layer",
    "radius",
    "p",
    "q",
    "positions",
    "steps",
    "lr",
    "orthogonal",
    "seed",
    "batch_size",
    "diversity_penalty",
)


def _per_vector(records: Sequence[VectorRecord | AdapterRecord]) -> list[dict[str, Any]]:
    return [{"index": r.index, "objective": r.objective, "seconds": r.seconds, "losses": r.losses} for r in records]


def method_name(config: MelboConfig, *, adapters: bool) -> str:
    if adapters:
        return "melbo-adapter"
    return "melbo-random" if config.steps == 0 else "melbo"


def save_progress(
    out: Path,
    model: Any,
    config: MelboConfig,
    prompts: Sequence[Any],
    texts: Sequence[str],
    records: Sequence[VectorRecord | AdapterRecord],
    *,
    status: str,
    rank: int | None = None,
) -> Path:
    """Write the run folder for the records finished so far."""
    adapters = bool(records) and isinstance(records[0], AdapterRecord)
    if adapters:
        tensors = {
            "vectors": torch.stack([r.mean_delta for r in records]),
            "A": torch.stack([r.A for r in records]),
            "B": torch.stack([r.B for r in records]),
        }
        hooks = [f"blocks.{config.source_layer}.hook_mlp_out"] * len(records)
    else:
        tensors = {"vectors": torch.stack([r.vector for r in records])}
        hooks = [resid_hook(config.source_layer, "post")] * len(records)
    meta = run_meta(
        model,
        method=method_name(config, adapters=adapters),
        hooks=hooks,
        config=config.to_dict(),
        source_layer=config.source_layer,
        target_layer=config.target_layer,
        radius=config.radius,
        rank=rank,
        objective_positions=config.positions,
        steer_positions="all",
        prompts=list(prompts),
        texts=list(texts),
        status=status,
        per_vector=_per_vector(records),
    )
    return save_run(out, Run(tensors, meta))


def load_progress(out: Path, model: Any, config: MelboConfig, *, adapters: bool) -> list[Any]:
    """Finished records of an earlier run in ``out`` with the same settings (``[]`` if none)."""
    if not (Path(out) / RUN_FILE).is_file():
        return []
    run = load_run(out, model)
    saved = run.meta.get("config", {})
    mismatched = {k: (saved.get(k), getattr(config, k)) for k in _RESUME_KEYS if saved.get(k) != getattr(config, k)}
    if mismatched or run.meta.get("method") != method_name(config, adapters=adapters):
        details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in mismatched.items())
        raise ValueError(
            f"Cannot resume {out}: its settings differ ({details or 'method ' + str(run.meta.get('method'))}). Use another --out."
        )
    rows = run.meta.get("per_vector", [])
    if adapters:
        return [
            AdapterRecord(
                r["index"],
                run.tensors["A"][i],
                run.tensors["B"][i],
                r["losses"],
                r["objective"],
                r["seconds"],
                run.vectors[i],
            )
            for i, r in enumerate(rows)
        ]
    return [
        VectorRecord(r["index"], run.vectors[i], r["losses"], r["objective"], r["seconds"]) for i, r in enumerate(rows)
    ]


def train_to_folder(
    model: Any,
    prompts: Sequence[Any],
    out: str | Path,
    *,
    resume: bool = False,
    adapters: bool = False,
    rank: int = 8,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Train MELBO vectors (or adapters) into run folder ``out``, checkpointing after each one.

    ``options`` are :func:`~melbo_tl.optimize.melbo.train_vectors` keywords (for adapters,
    ``n_vectors`` is the number of adapters). Without ``resume``, an existing run in ``out`` is
    an error rather than being overwritten.
    """
    from melbo_tl.optimize.adapters import train_adapters
    from melbo_tl.optimize.melbo import train_vectors

    out = Path(out)
    if (out / RUN_FILE).is_file() and not resume:
        raise ValueError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it, or choose another folder."
        )
    config_options = {
        k: v
        for k, v in options.items()
        if k in MelboConfig.__dataclass_fields__ and k not in ("radius", "source_layer", "target_layer", "positions")
    }
    if adapters:
        config_options["orthogonal"] = False
        config_options.setdefault("batch_size", 4)
    config = MelboConfig.create(
        model,
        radius=options["radius"],
        source_layer=options.get("source_layer"),
        target_layer=options.get("target_layer"),
        positions=options.get("positions", "all"),
        **config_options,
    )
    previous = load_progress(out, model, config, adapters=adapters) if resume else []
    texts: list[str] = []
    finished = list(previous)

    def checkpoint(record: Any) -> None:
        finished.append(record)
        save_progress(
            out, model, config, prompts, texts or prompts, finished, status="running", rank=rank if adapters else None
        )

    if adapters:
        kwargs = {k: v for k, v in options.items() if k not in ("n_vectors", "orthogonal", "diversity_penalty")}
        kwargs.setdefault("batch_size", config.batch_size)
        result = train_adapters(
            model,
            prompts,
            rank=rank,
            n_adapters=config.n_vectors,
            previous=previous,
            on_adapter=checkpoint,
            progress=progress,
            **kwargs,
        )
    else:
        result = train_vectors(model, prompts, previous=previous, on_vector=checkpoint, progress=progress, **options)
    texts.extend(result.texts)
    return save_progress(
        out, model, config, prompts, texts, finished, status="complete", rank=rank if adapters else None
    )
