"""The simulated broker: every expected price is computed by hand from the stated rules."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.brokers.simulated import SimulatedBroker, SimulatedBrokerConfig
from tradingd.core.orders import bracket_orders, market_order
from tradingd.core.types import (
    BrokerUpdate,
    CrossSection,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    Side,
    client_order_id,
)

SYMS = ("AAA", "BBB", "CCC")
T0 = datetime(2024, 1, 2, 16, 0, tzinfo=UTC)
SLIP = 0.0005
COMM = 0.001
# Unlimited volume and no expiry, so each test sees only the rule it is about.
CFG = SimulatedBrokerConfig(max_volume_participation=0.0, order_ttl_bars=0)

Bar = tuple[float, float, float, float, float]  # open, high, low, close, volume


def ohlc(o: float, h: float | None = None, lo: float | None = None, v: float = 1e6) -> Bar:
    h = max(o, h if h is not None else o)
    lo = min(o, lo if lo is not None else o)
    return (o, h, lo, o, v)


def xs(i: int, bars: dict[str, Bar] | None = None, split: dict[str, float] | None = None):
    n = len(SYMS)
    arr = {k: np.full(n, np.nan) for k in ("open", "high", "low", "close", "volume")}
    for sym, (o, h, lo, c, v) in (bars or {}).items():
        j = SYMS.index(sym)
        fields = ("open", "high", "low", "close", "volume")
        for k, val in zip(fields, (o, h, lo, c, v), strict=True):
            arr[k][j] = val
    splits = np.ones(n)
    for sym, s in (split or {}).items():
        splits[SYMS.index(sym)] = s
    return CrossSection(time=T0 + timedelta(days=i), split=splits, dividend=np.zeros(n), **arr)


class FakeAccount:
    """The book: start-of-bar cash and positions; fills are applied after each bar."""

    def __init__(self, cash: float = 1e6, positions: dict[str, float] | None = None) -> None:
        self._cash = cash
        self.positions = dict(positions or {})
        self.cash_reads = 0

    @property
    def cash(self) -> float:
        self.cash_reads += 1
        return self._cash

    @cash.setter
    def cash(self, value: float) -> None:
        self._cash = value

    def quantity_of(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0)

    def apply(self, update: BrokerUpdate) -> None:
        for f in update.fills:
            self._cash -= f.signed_quantity * f.price + f.commission
            self.positions[f.symbol] = self.positions.get(f.symbol, 0.0) + f.signed_quantity


def make(
    cfg: SimulatedBrokerConfig = CFG, cash: float = 1e6, positions: dict[str, float] | None = None
) -> tuple[SimulatedBroker, FakeAccount]:
    account = FakeAccount(cash, positions)
    return SimulatedBroker(cfg, SYMS, account), account


def order(
    cid: str,
    side: Side,
    qty: float,
    kind: OrderType = OrderType.MARKET,
    *,
    symbol: str = "AAA",
    limit: float | None = None,
    stop: float | None = None,
    trail: float | None = None,
    leg: Leg = Leg.ENTRY,
) -> Order:
    return Order(
        client_order_id=cid,
        symbol=symbol,
        side=side,
        quantity=qty,
        created_at=T0,
        type=kind,
        limit_price=limit,
        stop_price=stop,
        trail_pct=trail,
        leg=leg,
    )


def by_id(update: BrokerUpdate) -> dict[str, Order]:
    return {o.client_order_id: o for o in update.orders}


async def step(broker: SimulatedBroker, account: FakeAccount, bar: CrossSection) -> BrokerUpdate:
    update = await broker.on_bar(bar)
    account.apply(update)
    return update


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("commission_pct", -0.001),
        ("slippage_pct", -1e-4),
        ("half_spread_bps", -1.0),
        ("min_commission", -1.0),
        ("max_volume_participation", 1.5),
        ("order_ttl_bars", -1),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SimulatedBrokerConfig(**{field: value})


# ----------------------------------------------------------------------------- builders


def test_market_order_builder_turns_sign_into_side() -> None:
    o = market_order("run1", T0, "AAA", -25.0)
    assert o.side is Side.SELL and o.quantity == 25.0 and o.type is OrderType.MARKET
    assert o.client_order_id == client_order_id("run1", T0, "AAA", Leg.ENTRY)
    with pytest.raises(ValueError):
        market_order("run1", T0, "AAA", 0.0)


def test_bracket_builder_links_legs_to_entry() -> None:
    entry, tp, sl = bracket_orders("run1", T0, "AAA", 10, 110.0, 90.0)
    assert entry.side is Side.BUY and entry.status is OrderStatus.NEW
    assert tp.client_order_id == client_order_id("run1", T0, "AAA", Leg.TAKE_PROFIT)
    assert sl.client_order_id == client_order_id("run1", T0, "AAA", Leg.STOP_LOSS)
    for leg in (tp, sl):
        assert leg.side is Side.SELL and leg.quantity == 10
        assert leg.parent_id == entry.client_order_id
        assert leg.oco_group == entry.client_order_id
        assert leg.status is OrderStatus.HELD
    assert tp.type is OrderType.LIMIT and tp.limit_price == 110.0
    assert sl.type is OrderType.STOP and sl.stop_price == 90.0
    with pytest.raises(ValueError):
        bracket_orders("run1", T0, "AAA", 10, 90.0, 110.0)


# ----------------------------------------------------------------------------- market


async def test_market_buy_fills_at_next_open_with_slippage_spread_and_commission() -> None:
    cfg = SimulatedBrokerConfig(half_spread_bps=2.0, max_volume_participation=0.0, order_ttl_bars=0)
    broker, account = make(cfg)
    await step(broker, account, xs(0, {"AAA": ohlc(95.0)}))
    [ack] = await broker.submit([order("b1", Side.BUY, 100)])
    assert ack.status is OrderStatus.NEW
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 103.0, 97.0)}))
    [fill] = update.fills
    price = 100.0 * (1 + 0.0005 + 0.0002)
    assert fill.price == pytest.approx(price)
    assert fill.reference_price == 100.0
    assert fill.slippage == pytest.approx((price - 100.0) * 100)
    assert fill.commission == pytest.approx(0.001 * 100 * price)
    assert fill.fill_id == "b1#1"
    assert by_id(update)["b1"].status is OrderStatus.FILLED
    assert by_id(update)["b1"].avg_fill_price == pytest.approx(price)
    assert broker.open_orders() == []


async def test_market_sell_price_and_min_commission() -> None:
    cfg = SimulatedBrokerConfig(
        min_commission=5.0, half_spread_bps=2.0, max_volume_participation=0.0
    )
    broker, account = make(cfg, positions={"BBB": 1})
    await broker.submit([order("s1", Side.SELL, 1, symbol="BBB")])
    update = await step(broker, account, xs(1, {"BBB": ohlc(50.0)}))
    [fill] = update.fills
    assert fill.price == pytest.approx(50.0 * (1 - 0.0005 - 0.0002))
    assert fill.commission == 5.0  # 0.1% of ~50 is 0.05, below the minimum
    assert fill.slippage == pytest.approx(50.0 * 0.0007)


async def test_order_is_not_filled_on_its_submission_bar() -> None:
    broker, account = make()
    await step(broker, account, xs(0, {"AAA": ohlc(80.0)}))
    await broker.submit([order("b1", Side.BUY, 10)])
    assert [o.status for o in broker.open_orders()] == [OrderStatus.NEW]
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    [fill] = update.fills
    # The open of the bar after submission, not the bar the decision was taken on.
    assert fill.reference_price == 100.0
    assert fill.time == T0 + timedelta(days=1)


async def test_on_bar_without_open_orders_does_no_work() -> None:
    broker, account = make()
    for i in range(100):
        update = await broker.on_bar(xs(i, {"AAA": ohlc(100.0)}))
        assert update.fills == [] and update.orders == []
    assert account.cash_reads == 0


# ----------------------------------------------------------------------------- limit


async def test_limit_buy_fills_at_open_when_open_is_below_limit() -> None:
    broker, account = make()
    await broker.submit([order("l1", Side.BUY, 10, OrderType.LIMIT, limit=99.0)])
    update = await step(broker, account, xs(1, {"AAA": ohlc(98.0, 100.0, 97.0)}))
    [fill] = update.fills
    assert fill.price == 98.0 and fill.slippage == 0.0
    assert fill.commission == pytest.approx(0.001 * 10 * 98.0)


async def test_limit_buy_fills_at_limit_intrabar_and_waits_when_untouched() -> None:
    broker, account = make()
    await broker.submit([order("l1", Side.BUY, 10, OrderType.LIMIT, limit=99.0)])
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 101.0, 99.5)}))
    assert update.fills == []
    update = await step(broker, account, xs(2, {"AAA": ohlc(100.0, 101.0, 98.5)}))
    [fill] = update.fills
    assert fill.price == 99.0 and fill.slippage == 0.0


async def test_limit_sell_fills_at_open_or_limit() -> None:
    broker, account = make(positions={"AAA": 20})
    await broker.submit(
        [
            order("s1", Side.SELL, 10, OrderType.LIMIT, limit=101.0),
            order("s2", Side.SELL, 10, OrderType.LIMIT, limit=104.0),
        ]
    )
    update = await step(broker, account, xs(1, {"AAA": ohlc(102.0, 105.0, 100.0)}))
    prices = {f.client_order_id: f.price for f in update.fills}
    assert prices == {"s1": 102.0, "s2": 104.0}


# ----------------------------------------------------------------------------- stop


async def test_stop_sell_gapped_through_fills_at_open_with_slippage() -> None:
    broker, account = make(positions={"AAA": 10})
    await broker.submit([order("st", Side.SELL, 10, OrderType.STOP, stop=95.0, leg=Leg.EXIT)])
    update = await step(broker, account, xs(1, {"AAA": ohlc(90.0, 92.0, 88.0)}))
    [fill] = update.fills
    assert fill.price == pytest.approx(90.0 * (1 - SLIP))
    assert fill.reference_price == 90.0


async def test_stop_sell_intrabar_fills_at_stop_with_slippage() -> None:
    broker, account = make(positions={"AAA": 10})
    await broker.submit([order("st", Side.SELL, 10, OrderType.STOP, stop=95.0, leg=Leg.EXIT)])
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 101.0, 96.0)}))
    assert update.fills == []
    update = await step(broker, account, xs(2, {"AAA": ohlc(100.0, 101.0, 94.0)}))
    [fill] = update.fills
    assert fill.price == pytest.approx(95.0 * (1 - SLIP))
    assert fill.slippage == pytest.approx(95.0 * SLIP * 10)


async def test_stop_buy_intrabar_and_gap() -> None:
    broker, account = make()
    await broker.submit(
        [
            order("b1", Side.BUY, 1, OrderType.STOP, stop=105.0),
            order("b2", Side.BUY, 1, OrderType.STOP, stop=105.0, symbol="BBB"),
        ]
    )
    update = await step(
        broker,
        account,
        xs(1, {"AAA": ohlc(103.0, 106.0, 102.0), "BBB": ohlc(107.0, 108.0, 106.0)}),
    )
    prices = {f.client_order_id: f.price for f in update.fills}
    assert prices["b1"] == pytest.approx(105.0 * (1 + SLIP))
    assert prices["b2"] == pytest.approx(107.0 * (1 + SLIP))


# ----------------------------------------------------------------------------- stop-limit


async def test_stop_limit_triggered_intrabar_fills_at_stop_bounded_by_limit() -> None:
    broker, account = make(positions={"AAA": 10})
    await broker.submit(
        [order("sl", Side.SELL, 10, OrderType.STOP_LIMIT, stop=95.0, limit=94.0, leg=Leg.EXIT)]
    )
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 101.0, 93.0)}))
    [fill] = update.fills
    assert fill.price == pytest.approx(max(94.0, 95.0 * (1 - SLIP)))
    assert fill.price >= 94.0


async def test_stop_limit_gap_below_limit_fills_at_limit_if_bar_comes_back() -> None:
    broker, account = make(positions={"AAA": 10})
    await broker.submit(
        [order("sl", Side.SELL, 10, OrderType.STOP_LIMIT, stop=95.0, limit=94.0, leg=Leg.EXIT)]
    )
    # Gaps to 93 (< limit): the whole bar follows the trigger, and it reaches 94.5.
    update = await step(broker, account, xs(1, {"AAA": ohlc(93.0, 94.5, 92.0)}))
    [fill] = update.fills
    assert fill.price == 94.0


async def test_stop_limit_not_marketable_at_trigger_waits_for_next_bar() -> None:
    broker, account = make(positions={"AAA": 10})
    await broker.submit(
        [order("sl", Side.SELL, 10, OrderType.STOP_LIMIT, stop=95.0, limit=96.0, leg=Leg.EXIT)]
    )
    # Triggered at 95 inside the bar; the high of 101 may have come before the trigger.
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 101.0, 94.0)}))
    assert update.fills == []
    assert broker.open_orders()[0].status is OrderStatus.NEW
    # Now a plain limit sell at 96 (the stop is not re-tested: 95.5 > 95 would not trigger).
    update = await step(broker, account, xs(2, {"AAA": ohlc(95.5, 97.0, 95.2)}))
    [fill] = update.fills
    assert fill.price == 96.0


# ----------------------------------------------------------------------------- trailing


async def test_trailing_stop_checks_previous_anchor_then_moves_it() -> None:
    broker, account = make(positions={"AAA": 10})
    await broker.submit(
        [order("tr", Side.SELL, 10, OrderType.TRAILING_STOP, trail=0.1, leg=Leg.EXIT)]
    )
    # Anchor starts at the open (100): stop 90 is not hit by the low of 95. Had the high of
    # 110 been applied first, the stop would be 99 and the low of 95 would have hit it.
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 110.0, 95.0)}))
    assert update.fills == []
    [open_order] = broker.open_orders()
    assert open_order.trail_anchor == 110.0
    update = await step(broker, account, xs(2, {"AAA": ohlc(105.0, 106.0, 98.0)}))
    [fill] = update.fills
    assert fill.price == pytest.approx(110.0 * 0.9 * (1 - SLIP))
    assert fill.reference_price == pytest.approx(99.0)


async def test_trailing_buy_stop_follows_lows() -> None:
    broker, account = make()
    await broker.submit([order("tb", Side.BUY, 1, OrderType.TRAILING_STOP, trail=0.05)])
    await step(broker, account, xs(1, {"AAA": ohlc(100.0, 104.0, 90.0)}))
    assert broker.open_orders()[0].trail_anchor == 90.0
    update = await step(broker, account, xs(2, {"AAA": ohlc(93.0, 95.0, 92.0)}))
    [fill] = update.fills
    assert fill.price == pytest.approx(90.0 * 1.05 * (1 + SLIP))


# ----------------------------------------------------------------------------- bracket


async def submit_bracket(
    broker: SimulatedBroker, qty: float = 10, tp: float = 110.0, sl: float = 90.0
) -> tuple[str, str, str]:
    legs = bracket_orders("r", T0, "AAA", qty, tp, sl)
    acks = await broker.submit(legs)
    assert [a.status for a in acks] == [OrderStatus.NEW, OrderStatus.HELD, OrderStatus.HELD]
    return tuple(o.client_order_id for o in legs)  # type: ignore[return-value]


async def test_bracket_legs_are_held_then_activated_by_the_entry_fill() -> None:
    broker, account = make()
    entry, tp, sl = await submit_bracket(broker)
    # High 115 would reach the TP, but TP only works from the bar after the entry.
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 115.0, 95.0)}))
    assert [f.client_order_id for f in update.fills] == [entry]
    orders = by_id(update)
    assert orders[entry].status is OrderStatus.FILLED
    assert orders[tp].status is OrderStatus.NEW and orders[tp].quantity == 10
    assert orders[sl].status is OrderStatus.NEW and orders[sl].quantity == 10


async def test_bracket_take_profit_fill_cancels_stop_loss() -> None:
    broker, account = make()
    _, tp, sl = await submit_bracket(broker)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    update = await step(broker, account, xs(2, {"AAA": ohlc(105.0, 111.0, 104.0)}))
    [fill] = update.fills
    assert fill.client_order_id == tp and fill.price == 110.0
    orders = by_id(update)
    assert orders[sl].status is OrderStatus.CANCELLED
    assert tp in orders[sl].reason
    assert broker.open_orders() == []
    assert account.positions["AAA"] == 0


async def test_bracket_stop_loss_gap_fills_at_open_and_cancels_take_profit() -> None:
    broker, account = make()
    _, tp, sl = await submit_bracket(broker)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    update = await step(broker, account, xs(2, {"AAA": ohlc(85.0, 86.0, 80.0)}))
    [fill] = update.fills
    assert fill.client_order_id == sl
    assert fill.price == pytest.approx(85.0 * (1 - SLIP))
    assert by_id(update)[tp].status is OrderStatus.CANCELLED
    assert sl in by_id(update)[tp].reason


async def test_bracket_both_touched_assumes_stop_loss_first() -> None:
    broker, account = make()
    _, tp, sl = await submit_bracket(broker)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    update = await step(broker, account, xs(2, {"AAA": ohlc(100.0, 112.0, 88.0)}))
    [fill] = update.fills
    assert fill.client_order_id == sl
    assert fill.price == pytest.approx(90.0 * (1 - SLIP))
    assert by_id(update)[tp].status is OrderStatus.CANCELLED


async def test_bracket_both_touched_but_open_gaps_beyond_take_profit() -> None:
    broker, account = make()
    _, tp, sl = await submit_bracket(broker)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    update = await step(broker, account, xs(2, {"AAA": ohlc(112.0, 113.0, 88.0)}))
    [fill] = update.fills
    assert fill.client_order_id == tp and fill.price == 112.0
    assert by_id(update)[sl].status is OrderStatus.CANCELLED


async def test_bracket_stop_loss_may_trigger_on_the_entry_bar() -> None:
    broker, account = make()
    entry, tp, sl = await submit_bracket(broker)
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0, 115.0, 85.0)}))
    assert [f.client_order_id for f in update.fills] == [entry, sl]
    assert update.fills[1].price == pytest.approx(90.0 * (1 - SLIP))
    orders = by_id(update)
    assert orders[sl].status is OrderStatus.FILLED
    assert orders[tp].status is OrderStatus.CANCELLED
    assert account.positions["AAA"] == 0


async def test_cancelling_the_parent_cancels_its_held_legs() -> None:
    broker, account = make()
    entry, tp, sl = await submit_bracket(broker)
    cancelled = await broker.cancel(entry, "signal flipped")
    assert cancelled is not None and cancelled.status is OrderStatus.CANCELLED
    assert cancelled.reason == "signal flipped"
    assert broker.open_orders() == []
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    assert update.fills == []
    orders = by_id(update)
    assert {orders[tp].status, orders[sl].status} == {OrderStatus.CANCELLED}
    assert entry in orders[tp].reason
    assert await broker.cancel("nope", "x") is None


async def test_parent_cancelled_after_partial_fill_activates_legs_for_filled_qty() -> None:
    # Cancelling the legs would leave the shares already bought without protection.
    broker, account = make(SimulatedBrokerConfig(max_volume_participation=0.1, order_ttl_bars=0))
    entry, tp, sl = await submit_bracket(broker, qty=30)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0, v=100)}))  # fills 10 of 30
    await broker.cancel(entry, "stop buying")
    legs = {o.client_order_id: o for o in broker.open_orders()}
    assert set(legs) == {tp, sl}
    assert legs[tp].status is OrderStatus.NEW and legs[tp].quantity == 10
    assert legs[sl].quantity == 10


async def test_partial_fill_of_one_exit_cancels_its_sibling() -> None:
    broker, account = make(SimulatedBrokerConfig(max_volume_participation=0.1, order_ttl_bars=0))
    _, tp, sl = await submit_bracket(broker, qty=20)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0, v=1000)}))  # entry fills 20
    update = await step(broker, account, xs(2, {"AAA": ohlc(89.0, 90.0, 85.0, v=100)}))
    [fill] = update.fills
    assert fill.client_order_id == sl and fill.quantity == 10
    orders = by_id(update)
    assert orders[sl].status is OrderStatus.PARTIALLY_FILLED
    assert orders[tp].status is OrderStatus.CANCELLED
    update = await step(broker, account, xs(3, {"AAA": ohlc(88.0, v=1000)}))
    assert by_id(update)[sl].status is OrderStatus.FILLED
    assert account.positions["AAA"] == 0


async def test_rejected_parent_cancels_its_legs_at_submission() -> None:
    broker, _ = make()
    acks = await broker.submit(bracket_orders("r", T0, "AAA", -10, 90.0, 110.0))
    assert [a.status for a in acks] == [
        OrderStatus.REJECTED,
        OrderStatus.CANCELLED,
        OrderStatus.CANCELLED,
    ]
    assert "insufficient qty available" in acks[0].reason
    assert broker.open_orders() == []


def oco_pair(tag: str, qty: float, tp: float, sl: float) -> list[Order]:
    """A stand-alone take-profit + stop-loss pair (one cancels the other) that protects
    shares already held: what replaces bracket legs when a position is cut."""
    take = order(f"{tag}-tp", Side.SELL, qty, OrderType.LIMIT, limit=tp, leg=Leg.TAKE_PROFIT)
    stop = order(f"{tag}-sl", Side.SELL, qty, OrderType.STOP, stop=sl, leg=Leg.STOP_LOSS)
    take.oco_group = stop.oco_group = tag
    return [take, stop]


async def test_standalone_oco_exits_reserve_the_held_shares_once() -> None:
    broker, _ = make(positions={"AAA": 100})
    [sale] = await broker.submit([order("s1", Side.SELL, 40)])
    # Both members of the pair sell the same 60 shares: together they promise 60, not 120.
    acks = await broker.submit(oco_pair("x", 60, 110.0, 90.0))
    assert [a.status for a in acks] == [OrderStatus.NEW, OrderStatus.NEW], acks[-1].reason
    assert sale.status is OrderStatus.NEW
    # All 100 shares are promised now: one more share is refused, and so is a pair too big.
    [extra] = await broker.submit([order("s2", Side.SELL, 1)])
    assert extra.status is OrderStatus.REJECTED and "available: 0" in extra.reason
    big = await broker.submit(oco_pair("y", 1, 120.0, 80.0))
    assert {a.status for a in big} == {OrderStatus.REJECTED}


async def test_cancelled_legs_free_their_shares_for_a_cut_in_the_same_bar() -> None:
    """The engine's sequence when it cuts a bracketed position: cancel the legs, submit the
    sale and the re-placed exits for the rest, all before the next bar."""
    broker, account = make()
    _, tp, sl = await submit_bracket(broker, qty=100, tp=110.0, sl=90.0)
    await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    [refused] = await broker.submit([order("early", Side.SELL, 40)])
    assert refused.status is OrderStatus.REJECTED  # the legs hold all 100 shares
    for cid in (tp, sl):
        cancelled = await broker.cancel(cid, "position reduced")
        assert cancelled is not None and cancelled.status is OrderStatus.CANCELLED
    acks = await broker.submit([order("cut", Side.SELL, 40), *oco_pair("rest", 60, 110.0, 90.0)])
    assert [a.status for a in acks] == [OrderStatus.NEW] * 3, [a.reason for a in acks]
    # The open gaps through the stop: the cut and the stop both sell at the open, 100 in all.
    update = await step(broker, account, xs(2, {"AAA": ohlc(85.0, 86.0, 80.0)}))
    assert sorted((f.client_order_id, f.quantity) for f in update.fills) == [
        ("cut", 40),
        ("rest-sl", 60),
    ]
    assert by_id(update)["rest-tp"].status is OrderStatus.CANCELLED
    assert account.positions["AAA"] == 0
    assert broker.open_orders() == []
    assert (await step(broker, account, xs(3, {"AAA": ohlc(70.0, 71.0, 60.0)}))).fills == []
    assert account.positions["AAA"] == 0


# ----------------------------------------------------------------------------- volume


async def test_partial_fills_by_volume_participation_then_completion() -> None:
    cfg = SimulatedBrokerConfig(max_volume_participation=0.1, order_ttl_bars=0)
    broker, account = make(cfg)
    [ack] = await broker.submit([order("b1", Side.BUY, 150)])
    assert ack.status is OrderStatus.NEW
    # 10% of 1005 is 100.5, floored to whole shares.
    u1 = await step(broker, account, xs(1, {"AAA": ohlc(100.0, v=1005)}))
    assert [f.quantity for f in u1.fills] == [100]
    o1 = by_id(u1)["b1"]
    assert o1.status is OrderStatus.PARTIALLY_FILLED and o1.filled_quantity == 100
    u2 = await step(broker, account, xs(2, {"AAA": ohlc(110.0, v=1000)}))
    [f2] = u2.fills
    assert f2.quantity == 50 and f2.fill_id == "b1#2"
    o2 = by_id(u2)["b1"]
    assert o2.status is OrderStatus.FILLED and o2.filled_quantity == 150
    expected_avg = (100 * 100.0 * (1 + SLIP) + 50 * 110.0 * (1 + SLIP)) / 150
    assert o2.avg_fill_price == pytest.approx(expected_avg)


async def test_zero_volume_and_missing_bars_fill_nothing() -> None:
    broker, account = make()
    await broker.submit([order("b1", Side.BUY, 10)])
    assert (await step(broker, account, xs(1, {"AAA": ohlc(100.0, v=0.0)}))).fills == []
    assert (await step(broker, account, xs(2, {"BBB": ohlc(50.0)}))).fills == []  # AAA NaN
    update = await step(broker, account, xs(3, {"AAA": ohlc(101.0)}))
    [fill] = update.fills
    assert fill.reference_price == 101.0


# ----------------------------------------------------------------------------- splits


async def test_split_adjusts_open_stop_order_before_matching() -> None:
    broker, account = make(positions={"AAA": 100})
    await broker.submit([order("st", Side.SELL, 100, OrderType.STOP, stop=95.0, leg=Leg.EXIT)])
    # 2-for-1 before this open: the stop becomes 47.5 for 200 shares. Unadjusted, the open
    # of 50 would look like a gap through 95. The engine splits the book before on_bar.
    account.positions["AAA"] = 200
    update = await step(broker, account, xs(1, {"AAA": ohlc(50.0, 51.0, 48.0)}, {"AAA": 2.0}))
    assert update.fills == []
    [adjusted] = broker.open_orders()
    assert adjusted.quantity == 200 and adjusted.stop_price == 47.5
    update = await step(broker, account, xs(2, {"AAA": ohlc(49.0, 50.0, 47.0)}))
    [fill] = update.fills
    assert fill.quantity == 200
    assert fill.price == pytest.approx(47.5 * (1 - SLIP))


async def test_split_bar_fill_sells_the_post_split_quantity() -> None:
    broker, account = make(positions={"AAA": 100})
    await broker.submit([order("st", Side.SELL, 100, OrderType.STOP, stop=95.0, leg=Leg.EXIT)])
    account.positions["AAA"] = 200  # the engine applied the split to the book first
    update = await step(broker, account, xs(1, {"AAA": ohlc(50.0, 51.0, 47.0)}, {"AAA": 2.0}))
    [fill] = update.fills
    assert fill.quantity == 200 and fill.price == pytest.approx(47.5 * (1 - SLIP))


# ----------------------------------------------------------------------------- rejections


async def test_short_sell_rejected_at_submission() -> None:
    broker, _ = make(positions={"AAA": 10})
    acks = await broker.submit(
        [
            order("s0", Side.SELL, 5, symbol="BBB"),
            order("s1", Side.SELL, 6),
            order("s2", Side.SELL, 5),  # 10 held, 6 already promised
            order("s3", Side.SELL, 4),
        ]
    )
    assert [a.status for a in acks] == [
        OrderStatus.REJECTED,
        OrderStatus.NEW,
        OrderStatus.REJECTED,
        OrderStatus.NEW,
    ]
    assert "insufficient qty available" in acks[0].reason
    assert "insufficient qty available" in acks[2].reason


async def test_short_sell_rejected_at_fill_time() -> None:
    broker, account = make(positions={"AAA": 10})
    [ack] = await broker.submit([order("s1", Side.SELL, 10)])
    assert ack.status is OrderStatus.NEW
    account.positions["AAA"] = 5  # sold elsewhere before the order could execute
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    assert update.fills == []
    rejected = by_id(update)["s1"]
    assert rejected.status is OrderStatus.REJECTED
    assert "insufficient qty available" in rejected.reason


async def test_short_allowed_when_configured() -> None:
    broker, account = make(SimulatedBrokerConfig(allow_short=True, max_volume_participation=0))
    [ack] = await broker.submit([order("s1", Side.SELL, 10)])
    assert ack.status is OrderStatus.NEW
    await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    assert account.positions["AAA"] == -10


async def test_buy_rejected_for_insufficient_cash_at_fill_time() -> None:
    broker, account = make(cash=1000.0)
    [ack] = await broker.submit([order("b1", Side.BUY, 10)])
    assert ack.status is OrderStatus.NEW
    # 10 * 100.05 + 1.0005 commission = 1001.5005 > 1000
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    assert update.fills == []
    rejected = by_id(update)["b1"]
    assert rejected.status is OrderStatus.REJECTED
    assert "insufficient buying power" in rejected.reason


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (order("q0", Side.BUY, 0), "quantity"),
        (order("qn", Side.BUY, math.nan), "quantity"),
        (order("us", Side.BUY, 1, symbol="ZZZ"), "unknown symbol"),
        (order("nl", Side.BUY, 1, OrderType.LIMIT), "limit_price"),
        (order("ns", Side.BUY, 1, OrderType.STOP), "stop_price"),
        (order("nt", Side.BUY, 1, OrderType.TRAILING_STOP), "trail_pct"),
    ],
)
async def test_invalid_orders_rejected_with_reason(bad: Order, needle: str) -> None:
    broker, _ = make()
    [ack] = await broker.submit([bad])
    assert ack.status is OrderStatus.REJECTED and needle in ack.reason
    assert broker.open_orders() == []


async def test_sells_are_processed_before_buys() -> None:
    broker, account = make(cash=0.0, positions={"BBB": 10})
    # The buy is submitted first, but only the sale's proceeds can pay for it.
    await broker.submit([order("b1", Side.BUY, 5), order("s1", Side.SELL, 10, symbol="BBB")])
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0), "BBB": ohlc(100.0)}))
    assert [f.client_order_id for f in update.fills] == ["s1", "b1"]
    proceeds = 10 * 100.0 * (1 - SLIP) * (1 - COMM)
    cost = 5 * 100.0 * (1 + SLIP) * (1 + COMM)
    assert account.cash == pytest.approx(proceeds - cost)


# ----------------------------------------------------------------------------- lifecycle


async def test_duplicate_client_order_id_returns_existing_order() -> None:
    broker, account = make()
    with capture_logs() as logs:
        first = await broker.submit([order("b1", Side.BUY, 10)])
        second = await broker.submit([order("b1", Side.BUY, 99)])
    assert second[0].quantity == 10 and second[0].client_order_id == first[0].client_order_id
    assert len(broker.open_orders()) == 1
    assert any(e["log_level"] == "warning" for e in logs)
    update = await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    assert len(update.fills) == 1
    # After it filled, the same id still maps to the filled order, not a new one.
    [again] = await broker.submit([order("b1", Side.BUY, 10)])
    assert again.status is OrderStatus.FILLED
    assert (await step(broker, account, xs(2, {"AAA": ohlc(100.0)}))).fills == []


async def test_closed_orders_are_forgotten_beyond_the_history_bound() -> None:
    account = FakeAccount()
    broker = SimulatedBroker(CFG, SYMS, account, closed_history=2)
    await broker.submit([order(f"q{i}", Side.BUY, 0) for i in range(3)])  # 3 rejections
    assert broker.order("q0") is None and broker.order("q2") is not None
    [fresh] = await broker.submit([order("q0", Side.BUY, 1)])
    assert fresh.status is OrderStatus.NEW


async def test_order_expires_after_ttl_bars() -> None:
    broker, account = make(SimulatedBrokerConfig(order_ttl_bars=2))
    await broker.submit([order("l1", Side.BUY, 10, OrderType.LIMIT, limit=50.0)])
    u1 = await step(broker, account, xs(1, {"AAA": ohlc(100.0)}))
    assert u1.orders == [] and broker.open_orders()[0].bars_open == 1
    u2 = await step(broker, account, xs(2, {"AAA": ohlc(100.0)}))
    expired = by_id(u2)["l1"]
    assert expired.status is OrderStatus.CANCELLED and "expired" in expired.reason
    assert broker.open_orders() == []


async def test_bracket_legs_do_not_expire() -> None:
    broker, account = make(SimulatedBrokerConfig(order_ttl_bars=1, max_volume_participation=0))
    _, tp, sl = await submit_bracket(broker)
    for i in range(1, 5):
        await step(broker, account, xs(i, {"AAA": ohlc(100.0)}))
    assert {o.client_order_id for o in broker.open_orders()} == {tp, sl}


# ----------------------------------------------------------------------------- property


finite = st.floats(min_value=1.0, max_value=1000.0, allow_nan=False, allow_infinity=False)


@st.composite
def bars(draw: st.DrawFn) -> tuple[float, float, float, float]:
    a, b, c, d = (draw(finite) for _ in range(4))
    low, high = min(a, b, c, d), max(a, b, c, d)
    return c, high, low, d  # open, high, low, close all within [low, high]


@st.composite
def orders(draw: st.DrawFn, i: int) -> Order:
    kind = draw(
        st.sampled_from(
            [OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP]
        )
    )
    side = draw(st.sampled_from([Side.BUY, Side.SELL]))
    return order(
        f"o{i}",
        side,
        draw(st.integers(min_value=1, max_value=50)),
        kind,
        limit=draw(finite) if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None,
        stop=draw(finite) if kind in (OrderType.STOP, OrderType.STOP_LIMIT) else None,
        trail=draw(st.floats(0.001, 0.5)) if kind is OrderType.TRAILING_STOP else None,
        leg=Leg.EXIT,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(bars(), min_size=1, max_size=4),
    st.data(),
)
def test_non_market_fills_stay_within_the_bar_range(
    series: list[tuple[float, float, float, float]], data: st.DataObject
) -> None:
    cfg = SimulatedBrokerConfig(half_spread_bps=3.0, max_volume_participation=0.0)
    cost = cfg.slippage_pct + cfg.half_spread_bps / 1e4
    broker, account = make(cfg, cash=1e12, positions={"AAA": 1e6})
    by_cid: dict[str, Order] = {}
    for i in range(data.draw(st.integers(1, 6))):
        o = data.draw(orders(i))
        by_cid[o.client_order_id] = o
    acks = asyncio.run(broker.submit(list(by_cid.values())))
    assert all(a.status is OrderStatus.NEW for a in acks)
    for t, (o, h, lo, c) in enumerate(series, start=1):
        update = asyncio.run(broker.on_bar(xs(t, {"AAA": (o, h, lo, c, 1e9)})))
        account.apply(update)
        for f in update.fills:
            assert lo * (1 - cost) - 1e-9 <= f.price <= h * (1 + cost) + 1e-9
            placed = by_cid[f.client_order_id]
            if placed.type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
                assert placed.limit_price is not None
                if f.side is Side.BUY:
                    assert f.price <= placed.limit_price + 1e-9
                else:
                    assert f.price >= placed.limit_price - 1e-9


async def test_expired_entries_are_counted_and_the_first_is_warned_of() -> None:
    """An intraday file mixing bar lengths expired every entry of its hourly symbols in a
    5-minute run (order_ttl_bars counts the run's bars) and the summary said "Orders rejected
    0": the broker counts its expiries (the run's `orders_expired`) and warns of the first."""
    from structlog.testing import capture_logs

    broker, account = make(SimulatedBrokerConfig(order_ttl_bars=2))
    await broker.submit([order(f"l{i}", Side.BUY, 10, OrderType.LIMIT, limit=50.0) for i in (1, 2)])
    with capture_logs() as logs:
        for t in (1, 2, 3):
            await step(broker, account, xs(t, {"AAA": ohlc(100.0)}))
    assert broker.expired == 2
    warned = [e for e in logs if e["event"] == "order.expired"]
    assert len(warned) == 1 and warned[0]["log_level"] == "warning"
    assert "order_ttl_bars" in warned[0]["hint"]
