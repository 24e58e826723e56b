"""The health server for real: bound on a free port in the test's own event loop, queried over
127.0.0.1 with aiohttp. The clock behind heartbeat ages is injected, so stalls are simulated
deterministically rather than waited for."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tradingd import metrics
from tradingd.core.errors import ConfigError, StorageError
from tradingd.health import (
    TOKEN_ENV,
    Check,
    CheckResult,
    HealthConfig,
    status_check,
    token_from_env,
)
from tradingd.health.server import LOOP_CHECK, HealthServer, HealthServerError, mask_text

TOKEN = "a-long-test-token-0123456789"
SECRET = "s3cret"
PG = f"postgresql://u:{SECRET}@db.example/tradingd"


class FakeClock:
    """Monotonic seconds under the test's control."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingControls:
    def __init__(self, fail: bool = False, raises: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.raises = raises

    async def _act(self, action: str) -> dict[str, Any]:
        self.calls.append(action)
        if self.fail:
            raise RuntimeError(f"broker refused: {PG}")
        if self.raises is not None:
            raise self.raises
        return {"action": action, "orders_cancelled": 2}

    async def pause(self) -> dict[str, Any]:
        return await self._act("pause")

    async def resume(self) -> dict[str, Any]:
        return await self._act("resume")

    async def flatten(self) -> dict[str, Any]:
        return await self._act("flatten")

    async def reset_halt(self) -> dict[str, Any]:
        return await self._act("reset-halt")


def ok(detail: str = "fine") -> Callable[[], CheckResult]:
    return lambda: CheckResult(True, detail)


def cfg(**kw: Any) -> HealthConfig:
    return HealthConfig(port=0, **kw)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start servers on free ports; every one is stopped after the test."""
    started: list[HealthServer] = []

    async def _serve(config: HealthConfig | None = None, **kw: Any) -> HealthServer:
        server = HealthServer(config or cfg(), **kw)
        await server.start()
        started.append(server)
        return server

    yield _serve
    for server in started:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def get(
    http: aiohttp.ClientSession, server: HealthServer, path: str, auth: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": auth} if auth is not None else {}
    async with http.get(f"{server.url}{path}", headers=headers) as r:
        text = await r.text()
        return r.status, (json.loads(text) if r.content_type == "application/json" else text)


async def post(
    http: aiohttp.ClientSession, server: HealthServer, path: str, auth: str | None = None
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    headers = {"Authorization": auth} if auth is not None else {}
    async with http.post(f"{server.url}{path}", headers=headers) as r:
        return r.status, json.loads(await r.text()), r.headers


async def until(cond: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------------- binding


async def test_binds_loopback_by_default_and_reports_the_free_port(serve, http):
    assert HealthConfig().host == "127.0.0.1"
    server = await serve()
    assert server.port and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server._listener is not None
    assert [s.getsockname()[0] for s in server._listener.sockets] == ["127.0.0.1"]
    code, body = await get(http, server, "/health")
    assert code == 200 and body["alive"] is True


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """The server closed the connection (EOF or reset) within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_connections_beyond_the_cap_are_closed_at_once_and_the_server_still_answers(
    serve, http
):
    """Idle connections from any local user took every file descriptor of the process: the
    daemon died of "too many open files", and asyncio logged a traceback per refused
    accept. Over `max_connections` a connection is closed as soon as it is accepted."""
    server = await serve(cfg(max_connections=4))
    held = []
    for _ in range(4):  # headers started, never finished
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        held.append((reader, writer))
    await until(lambda: len(server._runner.server.connections) == 4)
    with capture_logs() as logs:
        extra = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(6)]
        assert all([await _closed_by_server(r) for r, _ in extra])
    assert len(server._runner.server.connections) == 4
    refused = [e for e in logs if e["event"] == "health.connections_refused"]
    assert [e["so_far"] for e in refused] == [1]  # heard, without a line per connection
    for _, w in held + extra:
        w.close()
    await until(lambda: not server._runner.server.connections, timeout=5.0)
    code, body = await get(http, server, "/health")
    assert code == 200 and body["alive"] is True


async def test_a_connection_that_never_finishes_its_request_is_closed_after_the_idle_timeout(
    serve,
):
    """aiohttp's keep-alive timeout (an hour by default) was the only limit: a client that
    sent its headers slowly held its connection that long."""
    server = await serve(cfg(idle_timeout_s=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\n")
    await writer.drain()
    assert await _closed_by_server(reader, timeout=5.0)
    writer.close()


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("attacker.example", 421),
        ("attacker.example:8080", 421),
        ("10.0.0.5:8080", 421),
        ("127.0.0.1:8080", 200),
        ("localhost:8080", 200),
        ("localhost", 200),
        ("[::1]:8080", 200),
    ],
)
async def test_a_loopback_server_answers_only_requests_addressed_to_loopback(
    serve, http, host, code
):
    """Any Host header was accepted: a web page open on this machine could read /status and
    /metrics by DNS rebinding (its name resolved to 127.0.0.1, its Host header its own)."""
    server = await serve()
    async with http.get(f"{server.url}/status", headers={"Host": host}) as r:
        assert r.status == code


async def test_a_proxy_host_name_is_answered_when_allowed(serve, http):
    """A reverse proxy on this machine that passes its clients' Host header got 421 on
    every path, /health included, with no way to allow it."""
    server = await serve(cfg(allowed_hosts=["TradingD.example.com"]))
    for host, code in (("tradingd.example.com", 200), ("other.example.com", 421)):
        async with http.get(f"{server.url}/health", headers={"Host": host}) as r:
            assert r.status == code, host
    with pytest.raises(ConfigError, match="allowed_hosts"):
        cfg(allowed_hosts="tradingd.example.com")
    with pytest.raises(ConfigError, match="without a port"):
        cfg(allowed_hosts=["proxy.local:8080"])


async def test_an_ipv6_host_allowed_as_a_url_writes_it_is_answered(serve, http):
    """`"[fd00::5]"` in allowed_hosts (config/docker.toml wrote `"[::1]"` so) never matched:
    the Host header's name is compared without its brackets."""
    server = await serve(cfg(allowed_hosts=["[FD00::5]"]))
    assert server.config.allowed_hosts == ("fd00::5",)
    for host, code in (("[fd00::5]:8080", 200), ("[fd00::5]", 200), ("[fd00::6]:8080", 421)):
        async with http.get(f"{server.url}/health", headers={"Host": host}) as r:
            assert r.status == code, host
    with pytest.raises(ConfigError, match=r"without a port \('\[fd00::5\]', not"):
        cfg(allowed_hosts=["[fd00::5]:8080"])


