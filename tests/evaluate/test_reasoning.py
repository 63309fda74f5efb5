"""Reasoning tasks: generated instances are right, splits are disjoint and seeded, prompt styles,
the one answer rule, the shows-work detector (both directions)."""

from __future__ import annotations

import re

import pytest

from melbo_tl.evaluate.reasoning import (
    GENERATORS,
    STEP_INSTRUCTION,
    Instance,
    final_answer,
    make_splits,
    prompt_messages,
    shows_work,
    task_items,
)
from melbo_tl.evaluate.task_items import is_correct, normalize

ARITHMETIC_TASKS = ("ab", "add2", "mul1", "mul2", "sum4")


def evaluate_question(question: str) -> int:
    """The answer recomputed from the question's own text (an independent check of the generators)."""
    if question.startswith("a="):
        a, b = re.match(r"a=(\d+\+\d+), b=(\d+\+\d+)\. What is a\*b\?", question).groups()
        return eval(a) * eval(b)
    expression = re.fullmatch(r"What is ([\d+*]+)\?", question).group(1)
    return eval(expression)


@pytest.mark.parametrize("task", ARITHMETIC_TASKS)
def test_arithmetic_answers_match_the_question(task):
    for inst in make_splits(task, {"all": 40}, seed=3)["all"]:
        assert inst.answer == evaluate_question(inst.question)


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_worked_solutions_end_with_the_answer_and_show_work(task):
    for inst in make_splits(task, {"all": 30}, seed=1)["all"]:
        assert final_answer(inst.work) == str(inst.answer), inst
        assert final_answer(f"{inst.work}\nAnswer: {inst.answer}") == str(inst.answer)


def test_word_and_counting_answers():
    for inst in make_splits("word", {"all": 30}, seed=0)["all"]:
        groups, per, away = map(int, re.findall(r"\d+", inst.question))
        assert inst.answer == groups * per - away >= 1
    for inst in make_splits("even", {"all": 30}, seed=0)["all"]:
        numbers = [int(x) for x in re.findall(r"\d+", inst.question)]
        assert len(numbers) == 6 and inst.answer == sum(x % 2 == 0 for x in numbers)
    for inst in make_splits("digits", {"all": 30}, seed=0)["all"]:
        number = re.search(r"\d{4}", inst.question).group(0)
        assert inst.answer == sum(int(c) for c in number)


def test_splits_are_disjoint_distinct_and_seeded():
    sizes = {"shots": 1, "train": 1, "val": 40, "test": 60}
    splits = make_splits("ab", sizes, seed=0)
    assert {k: len(v) for k, v in splits.items()} == sizes
    questions = [i.question for split in splits.values() for i in split]
    assert len(set(questions)) == len(questions) == 102
    assert make_splits("ab", sizes, seed=0) == splits
    assert make_splits("ab", sizes, seed=1)["test"] != splits["test"]
    # a split depends only on the splits before it: growing the test split keeps validation
    assert make_splits("ab", {**sizes, "test": 80}, seed=0)["val"] == splits["val"]


def test_split_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="Unknown task 'abc'; valid tasks: ab, add2"):
        make_splits("abc", {"test": 3})
    with pytest.raises(ValueError, match="split 'test': size must be an integer ≥ 0, got -1"):
        make_splits("ab", {"test": -1})
    with pytest.raises(ValueError, match="gave only 8100 distinct questions, 9000 were asked for"):
        make_splits("add2", {"test": 9000})


def test_prompt_styles():
    shot = Instance("What is 2+3?", 5, "2+3 = 5.")
    inst = Instance("What is 4+4?", 8, "4+4 = 8.")
    direct = prompt_messages(inst, "direct", [shot])
    assert direct == [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "What is 4+4?"},
    ]
    step = prompt_messages(inst, "step", [shot])  # no example: the instruction alone
    assert step == [{"role": "user", "content": f"What is 4+4?\n{STEP_INSTRUCTION}"}]
    shot_style = prompt_messages(inst, "step-shot", [shot])
    assert shot_style[1] == {"role": "assistant", "content": "2+3 = 5.\nAnswer: 5"}
    assert shot_style[0]["content"].endswith(STEP_INSTRUCTION) and shot_style[-1]["role"] == "user"
    with pytest.raises(ValueError, match="Unknown prompt style 'cot'; valid styles: direct, step, step-shot"):
        prompt_messages(inst, "cot")


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("72", "72"),
        ("a = 8. b = 9. a*b = 72.\nAnswer: 72", "72"),
        ("The answer is 1,081.", "1081"),
        ("so 72.0 it is", "72"),
        ("12 and then 7.25", "7.25"),  # a decimal is a number of its own, never the integer 25
        ("8-3=5", "5"),
        ("Answer: -4", "-4"),
        ("no digits here", None),
    ],
)
def test_final_answer_is_the_last_number(completion, answer):
    assert final_answer(completion) == answer


def test_task_items_score_as_final_answer_does():
    splits = make_splits("ab", {"shots": 1, "test": 5}, seed=0)
    items = task_items(splits["test"], "direct", splits["shots"])
    for inst, item in zip(splits["test"], items):
        assert item.answer == str(inst.answer) and item.prompt[-1]["content"] == inst.question
        assert is_correct(f"{inst.work} So {inst.answer}.0", item)
        assert not is_correct(f"{inst.answer} is wrong, it is {inst.answer + 1}", item)


def test_normalize_numbers():
    assert normalize(" 1,081.00 ") == "1081" and normalize("72.0") == "72" and normalize("7.50") == "7.50"
    assert normalize("v1.0") == "v1.0"


@pytest.mark.parametrize(
    ("completion", "question", "expected"),
    [
        ("122", "What is 59+63?", False),
        ("59 + 63 = 122", "What is 59+63?", False),  # a restatement: one new number
        ("50+60 = 110. 9+3 = 12. 110+12 = 122", "What is 59+63?", True),
        ("a = 3+5 = 8, b = 2+7 = 9, so a*b = 72", "a=3+5, b=2+7. What is a*b?", True),
        ("The answer is 72 and 40", "a=3+5, b=2+7. What is a*b?", False),  # numbers but no arithmetic
        ("Let me think step by step.", "What is 59+63?", False),  # words but no numbers
    ],
)
def test_shows_work(completion, question, expected):
    assert shows_work(completion, question) is expected
