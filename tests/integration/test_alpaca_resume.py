"""Restart safety of the Alpaca broker (issue 9): `AlpacaBroker.resume(known_open,
unconfirmed)` against the loopback Alpaca (tests/fakes/alpaca_trading_server.py), driven
through the real alpaca-py clients, the way tests/integration/test_alpaca_broker.py does.

A "crash" is a broker that stops and is forgotten: whatever it had not handed to the engine
is gone. The engine's checkpoint is what `open_orders()` listed after the last booked update
(`known_open`), and the intents stored after it are `unconfirmed`. Each test fails when
`resume` does nothing: the executions of the gap are then never reported, or reported from
the wrong baseline. No test sleeps for a fixed time: each waits for a condition."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake
from structlog.testing import capture_logs

from tradingd.brokers.alpaca import AlpacaBroker, AlpacaBrokerConfig
from tradingd.core.errors import RetryableError
from tradingd.core.orders import bracket_orders
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

RUN = "res"
T0 = datetime(2024, 1, 2, 16, 0, tzinfo=UTC)
SYMS = ("AAPL", "SPY", "TSLA")
_EMPTY = np.array([], dtype=float)
BAR = CrossSection(T0, _EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY)


def limit_buy(
    fake: AlpacaTradingFake, symbol: str, qty: int, limit: int, client_id: str, tif: str = "gtc"
) -> Any:
    """A limit buy placed in the account directly (by hand, or by a run that is down)."""
    return fake._create(
        {
            "symbol": symbol,
            "qty": str(qty),
            "side": "buy",
            "type": "limit",
            "limit_price": str(limit),
            "time_in_force": tif,
            "client_order_id": client_id,
        }
    )


def order(
    symbol: str,
    signed_qty: float,
    kind: OrderType = OrderType.MARKET,
    *,
    tag: str = "entry",
    limit: float | None = None,
) -> Order:
    return Order(
        client_order_id=client_order_id(RUN, T0, symbol, tag),
        symbol=symbol,
        side=Side.BUY if signed_qty > 0 else Side.SELL,
        quantity=abs(signed_qty),
        created_at=T0,
        type=kind,
        limit_price=limit,
        leg=Leg.ENTRY,
    )


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until(), timeout)


class Booked:
    """What an engine booked from a broker: every fill and order update it handed over."""

    def __init__(self, broker: AlpacaBroker) -> None:
        self.broker = broker
        self.fills: list[Fill] = []
        self.orders: list[Order] = []

    async def bar(self) -> None:
        update = await self.broker.on_bar(BAR)
        self.fills.extend(update.fills)
        self.orders.extend(update.orders)

    async def until(self, pred: Callable[[Booked], bool], timeout: float = 5.0) -> None:
        async def run() -> None:
            while True:
                await self.bar()
                if pred(self):
                    return
                await asyncio.sleep(0.005)

        await asyncio.wait_for(run(), timeout)

    async def settle(self, rounds: int = 5) -> None:
        """A few more bars (with a poll each, the stream being quiet), to catch doubles."""
        for _ in range(rounds):
            await self.broker.poll()
            await self.bar()

    def filled(self, cid: str) -> float:
        return sum(f.quantity for f in self.fills if f.client_order_id == cid)

    def last(self, cid: str) -> Order | None:
        found = [o for o in self.orders if o.client_order_id == cid]
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
async def running(fake: AlpacaTradingFake, **overrides: Any) -> AsyncIterator[AlpacaBroker]:
    broker = AlpacaBroker(config(fake, **overrides), (fake.key_id, fake.secret_key), SYMS)
    await broker.start()
    client = broker.trading_client
    assert client is not None
    client._retry_wait = 0  # tests only: alpaca-py sleeps 3 s before its own retries
    try:
        await eventually(lambda: broker.status()["stream"] == "up")
        yield broker
    finally:
        await broker.stop()


def checkpoint(broker: AlpacaBroker) -> list[Order]:
    """What the engine's checkpoint stores for a broker that keeps its own book."""
    return broker.open_orders()


def orders_at(fake: AlpacaTradingFake, cid: str) -> int:
    return len(fake.orders_with_client_id(cid))


