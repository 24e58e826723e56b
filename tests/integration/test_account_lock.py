"""One daemon per broker account, however its URL is written and whatever its store.

Found by running several daemons on one host: `http://127.0.0.1:P` and `http://127.0.0.1:P/`
were two locks (the raw base_url was hashed, the broker strips the slash), so two daemons
traded one account; and one configuration in two working folders (the shipped relative
`sqlite:///var/paper.db`) locked beside two databases, so both ran, under one run id, with
duplicate-order and wash-trade rejections for the second. The locks are built as the daemon
builds them (`app._instance_lock`), in a lock folder of the test's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.app import _instance_lock
from tradingd.config import Config
from tradingd.core.errors import StorageError
from tradingd.instance_lock import (
    LOCK_DIR_ENV,
    AnotherDaemonRunning,
    account_lock_dir,
    acquire_account_lock,
    broker_account,
    broker_endpoint,
)
from tradingd.stored_run import _account

KEY_ID = "PKACCOUNTLOCKTEST0001"


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(folder))
    return folder


def _config(store: str, base_url: str) -> Config:
    c = Config()
    alpaca = dataclasses.replace(c.broker.alpaca, base_url=base_url)
    return dataclasses.replace(
        c,
        storage=dataclasses.replace(c.storage, url=store),
        broker=dataclasses.replace(c.broker, kind="alpaca", alpaca=alpaca),
    )


def _daemon_lock(store: str, base_url: str, key_id: str = KEY_ID):  # type: ignore[no-untyped-def]
    """The lock part `build_engine` gives a live engine trading Alpaca with `key_id`."""
    engine = SimpleNamespace(
        broker=SimpleNamespace(_key_id=key_id),
        run=SimpleNamespace(run_id="acct-live"),
        request_stop=lambda: None,
    )
    service = _instance_lock(_config(store, base_url), engine)  # type: ignore[arg-type]
    service.wait_s = 0.0  # the refusal at once, not after 5 s of waiting for the holder
    return service


@pytest.mark.parametrize(
    "other",
    [
        "http://127.0.0.1:18555/",
        "HTTP://LOCALHOST:18555",
        "http://localhost:18555//",
        "http://[::1]:18555",
    ],
)
async def test_one_account_under_another_spelling_of_its_url_is_refused(tmp_path, other):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    first = _daemon_lock(store, "http://127.0.0.1:18555")
    await first.start()
    try:
        second = _daemon_lock(store, other)
        with pytest.raises(AnotherDaemonRunning, match=rf"pid {os.getpid()} "):
            await second.start()
    finally:
        await first.stop()


def test_reset_halt_derives_the_daemons_account_from_any_spelling(monkeypatch):
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", "not-a-real-secret")
    daemon = _daemon_lock("sqlite:///:memory:", "https://paper-api.alpaca.markets").account
    shell = _config("sqlite:///:memory:", "https://Paper-API.alpaca.markets:443/")
    assert _account(shell, "acct-live") == daemon


_SPELLINGS = st.fixed_dictionaries(
    {
        "scheme": st.sampled_from(["http", "HTTP", "Http"]),
        "host": st.sampled_from(["127.0.0.1", "localhost", "LocalHost", "127.0.0.2", "[::1]"]),
        "slashes": st.sampled_from(["", "/", "//", "///"]),
    }
)


@settings(max_examples=60, deadline=None)
@given(port=st.integers(1, 65535), a=_SPELLINGS, b=_SPELLINGS)
def test_every_spelling_of_one_loopback_endpoint_is_one_account(port, a, b):
    def url(s: dict[str, str]) -> str:
        return f"{s['scheme']}://{s['host']}:{port}{s['slashes']}"

    assert broker_account("alpaca", KEY_ID, url(a)) == broker_account("alpaca", KEY_ID, url(b))


def test_distinct_accounts_stay_distinct():
    base = broker_account("alpaca", KEY_ID, "https://paper-api.alpaca.markets")
    assert base == broker_account("alpaca", KEY_ID, "https://paper-api.alpaca.markets:443")
    for key_id, url in [
        ("PKOTHERKEY", "https://paper-api.alpaca.markets"),
        (KEY_ID, "https://api.alpaca.markets"),
        (KEY_ID, "https://paper-api.alpaca.markets:8443"),
        (KEY_ID, "http://paper-api.alpaca.markets"),
        (KEY_ID, "https://paper-api.alpaca.markets/proxy-b"),
    ]:
        assert broker_account("alpaca", key_id, url) != base, (key_id, url)
    assert KEY_ID not in base
    # A host name beginning "127." is a name (it may point anywhere), not this machine: it
    # was taken for loopback, one account with every other such name and 127.0.0.1.
    loopback = broker_account("alpaca", KEY_ID, "http://127.0.0.1:8080")
    for name in ("127.0.0.1.nip.io", "127.0.0.2.nip.io"):
        assert broker_account("alpaca", KEY_ID, f"http://{name}:8080") != loopback, name
    assert broker_account("alpaca", KEY_ID, "http://127.1:8080") == loopback
    assert broker_endpoint("https://user:pw@Paper-API.alpaca.markets/a//b/?x=1#f") == (
        "https://paper-api.alpaca.markets:443/a/b"
    )


async def test_one_configuration_in_two_working_folders_is_refused(tmp_path):
    # `sqlite:///var/paper.db` started in folders a and b: two databases, one account.
    a, b = (f"sqlite:///{tmp_path / w / 'var' / 'paper.db'}" for w in ("a", "b"))
    first = _daemon_lock(a, "http://127.0.0.1:18556")
    await first.start()
    try:
        second = _daemon_lock(b, "http://127.0.0.1:18556/")
        with pytest.raises(AnotherDaemonRunning) as refused:
            await second.start()
        msg = str(refused.value)
        assert f"pid {os.getpid()} on host " in msg and "since " in msg
        assert f"store {tmp_path / 'a' / 'var' / 'paper.db'}" in msg  # the holder's store
        assert "trades this broker account" in msg and KEY_ID not in msg
        # The refused daemon let go of its own store's lock: a third start there succeeds
        # once the first daemon is gone.
        assert second.account_lock is None
    finally:
        await first.stop()
    again = _daemon_lock(b, "http://127.0.0.1:18556")
    await again.start()
    await again.stop()


async def test_other_accounts_and_simulated_runs_are_not_held_machine_wide(tmp_path):
    a, b = (f"sqlite:///{tmp_path / w / 'paper.db'}" for w in ("a", "b"))
    first = _daemon_lock(a, "http://127.0.0.1:18557")
    await first.start()
    try:
        other_key = _daemon_lock(b, "http://127.0.0.1:18557", key_id="PKANOTHERKEY")
        await other_key.start()
        await other_key.stop()
        simulated = _daemon_lock(b, "http://127.0.0.1:18557", key_id="")
        await simulated.start()
        assert simulated.account_lock is None and "account_lock" not in simulated.status()
        await simulated.stop()
    finally:
        await first.stop()


HOLDER = r"""
import asyncio, os, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from tradingd.instance_lock import acquire_account_lock

