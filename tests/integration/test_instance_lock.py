"""One daemon per store and account (tradingd.instance_lock), across real processes.

Each lock is held by a small Python subprocess driven through stdin, so the tests see what a
second daemon sees: a refusal naming the holder's pid, and no stuck lock after SIGKILL. Every
test uses its own random account, so parallel runs never collide on the shared database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tradingd.core.errors import ConfigError, StorageError
from tradingd.instance_lock import (
    AnotherDaemonRunning,
    FileInstanceLock,
    PostgresInstanceLock,
    account_for,
    acquire_instance_lock,
    advisory_key,
)

# The holder: takes the lock, says so, holds it until "release" (or EOF) on stdin.
HOLDER = r"""
import asyncio, os, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from tradingd.instance_lock import AnotherDaemonRunning, acquire_instance_lock

async def main():
    url, account, lock_dir = sys.argv[1], sys.argv[2], sys.argv[3] or None
    try:
        lock = await acquire_instance_lock(url, account, lock_dir=lock_dir)
    except AnotherDaemonRunning as e:
        print("REFUSED", e, flush=True)
        return
    print("LOCKED", os.getpid(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await lock.release()
    print("RELEASED", flush=True)

asyncio.run(main())
"""

TIMEOUT = 10


class Holder:
    """A subprocess holding (or failing to hold) the lock for `url` and `account`."""

    def __init__(self, proc: asyncio.subprocess.Process, first_line: str) -> None:
        self.proc = proc
        self.first_line = first_line

    @classmethod
    async def start(cls, url: str, account: str, lock_dir: Path | None = None) -> Holder:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLDER,
            url,
            account,
            str(lock_dir or ""),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode().strip()
        if not line:
            err = await proc.stderr.read() if proc.stderr else b""
            pytest.fail(f"holder printed nothing; stderr: {err.decode()[-2000:]}")
        return cls(proc, line)

    @property
    def locked(self) -> bool:
        return self.first_line.startswith("LOCKED")

    async def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"release\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        assert line.decode().startswith("RELEASED")
        await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@pytest.fixture
async def holders():
    """Started holders; any still running at the end are killed (never left behind)."""
    started: list[Holder] = []

    async def start(url: str, account: str, lock_dir: Path | None = None) -> Holder:
        h = await Holder.start(url, account, lock_dir)
        started.append(h)
        return h

    yield start
    for h in started:
        await h.kill()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'store.db'}"
    return request.getfixturevalue("pg_url")


def new_account() -> str:
    return f"test:{uuid.uuid4().hex}"


def with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{password}@{host}"


# Both backends -----------------------------------------------------------------------------


async def test_second_daemon_refused_until_the_holder_is_killed(store_url, holders):
    account = new_account()
    holder = await holders(store_url, account)
    assert holder.locked, holder.first_line
    pid = holder.proc.pid

    with pytest.raises(AnotherDaemonRunning) as refused:
        await acquire_instance_lock(store_url, account)
    msg = str(refused.value)
    assert f"pid {pid} on host " in msg
    assert "stop it or point this one at another store/account" in msg
    assert account not in msg  # the account is shown only hashed
    assert refused.value.holder["pid"] == pid

    # A third process is refused too, and is told who holds the lock.
    other = await holders(store_url, account)
    assert other.first_line.startswith("REFUSED") and f"pid {pid} " in other.first_line

    await holder.kill()  # SIGKILL: no chance to release anything
    # The kernel (flock) or the server (session end) frees the lock; wait_s only covers the
    # moment PostgreSQL takes to end the dead client's session.
    lock = await acquire_instance_lock(store_url, account, wait_s=5)
    try:
        assert lock.held and lock.describe()["pid"] == os.getpid()
        assert await lock.check()
    finally:
        await lock.release()


async def test_different_accounts_on_one_store_do_not_conflict(store_url, holders):
    a, b = new_account(), new_account()
    holder = await holders(store_url, a)
    assert holder.locked
    lock_b = await acquire_instance_lock(store_url, b)
    try:
        assert lock_b.held
        with pytest.raises(AnotherDaemonRunning):
            await acquire_instance_lock(store_url, a)
    finally:
        await lock_b.release()
    await holder.release()


async def test_release_then_reacquire_in_one_process(store_url):
    account = new_account()
    lock = await acquire_instance_lock(store_url, account)
    # The same process asking again is a second daemon too (another session / descriptor).
    with pytest.raises(AnotherDaemonRunning, match=rf"pid {os.getpid()} "):
        await acquire_instance_lock(store_url, account)
    await lock.release()
    await lock.release()  # idempotent
    assert not lock.held and not await lock.check()

    async with await acquire_instance_lock(store_url, account) as again:
        assert again.held
        info = again.describe()
        assert info["held"] and info["account"] != account and account not in str(info)
    assert not again.held
    # Released by the context manager: a fresh acquire works.
    await (await acquire_instance_lock(store_url, account)).release()


# PostgreSQL ----------------------------------------------------------------------------------


async def lock_backend(conn: asyncpg.Connection, account: str) -> int | None:
    key = advisory_key(account) & 0xFFFF_FFFF_FFFF_FFFF
    return await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
        key >> 32,
        key & 0xFFFF_FFFF,
    )


async def terminate(admin: asyncpg.Connection, account: str) -> int:
    """End the session holding `account`'s lock, and wait until the server has freed it
    (pg_terminate_backend only signals the backend)."""
    backend = await lock_backend(admin, account)
    assert backend is not None
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
    async with asyncio.timeout(TIMEOUT):
        while await lock_backend(admin, account) == backend:
            await asyncio.sleep(0.02)
    return backend


async def test_pg_check_notices_a_lost_connection_and_reacquires(pg_url, holders):
    account = new_account()
    lock = await acquire_instance_lock(pg_url, account)
    assert isinstance(lock, PostgresInstanceLock)
    admin = await asyncpg.connect(pg_url, timeout=5)
    try:
        assert await lock.check()

        # The lock's session dies and nobody else wants the lock: lost, then taken back.
        backend = await terminate(admin, account)
        assert await lock.check() is False
        assert lock.held and lock.lost_count == 1 and lock.last_error is None
        assert await lock.check() is True
        assert await lock_backend(admin, account) not in (None, backend)

        # The session dies and another daemon takes the lock first: not re-acquired, and the
        # error names the new holder, so the caller stops trading.
        await terminate(admin, account)
        other = await holders(pg_url, account)
        assert other.locked, other.first_line
        assert await lock.check() is False
        assert not lock.held and lock.lost_count == 2
        assert isinstance(lock.last_error, AnotherDaemonRunning)
        assert f"pid {other.proc.pid} " in str(lock.last_error)

        # Once the other daemon is gone, the next check takes the lock again.
        await other.release()
        assert await lock.check() is False
        assert lock.held
        assert await lock.check() is True
    finally:
        await admin.close()
        await lock.release()


async def test_pg_password_never_appears_in_messages(pg_url, holders):
    account = new_account()
    password = f"pw-{uuid.uuid4().hex}"
    holder = await holders(pg_url, account)
    assert holder.locked

    secret_url = with_password(pg_url, password)  # trust auth: the password is ignored
    with pytest.raises(AnotherDaemonRunning) as refused:
        await acquire_instance_lock(secret_url, account)
    assert password not in str(refused.value) and password not in repr(refused.value)
    assert ":***@" in str(refused.value)

    # A failed login quotes the URL masked as well.
    with pytest.raises(StorageError) as failed:
        await acquire_instance_lock(
            "postgresql://u:s3cr3t-instance@127.0.0.1:5432/test", account, connect_timeout=5
        )
    assert "s3cr3t-instance" not in str(failed.value)
    await holder.release()


async def test_pg_unreachable_server_fails_within_the_timeout():
    # A TEST-NET address that never answers (or is unroutable here): the attempt ends by the
    # connect timeout, with the URL masked.
    with pytest.raises(StorageError, match=r"u:\*\*\*@192\.0\.2\.1") as failed:
        await asyncio.wait_for(
            acquire_instance_lock(
                "postgresql://u:hidden-pw@192.0.2.1:5432/test", new_account(), connect_timeout=0.5
            ),
            TIMEOUT,
        )
    assert "hidden-pw" not in str(failed.value)


async def test_start_waits_for_a_database_that_is_down_then_takes_the_lock(pg_url):
    """A daemon started while its database is down waits for it (storage.start_retry_s), as
    the store does, instead of exiting: here the "database" is a port where nothing listens
    until a forwarder to the real PostgreSQL opens on it after the first failed attempt."""
    from urllib.parse import urlsplit

    from structlog.testing import capture_logs

    real = urlsplit(pg_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = pg_url.replace(f"{real.hostname}:{real.port}", f"127.0.0.1:{port}")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(real.hostname, real.port)
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    with capture_logs() as logs:
        taking = asyncio.create_task(
            acquire_instance_lock(url, new_account(), unreachable_wait_s=30, connect_timeout=2)
        )

        async def first_failure() -> None:
            while not any(e["event"] == "instance_lock.waiting_for_database" for e in logs):
                assert not taking.done(), taking.exception()
                await asyncio.sleep(0.01)

        await asyncio.wait_for(first_failure(), TIMEOUT)
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        try:
            lock = await asyncio.wait_for(taking, TIMEOUT)
            assert lock.held
            await lock.release()
        finally:
            server.close()
    waits = [e for e in logs if e["event"] == "instance_lock.waiting_for_database"]
    assert waits and all(e["gives_up_in_s"] <= 30 for e in waits)


async def test_start_gives_up_on_a_database_that_stays_down():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = asyncio.get_running_loop().time()
    with pytest.raises(StorageError):
        await asyncio.wait_for(
            acquire_instance_lock(
                f"postgresql://u:pw@127.0.0.1:{port}/test",
                new_account(),
                unreachable_wait_s=1.0,
                connect_timeout=0.5,
            ),
            TIMEOUT,
        )
    assert asyncio.get_running_loop().time() - started >= 1.0  # it did wait


# Lock files ----------------------------------------------------------------------------------


async def test_stale_lock_file_of_a_killed_process_does_not_block(tmp_path, holders):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    account = new_account()
    holder = await holders(url, account)
    assert holder.locked
    lock_files = list(tmp_path.glob("store.db.*.lock"))
    assert len(lock_files) == 1
    assert f'"pid": {holder.proc.pid}' in lock_files[0].read_text()
    await holder.kill()
    assert lock_files[0].exists()  # the file stays behind, with the dead holder's pid

    lock = await acquire_instance_lock(url, account)  # no wait: the kernel freed it at exit
    try:
        assert f'"pid": {os.getpid()}' in lock_files[0].read_text()
    finally:
        await lock.release()


async def test_lock_file_deleted_underneath_is_noticed(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    lock = await acquire_instance_lock(url, new_account())
    assert isinstance(lock, FileInstanceLock)
    try:
        assert await lock.check()
        lock.path.unlink()  # a second daemon could now lock a new file at this path
        assert await lock.check() is False
        assert lock.held and lock.path.exists() and lock.lost_count == 1
        assert await lock.check() is True
    finally:
        await lock.release()


async def test_memory_store_locks_the_account_in_lock_dir(tmp_path, holders):
    account = new_account()
    holder = await holders("sqlite:///:memory:", account, tmp_path)
    assert holder.locked
    with pytest.raises(AnotherDaemonRunning, match=rf"pid {holder.proc.pid} "):
        await acquire_instance_lock("sqlite:///:memory:", account, lock_dir=tmp_path)
    other = await acquire_instance_lock("sqlite:///:memory:", new_account(), lock_dir=tmp_path)
    await other.release()
    await holder.release()


async def test_account_for_hides_the_key_and_bad_urls_are_config_errors():
    key_id = "PKTESTKEYID1234567890"
    account = account_for("alpaca", key_id)
    assert account.startswith("alpaca:") and key_id not in account
    assert account == account_for("alpaca", key_id)  # stable
    with pytest.raises(ConfigError, match="unsupported scheme"):
        await acquire_instance_lock("mysql://u:pw@h/db", "a")
    with pytest.raises(ConfigError, match="account is empty"):
        await acquire_instance_lock("sqlite:///:memory:", "")


async def test_the_service_stops_the_daemon_only_when_another_daemon_holds_the_lock():
    """Found by the fault soak: a database outage made the lock check fail and the daemon
    stop, although the store rides out the outage with its spool. Unreachable = unproven
    (shown in /ready, checked again soon); only another holder stops the daemon."""
    import asyncio

    from tradingd.core.errors import StorageError
    from tradingd.instance_lock import AnotherDaemonRunning, InstanceLockService

    class FakeLock:
        def __init__(self, outcomes):
            self.outcomes = list(outcomes)
            self.held = True
            self.last_error = None

        async def check(self):
            ok, error = self.outcomes.pop(0) if self.outcomes else (True, None)
            self.held, self.last_error = ok, error
            return ok

        def describe(self):
            return {}

    lost: list[str] = []
    down = StorageError("PostgreSQL at postgresql://u:***@h/db unreachable")
    service = InstanceLockService(
        "sqlite:///x.db", "acct", check_interval_s=0.01, on_lost=lost.append
    )
    service.lock = FakeLock([(False, down), (False, down), (True, None)])  # type: ignore[assignment]
    task = asyncio.create_task(service._watch())
    for _ in range(500):
        if not service.lock.outcomes and service.lost is None:  # type: ignore[attr-defined]
            break
        if service.lost is not None:
            assert service.status()["ok"] is False
        await asyncio.sleep(0.01)
    assert lost == [] and service.lost is None and not task.done()
    service.lock = FakeLock([(False, AnotherDaemonRunning("another tradingd (pid 7) holds it"))])  # type: ignore[assignment]
    await asyncio.wait_for(task, 5)
    assert lost and "pid 7" in lost[0]


def test_an_unreachable_database_is_not_logged_as_a_reason_to_stop_trading():
    """The lock logged "not_reacquired ... stop trading" at error level every 5 s of a
    database outage the daemon traded through, and "reacquired" twice: the service (above)
    says what it does; the lock only answers."""
    from structlog.testing import capture_logs

    from tradingd.core.errors import StorageError
    from tradingd.instance_lock import AnotherDaemonRunning, InstanceLock

    lock = InstanceLock("sqlite:///x.db", "acct")
    with capture_logs() as logs:
        for error in (StorageError("unreachable"), AnotherDaemonRunning("pid 7"), None):
            assert lock._reacquire_result(error) is False and lock.last_error is error
    assert logs == []


async def test_a_lock_lost_and_taken_again_within_one_check_is_said_to_be_reacquired():
    """The lock used to log this itself; the service must, or the operator sees "lost" with
    no follow-up."""
    import asyncio

    from structlog.testing import capture_logs

    from tradingd.instance_lock import InstanceLockService

    class Relocked:
        held, last_error = True, None

        async def check(self):
            return False  # lost since the last check, and held again now

        def describe(self):
            return {}

    service = InstanceLockService("sqlite:///x.db", "acct", check_interval_s=0.01)
    service.lock = Relocked()  # type: ignore[assignment]
    with capture_logs() as logs:
        task = asyncio.create_task(service._watch())
        for _ in range(500):
            if any(e["event"] == "instance_lock.reacquired" for e in logs):
                break
            await asyncio.sleep(0.01)
        task.cancel()
    assert any(e["event"] == "instance_lock.reacquired" for e in logs)
    assert service.lost is None


@pytest.fixture
def umask_022():
    """The common default umask, so that the lock file's own mode is what is seen."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_a_lock_file_is_not_readable_by_every_local_user(tmp_path, umask_022):
    """Security trial F3: lock files were 0644, and flock takes an exclusive lock through a
    read-only descriptor, so any local user could hold a daemon's or a backtest's lock and
    keep it from starting. 0640: the owner and the group sharing a lock folder only."""
    lock = await acquire_instance_lock(f"sqlite:///{tmp_path / 'store.db'}", new_account())
    try:
        assert lock.path.stat().st_mode & 0o777 == 0o640
    finally:
        await lock.release()


async def test_an_older_world_readable_lock_file_of_ours_is_narrowed(tmp_path, umask_022):
    from tradingd.instance_lock import lock_file_path

    url, account = f"sqlite:///{tmp_path / 'store.db'}", new_account()
    path = lock_file_path(url, account)
    path.write_text("")
    path.chmod(0o644)  # as an earlier release made it
    lock = await acquire_instance_lock(url, account)
    try:
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        await lock.release()


async def test_a_symlink_planted_at_the_lock_path_is_refused_not_followed(tmp_path):
    """Security trial F3: the lock file was opened following a symbolic link, then truncated
    and written: a link planted at its path destroyed the link's target."""
    from tradingd.instance_lock import lock_file_path

    url, account = f"sqlite:///{tmp_path / 'store.db'}", new_account()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock_file_path(url, account).symlink_to(victim)
    with pytest.raises(StorageError, match="cannot open lock file"):
        await acquire_instance_lock(url, account)
    assert victim.read_text() == "precious\n"


def _no_files_made_in(monkeypatch, folder: Path) -> None:
    """`folder` refuses new files to this user, as a folder it cannot write does: by its mode
    (0555), and for root (whom no mode stops) by an open that refuses as the kernel would."""
    import errno

    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).parent == folder and flags & os.O_CREAT and not os.path.lexists(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


async def test_a_lock_folder_this_user_cannot_write_is_named_not_a_missing_file(
    tmp_path, monkeypatch
):
    """The lock file does not exist and its folder cannot be written: the message said
    "cannot open lock file ...: Permission denied (another user's, not readable to this
    one?)", of a file that is not there. It names the folder and what to do."""
    from tradingd.instance_lock import lock_file_path

    url, account = f"sqlite:///{tmp_path / 'store.db'}", new_account()
    path = lock_file_path(url, account)
    _no_files_made_in(monkeypatch, path.parent)
    try:
        with pytest.raises(StorageError) as refused:
            await acquire_instance_lock(url, account)
    finally:
        path.parent.chmod(0o755)
    text = str(refused.value)
    assert f"the lock folder {path.parent} is not writable to this user" in text
    assert "give this user write access" in text and "another user's" not in text
    assert not path.exists()


async def test_a_lock_file_on_a_full_disk_says_to_free_space(tmp_path, monkeypatch):
    import errno

    from tradingd.instance_lock import lock_file_path

    url, account = f"sqlite:///{tmp_path / 'store.db'}", new_account()
    path = lock_file_path(url, account)

    def full(fd, data, offset):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StorageError) as refused:
        await acquire_instance_lock(url, account)
    text = str(refused.value)
    assert f"cannot write lock file {path}: " in text and "No space left on device" in text
    assert f"free space on the disk of {path.parent}" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_another_user_outside_the_group_cannot_hold_the_lock(umask_022):
    """Security trial F3 for real: a user outside the owner's group cannot open the lock
    file, so cannot flock it to keep the daemon from starting."""
    import shutil
    import subprocess
    import tempfile

    python = "/usr/bin/python3"  # the venv's may sit in a folder that user cannot enter
    if not Path(python).exists():
        pytest.skip("no system python3 to run as another user")
    folder = Path(tempfile.mkdtemp(prefix="tradingd-lock-"))
    try:
        folder.chmod(0o755)  # the lock folder itself is reachable to that user
        lock = await acquire_instance_lock(f"sqlite:///{folder / 'store.db'}", new_account())
        await lock.release()  # even unheld, another user must not be able to take it
        code = (
            "import fcntl, os, sys\n"
            "try:\n"
            "    fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except PermissionError:\n"
            "    sys.exit(13)\n"
        )
        nobody = subprocess.run(
            [python, "-c", code, str(lock.path)],
            user=65534,
            group=65534,
            extra_groups=[],
            timeout=30,
        )
        assert nobody.returncode == 13
    finally:
        shutil.rmtree(folder)


# ----------------------------------------------------------------------------- lock folder

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _folder_of(tmp_path: Path, mode: int, uid: int | None = None, gid: int | None = None) -> Path:
    """A lock folder made before the daemon's first start, as another user would make it."""
    folder = tmp_path / "locks"
    folder.mkdir()
    folder.chmod(mode)
    if uid is not None:
        os.chown(folder, uid, os.getegid() if gid is None else gid)
    return folder


@needs_root
async def test_a_lock_folder_another_user_made_writable_by_all_is_refused(tmp_path, monkeypatch):
    """Security trial: a folder another local user pre-created 0777 at TRADINGD_LOCK_DIR was
    used without a word; that user then deleted the daemon's lock file and a second daemon
    locked a new one beside the first (both trading the account). It is refused, naming
    the folder, its owner and mode and what to do, and stops the start (EX_CONFIG)."""
    from tradingd.__main__ import EX_CONFIG, exit_code
    from tradingd.instance_lock import (
        LOCK_DIR_ENV,
        InstanceLockService,
        LockDirUnsafe,
        acquire_account_lock,
        broker_account,
    )

    folder = _folder_of(tmp_path, 0o777, NOBODY, NOBODY)
    with pytest.raises(LockDirUnsafe) as refused:
        await acquire_account_lock(new_account(), "store", lock_dir=folder)
    text = str(refused.value)
    assert f"lock folder {folder} is owned by nobody, uid {NOBODY} with mode 0777" in text
    assert LOCK_DIR_ENV in text and "chmod o-w" in text
    assert list(folder.iterdir()) == []  # no lock file made there
    assert exit_code(refused.value, "run") == EX_CONFIG
    # A store's lock file in such a folder likewise.
    with pytest.raises(LockDirUnsafe):
        await acquire_instance_lock(f"sqlite:///{folder / 'store.db'}", new_account())
    # The daemon's start stops (its store lock released), not run with the store's alone.
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    account = broker_account("alpaca", "PKLOCKDIR0001", "http://127.0.0.1:18562")
    service = InstanceLockService(store, account, machine_wide=True, wait_s=0.0)
    with pytest.raises(LockDirUnsafe):
        await service.start()
    again = await acquire_instance_lock(store, account)
    await again.release()


@needs_root
@pytest.mark.parametrize("how", ["link_owned_by_another", "link_to_a_folder_of_another"])
async def test_a_lock_folder_that_is_another_users_symbolic_link_is_refused(tmp_path, how):
    from tradingd.instance_lock import LockDirUnsafe, acquire_account_lock

    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    link = tmp_path / "locks"
    link.symlink_to(target)
    if how == "link_owned_by_another":
        os.lchown(link, NOBODY, NOBODY)
    else:
        os.chown(target, NOBODY, NOBODY)
    with pytest.raises(LockDirUnsafe, match=f"lock folder {link} is .*uid {NOBODY}"):
        await acquire_account_lock(new_account(), "store", lock_dir=link)
    assert list(target.iterdir()) == []


@needs_root
async def test_a_lock_folder_shared_through_a_group_of_ours_is_used(tmp_path):
    """Another user's folder of one of our groups (`install -d -m 2770 -g GROUP`), not
    writable by all, is the documented way to share a lock folder: used as before."""
    folder = _folder_of(tmp_path, 0o2770, NOBODY)
    lock = await acquire_instance_lock(f"sqlite:///{folder / 'store.db'}", new_account())
    try:
        assert lock.held and lock.path.parent == folder
    finally:
        await lock.release()


@needs_root
async def test_a_services_lock_folder_tells_root_to_run_as_the_service_not_to_take_it(tmp_path):
    """Sandbox trial: root running `tradingd reset-halt` in /opt/tradingd met var/ owned by
    the service user and was told to "make it yours": a chown to root would lock the
    service out of its own folder. The error names the owner to run the command as."""
    from tradingd.instance_lock import LockDirUnsafe

    folder = _folder_of(tmp_path, 0o750, NOBODY, NOBODY)  # as `useradd --system` + chown
    with pytest.raises(LockDirUnsafe) as refused:
        await acquire_instance_lock(f"sqlite:///{folder / 'store.db'}", new_account())
    text = str(refused.value)
    run_as = text.index("run this command as that user (sudo -u nobody ...")
    assert "daemon that runs as nobody" in text and "leave the folder as it is" in text
    assert run_as < text.index("make it yours")  # the service's case first
    assert list(folder.iterdir()) == []


async def test_a_lock_folder_of_ours_writable_by_all_is_narrowed_with_a_warning(tmp_path):
    from structlog.testing import capture_logs

    folder = _folder_of(tmp_path, 0o777)
    with capture_logs() as logs:
        lock = await acquire_instance_lock(f"sqlite:///{folder / 'store.db'}", new_account())
    await lock.release()
    assert folder.stat().st_mode & 0o7777 == 0o775
    (said,) = [e for e in logs if e["event"] == "instance_lock.lock_dir_repaired"]
    assert said["log_level"] == "warning" and said["lock_dir"] == str(folder)
    assert (said["mode_found"], said["mode_now"]) == ("0777", "0775")


async def test_a_sticky_lock_folder_writable_by_all_is_used_as_it_is(tmp_path):
    """As /tmp (the default lock folder of an in-memory store): nobody removes another's
    file there."""
    folder = _folder_of(tmp_path, 0o1777)
    lock = await acquire_instance_lock("sqlite:///:memory:", new_account(), lock_dir=folder)
    await lock.release()
    assert folder.stat().st_mode & 0o7777 == 0o1777


async def test_a_lock_folder_made_under_a_umask_of_0_is_not_writable_by_all(tmp_path):
    old = os.umask(0)
    try:
        folder = tmp_path / "made" / "locks"
        lock = await acquire_instance_lock("sqlite:///:memory:", new_account(), lock_dir=folder)
        await lock.release()
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o7777 == 0o775


async def _wait_backend_waiting(admin: asyncpg.Connection, backend: int) -> None:
    """Until session `backend` waits on a lock (its pg_advisory_lock is queued)."""
    async with asyncio.timeout(TIMEOUT):
        while not await admin.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", backend
        ):
            await asyncio.sleep(0.02)


