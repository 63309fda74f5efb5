"""The behaviour atlas: a map of every completion a run's vectors elicit, coloured by behaviour.

Reads ``RUN/triage/`` (:mod:`melbo_tl.evaluate.triage`) and draws:

- :func:`atlas_figure`: a 2-D map of the completions' sentence embeddings, coloured by cluster,
  marker size by the vector's rank (the run's order: DCT ranks by importance), the unsteered
  completion marked, hover showing vector index, cluster and completion. The projection is
  t-SNE (scikit-learn, cosine metric, PCA start, fixed seed: reproducible): behaviours are local
  structure — small groups of near-identical completions — which t-SNE keeps apart, while the two
  leading principal components of 384-dimensional MiniLM embeddings mostly show the gap between
  fluent and degenerate text. ``projection="pca"`` is there for global distances.
- :func:`frontier_figure`: novelty × perplexity of every vector with the Pareto frontier.
- :func:`cluster_rows`: the cluster table (label, size, representative, refusal share).

>>> write_atlas("runs/demo/dct")   # RUN/triage/atlas.{json,html}, frontier.{json,html}
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from melbo_tl.analysis.figures import write_html
from melbo_tl.analysis.names import PROJECTIONS
from melbo_tl.artifacts import atomic_write_text
from melbo_tl.evaluate.triage import UNSTEERED, load_triage, triage_dir

ATLAS_FIGURE = "atlas"
FRONTIER_FIGURE = "frontier"
# Legend entries for the largest clusters only: a static image cannot scroll a legend of 80 clusters.
LEGEND_CLUSTERS = 15


def project(embeddings: np.ndarray, *, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """Points in 2-D (``tsne`` or ``pca``); fewer than 4 points are laid out by PCA."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in PROJECTIONS:
        raise ValueError(f"projection {method!r} is not one of {', '.join(PROJECTIONS)}.")
    n = embeddings.shape[0]
    if n < 3:
        return np.pad(embeddings[:, :2], ((0, 0), (0, max(0, 2 - embeddings.shape[1]))))
    if method == "pca" or n < 4:
        return PCA(n_components=2, random_state=seed).fit_transform(embeddings)
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed).fit_transform(
        embeddings
    )


def _smaller_clusters(clusters: dict[int, Any]) -> set[int]:
    """Cluster ids past the LEGEND_CLUSTERS largest (ties broken by id)."""
    by_size = sorted(clusters, key=lambda cid: (-clusters[cid].size, cid))
    return set(by_size[LEGEND_CLUSTERS:])


def _legend_entry(cid: int, clusters: dict[int, Any]) -> dict[str, Any]:
    """A large cluster gets its own legend entry; the smaller ones share one (they toggle together)."""
    if cid in _smaller_clusters(clusters):
        return {"legendgroup": "smaller", "showlegend": False}
    return {}


def _add_smaller_clusters_entry(fig: go.Figure, clusters: dict[int, Any]) -> None:
    smaller = _smaller_clusters(clusters)
    if smaller:
        fig.add_trace(
            go.Scatter(
                x=[None], y=[None], mode="markers", legendgroup="smaller", marker={"color": "#aab7b8"},
                name=f"… {len(smaller)} smaller clusters (hover a point)",
            )
        )  # fmt: skip


def _hover(text: str, width: int = 200) -> str:
    short = text if len(text) <= width else text[:width] + "…"
    return html.escape(short).replace("\n", "<br>")


