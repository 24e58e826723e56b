"""The Alpaca paper broker, driven through the real alpaca-py clients against a loopback fake
of Alpaca's Trading API and trade-updates stream (tests/fakes/alpaca_trading_server.py).

No test sleeps for a fixed time: each waits for a condition, with a timeout."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import requests
from fakes.alpaca_trading_server import AlpacaTradingFake, need_fixtures
from structlog.testing import capture_logs

from tradingd.brokers.alpaca import WS_LOGGER, AlpacaBroker, AlpacaBrokerConfig, SubmitCutShort
from tradingd.core.errors import ConfigError, RetryableError
from tradingd.core.orders import bracket_orders
from tradingd.core.outages import REPEAT_FIRST, REPEAT_MAX
from tradingd.core.types import (
    CrossSection,
    Fill,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    Side,
    client_order_id,
)
from tradingd.metrics import SOURCE_ERRORS

RUN = "alp"
T0 = datetime(2024, 1, 2, 16, 0, tzinfo=UTC)
SYMS = ("AAPL", "SPY", "TSLA")
_EMPTY = np.array([], dtype=float)
BAR = CrossSection(T0, _EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY)


def cid(symbol: str, leg: str = "entry") -> str:
    return client_order_id(RUN, T0, symbol, leg)


def order(
    symbol: str,
    signed_qty: float,
    kind: OrderType = OrderType.MARKET,
    *,
    tag: str | None = None,
    leg: Leg = Leg.ENTRY,
    limit: float | None = None,
    stop: float | None = None,
    trail: float | None = None,
    oco_group: str | None = None,
) -> Order:
    return Order(
        client_order_id=cid(symbol, tag or str(leg)),
        symbol=symbol,
        side=Side.BUY if signed_qty > 0 else Side.SELL,
        quantity=abs(signed_qty),
        created_at=T0,
        type=kind,
        limit_price=limit,
        stop_price=stop,
        trail_pct=trail,
        leg=leg,
        oco_group=oco_group,
    )


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until(), timeout)


class Updates:
    """Everything a broker reported through on_bar, accumulated."""

    def __init__(self, broker: AlpacaBroker) -> None:
        self.broker = broker
        self.fills: list[Fill] = []
        self.orders: list[Order] = []

    async def bar(self) -> None:
        update = await self.broker.on_bar(BAR)
        self.fills.extend(update.fills)
        self.orders.extend(update.orders)

    async def until(self, pred: Callable[[Updates], bool], timeout: float = 5.0) -> None:
        async def run() -> None:
            while True:
                await self.bar()
                if pred(self):
                    return
                await asyncio.sleep(0.005)

        await asyncio.wait_for(run(), timeout)

    def filled(self, client_id: str) -> float:
        return sum(f.quantity for f in self.fills if f.client_order_id == client_id)

    def last(self, client_id: str) -> Order | None:
        found = [o for o in self.orders if o.client_order_id == client_id]
        return found[-1] if found else None


def config(fake: AlpacaTradingFake, **overrides: Any) -> AlpacaBrokerConfig:
    values: dict[str, Any] = {
        "base_url": fake.url,
        "stream_url": fake.stream_url,
        "poll_interval_s": 0.05,
        "backoff_initial_s": 0.0,
        "backoff_max_s": 0.0,
        "stream_reconnect_min_s": 0.02,
        "stream_reconnect_max_s": 0.1,
        "cancel_confirm_timeout_s": 1.0,
        "request_timeout_s": 2.0,
        "call_timeout_s": 5.0,
    }
    values.update(overrides)
    return AlpacaBrokerConfig(**values)


@asynccontextmanager
async def running(
    fake: AlpacaTradingFake, symbols: tuple[str, ...] = SYMS, **overrides: Any
) -> AsyncIterator[AlpacaBroker]:
    broker = AlpacaBroker(config(fake, **overrides), (fake.key_id, fake.secret_key), symbols)
    await broker.start()
    # alpaca-py's own retries (3 s sleeps) are off; were they on, they would not sleep here.
    client = broker.trading_client
    assert client is not None
    client._retry_wait = 0
    try:
        if broker.status()["stream"] != "disabled":
            await eventually(lambda: broker.status()["stream"] == "up")
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def broker(fake: AlpacaTradingFake) -> AsyncIterator[AlpacaBroker]:
    async with running(fake) as b:
        yield b


def body_of(fake: AlpacaTradingFake, client_id: str) -> dict[str, Any]:
    bodies = [b for b in fake.posted_orders() if b.get("client_order_id") == client_id]
    assert bodies, f"no POST for {client_id}"
    return bodies[-1]


# ----------------------------------------------------------------------------- order types


async def test_an_entry_beside_an_opposite_exit_is_refused_as_alpaca_refuses_it(fake, broker):
    """Alpaca refuses an order while one of the account on the other side of the symbol
    could trade against it (403 "potential wash trade detected. use complex orders"): the
    fake does too, so a live test of the engine sees what the planner must never send."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("AAPL", 100, 90.0)
    (stop,) = await broker.submit(
        [order("AAPL", -100, OrderType.STOP, tag="stp", leg=Leg.EXIT, stop=95.0)]
    )
    assert stop.status is OrderStatus.NEW
    (buy,) = await broker.submit([order("AAPL", 10, tag="mkt")])
    assert buy.status is OrderStatus.REJECTED and "wash trade" in (buy.reason or "")


async def test_each_order_type_round_trips_with_alpacas_request_body(fake, broker):
    # Every type at once, both sides of one symbol: Alpaca would refuse the buys beside the
    # sell stops ("potential wash trade", tested below); the bodies are what is tested here.
    fake.wash_trade_protection = False
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("AAPL", 100, 90.0)
    orders = [
        order("AAPL", 5, tag="mkt"),
        order("AAPL", 3, OrderType.LIMIT, tag="lmt", limit=99.5),
        order("AAPL", -2, OrderType.STOP, tag="stp", leg=Leg.EXIT, stop=95.0),
        order("AAPL", -2, OrderType.STOP_LIMIT, tag="stl", leg=Leg.EXIT, stop=94.0, limit=93.5),
        order("AAPL", -2, OrderType.TRAILING_STOP, tag="trl", leg=Leg.EXIT, trail=0.02),
    ]
    acks = await broker.submit(orders)

    assert [a.status for a in acks] == [OrderStatus.NEW] * 5
    assert [a.client_order_id for a in acks] == [o.client_order_id for o in orders]
    for ack, sent in zip(acks, orders, strict=True):
        assert (ack.type, ack.limit_price, ack.stop_price, ack.trail_pct) == (
            sent.type,
            sent.limit_price,
            sent.stop_price,
            sent.trail_pct,
        )
    common = {"symbol": "AAPL"}
    assert body_of(fake, cid("AAPL", "mkt")) == {
        **common,
        "qty": 5.0,
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": cid("AAPL", "mkt"),
    }
    assert body_of(fake, cid("AAPL", "lmt")) == {
        **common,
        "qty": 3.0,
        "side": "buy",
        "type": "limit",
        "time_in_force": "day",
        "client_order_id": cid("AAPL", "lmt"),
        "limit_price": 99.5,
    }
    # Protective exits outlive the session: good till cancelled.
    assert body_of(fake, cid("AAPL", "stp")) == {
        **common,
        "qty": 2.0,
        "side": "sell",
        "type": "stop",
        "time_in_force": "gtc",
        "client_order_id": cid("AAPL", "stp"),
        "stop_price": 95.0,
    }
    assert body_of(fake, cid("AAPL", "stl")) == {
        **common,
        "qty": 2.0,
        "side": "sell",
        "type": "stop_limit",
        "time_in_force": "gtc",
        "client_order_id": cid("AAPL", "stl"),
        "stop_price": 94.0,
        "limit_price": 93.5,
    }
    assert body_of(fake, cid("AAPL", "trl")) == {
        **common,
        "qty": 2.0,
        "side": "sell",
        "type": "trailing_stop",
        "time_in_force": "gtc",
        "client_order_id": cid("AAPL", "trl"),
        "trail_percent": 2.0,
    }
    kinds = {o.client_order_id: o.type for o in fake.orders.values()}
    assert kinds == {
        cid("AAPL", "mkt"): "market",
        cid("AAPL", "lmt"): "limit",
        cid("AAPL", "stp"): "stop",
        cid("AAPL", "stl"): "stop_limit",
        cid("AAPL", "trl"): "trailing_stop",
    }
    assert {o.client_order_id for o in broker.open_orders()} == set(kinds)

    # The market order executes; the trailing stop follows the high and triggers 2% below.
    updates = Updates(broker)
    fake.match("AAPL")
    fake.set_price("AAPL", 110.0)
    fake.set_price("AAPL", 107.5)
    await updates.until(lambda u: u.filled(cid("AAPL", "trl")) == 2)
    assert updates.filled(cid("AAPL", "mkt")) == 5
    trailing = [f for f in updates.fills if f.client_order_id == cid("AAPL", "trl")]
    assert trailing[0].price == 107.5 and trailing[0].side is Side.SELL


async def test_bracket_legs_are_mapped_back_and_exits_cancel_each_other(fake, broker):
    fake.set_price("AAPL", 100.0, match=False)
    entry, tp, sl = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    acks = await broker.submit([entry, tp, sl])

    assert [a.status for a in acks] == [OrderStatus.NEW, OrderStatus.HELD, OrderStatus.HELD]
    assert [a.client_order_id for a in acks] == [
        entry.client_order_id,
        tp.client_order_id,
        sl.client_order_id,
    ]
    assert acks[1].parent_id == acks[2].parent_id == entry.client_order_id
    assert acks[1].oco_group == acks[2].oco_group == entry.client_order_id
    assert len(fake.posted_orders()) == 1
    assert body_of(fake, entry.client_order_id) == {
        "symbol": "AAPL",
        "qty": 10.0,
        "side": "buy",
        "type": "market",
        "time_in_force": "gtc",
        "order_class": "bracket",
        "client_order_id": entry.client_order_id,
        "take_profit": {"limit_price": 110.0},
        "stop_loss": {"stop_price": 95.0},
    }
    parent = fake.order(entry.client_order_id)
    legs = [fake.orders[i] for i in parent.leg_ids]
    assert sorted(leg.type for leg in legs) == ["limit", "stop"]
    # Alpaca named the legs itself; the broker knows them by the engine's ids.
    assert all(leg.client_order_id not in (tp.client_order_id, sl.client_order_id) for leg in legs)
    assert {o.client_order_id: o.status for o in broker.open_orders()} == {
        entry.client_order_id: OrderStatus.NEW,
        tp.client_order_id: OrderStatus.HELD,
        sl.client_order_id: OrderStatus.HELD,
    }

    updates = Updates(broker)
    fake.fill(entry.client_order_id, price=100.25)
    await updates.until(lambda u: u.last(sl.client_order_id) is not None)
    assert updates.last(entry.client_order_id).status is OrderStatus.FILLED
    # Alpaca keeps the stop-loss "held" after the entry filled; it works all the same.
    assert {leg.type: leg.status for leg in legs} == {"limit": "new", "stop": "held"}
    assert updates.last(tp.client_order_id).status is OrderStatus.NEW
    assert updates.last(sl.client_order_id).status is OrderStatus.NEW

    # The stop triggers: the stop-loss fills, Alpaca "replaces" the take-profit.
    fake.set_price("AAPL", 94.0)
    await updates.until(
        lambda u: (o := u.last(tp.client_order_id)) is not None and not o.status.is_open
    )
    assert updates.filled(sl.client_order_id) == 10
    assert updates.last(sl.client_order_id).status is OrderStatus.FILLED
    closed = updates.last(tp.client_order_id)
    assert closed.status is OrderStatus.CANCELLED
    assert closed.reason == f"OCO: sibling order {sl.client_order_id} filled"
    assert [f.quantity for f in updates.fills] == [10, 10]
    assert broker.open_orders() == []


