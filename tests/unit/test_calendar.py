"""The exchange calendar on real dates: holidays, half days, DST, weekends, intraday bars."""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import pytest

from tradingd.clock.calendar import (
    INTERVALS,
    CalendarRangeError,
    ExchangeCalendar,
    validate_calendar,
)
from tradingd.core.errors import ConfigError

NY = ZoneInfo("America/New_York")


def d(y: int, m: int, day: int) -> datetime:
    """A daily bar label: the session date at 00:00 UTC."""
    return datetime(y, m, day, tzinfo=UTC)


def u(y: int, m: int, day: int, hh: int, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    return datetime(y, m, day, hh, mm, ss, us, tzinfo=UTC)


@pytest.fixture(scope="module")
def daily() -> ExchangeCalendar:
    return ExchangeCalendar("XNYS", "1d")


@pytest.fixture(scope="module")
def cal() -> dict[str, ExchangeCalendar]:
    return {name: ExchangeCalendar("XNYS", name) for name in INTERVALS}


# -- daily bars ----------------------------------------------------------------------------


def test_thanksgiving_is_closed_and_the_day_after_closes_at_13_new_york(daily):
    assert daily.bars_between(d(2024, 11, 25), d(2024, 12, 2)) == [
        d(2024, 11, 25),
        d(2024, 11, 26),
        d(2024, 11, 27),
        d(2024, 11, 29),
        d(2024, 12, 2),
    ]
    assert not daily.is_session(date(2024, 11, 28))
    assert daily.is_session(date(2024, 11, 29))
    assert daily.close_of(d(2024, 11, 27)) == u(2024, 11, 27, 21)
    assert daily.close_of(d(2024, 11, 29)) == u(2024, 11, 29, 18)  # 13:00 EST
    assert daily.close_of(d(2024, 11, 29)).astimezone(NY).hour == 13


def test_christmas_eve_half_day_and_christmas_closed(daily):
    assert daily.bars_between(d(2024, 12, 23), d(2024, 12, 27)) == [
        d(2024, 12, 23),
        d(2024, 12, 24),
        d(2024, 12, 26),
        d(2024, 12, 27),
    ]
    assert not daily.is_session(d(2024, 12, 25))
    assert daily.close_of(d(2024, 12, 24)) == u(2024, 12, 24, 18)
    # The next close after Christmas Eve's is the 26th's full day.
    assert daily.next_close(u(2024, 12, 24, 18)) == (d(2024, 12, 26), u(2024, 12, 26, 21))


def test_good_friday_is_closed(daily):
    assert not daily.is_session(date(2024, 3, 29))
    assert daily.bars_between(d(2024, 3, 27), d(2024, 4, 1)) == [
        d(2024, 3, 27),
        d(2024, 3, 28),
        d(2024, 4, 1),
    ]
    assert daily.last_closed(u(2024, 3, 29, 22)) == d(2024, 3, 28)


def test_an_unscheduled_closure_comes_from_the_package():
    # The national day of mourning for President Carter: no rule would list it.
    assert not ExchangeCalendar().is_session(date(2025, 1, 9))


def test_close_moves_with_daylight_saving(daily):
    # Spring forward on Sunday 2024-03-10: 16:00 New York is 21:00 UTC before, 20:00 after.
    assert daily.close_of(d(2024, 3, 8)) == u(2024, 3, 8, 21)
    assert daily.close_of(d(2024, 3, 11)) == u(2024, 3, 11, 20)
    assert daily.next_close(u(2024, 3, 8, 20, 59, 59)) == (d(2024, 3, 8), u(2024, 3, 8, 21))
    assert daily.next_close(u(2024, 3, 8, 21)) == (d(2024, 3, 11), u(2024, 3, 11, 20))
    # Fall back on Sunday 2024-11-03.
    assert daily.close_of(d(2024, 11, 1)) == u(2024, 11, 1, 20)
    assert daily.close_of(d(2024, 11, 4)) == u(2024, 11, 4, 21)
    assert daily.last_closed(u(2024, 11, 4, 20, 30)) == d(2024, 11, 1)
    assert daily.last_closed(u(2024, 11, 4, 21)) == d(2024, 11, 4)


def test_weekend(daily):
    assert daily.bars_between(d(2024, 11, 30), d(2024, 12, 1)) == []
    assert not daily.is_session(date(2024, 11, 30))
    assert not daily.is_session(date(2024, 12, 1))
    assert daily.last_closed(u(2024, 12, 1, 12)) == d(2024, 11, 29)
    assert daily.next_close(u(2024, 11, 30, 12)) == (d(2024, 12, 2), u(2024, 12, 2, 21))


def test_last_closed_at_the_exact_close(daily):
    assert daily.last_closed(u(2024, 11, 29, 18)) == d(2024, 11, 29)
    assert daily.last_closed(u(2024, 11, 29, 17, 59, 59, 999_999)) == d(2024, 11, 27)
    assert daily.next_close(u(2024, 11, 29, 17, 59, 59)) == (d(2024, 11, 29), u(2024, 11, 29, 18))


def test_bars_between_is_inclusive_and_empty_when_reversed(daily):
    assert daily.bars_between(d(2024, 11, 27), d(2024, 11, 27)) == [d(2024, 11, 27)]
    assert daily.bars_between(d(2024, 11, 29), d(2024, 11, 27)) == []


def test_missing_and_unexpected(daily):
    have = [d(2024, 11, 25), d(2024, 11, 26), d(2024, 11, 28), d(2024, 11, 29)]
    assert daily.missing(have, d(2024, 11, 25), d(2024, 12, 2)) == [d(2024, 11, 27), d(2024, 12, 2)]
    assert daily.unexpected(have, d(2024, 11, 25), d(2024, 12, 2)) == [d(2024, 11, 28)]
    assert daily.missing([], d(2024, 11, 30), d(2024, 12, 1)) == []


def test_closed_between_and_closed_after(daily):
    # Closes in (Wed 21:00, Mon 21:00]: Friday's half day and Monday.
    assert daily.closed_between(u(2024, 11, 27, 21), u(2024, 12, 2, 21)) == [
        d(2024, 11, 29),
        d(2024, 12, 2),
    ]
    assert daily.closed_after(d(2024, 11, 27), u(2024, 12, 2, 20, 59)) == [d(2024, 11, 29)]
    # A label the calendar does not know (Thanksgiving) is still a valid lower bound.
    assert daily.closed_after(d(2024, 11, 28), d(2024, 12, 3)) == [d(2024, 11, 29), d(2024, 12, 2)]


def test_labels_that_are_no_bar_are_rejected(daily):
    with pytest.raises(ValueError, match="not a session"):
        daily.close_of(d(2024, 11, 28))
    with pytest.raises(ValueError, match="not a session"):
        daily.close_of(u(2024, 11, 29, 14, 30))
    with pytest.raises(ValueError, match="not a session label"):
        daily.is_session(u(2024, 11, 29, 5))


def test_naive_datetimes_are_rejected(daily):
    with pytest.raises(ValueError, match="naive"):
        daily.last_closed(datetime(2024, 11, 29, 18))


def test_invalid_interval_and_calendar_name_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"valid intervals: 1d, 1m, 5m, 15m, 30m, 60m"):
        ExchangeCalendar("XNYS", "1h")
    with pytest.raises(ConfigError, match=r"unknown; valid names: .*XNYS"):
        ExchangeCalendar("NYSEE", "1d")
    with pytest.raises(ConfigError, match="valid intervals"):
        validate_calendar("XNYS", "2m")
    validate_calendar("XNYS", "60m")


