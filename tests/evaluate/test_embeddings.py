"""Sentence embeddings and diversity on hand-computable cases."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.evaluate.embeddings import MODEL_MEAN_POOL, embed_texts, mean_pairwise_distance


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
