"""The Alpaca paper-trading broker: the `Broker` port on alpaca-py's `TradingClient` and
`TradingStream`.

How it works:

* **REST** (orders, cancels, account, positions) goes through alpaca-py's synchronous
  `TradingClient`, run in a worker thread (`asyncio.to_thread`) under an overall asyncio
  timeout, so the event loop never blocks. alpaca-py has no request timeout of its own; the
  client gets a session with one per read and a deadline for the whole request, the body
  included (`request_timeout_s`, `alpaca_sdk.DeadlineSession`). Retries (`max_attempts`, exponential
  backoff with jitter, tenacity) cover timeouts, broken connections, 429 and 5xx; a 429 gets
  four tries per attempt and its wait is at least the answer's Retry-After. Each retry is
  logged (`alpaca.retry`: the call, the attempt, the answer, the wait). alpaca-py's own
  retries are off (see `_make_client`): they ran in the worker thread, which a timed-out
  call cannot stop, so an order could be placed after the broker had given it up. Every call
  first waits for the account's request budget (`rate_limit_per_minute`, Alpaca's 200/min),
  so a busy rebalance is paced instead of meeting 429s and alpaca-py's fixed sleeps. A batch
  of orders goes out in waves of one side, sells first, `max_in_flight` at a time. Responses
  are taken as raw JSON (`raw_data=True`) and mapped in `alpaca_mapping`, so a status or field
  Alpaca adds later cannot make a whole answer fail to parse.
* **Order and fill updates** come from the trade-updates websocket: alpaca-py's
  `TradingStream._run_forever()` runs as a task on our loop and hands every message to a
  bounded queue. While the stream is not listening (down, reconnecting, refused) the broker
  polls `GET /v2/orders` every `poll_interval_s` and at every bar (with no order open, the
  poller asks for the account instead, one `GET /v2/account` a poll interval, at most one a
  second: else nothing was asked, and Alpaca down went unseen for minutes); when the stream
  is back, one catch-up poll recovers whatever happened in the gap. While it is listening
  the open orders are still polled every `open_orders_check_s`: Alpaca's stream has been
  reported to lose a trade update on a live connection, and nothing else would bring that
  fill back. Polls and events update the same state and fills are derived from Alpaca's
  cumulative `filled_qty`, so a fill seen twice (stream and poll, a repeated event) is
  reported once, and a missed event is made up by the next cumulative figure: nothing is
  lost or doubled, partial fills included.
  Alpaca is known not to always send the event for the stop-loss it cancels when the
  take-profit of a bracket fills (alpaca-py issue #198): after any fill of an OCO member,
  its open siblings are checked by polling until they are closed.
* **Orders** map from the engine's order types (see `alpaca_mapping.plan_submission` and
  `build_request`): market, limit, stop, stop-limit, trailing stop (`trail_percent` =
  `trail_pct` x 100), brackets (an entry with its take-profit and stop-loss legs in one
  batch; Alpaca names the legs itself and they are mapped back to the engine's leg ids from
  the response's `legs`), OTO and stand-alone OCO exit pairs. `client_order_id` is the
  engine's deterministic id.
* **Idempotency**: an id this broker already knows returns its order without a request. An
  id Alpaca already has (a resend after a crash, or a retried POST whose first attempt got
  through) answers 422 "client_order_id must be unique"; the broker then looks the order up
  by client id and returns *its* state, so there is never a second order. An order this
  process may itself have placed (an earlier attempt timed out) is reported from nothing
  filled; one from before a restart is taken as it stands (its earlier executions belong to
  the reconciled positions, see `snapshot`), and only later executions become fills.
* **States**: Alpaca statuses map as `alpaca_mapping` documents. `held` is HELD only for a
  bracket leg whose entry has not filled; Alpaca also keeps a filled bracket's (or an OCO's)
  stop-loss `held` while it protects the position, and that one is reported as NEW
  (working). Fills: `fill_id` = `<client_order_id>#<cumulative filled qty>`, commission 0
  (Alpaca charges none on equities), price from the event (or from the cumulative averages
  when polled), time from the event's timestamp, no reference price.
* **Start-up**: `start` checks the keys, then follows the orders open at Alpaca for the
  universe (`adopt_open_orders`), so exits placed before a restart are in `open_orders()`;
  they are not reported as changes.
* **Restart** (`resume`, called by the engine after `start` when it continues a run from a
  checkpoint): the orders open at the checkpoint are followed from the fills the book holds
  and the intents stored after it from nothing filled, so what Alpaca executed meanwhile is
  reported once; open orders of the universe the run knows nothing of are adopted as they
  stand, with a warning. The rules are in `resume`'s docstring; each difference is logged
  as `alpaca.reconcile.<rule>`. Until `resume` is done (or, for a new run, the engine goes
  on without it: `_orders_are_known`), an update of an order not known is kept, not taken
  for another's: it may be a checkpoint order's.
* **Signals for the engine**: `reconcile_wanted` (an asyncio.Event) is set when an answer
  contradicts an order (`alpaca.order_answer_mismatch`), or Alpaca refuses a sell for more
  shares than the account holds (`alpaca.order.shares_not_held`): the book and Alpaca
  differ, and a reconciliation round need not wait for its interval.
  `take_foreign_orders()` hands over, once each, the orders found mid-run that this process
  did not place (`foreign_found` is set when one comes), for the engine's foreign-order
  alert.
* **The engine's view**: `open_orders()` shows each order as the engine has booked it (the
  fills handed over by `updates()`, an order closed meanwhile still working until its fills
  and final state are handed over), so the planner and the checkpoint never count an
  execution the book does not have yet.

Errors:

* Every order-level refusal becomes a REJECTED order whose `reason` is the broker's message
  with its HTTP status and code (`alpaca: insufficient buying power (HTTP 403, code
  40310000)`): 403/404/422 answers (buying power, quantity, shorting, wash trade, PDT,
  non-tradable or non-fractionable asset, market closed, sub-penny prices...), a 429 left
  after all retries, and requests alpaca-py itself refuses to build. `submit` never raises
  for those.
* Alpaca refusing the keys after the start (401, or 403 "forbidden." without a code: keys
  revoked or replaced) is no order's refusal but an outage of the account: one error line
  of the broker's (`alpaca.keys_refused`; its end `alpaca.keys_accepted`; the engine counts
  the bars it could not place, `broker.unavailable` ... `broker.recovered`), the broker not
  connected, and no
  order or cancel sent meanwhile: `submit` raises `SubmitCutShort` with the batch not sent,
  `cancel` RetryableError, as for a broker that cannot be reached (the engine decides again
  at the next bar), each after one look at the account (GET /v2/account), whose answer ends
  the outage. At the start the same answer is a ConfigError.
* `submit` raises `RetryableError` when the outcome is unknown: timeouts, refused
  connections and 5xx answers left after the retries. Resubmitting the same orders is safe
  (see idempotency), which is what the caller is expected to do after backing off. Orders of
  the batch acknowledged before the failure are kept and returned again on the resubmit.
* `cancel` raises `RetryableError` the same way; `on_bar` never raises (a failed poll is
  retried at the next bar or poll interval; polls failing in a row are one warning,
  `alpaca.poll_failed`, a counted `alpaca.poll_still_failing` at most every 5 minutes
  doubling to an hour, and `alpaca.poll_recovered`: `_poll_failed`); `start` raises
  `ConfigError` when
  Alpaca rejects the keys and `RetryableError` when it cannot be reached; `snapshot` raises
  `RetryableError`.

Keys come from `APCA_API_KEY_ID` / `APCA_API_SECRET_KEY` (`alpaca_keys_from_env`) and never
appear in logs, metrics, `status()` or exception texts: messages are scrubbed of them, and
the websocket library's frame log (which would contain the authentication message) goes to a
logger of ours that is never below INFO and redacts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import structlog
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, QueryOrderStatus
from alpaca.trading.requests import GetAssetsRequest, GetOrderByIdRequest, GetOrdersRequest
from alpaca.trading.stream import TradingStream
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from ..alpaca_sdk import DeadlineSession, no_sdk_retries
from ..core.errors import ConfigError, RetryableError
from ..core.numbers import same_quantity
from ..core.outages import Outage, duration_text
from ..core.retry_after import parse_retry_after
from ..core.tasks import cancel_and_wait
from ..core.types import (
    BrokerUpdate,
    CrossSection,
    Fill,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    Side,
    parse_client_order_id,
)
from ..logs import Once, sparse
from ..metrics import (
    ORDERS,
    RATE_LIMIT_WAIT,
    SOURCE_CALLS,
    SOURCE_ERRORS,
    SOURCE_LATENCY,
    SOURCE_UP,
)
from ..ratelimit import window_limiter
from ..secrets import mask_url
from .alpaca_mapping import (
    EPS,
    KNOWN_EVENTS,
    KNOWN_STATUSES,
    LIVE_HOSTS,
    MAY_HAVE_FILLED,
    PAPER_BASE_URL,
    TIME_IN_FORCE_CHOICES,
    AccountSnapshot,
    ErrorInfo,
    LocalRejection,
    Unit,
    UnreadableOrder,
    alpaca_keys_from_env,
    build_request,
    closed_reason,
    error_info,
    fill_price,
    leg_client_order_id,
    leg_role,
    make_fill,
    map_status,
    open_order_rows,
    order_from_alpaca,
    order_key,
    parse_float,
    parse_time,
    plan_submission,
    positions_from_alpaca,
    qty_key,
    uncountable_filled,
    validate,
    why_uncountable,
)

__all__ = [
    "AccountSnapshot",
    "AlpacaBroker",
    "AlpacaBrokerConfig",
    "ForeignOrder",
    "alpaca_keys_from_env",
]

log = structlog.get_logger(__name__)

SOURCE = "alpaca_trading"
# alpaca-py's websocket frames are logged here (at DEBUG they include the authentication
# message): never below INFO, and scrubbed of the keys anyway.
WS_LOGGER = "tradingd.brokers.alpaca.websocket"
STREAM_LOGGER = "alpaca.trading.stream"  # alpaca-py's trade stream
_ORDER_PAGE = 500  # Alpaca's maximum page size for GET /v2/orders
_ORPHAN_LIMIT = 1000  # updates kept for order ids not (yet) known
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REQUESTED_POLL_GAP_S = 2.0  # polls asked for between the periodic ones: at most one this often
# With the stream down and nothing open, Alpaca is asked for the account once a poll
# interval (`_probe`), and never more often than this, whatever `poll_interval_s` is.
_PROBE_GAP_MIN_S = 1.0
# The failing polls of the poll being made in this task (`_poll_quietly`): while they fail,
# its calls' retries are counted in them and said at debug, not each an info line.
_FAILING_POLLS: contextvars.ContextVar[Outage | None] = contextvars.ContextVar(
    "alpaca_failing_polls", default=None
)
_THROTTLED_TRIES = 4  # a 429's tries per attempt (alpaca-py's own, before they were turned off)
# Followed orders missing from the periodic check's open listing (closed without an event
# we heard) read by id per check: 20 of Alpaca's 200 requests a minute.
_REREAD_LIMIT = 20
# Orders read back at a restart to find whose an edited order is (`_trace_origins`).
_EDIT_CHAIN_LIMIT = 10
# A symbol whose orders Alpaca refuses as not tradable: its asset looked at again after this
# many seconds, the wait doubling up to the second (`_recheck_untradable`).
_UNTRADABLE_FIRST_S = 60.0
_UNTRADABLE_MAX_S = 3600.0
# At start the universe's assets are read (`_read_assets`): one by one (GET /v2/assets/{symbol},
# within the request budget's burst) up to this many symbols, else by one listing of Alpaca's
# US equities (GET /v2/assets): 500 symbols read one by one were 500 calls, 2.5 minutes of
# Alpaca's 200 requests a minute before the first bar.
_ASSET_READS_ONE_BY_ONE = 20
# Distinct unknown status and event names counted in `status()` (`_note_unknown`); any
# beyond are counted together.
_UNKNOWN_NAMES_LIMIT = 32

T = TypeVar("T")
# Answers that arrived but cannot be read: malformed, not a connection failure, although
# requests raises them as RequestExceptions.
_MALFORMED = (requests.exceptions.JSONDecodeError, requests.exceptions.ContentDecodingError)


# ----------------------------------------------------------------------------- config


def _derived_stream_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/stream"


@dataclass(frozen=True, slots=True)
class AlpacaBrokerConfig:
    """Where and how to talk to Alpaca. Keys are not here: they come from the environment."""

    # Trading API base URL (no /v2). Paper only: the live host is refused.
    base_url: str = PAPER_BASE_URL
    # trade_updates websocket; None = derived from base_url (https://h -> wss://h/stream).
    stream_url: str | None = None
    # False = never open the websocket, always poll.
    stream_enabled: bool = True
    # Per HTTP request inside alpaca-py: each socket read, and the whole request (an answer
    # trickling its body is given up at it, freeing its thread).
    request_timeout_s: float = 10.0
    # Per HTTP attempt from the event loop (the worker thread's whole call).
    call_timeout_s: float = 30.0
    # Order polling while the stream is down, and checks of OCO siblings.
    poll_interval_s: float = 5.0
    # Open orders polled this often while the stream is up too: a trade update the stream
    # lost on a live connection (reported of Alpaca) is otherwise never made up. The
    # account's status and blocks are read again as often (and every poll_interval_s while
    # the stream is down and no order is open: `_probe`). 0 = never.
    open_orders_check_s: float = 300.0
    # Attempts per call for timeouts, connection errors and 5xx (1 = no retry); a 429 gets
    # four times as many (alpaca-py's own retries gave it four tries per attempt).
    max_attempts: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    # Entries (simple orders with leg=entry).
    time_in_force: str = "day"
    # Stand-alone exits and OCO exit pairs: protection must outlive the session.
    exit_time_in_force: str = "gtc"
    # Brackets and OTOs: Alpaca gives the legs the order's time in force, so "gtc" keeps
    # the exits working after the entry's day.
    bracket_time_in_force: str = "gtc"
    # Let simple orders execute in extended hours (Alpaca: limit orders with day only).
    extended_hours: bool = False
    # How long `cancel` waits for Alpaca to confirm (it answers 204 at once, then cancels).
    cancel_confirm_timeout_s: float = 2.0
    # Websocket reconnect backoff (alpaca-py: exponential with jitter between these).
    stream_reconnect_min_s: float = 1.0
    stream_reconnect_max_s: float = 30.0
    # A silent (half-open) connection is detected after ping interval + this.
    stream_ping_timeout_s: float = 20.0
    # At start, track the open orders Alpaca has for the universe (exits from before a
    # restart), so the planner sees them.
    adopt_open_orders: bool = True
    # Stream messages waiting to be applied; the websocket reader waits when it is full.
    event_queue_size: int = 10_000
    # Closed orders remembered for duplicate detection and late updates.
    closed_history: int = 10_000
    # Alpaca allows 200 requests per minute per account and answers 429 beyond that (retried,
    # then a rejected order). Every REST call
    # waits here for its turn instead: a leaky bucket of `rate_limit_burst` that drains so
    # that no 60-s window ever holds more than `rate_limit_per_minute` requests
    # (burst + drain over 60 s = the limit). 0 = no client-side limit.
    rate_limit_per_minute: int = 200
    rate_limit_burst: int = 20
    # The window the limit counts in (Alpaca: a minute); shorter only to test the pacing.
    rate_limit_period_s: float = 60.0
    # Orders of one batch sent at once (each is one REST call in a worker thread). Exits go
    # before entries: a batch is sent in waves of one side, sells first, so the buying power
    # that sells free is there when the buys arrive.
    max_in_flight: int = 4

    def __post_init__(self) -> None:
        for name in ("base_url", "stream_url"):
            url = getattr(self, name)
            if url is None:
                continue
            parts = urlsplit(url) if isinstance(url, str) else None
            allowed = ("http", "https") if name == "base_url" else ("ws", "wss")
            if parts is None or parts.scheme not in allowed or not parts.netloc:
                raise ValueError(
                    f"{name} must be a {'/'.join(allowed)} URL, got {mask_url(str(url))!r}"
                )
        if (urlsplit(self.base_url).hostname or "").lower() in LIVE_HOSTS:
            raise ValueError(
                "base_url points at Alpaca's live (real money) API; this broker trades the "
                f"paper account only: use {PAPER_BASE_URL}"
            )
        for name in (
            "request_timeout_s",
            "call_timeout_s",
            "poll_interval_s",
            "cancel_confirm_timeout_s",
            "stream_ping_timeout_s",
            "rate_limit_period_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in (
            "backoff_initial_s",
            "backoff_max_s",
            "open_orders_check_s",
            "stream_reconnect_min_s",
            "stream_reconnect_max_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("rate_limit_per_minute", "rate_limit_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.rate_limit_per_minute > 1 and not 0 < self.rate_limit_burst < (
            self.rate_limit_per_minute
        ):
            raise ValueError(
                "rate_limit_burst must be > 0 and below rate_limit_per_minute "
                f"({self.rate_limit_per_minute}), got {self.rate_limit_burst}"
            )
        for name in ("max_attempts", "event_queue_size", "closed_history", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("time_in_force", "exit_time_in_force", "bracket_time_in_force"):
            value = getattr(self, name)
            if value not in TIME_IN_FORCE_CHOICES:
                raise ValueError(f"{name} must be one of {TIME_IN_FORCE_CHOICES}, got {value!r}")
        if self.bracket_time_in_force not in ("day", "gtc"):
            raise ValueError(
                "bracket_time_in_force must be 'day' or 'gtc' (Alpaca's rule for brackets), "
                f"got {self.bracket_time_in_force!r}"
            )
        for name in ("stream_enabled", "extended_hours", "adopt_open_orders"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def effective_stream_url(self) -> str:
        return self.stream_url or _derived_stream_url(self.base_url)


# ----------------------------------------------------------------------------- plumbing


class _Scrubber:
    """Replaces the keys by *** in any text (defence in depth: no message we build contains
    them, but an exception text from a library might)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len)[::-1])

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret in self._secrets:
            out = out.replace(secret, "***")
        return out


class _RedactingFilter(logging.Filter):
    def __init__(self, scrub: _Scrubber) -> None:
        super().__init__()
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted is dropped, not crashed on
            return False
        clean = self._scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class _RepeatLimit(logging.Filter):
    """alpaca-py's trade stream logs a traceback at error level at every failed reconnect
    (every 1-30 s while the stream is down or its keys are refused): the first record of a
    kind goes through; the same again within `window_s` is counted, not logged, and the next
    one let through says how many were not. The broker's own status and /ready carry the
    state meanwhile."""

    def __init__(self, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.levelno}:{str(record.msg)[:60]}"
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        if len(self._last) >= 256:  # bounded: a daemon runs for months
            self._last.clear()
            self._dropped.clear()
        self._last[key] = now
        n = self._dropped.pop(key, 0)
        if n:
            record.msg = (
                f"{record.getMessage()} ({n} more like it in the last {self.window_s:g} s "
                "not logged)"
            )
            record.args = ()
        return True


