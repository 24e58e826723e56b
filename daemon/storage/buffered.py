"""The buffering shared by every store.

`record_*` calls run on the engine's hot path: they append ready-to-write tuples to plain
lists and never touch the database. `maybe_flush` (called by the engine every bar) writes all
buffers once any of them has reached `batch_size` rows, so memory stays bounded; `flush`
writes everything. A dialect subclass only implements the batch writes, a transaction of
statements, a query, and how times travel to and from its database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, ClassVar

import numpy as np

from ..core.errors import ConfigError
from ..core.types import CrossSection, Fill, Order, RunInfo
from .schema import (
    BUFFERED,
    RESUME_TIME,
    RUN_TABLES,
    TABLES,
    Dialect,
    Table,
    delete_after_sql,
    delete_run_sql,
    end_run_sql,
    insert_sql,
    reopen_run_sql,
    select_bars_sql,
    select_run_sql,
)

SIGNAL_MODES = ("decisions", "all", "none")
Row = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a live run that was stored before continues: the state after its last completed
    bar (None: it stopped before completing one) and the order intents stored after that bar,
    which may have reached the broker before the process died."""

    bar_time: datetime | None
    state: dict[str, Any] | None
    unconfirmed: tuple[dict[str, Any], ...] = ()


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
    return str(o)


def to_json(obj: Any) -> str:
    """Strict JSON (PostgreSQL's JSONB refuses NaN): non-finite floats become null, numpy
    values become Python values, datetimes ISO-8601 text."""
    return json.dumps(_plain(obj), separators=(",", ":"), allow_nan=False)


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


