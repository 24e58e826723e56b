"""run.start / run.end of an intraday backtest are session days of live.calendar, for the
load and for trading alike: an XASX session opens at 23:00 UTC the evening before its date
(10:00 Sydney, summer time). The load read the dates in data.timezone and trading as UTC
days, so that session's first bars were loaded but only warmed up on, and with the default
data.timezone (New York) the session after run.end's was loaded and traded."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from tradingd.backtest import run_backtest
from tradingd.feeds.panel import Panel

# Three XASX weeks of 60-minute bars: six a session, 10:00 .. 15:00 Sydney (AEDT, UTC+11).
FIRST_WEEK = "2024-02-26"
MONDAY, WEDNESDAY = "2024-03-04", "2024-03-06"
# Monday 4 March's first bar, 10:00 Sydney; Wednesday 6 March's last, 15:00 Sydney.
MONDAY_OPEN = datetime(2024, 3, 3, 23, tzinfo=UTC)
WEDNESDAY_LAST = datetime(2024, 3, 6, 4, tzinfo=UTC)


def _sessions(zone: str, days: pd.DatetimeIndex, hours: list[float]) -> np.ndarray:
    """Bar labels (naive UTC) at local `hours` of each of `days` in `zone`."""
    labels = [
        (day + pd.Timedelta(hours=h)).tz_localize(zone).tz_convert("UTC").tz_localize(None)
        for day in days
        for h in hours
    ]
    return pd.DatetimeIndex(labels).to_numpy(dtype="datetime64[ns]")


def _walk(times: np.ndarray, n_symbols: int = 3) -> Panel:
    rng = np.random.default_rng(5)
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


def _csv(panel: Panel, path) -> None:  # type: ignore[no-untyped-def]
    """A long CSV of `panel`, its times written in UTC (`...Z`): data.timezone then reads
    nothing of them, only the run's dates."""
    rows = [
        {"symbol": sym, "time": t.strftime("%Y-%m-%dT%H:%M:%SZ")}
        | {f: float(getattr(panel, f)[i, j]) for f in ("open", "high", "low", "close", "volume")}
        for j, sym in enumerate(panel.symbols)
        for i, t in enumerate(panel.datetimes())
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def _config(engine_config, path, *, calendar: str, bar: str, start: str, end: str, tz: str):  # type: ignore[no-untyped-def]
    return dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, start=start, end=end, run_id="window"),
        data=dataclasses.replace(
            engine_config.data, source="csv", path=str(path), layout="long", timezone=tz
        ),
        live=dataclasses.replace(engine_config.live, calendar=calendar, bar=bar),
        cache=dataclasses.replace(engine_config.cache, data=False, features=False),
    )


@pytest.mark.parametrize("tz", ["America/New_York", "Australia/Sydney", "UTC"])
async def test_an_xasx_backtest_trades_run_starts_session_through_run_ends(
    engine_config, tmp_path, tz
):
    """Whatever data.timezone: Monday's session is traded from its first bar (23:00 UTC on
    Sunday), and Wednesday's last bar is the run's last, Thursday's first (23:00 UTC on
    Wednesday, a Wednesday in New York) not loaded."""
    days = pd.bdate_range(FIRST_WEEK, "2024-03-15")
    times = _sessions("Australia/Sydney", days, [10, 11, 12, 13, 14, 15])
    _csv(_walk(times), tmp_path / "xasx.csv")
    config = _config(
        engine_config,
        tmp_path / "xasx.csv",
        calendar="XASX",
        bar="60m",
        start=MONDAY,
        end=WEDNESDAY,
        tz=tz,
    )
    outcome = await run_backtest(config, output_dir=tmp_path / "out")
    result = outcome.result
    traded = [t.astimezone(UTC) for t in result.times]  # the bars after the warm-up
    # The week before Monday warms up (5 sessions of 6 bars); Monday .. Wednesday trade.
    assert result.warmup_bars == 5 * 6
    assert traded[0] == MONDAY_OPEN
    assert traded[-1] == WEDNESDAY_LAST
    assert len(traded) == outcome.summary["bars"] == 3 * 6


@pytest.mark.parametrize("bar", ["5m", "1d"])
async def test_xnys_runs_step_the_same_bars_as_before(engine_config, tmp_path, bar):
    """New York sessions lie inside one UTC day: an XNYS run's window is what it was, in bars
    warmed up on and traded (counted here from the sessions written, not from the code)."""
    if bar == "1d":
        days = pd.bdate_range("2024-02-01", "2024-03-14")
        per_session = 1
        panel = _walk(days.to_numpy(dtype="datetime64[ns]"))
    else:
        days = pd.bdate_range("2024-01-08", "2024-01-12")  # no holiday
        per_session = 78
        hours = [9.5 + k * 5 / 60 for k in range(per_session)]
        panel = _walk(_sessions("America/New_York", days, hours))
    _csv(panel, tmp_path / "xnys.csv")
    start, end = days[2], days[-2]  # two sessions of warm-up, one after the end
    config = _config(
        engine_config,
        tmp_path / "xnys.csv",
        calendar="XNYS",
        bar=bar,
        start=f"{start:%Y-%m-%d}",
        end=f"{end:%Y-%m-%d}",
        tz="America/New_York",
    )
    outcome = await run_backtest(config, output_dir=tmp_path / "out")
    assert outcome.result.warmup_bars == 2 * per_session
    traded = len(days[(days >= start) & (days <= end)])
    assert outcome.summary["bars"] == len(outcome.result.times) == traded * per_session
