"""The steps of ``melbo analyze``, in the order they run (:data:`STEPS`): each reads the
:class:`~melbo_tl.analysis.run_analysis.Context` and writes its table (and figures) into the
analysis folder; :func:`~melbo_tl.analysis.run_analysis.analyze_run` runs the ones not finished.

Adding a step: write ``def my_step(ctx) -> None`` that ends with ``ctx.out.table(NAME, …)``, and
add ``Step(NAME, my_step)`` to :data:`STEPS` (its name in :mod:`melbo_tl.analysis.names`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
import torch

from melbo_tl.analysis import ablation, attribution, lens, similarity, token_views
from melbo_tl.analysis.names import (
    ATTRIBUTION,
    COSINES,
    DELTA_COSINES,
    EFFECTS,
    LENS,
    MEDIATION,
    READOUT,
    TOKEN_VIEWS,
)
from melbo_tl.evaluate.refusal import refusal_log_odds
from melbo_tl.steering.sites import Site, n_layers

if TYPE_CHECKING:
    from melbo_tl.analysis.run_analysis import Context, Refusal, Steer

SCALES = (-2.0, -1.0, 0.0, 1.0, 2.0)  # multipliers of each mediated vector in the scale sweep


@dataclass(frozen=True)
class Step:
    """One analysis step: its ``name`` (its table is ``<name>.json``), what it does, and whether it
    needs a refusal direction (``--against``)."""

    name: str
    run: Callable[[Context], None]
    needs_refusal: bool = False


def _effects(model: Any, prompts: list[str], steers: list[Steer]) -> dict[str, Any]:
    base = refusal_log_odds(model, prompts)
    rows = []
    for s in steers:
        lo = refusal_log_odds(model, prompts, [s.intervention])
        rows.append(
            {
                "name": s.name,
                "site": s.site,
                "norm": float(s.intervention.vector.norm()),
                "log_odds": float(lo.mean()),
                "effect": float((lo - base).mean()),
            }
        )
    return {"unsteered_log_odds": float(base.mean()), "rows": rows}


def _similarity(
    steers: list[Steer], refusal: Refusal | None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, go.Figure]]]:
    groups, figs, rows = [], [], []
    for site in sorted({s.site for s in steers}, key=Site.sort_key):
        members = [s for s in steers if s.site == site]
        vectors = {s.name: (s.intervention.vector, s.site) for s in members}
        r_site, source = refusal.at(site) if refusal else (None, "no refusal run")
        if r_site is not None:
            vectors["r̂ @ site"] = (r_site, site)
        sim = similarity.vector_similarity(vectors)
        entry: dict[str, Any] = {**sim.to_dict(), "site": site.hook, "refusal_source": source}
        basis = torch.stack([s.intervention.vector.float() for s in members])
        if r_site is not None and len(members) < basis.shape[1]:
            entry["subspace_overlap_with_r"] = similarity.subspace_overlap(basis, r_site)
        groups.append(entry)
        figs.append((f"cosine_{site.hook}", sim.figure()))
        for i, s in enumerate(members):
            mapped = None
            if refusal is not None:
                mapped = float(
                    torch.nn.functional.cosine_similarity(s.intervention.vector.float(), refusal.direction, dim=0)
                )
            rows.append(
                {
                    "vector": s.name,
                    "site": site.hook,
                    "norm": sim.norms[i],
                    "cos_r_at_site": sim.cosine[i][-1] if r_site is not None else None,
                    "r_source": source,
                    "cos_r_selected_mapped": mapped,
                    "random_q95": sim.random_q95,
                }
            )
    return {"groups": groups}, rows, figs


def effects(ctx: Context) -> None:
    """Each vector's effect on the refusal log-odds of the held-out prompts."""
    data = _effects(ctx.model, ctx.prompts, ctx.steers)
    ctx.out.table(EFFECTS, data, data["rows"])


def cosines(ctx: Context) -> None:
    """Cosines of the vectors at each site, with r̂ read there and the random baseline."""
    data, rows, figs = _similarity(ctx.steers, ctx.refusal)
    ctx.out.table(COSINES, {**data, "rows": rows}, rows)
    for name, fig in figs:
        ctx.out.figure(name.replace(".", "_"), fig)


