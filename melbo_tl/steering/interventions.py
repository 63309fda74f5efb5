"""Interventions as plain values that turn into TransformerLens ``(hook_name, fn)`` pairs.

Each intervention knows where it acts (a legacy hook name, validated against the model) and
at which tokens (a :class:`~melbo_tl.prompts.Positions`). Hook functions return a new tensor
rather than editing in place, so gradients flow from a steered activation back to the vector:
the same value is used to optimize a vector, to generate with it and to analyse it.

A vector may be ``[d_model]`` (one vector for the whole batch) or ``[batch, d_model]`` (row i
steered by vector i), which is how many vectors are evaluated in one batched forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jaxtyping import Float
from torch import Tensor

from melbo_tl.prompts import Positions
from melbo_tl.steering.layout import current_layout
from melbo_tl.steering.sites import check_hook, check_layer, d_model, n_layers

HookFn = Callable[[Tensor, Any], Tensor]
HookPair = tuple[str, HookFn]


def _check_width(model: Any, vector: Tensor, what: str) -> None:
    if vector.ndim not in (1, 2) or vector.shape[-1] != d_model(model):
        raise ValueError(
            f"{what} has shape {tuple(vector.shape)}; expected [d_model] or [batch, d_model] with d_model = {d_model(model)}."
        )


def _position_mask(positions: Positions, acts: Tensor) -> Tensor:
    layout = current_layout(acts.shape[0], acts.shape[1], acts.device)
    return positions.mask(layout.token_index, layout.prompt_length).to(acts.dtype)[..., None]


def _rows(vector: Tensor, acts: Tensor) -> Tensor:
    """Broadcast a [d] or [batch, d] vector against [batch, pos, d] activations."""
    if vector.ndim == 1:
        return vector.to(acts.dtype)
    if vector.shape[0] != acts.shape[0]:
        raise ValueError(f"Per-row vectors for {vector.shape[0]} rows, but the batch has {acts.shape[0]} rows.")
    return vector.to(acts.dtype)[:, None, :]


@dataclass
class AddVector:
    """x ← x + scale·v at ``hook`` on the chosen positions (activation addition)."""

    vector: Float[Tensor, "*rows d_model"]
    hook: str
    positions: Positions = field(default_factory=Positions)
    scale: float = 1.0

    def hooks(self, model: Any) -> list[HookPair]:
        check_hook(model, self.hook)
        _check_width(model, self.vector, f"Vector for {self.hook}")

        def add(acts: Tensor, hook: Any) -> Tensor:
            return acts + self.scale * _rows(self.vector, acts) * _position_mask(self.positions, acts)

        return [(self.hook, add)]

    def scaled(self, scale: float) -> AddVector:
        return replace(self, scale=scale)


@dataclass
class ClampVector:
    """Set the component of x along v̂ to ``value`` (clamp steering), on the chosen positions."""

    vector: Float[Tensor, "*rows d_model"]
    hook: str
    value: float
    positions: Positions = field(default_factory=Positions)

    def hooks(self, model: Any) -> list[HookPair]:
        check_hook(model, self.hook)
        _check_width(model, self.vector, f"Clamp direction for {self.hook}")

        def clamp(acts: Tensor, hook: Any) -> Tensor:
            unit = _rows(self.vector / self.vector.norm(dim=-1, keepdim=True), acts)
            along = (acts * unit).sum(-1, keepdim=True)
            return acts + (self.value - along) * unit * _position_mask(self.positions, acts)

        return [(self.hook, clamp)]


def ablation_hook_names(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """Every residual write site: ``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out`` of each layer."""
    chosen = range(n_layers(model)) if layers is None else [check_layer(model, l) for l in layers]
    return [f"blocks.{l}.{s}" for l in chosen for s in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")]


@dataclass
class AblateDirection:
    """x ← x − (x·r̂)r̂ at every residual write site (directional ablation), all positions."""

    direction: Float[Tensor, " d_model"]
    layers: Sequence[int] | None = None  # None: all layers

    def hooks(self, model: Any) -> list[HookPair]:
        _check_width(model, self.direction, "Ablated direction")
        if self.direction.ndim != 1:
            raise ValueError("AblateDirection takes a single [d_model] direction.")
        unit = self.direction / self.direction.norm()

        def ablate(acts: Tensor, hook: Any) -> Tensor:
            u = unit.to(acts.dtype)
            return acts - (acts @ u)[..., None] * u

        return [(name, ablate) for name in ablation_hook_names(model, self.layers)]


@dataclass
class MLPAdapter:
    """Rank-r perturbation of block ``layer``'s MLP output weights: W_out' = W_out + radius·B·Aᵀ.

    Acting on the MLP hidden activation h ([…, d_mlp], the input of the output projection),
    the block's MLP output gains radius·(h·A)·Bᵀ. A is [d_mlp, r], B is [d_model, r].
    """

    A: Float[Tensor, "d_mlp rank"]
    B: Float[Tensor, "d_model rank"]
    layer: int
    radius: float = 1.0
    positions: Positions = field(default_factory=Positions)

    def hooks(self, model: Any) -> list[HookPair]:
        check_layer(model, self.layer)
        hidden_name = check_hook(model, f"blocks.{self.layer}.mlp.hook_post")
        out_name = check_hook(model, f"blocks.{self.layer}.hook_mlp_out")
        d_mlp = int(model.cfg.d_mlp)
        if self.A.shape[0] != d_mlp or self.B.shape[0] != d_model(model) or self.A.shape[1] != self.B.shape[1]:
            raise ValueError(
                f"Adapter shapes A {tuple(self.A.shape)}, B {tuple(self.B.shape)} do not fit this model: "
                f"expected A [d_mlp={d_mlp}, r] and B [d_model={d_model(model)}, r]."
            )
        stash: dict[str, Tensor] = {}

        def keep_hidden(acts: Tensor, hook: Any) -> Tensor:
            stash["h"] = acts
            return acts

        def add_delta(acts: Tensor, hook: Any) -> Tensor:
            h = stash.pop("h")
            delta = self.radius * (h @ self.A.to(h.dtype)) @ self.B.to(h.dtype).T
            return acts + delta * _position_mask(self.positions, acts)

        return [(hidden_name, keep_hidden), (out_name, add_delta)]


Intervention = AddVector | ClampVector | AblateDirection | MLPAdapter


def hooks_for(model: Any, interventions: Sequence[Intervention]) -> list[HookPair]:
    pairs: list[HookPair] = []
    for intervention in interventions:
        pairs.extend(intervention.hooks(model))
    return pairs


@contextlib.contextmanager
def apply(model: Any, *interventions: Intervention) -> Iterator[Any]:
    """Attach the interventions' hooks for the duration of the block; none survive its exit.

    >>> with apply(model, AddVector(v, "blocks.8.hook_resid_pre")):
    ...     logits = model(tokens)
    """
    pairs = hooks_for(model, interventions)
    with model.hooks(fwd_hooks=pairs):
        yield model
