"""A live run on the Alpaca fake, as the live-account tests start it (foreign orders, edited
orders, a flatten in a blocked symbol, a restart): one place, so a change to how such a run
is configured reaches every one of them."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import make_panel
from fakes.alpaca_trading_server import AlpacaTradingFake

from tradingd.config import AlpacaConfig, LiveConfig


def live_on_fake(engine_config: Any, fake: AlpacaTradingFake, run_id: str) -> tuple[Any, Any]:
    """90 bars, trading from the 61st, at 400 bars a second against `fake`, reconciled at
    the start with its second check at once (`reconcile_confirm_s` 0.01)."""
    panel = make_panel(n_bars=90, split_at=None)
    return panel, dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=400.0, reconcile_confirm_s=0.01),
        run=dataclasses.replace(
            engine_config.run, start=panel.datetimes()[60].date().isoformat(), run_id=run_id
        ),
        broker=dataclasses.replace(
            engine_config.broker,
            kind="alpaca",
            alpaca=AlpacaConfig(
                base_url=fake.url, stream_url=fake.stream_url, poll_interval_s=0.05
            ),
        ),
    )


def open_buys(fake: AlpacaTradingFake, run_id: str) -> list[Any]:
    """The run's buy orders still open at `fake`: its entries waiting for a fill."""
    return [
        o
        for o in fake.orders.values()
        if o.client_order_id.startswith(f"{run_id}|") and o.is_open and o.side == "buy"
    ]


def stored_fill_quantities(db: Path, client_order_id: str) -> list[tuple[float]]:
    """The quantities of the fills the SQLite store `db` holds for one order."""
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT quantity FROM fills WHERE client_order_id = ?", (client_order_id,)
        ).fetchall()
    finally:
        con.close()


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether `pred()` came true within `timeout` seconds (checked every 5 ms): a wait for
    a condition, never a sleep for a fixed time."""

    async def until() -> None:
        while not pred():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(until(), timeout)
    except TimeoutError:
        return False
    return True
