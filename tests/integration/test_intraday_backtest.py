"""A backtest of intraday bars counts sessions of them, as the live run of the same bars does:
periods_per_year for the plugins and the summary's annual figures, the day's loss from the
previous session's close."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_panel

from tradingd.app import bar_of_data, build_engine
from tradingd.backtest import run_backtest
from tradingd.core.errors import ConfigError
from tradingd.feeds.panel import Panel


def _of_model(event: dict) -> bool:
    """A `model.*` event other than the one a card trained before `cnn_lstm/2` gets at every
    load (`model.newest_bar_ignored`): these tests copy the shipped card, whatever its age."""
    return event["event"].startswith("model.") and event["event"] != "model.newest_bar_ignored"


def _random_walk(times: np.ndarray, n_symbols: int, rng: np.random.Generator, vol: float) -> Panel:
    """A panel of `n_symbols` random walks (log steps of `vol`) at `times`."""
    n = len(times)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, vol, size=(n, n_symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.0005, size=close.shape))
    return Panel(
        times=times,
        symbols=tuple(f"S{i}" for i in range(n_symbols)),
        open=open_,
        high=np.maximum(open_, close) * 1.001,
        low=np.minimum(open_, close) * 0.999,
        close=close,
        volume=np.full(close.shape, 1e6),
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )


def intraday_panel(minutes: int = 5, sessions: int = 8, n_symbols: int = 4) -> Panel:
    """78 five-minute bars a session (09:30-16:00 New York in winter: 14:30-21:00 UTC)."""
    rng = np.random.default_rng(3)
    days = pd.bdate_range("2024-01-08", periods=sessions)
    per = 390 // minutes
    times = np.concatenate(
        [
            (
                d
                + pd.Timedelta(hours=14, minutes=30)
                + pd.to_timedelta(np.arange(per) * minutes, "m")
            ).to_numpy(dtype="datetime64[ns]")
            for d in days
        ]
    )
    return _random_walk(times, n_symbols, rng, 0.002)


def test_the_bar_of_a_replays_data_is_found_from_its_times():
    daily = make_panel(n_bars=300, split_at=None)
    assert bar_of_data(daily) == "1d"
    # Sessions labelled at their close in UTC (21:00, 20:00 in summer): still daily bars.
    closes = pd.DatetimeIndex(daily.times).tz_localize("America/New_York") + pd.Timedelta(hours=16)
    at_close = dataclasses.replace(
        daily, times=closes.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    )
    assert bar_of_data(at_close) == "1d"
    assert bar_of_data(intraday_panel(5)) == "5m"
    assert bar_of_data(intraday_panel(15)) == "15m"
    with pytest.raises(ConfigError, match="10 minutes apart"):
        bar_of_data(intraday_panel(10))
    # Spacings under a minute, or not whole minutes, are refused too (they were read in whole
    # minutes: 30 s as 0, so daily; 90 s as 1 minute).
    for seconds in (30, 90):
        panel = intraday_panel(5)
        start = panel.times[0]
        spaced = start + np.arange(len(panel.times)) * np.timedelta64(seconds, "s")
        with pytest.raises(ConfigError, match=f"{seconds} seconds apart"):
            bar_of_data(dataclasses.replace(panel, times=spaced))


def test_a_recorded_live_run_refuses_data_of_another_bar_length_than_live_bar(engine_config):
    """A recorded feed's live run took live.bar as its data's bar unchecked: a 5-minute file
    under the default "1d" ran with the day's loss counted bar to bar (the daily loss limit
    never tripped) and 252 bars a year; a daily file under "5m" dated its daily summaries on
    Sundays. Both are a configuration error naming live.bar, the file's bars, what to set."""

    def live(bar: str):  # type: ignore[no-untyped-def]
        return dataclasses.replace(
            engine_config, live=dataclasses.replace(engine_config.live, bar=bar)
        )

    five, daily = intraday_panel(5, sessions=3), make_panel(n_bars=300, split_at=None)
    with pytest.raises(
        ConfigError, match=r"live\.bar = '1d', but .* holds 5m bars: set live\.bar = \"5m\""
    ):
        build_engine(live("1d"), "live", panel=five)
    with pytest.raises(
        ConfigError, match=r"live\.bar = '5m', but .* holds daily bars: set live\.bar = \"1d\""
    ):
        build_engine(live("5m"), "live", panel=daily)
    with pytest.raises(ConfigError, match=r"live\.bar = '15m', but .* holds 5m bars"):
        build_engine(live("15m"), "live", panel=five)
    with pytest.raises(ConfigError, match=r"live\.bar = '5m', but .* are 10 minutes apart"):
        build_engine(live("5m"), "live", panel=intraday_panel(10, sessions=3))
    for config, panel in ((live("5m"), five), (live("1d"), daily)):  # matching: runs
        engine = build_engine(config, "live", panel=panel)
        engine.close_held()


