"""A durable, bounded, append-only spool of store batches for database outages.

When the database is unreachable, a store appends each batch it could not write (every
table's rows, the checkpoint row included) to its spool file and fsyncs it before `flush()`
returns, so an order intent flushed before the order is sent is on disk even while the
database is down. A background task replays the spool when the database is back.

File format (one file per writing process, `<writer>.spool`, JSON lines with a checksum)::

    <crc32 of the JSON, 8 hex digits> <JSON object>\\n

The first line is a header (`{"kind": "spool", "v": 1, "writer": ..., "target": ...}`),
every further line one batch (`{"kind": "batch", "writer": ..., "seq": ..., "t": ...,
"tables": {table: [row, ...]}, "ops": [[name, args], ...]}`). JSON escapes newlines inside
strings, so a record is exactly one line. Row values are tagged where JSON would lose them:
a datetime is `{"$dt": "<ISO-8601>"}`, a non-finite float `{"$f": "nan" | "inf" | "-inf"}`.

A record torn by a crash in the middle of an append (no newline, or a checksum that does not
match, on the LAST line) is ignored with a warning: its `flush()` never returned, so nothing
relied on it. A bad record followed by good ones is corruption, not a torn append: reading
stops with `SpoolCorrupt` naming the file and the byte offset (nothing is skipped silently).

A live writer holds an exclusive `flock` on its file for its lifetime; a file nobody holds
is an orphan of a process that died, and the next store to start on the same spool
directory replays it (unless its batches are older than the checkpoint the database
holds of their run: `SpoolStale`, see `BufferedStore._refuse_stale`). The file is created
under a temporary name, locked, then renamed, so
no other process can see it unlocked. What flock's error means is `core.flock`'s: a file
another process holds is left to it; any other failure is a `SpoolError` naming the file and
the errno, on a filesystem without locks (ENOLCK: some NFS and FUSE mounts) as well: without
its lock a live writer's spool cannot be told from an orphan, and replaying one that is
still written wrote its batches twice, so the spool has no unlocked mode (put
`storage.spool_dir` on a local disk). That one is `SpoolLocksUnsupported`, a set-up mistake
and a ConfigError too (`tradingd run` exits with EX_CONFIG, not restarted by systemd).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import structlog

from ..core import flock
from ..core.errors import ConfigError, StorageError

log = structlog.get_logger(__name__)

VERSION = 1
SUFFIX = ".spool"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SpoolError(StorageError):
    """The spool cannot take or give back a batch: the operator must act."""


class SpoolLocksUnsupported(SpoolError, ConfigError):
    """`storage.spool_dir` is on a filesystem without file locks (`core.flock`: ENOLCK,
    ENOTSUP, ENOSYS, EINVAL): a set-up mistake no restart ends, so a ConfigError too
    (`tradingd run` exits with EX_CONFIG, which systemd does not restart). A spool file
    whose lock fails for another reason (EIO, EBADF) stays a SpoolError, as a full spool."""


class SpoolDirUnusable(SpoolError, ConfigError):
    """`storage.spool_dir` cannot be a folder this process writes in: a file where the
    folder should be (or above it), no permission, a read-only filesystem. A set-up mistake
    no restart ends: a ConfigError too (`tradingd run` exits EX_CONFIG, which systemd does
    not restart). A full disk or an I/O error stays a SpoolError (2): freed or repaired, a
    restart goes through."""


class SpoolDirFull(SpoolError):
    """`storage.spool_dir`'s disk (or quota) is full: the probe at start could not write.
    The folder's own spool files may be what fills it: the start replays them first (read,
    written to the database, removed) and probes again (`BufferedStore._replay_orphans`)."""


# The errnos of a spool folder that is the operator's to fix (`SpoolDirUnusable`).
_SET_UP_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}
)
# The errnos of a full disk or quota (`SpoolDirFull`).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def spool_files(directory: Path) -> list[Path]:
    """The spool files in `directory` (none when it cannot be listed)."""
    try:
        return sorted(directory.glob(f"*{SUFFIX}"))
    except OSError:
        return []


def _left_here(directory: Path, full: bool) -> str:
    """What a message advising another `storage.spool_dir` must add when the folder holds
    spool files: their records are not in the database, and only a start on the folder
    that holds them writes them (elsewhere, the run goes on without them, and the files
    are refused as stale later). Empty when it holds none."""
    files = spool_files(directory)
    if not files:
        return ""
    names = ", ".join(p.name for p in files[:5]) + (
        f" and {len(files) - 5} more" if len(files) > 5 else ""
    )
    fix = "free space on that disk" if full else "make the folder usable again"
    return (
        f" It holds {len(files)} spool file(s) with records not yet in the database "
        f"({names}): only a start on the folder that holds them writes them, so {fix} "
        "rather than point storage.spool_dir elsewhere, or move these files into the new "
        "folder too (a run continued without them loses their orders and fills, and they "
        "are refused as stale later)"
    )


def _lock_failed(path: Path, exc: OSError, step: str) -> SpoolError:
    """The error of a spool file's flock that failed (not held by another process): it
    names the file, the errno and what to do."""
    if flock.is_unsupported(exc):
        return SpoolLocksUnsupported(
            f"cannot lock the storage spool file {path} to {step} ({flock.errno_text(exc)}): "
            "this filesystem refuses file locks, and without them a live daemon's spool "
            "cannot be told from the spool of one that died (replayed while it is written, "
            "its batches were written twice); set storage.spool_dir to a folder on a local "
            "disk"
        )
    return SpoolError(
        f"cannot lock the storage spool file {path} to {step} ({flock.errno_text(exc)}): "
        "nothing was done to it without its lock; fix the file or its disk (or move it "
        "aside: its rows are then not in the database)"
    )


class SpoolFull(SpoolError):
    """The spool reached its size limit while the database is still unreachable."""


class SpoolCorrupt(SpoolError):
    """A record that is not the torn last one fails its checksum."""


class SpoolStale(SpoolError, ConfigError):
    """A spool left by a process that died holds batches older than what the database
    already has of a run (its checkpoint is before the stored one, or of the same bar as
    one stored after the spool began: `BufferedStore._refuse_stale`): the run was
    continued without it (by a store with another `storage.spool_dir`, say) and written on
    since. Written, the spool would set the run's checkpoint back and the next start would
    trade its bars again. Only the operator can tell what the file still holds of value, so
    it is left in place and the start refused: a ConfigError too (`tradingd run` exits with
    EX_CONFIG, which systemd does not restart; a restart would refuse again)."""


def safe_name(text: str) -> str:
    """`text` as one file-name component (letters, digits, `.`, `_`, `-`)."""
    name = _SAFE.sub("_", text).strip("._")
    return name[:120] or "store"


@dataclasses.dataclass(frozen=True)
class SpoolBatch:
    """One store transaction: rows per table (tuples of `insert_columns`, encoded for the
    dialect) and named statements (`ops`, e.g. `end_run`), identified by the writer (one per
    store instance) and a sequence number that grows with every batch of that writer."""

    writer: str
    seq: int
    created: float  # Unix time the batch was made
    tables: Mapping[str, Sequence[tuple[Any, ...]]]
    ops: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.writer}:{self.seq}"

    @property
    def rows(self) -> int:
        return sum(len(r) for r in self.tables.values())


# ---------------------------------------------------------------------------------- encoding


def _enc(v: Any) -> Any:
    if v is None or isinstance(v, str | bool | int):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"$f": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(v, datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, date):
        return {"$date": v.isoformat()}
    if isinstance(v, list | tuple):
        return [_enc(x) for x in v]
    item = getattr(v, "item", None)  # numpy scalars
    if callable(item):
        return _enc(item())
    raise TypeError(f"cannot spool a value of type {type(v).__name__}: {v!r}")


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        if "$dt" in v:
            return datetime.fromisoformat(v["$dt"])
        if "$f" in v:
            return float(v["$f"])
        if "$date" in v:
            return date.fromisoformat(v["$date"])
        raise ValueError(f"unknown tagged value {v!r}")
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def encode_batch(batch: SpoolBatch) -> dict[str, Any]:
    return {
        "kind": "batch",
        "writer": batch.writer,
        "seq": batch.seq,
        "t": batch.created,
        "tables": {name: [_enc(list(r)) for r in rows] for name, rows in batch.tables.items()},
        "ops": [[name, _enc(list(args))] for name, args in batch.ops],
    }


def decode_batch(obj: Mapping[str, Any]) -> SpoolBatch:
    return SpoolBatch(
        writer=str(obj["writer"]),
        seq=int(obj["seq"]),
        created=float(obj["t"]),
        tables={
            name: _padded(name, [tuple(_dec(r)) for r in rows])
            for name, rows in obj["tables"].items()
        },
        ops=tuple((str(name), tuple(_dec(args))) for name, args in obj.get("ops", ())),
    )


def _padded(name: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows a spool of an earlier build holds, with NULL in the columns added since (a later
    build only adds nullable columns at the end, as `order_events.booked_at`): a daemon
    upgraded during an outage replays its spool into the new table."""
    from .schema import TABLES

    table = TABLES.get(name)
    if table is None:
        return rows
    n = len(table.insert_columns)
    return [r + (None,) * (n - len(r)) if len(r) < n else r for r in rows]


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """One record: checksum, space, compact JSON (ASCII only, so no raw newline), newline."""
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of a complete line, or None when it is torn or fails its checksum."""
    if not line.endswith(b"\n") or len(line) < 11 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def iter_records(path: Path, fd: int, start: int = 0) -> Iterator[tuple[dict[str, Any], int, int]]:
    """(record, start offset, end offset) of each record of the open file `fd` from byte
    `start`. A bad last line is a torn append: logged and ignored. A bad line with data after
    it raises SpoolCorrupt."""
    size = os.fstat(fd).st_size
    # A file description of its own (not a dup of `fd`, which would share the appender's
    # offset: reading ahead would move where the next append writes, over pending batches).
    with open(f"/proc/self/fd/{fd}", "rb", buffering=1 << 16) as f:
        f.seek(start)
        offset = start
        while offset < size:
            line = f.readline()
            if not line:
                break
            end = offset + len(line)
            obj = decode_line(line)
            if obj is None:
                if end >= size:
                    log.warning(
                        "storage.spool.torn_record_ignored",
                        path=str(path),
                        offset=offset,
                        bytes=len(line),
                        hint="a process died while appending this batch; its flush never "
                        "returned, so nothing relied on it",
                    )
                    return
                raise SpoolCorrupt(
                    f"spool {path} is corrupt at byte {offset} (a record fails its checksum "
                    f"and {size - end} bytes follow it): move the file aside and inspect it; "
                    "nothing was replayed from this record on"
                )
            yield obj, offset, end
            offset = end


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


# ---------------------------------------------------------------------------------- own spool


class Spool:
    """The spool file of one writer (one store instance): appended, replayed, emptied.

    The file is created at the first append (a store that never loses its database leaves
    no file; its folder is made and probed at start, `check_usable`). `append` raises
    SpoolFull rather than exceed `max_bytes`, and SpoolError when the disk refuses the write;
    in both cases nothing of the batch is in the file."""

    def __init__(
        self, directory: str | Path, writer: str, target: str, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 4096:
            raise ValueError(f"spool max_bytes must be an integer >= 4096, got {max_bytes!r}")
        self.directory = Path(directory)
        self.writer = safe_name(writer)
        self.target = target
        self.max_bytes = max_bytes
        self.path = self.directory / f"{self.writer}{SUFFIX}"
        self._fd: int | None = None
        self._size = 0
        self._header = 0
        # Offset of the first batch not yet written to the database.
        self._applied = 0
        # (created, end offset) of each batch not yet written, oldest first.
        self._pending: deque[tuple[float, int]] = deque()
        # Batches still to write when the file was closed (left for the next start).
        self.left_batches = 0
        self.appended = 0
        self.replayed = 0

    # state ---------------------------------------------------------------------------------
    @property
    def pending_batches(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._size - self._applied if self._pending else 0

    @property
    def size(self) -> int:
        """Bytes in the file now (header and replayed batches until it is emptied)."""
        return self._size

    @property
    def oldest(self) -> float | None:
        return self._pending[0][0] if self._pending else None

    # writing -------------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Make, write, fsync and lock a probe file in the folder, then remove it: at start,
        so that a folder the spool cannot use stops the start while the database is up,
        rather than showing at the first append of an outage, when the batch it should keep
        is in memory only. A probe left by a crash ends in `.tmp` and `claim_orphans`
        removes it."""
        probe = self.directory / f".{self.writer}.{os.getpid()}.probe.tmp"
        step = "make the folder"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            step = "create a file in it"
            fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                try:  # a new file: any lock error is a failure (the spool has no unlocked mode)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    raise _lock_failed(probe, e, "check the folder at start") from e
                step = "write and fsync a file in it"
                os.write(fd, b"probe\n")
                _sync(fd)
                _fsync_dir(self.directory)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    probe.unlink()
        except SpoolError:
            raise
        except OSError as e:
            full = e.errno in _FULL_ERRNOS
            kind: type[SpoolError] = SpoolError
            if e.errno in _SET_UP_ERRNOS:
                kind = SpoolDirUnusable
            elif full:
                kind = SpoolDirFull
            advice = "free space on its disk, or " if full else ""
            raise kind(
                f"storage.spool_dir {self.directory} cannot be used: cannot {step}: "
                f"{type(e).__name__}: {e}. The spool keeps every batch while the database "
                f"is unreachable; {advice}point storage.spool_dir at a writable folder on a "
                f"local disk.{_left_here(self.directory, full)}"
            ) from e

    def _create(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self.writer}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:  # a new file (O_EXCL): nobody else holds it, so any error is a failure
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                raise _lock_failed(tmp, e, "create it") from e
            header = encode_line(
                {
                    "kind": "spool",
                    "v": VERSION,
                    "writer": self.writer,
                    "target": self.target,
                    "pid": os.getpid(),
                    "created": time.time(),
                }
            )
            os.write(fd, header)
            os.fsync(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._size = self._applied = self._header = len(header)
        log.info("storage.spool.created", path=str(self.path), target=self.target)
        return fd

    def append(self, batch: SpoolBatch) -> int:
        """Write the batch and fsync it; the number of bytes written."""
        line = encode_line(encode_batch(batch))
        # Before the file exists, leave room for its header (a few hundred bytes).
        used = self._size if self._fd is not None else 512
        if used + len(line) > self.max_bytes:
            raise SpoolFull(
                f"storage spool {self.path} is full: {self._size} bytes spooled, a batch of "
                f"{len(line)} more would exceed storage.spool_max_bytes={self.max_bytes} while "
                f"the database {self.target} is unreachable. Nothing was dropped (the rows stay "
                "in memory until this process ends); bring the database back or raise "
                "storage.spool_max_bytes (the spool is replayed at the next start)"
            )
        try:
            if self._fd is None:
                self._fd = self._create()
            fd = self._fd
            view = memoryview(line)
            written = 0
            try:
                while written < len(line):
                    written += os.write(fd, view[written:])
                _sync(fd)
            except BaseException:
                # Leave no half record behind (best effort: a torn tail is ignored anyway).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                    os.lseek(fd, self._size, os.SEEK_SET)
                raise
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                fix = f"free space on the disk of {self.path.parent}"
            elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                fix = f"make {self.path.parent} writable for this user again"
            else:
                fix = "resolve that"
            raise SpoolError(
                f"cannot append to storage spool {self.path}: {type(e).__name__}: {e}, while "
                f"the database {self.target} is unreachable. Nothing was dropped (the rows "
                f"stay in memory until this process ends, and the next flush tries again): "
                f"{fix}, or bring the database back"
            ) from e
        self._size += len(line)
        self._pending.append((batch.created, self._size))
        self.appended += 1
        return len(line)

    # replaying -----------------------------------------------------------------------------
    def next_pending(self) -> SpoolBatch | None:
        """The oldest batch not yet written to the database (None: all are)."""
        if not self._pending or self._fd is None:
            return None
        for obj, _start, _end in iter_records(self.path, self._fd, self._applied):
            return decode_batch(obj)
        raise SpoolCorrupt(f"spool {self.path} lost the batch at byte {self._applied}")

    def mark_applied(self) -> None:
        """The batch `next_pending` returned is in the database."""
        _created, end = self._pending.popleft()
        self._applied = end
        self.replayed += 1

    def reset(self) -> None:
        """Every batch is in the database: empty the file (the header stays)."""
        if self._pending:
            raise SpoolError(f"spool {self.path} still holds {len(self._pending)} batches")
        if self._fd is not None and self._size > self._header:
            os.ftruncate(self._fd, self._header)
            os.lseek(self._fd, self._header, os.SEEK_SET)
            os.fsync(self._fd)
            self._size = self._applied = self._header

    def close(self) -> None:
        """Release the file: removed when it holds no batch still to write, left (for the
        next start to replay) when it does."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # What the process's exit says (`BufferedStore.spool_left`): its run's last records
        # are in this file, not in the database.
        self.left_batches = len(self._pending)
        try:
            if not self._pending:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                    _fsync_dir(self.directory)
            else:
                log.warning(
                    "storage.spool.left",
                    path=str(self.path),
                    batches=len(self._pending),
                    bytes=self._size - self._applied,
                    hint="the next start of a store on this spool directory writes them",
                )
        finally:
            os.close(fd)  # releases the lock
            # What is left is an orphan now, replayed by the next start (of this store, too).
            self._pending.clear()
            self._size = self._applied = self._header = 0


# ---------------------------------------------------------------------------------- orphans


class Orphan:
    """A spool file nobody holds (its process died), locked by this process to replay."""

    def __init__(self, path: Path, fd: int, header: dict[str, Any]) -> None:
        self.path = path
        self.fd = fd
        self.header = header

    @property
    def target(self) -> str | None:
        t = self.header.get("target")
        return t if isinstance(t, str) else None

    def batches(self) -> Iterator[SpoolBatch]:
        for obj, _start, _end in iter_records(self.path, self.fd, 0):
            if obj.get("kind") == "batch":
                yield decode_batch(obj)

    def remove(self) -> None:
        """Delete the file (every batch is in the database) and release it."""
        try:
            st = os.fstat(self.fd)
            with contextlib.suppress(FileNotFoundError):
                cur = os.stat(self.path)
                if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    self.path.unlink()
                    _fsync_dir(self.path.parent)
        finally:
            self.release()

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def claim_orphans(directory: str | Path, exclude: Path | None = None) -> list[Orphan]:
    """The spool files of `directory` that no live process holds, oldest writer first, each
    locked by this process until `remove()` or `release()`. Files another process holds are
    left alone; an empty or header-less file (a crash while creating it) is removed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    for tmp in d.glob(".*.tmp"):
        # A crash while creating a spool (header only): remove it unless it is being made.
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if flock.is_held(e):
                continue  # being made by a live process
            raise _lock_failed(tmp, e, "remove it (a spool left half made)") from e
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    found: list[Orphan] = []
    for path in sorted(d.glob(f"*{SUFFIX}")):
        if exclude is not None and path == exclude:
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # its owner removed it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if not flock.is_held(e):
                for claimed in found:
                    claimed.release()
                raise _lock_failed(path, e, "replay it") from e
            log.info("storage.spool.in_use", path=str(path), hint="held by a live process")
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            first = next(iter_records(path, fd, 0), None)
        except BaseException:
            os.close(fd)
            raise
        if first is None:  # empty, or a torn header: no batch was ever appended
            Orphan(path, fd, {}).remove()
            log.warning("storage.spool.empty_removed", path=str(path))
            continue
        header = first[0]
        if header.get("kind") != "spool" or header.get("v") != VERSION:
            os.close(fd)
            raise SpoolCorrupt(
                f"spool {path} does not start with a version {VERSION} spool header: move it "
                "aside and inspect it"
            )
        found.append(Orphan(path, fd, header))
    return found
