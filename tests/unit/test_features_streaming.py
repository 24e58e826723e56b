"""Two modes, one answer: streaming updates equal batch values at every bar."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tradingd.core.types import CrossSection
from tradingd.features.catalog import FEATURE_SETS, Catalog, warmup
from tradingd.features.engineer import StreamingFeatures, compute_batch
from tradingd.feeds.panel import Panel

EXTRA = (
    "log_ret_1",
    "macd_norm",
    "bb_upper",
    "atr_14",
    "obv",
    "trange",
    "stoch_d",
    "ret_mean_5",
    "trend_5_20",
    "lag_3_rsi_14",
    "zscore_10_close",
    "cs_z_rsi_14",
    "return_20",
    "sma_10",
    "volatility_10",
)


def stream_all(panel: Panel, names, catalog=None):
    sf = StreamingFeatures(names, len(panel.symbols), catalog)
    out = {n: np.full(panel.close.shape, np.nan) for n in names}
    for i, t in enumerate(panel.datetimes()):
        vals = sf.update(panel.row(i, t))
        for n in names:
            out[n][i] = vals[n]
    return out


def universe(t=360, n=5, seed=5):
    rng = np.random.default_rng(seed)
    close = 30 * np.exp(np.cumsum(rng.normal(0, 0.02, (t, n)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.004, (t, n)))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, (t, n)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, (t, n)))
    vol = rng.integers(1e4, 1e6, (t, n)).astype(float)
    split = np.ones((t, n))
    # symbol 0: a 4-for-1 split; symbol 1: a 1-for-2 reverse split; symbol 2: lists late;
    # symbol 3: a halt in the middle; symbol 4: a flat stretch with zero volume
    for j, k, s in ((0, 150, 4.0), (1, 200, 0.5)):
        split[k, j] = s
        for a in (open_, high, low, close):
            a[k:, j] /= s
        vol[k:, j] *= s
    for a in (open_, high, low, close, vol):
        a[:60, 2] = np.nan
        a[100:110, 3] = np.nan
    close[250:280, 4] = open_[250:280, 4] = high[250:280, 4] = low[250:280, 4] = 25.0
    vol[250:280, 4] = 0.0
    times = pd.bdate_range("2015-01-01", periods=t).to_numpy(dtype="datetime64[ns]")
    return Panel(
        times,
        tuple(f"S{j}" for j in range(n)),
        open_,
        high,
        low,
        close,
        vol,
        split,
        np.zeros((t, n)),
    )


def test_streaming_equals_batch_for_the_default_set_and_more():
    p = universe()
    names = (*FEATURE_SETS["default_v1"], *EXTRA)
    batch = compute_batch(p, names)
    stream = stream_all(p, names)
    for n in names:
        b, s = batch[n], stream[n]
        np.testing.assert_array_equal(np.isnan(b), np.isnan(s), err_msg=f"{n}: readiness")
        scale = np.nanmax(np.abs(b)) if np.isfinite(b).any() else 1.0
        np.testing.assert_allclose(
            s, b, rtol=1e-9, atol=1e-9 * max(scale, 1.0), equal_nan=True, err_msg=n
        )
    # and the warm-up really is not-ready in both: rsi_14 needs 14 earlier bars of its own
    assert np.isnan(stream["rsi_14"][:14, 0]).all() and np.isfinite(stream["rsi_14"][14, 0])
    assert np.isnan(stream["rsi_14"][: 60 + 14, 2]).all()  # the late lister counts its own bars


def test_zscore_cross_sectional_method_from_config():
    p = universe()
    cat = Catalog(cross_method="zscore")
    b = compute_batch(p, ["cs_ret_1"], cat)["cs_ret_1"]
    s = stream_all(p, ["cs_ret_1"], Catalog(cross_method="zscore"))["cs_ret_1"]
    np.testing.assert_allclose(s, b, rtol=1e-9, atol=1e-12, equal_nan=True)
    row = b[300][np.isfinite(b[300])]
    assert abs(row.mean()) < 1e-12 and abs(row.std() - 1) < 1e-9


def test_streaming_never_sees_the_next_bar():
    """A streaming update at bar t returns the same whatever bars come later (it cannot see
    them); here the panel after t is replaced by garbage."""
    p = universe()
    names = FEATURE_SETS["default_v1"]
    sf = StreamingFeatures(names, len(p.symbols))
    times = p.datetimes()
    for i in range(200):
        sf.update(p.row(i, times[i]))
    at_200 = sf.update(p.row(200, times[200]))
    batch = compute_batch(p, names)
    for n in names:
        np.testing.assert_allclose(
            at_200[n], batch[n][200], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=n
        )
    garbage = CrossSection(times[201], *(np.full(5, 1e9),) * 5, np.ones(5), np.zeros(5))
    sf.update(garbage)  # later bars do not rewrite what was returned for bar 200
    np.testing.assert_allclose(at_200["rsi_14"], batch["rsi_14"][200], equal_nan=True)


def test_warmup_bounds_the_bars_before_each_feature_has_a_value():
    """catalog.warmup(node) is an upper bound of the leading bars without a value (exact for
    windows); it raised IndexError for one-parameter indicators such as RSI."""
    p = universe()
    names = (
        *FEATURE_SETS["default_v1"],
        *EXTRA,
        "rsi_div_14_14",
        "rsi_obos_14_30_70",
        "bb_reversion",
        "vol_regime_20_120",
    )
    batch = compute_batch(p, names)
    cat = Catalog()
    checked = 0
    for n in names:
        bound = warmup(cat.node(n))
        first = int(np.flatnonzero(np.isfinite(batch[n][:, 1]))[0])  # a plain symbol
        assert first <= bound, f"{n}: a value at bar {first}, warm-up said {bound}"
        checked += 1
    assert warmup(cat.node("rsi_14")) == 14 and warmup(cat.node("sma_10")) == 9
    assert checked == len(names)
