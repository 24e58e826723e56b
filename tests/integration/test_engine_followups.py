"""What a new user tripped over in the replay path: a drawdown halt that froze a backtest for
good and said nothing, silent fill-time rejections, a start date that cut the warm-up, and a
window too short to ever trade."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import _StubEntryPoint, live_run, make_panel
from structlog.testing import capture_logs

from tradingd.analysis.metrics import format_summary
from tradingd.backtest import _jsonable, run_backtest
from tradingd.config import PluginSpec, RunConfig
from tradingd.core.errors import PluginFault
from tradingd.feeds.panel import Panel


@dataclass(frozen=True)
class _AlwaysLongConfig:
    pass


class AlwaysLong:
    """Wants every tradable symbol long, every bar: whatever stops it is the risk layer."""

    kind: ClassVar[str] = "signal"
    Config = _AlwaysLongConfig

    def __init__(self, config, symbols):
        self.name = "always_long"

    def required_features(self):
        return ()

    def score(self, ctx):
        return np.where(ctx.tradable, 1.0, np.nan)


class NeverAView(AlwaysLong):
    """No view at any bar: the run trades nothing, and must say why."""

    def __init__(self, config, symbols):
        self.name = "never_a_view"

    def score(self, ctx):
        return np.full(len(ctx.symbols), np.nan)


class NeverATarget:
    """A sizing with no target at any bar (NaN for every symbol): the run trades nothing."""

    kind: ClassVar[str] = "sizing"
    Config = _AlwaysLongConfig

    def __init__(self, config, symbols):
        self.name = "never_a_target"

    def required_features(self):
        return ()

    def size(self, score, ctx):
        return np.full(len(ctx.symbols), np.nan)


@pytest.fixture
def always_long(monkeypatch):
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["always_long"] = _StubEntryPoint("always_long", AlwaysLong)
    monkeypatch.setattr(registry, "available", lambda: eps)


def _record_steps(engine) -> list:  # type: ignore[no-untyped-def]
    """(bar time, trade) of every step the engine takes from now on, in order."""
    stepped: list[tuple[datetime, bool | None]] = []
    step = engine.step

    async def recording(bar, trade=None):  # type: ignore[no-untyped-def]
        stepped.append((bar.time, trade))
        await step(bar, trade)

    engine.step = recording
    return stepped


def _crash_panel(n_bars=160, crash_at=40, crash=0.45) -> Panel:
    """Three symbols that rise, fall `crash` over five bars, then drift up slowly."""
    times = pd.bdate_range("2021-01-04", periods=n_bars).to_numpy(dtype="datetime64[ns]")
    step = np.full(n_bars, 0.002)
    step[crash_at : crash_at + 5] = np.log(1 - crash) / 5
    close = 100.0 * np.exp(np.cumsum(step))[:, None] * np.array([1.0, 1.1, 0.9])
    return Panel(
        times=times,
        symbols=("A", "B", "C"),
        open=close.copy(),
        high=close * 1.001,
        low=close * 0.999,
        close=close,
        volume=np.full(close.shape, 1e7),
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )


def _closes_panel(close: np.ndarray, volume: np.ndarray | None = None) -> Panel:
    """Two symbols S0, S1 of business days from 2020-01-01, each bar's prices its close."""
    times = pd.bdate_range("2020-01-01", periods=len(close)).to_numpy(dtype="datetime64[ns]")
    return Panel(
        times=times,
        symbols=("S0", "S1"),
        open=close.copy(),
        high=close.copy(),
        low=close.copy(),
        close=close.copy(),
        volume=np.full(close.shape, 1e7) if volume is None else volume,
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )


def _config(engine_config, *, guard_params=None, **run):
    risk = (
        PluginSpec("max_position", params={"max_position_pct": 0.34}),
        PluginSpec(
            "drawdown_guard",
            params={"max_drawdown_pct": 0.2, "daily_loss_limit_pct": 0.5, **(guard_params or {})},
        ),
    )
    return dataclasses.replace(
        engine_config,
        signals=(PluginSpec("always_long"),),
        sizing=PluginSpec("equal_weight", params={"max_positions": 3, "gross_exposure": 0.99}),
        risk=risk,
        run=dataclasses.replace(engine_config.run, **run),
    )


async def test_two_instances_of_a_risk_plugin_are_counted_and_reported_apart(
    engine_config, always_long, tmp_path
):
    """Two drawdown guards with their own cool-offs: their verdicts were counted under one
    `drawdown_guard/max_drawdown` and their restrictions merged. The second instance is
    `drawdown_guard#2`, as its checkpoint key."""
    guard = {"max_drawdown_pct": 0.2, "daily_loss_limit_pct": 0.5, "flatten_on_breach": True}
    config = dataclasses.replace(
        _config(engine_config),
        risk=(
            PluginSpec("drawdown_guard", params={**guard, "cooloff_bars": 10}),
            PluginSpec("drawdown_guard", params={**guard, "cooloff_bars": 20}),
        ),
    )
    out = await run_backtest(config, panel=_crash_panel(), output_dir=tmp_path / "out")
    s = out.summary
    assert s["risk_verdicts_by_rule"]["drawdown_guard/max_drawdown"] == 10
    assert s["risk_verdicts_by_rule"]["drawdown_guard#2/max_drawdown"] == 20
    periods = {
        p["plugin"]: p["bars"] for p in s["trading_restricted"] if p["rule"] == "max_drawdown"
    }
    assert periods == {"drawdown_guard": 10, "drawdown_guard#2": 20}


def _buys_after(fills, t):
    return [f for f in fills if f["side"] == "buy" and pd.Timestamp(f["time"]) > t]


async def test_drawdown_halt_lifts_after_the_cooloff_and_is_reported(
    engine_config, always_long, tmp_path
):
    panel = _crash_panel()
    config = _config(engine_config, guard_params={"cooloff_bars": 10, "flatten_on_breach": True})
    with capture_logs() as logs:
        out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    s = out.summary
    periods = [p for p in s["trading_restricted"] if p["rule"] == "max_drawdown"]
    assert len(periods) == 1
    p = periods[0]
    assert p["plugin"] == "drawdown_guard" and p["action"] == "flatten" and p["bars"] == 10
    assert s["risk_verdicts_by_rule"]["drawdown_guard/max_drawdown"] == 10
    # Flattened on the breach, and trading resumed after the cool-off: the account buys
    # again and is invested for the rest of the run.
    lifted = pd.Timestamp(p["to"])
    assert _buys_after(out.fills, lifted)
    assert s["time_in_market"] > 0.85
    events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("risk.")]
    assert ("risk.restriction_started", "warning") in events
    assert ("risk.restriction_lifted", "warning") in events
    # The text summary shows the rule and the period; the JSON keeps them.
    text = format_summary(s)
    assert "drawdown_guard/max_drawdown" in text and p["from"][:10] in text
    assert _jsonable(s)["trading_restricted"][0]["bars"] == 10


async def test_drawdown_halt_until_reset_never_lifts_and_says_so(
    engine_config, always_long, tmp_path
):
    panel = _crash_panel()
    config = _config(engine_config, guard_params={"recovery": "halt", "flatten_on_breach": True})
    with capture_logs() as logs:
        out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    s = out.summary
    (p,) = [p for p in s["trading_restricted"] if p["rule"] == "max_drawdown"]
    assert pd.Timestamp(p["to"]) == pd.Timestamp(panel.datetimes()[-1])  # until the end
    assert not _buys_after(out.fills, pd.Timestamp(p["from"]))
    assert s["trading_restricted_bars"] >= p["bars"] > 100
    assert any(e["event"] == "risk.restriction_in_force_at_end" for e in logs)


async def test_rejections_at_fill_time_are_logged_and_counted(engine_config, always_long, tmp_path):
    panel = _crash_panel(n_bars=30, crash_at=100)
    # Every symbol gaps up 30% at the second bar's open: the buys sized on the first close
    # cannot be paid for.
    panel.open[1] *= 1.3
    panel.high[1] = np.maximum(panel.high[1], panel.open[1])
    config = _config(engine_config)
    with capture_logs() as logs:
        out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    rejected = [e for e in logs if e["event"] == "order.rejected"]
    assert rejected and all(e["log_level"] == "warning" for e in rejected)
    assert {e["stage"] for e in rejected} == {"fill"}
    assert "insufficient buying power" in rejected[0]["reason"]
    # targets within the equity: the market's gap is the cause, no strategy hint
    assert "hint" not in rejected[0] and "sizing" not in rejected[0]
    s = out.summary
    assert (
        s["rejections"] == len(rejected) == s["rejections_by_reason"]["insufficient buying power"]
    )
    assert s["rejections"] == sum(1 for o in out.orders if o["status"] == "rejected")


async def test_buying_power_rejections_from_a_leveraged_sizing_name_the_sizing(
    engine_config, always_long, tmp_path
):
    """A sizing asking for 180% of equity in longs with no gross limit in the risk chain: the
    first rejection for buying power says which plugin asked for how much, and what to
    change; later ones do not repeat it."""
    config = dataclasses.replace(
        _config(engine_config),
        sizing=PluginSpec("equal_weight", params={"max_positions": 3, "gross_exposure": 1.8}),
        risk=(PluginSpec("max_position", params={"max_position_pct": 0.6}),),
    )
    with capture_logs() as logs:
        await run_backtest(config, panel=_crash_panel(n_bars=30), output_dir=tmp_path / "out")
    rejected = [e for e in logs if e["event"] == "order.rejected"]
    assert len(rejected) > 1
    first = rejected[0]
    assert first["sizing"] == "equal_weight" and first["targets_long"] == pytest.approx(1.8)
    assert "180% of equity" in first["hint"] and "max_gross_exposure" in first["hint"]
    assert all("hint" not in e for e in rejected[1:])


async def test_a_start_date_keeps_the_history_before_it_for_the_warmup(engine_config, tmp_path):
    """Momentum over 20 bars with the run starting at bar 150: the first orders are made at
    the start bar itself, not 20 bars later, and nothing is decided before it."""
    panel = make_panel(n_bars=300, split_at=None)
    start = panel.datetimes()[150]
    config = dataclasses.replace(
        engine_config, run=dataclasses.replace(engine_config.run, start=start.date().isoformat())
    )
    out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    created = sorted(pd.Timestamp(o["created_at"]) for o in out.orders)
    assert created and created[0] == pd.Timestamp(start)
    assert out.summary["start"] == start.date().isoformat()
    assert out.summary["bars"] == 150 and out.summary["warmup_bars"] == 150
    assert out.result.times[0] == start


async def test_load_data_keeps_history_before_start_and_nothing_after_end(tmp_path):
    from tradingd.app import load_data, trade_start
    from tradingd.config import Config, DataConfig

    panel = make_panel(n_symbols=2, n_bars=120, split_at=None)
    rows = []
    for j, sym in enumerate(panel.symbols):
        for i, t in enumerate(panel.datetimes()):
            if np.isnan(panel.close[i, j]):
                continue
            rows.append(
                {
                    "time": t.date().isoformat(),
                    "symbol": sym,
                    **{
                        f: float(getattr(panel, f)[i, j])
                        for f in ("open", "high", "low", "close", "volume")
                    },
                }
            )
    path = tmp_path / "bars.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    times = panel.datetimes()
    config = Config(
        run=RunConfig(start=times[60].date().isoformat(), end=times[100].date().isoformat()),
        data=DataConfig(source="csv", path=str(path), layout="long"),
    )
    loaded = load_data(config)
    assert loaded.datetimes()[0] == times[0]  # the warm-up history is there
    assert loaded.datetimes()[-1] == times[100]  # nothing after the end
    assert trade_start(config, loaded) == times[60]


async def test_a_window_beyond_the_data_is_said_once_with_both_ranges(engine_config, tmp_path):
    """run.start before the data's first bar or run.end after its last: the run was clipped
    to the data without a word, and read as a run over the years asked for."""
    panel = make_panel(n_bars=60, split_at=None)  # 2020-01-01 .. 2020-03-24
    first, last = (panel.datetimes()[i].date().isoformat() for i in (0, -1))

    async def clipped(start: str, end: str) -> list[dict]:
        run = dataclasses.replace(engine_config.run, start=start, end=end)
        with capture_logs() as logs:
            await run_backtest(
                dataclasses.replace(engine_config, run=run),
                panel=panel,
                output_dir=tmp_path / "out",
            )
        return [e for e in logs if e["event"] == "run.window_clipped"]

    (warning,) = await clipped("1995-01-01", "2020-12-31")
    assert warning["log_level"] == "warning"
    assert warning["requested"] == ["1995-01-01", "2020-12-31"]
    assert warning["actual"] == [first, last]
    assert "run.start = '1995-01-01' is before" in warning["detail"]
    assert "run.end = '2020-12-31' is after" in warning["detail"]
    (warning,) = await clipped("", "2021-06-30")
    assert warning["requested"] == [None, "2021-06-30"] and warning["actual"] == [first, last]
    # Inside the data, or a weekend or holiday away from its ends: nothing to say.
    assert await clipped("", "") == []
    assert await clipped("2019-12-30", "2020-03-27") == []
    assert await clipped("2020-02-03", last) == []


async def test_a_window_shorter_than_the_warmup_warns(engine_config, tmp_path):
    panel = make_panel(n_bars=60, split_at=None)
    config = dataclasses.replace(
        engine_config, signals=(PluginSpec("momentum", 1.0, {"lookback": 100}),)
    )
    with capture_logs() as logs:
        out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    assert out.summary["fills"] == 0
    (warning,) = [e for e in logs if e["event"] == "run.never_ready"]
    assert warning["log_level"] == "warning" and warning["bars"] == 60


