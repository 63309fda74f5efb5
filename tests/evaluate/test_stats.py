"""Rates with Wilson intervals on known values."""

from __future__ import annotations

import pytest

from melbo_tl.evaluate.stats import rate_with_ci


@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (0, 10, 0.0, 0.27753),
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
        (1, 20, 0.00888, 0.23613),
        (1, 1, 0.20654, 1.0),
    ],
)
def test_wilson_interval_known_values(k, n, low, high):
    ci = rate_with_ci(k, n)
    assert (ci.k, ci.n) == (k, n) and ci.rate == pytest.approx(k / n)
    assert ci.low == pytest.approx(low, abs=5e-5) and ci.high == pytest.approx(high, abs=5e-5)
    assert ci.low <= ci.rate <= ci.high


def test_wilson_interval_is_symmetric_and_narrows_with_n():
    a, b = rate_with_ci(3, 10), rate_with_ci(7, 10)
    assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)
    assert rate_with_ci(30, 100).high - rate_with_ci(30, 100).low < a.high - a.low
    assert str(rate_with_ci(5, 10)) == "0.50 [0.24, 0.76]"


@pytest.mark.parametrize(
    "k, n, message",
    [(0, 0, "at least one"), (11, 10, "0…10"), (-1, 10, "0…10"), (1.0, 10, "integer"), (1, True, "integer")],
)
def test_rate_with_ci_rejects_bad_counts(k, n, message):
    with pytest.raises(ValueError, match=message):
        rate_with_ci(k, n)
