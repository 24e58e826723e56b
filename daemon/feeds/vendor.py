"""What every market-data vendor client shares, and the live `VendorFeed` built on one.

Bars from a vendor must look exactly like stored bars, so a model sees in live what it saw in a
backtest:

- **raw prices** (as traded), with the split coefficient on the ex-date bar (`split`, e.g. 4.0
  on 2020-08-31 for AAPL's 4-for-1) and the cash dividend going ex on its bar (`dividend`); the
  engine applies both at the bar they happen, as in replay;
- **labels**: a daily bar is labelled by its session date at 00:00 (UTC, naive in the long
  table: `2020-08-31 00:00`, as the loaders produce), whatever the vendor's stamp; an intraday
  bar by its start time in UTC;
- **closed bars only**: a bar is served once its close time has passed (`now` is a parameter,
  so tests pin it). An intraday bar closes at start + interval; a daily bar at the session's
  close in the exchange's time zone (`Session`, 16:00 America/New_York by default; on a half
  day that is later than the real close, which delays the bar but never serves one in
  progress; a vendor that reports the exact close, such as Yahoo, overrides it);
- **validated** by `validate_frame` (daemon/feeds/validate.py), symbol by symbol, with the
  repairs of `Validation`; a symbol whose bars fail is reported, the others are served;
- the **long table** of the loaders: time, symbol, open, high, low, close, volume, split,
  dividend.

Each client (yahoo.py, alphavantage.py, alpaca_data.py) implements `BarSource.fetch` for a
universe and a window and returns a `FetchResult`: the validated long table of the symbols that
worked and a `SourceError` per symbol that did not. `VendorFeed` turns one source into the
engine's `Feed` (see its docstring).

The helpers live here rather than in a module of their own so that the vendor-neutral layer is
one file: the clients import this module; this module never imports a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import structlog

from ..core.arrays import read_only_copy
from ..core.errors import ConfigError, DataError, RetryableError, SourceRefused
from ..core.outages import Outage, duration_text
from ..core.types import CrossSection
from .panel import Panel
from .resilience import ResilientCaller, SourceError, make_error, redact
from .response_cache import HeldWrites, fresh_reads, held_writes
from .suspect import Held, HeldBars, carry_action
from .validate import (
    DEFAULT_MAX_SPIKE,
    JUMP_FROM,
    OUTPUT_COLUMNS,
    PRICE_COLUMNS,
    RepairSummary,
    _fmt_time,
    validate_frame,
)

log = structlog.get_logger(__name__)

# Rows kept for `take_late_bars` when no engine takes them (`_store_late`): far more than
# the late and held bars of a catch-up (the engine takes them after every bar it steps).
_LATE_ROWS_KEPT = 100_000

RAW_COLUMNS = ("time", "open", "high", "low", "close", "volume", "split", "dividend")


# ----------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A bar length: `minutes` for intraday bars, 0 for daily bars."""

    name: str
    minutes: int

    @property
    def daily(self) -> bool:
        return self.minutes == 0

    @property
    def delta(self) -> timedelta:
        return timedelta(days=1) if self.daily else timedelta(minutes=self.minutes)

    def __str__(self) -> str:
        return self.name


INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "60m": 60, "1d": 0}
_INTERVAL_ALIASES = {
    "1min": "1m",
    "5min": "5m",
    "15min": "15m",
    "30min": "30m",
    "60min": "60m",
    "1h": "60m",
    "1hour": "60m",
    "d": "1d",
    "1day": "1d",
    "day": "1d",
    "daily": "1d",
}


def parse_interval(value: str | Interval) -> Interval:
    """'1m', '5m', '15m', '30m', '60m' (or '1h'), '1d' (also '5min', 'daily', '1Day'...)."""
    if isinstance(value, Interval):
        return value
    key = str(value).strip().lower()
    key = _INTERVAL_ALIASES.get(key, key)
    if key not in INTERVALS:
        raise ConfigError(f"bar interval {value!r} is not supported; valid: {', '.join(INTERVALS)}")
    return Interval(key, INTERVALS[key])


@dataclass(frozen=True)
class Session:
    """When a daily bar closes: `close` (HH:MM) in the exchange's `timezone`; or, with a
    `calendar` (duck-typed like `tradingd.clock.calendar.ExchangeCalendar` of interval "1d":
    `close_of(label) -> datetime`), the calendar's close of that session (13:00 on a half
    day), falling back to `close` for a day the calendar does not know as a session."""

    timezone: str = "America/New_York"
    close: str = "16:00"
    calendar: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
            hh, mm = (int(x) for x in self.close.split(":"))
            time(hh, mm)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(
                f"session timezone {self.timezone!r} / close {self.close!r} is invalid: "
                "use an IANA zone and HH:MM"
            ) from exc
        except Exception as exc:  # ZoneInfoNotFoundError
            raise ConfigError(f"session timezone {self.timezone!r} is unknown") from exc

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def close_of(self, day: date, timezone: str | None = None) -> datetime:
        """The close of the session on `day` as an aware UTC datetime (`timezone`: another
        exchange's zone, for a symbol listed elsewhere; the calendar is then not used)."""
        if self.calendar is not None and timezone in (None, self.timezone):
            try:
                return as_utc(
                    self.calendar.close_of(datetime(day.year, day.month, day.day, tzinfo=UTC))
                )
            except ValueError:  # not a session of the calendar, or outside its range
                pass
        hh, mm = (int(x) for x in self.close.split(":"))
        tz = ZoneInfo(timezone) if timezone else self.tz
        return datetime.combine(day, time(hh, mm), tz).astimezone(UTC)

    def today(self, now: datetime) -> date:
        return now.astimezone(self.tz).date()


def zone_name(name: Any, where: str, aliases: Mapping[str, str] | None = None) -> str:
    """`name` when it names a time zone (read through `aliases`, a vendor's own names); a
    ValueError naming `where` else, which a client reports as a malformed answer: an unknown
    zone raised ZoneInfoNotFoundError in pandas, taken for a bug of ours (`internal`)."""
    if not isinstance(name, str):
        raise ValueError(f"{where} is not a time zone name: {name!r:.40}")
    try:
        ZoneInfo((aliases or {}).get(name, name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: {name!r:.60} is not a time zone") from None
    return name


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """An aware UTC datetime; naive input is read as UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def naive_utc(t: datetime) -> pd.Timestamp:
    return pd.Timestamp(as_utc(t).replace(tzinfo=None))


def label_of(t: datetime, interval: Interval) -> datetime:
    """The label of the bar containing `t`: the date at 00:00 UTC for daily bars (taken from
    `t` as given, in UTC), the start for intraday bars on the clock's grid (floored to the
    interval). That grid is the exchange's only outside its regular session: there the bars
    start on the open (09:30, 10:30 for 60m bars; see `last_closed_label`)."""
    t = as_utc(t)
    if interval.daily:
        return datetime(t.year, t.month, t.day, tzinfo=UTC)
    step = interval.minutes * 60
    return datetime.fromtimestamp(int(t.timestamp()) // step * step, UTC)


def bar_close(
    label: datetime, interval: Interval, session: Session, timezone: str | None = None
) -> datetime:
    """When the bar labelled `label` closes (aware UTC). An intraday bar that starts before
    its session's close ends there at the latest: the 15:30 hour closes at 16:00, and on a
    half day the 12:30 hour at 13:00, not an hour after its label."""
    label = as_utc(label)
    if interval.daily:
        return session.close_of(label.date(), timezone)
    end = label + interval.delta
    if timezone not in (None, session.timezone):
        return end  # another exchange's session: its close is not known here
    close = session.close_of(label.astimezone(session.tz).date())
    return min(end, close) if label < close else end


# The regular open of a session without an exchange calendar, by the session's zone: the
# open-aligned grid of its intraday bars. Another zone without a calendar keeps the clock's.
_REGULAR_OPENS = {"America/New_York": time(9, 30)}


@functools.cache
def _intraday_calendar(name: str, interval: str) -> Any:
    """One intraday calendar per exchange and interval for the process: built in about 0.1 s,
    and asked again at every fetch."""
    from ..clock.calendar import ExchangeCalendar

    return ExchangeCalendar(name, interval)


def _last_regular_label(now: datetime, interval: Interval, session: Session) -> datetime | None:
    """The newest regular-session bar closed at `now`, on the exchange's grid (bars start at
    the open and the last one is cut at the close), or None where the grid is not known."""
    name = getattr(session.calendar, "name", None)
    if isinstance(name, str):
        try:
            label: datetime | None = _intraday_calendar(name, interval.name).last_closed(now)
            return label
        except (ValueError, ConfigError):  # out of the calendar's range: the fixed open below
            pass
    opens = _REGULAR_OPENS.get(session.timezone)
    if opens is None:
        return None
    today = session.today(now)
    for day in (today, today - timedelta(days=1)):  # before today's first close: yesterday's
        start = datetime.combine(day, opens, session.tz).astimezone(UTC)
        close = session.close_of(day)
        if now >= close:
            done = -((start - close) // interval.delta)  # every bar, the last cut at the close
        else:
            done = (now - start) // interval.delta
        if done >= 1:
            return start + (done - 1) * interval.delta
    return None


def last_closed_label(now: datetime, interval: Interval, session: Session) -> datetime:
    """The label of the newest bar closed at `now` (ignoring weekends and holidays: the
    vendor simply has no bar there). Intraday, on the exchange's grid during and right after
    its regular session: 60m bars start at 09:30, not on the clock hour, so the clock's grid
    lost the newest closed hour (the 19:30 UTC hour at 20:05, the 15:30 New York one closing
    at 16:00). After the session's close, a later bar on the clock's grid (a vendor's
    extended hours) counts too."""
    now = as_utc(now)
    if interval.daily:
        today = session.today(now)
        day = today if session.close_of(today) <= now else today - timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    clock_grid = label_of(now, interval) - interval.delta
    regular = _last_regular_label(now, interval, session)
    if regular is None:
        return clock_grid
    session_close = session.close_of(regular.astimezone(session.tz).date())
    return clock_grid if clock_grid >= session_close else regular


# ----------------------------------------------------------------------------- shaping


def empty_raw() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="datetime64[ns]" if c == "time" else "float64") for c in RAW_COLUMNS}
    )


def empty_long() -> pd.DataFrame:
    out = empty_raw()
    out.insert(1, "symbol", pd.Series(dtype=object))
    return out.loc[:, list(OUTPUT_COLUMNS)]


def closed_only(
    raw: pd.DataFrame,
    interval: Interval,
    now: datetime,
    session: Session,
    *,
    timezone: str | None = None,
    closes: Mapping[date, datetime] | None = None,
) -> pd.DataFrame:
    """The rows of `raw` (naive UTC labels) whose bar has closed at `now`. `closes` overrides
    the session close of given dates (a vendor that knows the exact close)."""
    if raw.empty:
        return raw
    now = as_utc(now)
    times = pd.DatetimeIndex(raw["time"])
    if interval.daily:
        ends = {}
        for day in pd.unique(times.date):
            ends[day] = (closes or {}).get(day) or session.close_of(day, timezone)
        keep = np.array([ends[d] <= now for d in times.date], dtype=bool)
    else:
        # A bar that starts before its session's close ends there at the latest (the 15:30
        # hour at 16:00): counted as closing an hour after its label, a 60m feed dropped
        # every session's last bar at its release, and it was caught up untraded the next
        # morning.
        labels = times.to_numpy(dtype="datetime64[ns]")
        bar_ends = labels + np.timedelta64(interval.minutes, "m")
        if timezone in (None, session.timezone):  # another exchange's close is not known
            # The session day of each row (in the exchange's zone), a close per distinct day.
            local = times.tz_localize("UTC").tz_convert(session.tz).tz_localize(None)
            days, at = np.unique(local.to_numpy().astype("datetime64[D]"), return_inverse=True)
            day_closes = np.array(
                [naive_utc(session.close_of(pd.Timestamp(d).date())).to_datetime64() for d in days],
                dtype="datetime64[ns]",
            )
            close = day_closes[at]
            bar_ends = np.where(labels < close, np.minimum(bar_ends, close), bar_ends)
        keep = np.asarray(bar_ends <= naive_utc(now).to_datetime64(), dtype=bool)
    return raw[keep]


def in_window(raw: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows with a label in [start, end] (inclusive)."""
    if raw.empty:
        return raw
    t = raw["time"]
    return raw[(t >= naive_utc(start)) & (t <= naive_utc(end))]


