"""alpaca-py's trade stream logs a traceback at error level at every failed reconnect (every
1-30 s while the stream is down or refused): the broker lets the first of a kind through and
counts the repeats within a window."""

from __future__ import annotations

import logging

from tradingd.brokers.alpaca import _RepeatLimit


def _record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("alpaca.trading.stream", level, __file__, 1, msg, (), None)


def test_repeats_within_the_window_are_counted_not_logged() -> None:
    now = [0.0]
    limit = _RepeatLimit(window_s=300.0, clock=lambda: now[0])
    refused = "error during websocket communication: [Errno 111] Connect call failed"
    assert limit.filter(_record(refused))
    passed = []
    for t in range(1, 100):  # every 3 s for about 5 minutes
        now[0] = 3.0 * t
        passed.append(limit.filter(_record(refused)))
    assert passed == [False] * 99
    assert limit.filter(_record("another error entirely"))  # another kind goes through
    assert limit.filter(_record(refused, logging.WARNING))  # and another level
    now[0] = 301.0
    later = _record(refused)
    assert limit.filter(later)
    assert later.getMessage().endswith("(99 more like it in the last 300 s not logged)")
    now[0] = 302.0
    assert not limit.filter(_record(refused))


def test_the_memory_of_kinds_stays_bounded() -> None:
    limit = _RepeatLimit(window_s=300.0, clock=lambda: 0.0)
    for i in range(10_000):
        assert limit.filter(_record(f"{i:06d} a new kind of message each time"))
    assert len(limit._last) <= 256
