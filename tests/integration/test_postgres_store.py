"""PostgresStore against the real PostgreSQL, each test in its own throwaway schema."""

from __future__ import annotations

import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest
from run_lookup import check_live_run_configs

from tradingd.core.errors import ConfigError, StorageError
from tradingd.core.types import CrossSection, Fill, Order, OrderStatus, OrderType, RunInfo, Side
from tradingd.storage.factory import open_store
from tradingd.storage.postgres import STAGE_THRESHOLD, PostgresStore
from tradingd.storage.schema import TABLES
from tradingd.storage.spool import SpoolBatch

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
    return CrossSection(t, c - 1, c + 2, c - 2, c, c * 10, np.ones(len(c)), np.zeros(len(c)))


@pytest.fixture
async def pg(pg_url: str, tmp_path, monkeypatch):
    """(url, schema, raw connection with search_path set); the schema is dropped after. Run
    in tmp_path: a store's default spool folder (`var/spool/<target>`, made at its start)
    was left in the checkout, one per test."""
    monkeypatch.chdir(tmp_path)
    schema = f"tradingd_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        yield pg_url, schema, conn
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def count(conn: asyncpg.Connection, schema: str, table: str, run_id: str | None = None):
    if run_id is None:
        return await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}')
    return await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table} WHERE run_id = $1', run_id)


@pytest.fixture
async def store(pg):
    url, schema, _ = pg
    s = PostgresStore(url, batch_size=1000, schema=schema)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_round_trip_every_table(store: PostgresStore, pg) -> None:
    _, schema, conn = pg
    available = await conn.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    # Hypertables exactly when the server offers TimescaleDB (plain tables on this machine).
    assert store.timescaledb is bool(available)
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
    store.record_orders("r1", [entry])
    store.record_fills(
        "r1", [Fill("f1", "r1|e", "AAA", Side.BUY, 10.0, 101.25, 1.5, 0.25, T0 + DAY, 101.0)]
    )
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
        np.array([0.25, 0, -0.125]),
        "ml_ensemble@abc123",
    )
    await store.write_bars(SYMS, [cross_section(T0, [100.0, np.nan, 50.5])])
    await store.end_run("r1", {"sharpe": 1.25, "trades": 3, "bad": float("nan")})

    [run] = await store.fetch("runs", "r1")
    assert run["ended_at"].tzinfo is not None
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
            "avg_fill_price": "NaN",
            "reason": "rebalance",
            "created_at": T0,
            "updated_at": None,
        }
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
            "volume": 505.0,
            "split": 1.0,
            "dividend": 0.0,
        },
    ]
    # Real column types, in the throwaway schema and nowhere else.
    types = dict(
        await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'equity'",
            schema,
        )
    )
    assert types["time"] == "timestamp with time zone"
    assert types["cash"] == "double precision"


