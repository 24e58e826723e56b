"""`last_closed_label` against the exchange calendar: every intraday interval, DST changes,
half days, before the open and after the close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tradingd.clock.calendar import ExchangeCalendar
from tradingd.feeds.vendor import Session, bar_close, last_closed_label, parse_interval

# Fridays and Mondays around both 2024 clock changes, half days (13:00 close), a holiday.
DAYS = ["2024-03-08", "2024-03-11", "2024-11-01", "2024-11-04", "2024-07-03", "2024-11-29",
        "2024-12-24", "2024-12-25"]  # fmt: skip
HALF_DAYS = {"2024-07-03", "2024-11-29", "2024-12-24"}


def instants(day: str):
    """Every 5 minutes (and a few seconds past) from 13:00 to 23:55 UTC of `day`."""
    d0 = datetime.fromisoformat(day).replace(tzinfo=UTC)
    for m in range(13 * 60, 24 * 60, 5):
        yield d0 + timedelta(minutes=m, seconds=m % 7)


@pytest.fixture(scope="module")
def daily() -> ExchangeCalendar:
    return ExchangeCalendar("XNYS", "1d", start="2024-01-01", end="2025-12-31")


@pytest.mark.parametrize("interval", ["5m", "30m", "60m"])
@pytest.mark.parametrize("day", DAYS)
def test_intraday_is_the_calendars_newest_closed_bar(interval, day, daily):
    """With the calendar: exactly its newest closed bar, until the clock's grid (a vendor's
    extended hours) passes the session's close; never a bar still open."""
    iv = parse_interval(interval)
    calendar = ExchangeCalendar("XNYS", interval, start="2024-01-01", end="2025-12-31")
    session = Session(calendar=daily)
    for now in instants(day):
        got = last_closed_label(now, iv, session)
        want = calendar.last_closed(now)
        assert want is not None
        assert bar_close(got, iv, session) <= now, now
        if got != want:  # only a label after the session's close, with no bar in between
            assert got >= session.close_of(want.date()), (now, got, want)
            assert calendar.bars_between(want + timedelta(seconds=1), got) == [], now


@pytest.mark.parametrize("interval", ["5m", "30m", "60m"])
@pytest.mark.parametrize("day", sorted(set(DAYS) - HALF_DAYS))
def test_intraday_without_a_calendar_is_on_the_open_grid(interval, day):
    """A session without a calendar (the collector's clients): the same on a regular day."""
    iv = parse_interval(interval)
    calendar = ExchangeCalendar("XNYS", interval, start="2024-01-01", end="2025-12-31")
    for now in instants(day):
        got = last_closed_label(now, iv, Session())
        want = calendar.last_closed(now)
        assert want is not None
        assert got == want or got >= Session().close_of(want.date()), (now, got, want)


@pytest.mark.parametrize(
    ("now", "want"),
    [
        ("2024-03-12T20:05:00", "2024-03-12T19:30:00"),  # 16:05 EDT: the 15:30 hour
        ("2024-03-12T15:40:00", "2024-03-12T14:30:00"),  # 11:40 EDT: the 10:30 hour
        # 09:45 EDT, the first hour still open: no regular bar after yesterday's 15:30; the
        # clock's grid (a vendor's extended hours) goes to the 08:00 pre-market hour.
        ("2024-03-12T13:45:00", "2024-03-12T12:00:00"),
        ("2024-11-29T18:05:00", "2024-11-29T17:30:00"),  # half day: 12:30 closed at 13:00
        ("2024-11-29T17:59:00", "2024-11-29T16:30:00"),  # half day: 12:30 still open
        ("2024-03-08T21:00:00", "2024-03-08T20:30:00"),  # 16:00 EST sharp
    ],
)
def test_hourly_examples(now, want, daily):
    at = datetime.fromisoformat(now).replace(tzinfo=UTC)
    got = last_closed_label(at, parse_interval("60m"), Session(calendar=daily))
    assert got == datetime.fromisoformat(want).replace(tzinfo=UTC)


def test_daily_unchanged(daily):
    at = datetime(2024, 11, 29, 18, 5, tzinfo=UTC)  # after the half day's 13:00 close
    got = last_closed_label(at, parse_interval("1d"), Session(calendar=daily))
    assert got == datetime(2024, 11, 29, tzinfo=UTC)
    assert last_closed_label(at, parse_interval("1d"), Session()) == datetime(
        2024, 11, 28, tzinfo=UTC
    )
