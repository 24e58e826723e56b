"""The backtests' audit logs kept in an audit folder: the newest `log.audit_keep_runs`.

Every `tradingd backtest` writes `<audit_dir>/<run_id>.jsonl` (about 14.5 MB for the
README's S&P 500 run), and a log was only ever replaced by a rerun of its own run id: a
researcher's hundred variants a day left about 1.5 GB a day that nothing removed and no
message named. A live run's log is bounded by rotation (`log.audit_max_bytes`,
`log.audit_backups`); a replay's log is bounded the same way within the run, but there was
no bound on how many runs' logs the folder keeps.

Why prune in the audit folder, not move the log into the run's output folder: everything
that finds a backtest's log (the run lock, which is taken in the audit folder by the log's
name; the live/replay refusal between `tradingd run` and `tradingd backtest` of one run id;
a rerun replacing its own log; the README's `var/audit/<run_id>.jsonl`) stays as it was,
and an `--output` folder shared by a sweep's variants keeps holding a record only.

What is removed, when a replay begins (`AuditLog.begin_run`, after its own earlier log went):
the logs of other replays beyond the newest `keep - 1` by their last write, so with this
run's own the folder keeps `keep`. Never removed:

- a live run's log: its `.live` mark, a session line (a live process's start, written
  before the marks existed) or a set-aside name (`<run_id>.before-<UTC time>.jsonl`);
- a log whose run is going on in another process (two backtests at once): its run lock
  (the lock file `_run_lock` takes in the audit folder) is held, and it is skipped;
- anything else in the folder (lock files, other files): a name counts as a backtest's log
  only when its run lock file already exists (a tradingd run of that name took it; pruning
  never creates one) and each of its files starts with an audit record (`{"event": "`).
  Before, any `*.jsonl` or `*.jsonl.<n>` counted: a researcher's `my-notes.jsonl` or
  `trials.jsonl.3` in the folder was removed once older than the newest runs, and a lock
  file was left for each name removed.

The removal is said in one log line (`audit.old_runs_removed`) naming the count and the
folder. `keep = 0` removes nothing (every log kept, as before).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from .core.flock import is_held

log = structlog.get_logger("tradingd.audit")

# `<base>.jsonl` and its rotated `<base>.jsonl.<n>` (audit_file._Sink).
_LOG_FILE = re.compile(r"^(?P<base>.+\.jsonl)(?:\.(?P<n>\d+))?$")
# An earlier live run's log set aside by a fresh start (AuditLog._set_aside).
_SET_ASIDE = re.compile(r"\.before-\d{8}T\d{6}Z(?:-\d+)?\.jsonl$")
_SESSION_LINE = b'{"event": "session"'
_RECORD_START = b'{"event": "'  # the first bytes of every audit line (audit_file)
# Opened, never created: a name no tradingd run took has no lock file, and is not a log.
_LOCK_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass(frozen=True)
class Pruned:
    """What `prune_replay_logs` did: the logs (runs) and files removed, their bytes, and the
    logs beyond the bound kept because their run is going on in another process."""

    runs: int = 0
    files: int = 0
    bytes: int = 0
    in_use: int = 0


def prune_replay_logs(directory: Path, keep_others: int, own: str) -> Pruned:
    """Remove the replay logs in `directory` beyond the newest `keep_others`, other than
    `own` (this run's log's file name, `<run_id>.jsonl`); see the module docstring. Logs
    one line when it removed any. A file that cannot be removed (gone meanwhile, no
    permission) is left, with a warning: pruning never fails a run."""
    try:
        groups = _replay_groups(directory, own)
    except OSError as e:
        log.warning(
            "audit.prune_skipped",
            folder=str(directory),
            reason=f"cannot list the audit folder: {e.strerror or e}",
        )
        return Pruned()
    # Ranked without live runs' logs (marked): they take none of the backtests' places.
    replays = {b: g for b, g in groups.items() if not (directory / f"{b}.live").exists()}
    newest = sorted(replays.items(), key=lambda kv: kv[1][0], reverse=True)
    runs = files = size = in_use = 0
    for base, (_, paths) in newest[max(0, keep_others) :]:
        if _has_session_line(paths) or not _all_audit_files(paths):
            continue  # a live run's from before the marks; or not tradingd's
        fd = _lock_unused(directory, base)
        if fd == _NOT_A_RUN:
            continue  # no run took this name: not tradingd's
        if fd is None:
            in_use += 1
            continue
        try:
            removed, n = _remove(paths)
        finally:
            _unlock(fd)
        if removed:
            runs += 1
            files += removed
            size += n
    if runs:
        log.info(
            "audit.old_runs_removed",
            folder=os.path.abspath(directory),  # var/audit: of which working folder
            runs=runs,
            files=files,
            bytes=size,
            keep=keep_others + 1,
            reason="log.audit_keep_runs keeps the newest backtests' audit logs (live runs' "
            "logs are never removed); raise it, or 0 keeps them all",
        )
    return Pruned(runs, files, size, in_use)


def _replay_groups(directory: Path, own: str) -> dict[str, tuple[float, list[Path]]]:
    """Each log's files by its base name, with its newest file's time; this run's own, live
    runs' set-aside logs and everything else in the folder left out."""
    groups: dict[str, tuple[float, list[Path]]] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            m = _LOG_FILE.match(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False):
                continue
            base = m["base"]
            if base == own or _SET_ASIDE.search(base):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            newest, paths = groups.get(base, (mtime, []))
            paths.append(Path(entry.path))
            groups[base] = (max(newest, mtime), paths)
    return groups


