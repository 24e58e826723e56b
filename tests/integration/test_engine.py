"""The engine end to end: replay and live produce the same orders, no lookahead, invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tradingd.clock.live import LiveClock
from tradingd.config import LiveConfig, StorageConfig
from tradingd.core.types import OrderStatus

ORDER_KEYS = (
    "client_order_id",
    "symbol",
    "side",
    "type",
    "quantity",
    "status",
    "filled_quantity",
    "avg_fill_price",
    "reason",
)
FILL_KEYS = (
    "fill_id",
    "client_order_id",
    "symbol",
    "side",
    "quantity",
    "price",
    "commission",
    "slippage",
    "time",
)


from conftest import run_engine as run  # noqa: E402


def _project(rows, keys):
    return [tuple(r[k] for k in keys) for r in rows]


async def test_replay_and_live_clock_give_identical_orders(
    engine_config, synthetic_panel, tmp_path
):
    bt_engine, bt, bt_rows = await run(engine_config, "backtest", synthetic_panel)
    live_cfg = dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=400.0),
        storage=StorageConfig(url=f"sqlite:///{tmp_path / 'live.db'}"),
        # The backtest's run id: a live start refuses its audit log in the same folder.
        log=dataclasses.replace(engine_config.log, audit_dir=str(tmp_path / "live-audit")),
    )
    live_engine, live, live_rows = await run(live_cfg, "live", synthetic_panel)

    assert isinstance(live_engine.clock, LiveClock)
    assert live_engine.clock.fired >= len(synthetic_panel.times)  # APScheduler drove it
    assert type(bt_engine.feed) is not type(live_engine.feed)
    assert bt.bars == live.bars == len(synthetic_panel.times)
    assert len(bt_rows["orders"]) > 10  # the strategy actually traded
    assert _project(bt_rows["orders"], ORDER_KEYS) == _project(live_rows["orders"], ORDER_KEYS)
    assert _project(bt_rows["fills"], FILL_KEYS) == _project(live_rows["fills"], FILL_KEYS)
    np.testing.assert_array_equal(bt.equity, live.equity)
    # The live path keeps the bars it received; the replay does not rewrite stored history.
    assert len(live_rows["bars"]) == synthetic_panel.n_bars
    assert bt_rows["bars"] == []
    # The replay's whole feature histories are gone after the run.
    first = synthetic_panel.row(0, synthetic_panel.datetimes()[0])
    with pytest.raises(RuntimeError, match="after release"):
        bt_engine.features.at(first)


async def test_no_lookahead_decisions_do_not_change_when_the_future_is_cut(
    engine_config, synthetic_panel
):
    cut = 200
    _, _, full = await run(engine_config, "backtest", synthetic_panel)
    short_panel = dataclasses.replace(
        synthetic_panel,
        times=synthetic_panel.times[:cut],
        **{
            f: getattr(synthetic_panel, f)[:cut]
            for f in ("open", "high", "low", "close", "volume", "split", "dividend")
        },
    )
    _, _, short = await run(engine_config, "backtest", short_panel)
    last = short_panel.datetimes()[-1]
    decided = [r for r in full["orders"] if r["created_at"] <= last]
    assert len(decided) > 5
    # Same decisions (ids, sides, sizes) for every bar both runs saw.
    key = ("client_order_id", "symbol", "side", "quantity")
    assert _project(decided, key) == _project(short["orders"], key)


async def test_accounting_invariants_at_every_bar(engine_config, synthetic_panel):
    seen = []
    filled_symbols: set[str] = set()
    wrapped = []

    def check(engine, i, t):
        if not wrapped:  # record every fill the broker hands to the engine
            original = engine.broker.on_bar

            async def on_bar(bar):
                update = await original(bar)
                filled_symbols.update(f.symbol for f in update.fills)
                return update

            engine.broker.on_bar = on_bar
            wrapped.append(True)
        pf = engine.portfolio
        mark = np.nan_to_num(pf.mark)
        assert pf.equity == pytest.approx(pf.cash + float(pf.quantity @ mark), rel=1e-12)
        held = {engine.symbols[k] for k in np.flatnonzero(pf.quantity)}
        assert held <= filled_symbols, f"position without a fill behind it at {t}"
        seen.append(i)

    engine, result, rows = await run(engine_config, "backtest", synthetic_panel, check)
    assert len(seen) == result.bars
    fills = rows["fills"]
    pf = engine.portfolio
    # The ledger's costs equal the costs on the fills.
    assert pf.commission_paid == pytest.approx(sum(f["commission"] for f in fills))
    assert pf.slippage_paid == pytest.approx(sum(f["slippage"] for f in fills))
    # Every share held is explained by fills (adjusted by the splits after each fill).
    panel = synthetic_panel
    times = panel.datetimes()
    for j, sym in enumerate(panel.symbols):
        q = 0.0
        for f in (f for f in fills if f["symbol"] == sym):
            k = times.index(f["time"])
            growth = float(np.prod(panel.split[k + 1 :, j]))
            q += (1 if f["side"] == "buy" else -1) * f["quantity"] * growth
        assert pf.quantity[j] == pytest.approx(q), sym
    # Cash: initial - traded notional - commissions + dividends.
    cash = (
        engine_config.run.initial_capital
        - sum(
            (1 if f["side"] == "buy" else -1) * f["quantity"] * f["price"] + f["commission"]
            for f in fills
        )
        + pf.dividends_received
    )
    assert pf.cash == pytest.approx(cash)
    # Lifecycle: every order ends in a known state, and filled ones have fills.
    filled = {f["client_order_id"] for f in fills}
    for o in rows["orders"]:
        assert o["status"] in {s.value for s in OrderStatus}
        if o["status"] == "filled":
            assert o["client_order_id"] in filled


async def test_engine_state_published_to_redis(engine_config, synthetic_panel, redis_url):
    import json
    import uuid

    import redis.asyncio as aioredis

    from tradingd.config import CacheConfig, RunConfig

    run_id = f"pub-{uuid.uuid4().hex[:8]}"
    cfg = dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, run_id=run_id),
        cache=CacheConfig(url=redis_url, expiry_s=120.0),
    )
    assert isinstance(cfg.run, RunConfig)
    engine, result, _ = await run(cfg, "backtest", synthetic_panel)
    r = aioredis.from_url(redis_url)
    try:
        key = f"tradingd:{run_id}:state"
        state = json.loads(await r.get(key))
        ttl = await r.ttl(key)
        await r.delete(key)
    finally:
        await r.aclose()
    assert state["bars"] == result.bars
    assert state["equity"] == pytest.approx(result.equity[-1])
    assert state["bar_time"] == result.times[-1].isoformat()
    held = {s: q for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True) if q}
    assert state["positions"] == held
    assert 0 < ttl <= 120
    # The state key is kept to be written again when Redis comes back after an outage.
    kept, _ = engine.cache._resend[f"{run_id}:state"]
    assert json.loads(kept) == state


async def test_signals_combine_as_weighted_mean_and_bad_plugins_fault(
    engine_config, synthetic_panel
):
    from tradingd.app import build_engine
    from tradingd.core.errors import PluginFault

    engine = build_engine(engine_config, "backtest", panel=synthetic_panel)

    class Const:
        kind = "signal"

        def __init__(self, name, value):
            self.name, self.value = name, value

        def required_features(self):
            return ()

        def score(self, ctx):
            return np.asarray(self.value, dtype=float)

    n = len(synthetic_panel.symbols)
    a = np.full(n, np.nan)
    a[:3] = [1.0, 0.5, -1.0]
    b = np.full(n, np.nan)
    b[1:4] = [-0.5, 0.0, 0.25]
    engine.pipeline.signals = [(Const("a", a), 3.0), (Const("b", b), 1.0)]
    ctx = type("Ctx", (), {"time": "t"})()
    got = engine._score(ctx)
    # only a; both (3 x 0.5 - 0.5) / 4; both (3 x -1 + 0) / 4; only b
    np.testing.assert_allclose(got[:4], [1.0, (1.5 - 0.5) / 4, -0.75, 0.25])
    assert np.isnan(got[4:]).all()
    engine.pipeline.signals = [(Const("big", np.full(n, 1.5)), 1.0)]
    with pytest.raises(PluginFault, match=r"'big' failed in score.*\[-1, 1\]"):
        engine._score(ctx)
    engine.pipeline.signals = [(Const("short", np.zeros(n - 1)), 1.0)]
    with pytest.raises(PluginFault, match=r"'short' failed in score.*shape"):
        engine._score(ctx)


async def test_a_stop_before_the_start_steps_no_bar_and_never_iterates_the_clock(
    engine_config, synthetic_panel
):
    """A stop that came before the clock started (SIGTERM during the warm-up): the engine
    still starts and stops every part, but asks the clock for no bar; without the stop the
    same engine replays every one."""
    from tradingd.app import build_engine
    from tradingd.clock.replay import ReplayClock

    asked: list[int] = []

    class CountingClock(ReplayClock):
        async def __aiter__(self):
            asked.append(1)
            async for t in super().__aiter__():
                yield t

    for stop in (True, False):
        asked.clear()
        engine = build_engine(engine_config, "backtest", panel=synthetic_panel)
        engine.clock = CountingClock(list(engine.clock._times))
        if stop:
            engine.request_stop()
        result = await engine.run_until_done()
        assert (result.bars, asked) == ((0, []) if stop else (len(synthetic_panel.times), [1]))


@pytest.mark.parametrize("reconciled", [False, True], ids=["no reconciler", "reconciler"])
async def test_a_bar_with_a_newer_one_waiting_only_catches_up(
    engine_config, synthetic_panel, reconciled
):
    """The clock's backlog (bars that closed while the daemon was stalled or down) makes a
    bar a catch-up step: features and history move, nothing is decided or ordered there.
    Without a reconciler the engine steps without its bar lock, with one (a broker that
    reports positions) under it; the rule is the same, and so are the runs."""
    from tradingd.app import build_engine
    from tradingd.clock.replay import ReplayClock

    async def replay(backlog_at):
        rows = {}

        async def collect(engine):
            rows["orders"] = await engine.store.fetch("orders", engine.run.run_id)

        engine = build_engine(engine_config, "backtest", panel=synthetic_panel, before_stop=collect)
        times = list(engine.clock._times)

        class BacklogClock(ReplayClock):
            async def __aiter__(self):
                async for t in super().__aiter__():
                    self.backlog = 1 if t in backlog_at else 0
                    yield t

        engine.clock = BacklogClock(times)
        if reconciled:

            async def positions():  # the book's own: the reconciler finds no difference
                pf = engine.portfolio
                return {s: float(q) for s, q in zip(pf.symbols, pf.quantity, strict=True)}

            engine.broker.positions = positions
        result = await engine.run_until_done()
        assert (engine.last_reconciled_at is not None) == reconciled
        assert not engine.reconcile_blocked
        return times, result, rows["orders"]

    times, reference, ref_orders = await replay(set())
    ordered_at = sorted({o["created_at"] for o in ref_orders})
    assert len(ordered_at) >= 4
    skip = set(ordered_at[1:3])  # bars that traded in the reference run
    skipped = {t for t in times if t.isoformat() in skip or t in skip}
    assert len(skipped) == 2
    _, result, orders = await replay(skipped)
    assert result.bars == reference.bars - 2
    assert result.warmup_bars == reference.warmup_bars + 2
    assert not {o["created_at"] for o in orders} & skip


async def test_a_replay_releases_its_feature_histories_before_its_report_is_read_back(
    engine_config, synthetic_panel
):
    """The whole histories are the largest thing a replay holds after its last bar, and the
    report's rows (after_last_bar, as run_backtest makes them) are when its memory peaks:
    they are gone by then, and the run's decisions had them (orders were made)."""
    from tradingd.app import build_engine

    seen = {}

    async def collect(engine):
        first = synthetic_panel.row(0, synthetic_panel.datetimes()[0])
        try:
            engine.features.at(first)
        except RuntimeError as exc:
            seen["error"] = str(exc)
        seen["orders"] = len(await engine.store.recorded("orders", engine.run.run_id))

    engine = build_engine(engine_config, "backtest", panel=synthetic_panel, after_last_bar=collect)
    assert engine.store.keep_records()
    await engine.run_until_done()
    assert "after release()" in seen.get("error", "")
    assert seen["orders"] > 10


