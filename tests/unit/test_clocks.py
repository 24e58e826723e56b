from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pytest
from structlog.testing import capture_logs

from tradingd.clock.calendar import CalendarRangeError, ExchangeCalendar
from tradingd.clock.live import LiveClock
from tradingd.clock.replay import ReplayClock
from tradingd.config import LiveConfig

CAL = [datetime(2020, 1, d, tzinfo=UTC) for d in range(1, 11)]
NY = ZoneInfo("America/New_York")


def d(y: int, m: int, day: int) -> datetime:
    return datetime(y, m, day, tzinfo=UTC)


def u(y: int, m: int, day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, day, hh, mm, ss, tzinfo=UTC)


class FakeTime:
    """A settable `now` for the clock: tests move through dates without waiting."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def drain(clock: LiveClock) -> list[datetime]:
    got = list(clock._pending)
    clock._pending.clear()
    return got


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


async def test_an_accelerated_replay_far_behind_its_rate_waits_and_loses_no_bar(monkeypatch):
    """Firings past the backlog's bound (10,000 bars) dropped the oldest bars from the middle
    of the replay without a word; they now wait for the engine, and every bar is handed
    over once, in order."""
    import tradingd.clock.live as live

    monkeypatch.setattr(live, "_MAX_PENDING", 4)
    cal = [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(12)]
    clock = LiveClock(LiveConfig(bars_per_second=0.001), cal)  # the scheduler will not fire
    await clock.start()
    try:
        got: list[datetime] = []
        while len(got) < len(cal):
            for _ in range(7):  # the rate outruns the engine
                await clock._release_next()
            assert len(clock._pending) <= 4
            got.append(await anext(aiter(clock)))
        assert [t async for t in clock] == []
    finally:
        await clock.stop()
    assert got == cal and clock.dropped == 0


async def test_real_time_clock_fires_after_the_close_on_sessions():
    """On the real wall clock: armed for the next session's close + 5 minutes, New York."""
    clock = LiveClock(LiveConfig(delay_s=300))
    await clock.start()
    try:
        job = clock._scheduler.get_job("bar-close")
        nxt = job.next_run_time.astimezone(NY)
        assert (nxt.hour, nxt.minute) in {(16, 5), (13, 5)}  # regular day or half day
        assert clock.exchange.is_session(nxt.date())
        assert abs(job.next_run_time - clock.next_release_at) < timedelta(seconds=1)
        assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(days=5)
    finally:
        await clock.stop()


def test_accelerated_clock_needs_a_calendar():
    with pytest.raises(ValueError, match="calendar"):
        LiveClock(LiveConfig(bars_per_second=10.0))