async def test_start_is_idempotent_on_an_existing_schema(pg) -> None:
    url, schema, conn = pg
    first = PostgresStore(url, schema=schema)
    await first.start()
    await first.begin_run(run_info())
    first.record_equity("r1", T0, 1.0, 2.0, 3.0, 4.0)
    await first.stop()

    second = PostgresStore(url, schema=schema)
    await second.start()
    try:
        assert [r["equity"] for r in await second.fetch("equity", "r1")] == [2.0]
    finally:
        await second.stop()
    tables = await conn.fetchval(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert tables == len(TABLES)


async def test_begin_run_again_replaces_the_runs_rows(store: PostgresStore, pg) -> None:
    _, schema, conn = pg
    await store.begin_run(run_info("r1"))
    await store.begin_run(run_info("other"))
    for rid in ("r1", "other"):
        store.record_equity(rid, T0, 1.0, 1.0, 0.0, 0.0)
        store.record_orders(rid, [Order(f"{rid}|o", "AAA", Side.BUY, 1.0, T0)])
        store.record_fills(rid, [Fill("f1", f"{rid}|o", "AAA", Side.BUY, 1.0, 2.0, 0, 0, T0)])
        store.record_positions(rid, T0, SYMS, np.ones(3), np.ones(3), np.ones(3))
        store.record_signals(rid, T0, SYMS, np.ones(3), np.ones(3))
    await store.end_run("r1", {"a": 1})

    await store.begin_run(run_info("r1"))
    for table in ("orders", "order_events", "fills", "positions", "equity", "signals"):
        assert await count(conn, schema, table, "r1") == 0, table
        assert await count(conn, schema, table, "other") > 0, table
    [run] = await store.fetch("runs", "r1")
    assert run["summary"] is None and run["ended_at"] is None
    # The same fill id may be written again by the rerun.
    store.record_fills("r1", [Fill("f1", "r1|o", "AAA", Side.BUY, 1.0, 3.0, 0, 0, T0)])
    await store.flush()
    assert [f["price"] for f in await store.fetch("fills", "r1")] == [3.0]


async def test_live_run_configs_are_the_live_runs_of_a_name_by_last_activity(
    store: PostgresStore,
) -> None:
    await check_live_run_configs(store)


async def test_nan_is_stored_as_null_as_in_sqlite(store: PostgresStore, pg) -> None:
    """An unfilled order's avg_fill_price was NULL in SQLite and 'NaN' in PostgreSQL: the
    same SQL (`IS NULL`, avg()) gave other answers on the two stores."""
    _, schema, conn = pg
    await store.begin_run(run_info())
    many = [Order(f"r1|o{i}", "AAA", Side.BUY, 1.0, T0) for i in range(60)]  # COPY-staged
    store.record_orders("r1", [Order("r1|x", "BBB", Side.SELL, 100.0, T0), *many])
    await store.flush()
    assert math.isnan(many[0].avg_fill_price)
    nulls = await conn.fetchval(
        f'SELECT count(*) FROM "{schema}".orders WHERE avg_fill_price IS NULL'
    )
    nans = await conn.fetchval(
        f"SELECT count(*) FROM \"{schema}\".orders WHERE avg_fill_price = 'NaN'"
    )
    assert (nulls, nans) == (61, 0)
    # Read back through the store, as from SQLite: NaN.
    rows = await store.fetch("orders", "r1")
    assert len(rows) == 61 and all(math.isnan(r["avg_fill_price"]) for r in rows)


async def test_order_upsert_keeps_latest_state_and_events_keep_history(
    store: PostgresStore,
) -> None:
    await store.begin_run(run_info())
    o = Order("r1|x", "BBB", Side.SELL, 100.0, T0)
    store.record_orders("r1", [o])
    await store.flush()
    o.status, o.filled_quantity, o.avg_fill_price, o.updated_at = (
        OrderStatus.PARTIALLY_FILLED,
        40.0,
        20.5,
        T0 + DAY,
    )
    store.record_orders("r1", [o])
    o.status, o.filled_quantity, o.avg_fill_price, o.updated_at = (
        OrderStatus.FILLED,
        100.0,
        20.75,
        T0 + DAY,
    )
    store.record_orders("r1", [o])  # same batch, same time: insertion order decides
    await store.flush()

    [row] = await store.fetch("orders", "r1")
    assert (row["status"], row["filled_quantity"], row["avg_fill_price"]) == (
        "filled",
        100.0,
        20.75,
    )
    events = await store.fetch("order_events", "r1")
    assert [(e["status"], e["filled_quantity"], e["time"]) for e in events] == [
        ("new", 0.0, T0),
        ("partially_filled", 40.0, T0 + DAY),
        ("filled", 100.0, T0 + DAY),
    ]


async def test_batching_writes_only_when_a_buffer_is_full(pg) -> None:
    url, schema, conn = pg
    store = PostgresStore(url, batch_size=3, schema=schema, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        store.record_positions("r1", T0, SYMS, np.array([1.0, 0, 2.0]), np.ones(3), np.ones(3))
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert await count(conn, schema, "positions") == 0
        store.record_positions("r1", T0 + DAY, SYMS, np.array([0, 0, 3.0]), np.ones(3), np.ones(3))
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert await count(conn, schema, "positions") == 4  # AAA closed (a 0 row), CCC 2 -> 3
        store.record_equity("r1", T0, 1.0, 1.0, 0.0, 0.0)
        await store.maybe_flush()
        await store.settle()  # the write runs in the background
        assert await count(conn, schema, "equity") == 0
    finally:
        await store.stop()
    assert await count(conn, schema, "equity") == 1


async def test_signals_decisions_and_positions_nonzero(store: PostgresStore) -> None:
    await store.begin_run(run_info())
    store.record_signals(
        "r1", T0, SYMS, np.array([0.5, 0.3, np.nan]), np.array([0.0, -0.2, np.nan])
    )
    store.record_positions(
        "r1", T0, SYMS, np.array([0.0, 4.0, 0.0]), np.array([0, 9.5, 0]), np.array([1, 9.75, 3])
    )
    await store.flush()
    assert [
        (r["symbol"], r["score"], r["target_weight"]) for r in await store.fetch("signals", "r1")
    ] == [("BBB", 0.3, -0.2)]
    assert [
        (r["symbol"], r["quantity"], r["mark_price"]) for r in await store.fetch("positions", "r1")
    ] == [("BBB", 4.0, 9.75)]


async def test_bars_upsert_is_idempotent(store: PostgresStore, pg) -> None:
    _, schema, conn = pg
    bars = [cross_section(T0 + i * DAY, [10.0 + i, 20.0 + i, np.nan]) for i in range(3)]
    await store.write_bars(SYMS, bars)
    await store.write_bars(SYMS, bars)
    assert await count(conn, schema, "bars") == 6
    await store.write_bars(SYMS, [cross_section(T0 + DAY, [11.5, np.nan, 30.0])])
    assert await count(conn, schema, "bars") == 7
    assert [(r["time"], r["close"]) for r in await store.fetch_bars("AAA")] == [
        (T0, 10.0),
        (T0 + DAY, 11.5),
        (T0 + 2 * DAY, 12.0),
    ]


async def test_large_bar_batches_upsert_through_staging(pg) -> None:
    url, schema, conn = pg
    n = STAGE_THRESHOLD  # one batch this large takes the COPY + INSERT ... SELECT path
    store = PostgresStore(url, batch_size=4 * n, schema=schema)
    await store.start()
    try:
        symbols = [f"S{i:04d}" for i in range(n)]
        closes = np.arange(n, dtype=float) + 1
        first = cross_section(T0, list(closes))
        await store.write_bars(symbols, [first, cross_section(T0 + DAY, list(closes))])
        assert await count(conn, schema, "bars") == 2 * n
        # Again, with a corrected bar repeated inside the same batch: the last one wins.
        fix = cross_section(T0, list(closes * 2))
        await store.write_bars(symbols, [first, fix])
        assert await count(conn, schema, "bars") == 2 * n
        rows = await store.fetch_bars("S0007")
        assert [(r["time"], r["close"], r["volume"]) for r in rows] == [
            (T0, 16.0, 160.0),
            (T0 + DAY, 8.0, 80.0),
        ]
    finally:
        await store.stop()


async def test_unreachable_database_is_a_storage_error_without_password() -> None:
    store = PostgresStore("postgresql://postgres:hunter2@127.0.0.1:1/test", connect_timeout=3)
    t = time.monotonic()
    with pytest.raises(StorageError) as e:
        await store.start()
    assert time.monotonic() - t < 5
    assert "127.0.0.1:1" in str(e.value)
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


def test_schema_must_be_an_identifier() -> None:
    with pytest.raises(ConfigError):
        open_store("postgresql://x/y", schema='bad"; DROP TABLE x; --')


async def test_a_search_path_schema_that_does_not_exist_is_named_with_the_fix(pg_url) -> None:
    """The server said only "no schema has been selected to create in": the schema the URL
    named was not said, nor that it must be created first."""
    from tradingd.storage.factory import open_store

    sep = "&" if "?" in pg_url else "?"
    store = open_store(f"{pg_url}{sep}search_path=tradingd_no_such_schema_xyz", spool=False)
    with pytest.raises(StorageError) as caught:
        await store.start()
    text = str(caught.value)
    assert "'tradingd_no_such_schema_xyz'" in text and "CREATE SCHEMA" in text


async def test_a_table_of_another_program_without_a_required_column_is_named(pg) -> None:
    """A `positions` table without `symbol` in the schema: the start ended in a bare
    ValueError traceback naming neither the database nor what to do."""
    url, schema, conn = pg
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.execute(
        f'CREATE TABLE "{schema}".positions (run_id TEXT NOT NULL, time TIMESTAMPTZ NOT NULL)'
    )
    store = PostgresStore(url, schema=schema)
    with pytest.raises(StorageError) as caught:
        await store.start()
    text = str(caught.value)
    assert "PostgreSQL at" in text and "positions" in text and "symbol" in text
    assert "new database" in text
    from tradingd.__main__ import EX_CONFIG, exit_code

    assert exit_code(caught.value, "run") == EX_CONFIG  # the operator's to end: no restart loop
    # The schema statements were rolled back with it: no table of this build was left.
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert {r["table_name"] for r in tables} == {"positions"}


async def test_ready_says_what_a_start_waits_for_while_the_database_is_down() -> None:
    """While a live start waited for PostgreSQL, /ready said only "not trading yet: finding
    the run to continue"; the cause was in the log alone."""
    from types import SimpleNamespace

    from tradingd.__main__ import trading_check
    from tradingd.health import waiting_for, waits
    from tradingd.storage.buffered import DatabaseUnavailable
    from tradingd.storage.factory import open_store

    store = open_store("postgresql://postgres:hunter2@127.0.0.1:1/test", start_retry_s=0.3)
    daemon = SimpleNamespace(stopping=False, ready=False, phase="finding the run to continue")
    try:
        with pytest.raises(DatabaseUnavailable):
            await store.start()
        check = trading_check(daemon)
        assert not check.ok and "waiting for the database" in check.detail
        assert "127.0.0.1:1" in check.detail and "hunter2" not in check.detail
        assert "database" in check.data["waiting_for"]
    finally:
        waiting_for("database", None)
    assert waits() == {}
    assert trading_check(daemon).detail == "not trading yet: finding the run to continue"


async def test_a_write_whose_rollback_fails_closes_its_connection_without_an_error_line(
    store: PostgresStore, pg, monkeypatch
) -> None:
    """A server stopping mid-COPY made the transaction's ROLLBACK fail ("another operation is
    in progress") with the connection not yet closed; the pool's reset then logged "Resetting
    connection with an active transaction" at error level (the outage test failed on it)."""
    import asyncio

    messages: list[str] = []
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: messages.append(str(ctx.get("message"))))
    execute = asyncpg.Connection.execute
    armed = [True]

    async def rollback_fails_once(self, query, *args, **kwargs):
        if query.strip().rstrip(";") == "ROLLBACK" and armed[0]:
            armed[0] = False
            raise asyncpg.InternalClientError(
                "cannot perform operation: another operation is in progress"
            )
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "execute", rollback_fails_once)
    try:
        with pytest.raises(StorageError, match="write to"):
            await store._execute([("SELECT 1 / 0", ())])
        assert not armed[0]  # the ROLLBACK was tried, and failed
        # The store goes on, on a healthy connection.
        await store._execute([("SELECT 1", ())])
        assert await store._query("SELECT 2", ()) == [(2,)]
    finally:
        loop.set_exception_handler(before)
    assert messages == []


