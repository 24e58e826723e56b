"""A loopback Alpha Vantage (`GET /query?function=..&symbol=..&apikey=..`).

    async with AlphaVantageFake(book, api_key="test-key") as fake:
        AlphaVantageClient(api_key="test-key", base_url=fake.url)
        fake.serve_recorded("IBM")          # IBM answers with the recorded fixtures

Functions: TIME_SERIES_DAILY, TIME_SERIES_DAILY_ADJUSTED (raw OHLCV + dividend amount + split
coefficient), TIME_SERIES_INTRADAY (`interval`, `adjusted` (default true, as the real API:
split/dividend-adjusted prices), `extended_hours`, `month`), `outputsize` compact (latest 100)
or full, `datatype` json or csv. Every answer is HTTP 200, also the errors, as the real API:
  - missing or wrong `apikey`                  -> `Error Message` (apikey invalid or missing)
  - unknown function or symbol in book.unknown -> `Error Message` (Invalid API call)
  - a function in `premium`                    -> `Information` (premium endpoint)
  - `faults.throttle(n)` or more than `per_minute` calls in the last 60 s of book time
                                               -> `Note` (5 calls per minute, 500 per day)
  - more than `per_day` calls                  -> `Information` (25 requests per day)
  - `faults.empty_next()`                       -> a time series object with no rows
  - `faults.malformed_next()`                   -> truncated JSON
`requests` records every query, apikey included (the fake is the vendor: it must see it).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from . import FAULT, NY, BarBook, FakeServer, Fault, fixture_text, session_close, truncated

ERROR_APIKEY = (
    "the parameter apikey is invalid or missing. Please claim your free API key on "
    "(https://www.alphavantage.co/support/#api-key). It should take less than 20 seconds."
)
NOTE = (
    "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute "
    "and 500 calls per day. Please visit https://www.alphavantage.co/premium/ if you would like "
    "to target a higher API call frequency."
)
DAILY_LIMIT = (
    "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day. "
    "Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to "
    "instantly remove all daily rate limits."
)
PREMIUM = (
    "Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of "
    "the premium plans at https://www.alphavantage.co/premium/ to instantly unlock all premium "
    "endpoints"
)
FUNCTIONS = ("TIME_SERIES_DAILY", "TIME_SERIES_DAILY_ADJUSTED", "TIME_SERIES_INTRADAY")
RECORDED = {
    ("TIME_SERIES_DAILY", None): "time_series_daily_IBM",
    ("TIME_SERIES_DAILY_ADJUSTED", None): "time_series_daily_adjusted_IBM",
    ("TIME_SERIES_INTRADAY", "5min"): "time_series_intraday_5min_IBM",
}


def _invalid_call(function: str) -> dict[str, str]:
    return {
        "Error Message": "Invalid API call. Please retry or visit the documentation "
        f"(https://www.alphavantage.co/documentation/) for {function}."
    }


def _fmt(x: float) -> str:
    return f"{x:.4f}"


class AlphaVantageFake(FakeServer):
    def __init__(
        self,
        book: BarBook | None = None,
        api_key: str = "test-key",
        per_minute: int = 0,
        per_day: int = 0,
    ) -> None:
        super().__init__(book)
        self.api_key = api_key
        self.per_minute = per_minute  # 0 = no limit
        self.per_day = per_day
        self.premium: set[str] = set()
        self.recorded_symbols: set[str] = set()
        self._calls: list[datetime] = []

    def serve_recorded(self, symbol: str = "IBM") -> None:
        """Answer `symbol` with the recorded IBM fixtures (daily, daily adjusted, 5min)."""
        self.recorded_symbols.add(symbol)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/query", self.query)

    @staticmethod
    def _json(obj: Any) -> web.Response:
        return web.Response(text=json.dumps(obj, indent=4), content_type="application/json")

    def vendor_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "throttle":
            return self._json({"Note": NOTE})
        if fault.kind == "down":
            return web.Response(status=503, text="Service Unavailable", content_type="text/plain")
        return None

    async def query(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        key = q.get("apikey", "")
        if not key or key != self.api_key:
            return self._json({"Error Message": ERROR_APIKEY})
        now = self.book.now
        self._calls.append(now)
        recent = [t for t in self._calls if t > now - timedelta(seconds=60)]
        if self.per_minute and len(recent) > self.per_minute:
            return self._json({"Note": NOTE})
        if self.per_day and len(self._calls) > self.per_day:
            return self._json({"Information": DAILY_LIMIT})
        function = q.get("function", "")
        symbol = q.get("symbol", "")
        if function not in FUNCTIONS or not symbol or symbol in self.book.unknown:
            return self._json(_invalid_call(function or "(no function)"))
        if function in self.premium:
            return self._json({"Information": PREMIUM})
        datatype = q.get("datatype", "json")
        fault = request.get(FAULT)
        if symbol in self.recorded_symbols:
            name = RECORDED.get(
                (function, q.get("interval") if function == "TIME_SERIES_INTRADAY" else None)
            )
            if name is None:
                return self._json(_invalid_call(function))
            ext = "csv" if datatype == "csv" else "json"
            text = fixture_text("alphavantage", f"{name}.{ext}")
            ctype = "text/csv" if ext == "csv" else "application/json"
            return web.Response(
                text=truncated(text) if fault == "malformed" else text, content_type=ctype
            )
        rows, meta, series_key = self._series(function, symbol, q)
        if fault == "empty":
            rows = []
        if datatype == "csv":
            text = self._csv(rows, function)
            return web.Response(
                text=truncated(text) if fault == "malformed" else text, content_type="text/csv"
            )
        body = {"Meta Data": meta, series_key: {r["time"]: r["values"] for r in rows}}
        text = json.dumps(body, indent=4)
        return web.Response(
            text=truncated(text) if fault == "malformed" else text, content_type="application/json"
        )

    def _series(
        self, function: str, symbol: str, q: dict[str, str]
    ) -> tuple[list[dict[str, Any]], dict[str, str], str]:
        book = self.book
        now = book.now
        compact = q.get("outputsize", "compact") != "full"
        adjusted_view = function == "TIME_SERIES_INTRADAY" and q.get("adjusted", "true") == "true"
        rows: list[dict[str, Any]] = []
        if function == "TIME_SERIES_INTRADAY":
            interval = q.get("interval", "5min")
            minutes = int(interval.replace("min", ""))
            month = q.get("month")
            if month:
                first = datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=NY)
                last = (first + timedelta(days=32)).replace(day=1)
                first, last = first.astimezone(UTC), last.astimezone(UTC)
            else:
                first, last = now - timedelta(days=30), now + timedelta(minutes=1)
            bars = book.intraday(symbol, minutes, first, last)
            if compact:
                bars = bars[-100:]
            for b in bars:
                factor = 1.0
                if adjusted_view:
                    factor = book.split_after(symbol, b.day) / book.dividend_factor_after(
                        symbol, b.day
                    )
                stamp = b.start.astimezone(NY).strftime("%Y-%m-%d %H:%M:%S")
                rows.append(
                    {
                        "time": stamp,
                        "values": {
                            "1. open": _fmt(b.open / factor),
                            "2. high": _fmt(b.high / factor),
                            "3. low": _fmt(b.low / factor),
                            "4. close": _fmt(b.close / factor),
                            "5. volume": str(int(b.volume * factor)),
                        },
                    }
                )
            meta = {
                "1. Information": f"Intraday ({interval}) open, high, low, close prices and volume",
                "2. Symbol": symbol,
                "3. Last Refreshed": rows[-1]["time"] if rows else "",
                "4. Interval": interval,
                "5. Output Size": "Compact" if compact else "Full size",
                "6. Time Zone": "US/Eastern",
            }
            key = f"Time Series ({interval})"
        else:
            span = timedelta(days=160 if compact else 3650)  # compact: the latest 100 bars
            bars = book.daily(symbol, (now - span).date(), book.today())
            if compact:
                bars = bars[-100:]
            adjusted = function == "TIME_SERIES_DAILY_ADJUSTED"
            for b in bars:
                values = {
                    "1. open": _fmt(b.open),
                    "2. high": _fmt(b.high),
                    "3. low": _fmt(b.low),
                    "4. close": _fmt(b.close),
                }
                if adjusted:
                    factor = book.split_after(symbol, b.day) / book.dividend_factor_after(
                        symbol, b.day
                    )
                    values |= {
                        "5. adjusted close": _fmt(b.close / factor),
                        "6. volume": str(int(b.volume)),
                        "7. dividend amount": _fmt(book.dividends.get(symbol, {}).get(b.day, 0.0)),
                        "8. split coefficient": str(book.splits.get(symbol, {}).get(b.day, 1.0)),
                    }
                else:
                    values["5. volume"] = str(int(b.volume))
                rows.append({"time": b.day.isoformat(), "values": values})
            meta = {
                "1. Information": "Daily Time Series with Splits and Dividend Events"
                if adjusted
                else "Daily Prices (open, high, low, close) and Volumes",
                "2. Symbol": symbol,
                "3. Last Refreshed": rows[-1]["time"] if rows else "",
                "4. Output Size": "Compact" if compact else "Full size",
                "5. Time Zone": "US/Eastern",
            }
            key = "Time Series (Daily)"
        rows.reverse()  # newest first, as the vendor
        return rows, meta, key

    @staticmethod
    def _csv(rows: list[dict[str, Any]], function: str) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        if function == "TIME_SERIES_DAILY_ADJUSTED":
            header = [
                "timestamp",
                "open",
                "high",
                "low",
                "close",
                "adjusted_close",
                "volume",
                "dividend_amount",
                "split_coefficient",
            ]
        else:
            header = ["timestamp", "open", "high", "low", "close", "volume"]
        w.writerow(header)
        for r in rows:
            w.writerow([r["time"], *r["values"].values()])
        return out.getvalue()


def last_session_close(book: BarBook) -> datetime:
    day = book.today()
    while day.weekday() >= 5 or session_close(day) > book.now:
        day -= timedelta(days=1)
    return session_close(day)
