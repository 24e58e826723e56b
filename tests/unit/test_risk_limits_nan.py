"""`max_gross_exposure` called directly with a NaN target (the engine repairs one before):
the NaN counts as no target, as in the sector, correlation and VaR rules; summed as is, it
made the gross NaN and every scaled target NaN."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from tradingd.core.ports import BarContext, PortfolioView
from tradingd.core.types import CrossSection
from tradingd.engine.history import HistoryBuffer
from tradingd_plugins.risk.limits import MaxGrossExposure, MaxGrossExposureConfig

SYMS = ("A", "B", "C")
T = datetime(2021, 3, 1, tzinfo=UTC)


def _ctx(equity: float, peak: float, day_start: float) -> BarContext:
    n = len(SYMS)
    close = np.full(n, 10.0)
    bar = CrossSection(T, close, close, close, close, np.ones(n), np.ones(n), np.zeros(n))
    return BarContext(
        time=T,
        index=0,
        symbols=SYMS,
        bar=bar,
        mark=close,
        tradable=np.ones(n, bool),
        history=HistoryBuffer(n, 2),
        features={},
        portfolio=PortfolioView(
            cash=equity,
            equity=equity,
            quantity=np.zeros(n),
            weights=np.zeros(n),
            peak_equity=peak,
            day_start_equity=day_start,
        ),
    )


def test_max_gross_exposure_counts_a_nan_target_as_none():
    r = MaxGrossExposure(MaxGrossExposureConfig(0.5), SYMS)
    d = r.check(np.array([0.6, np.nan, 0.3]), _ctx(100.0, 100.0, 100.0))
    np.testing.assert_allclose(d.targets, [0.6 / 1.8, 0.0, 0.3 / 1.8])
    [v] = d.verdicts
    assert v.reason == "gross exposure 0.9000 above limit 0.5000"
    assert v.requested == pytest.approx(0.9)
    # Within the cap: the targets as given (the engine's check names a NaN target).
    ok = MaxGrossExposure(MaxGrossExposureConfig(1.0), SYMS)
    assert ok.check(np.array([0.6, np.nan, 0.3]), _ctx(100.0, 100.0, 100.0)).verdicts == ()
