"""Client order ids: deterministic per decision, with an attempt number for deliberate retries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradingd.brokers.alpaca_mapping import leg_client_order_id, leg_from_client_order_id
from tradingd.core.types import (
    Leg,
    client_order_id,
    next_attempt,
    parse_client_order_id,
)

T = datetime(2021, 3, 1, 20, 0, tzinfo=UTC)


def test_an_id_names_run_bar_symbol_leg_and_attempt():
    cid = client_order_id("run-1", T, "BRK.B", Leg.ENTRY)
    assert cid == "run-1|20210301T200000|BRK.B|entry|1"
    p = parse_client_order_id(cid)
    assert p is not None
    assert (p.run_id, p.stamp, p.symbol, p.tag, p.attempt) == (
        "run-1",
        "20210301T200000",
        "BRK.B",
        "entry",
        1,
    )


def test_a_retry_takes_the_next_attempt_and_keeps_the_decision():
    first = client_order_id("run", T, "AAPL", Leg.STOP_LOSS)
    second = next_attempt(first)
    assert second == client_order_id("run", T, "AAPL", Leg.STOP_LOSS, attempt=2)
    assert next_attempt(second).endswith("|sl|3")
    assert second != first  # Alpaca refuses a reused id even after a rejection
    assert leg_from_client_order_id(second) is Leg.STOP_LOSS


def test_legs_of_a_retried_bracket_share_its_attempt():
    entry = client_order_id("run", T, "AAPL", Leg.ENTRY, attempt=3)
    assert leg_client_order_id(entry, Leg.TAKE_PROFIT) == client_order_id(
        "run", T, "AAPL", Leg.TAKE_PROFIT, attempt=3
    )
    resized = client_order_id("run", T, "AAPL", "tp.r2", attempt=2)
    assert leg_client_order_id(resized, Leg.STOP_LOSS) == client_order_id(
        "run", T, "AAPL", "sl.r2", attempt=2
    )


def test_ids_of_earlier_versions_read_as_attempt_one():
    old = "run|20210301T200000|AAPL|tp"  # before attempt numbers
    p = parse_client_order_id(old)
    assert p is not None and (p.tag, p.attempt) == ("tp", 1)
    assert leg_from_client_order_id(old) is Leg.TAKE_PROFIT
    assert next_attempt(old) == "run|20210301T200000|AAPL|tp|2"


def test_foreign_ids_are_not_parsed_and_cannot_be_retried():
    for cid in ("5680c4bc-9ac1-4a12-a44c-df427ba53032", "manual|x", "a||b|c|1"):
        assert parse_client_order_id(cid) is None
        with pytest.raises(ValueError, match="not a tradingd client_order_id"):
            next_attempt(cid)


def test_bad_attempt_and_overlong_ids_are_refused():
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        client_order_id("run", T, "AAPL", Leg.ENTRY, attempt=0)
    with pytest.raises(ValueError, match="128 characters"):
        client_order_id("r" * 110, T, "AAPL", Leg.ENTRY)


@given(
    run=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,30}", fullmatch=True),
    symbol=st.from_regex(r"[A-Z]{1,5}(\.[A-Z])?", fullmatch=True),
    leg=st.sampled_from(["entry", "tp", "sl", "tp.r", "sl.r3"]),
    attempt=st.integers(1, 999),
)
def test_parse_inverts_the_builder(run, symbol, leg, attempt):
    cid = client_order_id(run, T, symbol, leg, attempt)
    p = parse_client_order_id(cid)
    assert p is not None
    assert (p.run_id, p.symbol, p.tag, p.attempt) == (run, symbol, leg, attempt)
    assert parse_client_order_id(next_attempt(cid)).attempt == attempt + 1  # type: ignore[union-attr]


def test_an_interrupted_plan_carries_out_only_the_last_attempt_of_a_decision():
    from tradingd.core.orders import market_order
    from tradingd.engine.engine import _interrupted_plan

    first = market_order("run", T, "AAPL", 10)
    retried = market_order("run", T, "AAPL", 10)
    retried.client_order_id = next_attempt(first.client_order_id)
    other = market_order("run", T, "MSFT", -5)
    at, cancels, orders = _interrupted_plan(None, [first, retried, other])  # type: ignore[misc]
    assert at == T and cancels == []
    assert sorted(o.client_order_id for o in orders) == sorted(
        [retried.client_order_id, other.client_order_id]
    )


def test_the_stamp_is_the_wall_clock_of_the_given_time_zone_even_after_an_equal_instant():
    """Equal instants in two zones are equal (and equally hashed) datetimes; the id's stamp
    is each one's own wall clock, whichever was formatted first (the stamp is memoised)."""
    from zoneinfo import ZoneInfo

    utc = datetime(2024, 3, 8, 21, 0, tzinfo=UTC)
    ny = utc.astimezone(ZoneInfo("America/New_York"))
    assert ny == utc
    assert client_order_id("run", utc, "AAPL", Leg.ENTRY) == "run|20240308T210000|AAPL|entry|1"
    assert client_order_id("run", ny, "AAPL", Leg.ENTRY) == "run|20240308T160000|AAPL|entry|1"
    naive = datetime(2024, 3, 8, 21, 0)
    assert client_order_id("run", naive, "AAPL", "tp.r", 2) == "run|20240308T210000|AAPL|tp.r|2"
