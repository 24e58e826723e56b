"""Equal weights on the strongest scores: the top `max_positions` above `min_score`.

Long-only unless `allow_short`, in which case the weakest scores below -min_score are shorted
with the same weight. Ties are broken by universe order, so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tradingd.core.arrays import count_nonzero, scalar, where
from tradingd.core.ports import BarContext


@dataclass(frozen=True)
class EqualWeightConfig:
    max_positions: int = 10
    gross_exposure: float = 0.5
    min_score: float = 0.0
    allow_short: bool = False

    def __post_init__(self) -> None:
        if self.max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {self.max_positions}")
        if not 0 < self.gross_exposure <= 2:
            raise ValueError(f"gross_exposure must be in (0, 2], got {self.gross_exposure}")


class EqualWeight:
    kind: ClassVar[str] = "sizing"
    Config = EqualWeightConfig

    def __init__(self, config: EqualWeightConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "equal_weight"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def size(self, score: np.ndarray, ctx: BarContext) -> np.ndarray:
        c = self.config
        # Called on every bar, where each array operation costs about a microsecond whatever
        # the width: few of them (no masked copies of the scores; nonzero() rather than the
        # slower flatnonzero wrapper). NaN compares False: a symbol without a score (or
        # without a bar) is never a candidate.
        score = np.asarray(score)
        tradable = np.asarray(ctx.tradable, dtype=bool)
        longs = _top_of((tradable & (score > c.min_score)).nonzero()[0], score, c.max_positions)
        if c.allow_short:
            shorts = _top_of(
                (tradable & (score < -c.min_score)).nonzero()[0], -score, c.max_positions
            )
        else:
            shorts = longs[:0]
        # Untradable symbols keep their current weight: no order can be placed for them now.
        # A new array: 0 where tradable, the current weight elsewhere (one call; a copy of
        # the weights and a masked fill of zeros cost a third more).
        targets = where(tradable, _ZERO, np.asarray(ctx.portfolio.weights, dtype=np.float64))
        k = len(longs) + len(shorts)
        if k:
            w = c.gross_exposure / max(k, 1)
            targets[longs] = w
            if len(shorts):  # an empty fancy assignment still costs half a microsecond
                targets[shorts] = -w
        return targets


_ZERO = scalar(0.0)  # beside float64 weights: the same array as with 0.0

# Up to this many candidates, `_top_of` sorts them all: one stable sort costs less than the
# partition and its tie check for a few dozen (about 1-2 us less at 12-100, random scores),
# and more for the ~290 of a 496-symbol bar (12.5 against 7.5 us for the partition as it
# was written then, on that replay's own candidate sets).
_SORT_ALL = 160


def _top_of(idx: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The k of `idx` with the largest `values` (finite or inf, never NaN), ties broken by
    universe order, in no particular order: the caller gives them all the same weight.

    Array methods rather than numpy's functions (`np.argsort` and `np.partition` are Python
    wrappers around them): this runs on every bar that has candidates."""
    m = idx.size
    if m <= k:
        return idx
    v = values[idx]
    if m <= _SORT_ALL:
        # Ascending -v is descending value; a stable sort keeps universe order.
        return idx[(-v).argsort(kind="stable")[:k]]
    # The k-th largest value by a partition of the values (a copy: v is read below), not of
    # their indices: numpy's argpartition is the slower of the two on a few hundred doubles
    # (2.8 against 2.0 us for the whole of this at 290 candidates). It is the (m-k)-th
    # smallest, so no negated copy is needed (-v <= -x is v >= x, exactly).
    kth = v.copy()
    kth.partition(m - k)
    within = v >= kth[m - k]  # down to the k-th value, ties with it included
    if count_nonzero(within) == k:
        # Nothing else ties with the k-th value: the k largest are the answer (the usual
        # case with float scores).
        return idx[within]
    # Ties at the k-th value: all of them are candidates, and the stable sort of the
    # candidates breaks the ties by universe order.
    cand = within.nonzero()[0]
    return idx[cand[(-v[cand]).argsort(kind="stable")[:k]]]


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values (NaN excluded), ties broken by universe order."""
    return _top_of(np.flatnonzero(~np.isnan(values)), values, k)
