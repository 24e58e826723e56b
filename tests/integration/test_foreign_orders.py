"""Orders on the Alpaca account that this run did not place (by hand, or another run's) stay
foreign: warned about and followed (a working entry keeps the run's entries out of its
symbol), but their fills are never booked as this run's. The whole live engine runs against
the loopback Alpaca (tests/fakes/alpaca_trading_server.py) through the real alpaca-py client.

Before, a hand order open at the start was adopted and its fill booked under the run's id;
the run then sold the operator's shares as its own, and reconciliation saw nothing (the book
matched the broker). No test sleeps for a fixed time: each waits for a condition."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake, running_fake
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine

RUN = "foreign-check"
BY_HAND = "by-hand-1"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


def _place_by_hand(fake: AlpacaTradingFake, symbol: str) -> None:
    fake.call(
        fake._create,
        {
            "symbol": symbol,
            "qty": "5",
            "side": "buy",
            "type": "limit",
            "limit_price": "1000",
            "time_in_force": "gtc",
            "client_order_id": BY_HAND,
        },
    )


async def _eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until(), timeout)


def _after(engine: Any, method: str, then: Callable[[], Any]) -> None:
    """Run `then` (awaited) right after the broker's `method` (start, resume)."""
    real = getattr(engine.broker, method)

    async def wrapped(*args: Any) -> None:
        await real(*args)
        await then()

    setattr(engine.broker, method, wrapped)


