"""Radius sweep: find the "Goldilocks" R where MELBO vectors give diverse, fluent behaviours.

For each R a few vectors are trained with the same settings, each generates a greedy
completion of the prompt (all vectors in one batched generate), and the completions are
scored for diversity (mean pairwise cosine distance of sentence embeddings) and fluency
(perplexity under the unsteered model). Too small an R changes nothing (low diversity), too
large gives gibberish (high perplexity); the useful R sits between.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm.auto import tqdm

from melbo_tl.evaluate.embeddings import embed_texts, mean_pairwise_distance
from melbo_tl.evaluate.fluency import completion_nll, perplexity
from melbo_tl.generate import generate_per_vector
from melbo_tl.optimize.melbo import MelboConfig, MelboResult, train_vectors
from melbo_tl.prompts import PromptLike


@dataclass
class SweepRow:
    """One radius: ``diversity`` mean pairwise cosine distance of the completions' embeddings;
    ``perplexity`` median over completions under the unsteered model; ``objective`` mean final
    MELBO objective; ``completions`` the greedy completions, one per vector."""

    radius: float
    diversity: float
    perplexity: float
    objective: float
    seconds: float
    completions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepResult:
    rows: list[SweepRow]
    embedder: str
    settings: dict[str, Any]
    results: list[MelboResult] = field(default_factory=list, repr=False)

    def best_radius(self) -> float:
        """The R with the highest diversity among those whose perplexity stays finite."""
        finite = [r for r in self.rows if not math.isnan(r.perplexity)] or self.rows
        return max(finite, key=lambda r: r.diversity).radius

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder,
            "settings": self.settings,
            "rows": [r.to_dict() for r in self.rows],
            "best_radius": self.best_radius(),
        }


def sweep_radius(
    model: Any,
    prompt: PromptLike,
    radii: Sequence[float],
    cfg: MelboConfig,
    *,
    max_new_tokens: int = 48,
    embedder: str = "auto",
    progress: bool = True,
) -> SweepResult:
    """Train ``cfg.n_vectors`` vectors per radius on ``prompt`` (``cfg`` with each R in turn) and
    score their completions (see module doc)."""
    if not radii:
        raise ValueError("Give at least one radius.")
    rows: list[SweepRow] = []
    results: list[MelboResult] = []
    used = ""
    for radius in tqdm(list(radii), desc="radius sweep", disable=not progress):
        started = time.perf_counter()
        result = train_vectors(model, [prompt], cfg.replace(radius=radius), progress=progress)
        completions = generate_per_vector(
            model, prompt, result.vectors, hook=result.hook, max_new_tokens=max_new_tokens
        )
        texts = [c.text for c in completions]
        embeddings, used = embed_texts(texts, model=model, embedder=embedder)
        nll = completion_nll(model, [c.prompt for c in completions], [c.token_ids for c in completions])
        ppl = sorted(perplexity(x) for x in nll if not math.isnan(x))
        rows.append(
            SweepRow(
                radius=float(radius),
                diversity=mean_pairwise_distance(embeddings),
                perplexity=ppl[len(ppl) // 2] if ppl else math.nan,
                objective=sum(result.objectives) / len(result.objectives),
                seconds=time.perf_counter() - started,
                completions=texts,
            )
        )
        results.append(result)
    settings = {"max_new_tokens": max_new_tokens, **cfg.for_model(model).to_dict()}
    return SweepResult(rows, used, settings, results)
