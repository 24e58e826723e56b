"""systemd notifications: READY=1 once the daemon trades, WATCHDOG=1 from the event loop.

Under `Type=notify` with `WatchdogSec`, systemd restarts a daemon whose loop stops petting the
watchdog. The pet is sent from a task of the daemon's own event loop (and from each engine
heartbeat): if the loop is stuck, nothing pets, and systemd restarts the process instead of
leaving it half-alive. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

Until READY=1 the start-up also extends the unit's start timeout (EXTEND_TIMEOUT_USEC) from
the same loop: a warm-up is as long as its source's budget makes it (Alpha Vantage's 5 calls
a minute: ~75 symbols took longer than the unit's TimeoutStartSec=900), and systemd killed
such a start and restarted it, again and again. A start whose loop is stuck stops extending
and is still killed, EXTEND_BY_S after its last extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    # Until ready: the start timeout is pushed EXTEND_BY_S past now every EXTEND_EVERY_S.
    EXTEND_EVERY_S = 60.0
    EXTEND_BY_S = 300.0

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        # Pet at a quarter of the watchdog interval (systemd's own recommendation is half).
        self.interval_s = int(usec) / 4e6 if usec.isdigit() and int(usec) > 0 else 0.0
        self._notifier: Any = None  # sdnotify.SystemdNotifier, imported when first used
        self._task: asyncio.Task[None] | None = None
        self._extender: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._last_pet = -float("inf")
        self.sent: list[str] = []  # the last messages, for tests and /status (bounded)

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        if self._notifier is None:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        self._notifier.notify(message)
        self.sent.append(message)
        del self.sent[:-16]

    async def start(self) -> None:
        if self.enabled and not self._ready and not self._stopping:
            self._extender = asyncio.create_task(self._extend_loop(), name="systemd-extend")
        if self.enabled and self.interval_s > 0:
            self._task = asyncio.create_task(self._pet_loop(), name="systemd-watchdog")
            log.info("systemd.watchdog", interval_s=self.interval_s)

    async def _extend_loop(self) -> None:
        """Until READY=1: the start timeout at least EXTEND_BY_S from now, renewed every
        EXTEND_EVERY_S while the event loop runs."""
        usec = int(self.EXTEND_BY_S * 1e6)
        while not self._ready:
            self._send(f"EXTEND_TIMEOUT_USEC={usec}")
            await asyncio.sleep(self.EXTEND_EVERY_S)

    async def _pet_loop(self) -> None:
        while True:
            self.pet(force=True)
            await asyncio.sleep(self.interval_s)

    def ready(self) -> None:
        """Connected, reconciled and warmed up: systemd may consider the unit started."""
        self._ready = True
        if self._extender is not None:
            self._extender.cancel()
        self._send("READY=1")
        if self.enabled:
            log.info("systemd.ready")

    def pet(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.interval_s <= 0 or (not force and now - self._last_pet < self.interval_s):
            return
        self._last_pet = now
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """The stop has begun (the first stop signal, or the end of the run): said once, and
        the start timeout no longer extended. systemd applies EXTEND_TIMEOUT_USEC to the
        state it is in, so extensions sent during a stop in start-up pushed the stop's own
        timeout (TimeoutStopSec) back every minute: a wedged stop was never killed."""
        if self._stopping:
            return
        self._stopping = True
        if self._extender is not None:
            self._extender.cancel()
        self._send("STOPPING=1")

    async def stop(self) -> None:
        for task in (self._task, self._extender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._extender = None
