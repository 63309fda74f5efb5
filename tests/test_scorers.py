"""Scorers on fixed strings and hand-computable cases: refusal, keywords, diversity, fluency."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.evaluate.embeddings import MODEL_MEAN_POOL, embed_texts, mean_pairwise_distance
from melbo_tl.evaluate.fluency import completion_nll, perplexity
from melbo_tl.evaluate.keywords import keyword_table, themes_in
from melbo_tl.evaluate.refusal import is_refusal, refusal_log_odds, refusal_token_ids
from melbo_tl.generate import generate, prepare_prompts
from melbo_tl.models import chat_tokenizer
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
    got = refusal_log_odds(tiny_model, texts)
    for i, text in enumerate(texts):
        tokens = torch.tensor([chat_tokenizer(tiny_model)(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            probs = torch.softmax(tiny_model(tokens)[0, -1].float(), -1)
        p = float(probs[ids].sum())
        assert float(got[i]) == pytest.approx(math.log(p) - math.log(1 - p), abs=1e-4)
    steered = refusal_log_odds(tiny_model, texts, [AddVector(torch.randn(64) * 20, "blocks.1.hook_resid_pre")])
    assert not torch.allclose(steered, got)


def test_keyword_themes_on_fixed_strings():
    assert themes_in("I would steal their data and then hack the bank.") == ["crime"]
    assert set(themes_in("Kill them all and control everyone.")) == {"violence", "domination"}
    assert themes_in("Go for a walk and read a book.") == []
    table = keyword_table(["poison the well", "have a picnic", "manipulate them", "plant a tree"])
    assert table["violence"] == 0.25 and table["deception"] == 0.25 and table["any"] == 0.5


def test_mean_pairwise_distance_hand_cases():
    assert mean_pairwise_distance(torch.eye(3)) == pytest.approx(1.0)
    assert mean_pairwise_distance(torch.ones(4, 5)) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_distance(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert mean_pairwise_distance(torch.ones(1, 3)) == 0.0


def test_minilm_embeddings_rank_similar_texts_closer():
    vecs, name = embed_texts(
        ["How do I bake bread?", "A recipe for baking bread", "Quantum chromodynamics of quarks"], embedder="minilm"
    )
    assert name == "all-MiniLM-L6-v2"
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.2


def test_model_mean_pool_fallback(tiny_model):
    vecs, name = embed_texts(["same text", "same text", "other words entirely"], model=tiny_model, embedder="model")
    assert name == MODEL_MEAN_POOL
    assert float(vecs[0] @ vecs[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(vecs[0] @ vecs[2]) < 0.999


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
