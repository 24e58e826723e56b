"""A drawdown or a daily loss exactly at its limit is a breach at every scale of equity, as
the drawdown guard's reasons say (`>= limit`): 1 - 80000 / 100000 is 0.19999999999999996,
below 0.20, and a 20% fall was no breach where a 5% daily loss (0.050000000000000044) was."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_context import make_context

from tradingd.core.ports import BarContext
from tradingd_plugins.risk.drawdown import DrawdownGuard, DrawdownGuardConfig

SYMS = ("A", "B", "C")


def _ctx(equity: float, peak: float, day_start: float) -> BarContext:
    return make_context(SYMS, equity=equity, peak=peak, day_start=day_start)


# (equity at exactly the limit, the peak or the day's start): 1 - 80000 / 100000 is
# 0.19999999999999996 and 1 - 800 / 1000 is 0.19999999999999996 too.
DRAWDOWN_AT_20 = [(800.0, 1000.0), (80_000.0, 100_000.0), (1.2e6, 1.5e6), (8.0, 10.0)]
LOSS_AT_5 = [(950.0, 1000.0), (95_000.0, 100_000.0), (1.425e6, 1.5e6), (9.5, 10.0)]


@pytest.mark.parametrize(("equity", "peak"), DRAWDOWN_AT_20)
def test_a_drawdown_exactly_at_the_limit_is_a_breach_at_every_scale(equity, peak):
    g = DrawdownGuard(DrawdownGuardConfig(max_drawdown_pct=0.20, daily_loss_limit_pct=0.5), SYMS)
    g.check(np.zeros(3), _ctx(peak, peak, peak))  # the peak
    d = g.check(np.array([0.05, 0.0, 0.0]), _ctx(equity, peak, equity))
    assert g.halted
    [v] = d.verdicts
    assert v.rule == "max_drawdown" and v.action == "halt"
    assert "drawdown 20.00% >= limit 20.00%" in v.reason
    np.testing.assert_array_equal(d.targets, np.zeros(3))  # no entry
    # A cent above the limit's equity is within it.
    ok = DrawdownGuard(DrawdownGuardConfig(max_drawdown_pct=0.20, daily_loss_limit_pct=0.5), SYMS)
    above = equity + 0.01 * (peak / 1000.0)
    assert ok.check(np.array([0.05, 0, 0]), _ctx(above, peak, above)).verdicts == ()


@pytest.mark.parametrize(("equity", "day_start"), LOSS_AT_5)
def test_a_daily_loss_exactly_at_the_limit_halts_at_every_scale(equity, day_start):
    g = DrawdownGuard(DrawdownGuardConfig(max_drawdown_pct=0.5, daily_loss_limit_pct=0.05), SYMS)
    d = g.check(np.array([0.05, 0.0, 0.0]), _ctx(equity, day_start, day_start))
    [v] = d.verdicts
    assert v.rule == "daily_loss_limit" and "daily loss 5.00% >= limit 5.00%" in v.reason
    np.testing.assert_array_equal(d.targets, np.zeros(3))
    within = equity + 0.01 * (day_start / 1000.0)
    assert g.check(np.array([0.05, 0, 0]), _ctx(within, day_start, day_start)).verdicts == ()


@pytest.mark.parametrize("limit", [0.01, 0.03, 0.07, 0.1, 0.15, 0.2, 0.25, 0.33])
@pytest.mark.parametrize("peak", [10.0, 1234.56, 1e5, 123_456.78, 3.3e8])
def test_the_limit_s_own_equity_breaches_for_any_limit_and_peak(limit, peak):
    """The equity at the limit, rounded once from its exact decimal value."""
    from decimal import Decimal

    equity = float(Decimal(repr(peak)) * (1 - Decimal(repr(limit))))
    g = DrawdownGuard(DrawdownGuardConfig(max_drawdown_pct=limit, daily_loss_limit_pct=0.5), SYMS)
    g.check(np.zeros(3), _ctx(peak, peak, peak))
    g.check(np.zeros(3), _ctx(equity, peak, equity))
    assert g.halted
    d = DrawdownGuard(DrawdownGuardConfig(max_drawdown_pct=0.5, daily_loss_limit_pct=limit), SYMS)
    assert d.check(np.array([0.05, 0, 0]), _ctx(equity, peak, peak)).verdicts