async def test_the_service_notices_its_lock_session_ending_at_once_not_at_its_interval(pg_url):
    """The storage trial: after a PostgreSQL restart the lock's session was gone, the
    service looked again only every 30 s, and a second daemon started meanwhile took the
    lock: both traded. The session's end now makes the service check at once: here another
    session was queued for the lock and got it the moment ours ended, so the daemon is told
    to stop, within a second, with a check interval of an hour."""
    from tradingd.instance_lock import InstanceLockService

    account = new_account()
    lost: list[str] = []
    service = InstanceLockService(pg_url, account, check_interval_s=3600.0, on_lost=lost.append)
    await service.start()
    admin = await asyncpg.connect(pg_url, timeout=5)
    other = await asyncpg.connect(pg_url, timeout=5)
    try:
        # The other daemon waits for the lock (server side), so it wins the race.
        waiting = asyncio.create_task(
            other.execute("SELECT pg_advisory_lock($1::bigint)", advisory_key(account))
        )
        await _wait_backend_waiting(admin, other.get_server_pid())
        await admin.fetchval("SELECT pg_terminate_backend($1)", await lock_backend(admin, account))
        await asyncio.wait_for(waiting, TIMEOUT)
        async with asyncio.timeout(2.0):
            while not lost:
                await asyncio.sleep(0.01)
        assert "holds the lock" in lost[0]
        assert service.status()["ok"] is False
        assert await service.ensure_held() is False
    finally:
        await other.close()
        await admin.close()
        await service.stop()


