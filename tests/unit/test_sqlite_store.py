"""SqliteStore against real SQLite files: round trips, reruns, upserts, batching, filters."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from tradingd.core.errors import ConfigError, StorageError
from tradingd.core.types import (
    CrossSection,
    Fill,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    RunInfo,
    Side,
)
from tradingd.storage.factory import open_store
from tradingd.storage.postgres import PostgresStore
from tradingd.storage.sqlite import SqliteStore

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SYMS = ("AAA", "BBB", "CCC")


def nan_as_text(rows: list[dict]) -> list[dict]:
    """NaN != NaN, so compare NaN floats as the text "NaN"."""
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in rows
    ]


def run_info(run_id: str = "r1") -> RunInfo:
    return RunInfo(run_id, "backtest", T0, '{"k": 1}', SYMS, 100_000.0)


def cross_section(t: datetime, close: list[float]) -> CrossSection:
    c = np.array(close, dtype=float)
    return CrossSection(
        time=t,
        open=c - 1,
        high=c + 2,
        low=c - 2,
        close=c,
        volume=np.where(np.isnan(c), np.nan, 1000.0),
        split=np.ones(len(c)),
        dividend=np.zeros(len(c)),
    )


def count(path: Path, table: str, run_id: str | None = None) -> int:
    """Rows committed to the file, read through an independent connection."""
    with sqlite3.connect(path) as db:
        if run_id is None:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return db.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "tradingd.db"


@pytest.fixture
async def store(db_path: Path):
    s = SqliteStore(db_path, batch_size=1000)
    await s.start()
    yield s
    await s.stop()


async def test_round_trip_every_table(store: SqliteStore, db_path: Path) -> None:
    assert db_path.exists()  # parent directories were created
    await store.begin_run(run_info())
    entry = Order(
        "r1|e",
        "AAA",
        Side.BUY,
        10.0,
        T0,
        type=OrderType.LIMIT,
        limit_price=101.5,
        oco_group="g1",
        reason="rebalance",
    )
    stop = Order(
        "r1|sl",
        "AAA",
        Side.SELL,
        10.0,
        T0,
        type=OrderType.TRAILING_STOP,
        stop_price=95.25,
        trail_pct=0.02,
        leg=Leg.STOP_LOSS,
        parent_id="r1|e",
        status=OrderStatus.HELD,
        updated_at=T0 + DAY,
    )
    store.record_orders("r1", [entry, stop])
    fill = Fill("f1", "r1|e", "AAA", Side.BUY, 10.0, 101.25, 1.5, 0.25, T0 + DAY, 101.0)
    store.record_fills("r1", [fill])
    store.record_positions(
        "r1",
        T0 + DAY,
        SYMS,
        np.array([10.0, 0.0, -5.0]),
        np.array([101.25, 0.0, 50.0]),
        np.array([102.0, 20.0, 49.5]),
    )
    store.record_equity("r1", T0 + DAY, 98_987.5, 100_000.25, 0.0127, 0.0077)
    store.record_signals(
        "r1",
        T0,
        SYMS,
        np.array([0.75, 0.1, -0.5]),
        np.array([0.25, 0.0, -0.125]),
        "ml_ensemble@abc123",
    )
    await store.write_bars(SYMS, [cross_section(T0, [100.0, np.nan, 50.5])])
    await store.end_run("r1", {"sharpe": 1.25, "trades": 3, "bad": math.nan})

    [run] = await store.fetch("runs", "r1")
    assert run["started_at"] == T0 and run["started_at"].tzinfo is not None
    assert isinstance(run["ended_at"], datetime) and run["ended_at"].utcoffset() == timedelta(0)
    assert {k: v for k, v in run.items() if k != "ended_at"} == {
        "run_id": "r1",
        "mode": "backtest",
        "started_at": T0,
        "config_json": '{"k": 1}',
        "symbols": list(SYMS),
        "initial_capital": 100_000.0,
        "summary": {"sharpe": 1.25, "trades": 3, "bad": None},
    }

    assert nan_as_text(await store.fetch("orders", "r1")) == [
        {
            "run_id": "r1",
            "client_order_id": "r1|e",
            "symbol": "AAA",
            "side": "buy",
            "type": "limit",
            "quantity": 10.0,
            "limit_price": 101.5,
            "stop_price": None,
            "trail_pct": None,
            "leg": "entry",
            "parent_id": None,
            "oco_group": "g1",
            "status": "new",
            "filled_quantity": 0.0,
            "avg_fill_price": "NaN",  # NaN comes back as NaN
            "reason": "rebalance",
            "created_at": T0,
            "updated_at": None,
        },
        {
            "run_id": "r1",
            "client_order_id": "r1|sl",
            "symbol": "AAA",
            "side": "sell",
            "type": "trailing_stop",
            "quantity": 10.0,
            "limit_price": None,
            "stop_price": 95.25,
            "trail_pct": 0.02,
            "leg": "sl",
            "parent_id": "r1|e",
            "oco_group": None,
            "status": "held",
            "filled_quantity": 0.0,
            "avg_fill_price": "NaN",
            "reason": "",
            "created_at": T0,
            "updated_at": T0 + DAY,
        },
    ]
    assert await store.fetch("fills", "r1") == [
        {
            "run_id": "r1",
            "fill_id": "f1",
            "client_order_id": "r1|e",
            "symbol": "AAA",
            "side": "buy",
            "quantity": 10.0,
            "price": 101.25,
            "commission": 1.5,
            "slippage": 0.25,
            "reference_price": 101.0,
            "time": T0 + DAY,
            "booked_at": T0 + DAY,  # recorded without a booking bar: the fill's own time
        }
    ]
    assert await store.fetch("positions", "r1") == [
        {
            "run_id": "r1",
            "time": T0 + DAY,
            "symbol": "AAA",
            "quantity": 10.0,
            "avg_price": 101.25,
            "mark_price": 102.0,
        },
        {
            "run_id": "r1",
            "time": T0 + DAY,
            "symbol": "CCC",
            "quantity": -5.0,
            "avg_price": 50.0,
            "mark_price": 49.5,
        },
    ]
    assert await store.fetch("equity", "r1") == [
        {
            "run_id": "r1",
            "time": T0 + DAY,
            "cash": 98_987.5,
            "equity": 100_000.25,
            "gross_exposure": 0.0127,
            "net_exposure": 0.0077,
        }
    ]
    assert await store.fetch("signals", "r1") == [
        {
            "run_id": "r1",
            "time": T0,
            "symbol": "AAA",
            "score": 0.75,
            "target_weight": 0.25,
            "source": "ml_ensemble@abc123",
        },
        {
            "run_id": "r1",
            "time": T0,
            "symbol": "CCC",
            "score": -0.5,
            "target_weight": -0.125,
            "source": "ml_ensemble@abc123",
        },
    ]
    assert await store.fetch_bars() == [
        {
            "symbol": "AAA",
            "time": T0,
            "open": 99.0,
            "high": 102.0,
            "low": 98.0,
            "close": 100.0,
            "volume": 1000.0,
            "split": 1.0,
            "dividend": 0.0,
        },
        {
            "symbol": "CCC",
            "time": T0,
            "open": 49.5,
            "high": 52.5,
            "low": 48.5,
            "close": 50.5,
            "volume": 1000.0,
            "split": 1.0,
            "dividend": 0.0,
        },
    ]
    # Stored as fixed-width ISO-8601 UTC text.
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT time FROM equity").fetchone()[0] == (
            "2020-01-03T21:00:00.000000+00:00"
        )
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_start_is_idempotent_on_an_existing_file(db_path: Path) -> None:
    first = SqliteStore(db_path)
    await first.start()
    await first.start()  # a second start on a running store does nothing
    await first.begin_run(run_info())
    first.record_equity("r1", T0, 1.0, 2.0, 3.0, 4.0)
    await first.stop()

    second = SqliteStore(db_path)
    await second.start()  # schema already there: no error, data kept
    try:
        assert [r["equity"] for r in await second.fetch("equity", "r1")] == [2.0]
    finally:
        await second.stop()


async def test_begin_run_again_replaces_the_runs_rows(store: SqliteStore, db_path: Path) -> None:
    await store.begin_run(run_info("r1"))
    await store.begin_run(run_info("other"))
    for rid in ("r1", "other"):
        store.record_equity(rid, T0, 1.0, 1.0, 0.0, 0.0)
        store.record_orders(rid, [Order(f"{rid}|o", "AAA", Side.BUY, 1.0, T0)])
        store.record_fills(rid, [Fill("f1", f"{rid}|o", "AAA", Side.BUY, 1.0, 2.0, 0, 0, T0)])
        store.record_positions(rid, T0, SYMS, np.ones(3), np.ones(3), np.ones(3))
        store.record_signals(rid, T0, SYMS, np.ones(3), np.ones(3))
    await store.end_run("r1", {"a": 1})

    await store.begin_run(run_info("r1"))  # rerun of the same backtest
    for table in ("orders", "order_events", "fills", "positions", "equity", "signals"):
        assert count(db_path, table, "r1") == 0, table
        assert count(db_path, table, "other") > 0, table
    [run] = await store.fetch("runs", "r1")
    assert run["summary"] is None and run["ended_at"] is None
    assert count(db_path, "runs") == 2

    store.record_equity("r1", T0 + DAY, 5.0, 6.0, 0.0, 0.0)
    await store.flush()
    assert [(r["time"], r["equity"]) for r in await store.fetch("equity", "r1")] == [
        (T0 + DAY, 6.0)
    ]


async def test_order_upsert_keeps_latest_state_and_events_keep_history(
    store: SqliteStore,
) -> None:
    await store.begin_run(run_info())
    o = Order("r1|x", "BBB", Side.SELL, 100.0, T0)
    store.record_orders("r1", [o])
    await store.flush()  # the next states arrive in a later batch
    o.status, o.filled_quantity, o.avg_fill_price, o.updated_at = (
        OrderStatus.PARTIALLY_FILLED,
        40.0,
        20.5,
        T0 + DAY,
    )
    store.record_orders("r1", [o])
    o.status, o.filled_quantity, o.avg_fill_price, o.updated_at, o.reason = (
        OrderStatus.FILLED,
        100.0,
        20.75,
        T0 + 2 * DAY,
        "done",
    )
    store.record_orders("r1", [o])  # two updates of one order in the same batch
    await store.flush()

    [row] = await store.fetch("orders", "r1")
    assert (row["status"], row["filled_quantity"], row["avg_fill_price"], row["reason"]) == (
        "filled",
        100.0,
        20.75,
        "done",
    )
    assert row["updated_at"] == T0 + 2 * DAY and row["created_at"] == T0
    events = await store.fetch("order_events", "r1")
    assert [(e["status"], e["filled_quantity"], e["time"], e["reason"]) for e in events] == [
        ("new", 0.0, T0, ""),
        ("partially_filled", 40.0, T0 + DAY, ""),
        ("filled", 100.0, T0 + 2 * DAY, "done"),
    ]


async def test_events_at_the_same_time_keep_insertion_order(store: SqliteStore) -> None:
    await store.begin_run(run_info())
    o = Order("r1|y", "AAA", Side.BUY, 1.0, T0)
    statuses = [OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED]
    for st in statuses:
        o.status = st
        store.record_orders("r1", [o])
    await store.flush()
    assert [e["status"] for e in await store.fetch("order_events", "r1")] == [
        "new",
        "partially_filled",
        "filled",
    ]


async def test_batching_writes_only_when_a_buffer_is_full(db_path: Path) -> None:
    store = SqliteStore(db_path, batch_size=3, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)
        store.record_equity("r1", T0 + DAY, 2.0, 2.0, 0.0, 0.0)
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert count(db_path, "equity") == 0
        assert store.pending()["equity"] == 2

        store.record_equity("r1", T0 + 2 * DAY, 3.0, 3.0, 0.0, 0.0)
        store.record_fills("r1", [Fill("f", "c", "AAA", Side.BUY, 1.0, 1.0, 0, 0, T0)])
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        # The full buffer triggered a flush of every buffer.
        assert count(db_path, "equity") == 3
        assert count(db_path, "fills") == 1
        assert store.pending() == dict.fromkeys(store.pending(), 0)

        store.record_equity("r1", T0 + 3 * DAY, 4.0, 4.0, 0.0, 0.0)
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert count(db_path, "equity") == 3
    finally:
        await store.stop()  # stop flushes the rest
    assert count(db_path, "equity") == 4


async def test_rows_are_written_once_the_flush_interval_has_passed(
    db_path: Path, monkeypatch
) -> None:
    import tradingd.storage.buffered as buffered

    now = [1000.0]
    monkeypatch.setattr(buffered.time, "monotonic", lambda: now[0])
    store = SqliteStore(db_path, batch_size=1000, flush_interval_s=5.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        # The replay's writer process has started: until then a batch the interval makes
        # due waits for it (SqliteStore._hold; test_store_process covers that).
        store._child.sync()
        await store.flush()
        store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)
        now[0] += 4.9
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert count(db_path, "equity") == 0  # batch not full, interval not reached
        now[0] += 0.2
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert count(db_path, "equity") == 1  # a live daemon's row reaches the database
    finally:
        await store.stop()


async def test_failed_flush_keeps_rows_buffered(db_path: Path, monkeypatch) -> None:
    store = SqliteStore(db_path, process=False)  # the writer thread's contract
    await store.start()
    await store.begin_run(run_info())
    store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)

    def broken(batches):
        raise StorageError("disk full")

    monkeypatch.setattr(store, "_write_rows", broken)  # on the writer thread
    with pytest.raises(StorageError, match="disk full"):
        await store.flush()
    store.record_equity("r1", T0 + DAY, 2.0, 2.0, 0.0, 0.0)
    assert store.pending()["equity"] == 2
    monkeypatch.undo()
    await store.flush()
    assert [r["cash"] for r in await store.fetch("equity", "r1")] == [1.0, 2.0]
    await store.stop()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("decisions", [("AAA", 0.5, 0.1), ("DDD", "NaN", -0.2)]),
        (
            "all",
            [("AAA", 0.5, 0.1), ("BBB", 0.3, 0.0), ("CCC", -0.0625, 0.0), ("DDD", "NaN", -0.2)],
        ),
        ("none", []),
    ],
)
async def test_signals_filter(db_path: Path, mode: str, expected: list) -> None:
    store = SqliteStore(db_path, signals=mode)
    await store.start()
    try:
        await store.begin_run(run_info())
        store.record_signals(
            "r1",
            T0,
            ("AAA", "BBB", "CCC", "DDD", "EEE"),
            np.array([0.5, 0.3, -0.0625, np.nan, np.nan]),
            np.array([0.1, 0.0, 0.0, -0.2, np.nan]),
        )
        await store.flush()
        rows = await store.fetch("signals", "r1")
        assert [(r["symbol"], r["score"], r["target_weight"]) for r in nan_as_text(rows)] == (
            expected
        )
    finally:
        await store.stop()


async def test_positions_and_decisions_are_recorded_on_change(store: SqliteStore) -> None:
    await store.begin_run(run_info())
    qty = [np.array([5.0, 0, 0]), np.array([5.0, 0, 0]), np.array([0.0, 2.0, 0])]
    tgt = [np.array([0.1, 0, 0]), np.array([0.1, 0, 0]), np.array([0.0, 0.05, 0])]
    for k in range(3):
        store.record_positions("r1", T0 + k * DAY, SYMS, qty[k], np.ones(3), np.ones(3))
        store.record_signals("r1", T0 + k * DAY, SYMS, np.full(3, 0.5), tgt[k])
    await store.flush()
    pos = [(r["time"], r["symbol"], r["quantity"]) for r in await store.fetch("positions", "r1")]
    # Unchanged holdings are not repeated; a close is a row with quantity 0.
    assert pos == [(T0, "AAA", 5.0), (T0 + 2 * DAY, "AAA", 0.0), (T0 + 2 * DAY, "BBB", 2.0)]
    sig = [(r["time"], r["symbol"], r["target_weight"]) for r in await store.fetch("signals", "r1")]
    assert sig == [(T0, "AAA", 0.1), (T0 + 2 * DAY, "AAA", 0.0), (T0 + 2 * DAY, "BBB", 0.05)]


async def test_positions_only_nonzero_quantities(store: SqliteStore) -> None:
    await store.begin_run(run_info())
    store.record_positions(
        "r1", T0, SYMS, np.array([0.0, 0.0, 0.0]), np.zeros(3), np.array([1.0, 2.0, 3.0])
    )
    store.record_positions(
        "r1",
        T0 + DAY,
        SYMS,
        np.array([0.0, -3.0, np.nan]),
        np.array([0.0, 7.5, 0.0]),
        np.array([1.0, 8.0, 3.0]),
    )
    await store.flush()
    rows = await store.fetch("positions", "r1")
    assert [(r["time"], r["symbol"], r["quantity"], r["avg_price"]) for r in rows] == [
        (T0 + DAY, "BBB", -3.0, 7.5)
    ]


async def test_bars_upsert_is_idempotent(db_path: Path) -> None:
    store = SqliteStore(db_path, batch_size=2)  # several write batches per call
    await store.start()
    try:
        bars = [cross_section(T0 + i * DAY, [10.0 + i, 20.0 + i, np.nan]) for i in range(3)]
        await store.write_bars(SYMS, bars)
        await store.write_bars(SYMS, bars)  # re-fetching the same history
        assert count(db_path, "bars") == 6
        # A corrected bar replaces the stored one.
        await store.write_bars(SYMS, [cross_section(T0 + DAY, [11.5, np.nan, 30.0])])
        assert count(db_path, "bars") == 7
        rows = await store.fetch_bars("AAA")
        assert [(r["time"], r["close"]) for r in rows] == [
            (T0, 10.0),
            (T0 + DAY, 11.5),
            (T0 + 2 * DAY, 12.0),
        ]
        assert [r["close"] for r in await store.fetch_bars("BBB")] == [20.0, 21.0, 22.0]
        assert [(r["time"], r["close"]) for r in await store.fetch_bars("CCC")] == [
            (T0 + DAY, 30.0)
        ]
    finally:
        await store.stop()


async def test_times_are_normalised_to_utc(store: SqliteStore) -> None:
    await store.begin_run(run_info())
    eastern = timezone(timedelta(hours=-5))
    store.record_equity("r1", datetime(2020, 1, 2, 16, 0, tzinfo=eastern), 1, 1, 0, 0)
    store.record_equity("r1", datetime(2020, 1, 3, 21, 0), 2, 2, 0, 0)  # naive = UTC
    await store.flush()
    times = [r["time"] for r in await store.fetch("equity", "r1")]
    assert times == [T0, T0 + DAY]
    assert all(t.utcoffset() == timedelta(0) for t in times)


async def test_memory_database_and_factory(tmp_path: Path, monkeypatch) -> None:
    mem = open_store("sqlite:///:memory:", batch_size=7)
    assert isinstance(mem, SqliteStore) and mem.path == ":memory:" and mem.batch_size == 7
    await mem.start()
    try:
        await mem.begin_run(run_info())
        mem.record_equity("r1", T0, 1.0, 2.0, 3.0, 4.0)
        await mem.flush()
        assert len(await mem.fetch("equity", "r1")) == 1
    finally:
        await mem.stop()

    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///data/x.db")
    assert isinstance(rel, SqliteStore) and rel.path == "data/x.db"
    await rel.start()
    await rel.stop()
    assert (tmp_path / "data" / "x.db").exists()

    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore) and absolute.path == f"{tmp_path}/abs.db"

    pg = open_store("postgres://u:secret@db:5432/x", schema="s1")
    assert isinstance(pg, PostgresStore) and pg.schema == "s1"  # not connected yet
    assert isinstance(open_store("postgresql://db/x"), PostgresStore)


def test_factory_rejects_unknown_schemes() -> None:
    with pytest.raises(ConfigError) as e:
        open_store("mysql://user:pw@db/x")
    msg = str(e.value)
    assert "mysql://user:***@db/x" in msg and "pw@" not in msg
    assert "sqlite:///" in msg and "postgresql://" in msg
    with pytest.raises(ConfigError):
        open_store("sqlite:///")
    with pytest.raises(ConfigError, match="decisions"):
        open_store("sqlite:///:memory:", signals="everything")
    with pytest.raises(ConfigError):
        open_store("sqlite:///:memory:", batch_size=0)


async def test_fetch_rejects_unknown_tables(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="bars"):
        await store.fetch("bars", "r1")


async def test_use_before_start_is_a_storage_error(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(StorageError, match="not started"):
        await store.begin_run(run_info())


async def test_background_write_overlaps_and_a_failure_surfaces(db_path: Path, monkeypatch) -> None:
    store = SqliteStore(db_path, batch_size=1, flush_interval_s=3600.0, process=False)
    await store.start()
    gate = threading.Event()
    write = store._write_rows

    def held(batches):  # the writer thread waits for the test
        assert gate.wait(10)
        write(batches)

    try:
        await store.begin_run(run_info())
        monkeypatch.setattr(store, "_write_rows", held)
        store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)
        await store.maybe_flush()
        # maybe_flush returned before the write happened: it runs while the engine goes on.
        assert count(db_path, "equity") == 0 and store.pending()["equity"] == 0
        gate.set()
        await store.settle()
        assert count(db_path, "equity") == 1

        def broken(batches):
            raise StorageError("disk full")

        monkeypatch.setattr(store, "_write_rows", broken)
        store.record_equity("r1", T0 + DAY, 2.0, 2.0, 0.0, 0.0)
        await store.maybe_flush()
        with pytest.raises(StorageError, match="disk full"):
            await store.settle()
        assert store.pending()["equity"] == 1  # put back for the next attempt
        monkeypatch.undo()
    finally:
        await store.stop()
    assert count(db_path, "equity") == 2


async def test_a_failed_batch_takes_the_later_ones_back_in_order(
    db_path: Path, monkeypatch
) -> None:
    """Batches handed to the writer after one that failed are not written (the table would
    have a hole), and all of them come back, in order, in front of the newer rows: the next
    flush writes every row once."""
    store = SqliteStore(
        db_path, batch_size=1, flush_interval_s=3600.0, max_in_flight=3, process=False
    )
    await store.start()
    gate = threading.Event()
    write = store._write_rows
    calls = []

    def first_fails(batches):
        calls.append(batches)
        assert gate.wait(10)
        if len(calls) == 1:
            raise StorageError("disk full")
        write(batches)

    try:
        await store.begin_run(run_info())
        monkeypatch.setattr(store, "_write_rows", first_fails)
        for k in range(3):  # three batches in flight, the first will fail
            store.record_equity("r1", T0 + k * DAY, float(k), 1.0, 0.0, 0.0)
            await store.maybe_flush()
        store.record_equity("r1", T0 + 3 * DAY, 3.0, 1.0, 0.0, 0.0)  # still buffered
        gate.set()
        with pytest.raises(StorageError, match="disk full"):
            await store.settle()
        assert len(calls) == 1  # the two after it were skipped, not written
        assert store.pending()["equity"] == 4
        monkeypatch.undo()
        await store.flush()
        assert [r["cash"] for r in await store.fetch("equity", "r1")] == [0.0, 1.0, 2.0, 3.0]
    finally:
        await store.stop()


async def test_back_pressure_bounds_the_batches_in_flight(db_path: Path, monkeypatch) -> None:
    """While the writer is behind, the engine waits at maybe_flush once `max_in_flight`
    batches are handed over: never more than that many batches are held for the writer."""
    store = SqliteStore(
        db_path, batch_size=1, flush_interval_s=3600.0, max_in_flight=2, process=False
    )
    await store.start()
    gate = threading.Event()
    write = store._write_rows

    def held(batches):
        assert gate.wait(10)
        write(batches)

    try:
        await store.begin_run(run_info())
        monkeypatch.setattr(store, "_write_rows", held)
        for k in range(2):
            store.record_equity("r1", T0 + k * DAY, float(k), 1.0, 0.0, 0.0)
            await store.maybe_flush()
        assert len(store._in_flight) == 2
        store.record_equity("r1", T0 + 2 * DAY, 2.0, 1.0, 0.0, 0.0)
        third = asyncio.ensure_future(store.maybe_flush())
        for _ in range(3):
            await asyncio.sleep(0)  # let it run: it cannot finish while the writer is held
        assert not third.done()  # blocked: the writer holds two batches already
        assert store.pending()["equity"] == 1 and len(store._in_flight) == 2
        gate.set()
        await third
        assert len(store._in_flight) <= 2
        await store.flush()
        assert count(db_path, "equity") == 3
    finally:
        gate.set()
        await store.stop()


async def test_bar_writes_wait_for_a_background_flush(db_path: Path) -> None:
    """A live engine writes its bar while the previous records may still be in flight: the
    two must not interleave transactions on the one connection."""
    store = SqliteStore(db_path, batch_size=1, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)
        await store.maybe_flush()  # a write is now in flight
        bar = CrossSection(T0, *(np.array([1.0, 2.0, 3.0]),) * 5, np.ones(3), np.zeros(3))
        await store.write_bars(SYMS, [bar])
        await store.end_run("r1", {"bars": 1})
    finally:
        await store.stop()
    assert count(db_path, "equity") == 1
    assert count(db_path, "bars") == 3


async def test_a_database_from_an_earlier_build_gets_the_new_columns(db_path: Path) -> None:
    """`fills.booked_at` came with restart safety: a store file made before it is upgraded at
    start (the column added, old rows NULL there) instead of failing at the first fill."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db_path)
    con.execute(
        "CREATE TABLE fills (run_id TEXT NOT NULL, fill_id TEXT NOT NULL, client_order_id TEXT"
        " NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL, quantity REAL, price REAL,"
        " commission REAL, slippage REAL, reference_price REAL, time TEXT NOT NULL,"
        " PRIMARY KEY (run_id, fill_id))"
    )
    con.execute(
        "INSERT INTO fills VALUES ('old', 'f0', 'c0', 'AAA', 'buy', 1, 10, 0, 0, 10,"
        " '2020-01-02T21:00:00.000000+00:00')"
    )
    con.commit()
    con.close()
    store = SqliteStore(str(db_path))
    await store.start()
    try:
        fill = Fill("f1", "c1", "AAA", Side.BUY, 2.0, 11.0, 0.0, 0.0, T0, 11.0)
        store.record_fills("new", [fill], T0 + DAY)
        await store.flush()
        assert (await store.fetch("fills", "new"))[0]["booked_at"] == T0 + DAY
        assert (await store.fetch("fills", "old"))[0]["booked_at"] is None
    finally:
        await store.stop()


