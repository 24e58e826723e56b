"""The Alpaca broker's polling against the loopback Alpaca (tests/fakes/alpaca_trading_server.py),
through the real alpaca-py clients: executions Alpaca reports before it prices them, the
request cost of the periodic open-orders check, and retries that stay inside the awaited call.

No test sleeps for a fixed time: each waits for a condition, with a timeout."""

from __future__ import annotations

import time

import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake
from structlog.testing import capture_logs
from test_alpaca_broker import RUN, T0, Updates, eventually, order, running
from test_alpaca_resume import Booked, checkpoint
from test_alpaca_resume import order as resume_order
from test_alpaca_resume import running as resume_running

from tradingd.core.orders import bracket_orders
from tradingd.core.types import OrderStatus, OrderType, Side

# ----------------------------------------------------------------------------- unpriced fills


def _filled_without_price(fake: AlpacaTradingFake, ref: str, qty: float, price: float) -> None:
    """Alpaca's order says `filled` (and the position is there) but `filled_avg_price` is
    still null: it has been seen of Alpaca for a moment after an execution."""
    fo = fake.order(ref)
    fo.filled_qty, fo.status, fo.filled_avg_price = qty, "filled", None
    fo.updated_at = fo.filled_at = fake._now()
    fake.positions_book[fo.symbol] = (qty, price)
    fake.cash -= qty * price


def _price_arrives(fake: AlpacaTradingFake, ref: str, price: float) -> None:
    fo = fake.order(ref)
    fo.filled_avg_price, fo.updated_at = price, fake._now()


async def test_a_poll_of_a_fill_without_its_price_books_it_once_the_price_comes(fake):
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        up = Updates(broker)
        buy = order("AAPL", 10)
        cid = buy.client_order_id
        await broker.submit([buy])
        _filled_without_price(fake, cid, 10, 100.0)
        await up.bar()
        assert up.fills == []
        # Still followed (and listed as the engine booked it: nothing filled), not closed.
        assert [(o.client_order_id, o.filled_quantity) for o in broker.open_orders()] == [(cid, 0)]

        _price_arrives(fake, cid, 100.0)
        await up.until(lambda u: u.filled(cid) > 0)
        for _ in range(3):
            await broker.poll()
            await up.bar()
        assert [(f.fill_id, f.quantity, f.price) for f in up.fills] == [(f"{cid}#10", 10, 100.0)]
        assert up.last(cid).status is OrderStatus.FILLED
        assert broker.open_orders() == []


async def test_updates_without_a_poll_make_no_request_with_the_stream_down(fake):
    """The engine's fill booker asks for what has arrived only: woken by a fill a poll had
    just found, it polled again, under the bar lock, while the stream was down."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        buy = order("AAPL", 10)
        await broker.submit([buy])
        asked = len(fake.requests)
        update = await broker.updates(poll=False)
        assert len(fake.requests) == asked and update.fills == []
        await broker.updates()  # the stream down and an order open: a poll
        assert len(fake.requests) > asked


async def test_a_fill_event_without_a_price_is_booked_when_a_poll_finds_it(fake):
    """The stream's fill says nothing of the price: the broker polls for it, the stream being
    up (the periodic check alone would come only minutes later)."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        up = Updates(broker)
        buy = order("AAPL", 10)
        cid = buy.client_order_id
        await broker.submit([buy])
        _filled_without_price(fake, cid, 10, 101.0)
        with capture_logs() as logs:
            fake.push(cid, "fill", qty="10")  # no price
            await eventually(lambda: any(e["event"] == "alpaca.fill_without_price" for e in logs))
        await up.bar()
        assert up.fills == []
        _price_arrives(fake, cid, 101.0)
        await up.until(lambda u: u.filled(cid) > 0)
        await broker.poll()
        await up.bar()
        assert [(f.fill_id, f.quantity, f.price) for f in up.fills] == [(f"{cid}#10", 10, 101.0)]
        assert broker.order(cid).status is OrderStatus.FILLED


