"""The session an intraday bar belongs to: one function for the live clock's session dates
(`LiveClock.session_day`), the portfolio's day (the day's loss base) and the alert rules'
daily summary, so the three cannot count a bar in different days. Here, not in
`clock.calendar`, so that a backtest's portfolio does not load exchange_calendars."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo

__all__ = ["session_date"]


def session_date(at: datetime, tz: tzinfo, evening_start: time | None) -> date:
    """The date of the session an intraday bar starting `at` belongs to: its date in the
    exchange's zone `tz`, the next day's from `evening_start` on (where sessions open the
    evening before their date: CMES 17:00 Chicago; `clock.calendar.evening_session_start`).
    By the local date alone, one CME session was split across two days at local midnight."""
    local = at.astimezone(tz)
    if evening_start is not None and local.time() >= evening_start:
        return local.date() + timedelta(days=1)
    return local.date()
