"""Redis cache (redis.asyncio). Failures are RetryableError: the caller backs off and retries
or falls back to fetching the data itself."""

from __future__ import annotations

import asyncio
import math

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.errors import RetryableError
from ..secrets import mask_url

log = structlog.get_logger(__name__)

_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


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

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def _fail(self, op: str, e: BaseException) -> RetryableError:
        return RetryableError(f"Redis {op} at {self.safe_url} failed: {type(e).__name__}: {e}")

    async def start(self) -> None:
        if self._client is not None:
            return
        client = aioredis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
            # One immediate retry (a stale pooled connection); backoff is the caller's job.
            retry=Retry(NoBackoff(), 1),
        )
        try:
            await client.ping()
        except _ERRORS as e:
            await client.aclose()
            raise self._fail("connect", e) from e
        self._client = client
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
        client = self._get_client()
        try:
            value = await client.get(self.prefix + key)
        except _ERRORS as e:
            raise self._fail("GET", e) from e
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        client = self._get_client()
        try:
            if ttl_s is None:
                await client.set(self.prefix + key, value)
                return
            ms = math.ceil(ttl_s * 1000)
            if ms <= 0:
                await client.delete(self.prefix + key)  # already expired
            else:
                await client.set(self.prefix + key, value, px=ms)
        except _ERRORS as e:
            raise self._fail("SET", e) from e
