"""Returns across a missing bar (`tradingd_plugins.gaps`): GARCH and EWMA's log returns and
the VaR's simple returns measure the move over an interior gap as one return out of it (the
return into it is 0); leading and trailing gaps stay NaN. Checked against a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plugin_context import make_context

from tradingd_plugins.risk.var import daily_returns
from tradingd_plugins.sizing.garch import ewma_variance, libm_log, log_returns

PROPERTY = settings(max_examples=200, deadline=None)


def filled_reference(col: list[float]) -> list[float]:
    """A missing or non-positive close with a positive close before and after it takes the
    last positive close before it; the others stay as they are."""
    ok = [x == x and x > 0 for x in col]
    if not any(ok):
        return list(col)
    first, last = ok.index(True), len(ok) - 1 - ok[::-1].index(True)
    out, seen = list(col), math.nan
    for i, x in enumerate(col):
        if ok[i]:
            seen = x
        elif first < i < last:
            out[i] = seen
    return out


def returns_reference(close: np.ndarray, kind: str) -> np.ndarray:
    t, n = close.shape
    r = np.full((t - 1, n), np.nan)
    for j in range(n):
        c = filled_reference(close[:, j].tolist())
        for k in range(1, t):
            a, b = c[k - 1], c[k]
            if a == a and b == b and a > 0 and b > 0:
                r[k - 1, j] = math.log(b) - math.log(a) if kind == "log" else b / a - 1.0
    return r


@st.composite
def gappy_window(draw):
    """(T, N) closes of a random walk with leading, interior and trailing gaps, each NaN
    (no bar), 0 or negative (not a price)."""
    t, n = draw(st.integers(2, 40)), draw(st.integers(1, 5))
    steps = draw(st.lists(st.integers(-30, 30), min_size=t * n, max_size=t * n))
    close = 100.0 * np.exp(np.cumsum(np.array(steps, dtype=float).reshape(t, n) / 100, axis=0))
    bad = st.sampled_from([math.nan, 0.0, -5.0])
    for j in range(n):
        lead, trail = draw(st.integers(0, t)), draw(st.integers(0, t))
        for k in range(min(lead, t)):
            close[k, j] = draw(bad)
        for k in range(max(t - trail, 0), t):
            close[k, j] = draw(bad)
        for k in draw(st.lists(st.integers(0, t - 1), max_size=6)):
            close[k, j] = draw(bad)
    return close


def has_interior_gap(close: np.ndarray) -> bool:
    return any(
        filled_reference(close[:, j].tolist()) != close[:, j].tolist()
        for j in range(close.shape[1])
    )


@PROPERTY
@given(close=gappy_window())
def test_log_returns_equal_a_plain_loop_and_are_unchanged_without_an_interior_gap(close):
    got = log_returns(close)
    np.testing.assert_array_equal(got, returns_reference(close, "log"))
    np.testing.assert_array_equal(log_returns(close[:, 0]), got[:, 0])  # one series
    if not has_interior_gap(close):  # bit for bit what it was before interior fills
        with np.errstate(invalid="ignore"):
            before = np.diff(libm_log(np.where(close > 0, close, np.nan)), axis=0)
        np.testing.assert_array_equal(got, before)


@PROPERTY
@given(close=gappy_window())
def test_var_daily_returns_equal_a_plain_loop(close):
    t, n = close.shape
    ctx = make_context(tuple(f"S{i}" for i in range(n)), close)
    np.testing.assert_array_equal(
        daily_returns(ctx.history, t - 1), returns_reference(close, "simple")
    )
    cols = np.arange(n)[::2]
    np.testing.assert_array_equal(
        daily_returns(ctx.history, t - 1, cols), returns_reference(close, "simple")[:, cols]
    )


@PROPERTY
@given(close=gappy_window())
def test_a_return_at_t_uses_no_close_after_t(close):
    """The returns of the window cut at t are those of the whole window, but for the returns
    into a gap still open at t (trailing there: NaN, no later close assumed)."""
    full = log_returns(close)
    for t in range(1, close.shape[0]):
        cut = log_returns(close[: t + 1])
        known = ~np.isnan(cut)
        np.testing.assert_array_equal(cut[known], full[:t][known])
        for j in range(close.shape[1]):
            ok = np.flatnonzero(close[: t + 1, j] > 0)
            last = ok[-1] if ok.size else -1
            # rows that differ are returns into closes after the last price at t
            assert (np.flatnonzero(np.isnan(cut[:, j]) & ~np.isnan(full[:t, j])) >= last).all()


def test_a_crash_after_a_missing_bar_moves_the_ewma_as_the_crash_without_the_gap():
    """A stock with no bar for a day that reopens 30% lower: before, both returns were NaN
    and its EWMA vol stayed at the calm level (0.13). Now the same as the stock flat that day
    (bit for bit), and within 1% of the crash one bar earlier without the day at all (the
    gap's zero return decays the pre-crash variance by one factor lambda: 0.06 x 0.94 x
    sigma2 against 0.06 x 0.127 of the crash, 0.1%)."""
    r = np.random.default_rng(3).normal(0, 0.008, 260)
    calm = 100.0 * np.exp(np.r_[0.0, np.cumsum(r)])
    flat = np.r_[calm, calm[-1], calm[-1] * 0.7]
    gap = flat.copy()
    gap[-2] = np.nan
    without = np.r_[calm, calm[-1] * 0.7]

    def vol(close):
        return math.sqrt(float(ewma_variance(log_returns(close))) * 252)

    assert vol(calm) < 0.15
    assert vol(gap) == vol(flat)
    assert vol(gap) == pytest.approx(vol(without), rel=0.01)
    assert vol(gap) > 1.0
    # Still NaN where no later close exists (trailing) or none before (leading).
    assert np.isnan(log_returns(np.r_[calm, np.nan])[-1])
    assert np.isnan(log_returns(np.r_[np.nan, calm])[0])