async def test_a_backtest_of_five_minute_bars_annualises_and_sizes_by_sessions(
    engine_config, tmp_path
):
    """It ran them as daily bars: the summary annualised with 252 bars a year (a -59% run
    over two months printed an annual return of -5.9%), and kelly_garch read a bar's
    volatility as a day's."""
    panel = intraday_panel(5)
    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, start="", run_id="intra")
    )
    engine = build_engine(config, "backtest", panel=panel)
    try:
        assert engine.data_bar == "5m"  # type: ignore[attr-defined]
    finally:
        engine.close_held()
    outcome = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    m = outcome.summary
    bars, total = m["bars"], m["total_return"]
    # 252 sessions of 78 bars a year: the annual return compounds the run's over its years.
    assert m["annual_return"] == pytest.approx((1 + total) ** (252 * 78 / bars) - 1, rel=1e-9)
    assert not math.isclose(m["annual_return"], (1 + total) ** (252 / bars) - 1, rel_tol=1e-3)
    assert m["bar"] == "5m" and m["periods_per_year"] == 252 * 78

    # The report of the run annualises the same way (it read 252 bars a year: a year of
    # 5-minute bars as 78), unless its analysis config says otherwise.
    import structlog

    from tradingd.__main__ import main

    # The command configures logging for the process: put back what the other tests use
    # (capture_logs cannot see loggers cached under the command's configuration).
    saved = structlog.get_config()
    try:
        _report_annualises(main, tmp_path, m)
    finally:
        structlog.configure(**saved)
    _python_annualises_as_the_report(tmp_path)

    # The attribution of a replay given no record annualises as the run's summary did.
    from tradingd.analysis.attribution import AttributionAnalyzer, replay_run

    replay = await replay_run(config, panel=panel)
    attribution = AttributionAnalyzer(benchmark=pd.Series(dtype=float)).attribute(replay)
    assert attribution["config"]["periods_per_year"] == 252 * 78


def _report_annualises(main, tmp_path, m) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\noutput_dir = "{tmp_path}"\n')
    assert (
        main(["report", str(tmp_path / "out"), "-c", str(cfg), "--output", str(tmp_path / "r")])
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["analysis"]["config"]["periods_per_year"] == 252 * 78
    assert report["analysis"]["performance"]["annual_return"] == pytest.approx(m["annual_return"])
    own = tmp_path / "a.toml"
    own.write_text("[analysis]\nperiods_per_year = 252\n")
    args = ["report", str(tmp_path / "out"), "-c", str(cfg), "--output", str(tmp_path / "r2")]
    assert main([*args, "--analysis-config", str(own)]) == 0
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["analysis"]["config"]["periods_per_year"] == 252


def _python_annualises_as_the_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """From Python, the run folder's Sharpe ratio is its report's (it was the report's over
    sqrt(78)), and `tradingd backtest --report`'s tables, which were never told the run's
    (only `tradingd report` read it), annualise as the run too."""
    from tradingd.__main__ import _analysis_tables, _write_report
    from tradingd.strategy_api import PerformanceAnalyzer, StatisticalValidator, ValidationConfig

    report = json.loads((tmp_path / "r" / "report.json").read_text())
    python = PerformanceAnalyzer().calculate_performance_metrics(tmp_path / "out")
    assert python["sharpe"] == pytest.approx(report["analysis"]["performance"]["sharpe"])
    tests = StatisticalValidator(ValidationConfig(paths=20)).validate_performance(tmp_path / "out")
    assert tests["config"]["periods_per_year"] == 252 * 78
    assert tests["tests"]["sharpe_ratio"]["sharpe_ratio"] == pytest.approx(python["sharpe"])
    tables = _analysis_tables(None)
    _write_report(tmp_path / "out", str(tmp_path / "r3"), tables, progress=False, validate=False)
    again = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert again["analysis"]["config"]["periods_per_year"] == 252 * 78


def extended_hours_panel(n_symbols: int = 3) -> Panel:
    """5-minute bars 08:00-17:55 New York (regular session 09:30-16:00) over 2015-11-23 ..
    12-01: the Thanksgiving half day (13:00 close) has them all too, and a vendor's stray
    rows on Thanksgiving itself and on the Saturday after."""
    ny = "America/New_York"
    days = [pd.Timestamp(d) for d in ("2015-11-23", "2015-11-24", "2015-11-25", "2015-11-27")]
    days += [pd.Timestamp(d) for d in ("2015-11-30", "2015-12-01")]
    stamps = [
        (d + pd.Timedelta(hours=8) + pd.to_timedelta(np.arange(120) * 5, "m")).tz_localize(ny)
        for d in days
    ]
    stamps += [pd.date_range("2015-11-26 10:00", periods=6, freq="5min", tz=ny)]
    stamps += [pd.date_range("2015-11-28 10:00", periods=2, freq="5min", tz=ny)]
    index = pd.DatetimeIndex(
        np.concatenate([s.tz_convert("UTC").tz_localize(None) for s in stamps])
    )
    times = index.sort_values().to_numpy(dtype="datetime64[ns]")
    rng = np.random.default_rng(11)
    return _random_walk(times, n_symbols, rng, 0.003)


def _csv_of(panel: Panel, path) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for j, sym in enumerate(panel.symbols):
        for i, t in enumerate(panel.datetimes()):
            rows.append(
                {"symbol": sym, "time": t.strftime("%Y-%m-%dT%H:%M:%SZ")}
                | {f: float(getattr(panel, f)[i, j]) for f in ("open", "high", "low", "close")}
                | {"volume": float(panel.volume[i, j])}
            )
    pd.DataFrame(rows).to_csv(path, index=False)


def _extended_hours_csv(engine_config, raw, tmp_path, *, run_id: str):  # type: ignore[no-untyped-def]
    """`engine_config` reading `raw` from a long CSV in `tmp_path`, from its first bar, with
    no data or feature cache (each test sees its file's bars, loaded anew)."""
    _csv_of(raw, tmp_path / "bars.csv")
    return dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, start="", run_id=run_id),
        data=dataclasses.replace(
            engine_config.data, source="csv", path=str(tmp_path / "bars.csv"), layout="long"
        ),
        cache=dataclasses.replace(engine_config.cache, data=False, features=False),
    )


