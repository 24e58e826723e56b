"""RedisCache against the real Redis (db 15), isolated by a unique key prefix."""

from __future__ import annotations

import time
import uuid

import pytest
import redis.asyncio as aioredis

from tradingd.cache.factory import open_cache
from tradingd.cache.redis import RedisCache
from tradingd.core.errors import RetryableError


@pytest.fixture
async def cache(redis_url: str):
    prefix = f"tradingd-test:{uuid.uuid4().hex}:"
    c = RedisCache(redis_url, prefix=prefix)
    raw = aioredis.from_url(redis_url)
    await c.start()
    try:
        yield c, raw
    finally:
        await c.stop()
        keys = [k async for k in raw.scan_iter(match=prefix + "*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


async def test_round_trip_and_missing_key(cache) -> None:
    c, raw = cache
    assert await c.get("missing") is None
    payload = bytes(range(256))
    await c.set("bin", payload)
    assert await c.get("bin") == payload
    assert await raw.get(c.prefix + "bin") == payload  # stored under the prefix
    await c.set("bin", b"v2")
    assert await c.get("bin") == b"v2"


async def test_ttl_is_set_on_the_key(cache) -> None:
    c, raw = cache
    await c.set("ttl", b"x", ttl_s=120)
    assert 119 <= await raw.ttl(c.prefix + "ttl") <= 120
    await c.set("frac", b"x", ttl_s=1.5)
    assert 1000 < await raw.pttl(c.prefix + "frac") <= 1500
    await c.set("none", b"x")
    assert await raw.ttl(c.prefix + "none") == -1  # no expiry
    await c.set("none", b"y", ttl_s=0)  # already expired: removed
    assert await raw.exists(c.prefix + "none") == 0
    assert await c.get("none") is None


async def test_open_cache_gives_a_working_redis_cache(redis_url: str) -> None:
    c = open_cache(redis_url)
    assert isinstance(c, RedisCache)
    await c.start()
    try:
        key = f"tradingd-test-factory-{uuid.uuid4().hex}"
        await c.set(key, b"1", ttl_s=60)
        assert await c.get(key) == b"1"
        raw = aioredis.from_url(redis_url)
        await raw.delete(c.prefix + key)
        await raw.aclose()
    finally:
        await c.stop()


async def test_unreachable_redis_is_retryable_and_names_the_url() -> None:
    c = RedisCache("redis://:hunter2@127.0.0.1:1/0", socket_timeout=1, connect_timeout=1)
    t = time.monotonic()
    with pytest.raises(RetryableError) as e:
        await c.start()
    assert time.monotonic() - t < 5
    assert "127.0.0.1:1" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(RetryableError, match="not started"):
        await c.get("k")


async def test_failure_after_start_is_retryable() -> None:
    broken = RedisCache("redis://127.0.0.1:1/0", socket_timeout=1, connect_timeout=1)
    # Simulate a server that went away after start: point a started cache at a dead port.
    broken._client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        with pytest.raises(RetryableError, match=r"127\.0\.0\.1:1"):
            await broken.get("k")
        with pytest.raises(RetryableError, match="SET"):
            await broken.set("k", b"v", ttl_s=5)
    finally:
        await broken.stop()


async def test_many_concurrent_calls_share_a_bounded_pool_of_connections(cache) -> None:
    """A vendor client looks up hundreds of symbols' cached answers at once: they wait for
    one of a few connections instead of opening one each (the fault soak saw one per
    symbol)."""
    import asyncio

    from tradingd.cache.redis import MAX_CONNECTIONS

    c, _prefix = cache
    await asyncio.gather(*(c.get(f"k{i}") for i in range(300)))
    pool = c._client.connection_pool
    opened = len(pool._available_connections) + len(pool._in_use_connections)
    assert 1 <= opened <= MAX_CONNECTIONS


class _Pool:
    """A client whose calls wait for one of 16 connections, then take `call_s` each (or
    never answer): what redis-py's blocking pool does under 500 lookups at once."""

    def __init__(self, call_s: float | None) -> None:
        import asyncio

        self.connections = asyncio.Semaphore(16)
        self.call_s = call_s

    async def get(self, key: str) -> bytes | None:
        import asyncio

        async with self.connections:
            if self.call_s is None:
                await asyncio.Event().wait()  # a hung server
            await asyncio.sleep(self.call_s)
        return None


async def test_a_wait_for_a_connection_is_not_a_slow_server() -> None:
    """496 symbols' lookups at once waited for the pool inside the 2 s socket timeout, and a
    busy loop took the wait past it: a healthy Redis was declared down at 500 symbols."""
    import asyncio

    c = RedisCache("redis://127.0.0.1:1/0", socket_timeout=0.1)
    c._client = _Pool(call_s=0.02)  # type: ignore[assignment]
    got = await asyncio.gather(*(c.get(f"k{i}") for i in range(200)), return_exceptions=True)
    assert [g for g in got if isinstance(g, BaseException)] == []


async def test_a_hung_server_costs_one_timeout_not_one_per_queued_call() -> None:
    import asyncio

    c = RedisCache("redis://127.0.0.1:1/0", socket_timeout=0.1)
    c._client = _Pool(call_s=None)  # type: ignore[assignment]
    t0 = time.monotonic()
    got = await asyncio.gather(*(c.get(f"k{i}") for i in range(200)), return_exceptions=True)
    assert all(isinstance(g, RetryableError) for g in got)
    assert time.monotonic() - t0 < 1.0  # not 200 / 16 x 0.1 s


async def test_a_reconnect_after_a_failed_call_is_not_refused_by_it(redis_url: str) -> None:
    """After one failed call every call was refused for a socket timeout, the reconnect's
    probe too although PING had just answered: a one-off blip kept the cache on memory for
    seconds, and the backoff grew for nothing."""
    from tradingd.cache.redis import ERRORS

    c = RedisCache(redis_url, socket_timeout=2.0)
    await c.start()
    try:
        client = c._client
        real_get = client.get

        async def broken(key):  # type: ignore[no-untyped-def]
            raise ERRORS[0]("connection reset")

        client.get = broken  # type: ignore[method-assign]
        with pytest.raises(RetryableError):
            await c.get("k")
        client.get = real_get  # type: ignore[method-assign]
        fresh = await c._open()  # what the reconnect does: a new client that answers PING
        try:
            await c._set(fresh, "__probe__", b"1", 1.0)  # not refused
        finally:
            await fresh.aclose()
    finally:
        await c.stop()
