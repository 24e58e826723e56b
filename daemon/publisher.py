"""Live events on Redis pub/sub, for other processes (dashboards, loggers, alerting).

Channels are `<prefix><run_id>:<kind>` (by default `tradingd:<run_id>:bars`, `:signals`,
`:orders`, `:fills`, `:state`); a subscriber may also `PSUBSCRIBE tradingd:<run_id>:*`. Each
message is one JSON object (strict JSON: NaN and infinities are null, times ISO-8601):

    {"run_id": ..., "kind": "orders", "seq": 17, "sent_at": "2024-...", "data": {...}}

`seq` counts every `publish` call of the run, so a subscriber sees a gap where messages were
dropped. `data` is what the caller passed, usually built by the helpers at the end of this
module (`bars_payload`, `signals_payload`, `orders_payload`, `fills_payload`).

Delivery is best effort, by design. `publish` is not async, never blocks and never raises: it
encodes the message and appends it to a bounded queue that a background task sends with
PUBLISH (pipelined). When the queue is full the oldest message is dropped. While Redis is
down, messages are dropped at once (and what was queued when the outage began too), counted
in `status()["dropped"]`, and not kept for later: Redis pub/sub has no memory for a
subscriber that is not listening, so a replay after the outage would reach only the
subscribers that were there at the time, out of order with the live messages, and cost the
daemon memory for as long as the outage lasts. A consumer that needs every order and fill
reads them from the store (or the audit trail), which is the record; the channels are the
live view. Publishing resumes by itself when Redis returns (a background reconnect with
exponential backoff and jitter), with one `publisher.redis.down` and one
`publisher.redis.recovered` log per outage.

One run id, one publisher. Two daemons of one run id on one Redis (one configuration started
on two stores) would interleave two books on the same channels, and overwrite each other's
`tradingd:<run_id>:state`. Each send also claims `<prefix><run_id>:owner` (SET NX with a TTL
its owner renews at each send, and a third of the TTL after the last one at the latest: a
daemon between bars is quiet for longer than the TTL); a publisher that finds another's
claim still there a whole TTL after it first saw it (so renewed: a crashed predecessor's
claim expires instead) logs `publisher.run_id_shared` naming the other process and reports
not ok in /ready. It still publishes: the events are a view, and which daemon should give
way is the operator's call.

A Redis that is up but refuses writes (full at `maxmemory` with `noeviction`, a read-only
replica, an ACL) still takes PUBLISH: each command's answer is read on its own, a refused
PUBLISH is dropped (`redis_refused`), and a refused owner claim is said once per episode
(`publisher.redis.refuses_writes`, with the fix; `publisher.redis.writes_accepted` once it
is written again), not taken for Redis being down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import structlog

from .cache.reconnect import Reconnector, describe, timed_out
from .core.errors import ConfigError
from .core.types import CrossSection, Fill, Order
from .metrics import PUBLISHER_DROPPED
from .secrets import mask_url
from .storage.buffered import _plain, to_json

if TYPE_CHECKING:
    import redis.asyncio as aioredis

# redis (and the OpenTelemetry it imports) is loaded by the first RedisPublisher, not with
# this module: the engine imports the payload helpers below for every run, backtests too.

log = structlog.get_logger(__name__)

KINDS = ("bars", "signals", "orders", "fills", "state")

# What to do about a write Redis refuses, by redis-py's error (its class name: redis is not
# imported with this module).
_WRITE_FIXES = {
    "OutOfMemoryError": "Redis is full: raise its maxmemory, or set an eviction policy "
    "(maxmemory-policy allkeys-lru)",
    "ReadOnlyError": "this Redis is a read-only replica: point cache.url at the primary",
    "NoPermissionError": "the Redis user may not write these keys: allow it SET, PEXPIRE "
    "and GET on them",
}

# Strict JSON (NaN is refused, then encoded by the stores' `to_json` as null); no circular
# check: a payload is a tree.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False).encode


@runtime_checkable
class Publisher(Protocol):
    def publish(self, kind: str, payload: Mapping[str, Any]) -> None:
        """Queue one message; never blocks, never raises."""
        ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def status(self) -> dict[str, Any]: ...


class NullPublisher:
    """No Redis configured: every message is discarded (not counted as dropped)."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def publish(self, kind: str, payload: Mapping[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "detail": "no Redis configured: events are not published",
            "enabled": False,
            "available": False,
            "published": 0,
            "dropped": 0,
        }


