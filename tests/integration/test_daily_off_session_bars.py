"""Daily data with bars on days its calendar has no session (crypto's weekend bars on New
York's calendar) is annualised with the bars a year its dates hold, and said.

It was annualised with XNYS's 252 sessions without a word: two calendar years of daily
crypto bars reported an annual return of -1.81% for a CAGR of -2.61%, the volatility and
the Sharpe ratio scaled by sqrt(252 / 365); through the Python API 365 daily bars gaining
9.95% reported an annual return of 6.77%.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from tradingd.analysis.performance import PerformanceAnalyzer, PerformanceConfig
from tradingd.analysis.run_records import daily_bars_a_year
from tradingd.app import build_engine, data_bars_a_year, session_bars_only
from tradingd.backtest import run_backtest
from tradingd.feeds.panel import Panel

OFF_SESSION = "data.off_session_days"


def every_day_panel(days: int = 400, start: str = "2020-01-01", seed: int = 3) -> Panel:
    """Two symbols with a daily bar on every calendar day (crypto), naive midnight labels."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=days, freq="D").to_numpy("datetime64[ns]")
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.02, size=(days, 2)), axis=0))
    ones = np.ones_like(close)
    return Panel(
        times=times, symbols=("AAA", "BBB"), open=close, high=close * 1.01, low=close * 0.99,
        close=close, volume=ones * 1e6, split=ones, dividend=ones * 0.0,
    )  # fmt: skip


def _with_calendar(config, calendar: str):  # type: ignore[no-untyped-def]
    return dataclasses.replace(config, live=dataclasses.replace(config.live, calendar=calendar))


def test_weekend_daily_bars_are_said_and_counted_as_the_data_holds_them(engine_config):
    panel = every_day_panel()
    with capture_logs() as logs:
        kept = session_bars_only(engine_config, panel)
    (warning,) = [e for e in logs if e["event"] == OFF_SESSION]
    # 2020-01-01 (a holiday) and 114 weekend days and 3 more holidays in 400 days.
    weekend = int((pd.DatetimeIndex(panel.times).day_of_week >= 5).sum())
    assert warning["bars"] >= weekend and warning["of"] == 400
    assert warning["first"] == "2020-01-01" and warning["calendar"] == "XNYS"
    assert warning["periods_per_year"] == 365
    assert kept is panel and len(kept.times) == 400  # nothing dropped
    assert data_bars_a_year(kept) == 365.0


def test_session_daily_bars_and_a_calendar_that_has_the_days_are_not_flagged(engine_config):
    sessions = every_day_panel()
    weekdays = pd.DatetimeIndex(sessions.times).day_of_week < 5
    bdays = dataclasses.replace(
        sessions,
        **{f: getattr(sessions, f)[weekdays] for f in ("open", "high", "low", "close")},
        times=sessions.times[weekdays],
        volume=sessions.volume[weekdays], split=sessions.split[weekdays],
        dividend=sessions.dividend[weekdays],
    )  # fmt: skip
    with capture_logs() as logs:
        assert data_bars_a_year(session_bars_only(engine_config, bdays)) is None
        every = session_bars_only(_with_calendar(engine_config, "24/7"), every_day_panel())
        assert data_bars_a_year(every) is None  # the calendar's own 365
    assert not [e for e in logs if e["event"] == OFF_SESSION]


async def test_a_backtest_of_weekend_daily_bars_annualises_with_365(engine_config, tmp_path):
    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, start="", run_id="crypto")
    )
    outcome = await run_backtest(config, panel=every_day_panel(), output_dir=tmp_path / "out")
    m = outcome.summary
    bars, total = m["bars"], m["total_return"]
    assert m["periods_per_year"] == 365 and m["bar"] == "1d"
    assert m["annual_return"] == pytest.approx((1 + total) ** (365 / bars) - 1, rel=1e-9)
    written = json.loads((outcome.output_dir / "summary.json").read_text())
    assert written["periods_per_year"] == 365  # what `tradingd report` annualises with
    # The stored configuration says so too: a replay read back from the store.
    engine = build_engine(config, "backtest", panel=every_day_panel())
    try:
        stored = json.loads(engine.run.config_json)
        assert stored["replay_bars"] == {"bar": "1d", "periods_per_year": 365.0}
    finally:
        engine.close_held()