async def test_a_table_of_another_program_without_a_required_column_is_named(
    db_path: Path,
) -> None:
    """A `positions` table without `symbol` (another program's, or a much older build's):
    the start ended in a bare ValueError traceback naming no database, inside a
    transaction never rolled back."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db_path)
    con.execute("CREATE TABLE positions (run_id TEXT NOT NULL, time TEXT NOT NULL)")
    con.commit()
    con.close()
    store = SqliteStore(str(db_path))
    with pytest.raises(StorageError) as caught:
        await store.start()
    text = str(caught.value)
    assert str(db_path) in text and "positions" in text and "symbol" in text
    assert "new database" in text
    # Rolled back: nothing of this build's schema was left in the file.
    con = sqlite3.connect(db_path)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert names == {"positions"}


def test_the_writer_process_opens_the_file_the_thread_made_and_never_creates_one(
    tmp_path: Path,
) -> None:
    """A writer process closed before it answered is not waited for: opening by creating,
    it could make a database file again in a folder its owner was removing."""
    from tradingd.storage.sqlite_file import child_open, connect

    gone = tmp_path / "removed.sqlite"
    with pytest.raises(StorageError, match=r"removed\.sqlite"):
        child_open({}, str(gone))
    assert list(tmp_path.iterdir()) == []
    made = tmp_path / "made by the thread.sqlite"  # a path that needs quoting in a URI
    connect(str(made)).close()
    state: dict = {}
    child_open(state, str(made))
    db = state["sqlite"][0]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_position_rows_follow_the_rule_on_every_sequence(tmp_path: Path) -> None:
    """A row for each symbol whose (finite) quantity differs from its last recorded one, with
    that bar's quantity, average price and mark; a NaN quantity is no row and changes
    nothing. The rule in whole-width numpy form is the reference for the store's form."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    qty = st.sampled_from([0.0, 0.0, 5.0, -3.0, 7.5, math.nan, math.inf])

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(qty, min_size=3, max_size=3), max_size=12))
    def check(bars: list[list[float]]) -> None:
        store = SqliteStore(tmp_path / "p.db")
        last = np.zeros(3)
        for k, q in enumerate(bars):
            quantity = np.array(q)
            avg, mark = np.arange(3.0) + k, np.arange(3.0) * 10 + k
            store.record_positions("r1", T0 + k * DAY, SYMS, quantity, avg, mark)
            changed = (quantity != last) & np.isfinite(quantity)
            np.copyto(last, quantity, where=changed)
            idx = changed.nonzero()[0]
            chunk = store._positions[-1] if store._positions else None
            if not idx.size:
                assert chunk is None or chunk[1] != T0 + k * DAY
                continue
            assert chunk is not None and chunk[1] == T0 + k * DAY
            assert chunk[3].tolist() == idx.tolist()
            got = [c.tolist() for c in chunk[4]]
            assert got == [quantity[idx].tolist(), avg[idx].tolist(), mark[idx].tolist()]

    check()


