"""Answer-change triage: vectors whose wrong answers consistently equal another function of the operands.

A vector that silently swaps sums for products leaves fluent, well-formatted text with a wrong
number; exact-match accuracy only says "wrong", and a reader skimming completions sees nothing odd.
When a task's items carry their ``operands`` (``{"a1": 4, "a2": 2, …}``), each wrong answer can be
checked against alternative functions of those operands: every expression over an ordered
subset of the operands with ``+``, ``-`` and ``*`` (each operand used at most once, in the given
order; 229 expressions for four operands), any the user adds, and "a constant". A vector *shows*
a function when at least ``min_matches`` of its wrong answers equal it (on items where the function
differs from the right answer) and they are at least ``min_share`` of its wrong answers. Vectors
are then grouped by the function they show, so the auditor reads one line per kind of mistake:
"(a1 * a2) * (b1 * b2): vectors 17, 40" stands out from "b2: 12 vectors" (echoing an operand).

Expressions that take the same value on every item are one function here (the shortest names it;
the others are listed as ``equivalent``).

>>> report = answer_changes(answers, truths, operands)   # answers: {vector: [text or None per item]}
>>> [(g.function, g.vectors) for g in report.groups]
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from melbo_tl.config import Config, require
from melbo_tl.evaluate.task_items import TaskItem, extract_answer

Operands = Mapping[str, float]
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_SYMBOL = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult}
CONSTANT = "constant"


def _trees(names: Sequence[str], ops: str) -> list[str]:
    """Every full binary expression over ``names`` (in order), fully parenthesized inside."""
    if len(names) == 1:
        return [names[0]]
    out = []
    for cut in range(1, len(names)):
        for left in _trees(names[:cut], ops):
            for right in _trees(names[cut:], ops):
                wrap = [f"({t})" if len(t.split()) > 1 else t for t in (left, right)]
                out += [f"{wrap[0]} {op} {wrap[1]}" for op in ops]
    return out


def candidate_expressions(names: Sequence[str], *, ops: str = "+-*", max_operands: int = 4) -> list[str]:
    """Expressions over every ordered subset of ``names`` of at most ``max_operands`` operands."""
    require(len(names) > 0, "candidate_expressions needs at least one operand name.")
    require(all(o in _SYMBOL for o in ops), f"ops must be drawn from '+-*', got {ops!r}.")
    out: list[str] = []
    for k in range(1, min(max_operands, len(names)) + 1):
        for subset in itertools.combinations(names, k):
            out += _trees(subset, ops)
    return out


def compile_expression(expression: str, names: Sequence[str] | None) -> Callable[[Operands], float]:
    """A function of the operands from ``expression`` (names, numbers, + - * /, parentheses);
    anything else is an error naming what is allowed. ``names`` None: any name (syntax check)."""
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise ValueError(f"Alternative {expression!r} is not an arithmetic expression.") from None

    def build(node: ast.AST) -> Callable[[Operands], float]:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            fn, left, right = _OPS[type(node.op)], build(node.left), build(node.right)
            return lambda x: fn(left(x), right(x))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = build(node.operand)
            return lambda x: -inner(x)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            value = float(node.value)
            return lambda x: value
        if isinstance(node, ast.Name) and (names is None or node.id in names):
            name = node.id
            return lambda x: float(x[name])
        if isinstance(node, ast.Name):
            raise ValueError(
                f"Alternative {expression!r} names {node.id!r}; the operands are {', '.join(names or ())}."
            )
        raise ValueError(f"Alternative {expression!r} may use only operand names, numbers, + - * / and parentheses.")

    return build(tree)


def _value(fn: Callable[[Operands], float], x: Operands) -> float:
    try:
        return fn(x)
    except ZeroDivisionError:
        return math.nan


def parse_number(text: str | None) -> float | None:
    """The number an extracted answer states (thousands separators dropped), else None."""
    if text is None:
        return None
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@dataclass
class AnswerChangeConfig(Config):
    """Settings of the answer-change triage: ``min_matches`` wrong answers equal to a function
    before a vector shows it; ``min_share`` of its wrong answers they must be; ``max_operands``
    per generated expression; ``ops`` the operators generated expressions use; ``alternatives``
    extra expressions to test (e.g. ``"a1 * a2 * b1 * b2"``)."""

    min_matches: int = 5
    min_share: float = 0.5
    max_operands: int = 4
    ops: str = "+-*"
    alternatives: tuple[str, ...] = ()

    def validate(self) -> None:
        require(self.min_matches >= 1, f"min_matches must be ≥ 1, got {self.min_matches}.")
        require(0 < self.min_share <= 1, f"min_share must be in (0, 1], got {self.min_share}.")
        require(self.max_operands >= 1, f"max_operands must be ≥ 1, got {self.max_operands}.")
        require(
            bool(self.ops) and all(o in _SYMBOL for o in self.ops), f"ops must be drawn from '+-*', got {self.ops!r}."
        )
        for expression in self.alternatives:
            compile_expression(expression, None)

    def check_operands(self, names: Sequence[str]) -> None:
        """Raise if an alternative names something that is not an operand."""
        for expression in self.alternatives:
            compile_expression(expression, names)


@dataclass
class VectorChange:
    """One vector: ``wrong`` of ``n`` answers wrong; ``function`` the alternative its wrong answers
    match most (None: none); ``matches`` how many; ``share`` = matches / wrong; ``shows``
    whether that passes the thresholds."""

    vector: int
    n: int
    wrong: int
    function: str | None
    matches: int
    share: float
    shows: bool


@dataclass
class FunctionGroup:
    """Vectors showing one function: ``vectors`` in run order, ``first`` of them, ``mean_share``
    of wrong answers it explains, ``equivalent`` expressions with the same values on these items."""

    function: str
    vectors: list[int]
    first: int
    mean_share: float
    equivalent: list[str] = field(default_factory=list)


@dataclass
class AnswerChangeReport:
    """``reference``: the functions equal to the right answer on every item (a check that the
    operands fit the task); ``vectors`` per vector; ``groups`` biggest first (then earliest);
    ``n_functions`` distinct functions tested; ``config``."""

    reference: list[str]
    vectors: list[VectorChange]
    groups: list[FunctionGroup]
    n_functions: int
    config: dict[str, Any]

    def group(self, function: str) -> FunctionGroup | None:
        """The group whose function is ``function`` or one of its equivalents."""
        return next((g for g in self.groups if function == g.function or function in g.equivalent), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            f"Answer changes: {len(self.vectors)} vectors, {self.n_functions} alternative functions of the operands "
            f"(right answer = {self.reference[0] if self.reference else 'none of them'}).",
            "",
            "| function | vectors | first | mean share of wrong answers | vectors showing it |",
            "|---|---:|---:|---:|---|",
        ]
        for g in self.groups:
            shown = ", ".join(map(str, g.vectors[:12])) + (" …" if len(g.vectors) > 12 else "")
            lines.append(f"| `{g.function}` | {len(g.vectors)} | {g.first} | {g.mean_share:.2f} | {shown} |")
        if not self.groups:
            lines.append("| (no vector changes answers consistently) | 0 | – | – | – |")
        return "\n".join(lines) + "\n"


def function_table(
    operands: Sequence[Operands], cfg: AnswerChangeConfig
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """``{function: value per item}`` with expressions of equal values merged (the shortest names
    the class), and ``{function: equivalent expressions}``."""
    names = list(operands[0])
    require(all(list(x) == names for x in operands), f"every item needs the same operands ({', '.join(names)}).")
    expressions = [*candidate_expressions(names, ops=cfg.ops, max_operands=cfg.max_operands), *cfg.alternatives]
    classes: dict[tuple[float, ...], list[str]] = {}
    for expression in dict.fromkeys(expressions):
        fn = compile_expression(expression, names)
        values = tuple(round(_value(fn, x), 9) for x in operands)
        classes.setdefault(values, []).append(expression)
    table, equivalent = {}, {}
    for values, members in classes.items():
        members = sorted(members, key=lambda e: (len(e), _depth(e), expressions.index(e)))
        table[members[0]], equivalent[members[0]] = list(values), members[1:]
    return table, equivalent


def _depth(expression: str) -> int:
    """Deepest parenthesis nesting: of two equally long spellings the flatter reads better."""
    depth = deepest = 0
    for ch in expression:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
    return deepest


def classify_vector(
    vector: int,
    answers: Sequence[float | None],
    truths: Sequence[float],
    table: Mapping[str, Sequence[float]],
    cfg: AnswerChangeConfig,
) -> VectorChange:
    """Which function (or constant) the vector's wrong answers follow, and whether consistently."""
    wrong = [i for i, (a, t) in enumerate(zip(answers, truths)) if not _same(a, t)]
    best, best_matches = None, 0
    for function, values in table.items():
        matches = sum(_same(answers[i], values[i]) and not _same(values[i], truths[i]) for i in wrong)
        if matches > best_matches:
            best, best_matches = function, matches
    stated = Counter(answers[i] for i in wrong if answers[i] is not None)
    if stated:
        value, count = stated.most_common(1)[0]
        if count > best_matches:
            best, best_matches = f"{CONSTANT} {value:g}", count
    share = best_matches / len(wrong) if wrong else 0.0
    shows = best_matches >= cfg.min_matches and share >= cfg.min_share
    return VectorChange(vector, len(answers), len(wrong), best, best_matches, round(share, 4), shows)