def _has_session_line(paths: list[Path]) -> bool:
    """A live run's log written before the `.live` marks (AuditLog.check_live's test): a
    session line in one of its files. Unreadable counts as one: kept."""
    for path in paths:
        try:
            with path.open("rb") as fh:
                if any(raw.startswith(_SESSION_LINE) for raw in fh):
                    return True
        except FileNotFoundError:
            continue
        except OSError:
            return True
    return False


def _all_audit_files(paths: list[Path]) -> bool:
    """Each of `paths` is empty or starts with an audit record: a file of another tool that
    shares the name pattern (`notes.jsonl`, `trials.jsonl.3`) is not a log of tradingd's.
    Unreadable counts as not one: kept."""
    for path in paths:
        try:
            with path.open("rb") as fh:
                head = fh.read(len(_RECORD_START))
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if head and head != _RECORD_START:
            return False
    return True


def _remove(paths: list[Path]) -> tuple[int, int]:
    """Unlink `paths`: (files removed, their bytes). One that cannot be is left, with a
    warning (gone meanwhile: nothing to say)."""
    removed = size = 0
    for path in paths:
        try:
            n = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning(
                "audit.prune_failed",
                path=str(path),
                reason=f"{e.strerror or e}: remove it by hand, or fix the folder's permissions",
            )
            continue
        removed += 1
        size += n
    return removed, size


_NOT_A_RUN = -1  # `_lock_unused`: the name has no run lock file


def _lock_unused(directory: Path, base: str) -> int | None:
    """The run lock of the log `base` (the file `_run_lock` locks in the audit folder),
    taken, as an open descriptor, for as long as its files are removed: a run of it
    starting meanwhile finds no half-removed log (it is refused for that moment, as by any
    holder). `_NOT_A_RUN` when the lock file does not exist: no tradingd run took the name,
    so its files are not a log of tradingd's (kept; no lock file is made for it). None when
    another process holds it (its run is going on: its log is kept) or the lock cannot be
    tested (kept too, with a warning)."""
    from .instance_lock import MEMORY, lock_file_path

    path = lock_file_path(f"sqlite:///{MEMORY}", f"replay:{base}", lock_dir=directory)
    try:
        fd = os.open(path, _LOCK_FLAGS)
    except FileNotFoundError:
        return _NOT_A_RUN
    except OSError as e:
        _untested(path, e)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if is_held(e):
            return None
        _untested(path, e)
        return None
    try:
        st, held = os.stat(path), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return fd
    except OSError:
        pass
    _unlock(fd)  # replaced meanwhile (lock files are never removed): kept
    return None


def _untested(path: Path, e: OSError) -> None:
    log.warning(
        "audit.prune_skipped",
        path=str(path),
        reason=f"cannot test the run lock ({e.strerror or e}): its log is kept",
    )


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@dataclass(frozen=True)
class RunLogRemoval:
    """What `remove_run_log` did with one run's audit log: the files removed and their
    bytes, or why it was kept (`kept`, a reason an operator can act on; "" when removed or
    when there was none)."""

    files: int = 0
    bytes: int = 0
    kept: str = ""


def remove_run_log(directory: Path, run_id: str, *, live: bool) -> RunLogRemoval:
    """Remove the audit log of one run (`tradingd delete-runs --files`): `<run_id>.jsonl`,
    its rotated files and, for a live run (`live`), its `.live` mark. Under the log's run
    lock, as the pruning at a replay's start: a log whose run is going on in another
    process is kept. A log that is a live run's (its mark, or a session line) is kept when
    `live` is False: the store calls the run a backtest, so the log is another run id's
    that shares its file name. A live run's set-aside logs (`<run_id>.before-<time>.jsonl`)
    are an earlier run's of that id, not this one's: kept."""
    from .audit import audit_path

    base = audit_path(directory, run_id).name
    try:
        groups = _replay_groups(directory, "")
    except FileNotFoundError:
        return RunLogRemoval()
    except OSError as e:
        return RunLogRemoval(kept=f"cannot list the audit folder {directory}: {e.strerror or e}")
    paths = groups.get(base, (0.0, []))[1]
    mark = directory / f"{base}.live"
    if not live and (mark.exists() or _has_session_line(paths)):
        return RunLogRemoval(
            kept=f"{directory / base} is a live run's log (its .live mark or a session line) "
            "while the store holds this run as a backtest: another run id writes it; remove "
            "it by hand if it is no longer wanted"
        )
    if not _all_audit_files(paths):
        return RunLogRemoval(
            kept=f"{directory / base}: a file of it does not start with an audit record "
            '({"event": ...}): not written by tradingd; remove it by hand if it is no longer '
            "wanted"
        )
    if live and mark.exists():
        paths = [*paths, mark]
    if not paths:
        return RunLogRemoval()
    fd = _lock_unused(directory, base)
    if fd == _NOT_A_RUN:
        return RunLogRemoval(
            kept=f"{directory / base} has no run lock file in that folder: no tradingd run "
            "wrote it there; remove it by hand if it is no longer wanted"
        )
    if fd is None:
        return RunLogRemoval(
            kept=f"{directory / base} is in use: a run of it is going on in another process "
            "(its run lock is held); run the command again once it has ended"
        )
    try:
        removed, size = _remove(paths)
    finally:
        _unlock(fd)
    if removed < len(paths):
        return RunLogRemoval(removed, size, kept="some files could not be removed (logged)")
    return RunLogRemoval(removed, size)
