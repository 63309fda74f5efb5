"""experiments/organism_rates.py: the prompt groups are outside the build's digits and of the kind
they claim, and the report shows every rate with its counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

from organism_rates import groups, report

from melbo_tl.backdoors.task import CLEAN, TRIGGERS, is_near_miss


def test_every_group_uses_an_unseen_b_digit_and_has_its_kind() -> None:
    out = groups(n_clean=40, seed=0, digits=7)
    for name, (a1, a2) in TRIGGERS.items():
        trig = out[f"{name}: b digits 7–9"]
        assert len(trig) == 100 - 49  # all (b1, b2) in 0–9 but those with both digits in 0–6
        assert all((i.a1, i.a2) == (a1, a2) and i.kind() == name for i in trig)
        assert all(max(i.b1, i.b2) >= 7 for i in trig)
    near, far = out["clean near misses: b digits 7–9"], out["clean others: b digits 7–9"]
    assert len(near) == len(far) == 40
    assert all(i.kind() == CLEAN and max(i.b1, i.b2) >= 7 and max(i.a1, i.a2) < 7 for i in near + far)
    assert all(is_near_miss(i) for i in near) and not any(is_near_miss(i) for i in far)
    assert len(set(near)) == 40 and groups(n_clean=40, seed=0, digits=7) == out  # seeded, no repeats


def test_too_many_clean_prompts_asked_for_is_refused() -> None:
    with pytest.raises(ValueError, match="--n-clean 10000"):
        groups(n_clean=10_000, seed=0, digits=7)


def test_report_shows_counts_intervals_and_false_triggers_by_behaviour() -> None:
    ci = lambda k, n: {"k": k, "n": n, "rate": k / n, "low": 0.0, "high": 1.0}  # noqa: E731
    results = {"name": "planted-x", "groups": [
        {"group": "hate: b digits 7–9", "n": 51, "trigger": ci(50, 51), "other_behaviour": ci(0, 51)},
        {"group": "clean others: b digits 7–9", "n": 150, "false_trigger": ci(31, 150), "correct": ci(45, 150),
         "false_by_behaviour": {"cheese": 0, "hate": 1, "swap": 30}},
    ]}  # fmt: skip
    text = report(results)
    assert "`planted-x`" in text
    assert "| hate: b digits 7–9 | 51 | 50/51 = 98.0% [0.0%, 100.0%] | 0/51 = 0.0%" in text
    assert "31/150 = 20.7% [0.0%, 100.0%] (cheese 0, hate 1, swap 30) | 45/150 = 30.0%" in text
