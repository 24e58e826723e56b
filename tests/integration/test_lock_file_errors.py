"""What flock's error means for the daemon's lock files (`core.flock`).

Any OSError but "held" was read as "locks unsupported here": the machine-wide account lock
then went on unlocked with a warning (a failing disk, a bad descriptor let two daemons trade
one broker account), an EACCES was a refusal naming "another tradingd" that did not exist,
and a store's lock file that failed was waited for as a database that is down. Only ENOLCK,
ENOTSUP/EOPNOTSUPP, ENOSYS and EINVAL mean the filesystem has no locks; EWOULDBLOCK/EAGAIN
is a holder; everything else stops the start naming the file and the errno.

flock is made to fail on the one lock file under test (real files in a folder of the
test's own); every other file locks for real.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from flock_faults import failing_on
from structlog.testing import capture_logs

from tradingd.core.errors import StorageError
from tradingd.instance_lock import (
    LOCK_DIR_ENV,
    AnotherDaemonRunning,
    InstanceLockService,
    acquire_instance_lock,
    broker_account,
)

# (ENOTSUP and EOPNOTSUPP are one number on Linux: a set, each tried once.)
UNSUPPORTED = sorted({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
FAILED = [errno.EBADF, errno.EIO, errno.EACCES, errno.ENOSPC]
HELD = [errno.EWOULDBLOCK, errno.EAGAIN]


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.mark.parametrize("code", FAILED, ids=errno.errorcode.get)
async def test_a_store_lock_file_that_fails_stops_the_start_at_once(tmp_path, monkeypatch, code):
    failing_on(monkeypatch, lambda p: p.endswith(".lock"), code)
    with capture_logs() as logs, pytest.raises(StorageError) as failed:
        # A database that is down is waited for (a while here); a lock file is no database.
        await acquire_instance_lock(_store(tmp_path), "simulated:x", unreachable_wait_s=2.0)
    message = str(failed.value)
    assert str(tmp_path / "store.db") in message and errno.errorcode[code] in message
    assert not [e for e in logs if e["event"] == "instance_lock.waiting_for_database"]


@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
async def test_a_store_lock_file_without_locks_is_said_so(tmp_path, monkeypatch, code):
    failing_on(monkeypatch, lambda p: p.endswith(".lock"), code)
    with (
        capture_logs() as logs,
        pytest.raises(StorageError, match="does not support file locks") as failed,
    ):
        # Nor waited for as a database that is down: the filesystem does not change.
        await acquire_instance_lock(_store(tmp_path), "simulated:x", unreachable_wait_s=2.0)
    assert errno.errorcode[code] in str(failed.value)
    assert not [e for e in logs if e["event"] == "instance_lock.waiting_for_database"]


@pytest.mark.parametrize("code", HELD, ids=errno.errorcode.get)
async def test_a_held_lock_file_is_a_refusal(tmp_path, monkeypatch, code):
    failing_on(monkeypatch, lambda p: p.endswith(".lock"), code)
    with pytest.raises(AnotherDaemonRunning):
        await acquire_instance_lock(_store(tmp_path), "simulated:x")


def _account_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstanceLockService:
    """A daemon's lock part for an Alpaca account (`app._instance_lock`'s), its account lock
    in a folder of the test's own."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    return InstanceLockService(
        _store(tmp_path),
        broker_account("alpaca", "PKFLOCKERRORS0001", "http://127.0.0.1:18561"),
        wait_s=0.0,
        machine_wide=True,
    )


def _account_file(path: str) -> bool:
    return os.path.basename(path).startswith("account-")


@pytest.mark.parametrize("code", FAILED, ids=errno.errorcode.get)
async def test_an_account_lock_that_fails_stops_the_start(tmp_path, monkeypatch, code):
    """It went on with the store's lock only: a warning, /ready ok, the account unguarded."""
    failing_on(monkeypatch, _account_file, code)
    service = _account_service(tmp_path, monkeypatch)
    with pytest.raises(StorageError) as failed:
        await service.start()
    assert str(tmp_path / "locks") in str(failed.value)
    assert errno.errorcode[code] in str(failed.value)
    # The store's lock it took first is released: another start may take it.
    monkeypatch.undo()
    lock = await acquire_instance_lock(service.store_url, service.account)
    await lock.release()


@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
async def test_an_account_lock_folder_without_locks_leaves_the_store_lock_to_guard(
    tmp_path, monkeypatch, code
):
    """As a lock folder that cannot be written: said, shown in /ready, and not fatal."""
    failing_on(monkeypatch, _account_file, code)
    service = _account_service(tmp_path, monkeypatch)
    with capture_logs() as logs:
        await service.start()
    try:
        status = service.status()
        assert status["ok"] and status["account_lock"]["held"] is False
        assert "does not support file locks" in status["account_lock"]["detail"]
        assert [e for e in logs if e["event"] == "instance_lock.account_lock_unavailable"]
    finally:
        await service.stop()
