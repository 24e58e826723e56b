"""PostgreSQL store (asyncpg), with TimescaleDB hypertables when the extension exists."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import structlog

from .. import faults
from ..core.errors import ConfigError, StorageError
from ..secrets import mask_url
from .buffered import BufferedStore, Row
from .schema import TABLES, Dialect, Table, create_table_sql, insert_sql

log = structlog.get_logger(__name__)

# Upsert batches at least this large go through COPY into a staging table (much faster than
# executemany for bar history); smaller ones use executemany.
STAGE_THRESHOLD = 1000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Serialises concurrent schema creation by several processes.
_DDL_LOCK_KEY = 0x7472_6164_696E_6764 & 0x7FFF_FFFF_FFFF_FFFF

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


class PostgresStore(BufferedStore):
    dialect: ClassVar[Dialect] = "postgres"

    def __init__(
        self,
        url: str,
        batch_size: int = 5000,
        schema: str | None = None,
        signals: str = "decisions",
        command_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        flush_interval_s: float = 1.0,
    ) -> None:
        super().__init__(batch_size=batch_size, signals=signals, flush_interval_s=flush_interval_s)
        if schema is not None and not _IDENT.match(schema):
            raise ConfigError(
                f"storage schema {schema!r} is not a valid identifier "
                "(letters, digits and _, not starting with a digit)"
            )
        self.url = url
        self.schema = schema
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.timescaledb = False
        self._pool: asyncpg.Pool | None = None
        self._insert = {name: insert_sql(t, "postgres") for name, t in TABLES.items()}

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    async def start(self) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": f'"{self.schema}", public'} if self.schema else {}
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=4,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings=settings,
            )
        except _ERRORS as e:
            raise StorageError(
                f"cannot connect to PostgreSQL at {self.safe_url}: {type(e).__name__}: {e}"
            ) from e
        try:
            async with pool.acquire() as conn, conn.transaction():
                await self._create_schema(conn)
        except _ERRORS as e:
            await pool.close()
            raise StorageError(
                f"cannot create schema in PostgreSQL at {self.safe_url}: {type(e).__name__}: {e}"
            ) from e
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        log.info(
            "storage.postgres.started",
            url=self.safe_url,
            schema=self.schema or "public",
            timescaledb=self.timescaledb,
            tables="hypertables for bars and equity" if self.timescaledb else "plain tables",
        )

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
        if self.schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        available = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        self.timescaledb = False
        if available:
            try:
                async with conn.transaction():  # a savepoint: failure keeps plain tables
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                self.timescaledb = True
            except asyncpg.PostgresError as e:
                log.warning("storage.postgres.timescaledb_unusable", error=str(e))
        for table in TABLES.values():
            for stmt in create_table_sql(table, "postgres"):
                await conn.execute(stmt)
        if self.timescaledb:
            for table in TABLES.values():
                if table.hypertable_time:
                    await conn.execute(
                        "SELECT create_hypertable($1::text::regclass, $2::name, "
                        "if_not_exists => TRUE, migrate_data => TRUE)",
                        table.name,
                        table.hypertable_time,
                    )

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError(f"PostgreSQL store {self.safe_url} is not started (call start())")
        return self._pool

    def _encode_time(self, t: datetime) -> datetime:
        # asyncpg reads a naive datetime as local time; tradingd's naive times mean UTC.
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t

    def _decode_time(self, v: Any) -> datetime:
        return v if v.tzinfo is UTC else v.astimezone(UTC)

    async def _upsert(self, conn: asyncpg.Connection, table: Table, rows: list[Row]) -> None:
        cols = table.insert_columns
        if len(rows) < STAGE_THRESHOLD or "serial" in {c.kind for c in table.columns}:
            await conn.executemany(self._insert[table.name], rows)
            return
        # COPY into a staging table, then one INSERT ... SELECT ON CONFLICT. A statement may
        # not touch one key twice, so keep the last row per key (what executemany would do).
        pk = [cols.index(c) for c in table.primary_key]
        last = {tuple(r[i] for i in pk): r for r in rows}
        stage = f"_stage_{table.name}"
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
            f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(stage, records=list(last.values()), columns=cols)
        select = ", ".join(cols)
        # Reuse the ON CONFLICT clause of the plain insert.
        conflict = self._insert[table.name].split(" ON CONFLICT ", 1)[1]
        await conn.execute(
            f"INSERT INTO {table.name} ({select}) SELECT {select} FROM {stage} "
            f"ON CONFLICT {conflict}"
        )

    async def _write_batches(self, batches: Mapping[str, list[Row]]) -> None:
        pool = self._get_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                for name, rows in batches.items():
                    table = TABLES[name]
                    if table.on_conflict is None:
                        await conn.copy_records_to_table(
                            name, records=rows, columns=table.insert_columns
                        )
                    else:
                        await self._upsert(conn, table, rows)
                faults.reached("flush")
        except _ERRORS as e:
            raise StorageError(
                f"write to PostgreSQL at {self.safe_url} failed: {type(e).__name__}: {e}"
            ) from e

    async def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        pool = self._get_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                for sql, args in statements:
                    await conn.execute(sql, *args)
        except _ERRORS as e:
            raise StorageError(
                f"write to PostgreSQL at {self.safe_url} failed: {type(e).__name__}: {e}"
            ) from e

    async def _query(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        pool = self._get_pool()
        try:
            async with pool.acquire() as conn:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
        except _ERRORS as e:
            raise StorageError(
                f"query on PostgreSQL at {self.safe_url} failed: {type(e).__name__}: {e}"
            ) from e
