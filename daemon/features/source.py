"""The two feature sources: batch-precomputed (replay) and streaming (live)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime

import numpy as np

from ..core.arrays import read_only_alias, read_only_copy
from ..core.types import CrossSection
from ..feeds.panel import Panel
from .batch_cache import FeatureCache
from .catalog import Catalog
from .engineer import StreamingFeatures, compute_batch


class BatchFeatureSource:
    """Whole histories computed once before the replay; each bar reads its row."""

    def __init__(
        self,
        panel: Panel,
        names: Sequence[str],
        catalog: Catalog,
        *,
        cache: FeatureCache | None = None,
    ) -> None:
        """`cache`: where a run on the same data and features left them prepared (they are
        then read from there, see `batch_cache`), and where `prepare` leaves them."""
        self._names = tuple(dict.fromkeys(names))
        self._row: dict[datetime, int] = panel.time_rows()
        self._n = len(panel.symbols)
        self._prepared: tuple[frozenset[str], Callable[[CrossSection], np.ndarray | None]] | None
        self._prepared = None
        self._cache = cache
        self._key = cache.key(panel, self._names, catalog) if cache is not None else None
        # From the cache: values already cleaned, and the packed bits of where they were
        # finite (feature, T, ceil(N / 8)).
        self._finite_bits: np.ndarray | None = None
        self._ready: np.ndarray | None = None
        self._released = False
        loaded = None
        if cache is not None and self._key is not None:
            loaded = cache.load(self._key, self._names, panel.close.shape)
        if loaded is not None:
            self._values, self._finite_bits = loaded
        else:
            self._values = compute_batch(panel, self._names, catalog) if self._names else {}

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def at(self, bar: CrossSection) -> Mapping[str, np.ndarray]:
        try:
            i = self._row[bar.time]
        except KeyError:
            raise self._no_row(bar.time) from None
        bits = self._finite_bits
        if bits is not None and self._prepared is None:
            # Not prepared, from the cache: NaN where a value was not finite (an inf comes
            # back as NaN, a NaN without its sign). The engine always prepares first.
            n = self._n
            return {
                name: np.where(np.unpackbits(bits[k, i], count=n).view(bool), v[i], np.nan)
                for k, (name, v) in enumerate(self._values.items())
            }
        return {n: v[i] for n, v in self._values.items()}

    def prepare(self, required: Collection[str]) -> Callable[[CrossSection], np.ndarray | None]:
        """Do once for the whole history what the engine would do at every bar: NaN and
        inf become 0 in place (plugins never see them), and the returned function gives a
        bar's row of where every `required` feature was finite (None when none is
        required). `at` returns the cleaned rows from then on. With a cache, the prepared
        values are kept there for the next run (or were read from it).

        Why: the per-bar check costs a few array passes per feature (2.8-3.0 us at 100-500
        symbols, measured), a fixed cost of every bar of every replay: ~60 us a bar for the
        default strategy's 20 features. Nothing else reads the raw values."""
        key = frozenset(required)
        if self._released:
            raise self._no_row(None)
        if self._prepared is not None:
            if self._prepared[0] != key:
                # The raw values are gone: readiness for another set cannot be computed.
                raise RuntimeError(
                    "BatchFeatureSource.prepare: already prepared for "
                    f"{sorted(self._prepared[0])}, asked for {sorted(key)}"
                )
            return self._prepared[1]
        ready: np.ndarray | None = None
        if self._finite_bits is not None:
            for k, name in enumerate(self._values):
                if name in required:
                    finite = np.unpackbits(self._finite_bits[k], axis=1, count=self._n)
                    ready = finite.view(bool) if ready is None else ready & finite.view(bool)
        else:
            cache, cache_key = self._cache, self._key
            bits: dict[str, np.ndarray] = {}
            for name, v in self._values.items():
                finite = np.isfinite(v)
                if cache_key is not None:
                    bits[name] = np.packbits(finite, axis=1)
                if name in required:
                    ready = finite if ready is None else np.logical_and(ready, finite, out=ready)
                if not finite.all():
                    v[~finite] = 0.0
            if cache is not None and cache_key is not None:
                cache.store(cache_key, self._names, self._values, bits)
        self._ready = ready
        # Read-only from here on, and for good (`read_only_alias`: a flag on each array was
        # undone through a row's `setflags(write=True)` where the array is a view of a
        # writeable one, as the cache's copy-on-write map is): each bar's rows go to the
        # plugins, and a plugin writing into one changed every later plugin's, and later
        # bars', values.
        for v in self._values.values():
            v.flags.writeable = False
        self._values = {name: read_only_alias(v) for name, v in self._values.items()}
        if ready is not None:
            ready.flags.writeable = False

        def ready_at(bar: CrossSection) -> np.ndarray | None:
            try:
                i = self._row[bar.time]
            except KeyError:
                raise self._no_row(bar.time) from None
            return None if self._ready is None else self._ready[i]

        self._prepared = (key, ready_at)
        return ready_at

    def release(self) -> None:
        """Drop the whole histories once the replay has read its last bar. They are a (days
        x symbols) matrix per feature, 20 MB for one feature at 496 symbols x 19 years, and
        what follows the last bar (reading the run's orders and fills back for its report)
        is when a backtest's memory peaks. A bar asked for afterwards is an error."""
        self._values = {}
        self._finite_bits = None
        self._ready = None
        self._row = {}
        self._released = True

    def _no_row(self, t: datetime | None) -> Exception:
        if self._released:
            what = "to prepare" if t is None else f"for {t}"
            return RuntimeError(
                f"batch features asked {what} after release(): they were dropped at the end "
                "of the replay"
            )
        return KeyError(f"batch features have no bar at {t} (their data's bars only)")


