"""The trial ledger (`.trials.jsonl`) is appended to by every backtest's end, a sweep's
parallel workers' at once: each append (with its look for the same line) holds the ledger's
exclusive lock, and a reader reports every line it cannot count, naming it."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from tradingd.analysis import trial_ledger
from tradingd.analysis.trial_ledger import TRIALS_LEDGER, ledger_entries, record_trial

WORKERS = 4
OWN_RUNS = 12
EQUITY = 100_000.0 * np.cumprod(1.0 + np.linspace(-0.01, 0.012, 30))


def _config(lookback: int) -> dict[str, Any]:
    return {"signals": [{"name": "momentum", "params": {"lookback": lookback}}]}


def _worker(root: str, worker: int, barrier: Any) -> None:
    """Records OWN_RUNS runs of its own and one every worker records (a sweep's points of
    one variant under one run id). Every record_trial call waits for the other workers at
    the point between the stats and the append, so they all append together."""
    real = trial_ledger.simple_returns

    def together(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return real(*args, **kwargs)

    trial_ledger.simple_returns = together  # type: ignore[assignment]
    for i in range(OWN_RUNS):
        record_trial(root, f"w{worker}-r{i}", _config(10 + i), EQUITY, 100_000.0)
    record_trial(root, "shared", _config(99), EQUITY, 100_000.0)


def test_parallel_appends_leave_whole_lines_each_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * WORKERS
    raw = (tmp_path / TRIALS_LEDGER).read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode("utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one whole entry
    run_ids = [e["run_id"] for e in entries]
    expected = {f"w{w}-r{i}" for w in range(WORKERS) for i in range(OWN_RUNS)} | {"shared"}
    assert sorted(run_ids) == sorted(expected)  # each run once: the shared one too
    with capture_logs() as logs:
        assert len(ledger_entries(tmp_path / TRIALS_LEDGER)) == len(expected)
    assert not [e for e in logs if e["event"] == "trials.ledger_lines_skipped"]


def test_lines_that_are_not_entries_are_reported_with_their_numbers(tmp_path: Path) -> None:
    good = json.dumps({"run_id": "a", "config_hash": "h1", "bars": 9})
    ledger = tmp_path / TRIALS_LEDGER
    ledger.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b"",  # a blank line is no entry and no loss
                b'{"run_id": "b"}',  # no config_hash
                b"\xff\xfe not utf-8",  # read as text, the whole ledger was a traceback
                good.encode() + good.encode(),  # two entries run together
                b'{"run_id": "c", "config_ha',  # cut
            ]
        )
    )
    with capture_logs() as logs:
        entries = ledger_entries(ledger)
    assert [e["run_id"] for e in entries] == ["a"]
    (said,) = [e for e in logs if e["event"] == "trials.ledger_lines_skipped"]
    assert said["lines"] == 4 and said["line_numbers"] == [3, 4, 5, 6]
    assert said["file"] == str(ledger)


def test_an_entry_after_a_cut_last_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """Appended to a line a crash cut, the new entry became part of one unreadable line."""
    ledger = tmp_path / TRIALS_LEDGER
    ledger.write_text('{"run_id": "cut", "config_ha')
    with capture_logs() as logs:
        record_trial(tmp_path, "next", _config(20), EQUITY, 100_000.0)
    assert [e["run_id"] for e in ledger_entries(ledger)] == ["next"]
    assert [e for e in logs if e["event"] == "trials.ledger_line_ended"]


def test_a_filesystem_without_locks_reads_the_ledger_unlocked_said_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """On NFS or FUSE mounts that refuse flock (ENOLCK) the count raised OSError, where it
    read fine before readers locked."""
    import errno

    from tradingd.analysis.trials import count_trials

    record_trial(tmp_path, "a", _config(10), EQUITY, 100_000.0)
    record_trial(tmp_path, "b", _config(11), EQUITY, 100_000.0)

    def no_locks(fd: Any, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(trial_ledger.fcntl, "flock", no_locks)
    monkeypatch.setattr(trial_ledger, "_UNLOCKED_FOLDERS", set(), raising=False)
    with capture_logs() as logs:
        first = count_trials(tmp_path)
        again = count_trials(tmp_path)
    assert first.trials == again.trials == 2  # both variants, from the ledger alone
    warned = [e for e in logs if e["event"] == "trials.ledger_unlocked"]
    assert len(warned) == 1 and warned[0]["folder"] == str(tmp_path)


def test_a_filesystem_without_locks_appends_unlocked_said_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The writer still raised OSError there: the backtest's end said
    `backtest.trial_not_recorded` and the ledger stayed empty, every run."""
    import errno

    def no_locks(fd: Any, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(trial_ledger.fcntl, "flock", no_locks)
    monkeypatch.setattr(trial_ledger, "_UNLOCKED_FOLDERS", set(), raising=False)
    with capture_logs() as logs:
        record_trial(tmp_path, "a", _config(10), EQUITY, 100_000.0)
        record_trial(tmp_path, "b", _config(11), EQUITY, 100_000.0)
        record_trial(tmp_path, "b", _config(11), EQUITY, 100_000.0)  # a rerun: no new line
    warned = [e for e in logs if e["event"] == "trials.ledger_unlocked"]
    assert len(warned) == 1 and warned[0]["folder"] == str(tmp_path)
    assert warned[0]["step"] == "append" and "twice" in warned[0]["detail"]
    monkeypatch.undo()  # read back under a lock, as on a local disk
    assert [e["run_id"] for e in ledger_entries(tmp_path / TRIALS_LEDGER)] == ["a", "b"]


def _flock_raising(monkeypatch: Any, code: int) -> None:
    import os

    def failing(fd: Any, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(trial_ledger.fcntl, "flock", failing)
    monkeypatch.setattr(trial_ledger, "_UNLOCKED_FOLDERS", set(), raising=False)


_UNSUPPORTED = ["ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EINVAL"]
_FAILED = ["EBADF", "EIO", "EACCES", "ENOSPC"]


@pytest.mark.parametrize("name", _UNSUPPORTED)
def test_every_no_locks_errno_appends_unlocked_said_once(
    tmp_path: Path, monkeypatch: Any, name: str
) -> None:
    import errno

    _flock_raising(monkeypatch, getattr(errno, name))
    with capture_logs() as logs:
        record_trial(tmp_path, "a", _config(10), EQUITY, 100_000.0)
        assert [e["run_id"] for e in ledger_entries(tmp_path / TRIALS_LEDGER)] == ["a"]
    steps = [e["step"] for e in logs if e["event"] == "trials.ledger_unlocked"]
    assert steps == ["append", "read"]


@pytest.mark.parametrize("name", _FAILED)
def test_a_lock_that_fails_otherwise_appends_nothing_and_says_file_and_errno(
    tmp_path: Path, monkeypatch: Any, name: str
) -> None:
    """EIO, EBADF, EACCES, ENOSPC were read as "this filesystem refuses file locks": the
    line went in unlocked, a sweep's workers could cut each other's lines."""
    import errno

    from tradingd.analysis.trial_ledger import LedgerLockError

    record_trial(tmp_path, "a", _config(10), EQUITY, 100_000.0)
    ledger = tmp_path / TRIALS_LEDGER
    before = ledger.read_bytes()
    _flock_raising(monkeypatch, getattr(errno, name))
    with capture_logs() as logs:
        with pytest.raises(OSError) as appending:  # what a backtest's end says, not fails on
            record_trial(tmp_path, "b", _config(11), EQUITY, 100_000.0)
        with pytest.raises(LedgerLockError) as reading:
            ledger_entries(ledger)
    for failed in (appending.value, reading.value):
        assert isinstance(failed, LedgerLockError)
        assert str(ledger) in str(failed) and name in str(failed)
    assert ledger.read_bytes() == before
    assert not [e for e in logs if e["event"] == "trials.ledger_unlocked"]


def test_a_backtests_end_says_a_ledger_lock_that_failed(tmp_path: Path, monkeypatch: Any) -> None:
    """`backtest.trial_not_recorded` names the ledger and the errno."""
    import errno
    import types

    from tradingd.backtest import _note_trial
    from tradingd.config import Config

    _flock_raising(monkeypatch, errno.EIO)
    config = Config()
    out = tmp_path / "runs" / "r1"
    out.mkdir(parents=True)
    result = types.SimpleNamespace(run_id="r1", equity=EQUITY)
    with capture_logs() as logs:
        _note_trial(out, config, result, ())  # type: ignore[arg-type]
    (said,) = [e for e in logs if e["event"] == "backtest.trial_not_recorded"]
    assert "EIO" in said["error"] and str(out / TRIALS_LEDGER) in said["error"]
