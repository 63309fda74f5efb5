"""Choosing one refusal direction among the difference-in-means candidates (Arditi et al.).

Every candidate (ℓ, i) with ℓ < ``max_layer_frac``·n_layers is scored on held-out prompts:

- **bypass**: mean refusal log-odds (:func:`melbo_tl.evaluate.refusal.refusal_log_odds`'s score)
  on harmful prompts with r̂ ablated at every residual write site of every layer. Lower is better.
- **induce**: mean refusal log-odds on harmless prompts with the raw r_ℓ,i added at
  ``blocks.ℓ.hook_resid_pre`` on every token. Must exceed ``induce_threshold``.
- **kl**: mean KL(unsteered ‖ ablated) of the last-position next-token distribution on harmless
  prompts. Must be at most ``kl_threshold``.

Among candidates passing both filters, the lowest bypass score wins. If none passes, a
:class:`NoDirectionError` names the best candidate under each criterion; nothing is relaxed.
Scoring (:func:`score_candidates`, the expensive part) and filtering (:func:`choose_direction`,
free) are separate, so other thresholds can be tried on the same scores.

Cost: per candidate, one forward pass over the harmful + harmless validation prompts (ablated)
and one over the harmless prompts from block ℓ on (added, starting from the cached residual);
only the last column is unembedded. Both shortcuts are tested against plain forward passes.

Example::

    cands = diff_in_means(model, harmful_train, harmless_train)
    sel = select_direction(model, cands, harmful_val, harmless_val)
    print(sel.table())
    steer = AddVector(sel.raw, sel.hook)          # induce refusal
    ablate = AblateDirection(sel.direction)       # bypass refusal
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.directions.diff_in_means import CandidateDirections
from melbo_tl.directions.scores import CandidateScore, CandidateScores, NoDirectionError, Selection, _finite
from melbo_tl.evaluate.refusal import log_odds, refusal_token_ids
from melbo_tl.forward import as_batch, length_sorted_batches, next_token_logprobs, readout
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import to_result
from melbo_tl.prompts import PromptLike, prepare_prompts
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.interventions import AblateDirection, AddVector, apply
from melbo_tl.steering.sites import d_model, n_layers, resid_hook


@torch.no_grad()
def _added_logprobs(
    model: Any, batches: list[list[int]], segments: list[ResidualSegment], n: int, steer: AddVector
) -> Tensor:
    """Like :func:`~melbo_tl.forward.next_token_logprobs` with ``steer`` at
    ``blocks.ℓ.hook_resid_pre``, but starting each batch from its cached residual entering block
    ℓ (blocks before ℓ are unaffected)."""
    out: list[Tensor | None] = [None] * n
    with apply(model, steer):
        for rows, segment in zip(batches, segments):
            final = segment.run(segment.residual)
            logprobs = to_result(torch.log_softmax(readout(model, final[:, -1, :]).float(), dim=-1))
            for j, i in enumerate(rows):
                out[i] = logprobs[j]
    return torch.stack(out)  # type: ignore[arg-type]


def mean_kl(base: Float[Tensor, "n vocab"], other: Float[Tensor, "n vocab"]) -> float:
    """Mean over rows of KL(base ‖ other) for log-probability rows."""
    return float((base.exp() * (base - other)).sum(-1).mean())


def candidate_pairs(
    model: Any,
    candidates: CandidateDirections,
    *,
    max_layer_frac: float = 0.8,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """The (layer, pos) pairs that would be scored: ℓ < ``max_layer_frac``·n_layers, within the
    requested ``layers``/``positions``."""
    if not 0 < max_layer_frac <= 1:
        raise ValueError(f"max_layer_frac must be in (0, 1], got {max_layer_frac}.")
    L = n_layers(model)
    for name, want, have in (("layers", layers, candidates.layers), ("positions", positions, candidates.positions)):
        missing = [x for x in (want or []) if x not in have]
        if missing:
            raise ValueError(f"Requested {name} {missing} have no candidates; the candidates cover {name} {have}.")
    use_layers = [l for l in candidates.layers if (layers is None or l in layers) and l < max_layer_frac * L]
    use_pos = [p for p in candidates.positions if positions is None or p in positions]
    if not use_layers or not use_pos:
        raise ValueError(
            f"No candidates to score: candidate layers {candidates.layers}, allowed below "
            f"{max_layer_frac}·{L} = {max_layer_frac * L:g}"
            + (f" and within {list(layers)}" if layers is not None else "")
            + "."
        )
    return [(l, p) for l in use_layers for p in use_pos]


@torch.no_grad()
def score_candidates(
    model: Any,
    candidates: CandidateDirections,
    harmful_val: Sequence[PromptLike],
    harmless_val: Sequence[PromptLike],
    *,
    max_layer_frac: float = 0.8,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    done: dict[tuple[int, int], CandidateScore] | None = None,
    on_score: Callable[[CandidateScore], None] | None = None,
) -> CandidateScores:
    """Bypass, induce and KL scores of every candidate (module doc); no filter is applied.

    Per candidate: one pass over harmful + harmless prompts with r̂ ablated (bypass and KL) and
    one over harmless prompts with r added, started from the cached residual entering block ℓ.
    ``done`` maps (layer, pos) to scores from an interrupted run (not recomputed); ``on_score``
    is called after each new candidate (e.g. to checkpoint).
    """
    if candidates.directions.shape[-1] != d_model(model):
        raise ValueError(
            f"Candidates have width {candidates.directions.shape[-1]} but the model has d_model = {d_model(model)}."
        )
    pairs = candidate_pairs(model, candidates, max_layer_frac=max_layer_frac, layers=layers, positions=positions)
    bad = prepare_prompts(model, harmful_val, chat=chat, system=system)
    good = prepare_prompts(model, harmless_val, chat=chat, system=system)
    ids = refusal_token_ids(chat_tokenizer(model))
    both = bad + good

    base, baseline = _baseline(model, both, len(bad), ids, batch_size)
    base_good = base[len(bad) :]

    done = dict(done or {})
    todo = [pair for pair in pairs if pair not in done]
    good_batches = length_sorted_batches(model, good, batch_size)
    L = n_layers(model)
    segments: dict[int, list[ResidualSegment]] = {}
    scores: dict[tuple[int, int], CandidateScore] = {pair: done[pair] for pair in pairs if pair in done}
    started = time.perf_counter()
    for layer, pos in tqdm(todo, desc="scoring candidates", disable=not progress):
        raw = candidates.vector(layer, pos)
        scale = float(candidates.harmful_mean[candidates.layers.index(layer), candidates.positions.index(pos)].norm())
        if not float(raw.norm()) > 1e-6 * scale:
            # Identical means (e.g. layer 0, where a template token's residual is its embedding):
            # adding r changes nothing and there is no direction to ablate: the scores are the baseline's.
            score = CandidateScore(
                layer, pos, float(raw.norm()), baseline["harmful"], baseline["harmless"], 0.0, zero_vector=True
            )
        else:
            ablated = next_token_logprobs(
                model, both, [AblateDirection(raw)], batch_size=batch_size, sort_by_length=True
            )
            if layer not in segments:  # residual entering block ℓ, shared by every position at ℓ
                segments = {
                    layer: [
                        ResidualSegment.capture(model, as_batch(model, [good[i] for i in rows]), start=layer, stop=L)
                        for rows in good_batches
                    ]
                }
            steer = AddVector(raw, resid_hook(layer))
            added = _added_logprobs(model, good_batches, segments[layer], len(good), steer)
            score = CandidateScore(
                layer=layer,
                pos=pos,
                norm=float(raw.norm()),
                bypass=float(log_odds(ablated[: len(bad)], ids).mean()),
                induce=float(log_odds(added, ids).mean()),
                kl=mean_kl(base_good, ablated[len(bad) :]),
            )
        scores[(layer, pos)] = score
        if on_score is not None:
            on_score(score)
    seconds = (time.perf_counter() - started) / len(todo) if todo else 0.0
    return CandidateScores([scores[p] for p in pairs], baseline, max_layer_frac, len(bad), len(good), seconds)


def _baseline(
    model: Any, prompts: Sequence[Any], n_harmful: int, ids: Any, batch_size: int
) -> tuple[Tensor, dict[str, float]]:
    """Unsteered next-token log-probs of harmful + harmless prompts, and their mean refusal log-odds."""
    base = next_token_logprobs(model, prompts, batch_size=batch_size, sort_by_length=True)
    return base, {
        "harmful": float(log_odds(base[:n_harmful], ids).mean()),
        "harmless": float(log_odds(base[n_harmful:], ids).mean()),
    }


def choose_direction(
    candidates: CandidateDirections,
    scored: CandidateScores,
    *,
    kl_threshold: float = 0.1,
    induce_threshold: float = 0.0,
) -> Selection:
    """Apply the filters to scored candidates and return the lowest-bypass survivor.

    Cheap: re-run it with other thresholds on the same :class:`CandidateScores`. Raises
    :class:`NoDirectionError` (naming the best candidate per criterion) if none survives.
    """
    scores = []
    for s in scored.scores:
        why = []
        if s.zero_vector:
            why.append("zero vector")
        else:
            if not (_finite(s.kl) and s.kl <= kl_threshold):
                why.append(f"kl {s.kl:.3g} > {kl_threshold:g}")
            if not (_finite(s.induce) and s.induce > induce_threshold):
                why.append(f"induce {s.induce:.3g} ≤ {induce_threshold:g}")
            if not _finite(s.bypass):
                why.append("bypass not finite")
        scores.append(replace(s, rejected="; ".join(why)))
    thresholds = {
        "max_layer_frac": scored.max_layer_frac,
        "kl_threshold": kl_threshold,
        "induce_threshold": induce_threshold,
    }

    passing = [s for s in scores if not s.rejected]
    if not passing:
        real = [s for s in scores if not s.zero_vector]

        def best(key: str, lowest: bool) -> str:
            finite = [s for s in real if _finite(getattr(s, key))]
            if not finite:
                return f"{key}: no finite score"
            s = (min if lowest else max)(finite, key=lambda c: getattr(c, key))
            return f"{'lowest' if lowest else 'highest'} {key} {getattr(s, key):.4g} at layer {s.layer}, pos {s.pos}"

        raise NoDirectionError(
            f"No candidate direction passed the filters (kl ≤ {kl_threshold:g} and induce > {induce_threshold:g}) "
            f"among {len(scores)} candidates; best per criterion: {best('kl', True)}; {best('induce', False)}; "
            f"{best('bypass', True)} (baseline refusal log-odds: harmful {scored.baseline['harmful']:.3g}, harmless "
            f"{scored.baseline['harmless']:.3g}). Use more or different prompts or other layers/positions, or set the "
            f"thresholds deliberately.",
            scores,
            scored.baseline,
        )
    chosen = min(passing, key=lambda s: s.bypass)
    raw = candidates.vector(chosen.layer, chosen.pos).clone()
    return Selection(
        layer=chosen.layer,
        pos=chosen.pos,
        direction=raw / raw.norm(),
        raw=raw,
        scores=scores,
        baseline=dict(scored.baseline),
        thresholds=thresholds,
        n_harmful_val=scored.n_harmful_val,
        n_harmless_val=scored.n_harmless_val,
        seconds_per_candidate=scored.seconds_per_candidate,
    )


def select_direction(
    model: Any,
    candidates: CandidateDirections,
    harmful_val: Sequence[PromptLike],
    harmless_val: Sequence[PromptLike],
    *,
    max_layer_frac: float = 0.8,
    kl_threshold: float = 0.1,
    induce_threshold: float = 0.0,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> Selection:
    """Score the candidates on validation prompts and pick the refusal direction (see module doc):
    :func:`score_candidates` then :func:`choose_direction`.

    ``layers``/``positions`` restrict which candidates are scored (to save compute); candidates
    at layers ≥ ``max_layer_frac``·n_layers are never scored. Prompts are user messages
    (``chat=False``: already formatted texts).
    """
    scored = score_candidates(
        model,
        candidates,
        harmful_val,
        harmless_val,
        max_layer_frac=max_layer_frac,
        layers=layers,
        positions=positions,
        chat=chat,
        system=system,
        batch_size=batch_size,
        progress=progress,
    )
    return choose_direction(candidates, scored, kl_threshold=kl_threshold, induce_threshold=induce_threshold)
