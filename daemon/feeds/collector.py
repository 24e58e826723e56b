"""`MarketDataCollector`: the specification's research API, on the daemon's own clients.

    async with MarketDataCollector() as mdc:
        aapl = await mdc.get_yahoo_finance_data("AAPL", period="1y", interval="1d")
        ibm = await mdc.get_alpha_vantage_daily_data("IBM", outputsize="compact")
        many = await mdc.get_multiple_symbols_data(["AAPL", "MSFT"], source="yahoo")
        mdc.errors            # {symbol: SourceError} of the last multi-symbol call

Every method returns the validated long table of the loaders and the live feed (columns time,
symbol, open, high, low, close, volume, split, dividend; raw prices with split and dividend
events; daily bars labelled by session date at 00:00, intraday bars by their start in UTC,
naive datetime64 in UTC), closed bars only: exactly what a model sees in a backtest and live.
Timeouts, retries, circuit breakers, budgets, the response cache and bounded concurrency are
those of the clients.

Deviations from the specification's signatures, on purpose:
  - the methods are coroutines (the daemon is asyncio; a notebook awaits them directly);
  - frames are the long table above rather than vendor-shaped columns, so research and trading
    share one shape (`frame.set_index("time")` gives a per-symbol time series);
  - `get_multiple_symbols_data` returns the symbols that worked and records each failure in
    `errors` (and a log line) instead of failing the whole call; `raise_on_error=True`
    raises the first failure instead. `source` is "yahoo", "alphavantage" (daily unless
    `interval` is intraday) or "alpaca" (one multi-symbol request per chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import pandas as pd
import structlog

from ..core.errors import ConfigError
from .alpaca_data import AlpacaDataClient
from .alphavantage import AlphaVantageClient
from .resilience import SourceError
from .response_cache import ResponseCache
from .vendor import FetchResult, as_utc, last_closed_label, parse_interval, utc_now
from .yahoo import YahooClient

log = structlog.get_logger(__name__)

SOURCES = ("yahoo", "alphavantage", "alpaca")
_PERIOD_DAYS = {
    "1d": 1,
    "5d": 5,
    "1mo": 31,
    "3mo": 92,
    "6mo": 183,
    "1y": 366,
    "2y": 731,
    "5y": 1827,
    "10y": 3653,
    "max": 365 * 60,
}


class MarketDataCollector:
    """Research access to the vendors. Clients not given are created on first use (Alpha
    Vantage and Alpaca read their keys from the environment then) and share `cache`
    (in-process unless given, e.g. `ResponseCache.from_url(REDIS_URL)`)."""

    def __init__(
        self,
        *,
        yahoo: YahooClient | None = None,
        alphavantage: AlphaVantageClient | None = None,
        alpaca: AlpacaDataClient | None = None,
        cache: ResponseCache | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._given = {"yahoo": yahoo, "alphavantage": alphavantage, "alpaca": alpaca}
        self._clients: dict[str, Any] = {k: v for k, v in self._given.items() if v is not None}
        self._own_cache = cache is None
        self.cache = cache or ResponseCache()
        self._clock = clock
        self._started: set[str] = set()
        self.errors: dict[str, SourceError] = {}

    async def __aenter__(self) -> MarketDataCollector:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.cache.start()

    async def stop(self) -> None:
        for name in list(self._started):
            await self._clients[name].stop()
        self._started.clear()
        if self._own_cache:
            await self.cache.stop()

    async def _client(self, source: str) -> Any:
        if source not in SOURCES:
            raise ConfigError(f"data source {source!r} is unknown; valid: {', '.join(SOURCES)}")
        client = self._clients.get(source)
        if client is None:
            factory = {
                "yahoo": YahooClient,
                "alphavantage": AlphaVantageClient,
                "alpaca": AlpacaDataClient,
            }[source]
            client = factory(cache=self.cache, clock=self._clock)
            self._clients[source] = client
        if source not in self._started:
            await client.start()
            self._started.add(source)
        return client

    def status(self) -> dict[str, Any]:
        return {name: c.status() for name, c in self._clients.items()}

    @staticmethod
    def _one(result: FetchResult, ticker: str) -> pd.DataFrame:
        err = result.errors.get(ticker)
        if err is not None:
            raise err
        return result.for_symbol(ticker)

    # ------------------------------------------------------------------ specification API

    async def get_yahoo_finance_data(
        self, ticker: str, period: str = "1y", interval: str = "1d"
    ) -> pd.DataFrame:
        """Yahoo bars for `period` (Yahoo's ranges: 1d 5d 1mo 3mo 6mo 1y 2y 5y 10y ytd max)."""
        client = await self._client("yahoo")
        return self._one(await client.fetch_period([ticker], period, interval), ticker)

    async def get_alpha_vantage_daily_data(
        self, ticker: str, outputsize: str = "compact"
    ) -> pd.DataFrame:
        """Alpha Vantage daily bars (compact: the latest 100; full: 20+ years)."""
        client = await self._client("alphavantage")
        return self._one(await client.fetch_latest([ticker], "1d", outputsize=outputsize), ticker)

    async def get_alpha_vantage_intraday_data(
        self, ticker: str, interval: str = "5min", outputsize: str = "compact"
    ) -> pd.DataFrame:
        """Alpha Vantage intraday bars (1min 5min 15min 30min 60min), raw, regular hours."""
        client = await self._client("alphavantage")
        iv = parse_interval(interval)
        if iv.daily:
            raise ConfigError(f"intraday interval {interval!r} must be 1min..60min")
        return self._one(await client.fetch_latest([ticker], iv, outputsize=outputsize), ticker)

    async def get_multiple_symbols_data(
        self, symbols: list[str] | Sequence[str], source: str = "yahoo", **kwargs: Any
    ) -> dict[str, pd.DataFrame]:
        """{symbol: bars} for every symbol that worked, fetched concurrently with the source's
        bounded concurrency; failures go to `self.errors`. Keyword arguments: `period`
        ('1y') and `interval` ('1d') for every source (Alpha Vantage: `outputsize` instead of
        period), `start`/`end` (datetimes) for an explicit window, `raise_on_error`."""
        raise_on_error = bool(kwargs.pop("raise_on_error", False))
        interval = parse_interval(kwargs.pop("interval", "1d"))
        period = kwargs.pop("period", "1y")
        start = kwargs.pop("start", None)
        end = kwargs.pop("end", None)
        outputsize = kwargs.pop("outputsize", "compact")
        if kwargs:
            raise TypeError(f"unknown argument(s) {sorted(kwargs)}")
        symbols = list(dict.fromkeys(symbols))
        client = await self._client(source)
        now = as_utc(self._clock())
        if start is not None:
            end = (
                as_utc(end) if end is not None else last_closed_label(now, interval, client.session)
            )
            result = await client.fetch(symbols, interval, as_utc(start), end, now=now)
        elif source == "yahoo":
            result = await client.fetch_period(symbols, period, interval, now=now)
        elif source == "alphavantage":
            result = await client.fetch_latest(symbols, interval, outputsize=outputsize, now=now)
        else:
            if period not in _PERIOD_DAYS:
                raise ConfigError(
                    f"period {period!r} is not valid; valid: {', '.join(_PERIOD_DAYS)}"
                )
            end_label = last_closed_label(now, interval, client.session)
            first = end_label - timedelta(days=_PERIOD_DAYS[period])
            result = await client.fetch(symbols, interval, first, end_label, now=now)
        self.errors = dict(result.errors)
        if result.errors:
            log.warning(
                "collector.symbols_failed",
                source=source,
                failed={s: e.kind for s, e in sorted(result.errors.items())},
            )
            if raise_on_error:
                raise next(iter(result.errors.values()))
        return {s: result.for_symbol(s) for s in symbols if s not in result.errors}
