"""Translation between tradingd's orders and Alpaca's Trading API v2, with no I/O.

Everything here is a pure function of its arguments (`order_from_alpaca` also logs a
warning for an order whose `filled_qty` cannot be read, once an order with the caller's
memo), so the rules can be tested without a server: which engine orders travel together as
one Alpaca order (a bracket, an OTO, an OCO pair), the alpaca-py request built for each,
Alpaca's order statuses and rejections as tradingd states and reasons, and fills derived
from Alpaca's cumulative order fields.

Alpaca sends quantities and prices as JSON strings (`"10"`, `"149.994"`) and timestamps with
nanoseconds; the parsers below accept strings, numbers and None.

Status mapping (Alpaca -> `OrderStatus`), see `map_status`:

* `filled` -> FILLED; `partially_filled` -> PARTIALLY_FILLED; `held` -> HELD (the broker
  turns it into NEW when the order is not a bracket leg waiting for its entry, see
  `AlpacaBroker`); `rejected` -> REJECTED.
* `canceled`, `expired`, `replaced` -> CANCELLED (with whatever was filled before).
* Everything else is still working at Alpaca and maps to NEW, or PARTIALLY_FILLED once
  something was filled: `new`, `accepted`, `pending_new`, `accepted_for_bidding`,
  `pending_cancel`, `pending_replace`, `pending_review`, `stopped` (a trade is guaranteed),
  `calculated`, `suspended` and `done_for_day`. `done_for_day` deliberately stays open: a
  good-till-cancelled order resumes the next session, and calling it cancelled would turn a
  later fill into a fill of a closed order. A day order that is really finished is followed
  by `expired` or `canceled`. Unknown statuses (Alpaca adds some now and then) are treated
  as still working too, never as an error; the broker logs a warning once per unknown name
  (`KNOWN_STATUSES`, `AlpacaBroker._note_unknown`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)

from ..core.errors import ConfigError
from ..core.orders import PROTECT_SUFFIX
from ..core.types import (
    Fill,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    Side,
    parse_client_order_id,
    with_leg,
)
from ..logs import Once

log = structlog.get_logger(__name__)

PAPER_BASE_URL = "https://paper-api.alpaca.markets"
# Hosts of Alpaca's live (real money) trading API: this adapter is for paper accounts only.
LIVE_HOSTS = frozenset({"api.alpaca.markets"})
KEY_ID_ENV = "APCA_API_KEY_ID"
SECRET_KEY_ENV = "APCA_API_SECRET_KEY"
TIME_IN_FORCE_CHOICES = ("day", "gtc", "opg", "cls", "ioc", "fok")

# Alpaca quantities are decimals; compare the floats they become with a tolerance.
EPS = 1e-9

_CANCELLED = frozenset({"canceled", "cancelled", "expired", "replaced"})
# Alpaca's order statuses (its docs and alpaca-py's OrderStatus) and trade-update events
# (its docs and alpaca-py's TradeEvent). Any other name is still mapped (`map_status`: a
# status as working), and the broker says so once per name (`AlpacaBroker._note_unknown`).
KNOWN_STATUSES = frozenset(
    {
        "new",
        "partially_filled",
        "filled",
        "done_for_day",
        "canceled",
        "cancelled",
        "expired",
        "replaced",
        "pending_cancel",
        "pending_replace",
        "pending_review",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "stopped",
        "rejected",
        "suspended",
        "calculated",
        "held",
    }
)
KNOWN_EVENTS = frozenset(
    {
        "new",
        "fill",
        "partial_fill",
        "canceled",
        "expired",
        "done_for_day",
        "replaced",
        "rejected",
        "pending_new",
        "stopped",
        "pending_cancel",
        "pending_replace",
        "calculated",
        "suspended",
        "order_replace_rejected",
        "order_cancel_rejected",
        "accepted",
        "restated",
        "held",
    }
)
# States Alpaca closes an order in that may follow executions (filled; cancelled, expired or
# replaced after partial fills): closed with a filled_qty that cannot be read, an order in one
# of them is kept working (`order_from_alpaca`, `AlpacaBroker._apply`). A rejected order never
# executed.
MAY_HAVE_FILLED = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED})


def unreadable_filled(filled: float) -> bool:
    """Whether a parsed `filled_qty` cannot be read (missing, not a number, NaN or
    negative). See `uncountable_filled`, the rule the readers apply."""
    return not (math.isfinite(filled) and filled >= 0)


def uncountable_filled(filled: float, alpaca_status: Any) -> bool:
    """Whether a parsed `filled_qty` cannot be counted for an order in `alpaca_status`:
    unreadable (`unreadable_filled`), or nothing on an order Alpaca says is `filled` (a
    contradiction: something executed, how much is not said; closed as filled with nothing
    filled, it was followed no longer and nothing was booked or said). The one rule of
    `order_from_alpaca`, `AlpacaBroker._apply` and `_adopt`."""
    return unreadable_filled(filled) or (
        map_status(alpaca_status) is OrderStatus.FILLED and filled <= EPS
    )


def why_uncountable(filled: float) -> str:
    """What is wrong with a `filled_qty` that `uncountable_filled` refuses, for a log line."""
    return "unreadable" if unreadable_filled(filled) else "nothing filled on a filled order"


def order_key(raw: Mapping[str, Any]) -> str:
    """The name an order's unreadable `filled_qty` is remembered by (`order_from_alpaca`'s
    `once`): Alpaca's id, which a leg keeps whatever client id tradingd reads it under (the
    engine's at a restart, a derived one at the start), else its client id."""
    return str(raw.get("id") or raw.get("client_order_id") or "")


