"""The split lookup (engine/splits_ahead.py) is off the bar's path and remembers failures.

A corporate-actions host that accepts and never answers cost the first bar ~30 s (request
timeout 10 s x 3 attempts) and every later bar ~10 s; a 403 was asked for and warned at
every bar. Now a session day's lookup runs in a task of its own, a bar waits for it at most
`quick_s` once a day, and a failure is backed off and warned once per day and kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fakes.hung_host import hung_host
from structlog.testing import capture_logs

from tradingd.engine.engine import Engine
from tradingd.engine.splits_ahead import BACKOFF_S, SplitsAhead
from tradingd.feeds.corporate_actions import AlpacaSplits, Split
from tradingd.feeds.resilience import SourceConfig, make_error

D0 = date(2026, 12, 7)  # a Monday


def _day_of(t: datetime) -> date:
    return t.date()


def _next_day(t: datetime) -> date:
    return t.date() + timedelta(days=1)


def _bar(day: date, hour: int = 20) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


@pytest.fixture
def hung_url() -> Iterator[str]:
    with hung_host() as host:
        yield host.url


async def _bar_step(ahead: SplitsAhead, t: datetime) -> None:
    """What the engine does for the splits at bar `t`: its own `_splits_due`, on an engine
    that has `ahead` and no alerter."""
    engine: Any = SimpleNamespace(splits_ahead=ahead)
    await Engine._splits_due(engine, t)


async def test_a_hung_host_delays_one_bar_a_day_at_most_quick_s(hung_url: str) -> None:
    source = AlpacaSplits(
        "KEY",
        "SECRET",
        base_url=hung_url,
        config=SourceConfig.for_source("alpaca", timeout_s=120.0, max_attempts=3),
        request_timeout_s=60.0,
    )
    ahead = SplitsAhead(source, [f"S{i:03d}" for i in range(200)], _day_of, _next_day)
    # Waits far apart (quick_s 2 s, the request's timeout 60 s), so that a loaded machine's
    # slowness cannot be mistaken for the other wait: 1.26 s was seen against a 1.0 s
    # bound when quick_s was 0.2 s and the request's timeout 1 s.
    ahead.quick_s = 2.0
    try:
        waits = []
        for hour in range(14, 21):  # seven bars of one session day
            t0 = time.monotonic()
            await _bar_step(ahead, _bar(D0, hour))
            waits.append(time.monotonic() - t0)
        # The first bar waited for the day's lookup at most quick_s; the others did not
        # wait at all: one lookup in flight, never a second request meanwhile.
        assert waits[0] < 30.0
        assert max(waits[1:]) < 1.0
        assert ahead.lookups == 1 and ahead.done_for is None
    finally:
        ahead.close()


class _Refusing:
    """A source answering 403 (a plan without the data) until `works`."""

    def __init__(self) -> None:
        self.calls: list[tuple[date, date]] = []
        self.works = False
        self.found: list[Split] = []

    async def splits(self, symbols: Sequence[str], start: date, end: date) -> list[Split]:
        self.calls.append((start, end))
        if not self.works:
            raise make_error("alpaca_corporate_actions", "auth", "HTTP 403: not permitted")
        return [s for s in self.found if start <= s.ex_date <= end]

    def close(self) -> None:
        pass


async def test_a_refusal_is_backed_off_warned_once_and_alerted_until_it_works() -> None:
    source = _Refusing()
    now = [1000.0]
    ahead = SplitsAhead(source, ["S00"], _day_of, _next_day, monotonic=lambda: now[0])
    told: list[str | None] = []
    ahead.on_error = told.append
    with capture_logs() as logs:
        for hour in range(14, 19):  # five bars of a day
            await _bar_step(ahead, _bar(D0, hour))
        # The backoff over: asked again (the heartbeat's start), failing the same day: not
        # warned again; the backoff doubles.
        now[0] += BACKOFF_S
        task = ahead.start(D0)
        assert task is not None
        await task
        now[0] += BACKOFF_S
        assert ahead.start(D0) is None
    assert len(source.calls) == 2
    [warned] = [e for e in logs if e["event"] == "split.lookup_failed"]
    assert warned["log_level"] == "warning" and "auth" in warned["error"]
    assert warned["retry_in_s"] == BACKOFF_S
    assert ahead.status()["last_error"] and told and told[-1]

    # Two more days of bars under the backoff: nothing asked; then a new day's failure is
    # warned once.
    day = D0 + timedelta(days=2)
    with capture_logs() as logs:
        for k in (1, 2):
            for hour in range(14, 19):
                await _bar_step(ahead, _bar(D0 + timedelta(days=k), hour))
        assert len(source.calls) == 2
        now[0] += BACKOFF_S
        task = ahead.start(day)
        assert task is not None
        await task
    assert len(source.calls) == 3
    [warned] = [e for e in logs if e["event"] == "split.lookup_failed"]
    assert warned["day"] == day.isoformat() and warned["retry_in_s"] == 4 * BACKOFF_S

    # It works: the error and the alert are cleared, the split known from that day on.
    now[0] += 4 * BACKOFF_S
    source.works = True
    source.found = [Split("S00", day, 4.0)]
    task = ahead.start(day)
    assert task is not None
    await task
    assert source.calls[-1] == (day, day + timedelta(days=7))
    assert ahead.last_error is None and told[-1] is None
    assert ahead.known == {"S00": source.found[0]}
    assert ahead.status() == {"held": [], "looked_up_for": day.isoformat(), "last_error": None}
    # Bar of the day before: S00 held for the next session; its own bar applies it.
    t = _bar(day - timedelta(days=1))
    assert ahead.due(t) == {"S00": source.found[0]}
    assert ahead.status()["held"] == [
        {"symbol": "S00", "ex_date": day.isoformat(), "ratio": 4.0, "split": "4:1"}
    ]
    assert ahead.applied(_bar(day), np.array([4.0]), np.array([True]))


async def test_the_lookup_is_not_awaited_at_a_bar_once_the_day_is_done() -> None:
    source = _Refusing()
    source.works = True
    ahead = SplitsAhead(source, ["S00"], _day_of, _next_day)
    await _bar_step(ahead, _bar(D0))  # the first bar of a run waits for its day's lookup
    assert source.calls == [(D0, D0 + timedelta(days=7))]
    # The next day's lookup was started, not awaited, by that bar.
    assert ahead._task is not None and not ahead._task.done()
    await asyncio.wait({ahead._task})
    assert source.calls[-1][0] == D0 + timedelta(days=1)
    await _bar_step(ahead, _bar(D0 + timedelta(days=1)))  # done: nothing awaited
    assert len(source.calls) == 2 and not ahead._task.done()
    await asyncio.wait({ahead._task})
    assert source.calls[-1][0] == D0 + timedelta(days=2)
