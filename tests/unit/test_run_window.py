"""run.start / run.end of intraday bars name session days of the run's exchange calendar
(`app.run_bound`, which the load, trade_start and an accelerated replay read alike): the
bars between the two bounds are those the live clock dates on those days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tradingd.app import run_bound
from tradingd.clock.calendar import (
    ExchangeCalendar,
    calendar_zone,
    evening_session_start,
    session_date,
)


@pytest.mark.parametrize("name", ["XASX", "XTKS", "XNZE", "XNYS", "CMES", "24/7"])
def test_a_date_bounds_the_bars_of_its_session_day(name):
    """Monday 4 .. Tuesday 5 March 2024: the bars from the start bound through the end bound
    are the bars the clock dates on those two days (`session_date`, with CME's sessions
    opening 17:00 Chicago the evening before), whatever data.timezone says."""
    cal = ExchangeCalendar(name, "60m", start="2024-02-20", end="2024-03-15")
    wide = cal.bars_between(datetime(2024, 2, 28, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC))
    zone, evening = calendar_zone(name), evening_session_start(name)
    on_days = [
        t for t in wide if str(session_date(t, zone, evening)) in ("2024-03-04", "2024-03-05")
    ]
    for data_timezone in ("America/New_York", "UTC"):
        lo = run_bound(
            "2024-03-04", end=False, daily=False, calendar=name, data_timezone=data_timezone
        )
        hi = run_bound(
            "2024-03-05", end=True, daily=False, calendar=name, data_timezone=data_timezone
        )
        assert [t for t in wide if lo <= t <= hi] == on_days, (name, data_timezone)


def test_a_time_is_the_exchanges_wall_time_and_an_offset_an_instant():
    """A time without an offset is the exchange's (10:00 Sydney: 23:00 UTC the day before in
    summer time); one with an offset is that instant. Daily bars keep their UTC labels."""
    assert run_bound("2024-03-04T10:00", end=False, daily=False, calendar="XASX") == datetime(
        2024, 3, 3, 23, tzinfo=UTC
    )
    at = "2024-03-04T10:00:00+00:00"
    assert run_bound(at, end=False, daily=False, calendar="XASX") == datetime(
        2024, 3, 4, 10, tzinfo=UTC
    )
    assert run_bound("2024-03-04", end=False, daily=True, calendar="XASX") == datetime(
        2024, 3, 4, tzinfo=UTC
    )
    end = run_bound("2024-03-04", end=True, daily=True, calendar="XASX")
    assert end == datetime(2024, 3, 5, tzinfo=UTC) - timedelta(microseconds=1)


def test_the_load_ends_with_run_ends_session_where_sessions_open_the_evening_before():
    """CME's session of 5 March opens 17:00 Chicago on the 4th and closes 16:00 on the 5th:
    run.end = 2024-03-05 loads its bars and not those from 17:00 on the 5th (the 6th's
    session), which a Chicago calendar day held."""
    import pandas as pd

    from tradingd.app import calendar_evening_start
    from tradingd.feeds.validate import validate_frame

    local = pd.date_range("2024-03-05 12:00", "2024-03-05 20:00", freq="h", tz="America/Chicago")
    times = local.tz_convert("UTC")
    df = pd.DataFrame(
        {"time": times, "open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0, "volume": 1.0}
    )
    kept = validate_frame(
        df,
        source="cme",
        symbol="ES",
        end="2024-03-05",
        timezone="America/New_York",
        session_timezone="America/Chicago",
        session_evening_start=calendar_evening_start("CMES"),
        corporate_actions=False,
    )
    hours = pd.DatetimeIndex(kept["time"]).tz_localize("UTC").tz_convert("America/Chicago").hour
    assert list(hours) == [12, 13, 14, 15, 16]


def test_frames_passed_to_the_api_end_with_the_end_dates_session():
    """`panel_from_frames(end=...)` reads `end` as `load_data` reads run.end: XASX bars of the
    session after 6 March (23:00 UTC on the 6th, the 6th in New York) are not kept."""
    import dataclasses

    import pandas as pd

    from tradingd.config import Config, LiveConfig
    from tradingd.strategy_api import panel_from_frames

    local = [f"2024-03-{day} {hour}:00" for day in ("06", "07") for hour in (10, 15)]
    times = pd.DatetimeIndex(local).tz_localize("Australia/Sydney").tz_convert("UTC")
    frame = pd.DataFrame(
        {"open": 10.0, "high": 10.0, "low": 10.0, "close": 10.0, "volume": 1.0}, index=times
    )
    config = dataclasses.replace(Config(), live=LiveConfig(calendar="XASX", bar="60m"))
    panel = panel_from_frames({"BHP": frame}, config, end="2024-03-06")
    assert list(panel.datetimes()) == list(times[:2].to_pydatetime())
