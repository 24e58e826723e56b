"""Fills restated for splits: the one rule the run's summary and its analysis share.

Light on purpose (numpy and the standard library): `tradingd backtest` uses it after every
replay, and a rerun imports no pandas.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..core.types import Fill

__all__ = ["restate_for_splits"]


def restate_for_splits(
    fills: Sequence[Fill], splits: Mapping[str, Iterable[tuple[Any, float]]] | None
) -> Sequence[Fill]:
    """Fills restated in end-of-run shares with the run's split events (symbol: [(time,
    coefficient)]): a round trip across a 2-for-1 bought at 100 and sold at 55 is a 10%
    gain, not a 45% loss. A fill at or after an event's bar is already in its shares (the
    engine applies a split before the bar's fills). The one restatement: the summary's
    (`backtest.split_adjusted`, from the panel's events) and the analysis' (a record's
    `splits.csv`). Unchanged fills are the same objects; `fills` itself when none moves."""
    if not fills or not splits:
        return fills
    # A symbol's factor after event i is the product of the coefficients of events i, i+1,
    # ..., taken from the last back: the reversed cumulative product, the same bits as over
    # the whole panel (only a coefficient that is not 1 changes a product).
    events: dict[str, tuple[list[Any], list[float]]] = {}
    for sym, evs in splits.items():
        ordered = sorted(((t, float(c)) for t, c in evs), key=lambda e: e[0])
        after = np.cumprod([c for _, c in ordered][::-1])[::-1].tolist()
        events[sym] = ([t for t, _ in ordered], after)
    out = []
    for f in fills:
        ev = events.get(f.symbol)
        if ev is not None:
            i = bisect_right(ev[0], f.time)  # the first event after the fill
            if i < len(ev[1]) and ev[1][i] != 1.0:
                g = ev[1][i]
                # Positional, in field order (fill_id, client_order_id, symbol, side,
                # quantity, price, commission, slippage, time, reference_price):
                # dataclasses.replace costs three times as much, for thousands of fills.
                f = Fill(
                    f.fill_id,
                    f.client_order_id,
                    f.symbol,
                    f.side,
                    f.quantity * g,
                    f.price / g,
                    f.commission,
                    f.slippage,
                    f.time,
                    f.reference_price / g,
                )
        out.append(f)
    return out