async def test_two_waiters_on_one_batch_in_flight(db_path: Path) -> None:
    """A live bar's flush and an operator's control (or fills booked between bars) may wait
    for the same batch: the second to wake popped an empty queue (IndexError) or the next
    batch, unwritten."""
    store = SqliteStore(str(db_path), batch_size=1000, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(RunInfo("r1", "live", T0, "{}", SYMS, 1.0))
        store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)
        await store.write_behind()  # one batch in flight, on the writer thread
        await asyncio.gather(store.flush(), store.settle(), store.flush())
        store.record_equity("r1", T0 + timedelta(days=1), 2.0, 2.0, 0.0, 0.0)
        await store.write_behind()
        store.record_equity("r1", T0 + timedelta(days=2), 3.0, 3.0, 0.0, 0.0)
        await store.write_behind()  # two in flight
        await asyncio.gather(store.settle(), store.flush())
        assert [r["cash"] for r in await store.fetch("equity", "r1")] == [1.0, 2.0, 3.0]
    finally:
        await store.stop()


async def test_a_store_of_an_earlier_build_gets_run_builds_and_records_a_live_start(
    db_path: Path,
) -> None:
    """Live runs stored no build, so replay-check could not say the code changed mid-run: a
    store made before `run_builds` gets it at its next open, and each live start a row."""
    store = SqliteStore(str(db_path))
    await store.start()
    await store.begin_run(RunInfo("old", "live", T0, "{}", SYMS, 1.0))
    await store.stop()
    con = sqlite3.connect(db_path)
    con.execute("DROP TABLE run_builds")  # as an earlier build made the file
    con.commit()
    con.close()
    store = SqliteStore(str(db_path))
    await store.start()
    try:
        build = {"version": "0.1.0", "commit": "a" * 40, "uncommitted_changes": True}
        await store.record_build("old", T0 + DAY, T0, build)
        await store.record_build("old", T0 + 2 * DAY, None, {"version": "0.2.0"})
        rows = await store.fetch("run_builds", "old")
        assert [
            (r["started_at"], r["resumed_after"], r["version"], r["source_commit"]) for r in rows
        ] == [(T0 + DAY, T0, "0.1.0", "a" * 40), (T0 + 2 * DAY, None, "0.2.0", None)]
        assert [r["uncommitted_changes"] for r in rows] == [1, None]
    finally:
        await store.stop()


