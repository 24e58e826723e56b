"""A replay's SQLite writes in a writer process (storage/child.py): written there, bounded,
failures surface at the engine's next call, the child never outlives its parent, live runs
stay on the thread."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import tradingd.storage.sqlite as sqlite_mod
from tradingd.core.errors import StorageError
from tradingd.core.types import Fill, Order, RunInfo, Side
from tradingd.storage.child import ChildWriter
from tradingd.storage.sqlite import SqliteStore, write_rows

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SYMS = ("AAA", "BBB", "CCC")


def run_info(mode: str = "backtest") -> RunInfo:
    return RunInfo("r1", mode, T0, "{}", SYMS, 100_000.0)


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def record_bar(store: SqliteStore, k: int) -> None:
    t = T0 + k * DAY
    q = np.array([float(k), 0.0, 2.0 * k])
    store.record_positions("r1", t, SYMS, q, np.ones(3), np.ones(3))
    store.record_signals("r1", t, SYMS, np.ones(3), q / 100, "m", ordered=["AAA"])
    store.record_equity("r1", t, 1.0 + k, 2.0, 0.1, 0.1)
    o = Order(f"r1|{k}", "AAA", Side.BUY, 1.0, t)
    store.record_orders("r1", [o])
    store.record_fills("r1", [Fill(f"f{k}", o.client_order_id, "AAA", Side.BUY, 1, 9, 0, 0, t)])


@pytest.fixture
def started(monkeypatch) -> list[ChildWriter]:
    """Every writer process started during the test, in order."""
    out: list[ChildWriter] = []
    real_init = ChildWriter.__init__

    def counted(self, *a, **k):
        real_init(self, *a, **k)
        out.append(self)

    monkeypatch.setattr(ChildWriter, "__init__", counted)
    return out


async def test_a_replay_on_a_file_is_written_by_the_writer_process(tmp_path, monkeypatch):
    def not_here(*a, **k):
        raise AssertionError("rows were written in the engine's process")

    store = SqliteStore(tmp_path / "s.db", batch_size=4, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        child = store._child
        assert child is not None and child._proc.pid != os.getpid()
        child.sync()  # started and connected: it takes the batches from now on
        monkeypatch.setattr(sqlite_mod, "write_rows", not_here)  # the parent's copy only
        for k in range(10):
            record_bar(store, k)
            await store.maybe_flush()
            assert child.pending <= store.max_in_flight  # bounded hand-over
        await store.flush()
        assert count(tmp_path / "s.db", "equity") == 10
        assert [r["cash"] for r in await store.fetch("equity", "r1")] == [
            1.0 + k for k in range(10)
        ]
        assert len(await store.fetch("order_events", "r1")) == 10
        assert len(await store.fetch("fills", "r1")) == 10
        # the same rows as the thread writes (the thread's path is the reference)
        monkeypatch.setattr(sqlite_mod, "write_rows", write_rows)
        ref = SqliteStore(tmp_path / "ref.db", batch_size=4, process=False)
        await ref.start()
        await ref.begin_run(run_info())
        for k in range(10):
            record_bar(ref, k)
        await ref.flush()
        for table in ("signals", "positions", "orders", "order_events", "fills", "equity"):
            assert await store.fetch(table, "r1") == await ref.fetch(table, "r1"), table
        await ref.stop()
    finally:
        await store.stop()
    assert child.wait(timeout=30) == 0  # ended with the store


async def test_a_failed_write_in_the_process_raises_at_the_next_bar(tmp_path):
    store = SqliteStore(tmp_path / "s.db", batch_size=1, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        store._child.sync()  # started: it takes the batches
        store.record_equity(None, T0, 1.0, 1.0, 0.0, 0.0)  # type: ignore[arg-type]  # NOT NULL
        await store.maybe_flush()  # handed over
        store.record_equity("r1", T0 + DAY, 1.0, 1.0, 0.0, 0.0)
        with pytest.raises(StorageError) as e:
            await store.flush()
        assert "NOT NULL" in str(e.value) and str(tmp_path / "s.db") in str(e.value)
    finally:
        with pytest.raises(StorageError):
            await store.stop()  # still failed: the replay ends with the error
    assert count(tmp_path / "s.db", "equity") == 0


async def test_a_live_run_writes_on_the_thread_not_in_a_process(tmp_path):
    store = SqliteStore(tmp_path / "s.db", batch_size=1)
    await store.start()
    try:
        await store.begin_run(run_info("backtest"))
        assert store._child is not None
        # A live run (of its own run id: it may not continue a backtest's record).
        await store.resume_run(dataclasses.replace(run_info("live"), run_id="r2"))
        assert store._child is None
        record_bar(store, 0)
        await store.flush()
        assert count(tmp_path / "s.db", "equity") == 1
    finally:
        await store.stop()


async def test_a_replay_writes_on_the_thread_until_its_process_has_started(tmp_path, monkeypatch):
    """The engine never waits for the writer process to start: batches go through the
    thread (the engine waiting for each, as inline) until the process has answered."""
    store = SqliteStore(tmp_path / "s.db", batch_size=1, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        child = store._child
        assert child is not None and child.pending == 1  # its start, not answered yet
        monkeypatch.setattr(ChildWriter, "reap", lambda self: None)  # still starting
        record_bar(store, 0)
        await store.maybe_flush()
        assert count(tmp_path / "s.db", "equity") == 1  # written by the thread, at once
        assert not store._child_ready and child.pending == 1
        monkeypatch.undo()
        assert child._in.poll(60)  # the process has started and answered (not yet read)
        record_bar(store, 1)
        await store.maybe_flush()  # the answer is read: the process takes over
        await store.flush()
        assert store._child_ready and count(tmp_path / "s.db", "equity") == 2
    finally:
        await store.stop()


async def test_a_batch_due_by_the_interval_waits_for_a_starting_process(tmp_path, monkeypatch):
    """A replay's writer process still starting: a batch the interval made due stays in the
    buffers (the engine neither writes it nor waits for the thread), and the process takes
    it once it has answered; a full buffer is still written at once (memory)."""
    store = SqliteStore(tmp_path / "s.db", batch_size=3, flush_interval_s=0.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        child = store._child
        assert child is not None and child.pending == 1  # its start, not answered yet
        monkeypatch.setattr(ChildWriter, "reap", lambda self: None)  # still starting
        record_bar(store, 0)
        await store.maybe_flush()  # due (interval 0), held
        assert count(tmp_path / "s.db", "equity") == 0
        assert store.pending()["equity"] == 1 and not store._in_flight
        record_bar(store, 1)
        record_bar(store, 2)  # 3 rows: a full buffer
        await store.maybe_flush()
        assert count(tmp_path / "s.db", "equity") == 3  # written by the thread, at once
        record_bar(store, 3)
        await store.maybe_flush()
        assert count(tmp_path / "s.db", "equity") == 3  # held again
        monkeypatch.undo()
        assert child._in.poll(60)  # the process has started and answered (not yet read)
        await store.maybe_flush()  # the answer is read: the process takes the batch
        assert store._child_ready and store.pending()["equity"] == 0
        await store.flush()
        assert count(tmp_path / "s.db", "equity") == 4
        assert len(await store.fetch("fills", "r1")) == 4
    finally:
        await store.stop()


async def test_a_prestarted_process_is_past_its_imports_and_takes_the_first_batch(
    tmp_path, monkeypatch
):
    """build_engine starts a replay's writer process before it computes the features
    (SqliteStore.prestart): by the first batch it has imported, so the engine hands that
    batch over instead of writing it itself and waiting (it used to, for about 0.1 s of a
    496-symbol replay)."""

    def not_here(*a, **k):
        raise AssertionError("rows were written in the engine's process")

    store = SqliteStore(tmp_path / "s.db", batch_size=1, flush_interval_s=3600.0)
    store.prestart()
    child = store._child
    assert child is not None
    child.sync()  # its imports are done before the store has even started
    await store.start()
    try:
        await store.begin_run(run_info())
        assert store._child is child  # the same process, now connected
        monkeypatch.setattr(sqlite_mod, "write_rows", not_here)  # the parent's copy only
        record_bar(store, 0)
        await store.maybe_flush()
        assert store._child_ready  # the first batch went to the process
        await store.flush()
        assert count(tmp_path / "s.db", "equity") == 1
        assert len(await store.fetch("fills", "r1")) == 1
    finally:
        await store.stop()
    assert child.wait(timeout=30) == 0


async def test_a_prestarted_process_ends_when_its_store_never_runs_or_runs_live(tmp_path):
    never = SqliteStore(tmp_path / "n.db")
    never.prestart()
    child = never._child
    never.close_unstarted()
    assert never._child is None and child.wait(timeout=30) == 0
    never.close_unstarted()  # again: nothing left to end
    assert not (tmp_path / "n.db").exists()  # it never made the file

    live = SqliteStore(tmp_path / "l.db", batch_size=1)
    live.prestart()
    child = live._child
    await live.start()
    try:
        await live.begin_run(run_info("live"))  # a live run writes on the thread
        assert live._child is None and child.wait(timeout=30) == 0
        record_bar(live, 0)
        await live.flush()
        assert count(tmp_path / "l.db", "equity") == 1
    finally:
        await live.stop()
    for store in (SqliteStore(":memory:"), SqliteStore(tmp_path / "t.db", process=False)):
        store.prestart()
        assert store._child is None


def test_build_engine_prestarts_a_replays_process_and_ends_it_if_never_run(
    tmp_path, monkeypatch, engine_config, synthetic_panel, started
):
    """The engine's writer process starts with build_engine (replay, SQLite file), and an
    engine that is built and never run, or whose building fails after the store, leaves
    no process behind."""
    import tradingd.app as app_mod
    from tradingd.config import StorageConfig

    config = dataclasses.replace(
        engine_config, storage=StorageConfig(url=f"sqlite:///{tmp_path / 'b.db'}")
    )
    engine = app_mod.build_engine(config, "backtest", panel=synthetic_panel)
    assert len(started) == 1 and started[0]._proc.poll() is None
    engine.close_held()
    assert started[0].wait(timeout=30) == 0

    def broken(*a, **k):
        raise ValueError("a plugin's config is wrong")

    monkeypatch.setattr(app_mod, "_assemble", broken)
    with pytest.raises(ValueError, match="plugin's config"):
        app_mod.build_engine(config, "backtest", panel=synthetic_panel)
    assert len(started) == 2 and started[1].wait(timeout=30) == 0


async def test_memory_and_live_stores_start_no_process(tmp_path):
    for store, mode in (
        (SqliteStore(":memory:", batch_size=1), "backtest"),
        (SqliteStore(tmp_path / "t.db", batch_size=1, process=False), "backtest"),
        (SqliteStore(tmp_path / "l.db", batch_size=1), "live"),
    ):
        await store.start()
        try:
            if mode == "live":
                await store.resume_run(run_info(mode))
            else:
                await store.begin_run(run_info(mode))
            record_bar(store, 0)
            await store.flush()
            assert store._child is None
            assert len(await store.fetch("equity", "r1")) == 1
        finally:
            await store.stop()


def job_fails_on(state, payload):
    path, value = payload
    with open(path, "a") as fh:
        fh.write(value + "\n")
    if value == "bad":
        raise ValueError("refused")


def test_the_child_skips_every_job_after_a_failure_and_says_why(tmp_path):
    done = tmp_path / "done.txt"
    child = ChildWriter("test", max_in_flight=2)
    try:
        for value in ("ok", "bad", "after", "later"):
            try:
                child.send("test_store_process:job_fails_on", (str(done), value))
            except StorageError:
                break  # the failure was read while waiting for room: raised at once
        with pytest.raises(StorageError, match="writer process test: ValueError: refused"):
            child.sync()
    finally:
        with pytest.raises(StorageError, match="refused"):
            child.close()  # the error stays: every later call says it
    assert child.wait(timeout=30) == 0
    assert done.read_text().split() == ["ok", "bad"]  # nothing ran after the failure


def test_the_child_ends_when_its_parent_is_gone():
    """A parent killed with SIGKILL closes its end of the pipe: the child sees the end of
    its input and exits, it does not keep writing behind a restart."""
    child = ChildWriter("test")
    child._out.close()  # what the kernel does to a killed parent's descriptors
    assert child.wait(timeout=30) == 0
    child._in.close()


def job_waits_for_fifo(state, path: str) -> None:
    with open(path) as fh:  # blocks until the test opens the FIFO for writing
        fh.read()


def test_a_child_whose_parent_stopped_listening_exits_quietly(tmp_path, capfd):
    """A replay that ends before its writer process answered closes it without waiting
    (`close(sync=False)`): the child's late answer meets a closed pipe. It exits cleanly,
    with no traceback on the terminal the user ran the backtest in."""
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    child = ChildWriter("test")
    child.send("test_store_process:job_waits_for_fifo", str(fifo))
    child.close(sync=False)
    with open(fifo, "w") as fh:  # let the job finish: its answer has nowhere to go
        fh.write("go")
    assert child.wait(timeout=30) == 0
    assert "Traceback" not in capfd.readouterr().err


def test_reap_takes_an_answer_once_it_is_there_and_never_waits_for_one(tmp_path):
    """reap (every bar while a batch is out) reads what has arrived and returns at once when
    nothing has; a child that died raises there, naming the writer and its exit code."""
    import select
    import signal

    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    child = ChildWriter("test")
    try:
        child.send("test_store_process:job_waits_for_fifo", str(fifo))
        child.reap()  # the job is blocked on the FIFO: no answer, and reap does not wait
        assert child.pending == 1
        with open(fifo, "w") as fh:
            fh.write("go")
        # Waiting on the pipe itself (an event, not a sleep) until the answer is readable.
        assert select.select([child._in.fileno()], [], [], 30)[0]
        child.reap()
        assert child.pending == 0
        child.send("test_store_process:job_waits_for_fifo", str(fifo))
        child._proc.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        with pytest.raises(StorageError, match=r"writer process test ended \(exit code -9\)"):
            child.reap()
    finally:
        child._out.close()
        child._in.close()


def job_appends(state, args) -> None:
    path, value = args
    with open(path, "a") as fh:
        fh.write(f"{value}\n")


def test_a_shared_process_runs_every_users_jobs_in_order_and_ends_with_its_last_user(tmp_path):
    out = tmp_path / "out.txt"
    first = ChildWriter("first", max_in_flight=1)
    second = first.share("second", 2)
    assert second is first and first.max_in_flight == 3
    for k in range(6):
        (first if k % 2 else second).send("test_store_process:job_appends", (str(out), k))
    first.close()  # one user done: the jobs sent are written, the process stays for the other
    assert first._proc.poll() is None
    assert out.read_text().split() == [str(k) for k in range(6)]
    second.send("test_store_process:job_appends", (str(out), 6))
    second.close()
    assert first.wait(timeout=30) == 0  # ended with its last user
    assert out.read_text().split() == [str(k) for k in range(7)]


def test_a_failed_job_in_a_shared_process_stops_its_part_alone_and_names_it(tmp_path):
    """The store and the audit log share a process, each with jobs of its own module (its
    part): a job that fails skips the later jobs of its part and raises at that user's
    calls, named by it; the other part's jobs still run. A full audit folder skipped the
    store's writes too, and the replay could not end its run's row as failed (it looked
    killed); a full database was reported as "writer process audit ...: ... SQLite ..."."""
    done = tmp_path / "done.txt"
    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    store = ChildWriter("SQLite s.db")
    audit = store.share("audit r.jsonl", 2)
    a = "audit r.jsonl"
    audit.send("test_store_process:job_fails_on", (str(done), "bad"), user=a)
    audit.send("test_store_process:job_fails_on", (str(done), "after"), user=a)
    store.send("tradingd.storage.sqlite_file:child_open", str(db))
    with pytest.raises(StorageError, match=r"^writer process audit r\.jsonl: ValueError: refused"):
        audit.sync(user=a)
    store.sync()  # the store's job ran, and its calls go on
    store.send("tradingd.storage.sqlite_file:child_open", str(tmp_path / "missing.db"))
    # Run, not skipped: the store's own error, named by the store.
    with pytest.raises(
        StorageError,
        match=r"^writer process SQLite s\.db: StorageError: cannot open SQLite database .*missing",
    ):
        store.sync()
    with pytest.raises(StorageError, match="refused"):
        audit.reap(user=a)  # its first error stays
    with pytest.raises(StorageError, match="missing"):
        store.close()
    with pytest.raises(StorageError, match="refused"):
        audit.close(user=a)
    assert store.wait(timeout=30) == 0
    assert done.read_text().split() == ["bad"]  # the audit's part skipped after its failure


@pytest.mark.parametrize("store_first", [True, False])
async def test_a_replays_store_and_audit_log_share_one_writer_process(
    tmp_path, store_first, started
):
    """The audit log takes the store's writer process (app.build_engine wires it): its
    lines and the store's rows are all written there, and the process ends after the last
    of the two closes, whichever order they close in (the engine stops the store first)."""
    import json

    from tradingd.audit import AuditLog

    store = SqliteStore(tmp_path / "s.db", batch_size=4, flush_interval_s=3600.0)
    await store.start()
    log = AuditLog(tmp_path / "audit", "r1", max_lines=3, share_writer=store.writer_process)
    try:
        await store.begin_run(run_info())
        store._child.sync()  # started: from now on both hand their batches over
        for k in range(10):
            record_bar(store, k)
            log.orders([Order(f"r1|{k}", "AAA", Side.BUY, 1.0, T0 + k * DAY)])
            await store.maybe_flush()
            log.flush()
        assert log._writer is store._child and log._writer_ready
        assert store._child.max_in_flight == store.max_in_flight + log.max_pending
    finally:
        if store_first:
            await store.stop()
            log.close()
        else:
            log.close()
            assert started[0]._proc.poll() is None  # still the store's
            await store.stop()
    assert len(started) == 1  # one process, not one each
    assert started[0].wait(timeout=30) == 0
    lines = [json.loads(x) for x in (tmp_path / "audit" / "r1.jsonl").read_text().splitlines()]
    assert [r["client_order_id"] for r in lines] == [f"r1|{k}" for k in range(10)]
    assert count(tmp_path / "s.db", "equity") == 10


def _fds(child: ChildWriter) -> list[str]:
    try:
        return os.listdir(f"/proc/{child._proc.pid}/fd")
    except FileNotFoundError:  # not Linux
        pytest.skip("needs /proc")


async def test_a_store_reused_for_runs_gives_each_audit_log_a_share_and_takes_it_back(tmp_path):
    """begin_run again without a stop keeps the store's process: each run's audit log takes a
    share and gives it back at its close, so the bound and the name do not grow run by run."""
    from tradingd.audit import AuditLog

    store = SqliteStore(tmp_path / "s.db", batch_size=4, flush_interval_s=3600.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        child = store._child
        child.sync()
        for k in range(3):
            log = AuditLog(tmp_path / "audit", f"run{k}", share_writer=store.writer_process)
            log.orders([Order(f"run{k}|0", "AAA", Side.BUY, 1.0, T0)])
            log.flush(force=True)
            assert log._writer is child and child.name.endswith(f"run{k}.jsonl")
            log.close()
            assert store._child is child and child._proc.poll() is None
            assert (child.name, child.max_in_flight) == (f"SQLite {store.path}", 2)
            # and its file is closed in the process too: no run's log is held open there
            held = [os.readlink(f"/proc/{child._proc.pid}/fd/{fd}") for fd in _fds(child)]
            assert not [f for f in held if f.endswith(".jsonl")], held
        with pytest.raises(ValueError, match="no user named 'audit nowhere'"):
            child.close(user="audit nowhere")
    finally:
        await store.stop()
    assert child.wait(timeout=30) == 0


async def test_an_audit_write_that_fails_in_a_shared_process_names_the_audit_log(tmp_path):
    """A full disk under the audit log: the audit log's next call raises, naming the audit
    log (a write error names no file of its own). The store shares the process and is fine:
    its rows are still written and it can end the run (as failed); its calls raised the
    audit log's error too, and the run's row was left as a killed run's."""
    import json

    from tradingd.audit import AuditLog

    store = SqliteStore(tmp_path / "s.db", batch_size=1, flush_interval_s=3600.0)
    await store.start()
    log = AuditLog(tmp_path / "audit", "r1", max_lines=1, share_writer=store.writer_process)
    (tmp_path / "audit").mkdir()
    os.symlink("/dev/full", tmp_path / "audit" / "r1.jsonl")
    try:
        await store.begin_run(run_info())
        store._child.sync()
        log.orders([Order("r1|0", "AAA", Side.BUY, 1.0, T0)])
        log.flush()
        assert log._writer is store._child
        store._child.sync()  # the store's own calls do not raise the audit log's error
        with pytest.raises(StorageError) as e:
            log.flush()
        assert str(e.value).startswith(f"writer process audit {log.path}: ")
        assert f"cannot write the audit log {tmp_path / 'audit' / 'r1.jsonl'}" in str(e.value)
        assert "No space left on device" in str(e.value)
        for k in range(3):
            record_bar(store, k)
            await store.maybe_flush()
        await store.end_run("r1", {"bars": 3, "failed": True, "error": "StorageError: ..."})
    finally:
        await store.stop()
        with pytest.raises(StorageError, match="cannot write the audit log"):
            log.close()
    assert count(tmp_path / "s.db", "equity") == 3
    with sqlite3.connect(tmp_path / "s.db") as db:
        ended, summary = db.execute("SELECT ended_at, summary FROM runs").fetchone()
    assert ended is not None and json.loads(summary)["failed"] is True