async def test_ml_warmup_by_observe_gives_the_scores_of_a_full_run(engine_config, tmp_path):
    """The model plugin fills its windows on warm-up bars without predicting: from the start
    date on, its scores equal those of a run that scored every bar."""
    panel = make_panel(n_symbols=3, n_bars=220, split_at=None)
    base = dataclasses.replace(
        engine_config,
        signals=(PluginSpec("ml_ensemble", 1.0, {"cache_dir": ""}),),
        storage=dataclasses.replace(engine_config.storage, signals="all"),
    )
    start = panel.datetimes()[170]

    async def scores(config, name):
        config = dataclasses.replace(
            config,
            storage=dataclasses.replace(config.storage, url=f"sqlite:///{tmp_path / name}.db"),
        )
        out = await run_backtest(config, panel=panel, output_dir=tmp_path / name)
        from tradingd.storage.factory import open_store

        store = open_store(config.storage.url)
        await store.start()
        try:
            got = await store.fetch("signals", out.run_id)
        finally:
            await store.stop()
        return {
            (pd.Timestamp(r["time"]), r["symbol"]): r["score"]
            for r in got
            if pd.Timestamp(r["time"]) >= pd.Timestamp(start)
        }

    full = await scores(base, "full")
    late = await scores(
        dataclasses.replace(base, run=dataclasses.replace(base.run, start=start.isoformat())),
        "late",
    )
    assert late and set(late) == set(full)
    assert any(np.isfinite(v) and v != 0 for v in late.values())  # the model had a view
    for k, v in full.items():
        assert late[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k


def _warm_up_failing(engine_config, errors: list[str]) -> tuple[Any, list[float]]:
    """A live engine on a recorded feed (60 bars of warm-up, 60 to trade) whose warm-up
    raises RetryableError(errors.pop(0)) while `errors` lasts, then answers; its backoff
    waits are recorded, not waited. Returns (engine, waits)."""
    from tradingd.app import build_engine
    from tradingd.config import LiveConfig
    from tradingd.core.errors import RetryableError

    panel = make_panel(n_bars=120, split_at=None)
    config = dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=400.0),
        run=dataclasses.replace(engine_config.run, start=panel.datetimes()[60].date().isoformat()),
    )
    engine = build_engine(config, "live", panel=panel)
    real = engine._warmup
    waits: list[float] = []

    async def failing(resumed_from=None):
        if errors:
            raise RetryableError(errors.pop(0))
        async for bar in real(resumed_from):
            yield bar

    async def no_wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    engine._warmup = failing
    engine._sleep_unless_stopped = no_wait
    return engine, waits


async def test_live_warmup_retries_a_source_that_is_down_at_start(engine_config, tmp_path):
    """A data source down at start-up: the daemon keeps retrying its warm-up (with backoff)
    instead of exiting, then warms up and trades once the source answers."""
    down = ["yahoo: no symbol could be fetched (kinds: http_5xx)"] * 2
    engine, waits = _warm_up_failing(engine_config, down)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert waits == [1.0, 2.0]  # exponential backoff between attempts
    assert sum(e["event"] == "warmup.retry" for e in logs) == 2
    assert result.warmup_bars == 60 and result.bars == 60 and result.orders > 0


async def test_ready_says_a_warm_up_whose_source_fails_is_failing_not_warming_up(engine_config):
    """While the warm-up's source was down and retried, /ready's `last_bar` said "warming
    up: no history bar stepped yet", an expected failure logged at info: as a start going
    well. It names the failures now, and is a failure like any other."""
    from datetime import UTC, datetime

    from tradingd.app import health_inputs

    error = "yahoo: no symbol could be fetched (kinds: http_5xx)"
    engine, _waits = _warm_up_failing(engine_config, [error] * 2)
    engine.clock.expected_latest = lambda now=None: datetime(2100, 1, 1, tzinfo=UTC)
    checks, _status, _controls = health_inputs(engine)
    [last_bar] = [c for c in checks if c.name == "last_bar"]
    seen = []
    wait = engine._sleep_unless_stopped

    async def probing(seconds: float) -> bool:
        seen.append(last_bar.probe())
        return await wait(seconds)

    engine._sleep_unless_stopped = probing
    await engine.run_until_done()
    assert [r.detail for r in seen] == [
        f"warming up: the source failed {n} time(s) and is retried: {error}" for n in (1, 2)
    ]
    assert all(not r.ok and not r.expected for r in seen)
    assert engine.warmup_failing is None


@pytest.mark.parametrize("stuck_s", [0.0, 300.0])
async def test_a_warm_up_failing_the_same_way_for_long_is_said_once_as_an_error(
    engine_config, monkeypatch, stuck_s
):
    """A defect in a vendor's answer (a split "0:1") fails every retry the same way: the
    warm-up retried it without end, a warning every minute. It still retries (a vendor may
    correct it), and says it once as an error after ten identical failures over five
    minutes; a different error starts the count again."""
    import tradingd.engine.engine as eng

    # 0: the five minutes not waited for; 300 (the default): the failures below come at
    # once, so ten of them are not yet five minutes and nothing is said.
    monkeypatch.setattr(eng, "_WARMUP_STUCK_S", stuck_s)
    engine, _ = _warm_up_failing(engine_config, ["other"] * 9 + ["split '0:1' of AAA"] * 12)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    retries = [e for e in logs if e["event"] == "warmup.retry"]
    assert [e["attempt"] for e in retries] == list(range(1, 22))
    stuck = [e for e in logs if e["event"] == "warmup.stuck"]
    if stuck_s:
        assert stuck == []
    else:
        assert len(stuck) == 1 and stuck[0]["log_level"] == "error"
        assert stuck[0]["attempts"] == 10 and stuck[0]["error"] == "split '0:1' of AAA"
    assert result.warmup_bars == 60  # still retried, and warmed up once it answered


async def test_a_live_engine_freezes_its_start_up_objects_and_unfreezes_them_at_stop(
    engine_config,
):
    """After the warm-up a live engine moves what start-up built out of the collector's
    generations (a full collection walked them all: 200-300 ms pauses in the bar path), and
    gives them back at stop. A replay freezes too and collects its young objects in larger
    batches (engine/collector.py); both are undone when it ends, however it ends."""
    import gc

    from tradingd.app import build_engine
    from tradingd.engine.collector import REPLAY_GEN0

    panel, config = live_run(engine_config)
    assert gc.get_freeze_count() == 0
    seen: dict[str, int] = {}
    live = build_engine(config, "live", panel=panel)
    live.on_ready = lambda: seen.setdefault("live", gc.get_freeze_count())
    live_thresholds: list[tuple[int, ...]] = []
    live.after_bar.append(lambda t, v: live_thresholds.append(gc.get_threshold()))
    result = await live.run_until_done()
    assert result.bars == 30
    assert seen["live"] > 10_000  # the engine, its plugins and data: frozen while trading
    assert gc.get_freeze_count() == 0  # unfrozen at stop

    before = gc.get_threshold()
    assert set(live_thresholds) == {before}  # a live engine keeps the thresholds

    thresholds: list[tuple[int, ...]] = []
    replay = build_engine(engine_config, "backtest", panel=panel)
    replay.on_ready = lambda: seen.setdefault("replay", gc.get_freeze_count())
    replay.after_bar.append(lambda t, v: thresholds.append(gc.get_threshold()))
    await replay.run_until_done()
    assert seen["replay"] > 10_000
    assert thresholds and set(thresholds) == {(REPLAY_GEN0, *before[1:])}
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before

    # A replay that fails (a plugin raises) puts the collector back all the same.
    failing = build_engine(engine_config, "backtest", panel=panel)

    def boom(ctx):
        raise RuntimeError("boom")

    failing.pipeline.signals[0][0].score = boom
    with pytest.raises(PluginFault):
        await failing.run_until_done()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


async def test_a_live_engine_leaves_a_freeze_it_did_not_make(engine_config, monkeypatch):
    """A replay running in the same process froze the heap: the live engine's stop must not
    unfreeze it under the replay (nor may the replay's end be the one that fails to)."""
    import gc

    from tradingd.app import build_engine
    from tradingd.engine import collector

    monkeypatch.setattr(collector, "_active", 0)
    monkeypatch.setattr(collector, "_froze", False)
    panel, config = live_run(engine_config)
    assert gc.get_freeze_count() == 0
    collector.replay_started()  # a replay in this process, still running
    try:
        live = build_engine(config, "live", panel=panel)
        assert (await live.run_until_done()).bars == 30
        assert gc.get_freeze_count() > 0  # the replay's freeze, kept
    finally:
        collector.replay_ended()
    assert gc.get_freeze_count() == 0  # its end unfroze it


async def test_a_resumed_engine_is_catching_up_until_past_its_checkpoint(engine_config):
    """`catching_up_to` (the daemon's /ready) names the checkpoint while the bars an earlier
    process completed are replayed for features, and is None from the checkpoint's bar on."""
    from tradingd.app import build_engine

    panel = make_panel(n_bars=60, split_at=None)
    engine = build_engine(engine_config, "backtest", panel=panel)
    through = panel.datetimes()[20]
    assert engine.catching_up_to is None  # nothing restored
    engine._restored_through = through
    seen = []
    replay_restored = engine._replay_restored

    def recorded(bar):
        replay_restored(bar)
        seen.append((bar.time, engine.catching_up_to))

    engine._replay_restored = recorded
    engine._on_bar = lambda i, t: seen.append((t, engine.catching_up_to))
    await engine.run_until_done()
    times = [t for t, _ in seen]
    assert times == sorted(times) and len(times) == 60
    assert all((behind == through) == (t < through) for t, behind in seen), seen[18:23]
    assert all(behind in (None, through) for _, behind in seen)


@pytest.mark.parametrize(("action", "state"), [("pause", "paused"), ("flatten", "flattening")])
async def test_an_operators_control_is_in_the_stored_checkpoint_when_it_answers(
    engine_config, tmp_path, action, state
):
    """Kept in memory until the next bar's checkpoint, a pause was lost by a restart (even a
    clean SIGTERM) before that bar, hours with daily bars, and the restarted daemon traded:
    the control rewrites the last checkpoint with its state before it answers."""
    import json
    import sqlite3
    from datetime import datetime

    from tradingd.app import EngineControls, build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    controls = EngineControls(engine)
    seen: list[tuple[dict, str, bool]] = []

    async def control_then_read():
        answer = await getattr(controls, action)()
        # Read at once (no await: no bar runs in between), from another connection.
        with sqlite3.connect(tmp_path / "store.db") as db:
            bar_time, stored = db.execute(
                "select bar_time, state from checkpoints where run_id = ?", ("test-live",)
            ).fetchone()
        last = engine._last_checkpoint[0]
        seen.append(
            (answer, json.loads(stored)["trading_state"], datetime.fromisoformat(bar_time) == last)
        )
        engine.request_stop()

    def after(t, verdicts):
        if engine._bars == 5:
            asyncio.get_running_loop().create_task(control_then_read())

    engine.after_bar.append(after)
    await engine.run_until_done()
    [(answer, stored_state, of_the_last_bar)] = seen
    assert answer["state"] == state
    assert stored_state == state
    assert of_the_last_bar  # the last bar's checkpoint, rewritten


async def test_a_live_start_that_does_not_continue_the_earlier_live_run_says_so(engine_config):
    """An operator changed a risk limit (applied by SIGHUP) and later restarted: the config's
    hash made a new run id, and the daemon began afresh (the simulated account's cash from
    the start) with nothing said. A restart of the same config continues silently."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine, run_id_for

    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id=""))
    first = build_engine(config, "live", panel=panel)
    await first.run_until_done()

    with capture_logs() as logs:
        await build_engine(config, "live", panel=panel).run_until_done()  # a restart
    assert not [e for e in logs if e["event"] == "run.not_continued"]

    # Not runs of this name: another case (SQLite's LIKE ignores it) and a longer name.
    from datetime import UTC, datetime

    from tradingd.core.types import RunInfo
    from tradingd.storage.factory import open_store

    store = open_store(config.storage.url)
    await store.start()
    try:
        name = first.run.run_id.split("-live-")[0]
        for rid in (f"{name.upper()}-live-0123456789", f"{name}-live-x-live-0123456789"):
            await store.resume_run(RunInfo(rid, "live", datetime.now(UTC), "{}", ("A",), 1.0))
    finally:
        await store.stop()

    [risk] = config.risk
    changed = dataclasses.replace(
        config,
        risk=[dataclasses.replace(risk, params={**risk.params, "max_position_pct": 0.2})],
    )
    assert run_id_for(changed, "live") != first.run.run_id
    with capture_logs() as logs:
        await build_engine(changed, "live", panel=panel).run_until_done()
    [said] = [e for e in logs if e["event"] == "run.not_continued"]
    assert said["log_level"] == "warning" and said["earlier"] == [first.run.run_id]


async def test_a_control_after_the_engine_stopped_is_refused_and_changes_nothing(engine_config):
    """After the loop ended the store is gone: a pause answered 500 ("not started") from
    deep inside the store, and the state had already changed in memory."""
    from tradingd.app import EngineControls, build_engine
    from tradingd.core.errors import EngineStoppedError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    engine.after_bar.append(lambda t, v: engine.request_stop() if engine._bars == 3 else None)
    await engine.run_until_done()
    with pytest.raises(EngineStoppedError, match="has stopped"):
        await EngineControls(engine).pause()
    assert engine.trading_state == "active"


async def test_status_last_bar_time_never_goes_back_while_a_restart_catches_up(engine_config):
    """A resumed demo replays its completed bars for features after the clock starts:
    /status showed their times, weeks before what it showed before the restart."""
    from tradingd.app import build_engine, health_inputs

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 10 else None)
    await first.run_until_done()

    restarted = build_engine(config, "live", panel=panel)
    _checks, status, _controls = health_inputs(restarted)
    seen: list[tuple] = []
    step = restarted.step

    async def observed(bar, trade=None):  # type: ignore[no-untyped-def]
        await step(bar, trade)
        st = status()
        seen.append((st["last_bar_time"], st["catching_up_to"]))

    restarted.step = observed  # type: ignore[method-assign]
    await restarted.run_until_done()
    checkpoint = restarted.resumed_from
    assert checkpoint == first.last_bar_time
    caught_up = [c for _, c in seen if c is not None]
    assert caught_up and set(caught_up) == {checkpoint}  # it did catch up, through there
    times = [t for t, _ in seen]
    assert all(t >= checkpoint for t in times)
    assert times == sorted(times) and times[-1] > checkpoint and seen[-1][1] is None


def test_the_start_up_status_has_the_engines_keys(engine_config):
    """/status answers while the daemon starts, before an engine exists: a dashboard that
    reads `bars` or `equity` finds the key (unknown: null), not a missing field."""
    from types import SimpleNamespace

    from tradingd.__main__ import starting_status
    from tradingd.app import build_engine, health_inputs

    panel, config = live_run(engine_config)
    _checks, status, _controls = health_inputs(build_engine(config, "live", panel=panel))
    starting = starting_status(SimpleNamespace(phase="checking services"))
    assert set(status()) <= set(starting), set(status()) - set(starting)
    assert starting["phase"] == "checking services" and starting["bars"] == 0
    assert all(starting[k] is None for k in ("run_id", "equity", "positions", "trading_state"))


async def test_a_live_loop_that_fails_leaves_no_reconciler_running(engine_config):
    """Only a loop that ended cancelled its periodic reconciliation: after a failure the
    task went on calling a stopped broker every interval."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)

    async def positions() -> dict[str, float]:  # a broker that reports its book reconciles
        return dict(zip(engine.symbols, map(float, engine.portfolio.quantity), strict=True))

    engine.broker.positions = positions  # type: ignore[attr-defined]

    def fail(t, verdicts):
        if engine._bars == 3:
            raise RuntimeError("a bar's hook failed")

    engine.after_bar.append(fail)
    with pytest.raises(RuntimeError, match="hook failed"):
        await engine.run_until_done()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "reconcile" and not t.done()]


