"""A loopback Yahoo Finance chart API v8 (`GET /v8/finance/chart/{symbol}`).

    async with YahooFake(book) as fake:
        YahooClient(base_url=fake.url)
        fake.serve_recorded("AAPL", "chart_AAPL_1d_2020-08-31_to_2020-11-07_div_split.json")

Behaves as the fixtures README describes: 404 with Yahoo's envelope for a symbol in
`book.unknown`, 400 for an interval Yahoo does not know, 422 for intraday windows older than
Yahoo keeps (1m: 30 days, 2m-90m: 60 days, 1h: 730 days), 422 for a 1m window longer than 7
days however recent (`period2 - period1` over 7 days: Yahoo's "Only 7 days worth of 1m
granularity data are allowed to be fetched per request"), 429 `Too Many Requests` (text) when
throttled (`faults.throttle(n)`, or automatically after `throttle_after` requests), 503 when
`faults.down(n)`. Otherwise it synthesises bars from the `BarBook` in Yahoo's layout: parallel
arrays, epoch seconds (daily bars stamped at the 09:30 open), split-adjusted prices and volumes
for every bar before a split that has happened by `book.now`, `events` keyed by epoch strings,
and the session in progress as Yahoo shows it (stamped `regularMarketTime`; intraday: volume 0
and O=H=L=C). Symbols given to `serve_recorded` get the recorded body instead, for any request.

`split_query_events_only=True` (default False) answers a request for split events alone
(`events=split`, the client's look-up of later splits) with the events and no bars: an
accelerated replay of years-old windows would otherwise render years of bars per request,
a cost the real-time daemon never has (benchmarks/soak_faults.py).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from . import (
    FAULT,
    NY,
    BarBook,
    FakeServer,
    Fault,
    fixture_text,
    session_close,
    session_open,
    truncated,
)

VALID_INTERVALS = (
    "1m",
    "2m",
    "5m",
    "15m",
    "30m",
    "60m",
    "90m",
    "1h",
    "1d",
    "5d",
    "1wk",
    "1mo",
    "3mo",
)
INTRADAY_LIMIT_DAYS = {
    "1m": 30,
    "2m": 60,
    "5m": 60,
    "15m": 60,
    "30m": 60,
    "60m": 730,
    "90m": 60,
    "1h": 730,
}
# The longest `period1`..`period2` window one request may span, however recent (1m: 7 days;
# exactly 7 days is served, as yfinance's `period="max"` start of end - 604800 s shows).
# `range=5d` is served (the fake's window for it is wider than the bars it holds).
SPAN_LIMIT_DAYS = {"1m": 7}
RANGE_DAYS = {
    "5d": 7,
    "1mo": 31,
    "3mo": 92,
    "6mo": 183,
    "1y": 366,
    "2y": 731,
    "5y": 1827,
    "10y": 3653,
    "max": 36500,
}
NOT_FOUND = (
    '{"chart":{"result":null,"error":{"code":"Not Found",'
    '"description":"No data found, symbol may be delisted"}}}'
)


def _envelope(code: str, description: str) -> str:
    return json.dumps(
        {"chart": {"result": None, "error": {"code": code, "description": description}}}
    )


class YahooFake(FakeServer):
    def __init__(
        self,
        book: BarBook | None = None,
        throttle_after: int = 0,
        split_query_events_only: bool = False,
    ) -> None:
        super().__init__(book)
        self.recorded: dict[str, str] = {}
        self.throttle_after = throttle_after  # 0 = never throttle by count
        self.split_query_events_only = split_query_events_only

    def serve_recorded(self, symbol: str, fixture: str) -> None:
        """Answer every request for `symbol` with the recorded body of `yahoo/<fixture>`."""
        self.recorded[symbol] = fixture_text("yahoo", fixture)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v8/finance/chart/{symbol}", self.chart)

    def vendor_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "throttle":
            return web.Response(status=429, text="Too Many Requests", content_type="text/plain")
        if fault.kind == "down":
            return web.Response(status=503, text="Service Unavailable", content_type="text/plain")
        return None

    def _window(self, q: dict[str, str], interval: str) -> tuple[datetime, datetime, str]:
        now = self.book.now
        rng = q.get("range")
        if rng:
            if rng == "1d":  # the latest session that has opened
                day = self.book.today()
                while day.weekday() >= 5 or session_open(day) > now:
                    day -= timedelta(days=1)
                return session_open(day) - timedelta(hours=6), session_close(day), rng
            if rng == "ytd":
                return datetime(now.year, 1, 1, tzinfo=UTC), now + timedelta(days=1), rng
            return now - timedelta(days=RANGE_DAYS.get(rng, 31)), now + timedelta(days=1), rng
        p1 = datetime.fromtimestamp(int(q.get("period1", "0")), UTC)
        p2 = datetime.fromtimestamp(int(q.get("period2", str(int(now.timestamp())))), UTC)
        return p1, p2, ""

    async def chart(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        q = dict(request.query)
        if self.throttle_after and self.count > self.throttle_after:
            return web.Response(status=429, text="Too Many Requests", content_type="text/plain")
        if symbol in self.recorded:
            return web.Response(text=self.recorded[symbol], content_type="application/json")
        if symbol in self.book.unknown:
            return web.Response(status=404, text=NOT_FOUND, content_type="application/json")
        interval = q.get("interval", "1d")
        if interval not in VALID_INTERVALS:
            return web.Response(
                status=400,
                text=_envelope(
                    "Bad Request",
                    f"Invalid input - interval={interval} is not supported. Valid intervals: "
                    f"[{', '.join(VALID_INTERVALS)}]",
                ),
                content_type="application/json",
            )
        first, last, rng = self._window(q, interval)
        limit = INTRADAY_LIMIT_DAYS.get(interval)
        if limit is not None and first < self.book.now - timedelta(days=limit):
            return web.Response(
                status=422,
                text=_envelope(
                    "Unprocessable Entity",
                    f"{interval} data not available for startTime={int(first.timestamp())} and "
                    f"endTime={int(last.timestamp())}. The requested range must be within the "
                    f"last {limit} days.",
                ),
                content_type="application/json",
            )
        span = SPAN_LIMIT_DAYS.get(interval)
        if span is not None and not rng and last - first > timedelta(days=span):
            return web.Response(
                status=422,
                text=_envelope(
                    "Unprocessable Entity",
                    f"{interval} data not available for startTime={int(first.timestamp())} and "
                    f"endTime={int(last.timestamp())}. Only {span} days worth of {interval} "
                    "granularity data are allowed to be fetched per request.",
                ),
                content_type="application/json",
            )
        body = self.render(symbol, interval, first, last, rng, q, request.get(FAULT))
        text = json.dumps(body)
        if request.get(FAULT) == "malformed":
            text = truncated(text)
        return web.Response(text=text, content_type="application/json")

    def render(
        self,
        symbol: str,
        interval: str,
        first: datetime,
        last: datetime,
        rng: str,
        q: dict[str, str],
        fault: str | None,
    ) -> dict[str, Any]:
        book = self.book
        if fault == "empty" or (self.split_query_events_only and q.get("events") == "split"):
            bars = []
        elif interval == "1d":
            bars = [
                b
                for b in book.daily(symbol, first.astimezone(NY).date(), last.astimezone(NY).date())
                if first <= b.start < last
            ]
        else:
            minutes = 60 if interval == "1h" else int(interval.rstrip("m"))
            bars = book.intraday(symbol, minutes, first, last)
        stamps, o, h, lo, c, v = [], [], [], [], [], []
        now = book.now
        rmt = int(now.timestamp())
        for b in bars:
            adj = book.split_after(symbol, b.day)
            if b.in_progress:
                stamp = rmt
                if interval != "1d":
                    price = round(book.raw(symbol, now, b.day) / adj, 4)
                    stamps.append(stamp)
                    o.append(price), h.append(price), lo.append(price), c.append(price)
                    v.append(0)
                    continue
            else:
                stamp = int(b.start.timestamp())
            stamps.append(stamp)
            o.append(b.open / adj), h.append(b.high / adj), lo.append(b.low / adj)
            c.append(b.close / adj), v.append(round(b.volume * adj))
        if fault == "null" and len(stamps) > 2:
            k = len(stamps) // 2
            o[k] = h[k] = lo[k] = c[k] = v[k] = None
        day = book.today()
        while day.weekday() >= 5:
            day -= timedelta(days=1)
        result: dict[str, Any] = {
            "meta": {
                "currency": "USD",
                "symbol": symbol,
                "exchangeName": "NMS",
                "instrumentType": "EQUITY",
                "regularMarketTime": min(rmt, int(session_close(day).timestamp())),
                "gmtoffset": int(now.astimezone(NY).utcoffset().total_seconds()),  # type: ignore[union-attr]
                "timezone": now.astimezone(NY).tzname(),
                "exchangeTimezoneName": "America/New_York",
                "priceHint": 2,
                "currentTradingPeriod": {
                    "regular": {
                        "timezone": now.astimezone(NY).tzname(),
                        "start": int(session_open(day).timestamp()),
                        "end": int(session_close(day).timestamp()),
                        "gmtoffset": int(now.astimezone(NY).utcoffset().total_seconds()),  # type: ignore[union-attr]
                    }
                },
                "dataGranularity": interval,
                "range": rng,
            },
            "indicators": {"quote": [{}]},
        }
        if stamps:
            result["timestamp"] = stamps
            result["indicators"] = {
                "quote": [{"volume": v, "open": o, "close": c, "high": h, "low": lo}]
            }
        events = self._events(symbol, first, last, q.get("events", ""))
        if events:
            result["events"] = events
        return {"chart": {"result": [result], "error": None}}

    def _events(self, symbol: str, first: datetime, last: datetime, wanted: str) -> dict:
        book = self.book
        out: dict[str, dict[str, Any]] = {}
        if "split" in wanted:
            splits = {}
            for d, r in book.splits.get(symbol, {}).items():
                t = session_open(d)
                if first <= t < last and d <= book.today():
                    num, den = (r, 1) if r >= 1 else (1, round(1 / r))
                    splits[str(int(t.timestamp()))] = {
                        "date": int(t.timestamp()),
                        "numerator": num,
                        "denominator": den,
                        "splitRatio": f"{num:g}:{den:g}",
                    }
            if splits:
                out["splits"] = splits
        if "div" in wanted:
            divs = {}
            for d, amount in book.dividends.get(symbol, {}).items():
                t = session_open(d)
                if first <= t < last and d <= book.today():
                    divs[str(int(t.timestamp()))] = {
                        "amount": round(amount / book.split_after(symbol, d), 6),
                        "date": int(t.timestamp()),
                    }
            if divs:
                out["dividends"] = divs
        return out


def day_epoch(day: date) -> int:
    """The stamp Yahoo gives a New York daily bar: the session open in epoch seconds."""
    return int(session_open(day).timestamp())