@pytest.mark.parametrize(
    ("field", "value"), [("quantity", -40.0), ("quantity", 0.0), ("filled_quantity", 12.0)]
)
async def test_an_intent_tradingd_never_stores_refuses_the_resume(
    db_path: Path, field: str, value: float
) -> None:
    """An order intent stored after the checkpoint with a quantity that is not positive (or
    filled beyond it) was edited or damaged: the resume refuses, naming the run, the
    checkpoint, the order, the field and the value. It was looked up at the broker as it
    was, and an intent of -40 shares stayed `new` for good without a word."""
    from tradingd.core.errors import CheckpointUnusable

    run = RunInfo("live-int", "live", T0, "{}", SYMS, 100_000.0)
    store = SqliteStore(db_path)
    await store.start()
    try:
        assert await store.resume_run(run) is None
        store.record_checkpoint(run.run_id, T0, {"bar": 0})
        order = Order("live-int|1", "AAA", Side.BUY, 10.0, T0 + DAY)
        setattr(order, field, value)
        store.record_orders(run.run_id, [order], intent=True, booked_at=T0 + DAY)
        await store.flush()
        with pytest.raises(CheckpointUnusable) as e:
            await store.resume_run(run)
        msg = str(e.value)
        assert f"{field} = {value!r}" in msg and "'live-int|1'" in msg
        assert "run 'live-int'" in msg and str(T0) in msg and isinstance(e.value, ConfigError)
    finally:
        await store.stop()