def _stored_trading_state(db, run_id: str = "test-live") -> str:
    """The trading state in the run's stored checkpoint, read by another connection."""
    import json
    import sqlite3

    with sqlite3.connect(db) as con:
        (state,) = con.execute(
            "select state from checkpoints where run_id = ?", (run_id,)
        ).fetchone()
    return json.loads(state)["trading_state"]


async def test_a_control_the_store_fails_to_keep_says_so_and_stays_in_effect(
    engine_config, tmp_path
):
    """And the pause sent again, as the 503 says, is stored: it answered 200 without storing
    anything (the state was already "paused" in memory), and a crash before the next bar's
    checkpoint (hours, with daily bars) lost it."""
    from tradingd.app import EngineControls, build_engine
    from tradingd.core.errors import ControlNotStoredError, StorageError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    raised: list[BaseException] = []
    stored_after_resend: list[str] = []

    async def pause_with_a_failing_flush():
        flush = engine.store.flush

        async def failing() -> None:
            raise StorageError("disk full")

        engine.store.flush = failing
        try:
            await EngineControls(engine).pause()
        except ControlNotStoredError as exc:
            raised.append(exc)
        finally:
            engine.store.flush = flush
        answer = await EngineControls(engine).pause()  # sent again
        assert answer["before"] == "paused"
        stored_after_resend.append(_stored_trading_state(tmp_path / "store.db"))
        engine.request_stop()

    def after(t, verdicts):
        if engine._bars == 5:
            asyncio.get_running_loop().create_task(pause_with_a_failing_flush())

    engine.after_bar.append(after)
    await engine.run_until_done()
    [exc] = raised
    assert exc.state == "paused" and "disk full" in str(exc)
    assert engine.trading_state == "paused"  # in effect: the next checkpoint carries it
    assert stored_after_resend == ["paused"]


async def test_a_control_answered_while_the_daemon_starts_is_stored_before_the_first_bar(
    engine_config, tmp_path
):
    """During the warm-up (minutes, with a source that is down) and before it, a control
    lived in memory until the first bar's checkpoint: a stop before that bar lost it, and the
    next start traded."""
    from tradingd import metrics
    from tradingd.app import EngineControls, build_engine

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 3 else None)
    await first.run_until_done()
    checkpoint = first.last_bar_time
    db = tmp_path / "store.db"

    # Before the start: the resumed checkpoint is rewritten at once, with the pause.
    restarted = build_engine(config, "live", panel=panel)
    await EngineControls(restarted).pause()
    real_warmup = restarted._warmup
    seen: list[tuple[str, float]] = []

    async def warmup_then_stop(resumed_from=None):
        seen.append((_stored_trading_state(db), metrics.LAST_BAR_TIME._value.get()))
        restarted.request_stop()  # before any bar
        async for bar in real_warmup(resumed_from):
            yield bar

    restarted._warmup = warmup_then_stop
    published: list[dict] = []
    cache_set = restarted.cache.set

    async def recorded_set(key, value, ttl_s=None):  # type: ignore[no-untyped-def]
        if key.endswith(":state"):
            published.append(json.loads(value))
        await cache_set(key, value, ttl_s)

    restarted.cache.set = recorded_set  # type: ignore[method-assign]
    await restarted.run_until_done()
    assert seen == [("paused", checkpoint.timestamp())]
    # The state other processes read (Redis) says the checkpoint too, as /status does.
    assert published and published[-1]["bar_time"] == checkpoint.isoformat()

    # During the warm-up: stored when answered.
    again = build_engine(config, "live", panel=panel)
    real_warmup = again._warmup
    during: list[str] = []

    async def resume_during_warmup(resumed_from=None):
        await EngineControls(again).resume()
        during.append(_stored_trading_state(db))
        again.request_stop()
        async for bar in real_warmup(resumed_from):
            yield bar

    again._warmup = resume_during_warmup
    await again.run_until_done()
    assert during == ["active"]


async def test_a_live_bar_is_handed_to_the_writer_when_it_ends_whatever_the_interval(
    engine_config, tmp_path
):
    """The store wrote when its interval (0.1 s) had passed since its last write. A bar with
    orders writes their intents mid-bar, so its end found the interval not passed, and its
    rows and checkpoint stayed in memory until the next bar: a day later with daily bars,
    lost to a crash meanwhile."""
    import sqlite3

    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    engine.store.flush_interval_s = 3600.0  # daily bars: the interval never passes
    stored: list[tuple[str, str, int]] = []
    real_step = engine.step

    async def step(bar, trade=None):  # type: ignore[no-untyped-def]
        await real_step(bar, trade)
        if not engine.trading_started:
            return
        await engine.store.settle()  # the writes in flight, nothing more
        with sqlite3.connect(tmp_path / "store.db") as con:
            (checkpoint,) = con.execute(
                "select bar_time from checkpoints where run_id = 'test-live'"
            ).fetchone()
            (equity_rows,) = con.execute(
                "select count(*) from equity where run_id = 'test-live'"
            ).fetchone()
        stored.append((bar.time.isoformat(), checkpoint, equity_rows))
        if len(stored) == 5:
            engine.request_stop()

    engine.step = step  # type: ignore[method-assign]
    await engine.run_until_done()
    assert engine.result().orders  # bars with orders among them
    assert [(t, n) for t, _, n in stored] == [(t, i + 1) for i, (t, _, _) in enumerate(stored)]
    assert all(datetime.fromisoformat(c) == datetime.fromisoformat(t) for t, c, _ in stored)


async def test_fills_booked_between_bars_are_handed_to_the_writer_at_once(engine_config, tmp_path):
    """A live broker's fills that arrive between bars are booked by the reconciliation (or
    the stop); their rows waited in memory for the next bar, a day later with daily bars."""
    import sqlite3

    from tradingd.app import build_engine
    from tradingd.core.types import Fill, Side

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    engine.store.flush_interval_s = 3600.0  # daily bars: the interval never passes
    late = Fill("late-1", "elsewhere|x", engine.symbols[0], Side.BUY, 1.0, 10.0, 0.0, 0.0, T_LATE)
    stored: list[int] = []

    async def between_bars():
        assert await engine._book_late_updates() == 1
        await engine.store.settle()  # the writes in flight, nothing more
        with sqlite3.connect(tmp_path / "store.db") as con:
            (n,) = con.execute("select count(*) from fills where fill_id = 'late-1'").fetchone()
        stored.append(n)
        engine.request_stop()

    _late_fills(engine, [late], between_bars)
    await engine.run_until_done()
    assert stored == [1]


def _late_fills(engine, pending: list, between) -> None:  # type: ignore[no-untyped-def]
    """The broker's `updates()` answers the fills in `pending` once (a live broker's fills
    between bars), and `between()` runs between bars 3 and 4, as a reconciliation does."""
    from types import SimpleNamespace

    async def updates():  # type: ignore[no-untyped-def]
        fills, pending[:] = list(pending), []
        return SimpleNamespace(fills=fills, orders=[])

    def after(t, v):  # type: ignore[no-untyped-def]
        if engine._bars == 3:
            asyncio.get_running_loop().create_task(between())

    engine.broker.updates = updates  # type: ignore[attr-defined]
    engine.after_bar.append(after)


async def test_fills_booked_between_bars_reach_status_metrics_and_subscribers(engine_config):
    """With daily bars nearly every fill arrives between bars. Booked there, it was in the
    store but not published, /status kept the last bar's equity beside the new cash, and
    /metrics kept the old equity and cash (0 after a restart) until the next bar."""
    from types import SimpleNamespace

    from tradingd import metrics
    from tradingd.app import build_engine
    from tradingd.core.types import Fill, Side

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    published: list[tuple[str, dict]] = []
    engine.publisher = SimpleNamespace(
        publish=lambda kind, payload: published.append((kind, payload)),
        start=_nothing,
        stop=_nothing,
        status=lambda: {},
    )
    pending: list = []
    seen: dict = {}

    async def between_bars():
        pf = engine.portfolio
        sym = engine.symbols[0]
        price = float(pf.mark[0]) * 0.9  # bought below the mark: equity moves
        pending.append(Fill("late-2", "x|y", sym, Side.BUY, 5.0, price, 1.0, 0.0, T_LATE))
        before = len(published)
        assert await engine._book_late_updates() == 1
        seen["equity"] = pf.equity
        seen["expected"] = pf.cash + float(np.nansum(pf.quantity * pf.mark))
        seen["gauge"] = (metrics.EQUITY._value.get(), metrics.CASH._value.get())
        seen["kinds"] = [k for k, _ in published[before:]]
        seen["state"] = [p for k, p in published[before:] if k == "state"]
        engine.request_stop()

    _late_fills(engine, pending, between_bars)
    await engine.run_until_done()
    assert seen["equity"] == pytest.approx(seen["expected"], rel=1e-12)
    assert seen["gauge"] == (pytest.approx(seen["equity"]), pytest.approx(engine.portfolio.cash))
    assert "fills" in seen["kinds"] and "state" in seen["kinds"]
    assert seen["state"][-1]["equity"] == pytest.approx(seen["equity"])


async def test_the_published_state_is_there_from_the_start_and_between_bars(
    engine_config, monkeypatch
):
    """The state key (`<run_id>:state`, expiring after cache.expiry_s) was written only after
    a bar: with daily bars it was gone about 23 hours a day, and after a restart until the
    next bar. It is written at start and refreshed every third of its expiry."""
    from tradingd.app import build_engine
    from tradingd.engine import engine as engine_module

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    first_bar: list = []
    states_before: list[int] = []
    writes: list[str] = []
    cache_set = engine.cache.set

    async def recording_set(key, value, ttl=None):  # type: ignore[no-untyped-def]
        if key.endswith(":state"):
            writes.append(key)
        return await cache_set(key, value, ttl)

    engine.cache.set = recording_set  # type: ignore[method-assign]

    step = engine.step

    async def counting_step(bar, trade=None):  # type: ignore[no-untyped-def]
        if not first_bar:
            first_bar.append(bar.time)
            states_before.append(len(writes))
        await step(bar, trade)
        if engine._bars == 2:
            engine.request_stop()

    engine.step = counting_step  # type: ignore[method-assign]
    await engine.run_until_done()
    assert states_before[0] >= 1, "written before the first bar (warm-up included)"
    # In UTC as every other time (it was the host's local time).
    with monkeypatch.context() as local:
        local.setenv("TZ", "America/New_York")
        time.tzset()
        try:
            await engine._publish(force=True)
        finally:
            local.undo()
            time.tzset()
    state = json.loads(await engine.cache.get(f"{engine.run.run_id}:state"))
    assert state["updated_at"].endswith("+00:00")

    # The refresher: a publish every cache_ttl / 3, under the bar lock.
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 3:
            raise asyncio.CancelledError

    monkeypatch.setattr(engine_module.asyncio, "sleep", fake_sleep)
    engine._bar_lock = asyncio.Lock()
    before = len(writes)
    with pytest.raises(asyncio.CancelledError):
        await engine._refresh_state_every()
    assert waits == [engine._cache_ttl / 3] * 4 and len(writes) - before == 3


async def test_a_restart_shows_the_resumed_books_equity_in_metrics_at_once(engine_config):
    """/metrics said equity 0 and cash 0 after every restart until the next bar (a weekend
    away with daily bars): an equity or drawdown alert on them fired falsely."""
    from tradingd import metrics
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 5 else None)
    await first.run_until_done()
    metrics.EQUITY.set(0.0)
    metrics.CASH.set(0.0)  # a new process
    restarted = build_engine(config, "live", panel=panel)
    seen: list[tuple[float, float]] = []
    step = restarted.step

    async def first_step(bar, trade=None):  # type: ignore[no-untyped-def]
        if not seen:
            seen.append((metrics.EQUITY._value.get(), metrics.CASH._value.get()))
            restarted.request_stop()
        await step(bar, trade)

    restarted.step = first_step  # type: ignore[method-assign]
    await restarted.run_until_done()
    assert seen == [(pytest.approx(first.portfolio.equity), pytest.approx(first.portfolio.cash))]


async def test_bars_processed_counts_the_warm_up_after_a_restart_as_at_a_first_start(
    engine_config,
):
    """/metrics' counter includes warm-up bars (README): after a restart, the bars up to the
    checkpoint (the resumed warm-up, `_replay_restored`) were not counted, and the counter
    said 72 while /status said 207 bars."""
    from tradingd import metrics
    from tradingd.app import build_engine

    def processed() -> float:
        return metrics.BARS_PROCESSED._value.get()

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 5 else None)
    before = processed()
    await first.run_until_done()
    assert processed() - before == 65  # 60 warm-up bars, 5 traded
    restarted = build_engine(config, "live", panel=panel)
    before = processed()
    await restarted.run_until_done()
    assert restarted.resumed_from is not None
    assert processed() - before == len(panel.datetimes()) == 90  # 65 restored, 25 traded