async def applied_writers(conn: asyncpg.Connection, schema: str) -> list[tuple[str, int]]:
    rows = await conn.fetch(f'SELECT writer, last_seq FROM "{schema}".spool_applied')
    return sorted((r["writer"], r["last_seq"]) for r in rows)


async def test_a_clean_close_deletes_its_writers_spool_marker(pg, tmp_path) -> None:
    """Every batch of a spooling store upserts its writer's `spool_applied` row (so that a
    spooled batch is never written twice). Once the store closes with an empty spool no batch
    of that writer can be replayed again: the row goes, and restarts leave no rows behind."""
    url, schema, conn = pg
    for k in range(3):  # three daemon starts
        store = PostgresStore(url, schema=schema, spool_dir=tmp_path / "spool")
        await store.start()
        if k == 0:
            await store.begin_run(run_info())
        store.record_equity("r1", T0 + k * DAY, 1.0, float(k), 0.0, 0.0)
        await store.flush()
        store.record_equity("r1", T0 + k * DAY + timedelta(hours=1), 1.0, float(k), 0.0, 0.0)
        await store.flush()
        assert await applied_writers(conn, schema) == [(store.writer, 2)]
        await store.stop()
        assert await applied_writers(conn, schema) == []
    assert await count(conn, schema, "equity", "r1") == 6


