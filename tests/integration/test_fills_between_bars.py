"""A live run's fills that arrive between bars (Alpaca's stream) are booked when they
arrive, not at the next reconciliation round (`live.reconcile_interval_s`, 300 s) or bar:
the trial saw `alpaca.fill` at 14:25:24, /status with the position and the legs `new` at
14:25:35, and `broker.late_fills` at 14:25:38. The whole live engine runs against the
loopback Alpaca (tests/fakes/alpaca_trading_server.py) through the real alpaca-py client. No
test sleeps for a fixed time: each waits for a condition, bounded."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import eventually as _eventually
from live_on_fake import live_on_fake, open_buys, stored_fill_quantities
from structlog.testing import capture_logs

from tradingd.app import build_engine, health_inputs

RUN = "between-bars"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


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
            o = open_buys(fake, RUN)[0]
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
    assert stored_fill_quantities(tmp_path / "store.db", cid) == [(qty,)]
    assert engine.portfolio.quantity_of(sym) == qty
    assert [e["fills"] for e in logs if e["event"] == "broker.late_fills"] == [1]


async def test_a_fill_during_a_resumed_run_s_catch_up_is_booked_when_the_catch_up_ends(
    engine_config, fake, tmp_path
):
    """A fill that arrived while a resumed run replayed its completed bars was left for the
    next reconciliation round (300 s), the next live bar being up to a day away: an upgrade
    trial saw it booked 17 s later, with the round, after 30 replayed bars."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    # No reconciliation round in the test (its second check would book the fill too).
    config = dataclasses.replace(
        config, live=dataclasses.replace(config.live, reconcile_confirm_s=300.0)
    )
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop())
    await first.run_until_done()
    ours = open_buys(fake, RUN)
    assert ours, "the first run placed no entry"
    o = ours[0]

    engine = build_engine(config, "live", panel=panel)
    seen: dict[str, Any] = {}
    real_bars = engine.feed.bars

    async def bars(t: Any) -> Any:
        through = engine.catching_up_to
        if through is not None and "filled" not in seen:
            seen["filled"] = through  # during the replay of the completed bars
            fake.call(fake.fill, o.client_order_id, price=100.0)
            # Received by the broker while the replay goes on (the stream's event).
            assert await _eventually(
                lambda: any(
                    f.client_order_id == o.client_order_id
                    for f in engine.broker._pending_fills  # type: ignore[attr-defined]
                )
            )
        elif through is None and "filled" in seen and "booked" not in seen:
            # The first live bar after the replay: held until the fill is booked (or 5 s).
            seen["booked"] = await _eventually(
                lambda: engine.portfolio.quantity_of(o.symbol) == o.qty
            )
            engine.request_stop()
        return await real_bars(t)

    engine.feed.bars = bars  # type: ignore[method-assign]
    await engine.run_until_done()
    assert engine.resumed_from is not None and "filled" in seen
    assert seen.get("booked"), "the fill was not booked when the catch-up ended"
    assert engine._caught_up.is_set()  # what the booker waits for (the test below)


async def test_the_booker_books_a_fill_that_arrived_during_the_catch_up_once_it_ends():
    """The booker skipped a fill that arrived while the run replayed its completed bars and
    went back to waiting for the next one: with the start-up's reconciliation done, the
    fill waited for the next round (live.reconcile_interval_s) or the next live bar."""
    from datetime import UTC, datetime

    from tradingd.engine.engine import Engine

    class Replaying:
        catching_up_to: datetime | None = datetime(2020, 3, 25, tzinfo=UTC)

        def __init__(self) -> None:
            self._caught_up = asyncio.Event()
            self._bar_lock = asyncio.Lock()
            self.booked: list[bool] = []
            self.done = asyncio.Event()

        async def _book_late_updates(self, *, poll: bool = True) -> int:
            self.booked.append(poll)
            self.done.set()
            return 1

    engine = Replaying()
    calls = 0

    async def arrived() -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.Event().wait()  # no other fill comes

    booker = asyncio.create_task(Engine._book_fills_as_they_arrive(engine, arrived))  # type: ignore[arg-type]
    try:
        # One pass of the loop: the booker takes the fill that arrived during the replay
        # and parks (on the replay's end, or on the next arrival); then the replay ends.
        await asyncio.sleep(0)
        assert calls >= 1 and engine.booked == []
        engine.catching_up_to = None
        engine._caught_up.set()
        done = asyncio.ensure_future(engine.done.wait())
        await asyncio.wait({done}, timeout=5.0)
        assert engine.booked == [False], "the fill that arrived during the replay was not booked"
    finally:
        booker.cancel()
        await asyncio.gather(booker, return_exceptions=True)