async def _nothing() -> None:
    return None


T_LATE = datetime(2020, 4, 1, 15, 0, tzinfo=UTC)


def _first_cancel_comes_back_filled(engine) -> tuple[list[tuple], list[tuple]]:  # type: ignore[no-untyped-def]
    """The engine's broker answers its first cancel (of an open order) as a live broker does
    when the order filled before the cancel reached it. Returns the (bar, symbol) of that
    cancel and the (bar, symbol) of every order submitted, both filled in as the run goes."""
    import copy

    from tradingd.core.types import OrderStatus

    broker = engine.broker
    real_cancel, real_submit = broker.cancel, broker.submit
    filled_at_cancel: list[tuple] = []
    sent: list[tuple] = []

    async def cancel(cid, reason=""):  # type: ignore[no-untyped-def]
        order = await real_cancel(cid, reason)
        if order is not None and not filled_at_cancel:
            order = copy.copy(order)
            order.status, order.filled_quantity = OrderStatus.FILLED, order.quantity
            filled_at_cancel.append((engine._bars, order.symbol))
        return order

    async def submit(orders):  # type: ignore[no-untyped-def]
        sent.extend((engine._bars, o.symbol) for o in orders)
        return await real_submit(orders)

    broker.cancel, broker.submit = cancel, submit
    return filled_at_cancel, sent


async def test_a_sale_planned_on_shares_a_cancelled_stop_had_sold_is_not_sent(
    engine_config, tmp_path
):
    """Closing a position cancels its protective exits, then sells. A live broker can fill
    the stop in between: the cancel comes back filled, and the sale, sent anyway, sold the
    shares a second time (a short sale in a long-only run)."""
    import sqlite3

    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, orders=dataclasses.replace(config.orders, brackets=True))
    engine = build_engine(config, "live", panel=panel)
    filled_at_cancel, sent = _first_cancel_comes_back_filled(engine)
    with capture_logs() as logs:
        await engine.run_until_done()
    [(bar, symbol)] = filled_at_cancel
    assert (bar, symbol) not in sent
    [warned] = [e for e in logs if e["event"] == "plan.dropped_after_fill"]
    assert warned["symbols"] == [symbol] and warned["orders"]
    with sqlite3.connect(tmp_path / "store.db") as con:
        rows = con.execute(
            "select status, reason from orders where client_order_id in "
            f"({','.join('?' * len(warned['orders']))})",
            warned["orders"],
        ).fetchall()
    assert rows and all(st == "cancelled" and r.startswith("not sent") for st, r in rows)


async def test_a_plan_whose_cancel_met_a_broker_failure_closes_its_orders_as_not_placed(
    engine_config, tmp_path
):
    """The broker failed during a bar's cancels: its orders, stored as intents before any of
    it was sent, were never submitted, and stayed `new` in the store for good (a restart
    re-checks only the intents after its checkpoint). They are closed as cancelled now."""
    import sqlite3

    from tradingd.app import build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, orders=dataclasses.replace(config.orders, brackets=True))
    engine = build_engine(config, "live", panel=panel)
    broker = engine.broker
    real_cancel, real_submit = broker.cancel, broker.submit
    failed: list[str] = []
    sent: list[str] = []

    async def cancel(cid, reason=""):  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(cid)
            raise RetryableError("broker unreachable during cancel")
        return await real_cancel(cid, reason)

    async def submit(orders):  # type: ignore[no-untyped-def]
        sent.extend(o.client_order_id for o in orders)
        return await real_submit(orders)

    broker.cancel, broker.submit = cancel, submit
    with capture_logs() as logs:
        await engine.run_until_done()
    assert failed and engine.broker_failures == 1
    [warned] = [e for e in logs if e["event"] == "orders.not_placed"]
    assert warned["orders"] and not set(warned["orders"]) & set(sent)
    with sqlite3.connect(tmp_path / "store.db") as con:
        rows = con.execute(
            "select status, reason from orders where client_order_id in "
            f"({','.join('?' * len(warned['orders']))})",
            warned["orders"],
        ).fetchall()
    assert len(rows) == len(warned["orders"])
    assert all(st == "cancelled" and r.startswith("not placed") for st, r in rows)


async def test_a_broker_outage_is_said_at_its_start_counted_and_said_at_its_end(
    engine_config, always_long
):
    """Each bar of a broker outage was an error line, `broker.unavailable`, and its orders'
    `orders.not_placed` a warning: an hour at 1-minute bars, 120 lines. Its first bar is
    said; the later bars are counted and said at a bounded rate (here at most every 3 days of
    bars, so that daily bars show it; 5 minutes doubling to an hour by default), the bars
    between at debug; the first bar that reaches the broker says `broker.recovered` with
    the outage's length and what it missed, and `/status` shows it while it lasts."""
    from tradingd.app import build_engine
    from tradingd.brokers.alpaca import SubmitCutShort
    from tradingd.core.types import OrderStatus
    from tradingd.engine.outages import BrokerOutage

    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, signals=(PluginSpec("always_long"),))
    engine = build_engine(config, "live", panel=panel)
    engine.broker_outage = BrokerOutage(
        repeat_first=timedelta(days=3), repeat_max=timedelta(days=6)
    )
    down = 10  # the broker fails the first 10 bars that send orders
    failed: list[tuple[datetime, int]] = []
    during: list[dict[str, Any] | None] = []
    real_submit = engine.broker.submit

    async def submit(orders):  # type: ignore[no-untyped-def]
        if len(failed) == down:
            return await real_submit(orders)
        failed.append((orders[0].created_at, len(orders)))
        for o in orders:  # as Alpaca's adapter closes a batch it could not send
            o.status = OrderStatus.CANCELLED
        raise SubmitCutShort("Alpaca unreachable (timeout)", [], list(orders))

    def watch(t, verdicts):  # type: ignore[no-untyped-def]
        during.append(engine.broker_outage.status())

    engine.broker.submit = submit  # type: ignore[method-assign]
    engine.after_bar.append(watch)
    with capture_logs() as logs:
        await engine.run_until_done()
    assert len(failed) == down and engine.broker_failures == down
    first, last = failed[0][0], failed[-1][0]
    [start] = [e for e in logs if e["event"] == "broker.unavailable"]
    assert (start["time"], start["orders"], start["log_level"]) == (first, failed[0][1], "error")
    repeats = [
        e for e in logs if e["event"] == "broker.still_unavailable" and e["log_level"] == "error"
    ]
    assert 1 <= len(repeats) < down - 1
    said = {start["time"]} | {e["time"] for e in repeats}
    between = [t for t, _ in failed if t not in said]
    # Every failing bar is in a line: the first, one counted by the next repeat, or one
    # after the last repeat (counted in the end's totals).
    after = [t for t, _ in failed if t > repeats[-1]["time"]]
    assert 1 + sum(e["bars_since_last_line"] for e in repeats) + len(after) == down
    [end] = [e for e in logs if e["event"] == "broker.recovered"]
    assert end["since"] == first and end["last_failed"] == last
    assert end["time"] > last and end["down_for_s"] == (end["time"] - first).total_seconds()
    assert (end["bars"], end["orders"]) == (down, sum(n for _, n in failed))
    # The orders closed as not placed: warned of on the bars said, at debug on the others.
    not_placed = [e for e in logs if e["event"] == "orders.not_placed"]
    assert len(not_placed) == down
    assert {e["time"] for e in not_placed if e["log_level"] == "warning"} == said
    assert between and {e["time"] for e in not_placed if e["log_level"] == "debug"} == set(between)
    # /status's broker_outage while it lasted, none after.
    shown = [s for s in during if s is not None]
    assert shown[0]["since"] == first and shown[-1]["bars"] == down
    assert during[-1] is None


async def test_a_new_live_run_warns_of_orders_open_at_the_broker_in_its_universe(engine_config):
    """An order placed by hand at the broker is adopted and followed; the planner places no
    entry in a symbol with a working order, so the run never traded that symbol, and only
    the broker's start-up count said anything."""
    from tradingd.app import build_engine
    from tradingd.core.types import Order, Side

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    by_hand = Order("manual-1", engine.symbols[1], Side.BUY, 5.0, panel.datetimes()[0])
    outside = Order("manual-2", "NOT_IN_UNIVERSE", Side.BUY, 5.0, panel.datetimes()[0])
    real_open = engine.broker.open_orders
    calls = [0]

    def open_orders():  # type: ignore[no-untyped-def]
        calls[0] += 1
        return [by_hand, outside, *real_open()] if calls[0] == 1 else real_open()

    engine.broker.open_orders = open_orders  # type: ignore[method-assign]
    engine.after_bar.append(lambda t, v: engine.request_stop())
    with capture_logs() as logs:
        await engine.run_until_done()
    [warned] = [e for e in logs if e["event"] == "broker.foreign_open_orders"]
    assert warned["symbols"] == [engine.symbols[1]] and warned["orders"] == ["manual-1"]
    assert warned["log_level"] == "warning"


async def test_a_live_broker_unreachable_at_start_is_retried_not_fatal(engine_config):
    """Alpaca unreachable while the daemon starts raised out of the engine: exit code 2, as
    for a configuration error, where a data source down at start is retried. Retried with
    backoff now; a stop meanwhile ends the start cleanly."""
    from tradingd.app import build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    real_start = engine.broker.start
    failures = [2]
    waits: list[float] = []

    async def flaky_start():
        if failures[0] > 0:
            failures[0] -= 1
            raise RetryableError("Alpaca trading API at http://127.0.0.1:1 unreachable")
        await real_start()

    async def no_wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    engine.broker.start = flaky_start  # type: ignore[method-assign]
    engine._sleep_unless_stopped = no_wait  # type: ignore[method-assign]
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert waits == [1.0, 2.0]
    assert [e["part"] for e in logs if e["event"] == "startup.retry"] == ["SimulatedBroker"] * 2
    assert result.bars == 30 and result.orders > 0

    stopped = build_engine(config, "live", panel=panel)

    async def down():
        raise RetryableError("unreachable")

    async def stop_while_waiting(seconds: float) -> bool:
        stopped.request_stop()
        return True

    stopped.broker.start = down  # type: ignore[method-assign]
    stopped._sleep_unless_stopped = stop_while_waiting  # type: ignore[method-assign]
    result = await stopped.run_until_done()
    assert result.bars == 0
    assert stopped.lock.lock is not None and not stopped.lock.lock.held  # released again


async def test_a_stop_during_the_warm_ups_history_fetch_ends_it_at_once(engine_config):
    """A vendor's history is fetched before its first warm-up bar (minutes under Alpha
    Vantage's 5 calls a minute); a stop was seen only after it, past systemd's stop timeout
    (86 s seen)."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    fetching = asyncio.Event()
    cancelled: list[bool] = []

    async def slow_history(resumed_from=None):
        fetching.set()
        try:
            await asyncio.Event().wait()  # the vendor, still answering
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        yield  # pragma: no cover

    async def stop_once_fetching():
        await fetching.wait()
        engine.request_stop()

    engine._warmup = slow_history
    stopper = asyncio.create_task(stop_once_fetching())
    result = await asyncio.wait_for(engine.run_until_done(), timeout=30)
    await stopper
    assert cancelled == [True] and result.bars == 0 and result.warmup_bars == 0


async def test_a_stop_during_a_live_bars_fetch_ends_it_at_once(engine_config):
    """A vendor's fetch of the current bar (minutes for a large universe at Alpha Vantage's
    5 calls a minute, or a slow answer per symbol) was awaited whole: a stop took 192 s,
    past systemd's stop timeout (60 s), which kills the process without its exit line."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    bars = engine.feed.bars
    fetching = asyncio.Event()
    cancelled: list = []

    async def slow(t):  # type: ignore[no-untyped-def]
        if t < times[65]:
            return await bars(t)
        fetching.set()
        try:
            await asyncio.Event().wait()  # the vendor, still answering
        except asyncio.CancelledError:
            cancelled.append(t)
            raise

    engine.feed.bars = slow  # type: ignore[method-assign]

    async def stop_once_fetching():
        await fetching.wait()
        engine.request_stop()

    stopper = asyncio.create_task(stop_once_fetching())
    result = await asyncio.wait_for(engine.run_until_done(), timeout=30)
    await stopper
    assert cancelled == [times[65]] and result.stopped_early
    assert engine.last_bar_time == times[64]  # the bar being fetched was not stepped


async def test_a_stop_while_the_broker_hangs_books_what_it_can_within_a_bound(
    engine_config, monkeypatch
):
    """At the stop the engine asks the broker for its last updates; Alpaca hanging (each
    call up to its timeout, retried) kept the stop for 74 s, past systemd's 60. The start's
    first reconciliation was awaited the same way."""
    from tradingd.app import build_engine
    from tradingd.core.types import BrokerUpdate
    from tradingd.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "_STOP_UPDATES_S", 0.3, raising=False)
    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    hung: list[str] = []

    async def hanging_updates() -> BrokerUpdate:
        hung.append("updates")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    engine.broker.updates = hanging_updates  # type: ignore[attr-defined]
    engine.after_bar.append(lambda t, v: engine.request_stop() if engine._bars == 3 else None)
    result = await asyncio.wait_for(engine.run_until_done(), timeout=30)
    assert result.stopped_early and result.bars == 3 and hung

    # The first reconciliation, while the broker does not answer (another run: the first
    # one's checkpoint would be continued).
    other = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id="test-live-2"))
    engine = build_engine(other, "live", panel=panel)
    asking = asyncio.Event()

    async def hanging_positions() -> dict:
        asking.set()
        await asyncio.Event().wait()
        return {}

    engine.broker.positions = hanging_positions  # type: ignore[attr-defined]

    async def stop_once_asked():
        await asking.wait()
        engine.request_stop()

    stopper = asyncio.create_task(stop_once_asked())
    result = await asyncio.wait_for(engine.run_until_done(), timeout=30)
    await stopper
    assert result.stopped_early and result.bars == 0