class UnreadableOrder(ValueError):
    """An order object from Alpaca that cannot be read as an order (`order_from_alpaca`):
    the message names the order (Alpaca's id, the client id it is read under) and the
    field. A malformed answer: the broker raises it as Alpaca unavailable for that round
    (RetryableError), never as a crash of the start or of the loop."""


def _shown(value: Any) -> str:
    """A field's value as an error message quotes it: short, whatever Alpaca sent."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Alpaca's 422 for a reused client_order_id (alpaca-py issue #260), also after a cancel.
DUPLICATE_MESSAGE = "client_order_id must be unique"


# ----------------------------------------------------------------------------- keys


def look_alike_key_names(env: Mapping[str, str] | None = None) -> list[str]:
    """The names (never the values) of set variables that look like Alpaca keys under
    another name (`APCA_API_KEY`, `ALPACA_SECRET_KEY`): a typo in a unit's env file made
    `broker.kind = "auto"` trade the simulated book, said at info level only."""
    source = os.environ if env is None else env
    return sorted(
        name
        for name, value in source.items()
        if value.strip() and name not in (KEY_ID_ENV, SECRET_KEY_ENV) and _LOOK_ALIKE.match(name)
    )


_LOOK_ALIKE = re.compile(r"^(APCA|ALPACA)_\w*(KEY|SECRET)", re.IGNORECASE)


def missing_keys_error(env: Mapping[str, str] | None = None) -> ConfigError:
    """`broker.kind = "alpaca"` without its keys: what to set, and what is set instead."""
    alike = look_alike_key_names(env)
    instead = f" ({', '.join(alike)} is set: rename it)" if alike else ""
    return ConfigError(
        f"broker.kind = alpaca needs {KEY_ID_ENV} and {SECRET_KEY_ENV} in the environment"
        f"{instead} (or broker.kind = simulated / auto)"
    )


def alpaca_keys_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(key id, secret key) from APCA_API_KEY_ID and APCA_API_SECRET_KEY, or None when neither
    is set (the composition root then paper-trades on the simulated broker).

    One without the other is a configuration mistake, reported by variable name only: the
    value of a key never appears in an error or a log line."""
    source = os.environ if env is None else env
    key = (source.get(KEY_ID_ENV) or "").strip()
    secret = (source.get(SECRET_KEY_ENV) or "").strip()
    if not key and not secret:
        return None
    if not key or not secret:
        missing = KEY_ID_ENV if not key else SECRET_KEY_ENV
        present = SECRET_KEY_ENV if not key else KEY_ID_ENV
        raise ConfigError(
            f"{present} is set but {missing} is not: set both to trade on Alpaca's paper "
            "account, or neither to use the simulated broker"
        )
    return key, secret


# ----------------------------------------------------------------------------- parsing


def parse_float(value: Any) -> float:
    """Alpaca's decimal strings (and numbers) as float; NaN for None, "" or garbage."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (nanoseconds are cut to microseconds) or None."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def qty_key(quantity: float) -> str:
    """A quantity as it appears in a fill id: short, stable, no float residue."""
    return f"{quantity:.10g}"


# ----------------------------------------------------------------------------- statuses


def map_status(alpaca_status: Any, filled_qty: float = 0.0) -> OrderStatus:
    """Alpaca's order status as an `OrderStatus` (see the module docstring for the table)."""
    s = str(getattr(alpaca_status, "value", alpaca_status) or "").strip().lower()
    if s == "filled":
        return OrderStatus.FILLED
    if s == "rejected":
        return OrderStatus.REJECTED
    if s in _CANCELLED:
        return OrderStatus.CANCELLED
    if s == "held":
        return OrderStatus.HELD
    if s == "partially_filled" or (filled_qty == filled_qty and filled_qty > EPS):
        return OrderStatus.PARTIALLY_FILLED
    return OrderStatus.NEW


