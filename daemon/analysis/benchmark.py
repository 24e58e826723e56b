"""The benchmark of a run: its level series (a configured symbol of a data source, made a
total-return index the way the engine books a holding) and its per-bar returns on the run's
own bars. Loading and aligning data, kept apart from the pure metric functions
(`return_metrics`) that take the aligned returns; shared by `PerformanceAnalyzer` and the
attribution.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import structlog

if TYPE_CHECKING:
    from .performance import PerformanceConfig

__all__ = [
    "BENCHMARK_SOURCES",
    "align_benchmark",
    "benchmark_curve",
    "benchmark_levels",
    "level_curve",
    "level_returns",
    "levels_at",
    "load_benchmark",
]

BENCHMARK_SOURCES = ("bundled", "csv", "parquet")
# The benchmark level before a run's first bar (its first return's base) may be at most this
# many calendar days older than the first bar (a long weekend and a holiday), as the loaders'
# default `data.max_gap_days`: anything older is not that bar's previous session.
_MAX_BASE_GAP_DAYS = 7
_NAN = math.nan
# Repeated times named in an error or a log line: the first few.
_SHOWN = 5

log = structlog.get_logger(__name__)


def _session_dates(times: Any) -> pd.DatetimeIndex:
    """Each time's calendar date in its own zone (daily bars are stamped at midnight)."""
    idx = pd.DatetimeIndex(pd.to_datetime(times))
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    return idx.normalize()


