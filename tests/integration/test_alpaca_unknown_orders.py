"""Updates for orders this process never placed (placed by hand in the account after the
start, or by another program on the keys) against the loopback Alpaca
(tests/fakes/alpaca_trading_server.py), through the real alpaca-py clients.

Before, such an update was parked as if its order's POST were still on its way back, for
good: only `unknown_updates` counted it, nothing named it, and the planner did not see the
order working in its symbol. No test sleeps for a fixed time: each waits for a condition."""

from __future__ import annotations

import asyncio
from typing import Any

from fakes.alpaca_trading_server import AlpacaTradingFake
from structlog.testing import capture_logs
from test_alpaca_broker import Updates, eventually, order, running

from tradingd.brokers.alpaca import AlpacaBroker
from tradingd.core.types import OrderStatus, OrderType, Side


def _by_hand(fake: AlpacaTradingFake, symbol: str, client_id: str) -> Any:
    return fake._create(
        {
            "symbol": symbol,
            "qty": "5",
            "side": "buy",
            "type": "limit",
            "limit_price": "99",
            "time_in_force": "gtc",
            "client_order_id": client_id,
        }
    )


async def new_run(broker: AlpacaBroker) -> None:
    """The engine of a new run goes on without `resume` (its first bar): until then an
    update of an order not known may be one of a checkpoint's and is not sorted (see
    test_alpaca_resume.py)."""
    await Updates(broker).bar()


def _said(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "alpaca.unknown_order_update"]


async def test_an_order_placed_by_hand_after_the_start_is_said_and_followed_as_another_s(
    fake: AlpacaTradingFake,
):
    with capture_logs() as logs:
        async with running(fake) as broker:
            await new_run(broker)
            fake.set_price("AAPL", 100.0, match=False)
            placed = _by_hand(fake, "AAPL", "by-hand-1")
            await eventually(lambda: bool(_said(logs)))
            [said] = _said(logs)
            assert said["log_level"] == "warning"
            assert {k: said[k] for k in ("alpaca_id", "client_order_id", "symbol")} == {
                "alpaca_id": placed.id,
                "client_order_id": "by-hand-1",
                "symbol": "AAPL",
            }
            assert (said["side"], said["quantity"], said["status"]) == ("buy", 5.0, "new")
            assert said["followed_as"] == "by-hand-1"
            # Listed as working, so the planner places no entry in AAPL while it works.
            [working] = broker.open_orders()
            assert (working.client_order_id, working.symbol, working.side) == (
                "by-hand-1",
                "AAPL",
                Side.BUY,
            )
            assert working.status.is_open
            assert broker.status()["foreign_orders_found"] == 1
            # Followed: its fill is reported under its own id (the engine books it as no
            # fill of the run's: broker.foreign_fill), and said no more.
            fake.fill("by-hand-1", price=99.0, qty=2)
            updates = Updates(broker)
            await updates.until(lambda u: u.filled("by-hand-1") >= 2)
            assert broker.open_orders()[0].status is OrderStatus.PARTIALLY_FILLED
    assert len(_said(logs)) == 1
    assert fake.secret_key not in str(said) and fake.key_id not in str(said)


async def test_an_order_outside_the_universe_is_said_once_and_left_alone(
    fake: AlpacaTradingFake,
):
    with capture_logs() as logs:
        async with running(fake) as broker:
            await new_run(broker)
            fake.set_price("MSFT", 100.0, match=False)
            _by_hand(fake, "MSFT", "by-hand-2")
            await eventually(lambda: bool(_said(logs)))
            fake.fill("by-hand-2", price=99.0, qty=5)
            await eventually(lambda: broker.status()["unknown_updates"] >= 2)
            await asyncio.sleep(0)
            assert broker.open_orders() == []
            updates = Updates(broker)
            await updates.bar()
            assert updates.fills == []
    [said] = _said(logs)
    assert (said["symbol"], said["followed_as"]) == ("MSFT", None)
    assert "outside this run's universe" in said["rule"]


async def test_an_update_of_our_own_order_before_its_answer_is_not_taken_for_another_s(
    fake: AlpacaTradingFake,
):
    with capture_logs() as logs:
        async with running(fake) as broker:
            buy = order("AAPL", 5, OrderType.LIMIT, limit=100.0)
            fake.delay_next(0.5)  # processed at once, answered late
            task = asyncio.create_task(broker.submit([buy]))
            await eventually(lambda: bool(fake.orders_with_client_id(buy.client_order_id)))
            fake.fill(buy.client_order_id, price=99.5)
            # The update is parked, a poll asked for and made while the POST is unanswered.
            await eventually(lambda: broker.status()["unknown_updates"] >= 1)
            [ack] = await task
            assert ack.status is OrderStatus.FILLED
            updates = Updates(broker)
            await updates.until(lambda u: u.filled(buy.client_order_id) >= 5)
            assert broker.status()["foreign_orders_found"] == 0
    assert _said(logs) == []


async def test_orders_found_mid_run_are_handed_to_the_engine_once(fake: AlpacaTradingFake):
    """The engine's `broker.foreign_open_orders` alert looked at the orders open at the
    start only: one placed by hand mid-run was a warning of the broker's and a counter.
    The broker hands each such order over once (`take_foreign_orders`), and says one came
    (`foreign_found`), in the universe or not; its own orders never."""
    async with running(fake) as broker:
        await new_run(broker)
        assert broker.take_foreign_orders() == []
        buy = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
        await broker.submit([buy])
        fake.set_price("AAPL", 100.0, match=False)
        fake.set_price("MSFT", 100.0, match=False)
        inside = _by_hand(fake, "AAPL", "by-hand-3")
        await asyncio.wait_for(broker.foreign_found.wait(), 5.0)
        outside = _by_hand(fake, "MSFT", "by-hand-4")
        await eventually(lambda: broker.status()["foreign_orders_found"] == 2)
        taken = broker.take_foreign_orders()
        assert not broker.foreign_found.is_set()
        assert [
            (o.alpaca_id, o.client_order_id, o.symbol, o.side, o.quantity, o.in_universe)
            for o in taken
        ] == [
            (inside.id, "by-hand-3", "AAPL", "buy", 5.0, True),
            (outside.id, "by-hand-4", "MSFT", "buy", 5.0, False),
        ]
        assert [(o.status, o.followed) for o in taken] == [("new", True), ("new", False)]
        fake.fill("by-hand-3", price=99.0)
        await Updates(broker).until(lambda u: u.filled("by-hand-3") == 5)
        assert broker.take_foreign_orders() == []  # handed over once
        assert not broker.foreign_found.is_set()