def closed_reason(alpaca_status: str, raw: Mapping[str, Any]) -> str:
    """A reason for an order Alpaca closed without our asking."""
    s = (alpaca_status or "").lower()
    if s == "expired":
        return f"expired at Alpaca (time_in_force={raw.get('time_in_force') or '?'})"
    if s == "replaced":
        by = raw.get("replaced_by")
        return f"replaced at Alpaca{f' by order {by}' if by else ''}"
    if s == "rejected":
        return "rejected by Alpaca after acceptance"
    if s in ("canceled", "cancelled"):
        return "cancelled at Alpaca"
    return ""


# ----------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an Alpaca error answer says, whatever shape its body has."""

    status: int | None
    code: int | None
    message: str
    # An "insufficient qty" refusal's figures (Alpaca's recorded body: `existing_qty`, the
    # shares the account holds; `held_for_orders`, those its open orders hold), when given.
    existing_qty: float | None = None
    held_for_orders: float | None = None

    @property
    def reason(self) -> str:
        """The broker's words, with the HTTP status and Alpaca's code for the operator."""
        where = f"HTTP {self.status}" if self.status is not None else "error"
        code = f", code {self.code}" if self.code is not None else ""
        return f"alpaca: {self.message} ({where}{code})"

    @property
    def duplicate(self) -> bool:
        return self.status == 422 and DUPLICATE_MESSAGE in self.message.lower()

    @property
    def retryable(self) -> bool:
        return self.status is not None and (self.status == 429 or self.status >= 500)

    @property
    def transient_refusal(self) -> bool:
        """A refused order that the same decision may well get through a little later: the
        request budget ran out (429 after every retry), or buying power / shares were still
        held by orders of the same batch (the sells of a rebalance not yet filled)."""
        text = self.message.lower()
        return self.status == 429 or (
            self.status == 403 and ("buying power" in text or "insufficient qty" in text)
        )

    @property
    def untradable(self) -> bool:
        """Alpaca refuses orders in the asset itself (`asset "X" is not tradable`, `... is
        not active`: delisted, halted, renamed): every later order in it is refused alike
        until Alpaca's asset is tradable again."""
        text = self.message.lower()
        return self.status == 422 and ("not tradable" in text or "not active" in text)

    def holds_fewer_than(self, requested: float) -> bool:
        """An "insufficient qty" refusal of a sell of `requested` shares by an account that
        holds fewer at all (its `existing_qty`): not shares held by open orders
        (`held_for_orders`: their fill or cancel frees them; transient), but a book that
        counts shares the account does not have. Retried, it was refused again, twice a
        bar, and nothing compared the book with the account before the next round. False
        when the answer does not say what the account holds."""
        return (
            self.status == 403
            and "insufficient qty" in self.message.lower()
            and self.existing_qty is not None
            and self.existing_qty < requested - 1e-9
        )


def error_info(error: BaseException, status: int | None = None) -> ErrorInfo:
    """Status, code and message of an alpaca-py `APIError` (or anything with a text body).

    alpaca-py's own `.code`/`.message` raise on a body that is not JSON (a proxy's 504 page),
    so the body is parsed here, defensively."""
    if status is None:
        try:
            status = getattr(error, "status_code", None)
        except Exception:  # a broken http_error object must not hide the rejection
            status = None
    text = str(error).strip()
    code: int | None = None
    message = text
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        body = None
    if isinstance(body, Mapping):
        raw_code = body.get("code")
        if isinstance(raw_code, int | str) and str(raw_code).isdigit():
            code = int(raw_code)
        msg = body.get("message")
        if isinstance(msg, str) and msg:
            message = msg
        extra = body.get("reject_reason")
        if isinstance(extra, str) and extra:
            message = f"{message}: {extra}"
    if not message:
        message = "no error message"
    if len(message) > 500:
        message = message[:500] + "..."
    held: dict[str, float | None] = {}
    if isinstance(body, Mapping):
        for name in ("existing_qty", "held_for_orders"):
            number = parse_float(body.get(name))
            held[name] = number if math.isfinite(number) else None
    return ErrorInfo(
        status=status if isinstance(status, int) else None, code=code, message=message, **held
    )


# ----------------------------------------------------------------------------- grouping


@dataclass(frozen=True, slots=True)
class Unit:
    """Engine orders that travel to Alpaca as one order request.

    `simple`: one order. `bracket`: an entry with a take-profit and a stop-loss leg (Alpaca
    holds the legs until the entry fills). `oto`: an entry with one of the two. `oco`: a
    stand-alone take-profit limit and stop-loss of one OCO group (Alpaca's `oco` class; the
    limit is the primary order and the stop its leg)."""

    kind: str
    primary: Order
    take_profit: Order | None = None
    stop_loss: Order | None = None

    @property
    def members(self) -> tuple[Order, ...]:
        return tuple(o for o in (self.primary, self.take_profit, self.stop_loss) if o is not None)


