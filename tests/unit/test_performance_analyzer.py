"""PerformanceAnalyzer: every metric against empyrical-reloaded (the independent check), the
trade statistics and drawdown durations against hand-computed examples, and invariants.

Equity curves: the NASDAQ Composite and S&P 500 index series that ship with `arch` (real daily
closes, offline), a seeded random walk, and tiny hand-made curves.

Tolerance against empyrical: relative 1e-10 (absolute 1e-12 near zero). Both sides evaluate
the same float64 formulas in a different order (final / initial vs a cumulative product,
np.mean vs nanmean), which differs in the last bits (observed: <= 1e-14 over 2,264 bars);
1e-10 leaves room for the CAGR exponent 252 / n amplifying that on short curves, and is far
below any convention difference (ddof 0 vs 1 alone moves a ratio by ~1/(2n), 2e-4 at n = 2,264).

Convention differences with empyrical, each asserted below:
* Inputs: empyrical takes per-bar returns; ours come from the equity curve with the first
  return against the initial capital. Fed that same return series (its cum-return base is
  then our initial capital), the numbers agree.
* Signs: empyrical's max drawdown, VaR and CVaR are (negative) returns; ours are positive
  fractions lost.
* Risk-free rate: empyrical's `risk_free` / `required_return` are per-bar rates; ours is the
  configured annual rate, compounded down to (1 + rf) ** (1 / 252) - 1, which is what we give
  empyrical.
* Information ratio: empyrical's `excess_sharpe` is per bar; ours is annualised, x sqrt(252).
* Tracking error, parametric VaR / CVaR and correlation are not in empyrical: checked
  against empyrical's `annual_volatility` of the active returns, scipy.stats.norm (quantile
  and a numerically integrated conditional mean) and scipy.stats.pearsonr.
* Undefined values: empyrical gives +-inf for a Sortino ratio without shortfall or a Sharpe
  ratio of a constant series above the risk-free rate; ours are NaN.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from empyrical_reference import (
    PPY,
    REL,
    RF,
    assert_close,
    assert_matches_empyrical,
    close,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from structlog.testing import capture_logs

from tradingd.analysis import performance as pf
from tradingd.analysis.metrics import closed_trades, summarize
from tradingd.analysis.performance import PerformanceAnalyzer, PerformanceConfig
from tradingd.core.errors import ConfigError, DataError
from tradingd.core.types import Fill, RunInfo, Side
from tradingd.feeds.loaders import load_frame

NO_BENCH = PerformanceConfig(benchmark="")


def no_inf(d: dict) -> None:
    for k, v in d.items():
        if isinstance(v, float):
            assert not math.isinf(v), k


@pytest.fixture(scope="module")
def closes() -> pd.DataFrame:
    """Daily closes of the bundled NASDAQ Composite and S&P 500 (1999-2018)."""
    f = load_frame("bundled")
    return f.pivot(index="time", columns="symbol", values="close")


@pytest.fixture(scope="module")
def sp500_levels(closes) -> pd.Series:
    return closes["SP500"]


def index_run(closes: pd.DataFrame, symbol: str, start: str, end: str, capital: float = 1e5):
    """Buy-and-hold of an index from the close before `start`: (results dict, returns)."""
    px = closes[symbol].loc[:end]
    base = px.loc[:start].iloc[:-1].iloc[-1] if px.index[0] < pd.Timestamp(start) else None
    px = px.loc[start:]
    assert base is not None
    equity = capital * px / base
    returns = pd.Series(
        np.r_[px.iloc[0] / base - 1, px.pct_change().to_numpy()[1:]], index=px.index
    )
    return {"equity_curve": equity, "initial_capital": capital}, returns


def merged(out: dict) -> dict:
    return {**out["performance"], **out["risk"]}


# ----------------------------------------------------------------------------- empyrical


def test_every_metric_matches_empyrical_on_a_real_index_curve(closes, sp500_levels):
    results, r = index_run(closes, "NASDAQ", "2010-01-01", "2018-12-31")
    out = PerformanceAnalyzer(benchmark=sp500_levels).analyze_performance(results)
    b = sp500_levels.pct_change().reindex(r.index)
    assert not b.isna().any()
    assert out["performance"]["benchmark_bars"] == len(r) == 2264
    m = merged(out)
    assert_matches_empyrical(m, r, b)
    assert m["excess_return_risk_free"] == pytest.approx(m["annual_return"] - RF, rel=REL)


def test_default_benchmark_is_the_bundled_sp500(closes, sp500_levels):
    results, _ = index_run(closes, "NASDAQ", "2015-01-01", "2016-12-31")
    default = PerformanceAnalyzer().analyze_performance(results)
    given_series = PerformanceAnalyzer(benchmark=sp500_levels).analyze_performance(results)
    assert default["benchmark"]["name"] == "SP500"
    assert default["benchmark"]["source"] == "bundled"
    # The loaded benchmark is a total-return index built by compounding: last-bit differences.
    assert_close(default["performance"], given_series["performance"])
    assert PerformanceConfig().risk_free_rate == 0.02  # the specification's


@pytest.mark.parametrize("rf", [0.0, 0.02, 0.05])
def test_random_walk_matches_empyrical_for_several_risk_free_rates(rf):
    rng = np.random.default_rng(11)
    n = 600
    times = pd.bdate_range("2012-01-02", periods=n + 1)
    bench_r = rng.normal(0.0003, 0.011, n)
    r = 0.0002 + 0.8 * bench_r + rng.normal(0, 0.007, n)
    bench = pd.Series(100 * np.cumprod(np.r_[1.0, 1 + bench_r]), index=times)
    equity = pd.Series(5e4 * np.cumprod(1 + r), index=times[1:])
    cfg = PerformanceConfig(risk_free_rate=rf)
    out = PerformanceAnalyzer(cfg, benchmark=bench).analyze_performance(
        {"equity_curve": equity, "initial_capital": 5e4}
    )
    rs = pd.Series(r, index=times[1:])
    bs = pd.Series(bench_r, index=times[1:])
    assert_matches_empyrical(merged(out), rs, bs, rf_bar=(1 + rf) ** (1 / PPY) - 1)


def test_pure_functions_match_empyrical_with_other_periods_per_year():
    rng = np.random.default_rng(3)
    r = rng.normal(0.01, 0.04, 60)  # monthly returns
    b = rng.normal(0.008, 0.035, 60)
    rf_bar = pf.per_bar_rate(0.03, 12)
    assert close(pf.annual_return(r, 12), ep.annual_return(r, period="monthly"))
    assert close(pf.annual_volatility(r, 12), ep.annual_volatility(r, period="monthly"))
    assert close(pf.sharpe_ratio(r, rf_bar, 12), ep.sharpe_ratio(r, rf_bar, period="monthly"))
    assert close(pf.sortino_ratio(r, rf_bar, 12), ep.sortino_ratio(r, rf_bar, period="monthly"))
    assert close(
        pf.downside_deviation(r, rf_bar, 12), ep.downside_risk(r, rf_bar, period="monthly")
    )
    a, bt = ep.alpha_beta(r, b, risk_free=rf_bar, period="monthly")
    assert close(pf.beta(r, b), bt)
    assert close(pf.alpha(r, b, rf_bar, 12), a)
    wealth = 100 * np.cumprod(1 + r)
    assert close(pf.max_drawdown(wealth, 100.0), -ep.max_drawdown(r))
    for tail in (0.01, 0.05, 0.1):
        assert close(pf.var_historical(r, tail), -ep.value_at_risk(r, tail))
        assert close(pf.cvar_historical(r, tail), -ep.conditional_value_at_risk(r, tail))


def test_first_bar_loss_counts_in_drawdown_as_in_empyrical():
    # The initial capital anchors the peak, as empyrical's starting value does.
    r = np.array([-0.05, 0.02, 0.01, -0.01])
    equity = 100 * np.cumprod(1 + r)
    assert close(pf.max_drawdown(equity, 100.0), -ep.max_drawdown(r))
    assert pf.max_drawdown(equity, 100.0) == pytest.approx(0.05)


def test_convention_differences_with_empyrical():
    up = np.array([0.01, 0.02, 0.005, 0.03])
    assert math.isinf(ep.sortino_ratio(up))  # no shortfall: empyrical inf
    assert math.isnan(pf.sortino_ratio(up))  # ours NaN
    flat = np.full(10, 0.001)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert math.isinf(ep.sharpe_ratio(flat))  # zero dispersion above rf: inf
    assert math.isnan(pf.sharpe_ratio(flat))
    assert ep.max_drawdown(np.array([0.1, -0.2])) < 0 < pf.max_drawdown([110.0, 88.0], 100.0)
    r = np.random.default_rng(5).normal(0, 0.01, 100)
    assert ep.value_at_risk(r) < 0 < pf.var_historical(r)
    b = np.random.default_rng(6).normal(0, 0.01, 100)
    assert close(pf.information_ratio(r, b, PPY), ep.excess_sharpe(r, b) * math.sqrt(PPY))


# ----------------------------------------------------------------------------- summary


def _times(n: int) -> list[datetime]:
    """Weekdays (a bar every calendar day is annualised with 365 bars a year)."""
    return list(pd.bdate_range("2020-01-02", periods=n, tz=UTC).to_pydatetime())


def _fill(i: int, sym: str, side: Side, qty: float, px: float, comm: float, slip: float = 0.0):
    t = _times(20)[i]
    return Fill(f"f{i}#1", f"f{i}", sym, side, qty, px, comm, slip, t, px)


def round_trip_fills() -> list[Fill]:
    b, s = Side.BUY, Side.SELL
    return [
        _fill(0, "AAA", b, 10, 100.0, 1.0, 0.5),  # long 10 @ 100
        _fill(1, "BBB", s, 10, 50.0, 0.5, 0.25),  # short 10 @ 50
        _fill(2, "AAA", b, 10, 110.0, 1.0, 0.5),  # long 20 @ avg 105
        _fill(3, "AAA", s, 5, 120.0, 1.0, 0.5),  # trim 5: (120-105)*5 - 1 = 74
        _fill(4, "BBB", b, 4, 40.0, 0.5, 0.25),  # trim 4 of the short: 39.5, still short 6
        _fill(5, "AAA", s, 15, 100.0, 2.0, 1.0),  # close 15: -77 -> AAA round trip -3
        _fill(6, "CCC", b, 10, 20.0, 0.0, 0.0),  # long 10 @ 20
        _fill(7, "CCC", s, 15, 22.0, 3.0, 0.0),  # close 10 (18) and short 5 @ 22: ends one
        _fill(8, "CCC", b, 5, 25.0, 0.0, 0.0),  # close the short: -15
    ]


def test_trade_statistics_by_hand():
    fills = round_trip_fills()
    equity = np.full(10, 1000.0)
    results = {
        "equity_curve": pd.Series(equity, index=pd.DatetimeIndex(_times(10))),
        "initial_capital": 1000.0,
        "fills": fills,
    }
    p = PerformanceAnalyzer(NO_BENCH).calculate_performance_metrics(results)
    # Round trips: AAA 74 - 77 = -3; CCC 18 (ended by the flip), CCC -15. BBB is still open.
    np.testing.assert_allclose(
        pf.round_trip_pnls(closed_trades(fills)), [-3.0, 18.0, -15.0], rtol=1e-12
    )
    assert p["round_trips"] == 3
    assert p["win_rate"] == pytest.approx(1 / 3)
    assert p["profit_factor"] == pytest.approx(18 / 18)
    assert p["avg_win"] == pytest.approx(18.0)
    assert p["avg_loss"] == pytest.approx(-9.0)
    assert p["commission_paid"] == pytest.approx(9.0)
    assert p["slippage_paid"] == pytest.approx(3.0)
    assert p["costs_paid"] == pytest.approx(12.0)
    traded = 1000 + 500 + 1100 + 600 + 160 + 1500 + 200 + 330 + 125
    assert p["annual_turnover"] == pytest.approx(traded / 1000 * 252 / 10)
    assert math.isnan(p["exposure"])  # no gross exposure given


def test_trade_statistics_without_trades_or_losses():
    assert math.isnan(pf.win_rate([]))
    assert math.isnan(pf.profit_factor([5.0, 1.0]))  # no loss: NaN, never inf
    assert pf.profit_factor([-1.0, -2.0]) == 0.0
    assert math.isnan(pf.average_loss([1.0]))
    assert pf.win_rate([0.0, 1.0]) == 0.5  # a flat trip is not a win


def test_agrees_with_the_run_summary():
    rng = np.random.default_rng(2)
    equity = 1000 * np.cumprod(1 + rng.normal(0.0005, 0.01, 120))
    gx = rng.uniform(0, 1, 120) * (rng.uniform(size=120) > 0.3)
    times = _times(120)
    fills = round_trip_fills()
    s = summarize(equity, times, fills, initial_capital=990.0, gross_exposure=gx, risk_free_rate=RF)
    results = {
        "equity_curve": pd.Series(equity, index=pd.DatetimeIndex(times)),
        "initial_capital": 990.0,
        "gross_exposure": gx,
        "fills": fills,
    }
    m = merged(PerformanceAnalyzer(NO_BENCH).analyze_performance(results))
    for key in (
        "total_return",
        "annual_return",
        "annual_volatility",
        "sharpe",
        "sortino",
        "max_drawdown",
        "calmar",
        "exposure",
        "time_in_market",
        "commission_paid",
        "slippage_paid",
        "final_equity",
    ):
        assert close(m[key], s[key]), (key, m[key], s[key])
    assert m["max_drawdown_duration_bars"] == s["max_drawdown_duration_bars"]


# ----------------------------------------------------------------------------- drawdowns


def test_drawdown_durations_by_hand():
    # Bars:            0    1   2    3    4    5    6    7
    equity = np.array([100, 80, 100, 99, 98, 97, 96, 100.0])
    periods = pf.drawdown_periods(equity, 100.0)
    assert [(p.peak, p.trough, p.recovery, p.duration) for p in periods] == [
        (0, 1, 2, 1),  # 20% deep, one bar under water
        (2, 6, 7, 4),  # 4% deep, four bars under water
    ]
    risk = PerformanceAnalyzer(NO_BENCH).calculate_risk_metrics(
        {"equity_curve": equity, "times": _times(8), "initial_capital": 100.0}
    )
    assert risk["max_drawdown"] == pytest.approx(0.2)
    assert risk["max_drawdown_duration_bars"] == 4  # the longest
    assert risk["deepest_drawdown_duration_bars"] == 1  # the 20% one


def test_unrecovered_drawdown_runs_to_the_end_and_peak_may_be_the_initial_capital():
    (p,) = pf.drawdown_periods([90.0, 95.0, 97.0], 100.0)
    assert (p.peak, p.trough, p.recovery, p.duration, p.recovered) == (-1, 0, None, 3, False)
    out = PerformanceAnalyzer(NO_BENCH).analyze_performance(
        {"equity_curve": [90.0, 95.0, 97.0], "times": _times(3), "initial_capital": 100.0}
    )
    assert out["drawdown"]["peak"] == "initial capital"
    assert out["drawdown"]["recovery"] is None and not out["drawdown"]["recovered"]
    assert out["risk"]["max_drawdown_duration_bars"] == 3


def test_summary_duration_example_is_the_same():
    # test_metrics.py's example: three bars under water, recovery at 101.
    equity = [100, 90, 95, 99, 101, 100, 102]
    (a, b) = pf.drawdown_periods(equity, 100.0)
    assert (a.peak, a.recovery, a.duration) == (0, 4, 3)
    assert (b.peak, b.recovery, b.duration) == (4, 6, 1)


# ----------------------------------------------------------------------------- tail risk


def test_var_and_cvar_by_hand():
    r = np.arange(-10, 11) / 100.0  # 21 returns, -10% .. +10%
    # 5th percentile with linear interpolation: position 0.05 x 20 = 1 -> -9%.
    assert pf.var_historical(r) == pytest.approx(0.09)
    # Tail of floor(20 x 0.05) + 1 = 2 returns: mean(-10%, -9%).
    assert pf.cvar_historical(r) == pytest.approx(0.095)
    mu, sd = r.mean(), r.std(ddof=1)
    assert pf.var_parametric(r) == pytest.approx(1.6448536269514722 * sd - mu, rel=1e-12)
    assert pf.cvar_parametric(r) == pytest.approx(
        sd * stats.norm.pdf(1.6448536269514722) / 0.05 - mu, rel=1e-12
    )


def test_var_confidence_is_configurable():
    r = np.random.default_rng(9).normal(0, 0.01, 500)
    equity = 100 * np.cumprod(1 + r)
    cfg = PerformanceConfig(var_confidence=0.99, benchmark="")
    risk = PerformanceAnalyzer(cfg).calculate_risk_metrics(
        {"equity_curve": equity, "times": _times(500), "initial_capital": 100.0}
    )
    assert close(risk["var_historical"], -ep.value_at_risk(r, 0.01))
    assert close(risk["cvar_historical"], -ep.conditional_value_at_risk(r, 0.01))
    assert close(risk["var_parametric"], -stats.norm.ppf(0.01, r.mean(), r.std(ddof=1)))


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_alignment_by_date_with_gaps():
    times = pd.DatetimeIndex(["2020-01-06", "2020-01-07", "2020-01-08", "2020-01-10"], tz=UTC)
    levels = pd.Series(
        [100.0, 101.0, 99.0, 102.0, 103.0],
        index=pd.DatetimeIndex(
            ["2020-01-03", "2020-01-06", "2020-01-07", "2020-01-09", "2020-01-10"]
        ),
    )
    b = pf.align_benchmark(times, levels)
    # 01-08 is missing from the benchmark: that bar and the next have no benchmark return.
    np.testing.assert_allclose(b[:2], [0.01, 99 / 101 - 1])
    assert np.isnan(b[2]) and np.isnan(b[3])


def test_intraday_bars_match_the_benchmark_on_exact_times():
    bars = pd.date_range("2020-01-02 14:30", periods=4, freq="1h", tz="America/New_York")
    # Naive benchmark times are UTC; its first level is the hour before the first bar.
    levels = pd.Series(
        [100.0, 101.0, 99.0, 99.0, 102.0],
        index=pd.date_range("2020-01-02 18:30", periods=5, freq="1h"),
    )
    np.testing.assert_allclose(
        pf.align_benchmark(bars, levels), [0.01, 99 / 101 - 1, 0.0, 102 / 99 - 1]
    )


def test_benchmark_base_older_than_a_week_is_not_used():
    times = pd.DatetimeIndex(["2020-02-03", "2020-02-04"])
    levels = pd.Series([100.0, 110.0], index=pd.DatetimeIndex(["2020-01-02", "2020-02-04"]))
    b = pf.align_benchmark(times, levels)
    assert np.isnan(b[0]) and np.isnan(b[1])  # 02-03 missing too


def test_a_benchmark_date_repeated_with_another_level_is_refused(closes, sp500_levels):
    """A given benchmark repeating 2011-06-15 with a level 10% higher was accepted and the
    last level kept (in the reviewers' run beta moved from 0.298 to 0.258), silently. It is
    an error now, as a repeated date of a run's equity is; a repeated date with the same
    level is a copy: dropped, and logged, and the numbers are the unrepeated series'."""
    results, _ = index_run(closes, "NASDAQ", "2011-01-01", "2011-12-31")
    day = pd.Timestamp("2011-06-15")
    other = pd.Series([sp500_levels[day] * 1.1], index=[day])
    repeated = pd.concat([sp500_levels, other]).sort_index(kind="stable")
    with pytest.raises(ValueError, match=r"benchmark series repeats 1 time\(s\).*'2011-06-15'"):
        PerformanceAnalyzer(benchmark=repeated).analyze_performance(results)
    named = repeated.rename("SP500")
    with pytest.raises(ValueError, match="benchmark 'SP500' repeats 1 time"):
        pf.align_benchmark(named.index[-5:], named)

    copies = pd.concat([sp500_levels, sp500_levels.loc[[day, pd.Timestamp("2011-06-16")]]])
    with capture_logs() as logs:
        out = PerformanceAnalyzer(benchmark=copies).analyze_performance(results)
    assert merged(out) == merged(
        PerformanceAnalyzer(benchmark=sp500_levels).analyze_performance(results)
    )
    (said,) = [e for e in logs if e["event"] == "benchmark.duplicates_dropped"]
    assert said["rows"] == 2 and said["times"] == ["2011-06-15", "2011-06-16"]


def test_the_benchmark_files_refuse_a_repeated_date(tmp_path):
    """The configured benchmark's file goes through the loaders' checks: a repeated date is
    an error naming the file and the row, not a silent last level."""
    t = pd.bdate_range("2020-01-01", periods=6)
    px = [100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
    bars = pd.DataFrame({"time": t, "open": px, "high": px, "low": px, "close": px, "volume": 1.0})
    bars = pd.concat([bars, bars.iloc[[2]].assign(close=110.0, high=110.0)])
    bars = bars.sort_values("time", kind="stable").reset_index(drop=True)
    bars.to_csv(tmp_path / "IDX.csv", index=False)
    bars.to_parquet(tmp_path / "IDX.parquet")
    run = {"equity_curve": [101.0, 102.0, 103.0], "times": t[1:4], "initial_capital": 100.0}
    for source, row in (("csv", "row=5"), ("parquet", "row=2020-01-03")):
        path = tmp_path / f"IDX.{source}"
        cfg = PerformanceConfig(benchmark="IDX", benchmark_source=source, benchmark_path=str(path))
        with pytest.raises(DataError, match=rf"repeating an earlier timestamp.*{row}") as err:
            PerformanceAnalyzer(cfg).analyze_performance(run)
        # no advice to set a repair in [data]: it would never reach the benchmark
        msg = str(err.value)
        assert "[data]" not in msg and "correct the benchmark file" in msg
        assert msg.index("correct the benchmark file") > msg.index("timestamp")
        assert msg.endswith(f"{row})") and "to keep the last" not in msg  # the whole advice


def test_a_day_first_benchmark_file_can_say_its_format(tmp_path):
    """A day-first benchmark CSV is refused (its dates could be read two ways), and the
    advice named data.date_format, which never reached the benchmark: it has its own."""
    t = pd.bdate_range("2020-01-02", periods=12)
    px = 100.0 + np.arange(12.0)
    days = [d.strftime("%d/%m/%Y") for d in t]
    frame = {"date": days, "open": px, "high": px, "low": px, "close": px, "volume": 1.0}
    pd.DataFrame(frame).to_csv(tmp_path / "IDX.csv", index=False)
    run = {"equity_curve": [101.0, 103.0, 102.0, 104.0], "times": t[1:5], "initial_capital": 100.0}
    kw = {
        "benchmark": "IDX",
        "benchmark_source": "csv",
        "benchmark_path": str(tmp_path / "IDX.csv"),
    }
    with pytest.raises(DataError, match=r"analysis\.benchmark_date_format") as err:
        PerformanceAnalyzer(PerformanceConfig(**kw)).analyze_performance(run)
    assert "[data]" not in str(err.value)
    cfg = PerformanceConfig(**kw, benchmark_date_format="%d/%m/%Y")
    out = PerformanceAnalyzer(cfg).analyze_performance(run)
    assert out["performance"]["benchmark_bars"] == 4
    with pytest.raises(ConfigError, match=r"analysis\.benchmark_date_format = 'dd/mm' is invalid"):
        PerformanceConfig(**kw, benchmark_date_format="dd/mm")


def test_benchmark_levels_book_splits_and_dividends_like_the_engine():
    frame = pd.DataFrame(
        {
            "time": pd.bdate_range("2020-01-01", periods=4),
            "close": [100.0, 102.0, 51.0, 50.0],
            "split": [1.0, 1.0, 2.0, 1.0],
            "dividend": [0.0, 0.0, 0.0, 0.5],
        }
    )
    lv = pf.benchmark_levels(frame)
    r = lv.pct_change().to_numpy()[1:]
    np.testing.assert_allclose(r, [0.02, 0.0, (50.0 + 0.5) / 51.0 - 1], rtol=1e-12)


def test_benchmark_outside_the_run_gives_nan_not_an_error(sp500_levels):
    equity = pd.Series(
        np.linspace(100, 110, 30), index=pd.bdate_range("2021-01-04", periods=30, tz=UTC)
    )
    out = PerformanceAnalyzer(benchmark=sp500_levels).analyze_performance(
        {"equity_curve": equity, "initial_capital": 100.0}
    )
    m = merged(out)
    assert m["benchmark_bars"] == 0
    for key in ("alpha", "beta", "excess_return", "information_ratio", "tracking_error"):
        assert math.isnan(m[key]), key
    assert math.isnan(m["correlation"])
    assert out["benchmark"]["first"] is None


def test_no_benchmark_configured():
    out = PerformanceAnalyzer(NO_BENCH).analyze_performance(
        {"equity_curve": [101.0, 102.0, 100.0], "times": _times(3), "initial_capital": 100.0}
    )
    assert out["benchmark"]["name"] == ""
    assert math.isnan(out["performance"]["alpha"]) and math.isnan(out["risk"]["beta"])


def test_benchmark_from_a_file(tmp_path, closes):
    csv = tmp_path / "IDX.csv"
    px = closes["SP500"].loc["2016-01-01":"2016-12-31"]
    pd.DataFrame(
        {"time": px.index, "open": px, "high": px, "low": px, "close": px, "volume": 1.0}
    ).to_csv(csv, index=False)
    cfg = PerformanceConfig(benchmark="IDX", benchmark_source="csv", benchmark_path=str(csv))
    results, _ = index_run(closes, "NASDAQ", "2016-02-01", "2016-11-30")
    from_file = PerformanceAnalyzer(cfg).calculate_risk_metrics(results)
    default = PerformanceAnalyzer().calculate_risk_metrics(results)
    assert close(from_file["beta"], default["beta"])
    assert close(from_file["correlation"], default["correlation"])


# ----------------------------------------------------------------------------- inputs


def _engine_like(n: int = 40):
    rng = np.random.default_rng(4)
    times = list(pd.bdate_range("2017-01-03", periods=n, tz=UTC).to_pydatetime())
    # Python floats, as the engine's lists hold (write_outputs writes their repr).
    equity = [float(x) for x in 1e5 * np.cumprod(1 + rng.normal(0, 0.005, n))]
    gross = [float(x) for x in rng.uniform(0, 0.5, n)]
    fills = [
        {
            "run_id": "r1",
            "fill_id": f"x{i}#1",
            "client_order_id": f"x{i}",
            "symbol": "SP500",
            "side": side,
            "quantity": 2.0,
            "price": 2000.0 + 10 * i,
            "commission": 4.0,
            "slippage": 2.0,
            "reference_price": 2000.0 + 10 * i - 1,
            "time": times[i],
            "booked_at": times[i],
        }
        for i, side in ((1, "buy"), (5, "sell"), (9, "buy"), (20, "sell"))
    ]
    return times, equity, gross, fills


def row_fill(r: dict) -> Fill:
    keys = ("fill_id", "client_order_id", "symbol", "side", "quantity", "price", "commission")
    args = [r[k] for k in keys]
    args[3] = Side(args[3])
    return Fill(*args, r["slippage"], r["time"], r["reference_price"])


def test_accepts_the_facade_dict_the_outcome_a_record_folder_and_a_stored_run(tmp_path, run_async):
    from tradingd.backtest import BacktestOutcome, write_outputs
    from tradingd.config import Config
    from tradingd.engine.engine import EngineResult
    from tradingd.storage.factory import open_store

    times, equity, gross, fill_rows = _engine_like()
    idx = pd.DatetimeIndex(times, name="time")
    facade = {
        "run_id": "r1",
        "equity_curve": pd.Series(equity, index=idx, name="equity"),
        "gross_exposure": pd.Series(gross, index=idx, name="gross_exposure"),
        "fills": pd.DataFrame(fill_rows),
        "metrics": {"initial_capital": 1e5},
        "initial_capital": 1e5,
    }
    result = EngineResult("r1", len(times), times, equity, gross, len(fill_rows), 4, 0)
    summary = {"run_id": "r1", "initial_capital": 1e5}
    outcome = BacktestOutcome("r1", summary, tmp_path / "rec", result, [], fill_rows)
    write_outputs(tmp_path / "rec", Config(), result, summary, [], fill_rows)

    async def stored() -> dict:
        store = open_store(f"sqlite:///{tmp_path / 'runs.db'}", spool=False)
        await store.start()
        try:
            await store.begin_run(RunInfo("r1", "backtest", times[0], "{}", ("SP500",), 1e5))
            for t, e, g in zip(times, equity, gross, strict=True):
                store.record_equity("r1", t, 0.0, e, g, g)
            store.record_fills("r1", [row_fill(f) for f in fill_rows])
            await store.end_run("r1", {"bars": len(times)})  # a replay to its last bar
            return await pf.stored_run_results(store, "r1")
        finally:
            await store.stop()

    analyzer = PerformanceAnalyzer(NO_BENCH)
    want = analyzer.analyze_performance(facade)
    assert want["performance"]["round_trips"] == 2
    assert want["performance"]["costs_paid"] == pytest.approx(24.0)
    for source in (outcome, tmp_path / "rec", str(tmp_path / "rec"), run_async(stored())):
        got = analyzer.analyze_performance(source)
        for section in ("performance", "risk"):
            for key, value in want[section].items():
                assert close(float(got[section][key]), float(value)), (source, key)
        assert got["run_id"] == "r1"
        assert got["start"] == want["start"]


def test_a_run_missing_from_a_store_names_the_store(tmp_path, run_async):
    """A mistyped SQLite path is a new, empty database: "run 'r1' is not in this store" did
    not say which store had been read."""
    from tradingd.storage.factory import open_store

    path = tmp_path / "typo.db"

    async def read() -> None:
        store = open_store(f"sqlite:///{path}", spool=False)
        await store.start()
        try:
            await pf.stored_run_results(store, "r1")
        finally:
            await store.stop()

    with pytest.raises(ValueError, match=r"run 'r1' is not in ") as caught:
        run_async(read())
    assert str(path) in str(caught.value)


def _stored_run(
    tmp_path,
    run_async,
    mode: str,
    end: dict | None,
    config=None,
    event: str = "analysis.partial_run",
    **kw,
):
    """(what `stored_run_results` gives for a run of `mode` stored with 40 bars and ended
    with summary `end` (None: never ended), the `event` lines it logged)."""
    import json

    from structlog.testing import capture_logs

    from tradingd.storage.factory import open_store

    times, equity, gross, _ = _engine_like()
    cfg = json.dumps(config or {"run": {"end": "2017-12-29"}})

    async def read() -> dict:
        store = open_store(f"sqlite:///{tmp_path / 'runs.db'}", spool=False)
        await store.start()
        try:
            await store.begin_run(RunInfo("r1", mode, times[0], cfg, ("SP500",), 1e5))
            for t, e, g in zip(times, equity, gross, strict=True):
                store.record_equity("r1", t, 0.0, e, g, g)
            await store.flush()
            if end is not None:
                await store.end_run("r1", end)
            return await pf.stored_run_results(store, "r1", **kw)
        finally:
            await store.stop()

    with capture_logs() as logs:
        got = run_async(read())
    return got, [e for e in logs if e["event"] == event]


@pytest.mark.parametrize(
    ("end", "why"),
    [
        ({"bars": 40, "stopped_early": True}, "stopped before its last bar"),  # SIGINT
        (None, "has no end stored"),  # SIGKILL: ended_at and summary NULL
        # An exception (a plugin's): it was ended and marked failed, and read as whole.
        ({"bars": 40, "failed": True, "error": "PluginFault: boom"}, "failed before its last bar"),
    ],
)
def test_a_replay_that_did_not_reach_its_last_bar_is_refused_unless_asked(
    tmp_path, run_async, end, why
):
    """A backtest stopped by SIGINT (398 of 2,769 bars) was analysed as if it had finished:
    full metrics, without a word."""
    with pytest.raises(ValueError, match=why) as caught:
        _stored_run(tmp_path, run_async, "backtest", end)
    text = str(caught.value)
    assert "'r1'" in text and "40 traded bars" in text and "2017-02-27" in text
    assert "a replay to 2017-12-29" in text and "partial=True" in text
    got, warned = _stored_run(tmp_path / "again", run_async, "backtest", end, partial=True)
    assert got["partial"] is True and len(got["equity_curve"]) == 40
    assert len(warned) == 1 and why in warned[0]["detail"]


@pytest.mark.parametrize("end", [None, {"bars": 40}])
def test_a_live_run_running_or_ended_and_a_finished_replay_are_whole(tmp_path, run_async, end):
    """A live run has no last bar: what it has done so far is the run (it ends by being
    stopped, never marked stopped_early)."""
    got, warned = _stored_run(tmp_path, run_async, "live", end)
    assert got["partial"] is False and warned == []
    got, warned = _stored_run(tmp_path / "bt", run_async, "backtest", {"bars": 40})
    assert got["partial"] is False and warned == []


def test_strategy_api_re_exports_the_analyzer():
    from tradingd import strategy_api

    assert strategy_api.PerformanceAnalyzer is PerformanceAnalyzer
    assert "PerformanceAnalyzer" in strategy_api.__all__


def test_bad_inputs_raise_clear_errors(tmp_path: Path):
    a = PerformanceAnalyzer(NO_BENCH)
    with pytest.raises(ValueError, match="equity_curve"):
        a.analyze_performance({"fills": []})
    with pytest.raises(ValueError, match="initial_capital"):
        a.analyze_performance(
            {"equity_curve": pd.Series([1.0], index=pd.DatetimeIndex(["2020-01-02"]))}
        )
    with pytest.raises(ValueError, match="positive"):
        a.analyze_performance({"equity_curve": [1.0], "times": _times(1), "initial_capital": 0})
    with pytest.raises(ValueError, match="differ in length"):
        a.analyze_performance(
            {"equity_curve": [1.0, 2.0], "times": _times(3), "initial_capital": 1}
        )
    with pytest.raises(ValueError, match=r"no equity\.csv"):
        a.analyze_performance(tmp_path)
    with pytest.raises(TypeError, match="backtest results"):
        a.analyze_performance(42)


def test_config_validation():
    with pytest.raises(ConfigError, match="var_confidence"):
        PerformanceConfig(var_confidence=1.0)
    with pytest.raises(ConfigError, match="benchmark_path"):
        PerformanceConfig(benchmark="X", benchmark_source="csv")
    with pytest.raises(ConfigError, match="benchmark_source"):
        PerformanceConfig(benchmark_source="yahoo")
    with pytest.raises(ConfigError, match="unknown key"):
        PerformanceConfig.from_mapping({"risk_free": 0.01})
    cfg = PerformanceConfig.from_mapping({"risk_free_rate": 0.04, "benchmark": "NASDAQ"})
    assert cfg.risk_free_rate == 0.04 and cfg.benchmark == "NASDAQ"


@pytest.mark.parametrize("table", ["analysis", "validation", "monte_carlo"])
def test_a_risk_free_rate_out_of_range_is_refused_with_the_fraction_meant(table):
    """risk_free_rate = 2 (meant as 2%) was taken as 200% a year, and 1000 gave a Sharpe
    ratio of -30869.7: only > -1 was checked. An annual rate is a fraction in [-0.5, 0.5],
    and one outside that reads as a percentage, as costs.commission_pct = 1.5 does."""
    from tradingd.analysis.montecarlo import MonteCarloConfig
    from tradingd.analysis.validation import ValidationConfig

    cls = {
        "analysis": PerformanceConfig,
        "validation": ValidationConfig,
        "monte_carlo": MonteCarloConfig,
    }[table]
    for bad, hint in ((2, "; for 2% write 0.02"), (-0.75, "; for -0.75% write -0.0075")):
        with pytest.raises(ConfigError) as refused:
            cls(risk_free_rate=bad)
        assert str(refused.value) == (
            f"{table}.risk_free_rate = {bad!r} is invalid: must be an annual rate as a "
            f"fraction in [-0.5, 0.5] (0.02 = 2% a year){hint}"
        )
    with pytest.raises(ConfigError, match=r"= 1000 is invalid: .*2% a year\)$"):
        cls(risk_free_rate=1000)  # no percentage that fits either
    for fine in (-0.5, -0.01, 0.0, 0.05, 0.5):
        assert cls(risk_free_rate=fine).risk_free_rate == fine


# ----------------------------------------------------------------------------- undefined


def _analyze(equity, initial=100.0, cfg=NO_BENCH, **extra):
    e = list(equity)
    return PerformanceAnalyzer(cfg).analyze_performance(
        {"equity_curve": e, "times": _times(len(e)), "initial_capital": initial, **extra}
    )


def test_empty_run_is_nan_not_an_error():
    out = _analyze([], gross_exposure=[], fills=[])
    m = merged(out)
    assert m["bars"] == 0 and m["total_return"] == 0.0
    assert m["max_drawdown"] == 0.0 and m["max_drawdown_duration_bars"] == 0
    for key in ("annual_return", "sharpe", "sortino", "calmar", "var_historical", "exposure"):
        assert math.isnan(m[key]), key
    assert out["start"] is None
    no_inf(m)


def test_single_bar_is_nan_not_an_error():
    m = merged(_analyze([105.0]))
    assert m["total_return"] == pytest.approx(0.05)
    for key in ("sharpe", "sortino", "annual_volatility", "var_parametric", "calmar"):
        assert math.isnan(m[key]), key
    assert m["var_historical"] == pytest.approx(-0.05)  # the only bar was a gain
    no_inf(m)


def test_flat_curve():
    m = merged(_analyze([100.0] * 10, cfg=PerformanceConfig(risk_free_rate=0.0, benchmark="")))
    assert m["annual_volatility"] == 0.0 and m["max_drawdown"] == 0.0
    for key in ("sharpe", "sortino", "calmar"):
        assert math.isnan(m[key]), key
    assert m["var_historical"] == 0.0 and m["downside_deviation"] == 0.0
    no_inf(m)


def test_ruin_is_nan_not_an_error():
    m = merged(_analyze([50.0, -10.0, 5.0]))
    assert m["annual_return"] == -1.0
    assert m["max_drawdown"] == pytest.approx(1.1)
    for key in ("sharpe", "sortino", "annual_volatility", "var_historical"):
        assert math.isnan(m[key]), key
    no_inf(m)


# ----------------------------------------------------------------------------- properties

grid_returns = st.lists(st.integers(min_value=-300, max_value=300), min_size=3, max_size=80)

SCALE_FREE = [
    "total_return",
    "annual_return",
    "excess_return_risk_free",
    "sharpe",
    "sortino",
    "calmar",
    "annual_turnover",
    "annual_volatility",
    "downside_deviation",
    "max_drawdown",
    "max_drawdown_duration_bars",
    "deepest_drawdown_duration_bars",
    "var_historical",
    "cvar_historical",
    "var_parametric",
    "cvar_parametric",
    "exposure",
    "time_in_market",
]


@given(
    # Returns on a 0.1% grid keep the curve well conditioned (as in test_metrics.py).
    steps=grid_returns,
    initial=st.floats(min_value=1.0, max_value=1e7),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
@settings(max_examples=100, deadline=None)
def test_scaling_the_curve_changes_no_ratio(steps, initial, scale):
    r = np.asarray(steps, dtype=float) / 1000.0
    assume(np.std(r) > 1e-6)
    equity = initial * np.cumprod(1 + r)
    gx = np.abs(r) * 10
    a = merged(_analyze(equity, initial, gross_exposure=gx))
    b = merged(_analyze(equity * scale, initial * scale, gross_exposure=gx))
    for key in SCALE_FREE:
        assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-9) or (
            math.isnan(a[key]) and math.isnan(b[key])
        ), (key, a[key], b[key])


@given(steps=st.lists(st.integers(min_value=1, max_value=300), min_size=2, max_size=80))
@settings(max_examples=100, deadline=None)
def test_a_curve_that_only_goes_up(steps):
    r = np.asarray(steps, dtype=float) / 1000.0
    equity = 100 * np.cumprod(1 + r)
    m = merged(_analyze(equity, cfg=PerformanceConfig(risk_free_rate=0.0, benchmark="")))
    assert m["max_drawdown"] == 0.0
    assert m["max_drawdown_duration_bars"] == m["deepest_drawdown_duration_bars"] == 0
    assert math.isnan(m["sortino"]) and math.isnan(m["calmar"])
    assert m["downside_deviation"] == 0.0
    no_inf(m)


@given(steps=grid_returns, rf=st.sampled_from([0.0, 0.02, 0.05]))
@settings(max_examples=100, deadline=None)
def test_the_benchmark_against_itself(steps, rf):
    r = np.asarray(steps, dtype=float) / 1000.0
    assume(np.std(r) > 1e-6)
    times = pd.bdate_range("2019-01-01", periods=r.size + 1)
    levels = pd.Series(100 * np.cumprod(np.r_[1.0, 1 + r]), index=times)
    cfg = PerformanceConfig(risk_free_rate=rf)
    out = PerformanceAnalyzer(cfg, benchmark=levels).analyze_performance(
        {"equity_curve": levels.iloc[1:] * 7.0, "initial_capital": 700.0}
    )
    m = merged(out)
    assert m["benchmark_bars"] == r.size
    assert m["beta"] == pytest.approx(1.0, rel=1e-12)
    # Rounding of r x 7 / 7 (~1e-17 a bar) compounded over 252 bars: ~1e-14 .. 1e-12.
    assert m["alpha"] == pytest.approx(0.0, abs=1e-10)
    assert m["correlation"] == pytest.approx(1.0, rel=1e-12)
    assert m["tracking_error"] == pytest.approx(0.0, abs=1e-12)
    # Annualising a few bars raises rounding by the exponent 252 / n: relative to the CAGR.
    scale = 1.0 + abs(m["benchmark_annual_return"])
    assert m["excess_return"] == pytest.approx(0.0, abs=1e-12 * scale)
    assert math.isnan(m["information_ratio"])  # no active risk: undefined, not inf


@given(
    curve=st.lists(
        st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False),
        min_size=0,
        max_size=60,
    ),
    initial=st.floats(min_value=1e-3, max_value=1e9),
)
@settings(max_examples=150, deadline=None)
def test_never_inf_never_an_exception_and_cvar_beyond_var(curve, initial):
    m = merged(_analyze(curve, initial))
    no_inf(m)
    assert 0.0 <= m["max_drawdown"] < 1.0
    if not math.isnan(m["var_historical"]):
        assert m["cvar_historical"] >= m["var_historical"] - 1e-12 * abs(m["var_historical"])
    if not math.isnan(m["var_parametric"]):
        assert m["cvar_parametric"] >= m["var_parametric"]


@pytest.mark.parametrize(
    ("bench_from", "hole", "level"),
    [
        (0, None, "info"),  # the benchmark starts with the run: no base for its first bar
        (0, 300, "warning"),  # ... and a bar in the middle has no level
        (1, None, "warning"),  # the benchmark starts a bar late
    ],
)
def test_a_missing_first_benchmark_return_is_no_warning_other_gaps_are(bench_from, hole, level):
    from structlog.testing import capture_logs

    rng = np.random.default_rng(5)
    n = 500
    times = pd.bdate_range("2012-01-02", periods=n)
    bench = pd.Series(100 * np.cumprod(1 + rng.normal(0, 0.01, n)), index=times)
    bench = bench.iloc[bench_from:]
    if hole is not None:
        bench = bench.drop(times[hole])
    equity = pd.Series(5e4 * np.cumprod(1 + rng.normal(0, 0.01, n)), index=times)
    with capture_logs() as logs:
        out = PerformanceAnalyzer(benchmark=bench).analyze_performance(
            {"equity_curve": equity, "initial_capital": 5e4}
        )
    [partial] = [e for e in logs if e["event"] == "analysis.benchmark_partial"]
    assert partial["log_level"] == level, partial
    missing = 1 + bench_from + (2 if hole is not None else 0)  # a hole loses two returns
    assert partial["benchmark_bars"] == n - missing and partial["bars"] == n
    assert out["benchmark"]["bars"] == n - missing


@pytest.mark.parametrize(
    ("live", "bars_a_year"),
    [({"bar": "5m"}, 252.0 * 78), ({"bar": "1m", "calendar": "XNYS"}, 252.0 * 390), ({}, None)],
)
def test_a_live_run_read_from_the_store_annualises_with_its_own_bar(
    tmp_path, run_async, live, bars_a_year
):
    """A live run's stored summary holds only its bar count: a 5-minute live run read back
    was annualised as 252 bars a year, its Sharpe ratio sqrt(78) too small. The bars a year
    come from its stored `live.bar` and `live.calendar` (daily New York: the default 252)."""
    got, _ = _stored_run(tmp_path, run_async, "live", {"bars": 40}, config={"live": live})
    assert got["metrics"].get("periods_per_year") == bars_a_year

    def sharpe(**given: float) -> float:
        config = PerformanceConfig(risk_free_rate=0.0, **given)
        return PerformanceAnalyzer(config).calculate_performance_metrics(got)["sharpe"]

    # As if the caller had set the bar's own count; sqrt(bars a year / 252) from the daily.
    assert sharpe() == pytest.approx(sharpe(periods_per_year=bars_a_year or 252.0), rel=1e-12)
    ratio = sharpe() / sharpe(periods_per_year=252.0)
    assert ratio == pytest.approx(math.sqrt((bars_a_year or 252.0) / 252.0), rel=1e-9)


def test_a_replay_stored_before_it_recorded_its_bar_is_read_as_252_bars_a_year_said(
    tmp_path, run_async
):
    """A replay's stored configuration holds its data's bar and bars a year
    (`replay_bars`, `app.stored_config_json`); one stored before it did is read with 252
    bars a year, and the warning says why (it was 252 without a word: a 5-minute replay's
    Sharpe ratio sqrt(78) too small)."""
    old = {"run": {"end": "2017-12-29"}}
    got, warned = _stored_run(
        tmp_path, run_async, "backtest", {"bars": 40}, old, "analysis.replay_bar_unknown"
    )
    assert "periods_per_year" not in got["metrics"]
    (said,) = warned
    assert said["log_level"] == "warning" and said["run_id"] == "r1"
    assert "'r1'" in said["detail"] and "252 bars a year" in said["detail"]
    assert "replay_bars" in said["detail"] and "periods_per_year" in said["detail"]
    recorded = {**old, "replay_bars": {"bar": "5m", "periods_per_year": 19656.0}}
    got, warned = _stored_run(
        tmp_path / "new", run_async, "backtest", {"bars": 40}, recorded,
        "analysis.replay_bar_unknown",
    )  # fmt: skip
    assert got["metrics"]["periods_per_year"] == 19656.0 and warned == []
    # Damaged, it is refused where it is taken, as a summary's; a caller's own still reads.
    damaged = {**old, "replay_bars": {"bar": "5m", "periods_per_year": "many"}}
    got, _ = _stored_run(tmp_path / "damaged", run_async, "backtest", {"bars": 40}, damaged)
    with pytest.raises(ValueError, match="periods_per_year 'many' is not a positive number"):
        PerformanceAnalyzer(NO_BENCH).calculate_performance_metrics(got)
    own = PerformanceAnalyzer(PerformanceConfig(periods_per_year=252.0, benchmark=""))
    assert math.isfinite(own.calculate_performance_metrics(got)["sharpe"])