class _Unreachable(Exception):
    """A call that got no usable answer: timeout, connection error, malformed body."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _closed(incoming: Order, status: OrderStatus, reason: str) -> Order:
    """A copy of an order that never reached Alpaca, closed here: nothing filled."""
    order = incoming.snapshot()
    order.status = status
    order.reason = reason
    order.filled_quantity = 0.0
    order.avg_fill_price = math.nan
    order.updated_at = _now()
    return order


class SubmitCutShort(RetryableError):
    """A batch that a broker failure ended part-way. `answered`: the states Alpaca gave
    (acknowledged or refused); `not_sent`: the orders of the later waves, never sent and
    closed as cancelled here, so the caller closes their stored intents in the same bar
    (they stayed `new` in the store for good). Orders whose outcome is unknown are in
    neither: they are followed and looked up (`_follow_unconfirmed`), never given up."""

    def __init__(self, message: str, answered: list[Order], not_sent: list[Order]) -> None:
        super().__init__(message)
        self.answered = answered
        self.not_sent = not_sent


def _retry_after(error: BaseException | None) -> float | None:
    """For a 429: the seconds its Retry-After asks for (0 without a readable one: throttled
    all the same, so it gets a 429's tries); None otherwise."""
    if not isinstance(error, APIError) or error_info(error).status != 429:
        return None
    response = error.response
    value = response.headers.get("Retry-After") if response is not None else None
    seconds = parse_retry_after(value, _now())
    return 0.0 if seconds is None else seconds


class _KeysRefused(RetryableError):
    """A unit not placed because Alpaca refuses the keys (`_refuses_keys`): its POST was
    answered 401, or it was not sent, the keys being known refused. Its outcome is known
    (nothing placed): `submit` closes it as not sent, as the later waves of a batch."""

    def __init__(self, message: str, unit: Unit) -> None:
        super().__init__(message)
        self.unit = unit


def _refuses_keys(info: ErrorInfo) -> bool:
    """Whether an error answer says Alpaca refuses the keys themselves (revoked, or no
    longer the account's): 401, or a 403 "forbidden" without a code (Alpaca's answer to
    missing or unknown key headers). Not an order's refusal: those 403s carry a code
    (buying power, shorting, wash trade, PDT...)."""
    if info.status == 401:
        return True
    text = info.message.strip().lower().rstrip(".")
    return info.status == 403 and info.code is None and text == "forbidden"


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, _Unreachable):
        return True
    return isinstance(error, APIError) and error_info(error).retryable


