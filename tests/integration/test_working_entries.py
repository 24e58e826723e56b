"""A working entry counts in the risk chain's book: an entry waiting for its symbol's next bar
no longer gives its `max_open_positions` slot to another entry (both filled, one position
over the limit), and an entry the chain or the strategy drops before anything of it fills is
cancelled, not left to fill and be sold a bar later."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import _StubEntryPoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradingd.backtest import run_backtest
from tradingd.config import PluginSpec
from tradingd.feeds.panel import Panel

SYMS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class _ScheduleConfig:
    pass


class Scheduled:
    """Scores from a table set by the test (bar index x symbol, scaled into [-1, 1]), NaN
    where there is no bar."""

    kind: ClassVar[str] = "signal"
    Config = _ScheduleConfig
    table: ClassVar[np.ndarray] = np.zeros((0, 0))

    def __init__(self, config, symbols):
        self.name = "scheduled"

    def required_features(self):
        return ()

    def score(self, ctx):
        return np.where(ctx.tradable, self.table[ctx.index] / 4.0, np.nan)


class TableSizing:
    """Targets from a table set by the test (bar index x symbol); a symbol without a bar
    at its current weight, as every sizing plugin holds it."""

    kind: ClassVar[str] = "sizing"
    Config = _ScheduleConfig
    table: ClassVar[np.ndarray] = np.zeros((0, 0))

    def __init__(self, config, symbols):
        self.name = "table_sizing"

    def required_features(self):
        return ()

    def size(self, score, ctx):
        return np.where(ctx.tradable, self.table[ctx.index], ctx.portfolio.weights)


@pytest.fixture
def scheduled(monkeypatch):
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["scheduled"] = _StubEntryPoint("scheduled", Scheduled)
    eps["table_sizing"] = _StubEntryPoint("table_sizing", TableSizing)
    monkeypatch.setattr(registry, "available", lambda: eps)
    return Scheduled


def _panel(missing: np.ndarray, drift: float = 0.001) -> Panel:
    """Flat-ish prices (a small drift per symbol), volume far above any order (the volume
    cap never binds), and no bar where `missing` is True."""
    n_bars, n = missing.shape
    times = pd.bdate_range("2021-01-04", periods=n_bars).to_numpy(dtype="datetime64[ns]")
    close = 100.0 * np.exp(np.arange(n_bars)[:, None] * drift * (1 + np.arange(n)))
    close[missing] = np.nan
    volume = np.where(missing, np.nan, 1e9)
    return Panel(
        times=times,
        symbols=SYMS[:n],
        open=close.copy(),
        high=close * 1.001,
        low=close * 0.999,
        close=close,
        volume=volume,
        split=np.ones_like(close),
        dividend=np.zeros_like(close),
    )


def _config(engine_config, limit: int, brackets: bool):
    """At most `limit` positions, 30% of the book in all: the cash never stops an entry
    (buying power reserved for a working entry stopped the second one before the limit)."""
    return dataclasses.replace(
        engine_config,
        signals=(PluginSpec("scheduled"),),
        sizing=PluginSpec("equal_weight", params={"max_positions": limit, "gross_exposure": 0.3}),
        risk=(
            PluginSpec("max_position", params={"max_position_pct": 0.95}),
            PluginSpec("max_open_positions", params={"max_open_positions": limit}),
        ),
        orders=dataclasses.replace(
            engine_config.orders, brackets=brackets, stop_loss_pct=0.5, take_profit_pct=0.5
        ),
        broker=dataclasses.replace(engine_config.broker, max_volume_participation=0.0),
    )


def _held_counts(out, times, *, leaving: bool = False) -> list[int]:
    """How many symbols the book holds at the end of each bar, from the fills. `leaving`:
    not counting a symbol whose closing order (a market sale decided at an earlier bar) has
    not filled yet (no bar since): the strategy gave its slot up when it decided the sale."""
    fills = pd.DataFrame(list(out.fills))
    if fills.empty:
        return [0] * len(times)
    fills["time"] = pd.to_datetime(fills["time"], utc=True)
    fills["signed"] = np.where(fills["side"] == "buy", 1.0, -1.0) * fills["quantity"]
    filled_at = fills.groupby("client_order_id")["time"].max()
    sales = [
        (o["symbol"], pd.Timestamp(o["created_at"]), filled_at.get(o["client_order_id"]))
        for o in out.orders
        if o["side"] == "sell" and o["leg"] == "entry"
    ]
    counts = []
    for t in pd.to_datetime(times, utc=True):
        q = fills[fills["time"] <= t].groupby("symbol")["signed"].sum()
        held = set(q.index[q.abs() > 1e-9])
        if leaving:
            held -= {s for s, made, done in sales if made < t and (done is None or done > t)}
        counts.append(len(held))
    return counts


@pytest.mark.parametrize("brackets", [False, True])
async def test_an_entry_waiting_for_its_symbols_bar_keeps_its_slot(
    engine_config, scheduled, tmp_path, brackets
):
    """B is held from the first bars; at bar 5 the strategy moves to A (sell B, buy A); A
    has no bar at 6, so its entry works on; at 6 the strategy, blind to A, wants B again.
    Before: B's entry passed the one-slot limit (A weighed 0), and A and B both filled at 7."""
    n_bars = 14
    table = np.tile(np.array([-1.0, 2.0, 1.0]), (n_bars, 1))
    table[5:, 0] = 3.0
    missing = np.zeros((n_bars, 3), dtype=bool)
    missing[6, 0] = True
    scheduled.table = table
    panel = _panel(missing)
    out = await run_backtest(
        _config(engine_config, 1, brackets), panel=panel, output_dir=tmp_path / "out"
    )
    counts = _held_counts(out, panel.times)
    assert max(counts) == 1, counts
    fills = pd.DataFrame(list(out.fills))
    buys = fills[fills["side"] == "buy"]
    # A's entry of bar 5 filled at 7 (it kept its slot), B was bought once only (at bar 1).
    assert list(buys["symbol"]) == ["B", "A"]
    assert pd.Timestamp(buys["time"].iloc[1]) == pd.Timestamp(panel.times[7], tz="UTC")