@dataclass(frozen=True, slots=True)
class LocalRejection:
    """An order refused before it is sent: Alpaca could not express it, or it is invalid."""

    order: Order
    reason: str


_STOPS = (OrderType.STOP, OrderType.STOP_LIMIT)


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def validate(order: Order) -> str:
    """Why `order` is invalid whatever the venue, or "" (the same checks as the simulator)."""
    qty = order.quantity
    if not (isinstance(qty, int | float) and math.isfinite(qty) and qty > 0):
        return f"quantity must be a positive number, got {qty!r}"
    kind = order.type
    if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT) and not _positive(order.limit_price):
        return f"{kind} order requires a positive limit_price, got {order.limit_price!r}"
    if kind in _STOPS and not _positive(order.stop_price):
        return f"{kind} order requires a positive stop_price, got {order.stop_price!r}"
    if kind is OrderType.TRAILING_STOP:
        trail = order.trail_pct
        if trail is None or not (math.isfinite(trail) and 0 < trail < 1):
            return f"trailing_stop order requires trail_pct in (0, 1), got {trail!r}"
    return ""


def plan_submission(orders: Sequence[Order]) -> list[Unit | LocalRejection]:
    """Group one batch of engine orders into Alpaca order requests, in batch order.

    * Legs (orders with a `parent_id`) go with their entry, which must be in the same batch:
      Alpaca attaches take-profit and stop-loss legs only when the entry is placed. A leg
      whose entry is elsewhere is refused. The take-profit must be a limit and the
      stop-loss a stop or stop-limit on the other side for the same quantity; otherwise the
      whole bracket is refused (an entry without its protection is never sent).
    * Two stand-alone orders of one `oco_group` become one Alpaca `oco` order (a limit plus a
      stop or stop-limit, same side and quantity); a group Alpaca cannot express is refused,
      except a limit with a trailing stop: the trailing stop goes alone (it is the
      protection) and only the limit is refused.
    * Everything else is a simple order. An id repeated within the batch is planned once.
    """
    by_id: dict[str, Order] = {}
    for o in orders:
        by_id.setdefault(o.client_order_id, o)
    children: dict[str, list[Order]] = {}
    groups: dict[str, list[Order]] = {}
    for o in by_id.values():
        if o.parent_id is not None:
            children.setdefault(o.parent_id, []).append(o)
        elif o.oco_group is not None:
            groups.setdefault(o.oco_group, []).append(o)

    out: list[Unit | LocalRejection] = []
    done: set[str] = set()
    for o in by_id.values():
        cid = o.client_order_id
        if cid in done:
            continue
        if o.parent_id is not None:
            parent = by_id.get(o.parent_id)
            if parent is None or parent.parent_id is not None:
                done.add(cid)
                out.append(
                    LocalRejection(
                        o,
                        f"bracket leg without its entry {o.parent_id} in the same batch: "
                        "Alpaca attaches take-profit and stop-loss legs only to a new entry",
                    )
                )
            continue  # planned with its parent
        kids = children.get(cid, [])
        if kids:
            done.update(k.client_order_id for k in kids)
            done.add(cid)
            out.extend(_bracket(o, kids))
            continue
        members = groups.get(o.oco_group, []) if o.oco_group is not None else []
        if len(members) >= 2:
            done.update(m.client_order_id for m in members)
            out.extend(_oco(members))
            continue
        done.add(cid)
        out.append(Unit("simple", o))
    return out


def _bracket(entry: Order, legs: list[Order]) -> list[Unit | LocalRejection]:
    tps = [leg for leg in legs if leg.type is OrderType.LIMIT]
    sls = [leg for leg in legs if leg.type in _STOPS]
    others = [leg for leg in legs if leg.type is not OrderType.LIMIT and leg.type not in _STOPS]
    problem = ""
    if others:
        kinds = sorted({str(leg.type) for leg in others})
        problem = (
            f"Alpaca bracket legs are a limit take-profit and a stop or stop-limit stop-loss, "
            f"not {', '.join(kinds)}"
        )
    elif len(tps) > 1 or len(sls) > 1:
        problem = "an Alpaca bracket has at most one take-profit and one stop-loss"
    elif any(leg.side is entry.side for leg in legs):
        problem = "bracket legs must be on the opposite side of their entry"
    elif any(abs(leg.quantity - entry.quantity) > EPS * max(1.0, entry.quantity) for leg in legs):
        problem = "Alpaca bracket legs always cover the entry's whole quantity"
    if problem:
        reason = f"bracket of {entry.client_order_id} refused: {problem}"
        return [LocalRejection(o, reason) for o in (entry, *legs)]
    tp = tps[0] if tps else None
    sl = sls[0] if sls else None
    return [Unit("bracket" if tp is not None and sl is not None else "oto", entry, tp, sl)]


