"""Candidate refusal directions by difference in means (Arditi et al.).

For every layer ℓ and post-instruction position i (the chat-template tokens after the user's
message, e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``), the candidate is

    r_ℓ,i = mean over harmful prompts of ``blocks.ℓ.hook_resid_pre`` at i
          − mean over harmless prompts of the same.

Positions are negative offsets from the end of the chat-formatted prompt (-1 = the last
token), so they name the same template token in every prompt whatever its length; batches are
left-padded, so offset -k is column -k of every row.

Example::

    model = load_model()
    cands = diff_in_means(model, harmful_prompts, harmless_prompts)
    cands.directions.shape          # [n_layers, n_pos, d_model]
    cands.vector(layer=12, pos=-1)  # the raw (unnormalized) candidate r_12,-1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.forward import as_batch, run_forward
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.placement import model_device, to_result
from melbo_tl.prompts import PromptLike, prepare_prompts
from melbo_tl.steering.sites import check_layer, n_layers, resid_hook

_MARKER = "Xq7 melbo instruction marker"


def post_instruction_positions(tokenizer: Any) -> list[int]:
    """Negative offsets ``[-k, …, -1]`` of the chat-template tokens that follow the user's message.

    Found by formatting one user message (with the generation prompt) and counting the tokens
    that start at or after the end of its content: for ChatML templates these are
    ``<|im_end|>``, ``\\n``, ``<|im_start|>``, ``assistant``, ``\\n``. A token that straddles the
    end of the content counts as instruction, not template.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "This tokenizer has no chat template, so there are no post-instruction positions; pass positions explicitly."
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _MARKER}], tokenize=False, add_generation_prompt=True
    )
    end = text.rfind(_MARKER)
    if end < 0:
        raise ValueError("The chat template does not reproduce the user message verbatim; pass positions explicitly.")
    end += len(_MARKER)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        k = sum(1 for start, stop in enc["offset_mapping"] if start >= end and stop > start)
    else:  # slow tokenizers have no offsets: tokenize the template's tail on its own
        k = len(tokenizer(text[end:], add_special_tokens=False)["input_ids"]) if text[end:] else 0
    if k == 0:
        raise ValueError(
            "The chat template adds no tokens after the user message; pass positions explicitly (e.g. [-1])."
        )
    return list(range(-k, 0))


def _check_positions(positions: Sequence[int]) -> list[int]:
    positions = [int(p) for p in positions]
    if not positions:
        raise ValueError("No positions given; pass negative offsets from the prompt's end, e.g. [-5, …, -1].")
    bad = [p for p in positions if p >= 0]
    if bad:
        raise ValueError(f"Positions {bad} are not negative offsets from the end of the prompt (-1 = last token).")
    if len(set(positions)) != len(positions):
        raise ValueError(f"Positions {positions} repeat an offset.")
    return positions


def _check_layers(model: Any, layers: Sequence[int]) -> list[int]:
    layers = [check_layer(model, int(l)) for l in layers]
    if not layers:
        raise ValueError(f"No layers given; valid layers are 0…{n_layers(model) - 1}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"Layers {layers} repeat a layer.")
    return layers


@torch.no_grad()
def mean_activations(
    model: Any,
    texts: Sequence[str],
    *,
    layers: Sequence[int],
    positions: Sequence[int],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "mean activations",
) -> Float[Tensor, "layer pos d_model"]:
    """Mean of ``blocks.ℓ.hook_resid_pre`` over ``texts`` at each negative offset in ``positions``.

    ``texts`` are already chat-formatted (see :func:`melbo_tl.prompts.prepare_prompts`). Runs in
    left-padded batches, stopping after the last requested layer; only running sums are kept.
    Returns float32 ``[len(layers), len(positions), d_model]`` in the order given.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("No texts given to average over.")
    layers, positions = _check_layers(model, layers), _check_positions(positions)
    device = model_device(model)
    sums = torch.zeros(len(layers), len(positions), int(model.cfg.d_model), dtype=torch.float64, device=device)
    index = torch.tensor(positions, device=device)

    def accumulate(slot: int):
        def hook(acts: Tensor, hook: Any) -> Tensor:
            sums[slot] += acts[:, index, :].double().sum(0)
            return acts

        return hook

    pairs = [(resid_hook(l), accumulate(i)) for i, l in enumerate(layers)]
    stop_at = max(layers) + 1 if max(layers) + 1 < n_layers(model) else None
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2):
        batch = as_batch(model, list(texts[start : start + batch_size]))
        short = int(batch.lengths.min())
        if -min(positions) > short:
            raise ValueError(f"Position {min(positions)} reaches before the start of a {short}-token prompt.")
        run_forward(model, batch, hooks=pairs, stop_at=stop_at, logits="none")
    return to_result(sums / len(texts))


@dataclass
class CandidateDirections:
    """Difference-in-means candidates for every (layer, position) pair.

    Fields:
        directions: ``[n_layers_used, n_pos, d_model]`` raw (unnormalized) harmful − harmless means.
        layers: the block index of each row (the vector lives at ``blocks.ℓ.hook_resid_pre``).
        positions: the negative offset (from the prompt's end) of each column.
        harmful_mean, harmless_mean: the two means, same shape as ``directions``.
        n_harmful, n_harmless: how many prompts each mean is over.
    """

    directions: Float[Tensor, "layer pos d_model"]
    layers: list[int]
    positions: list[int]
    harmful_mean: Float[Tensor, "layer pos d_model"]
    harmless_mean: Float[Tensor, "layer pos d_model"]
    n_harmful: int
    n_harmless: int

    def vector(self, layer: int, pos: int) -> Float[Tensor, " d_model"]:
        """The raw candidate r_layer,pos."""
        if layer not in self.layers or pos not in self.positions:
            raise ValueError(
                f"No candidate at layer {layer}, pos {pos}: layers are {self.layers}, positions {self.positions}."
            )
        return self.directions[self.layers.index(layer), self.positions.index(pos)]


def diff_in_means(
    model: Any,
    harmful: Sequence[PromptLike],
    harmless: Sequence[PromptLike],
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> CandidateDirections:
    """Candidate directions r_ℓ,i = mean_harmful − mean_harmless of ``blocks.ℓ.hook_resid_pre``.

    ``harmful``/``harmless`` are user messages, formatted with the chat template (``chat=False``:
    already formatted texts). ``layers`` defaults to every block, ``positions`` to
    :func:`post_instruction_positions` of the model's tokenizer.
    """
    layers = list(range(n_layers(model))) if layers is None else _check_layers(model, layers)
    positions = post_instruction_positions(chat_tokenizer(model)) if positions is None else _check_positions(positions)
    bad = prepare_prompts(model, harmful, chat=chat, system=system)
    good = prepare_prompts(model, harmless, chat=chat, system=system)
    opts = dict(layers=layers, positions=positions, batch_size=batch_size, progress=progress)
    mu_bad = mean_activations(model, bad, desc="harmful means", **opts)
    mu_good = mean_activations(model, good, desc="harmless means", **opts)
    return CandidateDirections(mu_bad - mu_good, list(layers), list(positions), mu_bad, mu_good, len(bad), len(good))