def posts_of(fake: AlpacaTradingFake, cid: str) -> int:
    return sum(1 for b in fake.posted_orders() if b.get("client_order_id") == cid)


# ----------------------------------------------------------------------------- known open


async def test_an_order_known_open_that_filled_while_down_is_reported_once(fake):
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    async with running(fake) as before:
        await before.submit([buy])
        known = checkpoint(before)
    assert [(o.client_order_id, o.filled_quantity) for o in known] == [(buy.client_order_id, 0)]

    fake.fill(buy.client_order_id, price=99.0)  # while the daemon is down

    async with running(fake) as after:
        assert after.open_orders() == []  # filled: nothing open to adopt
        with capture_logs() as logs:
            await after.resume(known, [])
        booked = Booked(after)
        await booked.until(lambda b: b.filled(buy.client_order_id) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price, f.side) for f in booked.fills] == [
            (f"{buy.client_order_id}#10", 10, 99.0, Side.BUY)
        ]
        assert booked.last(buy.client_order_id).status is OrderStatus.FILLED
        assert after.open_orders() == []
    rules = [e for e in logs if e["event"] == "alpaca.reconcile.executed_since_checkpoint"]
    assert [(e["client_order_id"], e["quantity"]) for e in rules] == [(buy.client_order_id, 10)]
    assert orders_at(fake, buy.client_order_id) == 1


