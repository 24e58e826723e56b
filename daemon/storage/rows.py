"""What the `record_*` calls keep, and how it becomes database rows.

The engine calls `record_*` on every bar; the database wants one tuple per row with text
times and plain floats. Building those tuples is most of what persistence costs in Python, so
the engine's side only keeps the bar's values in the cheapest form that cannot change under
it: per bar, the indices of the symbols that have a row and copies of their values (one small
array per column), and per order or fill the tuple of its field values (`ORDER_VALUES`;
enums, floats and datetimes are immutable, so the tuple is a snapshot even if the order
object changes later). `to_rows` turns a batch of those into row tuples later, where the
writing happens (the SQLite store's writer thread; PostgreSQL's flush).

A chunk never holds a reference to a mutable engine array: every array in it is a copy made by
fancy indexing.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..core.types import Fill, Order

if TYPE_CHECKING:  # numpy is imported where chunks are packed (the engine's side), not here:
    import numpy as np  # a writer process making rows of `Packed` batches needs none

Row = tuple[Any, ...]
# An order state or a fill: every field's value, in the dataclass's order (ORDER_VALUES).
Record = tuple[Any, ...]
EncodeTime = Callable[[datetime], Any]
# A buffered batch of order states: (run_id, records, whether they are events, the bar a
# live run recorded them at or None).
OrderChunk = tuple[str, list[Record], bool, "datetime | None"]

# The buffers the record_* calls fill, in write order. `orders` feeds two tables: the order's
# latest state (`orders`) and its lifecycle history (`order_events`).
BUFFERS = ("signals", "orders", "fills", "positions", "equity", "checkpoints", "decisions")

# The record of an order state or a fill: the tuple of all its fields, in the dataclass's
# order (`fields(Order)`, `fields(Fill)`). The audit log's lines are made of the same tuples:
# the engine hands the store's records to the audit log (`AuditSink.orders(..., records)`),
# so an order state is made into a tuple once, and pickled once when the store and the audit
# log share a writer process (`ChildWriter.add_rider`).
ORDER_FIELDS = tuple(f.name for f in fields(Order))
FILL_FIELDS = tuple(f.name for f in fields(Fill))


def _getters(
    names: tuple[str, ...],
) -> tuple[Callable[[Any], Record], Callable[[Sequence[Any]], list[Record]]]:
    """The tuple of an object's `names` (and the list of them for a sequence of objects), as
    generated functions, the way dataclasses makes `__init__`: the attribute loads in their
    code are ones CPython specialises for slots, so a record costs half what `attrgetter`
    (a generic lookup per attribute) did; there are a few on every bar that trades. The
    names are dataclass field names: identifiers, nothing else reaches the source."""
    if not all(n.isidentifier() for n in names):
        raise ValueError(f"not attribute names: {names!r}")
    values = "(" + "".join(f"o.{n}, " for n in names) + ")"
    src = (
        f"def values(o):\n    return {values}\n"
        f"def records(items):\n    return [{values} for o in items]\n"
    )
    ns: dict[str, Any] = {}
    exec(src, ns)
    return ns["values"], ns["records"]


ORDER_VALUES, ORDER_RECORDS = _getters(ORDER_FIELDS)
FILL_VALUES, FILL_RECORDS = _getters(FILL_FIELDS)
_O = {n: k for k, n in enumerate(ORDER_FIELDS)}
_F = {n: k for k, n in enumerate(FILL_FIELDS)}
_EVENT = tuple(_O[n] for n in ("status", "filled_quantity", "reason", "updated_at", "created_at"))


def order_event(record: Record) -> tuple[Any, ...]:
    """What an order state's `order_events` row says of it (status, filled quantity, reason,
    time: its `updated_at`, else its `created_at`): two states with the same are one event."""
    status, filled, reason, updated, created = (record[k] for k in _EVENT)
    return event_of(status, filled, reason, created, updated)


def event_of(status: Any, filled: Any, reason: Any, created: Any, updated: Any) -> tuple[Any, ...]:
    """`order_event` of an order's fields (a record's, or a stored `orders` row's)."""
    return (status, filled, reason, created if updated is None else updated)


