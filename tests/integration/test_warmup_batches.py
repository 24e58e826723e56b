"""A live start's warm-up stores its bars, and checkpoints, in batches: one transaction a bar
made a start on PostgreSQL spend 45% of its warm-up waiting on the database (the demo's 4,300
bars: about 40 s of a 45 s start). A checkpoint still never names a bar the store lacks: a
warm-up that fails leaves the last batch's checkpoint, and the restart steps and stores the
rest, as an uninterrupted start does."""

from __future__ import annotations

import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_harness import ROOT, write_config

from tradingd.engine.engine import WARMUP_BATCH_BARS


def _engine(tmp_path: Path, name: str):  # type: ignore[no-untyped-def]
    from tradingd.app import build_engine
    from tradingd.config import load_config

    cfg = write_config(tmp_path, name, start="2017-01-01", end="2017-01-31", rate=1000.0)
    return build_engine(load_config([ROOT / "config/default.toml", cfg], env={}), "live")


def _stored_bars(tmp_path: Path, name: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(tmp_path / f"{name}.db")
    try:
        return con.execute(
            "SELECT symbol, time, open, high, low, close, volume FROM bars ORDER BY time, symbol"
        ).fetchall()
    finally:
        con.close()


def _watch(engine) -> tuple[list[int], list[tuple[datetime, datetime | None]]]:  # type: ignore[no-untyped-def]
    """The bars of each store write, and each checkpoint's bar with the newest bar stored
    before it."""
    writes: list[int] = []
    checkpoints: list[tuple[datetime, datetime | None]] = []
    newest: list[datetime] = []
    store = engine.store
    write_bars, record_checkpoint = store.write_bars, store.record_checkpoint

    async def counted(symbols, bars):  # type: ignore[no-untyped-def]
        writes.append(len(bars))
        await write_bars(symbols, bars)
        newest.extend(b.time for b in bars)

    def checkpoint(run_id, t, state):  # type: ignore[no-untyped-def]
        checkpoints.append((t, max(newest, default=None)))
        record_checkpoint(run_id, t, state)

    store.write_bars = counted
    store.record_checkpoint = checkpoint
    return writes, checkpoints


async def test_a_warm_up_stores_in_batches_and_one_failing_mid_batch_is_finished_by_the_restart(
    tmp_path: Path,
):
    # Uninterrupted: the bars in batches, each stored before its checkpoint.
    whole = _engine(tmp_path, "whole")
    writes, checkpoints = _watch(whole)
    await whole.run_until_done()
    warmup = whole._warmup_bars
    assert warmup > 10 * WARMUP_BATCH_BARS, "the demo's warm-up is years of bars"
    traded = whole._seen - warmup
    assert traded > 5
    # The warm-up's bars in ceil(n / batch) writes (it was one a bar), then one a live bar.
    assert len(writes) == -(-warmup // WARMUP_BATCH_BARS) + traded
    assert sum(writes) == whole._seen
    # No checkpoint names a bar not stored before it.
    assert checkpoints
    for t, newest in checkpoints:
        assert newest is not None and newest >= t
    # Every bar stepped is stored, once.
    assert len({row[1] for row in _stored_bars(tmp_path, "whole")}) == whole._seen

    # A warm-up failing inside its fourth batch.

    first = _engine(tmp_path, "broken")
    fail_at = 3 * WARMUP_BATCH_BARS + WARMUP_BATCH_BARS // 2  # inside the fourth batch
    observe = first._observe
    seen = [0]

    def failing(ctx):  # type: ignore[no-untyped-def]
        seen[0] += 1
        if seen[0] == fail_at:
            raise RuntimeError("the process dies here")
        return observe(ctx)

    first._observe = failing
    with pytest.raises(RuntimeError, match="dies here"):
        await first.run_until_done()
    assert first.store is not None
    await first.store.stop()
    # What it left: three whole batches of bars, and their last bar's checkpoint.
    con = sqlite3.connect(tmp_path / "broken.db")
    try:
        [(n_times,)] = con.execute("SELECT COUNT(DISTINCT time) FROM bars").fetchall()
        [(checkpoint,)] = con.execute("SELECT MAX(bar_time) FROM checkpoints").fetchall()
        [(newest,)] = con.execute("SELECT MAX(time) FROM bars").fetchall()
    finally:
        con.close()
    assert n_times == 3 * WARMUP_BATCH_BARS
    assert checkpoint == newest

    second = _engine(tmp_path, "broken")
    await second.run_until_done()
    assert second.resumed_from is not None
    assert _stored_bars(tmp_path, "broken") == _stored_bars(tmp_path, "whole")
