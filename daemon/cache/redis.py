"""Redis cache (redis.asyncio). Failures are RetryableError: the caller backs off and retries
or falls back to fetching the data itself. `ResilientCache` (cache/resilient.py, what
`open_cache` gives for a redis:// URL) is this cache with an in-process fallback that never
raises."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..core.errors import RetryableError
from ..secrets import mask_url
from .reconnect import describe, timed_out

log = structlog.get_logger(__name__)

# Every failure of a call: the connection (refused, reset, timed out) and the server's
# refusals (OOM, MISCONF, READONLY, LOADING, NOAUTH ...): the cache is never worth a crash.
ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


MAX_CONNECTIONS = 16
# How many socket timeouts a call may wait for a free connection (see RedisCache._call).
_SLOT_WAIT = 5


def redis_client(url: str, socket_timeout: float, connect_timeout: float) -> aioredis.Redis:
    """A client that fails fast: one immediate retry on a broken connection (a stale pooled
    connection after a server restart), none on a timeout (a hung server would double it);
    backing off is the caller's job (redis-py's default retries 3 times with backoff)."""
    # A bounded pool: callers that ask at once (a vendor client looking up 500 symbols'
    # cached answers) wait for a connection instead of opening one each (the fault soak saw
    # one socket per symbol).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)


class RedisCache:
    def __init__(
        self,
        url: str,
        socket_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        prefix: str = "tradingd:",
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self._client: aioredis.Redis | None = None
        # Calls wait for one of the pool's connections here, outside their timeout: 496
        # symbols' lookups at once waited in the pool inside it, and a busy event loop took
        # the wait past the 2 s socket timeout, so a healthy Redis was declared down. After
        # a call fails, those queued behind it fail at once for a timeout's length (a hung
        # server costs one timeout, not one per 16 queued calls).
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._failed_at: float | None = None

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def _fail(self, op: str, e: BaseException) -> RetryableError:
        return RetryableError(f"Redis {op} at {self.safe_url} failed: {describe(e, self.url)}")

    async def _open(self) -> aioredis.Redis:
        """A new client whose server answered PING (within the connect timeout)."""
        client = redis_client(self.url, self.socket_timeout, self.connect_timeout)
        try:
            async with asyncio.timeout(self.connect_timeout + self.socket_timeout):
                await client.ping()
        except ERRORS as e:
            await client.aclose()
            e = timed_out(e, self.url, self.connect_timeout + self.socket_timeout)
            raise self._fail("connect", e) from e
        self._failed_at = None  # it answered: the next calls (a reconnect's probe) may try
        return client

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = await self._open()
        log.info("cache.redis.started", url=self.safe_url, prefix=self.prefix)

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _get_client(self) -> aioredis.Redis:
        if self._client is None:
            raise RetryableError(f"Redis cache {self.safe_url} is not started (call start())")
        return self._client

    async def get(self, key: str) -> bytes | None:
        return await self._get(self._get_client(), key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self._set(self._get_client(), key, value, ttl_s)

    @contextlib.asynccontextmanager
    async def _call(self, op: str) -> AsyncIterator[None]:
        """One call: a connection slot (waited for up to five socket timeouts), then at most
        the socket timeout for the call itself; RetryableError on failure."""
        try:
            # A slot is waited for longer than a call, but not for ever (a slow server with
            # hundreds of calls queued: 500 at 150 ms took 4.7 s).
            async with asyncio.timeout(_SLOT_WAIT * self.socket_timeout):
                await self._slots.acquire()
        except TimeoutError as e:
            raise self._fail(op, TimeoutError("no connection free in time")) from e
        try:
            failed = self._failed_at
            if failed is not None and time.monotonic() - failed < self.socket_timeout:
                raise self._fail(op, TimeoutError("a call just before it failed"))
            try:
                async with asyncio.timeout(self.socket_timeout):
                    yield
            except ERRORS as e:
                self._failed_at = time.monotonic()
                e = timed_out(e, self.url, self.socket_timeout)
                raise self._fail(op, e) from e
            self._failed_at = None
        finally:
            self._slots.release()

    async def _get(self, client: aioredis.Redis, key: str) -> bytes | None:
        """GET on `client`, never longer than the socket timeout once a connection is free;
        RetryableError on failure."""
        async with self._call("GET"):
            value = await client.get(self.prefix + key)
        return value.encode() if isinstance(value, str) else value

    async def _set(
        self, client: aioredis.Redis, key: str, value: bytes, ttl_s: float | None
    ) -> None:
        async with self._call("SET"):
            if ttl_s is None:
                await client.set(self.prefix + key, value)
                return
            ms = math.ceil(ttl_s * 1000)
            if ms <= 0:
                await client.delete(self.prefix + key)  # already expired
            else:
                await client.set(self.prefix + key, value, px=ms)
