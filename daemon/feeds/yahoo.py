"""Yahoo Finance chart API v8 over aiohttp: raw bars with splits and dividends.

Request: `GET {base_url}/v8/finance/chart/{symbol}?interval=..&period1=..&period2=..`
(`&events=div|split`)
(`range=` for the research API's periods), with a browser-like User-Agent; no auth, no crumb.
The base URL is a parameter, so tests point the real client at a loopback server.
A `period1`..`period2` window longer than one request may span (1m: 7 days, however recent:
Yahoo's 422 "Only 7 days worth of 1m granularity data are allowed to be fetched per request")
is asked for in chunks within it, oldest first, consecutive ones sharing a bar, and the
answers stitched into one before parsing (`chunk_windows`, `stitch_results`): a bar at a seam
is served once. How far back Yahoo keeps an interval (1m: 30 days) is another limit, which
chunks do not lift: the oldest chunk's 422 names it (`history_limit` for the feed's message).

Answers (see /work/shared/fixtures/README.md, section 1):
  404 (unknown symbol)            -> SourceError kind `not_found`, not retried
  400 (bad interval), 422 (range) -> kind `http_4xx` with Yahoo's description, not retried
  429 (text "Too Many Requests")  -> kind `http_429`, retried with backoff
  401/403 ("Invalid Crumb", an
  "Unauthorized" envelope)        -> kind `blocked`, retried with backoff (the breaker counts
                                     it): Yahoo's cookie-and-crumb gate or a block of this
                                     address; there is no key of the operator's to fix
  5xx, "Will be right back"       -> kind `http_5xx`, retried
  200 that is not the chart JSON  -> kind `malformed`, retried; so is one whose `meta`,
                                     `indicators` or trading period is not an object, whose
                                     time zone names none, or whose stamps (bars, events,
                                     the session's end) are not epoch seconds in 1900..2200
                                     (milliseconds), each naming the field
  200 with `timestamp` absent     -> no bars (a weekend or holiday window), not an error
  `null` bars (a lunch break)     -> skipped (counted in a debug log line); a split or dividend
                                     dated on a skipped day goes to the next bar (a warning)
  a split without a date, or a
  ratio that is not a number (or
  not positive)                   -> kind `malformed` naming the event and field
  such a dividend (or a negative
  amount)                         -> left out, a warning naming it (yahoo.dividend_refused)

Prices: Yahoo's OHLC are split-adjusted (to today's share count) for every bar before a split,
and so are its volumes and dividend amounts. `parse_chart` undoes that with the split events:
a bar of session date d is multiplied by F(d), the product of the ratios of every split after
d (volume divided by F, dividends multiplied by F(ex-date)), and rounded to `priceHint`
decimals, which recovers the traded tick. The split ratio is put on its ex-date bar (`split`)
and the dividend on its ex-date bar (`dividend`), as in stored data; when Yahoo has no bar that
day (a null bar), on the next bar (`_place_actions`). Because Yahoo adjusts for
splits up to *today*, a window that ends before today also asks for the split events between
its end and now (one small extra request), so old windows come out raw too. `adjclose` is not
used: the engine applies dividends itself.

Labels: a daily bar is stamped at the session open (09:30 New York, 09:00 Tokyo) in epoch
seconds; it is labelled by its session date in the exchange's time zone
(`meta.exchangeTimezoneName`). An intraday bar is labelled by its start in UTC. The live
session's last bar is stamped `regularMarketTime`: an intraday one (volume 0 and O=H=L=C, or
off the interval grid) is dropped; a daily one is served only once the session has closed
(`meta.currentTradingPeriod.regular.end` when it is that session, else the `Session` close),
and not while the answer itself shows that session trading (its bar stamped with a last
trade before that end) whatever the local clock says: a clock ahead of Yahoo's is said
(`yahoo.clock_ahead`, by how much) and the bar is asked for again.
Bars not closed are left out before the splits and dividends are placed: an action on (or
carried to) such a bar waits for it (`yahoo.event_pending`), as one after the last bar does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError
from ..logs import Once
from .resilience import (
    ResilientCaller,
    SourceConfig,
    SourceError,
    error_for_status,
    make_error,
    response_text,
)
from .response_cache import ResponseCache, cache_key
from .suspect import carry_action
from .validate import _fmt_time
from .vendor import (
    FetchResult,
    Interval,
    Session,
    Validation,
    as_utc,
    bar_close,
    closed_only,
    empty_raw,
    fetched_each,
    in_window,
    last_closed_label,
    parse_interval,
    utc_now,
    zone_name,
)

log = structlog.get_logger(__name__)

SOURCE = "yahoo"
DEFAULT_BASE_URL = "https://query2.finance.yahoo.com"
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
RANGES = ("1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max")
# How far back Yahoo serves intraday bars (minutes -> days): older windows get a 422 ("The
# requested range must be within the last 60 days"), every time.
INTRADAY_HISTORY_DAYS = {1: 30, 5: 60, 15: 60, 30: 60, 60: 730}
# The longest window one request may span (minutes -> days), however recent: Yahoo answers
# a longer 1m window with a 422 ("Only 7 days worth of 1m granularity data are allowed to be
# fetched per request"). `fetch_symbol` asks for a longer window in chunks (`chunk_windows`).
# The other intervals' span is their history above, so one request covers any window Yahoo
# serves at all.
REQUEST_SPAN_DAYS = {1: 7}
# The epoch seconds a stamp of Yahoo's may have (1900-01-01 .. 2200-01-01 UTC): beyond them
# (milliseconds: the year 52636) pandas could not localize it, and the answer was taken for
# a bug of ours (`internal`, with a traceback). Before 1970 too: Yahoo's daily history goes
# back to 1962 (IBM), stamped with negative epoch seconds.
EPOCH_MIN = -2_208_988_800
EPOCH_MAX = 7_258_118_400


def _object(value: Any, where: str) -> dict[str, Any]:
    """`value` when an object, {} when absent (None); a ValueError naming `where` else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object: {value!r:.40}")
    return value


