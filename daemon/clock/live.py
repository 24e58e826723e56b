"""Live clock: APScheduler's AsyncIOScheduler releases each bar after it closes.

APScheduler lives only here. A firing does not carry work: it asks the exchange calendar
(`calendar.ExchangeCalendar`, built on `exchange_calendars`) which bar labels have closed at
least `delay_s` ago and were not released yet, and queues them; the engine pulls them one at a
time. What a firing releases is computed from the calendar and the current instant, never from
how many firings happened, so a late, doubled or coalesced firing can neither lose nor repeat
a bar.

Two schedules:

* real time (`bars_per_second == 0`): one APScheduler `DateTrigger` job armed for the next
  bar's `close + delay_s` (the close taken from the calendar, in UTC), re-armed after every
  firing. A cron trigger cannot express the calendar (holidays, 13:00 half days, the 16:00 New
  York close moving between 20:00 and 21:00 UTC with daylight saving, the truncated last bar of
  an intraday session); an exact instant per bar does, and is the same code for daily and
  intraday bars. A heartbeat, an asyncio task sleeping `heartbeat_s` (60 s) at a time, runs
  the same release: the scheduler sleeps with `loop.call_later`, whose monotonic clock stops
  while the machine is suspended, so without it a release could come arbitrarily late after a
  suspend or a forward step of the wall clock; with it, at most `heartbeat_s` late. The
  heartbeat is not an APScheduler interval job: that one is scheduled in wall time, and a
  backward step froze it for as long as the step. Extra firings are harmless (they release
  nothing that is not due).

  Misfires of the bar-close job, chosen deliberately:
  - `misfire_grace_time=None` (run however late). A firing missed because the process was
    suspended or the event loop stalled must still run: it releases every bar that closed
    meanwhile. With a finite grace APScheduler would *skip* a late one-shot `DateTrigger` job
    and drop it, and the clock would never be re-armed.
  - `coalesce=True`, `max_instances=1`: the release is computed from the calendar, so one
    run of several missed ones is exactly right; a release is microseconds of work.

  At start the clock releases nothing that was already due (the warm start loads that as
  history) unless `resume_after` names the newest bar the daemon has: then every later bar
  that is due is released at once (catch-up through the clock), and the rest as they close.

  The calendar: the package builds one about a year ahead, and the clock extends it a month
  before its end. Some calendars the package builds only to a date (`bound_max`: XSES, XSHG
  and XBOM to 2026-12-31 in exchange_calendars 4.13): the clock extends those to it, says
  from `_ENDS_WARN` before it that it ends (`calendar.ends`, at start and once a day), and
  when no bar of the calendar closes after now, releases its last bar, waits for the engine
  to take it (a late one asked for again until its trade deadline), then ends the iteration
  with `clock.calendar_ended`, saying to upgrade exchange-calendars: the run ends (exit 0).

* accelerated (`bars_per_second > 0`): an interval trigger releases the next time of a given
  list of bar times at `bars_per_second`, for tests and demos that drive the live path over
  recorded bars. Unchanged; it has no relation to the wall clock or the exchange calendar.

Time: every instant is UTC. `now` (a callable returning an aware datetime) is injectable, so
tests drive the schedule through any date without waiting; the scheduler is then armed for the
same *distance* from the real time as the target is from `now()` (identical in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..config import LiveConfig
from ..core.sessions import session_date

if TYPE_CHECKING:  # exchange_calendars is imported only when the real-time schedule is used
    from .calendar import ExchangeCalendar

log = structlog.get_logger(__name__)

# Releases waiting for the engine. Only a daemon stalled for weeks of 1-minute bars (or years
# of daily bars) gets near it; the bound keeps it from growing memory, and dropping is logged.
_MAX_PENDING = 10_000
# Rebuild an own calendar (package default: one year ahead) when its end gets this close.
_HORIZON = timedelta(days=30)
# A calendar the package builds only to a date (`bound_max`): said in the log (at start and
# once a day) from this close to it, and degraded in `calendar_status` from this close. The
# operator needs a release of exchange-calendars that records the next year's holidays,
# which comes when the exchange publishes them, often in the last weeks of the year.
_ENDS_WARN = timedelta(days=60)
_ENDS_DEGRADED = timedelta(days=30)
_JOB = "bar-close"
_HEARTBEAT_TASK = "clock-heartbeat"


def _wall_clock() -> datetime:
    return datetime.now(UTC)


async def _job_tasks_done(sched: AsyncIOScheduler, timeout_s: float = 1.0) -> None:
    """Wait (bounded) for the firings the scheduler's executors have started as tasks."""
    for _ in range(3):  # a firing handed over in this loop iteration runs in the next one
        pending = [
            f
            for executor in getattr(sched, "_executors", {}).values()
            for f in getattr(executor, "_pending_futures", ())
            if not f.done()
        ]
        if not pending:
            return
        await asyncio.wait(pending, timeout=timeout_s)


