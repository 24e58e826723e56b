"""MemoryCache: TTL on an injected clock (no sleeping), bounded size, the cache factory."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def test_expired_entries_nobody_reads_again_are_dropped_by_later_writes() -> None:
    """Live answers are keyed by their window's end: each bar writes new keys, the old ones
    are never read again. Before, every expired entry stayed until the entry bound evicted
    it (2,000 answers of ~750 KB: 1.5 GB held, 2 of them unexpired)."""
    clock = FakeClock()
    cache = MemoryCache(max_entries=2_000, clock=clock)
    for bar in range(300):
        await cache.set(f"bars:{bar}", b"x" * 1_000, ttl_s=600)
        clock.now += 1_800  # one bar every 30 minutes
    # Each write came after the sweep interval: it dropped every expired entry first, so
    # only the last write's entry is held (expired by now, and dropped when read).
    assert len(cache) == 1 and cache.size_bytes == 1_000
    assert await cache.get("bars:299") is None and len(cache) == 0


async def test_unexpired_entries_are_bounded_by_bytes_oldest_first() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=1_000, clock=clock, max_bytes=10_000)
    for i in range(25):
        await cache.set(f"k{i}", bytes([i]) * 1_000, ttl_s=3_600)
    assert len(cache) == 10 and cache.size_bytes == 10_000
    assert await cache.get("k14") is None
    assert [await cache.get(f"k{i}") for i in (15, 24)] == [
        bytes([15]) * 1_000,
        bytes([24]) * 1_000,
    ]
    await cache.set("k15", b"small")  # rewriting replaces its bytes, not adds to them
    assert cache.size_bytes == 9_000 + 5
    await cache.set("huge", b"h" * 10_001)  # larger than the whole bound: not kept
    assert await cache.get("huge") is None and cache.size_bytes == 9_005


async def test_a_write_sweeps_only_expired_entries() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.set("short", b"s", ttl_s=10)
    await cache.set("long", b"l", ttl_s=10_000)
    await cache.set("forever", b"f")
    clock.now += 61  # past the sweep interval and the short TTL
    await cache.set("new", b"n", ttl_s=10)
    assert len(cache) == 3 and cache.size_bytes == 3  # "short" dropped without being read
    assert [await cache.get(k) for k in ("long", "forever", "new")] == [b"l", b"f", b"n"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.integers(0, 40),  # value size
            st.one_of(st.none(), st.floats(-1, 200)),  # ttl
            st.floats(0, 90),  # clock step before the write
        ),
        max_size=60,
    )
)
def test_bounds_and_answers_hold_for_any_writes(writes) -> None:
    """Against a plain model: the bounds hold after every write, the bytes are counted
    exactly, and a read returns the key's last value only while it is unexpired."""
    clock = FakeClock()
    cache = MemoryCache(max_entries=3, clock=clock, max_bytes=60)
    last: dict[str, tuple[bytes, float | None]] = {}

    async def run() -> None:
        for i, (key, size, ttl, step) in enumerate(writes):
            clock.now += step
            value = bytes([i % 256]) * size
            await cache.set(key, value, ttl_s=ttl)
            last[key] = (value, None if ttl is None else clock.now + ttl)
            held = list(cache._data.values())
            assert len(held) <= 3 and cache.size_bytes <= 60
            assert cache.size_bytes == sum(len(v) for v, _ in held)
            for k, (v, expires) in last.items():
                got = await cache.get(k)
                if got is not None:  # kept: the last value, unexpired
                    assert got == v and (expires is None or clock.now < expires)
                elif k == key and (expires is None or clock.now < expires) and size <= 60:
                    raise AssertionError("the value just written is not returned")

    asyncio.run(run())
