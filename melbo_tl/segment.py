"""Run only blocks [start, stop) of a model from a cached residual.

``TransformerBridge.run_with_hooks(start_at_layer=k)`` still executes blocks 0…k−1 (it discards
their output), so it saves no compute. An optimizer that perturbs the residual at layer s and
reads layer t only needs blocks s+1…t−1. :class:`ResidualSegment` captures, in one ordinary
forward pass, the residual entering ``start`` and the keyword arguments the Hugging Face model
hands its decoder layers (rotary position embeddings, attention mask), then calls the bridge's
block modules directly. The blocks are the bridge's own, so every hook inside them still fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.prompts import TokenBatch
from melbo_tl.steering.sites import check_layer


class _Captured(Exception):
    """Raised by the capture hook to end the forward pass once block ``start`` is reached."""


_DROP = ("past_key_values", "past_key_value", "use_cache", "cache_position")


def _repeat_rows(obj: Any, rows: int, times: int) -> Any:
    """Tile every tensor whose leading dim is ``rows`` ``times`` times along that dim."""
    if times == 1:
        return obj
    if isinstance(obj, Tensor):
        return obj.repeat(times, *([1] * (obj.ndim - 1))) if obj.ndim and obj.shape[0] == rows and rows > 1 else obj
    if isinstance(obj, tuple):
        return tuple(_repeat_rows(o, rows, times) for o in obj)
    if isinstance(obj, dict):
        return {k: _repeat_rows(v, rows, times) for k, v in obj.items()}
    return obj


@dataclass
class ResidualSegment:
    """Blocks ``start``…``stop−1`` of ``model`` on a fixed token batch.

    Fields: ``residual`` [batch, pos, d_model] entering block ``start`` on the unsteered prompt;
    ``block_kwargs`` what the HF model passes each decoder layer for this batch.
    """

    model: Any
    start: int
    stop: int
    residual: Float[Tensor, "batch pos d_model"]
    block_kwargs: dict[str, Any]

    @classmethod
    @torch.no_grad()
    def capture(cls, model: Any, batch: TokenBatch, *, start: int, stop: int) -> ResidualSegment:
        check_layer(model, start, what="segment start")
        check_layer(model, stop, what="segment stop", allow_end=True)
        if stop < start:
            raise ValueError(f"Segment stop {stop} is before its start {start}.")
        device = next(model.parameters()).device
        batch = batch.to(device)
        seen: dict[str, Any] = {}

        def grab(module: Any, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            seen["residual"] = hidden.detach().clone()
            seen["kwargs"] = {k: v for k, v in kwargs.items() if k not in _DROP and k != "hidden_states"}
            raise _Captured  # nothing past this point is needed

        handle = model.blocks[start].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            model(batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        except _Captured:
            pass
        finally:
            handle.remove()
        return cls(model, start, stop, seen["residual"], seen["kwargs"])

    def run(self, residual: Float[Tensor, "rows pos d_model"]) -> Float[Tensor, "rows pos d_model"]:
        """The residual entering block ``stop`` given ``residual`` entering block ``start``.

        ``rows`` may be a multiple of the captured batch (row r uses prompt r mod batch), which is
        how several vectors are evaluated on the same prompts in one pass.
        """
        base = self.residual.shape[0]
        if residual.shape[0] % base or residual.shape[1:] != self.residual.shape[1:]:
            raise ValueError(
                f"Residual of shape {tuple(residual.shape)} does not fit a segment captured on "
                f"{tuple(self.residual.shape)} (rows must be a multiple of {base})."
            )
        kwargs = _repeat_rows(self.block_kwargs, base, residual.shape[0] // base)
        hidden = residual
        for layer in range(self.start, self.stop):
            out = self.model.blocks[layer](hidden, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden
