"""The audit trail: every order state and every fill as one JSON line, in rotating files.

Separate from the operational log so that it survives log-level changes and can be kept under
its own retention. Lines are buffered and written at the end of a bar once `flush_interval_s`
has passed since the last write (so a live daemon writes every bar, a fast replay about once a
second) or when `max_lines` are waiting; files rotate at a size limit and only `backups` old
files are kept, so a daemon running for months uses bounded disk.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from .core.types import Fill, Order

# Orders and fills hold only scalars, string enums and datetimes, so a flat dict of their
# fields is the whole record; dataclasses.asdict would deep-copy every value.
_ORDER_FIELDS = tuple(f.name for f in fields(Order))
_FILL_FIELDS = tuple(f.name for f in fields(Fill))


_ISO: dict[Any, str] = {}


def _iso(t: Any) -> str | None:
    """The same few bar times recur in every line of a bar: format each once (bounded)."""
    if t is None:
        return None
    s = _ISO.get(t)
    if s is None:
        if len(_ISO) >= 4096:
            _ISO.clear()
        s = _ISO[t] = t.isoformat()
    return s


# One encoder for the process: json.dumps builds a new encoder on every call. The records
# hold no containers, so the circular-reference check is pure cost. allow_nan=False: NaN is
# not JSON (jq and most parsers reject it), so a value that slips through is a loud bug here
# rather than an unreadable line; `_null_non_finite` turns the known ones into null first.
_ENCODER = json.JSONEncoder(check_circular=False, default=str, allow_nan=False)


def _null_non_finite(row: dict[str, Any]) -> dict[str, Any]:
    """An unfilled order's average price is NaN in memory; in the file it is null."""
    for k, v in row.items():
        if v.__class__ is float and not math.isfinite(v):
            row[k] = None
    return row


class AuditLog:
    def __init__(
        self,
        directory: str | Path,
        run_id: str,
        max_bytes: int = 50_000_000,
        backups: int = 10,
        flush_interval_s: float = 1.0,
        max_lines: int = 10_000,
    ) -> None:
        self.path = Path(directory) / f"{_safe(run_id)}.jsonl"
        self.max_bytes = max_bytes
        self.backups = backups
        self.flush_interval_s = flush_interval_s
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._fh: TextIO | None = None
        self._last_write = -float("inf")

    def _open(self) -> TextIO:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        return self._fh

    def orders(self, orders: Sequence[Order]) -> None:
        enc = _ENCODER.encode
        for o in orders:
            row = {"event": "order"} | {n: getattr(o, n) for n in _ORDER_FIELDS}
            row["created_at"] = _iso(o.created_at)
            row["updated_at"] = _iso(o.updated_at)
            self._lines.append(enc(_null_non_finite(row)))

    def fills(self, fills: Sequence[Fill], booked_at: datetime | None = None) -> None:
        """`booked_at`: the bar at which the engine booked them (live), kept with each line
        so a resumed run drops exactly the fills its store drops."""
        enc = _ENCODER.encode
        booked = _iso(booked_at)
        for f in fills:
            row = {"event": "fill"} | {n: getattr(f, n) for n in _FILL_FIELDS}
            row["time"] = _iso(f.time)
            if booked is not None:
                row["booked_at"] = booked
            self._lines.append(enc(_null_non_finite(row)))

    def flush(self, force: bool = False) -> None:
        if not self._lines:
            return
        now = time.monotonic()
        if (
            not force
            and len(self._lines) < self.max_lines
            and now - self._last_write < self.flush_interval_s
        ):
            return
        self._last_write = now
        fh = self._open()
        fh.write("\n".join(self._lines) + "\n")
        fh.flush()
        self._lines.clear()
        if fh.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_suffix(f".jsonl.{i}")
            if src.exists():
                os.replace(src, self.path.with_suffix(f".jsonl.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_suffix(".jsonl.1"))
        else:
            self.path.unlink()

    def session(self, **info: Any) -> None:
        """Mark a process session (pid, start, where a resumed run continued from): a reader
        sees where each process's records begin."""
        row = {"event": "session", "pid": os.getpid(), **info}
        self._lines.append(
            _ENCODER.encode(_null_non_finite({k: _plain(v) for k, v in row.items()}))
        )
        self.flush(force=True)

    def truncate_after(self, t: datetime | None) -> int:
        """Drop the records of bars after `t` that an earlier process wrote before it died:
        the store drops the same rows (`resume_run`) and the resumed run writes them again,
        so the audit never holds a record twice and agrees with the store. Only the current
        file is read (a rotation happens at most once per bar, between bars). Returns the
        number of lines dropped."""
        self.flush(force=True)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if not self.path.exists():
            return 0
        kept: list[str] = []
        dropped = 0
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                when = _record_time(line)
                if when is _TORN or (isinstance(when, datetime) and (t is None or when > t)):
                    dropped += 1
                else:
                    kept.append(line if line.endswith("\n") else line + "\n")
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
        return dropped

    def close(self) -> None:
        self.flush(force=True)
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


_TORN = object()


def _record_time(line: str) -> Any:
    """The bar time of an order or fill line; None for a session line; `_TORN` for a line
    that is not JSON (the last line of a process killed while writing it)."""
    try:
        row = json.loads(line)
    except ValueError:
        return _TORN
    if not isinstance(row, dict):
        return None
    text = {
        "order": row.get("updated_at") or row.get("created_at"),
        "fill": row.get("booked_at") or row.get("time"),
    }.get(str(row.get("event")))
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