async def test_an_unpriced_order_closed_otherwise_is_not_remembered(fake):
    """An order whose fill had no price, then closed without one (Alpaca no longer knows it:
    404), stayed in the broker's once-said set for good: a few bytes an order, for as long
    as the daemon ran. It is trimmed to the open orders at each poll, as `_uncounted` is."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, stream_enabled=False) as broker:
        buy = order("AAPL", 10)
        cid = buy.client_order_id
        await broker.submit([buy])
        _filled_without_price(fake, cid, 10, 101.0)
        await broker.poll()
        assert cid in broker._unpriced  # said once, followed as working
        del fake.orders[fake.order(cid).id]  # Alpaca no longer knows it
        await broker.poll()
        assert broker.order(cid).status is OrderStatus.CANCELLED
        assert cid not in broker._unpriced


@pytest.mark.parametrize("filled_qty", [None, "", "ten", "-5", "0"])
async def test_a_fill_whose_quantity_cannot_be_read_keeps_the_order_working_until_it_can(
    fake, monkeypatch, filled_qty
):
    """Alpaca's order said `filled` with a null, empty, garbage or negative `filled_qty` (as
    `order_from_alpaca` reads it at a restart), or "0" (filled with nothing filled, a
    contradiction: it was closed FILLED with nothing booked and nothing said): no fill could
    be derived, yet the order was closed as filled with nothing filled, nothing said, and
    reconciliation later blocked the symbol without naming why. It stays working, is asked
    for again, said once, and booked once the quantity can be read."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        up = Updates(broker)
        buy = order("AAPL", 10)
        cid = buy.client_order_id
        await broker.submit([buy])
        target = fake.order(cid).id
        garbled = [True]
        readable = fake._json

        def answer(o, nested):  # type: ignore[no-untyped-def]
            body = readable(o, nested)
            if o.id == target and garbled[0]:
                body["filled_qty"] = filled_qty
            return body

        monkeypatch.setattr(fake, "_json", answer)

        def said() -> list[dict]:  # type: ignore[type-arg]
            return [e for e in logs if e["event"] == "alpaca.fill_without_quantity"]

        def asked_since(n: int) -> int:
            return sum(1 for r in fake.requests[n:] if r.method == "GET" and "orders" in r.path)

        with capture_logs() as logs:
            fake.fill(cid, price=100.0)  # the stream's fill event carries the garbled order
            await eventually(lambda: len(said()) == 1)
            n = len(fake.requests)
            await eventually(lambda: asked_since(n) >= 2)  # asked again, still unreadable
            await up.bar()
        [line] = said()
        assert (line["client_order_id"], line["symbol"]) == (cid, "AAPL")
        assert line["filled_qty"] == filled_qty and line["status"] == "filled"
        assert up.fills == [] and (up.last(cid) is None or up.last(cid).status.is_open)
        assert [(o.client_order_id, o.filled_quantity) for o in broker.open_orders()] == [(cid, 0)]

        garbled[0] = False
        await up.until(lambda u: u.filled(cid) > 0)
        assert [(f.fill_id, f.quantity, f.price) for f in up.fills] == [(f"{cid}#10", 10, 100.0)]
        assert up.last(cid).status is OrderStatus.FILLED
        assert broker.open_orders() == []


