"""The store's SQLite file as a connection sees it: how it is opened, how rows are written, how
times are stored, and the writer process's jobs (storage/child.py), which run here.

A module of its own, light on imports (no structlog, asyncio or the store's class): a
replay's writer process imports only this, the row makers and the audit log's jobs (no
numpy: rows.Packed), so it takes less of the machine's CPU from the engine while it starts
(`SqliteStore` and the audit log share it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

from .. import faults
from ..core.errors import StorageError
from .rows import Row, to_rows
from .schema import TABLES, insert_sql

MEMORY = ":memory:"
# Rows per INSERT statement at most (a power of two): 512 rows of the widest table (orders,
# 18 columns) bind 9,216 values, below SQLite's default limit of 32,766.
MULTI_ROWS = 512


_ISO: dict[datetime, str] = {}


def iso_utc(t: datetime) -> str:
    """A time as stored: fixed-width ISO-8601 UTC text (naive means UTC). Every row of a bar
    carries the same time: each is formatted once (the memo is bounded). Not a time in
    another zone: equal ones there can be different instants (a DST change's repeated hour
    differs only in `fold`, which equality ignores)."""
    tz = t.tzinfo
    if tz is not None and tz is not UTC:
        return t.astimezone(UTC).isoformat(timespec="microseconds")
    s = _ISO.get(t)
    if s is None:
        u = t if tz is UTC else t.replace(tzinfo=UTC)
        s = u.isoformat(timespec="microseconds")
        if len(_ISO) >= 4096:
            _ISO.clear()
        _ISO[t] = s
    return s


def explain(e: BaseException, path: str) -> str:
    """SQLite's error text, with what the operator must do when it is the file's disk or
    its permissions (its words alone, "database or disk is full", named no file and said
    nothing to do). The file is `path`; its folder holds the -wal, -shm and -journal files
    SQLite makes beside it."""
    text = str(e)
    code = getattr(e, "sqlite_errorcode", None)
    if path == MEMORY or not isinstance(code, int):
        return text
    folder = Path(path).expanduser().absolute().parent
    advice = {
        sqlite3.SQLITE_FULL: f"free space on the disk of {folder} (the database and its -wal "
        "file grow there)",
        sqlite3.SQLITE_IOERR: f"the disk of {folder} failed a read or a write: check it (dmesg, "
        "its free space) before running again",
        sqlite3.SQLITE_READONLY: f"{path} or its folder {folder} is read-only to this user: "
        "remount the filesystem read-write, or let this user write the file and the folder "
        "(SQLite makes its -wal and -shm files there)",
        sqlite3.SQLITE_CANTOPEN: f"check that {folder} exists and this user can write to it",
    }.get(code & 0xFF)  # (the primary code of an extended one: SQLITE_IOERR_WRITE, ...)
    return text if advice is None else f"{text}: {advice}"


def transaction(
    db: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[Any]]], where: str
) -> None:
    """Statements in one transaction."""
    try:
        db.execute("BEGIN")
        try:
            for sql, args in statements:
                db.execute(sql, args)
            faults.reached("flush")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except (sqlite3.Error, ValueError) as e:
        raise StorageError(f"write to SQLite database {where} failed: {explain(e, where)}") from e


def write_rows(
    db: sqlite3.Connection,
    batches: Mapping[str, Sequence[Row]],
    statements: dict[tuple[str, int], str],
    where: str,
) -> None:
    """Rows of several tables in one transaction, as INSERT statements of up to MULTI_ROWS
    rows each (one VALUES list), not one statement per row: SQLite inserts hundreds of rows
    per call, at a third less CPU than executemany. The sizes are powers of two, so that a
    few cached statements (`statements`) serve every batch."""
    work: list[tuple[str, list[Any]]] = []
    for name, rows in batches.items():
        k, n = 0, len(rows)
        while k < n:
            size = MULTI_ROWS
            while size > n - k:
                size //= 2
            sql = statements.get((name, size))
            if sql is None:
                sql = statements[(name, size)] = insert_sql(TABLES[name], "sqlite", size)
            work.append((sql, list(chain.from_iterable(rows[k : k + size]))))
            k += size
    transaction(db, work, where)


def connect(path: str, create: bool = True) -> sqlite3.Connection:
    """A connection as the store uses it: autocommit (explicit transactions), WAL on a file,
    waiting up to a minute for a lock another connection holds. `create=False`: open an
    existing file only."""
    target, uri = path, False
    if not create and path != MEMORY:
        target, uri = Path(path).absolute().as_uri() + "?mode=rw", True
    db = sqlite3.connect(
        target, isolation_level=None, check_same_thread=False, timeout=60.0, uri=uri
    )
    if path != MEMORY:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    return db


# Jobs of the writer process (storage/child.py), run there.


def child_import(state: dict[str, Any], payload: None) -> None:
    """Nothing: a prestarted writer process's first job, so that it imports this module
    while the engine is being built (SqliteStore.prestart)."""


def child_open(state: dict[str, Any], path: str) -> None:
    # The store's thread made the file. A process closed before it answered is not waited
    # for: opening without creating, it cannot make a file its owner has since removed.
    try:
        db = connect(path, create=False)
    except sqlite3.Error as e:
        raise StorageError(f"cannot open SQLite database {path}: {explain(e, path)}") from e
    state["sqlite"] = (db, path, {})
    state.setdefault("_closers", []).append(db.close)


def child_rows(state: dict[str, Any], taken: Mapping[str, Any]) -> None:
    db, path, statements = state["sqlite"]
    write_rows(db, to_rows(taken, iso_utc), statements, path)
