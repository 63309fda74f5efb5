"""The one forward path: tokens in, interventions on, activations and logits out.

Every part of melbo_tl that runs the model on prompts (evaluation, direction finding, the
optimizers' set-up, every analysis) goes through :func:`run_forward`, which

1. tokenizes already-formatted texts (left padding, no extra BOS) or takes a :class:`TokenBatch`;
2. moves the batch to the model's device (:mod:`melbo_tl.placement`);
3. publishes the :class:`~melbo_tl.steering.layout.TokenLayout`, so a position spec never steers
   padding and knows prompt from completion tokens;
4. attaches the interventions and any recording hooks;
5. runs the model, optionally stopping at the input of a block (``stop_at``) or unembedding only
   the last column (``logits="last"``);
6. returns a :class:`Forward` with what was asked for.

Gradients are the caller's choice (wrap the call in ``torch.no_grad()`` or not). Steered
generation decodes step by step with a KV cache and keeps its own loop (``generate.py``), using
the same batching, placement and layout.

>>> fwd = run_forward(model, texts, [AddVector(v, "blocks.8.hook_resid_pre")], record=["blocks.14.hook_resid_pre"])
>>> fwd.activations["blocks.14.hook_resid_pre"].shape   # [batch, pos, d_model]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import to_model, to_result
from melbo_tl.prompts import TokenBatch, tokenize
from melbo_tl.steering.interventions import HookPair, Intervention, apply
from melbo_tl.steering.layout import TokenLayout, token_layout
from melbo_tl.steering.sites import check_hook, check_layer, hook_layer, n_layers

Logits = Literal["all", "last", "none"]

# Keyword arguments a decoder layer gets that belong to one forward pass, not to the batch.
STEP_KWARGS = ("past_key_values", "past_key_value", "cache", "use_cache", "cache_position")


class _Stop(Exception):
    """Ends a forward pass once everything asked for is in hand."""


@dataclass
class Forward:
    """What one forward pass produced.

    Fields:
        batch: the tokens, on the model's device.
        layout: the token layout that was published (which real token each column holds).
        logits: ``[batch, pos, vocab]`` (``logits="all"``), ``[batch, vocab]`` at the last column
            (``"last"``), or None (``"none"``, or when stopped early).
        activations: ``{hook name: tensor}`` for every recorded hook (detached unless asked).
        residual: ``[batch, pos, d_model]`` the residual entering block ``stop_at`` (if given).
        block_kwargs: what the Hugging Face model passes its decoder layers for this batch
            (rotary embeddings, attention mask), captured with ``stop_at``; per-step entries
            (cache, ``use_cache``) removed.
    """

    batch: TokenBatch
    layout: TokenLayout
    logits: Tensor | None = None
    activations: dict[str, Tensor] = field(default_factory=dict)
    residual: Tensor | None = None
    block_kwargs: dict[str, Any] = field(default_factory=dict)


def as_batch(model: Any, inputs: TokenBatch | str | Sequence[str]) -> TokenBatch:
    """Formatted texts (or a ready batch) as a left-padded batch on the model's device."""
    if isinstance(inputs, TokenBatch):
        batch = inputs
    else:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ValueError("No texts to run the model on.")
        batch = tokenize(chat_tokenizer(model), texts)
    return TokenBatch(
        *(to_model(t, model) for t in (batch.input_ids, batch.attention_mask, batch.token_index, batch.lengths))
    )


def _deepest_block(names: Sequence[str]) -> int | None:
    layers = [hook_layer(n) for n in names]
    return None if any(l is None for l in layers) or not layers else max(l for l in layers if l is not None)


