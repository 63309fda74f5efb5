"""Interventions as plain values that turn into TransformerLens ``(hook_name, fn)`` pairs.

An intervention is anything with a ``hooks(model)`` method (the :class:`Intervention`
protocol): given the model, it validates where it acts and returns ``(hook_name, fn)`` pairs,
with ``fn(acts, hook)`` returning the new activation. Nothing else in melbo_tl needs to know a
new kind: generation, evaluation, analysis and run folders only ever call ``hooks(model)``.

``hooks()`` is called once per forward pass or generate (so per-call state, e.g. a cached cast
of the vector, lives in the closures it returns). Hook functions return a new tensor rather than
editing in place, so gradients flow from a steered activation back to the vector: the same value
is used to optimize a vector, to generate with it and to analyse it. Tensors an intervention
carries may be on any device and in any float dtype: they are cast to the activations'
(:mod:`melbo_tl.placement`).

A vector may be ``[d_model]`` (one vector for the whole batch) or ``[batch, d_model]`` (row i
steered by vector i), which is how many vectors are evaluated in one batched forward pass.
Interventions with per-row tensors also implement :class:`PerRow`, so a batch can be split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from melbo_tl.placement import OnActivations
from melbo_tl.prompts import Positions
from melbo_tl.steering.layout import current_layout
from melbo_tl.steering.sites import (
    Site,
    attn_out_hook,
    check_hook,
    check_layer,
    d_model,
    hook_of,
    mlp_hidden_hook,
    mlp_out_hook,
    n_layers,
    resid_hook,
)

HookFn = Callable[[Tensor, Any], Tensor]
HookPair = tuple[str, HookFn]


@runtime_checkable
class Intervention(Protocol):
    """Anything that steers a forward pass through TransformerLens hook points.

    ``hooks(model)`` checks the intervention fits ``model`` (raising ``ValueError`` naming what
    would be valid) and returns the ``(hook_name, fn)`` pairs to attach, ``fn(acts, hook)`` →
    new ``acts``. Inside ``fn``, :func:`~melbo_tl.steering.layout.current_layout` tells which
    real token each column holds (padding, prompt vs generated), and ``placement.like`` casts a
    carried tensor to the activations' device and dtype.
    """

    def hooks(self, model: Any) -> list[HookPair]: ...


@runtime_checkable
class PerRow(Protocol):
    """An intervention whose tensors may differ per batch row (``n_rows`` None: shared by all)."""

    @property
    def n_rows(self) -> int | None: ...

    def rows(self, start: int, stop: int) -> Any: ...


def _check_width(model: Any, vector: Tensor, what: str) -> None:
    if vector.ndim not in (1, 2) or vector.shape[-1] != d_model(model):
        raise ValueError(
            f"{what} has shape {tuple(vector.shape)}; expected [d_model] or [batch, d_model] with d_model = {d_model(model)}."
        )


def _position_mask(positions: Positions, acts: Tensor) -> Tensor:
    layout = current_layout(acts.shape[0], acts.shape[1], acts.device)
    return positions.mask(layout.token_index, layout.prompt_length).to(acts.dtype)[..., None]


def _rows(placed: OnActivations, acts: Tensor) -> Tensor:
    """Broadcast a [d] or [batch, d] vector against [batch, pos, d] activations."""
    vector = placed.like(acts)
    if vector.ndim == 1:
        return vector
    if vector.shape[0] != acts.shape[0]:
        raise ValueError(f"Per-row vectors for {vector.shape[0]} rows, but the batch has {acts.shape[0]} rows.")
    return vector[:, None, :]


class _VectorRows:
    """Row handling and the site shared by the vector interventions (``hook`` may be given as a
    :class:`~melbo_tl.steering.sites.Site` or anything :meth:`Site.parse` reads; it is kept as the
    hook name TransformerLens attaches to)."""

    vector: Tensor
    hook: str

    def __post_init__(self) -> None:
        self.hook = hook_of(self.hook)

    @property
    def site(self) -> Site:
        """Where the vector acts."""
        return Site.parse(self.hook)

    @property
    def n_rows(self) -> int | None:
        return int(self.vector.shape[0]) if self.vector.ndim == 2 else None

    def rows(self, start: int, stop: int) -> Any:
        return self if self.vector.ndim == 1 else replace(self, vector=self.vector[start:stop])  # type: ignore[type-var]


@dataclass
class AddVector(_VectorRows):
    """x ← x + scale·v at ``hook`` (a site or hook name) on the chosen positions (activation addition)."""

    vector: Float[Tensor, "*rows d_model"]
    hook: str
    positions: Positions = field(default_factory=Positions)
    scale: float = 1.0

    def hooks(self, model: Any) -> list[HookPair]:
        check_hook(model, self.hook)
        _check_width(model, self.vector, f"Vector for {self.hook}")
        placed = OnActivations(self.vector)

        def add(acts: Tensor, hook: Any) -> Tensor:
            return acts + self.scale * _rows(placed, acts) * _position_mask(self.positions, acts)

        return [(self.hook, add)]

    def scaled(self, scale: float) -> AddVector:
        return replace(self, scale=scale)

    def describe(self) -> str:
        norm = float(self.vector.float().norm())
        return f"add vector (norm {norm:.3g}) × {self.scale:g} at {self.hook}, positions {self.positions}"


@dataclass
class ClampVector(_VectorRows):
    """Set the component of x along v̂ to ``value`` (clamp steering), on the chosen positions."""

    vector: Float[Tensor, "*rows d_model"]
    hook: str
    value: float
    positions: Positions = field(default_factory=Positions)

    def hooks(self, model: Any) -> list[HookPair]:
        check_hook(model, self.hook)
        _check_width(model, self.vector, f"Clamp direction for {self.hook}")
        placed = OnActivations(self.vector / self.vector.norm(dim=-1, keepdim=True))

        def clamp(acts: Tensor, hook: Any) -> Tensor:
            unit = _rows(placed, acts)
            along = (acts * unit).sum(-1, keepdim=True)
            return acts + (self.value - along) * unit * _position_mask(self.positions, acts)

        return [(self.hook, clamp)]

    def describe(self) -> str:
        return f"clamp the component along a vector to {self.value:g} at {self.hook}, positions {self.positions}"


def ablation_hook_names(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """Every residual write site: ``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out`` of each layer."""
    chosen = range(n_layers(model)) if layers is None else [check_layer(model, l) for l in layers]
    return [name for l in chosen for name in (resid_hook(l), attn_out_hook(l), mlp_out_hook(l))]


@dataclass
class AblateDirection:
    """x ← x − (x·r̂)r̂ at every residual write site (directional ablation), all positions."""

    direction: Float[Tensor, " d_model"]
    layers: Sequence[int] | None = None  # None: all layers

    def hooks(self, model: Any) -> list[HookPair]:
        _check_width(model, self.direction, "Ablated direction")
        if self.direction.ndim != 1:
            raise ValueError("AblateDirection takes a single [d_model] direction.")
        placed = OnActivations(self.direction / self.direction.norm())

        def ablate(acts: Tensor, hook: Any) -> Tensor:
            u = placed.like(acts)
            return acts - (acts @ u)[..., None] * u

        return [(name, ablate) for name in ablation_hook_names(model, self.layers)]

    def describe(self) -> str:
        where = "all layers" if self.layers is None else f"layers {list(self.layers)}"
        return f"ablate a direction at every residual write, {where}"


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
        hidden_name = check_hook(model, mlp_hidden_hook(self.layer))
        out_name = check_hook(model, mlp_out_hook(self.layer))
        d_mlp = int(model.cfg.d_mlp)
        if self.A.shape[0] != d_mlp or self.B.shape[0] != d_model(model) or self.A.shape[1] != self.B.shape[1]:
            raise ValueError(
                f"Adapter shapes A {tuple(self.A.shape)}, B {tuple(self.B.shape)} do not fit this model: "
                f"expected A [d_mlp={d_mlp}, r] and B [d_model={d_model(model)}, r]."
            )
        A, B = OnActivations(self.A), OnActivations(self.B)
        stash: dict[str, Tensor] = {}

        def keep_hidden(acts: Tensor, hook: Any) -> Tensor:
            stash["h"] = acts
            return acts

        def add_delta(acts: Tensor, hook: Any) -> Tensor:
            h = stash.pop("h")
            delta = self.radius * (h @ A.like(h)) @ B.like(h).T
            return acts + delta * _position_mask(self.positions, acts)

        return [(hidden_name, keep_hidden), (out_name, add_delta)]

    @property
    def site(self) -> Site:
        """Where the adapter writes: the MLP output of its block."""
        return Site(self.layer, "mlp_out")

    def describe(self) -> str:
        return f"rank-{self.A.shape[1]} MLP adapter at block {self.layer}, radius {self.radius:g}, positions {self.positions}"


def describe(intervention: Intervention) -> str:
    """A one-line human description (``describe()`` where the intervention has one)."""
    text = getattr(intervention, "describe", None)
    return text() if callable(text) else repr(intervention)[:200]


def hooks_for(model: Any, interventions: Sequence[Intervention]) -> list[HookPair]:
    pairs: list[HookPair] = []
    for intervention in interventions:
        if not callable(getattr(intervention, "hooks", None)):
            raise TypeError(
                f"{type(intervention).__name__} is not an intervention: it needs a hooks(model) method "
                f"returning (hook_name, fn) pairs (see melbo_tl.steering.Intervention)."
            )
        pairs.extend(intervention.hooks(model))
    return pairs


@contextlib.contextmanager
def apply(model: Any, *interventions: Intervention) -> Iterator[Any]:
    """Attach the interventions' hooks for the duration of the block; none survive its exit.

    >>> with apply(model, AddVector(v, Site(8))):
    ...     logits = model(tokens)
    """
    pairs = hooks_for(model, interventions)
    with model.hooks(fwd_hooks=pairs):
        yield model