def job_keeps(state, payload) -> None:
    state.setdefault("kept", []).append(payload)


def job_is_kept(state, args) -> None:
    """Writes whether `payload` is (the same object as) one a `job_keeps` kept."""
    path, payload = args
    with open(path, "a") as fh:
        fh.write(f"{any(payload is k for k in state.get('kept', []))}\n")


def test_a_riders_job_goes_in_the_next_send_and_shares_its_objects(tmp_path):
    """A rider's job goes out with the next send, in one message (one answer), run first:
    an object both payloads hold arrives as one object (one pickling), where two messages
    carry two copies."""
    out = tmp_path / "out.txt"
    child = ChildWriter("test", max_in_flight=1)
    shared = [("order", 1.0), ("fill", 2.0)]
    waiting = [("test_store_process:job_keeps", shared)]
    asked: list[str] = []

    def take():
        asked.append("asked")
        return waiting.pop() if waiting else None

    try:
        child.send("test_store_process:job_keeps", shared)  # no rider yet: its own message
        child.send("test_store_process:job_is_kept", (str(out), shared))
        child.sync()
        child.add_rider(take)
        child.sync()
        assert asked == []  # sync sends no rider's job
        child.send("test_store_process:job_is_kept", (str(out), shared))  # with the rider's
        child.sync()
        child.remove_rider(take)
        child.send("test_store_process:job_is_kept", (str(out), shared))
        child.sync()
        assert asked == ["asked"]
    finally:
        child.close()
    assert child.wait(timeout=30) == 0
    # apart, together, apart again (the rider removed): only together is it one object
    assert out.read_text().split() == ["False", "True", "False"]