async def test_an_unknown_path_or_method_answers_json_naming_what_there_is(serve, http):
    server = await serve()
    async with http.get(f"{server.url}/nope") as r:
        assert r.status == 404 and r.content_type == "application/json"
        body = await r.json()
    assert body["path"] == "/nope" and "GET /ready" in body["paths"]
    assert "POST /pause" in body["paths"]
    async with http.post(f"{server.url}/status") as r:
        assert r.status == 405 and r.content_type == "application/json"
        assert "GET" in r.headers["Allow"]
        assert "GET" in (await r.json())["allowed_methods"]


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("evil.example", 421),
        ("evil.example:8080", 421),
        ("tradingd:8080", 200),
        ("scraper-target", 200),
        ("127.0.0.1:8080", 200),
        ("localhost", 200),
        ("[::1]:8080", 200),
    ],
)
async def test_a_server_on_every_interface_answers_only_its_allowed_host_names(
    serve, http, host, code
):
    """In a container (host 0.0.0.0, the port published on the host's loopback) the Host
    check was off even with `allowed_hosts` set: a web page in a browser on the Docker host
    read /status by DNS rebinding. An allow-list is enforced wherever the server binds."""
    server = await serve(cfg(host="0.0.0.0", allowed_hosts=["tradingd", "Scraper-Target"]))
    async with http.get(f"{server.url}/status", headers={"Host": host}) as r:
        assert r.status == code
        if code == 421:
            assert "health.allowed_hosts" in (await r.json())["error"]


async def test_the_docker_configuration_refuses_other_host_names(serve, http):
    """config/docker.toml binds 0.0.0.0: it must name the hosts it answers, the loopback
    names (the image's HEALTHCHECK, a browser on the Docker host through the published port)
    and the compose service's own (a scraper on the compose network)."""
    from tradingd.config import load_config

    root = Path(__file__).resolve().parents[2]
    loaded = load_config([root / "config/default.toml", root / "config/docker.toml"], env={})
    assert loaded.health.host == "0.0.0.0"
    server = await serve(dataclasses.replace(loaded.health, port=0))
    for host, code in (
        ("evil.example", 421),
        ("evil.example:8080", 421),
        ("127.0.0.1:8080", 200),
        ("localhost:8080", 200),
        ("[::1]:8080", 200),
        ("tradingd:8080", 200),  # the compose service name
        ("tradingd-tradingd-1:8080", 200),  # its container's name
    ):
        async with http.get(f"{server.url}/status", headers={"Host": host}) as r:
            assert r.status == code, host


async def test_a_server_on_every_interface_takes_any_host_name(serve, http):
    server = await serve(cfg(host="0.0.0.0"))
    async with http.get(f"{server.url}/health", headers={"Host": "tradingd.internal"}) as r:
        assert r.status == 200


async def test_non_loopback_host_is_allowed_but_warned(serve, http):
    with capture_logs() as logs:
        server = await serve(cfg(host="0.0.0.0"))
    warnings = [e for e in logs if e["event"] == "health.non_loopback"]
    assert warnings and warnings[0]["log_level"] == "warning"
    assert server.url == f"http://127.0.0.1:{server.port}"
    code, _ = await get(http, server, "/health")
    assert code == 200


