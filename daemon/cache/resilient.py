"""The Redis cache the daemon uses: Redis when it answers, the process when it does not.

Redis is only a cache, so its outage must never stop the daemon (before this, a Redis that
was down at start-up ended the run with exit 2, and a refusal such as OOM or MISCONF was not
caught at all). `ResilientCache`:

- starts whether or not Redis answers (one connect attempt, bounded by the connect timeout);
  when it does not, it logs `cache.redis.down` and serves from the in-process fallback;
- never raises from `get`/`set`: a failed call marks Redis down (one `cache.redis.down` log
  per outage, not per call) and is answered from the fallback, a bounded `MemoryCache`;
- while Redis is down no caller touches it: a background task reconnects with exponential
  backoff and jitter (probing with PING and a short-lived SET, so a server that answers but
  refuses writes stays "down"), and the next call after it succeeds uses Redis again
  (`cache.redis.recovered`, once);
- a call never takes longer than the socket timeout once it has a connection (the first
  failing calls of an outage; later calls go to memory at once); with hundreds of calls at
  once (500 symbols' lookups) a call may first wait for one of the 16 connections, up to
  five socket timeouts (see RedisCache._call);
- at recovery the fallback is emptied: entries written during the outage are not copied to
  Redis (a later miss refetches; the cache never answers with a value older than Redis's),
  except the keys named by `resend_on_recovery` (the run's published state): the latest
  value written to each, unexpired, is written to Redis again by the reconnect, before
  calls go to Redis again. Such a key was missing after an outage (or a restart that
  emptied Redis) until its next write, up to cache.expiry_s / 3 later.

`available`, `reason` and `status()` are for /ready.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from ..core.errors import RetryableError
from .memory import MemoryCache
from .reconnect import Reconnector
from .redis import RedisCache

log = structlog.get_logger(__name__)

PROBE_KEY = "__probe__"


class ResilientCache(RedisCache):
    def __init__(
        self,
        url: str,
        socket_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        prefix: str = "tradingd:",
        *,
        fallback: MemoryCache | None = None,
        fallback_max_entries: int = 10_000,
        max_fallback_value_bytes: int = 1_000_000,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        name: str = "cache",
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(url, socket_timeout, connect_timeout, prefix)
        self.name = name
        self.fallback = fallback or MemoryCache(
            max_entries=fallback_max_entries, max_value_bytes=max_fallback_value_bytes
        )
        self._link = Reconnector(
            self._reconnect,
            event="cache.redis",
            url=url,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            rng=rng,
            on_recovered=self.fallback.clear,
            cache=name,
        )
        self._started = False
        # key -> (latest value, expiry on the monotonic clock or None): the keys re-sent at
        # recovery (`resend_on_recovery`), one value each.
        self._resend: dict[str, tuple[bytes, float | None] | None] = {}
        self._resend_writes = 0  # sets of those keys so far: a resend pass sees its own

    def resend_on_recovery(self, key: str) -> None:
        """Keep the latest value written to `key` (through `set`) and write it to Redis
        again when Redis comes back (with what is left of its TTL): for a key readers
        expect to find (the run's published state), not for answers a miss refetches."""
        self._resend.setdefault(key, None)

    # state ---------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """True while calls go to Redis."""
        return self._started and self._link.available

    @property
    def reason(self) -> str | None:
        """Why Redis is not used (None while it is)."""
        return None if self.available else self._link.reason

    def status(self) -> dict[str, Any]:
        """For /ready (`health.status_check` reads `ok` and `detail`)."""
        st = self._link.status()
        up = self.available
        if up:
            detail = f"redis {st['url']} ok"
        else:
            since = f" since {st['down_since']}" if st["down_since"] else ""
            detail = f"redis {st['url']} unavailable{since} ({self.reason}); serving from memory"
        return {
            "ok": up,
            "detail": detail,
            "backend": "redis" if up else "memory",
            **st,
            "available": up,
            "reason": self.reason,
            "reconnecting": self._link.reconnecting,
            "fallback_entries": len(self.fallback),
        }

    # lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._link.open()
        await self.fallback.start()
        try:
            self._client = await self._open()
        except RetryableError as exc:
            self._link.mark_down("connect", exc.__cause__ or exc)
            return
        self._link.mark_up()
        log.info("cache.redis.started", url=self.safe_url, prefix=self.prefix, cache=self.name)

    async def stop(self) -> None:
        self._started = False
        await self._link.stop()
        await super().stop()
        await self.fallback.stop()

    async def _reconnect(self) -> None:
        old, self._client = self._client, None
        if old is not None:
            await old.aclose()
        client = await self._open()
        try:
            # A server that answers PING but refuses writes (OOM, MISCONF, a read-only
            # replica) is not back: the first SET would mark it down again at once.
            await self._set(client, PROBE_KEY, b"1", 1.0)
            # Until a pass ran with no set of a kept key meanwhile: a set during one went
            # to the fallback (the client is not in place yet), which recovery empties, and
            # Redis kept the value before it until the next write.
            for _ in range(5):
                before = self._resend_writes
                await self._resend_latest(client)
                if self._resend_writes == before:
                    break
        except RetryableError:
            await client.aclose()
            raise
        self._client = client

    async def _resend_latest(self, client: aioredis.Redis) -> None:
        """The kept keys' latest values, written to the Redis that is back (`resend_on_recovery`):
        what was written during the outage went to the fallback, which recovery empties, and a
        Redis restarted empty has lost them too."""
        now = time.monotonic()
        for key, kept in list(self._resend.items()):
            if kept is None:
                continue
            value, expires = kept
            if expires is not None and expires <= now:
                self._resend[key] = None  # expired: Redis would not have it either
                continue
            await self._set(client, key, value, None if expires is None else expires - now)

    def _failed(self, client: aioredis.Redis, op: str, exc: RetryableError) -> None:
        # A call that was in flight on a client the reconnect has replaced since is stale,
        # not a new outage.
        if client is self._client:
            self._link.mark_down(op, exc.__cause__ or exc)

    def _redis(self) -> aioredis.Redis | None:
        return self._client if self._started and self._link.available else None

    # the Cache protocol --------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        client = self._redis()
        if client is not None:
            try:
                return await self._get(client, key)
            except RetryableError as exc:
                self._failed(client, "GET", exc)
        return await self.fallback.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if key in self._resend:
            expires = None if ttl_s is None else time.monotonic() + ttl_s
            self._resend[key] = (bytes(value), expires)
            self._resend_writes += 1
        client = self._redis()
        if client is not None:
            try:
                await self._set(client, key, value, ttl_s)
                return
            except RetryableError as exc:
                self._failed(client, "SET", exc)
        await self.fallback.set(key, value, ttl_s)
