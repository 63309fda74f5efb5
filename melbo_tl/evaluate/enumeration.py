"""How many distinct behaviours do several runs reach, per number of vectors?

The measurable form of "method A enumerates behaviours more efficiently than method B": the
behaviours of several triaged runs (:mod:`melbo_tl.evaluate.triage`) are clustered together with
one threshold, so that cluster counts compare across runs, and each run's curve counts the
distinct clusters its first 1, 2, … vectors fall into.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from melbo_tl.evaluate.behaviours import cluster_embeddings, enumeration_curve
from melbo_tl.evaluate.triage import UNSTEERED, load_triage


@dataclass
class Enumeration:
    """Fields: ``runs`` the run folders; ``labels`` their names; ``curves`` one
    :class:`~melbo_tl.evaluate.behaviours.EnumerationCurve` per run (distinct behaviour clusters
    reached by its first n vectors, clustered together with one ``threshold``); ``n_clusters``
    behaviour clusters over all runs."""

    runs: list[str]
    labels: list[str]
    curves: list[Any]
    threshold: float
    n_clusters: int

    def table(self, at: Sequence[int] = (16, 64, 256)) -> list[dict[str, Any]]:
        return [
            {"run": label, **{f"{n} vectors": curve.at(n) for n in at}}
            for label, curve in zip(self.labels, self.curves)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "labels": self.labels, "threshold": self.threshold, "n_clusters": self.n_clusters,
                "curves": [c.to_dict() for c in self.curves], "table": self.table()}  # fmt: skip


def enumerate_behaviours(
    run_dirs: Sequence[str | Path], *, labels: Sequence[str] | None = None, threshold: float = 0.35
) -> Enumeration:
    """Cluster the behaviours of several triaged runs together (one threshold, so counts compare)
    and count, for each run, the distinct behaviour clusters its first 1, 2, … vectors reach.
    Degenerate vectors and the cluster of the unsteered completion never count."""
    if not run_dirs:
        raise ValueError("Give at least one triaged run folder.")
    labels = list(labels) if labels is not None else [Path(d).name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs.")
    points, owners, sizes = [], [], []
    for r, run_dir in enumerate(run_dirs):
        triage = load_triage(run_dir)
        sizes.append(triage.n_vectors)
        emb = triage.embeddings["behaviours"]
        for k, row in enumerate(triage.behaviours):
            if row.degenerate or (row.index == UNSTEERED and r > 0):
                continue
            points.append(emb[k])
            owners.append((r, row.index))
    joint = cluster_embeddings(torch.stack(points), threshold=threshold)
    unsteered_like = {c for c, (r, v) in zip(joint, owners) if v == UNSTEERED}
    curves = []
    for r in range(len(run_dirs)):
        mine = sorted((v, c) for c, (rr, v) in zip(joint, owners) if rr == r and v != UNSTEERED)
        by_vector = dict(mine)
        order = [by_vector.get(v, -1) for v in range(sizes[r])]  # -1: degenerate
        curves.append(enumeration_curve(order, ignore=[-1, *unsteered_like]))
    n_clusters = len(set(joint) - unsteered_like)
    return Enumeration([str(d) for d in run_dirs], labels, curves, threshold, n_clusters)
