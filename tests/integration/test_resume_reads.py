"""What a live run's resume reads back: only what it keeps (the orders created after its
checkpoint, the last event of its newest EVENTS_KEPT orders, the last target of each
symbol), not the run's whole history, which grew every restart with the run's age (1.6 KB
a bar at 10 symbols). The kept state is the one the whole history gave, on both stores;
the expected state is made here from every row of the run, as the resume made it before."""

from __future__ import annotations

import math
import random
import re
import sqlite3
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from pg_schemas import started_store

from tradingd.core.types import Order, OrderStatus, RunInfo, Side
from tradingd.storage import buffered
from tradingd.storage.buffered import BufferedStore
from tradingd.storage.schema import TABLES, insert_sql
from tradingd.storage.sqlite import SqliteStore

T0 = datetime(2020, 1, 2, 14, 30, tzinfo=UTC)
BAR = timedelta(minutes=5)
SYMS = ("AAA", "BBB", "CCC", "DDD")
BARS, CHECKPOINT = 40, 29  # bars 30 to 39 are after the checkpoint: interrupted
KEPT = 5  # EVENTS_KEPT in these tests


def live_run() -> RunInfo:
    return RunInfo("r1", "live", T0, '{"k": 1}', SYMS, 100_000.0)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path, monkeypatch):
    monkeypatch.setattr(buffered, "EVENTS_KEPT", KEPT)
    pg_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    async with started_store(request.param, tmp_path, pg_url) as s:
        yield s


async def build_run(store: BufferedStore) -> datetime:
    """A live run of BARS bars, checkpointed after bar CHECKPOINT: three orders a bar (one
    creation time for the three, so the insertion order breaks ties), broker answers dated
    by the broker's clock (some after the next bar), answers repeating the stored intent (no
    event), events of an earlier build (booked_at NULL), and signals with NaN targets and of
    a symbol the run no longer trades. Returns the checkpoint's bar."""
    rng = random.Random(7)
    assert await store.resume_run(live_run()) is None
    enc = store._encode_time
    open_orders: list[Order] = []
    everything: list[Order] = []
    signals: list[tuple[Any, ...]] = []
    nan_row: tuple[Any, ...] = ()
    checkpoint = T0 + CHECKPOINT * BAR
    for k in range(BARS):
        t = T0 + k * BAR
        new = [
            Order(f"r1|{k:02d}-{j}", SYMS[j], Side.BUY, 10.0 + j, t, reason="rebalance")
            for j in range(3)
        ]
        store.record_orders("r1", new, intent=True, booked_at=t)
        store.record_orders("r1", [o.snapshot() for o in new], booked_at=t)  # acknowledged
        open_orders += new
        everything += new
        for o in rng.sample(open_orders, min(4, len(open_orders))):
            o.filled_quantity = min(o.quantity, o.filled_quantity + rng.choice((1.0, 5.0)))
            o.status = (
                OrderStatus.FILLED
                if o.filled_quantity == o.quantity
                else OrderStatus.PARTIALLY_FILLED
            )
            o.updated_at = t + timedelta(minutes=rng.choice((1, 2, 7)))  # the broker's clock
            if rng.random() < 0.5:  # two states at one time: the one stored last is the last
                step = o.snapshot()
                step.status, step.reason = OrderStatus.PARTIALLY_FILLED, "step"
                store.record_orders("r1", [step], booked_at=t)
            store.record_orders("r1", [o.snapshot()], booked_at=t)
        open_orders = [o for o in open_orders if o.status != OrderStatus.FILLED]
        for s in (*SYMS[:3], "ZZZ"):  # DDD never has a signal; ZZZ is no longer traded
            if rng.random() < 0.7:
                w = math.nan if rng.random() < 0.3 else round(rng.uniform(-1, 1), 3)
                signals.append(("r1", enc(t), s, rng.random(), w, "test@1"))
        if k == CHECKPOINT:  # AAA's last target is NaN: the one before it is in force
            signals = [r for r in signals if (r[1], r[2]) != (enc(t), "AAA")]
            # (A plain insert: PostgreSQL keeps it NaN, as before NaN was written as NULL.)
            nan_row = ("r1", enc(t), "AAA", 0.5, math.nan, "test@1")
            # The newest KEPT + 1 last events at one time: the order stored first is out;
            # three of them have another state at that time, stored before.
            late = [o.snapshot() for o in rng.sample(everything, KEPT + 1)]
            for o in late:
                o.reason, o.updated_at = "late step", t + timedelta(minutes=10)
            store.record_orders("r1", [o.snapshot() for o in late[:3]], booked_at=t)
            for o in late:
                o.reason = "late"
            store.record_orders("r1", late, booked_at=t)
            store.record_checkpoint("r1", t, {"portfolio": {"quantity": [0.0] * len(SYMS)}})
    await store.flush()
    # An earlier build's events (booked_at NULL): their own time decides, before and after
    # the checkpoint; the later is deleted by the resume.
    old_events = [
        ("r1", "r1|28-0", "canceled", 0.0, "old build", enc(checkpoint - BAR), None),
        ("r1", "r1|29-1", "canceled", 0.0, "old build", enc(checkpoint + BAR), None),
    ]
    await store._write_batches({"order_events": old_events, "signals": signals})
    await store._execute([(insert_sql(TABLES["signals"], store.dialect), nan_row)])
    return checkpoint