@pytest.mark.parametrize("still_open", [False, True], ids=["closed", "adopted_open"])
async def test_a_partly_booked_order_reports_only_what_the_book_lacks(fake, still_open):
    """Booked 3 of 10 before the crash. Closed: 10 filled at Alpaca now, one fill of 7.
    Still open (adopted by start with 6 filled): one fill of 3 now, then 4 at the end."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with running(fake) as before:
        await before.submit([buy])
        fake.fill(cid, price=99.0, qty=3)
        booked = Booked(before)
        await booked.until(lambda b: b.filled(cid) == 3)
        known = checkpoint(before)
    assert [(o.filled_quantity, o.status) for o in known] == [(3, OrderStatus.PARTIALLY_FILLED)]

    if still_open:
        fake.fill(cid, price=98.0, qty=3)  # 6 of 10, at 98: cumulative average 98.5
    else:
        fake.fill(cid, price=99.7)  # the last 7 at 99.7

    async with running(fake) as after:
        if still_open:
            [adopted] = after.open_orders()
            assert adopted.filled_quantity == 6  # as it stands, until resume says otherwise
        await after.resume(known, [])
        booked = Booked(after)
        await booked.until(lambda b: b.filled(cid) > 0)
        await booked.settle()
        if still_open:
            assert [(f.fill_id, f.quantity) for f in booked.fills] == [(f"{cid}#6", 3)]
            assert math.isclose(booked.fills[0].price, 98.0)
            [working] = after.open_orders()
            assert (working.filled_quantity, working.status) == (
                6,
                OrderStatus.PARTIALLY_FILLED,
            )
            fake.fill(cid, price=97.0)
            await booked.until(lambda b: b.filled(cid) == 7)
            await booked.settle()
            assert [(f.fill_id, f.quantity) for f in booked.fills] == [
                (f"{cid}#6", 3),
                (f"{cid}#10", 4),
            ]
        else:
            assert [(f.fill_id, f.quantity) for f in booked.fills] == [(f"{cid}#10", 7)]
            assert math.isclose(booked.fills[0].price, 99.7)
        assert booked.last(cid).status is OrderStatus.FILLED
        assert after.open_orders() == []


async def test_a_bracket_whose_take_profit_filled_while_down(fake):
    fake.set_price("AAPL", 100.0, match=False)
    entry, tp, sl = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    async with running(fake) as before:
        await before.submit([entry, tp, sl])
        fake.fill(entry.client_order_id, price=100.0)
        booked = Booked(before)
        await booked.until(
            lambda b: (o := b.last(sl.client_order_id)) is not None and o.status is OrderStatus.NEW
        )
        known = checkpoint(before)
    assert {o.client_order_id: o.status for o in known} == {
        tp.client_order_id: OrderStatus.NEW,
        sl.client_order_id: OrderStatus.NEW,
    }

    fake.set_price("AAPL", 111.0)  # the take-profit fills, Alpaca cancels the stop-loss
    legs = {fake.orders[i].type: fake.orders[i] for i in fake.order(entry.client_order_id).leg_ids}
    assert (legs["limit"].status, legs["stop"].status) == ("filled", "canceled")

    async with running(fake) as after:
        await after.resume(known, [])
        booked = Booked(after)
        await booked.until(
            lambda b: (o := b.last(sl.client_order_id)) is not None and not o.status.is_open
        )
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price, f.side) for f in booked.fills] == [
            (f"{tp.client_order_id}#10", 10, 111.0, Side.SELL)
        ]
        assert booked.last(tp.client_order_id).status is OrderStatus.FILLED
        assert booked.last(sl.client_order_id).status is OrderStatus.CANCELLED
        assert after.open_orders() == []
        # The legs are followed under the engine's ids, with the engine's description.
        leg = after.order(tp.client_order_id)
        assert (leg.leg, leg.parent_id, leg.created_at) == (
            Leg.TAKE_PROFIT,
            entry.client_order_id,
            T0,
        )


# ----------------------------------------------------------------------------- unconfirmed


async def test_an_intent_that_reached_alpaca_and_filled_is_reported_and_not_sent_again(fake):
    fake.set_price("SPY", 500.0, match=False)
    buy = order("SPY", 4)
    cid = buy.client_order_id
    async with running(fake) as before:
        await before.submit([buy])  # the process dies before the acknowledgement is stored
    fake.fill(cid, price=501.0)
    assert posts_of(fake, cid) == 1

    async with running(fake) as after:
        with capture_logs() as logs:
            await after.resume([], [buy])
        booked = Booked(after)
        await booked.until(lambda b: b.filled(cid) > 0)
        # The engine decides the interrupted bar again and resubmits the same order.
        [ack] = await after.submit([buy])
        await booked.settle()
        assert (ack.status, ack.filled_quantity) == (OrderStatus.FILLED, 4)
        assert [(f.fill_id, f.quantity, f.price) for f in booked.fills] == [(f"{cid}#4", 4, 501.0)]
        assert booked.last(cid).status is OrderStatus.FILLED  # its row is stored again
    assert posts_of(fake, cid) == 1  # no second POST
    assert orders_at(fake, cid) == 1
    assert any(e["event"] == "alpaca.reconcile.placed_before_crash" for e in logs)


async def test_an_intent_that_never_reached_alpaca_is_placed_once_on_resubmit(fake):
    fake.set_price("SPY", 500.0, match=False)
    fake.set_price("TSLA", 200.0, match=False)
    first = order("SPY", 2, OrderType.LIMIT, limit=500.0)
    late = order("TSLA", 5, OrderType.LIMIT, limit=200.0)
    async with running(fake) as after:
        with capture_logs() as logs:
            await after.resume([], [first, late])

        # The first send of an id Alpaca did not have: one POST, one order, fills from zero.
        [ack] = await after.submit([first])
        assert ack.status is OrderStatus.NEW
        assert posts_of(fake, first.client_order_id) == 1
        assert orders_at(fake, first.client_order_id) == 1
        booked = Booked(after)
        fake.fill(first.client_order_id, price=499.0)
        await booked.until(lambda b: b.filled(first.client_order_id) == 2)

        # The dead process's POST arrives after the lookup (it was still on the wire) and
        # executes: the resubmit meets a 422 duplicate. The id was not at Alpaca when this
        # process resumed, so that order is this run's own intent and none of its
        # executions is booked: all of them are reported.
        limit_buy(fake, "TSLA", 5, 200, late.client_order_id, tif="day")
        fake.fill(late.client_order_id, price=199.5)
        [ack] = await after.submit([late])
        assert (ack.status, ack.filled_quantity) == (OrderStatus.FILLED, 5)
        await booked.until(lambda b: b.filled(late.client_order_id) == 5)
        await booked.settle()
        assert sorted((f.fill_id, f.quantity) for f in booked.fills) == [
            (f"{first.client_order_id}#2", 2),
            (f"{late.client_order_id}#5", 5),
        ]
    assert orders_at(fake, late.client_order_id) == 1
    assert posts_of(fake, late.client_order_id) == 1  # answered 422: no second order
    never = {e["client_order_id"] for e in logs if e["event"] == "alpaca.reconcile.never_sent"}
    assert never == {first.client_order_id, late.client_order_id}


async def test_a_stored_row_that_is_not_an_intent_is_not_reported_again(fake):
    """The engine stores what this broker reports, adopted orders included, at Alpaca's
    time: such a row after the checkpoint is not an intent. Following it from nothing
    filled would book again what it filled; only the real intent is reported."""
    fake.set_price("TSLA", 200.0, match=False)
    foreign = limit_buy(fake, "TSLA", 3, 200, "placed-by-hand-2")
    fake.fill(foreign.client_order_id, price=199.0)
    row = Order(
        client_order_id=foreign.client_order_id,
        symbol="TSLA",
        side=Side.BUY,
        quantity=3,
        created_at=foreign.created_at,  # Alpaca's time: the engine stored the broker's report
        type=OrderType.LIMIT,
        limit_price=200.0,
        status=OrderStatus.FILLED,
        filled_quantity=3,
    )
    buy = order("TSLA", 2)
    async with running(fake) as before:
        await before.submit([buy])
    fake.fill(buy.client_order_id, price=200.5)

    async with running(fake) as after:
        with capture_logs() as logs:
            await after.resume([], [row, buy])
        booked = Booked(after)
        await booked.until(lambda b: b.filled(buy.client_order_id) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity) for f in booked.fills] == [(f"{buy.client_order_id}#2", 2)]
    [skipped] = [e for e in logs if e["event"] == "alpaca.reconcile.not_an_intent"]
    assert skipped["client_order_id"] == foreign.client_order_id


# ----------------------------------------------------------------------------- unknown


async def test_an_open_order_neither_known_nor_intended_is_adopted_with_a_warning(fake):
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("TSLA", 200.0, match=False)
    ours = order("AAPL", 1, OrderType.LIMIT, limit=90.0)
    async with running(fake) as before:
        await before.submit([ours])
        known = checkpoint(before)
    # Placed by hand in the same account while the daemon was down.
    by_hand = limit_buy(fake, "TSLA", 3, 150, "placed-by-hand-1")

    async with running(fake) as after:
        with capture_logs() as logs:
            await after.resume(known, [])
        warnings = [e for e in logs if e["event"] == "alpaca.reconcile.unknown_order"]
        assert [(e["client_order_id"], e["log_level"]) for e in warnings] == [
            (by_hand.client_order_id, "warning")
        ]
        assert after.status()["unknown_orders"] == 1
        # Kept as adopted: working, so the planner sees it.
        assert {o.client_order_id for o in after.open_orders()} == {
            ours.client_order_id,
            by_hand.client_order_id,
        }
        booked = Booked(after)
        await booked.settle(2)
        assert booked.fills == [] and booked.orders == []  # nothing changed, nothing reported


def sorting(broker: AlpacaBroker, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The parked updates' orders each pass of the poller sorted (or held), as they come."""
    passes: list[list[str]] = []
    sort = broker._sort_orphans

    def spy(parked: Any) -> bool:
        passes.append(list(parked))
        return sort(parked)

    monkeypatch.setattr(broker, "_sort_orphans", spy)
    return passes


