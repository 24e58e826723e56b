"""A SQLite store restored by copying a backup over the database while a killed daemon's
`-wal` file stayed beside it: SQLite merges that file's pages into the copy, whose tree then
points at pages it does not have. A live start resumed the run from it and wrote on without
a word; now the resume runs SQLite's `quick_check` and refuses, naming the file and the fix
(`StoreDamaged`, a ConfigError: exit 78)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError, StorageError, StoreCheckStopped, StoreDamaged
from tradingd.core.types import RunInfo
from tradingd.storage.sqlite import SqliteStore

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
RUN = RunInfo("live-restored", "live", T0, "{}", ("AAA",), 100_000.0)


async def _stored_run(path: Path) -> None:
    store = SqliteStore(path)
    await store.start()
    try:
        assert await store.resume_run(RUN) is None
        store.record_checkpoint(RUN.run_id, T0, {"bar": 0})
        await store.flush()
    finally:
        await store.stop()


def _grow(path: Path, rows: int) -> None:
    """Rows of a table of this test's (the daemon's tables need not be the damaged ones)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS filler (a INTEGER PRIMARY KEY, b TEXT)")
    db.executemany("INSERT INTO filler (b) VALUES (?)", [("x" * 50,)] * rows)
    db.commit()
    db.close()