async def test_oco_exit_pair_is_one_alpaca_order_and_a_silent_sibling_cancel_is_found(fake):
    fake.quiet_oco_cancel = True  # alpaca-py issue #198: no event for the cancelled stop-loss
    fake.set_position("AAPL", 10, 100.0)
    fake.set_price("AAPL", 100.0, match=False)
    group = cid("AAPL", "tp.r")
    tp = order(
        "AAPL", -10, OrderType.LIMIT, tag="tp.r", leg=Leg.TAKE_PROFIT, limit=110.0, oco_group=group
    )
    sl = order(
        "AAPL", -10, OrderType.STOP, tag="sl.r", leg=Leg.STOP_LOSS, stop=95.0, oco_group=group
    )
    async with running(fake) as broker:
        acks = await broker.submit([sl, tp])
        assert [a.status for a in acks] == [OrderStatus.NEW, OrderStatus.NEW]
        assert fake.posted_orders() == [
            {
                "symbol": "AAPL",
                "qty": 10.0,
                "side": "sell",
                "type": "limit",
                "time_in_force": "gtc",
                "order_class": "oco",
                "client_order_id": tp.client_order_id,
                "take_profit": {"limit_price": 110.0},
                "stop_loss": {"stop_price": 95.0},
            }
        ]
        updates = Updates(broker)
        fake.set_price("AAPL", 111.0)
        await updates.until(
            lambda u: (o := u.last(sl.client_order_id)) is not None and not o.status.is_open
        )
        assert updates.filled(tp.client_order_id) == 10
        assert updates.last(sl.client_order_id).status is OrderStatus.CANCELLED
        assert (
            updates.last(sl.client_order_id).reason
            == f"OCO: sibling order {tp.client_order_id} filled"
        )
        assert broker.open_orders() == []


# ----------------------------------------------------------------------------- fills


async def test_fills_arrive_on_the_stream_exactly_once_partial_fills_included(fake, broker):
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    [ack] = await broker.submit([buy])
    assert ack.status is OrderStatus.NEW
    updates = Updates(broker)

    fake.fill(buy.client_order_id, price=99.9, qty=4)
    fake.resend(1)  # the same event delivered twice
    fake.fill(buy.client_order_id, price=99.95, qty=3)
    await updates.until(lambda u: u.filled(buy.client_order_id) >= 7)
    await broker.poll()  # a poll that overlaps what the stream said adds nothing
    await updates.bar()
    fake.fill(buy.client_order_id, price=100.0)
    await updates.until(lambda u: u.filled(buy.client_order_id) >= 10)
    await broker.poll()
    await updates.bar()

    assert [(f.quantity, f.price) for f in updates.fills] == [(4, 99.9), (3, 99.95), (3, 100.0)]
    assert len({f.fill_id for f in updates.fills}) == 3
    assert [f.fill_id for f in updates.fills] == [
        f"{buy.client_order_id}#4",
        f"{buy.client_order_id}#7",
        f"{buy.client_order_id}#10",
    ]
    assert all(f.commission == 0 and math.isnan(f.reference_price) for f in updates.fills)
    # One state per order and bar: the newest.
    statuses = [o.status for o in updates.orders]
    assert statuses[-1] is OrderStatus.FILLED
    assert set(statuses[:-1]) <= {OrderStatus.PARTIALLY_FILLED}
    final = broker.order(buy.client_order_id)
    assert final.filled_quantity == 10
    assert final.avg_fill_price == pytest.approx(
        float(fake.order(buy.client_order_id).filled_avg_price)
    )


async def test_fills_arrive_by_polling_while_the_stream_is_down_and_never_twice(fake, broker):
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    await broker.submit([buy])
    updates = Updates(broker)

    await fake.drop_stream()
    await eventually(lambda: broker.status()["stream"] == "down")
    assert broker.status()["mode"] == "polling"
    fake.fill(buy.client_order_id, price=99.9, qty=4)
    assert fake.listening == 0
    # The background poller finds it without a bar.
    await eventually(lambda: broker.order(buy.client_order_id).filled_quantity == 4)
    fake.fill(buy.client_order_id, price=100.1, qty=6)
    await updates.until(lambda u: u.filled(buy.client_order_id) >= 10)
    assert [f.quantity for f in updates.fills] == [4, 6]
    assert updates.fills[0].price == pytest.approx(99.9)
    assert updates.fills[1].price == pytest.approx(100.1)  # from the cumulative averages

    # The stream comes back; a catch-up poll and the stream add nothing twice.
    fake.allow_stream()
    await eventually(lambda: broker.status()["stream"] == "up")
    second = order("SPY", 2, OrderType.LIMIT, limit=500.0)
    await broker.submit([second])
    fake.fill(second.client_order_id, price=499.0)
    await updates.until(lambda u: u.filled(second.client_order_id) >= 2)
    await broker.poll()
    await updates.bar()
    assert [f.quantity for f in updates.fills] == [4, 6, 2]
    assert len({f.fill_id for f in updates.fills}) == 3


async def test_a_fill_event_lost_on_a_live_stream_is_made_up_by_the_open_order_check(fake):
    """With the stream up the broker never polled: a fill event lost on the connection (a
    GTC stop that executed) left the order working and the shares in the book for good."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("AAPL", 10, 90.0)
    async with running(fake, open_orders_check_s=0.2) as broker:
        stop = order("AAPL", -10, OrderType.STOP, tag="sl", leg=Leg.STOP_LOSS, stop=95.0)
        await broker.submit([stop])
        fake.lose_fill_events(1)
        fake.set_price("AAPL", 94.0)  # the stop executes at Alpaca; its event is lost
        assert fake.order(stop.client_order_id).status == "filled"
        assert broker.status()["stream"] == "up"
        updates = Updates(broker)
        await updates.until(lambda u: u.filled(stop.client_order_id) >= 10)
        assert [(f.quantity, f.price) for f in updates.fills] == [(10.0, 94.0)]
        assert broker.open_orders() == []
        # The check lists the open orders only (then reads a missing one by id): a listing
        # of every order since the oldest open one read the account's whole history, every
        # check, when a GTC stop was weeks old.
        listed = {r.query.get("status") for r in fake.requests if r.path == "/v2/orders"}
        assert "all" not in listed


async def test_an_update_that_beats_the_order_answer_is_kept_until_the_order_is_known(fake, broker):
    buy = order("AAPL", 5, OrderType.LIMIT, limit=100.0)
    fake.delay_next(0.3)  # processed at once, answered late
    task = asyncio.create_task(broker.submit([buy]))
    await eventually(lambda: bool(fake.orders_with_client_id(buy.client_order_id)))
    fake.fill(buy.client_order_id, price=99.5)
    [ack] = await task
    # The fill that arrived before the answer is applied on top of it.
    assert ack.status is OrderStatus.FILLED
    assert broker.status()["unknown_updates"] >= 1
    updates = Updates(broker)
    await updates.until(lambda u: u.filled(buy.client_order_id) >= 5)
    await broker.poll()
    await updates.bar()
    assert [(f.quantity, f.price) for f in updates.fills] == [(5, 99.5)]


async def test_an_update_beating_its_orders_answer_asks_for_no_poll(fake, broker):
    """An update for an order whose POST is on its way is the usual race, applied when the
    answer comes. Parking it asked for a poll at once (to find orders placed by hand), and
    that poll listed every order since the oldest open one (status=all): the account's
    history at a submit's race. Asked for at the batch's end only if still unknown."""
    buy = order("AAPL", 5, OrderType.LIMIT, limit=100.0)
    fake.delay_next(0.3)  # processed at once, answered late
    task = asyncio.create_task(broker.submit([buy]))
    await eventually(lambda: bool(fake.orders_with_client_id(buy.client_order_id)))
    fake.fill(buy.client_order_id, price=99.5)
    await eventually(lambda: broker.status()["unknown_updates"] >= 1)
    assert not broker._poll_requested  # parked while the POST is on its way
    [ack] = await task
    assert ack.status is OrderStatus.FILLED
    assert not broker._poll_requested and not broker._orphans  # known: nothing to ask
    listed = {r.query.get("status") for r in fake.requests if r.path == "/v2/orders"}
    assert "all" not in listed


async def test_polling_only_when_the_stream_is_disabled(fake):
    async with running(fake, stream_enabled=False) as broker:
        assert broker.status()["stream"] == "disabled"
        assert broker.status()["mode"] == "polling"
        assert fake.listening == 0
        buy = order("TSLA", 3)
        await broker.submit([buy])
        fake.fill(buy.client_order_id, price=400.0)
        updates = Updates(broker)
        await updates.until(lambda u: u.filled(buy.client_order_id) >= 3)
        assert updates.last(buy.client_order_id).status is OrderStatus.FILLED


# ----------------------------------------------------------------------------- rejections


REJECTIONS = [
    # (case, fake set-up, order, words of the broker's reason)
    (
        "insufficient_buying_power",
        "cash",
        order("AAPL", 50),
        "insufficient buying power (HTTP 403, code 40310000)",
    ),
    (
        "insufficient_qty",
        "position",
        order("AAPL", -10, tag="sell"),
        "insufficient qty available for order (requested: 10, available: 5) (HTTP 403",
    ),
    ("not_allowed_to_short", None, order("SPY", -5), "account is not allowed to short (HTTP 403"),
    (
        "wash_trade",
        "wash_trade",
        order("AAPL", 1),
        "potential wash trade detected. use complex orders",
    ),
    ("pdt", "pdt", order("AAPL", 1), "pattern day trading protection (HTTP 403, code 40310100)"),
    ("market_closed", "market_closed", order("AAPL", 1), "market is closed (HTTP 422"),
    ("non_tradable", "not_tradable", order("AAPL", 1), 'asset "AAPL" is not tradable (HTTP 422'),
    (
        "non_fractionable",
        "not_fractionable",
        order("AAPL", 1.5),
        'asset "AAPL" is not fractionable',
    ),
    (
        "sub_penny",
        None,
        order("AAPL", 1, OrderType.LIMIT, limit=100.123),
        "invalid limit_price 100.123. sub-penny increment",
    ),
    (
        "qty_must_be_integer",
        "qty_must_be_integer",
        order("AAPL", 1),
        "qty must be integer (HTTP 422",
    ),
    # 401 and 403 "forbidden." refuse the keys, not the order: see
    # test_keys_refused_mid_run_send_no_order_and_are_said_once_an_outage.
    ("rate_limited_429", "throttle", order("AAPL", 1), "rate limit exceeded (HTTP 429"),
]


@pytest.mark.parametrize(
    ("case", "setup", "incoming", "words"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
async def test_every_alpaca_rejection_becomes_a_rejected_order_with_the_reason(
    fake, broker, case, setup, incoming, words
):
    fake.set_price("AAPL", 100.0, match=False)
    if setup == "cash":
        fake.cash = 1000.0
    elif setup == "position":
        fake.set_position("AAPL", 5, 90.0)
    elif setup == "not_tradable":
        fake.set_asset("AAPL", tradable=False)
    elif setup == "not_fractionable":
        fake.set_asset("AAPL", fractionable=False)
    elif setup == "throttle":
        fake.throttle(12)  # 4 tries per attempt for a 429 x 3 attempts
    elif setup is not None:
        fake.fail_next_order(setup)
    posts = len(fake.posted_orders())

    [ack] = await broker.submit([incoming])

    assert ack.status is OrderStatus.REJECTED
    assert ack.client_order_id == incoming.client_order_id
    assert words in ack.reason
    assert ack.reason.startswith("alpaca: ")
    assert fake.orders_with_client_id(incoming.client_order_id) == []
    assert broker.order(incoming.client_order_id).status is OrderStatus.REJECTED
    assert broker.open_orders() == []
    # Refusals a later attempt may not meet are retryable (the engine's next attempt). A
    # sell of more shares than the account holds is not (test_a_sell_of_shares_not_held...).
    transient = {"insufficient_buying_power", "rate_limited_429"}
    assert broker.retryable_rejection(ack) is (case in transient)
    # The same id again: the same answer, without asking Alpaca again.
    sent = len(fake.posted_orders())
    [again] = await broker.submit([incoming])
    assert (again.status, again.reason) == (ack.status, ack.reason)
    assert len(fake.posted_orders()) == sent > posts


async def test_a_sell_of_shares_not_held_is_not_retried_and_asks_for_a_reconciliation(fake, broker):
    """Alpaca's "insufficient qty" with `existing_qty` below the sell (the recorded body):
    the book counts shares the account does not have. It was retried as transient, twice a
    bar, every bar (a 1:10 split the book missed: sells of 1771 against 18 held), and nothing
    compared the book with the account before the next reconciliation round."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("AAPL", 18, 90.0)
    broker.reconcile_wanted.clear()
    sell = order("AAPL", -1771, tag="sell")

    with capture_logs() as logs:
        [ack] = await broker.submit([sell])

    assert ack.status is OrderStatus.REJECTED
    assert "(requested: 1771, available: 18)" in ack.reason
    assert not broker.retryable_rejection(ack)
    assert broker.reconcile_wanted.is_set()
    [said] = [e for e in logs if e["event"] == "alpaca.order.shares_not_held"]
    assert said["log_level"] == "error"
    assert (said["symbol"], said["requested"], said["held_at_alpaca"]) == ("AAPL", 1771, 18.0)
    assert broker.status()["shares_not_held"] == 1


