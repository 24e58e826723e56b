"""A symbol Alpaca no longer trades (delisted, halted: its orders refused 422 "not tradable")
got a new order, refused, at every bar, with warning lines only: no alert, nothing in /ready.
The live engine now holds it (no order in it) once Alpaca has refused one, says so once,
shows it in /ready's broker check and alerts (`untradable_asset`). The whole live engine runs
against the loopback Alpaca; no test sleeps for a fixed time."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine, health_inputs

RUN = "untradable"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


async def test_an_untradable_symbol_gets_one_refused_order_a_warning_an_alert_and_a_hold(
    engine_config, fake
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    for sym in panel.symbols:
        fake.call(fake.set_asset, sym, tradable=False)
    engine = build_engine(config, "live", panel=panel)
    checks, _, _ = health_inputs(engine)
    [broker_check] = [c for c in checks if c.name == "broker"]
    bars: list[Any] = []
    ready: list[Any] = []

    def after(t: Any, v: Any) -> None:
        bars.append(t)
        if len(bars) == 4:
            ready.append(broker_check.probe())  # /ready's broker check, while it runs
            engine.request_stop()

    engine.after_bar.append(after)
    sent: list[Any] = []
    condition = engine.alerter.condition

    def recording(*args: Any, **kwargs: Any) -> Any:
        alert = condition(*args, **kwargs)
        if alert is not None:
            sent.append(alert)
        return alert

    engine.alerter.condition = recording
    with capture_logs() as logs:
        await engine.run_until_done()

    assert len(bars) == 4
    posted = Counter(b["symbol"] for b in fake.posted_orders())
    assert posted, "the run decided no order at all"
    # One refused order a symbol, not one every bar.
    assert set(posted.values()) == {1}
    said = Counter(e["symbol"] for e in logs if e["event"] == "alpaca.asset_untradable")
    assert said == Counter(dict.fromkeys(posted, 1))
    held = {e["symbol"] for e in logs if e["event"] == "alpaca.asset_untradable"}
    assert set(engine.broker.untradable()) == held
    # Alerted, once a symbol, as a warning naming it.
    alerts = [a for a in sent if a.kind == "untradable_asset"]
    assert sorted(a.key for a in alerts) == sorted(held)
    assert all(a.severity == "warning" and "not tradable" in a.title for a in alerts)
    # /ready's broker check fails, naming them.
    [result] = ready
    assert not result.ok
    assert all(sym in result.detail for sym in held)
    assert "not tradable" in result.detail
