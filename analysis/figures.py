"""Plotly figures of training runs. Functions return a Figure and never show it."""

from __future__ import annotations

from collections.abc import Sequence
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
    fig.update_xaxes(type="log", title_text="radius R")
    fig.update_yaxes(title_text=f"diversity (1 − mean cos, {embedder or 'embeddings'})", secondary_y=False)
    fig.update_yaxes(title_text="perplexity under unsteered model", type="log", secondary_y=True)
    fig.update_layout(title="Radius sweep: pick R where diversity peaks and text stays fluent", template="plotly_white")
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
