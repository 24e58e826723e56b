from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from tradingd.audit import AuditLog
from tradingd.core.types import Fill, Leg, Order, OrderStatus, OrderType, Side

T = datetime(2020, 1, 2, tzinfo=UTC)


def order():
    return Order(
        "r|x|A|entry",
        "A",
        Side.BUY,
        10.0,
        T,
        OrderType.STOP_LIMIT,
        9.5,
        9.8,
        0.02,
        Leg.STOP_LOSS,
        "p",
        "g",
        OrderStatus.PARTIALLY_FILLED,
        4.0,
        9.7,
        "why",
        T,
        3,
        10.1,
    )


def test_snapshot_is_an_equal_independent_copy():
    o = order()
    s = o.snapshot()
    assert s == o and s is not o
    assert [getattr(s, f.name) for f in dataclasses.fields(Order)] == [
        getattr(o, f.name) for f in dataclasses.fields(Order)
    ]
    s.status = OrderStatus.FILLED
    assert o.status is OrderStatus.PARTIALLY_FILLED


def test_audit_lines_hold_every_field_and_rotate(tmp_path):
    a = AuditLog(tmp_path, "run/1", max_bytes=400, backups=2)
    f = Fill("f1", "c", "A", Side.SELL, 2.0, 10.0, 0.02, 0.005, T, 10.005)
    for _ in range(6):
        a.orders([order()])
        a.fills([f])
        a.flush(force=True)
    a.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    # Rotated by size, and bounded: the live file (absent right after a rotation) + 2 backups.
    assert {"run_1.jsonl.1", "run_1.jsonl.2"} <= set(files)
    assert set(files) <= {"run_1.jsonl", "run_1.jsonl.1", "run_1.jsonl.2"}
    lines = [json.loads(x) for p in tmp_path.iterdir() for x in p.read_text().splitlines()]
    o = next(x for x in lines if x["event"] == "order")
    assert o["client_order_id"] == "r|x|A|entry" and o["status"] == "partially_filled"
    assert o["created_at"] == T.isoformat() and o["trail_anchor"] == 10.1
    assert set(o) == {"event"} | {f.name for f in dataclasses.fields(Order)}
    fl = next(x for x in lines if x["event"] == "fill")
    assert fl == {
        "event": "fill",
        "fill_id": "f1",
        "client_order_id": "c",
        "symbol": "A",
        "side": "sell",
        "quantity": 2.0,
        "price": 10.0,
        "commission": 0.02,
        "slippage": 0.005,
        "time": T.isoformat(),
        "reference_price": 10.005,
    }


def test_audit_writes_at_most_once_per_interval_unless_forced(tmp_path, monkeypatch):
    import tradingd.audit as audit

    now = [100.0]
    monkeypatch.setattr(audit.time, "monotonic", lambda: now[0])
    # Written by the caller (background=False), so the file shows each decision at once;
    # the writer thread follows the same rule (tests/unit/test_audit.py).
    a = AuditLog(tmp_path, "r", flush_interval_s=1.0, max_lines=3, background=False)
    f = Fill("f1", "c", "A", Side.SELL, 2.0, 10.0, 0.02, 0.005, T, 10.005)
    a.fills([f])
    a.flush()  # first write: a live daemon's bar reaches the file at once
    path = tmp_path / "r.jsonl"
    assert len(path.read_text().splitlines()) == 1
    a.fills([f])
    now[0] += 0.5
    a.flush()
    assert len(path.read_text().splitlines()) == 1  # a fast replay batches its writes
    a.fills([f, f])  # ... unless max_lines are waiting
    a.flush()
    assert len(path.read_text().splitlines()) == 4
    a.fills([f])
    a.close()  # and nothing is lost at the end
    assert len(path.read_text().splitlines()) == 5


def _strict_json(line: str) -> dict:
    """Parse as a strict JSON reader (jq) does: NaN and Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_unfilled_order_average_price_is_null_not_nan(tmp_path):
    a = AuditLog(tmp_path, "r")
    o = Order("r|x|A|entry", "A", Side.BUY, 10.0, T)  # new: avg_fill_price is NaN in memory
    a.orders([o])
    a.fills([Fill("f", "c", "A", Side.BUY, 1.0, 10.0, 0.0, 0.0, T)])  # reference_price NaN
    a.close()
    lines = [_strict_json(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["avg_fill_price"] is None and lines[0]["filled_quantity"] == 0.0
    assert lines[1]["reference_price"] is None and lines[1]["price"] == 10.0
