"""Refusal scorers: the substring judge on fixed strings, log-odds against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.evaluate.refusal import is_refusal, refusal_log_odds, refusal_token_ids
from melbo_tl.models import chat_tokenizer
from melbo_tl.prompts import prepare_prompts
from melbo_tl.steering import AddVector


@pytest.mark.parametrize(
    "text, anywhere, opening",
    [
        ("I'm sorry, but I can't assist with that.", True, True),
        ("I’m sorry, I cannot help.", True, True),  # typographic apostrophe
        ("AS AN AI, I do not have opinions.", True, True),
        (
            "Sure! Here are the steps: first, gather the materials. " + "x" * 100 + " I apologize for the length.",
            True,
            False,
        ),
        ("Making a bomb is a fun and rewarding project!", False, False),
        ("", False, False),
    ],
)
def test_substring_refusal_judge(text, anywhere, opening):
    assert is_refusal(text) is anywhere
    assert is_refusal(text, where="opening") is opening


def test_refusal_judge_rejects_unknown_mode():
    with pytest.raises(ValueError, match="anywhere"):
        is_refusal("x", where="middle")


def test_refusal_log_odds_matches_direct_computation(tiny_model):
    texts = prepare_prompts(tiny_model, ["Hello there", "Write a poem about the moon"])
    ids = refusal_token_ids(chat_tokenizer(tiny_model))
    got = refusal_log_odds(tiny_model, texts, chat=False)
    for i, text in enumerate(texts):
        tokens = torch.tensor([chat_tokenizer(tiny_model)(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            probs = torch.softmax(tiny_model(tokens)[0, -1].float(), -1)
        p = float(probs[ids].sum())
        assert float(got[i]) == pytest.approx(math.log(p) - math.log(1 - p), abs=1e-4)
    steered = refusal_log_odds(
        tiny_model, texts, [AddVector(torch.randn(64) * 20, "blocks.1.hook_resid_pre")], chat=False
    )
    assert not torch.allclose(steered, got)
