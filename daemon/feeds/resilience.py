"""Calling an outside data source without hanging, hammering or leaking secrets.

One `ResilientCaller` per source (yahoo, alphavantage, alpaca) wraps every request of that
source's client:

- **timeout** on every attempt (`asyncio.timeout`, also around calls run in a thread); the
  aiohttp clients pass `client_timeout()` to each request as well, so a socket never outlives it.
- **retries** with exponential backoff and full jitter (tenacity's `wait_random_exponential`),
  at most `max_attempts` attempts, only for errors that may pass (timeouts, connection errors,
  HTTP 429 and 5xx, malformed bodies, throttling soft errors, a 401/403 from a source without
  credentials: Yahoo's gate, kind `blocked`). A 404, 400/422, an auth failure
  or a vendor's "Error Message" is final at once: asking again cannot help. A `Retry-After`
  header (seconds or an HTTP date, `parse_retry_after`) is honoured when longer than the
  backoff, capped at `backoff_max_s`. The sleep is injectable so tests never wait.
- **circuit breaker** (closed -> open after `breaker_failure_threshold` consecutive failed
  attempts -> half-open after `breaker_reset_timeout_s` -> one probe closes it again or reopens
  it). Only failures that say the *source* is unwell count (the retryable kinds); a 404 for an
  unknown symbol is the source working. A throttled call (429, a throttling soft error)
  counts once, when its retries are spent (`throttled`): the source is up and pacing us.
  While open, calls fail at once with kind `circuit_open`, so a dead vendor costs nothing
  per bar. The clock is injectable.
- **budgets**: `per_minute` through an aiolimiter bucket that never admits more than the budget
  in any 60-s window (`tradingd.ratelimit.window_limiter`; waits for capacity, i.e. keeps
  the pace), `per_day` through `DailyBudget` (a count per UTC day; exceeding it is an immediate
  error of kind `budget` naming the budget and when it resets: waiting hours would look like a
  hang).
- **bounded concurrency**: an `asyncio.Semaphore(max_concurrency)` around each attempt (not
  around the backoff sleeps, which hold no connection).

Errors are `SourceError` (kind, source, status, symbol) with a message that never holds a
secret: `redact()` masks `apikey=`-style query parameters and every registered secret value.
Retryable kinds raise `SourceUnavailable`, which is also a `RetryableError`, so the engine's
loop treats a vendor outage like any other transient failure (bar late, retried later).

A failing source is an outage (core/outages.py, on the wall clock), from its first failure
that says it is unwell (a retryable kind, or an open circuit) to its next answer: the first
`source.call.failed` and the first `source.circuit.open` are warnings, the later ones debug
lines counted in `source.still_unavailable` (5 minutes after the last line, the wait
doubling to an hour) and `source.recovered`. A failure the source answered (404, 400, keys)
is a warning each.

Metrics (daemon/metrics.py): SOURCE_CALLS per attempt, SOURCE_ERRORS by kind, SOURCE_LATENCY,
SOURCE_UP (1 when the last attempt succeeded and the circuit is closed). `status()` gives the
health server a plain dict per source; it never calls the source. Its `ok` (/ready's `feed`
check) is False while the circuit is not closed, or once a call has spent its retries on a
failure that says the source is unwell, until the source answers again; a call whose attempt
failed and that is still being retried (`retrying`) leaves it True: one slow answer made an
operator's readiness probe flap for the length of a backoff, while a dead vendor fails it
within one call (its retries spent) or sooner (the breaker opening).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

from ..core.errors import ConfigError, RetryableError, TradingdError
from ..core.outages import Outage, Summary, duration_text
from ..core.retry_after import parse_retry_after
from ..metrics import SOURCE_CALLS, SOURCE_ERRORS, SOURCE_LATENCY, SOURCE_UP
from ..ratelimit import window_limiter
from ..secrets import mask_text

if TYPE_CHECKING:
    import aiohttp  # imported where used: config.py imports this module for SourceConfig

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Kinds of failure. The retryable ones mean "the source (or the way to it) is unwell".
RETRYABLE_KINDS = frozenset(
    {"timeout", "connection", "http_429", "http_5xx", "malformed", "blocked"}
)
# Kinds of failure that asking again cannot change (the source answered, and will answer the
# same): a warm-up every symbol of which fails with one of them is not retried (VendorFeed).
# A source's other answers that are final for good say so themselves (`permanent=True`, e.g.
# Alpha Vantage's "Error Message"); Alpha Vantage's daily limit, of kind soft_error too, is not.
PERMANENT_KINDS = frozenset({"http_4xx", "not_found"})


def throttled(err: SourceError) -> bool:
    """The source answered, asking us to slow down (HTTP 429, a throttling soft error): up,
    not unwell. The breaker counts such a call once, when its retries are spent, not each
    attempt: two calls throttled on every try opened the circuit, refusing every call for
    `breaker_reset_timeout_s` while the backoff and Retry-After already kept the pace."""
    return err.kind == "http_429" or (err.kind == "soft_error" and err.retryable)


KINDS = (
    "timeout",  # no answer within timeout_s
    "connection",  # refused, reset, DNS: the source is unreachable
    "http_429",  # throttled
    "http_5xx",  # the source failed
    "http_4xx",  # a bad request (400, 422, ...; 408 is a timeout): fix the request
    "auth",  # 401/403: fix the credentials or the subscription
    "blocked",  # 401/403 from a source without credentials (Yahoo's cookie-and-crumb gate)
    "not_found",  # unknown symbol
    "malformed",  # a body that cannot be parsed
    "soft_error",  # HTTP 200 carrying an error (Alpha Vantage Note/Information/Error Message)
    "plan",  # a premium function or a demo key (Alpha Vantage): fix the configuration or key
    "invalid_data",  # bars that fail validation (daemon/feeds/validate.py)
    "circuit_open",  # the breaker stops calls to a failing source
    "budget",  # the daily request budget is used up
    "internal",  # a bug of ours while handling a response
)

_SECRET_PARAM = re.compile(
    r"(?i)\b(apikey|api_key|apca-api-secret-key|apca-api-key-id|secret|token|key)=([^&\s\"']+)"
)


def redact(text: object, secrets: Iterable[str] = ()) -> str:
    """`text` with credential-like query parameters (`apikey=...`), the credentials of
    embedded URLs, `Bearer`/`Basic` credentials and `password=` pairs (`secrets.mask_text`:
    a server echoing the request's headers showed a proxy URL's password as base64) and every
    secret value replaced by `***`. Pure and never raises: safe in error paths."""
    out = mask_text(_SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", str(text)))
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


class SourceError(TradingdError):
    """A data source call failed. `kind` is one of KINDS; `message` holds no secret."""

    def __init__(
        self,
        source: str,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        symbol: str | None = None,
        retry_after_s: float | None = None,
        retryable: bool | None = None,
        permanent: bool | None = None,
    ) -> None:
        where = f"{source}" + (f" {symbol}" if symbol else "")
        super().__init__(f"{where}: {kind}: {message}")
        self.source = source
        self.kind = kind
        self.message = message
        self.status = status
        self.symbol = symbol
        self.retry_after_s = retry_after_s
        self.retryable = kind in RETRYABLE_KINDS if retryable is None else retryable
        # The same answer every time (see PERMANENT_KINDS): not a failure to wait out.
        self.permanent = kind in PERMANENT_KINDS if permanent is None else permanent

    def for_symbol(self, symbol: str) -> SourceError:
        """The same error naming `symbol` (for a call that served several symbols)."""
        return make_error(
            self.source,
            self.kind,
            self.message,
            status=self.status,
            symbol=symbol,
            retry_after_s=self.retry_after_s,
            retryable=self.retryable,
            permanent=self.permanent,
        )

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "status": self.status}


class SourceUnavailable(SourceError, RetryableError):
    """A transient source failure: the caller (or the engine's loop) may try again later."""


def make_error(
    source: str,
    kind: str,
    message: str,
    *,
    status: int | None = None,
    symbol: str | None = None,
    retry_after_s: float | None = None,
    retryable: bool | None = None,
    permanent: bool | None = None,
) -> SourceError:
    """A SourceError, of the retryable subclass when the kind (or `retryable`) says so.
    `permanent`: the same answer comes every time (default: the kind is in
    PERMANENT_KINDS)."""
    is_retryable = kind in RETRYABLE_KINDS if retryable is None else retryable
    cls = SourceUnavailable if is_retryable or kind in ("circuit_open",) else SourceError
    return cls(
        source,
        kind,
        message,
        status=status,
        symbol=symbol,
        retry_after_s=retry_after_s,
        retryable=is_retryable,
        permanent=permanent,
    )


def error_for_status(
    source: str,
    status: int,
    body: str,
    *,
    symbol: str | None = None,
    retry_after: str | None = None,
    secrets: Iterable[str] = (),
    credentials: bool = True,
    location: str | None = None,
) -> SourceError:
    """The SourceError for a non-2xx HTTP answer. The body is shortened and redacted.

    `location`: a redirect's Location header. Redirects are not followed (a data API that
    redirects sends this address elsewhere: Yahoo's EU consent page, or an http base URL
    sent to https), so the error names where to: without it, a 302 read only "HTTP 302:
    (empty body)", which told the operator nothing to fix.

    `credentials`: whether the source is called with keys of the operator's. Without any
    (Yahoo), a 401 or 403 is the source's own gate (Yahoo's cookie and crumb, a block of
    this address), which no configuration fixes: kind `blocked`, retried with backoff and
    counted by the breaker, not `auth`, which a feed treats as fatal (fix the keys)."""
    detail = _short_body(body, secrets)
    retry_after_s = parse_retry_after(retry_after)
    if status == 429:
        kind = "http_429"
    elif status == 408:  # Request Timeout: the server gave up waiting; another try may pass
        kind = "timeout"
    elif status >= 500:
        kind = "http_5xx"
    elif status == 404:
        kind = "not_found"
    elif status in (401, 403):
        kind = "auth" if credentials else "blocked"
    else:
        kind = "http_4xx"
    if 300 <= status < 400:
        where = redact(location[:200], secrets) if location else "(no Location header)"
        detail = f"redirected to {where}, not followed (check the source's base URL): {detail}"
    return make_error(
        source,
        kind,
        f"HTTP {status}: {detail}",
        status=status,
        symbol=symbol,
        retry_after_s=retry_after_s,
    )


# The largest answer body a data client reads (`SourceConfig.max_body_bytes`, and the Alpaca
# clients' `alpaca_sdk.DeadlineSession`): a daily or intraday answer of years of bars is a few
# MB; one of hundreds of MB is not a time series we can use, and read whole it held as much
# memory (a 400 MB body raised the daemon's RSS by 2 GB) before its timeout.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 256 * 1024


# What a data source's operator can do about an answer over the cap.
FEED_BODY_REMEDY = (
    "no time series is that long: check the source's base URL (or raise its call.max_body_bytes)"
)


def body_too_large(limit: int, declared: int | None = None, remedy: str = FEED_BODY_REMEDY) -> str:
    """The message of an answer refused for its size (`malformed`): `declared` is its
    Content-Length, None when the body was cut off as it was read past the cap; `remedy`,
    what the operator can do (the data feeds' setting, or the broker's base URL: its cap
    is fixed)."""
    size = (
        f"declares {declared} bytes (Content-Length), over the cap of {limit}"
        if declared is not None
        else f"is longer than the cap of {limit}"
    )
    return f"the answer's body {size} bytes (max_body_bytes): refused, not read on; {remedy}"


async def response_text(
    resp: Any, source: str, symbol: str | None = None, *, max_bytes: int | None = None
) -> str:
    """The answer's body as text. A body that is not text in its charset (an invalid UTF-8
    byte, an unknown charset name) is a malformed answer, retried as one: it was a bare
    UnicodeDecodeError, which the caller took for a bug of ours (`source.internal_error`,
    with a traceback).

    `max_bytes` (default `DEFAULT_MAX_BODY_BYTES`): a body longer than that (by its
    Content-Length, or as read, a compressed or chunked body included) is a malformed
    answer naming its size and the cap, refused without reading further: `resp.text()`
    read any body whole, a padded 400 MB answer included."""
    limit = DEFAULT_MAX_BODY_BYTES if max_bytes is None else max_bytes
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise make_error(
            source,
            "malformed",
            f"HTTP {resp.status}: " + body_too_large(limit, declared),
            status=resp.status,
            symbol=symbol,
        )
    # Chunks joined once whole: a growing buffer's reallocation held twice the cap.
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            parts.clear()
            raise make_error(
                source,
                "malformed",
                f"HTTP {resp.status}: " + body_too_large(limit),
                status=resp.status,
                symbol=symbol,
            )
    body = b"".join(parts)
    parts.clear()
    try:
        # The answer's charset, else UTF-8 (what aiohttp's default fallback gives, and
        # JSON's own encoding): `resp.text()` reads the body whole.
        text: str = body.decode(resp.charset or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise make_error(
            source,
            "malformed",
            f"HTTP {resp.status}: the body is not text in its charset ({type(exc).__name__}: "
            f"{str(exc)[:120]})",
            status=resp.status,
            symbol=symbol,
        ) from None
    return text


def _short_body(body: str, secrets: Iterable[str] = (), limit: int = 300) -> str:
    text = body.strip()
    try:  # a JSON error envelope: keep its description, not the whole body
        obj = json.loads(text)
        if isinstance(obj, dict):
            err = obj.get("chart", {}).get("error") if isinstance(obj.get("chart"), dict) else None
            if isinstance(err, dict):
                text = f"{err.get('code')}: {err.get('description')}"
            elif "message" in obj:
                text = str(obj["message"])
    except (ValueError, TypeError, AttributeError):
        pass
    # Masked before it is cut: a credential across the cut showed its first characters.
    text = redact(" ".join(text.split()), secrets)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text or "(empty body)"


def classify(exc: BaseException, source: str, secrets: Iterable[str] = ()) -> SourceError | None:
    """The SourceError for an exception raised while calling `source`, or None when it is not
    a source failure (a bug of ours, a cancellation): those propagate unchanged."""
    import aiohttp

    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return make_error(source, "timeout", "no answer in time")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return make_error(source, "malformed", f"truncated body: {redact(exc, secrets)}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return error_for_status(source, exc.status, exc.message, secrets=secrets)
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
        return make_error(
            source, "connection", f"{type(exc).__name__}: {redact(exc, secrets)}"[:300]
        )
    try:  # requests (used by alpaca-py), imported lazily: only that client needs it
        import requests

        if isinstance(exc, requests.Timeout):
            return make_error(source, "timeout", "no answer in time")
        if isinstance(exc, requests.ConnectionError):
            return make_error(
                source, "connection", f"{type(exc).__name__}: {redact(exc, secrets)}"[:300]
            )
        if isinstance(exc, requests.JSONDecodeError):
            return make_error(source, "malformed", f"not JSON: {redact(exc, secrets)}"[:300])
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            # A body that cannot be read (a broken compression, one over the size cap:
            # `alpaca_sdk.BodyTooLarge`): an answer, malformed, not a connection failure.
            return make_error(source, "malformed", f"unreadable body: {redact(exc, secrets)}"[:400])
    except ImportError:  # pragma: no cover - requests is a dependency of alpaca-py
        pass
    if isinstance(exc, OSError):
        return make_error(
            source, "connection", f"{type(exc).__name__}: {redact(exc, secrets)}"[:300]
        )
    return None


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SourceConfig:
    """How one source is called. Every field has a safe default; see `for_source` for the
    per-vendor defaults (Alpha Vantage: the specification's 5/min and 500/day)."""

    timeout_s: float = 10.0  # per attempt
    max_attempts: int = 4  # 1 = no retry
    backoff_base_s: float = 0.5  # first backoff ~ base, doubling per attempt
    backoff_max_s: float = 30.0  # cap of one backoff wait (also of a Retry-After)
    jitter: bool = True  # full jitter (random in [0, exponential]); False: plain exponential
    breaker_failure_threshold: int = 5  # consecutive failed attempts that open the circuit
    breaker_reset_timeout_s: float = 60.0  # open -> half-open after this long
    max_concurrency: int = 4  # requests in flight to this source
    per_minute: float = 0.0  # request budget per minute; 0 = unlimited
    per_day: int = 0  # request budget per UTC day; 0 = unlimited
    # the largest answer body read, in bytes; a longer one is `malformed` (not read on)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"source {name} {getattr(self, name)!r} must be {rule}")

        for name in ("timeout_s", "breaker_reset_timeout_s"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0 (seconds)")
        for name in ("backoff_base_s", "backoff_max_s", "per_minute"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise bad(name, ">= 0")
        for name in (
            "max_attempts",
            "breaker_failure_threshold",
            "max_concurrency",
            "max_body_bytes",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise bad(name, "an integer >= 1")
        if not (isinstance(self.per_day, int) and self.per_day >= 0):
            raise bad("per_day", "an integer >= 0 (0 = unlimited)")

    @classmethod
    def for_source(cls, source: str, **overrides: Any) -> SourceConfig:
        """The defaults for a vendor, with `overrides` (unknown names are a ConfigError)."""
        base = _VENDOR_DEFAULTS.get(source, {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"source {source!r}: unknown setting(s) {unknown}; valid: {sorted(known)}"
            )
        return replace(cls(**base), **overrides)


_VENDOR_DEFAULTS: dict[str, dict[str, Any]] = {
    # Specification: 5 calls/min and 500 calls/day on the free tier.
    "alphavantage": {"per_minute": 5.0, "per_day": 500, "max_concurrency": 1},
    # Unofficial API without published limits: be gentle.
    "yahoo": {"max_concurrency": 4},
    # 200 requests/min per key (Trading API docs); the data client pages itself.
    "alpaca": {"per_minute": 200.0, "max_concurrency": 2, "timeout_s": 30.0},
}


# ----------------------------------------------------------------------------- breaker, budget


# A call the open breaker would refuse waits for its probe when the probe is due within this
# many seconds, or this share of the reset time when that is longer, at most the cap
# (`ResilientCaller._admitted`), rather than fail an instant before it. The share (3 s at a
# 60 s reset) covers a bar release's calls that come a little over a second before the probe
# a failing call of about a second (a slow 5xx, a closed connection) lined up.
PROBE_DUE_WAIT_S = 1.0
PROBE_DUE_WAIT_SHARE = 0.05
PROBE_DUE_WAIT_MAX_S = 5.0


def probe_due_wait_s(reset_timeout_s: float) -> float:
    """How long before its probe is due a call waits for it rather than being refused."""
    return min(PROBE_DUE_WAIT_MAX_S, max(PROBE_DUE_WAIT_S, PROBE_DUE_WAIT_SHARE * reset_timeout_s))


class CircuitBreaker:
    """closed -> open after `failure_threshold` consecutive failures -> half-open after
    `reset_timeout_s` (one probe at a time) -> closed on a success, open again on a failure.
    `clock` is monotonic seconds, injectable for tests."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        failure_threshold: int,
        reset_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_open(failures, reset_s)` says each opening (a `ResilientCaller` paces them
        over an outage); by default each is the warning `source.circuit.open`."""
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_open = on_open or _say_opened
        self._state = self.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self.consecutive_failures = 0

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._state = self.HALF_OPEN
            self._probing = False
        return self._state

    def now(self) -> float:
        """This breaker's clock (monotonic seconds)."""
        return self._clock()

    def retry_in_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self.state != self.OPEN:
            return 0.0
        return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state only one probe at a time."""
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    @property
    def probing(self) -> bool:
        return self._probing

    def release_probe(self) -> None:
        """A probe that ended without a verdict (cancelled, or a non-health error)."""
        self._probing = False

    def record_success(self) -> None:
        self._state = self.CLOSED
        self._probing = False
        self.consecutive_failures = 0

    def record_failure(self, started_at: float | None = None) -> None:
        """A failure of the call sent at `started_at` (this clock; None: now). The reset time
        runs from when the failing call was sent, not from when it failed: a probe failing
        slowly (a timeout, a slow 5xx) moved each next probe later by its own length, off
        the bar releases a live feed's breaker is lined up with (60 s at 1-minute bars), and
        a release's fetch met it still open by a second or more."""
        self.consecutive_failures += 1
        self._probing = False
        if self._state == self.HALF_OPEN or self.consecutive_failures >= self.failure_threshold:
            opened = self._state != self.OPEN
            self._state = self.OPEN
            now = self._clock()
            self._opened_at = now if started_at is None else min(started_at, now)
            if opened:
                self._on_open(self.consecutive_failures, self.reset_timeout_s)


def _say_opened(failures: int, reset_s: float) -> None:
    log.warning("source.circuit.open", failures=failures, reset_s=reset_s)


class DailyBudget:
    """At most `limit` calls per UTC day (0 = unlimited). `take()` raises instead of waiting:
    a budget that resets in hours must be reported, not waited for."""

    def __init__(
        self, source: str, limit: int, wall_clock: Callable[[], datetime] | None = None
    ) -> None:
        self.source = source
        self.limit = limit
        self._now = wall_clock or (lambda: datetime.now(UTC))
        self._day: str = ""
        self.used = 0
        # Calls refused today: the first is a warning, the rest debug lines (`refused`); a
        # used-up budget warned on every call until midnight UTC, a symbol a bar.
        self.refused = 0

    def _roll(self) -> datetime:
        now = self._now()
        day = now.astimezone(UTC).date().isoformat()
        if day != self._day:
            if self.refused:
                log.info(
                    "source.budget.reset",
                    source=self.source,
                    day=self._day,
                    refused=self.refused,
                    per_day=self.limit,
                )
            self._day, self.used, self.refused = day, 0, 0
        return now

    def take(self) -> None:
        now = self._roll()
        if self.limit and self.used >= self.limit:
            self.refused += 1
            reset = datetime.combine(
                now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC
            )
            raise make_error(
                self.source,
                "budget",
                f"daily budget of {self.limit} requests (per_day) used up; "
                f"resets at {reset.isoformat()}",
                retryable=False,
            )
        self.used += 1

    def remaining(self) -> int | None:
        self._roll()
        return None if not self.limit else max(0, self.limit - self.used)


# ----------------------------------------------------------------------------- the caller


class _BackoffWait:
    """tenacity wait: exponential backoff with full jitter (or without jitter when disabled),
    or the last error's Retry-After when longer, capped. A floor, not a replacement: a date
    already past (the server's clock behind ours) reads as 0 s, and the attempts of a call
    came within milliseconds, into the throttle."""

    def __init__(self, config: SourceConfig) -> None:
        self.cap = config.backoff_max_s
        if config.jitter:
            self._inner: Any = wait_random_exponential(
                multiplier=config.backoff_base_s, max=config.backoff_max_s
            )
        else:
            self._inner = wait_exponential(
                multiplier=config.backoff_base_s, max=config.backoff_max_s
            )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(exc, "retry_after_s", None)
        backoff = float(self._inner(state))
        if hint is not None:
            return float(min(max(hint, backoff), self.cap))
        return backoff


class ResilientCaller:
    """Timeout, retries, breaker, budgets and bounded concurrency for one source.

    `sleep` (the backoff sleep), `clock` (monotonic seconds, for the breaker) and `wall_clock`
    (aware datetimes, for the daily budget and status times) are injectable for tests.
    `secrets` are scrubbed from every message this caller logs or raises.
    """

    def __init__(
        self,
        source: str,
        config: SourceConfig | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.source = source
        self.config = config or SourceConfig.for_source(source)
        self._sleep = sleep
        self._wall = wall_clock or (lambda: datetime.now(UTC))
        self.secrets = tuple(s for s in secrets if s)
        self.breaker = CircuitBreaker(
            self.config.breaker_failure_threshold,
            self.config.breaker_reset_timeout_s,
            clock,
            on_open=self._circuit_opened,
        )
        # The source unwell (`_failed`), from its first failure to its next answer: the
        # warnings of its failures and openings paced (core/outages.py), on the wall clock.
        self._outage = Outage(unit="failures")
        self.budget = DailyBudget(source, self.config.per_day, self._wall)
        self._limiter: AsyncLimiter | None = (
            window_limiter(self.config.per_minute) if self.config.per_minute else None
        )
        self._semaphore: asyncio.Semaphore | None = None
        self._verdict: asyncio.Event | None = None  # set when a half-open probe ends
        self.in_flight = 0
        self.max_in_flight = 0
        # Calls whose attempt failed and that are waiting for or making another (`call`).
        self.retrying = 0
        # A call spent its retries on an unwell source's failure, and the source has not
        # answered since (`call`, `_answered`): `status()["ok"]` is then False.
        self.gave_up = False
        self.calls = 0
        self.errors = 0
        self.last_error: SourceError | None = None
        self.last_error_at: datetime | None = None
        self.last_success_at: datetime | None = None
        SOURCE_UP.labels(source=source).set(1)

    def add_secret(self, secret: str | None) -> None:
        if secret:
            self.secrets = (*self.secrets, secret)

    def redact(self, text: object) -> str:
        return redact(text, self.secrets)

    def client_timeout(self) -> aiohttp.ClientTimeout:
        """The aiohttp timeout of one attempt."""
        import aiohttp

        return aiohttp.ClientTimeout(total=self.config.timeout_s)

    def _sem(self) -> asyncio.Semaphore:
        # Created lazily: no constructor touches the event loop.
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        return self._semaphore

    def _failed(self, err: SourceError, what: str, attempt: int) -> None:
        """Count and log a failure. Only the retryable kinds (and an open circuit) say the
        source is unwell; a 404 or a bad request leaves SOURCE_UP alone, and is a warning
        each. The source unwell is an outage (`_outage`) until it answers again: its first
        failure is the warning `source.call.failed` in full, the later ones debug lines,
        counted (by kind) and said in the warning `source.still_unavailable` at the pace
        of core/outages.py (5 minutes, doubling to an hour), its end in `source.recovered`.
        A failing source wrote a warning per attempt and per symbol, every bar."""
        self.errors += 1
        self.last_error = err
        self.last_error_at = self._wall()
        SOURCE_ERRORS.labels(source=self.source, kind=err.kind).inc()
        fields: dict[str, Any] = {
            "source": self.source,
            "what": self.redact(what),
            "kind": err.kind,
            "status": err.status,
            "attempt": attempt,
            "error": self.redact(err.message),
        }
        if err.kind == "budget":
            # The day's first refusal in full; the rest until midnight UTC are debug lines,
            # counted in source.budget.reset (and the status's `refused_today`).
            if self.budget.refused <= 1:
                log.warning(
                    "source.call.failed",
                    **fields,
                    then="the calls refused until the budget resets are debug lines, "
                    "counted in source.budget.reset",
                )
            else:
                log.debug("source.call.failed", **fields)
            return
        if not (err.retryable or err.kind == "circuit_open"):
            log.warning("source.call.failed", **fields)
            return
        SOURCE_UP.labels(source=self.source).set(0)
        due = self._outage.failed(
            self.last_error_at, f"{err.kind}: {fields['error']}", **{_KIND + err.kind: 1}
        )
        # A call an open breaker refuses is a debug line even as an outage's first (the
        # breaker's opening is said): a warning per refused call was most of a long
        # outage's log (found by the fault soak).
        if due is None or (due.first and err.kind == "circuit_open"):
            log.debug("source.call.failed", **fields)
            return
        if due.first:
            log.warning(
                "source.call.failed",
                **fields,
                then="the source's failures until it answers again are counted and said in "
                "source.still_unavailable (at most every "
                f"{duration_text(self._outage.repeat_max)}), its end in source.recovered",
            )
            return
        now = self._outage.summary(self.last_error_at)
        assert now is not None
        log.warning(
            "source.still_unavailable",
            **fields,
            circuit=self.breaker.state,
            **_outage_fields(now, now.counts),
            **{f"{k}_since_last_line": v for k, v in _outage_counts(due.since_last_line).items()},
            next_line_after=duration_text(due.next_after),
        )

    def _circuit_opened(self, failures: int, reset_s: float) -> None:
        """The breaker opened: said in full at an outage's first opening, the later ones
        (each failed half-open probe) debug lines counted (`circuit_opened`)."""
        fields = {"source": self.source, "failures": failures, "reset_s": reset_s}
        if not self._outage.active:
            log.warning("source.circuit.open", **fields)
            return
        first = "circuit_opened" not in self._outage.counts
        self._outage.count(circuit_opened=1)
        if first:
            log.warning(
                "source.circuit.open",
                **fields,
                then="its reopenings after a failed probe are debug lines, counted "
                "(circuit_opened) in source.still_unavailable and source.recovered",
            )
        else:
            log.debug("source.circuit.open", **fields)

    def _answered(self) -> None:
        """The source answered (whatever the answer meant): its outage, if one, ends."""
        self.gave_up = False
        ended = self._outage.recovered(self._wall())
        if ended is None:
            return
        log.info(
            "source.recovered",
            source=self.source,
            **_outage_fields(ended, ended.counts),
            last_error=ended.error,
        )

    def _circuit_open(self, what: str, attempt: int) -> SourceError:
        err = make_error(
            self.source,
            "circuit_open",
            f"circuit open after {self.breaker.consecutive_failures} consecutive failures;"
            f" next probe in {self.breaker.retry_in_s():.1f}s",
            retryable=False,
        )
        self._failed(err, what, attempt)
        return err

    async def _admitted(self, what: str, attempt: int) -> None:
        """Return when the circuit lets this call try: at once when closed; after the probe's
        verdict when half-open with a probe running (so a recovering source serves every
        waiting symbol, not just the probe's); never when open (circuit_open), unless its
        probe is due within `probe_due_wait_s` (1 s, 3 s at a 60 s reset): then it waits for
        it, once. A live feed's
        breaker whose reset time is its bar's length (60 s at 1-minute bars) reopens to a
        probe at each release: the engine's retry of the bars missed in the outage, asked
        first, was refused a few milliseconds before it, and the new bar's fetch, an instant
        later, was the probe that found the source back; the missed bars were then lost
        although the source had them."""
        waited = False
        while True:
            state = self.breaker.state
            if state == CircuitBreaker.OPEN:
                due = self.breaker.retry_in_s()
                if not waited and due <= probe_due_wait_s(self.breaker.reset_timeout_s):
                    waited = True
                    await self._sleep(due)
                    continue
                raise self._circuit_open(what, attempt)
            if state == CircuitBreaker.HALF_OPEN and self.breaker.probing:
                if self._verdict is None:
                    self._verdict = asyncio.Event()
                await self._verdict.wait()
                continue
            return

    def _probe_ended(self) -> None:
        if self._verdict is not None:
            self._verdict.set()
            self._verdict = None

    async def _attempt(self, fn: Callable[[], Awaitable[T]], what: str, attempt: int) -> T:
        while True:
            await self._admitted(what, attempt)
            async with self._sem():
                if self._limiter is not None:
                    await self._limiter.acquire()
                # Checked again in the slot: the circuit may have changed while this queued.
                if not self.breaker.allow():
                    if self.breaker.state == CircuitBreaker.OPEN:
                        raise self._circuit_open(what, attempt)
                    continue  # another call is probing: wait for its verdict, slot freed
                # Whether this call took the probe's slot, read from the slot (`allow` sets
                # it only for a probe): read from the state before `allow`, a reset time
                # passing between the two made a probe whose verdict woke no waiter.
                probe = self.breaker.probing
                try:
                    return await self._send(fn, what, attempt)
                finally:
                    if probe:
                        self._probe_ended()

    async def _send(self, fn: Callable[[], Awaitable[T]], what: str, attempt: int) -> T:
        verdict = False
        try:
            try:
                self.budget.take()
            except SourceError as err:
                self._failed(err, what, attempt)
                raise
            self.calls += 1
            SOURCE_CALLS.labels(source=self.source).inc()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            started = time.perf_counter()
            sent_at = self.breaker.now()
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    result = await fn()
            except Exception as exc:
                failure = classify(exc, self.source, self.secrets)
                if failure is None:
                    raise
                self._failed(failure, what, attempt)
                verdict = True
                if throttled(failure):  # counted once, when the call gives up (`call`)
                    self.breaker.release_probe()
                elif failure.retryable:
                    self.breaker.record_failure(sent_at)
                else:  # the source answered (404, 400, auth, ...): it is up
                    self.breaker.record_success()
                    self._answered()
                raise failure from None
            finally:
                self.in_flight -= 1
                SOURCE_LATENCY.labels(source=self.source).observe(time.perf_counter() - started)
        finally:
            if not verdict:  # a probe that ended without a verdict frees the half-open slot
                self.breaker.release_probe()
        # The source answered: it is up, whatever the answer meant.
        self.breaker.record_success()
        self.last_success_at = self._wall()
        SOURCE_UP.labels(source=self.source).set(1)
        self._answered()
        return result

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str = "") -> T:
        """`await fn()` with timeout, retries, breaker, budgets and bounded concurrency.

        `fn` performs one attempt and raises a SourceError (or a network exception, which is
        classified) on failure; it must be safe to call again. `what` names the request in
        logs (it is redacted). Raises the last SourceError when retries are exhausted."""
        attempt = 0
        counted = False  # this call is counted in `retrying`

        def before_sleep(_: RetryCallState) -> None:
            nonlocal counted
            if not counted:
                counted = True
                self.retrying += 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=_BackoffWait(self.config),
            retry=retry_if_exception(lambda e: isinstance(e, SourceError) and e.retryable),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for state in retrying:
                with state:
                    attempt += 1
                    return await self._attempt(fn, what, attempt)
        except SourceError as err:
            if throttled(err):  # its retries spent on throttling: one failure of the source
                self.breaker.record_failure()
            if err.retryable:  # spent its retries on an unwell source: /ready fails
                self.gave_up = True
            raise
        finally:
            if counted:
                self.retrying -= 1
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    def status(self) -> dict[str, Any]:
        """Health of this source, for the health server (plain values, no secrets)."""
        state = self.breaker.state
        err = self.last_error
        last_ok = self.last_success_at
        # Not a failed attempt that is being retried: a call that spent its retries, or the
        # breaker (see the module docstring).
        ok = state == CircuitBreaker.CLOSED and not self.gave_up
        return {
            "source": self.source,
            "ok": ok,
            "circuit": state,
            "retrying": self.retrying,
            "gave_up": self.gave_up,
            "consecutive_failures": self.breaker.consecutive_failures,
            "retry_in_s": round(self.breaker.retry_in_s(), 3),
            "calls": self.calls,
            "errors": self.errors,
            "last_error": None
            if err is None
            else {
                "kind": err.kind,
                "message": self.redact(err.message),
                "symbol": err.symbol,
                "at": self.last_error_at.isoformat() if self.last_error_at else None,
            },
            "last_success": last_ok.isoformat() if last_ok else None,
            "budget": {
                "per_minute": self.config.per_minute or None,
                "per_day": self.config.per_day or None,
                "remaining_today": self.budget.remaining(),
                "refused_today": self.budget.refused,
            },
        }


_KIND = "kind:"  # an outage's count of one kind of failure (`_failed`)


def _outage_counts(counts: dict[str, int]) -> dict[str, Any]:
    """A source outage's counts as a line says them: failures, circuit_opened, and the
    failures by kind."""
    return {
        "failures": counts.get("failures", 0),
        "circuit_opened": counts.get("circuit_opened", 0),
        "kinds": {k[len(_KIND) :]: n for k, n in sorted(counts.items()) if k.startswith(_KIND)},
    }


def _outage_fields(summary: Summary, counts: dict[str, int]) -> dict[str, Any]:
    """since, last_failed, down_for (text and seconds; to the summary's time) and counts."""
    d = summary.down_for
    return {
        "since": summary.since.isoformat(),
        "last_failed": summary.last_failed.isoformat(),
        "down_for": duration_text(d) if d is not None else None,
        "down_for_s": d.total_seconds() if d is not None else None,
        **_outage_counts(counts),
    }
