"""How often a model's forecast got the direction of its target right, as it trades.

The specification's health checks include "Model Performance: ML model accuracy": a model
decays after its training dates, and the daemon should say so while it runs, not only in a
backtest done later. This measures the forecasts' directional accuracy on the bars traded
since the start, over the last `bars` bars: the sign of each bar's forecast against the
sign of the symbol's close-to-close return over the card's `target.horizon_bars` bars
after it, split-adjusted (the card's target: a forward log return over that horizon). It
was always the next bar's, so a horizon-5 model was scored against 1-bar moves it never
forecast. A forecast of exactly 0 and a return of exactly 0 count neither way.

The `/ready` model check puts it beside the card's figure (`MlEnsemble.accuracy`): its
held-out test split's (`metrics.test`, windows no fitting, early stopping or calibration
saw) when the card has one, else its validation windows' (a card trained before the test
split; the shipped pair has one), said to be optimistic: those windows early-stopped the
CNN+LSTM and calibrated the confidence.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

DEFAULT_BARS = 252


class DirectionalAccuracy:
    """Hits and forecasts per bar over the last `bars` bars (bounded: a daemon runs for
    months); a forecast is scored `horizon` updates after it was made."""

    def __init__(self, n_symbols: int, bars: int = DEFAULT_BARS, horizon: int = 1) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a whole number of bars >= 1, got {horizon!r}")
        self._n = n_symbols
        # Forecasts not yet scored, oldest first: [forecast, close, splits since (product)].
        self._pending: deque[list[np.ndarray]] = deque()
        self._per_bar: deque[tuple[int, int]] = deque(maxlen=bars)
        self.bars = bars
        self.horizon = horizon

    def update(self, close: np.ndarray, split: np.ndarray, forecast: np.ndarray) -> None:
        """This bar's prices score the forecasts made `horizon` bars ago; `forecast` (NaN
        where none) is kept until its own horizon's bar."""
        split = np.asarray(split, dtype=np.float64)
        for entry in self._pending:
            entry[2] = entry[2] * split
        if len(self._pending) == self.horizon:
            forecast_then, close_then, splits = self._pending.popleft()
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = close * splits / close_then
            seen = np.isfinite(ratio) & np.isfinite(forecast_then)
            seen &= (ratio != 1.0) & (forecast_then != 0.0)
            count = int(np.count_nonzero(seen))
            if count:
                hits = np.count_nonzero((forecast_then[seen] > 0) == (ratio[seen] > 1.0))
                self._per_bar.append((int(hits), count))
        self._pending.append(
            [
                np.array(forecast, dtype=np.float64, copy=True),
                np.array(close, dtype=np.float64, copy=True),
                np.ones(self._n),
            ]
        )

    def summary(self) -> dict[str, Any]:
        hits = sum(h for h, _ in self._per_bar)
        count = sum(c for _, c in self._per_bar)
        return {
            "directional_accuracy": hits / count if count else None,
            "forecasts": count,
            "bars": len(self._per_bar),
            "window_bars": self.bars,
            "horizon_bars": self.horizon,
        }
