"""The model's live directional accuracy (the specification's "ML model accuracy" health
check): each bar's forecast against the next bar's split-adjusted close-to-close move."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd_plugins.signals.live_accuracy import DirectionalAccuracy


def _brute(closes, splits, forecasts, window, horizon=1):
    """A loop over bars and symbols, from the definition: the forecast made at bar t - h
    against the split-adjusted move from its close to bar t's."""
    per_bar = []
    for t in range(horizon, len(closes)):
        hits = count = 0
        for j in range(len(closes[t])):
            f, c0, c1 = forecasts[t - horizon][j], closes[t - horizon][j], closes[t][j]
            if np.isnan(f) or np.isnan(c0) or np.isnan(c1) or f == 0:
                continue
            split = np.prod([splits[k][j] for k in range(t - horizon + 1, t + 1)])
            move = c1 * split - c0
            if move == 0:
                continue
            count += 1
            hits += (f > 0) == (move > 0)
        if count:
            per_bar.append((hits, count))
    kept = per_bar[-window:]
    return sum(h for h, _ in kept), sum(c for _, c in kept), len(kept)


_value = st.one_of(st.just(np.nan), st.just(0.0), st.floats(-0.05, 0.05))
_price = st.one_of(st.just(np.nan), st.sampled_from([10.0, 10.5, 9.5, 20.0, 5.0]))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda n: st.lists(
            st.tuples(
                st.lists(_price, min_size=n, max_size=n),
                st.lists(st.sampled_from([1.0, 1.0, 2.0, 0.5]), min_size=n, max_size=n),
                st.lists(_value, min_size=n, max_size=n),
            ),
            min_size=1,
            max_size=12,
        )
    ),
    st.integers(1, 6),
    st.integers(1, 4),
)
def test_hits_and_forecasts_are_the_definitions(rows, window, horizon):
    """Over the card's target horizon (`target.horizon_bars`): a horizon-5 model was scored
    against the next bar's move, which it never forecast."""
    closes = [np.array(r[0]) for r in rows]
    splits = [np.array(r[1]) for r in rows]
    forecasts = [np.array(r[2]) for r in rows]
    acc = DirectionalAccuracy(len(closes[0]), bars=window, horizon=horizon)
    for c, s, f in zip(closes, splits, forecasts, strict=True):
        acc.update(c, s, f)
    hits, count, bars = _brute(closes, splits, forecasts, window, horizon)
    got = acc.summary()
    assert (got["forecasts"], got["bars"]) == (count, bars)
    assert got["directional_accuracy"] == (hits / count if count else None)


def test_a_split_is_not_a_fall():
    """A 2-for-1 split halves the close: the forecast of a rise was right if the holding
    rose, whatever the raw price did."""
    acc = DirectionalAccuracy(2)
    acc.update(np.array([100.0, 100.0]), np.ones(2), np.array([0.01, -0.01]))
    acc.update(np.array([51.0, 51.0]), np.array([2.0, 2.0]), np.full(2, np.nan))
    s = acc.summary()
    assert (s["forecasts"], s["directional_accuracy"]) == (2, 0.5)  # up right, down wrong


def test_the_window_is_bounded():
    acc = DirectionalAccuracy(1, bars=3)
    for i in range(100):
        acc.update(np.array([100.0 + i]), np.ones(1), np.array([1.0 if i < 97 else -1.0]))
    s = acc.summary()
    # The last three updates scored the forecasts made at 96-98: up, down, down; it rose.
    assert (s["bars"], s["forecasts"]) == (3, 3)
    assert s["directional_accuracy"] == 1 / 3


def test_a_catch_up_bar_scores_the_forecast_over_its_own_bar():
    """A catch-up bar (stepped untraded) is what the plugin's `observe` passes on with no
    forecast: the last forecast is scored over the bar it forecast, and a 2-for-1 split on
    a later bar is not read as a fall over two bars with one bar's split."""
    acc = DirectionalAccuracy(1)
    acc.update(np.array([100.0]), np.ones(1), np.array([0.01]))  # traded: up
    acc.update(np.array([102.0]), np.ones(1), np.full(1, np.nan))  # catch-up: it rose
    acc.update(np.array([52.0]), np.array([2.0]), np.array([0.01]))  # split, then up
    s = acc.summary()
    assert (s["forecasts"], s["directional_accuracy"]) == (1, 1.0)


def test_a_horizon_2_forecast_is_scored_over_two_bars():
    """Up over two bars, down on the first: a 2-bar forecast of a rise was right."""
    acc = DirectionalAccuracy(1, horizon=2)
    acc.update(np.array([100.0]), np.ones(1), np.array([0.01]))
    acc.update(np.array([99.0]), np.ones(1), np.full(1, np.nan))
    assert acc.summary()["forecasts"] == 0  # not scored after one bar
    acc.update(np.array([51.0]), np.array([2.0]), np.full(1, np.nan))  # 2-for-1: 102
    s = acc.summary()
    assert (s["forecasts"], s["directional_accuracy"], s["horizon_bars"]) == (1, 1.0, 2)


def test_a_horizon_below_one_bar_is_refused():
    import pytest

    with pytest.raises(ValueError, match="horizon must be"):
        DirectionalAccuracy(1, horizon=0)