async def test_a_replay_of_extended_hours_bars_steps_only_the_bars_the_live_clock_releases(
    engine_config, tmp_path
):
    """Pre- and post-market bars, bars after a half day's 13:00 close and on a holiday were
    loaded and traded (an 08:00 fill), though the live clock on the same calendar releases
    none of them: now they are dropped before the run, with one warning that counts them."""
    from structlog.testing import capture_logs

    from tradingd.app import load_data
    from tradingd.clock.calendar import ExchangeCalendar

    raw = extended_hours_panel()
    config = _extended_hours_csv(engine_config, raw, tmp_path, run_id="ext")
    with capture_logs() as logs:
        panel = load_data(config)
    exchange = ExchangeCalendar("XNYS", "5m")
    released = exchange.bars_between(raw.datetimes()[0], raw.datetimes()[-1])
    assert panel.datetimes() == released and len(released) == 5 * 78 + 42
    (warning,) = [e for e in logs if e["event"] == "data.outside_session"]
    assert warning["log_level"] == "warning" and warning["calendar"] == "XNYS"
    # a day: 18 bars 08:00-09:25, 24 bars 16:00-17:55; the half day: 60 bars 13:00-17:55
    assert warning["by_kind"] == {
        "before_open": 6 * 18, "after_close": 5 * 24, "half_day_close": 60, "non_session_day": 8
    }  # fmt: skip
    assert warning["bars"] == len(raw.times) - len(released) and warning["kept"] == len(released)
    assert warning["examples"]["before_open"][0] == "2015-11-23T08:00:00-05:00"
    assert warning["examples"]["half_day_close"][-1] == "2015-11-27T17:55:00-05:00"
    assert "live.calendar" in warning["keep"] and "hint" not in warning

    out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    assert out.summary["bars"] == len(released) and out.summary["periods_per_year"] == 252 * 78
    fills = pd.DatetimeIndex([pd.Timestamp(f["time"]) for f in out.fills])
    assert len(fills) > 0
    stamps = fills.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    assert set(exchange.outside_sessions(stamps)) == {""}


def test_a_split_on_a_dropped_bar_is_booked_at_the_symbols_next_bar(engine_config):
    """A vendor books a split on the ex-date's first row, a 08:00 bar with extended hours:
    dropped with it, the split would show as a crash."""
    from tradingd.app import session_bars_only

    raw = extended_hours_panel()
    split, dividend = raw.split.copy(), raw.dividend.copy()
    t = raw.datetimes()
    pre = t.index(pd.Timestamp("2015-11-24 08:00", tz="America/New_York"))
    split[pre, 1], dividend[pre, 2] = 0.5, 0.25
    close = raw.close.copy()
    close[pre + 18, 1] = np.nan  # S1 has no bar at the open: its next bar takes it
    raw = dataclasses.replace(raw, split=split, dividend=dividend, close=close)
    panel = session_bars_only(engine_config, raw)
    at = panel.datetimes().index(pd.Timestamp("2015-11-24 09:30", tz="America/New_York"))
    assert panel.split[at + 1, 1] == 0.5 and panel.dividend[at, 2] == 0.25
    assert (panel.split != 1.0).sum() == 1 and (panel.dividend != 0.0).sum() == 1
    daily = make_panel(n_bars=50, split_at=None)
    assert session_bars_only(engine_config, daily) is daily  # daily bars: untouched


