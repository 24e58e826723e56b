"""Redis is only a cache: its outage must not stop the daemon.

Each test starts its own redis-server processes on free ports (never the shared Redis),
stops them (SIGKILL, or SIGSTOP for a hung server) during the test and starts them again on
the same port. Nothing waits a fixed time: every wait is on a condition with a deadline.
Without a redis-server binary the tests skip, unless TRADINGD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
import redis.asyncio as aioredis
from private_servers import private_redis, wait_until
from structlog.testing import capture_logs

from tradingd.cache.factory import open_cache
from tradingd.cache.resilient import ResilientCache
from tradingd.core.types import CrossSection, Fill, Order, OrderStatus, Side
from tradingd.publisher import (
    RedisPublisher,
    bars_payload,
    fills_payload,
    orders_payload,
    signals_payload,
)

# Fast reconnects for the tests; production defaults are 0.5 s doubling up to 30 s.
FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "socket_timeout": 0.5, "connect_timeout": 0.5}


@pytest.fixture
def server(tmp_path):
    with private_redis(tmp_path) as s:
        yield s


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


async def raw_get(url: str, key: str) -> bytes | None:
    raw = aioredis.from_url(url)
    try:
        return await raw.get(key)
    finally:
        await raw.aclose()


# ----------------------------------------------------------------------------- the cache


async def test_cache_answers_from_memory_during_outages_and_returns_to_redis(server) -> None:
    server.start()
    cache = open_cache(server.url, prefix="t:", **FAST)
    assert isinstance(cache, ResilientCache)
    with capture_logs() as logs:
        await cache.start()
        try:
            await cache.set("a", b"1", ttl_s=60)
            assert await raw_get(server.url, "t:a") == b"1"
            assert cache.status()["backend"] == "redis" and cache.status()["ok"]

            for outage in (1, 2):
                server.kill()
                for i in range(50):  # every call answers (from memory), none raises
                    t = time.monotonic()
                    await cache.set(f"k{i}", f"v{i}".encode(), ttl_s=60)
                    assert await cache.get(f"k{i}") == f"v{i}".encode()
                    assert time.monotonic() - t < cache.socket_timeout + 0.5
                st = cache.status()
                assert not cache.available and not st["ok"] and st["backend"] == "memory"
                assert "ConnectionError" in st["reason"] and st["down_since"]
                assert st["fallback_entries"] == 50

                server.start()  # the same port, an empty server
                await wait_until(lambda: cache.available, "the cache back on Redis")
                await cache.set("b", f"after {outage}".encode(), ttl_s=60)
                assert await raw_get(server.url, "t:b") == f"after {outage}".encode()
                assert await cache.get("b") == f"after {outage}".encode()
                # Entries written during the outage were dropped with the fallback: a miss
                # (refetched by the caller), never a value older than Redis's.
                assert await cache.get("k0") is None
                assert cache.status()["fallback_entries"] == 0

                assert len(events(logs, "cache.redis.down")) == outage
                assert len(events(logs, "cache.redis.recovered")) == outage
        finally:
            await cache.stop()
    down = events(logs, "cache.redis.down")[0]
    assert down["url"] == server.url and down["log_level"] == "warning"
    assert events(logs, "cache.redis.recovered")[0]["down_for_s"] > 0


async def test_cache_starts_with_redis_down_and_connects_later(server) -> None:
    cache = open_cache(server.url, prefix="t:", name="state", **FAST)
    with capture_logs() as logs:
        t = time.monotonic()
        await cache.start()  # no server yet: does not raise
        assert time.monotonic() - t < 2 * cache.connect_timeout + 0.5
        assert not cache.available and cache.reason and "connect" in cache.reason
        await cache.set("k", b"v", ttl_s=60)
        assert await cache.get("k") == b"v"  # from memory
        # The reconnect keeps failing in the background: still one "down", no flood.
        attempts = cache._link.failures
        await wait_until(lambda: cache._link.failures >= attempts + 3, "reconnect attempts")
        assert len(events(logs, "cache.redis.down")) == 1

        server.start()
        try:
            await wait_until(lambda: cache.available, "the cache connected to Redis")
            await cache.set("k", b"redis", ttl_s=60)
            assert await raw_get(server.url, "t:k") == b"redis"
        finally:
            await cache.stop()
    assert len(events(logs, "cache.redis.down")) == 1
    assert len(events(logs, "cache.redis.recovered")) == 1
    assert events(logs, "cache.redis.down")[0]["cache"] == "state"


async def test_a_hung_server_never_blocks_a_caller_longer_than_the_socket_timeout(server) -> None:
    server.start()
    cache = open_cache(server.url, prefix="t:", **FAST)
    await cache.start()
    try:
        await cache.set("k", b"v", ttl_s=60)
        server.pause()  # accepts connections, answers nothing
        t = time.monotonic()
        assert await cache.get("k") is None  # timed out: memory has nothing yet
        assert time.monotonic() - t < cache.socket_timeout + 0.3
        t = time.monotonic()
        await cache.set("k", b"m", ttl_s=60)
        assert await cache.get("k") == b"m"
        assert time.monotonic() - t < 0.1  # down: memory at once, Redis is not waited for
        assert "Timeout" in cache.status()["reason"] or "timed out" in cache.status()["reason"]
        server.resume()
        await wait_until(lambda: cache.available, "the cache back on Redis")
        assert await cache.get("k") == b"v"  # Redis's value
    finally:
        await cache.stop()


async def test_a_hung_servers_timeout_is_named_with_its_address_and_time(server) -> None:
    """The log line of a hung Redis said `"error": "SET: TimeoutError: "` (asyncio's
    timeout has no message), the cache's and the publisher's: now where and how long."""
    server.start()
    cache = open_cache(server.url, prefix="t:", **FAST)
    pub = RedisPublisher(server.url, f"run-{uuid.uuid4().hex[:8]}", **FAST)
    named = f"TimeoutError: no answer from 127.0.0.1:{server.port} within 0.5 s"
    with capture_logs() as logs:
        await cache.start()
        await pub.start()
        try:
            server.pause()
            await cache.set("k", b"v", ttl_s=60)
            pub.publish("state", {"equity": 1.0})
            await wait_until(lambda: not pub.available, "the publisher to notice")
            assert cache.status()["reason"] == f"SET: {named}"
            assert named in cache.status()["detail"]
            [down] = events(logs, "cache.redis.down")
            assert down["error"] == f"SET: {named}"
            [down] = events(logs, "publisher.redis.down")
            assert down["error"] == f"PUBLISH: {named}"
        finally:
            server.resume()
            await pub.stop()
            await cache.stop()


async def test_oom_and_credentials_refused_mid_run_are_named_with_the_fix(server) -> None:
    """A full Redis and a password set on the server mid-run were `cache.redis.down` /
    `publisher.redis.down` with the bare error, retried as an outage for ever without
    saying what to do. Now one `.refused` line each, naming it and the fix, also in /ready;
    still retried, and `.recovered` when Redis accepts again."""
    server.start()
    cache = open_cache(server.url, prefix="t:", **FAST)
    pub = RedisPublisher(server.url, f"run-{uuid.uuid4().hex[:8]}", **FAST)
    admin = aioredis.from_url(server.url)
    # What the operator must read (the task's words for it), each with what to do.
    oom = "Redis refuses writes: out of memory (maxmemory): raise maxmemory or set an eviction"
    auth = "Redis refused the credentials (changed on the server?): set the password in the"
    with capture_logs() as logs:
        await cache.start()
        await pub.start()
        try:
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", 1)  # every write refused
            for i in range(5):
                await cache.set(f"k{i}", b"v", ttl_s=60)
            assert await cache.get("k4") == b"v"  # from memory
            assert cache.status()["reason"].startswith(f"SET: {oom}")
            assert oom in cache.status()["detail"]
            failures = cache._link.failures
            await wait_until(lambda: cache._link.failures >= failures + 3, "retries")
            await admin.config_set("maxmemory", 0)
            await wait_until(lambda: cache.available, "the cache back on Redis")

            await admin.config_set("requirepass", "rotated")
            await admin.client_kill_filter(_type="normal", skipme=True)
            await cache.set("k", b"v", ttl_s=60)
            pub.publish("state", {"equity": 1.0})
            await wait_until(lambda: not pub.available, "the publisher to notice")
            await wait_until(lambda: auth in (cache.reason or ""), "the cache to name it")
            assert auth in pub.status()["reason"] and auth in cache.status()["detail"]
            failures = cache._link.failures
            await wait_until(lambda: cache._link.failures >= failures + 3, "retries")
            await admin.config_set("requirepass", "")
            await wait_until(lambda: cache.available and pub.available, "both back")
        finally:
            await admin.aclose()
            await pub.stop()
            await cache.stop()
    refused = events(logs, "cache.redis.refused")
    assert len(refused) == 2 and oom in refused[0]["error"] and auth in refused[1]["error"]
    assert "OutOfMemoryError" in refused[0]["cause"] and refused[0]["log_level"] == "warning"
    [refused] = events(logs, "publisher.redis.refused")
    assert auth in refused["error"] and "restart" in refused["error"]
    # Said as refusals, not as Redis down; each outage ends with one `.recovered`.
    assert events(logs, "cache.redis.down") == events(logs, "publisher.redis.down") == []
    assert len(events(logs, "cache.redis.recovered")) == 2
    assert len(events(logs, "publisher.redis.recovered")) == 1


async def test_the_state_and_owner_keys_are_back_at_once_when_redis_recovers(server) -> None:
    """`tradingd:<run>:state` stayed missing after Redis came back (restarted empty) until
    the next bar or state refresh (cache.expiry_s / 3: 20 minutes by default), and the state
    written during the outage was thrown away with the fallback. Now the reconnect writes
    the latest state (with what is left of its TTL), and the publisher claims its owner key,
    before anything else is written."""
    server.start()
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    cache = open_cache(server.url, prefix="tradingd:", **FAST)
    cache.resend_on_recovery(f"{run_id}:state")
    pub = RedisPublisher(server.url, run_id, **FAST)
    state_key, owner_key = f"tradingd:{run_id}:state", f"tradingd:{run_id}:owner"
    await cache.start()
    await pub.start()
    try:
        await cache.set(f"{run_id}:state", b"before", ttl_s=60)
        pub.publish("state", {"equity": 0.0})
        await wait_until(lambda: pub.published == 1 and pub._owned, "the owner claim")
        server.kill()
        await cache.set(f"{run_id}:state", b"during", ttl_s=60)  # the latest: to memory
        await cache.set("answer", b"during", ttl_s=60)  # not kept: a miss refetches it
        pub.publish("state", {"equity": 1.0})
        await wait_until(lambda: not pub.available and not cache.available, "both down")

        server.start()  # empty
        await wait_until(lambda: cache.available and pub.available, "both back")
        # Nothing written since: the reconnects did it.
        assert await raw_get(server.url, state_key) == b"during"
        raw = aioredis.from_url(server.url)
        try:
            assert 0 < await raw.pttl(state_key) <= 60_000
            # Claimed by the recovery itself, not at the next renewal (20 s after the last).
            deadline = time.monotonic() + 5.0
            while (owner := await raw.get(owner_key)) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert owner is not None and owner.decode() == pub.owner
        finally:
            await raw.aclose()
        assert await raw_get(server.url, "tradingd:answer") is None
        assert await cache.get("answer") is None
    finally:
        await pub.stop()
        await cache.stop()


async def test_the_fallback_is_bounded(server) -> None:
    cache = open_cache(
        server.url, fallback_max_entries=5, max_fallback_value_bytes=100, **FAST
    )  # no server: the fallback answers
    await cache.start()
    try:
        for i in range(20):
            await cache.set(f"k{i}", b"x")
        await cache.set("big", b"x" * 101)
        assert len(cache.fallback) == 5 and await cache.get("big") is None
        assert await cache.get("k19") == b"x" and await cache.get("k0") is None
    finally:
        await cache.stop()


# ----------------------------------------------------------------------------- publishing

T0 = datetime(2024, 3, 6, 21, 0, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB", "CCC")


def _bar() -> CrossSection:
    close = np.array([101.5, np.nan, 55.25])
    return CrossSection(
        time=T0, open=close, high=close, low=close, close=close,
        volume=np.array([1000.0, np.nan, 2500.0]),
        split=np.ones(3), dividend=np.zeros(3),
    )  # fmt: skip


def _order() -> Order:
    return Order(
        client_order_id=f"run|{T0:%Y%m%dT%H%M%S}|AAA|entry",
        symbol="AAA",
        side=Side.BUY,
        quantity=10.0,
        created_at=T0,
        status=OrderStatus.NEW,
    )


def _fill() -> Fill:
    return Fill("f1", _order().client_order_id, "AAA", Side.BUY, 10.0, 101.6, 1.0, 0.5, T0, 101.5)


async def _subscriber(url: str, channels: list[str]):
    raw = aioredis.from_url(url)
    ps = raw.pubsub()
    await ps.subscribe(*channels)
    # The server has registered every subscription once it confirmed them.
    confirmed = 0
    deadline = time.monotonic() + 10
    while confirmed < len(channels):
        assert time.monotonic() < deadline, "subscriptions not confirmed"
        msg = await ps.get_message(timeout=1.0)
        if msg and msg["type"] == "subscribe":
            confirmed += 1
    return raw, ps


async def _receive(ps, n: int, timeout_s: float = 10.0) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"received {len(out)} of {n} messages: {out}"
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if msg and msg["type"] == "message":
            out.append((msg["channel"].decode(), json.loads(msg["data"])))
    return out


async def test_a_subscriber_receives_bars_signals_orders_and_fills(server) -> None:
    server.start()
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    pub = RedisPublisher(server.url, run_id, **FAST)
    kinds = ["bars", "signals", "orders", "fills", "state"]
    raw, ps = await _subscriber(server.url, [f"tradingd:{run_id}:{k}" for k in kinds])
    await pub.start()
    try:
        order = _order()
        pub.publish("bars", bars_payload(_bar(), SYMBOLS))
        pub.publish(
            "signals",
            signals_payload(T0, SYMBOLS, np.array([0.5, np.nan, -0.25]), np.array([0.3, 0, 0])),
        )
        pub.publish("orders", orders_payload([order], T0))
        order.status = OrderStatus.FILLED  # a later change is not in the message sent
        pub.publish("fills", fills_payload([_fill()], T0))
        pub.publish("state", {"equity": 100_000.0, "drawdown": math.nan})
        got = await _receive(ps, 5)
    finally:
        await pub.stop()
        await ps.aclose()
        await raw.aclose()

    assert [ch for ch, _ in got] == [f"tradingd:{run_id}:{k}" for k in kinds]
    msgs = {m["kind"]: m for _, m in got}
    assert [m["seq"] for _, m in got] == [1, 2, 3, 4, 5]
    assert all(m["run_id"] == run_id and m["sent_at"] for m in msgs.values())
    assert msgs["bars"]["data"] == {
        "time": T0.isoformat(),
        "symbols": 2,
        "bars": {
            "AAA": {"close": 101.5, "volume": 1000.0},
            "CCC": {"close": 55.25, "volume": 2500.0},
        },
    }
    assert msgs["signals"]["data"]["signals"] == {
        "AAA": {"score": 0.5, "target": 0.3},
        "CCC": {"score": -0.25, "target": 0.0},
    }
    (o,) = msgs["orders"]["data"]["orders"]
    assert o["client_order_id"] == order.client_order_id and o["symbol"] == "AAA"
    assert o["side"] == "buy" and o["status"] == "new" and o["quantity"] == 10.0
    assert o["avg_fill_price"] is None and o["created_at"] == T0.isoformat()
    (f,) = msgs["fills"]["data"]["fills"]
    assert f["price"] == 101.6 and f["side"] == "buy" and f["time"] == T0.isoformat()
    assert msgs["state"]["data"] == {"equity": 100_000.0, "drawdown": None}
    st = pub.status()
    assert st["published"] == 5 and st["dropped"] == 0 and st["queued"] == 0


async def test_publishing_drops_while_down_and_resumes_after_a_restart(server) -> None:
    server.start()
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    pub = RedisPublisher(server.url, run_id, **FAST)
    channel = f"tradingd:{run_id}:orders"
    with capture_logs() as logs:
        await pub.start()
        try:
            raw, ps = await _subscriber(server.url, [channel])
            pub.publish("orders", orders_payload([_order()]))
            assert (await _receive(ps, 1))[0][1]["seq"] == 1
            # A subscriber gets the message before the publisher reads Redis's reply: killing
            # the server in between makes the sent message count as dropped (it may not have
            # arrived, as far as the publisher knows), one drop more than this test counts.
            await wait_until(lambda: pub.published == 1, "the publisher to read the reply")
            await ps.aclose()
            await raw.aclose()

            for outage in (1, 2):
                server.kill()
                published, dropped = pub.published, pub.dropped
                pub.publish("orders", orders_payload([_order()]))  # fails in the background
                await wait_until(lambda: not pub.available, "the publisher to notice")
                for _ in range(10):
                    pub.publish("fills", fills_payload([_fill()]))  # never raises or blocks
                assert pub.dropped == dropped + 11 and pub.published == published
                assert pub.status()["dropped_by_reason"]["redis_down"] >= 11
                assert not pub.status()["ok"] and pub.status()["reason"]

                server.start()
                await wait_until(lambda: pub.available, "publishing to resume")
                raw, ps = await _subscriber(server.url, [channel])
                pub.publish("orders", orders_payload([_order()]))
                ((ch, msg),) = await _receive(ps, 1)
                assert ch == channel and msg["seq"] == pub.seq  # the gap shows the drops
                await wait_until(lambda n=published + 1: pub.published == n, "the reply read")
                await ps.aclose()
                await raw.aclose()
                assert len(events(logs, "publisher.redis.down")) == outage
                assert len(events(logs, "publisher.redis.recovered")) == outage
        finally:
            await pub.stop()


async def test_the_publisher_starts_with_redis_down(server) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    pub = RedisPublisher(server.url, run_id, **FAST)
    with capture_logs() as logs:
        await pub.start()  # no server: does not raise
        try:
            pub.publish("state", {"equity": 1.0})
            assert pub.dropped == 1 and not pub.available
            server.start()
            await wait_until(lambda: pub.available, "the publisher to connect")
            raw, ps = await _subscriber(server.url, [f"tradingd:{run_id}:state"])
            pub.publish("state", {"equity": 2.0})
            ((_, msg),) = await _receive(ps, 1)
            assert msg["data"] == {"equity": 2.0}
            await ps.aclose()
            await raw.aclose()
        finally:
            await pub.stop()
    assert len(events(logs, "publisher.redis.down")) == 1
    assert len(events(logs, "publisher.redis.recovered")) == 1


async def test_a_state_written_while_the_recovery_resends_is_the_one_redis_keeps(server) -> None:
    """The recovery's resend awaited Redis before its client was in place: a state written
    meanwhile went to the fallback, which the recovery empties, and Redis kept the value
    before it until the next write (up to cache.expiry_s / 3). A pass that saw a write is
    done again."""
    server.start()
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    key = f"{run_id}:state"
    cache = open_cache(server.url, prefix="tradingd:", **FAST)
    cache.resend_on_recovery(key)
    await cache.start()
    resend = cache._resend_latest
    wrote: list[bool] = []

    async def resend_while_the_engine_writes(client):  # type: ignore[no-untyped-def]
        await resend(client)
        if not wrote:  # the engine's state write lands during the first pass
            wrote.append(True)
            await cache.set(key, b"newest", ttl_s=60)

    cache._resend_latest = resend_while_the_engine_writes  # type: ignore[method-assign]
    try:
        await cache.set(key, b"before", ttl_s=60)
        server.kill()
        await cache.set(key, b"during", ttl_s=60)
        await wait_until(lambda: not cache.available, "down")
        server.start()
        await wait_until(lambda: cache.available, "back")
        assert wrote
        assert await raw_get(server.url, f"tradingd:{key}") == b"newest"
    finally:
        await cache.stop()
