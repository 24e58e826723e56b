"""A writer process: write jobs run in a child process, off the engine's interpreter.

Why a process and not a thread: turning a batch into rows or JSON lines is Python work, and
Python runs one thread at a time (the GIL). Measured on the replay benchmark, a writer thread
made a replay slower, not faster: every time the engine's numpy calls released the lock the
writer took it, and the engine waited for it back (about 10,000 forced switches in a 1.5 s
replay). A child process has an interpreter of its own: on a machine with a free core the
writing costs the engine only what it takes to pickle a batch (a few arrays and tuples).

Protocol (pickled messages over two pipes): the parent sends `(seq, job, payload)`, where
`job` names a function `"module:function"` that the child imports once and calls as
`function(state, payload)` (`state`: a dict the jobs of this child share, e.g. an open
connection); the child answers every job with `("done", seq)` or, when one raised,
`("error", seq, ((job, text), ...))`, and skips every later job of that job's part (its
module: the store's rows, or the audit log's lines; their order matters: a table must not get
a later batch without an earlier one) until the parent closes it. `("close",)` ends the child,
and so does the end of its input (the parent died): it never outlives its parent.

The parent bounds the jobs in flight (`max_in_flight`): `send` waits for the oldest answer
when that many are unanswered (back-pressure; the pipe itself holds at most its OS buffer).
An error raises at the parent's next `send`, `reap`, `sync` or `close` of a user of that part
(see `share`).

Riders (`add_rider`): a user of a shared process can have its jobs go out with the other
user's, in the same message: `(seq, (job, ...), (payload, ...))`, run in that order and
answered once. One pickling of both payloads writes an object they share once (pickle's
memo): the audit log's records are the store's own tuples (storage/rows.py), so a replay's
orders and fills cross the pipe once, not twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ..core.errors import StorageError

PIPE_BYTES = 1 << 20


class ChildWriter:
    def __init__(self, name: str, max_in_flight: int = 2) -> None:
        if max_in_flight < 1:
            raise ValueError(f"writer process {name}: max_in_flight must be >= 1")
        # Its users (`share`), each with its share of the jobs in flight: the first is the
        # one that started it.
        self._users: list[tuple[str, int]] = [(name, max_in_flight)]
        # The users of each part (a job's module) of the jobs sent, and each user's error:
        # the first of a job of its part (see `share`).
        self._part_users: dict[str, set[str]] = {}
        self._errors: dict[str, str] = {}
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (
            "import sys; sys.path[:0] = sys.argv[3:]; "
            "from tradingd.storage.child import main; main(int(sys.argv[1]), int(sys.argv[2]))"
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(to_child_r), str(from_child_w), *sys.path],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                close_fds=True,
                # Its own process group: a Ctrl-C at the terminal or a SIGTERM to the
                # command's group reaches the parent alone, which decides when writing ends
                # (even before the child has set its own handlers).
                process_group=0,
            )
        except OSError as e:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            raise StorageError(f"cannot start the writer process {name}: {e}") from e
        os.close(to_child_r)
        os.close(from_child_w)
        # A batch is a few hundred KB: a larger pipe lets the parent hand one over without
        # waiting for the child to start reading (Linux; the default 64 KB elsewhere).
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(to_child_w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)
        # Whether an answer (or the child's end) is waiting, by one poll(2): the engine asks
        # at every bar while a batch is out, and Connection.poll builds a selector for each
        # question (2.1 us against 0.2 here, at each of its users' calls).
        self._answers = select.poll()
        self._answers.register(from_child_r, select.POLLIN)
        self._answers_fd = from_child_r
        self._seq = 0
        self._answered = 0
        self._riders: list[tuple[Callable[[], tuple[str, Any] | None], str]] = []

    @property
    def name(self) -> str:
        """Its users' names, for messages."""
        return " and ".join(name for name, _ in self._users)

    @property
    def max_in_flight(self) -> int:
        """Jobs sent and not answered at most: the sum of its users' shares."""
        return sum(n for _, n in self._users)

    @property
    def started(self) -> bool:
        """The process has answered a job: it is past its start-up (the interpreter, the
        imports, its first job)."""
        return self._answered > 0

    def share(self, name: str, max_in_flight: int) -> ChildWriter:
        """This process for one more user (its jobs queue behind the others', in order),
        until every user has closed it. A replay's store and audit log share one: on a
        2-core machine the engine and two writer processes (each with its own interpreter
        and imports) took turns on the cores, and the engine lost about a tenth of its time
        to them (benchmarks/RESULTS.md). Its jobs in flight are the sum of the users' shares
        (the same bound on memory as two processes). The users' jobs are of parts of their
        own (a job's part is its module: storage/sqlite_file.py, audit_file.py). A job that
        fails makes the process skip every later job of its part, and the next call of that
        part's user raises with the error, named by the user ("writer process audit
        <file>: ..."); the other part goes on. A full audit folder skipped the store's
        writes too, so the replay that ended with the audit log's error could not end its
        run's row as failed (a healthy store's run looked killed). A user's calls (`send`,
        `reap`, `sync`, `close`) say who it is with `user=` (None: the user that started
        it). `close(user=name)` ends this user's share."""
        if max_in_flight < 1:
            raise ValueError(f"writer process {name}: max_in_flight must be >= 1")
        self._users.append((name, max_in_flight))
        return self

    @property
    def pending(self) -> int:
        """Jobs sent and not answered yet."""
        return self._seq - self._answered

    def add_rider(
        self, take: Callable[[], tuple[str, Any] | None], user: str | None = None
    ) -> None:
        """`take()` is asked at every `send` for a job `(job, payload)` (or None) of `user`
        to go out first, in the same message (see the module docstring). Its user keeps
        what waits for it bounded and sends it on its own when it must be written (a forced
        flush, too much waiting); it calls `remove_rider` when done."""
        self._riders.append((take, self._user(user)))

    def remove_rider(self, take: Callable[[], tuple[str, Any] | None]) -> None:
        self._riders = [(t, u) for t, u in self._riders if t is not take]

    def send(self, job: str, payload: Any, user: str | None = None) -> None:
        """Hand `job` of `user` over (after its riders' jobs); waits while `max_in_flight`
        jobs are unanswered."""
        user = self._user(user)
        self._raise(user)
        while self.pending >= self.max_in_flight:
            self._answer(block=True)
            self._raise(user)
        jobs = [*self._ride(), (job, payload, user)]
        for name, _, by in jobs:
            self._part_users.setdefault(_part(name), set()).add(by)
        self._post([(name, data) for name, data, _ in jobs])

    def _ride(self) -> list[tuple[str, Any, str]]:
        """The riders' jobs that wait, each with its user."""
        return [(*j, user) for take, user in self._riders if (j := take()) is not None]

    def _user(self, user: str | None) -> str:
        """The user a call is of: None is the one that started the process."""
        return self._users[0][0] if user is None else user

    def _post(self, jobs: list[tuple[str, Any]]) -> None:
        seq = self._seq + 1
        if len(jobs) == 1:
            msg: tuple[Any, ...] = (seq, *jobs[0])
        else:
            msg = (seq, tuple(j for j, _ in jobs), tuple(p for _, p in jobs))
        # Pickled here, not by Connection.send: its ForkingPickler writes to a BytesIO in
        # frames (each copied there as the buffer grows); pickle.dumps builds the bytes at
        # once. The child's recv reads either.
        data = pickle.dumps(msg, pickle.HIGHEST_PROTOCOL)
        try:
            self._out.send_bytes(data)
        except OSError as e:  # the child is gone
            raise self._gone(e) from e
        # Counted once sent: a payload that cannot be pickled raises above, before anything
        # is written, and must not leave `sync` waiting for an answer that never comes.
        self._seq = seq

    def reap(self, user: str | None = None) -> None:
        """Read the answers that arrived (without waiting); raise an error of `user`'s part."""
        while self.pending and self._readable():
            self._answer(block=False)
        self._raise(self._user(user))

    def sync(self, user: str | None = None) -> None:
        """Wait until every job sent is done; raise an error of `user`'s part. Riders' jobs
        that wait are not sent: they go with the next `send` (a rider's user sends its own
        when it needs them written)."""
        while self.pending:
            self._answer(block=True)
        self._raise(self._user(user))

    def close(self, sync: bool = True, user: str | None = None) -> None:
        """Wait for the jobs sent (unless `sync` is off: nothing depends on them), then tell
        the child to end. Raises a job's error (the child is ended all the same). Does not
        wait for the child to exit (it only closes what it opened, after everything is
        written: tens of milliseconds at the end of every replay otherwise); `wait()` does.
        A shared process (`share`) ends when its last user closes it; until then, closing
        ends the share of `user` (by the name it was shared under; None: the one that started
        it) and waits (with `sync`) for the jobs sent so far."""
        names = [name for name, _ in self._users]
        if user is not None and user not in names:
            raise ValueError(f"writer process {self.name}: no user named {user!r}")
        who = self._user(user)
        if len(self._users) > 1:
            del self._users[names.index(who)]
            if sync and self._proc.poll() is None:
                self.sync(who)
            return
        try:
            if sync and self._proc.poll() is None:
                self.sync(who)
        finally:
            with contextlib.suppress(OSError):
                self._out.send(("close",))
            self._out.close()
            with contextlib.suppress(KeyError, ValueError):
                self._answers.unregister(self._answers_fd)  # before the number is reused
            self._in.close()
            # Reaped when it exits, without the caller waiting for it.
            threading.Thread(target=self._proc.wait, name=f"reap {self.name}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> int:
        """The child's exit code, once it has ended."""
        return self._proc.wait(timeout)

    def _readable(self) -> bool:
        """An answer is waiting, or the child has ended (POLLHUP, reported unasked): what
        Connection.poll(0) answers, without its selector."""
        if self._in.closed:
            raise StorageError(f"writer process {self.name}: closed")
        return bool(self._answers.poll(0))

    def _answer(self, block: bool) -> None:
        if not block and not self._readable():
            return
        try:
            msg = self._in.recv()
        except (EOFError, OSError) as e:
            raise self._gone(e) from e
        self._answered += 1
        if msg[0] == "error":
            for job, text in msg[2]:
                # (a part no user is known to have sent: every user's)
                for user in self._part_users.get(_part(job)) or [n for n, _ in self._users]:
                    self._errors.setdefault(user, text)

    def _raise(self, user: str) -> None:
        """The first error of `user`'s part, named by `user` (the part that failed)."""
        error = self._errors.get(user)
        if error is not None:
            raise StorageError(f"writer process {user}: {error}")

    def _gone(self, exc: BaseException) -> StorageError:
        code = self._proc.poll()
        return StorageError(
            f"writer process {self.name} ended (exit code {code}) with {self.pending} jobs "
            f"unanswered: {type(exc).__name__}: {exc}"
        )


def _part(job: str) -> str:
    """The part of the process a job is of: its module (see `ChildWriter.share`)."""
    return job.partition(":")[0]


def main(read_fd: int, write_fd: int) -> None:
    """The child: run jobs until `close` or the end of the input (see the module docstring)."""
    # The parent decides when writing ends (a stop signal is a clean stop there, which
    # still needs this process): a signal sent to every process of a service (systemd's
    # stop signals its whole control group) is ignored; the end of the input ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    state: dict[str, Any] = {}
    jobs: dict[str, Callable[[dict[str, Any], Any], None]] = {}
    failed: set[str] = set()  # the parts whose job failed: their later jobs are skipped
    try:
        while True:
            try:
                msg = inbox.recv()
            except EOFError:
                break
            if msg[0] == "close":
                break
            seq, job, payload = msg
            # A message of several jobs (riders first): run in order, answered once.
            batch = list(zip(job, payload, strict=True)) if type(job) is tuple else [(job, payload)]
            del msg, job, payload
            errors: list[tuple[str, str]] = []
            for name, data in batch:
                part = _part(name)
                if part in failed:
                    errors.append((name, "skipped: an earlier job failed"))
                    continue
                try:
                    fn = jobs.get(name)
                    if fn is None:
                        attr = name.partition(":")[2]
                        fn = jobs[name] = getattr(importlib.import_module(part), attr)
                    fn(state, data)
                except BaseException as e:
                    failed.add(part)
                    errors.append((name, f"{type(e).__name__}: {e}"))
            answer: tuple[Any, ...] = ("error", seq, tuple(errors)) if errors else ("done", seq)
            del batch
            data = None  # the last payload goes too, before the next message is waited for
            try:
                outbox.send(answer)
            except OSError:
                # The parent stopped listening (a replay that ended before this job was
                # answered closes without waiting, or the parent died): nothing is left to
                # tell, and no traceback belongs on the user's terminal.
                break
    finally:
        for close in state.pop("_closers", []):
            with contextlib.suppress(Exception):
                close()
