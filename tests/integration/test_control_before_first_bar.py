"""An operator's control answered before a new live run's first bar: nothing held it but
memory. The answer said "paused" (the control's answer comes once the state is stored), yet
a restart came back "active" and traded."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import live_run
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
    import asyncpg

    pg_url = request.getfixturevalue("pg_url")
    schema = f"tradingd_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in pg_url else "?"
        storage = dataclasses.replace(config.storage, url=f"{pg_url}{sep}search_path={schema}")
        yield panel, dataclasses.replace(config, storage=storage)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


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
    [resumed] = [e for e in logs if e["event"] == "run.resumed"]
    assert resumed["after"] is None  # not a bar: the run still begins at its start
    [row] = await _stored_checkpoint(config)
    assert row["bar_time"] == restarted.last_bar_time and row["state"]["trading_state"] == "paused"
