"""MemoryCache: TTL on an injected clock (no sleeping), bounded size, the cache factory."""

from __future__ import annotations

import pytest

from tradingd.cache.factory import open_cache
from tradingd.cache.memory import MemoryCache
from tradingd.cache.redis import RedisCache
from tradingd.core.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_get_returns_what_was_set() -> None:
    cache = MemoryCache()
    await cache.start()
    assert await cache.get("k") is None
    await cache.set("k", b"v1")
    assert await cache.get("k") == b"v1"
    await cache.set("k", b"v2")
    assert await cache.get("k") == b"v2"
    await cache.stop()
    assert await cache.get("k") is None


async def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.set("short", b"s", ttl_s=10)
    await cache.set("forever", b"f")
    clock.now += 9.999
    assert await cache.get("short") == b"s"
    clock.now += 0.001
    assert await cache.get("short") is None
    assert len(cache) == 1  # the expired entry was dropped
    clock.now += 1e9
    assert await cache.get("forever") == b"f"


async def test_setting_again_renews_the_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.set("k", b"a", ttl_s=5)
    clock.now += 4
    await cache.set("k", b"b", ttl_s=5)
    clock.now += 4
    assert await cache.get("k") == b"b"
    await cache.set("k", b"c")  # no TTL now
    clock.now += 100
    assert await cache.get("k") == b"c"


async def test_nonpositive_ttl_stores_nothing() -> None:
    cache = MemoryCache(clock=FakeClock())
    await cache.set("k", b"old")
    await cache.set("k", b"new", ttl_s=0)
    assert await cache.get("k") is None


async def test_bounded_size_evicts_the_oldest_entry() -> None:
    cache = MemoryCache(max_entries=3, clock=FakeClock())
    for k in ("a", "b", "c"):
        await cache.set(k, k.encode())
    await cache.set("a", b"A")  # rewriting makes "a" the newest
    await cache.set("d", b"d")
    assert len(cache) == 3
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in ("a", "c", "d")] == [b"A", b"c", b"d"]
    await cache.set("e", b"e")
    assert await cache.get("c") is None and len(cache) == 3


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)


def test_open_cache_chooses_by_url() -> None:
    for url in (None, "", "  ", "memory://"):
        assert isinstance(open_cache(url), MemoryCache)
    redis_cache = open_cache("redis://:pw@127.0.0.1:6379/15")
    assert isinstance(redis_cache, RedisCache)
    assert "pw" not in redis_cache.safe_url
    with pytest.raises(ConfigError) as e:
        open_cache("memcached://u:secret@host:11211")
    assert "secret" not in str(e.value)
    assert "memcached://u:***@host:11211" in str(e.value) and "redis://" in str(e.value)
