"""Which real token each column of the current forward pass holds.

A hook only sees a ``[batch, pos, d]`` tensor. To steer "the last 2 prompt tokens" of a
left-padded batch, or only prompt tokens while generating with a KV cache (where later steps
see one column), it needs to know which token every column is. Code that runs the model
(steered generation, the MELBO optimizer) publishes that here; a plain ``model(tokens)`` call
with no layout set is read as one unpadded prompt per row.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor


@dataclass
class TokenLayout:
    """Fields: ``token_index`` [batch, pos] index of each column in its row (-1 = padding);
    ``prompt_length`` [batch] number of prompt tokens per row (later indices are generated)."""

    token_index: Int[Tensor, "batch pos"]
    prompt_length: Int[Tensor, " batch"]


_CURRENT: contextvars.ContextVar[TokenLayout | None] = contextvars.ContextVar("melbo_token_layout", default=None)


@contextlib.contextmanager
def token_layout(layout: TokenLayout) -> Iterator[TokenLayout]:
    token = _CURRENT.set(layout)
    try:
        yield layout
    finally:
        _CURRENT.reset(token)


def current_layout(batch: int, pos: int, device: torch.device) -> TokenLayout:
    """The published layout, or an unpadded prompt of ``pos`` tokens per row."""
    layout = _CURRENT.get()
    if layout is not None and layout.token_index.shape == (batch, pos):
        return layout
    if layout is not None:
        raise RuntimeError(
            f"A token layout for shape {tuple(layout.token_index.shape)} is active but a hook saw "
            f"activations of shape ({batch}, {pos}, …)."
        )
    index = torch.arange(pos, device=device).expand(batch, pos)
    return TokenLayout(index, torch.full((batch,), pos, device=device))