async def test_a_dead_writers_marker_goes_with_its_replayed_spool(pg, tmp_path) -> None:
    """A process that died with batches in its spool: the next store replays them (skipping
    one already written), removes the file, then deletes the dead writer's row. A row that
    has moved past the spool's last batch is left alone (its writer wrote on since)."""
    url, schema, conn = pg
    spool_dir = tmp_path / "spool"

    async def died_with_a_spool(hours: int) -> PostgresStore:
        dead = PostgresStore(url, schema=schema, spool_dir=spool_dir)
        await dead.start()
        dead.record_equity("r1", T0 + timedelta(hours=hours), 1.0, 1.0, 0.0, 0.0)
        await dead.flush()  # written: seq 1
        assert dead._spool is not None
        for seq in (1, 2):  # seq 1 again (its commit's answer lost), then a new one
            row = ("r1", T0 + timedelta(hours=hours + seq), 1.0, 2.0, 0.0, 0.0)
            dead._spool.append(SpoolBatch(dead.writer, seq, time.time(), {"equity": [row]}))
        await dead._stop_spool()  # "SIGKILL": the spool file stays
        await dead._close()
        return dead

    store = PostgresStore(url, schema=schema, spool_dir=spool_dir)
    await store.start()
    await store.begin_run(run_info())
    await store.stop()
    dead = await died_with_a_spool(0)
    assert await applied_writers(conn, schema) == [(dead.writer, 1)]
    again = PostgresStore(url, schema=schema, spool_dir=spool_dir)
    await again.start()
    try:
        assert list(spool_dir.glob("*.spool")) == []
        assert await applied_writers(conn, schema) == []
        times = [r["time"] for r in await again.fetch("equity", "r1")]
        assert times == [T0, T0 + 2 * timedelta(hours=1)]  # the seq-1 copy skipped
    finally:
        await again.stop()

    dead = await died_with_a_spool(10)
    await conn.execute(f'UPDATE "{schema}".spool_applied SET last_seq = 3')
    again = PostgresStore(url, schema=schema, spool_dir=spool_dir)
    await again.start()
    await again.stop()
    assert await applied_writers(conn, schema) == [(dead.writer, 3)]


