"""The health server: an aiohttp application inside the daemon's own event loop.

    GET  /health   the process and its event loop are alive (200, or 503 when stalled)
    GET  /ready    every readiness check passes (200), or 503 naming each failing check
    GET  /metrics  tradingd's Prometheus registry in the text format
    GET  /status   equity, cash, positions, open orders, last bar, model version, uptime
    POST /pause, /resume, /flatten, /reset-halt, /adopt (a JSON body: which symbols)
                   need `Authorization: Bearer <TRADINGD_HEALTH_TOKEN>`

Once a token is set, /status and /metrics need it too (unless `health.open_reads`): they show
the book, and a loopback port is open to every local user. /health and /ready stay open for
probes (Docker's HEALTHCHECK, systemd, an orchestrator); /ready without the token then names
the failing checks but not their details (which name symbols of the book).

Health is a view, not a place of work: every answer is built from state the daemon already
keeps (checks, a status source, metrics updated where the work happens). Nothing here calls a
vendor, the broker or the database.

Liveness. A daily-bar engine waits days for its next bar, so "the engine did something
recently" cannot mean "alive". The server runs its own periodic task (every
`tick_interval_s`); it and every engine `heartbeat()` record "the loop ran now". When neither
ran for `stall_after_s`, the loop was blocked (a synchronous call that never returned, a
CPU-bound step): `/health` answers 503 as soon as it can answer at all, and a probe that gets
no answer within its own timeout sees a loop that is still blocked. Separately, an engine that
announced work on a bar (`heartbeat(busy=True)`) and stayed silent for `busy_stall_after_s` is
reported stuck while the loop itself runs.

Every JSON body (and every logged check detail or control result) is masked with
`tradingd.secrets.redact`, plus a pass over free text for URLs and `password=...` pairs
embedded in messages, so a check detail quoting a database URL never shows its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import json
import logging
import math
import os
import re
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from http import HTTPStatus
from pathlib import PurePath
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST

from .. import metrics
from ..core.endpoints import canonical_address
from ..core.errors import (
    ControlInvalidError,
    ControlNotStoredError,
    ControlRefusedError,
    TradingdError,
)
from ..secrets import env_secrets, mask_text, mask_values, redact
from . import (
    TOKEN_ENV,
    Check,
    CheckResult,
    Controls,
    HealthConfig,
    StatusSource,
    is_loopback,
    local_url,
)

log = structlog.get_logger("tradingd.health")

# The readiness check the server adds itself: the event loop is not stalled.
LOOP_CHECK = "loop"
CONTROL_ACTIONS = ("pause", "resume", "flatten", "reset-halt", "adopt")
# The controls that read a JSON body (the others ignore any).
_BODY_ACTIONS = frozenset({"adopt"})
# Shorter tokens are accepted (the operator chose them) but logged as a warning.
_MIN_TOKEN_LEN = 16
# Deeper structures are cut (a status source returning a cyclic structure must not crash).
_MAX_DEPTH = 32


class _Refused(asyncio.Protocol):
    """A connection over `health.max_connections`: closed as soon as it is accepted, so it
    holds no file descriptor."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:  # pragma: no cover - a TCP server's transports are Transports
            transport.close()


# The read-only endpoints, each answered by `HealthServer._get_<name>`.
_GET_PATHS = ("/health", "/ready", "/metrics", "/status")
# Those showing positions, orders, equity and P&L: they need the token once one is set
# (`HealthConfig.open_reads`).
_BOOK_PATHS = ("/metrics", "/status")
# At most one `health.control_unauthorized` or `health.bad_requests` line in this many
# seconds (the rest counted: `_LineAMinute`).
_COUNTED_LINE_S = 60.0


def _said_at(count: int) -> bool:
    """Whether the `count`-th of a repeated event is logged: the 1st, 10th, 100th, 1000th and
    every 10,000th (a flood is a few lines, each with its count)."""
    return count in (1, 10, 100, 1000) or count % 10_000 == 0


class _Capped:
    """aiohttp's protocol factory, serving at most `limit` connections at once (its handlers
    register themselves in `server.connections`); one over the limit gets `_Refused`."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server, self.limit, self.refused = server, limit, 0

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.limit:
            self.refused += 1
            if _said_at(self.refused):
                log.warning("health.connections_refused", limit=self.limit, so_far=self.refused)
            return _Refused()
        server = self.server
        try:  # aiohttp's Server.__call__, with the handler below
            return _JsonErrors(server, loop=server._loop, **server._kwargs)
        except (AttributeError, TypeError):  # another aiohttp: its own handler and answers
            return server()


class _JsonErrors(RequestHandler):
    """aiohttp's connection handler, whose answer to a request it cannot parse (400) or a
    handler that fails before the app runs is JSON naming the status, like every other
    answer, with the `Server` header `_server_named` gives: it was aiohttp's text/plain with
    "Python/3.11 aiohttp/3.x" as the server."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's logs (counted by _RequestErrorLog) and raises when an answer was
        # already sent; its text answer is replaced.
        super().handle_error(request, status, exc, message)
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = f"HTTP {status}"
        answer = _json({"error": reason, "status": status}, status)
        answer.headers["Server"] = "tradingd"
        answer.force_close()
        return answer