def _oco(members: list[Order]) -> list[Unit | LocalRejection]:
    limits = [m for m in members if m.type is OrderType.LIMIT]
    stops = [m for m in members if m.type in _STOPS]
    first = members[0]
    trailing = [m for m in members if m.type is OrderType.TRAILING_STOP]
    if (
        len(members) == 2
        and len(limits) == 1
        and len(trailing) == 1
        and limits[0].side is trailing[0].side
        and limits[0].symbol == trailing[0].symbol
    ):
        # A take-profit beside a trailing stop (the planner's exits for a trailing stop with
        # a fixed take-profit). Alpaca's oco is a limit and a stop, never a trailing stop,
        # and two separate orders cannot both hold the same shares: the trailing stop, the
        # protection, is placed alone; the take-profit is refused, saying why.
        return [
            Unit("simple", trailing[0]),
            LocalRejection(
                limits[0],
                f"take-profit of OCO group {first.oco_group} not placed: Alpaca cannot hold a "
                "take-profit beside a trailing stop on the same shares (its oco order is a "
                "limit and a stop); the trailing stop protects the position alone (on Alpaca, "
                'pair a trailing stop with orders.take_profit_mode = "trailing")',
            ),
        ]
    ok = (
        len(members) == 2
        and len(limits) == 1
        and len(stops) == 1
        and limits[0].side is stops[0].side
        and limits[0].symbol == stops[0].symbol
        and abs(limits[0].quantity - stops[0].quantity) <= EPS * max(1.0, first.quantity)
    )
    if not ok:
        reason = (
            f"OCO group {first.oco_group} refused: Alpaca's oco order is one limit and one "
            "stop or stop-limit of the same symbol, side and quantity"
        )
        return [LocalRejection(m, reason) for m in members]
    return [Unit("oco", limits[0], limits[0], stops[0])]


# ----------------------------------------------------------------------------- requests


def _side(side: Side) -> OrderSide:
    return OrderSide.BUY if side is Side.BUY else OrderSide.SELL


def trail_percent(trail_pct: float) -> float:
    """tradingd's fraction (0.02) as Alpaca's percent (2.0), without float residue."""
    return round(trail_pct * 100.0, 6)


def _single(order: Order, tif: str, extended_hours: bool, **extra: Any) -> OrderRequest:
    common: dict[str, Any] = {
        "symbol": order.symbol,
        "qty": float(order.quantity),
        "side": _side(order.side),
        "time_in_force": TimeInForce(tif),
        "client_order_id": order.client_order_id,
        **extra,
    }
    if extended_hours:
        common["extended_hours"] = True
    kind = order.type
    if kind is OrderType.MARKET:
        return MarketOrderRequest(**common)
    if kind is OrderType.LIMIT:
        return LimitOrderRequest(limit_price=order.limit_price, **common)
    if kind is OrderType.STOP:
        return StopOrderRequest(stop_price=order.stop_price, **common)
    if kind is OrderType.STOP_LIMIT:
        return StopLimitOrderRequest(
            stop_price=order.stop_price, limit_price=order.limit_price, **common
        )
    if kind is OrderType.TRAILING_STOP:
        assert order.trail_pct is not None
        return TrailingStopOrderRequest(trail_percent=trail_percent(order.trail_pct), **common)
    raise ValueError(f"unsupported order type {kind!r}")


def _price(value: float | None, what: str) -> float:
    if value is None:
        raise ValueError(f"{what} is required")
    return float(value)


def _stop_loss(order: Order) -> StopLossRequest:
    stop = _price(order.stop_price, "stop_loss.stop_price")
    if order.type is OrderType.STOP_LIMIT:
        return StopLossRequest(stop_price=stop, limit_price=order.limit_price)
    return StopLossRequest(stop_price=stop)