async def test_an_intent_filled_to_its_quantity_by_float_pieces_resumes(db_path: Path) -> None:
    """A fractional quantity (split-adjusted, a volume cap's piece) filled in pieces sums to
    it plus an ulp in floats (`before + (q - before)`), which the resume's intent check
    refused as damage."""
    q, before = 764.0108443576374, 194.87550172465552  # a fractional quantity, a first piece
    filled = before + (q - before)
    assert filled > q  # the float sum the simulated broker makes
    run = RunInfo("live-ulp", "live", T0, "{}", SYMS, 100_000.0)
    store = SqliteStore(db_path)
    await store.start()
    try:
        assert await store.resume_run(run) is None
        store.record_checkpoint(run.run_id, T0, {"bar": 0})
        order = Order("live-ulp|1", "AAA", Side.BUY, q, T0 + DAY)
        order.filled_quantity = filled
        store.record_orders(run.run_id, [order], intent=True, booked_at=T0 + DAY)
        await store.flush()
        assert await store.resume_run(run) is not None
    finally:
        await store.stop()


async def test_a_full_database_disk_says_to_free_space_naming_the_folder(db_path: Path) -> None:
    """SQLite's words alone ("database or disk is full") named no file and said nothing to
    do; they are kept, with what the operator must do. (The file may grow no further: a
    page limit is SQLite's own SQLITE_FULL, as a full disk.)"""
    store = SqliteStore(db_path, process=False)
    await store.start()
    try:
        await store.begin_run(run_info())
        await store.flush()
        await store._call(lambda: store._conn().execute("PRAGMA max_page_count = 1"))
        for k in range(2000):
            store.record_equity("r1", T0 + k * DAY, 1.0, 1.0, 0.0, 0.0)
        with pytest.raises(StorageError) as e:
            await store.flush()
        await store._call(lambda: store._conn().execute("PRAGMA max_page_count = 1000000"))
    finally:
        await store.stop()
    text = str(e.value)
    assert f"write to SQLite database {db_path} failed: database or disk is full: " in text
    assert f"free space on the disk of {db_path.parent}" in text


def test_a_read_only_database_or_a_failing_disk_says_what_to_do(tmp_path: Path) -> None:
    from tradingd.storage.sqlite_file import connect, explain, transaction

    path = tmp_path / "s.db"
    connect(str(path)).execute("CREATE TABLE t (a)")
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    with pytest.raises(StorageError) as e:
        transaction(ro, [("INSERT INTO t VALUES (1)", ())], str(path))
    text = str(e.value)
    assert "attempt to write a readonly database: " in text  # SQLite's words kept
    assert f"{path} or its folder {tmp_path} is read-only" in text and "remount" in text
    # An extended code (SQLITE_IOERR_WRITE) is its primary code's.
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = sqlite3.SQLITE_IOERR | (3 << 8)  # type: ignore[attr-defined]
    said = explain(io, str(path))
    assert said.startswith("disk I/O error: ") and str(tmp_path) in said and "dmesg" in said
    # Not SQLite's (no code), or in memory: its words alone.
    assert explain(ValueError("bad value"), str(path)) == "bad value"
    assert explain(io, ":memory:") == "disk I/O error"
