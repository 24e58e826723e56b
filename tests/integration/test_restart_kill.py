"""Restart safety of a real daemon process: SIGKILL at random moments and at each named
point of a bar, restart, and the stored run equals an uninterrupted one (no order lost, none
doubled; the same fills, positions, cash and equity). A reduced number of cycles here; the
full count runs as `python benchmarks/kill_restart.py` (its numbers in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_harness import (
    audit_records,
    checkpointed_rows,
    differences,
    kill_cycles,
    rows_kept,
    run_to_completion,
    stored,
    write_config,
)

CYCLES = int(os.environ.get("TRADINGD_KILL_CYCLES", "6"))


def test_killed_and_restarted_daemon_stores_what_an_uninterrupted_one_does(tmp_path: Path):
    window = {"start": "2016-06-01", "end": "2017-06-30", "rate": 100.0}
    ref_cfg = write_config(tmp_path, "reference", **window)
    run_to_completion(ref_cfg)
    reference = stored(tmp_path / "reference.db")
    assert len(reference["fills"]) >= 10, "the window must trade, or the test proves nothing"
    assert reference["runs"] == [("killtest", 1)]

    cfg = write_config(tmp_path, "killed", **window)
    report = kill_cycles(cfg, CYCLES, seed=20261201, max_delay_s=4.0)
    assert sum(report.kills.values()) >= CYCLES // 2, report  # most cycles really were kills
    got = stored(tmp_path / "killed.db")
    assert differences(reference, got) == []
    # Each restart continued the run: rows stored up to a killed process's checkpoint are
    # the same rows (same row ids) at the end, not deleted and written again.
    assert report.kept, "no kill happened after a checkpoint: the test proves nothing"
    assert rows_kept(tmp_path / "killed.db", report.kept) == []
    # The audit trail agrees: the same order and fill records in the same order, none twice,
    # and a session marker per process that got as far as opening the run.
    ref_audit, ref_sessions = audit_records(tmp_path / "reference-audit")
    got_audit, sessions = audit_records(tmp_path / "killed-audit")
    assert got_audit == ref_audit
    assert ref_sessions == 1 and 1 < sessions <= report.cycles + 1
    # No client order id was ever used for two orders (the broker's duplicate check held).
    con = sqlite3.connect(tmp_path / "killed.db")
    dup = con.execute(
        "SELECT client_order_id, count(*) FROM orders GROUP BY run_id, client_order_id"
        " HAVING count(*) > 1"
    ).fetchall()
    con.close()
    assert dup == []


def test_a_finished_live_run_restarted_continues_instead_of_starting_over(tmp_path: Path):
    """Today's bug: a restart deleted the stored run and began again from the initial capital.
    Now a restart of a finished run keeps every row and trades nothing twice."""
    window = {"start": "2017-01-01", "end": "2017-03-31", "rate": 200.0}
    cfg = write_config(tmp_path, "again", **window)
    run_to_completion(cfg)
    first = stored(tmp_path / "again.db")
    assert first["fills"], "the window must trade"
    rows = checkpointed_rows(tmp_path / "again.db")
    run_to_completion(cfg)
    assert differences(first, stored(tmp_path / "again.db")) == []
    assert rows and rows_kept(tmp_path / "again.db", rows) == []


def test_a_second_daemon_on_the_same_store_and_account_refuses_to_start(tmp_path: Path):
    """Two daemons on one store would double every append-only row: the second one stops at
    start-up, naming the holder; once the first is gone (even killed) a new one starts."""
    import signal

    from restart_harness import start_daemon

    cfg = write_config(tmp_path, "twice", start="2016-01-01", end="2017-12-31", rate=20.0)
    first = start_daemon(cfg)
    try:
        assert first.stderr is not None
        for line in first.stderr:  # wait until it holds the lock (bounded by the run itself)
            if b"instance_lock.acquired" in line:
                break
        second = start_daemon(cfg)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        text = err.decode()
        assert "another tradingd" in text and f"pid {first.pid}" in text
        assert "Traceback" not in text
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    third = start_daemon(cfg)
    try:
        assert third.stderr is not None
        for line in third.stderr:
            if b"instance_lock.acquired" in line:
                break
        assert third.poll() is None, "the lock of a killed daemon must not stay stuck"
    finally:
        third.send_signal(signal.SIGKILL)
        third.wait(timeout=30)


async def test_a_halted_kill_switch_survives_a_restart_until_a_deliberate_reset(tmp_path: Path):
    """The drawdown guard's halt is in the checkpoint: a restarted daemon is still halted (it
    does not trade again by itself), and POST /reset-halt (EngineControls) lifts it once it
    runs its bars (while it starts the resumed checkpoint would overwrite it: refused)."""
    from restart_harness import ROOT

    from tradingd.app import EngineControls, build_engine
    from tradingd.config import load_config
    from tradingd.core.errors import ControlRefusedError

    cfg = write_config(tmp_path, "halt", start="2017-01-01", end="2017-02-28", rate=500.0)
    extra = tmp_path / "halt-guard.toml"
    extra.write_text("""
[[risk]]
name = "drawdown_guard"
params = { max_drawdown_pct = 0.2, recovery = "halt" }
""")
    config = load_config([ROOT / "config/default.toml", cfg, extra], env={})

    def guard_of(engine):
        (guard,) = [r for r in engine.pipeline.risks if r.name == "drawdown_guard"]
        return guard

    first = build_engine(config, "live")
    guard_of(first)._halted_bars = 0  # as if the drawdown limit had been breached
    await first.run_until_done()
    assert guard_of(first).halted

    second = build_engine(config, "live")
    # While it starts, a reset would be overwritten by the resumed checkpoint: refused.
    with pytest.raises(ControlRefusedError, match="is starting"):
        await EngineControls(second).reset_halt()
    lifted: list[bool] = []
    real_step = second.step
    resets: list[asyncio.Task[None]] = []

    async def reset() -> None:
        answer = await EngineControls(second).reset_halt()
        lifted.append(answer["reset"] == ["drawdown_guard"] and not guard_of(second).halted)

    async def step(bar, trade=None):  # type: ignore[no-untyped-def]
        if not second.trading_started:  # a warm-up bar
            return await real_step(bar, trade)
        assert guard_of(second).halted, "a restart must not lift the kill switch"
        # As the health server sends it: between bars (the control waits for this one).
        resets.append(asyncio.get_running_loop().create_task(reset()))
        second.step = real_step  # type: ignore[method-assign]
        await real_step(bar, trade)

    second.step = step  # type: ignore[method-assign]
    await second.run_until_done()
    await asyncio.gather(*resets)
    assert second.resumed_from is not None
    assert lifted == [True]
