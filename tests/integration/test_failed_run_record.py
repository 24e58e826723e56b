"""A run that ends by an exception: its stored row kept ended_at and summary NULL (the row of
a run still going, or killed) and the log had no end of the run. It is ended, marked failed
with the error's line, on SQLite and PostgreSQL, and a live run's crash still resumes."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import live_run, make_panel
from pg_schemas import schema_url
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError, PluginFault


async def _stored_run(config) -> dict:  # type: ignore[no-untyped-def]
    """The run's row, read by a store of its own."""
    from tradingd.storage.factory import open_store

    store = open_store(config.storage.url, spool=False)
    await store.start()
    try:
        (row,) = await store.fetch("runs", config.run.run_id)
        return row
    finally:
        await store.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def on_store(request, engine_config):  # type: ignore[no-untyped-def]
    """A function putting a config on SQLite, or on PostgreSQL in a throwaway schema."""
    if request.param == "sqlite":
        yield lambda config: config
        return
    async with schema_url(request.getfixturevalue("pg_url")) as url:
        yield lambda config: dataclasses.replace(
            config, storage=dataclasses.replace(config.storage, url=url)
        )


def _raise_at(engine, bar: int) -> None:  # type: ignore[no-untyped-def]
    """The first signal plugin raises in score from the engine's `bar`-th traded bar on."""
    plugin = engine.pipeline.signals[0][0]
    score = plugin.score

    def failing(ctx):  # type: ignore[no-untyped-def]
        if engine._bars >= bar:
            raise RuntimeError("boom from the plugin\nsecond line")
        return score(ctx)

    plugin.score = failing


async def test_a_backtest_that_fails_is_stored_ended_and_failed_and_logged(
    engine_config, on_store, synthetic_panel
):
    from tradingd.app import build_engine

    config = on_store(engine_config)
    engine = build_engine(config, "backtest", panel=synthetic_panel)
    _raise_at(engine, 5)
    with capture_logs() as logs, pytest.raises(PluginFault):
        await engine.run_until_done()
    run = await _stored_run(config)
    assert run["ended_at"] is not None
    summary = run["summary"]
    assert summary["failed"] is True and summary["bars"] == 5
    assert summary["error"].startswith("PluginFault: plugin 'momentum' failed in score at bar")
    assert summary["error"].endswith("RuntimeError: boom from the plugin")  # its first line
    (failed,) = [e for e in logs if e["event"] == "engine.failed"]
    assert failed["log_level"] == "error" and failed["error"] == summary["error"]
    assert failed["run_id"] == config.run.run_id and failed["bars"] == 5