def test_a_riders_failed_job_skips_the_job_it_rode_with(tmp_path):
    done = tmp_path / "done.txt"
    child = ChildWriter("test", max_in_flight=2)
    waiting = [("test_store_process:job_fails_on", (str(done), "bad"))]
    child.add_rider(lambda: waiting.pop() if waiting else None)
    child.send("test_store_process:job_fails_on", (str(done), "rode"))
    with pytest.raises(StorageError, match="writer process test: ValueError: refused"):
        child.sync()
    with pytest.raises(StorageError, match="refused"):
        child.close()
    assert child.wait(timeout=30) == 0
    assert done.read_text().split() == ["bad"]


async def _audit_lines(tmp_path: Path, shared: bool, max_lines: int) -> list[str]:
    """The audit file of one sequence of bars: orders and fills recorded in the store and
    handed on to the audit log as the engine does (the store's records), with the audit
    log in the store's writer process (`shared`) or written in this process (live)."""
    from tradingd.audit import AuditLog

    store = SqliteStore(tmp_path / "s.db", batch_size=7, flush_interval_s=3600.0)
    await store.start()
    log = AuditLog(
        tmp_path / "audit",
        "r1",
        max_lines=max_lines,
        flush_interval_s=3600.0 if shared else 0.0,
        share_writer=store.writer_process if shared else None,
    )
    try:
        await store.begin_run(run_info())
        store._child.sync()
        for k in range(12):
            t = T0 + k * DAY
            o = Order(f"r1|{k}", "AAA", Side.BUY, 1.0 + k, t, reason=f"bar {k}")
            fills = [
                Fill(f"f{k}.{j}", o.client_order_id, "AAA", Side.BUY, 1.0, 9.5 + k, 0.1, 0.0, t)
                for j in range(k % 3)
            ]
            if fills:
                log.fills(fills, t, store.record_fills("r1", fills, t))
            log.orders([o], store.record_orders("r1", [o]))
            store.record_equity("r1", t, 1.0 + k, 2.0, 0.1, 0.1)
            log.flush()
            await store.maybe_flush()
        if shared:
            assert log._riding and log._writer is store._child
    finally:
        await store.stop()
        log.close()
    assert count(tmp_path / "s.db", "fills") == sum(k % 3 for k in range(12))
    return (tmp_path / "audit" / "r1.jsonl").read_text().splitlines()