def _utc(idx: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def benchmark_levels(frame: pd.DataFrame) -> pd.Series:
    """A total-return level series from a validated OHLCV table of one symbol (time, close,
    optional split and dividend), as the engine books a holding: split first, then the
    dividend per post-split share."""
    f = frame.sort_values("time")
    close = f["close"].to_numpy(dtype=float)
    split = f["split"].to_numpy(dtype=float) if "split" in f else np.ones_like(close)
    div = f["dividend"].to_numpy(dtype=float) if "dividend" in f else np.zeros_like(close)
    growth = np.ones_like(close)
    growth[1:] = split[1:] * (close[1:] + div[1:]) / close[:-1]
    levels = close[0] * np.cumprod(growth) if close.size else close
    return pd.Series(levels, index=pd.DatetimeIndex(f["time"]), name="benchmark")


def _fmt_times(idx: pd.DatetimeIndex) -> list[str]:
    return [t.strftime("%Y-%m-%d") if t == t.normalize() else t.isoformat() for t in idx[:_SHOWN]]


def _one_level_per_time(lv: pd.Series, name: str) -> pd.Series:
    """`lv` with each time once. A time repeated with the same level is a copy: dropped, and
    logged. Repeated with different levels, it is an error, as a repeated time of a run's
    equity curve is (run_records): keeping one of them silently (the last, before) changed
    beta from 0.298 to 0.258 for one repeated day with a level 10% off, and nothing said so."""
    if lv.index.is_unique:
        return lv
    pairs = pd.DataFrame({"time": lv.index, "level": lv.to_numpy()})
    copy = pairs.duplicated().to_numpy()  # the same time and level as an earlier row
    lv = lv[~copy]
    clash = lv.index[lv.index.duplicated()].unique().sort_values()
    if len(clash):
        raise ValueError(
            f"benchmark {name} repeats {len(clash)} time(s) with different levels, first "
            f"{_fmt_times(clash)}: which level is that day's is unknown; pass one level per "
            "time (drop the wrong rows)"
        )
    repeated = pairs["time"][copy].drop_duplicates().sort_values()
    log.info(
        "benchmark.duplicates_dropped",
        benchmark=name,
        rows=int(copy.sum()),
        times=_fmt_times(pd.DatetimeIndex(repeated)),
    )
    return lv


def align_benchmark(times: Any, levels: pd.Series) -> np.ndarray:
    """The benchmark's return on each of the run's bars (NaN where unknown).

    The level at a bar is the benchmark's on the same date (of several levels on one date,
    an intraday series against daily bars, the last); the first bar's base is the
    benchmark's last level before that date if it is at most a week older. Intraday runs
    (several bars a day) match on the exact time instead. A time repeated in `levels` with
    different levels is a ValueError; repeated with the same level, the copies are dropped."""
    return level_returns(*levels_at(times, levels))


def level_returns(at: np.ndarray, base: float) -> np.ndarray:
    """Per-bar returns of the levels at the bars (`levels_at`): NaN at a bar without a
    level and at the bar after it."""
    prev = np.concatenate(([base], at[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return at / prev - 1.0


def benchmark_curve(times: Any, levels: pd.Series, initial_capital: float) -> np.ndarray:
    """`level_curve` of the benchmark's levels at the run's bars."""
    at, base = levels_at(times, levels)
    return level_curve(at, base, initial_capital)


def level_curve(at: np.ndarray, base: float, initial_capital: float) -> np.ndarray:
    """`initial_capital` invested in the benchmark over the run's bars, from its levels:
    capital x level / the base level (the level before the first bar, as `align_benchmark`
    takes it, else the first bar's), the last known level carried over a bar the benchmark
    lacks; NaN before its first known level and after its last (a benchmark that ends
    before the run is not drawn flat to its end). Compounding the per-bar returns instead lost
    the move across a missing day for good (a missing bar and the next have no return):
    levels 100, 101, [110 missing], 111, 112, 113 ended at 102.8, not 113."""
    known = np.flatnonzero(np.isfinite(at))
    out = np.full(at.size, np.nan)
    if known.size == 0:
        return out
    ref = base if math.isfinite(base) else float(at[known[0]])
    carried = pd.Series(at).ffill().to_numpy(dtype=float)
    span = slice(known[0], known[-1] + 1)
    out[span] = float(initial_capital) * carried[span] / ref
    return out


def levels_at(times: Any, levels: pd.Series | None) -> tuple[np.ndarray, float]:
    """The benchmark's level at each of the run's bars (NaN where it has none) and the base
    level before the first bar (NaN when none is at most a week older), as
    `align_benchmark` describes."""
    bar_idx = pd.DatetimeIndex(pd.to_datetime(times))
    n = len(bar_idx)
    if n == 0 or levels is None or len(levels) == 0:
        return np.full(n, np.nan), _NAN
    lv = pd.Series(np.asarray(levels, dtype=float), index=pd.DatetimeIndex(levels.index))
    lv = _one_level_per_time(lv, repr(levels.name) if levels.name is not None else "series")
    bar_dates = _session_dates(bar_idx)
    daily = bar_dates.is_unique
    if daily:
        keys = bar_dates
        lv.index = _session_dates(lv.index)
    else:  # intraday: exact times, compared in UTC (naive times are taken as UTC)
        keys = _utc(bar_idx)
        lv.index = _utc(lv.index)
    lv = lv[~lv.index.duplicated(keep="last")].sort_index()
    lv = lv[np.isfinite(lv.to_numpy()) & (lv.to_numpy() > 0)]
    at = lv.reindex(keys).to_numpy(dtype=float)
    before = lv[lv.index < keys[0]]
    base = _NAN
    if len(before):
        gap = keys[0] - before.index[-1]
        if not daily or gap <= pd.Timedelta(days=_MAX_BASE_GAP_DAYS):
            base = float(before.iloc[-1])
    return at, base


def load_benchmark(config: PerformanceConfig) -> pd.Series | None:
    """The configured benchmark's total-return levels (None when `benchmark` is "")."""
    if not config.benchmark:
        return None
    from ..feeds.loaders import load_frame
    from ..feeds.validate import Advice

    frame = load_frame(
        config.benchmark_source,
        config.benchmark_path or None,
        symbols=[config.benchmark],
        date_format=config.benchmark_date_format,
        # The benchmark file has its own date format and no repairs: the loaders' advice
        # named [data]'s keys, which never reach it.
        advice=Advice(
            repair=None,
            without_repair="correct the benchmark file (it is read without repairs)",
            date_format="analysis.benchmark_date_format",
            date_format_key="benchmark_date_format",
        ),
    )
    if "symbol" in frame:
        frame = frame[frame["symbol"] == config.benchmark]
    return benchmark_levels(frame)
