"""The audit trail: every order state and every fill as one JSON line, in rotating files.

Separate from the operational log so that it survives log-level changes and can be kept under
its own retention. Lines are buffered and written once per bar; files rotate at a size limit and
only `backups` old files are kept, so a daemon running for months uses bounded disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TextIO

from .core.types import Fill, Order


# Orders and fills hold only scalars, string enums and datetimes, so a flat dict of their
# fields is the whole record; dataclasses.asdict would deep-copy every value.
_ORDER_FIELDS = tuple(f.name for f in fields(Order))
_FILL_FIELDS = tuple(f.name for f in fields(Fill))


_ISO: dict[Any, str] = {}


def _default(o: Any) -> Any:
    if hasattr(o, "isoformat"):
        s = _ISO.get(o)  # the same few bar times recur in every line of a bar
        if s is None:
            if len(_ISO) >= 4096:
                _ISO.clear()
            s = _ISO[o] = o.isoformat()
        return s
    return str(o)


class AuditLog:
    def __init__(
        self, directory: str | Path, run_id: str, max_bytes: int = 50_000_000, backups: int = 10
    ) -> None:
        self.path = Path(directory) / f"{_safe(run_id)}.jsonl"
        self.max_bytes = max_bytes
        self.backups = backups
        self._lines: list[str] = []
        self._fh: TextIO | None = None

    def _open(self) -> TextIO:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        return self._fh

    def orders(self, orders: Sequence[Order]) -> None:
        for o in orders:
            row = {"event": "order"} | {n: getattr(o, n) for n in _ORDER_FIELDS}
            self._lines.append(json.dumps(row, default=_default))

    def fills(self, fills: Sequence[Fill]) -> None:
        for f in fills:
            row = {"event": "fill"} | {n: getattr(f, n) for n in _FILL_FIELDS}
            self._lines.append(json.dumps(row, default=_default))

    def flush(self) -> None:
        if not self._lines:
            return
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

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
