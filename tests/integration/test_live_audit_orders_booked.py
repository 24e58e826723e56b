"""A live run's audit lines of order states say the bar that recorded them (`booked_at`),
as its fills' lines do: what a restart's `truncate_after` goes by (an order's own times are
the broker's clock). A replay's lines go without it."""

from __future__ import annotations

import dataclasses
import json

from conftest import live_run


def _lines(config) -> list[dict]:
    from tradingd.audit import audit_path

    path = audit_path(config.log.audit_dir, config.run.run_id)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


async def test_a_live_runs_order_lines_say_the_bar_that_recorded_them(engine_config):
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    result = await build_engine(config, "live", panel=panel).run_until_done()
    assert result.orders > 0
    bars = {t.isoformat() for t in panel.datetimes()}
    orders = [r for r in _lines(config) if r["event"] == "order"]
    assert orders and all(r.get("booked_at") in bars for r in orders)
    # A state is recorded at the bar it was decided or filled at, never before the order.
    assert all(r["booked_at"] >= r["created_at"] for r in orders)

    replay = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id="test-replay"))
    await build_engine(replay, "backtest", panel=panel).run_until_done()
    replayed = [r for r in _lines(replay) if r["event"] == "order"]
    assert replayed and not any("booked_at" in r for r in replayed)
