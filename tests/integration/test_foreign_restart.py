"""An order on the Alpaca account that this run did not place is foreign at every start: a
new run warned of it (`broker.foreign_open_orders`, an alert), but the checkpoint listed it
among the run's open orders, so a restarted run followed it as one it knew, without a word.
The checkpoint keeps this run's orders only, and a restart warns as a first start does. The
whole live engine runs against the loopback Alpaca; no test sleeps for a fixed time."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine

RUN = "foreign-restart"
BY_HAND = "by-hand-7"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


def _checkpoint(db: Any) -> dict[str, Any]:
    con = sqlite3.connect(db)
    try:
        [(state,)] = con.execute("SELECT state FROM checkpoints WHERE run_id = ?", (RUN,))
    finally:
        con.close()
    return json.loads(state)  # type: ignore[no-any-return]


async def _one_bar(config, panel) -> tuple[Any, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    engine = build_engine(config, "live", panel=panel)
    alerts: list[str] = []
    real_event = engine.alerter.event

    def event(kind, key, *args, **kwargs):  # type: ignore[no-untyped-def]
        alerts.append(f"{kind}/{key}")
        return real_event(kind, key, *args, **kwargs)

    engine.alerter.event = event
    engine.after_bar.append(lambda t, v: engine.request_stop())
    with capture_logs() as logs:
        await engine.run_until_done()
    return engine, [*logs, *({"event": "alert", "key": a} for a in alerts)]


async def test_a_restart_warns_of_a_foreign_order_as_a_first_start_does(
    engine_config, fake, tmp_path
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    sym = build_engine(config, "live", panel=panel).symbols[1]
    fake.call(
        fake._create,
        {
            "symbol": sym,
            "qty": "5",
            "side": "buy",
            "type": "limit",
            "limit_price": "1000",
            "time_in_force": "gtc",
            "client_order_id": BY_HAND,
        },
    )
    _, first_logs = await _one_bar(config, panel)
    ours = [o.client_order_id for o in fake.orders.values() if o.client_order_id.startswith(RUN)]
    assert ours, "the run placed no order of its own"

    kept = {o["client_order_id"] for o in _checkpoint(tmp_path / "store.db")["open_orders"]}
    assert kept == set(ours)  # the run's own (the fake fills nothing), not the hand order

    second, second_logs = await _one_bar(config, panel)
    assert "run.resumed" in [e["event"] for e in second_logs]
    for logs in (first_logs, second_logs):
        [warned] = [e for e in logs if e["event"] == "broker.foreign_open_orders"]
        assert warned["orders"] == [BY_HAND] and warned["symbols"] == [sym]
        assert "reconciliation/foreign-orders" in [e.get("key") for e in logs]
    # The broker adopted it as it stands (not followed as a known order of the run).
    [unknown] = [e for e in second_logs if e["event"] == "alpaca.reconcile.unknown_order"]
    assert unknown["client_order_id"] == BY_HAND
    # Still followed: its working entry keeps the run's entries out of its symbol.
    assert BY_HAND in [o.client_order_id for o in second._plannable_orders()]
