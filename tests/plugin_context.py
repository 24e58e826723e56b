"""Hand-built `BarContext`s for plugin tests: a close-price history pushed bar by bar into the
engine's own `HistoryBuffer`, and a portfolio of given weights.

    from plugin_context import bar_context, closes_from_returns, make_context

`bar_context(symbols, features)` is the short form for plugins that read features only.
`AlwaysLong` is a signal plugin for engine tests (pass it as `plugins={"always_long": ...}`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from tradingd.core.ports import BarContext, PortfolioView
from tradingd.core.types import CrossSection
from tradingd.engine.history import HistoryBuffer

T0 = datetime(2021, 3, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class AlwaysLongConfig:
    pass


class AlwaysLong:
    """Wants every symbol long, every bar (re-enters after an exit): whatever holds it back
    is sizing, risk or the protective exits under test."""

    kind = "signal"
    Config = AlwaysLongConfig

    def __init__(self, config: AlwaysLongConfig, symbols: tuple[str, ...]) -> None:
        self.name = "always_long"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def score(self, ctx: BarContext) -> np.ndarray:
        return np.ones(len(ctx.symbols))


def closes_from_returns(returns: np.ndarray, start: float = 100.0) -> np.ndarray:
    """(T + 1, N) closes whose close-to-close returns are `returns` (T, N). A NaN return
    leaves the close at that bar NaN (no bar) and the next return runs from the last close."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    closes = np.empty((r.shape[0] + 1, r.shape[1]))
    closes[0] = start
    level = np.full(r.shape[1], float(start))
    for k, row in enumerate(r, start=1):
        ok = ~np.isnan(row)
        level = np.where(ok, level * (1.0 + np.nan_to_num(row)), level)
        closes[k] = np.where(ok, level, np.nan)
    return closes


def history_of(closes: np.ndarray, capacity: int | None = None) -> HistoryBuffer:
    """A HistoryBuffer holding `closes` (T, N) as bars (open = high = low = close)."""
    closes = np.asarray(closes, dtype=np.float64)
    t, n = closes.shape
    h = HistoryBuffer(n, capacity or max(t, 1))
    ones, zeros = np.ones(n), np.zeros(n)
    for k in range(t):
        c = closes[k]
        h.push(CrossSection(T0 + timedelta(days=k), c, c, c, c, ones, ones, zeros))
    return h


def bar_context(
    symbols: Sequence[str],
    features: Mapping[str, np.ndarray] | None = None,
    *,
    closes: np.ndarray | None = None,
    ready: Sequence[bool] | np.ndarray | None = None,
    **portfolio: object,
) -> BarContext:
    """A context with the given features ({name: (N,) values}); without `closes`, every
    symbol has a bar at 100.0 (all tradable). Other keywords as for `make_context`."""
    ctx = make_context(symbols, closes, **portfolio)  # type: ignore[arg-type]
    return dataclasses.replace(
        ctx,
        features=dict(features or {}),
        ready=None if ready is None else np.asarray(ready, dtype=bool),
    )


def make_context(
    symbols: Sequence[str],
    closes: np.ndarray | None = None,
    *,
    weights: Sequence[float] | np.ndarray | None = None,
    quantity: Sequence[float] | np.ndarray | None = None,
    tradable: Sequence[bool] | np.ndarray | None = None,
    equity: float = 1_000_000.0,
    peak: float | None = None,
    day_start: float | None = None,
    capacity: int | None = None,
) -> BarContext:
    """The context at the last row of `closes` (T, N). `weights` are the current position
    weights; `quantity` defaults to their sign (held where the weight is nonzero). `mark` is
    the last known close; `tradable` defaults to "has a close at the last bar". `peak` and
    `day_start` (the peak and the day's first equity) default to `equity`."""
    symbols = tuple(symbols)
    n = len(symbols)
    if closes is None:
        closes = np.full((1, n), 100.0)
    closes = np.asarray(closes, dtype=np.float64)
    history = history_of(closes, capacity)
    last = closes[-1]
    mark = np.full(n, np.nan)
    for row in closes:
        mark = np.where(np.isnan(row), mark, row)
    w = np.zeros(n) if weights is None else np.asarray(weights, dtype=np.float64)
    q = np.sign(w) if quantity is None else np.asarray(quantity, dtype=np.float64)
    ones = np.ones(n)
    bar = CrossSection(
        T0 + timedelta(days=len(closes) - 1), last, last, last, last, ones, ones, np.zeros(n)
    )
    return BarContext(
        time=bar.time,
        index=len(closes) - 1,
        symbols=symbols,
        bar=bar,
        mark=mark,
        tradable=~np.isnan(last) if tradable is None else np.asarray(tradable, dtype=bool),
        history=history,
        features={},
        portfolio=PortfolioView(
            cash=equity,
            equity=equity,
            quantity=q,
            weights=w,
            peak_equity=equity if peak is None else peak,
            day_start_equity=equity if day_start is None else day_start,
        ),
    )
