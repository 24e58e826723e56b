"""The embedded default store: one SQLite file through one aiosqlite connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite
import structlog

from .. import faults
from ..core.errors import StorageError
from .buffered import BufferedStore, Row
from .schema import TABLES, Dialect, add_column_sql, create_table_sql, insert_sql

log = structlog.get_logger(__name__)

MEMORY = ":memory:"


class SqliteStore(BufferedStore):
    """Times are stored as fixed-width ISO-8601 UTC text ("2020-01-02T21:00:00.000000+00:00"),
    so text order is time order. WAL journal mode lets readers see committed batches while
    the engine writes."""

    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 5000,
        signals: str = "decisions",
        flush_interval_s: float = 1.0,
    ) -> None:
        super().__init__(batch_size=batch_size, signals=signals, flush_interval_s=flush_interval_s)
        self.path = str(path) if str(path) == MEMORY else str(Path(path).expanduser())
        self._db: aiosqlite.Connection | None = None
        self._iso: dict[datetime, str] = {}
        self._insert = {name: insert_sql(t, "sqlite") for name, t in TABLES.items()}

    async def start(self) -> None:
        if self._db is not None:
            return
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open SQLite database {self.path}: {e}") from e
        try:
            mode = "memory"
            if self.path != MEMORY:
                async with db.execute("PRAGMA journal_mode=WAL") as cur:
                    row = await cur.fetchone()
                    mode = row[0] if row else "?"
                await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("BEGIN")
            for table in TABLES.values():
                for stmt in create_table_sql(table, "sqlite"):
                    await db.execute(stmt)
                # A database made by an earlier build: add the columns declared since.
                async with db.execute(f"PRAGMA table_info({table.name})") as cur:
                    have = {row[1] for row in await cur.fetchall()}
                for column in table.insert_columns:
                    if column not in have:
                        await db.execute(add_column_sql(table, column, "sqlite"))
                        log.info("storage.column_added", table=table.name, column=column)
            await db.execute("COMMIT")
        except sqlite3.Error as e:
            await db.close()
            raise StorageError(f"cannot create schema in SQLite database {self.path}: {e}") from e
        self._db = db
        log.info("storage.sqlite.started", path=self.path, journal_mode=mode)

    async def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _where(self) -> str:
        return f"SQLite database {self.path}"

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"SQLite store {self.path} is not started (call start())")
        return self._db

    def _encode_time(self, t: datetime) -> str:
        # Every row of a bar carries the same time: formatting it once per bar instead of
        # once per row matters in a multi-million-row replay. The memo is bounded.
        s = self._iso.get(t)
        if s is None:
            u = t
            if u.tzinfo is not UTC:
                u = u.replace(tzinfo=UTC) if u.tzinfo is None else u.astimezone(UTC)
            s = u.isoformat(timespec="microseconds")
            if len(self._iso) >= 4096:
                self._iso.clear()
            self._iso[t] = s
        return s

    def _decode_time(self, v: Any) -> datetime:
        return datetime.fromisoformat(v).astimezone(UTC)

    async def _transaction(self, work: Sequence[tuple[str, Any, bool]]) -> None:
        """(sql, args, many) items in one transaction."""
        db = self._conn()
        try:
            await db.execute("BEGIN")
            try:
                for sql, args, many in work:
                    if many:
                        await db.executemany(sql, args)
                    else:
                        await db.execute(sql, args)
                faults.reached("flush")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
        except (sqlite3.Error, ValueError) as e:
            raise StorageError(f"write to SQLite database {self.path} failed: {e}") from e

    async def _write_batches(self, batches: Mapping[str, list[Row]]) -> None:
        await self._transaction(
            [(self._insert[name], rows, True) for name, rows in batches.items()]
        )

    async def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        await self._transaction([(sql, args, False) for sql, args in statements])

    async def _query(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        db = self._conn()
        try:
            async with db.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as e:
            raise StorageError(f"query on SQLite database {self.path} failed: {e}") from e
