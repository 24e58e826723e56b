"""The audit trail: every order state and every fill as one JSON line, in rotating files.

Separate from the operational log so that it survives log-level changes and can be kept under
its own retention. Records are kept as the tuples of their field values (one C call per order
or fill on the engine's path) and written at the end of a bar once `flush_interval_s` has
passed since the last write, when `max_lines` are waiting, or when forced; files rotate at a
size limit and only `backups` old files are kept, so a daemon running for months uses bounded
disk.

Where the JSON is made and written depends on the run:

- a replay (`flush_interval_s > 0`, the default `background`): a writer process
  (storage/child.py) gets each batch of tuples, encodes it a column at a time and appends it
  to the file while the engine computes the next bars (a thread would not help: encoding is
  Python work, and Python runs one thread at a time). That process is the store's when it has
  one (`share_writer`: an SQLite file's replay), else one of this log's own. At most
  `max_pending` batches of this log wait there (the store's share besides, in a shared one);
  then `flush` waits for the oldest (back-pressure). In the store's process the lines go
  out with the store's writes, in the same message (`ChildWriter.add_rider`): the records
  are the store's own tuples (the engine passes them), so they are pickled once; on their
  own only when `max_lines` wait. A write that failed there raises at the
  next `flush` or at `close`, and this log's later batches are not written; in a shared
  process the store's writes go on (its own failures raise at its calls), so a replay that
  fails on a full audit folder still ends its run's row as failed.
- a live run (`flush_interval_s = 0`): every `flush` encodes and writes its lines before it
  returns, so a bar's lines are in the file before the store can commit that bar's checkpoint
  (the engine flushes the audit first): a crash never leaves the store ahead of the audit.

`flush(force=True)`, `session`, `truncate_after` and `close` always return with every line
recorded so far written to the file (after the writer's batches, in order).

The lines, the file and the writer process's jobs are in audit_file.py, a module light on
imports (the writer process imports it, not this one and its structlog).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

# The lines, the file and the writer process's jobs (audit_file.py: light on imports, for
# the writer process).
from .audit_file import (
    _ENCODER,
    _FILL_WIDTH,
    _FILLS,
    _LINE,
    _ORDER_WIDTH,
    _ORDERS,
    _encode,
    _null_non_finite,
    _Sink,
)
from .audit_prune import prune_replay_logs
from .core.errors import ConfigError, StorageError
from .core.types import Fill, Order
from .storage.child import ChildWriter
from .storage.rows import FILL_RECORDS as _FILL_RECORDS
from .storage.rows import ORDER_RECORDS as _ORDER_RECORDS
from .storage.rows import Record

log = structlog.get_logger("tradingd.audit")


class AuditLog:
    def __init__(
        self,
        directory: str | Path,
        run_id: str,
        max_bytes: int = 50_000_000,
        backups: int = 10,
        flush_interval_s: float = 1.0,
        max_lines: int = 10_000,
        *,
        background: bool | None = None,
        max_pending: int = 2,
        share_writer: Callable[[], ChildWriter | None] | None = None,
        keep_runs: int = 0,
    ) -> None:
        """`background`: encode and write in a writer process (default: when
        `flush_interval_s > 0`, i.e. not live); `max_pending`: batches it may hold;
        `share_writer`: gives a writer process to share (the store's, see
        `ChildWriter.share`), or None for one of this log's own. `keep_runs`: a replay's
        `begin_run` leaves the folder with the newest `keep_runs` replays' logs, its own
        included (`log.audit_keep_runs`, audit_prune.py); 0 removes none."""
        # `~` expanded as the run lock, preflight and the store's path expand theirs: a
        # `log.audit_dir = "~/audit"` wrote a folder named "~" in the working folder, while
        # the run's lock went to the home's audit folder.
        self.path = audit_path(Path(directory).expanduser(), run_id)
        self._live_mark = self.path.with_name(self.path.name + ".live")
        self.max_bytes = max_bytes
        self.backups = backups
        self.keep_runs = keep_runs
        self.flush_interval_s = flush_interval_s
        self.max_lines = max_lines
        self.background = flush_interval_s > 0 if background is None else background
        self.max_pending = max(1, max_pending)
        self._batch: list[tuple[int, Any, Any]] = []
        self._waiting = 0  # lines in `_batch`
        self._last_write = -float("inf")
        self._sink = _Sink(self.path, max_bytes, backups)  # written here: live, truncate
        self._writer: ChildWriter | None = None
        self._writer_ready = False
        self._share_writer = share_writer
        self._shared = False  # the writer process is the store's (see flush)
        self._writer_user = ""  # the name this log has in it
        self._riding = False  # its lines go out with the store's writes (see flush)

    def orders(
        self,
        orders: Sequence[Order],
        records: Sequence[Record] | None = None,
        booked_at: datetime | None = None,
    ) -> None:
        """`records`: the store's tuples of these orders (`_ORDER_RECORDS`), kept as
        they are instead of made again (they are snapshots: every value is immutable).
        `booked_at`: the bar at which the engine recorded these states (live, as for
        `fills`): what a resumed run's `truncate_after` goes by. An order's own times are
        the broker's clock (Alpaca's `updated_at`: the wall clock, always after the bar's
        label), so every restart dropped the last bar's order lines as if after the
        checkpoint, and the legs still working at the broker had no record at all."""
        if orders:
            if records is None or len(records) != len(orders) or len(records[0]) != _ORDER_WIDTH:
                records = _ORDER_RECORDS(orders)  # not the store's: made here
            self._batch.append((_ORDERS, records, booked_at))
            self._waiting += len(orders)

    def fills(
        self,
        fills: Sequence[Fill],
        booked_at: datetime | None = None,
        records: Sequence[Record] | None = None,
    ) -> None:
        """`booked_at`: the bar at which the engine booked them (live), kept with each line
        so a resumed run drops exactly the fills its store drops. `records`: as `orders`."""
        if fills:
            if records is None or len(records) != len(fills) or len(records[0]) != _FILL_WIDTH:
                records = _FILL_RECORDS(fills)
            self._batch.append((_FILLS, records, booked_at))
            self._waiting += len(fills)

    def flush(self, force: bool = False) -> None:
        writer = self._writer
        if writer is not None:
            # A batch that failed there raises here, at the next bar (a failed write of the
            # store's, sharing the process, raises at the store's own calls).
            writer.reap(self._writer_user)
            self._check_ready(writer)
            if self._riding:
                # The store's next write takes the lines along (`_ride`); they go on their
                # own when forced, or when too many wait (memory stays bounded).
                if force or self._waiting >= self.max_lines:
                    job = self._ride()
                    if job is not None:
                        writer.send(*job, user=self._writer_user)
                    if force:
                        writer.sync(self._writer_user)
                return
        if not self._batch and not (force and writer is not None):
            return
        now = time.monotonic()
        if (
            not force
            and self._waiting < self.max_lines
            and now - self._last_write < self.flush_interval_s
        ):
            return
        self._last_write = now
        batch, self._batch, self._waiting = self._batch, [], 0
        if self.background and writer is None:
            # Started at the first write, it imports while the replay goes on.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shared = self._share_writer() if self._share_writer is not None else None
            name = f"audit {self.path}"
            self._shared = shared is not None
            self._writer_user = name
            writer = self._writer = (
                shared.share(name, self.max_pending)
                if shared is not None
                else ChildWriter(name, self.max_pending)
            )
            writer.send(
                "tradingd.audit_file:child_open",
                (str(self.path), self.max_bytes, self.backups),
                user=name,
            )
            self._check_ready(writer)
        if writer is None or not self._writer_ready:
            # Live, or a replay whose writer process is still starting: written here.
            if batch:
                try:
                    self._sink.write(_encode(batch))
                except OSError as e:
                    # A full disk under a live daemon: the operator's error names the file
                    # (it was a traceback naming none, exit 1, and a restart loop).
                    raise StorageError(
                        f"cannot write the audit log {self.path}: {e.strerror or e}"
                    ) from e
            return
        if batch:
            writer.send("tradingd.audit_file:child_lines", batch, user=self._writer_user)
        if force:
            writer.sync(self._writer_user)

    def _check_ready(self, writer: ChildWriter) -> None:
        """Once the writer process is past its start-up, it appends (after the open): the
        file is closed here. In the store's process, this log's lines then go out with the
        store's rows, in one message, so the records both keep (the same tuples) are
        pickled once (ChildWriter.add_rider)."""
        if self._writer_ready:
            return
        writer.reap(self._writer_user)
        if writer.started:
            self._writer_ready = True
            self._sink.close()
            if self._shared:
                writer.add_rider(self._ride, user=self._writer_user)
                self._riding = True

    def _ride(self) -> tuple[str, Any] | None:
        """This log's waiting lines as a job for the writer process, taken (see `flush`)."""
        if not self._batch:
            return None
        batch, self._batch, self._waiting = self._batch, [], 0
        self._last_write = time.monotonic()
        return ("tradingd.audit_file:child_lines", batch)

    def session(self, *, resumed: bool = False, keep_log: bool = False, **info: Any) -> None:
        """Mark a process session (pid, start, where a resumed run continued from): a reader
        sees where each process's records begin. `resumed`: the engine continues this run
        from its stored record (False: a new run, which is what the line says). `keep_log`:
        a new run whose store holds this run id's record all the same (only a control stored
        before its first bar, `Engine._without_control_row`): the earlier process's lines
        are this run's, kept where they are. The line said `resumed=True` for such a run,
        which the engine starts as a new one from its first bar.

        A live start refuses a replay's log of its run id (ConfigError, `check_live`). A
        fresh start that finds an earlier live run's log with records (its store was
        deleted, e.g. the demo's) sets those files aside, renamed with the time, so the new
        run's log holds its records alone."""
        self.check_live()
        if not (resumed or keep_log):
            self._set_aside()
        # Marks the log as a live run's, whose records a replay must never delete (begin_run),
        # whatever store each uses: the file alone cannot say (it rotates).
        self._live_mark.parent.mkdir(parents=True, exist_ok=True)
        self._live_mark.touch()
        row = {"event": "session", "pid": os.getpid(), **info, "resumed": resumed}
        line = _ENCODER.encode(_null_non_finite({k: _plain(v) for k, v in row.items()}))
        self._batch.append((_LINE, line, None))
        self._waiting += 1
        self.flush(force=True)

    def cash_in_lieu(
        self, time: datetime, symbol: str, shares: float, price: float, cash: float
    ) -> None:
        """A split's fraction of a share booked as cash at bar `time` (its close's `price`):
        one line, written with the bar's records (and dropped with them by `truncate_after`
        when a resumed run books the bar again)."""
        row = {
            "event": "cash_in_lieu",
            "time": time,
            "symbol": symbol,
            "shares": shares,
            "price": price,
            "cash": cash,
        }
        line = _ENCODER.encode(_null_non_finite({k: _plain(v) for k, v in row.items()}))
        self._batch.append((_LINE, line, None))
        self._waiting += 1

    def adjustment(self, time: datetime, symbol: str, **fields: Any) -> None:
        """An operator's adjustment of the book at bar `time` (`POST /adopt`: the broker's
        quantity taken as a trade or a missed split): one line beside the bar's fills,
        dropped with them by `truncate_after` when a resumed run books the bar again."""
        row = {"event": "adjustment", "time": time, "symbol": symbol, **fields}
        line = _ENCODER.encode(_null_non_finite({k: _plain(v) for k, v in row.items()}))
        self._batch.append((_LINE, line, None))
        self._waiting += 1

    def check_live(self) -> None:
        """ConfigError when this log holds a replay's records: a live run must not write
        into it (`session`) nor cut it (`truncate_after`). The store refuses a replay's
        record (`resume_run`) in its own database only: a live run on another store
        appended to the backtest's log and marked it live, so every later replay of that
        run id was refused (and, once that store held the run, its restart cut the
        backtest's records as a crashed bar's). A live run's log carries the live mark, or,
        written before marks existed, its session lines; a replay writes neither."""
        if self._live_mark.exists():
            return
        files = [p for p in self._files() if p.stat().st_size > 0]
        if files and not any(_has_session_line(p) for p in files):
            raise ConfigError(
                f"the audit log {self.path} holds a replay's records of this run id (no "
                f"{self._live_mark.name} marks it as a live run's): a live run cannot continue "
                "it; give this run another run.run_id (an empty one derives its own from the "
                "config), or another log.audit_dir"
            )

    def _files(self) -> list[Path]:
        """This log's files on disk: the current one and its rotated backups."""
        backups = (self.path.with_suffix(f".jsonl.{i}") for i in range(1, self.backups + 1))
        return [p for p in (self.path, *backups) if p.exists()]

    def _set_aside(self) -> None:
        """See `session`: an earlier live run's log of this run id renamed out of the way."""
        files = self._files()
        if all(p.stat().st_size == 0 for p in files):
            return
        self._release()
        # The rotated files keep their numbers: "<run_id>.before-<UTC time>.jsonl.1", ...
        suffixes = [p.name.removeprefix(self.path.name) for p in files]
        stem = f"{self.path.name.removesuffix('.jsonl')}.before-"
        stem += datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside, n = self.path.with_name(f"{stem}.jsonl"), 1
        while any(aside.with_name(aside.name + x).exists() for x in suffixes):
            n += 1
            aside = self.path.with_name(f"{stem}-{n}.jsonl")
        for path, suffix in zip(files, suffixes, strict=True):
            target = aside.with_name(aside.name + suffix)
            try:
                os.replace(path, target)
            except OSError as e:
                raise StorageError(
                    f"cannot set the earlier live run's audit log {path} aside (as {target}): "
                    f"{e.strerror or e}; move it out of the way, or give this run another "
                    "run.run_id"
                ) from e
        log.warning(
            "audit.earlier_live_run_set_aside",
            path=str(self.path),
            moved_to=str(aside),
            files=len(files),
            reason="a fresh start of this run id (its store holds no record of it) found an "
            "earlier live run's audit log: its records are kept there, not mixed with this "
            "run's",
        )

    def begin_run(self) -> int:
        """A replay starts afresh, as the store does (`begin_run` deletes a run id's earlier
        rows): the records an earlier run with this run id left go too, rotated files
        included, so the audit log holds this run's records once and agrees with the store.
        A rerun of a backtest used to append a whole second copy. Returns the number of
        files removed. Refuses (ConfigError) when a live run writes this log.

        Then, with `keep_runs`, other replays' logs beyond the newest `keep_runs - 1` go
        (audit_prune.py): a hundred backtests a day left 1.5 GB a day in the folder."""
        self.check_replayable()
        self._release()
        removed = 0
        backups = (self.path.with_suffix(f".jsonl.{i}") for i in range(1, self.backups + 1))
        for path in (self.path, *backups):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        if self.keep_runs > 0 and self.path.parent.is_dir():
            prune_replay_logs(self.path.parent, self.keep_runs - 1, self.path.name)
        return removed

    def check_replayable(self) -> None:
        """ConfigError when a live run writes this log (`session` marked it): a replay must
        not delete it. The engine asks before the store deletes the run id's rows, so a
        refused replay leaves the store as it was."""
        if self._live_mark.exists():
            raise ConfigError(
                f"the audit log {self.path} is a live run's ({self._live_mark} marks it): a "
                "replay starts by deleting its run id's audit log; set run.run_id to a name "
                "of its own for this run, or another log.audit_dir"
            )

    def _release(self) -> None:
        """Every record so far on disk and the file closed, here and in the writer process
        (it reopens it at its next write): the caller is about to rewrite or remove it."""
        self.flush(force=True)
        if self._writer is not None and self._writer_ready:
            self._writer.send("tradingd.audit_file:child_release", None, user=self._writer_user)
            self._writer.sync(self._writer_user)
        self._sink.close()

    def truncate_after(self, t: datetime | None, stopped_cleanly: bool = False) -> int:
        """Drop the records of bars after `t` that an earlier process wrote before it died:
        the store drops the same rows (`resume_run`) and the resumed run writes them again,
        so the audit never holds a record twice and agrees with the store. The current file
        first, then the rotated ones while the newer held nothing kept: a rotation right
        after a bar past the checkpoint put that bar's records in `.jsonl.1`, where they
        were kept, and written again by the resumed run. Returns the number of lines
        dropped. Refuses (ConfigError) a replay's log (`check_live`).

        `stopped_cleanly`: the last process ended its run after its last bar, so an order line
        without `booked_at` (a build before it) is of a bar up to `t`, whatever its time."""
        self.check_live()
        self._release()
        total = 0
        for path in self._chain():  # the current file may be rotated away just before a death
            dropped, kept = _drop_after(path, t, stopped_cleanly)
            total += dropped
            if kept:
                break  # older files hold older records
        return total

    def last_fill_time(self) -> datetime | None:
        """The bar of the newest fill line in this run's files (the current one, then the
        rotated ones while they hold none), None when there is none: a resume compares it
        with the store's (`Engine._warn_if_audit_behind`)."""
        for path in self._chain():
            newest = max(_line_times(path, _FILL_LINE, missing_ok=False), default=None)
            if newest is not None:
                return newest
        return None

    def files_present(self) -> bool:
        """Whether any file of this log is in the folder: the current one, its numbered
        backups, one logrotate renamed (`.jsonl-20261201`, `.jsonl.1.gz`), or its `.live`
        mark (a rotation with `log.audit_backups = 0` removes the current file, and the
        mark is then all there is). None means the audit folder was not restored with the
        store (`Engine._warn_if_audit_behind`)."""
        own = re.compile(re.escape(self.path.name) + _ROTATED_SUFFIX)
        mark = self._live_mark.name
        try:
            with os.scandir(self.path.parent) as entries:
                return any(e.name == mark or own.match(e.name) for e in entries)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StorageError(
                f"cannot list the audit folder {self.path.parent}: {e.strerror or e}"
            ) from e

    def first_record_time(self) -> datetime | None:
        """The earliest bar of an order, fill, cash-in-lieu or adjustment line in the files
        `last_fill_time` reads (the current one, then the numbered backups up to the first
        missing), None when they hold none. Records that all begin after the store's last
        fill are of a log rotated since (`log.audit_backups = 0`, logrotate), not of one
        left behind (`Engine._warn_if_audit_behind`)."""
        times = (t for path in self._chain() for t in _line_times(path, _DATED_LINES))
        return min(times, default=None)

    def _chain(self) -> list[Path]:
        """The current file (when there) and the numbered backups up to the first missing."""
        chain = [self.path] if self.path.exists() else []
        for i in range(1, self.backups + 1):
            backup = self.path.with_suffix(f".jsonl.{i}")
            if not backup.exists():
                break
            chain.append(backup)
        return chain

    def close(self) -> None:
        try:
            self.flush(force=True)
        finally:
            writer, self._writer = self._writer, None
            try:
                if writer is not None:
                    if self._riding:
                        writer.remove_rider(self._ride)
                        self._riding = False
                    try:
                        if self._shared and self._writer_ready:
                            # The store's process lives on: this log's file closes there.
                            writer.send(
                                "tradingd.audit_file:child_close", None, user=self._writer_user
                            )
                    finally:
                        # One never used is not waited for; a shared one ends this log's
                        # share.
                        writer.close(sync=self._writer_ready, user=self._writer_user)
            finally:
                self._sink.close()


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


