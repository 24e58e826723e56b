"""A vendor feed whose source is down for a long intraday stretch: its warnings are paced as
the engine's outage lines are (core/outages.py), every failure still counted in the lines.

A trial that stopped the loopback source during a 1-minute live run logged, every bar, two
`feed.symbols_failed` warnings (the bar's release and its retry) and, every minute or so,
`source.call.failed` and `source.circuit.open` (each failed half-open probe): about 120
warnings an hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fakes import BarBook
from fakes.yahoo_server import YahooFake
from structlog.testing import capture_logs

from tradingd.core.errors import RetryableError
from tradingd.feeds.resilience import ResilientCaller, SourceConfig
from tradingd.feeds.vendor import VendorFeed
from tradingd.feeds.yahoo import YahooClient

START = datetime(2024, 3, 6, 22, 0, tzinfo=UTC)  # after the close of the bar asked for
BAR = datetime(2024, 3, 6, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB", "CCC")
MINUTES = 120


class Clock:
    """The one clock of the test: the feed's and the caller's wall clocks, and the
    breaker's monotonic seconds."""

    def __init__(self) -> None:
        self.now = START

    def wall(self) -> datetime:
        return self.now

    def mono(self) -> float:
        return (self.now - START).total_seconds()


async def no_sleep(_: float) -> None:
    return None


def warnings(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event and e["log_level"] != "debug"]


async def test_a_long_outage_is_said_first_then_paced_with_counts_then_recovered():
    clock = Clock()
    async with YahooFake(BarBook(now=START)) as fake:
        caller = ResilientCaller(
            "yahoo",
            SourceConfig(
                max_attempts=2,
                backoff_base_s=0.0,
                timeout_s=1.0,
                breaker_failure_threshold=3,
                breaker_reset_timeout_s=60,
            ),
            sleep=no_sleep,
            clock=clock.mono,
            wall_clock=clock.wall,
        )
        source = YahooClient(base_url=fake.url, caller=caller, clock=clock.wall)
        feed = VendorFeed(source, SYMBOLS, "1d", clock=clock.wall)
        await feed.start()
        try:
            fake.faults.down(1_000_000)
            asked = 0
            with capture_logs() as logs:
                for minute in range(MINUTES):
                    # A bar's release and its retry half a minute later, as the engine asks.
                    for second in (0, 30):
                        clock.now = START + timedelta(minutes=minute, seconds=second)
                        with pytest.raises(RetryableError, match="no symbol could be fetched"):
                            await feed.bars(BAR)
                        asked += 1
                failures = caller.errors  # counted apart from the lines

                fake.faults.clear()
                clock.now += timedelta(minutes=1)  # past the breaker's reset: a probe goes
                bar = await feed.bars(BAR)
            assert bar is not None and bar.valid.all()
        finally:
            await feed.stop()

    # The first of each said in full, as before the pacing.
    failed = warnings(logs, "feed.symbols_failed")
    assert len(failed) == 1 and failed[0]["failed"] == len(SYMBOLS)
    assert "feed.symbols_still_failing" in failed[0]["then"]
    calls = warnings(logs, "source.call.failed")
    assert len(calls) == 1 and calls[0]["kind"] == "http_5xx"
    opened = warnings(logs, "source.circuit.open")
    assert len(opened) == 1 and opened[0]["source"] == "yahoo"
    # Every failure is still a line (a debug one, or the repeat line it made due).
    each = ("feed.symbols_failed", "feed.symbols_still_failing")
    assert len([e for e in logs if e["event"] in each]) == asked
    each = ("source.call.failed", "source.still_unavailable")
    assert len([e for e in logs if e["event"] in each]) == failures

    # Then bounded: a repeat line at 5, 15, 35 and 75 minutes (not one a bar), each with
    # the counts since the last line, which add up to the counts in all.
    for event, unit, total in (
        ("feed.symbols_still_failing", "answers", asked),
        ("source.still_unavailable", "failures", failures),
    ):
        repeats = warnings(logs, event)
        assert [r["down_for"] for r in repeats] == [
            str(timedelta(minutes=m)) for m in (5, 15, 35, 75)
        ], event
        for i, r in enumerate(repeats):
            said = 1 + sum(x[f"{unit}_since_last_line"] for x in repeats[: i + 1])
            assert r[unit] == said, (event, i)
        assert 0 < repeats[-1][unit] < total
    for r in warnings(logs, "source.still_unavailable"):
        assert sum(r["kinds"].values()) == r["failures"]
        assert r["circuit_opened"] >= 1
    # Before: two warnings a bar (240), and the source's each minute.
    assert len([e for e in logs if e["log_level"] in ("warning", "error")]) == 3 + 2 * 4

    # One recovery line each, with the outage's counts in all.
    (fed,) = [e for e in logs if e["event"] == "feed.symbols_recovered"]
    assert fed["log_level"] == "info"
    assert fed["answers"] == asked and fed["symbol_failures"] == asked * len(SYMBOLS)
    (up,) = [e for e in logs if e["event"] == "source.recovered"]
    assert up["log_level"] == "info" and up["failures"] == failures
    assert sum(up["kinds"].values()) == failures
    assert set(up["kinds"]) == {"http_5xx", "circuit_open"}
    # The breaker reopened after each failed probe: each counted, only the first a warning.
    reopened = [e for e in logs if e["event"] == "source.circuit.open"]
    assert up["circuit_opened"] == len(reopened) > 1
