"""A loopback Alpaca Trading API v2 and trade-updates websocket, for alpaca-py's real
`TradingClient` and `TradingStream` (and so for `tradingd.brokers.alpaca.AlpacaBroker`).

    fake = AlpacaTradingFake()                  # needs the recorded fixtures (below)
    await fake.start()                          # or: async with AlpacaTradingFake() as fake:
    TradingClient(fake.key_id, fake.secret_key, paper=True, url_override=fake.url)
    TradingStream(fake.key_id, fake.secret_key, paper=True, url_override=fake.stream_url)
    ...
    await fake.stop()

It behaves as /work/shared/fixtures/README.md (section 3, "How a fake Alpaca server should
behave", items 1-5 and 7) describes, and answers with the recorded bodies: the account, order
and position shapes, every error body and the stream's handshake messages come from
/work/shared/fixtures/alpaca (`FIXTURES`, overridable with TRADINGD_SHARED_FIXTURES); nothing
is copied into the repository. Construction raises FileNotFoundError without them; tests call
`need_fixtures()` first, which skips with a reason.

The fake market
  * `set_price(symbol, price, match=True)`: the last trade price; by default open orders of
    the symbol whose conditions it meets are executed at once (see `match`). Without a price
    a market order waits (and buying power is not checked).
  * `match(symbol=None)`: executes every eligible open order at the last price: market at
    the price; limit when the price is at or better than the limit; stop and stop-limit once
    the price crosses the stop (a stop-limit then as a limit); trailing stops against the
    high (low) water mark since they were placed. Returns the orders executed.
  * `set_asset(symbol, tradable=True, fractionable=True, shortable=True)`; `GET
    /v2/assets/{symbol}` answers it (status `inactive` when not tradable). `GET /v2/assets`
    lists the assets `set_asset` set (filtered by `status`, `asset_class` us_equity): every
    other symbol is a tradable one it does not list. `fail_assets(n, status=500)`: the next
    n asset requests (either) answer `status`.
  * `set_position(symbol, qty, avg_entry_price)`; `cash` (attribute).
  * `split_position(symbol, new_rate, old_rate, cash_in_lieu_price=None, cancel_orders=False)`:
    what Alpaca does before an ex-date's session opens: the shares times new/old rounded down
    to whole ones (the fraction paid into `cash` at the given price), the average entry and
    the last price divided by the ratio, the open orders kept as they were (as measured) or
    cancelled.
  * Corporate actions (the market-data API's `GET /v1/corporate-actions`, served on this host
    for alpaca-py's `CorporateActionsClient`): `announce_split(symbol, ex_date, new_rate,
    old_rate, process_date=ex_date)`; answered grouped by type (`forward_splits`,
    `reverse_splits`) in Alpaca's shape, filtered by `symbols`, `types` and `start`/`end` on
    the process date (Alpaca's docs: the date filter is by process date), paged by `limit`
    (at most `corporate_actions_page_size`) with an offset as `next_page_token`;
    `fail_corporate_actions(n, status=403)` refuses the next n.
  * Constructor: `cash` (default: the recorded paper account's cash), `recorded_positions`
    (start with the recorded AAPL/SPY/TSLA positions), `allow_short` (default False: selling
    what is not held answers 403 "account is not allowed to short"), `rate_limit` (requests
    in any `rate_window_s`, a sliding window: 200 per 60 s; `throttled` counts its 429s),
    `quiet_oco_cancel` (do not announce the stop-loss cancelled when a take-profit fills, as
    alpaca-py issue #198 reports of Alpaca), key id and secret.
  * `fill_on_submit(order) -> price | None` (constructor or attribute; default None): a
    deterministic market for daemon tests. A new market order (the entry of a bracket
    included) is executed in full at the price it returns before the POST is answered, so
    the answer already says `filled` (the stream then announces the fill); None leaves the
    order working. Other open orders are not matched and `prices` is not changed, so nothing
    else executes at a time that depends on the process's timing.

Orders (`POST /v2/orders`)
  * Every `client_order_id` ever used is remembered (`used_client_order_ids`), cancelled
    orders included: a reuse answers 422 "client_order_id must be unique".
  * 422 for: neither or both of qty/notional, a sub-penny price, missing prices, a bracket
    or OCO without its prices, a non-tradable asset, a fractional qty of a non-fractionable
    asset. 403 for: a buy costing more than the buying power (cash less open buys), a sell
    of more than is held and not promised to other sells ("insufficient qty available"), a
    sale with no position when shorting is off, and an order beside an opposite one of the
    account it could trade against ("potential wash trade detected": see `_wash_trade`).
  * A new order answers 200 with status `accepted`, string numbers and a UUID `id`; then the
    stream announces it (`new`). Brackets (`order_class=bracket`) and OTOs get legs with
    Alpaca-made client ids, `held` until the entry fills; then the take-profit becomes `new`
    and the stop-loss stays `held` (Alpaca keeps it back) but works. An `oco` order is the
    take-profit limit with the stop-loss as its `held` leg. A fill of one exit cancels the
    other (the take-profit: stop-loss `canceled`; the stop-loss: take-profit `replaced`).
  * `GET /v2/orders` filters `status=open|closed|all` (default open), `limit` (50, max 500),
    `after`/`until` (submission time, exclusive), `direction` (desc), `symbols`, `side` and
    `nested` (legs under their parent, else flat with `legs: null`). `GET /v2/orders/{id}`
    (`nested`), `GET /v2/orders:by_client_order_id` (no legs, like a flat listing).
  * `DELETE /v2/orders/{id}`: 204 for an open order (cancelled at once, announced), 422
    "order is not cancelable" for a closed one, 404 for an unknown id. A bracket entry
    cancelled takes its held legs with it; an OCO take-profit its stop-loss.
    `DELETE /v2/orders`: 207 with a status per order.
  * `GET /v2/positions`, `GET/DELETE /v2/positions/{symbol}` (the close is a market order;
    404 "position not found" without a position), `DELETE /v2/positions` (207), `GET
    /v2/account` (the recorded account, with cash, equity and buying power from the fake's
    state), `GET /v2/clock`.

Admin API for tests (plain methods; call them on the server's event loop)
  * `fill(ref, price=None, qty=None)`: execute an open order now (all of it, or `qty` of it:
    a partial fill) at `price` (default: the last price). `ref` is an Alpaca id or a client
    order id.
  * `reject(ref)`, `expire(ref)`, `cancel_order(ref)`: close an order as Alpaca would, with
    the stream event.
  * `push(ref, event, **fields)`: announce an order's current state with any event name;
    `resend(n=1)`: send the last n events again (duplicate delivery); `lose_fill_events(n=1)`:
    the next n fill or partial_fill events are not delivered, the connection staying up (a
    lost frame, as reported of Alpaca's stream).
  * `fail_next_order(kind_or_status, body=None)`: the next POST /v2/orders answers with a
    canned rejection: one of `REJECTIONS` (`wash_trade`, `pdt`, `market_closed`,
    `insufficient_buying_power`, `insufficient_qty`, `not_allowed_to_short`, ...) or a
    status and body. `throttle(n, retry_after=None)`: the next n requests answer 429 (with
    that Retry-After header, if given). `gateway_timeout(n)`: the
    next n answer 504 (a text body, as a proxy would). `server_error(n, status=500)`.
    `set_account(**fields)`: fields of the account answer (`trading_blocked`, `status`).
    `replace(ref, **changes)`: an operator's edit in Alpaca's web UI (PATCH): a new order
    replaces an open simple order, which closes as `replaced` (`replaced_by` names it).
    `delay_next(seconds, n=1)`: the next n requests are processed, then answered late (a
    client timeout after the order was placed). `gateway_timeout_after(n=1)`: the next n
    requests are processed, then answered 504 (a proxy that gave up after Alpaca acted).
  * Stream: `await drop_stream(refuse=True)` closes every websocket and refuses new ones
    (HTTP 503) until `allow_stream()`; `await wait_listening(n=1, timeout=5.0)`;
    `listening` (count of subscribed connections).
  * Inspection: `requests` (every HTTP request: method, path, query, JSON body, auth header
    names), `posted_orders()` (the bodies of POST /v2/orders), `orders` (id -> `FakeOrder`),
    `order(ref)`, `order_json(ref)`, `orders_with_client_id(cid)`, `events` (every
    trade_updates message pushed, delivered or not), `account()`, `positions()`.
  * `start_in_thread()` / `stop_thread()` run the fake on its own loop in a daemon thread
    (for a daemon end-to-end test that owns its own loop); admin calls must then go through
    `call(fn, *args)`, which runs them on the fake's loop.

Texts not recorded anywhere (and so not verified against Alpaca): the 429 body, the 504 page,
the non-tradable / non-fractionable / market-closed / not-cancelable / position-not-found
messages, the asset answer (Alpaca's documented fields). The stream frames are binary
JSON, as the paper endpoint sends, each with `timestamp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from . import LoopThread

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("TRADINGD_SHARED_FIXTURES", ROOT.parent / "shared" / "fixtures"))
ALPACA = FIXTURES / "alpaca"

EPS = 1e-9
OPEN_STATUSES = frozenset(
    {
        "new",
        "accepted",
        "pending_new",
        "partially_filled",
        "held",
        "accepted_for_bidding",
        "pending_cancel",
        "pending_replace",
        "stopped",
        "calculated",
    }
)


def fixtures_available() -> bool:
    return (ALPACA / "trading" / "account_paper_recorded_2025-11-14.json").exists()


def need_fixtures() -> Path:
    """The Alpaca fixtures folder, or skip the calling test with the reason."""
    import pytest

    if not fixtures_available():
        pytest.skip(f"recorded Alpaca fixtures not present at {ALPACA}")
    return ALPACA


def fixture(*parts: str) -> Any:
    return json.loads(ALPACA.joinpath(*parts).read_text())


def _num(x: float | None) -> str | None:
    """A number as Alpaca writes it: a decimal string without float residue."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _parse_time(value: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def _sub_penny(price: float) -> bool:
    digits = 2 if price >= 1 else 4
    return abs(round(price, digits) - price) > 1e-9


