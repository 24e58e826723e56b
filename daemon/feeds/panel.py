"""The in-memory shape of stored history: one (T, N) array per field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from ..core.arrays import read_only_alias
from ..core.lazy import LazyModule
from ..core.types import CrossSection

if TYPE_CHECKING:
    import pandas as pd
else:  # imported at its first use (core/lazy.py): a backtest from the panel cache needs none
    pd = LazyModule("pandas")

PRICE_FIELDS = ("open", "high", "low", "close")
FIELDS = (*PRICE_FIELDS, "volume", "split", "dividend")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_only(a: np.ndarray) -> np.ndarray:
    """An array over `a`'s memory that `setflags` cannot make writeable (`core.arrays.
    read_only_alias`), for the rows a replay hands the plugins (`ctx.bar`).

    A row is a view of it, and a view's `.base` is this array: a flag on a view, or on the
    panel's own array under it, was not enough, as numpy lets an array that owns its memory
    be made writeable again (`ctx.bar.close.base.setflags(write=True)` went through), and a
    plugin could then write into every later bar, fill and run. Here the memory is a
    read-only `memoryview`, so `setflags(write=True)` raises ValueError on the row, on its
    `.base` and on any slice of either. No copy: the panel's arrays stay the caller's."""
    return read_only_alias(a)


@dataclass(frozen=True)
class Panel:
    """Bars of a fixed universe on a common time index.

    `times` is sorted and unique (datetime64[ns], naive): the exchange's wall time, so a daily
    bar is its trading date at midnight whatever offset its source wrote (see validate.py).
    `datetimes()` labels them UTC, as the live clock labels its bar dates. Price and volume
    arrays hold NaN where a symbol has no bar; `split` is 1.0 and `dividend` 0.0 there. Prices
    are raw (as traded): splits are applied by the portfolio and the history buffer at the bar
    they happen.
    """

    times: np.ndarray
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    split: np.ndarray
    dividend: np.ndarray

    def __post_init__(self) -> None:
        t, n = len(self.times), len(self.symbols)
        for name in FIELDS:
            arr = getattr(self, name)
            if arr.shape != (t, n):
                raise ValueError(f"panel field {name!r} has shape {arr.shape}, expected {(t, n)}")

    @property
    def n_bars(self) -> int:
        """Bars that exist (symbol x time with a close)."""
        return int(np.count_nonzero(~np.isnan(self.close)))

    def datetimes(self) -> list[datetime]:
        """The bar times as datetimes, tzinfo UTC (a new list each call). Converted once per
        panel: a backtest's set-up asked for them five times (2.5 ms each at 4,822 bars); a
        panel's `times` are not changed once it is made."""
        made = self.__dict__.get("_datetimes")
        if made is None:
            # (Frozen: into the instance's dict directly, as functools.cached_property does.)
            made = self.__dict__["_datetimes"] = self._datetimes()
        return list(made)

    def time_rows(self) -> dict[datetime, int]:
        """The row of each of `datetimes()`, made once per panel and shared by its readers
        (the replay's feed and feature source look a bar up in it): read it, do not change
        it."""
        rows = self.__dict__.get("_time_rows")
        if rows is None:
            rows = self.__dict__["_time_rows"] = {t: i for i, t in enumerate(self.datetimes())}
        return rows

    def __getstate__(self) -> dict[str, object]:
        # Without what datetimes(), time_rows() and row() made: remade where the copy is read.
        made = ("_datetimes", "_time_rows", "_read_only")  # (pickled, a view is a copy)
        return {k: v for k, v in self.__dict__.items() if k not in made}

    def _datetimes(self) -> list[datetime]:
        """One conversion of the whole index (5x faster than a Timestamp at a time), by
        numpy: pandas is not imported for it (a backtest from the panel cache needs pandas
        for nothing else). Times with nanoseconds, which a datetime cannot hold, are left to
        pandas (which drops them, as it always did here)."""
        micros = self.times.astype("datetime64[us]")
        if not np.array_equal(micros, self.times):
            return pd.DatetimeIndex(self.times, tz=UTC).to_pydatetime().tolist()
        # The epoch plus each count of microseconds: exact, and half the cost of a naive
        # datetime per time given its zone.
        return [_EPOCH + timedelta(microseconds=u) for u in micros.view("int64").tolist()]

    def row(self, i: int, time: datetime) -> CrossSection:
        # Positional, in field order (time, open, high, low, close, volume, split, dividend):
        # a replay builds one per bar. Rows of read-only views: a bar goes to the plugins,
        # and one writing into it changed the data of every later plugin, fill and run.
        ro = self.__dict__.get("_read_only")
        if ro is None:
            ro = self.__dict__["_read_only"] = tuple(_read_only(getattr(self, f)) for f in FIELDS)
        o, h, lo, c, v, sp, d = ro
        return CrossSection(time, o[i], h[i], lo[i], c[i], v[i], sp[i], d[i])

    def select(
        self,
        symbols: tuple[str, ...] | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> Panel:
        """A sub-panel by symbols and inclusive date range (dates as 'YYYY-MM-DD')."""
        cols = np.arange(len(self.symbols))
        if symbols is not None:
            index = {s: i for i, s in enumerate(self.symbols)}
            missing = [s for s in symbols if s not in index]
            if missing:
                raise KeyError(f"symbols not in data: {missing}")
            cols = np.array([index[s] for s in symbols], dtype=int)
        mask = np.ones(len(self.times), dtype=bool)
        if start:
            mask &= self.times >= np.datetime64(pd.Timestamp(start).to_datetime64(), "ns")
        if end:
            mask &= self.times <= np.datetime64(pd.Timestamp(end).to_datetime64(), "ns")
        sub = {f: getattr(self, f)[np.ix_(mask, cols)] for f in FIELDS}
        keep = ~np.all(np.isnan(sub["close"]), axis=1)
        return Panel(
            times=self.times[mask][keep],
            symbols=tuple(self.symbols[i] for i in cols),
            **{f: np.ascontiguousarray(a[keep]) for f, a in sub.items()},
        )

    @classmethod
    def from_long(cls, df: pd.DataFrame) -> Panel:
        """From a validated long table with columns time, symbol and the FIELDS."""
        # Symbol codes by factorizing: the column as Python strings would cost ~50 bytes a
        # row (100 MB for the shared S&P 500 file) for a moment, at the load's peak.
        codes, uniques = pd.factorize(df["symbol"])
        names = [str(u) for u in uniques]
        symbols = tuple(sorted(names))
        rank = {s: i for i, s in enumerate(symbols)}
        si = np.array([rank[s] for s in names], dtype=np.intp)[codes]
        times = np.sort(df["time"].unique())
        ti = np.searchsorted(times, df["time"].to_numpy())
        out = {}
        for f in FIELDS:
            fill = 1.0 if f == "split" else (0.0 if f == "dividend" else np.nan)
            arr = np.full((len(times), len(symbols)), fill, dtype=np.float64)
            arr[ti, si] = df[f].to_numpy(dtype=np.float64)
            out[f] = arr
        return cls(times=np.asarray(times, dtype="datetime64[ns]"), symbols=symbols, **out)
