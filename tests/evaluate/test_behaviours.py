"""Behaviour clusters: planted clusters recovered, labels, representatives, the Pareto frontier
and the enumeration curve on hand-computable cases."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.evaluate.behaviours import (
    cluster_embeddings,
    distinctive_words,
    enumeration_curve,
    pareto_front,
    representative,
)


def planted(n_clusters: int = 4, per: int = 6, dim: int = 32, spread: float = 0.05, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, dim, generator=gen, device="cpu"), dim=-1)
    points = centres.repeat_interleave(per, 0) + spread * torch.randn(
        n_clusters * per, dim, generator=gen, device="cpu"
    )
    return torch.nn.functional.normalize(points, dim=-1), [c for c in range(n_clusters) for _ in range(per)]


def test_planted_clusters_are_recovered_exactly():
    points, truth = planted()
    order = torch.randperm(len(truth), generator=torch.Generator(device="cpu").manual_seed(1), device="cpu")
    labels = cluster_embeddings(points[order], threshold=0.35)
    shuffled = [truth[i] for i in order]
    pairs = set(zip(labels, shuffled))
    assert len(set(labels)) == 4 and len(pairs) == 4  # a bijection between found and planted clusters


def test_threshold_controls_granularity_and_singletons_survive():
    points, _ = planted(spread=0.05)
    assert len(set(cluster_embeddings(points, threshold=1.9))) == 1
    assert len(set(cluster_embeddings(points, threshold=1e-4))) == len(points)
    lone = torch.nn.functional.normalize(torch.ones(1, 32), dim=-1)
    labels = cluster_embeddings(torch.cat([points, lone]), threshold=0.35)
    assert labels.count(labels[-1]) == 1  # a behaviour of one vector stays a cluster of its own
    with pytest.raises(ValueError, match="threshold must be > 0"):
        cluster_embeddings(points, threshold=0)


def test_distinctive_words_and_representative():
    docs = ["bake bread flour oven bread", "bomb explosive bomb danger", "dragon castle dragon knight"]
    words = distinctive_words(docs, top=2)
    assert words[0][0] == "bread" and words[1][0] == "bomb" and words[2][0] == "dragon"
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert representative(points, [0, 1, 2]) == 1  # nearest to the members' mean


def test_pareto_front_by_hand():
    novelty = [0.1, 0.5, 0.4, 0.9, 0.9, math.nan]
    ppl = [1.0, 2.0, 3.0, 10.0, 12.0, 1.0]
    # 0 (least perplexing), 1, 3 are undominated; 2 is dominated by 1, 4 by 3, 5 is NaN.
    assert pareto_front(novelty, ppl) == [3, 1, 0]


def test_enumeration_curve_by_hand():
    curve = enumeration_curve([2, 2, 5, -1, 0, 5, 7], ignore=[-1, 0])
    assert curve.counts == [1, 1, 2, 2, 2, 2, 3]
    assert curve.at(3) == 2 and curve.at(7) == 3 and curve.at(8) is None