async def test_bars_a_vendor_posted_late_are_stored_not_stepped(engine_config):
    """A symbol's bar the vendor posted after its release (`feed.bar_late`) was in no
    table: the stored bars lacked it and replay-check replayed the same hole."""
    from tradingd.app import build_engine
    from tradingd.core.types import CrossSection

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    n = len(panel.symbols)
    late_close = np.full(n, np.nan)
    late_close[0] = 123.0
    volume = np.where(late_close > 0, 1e3, np.nan)
    late = CrossSection(
        times[62], late_close, late_close, late_close, late_close, volume, np.ones(n), np.zeros(n)
    )
    handed: list = [[late]]

    def take() -> list:  # once, after the bar it belongs to was stepped
        after = engine.last_bar_time is not None and engine.last_bar_time > times[64]
        return handed.pop() if handed and after else []

    engine.feed.take_late_bars = take  # type: ignore[attr-defined]
    stepped = _record_steps(engine)
    await engine.run_until_done()
    assert [t for t, _ in stepped].count(times[62]) == 1  # not stepped again
    store = engine.store
    await store.start()
    try:
        rows = [r for r in await store.fetch_bars() if r["time"] == times[62]]
    finally:
        await store.stop()
    closes = {r["symbol"]: r["close"] for r in rows}
    assert closes[panel.symbols[0]] == 123.0
    assert closes[panel.symbols[1]] == panel.close[62, 1]  # the others as stepped


async def test_a_bar_that_carried_a_held_bars_dividend_is_stored_as_the_vendor_has_it(
    engine_config,
):
    """The live feed serves a held bar's dividend with the symbol's next bar and hands back
    the held bar (with it) and that next bar as the vendor has it (without) as late bars
    after the step: the store upserts them, so the stored bars hold the dividend once, at
    its own bar (a replay of them pays it once), while the book got it at the bar served."""
    from tradingd.app import build_engine
    from tradingd.core.types import CrossSection

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    n = len(panel.symbols)

    def row(i: int, dividend: float) -> CrossSection:
        div = np.zeros(n)
        div[0] = dividend
        return CrossSection(
            times[i],
            *(np.asarray(a[i], dtype=np.float64).copy() for a in (panel.open, panel.high)),
            *(np.asarray(a[i], dtype=np.float64).copy() for a in (panel.low, panel.close)),
            np.asarray(panel.volume[i], dtype=np.float64).copy(),
            np.ones(n),
            div,
        )

    held, carrying = row(69, 5.0), row(70, 0.0)
    step = engine.step

    async def serving(bar, trade=None):  # type: ignore[no-untyped-def]
        if bar.time == times[70]:  # as the feed serves it: the held bar's dividend carried
            bar = dataclasses.replace(bar, dividend=row(70, 5.0).dividend)
        await step(bar, trade)

    engine.step = serving
    handed: list = [[held, carrying]]

    def take() -> list:  # right after the carrying bar was stepped
        return handed.pop() if handed and engine.last_bar_time == times[70] else []

    engine.feed.take_late_bars = take  # type: ignore[attr-defined]
    await engine.run_until_done()
    assert not handed
    store = engine.store
    await store.start()
    try:
        rows = [r for r in await store.fetch_bars() if r["symbol"] == panel.symbols[0]]
    finally:
        await store.stop()
    dividends = {r["time"]: r["dividend"] for r in rows}
    assert dividends[times[69]] == 5.0
    assert dividends[times[70]] == 0.0
    assert sum(dividends.values()) == 5.0


async def test_a_pause_while_the_broker_start_is_retried_survives_a_stop_then(
    engine_config, tmp_path
):
    """Before the run is resumed a control lives in memory (`_resume` stores it). With the
    broker's start retried (an outage) and a stop then, the run was never resumed: the pause
    answered 200 was lost, and the next start traded."""
    from tradingd.app import EngineControls, build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 3 else None)
    await first.run_until_done()
    assert _stored_trading_state(tmp_path / "store.db") == "active"

    restarted = build_engine(config, "live", panel=panel)

    async def down():
        raise RetryableError("Alpaca trading API unreachable")

    async def pause_then_stop(seconds: float) -> bool:
        answer = await EngineControls(restarted).pause()
        assert answer["state"] == "paused"
        restarted.request_stop()
        return True

    restarted.broker.start = down  # type: ignore[method-assign]
    restarted._sleep_unless_stopped = pause_then_stop  # type: ignore[method-assign]
    await restarted.run_until_done()
    assert _stored_trading_state(tmp_path / "store.db") == "paused"


async def test_a_cancel_of_an_order_closed_before_the_plan_does_not_drop_the_plan(
    engine_config,
):
    """A resumed plan cancels orders that may have closed before the restart: their fills
    were booked long ago. Only an order open when the plan was made counts (its fills then
    are new to the plan)."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, orders=dataclasses.replace(config.orders, brackets=True))
    engine = build_engine(config, "live", panel=panel)
    cancelled, sent = _first_cancel_comes_back_filled(engine)
    real_open = engine.broker.open_orders
    hide = [False]

    def open_orders():  # type: ignore[no-untyped-def]
        return [] if hide[0] else real_open()

    real_check = engine._cancel_then_check

    async def check(plan, t, *why):  # type: ignore[no-untyped-def]
        hide[0] = True  # as after a restart: the cancelled orders are closed already
        try:
            return await real_check(plan, t, *why)
        finally:
            hide[0] = False

    engine.broker.open_orders = open_orders
    engine._cancel_then_check = check  # type: ignore[method-assign]
    with capture_logs() as logs:
        await engine.run_until_done()
    [(bar, symbol)] = cancelled
    assert (bar, symbol) in sent  # the plan's sale went out
    assert not [e for e in logs if e["event"] == "plan.dropped_after_fill"]


async def test_a_flatten_closes_a_position_whose_entry_order_still_works(engine_config):
    """The planner skips a symbol with a working entry (it waits for it): a flatten left
    that position held, went on to "paused" after one bar, and the position stayed, with its
    buy order still working. The adding entry is cancelled and the position sold; the state
    stays "flattening" until nothing is held or working, then "paused"."""
    from tradingd.app import EngineControls, build_engine
    from tradingd.core.types import Order, Side

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    broker = engine.broker
    real_open, real_cancel, real_submit = broker.open_orders, broker.cancel, broker.submit
    injected: list[Order] = []
    cancelled: list[tuple[int, str]] = []
    sold: list[tuple[int, str]] = []
    states: list[str] = []

    def open_orders():  # type: ignore[no-untyped-def]
        return [*injected, *real_open()]

    async def cancel(cid, reason=""):  # type: ignore[no-untyped-def]
        cancelled.append((engine._bars, cid))
        if any(o.client_order_id == cid for o in injected):
            injected.clear()  # the broker cancels it
            return None
        return await real_cancel(cid, reason)

    async def submit(orders):  # type: ignore[no-untyped-def]
        sold.extend((engine._bars, o.symbol) for o in orders if o.side is Side.SELL)
        return await real_submit(orders)

    broker.open_orders, broker.cancel, broker.submit = open_orders, cancel, submit
    flatten_at: list[tuple[int, str]] = []

    def after(t, v):  # type: ignore[no-untyped-def]
        states.append(engine.trading_state)
        held = [s for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True) if q]
        if not flatten_at and held:
            # A buy still working at the broker in a held symbol, then the flatten.
            symbol = held[0]
            flatten_at.append((engine._bars, symbol))
            injected.append(
                Order(
                    f"{engine.run.run_id}|20990101T000000|{symbol}|entry|1",
                    symbol,
                    Side.BUY,
                    3.0,
                    t,
                )
            )
            asyncio.get_running_loop().create_task(EngineControls(engine).flatten())

    engine.after_bar.append(after)
    await engine.run_until_done()
    [(asked, symbol)] = flatten_at
    # The flatten bar: the first after the control, which lands between bars (the next one,
    # or a later one when the accelerated clock's next bar takes the lock first).
    bar, cid = cancelled[0]
    assert bar >= asked and cid.endswith(f"|{symbol}|entry|1")
    assert (bar, symbol) in sold  # sold on the flatten bar, not skipped
    assert not engine.portfolio.quantity.any()
    assert states[bar] == "flattening" and states[-1] == "paused"


def test_the_planner_sees_another_runs_entries_but_not_its_protective_exits(engine_config):
    """Two runs on one Alpaca account (a new run after a signal's parameter changed): the
    new run's planner took the old run's stop and take-profit for exits of a position it
    does not hold and cancelled them, leaving the old run's shares unprotected."""
    from types import SimpleNamespace

    from tradingd.app import build_engine
    from tradingd.core.types import Leg, Order, Side

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    t = panel.datetimes()[0]
    own = engine.run.run_id
    orders = [
        Order(f"{own}|x|S00|sl|1", "S00", Side.SELL, 1.0, t, leg=Leg.STOP_LOSS),
        Order("older-run-live-0123456789|x|S01|sl|1", "S01", Side.SELL, 1.0, t, leg=Leg.STOP_LOSS),
        Order(
            "older-run-live-0123456789|x|S02|tp|1", "S02", Side.SELL, 1.0, t, leg=Leg.TAKE_PROFIT
        ),
        Order("by-hand-1", "S03", Side.BUY, 1.0, t),
    ]
    engine.broker = SimpleNamespace(open_orders=lambda: orders)  # a live account's broker
    seen = [o.client_order_id for o in engine._plannable_orders()]
    assert seen == [f"{own}|x|S00|sl|1", "by-hand-1"]


async def test_reset_halt_after_the_engine_stopped_is_refused(engine_config):
    from tradingd.app import EngineControls, build_engine
    from tradingd.core.errors import EngineStoppedError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    engine.after_bar.append(lambda t, v: engine.request_stop() if engine._bars == 2 else None)
    await engine.run_until_done()
    with pytest.raises(EngineStoppedError, match="no kill switch was reset"):
        await EngineControls(engine).reset_halt()
    with pytest.raises(EngineStoppedError):
        await EngineControls(engine).flatten()


async def test_a_reconciliation_that_fails_unexpectedly_is_logged_and_retried(engine_config):
    """Only RetryableError was caught: any other error ended the reconciling task without a
    word (/ready kept the last good round), and the stop raised it, skipping the run's end."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    calls: list[int] = []

    async def positions() -> dict[str, float]:
        calls.append(engine._bars)
        if len(calls) == 2:  # the first periodic round (the first is the start's)
            raise KeyError("qty")  # an answer without the field the code reads
        return dict(zip(engine.symbols, map(float, engine.portfolio.quantity), strict=True))

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine.reconcile_interval_s = 0.0
    ended: list[str] = []
    end_run = engine.store.end_run

    async def recorded_end(run_id, summary):  # type: ignore[no-untyped-def]
        ended.append(run_id)
        await end_run(run_id, summary)

    engine.store.end_run = recorded_end  # type: ignore[method-assign]
    engine.after_bar.append(lambda t, v: engine.request_stop() if len(calls) >= 4 else None)
    with capture_logs() as logs:
        await engine.run_until_done()
    [failed] = [e for e in logs if e["event"] == "reconcile.failed"]
    assert failed["log_level"] == "error"
    assert len(calls) >= 4  # it went on after the failure
    assert ended == ["test-live"]
    assert engine.reconcile_error is None  # the later rounds succeeded


async def test_a_live_start_with_only_a_changed_risk_limit_continues_the_stored_run(engine_config):
    """A risk limit applied by SIGHUP and a later restart from the same file: the file's
    hash names another run, and the daemon began afresh (the simulated cash from the start,
    a pause lost). It continues the stored run under its id now, and says so; a change in
    what defines the run (a signal's parameter) still makes a new run."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine, continued_live_run, run_id_for

    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id=""))
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 5 else None)
    await first.run_until_done()
    assert first.result().orders  # it traded: there is an account to continue

    [risk] = config.risk
    changed = dataclasses.replace(
        config,
        risk=[dataclasses.replace(risk, params={**risk.params, "max_position_pct": 0.2})],
        live=dataclasses.replace(config.live, reconcile_interval_s=60.0),
    )
    assert run_id_for(changed, "live") != first.run.run_id
    with capture_logs() as logs:
        continued = await continued_live_run(changed)
        assert continued == first.run.run_id
        restarted = build_engine(changed, "live", panel=panel, run_id=continued)
        await restarted.run_until_done()
    assert restarted.resumed_from is not None
    [said] = [e for e in logs if e["event"] == "run.continued"]
    assert said["run_id"] == first.run.run_id
    assert said["instead_of"] == run_id_for(changed, "live")
    assert sorted(said["differing"]) == [
        "live.reconcile_interval_s",
        "risk[0].params.max_position_pct",
    ]
    assert not [e for e in logs if e["event"] == "run.not_continued"]
    assert restarted.pipeline.risks[0].config.max_position_pct == 0.2  # the new limit applies

    [signal] = config.signals
    other = dataclasses.replace(
        changed, signals=(dataclasses.replace(signal, params={"lookback": 30}),)
    )
    with capture_logs() as logs:
        assert await continued_live_run(other) is None
    assert not [e for e in logs if e["event"] == "run.continued"]


async def test_a_control_made_while_the_daemon_starts_wins_over_the_resumed_checkpoint(
    engine_config,
):
    """The health server answers while the store and lock start: a pause then set only the
    state in memory, which the resumed checkpoint's "active" overwrote, and the daemon
    traded after answering "paused"."""
    from tradingd.app import EngineControls, build_engine

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 5 else None)
    await first.run_until_done()

    restarted = build_engine(config, "live", panel=panel)
    answer = await EngineControls(restarted).pause()  # before run_until_done: starting
    assert answer["state"] == "paused"
    states: list[str] = []
    restarted.after_bar.append(lambda t, v: states.append(restarted.trading_state))
    result = await restarted.run_until_done()
    assert restarted.resumed_from is not None
    assert states and set(states) == {"paused"}
    assert result.orders == first.result().orders  # nothing ordered after the pause