def _meta(result: dict[str, Any]) -> dict[str, Any]:
    return _object(result.get("meta"), "meta")


def _timezone(meta: dict[str, Any], default: str) -> str:
    """`meta.exchangeTimezoneName` (`default` when absent), a ValueError when it names no
    time zone."""
    name = meta.get("exchangeTimezoneName")
    if name is None or name == "":
        return default
    return zone_name(name, "meta.exchangeTimezoneName")


def _epoch_bounds_error(where: str, value: Any) -> ValueError:
    return ValueError(
        f"{where} {value!r:.40} is not a time in epoch seconds between 1900 and 2200"
        " (milliseconds?)"
    )


def _epoch(value: float, where: str) -> float:
    """`value` when a plausible epoch in seconds; a ValueError naming `where` else."""
    if not EPOCH_MIN <= value <= EPOCH_MAX:
        raise _epoch_bounds_error(where, value)
    return value


def _stamps(stamps: list[Any]) -> np.ndarray:
    """`timestamp` as int64 epoch seconds; a ValueError naming the first implausible one
    (a null, a true, a list or a text is no stamp: null was int()'s TypeError, naming no
    field, and true was read as 1970-01-01 and its bar dropped outside the window)."""
    for i, stamp in enumerate(stamps):
        if isinstance(stamp, bool) or not isinstance(stamp, int | float):
            raise ValueError(f"timestamp[{i}] {stamp!r:.40} is not a number of epoch seconds")
    values: np.ndarray
    try:
        ts = values = np.asarray(stamps, dtype=np.int64)
    except OverflowError:  # beyond int64: out of bounds, found as floats
        values = np.asarray(stamps, dtype=np.float64)
    bad = np.flatnonzero(~((values >= EPOCH_MIN) & (values <= EPOCH_MAX)))
    if len(bad):
        i = int(bad[0])
        raise _epoch_bounds_error(f"timestamp[{i}] ({len(bad)} of {len(values)})", stamps[i])
    return ts


def _values(quote: dict[str, Any], name: str, n: int) -> np.ndarray:
    values = quote.get(name)
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"indicators.quote[0].{name} is not a list of {n} values")
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
        dtype=np.float64
    )


