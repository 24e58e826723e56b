"""A replay never erases or mixes another run's record.

A replay starts by deleting its run id's rows and audit log (begin_run). Two replays of one
run id at once on one store would erase and interleave each other's record, and a replay
that reuses a live run's id would erase the live run's orders, fills and checkpoints (its
restart point)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import live_run, make_panel

from tradingd.core.errors import ConfigError
from tradingd.core.types import RunInfo


def _replay(config, panel, on_bar=None):
    from tradingd.app import build_engine

    return build_engine(config, "backtest", panel=panel, on_bar=on_bar)


async def _fills(config, run_id: str) -> int:
    from tradingd.storage.factory import open_store

    store = open_store(config.storage.url, spool=False)
    await store.start()
    try:
        return len(await store.fetch("fills", run_id))
    finally:
        await store.stop()


async def _second_while_first_runs(first, second):
    """Runs `second` while `first` is held inside its tenth bar (its broker awaits an event
    there); returns (first's result, the ConfigError `second` raised or None)."""
    held, go_on = asyncio.Event(), asyncio.Event()
    on_bar = first.broker.on_bar
    seen = {"bars": 0}

    async def held_on_bar(bar):
        seen["bars"] += 1
        if seen["bars"] == 10:
            held.set()
            await go_on.wait()
        return await on_bar(bar)

    first.broker.on_bar = held_on_bar
    task = asyncio.create_task(first.run_until_done())
    await asyncio.wait_for(held.wait(), 60)
    error = None
    try:
        await second.run_until_done()
    except ConfigError as exc:
        error = exc
    finally:
        go_on.set()
    return await asyncio.wait_for(task, 120), error


async def test_a_second_replay_of_a_run_id_on_the_same_store_is_refused(engine_config):
    panel = make_panel(n_bars=200)
    solo = await _replay(engine_config, panel).run_until_done()
    assert solo.fills > 0

    first, second = _replay(engine_config, panel), _replay(engine_config, panel)
    result, error = await _second_while_first_runs(first, second)
    assert error is not None
    message = str(error)
    assert "'test-run'" in message and "run.run_id" in message and "pid " in message
    # The first replay's record is whole: nothing erased or added by the second.
    assert result.fills == solo.fills
    assert await _fills(engine_config, "test-run") == solo.fills
    # Once it has ended, the same run id replays again (the lock was released).
    again = await _replay(engine_config, panel).run_until_done()
    assert again.fills == solo.fills
    # Its lock file sits beside the database, one for the run id, whatever the reruns.
    db = Path(engine_config.storage.url.removeprefix("sqlite:///"))
    assert len(list(db.with_name(f"{db.name}.locks").glob("*.lock"))) == 1


async def test_replays_with_memory_stores_meet_only_through_a_shared_audit_log(
    engine_config, tmp_path
):
    """A memory store shares nothing: replays of one run id with audit logs of their own
    (a sweep's points, walk-forward folds) run side by side; with one audit folder they
    would write one file, and the second is refused."""
    panel = make_panel(n_bars=200)

    def memory(audit: Path):
        return dataclasses.replace(
            engine_config,
            storage=dataclasses.replace(engine_config.storage, url="sqlite:///:memory:"),
            log=dataclasses.replace(engine_config.log, audit_dir=str(audit)),
        )

    a, b = memory(tmp_path / "a"), memory(tmp_path / "b")
    _, error = await _second_while_first_runs(_replay(a, panel), _replay(b, panel))
    assert error is None
    _, error = await _second_while_first_runs(_replay(a, panel), _replay(a, panel))
    assert error is not None and "'test-run'" in str(error)
    # The lock files are in the audit folders, which a sweep's temporary folders remove.
    assert [len(list((tmp_path / d).glob("*.lock"))) for d in "ab"] == [1, 1]


async def test_a_replay_refuses_to_erase_a_live_runs_record(tmp_path):
    from tradingd.storage.factory import open_store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url, spool=False)
    await store.start()
    try:

        def run(mode: str) -> RunInfo:
            return RunInfo("paper-1", mode, datetime.now(UTC), "{}", ("A", "B"), 100_000.0)

        assert await store.resume_run(run("live")) is None  # a new live run: its run row
        store.record_checkpoint("paper-1", datetime(2024, 1, 2, tzinfo=UTC), {"k": 1})
        await store.flush()
        with pytest.raises(ConfigError, match=r"'paper-1'.*live run's record.*run\.run_id"):
            await store.begin_run(run("backtest"))
        # Nothing was deleted: the live run's checkpoint is still its restart point.
        assert len(await store.fetch("checkpoints", "paper-1")) == 1
        assert (await store.fetch("runs", "paper-1"))[0]["mode"] == "live"
        # A backtest's own record is still replaced by its rerun, as before.
        now = datetime.now(UTC)
        await store.begin_run(RunInfo("bt-1", "backtest", now, "{}", ("A",), 1.0))
        await store.begin_run(RunInfo("bt-1", "backtest", now, "{}", ("A",), 2.0))
        runs = await store.fetch("runs", "bt-1")
        assert len(runs) == 1 and runs[0]["initial_capital"] == 2.0
    finally:
        await store.stop()