async def test_a_fill_event_of_nothing_on_a_filled_order_is_said_and_booked_when_readable(fake):
    """The stream's `fill` with qty "0" and the order `filled` with filled_qty "0": closed
    FILLED with nothing booked and nothing said (the executions Alpaca made were never
    booked, and reconciliation later blocked the symbol without naming why). Said as
    `alpaca.fill_without_quantity` (an error, once), kept working and read again; booked
    once Alpaca's answer says how many. A `partial_fill` of "0" on a working order needs
    nothing: it stays working, and the next cumulative figure is booked."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake) as broker:
        up = Updates(broker)
        buy = order("AAPL", 5, OrderType.LIMIT, limit=100.0)
        cid = buy.client_order_id
        await broker.submit([buy])
        fo = fake.order(cid)
        with capture_logs() as logs:
            fo.status, fo.filled_qty = "partially_filled", 0.0
            fake.push(cid, "partial_fill", qty="0", price="100.0")
            fo.status = "filled"
            fake.push(cid, "fill", qty="0", price="100.0", position_qty="0")
            fake.push(cid, "fill", qty="0", price="100.0", position_qty="0")

            def said() -> list[dict]:  # type: ignore[type-arg]
                return [e for e in logs if e["event"] == "alpaca.fill_without_quantity"]

            await eventually(lambda: len(said()) == 1 and cid in broker._verify)
            await up.bar()
        [line] = said()
        assert (line["log_level"], line["client_order_id"], line["status"]) == (
            "error",
            cid,
            "filled",
        )
        assert (line["filled_qty"], line["why"]) == ("0", "nothing filled on a filled order")
        assert up.fills == [] and all(o.status.is_open for o in up.orders)
        assert [(o.client_order_id, o.status) for o in broker.open_orders()] == [
            (cid, OrderStatus.NEW)
        ]
        fo.status = "new"  # what Alpaca's next answer says: 5 filled at 100
        fake.fill(cid, price=100.0)
        await up.until(lambda u: u.filled(cid) > 0)
        assert [(f.fill_id, f.quantity, f.price) for f in up.fills] == [(f"{cid}#5", 5, 100.0)]
        assert up.last(cid).status is OrderStatus.FILLED
        assert broker.open_orders() == []


async def test_a_resumed_order_filled_without_its_price_is_booked_once_priced(fake):
    fake.set_price("AAPL", 100.0, match=False)
    buy = resume_order("AAPL", 10)  # a market order: no limit price to fall back on
    cid = buy.client_order_id
    async with resume_running(fake) as before:
        await before.submit([buy])
        known = checkpoint(before)

    _filled_without_price(fake, cid, 10, 99.0)  # while the daemon is down

    async with resume_running(fake) as after:
        await after.resume(known, [])
        booked = Booked(after)
        await booked.bar()
        assert booked.fills == []
        assert [o.client_order_id for o in after.open_orders()] == [cid]
        _price_arrives(fake, cid, 99.0)
        await booked.until(lambda b: b.filled(cid) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price, f.side) for f in booked.fills] == [
            (f"{cid}#10", 10, 99.0, Side.BUY)
        ]
        assert after.open_orders() == []


@pytest.mark.parametrize("filled_qty", [None, "0"])
async def test_a_resumed_order_filled_with_an_unreadable_quantity_is_booked_once_readable(
    fake, monkeypatch, filled_qty
):
    """Booked 3 of 10 at the checkpoint; the rest filled while the daemon was down, and
    Alpaca's answer at the restart had no readable `filled_qty`. The order was read as filled
    with nothing filled: reported FILLED with the 3 booked, followed no longer, and the 7
    shares never booked. It stays working until the quantity can be read, then is booked."""
    fake.set_price("AAPL", 100.0, match=False)
    buy = resume_order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    cid = buy.client_order_id
    async with resume_running(fake) as before:
        await before.submit([buy])
        fake.fill(cid, price=99.0, qty=3)
        booked = Booked(before)
        await booked.until(lambda b: b.filled(cid) == 3)
        known = checkpoint(before)
    fake.fill(cid, price=99.7)  # the last 7, while the daemon is down

    target = fake.order(cid).id
    garbled = [True]
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        if o.id == target and garbled[0]:
            body["filled_qty"] = filled_qty
        return body

    monkeypatch.setattr(fake, "_json", answer)
    async with resume_running(fake) as after:
        with capture_logs() as logs:
            await after.resume(known, [])
        booked = Booked(after)
        await booked.settle(2)
        assert booked.fills == []
        assert booked.last(cid) is None or booked.last(cid).status.is_open
        assert [(o.client_order_id, o.filled_quantity) for o in after.open_orders()] == [(cid, 3)]
        [line] = [e for e in logs if e["event"] == "alpaca.order.filled_qty_unreadable"]
        said = (line["client_order_id"], line["filled_qty"], line["status"])
        assert said == (cid, filled_qty, "filled")

        garbled[0] = False
        await booked.until(lambda b: b.filled(cid) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price) for f in booked.fills] == [(f"{cid}#10", 7, 99.7)]
        assert booked.last(cid).status is OrderStatus.FILLED
        assert after.open_orders() == []


async def test_a_resumed_order_whose_quantity_cannot_be_read_is_not_said_behind_the_book(
    fake, monkeypatch
):
    """Two orders partly booked at the checkpoint, one filled while the daemon was down
    (looked up at the restart), one still working (adopted at the start), both answered
    without a readable `filled_qty`. Each was logged `broker_behind_book` with
    `filled_at_alpaca=0`: Alpaca is not behind, its number cannot be read. Said as it is,
    `alpaca.reconcile.filled_unreadable`, once an order; the book's quantity stays the
    baseline and what Alpaca executed beyond it is booked once the quantity can be read."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("SPY", 400.0, match=False)
    aapl = resume_order("AAPL", 10, OrderType.LIMIT, limit=100.0)
    spy = resume_order("SPY", 10, OrderType.LIMIT, limit=400.0)
    ids = [aapl.client_order_id, spy.client_order_id]
    async with resume_running(fake) as before:
        await before.submit([aapl, spy])
        for cid in ids:
            fake.fill(cid, price=99.0 if cid == ids[0] else 399.0, qty=3)
        booked = Booked(before)
        await booked.until(lambda b: all(b.filled(cid) == 3 for cid in ids))
        known = checkpoint(before)
    fake.fill(ids[0], price=99.7)  # the last 7, while the daemon is down: closed
    fake.fill(ids[1], price=399.5, qty=2)  # 2 more, still working

    targets = {fake.order(cid).id for cid in ids}
    garbled = [True]
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        if o.id in targets and garbled[0]:
            body["filled_qty"] = "unknown"
        return body

    monkeypatch.setattr(fake, "_json", answer)
    async with resume_running(fake) as after:
        with capture_logs() as logs:
            await after.resume(known, [])
            booked = Booked(after)
            await booked.settle(2)
        reconciled = [e for e in logs if e["event"].startswith("alpaca.reconcile.")]
        assert not [e for e in reconciled if e["event"] == "alpaca.reconcile.broker_behind_book"]
        said = [e for e in reconciled if e["event"] == "alpaca.reconcile.filled_unreadable"]
        assert sorted((e["client_order_id"], e["booked"]) for e in said) == [(c, 3) for c in ids]
        assert booked.fills == []
        assert sorted((o.client_order_id, o.filled_quantity) for o in after.open_orders()) == [
            (cid, 3) for cid in ids
        ]

        garbled[0] = False
        await booked.until(lambda b: b.filled(ids[0]) > 0 and b.filled(ids[1]) > 0)
        await booked.settle()
        assert sorted((f.fill_id, f.quantity) for f in booked.fills) == [
            (f"{ids[0]}#10", 7),
            (f"{ids[1]}#5", 2),
        ]


