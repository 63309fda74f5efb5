"""analysis.attribution: direct effect and attribution patching of a steer on refusal log-odds."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.analysis.attribution import attribution_figure, steering_attribution
from melbo_tl.evaluate.refusal import refusal_log_odds
from melbo_tl.prompts import prepare_prompts
from melbo_tl.steering.interventions import AddVector


@pytest.fixture(scope="module")
def texts(tiny_model):
    return prepare_prompts(tiny_model, ["hello there", "how are you today, friend?"])


def _terms(att):
    return sum(att.dla_layers["attn"]) + sum(att.dla_layers["mlp"]) + att.dla_direct + att.dla_embed


def test_zero_steer_attributes_nothing(tiny_model, texts):
    att = steering_attribution(tiny_model, texts, AddVector(torch.zeros(64), "blocks.1.hook_resid_pre"), chat=False)
    assert att.log_odds_steered == att.log_odds_unsteered
    assert all(v == 0.0 for kind in ("attn", "mlp") for v in att.dla_layers[kind] + att.patch_layers[kind])
    assert att.dla_direct == 0.0 and att.linear_estimate == 0.0


def test_direct_terms_add_up_and_heads_add_up_to_layers(tiny_model, texts):
    att = steering_attribution(tiny_model, texts, AddVector(3 * torch.randn(64), "blocks.1.hook_resid_pre"), chat=False)
    assert _terms(att) == pytest.approx(att.linear_estimate, rel=1e-4, abs=1e-6)
    for layer, heads in enumerate(att.dla_heads):
        assert sum(heads) == pytest.approx(att.dla_layers["attn"][layer], rel=1e-3, abs=1e-6)
    assert att.dla_layers["attn"][0] == 0.0 and att.dla_layers["mlp"][0] == 0.0  # block 0 runs before the steer
    assert len(att.patch_heads) == tiny_model.cfg.n_layers and len(att.patch_heads[0]) == tiny_model.cfg.n_heads


def test_a_steer_after_the_last_block_is_all_direct(tiny_model, texts):
    steer = AddVector(0.05 * torch.randn(64), "blocks.3.hook_resid_post")
    att = steering_attribution(tiny_model, texts, steer, chat=False)
    assert all(v == 0.0 for kind in ("attn", "mlp") for v in att.dla_layers[kind])
    assert att.dla_direct == pytest.approx(att.linear_estimate)
    true_change = att.log_odds_steered - att.log_odds_unsteered
    assert att.linear_estimate == pytest.approx(true_change, rel=0.05)


def test_patching_score_matches_real_patching_to_first_order(tiny_model, texts):
    """Patch the last MLP's steered output into the unsteered run and compare with its score."""
    steer = AddVector(0.02 * torch.randn(64), "blocks.1.hook_resid_pre")
    att = steering_attribution(tiny_model, texts, steer, chat=False)
    hook = "blocks.3.hook_mlp_out"
    store = {}
    from melbo_tl.steering.interventions import apply

    refusal_log_odds(tiny_model, texts, [steer, _Keep(hook, store)], chat=False)
    base = refusal_log_odds(tiny_model, texts, chat=False)
    patched = refusal_log_odds(tiny_model, texts, [_Put(hook, store)], chat=False)
    real = float((patched - base).mean())
    assert att.patch_layers["mlp"][3] == pytest.approx(real, rel=0.1, abs=1e-6)
    assert apply  # imported for the interventions' protocol


class _Keep:
    def __init__(self, hook, store):
        self.hook, self.store = hook, store

    def hooks(self, model):
        def keep(acts, hook):
            self.store["acts"] = acts.detach().clone()
            return acts

        return [(self.hook, keep)]


class _Put(_Keep):
    def hooks(self, model):
        return [(self.hook, lambda acts, hook: self.store["acts"])]


def test_figure_and_errors(tiny_model, texts):
    att = steering_attribution(tiny_model, texts, AddVector(torch.randn(64), "blocks.1.hook_resid_pre"), chat=False)
    fig = attribution_figure(att)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4 and list(bars[0].y) == att.dla_layers["attn"]
    assert sum(t.type == "heatmap" for t in fig.data) == 2
    with pytest.raises(ValueError, match="at least one prompt"):
        steering_attribution(tiny_model, [], AddVector(torch.randn(64), "blocks.1.hook_resid_pre"), chat=False)
