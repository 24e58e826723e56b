"""An operator's control answered before a new live run's first bar: nothing held it but
memory. The answer said "paused" (the control's answer comes once the state is stored), yet
a restart came back "active" and traded."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import live_run
from pg_schemas import schema_url
from structlog.testing import capture_logs


async def _stored_checkpoint(config) -> list[dict]:  # type: ignore[no-untyped-def]
    """The run's checkpoint rows, read by a store of its own."""
    from tradingd.storage.factory import open_store

    store = open_store(config.storage.url, spool=False)
    await store.start()
    try:
        return await store.fetch("checkpoints", config.run.run_id)
    finally:
        await store.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_config(request, engine_config):  # type: ignore[no-untyped-def]
    """The live test run on SQLite, or on PostgreSQL in a throwaway schema."""
    panel, config = live_run(engine_config)
    if request.param == "sqlite":
        yield panel, config
        return
    async with schema_url(request.getfixturevalue("pg_url")) as url:
        storage = dataclasses.replace(config.storage, url=url)
        yield panel, dataclasses.replace(config, storage=storage)


def _during(engine, when: str, control: Callable[[], Awaitable[None]]) -> None:  # type: ignore[no-untyped-def]
    """Run `control` while the broker's start is retried (down; the daemon is then stopped
    before the run's record is read), while the warm-up waits for its source (down: no bar
    yet), or once a warm-up that brought no bar is done, before the first live bar."""
    from tradingd.core.errors import RetryableError

    async def control_while_retrying(seconds: float) -> bool:
        await control()
        return engine._stop_requested

    if when == "broker start":

        async def broker_down() -> None:
            raise RetryableError("Alpaca trading API unreachable")

        engine.broker.start = broker_down
        engine._sleep_unless_stopped = control_while_retrying
    elif when == "warm-up":

        async def down(resumed_from=None) -> AsyncIterator:  # type: ignore[no-untyped-def]
            raise RetryableError("Yahoo Finance unreachable")
            yield  # an async generator, as the feed's warm-up is

        engine._warmup = down
        engine._sleep_unless_stopped = control_while_retrying
    else:

        async def no_history(resumed_from=None) -> AsyncIterator:  # type: ignore[no-untyped-def]
            return
            yield

        start = engine.clock.start

        async def clock_start() -> None:
            assert engine.trading_started  # the bar lock's path, not the start-up's
            await control()
            await start()

        engine._warmup = no_history
        engine.clock.start = clock_start


@pytest.mark.parametrize("action", ["pause", "flatten"])
@pytest.mark.parametrize("when", ["broker start", "warm-up", "before the first bar"])
async def test_a_control_before_a_new_runs_first_bar_holds_after_a_restart(
    store_config, when, action
):
    from tradingd.app import EngineControls, build_engine

    panel, config = store_config
    # What the run trades unpaused: orders (so "none" below is the pause, not the data).
    other = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id="other"))
    assert (await build_engine(other, "live", panel=panel).run_until_done()).orders > 0

    first = build_engine(config, "live", panel=panel)
    answers: list[dict] = []

    async def control_then_stop() -> None:
        answers.append(await getattr(EngineControls(first), action)())
        first.request_stop()

    _during(first, when, control_then_stop)
    assert (await first.run_until_done()).bars == 0
    assert answers and answers[0]["state"] in ("paused", "flattening")
    [row] = await _stored_checkpoint(config)  # stored when it answered
    assert row["state"]["trading_state"] == answers[0]["state"]

    restarted = build_engine(config, "live", panel=panel)
    states: list[str] = []
    restarted.after_bar.append(lambda t, v: states.append(restarted.trading_state))
    with capture_logs() as logs:
        result = await restarted.run_until_done()
    assert states and set(states) == {"paused"}  # a flatten of nothing held pauses
    assert result.orders == 0 and not restarted.broker.open_orders()
    # Not a bar: the run still begins at its start, as a new run.
    assert not [e for e in logs if e["event"] == "run.resumed"]
    [row] = await _stored_checkpoint(config)
    assert row["bar_time"] == restarted.last_bar_time and row["state"]["trading_state"] == "paused"


async def _paused_before_its_first_bar(config, panel, when: str) -> None:  # type: ignore[no-untyped-def]
    """A start of the run that is paused at `when` (see `_during`), then stopped: the run's
    only checkpoint row is the control's."""
    from tradingd.app import EngineControls, build_engine

    first = build_engine(config, "live", panel=panel)

    async def pause_then_stop() -> None:
        await EngineControls(first).pause()
        first.request_stop()

    _during(first, when, pause_then_stop)
    assert (await first.run_until_done()).bars == 0
    [row] = await _stored_checkpoint(config)
    assert row["state"]["trading_state"] == "paused"