async def test_a_resumed_bracket_leg_filled_with_an_unreadable_quantity_is_booked_once_readable(
    fake, monkeypatch
):
    """The stop-loss of a filled bracket fired while the daemon was down, and Alpaca's answer
    at the restart had no readable `filled_qty` for it. Adopted with its bracket, the leg's
    state was mapped again from Alpaca's `filled`, undoing what the warning said: closed as
    filled with nothing filled, followed no longer, the 10 shares sold never booked. It stays
    working, as a stand-alone order does, until the quantity can be read; then booked once."""
    fake.set_price("AAPL", 100.0, match=False)
    entry, tp, sl = bracket_orders(RUN, T0, "AAPL", 10, 110.0, 95.0)
    async with resume_running(fake) as before:
        await before.submit([entry, tp, sl])
        fake.fill(entry.client_order_id, price=100.0)
        booked = Booked(before)
        await booked.until(
            lambda b: (o := b.last(sl.client_order_id)) is not None and o.status is OrderStatus.NEW
        )
        known = checkpoint(before)
    assert {o.client_order_id for o in known} == {tp.client_order_id, sl.client_order_id}

    fake.set_price("AAPL", 94.0)  # the stop-loss fires, Alpaca closes the take-profit
    legs = {fake.orders[i].type: fake.orders[i] for i in fake.order(entry.client_order_id).leg_ids}
    assert (legs["limit"].status, legs["stop"].status) == ("replaced", "filled")
    target = legs["stop"].id
    garbled = [True]
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        if o.id == target and garbled[0]:
            body["filled_qty"] = None
        return body

    monkeypatch.setattr(fake, "_json", answer)

    def asked_since(n: int) -> int:
        return sum(1 for r in fake.requests[n:] if r.method == "GET" and "orders" in r.path)

    async with resume_running(fake) as after:
        with capture_logs() as logs:
            await after.resume(known, [])
        n = len(fake.requests)
        booked = Booked(after)
        await booked.bar()
        assert booked.fills == []
        assert booked.last(sl.client_order_id).status.is_open
        assert booked.last(tp.client_order_id).status is OrderStatus.CANCELLED
        assert [(o.client_order_id, o.filled_quantity) for o in after.open_orders()] == [
            (sl.client_order_id, 0)
        ]
        # Asked again by the broker's own polling, the stream being up: not left to the
        # periodic check, minutes later.
        await eventually(lambda: asked_since(n) >= 2)
        await booked.bar()
        assert booked.fills == [] and booked.last(sl.client_order_id).status.is_open
        [line] = [e for e in logs if e["event"] == "alpaca.order.filled_qty_unreadable"]
        assert (line["client_order_id"], line["status"]) == (sl.client_order_id, "filled")

        garbled[0] = False
        await booked.until(lambda b: b.filled(sl.client_order_id) > 0)
        await booked.settle()
        assert [(f.fill_id, f.quantity, f.price, f.side) for f in booked.fills] == [
            (f"{sl.client_order_id}#10", 10, 94.0, Side.SELL)
        ]
        assert booked.last(sl.client_order_id).status is OrderStatus.FILLED
        assert after.open_orders() == []