async def main():
    lock = await acquire_account_lock(sys.argv[1], sys.argv[2])
    print("LOCKED", os.getpid(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await lock.release()

asyncio.run(main())
"""


async def test_the_account_lock_is_held_across_processes_and_freed_by_a_kill(tmp_path):
    account = broker_account("alpaca", KEY_ID, "http://127.0.0.1:18558")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        account,
        "/elsewhere/var/paper.db",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("LOCKED"), line
        with pytest.raises(AnotherDaemonRunning) as refused:
            await acquire_account_lock(account, str(tmp_path / "mine.db"))
        assert f"pid {proc.pid} " in str(refused.value)
        assert "store /elsewhere/var/paper.db" in str(refused.value)
    finally:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
    lock = await acquire_account_lock(account, str(tmp_path / "mine.db"))
    await lock.release()


async def test_an_unwritable_lock_folder_is_reported_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv(LOCK_DIR_ENV, str(blocker / "locks"))
    service = _daemon_lock(f"sqlite:///{tmp_path / 'store.db'}", "http://127.0.0.1:18559")
    await service.start()
    try:
        status = service.status()
        assert status["ok"] and status["account_lock"]["held"] is False
        assert LOCK_DIR_ENV in status["account_lock"]["detail"]
    finally:
        await service.stop()
    with pytest.raises(StorageError, match="cannot open lock file"):
        await acquire_account_lock("alpaca:x", "s")


def test_the_lock_folder_is_one_per_user_not_per_session(monkeypatch, tmp_path):
    monkeypatch.delenv(LOCK_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))  # a login shell's only
    assert account_lock_dir() == tmp_path / ".cache" / "tradingd" / "locks"


def _as_another_user(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Leave `path` as a second user sharing the lock folder sees the first one's file:
    readable, not writable (chmod 0444 refuses O_RDWR to its owner too). Root ignores file
    modes, so then refuse a write open of it as the kernel would for anyone else."""
    path.chmod(0o444)
    if os.geteuid() != 0:
        return
    import tradingd.instance_lock as il

    real_open = os.open

    def open_(file, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(file) == path and flags & os.O_ACCMODE != os.O_RDONLY:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(il.os, "open", open_)


async def test_another_users_lock_file_is_still_locked_not_unavailable(tmp_path, monkeypatch):
    # TRADINGD_LOCK_DIR shared by two users: the second cannot open the first one's 0644
    # lock file for writing. That was "lock folder unwritable", a warning, and both traded.
    store = f"sqlite:///{tmp_path / 'store.db'}"
    first = _daemon_lock(store, "http://127.0.0.1:18561")
    await first.start()
    try:
        assert first.account_lock is not None
        path = first.account_lock.path
        _as_another_user(monkeypatch, path)
        second = _daemon_lock(f"sqlite:///{tmp_path / 'b' / 'store.db'}", "http://127.0.0.1:18561")
        with pytest.raises(AnotherDaemonRunning, match="trades this broker account") as refused:
            await second.start()
        assert f"pid {os.getpid()} " in str(refused.value)
    finally:
        await first.stop()
    # The holder gone, the other user takes it through its read-only descriptor and holds it.
    account = broker_account("alpaca", KEY_ID, "http://127.0.0.1:18561")
    lock = await acquire_account_lock(account, "other-user.db")
    try:
        assert lock.held and await lock.check()
        with pytest.raises(AnotherDaemonRunning):
            await acquire_account_lock(account, "third.db")
    finally:
        await lock.release()
    again = await acquire_account_lock(account, "third.db")
    await again.release()


async def test_a_lock_folder_on_nfs_is_warned_about(tmp_path, monkeypatch, lock_dir):
    import structlog

    import tradingd.instance_lock as il

    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        f"server:/export {tmp_path} nfs4 rw,relatime 0 0\n"
        f"tmpfs {tmp_path}/locks\\040x tmpfs rw 0 0\n"
    )
    monkeypatch.setattr(il, "MOUNTS", str(mounts))
    assert il.mount_type(lock_dir) == "nfs4"  # not created yet: its nearest folder's mount
    (tmp_path / "locks x").mkdir()
    assert il.mount_type(tmp_path / "locks x" / "a") == "tmpfs"
    assert il.mount_type(Path("/")) == "ext4"
    with structlog.testing.capture_logs() as logs:
        lock = await acquire_account_lock("alpaca:nfs", "s")
        await lock.release()
    assert [e["fs"] for e in logs if e["event"] == "instance_lock.lock_dir_on_nfs"] == ["nfs4"]
    monkeypatch.setattr(il, "MOUNTS", str(tmp_path / "no-such-file"))
    assert il.mount_type(lock_dir) is None
