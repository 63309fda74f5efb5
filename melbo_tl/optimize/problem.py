"""The fixed part of a MELBO optimization: prompts, cached residual, unsteered targets.

The vector is added at a residual ``source`` site and the objective reads a later residual
``target`` site (:mod:`melbo_tl.optimize.layer_pair`). Nothing below the source depends
on the vector, so the residual there and the unsteered target Z(0) are computed once; each step
runs only the blocks between the two sites and never the unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from melbo_tl.forward import as_batch
from melbo_tl.optimize.layer_pair import (  # noqa: F401  (re-exported: they used to live here)
    LayerPair,
    LayerPairSettings,
    check_objective_sites,
    default_sites,
)
from melbo_tl.optimize.objective import melbo_objective
from melbo_tl.placement import like
from melbo_tl.prompts import Positions, PromptLike, TokenBatch, prepare_prompts
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.sites import Site, SiteLike


@dataclass
class MelboProblem:
    """Fields: ``source``/``target`` the sites; ``batch`` the tokenized prompts; ``segment`` the
    blocks between them with the residual at the source cached; ``target0`` Z(0) [prompts, pos,
    d_model]; ``select`` the objective's token set I per prompt; ``real`` where the prompts have
    real tokens (the vector is added there)."""

    source: Site
    target: Site
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
        return self.source.hook

    @property
    def start(self) -> int:
        """The first block the vector reaches (the source is the residual entering it)."""
        return self.source.canonical().layer

    @property
    def n_prompts(self) -> int:
        return self.batch.input_ids.shape[0]

    @classmethod
    def build(
        cls,
        model: Any,
        prompts: Sequence[PromptLike],
        *,
        source: SiteLike,
        target: SiteLike,
        p: float,
        q: float,
        positions: Positions | str,
        chat: bool = True,
    ) -> MelboProblem:
        source, target = Site.parse(source, what="source"), Site.parse(target, what="target")
        start, stop = check_objective_sites(model, source, target)
        positions = Positions.parse(positions)
        texts = prepare_prompts(model, prompts, chat=chat)
        batch = as_batch(model, texts)
        for n in batch.lengths.tolist():
            positions.resolve(n)  # raises if the spec selects nothing in some prompt
        segment = ResidualSegment.capture(model, batch, start=start, stop=stop)
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
        """The residual at the source with each vector added at every real token (θ, kept in
        float32, is cast to the model's dtype when added)."""
        k = theta.shape[0]
        base = self.segment.residual.repeat(k, 1, 1)
        steer = like(theta, base).repeat_interleave(self.n_prompts, dim=0)[:, None, :]
        return base + steer * self.real.repeat(k, 1)[..., None].to(base.dtype)