async def test_the_service_takes_its_lock_back_at_once_when_its_session_ends(pg_url):
    """Nobody else wants the lock: the session's end is noticed and the lock taken again on
    a new session at once (a second daemon starting after a database restart is refused)."""
    from structlog.testing import capture_logs

    from tradingd.instance_lock import InstanceLockService

    account = new_account()
    service = InstanceLockService(pg_url, account, check_interval_s=3600.0)
    await service.start()
    admin = await asyncpg.connect(pg_url, timeout=5)
    try:
        with capture_logs() as logs:
            backend = await terminate(admin, account)
            async with asyncio.timeout(2.0):
                while not any(e["event"] == "instance_lock.reacquired" for e in logs):
                    await asyncio.sleep(0.01)
        assert "instance_lock.session_ended" in [e["event"] for e in logs]
        assert await lock_backend(admin, account) not in (None, backend)
        assert service.status()["ok"] is True
        assert await service.ensure_held() is True
    finally:
        await admin.close()
        await service.stop()


async def test_ensure_held_checks_before_a_bar_when_the_session_ended_unchecked(pg_url):
    """The per-bar gate: a session that ended and was not checked yet (the listener's
    check not run) is checked before the bar, and a lock another daemon took stops it."""
    from tradingd.instance_lock import InstanceLockService

    account = new_account()
    lost: list[str] = []
    service = InstanceLockService(pg_url, account, check_interval_s=3600.0, on_lost=lost.append)
    await service.start()
    assert service.lock is not None
    service.lock.on_session_end = None  # the listener's wake-up not there: the gate alone
    admin = await asyncpg.connect(pg_url, timeout=5)
    try:
        assert await service.ensure_held() is True
        await terminate(admin, account)
        key = advisory_key(account)
        assert await admin.fetchval("SELECT pg_try_advisory_lock($1::bigint)", key)
        async with asyncio.timeout(TIMEOUT):
            while service.lock.alive():
                await asyncio.sleep(0.01)
        assert await service.ensure_held() is False
        assert lost and "holds the lock" in lost[0]
    finally:
        await admin.close()
        await service.stop()


