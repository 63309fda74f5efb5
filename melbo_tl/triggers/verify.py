"""Verifying a candidate trigger: does the *unsteered* model, given the edited prompt as text,
produce the behaviour the vector elicits?

The edited message is decoded to text and run through the ordinary chat path (so a trigger is
judged exactly as a user would type it). Two measurements, no hand-written markers:

- ``similarity``: cosine between sentence embeddings of the unsteered completion of the edited
  prompt and the steered completion of the clean prompt (all-MiniLM-L6-v2 when installed,
  else the model's own mean-pooled residuals, named in the result);
- ``loglik``: mean log-probability per token of the steered completion after the edited prompt
  (weighted as the search weighted it).

A candidate is *verified* when its similarity reaches ``min_similarity`` and beats the clean
prompt's own unsteered completion by ``min_margin`` (the clean completion may already resemble
the behaviour, e.g. both answer step by step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from melbo_tl.evaluate.embeddings import embed_texts
from melbo_tl.forward import run_forward
from melbo_tl.generate import generate
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import to_result
from melbo_tl.prompts import format_chat, left_pad
from melbo_tl.triggers.scoring import token_logprobs


@dataclass
class Verification:
    """One candidate checked by greedy generation (fields as in the module docstring);
    ``completion`` is the unsteered completion of ``text``."""

    text: str
    completion: str
    similarity: float
    loglik: float
    verified: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def text_logliks(
    model: Any,
    texts: Sequence[str],
    target: Sequence[int],
    *,
    weights: Sequence[float] | None = None,
    batch_size: int = 16,
) -> list[float]:
    """Mean (or ``weights``-weighted) log-probability per token of ``target`` after each user
    message, chat-formatted."""
    tok = chat_tokenizer(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = len(target)
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        rows = [tok(format_chat(tok, t), add_special_tokens=False)["input_ids"] + list(target)
                for t in texts[start : start + batch_size]]  # fmt: skip
        fwd = run_forward(model, left_pad(rows, int(pad)))
        assert fwd.logits is not None
        lp = token_logprobs(fwd.logits, target)
        w = torch.full((n,), 1.0 / n) if weights is None else torch.tensor(list(weights))
        out += to_result(lp @ w.to(lp.device, lp.dtype)).tolist()
    return out


def verify(
    model: Any,
    texts: Sequence[str],
    *,
    steered: str,
    clean_completion: str,
    target: Sequence[int],
    max_new_tokens: int,
    min_similarity: float,
    min_margin: float,
    embedder: str = "auto",
    weights: Sequence[float] | None = None,
    batch_size: int = 16,
) -> tuple[list[Verification], float, str]:
    """Check every edited message; returns the verifications, the clean completion's own
    similarity to the steered one (the baseline) and the embedder's name."""
    texts = list(texts)
    done = generate(model, texts, max_new_tokens=max_new_tokens, batch_size=batch_size) if texts else []
    completions = [c.text for c in done]
    vecs, name = embed_texts([steered, clean_completion, *completions], model=model, embedder=embedder)
    sims = (vecs[2:] @ vecs[0]).tolist()
    baseline = float(vecs[1] @ vecs[0])
    logliks = text_logliks(model, texts, target, weights=weights, batch_size=batch_size) if texts else []
    rows = [
        Verification(t, c, round(s, 4), round(ll, 4), s >= min_similarity and s - baseline >= min_margin)
        for t, c, s, ll in zip(texts, completions, sims, logliks)
    ]
    return rows, round(baseline, 4), name
