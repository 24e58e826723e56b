"""Alpaca answers that contradict the order they describe, or that cannot be read, through
the real alpaca-py client against the loopback Alpaca (tests/fakes/alpaca_trading_server.py):
a fill above the quantity sent, another quantity, another symbol or side, an account whose
cash is no number.

No test sleeps for a fixed time: each waits for a condition, with a timeout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake, running_fake
from structlog.testing import capture_logs
from test_account_cash import _live as live_config
from test_alpaca_broker import Updates, eventually, order, running

from tradingd.app import build_engine
from tradingd.core.errors import RetryableError
from tradingd.core.types import OrderStatus, OrderType


def garble(
    fake: AlpacaTradingFake, monkeypatch: pytest.MonkeyPatch, ref: str, **fields: Any
) -> Callable[[], None]:
    """Every answer for order `ref` (POST, polls, look-ups, stream events) carries `fields`
    instead of the fake's own; returns a function that ends it."""
    target = fake.order(ref).id
    readable = fake._json
    on = [True]

    def answer(o: Any, nested: bool) -> dict[str, Any]:
        body = readable(o, nested)
        if o.id == target and on[0]:
            body.update(fields)
        return body

    monkeypatch.setattr(fake, "_json", answer)
    return lambda: on.__setitem__(0, False)


def mismatches(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "alpaca.order_answer_mismatch"]


# ----------------------------------------------------------------------------- quantities


async def test_a_fill_above_the_quantity_sent_is_booked_up_to_it_and_said(fake, monkeypatch):
    """A 5-share order whose answers said filled_qty "50": the broker booked a fill of 50
    (an info `alpaca.fill` only), ten times what the run ordered. It books the 5 sent, says
    the rest (`alpaca.order_answer_mismatch`, an error naming the order, sent and
    answered), once, and leaves the difference to reconciliation."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 5)
        cid = buy.client_order_id
        await broker.submit([buy])
        garble(fake, monkeypatch, cid, filled_qty="50")
        with capture_logs() as logs:
            fake.fill(cid, price=100.0)
            await up.until(lambda u: u.last(cid) is not None and not u.last(cid).status.is_open)
            for _ in range(3):  # read again: said once
                await broker.poll()
                await up.bar()
        assert [(f.fill_id, f.quantity, f.price) for f in up.fills] == [(f"{cid}#5", 5.0, 100.0)]
        assert up.last(cid).status is OrderStatus.FILLED
        assert up.last(cid).filled_quantity == 5.0
        [line] = mismatches(logs)
        assert line["log_level"] == "error"
        assert (line["client_order_id"], line["field"], line["sent"], line["answered"]) == (
            cid,
            "filled_qty",
            "5",
            "50",
        )
        assert "reconciliation" in line["rule"]
        assert broker.status()["answer_mismatches"] == 1
        assert broker.open_orders() == []


async def test_an_answer_with_another_quantity_does_not_change_the_order(fake, monkeypatch):
    """An answer saying qty "500" for a 5-share order silently made the followed order a
    500-share one (the planner and the checkpoint saw 500 working). The quantity sent stays,
    the answer is said, and the order's real fill is booked as usual."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        up = Updates(broker)
        buy = order("AAPL", 5, OrderType.LIMIT, limit=99.0)
        cid = buy.client_order_id
        garbled = False
        with capture_logs() as logs:
            await broker.submit([buy])
            garble(fake, monkeypatch, cid, qty="500")
            garbled = True
            await broker.poll()
            await up.bar()
            assert [(o.client_order_id, o.quantity) for o in broker.open_orders()] == [(cid, 5)]
            assert broker.order(cid).quantity == 5
            fake.fill(cid, price=99.0)
            await up.until(lambda u: u.filled(cid) > 0)
            await broker.poll()
        assert garbled
        assert [(f.quantity, f.price) for f in up.fills] == [(5.0, 99.0)]
        assert up.last(cid).status is OrderStatus.FILLED and up.last(cid).quantity == 5
        [line] = mismatches(logs)
        assert (line["client_order_id"], line["field"], line["sent"], line["answered"]) == (
            cid,
            "qty",
            "5",
            "500",
        )


