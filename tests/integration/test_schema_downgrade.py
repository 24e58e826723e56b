"""A database a newer build upgraded is refused by an older build that would lose what it
does not know: a build before `order_events.booked_at` opened the upgraded database without a
word and, at its first restart, deleted the newer build's rows carrying it. Builds from this
one on refuse a table with columns they do not declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest
from pg_schemas import schema_url

from tradingd.__main__ import EX_CONFIG, exit_code
from tradingd.core.errors import StorageError
from tradingd.storage.postgres import PostgresStore
from tradingd.storage.sqlite import SqliteStore

SAID = r"table order_events has column\(s\) from_a_newer_build that this build .* does not know"


async def test_sqlite_refuses_a_database_a_newer_build_added_columns_to(tmp_path):
    path = tmp_path / "store.db"
    store = SqliteStore(str(path))
    await store.start()
    await store.stop()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE order_events ADD COLUMN from_a_newer_build TEXT")
    con.commit()
    con.close()
    again = SqliteStore(str(path))
    with pytest.raises(StorageError, match=SAID) as raised:
        await again.start()
    await again.stop()
    # Only the operator can end it: systemd must not restart it every 10 s (exit 2 did).
    assert exit_code(raised.value, "run") == EX_CONFIG


async def test_postgres_refuses_a_database_a_newer_build_added_columns_to(pg_url):
    async with schema_url(pg_url) as url:
        store = PostgresStore(url, spool=False)
        await asyncio.wait_for(store.start(), 10)
        await store.stop()
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute("ALTER TABLE order_events ADD COLUMN from_a_newer_build TEXT")
        finally:
            await conn.close()
        again = PostgresStore(url, spool=False)
        with pytest.raises(StorageError, match=SAID) as raised:
            await asyncio.wait_for(again.start(), 10)
        assert "downgrade is not supported" in str(raised.value)
        assert exit_code(raised.value, "run") == EX_CONFIG
        await again.stop()
