"""POST /reset-halt (EngineControls.reset_halt) is in the run's stored checkpoint when it
answers, as pause, resume and flatten are. It answered 200 with the reset in memory only: a
stop before the next bar (hours, with daily bars) left the stored checkpoint halted with the
old peak, and the restarted daemon came back halted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import live_run

from tradingd.app import EngineControls, build_engine
from tradingd.config import PluginSpec
from tradingd.core.errors import ControlNotStoredError, StorageError


def _halting(engine_config):  # type: ignore[no-untyped-def]
    panel, config = live_run(engine_config)
    guard = PluginSpec("drawdown_guard", params={"max_drawdown_pct": 0.5, "recovery": "halt"})
    return panel, dataclasses.replace(config, risk=(guard,))


def _guard(engine) -> Any:  # type: ignore[no-untyped-def]
    (guard,) = [r for r in engine.pipeline.risks if r.name == "drawdown_guard"]
    return guard


def _stored_guard(db: Path) -> dict[str, Any]:
    """The guard's state in the run's stored checkpoint, read by another connection."""
    with sqlite3.connect(db) as con:
        (state,) = con.execute(
            "select state from checkpoints where run_id = 'test-live'"
        ).fetchone()
    return json.loads(state)["plugins"]["drawdown_guard"]


def _halt_at(engine, bar: int, then) -> None:  # type: ignore[no-untyped-def]
    """The guard halted after `bar` (as if its limit had been breached), stored by the next
    bar's checkpoint; `then` runs as a task once that bar is done."""

    def after(t, verdicts):  # type: ignore[no-untyped-def]
        if engine._bars == bar:
            _guard(engine)._halted_bars = 0
        elif engine._bars == bar + 2:
            assert _guard(engine).halted
            asyncio.get_running_loop().create_task(then())

    engine.after_bar.append(after)


async def test_a_reset_halt_is_stored_when_it_answers_and_survives_a_restart(
    engine_config, tmp_path
):
    panel, config = _halting(engine_config)
    engine = build_engine(config, "live", panel=panel)
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def reset_then_stop() -> None:
        answer = await EngineControls(engine).reset_halt()
        # Read before anything else runs: no bar's checkpoint can have stored it meanwhile.
        seen.append((answer, _stored_guard(tmp_path / "store.db")))
        engine.request_stop()

    _halt_at(engine, 3, reset_then_stop)
    await engine.run_until_done()
    [(answer, stored)] = seen
    assert answer == {"action": "reset-halt", "reset": ["drawdown_guard"]}
    assert stored["halted"] is None and stored["peak"] is None and stored["rebase_next"]

    # A restart continues unhalted (it came back halted, with the old peak).
    second = build_engine(config, "live", panel=panel)
    traded: list[bool] = []

    def first_bar(t, verdicts):  # type: ignore[no-untyped-def]
        traded.append(_guard(second).halted)
        second.request_stop()

    second.after_bar.append(first_bar)
    await second.run_until_done()
    assert second.resumed_from is not None
    assert traded[:1] == [False]


async def test_a_reset_halt_the_store_fails_to_keep_says_so_and_is_stored_when_sent_again(
    engine_config, tmp_path
):
    """The 503 path of pause: the reset is in effect in this process, the answer says it was
    not stored and what to do; sent again (nothing is halted then), it is stored."""
    panel, config = _halting(engine_config)
    engine = build_engine(config, "live", panel=panel)
    raised: list[ControlNotStoredError] = []
    stored_after_resend: list[dict[str, Any]] = []

    async def reset_with_a_failing_flush() -> None:
        flush = engine.store.flush

        async def failing() -> None:
            raise StorageError("disk full")

        engine.store.flush = failing
        try:
            await EngineControls(engine).reset_halt()
        except ControlNotStoredError as exc:
            raised.append(exc)
        finally:
            engine.store.flush = flush
        assert not _guard(engine).halted  # in effect here
        answer = await EngineControls(engine).reset_halt()  # sent again
        assert answer["reset"] == []
        stored_after_resend.append(_stored_guard(tmp_path / "store.db"))
        engine.request_stop()

    _halt_at(engine, 3, reset_with_a_failing_flush)
    await engine.run_until_done()
    [exc] = raised
    text = str(exc)
    assert "drawdown_guard" in text and "disk full" in text
    assert "send POST /reset-halt again once the store works" in text
    assert exc.state == "active"  # the 503 body's state: trading state unchanged
    [stored] = stored_after_resend
    assert stored["halted"] is None


async def test_a_reset_halt_after_the_engine_stopped_changes_nothing(engine_config):
    """Refused with nothing changed: the guard stays halted (and in the checkpoint)."""
    from tradingd.core.errors import EngineStoppedError

    panel, config = _halting(engine_config)
    engine = build_engine(config, "live", panel=panel)
    _halt_at(engine, 3, lambda: _stop(engine))
    await engine.run_until_done()
    with pytest.raises(EngineStoppedError, match="no kill switch was reset"):
        await EngineControls(engine).reset_halt()
    assert _guard(engine).halted


async def _stop(engine) -> None:  # type: ignore[no-untyped-def]
    engine.request_stop()
