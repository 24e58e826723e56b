"""Feeds over recorded bars: replay (backtests) and a paced live stand-in.

`HistoryFeed` serves any stored time at once. `RecordedLiveFeed` is what the live path uses
when no market-data vendor is configured: it serves recorded bars in the order the live clock
releases them and refuses to go back in time, just as a real vendor can only give what has
already happened.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from ..core.arrays import read_only_copy
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
        bar = await super().bars(t)
        if bar is None:
            return None
        # Copies, not the replay's rows: a row's `.base` is the whole recorded (T, N) panel,
        # and a plugin read the bars still to come through `ctx.bar.close.base` (a demo run
        # went from 100k to 188k, and replay-check passed it, its replay reading the same).
        # A live vendor can only give what has happened; seven row copies a bar cost
        # nothing at live bar rates (a replay keeps its views: `HistoryFeed`).
        return CrossSection(
            bar.time,
            _own_row(bar.open),
            _own_row(bar.high),
            _own_row(bar.low),
            _own_row(bar.close),
            _own_row(bar.volume),
            _own_row(bar.split),
            _own_row(bar.dividend),
        )


def _own_row(a: np.ndarray) -> np.ndarray:
    """`a` copied, read-only past `setflags` (`core.arrays.read_only_copy`), as row 0 of a
    (1, N) array: its `.base` is that array, which holds this bar and nothing else, and
    refuses `setflags(write=True)` as the replay's panel does."""
    return read_only_copy(a.reshape(1, -1))[0]
