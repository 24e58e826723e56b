"""Trade statistics of a run: round-trip PnLs (from `metrics.closed_trades`), win rate,
profit factor, average win and loss, and turnover. Apart from the return metrics because
they take fills and traded value, not per-bar returns (conventions: `performance`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .metrics import ClosedTrade
from .return_metrics import _arr

__all__ = [
    "annual_turnover",
    "average_loss",
    "average_win",
    "profit_factor",
    "round_trip_pnls",
    "win_rate",
]

_NAN = math.nan


def round_trip_pnls(trades: Iterable[ClosedTrade]) -> np.ndarray:
    """The PnL of each finished round trip (its closing fills summed), in order of the fill
    that took the position back to flat."""
    open_pnl: dict[str, float] = {}
    out: list[float] = []
    for t in trades:
        pnl = open_pnl.pop(t.symbol, 0.0) + t.pnl
        if t.ends_round_trip:
            out.append(pnl)
        else:
            open_pnl[t.symbol] = pnl
    return np.asarray(out, dtype=float)


def win_rate(pnls: Any) -> float:
    p = _arr(pnls)
    return float(np.mean(p > 0)) if p.size else _NAN


def profit_factor(pnls: Any) -> float:
    """Gross profit / gross loss; NaN without a loss."""
    p = _arr(pnls)
    losses = p[p < 0]
    if not losses.size:
        return _NAN
    return float(np.sum(p[p > 0])) / abs(float(np.sum(losses)))


def average_win(pnls: Any) -> float:
    p = _arr(pnls)
    wins = p[p > 0]
    return float(np.mean(wins)) if wins.size else _NAN


def average_loss(pnls: Any) -> float:
    """Mean of the losing PnLs (negative)."""
    p = _arr(pnls)
    losses = p[p < 0]
    return float(np.mean(losses)) if losses.size else _NAN


def annual_turnover(traded_value: float, equity: Any, periods_per_year: float = 252.0) -> float:
    """Traded value (buys + sells) over the mean equity, per year."""
    e = _arr(equity)
    if e.size == 0:
        return _NAN
    mean = float(np.mean(e))
    if not mean > 0:
        return _NAN
    return traded_value / mean * periods_per_year / e.size