# Canned rejections for `fail_next_order` (status, fixture file or body).
REJECTIONS: dict[str, tuple[int, str | dict[str, Any]]] = {
    "insufficient_buying_power": (403, "403_insufficient_buying_power.json"),
    "insufficient_qty": (403, "403_insufficient_qty_available.json"),
    "not_allowed_to_short": (403, "403_not_allowed_to_short.json"),
    "wash_trade": (403, "403_wash_trade.json"),
    "pdt": (403, "403_pdt_protection.json"),
    "qty_must_be_integer": (422, "422_qty_must_be_integer.json"),
    "sub_penny": (422, "422_sub_penny_limit_price.json"),
    "duplicate": (422, "422_duplicate_client_order_id.json"),
    "forbidden": (403, "403_forbidden_missing_auth_headers.json"),
    "unauthorized": (401, "401_request_not_authorized.json"),
    # Not recorded: texts chosen to look like Alpaca's.
    "market_closed": (422, {"code": 42210000, "message": "market is closed"}),
    "not_tradable": (422, {"code": 42210000, "message": 'asset "XYZ" is not tradable'}),
    "not_fractionable": (422, {"code": 42210000, "message": 'asset "XYZ" is not fractionable'}),
}


@dataclass
class FakeOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: float
    time_in_force: str
    created_at: datetime
    order_class: str = ""
    limit_price: float | None = None
    stop_price: float | None = None
    trail_percent: float | None = None
    trail_price: float | None = None
    extended_hours: bool = False
    status: str = "accepted"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    parent_id: str | None = None
    leg_ids: list[str] = field(default_factory=list)
    hwm: float | None = None
    triggered: bool = False
    asset_id: str = ""

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> float:
        return self.qty - self.filled_qty


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth_headers: tuple[str, ...]


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    authed: bool = False
    listening: bool = False