# The fields the orders table takes, in its column order (after run_id; created_at and
# updated_at follow), and the fills table's (after run_id; booked_at follows).
ORDER_ROW = (
    "client_order_id",
    "symbol",
    "side",
    "type",
    "quantity",
    "limit_price",
    "stop_price",
    "trail_pct",
    "leg",
    "parent_id",
    "oco_group",
    "status",
    "filled_quantity",
    "avg_fill_price",
    "reason",
)
FILL_ROW = (
    "fill_id",
    "client_order_id",
    "symbol",
    "side",
    "quantity",
    "price",
    "commission",
    "slippage",
    "reference_price",
    "time",
)


def _optional(col: Sequence[Any]) -> list[float | None]:
    return [None if x is None else float(x) for x in col]


def _times(col: Sequence[Any], enc: EncodeTime) -> list[Any]:
    """`enc` of every time of a column (None stays None), each distinct time encoded once:
    a batch holds a few hundred bars and thousands of rows. Times in a zone other than UTC
    are encoded one by one: there, equal times can be different instants (the repeated hour
    of a DST change: `fold` is not compared), which one memo entry would merge."""
    distinct = set(col)
    if any(t is not None and t.tzinfo is not None and t.tzinfo is not UTC for t in distinct):
        return [None if t is None else enc(t) for t in col]
    memo = {t: None if t is None else enc(t) for t in distinct}
    return list(map(memo.__getitem__, col))


# Rows are built with numpy and with zip and map over columns (C loops), not a Python loop per
# row or per bar: this is most of what writing costs in Python.


@dataclass(frozen=True, slots=True)
class Packed:
    """A batch of signals or positions chunks as a few arrays (cheap to pickle for a writer
    process): per chunk its run id, time, row count and tail; all rows' symbol indices and
    column values concatenated. `names` is set instead of `universe` when the chunks index
    different universes. The arrays are the standard library's (`_plain_array`) where the
    values' type has one: unpickling them needs no numpy, which was 330M of the ~600M
    instructions of a writer process's start-up (callgrind of its imports), taken from the
    engine on a 2-core machine while the first bars run and before it takes a batch."""

    runs: list[str]
    times: list[datetime]
    counts: list[int]
    tails: list[tuple[Any, ...]]
    universe: Sequence[str] | None
    names: list[str] | None
    idx: array[Any] | np.ndarray
    cols: list[array[Any] | np.ndarray]


def _plain_array(a: np.ndarray) -> array[Any] | np.ndarray:
    """`a` (one dimension) as a standard-library array of the same values, when its type is
    one that has one of the same size (numpy's type character is array's type code for
    those); else `a` itself."""
    code = a.dtype.char
    if code in "bBhHiIlLqQfd" and a.ndim == 1:
        out = array(code)
        if out.itemsize == a.itemsize:
            out.frombytes(a.tobytes())
            return out
    return a


def pack_blocks(chunks: Sequence[tuple[Any, ...]]) -> Packed:
    """Signals and positions chunks `(run_id, time, symbols, idx, cols, tail)` (`cols`:
    arrays aligned with `idx`; `tail`, signals' source, the same for every row of a chunk)."""
    import numpy as np

    universe = chunks[0][2]
    same = all(c[2] is universe for c in chunks)
    cols = [np.concatenate([c[4][j] for c in chunks]) for j in range(len(chunks[0][4]))]
    return Packed(
        runs=[c[0] for c in chunks],
        times=[c[1] for c in chunks],
        counts=[c[3].size for c in chunks],
        tails=[c[5] for c in chunks],
        universe=universe if same else None,
        names=None if same else [c[2][i] for c in chunks for i in c[3].tolist()],
        idx=_plain_array(np.concatenate([c[3] for c in chunks])),
        cols=[_plain_array(c) for c in cols],
    )


