"""MELBO adapters: rank-r perturbations of the source block's MLP output weights.

W_out' = W_out + R·B·Aᵀ with every column of A [d_mlp, r] and B [d_model, r] on the unit
sphere (tangent projection per column, renormalization after each step). The change to the
residual after block s is R·(h·A)·Bᵀ, where h is that block's MLP hidden activation — which
does not depend on the adapter, so it is cached once like the residual. Same objective as
steering vectors; adapters are trained independently, ``batch_size`` at a time.
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

from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.optimize.objective import column_tangent, normalize_columns
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.prompts import Positions, PromptLike
from melbo_tl.steering.interventions import MLPAdapter


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
class AdapterResult:
    """Fields: ``A`` [n, d_mlp, r], ``B`` [n, d_model, r] (unit columns), applied with
    :meth:`intervention`; ``config`` (``radius`` is R, ``source_layer`` the adapted block);
    per-adapter ``losses``, ``objectives``, ``seconds``."""

    A: Float[Tensor, "n d_mlp rank"]
    B: Float[Tensor, "n d_model rank"]
    config: MelboConfig
    rank: int
    losses: list[list[float]]
    objectives: list[float]
    seconds: list[float]
    texts: list[str]

    def intervention(self, index: int) -> MLPAdapter:
        return MLPAdapter(self.A[index], self.B[index], self.config.source_layer, self.config.radius)


def _mlp_hidden(model: Any, problem: MelboProblem) -> Tensor:
    name = f"blocks.{problem.source}.mlp.hook_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(
            problem.batch.input_ids,
            attention_mask=problem.batch.attention_mask,
            names_filter=lambda n: n == name,
            stop_at_layer=problem.source + 1,
        )
    return cache[name]


def train_adapters(
    model: Any,
    prompts: Sequence[PromptLike],
    *,
    radius: float,
    rank: int,
    source_layer: int | None = None,
    target_layer: int | None = None,
    p: float = 2.0,
    q: float = 1.0,
    positions: Positions | str = "all",
    n_adapters: int = 4,
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 4,
    chat: bool = True,
    previous: Sequence[AdapterRecord] = (),
    on_adapter: Callable[[AdapterRecord], None] | None = None,
    progress: bool = True,
) -> AdapterResult:
    """Learn ``n_adapters`` rank-``rank`` MELBO adapters on block ``source_layer``'s MLP output."""
    config = MelboConfig.create(
        model,
        radius=radius,
        source_layer=source_layer,
        target_layer=target_layer,
        positions=positions,
        p=p,
        q=q,
        n_vectors=n_adapters,
        steps=steps,
        lr=lr,
        orthogonal=False,
        seed=seed,
        batch_size=batch_size,
    )
    d_mlp = int(model.cfg.d_mlp)
    if not 1 <= rank <= d_mlp:
        raise ValueError(f"rank must be in 1…{d_mlp} (d_mlp), got {rank}.")
    if n_adapters < 1 or steps < 0:
        raise ValueError(f"n_adapters must be ≥ 1 and steps ≥ 0 (got {n_adapters}, {steps}).")
    problem = MelboProblem.build(
        model,
        prompts,
        source=config.source_layer,
        target=config.target_layer,
        p=p,
        q=q,
        radius=radius,
        positions=positions,
        chat=chat,
    )
    hidden = _mlp_hidden(model, problem)  # [prompts, pos, d_mlp]
    d = int(model.cfg.d_model)
    real = problem.real[None, ..., None].to(hidden.dtype)

    def steered(A: Tensor, B: Tensor) -> Tensor:
        delta = radius * torch.einsum("ipm,kmr,kdr->kipd", hidden, A, B) * real
        return (problem.segment.residual[None] + delta).flatten(0, 1)

    records = list(previous)
    while len(records) < n_adapters:
        first = len(records)
        count = min(batch_size, n_adapters - first)
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + first + j) for j in range(count)]
        A = normalize_columns(torch.stack([torch.randn(d_mlp, rank, generator=g) for g in gens])).to(hidden.device)
        B = normalize_columns(torch.stack([torch.randn(d, rank, generator=g) for g in gens])).to(hidden.device)
        A.requires_grad_(True)
        B.requires_grad_(True)
        opt = torch.optim.AdamW([A, B], lr=lr, betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
        history: list[list[float]] = [[] for _ in range(count)]
        started = time.perf_counter()
        bar = tqdm(range(steps), desc=f"adapters {first}-{first + count - 1}", disable=not progress)
        for _ in bar:
            opt.zero_grad(set_to_none=True)
            objective, _ = problem.objective(steered(A, B))
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
            final, _ = problem.objective(steered(A, B))
            mean_hidden = (hidden * real[0]).sum((0, 1)) / real.sum()
            mean_delta = radius * torch.einsum("m,kmr,kdr->kd", mean_hidden, A, B)
        seconds = (time.perf_counter() - started) / count
        for j in range(count):
            record = AdapterRecord(
                first + j,
                A[j].detach().cpu(),
                B[j].detach().cpu(),
                history[j],
                float(final[j]),
                seconds,
                mean_delta[j].cpu(),
            )
            records.append(record)
            if on_adapter is not None:
                on_adapter(record)
    return AdapterResult(
        A=torch.stack([r.A for r in records]),
        B=torch.stack([r.B for r in records]),
        config=config,
        rank=rank,
        losses=[r.losses for r in records],
        objectives=[r.objective for r in records],
        seconds=[r.seconds for r in records],
        texts=problem.texts,
    )