class AlpacaTradingFake(LoopThread):
    """See the module docstring."""

    def __init__(
        self,
        *,
        key_id: str = "PKFAKE0TESTKEY0000001",
        secret_key: str = "fake-secret-0123456789abcdefghijklmnop",
        cash: float | None = None,
        recorded_positions: bool = False,
        allow_short: bool = False,
        rate_limit: int = 200,
        quiet_oco_cancel: bool = False,
        rate_window_s: float = 60.0,
        fill_on_submit: Callable[[FakeOrder], float | None] | None = None,
    ) -> None:
        self.key_id = key_id
        self.secret_key = secret_key
        self._account_fixture = fixture("trading", "account_paper_recorded_2025-11-14.json")
        self._order_fixture = fixture("trading", "order_market_accepted_recorded_2025-11-14.json")
        self._position_fixture = fixture("trading", "positions_recorded_2025-11-14.json")
        self._clock_fixture = fixture("trading", "clock.json")
        self.cash = float(cash if cash is not None else self._account_fixture["cash"])
        # Alpaca's wash-trade protection (`_wash_trade`); off for a test of request bodies
        # that sends both sides of a symbol at once.
        self.wash_trade_protection = True
        self.allow_short = allow_short
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self.throttled = 0  # requests answered 429 for the rate limit
        self.quiet_oco_cancel = quiet_oco_cancel
        self.fill_on_submit = fill_on_submit
        self.market_open = True
        self.prices: dict[str, float] = {}
        self.assets: dict[str, dict[str, bool]] = {}
        # Assets the listing (GET /v2/assets) answers after those `set_asset` set: e.g. the
        # old, inactive asset of a ticker a new company took (Alpaca lists both).
        self.listed_extra: list[dict[str, Any]] = []
        self._asset_failures: deque[int] = deque()  # `fail_assets`
        self.positions_book: dict[str, tuple[float, float]] = {}
        self.lastday_prices: dict[str, float] = {}
        if recorded_positions:
            for row in self._position_fixture:
                sym = row["symbol"]
                self.positions_book[sym] = (float(row["qty"]), float(row["avg_entry_price"]))
                self.prices[sym] = float(row["current_price"])
                self.lastday_prices[sym] = float(row["lastday_price"])
        # Announced splits (`announce_split`), answered by GET /v1/corporate-actions.
        self.splits: list[dict[str, Any]] = []
        self.corporate_actions_page_size = 1000  # smaller: several pages
        # (status, body) of the next corporate-actions answers (`fail_corporate_actions`).
        self._ca_failures: deque[tuple[int, dict[str, Any]]] = deque()
        self.orders: dict[str, FakeOrder] = {}
        self.used_client_order_ids: set[str] = set()
        self.requests: list[RecordedRequest] = []
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self._conns: set[_Conn] = set()
        self._accept_streams = True
        self._order_failures: deque[tuple[int, Any]] = deque()
        self._http_faults: deque[tuple[int, str, str, dict[str, str]]] = deque()
        self._delays: deque[float] = deque()
        self._late_gateway_timeouts = 0
        self._lost_fill_events = 0
        # Request times in the last rate window (sliding: the strictest reading of "200
        # requests per minute").
        self._recent: deque[float] = deque()
        self._last_time = datetime.now(UTC)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    base_url = url

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    async def start(self) -> AlpacaTradingFake:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/v2/account", self._get_account)
        r.add_get("/v2/clock", self._get_clock)
        r.add_post("/v2/orders", self._post_order)
        r.add_get("/v2/orders", self._list_orders)
        r.add_delete("/v2/orders", self._cancel_all)
        r.add_get("/v2/orders:by_client_order_id", self._get_by_client_id)
        r.add_get("/v2/orders/{order_id}", self._get_order)
        r.add_delete("/v2/orders/{order_id}", self._delete_order)
        r.add_get("/v2/positions", self._get_positions)
        r.add_delete("/v2/positions", self._close_all_positions)
        r.add_get("/v2/positions/{symbol}", self._get_position)
        r.add_get("/v2/assets", self._list_assets)
        r.add_get("/v2/assets/{symbol}", self._get_asset)
        r.add_delete("/v2/positions/{symbol}", self._close_position)
        r.add_get("/stream", self._stream)
        # The market-data API's corporate actions, on the same host (tests point
        # broker.alpaca.data_url here).
        r.add_get("/v1/corporate-actions", self._corporate_actions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        host_port = runner.addresses[0]
        self.port = int(host_port[1])
        return self

    async def stop(self) -> None:
        for conn in list(self._conns):
            conn.queue.put_nowait(None)
            await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fill_open_orders_every(
        self, price_of: Callable[[str], float], interval_s: float
    ) -> threading.Event:
        """A market for a daemon test or benchmark: every `interval_s`, each open order is
        matched at `price_of(symbol)` (a market order fills as a paper account fills it), so
        fills come back over the stream. Runs in a daemon thread (after `start_in_thread`);
        setting the returned event stops it."""
        stop = threading.Event()

        def fill_open() -> None:
            for o in list(self.orders.values()):
                if o.is_open:
                    self.set_price(o.symbol, price_of(o.symbol))

        def pump() -> None:
            while not stop.wait(interval_s):
                self.call(fill_open)

        threading.Thread(target=pump, name="AlpacaMarket", daemon=True).start()
        return stop

    # ------------------------------------------------------------------------- admin: market

    def set_price(self, symbol: str, price: float, match: bool = True) -> list[FakeOrder]:
        self.prices[symbol] = float(price)
        for o in self.orders.values():
            if o.symbol == symbol and o.type == "trailing_stop" and o.is_open:
                self._track_hwm(o, float(price))
        return self.match(symbol) if match else []

    def set_asset(
        self,
        symbol: str,
        *,
        tradable: bool = True,
        fractionable: bool = True,
        shortable: bool = True,
    ) -> None:
        self.assets[symbol] = {
            "tradable": tradable,
            "fractionable": fractionable,
            "shortable": shortable,
        }

    def set_position(self, symbol: str, qty: float, avg_entry_price: float) -> None:
        if abs(qty) <= EPS:
            self.positions_book.pop(symbol, None)
        else:
            self.positions_book[symbol] = (float(qty), float(avg_entry_price))

    def announce_split(
        self,
        symbol: str,
        ex_date: date,
        new_rate: float,
        old_rate: float,
        process_date: date | None = None,
    ) -> None:
        """A split announced in the corporate actions (forward when new_rate > old_rate).
        `process_date`: the date the API's start/end filter on; the ex-date unless given (for
        splits they are the same date, as others have observed; not verified here)."""
        forward = new_rate > old_rate
        row: dict[str, Any] = {
            "corporate_action_type": "forward_split" if forward else "reverse_split",
            "symbol": symbol,
            "new_rate": new_rate,
            "old_rate": old_rate,
            "process_date": (process_date or ex_date).isoformat(),
            "ex_date": ex_date.isoformat(),
            "record_date": ex_date.isoformat(),
            "payable_date": ex_date.isoformat(),
        }
        if forward:
            row["cusip"] = "000000000"
        else:
            row["old_cusip"], row["new_cusip"] = "000000000", "000000001"
        self.splits.append(row)

    def fail_corporate_actions(self, n: int = 1, status: int = 403) -> None:
        """The next n corporate-actions requests answer `status` (403: a plan without the
        data, as Alpaca words a subscription refusal; 500: the server down)."""
        body = (
            {"message": "subscription does not permit querying corporate actions"}
            if status == 403
            else {"message": "internal server error"}
        )
        self._ca_failures.extend([(status, body)] * n)

    def corporate_actions_work(self) -> None:
        """The corporate-actions failures still queued are dropped: the next requests are
        answered."""
        self._ca_failures.clear()

    def split_position(
        self,
        symbol: str,
        new_rate: float,
        old_rate: float,
        *,
        cash_in_lieu_price: float | None = None,
        cancel_orders: bool = False,
    ) -> None:
        """What Alpaca does before the ex-date's session opens: the position's shares times
        new/old, rounded down to whole shares (the fraction paid in cash at
        `cash_in_lieu_price`), its average entry divided by the same. The open orders stay as
        they were (as measured), or are cancelled with `cancel_orders`."""
        ratio = new_rate / old_rate
        qty, avg = self.positions_book.get(symbol, (0.0, 0.0))
        if qty:
            split = qty * ratio
            whole = float(math.floor(split + EPS)) if split > 0 else float(math.ceil(split - EPS))
            if abs(split - whole) > EPS and cash_in_lieu_price is not None:
                self.cash += (split - whole) * cash_in_lieu_price
            self.set_position(symbol, whole, avg / ratio)
        if symbol in self.prices:
            self.prices[symbol] /= ratio
        if cancel_orders:
            for o in list(self.orders.values()):
                if o.symbol == symbol and o.is_open and o.parent_id is None:
                    self._cancel(o)

    def match(self, symbol: str | None = None) -> list[FakeOrder]:
        executed = []
        for o in sorted(self.orders.values(), key=lambda o: o.created_at):
            if symbol is not None and o.symbol != symbol:
                continue
            price = self.prices.get(o.symbol)
            if price is None or not self._eligible(o):
                continue
            if self._triggers(o, price):
                self._execute(o, o.remaining, price)
                executed.append(o)
        return executed

    # ------------------------------------------------------------------------- admin: orders

    def order(self, ref: str) -> FakeOrder:
        if ref in self.orders:
            return self.orders[ref]
        found = [o for o in self.orders.values() if o.client_order_id == ref]
        if not found:
            raise KeyError(f"no order {ref!r}")
        return found[-1]

    def orders_with_client_id(self, client_order_id: str) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    def order_json(self, ref: str, nested: bool = True) -> dict[str, Any]:
        return self._json(self.order(ref), nested)

    def fill(self, ref: str, price: float | None = None, qty: float | None = None) -> FakeOrder:
        o = self.order(ref)
        if not o.is_open:
            raise ValueError(f"order {ref!r} is {o.status}")
        p = price if price is not None else self.prices.get(o.symbol)
        if p is None:
            raise ValueError(f"no price for {o.symbol}: pass price= or set_price() first")
        self._execute(o, min(qty if qty is not None else o.remaining, o.remaining), float(p))
        return o

    def reject(self, ref: str) -> FakeOrder:
        o = self.order(ref)
        now = self._now()
        o.status, o.failed_at, o.updated_at = "rejected", now, now
        self._event("rejected", o)
        self._close_legs(o)
        return o

    def expire(self, ref: str) -> FakeOrder:
        o = self.order(ref)
        now = self._now()
        o.status, o.expired_at, o.updated_at = "expired", now, now
        self._event("expired", o)
        self._close_legs(o)
        return o

    def cancel_order(self, ref: str) -> FakeOrder:
        o = self.order(ref)
        self._cancel(o)
        return o

    def push(self, ref: str, event: str, **fields: Any) -> None:
        self._event(event, self.order(ref), **fields)

    def resend(self, n: int = 1) -> None:
        for message in self.events[-n:]:
            self._broadcast(message)

    # ------------------------------------------------------------------------- admin: faults

    def fail_next_order(self, kind_or_status: str | int, body: Any = None) -> None:
        if isinstance(kind_or_status, str):
            status, source = REJECTIONS[kind_or_status]
            payload = fixture("errors", source) if isinstance(source, str) else source
        else:
            status, payload = kind_or_status, body
        self._order_failures.append((status, payload))

    def throttle(self, n: int = 1, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        for _ in range(n):
            self._http_faults.append(
                (
                    429,
                    json.dumps({"code": 42910000, "message": "rate limit exceeded"}),
                    "json",
                    headers,
                )
            )

    def gateway_timeout(self, n: int = 1) -> None:
        for _ in range(n):
            self._http_faults.append(
                (504, "<html><body>504 Gateway Time-out</body></html>", "html", {})
            )

    def server_error(self, n: int = 1, status: int = 500) -> None:
        for _ in range(n):
            body = json.dumps({"code": status * 100000, "message": "internal server error"})
            self._http_faults.append((status, body, "json", {}))

    def fail_assets(self, n: int = 1, status: int = 500) -> None:
        self._asset_failures.extend([status] * n)

    def _asset_failure(self) -> web.Response | None:
        if not self._asset_failures:
            return None
        status = self._asset_failures.popleft()
        return self._error(status, {"code": status * 100000, "message": "assets unavailable"})

    def gateway_timeout_after(self, n: int = 1) -> None:
        self._late_gateway_timeouts += n

    def delay_next(self, seconds: float, n: int = 1) -> None:
        self._delays.extend([seconds] * n)

    def posted_orders(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.method == "POST" and r.path == "/v2/orders"]

    # ------------------------------------------------------------------------- admin: stream

    @property
    def listening(self) -> int:
        return sum(1 for c in self._conns if c.listening)

    async def drop_stream(self, refuse: bool = True) -> None:
        self._accept_streams = not refuse
        conns = list(self._conns)
        for conn in conns:
            conn.listening = False
            conn.queue.put_nowait(None)
        for conn in conns:
            await conn.ws.close()

    def allow_stream(self) -> None:
        self._accept_streams = True

    async def wait_listening(self, n: int = 1, timeout: float = 5.0) -> None:
        async def until() -> None:
            while self.listening < n:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(until(), timeout)

    # ------------------------------------------------------------------------- account

    def _held_buys(self) -> float:
        total = 0.0
        for o in self.orders.values():
            if o.side != "buy" or not o.is_open or self._waiting_leg(o):
                continue
            price = o.limit_price or o.stop_price or self.prices.get(o.symbol)
            if price:
                total += o.remaining * price
        return total

    def buying_power(self) -> float:
        return max(self.cash - self._held_buys(), 0.0)

    def _market_value(self) -> tuple[float, float]:
        long = short = 0.0
        for sym, (qty, avg) in self.positions_book.items():
            value = qty * self.prices.get(sym, avg)
            if qty >= 0:
                long += value
            else:
                short += value
        return long, short

    def replace(self, ref: str, **changes: Any) -> FakeOrder:
        """PATCH /v2/orders/{id} as an operator's edit in Alpaca's web UI: a new order with
        the changes (qty, limit_price, stop_price, time_in_force; a new client id unless one
        is given) replaces an open simple order, which closes as `replaced` naming it."""
        old = self.order(ref)
        if old is None or not old.is_open or old.leg_ids or old.parent_id or old.filled_qty:
            raise ValueError(f"the fake replaces open, unfilled simple orders only: {ref}")
        body: dict[str, Any] = {
            "symbol": old.symbol,
            "qty": old.qty,
            "side": old.side,
            "type": old.type,
            "time_in_force": old.time_in_force,
            "limit_price": old.limit_price,
            "stop_price": old.stop_price,
        }
        body.update(changes)
        new = self._create(body)
        new.replaces = old.id
        now = self._now()
        old.status, old.replaced_by, old.replaced_at, old.updated_at = "replaced", new.id, now, now
        self._event("replaced", old)
        return new

    def set_account(self, **fields: Any) -> None:
        """Fields of GET /v2/account from now on (e.g. `trading_blocked=True`,
        `status="ACCOUNT_CLOSED"`); cash and the values derived from the book stay the fake's."""
        self._account_fixture.update(fields)

    def account(self) -> dict[str, Any]:
        body = copy.deepcopy(self._account_fixture)
        long, short = self._market_value()
        equity = self.cash + long + short
        bp = self.buying_power()
        body.update(
            {
                "cash": _num(self.cash),
                "buying_power": _num(bp),
                "regt_buying_power": _num(bp),
                "effective_buying_power": _num(bp),
                "non_marginable_buying_power": _num(bp),
                "daytrading_buying_power": "0",
                "equity": _num(equity),
                "portfolio_value": _num(equity),
                "long_market_value": _num(long),
                "short_market_value": _num(short),
                "position_market_value": _num(long + short),
                "shorting_enabled": self.allow_short,
            }
        )
        return body

    def positions(self) -> list[dict[str, Any]]:
        template = {row["symbol"]: row for row in self._position_fixture}
        fallback = self._position_fixture[0]
        out = []
        for sym, (qty, avg) in sorted(self.positions_book.items()):
            row = copy.deepcopy(template.get(sym, fallback))
            price = self.prices.get(sym, avg)
            last = self.lastday_prices.get(sym, price)
            value = qty * price
            cost = qty * avg
            row.update(
                {
                    "symbol": sym,
                    "asset_id": row["asset_id"]
                    if sym in template
                    else str(uuid.uuid5(uuid.NAMESPACE_URL, sym)),
                    "qty": _num(qty),
                    "qty_available": _num(qty - self._held_sells(sym)),
                    "avg_entry_price": _num(avg),
                    "side": "long" if qty >= 0 else "short",
                    "market_value": _num(value),
                    "cost_basis": _num(cost),
                    "unrealized_pl": _num(value - cost),
                    "unrealized_plpc": _num((value - cost) / abs(cost)) if cost else "0",
                    "unrealized_intraday_pl": _num(qty * (price - last)),
                    "unrealized_intraday_plpc": _num((price - last) / last) if last else "0",
                    "current_price": _num(price),
                    "lastday_price": _num(last),
                    "change_today": _num((price - last) / last) if last else "0",
                }
            )
            out.append(row)
        return out

    # ------------------------------------------------------------------------- HTTP plumbing

    def _count_request(self) -> int:
        """Requests in the sliding window, this one included."""
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.rate_window_s:
            self._recent.popleft()
        return len(self._recent)

    def _rate_headers(self, count: int) -> dict[str, str]:
        reset = time.time() + (self.rate_window_s - (time.monotonic() - self._recent[0]))
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - count)),
            "X-RateLimit-Reset": str(int(reset)),
        }

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/stream":
            return await handler(request)
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
        auth = tuple(h for h in ("APCA-API-KEY-ID", "APCA-API-SECRET-KEY") if h in request.headers)
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), body, auth)
        )
        count = self._count_request()
        headers = self._rate_headers(count)
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if not key or not secret:
            response: web.StreamResponse = self._error(
                403, "403_forbidden_missing_auth_headers.json"
            )
        elif key != self.key_id or secret != self.secret_key:
            response = self._error(401, "401_request_not_authorized.json")
        elif self._http_faults:
            status, text, kind, extra = self._http_faults.popleft()
            content = "application/json" if kind == "json" else "text/html"
            response = web.Response(status=status, text=text, content_type=content)
            response.headers.update(extra)
        elif count > self.rate_limit:
            self.throttled += 1
            response = web.json_response(
                {"code": 42910000, "message": "rate limit exceeded"}, status=429
            )
        else:
            response = await handler(request)
            if self._delays:
                await asyncio.sleep(self._delays.popleft())
            if self._late_gateway_timeouts:
                self._late_gateway_timeouts -= 1
                response = web.Response(
                    status=504,
                    text="<html><body>504 Gateway Time-out</body></html>",
                    content_type="text/html",
                )
        response.headers.update(headers)
        return response

    def _error(self, status: int, source: str | dict[str, Any], **fields: Any) -> web.Response:
        body = fixture("errors", source) if isinstance(source, str) else dict(source)
        body.update(fields)
        return web.json_response(body, status=status)

    def _now(self) -> datetime:
        now = datetime.now(UTC)
        if now <= self._last_time:
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return now

    # ------------------------------------------------------------------------- handlers

    async def _get_account(self, request: web.Request) -> web.Response:
        return web.json_response(self.account())

    async def _get_clock(self, request: web.Request) -> web.Response:
        body = dict(self._clock_fixture)
        body["is_open"] = self.market_open
        return web.json_response(body)

    async def _post_order(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(422, {"code": 40010001, "message": "request body format is invalid"})
        if self._order_failures:
            status, payload = self._order_failures.popleft()
            return web.json_response(payload, status=status)
        rejection = self._validate(body)
        if rejection is not None:
            return rejection
        parent = self._create(body)
        if self.fill_on_submit is not None and parent.type == "market":
            price = self.fill_on_submit(parent)
            if price is not None:
                self._execute(parent, parent.remaining, float(price))
        return web.json_response(self._json(parent, nested=True))

    def _wash_trade(
        self, symbol: str, side: str, kind: str, limit: float | None
    ) -> web.Response | None:
        """Alpaca's wash-trade protection (the recorded answer's reject_reason: "opposite
        side market/stop order exists"): a new order is refused while an order of the
        account on the other side of the symbol works that it could trade against: a
        market or stop order, or a limit order the new one crosses (any limit against a
        new market order). Legs still `held` behind their entry do not count."""
        if not self.wash_trade_protection:
            return None
        for o in self.orders.values():
            if o.symbol != symbol or o.side == side or not o.is_open or o.status == "held":
                continue
            crosses = o.type != "limit" or kind != "limit" or limit is None
            if not crosses and o.limit_price is not None:
                crosses = limit >= o.limit_price if side == "buy" else limit <= o.limit_price
            if crosses:
                return self._error(403, "403_wash_trade.json")
        return None

    def _validate(self, body: dict[str, Any]) -> web.Response | None:
        cid = body.get("client_order_id")
        if isinstance(cid, str):
            if len(cid) > 128:
                return self._error(
                    422,
                    {
                        "code": 40010001,
                        "message": "client_order_id must be no more than 128 characters",
                    },
                )
            if cid in self.used_client_order_ids:
                return self._error(422, "422_duplicate_client_order_id.json")
        qty, notional = _float(body.get("qty")), _float(body.get("notional"))
        if qty is None and notional is None:
            return self._error(422, "422_qty_or_notional_required.json")
        if qty is not None and notional is not None:
            return self._error(422, "422_only_one_of_qty_or_notional.json")
        symbol = str(body.get("symbol") or "")
        side = body.get("side")
        kind = body.get("type")
        if (
            not symbol
            or side not in ("buy", "sell")
            or kind
            not in (
                "market",
                "limit",
                "stop",
                "stop_limit",
                "trailing_stop",
            )
        ):
            return self._error(422, {"code": 40010001, "message": "invalid order request"})
        asset = self.assets.get(symbol, {})
        if not asset.get("tradable", True):
            return self._error(
                422, {"code": 42210000, "message": f'asset "{symbol}" is not tradable'}
            )
        if qty is not None and not float(qty).is_integer() and not asset.get("fractionable", True):
            return self._error(
                422, {"code": 42210000, "message": f'asset "{symbol}" is not fractionable'}
            )
        order_class = str(body.get("order_class") or "")
        tp = (body.get("take_profit") or {}).get("limit_price")
        sl = (body.get("stop_loss") or {}).get("stop_price")
        sl_limit = (body.get("stop_loss") or {}).get("limit_price")
        if (
            kind in ("limit", "stop_limit")
            and body.get("limit_price") is None
            and order_class != "oco"
        ):
            return self._error(422, {"code": 40010001, "message": "limit_price is required"})
        if kind in ("stop", "stop_limit") and body.get("stop_price") is None:
            return self._error(422, {"code": 40010001, "message": "stop_price is required"})
        if kind == "trailing_stop" and (body.get("trail_percent") is None) == (
            body.get("trail_price") is None
        ):
            return self._error(
                422,
                {"code": 40010001, "message": "one of trail_price or trail_percent is required"},
            )
        if order_class in ("bracket", "oco") and (tp is None or sl is None):
            return self._error(
                422,
                {
                    "code": 42210000,
                    "message": f"{order_class} orders require take_profit.limit_price and "
                    "stop_loss.stop_price",
                },
            )
        if order_class == "oto" and tp is None and sl is None:
            return self._error(
                422, {"code": 42210000, "message": "oto orders require take_profit or stop_loss"}
            )
        if order_class == "oco" and kind != "limit":
            return self._error(
                422, {"code": 42210000, "message": "oco orders must be limit orders"}
            )
        for name, value in (
            ("limit_price", body.get("limit_price")),
            ("stop_price", body.get("stop_price")),
            ("limit_price", tp),
            ("stop_price", sl),
            ("limit_price", sl_limit),
        ):
            price = _float(value)
            if price is not None and _sub_penny(price):
                return self._error(
                    422,
                    {
                        "code": 42210000,
                        "message": f"invalid {name} {_num(price)}. sub-penny increment does not "
                        "fulfill minimum pricing criteria",
                    },
                )
        wash = self._wash_trade(symbol, side, kind, _float(body.get("limit_price")))
        if wash is not None:
            return wash
        size = qty if qty is not None else 0.0
        if side == "buy":
            est = _float(body.get("limit_price")) or _float(body.get("stop_price"))
            est = est or self.prices.get(symbol)
            cost: float | None = None
            if notional is not None:
                cost = notional
            elif est is not None:
                cost = size * est
            if cost is not None and cost > self.buying_power() + 1e-6:
                return self._error(
                    403,
                    "403_insufficient_buying_power.json",
                    buying_power=_num(self.buying_power()),
                    cost_basis=_num(cost),
                )
        elif side == "sell" and qty is not None:
            return self._check_sell(symbol, qty)
        return None

    def _check_sell(self, symbol: str, qty: float) -> web.Response | None:
        held, _ = self.positions_book.get(symbol, (0.0, 0.0))
        promised = self._held_sells(symbol)
        available = max(held - promised, 0.0)
        if qty <= available + EPS:
            return None
        shortable = self.assets.get(symbol, {}).get("shortable", True)
        if held <= EPS and promised <= EPS and self.allow_short and shortable:
            return None
        if held <= EPS and not self.allow_short:
            return self._error(403, "403_not_allowed_to_short.json")
        return self._error(
            403,
            "403_insufficient_qty_available.json",
            available=_num(available),
            existing_qty=_num(held),
            held_for_orders=_num(promised),
            symbol=symbol,
            message=f"insufficient qty available for order (requested: {_num(qty)}, "
            f"available: {_num(available)})",
        )

    def _held_sells(self, symbol: str) -> float:
        """Shares promised to open sells; an exit pair (OCO, bracket legs) counts once."""
        total = 0.0
        groups: dict[str, float] = {}
        for o in self.orders.values():
            if o.symbol != symbol or o.side != "sell" or not o.is_open or self._waiting_leg(o):
                continue
            group = o.parent_id or (o.id if o.leg_ids else None)
            if group is None:
                total += o.remaining
            else:
                groups[group] = max(groups.get(group, 0.0), o.remaining)
        return total + sum(groups.values())

    def _create(self, body: dict[str, Any]) -> FakeOrder:
        now = self._now()
        cid = body.get("client_order_id") or str(uuid.uuid4())
        order_class = str(body.get("order_class") or "")
        symbol = str(body["symbol"])
        asset_id = str(uuid.uuid5(uuid.NAMESPACE_URL, symbol))
        qty = _float(body.get("qty"))
        if qty is None:  # notional: at the last price
            price = self.prices.get(symbol) or 1.0
            qty = round(float(body["notional"]) / price, 9)
        parent = FakeOrder(
            id=str(uuid.uuid4()),
            client_order_id=cid,
            symbol=symbol,
            side=str(body["side"]),
            type=str(body["type"]),
            qty=qty,
            time_in_force=str(body.get("time_in_force") or "day"),
            created_at=now,
            updated_at=now,
            order_class=order_class,
            limit_price=_float(body.get("limit_price")),
            stop_price=_float(body.get("stop_price")),
            trail_percent=_float(body.get("trail_percent")),
            trail_price=_float(body.get("trail_price")),
            extended_hours=bool(body.get("extended_hours")),
            asset_id=asset_id,
        )
        if order_class == "oco":
            parent.limit_price = _float((body.get("take_profit") or {}).get("limit_price"))
        self.used_client_order_ids.add(cid)
        self.orders[parent.id] = parent
        if parent.type == "trailing_stop" and symbol in self.prices:
            self._track_hwm(parent, self.prices[symbol])
        legs: list[FakeOrder] = []
        exit_side = "sell" if parent.side == "buy" else "buy"
        tp = body.get("take_profit") or {}
        sl = body.get("stop_loss") or {}
        if order_class in ("bracket", "oto") and tp.get("limit_price") is not None:
            legs.append(self._leg(parent, exit_side, "limit", _float(tp["limit_price"]), None))
        if order_class in ("bracket", "oto", "oco") and sl.get("stop_price") is not None:
            leg_side = parent.side if order_class == "oco" else exit_side
            kind = "stop_limit" if sl.get("limit_price") is not None else "stop"
            legs.append(
                self._leg(
                    parent, leg_side, kind, _float(sl.get("limit_price")), _float(sl["stop_price"])
                )
            )
        parent.leg_ids = [leg.id for leg in legs]
        # The answer says `accepted`; the stream then announces the order as `new`.
        self._schedule_new(parent)
        return parent

    def _leg(
        self, parent: FakeOrder, side: str, kind: str, limit: float | None, stop: float | None
    ) -> FakeOrder:
        leg = FakeOrder(
            id=str(uuid.uuid4()),
            client_order_id=str(uuid.uuid4()),
            symbol=parent.symbol,
            side=side,
            type=kind,
            qty=parent.qty,
            time_in_force=parent.time_in_force,
            created_at=parent.created_at,
            updated_at=parent.created_at,
            order_class=parent.order_class,
            limit_price=limit,
            stop_price=stop,
            status="held",
            parent_id=parent.id,
            asset_id=parent.asset_id,
        )
        self.used_client_order_ids.add(leg.client_order_id)
        self.orders[leg.id] = leg
        return leg

    def _schedule_new(self, o: FakeOrder) -> None:
        def announce() -> None:
            if o.status == "accepted":
                o.status, o.updated_at = "new", self._now()
                self._event("new", o)

        asyncio.get_running_loop().call_soon(announce)

    async def _list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        nested = _truthy(q.get("nested"))
        try:
            limit = min(max(int(q.get("limit", "50")), 1), 500)
        except ValueError:
            return self._error(422, {"code": 40010001, "message": "invalid limit"})
        after = _parse_time(q["after"]) if "after" in q else None
        until = _parse_time(q["until"]) if "until" in q else None
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        side = q.get("side")
        rows = [o for o in self.orders.values() if not (nested and o.parent_id)]
        if status == "open":
            rows = [o for o in rows if o.is_open]
        elif status == "closed":
            rows = [o for o in rows if not o.is_open]
        if after is not None:
            rows = [o for o in rows if o.created_at > after]
        if until is not None:
            rows = [o for o in rows if o.created_at < until]
        if symbols is not None:
            rows = [o for o in rows if o.symbol in symbols]
        if side:
            rows = [o for o in rows if o.side == side]
        rows.sort(key=lambda o: o.created_at, reverse=q.get("direction", "desc") != "asc")
        return web.json_response([self._json(o, nested) for o in rows[:limit]])

    async def _get_order(self, request: web.Request) -> web.Response:
        o = self.orders.get(request.match_info["order_id"])
        if o is None:
            return self._error(404, "404_order_not_found.json")
        return web.json_response(self._json(o, _truthy(request.query.get("nested"))))

    async def _get_by_client_id(self, request: web.Request) -> web.Response:
        cid = request.query.get("client_order_id", "")
        found = [o for o in self.orders.values() if o.client_order_id == cid]
        if not found:
            return self._error(404, "404_order_not_found.json")
        return web.json_response(self._json(found[-1], nested=False))

    async def _delete_order(self, request: web.Request) -> web.Response:
        o = self.orders.get(request.match_info["order_id"])
        if o is None:
            return self._error(404, "404_order_not_found.json")
        if not o.is_open:
            return self._error(422, {"code": 42210000, "message": "order is not cancelable"})
        self._cancel(o)
        return web.Response(status=204)

    async def _cancel_all(self, request: web.Request) -> web.Response:
        out = []
        for o in list(self.orders.values()):
            if o.is_open and o.parent_id is None:
                self._cancel(o)
                out.append({"id": o.id, "status": 200, "body": None})
        return web.json_response(out, status=207)

    async def _corporate_actions(self, request: web.Request) -> web.Response:
        """GET /v1/corporate-actions as Alpaca's data API answers it: `symbols`, `types`,
        `start`/`end` (inclusive, on the process date, as Alpaca's docs say), `limit` and
        `page_token` (an offset here), the actions grouped by type; `next_page_token` null on
        the last page."""
        if self._ca_failures:
            status, body = self._ca_failures.popleft()
            return web.json_response(body, status=status)
        q = request.query
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        types = set(q["types"].split(",")) if q.get("types") else None
        start, end = q.get("start"), q.get("end")
        rows = [
            r
            for r in sorted(self.splits, key=lambda r: (r["ex_date"], r["symbol"]))
            if (symbols is None or r["symbol"] in symbols)
            and (types is None or r["corporate_action_type"] in types)
            and (start is None or r["process_date"] >= start)
            and (end is None or r["process_date"] <= end)
        ]
        offset = int(q.get("page_token") or 0)
        limit = min(int(q.get("limit") or 1000), self.corporate_actions_page_size)
        page = rows[offset : offset + limit]
        grouped: dict[str, list[dict[str, Any]]] = {}
        for r in page:
            grouped.setdefault(r["corporate_action_type"] + "s", []).append(r)
        more = offset + limit < len(rows)
        return web.json_response(
            {"corporate_actions": grouped, "next_page_token": str(offset + limit) if more else None}
        )

    async def _get_positions(self, request: web.Request) -> web.Response:
        return web.json_response(self.positions())

    async def _get_asset(self, request: web.Request) -> web.Response:
        """An asset as `set_asset` left it (every symbol is a tradable one until then), in
        the shape Alpaca's docs give (not recorded): `status` active or inactive."""
        failed = self._asset_failure()
        if failed is not None:
            return failed
        return web.json_response(self._asset(request.match_info["symbol"]))

    async def _list_assets(self, request: web.Request) -> web.Response:
        """The assets `set_asset` set, as `_get_asset` answers them, filtered by `status`
        (active, inactive) and `asset_class` (Alpaca's default us_equity: all of them)."""
        failed = self._asset_failure()
        if failed is not None:
            return failed
        status = request.query.get("status")
        kind = request.query.get("asset_class", "us_equity")
        listed = [self._asset(sym) for sym in sorted(self.assets)] + self.listed_extra
        return web.json_response(
            [
                a
                for a in listed
                if a["class"] == kind and (status in (None, "") or a["status"] == status)
            ]
        )

    def _asset(self, sym: str) -> dict[str, Any]:
        asset = {"tradable": True, "fractionable": True, "shortable": True}
        asset.update(self.assets.get(sym, {}))
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"asset:{sym}")),
            "class": "us_equity",
            "exchange": "NASDAQ",
            "symbol": sym,
            "name": sym,
            "status": "active" if asset["tradable"] else "inactive",
            "marginable": True,
            "easy_to_borrow": asset["shortable"],
            **asset,
        }

    async def _get_position(self, request: web.Request) -> web.Response:
        sym = request.match_info["symbol"]
        rows = [p for p in self.positions() if p["symbol"] == sym]
        if not rows:
            return self._error(404, {"code": 40410000, "message": "position not found"})
        return web.json_response(rows[0])

    async def _close_position(self, request: web.Request) -> web.Response:
        order = self._close(request.match_info["symbol"], request.query)
        if order is None:
            return self._error(404, {"code": 40410000, "message": "position not found"})
        return web.json_response(self._json(order, nested=False))

    async def _close_all_positions(self, request: web.Request) -> web.Response:
        if _truthy(request.query.get("cancel_orders")):
            for o in list(self.orders.values()):
                if o.is_open and o.parent_id is None:
                    self._cancel(o)
        out = []
        for sym in list(self.positions_book):
            order = self._close(sym, {})
            if order is not None:
                out.append({"symbol": sym, "status": 200, "body": self._json(order, False)})
        return web.json_response(out, status=207)

    def _close(self, symbol: str, query: Any) -> FakeOrder | None:
        held, _ = self.positions_book.get(symbol, (0.0, 0.0))
        if abs(held) <= EPS:
            return None
        qty = abs(held)
        if query.get("qty"):
            qty = min(qty, float(query["qty"]))
        elif query.get("percentage"):
            qty = qty * float(query["percentage"]) / 100.0
        return self._create(
            {
                "symbol": symbol,
                "qty": qty,
                "side": "sell" if held > 0 else "buy",
                "type": "market",
                "time_in_force": "day",
            }
        )

    # ------------------------------------------------------------------------- execution

    def _waiting_leg(self, o: FakeOrder) -> bool:
        """A bracket/OTO leg whose entry has not filled (inactive)."""
        if o.parent_id is None or o.order_class == "oco":
            return False
        parent = self.orders.get(o.parent_id)
        return parent is not None and parent.status != "filled" and parent.filled_qty <= EPS

    def _eligible(self, o: FakeOrder) -> bool:
        return o.is_open and not self._waiting_leg(o)

    def _track_hwm(self, o: FakeOrder, price: float) -> None:
        if o.hwm is None:
            o.hwm = price
        elif o.side == "sell":
            o.hwm = max(o.hwm, price)
        else:
            o.hwm = min(o.hwm, price)

    def _triggers(self, o: FakeOrder, price: float) -> bool:
        buy = o.side == "buy"
        if o.type == "market":
            return True
        if o.type == "limit":
            assert o.limit_price is not None
            return price <= o.limit_price if buy else price >= o.limit_price
        if o.type == "stop":
            assert o.stop_price is not None
            return price >= o.stop_price if buy else price <= o.stop_price
        if o.type == "stop_limit":
            assert o.stop_price is not None and o.limit_price is not None
            if not o.triggered:
                o.triggered = price >= o.stop_price if buy else price <= o.stop_price
            if not o.triggered:
                return False
            return price <= o.limit_price if buy else price >= o.limit_price
        if o.type == "trailing_stop":
            self._track_hwm(o, price)
            assert o.hwm is not None
            if o.trail_percent is not None:
                pct = o.trail_percent / 100.0
                stop = o.hwm * (1 + pct) if buy else o.hwm * (1 - pct)
            else:
                trail = o.trail_price or 0.0
                stop = o.hwm + trail if buy else o.hwm - trail
            return price >= stop if buy else price <= stop
        return False

    def _execute(self, o: FakeOrder, qty: float, price: float) -> None:
        if qty <= EPS:
            return
        now = self._now()
        old = o.filled_qty
        o.filled_qty = old + qty
        o.filled_avg_price = (
            price if old <= EPS else ((o.filled_avg_price or 0) * old + price * qty) / o.filled_qty
        )
        done = o.remaining <= EPS * max(1.0, o.qty)
        o.status = "filled" if done else "partially_filled"
        o.updated_at = now
        if done:
            o.filled_at = now
        signed = qty if o.side == "buy" else -qty
        held, avg = self.positions_book.get(o.symbol, (0.0, 0.0))
        new = held + signed
        if abs(new) <= EPS:
            self.positions_book.pop(o.symbol, None)
        else:
            if abs(held) <= EPS or (held > 0) == (signed > 0):
                new_avg = (avg * abs(held) + price * qty) / abs(new)  # opened or added
            elif (held > 0) == (new > 0):
                new_avg = avg  # reduced
            else:
                new_avg = price  # flipped side
            self.positions_book[o.symbol] = (new, new_avg)
        self.cash -= signed * price
        position = self.positions_book.get(o.symbol, (0.0, 0.0))[0]
        self._event(
            "fill" if done else "partial_fill",
            o,
            price=_num(price),
            qty=_num(qty),
            position_qty=_num(position),
        )
        if o.leg_ids and done and o.order_class in ("bracket", "oto"):
            self._activate_legs(o)
        if o.parent_id is not None or (o.leg_ids and o.order_class == "oco"):
            self._cancel_siblings(o)

    def _activate_legs(self, parent: FakeOrder) -> None:
        legs = [self.orders[i] for i in parent.leg_ids if self.orders[i].is_open]
        for leg in legs:
            leg.qty = parent.filled_qty
            if leg.type == "limit" or len(legs) == 1:
                # The take-profit goes to the market; the stop-loss stays `held` at Alpaca.
                leg.status, leg.updated_at = "new", self._now()
                self._event("new", leg)

    def _siblings(self, o: FakeOrder) -> list[FakeOrder]:
        if o.parent_id is not None:
            parent = self.orders[o.parent_id]
            ids = list(parent.leg_ids)
            if parent.order_class == "oco":
                ids.append(parent.id)
        else:
            ids = list(o.leg_ids)
        return [self.orders[i] for i in ids if i != o.id and self.orders[i].is_open]

    def _cancel_siblings(self, o: FakeOrder) -> None:
        for sibling in self._siblings(o):
            now = self._now()
            if o.type == "limit":
                sibling.status, sibling.canceled_at, sibling.updated_at = "canceled", now, now
                if not self.quiet_oco_cancel:
                    self._event("canceled", sibling)
            else:
                sibling.status, sibling.replaced_at, sibling.updated_at = "replaced", now, now
                self._event("replaced", sibling)

    def _cancel(self, o: FakeOrder) -> None:
        if not o.is_open:
            return
        now = self._now()
        o.status, o.canceled_at, o.updated_at = "canceled", now, now
        self._event("canceled", o)
        if o.leg_ids:
            if o.order_class in ("bracket", "oto") and o.filled_qty > EPS:
                self._activate_legs(o)
            else:
                self._close_legs(o)

    def _close_legs(self, o: FakeOrder) -> None:
        for leg_id in o.leg_ids:
            leg = self.orders[leg_id]
            if leg.is_open:
                now = self._now()
                leg.status, leg.canceled_at, leg.updated_at = "canceled", now, now
                self._event("canceled", leg)

    # ------------------------------------------------------------------------- rendering

    def _json(self, o: FakeOrder, nested: bool) -> dict[str, Any]:
        body = dict(self._order_fixture)
        body.update(
            {
                "id": o.id,
                "client_order_id": o.client_order_id,
                "created_at": _ts(o.created_at),
                "updated_at": _ts(o.updated_at or o.created_at),
                "submitted_at": _ts(o.created_at),
                "filled_at": _ts(o.filled_at),
                "expired_at": _ts(o.expired_at),
                "canceled_at": _ts(o.canceled_at),
                "failed_at": _ts(o.failed_at),
                "replaced_at": _ts(o.replaced_at),
                "replaced_by": o.replaced_by,
                "replaces": o.replaces,
                "asset_id": o.asset_id,
                "symbol": o.symbol,
                "notional": None,
                "qty": _num(o.qty),
                "filled_qty": _num(o.filled_qty),
                "filled_avg_price": _num(o.filled_avg_price),
                "order_class": o.order_class,
                "order_type": o.type,
                "type": o.type,
                "side": o.side,
                "position_intent": f"{o.side}_to_{'open' if o.parent_id is None else 'close'}",
                "time_in_force": o.time_in_force,
                "limit_price": _num(o.limit_price),
                "stop_price": _num(o.stop_price),
                "status": o.status,
                "extended_hours": o.extended_hours,
                "legs": [self._json(self.orders[i], False) for i in o.leg_ids]
                if nested and o.leg_ids
                else None,
                "trail_percent": _num(o.trail_percent),
                "trail_price": _num(o.trail_price),
                "hwm": _num(o.hwm),
            }
        )
        body.pop("expires_at", None)
        return body

    # ------------------------------------------------------------------------- stream

    def _event(self, event: str, o: FakeOrder, **fields: Any) -> None:
        data: dict[str, Any] = {
            "event": event,
            "execution_id": str(uuid.uuid4()),
            "order": self._json(o, nested=False),
            "timestamp": _ts(o.updated_at or self._now()),
        }
        data.update({k: v for k, v in fields.items() if v is not None})
        message = {"stream": "trade_updates", "data": data}
        self.events.append(message)
        self._broadcast(message)

    def lose_fill_events(self, n: int = 1) -> None:
        self._lost_fill_events += n

    def _broadcast(self, message: dict[str, Any]) -> None:
        data = message.get("data")  # tests send malformed messages too
        event = data.get("event") if isinstance(data, dict) else None
        if self._lost_fill_events and event in ("fill", "partial_fill"):
            self._lost_fill_events -= 1
            return
        payload = json.dumps(message).encode()
        for conn in self._conns:
            if conn.listening:
                conn.queue.put_nowait(payload)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if not self._accept_streams:
            return web.Response(status=503, text="stream unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Conn(ws)
        self._conns.add(conn)
        writer = asyncio.create_task(self._writer(conn))
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                action = data.get("action")
                payload = data.get("data") or {}
                if action in ("authenticate", "auth"):
                    if (
                        payload.get("key_id") == self.key_id
                        and payload.get("secret_key") == self.secret_key
                    ):
                        conn.authed = True
                        self._send(conn, fixture("stream", "server_authorized.json"))
                    else:
                        self._send(conn, fixture("stream", "server_unauthorized.json"))
                        conn.queue.put_nowait(None)
                elif action == "listen":
                    if not conn.authed:
                        self._send(conn, fixture("stream", "server_listen_before_auth.json"))
                        continue
                    streams = [s for s in payload.get("streams") or [] if s == "trade_updates"]
                    reply = fixture("stream", "server_listening.json")
                    reply["data"]["streams"] = streams
                    self._send(conn, reply)
                    conn.listening = bool(streams)
        finally:
            conn.listening = False
            self._conns.discard(conn)
            writer.cancel()
        return ws

    def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        conn.queue.put_nowait(json.dumps(message).encode())

    async def _writer(self, conn: _Conn) -> None:
        while True:
            payload = await conn.queue.get()
            if payload is None:
                await conn.ws.close()
                return
            try:
                await conn.ws.send_bytes(payload)
            except ConnectionError:
                return


# The name used in the task description.
FakeAlpacaServer = AlpacaTradingFake


@contextlib.contextmanager
def running_fake(monkeypatch: Any, **account: Any) -> Iterator[AlpacaTradingFake]:
    """A fake account (`account`: AlpacaTradingFake's arguments, e.g. cash) served on a
    thread, its keys in APCA_API_KEY_ID / APCA_API_SECRET_KEY for the test; stopped after.
    Skips without the recorded fixtures."""
    need_fixtures()
    server = AlpacaTradingFake(**account)
    server.start_in_thread()
    monkeypatch.setenv("APCA_API_KEY_ID", server.key_id)
    monkeypatch.setenv("APCA_API_SECRET_KEY", server.secret_key)
    try:
        yield server
    finally:
        server.stop_thread()
