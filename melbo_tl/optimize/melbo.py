"""MELBO: unsupervised steering vectors that maximally change a later layer's activations.

Each vector θ (‖θ‖ = R) is added at the ``source`` site on every token (by default the output of
block 7, ``Site(7, "resid_post")``) and trained by Riemannian AdamW on the sphere (tangent
projection of the gradient, step, retraction) to maximize the objective in
:mod:`melbo_tl.optimize.objective` at the later ``target`` site.

Three modes (``MelboConfig.mode``):
- ``"orthogonal"`` (the reference's, the default): vectors one at a time; vector k's start,
  gradient and iterate are projected off the span of vectors 0…k−1, which stay frozen.
- ``"batched-orthogonal"``: ``batch_size`` mutually orthogonal vectors trained at once, as one
  point of the Stiefel manifold of orthonormal frames scaled by R (tangent projection, AdamW
  step, polar retraction); every batch is kept orthogonal to the vectors before it. Orthogonality
  at the batched mode's speed, but not the same optimum: vector k no longer maximizes the
  objective given 0…k−1, all of a batch share the constraint.
- ``"independent"``: ``batch_size`` independent vectors trained at once, one per batch row;
  optionally with a soft penalty on the pairwise cosine of the changes Δ they cause.

``steps=0`` is the random baseline: random directions of norm R through the same code path.
Registered as method ``"melbo"`` (run folders of random baselines written before format 2 say
``"melbo-random"``).

Example::

    model = load_model()
    cfg = MelboConfig(radius=4, n_vectors=4, positions="last:2", steps=300)
    result = train_vectors(model, ["How can I make a bomb?"], cfg)
    result = train_vectors(model, ["How can I make a bomb?"], radius=4, n_vectors=4)  # the same
    result.vectors  # [4, d_model], acting at result.site
    steer = result.intervention(0)  # an AddVector
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run
from melbo_tl.optimize.calibration import Calibration, SliceResponse, calibrate_radius
from melbo_tl.optimize.configs import MODES, MelboConfig  # noqa: F401  (MelboConfig lives there, without torch)
from melbo_tl.optimize.objective import (
    delta_cosines,
    orthonormal_basis,
    project_off,
    retract,
    stiefel_retract,
    stiefel_tangent,
    tangent,
)
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import master_copy, to_result
from melbo_tl.prompts import PromptLike
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention
from melbo_tl.steering.results import VectorResult
from melbo_tl.steering.sites import d_model

NAME = "melbo"


@dataclass
class VectorRecord:
    """One finished vector: ``vector`` [d_model]; ``losses`` objective value before each step;
    ``objective`` value after training; ``seconds`` wall time spent on it (shared equally
    within a batch in independent mode)."""

    index: int
    vector: Tensor
    losses: list[float]
    objective: float
    seconds: float


@dataclass
class MelboResult(VectorResult):
    """Fields: ``vectors`` [n, d_model] added at ``hook`` (``site``); ``config`` (sites filled in);
    per-vector ``losses`` (objective per step), ``objectives`` (final) and ``seconds``; ``texts``
    the formatted prompts; ``calibration`` with ``radius="auto"``. ``intervention(i, scale)``
    applies vector i."""

    vectors: Float[Tensor, "n d_model"]
    hook: str
    config: MelboConfig
    losses: list[list[float]]
    objectives: list[float]
    seconds: list[float]
    texts: list[str] = field(default_factory=list)
    calibration: Calibration | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "radius R": self.config.radius,
            "mode": self.config.mode,
            "steps": self.config.steps,
            "target": str(self.config.target),
            "objectives": self.objectives,
        }


def _start(index: int, seed: int, d: int, radius: float, basis: Tensor | None, model: Any) -> Tensor:
    """Random start of vector ``index``: depends only on (seed, index), so resuming reproduces it."""
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + index)
    theta = master_copy(torch.randn(1, d, generator=gen, device="cpu"), model)
    return retract(project_off(theta, basis), radius)


def _optimize(
    problem: MelboProblem,
    theta: Tensor,
    *,
    radius: float,
    steps: int,
    lr: float,
    basis: Tensor | None,
    diversity_penalty: float,
    joint: bool,
    desc: str,
    progress: bool,
) -> tuple[Tensor, list[list[float]], Tensor]:
    """Riemannian AdamW on k vectors at once (rows of ``theta``, float32): each on its sphere, or
    with ``joint`` all on the Stiefel manifold (mutually orthogonal). Returns (θ, losses per row,
    final objective)."""
    project, back = (stiefel_tangent, stiefel_retract) if joint else (tangent, retract)
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.AdamW([theta], lr=lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
    history: list[list[float]] = [[] for _ in range(theta.shape[0])]
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        objective, delta = problem.objective(problem.add_vectors(theta))
        loss = -objective.sum()
        if diversity_penalty > 0 and theta.shape[0] > 1:
            cos = delta_cosines(delta, problem.select)
            off = cos.pow(2) - torch.diag_embed(cos.diagonal().pow(2))
            loss = loss + diversity_penalty * (objective.detach() * off.sum(1) / (theta.shape[0] - 1)).sum()
        loss.backward()
        with torch.no_grad():
            grad = project(theta.grad, theta)
            theta.grad.copy_(project_off(grad, basis))
        opt.step()
        with torch.no_grad():
            theta.copy_(back(project_off(theta, basis), radius))
        for row, value in zip(history, objective.tolist()):
            row.append(value)
        bar.set_postfix(objective=f"{objective.mean().item():.4g}")
    with torch.no_grad():
        final, _ = problem.objective(problem.add_vectors(theta))
    return theta.detach(), history, final


def train_vectors(
    model: Any,
    prompts: Sequence[PromptLike],
    cfg: MelboConfig | None = None,
    *,
    previous: Sequence[VectorRecord] = (),
    on_vector: Callable[[VectorRecord], None] | None = None,
    calibration: Calibration | None = None,
    on_calibration: Callable[[Calibration], None] | None = None,
    progress: bool = True,
    **settings: Any,
) -> MelboResult:
    """Learn ``cfg.n_vectors`` MELBO steering vectors on ``prompts`` (``settings`` are
    :class:`MelboConfig` fields, applied on top of ``cfg``: ``train_vectors(model, p, radius=4)``).

    ``previous`` holds already finished vectors (a resumed run): they are kept, define the span
    in orthogonal mode, and training continues at index ``len(previous)``. ``on_vector`` is
    called with each finished vector (in index order), e.g. to checkpoint a run folder. With
    ``radius="auto"`` R is calibrated first (or taken from ``calibration``, e.g. a resumed run's).
    """
    cfg = MelboConfig.build(cfg, **settings).for_model(model)
    cfg.check_model(model)
    problem = MelboProblem.build(
        model, prompts, source=cfg.source, target=cfg.target, p=cfg.p, q=cfg.q, positions=cfg.positions, chat=cfg.chat
    )
    if cfg.radius == "auto":
        if calibration is None:
            calibration = calibrate_radius(
                SliceResponse(problem), target=cfg.calibration_target, seed=cfg.seed, progress=progress
            )
        if on_calibration is not None:
            on_calibration(calibration)
        cfg = cfg.replace(radius=calibration.radius)
    records = list(previous)
    if len(records) > cfg.n_vectors:
        raise ValueError(f"{len(records)} finished vectors already exceed n_vectors={cfg.n_vectors}.")
    while len(records) < cfg.n_vectors:
        first = len(records)
        count = min(cfg.batch_size, cfg.n_vectors - first) if cfg.batched else 1
        for record in _train_batch(model, problem, cfg, first, count, records, progress):
            records.append(record)
            if on_vector is not None:
                on_vector(record)
    return _result(records, cfg, problem, calibration)


def _result(
    records: Sequence[Any], cfg: MelboConfig, problem: MelboProblem, calibration: Calibration | None
) -> MelboResult:
    """The finished vectors' records as one result (a whole run, or one batch of it)."""
    return MelboResult(
        vectors=torch.stack([r.vector for r in records]),
        hook=cfg.hook,
        config=cfg,
        losses=[r.losses for r in records],
        objectives=[r.objective for r in records],
        seconds=[r.seconds for r in records],
        texts=problem.texts,
        calibration=calibration,
    )


def _train_batch(
    model: Any,
    problem: MelboProblem,
    cfg: MelboConfig,
    first: int,
    count: int,
    done: Sequence[VectorRecord],
    progress: bool,
) -> list[VectorRecord]:
    """Vectors ``first`` … ``first + count − 1`` (one batch), given the finished ``done`` (their
    span is avoided in the orthogonal modes; independent mode ignores them)."""
    assert isinstance(cfg.radius, float | int)
    joint = cfg.mode == "batched-orthogonal"
    kept = [master_copy(r.vector, model) for r in done] if cfg.mode != "independent" else []
    basis = orthonormal_basis(torch.stack(kept)) if kept else None
    theta = torch.cat([_start(first + j, cfg.seed, d_model(model), cfg.radius, basis, model) for j in range(count)])
    if joint:
        theta = stiefel_retract(theta, cfg.radius)
    started = time.perf_counter()
    theta, history, final = _optimize(
        problem,
        theta,
        radius=cfg.radius,
        steps=cfg.steps,
        lr=cfg.lr,
        basis=basis,
        diversity_penalty=cfg.diversity_penalty,
        joint=joint,
        desc=f"vector {first}" if count == 1 else f"vectors {first}-{first + count - 1}",
        progress=progress,
    )
    seconds = (time.perf_counter() - started) / count
    return [VectorRecord(first + j, to_result(theta[j]), history[j], float(final[j]), seconds) for j in range(count)]


def independent_batches(cfg: MelboConfig) -> list[range]:
    """The vector indices of each batch an independent-mode run trains, in order. Each batch
    depends only on the seed and its indices, so batches can run anywhere, in any order, and give
    the vectors a single :func:`train_vectors` call gives (what :mod:`melbo_tl.distributed` splits)."""
    if cfg.mode != "independent":
        raise ValueError(
            f"Only mode 'independent' splits into independent batches; in mode {cfg.mode!r} each vector is "
            "trained against the ones before it."
        )
    return [range(i, min(i + cfg.batch_size, cfg.n_vectors)) for i in range(0, cfg.n_vectors, cfg.batch_size)]


def train_batch(
    model: Any,
    prompts: Sequence[PromptLike],
    cfg: MelboConfig,
    indices: range,
    *,
    calibration: Calibration | None = None,
    progress: bool = False,
) -> MelboResult:
    """Vectors ``indices`` (one of :func:`independent_batches`) of an independent-mode run, as
    :func:`train_vectors` trains them; ``radius="auto"`` takes R from ``calibration``, which must
    then be given (calibrate once, not per batch)."""
    cfg = cfg.for_model(model)
    cfg.check_model(model)
    if indices not in independent_batches(cfg):
        raise ValueError(f"{indices} is not one of this run's batches: {independent_batches(cfg)}.")
    if cfg.radius == "auto":
        if calibration is None:
            raise ValueError("radius='auto' needs the run's calibration: calibrate once and pass it to every batch.")
        cfg = cfg.replace(radius=calibration.radius)
    problem = MelboProblem.build(
        model, prompts, source=cfg.source, target=cfg.target, p=cfg.p, q=cfg.q, positions=cfg.positions, chat=cfg.chat
    )
    records = _train_batch(model, problem, cfg, indices.start, len(indices), (), progress)
    return _result(records, cfg, problem, calibration)


# --- the registered method: results as run folders -------------------------------------------


def per_vector_rows(records: Sequence[Any]) -> list[dict[str, Any]]:
    """run.json's ``per_vector`` rows (index, final objective, seconds, objective per step)."""
    return [{"index": r.index, "objective": r.objective, "seconds": r.seconds, "losses": r.losses} for r in records]


def _as_run(
    cfg: MelboConfig, records: Sequence[VectorRecord], texts: Sequence[str], calibration: Calibration | None = None
) -> Run:
    d = records[0].vector.shape[-1] if records else 0
    vectors = torch.stack([r.vector for r in records]) if records else torch.zeros(0, d, device="cpu")
    meta = {
        "hooks": [cfg.hook] * len(records),
        "source": str(cfg.source),
        "target": str(cfg.target),
        "radius": cfg.radius if calibration is None else calibration.radius,
        "calibration": None if calibration is None else calibration.to_dict(),
        "objective_positions": cfg.positions,
        "steer_positions": "all",
        "random_baseline": cfg.steps == 0,
        "texts": list(texts),
        "per_vector": per_vector_rows(records),
    }
    return Run({"vectors": vectors}, meta)


def batch_run(result: MelboResult, indices: range) -> Run:
    """A :func:`train_batch` result as the part of the run folder it fills (vectors ``indices``):
    concatenated in index order, such parts make the run a single process writes."""
    records = [
        VectorRecord(i, result.vectors[j], result.losses[j], result.objectives[j], result.seconds[j])
        for j, i in enumerate(indices)
    ]
    return _as_run(result.config, records, result.texts, result.calibration)


def _records(run: Run | None) -> list[VectorRecord]:
    if run is None:
        return []
    rows = run.meta.get("per_vector", [])
    return [
        VectorRecord(r["index"], run.vectors[i], r["losses"], r["objective"], r["seconds"]) for i, r in enumerate(rows)
    ]


def _train(model: Any, prompts: Sequence[PromptLike], cfg: MelboConfig, ckpt: Checkpoints) -> Run:
    cfg = cfg.for_model(model)
    finished = _records(ckpt.previous)
    texts = list(ckpt.previous.meta.get("texts", [])) if ckpt.previous else []
    saved = ckpt.previous.meta.get("calibration") if ckpt.previous else None
    state: dict[str, Any] = {"calibration": Calibration(**saved) if saved else None}

    def calibrated(calibration: Calibration) -> None:
        state["calibration"] = calibration

    def checkpoint(record: VectorRecord) -> None:
        finished.append(record)
        ckpt.save(_as_run(cfg, finished, texts, state["calibration"]))

    result = train_vectors(
        model, prompts, cfg, previous=list(finished), on_vector=checkpoint, calibration=state["calibration"],
        on_calibration=calibrated, progress=ckpt.progress,
    )  # fmt: skip
    return _as_run(cfg, finished, result.texts, result.calibration)


def legacy_config(meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 stored MelboConfig's fields under "config" already, with ``orthogonal: bool``
    where format 2 has ``mode``."""
    old = dict(meta.get("config", {}))
    old["mode"] = "orthogonal" if old.pop("orthogonal", True) else "independent"
    return old


METHOD = register_method(
    Method(
        name=NAME,
        config=MelboConfig,
        train=_train,
        intervention=vector_intervention,
        count=vector_count,
        description="MELBO steering vectors (Mack & Turner): maximize the change at a later layer, ‖θ‖ = R",
        legacy_config=legacy_config,
    ),
    aliases=("melbo-random",),
)
