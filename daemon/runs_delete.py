"""`tradingd delete-runs`: remove finished runs from the store (and their files).

Every backtest adds its rows to the store for good (about 3.6 MB per quick-start run): a
researcher's hundred backtests a day grew the SQLite file (or the PostgreSQL database) by
hundreds of MB a day, and the README's advice was to delete rows by hand, table by table,
with the daemon stopped. This command does it with the checks a hand deletion skips:

- a dry run by default: it lists what it would delete (run id, kind, first and last bar,
  rows per table) and deletes only with `--yes`, since a quant's results deleted by a typo
  are not recoverable;
- every run-scoped table and the run's `runs` row, one transaction per run (a run is gone
  whole or not at all); never `bars`, which all runs share and `replay-check` reads;
- a run in use is refused: it takes the run's own lock on the store, which every running
  backtest and daemon of that run id holds (app._run_lock), without waiting;
- a live run's record is its restart point (checkpoint, open orders): refused unless
  `--live` is given;
- `--files`: the run's record folder under run.output_dir (only when its summary.json names
  the run) and its audit log (audit_prune.remove_run_log, under the log's run lock);
- a SQLite file does not shrink when rows are deleted: `--vacuum` rewrites it, refused
  while any process holds a lock on the store (a running daemon or backtest).

Runs named on the command line that are unknown, live without `--live` or in use stop the
command before anything is deleted (exit 2, naming them); runs selected by `--backtests` or
`--before` that are live or in use are listed as kept, with why.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog

from .config import Config
from .core.errors import ConfigError, StorageError
from .core.flock import is_held
from .secrets import mask_url
from .storage.factory import missing_sqlite_store, open_store, sqlite_path

log = structlog.get_logger(__name__)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Selection:
    """What the command line asked for (`tradingd delete-runs`)."""

    run_ids: tuple[str, ...] = ()
    backtests: bool = False
    keep: int | None = None  # with `backtests`: the newest this many are kept
    before: date | None = None  # runs started before this day (UTC)
    live: bool = False  # live runs may be deleted
    files: bool = False  # their record folders and audit logs too
    vacuum: bool = False  # SQLite: rewrite the file afterwards
    yes: bool = False  # delete (else a dry run)

    def selects(self) -> bool:
        return bool(self.run_ids) or self.backtests or self.before is not None


@dataclass
class Candidate:
    """One run selected: what the listing shows, and why it is kept if it is."""

    run_id: str
    kind: str  # "live" or "backtest"
    started_at: datetime
    named: bool  # named on the command line (a refusal is then an error)
    first_bar: datetime | None = None
    last_bar: datetime | None = None
    rows: dict[str, int] = field(default_factory=dict)
    refused: str = ""

    def line(self) -> str:
        first = self.first_bar.isoformat() if self.first_bar else "-"
        last = self.last_bar.isoformat() if self.last_bar else "-"
        return (
            f"  {self.run_id}  {self.kind}  bars {first} to {last}  "
            f"started {self.started_at.isoformat(timespec='seconds')}"
        )

    def rows_line(self) -> str:
        counts = ", ".join(f"{t} {n}" for t, n in self.rows.items() if n)
        return f"    rows: {counts or 'none'} ({sum(self.rows.values())} in all)"


def parse_day(text: str) -> date:
    """`--before`'s DATE (YYYY-MM-DD)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--before {text!r} is not a date: write it as YYYY-MM-DD") from None


def check_selection(sel: Selection, url: str) -> None:
    """Mistakes of the command line, before the store is opened."""
    if sel.keep is not None and not sel.backtests:
        raise ConfigError("delete-runs: --keep N goes with --backtests (keep the newest N)")
    if not sel.selects() and not sel.vacuum:
        raise ConfigError(
            "delete-runs: name the runs to delete: RUN_ID ..., --backtests [--keep N] or "
            "--before DATE (a dry run lists them; --yes deletes them)"
        )
    if sel.keep is not None and sel.keep < 0:
        raise ConfigError(f"delete-runs: --keep {sel.keep} must be 0 or more")
    if sel.vacuum and not url.lower().startswith("sqlite:///"):
        raise ConfigError(
            "delete-runs: --vacuum is for a SQLite store; PostgreSQL reuses the space of "
            "deleted rows for new ones after its autovacuum, and VACUUM FULL (in psql, with "
            "nothing using the database: it locks the tables) gives it back to the disk"
        )