async def test_a_live_run_refuses_to_continue_a_backtests_record(tmp_path):
    """Without a checkpoint every order of the backtest would count as an intent stored
    before a crash, to be looked up at the broker on start."""
    from tradingd.core.types import Order, Side
    from tradingd.storage.factory import open_store

    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", spool=False)
    await store.start()
    try:
        now = datetime.now(UTC)
        await store.begin_run(RunInfo("shared", "backtest", now, "{}", ("A",), 1.0))
        store.record_orders(
            "shared", [Order("shared|20240102T000000|A|entry|1", "A", Side.BUY, 5.0, now)]
        )
        await store.flush()
        with pytest.raises(ConfigError, match=r"'shared'.*backtest's record.*run\.run_id"):
            await store.resume_run(RunInfo("shared", "live", now, "{}", ("A",), 1.0))
        assert len(await store.fetch("orders", "shared")) == 1
        assert (await store.fetch("runs", "shared"))[0]["mode"] == "backtest"
    finally:
        await store.stop()


async def test_replays_on_two_stores_still_meet_in_one_audit_folder(engine_config, tmp_path):
    """The audit log `<audit_dir>/<run_id>.jsonl` is shared whatever the store."""
    panel = make_panel(n_bars=200)
    other = dataclasses.replace(
        engine_config,
        storage=dataclasses.replace(
            engine_config.storage, url=f"sqlite:///{tmp_path / 'other.db'}"
        ),
    )
    _, error = await _second_while_first_runs(_replay(engine_config, panel), _replay(other, panel))
    assert error is not None and "audit folder" in str(error)
    # The refused replay released the store lock it had taken before the audit folder's.
    assert (await _replay(other, panel).run_until_done()).fills > 0


async def test_run_ids_that_share_an_audit_file_share_its_lock(engine_config, tmp_path):
    """ "a/b" and "a_b" write one audit file (its name makes them safe alike)."""
    panel = make_panel(n_bars=200)

    def memory(run_id: str):
        return dataclasses.replace(
            engine_config,
            storage=dataclasses.replace(engine_config.storage, url="sqlite:///:memory:"),
            run=dataclasses.replace(engine_config.run, run_id=run_id),
        )

    first, second = _replay(memory("a+b"), panel), _replay(memory("a_b"), panel)
    _, error = await _second_while_first_runs(first, second)
    assert error is not None and "'a_b'" in str(error)


async def test_the_lock_is_released_after_the_audit_logs_last_lines(engine_config):
    """The next holder may delete the audit log (begin_run): the first run's writes to it
    must be over by then."""
    engine = _replay(engine_config, make_panel(n_bars=200))
    events: list[str] = []
    close, stop = engine.audit.close, engine.lock.stop

    def audit_close():
        events.append("audit closed")
        close()

    async def lock_stop():
        events.append("lock released")
        await stop()

    engine.audit.close, engine.lock.stop = audit_close, lock_stop
    await engine.run_until_done()
    assert events == ["audit closed", "lock released"]


async def test_a_replay_never_deletes_a_live_runs_audit_log(engine_config, tmp_path):
    """Even on another store: a live run marks its audit log, and a replay of its run id
    refuses instead of deleting it (and then writing into it beside the daemon)."""
    from tradingd.audit import AuditLog

    audit_dir = Path(engine_config.log.audit_dir)
    live = AuditLog(audit_dir, "test-run", flush_interval_s=0.0)
    live.session(started_at=datetime.now(UTC))
    live.close()
    before = (audit_dir / "test-run.jsonl").read_text()
    memory = dataclasses.replace(
        engine_config,
        storage=dataclasses.replace(engine_config.storage, url="sqlite:///:memory:"),
    )
    with pytest.raises(ConfigError, match=r"audit log .*test-run\.jsonl is a live run's"):
        await _replay(memory, make_panel(n_bars=200)).run_until_done()
    assert (audit_dir / "test-run.jsonl").read_text() == before


async def test_a_refused_replay_leaves_the_store_as_it_was(engine_config):
    """The live mark is checked before the store deletes the run id's rows."""
    panel = make_panel(n_bars=200)
    done = await _replay(engine_config, panel).run_until_done()
    assert done.fills > 0
    audit_dir = Path(engine_config.log.audit_dir)
    (audit_dir / "test-run.jsonl.live").touch()  # a live run of this id writes this log
    with pytest.raises(ConfigError, match="live run's"):
        await _replay(engine_config, panel).run_until_done()
    assert await _fills(engine_config, "test-run") == done.fills