async def test_an_entry_the_strategy_drops_before_it_fills_is_cancelled(
    engine_config, scheduled, tmp_path
):
    """A's entry of bar 3 waits through A's missing bar 4; at 5 (A has a bar again) the
    strategy no longer wants A. The entry is cancelled before it fills: no round trip
    (before: bought at 5's open, sold at 6's)."""
    n_bars = 10
    table = np.full((n_bars, 2), -1.0)
    table[3, 0] = 1.0
    missing = np.zeros((n_bars, 2), dtype=bool)
    missing[4, 0] = True
    scheduled.table = table
    panel = _panel(missing)
    # An order placed at 3 fills at the next bar A has; make bar 5 unable to fill it (no
    # volume), so that at 5's decision nothing of it has filled.
    panel.volume[5, 0] = 0.0
    out = await run_backtest(
        _config(engine_config, 2, False), panel=panel, output_dir=tmp_path / "out"
    )
    assert list(out.fills) == []
    entries = [o for o in out.orders if o["symbol"] == "A"]
    assert [o["status"] for o in entries] == ["cancelled"]
    # The strategy's decision, no risk rule's (no verdict at all in this run).
    [reason] = [o["reason"] for o in entries]
    assert reason.startswith("rebalance") and "strategy" in reason


def _sector_config(engine_config, cap: float):
    """Targets from `TableSizing`; every symbol in one sector (none is listed: "pool") whose
    gross is capped at `cap`, new entries cut before held positions."""
    return dataclasses.replace(
        engine_config,
        signals=(PluginSpec("scheduled"),),
        sizing=PluginSpec("table_sizing"),
        risk=(
            PluginSpec(
                "sector_exposure",
                params={"sectors_csv": "", "max_sector_pct": cap, "unknown": "pool"},
            ),
        ),
        broker=dataclasses.replace(engine_config.broker, max_volume_participation=0.0),
    )


