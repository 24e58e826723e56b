"""Alpaca market data through alpaca-py's `StockHistoricalDataClient` (base URL configurable).

alpaca-py is synchronous (requests). Each request runs on daemon threads of this client
(`max_concurrency` of them, `alpaca_sdk.DaemonWorker`, so a stuck vendor cannot starve the
event loop's default executor, and neither a stop nor the interpreter's exit waits for a
request hung in one) under the caller's timeout; requests itself gets the same timeout
through the client's session (alpaca-py sets none, so without it a hung socket would pin a
thread forever), per read and as a deadline for the whole request, the body's read included
(`alpaca_sdk.DeadlineSession`): requests' timeout is per read, so an answer trickling its
body held its thread for as long as it dripped, and two of them every later request.
Keys come from `APCA_API_KEY_ID` / `APCA_API_SECRET_KEY` (or are given); both are scrubbed
from messages. The data client always uses the multi-symbol
`GET /v2/stocks/bars`; this client asks for up to `max_symbols_per_request` symbols per call
and walks `next_page_token` itself, a page (up to 10,000 bars) per request through alpaca-py's
`get`: each page is one attempt of the caller, with its own timeout, rate-limit token and
retries (alpaca-py's `get_stock_bars` walks all pages inside one call, which the caller could
only time, count and retry as a whole).

Prices: bars are requested with `adjustment="raw"` (as traded). Corporate actions are derived
from Alpaca's own adjusted series when `derive_actions` is on (the default; two more requests
per call, over the same window plus a few days before it so the first bar has a predecessor):
  split     F(t) = raw close / split-adjusted close is the product of the splits after t, so
            the coefficient on bar t is F(t-1) / F(t) (1.0 within 1e-3, else snapped to a simple
            fraction as validate.py does).
  dividend  h(t) = all-adjusted / split-adjusted close is the dividend factor; a dividend D
            going ex on bar t makes h(t-1) / h(t) = 1 - D / C(t-1) (the usual multiplicative
            convention, as in CRSP; Alpaca does not document its formula), so
            D = C(t-1) * (1 - h(t-1)/h(t)), C in the share basis of bar t, rounded to 4
            decimals, ignored below 1e-6 relative.
What is not derived: an action on the very first bar Alpaca has for a symbol (no previous
bar), and actions whose effect Alpaca's adjusted series do not show. With `derive_actions` off
every bar has split 1.0 and dividend 0.0, and raw prices jump at a split.

Labels: daily bars are stamped at New York midnight in UTC (04:00Z/05:00Z) and labelled by
that New York date; intraday bars by their start (Alpaca's stamp) in UTC. A daily bar of the
session in progress is served only after the session's close.

Errors: `APIError` by HTTP status (401/403 -> `auth`, e.g. the free plan's "subscription does
not permit querying recent SIP data"; 429 -> `http_429`, its Retry-After kept for the caller's
wait; 5xx -> `http_5xx`; ...). alpaca-py's own 429/504 retries (3 x a fixed 3 s sleep in the
worker thread, unseen by the caller's limiter and breaker) are off (`alpaca_sdk.no_sdk_retries`):
every request is one attempt of the `ResilientCaller`, which backs off and honours Retry-After.
An HTTP 200 whose body is not the bars object (empty, `null`, `{"bars": null}`, a symbol's
bars `null`) is `malformed`, retried as Yahoo's and Alpha Vantage's are. A bar of a symbol
that is not an object or has no readable `t` refuses that symbol only (`malformed`, naming
the bar; `alpaca.bar_unreadable`); an o/h/l/c/v missing, `null` or not a number is NaN, which
validation drops (an older bar) or refuses (the newest), as a Yahoo `null`. An exception of ours
while handling a chunk's answer fails that chunk's symbols as `internal`
(`source.internal_error`, with the traceback); the other chunks are served.

Cache: a cached answer that cannot be read (not JSON, no `body` or `fetched_at`, a body that
does not parse: a truncated or foreign entry in a shared Redis) is logged as
`alpaca.cache.bad_entry` and asked for again.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import structlog

from ..alpaca_sdk import DaemonWorker, DeadlineSession, no_sdk_retries
from ..core.errors import ConfigError
from .resilience import ResilientCaller, SourceConfig, SourceError, error_for_status, make_error
from .response_cache import ResponseCache, cache_key, held_writes
from .validate import snap_split
from .vendor import (
    FetchResult,
    Interval,
    Session,
    Validation,
    as_utc,
    bar_close,
    closed_only,
    empty_raw,
    in_window,
    parse_interval,
    utc_now,
    validated,
)

log = structlog.get_logger(__name__)

SOURCE = "alpaca"
ENV_KEY_ID = "APCA_API_KEY_ID"
ENV_SECRET_KEY = "APCA_API_SECRET_KEY"
FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")
SPLIT_TOLERANCE = 1e-3
# Bars a page of `GET /v2/stocks/bars`: Alpaca's largest `limit` (alpaca-py's page size).
PAGE_SIZE = 10_000
DIVIDEND_TOLERANCE = 1e-6


def timeframe_of(interval: Interval) -> Any:
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

    if interval.daily:
        return TimeFrame(1, TimeFrameUnit.Day)
    if interval.minutes == 60:
        return TimeFrame(1, TimeFrameUnit.Hour)
    return TimeFrame(interval.minutes, TimeFrameUnit.Minute)


def _parse_bars(
    text: str, interval: Interval, timezone: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The body decoded and parsed in one call, for a worker thread."""
    return bars_to_long(json.loads(text), interval, timezone)