@dataclass(frozen=True)
class Validation:
    """Options of `validate_frame` for vendor bars. `repair` names the enabled repairs (see
    validate.py; empty = strict, as for stored data); `extra` passes further keyword arguments
    to `validate_frame` unchanged (e.g. max_spike, max_volume). `open_end`: each symbol's
    newest bar is left to the live feed's rule by the spike check (`VendorFeed` sets it on
    its source: see feeds/suspect.py). `open_start`: each symbol's first bar is a neighbour
    only for the spike check, not judged (a live answer's window is cut before it: judged
    against the two bars after it, the bar before a gap looked like a spike; `VendorFeed`
    fetches one bar more and leaves that one out)."""

    repair: tuple[str, ...] = ()
    max_gap_days: float = 7.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    open_end: bool = False
    open_start: bool = False


# validate.py is gaining bar labelling of its own (an `interval` argument: naive intraday times
# are then read as the exchange's wall time, aware ones as instants). Both versions are served:
# with it, intraday labels go in as aware UTC instants and the interval is named; without it,
# as naive UTC, which the older version keeps as they are.
_VALIDATE_LABELS = "interval" in inspect.signature(validate_frame).parameters


def validate_bars(
    raw: pd.DataFrame,
    *,
    source: str,
    validation: Validation,
    interval: Interval | None = None,
    symbol: str | None = None,
) -> pd.DataFrame:
    """`validate_frame` on raw bars (labels as naive UTC: dates for daily bars, starts for
    intraday ones) of one `symbol`, or of a long table with a symbol column (symbol None); an
    empty frame gives an empty long table. The result keeps the labels. Raises DataError."""
    if raw.empty:
        return empty_long()
    # A source without split or dividend columns (Alpha Vantage unadjusted) has none here:
    # validation then says so, and fills them in as no action.
    present = [c for c in RAW_COLUMNS if c in raw]
    cols = present if symbol is not None else ["symbol", *present]
    frame = raw.loc[:, cols].reset_index(drop=True)
    opts: dict[str, Any] = {
        "repair": validation.repair,
        "max_gap_days": validation.max_gap_days,
        **dict(validation.extra),
    }
    if validation.open_end:
        opts["open_end"] = True
    if validation.open_start:
        opts["open_start"] = True
    if _VALIDATE_LABELS and interval is not None:
        opts["interval"] = "1d" if interval.daily else "intraday"
        if not interval.daily:
            frame["time"] = frame["time"].dt.tz_localize("UTC")
            # Instants are labelled as instants; no exchange wall time is involved.
            opts.setdefault("timezone", "UTC")
    summary = RepairSummary()
    out = validate_frame(frame, source=source, symbol=symbol, summary=summary, **opts)
    # The columns' absence is the source's, said once when its client starts
    # (feed.no_corporate_actions): not again for every symbol of every bar's answer.
    summary.suspects.pop("no_corporate_actions", None)
    summary.log(source)
    return out


@dataclass
class FetchResult:
    """Validated bars of the symbols that worked, and an error per symbol that did not."""

    frame: pd.DataFrame
    errors: dict[str, SourceError] = field(default_factory=dict)

    def for_symbol(self, symbol: str) -> pd.DataFrame:
        return self.frame[self.frame["symbol"] == symbol].reset_index(drop=True)


def combine(
    source: str,
    parts: Mapping[str, pd.DataFrame | BaseException],
    validation: Validation,
    interval: Interval | None = None,
) -> FetchResult:
    """Validate the symbols' raw bars (or keep their errors) into one result. A DataError
    becomes a SourceError of kind `invalid_data` for the symbols it names; the other symbols
    are validated again without them (one validate_frame call per round: a call per symbol
    costs ~50 ms each, which 500 symbols would spend blocking the loop). A round handles every
    symbol the failing check names (`RowsError.per_symbol`), each as if validated alone: its
    earliest bad row dropped when older than its newest bar, else the symbol refused. One row
    per round re-validated the whole table for each bad row: 500 symbols x 300 bars with one
    bad row each took 115 s; the rounds now grow with the bad rows of one symbol (at most
    MAX_DROPPED_ROWS + 1 per check), not with the symbols."""
    frames: list[pd.DataFrame] = []
    errors: dict[str, SourceError] = {}
    for symbol, part in parts.items():
        if isinstance(part, SourceError):
            errors[symbol] = part if part.symbol == symbol else part.for_symbol(symbol)
        elif isinstance(part, BaseException):
            errors[symbol] = make_error(
                # Redacted here too (credential-like parameters): the message reaches
                # `/ready` and alerts, and a bug's exception may quote a request URL.
                source,
                "internal",
                redact(f"{type(part).__name__}: {part}")[:300],
                symbol=symbol,
            )
            log.error("source.internal_error", source=source, symbol=symbol, exc_info=part)
        elif not part.empty:
            frames.append(part.assign(symbol=symbol))
    if not frames:
        return FetchResult(empty_long(), errors)
    table = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    dropped: dict[str, int] = {}
    gone: list[pd.DataFrame] = []  # the rows dropped, as they came
    while not table.empty:
        try:
            frame = validate_bars(table, source=source, validation=validation, interval=interval)
            if gone and JUMP_FROM in frame:
                frame = _jumps_over_dropped(frame, pd.concat(gone), validation)
            return FetchResult(frame, errors)
        except DataError as exc:
            present = set(table["symbol"])
            named = getattr(exc, "per_symbol", None) or {exc.symbol: exc}
            named = {s: e for s, e in named.items() if s in present}
            if not named:  # not a symbol's (e.g. rows without one): every symbol refused
                for s in sorted(present):
                    errors[s] = make_error(source, "invalid_data", str(exc)[:500], symbol=s)
                table = table.iloc[0:0]
                continue
            rows_of = table.groupby("symbol", sort=False).indices
            times = _naive(pd.to_datetime(table["time"], errors="coerce")).to_numpy(
                dtype="datetime64[ns]"
            )
            drop: list[pd.Index] = []
            refused: list[str] = []
            for bad, err in named.items():
                older = _older_row(table, times, rows_of[bad], err.row)
                if older is None or dropped.get(bad, 0) >= MAX_DROPPED_ROWS:
                    refused.append(bad)
                    errors[bad] = make_error(source, "invalid_data", str(err)[:500], symbol=bad)
                    continue
                # A bad bar behind the newest: the window is context, and the vendor's
                # data is not the operator's to fix. Refusing the symbol refused every good
                # newer bar for the whole lookback (and a whole warm-up) over one glitch.
                dropped[bad] = dropped.get(bad, 0) + 1
                log.warning(
                    "feed.row_dropped",
                    source=source,
                    symbol=bad,
                    row=err.row,
                    reason=str(err)[:300],
                    rule="a bad bar older than the symbol's newest is dropped (a gap); "
                    "a bad newest bar refuses the symbol",
                )
                gone.append(table.loc[older, ["symbol", "time", "close"]])
                drop.append(older)
            if drop:
                table = table.drop(index=drop[0].append(drop[1:]))
            if refused:
                table = table[~table["symbol"].isin(refused)]
    return FetchResult(empty_long(), errors)