EVENT_KEYS = ("client_order_id", "status", "filled_quantity", "reason", "time")


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
async def test_a_live_run_stores_each_order_state_once(
    engine_config, synthetic_panel, tmp_path, db, request
):
    """A live run stores each order's intent before sending it; the broker's acknowledgement,
    in the same state, is not a second event. order_events then holds what the replay of the
    same bars holds (which has no intents): every state, once. The `orders` table holds the
    same latest states either way."""
    schema = None
    if db == "sqlite":
        url = f"sqlite:///{tmp_path / 'live.db'}"
    else:
        import uuid

        import asyncpg

        pg_url = request.getfixturevalue("pg_url")
        schema = f"tradingd_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(pg_url, timeout=5)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
        url = f"{pg_url}?search_path={schema}"
    # Brackets: an entry's exits are stored as intents too, in state held.
    config = dataclasses.replace(
        engine_config, orders=dataclasses.replace(engine_config.orders, brackets=True)
    )
    live_cfg = dataclasses.replace(
        config,
        live=LiveConfig(bars_per_second=400.0),
        storage=StorageConfig(url=url, spool_dir=str(tmp_path / "spool")),
        # Its own audit folder: a live run refuses a replay's log of its run id.
        log=dataclasses.replace(config.log, audit_dir=str(tmp_path / "live-audit")),
    )
    try:
        _, _, bt_rows = await run(config, "backtest", synthetic_panel)
        _, _, live_rows = await run(live_cfg, "live", synthetic_panel)
    finally:
        if schema is not None:
            conn = await asyncpg.connect(pg_url, timeout=5)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()

    events = _project(live_rows["order_events"], EVENT_KEYS)
    assert len(live_rows["orders"]) > 10  # the strategy actually traded
    assert len(set(events)) == len(events), "an order state is stored twice"
    # Each order's first state (new, or held: a bracket's exit) once, as the replay has it.
    first: dict[str, tuple] = {}
    for e in events:
        first.setdefault(e[0], e)
    assert len(first) == len(live_rows["orders"])
    assert {e[1] for e in first.values()} == {"new", "held"}
    # The same states (a live bar stores its intents before its cancels, a replay its
    # cancels before its orders: the order of one bar's events may differ).
    replayed = _project(bt_rows["order_events"], EVENT_KEYS)
    assert sorted(events, key=repr) == sorted(replayed, key=repr)
    assert _project(live_rows["orders"], ORDER_KEYS) == _project(bt_rows["orders"], ORDER_KEYS)