async def test_shares_held_by_open_orders_are_a_transient_refusal(fake, broker):
    """Alpaca's "insufficient qty" for shares the account holds but promises to an open
    sell (`held_for_orders`, as its recorded answer): freed once that order fills or is
    cancelled, retried as before; the book agrees with the account, no reconciliation."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("AAPL", 10, 90.0)
    resting = order("AAPL", -10, OrderType.LIMIT, tag="tp", limit=150.0)
    [placed] = await broker.submit([resting])
    assert placed.status is not OrderStatus.REJECTED
    broker.reconcile_wanted.clear()
    sell = order("AAPL", -10, tag="sell")

    with capture_logs() as logs:
        [ack] = await broker.submit([sell])

    assert ack.status is OrderStatus.REJECTED
    assert "(requested: 10, available: 0)" in ack.reason
    assert broker.retryable_rejection(ack)
    assert not broker.reconcile_wanted.is_set()
    assert not [e for e in logs if e["event"] == "alpaca.order.shares_not_held"]


async def test_an_untradable_asset_is_held_said_once_and_released_when_it_trades_again(
    fake, broker
):
    """Alpaca's 422 "not tradable": the symbol is held (`untradable`, in `status()` for
    /ready and the alert), said once; its asset is looked at again only after a back-off
    (no request per bar), the wait doubling while it stays untradable, and the hold ends
    once Alpaca's asset is tradable. Before, nothing was held: a refused order every bar."""
    now = [0.0]
    broker._asset_clock = lambda: now[0]
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_asset("AAPL", tradable=False)

    with capture_logs() as logs:
        [first] = await broker.submit([order("AAPL", 1, tag="a")])
        [second] = await broker.submit([order("AAPL", 2, tag="b")])
    assert first.status is second.status is OrderStatus.REJECTED
    assert list(broker.untradable()) == ["AAPL"]
    assert 'asset "AAPL" is not tradable' in broker.untradable()["AAPL"]
    assert broker.status()["untradable"] == broker.untradable()
    said = [e for e in logs if e["event"] == "alpaca.asset_untradable"]
    assert len(said) == 1 and said[0]["log_level"] == "warning"
    assert not broker.retryable_rejection(first)

    at_start = sum(1 for r in fake.requests if r.path == "/v2/assets/AAPL")

    def asset_reads() -> int:  # since the start (which read it: tradable then)
        return sum(1 for r in fake.requests if r.path == "/v2/assets/AAPL") - at_start

    await broker.on_bar(BAR)  # its wait not over: Alpaca is not asked
    assert asset_reads() == 0
    now[0] += 60.0
    await broker.on_bar(BAR)  # still not tradable: held, the wait doubled
    assert asset_reads() == 1 and "AAPL" in broker.untradable()
    now[0] += 60.0
    await broker.on_bar(BAR)
    assert asset_reads() == 1
    fake.set_asset("AAPL", tradable=True)
    now[0] += 60.0
    with capture_logs() as logs:
        await broker.on_bar(BAR)
    assert asset_reads() == 2
    assert broker.untradable() == {}
    assert [e["symbol"] for e in logs if e["event"] == "alpaca.asset_tradable_again"] == ["AAPL"]


async def test_the_universes_untradable_assets_are_held_at_start_one_listing_for_many(fake):
    """A restarted broker knew no hold: each symbol Alpaca does not trade got one more
    refused order. Its assets are read at start: up to 20 symbols one by one, more in one
    listing (GET /v2/assets; not 500 calls at Alpaca's 200 a minute). A symbol Alpaca does
    not answer for (not listed, 404) is not held."""
    many = tuple(f"S{i:02d}" for i in range(30))
    fake.set_asset("S03", tradable=False)
    fake.set_asset("S17", tradable=False)
    fake.set_asset("S20", tradable=True)
    with capture_logs() as logs:
        async with running(fake, many, stream_enabled=False) as broker:
            assert set(broker.untradable()) == {"S03", "S17"}
            assert 'asset "S03" is not tradable at Alpaca' in broker.untradable()["S03"]
            assert broker.status()["assets_read"] is True
    reads = [r for r in fake.requests if r.path.startswith("/v2/assets")]
    assert [r.path for r in reads] == ["/v2/assets"]
    said = [e["symbol"] for e in logs if e["event"] == "alpaca.asset_untradable"]
    assert sorted(said) == ["S03", "S17"]

    fake.requests.clear()
    async with running(fake, ("S03", "S20", "S29"), stream_enabled=False) as few:
        assert set(few.untradable()) == {"S03"}
    reads = sorted(r.path for r in fake.requests if r.path.startswith("/v2/assets"))
    assert reads == ["/v2/assets/S03", "/v2/assets/S20", "/v2/assets/S29"]


async def test_a_ticker_listed_twice_is_held_only_when_no_listing_of_it_trades(fake):
    """Alpaca lists a reused ticker twice: the delisted company's asset (inactive) and the
    new one's. Whichever came last was taken: a tradable symbol was held for good."""
    many = tuple(f"S{i:02d}" for i in range(30))
    fake.set_asset("S05", tradable=True)
    fake.set_asset("S06", tradable=False)
    old = {**fake._asset("S05"), "id": "old-s05", "tradable": False, "status": "inactive"}
    fake.listed_extra.append(old)
    async with running(fake, many, stream_enabled=False) as broker:
        assert set(broker.untradable()) == {"S06"}


async def test_a_failed_asset_read_at_start_is_tried_again_at_a_bar_after_a_wait(fake):
    """Alpaca failing the start's asset read does not stop the start: said, the assets
    read again at the first bar after the wait, and `assets_read` False until then (the
    alert rules keep a restored `untradable_asset` alert firing meanwhile)."""
    now = [0.0]
    fake.set_asset("AAPL", tradable=False)
    fake.fail_assets(len(SYMS))
    broker = AlpacaBroker(
        config(fake, max_attempts=1, stream_enabled=False),
        (fake.key_id, fake.secret_key),
        SYMS,
    )
    broker._asset_clock = lambda: now[0]
    with capture_logs() as logs:
        await broker.start()
    try:
        [said] = [e for e in logs if e["event"] == "alpaca.assets_unread"]
        assert said["log_level"] == "warning" and "assets unavailable" in said["error"]
        assert broker.untradable() == {} and broker.status()["assets_read"] is False
        await broker.on_bar(BAR)  # its wait not over
        assert broker.untradable() == {}
        now[0] += 60.0
        await broker.on_bar(BAR)
        assert list(broker.untradable()) == ["AAPL"]
        assert broker.status()["assets_read"] is True
    finally:
        await broker.stop()


async def test_rejections_that_alpaca_cannot_express_or_decides_later(fake, broker):
    # A leg whose entry is not in the batch is refused before any request.
    _, tp, _ = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    [ack] = await broker.submit([tp])
    assert ack.status is OrderStatus.REJECTED
    assert "Alpaca attaches take-profit and stop-loss legs only to a new entry" in ack.reason
    # A bracket whose stop-loss Alpaca cannot take (trailing) is refused whole.
    entry = order("SPY", 2, tag="e2")
    trailing = order("SPY", -2, OrderType.TRAILING_STOP, tag="t2", leg=Leg.STOP_LOSS, trail=0.05)
    trailing.parent_id = entry.client_order_id
    acks = await broker.submit([entry, trailing])
    assert [a.status for a in acks] == [OrderStatus.REJECTED] * 2
    assert "trailing_stop" in acks[0].reason
    assert fake.posted_orders() == []
    # Invalid for any venue.
    [bad] = await broker.submit([order("TSLA", 1, OrderType.LIMIT, tag="nolimit")])
    assert bad.status is OrderStatus.REJECTED and "limit_price" in bad.reason
    # Accepted first, rejected by Alpaca afterwards (an event, with no reason given).
    later = order("TSLA", 1, tag="later")
    [first] = await broker.submit([later])
    assert first.status is OrderStatus.NEW
    fake.reject(later.client_order_id)
    updates = Updates(broker)
    await updates.until(lambda u: u.last(later.client_order_id) is not None)
    assert updates.last(later.client_order_id).status is OrderStatus.REJECTED
    assert updates.last(later.client_order_id).reason == "rejected by Alpaca after acceptance"


# ----------------------------------------------------------------------------- idempotency


async def test_a_resubmitted_client_order_id_returns_the_existing_order_never_a_second(
    fake, broker
):
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    [first] = await broker.submit([buy])
    [again] = await broker.submit([buy])
    assert again.status is first.status is OrderStatus.NEW
    assert len(fake.posted_orders()) == 1
    fake.fill(buy.client_order_id, price=99.0, qty=4)

    # A restarted daemon resends it: Alpaca answers 422, the broker returns Alpaca's order.
    async with running(fake, adopt_open_orders=False) as restarted:
        [resent] = await restarted.submit([buy])
        assert resent.status is OrderStatus.PARTIALLY_FILLED
        assert resent.filled_quantity == 4
        assert len(fake.orders_with_client_id(buy.client_order_id)) == 1
        assert len(fake.posted_orders()) == 2
        # What it filled before the restart is not reported again as a new fill.
        updates = Updates(restarted)
        fake.fill(buy.client_order_id, price=99.5)
        await updates.until(lambda u: u.filled(buy.client_order_id) >= 6)
        assert [(f.quantity, f.fill_id) for f in updates.fills] == [
            (6, f"{buy.client_order_id}#10")
        ]

    # A resent bracket: the legs come back under the engine's ids.
    legs = bracket_orders(RUN, T0, "SPY", 2, 700.0, 600.0)
    await broker.submit(legs)
    async with running(fake, adopt_open_orders=False) as restarted:
        acks = await restarted.submit(legs)
        assert [a.client_order_id for a in acks] == [o.client_order_id for o in legs]
        assert [a.status for a in acks] == [OrderStatus.NEW, OrderStatus.HELD, OrderStatus.HELD]
        assert len(fake.orders_with_client_id(legs[0].client_order_id)) == 1
        assert {o.client_order_id for o in restarted.open_orders()} >= {
            o.client_order_id for o in legs
        }


async def test_an_answer_trickling_its_body_is_given_up_at_the_request_timeout(fake):
    """requests' timeout is per read: an answer dripping a byte every 20 ms never timed out,
    and after `call_timeout_s` gave the call up, its thread (the event loop's default
    executor's) went on reading it for as long as it dripped. The whole request now has
    `request_timeout_s`: the answer is given up and its connection closed, said."""
    from fakes.trickle_host import trickle_host

    with trickle_host(trickled=1, body="{}") as host:
        broker = AlpacaBroker(
            config(
                fake, base_url=host.url, request_timeout_s=0.3, call_timeout_s=1.0, max_attempts=1
            ),
            (fake.key_id, fake.secret_key),
            SYMS,
        )
        with capture_logs() as logs, pytest.raises(Exception, match="timed out"):
            await broker.start()  # get_account, trickled
        await broker.stop()
        # Closed by the client, not at the host's end of the test.
        assert await asyncio.to_thread(host.wait_dropped, 1, 10.0)
    abandoned = [e for e in logs if e["event"] == "alpaca.request_abandoned"]
    assert [(e["method"], e["path"]) for e in abandoned] == [("GET", "/v2/account")]


async def test_a_post_whose_answer_was_lost_is_retried_without_a_second_order(fake):
    async with running(fake, request_timeout_s=0.3) as broker:
        buy = order("AAPL", 3, OrderType.LIMIT, limit=100.0)
        fake.delay_next(1.0)  # the order is placed, the answer comes too late
        [ack] = await broker.submit([buy])
        assert ack.status is OrderStatus.NEW
        assert len(fake.posted_orders()) == 2  # the retry got 422 duplicate
        assert len(fake.orders_with_client_id(buy.client_order_id)) == 1
        fake.fill(buy.client_order_id, price=99.0)
        updates = Updates(broker)
        await updates.until(lambda u: u.filled(buy.client_order_id) >= 3)
        assert len(updates.fills) == 1


async def test_a_post_answered_504_after_alpaca_placed_it_reports_its_fill(fake):
    """alpaca-py retried a 504 itself; its retry met 422 "client_order_id must be unique",
    the only answer the broker saw, so it never knew its own POST might have placed the
    order: it took the order as it stood, its fill as the baseline. The fill was never
    booked (Alpaca held 10 shares, the book none)."""
    fake.fill_on_submit = lambda o: 100.0
    async with running(fake) as broker:
        buy = order("AAPL", 10)
        fake.gateway_timeout_after(1)  # placed and filled, then the proxy answers 504
        [ack] = await broker.submit([buy])
        assert ack.client_order_id == buy.client_order_id
        assert len(fake.orders_with_client_id(buy.client_order_id)) == 1
        updates = Updates(broker)
        await updates.until(lambda u: u.filled(buy.client_order_id) >= 10)
        assert [(f.quantity, f.price) for f in updates.fills] == [(10.0, 100.0)]