def _stored(db: Any, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_a_hand_orders_fill_is_not_booked_and_its_shares_not_traded(
    engine_config, fake, tmp_path
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    sym = engine.symbols[1]
    _place_by_hand(fake, sym)

    async def fill_by_hand() -> None:  # while the daemon runs, before its first bar
        fake.call(fake.fill, BY_HAND, price=100.0)
        await _eventually(lambda: engine.broker.order(BY_HAND).filled_quantity == 5)

    _after(engine, "start", fill_by_hand)
    with capture_logs() as logs:
        await engine.run_until_done()

    fills = _stored(tmp_path / "store.db", "SELECT client_order_id FROM fills")
    assert (BY_HAND,) not in fills
    assert engine.portfolio.quantity_of(sym) == 0  # the operator's shares are not the book's
    events = [e["event"] for e in logs]
    assert "broker.foreign_open_orders" in events  # still warned about at the start
    [foreign] = [e for e in logs if e["event"] == "broker.foreign_fill"]
    assert (foreign["client_order_id"], foreign["quantity"]) == (BY_HAND, 5.0)
    # The difference is reconciliation's: the symbol is blocked, and the run never sold the
    # operator's shares (it placed nothing in the symbol).
    assert sym in engine.reconcile_blocked
    ordered = {o.symbol for o in fake.orders.values() if o.client_order_id.startswith(RUN)}
    assert ordered and sym not in ordered


async def test_a_restarted_run_books_its_own_orders_fills_and_not_a_hand_orders(
    engine_config, fake, tmp_path
):
    """A restarted run followed a hand order as one it knew (the checkpoint listed it) and
    booked its fill; the checkpoint now keeps only the run's own orders, and those must
    still be followed through the restart and their fills booked."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    first = build_engine(config, "live", panel=panel)
    sym = first.symbols[1]
    _place_by_hand(fake, sym)
    first.after_bar.append(lambda t, v: first.request_stop())  # one traded bar
    await first.run_until_done()
    ours = [o for o in fake.orders.values() if o.client_order_id.startswith(f"{RUN}|")]
    assert ours and all(o.is_open for o in ours)  # the fake fills nothing by itself
    own = ours[0]

    second = build_engine(config, "live", panel=panel)

    async def fill_both() -> None:  # after the restarted broker has resumed
        fake.call(fake.fill, own.client_order_id, price=100.0)
        fake.call(fake.fill, BY_HAND, price=100.0)
        for cid in (own.client_order_id, BY_HAND):
            await _eventually(lambda c=cid: second.broker.order(c).filled_quantity > 0)  # type: ignore[misc]

    _after(second, "resume", fill_both)
    second.after_bar.append(lambda t, v: second.request_stop())
    await second.run_until_done()

    fills = _stored(tmp_path / "store.db", "SELECT client_order_id, quantity FROM fills")
    assert (own.client_order_id, own.qty) in fills  # its own order: adopted and booked
    assert BY_HAND not in [cid for cid, _ in fills]
    assert second.portfolio.quantity_of(own.symbol) == own.qty
    assert second.portfolio.quantity_of(sym) == 0


def _filled_bracket(fake, sym: str, client_order_id: str):  # type: ignore[no-untyped-def]
    """A bracket placed on the account by someone else (by hand, another run), its entry
    filled: (the entry, its legs' client order ids), the legs open."""
    entry = fake.call(
        fake._create,
        {
            "symbol": sym,
            "qty": "5",
            "side": "buy",
            "type": "market",
            "time_in_force": "gtc",
            "order_class": "bracket",
            "take_profit": {"limit_price": "2000"},
            "stop_loss": {"stop_price": "1"},
            "client_order_id": client_order_id,
        },
    )
    fake.call(fake.fill, entry.id, price=100.0)
    return entry, {fake.orders[i].client_order_id for i in entry.leg_ids}


async def test_a_new_run_warns_of_the_exits_of_a_bracket_filled_by_hand(engine_config, fake):
    """Alpaca lists a bracket's legs under their entry only while it is open (nested), so
    the start-up listing left out the exits of a position protected by hand: no warning,
    and the broker did not follow them."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    sym = engine.symbols[2]
    entry, legs = _filled_bracket(fake, sym, "bracket-by-hand-1")
    assert len(legs) == 2 and all(fake.orders[i].is_open for i in entry.leg_ids)
    engine.after_bar.append(lambda t, v: engine.request_stop())
    with capture_logs() as logs:
        await engine.run_until_done()
    [warned] = [e for e in logs if e["event"] == "broker.foreign_open_orders"]
    assert warned["symbols"] == [sym] and set(warned["orders"]) == legs
    # Foreign exits: the planner neither cancels them nor counts them as this run's.
    assert all(fake.orders[i].is_open for i in entry.leg_ids)


async def test_status_lists_another_runs_orders_apart_from_this_runs(engine_config, fake):
    """/status listed the legs of a bracket placed by another run (Alpaca's ids as client
    ids) as this run's open orders, beside no positions, with nothing to tell them apart:
    they are in `foreign_open_orders`, and `open_orders` holds this run's alone (the rule
    the engine sorts orders by, `_placed_by_us`)."""
    from tradingd.app import health_inputs

    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    sym = engine.symbols[2]
    _, legs = _filled_bracket(fake, sym, "another-run-bracket")
    _checks, status, _controls = health_inputs(engine)
    seen: list[dict[str, Any]] = []

    def read_status(t: Any, v: Any) -> None:  # while the run is live, after its first bar
        seen.append(status())
        engine.request_stop()

    engine.after_bar.append(read_status)
    await engine.run_until_done()
    [st] = seen
    own = [o["client_order_id"] for o in st["open_orders"]]
    assert own and all(cid.startswith(f"{RUN}|") for cid in own), own
    assert {o["client_order_id"] for o in st["foreign_open_orders"]} == legs
    assert {o["symbol"] for o in st["foreign_open_orders"]} == {sym}


async def test_an_order_placed_by_hand_mid_run_is_warned_of_and_alerted(
    engine_config, fake, tmp_path
):
    """`broker.foreign_open_orders` and its alert looked at the orders open at the start
    only: an order placed by hand after the first bar was a warning line of the broker's,
    and the run stayed out of its symbol with no alert. Now the engine says it as at the
    start (`found_mid_run`), keyed by its symbols so the start's alert does not swallow it."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    sym = engine.symbols[1]
    alerted: list[tuple[str, str]] = []
    placed = False

    real_event = engine.alerter.event

    def event(kind: str, key: str, *args: Any, **kwargs: Any) -> Any:
        alerted.append((kind, key))
        return real_event(kind, key, *args, **kwargs)

    engine.alerter.event = event
    real_on_bar = engine.broker.on_bar

    async def on_bar(bar: Any) -> Any:
        nonlocal placed
        update = await real_on_bar(bar)
        # The first live bar (the warm-up's bars come before the run's tasks start).
        live = any(t.get_name() == "foreign-orders" for t in asyncio.all_tasks())
        if live and not placed:
            placed = True
            _place_by_hand(fake, sym)
            await _eventually(lambda: ("reconciliation", f"foreign-orders:{sym}") in alerted)
        return update

    engine.broker.on_bar = on_bar
    with capture_logs() as logs:
        await engine.run_until_done()

    said = [e for e in logs if e["event"] == "broker.foreign_open_orders"]
    assert [(e["symbols"], e["orders"], e["found_mid_run"]) for e in said] == [
        ([sym], [BY_HAND], True)
    ]
    assert alerted.count(("reconciliation", f"foreign-orders:{sym}")) == 1