async def test_an_order_alpaca_cuts_down_is_followed_at_its_quantity_not_refused(fake, monkeypatch):
    """Alpaca cuts an order down itself (a bracket's legs to a partly filled entry's
    quantity, open orders at a corporate action). The first answer check took that for a
    contradiction: an error line, and the order followed at the quantity sent, whose fills
    the book and Alpaca then disagreed on. A cut at or above what has filled is followed at
    Alpaca's quantity (a warning, once); a cut below it is still a contradiction."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 10, OrderType.LIMIT, limit=99.0)
        cid = buy.client_order_id
        await broker.submit([buy])
        garble(fake, monkeypatch, cid, qty="6")
        with capture_logs() as logs:
            for _ in range(2):
                await broker.poll()
                await up.bar()
            assert [(o.client_order_id, o.quantity) for o in broker.open_orders()] == [(cid, 6)]
        assert mismatches(logs) == []
        [cut] = [e for e in logs if e["event"] == "alpaca.order_quantity_cut"]
        assert (cut["log_level"], cut["sent"], cut["answered"], cut["filled"]) == (
            "warning",
            "10",
            "6",
            "0",
        )
        assert broker.status()["answer_mismatches"] == 0


async def test_a_fractional_quantity_alpaca_rounds_is_no_mismatch(fake, monkeypatch):
    """Alpaca keeps 9 decimals of a fractional quantity: its answer is the same quantity."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 2.123456789012)
        cid = buy.client_order_id
        await broker.submit([buy])
        garble(fake, monkeypatch, cid, qty="2.123456789")
        with capture_logs() as logs:
            fake.fill(cid, price=100.0)
            await up.until(lambda u: u.filled(cid) > 0)
        assert mismatches(logs) == []
        assert up.last(cid).status is OrderStatus.FILLED


async def test_an_order_edited_at_alpaca_to_another_quantity_is_followed_as_its_own(fake):
    """An edit (PATCH) is a new order: its quantity is its own, and its fill all booked."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        buy = order("AAPL", 10, OrderType.LIMIT, limit=95.0)
        await broker.submit([buy])
        updates = Updates(broker)
        with capture_logs() as logs:
            new = fake.replace(buy.client_order_id, qty=25, limit_price=99.0)
            await eventually(
                lambda: new.client_order_id in [o.client_order_id for o in broker.open_orders()]
            )
            fake.set_price("AAPL", 98.5)
            await updates.until(lambda u: u.filled(new.client_order_id) >= 25)
        assert [(f.client_order_id, f.quantity) for f in updates.fills] == [
            (new.client_order_id, 25.0)
        ]
        assert mismatches(logs) == []
        assert broker.status()["answer_mismatches"] == 0


@pytest.mark.parametrize(
    ("name", "value", "sent"), [("symbol", "TSLA", "AAPL"), ("side", "sell", "buy")]
)
async def test_an_answer_naming_another_symbol_or_side_is_not_booked_as_ours(
    fake, monkeypatch, name, value, sent
):
    """An answer for our AAPL buy (its Alpaca id, its client id) saying TSLA, or sell, was
    booked as ours: a fill of 5 AAPL bought. It is not applied (nothing booked, the order
    followed as it was) and said once; an answer that agrees again is booked."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 5)
        cid = buy.client_order_id
        await broker.submit([buy])
        readable = garble(fake, monkeypatch, cid, **{name: value})
        with capture_logs() as logs:
            fake.fill(cid, price=100.0)
            for _ in range(3):
                await broker.poll()
                await up.bar()
        assert up.fills == []
        assert broker.order(cid).status is OrderStatus.NEW
        [line] = mismatches(logs)
        assert (line["client_order_id"], line["field"], line["sent"], line["answered"]) == (
            cid,
            name,
            sent,
            value,
        )
        assert "not applied" in line["rule"]
        readable()
        await up.until(lambda u: u.filled(cid) > 0)
        assert [(f.symbol, f.side.value, f.quantity) for f in up.fills] == [("AAPL", "buy", 5.0)]


async def test_a_partial_fill_whose_quantity_cannot_be_read_is_said(fake, monkeypatch):
    """`partially_filled` with filled_qty "some": nothing booked and nothing said (only a
    closed order's unreadable quantity was), so its executions waited unbooked without a
    word. Said once (`alpaca.fill_without_quantity`), kept working, booked once readable."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 10, OrderType.LIMIT, limit=100.0)
        cid = buy.client_order_id
        await broker.submit([buy])
        readable = garble(fake, monkeypatch, cid, filled_qty="some")
        with capture_logs() as logs:
            fake.fill(cid, price=100.0, qty=4)  # partially_filled, 4 of 10
            for _ in range(3):
                await broker.poll()
                await up.bar()
        said = [e for e in logs if e["event"] == "alpaca.fill_without_quantity"]
        assert [(e["client_order_id"], e["status"], e["filled_qty"]) for e in said] == [
            (cid, "partially_filled", "some")
        ]
        assert said[0]["log_level"] == "error"
        assert up.fills == [] and broker.order(cid).status.is_open
        readable()
        await up.until(lambda u: u.filled(cid) > 0)
        assert [(f.quantity, f.price) for f in up.fills] == [(4.0, 100.0)]


# ----------------------------------------------------------------------------- the account


def account_says(fake: AlpacaTradingFake, monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    """GET /v2/account answers with `fields` instead of the fake's own."""
    readable = fake.account

    def answer() -> dict[str, Any]:
        body = readable()
        body.update(fields)
        return body

    monkeypatch.setattr(fake, "account", answer)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cash", None),
        ("cash", "lots"),
        ("cash", "Infinity"),
        ("cash", "NaN"),
        ("equity", "-Infinity"),
        ("buying_power", ""),
    ],
)
async def test_an_account_amount_that_is_no_number_is_an_unreadable_answer(
    fake, monkeypatch, name, value
):
    """/v2/account with cash null, "lots" or "Infinity" became a snapshot with cash NaN or
    inf, no error: the engine's cash check then told the operator to set
    run.initial_capital to at most "nan" (or passed, for inf). It is an unreadable answer
    (RetryableError, as the docstring says), naming the field and what it held."""
    account_says(fake, monkeypatch, **{name: value})
    async with running(fake, stream_enabled=False) as broker:
        with pytest.raises(RetryableError, match=rf"account's {name} .* is not a number"):
            await broker.snapshot()
        assert f"account's {name}" in broker.status()["last_error"]


