"""The live/replay decision comparison names what differs, with the right counts."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from tradingd.core.orders import market_order
from tradingd.core.types import Leg
from tradingd.engine.decisions import compare, decision_record

T = datetime(2024, 1, 2, 21, tzinfo=UTC)
SYMBOLS = ("A", "B", "C")


def record(orders):
    score = np.array([0.5, -0.2, np.nan])
    targets = np.array([0.05, 0.0, 0.0])
    ready = np.array([True, True, False])
    return decision_record(SYMBOLS, (), {}, ready, score, targets, orders)


def test_intents_differing_in_number_are_counted_per_side():
    one = [market_order("run", T, "A", 10.0, Leg.ENTRY)]
    two = [*one, market_order("run", T, "B", -5.0, Leg.ENTRY)]
    assert compare(record(one), record(one)) == []
    (diff,) = compare(record(two), record(one))
    # the scores and targets of both records are equal: only the intents differ, 2 against 1
    assert diff.startswith("intents: 2 live vs 1 replay; first only in live: ")
    assert "B" in diff
    (diff,) = compare(record(one), record(two))
    assert diff.startswith("intents: 1 live vs 2 replay; first only in replay: ")
