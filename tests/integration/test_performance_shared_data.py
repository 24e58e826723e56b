"""PerformanceAnalyzer on real equity curves of the shared S&P 500 data, against empyrical.

Curves: buy-and-hold of single stocks (dividends reinvested: the file's `adj_close`), an
equal-weight buy-and-hold portfolio and a daily-rebalanced equal-weight portfolio, from the
close of 1999-12-31 to 2018-12-31 (4,779 bars), and the engine's own equity curve of a short
replay. The benchmark is the analyzer's default, the S&P 500 index bundled with `arch`, and
a stock of the shared file given by configuration (its splits and dividends booked from the
raw columns, checked against `adj_close`).

Tolerance and convention differences are those of tests/unit/test_performance_analyzer.py
(relative 1e-10 against empyrical; signs of drawdown / VaR / CVaR, annualised information
ratio, per-bar risk-free rate). Skips, with the reason, when ../shared/data is absent.
"""

from __future__ import annotations

import math

import empyrical as ep
import pandas as pd
import pytest
from empyrical_reference import assert_matches_empyrical
from scipy import stats

from tradingd.analysis.performance import PerformanceAnalyzer, PerformanceConfig

SYMBOLS = ["AAPL", "MSFT", "XOM", "JPM", "JNJ", "GE", "PG", "WMT"]
BASE, END = "1999-12-31", "2018-12-31"


@pytest.fixture(scope="module")
def adj(sp500_parquet) -> pd.DataFrame:
    raw = pd.read_parquet(
        sp500_parquet,
        filters=[("symbol", "in", SYMBOLS)],
        columns=["symbol", "date", "adj_close"],
    )
    wide = raw.pivot(index="date", columns="symbol", values="adj_close").loc[BASE:END]
    assert wide.index[0] == pd.Timestamp(BASE) and not wide.isna().any().any()
    return wide


@pytest.fixture(scope="module")
def sp500_returns() -> pd.Series:
    from arch.data import sp500

    return sp500.load()["Close"].pct_change()


def curve(levels: pd.Series, capital: float = 1e6) -> tuple[dict, pd.Series]:
    """Bought at the first level's close: (results for the analyzer, per-bar returns)."""
    equity = capital * levels.iloc[1:] / levels.iloc[0]
    return {"equity_curve": equity, "initial_capital": capital}, levels.pct_change().iloc[1:]


def check(out: dict, r: pd.Series, b: pd.Series) -> None:
    m = {**out["performance"], **out["risk"]}
    assert m["benchmark_bars"] == len(r)
    ref = assert_matches_empyrical(m, r, b)
    assert all(math.isfinite(float(v)) for v in ref.values()), ref  # real curves: all defined


@pytest.fixture(scope="module")
def analyzer() -> PerformanceAnalyzer:
    return PerformanceAnalyzer()  # 2% risk-free, 252 days, the bundled S&P 500 index


@pytest.mark.parametrize("symbol", ["AAPL", "GE", "XOM"])
def test_buy_and_hold_of_real_stocks_against_the_sp500(adj, sp500_returns, analyzer, symbol):
    results, r = curve(adj[symbol])
    assert len(r) == 4779
    b = sp500_returns.reindex(r.index)
    assert not b.isna().any()  # same NYSE calendar
    out = analyzer.analyze_performance(results)
    assert out["benchmark"]["name"] == "SP500"
    check(out, r, b)


def test_equal_weight_portfolios_against_the_sp500(adj, sp500_returns, analyzer):
    # Buy-and-hold: the sum of equal initial stakes.
    stakes = adj / adj.iloc[0]
    results, r = curve(stakes.sum(axis=1))
    check(analyzer.analyze_performance(results), r, sp500_returns.reindex(r.index))
    # Rebalanced every day: the mean of the stocks' returns.
    r_daily = adj.pct_change().iloc[1:].mean(axis=1)
    levels = pd.concat([pd.Series([1.0], index=adj.index[:1]), (1 + r_daily).cumprod()])
    results, r = curve(levels)
    check(analyzer.analyze_performance(results), r, sp500_returns.reindex(r.index))


def test_a_stock_of_the_shared_file_as_configured_benchmark(sp500_parquet, adj):
    cfg = PerformanceConfig(
        benchmark="MSFT", benchmark_source="parquet", benchmark_path=str(sp500_parquet)
    )
    results, r = curve(adj["AAPL"])
    out = PerformanceAnalyzer(cfg).analyze_performance(results)
    # The loaded benchmark books MSFT's splits and dividends from the raw columns; the file's
    # adj_close is rounded to a few decimals, hence a looser tolerance than empyrical's.
    b = adj["MSFT"].pct_change().iloc[1:]
    m = {**out["performance"], **out["risk"]}
    assert m["benchmark_bars"] == len(r)
    assert m["beta"] == pytest.approx(ep.beta(r, b), rel=1e-8)
    assert m["correlation"] == pytest.approx(stats.pearsonr(r, b)[0], rel=1e-8)
    assert m["benchmark_annual_return"] == pytest.approx(ep.annual_return(b), rel=1e-8)
    assert out["benchmark"] == {
        "name": "MSFT",
        "source": "parquet",
        "path": str(sp500_parquet),
        "bars": len(r),
        "first": "2000-01-03T00:00:00",
        "last": "2018-12-31T00:00:00",
    }


async def test_an_engine_replay_on_real_stocks(sp500_parquet, tmp_path, analyzer):
    """The engine's equity curve (costs, whole shares, rebalancing) and fills, as the
    backtest outcome: the analyzer agrees with empyrical and with the run's own summary."""
    from tradingd.backtest import run_backtest
    from tradingd.config import load_config
    from tradingd.feeds.loaders import load_panel

    panel = load_panel(
        "parquet", str(sp500_parquet), symbols=SYMBOLS, start="2016-01-01", end="2017-12-31"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[run]
run_id = "perf"
[orders]
brackets = false
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 4, gross_exposure = 0.95 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.3 }}
[storage]
url = "sqlite:///{tmp_path / "s.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    outcome = await run_backtest(load_config([cfg], env={}), panel=panel, output_dir=tmp_path / "o")
    out = analyzer.analyze_performance(outcome)
    eq = pd.Series(outcome.result.equity, index=pd.DatetimeIndex(outcome.result.times))
    r = eq / eq.shift(1, fill_value=outcome.summary["initial_capital"]) - 1
    dates = r.index.tz_localize(None).normalize()
    from arch.data import sp500

    b = pd.Series(sp500.load()["Close"].pct_change().reindex(dates).to_numpy(), index=r.index)
    check(out, r, b)

    s, p, k = outcome.summary, out["performance"], out["risk"]
    assert p["costs_paid"] == pytest.approx(s["commission_paid"] + s["slippage_paid"], rel=1e-12)
    assert p["exposure"] == pytest.approx(s["exposure"], rel=1e-12)
    assert k["max_drawdown_duration_bars"] == s["max_drawdown_duration_bars"]
    assert 0 < p["round_trips"] <= s["round_trips"]
    assert p["annual_turnover"] > 0
    # The folder the run wrote gives the same analysis.
    again = analyzer.analyze_performance(tmp_path / "o")
    for key, value in p.items():
        assert again["performance"][key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
