"""Loopback fakes of the market-data vendors, for the real clients, with fault injection.

Three servers (aiohttp.web on 127.0.0.1, a free port), one per vendor:

    from fakes.yahoo_server import YahooFake
    from fakes.alphavantage_server import AlphaVantageFake
    from fakes.alpaca_data_server import AlpacaDataFake

    book = BarBook(now=datetime(2024, 3, 6, 22, 0, tzinfo=UTC))   # the fake market
    book.add_split("AAPL", date(2024, 3, 4), 4.0)                  # corporate actions
    book.add_dividend("MSFT", date(2024, 3, 5), 0.75)
    async with YahooFake(book) as yahoo:                            # or: await fake.start()
        client = YahooClient(base_url=yahoo.url, ...)
        yahoo.faults.throttle(2)          # the next 2 requests get 429 "Too Many Requests"
        yahoo.faults.down(5)              # the next 5 requests get 503 (a source down)
        yahoo.faults.delay_next(1, 0.5)   # the next request answers after 0.5 s (a timeout)
        yahoo.faults.malformed_next(1)    # HTTP 200 with a truncated JSON body
        yahoo.faults.empty_next(1)        # HTTP 200 with no bars (the vendor's empty shape)
        yahoo.faults.reset_next(1)        # the connection is closed without an answer
        yahoo.faults.respond_next(body, status=200)  # a canned answer (a recorded fixture)
        yahoo.faults.hold_s = 0.02        # keep every request in flight a while
        yahoo.max_in_flight, yahoo.count, yahoo.requests   # what the clients did
        book.unknown.add("NOPE")          # answered as the vendor answers an unknown symbol
        book.now = ...                    # move the market's clock (in-progress bars follow)

One-shot faults are consumed in order, one per request (see `Faults`). `start_in_thread()` runs
a fake on its own event loop in a background thread (for synchronous callers or a daemon run
in another loop); `stop_thread()` ends it.

`BarBook` synthesises bars for any symbol and any window, deterministically: a smooth price
path per symbol (no randomness between calls), weekdays 09:30-16:00 New York as sessions (no
holidays), raw prices that drop by the ratio at each split, and the bar of the session in
progress at `now` (daily: partial; intraday: stamped `now`, volume 0, O=H=L=C, as Yahoo does).
Each fake renders the same book in its vendor's format (Yahoo: split-adjusted prices and
epoch stamps; Alpha Vantage: strings, newest first; Alpaca: pages, `adjustment=`).

Recorded fixtures live in /work/shared/fixtures (`FIXTURES`, overridable with
TRADINGD_SHARED_FIXTURES); tests that need them call `need_fixtures()`, which skips with a
reason when they are absent. Nothing of /work/shared is copied into the repository.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("TRADINGD_SHARED_FIXTURES", ROOT.parent / "shared" / "fixtures"))
NY = ZoneInfo("America/New_York")
# Where the middleware leaves a fault for the vendor's handler to render (empty, malformed...).
FAULT = web.RequestKey("fault", str)
OPEN, CLOSE = time(9, 30), time(16, 0)


def need_fixtures() -> Path:
    """The fixtures folder, or skip the calling test with the reason."""
    import pytest

    if not (FIXTURES / "README.md").exists():
        pytest.skip(f"recorded vendor fixtures not present at {FIXTURES}")
    return FIXTURES


def fixture_text(*parts: str) -> str:
    return (FIXTURES.joinpath(*parts)).read_text()


def fixture_json(*parts: str) -> Any:
    return json.loads(fixture_text(*parts))


# ----------------------------------------------------------------------------- the market


def session_open(day: date) -> datetime:
    return datetime.combine(day, OPEN, NY).astimezone(UTC)


def session_close(day: date) -> datetime:
    return datetime.combine(day, CLOSE, NY).astimezone(UTC)


def weekdays(first: date, last: date) -> Iterator[date]:
    d = first
    while d <= last:
        if d.weekday() < 5:
            yield d
        d += timedelta(days=1)


@dataclass
class Bar:
    """One synthetic bar: `start` (UTC; daily bars: the session open), raw prices."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    day: date
    in_progress: bool = False


