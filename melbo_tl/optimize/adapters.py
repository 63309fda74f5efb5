"""MELBO adapters: rank-r perturbations of the source block's MLP output weights.

W_out' = W_out + R·B·Aᵀ with every column of A [d_mlp, r] and B [d_model, r] on the unit
sphere (tangent projection per column, renormalization after each step). The change to the
residual after block s is R·(h·A)·Bᵀ, where h is that block's MLP hidden activation — which
does not depend on the adapter, so it is cached once like the residual. Same objective as
steering vectors; adapters are trained independently, ``batch_size`` at a time. Registered as
method ``"melbo-adapter"``.

>>> result = train_adapters(model, ["How can I make a bomb?"], AdapterConfig(radius=0.35, rank=64))
>>> steer = result.intervention(0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run
from melbo_tl.forward import run_forward
from melbo_tl.optimize.configs import AdapterConfig  # lives there, without torch
from melbo_tl.optimize.melbo import per_vector_rows
from melbo_tl.optimize.objective import column_tangent, normalize_columns
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import like, master_copy, to_result
from melbo_tl.prompts import Positions, PromptLike
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import check_index
from melbo_tl.steering.interventions import MLPAdapter
from melbo_tl.steering.results import VectorResult, check_entry
from melbo_tl.steering.sites import mlp_hidden_hook, mlp_out_hook

NAME = "melbo-adapter"


@dataclass
class AdapterRecord:
    """One finished adapter; ``mean_delta`` [d_model] is its residual contribution averaged over
    the training prompts' tokens, stored as the run's "vector" so adapters can be compared
    with steering vectors."""

    index: int
    A: Tensor
    B: Tensor
    losses: list[float]
    objective: float
    seconds: float
    mean_delta: Tensor


@dataclass
class AdapterResult(VectorResult):
    """Fields: ``A`` [n, d_mlp, r], ``B`` [n, d_model, r] (unit columns), applied with
    :meth:`intervention` (an :class:`MLPAdapter`); ``vectors`` [n, d_model] each adapter's mean
    residual contribution on the training prompts (to compare with steering vectors), written at
    ``site`` (the adapted block's MLP output); ``config`` (sites filled in); per-adapter
    ``losses``, ``objectives``, ``seconds``; ``texts`` the formatted prompts."""

    A: Float[Tensor, "n d_mlp rank"]
    B: Float[Tensor, "n d_model rank"]
    config: AdapterConfig
    losses: list[list[float]]
    objectives: list[float]
    seconds: list[float]
    texts: list[str]
    vectors: Float[Tensor, "n d_model"] | None = None  # type: ignore[assignment]
    unit = "adapter"

    @property
    def hook(self) -> str:  # type: ignore[override]
        return mlp_out_hook(self.config.block)

    def summary(self) -> dict[str, Any]:
        return {"rank": self.rank, "radius R": self.config.radius, "objectives": self.objectives}

    @property
    def rank(self) -> int:
        return self.config.rank

    def intervention(self, index: int = 0, scale: float = 1.0) -> MLPAdapter:
        """Adapter ``index`` with its radius × ``scale`` (the effect is linear in the radius)."""
        check_entry(index, int(self.A.shape[0]), "adapter")
        return MLPAdapter(self.A[index], self.B[index], self.config.block, self.config.radius * scale)


@torch.no_grad()
def _mlp_hidden(model: Any, problem: MelboProblem) -> Tensor:
    name = mlp_hidden_hook(problem.source.as_resid_post().layer)
    fwd = run_forward(model, problem.batch, record=[name], logits="none")
    return fwd.activations[name]


@dataclass
class _AdapterProblem:
    """The MELBO problem with the source block's MLP hidden activation cached (it does not depend
    on the adapter): the steered residual of k adapters at once."""

    problem: MelboProblem
    hidden: Tensor  # [prompts, pos, d_mlp]
    radius: float

    @property
    def real(self) -> Tensor:
        return self.problem.real[None, ..., None].to(self.hidden.dtype)

    def steered(self, A: Tensor, B: Tensor) -> Tensor:
        h = self.hidden
        delta = self.radius * torch.einsum("ipm,kmr,kdr->kipd", h, like(A, h), like(B, h)) * self.real
        return (self.problem.segment.residual[None] + delta).flatten(0, 1)

    def mean_delta(self, A: Tensor, B: Tensor) -> Tensor:
        """Each adapter's residual contribution averaged over the prompts' real tokens."""
        real = self.real[0].float()
        mean_hidden = (self.hidden.float() * real).sum((0, 1)) / real.sum()
        return self.radius * torch.einsum("m,kmr,kdr->kd", mean_hidden, A, B)


def _start(model: Any, cfg: AdapterConfig, first: int, count: int) -> tuple[Tensor, Tensor]:
    """Random unit-column starts of adapters ``first`` … (each depends only on its seed and index)."""
    d, d_mlp = int(model.cfg.d_model), int(model.cfg.d_mlp)
    gens = [torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + first + j) for j in range(count)]
    factor = lambda rows: master_copy(  # noqa: E731
        normalize_columns(torch.stack([torch.randn(rows, cfg.rank, generator=g, device="cpu") for g in gens])), model
    )
    return factor(d_mlp).requires_grad_(True), factor(d).requires_grad_(True)


def _train_batch(
    model: Any, ap: _AdapterProblem, cfg: AdapterConfig, first: int, count: int, progress: bool
) -> list[AdapterRecord]:
    """Adapters ``first`` … ``first + count − 1``, trained at once: Riemannian AdamW per column."""
    A, B = _start(model, cfg, first, count)
    opt = torch.optim.AdamW([A, B], lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
    history: list[list[float]] = [[] for _ in range(count)]
    started = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"adapters {first}-{first + count - 1}", disable=not progress)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        objective, _ = ap.problem.objective(ap.steered(A, B))
        (-objective.sum()).backward()
        with torch.no_grad():
            A.grad.copy_(column_tangent(A.grad, A))
            B.grad.copy_(column_tangent(B.grad, B))
        opt.step()
        with torch.no_grad():
            A.copy_(normalize_columns(A))
            B.copy_(normalize_columns(B))
        for row, value in zip(history, objective.tolist()):
            row.append(value)
        bar.set_postfix(objective=f"{objective.mean().item():.4g}")
    with torch.no_grad():
        final, _ = ap.problem.objective(ap.steered(A, B))
        mean_delta = ap.mean_delta(A, B)
    seconds = (time.perf_counter() - started) / count
    return [
        AdapterRecord(first + j, to_result(A[j]), to_result(B[j]), history[j], float(final[j]), seconds,
                      to_result(mean_delta[j]))
        for j in range(count)
    ]  # fmt: skip


def train_adapters(
    model: Any,
    prompts: Sequence[PromptLike],
    cfg: AdapterConfig | None = None,
    *,
    previous: Sequence[AdapterRecord] = (),
    on_adapter: Callable[[AdapterRecord], None] | None = None,
    progress: bool = True,
    **settings: Any,
) -> AdapterResult:
    """Learn ``cfg.n_adapters`` rank-``cfg.rank`` MELBO adapters on the MLP output of the block
    the source site follows (``settings``: :class:`AdapterConfig` fields applied on top of ``cfg``),
    ``batch_size`` at a time; ``previous`` (a resumed run's) are kept, ``on_adapter`` sees each new one."""
    cfg = AdapterConfig.build(cfg, **settings).for_model(model)
    cfg.check_model(model)
    problem = MelboProblem.build(
        model, prompts, source=cfg.source, target=cfg.target, p=cfg.p, q=cfg.q, positions=cfg.positions, chat=cfg.chat
    )
    ap = _AdapterProblem(problem, _mlp_hidden(model, problem), cfg.radius)
    records = list(previous)
    while len(records) < cfg.n_adapters:
        count = min(cfg.batch_size, cfg.n_adapters - len(records))
        for record in _train_batch(model, ap, cfg, len(records), count, progress):
            records.append(record)
            if on_adapter is not None:
                on_adapter(record)
    return AdapterResult(
        A=torch.stack([r.A for r in records]),
        B=torch.stack([r.B for r in records]),
        config=cfg,
        losses=[r.losses for r in records],
        objectives=[r.objective for r in records],
        seconds=[r.seconds for r in records],
        texts=problem.texts,
        vectors=torch.stack([r.mean_delta for r in records]),
    )


# --- the registered method --------------------------------------------------------------------


def _as_run(model: Any, cfg: AdapterConfig, records: Sequence[AdapterRecord], texts: Sequence[str]) -> Run:
    d, d_mlp = int(model.cfg.d_model), int(model.cfg.d_mlp)
    stack = lambda xs, shape: torch.stack(xs) if xs else torch.zeros(0, *shape, device="cpu")  # noqa: E731
    tensors = {
        "vectors": stack([r.mean_delta for r in records], (d,)),
        "A": stack([r.A for r in records], (d_mlp, cfg.rank)),
        "B": stack([r.B for r in records], (d, cfg.rank)),
    }
    meta = {
        "hooks": [mlp_out_hook(cfg.block)] * len(records),
        "source_layer": cfg.block,  # the adapted block (what adapter_intervention reads)
        "source": str(cfg.source),
        "target": str(cfg.target),
        "radius": cfg.radius,
        "rank": cfg.rank,
        "objective_positions": cfg.positions,
        "steer_positions": "all",
        "texts": list(texts),
        "per_vector": per_vector_rows(records),
    }
    return Run(tensors, meta)


def _records(run: Run | None) -> list[AdapterRecord]:
    if run is None:
        return []
    t = run.tensors
    return [
        AdapterRecord(r["index"], t["A"][i], t["B"][i], r["losses"], r["objective"], r["seconds"], run.vectors[i])
        for i, r in enumerate(run.meta.get("per_vector", []))
    ]


def _train(model: Any, prompts: Sequence[PromptLike], cfg: AdapterConfig, ckpt: Checkpoints) -> Run:
    cfg = cfg.for_model(model)
    finished = _records(ckpt.previous)
    texts = list(ckpt.previous.meta.get("texts", [])) if ckpt.previous else []

    def checkpoint(record: AdapterRecord) -> None:
        finished.append(record)
        ckpt.save(_as_run(model, cfg, finished, texts))

    result = train_adapters(model, prompts, cfg, previous=list(finished), on_adapter=checkpoint, progress=ckpt.progress)
    return _as_run(model, cfg, finished, result.texts)


def adapter_count(run: Run) -> int:
    if "A" not in run.tensors:
        raise ValueError(f"This {NAME} run has no tensor 'A' in its vectors file.")
    return int(run.tensors["A"].shape[0])


def adapter_intervention(run: Run, index: int, scale: float = 1.0) -> MLPAdapter:
    """Adapter ``index`` of the run: ``MLPAdapter(A[i], B[i], source_layer, radius·scale)`` (its
    effect is linear in the radius)."""
    missing = [k for k in ("A", "B") if k not in run.tensors]
    if missing:
        raise ValueError(f"This {NAME} run has no tensor(s) {missing} in its vectors file.")
    A, B = run.tensors["A"], run.tensors["B"]
    if A.ndim != 3 or B.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[2]:
        raise ValueError(
            f"Adapter tensors have shapes A {tuple(A.shape)}, B {tuple(B.shape)}; expected A [n, d_mlp, r] and B [n, d_model, r]."
        )
    for key in ("source_layer", "radius"):
        if key not in run.meta:
            raise ValueError(f"This {NAME} run's run.json has no {key!r}.")
    check_index(index, int(A.shape[0]), "adapter")
    positions = Positions.parse(run.meta.get("steer_positions", "all"))
    return MLPAdapter(A[index], B[index], int(run.meta["source_layer"]), float(run.meta["radius"]) * scale, positions)


def legacy_config(meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 stored a MelboConfig (``n_vectors`` adapters) plus a top-level ``rank``."""
    old = dict(meta.get("config", {}))
    keep = {
        k: old[k]
        for k in ("radius", "source_layer", "target_layer", "p", "q", "positions", "steps", "lr", "seed", "batch_size")
        if k in old
    }
    return {**keep, "rank": int(meta.get("rank") or 8), "n_adapters": int(old.get("n_vectors", 4))}


METHOD = register_method(
    Method(
        name=NAME,
        config=AdapterConfig,
        train=_train,
        intervention=adapter_intervention,
        count=adapter_count,
        description="MELBO adapters: rank-r perturbations of the source block's MLP output weights",
        unit="adapter",
        legacy_config=legacy_config,
    )
)
