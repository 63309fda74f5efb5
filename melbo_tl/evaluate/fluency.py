"""Fluency of completions: their perplexity under the unsteered model.

A steered completion that the unsteered model finds plausible is fluent text; gibberish from
too large a steering radius has a high perplexity. Computed teacher-forced on the formatted
prompt followed by the completion's tokens, averaging the negative log-likelihood over the
completion tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from melbo_tl.forward import run_forward
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.prompts import left_pad


@torch.no_grad()
def completion_nll(
    model: Any, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, batch_size: int = 8
) -> list[float]:
    """Mean negative log-likelihood (nats/token) of each completion given its formatted prompt; NaN if empty."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
    tok = chat_tokenizer(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, completion in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            rows.append(list(ids) + list(completion))
            spans.append((len(ids), len(completion)))
        fwd = run_forward(
            model, left_pad(rows, int(pad)), prompt_lengths=torch.tensor([n for n, _ in spans], device="cpu")
        )
        assert fwd.logits is not None
        logprobs = torch.log_softmax(fwd.logits.float(), dim=-1)
        ids_on_device = fwd.batch.input_ids
        width = ids_on_device.shape[1]
        for r, (n_prompt, n_completion) in enumerate(spans):
            if n_completion == 0:
                out.append(math.nan)
                continue
            offset = width - (n_prompt + n_completion)
            cols = torch.arange(offset + n_prompt, offset + n_prompt + n_completion, device=ids_on_device.device)
            targets = ids_on_device[r, cols]
            out.append(float(-logprobs[r, cols - 1, targets].mean()))
    return out


def perplexity(nll: float) -> float:
    return math.exp(nll) if not math.isnan(nll) else math.nan


def content_nll(
    model: Any,
    texts: Sequence[str],
    prompts: Sequence[str] | None = None,
    *,
    contexts: Sequence[str] | None = None,
    batch_size: int = 16,
) -> list[float]:
    """Mean NLL (nats/token) of each text under ``model`` as the answer to its prompt: ``prompts``
    the user's messages (chat-formatted here) or ``contexts`` already formatted prompt texts;
    with neither, as plain text after a document start (:func:`document_start`). NaN for an
    empty text. Used on a completion's content (:func:`melbo_tl.evaluate.degenerate.strip_repeats`)
    to tell language from token soup."""
    from melbo_tl.prompts import prepare_prompts

    if prompts is not None and contexts is not None:
        raise ValueError("Give prompts (user messages) or contexts (formatted prompts), not both.")
    tok = chat_tokenizer(model)
    if prompts is not None:
        contexts = prepare_prompts(model, list(prompts)) if prompts else []
    if contexts is None:
        contexts = [document_start(tok)] * len(texts)
    if len(contexts) != len(texts):
        raise ValueError(f"{len(contexts)} prompts but {len(texts)} texts.")
    ids = [list(tok(t, add_special_tokens=False)["input_ids"]) if t.strip() else [] for t in texts]
    out = [math.nan] * len(texts)
    scored = [i for i, row in enumerate(ids) if row]
    nll = completion_nll(model, [contexts[i] for i in scored], [ids[i] for i in scored], batch_size=batch_size)
    for i, x in zip(scored, nll):
        out[i] = x
    return out


def document_start(tok: Any) -> str:
    """The token a plain text starts after: ``<|endoftext|>`` where the vocabulary has it (Qwen,
    SmolLM2: their BOS may be a chat-role marker), else BOS, else EOS."""
    vocab = tok.get_vocab()
    for candidate in ("<|endoftext|>", tok.bos_token, tok.eos_token):
        if candidate and candidate in vocab:
            return str(candidate)
    raise ValueError("The tokenizer has no <|endoftext|>, BOS or EOS token to start a plain text after.")