# An Authorization header's value as a parse error quotes it (up to the quote or line end):
# whatever its scheme, it is a credential.
_AUTHORIZATION_VALUE = re.compile(r"(?i)(authorization\s*:)[^'\"\r\n]*")


class _LineAMinute:
    """Events a local client can repeat at will (a wrong token, a request aiohttp cannot
    parse), counted and said as one warning: at once after a quiet spell, else at most every
    `_COUNTED_LINE_S` (from an event or the ticker), and at stop, with the total, those since
    the last line, the last one's `what` and some remotes. One line per event was a warning
    per wrong token (200 a second) and an ERROR traceback per bad request (8,000 lines in
    2.5 s); events after the last line waited for another before, and a burst followed by
    silence was never said. `total`, `since` and `last` name the fields of `event`."""

    def __init__(
        self,
        event: str,
        clock: Callable[[], float],
        *,
        total: str,
        since: str,
        last: str,
        hint: str | None = None,
    ) -> None:
        self._event, self._clock = event, clock
        self._total, self._since, self._last = total, since, last
        self._hint = {"hint": hint} if hint else {}
        self.count = 0
        self._said = 0
        self._line_at: float | None = None
        self._what = ""
        self._remotes: set[str] = set()  # since the last line, at most 10

    def add(self, what: str, remote: str | None) -> None:
        self.count += 1
        self._what = what
        if len(self._remotes) < 10:
            self._remotes.add(remote or "unknown")
        self.say(self._clock())

    def say(self, now: float, *, at_stop: bool = False) -> None:
        pending = self.count - self._said
        last = self._line_at
        if not pending or (not at_stop and last is not None and now - last < _COUNTED_LINE_S):
            return
        log.warning(
            self._event,
            **{self._last: self._what},
            remotes=sorted(self._remotes),
            **{self._total: self.count, self._since: pending},
            next_line_after_s=_COUNTED_LINE_S,
            **self._hint,
        )
        self._said, self._line_at, self._remotes = self.count, now, set()


def _bad_request_text(error: BaseException, secrets: tuple[str, ...]) -> str:
    """A request aiohttp could not parse, on one line (aiohttp's is multi-line), for
    `health.bad_requests`: the error quotes the raw header line, so any Authorization value
    and the server's own token (`secrets`) are masked, as well as what `mask_text` knows
    (`Bearer`/`Basic` credentials only: `Authorization: Token <t>` went out as written)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    text = _AUTHORIZATION_VALUE.sub(r"\1 ***", mask_values(text, secrets))
    return mask_text(text)[:300]


class _RequestErrorLog(logging.LoggerAdapter):
    """The logger aiohttp's request handlers use (`aiohttp.server`), with each request it
    could not parse (`HttpProcessingError`) counted in `bad` (`health.bad_requests`) instead
    of logged. Other records (a handler's unexpected error) pass unchanged."""

    def __init__(self, bad: _LineAMinute, secrets: tuple[str, ...]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._bad, self._secrets = bad, secrets

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        info = kwargs.get("exc_info")
        error = info if isinstance(info, BaseException) else None
        if error is None and isinstance(info, tuple) and len(info) == 3:
            error = info[1]
        # aiohttp says non-HTTP traffic (a first line that is no HTTP method) at debug: kept.
        if isinstance(error, HttpProcessingError) and level >= logging.WARNING:
            remote = args[0] if args and isinstance(args[0], str) else None
            self._bad.add(_bad_request_text(error, self._secrets), remote)
            return
        super().log(level, msg, *args, **kwargs)


async def _server_named(request: web.Request, response: web.StreamResponse) -> None:
    """Name the server "tradingd", not aiohttp's and Python's versions (aiohttp's default
    `Server` header): a version tells whoever can reach the port which known flaws to try."""
    response.headers["Server"] = "tradingd"


class HealthServerError(TradingdError):
    """The health server could not listen: choose another `health.port` / `health.host`, or
    stop the process that holds it (another tradingd?)."""


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """JSON-ready plain data from what a status source or check may hold: datetimes as ISO
    text, numpy scalars and arrays as numbers and lists, enums by value, dataclasses as
    dicts, non-finite floats as null, anything else as its text."""
    if _depth > _MAX_DEPTH:
        return "..."
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_plain(v, _depth + 1) for v in obj]
    if isinstance(obj, datetime | date | dtime):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value, _depth + 1)
    if isinstance(obj, Decimal):
        return to_plain(float(obj), _depth + 1)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return to_plain(fields, _depth + 1)
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, pandas objects
    if callable(tolist):
        try:
            return to_plain(tolist(), _depth + 1)
        except Exception:
            pass
    return str(obj)