def test_a_file_mostly_outside_the_sessions_gets_a_hint(engine_config):
    """Round-the-clock bars (crypto, FX) under the default XNYS calendar lost two thirds of
    their bars with the same warning as a few pre-market rows: the warning now says what
    is likely wrong."""
    from structlog.testing import capture_logs

    from tradingd.app import session_bars_only

    raw = extended_hours_panel()
    t = pd.date_range("2015-11-23", periods=3 * 24 * 12, freq="5min").to_numpy("datetime64[ns]")
    n = len(t)
    ones = np.ones((n, 1))
    raw = dataclasses.replace(
        raw, times=t, symbols=("BTC",), open=ones * 10, high=ones * 11, low=ones * 9,
        close=ones * 10, volume=ones, split=ones, dividend=ones * 0,
    )  # fmt: skip
    with capture_logs() as logs:
        kept = session_bars_only(engine_config, raw)
    (warning,) = [e for e in logs if e["event"] == "data.outside_session"]
    assert warning["kept"] == len(kept.times) == 3 * 78 and warning["bars"] == n - 3 * 78
    assert warning["hint"].startswith(f"more bars dropped than kept ({n - 3 * 78} of {n})")
    assert "live.calendar = '24/7'" in warning["hint"]


def _minutes(days_closes: list[tuple[str, str]], shift: int) -> np.ndarray:
    """1-minute labels of New York sessions (day, close), from 09:30 + `shift` minutes to the
    close + `shift` minutes (exclusive), as naive UTC."""
    out = []
    for day, close in days_closes:
        start = pd.Timestamp(f"{day} 09:30", tz="America/New_York")
        end = pd.Timestamp(f"{day} {close}", tz="America/New_York")
        labels = pd.date_range(start, end, freq="1min", inclusive="left") + pd.Timedelta(
            minutes=shift
        )
        out.append(labels.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]"))
    return np.concatenate(out)


def test_bars_labelled_by_their_end_get_a_hint(engine_config):
    """Bars labelled by their end (09:31 ... 16:00) lost only each session's 16:00 bar, as
    after_close, far from the more-dropped-than-kept hint: every bar replayed one minute
    late without a word. A closing-auction bar at 16:00 after bars labelled by their start
    (09:30 ... 15:59) is no such sign."""
    from structlog.testing import capture_logs

    from tradingd.app import session_bars_only

    # Thanksgiving week 2024: the 29th closes at 13:00.
    sessions = [("2024-11-25", "16:00"), ("2024-11-26", "16:00"), ("2024-11-29", "13:00")]

    def warned(times: np.ndarray):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(5)
        raw = _random_walk(times, 2, rng, 0.001)
        with capture_logs() as logs:
            session_bars_only(engine_config, raw)
        return [e for e in logs if e["event"] == "data.outside_session"]

    (warning,) = warned(_minutes(sessions, shift=1))
    assert warning["by_kind"] == {"after_close": 2, "half_day_close": 1}
    assert warning["hint"].startswith("3 of the 3 sessions kept have one bar dropped, at their")
    assert "relabel them by their start" in warning["hint"]
    assert warned(_minutes(sessions, shift=0)) == []  # labelled by their start: nothing dropped
    closes = [
        pd.Timestamp(f"{d} {c}", tz="America/New_York").tz_convert("UTC").tz_localize(None)
        for d, c in sessions
    ]
    auction = np.sort(np.concatenate([_minutes(sessions, shift=0), pd.DatetimeIndex(closes)]))
    (warning,) = warned(auction.astype("datetime64[ns]"))
    assert warning["bars"] == 3 and "hint" not in warning


def test_periods_per_year_counts_the_sessions_of_the_live_calendar(engine_config):
    """Intraday runs annualised with 390 minutes a session on every calendar (a table for
    New York): Tokyo's sessions have 330, and a round-the-clock calendar, which keeps
    extended-hours bars, 1,440; the count now comes from live.calendar, as the bars kept.
    So do the sessions a year: Tokyo has about 244, not New York's 252."""
    from tradingd.app import run_defaults, session_bars_only

    def on(calendar: str):  # type: ignore[no-untyped-def]
        return dataclasses.replace(
            engine_config, live=dataclasses.replace(engine_config.live, calendar=calendar)
        )

    assert run_defaults(engine_config, "5m") == {"periods_per_year": 252 * 78}
    assert run_defaults(engine_config, "1d") == {}
    from tradingd.app import SESSIONS_COUNTED_IN
    from tradingd.clock.calendar import ExchangeCalendar

    first, last = SESSIONS_COUNTED_IN
    tokyo = round(  # about 244, not 252
        ExchangeCalendar("XTKS", "1d", start=f"{first - 1}-12-01").sessions_per_year(
            years=last - first + 1, before=last + 1
        )
    )
    assert 240 < tokyo < 248
    assert run_defaults(on("XTKS"), "1m") == {"periods_per_year": tokyo * 330}
    assert run_defaults(on("XTKS"), "1d") == {"periods_per_year": tokyo}
    # New York's aliases count New York's 252 (by name: no calendar is built for them)
    assert run_defaults(on("NYSE"), "1d") == {} and run_defaults(on("XNAS"), "1d") == {}
    raw = extended_hours_panel()
    assert session_bars_only(on("24/7"), raw) is raw  # every bar is in a session
    # ... and 365 sessions a year, not 252 (volatility, and the sizing fed by it, were
    # sqrt(365/252) too small), daily bars too
    assert run_defaults(on("24/7"), "5m") == {"periods_per_year": 365 * 288}
    assert run_defaults(on("24/7"), "1d") == {"periods_per_year": 365}
    with pytest.raises(ConfigError, match=r"live\.calendar = 'NOPE'"):
        run_defaults(on("NOPE"), "5m")


