"""The fixed part of a MELBO optimization: prompts, cached residual, unsteered targets.

Convention (recorded with every vector): source layer s means the vector is added to
``blocks.s.hook_resid_post`` (the reference code's bias on block s's MLP output, the same
residual as ``blocks.(s+1).hook_resid_pre``); target layer t reads ``blocks.t.hook_resid_pre``.
Nothing below block s+1 depends on the vector, so the residual entering block s+1 and the
unsteered target Z(0) are computed once; each step runs only blocks s+1…t−1 and never the
unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from melbo_tl.config import require
from melbo_tl.forward import as_batch
from melbo_tl.optimize.objective import melbo_objective
from melbo_tl.placement import like
from melbo_tl.prompts import Positions, PromptLike, TokenBatch, prepare_prompts
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.sites import check_layer, n_layers, resid_hook


def default_layers(model: Any) -> tuple[int, int]:
    """The reference defaults: source 7, target n_layers − 8."""
    return 7, n_layers(model) - 8


def check_objective_args(model: Any, source: int, target: int) -> None:
    """The source and target layers exist and the target comes after the source."""
    check_layer(model, source, what="source layer")
    check_layer(model, target, what="target layer")
    if target <= source:
        raise ValueError(
            f"target layer {target} must be after source layer {source} (valid targets: {source + 1}…{n_layers(model) - 1})."
        )


class LayerPair:
    """For configs with a source layer s (vectors at ``blocks.s.hook_resid_post``) and a target
    layer t (read at ``blocks.t.hook_resid_pre``), either left as None for the reference defaults
    (7, n_layers − 8); mixed into the config dataclass, which declares the two fields."""

    source_layer: int | None
    target_layer: int | None

    def for_model(self, model: Any) -> Any:
        """The config with the default layers filled in where left as None."""
        s, t = default_layers(model)
        return self.replace(  # type: ignore[attr-defined]
            source_layer=s if self.source_layer is None else self.source_layer,
            target_layer=t if self.target_layer is None else self.target_layer,
        )

    def check_model(self, model: Any) -> None:
        cfg = self.for_model(model)
        check_objective_args(model, cfg.source_layer, cfg.target_layer)

    @property
    def hook(self) -> str:
        """Where the vectors act (needs the layers filled in)."""
        if self.source_layer is None:
            raise ValueError("source_layer is not set; call for_model(model) first.")
        return resid_hook(self.source_layer, "post")


class LayerPairSettings(LayerPair):
    """A :class:`LayerPair` trained on the MELBO objective: also ``radius``, ``p``, ``q``,
    ``positions``, ``steps``, ``lr`` and ``batch_size``, validated together."""

    radius: float
    p: float
    q: float
    positions: str
    steps: int
    lr: float
    batch_size: int

    def validate_objective(self, *, auto_radius: bool = False) -> None:
        """Check the objective's settings; with ``auto_radius``, ``radius="auto"`` is allowed (calibrated)."""
        self.positions = str(Positions.parse(self.positions))
        if not (auto_radius and self.radius == "auto"):
            try:
                self.radius = float(self.radius)
            except (TypeError, ValueError):
                raise ValueError(
                    f"radius R must be a number > 0{' or auto' if auto_radius else ''}, got {self.radius!r}."
                ) from None
            require(self.radius > 0, f"radius R must be > 0, got {self.radius}.")
        require(self.p > 0 and self.q > 0, f"p and q must be > 0, got p={self.p}, q={self.q}.")
        require(self.steps >= 0, f"steps must be ≥ 0 (0 = random baseline), got {self.steps}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}.")


@dataclass
class MelboProblem:
    """Fields: ``batch`` the tokenized prompts; ``segment`` blocks s+1…t−1 with the residual
    entering s+1 cached; ``target0`` Z(0) [prompts, pos, d_model]; ``select`` the objective's token
    set I per prompt; ``real`` where the prompts have real tokens (the vector is added there)."""

    source: int
    target: int
    p: float
    q: float
    positions: Positions
    texts: list[str]
    batch: TokenBatch
    segment: ResidualSegment
    target0: Float[Tensor, "prompts pos d_model"]
    select: Bool[Tensor, "prompts pos"]
    real: Bool[Tensor, "prompts pos"]

    @property
    def hook(self) -> str:
        return resid_hook(self.source, "post")

    @property
    def n_prompts(self) -> int:
        return self.batch.input_ids.shape[0]

    @classmethod
    def build(
        cls,
        model: Any,
        prompts: Sequence[PromptLike],
        *,
        source: int,
        target: int,
        p: float,
        q: float,
        positions: Positions | str,
        chat: bool = True,
    ) -> MelboProblem:
        check_objective_args(model, source, target)
        positions = Positions.parse(positions)
        texts = prepare_prompts(model, prompts, chat=chat)
        batch = as_batch(model, texts)
        for n in batch.lengths.tolist():
            positions.resolve(n)  # raises if the spec selects nothing in some prompt
        segment = ResidualSegment.capture(model, batch, start=source + 1, stop=target)
        with torch.no_grad():
            target0 = segment.run(segment.residual).float()
        select = positions.mask(batch.token_index, batch.lengths)
        return cls(source, target, p, q, positions, texts, batch, segment, target0, select, batch.token_index >= 0)

    def objective(self, steered_residual: Float[Tensor, "rows pos d_model"]) -> tuple[Tensor, Tensor]:
        """Per-vector objective for rows laid out vector-major (row = k·prompts + i).

        Returns (objective [k], Δ [k, prompts, pos, d_model]).
        """
        z = self.segment.run(steered_residual)
        k = z.shape[0] // self.n_prompts
        delta = z.float() - self.target0.repeat(k, 1, 1)  # float32 whatever the model computes in
        per_row = melbo_objective(delta, self.select.repeat(k, 1), p=self.p, q=self.q)
        return per_row.view(k, self.n_prompts).sum(1), delta.view(k, self.n_prompts, *delta.shape[1:])

    def add_vectors(self, theta: Float[Tensor, "k d_model"]) -> Float[Tensor, "rows pos d_model"]:
        """The residual entering block s+1 with each vector added at every real token (θ, kept in
        float32, is cast to the model's dtype when added)."""
        k = theta.shape[0]
        base = self.segment.residual.repeat(k, 1, 1)
        steer = like(theta, base).repeat_interleave(self.n_prompts, dim=0)[:, None, :]
        return base + steer * self.real.repeat(k, 1)[..., None].to(base.dtype)
