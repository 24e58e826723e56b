"""PostgreSQL in throwaway schemas for the tests that run on SQLite and PostgreSQL: one place
for making a schema, pointing a store at it and dropping it after (it was written out in each
such test file)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from tradingd.storage.buffered import BufferedStore
from tradingd.storage.postgres import PostgresStore, default_spool_dir
from tradingd.storage.sqlite import SqliteStore


def schema_name() -> str:
    return f"tradingd_test_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def schema_url(pg_url: str) -> AsyncIterator[str]:
    """The URL of a new schema (`?search_path=`), dropped with what is in it afterwards."""
    name = schema_name()
    sep = "&" if "?" in pg_url else "?"
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield f"{pg_url}{sep}search_path={name}"
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()
        # A store opened on it by its configuration (no spool_dir) made its default spool
        # folder, `var/spool/<target>`, in the working directory (the checkout): one per
        # test run was left there. Removed when empty (a spooled batch stays, to be seen).
        with contextlib.suppress(OSError):
            default_spool_dir(f"{pg_url}{sep}search_path={name}", None).rmdir()


@contextlib.asynccontextmanager
async def started_store(
    kind: str, tmp_path: Path, pg_url: str | None
) -> AsyncIterator[BufferedStore]:
    """A started store: SQLite in `tmp_path`, or PostgreSQL in a schema of its own (the
    store's `schema` option), dropped after it stops."""
    if kind == "sqlite":
        s: BufferedStore = SqliteStore(tmp_path / "tradingd.db", batch_size=1000)
        await s.start()
        try:
            yield s
        finally:
            await s.stop()
        return
    assert pg_url is not None
    schema = schema_name()
    # Its spool folder in tmp_path, not `var/spool/` of the working directory (the checkout).
    s = PostgresStore(pg_url, batch_size=1000, schema=schema, spool_dir=str(tmp_path / "spool"))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()
        conn = await asyncpg.connect(pg_url, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
