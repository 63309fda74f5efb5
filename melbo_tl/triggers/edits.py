"""Edits of a chat prompt's user message, at the token level.

A trigger search changes only the user's words, never the chat template around them, so a
prompt is held as three token lists: the template before the message (``prefix``), the message
(``content``) and the template after it up to the assistant's turn (``suffix``). An edit is a
short list of operations on ``content``: substitute the token at position ``p`` or insert a
token before position ``p`` (``p = len(content)`` appends). Candidate tokens come from a
typeable vocabulary: tokens that are not special, decode to printable ASCII and encode back to
themselves, so every trigger found can be typed as text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.prompts import format_chat

SUB, INS = "sub", "ins"
Op = tuple[str, int, int]  # (kind, position, token id)


@dataclass(frozen=True)
class EditablePrompt:
    """A chat prompt split into template prefix, user message and template suffix (token ids).

    Fields: ``text`` (the user message as given), ``prefix``, ``content``, ``suffix``; with
    ``exact`` False the three pieces tokenized apart differ from the formatted prompt tokenized
    whole (scores then refer to the pieces; verification always re-tokenizes the text).
    """

    text: str
    prefix: tuple[int, ...]
    content: tuple[int, ...]
    suffix: tuple[int, ...]
    exact: bool

    @classmethod
    def from_text(cls, model: Any, text: str) -> EditablePrompt:
        tok = chat_tokenizer(model)
        full = format_chat(tok, text)
        at = full.find(text)
        if at < 0:
            raise ValueError(f"The chat template does not contain the prompt {text!r} verbatim; cannot edit it.")

        def ids(s: str) -> tuple[int, ...]:
            return tuple(tok(s, add_special_tokens=False)["input_ids"]) if s else ()

        prefix, content, suffix = ids(full[:at]), ids(text), ids(full[at + len(text) :])
        if not content:
            raise ValueError("The prompt has no tokens to edit.")
        return cls(text, prefix, content, suffix, prefix + content + suffix == ids(full))

    def ids(self, content: Sequence[int] | None = None) -> list[int]:
        """Prefix + ``content`` (default: the unedited message) + suffix."""
        return [*self.prefix, *(self.content if content is None else content), *self.suffix]


def apply_ops(content: Sequence[int], ops: Sequence[Op]) -> tuple[int, ...]:
    """``content`` after the operations, applied in order (positions refer to the list as it is then)."""
    out = list(content)
    for kind, pos, token in ops:
        if kind == SUB:
            if not 0 <= pos < len(out):
                raise ValueError(f"Substitution at {pos} is outside a {len(out)}-token message.")
            out[pos] = token
        elif kind == INS:
            if not 0 <= pos <= len(out):
                raise ValueError(f"Insertion at {pos} is outside a {len(out)}-token message (valid 0…{len(out)}).")
            out.insert(pos, token)
        else:
            raise ValueError(f"Unknown edit kind {kind!r}; valid: {SUB!r}, {INS!r}.")
    return tuple(out)


def describe_ops(tokenizer: Any, content: Sequence[int], ops: Sequence[Op]) -> str:
    """A readable account of an edit, e.g. ``sub 5: '1' → '0'; ins 9: ' umbrella'``."""
    parts, current = [], list(content)
    for kind, pos, token in ops:
        new = repr(tokenizer.decode([token]))
        if kind == SUB:
            parts.append(f"sub {pos}: {tokenizer.decode([current[pos]])!r} → {new}")
        else:
            parts.append(f"ins {pos}: {new}")
        current = list(apply_ops(current, [(kind, pos, token)]))
    return "; ".join(parts) or "(no edit)"


def _printable(text: str) -> bool:
    return bool(text) and text.isascii() and text.isprintable() and bool(text.strip())


@functools.lru_cache(maxsize=4)
def _typeable(tokenizer_key: tuple[str, int], tokenizer: Any, width: int) -> Tensor:
    n = min(len(tokenizer), width)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    again = tokenizer(texts, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(width, dtype=torch.bool)
    for i, (text, ids) in enumerate(zip(texts, again)):
        mask[i] = i not in special and _printable(text) and list(ids) == [i]
    return mask


def typeable_tokens(model: Any) -> Bool[Tensor, " vocab"]:
    """Tokens a trigger may use: not special, printable ASCII, and encoding back to themselves
    (cached per tokenizer; ``[d_vocab]``, False beyond the tokenizer's size)."""
    tok = chat_tokenizer(model)
    key = (str(getattr(tok, "name_or_path", "")), len(tok))
    return _typeable(key, tok, int(model.cfg.d_vocab))