def build_request(
    unit: Unit,
    *,
    time_in_force: str = "day",
    exit_time_in_force: str = "gtc",
    bracket_time_in_force: str = "gtc",
    extended_hours: bool = False,
) -> OrderRequest:
    """The alpaca-py request for one unit. Raises ValueError (alpaca-py's validation) for an
    order it cannot express; the caller turns that into a rejection.

    Time in force: entries use `time_in_force`; stand-alone exits and OCO pairs
    `exit_time_in_force` (protection must outlive the session); brackets and OTOs
    `bracket_time_in_force`, because Alpaca gives the legs the time in force of the whole
    order. Extended hours is only sent for simple orders and only when enabled."""
    primary = unit.primary
    if unit.kind == "simple":
        tif = time_in_force if primary.leg is Leg.ENTRY else exit_time_in_force
        return _single(primary, tif, extended_hours)
    if unit.kind in ("bracket", "oto"):
        extra: dict[str, Any] = {
            "order_class": OrderClass.BRACKET if unit.kind == "bracket" else OrderClass.OTO
        }
        if unit.take_profit is not None:
            extra["take_profit"] = TakeProfitRequest(
                limit_price=_price(unit.take_profit.limit_price, "take_profit.limit_price")
            )
        if unit.stop_loss is not None:
            extra["stop_loss"] = _stop_loss(unit.stop_loss)
        return _single(primary, bracket_time_in_force, False, **extra)
    if unit.kind == "oco":
        assert unit.take_profit is not None and unit.stop_loss is not None
        return LimitOrderRequest(
            symbol=primary.symbol,
            qty=float(primary.quantity),
            side=_side(primary.side),
            time_in_force=TimeInForce(exit_time_in_force),
            client_order_id=primary.client_order_id,
            order_class=OrderClass.OCO,
            take_profit=TakeProfitRequest(
                limit_price=_price(unit.take_profit.limit_price, "take_profit.limit_price")
            ),
            stop_loss=_stop_loss(unit.stop_loss),
        )
    raise ValueError(f"unknown unit kind {unit.kind!r}")


# ----------------------------------------------------------------------------- orders


_TYPES = {t.value: t for t in OrderType}


def order_type_of(raw: Mapping[str, Any]) -> OrderType:
    kind = str(raw.get("type") or raw.get("order_type") or "market").lower()
    return _TYPES.get(kind, OrderType.MARKET)


def leg_role(raw: Mapping[str, Any]) -> Leg:
    """The role of a leg Alpaca returned under a bracket or OCO parent: its type tells."""
    return Leg.TAKE_PROFIT if order_type_of(raw) is OrderType.LIMIT else Leg.STOP_LOSS


def leg_from_client_order_id(cid: str) -> Leg:
    """The role encoded in a tradingd id (`run|time|symbol|leg|attempt`, re-placed exits
    `tp.r`); ENTRY for ids tradingd did not make (an order placed by hand blocks its symbol
    like a working entry would)."""
    p = parse_client_order_id(cid)
    tag = p.tag.split(".", 1)[0] if p is not None else ""
    for leg in Leg:
        if tag == leg.value:
            return leg
    return Leg.ENTRY


def leg_client_order_id(parent_cid: str, role: Leg) -> str | None:
    """The tradingd id of a leg from its parent's id, for orders found at Alpaca after a
    restart (Alpaca names legs itself). A bracket entry `…|entry|n` has legs `…|tp|n` and
    `…|sl|n`, the way `bracket_orders` names them; an OCO parent `…|tp.r|n` has the leg
    `…|sl.r|n`, as `resized_exits` does. None when the parent's id is not one of tradingd's,
    and for `protective_exits` ids (`…|sl.p|n`): their stop is a trailing stop, which is
    never part of an Alpaca order with legs, so it has no partner to name."""
    p = parse_client_order_id(parent_cid)
    if p is None or p.tag.endswith(PROTECT_SUFFIX):
        return None
    if p.tag == Leg.ENTRY.value:
        return with_leg(parent_cid, role.value)
    for own in (Leg.TAKE_PROFIT, Leg.STOP_LOSS):
        if p.tag.startswith(own.value) and own is not role:
            return with_leg(parent_cid, f"{role.value}{p.tag[len(own.value) :]}")
    return None


