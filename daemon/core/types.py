"""Value types that cross component boundaries.

Market data travels as a cross-section: one array slot per symbol of the fixed universe,
NaN where a symbol has no bar at that time (not listed yet, halted, holiday). Orders and
fills are few per bar, so they are plain objects with a full lifecycle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (numpy is imported where it is used: a writer process needs none)
    import numpy as np

from .frozen import fast_init


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is _BUY else -1  # a global: see below the class


# On Python 3.11 `Side.BUY` goes through EnumType.__getattr__'s hook (about ten times the
# cost of a global); `sign` runs for every fill booked.
_BUY = Side.BUY


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"


class OrderStatus(StrEnum):
    NEW = "new"
    # A bracket leg waits, inactive, until its parent entry is filled (Alpaca calls this "held").
    HELD = "held"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        return self in _OPEN_STATUSES


_OPEN_STATUSES = frozenset((OrderStatus.NEW, OrderStatus.HELD, OrderStatus.PARTIALLY_FILLED))


class Leg(StrEnum):
    """The role of an order; part of its client_order_id."""

    ENTRY = "entry"  # a rebalance order (opens, adds to, reduces or closes a position)
    TAKE_PROFIT = "tp"
    STOP_LOSS = "sl"
    EXIT = "exit"  # a stand-alone protective or closing order


@fast_init
@dataclass(frozen=True, slots=True)
class CrossSection:
    """All bars of the universe at one bar time. Arrays have one slot per universe symbol."""

    time: datetime
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    # Split coefficient on this bar (7.0 for a 7-for-1 split), 1.0 otherwise.
    split: np.ndarray
    # Cash dividend per share going ex on this bar, 0.0 otherwise.
    dividend: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        from numpy import isnan

        return ~isnan(self.close)


def client_order_id(
    run_id: str, bar_time: datetime, symbol: str, leg: Leg | str, attempt: int = 1
) -> str:
    """Deterministic id `run|YYYYmmddTHHMMSS|symbol|leg|attempt`: the same decision always
    maps to the same id, so a resubmission after a crash or restart is recognised as a
    duplicate by the broker, not doubled. The attempt number exists because Alpaca refuses
    an id it has seen, even after a cancel or a rejection: a deliberate retry of the same
    decision takes the next number (`next_attempt`). Alpaca limits the id to 128 characters."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    global _last_stamp
    last = _last_stamp
    if last[0] is bar_time:
        stamp = last[1]  # the same datetime object as the last call: the bar's other orders
    else:
        stamp = _stamp(bar_time, bar_time.utcoffset())
        _last_stamp = (bar_time, stamp)
    cid = f"{run_id}|{stamp}|{symbol}|{str.__str__(leg)}|{attempt}"
    if len(cid) > 128:
        raise ValueError(f"client_order_id longer than 128 characters: {cid!r}; shorten run_id")
    return cid


# (datetime, stamp) of the last call. A datetime is immutable, so the same object has the
# same stamp; one tuple, swapped whole, so a reader never sees one half of another pair. It
# starts with an object no caller can pass (None would match a bar_time of None).
_last_stamp: tuple[object, str] = (object(), "")


@lru_cache(maxsize=16)
def _stamp(bar_time: datetime, offset: Any) -> str:
    # A bar's orders share its time: format once per bar, not once per order (replays).
    # The offset is in the key: equal instants in two time zones are equal datetimes, but
    # their wall-clock stamps differ.
    if type(bar_time) is datetime and bar_time.year >= 1000:
        # The same digits as strftime below at a third of its cost (a replay formats one
        # stamp per bar that trades). Years before 1000 and subclasses (pandas Timestamp
        # has its own strftime) take strftime: glibc does not pad %Y to four digits.
        return _STAMP_FORMAT % (
            bar_time.year,
            bar_time.month,
            bar_time.day,
            bar_time.hour,
            bar_time.minute,
            bar_time.second,
        )
    return f"{bar_time:%Y%m%dT%H%M%S}"


_STAMP_FORMAT = "%04d%02d%02dT%02d%02d%02d"


