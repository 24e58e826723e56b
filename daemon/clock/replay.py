"""Replay clock: the next stored bar time at once, as fast as the engine can take them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime


class ReplayClock:
    def __init__(self, times: Sequence[datetime]) -> None:
        self._times = list(times)
        self._stop = False

    async def start(self) -> None:
        self._stop = False

    async def stop(self) -> None:
        self._stop = True

    def request_stop(self) -> None:
        self._stop = True

    async def __aiter__(self) -> AsyncIterator[datetime]:
        for t in self._times:
            if self._stop:
                return
            yield t
