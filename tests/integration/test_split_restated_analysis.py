"""The analysis of a run (`tradingd report`, the analyzer, the Monte Carlo's trade order)
scores round trips in end-of-run shares, as the run's summary does: a position held across
a split is not a crash at the split. The fills are written in the shares of their day; the
record folder keeps the run's split events (splits.csv) to restate them with."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from conftest import make_panel

from tradingd.analysis.performance import PerformanceAnalyzer
from tradingd.analysis.run_records import run_record
from tradingd.backtest import run_backtest


def test_the_analysis_scores_round_trips_across_a_split_as_the_summary_does(engine_config):
    panel = make_panel()  # one 4-for-1 split at bar 150
    outcome = asyncio.run(run_backtest(engine_config, panel=panel))
    (j,) = {int(c) for c in (panel.split != 1.0).nonzero()[1]}
    symbol = panel.symbols[j]
    # The position is held across the split: its fills on both sides are in different shares.
    fills = [f for f in outcome.fills if f["symbol"] == symbol]
    split_time = panel.datetimes()[150]
    assert any(f["time"] < split_time for f in fills) and any(f["time"] > split_time for f in fills)

    with (outcome.output_dir / "splits.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["symbol"], float(r["split"])) for r in rows] == [(symbol, 4.0)]

    # The analyzer's trade statistics are its own (per round trip; the summary's win rate is
    # per closing trade), but the round trips are the summary's, split or not.
    analyzer = PerformanceAnalyzer(benchmark=pd.Series(dtype=float))
    for source in (outcome, outcome.output_dir):
        perf = analyzer.calculate_performance_metrics(source)
        assert perf["round_trips"] == outcome.summary["round_trips"], source
    # Restated: the split symbol's quantities are in end-of-run shares (4x before the split).
    rec = run_record(outcome.output_dir)
    before = [f for f in rec.fills if f.symbol == symbol and f.time < split_time]
    raw = [f for f in fills if f["time"] < split_time]
    assert [f.quantity for f in before] == [4.0 * r["quantity"] for r in raw]


def test_a_round_trip_across_a_split_is_one_trade_at_its_real_profit(tmp_path):
    """Bought 100 at 100, a 2-for-1, sold 200 at 55: a 1,000 gain in one round trip.
    Unrestated, the analysis scored the sale of 100 of the 200 against a price of 100 (a
    loss) and the rest as a new short: the report's trade statistics and the trade-order
    Monte Carlo's P&L were wrong."""
    from datetime import UTC, datetime

    times = pd.DatetimeIndex(
        [datetime(2020, 1, d, 21, tzinfo=UTC) for d in (2, 3, 6, 7)], name="time"
    )
    equity = pd.Series([100_000.0, 100_000.0, 100_500.0, 101_000.0], index=times)

    def fill(i: int, side: str, qty: float, price: float) -> dict:
        return {
            "fill_id": f"f{i}",
            "client_order_id": f"o{i}",
            "symbol": "AAA",
            "side": side,
            "quantity": qty,
            "price": price,
            "commission": 0.0,
            "slippage": 0.0,
            "time": times[i],
            "reference_price": price,
        }

    fills = [fill(1, "buy", 100.0, 100.0), fill(3, "sell", 200.0, 55.0)]
    run = {"equity_curve": equity, "initial_capital": 100_000.0, "fills": fills}
    analyzer = PerformanceAnalyzer(benchmark=pd.Series(dtype=float))
    unrestated = analyzer.calculate_performance_metrics(dict(run))
    assert unrestated["avg_win"] != 1_000.0  # scored in the shares of the day: a loss
    run["splits"] = {"AAA": [(times[2], 2.0)]}
    perf = analyzer.calculate_performance_metrics(run)
    assert perf["round_trips"] == 1 and perf["avg_win"] == 1_000.0
    rec = run_record(run)
    assert [(f.quantity, f.price) for f in rec.fills] == [(200.0, 50.0), (200.0, 55.0)]