# Bad older bars one answer may drop per symbol before the symbol is refused instead.
MAX_DROPPED_ROWS = 5


def _naive(times: pd.Series) -> pd.Series:
    out = pd.to_datetime(times)
    return out.dt.tz_convert("UTC").dt.tz_localize(None) if out.dt.tz is not None else out


def _jumps_over_dropped(
    frame: pd.DataFrame, gone: pd.DataFrame, validation: Validation
) -> pd.DataFrame:
    """`frame`'s `jump_from` (validation's, with `open_end`) for a newest bar whose previous
    bar the answer dropped (`feed.row_dropped`, e.g. a reverted spike in strict mode): the
    jump is from that bar's close as it came, as without the drop (and as with repair
    "spike", which keeps the row). Judged from the bar before it, the bar after a reverted
    spike was served, and the next answer, which has the print again as the first bar's
    neighbour, dropped it when the price jumped back (see feeds/suspect.py)."""
    max_spike = float(validation.extra.get("max_spike", DEFAULT_MAX_SPIKE))
    if not max_spike:
        return frame
    times, gone_times = _naive(frame["time"]), _naive(gone["time"])
    jumps = frame[JUMP_FROM].to_numpy(dtype=np.float64).copy()
    for symbol in set(gone["symbol"]):
        mine = np.flatnonzero((frame["symbol"] == symbol).to_numpy())
        if not len(mine):
            continue
        newest = mine[np.argmax(times.iloc[mine].to_numpy())]
        at = times.iat[newest]
        older = times.iloc[mine][times.iloc[mine] < at]
        after = older.max() if len(older) else pd.Timestamp.min
        between = ((gone["symbol"] == symbol) & (gone_times > after) & (gone_times < at)).to_numpy()
        if not between.any():
            continue
        last = gone[between].iloc[int(np.argmax(gone_times[between].to_numpy()))]
        previous = float(last["close"]) / float(frame["split"].iat[newest])
        if not (np.isfinite(previous) and previous > 0):
            continue
        ratio = frame.iloc[newest][list(PRICE_COLUMNS)].to_numpy(dtype=np.float64) / previous
        jump = bool(((ratio > max_spike) | (ratio < 1.0 / max_spike)).any())
        jumps[newest] = previous if jump else np.nan
    return frame.assign(**{JUMP_FROM: jumps})


def _older_row(
    table: pd.DataFrame, times: np.ndarray, rows: np.ndarray, row: object
) -> pd.Index | None:
    """The index of a symbol's rows (`rows`: their positions in `table`, whose times as naive
    UTC are `times`) at the time a DataError names (`row`: the bar's time as validation
    labels it, `_fmt_time`), when that is not the symbol's newest bar; else None."""
    if not isinstance(row, str):
        return None
    try:
        when = pd.Timestamp(row)
    except ValueError:
        return None
    if pd.isna(when):
        return None
    if when.tzinfo is not None:  # an intraday label, validated as an aware UTC instant
        when = when.tz_convert("UTC").tz_localize(None)
    mine = times[rows]
    known = ~np.isnat(mine)
    if not known.any():
        return None
    hit = rows[(mine == when.to_datetime64()) & (mine < mine[known].max())]
    if not len(hit):
        return None
    for col, neutral in (("split", 1.0), ("dividend", 0.0)):
        if col in table:
            values = pd.to_numeric(table[col].iloc[hit], errors="coerce").fillna(neutral)
            if not (values == neutral).all():
                return None  # it carries a corporate action: dropped, the action would be lost
    return table.index[hit]


# Kinds of a symbol's error that judge what its answer held (it did not parse, or its bars
# failed validation), not whether an answer came: such an answer is not cached.
REFUSED_ANSWER_KINDS = frozenset({"invalid_data", "malformed", "internal"})


# How long after its close an answer's newest bar is recent (a bar interval at least): an
# answer lacking a symbol's bar there, which the others have, is then not cached, as the
# vendor may still post it (seconds or minutes late). Past it the bar is taken as not coming
# (a halted or delisted symbol) and the answer is cached as any closed window's.
PARTIAL_ANSWER_RECENCY = timedelta(hours=1)


def lacking_newest_bar(
    frame: pd.DataFrame,
    symbols: Collection[str],
    interval: Interval,
    now: datetime,
    session: Session,
) -> tuple[list[str], datetime | None]:
    """The `symbols` without a row at the newest bar of `frame` (a validated answer, which
    other symbols have), when that bar closed less than `PARTIAL_ANSWER_RECENCY` (or one
    bar interval, if longer) before `now`; and that bar's label. A bar missing for every
    symbol is not seen here (`VendorFeed.bars` asks for it again past the cache)."""
    if frame.empty or not symbols:
        return [], None
    newest_of = _naive(frame["time"]).groupby(frame["symbol"].to_numpy(), sort=False).max()
    newest = pd.Timestamp(newest_of.max())
    label = as_utc(newest.to_pydatetime())
    recent = max(PARTIAL_ANSWER_RECENCY, interval.delta)
    if bar_close(label, interval, session) <= as_utc(now) - recent:
        return [], label
    have = set(newest_of.index[(newest_of == newest).to_numpy()])
    return sorted(s for s in symbols if s not in have), label


async def validated(
    source: str,
    parts: Mapping[str, pd.DataFrame | BaseException],
    validation: Validation,
    interval: Interval | None = None,
    held: HeldWrites | None = None,
    *,
    now: datetime | None = None,
    session: Session | None = None,
) -> FetchResult:
    """`combine` in a worker thread: validating a large universe must not stall the loop.
    `held`: the response-cache writes of the fetch (`held_writes`), stored here but those of
    the symbols whose answer was refused, so that a retry asks the vendor again; with `now`
    (the fetch's) and `interval`, nor those of a symbol whose answer lacks the recent
    newest bar the others have (`lacking_newest_bar`): cached, that answer was served to
    every later ask within `cache.expiry_s`, without the symbol's bar, after the vendor
    had posted it."""
    result = await asyncio.to_thread(combine, source, parts, validation, interval)
    if held is not None:
        refused = {s for s, err in result.errors.items() if err.kind in REFUSED_ANSWER_KINDS}
        lacking: list[str] = []
        bar: datetime | None = None
        if len(held) and now is not None and interval is not None:
            served = [s for s in parts if s not in result.errors]  # failed: nothing written
            lacking, bar = await asyncio.to_thread(
                lacking_newest_bar, result.frame, served, interval, now, session or Session()
            )
        if await held.commit(refused, incomplete=lacking):
            log.info(
                "cache.response.partial_not_stored",
                source=source,
                bar=bar,
                symbols=lacking[:10],
                count=len(lacking),
                rule="the answer lacks these symbols' newest bar, which the others have and "
                "the vendor may still post: not cached, so the next ask goes to the vendor",
            )
    return result


async def gather_symbols(
    symbols: Sequence[str], fetch_one: Callable[[str], Any]
) -> dict[str, pd.DataFrame | BaseException]:
    """`fetch_one(symbol)` for every symbol concurrently (the source's caller bounds how many
    are in flight); failures are kept per symbol, never raised. Cancellation propagates."""
    results = await asyncio.gather(*(fetch_one(s) for s in symbols), return_exceptions=True)
    out: dict[str, pd.DataFrame | BaseException] = {}
    for symbol, res in zip(symbols, results, strict=True):
        if isinstance(res, asyncio.CancelledError):
            raise res
        out[symbol] = res
    return out


async def fetched_each(
    source: str,
    symbols: Sequence[str],
    fetch_one: Callable[[str], Any],
    validation: Validation,
    interval: str | Interval,
    *,
    now: datetime,
    session: Session,
) -> FetchResult:
    """A per-symbol vendor's fetch: `fetch_one` for every symbol (`gather_symbols`), its
    response-cache writes held until the answers are validated (`validated`, with the
    fetch's `now`: an answer lacking a recent bar is not cached)."""
    with held_writes() as held:  # cached once validated (see response_cache.py)
        parts = await gather_symbols(list(symbols), fetch_one)
    return await validated(
        source, parts, validation, parse_interval(interval), held, now=now, session=session
    )


