"""Feeds over recorded bars: replay (backtests) and a paced live stand-in.

`HistoryFeed` serves any stored time at once. `RecordedLiveFeed` is what the live path uses
when no market-data vendor is configured: it serves recorded bars in the order the live clock
releases them and refuses to go back in time, just as a real vendor can only give what has
already happened.
"""

from __future__ import annotations

from datetime import datetime

from ..core.types import CrossSection
from .panel import Panel


class HistoryFeed:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self._times = panel.datetimes()
        self._row = panel.time_rows()

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.panel.symbols

    @property
    def times(self) -> list[datetime]:
        return self._times

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def bars(self, t: datetime) -> CrossSection | None:
        i = self._row.get(t)
        return None if i is None else self.panel.row(i, t)


class RecordedLiveFeed(HistoryFeed):
    def __init__(self, panel: Panel) -> None:
        super().__init__(panel)
        self._last: datetime | None = None

    async def bars(self, t: datetime) -> CrossSection | None:
        if self._last is not None and t <= self._last:
            raise ValueError(f"live feed asked for {t} after serving {self._last}")
        self._last = t
        return await super().bars(t)