def order_from_alpaca(
    raw: Mapping[str, Any],
    *,
    client_order_id: str | None = None,
    leg: Leg | None = None,
    parent_id: str | None = None,
    oco_group: str | None = None,
    once: Once | None = None,
) -> Order:
    """An engine `Order` for an order found at Alpaca (start-up adoption, restart, snapshots).

    The status is mapped without the bracket context (`held` stays HELD); fills are in
    `filled_quantity`/`avg_fill_price`. A trailing stop given in dollars (`trail_price`) has
    no `trail_pct`.

    A `filled_qty` that cannot be read (missing, not a number, negative, NaN), or "0" on an
    order Alpaca says is `filled` (`uncountable_filled`), is counted as
    nothing filled, with a warning naming the order and the value. An order Alpaca closed in
    a state that may follow executions (`MAY_HAVE_FILLED`) is then returned working, as the
    broker's update path keeps it (`AlpacaBroker._apply`): PARTIALLY_FILLED when Alpaca says
    `filled` (something executed, how much is unknown), NEW when cancelled, expired or
    replaced (perhaps nothing did). Returned closed, it was followed no longer, as filled
    with nothing filled (at a restart, the executions since the checkpoint were never
    booked); working, the broker reads it again until the quantity can be read, and books
    what it finds then. Until then a `filled` one is PARTIALLY_FILLED with 0 filled (here, in
    `AlpacaBroker.order` and in a snapshot's open orders), deliberately: the status is
    Alpaca's word that something executed, which NEW would deny; the quantity is what can
    be counted, nothing yet. No rule of the engine tells the two open statuses apart, and
    `AlpacaBroker.open_orders` lists the order as the book holds it (NEW while nothing of
    it is booked), so no share is counted before Alpaca says how many.

    `once`: the caller's memo of the orders already warned of (the broker's; keyed by
    `order_key`). With it the warning is given once an order, not at every read of it (the
    start's adoption, each snapshot, each look-up), and again when the quantity turns
    unreadable after an answer that could be read: this call forgets the order then (the
    broker's update path too). Without it, every call warns.

    An order without a readable time (`submitted_at`, else `created_at`, else `updated_at`)
    raises `UnreadableOrder` naming it and the fields: no time can be made up for it (the
    engine orders by it, and an adopted entry's time tells whether it is an intent), and
    a plain ValueError escaped the broker's start and snapshots as a crash."""
    cid = client_order_id or str(raw.get("client_order_id") or raw.get("id") or "")
    key = order_key(raw) or cid
    filled = parse_float(raw.get("filled_qty"))
    uncounted = uncountable_filled(filled, raw.get("status"))
    why = why_uncountable(filled)
    if uncounted:
        filled = 0.0
    elif once is not None:
        once.forget(key)
    qty = parse_float(raw.get("qty"))
    trail = parse_float(raw.get("trail_percent"))
    hwm = parse_float(raw.get("hwm"))
    created = (
        parse_time(raw.get("submitted_at"))
        or parse_time(raw.get("created_at"))
        or parse_time(raw.get("updated_at"))
    )
    if created is None:
        named = f"order {raw.get('id') or '(no id)'} ({cid or 'no client id'})"
        raise UnreadableOrder(
            f"{named}: no readable submitted_at or created_at (submitted_at "
            f"{_shown(raw.get('submitted_at'))}, created_at {_shown(raw.get('created_at'))}, "
            f"updated_at {_shown(raw.get('updated_at'))})"
        )
    limit = parse_float(raw.get("limit_price"))
    stop = parse_float(raw.get("stop_price"))
    status_text = str(raw.get("status") or "")
    status = map_status(status_text, filled)
    if uncounted:
        working = status in MAY_HAVE_FILLED
        if working:
            status = (
                OrderStatus.PARTIALLY_FILLED if status is OrderStatus.FILLED else OrderStatus.NEW
            )
        if once is None or once.first(key):
            log.warning(
                "alpaca.order.filled_qty_unreadable",
                client_order_id=cid,
                symbol=str(raw.get("symbol") or ""),
                status=status_text,
                filled_qty=raw.get("filled_qty"),
                why=why,
                rule="followed as working until Alpaca gives a readable filled_qty, then booked"
                if working
                else "counted as nothing filled",
            )
    return Order(
        client_order_id=cid,
        symbol=str(raw.get("symbol") or ""),
        side=Side.SELL if str(raw.get("side") or "").lower() == "sell" else Side.BUY,
        quantity=qty if math.isfinite(qty) else filled,
        created_at=created,
        type=order_type_of(raw),
        limit_price=limit if math.isfinite(limit) else None,
        stop_price=stop if math.isfinite(stop) else None,
        trail_pct=trail / 100.0 if math.isfinite(trail) else None,
        leg=leg if leg is not None else leg_from_client_order_id(cid),
        parent_id=parent_id,
        oco_group=oco_group,
        status=status,
        filled_quantity=filled,
        avg_fill_price=parse_float(raw.get("filled_avg_price")) if filled > 0 else math.nan,
        reason=closed_reason(status_text, raw) if not status.is_open else "",
        updated_at=parse_time(raw.get("updated_at")) or created,
        trail_anchor=hwm if math.isfinite(hwm) else None,
    )


# ----------------------------------------------------------------------------- fills


