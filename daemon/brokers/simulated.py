"""A broker that fills orders against bars, for replays and paper runs without a venue.

A backtest is only worth as much as its fills, so wherever a bar leaves the sequence of
prices unknown this broker assumes the outcome that is worse for the trader:

* An order is never matched on the bar it was submitted in: the engine decides at bar t
  using t's close, so the earliest price it could really get is the open of bar t+1.
* Stops that the open gaps through fill at the open (with slippage), not at the stop.
* A trailing stop is checked against the anchor of previous bars before this bar's extreme
  moves it, since the extreme may have come after the low that would trigger it.
* On the bar a bracket's entry fills, only its stop-loss may also execute; if both exits of
  a bracket could execute in one bar, the stop-loss is assumed to have come first unless
  the open already gapped through the take-profit.
* Stop-limit orders (see `_trigger`): once triggered they are limit orders. A trigger at the
  open sees the whole bar; a trigger inside the bar fills at once only if the trigger price
  itself satisfies the limit (at the stop with slippage, never worse than the limit),
  otherwise the order waits for the next bar, because the bar's range may have come before.

Cost model: market and stop fills pay `slippage_pct` plus `half_spread_bps` on the reference
price; limit fills pay nothing beyond commission, since a limit never fills worse than its
limit. Commission is `max(min_commission, commission_pct * notional)` on every fill.

Quantity (without `allow_short`): a sell of held shares is accepted only for shares no working
sell has promised yet, as at Alpaca. The exits of one OCO group (a bracket's legs once its
entry filled, or a stand-alone take-profit + stop-loss pair) sell the same shares, so they
promise them once; legs still HELD promise nothing. A cancel frees the shares at once, so
cancelling a position's exits and submitting a sale in the same bar is accepted. At fill time
a sell never takes more than is held at that moment.

Memory is bounded: open orders live in a dict, closed ones only in a fixed-size record for
duplicate detection, because a paper daemon runs for months.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from ..core.ports import AccountView
from ..core.types import (
    BrokerUpdate,
    CrossSection,
    Fill,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    Side,
    order_from_dict,
    order_to_dict,
)

log = structlog.get_logger(__name__)

# Quantities and cash are floats; compare with a tolerance so 0.1 + 0.2 style residue never
# turns a complete fill into a partial one or a just-affordable buy into a rejection.
_EPS = 1e-9
_STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP})
_CLOSED = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})
DEFAULT_CLOSED_HISTORY = 10_000
# Enum members as module globals for the per-order paths: on Python 3.11 `Side.BUY` goes
# through EnumType.__getattr__'s hook, about ten times the cost of a global (0.07 against
# 0.006 us), twenty times a bar with two orders.
_HELD = OrderStatus.HELD
_NEW = OrderStatus.NEW
_FILLED = OrderStatus.FILLED
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_REJECTED = OrderStatus.REJECTED
_CANCELLED = OrderStatus.CANCELLED
_BUY = Side.BUY
_SELL = Side.SELL
_SIDES = (Side.SELL, Side.BUY)  # sells first: their proceeds pay for the bar's buys
_MARKET = OrderType.MARKET
_STOP_LOSS = Leg.STOP_LOSS
_ENTRY = Leg.ENTRY
_NUMBER = (int, float)  # isinstance with a prebuilt tuple: `int | float` is rebuilt per call


@dataclass(frozen=True, slots=True)
class SimulatedBrokerConfig:
    """Costs and execution limits of the simulated venue."""

    commission_pct: float = 0.001
    slippage_pct: float = 0.0005
    half_spread_bps: float = 0.0
    min_commission: float = 0.0
    # Largest fraction of one bar's volume a single order may take; 0 = unlimited.
    max_volume_participation: float = 0.1
    # Bars an entry order may stay open before it is cancelled; 0 = good till cancelled.
    order_ttl_bars: int = 5
    allow_short: bool = False

    def __post_init__(self) -> None:
        for name in ("commission_pct", "slippage_pct", "half_spread_bps", "min_commission"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.slippage_pct + self.half_spread_bps / 1e4 >= 1:
            raise ValueError(
                "slippage_pct + half_spread_bps/1e4 must be < 1 (a sell would fill at a price"
                f" <= 0), got slippage_pct={self.slippage_pct!r},"
                f" half_spread_bps={self.half_spread_bps!r}"
            )
        mvp = self.max_volume_participation
        if not (isinstance(mvp, int | float) and math.isfinite(mvp) and 0 <= mvp <= 1):
            raise ValueError(f"max_volume_participation must be in [0, 1], got {mvp!r}")
        ttl = self.order_ttl_bars
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
            raise ValueError(f"order_ttl_bars must be an integer >= 0, got {ttl!r}")
        if not isinstance(self.allow_short, bool):
            raise ValueError(f"allow_short must be a bool, got {self.allow_short!r}")


@dataclass(slots=True)
class _BarState:
    """What one bar's matching must remember across orders: fills are applied to the
    account only after `on_bar` returns, so cash and positions are tracked provisionally."""

    time: datetime
    cash: float
    position_delta: dict[str, float] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    changed: dict[str, Order] = field(default_factory=dict)


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


class SimulatedBroker:
    """Implements `Broker` by matching open orders against each cross-section.

    `account` must report cash and positions as of the start of the bar: after this bar's
    split and dividend, before this bar's fills, which the engine applies to its book after
    `on_bar` returns.
    """

    def __init__(
        self,
        config: SimulatedBrokerConfig,
        symbols: tuple[str, ...],
        account: AccountView,
        *,
        closed_history: int = DEFAULT_CLOSED_HISTORY,
    ) -> None:
        index = {s: i for i, s in enumerate(symbols)}
        if len(index) != len(symbols):
            raise ValueError("symbols must be unique")
        if closed_history < 1:
            raise ValueError(f"closed_history must be >= 1, got {closed_history!r}")
        self._config = config
        self._symbols = tuple(symbols)
        self._index = index
        self._account = account
        self._cost = config.slippage_pct + config.half_spread_bps / 1e4
        self._closed_history = closed_history
        self._open: dict[str, Order] = {}
        self._closed: OrderedDict[str, Order] = OrderedDict()
        # Bar sequence number from which an order may match (no lookahead, TP after entry bar).
        self._eligible_at: dict[str, int] = {}
        self._triggered: set[str] = set()  # stop-limits whose stop has been hit
        self._children: dict[str, list[str]] = {}  # parent id -> bracket leg ids
        self._oco: dict[str, list[str]] = {}  # oco group -> open member ids
        self._fill_count: dict[str, int] = {}
        # Entry orders cancelled by `order_ttl_bars` (this process's count: the run's summary
        # says it, as it says rejections). Each expiry was a debug-free cancel: a file whose
        # symbols trade less often than the run's bar (an hourly symbol in a 5-minute run)
        # expired every entry of those symbols, and the summary said "Orders rejected 0".
        self.expired = 0
        # Changes made outside on_bar (cascades of cancel/submit) reported with the next bar.
        self._pending: dict[str, Order] = {}
        self._seq = 0
        self._now: datetime | None = None

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    # ------------------------------------------------------------------------- queries

    def open_orders(self) -> list[Order]:
        # Called every bar by the planner; most bars of a replay have nothing open.
        if not self._open:
            return []
        return [o.snapshot() for o in self._open.values()]

    def order(self, client_order_id: str) -> Order | None:
        """The current state of an open or recently closed order, None if unknown."""
        found = self._open.get(client_order_id) or self._closed.get(client_order_id)
        return found.snapshot() if found is not None else None

    # ------------------------------------------------------------------------- durable state

    def state(self) -> dict[str, Any]:
        """The open book (this broker is its own source of truth), for a live checkpoint.
        Closed orders are not kept: ids carry their bar time, so none is ever resent."""
        return {
            "seq": self._seq,
            "now": self._now.isoformat() if self._now is not None else None,
            "open": [order_to_dict(o) for o in self._open.values()],
            "eligible_at": dict(self._eligible_at),
            "triggered": sorted(self._triggered),
            "children": {k: list(v) for k, v in self._children.items()},
            "oco": {k: list(v) for k, v in self._oco.items()},
            "fill_count": dict(self._fill_count),
            "pending": [order_to_dict(o) for o in self._pending.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._seq = int(state["seq"])
        self._now = datetime.fromisoformat(state["now"]) if state["now"] else None
        self._open = {}
        for d in state["open"]:
            o = order_from_dict(d)
            self._open[o.client_order_id] = o
        self._eligible_at = {k: int(v) for k, v in state["eligible_at"].items()}
        self._triggered = set(state["triggered"])
        self._children = {k: list(v) for k, v in state["children"].items()}
        self._oco = {k: list(v) for k, v in state["oco"].items()}
        self._fill_count = {k: int(v) for k, v in state["fill_count"].items()}
        pending = [order_from_dict(d) for d in state["pending"]]
        self._pending = {o.client_order_id: self._open.get(o.client_order_id, o) for o in pending}

    # ------------------------------------------------------------------------- commands

    async def submit(self, orders: Sequence[Order]) -> list[Order]:
        acknowledged: list[Order] = []
        for incoming in orders:
            cid = incoming.client_order_id
            known = self._open.get(cid) or self._closed.get(cid)
            if known is not None:
                log.warning(
                    "duplicate client_order_id; returning the existing order",
                    client_order_id=cid,
                    status=str(known.status),
                )
                acknowledged.append(known.snapshot())
                continue
            acknowledged.append(self._accept(incoming).snapshot())
        return acknowledged

    async def cancel(self, client_order_id: str, reason: str) -> Order | None:
        order = self._open.get(client_order_id)
        if order is None:
            closed = self._closed.get(client_order_id)
            return closed.snapshot() if closed is not None else None
        self._close(order, OrderStatus.CANCELLED, reason or "cancelled", self._pending)
        # The caller gets this order's final state now; only the cascade waits for on_bar.
        self._pending.pop(client_order_id, None)
        return order.snapshot()

    async def on_bar(self, bar: CrossSection) -> BrokerUpdate:
        self._seq += 1
        self._now = bar.time
        if not self._open:
            if not self._pending:
                return BrokerUpdate()
            pending, self._pending = self._pending, {}
            return BrokerUpdate(orders=[o.snapshot() for o in pending.values()])

        # The pending changes come first in the report, as they happened first; the dict
        # itself becomes this bar's record of changes (a fresh one takes its place).
        changed, self._pending = self._pending, {}
        state = _BarState(bar.time, float(self._account.cash), {}, [], changed)
        self._apply_splits(bar, state)
        open_ = self._open
        candidates = list(open_.values())
        has_oco = False
        for order in candidates:
            if order.oco_group is not None:
                has_oco = True
                break
        # Sells first, so that their proceeds can pay for this bar's buys.
        if has_oco:
            for side in _SIDES:
                for order in self._matching_order(candidates, side, bar):
                    if self._is_active(order):
                        self._match(order, bar, state)
        else:
            # No OCO group (plain rebalancing orders, the usual bar): `_matching_order`
            # would yield each side in submission order; without its generator per side
            # (an order may have been closed earlier in this bar: `_is_active`).
            # `_is_active`, inlined.
            eligible, seq = self._eligible_at, self._seq
            for side in _SIDES:
                for order in candidates:
                    if (
                        order.side is side
                        and open_.get(order.client_order_id) is order
                        and order.status is not _HELD
                        and eligible[order.client_order_id] <= seq
                    ):
                        self._match(order, bar, state)
        self._age(candidates, state)
        # An order that ended on this bar is reported as it is, not copied: closed orders
        # are never changed again (they only answer duplicate and cancel lookups, with
        # copies), so the caller's object cannot drift. Open ones still change: copies.
        return BrokerUpdate(
            state.fills, [o if o.status in _CLOSED else o.snapshot() for o in changed.values()]
        )

    # ------------------------------------------------------------------------- submission

    def _accept(self, incoming: Order) -> Order:
        # A copy (the caller keeps its object) with the lifecycle fields reset, built in one
        # call rather than a snapshot and six assignments; every other field is copied.
        created_at = incoming.created_at
        order = Order(
            incoming.client_order_id,
            incoming.symbol,
            incoming.side,
            incoming.quantity,
            created_at,
            incoming.type,
            incoming.limit_price,
            incoming.stop_price,
            incoming.trail_pct,
            incoming.leg,
            incoming.parent_id,
            incoming.oco_group,
            _NEW,
            0.0,
            math.nan,
            "",
            created_at,
            0,
            incoming.trail_anchor,
        )
        reason = self._validate(order)
        if reason:
            order.status = _REJECTED
            order.reason = reason
            self._remember_closed(order)
            return order
        if order.parent_id is not None:
            return self._accept_leg(order)
        self._register(order)
        return order

    def _validate(self, order: Order) -> str:
        qty = order.quantity
        if not (isinstance(qty, _NUMBER) and math.isfinite(qty) and qty > 0):
            return f"quantity must be a positive number, got {qty!r}"
        if order.symbol not in self._index:
            return f"unknown symbol {order.symbol!r}"
        kind = order.type
        # The price checks cannot apply to the MARKET member itself (any other value of
        # `type`, an equal plain string included, still goes through them all).
        if kind is not _MARKET:
            if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT) and not _positive(order.limit_price):
                return f"{kind} order requires a positive limit_price, got {order.limit_price!r}"
            if kind in (OrderType.STOP, OrderType.STOP_LIMIT) and not _positive(order.stop_price):
                return f"{kind} order requires a positive stop_price, got {order.stop_price!r}"
            if kind is OrderType.TRAILING_STOP:
                trail = order.trail_pct
                if trail is None or not (math.isfinite(trail) and 0 < trail < 1):
                    return f"trailing_stop order requires trail_pct in (0, 1), got {trail!r}"
        # Bracket legs only ever close what their parent opened; they are checked at fill.
        # A stand-alone exit in an OCO group (a take-profit + stop-loss pair re-placed for
        # what is left of a cut position) sells the same shares as its siblings: it may
        # promise whatever the orders outside its group leave.
        if order.side is _SELL and not self._config.allow_short and order.parent_id is None:
            available = self._account.quantity_of(order.symbol) - self._reserved_sells(
                order.symbol, exclude_group=order.oco_group
            )
            if qty > available + _EPS:
                return (
                    f"insufficient qty available for order (requested: {qty:g},"
                    f" available: {max(available, 0.0):g})"
                )
        return ""

    def _reserved_sells(self, symbol: str, exclude_group: str | None = None) -> float:
        """Shares already promised to open sell orders. Exits of one OCO group can only
        sell once, so a group counts with its largest member; HELD legs sell shares their
        parent has not bought yet, so they do not count. `exclude_group` leaves one OCO
        group out (the one an incoming member joins)."""
        total = 0.0
        groups: dict[str, float] = {}
        for o in self._open.values():
            if o.symbol != symbol or o.side is not _SELL or o.status is _HELD:
                continue
            if exclude_group is not None and o.oco_group == exclude_group:
                continue
            if o.oco_group is None:
                total += o.remaining
            else:
                groups[o.oco_group] = max(groups.get(o.oco_group, 0.0), o.remaining)
        return total + sum(groups.values())

    def _accept_leg(self, order: Order) -> Order:
        pid = order.parent_id
        assert pid is not None
        parent = self._open.get(pid) or self._closed.get(pid)
        if parent is None:
            order.status = OrderStatus.REJECTED
            order.reason = f"parent order {pid!r} unknown"
            self._remember_closed(order)
            return order
        if parent.side is order.side:
            order.status = OrderStatus.REJECTED
            order.reason = f"a bracket leg must be on the opposite side of its parent {pid!r}"
            self._remember_closed(order)
            return order
        if parent.status.is_open:
            order.status = OrderStatus.HELD
            self._children.setdefault(pid, []).append(order.client_order_id)
            self._register(order)
            return order
        if parent.filled_quantity > _EPS:
            # The parent is already done: the leg protects what it bought, from next bar.
            order.quantity = parent.filled_quantity
            self._register(order)
            return order
        order.status = OrderStatus.CANCELLED
        detail = f": {parent.reason}" if parent.reason else ""
        order.reason = f"parent order {pid} {parent.status}{detail}"
        self._remember_closed(order)
        return order

    def _register(self, order: Order) -> None:
        cid = order.client_order_id
        self._open[cid] = order
        self._eligible_at[cid] = self._seq + 1
        if order.oco_group is not None:
            self._oco.setdefault(order.oco_group, []).append(cid)

    # ------------------------------------------------------------------------- bar steps

    def _apply_splits(self, bar: CrossSection, state: _BarState) -> None:
        """Orders are in pre-split shares and prices; the bar is post-split."""
        splits = bar.split
        index = self._index
        for order in self._open.values():
            s = float(splits[index[order.symbol]])
            if s == 1.0 or not (math.isfinite(s) and s > 0):
                continue
            order.quantity *= s
            order.filled_quantity *= s
            order.avg_fill_price /= s
            if order.limit_price is not None:
                order.limit_price /= s
            if order.stop_price is not None:
                order.stop_price /= s
            if order.trail_anchor is not None:
                order.trail_anchor /= s
            order.updated_at = state.time
            state.changed[order.client_order_id] = order

    def _is_active(self, order: Order) -> bool:
        cid = order.client_order_id
        return (
            self._open.get(cid) is order
            and order.status is not _HELD
            and self._eligible_at[cid] <= self._seq
        )

    def _matching_order(
        self, candidates: list[Order], side: Side, bar: CrossSection
    ) -> Iterator[Order]:
        """Orders of one side in submission order, except that the members of an OCO group
        are tried together, in the order the both-touch rule implies."""
        done: set[str] = set()
        for order in candidates:
            cid = order.client_order_id
            if order.side is not side or cid in done:
                continue
            if order.oco_group is None:
                yield order
                continue
            members = [
                self._open[m]
                for m in self._oco.get(order.oco_group, ())
                if m in self._open and self._open[m].side is side
            ]
            open_price = float(bar.open[self._index[order.symbol]])
            members.sort(key=lambda o: self._oco_priority(o, open_price))
            for member in members:
                done.add(member.client_order_id)
                yield member

    @staticmethod
    def _oco_priority(order: Order, open_price: float) -> int:
        # A limit the open already gapped through filled first; otherwise stops come first
        # (pessimistic), and other limits last.
        if order.type is OrderType.LIMIT and order.limit_price is not None:
            gapped = (
                open_price <= order.limit_price
                if order.side is Side.BUY
                else open_price >= order.limit_price
            )
            if gapped:
                return 0
        return 1 if order.type in _STOP_TYPES else 2

    def _age(self, candidates: list[Order], state: _BarState) -> None:
        """Time in force. Only entry orders expire: bracket legs and stand-alone exits
        protect a position and stay until filled or cancelled."""
        ttl = self._config.order_ttl_bars
        open_, eligible, seq = self._open, self._eligible_at, self._seq
        for order in candidates:
            cid = order.client_order_id
            # `_is_active`, inlined: most were closed by their fill this bar.
            if open_.get(cid) is not order or order.status is _HELD or eligible[cid] > seq:
                continue
            order.bars_open += 1
            if ttl and order.leg is _ENTRY and order.bars_open >= ttl:
                self._close(
                    order,
                    OrderStatus.CANCELLED,
                    f"expired: still open after {ttl} bars (order_ttl_bars={ttl})",
                    state.changed,
                )
                self.expired += 1
                if self.expired == 1:
                    log.warning(
                        "order.expired",
                        symbol=order.symbol,
                        cid=cid,
                        bars_open=order.bars_open,
                        hint=(
                            "an entry order still open after order_ttl_bars bars of the run is "
                            "cancelled (said once; the run's summary counts them as "
                            "orders_expired): a symbol with no bar on most of the run's bars "
                            "(a file mixing bar lengths, an illiquid symbol) or a limit price "
                            "never reached; raise broker.order_ttl_bars, or 0 for none"
                        ),
                    )

    # ------------------------------------------------------------------------- matching

    def _match(
        self,
        order: Order,
        bar: CrossSection,
        state: _BarState,
        activated_at: float | None = None,
    ) -> None:
        """Try to fill `order` on `bar`. `activated_at` is set for a bracket leg that became
        active inside this bar: that price stands in for the open, and the bar's extremes
        may predate it, so they must not move a trailing anchor."""
        j = self._index[order.symbol]
        volume = float(bar.volume[j])
        open_ = float(bar.open[j])
        high = float(bar.high[j])
        low = float(bar.low[j])
        # No trades, no fills (and no triggers): NaN compares False, so this covers no bar.
        if not (volume > 0 and open_ == open_ and high == high and low == low):
            return
        if activated_at is not None:
            open_ = activated_at
        side = order.side
        buy = side is _BUY
        if order.type is _MARKET:
            # `_trigger` of a market order, inlined: at the open (or activation), slipped.
            price = open_ * (1 + self._cost) if buy else open_ * (1 - self._cost)
            reference = open_
        else:
            hit = self._trigger(order, open_, high, low, activated_at is None)
            if hit is None:
                return
            price, reference = hit
        qty = self._fillable(order, volume)
        if qty <= _EPS:
            return

        symbol = order.symbol
        cfg = self._config
        if not buy and not cfg.allow_short:
            position = self._position(symbol, state)
            if qty > position + _EPS:
                self._fail(
                    order,
                    f"insufficient qty available for order (requested: {qty:g},"
                    f" available: {max(position, 0.0):g})",
                    state,
                )
                return
        commission = max(cfg.min_commission, cfg.commission_pct * qty * price)
        if buy:
            cost = qty * price + commission
            if cost > state.cash + _EPS * max(1.0, cost):
                self._fail(
                    order,
                    f"insufficient buying power (required: {cost:.2f},"
                    f" available: {state.cash:.2f})",
                    state,
                )
                return
            state.cash -= cost
        else:
            state.cash += qty * price - commission
        state.position_delta[symbol] = state.position_delta.get(symbol, 0.0) + (
            qty if buy else -qty
        )

        cid = order.client_order_id
        n = self._fill_count.get(cid, 0) + 1
        self._fill_count[cid] = n
        time = state.time
        # Positional (fill_id, client_order_id, symbol, side, quantity, price, commission,
        # slippage, time, reference_price): keywords cost a frozen dataclass a third more.
        state.fills.append(
            Fill(
                f"{cid}#{n}",
                cid,
                symbol,
                side,
                qty,
                price,
                commission,
                abs(price - reference) * qty,
                time,
                reference,
            )
        )
        before = order.filled_quantity
        order.filled_quantity = before + qty
        order.avg_fill_price = (
            price if before <= 0 else (order.avg_fill_price * before + price * qty) / (before + qty)
        )
        order.updated_at = time
        state.changed[cid] = order

        # One exit executing (even partly) means the position is being closed by it; a
        # sibling left working could sell the same shares again.
        if order.oco_group is not None:
            for sibling_id in list(self._oco.get(order.oco_group, ())):
                sibling = self._open.get(sibling_id)
                if sibling_id != cid and sibling is not None:
                    self._close(
                        sibling,
                        OrderStatus.CANCELLED,
                        f"OCO: sibling order {cid} filled",
                        state.changed,
                    )

        if order.quantity - order.filled_quantity <= _EPS * max(1.0, order.quantity):
            order.filled_quantity = order.quantity
            for leg in self._close(order, _FILLED, "", state.changed):
                if leg.leg is _STOP_LOSS:
                    self._match(leg, bar, state, activated_at=reference)
        else:
            order.status = _PARTIAL

    def _trigger(
        self, order: Order, open_: float, high: float, low: float, update_anchor: bool
    ) -> tuple[float, float] | None:
        """(fill price, reference price) if the order executes on this bar, else None."""
        buy = order.side is Side.BUY
        kind = order.type
        if kind is OrderType.MARKET:
            return self._slipped(open_, buy), open_
        if kind is OrderType.LIMIT:
            assert order.limit_price is not None
            return self._limit_hit(order.limit_price, buy, open_, high, low)
        if kind is OrderType.STOP:
            assert order.stop_price is not None
            return self._stop_hit(order.stop_price, buy, open_, high, low)
        if kind is OrderType.STOP_LIMIT:
            return self._stop_limit_hit(order, buy, open_, high, low)
        # Trailing stop: test against the anchor so far, then let this bar move it.
        assert order.trail_pct is not None
        anchor = order.trail_anchor if order.trail_anchor is not None else open_
        if buy:
            hit = self._stop_hit(anchor * (1 + order.trail_pct), buy, open_, high, low)
            if update_anchor:
                anchor = min(anchor, low)
        else:
            hit = self._stop_hit(anchor * (1 - order.trail_pct), buy, open_, high, low)
            if update_anchor:
                anchor = max(anchor, high)
        order.trail_anchor = anchor
        return hit

    def _slipped(self, reference: float, buy: bool) -> float:
        return reference * (1 + self._cost) if buy else reference * (1 - self._cost)

    @staticmethod
    def _limit_hit(
        limit: float, buy: bool, open_: float, high: float, low: float
    ) -> tuple[float, float] | None:
        if buy:
            if open_ <= limit:
                return open_, open_
            if low <= limit:
                return limit, limit
        else:
            if open_ >= limit:
                return open_, open_
            if high >= limit:
                return limit, limit
        return None

    def _stop_hit(
        self, stop: float, buy: bool, open_: float, high: float, low: float
    ) -> tuple[float, float] | None:
        if buy:
            if open_ >= stop:
                return self._slipped(open_, buy), open_
            if high >= stop:
                return self._slipped(stop, buy), stop
        else:
            if open_ <= stop:
                return self._slipped(open_, buy), open_
            if low <= stop:
                return self._slipped(stop, buy), stop
        return None

    def _stop_limit_hit(
        self, order: Order, buy: bool, open_: float, high: float, low: float
    ) -> tuple[float, float] | None:
        """Conservative stop-limit: a trigger at the open leaves the whole bar for the limit;
        a trigger inside the bar fills only if the stop price itself satisfies the limit,
        at the stop with slippage capped by the limit. A limit that is not marketable at
        the trigger waits for the next bar: the range that would reach it may predate the
        trigger. From then on it is a plain limit order."""
        assert order.limit_price is not None and order.stop_price is not None
        limit, stop = order.limit_price, order.stop_price
        cid = order.client_order_id
        if cid in self._triggered:
            return self._limit_hit(limit, buy, open_, high, low)
        gapped = open_ >= stop if buy else open_ <= stop
        touched = gapped or (high >= stop if buy else low <= stop)
        if not touched:
            return None
        self._triggered.add(cid)
        at = open_ if gapped else stop
        if (at <= limit) if buy else (at >= limit):
            price = (
                min(limit, self._slipped(at, buy)) if buy else max(limit, self._slipped(at, buy))
            )
            return price, at
        if gapped and ((low <= limit) if buy else (high >= limit)):
            return limit, limit
        return None

    def _fillable(self, order: Order, volume: float) -> float:
        participation = self._config.max_volume_participation
        if participation <= 0:
            return order.remaining
        cap = participation * volume
        if float(order.quantity).is_integer():
            cap = math.floor(cap + 1e-9)
        return min(order.remaining, cap)

    def _position(self, symbol: str, state: _BarState) -> float:
        """Shares held now: the account's start-of-bar position plus this bar's fills so far.
        The engine applies a bar's split to the book before calling `on_bar`, so the account
        is already in post-split shares, like the adjusted orders."""
        return self._account.quantity_of(symbol) + state.position_delta.get(symbol, 0.0)

    # ------------------------------------------------------------------------- closing

    def _fail(self, order: Order, reason: str, state: _BarState) -> None:
        # An order that already executed in part was accepted; what is refused is its rest.
        status = _REJECTED if order.filled_quantity <= 0 else _CANCELLED
        self._close(order, status, reason, state.changed)

    def _close(
        self, order: Order, status: OrderStatus, reason: str, changed: dict[str, Order]
    ) -> list[Order]:
        """Finish an order and settle its bracket legs; returns the legs it activated.

        Legs are activated whenever the parent ends with shares filled (fully, or partly
        before a cancel, expiry or fill-time rejection), so that what was bought is always
        protected; they are cancelled only if the parent ends with nothing filled."""
        cid = order.client_order_id
        order.status = status
        order.reason = reason
        now = self._now
        if now is not None:
            order.updated_at = now
        changed[cid] = order
        del self._open[cid]
        self._eligible_at.pop(cid, None)
        if self._triggered:
            self._triggered.discard(cid)
        self._fill_count.pop(cid, None)
        group = order.oco_group
        if group is not None:
            members = self._oco.get(group)
            if members is not None:
                if cid in members:
                    members.remove(cid)
                if not members:
                    del self._oco[group]
        # `_remember_closed`, inlined.
        closed = self._closed
        closed[cid] = order
        if len(closed) > self._closed_history:
            closed.popitem(last=False)

        activated: list[Order] = []
        if not self._children:
            return activated
        for leg_id in self._children.pop(cid, ()):
            leg = self._open.get(leg_id)
            if leg is None or leg.status is not OrderStatus.HELD:
                continue
            if order.filled_quantity > _EPS:
                leg.quantity = order.filled_quantity
                leg.status = OrderStatus.NEW
                leg.updated_at = order.updated_at
                self._eligible_at[leg_id] = self._seq + 1
                changed[leg_id] = leg
                activated.append(leg)
            else:
                detail = f": {reason}" if reason else ""
                self._close(
                    leg, OrderStatus.CANCELLED, f"parent order {cid} {status}{detail}", changed
                )
        return activated

    def _remember_closed(self, order: Order) -> None:
        self._closed[order.client_order_id] = order
        if len(self._closed) > self._closed_history:
            self._closed.popitem(last=False)
