"""A stop must not hang on a background task that lost its cancellation.

On Python 3.11 `asyncio.wait_for` returns the awaited call's result when the cancel lands as
that call completes, and the cancel is gone (CPython gh-86296; daemon/core/tasks.py). The
Alpaca broker's REST calls and redis-py's writes run under it. A task the engine cancelled
at the stop while such a call answered went on: the reconciler to its next round and the
next, for ever, the task booking fills between bars back to waiting for a fill that never
came, and the stop, which had cancelled it once and awaited it, waited with it (the trial's
hang after its last bar that reverted 4e30d8d: an idle event loop, SIGTERM ignored until
the third, exit 143; benchmarks/stop_hang_stress.py --redis hangs so). The whole live engine
runs against the loopback Alpaca through the real alpaca-py client; the lost cancel is the
one thing put in by hand (a timing race otherwise). Bounded: each wait has a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake, open_buys, stored_fill_quantities
from structlog.testing import capture_logs

from tradingd.app import build_engine

RUN = "lost-cancel"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


class _Stop:
    """A stop between bars while a task of the engine asks the broker: `armed` once the
    engine waits for its next bar, `entered` once the task is in the call."""

    def __init__(self) -> None:
        self.armed = asyncio.Event()
        self.entered = asyncio.Event()


def _losing_a_cancel(
    task_name: str, call: Callable[..., Awaitable[Any]], stop: _Stop
) -> Callable[..., Awaitable[Any]]:
    """`call` (a broker method), which, asked by the task `task_name` once `stop` is
    armed, waits until that task is cancelled and then answers as if the cancel had not
    come (once; before, and after, it answers at once)."""

    async def losing(**kw: Any) -> Any:
        task = asyncio.current_task()
        named = task is not None and task.get_name() == task_name
        if named and stop.armed.is_set() and not stop.entered.is_set():
            stop.entered.set()
            # What 3.11's wait_for does when the answer lands with the cancel: it returns
            # the answer, and the cancel is lost.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()  # the request, in flight at the stop
        return await call(**kw)

    return losing


async def _stop_between_bars(
    engine: Any, stop: _Stop, before: Callable[[], None] = lambda: None
) -> tuple[bool, list[dict[str, Any]]]:
    """Run `engine`; after its first traded bar, between bars (the fetch is outside the bar
    lock, as a vendor's is: the task can take it), `before()`, then a stop once the task is
    in its call. True when the run ended within 10 s; the logs."""
    traded = asyncio.Event()
    engine.after_bar.append(lambda t, v: traded.set())
    real_bars = engine.feed.bars

    async def bars(t: Any) -> Any:
        if traded.is_set() and not engine._stop_requested:
            stop.armed.set()
            before()
            await asyncio.wait_for(stop.entered.wait(), 10)
            engine.request_stop()
            await asyncio.Event().wait()  # a fetch in flight at the stop: abandoned
        return await real_bars(t)

    engine.feed.bars = bars
    run = asyncio.ensure_future(engine.run_until_done())
    with capture_logs() as logs:
        done, _ = await asyncio.wait({run}, timeout=10)
        stopped = any(e["event"] == "engine.stop" for e in logs)
        if not done:
            run.cancel()  # the hang: unstick it (a second cancel reaches the task)
            await asyncio.wait({run}, timeout=10)
        elif stopped:
            run.result()
    return stopped and done, logs


async def test_a_stop_ends_a_reconciler_that_lost_its_cancel(engine_config, fake):
    panel, config = live_on_fake(engine_config, fake, RUN)
    # Rounds between bars: one is asking for the positions when the stop comes.
    config = dataclasses.replace(
        config, live=dataclasses.replace(config.live, reconcile_interval_s=0.05)
    )
    engine = build_engine(config, "live", panel=panel)
    stop = _Stop()
    engine.broker.positions = _losing_a_cancel("reconcile", engine.broker.positions, stop)

    ended, logs = await _stop_between_bars(engine, stop)

    assert ended, "the stop hung on the reconciler that lost its cancel"
    lost = [e for e in logs if e["event"] == "engine.task_cancel_lost"]
    assert [e["task"] for e in lost] == ["reconcile"]
    assert not [e for e in logs if e["event"] == "engine.tasks_not_stopped"]


async def test_a_stop_ends_a_fill_booker_that_lost_its_cancel(engine_config, fake, tmp_path):
    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    stop = _Stop()
    engine.broker.updates = _losing_a_cancel("late-fills", engine.broker.updates, stop)
    filled: dict[str, Any] = {}

    def fill_one() -> None:
        # A fill at the fake wakes the booker, which then asks the broker for it.
        o = open_buys(fake, RUN)[0]
        filled[o.client_order_id] = o.qty
        fake.call(fake.fill, o.client_order_id, price=100.0)

    ended, logs = await _stop_between_bars(engine, stop, fill_one)

    assert ended, "the stop hung on the fill booker that lost its cancel"
    lost = [e for e in logs if e["event"] == "engine.task_cancel_lost"]
    assert [e["task"] for e in lost] == ["late-fills"]
    # The fill it was booking when the cancel was lost is booked, once (not again by the
    # stop's last updates).
    ((cid, qty),) = filled.items()
    assert stored_fill_quantities(tmp_path / "store.db", cid) == [(qty,)]
