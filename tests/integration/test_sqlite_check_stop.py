"""A SIGTERM while a live start runs the SQLite store's `quick_check` (minutes on a large
store, run after a kill left a `-wal`): the stop waited for the whole check, a shielded job
on the writer thread, and could pass the unit's stop timeout. Now the engine's stop request
interrupts the check and the start ends as a stop before the first bar."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

from conftest import make_panel
from structlog.testing import capture_logs

from tradingd.storage.sqlite import SqliteStore

_ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"


def _killed_daemons_wal(path: Path) -> None:
    """A database with a -wal never checkpointed beside it, as a SIGKILL leaves it."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("CREATE TABLE filler (a INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO filler VALUES (1)")
    db.commit()
    kept = path.with_name("kept.wal")
    shutil.copy(f"{path}-wal", kept)
    db.close()
    shutil.copy(kept, f"{path}-wal")


async def test_a_stop_during_the_check_ends_the_start_as_a_stop(
    engine_config: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from tradingd.app import build_engine

    _killed_daemons_wal(tmp_path / "store.db")
    monkeypatch.setattr(SqliteStore, "check_sql", _ENDLESS, raising=False)
    began = threading.Event()
    real = SqliteStore._quick_check

    def announced(self: SqliteStore) -> str | None:
        began.set()
        return real(self)

    monkeypatch.setattr(SqliteStore, "_quick_check", announced)
    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, run_id="t-check")
    )
    engine = build_engine(config, "live", panel=make_panel(n_bars=30, split_at=None))

    async def sigterm() -> None:
        assert await asyncio.to_thread(began.wait, 60)
        engine.request_stop()  # what the SIGTERM handler calls

    def watchdog() -> None:
        """Without the interrupt the endless check never ends: ended here, the test fails
        (the start raises) rather than hangs."""
        db = engine.store._db
        if db is not None:
            db.interrupt()

    timer = threading.Timer(30, watchdog)
    timer.start()
    stopper = asyncio.ensure_future(sigterm())
    try:
        with capture_logs() as logs:
            await engine.run_until_done()
    finally:
        timer.cancel()
        await stopper
    events = [e["event"] for e in logs]
    assert "storage.sqlite.check_interrupted" in events
    assert "engine.stopped_before_start" in events
    assert "engine.start" not in events