async def test_two_instances_of_a_plugin_keep_their_own_state_across_a_restart(engine_config):
    """Two drawdown guards (a tight one that halts until reset, a loose one): the checkpoint
    kept plugin state by name, so the second overwrote the first, and after a restart the
    halted guard came back unhalted and new entries went in."""
    import dataclasses

    from tradingd.app import build_engine
    from tradingd.config import PluginSpec

    panel, config = live_run(engine_config)
    guards = (
        PluginSpec("drawdown_guard", params={"max_drawdown_pct": 0.5, "recovery": "halt"}),
        PluginSpec("drawdown_guard", params={"max_drawdown_pct": 0.6}),
    )
    config = dataclasses.replace(config, risk=guards)
    first = build_engine(config, "live", panel=panel)
    tight, loose = first.pipeline.risks

    def halt_then_stop(t, v):  # type: ignore[no-untyped-def]
        if first._bars == 3:
            tight._halted_bars = 0  # as a breach does; the checkpoint after bar 4 keeps it
        if first._bars == 5:
            first.request_stop()

    first.after_bar.append(halt_then_stop)
    await first.run_until_done()
    assert tight._halted_bars is not None and loose._halted_bars is None

    restarted = build_engine(config, "live", panel=panel)
    restarted.after_bar.append(lambda t, v: restarted.request_stop())
    await restarted.run_until_done()
    again_tight, again_loose = restarted.pipeline.risks
    assert again_tight._halted_bars is not None, "the halted guard stays halted"
    assert again_loose._halted_bars is None


async def test_what_the_plugins_get_is_read_only(engine_config, synthetic_panel):
    """A plugin writing into its inputs changed what the planner and every later plugin read
    (quantity: the planner sold 1,000 shares a bar; tradable: no order at all), the data of
    later bars and runs (the bar's prices, the history window, the feature rows), or the
    stored score. Each input is now read-only: such a write is the plugin's error (named),
    and the arrays the engine keeps are unchanged."""
    from tradingd.app import build_engine

    engine = build_engine(engine_config, "backtest", panel=synthetic_panel)
    sizing = engine.pipeline.sizing
    size = sizing.size
    seen: list[dict[str, bool]] = []
    seen_bases: list[np.ndarray] = []

    def spying(score, ctx):  # type: ignore[no-untyped-def]
        arrays = {
            "score": score,
            "close": ctx.bar.close,
            "mark": ctx.mark,
            "tradable": ctx.tradable,
            "quantity": ctx.portfolio.quantity,
            "weights": ctx.portfolio.weights,
            "history": ctx.history.window("close", 2),
            **{f"feature {k}": v for k, v in ctx.features.items()},
        }
        seen.append({k: bool(a.flags.writeable) for k, a in arrays.items()})
        seen_bases.extend(a.base for a in (ctx.bar.close, ctx.bar.open) if a.base is not None)
        return size(score, ctx)

    sizing.size = spying  # type: ignore[method-assign]
    await engine.run_until_done()
    assert seen and len(seen) == engine._bars
    assert any(k.startswith("feature ") for k in seen[-1])
    writable = {k for bar in seen for k, w in bar.items() if w}
    assert not writable, writable
    # Nor is the array a view points to (`.base`): writing through it changed every later
    # bar's prices and fills (a plugin halving the future opens halved the broker's fills).
    assert seen_bases and not any(b.flags.writeable for b in seen_bases)
    with pytest.raises(ValueError, match="read-only"):
        seen_bases[0][-1] *= 0.5


async def test_a_sizing_that_shorts_in_a_long_only_run_closes_longs_instead(
    engine_config, synthetic_panel
):
    """equal_weight with allow_short = true and the broker's default allow_short = false (the
    configuration is accepted): a long whose target turned negative got a sale of the long
    plus the short, refused whole every bar, so the long was held on."""
    import dataclasses

    from structlog.testing import capture_logs

    from tradingd.app import build_engine
    from tradingd.config import PluginSpec

    sizing = PluginSpec(
        "equal_weight", params={"max_positions": 3, "gross_exposure": 0.9, "allow_short": True}
    )
    config = dataclasses.replace(engine_config, sizing=sizing)
    assert config.broker.allow_short is False
    engine = build_engine(config, "backtest", panel=synthetic_panel)
    lowest: list[float] = []
    engine.after_bar.append(lambda t, v: lowest.append(float(engine.portfolio.quantity.min())))
    with capture_logs() as logs:
        result = await engine.run_until_done()
    repaired = [e for e in logs if e["event"] == "engine.targets_repaired"]
    assert repaired and repaired[0]["kind"] == "short_target"
    assert min(lowest) >= 0  # never short
    assert result.rejections == {}, result.rejections  # no sale refused for want of shares


async def test_a_bar_the_source_failed_to_deliver_is_fetched_before_the_next(engine_config):
    """A few seconds of vendor errors at a bar's release lost that bar for good (the next
    release fetched only its own): the day was not traded, and the features and model
    windows were computed across the hole. It is now fetched again before the next bar
    and stepped as a catch-up bar; the next bar trades as usual."""
    from tradingd.app import build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    down = {times[70], times[71]}  # two releases in a row fail, once each
    bars = engine.feed.bars

    async def flaky(t):  # type: ignore[no-untyped-def]
        if t in down:
            down.discard(t)
            raise RetryableError("yahoo: no symbol could be fetched (kinds: http_5xx)")
        return await bars(t)

    engine.feed.bars = flaky  # type: ignore[method-assign]
    stepped = _record_steps(engine)
    with capture_logs() as logs:
        await engine.run_until_done()
    seen = [t for t, _ in stepped if t >= times[60]]
    assert seen == times[60:], "every bar, in order, none lost"
    assert dict(stepped)[times[70]] is False and dict(stepped)[times[71]] is False
    assert dict(stepped)[times[72]] is not False  # the bar that arrived trades
    recovered = [e for e in logs if e["event"] == "bar.recovered"]
    assert [e["time"] for e in recovered] == [times[70], times[71]]
    assert engine.bars_unavailable == 2
    # One outage of two bars: the first recovered bar said, the second counted (a source
    # down for hours wrote an info line for each of up to 260 bars at once).
    assert [e["log_level"] for e in recovered] == ["info", "debug"]
    [end] = [e for e in logs if e["event"] == "feed.recovered"]
    assert (end["time"], end["since"], end["last_unavailable"]) == (times[72], times[70], times[71])
    assert (end["bars"], end["recovered"], end["lost"]) == (2, 2, 0)


async def test_bars_the_source_could_not_deliver_alert_repeated_errors_then_resolve(
    engine_config,
):
    """With the source down for several bars, `repeated_errors` never fired: an unavailable
    bar is never stepped, so the rules (run after a stepped bar) did not see it, and the
    first good bar after the outage counted one bad bar and the next cleared it. Each
    unavailable bar counts now: fired once during the outage, resolved by the bar that
    arrives. The rules count the engine's `bars_unavailable`, not log lines: the outage's
    later bars, debug lines counted in `feed.still_unavailable` (FeedOutage), count the
    same."""
    from tradingd.app import build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    down = [True]  # the source is down from bar 70 until bar 75 is released
    bars = engine.feed.bars

    async def outage(t):  # type: ignore[no-untyped-def]
        if t == times[75]:
            down[0] = False
        if down[0] and t >= times[70]:
            raise RetryableError("yahoo: no symbol could be fetched (kinds: http_5xx)")
        return await bars(t)

    engine.feed.bars = outage  # type: ignore[method-assign]
    with capture_logs() as logs:
        await engine.run_until_done()
    assert engine.bars_unavailable == 5
    said = [
        (e["event"], e["title"] if e.get("kind") == "repeated_errors" else e["log_level"])
        for e in logs
        if e["event"] in ("bar.unavailable", "feed.still_unavailable", "feed.recovered")
        or e.get("kind") == "repeated_errors"
    ]
    title = "errors on 3 bars in a row"
    # A day between bars is past any wait: each later bar is said (feed.still_unavailable);
    # its bar.unavailable is a debug line.
    later = [("bar.unavailable", "debug"), ("feed.still_unavailable", "warning")]
    assert said == [
        ("bar.unavailable", "warning"),
        *later * 2,
        ("alert.firing", title),  # during the outage, once
        *later * 2,
        ("feed.recovered", "info"),
        ("alert.resolved", title),  # by the bar that arrived
    ]
    [end] = [e for e in logs if e["event"] == "feed.recovered"]
    assert (end["time"], end["bars"], end["lost"]) == (times[75], 5, 5)


async def test_a_run_whose_last_bars_never_came_says_so_at_its_end(engine_config, tmp_path):
    """The vendor's circuit stayed open to the end: each of the last bars was logged once as
    unavailable, none recovered or lost, and the run ended "run finished" with nothing
    saying those bars were never traded. The end warns now and the summary counts them."""
    import sqlite3

    from tradingd.app import build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    bars = engine.feed.bars

    async def circuit_open_from_85(t):  # type: ignore[no-untyped-def]
        if t >= times[85] or t == times[70]:  # 70: lost once 71 arrives (not recovered)
            raise RetryableError("yahoo: circuit open (kinds: http_5xx)")
        return await bars(t)

    engine.feed.bars = circuit_open_from_85  # type: ignore[method-assign]
    told: list = []  # a vendor feed moves what it carried to a lost bar on (bar_lost)
    engine.feed.bar_lost = told.append  # type: ignore[attr-defined]
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert told == [times[70]]  # the lost bar, once; the ones still missing at the end: none
    assert engine.bars_unavailable == 1 + len(times[85:])
    [warned] = [e for e in logs if e["event"] == "run.bars_never_traded"]
    assert warned["log_level"] == "warning"
    assert warned["bars"] == 1 + len(times[85:]) == result.bars_never_traded
    assert warned["still_missing"] == len(times[85:])
    assert (warned["first_missing"], warned["last_missing"]) == (times[85], times[-1])
    [stop] = [e for e in logs if e["event"] == "engine.stop"]
    assert stop["bars_never_traded"] == result.bars_never_traded
    with sqlite3.connect(tmp_path / "store.db") as con:
        (summary,) = con.execute("select summary from runs").fetchone()
    assert json.loads(summary)["bars_never_traded"] == result.bars_never_traded


async def test_a_database_down_at_a_live_start_is_waited_for_not_an_exit(
    engine_config, monkeypatch
):
    """PostgreSQL still down after storage.start_retry_s: the daemon exited 2, and a reboot
    or a maintenance of a few minutes left the systemd unit failed by its start limit. The
    store's start and the run lookup are now retried with backoff, as the broker's is."""
    from tradingd import app
    from tradingd.app import build_engine
    from tradingd.storage.buffered import DatabaseUnavailable

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    attempts: list[int] = []

    class Store:
        async def start(self) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise DatabaseUnavailable("connection refused (gave up after 8 attempts)")

    waits: list[float] = []

    async def no_wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    engine._sleep_unless_stopped = no_wait  # type: ignore[method-assign]
    assert await engine._start_part(Store()) is True
    assert len(attempts) == 3 and waits == [1.0, 2.0]

    # The run lookup before the engine is built waits the same way.
    looked: list[int] = []

    class LookupStore(Store):
        async def start(self) -> None:
            looked.append(1)
            if len(looked) < 2:
                raise DatabaseUnavailable("connection refused")

        async def stop(self) -> None:
            return None

    async def found(config, derived, store):  # type: ignore[no-untyped-def]
        return "the-run"

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(app, "open_store", lambda *a, **k: LookupStore())
    monkeypatch.setattr("tradingd.run_continuation.continued_run_id", found)
    monkeypatch.setattr(app.asyncio, "sleep", fake_sleep)
    # A PostgreSQL store (opened by the stub): a SQLite file that does not exist yet holds
    # no run to continue and is not opened at all.
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, run_id=""),
        storage=dataclasses.replace(config.storage, url="postgresql://127.0.0.1:9/none"),
    )
    assert await app.continued_live_run(config) == "the-run"
    assert len(looked) == 2 and slept == [1.0]


async def test_a_stop_during_the_recovery_of_missed_bars_is_honoured(engine_config):
    """Ten releases in a row failed, then a stop came while the first was fetched again: the
    other nine were still fetched and stepped, then the current bar fetched and traded."""
    from tradingd.app import build_engine
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    times = panel.datetimes()
    down = set(times[70:80])
    bars = engine.feed.bars
    refetched: list = []

    async def flaky(t):  # type: ignore[no-untyped-def]
        if t in down:
            down.discard(t)
            raise RetryableError("source down")
        if t < times[80] and t >= times[70]:
            refetched.append(t)
            engine.request_stop()  # SIGTERM while the first missed bar is fetched again
        return await bars(t)

    engine.feed.bars = flaky  # type: ignore[method-assign]
    stepped = _record_steps(engine)
    await engine.run_until_done()
    assert refetched == [times[70]]
    assert not [t for t, _ in stepped if t > times[70]], "nothing after the stop"


async def test_a_stop_abandons_a_part_start_that_waits(engine_config):
    """The store retries a database that is down for storage.start_retry_s on every attempt
    (60 s), with no stop check: a SIGTERM then waited past systemd's 60 s stop timeout."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    cancelled: list[bool] = []

    class Slow:
        async def start(self) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, engine.request_stop)
    started = await asyncio.wait_for(engine._start_part(Slow()), 10)
    assert started is False and cancelled == [True]


async def test_a_checkpoint_from_before_per_instance_keys_restores_as_it_did(engine_config):
    """Checkpoints written before `name#2` existed hold one entry per name (the last
    instance's, as the dict was overwritten): every instance gets it, as before the upgrade,
    not the first alone with the second fresh."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    guards = (
        PluginSpec("drawdown_guard", params={"max_drawdown_pct": 0.5, "recovery": "halt"}),
        PluginSpec("drawdown_guard", params={"max_drawdown_pct": 0.6, "recovery": "halt"}),
    )
    config = dataclasses.replace(config, risk=guards)
    first = build_engine(config, "live", panel=panel)
    _tight, loose = first.pipeline.risks

    def halt_then_stop(t, v):  # type: ignore[no-untyped-def]
        if first._bars == 3:
            loose._halted_bars = 0  # the last instance's state is the one old builds kept
        if first._bars == 5:
            first.request_stop()

    first.after_bar.append(halt_then_stop)
    # As an old build wrote it: one key per name.
    checkpoint = first._checkpoint

    def old_format(t):  # type: ignore[no-untyped-def]
        checkpoint(t)
        at, state = first._last_checkpoint
        plugins = state["plugins"]
        plugins["drawdown_guard"] = plugins.pop("drawdown_guard#2")
        first.store.record_checkpoint(first.run.run_id, at, state)

    first._checkpoint = old_format  # type: ignore[method-assign]
    await first.run_until_done()
    restarted = build_engine(config, "live", panel=panel)
    restarted.after_bar.append(lambda t, v: restarted.request_stop())
    await restarted.run_until_done()
    assert all(g._halted_bars is not None for g in restarted.pipeline.risks)


