"""How a store keeps a live run's order states: each state once in `order_events` (an
acknowledgement repeating its stored intent is no second event), the latest in `orders`.
The rule is BufferedStore's; each test runs on both stores, which write the chunks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from pg_schemas import started_store

from tradingd.core.types import Order, OrderStatus, RunInfo, Side
from tradingd.storage.buffered import BufferedStore

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def run_info() -> RunInfo:
    return RunInfo("r1", "backtest", T0, '{"k": 1}', ("AAA", "BBB", "CCC"), 100_000.0)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path):
    pg_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    async with started_store(request.param, tmp_path, pg_url) as s:
        yield s


async def test_an_acknowledgement_repeating_its_stored_intent_is_not_a_second_event(
    store: BufferedStore,
) -> None:
    """A live run stores an order's intent before sending it, then the broker's answer: an
    answer in the intent's state updates the order without a second event; one in another
    state (rejected, filled at once) is an event of its own."""
    await store.begin_run(run_info())
    same = Order("r1|same", "AAA", Side.BUY, 10.0, T0)
    rejected = Order("r1|rej", "BBB", Side.BUY, 5.0, T0)
    filled = Order("r1|fill", "CCC", Side.SELL, 4.0, T0, reason="rebalance")
    plan = [same, rejected, filled]
    store.record_orders("r1", plan, intent=True)
    assert store.pending()["order_events"] == 3
    await store.flush()  # durable before it is sent
    rejected.status, rejected.reason = OrderStatus.REJECTED, "insufficient buying power"
    filled.status, filled.filled_quantity, filled.avg_fill_price = OrderStatus.FILLED, 4.0, 9.5
    store.record_orders("r1", plan)
    assert store.pending() == {**store.pending(), "orders": 3, "order_events": 2}
    # A later state of the acknowledged order is an event again, as before.
    same.status, same.filled_quantity, same.avg_fill_price, same.updated_at = (
        OrderStatus.FILLED,
        10.0,
        101.0,
        T0 + DAY,
    )
    store.record_orders("r1", [same])
    await store.flush()

    events = [
        (e["client_order_id"], e["status"], e["filled_quantity"], e["reason"], e["time"])
        for e in await store.fetch("order_events", "r1")
    ]
    assert events == [
        ("r1|same", "new", 0.0, "", T0),
        ("r1|rej", "new", 0.0, "", T0),
        ("r1|fill", "new", 0.0, "rebalance", T0),
        ("r1|rej", "rejected", 0.0, "insufficient buying power", T0),
        ("r1|fill", "filled", 4.0, "rebalance", T0),
        ("r1|same", "filled", 10.0, "", T0 + DAY),
    ]
    orders = await store.fetch("orders", "r1")  # by created_at, then id
    assert [
        (o["client_order_id"], o["status"], o["filled_quantity"], o["avg_fill_price"])
        for o in orders
    ] == [
        ("r1|fill", "filled", 4.0, 9.5),
        ("r1|rej", "rejected", 0.0, pytest.approx(math.nan, nan_ok=True)),
        ("r1|same", "filled", 10.0, 101.0),
    ]


async def test_a_live_runs_event_memory_is_bounded_and_a_replay_keeps_none(
    store: BufferedStore, monkeypatch
) -> None:
    """Before its first intent (a replay never stores one) every state is an event, as
    before; from it on, a state equal to its order's last event adds none, and the memory
    keeps EVENTS_KEPT orders, oldest out first (an order that old repeating a state is one
    row more)."""
    from tradingd.storage import buffered

    monkeypatch.setattr(buffered, "EVENTS_KEPT", 2)
    await store.begin_run(run_info())
    replayed = Order("r1|replay", "CCC", Side.BUY, 3.0, T0)
    store.record_orders("r1", [replayed])
    store.record_orders("r1", [replayed])
    a, b, c = (Order(f"r1|{x}", "AAA", Side.BUY, 1.0, T0 + DAY) for x in "abc")
    store.record_orders("r1", [a], intent=True)
    store.record_orders("r1", [b, c], intent=True)  # a is the third: forgotten
    store.record_orders("r1", [a, b, c])
    await store.flush()
    events = [(e["client_order_id"], e["status"]) for e in await store.fetch("order_events", "r1")]
    assert events == [
        ("r1|replay", "new"),
        ("r1|replay", "new"),
        ("r1|a", "new"),
        ("r1|b", "new"),
        ("r1|c", "new"),
        ("r1|a", "new"),
    ]


async def test_two_states_of_one_order_in_one_call_end_on_the_last(store: BufferedStore) -> None:
    """A live call holding an order's intent state (no new event) and then a later state (an
    event) wrote the repeat after the event, so the `orders` row ended on the older state."""
    await store.begin_run(run_info())
    o = Order("r1|a", "AAA", Side.BUY, 10.0, T0)
    store.record_orders("r1", [o], intent=True)
    filled = o.snapshot()
    filled.status, filled.filled_quantity, filled.updated_at = OrderStatus.FILLED, 10.0, T0 + DAY
    store.record_orders("r1", [o, filled])
    await store.flush()
    (row,) = await store.fetch("orders", "r1")
    assert (row["status"], row["filled_quantity"]) == ("filled", 10.0)
    events = [(e["status"], e["filled_quantity"]) for e in await store.fetch("order_events", "r1")]
    assert events == [("new", 0.0), ("filled", 10.0)]


async def test_a_restarted_run_does_not_store_a_state_stored_before_its_stop_again(
    store: BufferedStore,
) -> None:
    """A live process killed after storing an intent (and its bar's checkpoint) starts with an
    empty memory: the acknowledgement it reads after the restart, in the intent's state, was
    a second event. An intent stored after the checkpoint has its event deleted by the
    resume, and is stored again when the restarted run records it."""
    run = RunInfo("r1", "live", T0, '{"k": 1}', ("AAA", "BBB", "CCC"), 100_000.0)
    assert await store.resume_run(run) is None
    a = Order("r1|a", "AAA", Side.BUY, 10.0, T0, reason="rebalance")
    store.record_orders("r1", [a], intent=True)
    store.record_checkpoint("r1", T0, {"portfolio": {}})
    b = Order("r1|b", "BBB", Side.BUY, 5.0, T0 + DAY)
    store.record_orders("r1", [b], intent=True)
    await store.flush()
    # the process dies here; the next one resumes from the checkpoint at T0
    resumed = await store.resume_run(run)
    assert resumed is not None and resumed.bar_time == T0
    assert [o["client_order_id"] for o in resumed.unconfirmed] == ["r1|b"]
    store.record_orders("r1", [a.snapshot(), b.snapshot()])  # the broker's answers
    await store.flush()
    events = [(e["client_order_id"], e["status"]) for e in await store.fetch("order_events", "r1")]
    assert sorted(events) == [("r1|a", "new"), ("r1|b", "new")]


async def test_a_restart_keeps_the_checkpointed_bars_states_whatever_the_brokers_clock(
    store: BufferedStore,
) -> None:
    """Alpaca dates an order state by its own clock (the wall clock, hours after a daily
    bar's label), and the resume deleted the events after its checkpoint by that time: every
    restart lost the last bar's acknowledgements and fills from the order history. A live
    run's events say the bar that recorded them (`booked_at`), and the resume goes by it;
    an event of the interrupted bar is still deleted, and a repeat of a kept state after the
    restart is no second event."""
    run = RunInfo("r1", "live", T0, '{"k": 1}', ("AAA", "BBB", "CCC"), 100_000.0)
    assert await store.resume_run(run) is None
    wall = T0 + timedelta(hours=14, minutes=28)
    a = Order("r1|a", "AAA", Side.BUY, 10.0, T0)
    store.record_orders("r1", [a], intent=True, booked_at=T0)
    acked = a.snapshot()
    # the broker's answer: partly filled, at its clock
    acked.status, acked.filled_quantity, acked.updated_at = OrderStatus.PARTIALLY_FILLED, 4.0, wall
    store.record_orders("r1", [acked], booked_at=T0)
    store.record_checkpoint("r1", T0, {"portfolio": {}})
    b = Order("r1|b", "BBB", Side.BUY, 5.0, T0 + DAY)
    store.record_orders("r1", [b], intent=True, booked_at=T0 + DAY)
    await store.flush()
    # the process dies in the next bar; the next one resumes from the checkpoint at T0
    resumed = await store.resume_run(run)
    assert resumed is not None and resumed.bar_time == T0
    events = await store.fetch("order_events", "r1")
    assert [(e["client_order_id"], e["status"]) for e in events] == [
        ("r1|a", "new"),
        ("r1|a", "partially_filled"),
    ]
    assert events[1]["time"] == wall and events[1]["booked_at"] == T0
    store.record_orders("r1", [acked.snapshot()], booked_at=T0 + DAY)  # read again
    await store.flush()
    assert len(await store.fetch("order_events", "r1")) == 2


@pytest.mark.parametrize("last_stop", ["clean", "failed", "killed"])
async def test_an_upgraded_runs_events_without_a_bar_survive_its_restart_after_a_clean_stop(
    store: BufferedStore, last_stop: str
) -> None:
    """A build before `booked_at` wrote its events with none, dated by the broker's clock
    (the wall clock, after the bar's label): the first restart after an upgrade deleted the
    last bar's acknowledgements as if after the checkpoint. A process that stopped cleanly
    ended its run after its last bar's rows, so none of them is; after a kill (or a failure)
    an event without a bar may be the interrupted bar's, and goes by its time as before."""
    run = RunInfo("r1", "live", T0, '{"k": 1}', ("AAA", "BBB", "CCC"), 100_000.0)
    assert await store.resume_run(run) is None
    wall = T0 + timedelta(hours=14, minutes=28)
    a = Order("r1|a", "AAA", Side.BUY, 10.0, T0)
    store.record_orders("r1", [a], intent=True)  # the old build: no booked_at
    acked = a.snapshot()
    acked.status, acked.filled_quantity, acked.updated_at = OrderStatus.PARTIALLY_FILLED, 4.0, wall
    store.record_orders("r1", [acked])
    store.record_checkpoint("r1", T0, {"portfolio": {}})
    await store.flush()
    if last_stop != "killed":
        summary = {"bars": 1} if last_stop == "clean" else {"bars": 1, "failed": True}
        await store.end_run("r1", summary)
    resumed = await store.resume_run(run)
    assert resumed is not None and resumed.bar_time == T0
    assert resumed.stopped_cleanly is (last_stop == "clean")
    events = [(e["client_order_id"], e["status"]) for e in await store.fetch("order_events", "r1")]
    if last_stop == "clean":
        assert events == [("r1|a", "new"), ("r1|a", "partially_filled")]
    else:
        assert events == [("r1|a", "new")]  # the acknowledgement's time is after T0


@pytest.mark.parametrize("stop", ["checkpointed", "not checkpointed"])
async def test_a_resume_keeps_what_a_clean_stop_checkpointed_after_its_bar(
    store: BufferedStore, stop: str
) -> None:
    """A clean stop books the broker's last updates after its last bar (stamped just after
    it) and checkpoints them: `booked_through` in the checkpoint. The resume keeps them, and
    goes on from the bar's recorded positions (`positions_recorded`), so the next bar writes
    the row of the shares booked after it. Without it (a kill), they are dropped, as
    before, and the broker reports them again."""
    from tradingd.core.types import Fill

    run = RunInfo("r1", "live", T0, '{"k": 1}', ("AAA", "BBB", "CCC"), 100_000.0)
    assert await store.resume_run(run) is None
    late = T0 + timedelta(microseconds=1)
    a = Order("r1|a", "AAA", Side.BUY, 10.0, T0)
    store.record_orders("r1", [a], intent=True, booked_at=T0)
    store.record_checkpoint("r1", T0, {"portfolio": {"quantity": [0.0, 0.0, 0.0]}})
    filled = a.snapshot()
    filled.status, filled.filled_quantity = OrderStatus.FILLED, 10.0
    store.record_orders("r1", [filled], booked_at=late)
    fill = Fill("r1|a#10", "r1|a", "AAA", Side.BUY, 10.0, 100.0, 0.0, 0.0, T0 + DAY / 2)
    store.record_fills("r1", [fill], late)
    if stop == "checkpointed":
        book = {"portfolio": {"quantity": [10.0, 0.0, 0.0]}}
        state = {**book, "booked_through": late.isoformat(), "positions_recorded": [0.0] * 3}
        store.record_checkpoint("r1", T0, state)
    await store.end_run("r1", {"bars": 1})
    resumed = await store.resume_run(run)
    assert resumed is not None and resumed.bar_time == T0
    kept = stop == "checkpointed"
    assert resumed.booked_through == (late if kept else T0)
    events = [(e["client_order_id"], e["status"]) for e in await store.fetch("order_events", "r1")]
    assert events == [("r1|a", "new"), ("r1|a", "filled")][: 2 if kept else 1]
    assert [f["fill_id"] for f in await store.fetch("fills", "r1")] == (["r1|a#10"] if kept else [])
    # The next bar: the shares booked after T0 are a change from T0's recorded positions.
    import numpy as np

    store.record_positions(
        "r1",
        T0 + DAY,
        run.symbols,
        np.array([10.0, 0.0, 0.0]),
        np.array([100.0, 0.0, 0.0]),
        np.array([101.0, 1.0, 1.0]),
    )
    await store.flush()
    rows = await store.fetch("positions", "r1")
    assert [(p["symbol"], p["quantity"]) for p in rows] == [("AAA", 10.0)]
