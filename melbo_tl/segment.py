"""Run only blocks [start, stop) of a model from a cached residual.

``TransformerBridge.run_with_hooks(start_at_layer=k)`` still executes blocks 0…k−1 (it discards
their output), so it saves no compute. An optimizer that perturbs the residual at layer s and
reads layer t only needs blocks s+1…t−1. :class:`ResidualSegment` captures, in one ordinary
forward pass, the residual entering ``start`` and the keyword arguments the Hugging Face model
hands its decoder layers (rotary position embeddings, attention mask), then calls the bridge's
block modules directly. The blocks are the bridge's own, so every hook inside them still fires.

A model spread over several devices (``load_model(..., device_map="auto")``) has consecutive
blocks on different devices; :meth:`ResidualSegment.run` carries the residual and the block
arguments to each block's device (:func:`~melbo_tl.placement.module_device`) and returns the
residual where the last block left it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.forward import run_forward
from melbo_tl.placement import module_device, to_device
from melbo_tl.prompts import TokenBatch
from melbo_tl.steering.layout import TokenLayout, token_layout
from melbo_tl.steering.sites import check_layer


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
    ``block_kwargs`` what the HF model passes each decoder layer for this batch; ``layout`` the
    batch's token layout, published while the blocks run (so interventions inside them steer
    only real tokens).
    """

    model: Any
    start: int
    stop: int
    residual: Float[Tensor, "batch pos d_model"]
    block_kwargs: dict[str, Any]
    layout: TokenLayout

    @classmethod
    @torch.no_grad()
    def capture(
        cls, model: Any, batch: TokenBatch, *, start: int, stop: int, prompt_lengths: Tensor | None = None
    ) -> ResidualSegment:
        """Run the model up to block ``start`` once; ``prompt_lengths`` as in :func:`run_forward`."""
        check_layer(model, start, what="segment start")
        check_layer(model, stop, what="segment stop", allow_end=True)
        if stop < start:
            raise ValueError(f"Segment stop {stop} is before its start {start}.")
        fwd = run_forward(model, batch, stop_at=start, keep_block_kwargs=True, prompt_lengths=prompt_lengths)
        assert fwd.residual is not None
        return cls(model, start, stop, fwd.residual.detach().clone(), fwd.block_kwargs, fwd.layout)

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
        times = residual.shape[0] // base
        kwargs = _repeat_rows(self.block_kwargs, base, times)
        layout = TokenLayout(
            *(t.repeat(times, *([1] * (t.ndim - 1))) for t in (self.layout.token_index, self.layout.prompt_length))
        )
        hidden = residual
        placed: dict[torch.device, tuple[dict[str, Any], TokenLayout]] = {}
        for layer in range(self.start, self.stop):
            block = self.model.blocks[layer]
            device = module_device(block)
            if device not in placed:
                placed[device] = (
                    to_device(kwargs, device),
                    TokenLayout(*to_device((layout.token_index, layout.prompt_length), device)),
                )
            block_kwargs, block_layout = placed[device]
            with token_layout(block_layout):
                out = block(hidden.to(device), **block_kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden
