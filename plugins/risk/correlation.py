"""Correlation limit from the reference specification: a new position may not correlate more
than 0.7 with any existing one.

Correlation is the Pearson correlation of daily close-to-close returns over the last `window`
bars of `ctx.history` (split-adjusted, so only data up to the current bar), computed for each
pair over the days on which both symbols have a return (pairwise-complete). A day inside a
symbol's gap (no bar, with bars before and after it in the window) has a return, 0, and the
day it trades again the whole move over the gap (`var.daily_returns`). It is taken as
the correlation of the two *positions*: sign(weight_a) * sign(weight_b) * corr(r_a, r_b), so
two longs (or two shorts) of correlated stocks count as correlated, and a long against a
short of a correlated stock (a hedge) does not. `absolute = true` uses |corr| instead, which
also refuses hedges. A pair with a flat series (a constant return over the common days, up
to rounding, e.g. a price that did not move) has correlation 0: it does not move with
anything.

Who is checked:

* An *entry* is a new position: a symbol with no position now (quantity 0) and a nonzero
  target, or the new side of a *flip* (a held position whose target has the other sign) that
  can trade at this bar. A refused flip's target becomes 0: the exit goes through, the new
  side does not.
* The *existing positions* are the held symbols that stay held: a nonzero target on the same
  side, or a target that cannot be executed at this bar (no bar, `ctx.tradable` false). A
  held position whose exit goes through at this bar does not block an entry that replaces
  it. The sign of an existing position is that of its target (of its quantity when the
  target is 0 or cannot be executed).

Rules, in this order:

1. An entry with fewer than `min_overlap` returns in the window is refused: its correlation
   cannot be measured.
2. An entry is refused when its correlation with any existing position exceeds
   `max_correlation`, or when the two have fewer than `min_overlap` common returns (unknown
   counts as too high).
3. The remaining entries are taken in order of decreasing |target| (universe order among
   equal sizes, so the result is deterministic); each is accepted unless it correlates above
   the limit (or unknown, as in 2) with an entry already accepted at this bar.

Existing positions are never reduced by this rule (a flip's old side is closed only because
its new side is refused), and an existing position with fewer than
`min_overlap` returns in the window (a halted or delisted holding whose exit cannot trade)
cannot be measured against: it is left out of the check, and the plugin logs a warning when a
held symbol starts being left out (and an info line when it is measurable again), so such a
holding cannot block every entry for as long as it is held. A refused entry's target becomes
0 with a `RiskVerdict` (action ``"reject"``, ``"clip"`` for a flip) naming the position it
collided with, the correlation, the limit and the number of common returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import structlog

from tradingd.core.ports import BarContext, RiskDecision
from tradingd.core.types import RiskVerdict

from .finite import nan_to_zero
from .var import daily_returns

log = structlog.get_logger(__name__)

# Symbols named per log line about unmeasurable holdings (the rest are counted).
LOG_SYMBOLS = 20


_FLIP = ": flip cut to zero (the exit goes through)"


@dataclass(frozen=True)
class CorrelationLimitConfig:
    max_correlation: float = 0.7
    # Daily returns the correlation is measured over (60 = about three months).
    window: int = 60
    # Common returns a pair needs for its correlation to count as measured.
    min_overlap: int = 40
    # Compare |corr| instead of the correlation of the positions (refuses hedges too).
    absolute: bool = False

    def __post_init__(self) -> None:
        if not (
            isinstance(self.max_correlation, int | float)
            and math.isfinite(self.max_correlation)
            and -1 <= self.max_correlation < 1
        ):
            raise ValueError(f"max_correlation must be in [-1, 1), got {self.max_correlation!r}")
        for name in ("window", "min_overlap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 3:
                raise ValueError(f"{name} must be an integer >= 3, got {v!r}")
        if self.min_overlap > self.window:
            raise ValueError(
                f"min_overlap ({self.min_overlap}) must not exceed window ({self.window})"
            )


# A series counts as flat (zero variance) over a set of days when its centred sum of squares
# is at most this fraction of its raw sum of squares there: a constant return up to rounding.
FLAT = 1e-12


def pairwise_correlation(
    returns: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of each `rows` column with each `cols` column of `returns`
    (T, N), over the days both have a value: (corr, common days), each (len(rows),
    len(cols)). A flat series gives 0; no common days gives NaN.

    Pairs of complete columns (the usual case) take one matrix product of standardised
    returns; pairs with a missing value take the pairwise-complete sums."""
    x, y = returns[:, rows], returns[:, cols]
    fx, fy = ~np.isnan(x).any(axis=0), ~np.isnan(y).any(axis=0)
    corr = np.empty((rows.size, cols.size))
    common = np.empty((rows.size, cols.size), dtype=np.int64)
    if fx.all() and fy.all():  # the usual case: no fancy-indexed copy of the matrix
        np.matmul(_standardised(x).T, _standardised(y), out=corr)
        common.fill(x.shape[0])
    elif fx.any() and fy.any():
        block = np.ix_(fx, fy)
        corr[block] = _standardised(x[:, fx]).T @ _standardised(y[:, fy])
        common[block] = x.shape[0]
    if not fx.all():
        corr[~fx], common[~fx] = _pairwise(x[:, ~fx], y)
    if not fy.all() and fx.any():
        block = np.ix_(fx, ~fy)
        corr[block], common[block] = _pairwise(x[:, fx], y[:, ~fy])
    np.clip(corr, -1.0, 1.0, out=corr)
    return corr, common


def _standardised(x: np.ndarray) -> np.ndarray:
    """Complete columns centred and scaled to unit norm (0 for a flat column)."""
    c = x - x.mean(axis=0)
    ss = (c * c).sum(axis=0)
    flat = ss <= FLAT * (x * x).sum(axis=0)
    return np.where(flat, 0.0, c / np.sqrt(np.where(flat, 1.0, ss)))


def _pairwise(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx, my = ~np.isnan(x), ~np.isnan(y)
    fx, fy = mx.astype(np.float64), my.astype(np.float64)
    x, y = np.where(mx, x, 0.0), np.where(my, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = fx.T @ fy
        rxx = (x * x).T @ fy  # raw sums of squares over the common days
        ryy = fx.T @ (y * y)
        # Centre each series on its own mean first: the sums below then cancel less.
        x = np.where(mx, x - x.sum(axis=0) / np.maximum(fx.sum(axis=0), 1.0), 0.0)
        y = np.where(my, y - y.sum(axis=0) / np.maximum(fy.sum(axis=0), 1.0), 0.0)
        sx = x.T @ fy  # sum of x over the days y has a value too
        sy = fx.T @ y
        cov = x.T @ y - sx * sy / n
        vx = (x * x).T @ fy - sx * sx / n
        vy = fx.T @ (y * y) - sy * sy / n
        flat = (vx <= FLAT * rxx) | (vy <= FLAT * ryy)
        corr = np.where(flat, 0.0, cov / np.sqrt(np.maximum(vx, 0.0) * np.maximum(vy, 0.0)))
    corr[n == 0] = np.nan
    return corr, n.astype(np.int64)


class CorrelationLimit:
    """Refuses entries that correlate above the limit with an existing position or with a
    larger entry accepted at the same bar (see the module doc)."""

    kind: ClassVar[str] = "risk"
    Config = CorrelationLimitConfig

    def __init__(self, config: CorrelationLimitConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.symbols = symbols
        self.name = "correlation_limit"
        self._unmeasured: set[int] = set()  # held symbols left out of the check

    def required_features(self) -> tuple[str, ...]:
        return ()

    def history_bars(self) -> int:
        return self.config.window + 1

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        c = self.config
        limit = c.max_correlation
        t = nan_to_zero(targets)
        quantity = nan_to_zero(ctx.portfolio.quantity)
        held = quantity != 0
        tradable = np.asarray(ctx.tradable, dtype=bool)
        # A flip's new side is a new position (when it can trade at this bar; if it cannot,
        # the held side stays and is an existing position).
        flip = held & (t * quantity < 0)
        new_side = (t != 0) & (~held | (flip & tradable))
        entries = np.flatnonzero(new_side)
        staying = held & ~new_side & ((t != 0) | ~tradable)
        if not entries.size:
            return RiskDecision(targets)
        existing = np.flatnonzero(staying)
        # Returns of the symbols checked only (a dozen of hundreds), columns in universe
        # order; `at` maps a symbol to its column.
        needed = np.union1d(existing, entries)
        r = daily_returns(ctx.history, c.window, needed)
        n_valid = np.zeros(t.size, dtype=np.int64)
        n_valid[needed] = (~np.isnan(r)).sum(axis=0)
        thin = n_valid[existing] < c.min_overlap
        existing, unmeasured = existing[~thin], existing[thin]
        self._note_unmeasured(set(unmeasured.tolist()), set(existing.tolist()), n_valid)
        sign = np.where((t != 0) & (tradable | ~held), np.sign(t), np.sign(quantity))

        reasons: dict[int, str] = {}
        short = n_valid[entries] < c.min_overlap
        for i in entries[short].tolist():
            reasons[i] = (
                f"{int(n_valid[i])} daily returns in the window, {c.min_overlap} needed to "
                "measure its correlation"
            )
        cand = entries[~short]
        # Larger targets first, universe order among equals.
        cand = cand[np.lexsort((cand, -np.abs(t[cand])))]
        if cand.size:
            others = np.concatenate([existing, cand])
            at = np.searchsorted(needed, np.concatenate([cand, others]))
            corr, common = pairwise_correlation(r, at[: cand.size], at[cand.size :])
            eff = np.abs(corr) if c.absolute else corr * np.outer(sign[cand], sign[others])
            unknown = common < c.min_overlap  # counts as too high
            over = unknown | (eff > limit)
            m = existing.size
            vs_held = over[:, :m].any(axis=1)
            vs_entry = over[:, m:]
            # Greedy in priority order: an entry is accepted unless it collides with an
            # entry accepted before it. One that collides with no earlier entry at all is
            # accepted whatever the others do, so only the rest are walked one by one (with
            # hundreds of candidates a bar, the walk over every one cost more than the
            # correlations; the result is the same).
            earlier = np.tril(vs_entry, -1).any(axis=1)
            accepted = np.logical_and(~vs_held, ~earlier)
            by_entry = np.zeros(cand.size, dtype=bool)
            for j in np.flatnonzero(~vs_held & earlier).tolist():  # in priority order
                if (vs_entry[j, :j] & accepted[:j]).any():
                    by_entry[j] = True
                else:
                    accepted[j] = True
            rows = np.flatnonzero(vs_held | by_entry)
            # Which collision a reason names: an unmeasurable pair first, else the highest
            # (computed for the refused rows only).
            bad = np.where(unknown[rows], np.inf, np.nan_to_num(eff[rows], nan=np.inf))
            counted = over[rows]
            counted[:, m:] &= accepted
            pick = np.where(counted, bad, -np.inf).argmax(axis=1)
            for j, k in zip(rows.tolist(), pick.tolist(), strict=True):
                what = "held position" if k < m else "entry accepted at this bar"
                reasons[int(cand[j])] = self._why(
                    int(others[k]), what, float(eff[j, k]), int(common[j, k])
                )
        if not reasons:
            return RiskDecision(targets)
        out = t.copy()
        rejected = sorted(reasons)
        out[rejected] = 0.0
        flipped = set(np.flatnonzero(flip).tolist())
        verdicts = tuple(
            RiskVerdict(self.name, self.symbols[i], "clip", reasons[i] + _FLIP, float(t[i]), 0.0)
            if i in flipped
            else RiskVerdict(self.name, self.symbols[i], "reject", reasons[i], float(t[i]), 0.0)
            for i in rejected
        )
        return RiskDecision(out, verdicts)

    def _why(self, other: int, what: str, eff: float, common: int) -> str:
        c = self.config
        sym = self.symbols[other]
        if common < c.min_overlap:
            return (
                f"correlation with {what} {sym} unknown: {common} common daily returns, "
                f"{c.min_overlap} needed"
            )
        kind = "|correlation|" if c.absolute else "correlation"
        return (
            f"{kind} {eff:.3f} with {what} {sym} above limit {c.max_correlation:.3f} "
            f"over {common} daily returns"
        )

    def _note_unmeasured(self, now: set[int], measured: set[int], n_valid: np.ndarray) -> None:
        if now == self._unmeasured:
            return
        started = sorted(now - self._unmeasured)
        ended = sorted(self._unmeasured & measured)  # still held, measurable again
        if started:
            log.warning(
                "risk.correlation_unmeasured",
                plugin=self.name,
                count=len(started),
                returns={self.symbols[i]: int(n_valid[i]) for i in started[:LOG_SYMBOLS]},
                needed=self.config.min_overlap,
                effect="held positions with too little data are left out of the check",
            )
        if ended:
            log.info(
                "risk.correlation_measured_again",
                plugin=self.name,
                symbols=[self.symbols[i] for i in ended[:LOG_SYMBOLS]],
                count=len(ended),
            )
        self._unmeasured = now