async def test_a_negative_cash_is_read(fake, monkeypatch):
    """A margin account's cash can be below zero: a number, read as it is."""
    account_says(fake, monkeypatch, cash="-5000.5")
    async with running(fake, stream_enabled=False) as broker:
        assert (await broker.snapshot()).cash == -5000.5


@pytest.mark.parametrize("cash", [None, "lots", "Infinity"])
async def test_an_unreadable_account_cash_is_not_checked_not_blamed_on_the_config(
    engine_config, monkeypatch, cash
):
    """A new live run on an account whose cash Alpaca answered as no number: refused with
    "the broker's account has nan USD in cash ... set run.initial_capital to at most the
    account's cash" (the operator told to fix the wrong thing), or, for "Infinity",
    accepted as checked. The cash could not be read: `account.not_checked`, naming it."""
    with running_fake(monkeypatch, cash=30_000.0) as fake:
        account_says(fake, monkeypatch, cash=cash)
        panel, config = live_config(engine_config, fake, 20_000.0)
        engine = build_engine(config, "live", panel=panel)
        with capture_logs() as logs:
            await engine.run_until_done()
    [line] = [e for e in logs if e["event"] == "account.not_checked"]
    assert "cash" in line["error"] and "is not a number" in line["error"]
    assert not [e for e in logs if e["event"] == "account.cash"]


# ----------------------------------------------------------------------------- positions


@pytest.mark.parametrize("side", ["sideways", "LONGISH"])
async def test_a_position_on_neither_side_is_an_unreadable_answer(fake, monkeypatch, side):
    """A position row with side "sideways" was read as long without a word: reconciliation
    compared the book with a guess. It is an unreadable answer naming the row and the side,
    for reconciliation's positions and the snapshot alike."""
    fake.set_position("AAPL", 7, 100.0)
    readable = fake.positions

    def answer() -> list[dict[str, Any]]:
        rows = readable()
        for row in rows:
            row["side"] = side
        return rows

    monkeypatch.setattr(fake, "positions", answer)
    async with running(fake, stream_enabled=False) as broker:
        with pytest.raises(RetryableError, match=rf"\(AAPL\): side '{side}' is neither long"):
            await broker.positions()
        with pytest.raises(RetryableError, match="neither long nor short"):
            await broker.snapshot()
        monkeypatch.setattr(fake, "positions", readable)
        assert await broker.positions() == {"AAPL": 7.0}


@pytest.mark.parametrize(("qty", "side"), [(-7, "long"), (7, "short")])
async def test_a_position_whose_qty_contradicts_its_side_is_an_unreadable_answer(
    fake, monkeypatch, qty, side
):
    """Alpaca signs a short's qty negative, with side "short". A row saying long "-7" was
    read as a short of 7 (and short "7" as a short): reconciliation compared the book with
    one of two readings. It is an unreadable answer naming the symbol, the qty and the
    side, for reconciliation's positions and the snapshot alike; Alpaca's own shapes read."""
    fake.set_position("AAPL", 7, 100.0)
    readable = fake.positions

    def answer() -> list[dict[str, Any]]:
        rows = readable()
        for row in rows:
            row.update(qty=str(qty), side=side)
        return rows

    monkeypatch.setattr(fake, "positions", answer)
    async with running(fake, stream_enabled=False) as broker:
        named = rf"\(AAPL\): qty '{qty}' contradicts side '{side}'"
        with pytest.raises(RetryableError, match=named):
            await broker.positions()
        with pytest.raises(RetryableError, match=named):
            await broker.snapshot()
        monkeypatch.setattr(fake, "positions", readable)
        assert await broker.positions() == {"AAPL": 7.0}
        fake.set_position("AAPL", -7, 100.0)  # the fake answers a short as Alpaca does
        assert await broker.positions() == {"AAPL": -7.0}


