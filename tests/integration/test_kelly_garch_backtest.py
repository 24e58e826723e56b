"""Kelly x GARCH sizing through the real engine, on the bundled S&P 500 and NASDAQ series."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tradingd.app import build_engine
from tradingd.config import load_config
from tradingd_plugins.sizing.kelly_garch import KellyGarch, target_weights

CAP = 0.05


def kelly_garch_config(tmp_path):
    cfg = tmp_path / "kelly_garch.toml"
    cfg.write_text(f"""
[run]
run_id = "kelly-garch-test"
start = "2010-01-01"
end = "2012-12-31"
output_dir = "{tmp_path / "runs"}"
[data]
source = "bundled"
[[signals]]
name = "momentum"
params = {{ lookback = 63 }}
[sizing]
name = "kelly_garch"
params = {{ max_position = {CAP}, garch_window = 500, refit_bars = 21 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = {CAP} }}
[storage]
url = "sqlite:///{tmp_path / "store.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    return load_config([cfg], env={})


async def test_backtest_weights_follow_garch_volatility_and_stay_under_the_cap(tmp_path):
    config = kelly_garch_config(tmp_path)
    engine = build_engine(config, "backtest")
    sizing = engine.pipeline.sizing
    assert isinstance(sizing, KellyGarch)
    # The engine keeps the plugin's window of raw bars (it asked for garch_window + 1).
    assert engine.history.capacity >= 501

    seen = []
    size = sizing.size

    def recording(score, ctx):
        out = size(score, ctx)
        seen.append(
            (
                score.copy(),
                out.copy(),
                sizing.forecast_variance,
                sizing.kelly,
                ctx.portfolio.weights.copy(),
                ctx.tradable.copy(),
            )
        )
        return out

    sizing.size = recording
    result = await engine.run_until_done()

    assert result.bars == len(seen) > 700  # three years of trading bars, each one sized
    assert result.fills > 0
    assert set(sizing.methods.values()) == {"garch"}  # fitted, not the fallback
    score, targets, var, kelly, weights, tradable = (np.array(x) for x in zip(*seen, strict=True))

    # Every target is the sizing rule on that bar's GARCH forecast, and within the cap.
    for s, t, v, k, w, ok in zip(score, targets, var, kelly, weights, tradable, strict=True):
        expected = np.where(ok, target_weights(s, v, k, sizing.config), w)
        np.testing.assert_allclose(t, expected, rtol=1e-12, atol=1e-15)
    assert np.abs(targets).max() <= CAP
    assert (targets >= 0).all()  # long-only by default

    # Weights move with volatility: sized targets differ from bar to bar and symbol to symbol,
    # and most are below the cap (the vol scalar, not the cap, sets them).
    held = targets > 0
    assert held.sum() > 200
    assert np.unique(np.round(targets[held], 8)).size > 100
    assert (targets[held] < CAP - 1e-9).mean() > 0.5
    # Where the score is the same, the calmer market gets the larger weight: the weight over
    # the signal's confidence is a decreasing function of the forecast volatility.
    uncapped = held & (targets < CAP - 1e-9)
    kelly_at = np.broadcast_to(kelly[:, None], targets.shape)
    per_conf = targets[uncapped] / np.abs(score[uncapped]) / kelly_at[uncapped]
    vol = np.sqrt(var[uncapped] * 252)
    order = np.argsort(vol)
    assert (np.diff(per_conf[order]) <= 1e-12).all()
    # 2010-2012: the flash crash and August 2011 are in it.
    assert vol.max() / vol.min() > 2, (vol.min(), vol.max())

    # The book follows: positions stay within the cap plus the planner's rebalance band and a
    # day of drift.
    band = config.orders.rebalance_band
    assert np.abs(weights).max() <= CAP + band + 0.01


def test_a_backtest_and_a_live_daemon_fit_at_the_engines_priority(tmp_path):
    """A replay waits for its fits before each next bar, a live daemon before each bar's
    checkpoint (and so its next bar): a worker at nice 19 crawls on a machine busy with
    anything else. (test_kelly_garch.py checks that the setting is the worker process's
    niceness.)"""
    from tradingd_plugins.sizing.garch_fits import LIVE_NICE

    config = kelly_garch_config(tmp_path)
    replay_engine = build_engine(config, "backtest")
    try:
        assert replay_engine.pipeline.sizing._runner.nice == 0
    finally:
        replay_engine.close_held()  # built, never run: its writer process and fit worker
    live_config = dataclasses.replace(
        config, feed=dataclasses.replace(config.feed, source="recorded")
    )
    live_engine = build_engine(live_config, "live")
    try:
        assert live_engine.pipeline.sizing._runner.nice == LIVE_NICE == 0
    finally:
        live_engine.close_held()


async def test_a_position_stopped_out_on_its_entry_bar_is_a_trade_on_what_was_bought(tmp_path):
    """The sizing wants 5% of equity, the risk chain cuts it to 2.5% (25 shares at 100); the
    entry fills at the next open, 100, and its 2% stop sells at 98 within that bar, before
    the plugin sizes again: a loss of 25 x 2 = 50 on the 2,500 bought, a return of -0.02 (by
    hand). The plugin never sees the position (flat at both sized bars), and its own 5%
    target would make it -50 / 5,000 = -0.01, halving the average loss that Kelly's f reads."""
    import pandas as pd
    from conftest import run_engine
    from plugin_context import AlwaysLong

    from tradingd.feeds.panel import Panel

    cfg = tmp_path / "quick.toml"
    cfg.write_text(f"""
[run]
run_id = "kelly-quick"
output_dir = "{tmp_path / "runs"}"
initial_capital = 100000.0
[costs]
commission_pct = 0.0
slippage_pct = 0.0
[broker]
max_volume_participation = 0.0
[sizing]
name = "kelly_garch"
params = {{ volatility = "none", fit_executor = "inline", fit_lag_bars = 0, fit_cache_dir = "" }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.025 }}
[orders]
brackets = true
stop_loss_pct = 0.02
take_profit_pct = 0.04
[storage]
url = "sqlite:///{tmp_path / "store.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    config = load_config([cfg], env={})
    # Bar 0 decides at 100; bar 1 opens at 100 and trades down to 97 (the stop at 98 fills);
    # then flat bars at 99 that touch no stop of the entries after it.
    close = np.array([100.0, 99.0, 99.0, 99.0])[:, None]
    open_ = np.array([100.0, 100.0, 99.0, 99.0])[:, None]
    low = np.array([100.0, 97.0, 99.0, 99.0])[:, None]
    panel = Panel(
        times=pd.bdate_range("2021-01-04", periods=4).to_numpy(dtype="datetime64[ns]"),
        symbols=("A",),
        open=open_,
        high=np.maximum(open_, close),
        low=low,
        close=close,
        volume=np.full(close.shape, 1e7),
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )
    engine, _, rows = await run_engine(
        config, "backtest", panel, plugins={"always_long": AlwaysLong}
    )
    fills = [(f["side"], f["quantity"], f["price"]) for f in rows["fills"]][:2]
    assert fills == [("buy", 25.0, 100.0), ("sell", 25.0, 98.0)]
    assert engine.pipeline.sizing.trades == (pytest.approx(-50 / 2_500),)
