"""Where GARCH fits run and what they are remembered by: a cache of fit outcomes keyed by their
inputs, and a runner that fits off the bar's path (a worker process by default).

Why: an `arch` fit costs 5-60 ms and a 500-symbol universe refits ~25 symbols a bar. Inline,
that is most of a live bar's latency and most of a replay's time. Two remedies, neither of
which changes a single number:
- The runner: fits asked for at one bar are applied from the next (`fit_lag_bars = 1`) or a
  few bars later (a replay's fits come in bursts; a deeper lag lets the worker absorb them
  while the engine goes on), so they can run between bars, in a worker process
  (`fit_executor = "process"`, the other core) or a thread. Where a fit runs does not change
  its result: the same inputs, the same code. (The lag itself changes which parameters size
  the bars in between: see kelly_garch.)
- The cache: a fit's outcome is a pure function of its inputs (the returns, the mean model,
  the warm start, `min_obs`) under one BLAS (its kernels and thread count: `blas_kind`, the
  cache file's label), so it is keyed by a BLAKE2b-128 hash of exactly those and kept
  between runs in `fit_cache_dir`, one file per BLAS label (`cache_file_name`), reused only
  under the same BLAS. A rerun of a replay then fits nothing; a changed price, window or
  warm start is a different key. An unreadable cache file is ignored with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TextIO, cast

import numpy as np
import structlog

from tradingd.core import flock

from .garch import GarchParams, best_garch_fit

log = structlog.get_logger(__name__)

EXECUTORS = ("inline", "thread", "process")
# A live daemon's fit worker runs at the daemon's own priority (added to the daemon's: an
# operator who wants the whole daemon lower sets systemd's Nice=). It ran at nice 19 until
# 2026-12-04, on the reasoning that a bar's fits run while the engine sends its orders and
# should take only idle CPU. But the engine's bar ends by waiting for them (`settle`, before
# the checkpoint), and its next bar waits for that: whenever other work filled the machine's
# cores, a nice-19 worker starved and held the daemon's bars back (the demo daemon managed 1
# bar in 11 s instead of 20 a second beside a backtest and the test suite), as it had starved
# replays (two CPU hogs on 2 cores: a 3-year replay in 280 s instead of 10,
# benchmarks/RESULTS.md). The engine, which sleeps between bars, still gets a core promptly
# beside a busy worker. `FitRunner.set_nice` and the worker's --nice stay for a deliberate
# choice; `KellyGarch.for_replay` sets 0 too.
LIVE_NICE = 0
# /2: fits made with the C library's log and power (garch._libm_classes); a /1 file's fits
# came from numpy's, which differ by CPU, and are not reused.
# /3: an entry is a verdict, and fits with alpha < garch.MIN_ALPHA are refused since: a /2
# file's accepted degenerate fits are not reused as accepted.
# /4: a warm-started fit is compared with a cold one and the higher log-likelihood judged
# (`fit_one`): a /3 file's warm fits kept a lower local maximum, and are not reused.
CACHE_FORMAT = "tradingd-garch-fits/4"
#: The one file of every BLAS label, before a file per label: no longer read, removed at a save.
LEGACY_CACHE_FILE = "garch-fits.json"
#: At most this many labels' files in a folder, the most recently saved kept (a `var/` shared
#: by machines or thread counts: a few labels each).
CACHE_LABELS = 4


def cache_file_name(label: str) -> str:
    """The file of one BLAS label (`blas_kind`) and cache format. With one file for every
    label, a 1-thread sweep and a default-thread run sharing the folder each ignored the
    other's file and replaced it at every save: neither kept its fits. Likewise two builds
    of other formats (a rollback, or the last release rerun to compare): each threw the
    other's fits away at every run. Format 3's files (named by the label alone) are left to
    the pruning of other files (`CACHE_LABELS`)."""
    named = label if CACHE_FORMAT == "tradingd-garch-fits/3" else f"{label}|{CACHE_FORMAT}"
    digest = hashlib.blake2b(named.encode(), digest_size=6, person=b"tradingd-garchf").hexdigest()
    return f"garch-fits-{digest}.json"


#: A fit's inputs: the returns (finite, decimal), the mean model, the warm start (mu, omega,
#: alpha, beta) or None, and the fewest returns accepted.
Start = tuple[float, float, float, float]
FitJob = tuple[np.ndarray, str, Start | None, int]
#: A fit's outcome: (mu, omega, alpha, beta, sigma2, nobs) or None, and the reason when None.
FitParams = tuple[float, float, float, float, float, int]
FitOutcome = tuple[FitParams | None, str]


def params_to_json(p: FitParams | None) -> list[float] | None:
    return None if p is None else list(p)


def params_from_json(p: Sequence[float] | None) -> FitParams | None:
    """A fit's parameters as written by `params_to_json` (a cache file, a checkpoint)."""
    return None if p is None else (*map(float, p[:5]), int(p[5]))  # type: ignore[return-value]


