"""The atlas's legend names the largest clusters only, so that a static image of it stays readable."""

from __future__ import annotations

from types import SimpleNamespace

import plotly.graph_objects as go

from melbo_tl.analysis import atlas


def _clusters(sizes: list[int]) -> dict[int, SimpleNamespace]:
    return {cid: SimpleNamespace(size=size) for cid, size in enumerate(sizes)}


def test_the_clusters_past_the_largest_share_one_legend_entry():
    clusters = _clusters([1] * 5 + [9] * atlas.LEGEND_CLUSTERS)  # the small ones come first
    fig = go.Figure()
    for cid in clusters:
        fig.add_scatter(x=[0], y=[0], name=str(cid), **atlas._legend_entry(cid, clusters))
    atlas._add_smaller_clusters_entry(fig, clusters)
    named = [t.name for t in fig.data if t.showlegend is not False]
    assert named == [str(cid) for cid in range(5, 5 + atlas.LEGEND_CLUSTERS)] + ["… 5 smaller clusters (hover a point)"]
    assert {t.legendgroup for t in fig.data if t.name in {"0", "1", "2", "3", "4"}} == {"smaller"}


def test_few_clusters_each_get_an_entry():
    clusters = _clusters([3, 2, 1])
    fig = go.Figure()
    atlas._add_smaller_clusters_entry(fig, clusters)
    assert not fig.data and all(atlas._legend_entry(cid, clusters) == {} for cid in clusters)
