"""The schema change at start (ALTER TABLE order_events ADD COLUMN booked_at) waited for its
table lock as long as another session's open transaction had read the table, with no log
line, while holding the database-wide DDL lock every other tradingd start waits for. The wait
is bounded and said, and its end is an error naming the table and what to do."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from pg_schemas import schema_url
from structlog.testing import capture_logs

from tradingd.storage.postgres import _DDL_LOCK_KEY, PostgresStore, SchemaLocked


def _store(url: str, lock_timeout_s: float) -> PostgresStore:
    store = PostgresStore(url, spool=False)
    store.ddl_lock_timeout_s = lock_timeout_s  # an attribute, so the test runs before the fix
    return store


async def _start_stop(url: str, lock_timeout_s: float = 10.0) -> None:
    store = _store(url, lock_timeout_s)
    await asyncio.wait_for(store.start(), 10)
    await store.stop()


async def test_a_schema_change_behind_a_long_transaction_fails_clearly_and_frees_the_lock(
    pg_url,
):
    async with schema_url(pg_url) as url, schema_url(pg_url) as other:
        await _start_stop(url)  # an earlier build's tables: no booked_at, no orders index
        old = await asyncpg.connect(url, timeout=5)
        try:
            await old.execute("ALTER TABLE order_events DROP COLUMN booked_at")
            await old.execute("DROP INDEX orders_run_id_created_at_idx")
            await old.execute("BEGIN")
            await old.fetch("SELECT * FROM order_events")  # left open, as a long report's

            store = _store(url, 0.2)
            with capture_logs() as logs, pytest.raises(SchemaLocked) as raised:
                await asyncio.wait_for(store.start(), 10)
            text = str(raised.value)
            assert "add column booked_at on table" in text and ".order_events" in text
            assert "another session holds" in text and "pg_stat_activity" in text
            assert "starting again later is safe" in text
            *_, migrating = [e for e in logs if e["event"] == "storage.migrating"]
            assert migrating["table"] == "order_events"  # said before the wait that failed
            assert migrating["change"] == "add column booked_at"
            assert migrating["lock_timeout_s"] == 0.2
            assert "storage.column_added" not in [e["event"] for e in logs]

            # The DDL lock covering the database was released with the rollback: another
            # schema's start does not wait for it.
            probe = await asyncpg.connect(pg_url, timeout=5)
            try:
                async with probe.transaction():
                    # Taken within a bound (another test's store may hold it for a moment:
                    # the suite runs in two processes on one database); held by the failed
                    # start, it would never come.
                    await asyncio.wait_for(
                        probe.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY), 5
                    )
            finally:
                await probe.close()
            await _start_stop(other)

            await old.execute("COMMIT")  # the transaction ends: the next start migrates
        finally:
            await old.close()
        with capture_logs() as logs:
            await _start_stop(url)
        said = [(e["event"], e.get("table")) for e in logs if e["event"].startswith("storage.")]
        assert ("storage.migrating", "order_events") in said
        assert ("storage.column_added", "order_events") in said
        (created,) = [e for e in logs if e["event"] == "storage.index_created"]
        assert created["table"] == "orders" and created["index"] == "orders_run_id_created_at_idx"


async def test_a_start_on_current_tables_waits_for_no_table_lock(pg_url):
    """A start on up-to-date tables runs no ALTER TABLE or CREATE INDEX: CREATE INDEX IF NOT
    EXISTS takes a share lock on the table even when the index exists, so every start waited
    for any open transaction that had written to it."""
    async with schema_url(pg_url) as url:
        await _start_stop(url)
        writer = await asyncpg.connect(url, timeout=5)
        try:
            await writer.execute("BEGIN")
            await writer.execute("LOCK TABLE orders, order_events IN ROW EXCLUSIVE MODE")
            with capture_logs() as logs:
                await _start_stop(url, lock_timeout_s=0.2)
            assert [e for e in logs if e["event"] == "storage.migrating"] == []
        finally:
            await writer.close()