@dataclass(frozen=True, slots=True)
class OrderId:
    """The parts of a tradingd client order id."""

    run_id: str
    stamp: str  # the deciding bar, YYYYmmddTHHMMSS
    symbol: str
    tag: str  # the leg, with a re-placement suffix ("tp.r")
    attempt: int

    @property
    def head(self) -> str:
        """Everything before the leg: `run|stamp|symbol`."""
        return f"{self.run_id}|{self.stamp}|{self.symbol}"


def parse_client_order_id(cid: str) -> OrderId | None:
    """The parts of a tradingd id; None for ids tradingd did not make (orders placed by
    hand). Ids of earlier versions have no attempt field and read as attempt 1."""
    parts = cid.split("|")
    attempt = 1
    if len(parts) >= 5 and parts[-1].isdigit():
        attempt = int(parts[-1])
        parts = parts[:-1]
    if len(parts) < 4 or not all(parts[-3:]) or attempt < 1:
        return None
    return OrderId("|".join(parts[:-3]), parts[-3], parts[-2], parts[-1], attempt)


def with_leg(cid: str, tag: str) -> str | None:
    """The id of another leg of the same decision and attempt (`…|entry|2` -> `…|tp|2`)."""
    p = parse_client_order_id(cid)
    return None if p is None else f"{p.head}|{tag}|{p.attempt}"


def next_attempt(cid: str) -> str:
    """The id of a deliberate retry of the same decision: the attempt number plus one."""
    p = parse_client_order_id(cid)
    if p is None:
        raise ValueError(f"not a tradingd client_order_id: {cid!r}")
    new = f"{p.head}|{p.tag}|{p.attempt + 1}"
    if len(new) > 128:
        raise ValueError(f"client_order_id longer than 128 characters: {new!r}; shorten run_id")
    return new