class BufferedStore(ABC):
    """Implements the `Store` protocol on top of a few dialect-specific primitives."""

    dialect: ClassVar[Dialect]

    def __init__(
        self, batch_size: int = 5000, signals: str = "decisions", flush_interval_s: float = 1.0
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
        self._signals: list[Row] = []
        self._orders: list[Row] = []
        self._order_events: list[Row] = []
        self._fills: list[Row] = []
        self._positions: list[Row] = []
        self._equity: list[Row] = []
        self._checkpoints: list[Row] = []
        self._buffers: dict[str, list[Row]] = {
            "signals": self._signals,
            "orders": self._orders,
            "order_events": self._order_events,
            "fills": self._fills,
            "positions": self._positions,
            "equity": self._equity,
            "checkpoints": self._checkpoints,
        }
        assert tuple(self._buffers) == BUFFERED
        self._flush_lock = asyncio.Lock()

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

    # ------------------------------------------------------------------ lifecycle

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self._close()

    # ------------------------------------------------------------------ runs and bars

    async def begin_run(self, run: RunInfo) -> None:
        """Record the run; a run_id seen before has its earlier rows deleted first."""
        self._last_targets.pop(run.run_id, None)
        self._last_quantity.pop(run.run_id, None)
        await self.flush()
        d = self.dialect
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

    async def resume_run(self, run: RunInfo) -> ResumePoint | None:
        """A live run continues where it stopped: None (and a new run row) when this run id
        was never stored; else its last checkpoint, after the rows of any later, interrupted
        bar are removed (that bar is processed again) and the run is marked running again.
        Nothing of the run is deleted up to its checkpoint."""
        self._last_targets.pop(run.run_id, None)
        self._last_quantity.pop(run.run_id, None)
        await self.flush()
        d = self.dialect
        if not await self._query(select_run_sql(TABLES["runs"], d), (run.run_id,)):
            await self.begin_run(run)
            return None
        found = await self.fetch("checkpoints", run.run_id)
        bar_time = found[-1]["bar_time"] if found else None
        state = found[-1]["state"] if found else None
        after = bar_time if bar_time is not None else datetime(1, 1, 1, tzinfo=UTC)
        unconfirmed = tuple(
            o for o in await self.fetch("orders", run.run_id) if o["created_at"] > after
        )
        enc = self._encode_time(after)
        stmts: list[tuple[str, Sequence[Any]]] = [
            (delete_after_sql(TABLES[name], column, d), (run.run_id, enc))
            for name, column in RESUME_TIME.items()
        ]
        stmts.append((reopen_run_sql(d), (run.run_id,)))
        async with self._flush_lock:
            await self._execute(stmts)
        if state is not None:
            # Rows are written on change: continue from the checkpoint's book and decisions.
            book = state.get("portfolio", {})
            if "quantity" in book:
                self._last_quantity[run.run_id] = np.asarray(book["quantity"], dtype=np.float64)
            if state.get("targets") is not None:
                self._last_targets[run.run_id] = np.asarray(state["targets"], dtype=np.float64)
        return ResumePoint(bar_time, state, unconfirmed)

    def record_checkpoint(self, run_id: str, bar_time: datetime, state: Mapping[str, Any]) -> None:
        """The run's state after `bar_time`, written with that bar's rows (latest wins)."""
        # Only the latest per run is written: keep one row per run, encode it at the flush.
        now = self._encode_time(datetime.now(UTC))
        row = (run_id, self._encode_time(bar_time), state, now)
        for k, r in enumerate(self._checkpoints):
            if r[0] == run_id:
                self._checkpoints[k] = row
                return
        self._checkpoints.append(row)

    async def end_run(self, run_id: str, summary: Mapping[str, Any]) -> None:
        await self.flush()
        ended = self._encode_time(datetime.now(UTC))
        async with self._flush_lock:
            await self._execute([(end_run_sql(self.dialect), (to_json(summary), ended, run_id))])

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
                    await self._write_batches({"bars": rows})
                rows = []
        if rows:
            async with self._flush_lock:
                await self._write_batches({"bars": rows})

    # ------------------------------------------------------------------ hot path

    def record_signals(
        self,
        run_id: str,
        time: datetime,
        symbols: Sequence[str],
        scores: np.ndarray,
        targets: np.ndarray,
        source: str = "",
    ) -> None:
        """Mode "decisions": a row whenever a symbol's target weight changes (to zero
        included), so the table is the history of decisions, not a copy of every bar;
        "all": also every finite score at every bar; "none": nothing."""
        mode = self.signals_mode
        if mode == "none":
            return
        last = self._last_targets.get(run_id)
        if last is None or last.shape != targets.shape:
            last = self._last_targets[run_id] = np.zeros_like(targets, dtype=np.float64)
        finite = np.isfinite(targets)
        changed = finite & (targets != last)
        mask = changed if mode == "decisions" else changed | np.isfinite(scores)
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        np.copyto(last, targets, where=changed)
        t = self._encode_time(time)
        append = self._signals.append
        for i, s, w in zip(idx.tolist(), scores[idx].tolist(), targets[idx].tolist(), strict=True):
            append((run_id, t, symbols[i], s, w, source))

    def record_orders(self, run_id: str, orders: Sequence[Order]) -> None:
        """Upsert each order's current state and append it to the order's event history."""
        enc = self._encode_time
        for o in orders:
            created = enc(o.created_at)
            updated = enc(o.updated_at) if o.updated_at is not None else None
            status = str(o.status)
            filled = float(o.filled_quantity)
            self._orders.append(
                (
                    run_id,
                    o.client_order_id,
                    o.symbol,
                    str(o.side),
                    str(o.type),
                    float(o.quantity),
                    _f(o.limit_price),
                    _f(o.stop_price),
                    _f(o.trail_pct),
                    str(o.leg),
                    o.parent_id,
                    o.oco_group,
                    status,
                    filled,
                    float(o.avg_fill_price),
                    o.reason,
                    created,
                    updated,
                )
            )
            self._order_events.append(
                (
                    run_id,
                    o.client_order_id,
                    status,
                    filled,
                    o.reason,
                    updated if updated is not None else created,
                )
            )

    def record_fills(self, run_id: str, fills: Sequence[Fill]) -> None:
        enc = self._encode_time
        for f in fills:
            self._fills.append(
                (
                    run_id,
                    f.fill_id,
                    f.client_order_id,
                    f.symbol,
                    str(f.side),
                    float(f.quantity),
                    float(f.price),
                    float(f.commission),
                    float(f.slippage),
                    float(f.reference_price),
                    enc(f.time),
                )
            )

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
        the position history, from which the holding at any time is the last row before it.
        Equity and exposure per bar are in the equity table."""
        last = self._last_quantity.get(run_id)
        if last is None or last.shape != quantity.shape:
            last = self._last_quantity[run_id] = np.zeros_like(quantity, dtype=np.float64)
        changed = np.isfinite(quantity) & (quantity != last)
        idx = np.flatnonzero(changed)
        if idx.size == 0:
            return
        np.copyto(last, quantity, where=changed)
        t = self._encode_time(time)
        append = self._positions.append
        for i, q, a, m in zip(
            idx.tolist(),
            quantity[idx].tolist(),
            avg_price[idx].tolist(),
            mark[idx].tolist(),
            strict=True,
        ):
            append((run_id, t, symbols[i], q, a, m))

    def record_equity(
        self,
        run_id: str,
        time: datetime,
        cash: float,
        equity: float,
        gross_exposure: float,
        net_exposure: float,
    ) -> None:
        self._equity.append(
            (
                run_id,
                self._encode_time(time),
                float(cash),
                float(equity),
                float(gross_exposure),
                float(net_exposure),
            )
        )

    # ------------------------------------------------------------------ flushing

    def pending(self) -> dict[str, int]:
        """Buffered row counts per table (for metrics and tests)."""
        return {name: len(buf) for name, buf in self._buffers.items()}

    async def maybe_flush(self) -> None:
        """Start a write in the background when a buffer is full or the interval has passed.
        A live engine then waits for its next bar while the database works; a replay, which
        never suspends on its own, lets the write run at the next check (measured faster than
        yielding to the loop every bar). At most one write is in flight, so memory stays
        within two batches; a failed write raises here, at the next bar, or at flush/stop."""
        bg = self._background
        if bg is not None and bg.done():
            self._background = None
            bg.result()
        bs = self.batch_size
        if (
            len(self._positions) >= bs
            or len(self._signals) >= bs
            or len(self._equity) >= bs
            or len(self._orders) >= bs
            or len(self._order_events) >= bs
            or len(self._fills) >= bs
            or time.monotonic() - self._last_flush >= self.flush_interval_s
        ):
            if self._background is not None:
                bg, self._background = self._background, None
                await bg
            self._last_flush = time.monotonic()
            self._background = asyncio.create_task(self._flush_now())

    async def settle(self) -> None:
        """Wait for the write in flight, if any (does not start a new one)."""
        if self._background is not None:
            bg, self._background = self._background, None
            await bg

    async def flush(self) -> None:
        """Write everything buffered, after any write already in flight."""
        if self._background is not None:
            bg, self._background = self._background, None
            await bg
        await self._flush_now()

    async def _flush_now(self) -> None:
        """Write every buffer in one transaction. On failure the rows go back to the front of
        their buffers (nothing was committed) and the StorageError propagates."""
        async with self._flush_lock:
            self._last_flush = time.monotonic()
            taken: dict[str, list[Row]] = {}
            for name, buf in self._buffers.items():
                if buf:
                    taken[name] = buf[:]
                    buf.clear()
            if not taken:
                return
            if "orders" in taken:
                # Only an order's latest state survives the upsert: write that one only
                # (order_events keeps every state).
                taken["orders"] = list({(r[0], r[1]): r for r in taken["orders"]}.values())
            write = dict(taken)
            if "checkpoints" in taken:
                taken["checkpoints"] = list({r[0]: r for r in taken["checkpoints"]}.values())
                write["checkpoints"] = [
                    (r[0], r[1], to_json(r[2]), r[3]) for r in taken["checkpoints"]
                ]
            try:
                await self._write_batches(write)
            except BaseException:
                for name, rows in taken.items():
                    self._buffers[name][:0] = rows
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
        return self._decode(t, rows)

    async def fetch_bars(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """Stored bars (of one symbol, or all), ordered by time then symbol."""
        sql = select_bars_sql(self.dialect, by_symbol=symbol is not None)
        rows = await self._query(sql, (symbol,) if symbol is not None else ())
        return self._decode(TABLES["bars"], rows)

    def _decode(self, table: Table, rows: list[Sequence[Any]]) -> list[dict[str, Any]]:
        cols = table.insert_columns
        times = table.columns_of("time")
        jsons = table.columns_of("json")
        floats = table.columns_of("float", optional=False)
        optional = table.columns_of("float", optional=True)
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            for c in times:
                if d[c] is not None:
                    d[c] = self._decode_time(d[c])
            for c in jsons:
                if d[c] is not None:
                    d[c] = json.loads(d[c])
            for c in floats:
                v = d[c]
                d[c] = math.nan if v is None else float(v)
            for c in optional:
                v = d[c]
                if v is not None:
                    v = float(v)
                    d[c] = None if math.isnan(v) else v
            out.append(d)
        return out
