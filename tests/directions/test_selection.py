"""Selecting the refusal direction: scores, shortcuts equal full passes, filters never relaxed."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.directions import (
    NoDirectionError,
    select_direction,
)
from melbo_tl.evaluate.refusal import refusal_log_odds
from melbo_tl.forward import next_token_logprobs
from melbo_tl.prompts import Positions, prepare_prompts, tokenize
from melbo_tl.steering import AblateDirection, AddVector, TokenLayout, apply, token_layout
from tests.helpers import HARMFUL, HARMLESS


def _full_logprobs(model, texts, interventions):
    batch = tokenize(model.chat_tokenizer, texts)
    with torch.no_grad(), apply(model, *interventions), token_layout(TokenLayout(batch.token_index, batch.lengths)):
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)
    return torch.log_softmax(logits[:, -1].float(), -1)


def test_selection_scores_every_candidate_below_the_layer_cut(tiny_model, candidates, selection):
    assert [(s.layer, s.pos) for s in selection.scores] == [(l, p) for l in (0, 1, 2) for p in (-2, -1)]  # ℓ < 0.75·4
    for s in selection.scores:
        assert all(math.isfinite(x) for x in (s.norm, s.bypass, s.induce, s.kl))
        assert s.kl >= -1e-6
    # At layer 0 a template token's residual is its embedding: the same in every prompt, so r = 0.
    layer0 = [s for s in selection.scores if s.layer == 0]
    assert all(s.norm == 0 and s.rejected == "zero vector" and s.kl == 0 for s in layer0)
    assert layer0[0].bypass == selection.baseline["harmful"] and layer0[0].induce == selection.baseline["harmless"]
    rest = [s for s in selection.scores if s.layer > 0]
    assert all(s.rejected == "" and s.norm > 1e-4 for s in rest)
    assert (selection.layer, selection.pos) == min((s.bypass, s.layer, s.pos) for s in rest)[1:]
    torch.testing.assert_close(selection.raw, candidates.vector(selection.layer, selection.pos))
    torch.testing.assert_close(selection.direction.norm(), torch.tensor(1.0))
    assert selection.hook == f"blocks.{selection.layer}.hook_resid_pre"
    assert "CHOSEN" in selection.table()


def test_selection_scores_agree_with_the_refusal_scorer(tiny_model, candidates, selection):
    bad, good = HARMFUL[4:], HARMLESS[4:]  # user messages: refusal_log_odds formats them as the selection did
    c = selection.chosen
    assert selection.baseline["harmful"] == pytest.approx(float(refusal_log_odds(tiny_model, bad).mean()), abs=1e-4)
    assert selection.baseline["harmless"] == pytest.approx(float(refusal_log_odds(tiny_model, good).mean()), abs=1e-4)
    assert c.bypass == pytest.approx(
        float(refusal_log_odds(tiny_model, bad, [AblateDirection(selection.raw)]).mean()), abs=1e-4
    )
    add = AddVector(selection.raw, selection.hook)
    assert c.induce == pytest.approx(float(refusal_log_odds(tiny_model, good, [add]).mean()), abs=1e-4)
    assert c.bypass != pytest.approx(selection.baseline["harmful"], abs=1e-6)  # the ablation did something


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.3.hook_resid_post"])
def test_last_column_shortcut_equals_a_full_forward_pass(tiny_model, hook):
    """Selection unembeds only the last column; that must give what a plain forward pass gives,
    including for edits of the last block's output. (The start-at-block-ℓ shortcut is checked by
    the agreement with the refusal scorer above.)"""
    texts = prepare_prompts(tiny_model, HARMFUL[:3] + HARMLESS[:2])
    steer = AddVector(torch.randn(64) * 8, hook, Positions.parse("last:2"))
    plain = _full_logprobs(tiny_model, texts, [])
    full = _full_logprobs(tiny_model, texts, [steer])
    assert (full - plain).abs().max() > 0.1  # the vector matters
    torch.testing.assert_close(
        next_token_logprobs(tiny_model, texts, [steer], batch_size=2), full, atol=1e-4, rtol=1e-4
    )


def test_filters_are_applied_and_never_silently_relaxed(tiny_model, candidates, selection):
    layers = [1, 2]
    real = [s for s in selection.scores if s.layer in layers]
    kls = sorted(s.kl for s in real)
    cut = (kls[0] + kls[1]) / 2  # only the lowest-KL candidate passes
    only = select_direction(
        tiny_model,
        candidates,
        HARMFUL[4:],
        HARMLESS[4:],
        layers=layers,
        positions=[-2, -1],
        kl_threshold=cut,
        induce_threshold=-math.inf,
        progress=False,
    )
    lowest = min(real, key=lambda s: s.kl)
    assert (only.layer, only.pos) == (lowest.layer, lowest.pos)
    assert [s.rejected.startswith("kl") for s in only.scores].count(True) == 3
    with pytest.raises(NoDirectionError, match=r"lowest kl .* at layer \d, pos -\d; highest induce") as info:
        select_direction(
            tiny_model,
            candidates,
            HARMFUL[4:],
            HARMLESS[4:],
            layers=[1],
            positions=[-2, -1],
            kl_threshold=-1.0,
            progress=False,
        )
    assert isinstance(info.value, ValueError) and len(info.value.scores) == 2
    with pytest.raises(ValueError, match=r"allowed below 0.5·4 = 2 and within \[3\]"):
        select_direction(
            tiny_model, candidates, HARMFUL[4:], HARMLESS[4:], layers=[3], max_layer_frac=0.5, progress=False
        )


def test_ablating_the_selected_direction_leaves_no_component_in_any_resid_pre(tiny_model, selection):
    ids = tokenize(tiny_model.chat_tokenizer, prepare_prompts(tiny_model, [HARMFUL[0]])).input_ids
    names = [f"blocks.{l}.hook_resid_pre" for l in range(4)]
    unit = selection.direction
    with torch.no_grad():
        _, clean = tiny_model.run_with_cache(ids, names_filter=names)
        with apply(tiny_model, AblateDirection(selection.raw)):
            _, ablated = tiny_model.run_with_cache(ids, names_filter=names)
    assert max(float((clean[n] @ unit).abs().max()) for n in names) > 1e-2
    for n in names:
        assert float((ablated[n] @ unit).abs().max()) < 1e-4, n