@pytest.mark.parametrize("max_lines", [2, 10_000])
async def test_audit_lines_riding_with_the_stores_writes_are_those_written_alone(
    tmp_path, max_lines
):
    """Riding with the store's writes (and on their own when max_lines wait) changes when
    the lines are written, never what or in which order."""
    alone = await _audit_lines(tmp_path / "alone", shared=False, max_lines=max_lines)
    riding = await _audit_lines(tmp_path / "riding", shared=True, max_lines=max_lines)
    assert len(alone) == 12 + sum(k % 3 for k in range(12))
    assert riding == alone


async def test_riding_audit_lines_go_on_their_own_when_max_lines_wait(tmp_path):
    """A store that writes nothing for a long time: the audit log's waiting lines stay
    within max_lines (sent on their own), not held until the store's next write."""
    from tradingd.audit import AuditLog

    store = SqliteStore(tmp_path / "s.db", batch_size=10_000, flush_interval_s=3600.0)
    await store.start()
    log = AuditLog(tmp_path / "audit", "r1", max_lines=3, share_writer=store.writer_process)
    try:
        await store.begin_run(run_info())
        store._child.sync()
        for k in range(10):
            log.orders([Order(f"r1|{k}", "AAA", Side.BUY, 1.0, T0 + k * DAY)])
            log.flush()
            assert log._waiting < 3
            await store.maybe_flush()
        assert log._riding
        store._child.sync()
        written = (tmp_path / "audit" / "r1.jsonl").read_text().splitlines()
        assert len(written) >= 10 - 2  # all but what waits (fewer than max_lines)
    finally:
        await store.stop()
        log.close()
    assert len((tmp_path / "audit" / "r1.jsonl").read_text().splitlines()) == 10


