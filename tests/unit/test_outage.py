"""The counting and pacing shared by the daemon's outages (core/outages.py): the broker's and
the data source's as a live engine's bars see them, Alpaca's failing polls on the wall
clock. What its owners' tests do not reach: a wall clock stepped back, counts added between
failures, the waits checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tradingd.core.outages import Outage

T0 = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def test_a_wall_clock_stepped_back_neither_says_early_nor_goes_silent():
    outage = Outage(repeat_first=5 * MINUTE, repeat_max=60 * MINUTE)
    assert outage.failed(T0, "down") is not None  # the first
    # The clock steps back an hour: the wait runs from there, not from the line before it
    # (which would be silent for an hour and 5 minutes), and nothing is due at once.
    back = T0 - 60 * MINUTE
    assert outage.failed(back, "down") is None
    assert outage.failed(back + 4 * MINUTE, "down") is None
    due = outage.failed(back + 5 * MINUTE, "down")
    assert due is not None and not due.first
    assert due.since_last_line == {"failures": 3} and outage.failures == 4


def test_counts_added_between_failures_are_in_the_next_line_and_the_end():
    outage = Outage(repeat_first=5 * MINUTE, repeat_max=60 * MINUTE, unit="bars")
    outage.count(lost=7)  # no outage: nothing to add to
    outage.failed(T0, "down", symbols=3)
    outage.count(lost=1)
    outage.failed(T0 + MINUTE, "down", symbols=3)
    due = outage.failed(T0 + 5 * MINUTE, "still down", symbols=2)
    assert due is not None and due.since_last_line == {"bars": 2, "symbols": 5, "lost": 1}
    assert due.next_after == 10 * MINUTE
    outage.count(lost=2)
    ended = outage.recovered(T0 + 6 * MINUTE)
    assert ended is not None
    assert ended.counts == {"bars": 3, "symbols": 8, "lost": 3}
    assert ended.since_last_line == {"lost": 2}
    assert (ended.since, ended.last_failed, ended.error) == (T0, T0 + 5 * MINUTE, "still down")
    assert ended.fields()["down_for_s"] == 360.0
    assert not outage.active and outage.recovered(T0 + 7 * MINUTE) is None


@pytest.mark.parametrize(
    ("first", "most"), [(timedelta(0), MINUTE), (-MINUTE, MINUTE), (2 * MINUTE, MINUTE)]
)
def test_waits_that_would_say_every_failure_or_shrink_are_refused(first, most):
    with pytest.raises(ValueError, match="repeat_first"):
        Outage(repeat_first=first, repeat_max=most)


def test_a_feed_outage_stopped_says_its_counts_and_a_new_one_says_its_firsts_again():
    """The bars since the last line were debug lines: a stop during the outage says how many
    (and how many lost, given up), and a later outage says its first bar.lost again."""
    from structlog.testing import capture_logs

    from tradingd.engine.outages import FeedOutage

    feed = FeedOutage(symbols=4)
    with capture_logs() as logs:
        for i in range(3):
            feed.unavailable(T0 + i * MINUTE, "down", "next bar")
            feed.gave_up(T0 + i * MINUTE, reason="the clock released another bar")
        feed.lost(T0, newer=T0 + 3 * MINUTE)
        feed.lost(T0 + MINUTE, newer=T0 + 3 * MINUTE)
        feed.delivered(T0 + 3 * MINUTE)
        feed.unavailable(T0 + 10 * MINUTE, "down again", "next bar")
        feed.lost(T0 + 10 * MINUTE, reason="too many missed")
        feed.unavailable(T0 + 11 * MINUTE, "down again", "next bar")
        feed.at_stop()
    said = [(e["event"], e["time"]) for e in logs if e["log_level"] != "debug"]
    assert said == [
        ("bar.unavailable", T0),
        ("bar.retry_stopped", T0),  # with its bar; the next two at debug
        ("bar.lost", T0),  # the first of the outage; the second counted
        ("feed.recovered", T0 + 3 * MINUTE),
        ("bar.unavailable", T0 + 10 * MINUTE),
        ("bar.lost", T0 + 10 * MINUTE),  # a new outage's first
        ("feed.still_unavailable", T0 + 11 * MINUTE),  # the stop
    ]
    [end] = [e for e in logs if e["event"] == "feed.recovered"]
    assert (end["bars"], end["given_up"], end["lost"], end["symbols"]) == (3, 3, 2, 4)
    [stop] = [e for e in logs if e.get("stopping")]
    assert (stop["since"], stop["bars"], stop["lost"]) == (T0 + 10 * MINUTE, 2, 1)
    assert (stop["bars_since_last_line"], stop["lost_since_last_line"]) == (1, 1)


def test_a_feed_outages_status_shows_it_while_it_lasts():
    """/status had `broker_outage` but nothing of the data source's outage: the counts were
    only in the log lines (`feed.still_unavailable`)."""
    from tradingd.engine.outages import FeedOutage

    feed = FeedOutage(symbols=4)
    assert feed.status() is None
    feed.unavailable(T0, "down", "next bar")
    feed.gave_up(T0, reason="the clock released another bar")
    feed.unavailable(T0 + MINUTE, "HTTP 503", "next bar")
    feed.lost(T0, newer=T0 + 2 * MINUTE)
    assert feed.status() == {
        "since": T0,
        "last_unavailable": T0 + MINUTE,
        "bars": 2,
        "given_up": 1,
        "lost": 1,
        "recovered": 0,
        "error": "HTTP 503",
    }
    feed.delivered(T0 + 2 * MINUTE)
    assert feed.status() is None