async def test_a_live_run_holds_its_run_id_against_replays(engine_config):
    """Not only its record once written (begin_run refuses that): from its start, so a
    replay started at the same moment cannot erase the record between its check and its
    delete."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    live = build_engine(config, "live", panel=panel)
    replay_config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, run_id=config.run.run_id)
    )
    result, error = await _second_while_first_runs(live, _replay(replay_config, panel))
    assert error is not None and "in use by another tradingd" in str(error)
    assert f"'{config.run.run_id}'" in str(error)
    assert result.bars == 30  # the live run went on to its end


async def test_a_live_run_refuses_a_backtests_audit_log_on_another_store(engine_config, tmp_path):
    """Given a backtest's run id in another store (the store refuses only its own record),
    `tradingd run` appended its session to the backtest's audit log and marked it live:
    every later `tradingd backtest` of that run id was refused."""
    from tradingd.app import build_engine

    panel = make_panel(n_bars=200)
    done = await _replay(engine_config, panel).run_until_done()
    assert done.fills > 0
    log_path = Path(engine_config.log.audit_dir) / "test-run.jsonl"
    before = log_path.read_text()

    live_panel, config = live_run(engine_config)
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, run_id="test-run"),
        storage=dataclasses.replace(config.storage, url=f"sqlite:///{tmp_path / 'other.db'}"),
    )
    with pytest.raises(ConfigError, match=r"test-run\.jsonl holds a replay's records") as err:
        await build_engine(config, "live", panel=live_panel).run_until_done()
    assert "run.run_id" in str(err.value)
    assert log_path.read_text() == before
    # Refused before the other store recorded the run: nothing of it there (a refused start
    # left an empty run record, which a later start then resumed).
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    assert runs == 0
    # Started again: refused again, the backtest's records not cut as a crashed bar's.
    with pytest.raises(ConfigError, match=r"test-run\.jsonl holds a replay's records"):
        await build_engine(config, "live", panel=live_panel).run_until_done()
    assert log_path.read_text() == before
    assert not log_path.with_name("test-run.jsonl.live").exists()
    # The backtest still reruns.
    assert (await _replay(engine_config, panel).run_until_done()).fills == done.fills


async def test_a_live_run_started_afresh_sets_its_run_ids_earlier_log_aside(engine_config):
    """The demo run to its end, its store deleted (as the README said to watch it trade
    again) and run again: the new run appended to the old one's audit log, every fill id
    of the first run twice in it, without a word."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    first = await build_engine(config, "live", panel=panel).run_until_done()
    assert first.fills > 0
    log_path = Path(config.log.audit_dir) / "test-live.jsonl"
    before = log_path.read_text()
    store = Path(config.storage.url.removeprefix("sqlite:///"))
    for path in store.parent.glob(store.name + "*"):
        if path.is_file():
            path.unlink()

    with capture_logs() as logs:
        second = await build_engine(config, "live", panel=panel).run_until_done()
    assert second.fills == first.fills
    warned = [e for e in logs if e["event"] == "audit.earlier_live_run_set_aside"]
    assert len(warned) == 1
    assert Path(warned[0]["moved_to"]).read_text() == before
    sessions = [
        json.loads(line) for line in log_path.read_text().splitlines() if '"session"' in line
    ]
    assert [s["resumed"] for s in sessions] == [False]
    fill_ids = [
        json.loads(line)["fill_id"]
        for line in log_path.read_text().splitlines()
        if line.startswith('{"event": "fill"')
    ]
    assert len(fill_ids) == len(set(fill_ids)) == second.fills


async def test_the_audit_folders_lock_is_logged_as_that_folder_not_as_a_memory_store(
    engine_config, tmp_path
):
    """The audit folder's lock is a file lock under the memory URL, and its log lines (and
    the holder a refused process reads) said `"store": ":memory:"` beside the folder's lock
    file."""
    from structlog.testing import capture_logs

    audit_dir = tmp_path / "audit-here"
    config = dataclasses.replace(
        engine_config,
        storage=dataclasses.replace(engine_config.storage, url="sqlite:///:memory:"),
        log=dataclasses.replace(engine_config.log, audit_dir=str(audit_dir)),
    )
    with capture_logs() as logs:
        await _replay(config, make_panel(n_bars=200)).run_until_done()
    taken = [e for e in logs if e["event"] == "instance_lock.acquired"]
    assert taken and all(str(audit_dir) in e["lock"] for e in taken)
    assert [e["store"] for e in taken] == [str(audit_dir)]
