"""Behaviours first: order DCT factors by what their vectors make the model say.

The fit's own scores (importance, α) favour the factors with the largest effect at the target
layer, and the largest effects are often the most explosive: token soup. A reader wants the
vectors that change the behaviour into something readable, and one vector per behaviour before
the second of any. :func:`screen_factors` costs one short greedy completion per factor and
prompt, the coherence verdict of :func:`~melbo_tl.evaluate.degenerate.judge_completions`, and
a sentence embedding of each completion:

1. **distinct**: coherent, changed (not in the cluster of the unsteered completion), the first
   of its behaviour cluster — in the base order (importance);
2. **more of the same**: the other coherent, changed factors, in the base order;
3. **unchanged**: coherent but like the unsteered completion;
4. **degenerate**: soup, empty or echo in at least half of its completions.

Clusters are those of triage (:func:`~melbo_tl.evaluate.behaviours.cluster_embeddings`, cosine
distance ``threshold``) over the mean embedding of each factor's completions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.prompts import PromptLike

GROUPS = ("distinct", "more of the same", "unchanged", "degenerate")


@dataclass
class Screen:
    """Per factor (factor order): ``completion`` (first prompt), ``degenerate``, ``cluster`` (-1:
    degenerate), ``group`` (one of :data:`GROUPS`); ``order`` the factors, behaviours first;
    ``unsteered`` completion; ``embedder``; ``max_new_tokens``."""

    completion: list[str]
    degenerate: list[bool]
    cluster: list[int]
    group: list[str]
    order: list[int]
    unsteered: str
    embedder: str
    max_new_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def screen_order(
    base: Sequence[int], degenerate: Sequence[bool], cluster: Sequence[int], unchanged: int
) -> tuple[list[int], list[str]]:
    """The behaviours-first order of factors given their ``base`` order, flags and clusters
    (``unchanged``: the cluster of the unsteered completion); and each factor's group."""
    group = [""] * len(degenerate)
    seen: set[int] = set()
    for f in base:
        if degenerate[f]:
            group[f] = GROUPS[3]
        elif cluster[f] == unchanged:
            group[f] = GROUPS[2]
        elif cluster[f] not in seen:
            group[f] = GROUPS[0]
            seen.add(cluster[f])
        else:
            group[f] = GROUPS[1]
    order = [f for g in GROUPS for f in base if group[f] == g]
    return order, group


@torch.no_grad()
def screen_factors(
    model: Any,
    prompts: Sequence[PromptLike],
    vectors: Float[Tensor, "f d"],
    hook: str,
    base: Sequence[int],
    *,
    chat: bool = True,
    max_new_tokens: int = 24,
    threshold: float = 0.35,
    batch_size: int = 64,
) -> Screen:
    """Screen every vector (rows of ``vectors``, factor order) on the training ``prompts`` and
    order the factors behaviours first, ties broken by ``base`` (module docstring)."""
    from melbo_tl.evaluate.behaviours import cluster_embeddings
    from melbo_tl.evaluate.degenerate import judge_completions
    from melbo_tl.evaluate.embeddings import embed_texts
    from melbo_tl.generate import generate
    from melbo_tl.steering import AddVector

    n, f = len(prompts), len(vectors)
    options = dict(max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size)
    unsteered = [c.text for c in generate(model, list(prompts), **options)]
    texts: list[str] = []
    per_batch = max(1, batch_size // n)
    for start in range(0, f, per_batch):
        rows = vectors[start : start + per_batch]
        steer = AddVector(rows.repeat_interleave(n, dim=0), hook)
        texts += [c.text for c in generate(model, [p for _ in range(len(rows)) for p in prompts], steer, **options)]
    users = [_user_message(p) for p in prompts]
    verdicts = judge_completions(model, texts, [users[i % n] for i in range(len(texts))])
    bad = [sum(v.degenerate for v in verdicts[i * n : (i + 1) * n]) * 2 >= n for i in range(f)]
    emb, embedder = embed_texts(unsteered + texts, model=model)
    mean = torch.nn.functional.normalize(
        torch.stack([emb[:n].mean(0)] + [emb[n + i * n : n + (i + 1) * n].mean(0) for i in range(f)]), dim=-1
    )
    kept = [0] + [1 + i for i in range(f) if not bad[i]]
    labels = dict(zip(kept, cluster_embeddings(mean[kept], threshold=threshold)))
    cluster = [labels.get(1 + i, -1) for i in range(f)]
    order, group = screen_order(list(base), bad, cluster, labels[0])
    return Screen([texts[i * n] for i in range(f)], bad, cluster, group, order, unsteered[0], embedder, max_new_tokens)


def _user_message(prompt: PromptLike) -> str:
    """The user's message of a prompt (the judge scores completions as answers to it)."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