@dataclass
class BarBook:
    """A deterministic synthetic market shared by the fakes. See the module docstring."""

    now: datetime = field(default_factory=lambda: datetime(2024, 3, 6, 22, 0, tzinfo=UTC))
    splits: dict[str, dict[date, float]] = field(default_factory=dict)
    dividends: dict[str, dict[date, float]] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=lambda: {"UNKNOWN", "NOPE"})
    first_day: date = date(2015, 1, 1)

    def add_split(self, symbol: str, day: date, ratio: float) -> None:
        self.splits.setdefault(symbol, {})[day] = float(ratio)

    def add_dividend(self, symbol: str, day: date, amount: float) -> None:
        self.dividends.setdefault(symbol, {})[day] = float(amount)

    def today(self) -> date:
        return self.now.astimezone(NY).date()

    # The economic price path, in the symbol's first share basis.
    def _seed(self, symbol: str) -> tuple[float, float]:
        h = int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16)
        return 20.0 + (h % 400), (h % 1000) / 1000.0 * 2 * math.pi

    def value(self, symbol: str, t: datetime) -> float:
        base, phase = self._seed(symbol)
        days = t.timestamp() / 86400.0
        return base * math.exp(
            0.08 * math.sin(2 * math.pi * days / 29.0 + phase)
            + 0.01 * math.sin(2 * math.pi * days * 3.1 + phase)
        )

    def split_before(self, symbol: str, day: date) -> float:
        """Product of the split ratios with an ex-date on or before `day`."""
        return math.prod(r for d, r in self.splits.get(symbol, {}).items() if d <= day)

    def split_after(self, symbol: str, day: date) -> float:
        """Product of the ratios of the splits after `day` that have happened by now."""
        today = self.today()
        return math.prod(r for d, r in self.splits.get(symbol, {}).items() if day < d <= today)

    def raw(self, symbol: str, t: datetime, day: date) -> float:
        return round(self.value(symbol, t) / self.split_before(symbol, day), 2)

    def _volume(self, symbol: str, key: float) -> float:
        h = int(hashlib.sha256(f"{symbol}{key}".encode()).hexdigest()[:6], 16)
        return float(100_000 + h % 900_000)

    def _bar(self, symbol: str, day: date, t0: datetime, t1: datetime) -> Bar:
        in_progress = t1 > self.now
        end = min(t1, self.now)
        o, c = self.raw(symbol, t0, day), self.raw(symbol, end, day)
        mid = self.raw(symbol, t0 + (end - t0) / 2, day)
        hi, lo = round(max(o, c, mid) * 1.002, 2), round(min(o, c, mid) * 0.998, 2)
        vol = self._volume(symbol, t0.timestamp())
        if in_progress:
            vol = math.floor(vol * max(0.0, (end - t0) / (t1 - t0)))
        return Bar(t0, o, hi, lo, c, vol, day, in_progress)

    def daily(self, symbol: str, first: date, last: date) -> list[Bar]:
        """Daily bars of the sessions in [first, last] that have opened by now."""
        out = []
        for day in weekdays(max(first, self.first_day), min(last, self.today())):
            t0, t1 = session_open(day), session_close(day)
            if t0 > self.now:
                continue
            out.append(self._bar(symbol, day, t0, t1))
        return out

    def intraday(self, symbol: str, minutes: int, first: datetime, last: datetime) -> list[Bar]:
        """Intraday bars starting in [first, last) that have started by now."""
        out: list[Bar] = []
        step = timedelta(minutes=minutes)
        d0 = max(first.astimezone(NY).date(), self.first_day)
        d1 = min(last.astimezone(NY).date(), self.today())
        for day in weekdays(d0, d1):
            t, end = session_open(day), session_close(day)
            while t < end:
                if first <= t < last and t <= self.now:
                    out.append(self._bar(symbol, day, t, min(t + step, end)))
                t += step
        return out

    def previous_close(self, symbol: str, day: date) -> float | None:
        prior = [b for b in self.daily(symbol, day - timedelta(days=10), day) if b.day < day]
        return prior[-1].close if prior else None

    def dividend_factor_after(self, symbol: str, day: date) -> float:
        """Multiplicative dividend adjustment of a bar on `day` (the CRSP convention)."""
        factor = 1.0
        for ex, amount in self.dividends.get(symbol, {}).items():
            if day < ex <= self.today():
                prev = self.previous_close(symbol, ex)
                if prev:
                    split = self.splits.get(symbol, {}).get(ex, 1.0)
                    factor *= 1.0 - amount / (prev / split)
        return factor


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str  # status | throttle | down | delay | malformed | empty | reset | respond | null
    status: int = 503
    body: str | bytes | None = None  # respond: bytes are sent as they are
    content_type: str = "application/json"
    delay_s: float = 0.0
    retry_after: str | None = None  # throttle: the answer's Retry-After (the Alpaca fake)
    headers: dict[str, str] | None = None  # respond: extra headers (a redirect's Location)


