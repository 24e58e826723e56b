"""A broker outage's log (engine/outages.py): each bar of an outage was an error line
`broker.unavailable`, so an hour's outage at 1-minute bars wrote 60 identical lines, months
of them burying every other line. The first bar is said, the rest counted and said at most
every 5 minutes of bars, the wait doubling up to an hour, and the end once; nothing counted
is left out of the lines."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from tradingd.engine.outages import REPEAT_FIRST, REPEAT_MAX, BrokerOutage

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _outage(bars: int, step: timedelta = MINUTE, orders_at=lambda i: 1 + i % 3):  # type: ignore[no-untyped-def]
    """`bars` failing bars `step` apart from T0, then one that gets through; the log lines,
    the orders each failing bar could not place, and the bars whose lines were said."""
    outage = BrokerOutage()
    orders = [orders_at(i) for i in range(bars)]
    said = []
    with capture_logs() as logs:
        for i in range(bars):
            if outage.failed(T0 + i * step, "broker unreachable", orders[i]):
                said.append(i)
        outage.got_through(T0 + bars * step)
    return logs, orders, said


def _errors(logs):  # type: ignore[no-untyped-def]
    return [e for e in logs if e["log_level"] == "error"]


def test_an_hours_outage_at_1_minute_bars_is_four_lines_and_its_end():
    logs, orders, said = _outage(60)
    errors = _errors(logs)
    # The first bar, then 5, 10, 20 minutes after the line before it.
    assert [e["time"] for e in errors] == [T0 + m * MINUTE for m in (0, 5, 15, 35)]
    assert [e["event"] for e in errors] == ["broker.unavailable"] + ["broker.still_unavailable"] * 3
    assert said == [0, 5, 15, 35]
    assert errors[0]["orders"] == orders[0] and errors[0]["error"] == "broker unreachable"
    # Each repeat counts the bars and orders since the line before it, and all so far.
    for k in range(1, len(said)):
        before, now, line = said[k - 1], said[k], errors[k]
        assert line["bars_since_last_line"] == now - before
        assert line["orders_since_last_line"] == sum(orders[before + 1 : now + 1])
        assert (line["bars"], line["orders"]) == (now + 1, sum(orders[: now + 1]))
        assert line["since"] == T0
    [end] = [e for e in logs if e["event"] == "broker.recovered"]
    assert (end["bars"], end["orders"]) == (60, sum(orders))
    assert (end["since"], end["last_failed"], end["time"]) == (
        T0,
        T0 + 59 * MINUTE,
        T0 + 60 * MINUTE,
    )
    assert end["down_for_s"] == 3600.0
    # The bars between the lines are debug lines, one each: none dropped unseen.
    debug = [
        e for e in logs if e["event"] == "broker.still_unavailable" and e["log_level"] == "debug"
    ]
    assert len(debug) == 60 - len(errors)


def test_a_long_outage_says_at_most_one_line_an_hour():
    days = 3
    logs, _, _said = _outage(days * 24 * 60)
    times = [e["time"] for e in _errors(logs)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == REPEAT_MAX and min(gaps) == REPEAT_FIRST
    assert all(b >= a for a, b in itertools.pairwise(gaps))  # the wait only grows
    # About one an hour: 72 hours less the ramp-up's first hour or so.
    assert days * 24 - 2 <= len(times) <= days * 24 + 4, len(times)


def test_every_bar_of_a_daily_run_is_said():
    """A day between bars is past any wait: a daily run's outage says each missed bar."""
    logs, _orders, said = _outage(5, step=timedelta(days=1))
    assert said == list(range(5))
    assert [e["bars"] for e in _errors(logs)[1:]] == [2, 3, 4, 5]


def test_a_second_outage_starts_again_with_broker_unavailable():
    outage = BrokerOutage()
    with capture_logs() as logs:
        for i in range(3):
            outage.failed(T0 + i * MINUTE, "timeout", 2)
        outage.got_through(T0 + 3 * MINUTE)
        assert outage.status() is None
        outage.failed(T0 + 10 * MINUTE, "HTTP 503", 1)
        assert outage.status() == {
            "since": T0 + 10 * MINUTE,
            "last_failed": T0 + 10 * MINUTE,
            "bars": 1,
            "orders": 1,
            "error": "HTTP 503",
        }
        outage.at_stop(T0 + 12 * MINUTE)
    events = [(e["event"], e["log_level"]) for e in logs if e["log_level"] != "debug"]
    assert events == [
        ("broker.unavailable", "error"),
        ("broker.recovered", "info"),
        ("broker.unavailable", "error"),
        ("broker.still_unavailable", "error"),  # the stop, during the second
    ]
    [stop] = [e for e in logs if e.get("stopping")]
    assert (stop["since"], stop["bars"], stop["orders"]) == (T0 + 10 * MINUTE, 1, 1)


def test_a_bar_that_gets_through_outside_an_outage_says_nothing():
    outage = BrokerOutage()
    with capture_logs() as logs:
        outage.got_through(T0)
    assert logs == [] and outage.status() is None
