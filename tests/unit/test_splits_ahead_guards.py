"""The split lookup's callbacks and the engine's retry loop: a failure in them is logged and
the lookup goes on (they ran in background tasks nobody awaits, and died silently)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from tradingd.engine.engine import Engine
from tradingd.engine.splits_ahead import BACKOFF_S, SplitsAhead
from tradingd.feeds.corporate_actions import Split
from tradingd.feeds.resilience import make_error

D0 = date(2026, 12, 7)


class _Source:
    def __init__(self) -> None:
        self.works = False
        self.found: list[Split] = []

    async def splits(self, symbols: Sequence[str], start: date, end: date) -> list[Split]:
        if not self.works:
            raise make_error("alpaca_corporate_actions", "auth", "HTTP 403: not permitted")
        return list(self.found)

    def close(self) -> None:
        pass


def _ahead(source: _Source, now: list[float]) -> SplitsAhead:
    return SplitsAhead(
        source,
        ["S00"],
        lambda t: t.date(),
        lambda t: t.date() + timedelta(days=1),
        monotonic=lambda: now[0],
    )


def _raise(*args: Any) -> Any:
    raise RuntimeError("callback broke")


async def _lookup(ahead: SplitsAhead, day: date) -> None:
    task = ahead.start(day)
    assert task is not None
    await task


async def test_a_failing_at_risk_still_warns_and_alerts() -> None:
    told: list[str | None] = []
    ahead = _ahead(_Source(), [0.0])
    ahead.at_risk = _raise
    ahead.on_error = told.append
    with capture_logs() as logs:
        await _lookup(ahead, D0)
    [warned] = [e for e in logs if e["event"] == "split.lookup_failed"]
    assert warned["symbols"] is None and "auth" in warned["error"]
    [broke] = [e for e in logs if e["event"] == "split.at_risk_failed"]
    assert broke["log_level"] == "error" and broke["exc_info"] is True
    assert told and told[-1] and ahead.last_error_kind == "auth"


async def test_a_failing_on_error_neither_loses_the_failure_nor_the_answer() -> None:
    source, now = _Source(), [0.0]
    ahead = _ahead(source, now)
    ahead.on_error = _raise
    with capture_logs() as logs:
        await _lookup(ahead, D0)
        assert ahead.start(D0) is None  # backed off
        now[0] += BACKOFF_S
        source.works = True
        source.found = [Split("S00", D0 + timedelta(days=1), 4.0)]
        await _lookup(ahead, D0)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["split.lookup_failed"]
    broke = [e for e in logs if e["event"] == "split.on_error_failed"]
    assert [e["error"] is None for e in broke] == [False, True]
    assert ahead.done_for == D0 and ahead.known == {"S00": source.found[0]}
    assert ahead.last_error is None


async def test_only_the_failing_day_s_warnings_are_kept() -> None:
    now = [0.0]
    ahead = _ahead(_Source(), now)
    for k in range(10):
        now[0] += 3600.0
        await _lookup(ahead, D0 + timedelta(days=k))
    assert ahead._warned == {(D0 + timedelta(days=9), "auth")}


async def test_the_retry_loop_outlives_a_failure_to_start_a_lookup() -> None:
    asked = asyncio.Event()
    calls: list[str] = []

    class _Ahead:
        def next_day(self, t: datetime) -> date:
            calls.append("next_day")
            if len(calls) <= 2:
                raise RuntimeError("no calendar")
            return t.date()

        def start(self, day: date) -> None:
            asked.set()

    engine: Any = SimpleNamespace(
        splits_ahead=_Ahead(),
        clock=SimpleNamespace(heartbeat_s=0.001),
        _last_time=datetime(2026, 12, 7, 21, tzinfo=UTC),
    )
    with capture_logs() as logs:
        task = asyncio.create_task(Engine._splits_every(engine))
        try:
            await asyncio.wait_for(asked.wait(), timeout=10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    failed = [e for e in logs if e["event"] == "split.retry_failed"]
    assert len(failed) == 2 and all(e["exc_info"] is True for e in failed)


@pytest.mark.parametrize("ratio", [4.0, 0.1])
def test_the_broker_s_split_is_said_once_per_split(ratio: float) -> None:
    ahead = _ahead(_Source(), [0.0])
    s = Split("S00", D0, ratio)
    ahead.held["S00"] = s
    engine: Any = SimpleNamespace(splits_ahead=ahead)
    book = 30.0
    with capture_logs() as logs:
        for _ in range(5):  # five reconciliations in the ex-date's session
            assert Engine._split_expected(engine, "S00", book * ratio, book)
    said = [e for e in logs if e["event"] == "reconcile.split_expected"]
    assert len(said) == 1 and said[0]["log_level"] == "info"
