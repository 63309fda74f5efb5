"""What one batch row is steered by, and the hooks that steer a whole batch of such rows.

A request's steering resolves (:mod:`melbo_tl.serve.spec`) into a :class:`RowSteering`: vectors
to add at hook sites, each on the prompt, on the generated tokens or on both (or the last k
prompt tokens), and directions to ablate. The engine runs rows of many requests in one forward
pass; :func:`batch_interventions` turns the rows' steerings into interventions whose tensors
have one row per batch row, zero where a row is not steered. Adding a zero vector or ablating a
zero direction leaves an activation bit-identical, so a row only ever sees its own steering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.placement import OnActivations
from melbo_tl.prompts import Positions
from melbo_tl.steering.interventions import HookPair, ablation_hook_names
from melbo_tl.steering.layout import current_layout
from melbo_tl.steering.sites import check_hook

# Where an added vector acts: every real token, the prompt, the generated tokens, or last:k.
WHERE_ALL, WHERE_PROMPT, WHERE_GENERATION = "all", "prompt", "generation"


def parse_where(spec: str) -> str:
    """``all`` (alias ``both``) | ``prompt`` | ``generation`` | ``last:K``, normalised; ValueError otherwise."""
    s = str(spec).strip()
    if s == "both":
        return WHERE_ALL
    if s in (WHERE_ALL, WHERE_PROMPT, WHERE_GENERATION):
        return s
    if s.startswith("last:"):
        return str(Positions.parse(s))
    raise ValueError(f"positions {spec!r} is not one of 'prompt', 'generation', 'both' (or 'all'), 'last:K'.")


def where_mask(where: str, token_index: Tensor, prompt_length: Tensor) -> Tensor:
    """[batch, pos] bool: the columns ``where`` names (never padding)."""
    if where == WHERE_GENERATION:
        return (token_index >= 0) & (token_index >= prompt_length.to(token_index.device)[:, None])
    return Positions.parse(where).mask(token_index, prompt_length)


@dataclass(frozen=True)
class Addition:
    """Add ``vector`` (already scaled) at hook ``site`` on the tokens ``where`` names."""

    site: str
    vector: Float[Tensor, " d_model"]
    where: str = WHERE_ALL


@dataclass(frozen=True)
class Ablation:
    """Remove the component along unit ``direction`` at every residual write of ``layers`` (None: all)."""

    direction: Float[Tensor, " d_model"]
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RowSteering:
    """Everything that steers one batch row (empty: unsteered)."""

    additions: tuple[Addition, ...] = ()
    ablations: tuple[Ablation, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.additions and not self.ablations


UNSTEERED = RowSteering()


@dataclass
class RowAdd:
    """x ← x + v_row at ``hook`` on the columns ``where`` names, v_row one row of ``vectors``."""

    vectors: Float[Tensor, "batch d_model"]
    hook: str
    where: str = WHERE_ALL

    def hooks(self, model: Any) -> list[HookPair]:
        check_hook(model, self.hook)
        placed = OnActivations(self.vectors)

        def add(acts: Tensor, hook: Any) -> Tensor:
            layout = current_layout(acts.shape[0], acts.shape[1], acts.device)
            mask = where_mask(self.where, layout.token_index, layout.prompt_length).to(acts.dtype)[..., None]
            return acts + placed.like(acts)[:, None, :] * mask

        return [(self.hook, add)]


@dataclass
class RowAblate:
    """x ← x − (x·u_row)u_row at every residual write of ``layers``; u_row unit or zero."""

    directions: Float[Tensor, "batch d_model"]
    layers: tuple[int, ...] | None = None

    def hooks(self, model: Any) -> list[HookPair]:
        placed = OnActivations(self.directions)

        def ablate(acts: Tensor, hook: Any) -> Tensor:
            u = placed.like(acts)[:, None, :]
            return acts - (acts * u).sum(-1, keepdim=True) * u

        return [(name, ablate) for name in ablation_hook_names(model, self.layers)]


def batch_interventions(steerings: Sequence[RowSteering], d_model: int) -> list[Any]:
    """Interventions that steer batch row i by ``steerings[i]``: ablations first, then additions.

    One :class:`RowAblate` per (ablation slot, layers) and one :class:`RowAdd` per (site, where);
    a row's vectors for the same (site, where) are summed; rows without one get zeros.
    """
    n = len(steerings)
    ablations: dict[tuple[int, tuple[int, ...] | None], Tensor] = {}
    for i, steering in enumerate(steerings):
        for slot, ab in enumerate(steering.ablations):
            key = (slot, ab.layers)
            if key not in ablations:
                ablations[key] = torch.zeros(n, d_model, device="cpu")
            ablations[key][i] = ab.direction.float()
    additions: dict[tuple[str, str], Tensor] = {}
    for i, steering in enumerate(steerings):
        for add in steering.additions:
            key = (add.site, add.where)
            if key not in additions:
                additions[key] = torch.zeros(n, d_model, device="cpu")
            additions[key][i] += add.vector.float()
    out: list[Any] = [RowAblate(dirs, layers) for (_, layers), dirs in ablations.items()]
    out += [RowAdd(vectors, site, where) for (site, where), vectors in additions.items()]
    return out