def hourly_panel(first_minute: int, sessions: int = 6) -> Panel:
    """60-minute bars of six January 2024 sessions: `first_minute` 0 is aligned to the clock
    hour (09:00, 10:00, ..., 15:00 New York: Alpaca's 1Hour), 30 to the session open
    (09:30, 10:30, ..., 15:30: the live clock's)."""
    days = pd.bdate_range("2024-01-02", periods=sessions)
    local = pd.DatetimeIndex(
        [d + pd.Timedelta(hours=h, minutes=first_minute) for d in days for h in range(9, 16)]
    ).tz_localize("America/New_York")
    times = local.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return _random_walk(times, 3, np.random.default_rng(5), 0.004)


def test_hour_aligned_bars_are_refused_not_replayed_off_the_live_clocks_grid(
    engine_config, tmp_path
):
    """Hour-aligned 60-minute bars lost their 09:00 bar (09:30-10:00 of regular trading)
    among the "pre-market" count of one warning, and the other six replayed half an hour
    off the live clock's 09:30, 10:30, ..., 15:30 bars: a replay no live run could match,
    without a word. Now it is an error that says so and what to do; open-aligned bars are
    replayed whole."""
    from tradingd.app import load_data, session_bars_only
    from tradingd.core.errors import DataError

    _csv_of(hourly_panel(0), tmp_path / "hourly.csv")
    config = dataclasses.replace(
        engine_config,
        data=dataclasses.replace(
            engine_config.data, source="csv", path=str(tmp_path / "hourly.csv"), layout="long"
        ),
        cache=dataclasses.replace(engine_config.cache, data=False, features=False),
    )
    with pytest.raises(DataError) as err:
        load_data(config)
    said = str(err.value)
    assert "the data's 60m bars are not the live clock's: 36 of the 36 bars" in said
    assert "the first, 2024-01-02T10:00:00-05:00, 30 minutes after" in said
    assert "live clock's bar 2024-01-02T09:30:00-05:00" in said
    assert "09:30, 10:30, ..., 15:30" in said and "aligned to the clock hour" in said
    assert "resample finer bars" in said and "Nothing was resampled" in said

    aligned = hourly_panel(30)
    kept = session_bars_only(engine_config, aligned)
    assert kept is aligned and bar_of_data(kept) == "60m"  # every bar the live clock's


async def test_the_same_intraday_bars_replay_alike_through_the_api_and_load_data(
    engine_config, tmp_path
):
    """Only load_data dropped the bars outside live.calendar's sessions: the same
    extended-hours panel passed to run_backtest (or build_engine) replayed its 08:00 and
    17:00 bars, and traded them. Every entry point now filters, once: the API's run has the
    bars and fills of the loaded one, and says what it dropped in one warning, not two."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine, load_data

    raw = extended_hours_panel()
    config = _extended_hours_csv(engine_config, raw, tmp_path, run_id="same")
    loaded = await run_backtest(config, output_dir=tmp_path / "loaded")
    with capture_logs() as logs:
        api = await run_backtest(config, panel=raw, output_dir=tmp_path / "api")

    def traded(outcome):  # type: ignore[no-untyped-def]
        return [(f["time"], f["symbol"], f["quantity"], f["price"]) for f in outcome.fills]

    assert api.summary["bars"] == loaded.summary["bars"] == 5 * 78 + 42
    assert traded(api) == traded(loaded) and len(traded(api)) > 0
    assert api.result.times == loaded.result.times
    assert len([e for e in logs if e["event"] == "data.outside_session"]) == 1

    # build_engine with the raw panel steps the same bars; with load_data's, it warns no more
    engine = build_engine(config, "backtest", panel=raw)
    result = await engine.run_until_done()
    assert result.times == loaded.result.times
    with capture_logs() as logs:
        panel = load_data(config)
        engine = build_engine(config, "backtest", panel=panel)
        engine.close_held()
    assert len([e for e in logs if e["event"] == "data.outside_session"]) == 1


def _ml_config(engine_config, model_dir: str = ""):  # type: ignore[no-untyped-def]
    """`engine_config` with the ml_ensemble signal alone (the shipped model unless
    `model_dir`), its predictions in memory."""
    from tradingd.config import PluginSpec

    params = {"model_dir": model_dir, "cache_dir": ""}
    return dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, start=""),
        signals=(PluginSpec("ml_ensemble", params=params),),
    )


def _bar_warnings(config, panel):  # type: ignore[no-untyped-def]
    """The `model.bar_differs` lines of building `config`'s backtest engine on `panel`."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        engine = build_engine(config, "backtest", panel=panel)
    engine.close_held()
    return [e for e in logs if e["event"] == "model.bar_differs"]


