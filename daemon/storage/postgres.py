"""PostgreSQL store (asyncpg), with TimescaleDB hypertables when the extension exists.

A PostgreSQL outage does not end the daemon: while the server does not answer, batches go to
a durable local spool and are written when it is back (see storage/buffered.py and
storage/spool.py). `start()` waits up to `start_retry_s` for a server that is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog

from .. import faults
from ..core.errors import ConfigError, StorageError
from ..health import waiting_for
from ..secrets import mask_url
from .buffered import OPS, BufferedStore, DatabaseUnavailable, Row
from .factory import DEFAULT_COMMAND_TIMEOUT_S
from .schema import (
    TABLES,
    Dialect,
    Table,
    add_column_sql,
    applied_seq_sql,
    create_index_sql,
    create_table_sql,
    index_name,
    insert_sql,
    newer_columns_error,
)
from .spool import DEFAULT_MAX_BYTES, SpoolBatch, safe_name

log = structlog.get_logger(__name__)

# Upsert batches at least this large go through COPY into a staging table (much faster than
# executemany for bar history); smaller ones use executemany.
STAGE_THRESHOLD = 1000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Serialises concurrent schema creation by several processes.
_DDL_LOCK_KEY = 0x7472_6164_696E_6764 & 0x7FFF_FFFF_FFFF_FFFF
# How long one schema change at start waits for a table lock (PostgreSQL's lock_timeout):
# ALTER TABLE waits behind any open transaction that has read the table, and meanwhile holds
# the DDL lock above, which every other tradingd start on the database waits for.
DDL_LOCK_TIMEOUT_S = 10.0
# lock_not_available: lock_timeout expired.
_LOCK_NOT_AVAILABLE = "55P03"

_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # Not an InterfaceError: "cannot switch to state N; another operation (M) is in
    # progress" from a pooled connection whose server went away mid-exchange (CI, an
    # outage test); uncaught, it ended the daemon instead of spooling.
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)
# SQLSTATEs of a server that is going away or not there yet: admin_shutdown, crash_shutdown,
# cannot_connect_now (starting up or in recovery), too_many_connections. Class 08 (connection
# exceptions) is matched by prefix.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


class SchemaLocked(DatabaseUnavailable):
    """A schema change at start gave up waiting for a table lock that another session holds
    (a long transaction). Nothing was changed (the transaction rolled back), so a later start
    is safe: a DatabaseUnavailable, which a live start retries with backoff, logging each."""


def unavailable(e: BaseException) -> bool:
    """The server did not answer (retry later), as opposed to refusing a statement.

    The error raised may hide the one that happened: a server that stops during a COPY makes
    the transaction's ROLLBACK fail with "another operation is in progress" while the COPY's
    own "connection lost" is the exception's context. So the whole chain is looked at, and
    that InterfaceError (never API misuse here: a connection is used by one call at a time)
    counts as the connection having broken mid-exchange (found by the fault soak)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _unavailable_one(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _unavailable_one(e: BaseException) -> bool:
    if isinstance(e, OSError | asyncio.TimeoutError):
        return True  # refused, reset, unreachable host, DNS, timeouts (TimeoutError is OSError)
    if isinstance(e, asyncpg.PostgresError):
        state = str(getattr(e, "sqlstate", "") or "")
        return state.startswith("08") or state in _UNAVAILABLE_STATES
    if isinstance(e, asyncpg.InternalClientError):
        return "another operation" in str(e)
    if isinstance(e, asyncpg.InterfaceError):
        # The connection went away under a call ("connection is closed", "the underlying
        # connection is closed"); not "pool is closed" (this store was stopped) or API misuse.
        text = str(e)
        return (
            "connection is closed" in text
            or "connection was closed" in text
            or "another operation is in progress" in text
        )
    return False


@contextlib.asynccontextmanager
async def _transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside a transaction. A connection whose ROLLBACK failed (the
    server stopped mid-COPY: "another operation is in progress") is still in its transaction
    when the pool takes it back; the pool's reset then logged "Resetting connection with an
    active transaction" at error level and rolled back over the dying socket (an outage test
    failed on those lines). Such a connection is of no further use: it is closed here, the
    pool opens a new one, and the server drops the unfinished transaction.

    A statement that timed out (or was cancelled: a stop's deadline), the BEGIN and COMMIT
    included, ends its connection the same way, without a ROLLBACK: a server that did not
    answer it would not answer the ROLLBACK, nor the reset the pool runs on a connection it
    takes back, and each waited storage.command_timeout_s again (a hung server's write gave
    up after twice the timeout)."""
    async with pool.acquire() as conn:
        tr = conn.transaction()
        try:
            await tr.start()
            try:
                yield conn
            except BaseException as e:
                if not _no_answer(e) and not conn.is_closed():
                    await tr.rollback()
                raise
            await tr.commit()
        except BaseException as e:
            if _no_answer(e) or (not conn.is_closed() and conn.is_in_transaction()):
                conn.terminate()
            raise


# How long one statement of the schema's creation or migration may wait (see `start`).
DDL_COMMAND_TIMEOUT_S = 3600.0


def _no_answer(e: BaseException) -> bool:
    """The server did not answer in time (asyncpg's command timeout), or the wait for it was
    cancelled (a stop's deadline): its session is of no further use."""
    return isinstance(e, TimeoutError | asyncio.CancelledError)


def _float_positions(table: Table) -> tuple[int, ...]:
    kinds = {c.name: c.kind for c in table.columns}
    return tuple(i for i, c in enumerate(table.insert_columns) if kinds[c] == "float")


def _has_nan(at: tuple[int, ...]) -> Callable[[Row], bool]:
    """A predicate over a row's float positions, as one expression (about half the cost of
    a generator over them: every row of a bar import passes through it)."""
    body = " or ".join(f"r[{i}] != r[{i}]" for i in at)  # NaN alone is unequal to itself
    return cast("Callable[[Row], bool]", eval(f"lambda r: {body}"))  # built of ints only


_FLOATS: dict[str, tuple[tuple[int, ...], Callable[[Row], bool] | None]] = {}

# PostgreSQL's text and jsonb refuse U+0000 (a raw NUL in text, the escape \u0000 in JSON),
# which SQLite stores: one in a row failed the whole batch (the bar's checkpoint with it)
# with UntranslatableCharacterError, naming nothing. It comes in with free text (a broker's
# error as an order's reason, a plugin's state in the checkpoint) and is replaced with
# U+FFFD, the Unicode replacement character, and a warning (`_nul_free`).
_NUL, _NUL_JSON, _REPLACEMENT = "\x00", "\\u0000", "\ufffd"
_TEXTS: dict[str, tuple[tuple[tuple[int, str, bool], ...], Callable[[Row], bool] | None]] = {}


def _text_positions(table: Table) -> tuple[tuple[int, str, bool], ...]:
    """(position, column, is JSON) of each text and json column of `insert_columns`."""
    kinds = {c.name: c.kind for c in table.columns}
    return tuple(
        (i, c, kinds[c] == "json")
        for i, c in enumerate(table.insert_columns)
        if kinds[c] in ("text", "json")
    )


def _has_nul(at: tuple[tuple[int, str, bool], ...]) -> Callable[[Row], bool]:
    """A predicate over a row's text positions, as one expression (see `_has_nan`)."""
    body = " or ".join(
        f"(type(r[{i}]) is str and {'J' if is_json else 'N'} in r[{i}])" for i, _, is_json in at
    )
    scope = {"N": _NUL, "J": _NUL_JSON, "str": str, "type": type}
    return cast("Callable[[Row], bool]", eval(f"lambda r: {body}", scope))  # ints only


def _without_nul(obj: Any) -> Any:
    """A decoded JSON value with U+0000 replaced in every string (keys included)."""
    if isinstance(obj, str):
        return obj.replace(_NUL, _REPLACEMENT)
    if isinstance(obj, list):
        return [_without_nul(v) for v in obj]
    if isinstance(obj, dict):
        return {_without_nul(k): _without_nul(v) for k, v in obj.items()}
    return obj


def nul_free_text(value: Any, is_json: bool) -> Any:
    """`value` as PostgreSQL takes it: U+0000 replaced with U+FFFD in text; in JSON text,
    in its decoded strings (the text `\\u0000`, an escaped backslash, is no NUL and stays)."""
    if type(value) is not str:
        return value
    if not is_json:
        return value.replace(_NUL, _REPLACEMENT)
    if _NUL_JSON not in value:
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value  # not JSON: the database says so, as before
    return json.dumps(_without_nul(decoded), separators=(",", ":"), allow_nan=False)


def _nul_free(table: Table, rows: list[Row]) -> list[Row]:
    """`rows` with U+0000 replaced in their text and JSON (see `_NUL`), said in one warning
    per table and column of the batch, with the rows' count and the first row's run."""
    known = _TEXTS.get(table.name)
    if known is None:
        at = _text_positions(table)
        known = _TEXTS[table.name] = (at, _has_nul(at) if at else None)
    at, has_nul = known
    if has_nul is None:
        return rows
    run_at = 0 if table.insert_columns[0] == "run_id" else None  # (runs: not run-scoped)
    return _nul_replaced(table.name, at, has_nul, rows, run_at)


# end_run's arguments (summary, ended_at, run_id): its text and JSON, as `_text_positions`.
_END_RUN_TEXT = ((0, "summary", True), (2, "run_id", False))
_END_RUN_HAS_NUL = _has_nul(_END_RUN_TEXT)


def _nul_replaced(
    name: str,
    at: tuple[tuple[int, str, bool], ...],
    has_nul: Callable[[Row], bool],
    rows: list[Row],
    run_at: int | None,
) -> list[Row]:
    """`_nul_free`'s repair of `rows` of table `name`, whose text is at `at`, and its
    warning, naming the run of the first row repaired (its value at `run_at`)."""
    out = rows
    repaired: dict[str, int] = {}
    first: Row | None = None
    for k, r in enumerate(rows):
        if not has_nul(r):
            continue
        if out is rows:
            out = list(rows)
        fixed = list(r)
        for i, column, is_json in at:
            v = nul_free_text(r[i], is_json)
            if v != r[i]:
                fixed[i] = v
                repaired[column] = repaired.get(column, 0) + 1
        out[k] = tuple(fixed)
        first = r if first is None else first
    for column, n in repaired.items():
        log.warning(
            "storage.text.repaired",
            table=name,
            column=column,
            rows=n,
            run_id=first[run_at] if first is not None and run_at is not None else None,
            repair="the character U+0000 (NUL), which PostgreSQL refuses in text, was written "
            "as U+FFFD; the rest of the text is kept",
        )
    return out


def _nan_as_null(table: Table, rows: list[Row]) -> list[Row]:
    """NaN written as NULL, as SQLite stores it: the same SQL then gives the same answer on
    both stores (an unfilled order's avg_fill_price was NULL in SQLite and 'NaN' in
    PostgreSQL, where `IS NULL` found none and avg() was NaN). Read back through the store,
    both are NaN (or None in optional columns), as before."""
    known = _FLOATS.get(table.name)
    if known is None:
        at = _float_positions(table)
        known = _FLOATS[table.name] = (at, _has_nan(at) if at else None)
    at, has_nan = known
    if has_nan is None:
        return rows
    out = rows
    for k, r in enumerate(rows):
        if has_nan(r):
            if out is rows:
                out = list(rows)
            out[k] = tuple(None if (i in at and v != v) else v for i, v in enumerate(r))
    return out


def _writing(tables: Mapping[str, Sequence[Row]], what: str = "a batch") -> str:
    """A write for /ready: 'the write of batch W-7 (equity 1 row, orders 2 rows)'."""
    rows = ", ".join(f"{name} {len(r)} row{'s' * (len(r) != 1)}" for name, r in tables.items() if r)
    return f"the write of {what}" + (f" ({rows})" if rows else "")


def spool_target(url: str, schema: str | None) -> str:
    """The database a spool belongs to, without credentials: host, port, database, schema.
    Without `storage.schema`, the schema is the first of the URL's `?search_path=` (asyncpg
    passes it to the server): two daemons on two schemas of one database must not share a
    spool, whose replay would write one's rows into the other's tables."""
    try:
        u = urlsplit(url)
        host, port = u.hostname or "localhost", u.port or 5432
        db = u.path.lstrip("/") or (u.username or "postgres")
        if schema is None:
            path = parse_qs(u.query).get("search_path", [""])[-1]
            schema = path.split(",")[0].strip().strip('"') or None
    except ValueError:
        return f"postgres:{mask_url(url)}#{schema or 'public'}"
    return f"postgres://{host}:{port}/{db}#{schema or 'public'}"


def default_spool_dir(url: str, schema: str | None) -> Path:
    """`var/spool/<host>_<port>_<database>_<schema>` under the working directory."""
    target = spool_target(url, schema)
    return Path("var") / "spool" / safe_name(target.removeprefix("postgres://"))


def _say_legacy_spool(url: str) -> None:
    """Before 2026-12-05 a URL's `?search_path=` schema was not part of the spool's name (it
    said `public`): spool files a daemon of that build left there are not this one's to
    replay (their header names `public`). Said at start, with what to do, not left silent."""
    target = spool_target(url, None)
    if target.endswith("#public"):
        return
    legacy = default_spool_dir(url.split("?", 1)[0], None)
    try:
        files = sorted(p.name for p in legacy.glob("*.spool"))
    except OSError:
        return
    if files:
        log.warning(
            "storage.spool.legacy_folder",
            folder=str(legacy),
            files=files[:10],
            database=target,
            hint="spooled by an earlier build of tradingd for this database: start that build "
            "once (it replays them), or keep the files for the operator; they are not replayed "
            "here",
        )


class PostgresStore(BufferedStore):
    dialect: ClassVar[Dialect] = "postgres"

    def __init__(
        self,
        url: str,
        batch_size: int = 5000,
        schema: str | None = None,
        signals: str = "decisions",
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        connect_timeout: float = 10.0,
        flush_interval_s: float = 0.1,
        *,
        spool: bool = True,
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        start_retry_s: float = 0.0,
        ddl_lock_timeout_s: float = DDL_LOCK_TIMEOUT_S,
    ) -> None:
        """`spool`: keep writing to a local spool while the server is unreachable (off: an
        outage raises StorageError, as a backtest or a bulk load wants). `spool_dir`: where
        (default `var/spool/<host>_<port>_<db>_<schema>`); `spool_max_bytes` its bound.
        `retry_base_s`/`retry_max_s`: the replay's backoff. `start_retry_s`: how long
        `start()` keeps trying a server that is down (0: one attempt). `ddl_lock_timeout_s`:
        how long a schema change at start waits for a table lock (then SchemaLocked; 0: no
        bound). `command_timeout`: how long one statement waits for the server's answer
        (storage.command_timeout_s); then it is an outage (DatabaseUnavailable: spooled)."""
        super().__init__(batch_size=batch_size, signals=signals, flush_interval_s=flush_interval_s)
        if schema is not None and not _IDENT.match(schema):
            raise ConfigError(
                f"storage schema {schema!r} is not a valid identifier "
                "(letters, digits and _, not starting with a digit)"
            )
        if spool and spool_dir is None and schema is None:
            _say_legacy_spool(url)
        if spool:
            self._configure_spool(
                spool_dir if spool_dir is not None else default_spool_dir(url, schema),
                spool_target(url, schema),
                max_bytes=spool_max_bytes,
                retry_base_s=retry_base_s,
                retry_max_s=retry_max_s,
                start_retry_s=start_retry_s,
            )
        else:  # the start still waits (a live start's lookup: app.continued_live_run)
            self._configure_retry(retry_base_s, retry_max_s, start_retry_s)
        self.url = url
        self.schema = schema
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.ddl_lock_timeout_s = ddl_lock_timeout_s
        self._ddl_schema = schema or "public"
        self.timescaledb = False
        self._pool: asyncpg.Pool | None = None
        self._insert = {name: insert_sql(t, "postgres") for name, t in TABLES.items()}
        self._ops = {name: sql("postgres") for name, sql in OPS.items()}
        # The row tables written by a statement of their own (see `_nul_free_args`).
        self._inserting = {
            self._insert[n]: TABLES[n] for n in ("runs", "run_builds", "adjustments")
        }
        self._applied_sql = applied_seq_sql("postgres")

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    def _where(self) -> str:
        return f"PostgreSQL at {self.safe_url}"

    def _stall_hint(self) -> str:
        return (
            f" (it gives up after {self.command_timeout:g} s, storage.command_timeout_s): the "
            "server is hung, or another session holds a lock it needs (see pg_stat_activity "
            "and pg_locks)"
        )

    def _error(self, what: str, e: BaseException) -> StorageError:
        cls = DatabaseUnavailable if unavailable(e) else StorageError
        return cls(f"{what} PostgreSQL at {self.safe_url} failed: {self._explain(e)}")

    def _explain(self, e: BaseException, timeout_s: float | None = None, key: str = "") -> str:
        """`e` as "Type: message". asyncpg's timeouts carry no message, and the error read
        "TimeoutError: " with nothing after it: it now says after how long, and which
        setting that is (`timeout_s`/`key`; default the command timeout)."""
        if isinstance(e, TimeoutError) and not str(e):
            if timeout_s is None:
                timeout_s, key = self.command_timeout, "storage.command_timeout_s"
            setting = f" ({key})" if key else ""
            return f"TimeoutError: no answer, timed out after {timeout_s:g} s{setting}"
        return f"{type(e).__name__}: {e}"

    async def start(self) -> None:
        """Connect and create the schema, then write any spool a dead process left behind,
        before anything else (so `resume_run` sees the latest checkpoint). Retries with
        backoff for up to `start_retry_s` while the server does not answer; then raises
        StorageError naming the URL (password masked)."""
        if self._pool is not None:
            return
        await self._open_with_retry(self._connect)

    async def _connect(self) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": f'"{self.schema}", public'} if self.schema else {}
        try:
            pool = await asyncpg.create_pool(
                self.url,
                # No connection floor: while the server is down, asyncpg would keep
                # reconnecting (and logging a traceback per attempt) in the background; the
                # store's own replay task probes it instead.
                min_size=0,
                max_size=4,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                server_settings=settings,
            )
        except _ERRORS as e:
            cls = DatabaseUnavailable if unavailable(e) else StorageError
            why = self._explain(e, self.connect_timeout, "connecting")
            raise cls(f"cannot connect to PostgreSQL at {self.safe_url}: {why}") from e
        try:
            # Its own connection, without the statements' outage bound: a migration's CREATE
            # INDEX or hypertable conversion of a large table, and the wait for another
            # process's migration, take what they take (storage.command_timeout_s, 15 s,
            # failed them at every start). Bounded by an hour all the same.
            conn = await asyncpg.connect(
                self.url,
                timeout=self.connect_timeout,
                command_timeout=max(self.command_timeout, DDL_COMMAND_TIMEOUT_S),
                server_settings=settings,
            )
            try:
                async with conn.transaction():
                    await self._create_schema(conn)
            finally:
                conn.terminate()  # the transaction is over (committed or rolled back)
            # One connection kept in the pool, as the schema's was before: the first write
            # then waits on the server's answer (command_timeout), not on a new connection
            # (connect_timeout) as well.
            async with pool.acquire() as warm:
                await warm.fetchval("SELECT 1")
        except SchemaLocked as e:  # rolled back: the DDL lock is released
            pool.terminate()
            raise SchemaLocked(f"cannot migrate the schema in {self._where()}: {e}") from e
        except StorageError as e:  # a table of another build (the transaction rolled back)
            pool.terminate()
            # Its kind kept: another build's database stays the operator's to end (EX_CONFIG).
            raise type(e)(f"cannot create schema in PostgreSQL at {self.safe_url}: {e}") from e
        except _ERRORS as e:
            pool.terminate()
            cls = DatabaseUnavailable if unavailable(e) else StorageError
            hint = ""
            if type(e).__name__ == "InvalidSchemaNameError" and not self.schema:
                # A ?search_path= naming a schema that does not exist: the server has nowhere
                # to create the tables, and said only "no schema has been selected".
                named = spool_target(self.url, None).rpartition("#")[2]
                hint = (
                    f"; the schema {named!r} of the URL's ?search_path= does not exist: "
                    f'create it first (CREATE SCHEMA "{named}")'
                )
            raise cls(
                f"cannot create schema in PostgreSQL at {self.safe_url}: {self._explain(e)}{hint}"
            ) from e
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        log.info(
            "storage.postgres.started",
            url=self.safe_url,
            # The URL's ?search_path= schema when storage.schema is not set (not "public").
            schema=self.schema or spool_target(self.url, None).rpartition("#")[2],
            timescaledb=self.timescaledb,
            tables="hypertables for bars and equity" if self.timescaledb else "plain tables",
        )

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _DDL_LOCK_KEY):
            # Another tradingd is creating or changing the schema: waited for without a bound
            # (its own lock waits are bounded), but said, not a silent wait.
            why = "another tradingd process is creating or changing the schema of this database"
            log.info("storage.postgres.ddl_lock_waiting", database=self._where(), reason=why)
            waiting_for("database", f"{why} ({self._where()})")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK_KEY)
        # After the advisory lock, so a start queued behind another's migration still waits.
        await conn.execute(f"SET LOCAL lock_timeout = '{int(self.ddl_lock_timeout_s * 1000)}ms'")
        if self.schema:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        self._ddl_schema = str(await conn.fetchval("SELECT current_schema()"))
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
            existed = await conn.fetchval(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = $1",
                table.name,
            )
            create, *indexes = create_table_sql(table, "postgres")
            if not existed:
                await conn.execute(create)
                for stmt in indexes:
                    await conn.execute(stmt)
                continue
            await self._migrate(conn, table)
        if self.timescaledb:
            for table in TABLES.values():
                if table.hypertable_time:
                    await self._ddl(
                        conn,
                        table,
                        "convert to a hypertable",
                        "SELECT create_hypertable($1::text::regclass, $2::name, "
                        "if_not_exists => TRUE, migrate_data => TRUE)",
                        table.name,
                        table.hypertable_time,
                    )

    async def _migrate(self, conn: asyncpg.Connection, table: Table) -> None:
        """A table made by an earlier build: add the columns and indexes declared since (the
        columns first: an index may name them). Only what is missing is run: CREATE INDEX
        IF NOT EXISTS locks the table even when the index exists."""
        have = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = $1",
                table.name,
            )
        }
        if (newer := newer_columns_error(table, have)) is not None:
            raise newer
        for column in table.insert_columns:
            if column not in have:
                sql = add_column_sql(table, column, "postgres")
                await self._ddl(conn, table, f"add column {column}", sql)
                log.info("storage.column_added", table=table.name, column=column)
        indexed = {
            r["indexname"]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename = $1",
                table.name,
            )
        }
        for columns in table.indexes:
            name = index_name(table, columns)
            if name not in indexed:
                sql = create_index_sql(table, columns)
                await self._ddl(conn, table, f"create index {name}", sql)
                log.info("storage.index_created", table=table.name, index=name)

    async def _ddl(
        self, conn: asyncpg.Connection, table: Table, change: str, sql: str, *args: Any
    ) -> None:
        """One schema change that may wait for a lock on `table`: said before it waits (it
        waits behind any open transaction that has touched the table), and a wait past
        `ddl_lock_timeout_s` is SchemaLocked, naming the table and what to do."""
        wait_s = self.ddl_lock_timeout_s
        log.info("storage.migrating", table=table.name, change=change, lock_timeout_s=wait_s)
        waiting_for("database", f"schema change on {table.name}: {change}")
        try:
            await conn.execute(sql, *args)
        except asyncpg.PostgresError as e:
            if getattr(e, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            where = f'"{self._ddl_schema}".{table.name}'
            raise SchemaLocked(
                f"{change} on table {where} waited {wait_s:g} s for a lock on it that another "
                "session holds (an open, long-running transaction that has used the table): "
                "end that transaction or session (find it with SELECT a.pid, a.state, "
                "a.xact_start, a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                f"WHERE l.relation = '{where}'::regclass AND l.granted; then, if need be, "
                "SELECT pg_terminate_backend(pid)); nothing was changed, and starting again "
                "later is safe"
            ) from e

    async def _close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # A graceful close waits for the server: not for one that is down or hung, nor
            # past what is left of the stop's budget.
            left = self._stop_time_left()
            wait = self.connect_timeout if left is None else min(self.connect_timeout, left)
            if self._down_at is not None or wait <= 0:
                pool.terminate()
                return
            try:
                await asyncio.wait_for(pool.close(), wait)
            except _ERRORS:
                pool.terminate()

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

    async def _write_tables(
        self, conn: asyncpg.Connection, batches: Mapping[str, Sequence[Row]]
    ) -> None:
        for name, rows in batches.items():
            if not rows:
                continue
            table = TABLES[name]
            rows = _nan_as_null(table, rows if isinstance(rows, list) else list(rows))
            rows = _nul_free(table, rows)
            if table.on_conflict is None:
                await conn.copy_records_to_table(name, records=rows, columns=table.insert_columns)
            else:
                await self._upsert(conn, table, rows)

    async def _write_batches(self, batches: Mapping[str, list[Row]]) -> None:
        pool = self._get_pool()
        try:
            async with self._db_wait(_writing(batches)), _transaction(pool) as conn:
                await self._write_tables(conn, batches)
                faults.reached("flush")
        except _ERRORS as e:
            raise self._error("write to", e) from e

    async def _write_batch(self, batch: SpoolBatch, check_applied: bool) -> bool:
        pool = self._get_pool()
        what = _writing(batch.tables, f"{'spooled ' if check_applied else ''}batch {batch.id}")
        try:
            async with self._db_wait(what), _transaction(pool) as conn:
                if check_applied:
                    last = await conn.fetchval(self._applied_sql, batch.writer)
                    if last is not None and last >= batch.seq:
                        return False
                await self._write_tables(conn, batch.tables)
                for name, args in batch.ops:
                    sql = self._ops[name]
                    await conn.execute(sql, *self._nul_free_args(sql, args))
                await conn.execute(
                    self._insert["spool_applied"], batch.writer, batch.seq, datetime.now(UTC)
                )
                faults.reached("flush")
        except _ERRORS as e:
            raise self._error("write to", e) from e
        return True

    def _nul_free_args(self, sql: str, args: Sequence[Any]) -> Sequence[Any]:
        """A statement's arguments with U+0000 replaced as `_nul_free` does in the row
        batches, and said the same way: a run's row and its build, and end_run's summary,
        went to PostgreSQL as given outside a spool (jsonb refused them, failing the start
        or the end, naming nothing) or were repaired without a word in a spool's replay.
        The other statements (deletes, a reopen) take run ids and times only."""
        table = self._inserting.get(sql)
        if table is not None:
            return _nul_free(table, [tuple(args)])[0]
        if sql == self._ops["end_run"]:
            return _nul_replaced("runs", _END_RUN_TEXT, _END_RUN_HAS_NUL, [tuple(args)], 2)[0]
        return args

    async def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        pool = self._get_pool()
        try:
            async with self._db_wait("a statement"), _transaction(pool) as conn:
                for sql, args in statements:
                    await conn.execute(sql, *self._nul_free_args(sql, args))
        except _ERRORS as e:
            raise self._error("write to", e) from e

    async def _query(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        pool = self._get_pool()
        try:
            async with self._db_wait("a query"), pool.acquire() as conn:
                try:
                    return [tuple(r) for r in await conn.fetch(sql, *args)]
                except BaseException as e:
                    if _no_answer(e):  # else the pool's reset waits out the timeout again
                        conn.terminate()
                    raise
        except _ERRORS as e:
            raise self._error("query on", e) from e