def answer_changes(
    answers: Mapping[int, Sequence[str | None]],
    truths: Sequence[str | float],
    operands: Sequence[Operands],
    cfg: AnswerChangeConfig | None = None,
    **settings: Any,
) -> AnswerChangeReport:
    """Classify every vector's answers (``{vector: extracted answer per item}``) against the
    alternative functions of the items' ``operands`` and group the vectors by function."""
    cfg = AnswerChangeConfig.build(cfg, **settings)
    require(len(operands) == len(truths) > 0, f"need one operands entry per item: {len(operands)} vs {len(truths)}.")
    true_values = [parse_number(str(t)) for t in truths]
    require(all(v is not None for v in true_values), "every item's answer must be a number for answer changes.")
    table, equivalent = function_table(operands, cfg)
    reference = [f for f, values in table.items() if all(_same(v, t) for v, t in zip(values, true_values))]
    reference += [e for f in reference for e in equivalent[f]]
    numbers = {v: [parse_number(a) for a in texts] for v, texts in answers.items()}
    for v, row in numbers.items():
        require(len(row) == len(truths), f"vector {v} has {len(row)} answers for {len(truths)} items.")
    changes = [classify_vector(v, numbers[v], true_values, table, cfg) for v in sorted(numbers)]  # type: ignore[arg-type]
    by_function: dict[str, list[VectorChange]] = {}
    for c in changes:
        if c.shows and c.function is not None:
            by_function.setdefault(c.function, []).append(c)
    groups = [
        FunctionGroup(f, [c.vector for c in cs], cs[0].vector, round(sum(c.share for c in cs) / len(cs), 4),
                      equivalent.get(f, []))
        for f, cs in by_function.items()
    ]  # fmt: skip
    groups.sort(key=lambda g: (-len(g.vectors), g.first))
    return AnswerChangeReport(reference, changes, groups, len(table), cfg.to_dict())


def answer_change_of(
    rows: Sequence[dict[str, Any]],
    items: Sequence[TaskItem],
    extract: str | None,
    cfg: AnswerChangeConfig | None = None,
) -> AnswerChangeReport | None:
    """The answer-change triage of completion rows (None unless every item has operands)."""
    if not items or any(i.operands is None for i in items):
        return None
    answers: dict[int, list[str | None]] = {}
    for r in sorted(rows, key=lambda r: (r["vector"], r["item"])):
        item = items[r["item"]]
        answers.setdefault(r["vector"], []).append(
            extract_answer(r["completion"], item.extract if item.extract is not None else extract)
        )
    return answer_changes(answers, [i.answer for i in items], [i.operands or {} for i in items], cfg)