def _book_at(out, t) -> pd.Series:
    """Shares held per symbol at the end of bar time `t`, from the fills."""
    f = pd.DataFrame(list(out.fills))
    f["time"] = pd.to_datetime(f["time"], utc=True)
    f = f[f["time"] <= pd.Timestamp(t, tz="UTC")]
    return (np.where(f["side"] == "buy", 1.0, -1.0) * f["quantity"]).groupby(f["symbol"]).sum()


@pytest.mark.parametrize(("a_weight", "cap"), [(0.10, 0.35), (0.20, 0.30)])
async def test_a_waiting_entry_is_held_by_every_limit_and_the_new_one_is_cut(
    engine_config, scheduled, tmp_path, a_weight, cap
):
    """A's entry (placed at bar 2) waits through A's missing bar 3, where B asks for 30% in
    a sector capped at `cap`. Before: the sector limit saw A as nothing (its target 0) and
    let B have 30%; both filled (40%, 50% of the book). It keeps A as held and cuts B."""
    n_bars = 8
    scheduled.table = np.ones((n_bars, 3))
    t = np.zeros((n_bars, 3))
    t[2:, 0] = a_weight
    t[3:, 1] = 0.30
    TableSizing.table = t
    missing = np.zeros((n_bars, 3), dtype=bool)
    missing[3, 0] = True
    panel = _panel(missing, drift=0.0)
    out = await run_backtest(
        _sector_config(engine_config, cap), panel=panel, output_dir=tmp_path / "out"
    )
    price = float(panel.close[4, 0])
    book = _book_at(out, panel.times[4])
    # A as its entry bought it (kept), B what the cap leaves; never over the cap.
    assert book["A"] == pytest.approx(round(a_weight * 100_000 / 100.0), abs=1)
    assert (book * price).sum() / 100_000 <= cap + 1e-3
    assert book["B"] * price / 100_000 == pytest.approx(cap - a_weight, abs=0.01)
    assert [o["status"] for o in out.orders if o["symbol"] == "A"] == ["filled"]


async def test_an_entry_the_chain_cuts_is_withdrawn_not_filled_in_full(
    engine_config, scheduled, tmp_path
):
    """A's 20% entry waits through A's missing bar 3; at 3 the sector cap falls to 10% (A
    is the only name): the chain cuts A to 10%. Before: the whole 20% filled at 4 and half
    was sold back at 5. The entry is cancelled; at 4 (A has a bar) A is bought at 10%."""
    n_bars = 8
    scheduled.table = np.ones((n_bars, 2))
    t = np.zeros((n_bars, 2))
    t[2:, 0] = 0.20
    TableSizing.table = t
    missing = np.zeros((n_bars, 2), dtype=bool)
    missing[3, 0] = True
    panel = _panel(missing, drift=0.0)

    from tradingd_plugins.risk import sector as sector_mod

    cap = {"value": 0.30}
    check = sector_mod.SectorExposure.check

    def tightening(self, targets, ctx):  # type: ignore[no-untyped-def]
        if ctx.index >= 3:
            cap["value"] = 0.10
        self.config = dataclasses.replace(self.config, max_sector_pct=cap["value"])
        return check(self, targets, ctx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sector_mod.SectorExposure, "check", tightening)
        out = await run_backtest(
            _sector_config(engine_config, 0.30), panel=panel, output_dir=tmp_path / "out"
        )
    a = [o for o in out.orders if o["symbol"] == "A"]
    assert [o["status"] for o in a] == ["cancelled", "filled"]
    # The cancel names the rule that cut A, with its verdict's reason: it said "rebalance:
    # position closed or cut", as if the strategy had dropped A.
    assert a[0]["reason"].startswith("risk") and "sector_exposure" in a[0]["reason"]
    assert "above limit" in a[0]["reason"]
    fills = [f for f in out.fills if f["symbol"] == "A"]
    assert [(f["side"], f["quantity"]) for f in fills] == [("buy", 100.0)]


