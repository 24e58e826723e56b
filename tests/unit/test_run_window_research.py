"""`tradingd train` and `tradingd walkforward` read run.start / run.end as a backtest does
(`app.run_window`, over `app.run_bound`): for intraday bars a date is a session day of
live.calendar. An XASX session opens 23:00 UTC the evening before its date (10:00 Sydney,
summer time); read as UTC days, Monday's first bars fell before train's windows and before a
walk-forward's first test window, and a run.end date cut its own session's last bars from
the folds. Daily data and XNYS bars select the same bars as before."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tradingd.analysis.walkforward_folds import WalkForwardConfig, make_folds
from tradingd.config import Config
from tradingd.feeds.panel import Panel

# Monday 4 March 2024's first XASX bar (10:00 Sydney, AEDT) and Wednesday 6 March's last (15:00).
MONDAY, WEDNESDAY = "2024-03-04", "2024-03-06"
MONDAY_OPEN = np.datetime64("2024-03-03T23:00", "ns")
WEDNESDAY_LAST = np.datetime64("2024-03-06T04:00", "ns")


def _sessions(zone: str, first: str, last: str, hours: list[float]) -> np.ndarray:
    """Bar labels (naive UTC) at local `hours` of each weekday from `first` to `last`."""
    days = pd.bdate_range(first, last)
    labels = [
        (day + pd.Timedelta(hours=h)).tz_localize(zone).tz_convert("UTC").tz_localize(None)
        for day in days
        for h in hours
    ]
    return pd.DatetimeIndex(labels).to_numpy(dtype="datetime64[ns]")


def _xasx() -> np.ndarray:
    """60-minute XASX bars, 10:00 .. 15:00 Sydney, 22 January .. 15 March 2024."""
    return _sessions("Australia/Sydney", "2024-01-22", "2024-03-15", list(range(10, 16)))


def _xnys() -> np.ndarray:
    """60-minute XNYS bars, 9:30 .. 15:30 New York, the same weeks."""
    hours = [9.5 + h for h in range(7)]
    return _sessions("America/New_York", "2024-01-22", "2024-03-15", hours)


def _config(calendar: str, start: str, end: str = "", timezone: str = "America/New_York"):  # type: ignore[no-untyped-def]
    c = Config()
    return dataclasses.replace(
        c,
        run=dataclasses.replace(c.run, start=start, end=end),
        live=dataclasses.replace(c.live, calendar=calendar, bar="60m"),
        data=dataclasses.replace(c.data, timezone=timezone),
    )


def _panel(times: np.ndarray, n_symbols: int = 3) -> Panel:
    rng = np.random.default_rng(7)
    close = 40.0 * np.exp(np.cumsum(rng.normal(0, 0.003, size=(len(times), n_symbols)), axis=0))
    return Panel(
        times=times,
        symbols=tuple(f"S{i}" for i in range(n_symbols)),
        open=close * 1.0005,
        high=close * 1.002,
        low=close * 0.998,
        close=close,
        volume=np.full(close.shape, 1e6),
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )


def _first_training_window_end(config: Config, panel: Panel) -> np.datetime64:
    """The bar `tradingd train`'s first training window ends at (its own functions)."""
    from tradingd_models.config import ModelConfig
    from tradingd_models.training import run_start, training_windows

    from tradingd.features.catalog import Catalog

    f = config.features
    mc = ModelConfig(time_steps=5, cnn_kernel_size=3)
    start = run_start(config, panel.times)
    data = training_windows(
        panel, ["ret_1", "hl_range"], Catalog(f.indicators, f.cross_sectional), mc, start
    )
    return np.datetime64(data["t_train"].min(), "ns")


@pytest.mark.parametrize("tz", ["America/New_York", "Australia/Sydney", "UTC"])
def test_train_windows_end_from_run_starts_first_xasx_bar(tz):
    """run.start = Monday: the first training window ends at Monday's first bar, Sunday
    23:00 UTC, as the backtest trades from it (it ended at Monday 00:00 UTC, the second)."""
    config = _config("XASX", MONDAY, timezone=tz)
    assert _first_training_window_end(config, _panel(_xasx())) == MONDAY_OPEN


def test_train_windows_of_daily_and_xnys_bars_start_where_they_did():
    """Guard: daily bars and XNYS intraday bars start their windows at run.start's first bar,
    as before (a date read as 00:00 UTC selected the same bars)."""
    daily = pd.bdate_range("2023-06-01", "2024-03-15").to_numpy(dtype="datetime64[ns]")
    assert _first_training_window_end(_config("XNYS", MONDAY), _panel(daily)) == np.datetime64(
        "2024-03-04", "ns"
    )
    xnys = _xnys()
    # Monday 4 March's first bar: 9:30 New York, 14:30 UTC.
    got = _first_training_window_end(_config("XNYS", MONDAY), _panel(xnys))
    assert got == np.datetime64("2024-03-04T14:30", "ns")


def _test_bars(times: np.ndarray, folds) -> tuple[np.datetime64, np.datetime64]:  # type: ignore[no-untyped-def]
    return times[folds[0].test_start], times[max(f.test_end for f in folds)]