async def test_an_order_whose_outcome_stayed_unknown_is_followed_not_sent_twice(fake):
    """The POST was placed at Alpaca but its answer was lost, and the retries met 503:
    submit raised "outcome unknown" and forgot the order. Its fill was parked as an update
    of an unknown order, never booked, and the next bar decided again from an unchanged book
    under a new client id: two orders at Alpaca, twice the target held."""
    fake.fill_on_submit = lambda o: 100.0
    async with running(fake, request_timeout_s=0.3) as broker:
        buy = order("AAPL", 10)
        fake.delay_next(1.0)  # placed and filled; the answer comes after the client gave up
        fake.server_error(2, status=503)  # the broker's own retries
        with capture_logs() as logs, pytest.raises(RetryableError, match=r"outcome (is )?unknown"):
            await broker.submit([buy])
        assert "alpaca.order.unconfirmed" in [e["event"] for e in logs]
        # What the next bar's plan sees: the order working, so it does not decide again.
        assert [o.client_order_id for o in broker.open_orders()] == [buy.client_order_id]
        updates = Updates(broker)
        await updates.until(lambda u: u.filled(buy.client_order_id) >= 10)
        assert [(f.quantity, f.price) for f in updates.fills] == [(10.0, 100.0)]
        assert updates.last(buy.client_order_id).status is OrderStatus.FILLED
        assert len(fake.orders) == 1 and fake.positions()[0]["qty"] == "10"


async def test_an_order_whose_outcome_stayed_unknown_and_that_alpaca_never_got_is_closed(fake):
    async with running(fake) as broker:
        buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
        fake.server_error(3, status=503)  # every attempt refused: nothing placed
        with pytest.raises(RetryableError, match="outcome is unknown"):
            await broker.submit([buy])
        assert [o.client_order_id for o in broker.open_orders()] == [buy.client_order_id]
        updates = Updates(broker)
        await updates.until(lambda u: u.last(buy.client_order_id) is not None)
        closed = updates.last(buy.client_order_id)
        assert closed.status is OrderStatus.CANCELLED and "not placed" in closed.reason
        assert updates.fills == [] and broker.open_orders() == [] and fake.orders == {}


async def test_an_account_that_may_not_trade_fails_readiness_until_it_may(fake):
    """A closed or blocked account started as a healthy broker: every order was refused,
    bar after bar, and nothing said why."""
    fake.set_account(trading_blocked=True)
    with capture_logs() as logs:
        async with running(fake, open_orders_check_s=0.1) as broker:
            assert broker.status()["blocked"] == "trading_blocked"
            assert [e["reason"] for e in logs if e["event"] == "alpaca.account_blocked"] == [
                "trading_blocked"
            ]
            fake.set_account(trading_blocked=False, status="ACCOUNT_CLOSED")
            await eventually(lambda: broker.status()["blocked"] == "account status ACCOUNT_CLOSED")
            fake.set_account(status="ACTIVE")
            await eventually(lambda: broker.status()["blocked"] is None)
    assert "alpaca.account_unblocked" in [e["event"] for e in logs]


async def test_an_order_replaced_at_alpaca_is_followed_and_its_fill_booked(fake, broker):
    """An operator edited the daemon's limit order in Alpaca's web UI: Alpaca closed it as
    `replaced` and placed a new order under a new client id. The broker closed ours and
    parked the replacement's events as an unknown order's: its fill was never booked, and
    the book and Alpaca held different positions."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
    await broker.submit([buy])
    with capture_logs() as logs:
        new = fake.replace(buy.client_order_id, limit_price=99.0)
        # Followed by the broker's own poller, before any bar asks (ours was the only open
        # order, and the poller polled only while one was open).
        await eventually(
            lambda: new.client_order_id in [o.client_order_id for o in broker.open_orders()]
        )
        updates = Updates(broker)
        await updates.until(
            lambda u: any(o.client_order_id == new.client_order_id for o in u.orders)
        )
    assert "alpaca.order.replaced" in [e["event"] for e in logs]
    # Its fills are the replaced order's owner's (the engine books only its run's orders).
    assert broker.origin(new.client_order_id) == buy.client_order_id
    old = updates.last(buy.client_order_id)
    assert old.status is OrderStatus.CANCELLED and new.id in old.reason
    assert [o.client_order_id for o in broker.open_orders()] == [new.client_order_id]
    fake.set_price("AAPL", 98.5)  # the replacement fills
    await updates.until(lambda u: u.filled(new.client_order_id) >= 10)
    assert [(f.symbol, f.quantity) for f in updates.fills] == [("AAPL", 10.0)]
    assert updates.filled(buy.client_order_id) == 0 and broker.open_orders() == []


async def test_the_replacement_of_an_edited_protective_stop_keeps_its_role(fake, broker):
    """Alpaca gives an edited order a client id of its own, from which no role can be read:
    the run's protective stop, edited in the web UI, came back as a working sell entry, so
    the planner waited on its symbol as on an entry and a flatten took it for an order that
    adds exposure."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("AAPL", 10, 90.0)
    stop = order("AAPL", -10, OrderType.STOP, tag="sl", leg=Leg.STOP_LOSS, stop=90.0)
    await broker.submit([stop])
    new = fake.replace(stop.client_order_id, stop_price=92.0)
    await eventually(
        lambda: new.client_order_id in [o.client_order_id for o in broker.open_orders()]
    )
    [edited] = [o for o in broker.open_orders() if o.client_order_id == new.client_order_id]
    assert broker.origin(new.client_order_id) == stop.client_order_id
    assert edited.leg is Leg.STOP_LOSS and edited.stop_price == pytest.approx(92.0)


async def test_the_replacement_of_an_order_placed_by_hand_stays_the_hands(fake):
    """An order placed by hand and edited at Alpaca while the daemon follows it: the
    replacement was followed as this run's order, and its fills booked as the run's."""
    fake.set_price("AAPL", 100.0, match=False)
    by_hand = fake._create(
        {
            "symbol": "AAPL",
            "qty": "3",
            "side": "buy",
            "type": "limit",
            "limit_price": "90",
            "time_in_force": "gtc",
            "client_order_id": "placed-by-hand-1",
        }
    )
    async with running(fake) as broker:
        assert broker.origin(by_hand.client_order_id) == by_hand.client_order_id
        new = fake.replace(by_hand.client_order_id, limit_price=95.0)
        await eventually(lambda: broker.order(new.client_order_id) is not None)
        assert broker.origin(new.client_order_id) == by_hand.client_order_id
        assert broker.origin("never-seen") == "never-seen"


def _said_once_then_counted(failed: list[dict[str, Any]]) -> None:
    """A poll failing again and again is one warning (alpaca.poll_failed), the polls after
    it counted, each a debug line: a warning each was 720 lines an hour at 5-second polls."""
    assert failed[0]["log_level"] == "warning"
    assert [(e["log_level"], e["polls"]) for e in failed[1:]] == [
        ("debug", n) for n in range(2, len(failed) + 1)
    ]


def _recovered_after(logs: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
    """The poll that succeeds after them ends the failures in one line with their count."""
    [end] = [e for e in logs if e["event"] == "alpaca.poll_recovered"]
    assert end["log_level"] == "info" and end["polls"] == len(failed)
    assert end["last_error"] == failed[-1]["error"]


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"code": 50010000, "message": "internal error"}, ": the answer's id is None"),
        (["AAPL"], " is a list, not an object"),
        (None, " is a NoneType, not an object"),
    ],
)
async def test_a_replacement_whose_answer_cannot_be_read_is_read_again_not_dropped(
    fake, broker, monkeypatch, answer, named
):
    """The replacement of an edited order read by id answered something that is no order
    (an error body, a list, null): it was dropped from the orders to follow, nothing said,
    and never read again; its fills were never booked. It is a failed poll, named as a
    malformed answer, and the replacement is read again until Alpaca answers."""
    from alpaca.trading.client import TradingClient

    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
    await broker.submit([buy])
    readable = TradingClient.get_order_by_id
    monkeypatch.setattr(TradingClient, "get_order_by_id", lambda self, *a, **kw: answer)
    with capture_logs() as logs:
        new = fake.replace(buy.client_order_id, limit_price=99.0)
        problem = f"get_order: unreadable answer: order {new.id}{named}"

        def failed() -> list[dict[str, Any]]:
            return [e for e in logs if e["event"] == "alpaca.poll_failed" and problem in e["error"]]

        await eventually(lambda: len(failed()) >= 2)  # read again, still unreadable
        assert broker.order(new.client_order_id) is None
        assert problem in broker.status()["last_error"]
        _said_once_then_counted(failed())

        monkeypatch.setattr(TradingClient, "get_order_by_id", readable)
        await eventually(lambda: broker.order(new.client_order_id) is not None)
        await eventually(lambda: any(e["event"] == "alpaca.poll_recovered" for e in logs))
    _recovered_after(logs, failed())
    assert broker.origin(new.client_order_id) == buy.client_order_id
    updates = Updates(broker)
    fake.set_price("AAPL", 98.5)  # the replacement fills
    await updates.until(lambda u: u.filled(new.client_order_id) >= 10)
    assert [(f.symbol, f.quantity) for f in updates.fills] == [("AAPL", 10.0)]


def _without_time(body: dict[str, Any]) -> dict[str, Any]:
    """An order as Alpaca sent it with no readable time: submitted_at and updated_at null,
    created_at no RFC 3339 timestamp."""
    body["submitted_at"], body["created_at"], body["updated_at"] = None, "yesterday", None
    return body


def _no_time_named(alpaca_id: str, client_id: str) -> str:
    return (
        f"order {alpaca_id} ({client_id}): no readable submitted_at or created_at "
        "(submitted_at None, created_at 'yesterday', updated_at None)"
    )


@pytest.mark.parametrize("part", ["order", "leg"])
async def test_an_open_order_without_a_timestamp_is_a_malformed_answer_not_a_crash(
    fake, monkeypatch, part
):
    """An open order (or a bracket's leg) Alpaca listed without a readable submitted_at or
    created_at raised a plain ValueError ("order ... has no timestamp") out of `start` and
    `snapshot`: a traceback, and the daemon stopped. It is a malformed answer naming the
    order (Alpaca's id and the client id it is read under) and the fields, Alpaca
    unavailable for that round as an unreadable row is; the start adopts it once Alpaca
    answers readably."""

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_price("AAPL", 100.0, match=False)
    entry, tp, sl = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    async with running(fake) as before:
        await before.submit([entry, tp, sl])  # the entry works at Alpaca, its legs held
    at_alpaca = fake.order(entry.client_order_id)
    stop = next(fake.orders[i] for i in at_alpaca.leg_ids if fake.orders[i].type == "stop")
    target, named = (
        (at_alpaca.id, _no_time_named(at_alpaca.id, entry.client_order_id))
        if part == "order"
        else (stop.id, _no_time_named(stop.id, sl.client_order_id))
    )
    garbled = [True]
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        return _without_time(body) if o.id == target and garbled[0] else body

    monkeypatch.setattr(fake, "_json", answer)
    pattern = r"\(malformed\): list_open_orders: unreadable answer: " + re.escape(named)
    before = malformed()
    with pytest.raises(RetryableError, match=pattern):  # the start's adoption
        async with running(fake):
            pass
    assert malformed() == before + 1
    ids = sorted(o.client_order_id for o in (entry, tp, sl))
    garbled[0] = False
    async with running(fake) as broker:
        assert sorted(o.client_order_id for o in broker.open_orders()) == ids
        garbled[0] = True
        with pytest.raises(RetryableError, match=pattern):
            await broker.snapshot()
        assert named in broker.status()["last_error"]
        garbled[0] = False
        assert sorted(o.client_order_id for o in (await broker.snapshot()).open_orders) == ids


