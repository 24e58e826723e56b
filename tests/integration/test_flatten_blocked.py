"""An operator's flatten in a symbol that reconciliation blocked (the book and the account
hold different quantities) sold the book's shares: more than the account held (a short in
a long-only run) or fewer (the rest left). It now places no order there, warns naming the
symbol and what the operator must do, and ends ("paused") without waiting on it. The whole
live engine runs against the loopback Alpaca; no test sleeps for a fixed time."""

from __future__ import annotations

import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine

RUN = "flatten-blocked"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


async def test_a_flatten_places_nothing_in_a_blocked_symbol_and_ends_without_it(
    engine_config, fake
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop())  # one traded bar
    await first.run_until_done()
    entries = [o for o in fake.orders.values() if o.client_order_id.startswith(f"{RUN}|")]
    assert len(entries) >= 2 and all(o.is_open for o in entries)  # the fake fills nothing
    # While the daemon is down: one entry fills, then shares of it are sold by hand.
    bought = entries[0]
    sym, qty = bought.symbol, bought.qty
    fake.call(fake.fill, bought.client_order_id, price=100.0)
    fake.call(fake.set_position, sym, qty - 2, 100.0)
    posted_before = len(fake.posted_orders())

    second = build_engine(config, "live", panel=panel)
    await second.set_trading_state("flattening")  # POST /flatten while it starts
    states: list[str] = []

    def after(t, v):  # type: ignore[no-untyped-def]
        states.append(second.trading_state)
        if second.trading_state == "paused" or len(states) == 3:
            second.request_stop()

    second.after_bar.append(after)
    with capture_logs() as logs:
        await second.run_until_done()

    # Blocked at the start (the book holds the fill, the account two shares fewer).
    assert second.portfolio.quantity_of(sym) == qty
    assert sym in second.reconcile_blocked
    # No order in it: the book's shares are not what the account holds.
    sent = fake.posted_orders()[posted_before:]
    assert sym not in {b["symbol"] for b in sent}
    skipped = [e for e in logs if e["event"] == "control.flatten_skipped"]
    assert skipped and all(list(e["symbols"]) == [sym] for e in skipped)
    assert "close it at the broker" in skipped[0]["rule"]
    assert "POST /adopt" in skipped[0]["rule"]  # then take the account's quantity
    # The other entries were cancelled, and the flatten ended without waiting on the block.
    assert all(fake.orders[o.id].status == "canceled" for o in entries[1:])
    assert states[-1] == "paused" and "flattening" in states
    [done] = [e for e in logs if e["event"] == "control.flattened"]
    assert done["left_held"] == [sym]


async def test_a_flatten_ends_leaving_a_symbol_the_broker_will_not_trade_held(engine_config, fake):
    """A symbol Alpaca refuses as not tradable (delisted, halted) is held by the broker: no
    order in it. A flatten skipped it but waited for it to be sold, so the run stayed
    "flattening" as long as the asset stayed untradable; it now ends ("paused") leaving it
    held, named, as it does for a symbol reconciliation blocked."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop())  # one traded bar
    await first.run_until_done()
    entries = [o for o in fake.orders.values() if o.client_order_id.startswith(f"{RUN}|")]
    assert entries and all(o.is_open for o in entries)
    bought = entries[0]
    sym = bought.symbol
    fake.call(fake.fill, bought.client_order_id, price=100.0)
    fake.call(fake.set_asset, sym, tradable=False)

    second = build_engine(config, "live", panel=panel)
    await second.set_trading_state("flattening")
    states: list[str] = []

    def after(t, v):  # type: ignore[no-untyped-def]
        states.append(second.trading_state)
        if second.trading_state == "paused" or len(states) == 4:
            second.request_stop()

    second.after_bar.append(after)
    with capture_logs() as logs:
        await second.run_until_done()

    assert second.portfolio.quantity_of(sym) == bought.qty  # nothing sold: it cannot be
    assert sym in second.broker.untradable()
    assert states[-1] == "paused", states
    [done] = [e for e in logs if e["event"] == "control.flattened"]
    assert done["left_held"] == [sym]