def atlas_figure(run_dir: str | Path, *, projection: str = "tsne", title: str | None = None) -> go.Figure:
    """The map of completions on the training prompts (see the module docstring)."""
    triage = load_triage(run_dir)
    rows = triage.completions
    behaviours = {b.index: b for b in triage.behaviours}
    clusters = {c.id: c for c in triage.clusters}
    n_train = triage.summary["n_train_prompts"]
    keep = [i for i, r in enumerate(rows) if r["prompt_index"] < n_train]
    xy = project(triage.embeddings["completions"][keep].numpy(), method=projection)
    n_vectors = max(1, triage.n_vectors)
    fig = go.Figure()
    for cid, cluster in clusters.items():
        members = [
            k
            for k, i in enumerate(keep)
            if behaviours[rows[i]["vector"]].cluster == cid and rows[i]["vector"] != UNSTEERED
        ]
        if not members:
            continue
        vecs = [rows[keep[k]]["vector"] for k in members]
        fig.add_trace(
            go.Scatter(
                x=xy[members, 0],
                y=xy[members, 1],
                mode="markers",
                name=f"{cid}: {cluster.label}"[:60] + f" ({cluster.size})",
                marker={"size": [6 + 14 * (1 - v / n_vectors) for v in vecs], "opacity": 0.8},
                text=[f"vector {v}<br>cluster {cid}: {html.escape(cluster.label)}<br>{_hover(rows[keep[k]]['completion'])}" for k, v in zip(members, vecs)],
                hoverinfo="text",
                **_legend_entry(cid, clusters),
            )
        )  # fmt: skip
    _add_smaller_clusters_entry(fig, clusters)
    base = [k for k, i in enumerate(keep) if rows[i]["vector"] == UNSTEERED]
    fig.add_trace(
        go.Scatter(
            x=xy[base, 0],
            y=xy[base, 1],
            mode="markers",
            name="unsteered",
            marker={"symbol": "star", "size": 18, "color": "black", "line": {"width": 1, "color": "white"}},
            text=[f"unsteered<br>{_hover(rows[keep[k]]['completion'])}" for k in base],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title=title or f"Behaviour atlas: {len(keep)} completions, {len(clusters)} clusters ({projection})",
        xaxis={"visible": False},
        yaxis={"visible": False},
        legend={"font": {"size": 10}},
        height=620,
    )
    return fig


def frontier_figure(run_dir: str | Path) -> go.Figure:
    """Novelty (cosine distance from the unsteered completion) against perplexity (log scale)."""
    triage = load_triage(run_dir)
    rows = [b for b in triage.behaviours if b.index != UNSTEERED]
    clusters = {c.id: c for c in triage.clusters}
    fig = go.Figure()
    for cid, cluster in clusters.items():
        mine = [b for b in rows if b.cluster == cid and not math.isnan(b.perplexity)]
        if mine:
            fig.add_trace(
                go.Scatter(
                    x=[b.novelty for b in mine],
                    y=[b.perplexity for b in mine],
                    mode="markers",
                    name=f"{cid}: {cluster.label}"[:60],
                    text=[f"vector {b.index}<br>{_hover(b.completion)}" for b in mine],
                    hoverinfo="text",
                    **_legend_entry(cid, clusters),
                )
            )
    _add_smaller_clusters_entry(fig, clusters)
    front = sorted((b for b in rows if b.frontier), key=lambda b: b.novelty)
    fig.add_trace(
        go.Scatter(
            x=[b.novelty for b in front],
            y=[b.perplexity for b in front],
            mode="lines+markers",
            name="Pareto frontier",
            line={"color": "black", "dash": "dot"},
            marker={"symbol": "diamond-open", "size": 12, "color": "black"},
            text=[f"vector {b.index} (shortlist #{b.shortlist})" for b in front],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title="Novelty × fluency: read the frontier first",
        xaxis_title="novelty (1 − cos to the unsteered completion)",
        yaxis={"title": "perplexity under the unsteered model", "type": "log"},
        height=520,
    )
    return fig


def cluster_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per cluster: id, label, size, representative vector and completion, refusal share."""
    triage = load_triage(run_dir)
    return [
        {
            "cluster": c.id,
            "label": c.label + (" (like unsteered)" if c.unsteered_like else ""),
            "vectors": c.size,
            "representative": c.representative,
            "refusal share": round(c.refusal, 2),
            "completion": c.completion[:300],
        }
        for c in triage.clusters
    ]


def write_atlas(run_dir: str | Path, *, projection: str = "tsne") -> Path:
    """Write the atlas and frontier figures (plotly JSON + offline HTML) into ``RUN/triage/``."""
    folder = triage_dir(run_dir)
    for name, fig in (
        (ATLAS_FIGURE, atlas_figure(run_dir, projection=projection)),
        (FRONTIER_FIGURE, frontier_figure(run_dir)),
    ):
        atomic_write_text(folder / f"{name}.json", fig.to_json())
        write_html(fig, folder / f"{name}.html")
    return folder