def _mask_strings(obj: Any, env: tuple[str, ...]) -> Any:
    if isinstance(obj, str):
        return mask_values(mask_text(obj), env)
    if isinstance(obj, dict):
        return {k: _mask_strings(v, env) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask_strings(v, env) for v in obj]
    return obj


def public(obj: Any) -> Any:
    """What may leave the process: plain data, secrets masked (whole URLs and secret-named
    keys by `secrets.redact`, URLs and secret pairs inside longer text by `mask_text`, and
    the environment's credentials wherever they occur, as in log lines: `env_secrets`)."""
    return _mask_strings(redact(to_plain(obj)), env_secrets(os.environ))


def _withheld(body: dict[str, Any]) -> dict[str, Any]:
    """A `/ready` body for a caller without the token once reads need it: whether each check
    passes, not its detail. The details name what the book holds (the reconciliation check
    lists the blocked symbols, the broker's the untradable ones) and /ready stays open for
    probes, which read the status code alone."""
    checks = {name: {"ok": entry["ok"]} for name, entry in body["checks"].items()}
    return {
        **body,
        "checks": checks,
        "details": f"withheld: send Authorization: Bearer <{TOKEN_ENV}> for each check's "
        "detail (health.open_reads = true shows them to everyone)",
    }


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    text = json.dumps(public(body), sort_keys=True, allow_nan=False)
    return web.Response(
        text=text,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class HealthServer:
    """The health server. `start()` binds it in the running loop; `stop()` closes it.

    `checks` are the readiness checks (names unique; "loop" is the server's own); `status`
    builds the `/status` mapping; `controls` act on `POST /pause|/resume|/flatten`; `token` is
    the bearer token those need (from `TRADINGD_HEALTH_TOKEN`, read by the caller: see
    `tradingd.health.token_from_env`), and `/status` and `/metrics` too unless
    `config.open_reads`; None or blank disables the control endpoints (403).
    `clock` (monotonic seconds) is injectable so tests can age heartbeats deterministically.

    The engine calls `heartbeat(busy=True)` when it starts a bar and `heartbeat()` when it
    finished one and waits for the next. Nothing here touches the event loop before `start()`.
    """

    def __init__(
        self,
        config: HealthConfig,
        checks: Iterable[Check] = (),
        status: StatusSource | None = None,
        controls: Controls | None = None,
        token: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._checks: tuple[Check, ...] = ()
        self._status: StatusSource | None = None
        self._controls: Controls | None = None
        token = (token or "").strip()
        self._token: bytes | None = token.encode("utf-8") if token else None
        self._clock = clock
        self._created_wall = time.time()
        self._started_at: float | None = None  # process start, wall seconds
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._factory: _Capped | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._port: int | None = None
        # Requests being answered (handler run and answer written), so that a stop can wait
        # for them a bounded time and then close the connections of the ones left.
        self._unwritten = 0  # answers given up after `write_timeout_s`
        self._in_flight: dict[int, web.BaseRequest] = {}  # by id(): requests are unhashable
        self._no_answer_in_flight: asyncio.Event | None = None  # made in `start()`
        # Liveness: when the loop last ran (ticker or engine heartbeat), in `clock` seconds.
        self._last_tick: float | None = None
        self._lag = 0.0
        self._max_lag = 0.0
        self._beats = 0
        self._last_beat: float | None = None
        self._busy_since: float | None = None
        self._check_ok: dict[str, bool] = {}
        self._ready: bool | None = None
        self._control_lock = asyncio.Lock()  # binds to a loop only when first contended
        # Refused control requests (a wrong or missing token) and requests aiohttp cannot
        # parse: a line a minute each, with the count.
        self._refusals = _LineAMinute(
            "health.control_unauthorized",
            clock,
            total="refused",
            since="refused_since_last_line",
            last="action",
        )
        # Reads of /status or /metrics without the token (a scraper not yet given it).
        self._read_refusals = _LineAMinute(
            "health.read_unauthorized",
            clock,
            total="refused",
            since="refused_since_last_line",
            last="path",
            hint=f"/status and /metrics need Authorization: Bearer <{TOKEN_ENV}> (Prometheus: "
            "authorization: credentials_file: naming a file that holds the token; tradingd "
            f"health: {TOKEN_ENV} in its environment), or set health.open_reads = true to "
            "serve them to every local user",
        )
        self._bad_requests = _LineAMinute(
            "health.bad_requests",
            clock,
            total="bad_requests",
            since="since_last_line",
            last="last_error",
        )
        # The server's own token: aiohttp's parse errors quote the raw header line.
        self._token_text: tuple[str, ...] = (token,) if token else ()
        self._metrics_text: tuple[float, bytes] | None = None  # (rendered at, in `clock` s)
        self.replace_inputs(checks, status, controls)

    def replace_inputs(
        self,
        checks: Iterable[Check] = (),
        status: StatusSource | None = None,
        controls: Controls | None = None,
    ) -> None:
        """What the server reads from now on. The daemon listens while it starts, with a
        start-up check, status and controls, and hands over the engine's once it is built.
        Liveness, uptime and the listener carry on."""
        checks = tuple(checks)
        names = [c.name for c in checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"readiness check names must be unique; repeated: {dupes}")
        if LOOP_CHECK in names:
            raise ValueError(f"readiness check name {LOOP_CHECK!r} is the server's own")
        self._checks, self._status, self._controls = checks, status, controls
        if self._runner is not None:
            log.info("health.checks", checks=names)

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int | None:
        """The bound port after `start()` (the free port picked when configured as 0)."""
        return self._port

    @property
    def url(self) -> str | None:
        """Where a client on this machine reaches the server after `start()`."""
        return None if self._port is None else local_url(self.config.host, self._port)

    async def start(self) -> None:
        """Listen on `config.host:config.port` in the running loop and start the ticker.
        Does nothing when `config.enabled` is false."""
        if not self.config.enabled:
            log.info("health.disabled")
            return
        if self._runner is not None:
            raise RuntimeError("HealthServer.start() called twice")
        self._started_at = self._process_start()
        self._tick()
        self._no_answer_in_flight = asyncio.Event()
        self._no_answer_in_flight.set()
        # aiohttp closes a connection that has not sent a whole request within its keep-alive
        # timeout (an hour by default): a client sending headers slowly held it that long.
        # Its shutdown timeout (60 s by default, waited twice) is a backstop only: `stop()`
        # closes the connections of answers still unwritten after `shutdown_timeout_s`.
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.config.idle_timeout_s,
            shutdown_timeout=self.config.shutdown_timeout_s,
            logger=_RequestErrorLog(self._bad_requests, self._token_text),
        )
        await runner.setup()
        assert runner.server is not None
        self._factory = _Capped(runner.server, self.config.max_connections)
        try:
            listener = await self._listen(self._factory)
        except OSError as exc:
            await runner.cleanup()
            raise HealthServerError(
                f"health server cannot listen on {self.config.host}:{self.config.port}: "
                f"{exc.strerror or exc}; set health.port (or health.host), or stop the "
                "process holding that port (another tradingd?)"
            ) from None
        self._runner, self._listener = runner, listener
        sockets = listener.sockets
        self._port = int(sockets[0].getsockname()[1]) if sockets else self.config.port
        self._ticker = asyncio.create_task(self._tick_forever(), name="tradingd-health-ticker")
        log.info(
            "health.listening",
            url=self.url,
            controls="enabled" if self._token else f"disabled ({TOKEN_ENV} unset)",
            reads="open" if self._reads_open else "token",
            checks=[c.name for c in self._checks],
        )
        if not is_loopback(self.config.host):
            log.warning(
                "health.non_loopback",
                host=self.config.host,
                port=self._port,
                hint="the health server is reachable beyond this machine: /health and /ready "
                "need no token"
                + (", nor do /status and /metrics" if self._reads_open else "")
                + "; firewall it or set health.host = 127.0.0.1 (in a "
                "container, keep 0.0.0.0 and publish the port on the host's loopback: "
                "-p 127.0.0.1:8080:8080)",
                host_names=list(self.config.allowed_hosts)
                or "any (a web page that reaches this port can read it by DNS rebinding: "
                "list the names clients use in health.allowed_hosts, as config/docker.toml "
                "does)",
            )
        if canonical_address(self.config.host) == "::" and not socket.has_dualstack_ipv6():
            log.warning(
                "health.ipv6_only",
                host=self.config.host,
                hint="this system cannot serve IPv4 on an IPv6 socket: clients of 127.0.0.1 "
                "are not served; set health.host = 0.0.0.0 for IPv4",
            )
        if self._reads_open:
            log.warning(
                "health.reads_open",
                url=self.url,
                paths=list(_BOOK_PATHS),
                why=f"{TOKEN_ENV} unset" if self._token is None else "health.open_reads = true",
                hint="every local user (and whatever reaches the port) can read positions, "
                "open orders, equity and P&L there; set "
                + (
                    f"{TOKEN_ENV} so they need it as a bearer token"
                    if self._token is None
                    else "health.open_reads = false so they need the token"
                ),
            )
        if self._token is not None and len(self._token) < _MIN_TOKEN_LEN:
            log.warning(
                "health.short_token",
                length=len(self._token),
                hint=f"use at least {_MIN_TOKEN_LEN} random characters for {TOKEN_ENV}",
            )

    async def _listen(self, factory: _Capped) -> asyncio.Server:
        """Listen on `config.host:config.port`. "::" (every IPv6 address) is dual-stack:
        one socket that takes IPv4 connections too, as "::" means to most servers; asyncio
        binds it IPv6-only, so a daemon configured so never answered on 127.0.0.1. A system
        without dual-stack sockets listens on IPv6 only, as before (warned at start)."""
        loop = asyncio.get_running_loop()
        if canonical_address(self.config.host) == "::" and socket.has_dualstack_ipv6():
            sock = socket.create_server(
                ("::", self.config.port), family=socket.AF_INET6, dualstack_ipv6=True
            )
            try:
                return await loop.create_server(factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        return await loop.create_server(
            factory, self.config.host, self.config.port, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop the ticker and close the listener; safe to call twice or before `start()`.
        Answers still being written get `shutdown_timeout_s`, then their connections are
        closed: a client that never read its answer held the stop for two minutes."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        self._refusals.say(self._clock(), at_stop=True)
        self._read_refusals.say(self._clock(), at_stop=True)
        self._bad_requests.say(self._clock(), at_stop=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # no new connections; runner.cleanup() ends the open ones
        runner, self._runner = self._runner, None
        if runner is not None:
            await self._cut_unfinished_answers()
            await runner.cleanup()
            log.info("health.stopped")
        self._port = None

    async def _cut_unfinished_answers(self) -> None:
        """Wait up to `shutdown_timeout_s` for the answers being written, then close the
        connections of those left (logged): the stop is bounded whatever the clients do."""
        idle = self._no_answer_in_flight
        if idle is None or idle.is_set():
            return
        limit = self.config.shutdown_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(idle.wait(), limit)
        left = list(self._in_flight.values())
        if not left:
            return
        for request in left:
            transport = request.transport
            if transport is not None:
                transport.abort()
        log.warning(
            "health.connections_cut",
            connections=len(left),
            remotes=sorted({r.remote or "unknown" for r in left})[:10],
            paths=sorted({r.path for r in left}),
            waited_s=limit,
            hint="their answers were not written within health.shutdown_timeout_s (clients "
            "that do not read them?)",
        )

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------------------- liveness
    def heartbeat(self, *, busy: bool = False) -> None:
        """The engine is alive: `busy=True` when it starts work on a bar (and, if it likes,
        during long work on it, e.g. per batch downloaded), `busy=False` (the default) when it
        finished the bar and waits for the next. Cheap, synchronous; call it freely."""
        now = self._clock()
        self._beats += 1
        self._last_beat = now
        self._last_tick = now
        if busy:
            if self._busy_since is None:
                self._busy_since = now
        else:
            self._busy_since = None

    def _tick(self) -> None:
        self._last_tick = self._clock()

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_interval_s
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            # How late the loop woke this task: a measure of how long other work held it.
            self._lag = max(0.0, loop.time() - due)
            self._max_lag = max(self._max_lag, self._lag)
            self._tick()
            self._refusals.say(self._clock())
            self._read_refusals.say(self._clock())
            self._bad_requests.say(self._clock())

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(alive, the `/health` body)."""
        now = self._clock()
        problems: list[str] = []
        tick_age = None if self._last_tick is None else max(0.0, now - self._last_tick)
        if tick_age is not None and tick_age > self.config.stall_after_s:
            problems.append(
                f"event loop stalled: it has not run for {tick_age:.1f} s "
                f"(limit health.stall_after_s = {self.config.stall_after_s:g} s)"
            )
        if self._runner is not None and (self._ticker is None or self._ticker.done()):
            problems.append("the health ticker task is not running")
        beat_age = None if self._last_beat is None else max(0.0, now - self._last_beat)
        busy_for = None if self._busy_since is None else max(0.0, now - self._busy_since)
        limit = self.config.busy_stall_after_s
        if limit > 0 and busy_for is not None and beat_age is not None and beat_age > limit:
            problems.append(
                f"engine stuck: busy on a bar for {busy_for:.1f} s without a heartbeat for "
                f"{beat_age:.1f} s (limit health.busy_stall_after_s = {limit:g} s)"
            )
        if self._last_beat is None:
            state = "not started"
        elif self._busy_since is not None:
            state = "busy"
        else:
            state = "waiting for the next bar"
        body = {
            "alive": not problems,
            "problems": problems,
            "loop": {
                "last_run_age_s": _round(tick_age),
                "stall_after_s": self.config.stall_after_s,
                "tick_interval_s": self.config.tick_interval_s,
                "lag_s": _round(self._lag),
                "max_lag_s": _round(self._max_lag),
            },
            "engine": {
                "state": state,
                "heartbeats": self._beats,
                "last_heartbeat_age_s": _round(beat_age),
                "busy_for_s": _round(busy_for),
            },
            "uptime_s": _round(self._uptime()),
        }
        return not problems, body

    # ----------------------------------------------------------------------------- readiness
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Run every check (each guarded), update `tradingd_ready` and `tradingd_check_ok`,
        return (ready, the `/ready` body)."""
        alive, live = self.liveness()
        loop_result = CheckResult(
            alive, "event loop running" if alive else "; ".join(live["problems"])
        )
        results: dict[str, CheckResult] = {LOOP_CHECK: loop_result}
        for check in self._checks:
            results[check.name] = self._run(check)
        for name, res in results.items():
            metrics.CHECK_OK.labels(check=name).set(1 if res.ok else 0)
            self._log_transition(name, res)
        failing = [name for name, res in results.items() if not res.ok]
        ready = not failing
        metrics.READY.set(1 if ready else 0)
        if ready != self._ready:
            if ready:
                log.info("health.ready")
            elif self._ready is not None:
                usual = all(results[name].expected for name in failing)  # e.g. stopping
                (log.info if usual else log.warning)("health.not_ready", failing=failing)
            self._ready = ready
        checks: dict[str, Any] = {}
        for name, res in results.items():
            entry: dict[str, Any] = {"ok": res.ok, "detail": res.detail}
            if res.data is not None:
                entry["data"] = res.data
            checks[name] = entry
        return ready, {"ready": ready, "failing": failing, "checks": checks}

    @staticmethod
    def _run(check: Check) -> CheckResult:
        try:
            res = check.probe()
        except Exception as exc:
            return CheckResult(False, f"check raised {type(exc).__name__}: {exc}")
        if isinstance(res, Awaitable):
            close = getattr(res, "close", None)
            if callable(close):
                close()  # a coroutine never awaited must not warn later
            return CheckResult(
                False, "check returned an awaitable: checks must read kept state synchronously"
            )
        if not isinstance(res, CheckResult):
            return CheckResult(False, f"check returned {type(res).__name__}, not a CheckResult")
        try:
            return CheckResult(bool(res.ok), str(res.detail), res.data, bool(res.expected))
        except Exception as exc:  # a result whose ok or detail cannot be read
            return CheckResult(False, f"check result unreadable: {type(exc).__name__}: {exc}")

    def _log_transition(self, name: str, res: CheckResult) -> None:
        before = self._check_ok.get(name)
        if before == res.ok:
            return
        self._check_ok[name] = res.ok
        if res.ok:
            if before is not None:
                log.info("health.check_passing", check=name, detail=mask_text(res.detail))
        else:
            (log.info if res.expected else log.warning)(
                "health.check_failing", check=name, detail=mask_text(res.detail)
            )

    # ----------------------------------------------------------------------------- status
    def status(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, the `/status` body)."""
        base: dict[str, Any] = {
            "uptime_s": _round(self._uptime()),
            "started_at": _iso(self._started_at or self._created_wall),
            "server_time": _iso(time.time()),
        }
        if self._status is None:
            return 200, base
        try:
            data = self._status()
            if not isinstance(data, Mapping):
                raise TypeError(f"status source returned {type(data).__name__}, not a mapping")
        except Exception as exc:
            log.warning("health.status_failed", error=mask_text(f"{type(exc).__name__}: {exc}"))
            return 500, {**base, "error": f"status source raised {type(exc).__name__}: {exc}"}
        return 200, {**dict(data), **base}

    def _uptime(self) -> float:
        return max(0.0, time.time() - (self._started_at or self._created_wall))

    def _process_start(self) -> float:
        """When this process started (the Prometheus process collector reads it from /proc);
        when unknown, when this server was built."""
        try:
            value = metrics.REGISTRY.get_sample_value("process_start_time_seconds")
        except Exception:
            value = None
        if value and math.isfinite(value) and value <= time.time():
            return float(value)
        return self._created_wall

    # ----------------------------------------------------------------------------- HTTP
    def _app(self) -> web.Application:
        middlewares = [_errors_as_json]
        # The Host check is what defeats DNS rebinding, which a port published on the
        # host's loopback does not: a server on 0.0.0.0 in a container is read that way too
        # when it accepts any name. So an explicit allow-list is enforced wherever it binds.
        if is_loopback(self.config.host) or self.config.allowed_hosts:
            middlewares.insert(0, _loopback_host_only(frozenset(self.config.allowed_hosts)))
        middlewares.insert(0, self._answer_written)
        app = web.Application(middlewares=middlewares)
        app.on_response_prepare.append(_server_named)
        for path in _GET_PATHS:
            app.router.add_get(path, getattr(self, f"_get_{path[1:]}"))
        for action in CONTROL_ACTIONS:
            app.router.add_post(f"/{action}", self._control_handler(action))
        return app

    @web.middleware
    async def _answer_written(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Run the handler and write its answer here (aiohttp's own write of a returned
        answer is then a no-op), so the request counts as in flight until its answer is
        written whole: what `stop()` waits for, a bounded time. An answer not written within
        `write_timeout_s` (the client does not read it) is given up and its connection
        closed: such clients held their connections, `max_connections` of them for good."""
        idle = self._no_answer_in_flight
        self._in_flight[id(request)] = request
        if idle is not None:
            idle.clear()
        try:
            response = await handler(request)
            try:
                async with asyncio.timeout(self.config.write_timeout_s):
                    await response.prepare(request)
                    await response.write_eof()
            except TimeoutError:
                self._give_up_answer(request)
            return response
        finally:
            self._in_flight.pop(id(request), None)
            if idle is not None and not self._in_flight:
                idle.set()

    def _give_up_answer(self, request: web.Request) -> None:
        """Close the connection of an answer not written within `write_timeout_s`; said
        for the 1st, 10th, 100th... (a flood of such clients is not a line each)."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        self._unwritten += 1
        if _said_at(self._unwritten):
            log.warning(
                "health.answer_not_read",
                path=request.path,
                remote=request.remote,
                write_timeout_s=self.config.write_timeout_s,
                so_far=self._unwritten,
                hint="the client did not read its answer within health.write_timeout_s: "
                "its connection was closed",
            )

    async def _get_health(self, request: web.Request) -> web.Response:
        alive, body = self.liveness()
        return _json(body, 200 if alive else 503)

    async def _get_ready(self, request: web.Request) -> web.Response:
        ready, body = self.readiness()
        if not (self._reads_open or self._authorized(request)):
            body = _withheld(body)
        return _json(body, 200 if ready else 503)

    @property
    def _reads_open(self) -> bool:
        """Whether /status and /metrics answer without the token."""
        return self._token is None or self.config.open_reads

    def _refused_read(self, request: web.Request) -> web.Response | None:
        """The 401 of a read of /status or /metrics without the token, once one is set
        (None: answer it). They showed positions, orders and equity to every local user
        while the files holding the same are 0640."""
        if self._reads_open or self._authorized(request):
            return None
        self._read_refusals.add(request.path, request.remote)
        return _json(
            {
                "error": f"missing or wrong bearer token: {request.path} needs "
                f"Authorization: Bearer <{TOKEN_ENV}> (/health and /ready do not)",
                "path": request.path,
            },
            401,
            headers={"WWW-Authenticate": 'Bearer realm="tradingd"'},
        )

    async def _get_metrics(self, request: web.Request) -> web.Response:
        refused = self._refused_read(request)
        if refused is not None:
            return refused
        return web.Response(
            body=self._rendered_metrics(),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    def _rendered_metrics(self) -> bytes:
        """The registry's text, rendered at most `metrics_cache_s` ago: rendering it and
        running every check for each request let a loop of scrapes (365 a second) slow the
        bar loop to 30%; a scraper every few seconds sees no difference."""
        now = self._clock()
        cached = self._metrics_text
        if cached is not None and 0 <= now - cached[0] < self.config.metrics_cache_s:
            return cached[1]
        self.readiness()  # tradingd_ready and tradingd_check_ok current for every render
        text = metrics.render()
        self._metrics_text = (now, text)
        return text

    async def _get_status(self, request: web.Request) -> web.Response:
        refused = self._refused_read(request)
        if refused is not None:
            return refused
        code, body = self.status()
        return _json(body, code)

    def _control_handler(
        self, action: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._control(request, action)

        return handler

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = credentials.strip().encode("utf-8", "replace")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given, self._token)

    def _refused_control(self, action: str, remote: str | None) -> None:
        metrics.CONTROL_UNAUTHORIZED.inc()
        self._refusals.add(action, remote)

    async def _control(self, request: web.Request, action: str) -> web.Response:
        if self._token is None:
            return _json(
                {"error": f"control endpoints disabled: set {TOKEN_ENV}", "action": action},
                403,
            )
        if not self._authorized(request):
            self._refused_control(action, request.remote)
            return _json(
                {"error": "missing or wrong bearer token", "action": action},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="tradingd"'},
            )
        if self._controls is None:
            return _json({"error": "this process has no controls", "action": action}, 501)
        args: tuple[Any, ...] = ()
        if action in _BODY_ACTIONS:
            try:
                args = (await request.json(),)
            except ValueError as exc:
                return _json(
                    {"action": action, "ok": False, "error": f"the body is no JSON: {exc}"}, 400
                )
        async with self._control_lock:
            log.info("health.control", action=action, remote=request.remote)
            try:
                result = await getattr(self._controls, action.replace("-", "_"))(*args)
            except ControlInvalidError as exc:
                # The request names what cannot be done (nothing changed): 400, 404 or 409.
                log.warning(
                    "health.control_invalid",
                    action=action,
                    error=mask_text(str(exc)),
                    refused=exc.refused,
                )
                body: dict[str, Any] = {"action": action, "ok": False, "error": str(exc)}
                if exc.refused:
                    body["refused"] = exc.refused
                return _json(body, exc.status)
            except (ControlRefusedError, ControlNotStoredError) as exc:
                # Not a fault of this server: the engine is starting or stopped (409), or the
                # state is in effect but the store did not keep it (503: send it again later).
                stopped = isinstance(exc, ControlRefusedError)
                log.warning(
                    "health.control_refused" if stopped else "health.control_not_stored",
                    action=action,
                    error=mask_text(str(exc)),
                )
                body = {"action": action, "ok": False, "error": str(exc)}
                if not stopped:
                    body.update(state=getattr(exc, "state", None), stored=False)
                return _json(body, 409 if stopped else 503)
            except Exception as exc:
                log.error(
                    "health.control_failed",
                    action=action,
                    error=mask_text(f"{type(exc).__name__}: {exc}"),
                    traceback=_masked_traceback(exc),
                )
                return _json(
                    {"action": action, "ok": False, "error": f"{type(exc).__name__}: {exc}"},
                    500,
                )
        shown = public(result if isinstance(result, Mapping) else {"result": result})
        log.info("health.control_done", action=action, result=shown)
        return _json({"action": action, "ok": True, "result": shown})


def _loopback_host_only(allowed: frozenset[str]) -> Any:
    """A server bound to loopback, or given `health.allowed_hosts`, answers only requests
    addressed to loopback or to a name in `allowed`. A web page in a browser on this machine
    could otherwise read /status and /metrics through DNS rebinding (its own host name
    resolved to 127.0.0.1, or to a container's port published there): the Host header then
    names it."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        host = (request.host or "").strip().lower()
        if host.startswith("["):  # [::1]:8080
            name = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:  # 127.0.0.1:8080, localhost:8080
            name = host.partition(":")[0]
        else:  # no port
            name = host
        if not is_loopback(name) and name not in allowed:
            return _json(
                {
                    "error": "this server answers requests addressed to 127.0.0.1, ::1, "
                    "localhost or a name in health.allowed_hosts: address it so, or add the "
                    "name this request used to health.allowed_hosts"
                },
                421,
            )
        return await handler(request)

    return check


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unexpected error in a handler answers 500 with a masked JSON body, never a trace;
    an unknown path (404) or method (405) answers JSON too, as every other answer does (it
    was aiohttp's plain text), naming the paths and methods there are."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        body: dict[str, Any] = {"error": exc.reason, "path": request.path}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            body["allowed_methods"] = sorted(exc.allowed_methods)
        else:
            body["paths"] = ["GET " + p for p in _GET_PATHS] + [
                f"POST /{a}" for a in CONTROL_ACTIONS
            ]
        return _json(
            body, exc.status, headers={k: v for k, v in exc.headers.items() if k == "Allow"}
        )
    except web.HTTPException:
        raise
    except Exception as exc:
        log.error("health.handler_failed", path=request.path, traceback=_masked_traceback(exc))
        return _json({"error": f"{type(exc).__name__}: {exc}", "path": request.path}, 500)


def _masked_traceback(exc: BaseException) -> str:
    """The traceback of `exc` as text, masked: structlog's own rendering would print the
    exception message (which may quote a URL with its password) in clear."""
    return mask_text("".join(traceback.format_exception(exc)))


__all__ = [
    "CONTROL_ACTIONS",
    "LOOP_CHECK",
    "TOKEN_ENV",
    "Check",
    "CheckResult",
    "Controls",
    "HealthConfig",
    "HealthServer",
    "HealthServerError",
    "StatusSource",
    "mask_text",
    "public",
    "to_plain",
]
