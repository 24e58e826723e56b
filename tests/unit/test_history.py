from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.types import CrossSection
from tradingd.engine.history import HistoryBuffer

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def bar(close, split=None):
    close = np.asarray(close, dtype=float)
    n = close.size
    return CrossSection(
        T0,
        close,
        close,
        close,
        close,
        np.full(n, 100.0),
        np.ones(n) if split is None else np.asarray(split, float),
        np.zeros(n),
    )


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(1, 12), pushes=st.integers(0, 40), n=st.integers(1, 12))
def test_window_is_the_last_n_rows_in_order(cap, pushes, n):
    n = min(n, cap)
    h = HistoryBuffer(2, cap)
    rows = []
    for k in range(pushes):
        rows.append([k, -k])
        h.push(bar([k, -k]))
    w = h.window("close", n)
    expected = np.full((n, 2), np.nan)
    tail = np.array(rows[-n:], dtype=float).reshape(-1, 2) if rows else np.zeros((0, 2))
    if len(tail):
        expected[n - len(tail) :] = tail
    np.testing.assert_array_equal(w, expected)
    assert h.length == pushes


def test_split_back_adjusts_past_prices_only():
    h = HistoryBuffer(2, 4)
    h.push(bar([700.0, 50.0]))
    h.push(bar([707.0, 51.0]))
    h.push(bar([101.0, 52.0], split=[7.0, 1.0]))
    w = h.window("close", 3)
    np.testing.assert_allclose(w[:, 0], [100.0, 101.0, 101.0])
    np.testing.assert_allclose(w[:, 1], [50.0, 51.0, 52.0])
    np.testing.assert_allclose(h.window("volume", 3)[:, 0], [700.0, 700.0, 100.0])