def test_outside_the_package_range_is_an_error():
    small = ExchangeCalendar("XNYS", "1d", start="2024-01-02", end="2024-12-31")
    assert (small.first_session, small.last_session) == (date(2024, 1, 2), date(2024, 12, 31))
    with pytest.raises(CalendarRangeError, match="outside"):
        small.bars_between(d(2023, 12, 1), d(2024, 1, 5))
    with pytest.raises(CalendarRangeError, match="outside"):
        small.is_session(date(2025, 1, 2))
    with pytest.raises(CalendarRangeError):
        small.last_closed(u(2025, 1, 2, 22))
    with pytest.raises(CalendarRangeError):
        small.next_close(u(2024, 12, 31, 21))  # the last close of the range
    assert small.next_close(u(2024, 12, 31, 20)) == (d(2024, 12, 31), u(2024, 12, 31, 21))
    # In the first session before its close nothing of the range has closed yet.
    assert small.last_closed(u(2024, 1, 2, 15)) is None
    with pytest.raises(CalendarRangeError):
        ExchangeCalendar().bars_between(d(1990, 1, 2), d(1990, 1, 5))


# exchange_calendars records these exchanges' holidays in a table that ends with a year
# (`bound_max`: 2026-12-31 in 4.13): the calendar cannot be built past it.
BOUNDED = ["XSES", "XSHG", "XBOM"]


