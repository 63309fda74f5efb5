"""Mediation: does a learned vector bypass refusal *through* the refusal direction r̂?

A vector could lower refusal by writing −r̂ (then it is a rediscovered refusal direction) or by
another route. Each condition below changes one thing and reads the refusal log-odds of the
next token (and, where asked, the substring-refusal rate of greedy completions):

* ``steered, r̂ ablated``: r̂ removed from every residual write at every layer (Arditi et al.'s
  directional ablation). Ablation alone already lowers refusal, so compare with ``r̂ ablated``.
* ``steered, r̂ projected out of v``: the vector minus its component along r̂ at its own site.
* ``steered, r̂ restored`` (log-odds only): the steered run with the r̂-coordinate of every
  residual stream put back to its unsteered value, at every layer. If the effect vanishes,
  it was carried by r̂; if it stays, the vector works around r̂.

Sweeps: ablating r̂ at one layer at a time under steering, and scaling the vector (negative
scales included).

>>> med = mediation(model, prompts, result.intervention(0), r_hat, site_direction=r_hat_at_site)
>>> med.summary["fraction_carried_by_r"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.evaluate.refusal import is_refusal, refusal_log_odds
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.forward import run_forward
from melbo_tl.generate import generate
from melbo_tl.placement import OnActivations, like
from melbo_tl.prompts import PromptLike, prepare_prompts
from melbo_tl.steering.interventions import AblateDirection, AddVector, HookPair
from melbo_tl.steering.sites import n_layers, resid_hook

UNSTEERED, STEERED, ABLATED, STEERED_ABLATED = "unsteered", "steered", "r̂ ablated", "steered, r̂ ablated"
PROJECTED, RESTORED = "steered, r̂ projected out of v", "steered, r̂ restored"


@dataclass
class RestoreCoordinate:
    """Set x·r̂ back to given per-token values at every ``hook_resid_pre`` and the final residual.

    ``values`` maps hook name → ``[batch, pos]`` coordinates from an unsteered run (see
    :func:`unsteered_coordinates`); valid only in forward passes over that same batch, rows in the
    same order (one batch: ``refusal_log_odds(…, batch_size=len(texts))``).
    """

    direction: Float[Tensor, " d_model"]
    values: dict[str, Tensor]

    def hooks(self, model: Any) -> list[HookPair]:
        placed = OnActivations(self.direction / self.direction.norm())

        def make(name: str) -> Any:
            def restore(acts: Tensor, hook: Any) -> Tensor:
                u = placed.like(acts)
                return acts + (like(self.values[name], acts) - acts @ u)[..., None] * u

            return restore

        return [(name, make(name)) for name in self.values]


def _coordinate_hooks(model: Any) -> list[str]:
    return [*(resid_hook(layer) for layer in range(n_layers(model))), resid_hook(n_layers(model) - 1, "post")]


@torch.no_grad()
def unsteered_coordinates(
    model: Any, prompts: Sequence[PromptLike], direction: Tensor, *, chat: bool = True
) -> dict[str, Tensor]:
    """x·r̂ at every residual hook of the unsteered run, ``{hook: [batch, pos]}``."""
    texts = prepare_prompts(model, prompts, chat=chat)
    unit = direction.float() / direction.float().norm()
    hooks = _coordinate_hooks(model)
    fwd = run_forward(model, list(texts), record=hooks, logits="none")
    return {name: fwd.activations[name].float() @ like(unit, fwd.activations[name].float()) for name in hooks}


@dataclass
class Condition:
    """One condition: mean refusal log-odds (and per prompt); refusal rate of completions if generated."""

    name: str
    log_odds: float
    log_odds_per_prompt: list[float]
    refusal: dict[str, Any] | None = None
    examples: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return len(self.log_odds_per_prompt)


@dataclass
class Mediation:
    """The mediation conditions, the sweeps, and the effects they imply.

    Fields:
        conditions: every :class:`Condition`, by name.
        summary: ``effect`` (steered − unsteered log-odds), ``effect_with_r_ablated`` (steered,
            ablated − ablated), ``effect_projected`` (v with r̂ projected out − unsteered),
            ``effect_restored`` (r̂-coordinate restored − unsteered), ``fraction_carried_by_r``
            (1 − effect_restored/effect), ``cos_v_r`` (cosine of v and r̂ at v's site).
        layer_sweep: ``{"layers": […], "log_odds": […]}`` log-odds under steering with r̂ ablated
            at one layer only.
        scale_sweep: ``{"scales": […], "log_odds": […]}`` log-odds against the vector's multiplier.
        n_prompts: how many prompts.
    """

    conditions: dict[str, Condition]
    summary: dict[str, float]
    layer_sweep: dict[str, list[float]]
    scale_sweep: dict[str, list[float]]
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_out(vector: Float[Tensor, " d_model"], direction: Float[Tensor, " d_model"]) -> Float[Tensor, " d_model"]:
    """``vector`` minus its component along ``direction``."""
    unit = direction.to(vector.dtype) / direction.to(vector.dtype).norm()
    return vector - (vector @ unit) * unit


def _condition(
    model: Any, name: str, texts: Sequence[str], interventions: Sequence[Any], max_new_tokens: int
) -> Condition:
    lo = refusal_log_odds(model, texts, interventions, chat=False, batch_size=len(texts))
    refusal, examples = None, []
    if max_new_tokens > 0:
        completions = generate(model, list(texts), list(interventions), max_new_tokens=max_new_tokens, chat=False)
        flags = [is_refusal(c.text) for c in completions]
        refusal = rate_with_ci(sum(flags), len(flags)).to_dict()
        examples = [c.text for c in completions[:3]]
    return Condition(name, float(lo.mean()), lo.tolist(), refusal, examples)


def mediation(
    model: Any,
    prompts: Sequence[PromptLike],
    steer: AddVector,
    direction: Float[Tensor, " d_model"],
    *,
    chat: bool = True,
    site_direction: Float[Tensor, " d_model"] | None = None,
    scales: Sequence[float] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
    sweep_layers: Sequence[int] | None = None,
    max_new_tokens: int = 32,
    baseline: dict[str, Condition] | None = None,
) -> Mediation:
    """Run every mediation condition of ``steer`` against refusal direction ``direction``.

    ``prompts`` are user messages (``chat=False``: texts used as they are). ``steer`` is one vector
    at its site (e.g. ``result.intervention(i)``). ``site_direction`` is r̂ as read at the steer's
    own site (for projecting it out of v; default ``direction``). ``max_new_tokens=0`` skips
    generation (log-odds only). ``sweep_layers`` limits the one-layer ablation sweep (default:
    every layer). ``baseline``: the steer-free conditions from :func:`baseline_conditions` with the
    same texts, direction and length, to share them between several vectors.
    """
    texts = prepare_prompts(model, prompts, chat=chat)
    if not isinstance(steer, AddVector) or steer.vector.ndim != 1:
        raise ValueError(f"mediation takes one AddVector with a [d_model] vector, got {type(steer).__name__}.")
    if direction.ndim != 1 or direction.shape[0] != steer.vector.shape[0]:
        raise ValueError(f"direction has shape {tuple(direction.shape)}; expected [{steer.vector.shape[0]}].")
    at_site = direction if site_direction is None else site_direction
    ablate = AblateDirection(direction)
    projected = AddVector(project_out(steer.vector, at_site), steer.hook, steer.positions, steer.scale)
    conds = (
        dict(baseline)
        if baseline is not None
        else baseline_conditions(model, texts, direction, chat=False, max_new_tokens=max_new_tokens)
    )
    if set(conds) != {UNSTEERED, ABLATED} or conds[UNSTEERED].n_prompts != len(texts):
        raise ValueError(
            f"baseline must hold the {UNSTEERED!r} and {ABLATED!r} conditions of these {len(texts)} prompts."
        )
    for name, ivs in ((STEERED, [steer]), (STEERED_ABLATED, [steer, ablate]), (PROJECTED, [projected])):
        conds[name] = _condition(model, name, texts, ivs, max_new_tokens)
    conds = {k: conds[k] for k in (UNSTEERED, STEERED, ABLATED, STEERED_ABLATED, PROJECTED)}
    restore = RestoreCoordinate(direction, unsteered_coordinates(model, texts, direction, chat=False))
    conds[RESTORED] = _condition(model, RESTORED, texts, [steer, restore], 0)
    base = conds[UNSTEERED].log_odds
    effect = conds[STEERED].log_odds - base
    restored = conds[RESTORED].log_odds - base
    summary = {
        "effect": effect,
        "effect_with_r_ablated": conds[STEERED_ABLATED].log_odds - conds[ABLATED].log_odds,
        "effect_projected": conds[PROJECTED].log_odds - base,
        "effect_restored": restored,
        "fraction_carried_by_r": 1 - restored / effect if abs(effect) > 1e-6 else float("nan"),
        "cos_v_r": float(torch.nn.functional.cosine_similarity(steer.vector.float(), at_site.float(), dim=0)),
    }
    layers = list(range(n_layers(model)) if sweep_layers is None else sweep_layers)
    layer_sweep = [
        float(refusal_log_odds(model, texts, [steer, AblateDirection(direction, [layer])], chat=False).mean())
        for layer in layers
    ]
    scale_lo = [
        float(refusal_log_odds(model, texts, [steer.scaled(steer.scale * s)], chat=False).mean()) for s in scales
    ]
    return Mediation(
        conds,
        summary,
        {"layers": layers, "log_odds": layer_sweep},
        {"scales": list(scales), "log_odds": scale_lo},
        len(texts),
    )


def baseline_conditions(
    model: Any,
    prompts: Sequence[PromptLike],
    direction: Float[Tensor, " d_model"],
    *,
    chat: bool = True,
    max_new_tokens: int = 32,
) -> dict[str, Condition]:
    """The conditions without a steer (unsteered; r̂ ablated), shared by every vector's mediation."""
    texts = prepare_prompts(model, prompts, chat=chat)
    return {
        UNSTEERED: _condition(model, UNSTEERED, texts, [], max_new_tokens),
        ABLATED: _condition(model, ABLATED, texts, [AblateDirection(direction)], max_new_tokens),
    }


def mediation_figure(med: Mediation, *, title: str = "Mediation by the refusal direction") -> go.Figure:
    """Bars of mean refusal log-odds per condition (with the refusal rate where generated)."""
    names = list(med.conditions)
    values = [med.conditions[n].log_odds for n in names]
    text = [
        f"{v:+.2f}" + (f"<br>refuses {c.refusal['rate']:.0%}" if c.refusal else "")
        for v, c in zip(values, med.conditions.values())
    ]
    fig = go.Figure(go.Bar(x=names, y=values, text=text, textposition="outside", marker_color="#5d6d7e"))
    fig.update_layout(
        title=f"{title}: share of the effect carried by r̂ = {med.summary['fraction_carried_by_r']:.2f}",
        yaxis_title="refusal log-odds (next token)",
        template="plotly_white",
    )
    return fig


def sweep_figure(med: Mediation, *, title: str = "Sweeps") -> go.Figure:
    """Log-odds with r̂ ablated at one layer (left) and against the vector's multiplier (right)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("steered, r̂ ablated at one layer", "scale sweep"))
    layers = med.layer_sweep["layers"]
    fig.add_trace(
        go.Scatter(x=layers, y=med.layer_sweep["log_odds"], mode="lines+markers", name="r̂ ablated at layer"), 1, 1
    )
    for name, dash in ((UNSTEERED, "dot"), (STEERED, "dash")):
        y = med.conditions[name].log_odds
        fig.add_trace(
            go.Scatter(x=[layers[0], layers[-1]], y=[y, y], mode="lines", name=name, line={"dash": dash}), 1, 1
        )
    fig.add_trace(
        go.Scatter(
            x=med.scale_sweep["scales"], y=med.scale_sweep["log_odds"], mode="lines+markers", name="scale sweep"
        ),
        1,
        2,
    )
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="multiplier of v", row=1, col=2)
    fig.update_yaxes(title_text="refusal log-odds", row=1, col=1)
    fig.update_layout(title=title, template="plotly_white")
    return fig