@pytest.mark.parametrize("adopt", [False, True], ids=["adopt_off", "adopt_on"])
async def test_an_update_of_a_checkpoint_order_before_resume_is_not_taken_for_another_s(
    fake, monkeypatch, adopt
):
    """With `adopt_open_orders = false`, an order of the checkpoint is not followed between
    `start` and `resume` (the engine's warm-up: minutes): a stream update for it then was
    parked, sorted at the poller's next pass as no order of this process's (an
    `alpaca.unknown_order_update` warning, counted in `foreign_orders_found`) and its
    updates dropped, before `resume` linked it. Such updates wait until `resume` has
    decided; they are then the order's. With adoption on, the order is followed from the
    start; an order placed by hand meanwhile is sorted once `resume` is done."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("TSLA", 200.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with running(fake) as before:
        await before.submit([buy])
        known = checkpoint(before)
    async with running(fake, adopt_open_orders=adopt) as after:
        passes = sorting(after, monkeypatch)
        with capture_logs() as logs:
            fake.fill(cid, price=99.0, qty=4)  # the stream says it at once
            by_hand = limit_buy(fake, "TSLA", 3, 150, "by-hand-meanwhile")
            parked = {by_hand.id} | (set() if adopt else {fake.order(cid).id})
            # The poller's passes after each update was parked.
            await eventually(lambda: parked <= {aid for p in passes for aid in p})
            assert [e for e in logs if e["event"] == "alpaca.unknown_order_update"] == []
            assert after.status()["foreign_orders_found"] == 0
            await after.resume(known, [])
            booked = Booked(after)
            await booked.until(lambda b: b.filled(cid) == 4)
            await eventually(lambda: after.status()["foreign_orders_found"] == 1)
            await booked.settle()
        said = [e for e in logs if e["event"] == "alpaca.unknown_order_update"]
        assert [e["client_order_id"] for e in said] == [by_hand.client_order_id]
        assert after.status()["foreign_orders_found"] == 1
        assert [(f.fill_id, f.quantity) for f in booked.fills] == [(f"{cid}#4", 4)]
        assert cid in {o.client_order_id for o in after.open_orders()}


async def test_a_run_without_a_checkpoint_sorts_unknown_orders_once_the_engine_goes_on(
    fake, monkeypatch
):
    """A new run gets no `resume`: the first call of the engine that means it has gone on
    without one (a bar's `updates`, `positions`, a submit, a cancel, an order check) ends
    the wait, and an order placed by hand meanwhile is said and followed as another's."""
    fake.set_price("TSLA", 200.0, match=False)
    async with running(fake) as broker:
        passes = sorting(broker, monkeypatch)
        with capture_logs() as logs:
            placed = limit_buy(fake, "TSLA", 3, 150, "by-hand-new-run")
            await eventually(lambda: any(placed.id in p for p in passes))
            assert broker.status()["foreign_orders_found"] == 0
            await broker.positions()  # the engine's first reconciliation, before its first bar
            await eventually(lambda: broker.status()["foreign_orders_found"] == 1)
        [said] = [e for e in logs if e["event"] == "alpaca.unknown_order_update"]
        assert said["followed_as"] == "by-hand-new-run"
        assert [o.client_order_id for o in broker.open_orders()] == ["by-hand-new-run"]


# ----------------------------------------------------------------------------- the book


async def test_open_orders_show_what_the_engine_booked_until_it_is_handed_over(fake):
    """A fill that arrives between two bars is not in the book yet: the order is still
    listed as working with what was booked, so the planner does not buy again and a
    checkpoint taken now makes a restarted process report the fill."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with running(fake) as before:
        await before.submit([buy])
        fake.fill(cid, price=99.0)
        await eventually(lambda: before.order(cid).status is OrderStatus.FILLED)
        [listed] = before.open_orders()
        assert (listed.client_order_id, listed.status, listed.filled_quantity) == (
            cid,
            OrderStatus.NEW,
            0,
        )
        known = checkpoint(before)  # the process dies here, the fill not handed over
    async with running(fake) as after:
        await after.resume(known, [])
        booked = Booked(after)
        await booked.until(lambda b: b.filled(cid) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity) for f in booked.fills] == [(f"{cid}#10", 10)]
        assert after.open_orders() == []


# ----------------------------------------------------------------------------- failures


async def test_resume_raises_retryable_when_alpaca_cannot_be_reached_and_can_be_retried(fake):
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 1, OrderType.LIMIT, limit=90.0)
    async with running(fake) as before:
        await before.submit([buy])
    fake.fill(buy.client_order_id, price=89.0)
    async with running(fake) as after:
        fake.server_error(10)  # more than the attempts of one call
        with pytest.raises(RetryableError):
            await after.resume([], [buy])
        fake._http_faults.clear()  # Alpaca is back
        await after.resume([], [buy])  # nothing was changed: resuming again is safe
        booked = Booked(after)
        await booked.until(lambda b: b.filled(buy.client_order_id) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity) for f in booked.fills] == [(f"{buy.client_order_id}#1", 1)]
        with pytest.raises(RuntimeError):
            await after.resume([], [buy])


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"code": 50010000, "message": "internal error"}, ": the answer has no id"),
        (["AAPL"], " is a list, not an object"),
        (None, " is a NoneType, not an object"),
    ],
)
async def test_a_lookup_answer_that_cannot_be_read_is_retryable_not_an_order_alpaca_lacks(
    fake, monkeypatch, answer, named
):
    """GET /v2/orders:by_client_order_id answering something that is no order (an error
    body, a list, null) read as "Alpaca has no such order": an order known open at the
    checkpoint that filled while the daemon was down was closed as cancelled, "not found
    after restart (HTTP 404)", and its 10 shares were never booked (an unconfirmed intent
    was closed as never placed, and the next bar could place it a second time). It is a
    malformed answer: `resume` raises RetryableError having changed nothing, and books the
    fill once Alpaca answers."""
    from alpaca.trading.client import TradingClient

    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with running(fake) as before:
        await before.submit([buy])
        known = checkpoint(before)
    fake.fill(cid, price=99.0)  # while the daemon is down: not open, looked up at resume

    readable = TradingClient.get_order_by_client_id
    async with running(fake) as after:
        monkeypatch.setattr(TradingClient, "get_order_by_client_id", lambda self, *a: answer)
        pattern = r"\(malformed\): get_order_by_client_id: unreadable answer: " + re.escape(
            f"order {cid}{named}"
        )
        with capture_logs() as logs, pytest.raises(RetryableError, match=pattern):
            await after.resume(known, [])
        assert not [e for e in logs if e["event"].startswith("alpaca.reconcile.")]
        assert f"order {cid}{named}" in after.status()["last_error"]

        monkeypatch.setattr(TradingClient, "get_order_by_client_id", readable)
        await after.resume(known, [])  # nothing was changed: resuming again is safe
        booked = Booked(after)
        await booked.until(lambda b: b.filled(cid) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price) for f in booked.fills] == [(f"{cid}#10", 10, 99.0)]
        assert booked.last(cid).status is OrderStatus.FILLED


async def test_a_lookup_answer_without_a_timestamp_is_retryable_not_a_crash(fake, monkeypatch):
    """An order known open at the checkpoint that filled while the daemon was down, looked
    up at the restart, came without a readable submitted_at or created_at: `resume` raised
    a plain ValueError, which stopped the daemon. It is a malformed answer naming the order
    and the fields: `resume` raises RetryableError having changed nothing, and books the
    fill once Alpaca answers readably."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with running(fake) as before:
        await before.submit([buy])
        known = checkpoint(before)
    fake.fill(cid, price=99.0)  # while the daemon is down: not open, looked up at resume
    aid = fake.order(cid).id
    garbled = [True]
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        if o.id == aid and garbled[0]:
            body["submitted_at"], body["created_at"], body["updated_at"] = None, "", None
        return body

    monkeypatch.setattr(fake, "_json", answer)
    named = (
        f"order {aid} ({cid}): no readable submitted_at or created_at "
        "(submitted_at None, created_at '', updated_at None)"
    )
    async with running(fake) as after:
        pattern = r"\(malformed\): get_order_by_client_id: unreadable answer: " + re.escape(named)
        with capture_logs() as logs, pytest.raises(RetryableError, match=pattern):
            await after.resume(known, [])
        assert not [e for e in logs if e["event"].startswith("alpaca.reconcile.")]
        assert named in after.status()["last_error"]

        garbled[0] = False
        await after.resume(known, [])  # nothing was changed: resuming again is safe
        booked = Booked(after)
        await booked.until(lambda b: b.filled(cid) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price) for f in booked.fills] == [(f"{cid}#10", 10, 99.0)]
        assert booked.last(cid).status is OrderStatus.FILLED


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"code": 50010000, "message": "internal error"}, ": the answer's id is None"),
        (["AAPL"], " is a list, not an object"),
    ],
)
async def test_an_edit_chain_answer_that_cannot_be_read_is_retryable_not_the_end_of_it(
    fake, monkeypatch, answer, named
):
    """At a restart the chain of edits of an adopted replacement is read back to ours (its
    `origin`). An order of it answered as something that is no order ended the chain there:
    the replacement stood for nobody of this run, and its fills were no longer the run's.
    It is a malformed answer: `resume` raises RetryableError having changed nothing, and
    finds the origin once Alpaca answers."""
    from alpaca.trading.client import TradingClient

    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
    async with running(fake) as before:
        await before.submit([buy])
        new = fake.replace(buy.client_order_id, limit_price=97.0)
        await eventually(lambda: before.order(new.client_order_id) is not None)
        await Booked(before).bar()  # ours, closed as replaced, is handed over
        known = checkpoint(before)
    # Only the chain leads from the replacement back to ours.
    assert [o.client_order_id for o in known] == [new.client_order_id]
    first = fake.order(buy.client_order_id).id
    readable = TradingClient.get_order_by_id
    async with running(fake) as after:
        monkeypatch.setattr(TradingClient, "get_order_by_id", lambda self, *a, **kw: answer)
        pattern = r"\(malformed\): get_order: unreadable answer: " + re.escape(
            f"order {first}{named}"
        )
        with pytest.raises(RetryableError, match=pattern):
            await after.resume(known, [])
        monkeypatch.setattr(TradingClient, "get_order_by_id", readable)
        await after.resume(known, [])
        assert after.origin(new.client_order_id) == buy.client_order_id
        fake.fill(new.client_order_id, price=97.0)
        booked = Booked(after)
        await booked.until(lambda b: b.filled(new.client_order_id) == 10)