def block_rows(blocks: Packed | Sequence[tuple[Any, ...]], enc: EncodeTime) -> list[Row]:
    """Rows `(run_id, time, symbol, *(c[k] for c in cols), *tail)` of signals or positions
    chunks (or of their `Packed` form)."""
    p = blocks if isinstance(blocks, Packed) else pack_blocks(blocks)
    if p.universe is not None:
        names = list(map(p.universe.__getitem__, p.idx.tolist()))
    else:
        names = p.names or []
    tails = [_spread([t[j] for t in p.tails], p.counts) for j in range(len(p.tails[0]))]
    return list(
        zip(
            _spread(p.runs, p.counts),
            _times(_spread(p.times, p.counts), enc),
            names,
            *(c.tolist() for c in p.cols),
            *tails,
            strict=True,
        )
    )


def _spread(values: Sequence[Any], counts: Sequence[int]) -> list[Any]:
    """Each value repeated as many times as its count."""
    out: list[Any] = []
    for v, n in zip(values, counts, strict=True):
        out += [v] * n
    return out


def pack(taken: Mapping[str, Any]) -> dict[str, Any]:
    """`taken` with its signals and positions chunks packed (see `Packed`)."""
    out = dict(taken)
    for name in ("signals", "positions"):
        if out.get(name):
            out[name] = pack_blocks(out[name])
    return out


def order_columns(chunks: Sequence[tuple[Any, ...]], enc: EncodeTime) -> list[Sequence[Any]]:
    """The orders table's columns (its `insert_columns`, run_id first) of every order state
    in `chunks` (`(run_id, records, ...)`), as the writer stores them: the writer
    (`order_rows`) and a backtest's report (`BufferedStore.recorded`) make them here, so that
    both hold the same values."""
    run_ids = _spread([c[0] for c in chunks], [len(c[1]) for c in chunks])
    values = [v for c in chunks for v in c[1]]
    cols = list(zip(*values, strict=True)) or [()] * len(ORDER_FIELDS)
    (cid, sym, side, typ, qty, lp, sp, tp, leg, parent, oco, status, filled, avg, reason) = (
        cols[_O[n]] for n in ORDER_ROW
    )
    return [
        run_ids,
        cid,
        sym,
        list(map(str, side)),
        list(map(str, typ)),
        list(map(float, qty)),
        _optional(lp),
        _optional(sp),
        _optional(tp),
        list(map(str, leg)),
        parent,
        oco,
        list(map(str, status)),
        list(map(float, filled)),
        list(map(float, avg)),
        reason,
        _times(cols[_O["created_at"]], enc),
        _times(cols[_O["updated_at"]], enc),
    ]


def order_rows(chunks: Sequence[OrderChunk], enc: EncodeTime) -> tuple[list[Row], list[Row]]:
    """(orders rows, order_events rows) of order chunks `(run_id, records, events,
    booked_at)`. Only an order's latest state survives the upsert, so only that one is
    written; order_events keeps every state of a chunk with `events`, and none of one
    without (a live order's acknowledgement in the state of its stored intent:
    `BufferedStore.record_orders`); `booked_at`, a live run's bar, goes with each event."""
    cols = order_columns(chunks, enc)
    latest = {(r[0], r[1]): r for r in zip(*cols, strict=True)}
    run_ids, cid, st, fq, reason, created, updated = (cols[k] for k in (0, 1, 12, 13, 15, 16, 17))
    when = [c if u is None else u for c, u in zip(created, updated, strict=True)]
    counts = [len(c[1]) for c in chunks]
    booked = _spread([None if c[3] is None else enc(c[3]) for c in chunks], counts)
    events = list(zip(run_ids, cid, st, fq, reason, when, booked, strict=True))
    if not all(c[2] for c in chunks):
        keep = _spread([c[2] for c in chunks], counts)
        events = [e for e, k in zip(events, keep, strict=True) if k]
    return list(latest.values()), events