def kept_events(events: list[dict[str, Any]]) -> OrderedDict[tuple[str, str], tuple[Any, ...]]:
    """The event memory as the resume made it from all of the run's events, in time order."""
    last: OrderedDict[tuple[str, str], tuple[Any, ...]] = OrderedDict()
    for e in events:
        key = ("r1", e["client_order_id"])
        last[key] = (e["status"], e["filled_quantity"], e["reason"], e["time"])
        last.move_to_end(key)
    while len(last) > KEPT:
        last.popitem(last=False)
    return last


def targets_in_force(signals: list[dict[str, Any]]) -> np.ndarray:
    out = np.zeros(len(SYMS))
    for r in signals:  # time order
        if r["symbol"] in SYMS and not math.isnan(r["target_weight"]):
            out[SYMS.index(r["symbol"])] = r["target_weight"]
    return out


def nan_as_text(rows: Any) -> list[dict[str, Any]]:
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]


async def test_a_resume_keeps_what_the_whole_history_gave(store: BufferedStore) -> None:
    checkpoint = await build_run(store)
    orders = await store.fetch("orders", "r1")
    events_before = await store.fetch("order_events", "r1")

    resumed = await store.resume_run(live_run())

    assert resumed is not None and resumed.bar_time == checkpoint
    expected = [o for o in orders if o["created_at"] > checkpoint]
    assert 0 < len(expected) < len(orders)
    assert nan_as_text(resumed.unconfirmed) == nan_as_text(expected)
    # The events as the resume's delete left them (by COALESCE(booked_at, time)).
    events = await store.fetch("order_events", "r1")
    assert len(events) < len(events_before)
    assert ("r1|29-1", "canceled") not in {(e["client_order_id"], e["status"]) for e in events}
    assert len({e["client_order_id"] for e in events}) > KEPT
    assert store._last_events is not None
    assert list(store._last_events.items()) == list(kept_events(events).items())
    # The last of them are acknowledgements the broker dated after the checkpoint.
    assert max(e["time"] for e in events) > checkpoint
    signals = await store.fetch("signals", "r1")
    targets = store._last_targets["r1"]
    np.testing.assert_array_equal(targets, targets_in_force(signals))
    last_aaa = [r["target_weight"] for r in signals if r["symbol"] == "AAA"][-1]
    assert math.isnan(last_aaa) and targets[0] != 0.0 and targets[3] == 0.0


async def test_a_resume_reads_only_the_rows_it_keeps(store: BufferedStore, monkeypatch) -> None:
    """The rows the resume's queries return of orders, order_events and signals are the
    rows it keeps, however long the run: it read every row of the three tables."""
    await build_run(store)
    read: dict[str, int] = {}
    query = store._query

    async def counting(sql: str, args: Any) -> Any:
        rows = await query(sql, args)
        for name in set(re.findall(r"\bFROM (orders|order_events|signals)\b", sql)):
            read[name] = read.get(name, 0) + len(rows)
        return rows

    monkeypatch.setattr(store, "_query", counting)
    resumed = await store.resume_run(live_run())
    monkeypatch.undo()

    assert resumed is not None
    orders = await store.fetch("orders", "r1")
    assert read["orders"] == len(resumed.unconfirmed) < len(orders)
    assert read["order_events"] == KEPT < len(await store.fetch("order_events", "r1"))
    # A row per symbol with a target (DDD has none; ZZZ is read and not traded).
    assert read["signals"] == 4 < len(await store.fetch("signals", "r1"))


async def test_an_earlier_builds_database_gets_the_resumes_index(tmp_path) -> None:
    """The orders created after a checkpoint are found by (run_id, created_at): a database
    made before that index gets it at its next start."""
    path = tmp_path / "tradingd.db"
    s = SqliteStore(path, batch_size=1000)
    await s.start()
    await s.stop()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX orders_run_id_created_at_idx")
    s = SqliteStore(path, batch_size=1000)
    await s.start()
    await s.stop()
    with sqlite3.connect(path) as db:
        (columns,) = db.execute(
            "SELECT group_concat(name) FROM pragma_index_info('orders_run_id_created_at_idx')"
        ).fetchone()
    assert columns == "run_id,created_at"