# ----------------------------------------------------------------------------- restarts


@pytest.mark.parametrize(
    ("answered", "fields"),
    [
        ({"filled_qty": "50"}, ["filled_qty"]),
        ({"qty": "50", "filled_qty": "50"}, ["qty", "filled_qty"]),
    ],
    ids=["fill_above", "another_quantity_too"],
)
async def test_a_restart_books_nothing_beyond_the_quantity_sent(
    fake, monkeypatch, answered, fields
):
    """A 5-share order of the checkpoint that filled while the daemon was down, answered
    with filled_qty "50" (and qty "50"): `resume` reported one fill of 50, the order's
    check (`_within_sent`) applying only to updates after it. It books the 5 sent and says
    each contradiction as an error, as for an order followed all along."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = order("AAPL", 5, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with running(fake, stream_enabled=False) as before:
        await before.submit([buy])
        known = before.open_orders()
    fake.fill(cid, price=99.0)  # while the daemon is down
    garble(fake, monkeypatch, cid, **answered)
    async with running(fake, stream_enabled=False) as after:
        with capture_logs() as logs:
            await after.resume(known, [])
            up = Updates(after)
            await up.until(lambda u: u.last(cid) is not None and not u.last(cid).status.is_open)
            for _ in range(3):  # read again: nothing more booked, said once
                await after.poll()
                await up.bar()
        assert [(f.fill_id, f.quantity, f.price) for f in up.fills] == [(f"{cid}#5", 5.0, 99.0)]
        assert (up.last(cid).status, up.last(cid).quantity) == (OrderStatus.FILLED, 5)
        lines = mismatches(logs)
        assert [(e["field"], e["sent"], e["answered"]) for e in lines] == [
            (name, "5", "50") for name in fields
        ]
        assert all(e["log_level"] == "error" and e["client_order_id"] == cid for e in lines)
        assert after.status()["answer_mismatches"] == len(fields)


async def test_an_order_adopted_at_the_start_holds_nothing_beyond_its_quantity(fake, monkeypatch):
    """An open order found at the start (by hand) whose answer says 50 of its 5 shares
    filled was followed with 50 filled: listed so to the planner, and a restart that knew
    it at its checkpoint booked the 50. Adopted, it holds at most its 5, and the
    contradiction is said as an error, once."""
    fake.set_price("AAPL", 100.0, match=False)
    placed = fake._create(
        {
            "symbol": "AAPL",
            "qty": "5",
            "side": "buy",
            "type": "limit",
            "limit_price": "99",
            "time_in_force": "gtc",
            "client_order_id": "by-hand-5",
        }
    )
    fake.fill(placed.id, price=99.0, qty=2)
    garble(fake, monkeypatch, placed.id, filled_qty="50")
    with capture_logs() as logs:
        async with running(fake, stream_enabled=False) as broker:
            [adopted] = broker.open_orders()
            assert (adopted.client_order_id, adopted.quantity) == ("by-hand-5", 5)
            assert adopted.filled_quantity <= 5
            up = Updates(broker)
            for _ in range(3):
                await broker.poll()
                await up.bar()
            assert up.filled("by-hand-5") == 0  # executions before the start: not reported
    [line] = mismatches(logs)
    assert (line["client_order_id"], line["field"], line["sent"], line["answered"]) == (
        "by-hand-5",
        "filled_qty",
        "5",
        "50",
    )
    assert line["log_level"] == "error"


async def test_an_answer_mismatch_asks_for_a_reconciliation_round(fake, monkeypatch):
    """After `alpaca.order_answer_mismatch` the book and Alpaca's positions differ, and the
    engine compared them at its next round only (300 s). The broker sets
    `reconcile_wanted` with each mismatch said (once an order, field and value), for the
    engine to start a round at once."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 5, OrderType.LIMIT, limit=99.0)
        cid = buy.client_order_id
        await broker.submit([buy])
        await broker.poll()
        assert not broker.reconcile_wanted.is_set()  # answers that agree ask for nothing
        garble(fake, monkeypatch, cid, qty="500")
        await broker.poll()
        assert broker.reconcile_wanted.is_set()
        broker.reconcile_wanted.clear()  # the engine, before its round
        await broker.poll()
        await up.bar()
        assert not broker.reconcile_wanted.is_set()  # the same answer again: said already
        garble(fake, monkeypatch, cid, qty="5", filled_qty="50")
        fake.fill(cid, price=99.0)
        await up.until(lambda u: u.filled(cid) == 5)
        assert broker.reconcile_wanted.is_set()
        assert broker.status()["answer_mismatches"] == 2
