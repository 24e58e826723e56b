"""Features reach plugins once per bar, finite, with warm-up held back by the engine."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
from conftest import make_panel, run_engine

from tradingd.config import LiveConfig, StorageConfig
from tradingd.features.catalog import FEATURE_SETS
from tradingd.features.engineer import compute_batch

NAMES = FEATURE_SETS["default_v1"]


@dataclasses.dataclass(frozen=True)
class SpyConfig:
    pass


class Spy:
    """A signal plugin that records what it is handed and wants to buy everything."""

    kind = "signal"
    Config = SpyConfig
    seen: ClassVar[list] = []

    def __init__(self, config, symbols):
        self.name = "spy"

    def required_features(self):
        return NAMES

    def score(self, ctx):
        for n in NAMES:
            v = ctx.features[n]
            assert np.isfinite(v).all(), f"{n} reached the plugin with NaN/inf at {ctx.time}"
        Spy.seen.append((ctx.time, {n: ctx.features[n].copy() for n in NAMES}, ctx.ready.copy()))
        return np.ones(len(ctx.symbols))


@pytest.mark.parametrize("mode", ["backtest", "live"])
async def test_plugins_get_finite_features_and_warmup_never_trades(engine_config, tmp_path, mode):
    panel = make_panel(n_symbols=6, n_bars=220, seed=3, split_at=150)
    # bad data on purpose: a flat, zero-volume stretch
    for f in ("open", "high", "low", "close"):
        getattr(panel, f)[60:90, 2] = 20.0
    panel.volume[60:90, 2] = 0.0
    cfg = dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=2000.0),
        storage=StorageConfig(url=f"sqlite:///{tmp_path / f'{mode}.db'}"),
    )
    Spy.seen = []
    _, result, rows = await run_engine(cfg, mode, panel, plugins={"spy": Spy})
    assert len(Spy.seen) == result.bars == 220  # one call per bar, features computed once
    batch = compute_batch(panel, NAMES)
    times = panel.datetimes()
    for (t, feats, ready), i in zip(Spy.seen, range(220), strict=True):
        assert t == times[i]
        expect_ready = np.isfinite(np.stack([batch[n][i] for n in NAMES])).all(axis=0)
        np.testing.assert_array_equal(ready, expect_ready)
        for n in NAMES:
            np.testing.assert_allclose(
                feats[n][ready], batch[n][i][ready], rtol=1e-9, atol=1e-12, err_msg=n
            )
            # Where a value is not finite the plugin gets 0 (a replay cleans the whole
            # history once before the first bar, the live path each bar: the same values).
            finite = np.isfinite(batch[n][i])
            assert (feats[n][~finite] == 0.0).all(), (n, i)
            np.testing.assert_allclose(
                feats[n][finite], batch[n][i][finite], rtol=1e-9, atol=1e-12, err_msg=n
            )
    # vol_regime_20_120 needs 121 bars: no order may be decided before that
    first_ready = min(i for i, (_, _, r) in enumerate(Spy.seen) if r.any())
    assert first_ready >= 120
    decided = [o for o in rows["orders"] if o["created_at"] < times[first_ready]]
    assert decided == [] and len(rows["orders"]) > 0