async def test_holding_a_waiting_entry_writes_no_decision_row_each_bar(
    engine_config, scheduled, tmp_path
):
    """A's entry waits through six missing bars while B, held, moves the equity: its target
    (the weight it will have) drifted every bar, and each bar wrote a decision row for A as
    if the strategy had decided something. Holding is no decision (BufferedStore)."""
    import sqlite3

    n_bars = 14
    table = np.array([[-1.0, 2.0]] * n_bars)
    table[3:, 0] = 3.0
    missing = np.zeros((n_bars, 2), dtype=bool)
    missing[4:10, 0] = True
    scheduled.table = table
    panel = _panel(missing, drift=0.01)
    config = dataclasses.replace(
        engine_config,
        signals=(PluginSpec("scheduled"),),
        sizing=PluginSpec("equal_weight", params={"max_positions": 2, "gross_exposure": 0.6}),
        risk=(PluginSpec("max_position", params={"max_position_pct": 0.95}),),
        broker=dataclasses.replace(
            engine_config.broker, max_volume_participation=0.0, order_ttl_bars=0
        ),
    )
    await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    url = engine_config.storage.url.removeprefix("sqlite:///")
    with sqlite3.connect(url) as db:
        times = [
            pd.Timestamp(r[0])
            for r in db.execute("select time from signals where symbol = 'A' order by time")
        ]
    waiting = {pd.Timestamp(panel.times[i], tz="UTC") for i in range(4, 10)}
    assert times and not waiting & set(times)


def _table_config(engine_config, risk, **broker):
    return dataclasses.replace(
        engine_config,
        signals=(PluginSpec("scheduled"),),
        sizing=PluginSpec("table_sizing"),
        risk=risk,
        broker=dataclasses.replace(engine_config.broker, **broker),
    )


@pytest.mark.parametrize("ttl", [0, 3])
async def test_a_sale_waiting_for_its_symbols_bar_keeps_the_position_in_the_book(
    engine_config, scheduled, tmp_path, ttl
):
    """A and B held, two positions at most; at bar 4 A's sale is placed and A has no bar
    from 5 to 11; C wants in from 6. The chain must see A as held until its sale fills:
    counted as done, it let C in, and with a 3-bar time in force the sale expired before
    A's next bar (three positions for six bars)."""
    n_bars = 16
    scheduled.table = np.ones((n_bars, 3))
    t = np.zeros((n_bars, 3))
    t[1:, 0] = t[1:, 1] = 0.2
    t[4:, 0] = 0.0
    t[6:, 2] = 0.2
    TableSizing.table = t
    missing = np.zeros((n_bars, 3), dtype=bool)
    missing[5:12, 0] = True
    panel = _panel(missing, drift=0.002)
    risk = (PluginSpec("max_open_positions", params={"max_open_positions": 2}),)
    config = _table_config(engine_config, risk, max_volume_participation=0.0, order_ttl_bars=ttl)
    out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    assert max(_held_counts(out, panel.times)) == 2
    # C enters once A's sale has filled (at A's first bar back, or its sale placed then).
    c_buy = next(f for f in out.fills if f["symbol"] == "C")
    assert pd.Timestamp(c_buy["time"]) > pd.Timestamp(panel.times[12], tz="UTC")