_TORN = object()


def _record_time(line: str, stopped_cleanly: bool = False) -> Any:
    """The bar time of an order, fill, cash-in-lieu or adjustment line; None for a session
    line, and for an order line without `booked_at` after a clean stop (see
    `truncate_after`); `_TORN` for a line that is not JSON (the last line of a process killed
    while writing it)."""
    try:
        row = json.loads(line)
    except ValueError:
        return _TORN
    if not isinstance(row, dict):
        return None
    if stopped_cleanly and row.get("event") == "order" and not row.get("booked_at"):
        return None
    text = {
        # The bar that recorded it (live, since 2026-12-06); else, a line written before,
        # the order's own time.
        "order": row.get("booked_at") or row.get("updated_at") or row.get("created_at"),
        "fill": row.get("booked_at") or row.get("time"),
        "cash_in_lieu": row.get("time"),
        "adjustment": row.get("time"),
    }.get(str(row.get("event")))
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


_SESSION_LINE = b'{"event": "session"'


def _line_times(
    path: Path, prefixes: bytes | tuple[bytes, ...], *, missing_ok: bool = True
) -> Iterator[datetime]:
    """The bar times of `path`'s lines starting with `prefixes` (`AuditLog.last_fill_time`,
    `first_record_time`); a file gone since it was listed has none when `missing_ok`."""
    try:
        with path.open("rb") as fh:
            for raw in fh:
                if raw.startswith(prefixes):
                    when = _record_time(raw.decode("utf-8", errors="replace"))
                    if isinstance(when, datetime):
                        yield when
    except OSError as e:
        if missing_ok and isinstance(e, FileNotFoundError):
            return
        raise StorageError(f"cannot read the audit log {path}: {e.strerror or e}") from e


