"""The audit log's file and its lines: what a writer process runs for it.

The JSON lines of order states and fills (made a column at a time from the records, the
tuples of their field values: storage/rows.py), the rotating file they are appended to
(`_Sink`), and the jobs a writer process (storage/child.py) runs for the log
(`child_open`, `child_lines`, `child_close`, `child_release`). A module of its own, light on
imports (no structlog, asyncio or the log's class), as storage/sqlite_file.py is for the
store: a replay's writer process imports this and the store's module only, and its start-up
(its interpreter and imports, run beside the first bars) is CPU taken from the engine on a
2-core machine and time before it takes its first batch. `tradingd.audit` (`AuditLog`, the
engine's side) uses the same functions for the lines it writes itself (live).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from itertools import islice, repeat
from pathlib import Path
from typing import Any, TextIO

from .storage.rows import FILL_FIELDS as _FILL_FIELDS
from .storage.rows import ORDER_FIELDS as _ORDER_FIELDS

# Orders and fills hold only scalars, string enums and datetimes, so the tuple of their
# fields is the whole record (and a snapshot: every value is immutable). The store keeps the
# same tuples (storage/rows.py): the engine passes the store's to this log.
_ORDER_WIDTH, _FILL_WIDTH = len(_ORDER_FIELDS), len(_FILL_FIELDS)
_ORDER_TIMES = frozenset(("created_at", "updated_at"))
_FILL_TIMES = frozenset(("time",))

_ISO: dict[Any, str] = {}


def _iso(t: Any) -> str | None:
    """The same few bar times recur in every line of a bar: format each once (bounded).
    The time zone is in the key: equal instants in two zones are equal datetimes, but each
    is written as it was given (unlike the store, the audit log keeps the zone). So are the
    class (a pandas Timestamp writes itself otherwise) and `fold`: the two wall times of a
    DST change's repeated hour compare and hash equal, but their offsets differ."""
    if t is None:
        return None
    key = (type(t), t, t.tzinfo, t.fold)
    s = _ISO.get(key)
    if s is None:
        if len(_ISO) >= 4096:
            _ISO.clear()
        s = _ISO[key] = t.isoformat()
    return s


# One encoder for the process: json.dumps builds a new encoder on every call. The records
# hold no containers, so the circular-reference check is pure cost. allow_nan=False: NaN is
# not JSON (jq and most parsers reject it), so a value that slips through is a loud bug here
# rather than an unreadable line; `_null_non_finite` turns the known ones into null first.
_ENCODER = json.JSONEncoder(check_circular=False, default=str, allow_nan=False)
_ESCAPE: Any = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.py_encode_basestring_ascii
)
_INF = math.inf


def _null_non_finite(row: dict[str, Any]) -> dict[str, Any]:
    """An unfilled order's average price is NaN in memory; in the file it is null."""
    for k, v in row.items():
        if v.__class__ is float and not math.isfinite(v):
            row[k] = None
    return row


def _value(v: Any) -> str:
    """One field as `_ENCODER` writes it (same text), non-finite floats as null."""
    c = v.__class__
    if c is float:
        return float.__repr__(v) if v == v and v != _INF and v != -_INF else "null"
    if c is str:
        return _ESCAPE(v)
    if v is None:
        return "null"
    if c is int:
        return int.__repr__(v)
    if isinstance(v, str):  # the string enums (Side, OrderStatus, ...)
        return _ESCAPE(v)
    return _ENCODER.encode(None if isinstance(v, float) and not math.isfinite(v) else v)


def _column(col: Sequence[Any]) -> list[str]:
    """The JSON text of every value of one field, as `_value` gives it, with C loops (map)
    for the usual cases: all text, all floats, all integers, all string enums, all None."""
    types = set(map(type, col))
    if types <= _STR:
        return list(map(_ESCAPE, col))
    if types <= _FLOAT:
        out = list(map(float.__repr__, col))
        if not all(map(math.isfinite, col)):
            out = [r if math.isfinite(v) else "null" for r, v in zip(out, col, strict=True)]
        return out
    if types <= _NONE:
        return ["null"] * len(col)
    if types <= _INT:
        return list(map(int.__repr__, col))
    if all(issubclass(t, str) for t in types):
        return list(map(_ESCAPE, col))
    return list(map(_value, col))