async def test_schedule_is_armed_at_close_plus_delay_with_deliberate_misfire_policy():
    now = FakeTime(u(2024, 11, 27, 15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now)
    await clock.start()
    try:
        assert clock.next_release_at == u(2024, 11, 27, 21, 5)  # 16:05 EST
        job = clock._scheduler.get_job("bar-close")
        wait = job.next_run_time - datetime.now(UTC)
        assert abs(wait - timedelta(hours=6, minutes=5)) < timedelta(seconds=5)
        assert job.misfire_grace_time is None  # a late firing still runs
        assert job.coalesce is True  # missed runs run once: the release is from the calendar
        assert clock._scheduler.get_jobs() == [job]  # the heartbeat is not a wall-time job
        assert drain(clock) == []  # Tuesday's bar was already available at start
        assert clock.last_released is None
    finally:
        await clock.stop()


async def test_release_follows_thanksgiving_and_the_half_day():
    now = FakeTime(u(2024, 11, 27, 15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now)
    await clock.start()
    try:
        now.t = u(2024, 11, 27, 21, 4, 59)
        await clock._tick()
        assert drain(clock) == []  # closed, but the vendor's 5 minutes are not over
        now.t = u(2024, 11, 27, 21, 5)
        await clock._tick()
        assert drain(clock) == [d(2024, 11, 27)]
        assert clock.last_released == d(2024, 11, 27)
        # Thanksgiving is skipped; Friday closes at 13:00 New York.
        assert clock.next_release_at == u(2024, 11, 29, 18, 5)
        wait = clock._scheduler.get_job("bar-close").next_run_time - datetime.now(UTC)
        assert abs(wait - timedelta(days=1, hours=21)) < timedelta(seconds=5)
        now.t = u(2024, 11, 28, 21, 5)  # a heartbeat on the holiday releases nothing
        await clock._tick()
        assert drain(clock) == []
        now.t = u(2024, 11, 29, 18, 5)
        await clock._tick()
        assert drain(clock) == [d(2024, 11, 29)]
        assert clock.next_release_at == u(2024, 12, 2, 21, 5)
    finally:
        await clock.stop()


@pytest.mark.parametrize(
    ("friday", "close_friday", "next_monday"),
    [
        # Spring forward (Sunday 2024-03-10): 16:05 EST = 21:05 UTC, then 16:05 EDT = 20:05 UTC.
        (d(2024, 3, 8), u(2024, 3, 8, 21, 5), u(2024, 3, 11, 20, 5)),
        # Fall back (Sunday 2024-11-03): 16:05 EDT = 20:05 UTC, then 16:05 EST = 21:05 UTC.
        (d(2024, 11, 1), u(2024, 11, 1, 20, 5), u(2024, 11, 4, 21, 5)),
    ],
)
async def test_release_follows_daylight_saving(friday, close_friday, next_monday):
    now = FakeTime(friday + timedelta(hours=15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now)
    await clock.start()
    try:
        assert clock.next_release_at == close_friday
        now.t = close_friday
        await clock._tick()
        assert drain(clock) == [friday]
        assert clock.next_release_at == next_monday
        assert next_monday.astimezone(NY).strftime("%H:%M") == "16:05"
    finally:
        await clock.stop()


async def test_missed_firings_release_every_closed_bar_once():
    """A suspend over a holiday and a weekend: one late firing hands over every bar, once."""
    now = FakeTime(u(2024, 11, 27, 15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now)
    await clock.start()
    try:
        now.t = u(2024, 12, 3, 12)
        await clock._tick()
        await clock._tick()  # a coalesced or doubled firing repeats nothing
        assert drain(clock) == [d(2024, 11, 27), d(2024, 11, 29), d(2024, 12, 2)]
        assert clock.fired == 2
        assert clock.next_release_at == u(2024, 12, 3, 21, 5)
        now.t = u(2024, 12, 3, 20)  # the wall clock stepped back: nothing is released twice
        await clock._tick()
        assert drain(clock) == []
    finally:
        await clock.stop()


async def test_a_backward_step_of_the_wall_clock_does_not_stop_the_heartbeat(monkeypatch):
    """APScheduler scheduled the heartbeat in wall time: with the wall clock stepped back an
    hour, no heartbeat ran for that hour, and a bar due meanwhile waited for it."""
    import apscheduler.schedulers.base as scheduler_base

    step = [timedelta(0)]

    class SteppedWallClock(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return datetime.now(tz) + step[0]

    monkeypatch.setattr(scheduler_base, "datetime", SteppedWallClock)
    now = FakeTime(u(2024, 11, 27, 15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now, heartbeat_s=0.01)
    beats = asyncio.Event()
    tick = clock._tick

    async def counted() -> None:
        await tick()
        if clock.fired >= 3:
            beats.set()

    clock._tick = counted  # type: ignore[method-assign]
    await clock.start()
    try:
        step[0] = -timedelta(hours=1)  # what the scheduler reads
        now.t = u(2024, 11, 27, 21, 5)  # Wednesday's bar is due
        await asyncio.wait_for(beats.wait(), timeout=5.0)
        assert drain(clock) == [d(2024, 11, 27)]
    finally:
        await clock.stop()
    assert clock._heartbeat is None


async def test_a_bar_released_by_a_forward_step_of_the_wall_clock_is_released_again():
    """The wall clock jumped ahead past Tuesday's close, released that bar (its fetch found
    none), and came back: the watermark stayed on it, and its real release was skipped."""
    now = FakeTime(u(2024, 11, 26, 15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now)
    await clock.start()
    try:
        now.t = u(2024, 11, 26, 21, 6)  # hours ahead: Tuesday's bar, then Wednesday's
        await clock._tick()
        assert drain(clock) == [d(2024, 11, 26)]
        now.t = u(2024, 11, 27, 21, 6)
        await clock._tick()
        assert list(clock._pending) == [d(2024, 11, 27)]  # not taken yet: dropped below
        with capture_logs() as logs:
            now.t = u(2024, 11, 26, 15, 1)
            await clock._tick()
        assert drain(clock) == []
        [stepped] = [e for e in logs if e["event"] == "clock.stepped_back"]
        assert stepped["released_early"] == [
            d(2024, 11, 26).isoformat(),
            d(2024, 11, 27).isoformat(),
        ]
        assert stepped["behind_s"] == (u(2024, 11, 27, 21, 5) - now.t).total_seconds()
        assert clock.last_released is None and clock.next_release_at == u(2024, 11, 26, 21, 5)
        now.t = u(2024, 11, 26, 21, 5)
        await clock._tick()
        assert drain(clock) == [d(2024, 11, 26)]
        assert clock.last_released == d(2024, 11, 26)
    finally:
        await clock.stop()


async def test_a_small_step_back_after_a_release_on_time_does_not_release_the_bar_again():
    """NTP stepped the clock back 1 s, 0.2 s after Wednesday's release: the bar had closed
    long before, and was taken back and released again (a `clock.stepped_back` warning, and
    the engine's `bar.released_again`)."""
    now = FakeTime(u(2024, 11, 27, 21, 5) + timedelta(seconds=0.2))
    clock = LiveClock(LiveConfig(delay_s=300), now=now, resume_after=d(2024, 11, 26))
    await clock.start()
    try:
        assert drain(clock) == [d(2024, 11, 27)]
        with capture_logs() as logs:
            now.t -= timedelta(seconds=1)
            await clock._tick()
            await clock._tick()  # said once, not at every heartbeat
            assert drain(clock) == []
            assert clock.next_release_at == u(2024, 11, 29, 18, 5)  # Friday's, not Wednesday's
            now.t += timedelta(seconds=1.5)
            await clock._tick()
        assert drain(clock) == []
        assert clock.last_released == d(2024, 11, 27)
        [stepped] = [e for e in logs if e["event"] == "clock.stepped_back"]
        assert stepped["log_level"] == "info" and stepped["released_early"] == []
        assert stepped["behind_s"] == 0.8
        assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    finally:
        await clock.stop()


async def test_resume_after_releases_the_backlog_at_start():
    now = FakeTime(u(2024, 12, 2, 15))
    clock = LiveClock(LiveConfig(delay_s=300), now=now, resume_after=d(2024, 11, 25))
    await clock.start()
    try:
        got = []
        async for t in clock:
            got.append(t)
            if len(got) == 3:
                break
        assert got == [d(2024, 11, 26), d(2024, 11, 27), d(2024, 11, 29)]
        assert clock.last_released == d(2024, 11, 29)
        assert clock.next_release_at == u(2024, 12, 2, 21, 5)
    finally:
        await clock.stop()


async def test_what_the_health_check_reads():
    now = FakeTime(u(2024, 11, 29, 18, 4))
    clock = LiveClock(LiveConfig(delay_s=300), now=now)
    # The newest bar that should be available: Friday's only once its 5 minutes are over.
    assert clock.expected_latest() == d(2024, 11, 27)
    assert clock.expected_latest(u(2024, 11, 29, 18, 5)) == d(2024, 11, 29)
    assert clock.expected_latest(u(2024, 12, 1, 12)) == d(2024, 11, 29)
    # Friday closed at 18:00 UTC; the next bar to close is Monday's.
    assert clock.next_close == (d(2024, 12, 2), u(2024, 12, 2, 21))
    assert clock.last_released is None


async def test_intraday_schedule_on_a_half_day():
    now = FakeTime(u(2024, 11, 29, 14))
    five = ExchangeCalendar("XNYS", "5m")
    clock = LiveClock(LiveConfig(delay_s=60), exchange=five, now=now)
    await clock.start()
    try:
        assert drain(clock) == []
        assert clock.next_release_at == u(2024, 11, 29, 14, 36)
        now.t = u(2024, 11, 29, 14, 45, 59)
        await clock._tick()
        assert drain(clock) == [u(2024, 11, 29, 14, 30), u(2024, 11, 29, 14, 35)]
        assert clock.next_release_at == u(2024, 11, 29, 14, 46)
        now.t = u(2024, 11, 29, 18, 1)  # the half day's last bar 12:55-13:00 New York
        await clock._tick()
        released = drain(clock)
        assert (len(released), released[-1]) == (40, u(2024, 11, 29, 17, 55))
        assert clock.expected_latest() == u(2024, 11, 29, 17, 55)
        assert clock.next_release_at == u(2024, 12, 2, 14, 36)
    finally:
        await clock.stop()


async def test_the_scheduler_really_fires_at_close_plus_delay():
    """One real firing: `now` runs at real speed from 0.2 s before Friday's release instant,
    once the clock has started. (It ran from before the clock was built: building the
    calendar and starting took over 0.2 s on a loaded machine, and the release was past
    before the clock armed.)"""
    base = u(2024, 11, 29, 18, 5) - timedelta(seconds=0.2)
    started: list[datetime] = []

    def now() -> datetime:
        return base + (datetime.now(UTC) - started[0]) if started else base

    clock = LiveClock(LiveConfig(delay_s=300), now=now, heartbeat_s=3600)
    await clock.start()
    started.append(datetime.now(UTC))
    try:
        it = clock.__aiter__()
        assert await asyncio.wait_for(it.__anext__(), timeout=3.0) == d(2024, 11, 29)
        assert clock.fired == 1
        assert clock.next_release_at == u(2024, 12, 2, 21, 5)
    finally:
        await clock.stop()


async def test_a_clock_that_cannot_arm_stops_the_iteration():
    # An injected calendar ending on 2024-12-31 is not extended: past its end the clock
    # releases its last bar, then the iteration ends (named), instead of idling forever.
    short = ExchangeCalendar("XNYS", "1d", start="2024-12-02", end="2024-12-31")
    now = FakeTime(u(2024, 12, 31, 20))
    clock = LiveClock(LiveConfig(delay_s=300), exchange=short, now=now)
    await clock.start()
    try:
        assert clock.next_release_at == u(2024, 12, 31, 21, 5)
        now.t = u(2024, 12, 31, 21, 5)
        with capture_logs() as logs:
            await clock._tick()
            it = clock.__aiter__()
            assert await it.__anext__() == d(2024, 12, 31)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(it.__anext__(), timeout=1.0)
        assert clock._failure is None and clock.next_release_at is None
        [ended] = [e for e in logs if e["event"] == "clock.calendar_ended"]
        assert ended["last_bar"] == d(2024, 12, 31).isoformat()
        assert "build the calendar with a later end" in ended["hint"]
    finally:
        await clock.stop()


async def test_own_calendar_is_extended_before_it_runs_out():
    clock = LiveClock(LiveConfig(delay_s=300), now=FakeTime(u(2024, 11, 27, 15)))
    clock._exchange = ExchangeCalendar("XNYS", "1d", start="2024-01-02", end="2024-12-10")
    await clock.start()
    try:
        assert clock.exchange.last_session >= date(2025, 11, 27)
        assert clock.next_release_at == u(2024, 11, 27, 21, 5)
    finally:
        await clock.stop()


@pytest.mark.parametrize("beat", [0, 1e-9, 0.009, 3601, 1e12, float("nan"), float("inf")])
def test_the_heartbeat_setting_is_bounded_both_ways(beat):
    """1e-9 ran the calendar's checks without pause; 1e12 left no heartbeat at all."""
    from tradingd.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"live\.heartbeat_s"):
        LiveConfig(heartbeat_s=beat)
    assert LiveConfig(heartbeat_s=0.01).heartbeat_s == 0.01
    assert LiveConfig(heartbeat_s=3600).heartbeat_s == 3600


def test_real_time_clock_checks_its_calendar_settings():
    with pytest.raises(ValueError, match="heartbeat_s"):
        LiveClock(LiveConfig(), heartbeat_s=0)
    with pytest.raises(ValueError, match="naive"):
        LiveClock(LiveConfig(), resume_after=datetime(2024, 11, 29))


async def test_the_daemons_shared_calendar_is_extended_in_place_before_it_runs_out():
    """The daemon builds one calendar of the package's window (about a year ahead) and hands
    it to the clock, the feed and the session: the clock extended only a calendar of its own,
    so a year after its start the daemon stopped (CalendarRangeError, exit 2)."""
    shared = ExchangeCalendar("XNYS", "1d")  # the package's window, as app.vendor_swaps
    end = shared.last_session
    # A month before the window's end: the clock extends it, in place.
    now = FakeTime(datetime.combine(end - timedelta(days=20), datetime.min.time(), UTC))
    clock = LiveClock(LiveConfig(delay_s=300), exchange=shared, now=now)
    await clock.start()
    try:
        assert clock.exchange is shared and shared.last_session >= end + timedelta(days=300)
    finally:
        await clock.stop()


def test_a_calendar_of_the_packages_window_answers_past_it_and_one_with_an_end_does_not():
    shared = ExchangeCalendar("XNYS", "1d")
    first, end = shared.first_session, shared.last_session
    later = datetime.combine(end + timedelta(days=40), datetime.min.time(), UTC)
    assert shared.last_closed(later) is not None  # the feed's and the session's questions
    assert shared.last_session > end and shared.first_session == first
    assert isinstance(shared.is_session(end + timedelta(days=400)), bool)
    # A question years ahead (a vendor's bogus timestamp) does not grow it: out of range.
    with pytest.raises(CalendarRangeError):
        shared.last_closed(later + timedelta(days=5 * 365))
    assert shared.last_session < end + timedelta(days=3 * 366)
    bounded = ExchangeCalendar("XNYS", "1d", start="2024-01-02", end="2024-12-31")
    with pytest.raises(CalendarRangeError):
        bounded.last_closed(datetime(2025, 2, 1, tzinfo=UTC))


# -- a calendar the package records only to a date (its bound_max) ------------------------

# exchange_calendars 4.13 records these exchanges' holidays only to 2026-12-31.
BOUNDED = ["XSES", "XSHG", "XBOM"]


def _package_end(name: str) -> date:
    """The last date exchange_calendars can build `name` through (asked of the package)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bound = xcals.get_calendar(name).bound_max()
    if bound is None:
        pytest.skip(f"the installed exchange_calendars has no end for {name}")
    return bound.date()


def _noon(day: date) -> datetime:
    return datetime.combine(day, time(12), UTC)


@pytest.mark.parametrize("name", BOUNDED)
@pytest.mark.parametrize("own", [False, True], ids=["shared", "own"])
async def test_a_calendar_whose_package_data_ends_runs_until_it_ends(name, own):
    """From 30 days before the package's end the clock extended its calendar to now + 366
    days, which the package refuses: ConfigError from start() and from every heartbeat
    (clock.live.failed), the daemon exited 2 and could not restart, a month before a single
    close it needed was missing. It runs on, and says at start when the calendar ends."""
    end = _package_end(name)
    now = FakeTime(_noon(end - timedelta(days=29)))
    exchange = None if own else ExchangeCalendar(name, "1d")  # the daemon's: shared
    clock = LiveClock(LiveConfig(delay_s=300, calendar=name), exchange=exchange, now=now)
    with capture_logs() as logs:
        await clock.start()
    try:
        assert clock.next_release_at is not None
        assert clock.exchange.last_session <= end
        [ends] = [e for e in logs if e["event"] == "calendar.ends"]
        assert ends["log_level"] == "warning" and ends["calendar"] == name
        assert (ends["ends"], ends["days_left"]) == (end.isoformat(), 29)
        assert "upgrade exchange-calendars" in ends["hint"]
        now.t += timedelta(days=2)
        await clock._tick()  # a heartbeat two days on
        assert clock._failure is None and clock.next_release_at is not None
    finally:
        await clock.stop()


async def test_the_calendars_end_is_said_at_start_and_once_a_day_not_every_heartbeat():
    end = _package_end("XSES")
    shared = ExchangeCalendar("XSES", "1d")
    now = FakeTime(datetime.combine(end - timedelta(days=40), time(1), UTC))
    clock = LiveClock(LiveConfig(delay_s=300, calendar="XSES"), exchange=shared, now=now)
    with capture_logs() as logs:
        await clock.start()
        for _ in range(20):  # heartbeats through the day
            now.t += timedelta(minutes=30)
            await clock._tick()
        now.t += timedelta(days=1)
        await clock._tick()
        await clock._tick()
        await clock.stop()
        await clock.start()  # a start says it again, the same day
        await clock.stop()
    assert [e["days_left"] for e in logs if e["event"] == "calendar.ends"] == [40, 39, 39]
    # Months ahead nothing is said.
    far = LiveClock(
        LiveConfig(delay_s=300, calendar="XSES"),
        exchange=shared,
        now=FakeTime(_noon(end - timedelta(days=200))),
    )
    with capture_logs() as logs:
        await far.start()
        await far.stop()
    assert not [e for e in logs if e["event"] == "calendar.ends"]


async def test_the_calendars_end_turns_its_status_degraded_a_month_ahead():
    """What /ready can show (a `status_check`): an operator sees the end coming before the
    daemon stops at it."""
    end = _package_end("XSES")
    now = FakeTime(_noon(end - timedelta(days=200)))
    config = LiveConfig(delay_s=300, calendar="XSES")
    clock = LiveClock(config, exchange=ExchangeCalendar("XSES", "1d"), now=now)
    await clock.start()
    try:
        st = clock.calendar_status()
        assert st["ok"] and st["state"] == "ok"
        assert (st["ends"], st["days_left"]) == (end, 200)
        now.t = _noon(end - timedelta(days=29))
        st = clock.calendar_status()
        assert not st["ok"] and st["state"] == "degraded" and st["days_left"] == 29
        assert end.isoformat() in st["detail"] and "upgrade exchange-calendars" in st["detail"]
    finally:
        await clock.stop()
    # A calendar the package builds without an end (XNYS) never ends.
    xnys = LiveClock(LiveConfig(delay_s=300), now=FakeTime(u(2024, 11, 27, 15)))
    await xnys.start()
    try:
        st = xnys.calendar_status()
        assert st["ok"] and st["ends"] is None and st["days_left"] is None
    finally:
        await xnys.stop()


@pytest.mark.parametrize("name", BOUNDED)
async def test_after_the_packages_last_session_the_clock_ends_saying_to_upgrade(name):
    """With no next session in the calendar the clock releases the last bar, waits without
    failing while the engine asks a late one again (a vendor posting it a little after
    close + delay_s), then ends the iteration with `clock.calendar_ended`, saying to
    upgrade. `_arm` failed at the release (the range check, saying "now = close" for
    now minus delay_s), and `wait` raised that into the retry: the last bar never traded."""
    end = _package_end(name)
    cal = ExchangeCalendar(name, "1d")
    close = cal.coverage[1]  # the last session's close
    last = cal.last_closed(close)
    assert last is not None and last.date() <= end
    now = FakeTime(close - timedelta(hours=1))
    clock = LiveClock(LiveConfig(delay_s=300, calendar=name), exchange=cal, now=now)
    await clock.start()
    try:
        assert clock.next_release_at == close + timedelta(minutes=5)
        now.t = close + timedelta(minutes=5, seconds=4)  # its firing, a moment late
        with capture_logs() as logs:
            await clock._tick()
            assert clock._failure is None and clock.next_release_at is None
            # No next open known: the next weekday's regular open stands in (holidays only
            # make the real one later). Released on time, the bar trades; released after it
            # (a suspend across the calendar's end), it is stepped untraded, as any other.
            deadline = clock.trade_deadline(last)
            local = deadline.astimezone(cal.tz)
            assert local.time() == cal.regular_open and local.weekday() < 5
            assert 0 < (local.date() - close.astimezone(cal.tz).date()).days <= 3
            assert now.t < deadline
            it = clock.__aiter__()
            assert await it.__anext__() == last
            # The engine's retry of a late last bar: waits, no failure.
            now.t += timedelta(minutes=1)
            await clock._tick()  # a heartbeat meanwhile
            await clock.wait(0.01)
            assert clock._failure is None
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(it.__anext__(), timeout=1.0)
        assert not [e for e in logs if e["event"] == "clock.live.failed"]
        [ended] = [e for e in logs if e["event"] == "clock.calendar_ended"]
        assert ended["log_level"] == "warning" and ended["calendar"] == name
        assert ended["last_bar"] == last.isoformat()
        assert "upgrade exchange-calendars" in ended["hint"]
    finally:
        await clock.stop()
    # A clock started after it (resumed at the last bar) has nothing to release: it ends.
    later = LiveClock(
        LiveConfig(delay_s=300, calendar=name),
        exchange=cal,
        now=FakeTime(close + timedelta(days=3)),
        resume_after=last,
    )
    await later.start()
    try:
        it = later.__aiter__()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(it.__anext__(), timeout=1.0)
    finally:
        await later.stop()


def test_a_calendar_ending_on_a_holiday_is_extended_once_not_at_every_heartbeat():
    """XKRX's package data ends on 2050-12-31, a holiday: its last session is two days
    earlier. The extension was judged by the last session, never reached, and every
    heartbeat rebuilt the calendar to the same end (and logged it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = ExchangeCalendar("XKRX", "1d", start="2049-06-01", end="2050-12-20")
    assert cal.bound_max == date(2050, 12, 31)
    cal._extends = True  # as a calendar of the package's default window is
    now = datetime(2050, 12, 10, tzinfo=UTC)
    clock = LiveClock(LiveConfig(calendar="XKRX"), exchange=cal, now=lambda: now)
    with capture_logs() as logs:
        for _ in range(3):  # three heartbeats
            clock._extend_calendar(now)
    assert cal.last_session < cal.built_through == cal.bound_max
    assert [e["event"] for e in logs if e["event"] == "calendar.extended"] == ["calendar.extended"]


@pytest.mark.parametrize("name", ["XNYS", "XTKS", "CMES", "24/7", "XSES"])
def test_the_last_sessions_stand_in_deadline_is_the_next_open_or_earlier(name):
    """Past a calendar's last session the next open is not known; its stand-in is the
    regular open of the next day of the calendar's trading week. Against every session of
    a year: never later than the real next open (a holiday or a special open only makes the
    real one later), and equal to it when the next session is that day at its regular time.
    It assumed Monday-to-Friday sessions opening on their own day: a CME session opening
    the evening before, or a 24/7 calendar's Saturday, got a stand-in later than the real
    open (a bar released late still traded)."""
    cal = ExchangeCalendar(name, "1d")
    clock = LiveClock(LiveConfig(delay_s=300, calendar=name), exchange=cal)
    day = cal.first_session
    year_before_last = cal.last_session - timedelta(days=366)
    equal = checked = 0
    while day < cal.last_session - timedelta(days=7):  # (a real next open known)
        if day >= year_before_last and cal.is_session(day):
            label = datetime.combine(day, time(0), tzinfo=UTC)
            close = cal.close_of(label)
            real = cal.next_open(close)
            stand_in = clock._next_regular_open(close)
            assert stand_in is not None and stand_in <= real, (day, stand_in, real)
            checked += 1
            equal += stand_in == real
        day += timedelta(days=1)
    assert checked > 200 and equal > 0.8 * checked


def test_a_session_opening_the_evening_before_is_one_session_day():
    """CMES: the 2026-12-01 session opens 17:00 Chicago on Nov 30 (23:00 UTC). Its bars
    were given Nov 30 (23:00Z and 01:00-05:00Z, by the local date), Dec 1 (00:00Z, read as
    a daily label; 06:00Z on): one session, two days."""
    cal = ExchangeCalendar("CMES", "60m", start="2026-11-02", end="2026-12-04")
    clock = LiveClock(LiveConfig(calendar="CMES", bar="60m"), exchange=cal)
    bars = cal.bars_between(u(2026, 11, 30, 23), u(2026, 12, 1, 21))
    assert bars[0] == u(2026, 11, 30, 23) and d(2026, 12, 1) in bars
    assert {clock.session_day(t) for t in bars} == {date(2026, 12, 1)}
    assert clock.next_session_day(bars[-1]) == date(2026, 12, 2)
    # Elsewhere unchanged: XTKS's 00:00 UTC bar is 09:00 Tokyo, a daily label its date.
    xtks = ExchangeCalendar("XTKS", "60m", start="2024-06-03", end="2024-06-28")
    tokyo = LiveClock(LiveConfig(calendar="XTKS", bar="60m"), exchange=xtks)
    assert tokyo.session_day(u(2024, 6, 20, 0)) == date(2024, 6, 20)
    assert tokyo.session_day(u(2024, 6, 20, 5)) == date(2024, 6, 20)
    daily = LiveClock(LiveConfig(delay_s=300), exchange=ExchangeCalendar("XNYS", "1d"))
    assert daily.session_day(d(2024, 11, 29)) == date(2024, 11, 29)
