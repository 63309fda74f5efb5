"""Chat prompts and tokenization with left padding (position specs: :mod:`melbo_tl.positions`).

Prompts are formatted with the model's own chat template and tokenized without any extra BOS
(the template already carries the special tokens). Batches are left-padded so the last prompt
token of every row sits in the last column; a :class:`TokenBatch` keeps, for each column, the
index of the token within its row's real sequence (-1 on padding), so position specs always
refer to real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Int
from torch import Tensor

from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.positions import Positions  # re-exported: position specs used to live here

__all__ = ["Message", "Positions", "PromptLike", "TokenBatch", "format_chat", "left_pad", "prepare_prompts", "tokenize"]

Message = dict[str, str]
PromptLike = Union[str, Sequence[Message]]


def format_chat(
    tokenizer: Any,
    prompt: PromptLike,
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render a user message (or a message list) with the tokenizer's chat template."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("Prompt is empty; give the text of a user message.")
        messages: list[Message] = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        if not messages:
            raise ValueError("Message list is empty; give at least one {'role', 'content'} message.")
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("This tokenizer has no chat template; pass raw text with chat=False.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass
class TokenBatch:
    """Left-padded token ids of several texts.

    Fields:
        input_ids: ``[batch, pos]`` token ids, padding on the left.
        attention_mask: ``[batch, pos]`` 1 on real tokens, 0 on padding.
        token_index: ``[batch, pos]`` index of each column within its row's real tokens, -1 on padding.
        lengths: ``[batch]`` number of real tokens per row.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    token_index: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.token_index, self.lengths))
        )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> TokenBatch:
    """Stack token-id lists into a left-padded :class:`TokenBatch`."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("Cannot build a batch from an empty token sequence.")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    index = torch.full((len(rows), width), -1, dtype=torch.long, device="cpu")
    for i, row in enumerate(rows):
        n = len(row)
        ids[i, width - n :] = torch.tensor(list(row), dtype=torch.long, device="cpu")
        mask[i, width - n :] = 1
        index[i, width - n :] = torch.arange(n, device="cpu")
    return TokenBatch(ids, mask, index, torch.tensor([len(r) for r in rows], device="cpu"))


def tokenize(tokenizer: Any, texts: Sequence[str]) -> TokenBatch:
    """Tokenize already-formatted texts (no BOS added) into a left-padded batch."""
    if isinstance(texts, str):
        texts = [texts]
    for t in texts:
        if not t:
            raise ValueError("Cannot tokenize an empty text.")
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return left_pad(rows, int(pad))


_MARKER = "\u2063melbo prompt\u2063"


def _refuse_formatted(tokenizer: Any, prompts: Sequence[PromptLike], system: str | None) -> None:
    """A prompt that already starts like the chat template would be formatted twice: an error that
    names the fix (``chat=False``) rather than silently different numbers."""
    head = format_chat(tokenizer, _MARKER, system=system).split(_MARKER)[0]
    if not head.strip():
        return
    for i, p in enumerate(prompts):
        if isinstance(p, str) and p.startswith(head):
            raise ValueError(
                f"Prompt {i} is already chat-formatted (it starts with the template's {head[:40]!r}); "
                f"pass chat=False to use it as it is, or give the user message."
            )


def prepare_prompts(
    model: Any, prompts: Sequence[PromptLike], *, chat: bool = True, system: str | None = None
) -> list[str]:
    """Format prompts with the chat template (``chat=True``) or check raw texts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("No prompts given: give at least one prompt.")
    tok = chat_tokenizer(model)
    if chat:
        _refuse_formatted(tok, prompts, system)
        return [format_chat(tok, p, system=system) for p in prompts]
    texts = [str(p) for p in prompts]
    if any(not t for t in texts):
        raise ValueError("Prompt is empty; give non-empty text.")
    return texts
