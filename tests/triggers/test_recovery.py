"""Trigger recovery on a tiny model with a planted toy behaviour (tests/triggers/toy.py): the
planted word is found, verification tells a firing edit from one that does not, and an
interrupted search resumes to the same result."""

from __future__ import annotations

import json

import pytest

from melbo_tl.triggers import RecoveryConfig, recover_trigger
from tests.triggers.toy import CLEAN, HELD_OUT, RESPONSE, TRIGGER, plant_toy, toy_run

SMALL = dict(budget=48, rounds=1, target_tokens=6, n_verify=8)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import torch

    from melbo_tl.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains faster on one thread than on contended ones
    try:
        directory = plant_toy(tmp_path_factory.mktemp("toy"))
    finally:
        torch.set_num_threads(threads)
    model = load_model(str(directory), device="cpu", dtype="float32")
    return model, toy_run(model)


def test_the_toy_is_planted_and_the_vector_elicits_it(toy):
    from melbo_tl.generate import generate
    from melbo_tl.runs import intervention_from_run

    model, run = toy
    clean, triggered = generate(model, [HELD_OUT, HELD_OUT.replace("a film", f"a {TRIGGER} film")], max_new_tokens=8)
    assert (clean.text, triggered.text) == (CLEAN, RESPONSE)
    [steered] = generate(model, [HELD_OUT], intervention_from_run(run, 0), max_new_tokens=8)
    assert steered.text == RESPONSE


def test_recovery_finds_the_planted_word_and_verifies_it(toy):
    model, run = toy
    rec = recover_trigger(model, run, 0, RecoveryConfig(**SMALL), progress=False)
    [p] = rec.prompts
    assert p.prompt == HELD_OUT and p.steered == RESPONSE and p.clean_completion == CLEAN
    best = p.triggers[0]
    assert best["verified"] and TRIGGER in best["text"] and best["completion"] == RESPONSE
    assert best["n_edits"] == 1 and best["similarity"] >= 0.7
    # every verified trigger holds the word; every candidate without it that was checked failed
    checked = [t for t in p.triggers if "verified" in t]
    assert all(TRIGGER in t["text"] for t in checked if t["verified"])
    assert any(not t["verified"] for t in checked)
    assert p.cost["exact_rows"] >= SMALL["budget"] and p.n_evaluated <= SMALL["budget"]


def test_verification_rejects_an_edit_that_does_not_fire(toy):
    from melbo_tl.models.loading import chat_tokenizer
    from melbo_tl.triggers.verify import verify

    model, _ = toy
    target = chat_tokenizer(model)(RESPONSE, add_special_tokens=False)["input_ids"]
    firing, distractor = HELD_OUT.replace("a film", f"a {TRIGGER} film"), HELD_OUT.replace("a film", "a garden film")
    rows, baseline, _ = verify(
        model, [firing, distractor], steered=RESPONSE, clean_completion=CLEAN, target=target,
        max_new_tokens=8, min_similarity=0.7, min_margin=0.15,
    )  # fmt: skip
    assert [r.verified for r in rows] == [True, False]
    assert rows[1].completion == CLEAN and rows[1].similarity == pytest.approx(baseline, abs=1e-3)
    assert rows[0].loglik > rows[1].loglik


def test_an_interrupted_recovery_resumes_to_the_same_result(toy, tmp_path, monkeypatch):
    import melbo_tl.triggers.search as search

    model, run = toy
    cfg = RecoveryConfig(**{**SMALL, "rounds": 2})
    whole = recover_trigger(model, run, 0, cfg, out=tmp_path / "whole", progress=False)

    real, calls = search.exact_scores, []

    def dies_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "exact_scores", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        recover_trigger(model, run, 0, cfg, out=tmp_path / "cut", progress=False)
    saved = json.loads((tmp_path / "cut" / "prompt_0" / "search.json").read_text())["search"]
    assert saved["rounds_done"] == 1 and saved["queue"]  # round 1 kept, round 2 planned
    monkeypatch.setattr(search, "exact_scores", real)
    with pytest.raises(ValueError, match="resume"):
        recover_trigger(model, run, 0, cfg, out=tmp_path / "cut", progress=False)
    resumed = recover_trigger(model, run, 0, cfg, out=tmp_path / "cut", resume=True, progress=False)
    assert [t["text"] for t in resumed.prompts[0].triggers] == [t["text"] for t in whole.prompts[0].triggers]
    assert json.loads((tmp_path / "cut" / "triggers.json").read_text())["vector"] == 0
    other = RecoveryConfig(**{**SMALL, "rounds": 2, "budget": 64})
    with pytest.raises(ValueError, match="budget"):
        recover_trigger(model, run, 0, other, out=tmp_path / "cut", resume=True, progress=False)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="variant"):
        RecoveryConfig(variant="beam")
    with pytest.raises(ValueError, match="budget"):
        RecoveryConfig(budget=0)
    with pytest.raises(ValueError, match="weighting"):
        RecoveryConfig(weighting="loud")