def test_a_model_trained_on_other_bars_than_the_runs_is_warned_about(engine_config, tmp_path):
    """The shipped model (daily returns: its residual_std, its confidence) ran on 1- and
    5-minute bars without a word. A card that records no bar length (every card before the
    field, the one shipped before included) was trained on daily bars; a card that records
    one is taken at its word."""
    from tiny_models import model_folder

    five, daily = intraday_panel(5, sessions=3), make_panel(n_bars=300, split_at=None)
    (warned,) = _bar_warnings(_ml_config(engine_config), five)  # the shipped card: "1d"
    assert (warned["trained_on"], warned["run_bar"]) == ("1d", "5m")

    def before_the_field(card):  # type: ignore[no-untyped-def]
        card.pop("bar", None)

    shipped = _ml_config(engine_config, str(model_folder(tmp_path / "old", edit=before_the_field)))
    (warned,) = _bar_warnings(shipped, five)
    assert warned["log_level"] == "warning"
    assert (warned["trained_on"], warned["run_bar"]) == ("1d", "5m")
    assert "records no bar length" in warned["rule"] and "daily" in warned["rule"]
    assert _bar_warnings(shipped, daily) == []

    def five_minutes(card):  # type: ignore[no-untyped-def]
        card["bar"] = "5m"

    trained_5m = _ml_config(engine_config, str(model_folder(tmp_path / "m5", edit=five_minutes)))
    assert _bar_warnings(trained_5m, five) == []
    (warned,) = _bar_warnings(trained_5m, daily)
    assert (warned["trained_on"], warned["run_bar"]) == ("5m", "1d")
    assert "card's bar = 5m" in warned["rule"]

    def no_bar_length(card):  # type: ignore[no-untyped-def]
        card["bar"] = "2h"

    bad = model_folder(tmp_path / "bad", edit=no_bar_length)
    with pytest.raises(ConfigError, match=f"model card {bad / 'card.json'}: bar = '2h'"):
        build_engine(_ml_config(engine_config, str(bad)), "backtest", panel=five)


def test_a_model_published_mid_run_trained_on_other_bars_is_warned_about(
    engine_config, tmp_path, monkeypatch
):
    """`model.bar_differs` was checked at start only: a live daemon following
    `var/models/current` took up a model retrained on other bars (`tradingd retrain`
    publishing one) without a word. Each model taken up mid-run gets the start's check,
    named by its own version; a card whose bar is no bar length is refused, as at start,
    and the loaded model serves on."""
    import shutil

    from conftest import live_run
    from published_models import publish_two, switch
    from structlog.testing import capture_logs

    from tradingd.config import PluginSpec

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)  # "first" (no bar: daily) serves; "second" waits

    def card_bar(folder, version: str, bar: str) -> None:  # type: ignore[no-untyped-def]
        card = json.loads((folder / "card.json").read_text())
        card["model_version"], card["bar"] = version, bar
        (folder / "card.json").write_text(json.dumps(card))

    card_bar(second, "second", "5m")
    third = root / "versions" / "third"
    shutil.copytree(root / "versions" / "first", third)
    card_bar(third, "third", "2h")
    panel, config = live_run(engine_config)  # daily bars, live
    spec = PluginSpec("ml_ensemble", params={"cache_dir": ""})
    with capture_logs() as logs:
        engine = build_engine(dataclasses.replace(config, signals=(spec,)), "live", panel=panel)
    try:
        assert [e for e in logs if e["event"] == "model.bar_differs"] == []
        ((plugin, _),) = engine.pipeline.signals
        assert plugin.version == "first"

        switch(root, "second")
        with capture_logs() as logs:
            plugin._maybe_reload()
        assert plugin.version == "second"
        (warned,) = [e for e in logs if e["event"] == "model.bar_differs"]
        assert warned["log_level"] == "warning" and warned["version"] == "second"
        assert (warned["trained_on"], warned["run_bar"]) == ("5m", "1d")
        assert warned["card"] == str(second / "card.json")
        assert "card's bar = 5m" in warned["rule"]

        switch(root, "third")
        with capture_logs() as logs:
            plugin._maybe_reload()
        (refused,) = [e for e in logs if _of_model(e)]
        assert refused["event"] == "model.reload_refused" and refused["serving"] == "second"
        assert f"model card {third / 'card.json'}: bar = '2h'" in refused["reason"]
        assert plugin.version == "second" and not plugin.status()["ok"]
    finally:
        engine.close_held()


