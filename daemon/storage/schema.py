"""Table definitions shared by the SQLite and PostgreSQL stores.

Each table is described once, with dialect-neutral column kinds; the DDL, insert and select
statements of both dialects are generated from it. Column kinds:

- ``text``: TEXT in both.
- ``float``: DOUBLE PRECISION / REAL. SQLite stores NaN as NULL, so both stores read NULL
  and NaN back as NaN, except in ``optional`` columns (None means "not set", as in
  ``Order.limit_price``), where both come back as None.
- ``time``: TIMESTAMPTZ in PostgreSQL; ISO-8601 UTC text in SQLite (fixed width, so text
  order is time order).
- ``json``: JSONB in PostgreSQL, TEXT in SQLite; the store encodes and decodes it.
- ``int``: a 64-bit integer (BIGINT / INTEGER).
- ``serial``: an insertion counter used to order rows that share a time. PostgreSQL gets an
  identity column; SQLite uses its implicit ``rowid`` (the column is not declared there).

Buffered row tuples hold the values of ``Table.insert_columns`` in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..core.errors import DatabaseOfAnotherBuild

Dialect = Literal["sqlite", "postgres"]
Kind = Literal["text", "float", "time", "json", "int", "serial"]

_TYPES: dict[Dialect, dict[Kind, str]] = {
    "sqlite": {"text": "TEXT", "float": "REAL", "time": "TEXT", "json": "TEXT", "int": "INTEGER"},
    "postgres": {
        "text": "TEXT",
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
        "time": "TIMESTAMPTZ",
        "json": "JSONB",
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY",
    },
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    not_null: bool = False
    # A float column whose Python value may be None: NULL/NaN read back as None, not NaN.
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    # What an insert does when the primary key exists: "update" (latest wins), "ignore"
    # (first wins) or None (plain insert: append-only table, COPY-able in PostgreSQL).
    on_conflict: Literal["update", "ignore"] | None = None
    order_by: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    # Rows belong to a run (has run_id); a rerun deletes them.
    run_scoped: bool = True
    # Made a TimescaleDB hypertable on this time column when the extension is available.
    hypertable_time: str | None = None

    @property
    def insert_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind != "serial")

    def kind_of(self, name: str) -> Kind:
        for c in self.columns:
            if c.name == name:
                return c.kind
        raise KeyError(name)

    def columns_of(self, kind: Kind, optional: bool | None = None) -> tuple[str, ...]:
        return tuple(
            c.name
            for c in self.columns
            if c.kind == kind and (optional is None or c.optional == optional)
        )


def _c(name: str, kind: Kind, not_null: bool = False, optional: bool = False) -> Column:
    return Column(name, kind, not_null, optional)


RUNS = Table(
    "runs",
    (
        _c("run_id", "text", True),
        _c("mode", "text", True),
        _c("started_at", "time", True),
        _c("ended_at", "time"),
        _c("config_json", "text"),
        _c("symbols", "json"),
        _c("initial_capital", "float"),
        _c("summary", "json"),
    ),
    primary_key=("run_id",),
    on_conflict="update",
    order_by=("started_at", "run_id"),
    run_scoped=False,
)

BARS = Table(
    "bars",
    (
        _c("symbol", "text", True),
        _c("time", "time", True),
        _c("open", "float"),
        _c("high", "float"),
        _c("low", "float"),
        _c("close", "float"),
        _c("volume", "float"),
        _c("split", "float"),
        _c("dividend", "float"),
    ),
    primary_key=("symbol", "time"),
    on_conflict="update",
    order_by=("time", "symbol"),
    run_scoped=False,
    hypertable_time="time",
)

SIGNALS = Table(
    "signals",
    (
        _c("run_id", "text", True),
        _c("time", "time", True),
        _c("symbol", "text", True),
        _c("score", "float"),
        _c("target_weight", "float"),
        # Which signal plugins (and model versions) produced the score: "ml_ensemble@3f2a...".
        _c("source", "text"),
    ),
    order_by=("time", "symbol"),
    indexes=(("run_id", "time"),),
)

ORDERS = Table(
    "orders",
    (
        _c("run_id", "text", True),
        _c("client_order_id", "text", True),
        _c("symbol", "text", True),
        _c("side", "text", True),
        _c("type", "text", True),
        _c("quantity", "float"),
        _c("limit_price", "float", optional=True),
        _c("stop_price", "float", optional=True),
        _c("trail_pct", "float", optional=True),
        _c("leg", "text"),
        _c("parent_id", "text"),
        _c("oco_group", "text"),
        _c("status", "text", True),
        _c("filled_quantity", "float"),
        _c("avg_fill_price", "float"),
        _c("reason", "text"),
        _c("created_at", "time"),
        _c("updated_at", "time"),
    ),
    primary_key=("run_id", "client_order_id"),
    on_conflict="update",
    order_by=("created_at", "client_order_id"),
    # A resume reads the orders created after its checkpoint (`select_run_sql(after=...)`).
    indexes=(("run_id", "created_at"),),
)

ORDER_EVENTS = Table(
    "order_events",
    (
        _c("seq", "serial"),
        _c("run_id", "text", True),
        _c("client_order_id", "text", True),
        _c("status", "text", True),
        _c("filled_quantity", "float"),
        _c("reason", "text"),
        _c("time", "time"),
        # The bar at which a live run recorded the state (the order's own `time` is the
        # broker's clock: Alpaca's is the wall clock, hours after a daily bar's label); what
        # a resume deletes after its checkpoint by. NULL in a replay's rows and in rows
        # written before it existed: their `time` stands in.
        _c("booked_at", "time"),
    ),
    order_by=("time", "seq"),
    indexes=(("run_id", "time"),),
)

FILLS = Table(
    "fills",
    (
        _c("seq", "serial"),
        _c("run_id", "text", True),
        _c("fill_id", "text", True),
        _c("client_order_id", "text", True),
        _c("symbol", "text", True),
        _c("side", "text", True),
        _c("quantity", "float"),
        _c("price", "float"),
        _c("commission", "float"),
        _c("slippage", "float"),
        _c("reference_price", "float"),
        _c("time", "time", True),
        # The bar at which the engine booked the fill (live: a fill executes between bars and
        # is booked at the next one). A resumed run drops the fills booked after its
        # checkpoint: exactly those are missing from the checkpoint's book.
        _c("booked_at", "time"),
    ),
    primary_key=("run_id", "fill_id"),
    on_conflict="ignore",
    order_by=("time", "seq"),
    indexes=(("run_id", "time"),),
)

POSITIONS = Table(
    "positions",
    (
        _c("run_id", "text", True),
        _c("time", "time", True),
        _c("symbol", "text", True),
        _c("quantity", "float"),
        _c("avg_price", "float"),
        _c("mark_price", "float"),
    ),
    order_by=("time", "symbol"),
    indexes=(("run_id", "time"),),
)

EQUITY = Table(
    "equity",
    (
        _c("run_id", "text", True),
        _c("time", "time", True),
        _c("cash", "float"),
        _c("equity", "float"),
        _c("gross_exposure", "float"),
        _c("net_exposure", "float"),
    ),
    primary_key=("run_id", "time"),
    on_conflict="update",
    order_by=("time",),
    hypertable_time="time",
)

# A live run's state after its last completed bar (cash, positions, open orders, plugin
# state): one row per run, replaced at every bar, written in the same transaction as that
# bar's rows, so the store never holds a bar's rows without the state they lead to.
CHECKPOINTS = Table(
    "checkpoints",
    (
        _c("run_id", "text", True),
        _c("bar_time", "time", True),
        _c("state", "json"),
        _c("written_at", "time"),
    ),
    primary_key=("run_id",),
    on_conflict="update",
    order_by=("bar_time",),
)

# What each live bar decided and from what (replay-check, `tradingd replay-check RUN`): the
# features of the symbols that were ready (float32, base64), the signal scores, the target
# weights after risk and the order intents, with the model versions. One row per bar; a bar
# decided again after a crash replaces its row.
DECISIONS = Table(
    "decisions",
    (
        _c("run_id", "text", True),
        _c("time", "time", True),
        _c("source", "text"),
        _c("record", "json"),
    ),
    primary_key=("run_id", "time"),
    on_conflict="update",
    order_by=("time",),
)

# Which tradingd build each start of a live process ran (`build_info`): a run continued
# across an upgrade decides its later bars with other code, and replay-check, replaying all
# of it with one build, must be able to say which bars which build decided. A process decides
# the bars after `resumed_after` (its checkpoint's bar; NULL: from the run's first bar). A
# store of an earlier build gets the table at its next open; its earlier bars have no row.
RUN_BUILDS = Table(
    "run_builds",
    (
        _c("run_id", "text", True),
        _c("started_at", "time", True),
        _c("resumed_after", "time"),
        _c("version", "text"),
        _c("source_commit", "text"),
        _c("uncommitted_changes", "int"),
    ),
    primary_key=("run_id", "started_at"),
    on_conflict="update",
    order_by=("started_at",),
)

# The operator's adjustments of a live run's book (`POST /adopt`, engine/adopt.py): a symbol
# whose book differed from the broker's position takes the broker's quantity at bar `time`,
# as a trade at `price` (cash moved by `cash`) or as a split the book missed (cash unchanged,
# the cost basis scaled). Not fills: no order made them. Written at their bar, before its
# checkpoint; a resume deletes those after its checkpoint (its bar applies them again). A
# store of an earlier build gets the table at its next open, as `run_builds`.
ADJUSTMENTS = Table(
    "adjustments",
    (
        _c("run_id", "text", True),
        _c("time", "time", True),
        _c("symbol", "text", True),
        _c("kind", "text", True),
        _c("book_before", "float"),
        _c("quantity", "float"),
        _c("price", "float"),
        _c("cash", "float"),
        _c("reason", "text"),
        _c("asked_at", "time"),
    ),
    primary_key=("run_id", "time", "symbol"),
    on_conflict="update",
    order_by=("time", "symbol"),
)

# Exactly-once replay of a store's spool (storage/spool.py): every batch a spooling store
# writes carries (writer, seq), a sequence number per store instance that grows with each
# batch, and upserts this row in the same transaction. A writer's batches reach the database
# in sequence order, so a spooled batch whose seq is <= last_seq is already in (a crash after
# the commit and before the spool was emptied, or a commit whose answer was lost) and is
# skipped. A row is kept while a batch of its writer may still be replayed, and deleted when
# none can be (`forget_writer_sql`, see BufferedStore._forget_writer): by its own store at a
# clean close with an empty spool, and by the store that replayed and removed the spool of a
# writer that died. A writer killed with an empty spool keeps its row (see there).
SPOOL_APPLIED = Table(
    "spool_applied",
    (
        _c("writer", "text", True),
        _c("last_seq", "int", True),
        _c("applied_at", "time"),
    ),
    primary_key=("writer",),
    on_conflict="update",
    order_by=("writer",),
    run_scoped=False,
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        RUNS,
        BARS,
        SIGNALS,
        ORDERS,
        ORDER_EVENTS,
        FILLS,
        POSITIONS,
        EQUITY,
        CHECKPOINTS,
        DECISIONS,
        RUN_BUILDS,
        ADJUSTMENTS,
        SPOOL_APPLIED,
    )
}
# Tables filled through the record_* buffers, in flush order.
BUFFERED = (
    "signals",
    "orders",
    "order_events",
    "fills",
    "positions",
    "equity",
    "checkpoints",
    "decisions",
)
# The time column of each run table's rows: a resumed run drops what came after its
# checkpoint (the interrupted bar is processed again, deterministically).
RESUME_TIME = {
    "signals": "time",
    # A live state's bar (see ORDER_EVENTS), else its own time.
    "order_events": "COALESCE(booked_at, time)",
    "fills": "booked_at",
    "positions": "time",
    "equity": "time",
    "decisions": "time",
    "adjustments": "time",
}
# After a clean stop (the run row ended, not failed), what differs: an event without a bar
# (written by a build before `booked_at`, whose stop ended its run after its last bar's
# rows) is not after the checkpoint, whatever the broker's clock says; the resume deleted
# the last bar's acknowledgements of such a run at the first restart after an upgrade.
RESUME_TIME_AFTER_STOP = {**RESUME_TIME, "order_events": "booked_at"}
RUN_TABLES = tuple(t.name for t in TABLES.values() if t.run_scoped)


def _placeholders(dialect: Dialect, n: int) -> str:
    if dialect == "sqlite":
        return ", ".join("?" * n)
    return ", ".join(f"${i}" for i in range(1, n + 1))


def param(dialect: Dialect, i: int = 1) -> str:
    """The i-th (1-based) bind parameter."""
    return "?" if dialect == "sqlite" else f"${i}"


def run_build_row(
    run_id: str, started_at: Any, resumed_after: Any, build: Mapping[str, Any]
) -> tuple[Any, ...]:
    """A `run_builds` row from `build_info.Build.as_dict()` (times already encoded)."""
    edited = build.get("uncommitted_changes")
    return (
        run_id,
        started_at,
        resumed_after,
        build.get("version"),
        build.get("commit"),
        None if edited is None else int(bool(edited)),
    )


def newer_columns_error(table: Table, have: Iterable[str]) -> DatabaseOfAnotherBuild | None:
    """The columns of `table` in the database that this build does not declare, as the
    error that refuses the database: a newer build added them, and an older build deletes
    or rewrites what it does not know (a build before `order_events.booked_at` deleted the
    newer rows carrying it at its first restart). None when there are none."""
    known = {c.name for c in table.columns}
    extra = sorted(set(have) - known)
    if not extra:
        return None
    return DatabaseOfAnotherBuild(
        f"table {table.name} has column(s) {', '.join(extra)} that this build of tradingd does "
        "not know: a newer build added them when it upgraded this database, and an older "
        "build would lose what it does not know (a downgrade is not supported): run that "
        "newer build, or restore the database (and the audit folder) saved before the upgrade"
    )


def add_column_sql(table: Table, column: str, dialect: Dialect) -> str:
    """The statement that adds a column a later build declared to an existing table (only
    nullable columns are ever added, so existing rows stay valid with NULL there)."""
    c = next(c for c in table.columns if c.name == column)
    if c.not_null:
        # Not a column a later build added (those are nullable): the table was made by
        # another program or build, and its rows cannot be given a value here.
        raise DatabaseOfAnotherBuild(
            f"its table {table.name} has no column {column}, which this build requires "
            "(NOT NULL): the database was made by another program or build; use a new "
            "database (or another schema) for tradingd"
        )
    return f"ALTER TABLE {table.name} ADD COLUMN {column} {_TYPES[dialect][c.kind]}"


def index_name(table: Table, columns: tuple[str, ...]) -> str:
    return f"{table.name}_{'_'.join(columns)}_idx"


def create_index_sql(table: Table, columns: tuple[str, ...]) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS {index_name(table, columns)} "
        f"ON {table.name} ({', '.join(columns)})"
    )


def create_table_sql(table: Table, dialect: Dialect) -> list[str]:
    """CREATE TABLE / INDEX IF NOT EXISTS statements (idempotent)."""
    cols = []
    for c in table.columns:
        if c.kind == "serial" and dialect == "sqlite":
            continue  # the implicit rowid plays this role
        cols.append(f"{c.name} {_TYPES[dialect][c.kind]}{' NOT NULL' if c.not_null else ''}")
    if table.primary_key:
        cols.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    stmts = [f"CREATE TABLE IF NOT EXISTS {table.name} (\n    " + ",\n    ".join(cols) + "\n)"]
    stmts.extend(create_index_sql(table, idx) for idx in table.indexes)
    return stmts


def insert_sql(table: Table, dialect: Dialect, rows: int = 1) -> str:
    """The insert (upsert) of one row, or with SQLite of `rows` rows in one VALUES list
    (their values flattened in row order)."""
    cols = table.insert_columns
    if rows == 1:
        values = f"({_placeholders(dialect, len(cols))})"
    elif dialect == "sqlite":
        values = ", ".join([f"({_placeholders(dialect, len(cols))})"] * rows)
    else:
        raise ValueError(f"multi-row inserts are built for SQLite only, not {dialect}")
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES {values}"
    if table.on_conflict == "ignore":
        sql += f" ON CONFLICT ({', '.join(table.primary_key)}) DO NOTHING"
    elif table.on_conflict == "update":
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in table.primary_key)
        sql += f" ON CONFLICT ({', '.join(table.primary_key)}) DO UPDATE SET {updates}"
    return sql


def _order_by(table: Table, dialect: Dialect) -> str:
    terms = []
    for name in table.order_by:
        if dialect == "sqlite" and table.kind_of(name) == "serial":
            terms.append("rowid")
        else:
            terms.append(name)
    return ", ".join(terms)


def select_run_sql(table: Table, dialect: Dialect, after: str | None = None) -> str:
    """Rows of one run (for `runs`, the run row itself), in time order; with `after` (a
    column), only those whose `after` is later than the second parameter (not NULL)."""
    where = f"run_id = {param(dialect)}"
    if after is not None:
        where += f" AND {after} > {param(dialect, 2)}"
    return (
        f"SELECT {', '.join(table.insert_columns)} FROM {table.name} "
        f"WHERE {where} ORDER BY {_order_by(table, dialect)}"
    )


def _last_per_sql(
    table: Table, columns: tuple[str, ...], per: str, dialect: Dialect, where: str = ""
) -> tuple[str, list[str]]:
    """(the query, its ordering aliases): `columns` of the last row of each `per` of one
    run in the table's time order (`fetch`'s), with each order term as an alias. The order
    reversed is the same order, NULLs included, in both dialects (NULLs sort first in
    SQLite's ascending order and last in PostgreSQL's, and the other way descending)."""
    terms = _order_by(table, dialect).split(", ")
    aliases = [f"o{k}_" for k in range(len(terms))]
    desc = ", ".join(f"{t} DESC" for t in terms)
    picked = ", ".join((*columns, *(f"{t} AS {a}" for t, a in zip(terms, aliases, strict=True))))
    sql = (
        f"SELECT {', '.join((*columns, *aliases))} FROM ("
        f"SELECT {picked}, ROW_NUMBER() OVER (PARTITION BY {per} ORDER BY {desc}) AS n_ "
        f"FROM {table.name} WHERE run_id = {param(dialect)}{where}) AS each_ WHERE n_ = 1"
    )
    return sql, aliases


def select_last_events_sql(dialect: Dialect) -> str:
    """A resume's event memory (`BufferedStore.resume_run`): the last `order_events` row of
    each of the `limit` (second parameter) orders of one run whose last row is latest, in
    time order: exactly the rows of `fetch`'s that `_kept_events` keeps, without reading the
    run's whole history."""
    t = ORDER_EVENTS
    cols = t.insert_columns
    last, aliases = _last_per_sql(t, cols, "client_order_id", dialect)
    desc = ", ".join(f"{a} DESC" for a in aliases)
    return (
        f"SELECT {', '.join(cols)} FROM ({last} ORDER BY {desc} LIMIT {param(dialect, 2)}) "
        f"AS newest_ ORDER BY {', '.join(aliases)}"
    )


