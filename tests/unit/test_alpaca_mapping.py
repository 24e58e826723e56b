"""Alpaca <-> tradingd translation, without a server: grouping, requests, statuses, errors,
fills, keys and the broker's configuration."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from alpaca.common.exceptions import APIError
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.brokers.alpaca import AlpacaBroker, AlpacaBrokerConfig
from tradingd.brokers.alpaca_mapping import (
    KNOWN_EVENTS,
    KNOWN_STATUSES,
    LocalRejection,
    Unit,
    UnreadableOrder,
    alpaca_keys_from_env,
    build_request,
    error_info,
    fill_price,
    leg_client_order_id,
    leg_from_client_order_id,
    make_fill,
    map_status,
    order_from_alpaca,
    plan_submission,
    positions_from_alpaca,
    trail_percent,
)
from tradingd.core.errors import ConfigError
from tradingd.core.orders import bracket_orders, market_order, protective_exits
from tradingd.core.types import Leg, Order, OrderStatus, OrderType, Side, client_order_id
from tradingd.logs import Once

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = (
    Path(os.environ.get("TRADINGD_SHARED_FIXTURES", ROOT.parent / "shared" / "fixtures")) / "alpaca"
)
T0 = datetime(2024, 1, 2, 16, 0, tzinfo=UTC)


def fixture(*parts: str) -> object:
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"recorded Alpaca fixtures not present at {FIXTURES}")
    return json.loads(path.read_text())


def exit_order(tag: str, kind: OrderType, **kw: object) -> Order:
    return Order(
        client_order_id=client_order_id("run", T0, "AAPL", tag),
        symbol="AAPL",
        side=Side.SELL,
        quantity=10,
        created_at=T0,
        type=kind,
        leg=Leg.TAKE_PROFIT if tag.startswith("tp") else Leg.STOP_LOSS,
        **kw,  # type: ignore[arg-type]
    )


def body(unit: Unit, **kw: object) -> dict[str, object]:
    # The request's fields as alpaca-py sends them (its enums are str subclasses).
    return json.loads(json.dumps(build_request(unit, **kw).to_request_fields()))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    ("alpaca", "filled", "expected"),
    [
        ("new", 0, OrderStatus.NEW),
        ("accepted", 0, OrderStatus.NEW),
        ("pending_new", 0, OrderStatus.NEW),
        ("accepted_for_bidding", 0, OrderStatus.NEW),
        ("pending_cancel", 0, OrderStatus.NEW),
        ("pending_replace", 3, OrderStatus.PARTIALLY_FILLED),
        ("done_for_day", 0, OrderStatus.NEW),
        ("done_for_day", 2, OrderStatus.PARTIALLY_FILLED),
        ("stopped", 0, OrderStatus.NEW),
        ("suspended", 0, OrderStatus.NEW),
        ("calculated", 0, OrderStatus.NEW),
        ("something_new_from_alpaca", 0, OrderStatus.NEW),
        ("held", 0, OrderStatus.HELD),
        ("partially_filled", 4, OrderStatus.PARTIALLY_FILLED),
        ("filled", 10, OrderStatus.FILLED),
        ("canceled", 0, OrderStatus.CANCELLED),
        ("canceled", 4, OrderStatus.CANCELLED),
        ("expired", 0, OrderStatus.CANCELLED),
        ("replaced", 0, OrderStatus.CANCELLED),
        ("rejected", 0, OrderStatus.REJECTED),
    ],
)
def test_status_mapping(alpaca, filled, expected):
    assert map_status(alpaca, filled) is expected


def test_every_status_and_event_alpaca_py_names_is_known():
    """The broker warns of a status or event outside these (once a name): none that alpaca-py
    names may be among them, or every order would be warned of."""
    from alpaca.trading.enums import OrderStatus as AlpacaStatus
    from alpaca.trading.enums import TradeEvent

    assert {s.value for s in AlpacaStatus} <= KNOWN_STATUSES
    assert {e.value for e in TradeEvent} <= KNOWN_EVENTS


# ----------------------------------------------------------------------------- grouping


def test_a_bracket_batch_is_one_unit_with_its_legs():
    entry, tp, sl = bracket_orders("run", T0, "AAPL", 10, 110.0, 95.0)
    other = market_order("run", T0, "SPY", -3)
    [unit, single] = plan_submission([entry, tp, sl, other])
    assert isinstance(unit, Unit) and unit.kind == "bracket"
    assert (unit.primary, unit.take_profit, unit.stop_loss) == (entry, tp, sl)
    assert isinstance(single, Unit) and single.kind == "simple" and single.primary is other


def test_an_entry_with_one_leg_is_an_oto_and_a_leg_alone_is_refused():
    entry, tp, sl = bracket_orders("run", T0, "AAPL", 10, 110.0, 95.0)
    [oto] = plan_submission([entry, sl])
    assert isinstance(oto, Unit) and oto.kind == "oto" and oto.take_profit is None
    [alone] = plan_submission([tp])
    assert isinstance(alone, LocalRejection)
    assert "only to a new entry" in alone.reason


def test_brackets_alpaca_cannot_express_are_refused_whole():
    entry, tp, sl = bracket_orders("run", T0, "AAPL", 10, 110.0, 95.0)
    sl.type, sl.stop_price, sl.trail_pct = OrderType.TRAILING_STOP, None, 0.05
    out = plan_submission([entry, tp, sl])
    assert [type(x) for x in out] == [LocalRejection] * 3
    assert "trailing_stop" in out[0].reason  # type: ignore[union-attr]
    entry, tp, sl = bracket_orders("run", T0, "AAPL", 10, 110.0, 95.0)
    tp.quantity = 5
    out = plan_submission([entry, tp, sl])
    assert all(isinstance(x, LocalRejection) for x in out)


def test_an_oco_group_of_a_limit_and_a_stop_is_one_alpaca_oco_order():
    group = client_order_id("run", T0, "AAPL", "sl.r")
    sl = exit_order("sl.r", OrderType.STOP, stop_price=95.0, oco_group=group)
    tp = exit_order("tp.r", OrderType.LIMIT, limit_price=110.0, oco_group=group)
    [unit] = plan_submission([sl, tp])
    assert isinstance(unit, Unit) and unit.kind == "oco"
    assert unit.primary is tp and unit.take_profit is tp and unit.stop_loss is sl
    assert body(unit) == {
        "symbol": "AAPL",
        "qty": 10.0,
        "side": "sell",
        "type": "limit",
        "time_in_force": "gtc",
        "order_class": "oco",
        "client_order_id": tp.client_order_id,
        "take_profit": {"limit_price": 110.0},
        "stop_loss": {"stop_price": 95.0},
    }
    two_limits = [
        exit_order("tp.r", OrderType.LIMIT, limit_price=110.0, oco_group="g"),
        exit_order("tp.r2", OrderType.LIMIT, limit_price=120.0, oco_group="g"),
    ]
    assert all(isinstance(x, LocalRejection) for x in plan_submission(two_limits))


def test_a_take_profit_beside_a_trailing_stop_sends_the_stop_alone_and_refuses_the_limit():
    tp, stop = protective_exits("run", T0, "AAPL", 10, trail_pct=0.02, take_profit_price=110.0)
    assert tp.oco_group == stop.oco_group == tp.client_order_id
    out = plan_submission([tp, stop])
    units = [x for x in out if isinstance(x, Unit)]
    refused = [x for x in out if isinstance(x, LocalRejection)]
    assert [(u.kind, u.primary) for u in units] == [("simple", stop)]
    assert [r.order for r in refused] == [tp]
    assert "trailing stop" in refused[0].reason
    assert body(units[0]) == {
        "symbol": "AAPL",
        "qty": 10.0,
        "side": "sell",
        "type": "trailing_stop",
        "time_in_force": "gtc",
        "client_order_id": stop.client_order_id,
        "trail_percent": 2.0,
    }
    # Alone (take_profit_mode = "trailing"), the trailing stop is a plain simple order.
    [alone] = protective_exits("run", T0, "AAPL", -10, trail_pct=0.05)
    assert alone.side is Side.BUY and alone.oco_group is None
    [unit] = plan_submission([alone])
    assert isinstance(unit, Unit) and unit.kind == "simple"


def test_an_id_repeated_in_a_batch_is_planned_once():
    a = market_order("run", T0, "AAPL", 5)
    assert len(plan_submission([a, a.snapshot()])) == 1


# ----------------------------------------------------------------------------- requests


def test_the_request_matches_what_alpaca_py_was_recorded_sending():
    recorded = fixture("trading", "order_request_limit_as_sent_by_alpaca-py.json")
    sent = Order(
        client_order_id="my-order-0001",
        symbol="AAPL",
        side=Side.BUY,
        quantity=2,
        created_at=T0,
        type=OrderType.LIMIT,
        limit_price=150.0,
        leg=Leg.EXIT,
    )
    assert body(Unit("simple", sent)) == recorded


def test_time_in_force_and_extended_hours():
    entry = market_order("run", T0, "AAPL", 5)
    assert body(Unit("simple", entry))["time_in_force"] == "day"
    assert body(Unit("simple", entry), time_in_force="gtc")["time_in_force"] == "gtc"
    assert "extended_hours" not in body(Unit("simple", entry))
    assert body(Unit("simple", entry), extended_hours=True)["extended_hours"] is True
    e, tp, sl = bracket_orders("run", T0, "AAPL", 10, 110.0, 95.0)
    sl.type, sl.limit_price = OrderType.STOP_LIMIT, 94.5
    fields = body(Unit("bracket", e, tp, sl), bracket_time_in_force="day")
    assert fields["time_in_force"] == "day"
    assert fields["stop_loss"] == {"stop_price": 95.0, "limit_price": 94.5}
    assert body(Unit("oto", e, None, sl))["order_class"] == "oto"


def test_trailing_percent_has_no_float_residue():
    assert trail_percent(0.07) == 7.0
    assert trail_percent(0.0125) == 1.25


# ----------------------------------------------------------------------------- orders


def test_an_alpaca_order_as_an_engine_order():
    raw = fixture("trading", "order_limit_gtc_accepted_spec_example.json")
    o = order_from_alpaca(raw)  # type: ignore[arg-type]
    assert (o.client_order_id, o.symbol, o.side, o.quantity) == (
        "5680c4bc-9ac1-4a12-a44c-df427ba53032",
        "AAPL",
        Side.BUY,
        2.0,
    )
    assert (o.type, o.limit_price, o.stop_price, o.status) == (
        OrderType.LIMIT,
        150.0,
        None,
        OrderStatus.NEW,
    )
    assert o.leg is Leg.ENTRY and o.filled_quantity == 0 and math.isnan(o.avg_fill_price)
    fill = fixture("stream", "trade_update_fill_DERIVED.json")["data"]["order"]  # type: ignore[index]
    f = order_from_alpaca(fill)
    assert (f.status, f.filled_quantity, f.avg_fill_price) == (OrderStatus.FILLED, 10, 149.994)
    trailing = dict(raw, type="trailing_stop", trail_percent="2.5", hwm="151.2", limit_price=None)  # type: ignore[arg-type]
    t = order_from_alpaca(trailing)
    assert (t.type, t.trail_pct, t.trail_anchor) == (OrderType.TRAILING_STOP, 0.025, 151.2)


def test_an_alpaca_order_without_a_time_is_unreadable_and_named():
    """No readable submitted_at, created_at or updated_at: a plain ValueError ("order ''
    has no timestamp") named neither Alpaca's id nor the field. `UnreadableOrder` names
    the order under the client id it is read as, and the values, cut short."""
    raw = fixture("trading", "order_limit_gtc_accepted_spec_example.json")
    garbled = dict(raw, submitted_at=None, created_at="x" * 100, updated_at="")  # type: ignore[arg-type]
    named = (
        f"order {raw['id']} (leg-1): no readable submitted_at or created_at (submitted_at "  # type: ignore[index]
        f"None, created_at '{'x' * 36}..., updated_at '')"
    )
    with pytest.raises(UnreadableOrder, match=re.escape(named)):
        order_from_alpaca(garbled, client_order_id="leg-1")
    with pytest.raises(UnreadableOrder, match=re.escape("order (no id) (no client id): ")):
        order_from_alpaca({"submitted_at": "2024-13-45"})


def _raw_order(status: str, filled_qty: object, **more: object) -> dict[str, object]:
    """An Alpaca order answer for AAPL, 10 shares bought (client order id cid-1), in
    `status` with `filled_qty` as Alpaca gave it (a string, None, garbage)."""
    return {
        "id": "a1",
        "client_order_id": "cid-1",
        "symbol": "AAPL",
        "side": "buy",
        "qty": "10",
        "filled_qty": filled_qty,
        "status": status,
        "submitted_at": "2024-01-02T16:00:00Z",
        **more,
    }


@pytest.mark.parametrize("filled_qty", [None, "", "ten", "-3", "nan"])
@pytest.mark.parametrize(
    ("alpaca", "expected", "working"),
    [
        ("filled", OrderStatus.PARTIALLY_FILLED, True),
        ("canceled", OrderStatus.NEW, True),
        ("expired", OrderStatus.NEW, True),
        ("partially_filled", OrderStatus.PARTIALLY_FILLED, False),
        ("new", OrderStatus.NEW, False),
        ("rejected", OrderStatus.REJECTED, False),
    ],
)
def test_an_order_whose_filled_qty_cannot_be_read_is_not_closed_as_filled_with_nothing(
    filled_qty, alpaca, expected, working
):
    """Found at adoption or a restart, `filled` with an unreadable filled_qty was closed as
    FILLED with 0 filled (a negative one was booked as such): followed no longer, its
    executions were never booked. Kept working as the update path keeps it, and said."""
    raw = _raw_order(alpaca, filled_qty, filled_avg_price="100.5")
    with capture_logs() as logs:
        o = order_from_alpaca(raw)
    assert (o.status, o.filled_quantity, o.quantity) == (expected, 0.0, 10.0)
    assert math.isnan(o.avg_fill_price)
    assert o.reason == ("" if expected.is_open else "rejected by Alpaca after acceptance")
    [line] = [e for e in logs if e["event"] == "alpaca.order.filled_qty_unreadable"]
    assert (line["log_level"], line["client_order_id"], line["symbol"]) == (
        "warning",
        "cid-1",
        "AAPL",
    )
    assert (line["filled_qty"], line["status"]) == (filled_qty, alpaca)
    assert ("followed as working" in line["rule"]) is working


@pytest.mark.parametrize(
    ("alpaca", "expected", "said"),
    [
        ("filled", OrderStatus.PARTIALLY_FILLED, True),  # filled with nothing: a contradiction
        ("partially_filled", OrderStatus.PARTIALLY_FILLED, False),  # working: the next says
        ("canceled", OrderStatus.CANCELLED, False),  # cancelled with nothing filled: usual
        ("new", OrderStatus.NEW, False),
    ],
)
def test_a_filled_order_with_nothing_filled_is_not_closed_as_filled(alpaca, expected, said):
    """Found at adoption or a restart, `filled` with filled_qty "0" was closed as FILLED
    with nothing filled, nothing said: followed no longer, its executions never booked.
    Kept working and said, as an unreadable quantity is."""
    raw = _raw_order(alpaca, "0", filled_avg_price=None)
    with capture_logs() as logs:
        o = order_from_alpaca(raw)
    assert (o.status, o.filled_quantity) == (expected, 0.0)
    lines = [e for e in logs if e["event"] == "alpaca.order.filled_qty_unreadable"]
    assert bool(lines) is said
    if said:
        assert (lines[0]["filled_qty"], lines[0]["why"]) == (
            "0",
            "nothing filled on a filled order",
        )
        assert "followed as working" in lines[0]["rule"]


def test_an_unreadable_filled_qty_is_said_once_an_order_until_it_is_read_again():
    """With the broker's memo (`once`), each order's unreadable quantity is said once, not at
    every read of it; an answer that can be read ends the episode, so the next unreadable
    one is said again. Without a memo every call says it (a pure read, as before)."""
    raw = _raw_order("partially_filled", None)
    other = dict(raw, id="a2", client_order_id="cid-2")
    once = Once()
    with capture_logs() as logs:
        for _ in range(3):
            order_from_alpaca(raw, once=once)
            order_from_alpaca(other, once=once)
        # A leg is named by the engine's id at a restart, by a derived one at the start:
        # the same Alpaca order all the same.
        order_from_alpaca(raw, client_order_id="cid-1-leg", once=once)
        assert order_from_alpaca(dict(raw, filled_qty="4"), once=once).filled_quantity == 4
        order_from_alpaca(raw, once=once)
        order_from_alpaca(other, once=once)
        order_from_alpaca(raw)
    said = [e for e in logs if e["event"] == "alpaca.order.filled_qty_unreadable"]
    assert [e["client_order_id"] for e in said] == ["cid-1", "cid-2", "cid-1", "cid-1"]


def test_a_readable_filled_qty_is_taken_without_a_warning():
    raw = {
        "id": "a1",
        "status": "filled",
        "qty": "10",
        "filled_qty": "10",
        "filled_avg_price": "100.5",
        "submitted_at": "2024-01-02T16:00:00Z",
    }
    with capture_logs() as logs:
        o = order_from_alpaca(raw)
    assert (o.status, o.filled_quantity, o.avg_fill_price) == (OrderStatus.FILLED, 10.0, 100.5)
    assert logs == []


def test_leg_ids_are_derived_from_the_parent_as_tradingd_names_them():
    entry, tp, sl = bracket_orders("run", T0, "AAPL", 10, 110.0, 95.0)
    assert leg_client_order_id(entry.client_order_id, Leg.TAKE_PROFIT) == tp.client_order_id
    assert leg_client_order_id(entry.client_order_id, Leg.STOP_LOSS) == sl.client_order_id
    tp_r = client_order_id("run", T0, "AAPL", "tp.r")
    assert leg_client_order_id(tp_r, Leg.STOP_LOSS) == client_order_id("run", T0, "AAPL", "sl.r")
    assert leg_client_order_id("5680c4bc-9ac1-4a12-a44c-df427ba53032", Leg.STOP_LOSS) is None
    # A protective trailing stop is never part of an Alpaca order with legs: no partner.
    sl_p = client_order_id("run", T0, "AAPL", "sl.p")
    assert leg_client_order_id(sl_p, Leg.TAKE_PROFIT) is None
    assert leg_from_client_order_id(sl_p) is Leg.STOP_LOSS
    assert leg_from_client_order_id(tp_r) is Leg.TAKE_PROFIT
    assert leg_from_client_order_id(sl.client_order_id) is Leg.STOP_LOSS
    assert leg_from_client_order_id("manual-order") is Leg.ENTRY


def test_positions_are_signed():
    rows = fixture("trading", "positions_recorded_2025-11-14.json")
    assert positions_from_alpaca(rows)["AAPL"] == (7.0, 256.597143)  # type: ignore[arg-type]
    # Alpaca's short: a negative qty with side "short" (alpacahq/Alpaca-API#86).
    short = [{"symbol": "X", "qty": "-5", "side": "short", "avg_entry_price": "10"}]
    assert positions_from_alpaca(short) == {"X": (-5.0, 10.0)}
    assert positions_from_alpaca([{"symbol": "Y", "qty": "-3"}])["Y"][0] == -3
    assert positions_from_alpaca([{"symbol": "Z", "qty": "0", "side": "long"}])["Z"][0] == 0


@pytest.mark.parametrize(("qty", "side"), [("-7", "long"), ("7", "short"), ("-0.5", "LONG")])
def test_a_qty_whose_sign_contradicts_the_side_is_refused_naming_both(qty: str, side: str):
    """A long "-7" was read as a short of 7, a short "7" as a short: one of the two fields
    is wrong and which cannot be told, so the answer is unreadable, naming the row, the
    symbol and both fields."""
    rows = [{"symbol": "SPY", "qty": "1", "side": "long"}, {"symbol": "AAPL", "qty": qty}]
    rows[1]["side"] = side
    named = f"positions answer row 1 (AAPL): qty {qty!r} contradicts side {side!r}"
    with pytest.raises(ValueError, match=re.escape(named)):
        positions_from_alpaca(rows)


@given(
    qty=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    side=st.sampled_from(["long", "short", "", None]),
)
def test_a_position_is_its_signed_qty_or_refused(qty: float, side: str | None) -> None:
    """Whatever the numbers: a row is read as its signed qty when the side agrees with
    the sign (or there is no side), and refused when it contradicts it; never flipped."""
    row = {"symbol": "AAPL", "qty": repr(qty), "side": side}
    if (side == "long" and qty < 0) or (side == "short" and qty > 0):
        with pytest.raises(ValueError, match="contradicts side"):
            positions_from_alpaca([row])
    else:
        assert positions_from_alpaca([row])["AAPL"][0] == qty


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"message": "internal error"}, "positions answer is a dict, not a list"),
        (["AAPL"], "positions answer row 0 is a str, not an object"),
        ([{"symbol": "AAPL", "qty": None}], "positions answer row 0 (AAPL): qty None is not"),
        ([{"symbol": "AAPL", "qty": ""}], "positions answer row 0 (AAPL): qty '' is not"),
        (
            [{"symbol": "SPY", "qty": "1"}, {"symbol": "AAPL", "qty": "ten"}],
            "positions answer row 1 (AAPL): qty 'ten' is not",
        ),
        ([{"symbol": "AAPL", "qty": "nan"}], "positions answer row 0 (AAPL): qty 'nan' is not"),
        ([{"qty": "5"}], "positions answer row 0: symbol None is not"),
        ([{"symbol": "", "qty": "5"}], "positions answer row 0: symbol '' is not"),
        (
            [{"symbol": "AAPL", "qty": "1"}, {"symbol": "AAPL", "qty": "2"}],
            "positions answer row 1: symbol 'AAPL' is listed twice",
        ),
    ],
)
def test_a_positions_answer_that_cannot_be_read_is_an_error_naming_the_row_and_field(
    answer: object, named: str
) -> None:
    """A row without a readable qty or symbol was skipped, and an answer that is no list (or
    rows that are no objects) read as no positions: reconciliation took the broker for flat."""
    with pytest.raises(ValueError, match=re.escape(named)):
        positions_from_alpaca(answer)


# ----------------------------------------------------------------------------- errors


def api_error(status: int, text: str) -> APIError:
    return APIError(text, SimpleNamespace(response=SimpleNamespace(status_code=status)))


@pytest.mark.parametrize(
    ("name", "status", "message", "code"),
    [
        ("403_insufficient_buying_power.json", 403, "insufficient buying power", 40310000),
        (
            "403_pdt_protection.json",
            403,
            "trade denied due to pattern day trading protection",
            40310100,
        ),
        (
            "403_wash_trade.json",
            403,
            "potential wash trade detected. use complex orders: "
            "opposite side market/stop order exists",
            40310000,
        ),
        ("422_duplicate_client_order_id.json", 422, "client_order_id must be unique", 40010001),
        ("403_forbidden_missing_auth_headers.json", 403, "forbidden.", None),
        ("401_request_not_authorized.json", 401, "request is not authorized", 40110000),
    ],
)
def test_error_bodies(name, status, message, code):
    text = json.dumps(fixture("errors", name))
    info = error_info(api_error(status, text))
    assert (info.status, info.message, info.code) == (status, message, code)
    assert info.reason.startswith(f"alpaca: {message} (HTTP {status}")
    assert info.duplicate is (name == "422_duplicate_client_order_id.json")
    assert not info.retryable


def test_error_bodies_that_are_not_json():
    info = error_info(api_error(504, "<html>504 Gateway Time-out</html>"))
    assert info.status == 504 and info.code is None and info.retryable
    assert info.message == "<html>504 Gateway Time-out</html>"
    assert error_info(api_error(429, "Too Many Requests")).retryable
    assert error_info(APIError("")).message == "no error message"


# ----------------------------------------------------------------------------- fills


def test_fill_prices_from_events_and_from_cumulative_averages():
    # A stream event describing exactly the step carries its price.
    assert fill_price(4, 100.0, 7, 100.5, event_qty=3, event_price=101.1) == 101.1
    # Otherwise the step's price follows from the averages (poll, or missed events).
    assert fill_price(4, 99.9, 10, 100.02, event_qty=2, event_price=200.0) == pytest.approx(
        (100.02 * 10 - 99.9 * 4) / 6
    )
    assert fill_price(0, math.nan, 5, 99.5) == 99.5
    order = market_order("run", T0, "AAPL", 10)
    fill = make_fill(order, 7.0, 3.0, 101.0, T0)
    assert fill.fill_id == f"{order.client_order_id}#7"
    assert (fill.quantity, fill.price, fill.commission, fill.slippage) == (3.0, 101.0, 0.0, 0.0)
    assert math.isnan(fill.reference_price)
    assert make_fill(order, 0.125, 0.125, 1.0, T0).fill_id.endswith("#0.125")


# ----------------------------------------------------------------------------- keys, config


def test_keys_come_from_the_environment():
    assert alpaca_keys_from_env({}) is None
    assert alpaca_keys_from_env({"APCA_API_KEY_ID": " ", "APCA_API_SECRET_KEY": ""}) is None
    assert alpaca_keys_from_env({"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": "s"}) == ("k", "s")
    with pytest.raises(ConfigError, match="APCA_API_SECRET_KEY is not") as half:
        alpaca_keys_from_env({"APCA_API_KEY_ID": "PKVISIBLE123"})
    assert "PKVISIBLE123" not in str(half.value)
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID is not") as other:
        alpaca_keys_from_env({"APCA_API_SECRET_KEY": "topsecret999"})
    assert "topsecret999" not in str(other.value)


def test_config_defaults_and_validation():
    cfg = AlpacaBrokerConfig()
    assert cfg.base_url == "https://paper-api.alpaca.markets"
    assert cfg.effective_stream_url == "wss://paper-api.alpaca.markets/stream"
    assert AlpacaBrokerConfig(base_url="http://127.0.0.1:8080").effective_stream_url == (
        "ws://127.0.0.1:8080/stream"
    )
    assert (cfg.time_in_force, cfg.exit_time_in_force, cfg.extended_hours) == ("day", "gtc", False)
    with pytest.raises(ValueError, match="live"):
        AlpacaBrokerConfig(base_url="https://api.alpaca.markets")
    with pytest.raises(ValueError, match="time_in_force"):
        AlpacaBrokerConfig(time_in_force="forever")
    with pytest.raises(ValueError, match="bracket_time_in_force"):
        AlpacaBrokerConfig(bracket_time_in_force="ioc")
    with pytest.raises(ValueError, match="poll_interval_s"):
        AlpacaBrokerConfig(poll_interval_s=0)
    with pytest.raises(ValueError, match="max_attempts"):
        AlpacaBrokerConfig(max_attempts=0)
    with pytest.raises(ValueError, match="stream_url"):
        AlpacaBrokerConfig(stream_url="http://127.0.0.1/stream")


async def test_a_broker_not_started_says_so_and_hides_its_keys():
    broker = AlpacaBroker(AlpacaBrokerConfig(), ("PKHIDDEN0001", "hidden-secret-0001"))
    assert "hidden" not in repr(broker) and "PKHIDDEN" not in repr(broker)
    assert "hidden" not in repr(broker.status())
    assert broker.status()["started"] is False
    with pytest.raises(RuntimeError, match="start"):
        await broker.submit([market_order("run", T0, "AAPL", 1)])
    with pytest.raises(ConfigError):
        AlpacaBroker(AlpacaBrokerConfig(), ("", "x"))