def fit_one(returns: np.ndarray, mean: str, start: Start | None, min_obs: int) -> FitOutcome:
    """The window's best fit (`garch.best_garch_fit`): from the warm start and from arch's
    own starting values, the higher log-likelihood judged by the acceptance rules. Until
    format /4 a warm fit that succeeded was kept without a cold one, and stayed on a lower
    local maximum in 34 of 723 refits of a 30-stock run (0.5-34 log-likelihood units)."""
    warm = None if start is None else GarchParams(*start, sigma2=0.0, nobs=0)
    params, why = best_garch_fit(returns, mean=mean, starting=warm, min_obs=min_obs)
    if params is None:
        return None, why
    return (params.mu, params.omega, params.alpha, params.beta, params.sigma2, params.nobs), ""


def fit_many(jobs: Sequence[FitJob]) -> list[FitOutcome]:
    """Every job in order (the unit of work sent to a worker)."""
    return [fit_one(*job) for job in jobs]


def fit_key(job: FitJob) -> bytes:
    returns, mean, start, min_obs = job
    h = hashlib.blake2b(digest_size=16, person=b"tradingd-garch1")
    h.update(f"{mean}|{min_obs}|".encode())
    h.update(b"cold" if start is None else struct.pack("<4d", *start))
    h.update(np.ascontiguousarray(returns, dtype=np.float64).tobytes())
    return h.digest()


def blas_kind() -> str:
    """The BLAS libraries of this process, the kernels each chose and its thread count
    ("openblas/SkylakeX/2 threads"): a GARCH fit's optimiser goes through them, their
    kernels differ by CPU in the last bits (20 of 20 test fits differed between OpenBLAS'
    Haswell and SkylakeX kernels), and so does their thread count (a replay's final equity
    was 98,172.07 with OPENBLAS_NUM_THREADS=1 and 98,176.47 with the default 2, and a
    default run given the 1-thread run's cache gave the 1-thread figure). Sweeps set one
    thread routinely (Ray does): a cache label without the count mixed the two."""
    from tradingd.environment import blas

    # The BLAS only: which OpenMP runtimes are loaded depends on what was imported first.
    kinds = {
        f"{b.get('internal_api')}/{b.get('architecture')}/{b.get('num_threads')} threads"
        for b in blas()
        if b.get("user_api") == "blas"
    }
    return "+".join(sorted(kinds))


