"""Two publishers of one run id on one Redis are reported, a dead one's leftover claim is not.

Found by running one configuration twice (two working folders, two SQLite stores, one Redis):
both daemons published under one run id, and `tradingd:<run_id>:state` flipped between two
books with nothing saying so. The clock is the test's: a claim's age is advanced, not waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
import redis.asyncio as aioredis
from private_servers import wait_until
from structlog.testing import capture_logs

from tradingd.publisher import RedisPublisher

TTL = 60.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _send(pub: RedisPublisher) -> None:
    """One state message, sent (the claim is checked with every send)."""
    before = pub.published
    pub.publish("state", {"equity": 1.0})
    await wait_until(lambda: pub.published > before, "the message to be sent")


@pytest.fixture
def run_id() -> str:
    return f"owner-{uuid.uuid4().hex[:8]}"


async def test_a_second_publisher_of_one_run_id_is_reported(redis_url, run_id):
    clock = Clock()
    a = RedisPublisher(redis_url, run_id, owner_ttl_s=TTL, clock=clock)
    b = RedisPublisher(redis_url, run_id, owner_ttl_s=TTL, clock=clock)
    await a.start()
    await b.start()
    try:
        with capture_logs() as logs:
            await _send(a)
            await _send(b)  # first sight of a's claim: maybe a dead daemon's, not yet said
            assert b.shared_with is None and b.status()["ok"]
            clock.t += TTL + 1
            await _send(a)  # a renews its claim
            await _send(b)  # still there a TTL later: a live second publisher
        assert b.shared_with == a.owner and f"pid {a.owner.split()[1]} " in a.owner
        st = b.status()
        assert not st["ok"] and "run.run_id" in st["detail"] and a.owner in st["detail"]
        (warning,) = [e for e in logs if e["event"] == "publisher.run_id_shared"]
        assert warning["other"] == a.owner and warning["run_id"] == run_id
        assert a.shared_with is None and a.status()["ok"]  # the claim's holder

        # a stops; its claim expires (deleted here, as Redis does once it is not renewed):
        # b takes the claim and is alone again.
        await a.stop()
        raw = aioredis.from_url(redis_url, socket_timeout=5)
        try:
            await raw.delete(b.owner_key)
            await _send(b)
            assert b.shared_with is None and b.status()["ok"]
            assert (await raw.get(b.owner_key)).decode() == b.owner
            assert 0 < await raw.pttl(b.owner_key) <= TTL * 1000
        finally:
            await raw.delete(b.owner_key)
            await raw.aclose()
    finally:
        await a.stop()
        await b.stop()


async def test_a_dead_publishers_claim_is_not_reported(redis_url, run_id):
    clock = Clock()
    raw = aioredis.from_url(redis_url, socket_timeout=5)
    key = f"tradingd:{run_id}:owner"
    await raw.set(key, "pid 1 on host gone, since earlier [deadbeef]", px=int(TTL * 1000))
    pub = RedisPublisher(redis_url, run_id, owner_ttl_s=TTL, clock=clock)
    await pub.start()
    try:
        with capture_logs() as logs:
            await _send(pub)
            await raw.delete(key)  # not renewed: Redis expires it within the TTL
            clock.t += TTL + 1
            await _send(pub)
        assert pub.shared_with is None and pub.status()["ok"]
        assert not [e for e in logs if e["event"] == "publisher.run_id_shared"]
        assert (await raw.get(key)).decode() == pub.owner
    finally:
        await pub.stop()
        await raw.delete(key)
        await raw.aclose()


async def test_two_quiet_publishers_keep_their_claims_and_the_second_is_reported(redis_url, run_id):
    """Between bars a daemon sends nothing for a long time (the state refresh comes every
    `cache.expiry_s / 3`, 20 minutes by default), longer than the claim's TTL. The claim
    renewed only with a send expired in between, the later daemon took it, and no daemon
    ever saw another's claim twice a TTL apart: two daemons of one run id ran for 9 minutes
    unreported in a trial. Each keeps its claim on its own timer; Redis's own TTL runs here."""
    ttl = 0.3
    a = RedisPublisher(redis_url, run_id, owner_ttl_s=ttl)
    b = RedisPublisher(redis_url, run_id, owner_ttl_s=ttl)
    raw = aioredis.from_url(redis_url, socket_timeout=5)
    await a.start()
    try:
        with capture_logs() as logs:
            await _send(a)
            # Three TTLs without a message from a: its claim is there throughout (polled).
            until = time.monotonic() + 3 * ttl
            while time.monotonic() < until:
                assert await raw.get(a.owner_key) == a.owner.encode()
                await asyncio.sleep(0.02)
            await b.start()
            await _send(b)  # one message from b, then silence from both
            await wait_until(lambda: b.shared_with == a.owner, "b to report a's claim")
        assert a.shared_with is None and a.status()["ok"] and not b.status()["ok"]
        assert [e["other"] for e in logs if e["event"] == "publisher.run_id_shared"] == [a.owner]
    finally:
        await a.stop()
        await b.stop()
        await raw.delete(a.owner_key)
        await raw.aclose()


async def test_stop_is_bounded_when_the_sender_does_not_end(redis_url, run_id):
    """A CI run hung once in a publisher's stop (not reproduced since): a sender task that
    swallows its cancel held `stop()`, and with it a daemon's SIGTERM, for ever. The stop
    waits a bounded time, says what it left, and returns."""
    pub = RedisPublisher(redis_url, run_id, socket_timeout=0.2)
    swallowed, running = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # the first cancel (stop's): swallowed; the next ends it
        await asyncio.sleep(3600)

    await pub.start()
    sender = pub._task
    sender.cancel()  # the real sender, replaced by one that will not end
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    left = pub._task = asyncio.get_running_loop().create_task(stubborn())
    await running.wait()
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(10):
                await pub.stop()
        assert swallowed.is_set() and not left.done()
        (said,) = [e for e in logs if e["event"] == "publisher.stop_abandoned"]
        assert said["what"] == "sender task"
        assert [e for e in logs if e["event"] == "publisher.stopped"]
    finally:
        left.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await left