async def test_a_replacement_without_a_timestamp_is_read_again_not_dropped(
    fake, broker, monkeypatch
):
    """The replacement of an edited order, read by id, came without a readable time: the
    poll failed with a plain ValueError after the replacement had been taken off the orders
    to read, so it was never read again and its fills never booked. It is a malformed
    answer naming it, and the replacement is read again until Alpaca answers readably."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
    await broker.submit([buy])
    garbled: set[str] = set()
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        return _without_time(body) if o.id in garbled else body

    monkeypatch.setattr(fake, "_json", answer)
    with capture_logs() as logs:
        new = fake.replace(buy.client_order_id, limit_price=99.0)
        garbled.add(new.id)  # no await since: the broker has not read it yet
        problem = "get_order: unreadable answer: " + _no_time_named(new.id, new.client_order_id)

        def failed() -> list[dict[str, Any]]:
            return [e for e in logs if e["event"] == "alpaca.poll_failed" and problem in e["error"]]

        await eventually(lambda: len(failed()) >= 2)  # read again, still unreadable
        assert broker.order(new.client_order_id) is None
        assert problem in broker.status()["last_error"]
        _said_once_then_counted(failed())

        garbled.clear()
        await eventually(lambda: broker.order(new.client_order_id) is not None)
        await eventually(lambda: any(e["event"] == "alpaca.poll_recovered" for e in logs))
    _recovered_after(logs, failed())
    assert broker.origin(new.client_order_id) == buy.client_order_id
    updates = Updates(broker)
    fake.set_price("AAPL", 98.5)  # the replacement fills
    await updates.until(lambda u: u.filled(new.client_order_id) >= 10)
    assert [(f.symbol, f.quantity) for f in updates.fills] == [("AAPL", 10.0)]


async def test_a_stream_message_without_an_order_is_said_and_counted_bounded(fake, broker):
    """A trade update without an order object (no data, data that is no object, data
    without its order) was counted as malformed and nothing said: the operator saw a
    number grow and no reason, and a fill it may have been waited for the periodic check,
    minutes later. Said as a warning naming what it lacked, at the 1st, 10th, 100th, ...
    (never a line per message), counted each time, and the open orders are polled at once;
    later updates still apply."""

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
    await broker.submit([buy])
    before = malformed()
    no_order = {"stream": "trade_updates", "data": {"event": "fill", "qty": "5"}}
    no_object = {"stream": "trade_updates", "data": "fill"}
    no_data = {"stream": "trade_updates"}
    with capture_logs() as logs:
        for message in [no_order, *[no_data] * 8, no_object, *[no_data] * 2]:
            fake._broadcast(message)
        await eventually(lambda: malformed() == before + 12)
    said = [e for e in logs if e["event"] == "alpaca.update_without_order"]
    assert [(e["times_so_far"], e["lacks"], e["is_a"], e["stream_event"]) for e in said] == [
        (1, "data.order", "NoneType", "fill"),
        (10, "data", "str", None),
    ]
    updates = Updates(broker)
    fake.lose_fill_events(1)
    fake.fill(buy.client_order_id, price=90.0, qty=2)  # its event lost...
    fake._broadcast(no_order)  # ...and one without its order: polled at once, not in minutes
    await updates.until(lambda u: u.filled(buy.client_order_id) == 2)
    fake.fill(buy.client_order_id, price=90.0)  # the stream still works
    await updates.until(lambda u: u.filled(buy.client_order_id) == 5)


async def test_legs_that_are_no_objects_are_said_and_counted_bounded(fake, monkeypatch):
    """A bracket whose `legs` held something that is no object, in the POST's answer and in
    the polls: the leg was skipped, nothing said or counted. Said as a warning naming the
    order and the leg, at the 1st, 10th, 100th, ... of them (never a line per poll),
    counted each time; the leg is followed from the first answer that carries it
    readably, and its fill is booked."""

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_price("AAPL", 100.0, match=False)
    entry, tp, sl = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    garbled = [True]
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        if garbled[0] and o.client_order_id == entry.client_order_id and body["legs"]:
            body["legs"] = [leg if leg["type"] == "limit" else "stop" for leg in body["legs"]]
        return body

    monkeypatch.setattr(fake, "_json", answer)
    async with running(fake, open_orders_check_s=0) as broker:
        before = malformed()
        with capture_logs() as logs:
            await broker.submit([entry, tp, sl])  # the POST's answer
            for _ in range(12):
                await broker.poll()
        aid = fake.order(entry.client_order_id).id
        said = [e for e in logs if e["event"] == "alpaca.leg_unreadable"]
        assert [e["times_so_far"] for e in said] == [1, 10]
        assert (said[0]["alpaca_id"], said[0]["client_order_id"]) == (aid, entry.client_order_id)
        assert (said[0]["leg"], said[0]["is_a"]) == (1, "str")
        assert malformed() - before >= 13

        garbled[0] = False
        await broker.poll()
        updates = Updates(broker)
        fake.fill(entry.client_order_id, price=100.0)
        fake.set_price("AAPL", 94.0)  # the stop-loss fires
        await updates.until(lambda u: u.filled(sl.client_order_id) == 10)
        assert updates.last(tp.client_order_id).status is OrderStatus.CANCELLED


async def test_429_and_server_errors_are_retried(fake, broker):
    before = SOURCE_ERRORS.labels(source="alpaca_trading", kind="http_429")._value.get()
    fake.throttle(2)  # a 429 has four tries an attempt
    [a] = await broker.submit([order("AAPL", 1, tag="r1")])
    fake.throttle(5)
    [b] = await broker.submit([order("AAPL", 1, tag="r2")])
    fake.server_error(1, status=500)
    [c] = await broker.submit([order("AAPL", 1, tag="r3")])
    fake.gateway_timeout(1)  # a one-off 504 (a text page), retried by the broker itself
    [d] = await broker.submit([order("AAPL", 1, tag="r4")])
    assert [x.status for x in (a, b, c, d)] == [OrderStatus.NEW] * 4
    assert len(fake.posted_orders()) == 3 + 6 + 2 + 2
    assert len(fake.orders) == 4
    assert SOURCE_ERRORS.labels(source="alpaca_trading", kind="http_429")._value.get() == before + 7


async def test_an_unreachable_broker_raises_retryable_and_on_bar_does_not(fake, broker):
    buy = order("AAPL", 1, OrderType.LIMIT, limit=100.0)
    await broker.submit([buy])
    fake.server_error(6, status=503)  # 2 requests (no alpaca-py retry) x 3 attempts
    with pytest.raises(RetryableError, match="outcome is unknown"):
        await broker.submit([order("SPY", 1)])
    await fake.stop()
    with pytest.raises(RetryableError, match="unreachable") as failed:
        await broker.submit([order("TSLA", 1)])
    assert "safe" in str(failed.value)
    with pytest.raises(RetryableError):
        await broker.cancel(buy.client_order_id, "test")
    await eventually(lambda: broker.status()["stream"] == "down")
    update = await broker.on_bar(BAR)  # polls, fails, reports nothing, raises nothing
    assert update.fills == [] and update.orders == []
    status = broker.status()
    assert status["connected"] is False
    assert "connection" in status["last_error"] or "ConnectionError" in status["last_error"]


def _poll_outcomes(broker: Any) -> list[bool]:
    """Each of the broker's polls from now on, in order: whether it succeeded."""
    outcomes: list[bool] = []
    poll = broker.poll

    async def counted(**kw: Any) -> None:
        try:
            await poll(**kw)
        except Exception:
            outcomes.append(False)
            raise
        outcomes.append(True)

    broker.poll = counted
    return outcomes


async def test_polls_failing_while_the_stream_is_down_are_counted_and_said_sparsely(
    fake, monkeypatch
):
    """With the trade stream down and Alpaca unreachable, every poll (each poll_interval_s,
    5 s by default) logged the warning alpaca.poll_failed: 720 identical lines an hour, for
    as long as it lasted. The first failure is said in full; later ones are counted and
    said in alpaca.poll_still_failing once 5 minutes of the wall clock have passed since the
    last line, the wait doubling up to an hour, the others at debug; the first poll that
    succeeds says alpaca.poll_recovered with the count and how long the polls failed. Each
    poll's retries (2 info lines alpaca.retry a poll) are counted in them as well."""
    from alpaca.trading.client import TradingClient

    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, poll_interval_s=0.01, rate_limit_per_minute=0) as broker:
        await broker.submit([order("AAPL", 10, OrderType.LIMIT, limit=95.0)])
        minutes = [0]

        def clock() -> datetime:  # a minute passes at each look: a poll a minute
            minutes[0] += 1
            return T0 + timedelta(minutes=minutes[0])

        broker._poll_clock = clock
        outcomes = _poll_outcomes(broker)
        listing = TradingClient.get_orders
        calls: list[None] = []

        def unreachable(self, *a, **kw):  # type: ignore[no-untyped-def]
            calls.append(None)
            raise requests.ConnectionError("connection refused")

        monkeypatch.setattr(TradingClient, "get_orders", unreachable)
        during: list[dict[str, Any] | None] = []
        with capture_logs() as logs:
            await fake.drop_stream()
            await eventually(lambda: outcomes.count(False) >= 90, timeout=30)
            during.append(broker.status().get("poll_outage"))
            monkeypatch.setattr(TradingClient, "get_orders", listing)
            await eventually(lambda: True in outcomes, timeout=10)
        failed = outcomes.index(True)
        assert failed >= 90 and not any(outcomes[:failed])
        polls = [e for e in logs if e["event"].startswith("alpaca.poll_")]
        said = [e for e in polls if e["log_level"] == "warning"]
        assert said[0]["event"] == "alpaca.poll_failed" and "unreachable" in said[0]["error"]
        assert {e["event"] for e in said[1:]} == {"alpaca.poll_still_failing"}
        # At 5, 15, 35, 75 minutes ... from the first: the wait doubles up to its bound.
        due, wait, expected = timedelta(0), REPEAT_FIRST, []
        while due + wait < timedelta(minutes=failed):
            due, wait = due + wait, min(wait * 2, REPEAT_MAX)
            expected.append(due)
        assert [e["failing_for"] for e in said[1:]] == [str(d) for d in expected]
        # Each says the failures so far: one a minute, the first at 0.
        assert [e["polls"] for e in said[1:]] == [1 + d // timedelta(minutes=1) for d in expected]
        # Nothing dropped: the first, each repeat's count since the line before it, and the
        # debug lines between them are every failed poll.
        assert (
            1
            + sum(e["polls_since_last_line"] for e in said[1:])
            + sum(1 for e in polls[polls.index(said[-1]) :] if e["event"] == "alpaca.poll_failed")
            == failed
        )
        debug = [
            e for e in polls if e["event"] == "alpaca.poll_failed" and e["log_level"] == "debug"
        ]
        assert len(debug) == failed - len(said)
        [end] = [e for e in polls if e["event"] == "alpaca.poll_recovered"]
        assert end["log_level"] == "info" and end["polls"] == failed
        assert end["failing_for_s"] == failed * 60.0  # first failure to the first success
        assert end["since"] == (T0 + timedelta(minutes=1)).isoformat()
        # The first poll's retries said as before; the later ones counted, at debug.
        retries = [e for e in logs if e["event"] == "alpaca.retry"]
        first_poll = broker._config.max_attempts - 1
        assert [e["log_level"] for e in retries[:first_poll]] == ["info"] * first_poll
        assert {e["log_level"] for e in retries[first_poll:]} == {"debug"}
        assert end["retries"] == len(calls) - failed - first_poll == len(retries) - first_poll
        assert during[0] is not None and during[0]["polls"] >= 90
        assert broker.status()["poll_outage"] is None


async def test_a_stop_while_the_polls_fail_says_their_count(fake, monkeypatch):
    """The failures since the last line were said at debug only: a stop during the outage
    says how many there were, not nothing."""
    from alpaca.trading.client import TradingClient

    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, poll_interval_s=0.01) as broker:
        await broker.submit([order("AAPL", 10, OrderType.LIMIT, limit=95.0)])
        outcomes = _poll_outcomes(broker)

        def unreachable(self, *a, **kw):  # type: ignore[no-untyped-def]
            raise requests.ConnectionError("connection refused")

        monkeypatch.setattr(TradingClient, "get_orders", unreachable)
        with capture_logs() as logs:
            await fake.drop_stream()
            await eventually(lambda: outcomes.count(False) >= 3)
            await broker.stop()
    warned = [e for e in logs if e["log_level"] == "warning" and "poll" in e["event"]]
    assert [e["event"] for e in warned] == ["alpaca.poll_failed", "alpaca.poll_still_failing"]
    [stop] = [e for e in logs if e.get("stopping")]
    assert (stop["event"], stop["log_level"]) == ("alpaca.poll_still_failing", "warning")
    failed = outcomes.count(False)
    assert stop["polls"] == failed and stop["polls_since_last_line"] == failed - 1
    assert broker.status()["poll_outage"] is None