class FitCache:
    """Fit outcomes by `fit_key`, in memory and (optionally) in a JSON file between runs,
    that of the BLAS label (`blas_kind`) seen at the first use. At most `size` entries are
    saved: those used by this process first. The file is read at the first use, not when
    the cache is made: the start-up checks build every plugin once just to see that it
    starts (0.24 s for the S&P 500 run's 25,000 fits)."""

    def __init__(self, directory: str, size: int) -> None:
        self.directory = Path(directory) if directory else None
        self._label: str | None = None  # fixed at the first use (`_ensure_loaded`)
        self.size = size
        self._old: dict[bytes, FitOutcome] = {}
        self._used: dict[bytes, FitOutcome] = {}
        self.hits = 0
        # The file's keys in its order, while what `save` would write can still equal it:
        # cleared by the first put or eviction (None: nothing loaded, or no longer equal).
        self._file_keys: list[bytes] | None = None
        self._loaded = False

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._used) + len(self._old)

    @property
    def label(self) -> str:
        """The BLAS label of this cache's fits and file: `blas_kind` at the first use."""
        if self._label is None:
            self._label = blas_kind()
        return self._label

    @property
    def path(self) -> Path | None:
        """This label's file (None without a folder)."""
        return None if self.directory is None else self.directory / cache_file_name(self.label)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            if self.directory is not None:
                self._label = blas_kind()  # the BLAS of this run's fits
            self._load()

    def get(self, key: bytes) -> FitOutcome | None:
        self._ensure_loaded()
        hit = self._used.get(key)
        if hit is None:
            hit = self._old.pop(key, None)
            if hit is None:
                return None
            self._used[key] = hit
        self.hits += 1
        return hit

    def put(self, key: bytes, outcome: FitOutcome) -> None:
        self._ensure_loaded()
        if self._used.get(key) != outcome:
            # Something new (a key's repeat with the outcome it has changes nothing: the
            # plugin puts every outcome, those read from here too).
            self._file_keys = None
        self._used[key] = outcome
        self._old.pop(key, None)
        # Memory stays bounded by `size` too: the oldest unused entries go first.
        while len(self) > self.size and self._old:
            self._old.pop(next(iter(self._old)))
        while len(self._used) > self.size:
            self._used.pop(next(iter(self._used)))

    def _load(self) -> None:
        if self.path is None or not self.size or not self.path.exists():
            return
        read = self._read(quiet=False)
        if read is None:
            return
        entries, rows = read
        self._old = entries
        # A file cut to a smaller size, or holding a key twice, is not what save would write.
        if rows == len(entries):
            self._file_keys = list(entries)
        log.info("garch_cache.loaded", path=str(self.path), entries=len(entries))

    def _read(self, quiet: bool) -> tuple[dict[bytes, FitOutcome], int] | None:
        """The file's entries (at most `size`) and its row count, if it is of this format and
        BLAS; else None, said with a warning unless `quiet`."""
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT):
                if not quiet:
                    log.warning(
                        "garch_cache.ignored",
                        path=str(self.path),
                        reason="another format",
                        file_format=data.get("format") if isinstance(data, dict) else None,
                        this_format=CACHE_FORMAT,
                        then="every fit this file held is made again (once), and saved in "
                        "this format",
                    )
                return None
            kind = self.label
            if data.get("blas") != kind:
                # A fit depends on the BLAS kernels OpenBLAS chose for this CPU and on its
                # thread count (the optimiser's steps): a cache made elsewhere (a shared or
                # copied var/) or under another thread count would mix two kinds of fit.
                if not quiet:
                    log.warning(
                        "garch_cache.ignored",
                        path=str(self.path),
                        reason=f"fitted with BLAS {data.get('blas')!r}, this process uses {kind!r}",
                    )
                return None
            rows = data["entries"]
            entries = {
                bytes.fromhex(k): (params_from_json(p), str(w)) for k, p, w in rows[: self.size]
            }
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
            if not quiet:
                log.warning("garch_cache.unreadable", path=str(self.path), error=str(exc))
            return None
        return entries, len(rows)

    def save(self) -> None:
        """This process's fits, merged into what its label's file holds now: parallel runs
        (a sweep's points) load it at their start and save at their end, and the last one's
        file replaced the others' (15,090 of 29,174 entries kept). Under the file's lock, it
        is read again and its entries this process does not hold are kept after this
        process's (used, then unused), within `size`. Runs under other BLAS labels save to
        their own files (`cache_file_name`), which this leaves alone but for the bound on
        their number (`CACHE_LABELS`)."""
        path = self.path
        if path is None or not self.size or not self._used:
            return
        if self._save(path):
            self._prune(path)

    def _save(self, path: Path) -> bool:
        """Whether the file was written."""
        if self._file_keys is not None and path.exists():
            # Nothing fitted: the file holds what this would write when the entries used
            # came first there, in the order used (a rerun of the run that wrote it). A
            # rerun of the S&P 500 backtest skips rewriting 4 MB of JSON (0.2-0.4 s).
            used = list(self._used)
            if used == self._file_keys[: len(used)]:
                return False
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = path.with_name(f".{path.name}.lock")
            with lock_path.open("a", encoding="utf-8") as lock:
                if not _cache_locked(lock, lock_path, fcntl.LOCK_EX):  # released when closed
                    return False
                merged = {**self._used, **self._old}  # (disjoint) used first, then unused
                read = self._read(quiet=True)
                for k, v in (read[0] if read else {}).items():
                    merged.setdefault(k, v)
                entries = [[k.hex(), params_to_json(p), w] for k, (p, w) in merged.items()]
                data = {
                    "format": CACHE_FORMAT,
                    "blas": self.label,
                    "entries": entries[: self.size],
                }
                tmp.write_text(json.dumps(data), encoding="utf-8")
                os.replace(tmp, path)
            return True
        except OSError as exc:
            # A full or read-only disk: the cache is optional (the fits are made again),
            # and a partial temporary file left per failed run kept its space for good.
            tmp.unlink(missing_ok=True)
            log.warning("garch_cache.unwritable", path=str(path), error=str(exc))
            return False
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _prune(self, path: Path) -> None:
        """Other labels' files beyond `CACHE_LABELS` in all (the least recently saved go),
        and the one file of every label of earlier versions (`LEGACY_CACHE_FILE`). Another
        label's file is removed under its own lock, tried and not waited for (its owner
        saving: kept this time). Lock files, empty, stay: removing one while another
        process waits on it would let two processes hold "the" lock."""
        folder = path.parent
        try:
            (folder / LEGACY_CACHE_FILE).unlink(missing_ok=True)
            files = [p for p in folder.glob("garch-fits-*.json") if p != path]
            files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
            for old in files[CACHE_LABELS - 1 :]:
                lock_path = old.with_name(f".{old.name}.lock")
                with lock_path.open("a", encoding="utf-8") as lock:
                    # Held (its owner saving) or failed: kept this time.
                    if not _cache_locked(lock, lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB):
                        continue
                    old.unlink(missing_ok=True)
        except OSError as exc:  # another process pruning too: the save itself is done
            log.info("garch_cache.prune_skipped", path=str(folder), error=str(exc))


