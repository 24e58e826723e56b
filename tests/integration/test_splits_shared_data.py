"""AAPL's 7-for-1 split of 2014-06-09 in the real data: raw prices jump, equity must not."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from conftest import run_engine as run

from tradingd.config import load_config
from tradingd.feeds.loaders import load_panel


async def test_aapl_split_leaves_equity_continuous(sp500_parquet, tmp_path):
    panel = load_panel(
        "parquet", str(sp500_parquet), symbols=["AAPL"], start="2014-04-01", end="2014-07-31"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[run]
run_id = "split"
[costs]
commission_pct = 0.0
slippage_pct = 0.0
[broker]
max_volume_participation = 0.0
[orders]
rebalance_band = 0.5
brackets = false
[[signals]]
name = "momentum"
params = {{ lookback = 1 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 1, gross_exposure = 0.9, min_score = -1.0 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 1.0 }}
[storage]
url = "sqlite:///{tmp_path / "s.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    engine, result, rows = await run(load_config([cfg], env={}), "backtest", panel)
    times = result.times
    k = times.index(datetime(2014, 6, 9, tzinfo=UTC))
    raw = pd.read_parquet(sp500_parquet, filters=[("symbol", "==", "AAPL")]).set_index("date")
    c_prev, c_split = raw.loc["2014-06-06", "close"], raw.loc["2014-06-09", "close"]
    assert c_split / c_prev < 0.2  # the raw price does jump

    # Bought once early on and held through the split, with no trade on the split days.
    assert all(f["time"] < times[k - 1] for f in rows["fills"])
    eq_prev, eq_split = result.equity[k - 1], result.equity[k]
    held_after = engine.portfolio.quantity[0]
    held_before = held_after / 7.0
    assert held_before == pytest.approx(round(held_before))  # whole shares times 7
    # Equity moves only by the true (split-adjusted) price change of the position.
    expected = eq_prev + held_after * c_split - held_before * c_prev
    assert eq_split == pytest.approx(expected, rel=1e-12)
    assert abs(eq_split / eq_prev - 1) < 0.03
    # And the cost basis followed the split.
    assert engine.portfolio.avg_price[0] < c_split * 1.5
    assert np.all(np.diff(result.equity) / np.asarray(result.equity[:-1]) > -0.1)
