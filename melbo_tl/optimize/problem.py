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

from melbo_tl.generate import prepare_prompts
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.optimize.objective import melbo_objective
from melbo_tl.prompts import Positions, PromptLike, TokenBatch, tokenize
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.sites import check_layer, n_layers, resid_hook


def default_layers(model: Any) -> tuple[int, int]:
    """The reference defaults: source 7, target n_layers − 8."""
    return 7, n_layers(model) - 8


def check_objective_args(model: Any, source: int, target: int, radius: float, p: float, q: float) -> None:
    check_layer(model, source, what="source layer")
    check_layer(model, target, what="target layer")
    if target <= source:
        raise ValueError(
            f"target layer {target} must be after source layer {source} (valid targets: {source + 1}…{n_layers(model) - 1})."
        )
    if not radius > 0:
        raise ValueError(f"radius R must be > 0, got {radius}.")
    if not p > 0 or not q > 0:
        raise ValueError(f"p and q must be > 0, got p={p}, q={q}.")


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
        radius: float,
        positions: Positions | str,
        chat: bool = True,
    ) -> MelboProblem:
        check_objective_args(model, source, target, radius, p, q)
        positions = Positions.parse(positions)
        texts = prepare_prompts(model, prompts, chat=chat)
        batch = tokenize(chat_tokenizer(model), texts)
        for n in batch.lengths.tolist():
            positions.resolve(n)  # raises if the spec selects nothing in some prompt
        device = next(model.parameters()).device
        batch = batch.to(device)
        segment = ResidualSegment.capture(model, batch, start=source + 1, stop=target)
        with torch.no_grad():
            target0 = segment.run(segment.residual)
        select = positions.mask(batch.token_index, batch.lengths)
        return cls(source, target, p, q, positions, texts, batch, segment, target0, select, batch.token_index >= 0)

    def objective(self, steered_residual: Float[Tensor, "rows pos d_model"]) -> tuple[Tensor, Tensor]:
        """Per-vector objective for rows laid out vector-major (row = k·prompts + i).

        Returns (objective [k], Δ [k, prompts, pos, d_model]).
        """
        z = self.segment.run(steered_residual)
        k = z.shape[0] // self.n_prompts
        delta = z - self.target0.repeat(k, 1, 1)
        per_row = melbo_objective(delta, self.select.repeat(k, 1), p=self.p, q=self.q)
        return per_row.view(k, self.n_prompts).sum(1), delta.view(k, self.n_prompts, *delta.shape[1:])

    def add_vectors(self, theta: Float[Tensor, "k d_model"]) -> Float[Tensor, "rows pos d_model"]:
        """The residual entering block s+1 with each vector added at every real token."""
        k = theta.shape[0]
        base = self.segment.residual.repeat(k, 1, 1)
        steer = theta.repeat_interleave(self.n_prompts, dim=0)[:, None, :]
        return base + steer * self.real.repeat(k, 1)[..., None].to(base.dtype)
