"""Figures of training and evaluation results."""

from __future__ import annotations

import pytest

from melbo_tl.analysis.figures import rates_figure
from melbo_tl.evaluate.harness import EvalResult, EvalRow
from melbo_tl.evaluate.stats import rate_with_ci


def result(rates: dict[str, tuple[int, int]]) -> EvalResult:
    rows = [EvalRow(label, None, None, n, rate_with_ci(k, n), rate_with_ci(k, n)) for label, (k, n) in rates.items()]
    return EvalResult(rows, [])


def test_rates_figure_draws_one_bar_per_condition_with_wilson_error_bars():
    fig = rates_figure(
        {"harmful": result({"unsteered": (20, 29), "+v": (0, 29)}), "harmless": result({"unsteered": (0, 27)})}
    )
    bars = {trace.name: trace for trace in fig.data}
    assert list(bars) == ["unsteered", "+v"]
    assert list(bars["unsteered"].x) == ["harmful", "harmless"] and list(bars["+v"].x) == ["harmful"]
    ci = rate_with_ci(20, 29)
    assert bars["unsteered"].y[0] == pytest.approx(20 / 29)
    assert bars["unsteered"].error_y.array[0] == pytest.approx(ci.high - ci.rate)
    assert bars["unsteered"].error_y.arrayminus[0] == pytest.approx(ci.rate - ci.low)
    assert bars["+v"].error_y.arrayminus[0] == 0 and bars["+v"].text[0] == "0/29"


def test_rates_figure_names_what_is_missing():
    with pytest.raises(ValueError, match="at least one result"):
        rates_figure({})


def test_calibration_figure_marks_the_target_and_the_calibrated_radius():
    from melbo_tl.analysis.figures import calibration_figure
    from melbo_tl.optimize.calibration import Calibration

    cal = Calibration(radius=6.7, target=0.5, radii=[1.0, 4.0, 6.7, 8.0], rho=[0.1, 0.3, 0.5, 0.6], n_directions=30)
    for given in (cal, cal.to_dict()):
        fig = calibration_figure(given)
        assert list(fig.data[0].x) == cal.radii and list(fig.data[0].y) == cal.rho
        shapes = {(s.type, s.x0 if s.x0 == s.x1 else None, s.y0 if s.y0 == s.y1 else None) for s in fig.layout.shapes}
        assert ("line", 6.7, None) in shapes and ("line", None, 0.5) in shapes
    with pytest.raises(ValueError, match="fixed radius"):
        calibration_figure(Calibration(radius=4.0, target=0.5))