def _time_column(col: Sequence[Any]) -> list[str]:
    """ISO-8601 text of each time (null for None), each distinct time formatted once."""
    memo: dict[Any, str] = {}
    out = []
    for t in col:
        key = None if t is None else (t, t.tzinfo, t.fold)  # the zone and fold: see `_iso`
        text = memo.get(key)
        if text is None:
            iso = _iso(t)
            text = memo[key] = "null" if iso is None else '"' + iso + '"'
        out.append(text)
    return out


_STR: frozenset[type] = frozenset((str,))
_NONE: frozenset[type] = frozenset((type(None),))
_FLOAT: frozenset[type] = frozenset((float,))
_INT: frozenset[type] = frozenset((int,))


class _Lines:
    """JSON lines of records given as tuples of field values: the keys in field order, as
    `{"event": event, **fields}` through `_ENCODER` gives them (times as ISO-8601 text, non-
    finite floats as null). Encoded a column at a time: a batch's orders (or fills) together,
    which costs a fraction of encoding each record as a dict."""

    def __init__(self, event: str, names: tuple[str, ...], times: frozenset[str]) -> None:
        # The text around the values: a line is its pieces and its values, alternately
        # (joined, not formatted: `%` parsed the template again for every line, twice the
        # cost in the writer process).
        first = f'{{"event": "{event}", "{names[0]}": '
        # (the last piece goes before the extras)
        self._pieces = (first, *(f', "{n}": ' for n in names[1:]), "")
        self._timed = tuple(n in times for n in names)

    def __call__(self, records: Sequence[Sequence[Any]], extras: Sequence[str]) -> list[str]:
        """`extras[k]`: text appended inside record k's object (", \"booked_at\": ...")."""
        if len(extras) != len(records):
            raise ValueError(f"{len(extras)} extras for {len(records)} records")
        if not records:
            return []
        cols = zip(*records, strict=True)
        text = [
            _time_column(c) if timed else _column(c)
            for c, timed in zip(cols, self._timed, strict=True)
        ]
        text.append(list(extras))
        parts: list[Any] = []
        for piece, column in zip(self._pieces, text, strict=True):
            parts += (repeat(piece), column)
        parts.append(repeat("}"))
        # (repeat is endless: the columns, all of one length, end the lines)
        return list(map("".join, zip(*parts, strict=False)))


_order_lines = _Lines("order", _ORDER_FIELDS, _ORDER_TIMES)
_fill_lines = _Lines("fill", _FILL_FIELDS, _FILL_TIMES)

# A batch item: (kind, payload, booked_at or None). booked_at is the bar's datetime, the object
# the fills' times and the store's records hold too: written as text where the lines are made
# (a writer process's replay pickles it once with them; isoformat costs ~10k instructions).
_ORDERS, _FILLS, _LINE = 0, 1, 2


def _booked_extras(batch: Sequence[tuple[int, Any, Any]], of: int) -> list[str]:
    """Each record's `booked_at` text of the items of kind `of` ("" without one)."""
    return [
        "" if booked is None else f', "booked_at": "{_iso(booked)}"'
        for kind, payload, booked in batch
        if kind == of
        for _ in payload
    ]