def test_a_payload_that_cannot_be_pickled_raises_and_leaves_no_job_to_wait_for(tmp_path):
    """Nothing was sent: sync and close return (they used to wait for its answer forever)."""
    import threading

    out = tmp_path / "out.txt"
    child = ChildWriter("test")
    with pytest.raises(Exception, match="pickle"):
        child.send("test_store_process:job_appends", (str(out), lambda: 0))
    done = threading.Event()

    def finish():
        child.send("test_store_process:job_appends", (str(out), "after"))
        child.close()
        done.set()

    threading.Thread(target=finish, daemon=True).start()
    assert done.wait(timeout=30), "close waited for an answer to a job never sent"
    assert child.wait(timeout=30) == 0
    assert out.read_text().split() == ["after"]


async def test_every_buffer_is_bounded_by_batch_size_while_a_process_starts(tmp_path, monkeypatch):
    """Only five buffers were counted: the decisions waited past `batch_size` rows while
    the starting process held the interval's batches (memory unbounded)."""
    store = SqliteStore(tmp_path / "s.db", batch_size=3, flush_interval_s=0.0)
    await store.start()
    try:
        await store.begin_run(run_info())
        monkeypatch.setattr(ChildWriter, "reap", lambda self: None)  # still starting
        for k in range(3):
            store.record_decision("r1", T0 + k * DAY, "m", {"bar": k})
        await store.maybe_flush()
        assert count(tmp_path / "s.db", "decisions") == 3  # a full buffer: written at once
        assert store.pending()["decisions"] == 0
    finally:
        monkeypatch.undo()
        await store.stop()


