"""Behaviour clusters: group what many vectors make the model say, name each group, find the
vectors worth reading first, and count how many behaviours a set of vectors reaches.

Clustering is scikit-learn's agglomerative clustering of unit sentence embeddings with cosine
distance, average linkage and a distance threshold. Why this rather than k-means or HDBSCAN: the
number of behaviours is what discovery wants to learn, so no k can be given; the threshold has a
plain meaning (the mean cosine distance between two merged groups); the result is deterministic;
and a behaviour elicited by a single vector stays a cluster of one, where HDBSCAN would call it
noise — exactly the rare find an auditor is looking for.

Each cluster is labelled by its most distinctive words (TF-IDF of the cluster's completions as
one document against the other clusters) and a representative completion (closest to the
cluster's mean embedding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def cluster_embeddings(embeddings: Float[Tensor, "n dim"], *, threshold: float) -> list[int]:
    """Cluster ids (0, 1, …, by first appearance) of unit embeddings; one point is its own cluster."""
    from sklearn.cluster import AgglomerativeClustering

    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 (a cosine distance), got {threshold}.")
    n = embeddings.shape[0]
    if n == 0:
        return []
    if n == 1:
        return [0]
    x = torch.nn.functional.normalize(embeddings.float(), dim=-1).numpy()
    labels = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=threshold
    ).fit_predict(x)
    renumber: dict[int, int] = {}
    return [renumber.setdefault(int(label), len(renumber)) for label in labels]


def distinctive_words(documents: Sequence[str], *, top: int = 5) -> list[list[str]]:
    """The ``top`` words of each document with the highest TF-IDF against the other documents."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not documents:
        return []
    if all(not d.strip() for d in documents):
        return [[] for _ in documents]
    vectorizer = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{2,}\b", sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform(documents)
    except ValueError:  # only stop words
        return [[] for _ in documents]
    vocab = np.array(vectorizer.get_feature_names_out())
    out = []
    for row in matrix:
        scores = row.toarray()[0]
        best = [i for i in np.argsort(-scores, kind="stable")[:top] if scores[i] > 0]
        out.append(vocab[best].tolist())
    return out


def representative(embeddings: Float[Tensor, "n dim"], members: Sequence[int]) -> int:
    """The member whose embedding is closest (cosine) to the members' mean."""
    x = torch.nn.functional.normalize(embeddings[list(members)].float(), dim=-1)
    centre = torch.nn.functional.normalize(x.mean(0), dim=0)
    return list(members)[int((x @ centre).argmax())]


def pareto_front(novelty: Sequence[float], perplexity: Sequence[float]) -> list[int]:
    """Indices not dominated in (novelty ↑, perplexity ↓), by decreasing novelty. A point dominates
    another if it is at least as good in both and better in one; NaNs are never on the front."""
    points = [(i, n, p) for i, (n, p) in enumerate(zip(novelty, perplexity)) if n == n and p == p]
    points.sort(key=lambda t: (-t[1], t[2]))
    front, best = [], float("inf")
    for i, _, p in points:
        if p < best:
            front.append(i)
            best = p
    return front


@dataclass
class EnumerationCurve:
    """Fields: ``counts[k]`` the number of distinct clusters the first k + 1 vectors reach
    (vectors taken in the order given: rank order for DCT); ``clusters`` the cluster of each
    vector."""

    counts: list[int]
    clusters: list[int]

    def at(self, n: int) -> int | None:
        """Distinct clusters among the first ``n`` vectors (None if there are fewer)."""
        return self.counts[n - 1] if 0 < n <= len(self.counts) else None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def enumeration_curve(clusters: Sequence[int], *, ignore: Sequence[int] = ()) -> EnumerationCurve:
    """How many distinct clusters the first 1, 2, … vectors fall into (clusters in ``ignore``,
    e.g. degenerate or unsteered-like, never count)."""
    seen: set[int] = set()
    counts = []
    for c in clusters:
        if c not in ignore:
            seen.add(c)
        counts.append(len(seen))
    return EnumerationCurve(counts, list(clusters))