def _number(ev: dict[str, Any], name: str, where: str) -> float:
    """`ev[name]` as a finite number, or a ValueError naming the field (a malformed answer)."""
    value = ev.get(name)
    if value is None or isinstance(value, bool):
        raise ValueError(f"{where} has no {name} ({value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise ValueError(f"{where}.{name} is not a number: {value!r:.40}")
    return number


def _raw_items(result: dict[str, Any], kind: str) -> list[tuple[str, Any]]:
    """(epoch-string key, event as sent) of each event of `kind` ("splits" or "dividends");
    a ValueError when the events' containers are not objects."""
    events = _object(result.get("events"), "events")
    found = events.get(kind) or {}
    if not isinstance(found, dict):
        raise ValueError(f"events.{kind} is not an object")
    return list(found.items())


def _raw_events(result: dict[str, Any], kind: str) -> list[tuple[str, Any]]:
    """(where, event as sent) of each event of `kind` ("splits" or "dividends"); a ValueError
    when the events' containers are not objects."""
    return [(f"events.{kind}[{key!r}]", ev) for key, ev in _raw_items(result, kind)]


def _event_date(where: str, ev: Any) -> float:
    """An event's `date` in epoch seconds; a ValueError naming it when the event is not an
    object or has no numeric date."""
    if not isinstance(ev, dict):
        raise ValueError(f"{where} is not an object: {ev!r:.40}")
    return _epoch(_number(ev, "date", where), f"{where}.date")


def _session_date(epoch: float, tz: str) -> date:
    return pd.Timestamp(int(epoch), unit="s", tz="UTC").tz_convert(tz).date()


def split_events(result: dict[str, Any]) -> list[tuple[date, float]]:
    """(ex-date in the exchange's time zone, ratio numerator/denominator) of a chart result.
    Raises ValueError naming an event without a date or a positive numerator/denominator."""
    tz = _timezone(_meta(result), "America/New_York")
    out = []
    for where, ev in _raw_events(result, "splits"):
        stamp = _event_date(where, ev)
        num, den = _number(ev, "numerator", where), _number(ev, "denominator", where)
        if num <= 0 or den <= 0:
            bad = "numerator" if num <= 0 else "denominator"
            raise ValueError(
                f"{where}.{bad} is not positive (ratio {ev.get('splitRatio')!r}): {ev.get(bad)!r}"
            )
        out.append((_session_date(stamp, tz), num / den))
    return sorted(out)


def dividend_events(
    result: dict[str, Any], symbol: str | None = None, once: Once | None = None
) -> list[tuple[date, float]]:
    """(ex-date in the exchange's time zone, amount as Yahoo has it: adjusted for the splits
    after it) of a chart result, zero amounts included. A dividend without a date or a
    numeric, non-negative amount is left out with a warning naming it
    (`yahoo.dividend_refused`): refusing the whole answer, as for a split, cost the symbol
    every bar of every answer whose window covers the event (its warm-up included), and a
    dividend cannot make the book hold the wrong number of shares as a lost split does.
    `once`: the warnings already given (a client's: each once, not at every answer)."""
    tz = _timezone(_meta(result), "America/New_York")
    out = []
    for where, ev in _raw_events(result, "dividends"):
        try:
            stamp = _event_date(where, ev)
            amount = _number(ev, "amount", where)
            if amount < 0:
                raise ValueError(f"{where}.amount is negative: {ev.get('amount')!r:.40}")
        except ValueError as exc:
            if once is not None and not once.first(("dividend_refused", symbol, str(exc))):
                continue
            log.warning(
                "yahoo.dividend_refused",
                symbol=symbol,
                error=str(exc),
                rule="a dividend Yahoo sent without a date or a usable amount is not "
                "booked: check the symbol's dividends against another source",
            )
            continue
        out.append((_session_date(stamp, tz), amount))
    return sorted(out)


def parse_chart(
    result: dict[str, Any],
    interval: str | Interval,
    *,
    now: datetime,
    session: Session | None = None,
    later_splits: Sequence[tuple[date, float]] = (),
    once: Once | None = None,
) -> pd.DataFrame:
    """One chart result (`chart.result[0]`) as raw bars with split/dividend columns, labelled
    as stored data (naive UTC), closed at `now` only; not yet validated. `later_splits` are
    splits after the response's window (see the module docstring). `once`: the client's
    record of the event warnings given, each once. Raises ValueError for a body that does
    not have the chart's shape."""
    interval = parse_interval(interval)
    session = session or Session()
    if not isinstance(result, dict):
        raise ValueError("chart result is not an object")
    meta = _meta(result)
    tz = _timezone(meta, session.timezone)
    stamps = result.get("timestamp")
    if not stamps:  # no trading in the window: HTTP 200 without `timestamp`
        return empty_raw()
    if not isinstance(stamps, list):
        raise ValueError("timestamp is not a list")
    ts = _stamps(stamps)
    quotes = _object(result.get("indicators"), "indicators").get("quote")
    if not isinstance(quotes, list) or not quotes or not isinstance(quotes[0], dict):
        raise ValueError("indicators.quote[0] is missing")
    n = len(ts)
    o, h, lo, c, v = (_values(quotes[0], k, n) for k in ("open", "high", "low", "close", "volume"))

    keep = ~(np.isnan(o) & np.isnan(h) & np.isnan(lo) & np.isnan(c))
    if (~keep).any():
        log.debug("yahoo.null_bars", symbol=meta.get("symbol"), rows=int((~keep).sum()))
    rmt = meta.get("regularMarketTime")
    if not interval.daily and rmt is not None:
        # The live session's last bar, stamped with the last trade time: in progress.
        step = interval.minutes * 60
        first = ts[keep][0] if keep.any() else ts[0]
        off_grid = ((ts % 60) != 0) | (((ts - first) % step) != 0)
        flat = (v == 0) & (o == h) & (h == lo) & (lo == c)
        live = (ts == int(rmt)) & (off_grid | flat)
        keep &= ~live
    ts, o, h, lo, c, v = ts[keep], o[keep], h[keep], lo[keep], c[keep], v[keep]
    if len(ts) == 0:
        return empty_raw()

    utc = pd.DatetimeIndex(pd.to_datetime(ts, unit="s", utc=True))
    local_dates = np.array(utc.tz_convert(tz).date)
    if interval.daily:
        labels = pd.DatetimeIndex(pd.to_datetime(local_dates)).astype("datetime64[ns]")
    else:
        labels = utc.tz_localize(None).astype("datetime64[ns]")
    # Closed bars only, before the actions are placed: a split or dividend put on a bar
    # still in progress (or stamped ahead of `now`) left with that bar, without a word.
    closed = _closed(labels, interval, now, session, tz, meta, ts, once)
    if not closed.all():
        ts, o, h, lo, c, v = ts[closed], o[closed], h[closed], lo[closed], c[closed], v[closed]
        local_dates, labels = local_dates[closed], labels[closed]

    # Undo the split adjustment: F(d) = product of the ratios of the splits after d.
    symbol = meta.get("symbol")
    own_splits = dict(split_events(result))
    splits = dict(own_splits)
    for d, r in later_splits:
        splits.setdefault(d, r)
    factor = np.ones(len(ts))
    for d, r in splits.items():
        factor[local_dates < d] *= r
    # Each date's action (split, raw dividend per post-split share), put on the bar of its
    # date, or carried to the next bar when Yahoo has none that day (see `_place_actions`).
    actions: dict[date, tuple[float, float]] = {d: (r, 0.0) for d, r in splits.items()}
    for d, amount in dividend_events(result, symbol, once):
        if amount == 0:
            log.debug("yahoo.zero_dividend", symbol=symbol, date=d.isoformat())
            continue
        later = float(np.prod([r for sd, r in splits.items() if sd > d]))
        s0, d0 = actions.get(d, (1.0, 0.0))
        actions[d] = (s0, d0 + amount * later)
    split_col, dividend = _place_actions(
        actions, local_dates, ts, labels, symbol=symbol, said=set(own_splits), once=once
    )
    hint = meta.get("priceHint")
    decimals = int(hint) if isinstance(hint, int) and 0 <= hint <= 8 else 4
    adjusted = factor != 1.0
    prices = {}
    for name, arr in (("open", o), ("high", h), ("low", lo), ("close", c)):
        raw = arr * factor
        raw[adjusted] = np.round(raw[adjusted], decimals)
        prices[name] = raw
    volume = v / factor
    volume[adjusted] = np.round(volume[adjusted])

    if len(ts) == 0:  # every bar in progress: its actions were said pending
        return empty_raw()
    return pd.DataFrame(
        {"time": labels, **prices, "volume": volume, "split": split_col, "dividend": dividend}
    )


def _closed(
    labels: pd.DatetimeIndex,
    interval: Interval,
    now: datetime,
    session: Session,
    tz: str,
    meta: dict[str, Any],
    stamps: np.ndarray | None = None,
    once: Once | None = None,
) -> np.ndarray:
    """Per bar (`labels`, naive UTC): whether it has closed at `now` (`closed_only`, with
    the session's exact close when Yahoo gives it: `meta.currentTradingPeriod.regular.end`).

    A daily bar the answer itself shows in progress is not closed, whatever `now` says
    (`_in_progress_by_answer`): judged by the local clock alone, a clock running ahead by
    more than `delay_s` took the session's partial bar for the closed one (traded on, then
    restated)."""
    closes: dict[date, datetime] = {}
    period = _object(meta.get("currentTradingPeriod"), "meta.currentTradingPeriod")
    regular = _object(period.get("regular"), "meta.currentTradingPeriod.regular")
    end: float | None = None
    if interval.daily and regular.get("end"):
        end = _epoch(
            _number(regular, "end", "meta.currentTradingPeriod.regular"),
            "meta.currentTradingPeriod.regular.end",
        )
        closes[_session_date(end - 1, tz)] = datetime.fromtimestamp(int(end), UTC)
    bars = pd.DataFrame({"time": labels})
    kept = closed_only(bars, interval, now, session, timezone=tz, closes=closes).index
    out = np.zeros(len(labels), dtype=bool)
    out[kept.to_numpy()] = True
    if end is not None and stamps is not None:
        out &= ~_in_progress_by_answer(labels, stamps, out, end, now, tz, meta, once)
    return out


# How far ahead of a symbol's last trade the local clock may be for a daily bar stamped with
# that trade (before the session's close) to be taken as still trading (`_in_progress_by_answer`).
_CLOCK_AHEAD_MAX_S = 1800.0


def _in_progress_by_answer(
    labels: pd.DatetimeIndex,
    stamps: np.ndarray,
    closed: np.ndarray,
    end: float,
    now: datetime,
    tz: str,
    meta: dict[str, Any],
    once: Once | None,
) -> np.ndarray:
    """Per daily bar: whether the answer shows it in progress although `now` (the local
    clock) has it closed. Yahoo stamps the live session's bar with `meta.regularMarketTime`
    (its last trade) instead of the session's open; such a bar of the session of
    `meta.currentTradingPeriod.regular`, with a last trade before that session's `end`, is
    the session still trading at Yahoo: the local clock is ahead of Yahoo's by at least
    `now - end` and at most `now - regularMarketTime`. Said once a session
    (`yahoo.clock_ahead`, naming both). A closed session's bar (stamped at its open, or a
    last trade at or after the end) and an answer without `regularMarketTime` are judged by
    the local clock alone, as before."""
    out = np.zeros(len(labels), dtype=bool)
    rmt = meta.get("regularMarketTime")
    if rmt is None or isinstance(rmt, bool) or not isinstance(rmt, int | float):
        return out
    last_trade = _epoch(float(rmt), "meta.regularMarketTime")
    if last_trade >= end:
        return out
    traded_at = datetime.fromtimestamp(int(last_trade), UTC)
    if (now - traded_at).total_seconds() > _CLOCK_AHEAD_MAX_S:
        # A closed session's bar looks the same when its last trade came before the close
        # (a halt, no closing print): past this, that is what it is taken for (closed), and
        # a clock further ahead is judged by the local clock alone, as before.
        return out
    day = pd.Timestamp(_session_date(end - 1, tz))
    out = closed & (labels == day) & (stamps == int(last_trade))
    if out.any():
        session = day.date().isoformat()
        if once is None or once.first(("clock_ahead", session)):
            closes_at = datetime.fromtimestamp(int(end), UTC)
            log.warning(
                "yahoo.clock_ahead",
                symbol=meta.get("symbol"),
                session=session,
                local_now=now.isoformat(),
                vendor_last_trade=traded_at.isoformat(),
                session_close=closes_at.isoformat(),
                ahead_s_at_least=round((now - closes_at).total_seconds(), 3),
                ahead_s_at_most=round((now - traded_at).total_seconds(), 3),
                rule="Yahoo's answer shows the session still trading (last trade before its "
                "close) while the local clock has it closed: the bar is not taken (asked "
                f"again, taken once its last trade is {_CLOCK_AHEAD_MAX_S / 60:g} minutes old); "
                "either the machine's clock is ahead (check its time sync, NTP) or the "
                "symbol stopped trading before the close (a halt)",
            )
    return out


def _place_actions(
    actions: dict[date, tuple[float, float]],
    local_dates: np.ndarray,
    ts: np.ndarray,
    labels: pd.DatetimeIndex,
    *,
    symbol: str | None,
    said: set[date],
    once: Once | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `split` and `dividend` columns: each date's action on the first bar of its date.
    Yahoo sends a day without trade data as a null bar, which is not kept: an action dated
    on it goes to the symbol's next bar (`yahoo.event_carried`, a warning), combined with
    that bar's own as `suspect.carry_action` combines two bars' (split first, the earlier
    dividend restated per post-split share). Dropped, the split would still have
    un-adjusted the bars before it: a 2:1 a silent -50% in the book. An action after the
    last bar has no bar yet (`yahoo.event_pending`): Yahoo sends the events of the whole
    requested range, so the next answer whose window covers its date carries it; a split
    after the window (`later_splits`, not in `said` nor a dividend) is not said. `once`: the
    warnings already given (a client's: each said once, not by every answer that carries
    the event again)."""
    split_col = np.ones(len(ts))
    dividend = np.zeros(len(ts))
    placed: dict[int, tuple[float, float]] = {}
    for d in sorted(actions):
        ratio, amount = actions[d]
        parts = [("split", "ratio", ratio)] if ratio != 1.0 else []
        if amount:
            parts.append(("dividend", "amount", round(amount, 6)))
        after = np.flatnonzero(local_dates >= d)
        if not len(after):
            for action, name, value in parts:
                if action == "split" and d not in said:
                    continue
                if once is not None and not once.first(("pending", symbol, action, d)):
                    continue
                log.warning(
                    "yahoo.event_pending",
                    symbol=symbol,
                    action=action,
                    date=d.isoformat(),
                    **{name: value},
                    last_bar=_fmt_time(labels.max()) if len(labels) else None,
                    rule="no closed bar on or after its date in this answer (none sent, or "
                    "the bar it goes on is still in progress): not applied yet; the next "
                    "answer whose window covers its date puts it on the symbol's next bar",
                )
            continue
        i = int(after[np.argmin(ts[after])])
        placed[i] = carry_action(placed.get(i, (1.0, 0.0)), ratio, amount)
        if local_dates[i] != d:
            for action, name, value in parts:
                if once is not None and not once.first(("carried", symbol, action, d, int(ts[i]))):
                    continue
                log.warning(
                    "yahoo.event_carried",
                    symbol=symbol,
                    action=action,
                    date=d.isoformat(),
                    **{name: value},
                    bar=_fmt_time(labels[i]),
                    rule="Yahoo has no bar on its date (a day without trade data): "
                    "applied at the symbol's next bar, split first, an earlier dividend "
                    "per post-split share",
                )
    for i, (ratio, amount) in placed.items():
        split_col[i] = ratio
        dividend[i] = round(amount, 6)
    return split_col, dividend


def chunk_windows(period1: int, period2: int, interval: Interval) -> list[tuple[int, int]]:
    """`(period1, period2)` (epoch seconds) of the requests that cover `[period1, period2)`,
    oldest first, each within Yahoo's span for `interval` (`REQUEST_SPAN_DAYS`); one window
    when it is within it. Consecutive windows share one bar's length: a bar at a seam is
    asked for twice, not lost whichever end of a window Yahoo counts it in, and
    `stitch_results` keeps one copy."""
    days = None if interval.daily else REQUEST_SPAN_DAYS.get(interval.minutes)
    if days is None or period2 - period1 <= days * 86400:
        return [(period1, period2)]
    span, step = days * 86400, interval.minutes * 60
    out = []
    lo = period1
    while True:
        hi = min(lo + span, period2)
        out.append((lo, hi))
        if hi >= period2:
            return out
        lo = hi - step


def stitch_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One chart result of the results of consecutive windows (oldest first), as Yahoo
    would send it for the whole window: the bars by timestamp, a timestamp in two answers
    (a seam) once, the later answer's; the split and dividend events of all (keyed by
    their epoch string, so an event in two answers is one); the last answer's `meta` (the
    live session's stamps). A window without bars (`timestamp` absent) adds none. Raises
    ValueError for an answer that does not have the chart's shape, as `parse_chart` does."""
    if len(results) == 1:
        return results[0]
    fields = ("open", "high", "low", "close", "volume")
    rows: dict[int, tuple[Any, ...]] = {}
    events: dict[str, dict[str, Any]] = {"splits": {}, "dividends": {}}
    for result in results:
        if not isinstance(result, dict):
            raise ValueError("chart result is not an object")
        for kind, found in events.items():
            found.update((key, ev) for key, ev in _raw_items(result, kind))
        stamps = result.get("timestamp")
        if not stamps:
            continue
        if not isinstance(stamps, list):
            raise ValueError("timestamp is not a list")
        quotes = _object(result.get("indicators"), "indicators").get("quote")
        if not isinstance(quotes, list) or not quotes or not isinstance(quotes[0], dict):
            raise ValueError("indicators.quote[0] is missing")
        columns = []
        for name in fields:
            values = quotes[0].get(name)
            if not isinstance(values, list) or len(values) != len(stamps):
                raise ValueError(
                    f"indicators.quote[0].{name} is not a list of {len(stamps)} values"
                )
            columns.append(values)
        for i, stamp in enumerate(_stamps(stamps)):
            rows[int(stamp)] = tuple(col[i] for col in columns)
    out: dict[str, Any] = {"meta": _meta(results[-1])}
    out["indicators"] = {"quote": [{}]}
    if rows:
        order = sorted(rows)
        out["timestamp"] = order
        out["indicators"] = {
            "quote": [{name: [rows[t][k] for t in order] for k, name in enumerate(fields)}]
        }
    kept = {kind: found for kind, found in events.items() if found}
    if kept:
        out["events"] = kept
    return out


def _parse_stitched(results: Sequence[dict[str, Any]], *args: Any, **kw: Any) -> pd.DataFrame:
    """`parse_chart` of the stitched results, in one call for a worker thread."""
    return parse_chart(stitch_results(results), *args, **kw)


def chart_result(obj: Any, symbol: str, status: int = 200) -> dict[str, Any]:
    """`chart.result[0]` of a decoded body, or the SourceError its `chart.error` means."""
    chart = obj.get("chart") if isinstance(obj, dict) else None
    if not isinstance(chart, dict):
        raise make_error(SOURCE, "malformed", "body has no 'chart' object", symbol=symbol)
    err = chart.get("error")
    if err and not isinstance(err, dict):
        # Yahoo's error is an object (code, description): a bare string was "boom: ", a
        # final http_4xx, not the unreadable answer it is.
        raise make_error(
            SOURCE,
            "malformed",
            f"chart.error is not an object (code, description): {str(err)[:120]!r}",
            status=status,
            symbol=symbol,
        )
    if err:
        code = str(err.get("code", ""))
        desc = str(err.get("description", ""))
        kind = {"Not Found": "not_found", "Unauthorized": "blocked", "Forbidden": "blocked"}.get(
            code, "http_4xx"
        )
        raise make_error(SOURCE, kind, f"{code}: {desc}"[:300], status=status, symbol=symbol)
    results = chart.get("result")
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        raise make_error(SOURCE, "malformed", "chart.result is empty", symbol=symbol)
    return results[0]


class YahooClient:
    """Bars from Yahoo's chart API. See the module docstring for what is parsed and how.

    `cache` (a ResponseCache) is shared and started/stopped by its owner; without one the
    client keeps an in-process cache of its own. `session` (aiohttp) likewise. `clock` gives
    `now` when a call does not pass it."""

    name = SOURCE

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        config: SourceConfig | None = None,
        caller: ResilientCaller | None = None,
        cache: ResponseCache | None = None,
        http: aiohttp.ClientSession | None = None,
        user_agent: str = USER_AGENT,
        include_prepost: bool = False,
        validation: Validation | None = None,
        session: Session | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.caller = caller or ResilientCaller(SOURCE, config or SourceConfig.for_source(SOURCE))
        self._own_cache = cache is None
        # The event warnings given (`parse_chart`): each once, not at every answer.
        self._once = Once()
        self.cache = cache or ResponseCache()
        self._http = http
        self._own_http = http is None
        self.user_agent = user_agent
        self.include_prepost = include_prepost
        self.validation = validation or Validation()
        self.session = session or Session()
        self._clock = clock

    async def start(self) -> None:
        if self._own_cache:
            await self.cache.start()
        if self._http is None:
            self._http = aiohttp.ClientSession(headers={"User-Agent": self.user_agent})

    async def stop(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
        if self._own_cache:
            await self.cache.stop()

    def status(self) -> dict[str, Any]:
        return self.caller.status()

    def history_limit(self, interval: str | Interval) -> timedelta | None:
        """How far back Yahoo serves bars of `interval` (None: no known limit), for the feed
        to tell the operator why a warm-up is refused for good. (The span of one request,
        `REQUEST_SPAN_DAYS`, is no limit of a warm-up: a longer window is asked for in
        chunks.)"""
        interval = parse_interval(interval)
        days = None if interval.daily else INTRADAY_HISTORY_DAYS.get(interval.minutes)
        return None if days is None else timedelta(days=days)

    # ------------------------------------------------------------------ HTTP

    async def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            await self.start()
        assert self._http is not None
        return self._http

    async def chart(
        self,
        symbol: str,
        params: dict[str, str],
        *,
        key: str | None,
        now: datetime,
    ) -> tuple[dict[str, Any], datetime]:
        """`chart.result[0]` for one request and when it was fetched (a cached answer keeps
        its original time). Cached under `key` when given."""
        if key is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                try:
                    entry = json.loads(hit)
                    return (
                        chart_result(json.loads(entry["body"]), symbol),
                        datetime.fromisoformat(entry["fetched_at"]),
                    )
                except (ValueError, KeyError, TypeError, SourceError):
                    log.warning("yahoo.cache.bad_entry", symbol=symbol)
        http = await self._http_session()
        url = f"{self.base_url}/v8/finance/chart/{symbol}"

        async def attempt() -> tuple[str, dict[str, Any]]:
            async with http.get(
                url,
                params=params,
                headers={"User-Agent": self.user_agent},
                timeout=self.caller.client_timeout(),
                allow_redirects=False,
            ) as resp:
                text = await response_text(
                    resp, SOURCE, symbol, max_bytes=self.caller.config.max_body_bytes
                )
                if resp.status != 200:
                    raise error_for_status(
                        SOURCE,
                        resp.status,
                        text,
                        symbol=symbol,
                        retry_after=resp.headers.get("Retry-After"),
                        location=resp.headers.get("Location"),
                        credentials=False,
                    )
            if "Will be right back" in text:
                raise make_error(SOURCE, "http_5xx", "Yahoo outage page", symbol=symbol)
            try:
                obj = json.loads(text)
            except ValueError:
                raise make_error(
                    SOURCE, "malformed", f"body is not JSON: {text[:80]!r}", symbol=symbol
                ) from None
            return text, chart_result(obj, symbol)

        text, result = await self.caller.call(attempt, what=f"chart {symbol} {params}")
        if key is not None:
            entry = {"fetched_at": as_utc(now).isoformat(), "body": text}
            await self.cache.set(key, json.dumps(entry).encode(), symbols=(symbol,))
        return result, as_utc(now)

    # ------------------------------------------------------------------ bars

    def _params(self, interval: Interval, **extra: str) -> dict[str, str]:
        return {
            "interval": interval.name,
            "includePrePost": "true" if self.include_prepost else "false",
            "events": "div|split",
            **extra,
        }

    async def _later_splits(
        self, symbol: str, after: datetime, now: datetime
    ) -> list[tuple[date, float]]:
        """Splits with an ex-date after `after` up to now (Yahoo adjusts for them too)."""
        params = self._params(
            parse_interval("1d"),
            period1=str(int((after - timedelta(days=1)).timestamp())),
            period2=str(int(now.timestamp()) + 86400),
        )
        params["events"] = "split"
        result, _ = await self.chart(symbol, params, key=None, now=now)
        try:
            found = split_events(result)
        except (ValueError, TypeError, KeyError) as exc:
            raise make_error(
                SOURCE, "malformed", f"later splits: {exc}"[:300], symbol=symbol
            ) from None
        return [(d, r) for d, r in found if d > after.date()]

    async def fetch_symbol(
        self,
        symbol: str,
        interval: str | Interval,
        start: datetime | None,
        end: datetime,
        *,
        now: datetime | None = None,
        period: str | None = None,
    ) -> pd.DataFrame:
        """Raw (unvalidated) closed bars of one symbol with labels in [start, end]; or, with
        `period` (a Yahoo range such as '1mo'), Yahoo's window for that range up to `end`."""
        interval = parse_interval(interval)
        now = as_utc(now or self._clock())
        end = as_utc(end)
        if period is not None:
            windows = [(self._params(interval, range=period), end)]
        else:
            assert start is not None
            start = as_utc(start)
            # Yahoo returns bars stamped in [period1, period2): a day of margin before the
            # first label (daily stamps are the local open, up to 14 h off the UTC date).
            period1 = start - timedelta(days=1 if interval.daily else 0)
            period2 = end + timedelta(days=1) if interval.daily else end + interval.delta
            # In chunks when the window is longer than one request may span (1m: 7 days),
            # oldest first: a 422 for a window older than Yahoo keeps stops at the first.
            chunks = chunk_windows(int(period1.timestamp()), int(period2.timestamp()), interval)
            # Each with its last label (the request's `end`), for its cache key.
            windows = [
                (
                    self._params(interval, period1=str(lo), period2=str(hi)),
                    end
                    if hi == chunks[-1][1]
                    else datetime.fromtimestamp(hi, UTC) - interval.delta,
                )
                for lo, hi in chunks
            ]
        # The answers, stitched into one before parsing (`stitch_results`); the last one's
        # fetch time bounds the closed bars (an earlier window is cached only once closed).
        results: list[dict[str, Any]] = []
        fetched_at = now
        for params, last in windows:
            request = {k: v for k, v in params.items()} | {"end": last.isoformat()}
            # Cache only a window whose last bar has closed (see response_cache.py).
            key = (
                cache_key(SOURCE, symbol, interval.name, request, base_url=self.base_url)
                if bar_close(last, interval, self.session) <= now
                else None
            )
            result, fetched_at = await self.chart(symbol, params, key=key, now=now)
            results.append(result)
        later: list[tuple[date, float]] = []
        if self.session.today(now) > end.date():
            later = await self._later_splits(symbol, end, now)
        try:
            # In a worker thread: about a millisecond a symbol, a second or more of the
            # event loop's time a bar at 500 symbols (the health server's and the broker's).
            raw = await asyncio.to_thread(
                partial(
                    _parse_stitched,
                    results,
                    interval,
                    now=min(now, fetched_at),
                    session=self.session,
                    later_splits=later,
                    once=self._once,
                )
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise make_error(SOURCE, "malformed", str(exc)[:300], symbol=symbol) from None
        if period is not None or start is None:
            return raw[raw["time"] <= pd.Timestamp(end.replace(tzinfo=None))]
        return in_window(raw, start, end)

    async def fetch(
        self,
        symbols: Sequence[str],
        interval: str | Interval,
        start: datetime,
        end: datetime,
        *,
        now: datetime | None = None,
    ) -> FetchResult:
        """Validated closed bars of every symbol with labels in [start, end]; one request per
        symbol, as many in flight as the caller's max_concurrency allows."""
        now = as_utc(now or self._clock())

        async def one(symbol: str) -> pd.DataFrame:
            return await self.fetch_symbol(symbol, interval, start, end, now=now)

        return await fetched_each(
            SOURCE, symbols, one, self.validation, interval, now=now, session=self.session
        )

    async def fetch_period(
        self,
        symbols: Sequence[str],
        period: str,
        interval: str | Interval,
        *,
        now: datetime | None = None,
    ) -> FetchResult:
        """Yahoo's `range=` semantics (e.g. '1d' = the latest session), closed bars only."""
        if period not in RANGES:
            raise ConfigError(f"Yahoo period {period!r} is not valid; valid: {', '.join(RANGES)}")
        interval = parse_interval(interval)
        now = as_utc(now or self._clock())
        end = last_closed_label(now, interval, self.session)

        async def one(symbol: str) -> pd.DataFrame:
            return await self.fetch_symbol(symbol, interval, None, end, now=now, period=period)

        return await fetched_each(
            SOURCE, symbols, one, self.validation, interval, now=now, session=self.session
        )
