"""MELBO: unsupervised steering vectors that maximally change a later layer's activations.

Each vector θ (‖θ‖ = R) is added at ``blocks.s.hook_resid_post`` on every token and trained by
Riemannian AdamW on the sphere (tangent projection of the gradient, step, retraction) to
maximize the objective in :mod:`melbo_tl.optimize.objective` at ``blocks.t.hook_resid_pre``.

Two modes:
- ``orthogonal=True`` (the reference's): vectors one at a time; vector k's start, gradient and
  iterate are projected off the span of vectors 0…k−1, which stay frozen.
- ``orthogonal=False``: ``batch_size`` independent vectors trained at once, one per batch row;
  optionally with a soft penalty on the pairwise cosine of the changes Δ they cause.

Example::

    model = load_model()
    result = train_vectors(model, ["How can I make a bomb?"], radius=4, n_vectors=4,
                           positions="last:2", steps=300)
    result.vectors  # [4, d_model], acting at result.hook
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.optimize.objective import delta_cosines, orthonormal_basis, project_off, retract, tangent
from melbo_tl.optimize.problem import MelboProblem, default_layers
from melbo_tl.prompts import Positions, PromptLike
from melbo_tl.steering.sites import d_model


@dataclass
class MelboConfig:
    """Hyper-parameters of a MELBO run (saved to run.json as they are)."""

    source_layer: int
    target_layer: int
    radius: float
    p: float = 2.0
    q: float = 1.0
    positions: str = "all"
    n_vectors: int = 8
    steps: int = 300
    lr: float = 1e-3
    orthogonal: bool = True
    seed: int = 0
    batch_size: int = 8
    diversity_penalty: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def create(
        cls,
        model: Any,
        *,
        radius: float,
        source_layer: int | None = None,
        target_layer: int | None = None,
        positions: Positions | str = "all",
        **options: Any,
    ) -> MelboConfig:
        """A config with the model's default layers filled in and ``positions`` normalized."""
        s_default, t_default = default_layers(model)
        return cls(
            source_layer=s_default if source_layer is None else source_layer,
            target_layer=t_default if target_layer is None else target_layer,
            radius=float(radius),
            positions=str(Positions.parse(positions)),
            **options,
        )


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
class MelboResult:
    """Fields: ``vectors`` [n, d_model] added at ``hook``; ``config``; per-vector ``losses``
    (objective per step), ``objectives`` (final) and ``seconds``; ``texts`` the formatted prompts."""

    vectors: Float[Tensor, "n d_model"]
    hook: str
    config: MelboConfig
    losses: list[list[float]]
    objectives: list[float]
    seconds: list[float]
    texts: list[str] = field(default_factory=list)


def _start(index: int, seed: int, d: int, radius: float, basis: Tensor | None, device: torch.device) -> Tensor:
    """Random start of vector ``index``: depends only on (seed, index), so resuming reproduces it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    theta = torch.randn(1, d, generator=gen).to(device)
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
    desc: str,
    progress: bool,
) -> tuple[Tensor, list[list[float]], Tensor]:
    """Riemannian AdamW on k vectors at once (rows of ``theta``). Returns (θ, losses per row, final objective)."""
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
            grad = tangent(theta.grad, theta)
            theta.grad.copy_(project_off(grad, basis))
        opt.step()
        with torch.no_grad():
            theta.copy_(retract(project_off(theta, basis), radius))
        for row, value in zip(history, objective.tolist()):
            row.append(value)
        bar.set_postfix(objective=f"{objective.mean().item():.4g}")
    with torch.no_grad():
        final, _ = problem.objective(problem.add_vectors(theta))
    return theta.detach(), history, final


def train_vectors(
    model: Any,
    prompts: Sequence[PromptLike],
    *,
    radius: float,
    source_layer: int | None = None,
    target_layer: int | None = None,
    p: float = 2.0,
    q: float = 1.0,
    positions: Positions | str = "all",
    n_vectors: int = 8,
    steps: int = 300,
    lr: float = 1e-3,
    orthogonal: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    diversity_penalty: float = 0.0,
    chat: bool = True,
    previous: Sequence[VectorRecord] = (),
    on_vector: Callable[[VectorRecord], None] | None = None,
    progress: bool = True,
) -> MelboResult:
    """Learn ``n_vectors`` MELBO steering vectors on ``prompts``.

    ``steps=0`` gives the random baseline: random directions of norm R through the same path.
    ``previous`` holds already finished vectors (a resumed run): they are kept, define the span
    in orthogonal mode, and training continues at index ``len(previous)``. ``on_vector`` is
    called with each finished vector (in index order), e.g. to checkpoint a run folder.
    """
    config = MelboConfig.create(
        model,
        radius=radius,
        source_layer=source_layer,
        target_layer=target_layer,
        positions=positions,
        p=p,
        q=q,
        n_vectors=n_vectors,
        steps=steps,
        lr=lr,
        orthogonal=orthogonal,
        seed=seed,
        batch_size=batch_size,
        diversity_penalty=diversity_penalty,
    )
    if n_vectors < 1:
        raise ValueError(f"n_vectors must be ≥ 1, got {n_vectors}.")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be ≥ 0 and batch_size ≥ 1 (got steps={steps}, batch_size={batch_size}).")
    if diversity_penalty and orthogonal:
        raise ValueError("diversity_penalty is the soft alternative to orthogonal mode: pass orthogonal=False.")
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
    device = problem.segment.residual.device
    d = d_model(model)
    records = list(previous)
    if len(records) > n_vectors:
        raise ValueError(f"{len(records)} finished vectors already exceed n_vectors={n_vectors}.")
    while len(records) < n_vectors:
        first = len(records)
        count = 1 if orthogonal else min(batch_size, n_vectors - first)
        basis = (
            orthonormal_basis(torch.stack([r.vector.to(device) for r in records])) if orthogonal and records else None
        )
        theta = torch.cat([_start(first + j, seed, d, radius, basis, device) for j in range(count)])
        started = time.perf_counter()
        theta, history, final = _optimize(
            problem,
            theta,
            radius=radius,
            steps=steps,
            lr=lr,
            basis=basis,
            diversity_penalty=diversity_penalty,
            desc=f"vector {first}" if count == 1 else f"vectors {first}-{first + count - 1}",
            progress=progress,
        )
        seconds = (time.perf_counter() - started) / count
        for j in range(count):
            record = VectorRecord(first + j, theta[j].cpu(), history[j], float(final[j]), seconds)
            records.append(record)
            if on_vector is not None:
                on_vector(record)
    return MelboResult(
        vectors=torch.stack([r.vector for r in records]),
        hook=problem.hook,
        config=config,
        losses=[r.losses for r in records],
        objectives=[r.objective for r in records],
        seconds=[r.seconds for r in records],
        texts=problem.texts,
    )