async def test_a_schema_of_an_earlier_build_gets_run_builds_and_records_a_live_start(pg) -> None:
    """As SQLite's: a schema made before `run_builds` gets it at the next start."""
    url, schema, conn = pg
    first = PostgresStore(url, schema=schema)
    await first.start()
    await first.begin_run(RunInfo("old", "live", T0, "{}", ("AAA",), 1.0))
    await first.stop()
    await conn.execute(f'DROP TABLE "{schema}".run_builds')
    second = PostgresStore(url, schema=schema)
    await second.start()
    try:
        build = {"version": "0.1.0", "commit": "a" * 40, "uncommitted_changes": False}
        await second.record_build("old", T0 + timedelta(days=1), T0, build)
        (row,) = await second.fetch("run_builds", "old")
        assert (row["resumed_after"], row["source_commit"], row["uncommitted_changes"]) == (
            T0,
            "a" * 40,
            0,
        )
    finally:
        await second.stop()


async def test_a_nul_in_text_is_written_as_a_replacement_with_a_warning(pg, tmp_path) -> None:
    """A broker's error text with a NUL as an order's reason (and a plugin state with one in
    the checkpoint): PostgreSQL refuses U+0000 in text and jsonb, and the whole batch, the
    checkpoint with it, failed with UntranslatableCharacterError. Written through the spool
    (a live store), as the flush and the spool's replay write."""
    from structlog.testing import capture_logs

    url, schema, _ = pg
    s = PostgresStore(url, schema=schema, spool_dir=tmp_path / "spool", flush_interval_s=0.0)
    await s.start()
    try:
        run = RunInfo("nul1", "live", T0, "{}", ("AAA",), 1e5)
        assert await s.resume_run(run) is None
        o = Order("cid-1", "AAA", Side.BUY, 10.0, T0, status=OrderStatus.REJECTED)
        o.reason = "HTTP 403: insufficient\x00 buying power"
        s.record_orders("nul1", [o], intent=True, booked_at=T0)
        s.record_checkpoint("nul1", T0, {"plugin": {"note\x00": "a\x00b"}, "path": "c:\\u0000"})
        with capture_logs() as logs:
            await s.flush()
        [order] = await s.fetch("orders", "nul1")
        assert order["reason"] == "HTTP 403: insufficient\ufffd buying power"
        [cp] = await s.fetch("checkpoints", "nul1")
        # The NULs are replaced; the text "\u0000" (a backslash, then u0000) is kept.
        assert cp["state"] == {"plugin": {"note\ufffd": "a\ufffdb"}, "path": "c:\\u0000"}
        said = {(e["table"], e["column"]) for e in logs if e["event"] == "storage.text.repaired"}
        assert ("orders", "reason") in said and ("checkpoints", "state") in said
        assert ("order_events", "reason") in said
        assert s.status()["ok"] and s.pending() == dict.fromkeys(s.pending(), 0)
    finally:
        await s.stop()