async def test_an_unreadable_filled_qty_is_said_once_an_order_not_at_every_read(fake, monkeypatch):
    """Two orders working at Alpaca whose `filled_qty` cannot be read: the warning was given
    at every read of them (the start's adoption, every snapshot, each one again), so one
    bad order repeated it for as long as Alpaca sent it so. Said once an order; again when
    it becomes unreadable after an answer that could be read (a poll's, a snapshot's)."""
    fake.set_price("AAPL", 100.0, match=False)
    fake.set_price("SPY", 400.0, match=False)
    aapl = order("AAPL", 5, OrderType.LIMIT, limit=90.0)
    spy = order("SPY", 2, OrderType.LIMIT, limit=390.0)
    async with running(fake) as before:
        await before.submit([aapl, spy])
    ids = {o.client_order_id: fake.order(o.client_order_id).id for o in (aapl, spy)}
    garbled = set(ids.values())
    readable = fake._json

    def answer(o, nested):  # type: ignore[no-untyped-def]
        body = readable(o, nested)
        if o.id in garbled:
            body["filled_qty"] = None
        return body

    monkeypatch.setattr(fake, "_json", answer)

    def said() -> list[str]:
        return sorted(
            e["client_order_id"] for e in logs if e["event"] == "alpaca.order.filled_qty_unreadable"
        )

    with capture_logs() as logs:
        async with running(fake) as broker:  # adopted at the start: said
            assert sorted(o.client_order_id for o in broker.open_orders()) == sorted(ids)
            for _ in range(3):
                await broker.snapshot()
            assert said() == sorted(ids)

            garbled.discard(ids[aapl.client_order_id])
            await broker.poll()  # read as it can be: the next unreadable answer is new
            garbled.add(ids[aapl.client_order_id])
            await broker.snapshot()
            assert said() == sorted([*ids, aapl.client_order_id])

            garbled.discard(ids[spy.client_order_id])
            await broker.snapshot()  # read as it can be, by the snapshot itself
            garbled.add(ids[spy.client_order_id])
            await broker.snapshot()
            await broker.snapshot()
            assert said() == sorted([*ids, *ids])


# ----------------------------------------------------------------------------- open-orders check


def _checked(fake: AlpacaTradingFake, since: int) -> list[tuple[str, str, str | None]]:
    return [(r.method, r.path, r.query.get("nested")) for r in fake.requests[since:]]


