"""Alpha Vantage over aiohttp: daily and intraday bars, JSON or CSV, within its budgets.

Request: `GET {base_url}/query?function=..&symbol=..&apikey=..` (the key only ever travels in
that query string). The key is read from the environment variable `ALPHA_VANTAGE_API_KEY`
(or given explicitly); it is registered with the caller as a secret, so it is masked in every
log line and exception message, and it is never part of a cache key.

Functions:
  daily     TIME_SERIES_DAILY: raw OHLCV, no corporate actions, or with `adjusted=True`
            TIME_SERIES_DAILY_ADJUSTED: raw OHLCV plus `dividend amount` and `split
            coefficient` on their ex-dates (a premium function on current keys); a row
            without them has none (1.0 / 0.0), one whose value is not a number ("N/A")
            refuses the symbol's answer (`malformed`, naming the field and date). Without it
            a split shows as an unexplained jump of the raw price: use `adjusted=True` for a
            universe that may split, or another source. `start` warns about it
            (`feed.no_corporate_actions`), and the bars go to validation without split and
            dividend columns (none are made up), so it logs `data.suspect` (kind
            `no_corporate_actions`, and `split_like_jump` naming a jump a split would make).
  intraday  TIME_SERIES_INTRADAY with `adjusted=false` (raw, as traded) and
            `extended_hours` (False by default: the regular session only, as the engine's
            bars). Intraday answers carry no corporate actions (validated as daily ones).
Budgets: the caller's per-minute limiter and per-day budget (5/min and 500/day by default, the
specification's free tier); over the daily budget a call fails at once with kind `budget`.

Soft errors are HTTP 200 bodies holding one of the keys `Note`, `Information` or
`Error Message` (also when CSV was asked for); they are matched by key, never parsed as data:
  Note                      throttled (the legacy 5/min, 500/day text): retried with backoff
  Information               a burst limit ("per second", "sparingly", "per minute") is
                            retried; a daily limit, a premium function or the demo key is not
                            (the last two are kind `plan`: fatal at the feed, as `auth`)
  Error Message             a bad call or unknown symbol: not retried, and `permanent` (a
                            warm-up refused by it everywhere stops the daemon); "the
                            parameter apikey is invalid or missing" is kind `auth` (fatal
                            at the feed, as Alpaca's 401: check ALPHA_VANTAGE_API_KEY)
  {}                        no data for the symbol: kind `not_found`
All are SourceError of kind `soft_error` (or `not_found`, `plan`, `auth`), never bars. A time
series row that is not an object is `malformed`, as is a `Meta Data` that is not one or a
`Time Zone` that names no time zone (naming the field). A CSV body that does not end with a
newline, or whose last row has fewer fields than its header, is cut short: `malformed`
("truncated CSV"), retried, never read as the bars it still holds. So is one with a row
before it of another width than the header ("damaged CSV"): its cells cannot be placed, and
dropping its bar left a gap in the history (see `_check_whole_csv`). So is a JSON time
series with a row without a bar field (open, high, low, close, volume) the other rows have
("damaged answer", naming the row's date and the field; see `_check_whole_rows`).

Labels: daily rows are session dates; intraday rows are bar starts in the answer's time zone
(`Time Zone` of the meta data, US/Eastern; CSV has none and uses `timezone`), converted to UTC.
Rows come newest first and are sorted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError
from .resilience import (
    ResilientCaller,
    SourceConfig,
    SourceError,
    error_for_status,
    make_error,
    redact,
    response_text,
)
from .response_cache import ResponseCache, cache_key
from .vendor import (
    RAW_COLUMNS,
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

SOURCE = "alphavantage"
DEFAULT_BASE_URL = "https://www.alphavantage.co"
ENV_KEY = "ALPHA_VANTAGE_API_KEY"
AV_INTERVALS = {"1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "60m": "60min"}
SOFT_ERROR_KEYS = ("Error Message", "Information", "Note")
_BURST = re.compile(r"per second|per minute|sparingly|call frequency", re.IGNORECASE)
_PLAN = re.compile(r"is a premium endpoint|\bdemo\b\W*API key", re.IGNORECASE)
_BAD_KEY = re.compile(r"\bapi\s*key\b.{0,20}\b(?:invalid|missing)\b", re.IGNORECASE)
_COLUMN = re.compile(r"^\s*\d+\.\s*")
_NAMES = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "adjusted close": "adjusted_close",
    "adjusted_close": "adjusted_close",
    "dividend amount": "dividend",
    "dividend_amount": "dividend",
    "split coefficient": "split",
    "split_coefficient": "split",
    "timestamp": "time",
}
_TZ_ALIASES = {"US/Eastern": "America/New_York"}
# The daily-limit Information quotes the key it was called with ("We have detected your API
# key as XYZ and ..."): masked also when the key is not a registered secret (a cached body).
_KEY_IN_TEXT = re.compile(r"(?i)\b(api\s*key\s+as\s+)([A-Za-z0-9_\-]{4,})")


def redact_body(text: object, secrets: Iterable[str] = ()) -> str:
    """`text` of a vendor answer with every secret value, `apikey=` parameter and quoted key
    masked."""
    return _KEY_IN_TEXT.sub(lambda m: f"{m.group(1)}***", redact(text, secrets))


def soft_error(
    obj: Any, symbol: str | None = None, secrets: Iterable[str] = ()
) -> SourceError | None:
    """The SourceError an HTTP-200 JSON body means, or None when it holds data. The body's
    text is redacted (`secrets`, and the key the daily-limit Information quotes)."""
    if not isinstance(obj, dict):
        return make_error(SOURCE, "malformed", "JSON body is not an object", symbol=symbol)
    if not obj:
        return make_error(
            SOURCE, "not_found", "empty answer {}: unknown symbol or no data", symbol=symbol
        )
    for key in SOFT_ERROR_KEYS:
        if key in obj:
            text = redact_body(" ".join(str(obj[key]).split()), secrets)[:300]
            retryable = key == "Note" or (key == "Information" and bool(_BURST.search(text)))
            # A premium function or the demo key: no retry and no later bar will answer; the
            # configuration must change (kind `plan`, fatal at the feed like `auth`). A daily
            # limit (which also names the premium plans) answers again the next day.
            kind = "plan" if key == "Information" and _PLAN.search(text) else "soft_error"
            if key == "Error Message" and _BAD_KEY.search(text):
                # The key is wrong or was not sent: fatal at the feed (as Alpaca's 401), not
                # a soft error asked again at every bar for as long as the daemon runs.
                return make_error(
                    SOURCE,
                    "auth",
                    f"{key}: {text}; check {ENV_KEY}",
                    symbol=symbol,
                    retryable=False,
                    permanent=True,
                )
            # "Error Message" (an invalid call, an unknown symbol or key) answers the same
            # every time: a warm-up refused by it for every symbol is not retried for good.
            return make_error(
                SOURCE,
                kind,
                f"{key}: {text}",
                symbol=symbol,
                retryable=retryable,
                permanent=key == "Error Message",
            )
    return None


def _frame_from_rows(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.rename(columns=lambda c: _NAMES.get(_COLUMN.sub("", str(c)).strip().lower(), c))
    missing = [c for c in ("time", "open", "high", "low", "close", "volume") if c not in rows]
    if missing:
        raise ValueError(f"columns {missing} missing; found {[str(c) for c in rows.columns]}")
    out = pd.DataFrame({"time": rows["time"].astype(str).str.strip()})
    for name in ("open", "high", "low", "close", "volume"):
        out[name] = pd.to_numeric(rows[name], errors="coerce").astype("float64")
    # Only the columns the answer has: filled in with split 1.0 and dividend 0.0,
    # TIME_SERIES_DAILY's raw prices crossed a split as a silent crash; without them,
    # validation says none are booked and flags a jump that looks like one (data.suspect).
    for name in ("split", "dividend"):
        if name in rows:
            out[name] = _action_values(rows[name], out["time"], name)
    return out


def _action_values(given: pd.Series, times: pd.Series, name: str) -> pd.Series:
    """A split or dividend column as numbers: a row without the field (or an empty cell) is
    NaN, which validation defaults (split 1.0, dividend 0.0); a value present but not a
    number ("N/A") raises ValueError naming the field and the date. It became 1.0 / 0.0
    with a debug line: a lost split is a book holding the wrong number of shares."""
    values = pd.to_numeric(given, errors="coerce").astype("float64")
    text = given.astype(object).where(given.notna(), None)
    present = text.map(lambda v: v is not None and str(v).strip() != "").astype(bool)
    bad = values.isna() & present
    if bad.any():
        field = "split coefficient" if name == "split" else "dividend amount"
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{field} {given.iloc[first]!r:.40} on {times.iloc[first]} is not a number "
            f"({int(bad.sum())} row(s)); not read as {'1.0' if name == 'split' else '0.0'}"
        )
    return values


def _check_whole_csv(body: str) -> None:
    """A ValueError for a CSV body cut short or damaged: "truncated CSV" when its last line
    does not end with a newline or its last row has fewer fields than the header; "damaged
    CSV" when a row before it has another number of fields. Read as it came, a body cut
    inside the last row's volume gave that bar a volume of 558 for 5,584,901, and one cut in
    half lost the older half with a warning about the partial line only.

    A damaged middle row refuses the whole answer too (`malformed`, retried), as the cut
    last row does, rather than being read: its cells cannot be placed (a missing cell
    shifts the others: a short row's close may be its volume), and dropped as a bad bar
    (`feed.row_dropped`) it left a gap in the history that shifted every indicator over
    the lookback, while asking again gets the vendor's whole answer. Alpha Vantage's CSV is
    machine-written: a row short of fields is a damaged body, not a day without data (that
    row has its fields, empty or not)."""
    if not body.endswith("\n"):
        tail = body[-40:]
        raise ValueError(f"truncated CSV: the body ends mid-line (...{tail!r}), not with a newline")
    rows = csv.reader(io.StringIO(body))
    names = next(rows, [])
    width = len(names)
    odd: list[tuple[int, list[str]]] = []  # (line, cells) of the rows of another width
    last: tuple[int, list[str]] | None = None
    for cells in rows:
        if not cells:  # a blank line is not a row (pandas skips it too)
            continue
        last = (rows.line_num, cells)
        if len(cells) != width:
            odd.append(last)
    if last is not None and len(last[1]) < width:
        raise ValueError(
            f"truncated CSV: its last row has {len(last[1])} of the header's {width} "
            f"fields: {','.join(last[1])[:80]!r}"
        )
    if odd:
        line, cells = odd[0]
        raise ValueError(
            f"damaged CSV: {len(odd)} row(s) without the header's {width} fields, first at "
            f"line {line} with {len(cells)}: {','.join(cells)[:80]!r}; refused whole (asked "
            "again), not read with the bar missing"
        )


# The fields every bar of a time series has (split and dividend may be absent: the default).
_BAR_FIELDS = ("open", "high", "low", "close", "volume")


def _check_whole_rows(series_key: str, series: Mapping[str, Mapping[str, Any]]) -> None:
    """A ValueError for a JSON time series with a row that lacks a bar field (open, high,
    low, close, volume) the other rows have: "damaged answer", naming the date, the field
    and how many rows lack one. The JSON twin of `_check_whole_csv`'s damaged row: read as
    it came, the missing field was NaN, validation dropped the bar (`feed.row_dropped`) and
    the history had a gap that shifted every indicator over the lookback, where asking again
    gets the vendor's whole answer. Alpha Vantage writes every field of every row; a day
    without a value still has its field. A field no row has is `_frame_from_rows`' "columns
    missing"; a split coefficient or dividend amount a row lacks is no action (the module
    docstring)."""
    keys = {key for row in series.values() for key in row}
    wanted = sorted(
        k for k in keys if _NAMES.get(_COLUMN.sub("", k).strip().lower()) in _BAR_FIELDS
    )
    short: list[tuple[str, str]] = []  # (date, field) of each row lacking a bar field
    for when, row in series.items():
        lacking = [key for key in wanted if key not in row]
        if lacking:
            short.append((str(when), lacking[0]))
    if short:
        (when, key), n = short[0], len(short)
        raise ValueError(
            f"damaged answer: {series_key} row {when} has no {key!r} ({n} row(s) without a "
            "field the other rows have); refused whole (asked again), not read with the bar "
            "missing"
        )


def parse_body(
    text: str, symbol: str | None = None, secrets: Iterable[str] = ()
) -> tuple[pd.DataFrame, str | None]:
    """Rows of a JSON or CSV time-series answer (times as the vendor's strings) and the time
    zone named in the JSON meta data (None for CSV). Soft errors raise SourceError; anything
    else that is not a time series raises ValueError."""
    body = text.lstrip()
    if body.startswith("{"):
        obj = json.loads(body)
        err = soft_error(obj, symbol, secrets)
        if err is not None:
            raise err
        series_key = next((k for k in obj if str(k).startswith("Time Series")), None)
        if series_key is None or not isinstance(obj[series_key], dict):
            raise ValueError(f"no 'Time Series' object; keys {sorted(obj)[:5]}")
        meta = obj.get("Meta Data") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"'Meta Data' is not an object: {meta!r:.40}")
        tz = next(
            (
                zone_name(v, f"Meta Data {str(k)!r}", _TZ_ALIASES)
                for k, v in meta.items()
                if "Time Zone" in str(k)
            ),
            None,
        )
        series = obj[series_key]
        # A row that is not an object (a string, a list) is a malformed answer; it raised
        # AttributeError in pandas, which was reported as a bug of ours (`internal`).
        odd = [(str(k), row) for k, row in series.items() if not isinstance(row, dict)]
        if odd:
            (when, row), n = odd[0], len(odd)
            raise ValueError(f"{series_key} row {when} is {row!r:.40}, not an object ({n} row(s))")
        if not series:
            empty = pd.DataFrame(columns=["timestamp", "open", "high", "low", "close", "volume"])
            return _frame_from_rows(empty), tz
        _check_whole_rows(series_key, series)
        rows = pd.DataFrame.from_dict(series, orient="index")
        rows.index.name = "timestamp"
        return _frame_from_rows(rows.reset_index()), tz
    if not body:
        raise ValueError("empty body")
    _check_whole_csv(body)
    # Cells as sent: pandas' default reads "N/A", "NA", "null" ... as missing, which made an
    # unreadable split coefficient the default 1.0; an empty cell is the missing one.
    rows = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)
    return _frame_from_rows(rows), None


def to_raw(rows: pd.DataFrame, interval: Interval, tz: str) -> pd.DataFrame:
    """Vendor rows -> raw bars labelled as stored data (naive UTC), oldest first."""
    if rows.empty:
        return empty_raw()
    local = pd.to_datetime(rows["time"], errors="coerce", format="mixed")
    if local.isna().any():
        bad = rows["time"][local.isna()].iloc[0]
        raise ValueError(f"unparseable time {bad!r}")
    if interval.daily:
        labels = local.dt.normalize()
    else:
        zone = _TZ_ALIASES.get(tz, tz)
        labels = local.dt.tz_localize(zone, ambiguous="raise").dt.tz_convert("UTC")
        labels = labels.dt.tz_localize(None)
    out = rows.assign(time=labels.astype("datetime64[ns]").to_numpy())
    return out.sort_values("time", kind="stable").reset_index(drop=True)


class AlphaVantageClient:
    """Bars from Alpha Vantage. See the module docstring. `cache` and `http` are owned by the
    caller when given (the client makes in-process/own ones otherwise)."""

    name = SOURCE

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        config: SourceConfig | None = None,
        caller: ResilientCaller | None = None,
        cache: ResponseCache | None = None,
        http: aiohttp.ClientSession | None = None,
        datatype: str = "json",
        adjusted: bool = False,
        extended_hours: bool = False,
        timezone: str = "America/New_York",
        validation: Validation | None = None,
        session: Session | None = None,
        clock: Callable[[], datetime] = utc_now,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if datatype not in ("json", "csv"):
            raise ConfigError(f"Alpha Vantage datatype {datatype!r} is not valid; valid: json, csv")
        self.base_url = base_url.rstrip("/")
        self.caller = caller or ResilientCaller(SOURCE, config or SourceConfig.for_source(SOURCE))
        self._api_key = api_key if api_key is not None else (env or os.environ).get(ENV_KEY)
        self.caller.add_secret(self._api_key)
        self._own_cache = cache is None
        self.cache = cache or ResponseCache()
        self._http = http
        self._own_http = http is None
        self.datatype = datatype
        self.adjusted = adjusted
        self.extended_hours = extended_hours
        self.timezone = timezone
        self.validation = validation or Validation()
        self.session = session or Session()
        self._clock = clock

    def __repr__(self) -> str:  # never show the key
        key = "set" if self._api_key else "missing"
        return f"AlphaVantageClient(base_url={self.base_url!r}, key={key})"

    def _key(self) -> str:
        if not self._api_key:
            raise ConfigError(
                f"Alpha Vantage needs an API key in the environment variable {ENV_KEY}"
            )
        return self._api_key

    async def start(self) -> None:
        self._key()
        if not self.adjusted:
            # The default, and the only mode of a free key: said once at start, as well as
            # by validation's data.suspect at each answer (which names a split-like jump).
            log.warning(
                "feed.no_corporate_actions",
                source=SOURCE,
                rule="feed.alphavantage.adjusted = false: TIME_SERIES_DAILY (like every "
                "intraday answer) carries no splits or dividends, so none are booked: a split "
                "is a crash of the position and of every return feature, a dividend is never "
                "credited; set adjusted = true (TIME_SERIES_DAILY_ADJUSTED, a premium key), or "
                'use feed.source = "yahoo" or "alpaca", for symbols that may split or pay '
                "dividends",
            )
        if self._own_cache:
            await self.cache.start()
        if self._http is None:
            self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
        if self._own_cache:
            await self.cache.stop()

    def status(self) -> dict[str, Any]:
        return self.caller.status()

    # ------------------------------------------------------------------ HTTP

    async def query(
        self, params: Mapping[str, str], *, symbol: str, key: str | None, now: datetime
    ) -> tuple[pd.DataFrame, str | None, datetime]:
        """One call: (rows, time zone of the answer, when fetched). Cached under `key`."""
        if key is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                try:
                    entry = json.loads(hit)
                    rows, tz = parse_body(entry["body"], symbol, self.caller.secrets)
                    return rows, tz, datetime.fromisoformat(entry["fetched_at"])
                except (ValueError, KeyError, TypeError, SourceError):
                    log.warning("alphavantage.cache.bad_entry", symbol=symbol)
        apikey = self._key()
        if self._http is None:
            await self.start()
        assert self._http is not None
        http = self._http
        url = f"{self.base_url}/query"

        async def attempt() -> tuple[str, pd.DataFrame, str | None]:
            async with http.get(
                url,
                params={**params, "apikey": apikey},
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
                        secrets=self.caller.secrets,
                    )
            try:
                rows, tz = parse_body(text, symbol, self.caller.secrets)
            except SourceError:
                raise
            except (ValueError, TypeError, KeyError, pd.errors.ParserError) as exc:
                raise make_error(
                    SOURCE,
                    "malformed",
                    redact_body(f"{type(exc).__name__}: {exc}", self.caller.secrets)[:300],
                    symbol=symbol,
                ) from None
            return text, rows, tz

        text, rows, tz = await self.caller.call(attempt, what=f"query {dict(params)}")
        if key is not None:
            entry = {"fetched_at": as_utc(now).isoformat(), "body": text}
            await self.cache.set(key, json.dumps(entry).encode(), symbols=(symbol,))
        return rows, tz, as_utc(now)

    # ------------------------------------------------------------------ bars

    def _params(
        self, symbol: str, interval: Interval, outputsize: str, month: str | None = None
    ) -> dict[str, str]:
        params = {"symbol": symbol, "outputsize": outputsize, "datatype": self.datatype}
        if interval.daily:
            params["function"] = (
                "TIME_SERIES_DAILY_ADJUSTED" if self.adjusted else "TIME_SERIES_DAILY"
            )
        else:
            params |= {
                "function": "TIME_SERIES_INTRADAY",
                "interval": AV_INTERVALS[interval.name],
                "adjusted": "false",
                "extended_hours": "true" if self.extended_hours else "false",
            }
            if month:
                params["month"] = month
        return params

    async def fetch_symbol(
        self,
        symbol: str,
        interval: str | Interval,
        start: datetime | None,
        end: datetime,
        *,
        now: datetime | None = None,
        outputsize: str | None = None,
    ) -> pd.DataFrame:
        """Raw (unvalidated) closed bars of one symbol with labels in [start, end] (all the
        answer holds up to `end` when start is None). `outputsize` None picks compact when
        the window fits in the latest 100 bars, else full."""
        interval = parse_interval(interval)
        now = as_utc(now or self._clock())
        end = as_utc(end)
        if outputsize is None:
            span = now - as_utc(start) if start is not None else timedelta(days=36500)
            compact = timedelta(days=130) if interval.daily else interval.delta * 90
            outputsize = "compact" if span < compact else "full"
        months: list[str | None] = [None]
        if not interval.daily and start is not None and now - as_utc(start) > timedelta(days=28):
            first = as_utc(start).replace(day=1)
            months = [
                p.strftime("%Y-%m")
                for p in pd.period_range(first.strftime("%Y-%m"), end.strftime("%Y-%m"), freq="M")
            ]
            outputsize = "full"
        end_close = bar_close(end, interval, self.session)
        frames = []
        for month in months:
            params = self._params(symbol, interval, outputsize, month)
            request = dict(params) | {"end": end.isoformat()}
            key = (
                cache_key(SOURCE, symbol, interval.name, request, base_url=self.base_url)
                if end_close <= now
                else None
            )
            rows, tz, fetched_at = await self.query(params, symbol=symbol, key=key, now=now)
            try:
                raw = to_raw(rows, interval, tz or self.timezone)
            except (ValueError, TypeError) as exc:
                text = redact_body(exc, self.caller.secrets)[:300]
                raise make_error(SOURCE, "malformed", text, symbol=symbol) from None
            raw = closed_only(raw, interval, min(now, fetched_at), self.session)
            frames.append(raw.loc[:, [c for c in RAW_COLUMNS if c in raw]])
        # An empty month is empty_raw() (with split and dividend): not mixed with answers
        # without those columns, whose rows would get NaN actions.
        frames = [f for f in frames if not f.empty] or frames[:1]
        raw = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        raw = raw[raw["time"] <= pd.Timestamp(end.replace(tzinfo=None))]
        if start is None:
            return raw.reset_index(drop=True)
        return in_window(raw, as_utc(start), end).reset_index(drop=True)

    async def fetch(
        self,
        symbols: Sequence[str],
        interval: str | Interval,
        start: datetime,
        end: datetime,
        *,
        now: datetime | None = None,
    ) -> FetchResult:
        """Validated closed bars per symbol with labels in [start, end]. One request per
        symbol (per month for old intraday windows), paced by the budgets."""
        now = as_utc(now or self._clock())

        async def one(symbol: str) -> pd.DataFrame:
            return await self.fetch_symbol(symbol, interval, start, end, now=now)

        return await fetched_each(
            SOURCE, symbols, one, self.validation, interval, now=now, session=self.session
        )

    async def fetch_latest(
        self,
        symbols: Sequence[str],
        interval: str | Interval,
        *,
        outputsize: str = "compact",
        now: datetime | None = None,
    ) -> FetchResult:
        """Everything one compact/full answer holds, closed bars only (the research API)."""
        if outputsize not in ("compact", "full"):
            raise ConfigError(
                f"Alpha Vantage outputsize {outputsize!r} is not valid; valid: compact, full"
            )
        interval = parse_interval(interval)
        now = as_utc(now or self._clock())
        end = last_closed_label(now, interval, self.session)

        async def one(symbol: str) -> pd.DataFrame:
            return await self.fetch_symbol(
                symbol, interval, None, end, now=now, outputsize=outputsize
            )

        return await fetched_each(
            SOURCE, symbols, one, self.validation, interval, now=now, session=self.session
        )


__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_KEY",
    "AlphaVantageClient",
    "parse_body",
    "redact_body",
    "soft_error",
    "to_raw",
]
