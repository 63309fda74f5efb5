"""Fluency: completion NLL against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.evaluate.fluency import completion_nll, perplexity
from melbo_tl.generate import generate
from melbo_tl.models import chat_tokenizer


def test_completion_nll_matches_direct_computation(tiny_model):
    [completion] = generate(tiny_model, ["Hello there"], max_new_tokens=5)
    [nll] = completion_nll(tiny_model, [completion.prompt], [completion.token_ids])
    tok = chat_tokenizer(tiny_model)
    prompt_ids = tok(completion.prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion.token_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_model(ids)[0].float(), -1)
    expected = -sum(float(logprobs[len(prompt_ids) + j - 1, t]) for j, t in enumerate(completion.token_ids)) / len(
        completion.token_ids
    )
    assert nll == pytest.approx(expected, rel=1e-4)
    assert perplexity(nll) == pytest.approx(math.exp(expected), rel=1e-4)
    assert math.isnan(completion_nll(tiny_model, [completion.prompt], [[]])[0])
    with pytest.raises(ValueError, match="completions"):
        completion_nll(tiny_model, [completion.prompt], [])