async def test_the_open_orders_check_of_filled_brackets_is_one_request(fake):
    """Nested, Alpaca lists a filled bracket's working legs under nothing (their entry is
    closed): each was read by id, 2 requests a position every check (201 for 100 brackets,
    a minute of the account's budget). Flat, they are rows of the one listing."""
    syms = tuple(f"S{i:02d}" for i in range(30))
    for s in syms:
        fake.set_price(s, 100.0, match=False)
    fake.cash = 1e9
    async with running(fake, symbols=syms, rate_limit_per_minute=0) as broker:
        orders = [o for s in syms for o in bracket_orders(RUN, T0, s, 10, 104.0, 98.0)]
        await broker.submit(orders)
        for s in syms:
            fake.match(s)  # the entries fill; their exits work
        up = Updates(broker)
        await up.until(lambda u: len(u.fills) == len(syms))
        assert len(broker.open_orders()) == 2 * len(syms)

        since = len(fake.requests)
        await broker.poll(only_open=True)
        assert _checked(fake, since) == [("GET", "/v2/orders", "False")]  # alpaca-py spells it
        assert len(broker.open_orders()) == 2 * len(syms)

        # A stop-loss executed with its event lost: the next check makes it up from the
        # listing (and Alpaca's cancel of its take-profit, event lost too) with one read.
        stop = orders[2].client_order_id
        [at_alpaca] = [o for o in fake.orders.values() if o.symbol == syms[0] and o.type == "stop"]
        fake.lose_fill_events(1)
        fake.set_price(syms[0], 97.0)
        assert at_alpaca.status == "filled"
        since = len(fake.requests)
        await broker.poll(only_open=True)
        await up.bar()
        assert up.filled(stop) == 10
        assert len(broker.open_orders()) == 2 * len(syms) - 2
        assert len(fake.requests) - since <= 3


async def test_the_open_orders_check_reads_a_bounded_number_of_orders_by_id(fake):
    """Orders closed at Alpaca without an event heard are read by id, at most 20 a check;
    the rest at the next one, so every fill is still booked."""
    syms = tuple(f"S{i:02d}" for i in range(25))
    for s in syms:
        fake.set_price(s, 100.0, match=False)
    fake.cash = 1e9
    async with running(fake, symbols=syms, rate_limit_per_minute=0) as broker:
        buys = [order(s, 5, OrderType.LIMIT, limit=99.0) for s in syms]
        await broker.submit(buys)
        fake.lose_fill_events(len(buys))
        for s in syms:
            fake.set_price(s, 98.0)
        assert all(fake.order(b.client_order_id).status == "filled" for b in buys)

        up = Updates(broker)
        since = len(fake.requests)
        await broker.poll(only_open=True)
        await up.bar()
        reads = [r for r in fake.requests[since:] if r.path.startswith("/v2/orders/")]
        assert len(reads) == 20
        assert len(up.fills) == 20

        since = len(fake.requests)
        await broker.poll(only_open=True)
        await up.bar()
        reads = [r for r in fake.requests[since:] if r.path.startswith("/v2/orders/")]
        assert len(reads) == 5
        assert sorted(f.client_order_id for f in up.fills) == sorted(
            b.client_order_id for b in buys
        )
        assert broker.open_orders() == []


# ----------------------------------------------------------------------------- retries


async def test_a_429_is_retried_inside_the_awaited_call_not_in_a_thread_left_running(fake):
    """alpaca-py slept before its own 429 retry in the worker thread: a call that timed out
    meanwhile was given up here (the order closed as not placed) while the thread went on
    and placed it. Every attempt is now the broker's, inside the call it awaits."""
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, call_timeout_s=1.0, max_attempts=1) as broker:
        broker.trading_client._retry_wait = 2  # alpaca-py's 3 s, scaled down
        buy = order("AAPL", 10)
        fake.throttle(1)
        [ack] = await broker.submit([buy])
        assert ack.status is OrderStatus.NEW
        # Both attempts were made before submit returned: nothing is left to place it later.
        assert [b["client_order_id"] for b in fake.posted_orders()] == [buy.client_order_id] * 2
        assert len(fake.orders_with_client_id(buy.client_order_id)) == 1
        assert broker.order(buy.client_order_id).status is OrderStatus.NEW


async def test_a_429_waits_at_least_its_retry_after(fake):
    fake.set_price("AAPL", 100.0, match=False)
    async with running(fake, backoff_max_s=5.0) as broker:
        fake.throttle(1, retry_after="1")
        started = time.monotonic()
        [ack] = await broker.submit([order("AAPL", 1)])
        waited = time.monotonic() - started
    assert ack.status is OrderStatus.NEW
    assert len(fake.posted_orders()) == 2
    assert 1.0 <= waited < 4.0
