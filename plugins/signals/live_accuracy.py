"""How often a model's forecast got the next bar's direction right, as it trades.

The specification's health checks include "Model Performance: ML model accuracy": a model
decays after its training dates, and the daemon should say so while it runs, not only in a
backtest done later. This measures the forecasts' directional accuracy on the bars traded
since the start, over the last `bars` bars: the sign of each bar's forecast against the
sign of the symbol's next close-to-close return, split-adjusted (the card's target: a
one-bar forward log return). A forecast of exactly 0 and a return of exactly 0 count
neither way.

The `/ready` model check puts it beside the card's figure (`MlEnsemble.accuracy`): its
held-out test split's (`metrics.test`, windows no fitting, early stopping or calibration
saw) when the card has one, else its validation windows' (a card trained before the test
split, the shipped pair's: 0.52), said to be optimistic: those windows early-stopped the
CNN+LSTM and calibrated the confidence.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

DEFAULT_BARS = 252


class DirectionalAccuracy:
    """Hits and forecasts per bar over the last `bars` bars (bounded: a daemon runs for
    months)."""

    def __init__(self, n_symbols: int, bars: int = DEFAULT_BARS) -> None:
        self._forecast = np.full(n_symbols, np.nan)
        self._close = np.full(n_symbols, np.nan)
        self._per_bar: deque[tuple[int, int]] = deque(maxlen=bars)
        self.bars = bars

    def update(self, close: np.ndarray, split: np.ndarray, forecast: np.ndarray) -> None:
        """This bar's prices score the last bar's forecasts; `forecast` (NaN where none) is
        kept for the next bar."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = close * split / self._close
        seen = np.isfinite(ratio) & np.isfinite(self._forecast)
        seen &= (ratio != 1.0) & (self._forecast != 0.0)
        count = int(np.count_nonzero(seen))
        if count:
            hits = np.count_nonzero((self._forecast[seen] > 0) == (ratio[seen] > 1.0))
            self._per_bar.append((int(hits), count))
        self._forecast = np.array(forecast, dtype=np.float64, copy=True)
        self._close = np.array(close, dtype=np.float64, copy=True)

    def summary(self) -> dict[str, Any]:
        hits = sum(h for h, _ in self._per_bar)
        count = sum(c for _, c in self._per_bar)
        return {
            "directional_accuracy": hits / count if count else None,
            "forecasts": count,
            "bars": len(self._per_bar),
            "window_bars": self.bars,
        }
