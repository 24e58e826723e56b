"""`fetch_health` (behind `tradingd health`) against a real health server, a closed port, a
server that never answers and one that is not tradingd's."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tradingd.health import Check, CheckResult, HealthConfig
from tradingd.health.client import (
    EXIT_NOT_READY,
    EXIT_READY,
    EXIT_UNREACHABLE,
    MAX_BODY_BYTES,
    fetch_health,
    url_for,
)
from tradingd.health.server import HealthServer


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def server_with() -> AsyncIterator[Any]:
    servers: list[HealthServer] = []

    async def start(**kw: Any) -> HealthServer:
        server = HealthServer(HealthConfig(port=0), **kw)
        await server.start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop()


async def test_ready_daemon_exits_0_with_all_three_answers(server_with):
    server = await server_with(
        checks=[Check("database", lambda: CheckResult(True, "ok"))],
        status=lambda: {"equity": 100.0, "database": "postgresql://u:s3cret@h/db"},
    )
    code, report = await fetch_health(server.url, 2.0)
    assert code == EXIT_READY
    assert report["alive"] is True and report["ready"] is True
    assert report["health"]["alive"] is True
    assert report["readiness"]["checks"]["database"]["ok"] is True
    assert report["status"]["equity"] == 100.0
    assert "error" not in report
    assert "s3cret" not in json.dumps(report)


async def test_not_ready_daemon_exits_1_naming_the_failing_check(server_with):
    server = await server_with(
        checks=[Check("redis", lambda: CheckResult(False, "last ping failed 40 s ago"))]
    )
    code, report = await fetch_health(server.url + "/", 2.0)
    assert code == EXIT_NOT_READY
    assert report["alive"] is True and report["ready"] is False
    assert report["readiness"]["failing"] == ["redis"]
    assert report["error"] == "not ready: check 'redis' failing"


async def test_closed_port_exits_2_saying_nothing_listens():
    url = f"http://127.0.0.1:{closed_port()}"
    code, report = await fetch_health(url, 2.0)
    assert code == EXIT_UNREACHABLE
    assert report["url"] == url
    assert report["error"].startswith(f"nothing listens at {url} (connection refused)")
    assert "is the daemon running" in report["error"]


async def test_a_server_that_never_answers_exits_2_after_the_timeout():
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # accept, read the request, never answer
        await release.wait()
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        code, report = await fetch_health(f"http://127.0.0.1:{port}", 0.2)
    finally:
        release.set()
        srv.close()
        await srv.wait_closed()
    assert code == EXIT_UNREACHABLE
    assert "no answer" in report["error"] and "0.2 s" in report["error"]


async def test_something_else_on_the_port_exits_2():
    async def plain_ok(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/health", plain_ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        code, report = await fetch_health(f"http://127.0.0.1:{port}", 2.0)
    finally:
        await runner.cleanup()
    assert code == EXIT_UNREACHABLE
    assert "not a tradingd health server" in report["error"]


@pytest.fixture
async def impostor() -> AsyncIterator[Any]:
    """Start an aiohttp server answering every GET with `handler`; its URL is returned."""
    runners: list[web.AppRunner] = []

    async def start(handler: Any) -> str:
        app = web.Application()
        app.router.add_get("/{path:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"failing": 12345}, "/ready's 'failing'"),
        ({"failing": "abc"}, "/ready's 'failing'"),
        ({"failing": [1, 2]}, "/ready's 'failing'"),
        ({"problems": 5}, "/health's 'problems'"),
    ],
)
async def test_a_503_with_a_body_of_another_shape_exits_2_naming_it(impostor, body, named):
    """`{"failing": 12345}` in /ready crashed `tradingd health` with a traceback (exit 1, as
    if not ready); `"abc"` listed each letter as a failing check."""

    async def odd(request: web.Request) -> web.Response:
        return web.json_response(body, status=503)

    code, report = await fetch_health(await impostor(odd), 2.0)
    assert code == EXIT_UNREACHABLE
    assert "is not a tradingd health server" in report["error"]
    assert named in report["error"] and "not a list of names" in report["error"]


async def test_an_endless_answer_is_cut_at_the_size_limit(impostor):
    """The body was read whole, without a limit: a server sending without end had the
    client read 1.2 GB in 3 s. More than `MAX_BODY_BYTES` is not a tradingd answer."""
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"a": "')
        while True:
            await resp.write(b"x" * 65536)
            sent[0] += 65536

    code, report = await fetch_health(await impostor(endless), 30.0)
    assert code == EXIT_UNREACHABLE
    assert report["error"].endswith(
        f"is not a tradingd health server: GET /health answered more than {MAX_BODY_BYTES:,} bytes"
    )
    assert sent[0] < 20 * MAX_BODY_BYTES


async def test_a_redirect_is_named_not_taken_for_nothing_listening(impostor):
    """A redirect was followed, and one to a closed port said "nothing listens at <url>",
    the URL given, where something did answer. A tradingd server never redirects."""
    elsewhere = f"http://127.0.0.1:{closed_port()}/health"

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(elsewhere)

    url = await impostor(redirect)
    code, report = await fetch_health(url, 2.0)
    assert code == EXIT_UNREACHABLE
    assert report["error"].startswith(
        f"{url} is not a tradingd health server: GET /health answered 302, a redirect to "
        f"{elsewhere}"
    )
    assert "nothing listens" not in report["error"]


async def test_an_answer_that_drips_is_named_not_taken_for_no_answer(impostor):
    """A server that sent its headers and then a byte now and then was reported as one that
    "does not answer"."""

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"alive": ')
        while True:
            await asyncio.sleep(0.05)
            await resp.write(b" ")

    url = await impostor(drip)
    code, report = await fetch_health(url, 0.5)
    assert code == EXIT_UNREACHABLE
    assert report["error"].startswith(
        f"{url} answered GET /health (200) but did not send the whole answer within 0.5 s"
    )
    assert "no answer" not in report["error"]


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1/", ""])
async def test_a_bad_url_exits_2(url):
    code, report = await fetch_health(url, 1.0)
    assert code == EXIT_UNREACHABLE
    assert "not an http:// URL" in report["error"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:abc"])
async def test_a_url_with_a_bad_port_exits_2_instead_of_raising(url):
    code, report = await fetch_health(url, 1.0)
    assert code == EXIT_UNREACHABLE
    assert "no valid port" in report["error"]


async def test_port_0_says_where_the_port_chosen_by_the_system_is_named():
    """`tradingd health` with health.port = 0 said "nothing listens at ...:0" and no more."""
    code, report = await fetch_health(url_for(HealthConfig(port=0)), 1.0)
    assert code == EXIT_UNREACHABLE
    assert "health.listening" in report["error"] and "--url" in report["error"]


def test_url_for_a_configuration():
    assert url_for(HealthConfig()) == "http://127.0.0.1:8080"
    assert url_for(HealthConfig(host="0.0.0.0", port=9100)) == "http://127.0.0.1:9100"
    assert url_for(HealthConfig(host="::", port=9100)) == "http://[::1]:9100"
    assert url_for(HealthConfig(host="::1", port=1)) == "http://[::1]:1"
    # Numeric forms the server binds but aiohttp's client refuses in a URL: canonical.
    assert url_for(HealthConfig(host="127.1", port=9100)) == "http://127.0.0.1:9100"
    assert url_for(HealthConfig(host="0", port=9100)) == "http://127.0.0.1:9100"
    assert url_for(HealthConfig(host="tradingd", port=9100)) == "http://tradingd:9100"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_health_refuses_a_timeout_that_is_not_finite_and_positive(value, capsys, monkeypatch):
    """0, -1 and nan waited forever on a stalled daemon (aiohttp's "no timeout"); inf was an
    OverflowError traceback with exit 1, the code of a daemon that answers but is not ready."""
    import structlog

    from tradingd.__main__ import main

    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    saved = structlog.get_config()
    url = f"http://127.0.0.1:{closed_port()}"
    try:
        code = main(["health", "--url", url, "--timeout", value])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "tradingd: error: --timeout must be a finite number of seconds > 0" in err


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
async def test_fetch_health_refuses_a_timeout_that_would_never_end(value):
    with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds > 0"):
        await fetch_health("http://127.0.0.1:1", value)


TOKEN = "a-long-test-token-0123456789"


async def test_the_token_reads_status_of_a_daemon_that_needs_it(server_with):
    """A daemon with a token answers /status only with it: `tradingd health` sends it (and
    says what to do without it), while alive and ready need none."""
    server = await server_with(status=lambda: {"equity": 100.0}, token=TOKEN)
    code, report = await fetch_health(server.url, 2.0, TOKEN)
    assert code == EXIT_READY and report["status"]["equity"] == 100.0
    assert "status_error" not in report
    code, report = await fetch_health(server.url, 2.0)
    assert code == EXIT_READY and report["alive"] is True and report["ready"] is True
    assert "equity" not in report["status"]
    assert report["status_error"] == (
        "/status answered 401: it needs the daemon's token; set TRADINGD_HEALTH_TOKEN to it"
    )
    code, report = await fetch_health(server.url, 2.0, "another-token")
    assert code == EXIT_READY and report["status_error"].endswith(
        "(the one set is not the daemon's)"
    )
    assert "another-token" not in json.dumps(report)


async def test_the_token_goes_with_status_and_ready_only(impostor):
    """/ready withholds its check details from a caller without the token (they name the
    book's blocked symbols): `tradingd health` sends it there too; /health needs none."""
    seen: dict[str, str | None] = {}

    async def answer(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get("Authorization")
        return web.json_response({})

    code, _ = await fetch_health(await impostor(answer), 2.0, TOKEN)
    assert code == EXIT_READY
    assert seen == {"/health": None, "/ready": f"Bearer {TOKEN}", "/status": f"Bearer {TOKEN}"}


async def test_the_token_shows_the_failing_checks_details(server_with):
    blocked = Check("reconciliation", lambda: CheckResult(False, "blocked: ZZQX"))
    server = await server_with(checks=[blocked], token=TOKEN)
    code, report = await fetch_health(server.url, 2.0, TOKEN)
    assert code == EXIT_NOT_READY
    assert report["readiness"]["checks"]["reconciliation"]["detail"] == "blocked: ZZQX"
    assert "readiness_error" not in report
    code, report = await fetch_health(server.url, 2.0)
    assert code == EXIT_NOT_READY and "check 'reconciliation' failing" in report["error"]
    assert "ZZQX" not in json.dumps(report)
    assert "readiness_error" not in report  # no token given: status_error says to set one
    code, report = await fetch_health(server.url, 2.0, "another-token")
    assert code == EXIT_NOT_READY and "ZZQX" not in json.dumps(report)
    assert report["readiness_error"] == (
        "/ready withheld its checks' details: the TRADINGD_HEALTH_TOKEN set is not the daemon's"
    )
    assert "another-token" not in json.dumps(report)


async def test_tradingd_health_sends_the_token_of_its_environment(impostor):
    """`tradingd health` read /status without the token, which a daemon with one refuses."""
    import os
    import sys

    seen: dict[str, str | None] = {}

    async def answer(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get("Authorization")
        if request.path == "/status" and seen[request.path] != f"Bearer {TOKEN}":
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return web.json_response({"equity": 100.0} if request.path == "/status" else {})

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["TRADINGD_HEALTH_TOKEN"] = TOKEN
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tradingd", "health", "--url", await impostor(answer)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["status"] == {"equity": 100.0} and "status_error" not in report
    assert seen == {"/health": None, "/ready": f"Bearer {TOKEN}", "/status": f"Bearer {TOKEN}"}
    assert TOKEN not in out.decode() + err.decode()
