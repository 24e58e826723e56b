"""An order of this run edited at Alpaca (an operator's change in the web UI) is replaced by
a new order under Alpaca's client id; the broker's `origin` names the order it replaced. The
engine's stops of new exposure (an operator's flatten, a risk halt) and the planner's view
of its own orders sorted by the run-id prefix alone: the replacement of an adding entry kept
buying through the halt, and an edited exit was hidden from the planner. The live engine
runs against the loopback Alpaca; no test sleeps for a fixed time: each waits for a
condition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_panel
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake, open_buys
from structlog.testing import capture_logs

from tradingd.app import build_engine

RUN = "edited-orders"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


async def _eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until(), timeout)


class _KillSwitch:
    """A risk plugin that halts the whole book from the bar `on` is set."""

    kind, name = "risk", "kill_switch"

    def __init__(self) -> None:
        self.on = False

    def required_features(self):  # type: ignore[no-untyped-def]
        return ()

    def check(self, targets, ctx):  # type: ignore[no-untyped-def]
        from tradingd.core.ports import RiskDecision
        from tradingd.core.types import RiskVerdict

        if not self.on:
            return RiskDecision(targets)
        return RiskDecision(
            np.zeros_like(targets), (RiskVerdict(self.name, None, "halt", "kill switch"),)
        )


@pytest.mark.parametrize("how", ["flatten", "halt"])
async def test_a_flatten_or_a_halt_cancels_the_replacement_of_an_edited_entry(
    engine_config, fake, how
):
    panel, config = live_on_fake(engine_config, fake, RUN)
    engine = build_engine(config, "live", panel=panel)
    broker = engine.broker
    switch = _KillSwitch()
    engine.pipeline.risks = [*engine.pipeline.risks, switch]
    edited: list[tuple[str, str, str]] = []  # (the run's entry, its replacement's id, cid)
    real_on_bar = broker.on_bar

    async def on_bar(bar):  # type: ignore[no-untyped-def]
        ours = fake.call(open_buys, fake, RUN)  # the run's entries wait: the fake fills nothing
        if ours and not edited:
            old = ours[0]
            new = fake.call(fake.replace, old.client_order_id, qty=str(old.qty + 1))
            edited.append((old.client_order_id, new.id, new.client_order_id))

            def followed() -> bool:
                listed = {o.client_order_id for o in broker.open_orders()}
                cid = new.client_order_id
                return cid in listed and broker.origin(cid) == old.client_order_id

            await _eventually(followed)
            if how == "flatten":
                engine.trading_state = "flattening"  # as POST /flatten sets it between bars
            else:
                switch.on = True
        return await real_on_bar(bar)

    broker.on_bar = on_bar
    engine.after_bar.append(lambda t, v: engine.request_stop() if edited else None)
    with capture_logs() as logs:
        await engine.run_until_done()

    assert edited, "the run placed no entry to edit"
    _, new_id, new_cid = edited[0]
    assert fake.call(lambda: fake.orders[new_id].status) == "canceled"
    event = "control.flatten_planned" if how == "flatten" else "risk.entries_cancelled"
    [planned] = [e for e in logs if e["event"] == event]
    assert new_cid in planned["cancel_entries"]


def test_the_planner_sees_the_replacement_of_an_edited_exit_of_this_run():
    """The run's stop moved by hand at the broker: its replacement (the broker's client id,
    `origin` naming the run's stop) is the run's exit, resized or cancelled with the
    position; by the run-id prefix alone it was hidden, and the planner protected the
    shares a second time. Another's edited exit stays out. (A stub broker: the Alpaca
    broker follows a replacement with the leg of an entry, which the planner sees anyway.)"""
    from tradingd.core.types import Leg, Order, OrderType, Side, client_order_id
    from tradingd.engine.engine import Engine

    t0 = make_panel(n_bars=2, split_at=None).datetimes()[0]
    ours = client_order_id(RUN, t0, "S00", "sl")
    replaced = {"alpaca-id-1": ours, "alpaca-id-2": "stop-by-hand-1"}

    def stop(cid: str, symbol: str) -> Order:
        return Order(
            cid,
            symbol,
            Side.SELL,
            10.0,
            t0,
            type=OrderType.STOP,
            stop_price=85.0,
            leg=Leg.STOP_LOSS,
        )

    orders = [stop("alpaca-id-1", "S00"), stop("alpaca-id-2", "S01")]
    engine = Engine.__new__(Engine)  # only what _plannable_orders reads
    engine.run = SimpleNamespace(run_id=RUN)
    engine.broker = SimpleNamespace(
        open_orders=lambda: orders, origin=lambda cid: replaced.get(cid, cid)
    )
    assert [o.client_order_id for o in engine._plannable_orders()] == ["alpaca-id-1"]