async def test_a_withdrawn_entrys_symbol_waits_a_bar_before_its_next_order(
    engine_config, scheduled, tmp_path
):
    """A's buy (bar 2) cannot fill at 3 (no volume); at 3 the strategy wants A short. The
    buy is cancelled, and the short sale is placed at the next bar, not with the cancel: a
    live cancel may come back unconfirmed (the buy still filling), and the sale sent with
    it would have been a second order in the symbol (Alpaca refuses it as a wash trade)."""
    n_bars = 8
    scheduled.table = np.ones((n_bars, 2))
    t = np.zeros((n_bars, 2))
    t[2, 0] = 0.2
    t[3:, 0] = -0.1
    TableSizing.table = t
    panel = _panel(np.zeros((n_bars, 2), dtype=bool), drift=0.0)
    panel.volume[3, 0] = 0.0
    config = _table_config(
        engine_config,
        (PluginSpec("max_position", params={"max_position_pct": 0.5}),),
        allow_short=True,
    )
    out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    a = sorted((o for o in out.orders if o["symbol"] == "A"), key=lambda o: o["created_at"])
    assert [(o["side"], o["status"]) for o in a] == [("buy", "cancelled"), ("sell", "filled")]
    assert a[1]["created_at"] == pd.Timestamp(panel.times[4], tz="UTC")


async def test_an_entry_waiting_on_bars_without_volume_is_not_replaced_as_its_price_moves(
    engine_config, scheduled, tmp_path
):
    """A's 10% entry (the sizing wants 30%, max_position caps it) waits through bars with
    no volume while A rises 12% a bar: its weight at the current price drifted above the
    cap's 90%, and it was cancelled and placed again nearly every bar. It waits, and fills."""
    n_bars = 18
    scheduled.table = np.ones((n_bars, 2))
    t = np.zeros((n_bars, 2))
    t[1:, 0] = 0.3
    t[1:, 1] = 0.05
    TableSizing.table = t
    panel = _panel(np.zeros((n_bars, 2), dtype=bool), drift=0.0)
    rising = 100.0 * 1.12 ** np.arange(n_bars)
    for field in (panel.open, panel.close):
        field[:, 0] = rising
    panel.high[:, 0], panel.low[:, 0] = rising * 1.001, rising * 0.999
    panel.volume[2:15, 0] = 0.0
    config = _table_config(
        engine_config,
        (PluginSpec("max_position", params={"max_position_pct": 0.1}),),
        order_ttl_bars=0,
    )
    out = await run_backtest(config, panel=panel, output_dir=tmp_path / "out")
    a = [o for o in out.orders if o["symbol"] == "A"]
    assert [o["status"] for o in a].count("cancelled") == 0
    assert a[0]["status"] == "filled"


@st.composite
def _universes(draw):
    n_bars = draw(st.integers(8, 16))
    n = draw(st.integers(2, 4))
    limit = draw(st.integers(1, n - 1))
    table = np.array(
        draw(
            st.lists(
                st.lists(st.sampled_from([-1.0, 1.0, 2.0, 3.0]), min_size=n, max_size=n),
                min_size=n_bars,
                max_size=n_bars,
            )
        )
    )
    missing = np.array(
        draw(
            st.lists(
                st.lists(st.booleans(), min_size=n, max_size=n), min_size=n_bars, max_size=n_bars
            )
        )
    )
    missing[0] = False
    return table, missing, limit, draw(st.booleans())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_universes())
async def test_the_book_never_holds_more_symbols_than_the_limit(
    engine_config, scheduled, tmp_path_factory, case
):
    """Whatever bars are missing and whatever the strategy wants, with fills never capped by
    volume the book holds at most `max_open_positions` symbols at the end of every bar, but
    for those whose sale was decided and waits for the symbol's next bar."""
    table, missing, limit, brackets = case
    scheduled.table = table
    panel = _panel(missing)
    out = await run_backtest(
        _config(engine_config, limit, brackets),
        panel=panel,
        output_dir=tmp_path_factory.mktemp("out"),
    )
    assert max(_held_counts(out, panel.times, leaving=True)) <= limit