def delta_cosines(ctx: Context) -> None:
    """Cosines of the changes the vectors cause at one later site (and against r̂ there)."""
    ds = similarity.delta_similarity(
        ctx.model, ctx.prompts, {s.name: s.intervention for s in ctx.steers}, at=ctx.at,
        against={"r̂": ctx.r_at} if ctx.r_at is not None else None, n_random=4,
    )  # fmt: skip
    ctx.out.table(DELTA_COSINES, ds.to_dict())
    for key in ds.token_sets:
        matrix = [row + extra for row, extra in zip(ds.cosine[key], ds.cosine_against[key])]
        fig = similarity.cosine_heatmap(
            ds.names, matrix, cols=ds.names + ds.against, title=f"Cosines of Δ at {ctx.at}, {key} tokens",
            baseline=ds.random_abs_cos_q95.get(key),
        )  # fmt: skip
        ctx.out.figure(f"delta_cosine_{key.replace(':', '')}", fig)


def readouts(ctx: Context) -> None:
    """The tokens each vector (and r̂) promotes and suppresses through the unembedding."""
    data = {s.name: lens.vector_readout(ctx.model, s.intervention.vector).to_dict() for s in ctx.steers}
    if ctx.refusal is not None:
        data["r̂ (selected)"] = lens.vector_readout(ctx.model, ctx.refusal.direction).to_dict()
    ctx.out.table(READOUT, data)


def lenses(ctx: Context) -> None:
    """Logit-lens trajectories of the refusal and compliance tokens on the run's prompt."""
    data = {}
    for s in ctx.steers:
        traj = lens.lens_trajectory(ctx.model, ctx.run_prompt, s.intervention)
        data[s.name] = traj.to_dict()
        ctx.out.figure(f"lens_{s.name}", lens.lens_figure(traj, title=f"Logit lens, {s.name} on {ctx.run_prompt!r}"))
    ctx.out.table(LENS, {"prompt": ctx.run_prompt, "trajectories": data})


def attributions(ctx: Context) -> None:
    """Direct effect and attribution patching of the chosen vectors."""
    data = {}
    for s in ctx.chosen:
        att = attribution.steering_attribution(ctx.model, ctx.prompts, s.intervention)
        data[s.name] = att.to_dict()
        ctx.out.figure(f"attribution_{s.name}", attribution.attribution_figure(att, title=f"Attribution, {s.name}"))
    ctx.out.table(ATTRIBUTION, data)


def mediations(ctx: Context) -> None:
    """Does each chosen vector act through r̂? Ablation, projection, restoration and the sweeps."""
    refusal = ctx.refusal
    assert refusal is not None
    max_new = ctx.settings.max_new_tokens
    base = ablation.baseline_conditions(ctx.model, ctx.prompts, refusal.direction, max_new_tokens=max_new)
    data, rows = {}, []
    for s in ctx.chosen:
        med = ablation.mediation(
            ctx.model, ctx.prompts, s.intervention, refusal.direction, site_direction=refusal.at(s.site)[0],
            max_new_tokens=max_new, baseline=base, sweep_layers=range(s.layer, n_layers(ctx.model)), scales=SCALES,
        )  # fmt: skip
        data[s.name] = med.to_dict()
        rates = {f"refusal {k}": (c.refusal or {}).get("rate") for k, c in med.conditions.items() if c.refusal}
        rows.append({"vector": s.name, **med.summary, **rates})
        ctx.out.figure(f"mediation_{s.name}", ablation.mediation_figure(med, title=f"Mediation, {s.name}"))
        ctx.out.figure(f"sweeps_{s.name}", ablation.sweep_figure(med, title=f"Sweeps, {s.name}"))
    ctx.out.table(MEDIATION, data, rows)


def views(ctx: Context) -> None:
    """Per-token change and attention patterns of the chosen vectors on the run's prompt."""
    data = {}
    for s in ctx.chosen:
        tv = token_views.delta_token_view(
            ctx.model, ctx.run_prompt, s.intervention, at=ctx.at, direction=ctx.r_at,
            max_new_tokens=ctx.settings.max_new_tokens or 16,
        )  # fmt: skip
        av = token_views.attention_view(ctx.model, ctx.run_prompt, s.intervention, layer=ctx.at.layer)
        direction = "r̂" if ctx.r_at is not None else "the vector's own direction"
        data[s.name] = {"tokens": tv.to_dict(), "attention": av.to_dict(), "direction": direction}
    ctx.out.table(TOKEN_VIEWS, data)


STEPS = (
    Step(EFFECTS, effects),
    Step(COSINES, cosines),
    Step(DELTA_COSINES, delta_cosines),
    Step(READOUT, readouts),
    Step(LENS, lenses),
    Step(ATTRIBUTION, attributions),
    Step(MEDIATION, mediations, needs_refusal=True),
    Step(TOKEN_VIEWS, views),
)
