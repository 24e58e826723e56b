"""Finite copies of the arrays the risk rules read (targets, the book's weights).

The rules take `np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)` of their inputs: a
target or weight that is not a number counts as none. Their inputs are nearly always finite
already (the engine checks every target; the book's arrays are finite), and `nan_to_num`
costs 9-10 us a call whatever the width (measured; it is Python code around several array
operations), several calls a bar. `nan_to_zero` answers the finite case with a copy (~1.3 us)
and gives `nan_to_num`'s answer otherwise: the same values, a new array either way (a rule
may write into it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tradingd.core.arrays import count_nonzero


def nan_to_zero(values: Any) -> np.ndarray:
    """`np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)`, faster when finite."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim and count_nonzero(np.isfinite(a)) == a.size:
        return a.copy()
    return np.nan_to_num(a, nan=0.0)  # (a 0-d input: nan_to_num's scalar, as before)