def _bounded(name: str) -> tuple[ExchangeCalendar, date]:
    """The package's default calendar of `name` and its end (`bound_max`, from the package)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bound = xcals.get_calendar(name).bound_max()
    if bound is None:
        pytest.skip(f"the installed exchange_calendars has no end for {name}")
    return ExchangeCalendar(name, "1d"), bound.date()


@pytest.mark.parametrize("name", BOUNDED)
def test_a_calendar_extends_only_as_far_as_the_package_records_its_holidays(name):
    """A year ahead is past the package's table for these exchanges: extend() raised
    ConfigError ("holidays are only recorded to the year 2026"), and the live clock (which
    extends a month before the end) failed at every start and heartbeat from then on."""
    cal, bound = _bounded(name)
    assert cal.last_session <= bound
    assert cal.extend(bound + timedelta(days=366)) is False  # as far as it goes already
    assert cal.last_session <= bound < cal.last_session + timedelta(days=7)
    assert cal.bound_max == bound
    # The questions a daemon asks inside it are answered.
    ten_days_before = datetime.combine(bound - timedelta(days=10), datetime.min.time(), UTC)
    assert cal.last_closed(ten_days_before) is not None


@pytest.mark.parametrize("name", BOUNDED)
def test_past_the_packages_end_the_error_says_to_upgrade_exchange_calendars(name):
    cal, _ = _bounded(name)
    last_close = cal.coverage[1]
    with pytest.raises(CalendarRangeError, match="upgrade exchange-calendars"):
        cal.next_close(last_close)
    with pytest.raises(CalendarRangeError, match="upgrade exchange-calendars"):
        cal.next_open(last_close)
    with pytest.raises(CalendarRangeError, match="upgrade exchange-calendars"):
        cal.last_closed(last_close + timedelta(days=3))
    # A calendar built with an end of the caller's is the caller's to build longer.
    short = ExchangeCalendar("XNYS", "1d", start="2024-01-02", end="2024-12-31")
    assert short.bound_max is None
    with pytest.raises(CalendarRangeError, match="later end"):
        short.next_close(short.coverage[1])


# -- intraday bars -------------------------------------------------------------------------

# (interval, bars on a regular day, bars on the 2024-11-29 half day)
COUNTS = [("1m", 390, 210), ("5m", 78, 42), ("15m", 26, 14), ("30m", 13, 7), ("60m", 7, 4)]


@pytest.mark.parametrize(("interval", "regular", "half"), COUNTS)
def test_intraday_bar_counts_and_session_edges(cal, interval, regular, half):
    c = cal[interval]
    wed = c.bars_between(d(2024, 11, 27), u(2024, 11, 27, 23, 59))
    fri = c.bars_between(d(2024, 11, 29), u(2024, 11, 29, 23, 59))
    assert (len(wed), len(fri)) == (regular, half)
    assert wed[0] == u(2024, 11, 27, 14, 30)  # 09:30 EST
    assert fri[0] == u(2024, 11, 29, 14, 30)
    assert c.close_of(wed[-1]) == u(2024, 11, 27, 21)  # 16:00 EST
    assert c.close_of(fri[-1]) == u(2024, 11, 29, 18)  # 13:00 EST
    assert c.bars_between(d(2024, 11, 28), u(2024, 11, 28, 23, 59)) == []  # Thanksgiving
    summer = c.bars_between(d(2024, 7, 1), u(2024, 7, 1, 23, 59))
    assert summer[0] == u(2024, 7, 1, 13, 30)  # 09:30 EDT
    assert c.close_of(summer[-1]) == u(2024, 7, 1, 20)


def test_60m_bars_are_open_aligned_and_the_last_is_cut_at_the_close(cal):
    c = cal["60m"]
    wed = c.bars_between(d(2024, 11, 27), u(2024, 11, 27, 23))
    assert wed == [u(2024, 11, 27, h, 30) for h in range(14, 21)]
    assert [c.close_of(t) for t in wed] == [u(2024, 11, 27, h, 30) for h in range(15, 21)] + [
        u(2024, 11, 27, 21)
    ]
    fri = c.bars_between(d(2024, 11, 29), u(2024, 11, 29, 23))
    assert fri == [u(2024, 11, 29, h, 30) for h in (14, 15, 16, 17)]
    assert c.close_of(fri[-1]) == u(2024, 11, 29, 18)  # 12:30-13:00 New York


def test_intraday_last_closed_and_next_close(cal):
    five, hour = cal["5m"], cal["60m"]
    # Friday before the first 5m bar closes: the newest closed bar is Wednesday's last one.
    assert five.last_closed(u(2024, 11, 29, 14, 34, 59)) == u(2024, 11, 27, 20, 55)
    assert five.next_close(u(2024, 11, 29, 14, 34, 59)) == (
        u(2024, 11, 29, 14, 30),
        u(2024, 11, 29, 14, 35),
    )
    assert five.last_closed(u(2024, 11, 29, 14, 35)) == u(2024, 11, 29, 14, 30)
    assert five.next_close(u(2024, 11, 29, 12)) == (
        u(2024, 11, 29, 14, 30),
        u(2024, 11, 29, 14, 35),
    )
    # The truncated last hourly bar.
    assert hour.last_closed(u(2024, 11, 27, 20, 45)) == u(2024, 11, 27, 19, 30)
    assert hour.next_close(u(2024, 11, 27, 20, 45)) == (
        u(2024, 11, 27, 20, 30),
        u(2024, 11, 27, 21),
    )
    # After Friday's half day: Monday's first hour.
    assert hour.last_closed(u(2024, 11, 29, 18)) == u(2024, 11, 29, 17, 30)
    assert hour.next_close(u(2024, 11, 29, 18)) == (u(2024, 12, 2, 14, 30), u(2024, 12, 2, 15, 30))


def test_intraday_across_the_spring_dst_weekend(cal):
    hour = cal["60m"]
    assert hour.closed_between(u(2024, 3, 8, 20, 30), u(2024, 3, 11, 15, 30)) == [
        u(2024, 3, 8, 20, 30),  # 15:30 EST, closes 21:00 UTC
        u(2024, 3, 11, 13, 30),  # 09:30 EDT
        u(2024, 3, 11, 14, 30),
    ]
    assert hour.close_of(u(2024, 3, 8, 20, 30)) == u(2024, 3, 8, 21)
    assert hour.close_of(u(2024, 3, 11, 19, 30)) == u(2024, 3, 11, 20)


def test_intraday_labels_that_are_no_bar_are_rejected(cal):
    five = cal["5m"]
    for bad in (u(2024, 11, 29, 14, 31), u(2024, 11, 29, 18), u(2024, 11, 28, 15), d(2024, 11, 29)):
        with pytest.raises(ValueError, match="not a 5m bar"):
            five.close_of(bad)


def test_intraday_missing(cal):
    c = cal["30m"]
    have = [u(2024, 11, 29, 14, 30), u(2024, 11, 29, 15, 30), u(2024, 11, 29, 17, 30)]
    assert c.missing(have, u(2024, 11, 29, 14, 30), u(2024, 11, 29, 17, 30)) == [
        u(2024, 11, 29, 15),
        u(2024, 11, 29, 16),
        u(2024, 11, 29, 16, 30),
        u(2024, 11, 29, 17),
    ]


def test_lunch_break_splits_the_session():
    # Tokyo: 09:00-11:30 and 12:30-15:30 JST (00:00-02:30 and 03:30-06:30 UTC) since 2024-11-05.
    tokyo = ExchangeCalendar("XTKS", "60m")
    bars = tokyo.bars_between(d(2024, 11, 29), u(2024, 11, 29, 23))
    assert bars == [
        u(2024, 11, 29, 0),
        u(2024, 11, 29, 1),
        u(2024, 11, 29, 2),
        u(2024, 11, 29, 3, 30),
        u(2024, 11, 29, 4, 30),
        u(2024, 11, 29, 5, 30),
    ]
    assert tokyo.close_of(u(2024, 11, 29, 2)) == u(2024, 11, 29, 2, 30)  # cut at the break
    assert tokyo.last_closed(u(2024, 11, 29, 3)) == u(2024, 11, 29, 2)
    assert tokyo.next_close(u(2024, 11, 29, 3)) == (u(2024, 11, 29, 3, 30), u(2024, 11, 29, 4, 30))
    assert ExchangeCalendar("XTKS", "1d").close_of(d(2024, 11, 29)) == u(2024, 11, 29, 6, 30)


def test_outside_sessions_names_why_a_bar_is_no_bar_of_the_live_clock(cal):
    """A replay keeps only the bars the live clock releases (app.session_bars_only): each
    other label is named by its kind, whatever the bar length."""
    labels = [
        (u(2015, 11, 25, 13, 0), "before_open"),  # 08:00 EST
        (u(2015, 11, 25, 14, 30), ""),  # 09:30, the first bar
        (u(2015, 11, 25, 20, 59), ""),  # 15:59, the last one
        (u(2015, 11, 25, 21, 0), "after_close"),  # 16:00
        (u(2015, 11, 25, 22, 59), "after_close"),
        (u(2015, 11, 26, 15, 0), "non_session_day"),  # Thanksgiving
        (u(2015, 11, 27, 17, 59), ""),  # 12:59 on the half day
        (u(2015, 11, 27, 18, 0), "half_day_close"),  # 13:00: closed
        (u(2015, 11, 27, 20, 30), "half_day_close"),
        (u(2015, 11, 28, 15, 0), "non_session_day"),  # Saturday
        (u(2015, 11, 30, 0, 30), "non_session_day"),  # 19:30 EST on Sunday the 29th
    ]
    times = np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t, _ in labels])
    for interval in ("1m", "5m", "60m"):
        assert list(cal[interval].outside_sessions(times)) == [w for _, w in labels]
    summer = np.array(["2015-07-01T13:29", "2015-07-01T13:30", "2015-07-01T20:00"], "M8[ns]")
    assert list(cal["1m"].outside_sessions(summer)) == ["before_open", "", "after_close"]
    assert list(cal["1d"].outside_sessions(times)) == [""] * len(labels)  # daily: not asked
    tokyo = ExchangeCalendar("XTKS", "1m")
    lunch = np.array(["2024-11-29T02:30", "2024-11-29T03:29", "2024-11-29T03:30"], "M8[ns]")
    assert list(tokyo.outside_sessions(lunch)) == ["lunch_break", "lunch_break", ""]


def test_bars_per_session_is_a_current_regular_session_of_the_calendar(cal):
    assert {i: cal[i].bars_per_session() for i in INTERVALS} == {
        "1d": 1, "1m": 390, "5m": 78, "15m": 26, "30m": 13, "60m": 7
    }  # fmt: skip
    # Tokyo: 150 + 180 minutes since its close moved to 15:30 (300 before); round the clock.
    assert ExchangeCalendar("XTKS", "1m").bars_per_session() == 330
    assert ExchangeCalendar("24/7", "5m").bars_per_session() == 288


def test_sessions_per_year_is_the_calendars_own_count():
    """Annualised figures counted 252 sessions a year on every exchange: Tokyo trades about
    244. The count is the calendar's, a mean over full years (Tokyo's 2022-2024: 244, 246,
    245 sessions, counted here with exchange_calendars directly)."""
    import exchange_calendars as xcals

    def counted(name: str, years: range) -> float:
        with warnings.catch_warnings():  # the package's own pandas deprecation (calendar.py)
            warnings.simplefilter("ignore")
            sessions = xcals.get_calendar(name, start=f"{years[0]}-01-01", end=f"{years[-1]}-12-31")
        return float(np.mean([sum(s.year == y for s in sessions.sessions) for y in years]))

    tokyo = ExchangeCalendar("XTKS", "1d")
    assert tokyo.sessions_per_year(years=3, before=2025) == counted("XTKS", range(2022, 2025))
    assert tokyo.sessions_per_year(years=3, before=2025) == 245.0
    assert ExchangeCalendar("XNYS", "1d").sessions_per_year(years=1, before=2025) == 252.0
    assert 240 < tokyo.sessions_per_year() < 248  # the last ten years by default
    # A calendar built for part of a year holds no full year to count: said, not guessed.
    short = ExchangeCalendar("XTKS", "1d", start="2024-03-01", end="2024-09-30")
    with pytest.raises(CalendarRangeError, match="no full calendar year"):
        short.sessions_per_year(before=2025)


def test_a_calendars_sessions_a_year_do_not_follow_todays_date(monkeypatch):
    """The count was of the ten full years before today, so the same backtest rerun in a
    later year annualised (and kelly_garch sized) differently. It is of fixed years
    (`SESSIONS_COUNTED_IN`), whatever the date."""
    import datetime as dt

    import exchange_calendars as xcals

    from tradingd import app
    from tradingd.clock import calendar as calendar_module

    first, last = app.SESSIONS_COUNTED_IN
    with warnings.catch_warnings():  # the package's own pandas deprecation (calendar.py)
        warnings.simplefilter("ignore")
        sessions = xcals.get_calendar("XTKS", start=f"{first}-01-01", end=f"{last}-12-31")
    years = [s.year for s in sessions.sessions]
    expected = round(np.mean([years.count(y) for y in range(first, last + 1)]))

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return dt.datetime(2034, 6, 1, tzinfo=tz)

    counts = []
    for when in (dt.datetime, Later):
        monkeypatch.setattr(calendar_module, "datetime", when)
        app.sessions_per_year.cache_clear()
        counts.append(app.sessions_per_year("XTKS"))
    app.sessions_per_year.cache_clear()
    assert counts == [expected, expected]


def test_grid_offsets_measure_a_label_from_its_segments_start():
    """The live clock's bars start at the open and again at a lunch break's end: a label's
    offset from that grid is what tells hour-aligned data (10:00 New York, 30 minutes past
    the 09:30 bar) from the live clock's bars."""
    from datetime import timedelta

    hour = timedelta(hours=1)
    ny = ExchangeCalendar("XNYS", "1m")
    labels = np.array(
        ["2024-01-02T14:30", "2024-01-02T15:00", "2024-01-02T20:30", "2024-01-02T14:00"],
        "M8[ns]",
    )  # 09:30, 10:00, 15:30 New York; 09:00 is before the open
    half = 30 * 60 * 10**9
    assert list(ny.grid_offsets(labels, hour)) == [0, half, 0, -1]
    tokyo = ExchangeCalendar("XTKS", "1m")
    # 11:00 (morning from 09:00), 12:30 (the afternoon's start), 13:00, 11:45 (lunch)
    jst = np.array(
        ["2024-11-29T02:00", "2024-11-29T03:30", "2024-11-29T04:00", "2024-11-29T02:45"],
        "M8[ns]",
    )
    assert list(tokyo.grid_offsets(jst, hour)) == [0, 0, half, -1]


def test_a_calendars_zone_is_its_own_and_an_unknown_name_is_refused():
    from zoneinfo import ZoneInfo

    from tradingd.clock.calendar import calendar_zone
    from tradingd.core.errors import ConfigError

    assert calendar_zone("XTKS") == ZoneInfo("Asia/Tokyo")
    assert calendar_zone("JPX") == ZoneInfo("Asia/Tokyo")  # an alias
    assert calendar_zone("24/7") == ZoneInfo("UTC")
    with pytest.raises(ConfigError, match="exchange calendar 'NOPE' is unknown"):
        calendar_zone("NOPE")
