"""Walk-forward settings and the fold schedule (docs/WALKFORWARD.md).

A fold is a position on the bar index: `lookback` bars that only warm up, `train` bars the
fold fits on (and, with `warmup = "train"`, trades in-sample without counting), `test` bars
it trades out of sample. Consecutive folds start `step` bars apart. Every out-of-sample bar
of the stitched curve is traded by exactly one fold, the newest whose test window holds it:
fold k's stitched segment is the first `step` bars of its test window (the next fold takes
over after them), and the last fold's is its whole test window. `step <= test` is required,
so no bar between two test windows is left untraded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError

if TYPE_CHECKING:  # light at import: the CLI builds its parser from this module's choices
    import numpy as np
    import pandas as pd

WARMUPS = ("train", "none")
RETRAIN = ("auto", "always", "never")


class WalkForwardError(ConfigError, ValueError):
    """A walk-forward setting or input that cannot work: names the key and the bad value.
    A ConfigError (the CLI reports it as `tradingd: error: ...`) and a ValueError."""


@dataclass(frozen=True)
class WalkForwardConfig:
    """`[walkforward]` (and `[walkforward.model]`, ModelConfig fields) of a config file."""

    train: int = 252  # bars each fold fits on (one year of trading days)
    test: int = 63  # bars each fold trades out of sample (a quarter)
    step: int = 21  # bars between consecutive folds (a month); <= test
    # Bars before the training window that only warm up indicators, the model's input windows
    # and the GARCH return window (never a training label, never traded).
    lookback_bars: int = 252
    # "train": the fold trades its training window first (in-sample, not counted) so Kelly
    # statistics and GARCH fits start from the fold's own trades; "none": trading starts at
    # the test window (Kelly prior, first GARCH fits on the first test bar).
    warmup: str = "train"
    # "auto": retrain the ml_ensemble model pair in every fold when a signal uses it;
    # "always": the same, but an error without ml_ensemble; "never": keep the configured
    # model (which may have seen the test windows: not a walk-forward of the model).
    retrain: str = "auto"
    max_folds: int = 0  # 0 = every fold; K = the first K (benchmarks)
    # Threads of TensorFlow, onnxruntime and OpenMP in each fold (0 = the libraries'
    # defaults). Fixed so that a fold computes the same numbers wherever it runs.
    threads: int = 1
    model: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig overrides

    def __post_init__(self) -> None:
        for key, low in (
            ("train", 2),
            ("test", 1),
            ("step", 1),
            ("lookback_bars", 0),
            ("max_folds", 0),
            ("threads", 0),
        ):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise WalkForwardError(f"walkforward.{key} must be an integer >= {low}, got {v!r}")
        if self.step > self.test:
            raise WalkForwardError(
                f"walkforward.step ({self.step}) must not exceed walkforward.test ({self.test}): "
                "the bars between two test windows would be traded by no fold"
            )
        for key, choices in (("warmup", WARMUPS), ("retrain", RETRAIN)):
            v = getattr(self, key)
            if v not in choices:
                raise WalkForwardError(
                    f"walkforward.{key} = {v!r} is invalid; valid choices: {', '.join(choices)}"
                )
        if not isinstance(self.model, Mapping):
            raise WalkForwardError(f"walkforward.model must be a table, got {self.model!r}")
        object.__setattr__(self, "model", dict(self.model))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "walkforward") -> WalkForwardConfig:
        """From a TOML table (unknown keys and bad types are errors naming the key). The
        `model` table is checked against ModelConfig when the train extra is installed."""
        from ..config import build

        try:
            out = build(cls, data, where)
        except WalkForwardError:
            raise
        except ConfigError as exc:  # unknown key, bad type: a ValueError too
            raise WalkForwardError(str(exc)) from None
        if out.model:
            out.model_config()
        return out

    def model_config(self) -> Any:
        """The fold's ModelConfig: the specification's defaults with `model` overrides."""
        try:
            from tradingd_models.config import ModelConfig
        except ImportError as exc:  # pragma: no cover - the train extra is part of dev
            raise WalkForwardError(f"walkforward.model needs the train extra: {exc}") from None
        from ..config import build

        try:
            return build(ModelConfig, self.model, "walkforward.model")
        except ConfigError as exc:
            raise WalkForwardError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": self.train,
            "test": self.test,
            "step": self.step,
            "lookback_bars": self.lookback_bars,
            "warmup": self.warmup,
            "retrain": self.retrain,
            "max_folds": self.max_folds,
            "threads": self.threads,
            "model": dict(self.model),
        }


@dataclass(frozen=True)
class Fold:
    """Bar indices into the full panel (inclusive): lookback from `lo`, training
    `train_start..train_end`, test `test_start..test_end`, stitched
    `test_start..stitch_end`."""

    index: int
    lo: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int
    stitch_end: int

    def dates(self, times: np.ndarray, offset: int = 0) -> dict[str, str]:
        """The fold's bounds as labels; `times` starts at full-panel index `offset`."""
        return {
            k: bar_label(times[getattr(self, k) - offset])
            for k in ("train_start", "train_end", "test_start", "test_end", "stitch_end")
        }