async def delete_runs(config: Config, sel: Selection, say: Say) -> None:
    """The command: list, and with `sel.yes` delete, the selected runs; see the module
    docstring. Raises ConfigError (exit 2) naming what to do."""
    url = config.storage.url.strip()
    check_selection(sel, url)
    shown = mask_url(url)
    if url.lower().startswith("sqlite:///") and sqlite_path(url) == ":memory:":
        raise ConfigError(
            "delete-runs: the store is in memory (sqlite:///:memory:): it keeps no runs"
        )
    missing = missing_sqlite_store(url)
    if missing is not None:
        raise ConfigError(
            f"delete-runs: no store at {shown} ({missing}): nothing was deleted or created; "
            "check the storage URL (DATABASE_URL, storage.url)"
        )
    if sel.selects():
        deleted = await _select_and_delete(config, sel, say, shown)
        if deleted and not sel.vacuum:
            say(_space_note(url))
    if sel.vacuum and (sel.yes or not sel.selects()):
        _vacuum(Path(sqlite_path(url)).expanduser(), say)
    elif sel.vacuum:
        say("(--vacuum runs with --yes, after the deletion)")


async def _select_and_delete(config: Config, sel: Selection, say: Say, shown: str) -> int:
    store = open_store(config.storage.url, spool=False)
    await store.start()
    try:
        stored = await store.stored_runs()
        cands = _candidates(stored, sel, shown)
        for c in cands:
            c.first_bar, c.last_bar, c.rows = await store.run_extent(c.run_id)
            if c.kind == "live" and not sel.live:
                c.refused = (
                    "a live run: its record is its restart point (checkpoint, open orders); "
                    "add --live to delete it"
                )
            else:
                c.refused = _spooled(config) if c.kind == "live" else ""
                c.refused = c.refused or await _in_use(config, c.run_id)
        named = [c for c in cands if c.named and c.refused]
        if named:
            raise ConfigError(
                "delete-runs: nothing was deleted: "
                + "; ".join(f"run {c.run_id!r} is {c.refused}" for c in named)
            )
        chosen = [c for c in cands if not c.refused]
        kept = [c for c in cands if c.refused]
        verb = "deleting" if sel.yes else "would delete"
        say(f"{verb} {len(chosen)} run(s) from {shown}:")
        for c in chosen:
            say(c.line())
            say(c.rows_line())
        if kept:
            say(f"kept {len(kept)} selected run(s):")
            for c in kept:
                say(f"  {c.run_id}  {c.kind}: {c.refused}")
        if not sel.yes:
            if chosen:
                say(f"a dry run: nothing was deleted; add --yes to delete these {len(chosen)}")
            return 0
        remaining = {run_id for run_id, _, _ in stored} - {c.run_id for c in chosen}
        failed: list[str] = []
        done = 0
        for c in chosen:
            why = await _delete_one(config, store, c, sel, remaining, say)
            if why:
                failed.append(f"run {c.run_id!r} {why}")
            else:
                done += 1
        say(f"deleted {done} run(s)")
        if failed:
            raise ConfigError("delete-runs: not deleted: " + "; ".join(failed))
        return done
    finally:
        await store.stop()


def _candidates(
    stored: list[tuple[str, str, datetime]], sel: Selection, shown: str
) -> list[Candidate]:
    """The runs `sel` selects, oldest start first: the named ones (an unknown one is an
    error naming it) and those of the filters (`--backtests [--keep N]`, `--before`; with
    both, the runs that match both)."""
    by_id = {run_id: (mode, started) for run_id, mode, started in stored}
    unknown = [r for r in sel.run_ids if r not in by_id]
    if unknown:
        raise ConfigError(
            f"delete-runs: no run {', '.join(repr(r) for r in unknown)} in the store {shown}: "
            "nothing was deleted; check the run id (a dry run of --backtests or --before "
            "lists the stored runs) and the storage URL"
        )
    picked: set[str] = set()
    if sel.backtests or sel.before is not None:
        pool = [(r, m, s) for r, m, s in stored if not sel.backtests or m != "live"]
        if sel.backtests and sel.keep:
            newest = sorted(pool, key=lambda x: (x[2], x[0]), reverse=True)[: sel.keep]
            pool = [x for x in pool if x not in newest]
        if sel.before is not None:
            cut = datetime(sel.before.year, sel.before.month, sel.before.day, tzinfo=UTC)
            pool = [x for x in pool if x[2] < cut]
        picked = {r for r, _, _ in pool}
    named = set(sel.run_ids)
    return [
        Candidate(r, "live" if m == "live" else "backtest", s, r in named)
        for r, m, s in stored
        if r in picked or r in named
    ]