def test_a_model_published_mid_run_trained_on_another_universe_is_warned_about(
    engine_config, tmp_path, monkeypatch
):
    """`model.universe_differs` was checked at start only: a live daemon following
    `var/models/current` took up a model retrained over another universe (its
    cross-sectional features meaning something else over this run's symbols) without a
    word. Each model taken up mid-run gets the start's check, named by its own version and
    card; one trained on this run's universe says nothing."""
    from conftest import live_run
    from published_models import publish_two, switch
    from structlog.testing import capture_logs

    from tradingd.config import PluginSpec

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)  # "first" serves; "second" waits
    panel, config = live_run(engine_config)  # daily bars, live

    def card_symbols(folder, symbols) -> None:  # type: ignore[no-untyped-def]
        card = json.loads((folder / "card.json").read_text())
        card["data"]["symbols"] = list(symbols)
        (folder / "card.json").write_text(json.dumps(card))

    card_symbols(root / "versions" / "first", panel.symbols)  # this run's universe
    card_symbols(second, ("NASDAQ", "SP500"))  # the shipped model's 2 index series
    spec = PluginSpec("ml_ensemble", params={"cache_dir": ""})
    with capture_logs() as logs:
        engine = build_engine(dataclasses.replace(config, signals=(spec,)), "live", panel=panel)
    try:
        assert [e for e in logs if e["event"] == "model.universe_differs"] == []
        ((plugin, _),) = engine.pipeline.signals
        assert plugin.version == "first"

        switch(root, "second")
        with capture_logs() as logs:
            plugin._maybe_reload()
        assert plugin.version == "second"  # warned of, not refused
        (warned,) = [e for e in logs if e["event"] == "model.universe_differs"]
        assert warned["log_level"] == "warning" and warned["version"] == "second"
        assert warned["card"] == str(second / "card.json")
        assert (warned["trained_on"], warned["run_symbols"]) == (2, len(panel.symbols))
        assert "cs_ret_1" in warned["cross_sectional"]

        switch(root, "first")
        with capture_logs() as logs:
            plugin._maybe_reload()
        assert plugin.version == "first"
        assert [e for e in logs if e["event"] == "model.universe_differs"] == []
    finally:
        engine.close_held()


def test_a_model_taken_up_mid_replay_fitted_on_its_bars_to_come_is_warned_about(
    engine_config, tmp_path, monkeypatch
):
    """`replay.in_sample` was said at start only: the demo's replay took up a model
    retrained over the replayed years (`tradingd retrain` publishing to `current`) and
    decided 114 bars inside its training span without a word, where a restart on the same
    `current` said it at once. The model taken up is checked over the replay's bars from
    the one it decides first, named by its own version and card."""
    from conftest import live_run
    from published_models import publish_two, switch
    from structlog.testing import capture_logs

    from tradingd.config import PluginSpec

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)  # "first" serves; "second" waits
    panel, config = live_run(engine_config)  # daily bars, live: a replay of bars 60..89
    times = panel.datetimes()

    def fitted(folder, first: int, last: int) -> None:  # type: ignore[no-untyped-def]
        card = json.loads((folder / "card.json").read_text())
        card["train_range"] = [times[first].date().isoformat(), times[last - 5].date().isoformat()]
        card["validation_range"] = [
            times[last - 4].date().isoformat(),
            times[last].date().isoformat(),
        ]
        (folder / "card.json").write_text(json.dumps(card))

    fitted(root / "versions" / "first", 0, 40)  # before the replayed bars
    fitted(second, 0, 80)  # through bar 80
    spec = PluginSpec("ml_ensemble", params={"cache_dir": ""})
    with capture_logs() as logs:
        engine = build_engine(dataclasses.replace(config, signals=(spec,)), "live", panel=panel)
    try:
        assert [e for e in logs if e["event"] == "replay.in_sample"] == []
        ((plugin, _),) = engine.pipeline.signals
        assert plugin.version == "first"

        switch(root, "second")
        with capture_logs() as logs:
            # taken up at bar 70: 12 of its 20 bars to come (70..80, and bar 81, the last
            # validation window's one-bar target)
            plugin._maybe_reload(times[70])
        assert plugin.version == "second"  # warned of, not refused
        (said,) = [e for e in logs if e["event"] == "replay.in_sample"]
        assert said["log_level"] == "warning" and said["version"] == "second"
        assert said["card"] == str(second / "card.json")
        assert (said["bars"], said["of"]) == (12, 20)

        switch(root, "first")
        with capture_logs() as logs:
            plugin._maybe_reload(times[75])
        assert plugin.version == "first"
        assert [e for e in logs if e["event"] == "replay.in_sample"] == []
    finally:
        engine.close_held()


async def _read_back(config, run_id: str) -> dict:  # type: ignore[no-untyped-def]
    """The run `run_id` as `stored_run_results` reads it from `config`'s store."""
    from tradingd.analysis.run_records import stored_run_results
    from tradingd.storage.factory import open_store

    store = open_store(config.storage.url, spool=False)
    await store.start()
    try:
        return await stored_run_results(store, run_id)
    finally:
        await store.stop()


