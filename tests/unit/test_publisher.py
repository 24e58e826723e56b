"""The publisher without a Redis server: payload encoding, the queue bound, drops that never
raise into the trading loop, and the backoff of the reconnects."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from tradingd.cache.reconnect import Backoff
from tradingd.core.errors import ConfigError
from tradingd.core.types import CrossSection, Fill, Leg, Order, OrderStatus, OrderType, Side
from tradingd.publisher import (
    KINDS,
    NullPublisher,
    Publisher,
    PublishingAudit,
    RedisPublisher,
    bars_payload,
    fill_payload,
    fills_payload,
    open_publisher,
    order_payload,
    orders_payload,
    signals_payload,
)

T0 = datetime(2024, 3, 6, 21, 0, tzinfo=UTC)
DEAD = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1


def roundtrip(payload: dict) -> dict:
    """What a subscriber decodes: strict JSON (no NaN)."""
    return json.loads(json.dumps(payload, allow_nan=False))


def test_order_payload_is_a_plain_snapshot() -> None:
    o = Order(
        "r|20240306T210000|AAA|sl", "AAA", Side.SELL, 5.0, T0, type=OrderType.STOP,
        stop_price=95.0, leg=Leg.STOP_LOSS, parent_id="p", status=OrderStatus.HELD,
    )  # fmt: skip
    p = order_payload(o)
    o.status = OrderStatus.CANCELLED
    o.updated_at = T0
    assert roundtrip(p) == p
    assert p["status"] == "held" and p["updated_at"] is None  # as it was at the call
    assert p["side"] == "sell" and p["type"] == "stop" and p["leg"] == "sl"
    assert p["avg_fill_price"] is None  # NaN in memory
    assert p["created_at"] == "2024-03-06T21:00:00+00:00" and p["stop_price"] == 95.0
    assert set(p) >= {"client_order_id", "quantity", "filled_quantity", "parent_id", "reason"}
    batch = orders_payload([o, o], T0)
    assert batch["time"] == T0.isoformat() and len(batch["orders"]) == 2
    assert orders_payload([])["time"] is None


def test_fill_payload() -> None:
    f = Fill("f1", "cid", "AAA", Side.BUY, 3.0, 10.5, 0.1, 0.02, T0)  # reference price NaN
    p = fill_payload(f)
    assert roundtrip(p) == p
    assert p == {
        "fill_id": "f1", "client_order_id": "cid", "symbol": "AAA", "side": "buy",
        "quantity": 3.0, "price": 10.5, "commission": 0.1, "slippage": 0.02,
        "time": T0.isoformat(), "reference_price": None,
    }  # fmt: skip
    assert fills_payload([f], T0)["fills"] == [p]


def test_bars_payload_keeps_symbols_with_a_finite_close() -> None:
    close = np.array([1.0, np.nan, 3.0, np.inf])
    bar = CrossSection(
        T0, close, close, close, close, np.array([10.0, 20.0, np.nan, 5.0]),
        np.ones(4), np.zeros(4),
    )  # fmt: skip
    p = bars_payload(bar, ("A", "B", "C", "D"))
    assert roundtrip(p) == p
    assert p == {
        "time": T0.isoformat(),
        "symbols": 2,
        "bars": {"A": {"close": 1.0, "volume": 10.0}, "C": {"close": 3.0, "volume": None}},
    }
    assert all(type(v["close"]) is float for v in p["bars"].values())  # no numpy scalars


def test_signals_payload_keeps_views_and_targets() -> None:
    scores = np.array([0.5, np.nan, np.nan, 0.0])
    targets = np.array([0.25, 0.0, -0.1, 0.0])
    p = signals_payload(T0, ("A", "B", "C", "D"), scores, targets, source="momentum")
    assert roundtrip(p) == p
    assert p["source"] == "momentum" and p["time"] == T0.isoformat()
    assert p["signals"] == {
        "A": {"score": 0.5, "target": 0.25},
        "C": {"score": None, "target": -0.1},  # no view, but a position to hold
        "D": {"score": 0.0, "target": 0.0},
    }
    scores[0] = 0.9  # the caller's arrays change in place later: the payload does not
    assert p["signals"]["A"]["score"] == 0.5


def _open(pub: RedisPublisher) -> None:
    """As if connected, without a server (the background sender is not running)."""
    pub._running = True
    pub._link.available = True


def test_the_queue_is_bounded_and_drops_the_oldest() -> None:
    from tradingd.metrics import PUBLISHER_DROPPED

    before = PUBLISHER_DROPPED.labels(reason="queue_full")._value.get()
    pub = RedisPublisher(DEAD, "run1", max_queue=3)
    _open(pub)
    for i in range(5):
        pub.publish("state", {"i": i, "nan": math.nan, "arr": np.array([1.0, np.nan])})
    assert len(pub._queue) == 3
    assert pub.dropped == 2 and pub.dropped_by_reason == {"queue_full": 2}
    # In /metrics too (tradingd_publisher_dropped_total), not only at stop.
    assert PUBLISHER_DROPPED.labels(reason="queue_full")._value.get() == before + 2
    channels = {ch for ch, _ in pub._queue}
    assert channels == {"tradingd:run1:state"}
    msgs = [json.loads(data) for _, data in pub._queue]
    assert [m["seq"] for m in msgs] == [3, 4, 5]  # the newest kept
    assert msgs[0] == {
        "run_id": "run1", "kind": "state", "seq": 3, "sent_at": msgs[0]["sent_at"],
        "data": {"i": 2, "nan": None, "arr": [1.0, None]},
    }  # fmt: skip
    assert datetime.fromisoformat(msgs[0]["sent_at"]).tzinfo is not None
    assert pub.status()["queued"] == 3


def test_channels_follow_prefix_and_run() -> None:
    pub = RedisPublisher(DEAD, "r-9", prefix="paper:")
    assert [pub.channel(k) for k in KINDS] == [f"paper:r-9:{k}" for k in KINDS]


def test_publish_never_raises() -> None:
    pub = RedisPublisher(DEAD, "run1")
    pub.publish("orders", {"x": 1})  # not started
    _open(pub)
    pub.publish("nonsense", {"x": 1})  # unknown kind: a bug, reported, not raised
    pub.publish("nonsense", {"x": 2})
    pub.publish("state", {"x": object()})  # not JSON: encoded as its str (the stores' rule)
    pub._link.available = False
    pub.publish("bars", {"x": 1})  # Redis down
    assert pub.dropped_by_reason == {"not_running": 1, "unknown_kind": 2, "redis_down": 1}
    assert pub.seq == 5 and len(pub._queue) == 1


async def test_started_without_redis_drops_and_counts_without_the_password() -> None:
    pub = RedisPublisher(DEAD, "run1", connect_timeout=0.5, socket_timeout=0.5)
    await pub.start()  # does not raise
    try:
        for kind in KINDS:
            pub.publish(kind, {"k": kind})
        st = pub.status()
        assert st["available"] is False and st["ok"] is False and st["enabled"] is True
        assert st["published"] == 0 and st["dropped"] == len(KINDS)
        assert st["url"] == "redis://:***@127.0.0.1:1/0" and st["reason"]
        assert "hunter2" not in json.dumps(st)
    finally:
        await pub.stop()
    await pub.stop()  # twice is fine


async def test_null_publisher_and_factory() -> None:
    null = open_publisher("", "run1")
    assert isinstance(null, NullPublisher) and isinstance(null, Publisher)
    await null.start()
    null.publish("bars", {})
    assert null.status()["ok"] and null.status()["enabled"] is False
    await null.stop()
    assert isinstance(open_publisher("memory://", "r"), NullPublisher)
    pub = open_publisher("redis://127.0.0.1:6379/0", "r")
    assert isinstance(pub, RedisPublisher) and isinstance(pub, Publisher)
    with pytest.raises(ConfigError) as e:
        open_publisher("kafka://u:secret@h", "r")
    assert "secret" not in str(e.value)


def test_publishing_audit_tees_orders_and_fills() -> None:
    class Sink:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def orders(self, orders, records=None, booked_at=None) -> None:
            self.calls.append(("orders", len(orders), records))

        def fills(self, fills, booked_at=None, records=None) -> None:
            self.calls.append(("fills", len(fills), records))

        def flush(self) -> None:
            self.calls.append(("flush",))

        def close(self) -> None:
            self.calls.append(("close",))

    class Recorder(NullPublisher):
        def __init__(self) -> None:
            self.sent: list[tuple[str, dict]] = []

        def publish(self, kind, payload) -> None:
            self.sent.append((kind, payload))

    sink, rec = Sink(), Recorder()
    audit = PublishingAudit(sink, rec)
    order = Order("cid", "AAA", Side.BUY, 1.0, T0)
    kept = [("the store's record",)]  # passed on as they are (AuditSink.orders)
    audit.orders([order], kept)
    audit.orders([])
    audit.fills([Fill("f", "cid", "AAA", Side.BUY, 1.0, 2.0, 0.0, 0.0, T0)], T0, kept)
    audit.flush()
    audit.close()
    assert sink.calls == [
        ("orders", 1, kept),
        ("orders", 0, None),
        ("fills", 1, kept),
        ("flush",),
        ("close",),
    ]
    assert [k for k, _ in rec.sent] == ["orders", "fills"]
    assert rec.sent[0][1]["orders"][0]["client_order_id"] == "cid"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    lo = Backoff(0.5, 4.0, rng=lambda: 0.0)
    hi = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [lo.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [hi.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    hi.reset()
    assert hi.next() == 0.5
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
