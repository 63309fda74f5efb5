"""The running batch: a KV cache whose rows belong to different requests, which rows can leave and join.

Rows are left-padded: every row's newest token sits in the last column, padding (mask 0) on the
left. A finished row leaves by selecting the other rows out of every cache tensor; columns that
are padding in every remaining row are then cut off, so the cache is never wider than its
longest live row. New rows are prefilled on their own (their own cache, their own padding) and
joined by left-padding the narrower of the two caches to the wider one's width. Positions stay
right because the bridge derives each row's position ids from its attention mask (the count of
real tokens before it), not from the column index.

Only plain ``DynamicLayer`` caches (every layer attends over all earlier tokens) can be joined
this way; :func:`check_joinable` says so up front for models whose cache is anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor


def _layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", []))


def check_joinable(cache: Any) -> None:
    """Raise a ValueError unless every layer of ``cache`` is a plain DynamicLayer."""
    from transformers.cache_utils import DynamicLayer

    odd = sorted({type(layer).__name__ for layer in _layers(cache) if type(layer) is not DynamicLayer})
    if odd or not _layers(cache):
        raise ValueError(
            f"melbo serve batches requests by joining KV caches, which needs every layer to be a full-attention "
            f"DynamicLayer; this model's cache has {odd or 'no layers'} (sliding-window or hybrid attention)."
        )


def _pad_left(t: Tensor, width: int, dim: int) -> Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class Batch:
    """Fields: ``cache`` (a DynamicCache, one row per live row); ``mask`` [rows, width] 1 on real
    cached tokens; ``pending`` [rows] the token each row feeds next (sampled, not yet cached);
    ``lengths`` [rows] real tokens each row has cached; ``prompt_lengths`` [rows]."""

    cache: Any
    mask: Int[Tensor, "rows width"]
    pending: Int[Tensor, " rows"]
    lengths: Int[Tensor, " rows"]
    prompt_lengths: Int[Tensor, " rows"]

    @property
    def n_rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def keep(self, rows: Sequence[int]) -> Batch | None:
        """The batch with only ``rows`` (in that order), trimmed of all-padding columns; None if empty."""
        if not rows:
            return None
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        real = mask.any(0)
        cut = int(real.long().argmax()) if bool(real.any()) else mask.shape[1]
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[..., cut:, :]
            layer.values = layer.values.index_select(0, index)[..., cut:, :]
        return Batch(
            self.cache,
            mask[:, cut:],
            self.pending.index_select(0, index),
            self.lengths.index_select(0, index),
            self.prompt_lengths.index_select(0, index),
        )

    def join(self, other: Batch) -> Batch:
        """This batch's rows followed by ``other``'s, in one cache (``other``'s cache is consumed)."""
        width = max(self.width, other.width)
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)], dim=0)
        return Batch(
            self.cache,
            torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)], dim=0),
            torch.cat([self.pending, other.pending]),
            torch.cat([self.lengths, other.lengths]),
            torch.cat([self.prompt_lengths, other.prompt_lengths]),
        )

    def advanced(self, sampled: Int[Tensor, " rows"]) -> Batch:
        """After a decoding step cached every row's pending token: the new tokens become pending."""
        ones = torch.ones((self.n_rows, 1), dtype=self.mask.dtype, device=self.mask.device)
        return Batch(self.cache, torch.cat([self.mask, ones], dim=1), sampled, self.lengths + 1, self.prompt_lengths)