@pytest.mark.parametrize(
    ("minutes", "calendar", "bars_a_year"),
    [(5, "XNYS", 252 * 78), (15, "XNYS", 252 * 26), (0, "24/7", 365), (0, "XNYS", None)],
)
async def test_a_replay_read_back_from_the_store_annualises_as_its_run_folder(
    engine_config, tmp_path, minutes, calendar, bars_a_year
):
    """A replay's stored summary holds only its bar count and its stored configuration no
    bar (its data's): an intraday backtest read back from PostgreSQL or SQLite was
    annualised with 252 bars a year, its Sharpe ratio its run folder's over sqrt(bars a
    day). Its stored configuration now holds its data's bar and bars a year (`replay_bars`);
    read back, a daily run on New York's calendar has none (252, the default)."""
    from structlog.testing import capture_logs

    from tradingd.strategy_api import PerformanceAnalyzer

    panel = intraday_panel(minutes) if minutes else make_panel(n_bars=300, split_at=None)
    config = dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, start="", run_id="stored"),
        live=dataclasses.replace(engine_config.live, calendar=calendar),
    )
    outcome = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    # The folder's own, said for a daily run on New York's calendar too (252).
    assert outcome.summary.get("periods_per_year") == (bars_a_year or 252.0)
    with capture_logs() as logs:
        stored = await _read_back(config, "stored")
    assert stored["metrics"].get("periods_per_year") == bars_a_year
    assert [e for e in logs if e["event"] == "analysis.replay_bar_unknown"] == []
    analyzer = PerformanceAnalyzer(benchmark=pd.Series(dtype=float))
    from_store = analyzer.calculate_performance_metrics(stored)
    from_folder = analyzer.calculate_performance_metrics(tmp_path / "out")
    assert from_store["sharpe"] == pytest.approx(from_folder["sharpe"], rel=1e-9)
    assert from_store["annual_return"] == pytest.approx(outcome.summary["annual_return"])


def test_intraday_bars_missing_from_the_data_are_said(engine_config):
    """Intraday data missing bars the live clock releases (an hour, a whole session) was
    replayed without a word: the replay stepped past them while a live run would release and
    decide each. One warning says how many, and how many whole sessions."""
    from structlog.testing import capture_logs

    from tradingd.app import session_bars_only

    full = intraday_panel(sessions=8)  # 2024-01-08 .. 17 (01-15 a holiday: no bars kept)
    with capture_logs() as logs:
        session_bars_only(engine_config, full)
    assert [e for e in logs if e["event"] == "data.bars_missing"] == []
    days = np.asarray(full.times, dtype="datetime64[D]")
    sessions = np.unique(days)
    hour = np.flatnonzero(days == sessions[2])[12:24]  # the third session's second hour
    keep = np.ones(len(full.times), dtype=bool)
    keep[hour] = False
    keep[days == sessions[4]] = False  # the fifth session, whole
    fields = ("times", "open", "high", "low", "close", "volume", "split", "dividend")
    gappy = dataclasses.replace(full, **{f: getattr(full, f)[keep] for f in fields})
    with capture_logs() as logs:
        session_bars_only(engine_config, gappy)
    (warning,) = [e for e in logs if e["event"] == "data.bars_missing"]
    assert warning["log_level"] == "warning"
    assert warning["missing"] == 12 + 78 and warning["sessions_missing"] == 1
    assert warning["first_missing"][0] == pd.Timestamp(full.times[hour[0]], tz="UTC").isoformat()


def test_symbols_with_longer_bars_than_the_data_are_said(engine_config):
    """A 5-minute file with an hourly symbol in it was replayed without a word: the symbol
    was decided once an hour and, `order_ttl_bars` counting the data's bars, its entries
    expired unfilled. One warning names the symbols and their bar length; symbols with a
    few missing bars (most of their gaps are the data's) are not named."""
    from structlog.testing import capture_logs

    from tradingd.app import session_bars_only

    full = intraday_panel(sessions=4, n_symbols=3)
    with capture_logs() as logs:
        session_bars_only(engine_config, full)
    assert [e for e in logs if e["event"] == "data.bar_lengths_mixed"] == []
    close = full.close.copy()
    minute = np.asarray(full.times, dtype="datetime64[m]").astype(np.int64)
    close[minute % 60 != 30, 1] = np.nan  # the second symbol: one bar an hour, at :30
    close[::7, 2] = np.nan  # the third: a bar missing now and then, still 5-minute bars
    mixed = dataclasses.replace(full, close=close)
    with capture_logs() as logs:
        session_bars_only(engine_config, mixed)
    (warning,) = [e for e in logs if e["event"] == "data.bar_lengths_mixed"]
    assert warning["log_level"] == "warning"
    assert warning["longer"] == {full.symbols[1]: "60 minutes"}
    assert warning["symbols"] == 1 and warning["bar"] == "5 minutes"
