"""Live clock: APScheduler's AsyncIOScheduler fires at each bar close.

APScheduler lives only here. A firing does not carry work; it releases bar times, which the
engine pulls one at a time. A late or coalesced firing therefore never loses a bar: a release
that comes late just hands over every bar that closed meanwhile.

Two schedules:
- real time: a cron trigger on weekdays at `close_time + delay_s` in the exchange's time zone;
  each firing releases that session's date. (Exchange holidays: the feed has no bar for them
  and the engine skips the time; a holiday calendar is a later refinement.)
- accelerated: an interval trigger releases the next time of a given calendar at
  `bars_per_second`, for tests and demos that drive the live path over recorded bars.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..config import LiveConfig

log = structlog.get_logger(__name__)

# Releases waiting for the engine. A daily bar cannot back up this far unless the engine is
# stalled for years; the bound keeps a stalled daemon from growing memory.
_MAX_PENDING = 10_000


class LiveClock:
    def __init__(self, config: LiveConfig, calendar: Sequence[datetime] | None = None) -> None:
        if config.bars_per_second > 0 and not calendar:
            raise ValueError("accelerated live clock needs a calendar of bar times")
        self.config = config
        self._calendar = list(calendar or ())
        self._next = 0
        self._pending: deque[datetime] = deque(maxlen=_MAX_PENDING)
        self._event: asyncio.Event | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._stopped = False
        self.fired = 0

    async def start(self) -> None:
        self._event = asyncio.Event()
        self._stopped = False
        sched = AsyncIOScheduler(timezone=UTC)
        cfg = self.config
        if cfg.bars_per_second > 0:
            trigger = IntervalTrigger(seconds=1.0 / cfg.bars_per_second, timezone=UTC)
            sched.add_job(
                self._release_next,
                trigger,
                id="bar-close",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        else:
            hh, mm = (int(x) for x in cfg.close_time.split(":"))
            fire = datetime(2000, 1, 1, hh, mm) + timedelta(seconds=cfg.delay_s)
            trigger = CronTrigger(
                day_of_week="mon-fri",
                hour=fire.hour,
                minute=fire.minute,
                second=fire.second,
                timezone=ZoneInfo(cfg.timezone),
            )
            sched.add_job(
                self._release_session,
                trigger,
                id="bar-close",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
            )
        sched.start()
        self._scheduler = sched
        log.info("clock.live.start", trigger=str(trigger))

    async def stop(self) -> None:
        self.request_stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def request_stop(self) -> None:
        self._stopped = True
        if self._event is not None:
            self._event.set()

    async def _release_next(self) -> None:
        self.fired += 1
        if self._next < len(self._calendar):
            self._pending.append(self._calendar[self._next])
            self._next += 1
        if self._event is not None:
            self._event.set()

    async def _release_session(self) -> None:
        self.fired += 1
        local = datetime.now(ZoneInfo(self.config.timezone))
        self._pending.append(datetime(local.year, local.month, local.day, tzinfo=UTC))
        if self._event is not None:
            self._event.set()

    def _exhausted(self) -> bool:
        accelerated = self.config.bars_per_second > 0
        return accelerated and self._next >= len(self._calendar) and not self._pending

    async def __aiter__(self) -> AsyncIterator[datetime]:
        assert self._event is not None, "LiveClock.start() must be awaited first"
        while not self._stopped:
            if self._pending:
                yield self._pending.popleft()
                continue
            if self._exhausted():
                return
            self._event.clear()
            await self._event.wait()