def _cache_locked(lock: TextIO, path: Path, operation: int) -> bool:
    """Whether the cache file behind the lock file `path` may be written (or removed) now.
    What flock's error means is `core.flock`'s: held (a non-blocking try) is False,
    quietly: the owner is saving. On a filesystem without locks (ENOLCK: some NFS and FUSE
    mounts) it is True, with a warning: the file is replaced whole (a temporary file
    renamed), so a save without the lock can lose only the fits another run saved at the
    same moment, which are made again; refused, the cache was never saved there. Any other
    failure (EIO, EBADF, ...) is False with a warning naming the lock file and the errno:
    the cache is not written."""
    try:
        fcntl.flock(lock, operation)
    except OSError as exc:
        if flock.is_held(exc) and operation & fcntl.LOCK_NB:
            return False
        if flock.is_unsupported(exc):
            log.warning(
                "garch_cache.unlocked",
                path=str(path),
                error=flock.errno_text(exc),
                detail="this filesystem refuses file locks: the GARCH fit cache is written "
                "without one, so runs saving at the same moment may drop each other's new "
                "fits (made again by the next run)",
            )
            return True
        log.warning(
            "garch_cache.lock_failed",
            path=str(path),
            error=flock.errno_text(exc),
            detail="the GARCH fit cache is not written without its lock (this run's fits are "
            "made again by the next run); fix the file or its disk",
        )
        return False
    return True