async def test_a_live_run_s_lock_is_taken_back_when_its_session_ends_or_stops_the_run(pg_url):
    """`app.RunLock`, the `replay:<run id>` lock a live daemon holds for months: a database
    restart ended its session and it was never taken again, so `reset-halt` (which meets a
    running daemon by this lock) or a second daemon of the run under another account got in.
    Watched now: taken back at once; lost to another process, the run is told to stop."""
    from tradingd.app import RunLock

    run_id = new_account()
    account = f"replay:{run_id}"
    lost: list[str] = []
    run_lock = RunLock(run_id, True, [("the store", pg_url, None, run_id)], on_lost=lost.append)
    await run_lock.start()
    admin = await asyncpg.connect(pg_url, timeout=5)
    other = await asyncpg.connect(pg_url, timeout=5)
    try:
        backend = await terminate(admin, account)
        async with asyncio.timeout(TIMEOUT):
            while await lock_backend(admin, account) in (None, backend):
                await asyncio.sleep(0.01)
        second = RunLock(run_id, True, [("the store", pg_url, None, run_id)])
        with pytest.raises(AnotherDaemonRunning, match="is in use by another tradingd"):
            await second.start()
        assert not lost
        # Another process queued for the lock gets it the moment our session ends.
        waiting = asyncio.create_task(
            other.execute("SELECT pg_advisory_lock($1::bigint)", advisory_key(account))
        )
        await _wait_backend_waiting(admin, other.get_server_pid())
        await terminate(admin, account)
        await asyncio.wait_for(waiting, TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            while not lost:
                await asyncio.sleep(0.01)
        assert "holds the lock" in lost[0]
    finally:
        await other.close()
        await admin.close()
        await run_lock.stop()
    assert run_lock.watchers == [] and run_lock.held == []
