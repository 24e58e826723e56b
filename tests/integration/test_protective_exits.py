"""Protective exits by mode (`[orders] stop_mode` / `take_profit_mode`), end to end.

* Replays through the whole engine: an "atr" stop is priced from the ATR the engine computes
  at the decision bar (the planner asks for the feature; no symbol trades before it is
  ready), and every kind of exit fires between bars exactly as the simulated broker defines
  it (a gap through a stop fills at the open; a trailing stop follows the high).
* The Alpaca paper broker against the loopback fake of its API: a trailing stop is never
  sent as a bracket leg; the entry goes alone and, once it has filled, the position is
  protected by a stand-alone trailing stop. Fixed exits stay one bracket order.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
import talib
from conftest import run_engine
from fakes.alpaca_trading_server import AlpacaTradingFake
from plugin_context import AlwaysLong
from structlog.testing import capture_logs

from tradingd.brokers.alpaca import AlpacaBroker, AlpacaBrokerConfig
from tradingd.config import OrdersConfig, PluginSpec
from tradingd.core.ports import BarContext
from tradingd.core.types import CrossSection, Leg, Order, OrderStatus, OrderType, Side
from tradingd.engine.history import HistoryBuffer
from tradingd.engine.planner import OrderPlanner
from tradingd.engine.portfolio import Portfolio
from tradingd.feeds.panel import Panel

# ----------------------------------------------------------------------------- replay


def panel_of(rows: dict[str, list[tuple[float, float, float, float]]]) -> Panel:
    """One (open, high, low, close) per bar for each symbol."""
    symbols = tuple(rows)
    n = len(next(iter(rows.values())))
    arr = np.array([rows[s] for s in symbols], dtype=float).transpose(1, 0, 2)  # bar, sym, k
    return Panel(
        times=pd.bdate_range("2021-01-04", periods=n).to_numpy(dtype="datetime64[ns]"),
        symbols=symbols,
        open=arr[:, :, 0],
        high=arr[:, :, 1],
        low=arr[:, :, 2],
        close=arr[:, :, 3],
        volume=np.full((n, len(symbols)), 1e6),
        split=np.ones((n, len(symbols))),
        dividend=np.zeros((n, len(symbols))),
    )


def replay_config(engine_config, **orders: Any):
    # Targets of 25% and a band of 20%: each position is opened once and then left alone
    # (no rebalancing re-places its exits), so only the exits close it.
    return dataclasses.replace(
        engine_config,
        orders=OrdersConfig(brackets=True, rebalance_band=0.2, min_trade_value=0.0, **orders),
        sizing=PluginSpec("equal_weight", params={"max_positions": 2, "gross_exposure": 0.5}),
        risk=(PluginSpec("max_position", params={"max_position_pct": 0.25}),),
    )


def tag(o: dict[str, Any]) -> str:
    return o["client_order_id"].split("|")[3]


def bar_index(panel: Panel, t: Any) -> int:
    stamp = pd.Timestamp(t).tz_localize(None) if pd.Timestamp(t).tzinfo else pd.Timestamp(t)
    return int(np.flatnonzero(panel.times == stamp.to_datetime64())[0])


async def test_atr_stop_is_priced_from_the_engines_atr_at_the_decision_bar(engine_config):
    # T0: 20 quiet bars (true range 2, so ATR(14) = 2 exactly), then a gap down through the
    # stop, then quiet again. T1: quiet all along (true range 1).
    quiet0 = [(100.0, 101.0, 99.0, 100.0)] * 20
    after = [(94.0, 95.0, 93.0, 94.5)] + [(94.5, 96.0, 93.0, 94.5)] * 9
    panel = panel_of({"T0": quiet0 + after, "T1": [(50.0, 50.5, 49.5, 50.0)] * 30})
    config = replay_config(
        engine_config, stop_mode="atr", atr_multiple=2.0, take_profit_mode="reward_risk"
    )
    with capture_logs() as logs:
        engine, result, rows = await run_engine(
            config, "backtest", panel, plugins={"always_long": AlwaysLong}
        )
    assert result.bars == 30
    assert "atr_14" in engine.features.names
    # No symbol is decided before its ATR exists, so no entry ever lacked its stop.
    assert not [e for e in logs if e["event"] == "planner.entry_not_protected"]

    slip = config.costs.slippage_pct
    orders = {o["client_order_id"]: o for o in rows["orders"]}
    stops = [o for o in orders.values() if o["symbol"] == "T0" and tag(o) == "sl"]
    atr = talib.ATR(panel.high[:, 0], panel.low[:, 0], panel.close[:, 0], timeperiod=14)
    first = min(stops, key=lambda o: o["created_at"])
    i = bar_index(panel, first["created_at"])
    assert i == 14 and atr[i] == 2.0  # the first bar with an ATR(14)
    # 100 - 2 x 2 = 96; the take-profit 2:1 -> 100 + 2 x 4 = 108.
    assert first["stop_price"] == 96.0
    tp = orders[first["client_order_id"].replace("|sl|", "|tp|")]
    assert tp["limit_price"] == 108.0
    # Bar 20 opens at 94, through the 96 stop: filled at the open, with slippage.
    stop_fills = [f for f in rows["fills"] if f["client_order_id"] == first["client_order_id"]]
    assert len(stop_fills) == 1
    assert bar_index(panel, stop_fills[0]["time"]) == 20
    assert stop_fills[0]["price"] == pytest.approx(94.0 * (1 - slip))
    # The re-entry decided at bar 20 is priced from bar 20's ATR, not a stale one.
    again = [o for o in stops if bar_index(panel, o["created_at"]) == 20]
    assert len(again) == 1
    assert atr[20] > 2.0
    assert again[0]["stop_price"] == round(94.5 - 2.0 * atr[20], 2)
    tp2 = orders[again[0]["client_order_id"].replace("|sl|", "|tp|")]
    assert tp2["limit_price"] == round(94.5 + 2.0 * 2.0 * atr[20], 2)


async def test_trailing_stop_follows_the_high_in_a_replay(engine_config):
    t0 = [
        (100.0, 100.0, 100.0, 100.0),  # decide: entry alone
        (100.0, 100.0, 100.0, 100.0),  # entry fills at the open; trailing stop placed
        (100.0, 110.0, 99.0, 108.0),  # stop 95 from the open; then trails the 110 high
        (108.0, 112.0, 107.0, 111.0),  # stop 104.5: not reached; trails 112
        (110.0, 110.0, 106.0, 107.0),  # stop 106.4: hit inside the bar
    ] + [(107.0, 107.0, 107.0, 107.0)] * 3
    panel = panel_of({"T0": t0, "T1": [(50.0, 50.0, 50.0, 50.0)] * len(t0)})
    config = replay_config(
        engine_config, stop_mode="trailing", take_profit_mode="trailing", stop_loss_pct=0.05
    )
    _, _, rows = await run_engine(config, "backtest", panel, plugins={"always_long": AlwaysLong})
    slip = config.costs.slippage_pct
    t0_orders = [o for o in rows["orders"] if o["symbol"] == "T0"]
    # Never a leg: the entries go alone, the trailing stops stand alone.
    assert all(o["parent_id"] is None for o in rows["orders"])
    trailing = [o for o in t0_orders if o["type"] == "trailing_stop"]
    assert trailing and all(tag(o) == "sl.p" and o["trail_pct"] == 0.05 for o in trailing)
    first = min(trailing, key=lambda o: o["created_at"])
    assert bar_index(panel, first["created_at"]) == 1  # placed once the entry has filled
    [fill] = [f for f in rows["fills"] if f["client_order_id"] == first["client_order_id"]]
    assert bar_index(panel, fill["time"]) == 4
    assert fill["price"] == pytest.approx(112.0 * 0.95 * (1 - slip))
    # T1 (flat) is protected all along and never stopped out.
    t1 = [o for o in rows["orders"] if o["symbol"] == "T1" and o["type"] == "trailing_stop"]
    assert [o["status"] for o in t1] == ["new"]


async def test_take_profit_beside_a_trailing_stop_in_a_replay(engine_config):
    t0 = [
        (100.0, 100.0, 100.0, 100.0),
        (100.0, 100.0, 100.0, 100.0),  # filled at 100 x (1 + slip): exits from that price
        (101.0, 112.0, 100.0, 109.0),  # trailing stop far away; the take-profit is reached
    ] + [(109.0, 109.0, 109.0, 109.0)] * 2
    panel = panel_of({"T0": t0, "T1": [(50.0, 50.0, 50.0, 50.0)] * len(t0)})
    config = replay_config(
        engine_config, stop_mode="trailing", stop_loss_pct=0.05, take_profit_pct=0.1
    )
    _, _, rows = await run_engine(config, "backtest", panel, plugins={"always_long": AlwaysLong})
    slip = config.costs.slippage_pct
    tps = [o for o in rows["orders"] if o["symbol"] == "T0" and tag(o) == "tp.p"]
    first = min(tps, key=lambda o: o["created_at"])
    assert first["limit_price"] == round(100.0 * (1 + slip) * 1.1, 2)
    [fill] = [f for f in rows["fills"] if f["client_order_id"] == first["client_order_id"]]
    assert bar_index(panel, fill["time"]) == 2 and fill["price"] == first["limit_price"]
    [stop] = [
        o
        for o in rows["orders"]
        if o["client_order_id"] == first["oco_group"].replace("|tp.p|", "|sl.p|")
    ]
    assert stop["status"] == "cancelled" and stop["type"] == "trailing_stop"


# ----------------------------------------------------------------------------- Alpaca

RUN = "pex"
SYMS = ("AAPL", "SPY", "TSLA")
T0 = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)
_EMPTY = np.array([], dtype=float)


@asynccontextmanager
async def alpaca(fake: AlpacaTradingFake) -> AsyncIterator[AlpacaBroker]:
    cfg = AlpacaBrokerConfig(
        base_url=fake.url,
        stream_url=fake.stream_url,
        poll_interval_s=0.05,
        backoff_initial_s=0.0,
        backoff_max_s=0.0,
        stream_reconnect_min_s=0.02,
        stream_reconnect_max_s=0.1,
        cancel_confirm_timeout_s=1.0,
        request_timeout_s=2.0,
        call_timeout_s=5.0,
    )
    broker = AlpacaBroker(cfg, (fake.key_id, fake.secret_key), SYMS)
    await broker.start()
    assert broker.trading_client is not None
    broker.trading_client._retry_wait = 0
    try:
        await until(lambda: broker.status()["stream"] == "up")
        yield broker
    finally:
        await broker.stop()


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)


class AlpacaDesk:
    """Planner, book and AlpacaBroker wired as Engine.step wires them (fills booked, then a
    decision at the close from the broker's open orders: cancels, then submissions)."""

    def __init__(self, broker: AlpacaBroker, orders: OrdersConfig) -> None:
        self.broker = broker
        self.planner = OrderPlanner(orders, RUN, SYMS)
        self.pf = Portfolio(SYMS, 10_000.0)
        self.t = T0
        self.acks: list[Order] = []

    async def pump(self, pred: Callable[[], bool]) -> None:
        """Book what the broker reports until `pred` holds."""

        async def run() -> None:
            while True:
                update = await self.broker.on_bar(
                    CrossSection(self.t, *([_EMPTY] * 7))  # Alpaca reads no bar
                )
                for f in update.fills:
                    self.pf.apply_fill(f)
                if pred():
                    return
                await asyncio.sleep(0.005)

        await asyncio.wait_for(run(), 5.0)

    async def decide(self, weights, close=100.0, features=None) -> list[Order]:
        self.t += timedelta(days=1)
        closes = np.array([close, 400.0, 200.0])
        self.pf.mark_to_market(closes, np.ones(3, dtype=bool))
        bar = CrossSection(
            self.t, closes, closes, closes, closes, np.ones(3), np.ones(3), np.zeros(3)
        )
        ctx = BarContext(
            self.t,
            0,
            SYMS,
            bar,
            closes,
            np.ones(3, dtype=bool),
            HistoryBuffer(3, 2),
            features or {},
            self.pf.view(),
        )
        plan = self.planner.plan(np.asarray(weights, float), ctx, self.broker.open_orders())
        for cid in plan.cancel:
            await self.broker.cancel(cid, "rebalance")
        acks = await self.broker.submit(plan.orders) if plan.orders else []
        self.acks.extend(acks)
        return acks


def posted_classes(fake: AlpacaTradingFake) -> list[str]:
    return [str(b.get("order_class") or "simple") for b in fake.posted_orders()]


def never_a_trailing_leg(fake: AlpacaTradingFake) -> None:
    for body in fake.posted_orders():
        if body.get("order_class"):
            assert body["type"] != "trailing_stop", body
            assert "trail_percent" not in (body.get("stop_loss") or {}), body
            assert "trail_price" not in (body.get("stop_loss") or {}), body


TRAILING = OrdersConfig(
    brackets=True,
    stop_mode="trailing",
    take_profit_mode="trailing",
    stop_loss_pct=0.02,
    rebalance_band=0.0,
    min_trade_value=0.0,
)


async def test_alpaca_trailing_stop_is_placed_alone_once_the_entry_has_filled(fake):
    fake.set_price("AAPL", 100.0, match=False)
    async with alpaca(fake) as broker:
        desk = AlpacaDesk(broker, TRAILING)
        [entry] = await desk.decide([0.1, 0.0, 0.0])  # 10 shares at 100
        assert (entry.leg, entry.type, entry.status) == (
            Leg.ENTRY,
            OrderType.MARKET,
            OrderStatus.NEW,
        )
        assert posted_classes(fake) == ["simple"]
        # The entry is working: nothing else for AAPL yet.
        assert await desk.decide([0.1, 0.0, 0.0]) == []
        fake.fill(entry.client_order_id, price=100.0)
        await desk.pump(lambda: desk.pf.quantity_of("AAPL") == 10)

        [stop] = await desk.decide([0.1, 0.0, 0.0])
        assert (stop.type, stop.side, stop.quantity, stop.trail_pct, stop.status) == (
            OrderType.TRAILING_STOP,
            Side.SELL,
            10.0,
            0.02,
            OrderStatus.NEW,
        )
        assert stop.parent_id is None and stop.client_order_id.endswith("|AAPL|sl.p|1")
        body = fake.posted_orders()[-1]
        assert body == {
            "symbol": "AAPL",
            "qty": 10.0,
            "side": "sell",
            "type": "trailing_stop",
            "time_in_force": "gtc",
            "client_order_id": stop.client_order_id,
            "trail_percent": 2.0,
        }
        never_a_trailing_leg(fake)
        assert posted_classes(fake) == ["simple", "simple"]
        # Protected: the next decisions place nothing more, and Alpaca holds the shares.
        assert await desk.decide([0.1, 0.0, 0.0]) == []
        [working] = broker.open_orders()
        assert working.client_order_id == stop.client_order_id
        assert working.remaining == desk.pf.quantity_of("AAPL") == 10
        # It trails the high: 110 -> stop at 107.8; 107.5 triggers it.
        fake.set_price("AAPL", 110.0)
        fake.set_price("AAPL", 107.5)
        await desk.pump(lambda: desk.pf.quantity_of("AAPL") == 0)
        assert broker.open_orders() == []


async def test_alpaca_take_profit_beside_a_trailing_stop_is_refused_the_stop_placed(fake):
    fake.set_price("AAPL", 100.0, match=False)
    orders = dataclasses.replace(TRAILING, take_profit_mode="pct")
    async with alpaca(fake) as broker:
        desk = AlpacaDesk(broker, orders)
        [entry] = await desk.decide([0.1, 0.0, 0.0])
        fake.fill(entry.client_order_id, price=100.0)
        await desk.pump(lambda: desk.pf.quantity_of("AAPL") == 10)
        acks = await desk.decide([0.1, 0.0, 0.0])
        by = {a.leg: a for a in acks}
        assert by[Leg.TAKE_PROFIT].status is OrderStatus.REJECTED
        assert "trailing stop" in by[Leg.TAKE_PROFIT].reason
        assert by[Leg.STOP_LOSS].status is OrderStatus.NEW
        assert by[Leg.STOP_LOSS].type is OrderType.TRAILING_STOP
        never_a_trailing_leg(fake)
        assert posted_classes(fake) == ["simple", "simple"]
        assert fake.posted_orders()[-1]["type"] == "trailing_stop"
        # The trailing stop holds the whole position: nothing is re-tried or re-placed.
        assert await desk.decide([0.1, 0.0, 0.0]) == []
        assert [o.type for o in broker.open_orders()] == [OrderType.TRAILING_STOP]


async def test_alpaca_fixed_atr_stop_and_take_profit_stay_one_bracket(fake):
    fake.set_price("AAPL", 100.0, match=False)
    orders = dataclasses.replace(
        TRAILING, stop_mode="atr", atr_multiple=2.0, take_profit_mode="reward_risk"
    )
    feats = {"atr_14": np.array([1.5, 4.0, 3.0])}
    async with alpaca(fake) as broker:
        desk = AlpacaDesk(broker, orders)
        acks = await desk.decide([0.1, 0.0, 0.0], features=feats)
        assert [a.leg for a in acks] == [Leg.ENTRY, Leg.TAKE_PROFIT, Leg.STOP_LOSS]
        [body] = fake.posted_orders()
        # 100 - 2 x 1.5 = 97; 100 + 2 x 3 = 106.
        assert body["order_class"] == "bracket"
        assert body["stop_loss"] == {"stop_price": 97.0}
        assert body["take_profit"] == {"limit_price": 106.0}
        fake.fill(acks[0].client_order_id, price=100.0)
        await desk.pump(lambda: desk.pf.quantity_of("AAPL") == 10)
        await until(lambda: all(o.status is OrderStatus.NEW for o in broker.open_orders()))
        # The legs protect the position: nothing more is placed.
        assert await desk.decide([0.1, 0.0, 0.0], features=feats) == []
        assert len(fake.posted_orders()) == 1


async def test_alpaca_bracket_legs_that_expired_are_replaced_by_an_oco(fake):
    """A GTC leg does not live for ever at Alpaca (it expires; an operator may cancel it in
    the dashboard). The shares then had no exits for the rest of the run, with fixed
    brackets: nothing placed any again. The next decision now protects them with an `oco`
    at the prices the bracket had (from the average entry), and only once."""
    fake.set_price("AAPL", 100.0, match=False)
    orders = dataclasses.replace(
        TRAILING, stop_mode="pct", take_profit_mode="pct", take_profit_pct=0.04
    )
    async with alpaca(fake) as broker:
        desk = AlpacaDesk(broker, orders)
        entry, _tp, _sl = await desk.decide([0.1, 0.0, 0.0])
        fake.fill(entry.client_order_id, price=100.0)
        await desk.pump(lambda: desk.pf.quantity_of("AAPL") == 10)
        await until(lambda: {o.leg for o in broker.open_orders()} >= {Leg.TAKE_PROFIT})
        assert await desk.decide([0.1, 0.0, 0.0]) == []  # covered: nothing placed
        for leg_id in fake.order(entry.client_order_id).leg_ids:  # Alpaca's ids of the legs
            fake.expire(leg_id)
        await desk.pump(lambda: not broker.open_orders())
        acks = await desk.decide([0.1, 0.0, 0.0])
        assert sorted(a.leg for a in acks) == [Leg.STOP_LOSS, Leg.TAKE_PROFIT]
        body = fake.posted_orders()[-1]
        assert body["order_class"] == "oco" and float(body["qty"]) == 10
        assert float(body["take_profit"]["limit_price"]) == 104.0  # the bracket's: 100 x 1.04
        assert float(body["stop_loss"]["stop_price"]) == 98.0  # and 100 x 0.98
        await until(lambda: len(broker.open_orders()) == 2)
        assert await desk.decide([0.1, 0.0, 0.0]) == []  # protected again: once
        assert len(fake.posted_orders()) == 2
