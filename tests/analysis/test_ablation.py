"""analysis.ablation: mediation of a steer's effect by a direction, and the sweeps."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.analysis.ablation import (
    ABLATED,
    PROJECTED,
    RESTORED,
    STEERED,
    STEERED_ABLATED,
    UNSTEERED,
    baseline_conditions,
    mediation,
    mediation_figure,
    project_out,
    sweep_figure,
)
from melbo_tl.prompts import prepare_prompts
from melbo_tl.steering.interventions import AddVector

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def texts(tiny_model):
    return prepare_prompts(tiny_model, ["hello there", "how are you today, friend?", "a b c"])


def test_ablating_the_direction_the_vector_lies_in_removes_its_effect(tiny_model, texts):
    r = torch.randn(64)
    med = mediation(tiny_model, texts, AddVector(3 * r, HOOK), r, max_new_tokens=3, chat=False)
    c = med.conditions
    assert c[STEERED].log_odds != pytest.approx(c[UNSTEERED].log_odds, abs=1e-4)  # the vector does something
    assert c[STEERED_ABLATED].log_odds_per_prompt == pytest.approx(c[ABLATED].log_odds_per_prompt, abs=1e-5)
    assert c[PROJECTED].log_odds_per_prompt == pytest.approx(c[UNSTEERED].log_odds_per_prompt, abs=1e-5)
    assert c[RESTORED].log_odds_per_prompt == pytest.approx(c[UNSTEERED].log_odds_per_prompt, abs=1e-4)
    assert med.summary["fraction_carried_by_r"] == pytest.approx(1.0, abs=1e-3)
    assert med.summary["cos_v_r"] == pytest.approx(1.0, abs=1e-6)
    assert c[STEERED].refusal["n"] == 3 and len(c[STEERED].examples) == 3
    assert c[RESTORED].refusal is None  # log-odds only


def test_an_orthogonal_vector_is_not_mediated(tiny_model, texts):
    r = torch.randn(64)
    v = project_out(3 * torch.randn(64), r)
    assert float(v @ r) == pytest.approx(0.0, abs=1e-4)
    med = mediation(tiny_model, texts, AddVector(v, HOOK), r, max_new_tokens=0, chat=False)
    c = med.conditions
    assert c[PROJECTED].log_odds_per_prompt == pytest.approx(c[STEERED].log_odds_per_prompt, abs=1e-5)
    assert med.summary["effect_projected"] == pytest.approx(med.summary["effect"], abs=1e-5)
    assert c[STEERED].refusal is None


def test_sweeps(tiny_model, texts):
    r = torch.randn(64)
    steer = AddVector(2 * torch.randn(64), HOOK)
    med = mediation(tiny_model, texts, steer, r, max_new_tokens=0, scales=(-1.0, 0.0, 1.0), chat=False)
    assert med.scale_sweep["scales"] == [-1.0, 0.0, 1.0]
    assert med.scale_sweep["log_odds"][1] == pytest.approx(med.conditions[UNSTEERED].log_odds, abs=1e-5)
    assert med.scale_sweep["log_odds"][2] == pytest.approx(med.conditions[STEERED].log_odds, abs=1e-5)
    assert med.layer_sweep["layers"] == list(range(tiny_model.cfg.n_layers)) and len(med.layer_sweep["log_odds"]) == 4
    assert len(mediation_figure(med).data[0].x) == 6
    fig = sweep_figure(med)
    assert list(fig.data[0].y) == med.layer_sweep["log_odds"] and list(fig.data[-1].x) == [-1.0, 0.0, 1.0]


def test_errors(tiny_model, texts):
    with pytest.raises(ValueError, match="expected \\[64\\]"):
        mediation(tiny_model, texts, AddVector(torch.randn(64), HOOK), torch.randn(32), chat=False)
    with pytest.raises(ValueError, match="at least one prompt"):
        mediation(tiny_model, [], AddVector(torch.randn(64), HOOK), torch.randn(64), chat=False)
    with pytest.raises(ValueError, match="one AddVector"):
        mediation(tiny_model, texts, AddVector(torch.randn(3, 64), HOOK), torch.randn(64), chat=False)


def test_shared_baseline_gives_the_same_result(tiny_model, texts):
    r = torch.randn(64)
    steer = AddVector(2 * torch.randn(64), HOOK)
    base = baseline_conditions(tiny_model, texts, r, max_new_tokens=0, chat=False)
    shared = mediation(
        tiny_model, texts, steer, r, max_new_tokens=0, baseline=base, sweep_layers=[2, 3], scales=(1.0,), chat=False
    )
    alone = mediation(tiny_model, texts, steer, r, max_new_tokens=0, sweep_layers=[2, 3], scales=(1.0,), chat=False)
    assert shared.summary == alone.summary and shared.layer_sweep == alone.layer_sweep
    assert shared.layer_sweep["layers"] == [2, 3]
    with pytest.raises(ValueError, match="baseline must hold"):
        mediation(tiny_model, texts[:2], steer, r, max_new_tokens=0, baseline=base, chat=False)


def test_restoring_the_unsteered_coordinate_on_an_unsteered_run_changes_nothing(tiny_model):
    """Prompts of different lengths, not in length order: the restored values must meet their own
    rows (a batch reordered by length would put row i's coordinates on row j)."""
    from melbo_tl.analysis.ablation import RestoreCoordinate, unsteered_coordinates
    from melbo_tl.evaluate.refusal import refusal_log_odds

    texts = prepare_prompts(tiny_model, ["Write a long story about dragons and castles, please.", "Hi", "What is 2+2?"])
    r = torch.randn(64, generator=torch.Generator(device="cpu").manual_seed(3), device="cpu")
    restore = RestoreCoordinate(r, unsteered_coordinates(tiny_model, texts, r, chat=False))
    plain = refusal_log_odds(tiny_model, texts, batch_size=len(texts), chat=False)
    restored = refusal_log_odds(tiny_model, texts, [restore], batch_size=len(texts), chat=False)
    torch.testing.assert_close(restored, plain, atol=1e-6, rtol=0)  # reordered rows: off by ~5e-4
