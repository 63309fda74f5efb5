"""Plotly figures of training runs. Functions return a Figure and never show it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def loss_curves(losses: Sequence[Sequence[float]], *, title: str = "MELBO objective per step") -> go.Figure:
    """One line per vector: its objective (to maximize) at each optimization step."""
    fig = go.Figure()
    for i, curve in enumerate(losses):
        fig.add_trace(go.Scatter(y=list(curve), mode="lines", name=f"vector {i}"))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="objective", template="plotly_white")
    return fig


def radius_sweep_figure(rows: Sequence[dict[str, Any]], *, embedder: str = "") -> go.Figure:
    """Diversity and perplexity of steered completions against the radius R (log x axis)."""
    radii = [r["radius"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(x=radii, y=[r["diversity"] for r in rows], mode="lines+markers", name="diversity"), secondary_y=False
    )
    fig.add_trace(
        go.Scatter(x=radii, y=[r["perplexity"] for r in rows], mode="lines+markers", name="perplexity"),
        secondary_y=True,
    )
    # Ticks at the radii swept and plain numbers on the log perplexity axis (plotly's automatic
    # log ticks label minor digits, which reads badly over a range shorter than a decade or two).
    fig.update_xaxes(type="log", title_text="radius R", tickvals=radii, ticktext=[f"{r:g}" for r in radii])
    fig.update_yaxes(title_text=f"diversity (1 − mean cos, {embedder or 'embeddings'})", secondary_y=False)
    fig.update_yaxes(
        title_text="perplexity under unsteered model", type="log", dtick="D1", tickformat=".3~g", secondary_y=True
    )
    fig.update_layout(title="Radius sweep: pick R where diversity peaks and text stays fluent", template="plotly_white")
    return fig


def calibration_figure(calibration: Any) -> go.Figure:
    """ρ(R), the non-linear share of the response at the target, against R (log axes), with the
    target ρ and the calibrated R. ``calibration``: a :class:`Calibration` or its ``to_dict()``
    (as a run folder's ``run.json["calibration"]`` holds it)."""
    cal = calibration if isinstance(calibration, dict) else calibration.to_dict()
    if not cal.get("radii"):
        raise ValueError("calibration has no ρ(R) curve (a fixed radius was given, not 'auto').")
    fig = go.Figure(go.Scatter(x=cal["radii"], y=cal["rho"], mode="lines+markers", name="ρ(R)"))
    fig.add_hline(y=cal["target"], line_dash="dot", annotation_text=f"target ρ = {cal['target']:g}")
    fig.add_vline(x=cal["radius"], line_dash="dash", annotation_text=f"R = {cal['radius']:.3g}")
    fig.update_layout(
        title=f"Calibrating R: where the response stops being linear ({cal['n_directions']} random directions)",
        xaxis={"title": "radius R", "type": "log"},
        yaxis={"title": "ρ(R) = ‖Δ(Rv) − R·Jv‖ / ‖R·Jv‖", "type": "log"},
        template="plotly_white",
        height=400,
    )
    return fig


def rates_figure(results: Mapping[str, Any], *, rate: str = "refusal", title: str = "Refusal rate") -> go.Figure:
    """Grouped bars of one rate per condition, with 95% Wilson intervals as error bars.

    ``results`` maps a group label (e.g. "harmful", "harmless") to an :class:`EvalResult`; each of
    its rows (conditions) is one bar. ``rate`` is an :class:`EvalRow` rate field (``refusal``,
    ``refusal_opening``, ``misaligned``)."""
    if not results:
        raise ValueError("rates_figure needs at least one result.")
    fig = go.Figure()
    labels = list(dict.fromkeys(row.label for result in results.values() for row in result.rows))
    for label in labels:
        xs, ys, lo, hi, text = [], [], [], [], []
        for group, result in results.items():
            for row in result.rows:
                ci = getattr(row, rate) if row.label == label else None
                if ci is None:
                    continue
                xs.append(group)
                ys.append(ci.rate)
                lo.append(ci.rate - ci.low)
                hi.append(ci.high - ci.rate)
                text.append(f"{ci.k}/{ci.n}")
        err = {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}
        fig.add_trace(
            go.Bar(x=xs, y=ys, name=label, error_y=err, text=text, textposition="inside", insidetextanchor="start")
        )
    fig.update_layout(
        title=f"{title} (bars: 95% Wilson intervals)",
        yaxis={"title": f"{rate.replace('_', ' ')} rate", "range": [0, 1.05]},
        barmode="group",
        template="plotly_white",
    )
    return fig


def write_html(fig: go.Figure, path: Any) -> None:
    """Write a self-contained HTML file (plotly.js inlined, opens offline), atomically."""
    from melbo_tl.artifacts import atomic_write_text

    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def enumeration_figure(result: Any) -> go.Figure:
    """Distinct behaviour clusters reached by the first n vectors, one line per run."""
    fig = go.Figure()
    for label, curve in zip(result.labels, result.curves):
        fig.add_trace(go.Scatter(x=list(range(1, len(curve.counts) + 1)), y=curve.counts, mode="lines", name=label))
    fig.update_layout(
        title=f"Behaviours found vs vectors ({result.n_clusters} clusters in all, threshold {result.threshold})",
        xaxis={"title": "number of vectors (in the run's order: rank order for DCT)", "type": "log"},
        yaxis_title="distinct behaviour clusters",
    )
    return fig