class BarSource(Protocol):
    """A vendor client: bars of several symbols over a window, validated."""

    name: str
    caller: ResilientCaller

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def fetch(
        self,
        symbols: Sequence[str],
        interval: str | Interval,
        start: datetime,
        end: datetime,
        *,
        now: datetime | None = None,
    ) -> FetchResult:
        """Closed bars with labels in [start, end] (aware datetimes)."""
        ...

    def status(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------- the feed


# What `VendorFeed` keeps of each bar it served, to see a vendor change it later.
_SERVED_FIELDS = ("open", "high", "low", "close", "volume", "split", "dividend")
# A restated price or volume (`data.restated`) is one that moved by more than these,
# relative to the served value. Prices: above the rounding of a raw price Yahoo's split
# adjustment is undone from (half a cent is 0.1% of $5), below any correction that matters
# to a decision. Volume: vendors complete a session's volume with late reports for a while
# after the close (a few percent); a correction beyond that changes the volume features.
RESTATED_PRICE_TOLERANCE = 1e-3
RESTATED_VOLUME_TOLERANCE = 0.05
_RESTATED_TOLERANCES = (
    *((name, RESTATED_PRICE_TOLERANCE) for name in ("open", "high", "low", "close")),
    ("volume", RESTATED_VOLUME_TOLERANCE),
)

# A symbol without a bar: no prices or volume, no split (1), no dividend (0).
_NO_BAR = (
    ("open", np.nan),
    ("high", np.nan),
    ("low", np.nan),
    ("close", np.nan),
    ("volume", np.nan),
    ("split", 1.0),
    ("dividend", 0.0),
)


# The reasons `ExchangeCalendar.outside_sessions` gives (and two of the feed's) for a history
# row that is no bar of the calendar, as `feed.outside_session_dropped` words them.
_OUTSIDE_SESSION = {
    "before_open": "before the session's open (pre-market hours)",
    "after_close": "after the session's close (post-market hours)",
    "half_day_close": "after a half day's early close",
    "non_session_day": "on a day the exchange does not trade (a weekend or holiday)",
    "lunch_break": "in the session's lunch break",
    "off_grid": "within a session but off the calendar's bar grid",
    "outside_session": "outside the calendar's sessions",
}


def _without_first_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (a live answer) without each symbol's first bar: the neighbour of the
    window's first bar, which validation does not judge (`Validation.open_start`): as it
    came, it may be a spike that an earlier answer dropped or repaired."""
    if frame.empty:
        return frame
    first = frame.groupby("symbol", sort=False)["time"].transform("min")
    return frame[(frame["time"] > first).to_numpy()]


def panel_of(frame: pd.DataFrame, symbols: Sequence[str]) -> Panel:
    """A Panel over exactly `symbols` (in that order) from a validated long table; symbols
    without bars are all-NaN columns."""
    symbols = tuple(symbols)
    if frame.empty:
        shape = (0, len(symbols))
        nan = np.full(shape, np.nan)
        return Panel(
            times=np.array([], dtype="datetime64[ns]"),
            symbols=symbols,
            open=nan,
            high=nan.copy(),
            low=nan.copy(),
            close=nan.copy(),
            volume=nan.copy(),
            split=np.ones(shape),
            dividend=np.zeros(shape),
        )
    sub = Panel.from_long(frame[frame["symbol"].isin(symbols)])
    index = {s: i for i, s in enumerate(sub.symbols)}
    t = len(sub.times)
    arrays = {}
    for name, fill in _NO_BAR:
        src = getattr(sub, name)
        arr = np.full((t, len(symbols)), fill)
        for j, s in enumerate(symbols):
            if s in index:
                arr[:, j] = src[:, index[s]]
        arrays[name] = arr
    return Panel(times=sub.times, symbols=symbols, **arrays)


def _failing_detail(caller: Mapping[str, Any]) -> str:
    """/ready's `feed` detail for a source whose last call failed (no symbol failing yet):
    the failure, when, how many in a row and what follows. It said "circuit closed", which
    names nothing wrong, while a timed-out call was retried."""
    circuit = caller.get("circuit")
    failures = int(caller.get("consecutive_failures") or 0)
    if circuit != "closed":
        then = f"the circuit is {circuit}, next probe in {caller.get('retry_in_s')} s"
    elif caller.get("gave_up"):
        then = "the call spent its retries; the next fetch asks again"
    else:  # a source whose status says no more (not a `ResilientCaller`'s)
        then = "retried with backoff"
    what, at = _last_failure(caller)
    return f"last call failed ({what}){at}; {failures} failure(s) in a row; {then}"


def _last_failure(caller: Mapping[str, Any]) -> tuple[str, str]:
    """The source's last error as /ready's detail names it: (kind and message, " at" when)."""
    err = caller.get("last_error") or {}
    what = f"{err.get('kind')}: {err.get('message')}" if err else "a call failed"
    return what, (f" at {err['at']}" if err.get("at") else "")


def _retrying_detail(caller: Mapping[str, Any]) -> str:
    """/ready's `feed` detail while the source is ok but a call is being retried: a failed
    attempt being retried does not fail the check (one slow answer made a readiness probe
    flap); it is named, with what would fail it."""
    n = int(caller.get("retrying") or 0)
    failures = int(caller.get("consecutive_failures") or 0)
    what, at = _last_failure(caller)
    return (
        f"ok; {n} call(s) being retried after {what}{at}; {failures} failure(s) in a row "
        "(not ready once a call spends its retries or the circuit opens)"
    )


class VendorFeed:
    """The engine's `Feed` on one vendor source, for a fixed universe and bar interval.

    `bars(t)` fetches a short window ending at bar t (`lookback_bars` bars back, so validation
    sees neighbours and a split on the window is handled), validates it, and returns the
    cross-section at t:
      - a symbol whose fetch or validation failed is NaN (the engine treats NaN as "no bar":
        it does not trade it) and is listed in `status()["failed"]`;
      - if t's bar has not closed at `now` yet, or every symbol failed for a transient reason
        (source down, circuit open, throttled, daily budget), it raises `RetryableError`: the
        engine's loop marks the bar late and asks again later;
      - if every symbol failed with an auth error, it raises `SourceRefused` (a FatalError
        and a ConfigError: fix the keys);
        Yahoo's 401/403 (kind `blocked`: it has no keys) is RetryableError;
      - if no symbol has a bar at t it returns None (a holiday), unless `is_session(t)` says t
        is a trading session, in which case the bar is late (RetryableError);
      - a symbol whose bar at t jumps beyond `max_spike` (the source's validation's, 10 by
        default) from its previous close is NaN too, held back until the next answer judges
        it as a backtest's load would (feeds/suspect.py): validation cannot tell a bad tick
        from a gap before the next bar, so the feed sets `Validation.open_end` on its source.
    The answer reaches one bar further back than the window (`lookback_bars` bars before t,
    and at least 1): each symbol's first bar in it (`Validation.open_start`: not judged) is
    the neighbour that the window's first bar is judged with, as a backtest of the whole
    history judges it, and is otherwise left out (not checked for revisions or late bars);
    so with `lookback_bars = 1` the answer is t and the two bars before, and a bar held at
    t-1 is judged by t's answer.
    It never blocks forever (every call has a timeout, retries are bounded) and keeps only the
    per-symbol error table and the last bar time between calls (responses live in the bounded
    response cache of the client).

    `history(start, end)` returns the Panel of the whole window, for warm start and catch-up.
    A history that every symbol fails for good (`SourceError.permanent`: a 4xx such as Yahoo's
    422 for a window older than it keeps, unknown symbols, Alpha Vantage's "Error Message")
    raises `SourceRefused` naming the vendor, the request and what to change, not
    RetryableError, which the engine's warm-up retries without end; a source may say how far
    back it serves an interval (`history_limit(interval) -> timedelta | None`, Yahoo's) for
    that message.
    Symbols are sorted (as `HistoryFeed` and `Panel.from_long` do).

    `calendar` (an `ExchangeCalendar` of the feed's interval, duck-typed: `close_of(label)`)
    gives exact closes (half days) and knows holidays: t not a bar of it returns None without
    a request, and a bar of it that the vendor lacks is late (RetryableError). Without one, the
    `Session` close is used and `is_session(t)` (optional) says which t must have a bar. For
    the clients to release a half day's daily bar at 13:00, give their `Session` the daily
    calendar too (`Session(calendar=...)`). The feed starts and stops its source; a shared
    ResponseCache is started and stopped by its owner.
    """

    def __init__(
        self,
        source: BarSource,
        symbols: Sequence[str],
        interval: str | Interval = "1d",
        *,
        lookback_bars: int = 5,
        clock: Callable[[], datetime] = utc_now,
        is_session: Callable[[datetime], bool] | None = None,
        session: Session | None = None,
        calendar: Any = None,
        owned: Sequence[Any] = (),
    ) -> None:
        """`owned`: services (e.g. the shared ResponseCache) this feed starts before its
        source and stops after it, when the feed is the only user of them."""
        if not symbols:
            raise ConfigError("a vendor feed needs at least one symbol")
        self._owned = tuple(owned)
        if lookback_bars < 0:
            raise ConfigError(f"lookback_bars {lookback_bars!r} must be >= 0")
        self.source = source
        self._symbols = tuple(sorted(dict.fromkeys(str(s) for s in symbols)))
        self.interval = parse_interval(interval)
        self.lookback_bars = lookback_bars
        self._clock = clock
        self._is_session = is_session
        self.session = session or getattr(source, "session", None) or Session()
        self.calendar = calendar
        self._failed: dict[str, dict[str, Any]] = {}
        # The answers with failed symbols, from the first to the next without: their
        # `feed.symbols_failed` warnings paced (see _note).
        self._failing = Outage(unit="answers")
        # Symbols the last bar's answer had no bar for (no error named them): see _note_missing.
        self._missing: dict[str, dict[str, Any]] = {}
        # Bars whose answer lacked them (late at the vendor): fetched again past the cache.
        self._late: deque[datetime] = deque(maxlen=64)
        # The rows served at each recent bar (the lookback span, bounded): a vendor that
        # publishes an action late, or corrects a price, re-serves the bar changed.
        self._served: dict[pd.Timestamp, pd.DataFrame] = {}
        self._revised: set[tuple[str, pd.Timestamp]] = set()
        self._restated: set[tuple[str, pd.Timestamp]] = set()
        # The symbols each recent bar was served without (missing or failed), and their bars
        # that a later answer had (late at the vendor): see _check_late.
        self._holes: dict[pd.Timestamp, set[str]] = {}
        self._late_rows: list[pd.DataFrame] = []
        self._held = HeldBars(source.name, self._open_ended(source))
        # The split and dividend of held bars that an answer kept (confirmed or repaired),
        # not served yet: carried to the symbol's next served bar (see _carry_actions), with
        # the bars they came from.
        self._carry: dict[str, tuple[float, float, list[str]]] = {}
        # What was carried at each recent bar served (the span `_holes` keeps): the engine
        # may discard a fetched bar and fetch it again (`_fetch_late`, `_recover_missed`),
        # and `bars(t)` answers the same again, the carried actions included.
        self._carried: dict[pd.Timestamp, dict[str, tuple[float, float, list[str]]]] = {}
        # The symbols whose newest bar repeated the previous one, by recent bar (said once).
        self._stale: dict[pd.Timestamp, set[str]] = {}
        self.last_bar: datetime | None = None
        self.last_fetch_at: datetime | None = None

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    @staticmethod
    def _open_ended(source: BarSource) -> float:
        """The spike threshold of `source`'s validation, which from now on leaves each
        symbol's newest bar to this feed and its first bar unjudged (`Validation.open_end`
        and `open_start`; the feed owns its source). A source without a `Validation` judges
        its answers itself: the default threshold."""
        validation = getattr(source, "validation", None)
        if not isinstance(validation, Validation):
            return DEFAULT_MAX_SPIKE
        source.validation = dataclasses.replace(  # type: ignore[attr-defined]
            validation, open_end=True, open_start=True
        )
        return float(validation.extra.get("max_spike", DEFAULT_MAX_SPIKE))

    async def start(self) -> None:
        for part in self._owned:
            await part.start()
        await self.source.start()

    async def stop(self) -> None:
        try:
            await self.source.stop()
        finally:
            for part in reversed(self._owned):
                await part.stop()

    def _window_start(self, t: datetime, bars: int | None = None) -> datetime:
        """The start of the window of `bars` bars (default `lookback_bars`) before t."""
        bars = self.lookback_bars if bars is None else bars
        if self.interval.daily:
            # Calendar days: weekends and holidays hold no bars.
            days = max(1, bars) * 7 // 5 + 4
            return t - timedelta(days=days)
        if self.calendar is not None:
            # Bars of the calendar: at a session's first bar the lookback reaches into the
            # last session (its closing bars, the likeliest to be posted late), not into the
            # night before it.
            try:
                back = self.calendar.bars_between(t - timedelta(days=5), t)
            except ValueError:
                back = []
            if len(back) > bars:
                return as_utc(back[-1 - bars])
        return t - self.interval.delta * bars

    def _session_bars_only(
        self, frame: pd.DataFrame, start: datetime, end: datetime
    ) -> pd.DataFrame:
        """Rows that are bars of the calendar: Alpaca answers minute timeframes with pre- and
        post-market bars (from 04:00 to 20:00 New York), which a warm-up stepped and stored,
        and whose features the first live bars then used, where a backtest and the live bars
        after have the session's bars only. Daily rows too: a source's bar on a day the
        calendar has no session (a holiday) was warmed up on and stored without a word,
        while the clock never releases that day and the 5-minute warm-up dropped it."""
        if self.calendar is None or frame.empty:
            return frame
        try:
            labels = self.calendar.bars_between(as_utc(start), as_utc(end))
        except ValueError:
            return frame
        keep = frame["time"].isin(pd.DatetimeIndex([naive_utc(x) for x in labels])).to_numpy()
        if not keep.all():
            self._say_outside_session(frame["time"].to_numpy(dtype="datetime64[ns]")[~keep])
            frame = frame[keep]
        return frame

    def _say_outside_session(self, times: np.ndarray) -> None:
        """`feed.outside_session_dropped` once per reason the calendar gives for the labels
        (`outside_sessions`; a row within a session but not a bar of it is `off_grid`): all
        were called extended hours, a holiday's bars and a half day's afternoon too."""
        why_of = getattr(self.calendar, "outside_sessions", None)
        why = (
            np.asarray(why_of(times), dtype=object)
            if callable(why_of) and not self.interval.daily
            else np.full(len(times), "outside_session", dtype=object)
        )
        if self.interval.daily:  # a session's label is its date at 00:00 UTC
            midnight = times == times.astype("datetime64[D]").astype(times.dtype)
            why[midnight] = "non_session_day"
            why[~midnight] = "off_grid"
        why[why == ""] = "off_grid"
        rank = {r: i for i, r in enumerate(_OUTSIDE_SESSION)}
        for reason in sorted(set(why.tolist()), key=lambda r: (rank.get(r, len(rank)), r)):
            mine = times[why == reason]
            log.info(
                "feed.outside_session_dropped",
                source=self.source.name,
                reason=reason,
                rows=len(mine),
                first=_fmt_time(pd.Timestamp(mine.min())),
                last=_fmt_time(pd.Timestamp(mine.max())),
                rule=f"bars {_OUTSIDE_SESSION.get(reason, reason)} are not traded or "
                "backtested: left out of the history",
            )

    def _note(self, result: FetchResult, now: datetime) -> None:
        self.last_fetch_at = now
        for s in self._symbols:
            err = result.errors.get(s)
            if err is None:
                self._failed.pop(s, None)
            else:
                self._failed[s] = {
                    "kind": err.kind,
                    "message": self.source.caller.redact(err.message),
                    "since": self._failed.get(s, {}).get("since", now.isoformat()),
                }
        self._say_failed(result, now)

    def _say_failed(self, result: FetchResult, now: datetime) -> None:
        """`feed.symbols_failed` for an answer with failed symbols, at the pace of an outage
        (core/outages.py, on the feed's clock): the first such answer of a run of them in
        full (a warning, as each was: twice a bar and more at 1-minute bars with the source
        down, a bar's release and its retries each one), the later ones debug lines, counted
        and said in the warning `feed.symbols_still_failing` once 5 minutes have passed
        since the last line, the wait doubling up to an hour; the next answer without a
        failed symbol ends it (`feed.symbols_recovered`, info). `status()["failed"]` and the
        source's metrics count every answer, as before."""
        if not result.errors:
            ended = self._failing.recovered(now)
            if ended is not None:
                log.info(
                    "feed.symbols_recovered",
                    source=self.source.name,
                    **ended.fields(),  # answers, symbol_failures: in all
                    last_error=ended.error,
                )
            return
        kinds = sorted({e.kind for e in result.errors.values()})
        fields: dict[str, Any] = {
            "source": self.source.name,
            "failed": len(result.errors),
            "of": len(self._symbols),
            "kinds": kinds,
            "symbols": sorted(result.errors)[:10],
        }
        error = f"{len(result.errors)} of {len(self._symbols)} symbols failed ({', '.join(kinds)})"
        due = self._failing.failed(now, error, symbol_failures=len(result.errors))
        if due is None:
            log.debug("feed.symbols_failed", **fields)
        elif due.first:
            log.warning(
                "feed.symbols_failed",
                **fields,
                then="the answers with failed symbols until one has none are counted and said "
                "in feed.symbols_still_failing (at most every "
                f"{duration_text(self._failing.repeat_max)}), its end in feed.symbols_recovered",
            )
        else:
            assert self._failing.since is not None
            log.warning(
                "feed.symbols_still_failing",
                **fields,
                since=self._failing.since,
                down_for=duration_text(now - self._failing.since),
                answers=self._failing.failures,
                symbol_failures=self._failing.counts.get("symbol_failures", 0),
                answers_since_last_line=due.since_last_line.get("answers", 0),
                symbol_failures_since_last_line=due.since_last_line.get("symbol_failures", 0),
                next_line_after=duration_text(due.next_after),
            )

    def _say_stale_repeats(self, t: pd.Timestamp, frame: pd.DataFrame, at: pd.DataFrame) -> None:
        """`data.suspect` (kind `stale_repeat`), once a symbol and bar: the rows of `at` (the
        bar t served) whose open, high, low, close and volume equal the symbol's previous bar
        in the answer (`frame`) exactly, with a volume above 0. A vendor serving the last
        session's row again for a session it has no data for yet looks like that; a session
        that traded the same prices and shares to the unit hardly ever does. Served as it
        came, as validation's suspect bars are (a hold would keep a good bar from the book
        too, and the next answer could not tell: a repeat stays a repeat); it was served and
        traded without a word."""
        older = frame[(frame["time"] < t).to_numpy()]
        if at.empty or older.empty:
            return
        fields = ["open", "high", "low", "close", "volume"]
        previous = older.sort_values("time", kind="stable").drop_duplicates("symbol", keep="last")
        both = at.merge(previous, on="symbol", suffixes=("", "_previous"))
        same = np.logical_and.reduce(
            [both[f].to_numpy() == both[f"{f}_previous"].to_numpy() for f in fields]
        ) & (both["volume"].to_numpy() > 0)
        said = self._stale.setdefault(t, set())
        fresh = [i for i in np.flatnonzero(same) if str(both["symbol"].iat[i]) not in said]
        if fresh:
            summary = RepairSummary()
            summary.suspect(
                "stale_repeat",
                [
                    {
                        "source": self.source.name,
                        "symbol": str(both["symbol"].iat[i]),
                        "time": _fmt_time(t),
                        "previous": _fmt_time(both["time_previous"].iat[i]),
                        "close": float(both["close"].iat[i]),
                        "volume": float(both["volume"].iat[i]),
                    }
                    for i in fresh
                ],
                len(fresh),
            )
            summary.log(self.source.name)
            said.update(str(both["symbol"].iat[i]) for i in fresh)
        keep = max(8, self.lookback_bars + 2)  # as `_served`
        for old in [k for k, v in self._stale.items() if not v]:
            del self._stale[old]
        for old in sorted(self._stale)[:-keep]:
            del self._stale[old]

    def _check_revisions(self, t: pd.Timestamp, frame: pd.DataFrame, at: pd.DataFrame) -> None:
        """The bars of the answer older than t, against what was served for them (the
        feed's recent bars, bounded), once a bar and symbol each:
        - a split or dividend that appears on a bar already served (a vendor that publishes
          an action a day late) is an error (`data.revised`): the engine applied the bar
          without it, so the book's shares (a simulated broker's) and the features are wrong
          from that bar. Restarting warms up again from the vendor's history, which then has
          it; the Alpaca book is reconciled from the broker;
        - a price or volume the vendor restated (a correction) is a warning
          (`data.restated`): the live decisions, features and stored bars used the served
          value, a restart's warm-up and a backtest of the vendor's history use the new
          one, and nothing tied a later replay-check difference to the vendor.
        Compared in arrays (the lookback's rows of the whole universe at every live bar),
        not row by row."""
        older = frame[frame["time"] < t]
        if self._served and not older.empty:
            served = pd.concat(self._served.values(), ignore_index=True)
            both = older.merge(served, on=["time", "symbol"], suffixes=("", "_served"))
            if not both.empty:
                self._said_revised(both)
                self._said_restated(both)
        self._served[t] = at.loc[:, ["time", "symbol", *_SERVED_FIELDS]].reset_index(drop=True)
        keep = max(8, self.lookback_bars + 2)
        for old in sorted(self._served)[:-keep]:
            del self._served[old]
        self._revised = {k for k in self._revised if k[1] in self._served}
        self._restated = {k for k in self._restated if k[1] in self._served}

    def _said_revised(self, both: pd.DataFrame) -> None:
        """`data.revised` (see `_check_revisions`) for the rows of `both` (an answer's older
        bars beside their served values, `<field>_served`) whose split or dividend changed."""
        split, div = both["split"].to_numpy(), both["dividend"].to_numpy()
        was_split, was_div = both["split_served"].to_numpy(), both["dividend_served"].to_numpy()
        changed = (np.abs(split - was_split) > 1e-9) | (np.abs(div - was_div) > 1e-9)
        for i in np.flatnonzero(changed):
            sym, when = str(both["symbol"].iat[i]), both["time"].iat[i]
            if (sym, when) in self._revised:
                continue
            self._revised.add((sym, when))
            log.error(
                "data.revised",
                source=self.source.name,
                symbol=sym,
                bar=when.isoformat(),
                served={"split": float(was_split[i]), "dividend": float(was_div[i])},
                now={"split": float(split[i]), "dividend": float(div[i])},
                rule="the vendor changed a corporate action of a bar already traded: the "
                "book's shares and the features are wrong from that bar; restart to warm "
                "up again from the vendor's history, and check the symbol's position",
            )

    def _said_restated(self, both: pd.DataFrame) -> None:
        """`data.restated` (see `_check_revisions`) for the rows of `both` whose price moved
        by more than RESTATED_PRICE_TOLERANCE, or volume by more than
        RESTATED_VOLUME_TOLERANCE, from the value served."""
        changed: dict[str, np.ndarray] = {}
        for name, tolerance in _RESTATED_TOLERANCES:
            now, was = both[name].to_numpy(), both[f"{name}_served"].to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                changed[name] = np.abs(now - was) > tolerance * np.abs(was)
        rows = np.flatnonzero(np.logical_or.reduce(list(changed.values())))
        for i in rows:
            sym, when = str(both["symbol"].iat[i]), both["time"].iat[i]
            if (sym, when) in self._restated:
                continue
            self._restated.add((sym, when))
            # A volume completed by late reports is routine (most intraday bars): said, at
            # info; a price corrected after it was traded is the warning.
            priced = any(changed[name][i] for name, _ in _RESTATED_TOLERANCES[:4])
            (log.warning if priced else log.info)(
                "data.restated",
                source=self.source.name,
                symbol=sym,
                bar=when.isoformat(),
                fields={
                    name: {
                        "served": float(both[f"{name}_served"].iat[i]),
                        "now": float(both[name].iat[i]),
                    }
                    for name, moved in changed.items()
                    if moved[i]
                },
                rule="the vendor corrected a bar already traded: the live decisions, "
                "features and stored bars used the served value, a restart's warm-up and a "
                "backtest of the vendor's history use the new one (replay-check differs "
                "from that bar on); nothing is changed in the run",
            )

    def _check_late(
        self, t: pd.Timestamp, frame: pd.DataFrame, window: pd.DataFrame, at: pd.DataFrame
    ) -> None:
        """A symbol's bar that a later answer has, though its bar was served without it (the
        vendor posted it late, or its fetch failed then): the live run decided that bar
        without it, its features and fills went on without it, and nothing said so while a
        backtest of the vendor's history has it. Said (`feed.bar_late`), and kept for the
        engine to store (`take_late_bars`): the stored bars are the vendor's, and
        replay-check then shows what the bar would have changed. Not stepped: the bar's
        decisions are made. A bar the engine gave up (`bar_lost`) is a hole of every symbol,
        looked for the same way. A hole is looked for while the answers' lookback reaches it
        (`lookback_bars` bars), and forgotten `_holes_kept()` bars on: the live run does
        not store a bar posted later than that.
        `frame` is the whole answer, in which the held bars are judged;
        `window` the answer without each symbol's first bar (not judged: a neighbour only),
        in which late bars are looked for."""
        holes = self._holes
        judged = set(self._held.pending)
        self._keep_judged(self._held.judge(frame))
        for sym, when in judged - set(self._held.pending):  # decided: never late
            holes.get(when, set()).discard(sym)
        if holes:
            older = window[window["time"] < t]
            pending = self._held.pending  # held bars not judged yet: not late, not stored
            late = older[
                [
                    sym in holes.get(when, ()) and (sym, when) not in pending
                    for sym, when in zip(older["symbol"], older["time"], strict=True)
                ]
            ]
            if not late.empty:
                for sym, when in zip(late["symbol"], late["time"], strict=True):
                    holes[when].discard(sym)
                self._store_late([late])
                acts = late[(late["split"] != 1.0) | (late["dividend"] != 0.0)]
                for sym, when, split, div in zip(
                    acts["symbol"], acts["time"], acts["split"], acts["dividend"], strict=True
                ):
                    # As data.revised: the book never got this split or dividend.
                    log.error(
                        "data.late_action",
                        source=self.source.name,
                        symbol=sym,
                        bar=when.isoformat(),
                        split=float(split),
                        dividend=float(div),
                        rule="a bar posted late carries a corporate action the run never "
                        "applied: the book's shares (a simulated broker's) and the features "
                        "are wrong from that bar; restart to warm up again from the vendor's "
                        "history, and check the symbol's position",
                    )
                log.warning(
                    "feed.bar_late",
                    source=self.source.name,
                    bars=[
                        f"{sym} {when.isoformat()}"
                        for sym, when in zip(late["symbol"][:10], late["time"][:10], strict=True)
                    ],
                    count=len(late),
                    rule="the answer has a bar its release was served without, or that was "
                    "never served (bar.lost): the live decisions of that bar went without "
                    "it; stored, not traded on",
                )
        have = set(at["symbol"].tolist())
        holes[t] = {s for s in self._symbols if s not in have}
        self._trim_holes()
        self._held.give_up_before(min(holes))

    def _trim_holes(self) -> None:
        """Keep the holes of the newest `_holes_kept()` bars: older ones are out of every
        answer's lookback, so no answer can fill them."""
        for old in sorted(self._holes)[: -self._holes_kept()]:
            del self._holes[old]

    def _holes_kept(self) -> int:
        """How many recent bars' holes are looked for: the lookback and two more (8 at
        least), the span the feed's other per-bar records keep (`_served`, `_carried`)."""
        return max(8, self.lookback_bars + 2)

    def _keep_judged(self, kept: list[pd.DataFrame]) -> None:
        """The held bars an answer kept (`HeldBars.judge`): stored as late bars, and their
        split and dividend carried to the symbol's next served bar (`_carry`)."""
        self._store_late(kept)  # the store's (a dropped one: none)
        for row in kept:  # one row each: its split and dividend go to the next served bar
            sym, when = str(row["symbol"].iat[0]), row["time"].iat[0]
            split, div = float(row["split"].iat[0]), float(row["dividend"].iat[0])
            if split != 1.0 or div != 0.0:
                s0, d0, bars = self._carry.get(sym, (1.0, 0.0, []))
                s1, d1 = carry_action((s0, d0), split, div)
                self._carry[sym] = (s1, d1, [*bars, when.isoformat()])

    def held_state(self) -> dict[str, Any] | None:
        """For the engine's checkpoint: the held bars not judged yet and the actions not
        carried yet. A restart between a held bar (stepped as no bar, covered by the
        checkpoint, so replayed without the book) and the answer that judges it had its
        warm-up judge it normally, and its split or dividend never reached the book."""
        if not self._held.pending and not self._carry:
            return None
        return {
            "held": [
                [sym, when.isoformat(), list(h.prices), h.previous_close, h.split, h.dividend]
                for (sym, when), h in self._held.pending.items()
            ],
            "carry": {sym: [s, d, list(bars)] for sym, (s, d, bars) in self._carry.items()},
        }

    def restore_held(self, state: dict[str, Any] | None, through: datetime | None = None) -> None:
        """The checkpoint's `held_state`: the held bars are judged by the warm-up's history
        (`history`) or the first live answers, as they would have been, and the kept ones'
        actions carried to the symbol's next bar served; the pending carries stay pending.
        `through`: the checkpoint's bar. A held bar after it (a warm-up's history held its
        newest bar, then a stop mid-catch-up checkpointed an earlier bar) is not restored:
        the restart's warm-up steps that bar with the book itself, and carrying its action
        too applied it twice (`feed.held_not_restored`)."""
        if not state:
            return
        mine = set(self._symbols)
        limit = naive_utc(through) if through is not None else None
        later: list[str] = []
        for sym, when, prices, previous, split, div in state.get("held", []):
            if limit is not None and pd.Timestamp(when) > limit:
                later.append(f"{sym} {when}")
                continue
            if sym in mine:
                self._held.pending[(sym, pd.Timestamp(when))] = Held(
                    tuple(float(p) for p in prices),  # type: ignore[arg-type]
                    float(previous),
                    float(split),
                    float(div),
                )
        for sym, (split, div, bars) in state.get("carry", {}).items():
            if sym in mine:
                self._carry[sym] = (float(split), float(div), [str(b) for b in bars])
        if later:
            log.info(
                "feed.held_not_restored",
                source=self.source.name,
                bars=later,
                rule="after the checkpoint's bar: the warm-up steps these with the book",
            )
        log.info(
            "feed.held_restored",
            source=self.source.name,
            held=[f"{k[0]} {k[1].isoformat()}" for k in self._held.pending],
            carry=sorted(self._carry),
        )

    def _carry_actions(self, t: pd.Timestamp, at: pd.DataFrame) -> pd.DataFrame:
        """`at` (the rows served at bar `t`) with the carried actions (`_carry`) of its
        symbols combined into their split and dividend (`suspect.carry_action`), each said
        (`feed.held_action_carried`). The rows as the vendor has them stay the served ones
        (later answers are compared with them) and go to the store after the bar
        (`take_late_bars`, an upsert of the bar the engine stored): the held bar is stored
        with its own action, so a replay of the stored bars applies it once, at its bar.
        What is carried at `t` is kept (`_carried`, the recent bars): the same `t` served
        again (the engine discarded the first answer and fetched it again) carries it again
        (`feed.held_action_reserved`; the engine steps a bar once). A symbol that the new
        answer has no row at `t` for gets it back in `_carry`, for its next bar served."""
        before = self._carried.pop(t, {})
        have = set(at["symbol"].tolist())
        for sym in [s for s in before if s not in have]:
            self._carry_on(
                sym,
                before.pop(sym),
                t,
                "the bar served again has no row for the symbol: its carried action goes to "
                "the symbol's next bar served",
            )
        carried: dict[str, tuple[float, float, list[str]]] = {}
        mine = at["symbol"].isin([*self._carry, *before]).to_numpy()
        if at.empty or not mine.any():
            return at
        out = at.copy()
        cols = np.flatnonzero(mine)
        split_col, div_col = out.columns.get_loc("split"), out.columns.get_loc("dividend")
        for i in cols:
            sym = str(out["symbol"].iat[i])
            again, new = before.get(sym), self._carry.pop(sym, None)
            if again is not None and new is not None:
                s0, d0 = carry_action(again[:2], new[0], new[1])
                held = (s0, d0, [*again[2], *new[2]])
            elif again is not None:
                held = again
            else:
                assert new is not None  # `mine`: in one of them
                held = new
            carried[sym] = held
            s0, d0, bars = held
            split, div = float(out["split"].iat[i]), float(out["dividend"].iat[i])
            new_split, new_div = carry_action((s0, d0), split, div)
            out.iat[i, split_col] = new_split
            out.iat[i, div_col] = new_div
            said = {
                "source": self.source.name,
                "symbol": sym,
                "held_bars": bars,
                "bar": pd.Timestamp(out["time"].iat[i]).isoformat(),
                "held": {"split": s0, "dividend": d0},
                "served": {"split": new_split, "dividend": new_div},
            }
            if again is not None:
                log.info(
                    "feed.held_action_reserved",
                    **said,
                    rule="the bar is served again (the engine fetched it again): the action "
                    "carried to it is carried again; the engine steps the bar once",
                )
                continue
            log.warning(
                "feed.held_action_carried",
                **said,
                rule="a held-back bar (served as no bar) carried a corporate action: applied "
                "at this bar, the symbol's next one served (a bar late, as its prices); the "
                "dividend is per share after this bar's split",
            )
        self._carried[t] = carried
        keep = max(8, self.lookback_bars + 2)  # as `_holes`
        for old in sorted(self._carried)[:-keep]:
            del self._carried[old]
        self._store_late([at.iloc[cols]])
        return out

    def _carry_on(
        self, sym: str, held: tuple[float, float, list[str]], t: pd.Timestamp, rule: str
    ) -> None:
        """`held`, carried to bar `t` that will not reach the book with it, back in `_carry`
        for the symbol's next bar served, before any action carried since (it is older)."""
        s0, d0, bars = held
        if sym in self._carry:
            s1, d1, later = self._carry[sym]
            s0, d0 = carry_action((s0, d0), s1, d1)
            bars = [*bars, *later]
        self._carry[sym] = (s0, d0, bars)
        log.warning(
            "feed.held_action_carried_on",
            source=self.source.name,
            symbol=sym,
            held_bars=bars,
            bar=t.isoformat(),
            held={"split": s0, "dividend": d0},
            rule=rule,
        )

    def bar_lost(self, t: datetime) -> None:
        """The engine will never step bar `t` (`bar.lost`: not delivered before a newer
        one): the actions carried to it go to each symbol's next bar served. Kept only in
        `_carried` (for `t` served again), they were trimmed away and never booked.

        The bar is a hole of every symbol (`_check_late`): a later answer that has it (the
        vendor posted it after the engine gave up) stores it, not traded on, with
        `feed.bar_late`. Only bars served recorded holes, so a bar late for every symbol was
        never stored, while one late for a single symbol was."""
        when = naive_utc(t)
        with contextlib.suppress(ValueError):
            self._late.remove(as_utc(t))  # not asked for again: no fresh read to keep for
        self._holes.setdefault(when, set()).update(self._symbols)
        self._trim_holes()
        for sym, held in self._carried.pop(when, {}).items():
            self._carry_on(
                sym,
                held,
                when,
                "the bar it was carried to was never stepped (bar.lost): the action goes to "
                "the symbol's next bar served",
            )

    def _store_late(self, rows: list[pd.DataFrame]) -> None:
        """Rows for the engine to store (`take_late_bars`), bounded: an engine that does not
        record bars (`storage.record_bars` off) never takes them, and each kept held bar and
        carried action added one for the life of the daemon. Bounded in rows, not frames
        (a frame is one row or a whole answer's late bars); what the bound drops is said
        (`feed.late_rows_dropped`): an engine that records bars takes them every bar, so
        there it means stored bars missing."""
        self._late_rows.extend(r for r in rows if not r.empty)
        total = sum(len(r) for r in self._late_rows)
        dropped = 0
        while total > _LATE_ROWS_KEPT and len(self._late_rows) > 1:
            n = len(self._late_rows.pop(0))
            total -= n
            dropped += n
        if dropped:
            log.warning(
                "feed.late_rows_dropped",
                source=self.source.name,
                rows=dropped,
                kept=total,
                rule="late and held bars kept for the store, never taken (storage.record_bars "
                "off, or none stored for many bars): the oldest are not stored",
            )

    def take_late_bars(self) -> list[CrossSection]:
        """The late bars `_check_late` found since the last call, one cross-section per bar
        time (NaN for the symbols that were not late), for the engine to store."""
        if not self._late_rows:
            return []
        rows = pd.concat(self._late_rows, ignore_index=True)
        self._late_rows = []
        out = []
        for when, group in rows.groupby("time", sort=True):
            arrays = self._arrays(group)
            out.append(CrossSection(time=as_utc(pd.Timestamp(when).to_pydatetime()), **arrays))
        return out

    def _arrays(self, at: pd.DataFrame) -> dict[str, np.ndarray]:
        """The universe's arrays of one bar's rows (NaN, split 1 and dividend 0 where a
        symbol has no row), read-only."""
        n = len(self._symbols)
        arrays = {name: np.full(n, fill) for name, fill in _NO_BAR}
        cols = np.searchsorted(np.array(self._symbols, dtype=object), at["symbol"].to_numpy())
        for name, arr in arrays.items():
            arr[cols] = at[name].to_numpy(dtype=np.float64)
        # Read-only for good, as a replay's bars (`read_only_copy`): the history keeps the
        # bar, and a plugin writing into it would change every later window. A flag alone
        # was undone by `ctx.bar.close.setflags(write=True)` (a fresh array owns its memory).
        return {name: read_only_copy(arr) for name, arr in arrays.items()}

    def _note_missing(
        self, t: datetime, at: pd.DataFrame, result: FetchResult, now: datetime
    ) -> None:
        """Symbols the answer had no bar t for, though it had for others and no error named
        them: served as NaN (no bar), as a halt would be, but not silently. They were not
        in `status()` (the README says a symbol the source cannot deliver shows in /ready),
        and nothing was logged, while the history went on without their bar."""
        have = set(at["symbol"].tolist())
        missing = [s for s in self._symbols if s not in have and s not in result.errors]
        # Shown, not failing readiness: a halted or delisted symbol has no bar either, for
        # days or for good, and /ready would fail all that time (`status()["missing"]`).
        self._missing = {
            s: {
                "message": f"the answer had no bar {t.isoformat()} for it",
                "since": self._missing.get(s, {}).get("since", now.isoformat()),
            }
            for s in missing
        }
        if missing:
            log.warning(
                "feed.bar_missing",
                source=self.source.name,
                time=t,
                symbols=missing[:10],
                count=len(missing),
                of=len(self._symbols),
                rule="served as no bar (NaN) for these symbols; a halt looks the same",
            )

    def _raise_if_all_failed(
        self,
        result: FetchResult,
        what: str,
        window: tuple[datetime, datetime] | None = None,
        now: datetime | None = None,
    ) -> None:
        """Raise when no symbol could be fetched: SourceRefused for what the operator must fix
        (keys, plan; with `window`, a history every symbol of which the vendor refuses for
        good), else RetryableError (a bar late; a warm-up tried again)."""
        if len(result.errors) < len(self._symbols):
            return
        kinds = sorted({e.kind for e in result.errors.values()})
        first = next(iter(result.errors.values()))
        msg = (
            f"{self.source.name}: no symbol could be fetched for {what} "
            f"(kinds: {', '.join(kinds)}; e.g. {self.source.caller.redact(first.message)})"
        )
        if kinds == ["auth"]:
            raise SourceRefused(msg + "; check the credentials of the source")
        if "blocked" in kinds:
            # Yahoo's 401/403: retried (a bar late), the breaker pacing the requests. It was
            # `auth`, fatal: the daemon exited over a gate no configuration opens.
            raise RetryableError(
                msg + "; the source needs no credentials: it refuses the requests itself "
                "(HTTP 401/403: Yahoo's cookie-and-crumb gate, or a block of this address); "
                "asked again with backoff, its circuit breaker pausing calls meanwhile"
            )
        if set(kinds) <= {"auth", "plan"}:
            # A premium function on a free key, the demo key: retried each bar, and each
            # warm-up attempt, for good, spending the day's request budget.
            raise SourceRefused(
                msg + "; the source's plan or key does not serve this request (a premium "
                "function, e.g. feed.alphavantage.adjusted = true on a free key, or the demo "
                "key): change the configuration or the key"
            )
        if window is not None and all(e.permanent for e in result.errors.values()):
            # A warm-up the vendor answers the same way every time (a 422 for a window older
            # than it keeps, unknown symbols, Alpha Vantage's "Error Message"): retried, it
            # was retried for ever (the engine's `_warm_up` retries RetryableError), and the
            # daemon never went live nor said why. In the loop a bar's failure stays
            # RetryableError: the next bar asks again, and a vendor's passing 404s must not
            # stop a running daemon.
            raise SourceRefused(self._refused_for_good(kinds, first, window, now))
        raise RetryableError(msg)

    def _refused_for_good(
        self,
        kinds: list[str],
        first: SourceError,
        window: tuple[datetime, datetime],
        now: datetime | None,
    ) -> str:
        """What the operator reads when the vendor refuses a warm-up for good: the vendor,
        the request, its answer, and what to change."""
        start, end = window
        name = self.source.name
        head = (
            f"{name} refuses the {self.interval.name} bars from {start.isoformat()} to "
            f"{end.isoformat()} for every symbol, and answers the same every time (kinds: "
            f"{', '.join(kinds)}; e.g. {self.source.caller.redact(first.message)})"
        )
        limit_of = getattr(self.source, "history_limit", None)
        limit = limit_of(self.interval) if callable(limit_of) else None
        if limit is not None and now is not None and start < now - limit:
            return (
                f"{head}: {name} serves {self.interval.name} bars of the last {limit.days} "
                f"days only, and this warm-up starts {(now - start).days} days back; lower "
                "live.warmup_bars, use a longer bar (live.bar) or a source that keeps more "
                "history (feed.source); after a long stop, a new run (another run.name) "
                "warms up from now instead of from the old run's checkpoint"
            )
        if kinds == ["not_found"]:
            return (
                f"{head}: {name} knows none of the symbols; check data.symbols (the vendor's "
                "spelling, e.g. BRK-B on Yahoo) or use another source (feed.source)"
            )
        return (
            f"{head}: asking again cannot help; check data.symbols, live.bar and the warm-up "
            "(live.warmup_bars) against what the source serves, or use another source "
            "(feed.source)"
        )

    def _close(self, t: datetime) -> datetime | None:
        """When bar t closes; None when the calendar says there is no such bar."""
        if self.calendar is not None:
            try:
                return as_utc(self.calendar.close_of(t))
            except ValueError:
                return None
        return bar_close(t, self.interval, self.session)

    def _expects_bar(self, t: datetime) -> bool:
        if self._is_session is not None:
            return bool(self._is_session(t))
        return self.calendar is not None  # the calendar knew t as a bar (else no fetch)

    async def bars(self, t: datetime) -> CrossSection | None:
        t = as_utc(t)
        now = as_utc(self._clock())
        close = self._close(t)
        if close is None:
            return None  # a holiday or weekend of the exchange's calendar: no bar exists
        if close > now:
            raise RetryableError(
                f"{self.source.name}: bar {t.isoformat()} closes at {close.isoformat()}, "
                f"not yet closed at {now.isoformat()}"
            )
        # A bar this feed found missing before: the answer without it is in the cache (a
        # closed window's answer is kept for cache.expiry_s), so ask the vendor again.
        late = t in self._late
        # One bar more than the window (and 2 at least): the neighbour of its first bar.
        start = self._window_start(t, max(self.lookback_bars, 1) + 1)
        with fresh_reads() if late else contextlib.nullcontext():
            result = await self.source.fetch(self._symbols, self.interval, start, t, now=now)
        self._note(result, now)
        self._raise_if_all_failed(result, f"bar {t.isoformat()}")
        at = result.frame[result.frame["time"] == naive_utc(t)]
        if at.empty:
            if self._expects_bar(t):
                if not late:
                    self._late.append(t)
                raise RetryableError(
                    f"{self.source.name}: no bar yet for session {t.isoformat()} "
                    f"({len(result.errors)} symbol(s) failed)"
                )
            return None
        if late:
            self._late.remove(t)
        self._note_missing(t, at, result, now)
        self._say_stale_repeats(naive_utc(t), result.frame, at)
        at = self._held.hold(at)
        window = _without_first_bars(result.frame)
        self._check_revisions(naive_utc(t), window, at)
        self._check_late(naive_utc(t), result.frame, window, at)
        arrays = self._arrays(self._carry_actions(naive_utc(t), at))
        self.last_bar = t
        return CrossSection(time=t, **arrays)

    async def history(self, start: datetime, end: datetime) -> Panel:
        """Every closed bar with a label in [start, end] for the universe (NaN columns for
        symbols that failed, which `status()` lists). Raises like `bars` when all failed."""
        now = as_utc(self._clock())
        # From a bar before `start`: the neighbour the first bar is judged with (see `bars`).
        result = await self.source.fetch(
            self._symbols, self.interval, self._window_start(as_utc(start), 1), as_utc(end), now=now
        )
        self._note(result, now)
        self._raise_if_all_failed(
            result,
            f"history {as_utc(start).isoformat()}..",
            window=(as_utc(start), as_utc(end)),
            now=now,
        )
        frame = result.frame[result.frame["time"] >= naive_utc(start)]
        frame = self._session_bars_only(frame, start, end)
        # Held bars a checkpoint restored that this history judges (kept: carried on).
        self._keep_judged(self._held.judge(result.frame))
        kept = self._held.hold(frame)
        for sym, when in self._held.pending:  # judged by the first live bars' answers
            self._holes.setdefault(when, set()).add(sym)
        self._say_no_bars(kept, result, start, end)
        return panel_of(kept, self._symbols)

    def _say_no_bars(
        self, kept: pd.DataFrame, result: FetchResult, start: datetime, end: datetime
    ) -> None:
        """`feed.no_bars_in_window`, a warning naming the symbols the answer had no bar of
        in [start, end] without failing (a symbol the vendor does not serve under that name,
        a listing after the window): each became an all-NaN column of the warm-up without a
        word (the failed ones are said by `feed.symbols_failed` and `status()`)."""
        have = set(kept["symbol"].astype(str)) if not kept.empty else set()
        none = [s for s in self._symbols if s not in have and s not in result.errors]
        if none:
            log.warning(
                "feed.no_bars_in_window",
                source=self.source.name,
                symbols=none[:10],
                count=len(none),
                of=len(self._symbols),
                start=as_utc(start).isoformat(),
                end=as_utc(end).isoformat(),
                rule="the source answered without any bar of these symbols in the window: "
                "no bars (NaN) for them until it serves some; check data.symbols against the "
                "names the source uses, or whether they traded then",
            )

    def status(self) -> dict[str, Any]:
        """For the health server (`health.status_check` reads `ok`, `circuit`, `last_error`
        and `detail`): the source's health and the symbols failing now."""
        caller = self.source.status()
        failed = dict(self._failed)
        ok = bool(caller.get("ok", False)) and not failed
        if failed:
            shown = ", ".join(f"{s} ({v['kind']})" for s, v in sorted(failed.items())[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            detail = f"{len(failed)} of {len(self._symbols)} symbols failing: {shown}{more}"
        elif ok:
            detail = _retrying_detail(caller) if caller.get("retrying") else "ok"
        else:
            detail = _failing_detail(caller)
        if self._missing:
            names = ", ".join(sorted(self._missing)[:5])
            more = f" and {len(self._missing) - 5} more" if len(self._missing) > 5 else ""
            detail += f"; no bar for {len(self._missing)} (halted or late?): {names}{more}"
        return {
            "ok": ok,
            "detail": detail,
            "circuit": caller.get("circuit"),
            "last_error": caller.get("last_error"),
            "source": self.source.name,
            "interval": self.interval.name,
            "symbols": len(self._symbols),
            "last_bar": self.last_bar.isoformat() if self.last_bar else None,
            "last_fetch": self.last_fetch_at.isoformat() if self.last_fetch_at else None,
            "failed": failed,
            "missing": dict(self._missing),
            "caller": caller,
        }
