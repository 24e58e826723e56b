"""Outage bookkeeping for a Redis connection that is optional to the daemon.

`Reconnector` knows whether the connection is usable. After a failure it reconnects in a
background task (exponential backoff with jitter, so a fleet of daemons does not reconnect in
step and a down server is not hammered), logs `<event>.down` once when an outage starts and
`<event>.recovered` once when it ends, never once per call. Callers never wait for a
reconnect: while the connection is down they use their fallback at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from ..secrets import mask_text, mask_url, scrub

log = structlog.get_logger(__name__)


class Backoff:
    """Delays base, 2*base, 4*base ... capped at `max_s`, each scaled by a random factor in
    [0.5, 1] ("equal jitter": never zero, so a failing server is not retried in a tight
    loop)."""

    def __init__(
        self, base_s: float = 0.5, max_s: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s, got {base_s}, {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self._rng = rng
        self.attempts = 0

    def next(self) -> float:
        exp = min(self.max_s, self.base_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return exp * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.attempts = 0


def describe(exc: BaseException, url: str = "") -> str:
    """`Type: message` with any credential (the URL's password included) masked."""
    return mask_text(scrub(f"{type(exc).__name__}: {exc}", url))


def endpoint(url: str) -> str:
    """Where a Redis URL points: `host:port`, or a unix socket's path (no credentials)."""
    try:
        u = urlsplit(url.strip())
        if u.scheme.lower() == "unix":
            return u.path or mask_url(url)
        host = u.hostname or "localhost"
        return f"[{host}]:{u.port or 6379}" if ":" in host else f"{host}:{u.port or 6379}"
    except ValueError:  # a port that is not a number: as written, credentials masked
        return mask_url(url)


def timed_out(exc: BaseException, url: str, seconds: float) -> BaseException:
    """A timeout (asyncio's has no message at all, so a log line said only "SET:
    TimeoutError: "; redis-py's names the address, not the time) as one naming where and
    how long: `TimeoutError: no answer from host:port within 2 s`. Anything else as is."""
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return TimeoutError(f"no answer from {endpoint(url)} within {seconds:g} s")
    return exc


class Reconnector:
    """Up/down state of one connection. `connect` (re)establishes it and raises on failure;
    the owner calls `mark_up()` after its own first successful connect and `mark_down()` on
    a failed call, which starts the background reconnect if it is not running yet."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[None]],
        *,
        event: str,
        url: str,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: Callable[[], float] = random.random,
        on_recovered: Callable[[], None] | None = None,
        **log_fields: Any,
    ) -> None:
        self._connect = connect
        self.event = event
        self.safe_url = mask_url(url)
        self._url = url
        self.backoff = Backoff(backoff_base_s, backoff_max_s, rng)
        self._on_recovered = on_recovered
        self._fields = log_fields
        self.available = False
        self.reason: str | None = "not started"
        self.down_since: datetime | None = None
        self._down_at: float | None = None
        self.outages = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def reconnecting(self) -> bool:
        return self._task is not None and not self._task.done()

    def open(self) -> None:
        """(Re)arm after `stop()`: the owner is starting."""
        self._closed = False

    def mark_up(self) -> None:
        was_down = self._down_at is not None
        self.available = True
        self.reason = None
        if was_down:
            assert self._down_at is not None
            log.info(
                f"{self.event}.recovered",
                url=self.safe_url,
                down_for_s=round(time.monotonic() - self._down_at, 3),
                attempts=self.backoff.attempts,
                **self._fields,
            )
        self.down_since = None
        self._down_at = None
        self.backoff.reset()
        if was_down and self._on_recovered is not None:
            self._on_recovered()

    def mark_down(self, op: str, exc: BaseException) -> None:
        """A call failed: from now on callers use their fallback. Logged once per outage."""
        self.failures += 1
        self.available = False
        self.reason = f"{op}: {describe(exc, self._url)}"
        if self._down_at is None:
            self.outages += 1
            self._down_at = time.monotonic()
            self.down_since = datetime.now(UTC)
            log.warning(
                f"{self.event}.down", url=self.safe_url, op=op, error=self.reason, **self._fields
            )
        if not self._closed and not self.reconnecting:
            self._task = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"{self.event}.reconnect"
            )

    async def _reconnect(self) -> None:
        while not self.available and not self._closed:
            await asyncio.sleep(self.backoff.next())
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything: stay down, try again later
                self.failures += 1
                self.reason = f"reconnect: {describe(exc, self._url)}"
                log.debug(f"{self.event}.reconnect_failed", error=self.reason, **self._fields)
                continue
            self.mark_up()

    async def stop(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def status(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "down_since": self.down_since.isoformat() if self.down_since else None,
            "outages": self.outages,
            "failures": self.failures,
            "url": self.safe_url,
        }