async def test_alpaca_down_with_nothing_open_and_the_stream_down_is_seen_within_a_poll(
    fake, monkeypatch
):
    """Polls asked Alpaca about open orders only: with none open and the trade stream down,
    nothing was asked between the account checks (every open_orders_check_s, 300 s), so
    Alpaca down went unseen for minutes: connected (/ready's broker check, the broker_down
    alert), no alpaca.poll_failed. Now the poller asks for the account once a poll
    interval (at most once a second): the first failure says so at once, the recovery as
    soon as Alpaca answers again, and each probe is one request (its retries aside)."""
    from alpaca.trading.client import TradingClient

    async with running(fake, poll_interval_s=0.05) as broker:
        assert broker.open_orders() == [] and broker.status()["connected"] is True
        answering = TradingClient._one_request
        attempts: list[float] = []

        def unreachable(self, *a, **kw):  # type: ignore[no-untyped-def]
            attempts.append(time.monotonic())
            raise requests.ConnectionError("connection refused")

        def failed() -> list[dict[str, Any]]:
            return [e for e in logs if e["event"] == "alpaca.poll_failed"]

        with capture_logs() as logs:
            monkeypatch.setattr(TradingClient, "_one_request", unreachable)
            since = len(fake.requests)
            await fake.drop_stream()
            await eventually(lambda: broker.status()["stream"] == "down")
            await eventually(lambda: broker.status()["connected"] is False, timeout=3.0)
            await eventually(lambda: len(failed()) >= 2, timeout=5.0)
            during = broker.status()
            monkeypatch.setattr(TradingClient, "_one_request", answering)
            await eventually(
                lambda: any(e["event"] == "alpaca.poll_recovered" for e in logs), timeout=5.0
            )
        assert during["connected"] is False and during["mode"] == "polling"
        assert during["poll_outage"] is not None and "unreachable" in during["poll_outage"]["error"]
        assert "get_account" in during["last_error"]
        said = failed()
        assert [e["log_level"] for e in said] == ["warning"] + ["debug"] * (len(said) - 1)
        assert "unreachable during the account check" in said[0]["error"]
        # A probe and its retries, then the next a poll interval (at least a second) later.
        tries = broker._config.max_attempts
        assert len(attempts) == tries * len(said)
        assert attempts[tries] - attempts[0] >= 0.9
        [end] = [e for e in logs if e["event"] == "alpaca.poll_recovered"]
        assert end["polls"] == len(said) and end["retries"] == len(attempts) - len(said) - (
            tries - 1
        )
        status = broker.status()
        assert status["connected"] is True and status["poll_outage"] is None
        # Nothing but the account asked for, once a probe (the failing attempts never left).
        assert {(r.method, r.path) for r in fake.requests[since:]} == {("GET", "/v2/account")}


# ----------------------------------------------------------------------------- cancel


async def test_an_answer_that_is_no_json_is_counted_and_shown_as_malformed(fake, broker):
    """requests' JSONDecodeError is a RequestException: a 200 whose body was an HTML page
    was counted as kind="connection" and shown as one in last_error, pointing the operator
    at the network instead of at the answer."""

    def errors(kind: str) -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind=kind)._value.get()

    malformed, connection = errors("malformed"), errors("connection")
    for _ in range(3):  # every attempt of the order's POST
        fake._http_faults.append((200, "<html><body>maintenance</body></html>", "html", {}))
    with pytest.raises(RetryableError, match=r"\(malformed\)"):
        await broker.submit([order("AAPL", 1, OrderType.LIMIT, limit=100.0)])
    assert errors("malformed") == malformed + 3
    assert errors("connection") == connection
    assert "unreadable answer" in broker.status()["last_error"]


def _no_qty(rows: list[dict[str, Any]]) -> Any:
    rows[0]["qty"] = None
    return rows


def _no_symbol(rows: list[dict[str, Any]]) -> Any:
    del rows[0]["symbol"]
    return rows


@pytest.mark.parametrize(
    ("garble", "named"),
    [
        (_no_qty, "positions answer row 0 (AAPL): qty None is not a number"),
        (_no_symbol, "positions answer row 0: symbol None is not"),
        (lambda rows: {"positions": rows}, "positions answer is a dict, not a list"),
    ],
)
async def test_a_positions_answer_that_cannot_be_read_is_retryable_and_named(
    fake, broker, monkeypatch, garble, named
):
    """A row without a readable qty or symbol was skipped, and an answer that is no list read
    as no positions: reconciliation took Alpaca for flat and blocked every held symbol with a
    critical "broker holds 0" (or noticed nothing of shares held in an unreadable row). It is
    now Alpaca unavailable for that round, named as a malformed answer."""

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_position("AAPL", 10, 100.0)
    assert await broker.positions() == {"AAPL": 10.0}
    readable = fake.positions
    monkeypatch.setattr(fake, "positions", lambda: garble(readable()))
    before = malformed()
    pattern = r"\(malformed\): get_positions: unreadable answer: " + re.escape(named)
    with pytest.raises(RetryableError, match=pattern):
        await broker.positions()
    assert named in broker.status()["last_error"]
    with pytest.raises(RetryableError, match=pattern):
        await broker.snapshot()
    assert malformed() == before + 2
    monkeypatch.setattr(fake, "positions", readable)
    assert await broker.positions() == {"AAPL": 10.0}
    assert broker.status()["connected"] is True


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (
            {"code": 50010000, "message": "internal error"},
            "open orders answer is a dict, not a list",
        ),
        (None, "open orders answer is a NoneType, not a list"),
        (["AAPL"], "open orders answer row 0 is a str, not an object"),
    ],
)
async def test_an_open_orders_answer_that_cannot_be_read_is_retryable_and_named(
    fake, monkeypatch, answer, named
):
    """GET /v2/orders answering something that is no list (an error body, null) was read as
    no open orders, a row that is no object skipped: the orders working at Alpaca were
    neither adopted at the start nor in the snapshot. It is Alpaca unavailable for that
    round, named as a malformed answer, as an unreadable positions answer is."""
    from alpaca.trading.client import TradingClient

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_price("AAPL", 100.0, match=False)
    pattern = r"\(malformed\): list_open_orders: unreadable answer: " + re.escape(named)
    readable = TradingClient.get_orders
    async with running(fake) as broker:
        buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
        await broker.submit([buy])  # working at Alpaca
        assert [o.client_order_id for o in (await broker.snapshot()).open_orders] == [
            buy.client_order_id
        ]
        monkeypatch.setattr(TradingClient, "get_orders", lambda self, *a, **kw: answer)
        before = malformed()
        with pytest.raises(RetryableError, match=pattern):
            await broker.snapshot()
        assert malformed() == before + 1
        assert named in broker.status()["last_error"]
    with pytest.raises(RetryableError, match=pattern):  # the start's adoption
        async with running(fake):
            pass
    monkeypatch.setattr(TradingClient, "get_orders", readable)
    async with running(fake) as broker:
        assert [o.client_order_id for o in broker.open_orders()] == [buy.client_order_id]


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"code": 50010000, "message": "internal error"}, "orders answer is a dict, not a list"),
        (["AAPL"], "orders answer row 0 is a str, not an object"),
    ],
)
async def test_an_order_poll_answer_that_cannot_be_read_is_retryable_and_named(
    fake, monkeypatch, answer, named
):
    """The poll read such an answer as no rows: every followed order "missing", read again
    one by one, and nothing said of the answer itself. It is a failed poll (the broker's
    polling backs off and tries again), named and counted as a malformed answer."""
    from alpaca.trading.client import TradingClient

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
        await broker.submit([buy])  # working at Alpaca: followed, so the poll lists orders
        monkeypatch.setattr(TradingClient, "get_orders", lambda self, *a, **kw: answer)
        before = malformed()
        with pytest.raises(
            RetryableError, match=r"\(malformed\): list_orders: unreadable answer: "
        ):
            await broker.poll()
        assert malformed() == before + 1
        assert named in broker.status()["last_error"]
        assert [o.client_order_id for o in broker.open_orders()] == [buy.client_order_id]


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (["AAPL"], "is a list, not an object"),
        ("maintenance", "is a str, not an object"),
        (None, "is a NoneType, not an object"),
        ({"code": 50010000, "message": "internal error"}, "the answer's id is None"),
    ],
)
async def test_an_order_read_by_id_that_cannot_be_read_is_retryable_and_named(
    fake, monkeypatch, answer, named
):
    """GET /v2/orders/{id} answering something that is no object (or an object that is not
    the order asked for: an error body) was ignored: the order stayed as it was, nothing
    was counted or said, and a poll that found it missing from the listing went on as if it
    had been read. It is a failed poll, named and counted as a malformed answer, as an
    unreadable listing is; the order stays followed."""
    from alpaca.trading.client import TradingClient

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
        await broker.submit([buy])  # working at Alpaca: followed
        aid = fake.order(buy.client_order_id).id
        # Missing from the listing, the order is read by id.
        monkeypatch.setattr(TradingClient, "get_orders", lambda self, *a, **kw: [])
        readable = TradingClient.get_order_by_id
        monkeypatch.setattr(TradingClient, "get_order_by_id", lambda self, *a, **kw: answer)
        before = malformed()
        pattern = (
            r"\(malformed\): get_order: unreadable answer: "
            + re.escape(f"order {aid} ({buy.client_order_id})")
            + ".*"
            + re.escape(named)
        )
        with pytest.raises(RetryableError, match=pattern):
            await broker.poll()
        assert malformed() == before + 1
        assert named in broker.status()["last_error"]
        assert [o.client_order_id for o in broker.open_orders()] == [buy.client_order_id]

        monkeypatch.setattr(TradingClient, "get_order_by_id", readable)
        await broker.poll()
        assert broker.status()["connected"] is True
        assert [o.client_order_id for o in broker.open_orders()] == [buy.client_order_id]


async def test_an_account_answer_that_cannot_be_read_is_named_and_asked_at_its_interval(
    fake, monkeypatch
):
    """GET /v2/account answering something that is no object was ignored: the start went on
    as if the account could trade, and a running broker asked again at every poll."""
    readable = fake.account
    monkeypatch.setattr(fake, "account", lambda: ["no", "account"])
    with pytest.raises(RetryableError, match=r"\(malformed\): get_account: unreadable answer"):
        async with running(fake):
            pass
    monkeypatch.setattr(fake, "account", readable)
    async with running(fake, open_orders_check_s=0.3) as broker:
        with capture_logs() as logs:
            monkeypatch.setattr(fake, "account", lambda: ["no", "account"])
            failed: list[float] = []

            def checks() -> int:
                said = [e for e in logs if e["event"] == "alpaca.account_check_failed"]
                if len(said) > len(failed):
                    failed.append(time.monotonic())
                return len(said)

            await eventually(lambda: checks() >= 2, timeout=3.0)
        said = [e for e in logs if e["event"] == "alpaca.account_check_failed"]
        assert "get_account: unreadable answer: the account is a list" in said[0]["error"]
        # Asked again at the check's interval, not at every poll (0.05 s).
        assert failed[1] - failed[0] >= 0.25
        assert broker.status()["blocked"] is None


async def test_cancel(fake, broker):
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
    await broker.submit([buy])
    done = await broker.cancel(buy.client_order_id, "position closed by rebalance")
    assert done.status is OrderStatus.CANCELLED
    assert done.reason == "position closed by rebalance"
    assert fake.order(buy.client_order_id).status == "canceled"
    again = await broker.cancel(buy.client_order_id, "again")
    assert again.status is OrderStatus.CANCELLED and again.reason == "position closed by rebalance"
    assert await broker.cancel("never-submitted", "x") is None

    # An order that filled before the cancel reached Alpaca (422): its fill is kept.
    other = order("SPY", 2, OrderType.LIMIT, limit=500.0)
    await broker.submit([other])
    await fake.drop_stream()
    await eventually(lambda: broker.status()["stream"] == "down")
    fake.fill(other.client_order_id, price=499.0)
    late = await broker.cancel(other.client_order_id, "too late")
    assert late.status is OrderStatus.FILLED
    updates = Updates(broker)
    await updates.until(lambda u: u.filled(other.client_order_id) >= 2)
    fake.allow_stream()

    # A bracket entry cancelled takes its held legs with it.
    legs = bracket_orders(RUN, T0, "TSLA", 1, 500.0, 300.0)
    legs[0].type, legs[0].limit_price = OrderType.LIMIT, 350.0
    await broker.submit(legs)
    cancelled = await broker.cancel(legs[0].client_order_id, "stale")
    assert cancelled.status is OrderStatus.CANCELLED
    await updates.until(
        lambda u: all(
            (o := u.last(x.client_order_id)) is not None and not o.status.is_open for x in legs[1:]
        )
    )
    assert (
        updates.last(legs[1].client_order_id).reason
        == f"parent order {legs[0].client_order_id} cancelled: stale"
    )
    assert broker.open_orders() == []


# ----------------------------------------------------------------------------- account


async def test_snapshot_matches_the_account_at_alpaca():
    need_fixtures()
    async with AlpacaTradingFake(recorded_positions=True) as fake, running(fake) as broker:
        buy = order("AAPL", 2, OrderType.LIMIT, limit=250.0)
        await broker.submit([buy])
        snap = await broker.snapshot()
        account = fake.account()
        assert snap.cash == float(account["cash"])
        assert snap.equity == float(account["equity"])
        assert snap.buying_power == float(account["buying_power"])
        assert snap.buying_power == pytest.approx(snap.cash - 500.0)
        assert snap.positions == {
            "AAPL": (7.0, 256.597143),
            "SPY": (51.0, 666.737843),
            "TSLA": (11.0, 439.903636),
        }
        assert [o.client_order_id for o in snap.open_orders] == [buy.client_order_id]
        assert snap.account_status == "ACTIVE" and snap.currency == "USD"