class WorkerLost(Exception):
    """The fit worker process ended or stopped answering (killed, out of memory)."""


class _Reply:
    """The worker's answer to one request, read when it is wanted. The request itself waits
    in the worker's send queue until the writer thread has written it (`written`)."""

    def __init__(self, worker: FitWorker, data: bytes) -> None:
        self.worker = worker
        self.data = data
        self.written = threading.Event()
        self.error: BaseException | None = None

    def result(self) -> list[FitOutcome]:
        return self.worker.read(self)


class FitWorker:
    """A child process (`python -m tradingd_plugins.sizing.garch_worker`) that fits what it
    is sent, one request at a time and in order: length-prefixed pickles over its stdin and
    stdout. Several requests may be in flight (`fit_lag_bars` > 1); their answers are read
    in the order they were sent.

    Not multiprocessing: its spawn and forkserver modes run the parent's main script again in
    the child (a user's script without a main guard would start its backtest twice), and fork
    copies a daemon's threads' locks. The child ends when its stdin closes, so it cannot
    outlive the daemon, even one killed with SIGKILL."""

    def __init__(self, argv: Sequence[str] | None = None, nice: int = LIVE_NICE) -> None:
        module = [sys.executable, "-m", "tradingd_plugins.sizing.garch_worker"]
        self.proc = subprocess.Popen(
            list(argv or [*module, "--nice", str(nice)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        # Requests are written by one thread, in order (a second writer would interleave
        # frames); the queue holds at most fit_lag_bars requests, as many as are in flight.
        self._outbox: queue.SimpleQueue[_Reply | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def send(self, jobs: list[FitJob]) -> _Reply:
        """Queue the request for the writer thread and return at once: a request is larger
        than the pipe's buffer (500 symbols x 500 returns is 2 MB), and a worker still
        importing arch (~2 s after it starts) or busy with an earlier request would otherwise
        stall the bar that asks."""
        if self.proc.poll() is not None:
            raise WorkerLost(f"the GARCH fit worker (pid {self.proc.pid}) is gone")
        reply = _Reply(self, pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL))
        self._outbox.put(reply)
        if self._writer is None:
            self._writer = threading.Thread(target=self._write, name="garch-fit-send", daemon=True)
            self._writer.start()
        return reply

    def _write(self) -> None:
        while (reply := self._outbox.get()) is not None:
            try:
                write_bytes(self.proc.stdin, reply.data)  # type: ignore[arg-type]
            except Exception as exc:  # the worker died, or close() closed the pipe meanwhile
                reply.error = exc
            finally:
                reply.data = b""
                reply.written.set()

    def read(self, reply: _Reply) -> list[FitOutcome]:
        """The answer to `reply`'s request; the caller reads answers in the order it sent."""
        reply.written.wait()
        if reply.error is not None:
            raise WorkerLost(f"the GARCH fit worker (pid {self.proc.pid}) is gone: {reply.error}")
        try:
            out = read_frame(self.proc.stdout)  # type: ignore[arg-type]
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            # (ValueError: the pipe was closed here because an earlier request found the
            # worker gone)
            code = self.proc.poll()
            raise WorkerLost(
                f"the GARCH fit worker (pid {self.proc.pid}) ended (exit code {code}): {exc}"
            ) from exc
        return cast(list[FitOutcome], out)  # the worker answers fit_many's list

    def close(self) -> None:
        self._outbox.put(None)  # the writer ends after what is queued (or at a broken pipe)
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._writer is not None:
            self._writer.join(timeout=5)  # ends: the pipe is closed and the worker is gone
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]


def write_frame(stream: BinaryIO, obj: object) -> None:
    write_bytes(stream, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def write_bytes(stream: BinaryIO, data: bytes) -> None:
    """One frame: the length, then the (pickled) bytes."""
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream: BinaryIO) -> object:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("end of stream")
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("end of stream inside a frame")
    return pickle.loads(data)  # our own child's answer


class FitRunner:
    """Runs fits where the config says: `inline` (now, in this thread), `thread` (one worker
    thread) or `process` (one child process, started on first use). One per plugin: requests
    are fitted one after another, and their answers come back in the order they were asked
    for (`fit_lag_bars` of them may be in flight)."""

    def __init__(self, kind: str) -> None:
        if kind not in EXECUTORS:
            raise ValueError(f"fit_executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
        self.kind = kind
        # The worker process's niceness, added to this process's when it starts: see LIVE_NICE.
        self.nice = LIVE_NICE
        self._pool: ThreadPoolExecutor | None = None
        self._worker: FitWorker | None = None

    def set_nice(self, nice: int) -> None:
        """The niceness of the worker from now on. A worker already running at another one
        is ended (after what it was sent) and the next request starts a new one: a process
        cannot take back the priority it gave up."""
        if nice != self.nice and self._worker is not None:
            self._worker.close()
            self._worker = None
        self.nice = nice

    def submit(self, jobs: list[FitJob]) -> Future[list[FitOutcome]] | _Reply:
        if self.kind == "process":
            try:
                if self._worker is None:
                    self._worker = FitWorker(nice=self.nice)
                return self._worker.send(jobs)
            except (WorkerLost, OSError) as exc:
                # To the thread, not fitted here: submit runs on the event loop, and 413
                # fits inline blocked it for 6 s (a worker killed when out of memory). The
                # next request starts a new worker.
                self.lost(exc, action="fitting in a thread")
        if self.kind in ("thread", "process"):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="garch-fit")
            return self._pool.submit(fit_many, jobs)
        done: Future[list[FitOutcome]] = Future()
        done.set_result(fit_many(jobs))
        return done

    def lost(
        self,
        exc: BaseException,
        worker: FitWorker | None = None,
        action: str = "fitting inline",
    ) -> None:
        """`worker` (the one a failed request went to) is closed unless it was replaced
        already: requests in flight to a worker that died fail one after another, and the
        worker started since must not be closed for them."""
        log.error("sizing.garch_worker_lost", error=str(exc), action=action)
        if worker is not None and worker is not self._worker:
            worker.close()
            return
        if self._worker is not None:
            self._worker.close()
            self._worker = None  # the next request starts a new one

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class Pending:
    """Fits asked for at one bar: the symbols, the cached outcomes, and the rest on their way."""

    def __init__(
        self,
        idx: np.ndarray,
        keys: list[bytes],
        jobs: list[FitJob],
        outcomes: list[FitOutcome | None],
        reply: Future[list[FitOutcome]] | _Reply | None,
        runner: FitRunner,
        initial: bool,
    ) -> None:
        self.idx = idx
        self.keys = keys
        self.jobs = jobs
        self.outcomes = outcomes
        self.reply = reply
        self.runner = runner
        self.initial = initial

    def result(self) -> list[FitOutcome]:
        """Every outcome in order; waits for the runner. A worker that died is replaced by
        fitting here (logged), so a lost worker costs time, never a fit."""
        if self.reply is not None:
            missing = [j for j, o in zip(self.jobs, self.outcomes, strict=True) if o is None]
            try:
                fresh = self.reply.result()
            except WorkerLost as exc:
                self.runner.lost(exc, getattr(self.reply, "worker", None))
                fresh = fit_many(missing)
            it = iter(fresh)
            self.outcomes = [o if o is not None else next(it) for o in self.outcomes]
            self.reply = None
        return self.outcomes  # type: ignore[return-value]


def submit(
    jobs: list[FitJob], cache: FitCache, runner: FitRunner, idx: np.ndarray, initial: bool
) -> Pending:
    """Look every job up in the cache and send the misses, in one batch, to the runner."""
    keys = [fit_key(j) for j in jobs]
    outcomes = [cache.get(k) for k in keys]
    todo = [j for j, o in zip(jobs, outcomes, strict=True) if o is None]
    reply = runner.submit(todo) if todo else None
    return Pending(idx, keys, jobs, outcomes, reply, runner, initial)
