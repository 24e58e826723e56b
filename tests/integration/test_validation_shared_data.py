"""StatisticalValidator and Monte Carlo on real curves of the shared S&P 500 data.

* 19 years of an equal-weight, daily-rebalanced portfolio of eight stocks (1999-12-31 ..
  2018-12-31, 4,779 returns): the tests are all defined, agree with scipy / statsmodels /
  a hand recount of the VaR exceedances, and find what real returns have (fat tails and
  volatility clustering).
* Engine replays written to run folders as `tradingd backtest` writes them: the variants are
  counted from the folders and the deflated Sharpe ratio uses them; the trade-order Monte
  Carlo reshuffles the run's own round trips.

Skips, with the reason, when ../shared/data is absent.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.stattools import jarque_bera as sm_jarque_bera

from tradingd.analysis import validation as va
from tradingd.analysis.montecarlo import MonteCarloConfig, MonteCarloSimulator
from tradingd.analysis.performance import var_historical
from tradingd.analysis.validation import StatisticalValidator, ValidationConfig

SYMBOLS = ["AAPL", "MSFT", "XOM", "JPM", "JNJ", "GE", "PG", "WMT"]


@pytest.fixture(scope="module")
def portfolio(sp500_parquet) -> pd.Series:
    raw = pd.read_parquet(
        sp500_parquet, filters=[("symbol", "in", SYMBOLS)], columns=["symbol", "date", "adj_close"]
    )
    wide = raw.pivot(index="date", columns="symbol", values="adj_close")
    wide = wide.loc["1999-12-31":"2018-12-31"]
    assert not wide.isna().any().any()
    return wide.pct_change().iloc[1:].mean(axis=1)


def test_nineteen_years_of_a_real_portfolio(portfolio):
    r = portfolio.to_numpy()
    assert r.size == 4779
    equity = pd.Series(1e6 * np.cumprod(1 + r), index=portfolio.index)
    v = StatisticalValidator(ValidationConfig(paths=400, es_simulations=400))
    out = v.validate_performance({"equity_curve": equity, "initial_capital": 1e6})
    json.loads(json.dumps(out))
    tests = out["tests"]
    for name, res in tests.items():
        assert 0.0 <= res["p_value"] <= 1.0, name
    # The same numbers as the libraries on the same returns
    x = r - ValidationConfig().rf_bar
    tt = stats.ttest_1samp(x, 0.0, alternative="greater")
    assert tests["sharpe_ratio_t"]["statistic"] == pytest.approx(tt.statistic, rel=1e-9)
    jb = sm_jarque_bera(r)
    assert tests["jarque_bera"]["statistic"] == pytest.approx(jb[0], rel=1e-9)
    # Real returns: fat tails and volatility clustering are found
    assert tests["jarque_bera"]["reject"] and tests["ljung_box_squared"]["reject"]
    # VaR exceedances recounted from the analyzer's own historical VaR of the past only
    hits = sum(r[t] < -var_historical(r[:t], 0.05) for t in range(250, r.size))
    assert tests["var_kupiec"]["exceedances"] == hits
    assert tests["var_kupiec"]["forecasts"] == r.size - 250
    # Monte Carlo of the same run
    mc = out["monte_carlo"]
    assert mc["bars"] == 4779 and mc["methods"]["stationary"]["paths"] == 400
    sr = mc["methods"]["iid"]["sharpe"]
    assert sr["p5"] < tests["sharpe_ratio"]["sharpe_ratio"] < sr["p95"]
    assert tests["drawdown"]["method"] == "permutation"


async def _replay(panel, tmp_path, out, lookback: int, name: str):
    from tradingd.backtest import run_backtest
    from tradingd.config import load_config

    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f"""
[run]
name = "{name}"
[orders]
brackets = false
[[signals]]
name = "momentum"
params = {{ lookback = {lookback} }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 4, gross_exposure = 0.95 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.3 }}
[storage]
url = "sqlite:///{tmp_path / (name + ".db")}"
[log]
audit_dir = "{tmp_path / ("audit-" + name)}"
""")
    return await run_backtest(load_config([cfg], env={}), panel=panel, output_dir=out)


async def test_run_folders_give_the_trials_and_the_round_trips(sp500_parquet, tmp_path):
    from tradingd.feeds.loaders import load_panel

    panel = load_panel(
        "parquet", str(sp500_parquet), symbols=SYMBOLS, start="2016-01-01", end="2017-12-31"
    )
    runs = tmp_path / "runs"
    a = await _replay(panel, tmp_path, runs / "a", 20, "a")
    await _replay(panel, tmp_path, runs / "a-again", 20, "again")  # same variant, renamed
    await _replay(panel, tmp_path, runs / "b", 60, "b")
    tc = va.count_trials(runs)
    assert (tc.runs, tc.trials) == (3, 2)
    assert math.isfinite(tc.sharpe_variance)

    v = StatisticalValidator(ValidationConfig(paths=200, es_simulations=200, var_min_history=60))
    out = v.validate_performance(runs / "a")
    assert out["trials"]["trials"] == 2 and out["trials"]["variance_source"].startswith("run")
    assert out["run_id"] == a.run_id
    d = out["tests"]["deflated_sharpe"]
    assert d["expected_max_sharpe"] == pytest.approx(
        va.expected_max_sharpe(2, tc.sharpe_variance / 252) * math.sqrt(252), rel=1e-12
    )

    mc = MonteCarloSimulator(MonteCarloConfig(paths=300)).run(a)
    trips = mc["methods"]["trade_order"]
    assert mc["round_trips"] > 5 and trips["paths"] == 300
    assert trips["final_return"]["std"] < 1e-12  # the same trades in any order: same sum
    assert trips["max_drawdown"]["p5"] <= trips["max_drawdown"]["p95"]
    folder = MonteCarloSimulator(MonteCarloConfig(paths=300)).run(runs / "a")
    assert folder["round_trips"] == mc["round_trips"]