async def test_positions_are_alpacas_signed_quantities(fake):
    fake.set_position("AAPL", 7, 100.0)
    fake.allow_short = True
    fake.set_position("TSLA", -2, 200.0)
    async with running(fake) as broker:
        assert await broker.positions() == {"AAPL": 7.0, "TSLA": -2.0}


@pytest.mark.parametrize("edits", [1, 2])
@pytest.mark.parametrize("filled", [10.0, 4.0])
async def test_an_order_replaced_while_down_is_followed_through_its_replacement(
    fake, filled, edits
):
    """An operator edited the daemon's order in Alpaca's web UI while the daemon was down:
    an open replacement was adopted as it stood (its fills never booked, warned as another
    run's order), a filled one was never seen; the book and Alpaca held different
    positions."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
    async with running(fake) as before:
        await before.submit([buy])
        known = checkpoint(before)
    new = fake.replace(buy.client_order_id, limit_price=99.0 if edits == 1 else 97.0)
    if edits == 2:  # edited twice: the chain is followed to its last order
        new = fake.replace(new.client_order_id, limit_price=99.0)
    fake.fill(new.client_order_id, price=99.0, qty=filled)
    async with running(fake) as after:
        with capture_logs() as logs:
            await after.resume(known, [])
            booked = Booked(after)
            await booked.settle(rounds=10)
    assert booked.filled(new.client_order_id) == filled
    assert booked.filled(buy.client_order_id) == 0
    assert "alpaca.order.replaced" in [e["event"] for e in logs]
    assert "alpaca.reconcile.unknown_order" not in [e["event"] for e in logs]


async def test_an_edited_order_of_ours_known_at_the_checkpoint_is_still_ours_after_a_restart(
    fake,
):
    """The replacement of an order edited at Alpaca has Alpaca's client id, not the run's:
    the engine books its fills as the run's only through `origin`. Followed live, it is in
    the checkpoint under that id; after a restart only its chain of `replaces` leads back
    to ours (edited twice here), and without it its fills were no longer the run's."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
    async with running(fake) as before:
        await before.submit([buy])
        new = fake.replace(buy.client_order_id, limit_price=97.0)
        new = fake.replace(new.client_order_id, limit_price=99.0)
        await eventually(lambda: before.order(new.client_order_id) is not None)
        assert before.origin(new.client_order_id) == buy.client_order_id
        known = checkpoint(before)
    assert new.client_order_id in [o.client_order_id for o in known]
    async with running(fake) as after:
        await after.resume(known, [])
        assert after.origin(new.client_order_id) == buy.client_order_id
        fake.fill(new.client_order_id, price=99.0)
        booked = Booked(after)
        await booked.until(lambda b: b.filled(new.client_order_id) == 10)
