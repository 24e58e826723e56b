"""Private PostgreSQL and Redis servers for tests that stop and start them.

Tests of database and cache outages need servers they may stop: never the shared ones. These
helpers run a PostgreSQL cluster (initdb into a temporary directory, on a free port, as the
`postgres` user when the tests run as root) and redis-server processes on free ports, stop
and start them at will, and remove them at the end, also when a test fails. Without the
binaries the test skips with the reason, unless TRADINGD_REQUIRE_SERVICES=1 (CI), where it
fails instead.

Used by tests/integration/test_postgres_outage.py, test_redis_outage.py and
test_daemon_outages.py. Waits are on conditions with deadlines (`wait_until`, `wait_for`),
never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

PG_BIN = Path(os.environ.get("TRADINGD_PG_BIN", "/usr/lib/postgresql/15/bin"))
T = TypeVar("T")


def require(msg: str) -> NoReturn:
    """Skip the test for a missing service, or fail it when TRADINGD_REQUIRE_SERVICES=1."""
    if os.environ.get("TRADINGD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{msg}, and TRADINGD_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], T], what: str, timeout_s: float = 15.0) -> T:
    """`predicate()`'s first true value, polled every 10 ms on the running loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_for(
    predicate: Callable[[], T],
    what: str,
    timeout_s: float = 15.0,
    *,
    interval_s: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """`predicate()`'s first true value, polled (blocking) every `interval_s`. `alive`
    returns None while waiting makes sense, else why it does not (a process that exited):
    the wait then fails at once with that reason."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and (dead := alive()) is not None:
            raise AssertionError(f"gave up waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


# ---------------------------------------------------------------------------- PostgreSQL


def as_server_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as `postgres` then."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        require("running as root without runuser: cannot start a private PostgreSQL")
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        require("running as root and there is no 'postgres' user to run PostgreSQL as")
    return [str(runuser), "-u", "postgres", "--"]


class PgServer:
    """A private PostgreSQL cluster, stopped and started at will on one port. Trust
    authentication: `password` only goes into the URLs (to check that messages mask it)."""

    def __init__(self, root: Path, prefix: list[str], password: str | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.prefix = prefix
        self.password = password
        self.port = free_port()

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        done = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}\n{tail}")

    def init(self) -> None:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip

    def url_of(self, database: str) -> str:
        auth = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_of("postgres")

    def create_database(self, name: str) -> str:
        """A new database on this server; its URL."""
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", name)  # fmt: skip
        return self.url_of(name)

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", opts, "-w", "-t", "30", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                  "stop")  # fmt: skip

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def watch(self) -> subprocess.Popen[bytes]:
        """A watchdog that stops the server and removes its directory once this test process
        is gone, also when it is killed (no teardown then)."""
        stop = " ".join(
            shlex.quote(a)
            for a in (*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                      "-m", "immediate", "stop")
        )  # fmt: skip
        root = shlex.quote(str(self.root))
        # A pg_ctl the dead process had started may still be running: repeat until gone.
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.5; done; "
            f"for i in 1 2 3 4 5 6 7 8 9 10; do {stop} >/dev/null 2>&1; rm -rf {root}; "
            f"[ -e {root} ] || break; sleep 1; done"
        )
        return subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


@contextlib.contextmanager
def private_postgres(password: str | None = None) -> Iterator[PgServer]:
    """A running private cluster for the block; stopped (`pg_ctl stop`) and removed after it,
    also when the block raises. Skips (see `require`) without the binaries or when the
    cluster cannot start."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        require(f"PostgreSQL binaries not found in {PG_BIN} (TRADINGD_PG_BIN)")
    prefix = as_server_user()
    root = Path(tempfile.mkdtemp(prefix="tradingd-pg-"))
    if prefix:
        shutil.chown(root, "postgres")
    server = PgServer(root, prefix, password)
    watchdog = server.watch()
    try:
        server.init()
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(root, ignore_errors=True)
        watchdog.kill()
        watchdog.wait()
        require(f"cannot run a private PostgreSQL: {e}")
    try:
        yield server
    finally:
        if server.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
        watchdog.kill()
        watchdog.wait()


# ---------------------------------------------------------------------------------- Redis


def pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throw-away redis-server on one port, stopped and started at will."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not pings(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited: {self.proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.01)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def private_redis(directory: str | Path) -> Iterator[RedisServer]:
    """A private redis-server for the block, NOT started (the test starts it); killed after
    the block, also when it raises. Skips (see `require`) without a redis-server binary."""
    if shutil.which("redis-server") is None:
        require("redis-server is not installed")
    server = RedisServer(str(directory))
    try:
        yield server
    finally:
        if server.proc is not None:
            server.resume()  # a paused server would not die of SIGKILL any later
        server.kill()