async def test_the_writer_process_needs_no_numpy_or_structlog_for_a_replays_batches(
    tmp_path, monkeypatch
):
    """A replay's writer process runs the store's and the audit log's jobs on the batches the
    engine sends: the modules those jobs name, and reading the batches, need neither numpy
    nor structlog (nor rich or asyncio). The audit log's jobs lived beside `AuditLog`, which
    imports structlog, and a batch's signals and positions came as numpy arrays (and
    `core.types`, which the records' enums need, imported numpy): about two thirds of the
    process's start-up, taken from the engine on a 2-core machine while the first bars ran.
    The jobs and batches are the ones a store and an audit log sharing the process really
    send; they are imported and read in a fresh interpreter, as the process does."""
    import pickle
    import subprocess
    import sys

    from tradingd.audit import AuditLog

    jobs: list[str] = []
    batches = tmp_path / "batches.pickle"
    real_post = ChildWriter._post

    def post(self, batch):  # type: ignore[no-untyped-def]
        jobs.extend(job for job, _ in batch)
        with batches.open("ab") as fh:
            pickle.dump(pickle.dumps(batch, pickle.HIGHEST_PROTOCOL), fh)
        real_post(self, batch)

    monkeypatch.setattr(ChildWriter, "_post", post)
    store = SqliteStore(tmp_path / "s.db", batch_size=4, flush_interval_s=3600.0)
    await store.start()
    log = AuditLog(tmp_path / "audit", "r1", max_lines=3, share_writer=store.writer_process)
    try:
        await store.begin_run(run_info())
        store._child.sync()
        for k in range(6):
            record_bar(store, k)
            log.orders([Order(f"r1|{k}", "AAA", Side.BUY, 1.0, T0 + k * DAY)])
            await store.maybe_flush()
            log.flush()
    finally:
        log.close()
        await store.stop()
    modules = sorted({job.partition(":")[0] for job in jobs})
    assert "tradingd.storage.sqlite_file" in modules and len(modules) == 2, modules
    assert "tradingd.storage.sqlite_file:child_rows" in jobs
    code = f"""
import pickle, sys
import tradingd.storage.child
{"; ".join(f"import {m}" for m in modules)}
read = []
with open({str(batches)!r}, "rb") as fh:
    while True:
        try:
            read.append(pickle.loads(pickle.load(fh)))
        except EOFError:
            break
assert any(job == "tradingd.storage.sqlite_file:child_rows" for b in read for job, _ in b)
print(sorted(m for m in ("numpy", "structlog", "rich", "asyncio") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
