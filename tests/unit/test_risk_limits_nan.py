"""`max_gross_exposure` called directly with a NaN target (the engine repairs one before):
the NaN counts as no target, as in the sector, correlation and VaR rules; summed as is, it
made the gross NaN and every scaled target NaN."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_context import make_context

from tradingd_plugins.risk.limits import MaxGrossExposure, MaxGrossExposureConfig

SYMS = ("A", "B", "C")


def test_max_gross_exposure_counts_a_nan_target_as_none():
    r = MaxGrossExposure(MaxGrossExposureConfig(0.5), SYMS)
    d = r.check(np.array([0.6, np.nan, 0.3]), make_context(SYMS, equity=100.0))
    np.testing.assert_allclose(d.targets, [0.6 / 1.8, 0.0, 0.3 / 1.8])
    [v] = d.verdicts
    assert v.reason == "gross exposure 0.9000 above limit 0.5000"
    assert v.requested == pytest.approx(0.9)
    # Within the cap: the targets as given (the engine's check names a NaN target).
    ok = MaxGrossExposure(MaxGrossExposureConfig(1.0), SYMS)
    assert ok.check(np.array([0.6, np.nan, 0.3]), make_context(SYMS, equity=100.0)).verdicts == ()
