"""The two feature sources: batch-precomputed (replay) and streaming (live)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np

from ..core.types import CrossSection
from ..feeds.panel import Panel
from .catalog import Catalog
from .engineer import StreamingFeatures, compute_batch


class BatchFeatureSource:
    """Whole histories computed once before the replay; each bar reads its row."""

    def __init__(self, panel: Panel, names: Sequence[str], catalog: Catalog) -> None:
        self._names = tuple(dict.fromkeys(names))
        self._values = compute_batch(panel, self._names, catalog) if self._names else {}
        self._row: dict[datetime, int] = {t: i for i, t in enumerate(panel.datetimes())}

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def at(self, bar: CrossSection) -> Mapping[str, np.ndarray]:
        i = self._row[bar.time]
        return {n: v[i] for n, v in self._values.items()}


class StreamingFeatureSource:
    """Incremental updates, one bar at a time, nothing recomputed."""

    def __init__(self, n_symbols: int, names: Sequence[str], catalog: Catalog) -> None:
        self._names = tuple(dict.fromkeys(names))
        self._stream = StreamingFeatures(self._names, n_symbols, catalog) if self._names else None

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def at(self, bar: CrossSection) -> Mapping[str, np.ndarray]:
        return self._stream.update(bar) if self._stream is not None else {}