class LiveClock:
    """Yields bar labels (UTC) as they become available; see the module docstring.

    `exchange` overrides the calendar built from the config (`config.calendar`, default
    "XNYS", and `config.bar`); `now` replaces the wall clock; `resume_after` is the newest bar
    label the daemon already has (catch-up); `heartbeat_s` is the safety re-check period.
    """

    def __init__(
        self,
        config: LiveConfig,
        calendar: Sequence[datetime] | None = None,
        *,
        exchange: ExchangeCalendar | None = None,
        now: Callable[[], datetime] | None = None,
        resume_after: datetime | None = None,
        heartbeat_s: float = 60.0,
    ) -> None:
        if config.bars_per_second > 0 and not calendar:
            raise ValueError("accelerated live clock needs a calendar of bar times")
        if not (math.isfinite(heartbeat_s) and heartbeat_s > 0):
            raise ValueError(f"heartbeat_s = {heartbeat_s!r} must be a finite number > 0")
        if resume_after is not None and resume_after.tzinfo is None:
            raise ValueError(f"resume_after = {resume_after!r} is naive: pass a UTC datetime")
        self.config = config
        self._calendar = list(calendar or ())
        self._next = 0
        self._pending: deque[datetime] = deque(maxlen=_MAX_PENDING)
        self._event: asyncio.Event | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._stopped = False
        self.fired = 0
        # Releases dropped past the backlog's bound (`clock.live.backlog_dropped`): never
        # handed to the engine, which counts them as bars never traded.
        self.dropped = 0
        # Real-time schedule.
        self._exchange = exchange
        self._own_exchange = exchange is None
        self._calendar_name: str = getattr(config, "calendar", "XNYS")
        self._interval: str = getattr(config, "bar", "1d")
        if exchange is None and not self.accelerated:
            from .calendar import validate_calendar

            validate_calendar(self._calendar_name, self._interval)  # fail here, not at start
        self._now = now or _wall_clock
        self._delay = timedelta(seconds=config.delay_s)
        self._heartbeat_s = heartbeat_s
        self._resume_after = resume_after
        self._watermark: datetime | None = None  # newest label released or known to be had
        self._start_watermark: datetime | None = None  # had at start: never released again
        self._started = False
        self._last_released: datetime | None = None
        self._next_release: tuple[datetime, datetime] | None = None  # (label, release instant)
        self._failure: BaseException | None = None
        # No bar of the calendar is left to release (`_arm`): the iteration ends when the
        # engine has taken the released ones.
        self._ended = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._ends_said: date | None = None  # the day `calendar.ends` was last logged
        self._step_back_said: datetime | None = None  # a kept release `clock.stepped_back` named

    # -- what the health / ready check and the catch-up need ------------------------------

    @property
    def accelerated(self) -> bool:
        return self.config.bars_per_second > 0

    @property
    def exchange(self) -> ExchangeCalendar:
        """The exchange calendar of the real-time schedule (built on first use)."""
        if self._exchange is None:
            from .calendar import ExchangeCalendar

            self._exchange = ExchangeCalendar(self._calendar_name, self._interval)
        return self._exchange

    @property
    def delay(self) -> timedelta:
        return self._delay

    @property
    def last_released(self) -> datetime | None:
        """The newest bar label this clock has queued for the engine (None: none yet)."""
        return self._last_released

    @property
    def next_close(self) -> tuple[datetime, datetime] | None:
        """(label, close instant in UTC) of the next bar to close after now; None if
        accelerated."""
        if self.accelerated:
            return None
        return self.exchange.next_close(self._now())

    @property
    def next_release_at(self) -> datetime | None:
        """The instant (in `now()`'s time) the armed firing releases the next bar."""
        return None if self._next_release is None else self._next_release[1]

    @property
    def heartbeat_s(self) -> float:
        return self._heartbeat_s

    def market_open(self) -> bool | None:
        """Whether the exchange trades now, for /status: an operator reading a quiet daemon
        wants to tell "closed" from "stuck". None when accelerated (its bars have no relation
        to the calendar) or before `start()` built the calendar (building it here would block
        the event loop about half a second)."""
        if self.accelerated or self._exchange is None:
            return None
        now = self._now()
        if now > self._exchange.coverage[1]:  # after the last close of a calendar that ends
            return False  # (asked, it raised CalendarRangeError into /status)
        return self._exchange.is_open(now)

    def now(self) -> datetime:
        """The clock's current instant (the injected `now`, the wall clock in production)."""
        return self._now()

    def session_day(self, label: datetime) -> date:
        """The exchange date of bar `label`: a daily label is its date at midnight UTC, an
        intraday one the date of the session it belongs to (a split's ex-date is one): its
        start's date in the exchange's time zone, the next day's from the open of a session
        opening the evening before (CMES: 17:00 Chicago). By the local date alone one CME
        session was two days (and its 00:00 UTC bar, read as a daily label, a third)."""
        exchange = self._exchange
        if exchange is not None and self._interval != "1d":
            offset = int(getattr(exchange, "open_offset", 0))
            regular_open = getattr(exchange, "regular_open", None)
            if offset < 0 and regular_open is not None:
                return session_date(label, exchange.tz, regular_open)
        if label.hour == label.minute == label.second == 0 and label.microsecond == 0:
            return label.date()
        tz = exchange.tz if exchange is not None else ZoneInfo("America/New_York")
        return label.astimezone(tz).date()

    def next_session_day(self, label: datetime) -> date | None:
        """The exchange date of the bar after `label` (accelerated: the calendar's next
        label); None past the calendar's end or for a label it does not have. Why: the
        engine holds a symbol whose split goes ex at the next bar (engine/splits_ahead.py)."""
        if self.accelerated:
            k = bisect_right(self._calendar, label)
            return self.session_day(self._calendar[k]) if k < len(self._calendar) else None
        try:
            after, _ = self.exchange.next_close(self.exchange.close_of(label))
        except ValueError:  # (CalendarRangeError is one)
            return None
        return self.session_day(after)

    def trade_deadline(self, label: datetime) -> datetime | None:
        """Until when a released bar still trades: the next session's open after its close.
        Its orders are for that open, as those of a bar delivered on time; after it they
        would fill at a price the bar never saw (a bar delivered late, or released late: a
        start or a resume from a suspend during the next session). None in accelerated mode
        (no wall clock: a late bar waits for the next release). For the last session of a
        calendar the package ends there (no next open known) the regular open of the next
        day of its trading week stands in: holidays only make the real one later, so the
        stand-in errs on the side of not trading (it was None: that bar traded however late
        it was released)."""
        if self.accelerated:
            return None
        close = self.exchange.close_of(label)
        try:
            return self.exchange.next_open(close)
        except ValueError:  # (CalendarRangeError is one): no session opens after it
            return self._next_regular_open(close)

    def _next_regular_open(self, close: datetime) -> datetime | None:
        """The regular open of the session after the one closing at `close`, from the
        calendar's trading week (`weekmask`: Monday to Friday unless it says otherwise) and
        where its sessions open (`open_offset`: the evening before on CME's calendars)."""
        tz = getattr(self.exchange, "tz", None)
        regular_open = getattr(self.exchange, "regular_open", None)
        if tz is None or regular_open is None:  # a duck-typed calendar: no stand-in known
            return None
        weekmask = str(getattr(self.exchange, "weekmask", "1111100"))
        if "1" not in weekmask[:7]:
            return None
        offset = int(getattr(self.exchange, "open_offset", 0))
        local = close.astimezone(tz)
        # The session's own date: a close at 24:00 (24/7) is the next day's 00:00.
        day = local.date() - timedelta(days=1 if local.time() == time(0) else 0)
        while True:  # strictly after the close, as `next_open` (24/7: the close is an open)
            day += timedelta(days=1)
            while weekmask[day.weekday()] != "1":
                day += timedelta(days=1)
            opens = datetime.combine(day + timedelta(days=offset), regular_open, tzinfo=tz)
            if opens > close:
                return opens.astimezone(UTC)

    async def wait(self, seconds: float) -> None:
        """Sleep up to `seconds` (the loop's monotonic clock), returning early when a bar is
        released or a stop is requested: the engine asking again for a late bar stops as
        soon as another bar is due. A failed firing (`_tick`) is raised, as the iterator
        raises it: returning, the engine asked for the late bar until its deadline (days,
        over a weekend) on a clock that would release nothing more. In the iterator's order:
        a stop first, then the bars already released, then the failure (a stop that met a
        failure was an error exit, and the released bars were never stepped)."""
        if self._event is None or self._pending or self._stopped:
            return
        if self._failure is not None:
            raise self._failure
        self._event.clear()  # the iterator re-checks what is pending before it waits
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        if self._failure is not None and not self._pending and not self._stopped:
            raise self._failure

    def expected_latest(self, now: datetime | None = None) -> datetime | None:
        """The newest bar label that should be available at `now` (close + delay_s <= now).

        A stale-data check compares the newest stored bar with this. None in accelerated mode
        (no relation to the wall clock) or before the calendar's first close.
        """
        if self.accelerated:
            return None
        at = self._now() if now is None else now
        return self.exchange.last_closed(self._closed_by(at))

    def due(self, now: datetime | None = None) -> list[datetime]:
        """Labels to release at `now`: newer than the last released (or, at start, the newest
        already available or `resume_after`), closed at least `delay_s` before `now`."""
        if self.accelerated:
            return []
        if not self._started:
            raise RuntimeError("LiveClock.start() must be awaited first")
        at = self._now() if now is None else now
        return self.exchange.closed_after(self._watermark, self._closed_by(at))

    def _closed_by(self, at: datetime) -> datetime:
        """By when a bar must have closed to be due at `at` (`delay_s` before it), no later
        than the calendar's last close: past the end of a calendar that cannot be extended
        (the package's `bound_max`, or an `end` of the caller's) its last bars are still
        released, and `_arm` finds none left (the iteration ends: `clock.calendar_ended`).
        Asking the calendar past its end failed before they were released."""
        until = at - self._delay
        last_close = self.exchange.coverage[1]
        return last_close if until > last_close else until

    def calendar_status(self) -> dict[str, Any]:
        """The calendar's end, for /ready (a `health.status_check`): not ok (`degraded`) from
        `_ENDS_DEGRADED` before the date the package builds it to (`bound_max`), when the
        daemon will stop after that date's session unless exchange-calendars is upgraded.
        Ok for a calendar the package builds any year ahead (XNYS), when accelerated (no
        calendar) and before `start()` built it (building here would block the loop)."""
        if self.accelerated or self._exchange is None:
            return {"ok": True, "state": "ok", "detail": "no exchange calendar in use yet"}
        name = self._exchange.name
        end = self._calendar_end(self._now())
        if end is None:
            return {
                "ok": True,
                "state": "ok",
                "detail": f"{name} calendar: exchange-calendars builds it any year ahead",
                "calendar": name,
                "ends": None,
                "days_left": None,
            }
        bound, days_left = end
        ok = days_left >= _ENDS_DEGRADED.days
        detail = f"{name} calendar ends on {bound} ({days_left} days left)"
        if not ok:
            detail += f": {self._exchange.upgrade_hint()}"
        return {
            "ok": ok,
            "state": "ok" if ok else "degraded",
            "detail": detail,
            "calendar": name,
            "ends": bound,
            "days_left": days_left,
        }

    def _calendar_end(self, now: datetime) -> tuple[date, int] | None:
        """(the last date the package builds the calendar through, days from `now` to it);
        None when it has no such date (or a duck-typed calendar says none)."""
        bound: date | None = getattr(self.exchange, "bound_max", None)
        if bound is None:
            return None
        return bound, (bound - now.date()).days

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._event = asyncio.Event()
        self._stopped = False
        self._failure = None
        self._ends_said = None  # a start says when the calendar ends, as the first thing
        sched = AsyncIOScheduler(timezone=UTC)
        cfg = self.config
        if cfg.bars_per_second > 0:
            trigger = IntervalTrigger(seconds=1.0 / cfg.bars_per_second, timezone=UTC)
            sched.add_job(
                self._release_next,
                trigger,
                id=_JOB,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            sched.start()
            self._scheduler = sched
            log.info("clock.live.start", trigger=str(trigger))
            return

        exchange = await asyncio.to_thread(lambda: self.exchange)  # ~0.5 s to build
        now = self._now()
        if not self._started:
            self._watermark = self._start_watermark = (
                self._resume_after
                if self._resume_after is not None
                else exchange.last_closed(self._closed_by(now))
            )
            self._started = True
        sched.start()
        self._scheduler = sched
        self._heartbeat = asyncio.create_task(self._beat(), name=_HEARTBEAT_TASK)
        try:
            self._extend_calendar(now)
            self._release_due()  # resume_after: everything due already
            self._arm()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "clock.live.start",
            calendar=exchange.name,
            bar=exchange.interval,
            delay_s=self._delay.total_seconds(),
            resume_after=self._watermark.isoformat() if self._watermark else None,
            next_release=self.next_release_at.isoformat() if self.next_release_at else None,
        )

    async def stop(self) -> None:
        """Stop releasing bars and shut the scheduler down without an error line.

        APScheduler defers both a firing and its own shutdown to the loop
        (`call_soon_threadsafe`): a firing processed just before the shutdown creates a job
        task that the shutdown cancels before it ran, and APScheduler logs that as "Error
        running job" with a `CancelledError` traceback (as it does for a job task still
        pending when `asyncio.run` cancels what is left). So: the jobs are removed first (a
        firing still queued finds nothing to run), the job tasks already created finish (a
        release never waits), then the scheduler shuts down, and the loop runs once more so
        that the deferred shutdown has happened when this returns."""
        self.request_stop()
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        sched, self._scheduler = self._scheduler, None
        if sched is None:
            return
        try:
            sched.remove_all_jobs()
            await _job_tasks_done(sched)
        finally:
            if sched.running:
                sched.shutdown(wait=False)
            await asyncio.sleep(0)

    def request_stop(self) -> None:
        self._stopped = True
        if self._event is not None:
            self._event.set()

    # -- accelerated ----------------------------------------------------------------------

    async def _release_next(self) -> None:
        """An accelerated firing: the calendar's next bar released, unless `_MAX_PENDING`
        wait for the engine already; then the replay waits with them (the next firing
        releases it). The bounded deque dropped the oldest without a word: an engine more
        than 10,000 bars behind its rate lost bars from the middle of the replay, none
        counted as dropped or untraded."""
        self.fired += 1
        if len(self._pending) >= _MAX_PENDING:
            if self._event is not None:
                self._event.set()
            return
        if self._next < len(self._calendar):
            t = self._calendar[self._next]
            self._pending.append(t)
            self._last_released = t
            self._next += 1
        if self._event is not None:
            self._event.set()

    # -- real time ------------------------------------------------------------------------

    async def _beat(self) -> None:
        """The heartbeat, on the loop's monotonic clock: APScheduler schedules an interval in
        wall time, so a backward step of the wall clock froze it (and every release it would
        have made) for as long as the step. A firing it shares with a bar close's is harmless."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self._tick()

    async def _tick(self) -> None:
        """A firing (bar close or heartbeat): release what is due, arm the next bar."""
        self.fired += 1
        try:
            self._extend_calendar(self._now())
            self._release_due()
            self._arm()
        except Exception as exc:  # surfaced by __aiter__: a clock that cannot arm must not idle
            log.exception("clock.live.failed")
            self._failure = exc
            if self._event is not None:
                self._event.set()

    def _roll_back_if_stepped(self, now: datetime) -> None:
        """A forward step of the wall clock released bars that had not closed (their fetch
        found nothing: bar.unavailable); when it steps back, the watermark stayed on them and
        their real release was skipped. Released labels that have not closed at `now` are
        taken back (not yet handed over: dropped) and released again at their time; the
        engine skips one it has stepped meanwhile, so nothing trades twice.

        A label that has closed at `now` is kept, even if `delay_s` has not passed since: a
        small step back (NTP slewing a second just after a release) would otherwise take
        back a bar released on time and release it again (`clock.stepped_back` and the
        engine's `bar.released_again`, two warnings for nothing). `delay_s` is the vendor's
        margin; a vendor without the bar yet is the engine's late-bar retry's business."""
        released = self._last_released
        if released is None:
            return
        latest = self.exchange.last_closed(self._closed_by(now))
        if latest is not None and released <= latest:
            return
        close = self.exchange.close_of(released)
        behind = close + self._delay - now
        closed = self.exchange.last_closed(min(now, self.exchange.coverage[1]))
        if closed is not None and released <= closed:
            if self._step_back_said != released:
                self._step_back_said = released
                log.info(
                    "clock.stepped_back",
                    now=now.isoformat(),
                    behind_s=round(behind.total_seconds(), 3),
                    released_early=[],
                    kept=released.isoformat(),
                    rule="the wall clock went back, not past the close of the bars released: "
                    "none is released again",
                )
            return
        floor = self._start_watermark  # had at start, never released: not taken back
        back_to = floor if closed is None or (floor is not None and floor > closed) else closed
        undone = self.exchange.closed_after(back_to, close)
        kept = [t for t in self._pending if back_to is not None and t <= back_to]
        self._pending.clear()
        self._pending.extend(kept)
        self._watermark = back_to
        # Every label after the start's was released by this clock.
        self._last_released = back_to if back_to is not None and back_to != floor else None
        log.warning(
            "clock.stepped_back",
            now=now.isoformat(),
            behind_s=round(behind.total_seconds(), 3),
            released_early=[t.isoformat() for t in undone],
            watermark=back_to.isoformat() if back_to else None,
            rule="the wall clock went back past the close of bars released early: each is "
            "released again when it is due",
        )

    def _release_due(self) -> list[datetime]:
        self._roll_back_if_stepped(self._now())
        labels = self.due()
        if not labels:
            return labels
        dropped = len(self._pending) + len(labels) - _MAX_PENDING
        if dropped > 0:
            self.dropped += dropped
            log.error(
                "clock.live.backlog_dropped",
                dropped=dropped,
                limit=_MAX_PENDING,
                hint="the engine is far behind; the oldest releases were dropped (never "
                "stepped: counted in bars_never_traded)",
            )
        self._pending.extend(labels)
        self._watermark = self._last_released = labels[-1]
        log.info(
            "clock.live.release",
            bars=len(labels),
            first=labels[0].isoformat(),
            last=labels[-1].isoformat(),
        )
        if self._event is not None:
            self._event.set()
        return labels

    def _arm(self) -> None:
        if self._scheduler is None:
            return
        now = self._now()
        after = now - self._delay
        if self._last_released is not None:
            # A small step back keeps a bar released on time: arm for the next, not for it.
            after = max(after, self.exchange.close_of(self._last_released))
        try:
            label, close = self.exchange.next_close(after)
        except ValueError:  # (CalendarRangeError is one)
            if after < self.exchange.coverage[1]:
                raise
            # Past the last close of a calendar that cannot be extended (the package's
            # `bound_max`, or an `end` of the caller's): every bar of it is released
            # (`_closed_by` caps at its last close), none is left to arm. The iterator ends
            # once the engine has them all (`clock.calendar_ended`). This failed the clock,
            # and `wait` raised it into the engine's retry of a late last bar: never traded.
            self._ended = True
            self._next_release = None
            return
        self._ended = False
        target = close + self._delay  # > now: the bar has not closed delay_s ago yet
        run_date = _wall_clock() + (target - now)
        self._scheduler.add_job(
            self._tick,
            DateTrigger(run_date=run_date, timezone=UTC),
            id=_JOB,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self._next_release = (label, target)

    def _extend_calendar(self, now: datetime) -> None:
        """A daemon outlives the package's default window (one year ahead): extend the
        calendar when its end is near, before a close must be found past it. An own one is
        rebuilt; an injected one of the package's window (the daemon's: the feed and the
        session hold the same object) is extended in place; one built with an end is the
        caller's business (it ends there). Not past the date the package builds it to
        (`bound_max`): asked for a year ahead there, it refused, and the clock failed at
        every heartbeat a month before a close it needed was missing. When that date is
        near, `calendar.ends` says so."""
        if now + _HORIZON >= self.exchange.coverage[1]:
            self._extend_through((now + timedelta(days=366)).date())
        self._say_if_calendar_ends(now)

    def _extend_through(self, end: date) -> None:
        within_bound = getattr(self.exchange, "within_bound", None)  # duck-typed: none
        if within_bound is not None:
            end = within_bound(end)
        if self._own_exchange:
            built = getattr(self.exchange, "built_through", self.exchange.last_session)
            if end <= built:  # (not the last session: a bound on a holiday rebuilt it anew)
                return
            from .calendar import ExchangeCalendar

            self._exchange = ExchangeCalendar(self._calendar_name, self._interval, end=end)
        else:
            extend = getattr(self.exchange, "extend", None)  # duck-typed calendars have none
            if extend is None or not extend(end):
                return
        log.info("clock.live.calendar_extended", last_session=str(self.exchange.last_session))

    def _say_if_calendar_ends(self, now: datetime) -> None:
        """`calendar.ends` (a warning) from `_ENDS_WARN` before the package's end of the
        calendar: at start, then once a day (not at every heartbeat)."""
        end = self._calendar_end(now)
        if end is None or self._ends_said == now.date():
            return
        bound, days_left = end
        if days_left > _ENDS_WARN.days:
            return
        self._ends_said = now.date()
        log.warning(
            "calendar.ends",
            calendar=self.exchange.name,
            ends=bound.isoformat(),
            days_left=days_left,
            last_session=str(self.exchange.last_session),
            hint=f"{self.exchange.upgrade_hint()}; after the calendar's last bar is released "
            "and traded the daemon stops (clock.calendar_ended, exit 0)",
        )

    @property
    def backlog(self) -> int:
        """Real time: bars released but not yet handed to the engine. More than zero after a
        stall or suspend means the bar being handed over is not the newest one, so the engine
        catches up on it without trading (a stale bar). Accelerated runs pace themselves and
        report 0: every bar of a replay through the live path trades, as in a backtest."""
        return 0 if self.accelerated else len(self._pending)

    def _exhausted(self) -> bool:
        if self._ended and not self._pending:
            self._say_calendar_ended()
            return True
        return self.accelerated and self._next >= len(self._calendar) and not self._pending

    def _say_calendar_ended(self) -> None:
        """`clock.calendar_ended`: the clock released the calendar's last bar and the engine
        has it; the run ends (exit 0, not restarted: a start before the package is upgraded
        exits 78 once that bar can no longer trade, `app.plan_live`)."""
        exchange = self.exchange
        last = self._last_released or self._watermark
        hint = getattr(exchange, "upgrade_hint", lambda: "")()
        log.warning(
            "clock.calendar_ended",
            calendar=exchange.name,
            last_bar=last.isoformat() if last else None,
            last_close=exchange.coverage[1].isoformat(),
            hint=(hint or "build the calendar with a later end")
            + "; the run stops after the calendar's last bar",
        )

    async def __aiter__(self) -> AsyncIterator[datetime]:
        assert self._event is not None, "LiveClock.start() must be awaited first"
        while not self._stopped:
            if self._pending:
                yield self._pending.popleft()
                continue
            if self._failure is not None:
                raise self._failure
            if self._exhausted():
                return
            self._event.clear()
            await self._event.wait()