async def test_start_adopts_the_open_orders_of_the_universe(fake):
    fake.set_price("AAPL", 100.0, match=False)
    legs = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    async with running(fake, symbols=("AAPL", "MSFT")) as first:
        await first.submit(legs)
        await first.submit([order("MSFT", 1, OrderType.LIMIT, limit=10.0)])
    async with running(fake, symbols=("AAPL",)) as broker:
        adopted = {o.client_order_id: o for o in broker.open_orders()}
        assert set(adopted) == {o.client_order_id for o in legs}
        assert adopted[legs[1].client_order_id].status is OrderStatus.HELD
        assert adopted[legs[1].client_order_id].leg is Leg.TAKE_PROFIT
        assert adopted[legs[2].client_order_id].parent_id == legs[0].client_order_id
        fake.fill(legs[0].client_order_id, price=100.0)
        updates = Updates(broker)
        await updates.until(lambda u: u.last(legs[2].client_order_id) is not None)
        assert updates.filled(legs[0].client_order_id) == 10
        assert updates.last(legs[2].client_order_id).status is OrderStatus.NEW


# ----------------------------------------------------------------------------- secrets


async def test_keys_never_appear_in_logs_status_or_exceptions(caplog):
    need_fixtures()
    key, secret = "PKLEAKCHECK00000000001", "S3cr3t-must-never-leak-0123456789"
    caplog.set_level(logging.DEBUG)
    logging.getLogger(WS_LOGGER).setLevel(logging.DEBUG)  # an operator asking for everything
    texts: list[str] = []
    with capture_logs() as captured:
        async with AlpacaTradingFake(key_id=key, secret_key=secret) as fake:
            async with running(fake) as broker:
                fake.set_price("AAPL", 100.0, match=False)
                fake.fail_next_order("insufficient_buying_power")
                [rejected] = await broker.submit([order("AAPL", 1)])
                [ok] = await broker.submit([order("AAPL", 1, tag="ok")])
                fake.fill(ok.client_order_id)
                await Updates(broker).until(lambda u: len(u.fills) == 1)
                texts += [rejected.reason, repr(broker), repr(broker.status())]
                fake.server_error(6, status=503)
                with pytest.raises(RetryableError) as unknown:
                    await broker.submit([order("SPY", 1)])
                texts.append(str(unknown.value))
                await fake.drop_stream()
                await eventually(lambda: broker.status()["stream"] == "down")
                fake.allow_stream()
                await eventually(lambda: broker.status()["stream"] == "up")
            wrong = AlpacaBroker(config(fake), (key, secret[:-1] + "X"))
            with pytest.raises(ConfigError) as refused:
                await wrong.start()
            texts.append(str(refused.value))
            gone = AlpacaBroker(config(fake), (key, secret))
        with pytest.raises(RetryableError) as unreachable:
            await gone.start()
        texts.append(str(unreachable.value))
    texts += [repr(entry) for entry in captured]
    texts += [r.getMessage() for r in caplog.records]
    texts += [logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info]
    assert any("alpaca.stream.up" in t for t in texts)  # the logs were really captured
    for text in texts:
        assert key not in text and secret not in text and secret[:-1] not in text


async def test_refused_keys_are_said_in_words_the_error_line_masking_leaves_as_they_are():
    """`refused the keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY: alpaca: request is not
    authorized` became `... APCA_API_SECRET_KEY: *** request is not authorized` on the error
    line: `SECRET_KEY: <word>` is a credential pair to the masking (it must stay one: that is
    how a printed key would look), so the message read as if a key had been shown and hidden.
    No variable name is followed by `: ` now, and nothing of the keys is in the message."""
    from tradingd.secrets import mask_text

    need_fixtures()
    key, secret = "PKREFUSED00000000000001", "S3cr3t-refused-0123456789"
    async with AlpacaTradingFake(key_id=key, secret_key=secret) as fake:
        wrong = AlpacaBroker(config(fake), (key, secret[:-1] + "X"))
        with pytest.raises(ConfigError) as refused:
            await wrong.start()
    text = str(refused.value)
    assert mask_text(text) == text  # what the CLI prints, unchanged
    assert "APCA_API_KEY_ID and APCA_API_SECRET_KEY" in text
    assert "request is not authorized (HTTP 401" in text and "paper account's keys" in text
    assert key not in text and secret[:-1] not in text and "***" not in text


# ----------------------------------------------------------------------------- the fake