def test_the_broker_check_fails_while_the_account_may_not_trade(engine_config):
    """A broker connected to an account that may not trade (closed, blocked) passed the
    readiness check: /ready said ready while every order was refused."""
    from tradingd.app import build_engine, health_inputs

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    state = {"broker": "alpaca", "started": True, "connected": True, "mode": "stream"}
    engine.broker.status = lambda: dict(state)  # type: ignore[attr-defined]
    checks, _status, _controls = health_inputs(engine)
    (check,) = [c for c in checks if c.name == "broker"]
    assert check.probe().ok
    state["blocked"] = "trading_blocked"
    result = check.probe()
    assert not result.ok and "trading_blocked" in result.detail
    # Keys refused mid-run (the broker's status says it): the check says so, not only
    # "not connected".
    del state["blocked"]
    state |= {"connected": False, "keys_refused": "HTTP 401", "keys_refused_at": "2024-03-05"}
    result = check.probe()
    assert not result.ok and "keys refused since 2024-03-05 (HTTP 401)" in result.detail
    # Not connected for another reason the broker recorded (rate limited, say): the check
    # names it, not only "not connected".
    state |= {"keys_refused": None, "last_error": "account: HTTP 429 too many requests"}
    state["last_error_at"] = "2024-03-05T15:00:00+00:00"
    result = check.probe()
    assert not result.ok
    assert result.detail == (
        "alpaca: not connected (last error at 2024-03-05T15:00:00+00:00: "
        "account: HTTP 429 too many requests)"
    )


def card_validation_accuracy(folder) -> float:  # type: ignore[no-untyped-def]
    """The ensemble's validation directional accuracy in the card at `folder`."""
    card = json.loads((folder / "card.json").read_text())
    return float(card["metrics"]["validation"]["ensemble"]["directional_accuracy"])


async def _model_check_after_live_bars(engine_config, params):  # type: ignore[no-untyped-def]
    """(the engine, its model check, the check's answer) after 50 live bars of 3 symbols with
    ml_ensemble (`params` beside cache_dir "")."""
    from tradingd.app import build_engine, health_inputs

    _, config = live_run(engine_config)
    spec = PluginSpec("ml_ensemble", 1.0, {"cache_dir": "", **params})
    config = dataclasses.replace(config, signals=(spec,))
    panel = make_panel(n_symbols=3, n_bars=220, split_at=None)
    config = dataclasses.replace(
        config, run=dataclasses.replace(config.run, start=panel.datetimes()[170].isoformat())
    )
    engine = build_engine(config, "live", panel=panel)
    await engine.run_until_done()
    checks, _status, _controls = health_inputs(engine)
    (check,) = [c for c in checks if c.name == "model"]
    return engine, check, check.probe()


async def test_the_model_check_compares_with_the_cards_test_split(engine_config, tmp_path):
    """The check put the live accuracy beside the card's validation figure, measured on the
    windows that early-stopped the model and calibrated its confidence (optimistic), though
    a card trained now holds a test split that tuned nothing (`metrics.test`). It now
    compares with the test split, the validation figure kept in its data only."""
    from tiny_models import model_folder

    def with_test_split(card):  # type: ignore[no-untyped-def]
        test = json.loads(json.dumps(card["metrics"]["validation"]))
        test["ensemble"]["directional_accuracy"] = 0.5
        card["metrics"]["test"] = test

    folder = model_folder(tmp_path / "m", edit=with_test_split)
    _, _, result = await _model_check_after_live_bars(engine_config, {"model_dir": str(folder)})
    live = result.data["ml_ensemble"]["live"]
    assert live["card_split"] == "test" and live["card"] == live["test"] == 0.5
    shipped = card_validation_accuracy(folder)
    assert live["validation"] == pytest.approx(shipped, abs=1e-6)  # kept beside it
    assert "(card's test split 50.0%)" in result.detail and "validation" not in result.detail


async def test_the_model_check_says_how_often_the_live_forecasts_were_right(
    engine_config, tmp_path
):
    """The specification's health checks include "Model Performance: ML model accuracy":
    the model check named the model only. It now reports the forecasts' directional
    accuracy on the bars traded, beside the card's test split (a card without one, as the
    shipped card: its validation figure, said to be optimistic)."""
    from tiny_models import model_folder

    from tradingd import metrics

    def without_test_split(card):  # type: ignore[no-untyped-def]
        card["metrics"].pop("test", None)  # as every card trained before the test split
        card.pop("test_range", None)

    folder = model_folder(tmp_path / "m", edit=without_test_split)
    params = {"model_dir": str(folder)}
    engine, check, result = await _model_check_after_live_bars(engine_config, params)
    live = result.data["ml_ensemble"]["live"]
    # 50 traded bars of 3 symbols: the forecasts of the first 49 were scored (a symbol's
    # flat bar or a zero forecast counts neither way).
    assert 0 < live["forecasts"] <= 49 * 3 and live["bars"] <= 49
    assert 0.0 <= live["directional_accuracy"] <= 1.0
    validation = card_validation_accuracy(folder)
    assert live["validation"] == pytest.approx(validation, abs=1e-6)  # the card's
    assert result.ok and "ml_ensemble direction right" in result.detail
    # A card without a test split: its validation figure, said to be optimistic.
    assert live["card_split"] == "validation" and live["test"] is None
    assert live["card"] == live["validation"]
    said = f"(card's validation windows {validation:.1%}, no test split: optimistic"
    assert said in result.detail
    # And in /metrics, for an alert on a model that decays.
    gauge = metrics.MODEL_ACCURACY.labels(plugin="ml_ensemble")._value.get()
    assert gauge == pytest.approx(live["directional_accuracy"])
    # A published model that failed to load (the old one serving) fails the check, naming
    # the folder: the plugin's status() said so, and /ready did not ask it.
    ((plugin, _),) = engine.pipeline.signals
    plugin.status = lambda: {
        "ok": False,
        "detail": "models/current names models/v2, which is not served (card mismatch)",
        "not_served": "models/v2",
    }
    result = check.probe()
    assert not result.ok and result.detail.startswith("ml_ensemble: models/current names")
    assert result.data["ml_ensemble"]["not_served"] == "models/v2"


class _BarCounter:
    """A stateful signal: the times of the bars it has scored, kept through `state()` /
    `restore()` (a third-party plugin's own count, window or model state)."""

    kind: ClassVar[str] = "signal"
    Config = _AlwaysLongConfig

    def __init__(self, config, symbols):
        self.name = "bar_counter"
        self.seen: list[str] = []
        self.restored: list[list[str]] = []

    def required_features(self):
        return ()

    def score(self, ctx):
        self.seen.append(ctx.time.isoformat())
        return np.where(ctx.tradable, 1.0, np.nan)

    def state(self):
        return {"seen": list(self.seen)}

    def restore(self, state):
        self.restored.append(list(state["seen"]))
        self.seen = list(state["seen"])


@pytest.mark.parametrize("stop_after", [30, 65], ids=["in-warm-up", "trading"])
async def test_a_stateful_signal_sees_each_bar_once_across_a_restart(
    engine_config, monkeypatch, stop_after
):
    """The plugins' saved state was restored before the bars up to the checkpoint were
    replayed for features, and the replay fed those bars to the signal again: a plugin
    counting its bars counted them twice after every restart, and a resumed run drifted
    from an uninterrupted one. Its state is now the checkpoint's, then the later bars
    (stopped among the warm-up bars before the run's start, or after 5 traded bars)."""
    from tradingd.app import build_engine
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["bar_counter"] = _StubEntryPoint("bar_counter", _BarCounter)
    monkeypatch.setattr(registry, "available", lambda: eps)
    panel, config = live_run(engine_config)
    config = dataclasses.replace(config, signals=(PluginSpec("bar_counter"),))
    every_bar = [t.isoformat() for t in panel.datetimes()]
    assert len(every_bar) == 90

    whole = build_engine(
        dataclasses.replace(config, run=dataclasses.replace(config.run, run_id="whole")),
        "live",
        panel=panel,
    )
    await whole.run_until_done()
    [(counter, _)] = whole.pipeline.signals
    assert counter.seen == every_bar  # each bar once, warm-up (observed) and traded

    def stop(seen, t):  # type: ignore[no-untyped-def]
        if seen == stop_after:
            first.request_stop()

    first = build_engine(config, "live", panel=panel, on_bar=stop)
    await first.run_until_done()
    [(before, _)] = first.pipeline.signals
    assert before.seen == every_bar[:stop_after]  # 60 warm-up bars, then traded ones

    restarted = build_engine(config, "live", panel=panel)
    await restarted.run_until_done()
    assert restarted.resumed_from is not None
    [(after, _)] = restarted.pipeline.signals
    assert after.restored == [every_bar[:stop_after]]  # the checkpoint's state, once
    assert after.seen == every_bar
    stored = restarted._last_checkpoint[1]["plugins"]["bar_counter"]
    assert stored == {"seen": every_bar}


def _halting_guard(engine_config, flatten: bool, **changes):  # type: ignore[no-untyped-def]
    """Two symbols always wanted long, a drawdown guard that halts at 20% (and flattens, if
    `flatten`), live at 400 bars a second; `changes` replace more of the config."""
    from tradingd.config import LiveConfig

    guard = {
        "max_drawdown_pct": 0.2,
        "daily_loss_limit_pct": 0.05,
        "recovery": "halt",
        "flatten_on_breach": flatten,
    }
    return dataclasses.replace(
        engine_config,
        signals=(PluginSpec("always_long"),),
        sizing=PluginSpec("equal_weight", params={"max_positions": 2, "gross_exposure": 0.9}),
        risk=(PluginSpec("drawdown_guard", params=guard),),
        live=LiveConfig(bars_per_second=400.0),
        **changes,
    )


@pytest.mark.parametrize(
    ("flatten", "mode"),
    [(True, "backtest"), (False, "backtest"), (True, "live"), (True, "resumed")],
    ids=["flatten", "halt", "flatten-live", "flatten-resumed"],
)
async def test_a_risk_halt_cancels_the_entries_still_working(
    engine_config, always_long, flatten, mode
):
    """S1's entry fills 10 shares a bar (10% of its volume of 100); S0 falls 60% and trips
    the drawdown guard. The planner waits for a symbol's working entry, so the entry went on
    filling through the halt (every bar of it without an expiry: the run ended holding 190
    shares of S1 under a flatten in force). A halt or flatten verdict now cancels the run's
    working entries that add exposure, as an operator's flatten does: in a replay, live,
    and live restarted during the halt."""
    from conftest import run_engine

    n = 20
    close = np.full((n, 2), 100.0)
    close[2:6, 0] = 100 * np.linspace(0.85, 0.4, 4)
    close[6:, 0] = 40.0
    volume = np.full((n, 2), 1e7)
    volume[:, 1] = 100.0
    panel = _closes_panel(close, volume)
    config = _halting_guard(
        engine_config,
        flatten,
        broker=dataclasses.replace(
            engine_config.broker, max_volume_participation=0.1, order_ttl_bars=0
        ),
    )
    if mode == "resumed":  # stopped on 01-02, its entry working; continued into the halt
        fields = ("times", "open", "high", "low", "close", "volume", "split", "dividend")
        cut = dataclasses.replace(panel, **{f: getattr(panel, f)[:2] for f in fields})
        await run_engine(config, "live", cut)
    engine, result, rows = await run_engine(
        config, "backtest" if mode == "backtest" else "live", panel
    )
    if mode == "resumed":
        assert engine.resumed_from is not None
    # S0 closes 85 on 01-03 (a 6.75% loss of the day: the daily-loss halt, decided at that
    # close), so S1's entry, decided on 01-01, filled 10 shares on 01-02 and 10 on 01-03 only.
    [first] = result.restrictions[:1]
    assert first["rule"] == "daily_loss_limit" and first["from"].startswith("2020-01-03")
    assert len(result.restrictions) == 2  # and the drawdown's from 01-07 on
    buys = [
        (pd.Timestamp(f["time"]).date().isoformat(), f["symbol"], f["quantity"])
        for f in rows["fills"]
        if f["side"] == "buy"
    ]
    assert buys == [
        ("2020-01-02", "S0", 450.0),  # 0.45 x 100,000 at the close of 100
        ("2020-01-02", "S1", 10.0),
        ("2020-01-03", "S1", 10.0),
    ]
    cancelled = [o for o in rows["orders"] if o["symbol"] == "S1" and o["status"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["filled_quantity"] == 20.0
    if flatten:  # sold on 01-08 (and 01-09: 10 shares a bar), nothing held at the end
        assert not engine.portfolio.quantity.any()
    else:  # a halt blocks new exposure and keeps what is held
        assert engine.portfolio.quantity.tolist() == [450.0, 20.0]


@pytest.mark.parametrize(
    "stop_after,stopped_at",
    [(22, "2020-01-30"), (14, "2020-01-20")],  # the breach's bar is 2020-01-20
    ids=["later", "on-the-breach"],
)
async def test_a_restart_keeps_the_risk_record_and_does_not_alert_the_halt_again(
    engine_config, always_long, stop_after, stopped_at
):
    """A live restart built a new risk record: `verdicts` (restored) was 29 while the
    counts by rule (from 0) summed to 18, the drawdown flatten in force since 2020-01-20 was
    reported from the first bar after the restart, and the kill switch alerted again. The
    record and the kill switch's alert now continue through the checkpoint."""
    from conftest import run_engine
    from structlog.testing import capture_logs

    n = 40
    close = np.full((n, 2), 100.0)
    close[10:15, 0] = 100 * np.linspace(1, 0.4, 5)
    close[15:25, 0] = 40.0
    close[25:, 0] = 60.0

    def panel(bars: int) -> Panel:
        return _closes_panel(close[:bars])

    config = _halting_guard(
        engine_config,
        True,
        # No deduplication of events: a risk limit alerted every bar of its halt showed so.
        alerts=dataclasses.replace(engine_config.alerts, dedup_window_s=0.0),
    )

    def kill_switch_alerts(logs):  # type: ignore[no-untyped-def]
        return [e for e in logs if e["event"] == "alert.firing" and e["kind"] == "kill_switch"]

    def risk_limit_alerts(logs):  # type: ignore[no-untyped-def]
        return [
            (e["event"], e["key"])
            for e in logs
            if e["event"].startswith("alert.") and e.get("kind") == "risk_limit"
        ]

    whole_config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id="whole"))
    with capture_logs() as logs:
        _, whole, _ = await run_engine(whole_config, "live", panel(n))
    # One alert as each restriction starts, one as it lifts (the halt holds to the end).
    assert risk_limit_alerts(logs) == [
        ("alert.firing", "drawdown_guard/daily_loss_limit"),
        ("alert.resolved", "drawdown_guard/daily_loss_limit"),
        ("alert.firing", "drawdown_guard/max_drawdown"),
    ]
    with capture_logs() as logs:
        await run_engine(config, "live", panel(stop_after))
    assert len(kill_switch_alerts(logs)) == 1
    assert ("alert.firing", "drawdown_guard/max_drawdown") in risk_limit_alerts(logs)
    with capture_logs() as logs:
        engine, again, _ = await run_engine(config, "live", panel(n))
    assert engine.resumed_from is not None and engine.resumed_from.date().isoformat() == stopped_at
    assert kill_switch_alerts(logs) == []  # alerted before the restart
    assert risk_limit_alerts(logs) == []  # so was the halt's risk limit
    firing = [(a["kind"], a["key"]) for a in engine.alerter.firing()]  # still firing
    assert firing == [
        ("kill_switch", "drawdown_guard"),
        ("risk_limit", "drawdown_guard/max_drawdown"),
    ]
    assert not [e for e in logs if e["event"] == "risk.restriction_started"]

    # S0 closes 85 on 01-16 and 70 on 01-17 (daily losses over 5%: halts), 55 on 01-20
    # (a drawdown of 20.25%: the flatten, until reset, to the last bar).
    restricted = [(r["rule"], r["from"][:10], r["to"][:10], r["bars"]) for r in again.restrictions]
    assert restricted == [
        ("daily_loss_limit", "2020-01-16", "2020-01-17", 2),
        ("max_drawdown", "2020-01-20", "2020-02-25", 27),
    ]
    assert again.verdicts == sum(again.verdicts_by_rule.values()) == 29
    assert again.verdicts_by_rule == {
        "drawdown_guard/daily_loss_limit": 2,
        "drawdown_guard/max_drawdown": 27,
    }
    assert (again.restrictions, again.verdicts_by_rule) == (
        whole.restrictions,
        whole.verdicts_by_rule,
    )


