"""Closes across a gap: the one rule by which every return series of the plugins (GARCH and
EWMA's log returns, the VaR's and the correlation limit's simple returns) treats a bar a
symbol has no price for.

A close that is missing or not positive (NaN: no bar, a halt; 0 or below: not a price) with a
positive close before it *and* after it in the window is an interior gap: it is given the
last positive close before it. The return into the gap is then 0 (a halted stock's P&L while
halted) and the whole move over the gap is one return, out of it. Before, both returns were
NaN and the move was lost: a stock with no bar for a day that reopened 30% lower left its
EWMA vol at 0.126 and its Kelly x GARCH target at the 5% cap (the same crash without the gap:
vol 1.40, target 0.67%), and the VaR saw its own ~-3% tail instead of -30%.

Leading gaps (before a listing) and trailing gaps (no bar yet at the window's end, or a
delisting) stay as they are: a trailing gap has no close after it in the window, so no future
close is ever assumed; the window ends at the current bar.

Pure numpy, no import of tradingd: `sizing.garch` (imported by the fit worker) and `risk.var`
both use it."""

from __future__ import annotations

import numpy as np


def fill_interior_gaps(close: np.ndarray) -> np.ndarray:
    """`close` ((T,) or (T, ...), oldest first, float64) with each interior gap (see the
    module) filled by the last positive close before it, per series along axis 0. The array
    itself (not a copy) when there is no interior gap; never written to."""
    c = np.asarray(close, dtype=np.float64)
    if c.ndim == 0 or c.shape[0] < 3:
        return c
    t = c.shape[0]
    flat = c.reshape(t, -1)
    ok = flat > 0  # False for NaN
    if ok.all():
        return c
    # A series has an interior gap when its first and last prices are further apart than
    # its count of prices: decided on the booleans alone, so that a universe with many
    # symbols before their listing (all leading gaps) costs three passes, not a fill.
    n = np.count_nonzero(ok, axis=0)
    first = ok.argmax(axis=0)
    last = t - 1 - ok[::-1].argmax(axis=0)
    gappy = np.flatnonzero((n > 0) & (last - first + 1 > n))
    if not gappy.size:
        return c
    sub_ok = ok[:, gappy]
    rows = np.arange(t)[:, None]
    prev = np.where(sub_ok, rows, 0)
    np.maximum.accumulate(prev, axis=0, out=prev)  # the last row with a price, up to each
    inside = ~sub_ok & (rows > first[gappy]) & (rows < last[gappy])
    sub = flat[:, gappy]
    filled = np.where(inside, np.take_along_axis(sub, prev, axis=0), sub)
    out = flat.copy()
    out[:, gappy] = filled
    return out.reshape(c.shape)