def test_a_run_read_back_from_a_store_with_its_bars_is_restated_and_one_without_is_warned(
    engine_config,
):
    """`stored_run_results` (a run read back from the store, as a live run's analysis is)
    kept no split events: a round trip across a split was scored in the shares of its day
    with no word of it. A live run writes the bars it trades on; the split events come from
    them. A replay stored before its split events were, with none of the traded symbols'
    bars in the store, says plainly that its round-trip statistics are wrong."""
    from structlog.testing import capture_logs

    from tradingd.analysis.run_records import stored_run_results
    from tradingd.app import REPLAY_SPLITS_KEY
    from tradingd.storage.factory import open_store

    panel = make_panel()  # one 4-for-1 split at bar 150, held across by the run
    outcome = asyncio.run(run_backtest(engine_config, panel=panel))
    (j,) = {int(c) for c in (panel.split != 1.0).nonzero()[1]}
    symbol, split_time = panel.symbols[j], panel.datetimes()[150]
    url = engine_config.storage.url

    async def read_back(with_bars: bool) -> dict:
        store = open_store(url, spool=False)
        await store.start()
        try:
            if with_bars:
                times = panel.datetimes()
                await store.write_bars(
                    panel.symbols, [panel.row(i, times[i]) for i in range(len(times))]
                )
            # A replay stored before its configuration held its split events.
            older = _StoredConfigEdited(store, lambda c: c.pop(REPLAY_SPLITS_KEY))
            return await stored_run_results(older, outcome.run_id)
        finally:
            await store.stop()

    analyzer = PerformanceAnalyzer(benchmark=pd.Series(dtype=float))
    with capture_logs() as logs:
        bare = asyncio.run(read_back(with_bars=False))
    warned = [e for e in logs if e["event"] == "analysis.fills_not_restated"]
    assert len(warned) == 1 and symbol in warned[0]["symbols"]
    assert "round-trip statistics" in warned[0]["detail"] and "wrong" in warned[0]["detail"]
    assert bare["splits"] == {}

    with capture_logs() as logs:
        stored = asyncio.run(read_back(with_bars=True))
    assert not [e for e in logs if e["event"] == "analysis.fills_not_restated"]
    assert [(t, c) for t, c in stored["splits"][symbol]] == [(split_time, 4.0)]
    assert set(stored["splits"]) == {symbol}
    perf = analyzer.calculate_performance_metrics(stored)
    assert perf["round_trips"] == outcome.summary["round_trips"]
    # The same fills as the record folder's restatement, read from the store.
    folder = [(f.symbol, f.time, f.quantity, f.price) for f in run_record(outcome.output_dir).fills]
    read = [(f.symbol, f.time, f.quantity, f.price) for f in run_record(stored).fills]
    assert sorted(read) == sorted(folder)


class _StoredConfigEdited:
    """A store whose runs rows' stored configuration `edit` has changed (an older build's
    record, or a damaged one)."""

    def __init__(self, store: Any, edit: Callable[[dict], object]) -> None:
        self._store, self._edit = store, edit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def fetch(self, table: str, run_id: str) -> list[dict]:
        rows = await self._store.fetch(table, run_id)
        if table != "runs":
            return rows
        edited = []
        for row in rows:
            stored = json.loads(row["config_json"])
            self._edit(stored)
            edited.append({**row, "config_json": json.dumps(stored)})
        return edited


_TRADE_STATS = ("round_trips", "win_rate", "profit_factor", "avg_win", "avg_loss")