@pytest.mark.parametrize("tz", ["America/New_York", "UTC"])
def test_walkforward_tests_from_run_starts_first_xasx_bar_through_run_ends_last(tz):
    """run.start = Monday, run.end = Wednesday over bars through Friday: the first test
    window starts at Monday's first bar (Sunday 23:00 UTC; it began at the second, Monday
    00:00 UTC, leaving the first to the training window), and the folds test through
    Wednesday's last bar (15:00 Sydney, 04:00 UTC; they ended at Wednesday 00:00 UTC), not
    into Thursday's session (from 23:00 UTC on Wednesday)."""
    times = _xasx()
    cfg = WalkForwardConfig(train=30, test=3, step=3, lookback_bars=6)
    folds = make_folds(times, cfg, MONDAY, WEDNESDAY, calendar="XASX", data_timezone=tz)
    first, last = _test_bars(times, folds)
    assert first == MONDAY_OPEN
    assert last == WEDNESDAY_LAST
    assert times[folds[0].train_end] < MONDAY_OPEN


def test_walkforward_folds_of_daily_and_xnys_bars_start_where_they_did():
    """Guard: the first test bar of daily and XNYS intraday bars is run.start's first bar as
    before; a daily run.end keeps its own session."""
    cfg = WalkForwardConfig(train=30, test=3, step=3, lookback_bars=6)
    daily = pd.bdate_range("2023-06-01", "2024-03-15").to_numpy(dtype="datetime64[ns]")
    first, last = _test_bars(daily, make_folds(daily, cfg, MONDAY, WEDNESDAY, calendar="XNYS"))
    assert (first, last) == (np.datetime64(MONDAY, "ns"), np.datetime64(WEDNESDAY, "ns"))
    xnys = _xnys()
    folds = make_folds(xnys, cfg, MONDAY, calendar="XNYS", data_timezone="America/New_York")
    assert _test_bars(xnys, folds)[0] == np.datetime64("2024-03-04T14:30", "ns")


def test_walkforward_keeps_run_ends_xnys_session():
    """run.end = Wednesday over XNYS bars through Friday: the folds test through Wednesday's
    last bar (15:30 New York, 20:30 UTC). Read as 00:00 UTC, the date left Wednesday's whole
    session out of the out-of-sample period, which the backtest of the same window trades."""
    xnys = _xnys()
    cfg = WalkForwardConfig(train=30, test=1, step=1, lookback_bars=6)
    folds = make_folds(xnys, cfg, MONDAY, WEDNESDAY, calendar="XNYS")
    assert _test_bars(xnys, folds)[1] == np.datetime64("2024-03-06T20:30", "ns")


def test_a_run_start_after_intraday_data_names_the_data_ending():
    """run.start on the session day after the data's last (Saturday's date in Sydney is no
    session, Monday 18 March is after the data) says so, as the backtest does."""
    from tradingd.analysis.walkforward_folds import WalkForwardError

    cfg = WalkForwardConfig(train=30, test=3, step=3, lookback_bars=6)
    with pytest.raises(WalkForwardError, match="after the last bar of the data"):
        make_folds(_xasx(), cfg, "2024-03-18", calendar="XASX")


def _fold_trades_from(times: np.ndarray, calendar: str, warmup: str) -> list[tuple[int, int]]:
    """For each fold: the index of its first bar to trade, as its backtest reads the fold's
    run.start (`walkforward_run.fold_window`, `app.trade_start`), and the bar it should be."""
    from tradingd.analysis.walkforward_run import FoldTask, fold_window
    from tradingd.app import trade_start

    panel = _panel(times)
    cfg = WalkForwardConfig(train=12, test=3, step=1, lookback_bars=6, warmup=warmup)
    out = []
    for fold in make_folds(times, cfg, calendar=calendar):
        task = FoldTask(_config(calendar, ""), cfg, fold, panel, 0, fold.lo, False, "wf")
        start, end = fold_window(task)
        at = trade_start(_config(calendar, start, end), panel)
        assert at is not None
        first = int(np.searchsorted(times, np.datetime64(at.replace(tzinfo=None), "ns")))
        out.append((first, fold.train_start if warmup == "train" else fold.test_start))
    return out


@pytest.mark.parametrize("warmup", ["none", "train"])
def test_a_fold_trades_from_its_own_first_bar_on_xasx_bars(warmup):
    """A fold's run.start named its first bar by `bar_label`, a date for a bar at 00:00 UTC
    (11:00 Sydney): read as that session day, the fold traded from 23:00 UTC the evening
    before, a bar early (with warmup = "none", the training window's last bar)."""
    got = _fold_trades_from(_xasx()[:120], "XASX", warmup)
    assert [first for first, _ in got] == [want for _, want in got]


def test_a_fold_of_daily_bars_names_its_bars_by_date():
    """Guard: daily folds trade from their first bar, named by its date as before."""
    from tradingd.analysis.walkforward_folds import run_label

    daily = pd.bdate_range("2024-01-01", periods=60).to_numpy(dtype="datetime64[ns]")
    got = _fold_trades_from(daily, "XNYS", "none")
    assert [first for first, _ in got] == [want for _, want in got]
    assert run_label(daily[0], True) == "2024-01-01"