async def test_the_fake_answers_like_alpaca(fake):
    """The fixtures README's rules for a fake, checked with requests and alpaca-py."""
    import requests
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest

    fake.set_price("AAPL", 100.0, match=False)
    fake.set_position("SPY", 4, 500.0)
    url = fake.url
    auth = {"APCA-API-KEY-ID": fake.key_id, "APCA-API-SECRET-KEY": fake.secret_key}

    def http() -> None:
        missing = requests.get(f"{url}/v2/account", timeout=5)
        assert (missing.status_code, missing.json()) == (403, {"message": "forbidden."})
        wrong = requests.get(
            f"{url}/v2/account", headers={**auth, "APCA-API-SECRET-KEY": "x"}, timeout=5
        )
        assert wrong.status_code == 401 and wrong.json()["code"] == 40110000
        ok = requests.get(f"{url}/v2/account", headers=auth, timeout=5)
        assert ok.status_code == 200
        for answer in (missing, wrong, ok):
            assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
                answer.headers
            )
        none = requests.post(
            f"{url}/v2/orders",
            json={"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "day"},
            headers=auth,
            timeout=5,
        )
        assert (none.status_code, none.json()["message"]) == (422, "qty or notional is required")

    await asyncio.to_thread(http)

    client = TradingClient(
        fake.key_id, fake.secret_key, paper=True, raw_data=True, url_override=url
    )
    client._retry_wait = 0

    def orders() -> dict[str, Any]:
        a = client.submit_order(
            LimitOrderRequest(
                symbol="AAPL",
                qty=1,
                side="buy",
                time_in_force="day",
                limit_price=90,
                client_order_id="a",
            )
        )
        b = client.submit_order(
            LimitOrderRequest(
                symbol="SPY",
                qty=2,
                side="sell",
                time_in_force="gtc",
                limit_price=600,
                client_order_id="b",
            )
        )
        assert a["status"] == "accepted" and a["qty"] == "1" and a["limit_price"] == "90"
        with pytest.raises(APIError) as dup:
            client.submit_order(
                LimitOrderRequest(
                    symbol="AAPL",
                    qty=1,
                    side="buy",
                    time_in_force="day",
                    limit_price=90,
                    client_order_id="a",
                )
            )
        assert (dup.value.status_code, dup.value.message) == (422, "client_order_id must be unique")
        assert [
            o["client_order_id"] for o in client.get_orders(GetOrdersRequest(symbols=["AAPL"]))
        ] == ["a"]
        assert [o["client_order_id"] for o in client.get_orders(GetOrdersRequest(side="sell"))] == [
            "b"
        ]
        assert [
            o["client_order_id"]
            for o in client.get_orders(GetOrdersRequest(direction="asc", limit=1))
        ] == ["a"]
        assert [
            o["client_order_id"]
            for o in client.get_orders(GetOrdersRequest(direction="desc", limit=1))
        ] == ["b"]
        assert client.get_order_by_client_id("b")["id"] == b["id"]
        assert client.cancel_order_by_id(a["id"]) is None
        with pytest.raises(APIError) as closed:
            client.cancel_order_by_id(a["id"])
        assert closed.value.status_code == 422
        with pytest.raises(APIError) as unknown:
            client.cancel_order_by_id("00000000-0000-4000-8000-000000000000")
        assert (unknown.value.status_code, unknown.value.code) == (404, 40410000)
        # Cancelled ids stay used.
        with pytest.raises(APIError):
            client.submit_order(
                LimitOrderRequest(
                    symbol="AAPL",
                    qty=1,
                    side="buy",
                    time_in_force="day",
                    limit_price=90,
                    client_order_id="a",
                )
            )
        assert [
            o["client_order_id"] for o in client.get_orders(GetOrdersRequest(status="closed"))
        ] == ["a"]
        with pytest.raises(APIError) as no_position:
            client.close_position("TSLA")
        assert no_position.value.status_code == 404
        closing = client.close_position("SPY")
        assert (closing["side"], closing["qty"], closing["type"]) == ("sell", "4", "market")
        cancelled = client.cancel_orders()
        return {"cancelled": len(cancelled), "positions": client.get_all_positions()}

    out = await asyncio.to_thread(orders)
    assert out["cancelled"] == 2
    assert [p["symbol"] for p in out["positions"]] == ["SPY"]


def test_the_fake_runs_in_a_thread_for_a_synchronous_client():
    need_fixtures()
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import MarketOrderRequest

    fake = AlpacaTradingFake()
    url = fake.start_in_thread()
    try:
        client = TradingClient(
            fake.key_id, fake.secret_key, paper=True, raw_data=True, url_override=url
        )
        fake.call(fake.set_price, "AAPL", 10.0, False)
        placed = client.submit_order(
            MarketOrderRequest(
                symbol="AAPL", qty=3, side="buy", time_in_force="day", client_order_id="t1"
            )
        )
        fake.call(fake.fill, "t1")
        assert client.get_order_by_id(placed["id"])["status"] == "filled"
        assert [p["qty"] for p in client.get_all_positions()] == ["3"]
    finally:
        fake.stop_thread()


# ----------------------------------------------------------------------------- pacing


async def test_a_batch_larger_than_the_request_budget_is_paced_not_throttled():
    """30 orders against a budget of 10 requests per 0.5 s (Alpaca: 200 per minute): the
    broker waits for its budget, so the server never answers 429 and every order is placed.
    The same batch without the client-side budget is throttled (the server's limit is real)."""
    need_fixtures()
    orders = [order(sym, 1, tag=f"o{k}") for k in range(10) for sym in SYMS]
    for budget in (10, 0):
        fake = AlpacaTradingFake(cash=1e7, rate_limit=10, rate_window_s=0.5)
        await fake.start()
        try:
            for sym in SYMS:
                fake.set_price(sym, 100.0, match=False)
            async with running(
                fake,
                rate_limit_per_minute=budget,
                rate_limit_burst=2,
                rate_limit_period_s=0.5,
                max_attempts=1,
            ) as broker:
                acks = await broker.submit(orders)
                waited = broker.rate_limit_wait_s
        finally:
            await fake.stop()
        placed = sum(a.status is not OrderStatus.REJECTED for a in acks)
        if budget:
            assert fake.throttled == 0
            assert placed == len(orders)
            assert waited > 0
        else:
            assert fake.throttled > 0


async def test_sells_go_before_buys_in_a_batch(fake):
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("SPY", 100.0, match=False)
    fake.set_position("AAPL", 100, 90.0)
    orders = [
        order("SPY", 5, tag="b1"),
        order("AAPL", -5, tag="s1"),
        order("SPY", 3, tag="b2"),
        order("AAPL", -2, tag="s2"),
    ]
    async with running(fake, max_in_flight=4) as broker:
        acks = await broker.submit(orders)
    # Answers in the caller's order; requests: every sell before any buy.
    assert [a.client_order_id for a in acks] == [o.client_order_id for o in orders]
    sides = [b["side"] for b in fake.posted_orders()]
    assert sorted(sides, key=lambda s: s != "sell") == sides and sides.count("sell") == 2


async def test_an_order_state_is_counted_once_when_the_stream_tells_it_before_the_ack(fake):
    """The fault soak counted more `tradingd_orders{status="filled"}` than fills: an order
    filled at once had its fill replayed from the stream (which told it before the POST's
    answer) and counted, then counted again by the ack."""
    from tradingd.metrics import ORDERS

    fake.fill_on_submit = lambda o: 100.0
    async with running(fake) as broker:
        await fake.wait_listening()
        before = ORDERS.labels(status="filled")._value.get()
        fake.delay_next(0.3)  # the answer leaves after the stream's fill event
        [ack] = await broker.submit([order("AAPL", 3)])
        assert ack.status is OrderStatus.FILLED
        assert ORDERS.labels(status="filled")._value.get() == before + 1


async def test_the_buys_of_a_batch_whose_sells_failed_are_closed_as_not_sent(fake):
    """A batch of sells and a buy: the sells met 5xx, and submit raised before the buy wave.
    Nothing said the buy was never sent (its stored intent stayed `new` for good), and the
    sell Alpaca answered was never told either. The error now carries both: the buy closed
    as cancelled ("not placed"), the answered sell as answered; the sell whose outcome is
    unknown is in neither, followed and looked up as before."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("SPY", 100.0, match=False)
    fake.set_position("AAPL", 100, 90.0)
    lost, answered = order("AAPL", -5, tag="s1"), order("AAPL", -2, tag="s2")
    buys = [order("SPY", 5, tag="b1"), order("TSLA", 1, tag="b2")]
    for _ in range(3):  # every attempt of the first sell
        fake.fail_next_order(503, {"code": 50300000, "message": "service unavailable"})
    async with running(fake, max_in_flight=1) as broker:
        with capture_logs() as logs, pytest.raises(RetryableError, match="not sent") as failed:
            await broker.submit([buys[0], lost, answered, buys[1]])
        error = failed.value
        assert [o.client_order_id for o in error.answered] == [answered.client_order_id]
        assert error.answered[0].status is OrderStatus.NEW
        assert [o.client_order_id for o in error.not_sent] == [b.client_order_id for b in buys]
        for o in error.not_sent:
            assert o.status is OrderStatus.CANCELLED and o.reason.startswith("not placed")
        assert [b["side"] for b in fake.posted_orders()] == ["sell"] * 4  # no buy was sent
        assert [o.client_order_id for o in broker.open_orders()] == [
            lost.client_order_id,
            answered.client_order_id,
        ]
        [warned] = [e for e in logs if e["event"] == "alpaca.order.not_sent"]
        assert warned["client_order_ids"] == [b.client_order_id for b in buys]
        # Never sent, so a later send of the same id is a first send, not a duplicate.
        [ack] = await broker.submit([buys[0]])
        assert ack.status is OrderStatus.NEW and fake.orders_with_client_id(ack.client_order_id)


async def test_an_order_already_at_alpaca_in_a_cut_short_batch_is_not_closed(fake):
    """The buy of a batch whose sells failed was closed as 'not placed' even when Alpaca
    already held it (placed by an earlier submit, as in a resumed plan or a retry): the
    store then said cancelled while the order worked. Its tracked state is reported."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("SPY", 100.0, match=False)
    fake.set_position("AAPL", 100, 90.0)
    buy = order("SPY", 5, tag="b1")
    async with running(fake, max_in_flight=1) as broker:
        [ack] = await broker.submit([buy])  # placed: working at Alpaca
        assert ack.status is OrderStatus.NEW
        sell = order("AAPL", -5, tag="s1")
        for _ in range(3):
            fake.fail_next_order(503, {"code": 50300000, "message": "service unavailable"})
        with pytest.raises(SubmitCutShort) as failed:
            await broker.submit([sell, buy])
        assert buy.client_order_id not in [o.client_order_id for o in failed.value.not_sent]
        [told] = [o for o in failed.value.answered if o.client_order_id == buy.client_order_id]
        assert told.status.is_open and "not placed" not in told.reason
        assert buy.client_order_id in [o.client_order_id for o in broker.open_orders()]
        assert len(fake.orders_with_client_id(buy.client_order_id)) == 1


async def test_a_resent_order_whose_look_up_answer_is_no_order_is_followed(fake, monkeypatch):
    """A restarted daemon resends an order (422: the client id exists) and the look-up by
    client id answers an error body: the order exists at Alpaca, so it is followed (read
    again at the next poll) and its fill booked. Since look-ups raise on an answer that is
    no order, the submit gave up on it: not listed open, its fill never booked."""
    from alpaca.trading.client import TradingClient

    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    async with running(fake) as broker:
        await broker.submit([buy])
    readable = TradingClient.get_order_by_client_id
    calls = []

    def bad_once(self, *a):
        calls.append(a)
        if len(calls) == 1:
            return {"code": 50010000, "message": "internal error"}
        return readable(self, *a)

    async with running(fake, adopt_open_orders=False) as restarted:
        monkeypatch.setattr(TradingClient, "get_order_by_client_id", bad_once)
        with pytest.raises(RetryableError):
            await restarted.submit([buy])
        fake.fill(buy.client_order_id, price=99.0)
        updates = Updates(restarted)
        await updates.until(lambda u: u.filled(buy.client_order_id) >= 10, timeout=5)
        assert updates.filled(buy.client_order_id) == 10


async def test_updates_without_their_order_ask_for_one_poll_every_two_seconds_at_most(fake):
    """Each update without its order asks for a poll (it may have been a fill). A stream
    repeating one ran full polls (GET /v2/orders?status=all) back to back: 23 in 2 s
    against a periodic check every 5 s, spending the budget orders wait on."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, poll_interval_s=30.0) as broker:
        await broker.submit([order("AAPL", 5, OrderType.LIMIT, limit=90.0)])
        before = len(fake.requests)
        no_order = {"stream": "trade_updates", "data": {"event": "fill", "qty": "5"}}
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # a bad update every 20 ms, for 3 s
            fake._broadcast(no_order)
            await asyncio.sleep(0.02)
        polls = [r for r in fake.requests[before:] if r.method == "GET"]
    assert 1 <= len(polls) <= 3, [r.path for r in polls]


async def test_updates_that_fail_to_apply_are_said_sparsely_and_counted(broker, monkeypatch):
    """An update whose handling raised logged a warning per message, without bound: a
    stream repeating it filled the log. Said at the 1st and 10th, counted each time."""

    def malformed() -> float:
        return SOURCE_ERRORS.labels(source="alpaca_trading", kind="malformed")._value.get()

    def broken(raw, event=None):
        raise ValueError("cannot read it")

    monkeypatch.setattr(broker, "_apply", broken)
    before = malformed()
    update = {"stream": "trade_updates", "data": {"event": "fill", "order": {"id": "x"}}}
    with capture_logs() as logs:
        for _ in range(12):
            broker._handle(update)  # as the stream's consumer hands each message over
    assert malformed() == before + 12
    said = [e for e in logs if e["event"] == "alpaca.update_failed"]
    assert [e["times_so_far"] for e in said] == [1, 10]
    assert "cannot read it" in said[0]["error"]


# ----------------------------------------------------------------------------- keys refused


async def test_keys_refused_mid_run_send_no_order_and_are_said_once_an_outage(fake):
    """Keys revoked mid-run: every bar's orders were sent and each was refused with the 401
    text (REJECTED, a warning an order), bar after bar. The outage is said once (an error);
    while Alpaca refuses the keys no order or cancel is sent: the batch is closed as not
    sent (SubmitCutShort, the RetryableError of a broker that cannot be reached, so the
    engine decides again at the next bar), after one look at the account; once Alpaca
    accepts the keys again, orders go out."""
    fake.set_price("AAPL", 100.0, match=False)
    key = fake.key_id
    async with running(fake) as broker:
        working = order("AAPL", 5, OrderType.LIMIT, tag="working", limit=90.0)
        await broker.submit([working])
        fake.key_id = "PKREVOKED0000000000001"  # every request: 401
        batch = [order("AAPL", 5), order("SPY", 3), order("TSLA", -2)]
        with capture_logs() as logs:
            with pytest.raises(SubmitCutShort, match="refuses the keys") as first:
                await broker.submit(batch)
            assert first.value.answered == []
            assert sorted(o.client_order_id for o in first.value.not_sent) == sorted(
                o.client_order_id for o in batch
            )
            assert all(o.status is OrderStatus.CANCELLED for o in first.value.not_sent)
            posts = len(fake.posted_orders())
            assert posts == 2  # the working order, then the first of the batch: refused
            # The next bars: not sent at all, one look at the account each.
            for n in range(2):
                with pytest.raises(SubmitCutShort, match="not sent"):
                    await broker.submit([order("SPY", 1, tag=f"bar{n}")])
            with pytest.raises(RetryableError, match="refuses the keys"):
                await broker.cancel(working.client_order_id, "test")
            assert len(fake.posted_orders()) == posts
            assert not [r for r in fake.requests if r.method == "DELETE"]
            status = broker.status()
            assert status["connected"] is False
            assert "HTTP 401" in status["keys_refused"]
            assert status["keys_refused_at"] is not None

            fake.key_id = key  # the operator restored the keys
            [ok] = await broker.submit([order("SPY", 1, tag="after")])
            assert ok.status is OrderStatus.NEW
        said = [e for e in logs if e["event"] == "alpaca.keys_refused"]
        assert [(e["log_level"], e["op"]) for e in said] == [("error", "submit_order")]
        assert [e["event"] for e in logs if e["event"] == "alpaca.keys_accepted"] == [
            "alpaca.keys_accepted"
        ]
        assert not [e for e in logs if e["event"] == "alpaca.order.rejected"]
        assert not [e for e in logs if e["log_level"] == "error" and e is not said[0]]
        assert key not in str(logs) and fake.secret_key not in str(logs)
        status = broker.status()
        assert (status["connected"], status["keys_refused"]) == (True, None)


async def test_a_forbidden_order_answer_is_a_keys_outage_until_the_account_answers(fake, broker):
    """403 "forbidden." (no code) is Alpaca's answer to keys it does not know, not an
    order's refusal (those carry a code): taken as the keys refused, the batch not sent;
    the next batch looks at the account first, which answers, and goes out."""
    fake.fail_next_order("forbidden")
    with capture_logs() as logs:
        with pytest.raises(SubmitCutShort, match="forbidden"):
            await broker.submit([order("AAPL", 1)])
        assert "HTTP 403" in broker.status()["keys_refused"]
        [ack] = await broker.submit([order("AAPL", 1, tag="next")])
    assert ack.status is OrderStatus.NEW
    events = [e["event"] for e in logs if e["event"].startswith("alpaca.keys_")]
    assert events == ["alpaca.keys_refused", "alpaca.keys_accepted"]
    assert broker.status()["keys_refused"] is None


# ----------------------------------------------------------------------------- unknown names


async def test_an_unknown_status_or_event_is_taken_as_working_and_said_once_a_name(fake, broker):
    """A status or trade-update event Alpaca's docs do not list ("frobnicated") was taken as
    a working order, nothing said. Still taken so (deliberately: Alpaca adds statuses),
    but said once a name (a warning naming the order and what it is taken as) and counted
    by name in the broker's status."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
    await broker.submit([buy])
    fo = fake.order(buy.client_order_id)
    fo.status = "frobnicated"
    with capture_logs() as logs:
        for _ in range(3):
            fake.push(buy.client_order_id, "frobnicate")

        def counts() -> dict[str, int]:
            return broker.status()["unknown_statuses"]

        await eventually(lambda: counts().get("event frobnicate") == 3)
        await eventually(lambda: counts().get("status frobnicated", 0) >= 3)
    assert [(o.client_order_id, o.status) for o in broker.open_orders()] == [
        (buy.client_order_id, OrderStatus.NEW)
    ]
    [status] = [e for e in logs if e["event"] == "alpaca.unknown_status"]
    [event] = [e for e in logs if e["event"] == "alpaca.unknown_event"]
    assert (status["log_level"], status["name"], status["taken_as"]) == (
        "warning",
        "frobnicated",
        "new",
    )
    assert (status["client_order_id"], status["symbol"]) == (buy.client_order_id, "AAPL")
    assert (event["log_level"], event["name"], event["client_order_id"]) == (
        "warning",
        "frobnicate",
        buy.client_order_id,
    )
    assert "frobnicated" in event["taken_as"]


# ----------------------------------------------------------------------------- retries said


async def test_each_retry_is_said_with_its_attempt_the_answer_and_the_wait(fake, broker):
    """Retried 5xx and 429 answers left no line: a flaky Alpaca showed only as slow orders.
    Each retry is said (info) with the call, the attempt (of how many), the answer and the
    wait; never a key."""
    fake.server_error(2, status=503)
    with capture_logs() as logs:
        [a] = await broker.submit([order("AAPL", 1, tag="r1")])
    fake.throttle(1)
    with capture_logs() as throttled:
        [b] = await broker.submit([order("AAPL", 1, tag="r2")])
    assert [a.status, b.status] == [OrderStatus.NEW] * 2
    retries = [e for e in logs + throttled if e["event"] == "alpaca.retry"]
    assert [(e["op"], e["attempt"], e["of"], e["failure"]) for e in retries] == [
        ("submit_order", 1, 3, "HTTP 503"),
        ("submit_order", 2, 3, "HTTP 503"),
        ("submit_order", 1, 12, "HTTP 429"),
    ]
    assert all(e["log_level"] == "info" and e["wait_s"] == 0.0 for e in retries)
    assert "internal server error (HTTP 503" in retries[0]["error"]
    assert fake.key_id not in str(retries) and fake.secret_key not in str(retries)