async def test_loopback_host_logs_no_warning(serve):
    with capture_logs() as logs:
        await serve()
    assert not [e for e in logs if e["event"] == "health.non_loopback"]


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack IPv6 here")
async def test_a_server_on_every_ipv6_address_serves_ipv4_too(serve, http):
    """asyncio binds "::" IPv6-only: a daemon with health.host = "::" never answered on
    127.0.0.1 (a probe of localhost, Docker's port publishing over IPv4). It is dual-stack."""
    server = await serve(cfg(host="::"))
    assert server.url == f"http://[::1]:{server.port}"
    for base in (f"http://127.0.0.1:{server.port}", f"http://[::1]:{server.port}"):
        async with http.get(f"{base}/health") as r:
            assert r.status == 200, base
    assert server._listener is not None and len(server._listener.sockets) == 1
    assert server._listener.sockets[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


async def test_a_server_on_the_short_loopback_form_is_loopback(serve, http):
    """`127.1` is 127.0.0.1 to the OS (the server binds there), but `ipaddress` refuses the
    short form: the server was warned about as listening beyond this machine, and its Host
    check left off."""
    with capture_logs() as logs:
        server = await serve(cfg(host="127.1"))
    assert not [e for e in logs if e["event"] == "health.non_loopback"]
    # The URL a client asks (`tradingd health`'s default): aiohttp refuses "http://127.1:...".
    assert server.url == f"http://127.0.0.1:{server.port}"
    for host, code in (("evil.example", 421), ("127.1:8080", 200), ("localhost", 200)):
        async with http.get(f"{server.url}/health", headers={"Host": host}) as r:
            assert r.status == code, host


async def test_port_in_use_is_an_error_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(HealthConfig(port=port))
        with pytest.raises(HealthServerError, match=f"127.0.0.1:{port}.*health.port"):
            await server.start()
    await server.stop()


async def test_disabled_server_does_not_listen():
    server = HealthServer(cfg(enabled=False))
    await server.start()
    assert server.port is None and server.url is None
    server.heartbeat()  # still accepted
    await server.stop()


async def test_start_twice_fails_and_stop_is_idempotent(serve):
    server = await serve()
    with pytest.raises(RuntimeError, match="twice"):
        await server.start()
    await server.stop()
    await server.stop()
    assert server.port is None


def _slow_reader(port: int, path: str = "/status", requests: int = 1) -> socket.socket:
    """A client that sends `requests` pipelined GETs and never reads an answer (a tiny
    receive buffer), so the server's writes stall."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() * requests)
    return sock


def _send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to here (tcp_wmem's maximum; 4 MB)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


_FILLER = "x" * (_send_buffer_max() + 2_000_000)


def _big_status() -> dict[str, Any]:
    return {"filler": _FILLER}  # more than the socket buffers hold: the write stalls


async def _an_answer_is_stuck(server: HealthServer) -> None:
    assert server._runner is not None and server._runner.server is not None
    await until(
        lambda: any(
            h.transport is not None and h.transport.get_write_buffer_size() > 0
            for h in server._runner.server.connections  # type: ignore[union-attr]
        ),
        timeout=10.0,
    )


async def test_a_client_that_never_reads_does_not_hold_the_stop(serve):
    """aiohttp's shutdown waited twice its 60 s default for an answer that could not be
    written: one client that never read held SIGTERM's stop for two minutes, past systemd's
    TimeoutStopSec. The stop now waits `shutdown_timeout_s`, then closes such connections,
    saying so."""
    server = await serve(cfg(shutdown_timeout_s=0.3, write_timeout_s=60.0), status=_big_status)
    sock = _slow_reader(server.port)
    try:
        await _an_answer_is_stuck(server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with capture_logs() as logs:
            await asyncio.wait_for(server.stop(), 10.0)
        assert loop.time() - started < 3.0
    finally:
        sock.close()
    cut = [e for e in logs if e["event"] == "health.connections_cut"]
    assert len(cut) == 1 and cut[0]["connections"] == 1 and cut[0]["paths"] == ["/status"]
    assert cut[0]["log_level"] == "warning"
    assert any(e["event"] == "health.stopped" for e in logs)


async def test_clients_that_never_read_do_not_lock_out_health(serve, http):
    """`max_connections` clients that never read their answers held their connections for as
    long as they stayed connected, and every other connection (a probe of /health) was
    closed on accept. An answer not written within `write_timeout_s` now closes its
    connection: the probe is answered within seconds, and it is logged once, counted."""
    server = await serve(cfg(max_connections=4, write_timeout_s=0.3), status=_big_status)
    assert server._runner is not None and server._runner.server is not None
    with capture_logs() as logs:
        socks = [_slow_reader(server.port) for _ in range(4)]
        try:
            await _an_answer_is_stuck(server)
            await until(lambda: not server._runner.server.connections, timeout=10.0)  # type: ignore[union-attr]
            code, body = await get(http, server, "/health")
        finally:
            for sock in socks:
                sock.close()
    assert code == 200 and body["alive"] is True
    cut = [e for e in logs if e["event"] == "health.answer_not_read"]
    assert [(e["so_far"], e["path"], e["log_level"]) for e in cut] == [(1, "/status", "warning")]
    assert server._unwritten >= 4


async def test_malformed_requests_are_a_line_a_minute_with_their_count(serve, http, caplog):
    """aiohttp logged each request it could not parse as an ERROR with a traceback: a local
    loop of garbage wrote 8,000 lines in 2.5 s. They are now counted and said as one
    warning at most a minute, with the count, the last error and the remotes; the rest at
    stop (or by the ticker a minute on). Each still answers 400."""
    clock = FakeClock()
    server = await serve(clock=clock)
    garbage = [
        b"GET /health HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
    ] * 5
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    with capture_logs() as logs:
        for raw in garbage:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            assert (await reader.read()).split(b" ")[1].startswith(b"4")
            writer.close()
        code, _ = await get(http, server, "/health")
        assert code == 200
        await server.stop()
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= 30]
    lines = [e for e in logs if e["event"] == "health.bad_requests"]
    assert [(e["bad_requests"], e["since_last_line"]) for e in lines] == [(1, 1), (15, 14)]
    assert lines[0]["log_level"] == "warning" and lines[0]["remotes"] == ["127.0.0.1"]
    assert "HTTP/9.9" in lines[0]["last_error"] or "version" in lines[0]["last_error"].lower()


async def test_a_malformed_request_quoting_the_token_does_not_log_it(serve):
    """aiohttp's parse error quotes the raw header line: `Authorization: Token <token>`
    (a scheme `mask_text` does not know) went into health.bad_requests as written."""
    server = await serve(token=TOKEN)
    with capture_logs() as logs:
        for scheme in ("Token ", "", "Bearer "):
            raw = (
                b"POST /pause HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                + f"{scheme}{TOKEN}".encode()
                + b"\x01\r\n\r\n"
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            assert (await reader.read()).split(b" ")[1].startswith(b"4")
            writer.close()
        await server.stop()
    lines = [e for e in logs if e["event"] == "health.bad_requests"]
    assert lines and sum(e["since_last_line"] for e in lines) == 3
    assert all(TOKEN not in e["last_error"] and TOKEN[:12] not in e["last_error"] for e in lines)


async def test_a_stop_waits_for_an_answer_being_written(serve, http):
    """Answers that finish within `shutdown_timeout_s` are not cut."""
    release = asyncio.Event()

    class SlowControls(RecordingControls):
        async def pause(self) -> dict[str, Any]:
            await release.wait()
            return await self._act("pause")

    controls = SlowControls()
    server = await serve(cfg(shutdown_timeout_s=5.0), controls=controls, token=TOKEN)
    answer = asyncio.create_task(post(http, server, "/pause", f"Bearer {TOKEN}"))
    await until(lambda: bool(server._in_flight))
    with capture_logs() as logs:
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(stopping, 5.0)
    code, body, _ = await answer
    assert code == 200 and body["ok"] is True
    assert not [e for e in logs if e["event"] == "health.connections_cut"]


def test_constructor_needs_no_running_loop():
    server = HealthServer(HealthConfig(), [Check("db", ok())])  # no loop here at all
    server.heartbeat(busy=True)
    assert server.port is None


def test_check_names_are_unique_and_loop_is_reserved():
    with pytest.raises(ValueError, match="repeated"):
        HealthServer(HealthConfig(), [Check("db", ok()), Check("db", ok())])
    with pytest.raises(ValueError, match="server's own"):
        HealthServer(HealthConfig(), [Check(LOOP_CHECK, ok())])
    with pytest.raises(ValueError):
        Check("", ok())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"port": 70000}, "health.port"),
        ({"port": -1}, "health.port"),
        ({"host": ""}, "health.host"),
        ({"host": " 127.0.0.1 "}, None),  # surrounding blanks are stripped
        ({"tick_interval_s": 0}, "health.tick_interval_s"),
        ({"tick_interval_s": 5.0, "stall_after_s": 9.0}, "twice"),
        ({"stall_after_s": float("nan")}, "finite"),
        ({"busy_stall_after_s": -1.0}, "busy_stall_after_s"),
        ({"shutdown_timeout_s": 0}, "health.shutdown_timeout_s"),
        ({"write_timeout_s": -1.0}, "health.write_timeout_s"),
        ({"metrics_cache_s": -1.0}, "health.metrics_cache_s"),
        ({"shutdown_timeout_s": float("inf")}, "health.shutdown_timeout_s"),
        ({"open_reads": "yes"}, "health.open_reads"),
    ],
)
def test_config_is_validated(kw, match):
    if match is None:
        assert HealthConfig(**kw).host == "127.0.0.1"
        return
    with pytest.raises(ConfigError, match=match):
        HealthConfig(**kw)


def test_token_comes_from_the_environment_given():
    assert token_from_env({TOKEN_ENV: f"  {TOKEN}\n"}) == TOKEN
    assert token_from_env({TOKEN_ENV: "  "}) is None
    assert token_from_env({}) is None


# --------------------------------------------------------------------------------- /ready


async def test_ready_when_every_check_passes(serve, http):
    server = await serve(
        checks=[Check("database", ok("last write 2 s ago")), Check("redis", ok("ping ok"))]
    )
    code, body = await get(http, server, "/ready")
    assert code == 200
    assert body["ready"] is True and body["failing"] == []
    assert set(body["checks"]) == {LOOP_CHECK, "database", "redis"}
    assert body["checks"]["database"] == {"ok": True, "detail": "last write 2 s ago"}
    assert metrics.REGISTRY.get_sample_value("tradingd_ready") == 1
    assert metrics.REGISTRY.get_sample_value("tradingd_check_ok", {"check": "redis"}) == 1


async def test_not_ready_names_each_failing_check(serve, http):
    server = await serve(
        checks=[
            Check("database", ok()),
            Check("source:yahoo", lambda: CheckResult(False, "circuit open since 14:02:11")),
            Check(
                "last_bar",
                lambda: CheckResult(
                    False,
                    "last bar 2024-11-27 older than expected 2024-11-29",
                    {"last": "2024-11-27", "expected": "2024-11-29"},
                ),
            ),
        ]
    )
    code, body = await get(http, server, "/ready")
    assert code == 503
    assert body["ready"] is False
    assert body["failing"] == ["source:yahoo", "last_bar"]
    assert body["checks"]["source:yahoo"]["detail"] == "circuit open since 14:02:11"
    assert body["checks"]["last_bar"]["data"] == {"last": "2024-11-27", "expected": "2024-11-29"}
    assert body["checks"]["database"]["ok"] is True
    assert metrics.REGISTRY.get_sample_value("tradingd_ready") == 0
    assert metrics.REGISTRY.get_sample_value("tradingd_check_ok", {"check": "last_bar"}) == 0
    assert metrics.REGISTRY.get_sample_value("tradingd_check_ok", {"check": "database"}) == 1


async def test_a_check_that_raises_or_misbehaves_fails_without_a_500(serve, http):
    def boom() -> CheckResult:
        raise ConnectionError("redis went away")

    async def sneaky() -> CheckResult:  # checks must not await
        return CheckResult(True)

    server = await serve(
        checks=[
            Check("redis", boom),
            Check("model", lambda: True),  # not a CheckResult
            Check("broker", sneaky),  # an awaitable
        ]
    )
    code, body = await get(http, server, "/ready")
    assert code == 503
    assert body["failing"] == ["redis", "model", "broker"]
    assert body["checks"]["redis"]["detail"] == "check raised ConnectionError: redis went away"
    assert "not a CheckResult" in body["checks"]["model"]["detail"]
    assert "awaitable" in body["checks"]["broker"]["detail"]


async def test_check_transitions_are_logged_once(serve, http):
    state = {"ok": True}
    server = await serve(checks=[Check("redis", lambda: CheckResult(state["ok"], "x"))])
    with capture_logs() as logs:
        await get(http, server, "/ready")
        state["ok"] = False
        await get(http, server, "/ready")
        await get(http, server, "/ready")
        state["ok"] = True
        await get(http, server, "/ready")
    events = [e["event"] for e in logs if e["event"].startswith("health.check")]
    assert events == ["health.check_failing", "health.check_passing"]


# --------------------------------------------------------------------------------- /metrics


async def test_metrics_is_prometheus_text_with_tradingd_series(serve, http):
    metrics.BARS_PROCESSED.inc()
    metrics.STAGE_SECONDS.labels(stage="features").observe(0.004)
    server = await serve(checks=[Check("database", ok())])
    async with http.get(f"{server.url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    tradingd = {name for name in families if name.startswith("tradingd_")}
    assert {
        "tradingd_bars_processed",
        "tradingd_stage_seconds",
        "tradingd_ready",
        "tradingd_check_ok",
    } <= tradingd
    # /metrics refreshes readiness, so a scrape never shows a stale tradingd_ready
    ready = [s.value for s in families["tradingd_ready"].samples]
    assert ready == [1.0]


async def test_metrics_is_rendered_at_most_once_per_metrics_cache_s(serve, http, monkeypatch):
    """/metrics rendered the whole registry and ran every readiness check for each request:
    a local loop of scrapes (365 a second) slowed the bar loop to 30%. Within
    `metrics_cache_s` (1 s by default) of a render it answers the same text."""
    renders: list[int] = []
    real = metrics.render

    def counting() -> bytes:
        renders.append(1)
        return real()

    monkeypatch.setattr(metrics, "render", counting)
    probes: list[int] = []

    def probe() -> CheckResult:
        probes.append(1)
        return CheckResult(True, "fine")

    clock = FakeClock()
    server = await serve(checks=[Check("database", probe)], clock=clock)
    assert server.config.metrics_cache_s == 1.0

    async def scrape() -> str:
        async with http.get(f"{server.url}/metrics") as r:
            assert r.status == 200
            return await r.text()

    first = await scrape()
    for _ in range(20):
        assert await scrape() == first
    assert (len(renders), len(probes)) == (1, 1)
    clock.t += 1.0
    await scrape()
    assert (len(renders), len(probes)) == (2, 2)
    clock.t += 0.5
    await scrape()
    assert len(renders) == 2


async def test_metrics_cache_0_renders_for_each_request(serve, http, monkeypatch):
    renders: list[int] = []
    real = metrics.render
    monkeypatch.setattr(metrics, "render", lambda: renders.append(1) or real())
    server = await serve(cfg(metrics_cache_s=0), clock=FakeClock())
    for _ in range(3):
        async with http.get(f"{server.url}/metrics") as r:
            assert r.status == 200
    assert len(renders) == 3


# --------------------------------------------------------------------------------- /status


class Mode(Enum):
    PAPER = "paper"


async def test_status_holds_the_source_and_uptime(serve, http):
    last_bar = datetime(2024, 11, 29, 21, 0, tzinfo=UTC)

    def status() -> dict[str, Any]:
        return {
            "equity": np.float64(100_250.5),
            "cash": 50_000.0,
            "positions": {"AAPL": np.int64(10)},
            "open_orders": [],
            "last_bar_time": last_bar,
            "model_version": "ml_ensemble-2024.11",
            "mode": Mode.PAPER,
            "drawdown": float("nan"),
            "weights": np.array([0.25, 0.75]),
            "uptime_s": -1,  # the server's own value wins
        }

    server = await serve(status=status)
    code, body = await get(http, server, "/status")
    assert code == 200
    assert body["equity"] == 100_250.5
    assert body["positions"] == {"AAPL": 10}
    assert body["last_bar_time"] == "2024-11-29T21:00:00+00:00"
    assert body["mode"] == "paper"
    assert body["drawdown"] is None
    assert body["weights"] == [0.25, 0.75]
    assert body["uptime_s"] >= 0
    assert datetime.fromisoformat(body["started_at"]) <= datetime.now(UTC)
    assert "server_time" in body


async def test_status_without_source_and_with_a_failing_source(serve, http):
    bare = await serve()
    code, body = await get(http, bare, "/status")
    assert code == 200 and set(body) == {"uptime_s", "started_at", "server_time"}

    def broken() -> dict[str, Any]:
        raise KeyError("equity")

    failing = await serve(status=broken)
    code, body = await get(http, failing, "/status")
    assert code == 500
    assert body["error"] == "status source raised KeyError: 'equity'"


# --------------------------------------------------------------------------------- controls


@pytest.mark.parametrize("action", ["pause", "resume", "flatten", "reset-halt"])
async def test_controls_need_the_bearer_token(serve, http, action):
    controls = RecordingControls()
    server = await serve(controls=controls, token=TOKEN)
    for auth in (None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"):
        code, body, headers = await post(http, server, f"/{action}", auth)
        assert code == 401, auth
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in json.dumps(body)
    assert controls.calls == []
    code, body, _ = await post(http, server, f"/{action}", f"Bearer {TOKEN}")
    assert code == 200
    assert body == {
        "action": action,
        "ok": True,
        "result": {"action": action, "orders_cancelled": 2},
    }
    assert controls.calls == [action]


async def test_controls_are_disabled_without_a_token(serve, http):
    controls = RecordingControls()
    for token in (None, "", "   "):
        server = await serve(controls=controls, token=token)
        code, body, _ = await post(http, server, "/flatten", f"Bearer {TOKEN}")
        assert code == 403
        assert body["error"] == f"control endpoints disabled: set {TOKEN_ENV}"
    assert controls.calls == []


async def test_controls_only_by_post_and_probes_need_no_token(serve, http):
    server = await serve(controls=RecordingControls(), token=TOKEN)
    async with http.get(f"{server.url}/pause") as r:
        assert r.status == 405
    for path in ("/health", "/ready"):
        code, _ = await get(http, server, path)
        assert code == 200, path


def book() -> dict[str, Any]:
    return {
        "run_id": "paper-main",
        "equity": 123456.78,
        "positions": {"AAPL": 10},
        "open_orders": [{"symbol": "MSFT", "qty": 5}],
    }


async def test_status_and_metrics_need_the_token_once_one_is_set(serve, http):
    """Any local user read positions, open orders and equity from /status and tradingd_equity
    from /metrics of a loopback server (only the controls needed the token), while the files
    holding the same are 0640. With a token set they need it; /health and /ready do not (the
    Docker HEALTHCHECK, systemd, an orchestrator's probe)."""
    with capture_logs() as logs:
        server = await serve(status=book, controls=RecordingControls(), token=TOKEN)
        for path in ("/status", "/metrics"):
            for auth in (None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
                async with http.get(
                    f"{server.url}{path}", headers=auth and {"Authorization": auth}
                ) as r:
                    text = await r.text()
                    assert r.status == 401, (path, auth)
                    assert r.headers["WWW-Authenticate"] == 'Bearer realm="tradingd"'
                for shown in ("123456", "AAPL", "paper-main", "tradingd_equity"):
                    assert shown not in text, (path, shown)
                body = json.loads(text)
                assert body["path"] == path
                assert TOKEN_ENV in body["error"]
            async with http.head(f"{server.url}{path}") as r:
                assert r.status == 401, path
        for path in ("/health", "/ready"):
            code, _ = await get(http, server, path)
            assert code == 200, path
        code, body = await get(http, server, "/status", f"Bearer {TOKEN}")
        assert code == 200 and body["equity"] == 123456.78 and body["positions"] == {"AAPL": 10}
        code, text = await get(http, server, "/metrics", f"bearer  {TOKEN} ")
        assert code == 200 and "tradingd_equity " in text
    # The refusals are said (a scraper not given the token), once a minute, without it.
    refused = [e for e in logs if e["event"] == "health.read_unauthorized"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"
    assert refused[0]["path"] == "/status" and "credentials_file" in refused[0]["hint"]
    assert TOKEN not in repr(logs)
    listening = [e for e in logs if e["event"] == "health.listening"]
    assert listening[0]["reads"] == "token"
    assert not [e for e in logs if e["event"] == "health.reads_open"]


async def test_refused_reads_are_counted_and_said_at_stop(serve, http):
    now = [1000.0]
    server = await serve(status=book, token=TOKEN, clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(5):
            assert (await get(http, server, "/metrics"))[0] == 401
        await server.stop()
    lines = [e for e in logs if e["event"] == "health.read_unauthorized"]
    assert [(e["refused"], e["refused_since_last_line"]) for e in lines] == [(1, 1), (5, 4)]


async def test_open_reads_serves_the_book_to_anyone_and_warns(serve, http):
    """`health.open_reads = true`: a scraper that cannot send a token keeps working, and each
    start says who can read what."""
    with capture_logs() as logs:
        server = await serve(cfg(open_reads=True), status=book, token=TOKEN)
    code, body = await get(http, server, "/status")
    assert code == 200 and body["equity"] == 123456.78
    assert (await get(http, server, "/metrics"))[0] == 200
    warned = [e for e in logs if e["event"] == "health.reads_open"]
    assert warned and warned[0]["log_level"] == "warning"
    assert warned[0]["why"] == "health.open_reads = true"
    assert "health.open_reads = false" in warned[0]["hint"]
    # The controls still need the token.
    code, _, _ = await post(http, server, "/pause")
    assert code in (401, 501)


async def test_ready_without_the_token_names_failing_checks_but_not_their_details(serve, http):
    """/ready stays open for probes, but once reads need the token its check details (the
    reconciliation check names the blocked symbols of the book) are for the token's holder."""
    blocked = lambda: CheckResult(False, "blocked until adopted: ZZQX (broker 30, book 10)")  # noqa: E731
    checks = [Check("reconciliation", blocked), Check("database", ok("last write 2 s ago"))]
    server = await serve(checks=checks, token=TOKEN)
    code, body = await get(http, server, "/ready")
    assert code == 503 and body["ready"] is False and body["failing"] == ["reconciliation"]
    assert body["checks"]["reconciliation"] == {"ok": False}
    assert body["checks"]["database"] == {"ok": True}
    assert "ZZQX" not in json.dumps(body) and TOKEN_ENV in body["details"]
    code, body = await get(http, server, "/ready", f"Bearer {TOKEN}")
    assert code == 503 and "ZZQX" in body["checks"]["reconciliation"]["detail"]
    assert "details" not in body
    code, body = await get(http, server, "/ready", "Bearer not-the-token")
    assert code == 503 and "ZZQX" not in json.dumps(body)
    # Open reads (or no token at all) show the details to everyone, as /status.
    for server in (
        await serve(cfg(open_reads=True), checks=checks, token=TOKEN),
        await serve(checks=checks),
    ):
        code, body = await get(http, server, "/ready")
        assert code == 503 and "ZZQX" in body["checks"]["reconciliation"]["detail"]


async def test_without_a_token_the_book_is_open_and_the_start_warns(serve, http):
    """No token, nothing to check a read against: served as before, and each start warns
    that every local user can read it, naming the variable that closes it."""
    with capture_logs() as logs:
        server = await serve(status=book)
    assert (await get(http, server, "/status"))[0] == 200
    assert (await get(http, server, "/metrics"))[0] == 200
    warned = [e for e in logs if e["event"] == "health.reads_open"]
    assert warned and warned[0]["log_level"] == "warning"
    assert warned[0]["why"] == f"{TOKEN_ENV} unset" and TOKEN_ENV in warned[0]["hint"]
    assert warned[0]["paths"] == ["/metrics", "/status"]


async def test_a_failing_control_answers_500_masked(serve, http):
    server = await serve(controls=RecordingControls(fail=True), token=TOKEN)
    with capture_logs() as logs:
        code, body, _ = await post(http, server, "/flatten", f"Bearer {TOKEN}")
    assert code == 500
    assert body["ok"] is False and body["error"].startswith("RuntimeError: broker refused")
    assert SECRET not in json.dumps(body)
    assert SECRET not in repr(logs)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["health.control_failed"]


async def test_a_control_after_the_engine_stopped_answers_409_and_one_not_stored_503(serve, http):
    """Both answered 500, as if the server had failed: a stopped engine is the operator's
    to know (send it again once the daemon runs), and a state in effect but not stored says
    so (a restart before the store recovers loses it)."""
    from tradingd.core.errors import ControlNotStoredError, EngineStoppedError

    stopped = EngineStoppedError("the engine of run r has stopped")
    server = await serve(controls=RecordingControls(raises=stopped), token=TOKEN)
    with capture_logs() as logs:
        code, body, _ = await post(http, server, "/pause", f"Bearer {TOKEN}")
    assert code == 409
    assert body == {"action": "pause", "ok": False, "error": "the engine of run r has stopped"}
    assert not [e for e in logs if e["log_level"] == "error"]

    lost = ControlNotStoredError("paused", StorageError(f"write failed on {PG}"))
    server = await serve(controls=RecordingControls(raises=lost), token=TOKEN)
    code, body, _ = await post(http, server, "/pause", f"Bearer {TOKEN}")
    assert code == 503
    assert body["ok"] is False and body["stored"] is False and body["state"] == "paused"
    assert "is in effect" in body["error"] and SECRET not in json.dumps(body)


async def test_no_controls_configured_answers_501(serve, http):
    server = await serve(token=TOKEN)
    code, _, _ = await post(http, server, "/pause", f"Bearer {TOKEN}")
    assert code == 501


async def test_unauthorized_attempts_are_logged_without_the_token(serve, http):
    server = await serve(controls=RecordingControls(), token=TOKEN)
    with capture_logs() as logs:
        await post(http, server, "/pause", "Bearer guess")
        await post(http, server, "/pause", f"Bearer {TOKEN}")
    assert [e["event"] for e in logs].count("health.control_unauthorized") == 1
    assert TOKEN not in repr(logs) and "guess" not in repr(logs)


async def test_a_loop_of_wrong_tokens_is_a_line_a_minute_with_its_count(serve, http):
    """A local loop of wrong tokens wrote a warning per request (500 in 2.4 s)."""
    now = [1000.0]
    server = await serve(controls=RecordingControls(), token=TOKEN, clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(50):
            code, _, _ = await post(http, server, "/pause", "Bearer guess")
            assert code == 401
        now[0] += 61.0
        await post(http, server, "/resume", "Bearer guess")
        await post(http, server, "/resume", "Bearer guess")
    said = [e for e in logs if e["event"] == "health.control_unauthorized"]
    assert [(e["refused"], e["refused_since_last_line"]) for e in said] == [(1, 1), (51, 50)]
    assert [e["action"] for e in said] == ["pause", "resume"]
    assert all(e["log_level"] == "warning" for e in said)
    assert all(e["remotes"] == ["127.0.0.1"] for e in said)


async def test_refusals_after_the_last_line_are_said_by_the_ticker_and_at_stop(serve, http):
    """A burst of wrong tokens, then silence: the refusals after the first line waited for
    another refusal a minute later to be said, and were never said. They are said a minute
    after the last line (the ticker) or at stop, and counted in /metrics."""
    now = [1000.0]
    server = await serve(controls=RecordingControls(), token=TOKEN, clock=lambda: now[0])
    before = metrics.REGISTRY.get_sample_value("tradingd_control_unauthorized_total") or 0
    with capture_logs() as logs:
        for _ in range(10):
            await post(http, server, "/pause", "Bearer guess")
        server._refusals.say(now[0])  # the ticker, within the minute: nothing yet
        now[0] += 61.0
        server._refusals.say(now[0])  # the ticker, a minute on
        for _ in range(3):
            await post(http, server, "/pause", "Bearer guess")
        await server.stop()
    said = [e for e in logs if e["event"] == "health.control_unauthorized"]
    assert [(e["refused"], e["refused_since_last_line"]) for e in said] == [
        (1, 1),
        (10, 9),
        (13, 3),
    ]
    after = metrics.REGISTRY.get_sample_value("tradingd_control_unauthorized_total")
    assert after == before + 13


# --------------------------------------------------------------------------------- liveness


async def test_health_reports_the_engine_heartbeat(serve, http):
    clock = FakeClock()
    server = await serve(clock=clock)
    code, body = await get(http, server, "/health")
    assert code == 200 and body["engine"]["state"] == "not started"
    server.heartbeat(busy=True)
    clock.t += 2.5
    code, body = await get(http, server, "/health")
    assert code == 200
    assert body["engine"]["state"] == "busy"
    assert body["engine"]["last_heartbeat_age_s"] == 2.5
    assert body["engine"]["busy_for_s"] == 2.5
    server.heartbeat()
    code, body = await get(http, server, "/health")
    assert body["engine"] == {
        "state": "waiting for the next bar",
        "heartbeats": 2,
        "last_heartbeat_age_s": 0.0,
        "busy_for_s": None,
    }


async def test_a_blocked_loop_answers_503_and_recovers(serve, http):
    # A long tick interval: the ticker ran once at start and will not run again during the
    # test, exactly as if the loop had been blocked since.
    clock = FakeClock()
    server = await serve(cfg(tick_interval_s=60.0, stall_after_s=120.0), clock=clock)
    clock.t += 119.0
    code, body = await get(http, server, "/health")
    assert code == 200 and body["loop"]["last_run_age_s"] == 119.0
    clock.t += 2.0
    code, body = await get(http, server, "/health")
    assert code == 503
    assert body["alive"] is False
    assert body["problems"] == [
        "event loop stalled: it has not run for 121.0 s (limit health.stall_after_s = 120 s)"
    ]
    code, ready = await get(http, server, "/ready")
    assert code == 503 and ready["failing"] == [LOOP_CHECK]
    assert "stalled" in ready["checks"][LOOP_CHECK]["detail"]
    server.heartbeat()  # the engine ran: so did the loop
    code, body = await get(http, server, "/health")
    assert code == 200 and body["alive"] is True


async def test_waiting_days_for_the_next_bar_is_alive(serve, http):
    # The engine beat once, then waits for a daily bar; the server's own ticker keeps proving
    # the loop runs, so three days without a heartbeat are fine.
    clock = FakeClock()
    server = await serve(cfg(tick_interval_s=0.01, stall_after_s=0.05), clock=clock)
    server.heartbeat()
    clock.t += 3 * 86_400.0
    await until(lambda: server.liveness()[1]["loop"]["last_run_age_s"] == 0.0)
    code, body = await get(http, server, "/health")
    assert code == 200
    assert body["engine"]["state"] == "waiting for the next bar"
    assert body["engine"]["last_heartbeat_age_s"] == 3 * 86_400.0


async def test_a_really_blocked_loop_shows_as_lag(serve, http):
    server = await serve(cfg(tick_interval_s=0.01, stall_after_s=0.02))
    await asyncio.sleep(0.03)  # the ticker is now asleep, due to wake in 0.01 s
    time.sleep(0.15)  # a synchronous call holding the loop (a fraction of a second)
    await until(lambda: server.liveness()[1]["loop"]["max_lag_s"] >= 0.1)
    _, body = await get(http, server, "/health")
    assert body["loop"]["max_lag_s"] >= 0.1


async def test_a_dead_ticker_is_reported(serve, http):
    server = await serve()
    assert server._ticker is not None
    server._ticker.cancel()
    await until(lambda: server._ticker is not None and server._ticker.done())
    code, body = await get(http, server, "/health")
    assert code == 503
    assert "the health ticker task is not running" in body["problems"]


async def test_an_engine_stuck_on_a_bar_is_reported_when_configured(serve, http):
    clock = FakeClock()
    config = cfg(tick_interval_s=0.01, stall_after_s=0.05, busy_stall_after_s=600.0)
    server = await serve(config, clock=clock)
    server.heartbeat(busy=True)
    clock.t += 601.0
    await until(lambda: server.liveness()[1]["loop"]["last_run_age_s"] == 0.0)
    code, body = await get(http, server, "/health")
    assert code == 503
    assert body["problems"][0].startswith("engine stuck: busy on a bar for 601.0 s")
    server.heartbeat()  # finished the bar
    code, _ = await get(http, server, "/health")
    assert code == 200


async def test_a_long_wait_is_not_a_stuck_engine(serve, http):
    clock = FakeClock()
    config = cfg(tick_interval_s=0.01, stall_after_s=0.05, busy_stall_after_s=600.0)
    server = await serve(config, clock=clock)
    server.heartbeat()  # waiting, not busy
    clock.t += 86_400.0
    await until(lambda: server.liveness()[1]["loop"]["last_run_age_s"] == 0.0)
    code, _ = await get(http, server, "/health")
    assert code == 200


async def test_health_answers_while_the_engine_awaits_its_next_bar(serve, http):
    server = await serve()
    next_bar = asyncio.Event()

    async def engine() -> None:
        server.heartbeat()
        await next_bar.wait()  # a live clock waiting for the close

    task = asyncio.create_task(engine())
    try:
        code, body = await get(http, server, "/health")
        assert code == 200 and body["engine"]["state"] == "waiting for the next bar"
    finally:
        next_bar.set()
        await task


# --------------------------------------------------------------------------------- secrets


async def test_no_secret_in_any_body_or_log_line(serve, http):
    def status() -> dict[str, Any]:
        return {
            "equity": 1.0,
            "database": PG,
            "note": f"connected to {PG} after retry",
            "broker": {"url": f"https://paper-api.example/v2?apikey={SECRET}", "password": SECRET},
            "dsn": f"host=db user=u password={SECRET}",
        }

    def db() -> CheckResult:
        raise OSError(f"cannot connect to {PG}: timeout")

    checks = [
        Check("database", db),
        Check("redis", lambda: CheckResult(False, f"redis://:{SECRET}@cache:6379/0 refused")),
        Check("store", lambda: CheckResult(True, "ok", {"url": PG, "api_key": SECRET})),
    ]
    controls = RecordingControls()
    with capture_logs() as logs:
        server = await serve(checks=checks, status=status, controls=controls, token=TOKEN)
        bodies = []
        for path in ("/health", "/ready", "/status", "/metrics"):
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{server.url}{path}", headers=auth) as r:
                bodies.append(await r.text())
        _, body, _ = await post(http, server, "/pause", f"Bearer {TOKEN}")
        bodies.append(json.dumps(body))
    everything = "\n".join(bodies) + repr(logs)
    assert SECRET not in everything
    assert TOKEN not in everything
    # masked, not dropped: the operator still sees where it tried to connect
    status_body = json.loads(bodies[2])
    assert status_body["database"] == "postgresql://u:***@db.example/tradingd"
    assert status_body["note"] == "connected to postgresql://u:***@db.example/tradingd after retry"
    assert status_body["dsn"] == "host=db user=u password=***"
    ready = json.loads(bodies[1])
    assert ready["checks"]["database"]["detail"] == (
        "check raised OSError: cannot connect to postgresql://u:***@db.example/tradingd: timeout"
    )


async def test_an_environment_credential_quoted_bare_is_masked_in_every_answer(
    serve, http, monkeypatch
):
    """A key quoted with no `key=` before it (an account lookup's message, a status source
    that raised): masked in log lines by the environment's mask, and sent as written in the
    HTTP answers."""
    key = "PKSEKRITALPACAKEY1234"
    monkeypatch.setenv("APCA_API_KEY_ID", key)

    def status() -> dict[str, Any]:
        raise RuntimeError(f"account lookup failed for {key}")

    checks = [Check("broker", lambda: CheckResult(False, f"refused {key}", {"who": key}))]
    server = await serve(checks=checks, status=status)
    bodies = []
    for path in ("/ready", "/status"):
        async with http.get(f"{server.url}{path}") as r:
            bodies.append(await r.text())
    assert key not in "\n".join(bodies)
    ready = json.loads(bodies[0])
    assert ready["checks"]["broker"]["detail"] == "refused ***"
    assert ready["checks"]["broker"]["data"] == {"who": "***"}
    assert "account lookup failed for ***" in bodies[1]


def test_mask_text_keeps_ordinary_text():
    assert mask_text("last bar 2024-11-27 older than expected") == (
        "last bar 2024-11-27 older than expected"
    )
    assert mask_text("see https://example.com/docs?page=2") == (
        "see https://example.com/docs?page=2"
    )
    assert mask_text("token: abc123 and apikey=XYZ") == "token: *** and apikey=***"


async def test_status_check_reads_a_components_status(serve, http):
    src = {
        "source": "yahoo",
        "ok": False,
        "circuit": "open",
        "last_error": {"kind": "timeout", "message": "read timed out", "at": "2024-11-29T21:05"},
    }
    server = await serve(
        checks=[
            status_check("source:yahoo", lambda: src),
            status_check("source:alpaca", lambda: {"ok": True, "circuit": "closed"}),
            status_check("cache", lambda: {"hits": 3}),
        ]
    )
    code, body = await get(http, server, "/ready")
    assert code == 503
    assert body["failing"] == ["source:yahoo", "cache"]
    yahoo = body["checks"]["source:yahoo"]
    assert yahoo["detail"] == "circuit open; last error timeout: read timed out at 2024-11-29T21:05"
    assert yahoo["data"]["circuit"] == "open"
    assert body["checks"]["source:alpaca"]["detail"] == "ok"
    assert "no 'ok' key" in body["checks"]["cache"]["detail"]


async def test_an_expected_failure_is_logged_at_info_and_others_as_warnings(serve, http):
    """A daemon still starting (or stopping) is not ready, and says so at info: every start
    would otherwise log warnings. Any other failing check is a warning, as before."""
    state = {"trading": False, "redis": True}
    server = await serve(
        checks=[
            Check("trading", lambda: CheckResult(state["trading"], "t", expected=True)),
            Check("redis", lambda: CheckResult(state["redis"], "r")),
        ]
    )
    with capture_logs() as logs:
        await get(http, server, "/ready")  # starting: trading fails, expected
        state["trading"] = True
        await get(http, server, "/ready")  # ready
        state["trading"] = False
        await get(http, server, "/ready")  # stopping: expected again
        state["trading"], state["redis"] = True, False
        await get(http, server, "/ready")  # a real failure
    seen = [(e["event"], e["log_level"], e.get("check")) for e in logs]
    assert seen == [
        ("health.check_failing", "info", "trading"),
        ("health.check_passing", "info", "trading"),
        ("health.ready", "info", None),
        ("health.check_failing", "info", "trading"),
        ("health.not_ready", "info", None),
        ("health.check_passing", "info", "trading"),
        ("health.check_failing", "warning", "redis"),
    ], seen


async def test_answers_name_the_server_without_library_versions(serve, http):
    """aiohttp's default Server header ("Python/3.11 aiohttp/3.x") named the versions to
    whoever reached the port; answers, errors included, say "tradingd"."""
    server = await serve()
    for path in ("/health", "/nope"):
        async with http.get(f"{server.url}{path}") as r:
            assert r.headers["Server"] == "tradingd", path
    async with http.post(f"{server.url}/pause") as r:
        assert r.status in (401, 403) and r.headers["Server"] == "tradingd"


async def test_a_request_that_cannot_be_parsed_is_answered_json_without_versions(serve):
    """aiohttp answered a malformed request with text/plain and its own Server header
    (Python's and aiohttp's versions); it is JSON naming the status, as every answer."""
    server = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0].split()[1] == "400"
    assert headers["server"] == "tradingd"
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"error": "Bad Request", "status": 400}