def bar_label(t: Any) -> str:
    """A bar time as config and reports write it: the date of a daily bar, else ISO UTC."""
    import pandas as pd

    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ts == ts.normalize():
        return ts.strftime("%Y-%m-%d")
    return ts.isoformat()


def run_label(t: Any, daily: bool) -> str:
    """A bar time as a fold's `run.start` / `run.end`, naming that bar as the fold's
    backtest reads them (`app.run_bound`): `bar_label`'s date for daily bars, the ISO UTC
    instant of an intraday bar. A date of intraday bars names a session day of
    live.calendar: an XASX bar at 00:00 UTC (11:00 Sydney) written "2024-03-04" started the
    fold's trading at that session's first bar, 23:00 UTC the evening before, a bar early
    (with warmup = "none", the training window's last bar was traded)."""
    return bar_label(t) if daily else bar_datetime(t).isoformat()


def bar_datetime(t: Any) -> datetime:
    """A panel time as the engine labels it (timezone-aware UTC)."""
    import pandas as pd

    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime().astimezone(UTC)


def make_folds(
    times: np.ndarray,
    config: WalkForwardConfig,
    start: str = "",
    end: str = "",
    *,
    calendar: str = "XNYS",
    data_timezone: str = "UTC",
) -> list[Fold]:
    """The schedule over bar times `times` (sorted). The first test window starts at the
    first bar on or after `start` (run.start) that has `lookback_bars + train` bars before
    it (without `start`: the first such bar); the last test window ends on or before `end`
    (run.end). Both are read as a backtest reads them (`app.run_window`; `calendar` is
    live.calendar, `data_timezone` data.timezone): for intraday bars a date is a session day
    of the calendar. Read as UTC days, an XASX fold's test window started after run.start's
    first bars (23:00 UTC the evening before), and a run.end date cut its own session."""
    import pandas as pd

    from ..app import run_window

    t = pd.DatetimeIndex(times)
    n = len(t)
    c = config
    lo, hi = run_window(start, end, times, calendar=calendar, data_timezone=data_timezone)
    start_at = _naive(lo) if lo is not None else None
    first = c.lookback_bars + c.train
    if start_at is not None:
        first = max(first, int(t.searchsorted(start_at)))
    last = n - 1
    if hi is not None:
        last = min(last, int(t.searchsorted(_naive(hi), side="right")) - 1)
    span = last - first + 1
    if start_at is not None and n and start_at > t[-1]:
        raise WalkForwardError(_start_after_data(start, end, start_at, t[-1]))
    if span < c.test:
        have = max(span, 0)
        raise WalkForwardError(
            f"too few bars for one fold: it needs lookback_bars + train + test = "
            f"{c.lookback_bars} + {c.train} + {c.test} bars, and the data "
            f"({n} bars, run.start = {start!r}, run.end = {end!r}) leaves {have} test bars "
            f"after {first} bars of lookback and training"
        )
    count = (span - c.test) // c.step + 1
    if c.max_folds:
        count = min(count, c.max_folds)
    folds = []
    for k in range(count):
        b = first + k * c.step
        test_end = b + c.test - 1
        stitch_end = test_end if k == count - 1 else b + c.step - 1
        folds.append(
            Fold(
                index=k,
                lo=max(0, b - c.train - c.lookback_bars),
                train_start=b - c.train,
                train_end=b - 1,
                test_start=b,
                test_end=test_end,
                stitch_end=stitch_end,
            )
        )
    return folds


def _start_after_data(start: str, end: str, start_at: pd.Timestamp, last: pd.Timestamp) -> str:
    """Why there is no test bar when run.start is after the data's last bar, as `tradingd
    backtest` says it (`app.trade_start`): "too few bars for one fold ... leaves 0 test
    bars" named no cause."""
    day = f"{last:%Y-%m-%d}"
    if end:
        # The data was loaded up to run.end: its last bar is not the data's end. A gap of
        # more than a long weekend before run.start is the data ending, not a holiday.
        gap = (start_at - last).days
        why = "a holiday or weekend window?" if gap <= 4 else "the data ends before run.start"
        return (
            f"no bar between run.start = {start!r} and run.end = {end!r} (the last bar up to "
            f"run.end is {day}: {why}): nothing to test; set run.start within the data"
        )
    return (
        f"run.start = {start!r} is after the last bar of the data ({day}): the data ends "
        "before run.start, nothing to test; set run.start within the data, or extend the data"
    )


def _naive(at: datetime) -> pd.Timestamp:
    """An aware bound (`app.run_window`) on the scale of the panel's naive UTC times."""
    import pandas as pd

    return pd.Timestamp(at).tz_convert("UTC").tz_localize(None)
