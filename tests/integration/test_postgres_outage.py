"""A PostgreSQL outage must not end the daemon nor lose or double a row.

Each test runs its own PostgreSQL server (initdb into a temporary directory, on a free port;
never the shared server), stops it with `pg_ctl stop -m fast` while a store writes, and
starts it again. The store keeps taking rows, spools every batch to a local file (fsynced
before `flush()` returns), reports degraded readiness, and when the server is back writes
every spooled batch exactly once: what is stored equals what a store that never saw the
outage stores. Nothing waits a fixed time: every wait is on a condition with a deadline.
Without the PostgreSQL binaries (or a user initdb accepts) the tests skip, unless
TRADINGD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from private_servers import PgServer, private_postgres, wait_until
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError, StorageError
from tradingd.core.types import CrossSection, Fill, Order, OrderStatus, RunInfo, Side
from tradingd.storage.buffered import DatabaseUnavailable
from tradingd.storage.postgres import PostgresStore
from tradingd.storage.schema import RUN_TABLES
from tradingd.storage.spool import SpoolStale, decode_batch, decode_line

PASSWORD = "s3cret-outage"  # trust auth ignores it; it must never show in a message
T0 = datetime(2024, 3, 1, 21, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SYMS = ("AAA", "BBB", "CCC")
RUN_ID = "live-outage"
# Fast replay for the tests; production defaults are 0.5 s doubling up to 30 s.
FAST: dict[str, Any] = {"retry_base_s": 0.02, "retry_max_s": 0.2, "connect_timeout": 3.0}


@pytest.fixture(scope="module")
def pg_cluster():
    with private_postgres(PASSWORD) as server:
        yield server


@pytest.fixture
def server(pg_cluster: PgServer):
    """The private server, running at the start of each test (a test may stop it)."""
    if not pg_cluster.running():
        pg_cluster.start()
    yield pg_cluster
    if not pg_cluster.running():
        pg_cluster.start()


# ---------------------------------------------------------------------------------- workload


def run_info() -> RunInfo:
    return RunInfo(RUN_ID, "live", T0, '{"k": 1}', SYMS, 100_000.0)


def bar(i: int) -> CrossSection:
    c = np.array([100.0 + i, 50.0 - i / 2, np.nan if i % 4 == 3 else 20.0 + i / 4])
    return CrossSection(T0 + i * DAY, c - 1, c + 1, c - 2, c, c * 100, np.ones(3), np.zeros(3))


def bar_state(i: int) -> dict[str, Any]:
    """The checkpointed state after bar `i` (`trade_bar`)."""
    q = np.array([float(i), float(i // 2), 0.0 if i % 3 else -1.0])
    return {"bar": i, "portfolio": {"quantity": q.tolist()}, "targets": (q / 100).tolist()}


async def trade_bar(store: PostgresStore, i: int, cancel: bool = False) -> None:
    """What the engine stores for one bar of a live run: bars; fills and order updates from
    the broker; order intents flushed before they are sent; acknowledgements; signals,
    positions, equity; the checkpoint; a flush. `cancel`: the bar also cancels an order, so
    its intent flush carries the previous bar's checkpoint again with the cancel in it (the
    engine's `intent`)."""
    t = T0 + i * DAY
    run = RUN_ID
    await store.write_bars(SYMS, [bar(i)])
    if i > 0:
        prev = Order(f"{run}|{i - 1}", SYMS[(i - 1) % 3], Side.BUY, 10.0 + i, t - DAY)
        store.record_fills(
            run,
            [
                Fill(f"f{i}", prev.client_order_id, prev.symbol, Side.BUY, prev.quantity,
                     100.0 + i * 0.25, 1.0, 0.05, t, math.nan if i % 5 == 0 else 100.0 + i)
            ],
        )  # fmt: skip
        prev.status, prev.filled_quantity, prev.avg_fill_price = (
            OrderStatus.FILLED,
            prev.quantity,
            100.0 + i * 0.25,
        )
        prev.updated_at = t
        store.record_orders(run, [prev])
    intent = Order(f"{run}|{i}", SYMS[i % 3], Side.BUY, 11.0 + i, t, reason=f"rebalance é\n{i}")
    store.record_orders(run, [intent])
    if cancel:
        intended = {"time": t.isoformat(), "cancel": [f"{run}|{i - 1}"]}
        store.record_checkpoint(run, t - DAY, {**bar_state(i - 1), "intent": intended})
    await store.flush()  # the intent is durable before it is sent
    intent.updated_at = t
    store.record_orders(run, [intent])  # acknowledged
    q = np.array([float(i), float(i // 2), 0.0 if i % 3 else -1.0])
    store.record_signals(run, t, SYMS, np.array([0.1 * i, -0.2, np.nan]), q / 100.0, "m@1")
    store.record_positions(run, t, SYMS, q, np.full(3, 10.0 + i), np.array([1.0, 2.0, np.nan]))
    store.record_equity(run, t, 100_000.0 - i, 100_000.0 + i * 1.5, 0.1 * i, math.inf)
    store.record_checkpoint(run, t, bar_state(i))
    await store.maybe_flush()
    await store.settle()


def _comparable(v: Any) -> Any:
    return "NaN" if isinstance(v, float) and math.isnan(v) else v


async def stored(store: PostgresStore) -> dict[str, list[dict[str, Any]]]:
    """Every row of the run (and the bars), comparable across two stores."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table in (*RUN_TABLES, "runs"):
        rows = await store.fetch(table, RUN_ID)
        drop = {"written_at"} if table == "checkpoints" else set()
        if table == "runs":
            drop = {"ended_at"}
        out[table] = [{k: _comparable(v) for k, v in r.items() if k not in drop} for r in rows]
    out["bars"] = [{k: _comparable(v) for k, v in r.items()} for r in await store.fetch_bars()]
    return out


async def reference(
    url: str, bars: range, end: bool = False, cancel: Collection[int] = ()
) -> dict[str, list[dict]]:
    """What a store that never saw an outage stores for the same bars (`cancel`: the bars
    traded with `cancel=True`)."""
    schema = f"ref_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(url, schema=schema, spool=False, flush_interval_s=0.0)
    await store.start()
    try:
        assert await store.resume_run(run_info()) is None
        for i in bars:
            await trade_bar(store, i, cancel=i in cancel)
        if end:
            await store.end_run(RUN_ID, {"bars": len(bars)})
        await store.flush()
        return await stored(store)
    finally:
        await store.stop()


async def counts(url: str, schema: str) -> dict[str, int]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return {
            t: await conn.fetchval(f'SELECT count(*) FROM "{schema}".{t}')
            for t in (*RUN_TABLES, "bars", "spool_applied")
        }
    finally:
        await conn.close()


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool")) if directory.exists() else []


def outage_store(server: PgServer, schema: str, spool_dir: Path, **kw: Any) -> PostgresStore:
    return PostgresStore(
        server.url,
        schema=schema,
        spool_dir=spool_dir,
        flush_interval_s=0.0,  # every maybe_flush writes (in the background)
        **{**FAST, **kw},
    )


# ---------------------------------------------------------------------------------- tests


async def test_outage_spools_durably_and_the_database_gets_every_row_exactly_once(
    server: PgServer, tmp_path: Path
) -> None:
    schema = f"out_{uuid.uuid4().hex[:10]}"
    spool_dir = tmp_path / "spool"
    store = outage_store(server, schema, spool_dir)
    await store.start()
    try:
        assert await store.resume_run(run_info()) is None
        for i in range(3):
            await trade_bar(store, i)
        assert store.status()["ok"] and spool_files(spool_dir) == []  # nothing on disk yet

        server.stop()
        sizes = []
        with capture_logs() as logs:
            for i in range(3, 10):
                await trade_bar(store, i)  # flush() returns: the rows are in the spool
                st = store.status()
                assert st["ok"] is False and st["state"] == "degraded", st
                assert store.pending() == dict.fromkeys(store.pending(), 0)
                sizes.append(st["spooled_bytes"])
        assert sizes == sorted(sizes) and sizes[0] > 0 and len(set(sizes)) == len(sizes)
        st = store.status()
        # Per bar: the bar itself, the flushed intent, the rest of the bar's rows.
        assert st["spooled_batches"] == 7 * 3
        [path] = spool_files(spool_dir)
        assert st["spool_path"] == str(path) and path.stat().st_size >= st["spooled_bytes"]
        assert st["oldest_spooled_at"] is not None and st["down_since"] is not None
        assert st["last_error"] and PASSWORD not in str(st) and "***" in st["detail"]
        assert [e for e in logs if e["event"] == "storage.database.down"]  # logged once
        assert len([e for e in logs if e["event"] == "storage.database.down"]) == 1

        server.start()
        await wait_until(lambda: store.status()["ok"], "the spool replayed")
        st = store.status()
        assert st["spooled_batches"] == 0 and st["replayed_batches"] == 21 and st["outages"] == 1
        for i in range(10, 12):  # written directly again
            await trade_bar(store, i)
        assert store.status()["spooled_batches"] == 0
        await store.end_run(RUN_ID, {"bars": 12})
        got = await stored(store)
    finally:
        await store.stop()
    assert spool_files(spool_dir) == []  # an empty spool is removed at stop

    want = await reference(server.url, range(12), end=True)
    ended = got.pop("runs"), want.pop("runs")
    assert ended[0] == ended[1]
    assert got == want
    n = await counts(server.url, schema)
    assert n["orders"] == 12 and n["order_events"] == 12 + 2 * 12 - 1 and n["fills"] == 11
    # The store closed with its spool written: its marker is gone with it.
    assert n["checkpoints"] == 1 and n["spool_applied"] == 0
    assert [r["state"]["bar"] for r in got["checkpoints"]] == [11]


async def test_a_killed_process_spool_is_replayed_at_the_next_start(
    server: PgServer, tmp_path: Path
) -> None:
    """A process spools through an outage and is SIGKILLed before the database returns: the
    next store on the same spool directory writes the spool before `start()` returns, so
    `resume_run` sees the killed process's last checkpoint."""
    schema = f"kill_{uuid.uuid4().hex[:10]}"
    spool_dir = tmp_path / "spool"
    errors = (tmp_path / "child.err").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.url, schema, str(spool_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        cwd=str(tmp_path),
    )

    async def said(prefix: str) -> str:
        """The child's next protocol line (log lines on its stdout are skipped)."""
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
            if not line:
                raise AssertionError(f"child exited: {(tmp_path / 'child.err').read_text()}")
            if line.startswith("@@ "):
                assert line[3:].startswith(prefix), line
                return line[3:].strip()
        raise AssertionError(f"child did not say {prefix!r}")

    try:
        assert child.stdin is not None
        await said("ready")
        server.stop()
        child.stdin.write("go\n")
        child.stdin.flush()
        line = await said("spooled")
        assert int(line.split()[1]) == 5 * 3
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        errors.close()
    [orphan] = spool_files(spool_dir)
    assert orphan.stat().st_size > 0

    server.start()
    store = outage_store(server, schema, spool_dir)
    with capture_logs() as logs:
        await store.start()  # replays the orphan first
    try:
        assert spool_files(spool_dir) == []
        [replayed] = [e for e in logs if e["event"] == "storage.spool.orphan_replayed"]
        assert replayed["batches"] == 15 and replayed["already_written"] == 0
        resume = await store.resume_run(run_info())
        assert resume is not None and resume.bar_time == T0 + 7 * DAY
        assert resume.state is not None and resume.state["bar"] == 7
        got = await stored(store)
    finally:
        await store.stop()
    want = await reference(server.url, range(8))
    assert got == want


# The killed process: trades bars 0-2 with the database up, waits, trades bars 3-7 while the
# parent has stopped the server (every flush spooled), reports, then waits to be killed.
CHILD = f"""
import asyncio, sys
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
import test_postgres_outage as w
from tradingd.storage.postgres import PostgresStore

async def main(url, schema, spool_dir):
    store = PostgresStore(url, schema=schema, spool_dir=spool_dir, flush_interval_s=0.0,
                          retry_base_s=30.0, retry_max_s=60.0)
    await store.start()
    assert await store.resume_run(w.run_info()) is None
    for i in range(3):
        await w.trade_bar(store, i)
    print("@@ ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for i in range(3, 8):
        await w.trade_bar(store, i)
    print("@@ spooled", store.status()["spooled_batches"], flush=True)
    await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main(*sys.argv[1:4]))
"""


async def test_a_crash_after_a_replayed_commit_writes_nothing_twice(
    server: PgServer, tmp_path: Path
) -> None:
    """The replay commits a batch and dies before the spool learns it: the next replay
    finds the batch's marker in `spool_applied` and skips it."""
    schema = f"crash_{uuid.uuid4().hex[:10]}"
    spool_dir = tmp_path / "spool"
    store = outage_store(server, schema, spool_dir)
    await store.start()
    assert await store.resume_run(run_info()) is None
    await trade_bar(store, 0)
    server.stop()
    for i in range(1, 4):
        await trade_bar(store, i)
    assert store.status()["spooled_batches"] == 9

    committed: list[str] = []

    def crash_after_the_fourth_commit(batch: Any) -> None:
        committed.append(batch.id)
        if len(committed) == 4:
            raise RuntimeError("simulated crash between commit and spool truncation")

    store._after_replay_commit = crash_after_the_fourth_commit
    server.start()
    await wait_until(lambda: store.status()["state"] == "failed", "the replay to 'crash'")
    assert "simulated crash" in store.status()["detail"]
    store.record_equity(RUN_ID, T0 + 9 * DAY, 1.0, 1.0, 0.0, 0.0)
    with pytest.raises(StorageError, match=r"replaying the storage spool .* failed"):
        await store.flush()  # the failure surfaces at the next write
    assert store.pending()["equity"] == 1  # kept, neither written nor spooled
    # The process "dies": no flush, no cleanup; the spool file stays as it is.
    await store._stop_spool()
    await store._close()
    [left] = spool_files(spool_dir)

    again = outage_store(server, schema, spool_dir)
    with capture_logs() as logs:
        await again.start()
    try:
        [replayed] = [e for e in logs if e["event"] == "storage.spool.orphan_replayed"]
        assert replayed["already_written"] == 4 and replayed["batches"] == 5
        assert not left.exists()
        assert await again.resume_run(run_info()) is not None
        got = await stored(again)
    finally:
        await again.stop()
    assert got == await reference(server.url, range(4))
    n = await counts(server.url, schema)
    assert n["order_events"] == 4 + 2 * 4 - 1 and n["fills"] == 3 and n["positions"] > 0


async def test_a_refused_statement_is_an_error_not_an_outage(
    server: PgServer, tmp_path: Path
) -> None:
    store = outage_store(server, f"bad_{uuid.uuid4().hex[:10]}", tmp_path / "spool")
    await store.start()
    try:
        store.record_equity(None, T0, 1.0, 1.0, 0.0, 0.0)  # type: ignore[arg-type]  # NOT NULL
        with pytest.raises(StorageError) as e:
            await store.flush()
        assert not isinstance(e.value, DatabaseUnavailable)
        assert "NotNullViolation" in str(e.value) and PASSWORD not in str(e.value)
        assert store.pending()["equity"] == 1  # kept for the operator, not spooled
        assert store.status()["ok"] and spool_files(tmp_path / "spool") == []
        store._equity.clear()
    finally:
        await store.stop()


async def test_start_waits_a_bounded_time_for_the_database(
    server: PgServer, tmp_path: Path
) -> None:
    server.stop()
    store = outage_store(server, f"st_{uuid.uuid4().hex[:10]}", tmp_path / "s", start_retry_s=0.5)
    t = time.monotonic()
    with pytest.raises(StorageError) as e:
        await store.start()
    assert 0.4 < time.monotonic() - t < 8
    msg = str(e.value)
    assert f"127.0.0.1:{server.port}" in msg and "***" in msg and PASSWORD not in msg
    assert "gave up after" in msg and "storage.start_retry_s" in msg

    # The database comes back while start() retries: start() succeeds.
    store = outage_store(server, f"st_{uuid.uuid4().hex[:10]}", tmp_path / "s", start_retry_s=30)
    starting = asyncio.create_task(store.start())
    await asyncio.to_thread(server.start)
    await asyncio.wait_for(starting, 30)
    try:
        assert await store.resume_run(run_info()) is None
        assert store.status()["ok"]
    finally:
        await store.stop()


async def three_bars_then_down(server: PgServer, schema: str, folder: Path) -> PostgresStore:
    """A store of a new run that traded bars 0-2 into the database, which is then down:
    what it writes next goes to its spool in `folder`."""
    first = outage_store(server, schema, folder)
    await first.start()
    assert await first.resume_run(run_info()) is None
    for i in range(3):
        await trade_bar(first, i)
    server.stop()
    return first


async def test_an_old_spool_never_rolls_a_later_checkpoint_back(
    server: PgServer, tmp_path: Path
) -> None:
    """A process spools bars 3-5 and dies; the run is continued from the database's
    checkpoint (bar 2) by a store with another spool folder, and ends at bar 8. A later
    start on the first folder finds the old spool: it must refuse it, naming the file, the
    run and both checkpoints, and leave the file and the stored run as they are (written, it
    set the checkpoint back to bar 5 and reopened nothing but replaced later state)."""
    schema = f"stale_{uuid.uuid4().hex[:10]}"
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    first = await three_bars_then_down(server, schema, old_dir)
    for i in range(3, 6):
        await trade_bar(first, i)
    assert first.status()["spooled_batches"] == 9
    # The process "dies" with its spool on disk.
    await first._stop_spool()
    await first._close()
    [old] = spool_files(old_dir)
    server.start()

    second = outage_store(server, schema, new_dir)
    await second.start()
    try:
        resume = await second.resume_run(run_info())
        assert resume is not None and resume.bar_time == T0 + 2 * DAY
        for i in range(3, 9):
            await trade_bar(second, i)
        await second.end_run(RUN_ID, {"bars": 9})
        before = await stored(second)
    finally:
        await second.stop()

    third = outage_store(server, schema, old_dir)
    with pytest.raises(StorageError) as e:
        await third.start()
    await third._stop_spool()
    await third._close()
    msg = str(e.value)
    assert str(old) in msg and repr(RUN_ID) in msg
    assert str(T0 + 3 * DAY) in msg and str(T0 + 8 * DAY) in msg and "move the file" in msg.lower()
    assert PASSWORD not in msg
    assert isinstance(e.value, ConfigError)  # EX_CONFIG: a restart would refuse again
    assert old.exists()  # nothing is lost: the operator decides

    check = outage_store(server, schema, new_dir)
    await check.start()
    try:
        assert await stored(check) == before  # the run is as the second store left it
        [cp] = await check.fetch("checkpoints", RUN_ID)
        assert cp["bar_time"] == T0 + 8 * DAY
    finally:
        await check.stop()


def first_checkpoint_bar(path: Path) -> datetime:
    """The bar of the first checkpoint row a spool file holds."""
    with path.open("rb") as f:
        for line in f:
            obj = decode_line(line)
            assert obj is not None
            if obj["kind"] == "batch":
                for row in decode_batch(obj).tables.get("checkpoints", ()):
                    return datetime.fromisoformat(str(row[1]))
    raise AssertionError(f"{path} holds no checkpoint")


@pytest.mark.parametrize("ending", ["stop", "exit"])
async def test_an_outage_spool_repeating_the_stored_checkpoint_is_replayed(
    server: PgServer, tmp_path: Path, ending: str
) -> None:
    """Bars 0-2 are written; the database goes down; bar 3 cancels an order, so its first
    batch (the intent flush) carries bar 2's checkpoint again, the one stored; bars 3 and
    4 are spooled. The process then stops (SIGTERM: `stop()` leaves the spool) or exits
    (a full spool disk: the spool closed as it is). The next start must write the spool:
    it continues what the database holds, written by the same store. It was refused as
    stale (exit 78: "its first checkpoint not yet written is of the bar ..., the
    database's checkpoint is of the bar ..." the same bar), and the file moved aside as
    told lost bars 3-4's orders and fills, and the run traded them again."""
    schema = f"cont_{uuid.uuid4().hex[:10]}"
    spool_dir = tmp_path / "spool"
    store = outage_store(server, schema, spool_dir)
    await store.start()
    assert await store.resume_run(run_info()) is None
    for i in range(3):
        await trade_bar(store, i)
    server.stop()
    await trade_bar(store, 3, cancel=True)
    await trade_bar(store, 4)
    if ending == "stop":
        await store.stop()
    else:
        await store._stop_spool()
        await store._close()
    [left] = spool_files(spool_dir)
    assert first_checkpoint_bar(left) == T0 + 2 * DAY  # the stored checkpoint's bar
    server.start()

    again = outage_store(server, schema, spool_dir)
    with capture_logs() as logs:
        await again.start()  # writes the spool, refuses nothing
    try:
        assert spool_files(spool_dir) == []
        [replayed] = [e for e in logs if e["event"] == "storage.spool.orphan_replayed"]
        assert replayed["batches"] == 2 * 3 and replayed["already_written"] == 0
        resume = await again.resume_run(run_info())
        assert resume is not None and resume.bar_time == T0 + 4 * DAY
        got = await stored(again)
    finally:
        await again.stop()
    assert got == await reference(server.url, range(5), cancel={3})


@pytest.mark.parametrize("cancel", [False, True])
async def test_an_old_spool_of_the_same_bar_as_a_later_stored_checkpoint_is_refused(
    server: PgServer, tmp_path: Path, cancel: bool
) -> None:
    """The same bar in the spool and in the database, but the stored checkpoint written by
    another process after the spool began: a process spools bar 3 (its first checkpoint
    bar 3; with `cancel`, bar 2's again in its intent flush) and dies; a store with
    another spool folder resumes from bar 2 and stores bar 3 (with `cancel`, only bar 3's
    intent flush, which stores bar 2's checkpoint again). The old spool is another
    process's state of that bar: refused, nothing of it written."""
    schema = f"same_{uuid.uuid4().hex[:10]}"
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    first = await three_bars_then_down(server, schema, old_dir)
    await trade_bar(first, 3, cancel=cancel)
    await first._stop_spool()  # the process dies with its spool on disk
    await first._close()
    [old] = spool_files(old_dir)
    spooled = first_checkpoint_bar(old)
    assert spooled == T0 + (2 if cancel else 3) * DAY
    server.start()

    second = outage_store(server, schema, new_dir)
    await second.start()
    try:
        resume = await second.resume_run(run_info())
        assert resume is not None and resume.bar_time == T0 + 2 * DAY
        if cancel:
            second.record_orders(RUN_ID, [Order(f"{RUN_ID}|3b", "AAA", Side.SELL, 5.0, T0)])
            second.record_checkpoint(RUN_ID, T0 + 2 * DAY, {**bar_state(2), "intent": {}})
            await second.flush()
        else:
            await trade_bar(second, 3)
        before = await stored(second)
    finally:
        await second.stop()
    assert before["checkpoints"][0]["bar_time"] == spooled

    third = outage_store(server, schema, old_dir)
    with pytest.raises(SpoolStale) as e:
        await third.start()
    await third._stop_spool()
    await third._close()
    msg = str(e.value)
    assert str(old) in msg and repr(RUN_ID) in msg and str(spooled) in msg
    assert "move the file" in msg.lower()
    assert old.exists()

    check = outage_store(server, schema, new_dir)
    await check.start()
    try:
        assert await stored(check) == before
    finally:
        await check.stop()


async def test_a_stop_with_the_database_down_says_what_it_left(
    server: PgServer, tmp_path: Path
) -> None:
    """A run that ends while the database is down: `end_run` and the last bars go to the
    spool, which stays for the next start; the store says so (`spool_left`: what the
    daemon's exit code and last line tell), and says nothing once everything is written."""
    schema = f"left_{uuid.uuid4().hex[:10]}"
    store = outage_store(server, schema, tmp_path / "spool")
    await store.start()
    assert await store.resume_run(run_info()) is None
    await trade_bar(store, 0)
    server.stop()
    await trade_bar(store, 1)
    await store.end_run(RUN_ID, {"bars": 2})
    await store.stop()
    [left] = spool_files(tmp_path / "spool")
    assert store.spool_left == (4, left)  # bar 1's three batches and the end
    server.start()

    again = outage_store(server, schema, tmp_path / "spool")
    await again.start()  # writes the spool
    try:
        assert spool_files(tmp_path / "spool") == []
        [run] = await again.fetch("runs", RUN_ID)
        assert run["ended_at"] is not None and run["summary"] == {"bars": 2}
    finally:
        await again.stop()
    assert again.spool_left is None