FIELDS = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}


def _scalar(value: Any) -> Any:
    """A bar's field as `pd.to_numeric` reads it: a list, object or bool is None (NaN)."""
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


def bars_to_long(
    bars: Mapping[str, Sequence[Mapping[str, Any]]], interval: Interval, tz: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Alpaca's {symbol: [{t,o,h,l,c,v,...}]} as one raw long table (symbol, time as naive UTC
    labels, OHLCV, split 1.0, dividend 0.0), sorted by symbol and time, and the symbols
    refused, each with what is wrong with which of its bars. Raises ValueError when `bars`
    is not an object.

    Each symbol on its own: a bar that is not an object, or whose `t` is missing or not a
    time, refuses its symbol only (without a label the bar cannot be placed, nor dropped as
    a gap); an o/h/l/c/v missing, `null` or not a number is NaN, which validation drops (an
    older bar) or refuses (the newest bar) naming the symbol and bar, as a Yahoo `null`. One
    such bar failed the whole request, up to 100 symbols, with a message naming neither the
    symbol nor the bar."""
    if not isinstance(bars, Mapping):
        raise ValueError(f"bars are a {type(bars).__name__}, not an object")
    refused: dict[str, str] = {}
    rows: list[tuple[str, Mapping[str, Any]]] = []
    count: dict[str, int] = {}
    for sym, seq in bars.items():
        symbol = str(sym)
        count[symbol] = len(seq)
        odd = next(((i, bar) for i, bar in enumerate(seq) if not isinstance(bar, Mapping)), None)
        if odd is not None:
            i, bar = odd
            refused[symbol] = f"bar {i} of {len(seq)} is {bar!r:.60}, not an object"
            continue
        rows.extend((symbol, bar) for bar in seq)
    if not rows:
        out = empty_raw()
        out.insert(0, "symbol", pd.Series(dtype=object))
        return out, refused
    frame = pd.DataFrame(
        {"symbol": [sym for sym, _ in rows]}
        | {name: [_scalar(b.get(key)) for _, b in rows] for name, key in FIELDS.items()}
    )
    given = pd.Series([b.get("t") for _, b in rows], dtype=object)
    as_text = given.map(lambda t: t if isinstance(t, str) else None)
    stamps = pd.to_datetime(as_text, utc=True, format="ISO8601", errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        position = frame.groupby("symbol", sort=False).cumcount().to_numpy()
        for k in np.flatnonzero(bad):
            symbol = frame["symbol"].iat[k]
            if symbol not in refused:
                sent = "missing" if "t" not in rows[k][1] else f"{given.iat[k]!r:.40}"
                refused[symbol] = (
                    f"bar {position[k]} of {count[symbol]} has t {sent}, not a time "
                    f"(bar {dict(rows[k][1])!r:.120})"
                )
        keep = ~frame["symbol"].isin(list(refused)).to_numpy()
        frame, stamps = frame[keep].reset_index(drop=True), stamps[keep].reset_index(drop=True)
    if interval.daily:
        labels = stamps.dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    else:
        labels = stamps.dt.tz_localize(None)
    frame.insert(1, "time", labels.astype("datetime64[ns]").to_numpy())
    for name in FIELDS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    frame["split"] = 1.0
    frame["dividend"] = 0.0
    out = frame.sort_values(["symbol", "time"], kind="stable").reset_index(drop=True)
    return out, refused


def read_page(page: Any) -> tuple[dict[str, list[Any]], str | None]:
    """A decoded page of `GET /v2/stocks/bars`: its bars by symbol and `next_page_token`
    (None on the last page). An HTTP 200 that is not that object raises SourceError
    `malformed` (retried), as Yahoo's and Alpha Vantage's odd answers do: alpaca-py's page
    loop raised TypeError on an empty body or `null`, AttributeError on `{"bars": null}`,
    TypeError on `{"bars": {"A": null}}`, which left `VendorFeed.bars` and ended the
    daemon (the engine's loop retries RetryableError only)."""
    if not isinstance(page, dict):
        shape = "empty or null" if page is None else f"a {type(page).__name__}"
        raise make_error(SOURCE, "malformed", f"the answer is {shape}, not the bars object")
    bars = page.get("bars")
    if not isinstance(bars, dict):
        shape = "missing or null" if bars is None else f"a {type(bars).__name__}"
        raise make_error(SOURCE, "malformed", f"the answer's bars are {shape}, not an object")
    odd = sorted(str(sym) for sym, seq in bars.items() if not isinstance(seq, list))
    if odd:
        raise make_error(SOURCE, "malformed", f"the bars of {odd[:5]} are not a list")
    token = page.get("next_page_token")
    if token is not None and not (isinstance(token, str) and token):
        raise make_error(SOURCE, "malformed", f"next_page_token is {token!r:.40}")
    return bars, token


def _close_of(adjusted: pd.DataFrame, raw: pd.DataFrame) -> np.ndarray:
    """The adjusted close of each row of `raw` (NaN where the adjusted table has none).

    A bar Alpaca repeats (in either table) is not a reason to fail the request: the merge
    refused it, and with it every symbol of the request (up to 100) for as long as the
    repeat stayed in the window. The adjusted table's last copy is taken; a repeated raw
    bar stays, for validation to refuse or repair for its own symbol only."""
    key = ["symbol", "time"]
    adjusted = adjusted[[*key, "close"]].drop_duplicates(key, keep="last")
    merged = raw[key].merge(adjusted, on=key, how="left", validate="m:1")
    return merged["close"].to_numpy(dtype=np.float64)


def derive_actions(
    raw: pd.DataFrame, split_adj: pd.DataFrame | None, all_adj: pd.DataFrame | None
) -> pd.DataFrame:
    """`raw` (a long table sorted by symbol and time) with split and dividend derived from
    the adjusted tables of the same request (see the module docstring). Bars missing from an
    adjusted table get no action; the first bar of each symbol gets none."""
    if raw.empty or split_adj is None or split_adj.empty:
        return raw
    sym = raw["symbol"].to_numpy()
    same = np.zeros(len(raw), dtype=bool)  # row i continues row i-1's symbol
    same[1:] = sym[1:] == sym[:-1]
    c_raw = raw["close"].to_numpy(dtype=np.float64)
    c_split = _close_of(split_adj, raw)
    factor = c_raw / c_split  # F(t): the splits after t
    split = np.ones(len(raw))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.r_[np.nan, factor[:-1] / factor[1:]]
    for i in np.flatnonzero(same & np.isfinite(ratio) & (np.abs(ratio - 1.0) > SPLIT_TOLERANCE)):
        split[i] = snap_split(float(ratio[i]))
    dividend = np.zeros(len(raw))
    if all_adj is not None and not all_adj.empty:
        h = _close_of(all_adj, raw) / c_split  # the dividend factor
        with np.errstate(divide="ignore", invalid="ignore"):
            drop = np.r_[np.nan, 1.0 - h[:-1] / h[1:]]
        for i in np.flatnonzero(same & np.isfinite(drop) & (drop > DIVIDEND_TOLERANCE)):
            prev_close = c_raw[i - 1] / split[i]  # in the share basis of bar i
            dividend[i] = round(prev_close * float(drop[i]), 4)
    return raw.assign(split=split, dividend=dividend)


class AlpacaDataClient:
    """Bars from Alpaca's market data API. See the module docstring."""

    name = SOURCE

    def __init__(
        self,
        *,
        api_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        config: SourceConfig | None = None,
        caller: ResilientCaller | None = None,
        cache: ResponseCache | None = None,
        feed: str | None = "iex",
        derive_actions: bool = True,
        max_symbols_per_request: int = 100,
        validation: Validation | None = None,
        session: Session | None = None,
        clock: Callable[[], datetime] = utc_now,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if feed is not None and feed not in FEEDS:
            raise ConfigError(f"Alpaca data feed {feed!r} is not valid; valid: {', '.join(FEEDS)}")
        if max_symbols_per_request < 1:
            raise ConfigError("Alpaca max_symbols_per_request must be >= 1")
        environ = env if env is not None else os.environ
        self._api_key = api_key if api_key is not None else environ.get(ENV_KEY_ID)
        self._secret_key = secret_key if secret_key is not None else environ.get(ENV_SECRET_KEY)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.caller = caller or ResilientCaller(SOURCE, config or SourceConfig.for_source(SOURCE))
        self.caller.add_secret(self._api_key)
        self.caller.add_secret(self._secret_key)
        self._own_cache = cache is None
        self.cache = cache or ResponseCache()
        self.feed = feed
        self.derive = derive_actions
        self.max_symbols_per_request = max_symbols_per_request
        self.validation = validation or Validation()
        self.session = session or Session()
        self._clock = clock
        self._client: Any = None
        self._pool: DaemonWorker | None = None

    def __repr__(self) -> str:  # never show the keys
        return f"AlpacaDataClient(base_url={self.base_url!r}, feed={self.feed!r})"

    async def start(self) -> None:
        if not self._api_key or not self._secret_key:
            raise ConfigError(
                f"Alpaca market data needs the environment variables {ENV_KEY_ID} and "
                f"{ENV_SECRET_KEY}"
            )
        if self._own_cache:
            await self.cache.start()
        if self._client is None:
            from alpaca.data.historical import StockHistoricalDataClient

            client = StockHistoricalDataClient(
                self._api_key, self._secret_key, raw_data=True, url_override=self.base_url
            )
            # alpaca-py gives requests no timeout; its session is the only place to set one:
            # timeout_s per read and in all, the body's read included (`DeadlineSession`).
            client._session = DeadlineSession(
                self.caller.config.timeout_s, max_body_bytes=self.caller.config.max_body_bytes
            )
            no_sdk_retries(client)  # the caller retries, with backoff, outside the thread
            self._client = client
        if self._pool is None:
            self._pool = DaemonWorker("alpaca-data", threads=self.caller.config.max_concurrency)

    async def stop(self) -> None:
        """The worker threads, the session and an own cache: a request in flight is not
        waited for, here or at the interpreter's exit (its thread is a daemon)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._client is not None:
            self._client._session.close()
            self._client = None
        if self._own_cache:
            await self.cache.stop()

    def status(self) -> dict[str, Any]:
        return self.caller.status()

    # ------------------------------------------------------------------ requests

    def _query(
        self,
        symbols: Sequence[str],
        interval: Interval,
        start: datetime,
        end: datetime,
        adjustment: str,
    ) -> dict[str, Any]:
        """The query of `GET /v2/stocks/bars` as alpaca-py builds it (`StockBarsRequest`),
        asking for Alpaca's largest page."""
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.requests import StockBarsRequest

        req = StockBarsRequest(
            symbol_or_symbols=list(symbols),
            timeframe=timeframe_of(interval),
            start=start,
            end=end,
            adjustment=Adjustment(adjustment),
            feed=DataFeed(self.feed) if self.feed else None,
        )
        query: dict[str, Any] = req.to_request_fields()
        query["limit"] = PAGE_SIZE
        return query

    def _get_page_sync(self, query: dict[str, Any]) -> tuple[dict[str, list[Any]], str | None]:
        """One request, for a worker thread: a page of bars by symbol and its
        `next_page_token`. alpaca-py's `get` sends it once (its own retries are off)."""
        from alpaca.common.exceptions import APIError

        try:
            page = self._client.get("/stocks/bars", query)
        except APIError as exc:
            status = exc.status_code or 0
            body = str(exc)
            if status:
                response = exc.response
                raise error_for_status(
                    SOURCE,
                    status,
                    body,
                    retry_after=response.headers.get("Retry-After")
                    if response is not None
                    else None,
                    secrets=self.caller.secrets,
                ) from None
            raise make_error(SOURCE, "malformed", self.caller.redact(body)[:300]) from None
        except ValueError as exc:  # requests.JSONDecodeError: an HTTP 200 that is not JSON
            raise make_error(
                SOURCE, "malformed", self.caller.redact(f"{type(exc).__name__}: {exc}")[:300]
            ) from None
        return read_page(page)

    async def get_bars(
        self,
        symbols: Sequence[str],
        interval: Interval,
        start: datetime,
        end: datetime,
        *,
        adjustment: str = "raw",
        now: datetime,
    ) -> tuple[pd.DataFrame, datetime, dict[str, str]]:
        """One logical request, its pages asked for one by one (each an attempt of the
        caller): the raw long table, when it was fetched, and the symbols whose bars could
        not be read (`bars_to_long`), with why. Cached, all pages as one answer, when the
        window's last bar has closed."""
        if self._client is None:
            await self.start()
        end_close = bar_close(end, interval, self.session)
        request = {
            "symbols": ",".join(symbols),
            "start": start.isoformat(),
            "end": end.isoformat(),
            "adjustment": adjustment,
            "feed": self.feed,
        }
        label = symbols[0] if len(symbols) == 1 else f"{len(symbols)}symbols"
        # No base_url: alpaca-py's own (BaseURL.DATA), named so a fake's answers stay apart.
        endpoint = self.base_url or "https://data.alpaca.markets"
        key = (
            cache_key(SOURCE, label, interval.name, request, base_url=endpoint)
            if end_close <= now
            else None
        )
        what = f"bars {label} {interval.name} {adjustment}"
        if key is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                try:
                    entry = json.loads(hit)
                    body, cached_at = entry["body"], datetime.fromisoformat(entry["fetched_at"])
                    if not isinstance(body, str):
                        raise TypeError(f"body is a {type(body).__name__}")
                    frame, refused = await asyncio.to_thread(
                        _parse_bars, body, interval, self.session.timezone
                    )
                    return frame, cached_at, refused
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("alpaca.cache.bad_entry", what=what)
        pool = self._pool
        assert pool is not None
        query = self._query(symbols, interval, start, end, adjustment)
        bars: dict[str, list[Any]] = {}
        token: str | None = None
        seen: set[str] = set()
        pages = 0
        # The pages the window can fill (every symbol a bar every interval, calendar time
        # included), twice over, and two a symbol more (pages not filled to the limit, one
        # a symbol, are not ruled out by Alpaca's documentation): a server handing out new
        # tokens for ever was followed for ever (only a token repeated ended it).
        full = math.ceil(len(symbols) * ((end - start) / interval.delta + 1) / PAGE_SIZE)
        most = 2 * (1 + full) + 2 * len(symbols)
        # Page by page, each one request and one attempt of the caller (its limiter token,
        # timeout and retries): alpaca-py's `get_stock_bars` walks `next_page_token` inside
        # one call, so a window of k pages had one timeout and one token for all of them,
        # failed whenever k pages took longer than timeout_s (a long catch-up never came),
        # and a walk given up went on in its thread; a retry began again at page 1.
        while True:
            pages += 1
            page = query if token is None else {**query, "page_token": token}

            async def attempt(page: dict[str, Any] = page) -> tuple[dict[str, Any], str | None]:
                return await asyncio.wrap_future(pool.submit(self._get_page_sync, page))

            more, token = await self.caller.call(
                attempt, what=what if pages == 1 else f"{what} page {pages}"
            )
            for sym, seq in more.items():
                bars.setdefault(str(sym), []).extend(seq)
            if token is None:
                break
            if token in seen:  # the pages would never end
                raise make_error(SOURCE, "malformed", "a next_page_token came twice")
            if pages >= most:
                raise make_error(
                    SOURCE,
                    "malformed",
                    f"still a next_page_token after {pages} pages, more than {len(symbols)} "
                    f"symbol(s) of {interval.name} bars from {start.isoformat()} to "
                    f"{end.isoformat()} can fill ({PAGE_SIZE} bars a page)",
                )
            seen.add(token)
        text = await asyncio.to_thread(json.dumps, bars)
        fetched_at = now
        if key is not None:
            entry = {"fetched_at": now.isoformat(), "body": text}
            await self.cache.set(key, json.dumps(entry).encode(), symbols=symbols)
        try:
            # In a worker thread: a warm-up page of 100 symbols x 500 bars is a long parse.
            frame, refused = await asyncio.to_thread(
                _parse_bars, text, interval, self.session.timezone
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise make_error(SOURCE, "malformed", self.caller.redact(exc)[:300]) from None
        return frame, fetched_at, refused

    async def _fetch_chunk(
        self,
        symbols: Sequence[str],
        interval: Interval,
        start: datetime,
        end: datetime,
        now: datetime,
    ) -> dict[str, pd.DataFrame | BaseException]:
        margin = timedelta(days=7 if interval.daily else 4) if self.derive else timedelta(0)
        first = start - margin
        # Alpaca's `end` bounds the stamps: a daily bar is stamped at New York midnight in UTC
        # (04:00Z/05:00Z), later than the label's 00:00Z; the whole label date is asked for.
        last = end + timedelta(days=1, seconds=-1) if interval.daily else end
        refused: dict[str, SourceError] = {}

        def refuse(table: str, unread: dict[str, str]) -> None:
            # A bar of the symbol that cannot be read, in any of the three tables: the
            # symbol only is refused (its actions would be derived from a table missing
            # it), named with the bar; the chunk's other symbols are served.
            for sym, why in unread.items():
                if sym in refused:
                    continue
                text = self.caller.redact(f"{table} bars: {why}")[:300]
                refused[sym] = make_error(SOURCE, "malformed", text, symbol=sym)
                log.warning(
                    "alpaca.bar_unreadable", source=SOURCE, symbol=sym, table=table, error=text
                )

        try:
            raw, fetched_at, unread = await self.get_bars(symbols, interval, first, last, now=now)
            refuse("raw", unread)
            if self.derive:
                split_adj, _, unread = await self.get_bars(
                    symbols, interval, first, last, adjustment="split", now=now
                )
                refuse("split-adjusted", unread)
                all_adj, _, unread = await self.get_bars(
                    symbols, interval, first, last, adjustment="all", now=now
                )
                refuse("all-adjusted", unread)
                if refused:
                    gone = list(refused)
                    raw = raw[~raw["symbol"].isin(gone)].reset_index(drop=True)
                    split_adj = split_adj[~split_adj["symbol"].isin(gone)]
                    all_adj = all_adj[~all_adj["symbol"].isin(gone)]
                try:
                    raw = derive_actions(raw, split_adj, all_adj)
                except ValueError as exc:  # e.g. a bar repeated in an adjusted table
                    text = self.caller.redact(f"adjusted bars: {exc}")[:300]
                    raise make_error(SOURCE, "malformed", text) from None
            raw = closed_only(raw, interval, min(now, fetched_at), self.session)
            raw = in_window(raw, start, end)
            by_symbol = {
                str(s): g.drop(columns="symbol") for s, g in raw.groupby("symbol", sort=False)
            }
        except SourceError as err:
            return {s: err.for_symbol(s) for s in symbols}
        except Exception as exc:
            # A bug of ours while handling the chunk's answer: its symbols fail (`internal`,
            # as `combine` makes a client's exception of one symbol), said once with the
            # traceback; the other chunks are served. Left out, it failed the whole fetch,
            # and `VendorFeed.bars` with it: the engine's loop retries RetryableError only.
            log.error("source.internal_error", source=SOURCE, symbols=list(symbols), exc_info=exc)
            text = self.caller.redact(f"{type(exc).__name__}: {exc}")[:300]
            failure = make_error(SOURCE, "internal", text)
            return {s: failure.for_symbol(s) for s in symbols}
        out: dict[str, pd.DataFrame | BaseException] = {}
        for s in symbols:
            out[s] = refused[s] if s in refused else by_symbol.get(s, empty_raw())
        return out

    async def fetch(
        self,
        symbols: Sequence[str],
        interval: str | Interval,
        start: datetime,
        end: datetime,
        *,
        now: datetime | None = None,
    ) -> FetchResult:
        """Validated closed bars with labels in [start, end]; symbols are asked for in chunks
        of `max_symbols_per_request`, chunks concurrently (bounded by the caller)."""
        interval = parse_interval(interval)
        now = as_utc(now or self._clock())
        start, end = as_utc(start), as_utc(end)
        symbols = list(dict.fromkeys(symbols))
        n = self.max_symbols_per_request
        chunks = [symbols[i : i + n] for i in range(0, len(symbols), n)]
        # Cached once validated (see response_cache.py): a chunk's answers hold all of its
        # symbols, and are asked for again when any of them was refused.
        with held_writes() as held:
            results = await asyncio.gather(
                *(self._fetch_chunk(c, interval, start, end, now) for c in chunks)
            )
        parts: dict[str, pd.DataFrame | BaseException] = {}
        for res in results:
            parts.update(res)
        return await validated(
            SOURCE,
            parts,
            self.validation,
            parse_interval(interval),
            held,
            now=now,
            session=self.session,
        )
