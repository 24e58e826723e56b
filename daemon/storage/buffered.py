"""The buffering shared by every store.

`record_*` calls run on the engine's hot path: they keep what changed in columnar chunks
(storage/rows.py: per bar the indices and values of the symbols with a row, per order or fill
the tuple of its fields) and never touch the database; rows are made where they are written.
Rows record what changed, not what stayed: positions when a quantity changes, signals when a
decision changes (`record_signals`), equity once per bar. `maybe_flush` (called by the engine
every bar) starts a write of all buffers once any of them has reached `batch_size` rows or
`flush_interval_s` has passed, so memory stays bounded; `flush` writes everything. A dialect
subclass only implements the batch writes, a transaction of statements, a query, and how
times travel to and from its database (and may write in the background its own way:
SqliteStore).

A dialect that can lose its database while the daemon runs (PostgreSQL) also implements
`_write_batch` and turns on the spool (`_configure_spool`): a batch the database cannot take
because it is unreachable (`DatabaseUnavailable`, not a refused statement) is appended to a
durable local spool (storage/spool.py) and the write returns; while anything is spooled every
new batch goes to the spool too (the order is kept), the store reports itself degraded
(`status()`), and a background task replays the spool with backoff when the database answers
again, each batch in one transaction with its `spool_applied` marker, so none is written twice.
The replay waits on the database outside the flush lock (`replay_spool`): the engine's
flushes meanwhile go to the spool behind the batch it writes, never waiting on a silent
database for it.
A spool left by a process that died is replayed at `start()`, before anything else. A writer's
marker is deleted once none of its batches can be replayed again (`_forget_writer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC, date, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import structlog

from ..core.arrays import copyto, count_nonzero
from ..core.errors import CheckpointUnusable, ConfigError, StorageError
from ..core.numbers import is_finite_real
from ..core.types import CrossSection, Fill, Order, RunInfo
from ..health import waiting_for
from ..secrets import mask_text
from .records import Records
from .rows import (
    BUFFERS,
    FILL_FIELDS,
    FILL_RECORDS,
    ORDER_FIELDS,
    ORDER_RECORDS,
    OrderChunk,
    Record,
    Row,
    chunk_rows,
    fill_columns,
    order_columns,
    order_event,
    to_rows,
)
from .schema import (
    RESUME_TIME,
    RESUME_TIME_AFTER_STOP,
    RUN_TABLES,
    TABLES,
    Dialect,
    Table,
    applied_seq_sql,
    delete_after_sql,
    delete_run_sql,
    end_run_sql,
    forget_writer_sql,
    insert_sql,
    param,
    reopen_run_sql,
    select_bars_sql,
    select_last_events_sql,
    select_last_targets_sql,
    select_run_sql,
)
from .spool import (
    DEFAULT_MAX_BYTES,
    Orphan,
    Spool,
    SpoolBatch,
    SpoolDirFull,
    SpoolStale,
    claim_orphans,
    spool_files,
)

log = structlog.get_logger(__name__)

SIGNAL_MODES = ("decisions", "all", "none")


# At most this many targets changed since the last recorded ones: `_decisions_few`.
_FEW = 32
# Rows decoded at a time when a run's rows are read back (BufferedStore._decode_taking).
_DECODE_ROWS = 2048
# Where an order record holds its client order id.
_CID = ORDER_FIELDS.index("client_order_id")
# A live run's orders whose last event is remembered (`record_orders`): some days of orders.
EVENTS_KEPT = 10_000


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a live run that was stored before continues: the state after its last completed
    bar (None: it stopped before completing one) and the order intents stored after that bar,
    which may have reached the broker before the process died."""

    bar_time: datetime | None
    state: dict[str, Any] | None
    unconfirmed: tuple[dict[str, Any], ...] = ()
    # The run's last process stopped cleanly (its row ended, not failed): nothing it
    # recorded is of a bar after the checkpoint, so a record without its bar (an order line
    # of a build before `booked_at`) is kept (`RESUME_TIME_AFTER_STOP`, the audit's too).
    stopped_cleanly: bool = False
    # What the resume keeps: the rows booked up to this time (the checkpoint's bar, or later
    # when a clean stop checkpointed what it booked after that bar: `booked_through`).
    booked_through: datetime | None = None


def booked_through(bar_time: datetime | None, state: Mapping[str, Any] | None) -> datetime | None:
    """The last `booked_at` a checkpoint's book holds: its bar, or the later stamp its state
    names (`booked_through`, written by a clean stop after booking the broker's last
    updates between bars). A resume deletes, and the audit log drops, only what is after it:
    before, a clean stop's last fills and order states were dropped at the next start and
    had to be reported again by the broker (if it still knew the orders)."""
    text = (state or {}).get("booked_through")
    if bar_time is None or not isinstance(text, str):
        return bar_time
    later = datetime.fromisoformat(text)
    return later if later > bar_time else bar_time


def _plain(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, str | int | bool):
        return o
    if isinstance(o, Mapping):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        return [_plain(v) for v in o.tolist()]
    if isinstance(o, np.generic):
        return _plain(o.item())
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, list | tuple | set | frozenset):
        return [_plain(v) for v in o]
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _plain(dataclasses.asdict(o))
    return str(o)  # (a plugin's checkpointed state may hold none of these: `unstorable`)


def unstorable(o: Any) -> tuple[tuple[Any, ...], Any] | None:
    """Where in `o` is a value `_plain` can only keep as its text (its final `str(o)`): the
    keys and indexes down to it (`...` for a set's member) and the value; None when all of
    `o` goes through JSON as a value. A plugin's `state()` holding an object was
    checkpointed as "<object object at 0x...>", and handed back so to `restore`, with no
    word. Follows `_plain`'s cases."""
    if o is None or isinstance(o, float | str | int | bool | datetime | date):
        return None
    if isinstance(o, np.generic):
        return unstorable(o.item())
    if isinstance(o, Mapping):
        items: Any = o.items()
    elif isinstance(o, np.ndarray):
        items = enumerate(o.tolist())
    elif isinstance(o, list | tuple):
        items = enumerate(o)
    elif isinstance(o, set | frozenset):
        items = ((..., v) for v in o)  # `...`: a member (a set has no positions)
    elif dataclasses.is_dataclass(o) and not isinstance(o, type):
        return unstorable(dataclasses.asdict(o))
    else:
        return (), o
    for key, value in items:
        inner = unstorable(value)
        if inner is not None:
            return (key, *inner[0]), inner[1]
    return None


def path_text(path: tuple[Any, ...]) -> str:
    """`unstorable`'s path as Python would index it: ['o'][0], or {...} for a set member."""
    return "".join("{...}" if k is ... else f"[{k!r}]" for k in path)


def to_json(obj: Any) -> str:
    """Strict JSON (PostgreSQL's JSONB refuses NaN): non-finite floats become null, numpy
    values become Python values, datetimes ISO-8601 text."""
    return json.dumps(_plain(obj), separators=(",", ":"), allow_nan=False)


def _optional_float(v: Any) -> float | None:
    """An optional float column's value: None where it is missing or NaN."""
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


class DatabaseUnavailable(StorageError):
    """The database did not answer: connection refused, lost or timed out, server shutting
    down or starting up. The same write may succeed later. A statement the database refused
    (constraint, SQL or type error) is a plain StorageError."""


# A wait on the database longer than this shows in /ready as stalled (status()): a live
# write takes milliseconds, a warm-up's 64 bars well under a second.
STALLED_AFTER_S = 5.0

# How long `stop()` waits for the database in all (its writes and the pool's close): what it
# has not written by then stays in the spool for the next start. A stop with a hung database
# took about 120 s, past systemd's TimeoutStopSec (60 s), which then SIGKILLs.
STOP_BUDGET_S = 10.0

# Named statements a batch may carry besides rows (spooled by name, not as SQL text).
OPS: dict[str, Callable[[Dialect], str]] = {"end_run": end_run_sql}


