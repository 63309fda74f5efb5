"""Rates with confidence intervals.

The Wilson score interval is used because evaluation sets are small (tens to a few hundred
prompts) and rates are often near 0 or 1, where the normal approximation p ± 1.96·√(p(1−p)/n)
collapses to a zero-width interval or leaves [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class RateCI:
    """``k`` successes out of ``n``: ``rate`` = k/n and its Wilson interval [``low``, ``high``]."""

    rate: float
    low: float
    high: float
    k: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.rate:.2f} [{self.low:.2f}, {self.high:.2f}]"


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n."""
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = center - half, center + half
    # exact endpoints at the boundaries (the formula gives them up to rounding)
    return (0.0 if k == 0 else max(0.0, low)), (1.0 if k == n else min(1.0, high))


def rate_with_ci(k: int, n: int) -> RateCI:
    """The rate k/n with its 95 % Wilson confidence interval."""
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer count, got {value!r}.")
    if n < 1:
        raise ValueError(f"A rate needs at least one observation, got n = {n}.")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0…n = 0…{n}, got {k}.")
    low, high = wilson_interval(k, n)
    return RateCI(k / n, low, high, k, n)
