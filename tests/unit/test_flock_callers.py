"""What flock's error means for the files that are locked beside the daemon's own lock files
(`core.flock`): a backtest's record folder, the store's spool, the GARCH fit cache and the
prediction cache.

Each read any OSError its own way: the record folder's lock that failed at a run's start
was dropped silently (the earlier record kept, nothing said), and at its end the whole
replay's record was refused on a filesystem without locks; the spool raised a bare OSError
out of a start naming only its folder; the caches said "unwritable" for a failing disk and
for a filesystem without locks alike and never saved on the latter. Now: held is as
before; unsupported (ENOLCK, ENOTSUP, ENOSYS, EINVAL) is a warning and the caller's unlocked
mode (the spool has none: an error); anything else (EIO, EBADF, ...) an error naming the
file and the errno, or for a cache a warning naming them and no write.

flock is made to fail on the lock files under test (real files in the test's folder);
every other file locks for real.
"""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flock_faults import failing_on
from structlog.testing import capture_logs

from tradingd import backtest
from tradingd.core.errors import TradingdError
from tradingd.storage.spool import Spool, SpoolBatch, SpoolError, claim_orphans

UNSUPPORTED = sorted({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
FAILED = [errno.EIO, errno.EBADF]
HELD = [errno.EWOULDBLOCK]


def _events(logs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"].startswith(prefix)]


# ------------------------------------------------------------------- a backtest's record


def _record(run_id: str) -> tuple[Any, ...]:
    import dataclasses

    from tradingd.config import Config
    from tradingd.engine.engine import EngineResult

    config = Config()
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id=run_id))
    t = datetime(2024, 3, 8, tzinfo=UTC)
    result = EngineResult(run_id, 1, [t], [1e5], [0.0], 0, 0, 0)
    return config, result, {"run_id": run_id}, [], []


def _is_record_lock(path: str) -> bool:
    return path.endswith(backtest.RECORD_LOCK)


@pytest.mark.parametrize("code", FAILED + HELD, ids=errno.errorcode.get)
def test_a_record_lock_that_fails_is_an_error_naming_the_file_and_errno(
    tmp_path, monkeypatch, code
):
    """At the run's start (removing the run id's earlier record) the failure was dropped
    silently; at its end it was "cannot write the run's record" without the file or the
    errno. A blocking lock never answers "held": that is a failure too."""
    out = tmp_path / "r"
    backtest.write_outputs(out, *_record("r"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failing_on(monkeypatch, _is_record_lock, code)
    name = errno.errorcode[code]
    with pytest.raises(TradingdError) as started:
        backtest.remove_earlier_record(out, "r")
    assert str(out / backtest.RECORD_LOCK) in str(started.value) and name in str(started.value)
    with pytest.raises(TradingdError) as ended:
        backtest.write_outputs(out, *_record("r"))
    assert str(out / backtest.RECORD_LOCK) in str(ended.value) and name in str(ended.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
def test_a_record_folder_without_locks_is_written_unlocked_with_a_warning(
    tmp_path, monkeypatch, code
):
    """Refused at the end, the whole replay's record was lost on an NFS --output."""
    out = tmp_path / "r"
    backtest.write_outputs(out, *_record("r"))
    failing_on(monkeypatch, _is_record_lock, code)
    with capture_logs() as logs:
        assert "summary.json" in backtest.remove_earlier_record(out, "r")
        backtest.write_outputs(out, *_record("r2"))
    assert json.loads((out / "summary.json").read_text())["run_id"] == "r2"
    warned = _events(logs, "backtest.record_unlocked")
    assert len(warned) == 2 and all(e["log_level"] == "warning" for e in warned)
    assert warned[0]["path"] == str(out / backtest.RECORD_LOCK)
    assert errno.errorcode[code] in warned[0]["error"]


# ----------------------------------------------------------------------------- the spool


def _batch(seq: int, writer: str) -> SpoolBatch:
    return SpoolBatch(writer, seq, 1_700_000_000.0 + seq, {"equity": [("r", seq)]})


def _dead_spool(folder: Path) -> Path:
    dead = Spool(folder, "0-dead", "fake://db")
    dead.append(_batch(1, "0-dead"))
    dead.close()
    return dead.path


@pytest.mark.parametrize("code", UNSUPPORTED + FAILED, ids=errno.errorcode.get)
def test_a_spool_that_cannot_be_locked_is_an_error_naming_the_file_and_errno(
    tmp_path, monkeypatch, code
):
    """A bare OSError before, out of a start that named only the folder. The spool has no
    unlocked mode: without its lock a live writer's file is taken for an orphan."""
    path = _dead_spool(tmp_path)
    (tmp_path / ".1-x.7.tmp").write_bytes(b"")  # a crash while creating one
    name = errno.errorcode[code]
    failing_on(monkeypatch, lambda p: p.endswith(".tmp"), code)
    with pytest.raises(SpoolError) as tmp_failed:
        claim_orphans(tmp_path)
    assert str(tmp_path / ".1-x.7.tmp") in str(tmp_failed.value) and name in str(tmp_failed.value)
    (tmp_path / ".1-x.7.tmp").unlink()
    with pytest.raises(SpoolError) as create_failed:
        Spool(tmp_path / "new", "2-new", "fake://db").append(_batch(1, "2-new"))
    assert str(tmp_path / "new") in str(create_failed.value) and name in str(create_failed.value)
    assert not list((tmp_path / "new").iterdir())  # no half-made spool left
    failing_on(monkeypatch, lambda p: p.endswith(".spool"), code)
    with pytest.raises(SpoolError) as claim_failed:
        claim_orphans(tmp_path)
    assert str(path) in str(claim_failed.value) and name in str(claim_failed.value)
    if code in UNSUPPORTED:
        assert "storage.spool_dir" in str(claim_failed.value)
    assert path.exists()  # not replayed, not removed


@pytest.mark.parametrize("code", HELD, ids=errno.errorcode.get)
def test_a_spool_another_process_holds_is_left_to_it(tmp_path, monkeypatch, code):
    path = _dead_spool(tmp_path)
    (tmp_path / ".1-x.7.tmp").write_bytes(b"")  # being made
    failing_on(monkeypatch, lambda p: p.endswith((".spool", ".tmp")), code)
    with capture_logs() as logs:
        assert claim_orphans(tmp_path) == []
    assert [e["event"] for e in logs] == ["storage.spool.in_use"]
    assert path.exists() and (tmp_path / ".1-x.7.tmp").exists()


# ------------------------------------------------------------------- the GARCH fit cache


def _fits(folder: Path) -> Any:
    from tradingd_plugins.sizing.garch_fits import FitCache

    c = FitCache(str(folder), 5)
    c.put(b"a", (None, "a"))
    return c


def _garch_lock(path: str) -> bool:
    return os.path.basename(path).startswith(".garch-fits-") and path.endswith(".lock")


@pytest.mark.parametrize("code", FAILED, ids=errno.errorcode.get)
def test_a_fit_cache_lock_that_fails_is_a_warning_naming_it_and_nothing_is_written(
    tmp_path, monkeypatch, code
):
    failing_on(monkeypatch, _garch_lock, code)
    c = _fits(tmp_path)
    with capture_logs() as logs:
        c.save()
    assert c.path is not None and not c.path.exists()
    [warned] = _events(logs, "garch_cache")
    assert warned["event"] == "garch_cache.lock_failed" and warned["log_level"] == "warning"
    assert warned["path"] == str(c.path.with_name(f".{c.path.name}.lock"))
    assert errno.errorcode[code] in warned["error"]


@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
def test_a_fit_cache_without_locks_is_saved_unlocked_with_a_warning(tmp_path, monkeypatch, code):
    """Said "unwritable" before, and never saved on such a filesystem."""
    from tradingd_plugins.sizing.garch_fits import FitCache

    failing_on(monkeypatch, _garch_lock, code)
    c = _fits(tmp_path)
    with capture_logs() as logs:
        c.save()
    assert [e["event"] for e in _events(logs, "garch_cache")] == ["garch_cache.unlocked"]
    assert errno.errorcode[code] in _events(logs, "garch_cache")[0]["error"]
    assert FitCache(str(tmp_path), 5).get(b"a") == (None, "a")


@pytest.mark.parametrize("code", FAILED + HELD, ids=errno.errorcode.get)
def test_another_labels_fit_cache_whose_lock_fails_or_is_held_is_kept(tmp_path, monkeypatch, code):
    """The bound on the labels' files: one whose lock is held (its owner saving) or fails is
    kept this time; a failure is a warning naming it (an info "prune skipped" before)."""
    from tradingd_plugins.sizing.garch_fits import CACHE_LABELS

    others = [tmp_path / f"garch-fits-{i}.json" for i in range(CACHE_LABELS)]
    for i, p in enumerate(others):
        p.write_text("{}")
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
    oldest = others[0]
    failing_on(monkeypatch, lambda p: p.endswith(f".{oldest.name}.lock"), code)
    c = _fits(tmp_path)
    with capture_logs() as logs:
        c.save()
    assert oldest.exists() and c.path is not None and c.path.exists()
    warned = _events(logs, "garch_cache.lock_failed")
    if code in HELD:
        assert not warned
    else:
        assert [w["path"] for w in warned] == [str(oldest.with_name(f".{oldest.name}.lock"))]


# ------------------------------------------------------------------- the prediction cache


def _predictions(folder: Path) -> Any:
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    p = MlEnsemble(MlEnsembleConfig(threshold=0.5, cache_dir=str(folder)), ("A", "B"))
    windows = np.random.default_rng(0).normal(size=(2, 60, 20)).astype(np.float32)
    p.predict(windows)
    return p, windows


def _prediction_lock(path: str) -> bool:
    from tradingd_plugins.signals.ml_ensemble import CACHE_LOCK

    return os.path.basename(path) == CACHE_LOCK


@pytest.mark.parametrize("code", FAILED, ids=errno.errorcode.get)
@pytest.mark.parametrize("wait", [False, True], ids=["tried", "waited"])
def test_a_prediction_cache_lock_that_fails_is_a_warning_and_nothing_is_written(
    tmp_path, monkeypatch, code, wait
):
    from tradingd_plugins.signals.ml_ensemble import CACHE_LOCK

    p, _ = _predictions(tmp_path)
    failing_on(monkeypatch, _prediction_lock, code)
    with capture_logs() as logs:
        p._save_cache(wait=wait)
    assert not list(tmp_path.glob("*.npz"))
    [warned] = _events(logs, "prediction_cache")
    assert warned["event"] == "prediction_cache.lock_failed" and warned["log_level"] == "warning"
    assert warned["path"] == str(tmp_path / CACHE_LOCK)
    assert errno.errorcode[code] in warned["error"]
    monkeypatch.undo()
    p.close()  # kept in memory: saved once the lock works
    assert list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("code", UNSUPPORTED, ids=errno.errorcode.get)
def test_a_prediction_cache_without_locks_is_saved_unlocked_with_a_warning(
    tmp_path, monkeypatch, code
):
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    p, windows = _predictions(tmp_path)
    failing_on(monkeypatch, _prediction_lock, code)
    with capture_logs() as logs:
        p.close()
    assert [e["event"] for e in _events(logs, "prediction_cache")] == ["prediction_cache.unlocked"]
    again = MlEnsemble(MlEnsembleConfig(threshold=0.5, cache_dir=str(tmp_path)), ("A", "B"))
    again.predict(windows)
    assert again.model_calls == 0 and again.cache_hits == 2


@pytest.mark.parametrize("code", HELD, ids=errno.errorcode.get)
def test_a_prediction_cache_another_process_holds_is_saved_later(tmp_path, monkeypatch, code):
    p, _ = _predictions(tmp_path)
    failing_on(monkeypatch, _prediction_lock, code)
    with capture_logs() as logs:
        p._save_cache(wait=False)
    assert [e["event"] for e in _events(logs, "prediction_cache")] == [
        "prediction_cache.save_deferred"
    ]
    assert not list(tmp_path.glob("*.npz"))