def _sqlite_rows(config, sql: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Rows of `sql` in the run's SQLite store, read by another connection."""
    import sqlite3

    path = config.storage.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        return con.execute(sql, (config.run.run_id,)).fetchall()


async def test_a_stop_during_the_broker_start_retry_leaves_the_controls_run_ended(engine_config):
    """The control's row needs the run's record, which the stop made (reopened) and left
    running: nothing else ends a run stopped before its start."""
    panel, config = live_run(engine_config)
    await _paused_before_its_first_bar(config, panel, "broker start")
    [(ended_at,)] = _sqlite_rows(config, "select ended_at from runs where run_id = ?")
    assert ended_at is not None


@pytest.mark.parametrize("when", ["broker start", "warm-up", "before the first bar"])
async def test_a_restart_after_a_control_before_the_first_bar_starts_as_a_new_run(
    engine_config, when
):
    """Read as a checkpoint, the control's 1970 row made the restart a resumed run: the run's
    build recorded as resumed after 1970, the new run's checks skipped."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    await _paused_before_its_first_bar(config, panel, when)

    restarted = build_engine(config, "live", panel=panel)
    with capture_logs() as logs:
        result = await restarted.run_until_done()
    assert result.orders == 0 and restarted.trading_state == "paused"
    assert not [e for e in logs if e["event"] == "run.resumed"]
    builds = _sqlite_rows(config, "select resumed_after from run_builds where run_id = ?")
    assert builds and builds[-1] == (None,)  # this process decides from the run's first bar


async def test_a_restart_after_a_control_before_the_first_bar_checks_the_accounts_cash(
    engine_config, monkeypatch
):
    """A run sized for more money than the Alpaca account holds is refused at a new run's
    start; paused before its first bar, the restart skipped the check and traded."""
    from fakes.alpaca_trading_server import running_fake
    from live_on_fake import live_on_fake

    from tradingd.app import build_engine
    from tradingd.core.errors import ConfigError

    with running_fake(monkeypatch, cash=30_000.0) as fake:
        panel, config = live_on_fake(engine_config, fake, "cash-after-control")
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, initial_capital=100_000.0)
        )
        await _paused_before_its_first_bar(config, panel, "broker start")
        restarted = build_engine(config, "live", panel=panel)
        with pytest.raises(ConfigError, match=r"30,000\.00 USD in cash"):
            await restarted.run_until_done()
        assert fake.orders == {}


async def test_reset_halt_of_a_run_with_only_a_controls_row_says_it_completed_no_bar(
    engine_config,
):
    """`tradingd reset-halt` answered with checkpoint 1970-01-01 and nothing reset, as if the
    run had bars and no halt."""
    from tradingd.core.errors import ConfigError
    from tradingd.stored_run import reset_halt

    panel, config = live_run(engine_config)
    await _paused_before_its_first_bar(config, panel, "before the first bar")
    with pytest.raises(ConfigError, match="no live run of that id completed a bar"):
        await reset_halt(config, config.run.run_id)
    [row] = await _stored_checkpoint(config)  # left as it was
    assert row["state"]["trading_state"] == "paused"


def _session_lines(config) -> list[dict]:  # type: ignore[no-untyped-def]
    """The session lines of the run's audit log, in order."""
    import json

    from tradingd.audit import audit_path

    path = audit_path(config.log.audit_dir, config.run.run_id)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "session"]


async def test_the_audit_says_a_restart_after_a_control_before_the_first_bar_is_a_new_run(
    engine_config,
):
    """The engine starts such a run as a new one (`_without_control_row`), yet its audit
    log's session line said `resumed: true`. The earlier process's lines stay: the store
    holds the run's record (the control), so they are this run's."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    await _paused_before_its_first_bar(config, panel, "before the first bar")
    assert [s["resumed"] for s in _session_lines(config)] == [False]

    restarted = build_engine(config, "live", panel=panel)
    await restarted.run_until_done()
    assert restarted.resumed_from is None  # what the engine decided: a new run
    sessions = _session_lines(config)
    assert [s["resumed"] for s in sessions] == [False, False]
    assert [s["resumed_from"] for s in sessions] == [None, None]
