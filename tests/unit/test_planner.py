from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from tradingd.config import OrdersConfig
from tradingd.core.orders import market_order
from tradingd.core.ports import BarContext, PortfolioView
from tradingd.core.types import CrossSection, Leg, OrderType, Side
from tradingd.engine.history import HistoryBuffer
from tradingd.engine.planner import OrderPlanner

SYMS = ("A", "B", "C")
T = datetime(2021, 3, 1, tzinfo=UTC)


def ctx(close, quantity, equity=10_000.0, tradable=(True, True, True)):
    close = np.asarray(close, float)
    q = np.asarray(quantity, float)
    bar = CrossSection(T, close, close, close, close, np.ones(3), np.ones(3), np.zeros(3))
    return BarContext(
        T,
        5,
        SYMS,
        bar,
        close,
        np.asarray(tradable),
        HistoryBuffer(3, 2),
        {},
        PortfolioView(
            equity - float(q @ np.nan_to_num(close)),
            equity,
            q,
            q * np.nan_to_num(close) / equity,
            equity,
            equity,
        ),
    )


def test_whole_shares_toward_target_and_band():
    p = OrderPlanner(OrdersConfig(rebalance_band=0.01, min_trade_value=100.0), "r", SYMS)
    # A: 0 -> 25% of 10,000 at 33 = 75.75 -> 75 shares; B: at 10% already (band); C: too small
    plan = p.plan(np.array([0.25, 0.105, 0.005]), ctx([33.0, 10.0, 50.0], [0, 100, 0]), [])
    assert [(o.symbol, o.side, o.quantity) for o in plan.orders] == [("A", Side.BUY, 75.0)]
    o = plan.orders[0]
    assert o.client_order_id == f"r|{T:%Y%m%dT%H%M%S}|A|entry"
    assert o.type is OrderType.MARKET


def test_closing_sells_exactly_what_is_held_and_cancels_its_legs():
    p = OrderPlanner(OrdersConfig(), "r", SYMS)
    leg = market_order("r", T, "B", -7, Leg.STOP_LOSS)
    plan = p.plan(np.array([0.0, 0.0, 0.0]), ctx([10.0, 10.0, 10.0], [0, 7, 0]), [leg])
    assert [(o.symbol, o.side, o.quantity) for o in plan.orders] == [("B", Side.SELL, 7.0)]
    assert plan.cancel == [leg.client_order_id]


def test_symbols_with_a_working_order_or_no_bar_are_skipped():
    p = OrderPlanner(OrdersConfig(), "r", SYMS)
    working = market_order("r", T, "A", 10, Leg.ENTRY)
    plan = p.plan(
        np.array([0.3, 0.3, 0.3]),
        ctx([10.0, np.nan, 10.0], [0, 0, 0], tradable=(True, False, True)),
        [working],
    )
    assert [o.symbol for o in plan.orders] == ["C"]


def test_brackets_on_new_positions_only():
    p = OrderPlanner(
        OrdersConfig(brackets=True, take_profit_pct=0.04, stop_loss_pct=0.02), "r", SYMS
    )
    plan = p.plan(np.array([0.2, 0.5, 0.0]), ctx([50.0, 20.0, 10.0], [0, 100, 0]), [])
    legs = {(o.symbol, o.leg): o for o in plan.orders}
    assert set(legs) == {
        ("A", Leg.ENTRY),
        ("A", Leg.TAKE_PROFIT),
        ("A", Leg.STOP_LOSS),
        ("B", Leg.ENTRY),
    }
    assert legs["A", Leg.TAKE_PROFIT].limit_price == 52.0
    assert legs["A", Leg.STOP_LOSS].stop_price == 49.0
    assert legs["A", Leg.TAKE_PROFIT].quantity == legs["A", Leg.ENTRY].quantity == 40.0


def test_fractional_shares_when_enabled():
    p = OrderPlanner(OrdersConfig(fractional=True), "r", SYMS)
    plan = p.plan(np.array([0.25, 0.0, 0.0]), ctx([33.0, 10.0, 10.0], [0, 0, 0]), [])
    assert plan.orders[0].quantity == 2500.0 / 33.0