def readout(model: Any, residual: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch vocab"]:
    """Logits of final-layer residuals (after the last block): final norm, then unembedding."""
    return model.unembed(model.ln_final(residual[:, None, :]))[:, 0]


@contextlib.contextmanager
def _stop_hooks(model: Any, stop_at: int | None, keep_kwargs: bool, last: bool, out: dict[str, Any]) -> Iterator[None]:
    handles = []
    if stop_at is not None:

        def grab_input(module: Any, args: tuple, kwargs: dict) -> None:
            out["residual"] = args[0] if args else kwargs["hidden_states"]
            if keep_kwargs:
                out["kwargs"] = {k: v for k, v in kwargs.items() if k not in STEP_KWARGS and k != "hidden_states"}
            raise _Stop

        handles.append(model.blocks[stop_at].register_forward_pre_hook(grab_input, with_kwargs=True))
    elif last:

        def grab_last(module: Any, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            out["final"] = hidden[:, -1, :]
            raise _Stop

        handles.append(model.blocks[n_layers(model) - 1].register_forward_hook(grab_last))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_forward(
    model: Any,
    inputs: TokenBatch | str | Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    record: Sequence[str] = (),
    hooks: Sequence[HookPair] = (),
    stop_at: int | None = None,
    logits: Logits = "all",
    prompt_lengths: Int[Tensor, " batch"] | None = None,
    detach: bool = True,
    keep_block_kwargs: bool = False,
) -> Forward:
    """Run ``model`` on formatted ``inputs`` with ``interventions`` (see the module docstring).

    ``record``: hook names whose activations to return (validated). ``hooks``: extra
    ``(name, fn)`` pairs attached after the interventions. ``stop_at=k``: run blocks 0…k−1 only
    and return the residual entering block k (hooks at block k and later never fire). With
    ``logits="none"`` and no ``stop_at``, the pass stops after the deepest recorded block.
    ``logits="last"``: only the last column goes through the final norm and unembedding (hooks
    after the last block do not fire). ``prompt_lengths``: rows' prompt lengths for the layout
    when the batch holds prompt + completion (teacher forcing); default: all tokens are prompt.
    """
    if logits not in ("all", "last", "none"):
        raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}.")
    batch = as_batch(model, inputs)
    for name in record:
        check_hook(model, name)
    if stop_at is not None:
        check_layer(model, stop_at, what="stop_at")
    elif logits == "none" and record:
        deepest = _deepest_block(record)
        if deepest is not None and deepest + 1 < n_layers(model):
            stop_at = deepest + 1
    lengths = batch.lengths if prompt_lengths is None else to_model(prompt_lengths, model)
    layout = TokenLayout(batch.token_index, lengths)
    recorded: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(acts: Tensor, hook: Any) -> Tensor:
            recorded[name] = acts.detach() if detach else acts
            return acts

        return keep

    caught: dict[str, Any] = {}
    pairs = [(name, keeper(name)) for name in record] + list(hooks)
    result: Any = None
    with apply(model, *interventions), model.hooks(fwd_hooks=pairs), token_layout(layout):
        with _stop_hooks(model, stop_at, keep_block_kwargs, logits == "last", caught):
            with contextlib.suppress(_Stop):
                result = model(batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        if "final" in caught:
            result = readout(model, caught["final"])
    return Forward(
        batch=batch,
        layout=layout,
        logits=None if logits == "none" or stop_at is not None else result,
        activations=recorded,
        residual=caught.get("residual"),
        block_kwargs=caught.get("kwargs", {}),
    )


def length_sorted_batches(model: Any, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of ``texts`` grouped into batches of similar token length (less padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
    tok = chat_tokenizer(model)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def next_token_logprobs(
    model: Any,
    texts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 16,
    sort_by_length: bool = False,
) -> Float[Tensor, "n vocab"]:
    """Log-softmax of the next-token logits after each formatted text, interventions active.

    Only the last column is unembedded; rows come back in the order given, as CPU float32.
    Texts run in consecutive batches of ``batch_size``, or with ``sort_by_length`` in batches of
    similar length (less padding) — only for interventions that treat every row alike, since a
    batch then holds other rows than the caller's.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("No texts given.")
    if sort_by_length:
        batches = length_sorted_batches(model, texts, batch_size)
    else:
        batches = [list(range(s, min(s + batch_size, len(texts)))) for s in range(0, len(texts), batch_size)]
    out: list[Tensor | None] = [None] * len(texts)
    for rows in batches:
        fwd = run_forward(model, [texts[i] for i in rows], interventions, logits="last")
        assert fwd.logits is not None
        logprobs = to_result(torch.log_softmax(fwd.logits.float(), dim=-1))
        for j, i in enumerate(rows):
            out[i] = logprobs[j]
    return torch.stack(out)  # type: ignore[arg-type]
