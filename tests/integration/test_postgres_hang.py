"""A PostgreSQL that accepts statements and never answers them (hung, or a table lock held by
another session) must not freeze the daemon for long, must show in /ready, and must not keep
a SIGTERM from ending the daemon within systemd's TimeoutStopSec (60 s).

A lock on the store's `equity` table, held by another session in an open transaction, stands
in for the hung server (the storage trial hung it with SIGSTOP: the same wait, seen from the
client). Each test has its own schema on the shared server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tradingd.config import StorageConfig
from tradingd.core.errors import ConfigError
from tradingd.storage.factory import open_store
from tradingd.storage.postgres import PostgresStore

T0 = datetime(2024, 3, 1, 21, 0, tzinfo=UTC)


@pytest.fixture
def schema() -> str:
    return f"hang_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cleanup(pg_url: str, schema: str) -> AsyncIterator[None]:
    yield
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def lock_equity(pg_url: str, schema: str) -> asyncpg.Connection:
    """Another session holds `equity` locked (ACCESS EXCLUSIVE) until it is closed."""
    conn = await asyncpg.connect(pg_url, timeout=10)
    await conn.execute("BEGIN")
    await conn.execute(f'LOCK TABLE "{schema}".equity IN ACCESS EXCLUSIVE MODE')
    return conn


def store_of(pg_url: str, schema: str, tmp_path: Path, **kw: object) -> PostgresStore:
    store = PostgresStore(
        pg_url,
        schema=schema,
        spool_dir=tmp_path / "spool",
        flush_interval_s=0.0,
        retry_base_s=0.05,
        retry_max_s=0.2,
        **kw,  # type: ignore[arg-type]
    )
    return store


def test_the_command_timeout_is_a_storage_setting_with_a_bound_below_a_minute() -> None:
    """It was 60 s, hard-coded: a hung server froze the engine that long at every write."""
    assert 0 < StorageConfig().command_timeout_s <= 30
    with pytest.raises(ConfigError, match=r"storage\.command_timeout_s"):
        StorageConfig(command_timeout_s=0)
    store = open_store("postgresql://u:p@127.0.0.1:1/db", command_timeout_s=2.5)
    assert isinstance(store, PostgresStore) and store.command_timeout == 2.5


async def test_a_write_the_database_does_not_answer_says_after_how_long_it_timed_out(
    pg_url: str, schema: str, tmp_path: Path, cleanup: None
) -> None:
    """The trial's /ready and log said `TimeoutError: ` and nothing more."""
    store = store_of(pg_url, schema, tmp_path, command_timeout=0.5)
    await store.start()
    locker = await lock_equity(pg_url, schema)
    try:
        store.record_equity("r", T0, 1.0, 1.0, 0.0, 0.0)
        t = time.monotonic()
        await store.flush()  # spooled once the statement times out
        assert 0.4 < time.monotonic() - t < 5
        st = store.status()
        assert st["state"] == "degraded" and st["spooled_batches"] == 1
        assert "timed out after 0.5 s (storage.command_timeout_s)" in st["last_error"]
        assert "timed out after 0.5 s" in st["detail"]
    finally:
        await locker.close()
        await store.stop()


async def wait_for_state(store: PostgresStore, state: str, within_s: float = 10.0) -> dict:
    async with asyncio.timeout(within_s):
        while (st := store.status())["state"] != state:
            await asyncio.sleep(0.02)
    return st


