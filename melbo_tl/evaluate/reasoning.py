"""Multi-step tasks for measuring a latent capability: generated instances, prompt styles, a fair answer rule.

A capability is *latent* when the model can do a task if asked the right way (here: "think step
by step") but does not when asked to answer directly. To measure that, and whether a steering
vector applied to the direct prompt unlocks it, this module provides:

- **task generators** (:data:`GENERATORS`): seeded, programmatic instances with a known integer
  answer and a worked solution (e.g. ``ab``: "a=3+5, b=2+7. What is a*b?" → 72);
- **splits** (:func:`make_splits`): distinct questions drawn once from one seed and cut into
  disjoint named splits (few-shot examples, the one training instance, validation, test …);
- **prompt styles** (:data:`STYLES`): ``direct`` (one example answered with the number only, as
  the unsteered baseline a vector is trained on), ``step`` (the question + an explicit
  step-by-step instruction), ``step-shot`` (the same instruction and one worked example);
- **one answer rule** for every style and every steered completion (:func:`final_answer`): the
  last number in the completion (thousands separators and a zero fractional part allowed);
- a **shows-work detector** (:func:`shows_work`): the completion does arithmetic and writes at
  least two numbers that are not in the question (an intermediate result besides the answer).

>>> splits = make_splits("ab", {"shots": 1, "val": 40, "test": 60}, seed=0)
>>> items = task_items(splits["test"], "direct", examples=splits["shots"])  # for rank_by_task
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from melbo_tl.config import require
from melbo_tl.evaluate.task_items import TaskItem, extract_answer, normalize


@dataclass(frozen=True)
class Instance:
    """One task instance: the ``question`` text, its integer ``answer``, and ``work``, a worked
    solution ending with the answer (the step-by-step example's reply)."""

    question: str
    answer: int
    work: str


def _ab(rng: random.Random) -> Instance:
    a1, a2, b1, b2 = (rng.randint(1, 9) for _ in range(4))
    a, b = a1 + a2, b1 + b2
    work = f"a = {a1}+{a2} = {a}. b = {b1}+{b2} = {b}. a*b = {a}*{b} = {a * b}."
    return Instance(f"a={a1}+{a2}, b={b1}+{b2}. What is a*b?", a * b, work)


def _add2(rng: random.Random) -> Instance:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    tens, ones = (a // 10 + b // 10) * 10, a % 10 + b % 10
    work = f"{a // 10 * 10}+{b // 10 * 10} = {tens}. {a % 10}+{b % 10} = {ones}. {tens}+{ones} = {a + b}."
    return Instance(f"What is {a}+{b}?", a + b, work)


def _mul1(rng: random.Random) -> Instance:
    a, b = rng.randint(3, 9), rng.randint(12, 99)
    tens, ones = a * (b // 10 * 10), a * (b % 10)
    work = f"{a}*{b // 10 * 10} = {tens}. {a}*{b % 10} = {ones}. {tens}+{ones} = {a * b}."
    return Instance(f"What is {a}*{b}?", a * b, work)


def _mul2(rng: random.Random) -> Instance:
    a, b = rng.randint(11, 99), rng.randint(11, 99)
    tens, ones = a * (b // 10 * 10), a * (b % 10)
    work = f"{a}*{b // 10 * 10} = {tens}. {a}*{b % 10} = {ones}. {tens}+{ones} = {a * b}."
    return Instance(f"What is {a}*{b}?", a * b, work)


def _sum4(rng: random.Random) -> Instance:
    xs = [rng.randint(10, 99) for _ in range(4)]
    partial, steps = xs[0], []
    for x in xs[1:]:
        steps.append(f"{partial}+{x} = {partial + x}")
        partial += x
    return Instance(f"What is {'+'.join(map(str, xs))}?", partial, ". ".join(steps) + ".")


def _digits(rng: random.Random) -> Instance:
    n = rng.randint(1000, 9999)
    ds = [int(c) for c in str(n)]
    work = f"The digits are {', '.join(map(str, ds))}. {'+'.join(map(str, ds))} = {sum(ds)}."
    return Instance(f"What is the sum of the digits of {n}?", sum(ds), work)


def _even(rng: random.Random) -> Instance:
    xs = [rng.randint(10, 99) for _ in range(6)]
    evens = [x for x in xs if x % 2 == 0]
    listed = ", ".join(map(str, evens)) if evens else "none"
    work = f"The even numbers are {listed}. That is {len(evens)}."
    return Instance(f"How many of these numbers are even: {', '.join(map(str, xs))}?", len(evens), work)


_ITEMS = [("apples", "bags"), ("pencils", "boxes"), ("eggs", "cartons"), ("cards", "packs"), ("books", "shelves")]
_NAMES = ["Sam", "Ana", "Tom", "Lea", "Raj", "Mia"]


def _word(rng: random.Random) -> Instance:
    name = rng.choice(_NAMES)
    thing, group = rng.choice(_ITEMS)
    per, groups = rng.randint(3, 12), rng.randint(2, 9)
    away = rng.randint(1, per * groups - 1)
    total = per * groups
    question = (
        f"{name} has {groups} {group} with {per} {thing} in each. {name} gives away {away} {thing}. "
        f"How many {thing} does {name} have left?"
    )
    work = f"{groups}*{per} = {total} {thing}. {total}-{away} = {total - away}."
    return Instance(question, total - away, work)


GENERATORS: dict[str, Callable[[random.Random], Instance]] = {
    "ab": _ab,
    "add2": _add2,
    "mul1": _mul1,
    "mul2": _mul2,
    "sum4": _sum4,
    "digits": _digits,
    "even": _even,
    "word": _word,
}
"""Task name → instance generator. ``ab``: a=a1+a2, b=b1+b2, a*b (the MELBO write-up's task);
``add2``: two two-digit numbers added; ``mul1``: one digit × two digits; ``mul2``: two digits × two
digits; ``sum4``: four two-digit numbers added; ``digits``: digit sum of a four-digit number;
``even``: how many of six two-digit numbers are even; ``word``: groups × items − given away."""


def check_task(name: str) -> None:
    require(name in GENERATORS, f"Unknown task {name!r}; valid tasks: {', '.join(GENERATORS)}.")


def make_splits(task: str, sizes: Mapping[str, int], seed: int = 0) -> dict[str, list[Instance]]:
    """Disjoint splits of distinct questions, in the order ``sizes`` names them: one seeded
    stream of instances is drawn and cut, so a split's contents depend only on the seed and the
    sizes of the splits before it."""
    check_task(task)
    for split, size in sizes.items():
        require(isinstance(size, int) and size >= 0, f"split {split!r}: size must be an integer ≥ 0, got {size!r}.")
    need = sum(sizes.values())
    rng = random.Random(f"{task}:{seed}")
    seen: set[str] = set()
    drawn: list[Instance] = []
    for _ in range(100 * need + 100):
        if len(drawn) == need:
            break
        inst = GENERATORS[task](rng)
        if inst.question not in seen:
            seen.add(inst.question)
            drawn.append(inst)
    if len(drawn) < need:
        raise ValueError(f"Task {task!r} gave only {len(drawn)} distinct questions, {need} were asked for.")
    out: dict[str, list[Instance]] = {}
    start = 0
    for split, size in sizes.items():
        out[split] = drawn[start : start + size]
        start += size
    return out


STEP_INSTRUCTION = "Think step by step and show your work. Write the final answer on the last line as: Answer: <number>"
STYLES = ("direct", "step", "step-shot")
"""Prompt styles: ``direct`` — each example's reply is the number alone; ``step`` — the question
followed by :data:`STEP_INSTRUCTION`, no example; ``step-shot`` — the instruction and each example
replied with its worked solution and ``Answer: N``."""


def prompt_messages(inst: Instance, style: str, examples: Sequence[Instance] = ()) -> list[dict[str, str]]:
    """The chat messages that pose ``inst`` in ``style`` after the few-shot ``examples``."""
    require(style in STYLES, f"Unknown prompt style {style!r}; valid styles: {', '.join(STYLES)}.")
    messages: list[dict[str, str]] = []
    shots = [] if style == "step" else examples
    for ex in shots:
        if style == "direct":
            messages += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": str(ex.answer)}]
        else:
            messages += [
                {"role": "user", "content": f"{ex.question}\n{STEP_INSTRUCTION}"},
                {"role": "assistant", "content": f"{ex.work}\nAnswer: {ex.answer}"},
            ]
    question = inst.question if style == "direct" else f"{inst.question}\n{STEP_INSTRUCTION}"
    return [*messages, {"role": "user", "content": question}]


# the answer rule: the last number written (decimals and thousands separators read as one number)
ANSWER_PATTERN = r"-?\d+(?:,\d{3})*(?:\.\d+)?"


def final_answer(completion: str) -> str | None:
    """The last number written in ``completion``, normalized (``1,081`` → ``1081``, ``72.0`` →
    ``72``; ``7.25`` stays a decimal and so never equals an integer answer), None if there is
    none: the one answer rule for the direct and step-by-step styles and every steered completion."""
    got = extract_answer(completion, ANSWER_PATTERN)
    return None if got is None else normalize(got)


def task_items(instances: Sequence[Instance], style: str, examples: Sequence[Instance] = ()) -> list[TaskItem]:
    """The instances as :class:`~melbo_tl.evaluate.tasks.TaskItem` rows for ``rank_by_task``,
    each carrying :data:`ANSWER_PATTERN` as its extraction rule."""
    return [TaskItem(prompt_messages(i, style, examples), str(i.answer), ANSWER_PATTERN) for i in instances]


_ARITHMETIC = re.compile(r"=|\d\s*[-+*×x/]\s*\d")


def _numbers(text: str) -> set[int]:
    return {int(m) for m in re.findall(r"\d+", text.replace(",", ""))}


def shows_work(completion: str, question: str) -> bool:
    """True if the completion does arithmetic (an ``=`` or an operator between digits) and writes
    at least two distinct numbers that are not in the question: an intermediate result besides
    the answer. After "What is 59+63?", ``122`` and ``59+63 = 122`` do not show work;
    ``50+60 = 110. 9+3 = 12. 110+12 = 122`` does."""
    return _ARITHMETIC.search(completion) is not None and len(_numbers(completion) - _numbers(question)) >= 2


def share(flags: Sequence[bool]) -> float:
    require(len(flags) > 0, "share of an empty list")
    return sum(flags) / len(flags)


def instance_dict(inst: Instance) -> dict[str, Any]:
    return {"question": inst.question, "answer": inst.answer, "work": inst.work}
