"""Degenerate completions: text that is no behaviour at all.

A steering vector that is too strong makes the model loop, parrot the prompt or stop at once.
Those completions are kept apart in triage so they never count as behaviours. Three checks, on
the decoded text (word level, so they work for any tokenizer):

- **empty**: fewer than ``min_words`` words;
- **repetition**: the share of repeated word n-grams (n = 3) is at least ``max_repeated``, or one
  line makes up most of the lines (loops like "Open a new tab / Close the tab / …");
- **echo**: most of the completion's words are the prompt's, in the prompt's order (the longest
  common word run covers ``min_echo`` of the completion).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Degeneracy:
    """Fields: ``empty``, ``repetition``, ``echo`` flags; ``repeated_share`` of word 3-grams;
    ``echo_share`` of the completion's words in the longest run shared with the prompt."""

    empty: bool
    repetition: bool
    echo: bool
    repeated_share: float
    echo_share: float

    @property
    def degenerate(self) -> bool:
        return self.empty or self.repetition or self.echo

    @property
    def kind(self) -> str:
        """ "empty", "repetition", "echo" (the first that applies) or "" when the text is fine."""
        return next((k for k in ("empty", "repetition", "echo") if getattr(self, k)), "")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "degenerate": self.degenerate, "kind": self.kind}


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repeated_share(tokens: list[str], n: int = 3) -> float:
    """Share of word n-grams that occur more than once (0 for texts shorter than n + 1 words)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) < 2:
        return 0.0
    counts = Counter(grams)
    return sum(c for c in counts.values() if c > 1) / len(grams)


def _line_loop(text: str) -> bool:
    lines = [ln.strip().lower() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 4:
        return False
    top = Counter(lines).most_common(1)[0][1]
    return top * 2 >= len(lines)


def echo_share(completion: list[str], prompt: list[str]) -> float:
    """Longest run of consecutive words shared with the prompt, as a share of the completion."""
    if not completion or not prompt:
        return 0.0
    best = 0
    previous = [0] * (len(prompt) + 1)
    for a in completion:
        current = [0] * (len(prompt) + 1)
        for j, b in enumerate(prompt, start=1):
            if a == b:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best / len(completion)


def degeneracy(
    completion: str, prompt: str = "", *, min_words: int = 2, max_repeated: float = 0.5, min_echo: float = 0.6
) -> Degeneracy:
    """Check one completion (``prompt``: the user's message, for the echo check)."""
    tokens = words(completion)
    rep = repeated_share(tokens)
    echo = echo_share(tokens, words(prompt))
    return Degeneracy(
        empty=len(tokens) < min_words,
        repetition=len(tokens) >= min_words and (rep >= max_repeated or _line_loop(completion)),
        echo=len(tokens) >= min_words and echo >= min_echo,
        repeated_share=rep,
        echo_share=echo,
    )
