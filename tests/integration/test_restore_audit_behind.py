"""A store restored with an older audit log: a live process writes a bar's audit lines before
the store commits the bar, so a crash never leaves the store ahead of the audit log, but a
backup of the audit folder taken before the store's (or none restored) does. The resumed run
appended to the older file, the fills in between missing from it, without a word. A resume
now compares the two's last fill and warns (`audit.behind_store`)."""

from __future__ import annotations

import shutil

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
    panel, config = live_run(engine_config)
    first, _ = await _run(config, panel, 3)
    first.audit.path.unlink()
    _second, warned = await _run(config, panel, 1)
    [w] = warned
    assert w["audit_last_fill"] is None