def _run_lock(config: Config, run_id: str) -> Any:
    """The run's own lock on the store (not the audit folder's: that one is the daemon
    host's and may not be writable here; `--files` takes the log's own lock as it removes
    it), as `tradingd reset-halt` takes it."""
    from .app import RunLock, _run_lock
    from .instance_lock import holder_text

    url = config.storage.url.strip()

    def refusal(what: str, holder: dict[str, Any]) -> str:
        return (
            f"in use by {holder_text(holder)} with {what}: wait for it to end (or stop "
            "the daemon) and run the command again"
        )

    store_only = [lock for lock in _run_lock(config, run_id).locks if lock[1] == url]
    return RunLock(run_id, True, store_only, refusal)


def _spooled(config: Config) -> str:
    """Why no live run of a PostgreSQL store may be deleted now: the spool folder holds
    batches a live daemon could not write (it died during a database outage), which the
    next live start writes into the database, a deleted run's rows with them ("" when it
    holds none). Which run they are of is not read here: any live run may be theirs."""
    from .core.endpoints import is_postgres_url
    from .storage.postgres import default_spool_dir
    from .storage.spool import spool_files

    url = config.storage.url.strip()
    if not is_postgres_url(url):
        return ""
    folder = Path(config.storage.spool_dir) if config.storage.spool_dir else None
    folder = folder or default_spool_dir(url, None)
    files = spool_files(folder)
    if not files:
        return ""
    return (
        f"a live run, and the spool folder {folder} holds {len(files)} file(s) of rows a "
        "live daemon did not write yet (it stopped during a database outage): its next "
        "start writes them, this run's with them; start the daemon once to write them, "
        "then delete the run"
    )


async def _in_use(config: Config, run_id: str) -> str:
    """Why the run cannot be deleted now (another process holds its lock), else ""."""
    from .instance_lock import AnotherDaemonRunning

    lock = _run_lock(config, run_id)
    try:
        await lock.start()
    except AnotherDaemonRunning as exc:
        return str(exc)
    await lock.stop()
    return ""


async def _delete_one(
    config: Config, store: Any, c: Candidate, sel: Selection, remaining: set[str], say: Say
) -> str:
    """Delete one run under its lock; why it was not ("" when it was)."""
    from .instance_lock import AnotherDaemonRunning

    lock = _run_lock(config, c.run_id)
    try:
        await lock.start()
    except AnotherDaemonRunning as exc:
        return f"is {exc}"  # began meanwhile
    try:
        await store.delete_run(c.run_id)
        log.info("runs.deleted", run_id=c.run_id, kind=c.kind, rows=sum(c.rows.values()))
        say(f"deleted run {c.run_id}: {sum(c.rows.values())} rows")
        if sel.files:
            for line in _delete_files(config, c, remaining):
                say(f"  {line}")
    finally:
        await lock.stop()
    return ""


def _delete_files(config: Config, c: Candidate, remaining: set[str]) -> list[str]:
    """The run's record folder and audit log removed; a line for each (or why kept)."""
    from .audit import audit_path
    from .audit_prune import remove_run_log

    lines = [_delete_record(Path(config.run.output_dir).expanduser(), c.run_id)]
    audit_dir = Path(config.log.audit_dir).expanduser()
    name = audit_path(audit_dir, c.run_id).name
    sharing = sorted(r for r in remaining if audit_path(audit_dir, r).name == name)
    if sharing:
        lines.append(
            f"audit log {audit_dir / name} kept: run {sharing[0]!r}, still stored, writes "
            "the same file"
        )
        return [x for x in lines if x]
    removed = remove_run_log(audit_dir, c.run_id, live=c.kind == "live")
    if removed.kept:
        lines.append(f"audit log kept: {removed.kept}")
    elif removed.files:
        lines.append(
            f"removed its audit log {audit_dir / name} ({removed.files} file(s), "
            f"{removed.bytes} bytes)"
        )
    return [x for x in lines if x]


