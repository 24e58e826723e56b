"""A Redis that is up but refuses writes (full, with `maxmemory-policy noeviction`: SET answers
-OOM, PUBLISH still goes through). The publisher's pipeline raised on the owner claim's SET:
every batch was counted as dropped although its PUBLISHes had been sent, and the publisher
logged Redis down and recovered at every bar."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from tradingd.publisher import RedisPublisher

OOM = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"


class FullRedis:
    """Enough of a Redis server for the publisher, which refuses SET while `full` (as a real
    one at maxmemory with noeviction does: PUBLISH, GET and PEXPIRE are not refused)."""

    def __init__(self) -> None:
        self.full = True
        self.keys: dict[bytes, bytes] = {}
        self.published: list[bytes] = []
        self.refused_channels: set[bytes] = set()  # PUBLISH answers -NOPERM (an ACL)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FullRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while args := await _command(reader):
                writer.write(self._answer(args))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _answer(self, args: list[bytes]) -> bytes:
        cmd = args[0].upper()
        if cmd == b"PING":
            return b"+PONG\r\n"
        if cmd == b"HELLO":
            return b"-ERR unknown command 'HELLO'\r\n"
        if cmd == b"SET":
            if self.full:
                return OOM
            if b"NX" in (a.upper() for a in args[3:]) and args[1] in self.keys:
                return b"$-1\r\n"
            self.keys[args[1]] = args[2]
            return b"+OK\r\n"
        if cmd == b"GET":
            value = self.keys.get(args[1])
            return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        if cmd == b"PEXPIRE":
            return b":1\r\n" if args[1] in self.keys else b":0\r\n"
        if cmd == b"PUBLISH":
            if args[1] in self.refused_channels:
                return b"-NOPERM this user has no permissions to access one of the channels\r\n"
            self.published.append(args[2])
            return b":0\r\n"
        return b"+OK\r\n"  # SELECT, CLIENT SETINFO


async def _command(reader: asyncio.StreamReader) -> list[bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    assert line[:1] == b"*", line
    args = []
    for _ in range(int(line[1:])):
        size = int((await reader.readline())[1:])
        args.append((await reader.readexactly(size + 2))[:-2])
    return args


async def _sent(pub: RedisPublisher, kind: str, n: int) -> None:
    """Publish `n` messages and wait until the publisher has sent them."""
    for i in range(n):
        pub.publish(kind, {"i": i})
    await asyncio.wait_for(pub._idle.wait(), 5)


@pytest.fixture
async def full_redis() -> AsyncIterator[FullRedis]:
    async with FullRedis() as server:
        yield server


async def test_a_full_redis_still_publishes_and_says_once_that_it_refuses_writes(full_redis):
    pub = RedisPublisher(
        f"redis://:hunter2-pw@127.0.0.1:{full_redis.port}/0",
        "run-oom",
        socket_timeout=2.0,
        connect_timeout=2.0,
    )
    with capture_logs() as logs:
        await pub.start()
        try:
            for _ in range(3):  # three bars, Redis full
                await _sent(pub, "bars", 2)
            full_redis.full = False  # memory freed: the owner claim is written again
            await _sent(pub, "state", 1)
            full_redis.full = True  # full again: a second outage
            await _sent(pub, "bars", 1)
            st = pub.status()
        finally:
            await pub.stop()

    assert len(full_redis.published) == 8  # every message reached Redis
    assert (st["published"], st["dropped"]) == (8, 0)
    assert st["available"] and not st["dropped_by_reason"]
    events = [e["event"] for e in logs]
    assert "publisher.redis.down" not in events and "publisher.redis.recovered" not in events
    refused = [e for e in logs if e["event"] == "publisher.redis.refuses_writes"]
    assert [e["log_level"] for e in refused] == ["warning", "warning"]  # once per outage
    assert "OutOfMemoryError" in refused[0]["error"] and "maxmemory" in refused[0]["fix"]
    assert events.count("publisher.redis.writes_accepted") == 1
    assert events.index("publisher.redis.writes_accepted") > events.index(
        "publisher.redis.refuses_writes"
    )
    assert full_redis.keys[pub.owner_key.encode()] == pub.owner.encode()  # claimed while it could
    assert "refuses writes" in st["detail"] and "hunter2-pw" not in str(logs) + str(st)


async def test_a_refused_publish_is_dropped_alone_and_said_once(full_redis):
    """Only what Redis refused counts as dropped, under its own reason."""
    full_redis.full = False
    pub = RedisPublisher(f"redis://127.0.0.1:{full_redis.port}/0", "run-acl")
    full_redis.refused_channels.add(pub.channel("orders").encode())
    with capture_logs() as logs:
        await pub.start()
        try:
            for _ in range(2):
                pub.publish("orders", {"o": 1})
                await _sent(pub, "bars", 2)
            st = pub.status()
        finally:
            await pub.stop()
    assert len(full_redis.published) == 4
    assert (st["published"], st["dropped"], st["dropped_by_reason"]) == (4, 2, {"redis_refused": 2})
    [warned] = [e for e in logs if e["event"] == "publisher.dropped"]
    assert warned["reason"] == "redis_refused" and "NoPermissionError" in warned["detail"]
    assert "publisher.redis.down" not in [e["event"] for e in logs] and st["write_error"] is None