async def test_ready_says_a_write_is_stalled_and_on_what_while_the_database_does_not_answer(
    pg_url: str, schema: str, tmp_path: Path, cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial: the engine stood still behind a write in flight for a minute while /ready's
    database check said ok, "writing"."""
    from tradingd.storage import buffered

    monkeypatch.setattr(buffered, "STALLED_AFTER_S", 0.2, raising=False)
    store = store_of(pg_url, schema, tmp_path, command_timeout=30.0)
    await store.start()
    locker = await lock_equity(pg_url, schema)
    try:
        store.record_equity("r", T0, 1.0, 1.0, 0.0, 0.0)
        flushing = asyncio.create_task(store.flush())
        st = await wait_for_state(store, "stalled")
        assert st["ok"] is False and st["waiting_s"] >= 0.2
        assert "equity 1 row" in st["waiting_for"]
        assert "has waited" in st["detail"] and "equity 1 row" in st["detail"]
        assert "30 s, storage.command_timeout_s" in st["detail"] and "pg_locks" in st["detail"]
        await locker.close()  # the lock goes: the write goes through
        await asyncio.wait_for(flushing, 10)
        st = store.status()
        assert st["ok"] is True and st["state"] == "ok" and st["waiting_for"] is None
    finally:
        await locker.close()
        await store.stop()


async def test_a_stop_with_a_write_hung_ends_within_its_budget_and_spools_the_write(
    pg_url: str, schema: str, tmp_path: Path, cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial's SIGTERM with PostgreSQL hung took about 120 s (systemd kills at 60): the
    stop waited out every statement's timeout in turn. It now gives the database
    STOP_BUDGET_S in all; what is not written by then is in the spool, said in a log line,
    and the next start writes it, once."""
    from structlog.testing import capture_logs

    from tradingd.storage import buffered

    monkeypatch.setattr(buffered, "STOP_BUDGET_S", 1.0, raising=False)
    store = store_of(pg_url, schema, tmp_path, command_timeout=20.0)
    await store.start()
    locker = await lock_equity(pg_url, schema)
    try:
        store.record_equity("r", T0, 1.0, 2.0, 0.0, 0.0)
        await store.write_behind()  # the write in flight, hung on the lock
        t = time.monotonic()
        with capture_logs() as logs:
            await store.stop()
        took = time.monotonic() - t
        assert took < 5, took
        left = [e for e in logs if e["event"] == "storage.stop.left_in_spool"]
        assert left and left[0]["batches"] == 1 and "next start" in left[0]["hint"]
        assert "within the stop's 1 s" in str(left[0]["error"])
    finally:
        await locker.close()
    again = store_of(pg_url, schema, tmp_path)
    await again.start()  # writes the spool it left
    try:
        rows = await again.fetch("equity", "r")
        assert [(r["cash"], r["equity"]) for r in rows] == [(1.0, 2.0)]
    finally:
        await again.stop()


async def test_giving_up_a_lock_on_a_hung_database_is_bounded_and_names_the_error(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's release waited 10 s per statement and 10 s for the close with the database
    hung, and logged `instance_lock.release_failed` with `error: ""`."""
    from structlog.testing import capture_logs

    from tradingd import instance_lock
    from tradingd.instance_lock import acquire_instance_lock

    monkeypatch.setattr(instance_lock, "RELEASE_WAIT_S", 0.5, raising=False)
    lock = await acquire_instance_lock(pg_url, f"hang-{uuid.uuid4().hex}", schema=schema)
    locker = await asyncpg.connect(pg_url, timeout=10)
    try:
        await locker.execute("BEGIN")
        await locker.execute(f'LOCK TABLE "{schema}".tradingd_instance IN ACCESS EXCLUSIVE MODE')
        t = time.monotonic()
        with capture_logs() as logs:
            await lock.release()
        assert time.monotonic() - t < 3
        [failed] = [e for e in logs if e["event"] == "instance_lock.release_failed"]
        assert failed["error"] == "TimeoutError: no answer within 0.5 s"
        assert any(e["event"] == "instance_lock.released" for e in logs)
        await locker.execute("ROLLBACK")
        await locker.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await locker.close()


class FreezableProxy:
    """A TCP proxy to PostgreSQL that stops passing anything on while frozen: a hung server
    as the client sees it (the storage trial SIGSTOPped the server), which, unlike a lock,
    answers no cancel request, no ROLLBACK and no reset either."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.url = url
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        parts = urlsplit(self.url)
        user = f"{parts.username}@" if parts.username else ""
        return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.thawed.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[FreezableProxy]:
    p = FreezableProxy(pg_url)
    yield p
    await p.close()


async def test_a_hung_server_s_write_gives_up_after_one_command_timeout_not_two(
    proxy: FreezableProxy, schema: str, tmp_path: Path, cleanup: None
) -> None:
    """The trial's hung write waited 30 s with a 15 s timeout: after the statement's timeout
    (or the BEGIN's) the pool's reset of the connection it took back waited as long again.
    The connection is ended instead (the server drops its transaction)."""
    url = await proxy.start()
    store = store_of(url, schema, tmp_path, command_timeout=1.0)
    await store.start()
    try:
        proxy.thawed.clear()
        store.record_equity("r", T0, 1.0, 1.0, 0.0, 0.0)
        t = time.monotonic()
        await store.flush()
        took = time.monotonic() - t
        assert 0.9 < took < 1.7, took
        st = store.status()
        assert st["spooled_batches"] == 1 and "timed out after 1 s" in st["last_error"]
    finally:
        proxy.thawed.set()
        await store.stop()


async def test_flushes_do_not_wait_for_a_spool_replay_hung_on_the_server(
    proxy: FreezableProxy, schema: str, tmp_path: Path, cleanup: None
) -> None:
    """The storage trial (PostgreSQL SIGSTOPped): each replay attempt held the flush lock
    for a whole command timeout, so the engine's flushes waited with it and a live run went
    in bursts (bars 51, 51, 73, 73, 95). A flush now goes to the spool behind the batch the
    replay waits on and returns; once the server answers, every row is in, in order."""
    url = await proxy.start()
    store = store_of(url, schema, tmp_path, command_timeout=2.0)
    await store.start()
    try:
        proxy.thawed.clear()
        store.record_equity("r", T0, 1.0, 0.0, 0.0, 0.0)
        await store.flush()  # times out after 2 s: spooled, and the replay starts

        def replaying() -> bool:
            return any("spooled batch" in what for _, what in store._waits.values())

        async with asyncio.timeout(10):
            while not replaying():
                await asyncio.sleep(0.01)
        for i in range(1, 5):
            store.record_equity("r", T0 + timedelta(days=i), 1.0, float(i), 0.0, 0.0)
            t = time.monotonic()
            await store.flush()
            assert time.monotonic() - t < 0.5, f"flush {i} waited for the replay"
        assert replaying() and store.status()["spooled_batches"] == 5
        proxy.thawed.set()
        await wait_for_state(store, "ok", within_s=30)
    finally:
        proxy.thawed.set()
        await store.stop()
    again = store_of(url, schema, tmp_path)
    await again.start()
    try:
        rows = await again.fetch("equity", "r")
        assert [r["equity"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    finally:
        await again.stop()


async def test_the_schema_migration_is_not_cut_at_the_statements_timeout(
    pg_url: str, schema: str, tmp_path: Path, cleanup: None
) -> None:
    """storage.command_timeout_s (15 s) bounded the schema's creation too: a CREATE INDEX
    or hypertable conversion of a large table, or the wait for another process's migration,
    failed at every start. Here another session holds the migration lock for longer than
    the statements' timeout: the start waits for it and succeeds."""
    from tradingd.storage.postgres import _DDL_LOCK_KEY

    holder = await asyncpg.connect(pg_url)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
    store = store_of(pg_url, schema, tmp_path, command_timeout=0.3)
    try:
        starting = asyncio.create_task(store.start())
        await asyncio.sleep(1.0)  # three timeouts' worth: the start is still waiting
        assert not starting.done()
        await tx.rollback()  # the other migration ends
        await asyncio.wait_for(starting, 10.0)
        assert store.status()["state"] in ("ok", "writing")
    finally:
        await holder.close()
        await store.stop()


def test_a_replay_s_statements_wait_longer_than_a_live_run_s(engine_config) -> None:
    """A backtest has no spool and no retry: deleting a large earlier record of its run id
    took longer than the live bound (15 s) and failed the run."""
    import dataclasses

    from tradingd.app import REPLAY_COMMAND_TIMEOUT_S, build_engine

    config = dataclasses.replace(
        engine_config,
        storage=dataclasses.replace(engine_config.storage, url="postgresql://u@127.0.0.1:1/db"),
    )
    engine = build_engine(config, "backtest")
    assert isinstance(engine.store, PostgresStore)
    assert engine.store.command_timeout == REPLAY_COMMAND_TIMEOUT_S
    assert config.storage.command_timeout_s < REPLAY_COMMAND_TIMEOUT_S
