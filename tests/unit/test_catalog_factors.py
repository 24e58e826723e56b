"""The catalogue's mean-reversion factors (rsi_div_<p>_<n>, rsi_obos_<p>_<lo>_<hi>,
bb_reversion): their definitions by hand, and one answer in batch and streaming."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from test_features_streaming import stream_all, universe

from tradingd.core.errors import ConfigError
from tradingd.features.catalog import Catalog
from tradingd.features.engineer import compute_batch

NEW = ("rsi_div_14_14", "rsi_div_7_3", "rsi_obos_14_30_70", "rsi_obos_5_20_80", "bb_reversion")


def test_new_factors_stream_exactly_as_batch():
    # splits (S0, S1), a late listing (S2), a halt (S3), a flat zero-volume stretch (S4)
    p = universe()
    batch = compute_batch(p, NEW)
    stream = stream_all(p, NEW)
    for n in NEW:
        b, s = batch[n], stream[n]
        np.testing.assert_array_equal(np.isnan(b), np.isnan(s), err_msg=f"{n}: readiness")
        assert np.isfinite(b).sum() > 0.8 * b.size, n
        np.testing.assert_allclose(s, b, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=n)


def _std(w):
    """Sample std over the last axis; a window constant but for rounding counts as flat (0),
    the catalogue's rule: a flat RSI wobbles in its last bits, and that is no divergence."""
    std = w.std(axis=-1, ddof=1)
    return np.where(std <= 1e-12 * np.maximum(np.abs(w.mean(axis=-1)), 1.0), 0.0, std)


def _div(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b == 0, 0.0, a / b)


def test_rsi_divergence_by_hand():
    """(RSI change over n bars) / (its std over those n + 1 bars), minus the same for close."""
    p = universe()
    j, n = 4, 5  # S4: no split, no gap, and a flat stretch (both stds 0 there)
    f = compute_batch(p, ["rsi_div_14_5", "rsi_14"])
    r, x = f["rsi_14"][:, j], p.close[:, j]
    rw, xw = sliding_window_view(r, n + 1), sliding_window_view(x, n + 1)
    expect = np.full(r.shape, np.nan)
    expect[n:] = _div(rw[:, -1] - rw[:, 0], _std(rw)) - _div(xw[:, -1] - xw[:, 0], _std(xw))
    got = f["rsi_div_14_5"][:, j]
    np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12, equal_nan=True)
    # ready one RSI warm-up plus n bars after the first bar
    assert np.isnan(got[: 14 + n]).all() and np.isfinite(got[14 + n])
    assert (got[260:280] == 0).all()  # price and RSI flat: no divergence


def test_rsi_divergence_sign():
    """Price falls while RSI holds up: positive (bullish); price rises on a falling RSI:
    negative. Checked on the hand formula's two halves with made-up inputs."""
    cat = Catalog()
    node = cat.node("rsi_div_14_3")
    r = np.array([0.40, 0.42, 0.44, 0.46])  # rising RSI
    x = np.array([100.0, 99.0, 98.0, 97.0])  # falling price
    args = (r[-1], r[0], _std(r), x[-1], x[0], _std(x))
    assert node.fn(*args) > 0
    args = (r[0], r[-1], _std(r), x[0], x[-1], _std(x))  # the mirror image
    assert node.fn(*args) < 0


def test_oversold_overbought_and_bollinger_reversion_by_hand():
    p = universe()
    f = compute_batch(p, ["rsi_obos_14_30_70", "rsi_14", "bb_reversion", "bb_position"])
    r = f["rsi_14"]
    expect = np.where(r < 0.3, (0.3 - r) / 0.3, np.where(r > 0.7, -(r - 0.7) / 0.3, 0.0))
    expect[np.isnan(r)] = np.nan
    np.testing.assert_allclose(f["rsi_obos_14_30_70"], expect, atol=1e-12, equal_nan=True)
    pos = f["bb_position"]
    expect = np.where(pos < 0, -pos, np.where(pos > 1, -(pos - 1), 0.0))
    expect[np.isnan(pos)] = np.nan
    np.testing.assert_allclose(f["bb_reversion"], expect, atol=1e-12, equal_nan=True)
    # the data reach both sides, so both branches are exercised
    for name in ("rsi_obos_14_30_70", "bb_reversion"):
        assert np.nanmax(f[name]) > 0 > np.nanmin(f[name]), name
    # the extremes: RSI 0 is +1, RSI 100 is -1
    fn = Catalog().node("rsi_obos_14_30_70").fn
    np.testing.assert_allclose(fn(np.array([0.0, 0.3, 0.5, 0.7, 1.0])), [1, 0, 0, 0, -1])


@pytest.mark.parametrize(
    "name", ["rsi_obos_14_70_30", "rsi_obos_14_0_70", "rsi_obos_14_30_100", "rsi_div_14_0"]
)
def test_bad_parameters_are_unknown_features(name):
    with pytest.raises(ConfigError, match="unknown feature"):
        Catalog().node(name)


def test_shared_sub_expressions_keep_their_public_names():
    cat = Catalog()
    cat.node("rsi_div_14_14")
    fresh = Catalog()
    for name in ("lag_14_rsi_14", "lag_14_close", "rsi_14", "bb_position"):
        assert cat.node(name) == fresh.node(name), name