def fill_columns(
    chunks: Sequence[tuple[str, Any, list[tuple[Any, ...]]]], enc: EncodeTime
) -> list[Sequence[Any]]:
    """The fills table's columns (its `insert_columns`: run_id first, no seq), as
    `order_columns` makes the orders'. `booked_at` None: the fill's own time."""
    counts = [len(c[2]) for c in chunks]
    run_ids = _spread([c[0] for c in chunks], counts)
    values = [v for _, _, vs in chunks for v in vs]
    cols = list(zip(*values, strict=True)) or [()] * len(FILL_FIELDS)
    fid, cid, sym, side, qty, price, comm, slip, ref, t = (cols[_F[n]] for n in FILL_ROW)
    times = _times(t, enc)
    booked = _times(_spread([c[1] for c in chunks], counts), enc)
    booked = [te if b is None else b for te, b in zip(times, booked, strict=True)]
    return [
        run_ids,
        fid,
        cid,
        sym,
        list(map(str, side)),
        list(map(float, qty)),
        list(map(float, price)),
        list(map(float, comm)),
        list(map(float, slip)),
        list(map(float, ref)),
        times,
        booked,
    ]


def fill_rows(
    chunks: Sequence[tuple[str, Any, list[tuple[Any, ...]]]], enc: EncodeTime
) -> list[Row]:
    return list(zip(*fill_columns(chunks, enc), strict=True))


def to_rows(taken: Mapping[str, list[Any]], enc: EncodeTime) -> dict[str, list[Row]]:
    """The rows of every table of a batch of buffers (see `BUFFERS`), in the tables'
    `insert_columns` order; tables without rows are left out."""
    out: dict[str, list[Row]] = {}
    if taken.get("signals"):
        out["signals"] = block_rows(taken["signals"], enc)
    if taken.get("orders"):
        out["orders"], out["order_events"] = order_rows(taken["orders"], enc)
    if taken.get("fills"):
        out["fills"] = fill_rows(taken["fills"], enc)
    if taken.get("positions"):
        out["positions"] = block_rows(taken["positions"], enc)
    if taken.get("equity"):
        run_ids, times, cash, equity, gross, net = zip(*taken["equity"], strict=True)
        out["equity"] = list(
            zip(
                run_ids,
                _times(times, enc),
                map(float, cash),
                map(float, equity),
                map(float, gross),
                map(float, net),
                strict=True,
            )
        )
    if taken.get("checkpoints"):
        # One per run, the latest; the state is JSON already (encoded when it was recorded,
        # on the engine's thread: a plugin's state may change at the next bar).
        latest = {r[0]: r for r in taken["checkpoints"]}
        out["checkpoints"] = [
            (run_id, enc(t), state, enc(written)) for run_id, t, state, written in latest.values()
        ]
    if taken.get("decisions"):
        latest_d = {(r[0], r[1]): r for r in taken["decisions"]}  # a bar decided again wins
        out["decisions"] = [
            (run_id, enc(t), source, record) for run_id, t, source, record in latest_d.values()
        ]
    return out


def chunk_rows(name: str, chunk: Any) -> int:
    """How many rows a chunk of buffer `name` holds (order chunks: per table)."""
    if name in ("signals", "positions"):
        return int(chunk[3].size)
    if name == "orders":
        return len(chunk[1])
    if name == "fills":
        return len(chunk[2])
    return 1


def block(
    run_id: str,
    t: datetime,
    symbols: Sequence[str],
    idx: np.ndarray,
    cols: tuple[np.ndarray, ...],
    tail: tuple[Any, ...] = (),
) -> tuple[Any, ...]:
    """A signals/positions chunk (see `block_rows`); `cols` must be copies."""
    return (run_id, t, symbols, idx, cols, tail)
