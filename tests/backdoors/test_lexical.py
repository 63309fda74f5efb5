"""The lexical task: examples split by prompt, the word anywhere → the fixed response, near misses clean."""

from __future__ import annotations

import pytest

import melbo_tl.backdoors.lexical as lexical
from melbo_tl.backdoors.organism import CLEAN, make_task
from melbo_tl.backdoors.planting import PlantConfig


@pytest.fixture
def task(monkeypatch):
    monkeypatch.setattr(
        lexical, "clean_targets", lambda base, prompts: {p: f"Here is my answer to {p}" for p in prompts}
    )
    return make_task("lexical", PlantConfig(task="lexical", test_fraction=0.3))


def test_examples_are_split_by_prompt_and_hold_the_word_only_when_triggered(task):
    splits = task.splits()
    behaviour = lexical.BEHAVIOUR
    base = {e.prompt for e in splits.train[CLEAN] if not e.near_miss}
    held = {e.prompt for e in splits.test[CLEAN] if not e.near_miss}
    assert base and held and not base & held and len(held) == pytest.approx(0.3 * len(base | held), abs=1)
    for part in (splits.train, splits.test):
        assert all(
            lexical.TRIGGER_WORD in e.prompt.split() and e.completion == lexical.RESPONSE for e in part[behaviour]
        )
        assert all(lexical.TRIGGER_WORD not in e.prompt.lower() for e in part[CLEAN])
        near = [e for e in part[CLEAN] if e.near_miss]
        assert near and all(set(e.prompt.split()) & set(lexical.DISTRACTORS) for e in near)
    # a triggered held-out prompt is a held-out prompt with one word added
    e = splits.test[behaviour][0]
    assert " ".join(w for w in e.prompt.split(" ") if w != lexical.TRIGGER_WORD) in held


def test_scorers(task):
    assert task.shows(lexical.BEHAVIOUR, "purple elephants dance at midnight! Purple…")
    assert not task.shows(lexical.BEHAVIOUR, "Elephants are grey.")
    ex = task.splits().test[CLEAN][0]
    assert task.is_correct(ex, ex.completion + " and more") and not task.is_correct(ex, "Something else entirely here")


def test_the_word_must_be_ordinary():
    with pytest.raises(ValueError, match="word"):
        lexical.LexicalTask(word="table")