def _encode(batch: Sequence[tuple[int, Any, Any]]) -> str:
    """The batch's lines in record order; its orders and its fills are each encoded together."""
    orders = [v for kind, payload, _ in batch if kind == _ORDERS for v in payload]
    fills = [v for kind, payload, _ in batch if kind == _FILLS for v in payload]
    # A live run's order lines say their bar too (`AuditLog.orders`); a replay's have none.
    booked_orders = any(b is not None for kind, _, b in batch if kind == _ORDERS)
    order_extras = _booked_extras(batch, _ORDERS) if booked_orders else [""] * len(orders)
    order_text = iter(_order_lines(orders, order_extras))
    fill_text = iter(_fill_lines(fills, _booked_extras(batch, _FILLS)))
    out: list[str] = []
    for kind, payload, _ in batch:
        if kind == _ORDERS:
            out += islice(order_text, len(payload))
        elif kind == _FILLS:
            out += islice(fill_text, len(payload))
        else:
            out.append(payload)
    return "\n".join(out) + "\n"


class _Sink:
    """The audit file: appended to, rotated at `max_bytes`, `backups` old files kept."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._fh: TextIO | None = None

    def write(self, text: str) -> None:
        if self._fh is not None and self._moved():
            self.close()
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        fh = self._fh
        fd = os.dup(fh.fileno())  # the file as it is now, to cut back a failed write
        try:
            end = os.fstat(fd).st_size  # every earlier write is flushed: the whole lines
            fh.write(text)
            fh.flush()
        except OSError:
            # The unwritten text stays in the file's buffer, and closing it later (at the
            # run's end) failed again, with a bare OSError that replaced this one. Closed
            # here, its buffer dropped; the next write reopens the file.
            self._fh = None
            with contextlib.suppress(OSError):
                fh.close()
            # A full disk took part of the batch: the file ended in a cut line (jq and every
            # JSON-lines reader stop there). Cut back to the batch's start, its last whole
            # line (freeing space needs none); the batch raises as not written.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size > end:
                    os.ftruncate(fd, end)
            raise
        finally:
            os.close(fd)
        if fh.tell() >= self.max_bytes:
            self._rotate()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _moved(self) -> bool:
        """The open file is no longer the one at `path`: an operator moved it aside (mv, or
        logrotate's default `create`). Its lines went on into the moved file, and the next
        size rotation failed on the missing path, stopping a live daemon (or renamed
        logrotate's new empty file over `.jsonl.1`). Reopened at `path` instead, as
        logging's WatchedFileHandler does; a truncated file (`copytruncate`) is the same
        file and is appended to as before."""
        assert self._fh is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        own = os.fstat(self._fh.fileno())
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_suffix(f".jsonl.{i}")
            if src.exists():
                os.replace(src, self.path.with_suffix(f".jsonl.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_suffix(".jsonl.1"))
        else:
            self.path.unlink()


# Jobs of the writer process (storage/child.py), run there.


def child_open(state: dict[str, Any], args: tuple[str, int, int]) -> None:
    # Touches nothing on disk: a writer closed before it answered is not waited for, and
    # a folder made here then could reappear after its owner removed it (the parent makes
    # it, and a folder that cannot be fails there, at the first flush).
    path, max_bytes, backups = args
    sink = state["audit"] = _Sink(Path(path), max_bytes, backups)
    state.setdefault("_closers", []).append(sink.close)


def child_lines(state: dict[str, Any], batch: Sequence[tuple[int, Any, Any]]) -> None:
    sink = state["audit"]
    try:
        sink.write(_encode(batch))
    except OSError as e:
        # A write error names no file (ENOSPC on an open file): this one, since the process
        # may be shared with the store's writes (ChildWriter.share).
        raise OSError(e.errno, f"cannot write the audit log {sink.path}: {e.strerror}") from e


def child_close(state: dict[str, Any], _: Any) -> None:
    """This log is done with a process it shares (with the store): its file is closed and
    forgotten there, so a store reused for run after run holds no file of an earlier one."""
    sink = state.pop("audit", None)
    if sink is not None:
        sink.close()
        closers = state.get("_closers", [])
        if sink.close in closers:
            closers.remove(sink.close)


def child_release(state: dict[str, Any], _: Any) -> None:
    """Close the file (reopened at the next write): the parent is about to rewrite it."""
    state["audit"].close()
