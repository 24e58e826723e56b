"""A loopback webhook receiver (Slack, Discord or any JSON webhook), with fault injection.

    receiver = WebhookReceiver()
    receiver.start_in_thread()                 # or: async with WebhookReceiver() as receiver:
    url = receiver.url + "/services/T000/B000/token"   # any path is accepted (POST)
    receiver.fail_next(2, status=500)          # the next 2 requests answer 500
    receiver.throttle(1, retry_after="0.2")    # the next one answers 429 with Retry-After
    receiver.slow_next(1, 2.0)                 # the next one answers after 2 s (a timeout)
    receiver.reset_next(1)                     # the next connection is closed unanswered
    receiver.ok_status = 204                   # what a success answers (Discord: 204)
    await receiver.wait_for(3, timeout=5)      # until 3 bodies were delivered (answered 2xx)
    await receiver.wait_arrived(1)             # until 1 request arrived (answered or not)
    receiver.delivered("/services/...")        # bodies answered 2xx (parsed JSON), per path
    receiver.requests                          # every request: path, body, status, fault, time
    receiver.stop_thread()

One-shot faults are consumed in order, one per request, whatever the path. A request is
recorded when it arrives (with `at`, `time.monotonic()` of its arrival) and completed with the
status it was answered; a slow request whose client went away before the answer is marked
`abandoned` and does not count as delivered. Recording is guarded by a lock, so the test may
read it while the receiver runs in its own thread; `wait_for` waits in a worker thread, so it
does not block the event loop of the client under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import LoopThread


@dataclass
class Received:
    path: str
    raw: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival
    status: int | None = None  # answered with; None while in progress or when reset
    fault: str | None = None
    abandoned: bool = False  # the client left before the answer (it timed out)
    body: Any = field(default=None)

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.abandoned


@dataclass(frozen=True)
class _Fault:
    kind: str  # status | throttle | slow | reset
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0


class WebhookReceiver(LoopThread):
    def __init__(self) -> None:
        self.port = 0
        self.ok_status = 200
        self.requests: list[Received] = []
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Condition()
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"http://127.0.0.1:{self.port}"

    # -------------------------------------------------------------- faults

    def _add(self, n: int, fault: _Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * n)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        self._add(n, _Fault("status", status=status))

    def throttle(self, n: int = 1, retry_after: str | None = "1") -> None:
        """429 Too Many Requests, with a Retry-After header unless `retry_after` is None."""
        self._add(n, _Fault("throttle", status=429, retry_after=retry_after))

    def slow_next(self, n: int, seconds: float) -> None:
        """Answer 200 after `seconds` (a client with a shorter timeout gives up)."""
        self._add(n, _Fault("slow", status=200, delay_s=seconds))

    def reset_next(self, n: int = 1) -> None:
        """Close the connection without an answer."""
        self._add(n, _Fault("reset"))

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    # -------------------------------------------------------------- inspection

    def delivered(self, path: str | None = None) -> list[Any]:
        """Parsed bodies answered 2xx (and not abandoned), in arrival order."""
        with self._lock:
            return [
                r.body for r in self.requests if r.delivered and (path is None or r.path == path)
            ]

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def by_path(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        with self._lock:
            for r in self.requests:
                if r.delivered:
                    out.setdefault(r.path, []).append(r.body)
        return out

    def wait_for_sync(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[Any]:
        """Block until at least `n` bodies were delivered (to `path`), or raise TimeoutError
        saying what arrived."""

        def enough() -> bool:
            return (
                sum(1 for r in self.requests if r.delivered and (path is None or r.path == path))
                >= n
            )

        with self._lock:
            if not self._lock.wait_for(enough, timeout):
                seen = [(r.path, r.status, r.fault) for r in self.requests]
                raise TimeoutError(f"expected {n} delivered bodies within {timeout} s; got {seen}")
        return self.delivered(path)

    async def wait_for(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[Any]:
        """`wait_for_sync` in a worker thread: the caller's event loop keeps running."""
        return await asyncio.to_thread(self.wait_for_sync, n, path, timeout)

    def wait_arrived_sync(self, n: int, timeout: float = 5.0) -> None:
        """Block until at least `n` requests have arrived (answered or not)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests within {timeout} s")

    async def wait_arrived(self, n: int, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.wait_arrived_sync, n, timeout)

    # -------------------------------------------------------------- server

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = Received(request.path, raw, dict(request.headers), time.monotonic(), body=body)
        with self._lock:
            self.requests.append(rec)
            fault = self._faults.popleft() if self._faults else None
            rec.fault = fault.kind if fault else None
            self._lock.notify_all()
        status: int | None = self.ok_status
        response: web.StreamResponse
        if fault is None:
            response = self._ok()
        elif fault.kind == "reset":
            if request.transport is not None:
                request.transport.close()
            response = web.Response(status=500)
            status = None
        elif fault.kind == "slow":
            assert self._release is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), fault.delay_s)
            if request.transport is None or request.transport.is_closing():
                rec.abandoned = True
            response = self._ok()
        else:
            status = fault.status
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            text = "rate limited" if fault.status == 429 else f"fake {fault.status}"
            response = web.Response(status=fault.status, text=text, headers=headers)
        with self._lock:
            rec.status = status
            self._lock.notify_all()
        return response

    def _ok(self) -> web.Response:
        if self.ok_status == 204:
            return web.Response(status=204)
        return web.Response(status=self.ok_status, text="ok")

    async def start(self) -> WebhookReceiver:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()  # slow answers end now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