class StreamingFeatureSource:
    """Incremental updates, one bar at a time, nothing recomputed."""

    def __init__(self, n_symbols: int, names: Sequence[str], catalog: Catalog) -> None:
        self._names = tuple(dict.fromkeys(names))
        self._stream = StreamingFeatures(self._names, n_symbols, catalog) if self._names else None
        # `prepare`'s required names (None: not prepared), and the readiness row of the bar
        # `at` was last given (its time, the row).
        self._required: frozenset[str] | None = None
        self._ready: tuple[datetime, np.ndarray | None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def prepare(self, required: Collection[str]) -> Callable[[CrossSection], np.ndarray | None]:
        """What the engine did at every bar, done here as each bar's values are made (as
        `BatchFeatureSource.prepare` does once for the whole history): from now on `at`
        gives them with NaN and inf as 0 (plugins never see them), and the returned function
        gives the row of where every `required` feature was finite at the bar just given to
        `at` (None when none is required).

        Why here: the values `at` returns are read-only for good (`read_only_alias`), and
        the engine's own cleaning made a copy it could only flag read-only, which a plugin
        could make writeable again (`setflags(write=True)`) and write into before the next
        plugin read it."""
        self._required = frozenset(required)

        def ready_at(bar: CrossSection) -> np.ndarray | None:
            made = self._ready
            if made is None or made[0] != bar.time:
                raise RuntimeError(
                    f"streaming features: readiness asked for {bar.time} before at() was "
                    "given that bar"
                )
            return made[1]

        return ready_at

    def at(self, bar: CrossSection) -> Mapping[str, np.ndarray]:
        """The bar's values, read-only for good (`core.arrays`): an indicator's output can
        be its own state, which the next bar updates in place, and a plugin that made its
        view writeable (`setflags(write=True)`) wrote into that state."""
        if self._stream is None:
            self._ready = (bar.time, None)
            return {}
        raw = self._stream.update(bar)
        required = self._required
        if required is None:  # not prepared: NaN where a value is not finite
            return {n: read_only_alias(v) for n, v in raw.items()}
        ready: np.ndarray | None = None
        out: dict[str, np.ndarray] = {}
        for name, v in raw.items():
            finite = np.isfinite(v)
            if name in required:
                ready = finite if ready is None else ready & finite
            # The stream's own array when all finite (a view of it, as the engine gave).
            out[name] = (
                read_only_alias(v) if finite.all() else read_only_copy(np.where(finite, v, 0.0))
            )
        self._ready = (bar.time, ready)
        return out