async def test_a_nul_in_a_runs_row_or_its_end_is_written_as_a_replacement_with_a_warning(
    pg,
) -> None:
    """A run's own row (its symbols, jsonb) and end_run's summary (jsonb) went to PostgreSQL
    as given outside a spool, beside the row tables' repair: jsonb refused the NUL and the
    run's start or end failed with UntranslatableCharacterError, naming nothing. The config
    snapshot is text, where JSON's escaped "\\u0000" is no NUL: kept as written."""
    from structlog.testing import capture_logs

    url, schema, _ = pg
    s = PostgresStore(url, schema=schema)
    await s.start()
    try:
        config = json.dumps({"run": {"note": "a\x00b"}})
        with capture_logs() as logs:
            await s.begin_run(RunInfo("nul2", "backtest", T0, config, ("A\x00A",), 1e5))
            await s.end_run("nul2", {"why": "stopped\x00"})
        [run] = await s.fetch("runs", "nul2")
        assert run["config_json"] == config
        assert run["symbols"] == ["A\ufffdA"]
        assert run["summary"] == {"why": "stopped\ufffd"}
        said = {(e["column"], e["run_id"]) for e in logs if e["event"] == "storage.text.repaired"}
        assert said == {("symbols", "nul2"), ("summary", "nul2")}
    finally:
        await s.stop()