class Backoff:
    """base, 2*base, 4*base ... capped at max_s, each scaled by a random factor in [0.5, 1]."""

    def __init__(
        self, base_s: float, max_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        if not 0 < base_s <= max_s:
            raise ConfigError(f"storage retry needs 0 < base <= max seconds, got {base_s}, {max_s}")
        self.base_s, self.max_s, self._rng, self.attempts = base_s, max_s, rng, 0

    def next(self) -> float:
        exp = min(self.max_s, self.base_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return exp * (0.5 + 0.5 * self._rng())


class BufferedStore(ABC):
    """Implements the `Store` protocol on top of a few dialect-specific primitives."""

    dialect: ClassVar[Dialect]

    def __init__(
        self, batch_size: int = 5000, signals: str = "decisions", flush_interval_s: float = 0.1
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"storage batch_size must be a positive integer, got {batch_size!r}")
        if signals not in SIGNAL_MODES:
            raise ConfigError(
                f"storage signals={signals!r} is not valid; choose one of {', '.join(SIGNAL_MODES)}"
            )
        self.batch_size = batch_size
        self.signals_mode = signals
        # A live daemon records a few rows per bar: without a time limit they would sit in
        # memory (and be lost on a crash) until a batch fills, weeks later.
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self._background: asyncio.Task[None] | None = None
        # Last recorded target weights and quantities per run: rows are written on change.
        self._last_targets: dict[str, np.ndarray] = {}
        self._last_quantity: dict[str, np.ndarray] = {}
        # symbol -> index of the universe a run records (the `symbols` it passes), per run.
        self._symbol_index: dict[str, tuple[Sequence[str], dict[str, int]]] = {}
        # Columnar buffers (storage/rows.py): chunks, turned into rows where they are written.
        self._signals: list[Any] = []
        self._orders: list[Any] = []
        self._fills: list[Any] = []
        self._positions: list[Any] = []
        self._equity: list[Any] = []
        self._checkpoints: list[Any] = []
        self._decisions: list[Any] = []
        self._buffers: dict[str, list[Any]] = {
            "signals": self._signals,
            "orders": self._orders,
            "fills": self._fills,
            "positions": self._positions,
            "equity": self._equity,
            "checkpoints": self._checkpoints,
            "decisions": self._decisions,
        }
        assert tuple(self._buffers) == BUFFERS
        # What a backtest's report needs of the orders and fills recorded (`keep_records`):
        # per run, each order's latest record by client order id (in the order the orders
        # were first recorded), and every fill chunk.
        self._kept_orders: dict[str, dict[Any, Record]] | None = None
        self._kept_fills: list[Any] | None = None
        # The run whose records are kept: the one begun after keep_records.
        self._kept_run: str | None = None
        # A live run's last stored event of its recent orders: (run id, client order id) ->
        # `rows.order_event`, at most EVENTS_KEPT (oldest out first); None until the run stores
        # an order intent (a replay never does). See `record_orders`.
        self._last_events: OrderedDict[tuple[str, str], tuple[Any, ...]] | None = None
        # Rows buffered per buffer, kept as the chunks arrive (maybe_flush reads it every bar).
        self._counts: dict[str, int] = dict.fromkeys(BUFFERS, 0)
        self._flush_lock = asyncio.Lock()
        # One spool replay at a time (`replay_spool`); it holds `_flush_lock` only around
        # the spool's bookkeeping, never while it waits on the database.
        self._replay_lock = asyncio.Lock()
        # Spooling (off unless the dialect calls _configure_spool).
        self._spool: Spool | None = None
        self.spool_target = ""
        # One writer per store instance; its batches are numbered in the order they are made.
        self.writer = f"{time.time_ns() // 1_000_000:013d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self.retry_base_s = 0.5
        self.retry_max_s = 30.0
        self.start_retry_s = 0.0
        self._down_at: float | None = None
        self.down_since: datetime | None = None
        self.last_error: str | None = None
        self.outages = 0
        self.replay_attempts = 0
        self.replayed_batches = 0
        self.skipped_batches = 0
        self._replay_task: asyncio.Task[None] | None = None
        self._replay_error: BaseException | None = None
        self._closing = False
        # The waits on the database under way (`_db_wait`): token -> (monotonic start, what),
        # and their timeouts, moved to `_stop_by` when the stop begins.
        self._waits: dict[int, tuple[float, str]] = {}
        self._wait_scopes: dict[int, asyncio.Timeout] = {}
        self._wait_tokens = itertools.count()
        # The event loop's time by which `stop()` is done with the database (None: running).
        self._stop_by: float | None = None
        # Test hook: called right after a replayed batch committed, before the spool learns
        # it is written (to simulate a crash there).
        self._after_replay_commit: Callable[[SpoolBatch], None] | None = None

    async def record_build(
        self,
        run_id: str,
        started_at: datetime,
        resumed_after: datetime | None,
        build: Mapping[str, Any],
    ) -> None:
        """The build this live process runs (schema.RUN_BUILDS), once it resumed the run."""
        from .schema import RUN_BUILDS, insert_sql, run_build_row

        after = None if resumed_after is None else self._encode_time(resumed_after)
        row = run_build_row(run_id, self._encode_time(started_at), after, build)
        async with self._flush_lock:
            await self._execute([(insert_sql(RUN_BUILDS, self.dialect), row)])

    async def record_adjustment(self, run_id: str, row: Mapping[str, Any]) -> None:
        """An operator's adjustment of the book (schema.ADJUSTMENTS, `POST /adopt`), written
        at once: the engine changes its book only once this is stored (an error here leaves
        the adjustment pending for the next bar). Not while the store spools (the database
        down): the bar would wait out its timeouts; it is applied once the database is back."""
        from .schema import ADJUSTMENTS, insert_sql

        if self.degraded:
            raise DatabaseUnavailable("the store writes to its spool (the database is down)")

        values = {**row, "run_id": run_id}
        for name in ("time", "asked_at"):
            if isinstance(values.get(name), datetime):
                values[name] = self._encode_time(values[name])
        args = tuple(values.get(c) for c in ADJUSTMENTS.insert_columns)
        async with self._flush_lock:
            await self._execute([(insert_sql(ADJUSTMENTS, self.dialect), args)])

    # ------------------------------------------------------------------ dialect primitives

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None:
        """Release the connection(s); called by stop() after the final flush."""

    @abstractmethod
    def _encode_time(self, t: datetime) -> Any:
        """A datetime as this database stores it."""

    @abstractmethod
    def _decode_time(self, v: Any) -> datetime:
        """A stored time back as a UTC-aware datetime."""

    @abstractmethod
    async def _write_batches(self, batches: Mapping[str, list[Row]]) -> None:
        """Write rows of several tables in one transaction (rows are `insert_columns`
        tuples). Raises StorageError."""

    @abstractmethod
    async def _execute(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run statements in one transaction. Raises StorageError."""

    @abstractmethod
    async def _query(self, sql: str, args: Sequence[Any]) -> list[Sequence[Any]]:
        """Rows of a SELECT. Raises StorageError."""

    async def _write_batch(self, batch: SpoolBatch, check_applied: bool) -> bool:
        """Spooling dialects: write the batch's rows and ops and upsert its writer's
        `spool_applied` row to `batch.seq`, in one transaction. With `check_applied`, a batch
        whose seq is not above the writer's `last_seq` is skipped (False). Raises
        DatabaseUnavailable when the database did not answer, StorageError otherwise."""
        raise NotImplementedError(f"{type(self).__name__} does not spool")

    def _where(self) -> str:
        """The database, for messages (credentials masked)."""
        return type(self).__name__

    def _stall_hint(self) -> str:
        """What a wait on this database that lasts may be, and its bound, for /ready."""
        return ""

    @contextlib.asynccontextmanager
    async def _db_wait(self, what: str) -> AsyncIterator[None]:
        """Around one wait on the database's answer (a dialect's write or query): `status()`
        shows it once it has lasted `STALLED_AFTER_S`, naming `what` (a hung server froze
        the engine behind its write in flight while /ready said "writing"). Once `stop()`
        has begun, it ends by `_stop_by`: DatabaseUnavailable, so a write goes to the spool
        (its outcome unknown: the spool's replay skips it if its marker is in)."""
        token = next(self._wait_tokens)
        self._waits[token] = (time.monotonic(), what)
        try:
            async with asyncio.timeout_at(self._stop_by) as scope:
                self._wait_scopes[token] = scope
                yield
        except TimeoutError as e:
            if not scope.expired():
                raise  # the dialect's own timeout
            raise DatabaseUnavailable(
                f"{what}: no answer from {self._where()} within the stop's {STOP_BUDGET_S:g} s"
            ) from e
        finally:
            del self._waits[token]
            self._wait_scopes.pop(token, None)

    def _begin_stop(self) -> None:
        """From now on every wait on the database ends by `STOP_BUDGET_S` from now, the
        ones under way included."""
        if self._stop_by is None:
            self._stop_by = asyncio.get_running_loop().time() + STOP_BUDGET_S
        for scope in self._wait_scopes.values():
            scope.reschedule(self._stop_by)

    def _stop_time_left(self) -> float | None:
        """Seconds left of the stop's budget (None: not stopping)."""
        if self._stop_by is None:
            return None
        return max(0.0, self._stop_by - asyncio.get_running_loop().time())

    def _stalled(self) -> tuple[float, str] | None:
        """The oldest wait under way, as (seconds, what), when it has lasted too long."""
        if not self._waits:
            return None
        since, what = min(self._waits.values())
        waited = time.monotonic() - since
        return (waited, what) if waited >= STALLED_AFTER_S else None

    # ------------------------------------------------------------------ spool

    def _configure_spool(
        self,
        directory: str | Path,
        target: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        start_retry_s: float = 0.0,
    ) -> None:
        """Turn spooling on (see the module docstring). `target` names the database in the
        spool's header: a spool directory shared by two databases never replays one's batches
        into the other."""
        self._configure_retry(retry_base_s, retry_max_s, start_retry_s)
        try:
            self._spool = Spool(
                Path(directory).expanduser().absolute(), self.writer, target, max_bytes
            )
        except ValueError as e:
            raise ConfigError(f"storage.spool_max_bytes: {e}") from e
        self.spool_target = target

    def _configure_retry(
        self, retry_base_s: float, retry_max_s: float, start_retry_s: float
    ) -> None:
        """How long `start()` waits for a database that is down, and its backoff: with or
        without a spool."""
        Backoff(retry_base_s, retry_max_s)  # validates
        if not math.isfinite(start_retry_s) or start_retry_s < 0:
            raise ConfigError(f"storage start_retry_s must be >= 0 seconds, got {start_retry_s!r}")
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.start_retry_s = start_retry_s

    @property
    def spool_dir(self) -> Path | None:
        return self._spool.directory if self._spool is not None else None

    @property
    def spool_left(self) -> tuple[int, Path] | None:
        """After `stop`: (batches, file) of a spool closed with batches the database never
        got (it was down at the stop), which the next start on the folder writes; else
        None. A run that ended so has its last rows (`end_run` included) in the file only."""
        sp = self._spool
        if sp is None or not sp.left_batches:
            return None
        return sp.left_batches, sp.path

    @property
    def degraded(self) -> bool:
        """Writing to the spool instead of the database."""
        sp = self._spool
        return self._down_at is not None or (sp is not None and sp.pending_batches > 0)

    def status(self) -> dict[str, Any]:
        """For /ready (`health.status_check` reads `ok` and `detail`): ok while every write
        reaches the database; degraded (ok=False) while batches are spooled; stalled (ok=False)
        while a write or query has waited `STALLED_AFTER_S` or more for the database's answer
        (what it is, for how long); failed when the spool cannot be replayed (a refused
        statement) or is full."""
        sp = self._spool
        stalled = self._stalled()
        where = self._where()
        st: dict[str, Any] = {
            "ok": True,
            "state": "ok",
            "database": where,
            # Rows go to the spool now, or batches wait in it (it said only that a spool
            # was configured: true with the database healthy and nothing spooled).
            "spooling": sp is not None and self.degraded,
            # A spool is configured (a live PostgreSQL store), and its file.
            "spool_enabled": sp is not None,
            "spool_path": str(sp.path) if sp is not None else None,
            "spooled_batches": sp.pending_batches if sp is not None else 0,
            "spooled_bytes": sp.pending_bytes if sp is not None else 0,
            "spool_max_bytes": sp.max_bytes if sp is not None else None,
            "oldest_spooled_at": None,
            "down_since": self.down_since.isoformat() if self.down_since else None,
            "last_error": self.last_error,
            "outages": self.outages,
            "replay_attempts": self.replay_attempts,
            "replayed_batches": self.replayed_batches,
            "pending_rows": sum(self._counts.values()),
            # The oldest wait on the database's answer under way, once it is stalled.
            "waiting_s": round(stalled[0], 1) if stalled else None,
            "waiting_for": stalled[1] if stalled else None,
        }
        if sp is not None and sp.oldest is not None:
            st["oldest_spooled_at"] = datetime.fromtimestamp(sp.oldest, UTC).isoformat()
        if self._replay_error is not None:
            st.update(ok=False, state="failed")
            st["detail"] = (
                f"database {where}: replaying the spool failed, the operator must act: "
                f"{self._describe(self._replay_error)}"
            )
        elif stalled is not None:
            st.update(ok=False, state="stalled")
            spooled = (
                f"; {sp.pending_batches} batches spooled to {sp.path}"
                if sp is not None and sp.pending_batches
                else ""
            )
            st["detail"] = (
                f"database {where}: {stalled[1]} has waited {stalled[0]:.0f} s for an answer"
                f"{self._stall_hint()}; rows are kept meanwhile{spooled}"
            )
        elif self.degraded:
            assert sp is not None
            since = f" since {st['down_since']}" if st["down_since"] else ""
            st.update(ok=False, state="degraded")
            st["detail"] = (
                f"database {where} unreachable{since} ({self.last_error}); "
                f"{sp.pending_batches} batches ({sp.pending_bytes} bytes, oldest "
                f"{st['oldest_spooled_at']}) spooled to {sp.path}, max {sp.max_bytes} bytes; "
                "retrying"
            )
        else:
            st["detail"] = f"database {where} writing"
        return st

    def _describe(self, exc: BaseException) -> str:
        return mask_text(f"{type(exc).__name__}: {exc}")

    def _mark_down(self, exc: BaseException) -> None:
        self.last_error = self._describe(exc)
        if self._down_at is None:
            self.outages += 1
            self._down_at = time.monotonic()
            self.down_since = datetime.now(UTC)
            log.warning(
                "storage.database.down",
                database=self._where(),
                error=self.last_error,
                spool=str(self._spool.path) if self._spool is not None else None,
                hint="writes go to the local spool and are replayed when the database is back",
            )

    def _mark_up(self) -> None:
        if self._down_at is not None:
            log.info(
                "storage.database.recovered",
                database=self._where(),
                down_for_s=round(time.monotonic() - self._down_at, 3),
                replay_attempts=self.replay_attempts,
                replayed_batches=self.replayed_batches,
            )
        self._down_at = None
        self.down_since = None
        self.last_error = None

    def _replay_failed(self) -> StorageError:
        sp = self._spool
        assert sp is not None and self._replay_error is not None
        return StorageError(
            f"replaying the storage spool {sp.path} into {self._where()} failed: "
            f"{self._describe(self._replay_error)}; {sp.pending_batches} batches stay in the "
            "spool (nothing was dropped): fix the cause, then restart (the spool is replayed "
            "at start)"
        )

    async def _commit(
        self, tables: Mapping[str, list[Row]], ops: Sequence[tuple[str, tuple[Any, ...]]] = ()
    ) -> None:
        """Write one batch, or spool it when the database is unreachable. The caller holds
        `_flush_lock`. Raises StorageError (nothing written, nothing spooled)."""
        sp = self._spool
        if sp is None:
            if tables:
                await self._write_batches(tables)
            if ops:
                await self._execute([(OPS[name](self.dialect), args) for name, args in ops])
            return
        if self._replay_error is not None:
            raise self._replay_failed()
        self._seq += 1
        batch = SpoolBatch(self.writer, self._seq, time.time(), dict(tables), tuple(ops))
        if sp.pending_batches == 0:
            try:
                await self._write_batch(batch, check_applied=False)
                if self._down_at is not None:
                    self._mark_up()
                return
            except DatabaseUnavailable as e:
                # Nothing committed, or (the connection lost at COMMIT) the commit's outcome
                # unknown: the spool's replay skips the batch if its marker is in.
                self._mark_down(e)
        # Spooled batches go first: this one waits behind them. Synchronous from here on, so
        # a cancellation cannot separate "in the spool" from "taken out of the buffers".
        size = sp.append(batch)
        log.debug("storage.spool.appended", batch=batch.id, rows=batch.rows, bytes=size)
        self._ensure_replaying()

    def _ensure_replaying(self) -> None:
        if self._closing or self._replay_error is not None:
            return
        if self._replay_task is None or self._replay_task.done():
            self._replay_task = asyncio.get_running_loop().create_task(
                self._replay_loop(), name="storage.spool.replay"
            )

    async def _replay_loop(self) -> None:
        sp = self._spool
        assert sp is not None
        backoff = Backoff(self.retry_base_s, self.retry_max_s)
        while sp.pending_batches and not self._closing:
            await asyncio.sleep(backoff.next())
            self.replay_attempts += 1
            try:
                await self.replay_spool()
            except DatabaseUnavailable as e:
                self.last_error = self._describe(e)
                log.debug("storage.spool.replay_retry", error=self.last_error)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Not an outage: retrying would fail the same way. The next flush raises it.
                log.error(
                    "storage.spool.replay_failed",
                    spool=str(sp.path),
                    database=self._where(),
                    error=self._describe(e),
                    batches=sp.pending_batches,
                )
                return

    async def replay_spool(self) -> int:
        """Write every spooled batch, oldest first, each in its own transaction (new batches
        spooled meanwhile included), then empty the spool: the number written (batches
        already in the database are skipped). Raises DatabaseUnavailable when the database
        still does not answer.

        One replay at a time (`_replay_lock`: the background loop, `stop` and a run's
        `_drained` may each call this). The database's answer is awaited outside
        `_flush_lock`, which guards only the spool's bookkeeping before and after each
        write: holding it through the write stalled every flush of the engine for up to
        `storage.command_timeout_s` per attempt while the database hung, so a live run went
        in bursts. A flush meanwhile finds the batch being written still pending, so it
        appends its own batch to the spool behind it (`_commit`): the order is kept, and
        nothing is written twice (a batch leaves the spool only once committed; one whose
        commit's outcome is unknown is skipped by its `spool_applied` marker)."""
        sp = self._spool
        if sp is None:
            return 0
        written = skipped = 0
        t0 = time.monotonic()
        try:
            async with self._replay_lock:
                while True:
                    async with self._flush_lock:
                        batch = sp.next_pending()
                        if batch is None:
                            sp.reset()
                            break
                    applied = await self._write_batch(batch, check_applied=True)
                    if self._after_replay_commit is not None:
                        self._after_replay_commit(batch)
                    async with self._flush_lock:
                        # `batch` is still the oldest pending one: only this replay (under
                        # `_replay_lock`) takes batches out, and flushes only append.
                        sp.mark_applied()
                        # Counted per batch: a flush can run after the last batch and log
                        # the recovery before this loop ends.
                        if applied:
                            written += 1
                            self.replayed_batches += 1
                        else:
                            skipped += 1
                            self.skipped_batches += 1
        except (DatabaseUnavailable, asyncio.CancelledError):
            raise
        except Exception as e:
            # Not an outage: retrying would fail the same way. Writes raise it from now on.
            self._replay_error = e
            raise
        if written or skipped:
            log.info(
                "storage.spool.replayed",
                spool=str(sp.path),
                batches=written,
                already_written=skipped,
                seconds=round(time.monotonic() - t0, 3),
            )
        self._replay_error = None
        self._mark_up()
        return written

    async def _replay_orphans(self) -> None:
        """Write the spools of processes that died (oldest first), then delete them."""
        sp = self._spool
        if sp is None:
            return
        full: SpoolDirFull | None = None
        try:
            sp.check_usable()
        except SpoolDirFull as e:
            # The folder's own spools may be what fills its disk (a spool that grew until
            # the disk was full stopped the last process): they are replayed first, which
            # needs no space, and the folder probed again once they are gone. Probing
            # first refused the start until the space was freed by hand, and its advice (a
            # folder elsewhere) left the spool unwritten.
            if not spool_files(sp.directory):
                raise
            full = e
        try:
            orphans: list[Orphan] = claim_orphans(sp.directory)
        except OSError as e:
            raise StorageError(
                f"cannot read the storage spool directory {sp.directory}: {type(e).__name__}: {e}"
            ) from e
        try:
            for orphan in orphans:
                if orphan.target != sp.target:
                    log.warning(
                        "storage.spool.other_database",
                        path=str(orphan.path),
                        spool_target=orphan.target,
                        database=sp.target,
                        hint="this spool belongs to another database: left alone",
                    )
                    orphan.release()
                    continue
                await self._refuse_stale(orphan)
                written = skipped = 0
                last: dict[str, int] = {}  # writer -> its last batch in the file
                for batch in orphan.batches():
                    last[batch.writer] = max(batch.seq, last.get(batch.writer, 0))
                    try:
                        async with self._flush_lock:
                            applied = await self._write_batch(batch, check_applied=True)
                    except DatabaseUnavailable:
                        raise  # start() retries
                    except StorageError as e:
                        raise StorageError(
                            f"replaying the storage spool {orphan.path}, left by a process "
                            f"that died, failed at batch {batch.id}: {e}. Fix the cause and "
                            "start again; or move the file aside to start without it (its "
                            "rows are then not in the database)"
                        ) from e
                    if self._after_replay_commit is not None:
                        self._after_replay_commit(batch)
                    written += applied
                    skipped += not applied
                orphan.remove()
                self.replayed_batches += written
                self.skipped_batches += skipped
                log.info(
                    "storage.spool.orphan_replayed",
                    path=str(orphan.path),
                    batches=written,
                    already_written=skipped,
                )
                for writer, seq in last.items():
                    await self._forget_writer(writer, seq)
        finally:
            for orphan in orphans:
                orphan.release()
        if full is not None:
            sp.check_usable()  # the space the replayed spools took is free again
            log.info(
                "storage.spool.space_freed",
                spool_dir=str(sp.directory),
                error=self._describe(full.__cause__ or full),
                hint="the folder's disk was full; its spools are written, and the folder "
                "takes a file again",
            )

    async def _refuse_stale(self, orphan: Orphan) -> None:
        """Raise SpoolStale when the batches of `orphan` not yet in the database are older
        than the database's checkpoint of a run they write: nothing of the file is written.

        A spool is replayed at the next start on its folder, whenever that is. If the run was
        continued meanwhile without it (a start with another `storage.spool_dir`, or from
        another working folder with a relative one) and has written later bars, the spool's
        rows belong to bars the database already has from that continuation: written, its
        checkpoint would replace the later one (the next start resumes from it and trades a
        stretch of bars again), its `end_run` would overwrite the run's summary.

        Refused, not skipped: the file may hold rows the continuation never made (orders sent
        and filled before the process died), so dropping it could lose the record of money
        spent, and writing it rolls money back. Refusing loses nothing: the file stays where
        it is, and the operator moves it aside (and reads it) to start without it.

        Older means: the spool's first checkpoint of the run not yet written is of a bar
        before the stored checkpoint's bar; or of the same bar, or the spool writes the run
        without a checkpoint (an `end_run` alone, an intent flushed before its bar's rows),
        and the stored checkpoint was written after the spool's first batch of the run was
        made (wall clocks: one host's spool folder). A process that spools writes every
        later batch to its spool, so a checkpoint stored after its first spooled batch is
        another process's: the run went on without the spool. The same bar stored before
        is the spool writer's own last checkpoint: an outage's first batch is often the
        next bar's order intents, which carry that bar's checkpoint again (with the
        cancels about to be sent), and such a spool, left by a stop during the outage or an
        exit on a full spool disk, was refused although it only continues the database.
        Batches already in (`spool_applied`, a replay that died after a commit) are not
        compared: they are skipped anyway."""
        applied: dict[str, int] = {}  # writer -> its last batch in the database
        first_bar: dict[str, datetime] = {}  # run -> the spool's first checkpoint bar
        first_made: dict[str, float] = {}  # run -> when the first batch writing it was made
        for batch in orphan.batches():
            if batch.writer not in applied:
                found = await self._query(applied_seq_sql(self.dialect), (batch.writer,))
                applied[batch.writer] = int(found[0][0]) if found else 0
            if batch.seq <= applied[batch.writer]:
                continue
            runs = {
                str(row[0])
                for name, rows in batch.tables.items()
                if name in RUN_TABLES
                for row in rows
            }
            runs.update(str(args[-1]) for name, args in batch.ops if name == "end_run")
            for run_id in runs:
                first_made.setdefault(run_id, batch.created)
            for row in batch.tables.get("checkpoints", ()):
                first_bar.setdefault(str(row[0]), self._decode_time(row[1]))
        for run_id, made in first_made.items():
            stored = await self.fetch("checkpoints", run_id)
            if not stored:
                continue
            bar, written = stored[-1]["bar_time"], stored[-1]["written_at"]
            spooled = first_bar.get(run_id)
            made_at = datetime.fromtimestamp(made, UTC)
            if spooled is not None and spooled > bar:
                continue
            if spooled is None or spooled == bar:
                # Stored before the spool began: the spool's writer's own (or an earlier)
                # checkpoint, which the spool continues. One of the same bar and of unknown
                # age (no written_at) is taken for another process's state of the bar.
                if written is None and spooled is None:
                    continue
                if written is not None and made_at >= written:
                    continue
            if spooled is None:
                what = f"it holds no checkpoint of the run, and its first batch was made {made_at}"
            elif spooled == bar:
                what = (
                    f"its first checkpoint not yet written is of the bar {spooled}, as the "
                    "database's, which was written after this spool's first batch of the run "
                    f"was made ({made_at})"
                )
            else:
                what = f"its first checkpoint not yet written is of the bar {spooled}"
            raise SpoolStale(
                f"the storage spool {orphan.path}, left by an earlier process, is older "
                f"than what {self._where()} holds of run {run_id!r}: {what}, the database's "
                f"checkpoint is of the bar {bar} (written {written}). The run was continued "
                "without this spool (a start with another storage.spool_dir?); writing it "
                "would set the run back and trade the bars since again, so nothing of it was "
                f"written. Move the file out of {orphan.path.parent} (keep it: it may hold "
                "orders and fills of that process the database lacks) and start again"
            )

    async def _open_with_retry(self, connect: Callable[[], Awaitable[None]]) -> None:
        """`connect()` (which raises DatabaseUnavailable while the database does not answer),
        then replay orphaned spools; retried with backoff for up to `start_retry_s`."""
        self._closing = False
        self._stop_by = None
        deadline = time.monotonic() + self.start_retry_s
        backoff = Backoff(self.retry_base_s, self.retry_max_s)
        attempts = 0
        while True:
            attempts += 1
            try:
                await connect()
                await self._replay_orphans()
                waiting_for("database", None)
                return
            except DatabaseUnavailable as e:
                waiting_for("database", self._describe(e))  # (it names the database)
                delay = backoff.next()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if attempts == 1:
                        raise
                    raise DatabaseUnavailable(
                        f"{e} (gave up after {attempts} attempts in "
                        f"{self.start_retry_s:g} s, storage.start_retry_s)"
                    ) from e
                log.warning(
                    "storage.start.retry",
                    database=self._where(),
                    attempt=attempts,
                    error=self._describe(e),
                    retry_in_s=round(min(delay, remaining), 3),
                )
                await asyncio.sleep(min(delay, remaining))

    async def _forget_writer(self, writer: str, last_seq: int) -> None:
        """Delete `writer`'s `spool_applied` row, once no batch of it can be replayed again:
        the marker exists only to skip a spooled batch that is already in, and without it
        the table gained a row at every start of a daemon and never lost one (a crash-looping
        unit: a row per restart).

        Called in two cases where that is certain, each after the spool is gone: this store's
        own writer at a clean close (`stop`), once everything it made is written and its
        spool is empty (a later batch of this store, if it starts again, has a higher seq and
        upserts the row anew); and a writer that died, once its spool file has been replayed
        and removed (`_replay_orphans`: nobody held its lock, so its process is gone). The
        file goes first: a crash between the two leaves the row, never a spool without it.
        `last_seq` guards the second case: a row that has moved past the file's last batch
        belongs to a writer that wrote on since, and stays.

        Not pruned: the row of a writer killed while its spool was empty (no file names it).
        Its process cannot be told from a live one from here: another daemon on the same
        database, perhaps on another host with another spool directory, whose spooled batch
        of unknown outcome would be written twice without its row. Such rows (one per hard
        kill, not per start) are the price of never doubling a row.

        Best effort: a failure is logged and leaves the row (it is harmless)."""
        try:
            async with self._flush_lock:
                await self._execute([(forget_writer_sql(self.dialect), (writer, last_seq))])
        except StorageError as e:
            log.warning(
                "storage.spool.marker_left",
                writer=writer,
                database=self._where(),
                error=self._describe(e),
                hint="the spool_applied row stays; it is harmless and may be deleted by hand "
                "once this writer's spool file is gone",
            )

    async def _stop_spool(self) -> None:
        self._closing = True
        task, self._replay_task = self._replay_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._spool is not None:
            # Not under a replay another task runs (a run's `_drained`): its batch in flight
            # must find the spool open when it commits. Bounded: every wait on the database
            # ends by the stop's budget (`_begin_stop`).
            async with self._replay_lock:
                self._spool.close()

    # ------------------------------------------------------------------ lifecycle

    async def stop(self) -> None:
        """Write what is buffered (to the spool if the database is down), try once more to
        write the spool, then close; a spool still not written stays on disk for the next
        start (`storage.stop.left_in_spool` says so). With everything written, this writer's
        `spool_applied` row is deleted (`_forget_writer`). With a spool, the database gets
        `STOP_BUDGET_S` in all (a hung one held a SIGTERM for about 120 s)."""
        sp = self._spool
        if sp is not None:
            self._begin_stop()
        try:
            if sp is not None and sp.pending_batches:
                # Spooled batches first (the database may be back): new rows go after them.
                try:
                    await self.replay_spool()
                except StorageError as e:
                    log.warning(
                        "storage.stop.spool_not_written",
                        spool=str(sp.path),
                        batches=sp.pending_batches,
                        error=self._describe(e),
                    )
            await self.flush()
            if (
                sp is not None
                and self._seq
                and not sp.pending_batches
                and self._replay_error is None
                and self._down_at is None
            ):
                await self._forget_writer(self.writer, self._seq)
        finally:
            try:
                if sp is not None and sp.pending_batches:
                    log.warning(
                        "storage.stop.left_in_spool",
                        spool=str(sp.path),
                        batches=sp.pending_batches,
                        bytes=sp.pending_bytes,
                        database=self._where(),
                        error=self.last_error,
                        hint="written to the database by the next start (nothing is lost)",
                    )
                await self._stop_spool()
            finally:
                await self._close()

    async def _drained(self) -> None:
        """Before reading or rewriting a run: every spooled batch is in the database."""
        sp = self._spool
        if sp is not None and sp.pending_batches:
            await self.replay_spool()

    # ------------------------------------------------------------------ runs and bars

    async def begin_run(self, run: RunInfo) -> None:
        """Record the run; a run_id seen before has its earlier rows deleted first."""
        self._last_targets.pop(run.run_id, None)
        self._last_quantity.pop(run.run_id, None)
        self._last_events = None
        self._keep_for(run)
        await self.flush()
        await self._drained()
        d = self.dialect
        if run.mode != "live":
            stored = await self._query(select_run_sql(TABLES["runs"], d), (run.run_id,))
            if stored and stored[0][1] == "live":
                # A live run's record is its restart point (checkpoints, order intents):
                # a replay that reuses its id must not wipe it.
                raise ConfigError(
                    f"run {run.run_id!r} in {self._where()} is a live run's record: a "
                    f"{run.mode} starts by deleting its run id's rows, which would erase that "
                    "run's orders, fills and checkpoints; give this run another run.run_id "
                    "(an empty one derives its own from the config)"
                )
        stmts: list[tuple[str, Sequence[Any]]] = [
            (delete_run_sql(TABLES[name], d), (run.run_id,)) for name in RUN_TABLES
        ]
        row = (
            run.run_id,
            run.mode,
            self._encode_time(run.started_at),
            None,
            run.config_json,
            to_json(list(run.symbols)),
            float(run.initial_capital),
            None,
        )
        stmts.append((insert_sql(TABLES["runs"], d), row))
        async with self._flush_lock:  # one transaction at a time on the connection
            await self._execute(stmts)

    async def live_runs_named(self, prefix: str) -> list[str]:
        """The ids of the live runs in this store that start with `prefix`, in order."""
        return sorted(run_id for run_id, _ in await self.live_run_configs(prefix))

    async def live_run_configs(self, prefix: str) -> list[tuple[str, str | None]]:
        """(run id, stored public configuration) of the live runs whose id starts with
        `prefix`, the least recently active first: what `run_continuation` compares a live
        start with."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # By last activity (a continued run's start time stays its first): the checkpoint
        # written last, else the start.
        runs, checkpoints = TABLES["runs"].name, TABLES["checkpoints"].name
        sql = (
            f"SELECT r.run_id, r.config_json FROM {runs} r LEFT JOIN {checkpoints} c "
            f"ON c.run_id = r.run_id WHERE r.mode = 'live' AND r.run_id LIKE "
            f"{param(self.dialect)} ESCAPE '\\' "
            "ORDER BY COALESCE(c.written_at, r.started_at), r.run_id"
        )
        rows = await self._query(sql, (pattern,))
        return [(str(r[0]), None if r[1] is None else str(r[1])) for r in rows]

    async def last_fill_time(self, run_id: str) -> datetime | None:
        """The bar of the run's last stored fill (its `booked_at`, else its time, as the
        audit log dates a fill line), None without fills: what a resume compares the audit
        log with (`Engine._warn_if_audit_behind`). One indexed read, not the run's fills."""
        fills = TABLES["fills"].name
        sql = (
            f"SELECT MAX(COALESCE(booked_at, time)) FROM {fills} "
            f"WHERE run_id = {param(self.dialect)}"
        )
        rows = await self._query(sql, (run_id,))
        value = rows[0][0] if rows else None
        return None if value is None else self._decode_time(value)

    async def resume_run(self, run: RunInfo) -> ResumePoint | None:
        """A live run continues where it stopped: None (and a new run row) when this run id
        was never stored; else its last checkpoint, after the rows of any later, interrupted
        bar are removed (that bar is processed again) and the run is marked running again.
        Nothing of the run is deleted up to its checkpoint."""
        self._last_targets.pop(run.run_id, None)
        self._last_quantity.pop(run.run_id, None)
        self._last_events = None
        self._keep_for(run)
        await self.flush()
        await self._drained()
        d = self.dialect
        stored = await self._query(select_run_sql(TABLES["runs"], d), (run.run_id,))
        if not stored:
            await self.begin_run(run)
            return None
        if stored[0][1] != run.mode:
            # A backtest's record has no checkpoint: continuing it, every order it placed
            # would look like an intent stored just before a crash (to look up at the
            # broker), and the live rows would mix with the backtest's.
            raise ConfigError(
                f"run {run.run_id!r} in {self._where()} is a {stored[0][1]}'s record, not a "
                f"{run.mode} run's: a {run.mode} run cannot continue it; give this run another "
                "run.run_id (an empty one derives its own from the config)"
            )
        found = await self.fetch("checkpoints", run.run_id)
        bar_time = found[-1]["bar_time"] if found else None
        state = found[-1]["state"] if found else None
        through = booked_through(bar_time, state)
        after = through if through is not None else datetime(1, 1, 1, tzinfo=UTC)
        enc = self._encode_time(after)
        # Only the rows the resume keeps are read, here and below: reading the run's whole
        # history (every order, event and signal) grew each restart with the run's age.
        t = TABLES["orders"]
        sql = select_run_sql(t, d, after="created_at")
        unconfirmed = tuple(self._decode_taking(t, await self._query(sql, (run.run_id, enc))))
        _check_intents(run.run_id, bar_time, unconfirmed)
        before = self._decode_taking(TABLES["runs"], stored[:1])[0]
        summary = before.get("summary")
        stopped = before.get("ended_at") is not None and not (
            isinstance(summary, Mapping) and summary.get("failed")
        )
        stmts: list[tuple[str, Sequence[Any]]] = [
            (delete_after_sql(TABLES[name], column, d), (run.run_id, enc))
            for name, column in (RESUME_TIME_AFTER_STOP if stopped else RESUME_TIME).items()
        ]
        stmts.append((reopen_run_sql(d), (run.run_id,)))
        async with self._flush_lock:
            await self._execute(stmts)
        # (After the delete: the events the run keeps, its acknowledgements of the last bar
        # included, which a broker's clock dates after the checkpoint.)
        t = TABLES["order_events"]
        kept = await self._query(select_last_events_sql(d), (run.run_id, EVENTS_KEPT))
        self._last_events = _kept_events(run.run_id, self._decode_taking(t, kept))
        if state is not None:
            # Rows are written on change: continue from the checkpoint's book and from the
            # decisions in force (the last recorded target of each symbol, which a hold does
            # not change: not the checkpoint's targets), as the run would have without a stop.
            book = state.get("portfolio", {})
            # The quantities of the last bar's `positions` rows: a clean stop's checkpoint
            # holds fills booked after that bar (`positions_recorded` keeps the bar's), whose
            # row the next bar writes.
            recorded = state.get("positions_recorded", book.get("quantity"))
            if recorded is not None:
                self._last_quantity[run.run_id] = np.asarray(recorded, dtype=np.float64)
            self._last_targets[run.run_id] = await self._targets_in_force(run)
        return ResumePoint(
            bar_time, state, unconfirmed, stopped_cleanly=stopped, booked_through=through
        )

    async def _targets_in_force(self, run: RunInfo) -> np.ndarray:
        """Per symbol of the run, its last recorded target weight that is a number (0
        without one)."""
        index = {s: i for i, s in enumerate(run.symbols)}
        out = np.zeros(len(run.symbols), dtype=np.float64)
        for symbol, w in await self._query(select_last_targets_sql(self.dialect), (run.run_id,)):
            i = index.get(symbol)
            if i is not None:
                out[i] = float(w)
        return out

    def record_checkpoint(self, run_id: str, bar_time: datetime, state: Mapping[str, Any]) -> None:
        """The run's state after `bar_time`, written with that bar's rows (latest wins)."""
        # Encoded here, on the engine's thread: the state holds plugin values that may change
        # at the next bar, while the write may happen on another thread. One row per run.
        row = (run_id, bar_time, to_json(state), datetime.now(UTC))
        for k, r in enumerate(self._checkpoints):
            if r[0] == run_id:
                self._checkpoints[k] = row
                return
        self._checkpoints.append(row)
        self._counts["checkpoints"] += 1

    def record_decision(
        self, run_id: str, time: datetime, source: str, record: Mapping[str, Any]
    ) -> None:
        """What a live bar decided and from what (see schema.DECISIONS)."""
        self._decisions.append((run_id, time, source, to_json(record)))
        self._counts["decisions"] += 1

    async def end_run(self, run_id: str, summary: Mapping[str, Any]) -> None:
        await self.flush()
        ended = self._encode_time(datetime.now(UTC))
        async with self._flush_lock:
            await self._commit({}, [("end_run", (to_json(summary), ended, run_id))])

    async def write_bars(self, symbols: Sequence[str], bars: Sequence[CrossSection]) -> None:
        """Upsert the bars of symbols with a bar (finite close), in batches; re-writing the
        same bars is idempotent and a re-fetched bar replaces the stored one."""
        rows: list[Row] = []
        for cs in bars:
            idx = np.flatnonzero(~np.isnan(cs.close))
            if idx.size == 0:
                continue
            t = self._encode_time(cs.time)
            cols = [
                np.asarray(a, dtype=np.float64)[idx].tolist()
                for a in (cs.open, cs.high, cs.low, cs.close, cs.volume, cs.split, cs.dividend)
            ]
            for i, o, h, lo, c, v, s, dv in zip(idx.tolist(), *cols, strict=True):
                rows.append((symbols[i], t, o, h, lo, c, v, s, dv))
            if len(rows) >= self.batch_size:
                async with self._flush_lock:
                    await self._commit({"bars": rows})
                rows = []
        if rows:
            async with self._flush_lock:
                await self._commit({"bars": rows})

    # ------------------------------------------------------------------ hot path

    def _indices(self, run_id: str, symbols: Sequence[str], names: Iterable[str]) -> list[int]:
        cached = self._symbol_index.get(run_id)
        if cached is None or cached[0] is not symbols:
            cached = self._symbol_index[run_id] = (symbols, {s: i for i, s in enumerate(symbols)})
        index = cached[1]
        return [index[s] for s in names]

    def record_signals(
        self,
        run_id: str,
        time: datetime,
        symbols: Sequence[str],
        scores: np.ndarray,
        targets: np.ndarray,
        source: str = "",
        *,
        ordered: Collection[str] = (),
        weights: np.ndarray | None = None,
    ) -> None:
        """Mode "decisions": a row for each symbol whose decision changed, so the table is the
        history of decisions, not a copy of every bar. A symbol has a row when the bar's plan
        orders it (`ordered`: the symbols of the plan's orders), or when its target differs
        from the last one recorded for it, unless the target is a hold: equal to the symbol's
        current weight (`weights`, the book's weights the plugins saw), which is how sizing
        and risk plugins say "keep what you have" (no bar, a drawdown block, stale data) and
        which drifts with the price every bar. A hold that takes the target to or from zero
        still has a row. The last recorded target stays in force until the symbol's next
        row (see README, "Reading a run back"). "all": also every finite score at every bar;
        "none": nothing. Targets that are not finite have no row."""
        mode = self.signals_mode
        if mode == "none":
            return
        last = self._last_targets.get(run_id)
        if last is None or last.shape != targets.shape:
            last = self._last_targets[run_id] = np.zeros_like(targets, dtype=np.float64)
        idx: np.ndarray | None = None
        if mode == "decisions":
            idx = self._decisions_few(run_id, symbols, targets, last, ordered, weights)
        if idx is None:
            finite = np.isfinite(targets)
            mask = finite & (targets != last)
            if weights is not None and count_nonzero(mask):
                # A hold is no decision, unless it crosses zero (a position appears or ends).
                mask &= (targets != weights) | ((targets == 0.0) != (last == 0.0))
            if ordered:
                mask[self._indices(run_id, symbols, ordered)] = True
                mask &= finite
            if mode == "all":
                mask |= np.isfinite(scores)
            idx = mask.nonzero()[0]
            if idx.size == 0:
                return
            copyto(last, targets, where=mask & finite)
            chosen = targets[idx]
        elif idx.size == 0:
            return
        else:
            chosen = targets[idx]  # a copy (fancy indexing): the row's own, and last's
            last[idx] = chosen
        self._signals.append((run_id, time, symbols, idx, (scores[idx], chosen), (source,)))
        self._counts["signals"] += idx.size

    def _decisions_few(
        self,
        run_id: str,
        symbols: Sequence[str],
        targets: np.ndarray,
        last: np.ndarray,
        ordered: Collection[str],
        weights: np.ndarray | None,
    ) -> np.ndarray | None:
        """The rows of mode "decisions" (the rule of `record_signals`, whose numpy form is
        the definition) when few targets differ from the last recorded ones, as on nearly
        every bar: the held symbols, whose holds drift, and the few that trade. A dozen
        Python float comparisons cost less than the dozen array operations of the full
        form (each about a microsecond whatever the width), with the same outcome: Python
        floats compare as float64 does. None when there are too many (the full form)."""
        changed = (targets != last).nonzero()[0]  # NaN differs from everything: included
        if changed.size > _FEW:
            return None
        rows: set[int] = set()
        if changed.size:
            cand = changed.tolist()
            new = targets[changed].tolist()
            old = last[changed].tolist()
            held = weights[changed].tolist() if weights is not None else None
            isfinite = math.isfinite
            for k, i in enumerate(cand):
                t = new[k]
                if not isfinite(t):
                    continue
                # A hold is no decision, unless it crosses zero (a position appears or ends).
                if held is not None and t == held[k] and (t == 0.0) == (old[k] == 0.0):
                    continue
                rows.add(i)
        if ordered:
            for i in self._indices(run_id, symbols, ordered):
                if math.isfinite(targets[i]):
                    rows.add(i)
        return np.array(sorted(rows), dtype=np.intp)

    def record_orders(
        self,
        run_id: str,
        orders: Sequence[Order],
        *,
        intent: bool = False,
        booked_at: datetime | None = None,
    ) -> list[Record] | None:
        """Upsert each order's current state and append it to the order's event history.
        Returns the records kept (one tuple per order, `rows.ORDER_VALUES`), which the
        engine hands to the audit log: see `AuditSink.orders`.

        `intent`: orders a live run stores before it sends them (so that a restarted process
        carries them out). From a run's first intent on (a live run; a replay stores none,
        and its rows are as they were), a state equal to the last event stored for its order
        (same status, filled quantity, reason and time) updates the `orders` row without
        another `order_events` row: the intent and its acknowledgement, or a fill seen in the
        submit's answer and again in the order's update, were two equal rows (about 30% of a
        long live run's events). order_events then holds each state once, as a replay has
        it. The memory is bounded (EVENTS_KEPT orders, oldest out first: an order that old
        repeating a state is one row more).

        `booked_at`: the bar at which a live run records these states, kept with their
        `order_events` rows: a resume deletes the rows after its checkpoint by it (an
        order's own time is the broker's clock, hours after a daily bar's label)."""
        if not orders:
            return None
        records = ORDER_RECORDS(orders)
        if intent and self._last_events is None:
            self._last_events = OrderedDict()
        if self._last_events is not None:
            self._record_live(run_id, records, booked_at)
        else:
            self._add_orders((run_id, records, True, booked_at))
        return records

    def _add_orders(self, chunk: OrderChunk) -> None:
        """An order chunk `(run_id, records, with events, booked_at)` buffered (and kept,
        if kept)."""
        self._orders.append(chunk)
        self._counts["orders"] += len(chunk[1])
        kept = self._kept_orders
        if kept is not None:
            # Only an order's latest state is in the report (as the upsert keeps it), made
            # as the states arrive: a dict of the run's states built after the last bar
            # (17,000 records at 100 symbols, scattered over the heap by then) cost 16 ms of
            # the report, on the replay's clock; here a record is in the cache.
            latest = kept.get(chunk[0])
            if latest is None:
                latest = kept[chunk[0]] = {}
            for r in chunk[1]:
                latest[r[_CID]] = r

    def _record_live(
        self, run_id: str, records: list[Record], booked_at: datetime | None = None
    ) -> None:
        """`record_orders` in a live run: the states that repeat their order's last event go
        in chunks without events, in the order given (runs of records alike in that make
        one chunk each), so that the `orders` row ends on the last state given."""
        last = self._last_events
        assert last is not None
        chunks: list[OrderChunk] = []
        for r in records:
            key = (run_id, r[_CID])
            event = order_event(r)
            new = last.get(key) != event
            last[key] = event
            last.move_to_end(key)
            if not chunks or chunks[-1][2] != new:
                chunks.append((run_id, [], new, booked_at))
            chunks[-1][1].append(r)
        while len(last) > EVENTS_KEPT:
            last.popitem(last=False)
        for chunk in chunks:
            self._add_orders(chunk)

    def record_fills(
        self, run_id: str, fills: Sequence[Fill], booked_at: datetime | None = None
    ) -> list[Record] | None:
        """`booked_at`: the bar at which the engine booked them (default: their own time).
        Returns the records kept, as `record_orders` does."""
        if not fills:
            return None
        records = FILL_RECORDS(fills)
        chunk = (run_id, booked_at, records)
        self._fills.append(chunk)
        self._counts["fills"] += len(fills)
        if self._kept_fills is not None:
            self._kept_fills.append(chunk)
        return records

    def record_positions(
        self,
        run_id: str,
        time: datetime,
        symbols: Sequence[str],
        quantity: np.ndarray,
        avg_price: np.ndarray,
        mark: np.ndarray,
    ) -> None:
        """A row whenever a symbol's quantity changes (a close is a row with quantity 0):
        the position history, from which the holding at any time is the last row at or
        before it. Equity and exposure per bar are in the equity table."""
        last = self._last_quantity.get(run_id)
        if last is None or last.shape != quantity.shape:
            last = self._last_quantity[run_id] = np.zeros_like(quantity, dtype=np.float64)
        changed = quantity != last  # NaN differs from everything: included
        if not count_nonzero(changed):  # a bar without fills: a count, not nonzero()
            return
        idx = changed.nonzero()[0]
        q = quantity[idx]  # a copy (fancy indexing): the row's own
        finite = np.isfinite(q)  # checked on the few, not on every symbol
        if count_nonzero(finite) < idx.size:
            idx, q = idx[finite], q[finite]
            if not idx.size:
                return
        last[idx] = q
        cols = (q, avg_price[idx], mark[idx])
        self._positions.append((run_id, time, symbols, idx, cols, ()))
        self._counts["positions"] += idx.size

    def record_equity(
        self,
        run_id: str,
        time: datetime,
        cash: float,
        equity: float,
        gross_exposure: float,
        net_exposure: float,
    ) -> None:
        self._equity.append((run_id, time, cash, equity, gross_exposure, net_exposure))
        self._counts["equity"] += 1

    # ------------------------------------------------------------------ flushing

    def pending(self) -> dict[str, int]:
        """Buffered row counts per table (for metrics and tests)."""
        n = {name: sum(chunk_rows(name, c) for c in buf) for name, buf in self._buffers.items()}
        return {
            "signals": n["signals"],
            "orders": n["orders"],
            "order_events": sum(chunk_rows("orders", c) for c in self._orders if c[2]),
            "fills": n["fills"],
            "positions": n["positions"],
            "equity": n["equity"],
            "checkpoints": n["checkpoints"],
            "decisions": n["decisions"],
        }

    def _due(self) -> bool:
        return self._full() or time.monotonic() - self._last_flush >= self.flush_interval_s

    def _full(self) -> bool:
        """A buffer holds `batch_size` rows: written now, whatever else waits (memory).
        Every buffer counts (`BUFFERS`; order_events rows come with the orders'): one left
        out grew without bound while a write was held (`_hold`)."""
        return max(self._counts.values()) >= self.batch_size  # (at every bar: no generator)

    def _hold(self) -> bool:
        """A write the interval made due waits in the buffers, for a writer that is not
        ready yet (see SqliteStore); a full buffer is written all the same."""
        return False

    def _take(self) -> dict[str, list[Any]]:
        """Every buffer's chunks (the buffers are left empty); {} when nothing is buffered."""
        taken: dict[str, list[Any]] = {}
        for name, buf in self._buffers.items():
            if buf:
                taken[name] = buf[:]
                buf.clear()
        self._counts = dict.fromkeys(BUFFERS, 0)
        return taken

    def _put_back(self, taken: Mapping[str, list[Any]]) -> None:
        """Chunks of a write that failed go back in front of what was recorded since, so the
        next write has them, in order."""
        for name, chunks in taken.items():
            self._buffers[name][:0] = chunks
            self._counts[name] += sum(chunk_rows(name, c) for c in chunks)

    def _rows(self, taken: Mapping[str, list[Any]]) -> dict[str, list[Row]]:
        return to_rows(taken, self._encode_time)

    async def maybe_flush(self) -> None:
        """Start a write in the background when a buffer is full or the interval has passed;
        cheap otherwise. A write that failed in the background raises here (at the next bar),
        or at flush/settle/stop, with its rows back in the buffers. See `_write_behind`."""
        await self._reap()
        if self._due() and not self._hold():
            self._last_flush = time.monotonic()
            await self._write_behind()

    async def settle(self) -> None:
        """Wait for the writes in flight, if any (does not start a new one)."""
        await self._wait_behind()

    async def flush(self) -> None:
        """Write everything buffered, after the writes already in flight: committed when it
        returns."""
        await self._wait_behind()
        await self._flush_now()

    async def write_behind(self) -> None:
        """Start writing everything buffered and return without waiting for it (as
        `maybe_flush` does when a buffer is full): `flush`, `settle` or `stop` wait. The
        engine calls it after its last bar, so that a backtest's report is made while the
        last batch is written."""
        await self._reap()
        self._last_flush = time.monotonic()
        await self._write_behind()

    # How the background writes run. This default (PostgreSQL: asyncpg belongs to the event
    # loop) is an asyncio task: a live engine waits for its next bar while the database
    # works; a replay, which never suspends on its own, lets the write run at the next check.
    # At most one write is in flight, so memory stays within two batches. SqliteStore
    # overrides these with a writer process (replays) or thread (live), which need no help
    # from the event loop.

    async def _reap(self) -> None:
        bg = self._background
        if bg is not None and bg.done():
            self._background = None
            bg.result()

    async def _write_behind(self) -> None:
        if self._background is not None:
            bg, self._background = self._background, None
            await bg
        self._background = asyncio.create_task(self._flush_now())

    async def _wait_behind(self) -> None:
        if self._background is not None:
            bg, self._background = self._background, None
            await bg

    async def _flush_now(self) -> None:
        """Write every buffer in one transaction (or spool it: see `_commit`). On failure the
        rows go back to the front of their buffers (nothing was committed or spooled) and the
        StorageError propagates."""
        async with self._flush_lock:
            self._last_flush = time.monotonic()
            taken = self._take()
            if not taken:
                return
            try:
                await self._commit(self._rows(taken))
            except BaseException:
                self._put_back(taken)
                raise

    # ------------------------------------------------------------------ reading back

    async def fetch(self, table: str, run_id: str) -> list[dict[str, Any]]:
        """Rows of one run from `orders`, `order_events`, `fills`, `equity`, `positions`,
        `signals` or `runs`, ordered by time (then insertion order or symbol). Times come
        back as UTC-aware datetimes, JSON columns decoded, floats as floats (NaN where the
        value was NaN or missing; None in optional columns such as limit_price). Buffered
        rows are not flushed first."""
        if table not in RUN_TABLES and table != "runs":
            valid = ", ".join((*RUN_TABLES, "runs"))
            raise ValueError(f"cannot fetch table {table!r}; valid: {valid}")
        t = TABLES[table]
        rows = await self._query(select_run_sql(t, self.dialect), (run_id,))
        return self._decode_taking(t, rows)

    async def fetch_bars(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """Stored bars (of one symbol, or all), ordered by time then symbol."""
        sql = select_bars_sql(self.dialect, by_symbol=symbol is not None)
        rows = await self._query(sql, (symbol,) if symbol is not None else ())
        return self._decode_taking(TABLES["bars"], rows)

    # ------------------------------------------------------------------ deleting runs

    async def stored_runs(self) -> list[tuple[str, str, datetime]]:
        """(run id, mode, started_at) of every run in the store, oldest start first: what
        `tradingd delete-runs` selects from."""
        runs = TABLES["runs"].name
        rows = await self._query(
            f"SELECT run_id, mode, started_at FROM {runs} ORDER BY started_at, run_id", ()
        )
        return [(str(r[0]), str(r[1]), self._decode_time(r[2])) for r in rows]

    async def run_extent(
        self, run_id: str
    ) -> tuple[datetime | None, datetime | None, dict[str, int]]:
        """(first bar, last bar, rows per run-scoped table) of one run: each an indexed
        read of that run's rows (every run table is indexed by run_id first), never a
        scan of the whole table. The bars are its `equity` rows' (one per bar)."""
        p = param(self.dialect)
        counts: dict[str, int] = {}
        for name in RUN_TABLES:
            rows = await self._query(f"SELECT COUNT(*) FROM {name} WHERE run_id = {p}", (run_id,))
            counts[name] = int(rows[0][0]) if rows else 0
        rows = await self._query(
            f"SELECT MIN(time), MAX(time) FROM {TABLES['equity'].name} WHERE run_id = {p}",
            (run_id,),
        )
        first, last = rows[0] if rows else (None, None)
        return (
            None if first is None else self._decode_time(first),
            None if last is None else self._decode_time(last),
            counts,
        )

    async def delete_run(self, run_id: str) -> None:
        """Every row of the run, its `runs` row included, in one transaction: a run is gone
        whole or not at all (`bars`, shared by all runs, and `spool_applied`, per writer,
        are no run's)."""
        d = self.dialect
        stmts: list[tuple[str, Sequence[Any]]] = [
            (delete_run_sql(TABLES[name], d), (run_id,)) for name in (*RUN_TABLES, "runs")
        ]
        async with self._flush_lock:  # one transaction at a time on the connection
            await self._execute(stmts)

    # ------------------------------------------------------------------ a backtest's report

    def keep_records(self, tables: Collection[str] = ("orders", "fills")) -> bool:
        """Keep every order state (`orders` in `tables`) and fill (`fills`) recorded from now
        on, for `recorded`; call it before the run begins. False (nothing kept) where
        `recorded` could not make exactly the rows `fetch` reads: PostgreSQL orders text by
        the database's collation.

        Why: a backtest's report reads every order and fill of its run. Read back, they are
        read after the writer's last batch commits (0.1-0.2 s after the last bar at 496
        symbols) and then decoded, while the writer waits; made from the records, they are
        made while it writes. The records are held for the whole run (each order's latest
        state and every fill: a few MB at 496 symbols over 19 years), which a live run must
        not do: it never calls this."""
        unknown = set(tables) - {"orders", "fills"}
        if unknown:
            raise ValueError(f"records are kept for orders and fills, not {sorted(unknown)}")
        if self.dialect != "sqlite":
            return False
        if "orders" in tables and self._kept_orders is None:
            self._kept_orders = {}
        if "fills" in tables and self._kept_fills is None:
            self._kept_fills = []
        return True

    def _keep_for(self, run: RunInfo) -> None:
        """A run begins: the records kept are its own from here (its earlier rows are
        deleted); a live run keeps none (it runs for months)."""
        if self._kept_orders is None and self._kept_fills is None:
            return
        if run.mode == "live":
            raise RuntimeError(
                "keep_records() is for a replay's report: a live run would keep every order "
                "and fill in memory for as long as it runs"
            )
        for kept in (self._kept_orders, self._kept_fills):
            if kept is not None:
                kept.clear()
        self._kept_run = run.run_id

    async def recorded(self, table: str, run_id: str) -> Sequence[dict[str, Any]]:
        """What `fetch(table, run_id)` returns once every write has committed. For orders
        and fills kept since `keep_records`, made from the records without waiting for the
        writes (and the records given up); otherwise the writes are waited for and the rows
        read back. The run's rows in the database must all come from the kept records (a
        replay starts by deleting its run id's rows).

        The same rows, made the way the writer makes them: its column makers (`rows.py`),
        the table's conflict rule (an order's latest state, at its first insertion; a
        fill's first row), its ORDER BY, what SQLite does to a value on the way in and out
        (-0.0 comes back as 0.0, NaN as NULL; text is text), then `fetch`'s decoding. A
        value this cannot reproduce (a text column holding something other than text) is
        read back instead, with a warning. Made from the records, the rows are `Records`
        (columns, a dict per row only when a row is read)."""
        kept: Any = None
        if table == "orders":
            kept, self._kept_orders = self._kept_orders, None
        elif table == "fills":
            kept, self._kept_fills = self._kept_fills, None
        if kept is None or run_id != self._kept_run:
            # Not kept, or not from this run's start (keep_records after begin_run).
            await self.flush()
            return await self.fetch(table, run_id)
        t = TABLES[table]
        enc, dec = self._encode_time, self._decode_time
        read: dict[Any, datetime] = {}
        decoded: dict[datetime, datetime] = {}  # what as_read gave: needs no decoding

        def as_read(when: datetime) -> datetime:
            # A time as `fetch` returns it: stored, then read back (once per distinct UTC
            # or naive time; in another zone, equal times can be other instants: a DST fold).
            tz = when.tzinfo
            if tz is not None and tz is not UTC:
                other = dec(enc(when))
                return decoded.setdefault(other, other)
            got = read.get(when)
            if got is None:
                if type(when) is datetime and tz is UTC and not when.fold:
                    got = when  # (what SQLite's text gives back: the same datetime)
                else:
                    got = dec(enc(when))
                read[when] = decoded[got] = got
            return got

        if table == "orders":
            # The upsert keeps an order's latest state where its first state was inserted;
            # so does a dict (of one run's states: its client order ids are unique), kept as
            # they were recorded (`_add_orders`).
            latest = kept.pop(run_id, {})
            kept.clear()
            columns = order_columns([(run_id, list(latest.values()))], as_read)
            del latest
        else:
            chunks = [c for c in kept if c[0] == run_id]
            kept.clear()
            # ON CONFLICT DO NOTHING: a fill id's first row wins.
            fid = FILL_FIELDS.index("fill_id")
            ids = [r[fid] for _, _, records in chunks for r in records]
            if len(set(ids)) != len(ids):
                seen: set[Any] = set()
                kept_first = []
                for run, booked, records in chunks:
                    first = []
                    for r in records:
                        if r[fid] not in seen:
                            seen.add(r[fid])
                            first.append(r)
                    kept_first.append((run, booked, first))
                chunks = kept_first
            columns = fill_columns(chunks, as_read)
            del chunks, ids
        if not columns[0]:
            return []
        if not self._as_stored(t, columns):
            log.warning("storage.recorded.read_back", table=table, run_id=run_id)
            await self.flush()
            return await self.fetch(table, run_id)
        self._in_order(t, columns)  # (on the values as stored: plain text, no -0.0)
        # As columns: the report reads them so (Records).
        return Records(t.insert_columns, self._decoded(t, columns, decoded))

    @staticmethod
    def _as_stored(table: Table, columns: list[Any]) -> bool:
        """`columns` (of rows in the table's insert order) as SQLite gives them back (see
        `recorded`), in place; False when a value would not come back as it went in."""
        kinds = [table.kind_of(name) for name in table.insert_columns]
        for k, kind in enumerate(kinds):
            column = columns[k]
            if kind == "float":
                # SQLite stores NaN as NULL (decoded as `fetch` decodes it: NaN, or None in
                # an optional column), and a REAL that is a whole number as an integer:
                # -0.0 comes back as 0.0. Adding 0.0 changes -0.0 and no other float.
                if None in column:
                    columns[k] = [None if v is None or v != v else v + 0.0 for v in column]
                else:
                    a = np.array(column, dtype=np.float64) + 0.0
                    columns[k] = a.tolist()
                    if np.isnan(a).any():
                        columns[k] = [None if v != v else v for v in columns[k]]
            elif kind == "text":
                types = set(map(type, column))
                if not types <= {str, type(None)}:
                    if not all(issubclass(c, str) or c is type(None) for c in types):
                        return False
                    columns[k] = [v if v is None else str.__str__(v) for v in column]
            elif kind not in ("time", "serial"):  # (times are read back already)
                return False
        return True

    @staticmethod
    def _in_order(table: Table, columns: list[Any]) -> None:
        """`columns` (of rows in insertion order) put in the table's ORDER BY as SQLite
        applies it, in place: text by code point (its BINARY collation), NULL first, a
        serial column as insertion order (ties keep their order: the sort is stable)."""
        names = table.insert_columns
        keys = [names.index(n) for n in table.order_by if table.kind_of(n) != "serial"]
        n = len(columns[0])
        if not keys or n < 2:
            return
        key_columns = [columns[k] for k in keys]
        if any(None in c for c in key_columns):
            by: list[Any] = [
                tuple(x for v in row for x in (v is not None, v))
                for row in zip(*key_columns, strict=True)
            ]
        else:
            by = list(zip(*key_columns, strict=True)) if len(keys) > 1 else key_columns[0]
        order = sorted(range(n), key=by.__getitem__)
        if order != list(range(n)):
            pick = itemgetter(*order)
            columns[:] = [list(pick(c)) for c in columns]

    def _decode(self, table: Table, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Rows as `fetch` returns them: a dict per row, times, JSON and floats decoded."""
        return self._decode_part(table, rows, {})

    def _decode_taking(self, table: Table, rows: list[Any]) -> list[dict[str, Any]]:
        """`_decode(rows)`, emptying `rows` as it goes.

        In parts from the end, each part's rows dropped once decoded: a backtest's report
        reads every order and fill back (21,000 rows at 496 symbols) right after its last
        bar, and the rows as the driver returns them (a tuple and an object per column)
        were, beside the dicts made of them, the largest thing in a replay's memory at its
        peak. A time's text is decoded once for all parts."""
        times: dict[Any, datetime] = {}
        parts = []
        while rows:
            part = rows[-_DECODE_ROWS:]
            del rows[-_DECODE_ROWS:]
            parts.append(self._decode_part(table, part, times))
        out: list[dict[str, Any]] = parts.pop() if parts else []
        while parts:
            out += parts.pop()
        return out

    def _decode_part(
        self, table: Table, rows: Sequence[Sequence[Any]], times: dict[Any, datetime]
    ) -> list[dict[str, Any]]:
        if not rows:
            return []
        # Column by column (a comprehension per column, a dict per row at the end) rather
        # than a loop over each row's columns: the report's read is inside the timed replay.
        cols = table.insert_columns
        try:
            columns = list(zip(*rows, strict=True))
        except ValueError:  # rows of several widths (zip checks them as it goes)
            columns = []
        if len(columns) != len(cols):
            widths = sorted({len(r) for r in rows})  # only to say what is wrong
            raise StorageError(
                f"{table.name}: rows of {' and '.join(map(str, widths))} columns, expected "
                f"{len(cols)}: the database's table differs from this version's schema"
            )
        return self._decode_columns(table, columns, times)

    def _decode_columns(
        self, table: Table, columns: Sequence[Sequence[Any]], times: dict[Any, datetime]
    ) -> list[dict[str, Any]]:
        """`_decode_part` of rows given as their columns."""
        decoded = self._decoded(table, columns, times)
        cols = table.insert_columns
        return [dict(zip(cols, values, strict=True)) for values in zip(*decoded, strict=True)]

    def _decoded(
        self, table: Table, columns: Sequence[Sequence[Any]], times: dict[Any, datetime]
    ) -> list[Any]:
        """The columns as `fetch` decodes their values: times, JSON, floats."""
        cols = table.insert_columns
        out: list[Any] = list(columns)
        nan = math.nan
        time_cols, jsons = table.columns_of("time"), table.columns_of("json")
        floats = table.columns_of("float", optional=False)
        optional = table.columns_of("float", optional=True)
        for k, name in enumerate(cols):
            column = columns[k]
            if name in time_cols:
                # A run's rows share a few thousand bar times: each is decoded once.
                decode = self._decode_time
                for v in set(column).difference(times):
                    if v is not None:
                        times[v] = decode(v)
                out[k] = list(map(times.get, column))  # None stays None
            elif name in jsons:
                out[k] = [None if v is None else json.loads(v) for v in column]
            elif name in floats:
                if None in column:
                    out[k] = [nan if v is None else float(v) for v in column]
                else:
                    out[k] = list(map(float, column))
            elif name in optional:
                out[k] = list(map(_optional_float, column))
        return out


def _check_intents(
    run_id: str, bar_time: datetime | None, orders: Sequence[Mapping[str, Any]]
) -> None:
    """Raise CheckpointUnusable for an order stored after the checkpoint (an intent the
    resume looks up at the broker and may send again) whose quantity is not a positive
    finite number, or whose filled quantity is not one in [0, quantity]: tradingd never
    stores one, so the row was edited or damaged. Taken as it was, an intent of -40 shares
    stayed `new` for good, never sent nor refused, without a word."""
    for o in orders:
        q, filled = o.get("quantity"), o.get("filled_quantity")
        field = value = None
        if not _positive_number(q):
            field, value = "quantity", q
        elif filled is not None and not (
            # Fills add up in floats: pieces of a fractional quantity (split-adjusted, 151.5)
            # can sum to it plus an ulp or so, which a resume must not take for damage.
            _positive_number(filled, 0.0) and filled <= cast(float, q) * (1.0 + 1e-9)
        ):
            field, value = "filled_quantity", filled
        if field is not None:
            at = (
                f"after its checkpoint at {bar_time}" if bar_time is not None else "(no checkpoint)"
            )
            raise CheckpointUnusable(
                f"order {o.get('client_order_id')!r} of run {run_id!r}, stored {at}, has "
                f"{field} = {value!r}: not a number tradingd writes (a positive quantity, a "
                "filled quantity from 0 to it), so the row was edited by hand or damaged and "
                "the run was not resumed. Correct the row in the orders table (or delete it "
                "if that order never reached the broker), or start a new run (another run.name)"
            )


def _positive_number(v: Any, floor: float | None = None) -> bool:
    """`v` is a finite int or float (not a bool) above 0, or at least `floor` if given."""
    if not is_finite_real(v):
        return False
    return v > 0 if floor is None else v >= floor


def _kept_events(
    run_id: str, events: Sequence[Mapping[str, Any]]
) -> OrderedDict[tuple[str, str], tuple[Any, ...]]:
    """A resumed live run's event memory (see `record_orders`): the last stored event of its
    most recent orders, so that a broker's answer repeating a state stored before the stop
    (an intent stored, the process killed, the acknowledgement read after the restart) is no
    second event. From the events the resume kept (`order_events` after its delete, in
    time order: all of them, or only the last of each order, as `select_last_events_sql`
    reads them, give the same): a state whose event is gone must be stored again."""
    last: OrderedDict[tuple[str, str], tuple[Any, ...]] = OrderedDict()
    for e in events:
        key = (run_id, e["client_order_id"])
        last[key] = (e["status"], e["filled_quantity"], e["reason"], e["time"])
        last.move_to_end(key)
    while len(last) > EVENTS_KEPT:
        last.popitem(last=False)
    return last