def _restore_beside_stale_wal(path: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup.db"
    shutil.copy(path, backup)  # the backup, taken while the run was small
    _grow(path, 20_000)  # the run goes on
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("DELETE FROM filler WHERE a > 21990")  # its last writes, in the -wal
    db.commit()
    wal = Path(f"{path}-wal")
    stale = tmp_path / "stale.wal"
    shutil.copy(wal, stale)  # what a SIGKILL leaves: the -wal, never checkpointed
    db.close()
    shutil.copy(backup, path)  # the restore: the backup copied over the database ...
    shutil.copy(stale, wal)  # ... beside the killed daemon's -wal


async def test_a_damaged_store_is_refused_at_the_resume(tmp_path: Path) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    _grow(path, 2_000)
    _restore_beside_stale_wal(path, tmp_path)

    store = SqliteStore(path)
    await store.start()
    try:
        with pytest.raises(StoreDamaged) as e:
            await store.resume_run(RUN)
    finally:
        await store.stop()
    msg = str(e.value)
    assert isinstance(e.value, ConfigError)
    assert str(path) in msg and "quick_check" in msg and "invalid page" in msg
    assert f"{path}-wal" in msg and "'live-restored'" in msg


async def test_a_backup_restored_without_the_stale_wal_resumes(tmp_path: Path) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    _grow(path, 2_000)
    backup = tmp_path / "backup.db"
    src = sqlite3.connect(path)
    dst = sqlite3.connect(backup)
    src.backup(dst)  # sqlite3's ".backup"
    src.close()
    dst.close()
    _grow(path, 20_000)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    shutil.copy(backup, path)

    store = SqliteStore(path)
    await store.start()
    try:
        resumed = await store.resume_run(RUN)
    finally:
        await store.stop()
    assert resumed is not None and resumed.bar_time == T0


# When the check runs: only when a -wal file was beside the database at open (a kill or a
# restore). A clean stop leaves none, and the check reads every page (minutes on a large
# store, at every systemd restart).


def _spy_check(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = SqliteStore._quick_check

    def spy(self: SqliteStore) -> str | None:
        calls.append(self.path)
        return real(self)

    monkeypatch.setattr(SqliteStore, "_quick_check", spy)
    return calls


def _leave_wal_as_a_kill_does(path: Path, tmp_path: Path) -> None:
    """A write the daemon never checkpointed: its -wal stays (what a SIGKILL leaves)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE IF NOT EXISTS filler (a INTEGER PRIMARY KEY, b TEXT)")
    db.execute("INSERT INTO filler (b) VALUES ('x')")
    db.commit()
    wal = Path(f"{path}-wal")
    kept = tmp_path / "killed.wal"
    shutil.copy(wal, kept)
    db.close()  # (removes the -wal: put back as the kill left it)
    assert not wal.exists()
    shutil.copy(kept, wal)


async def test_a_start_after_a_clean_stop_does_not_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    assert not Path(f"{path}-wal").exists()  # the clean stop removed it
    calls = _spy_check(monkeypatch)
    store = SqliteStore(path)
    await store.start()
    try:
        with capture_logs() as logs:
            resumed = await store.resume_run(RUN)
    finally:
        await store.stop()
    assert resumed is not None and resumed.bar_time == T0
    assert calls == []
    skipped = [e for e in logs if e["event"] == "storage.sqlite.check_skipped"]
    assert len(skipped) == 1 and "no -wal" in skipped[0]["reason"]


async def test_a_start_after_a_kill_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    _leave_wal_as_a_kill_does(path, tmp_path)
    calls = _spy_check(monkeypatch)
    store = SqliteStore(path)
    await store.start()
    try:
        with capture_logs() as logs:
            resumed = await store.resume_run(RUN)
    finally:
        await store.stop()
    assert resumed is not None and resumed.bar_time == T0
    assert calls == [str(path)]
    events = [e["event"] for e in logs]
    assert "storage.sqlite.checking" in events and "storage.sqlite.checked" in events
    checking = next(e for e in logs if e["event"] == "storage.sqlite.checking")
    assert f"{path}-wal" in checking["reason"]


# Errors of the check that are not damage: a StorageError of their own, never the advice to
# remove the database files.


class _Refusing:
    """The store's connection, answering the check with `error`."""

    def __init__(self, real: sqlite3.Connection, error: sqlite3.Error) -> None:
        self.real, self.error = real, error

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if "quick_check" in sql:
            raise self.error
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def test_a_locked_database_is_not_called_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    _leave_wal_as_a_kill_does(path, tmp_path)
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorname = "SQLITE_BUSY"
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    store = SqliteStore(path)
    await store.start()
    real = store._conn()
    monkeypatch.setattr(store, "_conn", lambda: _Refusing(real, busy))
    try:
        with pytest.raises(StorageError) as e:
            await store.resume_run(RUN)
    finally:
        monkeypatch.undo()
        await store.stop()
    assert not isinstance(e.value, StoreDamaged | ConfigError)
    msg = str(e.value)
    assert str(path) in msg and "SQLITE_BUSY" in msg and "lock" in msg
    assert "remove" not in msg and ".recover" not in msg


async def test_an_error_of_the_check_statement_is_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    _leave_wal_as_a_kill_does(path, tmp_path)
    # A real OperationalError (SQLITE_ERROR) from SQLite, not a damaged file.
    monkeypatch.setattr(SqliteStore, "check_sql", "SELECT * FROM no_such_table", raising=False)
    store = SqliteStore(path)
    await store.start()
    try:
        with pytest.raises(StorageError) as e:
            await store.resume_run(RUN)
    finally:
        await store.stop()
    assert not isinstance(e.value, StoreDamaged)
    assert "remove" not in str(e.value)


# A stop during the check: interrupted, not waited for (minutes on a large store, past the
# unit's stop timeout).

_ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"


async def test_a_stop_interrupts_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "paper.db"
    await _stored_run(path)
    _leave_wal_as_a_kill_does(path, tmp_path)
    monkeypatch.setattr(SqliteStore, "check_sql", _ENDLESS, raising=False)
    began = threading.Event()
    real = SqliteStore._quick_check

    def announced(self: SqliteStore) -> str | None:
        began.set()
        return real(self)

    monkeypatch.setattr(SqliteStore, "_quick_check", announced)
    store = SqliteStore(path)
    await store.start()
    try:
        resume = asyncio.ensure_future(store.resume_run(RUN))
        assert await asyncio.to_thread(began.wait, 30)
        store.interrupt_check()  # what the engine's request_stop calls (a SIGTERM)
        with pytest.raises(StoreCheckStopped):
            await asyncio.wait_for(resume, 30)
    finally:
        db = store._db
        if db is not None:
            db.interrupt()  # (without the fix: the endless check must not hang the stop)
        await store.stop()


class _CountingInterrupts:
    def __init__(self, real: sqlite3.Connection) -> None:
        self.real, self.interrupts = real, 0

    def interrupt(self) -> None:
        self.interrupts += 1
        self.real.interrupt()

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def test_a_stop_with_no_check_running_interrupts_nothing(tmp_path: Path) -> None:
    """A backtest's stop (request_stop) while the thread writes a batch: only the check's
    statement is ever interrupted, never a write."""
    store = SqliteStore(tmp_path / "paper.db")
    await store.start()
    db = _CountingInterrupts(store._conn())
    store._db = db  # type: ignore[assignment]
    try:
        store.interrupt_check()
        assert db.interrupts == 0
        await store.begin_run(dataclasses.replace(RUN, mode="backtest", run_id="bt"))
        store.record_checkpoint("bt", T0, {"bar": 0})
        await store.flush()
    finally:
        store._db = db.real
        await store.stop()
