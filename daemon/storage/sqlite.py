"""The embedded default store: one SQLite file, one connection, owned by a writer thread.

Every database call of the store runs on its writer thread (storage/writer.py), in the order
it was made, so the event loop never waits on SQLite. The engine's records are written behind
its back, in batches (`maybe_flush` hands one over and returns), in one of two ways:

- a replay on a file (`begin_run` of a run that is not live): a writer process
  (storage/child.py) gets each batch as a few arrays and tuples (storage/rows.py `pack`),
  makes the rows and writes them with a connection of its own while the engine computes
  the next bars. Not a thread: making rows is Python work, and a thread would take turns
  with the engine for Python's interpreter lock (measured slower than writing inline). The
  process is started when the engine is built (`prestart`, so that its imports run beside
  the feature step) or else by `begin_run`, connected by `begin_run`, and takes batches once
  it has answered a job; until then the thread writes them and the engine waits (a short
  replay never waits for the process). A
  batch that fails raises at the engine's next bar and the replay ends with that error.
  The replay's audit log makes its lines in the same process (`writer_process`,
  `ChildWriter.share`): beside the engine one writer, not two, on a 2-core machine.
- a live run (and `:memory:`): the writer thread makes the rows and writes them. In memory
  the engine waits for each batch at once (nothing to overlap). A batch that fails raises at
  the engine's next `maybe_flush`, `settle`, `flush` or `stop`, with its rows (and those of
  any batch handed over after it, which the thread then does not write, to keep the order)
  back in the buffers.

Either way at most `max_in_flight` batches are handed over and not yet written (in a
process shared with the audit log, the sum of the two shares: see `ChildWriter.share`); then
`maybe_flush` waits for the oldest (back-pressure: memory stays within that many + 1
batches). `flush()` returns when everything recorded before it is committed: this is what a
live run's durability rests on (order intents stored before they are sent, a bar's checkpoint
in the same transaction as its rows), unchanged by the writers. What differs between a
replay and a live run is where rows are made and how often the engine waits: a replay waits
at its end (and when the writer falls `max_in_flight` batches behind); a live run waits at
each `flush()` it asks for. A live run never uses the writer process: a process killed with
SIGKILL must not leave a writer behind that commits while its restart resumes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import structlog

from ..core.errors import ConfigError, StorageError, StoreCheckStopped, StoreDamaged
from ..core.types import RunInfo
from .buffered import BufferedStore, ResumePoint, Row
from .child import ChildWriter
from .rows import pack
from .schema import (
    TABLES,
    Dialect,
    add_column_sql,
    create_table_sql,
    newer_columns_error,
)
from .sqlite_file import MEMORY, connect, explain, iso_utc, transaction, write_rows
from .writer import WriterThread

log = structlog.get_logger(__name__)

T = TypeVar("T")


_STOPPED = "stopped"  # `_quick_check`'s answer when a stop interrupted it


class _Skipped(Exception):
    """A batch handed over after one that failed: not written (the order is kept)."""


# SQLite's answers that say the file itself is damaged (extended codes too:
# SQLITE_CORRUPT_INDEX, ...); any other error of the check (a lock, a disk error) is not.
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class SqliteStore(BufferedStore):
    """Times are stored as fixed-width ISO-8601 UTC text ("2020-01-02T21:00:00.000000+00:00"),
    so text order is time order. WAL journal mode lets readers see committed batches while
    the engine writes."""

    dialect: ClassVar[Dialect] = "sqlite"
    # The live start's check of the file (`_quick_check`); a class attribute for tests.
    check_sql: ClassVar[str] = "PRAGMA quick_check(5)"

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 5000,
        signals: str = "decisions",
        flush_interval_s: float = 0.1,
        max_in_flight: int = 2,
        *,
        process: bool = True,
    ) -> None:
        """`process`: write a replay's batches in a writer process (see the module
        docstring); off, the writer thread writes them."""
        super().__init__(batch_size=batch_size, signals=signals, flush_interval_s=flush_interval_s)
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigError(f"SQLite store max_in_flight must be >= 1, got {max_in_flight!r}")
        self.path = str(path) if str(path) == MEMORY else str(Path(path).expanduser())
        self.max_in_flight = max_in_flight
        self.process = process
        self._writer: WriterThread | None = None
        self._child: ChildWriter | None = None
        self._child_ready = False
        self._prestarted = False  # a writer process started before the run began
        self._db: sqlite3.Connection | None = None  # used on the writer thread only
        self._statements: dict[tuple[str, int], str] = {}
        # Batches handed to the writer thread, oldest first, with their chunks (put back if
        # the batch fails).
        self._in_flight: deque[tuple[Future[None], dict[str, list[Any]]]] = deque()
        # Set on the writer thread when a batch fails; the batches after it are skipped until
        # the engine has taken them all back.
        self._batch_failed = False
        # A `-wal` file beside the database when it was opened (`_open`): a killed daemon's
        # or a restore's, the only case the live start's check can find damage in.
        self._wal_at_open = False
        # Set by `interrupt_check` (a stop): the check ends at once (`_quick_check`).
        self._check_stopping = threading.Event()
        # The check's statement running (under `_check_lock`): only it is interrupted, never a
        # replay's batch being written when a backtest is stopped.
        self._checking = False
        self._check_lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    async def start(self) -> None:
        if self._writer is not None:
            return
        writer = WriterThread("tradingd-sqlite-writer", max_jobs=self.max_in_flight + 8)
        try:
            mode = await asyncio.wrap_future(writer.submit(self._open))
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        log.info("storage.sqlite.started", path=self.path, journal_mode=mode)

    def _open(self) -> str:
        """On the writer thread: connect, create or upgrade the schema; the journal mode."""
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # Before connecting (which makes one). The store's connection closed last
                # removes the -wal (no persistent WAL, no journal_size_limit): a clean stop
                # leaves none.
                self._wal_at_open = Path(f"{self.path}-wal").exists()
            db = connect(self.path)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(
                f"cannot open SQLite database {self.path}: {explain(e, self.path)}"
            ) from e
        try:
            row = db.execute("PRAGMA journal_mode").fetchone()
            mode = row[0] if row else "?"
            db.execute("BEGIN")
            for table in TABLES.values():
                create, *indexes = create_table_sql(table, "sqlite")
                db.execute(create)
                # A database made by an earlier build: add the columns declared since (before
                # the indexes, which may name them).
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table.name})")}
                if (newer := newer_columns_error(table, have)) is not None:
                    raise newer
                for column in table.insert_columns:
                    if column not in have:
                        db.execute(add_column_sql(table, column, "sqlite"))
                        log.info("storage.column_added", table=table.name, column=column)
                for stmt in indexes:
                    db.execute(stmt)
            db.execute("COMMIT")
        except (sqlite3.Error, StorageError) as e:
            if db.in_transaction:
                db.rollback()
            db.close()
            # A StorageError's kind kept: another build's database stays the operator's to end
            # (EX_CONFIG).
            kind = type(e) if isinstance(e, StorageError) else StorageError
            raise kind(
                f"cannot create schema in SQLite database {self.path}: {explain(e, self.path)}"
            ) from e
        self._db = db
        return mode

    async def _close(self) -> None:
        try:
            self._stop_child()
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                try:
                    await asyncio.wrap_future(writer.submit(self._close_db))
                finally:
                    writer.close()

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _where(self) -> str:
        return f"SQLite database {self.path}"

    def _thread(self) -> WriterThread:
        if self._writer is None:
            raise StorageError(f"SQLite store {self.path} is not started (call start())")
        return self._writer

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread, after everything handed to it (and to the writer
        process) before."""
        thread = self._thread()
        child = self._child
        if child is not None and self._child_ready:  # (else it was sent nothing)
            child.sync()
        # Shielded: a cancelled caller must not cancel a job the thread may be running.
        return await asyncio.shield(asyncio.wrap_future(thread.submit(fn)))

    def _encode_time(self, t: datetime) -> str:
        return iso_utc(t)

    def _decode_time(self, v: Any) -> datetime:
        return datetime.fromisoformat(v).astimezone(UTC)

    # ------------------------------------------------------------------ on the writer thread

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"SQLite store {self.path} is closed")
        return self._db

    def _write_rows(self, batches: Mapping[str, list[Row]]) -> None:
        write_rows(self._conn(), batches, self._statements, self.path)

    def _write_chunks(self, taken: dict[str, list[Any]]) -> None:
        """One batch of recorded chunks: rows made and written in one transaction."""
        if self._batch_failed:
            raise _Skipped()
        try:
            self._write_rows(self._rows(taken))
        except BaseException:
            self._batch_failed = True
            raise

    def _select(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        db = self._conn()
        try:
            return list(db.execute(sql, args).fetchall())
        except sqlite3.Error as e:
            raise StorageError(
                f"query on SQLite database {self.path} failed: {explain(e, self.path)}"
            ) from e

    # ------------------------------------------------------------------ dialect primitives

    async def _write_batches(self, batches: Mapping[str, list[Row]]) -> None:
        await self._call(lambda: self._write_rows(batches))

    async def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        await self._call(lambda: transaction(self._conn(), statements, self.path))

    async def _query(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        return await self._call(lambda: self._select(sql, args))

    # ------------------------------------------------------------------ write-behind

    def _hand_over(self, taken: dict[str, list[Any]]) -> None:
        fut = self._thread().submit(lambda: self._write_chunks(taken))
        self._in_flight.append((fut, taken))

    async def _wait_oldest(self) -> None:
        # Two coroutines may wait for the same batch (a live engine's bar and an operator's
        # control flushing while the warm-up runs, or fills booked between bars): the first
        # to wake takes it off; the other found the queue empty (IndexError) or took the
        # next batch off unwritten.
        entry = self._in_flight[0]
        try:
            await asyncio.shield(asyncio.wrap_future(entry[0]))
        except Exception:
            if self._in_flight and self._in_flight[0] is entry:
                await self._take_back()
            raise
        if self._in_flight and self._in_flight[0] is entry:
            self._in_flight.popleft()

    async def _take_back(self) -> None:
        """The oldest batch in flight failed: wait for the ones after it (the thread skips
        them), put every one back in order and let the thread write again."""
        batches = list(self._in_flight)
        self._in_flight.clear()
        for fut, _ in batches[1:]:
            try:
                await asyncio.shield(asyncio.wrap_future(fut))
            except _Skipped:
                pass
            except Exception as exc:  # not expected: the thread skips after a failure
                log.error("storage.sqlite.batch_failed", path=self.path, error=str(exc))
        for _, taken in reversed(batches):
            self._put_back(taken)
        self._batch_failed = False

    async def _reap(self) -> None:
        if self._child is not None:
            self._child.reap()
        while self._in_flight and self._in_flight[0][0].done():
            await self._wait_oldest()

    async def _write_behind(self) -> None:
        child = self._ready_child()
        if child is not None:
            taken = self._take()
            if taken:
                child.send("tradingd.storage.sqlite_file:child_rows", pack(taken))
            return
        # Room first, then take: a failed batch puts its rows back in front of the buffers.
        while len(self._in_flight) >= self.max_in_flight:
            await self._wait_oldest()
        taken = self._take()
        if taken:
            self._hand_over(taken)
            if self.path == MEMORY or self._child is not None:
                # Nothing to overlap (in memory), or a replay whose writer process is still
                # starting: the engine waits, as if it wrote the batch itself.
                await self._wait_thread()

    def _hold(self) -> bool:
        """A replay's writer process still starting (its interpreter and imports, 0.2-0.3 s
        of a core, begun when the engine was built): a batch the interval made due stays in
        the buffers until the process has answered, and goes to it then. Written on the
        thread instead, the engine waited for it as if it wrote it itself: 50-60 ms of a
        100-symbol replay of 0.75 s whenever the set-up was quicker than the process's
        start-up (benchmarks/replay.py). A full buffer is still written on the thread, so
        what waits stays within `batch_size` rows a table."""
        return self._child is not None and self._ready_child() is None and not self._full()

    def _ready_child(self) -> ChildWriter | None:
        """The writer process, once it has answered its first job (past its start-up; its
        connection, `child_open`, is a job sent before any batch, and jobs run in order):
        until then, rows are written by the thread, so a replay never waits for the process
        to start."""
        child = self._child
        if child is not None and not self._child_ready:
            child.reap()
            self._child_ready = child.started
        return child if self._child_ready else None

    def writer_process(self) -> ChildWriter | None:
        """The replay's writer process, for the audit log to share (`ChildWriter.share`);
        None when this store has none (in memory, live, or `process` off)."""
        return self._child

    async def _wait_behind(self) -> None:
        await self._wait_thread()
        if self._child is not None and self._child_ready:  # (else it was sent nothing)
            self._child.sync()

    async def _wait_thread(self) -> None:
        while self._in_flight:
            await self._wait_oldest()

    # ------------------------------------------------------------------ runs

    def prestart(self) -> None:
        """Start a replay's writer process before the run begins (`build_engine` calls this
        before it computes the features). Its interpreter and imports, numpy's among them,
        take 0.2-0.3 s of a core: started at `begin_run`, they ran while the first bars
        went by, and until the process answered the engine wrote those bars' batches itself
        and waited for them. `begin_run` connects it; a store that never begins a run closes
        it with `close_unstarted` (or when stopped)."""
        if self.process and self.path != MEMORY and self._child is None:
            self._start_child("tradingd.storage.sqlite_file:child_import", None)
            self._prestarted = True

    def close_unstarted(self) -> None:
        """A prestarted writer process of a store that was never started: ended."""
        if self._writer is None and self._prestarted:
            self._prestarted = False
            self._stop_child()

    async def begin_run(self, run: RunInfo) -> None:
        await super().begin_run(run)
        prestarted, self._prestarted = self._prestarted, False
        child = self._child
        if prestarted and run.mode == "live":
            self._stop_child()  # a live run writes on the thread
        elif prestarted and child is not None:
            child.send("tradingd.storage.sqlite_file:child_open", self.path)
            self._child_ready = False
        elif self.process and run.mode != "live" and self.path != MEMORY and child is None:
            # Started now, it imports and connects while the engine warms up.
            self._start_child("tradingd.storage.sqlite_file:child_open", self.path)

    def _start_child(self, job: str, payload: Any) -> None:
        """The replay's writer process, with its first job (it is ready once that is
        answered: `_ready_child`)."""
        self._child = ChildWriter(f"SQLite {self.path}", self.max_in_flight)
        self._child.send(job, payload)
        self._child_ready = False

    async def resume_run(self, run: RunInfo) -> ResumePoint | None:
        await self.flush()
        self._stop_child()  # a live run writes on the thread (see the module docstring)
        await self._check_file(run)
        return await super().resume_run(run)

    async def _check_file(self, run: RunInfo) -> None:
        """SQLite's `quick_check` before a live run is resumed, when a `-wal` file was beside
        the database at open: a backup copied over the database beside a killed daemon's
        `-wal` is merged with it by SQLite (damaged pages), and a live run resumed from it
        wrote on without a word. Not at every start: it reads every page (3.6 GB took 55 s
        cold here), and after a clean stop (no `-wal`) there is nothing it could find that
        this start made. A stop during the check interrupts it (`interrupt_check`)."""
        if self.path == MEMORY:
            return
        if not self._wal_at_open:
            log.info(
                "storage.sqlite.check_skipped",
                path=self.path,
                reason="no -wal file beside the database at open (a clean stop)",
            )
            return
        log.info(
            "storage.sqlite.checking",
            path=self.path,
            reason=f"{self.path}-wal was beside the database at open (a killed daemon's, "
            "a restore's, or another program had it open)",
        )
        began = time.monotonic()
        problems = await self._call(self._quick_check)
        seconds = round(time.monotonic() - began, 2)
        if problems is _STOPPED:
            log.info("storage.sqlite.check_interrupted", path=self.path, seconds=seconds)
            raise StoreCheckStopped(
                f"the check of SQLite store {self.path} was interrupted by a stop; "
                f"run {run.run_id!r} was not resumed (the next start checks again)"
            )
        log.info("storage.sqlite.checked", path=self.path, ok=problems is None, seconds=seconds)
        if problems is not None:
            raise StoreDamaged(
                f"SQLite store {self.path} is damaged (PRAGMA quick_check: {problems}); "
                f"run {run.run_id!r} is not resumed from it. A backup copied over the "
                f"database while a killed daemon's {self.path}-wal was left beside it is "
                f"merged with that file: stop, remove {self.path}, {self.path}-wal and "
                f"{self.path}-shm, copy the backup in again and start (or "
                f"`sqlite3 {self.path} .recover` when no backup is good)"
            )
        self._wal_at_open = False  # checked: a second resume of this start does not again

    def interrupt_check(self) -> None:
        """A stop (SIGTERM, from the event loop's thread): end a running `quick_check` now
        rather than wait for it (minutes on a large store, past the unit's stop timeout).
        The flag is read by the check's progress handler too, so a check that had not begun
        its statement yet when `interrupt()` was called ends as well."""
        self._check_stopping.set()
        with self._check_lock:
            db = self._db
            if self._checking and db is not None:
                db.interrupt()  # thread-safe in SQLite

    def _quick_check(self) -> str | None:
        """On the writer thread: SQLite's `quick_check` of the file (every page read once),
        None when it says ok, `_STOPPED` when a stop interrupted it, else its first
        findings. Only SQLITE_CORRUPT and SQLITE_NOTADB are findings: a lock held by
        another program or a disk error is a StorageError with its own advice (it was
        reported as damage with the advice to remove the database files)."""
        db = self._conn()
        if self._check_stopping.is_set():
            return _STOPPED
        db.set_progress_handler(lambda: int(self._check_stopping.is_set()), 1000)
        try:
            with self._check_lock:
                self._checking = True
            try:
                rows = db.execute(self.check_sql).fetchall()
            finally:
                with self._check_lock:
                    self._checking = False
        except sqlite3.DatabaseError as e:
            name = getattr(e, "sqlite_errorname", None) or ""
            if self._check_stopping.is_set() and name == "SQLITE_INTERRUPT":
                return _STOPPED
            if name.startswith(_DAMAGED):
                return f"{name}: {e}"
            advice = explain(e, self.path)
            if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                advice += (
                    f": another program holds a lock on {self.path} (a sqlite3 shell, a "
                    "backup in progress): end it and start again"
                )
            raise StorageError(
                f"cannot check SQLite database {self.path} before the live run is resumed "
                f"({name or type(e).__name__}): {advice}"
            ) from e
        finally:
            db.set_progress_handler(None, 0)
        found = [str(r[0]) for r in rows]
        return None if found == ["ok"] else " | ".join(" ".join(f.split()) for f in found)

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        ready, self._child_ready = self._child_ready, False
        if child is not None:
            child.close(sync=ready)  # one that never took a batch is not waited for

    async def _flush_now(self) -> None:
        self._last_flush = time.monotonic()
        await self._write_behind()
        await self._wait_behind()