def test_a_backtest_read_back_from_the_store_has_its_record_folders_trade_statistics(
    engine_config,
):
    """A backtest writes no bars to the store, so `stored_run_results` had no split events
    for it: a sale of the shares a split added read as a flip to short (the trial's S&P 500
    run: 4,724 round trips from the store against 4,677 from its record folder, profit
    factor 0.754 against 0.845). A replay's split events are stored with its configuration,
    and the store and the folder give the same trade statistics."""
    from structlog.testing import capture_logs

    from tradingd.analysis.run_records import stored_run_results
    from tradingd.storage.factory import open_store

    panel = make_panel(split_at=130)  # one 4-for-1 split, in a position the run holds
    outcome = asyncio.run(run_backtest(engine_config, panel=panel))
    (j,) = {int(c) for c in (panel.split != 1.0).nonzero()[1]}
    symbol, split_time = panel.symbols[j], panel.datetimes()[130]
    held = sum(
        f["quantity"] * (1 if f["side"] == "buy" else -1)
        for f in outcome.fills
        if f["symbol"] == symbol and f["time"] < split_time
    )
    assert held > 0  # bought before the split, sold after it in 4x the shares

    async def read_back() -> dict:
        store = open_store(engine_config.storage.url, spool=False)
        await store.start()
        try:
            return await stored_run_results(store, outcome.run_id)
        finally:
            await store.stop()

    with capture_logs() as logs:
        stored = asyncio.run(read_back())
    assert not [e for e in logs if e["event"] == "analysis.fills_not_restated"]
    assert stored["splits"] == {symbol: [(split_time, 4.0)]}
    analyzer = PerformanceAnalyzer(benchmark=pd.Series(dtype=float))
    from_store = analyzer.calculate_performance_metrics(stored)
    from_folder = analyzer.calculate_performance_metrics(outcome.output_dir)
    assert {k: from_store[k] for k in _TRADE_STATS} == {k: from_folder[k] for k in _TRADE_STATS}
    assert from_store["round_trips"] == outcome.summary["round_trips"]
    # Unrestated, the sale of the split's added shares reads as flips to short.
    unrestated = analyzer.calculate_performance_metrics({**stored, "splits": {}})
    assert unrestated["round_trips"] > from_folder["round_trips"]


def test_a_stored_replays_damaged_split_events_are_a_named_error(engine_config):
    from tradingd.analysis.run_records import stored_run_results
    from tradingd.app import REPLAY_SPLITS_KEY
    from tradingd.storage.factory import open_store

    outcome = asyncio.run(run_backtest(engine_config, panel=make_panel()))

    async def read_back() -> dict:
        store = open_store(engine_config.storage.url, spool=False)
        await store.start()
        try:
            damaged = _StoredConfigEdited(
                store, lambda c: c.update({REPLAY_SPLITS_KEY: {"AAA": [["yesterday", 2.0]]}})
            )
            return await stored_run_results(damaged, outcome.run_id)
        finally:
            await store.stop()

    with pytest.raises(ValueError, match=f"{REPLAY_SPLITS_KEY} in runs.config_json"):
        asyncio.run(read_back())


def test_a_backtest_not_on_a_terminal_logs_its_progress(engine_config):
    """A run whose stderr went to a file said nothing until its end (11 minutes for the
    README's S&P 500 replay): "log" progress is a line at every tenth of the bars."""
    from structlog.testing import capture_logs

    panel = make_panel()
    with capture_logs() as logs:
        asyncio.run(run_backtest(engine_config, panel=panel, progress="log"))
    lines = [e for e in logs if e["event"] == "backtest.progress"]
    assert [e["percent"] for e in lines][:10] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert len(lines) <= 11 and lines[-1]["bars"] == lines[-1]["of"] == len(panel.times)
    with capture_logs() as logs:
        asyncio.run(run_backtest(engine_config, panel=panel))
    assert not [e for e in logs if e["event"] == "backtest.progress"]


def test_a_backtests_progress_lines_name_the_bar_they_count(engine_config):
    """The engine passes the number of bars seen, which the progress line took for the
    index: at 5,031 of 5,031 it named the 5,030th bar's time (2018-12-28, not 2018-12-31),
    every line one bar early, and the last bar had no line of its own."""
    from structlog.testing import capture_logs

    panel = make_panel(n_bars=295)  # a tenth is 29 bars; 295 is not a multiple of it
    times = panel.datetimes()
    with capture_logs() as logs:
        asyncio.run(run_backtest(engine_config, panel=panel, progress="log"))
    lines = [e for e in logs if e["event"] == "backtest.progress"]
    assert [e["bars"] for e in lines] == [29 * k for k in range(1, 11)] + [295]
    assert [e["bar_time"] for e in lines] == [times[e["bars"] - 1] for e in lines]
    assert lines[-1]["bar_time"] == times[-1] and lines[-1]["of"] == 295
