"""MELBO adapters: unit columns, the intervention matches training, rank checks."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.optimize import objective as obj
from melbo_tl.optimize.adapters import train_adapters
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.steering import apply, token_layout
from melbo_tl.steering.layout import TokenLayout

PROMPTS = ["Hello there, how are you?", "Write a short poem about cats."]


SMALL = dict(source_layer=0, target_layer=3, steps=4, lr=0.05, progress=False)


def test_adapters_keep_unit_columns_and_match_intervention(tiny_model):
    result = train_adapters(tiny_model, PROMPTS, radius=0.7, rank=3, n_adapters=2, **SMALL)
    assert torch.allclose(result.A.norm(dim=1), torch.ones(2, 3), atol=1e-5)
    assert torch.allclose(result.B.norm(dim=1), torch.ones(2, 3), atol=1e-5)
    problem = MelboProblem.build(tiny_model, PROMPTS, source=0, target=3, p=2, q=1, positions="all")
    b = problem.batch
    name = "blocks.3.hook_resid_pre"
    with token_layout(TokenLayout(b.token_index, b.lengths)):
        _, clean = tiny_model.run_with_cache(
            b.input_ids, attention_mask=b.attention_mask, names_filter=lambda n: n == name
        )
        with apply(tiny_model, result.intervention(1)):
            _, steered = tiny_model.run_with_cache(
                b.input_ids, attention_mask=b.attention_mask, names_filter=lambda n: n == name
            )
    direct = obj.melbo_objective(steered[name] - clean[name], problem.select, p=2, q=1).sum()
    assert direct.item() == pytest.approx(result.objectives[1], rel=1e-4)


def test_adapter_rank_out_of_range(tiny_model):
    with pytest.raises(ValueError, match="rank"):
        train_adapters(tiny_model, PROMPTS[:1], radius=1.0, rank=10_000, **SMALL)