class _TradeStream(TradingStream):
    """alpaca-py's stream, telling us when it is listening and when the socket is gone, and
    giving up a login that gets no answer (`AUTH_TIMEOUT_S`)."""

    # alpaca-py's `_auth` waits for the answer to its login with no timeout: a server that
    # accepted the socket and never answered left the stream "connecting" for good (the
    # pings kept it open). A TimeoutError is its connect failing: closed, retried after its
    # backoff.
    AUTH_TIMEOUT_S = 30.0

    def __init__(self, *args: Any, on_state: Callable[[bool], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_state = on_state

    async def _auth(self) -> None:
        async with asyncio.timeout(self.AUTH_TIMEOUT_S):
            await super()._auth()

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if isinstance(msg, dict) and msg.get("stream") == "listening":
            streams = (msg.get("data") or {}).get("streams") or []
            self._on_state("trade_updates" in streams)
        await super()._dispatch(msg)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._on_state(False)


@dataclass(slots=True)
class _Untradable:
    """A symbol whose orders Alpaca refused as not tradable (`_hold_untradable`): why, since
    when, and when its asset is looked at again (monotonic seconds, `_recheck_untradable`)."""

    reason: str
    since: datetime
    wait_s: float
    due: float


@dataclass(slots=True)
class _Tracked:
    """An order this broker follows, and what it knows about it at Alpaca."""

    order: Order
    alpaca_id: str | None = None
    # "" for a simple order; "bracket", "oto" or "oco" for the members of one.
    group: str = ""
    submitted_at: datetime | None = None
    remote_updated: datetime | None = None
    # The primary order of its group (a bracket's entry, an OCO's take-profit).
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    cancel_reason: str | None = None
    # The status the engine last received for this order (an ack, `updates`, `cancel`,
    # adoption); None before it received any. See `open_orders`.
    told: OrderStatus | None = None
    # The status last counted in tradingd_orders: an order's state change is counted once,
    # whether the ack or a stream event replayed before it saw it first.
    counted: OrderStatus | None = None
    # Found at Alpaca and followed as it stood (`_adopt`), not placed by this process.
    adopted: bool = False
    # The Alpaca id of the order this one replaced (`replaces`), for an adopted one.
    replaces: str | None = None
    # For the replacement of an order edited at Alpaca: the client id of the order it
    # stands for (the first of the chain of edits), whose owner its fills belong to (`origin`).
    origin: str | None = None
    # Alpaca's last answer for it had a `filled_qty` that cannot be read (`_adopt`, `_apply`):
    # the filled quantity here is the last one read, or nothing. See `_rebase`.
    filled_unreadable: bool = False


@dataclass(frozen=True, slots=True)
class ForeignOrder:
    """An order Alpaca reported after the start that this process did not place (by hand,
    or another program on the account), as its latest update had it; handed to the engine
    by `AlpacaBroker.take_foreign_orders` for its `broker.foreign_open_orders` alert, which
    looked only at the orders open at the start."""

    alpaca_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: float
    status: str
    # In the run's universe (or no universe given).
    in_universe: bool
    # Followed as another's (`open_orders` lists it while it works).
    followed: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _count(t: _Tracked) -> None:
    """Count a state change of a followed order in tradingd_orders, once per state."""
    if t.counted is not t.order.status:
        t.counted = t.order.status
        ORDERS.labels(status=str(t.order.status)).inc()


def _is_intent(o: Order) -> bool:
    """An order the engine decided: its id names the bar it was created at and its symbol
    (`run|YYYYmmddTHHMMSS|symbol|leg|attempt`, `tradingd.core.types.client_order_id`)."""
    p = parse_client_order_id(o.client_order_id)
    return p is not None and p.symbol == o.symbol and p.stamp == f"{o.created_at:%Y%m%dT%H%M%S}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _symbol_key(symbol: Any) -> str:
    """A symbol as compared with Alpaca's answers: case and a crypto pair's slash aside."""
    return str(symbol).strip().upper().replace("/", "")


def _not_tradable(raw: Any, symbol: str = "") -> str | None:
    """Why Alpaca's asset answer `raw` (GET /v2/assets) takes no order (an answer that is
    no asset, one not tradable or not active), None when it is tradable and active."""
    if not isinstance(raw, Mapping):
        return f'asset "{symbol}" could not be read at Alpaca'
    if raw.get("tradable") is True and raw.get("status") in (None, "active"):
        return None
    return (
        f'asset "{symbol}" is not tradable at Alpaca (tradable {raw.get("tradable")}, '
        f"status {raw.get('status')}; read at start)"
    )


def _legs(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """An order's `legs` that are objects (a `legs` that is no list has none), quietly: for
    a second look at an answer whose legs were said already (`AlpacaBroker._legs_of`)."""
    legs = raw.get("legs")
    return [leg for leg in legs if isinstance(leg, Mapping)] if isinstance(legs, list) else []


# ----------------------------------------------------------------------------- broker


class AlpacaBroker:
    """Implements `Broker` against an Alpaca paper account (see the module docstring).

    `keys` is `(key id, secret key)`, normally `alpaca_keys_from_env()`. `symbols`, when
    given, limits the orders adopted at start-up to the engine's universe."""

    # Counts tradingd_orders by status itself (from Alpaca's answers and stream events).
    reports_order_metrics = True

    def __init__(
        self,
        config: AlpacaBrokerConfig,
        keys: tuple[str, str],
        symbols: Sequence[str] | None = None,
    ) -> None:
        key_id, secret = keys
        if not key_id or not secret:
            raise ConfigError(
                "Alpaca keys must both be non-empty (APCA_API_KEY_ID, APCA_API_SECRET_KEY)"
            )
        self._config = config
        self._key_id = key_id
        self._secret = secret
        self._scrub = _Scrubber((key_id, secret))
        self._symbols = frozenset(symbols) if symbols is not None else None
        self._endpoint = mask_url(config.base_url)
        self._client: TradingClient | None = None
        self._stream: _TradeStream | None = None
        self._stream_task: asyncio.Task[Any] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=config.event_queue_size)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._poll_lock = asyncio.Lock()
        self._limiter = (
            window_limiter(
                config.rate_limit_per_minute, config.rate_limit_period_s, config.rate_limit_burst
            )
            if config.rate_limit_per_minute
            else None
        )
        # Seconds REST calls spent waiting for the request budget (benchmarks read it).
        self.rate_limit_wait_s = 0.0
        self._ws_logger = logging.getLogger(WS_LOGGER)
        self._log_filter = _RedactingFilter(self._scrub)
        self._stream_repeats = _RepeatLimit()

        self._open: dict[str, _Tracked] = {}
        self._closed: OrderedDict[str, _Tracked] = OrderedDict()
        self._by_alpaca_id: dict[str, str] = {}
        self._orphans: OrderedDict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = (
            OrderedDict()
        )
        # Ids whose POST by this process had an attempt with an unknown outcome (timeout,
        # broken connection, 5xx): a later 422 duplicate may be that attempt's order.
        # Bounded (closed_history): an id whose every attempt failed is never resent.
        self._attempted: OrderedDict[str, None] = OrderedDict()
        # Client ids of orders followed with an unknown outcome (see _follow_unconfirmed): its
        # POST may have reached Alpaca; followed by client id until a lookup finds it or none.
        self._unconfirmed: set[str] = set()
        # Alpaca ids of orders that replaced ours, to be read and followed (bounded): the
        # client id each replaced.
        self._replacements: OrderedDict[str, str] = OrderedDict()
        # Ids refused for a reason a later attempt may not meet (ErrorInfo.transient_refusal):
        # the engine may retry those decisions under the next attempt number. Bounded.
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._pending_fills: list[Fill] = []
        # Set when a fill joins _pending_fills (stream or poll): `fills_arrived`.
        self._fills_waiting = asyncio.Event()
        self._pending_orders: dict[str, None] = {}
        self._verify: set[str] = set()
        # Orders the last periodic check left to read by id (`_bounded_rereads`).
        self._reread_next: set[str] = set()
        # Orders with executions Alpaca has not priced yet (`_fill`), logged once each.
        self._unpriced: set[str] = set()
        # Orders Alpaca closed with a filled_qty that cannot be read (`_apply`), logged once.
        self._uncounted: set[str] = set()
        # Orders whose unreadable filled_qty `order_from_alpaca` warned of (`_orders_of`), by
        # Alpaca id: once an order, not at each read (start, every snapshot, each edit), and
        # again after an answer that could be read. Bounded: orders read by a snapshot are
        # not all followed, so the followed orders cannot bound it as they do `_uncounted`.
        self._unreadable_said = Once()

        self._started = False
        self._stopping = False
        self._stream_up = False
        self._poll_requested = False
        self._connected = False
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._last_poll_at: datetime | None = None
        self._last_poll_mono = time.monotonic()
        # Polls failing in a row (`_poll_quietly`), on the wall clock: the first said, the
        # rest counted and said at a bounded rate, the first that succeeds ends it.
        self._poll_outage = Outage(unit="polls")
        self._poll_clock: Callable[[], datetime] = _now  # the wall clock; a test's own
        self._requested_poll_mono = -math.inf  # the last poll asked for (`_poller`)
        self._account_blocked: str | None = None
        # Why Alpaca refuses the keys (a 401 after the start: revoked), and since when; None
        # while it accepts them. Orders are not sent meanwhile (`submit`, `cancel`).
        self._keys_refused: str | None = None
        self._keys_refused_at: datetime | None = None
        self._last_account_mono = time.monotonic()
        self._stream_changes = 0
        self._unknown_updates = 0
        # POSTs of orders sent and not answered yet: an update for an order not known may be
        # one of theirs (`_sort_orphans` waits for them).
        self._submitting = 0
        # Alpaca ids of orders found from their updates to be no order of this process
        # (`_foreign_update`), said once each; bounded (`closed_history`).
        self._foreign_ids: OrderedDict[str, None] = OrderedDict()
        self._foreign_found = 0
        # Those found since the engine last took them (`take_foreign_orders`), bounded, and
        # set when one is added: for the engine's alert on orders found mid-run.
        self._foreign_new: list[ForeignOrder] = []
        self.foreign_found = asyncio.Event()
        # Set when an answer contradicted an order we follow (`_answer_mismatch`): the book
        # and Alpaca's positions differ now, and the engine's next reconciliation round
        # (`live.reconcile_interval_s`, 300 s) is the first to compare them. An engine may
        # wait on it to start that round early (and clear it before the round).
        self.reconcile_wanted = asyncio.Event()
        # Updates that carried a status or trade-update event name Alpaca's docs do not
        # list, by name ("status <name>", "event <name>"; `_note_unknown`). Bounded.
        self._unknown_names: dict[str, int] = {}
        # Parts of answers skipped as unreadable (`_skipped`), by event: said sparsely.
        self._skips: dict[str, int] = {}
        # Alpaca orders (root client ids) adopted by `start`, until `resume` has sorted them.
        self._adopted_roots: dict[str, None] = {}
        # Open orders at Alpaca that a resumed run neither knew nor had intended (`resume`).
        self._unknown_orders = 0
        # Answers for an order we follow that contradict it (`_answer_mismatch`): said once
        # an order, field and value (bounded), counted.
        self._mismatch_said = Once()
        self._cuts_said = Once()  # orders Alpaca cut down (`_quantity_cut`), said once
        self._answer_mismatches = 0
        # Symbols whose orders Alpaca refused as not tradable (`_hold_untradable`): the engine
        # places no order in them (`untradable`) until their asset is tradable again (looked
        # at by `on_bar` after a bounded back-off). A symbol that is no longer tradable got a
        # new order, refused, at every bar, and nothing but warning lines said so. Bounded by
        # the symbols the run orders.
        self._untradable: dict[str, _Untradable] = {}
        self._asset_clock: Callable[[], float] = time.monotonic  # a test's own
        # Whether the universe's assets have been read (`_read_assets`: at start, and after a
        # failed read at a bar once `_assets_due` has passed, the wait doubling). Until then
        # the alert rules resolve no `untradable_asset` alert from before a restart.
        self._assets_read = self._symbols is None
        self._assets_due = -math.inf
        self._assets_wait_s = _UNTRADABLE_FIRST_S
        # Sells Alpaca refused for more shares than the account holds (`_shares_not_held`).
        self._shares_not_held_count = 0
        self._resumed = False
        # Whether the run's orders are known: `resume` has followed the checkpoint's, or the
        # engine went on without one (`_orders_are_known`). Until then no parked update is
        # taken for another's (`_sort_orphans`): it may be of an order `resume` links.
        self._orders_known = False

    def __repr__(self) -> str:
        stream = "up" if self._stream_up else "down"
        return f"AlpacaBroker(endpoint={self._endpoint!r}, stream={stream})"

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect: check the keys (GET /v2/account), adopt the open orders, open the stream
        and start the fallback poller."""
        if self._started:
            return
        self._stopping = False
        self._client = self._make_client()
        try:
            try:
                account = await self._call("get_account", self._client.get_account)
            except APIError as e:
                info = error_info(e)
                if info.status in (401, 403):
                    # No ": " after a variable's name: the error line's masking reads
                    # "APCA_API_SECRET_KEY: <word>" as a printed key and hides the word.
                    said = self._scrub(info.reason.removeprefix("alpaca: "))
                    raise ConfigError(
                        f"Alpaca at {self._endpoint} refused the keys in APCA_API_KEY_ID and "
                        f"APCA_API_SECRET_KEY, saying {said}; use the paper account's keys"
                    ) from None
                raise RetryableError(
                    f"Alpaca at {self._endpoint} failed at start: {self._scrub(info.reason)}"
                ) from None
            except _Unreachable as e:
                raise self._unreachable("start", e) from None
            self._check_account(account, "start")
            if self._config.adopt_open_orders:
                await self._adopt_open_orders()
            await self._read_assets()
        except BaseException:
            self._close_client()
            raise
        self._started = True
        self._tasks.append(asyncio.create_task(self._consume(), name="alpaca-updates"))
        self._tasks.append(asyncio.create_task(self._poller(), name="alpaca-poller"))
        if self._config.stream_enabled:
            self._start_stream()
        log.info(
            "alpaca.started",
            endpoint=self._endpoint,
            stream=self._config.effective_stream_url if self._config.stream_enabled else None,
            adopted_orders=len(self._open),
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._stopping = True
        if self._stream is not None:
            try:
                await self._stream.stop_ws()
            except Exception:  # stopping must go on
                log.warning("alpaca.stream.stop_failed", exc_info=True)
        # alpaca-py's stream awaits `wait_for`, which can lose a cancel on 3.11 (core/tasks.py).
        left = await cancel_and_wait((self._stream_task, *self._tasks))
        if left:
            log.warning("alpaca.tasks_not_stopped", tasks=sorted(t.get_name() for t in left))
        if self._stream is not None:
            try:
                await self._stream.close()
            except Exception:
                log.warning("alpaca.stream.close_failed", exc_info=True)
        self._drain()
        self._stream = None
        self._stream_task = None
        self._tasks = []
        self._stream_up = False
        self._ws_logger.removeFilter(self._log_filter)
        logging.getLogger(STREAM_LOGGER).removeFilter(self._stream_repeats)
        self._close_client()
        self._started = False
        self._poll_outage_at_stop()
        log.info("alpaca.stopped", endpoint=self._endpoint)

    # ------------------------------------------------------------------------- queries

    @property
    def trading_client(self) -> TradingClient | None:
        """The alpaca-py client (tests tune its private retry knobs; diagnostics)."""
        return self._client

    def open_orders(self) -> list[Order]:
        """The orders working for the engine, as the engine has booked them.

        Alpaca executes between bars and this broker learns of it at once (stream, polls),
        but the engine books a fill only when `updates`/`on_bar` hands it over. Until then an
        order is shown as the engine knows it: `filled_quantity` (and the average price) is
        what was handed over, and an order that closed meanwhile (filled, cancelled) is still
        listed, working, until its fills and final state have been handed over. So the
        planner never sees a position change that the book does not have yet (no second
        order for shares already bought), and a checkpoint taken from this list holds
        exactly the fills its book holds: what a restarted process must report again."""
        self._drain()
        unbooked: dict[str, tuple[float, float]] = {}
        for f in self._pending_fills:
            q, v = unbooked.get(f.client_order_id, (0.0, 0.0))
            unbooked[f.client_order_id] = (q + f.quantity, v + f.quantity * f.price)
        out = [self._as_booked(t, unbooked.get(cid)) for cid, t in self._open.items()]
        for cid in dict.fromkeys([*unbooked, *self._pending_orders]):
            t = self._closed.get(cid) if cid not in self._open else None
            if t is None:
                continue
            if cid in unbooked or (t.told is not None and t.told.is_open):
                out.append(self._as_booked(t, unbooked.get(cid)))
        return out

    def _as_booked(self, t: _Tracked, unbooked: tuple[float, float] | None) -> Order:
        o = t.order.snapshot()
        if unbooked is not None:
            qty, value = unbooked
            booked = o.filled_quantity - qty
            if booked <= EPS * max(1.0, o.filled_quantity):
                o.filled_quantity, o.avg_fill_price = 0.0, math.nan
            else:
                total = o.avg_fill_price * o.filled_quantity
                o.avg_fill_price = (total - value) / booked if math.isfinite(total) else math.nan
                o.filled_quantity = booked
        if not o.status.is_open:
            told = t.told if t.told is not None and t.told.is_open else None
            o.status = told or OrderStatus.NEW
            o.reason = ""
        if o.status in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED):
            o.status = OrderStatus.PARTIALLY_FILLED if o.filled_quantity > EPS else OrderStatus.NEW
        return o

    def order(self, client_order_id: str) -> Order | None:
        """The current state of an open or recently closed order, None if unknown."""
        t = self._get(client_order_id)
        return t.order.snapshot() if t is not None else None

    def take_foreign_orders(self) -> list[ForeignOrder]:
        """The orders found since the last call (oldest first; at most `closed_history`)
        that this process did not place, from their updates after the start
        (`alpaca.unknown_order_update`; `foreign_found` is set when one comes, and cleared
        here). For the engine's alert: its `broker.foreign_open_orders` looked at the orders
        open at the start only, and one placed by hand mid-run was a warning line of the
        broker's and a counter in its status. Each order is handed over once."""
        taken, self._foreign_new = self._foreign_new, []
        self.foreign_found.clear()
        return taken

    def origin(self, client_order_id: str) -> str:
        """The client id whose owner an order's fills belong to: for the replacement of an
        order edited at Alpaca (whose new client id is Alpaca's), the order it replaced,
        else the order itself. The engine books only its own run's orders (by the run-id
        prefix), and the replacement of one of its orders is its own; the replacement of
        an order placed by hand, or by another run, is not."""
        t = self._get(client_order_id)
        return t.origin if t is not None and t.origin is not None else client_order_id

    def _check_account(self, account: Any, what: str) -> None:
        """Whether the account may trade (GET /v2/account's status and blocks): a closed,
        blocked or suspended account started as a healthy broker before, and every order
        was then refused bar after bar with nothing else to say why. Logged (an error once
        per change), and the broker's readiness check fails until it may trade again. An
        answer that is no object raises the malformed-answer RetryableError (`what`: the
        call it answered), the check's time recorded either way: such an answer was
        ignored, and the account asked for again at every poll."""
        self._last_account_mono = time.monotonic()
        if not isinstance(account, Mapping):
            raise self._malformed(
                "get_account", what, f"the account is a {type(account).__name__}, not an object"
            )
        why = []
        status = str(account.get("status") or "").upper()
        if status and status != "ACTIVE":
            why.append(f"account status {status}")
        for flag in ("account_blocked", "trading_blocked", "trade_suspended_by_user"):
            if account.get(flag) is True:
                why.append(flag)
        blocked = ", ".join(why) or None
        if blocked != self._account_blocked:
            if blocked:
                log.error(
                    "alpaca.account_blocked",
                    reason=blocked,
                    rule="Alpaca refuses this account's orders; trading resumes when it may",
                )
            elif self._account_blocked:
                log.info("alpaca.account_unblocked")
        self._account_blocked = blocked

    async def _recheck_account(self) -> None:
        try:
            account = await self._call("get_account", self._require_client().get_account)
            self._check_account(account, "the account check")
        except (APIError, _Unreachable, RetryableError) as e:
            # While the keys are refused that was said once (`alpaca.keys_refused`).
            said = log.debug if self._keys_refused is not None else log.warning
            said("alpaca.account_check_failed", error=self._scrub(e))
            self._last_account_mono = time.monotonic()

    async def _keys_still_refused(self) -> bool:
        """While Alpaca refuses the keys: ask again (GET /v2/account, one request; an
        accepted answer ends the outage, `_call_once`) before anything is sent. Whether
        they are refused still."""
        if self._keys_refused is None:
            return False
        await self._recheck_account()
        return self._keys_refused is not None

    def _keys_error(self, what: str) -> RetryableError:
        return RetryableError(
            f"Alpaca at {self._endpoint} refuses the keys in APCA_API_KEY_ID and "
            f"APCA_API_SECRET_KEY since {_iso(self._keys_refused_at)} "
            f"({self._keys_refused}): {what} not sent until it accepts them again"
        )

    def status(self) -> dict[str, Any]:
        """For /ready and diagnostics. Never contains keys."""
        stream = (
            "disabled" if not self._config.stream_enabled else ("up" if self._stream_up else "down")
        )
        return {
            "broker": "alpaca",
            "endpoint": self._endpoint,
            "started": self._started,
            "connected": self._connected,
            # Why the account may not trade (status, blocks), None when it may.
            "blocked": self._account_blocked,
            # Alpaca refusing the keys mid-run (revoked): its answer, and since when.
            "keys_refused": self._keys_refused,
            "keys_refused_at": _iso(self._keys_refused_at),
            "stream": stream,
            "mode": "stream" if self._stream_up else "polling",
            "stream_changes": self._stream_changes,
            "open_orders": len(self._open),
            "last_poll_at": _iso(self._last_poll_at),
            # Polls failing since (the first of them), how many, the last error; None when
            # the last poll succeeded.
            "poll_outage": self._poll_outage_status(),
            "last_error": self._last_error,
            "last_error_at": _iso(self._last_error_at),
            # Updates for orders not (yet) known (parked until their order is).
            "unknown_updates": self._unknown_updates,
            # Orders this process did not place, found from their updates after the start
            # (`alpaca.unknown_order_update`; those in the universe followed as another's).
            "foreign_orders_found": self._foreign_found,
            # Updates with a status or event name this adapter does not know, by name
            # (taken as working / as an update of the order's state, said once a name).
            "unknown_statuses": dict(self._unknown_names),
            "unknown_orders": self._unknown_orders,
            # Answers that contradicted an order we follow (`alpaca.order_answer_mismatch`:
            # another quantity, a fill above it), once an order, field and value.
            "answer_mismatches": self._answer_mismatches,
            # Sells refused for more shares than the account holds (`alpaca.order.
            # shares_not_held`: the book and the account differ; reconciled at once).
            "shares_not_held": self._shares_not_held_count,
            # Symbols no order is sent in: Alpaca refused one as not tradable (why, since).
            "untradable": self.untradable(),
            # Whether the universe's assets have been read since the start (`_read_assets`):
            # until then `untradable` may lack symbols held before a restart.
            "assets_read": self._assets_read,
            "resumed": self._resumed,
        }

    async def snapshot(self) -> AccountSnapshot:
        """Account cash, equity and buying power, positions and open orders, read back from
        Alpaca (for start-up reconciliation). Raises RetryableError when that fails, also for
        an answer that cannot be read: one read as none made Alpaca look flat, or idle; a
        cash, equity or buying power that is no finite number (null, "lots", "Infinity")
        names the field."""
        client = self._require_client()
        try:
            account = await self._call("get_account", client.get_account)
            rows = await self._call("get_positions", client.get_all_positions)
            orders = await self._call(
                "list_open_orders",
                client.get_orders,
                GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True, limit=_ORDER_PAGE),
            )
        except APIError as e:
            raise RetryableError(
                f"Alpaca at {self._endpoint}: snapshot failed: {self._scrub(error_info(e).reason)}"
            ) from None
        except _Unreachable as e:
            raise self._unreachable("snapshot", e) from None
        if not isinstance(account, Mapping):
            raise self._malformed(
                "get_account",
                "snapshot",
                f"the account is a {type(account).__name__}, not an object",
            )
        try:
            positions = positions_from_alpaca(rows)
        except ValueError as e:
            raise self._malformed("get_positions", "snapshot", str(e)) from None
        try:
            order_rows = open_order_rows(orders)
        except ValueError as e:
            raise self._malformed("list_open_orders", "snapshot", str(e)) from None
        # Cash, equity and buying power must be numbers: a null, "lots" or "Infinity" was
        # read as NaN or inf, and the engine's cash check told the operator to lower
        # run.initial_capital below NaN (or passed, for inf).
        amounts: dict[str, float] = {}
        for name in ("cash", "equity", "buying_power"):
            value = parse_float(account.get(name))
            if not math.isfinite(value):
                raise self._malformed(
                    "get_account",
                    "snapshot",
                    f"the account's {name} {repr(account.get(name))[:40]} is not a number",
                )
            amounts[name] = value
        open_orders: list[Order] = []
        for raw in order_rows:
            open_orders.extend(self._describe(raw))
        return AccountSnapshot(
            cash=amounts["cash"],
            equity=amounts["equity"],
            buying_power=amounts["buying_power"],
            positions=positions,
            open_orders=open_orders,
            currency=str(account.get("currency") or "USD"),
            account_status=str(account.get("status") or ""),
            taken_at=_now(),
        )

    async def positions(self) -> dict[str, float]:
        """Alpaca's positions (GET /v2/positions): symbol -> signed quantity (shorts
        negative), for reconciling the book. Raises RetryableError when that fails, also for
        an answer that cannot be read (`positions_from_alpaca`): a row skipped, or an answer
        read as none, made Alpaca look flat to reconciliation."""
        client = self._require_client()
        self._orders_are_known()
        try:
            rows = await self._call("get_positions", client.get_all_positions)
        except APIError as e:
            raise RetryableError(
                f"Alpaca at {self._endpoint}: reading positions failed: "
                f"{self._scrub(error_info(e).reason)}"
            ) from None
        except _Unreachable as e:
            raise self._unreachable("reading positions", e) from None
        try:
            found = positions_from_alpaca(rows)
        except ValueError as e:
            raise self._malformed("get_positions", "reading positions", str(e)) from None
        return {symbol: qty for symbol, (qty, _) in found.items()}

    # ------------------------------------------------------------------------- restart

    async def resume(self, known_open: Sequence[Order], unconfirmed: Sequence[Order]) -> None:
        """Continue after a restart from the engine's checkpoint (after `start`, before the
        first bar). Nothing executed at Alpaca is lost or reported twice:

        * `known_open`, the orders open at the checkpoint with the fills the book holds
          (`filled_quantity`): each is followed from that quantity. Orders still open were
          adopted by `start`; the others are looked up by client id (legs included). What
          they executed beyond it (between the checkpoint and the crash, or while the
          daemon was down) is reported as one fill by the next `updates()`, with the id an
          uninterrupted process would have given its last execution (`<id>#<cumulative
          qty>`), and a state that changed (filled, cancelled, expired, a leg released) as
          an order update. Rule `executed_since_checkpoint` / `state_changed`. Known but
          unknown to Alpaca (404): closed here as cancelled and reported
          (`known_missing`). Alpaca reporting less filled than the book holds: the book's
          quantity is kept as the baseline (`broker_behind_book`: nothing is taken back).
          Alpaca's filled quantity unreadable: the book's is the baseline too, and what
          Alpaca executed beyond it is reported once it can be read (`filled_unreadable`).
          The order keeps the engine's quantity (what was sent), and Alpaca's answer is
          checked against it as every answer is (`_within_sent`): nothing beyond it is
          reported, another `qty` or a `filled_qty` above it is an
          `alpaca.order_answer_mismatch` error.
        * `unconfirmed`, the intents stored after the checkpoint: each is looked up. At
          Alpaca: followed from nothing filled (the book holds none of its executions),
          so all of them are reported as fills, and its state as an order update (the
          store dropped its rows); a resubmit of the id returns it without a request
          (`placed_before_crash`). Not at Alpaca: it never got there; a later submit of
          the id is a first send, so a 422 duplicate answer to it can only be this
          process's own earlier attempt, followed from nothing filled (`never_sent`).
          An entry whose id does not name the bar it was created at is not an intent but
          a row the engine stored from this broker's reports (an adopted order, at
          Alpaca's time): it is not followed from nothing filled (`not_an_intent`).
        * Orders open at Alpaca for the universe that are neither (placed by hand, or by
          another run): kept as `start` adopted them, as they stand (working, listed by
          `open_orders`, so the planner sees them and leaves their symbol alone while an
          entry works; only their later executions are reported, and the engine books
          none of them: they are not its run's, see `origin`, and the position they move
          is a difference for its reconciliation), with one
          `alpaca.reconcile.unknown_order` warning each, counted in
          `status()["unknown_orders"]` (`adopted_as_it_stands`).

        Every difference is logged as `alpaca.reconcile.<rule>`. Calls go through the
        request budget, timeouts and retries of every call; failing to reach Alpaca raises
        RetryableError before anything is changed, so calling `resume` again (after a
        backoff) is safe; once it has succeeded it must not be called again (the fills it
        reported would be reported twice): a second call raises RuntimeError."""
        self._require_client()
        if self._resumed:
            raise RuntimeError("AlpacaBroker.resume() was called twice")
        self._drain()
        known = {o.client_order_id: o for o in known_open}
        unsent: dict[str, Order] = {}
        for o in unconfirmed:
            if o.client_order_id in known:
                continue
            if not _is_intent(o):
                # A row the engine stored from an update of this broker (an adopted order,
                # whose time is Alpaca's), not an intent: following it from nothing filled
                # would report again what was booked, or what it did before it was adopted.
                log.warning(
                    "alpaca.reconcile.not_an_intent",
                    client_order_id=o.client_order_id,
                    rule="not followed from nothing filled; an open one is adopted as it stands",
                )
                continue
            unsent[o.client_order_id] = o
        engine: dict[str, Order] = {**unsent, **known}
        groups: dict[str, list[Order]] = {}
        for o in engine.values():
            groups.setdefault(self._root_of(o, engine), []).append(o)
        # Look up, by client id, every Alpaca order of which a member is not followed yet.
        # Read as engine orders here, before anything is changed: an answer that cannot be
        # (an order without a time) raises the malformed-answer RetryableError.
        found: dict[str, Mapping[str, Any] | None] = {}
        parts: dict[str, list[tuple[Order, Mapping[str, Any]]]] = {}
        for root, members in groups.items():
            followed = (self._get(m.client_order_id) for m in members)
            if not all(t is not None and t.alpaca_id is not None for t in followed):
                raw = found[root] = await self._existing(root, strict=True)
                if raw is not None:
                    parts[root] = self._read_orders(
                        raw,
                        "get_order_by_client_id",
                        f"lookup {root}",
                        self._leg_ids(root, members),
                    )
        await self._trace_origins()
        # No await from here on: the stream's updates wait in the queue (or, for orders not
        # followed yet, among the orphans) and are applied after the new baselines.
        stats = {"fills": 0, "changed": 0, "placed": 0, "not_sent": 0, "missing": 0}
        for root, raw in found.items():
            members = groups[root]
            if raw is not None:
                self._adopt(raw, parts[root])
                self._queue_replacement(raw, root)
                continue
            for m in members:
                cid = m.client_order_id
                if cid in unsent:
                    self._attempt(cid)
                    stats["not_sent"] += 1
                    log.info(
                        "alpaca.reconcile.never_sent",
                        client_order_id=cid,
                        rule="a later submit of this id is a first send",
                    )
                elif self._get(cid) is None:
                    self._missing(m)
                    stats["missing"] += 1
        settle: list[_Tracked] = []
        for cid, e in engine.items():
            t = self._get(cid)
            if t is None or (cid in unsent and t.alpaca_id is None):
                continue
            outcome = self._rebase(t, e, unconfirmed=cid in unsent)
            for key in outcome:
                stats[key] += 1
            if "fills" in outcome:
                settle.append(t)
        for t in settle:
            self._settle_group(t, True)
        for cid in engine:
            t = self._get(cid)
            if t is not None and t.alpaca_id is not None:
                self._replay(t.alpaca_id)
        unknown = 0
        for root in self._adopted_roots:
            if root in groups or root in engine:
                continue
            t = self._get(root)
            if t is None:
                continue
            tracked = [t, *(c for cid in t.children if (c := self._get(cid)) is not None)]
            if any(m.order.client_order_id in engine for m in tracked):
                continue
            if t.replaces is not None and t.replaces in self._replacements:
                continue  # the next in a chain of edits of ours: followed at the next poll
            unknown += 1
            log.warning(
                "alpaca.reconcile.unknown_order",
                client_order_id=root,
                symbol=t.order.symbol,
                side=str(t.order.side),
                quantity=t.order.quantity,
                filled=t.order.filled_quantity,
                status=str(t.order.status),
                legs=len(t.children),
                rule="adopted_as_it_stands: followed and listed as working; its executions "
                "are not this run's (not booked: a difference for reconciliation)",
            )
        self._adopted_roots.clear()
        self._unknown_orders += unknown
        self._resumed = True
        self._orders_are_known()
        log.info(
            "alpaca.resumed",
            known_open=len(known),
            unconfirmed=len(unsent),
            looked_up=len(found),
            fills=stats["fills"],
            changed=stats["changed"],
            placed_before_crash=stats["placed"],
            never_sent=stats["not_sent"],
            known_missing=stats["missing"],
            unknown_orders=unknown,
        )

    async def _trace_origins(self) -> None:
        """Whose the orders `start` adopted that replaced another are (`origin`): an order
        of ours edited at Alpaca before the restart is followed under the replacement's
        client id (Alpaca's), which only its chain of `replaces` leads back to ours; without
        it, its fills after the restart were not this run's. One read per edit, at most
        `_EDIT_CHAIN_LIMIT` an order (then the oldest found stands for it). RetryableError
        while Alpaca cannot answer, or answers something that is no order (before `resume`
        has changed anything): taken for the chain's end, such an answer left the
        replacement standing for nobody of this run."""
        client = self._require_client()
        edited = [t for t in self._open.values() if t.adopted and t.replaces]
        for t in edited:
            if t.origin is not None or t.parent is not None:
                continue
            aid, origin = t.replaces, None
            for _ in range(_EDIT_CHAIN_LIMIT):
                try:
                    raw = await self._call(
                        "get_order", client.get_order_by_id, aid, GetOrderByIdRequest(nested=False)
                    )
                except APIError as e:
                    if error_info(e).status == 404:
                        break
                    raise RetryableError(
                        f"Alpaca at {self._endpoint}: reading edited order {aid} failed: "
                        f"{self._scrub(error_info(e).reason)}"
                    ) from None
                except _Unreachable as e:
                    raise self._unreachable(f"reading edited order {aid}", e) from None
                problem = self._not_the_order(raw, str(aid))
                if problem is not None:
                    raise self._malformed("get_order", f"reading edited order {aid}", problem)
                assert isinstance(raw, Mapping)
                origin = str(raw.get("client_order_id") or "") or origin
                aid = str(raw.get("replaces") or "") or None
                if aid is None:
                    break
            for member in self._group_of(t) if origin else ():
                member.origin = origin

    def _queue_replacement(self, raw: Mapping[str, Any], replaced: str) -> None:
        """`raw`, an order we follow (client id `replaced`), replaced at Alpaca (an
        operator's edit in the web UI, PATCH; live, or while the daemon was down): its
        replacement is a new order with a new client id, standing for `replaced` (`origin`),
        followed from nothing filled once the next poll has read it (`_follow_replacement`).
        An order `start` adopted as it stood is taken back for it (`_drop_adoption`); one
        followed already is left as it is."""
        by = str(raw.get("replaced_by") or "") if str(raw.get("status")) == "replaced" else ""
        if not by or (by in self._by_alpaca_id and not self._drop_adoption(by)):
            return
        self._replacements[by] = replaced
        while len(self._replacements) > self._config.closed_history:
            self._replacements.popitem(last=False)
        self._poll_requested = True
        self._wake.set()

    def _drop_adoption(self, aid: str) -> bool:
        """Stop following an order `start` adopted as it stood, because it replaced one of
        ours (edited at Alpaca while the daemon was down, perhaps more than once): it is
        followed again as the replacement, from nothing filled. False for an order this
        process placed or already follows as a replacement."""
        cid = self._by_alpaca_id.get(aid)
        t = self._get(cid) if cid is not None else None
        if t is None or not t.adopted:
            return False
        self._adopted_roots.pop(t.order.client_order_id, None)
        self._forget_alpaca_id(aid)
        return True

    @staticmethod
    def _root_of(o: Order, engine: Mapping[str, Order]) -> str:
        """The client id of the Alpaca order that carries `o`: a bracket leg's entry, an
        OCO pair's limit (Alpaca's `oco` order is the take-profit with the stop as its
        leg), else its own."""
        if o.parent_id is not None:
            return o.parent_id
        if o.oco_group is not None and o.type is not OrderType.LIMIT:
            for m in engine.values():
                if (
                    m.oco_group == o.oco_group
                    and m.parent_id is None
                    and m.type is OrderType.LIMIT
                    and m.client_order_id != o.client_order_id
                ):
                    return m.client_order_id
            derived = leg_client_order_id(o.client_order_id, Leg.TAKE_PROFIT)
            if derived is not None:
                return derived
        return o.client_order_id

    @staticmethod
    def _leg_ids(root: str, members: Sequence[Order]) -> dict[Leg, str]:
        """The engine's ids of an Alpaca order's legs, by role."""
        out: dict[Leg, str] = {}
        for m in members:
            if m.client_order_id != root:
                role = Leg.TAKE_PROFIT if m.type is OrderType.LIMIT else Leg.STOP_LOSS
                out.setdefault(role, m.client_order_id)
        return out

    def _rebase(self, t: _Tracked, e: Order, *, unconfirmed: bool) -> list[str]:
        """Follow `t` (as Alpaca has it now) from what the engine booked of it (`e`'s
        filled quantity; nothing for an unconfirmed intent): the executions beyond become
        one fill, a different state an order update. Returns what it found."""
        cid = e.client_order_id
        order = t.order
        # Fills and changes derived since `start` were reckoned from the adoption's
        # baseline ("as it stands"): they are replaced by the ones from the engine's.
        self._pending_fills = [f for f in self._pending_fills if f.client_order_id != cid]
        current, current_avg, status = order.filled_quantity, order.avg_fill_price, order.status
        answered_qty = order.quantity  # Alpaca's, as the adoption or the look-up read it
        # The engine's description (ids, times, legs, groups) and quantity (what was sent);
        # state: Alpaca's.
        if math.isfinite(e.quantity) and e.quantity > 0:
            order.quantity = e.quantity
        order.created_at = e.created_at
        order.leg = e.leg
        order.parent_id = e.parent_id
        order.oco_group = e.oco_group
        order.trail_pct = e.trail_pct if e.trail_pct is not None else order.trail_pct
        order.limit_price = e.limit_price if e.limit_price is not None else order.limit_price
        order.stop_price = e.stop_price if e.stop_price is not None else order.stop_price
        order.bars_open = e.bars_open
        booked = 0.0 if unconfirmed else max(e.filled_quantity, 0.0)
        order.filled_quantity = booked
        order.avg_fill_price = e.avg_fill_price if booked > EPS else math.nan
        if not t.filled_unreadable:
            # The check of every answer (`_within_sent`) against the quantity sent: Alpaca's
            # filled_qty of 50 on a 5-share order was reported as one fill of 50 here.
            read = {"qty": qty_key(answered_qty), "filled_qty": qty_key(current)}
            current = self._within_sent(t, read, current)
        outcome: list[str] = []
        tolerance = EPS * max(1.0, current, booked)
        if current - booked > tolerance:
            fill = self._fill(
                order,
                {"filled_avg_price": current_avg},
                None,
                current,
                (order.updated_at or _now()),
            )
            if fill is not None:
                outcome.append("fills")
                log.info(
                    "alpaca.reconcile.executed_since_checkpoint",
                    client_order_id=cid,
                    booked=booked,
                    filled_at_alpaca=current,
                    fill_id=fill.fill_id,
                    quantity=fill.quantity,
                    price=fill.price,
                    rule="reported as one fill by the next update"
                    + (" (unconfirmed intent: from nothing filled)" if unconfirmed else ""),
                )
            elif not status.is_open:
                # Closed at Alpaca with executions it has not priced yet: followed as working
                # (and polled) until it does, as `_apply` does, or they are never booked.
                order.status = e.status if e.status.is_open else OrderStatus.NEW
                status = order.status
                self._closed.pop(cid, None)
                self._open[cid] = t
                self._verify.add(cid)
        elif t.filled_unreadable:
            # Not Alpaca behind the book: its number cannot be read (warned of as
            # `alpaca.order.filled_qty_unreadable`). Said once an order: `resume` rebases each
            # once, and a second `resume` raises.
            log.warning(
                "alpaca.reconcile.filled_unreadable",
                client_order_id=cid,
                booked=booked,
                status=str(status),
                rule="the book's quantity stays the baseline; what Alpaca executed beyond it "
                "is booked once it gives a readable filled_qty (the order is followed and read "
                "again meanwhile)",
            )
        elif booked - current > tolerance:
            log.warning(
                "alpaca.reconcile.broker_behind_book",
                client_order_id=cid,
                booked=booked,
                filled_at_alpaca=current,
                rule="the book's quantity stays the baseline; nothing is taken back",
            )
        if unconfirmed:
            outcome.append("placed")
            log.info(
                "alpaca.reconcile.placed_before_crash",
                client_order_id=cid,
                status=str(status),
                filled_at_alpaca=None if t.filled_unreadable else current,
                rule="followed from nothing filled; a resubmit returns this order",
            )
        elif status is not e.status:
            log.info(
                "alpaca.reconcile.state_changed",
                client_order_id=cid,
                at_checkpoint=str(e.status),
                at_alpaca=str(status),
                rule="reported as an order update",
            )
        if unconfirmed or status is not e.status or outcome:
            outcome.append("changed")
            t.told = None if unconfirmed else e.status
            order.updated_at = order.updated_at or _now()
            self._on_change(t, report=True)
        else:
            t.told = e.status
        return outcome

    def _missing(self, e: Order) -> None:
        """An order open at the checkpoint that Alpaca does not know (404)."""
        reason = "alpaca: order not found after restart (HTTP 404)"
        order = e.snapshot()
        order.status = OrderStatus.CANCELLED
        order.reason = reason
        order.updated_at = _now()
        t = _Tracked(order=order, told=e.status)
        self._remember_closed(t)
        self._pending_orders[order.client_order_id] = None
        log.warning(
            "alpaca.reconcile.known_missing",
            client_order_id=order.client_order_id,
            rule="closed here as cancelled and reported; its booked fills stand",
        )

    # ------------------------------------------------------------------------- commands

    async def submit(self, orders: Sequence[Order]) -> list[Order]:
        self._require_client()
        self._orders_are_known()
        self._drain()
        results: dict[str, Order] = {}
        units: list[Unit] = []
        for item in plan_submission(orders):
            if isinstance(item, LocalRejection):
                cid = item.order.client_order_id
                known = self._get(cid)
                if known is not None:
                    known.told = known.order.status
                results[cid] = (
                    known.order.snapshot()
                    if known is not None
                    else self._reject(item.order, item.reason)
                )
            else:
                units.append(item)
        if units and await self._keys_still_refused():
            # Keys refused (revoked mid-run): as with a broker that cannot be reached, the
            # orders are not sent, closed as not placed (the engine decides again at the next
            # bar); sent, each was refused with the same 401, an error line per order.
            refusal = self._keys_error("orders are")
            not_sent, placed = self._not_sent(units, refusal)
            results.update(placed)
            raise self._cut_short(refusal, results, not_sent)
        # Waves of one side, sells first (they free buying power); within a wave up to
        # `max_in_flight` requests at once. A failure with an unknown outcome ends the batch
        # after the wave in flight has been answered, so nothing sent is left unrecorded.
        gate = asyncio.Semaphore(self._config.max_in_flight)

        async def send(unit: Unit) -> dict[str, Order]:
            async with gate:
                self._submitting += 1
                try:
                    return await self._submit_unit(unit)
                finally:
                    self._submitting -= 1
                    if not self._submitting:
                        self._ask_about_orphans()

        waves = [[u for u in units if u.primary.side is side] for side in (Side.SELL, Side.BUY)]
        for n, wave in enumerate(waves):
            outcomes = await asyncio.gather(*(send(u) for u in wave), return_exceptions=True)
            failed: RetryableError | None = None
            refused: list[Unit] = []
            for outcome in outcomes:
                if isinstance(outcome, _KeysRefused):
                    refused.append(outcome.unit)  # not placed: closed as not sent
                    failed = failed or outcome
                elif isinstance(outcome, RetryableError):
                    failed = failed or outcome
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    results.update(outcome)
            if failed is not None:
                later = [*refused, *(u for w in waves[n + 1 :] for u in w)]
                not_sent, placed = self._not_sent(later, failed)
                results.update(placed)
                raise self._cut_short(failed, results, not_sent) from None
        return [results[o.client_order_id].snapshot() for o in orders]

    @staticmethod
    def _cut_short(
        failed: RetryableError, results: Mapping[str, Order], not_sent: list[Order]
    ) -> SubmitCutShort:
        return SubmitCutShort(
            f"{failed}; {len(results)} order(s) of the batch were answered, "
            f"{len(not_sent)} not sent (closed as cancelled); resubmitting the same "
            "orders is safe (duplicate client_order_ids return the existing orders)",
            answered=list(results.values()),
            not_sent=not_sent,
        )

    def _not_sent(
        self, units: Sequence[Unit], failed: RetryableError
    ) -> tuple[list[Order], dict[str, Order]]:
        """The orders of a batch's later waves after a wave failed: (never sent, closed as
        cancelled with the reason; the tracked state of those this broker already follows).
        Not followed: Alpaca never had them, and the same id sent again later is a first
        send. An order already followed (placed by an earlier submit, or found at Alpaca by
        a resume's look-up: a resumed plan or a retry holding it again) is at Alpaca: its
        tracked state is reported, never closed as not placed."""
        reason = f"not placed: the broker failed before it was sent ({failed})"
        out = []
        placed: dict[str, Order] = {}
        for unit in units:
            for member in unit.members:
                known = self._get(member.client_order_id)
                if known is not None:
                    known.told = known.order.status
                    placed[member.client_order_id] = known.order.snapshot()
                    continue
                out.append(_closed(member, OrderStatus.CANCELLED, reason))
        if out:
            log.warning(
                "alpaca.order.not_sent",
                client_order_ids=[o.client_order_id for o in out],
                error=str(failed),
                rule="closed as cancelled: never sent; the next bar decides again",
            )
        return out, placed

    async def cancel(self, client_order_id: str, reason: str) -> Order | None:
        client = self._require_client()
        self._orders_are_known()
        self._drain()
        t = self._get(client_order_id)
        if t is None:
            return None
        if not t.order.status.is_open:
            t.told = t.order.status
            return t.order.snapshot()
        t.cancel_reason = reason or "cancelled"
        if client_order_id in self._unconfirmed:
            await self._resolve_unconfirmed(t)  # it may be at Alpaca: cancel it there
            if not t.order.status.is_open:
                t.told = t.order.status
                return t.order.snapshot()
        if t.alpaca_id is None:
            # Alpaca never named this leg to us; nothing to cancel there by id.
            self._close_locally(t, OrderStatus.CANCELLED, t.cancel_reason)
        else:
            if await self._keys_still_refused():
                raise self._keys_error(f"the cancel of {client_order_id} is")
            refused = None
            try:
                await self._call("cancel_order", client.cancel_order_by_id, t.alpaca_id)
            except APIError as e:
                refused = error_info(e)
                if refused.retryable or _refuses_keys(refused):
                    raise RetryableError(
                        f"Alpaca at {self._endpoint}: cancel of {client_order_id} failed: "
                        f"{self._scrub(refused.reason)}"
                    ) from None
            except _Unreachable as e:
                raise self._unreachable(f"cancel {client_order_id}", e) from None
            if refused is None:
                await self._confirm_closed(t)
            else:
                # 422 "not cancelable" (filled or closed meanwhile), 404: see what it is.
                log.info(
                    "alpaca.cancel.refused",
                    client_order_id=client_order_id,
                    reason=self._scrub(refused.reason),
                )
                try:
                    known = await self._refresh(t)
                except (APIError, _Unreachable) as e:
                    raise RetryableError(
                        f"Alpaca at {self._endpoint}: cancel of {client_order_id} refused "
                        f"({self._scrub(refused.reason)}) and its state unreadable: "
                        f"{self._scrub(e)}"
                    ) from None
                if not known:
                    self._close_locally(
                        t, OrderStatus.CANCELLED, f"{t.cancel_reason}; {refused.reason}"
                    )
        # The caller gets this order's final state now; only the cascade waits for on_bar.
        if not t.order.status.is_open:
            self._pending_orders.pop(client_order_id, None)
        else:
            log.warning(
                "alpaca.cancel.unconfirmed",
                client_order_id=client_order_id,
                status=str(t.order.status),
                waited_s=self._config.cancel_confirm_timeout_s,
            )
        t.told = t.order.status
        return t.order.snapshot()

    async def on_bar(self, bar: CrossSection) -> BrokerUpdate:
        if not self._assets_read and self._asset_clock() >= self._assets_due:
            await self._read_assets()
        if self._untradable:
            await self._recheck_untradable()
        return await self.updates()

    def untradable(self) -> dict[str, str]:
        """Symbols whose orders Alpaca refuses as not tradable, each with Alpaca's words and
        since when: the engine places no order in them (`Engine._hold_unreconciled`), shows
        them in /ready and alerts on them, until their asset is tradable again."""
        return {s: f"{h.reason}, since {_iso(h.since)}" for s, h in self._untradable.items()}

    def _hold_untradable(self, symbol: str, reason: str) -> None:
        """Alpaca refused an order in `symbol` as not tradable: held (`untradable`), said
        once as a warning; its asset is looked at again after `_UNTRADABLE_FIRST_S`."""
        if symbol in self._untradable:
            return
        first = _UNTRADABLE_FIRST_S
        self._untradable[symbol] = _Untradable(reason, _now(), first, self._asset_clock() + first)
        log.warning(
            "alpaca.asset_untradable",
            symbol=symbol,
            reason=reason,
            rule=f"Alpaca refuses orders in {symbol}: no new order in it until Alpaca's asset "
            f"is tradable again (looked at after {first:g} s, the wait doubling up to "
            f"{_UNTRADABLE_MAX_S:g} s); its position and working orders stay as they are: "
            "check the asset at Alpaca (delisted, halted, renamed)",
        )

    async def _recheck_untradable(self) -> None:
        """The held untradable symbols whose wait is over: their asset read (GET
        /v2/assets/{symbol}); tradable and active, the hold ends (`alpaca.asset_tradable_
        again`), else (or no answer) the wait doubles, up to `_UNTRADABLE_MAX_S`. Never
        raises: a failed look is tried again after the next wait."""
        now = self._asset_clock()
        due = [s for s, h in self._untradable.items() if h.due <= now]
        if not due:
            return
        client = self._require_client()
        for symbol in due:
            held = self._untradable[symbol]
            try:
                raw = await self._call("get_asset", client.get_asset, symbol)
            except (APIError, _Unreachable) as e:
                answer = self._scrub(error_info(e).reason if isinstance(e, APIError) else str(e))
                log.debug("alpaca.asset_unread", symbol=symbol, error=answer)
                raw = None
            if _not_tradable(raw) is None:
                del self._untradable[symbol]
                log.info("alpaca.asset_tradable_again", symbol=symbol, since=_iso(held.since))
                continue
            held.wait_s = min(held.wait_s * 2, _UNTRADABLE_MAX_S)
            held.due = self._asset_clock() + held.wait_s

    async def _read_assets(self) -> None:
        """The universe's assets at Alpaca, read at start (`start`; after a failed read, at a
        bar once a back-off has passed): those it does not trade are held (`_hold_
        untradable`) before the first bar. The hold lived in memory only: a restarted daemon
        sent one more refused order in each, and its `untradable_asset` alert resolved, then
        fired again. Alpaca's answer, not a stored copy: an asset that trades again while the
        daemon was down is not held. A symbol Alpaca does not answer for (not listed, 404)
        is not held: its order is refused and held then, as before. Never raises."""
        symbols = sorted(self._symbols or ())
        try:
            if len(symbols) <= _ASSET_READS_ONE_BY_ONE:
                answers = await self._assets_one_by_one(symbols)
            else:
                answers = await self._assets_listed(symbols)
        except (APIError, _Unreachable) as e:
            answer = self._scrub(error_info(e).reason if isinstance(e, APIError) else str(e))
            wait = self._assets_wait_s
            self._assets_due = self._asset_clock() + wait
            self._assets_wait_s = min(wait * 2, _UNTRADABLE_MAX_S)
            log.warning(
                "alpaca.assets_unread",
                symbols=len(symbols),
                error=answer,
                retry_in_s=wait,
                rule="the symbols Alpaca does not trade are not known: one whose order is "
                "refused as not tradable is held then; the assets are read again at a bar "
                f"after the wait (doubling up to {_UNTRADABLE_MAX_S:g} s)",
            )
            return
        self._assets_read = True
        for symbol in symbols:
            raw = answers.get(_symbol_key(symbol))
            why = None if raw is None else _not_tradable(raw, symbol)
            if why is not None:
                self._hold_untradable(symbol, why)

    async def _assets_one_by_one(self, symbols: Sequence[str]) -> dict[str, Any]:
        """`symbols`' assets (GET /v2/assets/{symbol}, at once, within the request budget):
        by `_symbol_key`, a 404's (no such asset) missing. Raises APIError or _Unreachable."""
        client = self._require_client()

        async def one(symbol: str) -> tuple[str, Any]:
            try:
                return symbol, await self._call("get_asset", client.get_asset, symbol)
            except APIError as e:
                if error_info(e).status == 404:
                    return symbol, None
                raise

        answers = await asyncio.gather(*(one(s) for s in symbols), return_exceptions=True)
        found: dict[str, Any] = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            symbol, raw = answer
            if raw is not None and not isinstance(raw, Mapping):
                raise self._unreadable("get_asset", f"{symbol}: {type(raw).__name__}, no asset")
            if raw is not None:
                found[_symbol_key(symbol)] = raw
        return found

    async def _assets_listed(self, symbols: Sequence[str]) -> dict[str, Any]:
        """`symbols`' assets from one listing of Alpaca's US equities (GET /v2/assets, all
        statuses: a delisted one is listed inactive), by `_symbol_key`. Raises APIError or
        _Unreachable (also for an answer that is no list)."""
        client = self._require_client()
        request = GetAssetsRequest(asset_class=AssetClass.US_EQUITY)
        raw = await self._call("get_all_assets", client.get_all_assets, request)
        if not isinstance(raw, list):
            raise self._unreadable("get_all_assets", f"{type(raw).__name__}, not a list")
        wanted = {_symbol_key(s) for s in symbols}
        found: dict[str, Any] = {}
        for asset in raw:
            if not isinstance(asset, Mapping):
                continue
            key = _symbol_key(asset.get("symbol"))
            # A ticker a delisted company left and a new one took is listed twice (the old
            # asset inactive): the tradable one is the symbol's, whichever comes first.
            if key in wanted and (key not in found or _not_tradable(asset) is None):
                found[key] = asset
        return found

    async def updates(self, *, poll: bool = True) -> BrokerUpdate:
        """Fills and order changes received since the last call. Between bars too: the
        engine asks once more when it stops, so fills that came after the last bar are
        booked and stored, not left at the broker only. `poll=False`: only what the stream
        and the broker's own polls have received, no request (the engine's fill booker,
        woken by a fill a poll had just found, polled again under the bar lock, and a bar
        due meanwhile waited for that request)."""
        self._orders_are_known()
        self._drain()
        if poll and (
            (self._open and not self._stream_up) or self._unconfirmed or self._replacements
        ):
            await self._poll_quietly()
        fills, self._pending_fills = self._pending_fills, []
        changed, self._pending_orders = list(self._pending_orders), {}
        orders = []
        for cid in changed:
            t = self._get(cid)
            if t is not None:
                t.told = t.order.status
                orders.append(t.order.snapshot())
        return BrokerUpdate(fills=fills, orders=orders)

    async def fills_arrived(self) -> None:
        """Return once a fill has arrived (from the stream or a poll) since the last
        return: the engine then asks `updates` for it between bars, which hands each fill
        over once, whoever asks first (this, a bar, a reconciliation, the stop)."""
        await self._fills_waiting.wait()
        self._fills_waiting.clear()

    async def check_open_orders(self) -> None:
        """The followed open orders checked at Alpaca now, whatever the stream's state (the
        periodic check's pass: the open orders listed, each followed one missing from them
        read by id, at most `_REREAD_LIMIT`): what it finds is handed over by `updates`.
        For the engine when the stream may have lost a fill event while the connection
        stayed up (Alpaca's known behaviour): a reconciliation that finds a difference
        beside an order of ours, and the stop. `updates` polls only with the stream down
        (or an order to look up), so such a fill waited for the periodic check
        (`open_orders_check_s`, 300 s): reconciliation blocked the symbol as unexplained
        meanwhile, and a run that ended before it never stored the fill. Each request is
        bounded as every call is (`call_timeout_s`, `max_attempts`). Raises RetryableError
        when Alpaca cannot be reached."""
        self._orders_are_known()
        if self._open or self._replacements or self._unconfirmed:
            await self.poll(only_open=True)

    async def poll(self, *, only_open: bool = False) -> None:
        """One reconciliation pass over the open orders (GET /v2/orders status=all from the
        oldest open order on, then each open order not listed by id). `only_open`: the
        periodic check while the stream is up lists the open orders only, flat (legs as
        rows of their own), and reads by id the followed orders missing from them, at most
        `_REREAD_LIMIT` a check: status=all from the oldest open order listed the whole
        account history since a weeks-old GTC stop, every check. Raises
        RetryableError when Alpaca cannot be reached; the broker's own polling catches
        that."""
        client = self._require_client()
        async with self._poll_lock:
            self._drain()
            for aid in list(self._replacements):
                await self._follow_replacement(client, aid)
            for cid in list(self._unconfirmed):
                t = self._get(cid)
                if t is None:
                    self._unconfirmed.discard(cid)
                    continue
                await self._resolve_unconfirmed(t)  # RetryableError while Alpaca is away
            tracked = [t for t in self._open.values() if t.alpaca_id is not None]
            seen: set[str] = set()
            try:
                times = [t.submitted_at for t in tracked if t.submitted_at is not None]
                if times:
                    since = min(times) - timedelta(seconds=1)
                    if only_open:
                        # Flat: a filled bracket's working legs are rows of their own. Nested,
                        # Alpaca lists them under their entry only while it is open, and each
                        # was read by id: two requests a position, every check.
                        await self._poll_list(
                            client, since, seen, QueryOrderStatus.OPEN, nested=False
                        )
                    else:
                        await self._poll_list(client, since, seen, QueryOrderStatus.ALL)
                missing = [t for t in tracked if t.alpaca_id not in seen]
                if only_open:
                    missing = self._bounded_rereads(missing)
                for t in missing:
                    if t.order.status.is_open and not await self._refresh(t):
                        self._close_locally(
                            t, OrderStatus.CANCELLED, "alpaca: order not found (HTTP 404)"
                        )
            except APIError as e:
                raise RetryableError(
                    f"Alpaca at {self._endpoint}: order poll failed: "
                    f"{self._scrub(error_info(e).reason)}"
                ) from None
            except _Unreachable as e:
                raise self._unreachable("order poll", e) from None
            self._verify &= self._open.keys()
            self._uncounted &= self._open.keys()
            self._unpriced &= self._open.keys()  # closed unpriced (404, cancelled): forgotten
            self._last_poll_at = _now()
            self._last_poll_mono = time.monotonic()

    # ------------------------------------------------------------------------- submission

    async def _submit_unit(self, unit: Unit) -> dict[str, Order]:
        client = self._require_client()
        primary = unit.primary
        members = unit.members
        known = self._get(primary.client_order_id)
        if known is not None:
            log.warning(
                "alpaca.duplicate_client_order_id",
                client_order_id=primary.client_order_id,
                status=str(known.order.status),
                source="local",
            )
            out = {}
            for m in members:
                t = self._get(m.client_order_id)
                if t is not None:
                    t.told = t.order.status
                out[m.client_order_id] = (
                    t.order.snapshot()
                    if t is not None
                    else self._reject(
                        m,
                        f"entry {primary.client_order_id} was submitted before: Alpaca "
                        "attaches legs only to a new entry",
                    )
                )
            return out

        problems = [(m, validate(m)) for m in members]
        bad = [(m, why) for m, why in problems if why]
        if bad:
            first, why = bad[0]
            return {
                m.client_order_id: self._reject(
                    m, why if m is first else f"{unit.kind} member {first.client_order_id}: {why}"
                )
                for m in members
            }
        cfg = self._config
        try:
            request = build_request(
                unit,
                time_in_force=cfg.time_in_force,
                exit_time_in_force=cfg.exit_time_in_force,
                bracket_time_in_force=cfg.bracket_time_in_force,
                extended_hours=cfg.extended_hours,
            )
        except (ValueError, TypeError) as e:
            why = self._scrub(str(e).splitlines()[0] if str(e) else type(e).__name__)
            return {m.client_order_id: self._reject(m, f"invalid order: {why}") for m in members}

        if self._keys_refused is not None:
            # Another order of the wave was just answered 401: this one is not sent.
            raise _KeysRefused(str(self._keys_error("orders are")), unit)
        try:
            raw = await self._call(
                "submit_order", client.submit_order, request, uncertain=primary.client_order_id
            )
        except APIError as e:
            info = error_info(e)
            if _refuses_keys(info) and self._keys_refused is not None:
                # Refused before it was read: not placed, closed as not sent (`submit`).
                raise _KeysRefused(str(self._keys_error("orders are")), unit) from None
            if info.duplicate:
                try:
                    existing = await self._existing(primary.client_order_id)
                except RetryableError:
                    # Alpaca holds this id (the 422 says so): read again at the next poll.
                    # Given up here, the order was neither listed nor its fill booked.
                    self._follow_unconfirmed(unit)
                    raise
                if existing is not None:
                    log.warning(
                        "alpaca.duplicate_client_order_id",
                        client_order_id=primary.client_order_id,
                        status=str(existing.get("status")),
                        source="alpaca",
                    )
                    fresh = primary.client_order_id in self._attempted
                    return self._track_unit(unit, existing, fresh=fresh)
            if info.status is not None and info.status >= 500:
                self._follow_unconfirmed(unit)
                raise RetryableError(
                    f"Alpaca at {self._endpoint} failed to answer an order "
                    f"({self._scrub(info.reason)}); its outcome is unknown"
                ) from None
            reason = self._scrub(info.reason)
            if primary.side is Side.SELL and info.holds_fewer_than(primary.quantity):
                self._shares_not_held(primary, info, reason)
            elif info.transient_refusal:
                for m in members:
                    self._remember(self._transient, m.client_order_id)
            elif info.untradable:
                self._hold_untradable(primary.symbol, reason)
            return {m.client_order_id: self._reject(m, reason) for m in members}
        except _Unreachable as e:
            self._follow_unconfirmed(unit)
            raise self._unreachable(
                f"submit {primary.client_order_id} (outcome unknown)", e
            ) from None
        if not isinstance(raw, Mapping) or not raw.get("id"):
            self._follow_unconfirmed(unit)
            raise RetryableError(
                f"Alpaca at {self._endpoint} answered an order without an id; outcome unknown"
            )
        return self._track_unit(unit, raw, fresh=True)

    def _follow_unconfirmed(self, unit: Unit) -> None:
        """An order whose POST may have reached Alpaca (its answer never came): followed
        under its client id, so its stream events are taken (not parked for good), it is
        listed by `open_orders` (the next bar's plan waits for it instead of sending the
        same decision again under a new id: two orders at Alpaca), and the next poll looks it
        up (`_resolve_unconfirmed`). Reported from nothing filled: this process placed it."""
        if self._get(unit.primary.client_order_id) is not None:
            return
        group = "" if unit.kind == "simple" else unit.kind
        base = self._register(unit.primary, None, group=group)
        for member in unit.members[1:]:
            self._register(member, None, group=group, parent=base)
        self._unconfirmed.add(unit.primary.client_order_id)
        log.warning(
            "alpaca.order.unconfirmed",
            client_order_id=unit.primary.client_order_id,
            rule="its POST's outcome is unknown: followed by client id and looked up at "
            "the next poll; not sent again",
        )

    async def _resolve_unconfirmed(self, t: _Tracked) -> None:
        """Look up an order whose POST's outcome was unknown: found, it is followed as any
        other (its fills so far reported); not at Alpaca, it was never placed and is closed
        (cancelled, with the reason), so the next bar may decide again. Raises
        RetryableError while Alpaca cannot answer."""
        cid = t.order.client_order_id
        raw = await self._existing(cid, strict=True)
        self._unconfirmed.discard(cid)
        if raw is None:
            log.warning("alpaca.order.not_placed", client_order_id=cid)
            self._close_locally(
                t,
                OrderStatus.CANCELLED,
                "not placed: its POST's outcome was unknown and Alpaca has no order with "
                "this client id",
            )
            for child_id in list(t.children):
                child = self._get(child_id)
                if child is not None and child.order.status.is_open:
                    self._close_locally(child, OrderStatus.CANCELLED, t.order.reason)
            return
        log.info("alpaca.order.found", client_order_id=cid, status=str(raw.get("status")))
        self._link(t, raw)
        self._apply(raw, report=True)
        for member in (t, *(self._get(c) for c in t.children)):
            if member is not None and member.alpaca_id is not None:
                self._replay(member.alpaca_id)

    async def _follow_replacement(self, client: TradingClient, aid: str) -> None:
        """Follow the order that replaced one we follow at Alpaca (an operator's edit), from
        nothing filled: its fills are those of the order it replaced (`origin`). Before, it
        was unknown: its events were parked, its fills never booked, and the symbol's
        position differed from the book.
        Raises RetryableError while Alpaca cannot answer, or answers something that is no
        order (an error body, a list) or an order that cannot be read (no time): it stays to
        be read at the next poll. Such an answer dropped it, nothing said (or a plain
        ValueError said after it was dropped), its fills never booked."""
        try:
            raw = await self._call(
                "get_order", client.get_order_by_id, aid, GetOrderByIdRequest(nested=True)
            )
        except APIError as e:
            if error_info(e).status != 404:
                raise RetryableError(
                    f"Alpaca at {self._endpoint}: reading replacement order {aid} failed: "
                    f"{self._scrub(error_info(e).reason)}"
                ) from None
            replaced = self._replacements.pop(aid, None)
            log.warning("alpaca.order.replacement_not_found", alpaca_id=aid, replaced=replaced)
            return
        except _Unreachable as e:
            raise self._unreachable(f"reading replacement order {aid}", e) from None
        problem = self._not_the_order(raw, aid)
        if problem is not None:
            raise self._malformed("get_order", f"reading replacement order {aid}", problem)
        assert isinstance(raw, Mapping)
        # Read before it is taken off the orders to read: one that cannot be (no time) is
        # read again at the next poll, not dropped.
        orders = self._read_orders(
            raw, "get_order", f"reading replacement order {aid}", say_legs=False
        )
        replaced = self._replacements.pop(aid, None)
        if aid in self._by_alpaca_id:
            return
        group = str(raw.get("order_class") or "")
        group = group if group in ("bracket", "oto", "oco") else ""
        base: _Tracked | None = None
        followed = []
        prior = self._get(replaced) if replaced is not None else None
        for order, part in orders:
            if self._get(order.client_order_id) is not None:
                continue
            if not group and prior is not None and order.leg is Leg.ENTRY:
                # Alpaca's replacement carries a client id of its own, from which no role
                # can be read: an edited protective stop came back as a working sell
                # entry, so the planner waited on its symbol as on an entry and a flatten
                # or halt took it for one that adds exposure. It keeps the role it replaced.
                order.leg = prior.order.leg
            t = self._register(order, None, group=group, parent=base)
            self._link(t, part)
            followed.append(t)
            if base is None:
                base = t
        if base is None:
            return
        origin = self.origin(replaced) if replaced is not None else None
        for t in followed:  # the engine hears of the new order (and counts it) at once
            t.origin = origin
            self._on_change(t, report=True)
        log.warning(
            "alpaca.order.replaced",
            client_order_id=replaced,
            by=base.order.client_order_id,
            rule="edited at Alpaca: the replacement is followed as the order it replaced "
            "(its fills are that order's owner's)",
        )
        self._apply(raw, report=True)
        for member in followed:
            if member.alpaca_id is not None:
                self._replay(member.alpaca_id)

    async def _existing(
        self, client_order_id: str, *, strict: bool = False
    ) -> Mapping[str, Any] | None:
        """Alpaca's order with this client id (legs included), None if it has none.
        `strict`: only a 404 means none; any other refusal raises RetryableError. So does an
        answer that is no order (no object, no id, another client id: an error body): read
        as none, an order known at the checkpoint was closed as not found (its executions
        never booked), and an unconfirmed one as never placed (the next bar could place it
        again)."""
        client = self._require_client()
        op = "get_order_by_client_id"
        try:
            raw = await self._call(op, client.get_order_by_client_id, client_order_id)
            if (
                isinstance(raw, Mapping)
                and str(raw.get("order_class") or "") in ("bracket", "oco", "oto")
                and not raw.get("legs")
                and raw.get("id")
            ):
                op = "get_order"
                raw = await self._call(
                    op, client.get_order_by_id, str(raw["id"]), GetOrderByIdRequest(nested=True)
                )
        except APIError as e:
            info = error_info(e)
            if info.retryable or (strict and info.status != 404):
                raise RetryableError(
                    f"Alpaca at {self._endpoint}: lookup of {client_order_id} failed: "
                    f"{self._scrub(info.reason)}"
                ) from None
            return None
        except _Unreachable as e:
            raise self._unreachable(f"lookup {client_order_id}", e) from None
        named = f"order {client_order_id}"
        if not isinstance(raw, Mapping):
            problem = f"{named} is a {type(raw).__name__}, not an object"
        elif not raw.get("id"):
            problem = f"{named}: the answer has no id"
        elif str(raw.get("client_order_id") or "") != client_order_id:
            problem = f"{named}: the answer is order {raw.get('client_order_id')!r}"
        else:
            return raw
        raise self._malformed(op, f"lookup {client_order_id}", problem)

    def _track_unit(self, unit: Unit, raw: Mapping[str, Any], *, fresh: bool) -> dict[str, Order]:
        """Follow the members of a unit Alpaca acknowledged with `raw`.

        `fresh`: this process placed the order (its POST was answered, or an earlier POST
        of this process may have got through before a 422 duplicate): it starts from nothing
        filled, so fills already in `raw` (or in updates that arrived before it) are
        reported. Otherwise (a resend after a restart) the order is taken as it stands: what
        it filled before belongs to the account's reconciled positions."""
        primary = unit.primary
        self._attempted.pop(primary.client_order_id, None)
        group = "" if unit.kind == "simple" else unit.kind
        # Legs that are no objects are said (and counted) by `_apply` below: a leg left
        # unlinked here is linked from the first answer that carries it readably (`_claim`).
        legs = _legs(raw)
        base = self._register(primary, raw if not fresh else None, group=group)
        self._link(base, raw)
        pairs: list[tuple[Order, Mapping[str, Any] | None]] = []
        if unit.kind in ("bracket", "oto"):
            by_role = {leg_role(leg): leg for leg in legs}
            for member, role in (
                (unit.take_profit, Leg.TAKE_PROFIT),
                (unit.stop_loss, Leg.STOP_LOSS),
            ):
                if member is not None:
                    pairs.append((member, by_role.get(role)))
        elif unit.kind == "oco" and unit.stop_loss is not None:
            pairs.append((unit.stop_loss, legs[0] if legs else None))
        for member, leg_raw in pairs:
            leg = self._register(member, leg_raw if not fresh else None, group=group, parent=base)
            if leg_raw is not None:
                self._link(leg, leg_raw)
        self._apply(raw, report=False)
        for m in unit.members:
            followed = self._get(m.client_order_id)
            if followed is not None and followed.alpaca_id is not None:
                self._replay(followed.alpaca_id)
        acks = {}
        for m in unit.members:
            followed = self._get(m.client_order_id)
            if followed is not None:
                _count(followed)
                followed.told = followed.order.status
                acks[m.client_order_id] = followed.order.snapshot()
        return acks

    def _register(
        self,
        incoming: Order,
        state: Mapping[str, Any] | None,
        *,
        group: str = "",
        parent: _Tracked | None = None,
    ) -> _Tracked:
        """Start following an order; with `state`, its fills so far are the baseline."""
        order = incoming.snapshot()
        order.status = (
            OrderStatus.HELD if parent is not None and group != "oco" else OrderStatus.NEW
        )
        order.filled_quantity = 0.0
        order.avg_fill_price = math.nan
        order.reason = ""
        order.bars_open = 0
        order.updated_at = order.created_at
        if state is not None:
            filled = parse_float(state.get("filled_qty"))
            if math.isfinite(filled) and filled > 0:
                order.filled_quantity = filled
                order.avg_fill_price = parse_float(state.get("filled_avg_price"))
        t = _Tracked(order=order, group=group)
        if parent is not None:
            t.parent = parent.order.client_order_id
            parent.children.append(order.client_order_id)
        self._open[order.client_order_id] = t
        self._closed.pop(order.client_order_id, None)
        return t

    def _link(self, t: _Tracked, raw: Mapping[str, Any]) -> None:
        aid = str(raw.get("id") or "")
        if not aid:
            return
        t.alpaca_id = aid
        t.submitted_at = (
            t.submitted_at
            or parse_time(raw.get("submitted_at"))
            or parse_time(raw.get("created_at"))
        )
        self._by_alpaca_id[aid] = t.order.client_order_id

    def retryable_rejection(self, order: Order) -> bool:
        """Whether a rejection of this process's was transient (budget, buying power or
        shares held by the batch's own orders), so the same decision may be tried again."""
        return order.client_order_id in self._transient

    def _reject(self, incoming: Order, reason: str) -> Order:
        order = _closed(incoming, OrderStatus.REJECTED, reason)
        rejected = _Tracked(order=order, told=OrderStatus.REJECTED)
        _count(rejected)
        self._remember_closed(rejected)
        log.warning(
            "alpaca.order.rejected",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            reason=reason,
        )
        return order.snapshot()

    # ------------------------------------------------------------------------- updates

    def _apply(
        self,
        raw: Mapping[str, Any],
        *,
        event: Mapping[str, Any] | None = None,
        report: bool = True,
        parent: str | None = None,
    ) -> None:
        """Bring one followed order up to `raw` (an Alpaca order object, from a response, a
        poll or a stream event), then its legs. Stale answers never move an order back; new
        executions become fills, derived from the cumulative filled quantity."""
        aid = str(raw.get("id") or "")
        cid = self._by_alpaca_id.get(aid) if aid else None
        if cid is None:
            t = self._claim(raw, parent)
            if t is None:
                if event is not None and aid:
                    self._park(aid, raw, event)
                return
        else:
            t = self._get(cid)
            if t is None:
                return
        if self._contradicts(t, raw):
            return
        order = t.order
        remote = parse_time(raw.get("updated_at"))
        stale = remote is not None and t.remote_updated is not None and remote < t.remote_updated
        changed = False
        fill: Fill | None = None
        status_text = str(raw.get("status") or "")
        filled = parse_float(raw.get("filled_qty"))
        # Unreadable, or "0" on an order Alpaca says is filled (a contradiction): not counted.
        uncountable = uncountable_filled(filled, status_text)
        if not uncountable:
            self._unreadable_said.forget(order_key(raw))  # a later unreadable one is said
        if not stale:
            t.filled_unreadable = uncountable
            when = (
                parse_time((event or {}).get("timestamp"))
                or parse_time(raw.get("filled_at"))
                or remote
                or _now()
            )
            # Never more than the order sent (`_within_sent`): Alpaca's `qty` no longer
            # overwrites it, and a cumulative fill above it is booked up to it, said.
            filled = self._within_sent(t, raw, filled)
            unpriced = False
            if math.isfinite(filled) and filled - order.filled_quantity > EPS * max(1.0, filled):
                fill = self._fill(order, raw, event, filled, when)
                changed = changed or fill is not None
                unpriced = fill is None
            status = self._status_for(t, status_text, order.filled_quantity)
            if status_text.strip().lower() not in KNOWN_STATUSES:
                self._note_unknown(
                    "status", status_text, order.client_order_id, order.symbol, str(status)
                )
            # Closed (filled, or cancelled after executions perhaps) with a `filled_qty`
            # that cannot be read: no fill can be derived, and closed here it would be
            # followed no longer, as filled with nothing filled.
            # Negative too, as `order_from_alpaca` reads it at a start or a restart; and
            # "0" on a `filled` order (a fill event with qty "0" too): closed FILLED with
            # nothing booked and nothing said, its executions were never booked.
            # Working and `partially_filled` (Alpaca's word that some executed), it stays
            # working either way, but was not said: its executions waited unbooked, and
            # reconciliation found the position without a word why.
            uncounted = uncountable and (
                status in MAY_HAVE_FILLED or map_status(status_text) is OrderStatus.PARTIALLY_FILLED
            )
            if uncounted:
                self._without_quantity(order, raw, status_text, why_uncountable(filled))
            elif self._uncounted:
                self._uncounted.discard(order.client_order_id)
            if (unpriced or uncounted) and not status.is_open:
                # Alpaca has said `filled` (or closed it) before giving the price (or a
                # readable quantity): closed here, it would be followed no longer and its
                # executions never booked. Working until an answer carries them; polled
                # meanwhile.
                status = order.status
                self._verify.add(order.client_order_id)
            reopens = status.is_open and not order.status.is_open  # a late, reordered update
            if status is not order.status and not reopens:
                order.status = status
                order.reason = "" if status.is_open else self._reason_for(t, status_text, raw)
                changed = True
                self._queue_replacement(raw, order.client_order_id)
            if remote is not None:
                t.remote_updated = remote
            if changed:
                order.updated_at = when
                self._on_change(t, report=report or fill is not None)
        legs = self._legs_of(raw, order.client_order_id) if parent is None else []
        for leg in legs:
            self._apply(leg, report=report, parent=order.client_order_id)
        if changed and (not order.status.is_open or order.filled_quantity > EPS):
            self._settle_group(t, report)

    def _within_sent(self, t: _Tracked, raw: Mapping[str, Any], filled: float) -> float:
        """The cumulative filled quantity of `raw` that can be booked for `t`: at most the
        quantity the order was sent with (`t.order.quantity`; an order found at Alpaca:
        Alpaca's at the time). An answer whose `qty` differs from it, or whose `filled_qty`
        is above it, contradicts the order: an error line (`alpaca.order_answer_mismatch`:
        the order, the field, sent and answered; once an order, field and value), counted
        in the broker's status (`answer_mismatches`). The quantity sent stays the order's;
        the fills beyond it are not booked: the book keeps what the run ordered, and
        reconciliation compares it with Alpaca's positions at its next round (a difference
        stops trading in the symbol). Alpaca's `qty` overwrote the order's quantity, and a
        fill of 50 on a 5-share order was booked as 50, said only at info level.
        Applied to every answer: the updates (`_apply`), an order's adoption (`_adopt`: its
        baseline) and a restart's rebase onto the engine's quantity (`_rebase`), which
        reported a filled_qty of 50 on a 5-share order as one fill of 50.
        An order Alpaca replaced (an edit) is another order, followed as its own from its
        own answer: its quantity is the new one. A notional order (never sent by tradingd;
        one placed by hand, adopted) has no quantity until it fills: not checked."""
        order = t.order
        sent = order.quantity
        if raw.get("notional") not in (None, "") or not (math.isfinite(sent) and sent > 0):
            return filled
        qty = parse_float(raw.get("qty"))
        done = max(order.filled_quantity, filled if math.isfinite(filled) else 0.0)
        if math.isfinite(qty) and 0 < qty < sent and (qty >= done or same_quantity(qty, done)):
            # Alpaca cuts an order down itself (a bracket's legs to a partly filled entry's
            # quantity; open orders at a corporate action): followed, said once. Before the
            # check, every `qty` overwrote the order's; an increase (or a cut below what has
            # filled) still contradicts what was sent.
            self._quantity_cut(t, qty, sent)
            order.quantity = qty
            sent = qty
        elif math.isfinite(qty) and qty > 0 and not same_quantity(qty, sent):
            self._answer_mismatch(
                t,
                "qty",
                raw.get("qty"),
                f"{sent:g}",
                "the order keeps the quantity sent; fills beyond it are not booked",
            )
        if math.isfinite(filled) and filled > sent and not same_quantity(filled, sent):
            self._answer_mismatch(
                t,
                "filled_qty",
                raw.get("filled_qty"),
                f"{sent:g}",
                f"booked up to the {sent:g} sent; the {filled - sent:g} beyond it are not booked",
            )
            return float(sent)
        return filled

    def _quantity_cut(self, t: _Tracked, qty: float, sent: float) -> None:
        """An order Alpaca cut down, still at or above what has filled: said once an
        order (a warning), then followed at Alpaca's quantity."""
        order = t.order
        if self._cuts_said.first((order.client_order_id, qty)):
            log.warning(
                "alpaca.order_quantity_cut",
                client_order_id=order.client_order_id,
                alpaca_id=self._scrub(t.alpaca_id or ""),
                symbol=order.symbol,
                sent=f"{sent:g}",
                answered=f"{qty:g}",
                filled=f"{order.filled_quantity:g}",
                rule="Alpaca cut the order down (a bracket leg to its entry's fills, a "
                "corporate action): followed at Alpaca's quantity",
            )

    def _contradicts(self, t: _Tracked, raw: Mapping[str, Any]) -> bool:
        """Whether `raw`, an answer for the order `t` (its Alpaca id, or its client id),
        names another symbol or side: not applied (nothing of it booked, the order followed
        as it was, its legs too) and said as `alpaca.order_answer_mismatch` (an error, once
        an order, field and value). It was booked as ours: a fill of TSLA booked as AAPL,
        a sale as a purchase. A field the answer lacks is not checked."""
        order = t.order
        symbol = raw.get("symbol")
        side = raw.get("side")
        wrong = []
        if symbol not in (None, "") and _symbol_key(symbol) != _symbol_key(order.symbol):
            wrong.append(("symbol", symbol, order.symbol))
        if side not in (None, "") and str(side).strip().lower() != order.side.value:
            wrong.append(("side", side, order.side.value))
        for name, answered, sent in wrong:
            self._answer_mismatch(
                t,
                name,
                answered,
                sent,
                "the answer is not applied: nothing of it is booked and the order is "
                "followed as it was",
            )
        return bool(wrong)

    def _answer_mismatch(
        self, t: _Tracked, name: str, answered: Any, sent: str, booked: str
    ) -> None:
        """An answer of Alpaca's for an order we follow that contradicts the order (its
        `name` field says `answered`, the order `sent`): an error line naming the order,
        once an order, field and value (the order is read at every poll), counted in
        `status()["answer_mismatches"]`, and `reconcile_wanted` set: the engine may compare
        the book with Alpaca's positions at once. `booked`: what is done with the answer."""
        order = t.order
        shown = self._scrub(str(answered)[:40])
        if not self._mismatch_said.first((order.client_order_id, name, shown)):
            return  # counted once too: the order is read at every poll
        SOURCE_ERRORS.labels(source=SOURCE, kind="malformed").inc()
        self._answer_mismatches += 1
        self.reconcile_wanted.set()
        log.error(
            "alpaca.order_answer_mismatch",
            client_order_id=order.client_order_id,
            alpaca_id=t.alpaca_id,
            symbol=order.symbol,
            field=name,
            sent=sent,
            answered=shown,
            rule=f"Alpaca's answer contradicts the order: {booked}; reconciliation compares "
            "the book with Alpaca's positions at its next round (a difference stops trading "
            "in the symbol): check the order in the Alpaca account",
        )

    def _shares_not_held(self, order: Order, info: ErrorInfo, reason: str) -> None:
        """Alpaca refused a sell for more shares than the account holds (its answer's
        `existing_qty`): the book counts shares the account does not have (a split the book
        missed, a position closed by hand). Not retried (it is refused again: it was, twice a
        bar, every bar), an error line with what Alpaca said, and `reconcile_wanted` set:
        the engine compares the book with Alpaca's positions now, not at the next round,
        and a difference that stands stops trading in the symbol. Shares held by open orders
        (`held_for_orders`) are another case: transient, retried (`transient_refusal`)."""
        self._shares_not_held_count += 1
        self.reconcile_wanted.set()
        log.error(
            "alpaca.order.shares_not_held",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            requested=order.quantity,
            held_at_alpaca=info.existing_qty,
            held_for_orders=info.held_for_orders,
            reason=reason,
            rule="Alpaca holds fewer shares than the sell asks for: the book and the account "
            "differ; not retried; reconciliation compares the book with Alpaca's positions "
            "now (a difference that stands stops trading in the symbol): check the account",
        )

    def _note_unknown(
        self, kind: str, name: Any, client_order_id: str, symbol: str, taken_as: str
    ) -> None:
        """An order status or trade-update event name Alpaca sent that this adapter does not
        know (`KNOWN_STATUSES`, `KNOWN_EVENTS`; Alpaca adds some now and then): a deliberate
        repair, not an error. It is taken as `taken_as` (a status: what `map_status` makes
        of it, working; an event: an update of the order's state, from its order object).
        Counted by name in `status()["unknown_statuses"]` and said once per name (a warning
        naming the first order it came with): taken silently as working, an order in a
        state nobody knew of waited for a fill with nothing saying why."""
        shown = self._scrub(str(name if name is not None else "")[:40]) or "(none)"
        key = f"{kind} {shown}"
        counts = self._unknown_names
        if key not in counts and len(counts) >= _UNKNOWN_NAMES_LIMIT:
            key = f"{kind} (others)"
        counts[key] = counts.get(key, 0) + 1
        if counts[key] == 1:
            log.warning(
                f"alpaca.unknown_{kind}",
                name=shown,
                client_order_id=client_order_id,
                symbol=symbol,
                taken_as=taken_as,
                rule="not in Alpaca's documented names: taken as said; logged once per name, "
                "counted in the broker's status (unknown_statuses)",
            )

    def _without_quantity(
        self, order: Order, raw: Mapping[str, Any], status_text: str, why: str
    ) -> None:
        SOURCE_ERRORS.labels(source=SOURCE, kind="malformed").inc()
        if order.client_order_id in self._uncounted:
            return  # logged once: it is polled every few s
        self._uncounted.add(order.client_order_id)
        log.error(
            "alpaca.fill_without_quantity",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            status=status_text,
            filled_qty=raw.get("filled_qty"),
            why=why,
            rule="followed as working until Alpaca gives a readable filled_qty, then booked",
        )

    def _fill(
        self,
        order: Order,
        raw: Mapping[str, Any],
        event: Mapping[str, Any] | None,
        filled: float,
        when: datetime,
    ) -> Fill | None:
        is_fill = event is not None and str(event.get("event") or "") in ("fill", "partial_fill")
        event_qty = parse_float(event.get("qty")) if is_fill and event is not None else math.nan
        event_price = parse_float(event.get("price")) if is_fill and event is not None else math.nan
        avg = parse_float(raw.get("filled_avg_price"))
        old, old_avg = order.filled_quantity, order.avg_fill_price
        delta = filled - old
        price = fill_price(old, old_avg, filled, avg, event_qty, event_price)
        for fallback in (avg, order.limit_price, order.stop_price):
            if math.isfinite(price) and price > 0:
                break
            price = fallback if fallback is not None else math.nan
        if not (math.isfinite(price) and price > 0):
            # No price anywhere: wait for an update that has one rather than book NaN (the
            # order stays followed, see `_apply`). Logged once: it is polled every few s.
            SOURCE_ERRORS.labels(source=SOURCE, kind="malformed").inc()
            if order.client_order_id not in self._unpriced:
                self._unpriced.add(order.client_order_id)
                log.error(
                    "alpaca.fill_without_price",
                    client_order_id=order.client_order_id,
                    filled=filled,
                    rule="followed as working until Alpaca gives the price, then booked",
                )
            return None
        if self._unpriced:
            self._unpriced.discard(order.client_order_id)
        fill = make_fill(order, filled, delta, price, when)
        order.filled_quantity = filled
        if math.isfinite(avg):
            order.avg_fill_price = avg
        elif old <= EPS or not math.isfinite(old_avg):
            order.avg_fill_price = price
        else:
            order.avg_fill_price = (old_avg * old + price * delta) / filled
        self._pending_fills.append(fill)
        self._fills_waiting.set()
        log.info(
            "alpaca.fill",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=str(order.side),
            quantity=delta,
            price=price,
            filled=filled,
        )
        return fill

    def _status_for(self, t: _Tracked, status_text: str, filled: float) -> OrderStatus:
        status = map_status(status_text, filled)
        if status is not OrderStatus.HELD:
            return status
        # Alpaca says "held" for a bracket leg waiting for its entry (the engine's HELD), but
        # also for the stop-loss it keeps back while the take-profit of a filled bracket or
        # an OCO pair is working: that one protects the position, so it is working (NEW).
        if t.group in ("bracket", "oto") and t.parent is not None:
            parent = self._get(t.parent)
            if parent is not None and (
                parent.order.status.is_open or parent.order.filled_quantity <= EPS
            ):
                return OrderStatus.HELD
        return OrderStatus.NEW if filled <= EPS else OrderStatus.PARTIALLY_FILLED

    def _reason_for(self, t: _Tracked, status_text: str, raw: Mapping[str, Any]) -> str:
        if map_status(status_text) is OrderStatus.REJECTED:
            return closed_reason(status_text, raw)
        if t.cancel_reason:
            return t.cancel_reason
        bracket = t.group in ("bracket", "oto")
        for other in self._group_of(t):
            if other is t or other.order.filled_quantity <= EPS:
                continue
            if bracket and (t.parent is None or other.order.client_order_id == t.parent):
                continue  # a bracket's entry is not a sibling of its exits
            return f"OCO: sibling order {other.order.client_order_id} filled"
        parent = self._get(t.parent) if t.parent is not None else None
        if (
            parent is not None
            and not parent.order.status.is_open
            and parent.order.filled_quantity <= EPS
        ):
            detail = f": {parent.order.reason}" if parent.order.reason else ""
            return f"parent order {t.parent} {parent.order.status}{detail}"
        return closed_reason(status_text, raw)

    def _group_of(self, t: _Tracked) -> list[_Tracked]:
        """The members of t's bracket or OCO pair (t included)."""
        root = self._get(t.parent) if t.parent is not None else t
        if root is None:
            return [t]
        members = [root]
        for cid in root.children:
            child = self._get(cid)
            if child is not None:
                members.append(child)
        return members

    def _settle_group(self, t: _Tracked, report: bool) -> None:
        """After an order closed or filled: legs held for it start working (Alpaca may not
        say so for the stop-loss it keeps back), and the open siblings of a filled exit are
        checked by polling until Alpaca has closed them."""
        for cid in t.children:
            child = self._get(cid)
            if child is None or child.order.status is not OrderStatus.HELD:
                continue
            status = self._status_for(child, "held", child.order.filled_quantity)
            if status is not OrderStatus.HELD:
                child.order.status = status
                child.order.updated_at = t.order.updated_at
                self._on_change(child, report=report)
        exit_of_group = t.group == "oco" or (t.group in ("bracket", "oto") and t.parent)
        if t.order.filled_quantity > EPS and exit_of_group:
            for other in self._group_of(t):
                sibling = other is not t and (t.group == "oco" or other.parent is not None)
                if sibling and other.order.status.is_open:
                    self._verify.add(other.order.client_order_id)

    def _on_change(self, t: _Tracked, *, report: bool) -> None:
        cid = t.order.client_order_id
        if report:
            self._pending_orders[cid] = None
            _count(t)
        if not t.order.status.is_open and cid in self._open:
            del self._open[cid]
            self._remember_closed(t)
            if t.order.status is OrderStatus.REJECTED or t.order.reason:
                log.info(
                    "alpaca.order.closed",
                    client_order_id=cid,
                    status=str(t.order.status),
                    reason=t.order.reason,
                )
        self._changed.set()

    def _close_locally(self, t: _Tracked, status: OrderStatus, reason: str) -> None:
        t.order.status = status
        t.order.reason = reason
        t.order.updated_at = _now()
        self._on_change(t, report=True)
        self._settle_group(t, report=True)

    def _claim(self, raw: Mapping[str, Any], parent: str | None) -> _Tracked | None:
        """A followed order Alpaca names by an id we have not seen: ours by client id, or a
        leg of a followed parent (the legs of a response that lacked them)."""
        aid = str(raw.get("id") or "")
        cid = raw.get("client_order_id")
        if isinstance(cid, str):
            t = self._get(cid)
            if t is not None and t.alpaca_id in (None, aid):
                self._link(t, raw)
                return t
        if parent is not None:
            p = self._get(parent)
            limit = leg_role(raw) is Leg.TAKE_PROFIT
            for child_id in p.children if p is not None else ():
                child = self._get(child_id)
                if (
                    child is not None
                    and child.alpaca_id is None
                    and (child.order.type is OrderType.LIMIT) == limit
                ):
                    self._link(child, raw)
                    return child
        return None

    def _park(self, aid: str, raw: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """An update for an order not known (yet): its POST may still be on its way back.
        Kept briefly, bounded; applied when the order becomes known, else sorted after the
        next poll (`_sort_orphans`, which a new one asks for). Those of an order already
        found to be another's (`_foreign_update`: outside the universe, or no longer
        working) are counted, not kept: it was said."""
        self._unknown_updates += 1
        if aid in self._foreign_ids:
            return
        if aid not in self._orphans and not self._submitting:
            # Not while a POST of ours is on its way: its update beating the answer is the
            # usual case, applied when the answer comes. A poll asked for then listed every
            # order since the oldest open one (status=all) at a submit's race, the account's
            # history when a GTC stop was weeks old; the batch's end asks for one if an
            # update is still unknown (`_ask_about_orphans`).
            self._poll_requested = True
            self._wake.set()
        self._orphans.setdefault(aid, []).append((raw, event))
        self._orphans.move_to_end(aid)
        while len(self._orphans) > _ORPHAN_LIMIT:
            self._orphans.popitem(last=False)

    def _ask_about_orphans(self) -> None:
        """Once no POST of ours is on its way: a poll asked for when an update parked
        meanwhile is still of an order not known (`_park` does not ask during a submit)."""
        if any(aid not in self._by_alpaca_id for aid in self._orphans):
            self._poll_requested = True
            self._wake.set()

    def _orders_are_known(self) -> None:
        """The engine has the run's orders followed: `resume` linked the checkpoint's, or
        the engine went on without calling it (a new run: its first `updates`, `submit`,
        `cancel`, `positions` or `check_open_orders`; never `open_orders`, `status` or
        `snapshot`, which the engine, or /status, may ask before `resume`). Updates of
        orders not known, parked meanwhile, are sorted at the poller's next pass. Before,
        an update of a checkpoint order between `start` and `resume` (adoption off: the
        engine's warm-up, minutes) was sorted as another's: a false
        `alpaca.unknown_order_update`, counted as a foreign order, its updates dropped."""
        if self._orders_known:
            return
        self._orders_known = True
        if self._orphans:
            self._poll_requested = True
            self._wake.set()

    def _sort_orphans(self, parked: Sequence[str]) -> bool:
        """The orders whose updates were parked (`parked`: before a poll that has now
        succeeded) and are still unknown: none of this process's, since no order of ours
        is on its way (a POST unanswered, an outcome to look up, a replacement to read) and
        the poll linked those it could (a leg of ours). Each is said and, in the universe
        and working, followed as another's (`_foreign_update`). An order placed by hand
        after the start was parked without a word: only `unknown_updates` counted it, the
        planner did not see it working, and its fills moved the position unexplained.
        Returns False, nothing sorted, while an order of ours may be on its way (the
        caller asks again after the next poll), or may yet be linked by `resume`
        (`_orders_are_known`, which asks again)."""
        if not self._orders_known or self._submitting or self._unconfirmed or self._replacements:
            return False
        for aid in parked:
            if aid in self._by_alpaca_id:
                self._replay(aid)  # linked meanwhile (a leg a poll read under its entry)
                continue
            updates = self._orphans.pop(aid, None)
            if updates:
                self._foreign_update(aid, [raw for raw, _event in updates])
        return True

    def _foreign_update(self, aid: str, updates: Sequence[Mapping[str, Any]]) -> None:
        """An order Alpaca reported that this process did not place (by hand, or another
        program on the account), from its updates (`updates`, as they came): said once
        (`alpaca.unknown_order_update`, never a key); in the universe and still working, it
        is followed as another's, as the orders open at the start are (`_adopt`): listed by
        `open_orders`, so the planner places no entry in its symbol while it works, and its
        fills are not this run's (the engine's `broker.foreign_fill`). Its executions before
        are not reported (a difference for reconciliation, as any trade by hand). Kept for
        the engine's alert (`take_foreign_orders`)."""
        raw = max(
            enumerate(updates),
            key=lambda p: (parse_time(p[1].get("updated_at")) or _EPOCH, p[0]),
        )[1]
        self._remember(self._foreign_ids, aid)
        self._foreign_found += 1
        symbol = str(raw.get("symbol") or "")
        status_text = str(raw.get("status") or "")
        working = map_status(status_text).is_open
        followed: str | None = None
        if self._symbols is not None and symbol not in self._symbols:
            rule = "outside this run's universe: not followed, left alone"
        elif not working:
            rule = (
                "no longer working: not followed; a position it moved is a difference for "
                "reconciliation, as a trade by hand"
            )
        elif not self._config.adopt_open_orders:
            rule = "not followed (adopt_open_orders is off); its symbol is traded as before"
        else:
            try:
                parts = self._read_orders(raw, "trade_update", "an unknown order's update")
            except RetryableError as e:
                rule = f"not followed: {e}"
            else:
                followed = self._adopt(raw, parts)
                rule = (
                    "not placed by this process (by hand, or another program on the "
                    "account): followed as another's; no new entries of this run in its "
                    "symbol while it works (cancel it at the broker, or let it fill); its "
                    "fills are not booked as this run's"
                )
        found = ForeignOrder(
            alpaca_id=self._scrub(aid[:64]),
            client_order_id=self._scrub(str(raw.get("client_order_id") or "")[:64]),
            symbol=self._scrub(symbol[:16]),
            side=self._scrub(str(raw.get("side") or "")[:8]),
            quantity=parse_float(raw.get("qty")),
            status=self._scrub(status_text[:32]),
            in_universe=self._symbols is None or symbol in self._symbols,
            followed=followed is not None,
        )
        self._foreign_new.append(found)
        del self._foreign_new[: -self._config.closed_history]
        self.foreign_found.set()
        log.warning(
            "alpaca.unknown_order_update",
            alpaca_id=found.alpaca_id,
            client_order_id=found.client_order_id,
            symbol=found.symbol,
            side=found.side,
            quantity=found.quantity,
            status=found.status,
            updates=len(updates),
            followed_as=followed,
            rule=rule,
        )

    def _replay(self, aid: str) -> None:
        for raw, event in self._orphans.pop(aid, []):
            self._apply(raw, event=event)

    # ------------------------------------------------------------------------- polling

    def _bounded_rereads(self, missing: list[_Tracked]) -> list[_Tracked]:
        """The followed orders the periodic check reads by id, at most `_REREAD_LIMIT`: each
        is a request of the account's budget. Those left over go first at the next check."""
        missing = [t for t in missing if t.order.status.is_open]
        if len(missing) <= _REREAD_LIMIT:
            self._reread_next.clear()
            return missing
        missing.sort(key=lambda t: t.order.client_order_id not in self._reread_next)
        now, later = missing[:_REREAD_LIMIT], missing[_REREAD_LIMIT:]
        self._reread_next = {t.order.client_order_id for t in later}
        log.warning(
            "alpaca.open_check.capped",
            missing=len(missing),
            read=len(now),
            rule="the others are read by id at the next check",
        )
        return now

    async def _poll_list(
        self,
        client: TradingClient,
        after: datetime,
        seen: set[str],
        status: QueryOrderStatus = QueryOrderStatus.ALL,
        *,
        nested: bool = True,
    ) -> None:
        for _ in range(100):  # pages; a bound, not an expectation
            answer: Any = await self._call(
                "list_orders",
                client.get_orders,
                GetOrdersRequest(
                    status=status,
                    after=after,
                    direction=Sort.ASC,
                    nested=nested,
                    limit=_ORDER_PAGE,
                ),
            )
            try:
                # Read as no rows, such an answer made every followed order "missing": read
                # again one by one, and nothing said of the answer itself.
                rows = open_order_rows(answer, "orders answer")
            except ValueError as e:
                raise self._malformed("list_orders", "order poll", str(e)) from None
            for raw in rows:
                self._apply(raw)
                seen.add(str(raw.get("id") or ""))
                # Legs that are no objects were said by `_apply`; a followed leg missing
                # here is read by id below.
                seen.update(str(leg.get("id") or "") for leg in _legs(raw))
            if len(rows) < _ORDER_PAGE:
                return
            last = parse_time(rows[-1].get("submitted_at"))
            if last is None or last <= after:
                return
            after = last

    async def _refresh(self, t: _Tracked) -> bool:
        """Re-read one order by id; False when Alpaca does not know it (404). Raises APIError
        or _Unreachable as `_call` does, also for an answer that is no object or not the
        order asked for (an error body): counted and shown as malformed, as a body that is
        no JSON is. Such an answer was ignored: the order stayed as it was, nothing said,
        and a poll that found it missing from the listing went on as if it had been read."""
        aid = t.alpaca_id
        if aid is None:
            return False
        client = self._require_client()
        try:
            raw = await self._call(
                "get_order", client.get_order_by_id, aid, GetOrderByIdRequest(nested=True)
            )
        except APIError as e:
            if error_info(e).status == 404:
                log.warning("alpaca.order.not_found", client_order_id=t.order.client_order_id)
                return False
            raise
        problem = self._not_the_order(raw, aid, t.order.client_order_id)
        if problem is not None:
            raise self._unreadable("get_order", problem)
        assert isinstance(raw, Mapping)
        self._apply(raw)
        return True

    @staticmethod
    def _not_the_order(raw: Any, aid: str, client_order_id: str | None = None) -> str | None:
        """What is wrong with an answer to GET /v2/orders/{aid} (no object, or an object that
        is not that order: an error body), for a malformed-answer error; None when it is
        the order."""
        named = f"order {aid}" + (f" ({client_order_id})" if client_order_id else "")
        if not isinstance(raw, Mapping):
            return f"{named} is a {type(raw).__name__}, not an object"
        if str(raw.get("id") or "") != aid:
            return f"{named}: the answer's id is {raw.get('id')!r}"
        return None

    async def _poll_quietly(self, *, only_open: bool = False, probe: bool = False) -> bool:
        """A poll (`probe`: the account probe instead) whose failure is logged, not raised;
        whether it succeeded."""
        failing = _FAILING_POLLS.set(self._poll_outage)
        try:
            await (self._probe() if probe else self.poll(only_open=only_open))
        except Exception as e:  # polling is the fallback: it must not take the engine down
            self._poll_failed(self._scrub(e))
            return False
        else:
            self._poll_succeeded()
            return True
        finally:
            _FAILING_POLLS.reset(failing)

    def _poll_failed(self, error: str) -> None:
        """A poll failed: the first of an outage is a warning, `alpaca.poll_failed`, as every
        one was (every `poll_interval_s`, 5 s, while the stream was down and Alpaca could
        not be reached: 720 lines an hour); later ones are counted and said in
        `alpaca.poll_still_failing` once 5 minutes have passed since the last line, the
        wait doubling up to an hour (core/outages.py; the wall clock: polls run on it), the
        others at debug. While the keys are refused that was said once
        (`alpaca.keys_refused`): all at debug, still counted."""
        outage = self._poll_outage
        due = outage.failed(self._poll_clock(), error)
        said = log.debug if due is None or self._keys_refused is not None else log.warning
        if due is None:
            said("alpaca.poll_failed", error=error, polls=outage.failures)
        elif due.first:
            said(
                "alpaca.poll_failed",
                error=error,
                then="polled again every poll_interval_s; the failures are counted and said "
                f"in alpaca.poll_still_failing (at most every {duration_text(outage.repeat_max)}"
                "), the first poll that succeeds in alpaca.poll_recovered",
            )
        else:
            assert outage.since is not None and outage.last_failed is not None
            said(
                "alpaca.poll_still_failing",
                error=error,
                since=_iso(outage.since),
                failing_for=duration_text(outage.last_failed - outage.since),
                polls=outage.failures,
                polls_since_last_line=due.since_last_line.get("polls", 0),
                retries=outage.counts.get("retries", 0),
                next_line_after=duration_text(due.next_after),
            )

    def _poll_succeeded(self) -> None:
        """A poll went through: the failures before it, if any, end in one line."""
        ended = self._poll_outage.recovered(self._poll_clock())
        if ended is None:
            return
        d = ended.down_for
        assert d is not None
        log.info(
            "alpaca.poll_recovered",
            since=_iso(ended.since),
            last_failed=_iso(ended.last_failed),
            failing_for=duration_text(d),
            failing_for_s=round(d.total_seconds(), 1),
            polls=ended.counts.get("polls", 0),
            retries=ended.counts.get("retries", 0),
            last_error=ended.error,
        )

    def _poll_outage_at_stop(self) -> None:
        """Stopped while the polls fail: their counts in one line (those since the last line
        were said at debug only). The next start begins a new count."""
        now = self._poll_outage.summary(self._poll_clock())
        if now is None:
            return
        self._poll_outage.forget()  # a restart counts afresh
        d = now.down_for
        (log.debug if self._keys_refused is not None else log.warning)(
            "alpaca.poll_still_failing",
            error=now.error,
            since=_iso(now.since),
            failing_for=duration_text(d) if d is not None else None,
            polls=now.counts.get("polls", 0),
            polls_since_last_line=now.since_last_line.get("polls", 0),
            retries=now.counts.get("retries", 0),
            stopping=True,
        )

    def _poll_outage_status(self) -> dict[str, Any] | None:
        now = self._poll_outage.summary(None)
        if now is None:
            return None
        return {
            "since": _iso(now.since),
            "last_failed": _iso(now.last_failed),
            "polls": now.counts.get("polls", 0),
            "error": now.error,
        }

    async def _probe(self) -> None:
        """With the stream down and no order open, the poll that asks Alpaca anything: one
        GET /v2/account (the account check, `_check_account`). Polls asked only about open
        orders, so with none open nothing was asked between the account checks (every
        `open_orders_check_s`, 300 s): Alpaca down went unseen for minutes (`/ready`
        connected, no broker_down alert, no alpaca.poll_failed). Raises RetryableError when
        Alpaca cannot be reached or does not answer with the account."""
        self._last_account_mono = time.monotonic()  # `_check_account` again, if it answers
        try:
            account = await self._call("get_account", self._require_client().get_account)
        except APIError as e:
            raise RetryableError(
                f"Alpaca at {self._endpoint}: account check failed: "
                f"{self._scrub(error_info(e).reason)}"
            ) from None
        except _Unreachable as e:
            raise self._unreachable("the account check", e) from None
        self._check_account(account, "the account check")

    def _probe_due(self) -> bool:
        """Whether the poller asks for the account now (`_probe`): the stream down (or
        disabled), no order open or to be found, and the account last asked for (a probe,
        the start, the periodic check) a poll interval ago, at least `_PROBE_GAP_MIN_S`: 12
        of Alpaca's 200 requests a minute at the default 5 s. Not at once after the start,
        which has just asked, while the stream is still connecting."""
        if self._stream_up or self._open or self._replacements or self._unconfirmed:
            return False
        gap = max(self._config.poll_interval_s, _PROBE_GAP_MIN_S)
        return time.monotonic() - self._last_account_mono >= gap

    async def _poller(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._config.poll_interval_s)
            self._wake.clear()
            every = self._config.open_orders_check_s
            if self._probe_due():
                # The account check too (its time recorded): not asked for twice.
                await self._poll_quietly(probe=True)
            elif every > 0 and time.monotonic() - self._last_account_mono >= every:
                await self._recheck_account()  # a block set or lifted while running
            due = every > 0 and time.monotonic() - self._last_poll_mono >= every
            idle = not (
                self._poll_requested or self._verify or self._unconfirmed or self._replacements
            )
            if self._stream_up and idle and not due:
                continue
            if self._poll_requested:
                # Asked for (an update without its order, a cancel): at most one such poll
                # every _REQUESTED_POLL_GAP_S, the asks meanwhile served by it. A stream
                # repeating a bad update ran full polls back to back, spending the request
                # budget orders wait on.
                wait = self._requested_poll_mono + _REQUESTED_POLL_GAP_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._requested_poll_mono = time.monotonic()
            self._poll_requested = False
            parked = list(self._orphans)  # updates of orders not known: sorted after it
            polled = True
            if self._open or self._replacements or self._unconfirmed:
                # With the stream up and nothing asked for, this is the periodic check: the
                # open orders suffice (a lost fill shows as an order no longer open).
                polled = await self._poll_quietly(only_open=self._stream_up and idle)
            # Not sorted while an order of ours may be on its way. An order to look up, or a
            # replacement to read: ask after the next poll. A POST on its way asks itself
            # when the batch ends (`_ask_about_orphans`): asked here, a slow submit repeated
            # a full listing every 2 s until it was answered.
            sorted_now = not parked or not polled or self._sort_orphans(parked)
            if not sorted_now and (self._unconfirmed or self._replacements):
                self._poll_requested = True

    async def _confirm_closed(self, t: _Tracked) -> None:
        """Wait (bounded) until Alpaca confirms a cancel: from the stream, else by asking."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.cancel_confirm_timeout_s
        ask = not self._stream_up
        while t.order.status.is_open:
            if ask:
                try:
                    await self._refresh(t)
                except (APIError, _Unreachable) as e:
                    log.warning(
                        "alpaca.cancel.confirm_failed",
                        client_order_id=t.order.client_order_id,
                        error=self._scrub(e),
                    )
                    return
                if not t.order.status.is_open:
                    return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.25))
                ask = False
            except TimeoutError:
                ask = True
            self._drain()

    # ------------------------------------------------------------------------- stream

    def _start_stream(self) -> None:
        cfg = self._config
        if self._ws_logger.getEffectiveLevel() < logging.INFO:
            self._ws_logger.setLevel(logging.INFO)
        self._ws_logger.addFilter(self._log_filter)
        logging.getLogger(STREAM_LOGGER).addFilter(self._stream_repeats)
        stream = _TradeStream(
            self._key_id,
            self._secret,
            paper=True,
            raw_data=True,
            url_override=cfg.effective_stream_url,
            websocket_params={
                "ping_interval": 10,
                "ping_timeout": cfg.stream_ping_timeout_s,
                "close_timeout": 2,
                "max_queue": 1024,
                "logger": self._ws_logger,
            },
            on_state=self._on_stream_state,
        )
        if hasattr(stream, "_reconnect_min_backoff"):
            stream._reconnect_min_backoff = cfg.stream_reconnect_min_s
            stream._reconnect_max_backoff = max(
                cfg.stream_reconnect_max_s, cfg.stream_reconnect_min_s
            )
        stream.subscribe_trade_updates(self._on_trade_update)
        self._stream = stream
        self._stream_task = asyncio.create_task(stream._run_forever(), name="alpaca-stream")
        self._stream_task.add_done_callback(self._stream_ended)

    def _stream_ended(self, task: asyncio.Task[Any]) -> None:
        self._on_stream_state(False)
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        log.error(
            "alpaca.stream.ended",
            error=self._scrub(error) if error is not None else None,
            fallback="polling",
            restart_in_s=self._config.stream_reconnect_max_s,
        )
        asyncio.get_running_loop().call_later(
            max(self._config.stream_reconnect_max_s, 1.0), self._restart_stream
        )

    def _restart_stream(self) -> None:
        if self._started and not self._stopping:
            self._ws_logger.removeFilter(self._log_filter)
            logging.getLogger(STREAM_LOGGER).removeFilter(self._stream_repeats)
            self._start_stream()

    def _on_stream_state(self, up: bool) -> None:
        if up == self._stream_up:
            return
        self._stream_up = up
        self._stream_changes += 1
        if up:
            log.info("alpaca.stream.up", url=mask_url(self._config.effective_stream_url))
            # Updates of the gap before `listening` are not replayed: one catch-up poll.
            self._poll_requested = True
        elif not self._stopping:
            log.warning(
                "alpaca.stream.down",
                fallback="polling",
                poll_interval_s=self._config.poll_interval_s,
            )
        self._wake.set()

    async def _on_trade_update(self, message: Any) -> None:
        await self._queue.put(message)

    async def _consume(self) -> None:
        while True:
            message = await self._queue.get()
            self._handle(message)

    def _drain(self) -> None:
        while True:
            try:
                message = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._handle(message)

    def _handle(self, message: Any) -> None:
        try:
            data = message.get("data") if isinstance(message, Mapping) else None
            raw = data.get("order") if isinstance(data, Mapping) else None
            if not isinstance(raw, Mapping):
                if isinstance(data, Mapping):
                    lacks, is_a, kind = "data.order", type(raw).__name__, data.get("event")
                else:
                    lacks, is_a, kind = "data", type(data).__name__, None
                self._skipped(
                    "alpaca.update_without_order",
                    "skipped; the open orders are polled at once, so an execution it "
                    "reported is made up from Alpaca's cumulative figures",
                    lacks=lacks,
                    is_a=is_a,
                    stream_event=self._scrub(str(kind)[:40]) if kind else None,
                )
                # It may have been a fill: not left to the periodic check, minutes later.
                self._poll_requested = True
                self._wake.set()
                return
            assert isinstance(data, Mapping)  # raw is data's order
            name = data.get("event")
            if str(name or "").strip().lower() not in KNOWN_EVENTS:
                self._note_unknown(
                    "event",
                    name,
                    str(raw.get("client_order_id") or raw.get("id") or ""),
                    str(raw.get("symbol") or ""),
                    f"an update of the order's state (its status {raw.get('status')!r})",
                )
            self._apply(raw, event=data)
        except Exception as e:  # one bad update must not stop the others
            # Said sparsely, counted each time: a stream repeating it logged a line each.
            self._skipped(
                "alpaca.update_failed",
                "skipped; the next poll reads the order's state",
                error=self._scrub(e),
            )

    # ------------------------------------------------------------------------- adoption

    async def _adopt_open_orders(self) -> None:
        """Follow the orders open at Alpaca in the universe, as they stand. Listed nested
        (a bracket's legs under their entry, named after it: `leg_client_order_id`), then
        flat: nested, Alpaca lists the legs only under an entry still open, so the exits of
        a filled bracket (a position protected by hand, or by another run) were never
        followed, and a new run's start-up warning (`broker.foreign_open_orders`) missed
        them. Those are followed under Alpaca's ids for them, each on its own."""
        nested = await self._open_rows(nested=True)
        seen = {str(r.get("id") or "") for r in nested}
        seen.update(str(leg.get("id") or "") for r in nested for leg in _legs(r))
        flat = [r for r in await self._open_rows(nested=False) if str(r.get("id")) not in seen]
        ours = [
            raw
            for raw in [*nested, *flat]
            if self._symbols is None or raw.get("symbol") in self._symbols
        ]
        # All read before any is followed: an order that cannot be read (no time) fails the
        # start as a malformed answer, with nothing adopted.
        read = [
            (raw, self._read_orders(raw, "list_open_orders", "reading open orders")) for raw in ours
        ]
        for raw, parts in read:
            root = self._adopt(raw, parts)
            if root is not None:
                self._adopted_roots[root] = None

    async def _open_rows(self, *, nested: bool) -> list[Mapping[str, Any]]:
        client = self._require_client()
        try:
            answer: Any = await self._call(
                "list_open_orders",
                client.get_orders,
                GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=nested, limit=_ORDER_PAGE),
            )
        except APIError as e:
            raise RetryableError(
                f"Alpaca at {self._endpoint}: reading open orders failed: "
                f"{self._scrub(error_info(e).reason)}"
            ) from None
        except _Unreachable as e:
            raise self._unreachable("reading open orders", e) from None
        try:
            rows = open_order_rows(answer)
        except ValueError as e:
            raise self._malformed("list_open_orders", "reading open orders", str(e)) from None
        if len(rows) >= _ORDER_PAGE:
            log.warning("alpaca.adopt.truncated", orders=len(rows), nested=nested)
        return rows

    def _adopt(
        self, raw: Mapping[str, Any], parts: Sequence[tuple[Order, Mapping[str, Any]]]
    ) -> str | None:
        """Follow an order found at Alpaca, with its legs, as it stands (no fills are
        reported for what it executed before); `parts`: `raw` read as engine orders
        (`_read_orders`). Returns the client id it is followed by.

        A part closed with a `filled_qty` that cannot be read stays working, as
        `order_from_alpaca` returned it, and is polled as `_apply` does: a leg's state mapped
        again from Alpaca's text closed a stop that fired while the daemon was down as
        filled with nothing filled, followed no longer and its executions never booked."""
        group = str(raw.get("order_class") or "")
        group = group if group in ("bracket", "oto", "oco") else ""
        base: _Tracked | None = None
        for order, part in parts:
            known = self._get(order.client_order_id)
            if known is not None:
                base = known if part is raw else base
                continue
            status_text = str(part.get("status") or "")
            filled = parse_float(part.get("filled_qty"))
            uncountable = uncountable_filled(filled, status_text)
            uncounted = uncountable and map_status(status_text) in MAY_HAVE_FILLED
            if status_text.strip().lower() not in KNOWN_STATUSES:
                self._note_unknown(
                    "status", status_text, order.client_order_id, order.symbol, str(order.status)
                )
            self._forget_alpaca_id(str(part.get("id") or ""))
            t = _Tracked(order=order, group=group, adopted=True)
            t.filled_unreadable = uncountable
            t.replaces = str(part.get("replaces") or "") or None
            self._link(t, part)
            if not uncountable:
                # Nothing beyond its quantity held, as for every answer after (`_apply`): a
                # filled_qty of 50 on 5 shares was its baseline, listed so to the planner,
                # and booked by a restart that knew the order (`_rebase`).
                order.filled_quantity = self._within_sent(t, part, order.filled_quantity)
            t.remote_updated = parse_time(part.get("updated_at"))
            if part is raw:
                base = t
            elif base is not None:
                t.parent = base.order.client_order_id
                base.children.append(order.client_order_id)
                if not uncounted:
                    order.status = self._status_for(t, status_text, order.filled_quantity)
            if uncounted:
                self._verify.add(order.client_order_id)
            t.told = order.status
            if order.status.is_open:
                self._open[order.client_order_id] = t
            else:
                self._remember_closed(t)
        return base.order.client_order_id if base is not None else None

    def _forget_alpaca_id(self, aid: str) -> None:
        """Stop following an order under the name it had (an Alpaca order about to be
        followed under the engine's name for it)."""
        cid = self._by_alpaca_id.pop(aid, None) if aid else None
        if cid is not None:
            self._open.pop(cid, None)
            self._closed.pop(cid, None)

    def _orders_of(
        self,
        raw: Mapping[str, Any],
        leg_ids: Mapping[Leg, str] | None = None,
        *,
        say_legs: bool = True,
    ) -> list[tuple[Order, Mapping[str, Any]]]:
        """Engine orders for an Alpaca order and its legs (ids of legs from `leg_ids` by
        role, else derived from the parent's, see `leg_client_order_id`). Legs that are no
        objects are said (`_legs_of`) unless `say_legs` is False (an answer `_apply` reads
        next, which says them)."""
        group = str(raw.get("order_class") or "")
        base = order_from_alpaca(raw, once=self._unreadable_said)
        if group == "oco":
            base.oco_group = base.client_order_id
        out = [(base, raw)]
        for leg in self._legs_of(raw, base.client_order_id) if say_legs else _legs(raw):
            role = leg_role(leg)
            cid = (leg_ids or {}).get(role) or leg_client_order_id(base.client_order_id, role)
            leg_order = order_from_alpaca(
                leg,
                client_order_id=cid,
                leg=role,
                parent_id=base.client_order_id if group != "oco" else None,
                oco_group=base.client_order_id,
                once=self._unreadable_said,
            )
            out.append((leg_order, leg))
        return out

    def _read_orders(
        self,
        raw: Mapping[str, Any],
        op: str,
        what: str,
        leg_ids: Mapping[Leg, str] | None = None,
        *,
        say_legs: bool = True,
    ) -> list[tuple[Order, Mapping[str, Any]]]:
        """`_orders_of`, an order that cannot be read (`UnreadableOrder`: no time) raised as
        the malformed answer to `op` it is (`what`: the call it answered), Alpaca unavailable
        for that round: a plain ValueError stopped the daemon at its start or snapshot."""
        try:
            return self._orders_of(raw, leg_ids, say_legs=say_legs)
        except UnreadableOrder as e:
            raise self._malformed(op, what, str(e)) from None

    def _describe(self, raw: Mapping[str, Any]) -> list[Order]:
        """Engine orders for an open Alpaca order (followed ones as the broker knows them),
        for a snapshot."""
        out: list[Order] = []
        for order, part in self._read_orders(raw, "list_open_orders", "snapshot"):
            cid = self._by_alpaca_id.get(str(part.get("id") or ""))
            t = self._get(cid) if cid is not None else None
            out.append(t.order.snapshot() if t is not None else order)
        return out

    def _legs_of(self, raw: Mapping[str, Any], client_order_id: str) -> list[Mapping[str, Any]]:
        """`raw`'s legs that are objects; each that is not (and a `legs` that is no list)
        is said and counted (`_skipped`), naming the order (Alpaca's id, the client id it
        is followed by) and the leg: skipped, nothing said, a bracket's stop was followed
        from no answer of its own and nobody knew why."""
        legs = raw.get("legs")
        if legs is None:
            return []
        rule = (
            "skipped; the order is followed without it until an answer carries it as an "
            "object (a followed leg missing from a poll is read by id)"
        )
        named = {"alpaca_id": str(raw.get("id") or ""), "client_order_id": client_order_id}
        if not isinstance(legs, list):
            self._skipped(
                "alpaca.leg_unreadable", rule, **named, leg=None, is_a=type(legs).__name__
            )
            return []
        out = []
        for i, leg in enumerate(legs):
            if isinstance(leg, Mapping):
                out.append(leg)
            else:
                self._skipped(
                    "alpaca.leg_unreadable", rule, **named, leg=i, is_a=type(leg).__name__
                )
        return out

    def _skipped(self, event: str, rule: str, **what: Any) -> None:
        """A part of an answer skipped because it cannot be read (`event`: what kind):
        counted as a malformed answer each time, and said at the 1st, 10th, 100th, ... of
        its kind (`sparse`, with the count so far): a stream or a poll that repeats it every
        few seconds is heard without a line each time. `what` names it, never a key."""
        SOURCE_ERRORS.labels(source=SOURCE, kind="malformed").inc()
        n = self._skips[event] = self._skips.get(event, 0) + 1
        if sparse(n):
            log.warning(event, **what, times_so_far=n, rule=rule)

    # ------------------------------------------------------------------------- state

    def _get(self, client_order_id: str) -> _Tracked | None:
        return self._open.get(client_order_id) or self._closed.get(client_order_id)

    def _remember_closed(self, t: _Tracked) -> None:
        cid = t.order.client_order_id
        self._closed[cid] = t
        self._closed.move_to_end(cid)
        while len(self._closed) > self._config.closed_history:
            _, old = self._closed.popitem(last=False)
            if old.alpaca_id is not None:
                self._by_alpaca_id.pop(old.alpaca_id, None)

    # ------------------------------------------------------------------------- REST

    def _make_client(self) -> TradingClient:
        client = TradingClient(
            self._key_id,
            self._secret,
            paper=True,
            raw_data=True,
            url_override=self._config.base_url.rstrip("/"),
        )
        if hasattr(client, "_session"):
            # A timeout per read and a deadline for the whole request (the data clients'
            # session): an answer trickling its body held a worker thread of the event
            # loop's default executor after `call_timeout_s` gave the call up.
            client._session = DeadlineSession(
                self._config.request_timeout_s,
                remedy="no account or orders answer is that long: check broker.alpaca.base_url "
                "(the broker's cap is fixed)",
            )
        else:  # a future alpaca-py: the overall call timeout still applies
            log.warning("alpaca.no_request_timeout")
        # alpaca-py retries 429 and 504 itself, sleeping in the worker thread: a call that
        # timed out meanwhile was given up here (an order "not placed") while the thread went
        # on and placed it. And a 504 may come after Alpaca placed the order: its retry of a
        # POST met 422 "client_order_id must be unique", and the order was taken as one
        # another process placed, its fills never booked. So every attempt is `_call`'s,
        # inside the awaited call.
        no_sdk_retries(client)
        return client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        session = getattr(client, "_session", None)
        if session is not None:
            session.close()

    def _require_client(self) -> TradingClient:
        if self._client is None:
            raise RuntimeError("AlpacaBroker is not started: call start() first")
        return self._client

    async def _call(
        self, op: str, fn: Callable[..., T], *args: Any, uncertain: str | None = None
    ) -> T:
        """One REST call in a worker thread, retried on timeouts, connection errors, 429 and
        5xx. Raises APIError (any other answer, or the last retryable one) or _Unreachable.
        `uncertain`: a client order id to remember when an attempt's outcome is unknown."""
        cfg = self._config
        backoff = wait_exponential(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s) + (
            wait_random(0, min(cfg.backoff_initial_s, cfg.backoff_max_s))
        )
        attempts = stop_after_attempt(cfg.max_attempts)
        throttled_attempts = stop_after_attempt(cfg.max_attempts * _THROTTLED_TRIES)

        def last_error(state: RetryCallState) -> BaseException | None:
            return state.outcome.exception() if state.outcome is not None else None

        def stop(state: RetryCallState) -> bool:
            throttled = _retry_after(last_error(state)) is not None
            return (throttled_attempts if throttled else attempts)(state)

        def wait(state: RetryCallState) -> float:
            hint = _retry_after(last_error(state))
            base = float(backoff(state))
            return base if not hint else max(base, min(hint, cfg.call_timeout_s))

        def said(state: RetryCallState) -> None:
            # Each retry said (no keys: the texts are scrubbed): retried in silence, a
            # flaky Alpaca showed only as slow orders.
            error = last_error(state)
            if isinstance(error, APIError):
                info = error_info(error)
                failure = f"HTTP {info.status}" if info.status is not None else "error"
                detail = self._scrub(info.reason)
            else:
                failure = getattr(error, "kind", type(error).__name__)
                detail = self._scrub(error)
            throttled = _retry_after(error) is not None
            polls = _FAILING_POLLS.get()
            quiet = polls is not None and polls.active
            if quiet:
                # A poll's retry while the polls fail: counted in alpaca.poll_still_failing
                # and alpaca.poll_recovered (2 info lines a poll, 1440 an hour, before).
                assert polls is not None
                polls.count(retries=1)
            (log.debug if quiet else log.info)(
                "alpaca.retry",
                op=op,
                attempt=state.attempt_number,
                of=cfg.max_attempts * (_THROTTLED_TRIES if throttled else 1),
                failure=failure,
                error=detail,
                wait_s=round(state.next_action.sleep, 3) if state.next_action else None,
            )

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(_is_retryable),
            before_sleep=said,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._call_once(op, fn, *args, uncertain=uncertain)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_once(
        self, op: str, fn: Callable[..., T], *args: Any, uncertain: str | None = None
    ) -> T:
        if self._limiter is not None:
            queued = time.perf_counter()
            await self._limiter.acquire()
            waited = time.perf_counter() - queued
            self.rate_limit_wait_s += waited
            RATE_LIMIT_WAIT.labels(source=SOURCE).observe(waited)
        SOURCE_CALLS.labels(source=SOURCE).inc()
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(fn, *args), timeout=self._config.call_timeout_s
            )
        except APIError as e:
            info = error_info(e)
            status = info.status or 0
            kind = "http_5xx" if status >= 500 else f"http_{status}" if status else "http"
            keys = _refuses_keys(info)
            self._failed(op, kind, self._scrub(info.reason), up=not info.retryable and not keys)
            if keys and self._started:
                self._keys_now_refused(op, info)
            if uncertain is not None and status >= 500:
                self._attempt(uncertain)
            raise
        except (TimeoutError, requests.Timeout):
            if uncertain is not None:
                self._attempt(uncertain)
            detail = f"{op} timed out"
            self._failed(op, "timeout", detail, up=False)
            raise _Unreachable("timeout", detail) from None
        except (requests.RequestException, ValueError) as e:
            if uncertain is not None:
                self._attempt(uncertain)
            # requests' JSONDecodeError is a RequestException too: a body that is no JSON
            # was counted and shown as a connection error, pointing the operator at the
            # network. It is an answer, malformed.
            if isinstance(e, requests.RequestException) and not isinstance(e, _MALFORMED):
                kind, detail = "connection", f"{op}: {type(e).__name__}: {e}"
            else:
                kind, detail = "malformed", f"{op}: unreadable answer: {type(e).__name__}: {e}"
            detail = self._scrub(detail)
            self._failed(op, kind, detail, up=False)
            raise _Unreachable(kind, detail) from None
        finally:
            SOURCE_LATENCY.labels(source=SOURCE).observe(time.perf_counter() - started)
        SOURCE_UP.labels(source=SOURCE).set(1)
        self._connected = True
        if self._keys_refused is not None:
            self._keys_now_accepted(op)
        return result

    def _keys_now_refused(self, op: str, info: ErrorInfo) -> None:
        """Alpaca refused the keys after the start (revoked, or replaced in its dashboard):
        one error line for the outage (its end: `_keys_now_accepted`). Meanwhile no order
        or cancel is sent (`submit`, `cancel`: RetryableError, as for a broker that cannot
        be reached, after asking for the account once), and the broker is not connected
        (/ready, the broker-down alert). Before, every bar's orders were sent and each was
        refused with the same 401, a line per order."""
        if self._keys_refused is not None:
            return
        self._keys_refused = self._scrub(info.reason)
        self._keys_refused_at = _now()
        log.error(
            "alpaca.keys_refused",
            endpoint=self._endpoint,
            op=op,
            reason=self._keys_refused,
            rule="Alpaca no longer accepts APCA_API_KEY_ID and APCA_API_SECRET_KEY: no order "
            "is sent (each bar's are closed as not placed and decided again at the next) "
            "until it does; the account is asked again before each batch. Said once an "
            "outage; restart with the paper account's current keys",
        )

    def _keys_now_accepted(self, op: str) -> None:
        since = self._keys_refused_at
        self._keys_refused, self._keys_refused_at = None, None
        log.info(
            "alpaca.keys_accepted",
            endpoint=self._endpoint,
            op=op,
            refused_for_s=round((_now() - since).total_seconds(), 1) if since else None,
        )

    def _attempt(self, client_order_id: str) -> None:
        self._remember(self._attempted, client_order_id)

    def _remember(self, ids: OrderedDict[str, None], client_order_id: str) -> None:
        """Add an id to one of the bounded id sets (the newest `closed_history` are kept)."""
        ids[client_order_id] = None
        ids.move_to_end(client_order_id)
        while len(ids) > self._config.closed_history:
            ids.popitem(last=False)

    def _failed(self, op: str, kind: str, detail: str, *, up: bool) -> None:
        SOURCE_ERRORS.labels(source=SOURCE, kind=kind).inc()
        SOURCE_UP.labels(source=SOURCE).set(1 if up else 0)
        self._connected = up
        self._last_error = detail if detail.startswith(op) else f"{op}: {detail}"
        self._last_error_at = _now()

    def _malformed(self, op: str, what: str, problem: str) -> RetryableError:
        """An answer to `op` that arrived but cannot be read (a body of the wrong shape, a
        field missing): counted, shown and raised as `_call` does a body that is no JSON."""
        return self._unreachable(what, self._unreadable(op, problem))

    def _unreadable(self, op: str, problem: str) -> _Unreachable:
        """`_malformed`'s error before it is named for a caller: what `_call` raises for a
        body that is no JSON, for a helper whose callers handle `_call`'s errors."""
        detail = self._scrub(f"{op}: unreadable answer: {problem}")
        self._failed(op, "malformed", detail, up=False)
        return _Unreachable("malformed", detail)

    def _unreachable(self, what: str, error: _Unreachable) -> RetryableError:
        return RetryableError(
            f"Alpaca trading API at {self._endpoint} unreachable during {what} "
            f"({error.kind}): {self._scrub(error)}"
        )
