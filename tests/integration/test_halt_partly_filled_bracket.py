"""A risk halt, a flatten verdict or an operator's flatten cancels the run's working entries
(`Engine._flatten_orders`). A bracket entry filled in part leaves, once cancelled, its legs
working for the shares it bought: the planner saw neither the entry (cancelled) nor the legs
(still HELD when it planned), so a halt placed a second stop and take-profit and a flatten
sold the shares the legs held, each refused by the broker ("insufficient qty available").
An intraday replay had four such refusals at one halt (two per symbol: two 403s each at
Alpaca)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from conftest import _StubEntryPoint, run_engine
from plugin_context import AlwaysLong
from structlog.testing import capture_logs
from test_engine_followups import _closes_panel

from tradingd.config import PluginSpec
from tradingd.core.ports import RiskDecision
from tradingd.core.types import RiskVerdict
from tradingd.feeds.panel import Panel

HALT_AT = "2020-01-03"  # the bar whose close decides the halt (or flatten)


@dataclass(frozen=True)
class _SwitchConfig:
    action: str = "halt"


class _Switch:
    """From HALT_AT on: "halt" keeps every position at its weight and opens nothing (as the
    drawdown guard's halt), "flatten" wants the book flat."""

    kind: ClassVar[str] = "risk"
    Config = _SwitchConfig

    def __init__(self, config, symbols):  # type: ignore[no-untyped-def]
        self.name = "switch"
        self.action = config.action

    def required_features(self):  # type: ignore[no-untyped-def]
        return ()

    def check(self, targets, ctx):  # type: ignore[no-untyped-def]
        if ctx.time < pd.Timestamp(HALT_AT, tz="UTC"):
            return RiskDecision(targets)
        out = ctx.portfolio.weights.copy() if self.action == "halt" else np.zeros_like(targets)
        return RiskDecision(out, (RiskVerdict(self.name, None, self.action, "switched"),))


@pytest.fixture
def plugins(monkeypatch):  # type: ignore[no-untyped-def]
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["always_long"] = _StubEntryPoint("always_long", AlwaysLong)
    eps["switch"] = _StubEntryPoint("switch", _Switch)
    monkeypatch.setattr(registry, "available", lambda: eps)


def _config(engine_config, action: str | None):  # type: ignore[no-untyped-def]
    """Brackets (a 2% stop, a 4% take-profit: neither reached at the flat price of 100),
    entries filling 10% of a bar's volume, never expiring."""
    risk = (
        PluginSpec("max_position", params={"max_position_pct": 0.5})  # never binding
        if action is None
        else PluginSpec("switch", params={"action": action}),
    )
    return dataclasses.replace(
        engine_config,
        signals=(PluginSpec("always_long"),),
        sizing=PluginSpec("equal_weight", params={"max_positions": 2, "gross_exposure": 0.9}),
        risk=risk,
        orders=dataclasses.replace(
            engine_config.orders, brackets=True, stop_loss_pct=0.02, take_profit_pct=0.04
        ),
        broker=dataclasses.replace(
            engine_config.broker, max_volume_participation=0.1, order_ttl_bars=0
        ),
    )


def _panel(n: int = 8) -> Panel:
    """S0 and S1 at 100 every bar, business days from 2020-01-01; S1 trades 100 shares a bar,
    so its entry (450 shares, decided on 01-01) fills 10 a bar: 20 by HALT_AT's close."""
    volume = np.full((n, 2), 1e7)
    volume[:, 1] = 100.0
    return _closes_panel(np.full((n, 2), 100.0), volume)


def _s1(rows) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """S1's orders by the leg part of their id (`entry|1`, `sl|1`, `sl.p|1`, ...) and date."""
    out = {}
    for o in rows["orders"]:
        if o["symbol"] == "S1":
            _, t, _, leg, n = o["client_order_id"].split("|")
            out[f"{t[:8]} {leg}|{n}"] = o
    return out


async def test_a_halt_keeps_the_legs_of_an_entry_it_cancels_after_a_partial_fill(
    engine_config, plugins
):
    """The halt cancels S1's entry with 20 of 450 shares bought; its stop and take-profit
    work for those 20 from the cancel, and nothing is placed beside them."""
    with capture_logs() as logs:
        engine, _, rows = await run_engine(_config(engine_config, "halt"), "backtest", _panel())
    [cancelled] = [e for e in logs if e["event"] == "risk.entries_cancelled"]
    assert cancelled["cancel_entries"] == ["test-run|20200101T000000|S1|entry|1"]
    assert [e for e in logs if e["event"] in ("planner.exits_restored", "order.rejected")] == []
    s1 = _s1(rows)
    assert sorted(s1) == ["20200101 entry|1", "20200101 sl|1", "20200101 tp|1"]
    entry = s1["20200101 entry|1"]
    assert (entry["status"], entry["filled_quantity"]) == ("cancelled", 20.0)
    # The halt's cancel names the rule that halted, not a rebalance (orders.csv, the store).
    assert entry["reason"].startswith("risk") and "switch halt" in entry["reason"]
    assert "switched" in entry["reason"]
    for leg in ("sl|1", "tp|1"):
        o = s1[f"20200101 {leg}"]
        assert (o["status"], o["quantity"], o["filled_quantity"]) == ("new", 20.0, 0.0)
    assert engine.portfolio.quantity_of("S1") == 20.0


@pytest.mark.parametrize("how", ["verdict", "operator"])
async def test_a_flatten_sells_what_a_cancelled_entry_bought_on_its_bar(
    engine_config, plugins, how
):
    """A flatten (a risk rule's verdict, or POST /flatten) cancels S1's entry with 20 shares
    bought, cancels the legs that then hold them, and sells the 20 from the same decision:
    the sale was refused, the legs holding the shares, and the shares were sold a bar late."""

    def flatten_after_halt_bar(engine, i, t):  # type: ignore[no-untyped-def]
        if t.date().isoformat() == "2020-01-02":  # as POST /flatten sets it between bars
            engine.trading_state = "flattening"

    config = _config(engine_config, "flatten" if how == "verdict" else None)
    check = flatten_after_halt_bar if how == "operator" else None
    with capture_logs() as logs:
        engine, _, rows = await run_engine(config, "backtest", _panel(), check)
    assert [e for e in logs if e["event"] == "order.rejected"] == []
    s1 = _s1(rows)
    entry = s1["20200101 entry|1"]
    assert (entry["status"], entry["filled_quantity"]) == ("cancelled", 20.0)
    assert [s1[f"20200101 {leg}"]["status"] for leg in ("sl|1", "tp|1")] == ["cancelled"] * 2
    # Each cancel says what flattened: the risk rule's verdict, or the operator's /flatten;
    # "rebalance: position closed or cut" said neither.
    for o in (entry, s1["20200101 sl|1"], s1["20200101 tp|1"]):
        if how == "verdict":
            assert o["reason"].startswith("risk") and "switch flatten" in o["reason"], o
        else:
            assert "flatten" in o["reason"] and "rebalance" not in o["reason"], o
    [sale] = [o for k, o in s1.items() if o["side"] == "sell" and o["status"] != "cancelled"]
    assert sale["created_at"].date().isoformat() == HALT_AT  # decided with the cancel
    assert (sale["status"], sale["quantity"], sale["filled_quantity"]) == ("filled", 20.0, 20.0)
    assert engine.portfolio.quantity_of("S1") == 0.0