async def test_a_backtest_on_sessions_says_its_252(engine_config, tmp_path):
    from conftest import make_panel

    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, start="", run_id="xnys")
    )
    outcome = await run_backtest(
        config, panel=make_panel(n_bars=80, split_at=None), output_dir=tmp_path / "o"
    )
    assert outcome.summary["periods_per_year"] == 252 and outcome.summary["bar"] == "1d"


def test_the_analyzer_annualises_a_bare_curve_of_weekend_bars_with_its_own_count():
    times = pd.date_range("2021-01-01", periods=365, freq="D", tz="UTC")
    equity = pd.Series(1e5 * np.cumprod(np.full(365, 1.0995 ** (1 / 365))), index=times)
    analyzer = PerformanceAnalyzer(PerformanceConfig(benchmark=""))
    with capture_logs() as logs:
        got = analyzer.analyze_performance({"equity_curve": equity, "initial_capital": 1e5})
    assert got["performance"]["annual_return"] == pytest.approx(0.0995, rel=1e-9)  # 0.0677
    assert got["config"]["periods_per_year"] == 365
    (warning,) = [e for e in logs if e["event"] == "analysis.weekend_bars"]
    assert warning["bars"] == 104 and warning["first"] == "2021-01-02"
    # A set periods_per_year is the caller's choice.
    fixed = PerformanceAnalyzer(PerformanceConfig(benchmark="", periods_per_year=252.0))
    assert (
        fixed.analyze_performance({"equity_curve": equity, "initial_capital": 1e5})["config"][
            "periods_per_year"
        ]
        == 252.0
    )
    # Weekday bars keep New York's 252.
    weekdays = equity[equity.index.day_of_week < 5]
    got = analyzer.analyze_performance({"equity_curve": weekdays, "initial_capital": 1e5})
    assert got["config"]["periods_per_year"] == 252.0


@pytest.mark.parametrize(
    ("freq", "want"), [("D", 365.0), ("B", 261.0), (pd.offsets.CustomBusinessDay(), 261.0)]
)
def test_daily_bars_a_year_counts_bars_per_calendar_year(freq, want):
    times = pd.date_range("2019-03-04", periods=900, freq=freq)
    assert daily_bars_a_year(times) == want


def _every_day_csv(path, days: int = 60) -> None:  # type: ignore[no-untyped-def]
    panel = every_day_panel(days=days)
    rows = [
        {"time": pd.Timestamp(t).date().isoformat(), "symbol": s, "open": panel.close[i, j],
         "high": panel.high[i, j], "low": panel.low[i, j], "close": panel.close[i, j],
         "volume": 1_000_000}
        for i, t in enumerate(panel.times)
        for j, s in enumerate(panel.symbols)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)


def test_a_file_of_weekend_daily_bars_loads_on_a_calendar_with_weekend_sessions(
    engine_config, tmp_path
):
    """The loader refuses daily bars dated on a weekend (a shifted date on an exchange's
    calendar), but on a calendar that holds weekend sessions (`live.calendar = "24/7"`,
    crypto) they are sessions: refused there too, the data could not be run at all."""
    from tradingd.app import load_data
    from tradingd.core.errors import DataError

    path = tmp_path / "crypto.csv"
    _every_day_csv(path)
    config = dataclasses.replace(
        engine_config,
        data=dataclasses.replace(engine_config.data, source="csv", path=str(path), layout="long"),
    )
    with pytest.raises(DataError, match="Saturday or a Sunday"):
        load_data(config)
    panel = load_data(_with_calendar(config, "24/7"))
    assert panel.symbols == ("AAA", "BBB") and len(panel.times) == 60
    weekend = pd.DatetimeIndex(panel.times).day_of_week >= 5
    assert weekend.sum() == 17  # 60 days from Wednesday 2020-01-01
