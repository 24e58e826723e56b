"""The independent check of the PerformanceAnalyzer: what empyrical (and scipy, where
empyrical has no function) says of a return series, in the analyzer's sign conventions, and
the comparison with its tolerance. Shared by the unit tests (bundled index curves, random
walks) and the integration tests (real stocks of ../shared/data).

    from empyrical_reference import assert_matches_empyrical, empyrical_reference

Tolerance: relative 1e-10 (absolute 1e-12 near zero); the parametric CVaR, which scipy
integrates numerically, 1e-9. Why these, and each convention difference with empyrical, is
written in tests/unit/test_performance_analyzer.py and docs/ANALYSIS.md.
"""

from __future__ import annotations

import math

import empyrical as ep
import pandas as pd
import pytest
from scipy import stats

from tradingd.analysis.performance import per_bar_rate

REL, ABS = 1e-10, 1e-12
PPY = 252
RF = 0.02
RF_BAR = per_bar_rate(RF, PPY)


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)


def assert_close(ours: dict, ref: dict) -> None:
    bad = {k: (ours[k], v) for k, v in ref.items() if not close(float(ours[k]), float(v))}
    assert not bad, bad


def empyrical_reference(r: pd.Series, b: pd.Series | None, rf_bar: float = RF_BAR) -> dict:
    """What empyrical (and scipy, where empyrical has no function) says, in our signs."""
    mu, sd = float(r.mean()), float(r.std(ddof=1))
    q = stats.norm.ppf(0.05, mu, sd)
    ref = {
        "total_return": ep.cum_returns_final(r),
        "annual_return": ep.annual_return(r, annualization=PPY),
        "annual_volatility": ep.annual_volatility(r, annualization=PPY),
        "sharpe": ep.sharpe_ratio(r, risk_free=rf_bar, annualization=PPY),
        "sortino": ep.sortino_ratio(r, required_return=rf_bar, annualization=PPY),
        "downside_deviation": ep.downside_risk(r, required_return=rf_bar, annualization=PPY),
        "max_drawdown": -ep.max_drawdown(r),  # empyrical: negative
        "calmar": ep.calmar_ratio(r, annualization=PPY),
        "var_historical": -ep.value_at_risk(r, cutoff=0.05),  # empyrical: a return
        "cvar_historical": -ep.conditional_value_at_risk(r, cutoff=0.05),
        "var_parametric": -q,
        "cvar_parametric": -stats.norm.expect(
            lambda x: x, loc=mu, scale=sd, ub=q, conditional=True
        ),
    }
    if b is not None:
        ref.update(
            {
                "beta": ep.beta(r, b, risk_free=rf_bar),
                "alpha": ep.alpha(r, b, risk_free=rf_bar, annualization=PPY),
                "tracking_error": ep.annual_volatility(r - b, annualization=PPY),
                "information_ratio": ep.excess_sharpe(r, b) * math.sqrt(PPY),  # per bar
                "correlation": stats.pearsonr(r, b)[0],
                "benchmark_total_return": ep.cum_returns_final(b),
                "benchmark_annual_return": ep.annual_return(b, annualization=PPY),
                "excess_return": ep.annual_return(r, annualization=PPY)
                - ep.annual_return(b, annualization=PPY),
            }
        )
    return ref


def assert_matches_empyrical(
    metrics: dict, r: pd.Series, b: pd.Series | None, rf_bar: float = RF_BAR
) -> dict:
    """Every metric of `empyrical_reference` agrees with `metrics` (the analyzer's performance
    and risk tables merged). Returns the reference."""
    ref = empyrical_reference(r, b, rf_bar)
    # scipy integrates the normal CVaR numerically: its own error is ~1e-12 relative.
    assert metrics["cvar_parametric"] == pytest.approx(ref["cvar_parametric"], rel=1e-9)
    assert_close(metrics, {k: v for k, v in ref.items() if k != "cvar_parametric"})
    return ref