def fill_price(
    old_filled: float,
    old_avg: float,
    new_filled: float,
    new_avg: float,
    event_qty: float = math.nan,
    event_price: float = math.nan,
) -> float:
    """The price of the executions that took an order from `old_filled` to `new_filled`.

    A stream event that describes exactly that step carries its own price. Otherwise (a poll,
    or an event after missed ones) the price follows from the cumulative averages, so the
    total cost of all fills reported for an order always equals filled_qty x avg price."""
    delta = new_filled - old_filled
    if (
        math.isfinite(event_qty)
        and math.isfinite(event_price)
        and event_price > 0
        and abs(event_qty - delta) <= EPS * max(1.0, delta)
    ):
        return event_price
    if old_filled <= EPS or not math.isfinite(old_avg):
        return new_avg
    if not math.isfinite(new_avg):
        return event_price
    price = (new_avg * new_filled - old_avg * old_filled) / delta
    return price if math.isfinite(price) and price > 0 else new_avg


def make_fill(
    order: Order, new_filled: float, quantity: float, price: float, time: datetime
) -> Fill:
    """A fill of `order`. The id is the order's id and its cumulative filled quantity after
    this fill: the same execution gets the same id whether it came from the stream or a poll,
    and no two fills of one order can share one. Alpaca charges no commission on equities;
    there is no reference price, so no slippage is computed."""
    return Fill(
        fill_id=f"{order.client_order_id}#{qty_key(new_filled)}",
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=quantity,
        price=price,
        commission=0.0,
        slippage=0.0,
        time=time,
    )


# ----------------------------------------------------------------------------- account


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """The account as Alpaca reports it, for start-up reconciliation."""

    cash: float
    equity: float
    buying_power: float
    # symbol -> (signed quantity, average entry price); shorts are negative.
    positions: dict[str, tuple[float, float]]
    open_orders: list[Order]
    currency: str = "USD"
    account_status: str = ""
    taken_at: datetime | None = None


def open_order_rows(answer: Any, what: str = "open orders answer") -> list[Mapping[str, Any]]:
    """GET /v2/orders' answer (`what`: the open orders, or the poll's orders) as its rows. An
    answer that is no list, or a row that is no object, raises ValueError naming it: read as
    no orders (the row skipped), the orders working at Alpaca were forgotten, neither adopted
    at the start nor in the snapshot reconciliation reads."""
    if not isinstance(answer, list):
        raise ValueError(f"{what} is a {type(answer).__name__}, not a list")
    for i, row in enumerate(answer):
        if not isinstance(row, Mapping):
            raise ValueError(f"{what} row {i} is a {type(row).__name__}, not an object")
    return answer


def positions_from_alpaca(answer: Any) -> dict[str, tuple[float, float]]:
    """GET /v2/positions' answer: symbol -> (signed quantity, average entry price); shorts
    are negative. An answer that is no list, a row that is no object, a row without a symbol
    or a readable `qty`, a `side` other than long or short (or none), or a symbol listed
    twice raises ValueError naming the row and the field (a side "sideways" was read as
    long): skipped, such a row read as no position, and reconciliation took Alpaca for flat
    in that symbol (every symbol, for an answer that is no list).

    Alpaca's `qty` is signed and its `side` says the same: a short is `"side": "short"`
    with a negative `qty` ("-2478": "the negative quantity and side short go hand in hand",
    Alpaca in alpacahq/Alpaca-API#86; the fake answers so; Rust's `apca` client reads the
    quantity without its sign for that reason). A `qty` whose sign contradicts the `side`
    (long "-7", short "7") raises ValueError naming both: which of the two is wrong cannot
    be told, and a long "-7" was read as a short of 7 (a short "7" as a short too), a guess
    reconciliation then compared the book with. No side: the sign of `qty` says it; zero
    is flat."""
    if not isinstance(answer, list):
        raise ValueError(f"positions answer is a {type(answer).__name__}, not a list")
    out: dict[str, tuple[float, float]] = {}
    for i, row in enumerate(answer):
        if not isinstance(row, Mapping):
            raise ValueError(f"positions answer row {i} is a {type(row).__name__}, not an object")
        symbol = row.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise ValueError(f"positions answer row {i}: symbol {symbol!r} is not a symbol")
        if symbol in out:
            raise ValueError(f"positions answer row {i}: symbol {symbol!r} is listed twice")
        qty = parse_float(row.get("qty"))
        if not math.isfinite(qty):
            raise ValueError(
                f"positions answer row {i} ({symbol}): qty {row.get('qty')!r} is not a number"
            )
        side = row.get("side")
        side_text = str(side or "").strip().lower()
        if side_text not in ("", "long", "short"):
            raise ValueError(
                f"positions answer row {i} ({symbol}): side {_shown(side)} is neither long "
                "nor short"
            )
        if (side_text == "long" and qty < 0) or (side_text == "short" and qty > 0):
            raise ValueError(
                f"positions answer row {i} ({symbol}): qty {_shown(row.get('qty'))} "
                f"contradicts side {_shown(side)} (Alpaca signs a short's qty negative)"
            )
        out[symbol] = (qty, parse_float(row.get("avg_entry_price")))
    return out
