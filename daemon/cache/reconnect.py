"""Outage bookkeeping for a Redis connection that is optional to the daemon.

`Reconnector` knows whether the connection is usable. After a failure it reconnects in a
background task (exponential backoff with jitter, so a fleet of daemons does not reconnect in
step and a down server is not hammered), logs `<event>.down` once when an outage starts and
`<event>.recovered` once when it ends, never once per call. A refusal that waiting does not
end (out of memory, credentials refused: `REFUSALS`) is `<event>.refused` instead, with the
fix, once per outage, and named so in `reason` (/ready). Callers never wait for a
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


# Refusals of a Redis that is up, which waiting does not end: named with what to do, by
# redis-py's class name (redis is not imported with this module). They were logged as
# Redis "down" (`OutOfMemoryError: command not allowed ...`) and retried as an outage for
# ever, never saying that maxmemory or the password needs changing.
REFUSALS = {
    "OutOfMemoryError": "Redis refuses writes: out of memory (maxmemory): raise maxmemory or "
    "set an eviction policy",
    "AuthenticationError": "Redis refused the credentials (changed on the server?): set the "
    "password in the environment and restart",
}


def refusal(exc: BaseException | None) -> str | None:
    """What `exc` (or the error it was raised from) says Redis refuses, with the fix; None
    for anything else (a connection lost, a timeout)."""
    seen = 0
    while exc is not None and seen < 5:
        named = REFUSALS.get(type(exc).__name__)
        if named is not None:
            return named
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


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
        self._refusals_said: set[str] = set()  # this outage's refusals logged so far

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
        self._refusals_said.clear()
        self.backoff.reset()
        if was_down and self._on_recovered is not None:
            self._on_recovered()

    def _failed(self, op: str, exc: BaseException) -> str | None:
        """`reason` for a failure of `op`; a refusal (`REFUSALS`) is named with its fix in it
        and returned, else None."""
        named = refusal(exc)
        self.reason = f"{op}: {named if named is not None else describe(exc, self._url)}"
        return named

    def _say_refused(self, op: str, exc: BaseException, named: str) -> None:
        """`<event>.refused`, once per outage and refusal: what Redis refuses and the fix."""
        if named in self._refusals_said:
            return
        self._refusals_said.add(named)
        log.warning(
            f"{self.event}.refused",
            url=self.safe_url,
            op=op,
            error=self.reason,
            cause=describe(exc, self._url),
            effect="retried with backoff until Redis accepts; meanwhile as Redis down",
            **self._fields,
        )

    def mark_down(self, op: str, exc: BaseException) -> None:
        """A call failed: from now on callers use their fallback. Logged once per outage:
        `<event>.down`, or `<event>.refused` naming the refusal and its fix (`REFUSALS`)."""
        self.failures += 1
        self.available = False
        named = self._failed(op, exc)
        if self._down_at is None:
            self.outages += 1
            self._down_at = time.monotonic()
            self.down_since = datetime.now(UTC)
            if named is None:
                log.warning(
                    f"{self.event}.down",
                    url=self.safe_url,
                    op=op,
                    error=self.reason,
                    **self._fields,
                )
        if named is not None:
            self._say_refused(op, exc, named)
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
                named = self._failed("reconnect", exc)
                if named is not None:  # (a password changed with the connections killed)
                    self._say_refused("reconnect", exc, named)
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