@pytest.mark.parametrize("mode", ["backtest", "live"])
@pytest.mark.parametrize("write", ["replace", "negate_in_place", "clear"])
async def test_a_plugin_writing_into_ctx_features_is_named_and_the_next_plugin_unaffected(
    engine_config, mode, write
):
    """ctx.features was a plain dict, one per bar, shared by every plugin: a signal that
    replaced its values changed the next signal's inputs without a word, and one that
    cleared it made the next signal fail with a KeyError blamed on that one. The mapping and
    its arrays are read-only: the write is the writer's fault, named, and the reader never
    sees another value than the feature source's."""
    from tradingd.app import build_engine

    class Scribbler:
        kind, name = "signal", "scribbler"

        def required_features(self):  # type: ignore[no-untyped-def]
            return ()

        def score(self, ctx):  # type: ignore[no-untyped-def]
            if write == "replace":
                ctx.features[feature] = -ctx.features[feature]
            elif write == "negate_in_place":
                np.negative(ctx.features[feature], out=ctx.features[feature])
            else:
                ctx.features.clear()  # type: ignore[attr-defined]
            return np.zeros(len(ctx.symbols))

    read: list[np.ndarray] = []

    class Reader(Scribbler):
        name = "reader"

        def score(self, ctx):  # type: ignore[no-untyped-def]
            read.append(np.array(ctx.features[feature]))
            return np.zeros(len(ctx.symbols))

    if mode == "live":
        panel, config = live_run(engine_config)
    else:
        panel, config = make_panel(n_bars=90, split_at=None), engine_config
    engine = build_engine(config, mode, panel=panel)
    feature = engine.features.names[0]  # one the momentum signal asked for
    engine.pipeline.signals = [(Scribbler(), 1.0), (Reader(), 1.0)]
    with pytest.raises(PluginFault, match=r"plugin 'scribbler' failed in (score|observe)"):
        await engine.run_until_done()
    assert not read, "the reader ran after a write: the write did not stop the bar"


@pytest.mark.parametrize("limit", [2.0, 0.0])
async def test_a_slow_plugin_call_is_a_warning_at_its_bar_unless_switched_off(
    engine_config, monkeypatch, limit
):
    """log.slow_plugin_s reaches the engine: a score() that took 3 s (on a fake clock the
    plugin advances) past a 2 s limit is one warning naming the plugin, the stage and the
    bar; 0 switches the warning off."""
    from tradingd.app import build_engine
    from tradingd.engine import engine as engine_module

    clock = [0.0]
    monkeypatch.setattr(engine_module, "_perf_counter", lambda: clock[0], raising=False)
    panel = make_panel(n_bars=90, split_at=None)
    slow_at = panel.datetimes()[70]
    config = dataclasses.replace(
        engine_config, log=dataclasses.replace(engine_config.log, slow_plugin_s=limit)
    )
    engine = build_engine(config, "backtest", panel=panel)
    plugin = engine.pipeline.signals[0][0]
    score = plugin.score

    def slow_once(ctx):  # type: ignore[no-untyped-def]
        if ctx.time == slow_at:
            clock[0] += 3.0
        return score(ctx)

    plugin.score = slow_once
    with capture_logs() as logs:
        await engine.run_until_done()
    slow = [e for e in logs if e["event"] == "engine.plugin_slow"]
    if limit == 0.0:
        assert slow == []
        return
    assert [(e["plugin"], e["stage"], e["time"]) for e in slow] == [(plugin.name, "score", slow_at)]
    assert slow[0]["seconds"] == pytest.approx(3.0) and slow[0]["limit_s"] == limit


async def test_a_bar_whose_audit_write_failed_leaves_no_checkpoint_in_the_store(
    engine_config, monkeypatch
):
    """A full disk failed the live audit log's write of a bar, but that bar's checkpoint was
    already in the store's buffer: the stop's last flush committed it, the restart
    truncated the torn audit line and went on from the store, and the bar's fills were
    never in the audit log. The store's checkpoint now stays at the last bar the audit
    holds."""
    import errno

    from tradingd import audit as audit_mod
    from tradingd.app import build_engine
    from tradingd.core.errors import StorageError
    from tradingd.storage.sqlite import SqliteStore

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    real = audit_mod._Sink.write
    writes = {"n": 0}

    def write(self, text):  # type: ignore[no-untyped-def]
        writes["n"] += 1
        if writes["n"] == 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text)

    monkeypatch.setattr(audit_mod._Sink, "write", write)
    with pytest.raises(StorageError, match="No space left on device"):
        await engine.run_until_done()
    done = engine._times[-1]  # the last bar whose step completed (its audit lines written)
    store = SqliteStore(engine_config.storage.url.removeprefix("sqlite:///"), process=False)
    await store.start()
    try:
        (checkpoint,) = await store.fetch("checkpoints", "test-live")
        fills = await store.fetch("fills", "test-live")
    finally:
        await store.stop()
    assert checkpoint["bar_time"] == done
    assert fills, "the run traded before the failure: the test proves nothing otherwise"


async def test_a_feeds_held_bars_are_in_the_checkpoint_and_restored_before_warm_up(
    engine_config,
):
    """A live vendor feed's held-back bars and pending carried actions (`held_state`) go
    into each checkpoint, and a restart gives them back to its feed (`restore_held`) before
    its warm-up history judges them: before, a restart between a held bar and the answer
    judging it lost the bar's split or dividend silently. A feed without the hooks (a
    replay's) is left alone."""
    from tradingd.app import build_engine

    held = {"held": [["AAA", "2024-01-07T00:00:00", [1.0, 1.0, 1.0, 1.0], 0.1, 1.0, 5.0]]}
    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    first.feed.held_state = lambda: held  # type: ignore[attr-defined]
    first.after_bar.append(lambda t, v: first.request_stop() if first._bars == 10 else None)
    await first.run_until_done()
    assert first._last_checkpoint[1]["feed"] == held
    checkpointed = first._last_checkpoint[0]

    restarted = build_engine(config, "live", panel=panel)
    order: list = []
    restarted.feed.restore_held = lambda state, through: order.append(  # type: ignore[attr-defined]
        ("restored", state, through)
    )
    step = restarted.step

    async def observed(bar, trade=None):  # type: ignore[no-untyped-def]
        order.append(("step", bar.time))
        await step(bar, trade)

    restarted.step = observed  # type: ignore[method-assign]
    restarted.after_bar.append(lambda t, v: restarted.request_stop())
    await restarted.run_until_done()
    assert order[0] == ("restored", held, checkpointed)  # with the checkpoint's bar
    assert not any(o[0] == "restored" for o in order[1:]) and len(order) > 1


async def test_a_sizing_without_targets_is_in_the_summary_json_and_its_print(
    engine_config, always_long, monkeypatch, tmp_path
):
    """A sizing that returned NaN for every symbol at every bar traded nothing, exit 0, and
    only `engine.targets_repaired` lines (the 1st, 10th, 100th) said anything: the run's end
    says it (`run.sizing_without_targets`), in summary.json and under Warnings in the
    printed summary."""
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["never_a_target"] = _StubEntryPoint("never_a_target", NeverATarget)
    monkeypatch.setattr(registry, "available", lambda: eps)
    config = dataclasses.replace(_config(engine_config), sizing=PluginSpec("never_a_target"))
    with capture_logs() as logs:
        out = await run_backtest(config, panel=_crash_panel(), output_dir=tmp_path / "out")
    assert out.summary["orders"] == 0
    bars = out.result.bars
    said = [e for e in logs if e["event"] == "run.sizing_without_targets"]
    assert [(e["plugin"], e["bars"], e["log_level"]) for e in said] == [
        ("never_a_target", bars, "warning")
    ]
    expected = [{"warning": "sizing_without_targets", "plugin": "never_a_target", "bars": bars}]
    written = json.loads((out.output_dir / "summary.json").read_text())
    assert written["warnings"] == expected
    printed = format_summary(out.summary).splitlines()
    at = next(i for i, line in enumerate(printed) if line.startswith("Warnings"))
    assert f"plugin=never_a_target, bars={bars}" in printed[at + 1]


async def test_a_signal_without_a_view_is_in_the_summary_json(engine_config, monkeypatch, tmp_path):
    """run.signal_without_view was a log line only: summary.json of a run that traded nothing
    because its one signal never had a view gave no hint of it."""
    import json

    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["never_a_view"] = _StubEntryPoint("never_a_view", NeverAView)
    monkeypatch.setattr(registry, "available", lambda: eps)
    config = dataclasses.replace(_config(engine_config), signals=(PluginSpec("never_a_view"),))
    out = await run_backtest(config, panel=_crash_panel(), output_dir=tmp_path / "out")
    assert out.summary["orders"] == 0
    written = json.loads((out.output_dir / "summary.json").read_text())
    assert written["warnings"] == [
        {"warning": "signal_without_view", "plugin": "never_a_view", "bars": out.result.bars}
    ]


async def test_a_bar_is_not_decided_once_the_instance_lock_says_it_is_lost(engine_config):
    """After a PostgreSQL restart the lock's session was gone and another daemon could take
    the lock; the engine decided bars until the lock service's next check. It now asks the
    lock (`ensure_held`) before each live bar's decisions and stops at the first "no"."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    asked: list[int] = []

    class Lock:
        """The InstanceLockService's part the engine uses: held for 5 traded bars, then lost
        (as `on_lost` does, the stop is requested)."""

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

        async def ensure_held(self) -> bool:
            asked.append(engine.bars_processed)
            if len(asked) > 5:
                engine.request_stop()
                return False
            return True

    engine.lock = Lock()
    stepped: list[datetime] = []
    engine.after_bar.append(lambda t, v: stepped.append(t))
    await engine.run_until_done()
    assert len(asked) == 6  # asked before each live bar, the sixth said "lost"
    live_bars = [
        t for t in stepped if t >= datetime.fromisoformat(config.run.start).replace(tzinfo=UTC)
    ]
    assert len(live_bars) == 5, live_bars


async def test_the_summary_counts_entries_that_expired(engine_config, tmp_path):
    """Entries the simulated broker cancelled by order_ttl_bars were in no figure of the
    summary ("Orders rejected 0"): a 5-minute run over hourly symbols lost every entry so.
    Here a volume cap leaves each entry's rest open, and order_ttl_bars = 1 expires it."""
    panel = make_panel(n_bars=120, split_at=None)
    panel = dataclasses.replace(panel, volume=np.full_like(panel.volume, 50.0))
    config = dataclasses.replace(
        engine_config,
        broker=dataclasses.replace(
            engine_config.broker, max_volume_participation=0.1, order_ttl_bars=1
        ),
    )
    out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    expired = sum(str(o.get("reason") or "").startswith("expired") for o in out.orders)
    assert expired > 0
    assert out.summary["orders_expired"] == expired
    assert "Orders expired (order_ttl_bars)" in format_summary(out.summary)
