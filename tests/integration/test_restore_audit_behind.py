"""A store restored with an older audit log: a live process writes a bar's audit lines before
the store commits the bar, so a crash never leaves the store ahead of the audit log, but a
backup of the audit folder taken before the store's (or none restored) does. The resumed run
appended to the older file, the fills in between missing from it, without a word. A resume
now compares the two's last fill and warns (`audit.behind_store`)."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import pytest
from conftest import live_run
from structlog.testing import capture_logs


def _stop_after(engine, n: int) -> None:  # type: ignore[no-untyped-def]
    traded: list[object] = []

    def after(t: object, v: object) -> None:
        traded.append(t)
        if len(traded) >= n:
            engine.request_stop()

    engine.after_bar.append(after)


async def _run(config, panel, bars: int):  # type: ignore[no-untyped-def]
    from tradingd.app import build_engine

    engine = build_engine(config, "live", panel=panel)
    _stop_after(engine, bars)
    with capture_logs() as logs:
        await engine.run_until_done()
    return engine, [e for e in logs if e["event"] == "audit.behind_store"]


async def test_audit_log_older_than_the_store_is_warned(engine_config, tmp_path):
    panel, config = live_run(engine_config)
    first, warned = await _run(config, panel, 2)
    assert not warned
    path = first.audit.path
    backup = tmp_path / "audit-backup.jsonl"
    shutil.copy(path, backup)  # the audit folder's backup, taken first

    second, warned = await _run(config, panel, 6)  # trades on: fills after the backup
    assert second.resumed_from is not None
    assert not warned  # a plain restart: the log has every fill
    from tradingd.app import build_engine

    probe = build_engine(config, "live", panel=panel)
    await probe.store.start()
    try:
        stored_last = await probe.store.last_fill_time(config.run.run_id)
    finally:
        await probe.store.stop()
    shutil.copy(backup, path)  # restored: the store's backup is the later one
    assert first.audit.last_fill_time() < stored_last  # the test needs a fill in between

    _third, warned = await _run(config, panel, 1)
    [w] = warned
    assert w["log_level"] == "warning"
    assert w["store_last_fill"] == stored_last
    assert w["audit_last_fill"] < stored_last
    assert w["audit_log"] == str(path)


async def test_no_audit_log_restored_is_warned(engine_config):
    """The audit folder not restored: none of the run's files, its `.live` mark neither."""
    panel, config = live_run(engine_config)
    first, _ = await _run(config, panel, 3)
    first.audit.path.unlink()
    first.audit.path.with_name(first.audit.path.name + ".live").unlink()
    _second, warned = await _run(config, panel, 1)
    [w] = warned
    assert w["audit_last_fill"] is None


def _backups_0_rotated(path: Path) -> None:
    path.unlink()  # what a rotation with log.audit_backups = 0 does (audit_file._Sink)


def _copytruncate(path: Path) -> None:
    shutil.copy(path, path.with_name(path.name + "-20261207"))
    path.write_bytes(b"")


def _dateext_compress(path: Path) -> None:
    with path.open("rb") as src, gzip.open(path.with_name(path.name + "-20261207.gz"), "wb") as gz:
        shutil.copyfileobj(src, gz)
    path.unlink()  # logrotate's `create` makes a new one; the daemon too at its next line


@pytest.mark.parametrize("rotate", [_backups_0_rotated, _copytruncate, _dateext_compress])
async def test_a_log_rotated_after_its_last_fill_is_not_warned(engine_config, rotate):
    """Rotated with no `.jsonl.1` beside it, the log holds no fill line: every restart
    warned "restore the audit folder" until the next fill, though nothing was missing."""
    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, log=dataclasses.replace(config.log, audit_backups=0))
    first, _ = await _run(config, panel, 3)
    assert first.audit.last_fill_time() is not None  # the test needs a fill to rotate away
    rotate(first.audit.path)
    assert first.audit.last_fill_time() is None
    second, warned = await _run(config, panel, 1)
    assert second.resumed_from is not None
    assert not warned


async def test_a_log_without_fills_that_began_before_the_stores_last_fill_is_warned(
    engine_config,
):
    """Restored from a backup holding orders but none of their fills: its earliest record
    is of a bar before the store's last fill, so it is behind, not rotated."""
    panel, config = live_run(engine_config)
    first, _ = await _run(config, panel, 3)
    path = first.audit.path
    lines = path.read_text().splitlines(keepends=True)
    kept = [x for x in lines if not x.startswith('{"event": "fill"')]
    assert len(kept) < len(lines) and any(x.startswith('{"event": "order"') for x in kept)
    path.write_text("".join(kept))
    _second, warned = await _run(config, panel, 1)
    [w] = warned
    assert w["audit_last_fill"] is None
