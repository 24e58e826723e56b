"""`tradingd health`: ask a running daemon how it is, from the command line.

`fetch_health(url, timeout_s, token)` queries `/health`, `/ready` and `/status` and returns
`(exit_code, report)`: 0 when the daemon is alive and ready, 1 when it answers but is not
(the report names the failing checks), 2 when nothing usable answers (nothing listens, no
answer within the timeout, or the server is not a tradingd health server). The caller prints
the report as JSON. `token` (the CLI passes `TRADINGD_HEALTH_TOKEN`) is sent as a bearer token
with `/status`, which needs it once the daemon has one (`health.open_reads`), and `/ready`,
whose check details it unlocks; `/health` is asked without it.

The report: `url`; `alive` and `ready` (booleans); `health`, `readiness` and `status` (the
three bodies as the daemon sent them, already masked by the server); `error` (in words, when
the exit code is not 0); `status_error` when only `/status` failed; `readiness_error` when
the token given is not the daemon's (/ready then withholds its checks' details).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..secrets import mask_url
from . import TOKEN_ENV, HealthConfig, local_url

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 5.0

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_UNREACHABLE = 2


def url_for(config: HealthConfig) -> str:
    """The URL a client on this machine uses for a server configured by `config` (a server
    listening on every interface is asked on loopback): the default of `--url`."""
    return local_url(config.host, config.port)


# The most of an answer read: tradingd's are a few kB (a /status of many positions some
# hundred). The body was read whole: a server sending without end had 1.2 GB read in 3 s.
MAX_BODY_BYTES = 1_000_000


class _NotTradingd(Exception):
    pass


class _Unfinished(Exception):
    """An answer whose status came but whose body did not, within the timeout (it was
    reported as "no answer")."""

    def __init__(self, path: str, status: int, received: int) -> None:
        super().__init__(path, status, received)
        self.path, self.status, self.received = path, status, received


async def _get(
    session: aiohttp.ClientSession, base: str, path: str, token: str | None = None
) -> tuple[int, Any]:
    # A redirect is not followed: tradingd's server never sends one, and one to a closed
    # port was reported as "nothing listens at <url>", the URL given (with the token).
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with session.get(f"{base}{path}", allow_redirects=False, headers=headers) as resp:
        if 300 <= resp.status < 400:
            where = resp.headers.get("Location")
            raise _NotTradingd(
                f"GET {path} answered {resp.status}, a redirect to "
                f"{mask_url(where) if where else 'nowhere'} (a tradingd health server never "
                "redirects: give the daemon's own address as --url)"
            )
        data = bytearray()
        try:
            async for chunk in resp.content.iter_any():
                data += chunk
                if len(data) > MAX_BODY_BYTES:
                    raise _NotTradingd(f"GET {path} answered more than {MAX_BODY_BYTES:,} bytes")
        except TimeoutError:
            raise _Unfinished(path, resp.status, len(data)) from None
        try:
            body = json.loads(bytes(data))  # JSON is UTF-8 (RFC 8259), or UTF-16/32 detected
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _NotTradingd(f"GET {path} answered {resp.status} without a JSON object")
        return resp.status, body


def _names(value: Any) -> bool:
    """`value` is what tradingd sends as /ready's `failing` and /health's `problems`: a list
    of texts. Another shape (`{"failing": 12345}`) crashed the report with a traceback, and a
    text was listed letter by letter."""
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _shown_value(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def fetch_health(
    url: str = DEFAULT_URL, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """Query a running daemon; see the module docstring for the exit codes. Never raises for
    an unreachable or misbehaving server (that is exit code 2 with an `error`). A timeout
    that is not a finite number of seconds > 0 is a ValueError: aiohttp reads 0 or less
    (and NaN) as no timeout at all, which waits forever on a stalled server."""
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    base = url.strip().rstrip("/")
    shown = mask_url(base)
    report: dict[str, Any] = {"url": shown}
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        report["error"] = f"{shown!r} is not an http:// URL (e.g. {DEFAULT_URL})"
        return EXIT_UNREACHABLE, report
    try:
        port = parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        report["error"] = f"{shown!r} has no valid port ({exc}); e.g. {DEFAULT_URL}"
        return EXIT_UNREACHABLE, report
    if port == 0:
        report["error"] = (
            f"{shown} has port 0: a daemon started with health.port = 0 listens on a port the "
            "system chose, named by its health.listening log line (port=...); pass that "
            "address as --url"
        )
        return EXIT_UNREACHABLE, report
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            health_code, report["health"] = await _get(session, base, "/health")
            ready_code, report["readiness"] = await _get(session, base, "/ready", token)
            status_code, report["status"] = await _get(session, base, "/status", token)
    except aiohttp.ClientConnectorDNSError as exc:
        report["error"] = f"cannot resolve the host of {shown}: {exc.os_error}"
        return EXIT_UNREACHABLE, report
    except aiohttp.ClientConnectorError as exc:
        err = exc.os_error
        reason = os.strerror(err.errno).lower() if err and err.errno else str(err or exc)
        report["error"] = (
            f"nothing listens at {shown} ({reason}): is the daemon running, with the health "
            "server enabled, and are health.host / health.port (or --url) right?"
        )
        return EXIT_UNREACHABLE, report
    except TimeoutError:
        report["error"] = (
            f"no answer from {shown} within {timeout_s:g} s: something accepts connections "
            "there but does not answer (a daemon whose event loop is blocked?)"
        )
        return EXIT_UNREACHABLE, report
    except _Unfinished as exc:
        report["error"] = (
            f"{shown} answered GET {exc.path} ({exc.status}) but did not send the whole answer "
            f"within {timeout_s:g} s ({exc.received:,} bytes came): a server that sends too "
            "slowly (a tradingd health server answers at once)"
        )
        return EXIT_UNREACHABLE, report
    except _NotTradingd as exc:
        report["error"] = f"{shown} is not a tradingd health server: {exc}"
        return EXIT_UNREACHABLE, report
    except (aiohttp.ClientError, ValueError) as exc:
        report["error"] = f"cannot query {shown}: {type(exc).__name__}: {exc}"
        return EXIT_UNREACHABLE, report
    if health_code not in (200, 503) or ready_code not in (200, 503):
        report["error"] = (
            f"{shown} is not a tradingd health server: /health answered {health_code}, "
            f"/ready answered {ready_code}"
        )
        return EXIT_UNREACHABLE, report
    shapes = [
        (report["health"], "problems", "/health's 'problems'"),
        (report["readiness"], "failing", "/ready's 'failing'"),
    ]
    for body, key, named in shapes:
        if not _names(body.get(key, [])):
            report["error"] = (
                f"{shown} is not a tradingd health server: {named} is not a list of names "
                f"({_shown_value(body[key])})"
            )
            return EXIT_UNREACHABLE, report
    if status_code == 401:
        # The daemon has a token and this client sent none or another one: a 401 alone did
        # not say what to do.
        report["status_error"] = (
            f"/status answered 401: it needs the daemon's token; set {TOKEN_ENV} to it"
            + (" (the one set is not the daemon's)" if token else "")
        )
    elif status_code != 200:
        report["status_error"] = f"/status answered {status_code}"
    if token and "details" in report["readiness"]:
        # /ready answers a wrong token as it does none (its status code is for probes): the
        # checks' details withheld; said, or a mistyped token read as a daemon without them.
        report["readiness_error"] = (
            f"/ready withheld its checks' details: the {TOKEN_ENV} set is not the daemon's"
        )
    alive = health_code == 200
    ready = ready_code == 200
    report["alive"] = alive
    report["ready"] = ready
    if alive and ready:
        return EXIT_READY, report
    failing = list(report["readiness"].get("failing") or [])
    problems = list(report["health"].get("problems") or [])
    report["error"] = "not ready: " + "; ".join(
        [*problems, *(f"check {name!r} failing" for name in failing)] or ["the daemon answered 503"]
    )
    return EXIT_NOT_READY, report


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "EXIT_NOT_READY",
    "EXIT_READY",
    "EXIT_UNREACHABLE",
    "MAX_BODY_BYTES",
    "fetch_health",
    "url_for",
]