def _delete_record(output_dir: Path, run_id: str) -> str:
    """`<run.output_dir>/<run_id>` removed when it holds this run's record (its
    summary.json names the run): the record's files, its lock file, then the folder if
    nothing else is in it. A folder of another run's record or of other files is kept."""
    from .backtest import RECORD_FILES, RECORD_LOCK, remove_earlier_record

    if Path(run_id).name != run_id or run_id in (".", ".."):
        return ""  # no folder of its own under output_dir
    out = output_dir / run_id
    if not out.is_dir():
        return ""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        owner = summary.get("run_id") if isinstance(summary, dict) else None
    except (OSError, ValueError):
        owner = None
    if owner != run_id:
        return f"record folder {out} kept: its summary.json does not name this run"
    removed = remove_earlier_record(out, run_id)
    with contextlib.suppress(FileNotFoundError):
        (out / RECORD_LOCK).unlink()
    left = sorted(os.listdir(out))
    if not left:
        out.rmdir()
        return f"removed its record folder {out} ({len(removed)} file(s))"
    extra = [n for n in left if n not in RECORD_FILES]
    return f"removed its record files from {out}; kept what else it holds: {', '.join(extra)}"


def _space_note(url: str) -> str:
    if url.lower().startswith("sqlite:///"):
        path = Path(sqlite_path(url)).expanduser()
        return (
            f"the file {path} does not shrink until it is vacuumed (its free pages are "
            "reused by later runs): run `tradingd delete-runs --vacuum` while nothing uses "
            "the store to give the space back to the disk"
        )
    return (
        "PostgreSQL reuses the space of the deleted rows for new ones after its autovacuum; "
        "the database's files shrink only with VACUUM FULL (psql, nothing using it)"
    )


@contextlib.contextmanager
def _store_unused(db: Path) -> Iterator[None]:
    """Every lock file of the store held (`<db>.locks/`: each run's lock, which every
    backtest and daemon on the store holds; `<db>.<hash>.lock`: the instance locks of
    live daemons) for as long as the block runs, without waiting: a ConfigError naming
    the holder when one is held. Runs starting meanwhile are refused by the held ones."""
    from .instance_lock import holder_text

    resolved = db.resolve()
    paths = sorted((resolved.parent / f"{resolved.name}.locks").glob("*.lock"))
    paths += sorted(resolved.parent.glob(f"{resolved.name}.*.lock"))
    held: list[int] = []
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ConfigError(
                    f"delete-runs: --vacuum cannot test the lock {path} ({e.strerror or e}): "
                    "nothing was vacuumed; run it as the user that runs tradingd"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                try:
                    raw = os.pread(fd, 4096, 0)
                finally:
                    os.close(fd)
                if not is_held(e):
                    raise ConfigError(
                        f"delete-runs: --vacuum cannot lock {path} ({e.strerror or e}): "
                        "nothing was vacuumed"
                    ) from e
                try:
                    holder = json.loads(raw.decode() or "{}")
                except ValueError:
                    holder = {}
                raise ConfigError(
                    f"delete-runs: --vacuum refused: {holder_text(holder)} holds the store "
                    f"{resolved} (lock {path}); nothing was vacuumed (the deletions stand): "
                    "run `tradingd delete-runs --vacuum` once nothing uses the store"
                ) from None
            held.append(fd)
        yield
    finally:
        for fd in held:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def _vacuum(db: Path, say: Say) -> None:
    """VACUUM the SQLite file (and empty its WAL), while no process holds the store."""
    with _store_unused(db):
        before = _file_bytes(db)
        free = shutil.disk_usage(db.parent).free
        try:
            con = sqlite3.connect(db, timeout=10.0, isolation_level=None)
            try:
                con.execute("VACUUM")
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                con.close()
        except sqlite3.Error as e:
            raise StorageError(
                f"delete-runs: VACUUM of {db} failed ({e}): the file is as it was; it needs "
                f"free space about its size ({before} bytes; {free} free) and no other "
                "connection (a `sqlite3` shell, a reader): run `tradingd delete-runs "
                "--vacuum` again"
            ) from e
        after = _file_bytes(db)
    log.info("runs.vacuumed", path=str(db), bytes_before=before, bytes_after=after)
    say(f"vacuumed {db}: {before} bytes before, {after} after")
