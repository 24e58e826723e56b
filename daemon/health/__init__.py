"""Health, readiness, metrics and status of the running daemon: a view, not a place of work.

The server (`tradingd.health.server.HealthServer`) only reads state the daemon already keeps:
it never calls a vendor, the broker or the database itself. What it reads is given to it as the
small interface defined here:

- `Check`: a name and a zero-argument callable returning a `CheckResult`, for `GET /ready`.
  A check reads kept state ("redis: last ping ok 3 s ago"); it must be cheap and must not
  block or await anything. `status_check` turns a component's `status()` mapping with an
  `ok` key (a resilient source's) into one.
- `StatusSource`: a zero-argument callable returning the `GET /status` mapping (equity, cash,
  positions, open orders, last bar time, model version); the server adds uptime itself.
- `Controls`: `async pause()`, `resume()`, `flatten()`, each returning a small mapping saying
  what happened, for `POST /pause|/resume|/flatten` (bearer token required; it guards
  `GET /status` and `/metrics` too, see `HealthConfig.open_reads`).
- `HealthConfig`: where the server listens and when the event loop counts as stalled.

These definitions live here, free of aiohttp, so that `config.py` can hold a `HealthConfig`
without loading a web framework for every command; `tradingd.health.server` re-exports them.
The command-line client is `tradingd.health.client.fetch_health`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.endpoints import canonical_address, is_loopback
from ..core.errors import ConfigError

# The environment variable holding the bearer token of the control endpoints and of the read
# endpoints that show the book (/status, /metrics). The server never reads the environment
# itself: the caller passes the token (see `token_from_env`).
TOKEN_ENV = "TRADINGD_HEALTH_TOKEN"


# What a start waits for, by part ("database": the error of its last attempt), kept by the
# part that retries, so /ready says why the daemon is not trading yet while it waits: it
# named only the phase ("finding the run to continue"), the cause was in the log alone.
_WAITING: dict[str, str] = {}


def waiting_for(part: str, why: str | None) -> None:
    """Note (or, with None, clear) what a start is waiting for."""
    if why is None:
        _WAITING.pop(part, None)
    else:
        _WAITING[part] = why


def waits() -> dict[str, str]:
    return dict(_WAITING)


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The health server's bearer token from `TRADINGD_HEALTH_TOKEN`, or None when unset or
    blank (the control endpoints then answer 403, and /status and /metrics need none)."""
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return value or None


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to `host:port` (a server
    listening on every interface is asked on loopback). A numeric host is written in its
    canonical form: the server binds `127.1` as 127.0.0.1, but aiohttp's client refuses
    "http://127.1:8080" ("not a canonical IPv4 address")."""
    host = canonical_address(host) or host.strip().strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class HealthConfig:
    """The `[health]` section: where the server listens and when the loop counts as stalled.

    - `enabled`: false = `HealthServer.start()` does nothing (heartbeats are still accepted).
    - `host`: loopback by default. Another address (e.g. "0.0.0.0" for a Prometheus on another
      machine) is allowed because it is set explicitly, and logged as a warning at start:
      /health and /ready need no token. "::" is dual-stack (every IPv6 and IPv4 address) where
      the system allows it.
    - `port`: 0 picks a free port (tests); the bound one is `HealthServer.port` after start.
    - `tick_interval_s`: how often the server's own periodic task proves the loop runs.
    - `stall_after_s`: `/health` answers 503 when neither that task nor an engine heartbeat
      ran for longer than this (so systemd or Docker restart a daemon whose loop is stuck).
      At least twice `tick_interval_s`, or a healthy loop would flap.
    - `busy_stall_after_s`: 0 = off; otherwise `/health` also answers 503 when the engine
      said it started a bar (`heartbeat(busy=True)`) and has not beaten since for longer than
      this (the loop runs, but the engine awaits something that never ends). Set it above the
      longest legitimate bar, data download and retries included.
    - `max_connections`: connections served at once; more are closed as soon as they are
      accepted. Each holds a file descriptor: without a cap, idle connections from any local
      user took all of the process's, and the daemon died of "too many open files".
    - `idle_timeout_s`: a connection that has not sent a whole request for this long (a
      client that sends its headers slowly, or an idle keep-alive) is closed.
    - `metrics_cache_s`: `/metrics` answers the text rendered (and readiness checks run) at
      most this long ago; 0 renders for each request. Rendering the whole registry and
      running every check per request let a local loop of scrapes (365 a second) slow the
      bar loop to 30%.
    - `write_timeout_s`: an answer not written whole within this long (a client that does
      not read it) is given up and its connection closed. Without it, clients that never
      read held their connections, and `max_connections` of them locked `/health` out for as
      long as they stayed connected.
    - `shutdown_timeout_s`: how long a stop waits for answers still being written before it
      closes their connections (logged as `health.connections_cut`). aiohttp's own default
      waited up to twice 60 s for a client that never read its answer, past systemd's
      TimeoutStopSec, which then killed the daemon.
    - `allowed_hosts`: host names the server answers besides 127.0.0.1, ::1 and localhost
      (a reverse proxy on this machine that passes its clients' Host header, a container's
      service name). A loopback server checks the Host header always; one bound elsewhere
      only when this is set (then it answers no other name).
    - `open_reads`: false (the default) = once `TRADINGD_HEALTH_TOKEN` is set, `/status` and
      `/metrics` need it as a bearer token, as the controls do: they show positions, open
      orders, equity and P&L, and a loopback port is open to every local user (the files
      holding the same are 0640). True serves them to anyone who reaches the port (a scraper
      that cannot send a token), warned at start, as is a server without a token, whose
      reads are open whatever this says. `/health` and `/ready` never need the token.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    tick_interval_s: float = 1.0
    stall_after_s: float = 30.0
    busy_stall_after_s: float = 0.0
    max_connections: int = 64
    idle_timeout_s: float = 10.0
    metrics_cache_s: float = 1.0
    write_timeout_s: float = 5.0
    shutdown_timeout_s: float = 2.0
    allowed_hosts: tuple[str, ...] = ()
    open_reads: bool = False

    def __post_init__(self) -> None:
        hosts = self.allowed_hosts
        if isinstance(hosts, str) or not all(isinstance(h, str) and h.strip() for h in hosts):
            raise ConfigError(
                f"health.allowed_hosts = {hosts!r} is invalid: must be a list of host names"
            )
        names = tuple(h.strip().lower() for h in hosts)
        with_port = [
            h
            for h in names
            if (h.startswith("[") and not h.endswith("]"))
            or (not h.startswith("[") and h.count(":") == 1)
        ]
        if with_port:
            # The Host header is compared without its port: "proxy.local:8080" never matched.
            h = with_port[0]
            bare = h.rpartition(":")[0] if h.startswith("[") else h.partition(":")[0]
            raise ConfigError(
                f"health.allowed_hosts = {list(hosts)!r} is invalid: give host names without "
                f"a port ({bare!r}, not {h!r})"
            )
        # "[::1]" as a URL writes it: the Host header's name is compared without brackets,
        # so a bracketed entry (config/docker.toml had one) never matched.
        names = tuple(h.removeprefix("[").removesuffix("]") for h in names)
        object.__setattr__(self, "allowed_hosts", names)
        if not isinstance(self.open_reads, bool):
            raise ConfigError(
                f"health.open_reads = {self.open_reads!r} is invalid: must be true or false"
            )
        if (
            isinstance(self.max_connections, bool)
            or not isinstance(self.max_connections, int)
            or self.max_connections < 1
        ):
            raise ConfigError(
                f"health.max_connections = {self.max_connections!r} is invalid: must be an "
                "integer >= 1"
            )
        for name in ("idle_timeout_s", "write_timeout_s", "shutdown_timeout_s"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ConfigError(
                    f"health.{name} = {value!r} is invalid: must be a finite number of seconds > 0"
                )
        for name in ("tick_interval_s", "stall_after_s", "busy_stall_after_s", "metrics_cache_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(
                    f"health.{name} = {value!r} is invalid: must be a finite number of seconds"
                )
        host = self.host.strip() if isinstance(self.host, str) else ""
        if not host or any(c.isspace() for c in host):
            raise ConfigError(
                f"health.host = {self.host!r} is invalid: must be an address or host name "
                '("127.0.0.1" by default; "0.0.0.0" listens on every interface)'
            )
        object.__setattr__(self, "host", host)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError(f"health.port = {self.port!r} is invalid: must be an integer")
        if not 0 <= self.port <= 65535:
            raise ConfigError(
                f"health.port = {self.port!r} is invalid: must be 0 to 65535 (0 = any free port)"
            )
        if self.tick_interval_s <= 0:
            raise ConfigError(
                f"health.tick_interval_s = {self.tick_interval_s!r} is invalid: must be > 0 s"
            )
        if self.stall_after_s < 2 * self.tick_interval_s:
            raise ConfigError(
                f"health.stall_after_s = {self.stall_after_s!r} is invalid: must be at least "
                f"twice health.tick_interval_s ({self.tick_interval_s!r}), or a healthy loop "
                "would be reported stalled between two ticks"
            )
        if self.metrics_cache_s < 0:
            raise ConfigError(
                f"health.metrics_cache_s = {self.metrics_cache_s!r} is invalid: must be >= 0 s "
                "(0 = render /metrics for each request)"
            )
        if self.busy_stall_after_s < 0:
            raise ConfigError(
                f"health.busy_stall_after_s = {self.busy_stall_after_s!r} is invalid: "
                "must be >= 0 s (0 = off)"
            )


@dataclass(frozen=True)
class CheckResult:
    """One readiness check's answer. `detail` says what was seen, in words an operator acts on
    ("source yahoo: circuit open since 14:02:11", "last bar 2024-11-27, expected 2024-11-29");
    `data` is optional machine-readable detail. Both are masked before they are shown.
    `expected`: a failure that is part of normal operation (the daemon still starting), logged
    at info rather than as a warning when the check starts failing."""

    ok: bool
    detail: str = ""
    data: Mapping[str, Any] | None = None
    expected: bool = False


@dataclass(frozen=True)
class Check:
    """A named readiness check. `probe` reads state the daemon already keeps and returns at
    once: it must not call a vendor or the database, block, or return an awaitable. A probe
    that raises counts as failing, with the exception's type and message as its detail."""

    name: str
    probe: Callable[[], CheckResult]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "\n" in self.name:
            raise ValueError(f"check name {self.name!r} must be a non-empty single-line text")
        if not callable(self.probe):
            raise TypeError(f"check {self.name!r}: probe must be callable")


def status_check(name: str, status: Callable[[], Mapping[str, Any]]) -> Check:
    """A `Check` from a component's `status()` mapping that has an `ok` key (as
    `feeds.resilience`'s per-source status does): the mapping becomes the check's `data`, and
    its `detail` (or else its circuit state and last error) the check's detail."""

    def probe() -> CheckResult:
        st = status()
        if "ok" not in st:
            return CheckResult(False, f"status of {name!r} has no 'ok' key", dict(st))
        ok = bool(st["ok"])
        detail = st.get("detail")
        if not isinstance(detail, str):
            parts = []
            if st.get("circuit") not in (None, "closed"):
                parts.append(f"circuit {st['circuit']}")
            err = st.get("last_error")
            if isinstance(err, Mapping) and not ok:
                parts.append(
                    f"last error {err.get('kind', '?')}: {err.get('message', '')}"
                    + (f" at {err['at']}" if err.get("at") else "")
                )
            detail = "; ".join(parts) or ("ok" if ok else "failing")
        return CheckResult(ok, detail, dict(st))

    return Check(name, probe)


class StatusSource(Protocol):
    """Returns the `GET /status` mapping from kept state: equity, cash, positions, open orders,
    last bar time, model version. Values may be datetimes, numpy scalars or arrays, enums or
    dataclasses (converted to JSON); `uptime_s`, `started_at` and `server_time` are added by
    the server."""

    def __call__(self) -> Mapping[str, Any]: ...


class Controls(Protocol):
    """The state-changing actions behind `POST /pause`, `/resume`, `/flatten`, `/reset-halt`
    and `/adopt`. Each returns
    a small mapping saying what happened (shown to the caller and logged, masked). The server
    runs one action at a time and never cancels one once started."""

    async def pause(self) -> Mapping[str, Any]: ...

    async def resume(self) -> Mapping[str, Any]: ...

    async def flatten(self) -> Mapping[str, Any]: ...

    async def reset_halt(self) -> Mapping[str, Any]:
        """`POST /reset-halt`: the deliberate reset a halted kill switch waits for."""
        ...

    async def adopt(self, body: Any) -> Mapping[str, Any]:
        """`POST /adopt` with its JSON body: the broker's quantity taken into the book in
        symbols reconciliation blocked, at the next bar (engine/adopt.py). Raises
        ControlInvalidError for a request it refuses."""
        ...


__all__ = [
    "TOKEN_ENV",
    "Check",
    "CheckResult",
    "Controls",
    "HealthConfig",
    "StatusSource",
    "is_loopback",
    "local_url",
    "status_check",
    "token_from_env",
]