class RedisPublisher:
    """See the module docstring. `max_queue` bounds the messages waiting to be sent;
    `drain_timeout_s` bounds how long `stop()` waits for them."""

    def __init__(
        self,
        url: str,
        run_id: str,
        prefix: str = "tradingd:",
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        socket_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        drain_timeout_s: float = 2.0,
        rng: Callable[[], float] = random.random,
        owner_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be >= 1")
        self.url = url
        self.run_id = run_id
        self.prefix = prefix
        self.channel_prefix = f"{prefix}{run_id}:"
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.drain_timeout_s = drain_timeout_s
        self._channels = {kind: self.channel_prefix + kind for kind in KINDS}
        self.owner_key = self.channel_prefix + "owner"
        self.owner_ttl_ms = max(1, int(owner_ttl_s * 1000))
        # Who this publisher is, for another's warning: no secret in it.
        self.owner = (
            f"pid {os.getpid()} on host {socket.gethostname()}, since "
            f"{datetime.now(UTC).isoformat(timespec='seconds')} [{uuid.uuid4().hex[:8]}]"
        )
        self.shared_with: str | None = None
        self._owned = False
        self._other: tuple[str, float] | None = None  # another's claim, when first seen
        self._clock = clock
        self._queue: deque[tuple[str, str]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._link = Reconnector(
            self._reconnect,
            event="publisher.redis",
            url=url,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            rng=rng,
            on_recovered=self._wake.set,
        )
        self.seq = 0
        self.published = 0
        self.dropped = 0
        self.dropped_by_reason: dict[str, int] = {}
        self._warned: set[str] = set()
        # Why Redis refuses the owner claim's writes, while it does (said once: see
        # `_writes_refused`).
        self.write_error: str | None = None

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    @property
    def available(self) -> bool:
        return self._running and self._link.available

    def channel(self, kind: str) -> str:
        return self._channels.get(kind) or self.channel_prefix + kind

    # the trading loop's side ---------------------------------------------------------------
    def publish(self, kind: str, payload: Mapping[str, Any]) -> None:
        self.seq += 1
        channel = self._channels.get(kind)
        if channel is None:
            self._drop("unknown_kind", warn=f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
            return
        if not self._running:
            self._drop("not_running")
            return
        if not self._link.available:
            self._drop("redis_down")
            return
        message = {
            "run_id": self.run_id,
            "kind": kind,
            "seq": self.seq,
            "sent_at": datetime.now(UTC).isoformat(),
            "data": payload,
        }
        try:
            try:  # already plain (the helpers' payloads): encode as is
                data = _ENCODE(message)
            except (TypeError, ValueError):  # numpy, datetimes, enums in a dict, NaN ...
                data = to_json(message)
        except Exception as exc:  # a payload that is not JSON-able is a bug, not a crash
            self._drop("encode", warn=f"{kind} payload cannot be encoded: {describe(exc)}")
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self._drop("queue_full")
        self._queue.append((channel, data))
        self._idle.clear()
        self._wake.set()

    def _drop(self, reason: str, n: int = 1, warn: str | None = None) -> None:
        if n <= 0:
            return
        self.dropped += n
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + n
        # In /metrics too: said only at stop (`publisher.stopped`) and in /ready's detail.
        PUBLISHER_DROPPED.labels(reason=reason).inc(n)
        if warn is not None and warn not in self._warned and len(self._warned) < 100:
            self._warned.add(warn)
            log.warning("publisher.dropped", reason=reason, detail=warn)

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connects once (bounded by the connect timeout); never raises: with Redis down it
        starts anyway and reconnects in the background."""
        if self._running:
            return
        self._running = True
        self._link.open()
        try:
            self._client = await self._open()
        except Exception as exc:
            self._link.mark_down("connect", exc)
        else:
            self._link.mark_up()
            log.info("publisher.redis.started", url=self.safe_url, channels=self.channel_prefix)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="publisher")

    async def stop(self) -> None:
        """Sends what is queued (for at most `drain_timeout_s`), then disconnects."""
        if not self._running:
            return
        if self._link.available and not self._idle.is_set():  # queued or in flight
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_timeout_s):
                    await self._idle.wait()
        self._running = False
        task, self._task = self._task, None
        bound = self.socket_timeout + 1.0
        if task is not None:
            task.cancel()
            # Bounded: a send whose client swallowed the cancel (a CI run hung here once,
            # not reproduced) must not hold a SIGTERM for ever; the task is left behind.
            done, _ = await asyncio.wait({task}, timeout=bound)
            if not done:
                log.warning("publisher.stop_abandoned", what="sender task", waited_s=bound)
            elif not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # (a bug of the sender: said)
        await self._link.stop()
        self._drop("stopped", len(self._queue))
        self._queue.clear()
        self._idle.set()
        if self._client is not None:
            client, self._client = self._client, None
            try:
                async with asyncio.timeout(bound):
                    await client.aclose()
            except TimeoutError:
                log.warning("publisher.stop_abandoned", what="Redis client", waited_s=bound)
        log.info("publisher.stopped", published=self.published, dropped=self.dropped)

    def status(self) -> dict[str, Any]:
        st = self._link.status()
        up = self.available
        if up:
            detail = f"publishing on {self.channel_prefix}* at {st['url']}"
        else:
            detail = f"redis {st['url']} unavailable ({st['reason']}); events are dropped"
        if self.shared_with is not None:
            detail = self._shared_detail()
        elif up and self.write_error is not None:
            detail += f"; Redis refuses writes ({self.write_error}): the owner claim is not kept"
        return {
            "ok": up and self.shared_with is None,
            "detail": detail,
            "enabled": True,
            **st,
            "available": up,
            "channels": self.channel_prefix + "*",
            "published": self.published,
            "dropped": self.dropped,
            "dropped_by_reason": dict(self.dropped_by_reason),
            "queued": len(self._queue),
            "max_queue": self.max_queue,
            "shared_with": self.shared_with,
            "write_error": self.write_error,
        }

    # the background side -------------------------------------------------------------------
    async def _open(self) -> aioredis.Redis:
        from .cache.redis import redis_client

        client = redis_client(self.url, self.socket_timeout, self.connect_timeout)
        try:
            async with asyncio.timeout(self.connect_timeout + self.socket_timeout):
                await client.ping()
        except BaseException as exc:
            await client.aclose()
            named = timed_out(exc, self.url, self.connect_timeout + self.socket_timeout)
            if named is not exc:
                raise named from exc
            raise
        return client

    def _claim_seen(self, value: bytes | str | None) -> None:
        """The owner claim after this send's SET NX: ours, or another's (see the module
        docstring for when that is a second publisher rather than a dead one's leftover)."""
        claim = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if claim is None or claim == self.owner:
            self._owned, self._other = claim is not None, None
            if self.shared_with is not None and claim is not None:
                log.info("publisher.run_id_alone", run_id=self.run_id)
                self.shared_with = None
            return
        self._owned = False
        now = self._clock()
        if self._other is None or self._other[0] != claim:
            self._other = (claim, now)
        elif now - self._other[1] > self.owner_ttl_ms / 1000 and self.shared_with != claim:
            self.shared_with = claim
            log.warning(
                "publisher.run_id_shared",
                run_id=self.run_id,
                other=claim,
                detail=self._shared_detail(),
            )

    def _writes_refused(self, errors: Sequence[BaseException]) -> None:
        """The owner claim's commands Redis refused (none: it writes again). Said once per
        episode: a full Redis refuses every batch's SET, and a log line (or a "down") at
        every bar hid the one thing to do."""
        if not errors:
            if self.write_error is not None:
                log.info("publisher.redis.writes_accepted", url=self.safe_url)
                self.write_error = None
            return
        if self.write_error is not None:
            return
        exc = errors[0]
        self.write_error = describe(exc, self.url)
        fix = _WRITE_FIXES.get(type(exc).__name__, "see the Redis server's log")
        log.warning(
            "publisher.redis.refuses_writes",
            url=self.safe_url,
            error=self.write_error,
            fix=fix,
            effect="events are still published; the owner claim (a second daemon of this run "
            "id) is not kept",
        )

    def _shared_detail(self) -> str:
        return (
            f"another process publishes run {self.run_id!r} on this Redis ({self.shared_with}): "
            "its state and channels mix with this one's; give each daemon its own "
            "run.run_id or Redis database"
        )

    async def _reconnect(self) -> None:
        old, self._client = self._client, None
        if old is not None:
            await old.aclose()
        self._client = await self._open()

    async def _run(self) -> None:
        from .cache.redis import ERRORS

        renew_s = self.owner_ttl_ms / 3000
        while True:
            # The claim is renewed a third of its TTL after the last send at the latest: a
            # daemon between bars sends nothing for longer than the TTL (the state refresh
            # comes every cache.expiry_s / 3), and a claim kept only by sends lapsed in
            # between, so a second daemon took it and neither was ever reported.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(renew_s):
                    await self._wake.wait()
            self._wake.clear()
            renew = True  # one claim at least, with or without messages
            while (self._queue or renew) and self._link.available and self._client is not None:
                renew = False
                n = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                client = self._client
                owned = self._owned
                try:
                    async with asyncio.timeout(self.socket_timeout):
                        pipe = client.pipeline(transaction=False)
                        pipe.set(self.owner_key, self.owner, nx=True, px=self.owner_ttl_ms)
                        if owned:
                            pipe.pexpire(self.owner_key, self.owner_ttl_ms)
                        pipe.get(self.owner_key)
                        for channel, data in batch:
                            pipe.publish(channel, data)
                        # Each command's answer on its own: a Redis that refuses writes (full)
                        # still takes PUBLISH, and only a lost connection raises here.
                        results = await pipe.execute(raise_on_error=False)
                except ERRORS as exc:
                    # The messages of this batch may or may not have reached Redis: they
                    # count as dropped. What is queued would be stale by the recovery.
                    self._drop("redis_down", len(batch) + len(self._queue))
                    self._queue.clear()
                    if client is self._client:
                        named = timed_out(exc, self.url, self.socket_timeout)
                        self._link.mark_down("PUBLISH", named)
                    break
                claim = 3 if owned else 2  # SET NX, [PEXPIRE,] GET, then the PUBLISHes
                self._writes_refused([r for r in results[:claim] if isinstance(r, Exception)])
                if not isinstance(results[claim - 1], Exception):
                    self._claim_seen(results[claim - 1])
                refused = [r for r in results[claim:] if isinstance(r, Exception)]
                if refused:
                    warn = f"Redis refuses PUBLISH: {describe(refused[0], self.url)}"
                    self._drop("redis_refused", len(refused), warn=warn)
                self.published += n - len(refused)
            if not self._queue:
                self._idle.set()
            elif not self._link.available:
                self._drop("redis_down", len(self._queue))
                self._queue.clear()
                self._idle.set()


def open_publisher(url: str | None, run_id: str, prefix: str = "tradingd:", **kw: Any) -> Publisher:
    """A not-yet-started publisher: `NullPublisher` without Redis ('' / memory://), a
    `RedisPublisher` for a redis://, rediss:// or unix:// URL (the cache's REDIS_URL)."""
    url = (url or "").strip()
    if url in ("", "memory://"):
        return NullPublisher()
    if url.lower().startswith(("redis://", "rediss://", "unix://")):
        return RedisPublisher(url, run_id, prefix, **kw)
    raise ConfigError(f"publisher URL {mask_url(url)!r} has an unsupported scheme")


# ----------------------------------------------------------------------------- payloads
# Plain, JSON-ready snapshots (encoded by the stores' `_plain`: enums as their values, times
# ISO-8601, NaN as null) taken at the call: an Order is mutable and changes after publish.

_ORDER_FIELDS = tuple(f.name for f in fields(Order))
_FILL_FIELDS = tuple(f.name for f in fields(Fill))


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def order_payload(o: Order) -> dict[str, Any]:
    """Every field of the order as it is now."""
    return _plain({n: getattr(o, n) for n in _ORDER_FIELDS})


def fill_payload(f: Fill) -> dict[str, Any]:
    return _plain({n: getattr(f, n) for n in _FILL_FIELDS})


def orders_payload(orders: Sequence[Order], time: datetime | None = None) -> dict[str, Any]:
    """`{"time": bar time or null, "orders": [order, ...]}`: one message per bar and event."""
    return {"time": _time(time), "orders": [order_payload(o) for o in orders]}


def fills_payload(fills: Sequence[Fill], time: datetime | None = None) -> dict[str, Any]:
    return {"time": _time(time), "fills": [fill_payload(f) for f in fills]}


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def bars_payload(bar: CrossSection, symbols: Sequence[str]) -> dict[str, Any]:
    """The cross-section's summary: `{"time", "symbols": n, "bars": {symbol: {"close",
    "volume"}}}` for the symbols with a finite close (no bar = not listed)."""
    close = np.asarray(bar.close, dtype=np.float64)
    volume = np.asarray(bar.volume, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(close)).tolist()
    c = close.tolist()
    v = volume.tolist()
    return {
        "time": _time(bar.time),
        "symbols": len(idx),
        "bars": {symbols[i]: {"close": c[i], "volume": _num(v[i])} for i in idx},
    }


def signals_payload(
    time: datetime,
    symbols: Sequence[str],
    scores: np.ndarray,
    targets: np.ndarray,
    source: str = "",
) -> dict[str, Any]:
    """`{"time", "source", "signals": {symbol: {"score", "target"}}}` for the symbols with a
    view (finite score) or a target position; score null = no view."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    keep = np.isfinite(s) | (np.isfinite(t) & (t != 0))
    sl = s.tolist()
    tl = t.tolist()
    return {
        "time": _time(time),
        "source": source,
        "signals": {
            symbols[i]: {"score": _num(sl[i]), "target": _num(tl[i])}
            for i in np.flatnonzero(keep).tolist()
        },
    }


class PublishingAudit:
    """An `AuditSink` that also publishes every order state and fill the engine audits
    (rebalances, cancels, broker updates, late fills): wrap the run's AuditLog with it and
    the engine needs no other call for orders and fills."""

    def __init__(self, audit: Any, publisher: Publisher) -> None:
        self.audit = audit
        self.publisher = publisher

    def orders(
        self, orders: Sequence[Order], records: Any = None, booked_at: datetime | None = None
    ) -> None:
        self.audit.orders(orders, records, booked_at)
        if orders:
            self.publisher.publish("orders", orders_payload(orders))

    def fills(
        self, fills: Sequence[Fill], booked_at: datetime | None = None, records: Any = None
    ) -> None:
        self.audit.fills(fills, booked_at, records)
        if fills:
            self.publisher.publish("fills", fills_payload(fills))

    def flush(self, force: bool = False) -> None:
        if force:
            self.audit.flush(force=True)
        else:
            self.audit.flush()

    def close(self) -> None:
        self.audit.close()