def select_last_targets_sql(dialect: Dialect) -> str:
    """(symbol, target_weight) of the last `signals` row of each symbol of one run with a
    target (not NULL, not NaN): the decisions in force at a resume. PostgreSQL may hold NaN
    written before NaN was stored as NULL there; SQLite never stores NaN."""
    where = " AND target_weight IS NOT NULL"
    if dialect == "postgres":
        where += " AND target_weight <> 'NaN'"
    last, _ = _last_per_sql(SIGNALS, ("symbol", "target_weight"), "symbol", dialect, where)
    return f"SELECT symbol, target_weight FROM ({last}) AS targets_"


def select_bars_sql(dialect: Dialect, by_symbol: bool) -> str:
    where = f" WHERE symbol = {param(dialect)}" if by_symbol else ""
    return (
        f"SELECT {', '.join(BARS.insert_columns)} FROM bars{where} "
        f"ORDER BY {_order_by(BARS, dialect)}"
    )


def delete_run_sql(table: Table, dialect: Dialect) -> str:
    return f"DELETE FROM {table.name} WHERE run_id = {param(dialect)}"


def delete_after_sql(table: Table, column: str, dialect: Dialect) -> str:
    return (
        f"DELETE FROM {table.name} WHERE run_id = {param(dialect, 1)} "
        f"AND {column} > {param(dialect, 2)}"
    )


def reopen_run_sql(dialect: Dialect) -> str:
    return f"UPDATE runs SET ended_at = NULL, summary = NULL WHERE run_id = {param(dialect)}"


def end_run_sql(dialect: Dialect) -> str:
    p = param
    return (
        f"UPDATE runs SET summary = {p(dialect, 1)}, ended_at = {p(dialect, 2)} "
        f"WHERE run_id = {p(dialect, 3)}"
    )


def applied_seq_sql(dialect: Dialect) -> str:
    """The last batch of a writer that is in the database (locked until the commit)."""
    lock = " FOR UPDATE" if dialect == "postgres" else ""
    return f"SELECT last_seq FROM spool_applied WHERE writer = {param(dialect)}{lock}"


def forget_writer_sql(dialect: Dialect) -> str:
    """Delete a writer's `spool_applied` row, unless it has moved past a given batch."""
    return (
        f"DELETE FROM spool_applied WHERE writer = {param(dialect, 1)} "
        f"AND last_seq <= {param(dialect, 2)}"
    )