@dataclass(slots=True)
class Order:
    """An order and its lifecycle. Quantities are positive; the side gives the direction."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: float
    created_at: datetime
    type: OrderType = OrderType.MARKET
    limit_price: float | None = None
    stop_price: float | None = None
    # Trailing stop distance as a fraction of the best price seen since activation (0.02 = 2%).
    trail_pct: float | None = None
    leg: Leg = Leg.ENTRY
    parent_id: str | None = None
    # Orders sharing an oco_group cancel each other when one fills (bracket exits).
    oco_group: str | None = None
    status: OrderStatus = OrderStatus.NEW
    filled_quantity: float = 0.0
    avg_fill_price: float = math.nan
    reason: str = ""
    updated_at: datetime | None = None
    # Bars this order has been open and eligible to fill; used for time-in-force.
    bars_open: int = 0
    # Highest (sell) / lowest (buy) price seen by a trailing stop since it became active.
    trail_anchor: float | None = None

    @property
    def remaining(self) -> float:
        return self.quantity - self.filled_quantity

    @property
    def signed_quantity(self) -> float:
        return self.side.sign * self.quantity

    def snapshot(self) -> Order:
        # Hand-written: dataclasses.replace re-runs field machinery and showed up in profiles
        # of long replays (an order is snapshotted at every state change).
        return Order(
            self.client_order_id,
            self.symbol,
            self.side,
            self.quantity,
            self.created_at,
            self.type,
            self.limit_price,
            self.stop_price,
            self.trail_pct,
            self.leg,
            self.parent_id,
            self.oco_group,
            self.status,
            self.filled_quantity,
            self.avg_fill_price,
            self.reason,
            self.updated_at,
            self.bars_open,
            self.trail_anchor,
        )


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _opt(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def order_to_dict(o: Order) -> dict[str, object]:
    """Every field of an order as JSON values (checkpoints: an open order must come back
    exactly as it was, its fill-in-progress state included)."""
    return {
        "client_order_id": o.client_order_id,
        "symbol": o.symbol,
        "side": str(o.side),
        "quantity": o.quantity,
        "created_at": _iso(o.created_at),
        "type": str(o.type),
        "limit_price": _opt(o.limit_price),
        "stop_price": _opt(o.stop_price),
        "trail_pct": _opt(o.trail_pct),
        "leg": str(o.leg),
        "parent_id": o.parent_id,
        "oco_group": o.oco_group,
        "status": str(o.status),
        "filled_quantity": o.filled_quantity,
        "avg_fill_price": _opt(o.avg_fill_price),
        "reason": o.reason,
        "updated_at": _iso(o.updated_at),
        "bars_open": o.bars_open,
        "trail_anchor": _opt(o.trail_anchor),
    }


def order_from_dict(d: dict[str, Any]) -> Order:
    def when(v: Any) -> datetime | None:
        return datetime.fromisoformat(v) if v is not None else None

    created = when(d["created_at"])
    assert created is not None, "an order always has created_at"
    avg = d.get("avg_fill_price")
    return Order(
        client_order_id=d["client_order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        quantity=float(d["quantity"]),
        created_at=created,
        type=OrderType(d["type"]),
        limit_price=d.get("limit_price"),
        stop_price=d.get("stop_price"),
        trail_pct=d.get("trail_pct"),
        leg=Leg(d["leg"]),
        parent_id=d.get("parent_id"),
        oco_group=d.get("oco_group"),
        status=OrderStatus(d["status"]),
        filled_quantity=float(d["filled_quantity"]),
        avg_fill_price=math.nan if avg is None else float(avg),
        reason=d.get("reason") or "",
        updated_at=when(d.get("updated_at")),
        bars_open=int(d.get("bars_open") or 0),
        trail_anchor=d.get("trail_anchor"),
    )


@fast_init
@dataclass(frozen=True, slots=True)
class Fill:
    """One execution. `price` includes slippage and half-spread; commission is separate."""

    fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    commission: float
    # Money lost to slippage and half-spread versus the reference price (always >= 0).
    slippage: float
    time: datetime
    reference_price: float = math.nan

    @property
    def signed_quantity(self) -> float:
        return self.side.sign * self.quantity

    @property
    def notional(self) -> float:
        return self.quantity * self.price


# What a RiskVerdict's `action` may be. The engine acts on "halt" and "flatten" and the risk
# record counts "scale" as a restriction (engine/accounting.py); any other word was counted
# and never acted on (a kill switch saying "halted" halted nothing), so it is refused
# (engine/plugin_outputs.py: `verdict_error`).
RISK_ACTIONS: frozenset[str] = frozenset({"clip", "reject", "scale", "flatten", "halt"})


@fast_init
@dataclass(frozen=True, slots=True)
class RiskVerdict:
    """A risk decision about one symbol (or the whole book when symbol is None).

    A rejection is a value with a reason, never an exception."""

    plugin: str
    symbol: str | None
    action: str  # one of RISK_ACTIONS
    reason: str
    requested: float = math.nan
    allowed: float = math.nan
    # The limit that acted, for counting and reports (e.g. "max_drawdown", "daily_loss_limit");
    # empty means the plugin has one rule, named by the plugin.
    rule: str = ""
    # A cut to carry out now: the planner trades a held position down to the target the
    # chain cut even when the difference is within `orders.rebalance_band`, once it weighs
    # more than that target plus `planner.HARD_CUT_TOLERANCE` of it (a limit on the book's
    # risk, like VaR or a drawdown's scaling, which a 2% position cut to 1.2% would otherwise
    # never reach). False: the band applies (a cap on targets, held to within the band).
    # With symbol None it covers every symbol. Only symbols whose target the chain cut.
    hard: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class BrokerUpdate:
    """What a broker reports for one bar: executions and orders whose status changed."""

    fills: list[Fill] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    mode: str  # "backtest" or "live"
    started_at: datetime
    config_json: str
    symbols: tuple[str, ...]
    initial_capital: float


@dataclass(frozen=True)
class Split:
    """One announced split: `ratio` shares after per share before, effective at the session
    of `ex_date` (the exchange's date)."""

    symbol: str
    ex_date: date
    ratio: float

    def text(self) -> str:
        """The ratio as an operator reads it: "4:1", "1:10", "3:2"."""
        r = Fraction(self.ratio).limit_denominator(1000)
        return f"{r.numerator}:{r.denominator}"

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "ex_date": self.ex_date.isoformat(), "ratio": self.ratio}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Split:
        return cls(str(d["symbol"]), date.fromisoformat(str(d["ex_date"])), float(d["ratio"]))
