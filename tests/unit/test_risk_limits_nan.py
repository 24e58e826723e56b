"""`max_gross_exposure`, `max_position` and `max_open_positions` called directly with a NaN
target (the engine repairs one before): the NaN counts as no target, as in the sector,
correlation and VaR rules. Summed as is, it made the gross NaN and every scaled target NaN;
clipped, it stayed NaN in `max_position`'s new targets; counted, it took one of
`max_open_positions`' slots."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_context import make_context

from tradingd_plugins.risk.limits import (
    MaxGrossExposure,
    MaxGrossExposureConfig,
    MaxOpenPositions,
    MaxOpenPositionsConfig,
    MaxPosition,
    MaxPositionConfig,
)

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


def test_max_position_counts_a_nan_target_as_none():
    """A NaN is never above the cap, so it went through `np.clip` into the clipped
    targets as NaN; it is none there now (0), as in the gross, sector and correlation rules."""
    r = MaxPosition(MaxPositionConfig(0.05), SYMS)
    d = r.check(np.array([0.08, np.nan, -0.02]), make_context(SYMS, equity=100.0))
    np.testing.assert_array_equal(d.targets, [0.05, 0.0, -0.02])
    [v] = d.verdicts
    assert (v.symbol, v.action, v.requested, v.allowed) == ("A", "clip", 0.08, 0.05)
    # Nothing to clip: the targets as given, as max_gross_exposure does.
    assert r.check(np.array([0.01, np.nan, 0.02]), make_context(SYMS, equity=100.0)).verdicts == ()


def test_max_open_positions_counts_a_nan_target_as_none():
    """A NaN target was counted as open (nonzero to `flatnonzero`): with two slots,
    [0.03, NaN, 0.02] was one too many, a reject verdict for the NaN (and a held symbol's
    NaN, ranked first, took a slot from a real target)."""
    r = MaxOpenPositions(MaxOpenPositionsConfig(2), SYMS)
    d = r.check(np.array([0.03, np.nan, 0.02]), make_context(SYMS, equity=100.0))
    assert d.verdicts == ()
    assert d.targets[0] == 0.03 and d.targets[2] == 0.02
    # Over the count: the kept targets, the NaN none (0), one verdict for the one dropped.
    one = MaxOpenPositions(MaxOpenPositionsConfig(1), SYMS)
    d = one.check(np.array([0.03, np.nan, 0.02]), make_context(SYMS, equity=100.0))
    np.testing.assert_array_equal(d.targets, [0.03, 0.0, 0.0])
    assert [(v.symbol, v.action) for v in d.verdicts] == [("C", "reject")]
    # A held symbol's NaN no longer outranks a real target for the last slot.
    held_b = make_context(SYMS, weights=[0.0, 0.04, 0.0], equity=100.0)
    d = one.check(np.array([0.03, np.nan, 0.0]), held_b)
    assert d.verdicts == () and d.targets[0] == 0.03