class Faults:
    """One-shot faults, consumed in order, one per request; plus `delay_s` (every request)
    and `hold_s` (keep every request in flight, to measure concurrency)."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self.delay_s = 0.0
        self.hold_s = 0.0

    def _add(self, n: int, fault: Fault) -> None:
        for _ in range(n):
            self._queue.append(fault)

    def clear(self) -> None:
        self._queue.clear()
        self.delay_s = self.hold_s = 0.0

    def pending(self) -> int:
        return len(self._queue)

    def take(self) -> Fault | None:
        return self._queue.popleft() if self._queue else None

    def fail_next(self, n: int = 1, status: int = 500, body: str | None = None) -> None:
        self._add(n, Fault("status", status=status, body=body))

    def throttle(self, n: int = 1, retry_after: str | None = None) -> None:
        """The vendor's throttling answer (Yahoo/Alpaca: 429; Alpha Vantage: a Note); the
        Alpaca fake's carries `retry_after` as its Retry-After header."""
        self._add(n, Fault("throttle", status=429, retry_after=retry_after))

    def down(self, n: int) -> None:
        """A source down for n calls: 503."""
        self._add(n, Fault("down", status=503))

    def delay_next(self, n: int, seconds: float) -> None:
        self._add(n, Fault("delay", delay_s=seconds))

    def malformed_next(self, n: int = 1) -> None:
        self._add(n, Fault("malformed"))

    def empty_next(self, n: int = 1) -> None:
        self._add(n, Fault("empty"))

    def null_next(self, n: int = 1) -> None:
        """Yahoo only: bars with `null` in every OHLCV array (a lunch break)."""
        self._add(n, Fault("null"))

    def reset_next(self, n: int = 1) -> None:
        self._add(n, Fault("reset"))

    def respond_next(
        self,
        body: str | bytes | dict | list,
        status: int = 200,
        content_type: str = "application/json",
        n: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        text = body if isinstance(body, (str, bytes)) else json.dumps(body)
        self._add(
            n,
            Fault("respond", status=status, body=text, content_type=content_type, headers=headers),
        )


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


# ----------------------------------------------------------------------------- servers


class LoopThread:
    """Running a loopback server on an event loop of its own in a daemon thread, for tests
    whose client runs on another loop or synchronously (a daemon process test, alpaca-py).
    The class provides async `start()` / `stop()` and sets `_thread`, `_loop` to None."""

    _thread: threading.Thread | None
    _loop: asyncio.AbstractEventLoop | None
    url: str

    async def start(self) -> Any:  # pragma: no cover - provided by the server class
        raise NotImplementedError

    async def stop(self) -> None:  # pragma: no cover - provided by the server class
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> str:
        """Run on a private event loop in a daemon thread; returns the base URL."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an admin method on the server's own loop (after `start_in_thread`)."""
        if self._loop is None:
            return fn(*args, **kwargs)

        async def run() -> Any:
            out = fn(*args, **kwargs)
            return await out if asyncio.iscoroutine(out) else out

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)


class FakeServer(LoopThread):
    """Base of the fakes: lifecycle, request log, concurrency count and generic faults.

    Subclasses add routes in `routes()` and render vendor-specific faults in
    `vendor_fault(kind, request)`."""

    def __init__(self, book: BarBook | None = None) -> None:
        self.book = book or BarBook()
        self.faults = Faults()
        self.requests: list[Recorded] = []
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def vendor_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        """The vendor's rendering of `throttle`, `down`, `malformed`, `empty` (None: the
        handler renders it, e.g. an empty bar list)."""
        return None

    def reset_stats(self) -> None:
        self.requests.clear()
        self.count = self.in_flight = self.max_in_flight = 0

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.count += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers))
        )
        try:
            if self.faults.hold_s:
                await asyncio.sleep(self.faults.hold_s)
            if self.faults.delay_s:
                await asyncio.sleep(self.faults.delay_s)
            fault = self.faults.take()
            if fault is not None:
                if fault.kind == "delay":
                    await asyncio.sleep(fault.delay_s)
                elif fault.kind == "reset":
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response(status=500)
                elif fault.kind == "respond":
                    raw = fault.body if isinstance(fault.body, bytes) else None
                    return web.Response(
                        status=fault.status,
                        body=raw,
                        text=None if raw is not None else fault.body,
                        content_type=fault.content_type,
                        headers=fault.headers,
                    )
                elif fault.kind == "status":
                    return web.Response(
                        status=fault.status,
                        text=fault.body or json.dumps({"message": f"fake {fault.status}"}),
                        content_type="application/json",
                    )
                else:
                    rendered = self.vendor_fault(fault, request)
                    if rendered is not None:
                        return rendered
                    request[FAULT] = fault.kind
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def start(self) -> FakeServer:
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def truncated(text: str) -> str:
    """A malformed body: the first half of a valid one."""
    return text[: max(1, len(text) // 2)]
