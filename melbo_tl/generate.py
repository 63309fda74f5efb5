"""Steered generation: batched, left-padded, with a KV cache and per-row vectors.

The loop is written here rather than delegated to ``bridge.generate`` so that every forward
pass publishes a :class:`~melbo_tl.steering.TokenLayout`: interventions then act on exactly the
real tokens their position spec names (never on padding), whether a step sees the whole
prompt or one new column. Giving an :class:`AddVector` a ``[batch, d_model]`` vector steers each
row by its own vector, so K vectors are evaluated in one batched generate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.forward import as_batch
from melbo_tl.models.kv_cache import cached_decoding, check_cache_filled
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import model_device
from melbo_tl.prompts import Positions, PromptLike, TokenBatch, prepare_prompts, tokenize
from melbo_tl.steering.interventions import AddVector, Intervention, PerRow, apply
from melbo_tl.steering.layout import TokenLayout, token_layout


@dataclass
class Completion:
    """Fields: ``prompt`` (the formatted prompt text), ``text`` (decoded completion, special
    tokens removed), ``token_ids`` (generated ids up to and excluding the stop token),
    ``finished`` (True if a stop token was produced within ``max_new_tokens``)."""

    prompt: str
    text: str
    token_ids: list[int]
    finished: bool


def stop_token_ids(model: Any) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS plus any the model's generation config lists."""
    ids: set[int] = set()
    tok = chat_tokenizer(model)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_cfg = getattr(getattr(model, "original_model", None), "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in (extra if isinstance(extra, (list, tuple)) else [extra]))
    return ids


def _sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _rows_of(intervention: Intervention, start: int, stop: int) -> Intervention:
    """The intervention restricted to batch rows [start, stop) if it carries per-row tensors."""
    if isinstance(intervention, PerRow) and intervention.n_rows is not None:
        return intervention.rows(start, stop)
    return intervention


@torch.no_grad()
def _generate_batch(
    model: Any,
    batch: TokenBatch,
    interventions: Sequence[Intervention],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    stops: set[int],
) -> tuple[list[list[int]], list[bool]]:
    batch = as_batch(model, batch)
    device = batch.input_ids.device
    n = batch.input_ids.shape[0]
    stop_tensor = torch.tensor(sorted(stops), device=device)
    pad = min(stops) if stops else 0
    generated = torch.empty((n, 0), dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    mask = batch.attention_mask
    inputs = batch.input_ids
    layout = TokenLayout(batch.token_index, batch.lengths)
    with apply(model, *interventions), cached_decoding(model) as cache:
        for step in range(max_new_tokens):
            with token_layout(layout):
                logits = model(inputs, attention_mask=mask, past_key_values=cache, use_cache=True)
            if step == 0:
                check_cache_filled(cache, inputs.shape[1])
            token = _sample(logits[:, -1, :], temperature, top_p, generator)
            token = torch.where(done, torch.full_like(token, pad), token)
            generated = torch.cat([generated, token[:, None]], dim=1)
            done |= torch.isin(token, stop_tensor)
            if bool(done.all()):
                break
            inputs = token[:, None]
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
            layout = TokenLayout((batch.lengths + step)[:, None], batch.lengths)
    out: list[list[int]] = []
    finished: list[bool] = []
    for row in generated.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        out.append(row if cut is None else row[:cut])
        finished.append(cut is not None)
    return out, finished


def generate(
    model: Any,
    prompts: Sequence[PromptLike] | str,
    interventions: Sequence[Intervention] | Intervention | None = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[Completion]:
    """Generate a completion per prompt with the interventions active on every token.

    ``temperature=0`` is greedy. Interventions whose vectors are ``[n_prompts, d_model]`` steer
    prompt i with row i. Batches of ``batch_size`` prompts run with left padding.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}.")
    if interventions is None:
        interventions = []
    elif not isinstance(interventions, (list, tuple)):
        interventions = [interventions]
    texts = prepare_prompts(model, prompts, chat=chat, system=system)
    for iv in interventions:
        iv.hooks(model)  # validate before any compute
        if isinstance(iv, PerRow) and iv.n_rows is not None and iv.n_rows != len(texts):
            raise ValueError(f"Per-row vectors for {iv.n_rows} rows but {len(texts)} prompts.")
    tok = chat_tokenizer(model)
    generator = torch.Generator(device=model_device(model)).manual_seed(seed) if temperature > 0 else None
    stops = stop_token_ids(model)
    results: list[Completion] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
        chunk = texts[start : start + batch_size]
        chunk_ivs = [_rows_of(iv, start, start + len(chunk)) for iv in interventions]
        batch = tokenize(tok, chunk)
        for iv in chunk_ivs:  # a position spec must name real prompt tokens in every row
            if isinstance(getattr(iv, "positions", None), Positions):
                for n in batch.lengths.tolist():
                    iv.positions.resolve(n)
        ids, finished = _generate_batch(
            model,
            batch,
            chunk_ivs,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            stops=stops,
        )
        for text, row, fin in zip(chunk, ids, finished):
            results.append(Completion(text, tok.decode(row, skip_special_tokens=True), row, fin))
    return results


def generate_per_vector(
    model: Any,
    prompt: PromptLike,
    vectors: Float[Tensor, "n d_model"],
    *,
    hook: str,
    positions: Positions | str = "all",
    scale: float = 1.0,
    **kwargs: Any,
) -> list[Completion]:
    """One completion of ``prompt`` per vector, all vectors in one batched generate."""
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [n, d_model], got shape {tuple(vectors.shape)}.")
    steer = AddVector(vectors, hook, Positions.parse(positions), scale)
    return generate(model, [prompt] * vectors.shape[0], [steer], **kwargs)
