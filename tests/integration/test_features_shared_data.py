"""Batch and streaming agree on real data: several symbols over 1999-2018, splits included."""

from __future__ import annotations

import numpy as np

from tradingd.features.catalog import FEATURE_SETS
from tradingd.features.engineer import StreamingFeatures, compute_batch
from tradingd.feeds.loaders import load_panel


def test_batch_and_streaming_agree_on_real_data(sp500_parquet):
    # AAPL: 2000, 2005 and 2014 (7-for-1) splits; GE: a 3-for-1; HPE lists in 2015.
    panel = load_panel("parquet", str(sp500_parquet), symbols=["AAPL", "GE", "HPE", "MSFT", "XOM"])
    assert (panel.split != 1.0).sum() >= 5
    names = (*FEATURE_SETS["default_v1"], "macd", "atr_14", "obv", "bb_lower", "trend_50_200")
    batch = compute_batch(panel, names)
    sf = StreamingFeatures(names, len(panel.symbols))
    times = panel.datetimes()
    worst = {}
    for i, t in enumerate(times):
        vals = sf.update(panel.row(i, t))
        for n in names:
            b, s = batch[n][i], vals[n]
            assert np.array_equal(np.isnan(b), np.isnan(s)), (n, t)
            ok = np.isfinite(b)
            if ok.any():
                err = np.max(np.abs(s[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1.0))
                worst[n] = max(worst.get(n, 0.0), float(err))
    bad = {n: e for n, e in worst.items() if e > 1e-9}
    assert not bad, bad
