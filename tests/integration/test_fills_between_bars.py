"""A live run's fills that arrive between bars (Alpaca's stream) are booked when they
arrive, not at the next reconciliation round (`live.reconcile_interval_s`, 300 s) or bar:
the trial saw `alpaca.fill` at 14:25:24, /status with the position and the legs `new` at
14:25:35, and `broker.late_fills` at 14:25:38. The whole live engine runs against the
loopback Alpaca (tests/fakes/alpaca_trading_server.py) through the real alpaca-py client. No
test sleeps for a fixed time: each waits for a condition, bounded."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine, health_inputs

RUN = "between-bars"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


async def _eventually(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(until(), timeout)
    except TimeoutError:
        return False
    return True


async def test_a_stream_fill_between_bars_is_booked_when_it_arrives_and_once(
    engine_config, fake, tmp_path
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    assert config.live.reconcile_interval_s >= 300  # no reconciliation round in the test
    engine = build_engine(config, "live", panel=panel)
    _checks, status, _controls = health_inputs(engine)
    traded = asyncio.Event()
    engine.after_bar.append(lambda t, v: traded.set())
    seen: dict[str, Any] = {}
    real_bars = engine.feed.bars

    async def bars(t: Any) -> Any:
        # The next bar is held back (a fetch outside the bar lock, as a vendor's is) until
        # the fill is booked or 5 s have passed: the engine is between bars meanwhile.
        if traded.is_set() and not seen:
            ours = [
                o
                for o in fake.orders.values()
                if o.client_order_id.startswith(f"{RUN}|") and o.is_open and o.side == "buy"
            ]
            o = ours[0]
            seen["order"] = (o.client_order_id, o.symbol, o.qty)
            before = engine.portfolio.quantity_of(o.symbol)
            fake.call(fake.fill, o.client_order_id, price=100.0)
            seen["booked"] = await _eventually(
                lambda: engine.portfolio.quantity_of(o.symbol) == before + o.qty
            )
            seen["status"] = status()
            engine.request_stop()
        return await real_bars(t)

    engine.feed.bars = bars  # type: ignore[method-assign]
    asked: list[tuple[str, dict[str, Any]]] = []
    real_updates = engine.broker.updates

    async def updates(**kw: Any) -> Any:
        task = asyncio.current_task()
        asked.append((task.get_name() if task else "", kw))
        return await real_updates(**kw)

    engine.broker.updates = updates  # type: ignore[method-assign]
    with capture_logs() as logs:
        await engine.run_until_done()
    # The booker asks for what has arrived, no request under the bar lock.
    booker = [kw for name, kw in asked if name == "late-fills"]
    assert booker and all(kw == {"poll": False} for kw in booker)

    cid, sym, qty = seen["order"]
    assert seen["booked"], "the fill was not booked between bars"
    assert seen["status"]["positions"][sym]["quantity"] == qty
    assert cid not in {o["client_order_id"] for o in seen["status"]["open_orders"]}
    # Once: not again by the stop's last updates (nor by a bar).
    con = sqlite3.connect(tmp_path / "store.db")
    try:
        fills = con.execute(
            "SELECT quantity FROM fills WHERE client_order_id = ?", (cid,)
        ).fetchall()
    finally:
        con.close()
    assert fills == [(qty,)]
    assert engine.portfolio.quantity_of(sym) == qty
    assert [e["fills"] for e in logs if e["event"] == "broker.late_fills"] == [1]
