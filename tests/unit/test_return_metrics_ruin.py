"""A run ruined (equity <= 0) has NaN returns from then on, and then every ratio is NaN
(docs/ANALYSIS.md): the benchmark-relative ratios dropped the NaN bars and measured the rest
(a beta of 36), and the Calmar ratio was -1 / 1.1."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tradingd.analysis import return_metrics as rm
from tradingd.analysis.performance import PerformanceAnalyzer, PerformanceConfig


def _ruined() -> np.ndarray:
    # 1e5 -> 5e4 -> -1e4 -> 2e4 -> 3e4: every return after the ruin is NaN
    return rm.simple_returns(np.array([5e4, -1e4, 2e4, 3e4]), 1e5)


@pytest.mark.parametrize(
    "metric",
    [rm.beta, rm.alpha, rm.correlation, rm.tracking_error, rm.information_ratio],
)
def test_benchmark_relative_ratios_of_a_ruined_run_are_nan(metric):
    r = _ruined()
    assert np.isnan(r).any()
    b = np.array([0.01, -0.02, 0.015, 0.005])
    assert math.isnan(metric(r, b))


def test_a_missing_benchmark_bar_is_still_left_out():
    r = np.array([0.01, 0.02, -0.01, 0.03])
    b = np.array([np.nan, 0.01, -0.02, 0.02])
    # Over the last three bars: r - mean(r) = (0.02, -0.01, 0.03) - 0.04/3 ...
    rr, bb = r[1:], b[1:]
    want = np.sum((rr - rr.mean()) * (bb - bb.mean())) / np.sum((bb - bb.mean()) ** 2)
    assert rm.beta(r, b) == pytest.approx(want, rel=1e-12)


def test_the_calmar_ratio_of_a_ruined_run_is_nan():
    assert math.isnan(rm.calmar_ratio(-1.0, 1.1))
    assert math.isnan(rm.calmar_ratio(-1.0, 1.0))  # equity at exactly zero
    assert rm.calmar_ratio(0.1, 0.2) == pytest.approx(0.5)
    t = pd.date_range("2015-01-02", periods=5, freq="B")
    curve = pd.Series([1e5, 5e4, -1e4, 2e4, 3e4], index=t)
    analyzer = PerformanceAnalyzer(PerformanceConfig(benchmark=""))
    out = analyzer.analyze_performance({"equity_curve": curve, "initial_capital": 1e5})
    assert math.isnan(out["performance"]["calmar"])


@pytest.mark.parametrize("curve", [[50.0, -10.0], [90.0, 0.0], [90.0, 50.0, 0.0, -1.0, 1.0]])
def test_the_run_summary_s_calmar_ratio_of_a_ruined_run_is_nan_as_the_analyzer_s(curve):
    """The backtest's summary printed Calmar -1.00 (annual -100% over a drawdown of 100% or
    more) where `calmar_ratio`, the analyzer's, is NaN: one definition for both."""
    from tradingd.analysis import metrics

    t = list(pd.date_range("2015-01-02", periods=len(curve), freq="B", tz="UTC"))
    s = metrics.summarize(
        np.array(curve), t, [], initial_capital=100.0, gross_exposure=np.zeros(len(curve))
    )
    assert s["max_drawdown"] >= 1.0 and math.isnan(s["calmar"])
    assert rm.calmar_ratio is metrics.calmar_ratio


def test_the_analyzer_gives_a_ruined_run_no_benchmark_ratio():
    """Through the analyzer (tradingd report, PerformanceAnalyzer): it left out the bars
    after the ruin itself, and reported beta 36.4, correlation 0.77, information ratio -6.6
    on an equity curve from 100,000 to -10,000."""
    from tradingd.strategy_api import PerformanceAnalyzer

    t = pd.date_range("2015-01-02", periods=5, freq="B")
    curve = pd.Series([1e5, 5e4, -1e4, 2e4, 3e4], index=t)
    out = PerformanceAnalyzer().analyze_performance({"equity_curve": curve, "initial_capital": 1e5})
    for key in ("beta", "correlation", "tracking_error"):
        assert math.isnan(out["risk"][key]), key
    for key in ("information_ratio", "alpha", "calmar", "sharpe"):
        assert math.isnan(out["performance"][key]), key
