"""Difference-in-means candidates: template positions, means by hand, input checks."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.directions import (
    diff_in_means,
    mean_activations,
    post_instruction_positions,
)
from melbo_tl.prompts import prepare_prompts, tokenize
from tests.helpers import HARMFUL, HARMLESS

# SmolLM2's ChatML template after the user message: <|im_end|> \n <|im_start|> ass istant \n
SMOL_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def _by_hand_means(model, prompts, layers, positions):
    """Mean of resid_pre at the given offsets, one unpadded prompt at a time, from run_with_cache."""
    texts = prepare_prompts(model, prompts)
    names = [f"blocks.{l}.hook_resid_pre" for l in layers]
    total = torch.zeros(len(layers), len(positions), model.cfg.d_model)
    for text in texts:
        ids = tokenize(model.chat_tokenizer, [text]).input_ids
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=names)
        for i, name in enumerate(names):
            total[i] += cache[name][0, positions, :]
    return total / len(texts)


def test_post_instruction_positions_point_at_the_assistant_header(tiny_model):
    tok = tiny_model.chat_tokenizer
    positions = post_instruction_positions(tok)
    assert positions == [-6, -5, -4, -3, -2, -1]
    for prompt in ("Hi", HARMFUL[0]):
        ids = tok(prepare_prompts(tiny_model, [prompt])[0], add_special_tokens=False)["input_ids"]
        assert tok.decode(ids[positions[0] :]) == SMOL_TAIL
        assert tok.decode(ids[: positions[0]]).endswith(prompt)  # the token before is the instruction's


def test_mean_activations_equal_a_by_hand_mean_from_the_cache(tiny_model):
    layers, positions = [0, 2, 3], [-6, -3, -1]
    texts = prepare_prompts(tiny_model, HARMFUL)
    assert len({len(tokenize(tiny_model.chat_tokenizer, [t]).input_ids[0]) for t in texts}) > 1  # padding happens
    got = mean_activations(tiny_model, texts, layers=layers, positions=positions, batch_size=4, progress=False)
    assert got.shape == (3, 3, 64)
    torch.testing.assert_close(got, _by_hand_means(tiny_model, HARMFUL, layers, positions), atol=1e-5, rtol=1e-5)


def test_diff_in_means_is_harmful_minus_harmless_mean(tiny_model, candidates):
    assert candidates.layers == [0, 1, 2, 3] and candidates.positions == [-6, -5, -4, -3, -2, -1]
    assert candidates.directions.shape == (4, 6, 64)
    bad = _by_hand_means(tiny_model, HARMFUL[:4], candidates.layers, candidates.positions)
    good = _by_hand_means(tiny_model, HARMLESS[:4], candidates.layers, candidates.positions)
    torch.testing.assert_close(candidates.harmful_mean, bad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(candidates.directions, bad - good, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(candidates.vector(2, -3), (bad - good)[2, 3], atol=1e-5, rtol=1e-5)
    assert (candidates.n_harmful, candidates.n_harmless) == (4, 4)


def test_bad_layers_and_positions_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="valid layers are 0…3"):
        diff_in_means(tiny_model, HARMFUL[:2], HARMLESS[:2], layers=[4], progress=False)
    with pytest.raises(ValueError, match="negative offsets"):
        diff_in_means(tiny_model, HARMFUL[:2], HARMLESS[:2], positions=[0, -1], progress=False)