_FILL_LINE = b'{"event": "fill"'
# The lines `_record_time` dates (a session line has no bar).
_DATED_LINES = tuple(
    f'{{"event": "{e}"'.encode() for e in ("order", "fill", "cash_in_lieu", "adjustment")
)
# After a log's file name: its numbered backup, logrotate's (dateext) rename, compressed.
_ROTATED_SUFFIX = r"(?:[.-][0-9][0-9._-]*)?(?:\.(?:gz|bz2|xz|zst|lz4|Z))?$"


def _has_session_line(path: Path) -> bool:
    """Whether a line of `path` is a session's (a live process's start: `AuditLog.session`)."""
    try:
        with path.open("rb") as fh:
            return any(raw.startswith(_SESSION_LINE) for raw in fh)
    except OSError as e:
        raise StorageError(f"cannot read the audit log {path}: {e.strerror or e}") from e


def audit_path(directory: str | Path, run_id: str) -> Path:
    """The audit log of a run id (two run ids may share one: "a+b" and "a_b")."""
    return Path(directory) / f"{_safe(run_id)}.jsonl"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _drop_after(path: Path, t: datetime | None, stopped_cleanly: bool) -> tuple[int, bool]:
    """The lines of `path` of bars after `t` (and torn ones) dropped; (dropped, whether any
    line is kept)."""
    kept: list[str] = []
    dropped = 0
    end = 0  # the byte offset after the last kept line
    tail = True  # every dropped line comes after every kept one
    pos = 0
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8", errors="replace")
            when = _record_time(line, stopped_cleanly)
            if when is _TORN or (isinstance(when, datetime) and (t is None or when > t)):
                dropped += 1
            else:
                tail = tail and not dropped
                kept.append(line if line.endswith("\n") else line + "\n")
                end = pos + len(raw)
            pos += len(raw)
    if not dropped:
        return 0, bool(kept)
    try:
        if tail:
            # The usual case (the records of the bars after the checkpoint, a torn last
            # line): cut in place. A rewrite needed the whole file's size free again, which
            # a disk that had just filled up did not have.
            with path.open("r+b") as out:
                out.truncate(end)
                if end:
                    out.seek(end - 1)
                    if out.read(1) != b"\n":
                        out.write(b"\n")
        else:
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_text("".join(kept), encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    except OSError as e:
        raise StorageError(
            f"cannot drop the records after the checkpoint from the audit log {path}: "
            f"{e.strerror or e}"
        ) from e
    return dropped, bool(kept)
