"""The exchange's real trading calendar: which bars exist, when each closes, which are due.

Sessions, holidays, half days, lunch breaks, the exchange's time zone and its daylight-saving
changes all come from the maintained `exchange_calendars` package; nothing here lists a
holiday or a close time by hand. Every instant in and out is a timezone-aware UTC `datetime`.

Bar labels (fixed by the project; all stored data are labelled this way):

* daily bars (`"1d"`): the session date at 00:00 UTC, e.g. `datetime(2024, 11, 29, tzinfo=UTC)`
  for the half day after Thanksgiving. The bar closes at the session close (16:00 New York,
  13:00 on half days), i.e. 21:00 UTC in winter, 20:00 UTC in summer, 18:00 UTC on 2024-11-29.
* intraday bars (`"1m"`, `"5m"`, `"15m"`, `"30m"`, `"60m"`): the bar's START in UTC. Bars are
  aligned to the session open (09:30 New York), not to the clock hour, and each runs for the
  interval, except that the last bar of a session (or of a morning before a lunch break) is
  cut short at the close: 60-minute bars on a regular NYSE day are 09:30, 10:30, ..., 15:30 New
  York (seven bars, the last one 30 minutes long, closing at 16:00); on a half day 09:30 ...
  12:30 (four bars, the last closing at 13:00). Bars never span a lunch break: on a calendar
  with one (XTKS) the afternoon's bars start again at the break's end.

  Evidence for the convention: the recorded Yahoo 5m chart in /work/shared/fixtures starts at
  13:30 UTC = 09:30 EDT (start-labelled, open-aligned) and Alpha Vantage's recorded 5min rows
  are start-labelled (the last one of the extended day is 19:55). The fixtures hold no hourly
  bars, so the 60-minute alignment could not be checked there. Yahoo's 60m bars are
  open-aligned (09:30, 10:30, ...) as here. Alpaca's `1Hour` bars are reported to be
  aligned to the clock hour (09:00, 10:00, ... New York) instead; a feed that uses them must
  relabel, or this class needs an "hour-aligned" option. A replay of such data is refused
  (`grid_offsets`, app.session_bars_only): it could not step the live clock's bars. The 1,
  5, 15 and 30 minute intervals divide both the 390-minute regular session and the 210-minute
  half day, so only 60m is affected.

Range: `exchange_calendars` builds a calendar for a window of sessions (by default 20 years
back to one year ahead of the day it was built). An instant or a label outside that window
raises `CalendarRangeError`: the package cannot say which bars exist there, and guessing would
hide a gap or invent one. Some calendars the package builds only to a date (`bound_max`: the
exchanges whose holidays it keeps in a table, XSES, XSHG and XBOM to 2026-12-31 in 4.13): they
extend to it and no further, and past it the error says to upgrade exchange-calendars.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError, TradingdError
from ..core.sessions import session_date

log = structlog.get_logger(__name__)

__all__ = [
    "INTERVALS",
    "CalendarEnded",
    "CalendarRangeError",
    "ExchangeCalendar",
    "calendar_zone",
    "evening_session_start",
    "session_date",
    "validate_calendar",
]

# Bar interval names and their lengths (None: one bar per session).
INTERVALS: dict[str, timedelta | None] = {
    "1d": None,
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "30m": timedelta(minutes=30),
    "60m": timedelta(minutes=60),
}

_PANDAS_DEPRECATION: type[Warning] = getattr(pd.errors, "Pandas4Warning", FutureWarning)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_US = 1_000
_DAY_NS = 86_400 * 1_000_000_000


class CalendarRangeError(TradingdError, ValueError):
    """An instant or a bar lies outside the sessions the calendar package was built for."""


class CalendarEnded(ConfigError):
    """A live start after the last bar of a calendar the installed exchange_calendars ends
    (its `bound_max`) could still trade: nothing is left to run until the package is
    upgraded, which no restart does (EX_CONFIG: `tradingd run` exits 78, not restarted)."""


def _ns(t: datetime, what: str) -> int:
    if not isinstance(t, datetime):
        raise TypeError(f"{what} must be a timezone-aware datetime, got {type(t).__name__}")
    if t.tzinfo is None or t.tzinfo.utcoffset(t) is None:
        raise ValueError(f"{what} = {t!r} is naive: pass a timezone-aware (UTC) datetime")
    return ((t - _EPOCH) // timedelta(microseconds=1)) * _NS_PER_US


def _dt(ns: int | np.integer) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ns) // _NS_PER_US)


def _dts(ns: np.ndarray) -> list[datetime]:
    """UTC datetimes from epoch nanoseconds (tzinfo is `datetime.UTC`)."""
    if len(ns) == 0:
        return []
    return list(pd.DatetimeIndex(ns, tz="UTC").to_pydatetime())


def _asi8(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    idx = pd.DatetimeIndex(values)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.as_unit("ns").asi8.astype(np.int64)


def validate_calendar(name: str, interval: str) -> None:
    """ConfigError unless `name` is an `exchange_calendars` calendar and `interval` a bar
    interval of `INTERVALS`; cheap (builds nothing), for configuration checks."""
    if interval not in INTERVALS:
        raise ConfigError(
            f"bar interval {interval!r} is invalid; valid intervals: {', '.join(INTERVALS)}"
        )
    if name not in xcals.get_calendar_names(include_aliases=True):
        names = ", ".join(sorted(xcals.get_calendar_names(include_aliases=False)))
        raise ConfigError(f"exchange calendar {name!r} is unknown; valid names: {names}")


@functools.cache
def calendar_zone(name: str) -> ZoneInfo:
    """The time zone of exchange calendar `name` (XTKS: Asia/Tokyo, 24/7: UTC): where its
    sessions' dates are counted, as `LiveClock.session_day` counts them. ConfigError for an
    unknown name. `exchange_calendars` caches the calendar it builds (~0.1 s, once)."""
    validate_calendar(name, "1d")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=_PANDAS_DEPRECATION)
            return ZoneInfo(str(xcals.get_calendar(name).tz))
    except (ValueError, xcals.errors.CalendarError) as exc:
        raise ConfigError(f"exchange calendar {name!r} cannot be built: {exc}") from None


def evening_session_start(name: str) -> time | None:
    """Where exchange calendar `name`'s sessions open the evening before their date (CMES:
    17:00 Chicago), that local time: a bar from it on belongs to the next day's session.
    None where sessions open on their own date (XNYS, XTKS)."""
    validate_calendar(name, "1d")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=_PANDAS_DEPRECATION)
        cal = xcals.get_calendar(name)
    if int(getattr(cal, "open_offset", 0)) >= 0:
        return None
    opens: time = cal.open_times[-1][1]
    return opens


class ExchangeCalendar:
    """Bars of one interval on one exchange calendar (`exchange_calendars` names: XNYS, ...).

    `start` / `end` bound the sessions built (anything `exchange_calendars.get_calendar`
    accepts, e.g. "2000-01-01"); None keeps the package's default window, which ends about a
    year ahead: such a calendar extends itself, in place, when it is asked about a later
    time (`extend`), so a daemon that runs for more than a year, and every part holding its
    calendar (clock, feed, session, stale-data gate), go on. One with an `end` does not.
    """

    def __init__(
        self,
        name: str = "XNYS",
        interval: str = "1d",
        *,
        start: date | str | None = None,
        end: date | str | None = None,
    ) -> None:
        validate_calendar(name, interval)
        try:
            with warnings.catch_warnings():
                # exchange_calendars 4.x reads `Series.values` of tz-aware columns, which
                # pandas 3.1 deprecates; the values it gets are right (UTC nanoseconds).
                warnings.filterwarnings("ignore", category=_PANDAS_DEPRECATION)
                cal = xcals.get_calendar(name, start=start, end=end)
        except (ValueError, xcals.errors.CalendarError) as exc:
            raise ConfigError(
                f"exchange calendar {name!r} cannot be built for start={start!r}, "
                f"end={end!r}: {exc}"
            ) from None
        self.name = name
        self.interval = interval
        self._start_arg = start
        self._extends = end is None
        # How far it was asked to reach (the package's default window: a year ahead, or its
        # bound_max if sooner): built through its bound_max, it can answer nothing later.
        self._built_through: date = (
            type(cal).default_end() if end is None else pd.Timestamp(end)
        ).date()
        bound = cal.bound_max()
        self._bound_max: date | None = None if bound is None else bound.date()
        self.tz: ZoneInfo = ZoneInfo(str(cal.tz))
        self._cal = cal
        step = INTERVALS[interval]
        self._step: int | None = None if step is None else step // timedelta(microseconds=1) * 1000

        sessions = _asi8(cal.sessions)  # session dates, 00:00 (naive) == the daily label
        opens, closes = _asi8(cal.opens), _asi8(cal.closes)
        self._sessions = sessions
        self._opens, self._closes = opens, closes
        # Per session (for `outside_sessions`): an early close, and the lunch break (none:
        # an empty span at the close).
        self._early = np.isin(sessions, _asi8(cal.early_closes))
        no_break = cal.break_starts.isna().to_numpy()
        self._break_start, self._break_end = closes.copy(), closes.copy()
        self._break_start[~no_break] = _asi8(cal.break_starts[~no_break])
        self._break_end[~no_break] = _asi8(cal.break_ends[~no_break])
        self.first_session: date = cal.sessions[0].date()
        self.last_session: date = cal.sessions[-1].date()

        # "Segments": stretches of trading during which bars run back to back. A daily bar is a
        # segment of its own from the label (00:00 UTC of the session date) to the close.
        if self._step is None:
            seg_start, seg_end = sessions, closes
        else:
            has_break = (~cal.break_starts.isna()).to_numpy()
            if has_break.any():
                # A session with a lunch break is two segments: open..break, break..close.
                morning_end = closes.copy()
                morning_end[has_break] = _asi8(cal.break_starts[has_break])
                seg_start = np.concatenate([opens, _asi8(cal.break_ends[has_break])])
                seg_end = np.concatenate([morning_end, closes[has_break]])
                order = np.argsort(seg_start, kind="stable")
                seg_start, seg_end = seg_start[order], seg_end[order]
            else:
                seg_start, seg_end = opens, closes
        self._seg_start = np.ascontiguousarray(seg_start, dtype=np.int64)
        self._seg_end = np.ascontiguousarray(seg_end, dtype=np.int64)
        if self._step is None:
            self._counts = np.ones(len(self._seg_start), dtype=np.int64)
        else:
            self._counts = (self._seg_end - self._seg_start + self._step - 1) // self._step
        # Everything this calendar can answer for: from the first session's first label to the
        # last session's close.
        self._lo = int(self._seg_start[0])
        self._hi = int(self._seg_end[-1])

    def __repr__(self) -> str:
        return (
            f"ExchangeCalendar({self.name!r}, {self.interval!r}; sessions "
            f"{self.first_session}..{self.last_session})"
        )

    @property
    def step(self) -> timedelta | None:
        """The bar length (None for daily bars)."""
        return INTERVALS[self.interval]

    @property
    def regular_close(self) -> time:
        """The current regular close in the exchange's local time (16:00 for XNYS); half days
        and past changes are in the calendar, not here."""
        return self._cal.close_times[-1][1]

    @property
    def regular_open(self) -> time:
        """The current regular open in the exchange's local time (09:30 for XNYS)."""
        return self._cal.open_times[-1][1]

    @property
    def weekmask(self) -> str:
        """The weekdays it trades on, Monday first ("1111100" for XNYS, "1111111" for 24/7)."""
        return str(self._cal.weekmask)

    @property
    def open_offset(self) -> int:
        """Days from a session's open to its label's date: -1 where a session opens the
        evening before (CME's 17:00), 0 where it opens on its own day."""
        return int(getattr(self._cal, "open_offset", 0))

    @property
    def built_through(self) -> date:
        """The date its sessions were built through (a holiday or weekend, maybe: its last
        session can be earlier)."""
        return self._built_through

    @property
    def coverage(self) -> tuple[datetime, datetime]:
        """The instants this calendar answers for: first session's first label, last close."""
        return _dt(self._lo), _dt(self._hi)

    @property
    def bound_max(self) -> date | None:
        """The last date the installed exchange_calendars can build this calendar through
        (its `bound_max`: the end of the holidays it records, 2026-12-31 for XSES, XSHG and
        XBOM in 4.13); None when it builds any year (XNYS: its holidays are rules)."""
        return self._bound_max

    def upgrade_hint(self) -> str:
        """What to do about the package's end of this calendar (`bound_max`); "" if none."""
        bound = self.bound_max
        if bound is None:
            return ""
        return (
            f"the installed exchange-calendars {xcals.__version__} records the {self.name} "
            f"sessions only to {bound}: upgrade exchange-calendars (pip install -U "
            "exchange-calendars) to a release that records the following year, and restart"
        )

    def within_bound(self, through: date) -> date:
        """`through`, or the package's `bound_max` when that is sooner: the furthest this
        calendar can be built towards `through` (the package refuses to build past it)."""
        bound = self.bound_max
        return bound if bound is not None and through > bound else through

    def _later_end(self) -> str:
        """What makes the calendar answer past its last session: a newer exchange_calendars
        when it is built through the package's end, else building it with a later end."""
        bound = self.bound_max
        if bound is not None and self._built_through >= bound:
            return self.upgrade_hint()
        return "build it with a later end"

    def extend(self, through: date) -> bool:
        """Rebuild the calendar's sessions through `through` (its start kept), in place:
        every part holding this object sees the longer calendar. Not past the package's
        `bound_max` (it refuses to build there: a daemon asking a year ahead of a calendar
        ending in a month failed at every heartbeat). False when it already reaches that
        far, or was built with an `end` (it ends there)."""
        through = self.within_bound(through)
        # Against how far it was built, not its last session: a bound_max on a holiday
        # (XKRX's 2050-12-31) left the last session before it, and every heartbeat
        # rebuilt the calendar to the same end.
        if not self._extends or through <= self.built_through:
            return False
        start = self._start_arg if self._start_arg is not None else self.first_session
        longer = ExchangeCalendar(self.name, self.interval, start=start, end=through)
        longer._start_arg, longer._extends = self._start_arg, self._extends
        self.__dict__.update(longer.__dict__)
        log.info(
            "calendar.extended",
            calendar=self.name,
            interval=self.interval,
            last_session=str(self.last_session),
        )
        return True

    def _extend_for(self, day: date) -> None:
        """Extend for a question about `day`, if it is within two years of today: a daemon
        asks about the next sessions, not a vendor's bogus timestamp (which grew the shared
        calendar by 175 years, or failed to build past 2262 with another error than the
        out-of-range one its callers expect). Beyond that the question stays out of range."""
        if day > datetime.now(UTC).date() + timedelta(days=2 * 366):
            return
        try:
            self.extend(day + timedelta(days=366))
        except ConfigError as exc:
            raise CalendarRangeError(
                f"{day} is past what the {self.name} calendar can build: {exc}"
            ) from None

    # -- checks -----------------------------------------------------------------------------

    def _check(self, ns: int, what: str, t: datetime) -> None:
        if ns > self._hi and self._extends:
            # The package's default window ends a year ahead; a daemon outlives it.
            self._extend_for(_dt(ns).date())
        if not self._lo <= ns <= self._hi:
            lo, hi = self.coverage
            fix = "build the calendar with a wider start/end" if ns < self._lo else ""
            raise CalendarRangeError(
                f"{what} = {t.isoformat()} is outside the {self.name} calendar's range "
                f"({lo.isoformat()} .. {hi.isoformat()}, sessions {self.first_session} .. "
                f"{self.last_session}); {fix or self._later_end()}"
            )

    # -- bar generation -------------------------------------------------------------------

    def _bars(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, closes) in ns of every bar of segments i0 .. i1-1, in time order."""
        i0, i1 = max(i0, 0), min(i1, len(self._seg_start))
        if i1 <= i0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        starts, ends = self._seg_start[i0:i1], self._seg_end[i0:i1]
        if self._step is None:
            return starts, ends
        counts = self._counts[i0:i1]
        first = np.cumsum(counts) - counts
        k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
        labels = np.repeat(starts, counts) + k * self._step
        closes = np.minimum(labels + self._step, np.repeat(ends, counts))
        return labels, closes

    def _bar_at(self, seg: int, k: int) -> tuple[int, int]:
        start, end = int(self._seg_start[seg]), int(self._seg_end[seg])
        if self._step is None:
            return start, end
        label = start + k * self._step
        return label, min(label + self._step, end)

    # -- queries ----------------------------------------------------------------------------

    def is_session(self, day: date | datetime) -> bool:
        """Whether the exchange trades on `day` (a date, or a daily label at 00:00 UTC)."""
        if isinstance(day, datetime):
            ns = _ns(day, "day")
            if ns % _DAY_NS:
                raise ValueError(
                    f"day = {day.isoformat()} is not a session label (00:00 UTC); pass a date"
                )
            day = _dt(ns).date()
        if day > self.last_session and self._extends:
            self._extend_for(day)
        if not self.first_session <= day <= self.last_session:
            raise CalendarRangeError(
                f"{day} is outside the {self.name} calendar's sessions "
                f"({self.first_session} .. {self.last_session})"
                + (f"; {self._later_end()}" if day > self.last_session else "")
            )
        ns = (day - date(1970, 1, 1)).days * _DAY_NS
        i = int(np.searchsorted(self._sessions, ns))
        return i < len(self._sessions) and int(self._sessions[i]) == ns

    def bars_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Labels of the bars that exist with `start <= label <= end` (both inclusive)."""
        return _dts(self.labels_between(start, end))

    def labels_between(self, start: datetime, end: datetime) -> np.ndarray:
        """`bars_between` as epoch nanoseconds (int64): for a whole history's bars, where
        making a datetime of each costs seconds (two years of 1-minute bars)."""
        s, e = _ns(start, "start"), _ns(end, "end")
        self._check(s, "start", start)
        self._check(e, "end", end)
        if s > e:
            return np.empty(0, dtype=np.int64)
        i0 = int(np.searchsorted(self._seg_end, s, side="right"))
        i1 = int(np.searchsorted(self._seg_start, e, side="right"))
        labels, _ = self._bars(i0, i1)
        return labels[(labels >= s) & (labels <= e)]

    def closed_between(self, after: datetime, until: datetime) -> list[datetime]:
        """Labels of the bars whose close is in `(after, until]`, in time order."""
        a, u = _ns(after, "after"), _ns(until, "until")
        self._check(a, "after", after)
        self._check(u, "until", until)
        if a >= u:
            return []
        i0 = int(np.searchsorted(self._seg_end, a, side="right"))
        i1 = int(np.searchsorted(self._seg_start, u, side="left"))
        labels, closes = self._bars(i0, i1)
        return _dts(labels[(closes > a) & (closes <= u)])

    def closed_after(self, label: datetime | None, until: datetime) -> list[datetime]:
        """Labels newer than `label` whose bar has closed by `until`, in time order.

        What a catch-up must fetch when `label` is the newest bar it has (None: every bar of
        the calendar's range that closed by `until`). `label` need not be a bar of this
        calendar (e.g. a stored label on a day the package now says was closed).
        """
        u = _ns(until, "until")
        self._check(u, "until", until)
        if label is None:
            lo = self._lo - 1
        else:
            lo = _ns(label, "label")
            self._check(lo, "label", label)
        i0 = int(np.searchsorted(self._seg_end, lo, side="right"))
        i1 = int(np.searchsorted(self._seg_start, u, side="left"))
        labels, closes = self._bars(i0, i1)
        return _dts(labels[(labels > lo) & (closes <= u)])

    def close_of(self, label: datetime) -> datetime:
        """When the bar labelled `label` closes (UTC). ValueError if no such bar exists."""
        x = _ns(label, "label")
        self._check(x, "label", label)
        seg = int(np.searchsorted(self._seg_start, x, side="right")) - 1
        ok = seg >= 0 and x < int(self._seg_end[seg])
        if ok and self._step is None:
            ok = x == int(self._seg_start[seg])
        elif ok:
            assert self._step is not None
            ok = (x - int(self._seg_start[seg])) % self._step == 0
        if not ok:
            kind = "session" if self._step is None else f"{self.interval} bar"
            raise ValueError(
                f"{label.isoformat()} is not a {kind} label of the {self.name} calendar"
            )
        k = 0 if self._step is None else (x - int(self._seg_start[seg])) // self._step
        return _dt(self._bar_at(seg, k)[1])

    def last_closed(self, now: datetime) -> datetime | None:
        """Label of the newest bar whose close is <= `now`.

        None only when no bar of the calendar's range has closed yet (`now` in the first
        session before its first close).
        """
        n = _ns(now, "now")
        self._check(n, "now", now)
        seg = int(np.searchsorted(self._seg_start, n, side="right")) - 1
        start, end = int(self._seg_start[seg]), int(self._seg_end[seg])
        if n >= end:
            done = int(self._counts[seg])
        elif self._step is None:
            done = 0
        else:
            done = (n - start) // self._step
        if done == 0:
            if seg == 0:
                return None
            seg -= 1
            done = int(self._counts[seg])
        return _dt(self._bar_at(seg, done - 1)[0])

    def next_close(self, now: datetime) -> tuple[datetime, datetime]:
        """(label, close) of the first bar whose close is strictly after `now`."""
        n = _ns(now, "now")
        self._check(n, "now", now)
        seg = int(np.searchsorted(self._seg_end, n, side="right"))
        if seg >= len(self._seg_end):
            hi = self.coverage[1]
            raise CalendarRangeError(
                f"no {self.name} bar closes after {now.isoformat()} within the calendar's "
                f"range (last close {hi.isoformat()}); {self._later_end()}"
            )
        start = int(self._seg_start[seg])
        k = 0 if n < start or self._step is None else (n - start) // self._step
        label, close = self._bar_at(seg, k)
        return _dt(label), _dt(close)

    def next_open(self, after: datetime) -> datetime:
        """The first session open strictly after `after` (UTC): orders decided on a bar that
        closed before it fill from then on, so a late bar may still trade until it."""
        n = _ns(after, "after")
        self._check(n, "after", after)
        i = int(np.searchsorted(self._opens, n, side="right"))
        if i >= len(self._opens):
            raise CalendarRangeError(
                f"no {self.name} session opens after {after.isoformat()} within the "
                f"calendar's sessions (last {self.last_session}); {self._later_end()}"
            )
        return _dt(self._opens[i])

    def is_open(self, at: datetime) -> bool:
        """Whether the exchange trades at `at` (between a session's open and close, outside
        its lunch break): what an operator reads as "market open" in /status."""
        n = _ns(at, "at")
        self._check(n, "at", at)
        i = int(np.searchsorted(self._opens, n, side="right")) - 1
        if i < 0 or n >= int(self._closes[i]):
            return False
        return not int(self._break_start[i]) <= n < int(self._break_end[i])

    def bars_per_session(self) -> int:
        """The bars of a current regular session (the most common count over the calendar's
        last 252 sessions: 390 one-minute bars on XNYS, 7 of 60 minutes; half days have
        fewer; XTKS 330 since its close moved to 15:30 in November 2024); 1 for daily bars.
        What annualising intraday figures counts, so it follows the calendar the live clock
        and a replay's data filter use, not a table for New York alone."""
        if self._step is None:
            return 1
        # (A segment belongs to the session whose open is the latest at or before it.)
        session = np.searchsorted(self._opens, self._seg_start, side="right") - 1
        per = np.bincount(session, weights=self._counts, minlength=len(self._sessions))
        values, counts = np.unique(per[-252:].astype(np.int64), return_counts=True)
        return int(values[np.argmax(counts)])

    def sessions_per_year(self, years: int = 10, before: int | None = None) -> float:
        """The mean count of sessions in the last `years` full calendar years before the year
        `before` (by default this one; fewer years when the calendar's range holds fewer):
        what annualising per-session figures counts on this exchange (XTKS about 244, XHKG
        246, XLON 253), where New York's 252 made non-US Sharpe ratios and volatilities a
        few percent off.
        Recent, so a market's current holidays count; a year's mean, so a year with an
        unusual holiday (Tokyo's imperial succession, 2019) moves it by a fraction."""
        this_year = datetime.now(UTC).year if before is None else before
        session_years = self._sessions.astype("datetime64[ns]").astype("datetime64[Y]")
        year_of = session_years.astype(np.int64) + 1970
        full = np.arange(max(self.first_session.year + 1, this_year - years), this_year)
        full = full[full < self.last_session.year]
        if not len(full):
            raise CalendarRangeError(
                f"the {self.name} calendar ({self.first_session} .. {self.last_session}) "
                f"holds no full calendar year before {this_year} to count its sessions in"
            )
        return float(np.mean([np.count_nonzero(year_of == y) for y in full.tolist()]))

    def grid_offsets(self, times: np.ndarray, step: timedelta) -> np.ndarray:
        """Each bar label's distance (ns) past the grid of `step`-long bars that starts at
        its segment's start (the open, or a lunch break's end): 0 for a label the live
        clock's bars of that length have, 30 minutes for an hour-aligned 10:00 bar on XNYS
        (whose 60-minute bars are 09:30, 10:30, ...); -1 for a label outside the sessions.

        `times`: naive UTC `datetime64`, as for `outside_sessions`. Data off this grid cannot
        replay the bars a live run steps, whatever it is labelled."""
        x = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
        width = step // timedelta(microseconds=1) * _NS_PER_US
        seg = np.searchsorted(self._seg_start, x, side="right") - 1
        inside = (seg >= 0) & (x < self._seg_end[np.maximum(seg, 0)])
        return np.where(inside, (x - self._seg_start[np.maximum(seg, 0)]) % width, -1)

    def outside_sessions(self, times: np.ndarray) -> np.ndarray:
        """Why each bar label is outside the calendar's trading, "" for one inside.

        `times`: bar labels as naive UTC `datetime64` (a `Panel`'s intraday times), any
        range (a label outside the calendar's range is a "non_session_day"). Inside means
        within a session's open .. close and not in its lunch break, whatever the grid:
        a bar the live clock releases. The reasons, by the label's date in the exchange's
        time zone: "non_session_day" (weekend, holiday), "before_open", "after_close",
        "half_day_close" (after the early close of a half day), "lunch_break"."""
        x = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
        why = np.full(len(x), "", dtype=object)
        if self._step is None or not len(x):
            return why
        seg = np.searchsorted(self._seg_start, x, side="right") - 1
        inside = (seg >= 0) & (x < self._seg_end[np.maximum(seg, 0)])
        out = np.flatnonzero(~inside)
        if not len(out):
            return why
        local = pd.DatetimeIndex(x[out], tz="UTC").tz_convert(self.tz)
        day = _asi8(local.normalize().tz_localize(None))
        i = np.minimum(np.searchsorted(self._sessions, day), len(self._sessions) - 1)
        session = self._sessions[i] == day
        t = x[out]
        reasons = np.select(
            [
                ~session,
                t < self._opens[i],
                (t >= self._closes[i]) & self._early[i],
                t >= self._closes[i],
                (t >= self._break_start[i]) & (t < self._break_end[i]),
            ],
            ["non_session_day", "before_open", "half_day_close", "after_close", "lunch_break"],
            default="outside_session",
        )
        why[out] = reasons
        return why

    def missing(self, have: Sequence[datetime], start: datetime, end: datetime) -> list[datetime]:
        """Labels of bars in `[start, end]` that `have` lacks, in time order."""
        got = {_ns(t, "have[]") for t in have}
        return [t for t in self.bars_between(start, end) if _ns(t, "bar") not in got]

    def unexpected(
        self, have: Sequence[datetime], start: datetime, end: datetime
    ) -> list[datetime]:
        """Labels in `have` within `[start, end]` that are no bar of this calendar (sorted)."""
        expected = {_ns(t, "bar") for t in self.bars_between(start, end)}
        s, e = _ns(start, "start"), _ns(end, "end")
        return sorted(
            t for t in have if s <= _ns(t, "have[]") <= e and _ns(t, "have[]") not in expected
        )
