"""systemd notifications: READY=1 once the daemon trades, WATCHDOG=1 from the event loop.

Under `Type=notify` with `WatchdogSec`, systemd restarts a daemon whose loop stops petting the
watchdog. The pet is sent from a task of the daemon's own event loop (and from each engine
heartbeat): if the loop is stuck, nothing pets, and systemd restarts the process instead of
leaving it half-alive. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
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
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC", "")
        # Pet at a quarter of the watchdog interval (systemd's own recommendation is half).
        self.interval_s = int(usec) / 4e6 if usec.isdigit() and int(usec) > 0 else 0.0
        self._notifier: Any = None  # sdnotify.SystemdNotifier, imported when first used
        self._task: asyncio.Task[None] | None = None
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
        if self.enabled and self.interval_s > 0:
            self._task = asyncio.create_task(self._pet_loop(), name="systemd-watchdog")
            log.info("systemd.watchdog", interval_s=self.interval_s)

    async def _pet_loop(self) -> None:
        while True:
            self.pet(force=True)
            await asyncio.sleep(self.interval_s)

    def ready(self) -> None:
        """Connected, reconciled and warmed up: systemd may consider the unit started."""
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
        self._send("STOPPING=1")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