async def test_a_replay_refused_before_its_row_is_made_leaves_the_earlier_row(engine_config):
    """A replay whose run id is a live run's is refused by the store before it deletes or
    writes anything: the live run's row is not marked failed by the refused replay."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    assert (await build_engine(config, "live", panel=panel).run_until_done()).bars == 30
    before = await _stored_run(config)
    with capture_logs() as logs, pytest.raises(ConfigError, match="is a live run's"):
        await build_engine(config, "backtest", panel=panel).run_until_done()
    # Not "engine.failed" with the live run's id: that run is not failing.
    assert [e["event"] for e in logs if e["event"].startswith("engine.")] == [
        "engine.start_refused"
    ]
    assert await _stored_run(config) == before
    assert "failed" not in before["summary"]


async def test_a_live_run_that_crashed_is_stored_failed_and_still_resumes(engine_config, on_store):
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    config = on_store(config)
    crashed = build_engine(config, "live", panel=panel)
    _raise_at(crashed, 10)
    with pytest.raises(PluginFault):
        await crashed.run_until_done()
    run = await _stored_run(config)
    assert run["ended_at"] is not None and run["summary"]["failed"] is True
    decided = crashed._times[-1]  # the last bar it decided; the next one failed
    assert crashed.last_bar_time > decided

    again = build_engine(config, "live", panel=panel)
    result = await again.run_until_done()
    assert again.resumed_from == decided  # continued from the crashed process's checkpoint
    run = await _stored_run(config)  # reopened, then ended as a live run's stop ends it
    assert run["ended_at"] is not None and run["summary"] == {"bars": result.bars}


async def test_a_failed_live_run_s_background_tasks_end_before_its_row_is_ended(engine_config):
    """The row was ended as failed while the reconciler, the state refresher or the fill
    booker still ran: one of them could store fills or orders in an ended run."""
    import asyncio

    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    _raise_at(engine, 10)
    background = {"reconcile", "late-fills", "state", "splits"}
    seen: list[set[str]] = []
    end_failed_run = engine._end_failed_run

    async def ending(exc):  # type: ignore[no-untyped-def]
        seen.append({t.get_name() for t in asyncio.all_tasks() if t.get_name() in background})
        await end_failed_run(exc)

    engine._end_failed_run = ending
    started: set[str] = set()

    def note(time, verdicts):  # type: ignore[no-untyped-def]
        started.update(t.get_name() for t in asyncio.all_tasks() if t.get_name() in background)

    engine.after_bar.append(note)
    with pytest.raises(PluginFault):
        await engine.run_until_done()
    assert started  # the run had background tasks while its bars went on
    assert seen == [set()]


async def test_a_backtest_whose_audit_folder_fills_up_is_stored_ended_and_failed(engine_config):
    """A full audit folder under a replay on SQLite: the audit log's lines are written in the
    store's writer process, and the failed write made that process refuse the store's writes
    too, so the run's row kept ended_at and summary NULL (a killed run's, to
    stored_run_results) although the store was fine. The row is ended failed with the audit
    log's error, and the store has every bar the run traded."""
    import os
    import sqlite3

    from tradingd.app import build_engine
    from tradingd.core.errors import StorageError

    engine = build_engine(engine_config, "backtest", panel=make_panel())
    audit = engine.audit
    audit.flush_interval_s = 0.0  # every bar's lines go to the writer process
    audit.max_lines = 1  # on their own, not riding with the store's next write
    full: list[int] = []

    def fill_the_disk(time, verdicts):  # type: ignore[no-untyped-def]
        writer = audit._writer
        if full or writer is None:
            return
        if not audit._writer_ready:
            # Waited for, not left to the machine's speed: on a loaded CI host the writer
            # process had not answered within the run's 300 bars, and nothing failed.
            writer.sync(audit._writer_user)
            audit._check_ready(writer)
        assert writer is engine.store._child  # the store's process, shared
        # From now on the audit file is a full disk (the process reopens a moved file).
        link = audit.path.with_name("full")
        link.symlink_to("/dev/full")
        os.replace(link, audit.path)
        full.append(engine._bars)

    engine.after_bar.append(fill_the_disk)
    with pytest.raises(StorageError, match="cannot write the audit log") as e:
        await engine.run_until_done()
    assert full
    assert str(e.value).startswith(f"writer process audit {audit.path}: ")
    run = await _stored_run(engine_config)
    assert run["ended_at"] is not None
    summary = run["summary"]
    assert summary["failed"] is True and summary["bars"] > full[0]
    assert "cannot write the audit log" in summary["error"]
    with sqlite3.connect(engine_config.storage.url.removeprefix("sqlite:///")) as db:
        (bars,) = db.execute("SELECT count(*) FROM equity").fetchone()
    assert bars == summary["bars"]  # the store's writes went on after the audit's failed


async def test_a_run_whose_last_audit_lines_cannot_be_written_is_stored_failed(engine_config):
    """The audit log's last lines are written (forced) before the run's row is ended: a
    write that fails there ends the run failed, not stored as finished beside a log that
    lacks them (the audit log wrote them at its close, after the row was ended)."""
    from tradingd.app import build_engine
    from tradingd.core.errors import StorageError
    from tradingd.engine.engine import NullAudit

    class FullAtTheEnd(NullAudit):
        def flush(self, force: bool = False) -> None:
            if force:
                raise StorageError("cannot write the audit log x.jsonl: No space left on device")

    engine = build_engine(engine_config, "backtest", panel=make_panel())
    engine.audit.close()
    engine.audit = FullAtTheEnd()
    with pytest.raises(StorageError, match="No space left"):
        await engine.run_until_done()
    run = await _stored_run(engine_config)
    assert run["ended_at"] is not None and run["summary"]["failed"] is True
    assert run["summary"]["error"].startswith("StorageError: cannot write the audit log x.jsonl")


def test_an_audit_log_that_fails_at_its_close_does_not_keep_the_rest_open(engine_config):
    """`close_held` closed the audit log first, unguarded: its error at the close (a full
    disk) skipped the store's writer process and every plugin's close (their worker
    processes stayed). Every part is closed, then the audit's error is raised."""
    from tradingd.app import build_engine
    from tradingd.core.errors import StorageError
    from tradingd.engine.engine import NullAudit

    class FullAtClose(NullAudit):
        def close(self) -> None:
            raise StorageError("cannot write the audit log x.jsonl: No space left on device")

    engine = build_engine(engine_config, "backtest", panel=make_panel())
    engine.audit.close()
    engine.audit = FullAtClose()
    closed: list[str] = []
    store_close = engine.store.close_unstarted
    engine.store.close_unstarted = lambda: (closed.append("store"), store_close())[1]
    for plugin in engine.pipeline.plugins():
        plugin.close = lambda name=plugin.name: closed.append(name)
    with pytest.raises(StorageError, match="No space left"):
        engine.close_held()
    names = [p.name for p in engine.pipeline.plugins()]
    assert closed == ["store", *names]
