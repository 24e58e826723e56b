"""A backtest's stored tables give back the book and the decisions of every bar, although
rows are written only when something changed (README, "Reading a run back")."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import numpy as np
from conftest import make_panel, run_engine


def in_force(rows: list[tuple[str, str, float]], symbols: tuple[str, ...], t: str) -> np.ndarray:
    """Per symbol, the value of its last row at or before `t` (rows in time order), else 0."""
    out = dict.fromkeys(symbols, 0.0)
    for when, sym, v in rows:
        if when <= t:
            out[sym] = v
    return np.array([out[s] for s in symbols])


async def test_holdings_and_decisions_of_every_bar_read_back_from_change_rows(
    engine_config, tmp_path
):
    panel = make_panel(n_symbols=6, n_bars=220)
    # Bars missing in the middle of holdings: the sizing holds those symbols at their
    # current weight (a hold, no decision) until they trade again.
    for arr in (panel.open, panel.high, panel.low, panel.close, panel.volume):
        arr[30::7, :4] = np.nan
    row_of = {t: k for k, t in enumerate(panel.datetimes())}
    seen: list[tuple[datetime, np.ndarray, np.ndarray | None, np.ndarray]] = []

    def check(engine, i, t):
        targets = engine._last_targets  # after risk, of the bar just completed
        seen.append(
            (
                t,
                engine.portfolio.quantity.copy(),
                None if targets is None else np.array(targets, dtype=float),
                ~np.isnan(panel.close[row_of[t]]),
            )
        )

    engine, result, _ = await run_engine(engine_config, "backtest", panel, check=check)
    assert result.fills > 0
    symbols = engine.symbols
    enc = engine.store._encode_time
    with sqlite3.connect(tmp_path / "store.db") as db:
        run = engine.run.run_id
        positions = db.execute(
            "SELECT time, symbol, quantity FROM positions WHERE run_id = ? ORDER BY time, rowid",
            (run,),
        ).fetchall()
        signals = db.execute(
            "SELECT time, symbol, target_weight FROM signals WHERE run_id = ? ORDER BY time",
            (run,),
        ).fetchall()
        equity_rows = db.execute("SELECT count(*) FROM equity WHERE run_id = ?", (run,)).fetchone()

    assert equity_rows[0] == result.bars  # equity: one row per bar
    held_bars_without_row = 0
    decided = 0
    for t, quantity, targets, tradable in seen:
        ts = enc(t)
        np.testing.assert_array_equal(in_force(positions, symbols, ts), quantity, err_msg=ts)
        if targets is None:
            continue  # warm-up: nothing decided
        fresh = tradable & np.isfinite(targets)  # held symbols without a bar are holds
        got = in_force(signals, symbols, ts)
        np.testing.assert_array_equal(got[fresh], targets[fresh], err_msg=ts)
        decided += int(np.count_nonzero(targets[fresh]))
        rows_now = {s for when, s, _ in signals if when == ts}
        held_bars_without_row += sum(
            1
            for i, s in enumerate(symbols)
            if quantity[i] != 0 and not tradable[i] and s not in rows_now
        )
    assert held_bars_without_row > 0  # the holds really happened, and wrote nothing
    assert len(signals) < decided  # far fewer rows than bars x positions
