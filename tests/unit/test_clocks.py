from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tradingd.clock.live import LiveClock
from tradingd.clock.replay import ReplayClock
from tradingd.config import LiveConfig

CAL = [datetime(2020, 1, d, tzinfo=UTC) for d in range(1, 11)]


async def test_replay_clock_yields_every_time_and_stops_on_request():
    clock = ReplayClock(CAL)
    await clock.start()
    got = []
    async for t in clock:
        got.append(t)
        if len(got) == 4:
            clock.request_stop()
    assert got == CAL[:4]


async def test_accelerated_live_clock_releases_the_calendar_in_order():
    clock = LiveClock(LiveConfig(bars_per_second=500.0), CAL)
    await clock.start()
    try:
        got = [t async for t in clock]
    finally:
        await clock.stop()
    assert got == CAL
    assert clock.fired >= len(CAL)


async def test_late_consumer_loses_no_bar():
    """Releases that pile up while the engine is busy are all handed over, in order."""
    clock = LiveClock(LiveConfig(bars_per_second=0.001), CAL)  # the scheduler will not fire
    await clock.start()
    try:
        for _ in range(len(CAL)):
            await clock._release_next()
        await clock._release_next()  # one firing too many: nothing left to release
        got = [t async for t in clock]
    finally:
        await clock.stop()
    assert got == CAL


async def test_real_time_clock_fires_after_the_close_on_weekdays():
    clock = LiveClock(LiveConfig(close_time="16:00", delay_s=300, timezone="America/New_York"))
    await clock.start()
    try:
        job = clock._scheduler.get_job("bar-close")
        nxt = job.next_run_time.astimezone(ZoneInfo("America/New_York"))
        assert (nxt.hour, nxt.minute) == (16, 5)
        assert nxt.weekday() < 5
        assert nxt - datetime.now(UTC) <= timedelta(days=4)
    finally:
        await clock.stop()


async def test_release_session_labels_the_bar_by_its_session_date():
    clock = LiveClock(LiveConfig())
    await clock.start()
    try:
        await clock._release_session()
        today = datetime.now(ZoneInfo("America/New_York")).date()
        it = clock.__aiter__()
        t = await it.__anext__()
        assert t == datetime(today.year, today.month, today.day, tzinfo=UTC)
    finally:
        await clock.stop()


def test_accelerated_clock_needs_a_calendar():
    with pytest.raises(ValueError, match="calendar"):
        LiveClock(LiveConfig(bars_per_second=10.0))
