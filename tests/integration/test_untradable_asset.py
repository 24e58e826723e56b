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


def _delisted_after_start(engine: Any, fake: Any, symbols: Any) -> None:
    """`symbols` stop trading at Alpaca once the broker has started (read its assets)."""
    start = engine.broker.start

    async def start_then_delist() -> None:
        await start()
        for sym in symbols:
            fake.call(fake.set_asset, sym, tradable=False)

    engine.broker.start = start_then_delist


def _recording(engine: Any) -> list[Any]:
    """The alerts the engine's alerter sends from now on (fired, resolved)."""
    sent: list[Any] = []
    condition = engine.alerter.condition

    def recording(*args: Any, **kwargs: Any) -> Any:
        alert = condition(*args, **kwargs)
        if alert is not None:
            sent.append(alert)
        return alert

    engine.alerter.condition = recording
    return sent


async def _bars(engine: Any, n: int) -> list[Any]:
    bars: list[Any] = []

    def after(t: Any, v: Any) -> None:
        bars.append(t)
        if len(bars) == n:
            engine.request_stop()

    engine.after_bar.append(after)
    await engine.run_until_done()
    return bars


async def test_a_restart_holds_an_untradable_symbol_before_its_first_bar_and_keeps_its_alert(
    engine_config, fake
):
    """The hold lived in memory: a restarted run sent one more refused order in each held
    symbol at its first bar, and the symbol's `untradable_asset` alert, not in the
    checkpoint, fired again (a second page for one asset). Now the broker reads its assets
    at start: held before the first bar, no order sent, the alert kept firing, unsent."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    first = build_engine(config, "live", panel=panel)
    _delisted_after_start(first, fake, panel.symbols)
    first_alerts = _recording(first)
    await _bars(first, 3)
    held = set(first.broker.untradable())
    assert held, "the first run held nothing"
    assert {a.key for a in first_alerts if a.kind == "untradable_asset"} == held
    posted = len(fake.posted_orders())

    again = build_engine(config, "live", panel=panel)
    again_alerts = _recording(again)
    with capture_logs() as logs:
        bars = await _bars(again, 3)
    assert len(bars) == 3
    everyone = set(panel.symbols)
    assert held < everyone  # the first run ordered, and so held, some of them only
    assert len(fake.posted_orders()) == posted  # no order in any of them
    assert set(again.broker.untradable()) == everyone  # all read from Alpaca at start
    said = [e for e in logs if e["event"] == "alpaca.asset_untradable"]
    assert sorted(e["symbol"] for e in said) == sorted(everyone)
    assert all("not tradable at Alpaca" in e["reason"] for e in said)
    # The alerts of the first run's holds kept firing, unsent; the others fired once.
    untradable_alerts = [a for a in again_alerts if a.kind == "untradable_asset"]
    assert sorted(a.key for a in untradable_alerts) == sorted(everyone - held)
    assert {a.state for a in untradable_alerts} == {"firing"}
    firing = {a["key"] for a in again.alerter.firing() if a["kind"] == "untradable_asset"}
    assert firing == everyone

    # Tradable again while the daemon was down: not held at the next start, and its
    # alert resolved at the first bar.
    back = sorted(held)[0]
    fake.call(fake.set_asset, back, tradable=True)
    third = build_engine(config, "live", panel=panel)
    third_alerts = _recording(third)
    await _bars(third, 1)
    assert set(third.broker.untradable()) == everyone - {back}
    assert [(a.kind, a.key, a.state) for a in third_alerts if a.kind == "untradable_asset"] == [
        ("untradable_asset", back, "resolved")
    ]


async def test_an_untradable_symbol_gets_one_refused_order_a_warning_an_alert_and_a_hold(
    engine_config, fake
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    _delisted_after_start(engine, fake, panel.symbols)
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
