from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tradingd.core.errors import DataError
from tradingd.features.frames import FeatureEngineer


def frame(n=300, seed=0, start="2012-01-02"):
    rng = np.random.default_rng(seed)
    close = 20 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return pd.DataFrame(
        {
            "open": close * 0.999,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": rng.integers(1e5, 1e6, n).astype(float),
        },
        index=pd.bdate_range(start, periods=n),
    )


def test_generate_basic_and_advanced_features():
    df = frame()
    fe = FeatureEngineer()
    basic = fe.generate_basic_features(df)
    np.testing.assert_allclose(basic["ret_1"].iloc[1:], df["close"].pct_change().iloc[1:])
    np.testing.assert_allclose(basic["hl_range"], (df["high"] - df["low"]) / df["close"])
    adv = fe.generate_advanced_features(df)
    assert {"natr_14", "rsi_macd", "support_20", "vol_regime_20_120", "lag_5_ret_1"} <= set(adv)
    assert not np.isinf(adv.select_dtypes("number").to_numpy()).any()
    with pytest.raises(DataError, match="lacks column"):
        fe.generate_basic_features(df.drop(columns="volume"))


def test_cross_sectional_and_time_series_standardisation():
    fe = FeatureEngineer(zscore_window=10)
    a, b, c = (fe.generate_basic_features(frame(seed=s)) for s in (1, 2, 3))
    out = fe.cross_sectional_normalize({"A": a, "B": b, "C": c}, ["ret_1"])
    t = a.index[5]
    vals = {s: d.loc[t, "ret_1"] for s, d in {"A": a, "B": b, "C": c}.items()}
    best = max(vals, key=vals.get)
    assert out[best].loc[t, "cs_ret_1"] == 1.0  # the largest of three ranks at +1
    z = fe.time_series_standardize(a, ["ret_1"])
    w = a["ret_1"].iloc[-10:]
    assert z["ret_1_z"].iloc[-1] == pytest.approx((w.iloc[-1] - w.mean()) / w.std(ddof=1))
    # the z-score at bar 50 does not move when the future changes
    a2 = a.copy()
    a2.iloc[51:, a2.columns.get_loc("ret_1")] = 99.0
    assert fe.time_series_standardize(a2, ["ret_1"])["ret_1_z"].iloc[50] == pytest.approx(
        z["ret_1_z"].iloc[50]
    )


def test_prepare_ml_data_on_a_frame():
    fe = FeatureEngineer()
    df = fe.generate_advanced_features(fe.generate_basic_features(frame(n=400)))
    d = fe.prepare_ml_data(df, "close", time_steps=20)
    n_features = len([c for c in df.columns if c not in ("open", "high", "low", "close", "volume")])
    assert d["x_train"].shape[1:] == (20, n_features)
    assert d["t_train"].max() < d["t_val"].min()
