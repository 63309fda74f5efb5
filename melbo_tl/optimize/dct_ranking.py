"""Orders of DCT factors: which vector a reader meets first.

- ``importance``: b_l = ⟨u_l, Δ(R·v_l)⟩, the size of each factor's effect at the target layer
  (with u_l = Δ/‖Δ‖ it is ‖Δ(R·v_l)‖: the most explosive factors first);
- ``alpha`` / ``alpha2``: the weights α = K⁻¹b of the exponential model
  (:func:`~melbo_tl.optimize.dct_steps.importance_weights`), by α or by α² (the reference code's
  order: a large negative weight ranks high too);
- ``behaviours``: coherent, changed, distinct behaviours first, by a short greedy completion of
  each vector (:mod:`melbo_tl.optimize.dct_screen`), importance breaking ties;
- ``"A:B"``: a target direction read through the rest of the model, the mean of
  logit(A) − logit(B) at the last position with R·v_l added (e.g. ``"Sure:I'm sorry"``).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.forward import readout
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import like, to_result
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.sites import n_layers

BEHAVIOURS = "behaviours"  # screened: see melbo_tl.optimize.dct_screen


def phrase_token(tokenizer: Any, phrase: str) -> int:
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"rank_by phrase {phrase!r} encodes to no token.")
    return int(ids[0])


@torch.no_grad()
def target_scores(
    model: Any, problem: MelboProblem, vectors: Float[Tensor, "f d"], rank_by: str, *, chunk: int = 64
) -> Float[Tensor, " f"]:
    """Mean over prompts of logit(A) − logit(B) at the last position with each vector added at the
    source (``rank_by`` = "A:B"), reading through every block after the source."""
    tok = chat_tokenizer(model)
    a, b = (phrase_token(tok, phrase) for phrase in rank_by.split(":"))
    segment = ResidualSegment.capture(model, problem.batch, start=problem.start, stop=n_layers(model))
    real = problem.real[..., None].to(segment.residual.dtype)
    scores = []
    for i in range(0, len(vectors), chunk):
        rows = vectors[i : i + chunk]
        k = len(rows)
        base = segment.residual.repeat(k, 1, 1)
        steer = like(rows, base).repeat_interleave(problem.n_prompts, dim=0)[:, None, :]
        final = segment.run(base + steer * real.repeat(k, 1, 1))
        logits = readout(model, final[:, -1, :]).float()
        scores.append((logits[:, a] - logits[:, b]).view(k, problem.n_prompts).mean(1))
    return to_result(torch.cat(scores))


def rank_key(rank_by: str, importance: Tensor, alpha: Tensor, scores: Tensor | None = None) -> Float[Tensor, " f"]:
    """The key sorted descending for ``rank_by`` (``scores``: the "A:B" target scores)."""
    if rank_by == "importance":
        return importance
    if rank_by == "alpha":
        return alpha
    if rank_by == "alpha2":
        return alpha.pow(2)
    if scores is None:
        raise ValueError(f"rank_by {rank_by!r} needs target scores.")
    return scores
