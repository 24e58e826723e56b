"""A working entry counts in the risk chain's book, and one the chain drops is withdrawn.

The planner waits for a symbol's working entry (it never stacks another order on it), and a
sizing plugin holds a symbol without a bar at its current weight. Together these let an
entry waiting for its symbol's next bar (placed on the last bar the symbol had, a halted
stock, a day's gap in the data) weigh nothing in the risk chain: `max_open_positions`, the
sector, correlation and VaR limits gave its slot to another entry, and both filled, one
position over the limit. So the chain judges such a symbol at the weight it will have once
its entry fills (`with_working_entries`), and an entry the chain then drops, or that the
strategy no longer wants in a symbol with a bar, is cancelled before anything of it fills
(`withdrawn_entries`) instead of being left to fill and sold a bar later.

An entry with shares filled is left alone (its bracket legs protect what it bought; the
next bar's plan trades the position like any other), as is one in a symbol whose book is
being reconciled or that splits at the next session (no trade there: `Engine._hold_unreconciled`).
Another run's entry on a shared live account is not this run's to count or cancel (`own`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence, Set

import numpy as np

from ..core.ports import BarContext
from ..core.types import Leg, Order

_EPS = 1e-9


def with_working_entries(
    targets: np.ndarray,
    ctx: BarContext,
    working: Sequence[Order],
    index: dict[str, int],
    own: Callable[[str], bool],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The targets the risk chain judges: a symbol without a bar that has a working entry of
    this run is held at its current weight plus what the entry has still to buy or sell,
    valued at the symbol's last price. Also that weight for every symbol (the weight such a
    symbol is held at wherever the engine holds it), or None when no entry is pending in a
    symbol without a bar (the usual bar: the targets are returned as they were)."""
    if not working:
        return targets, None
    equity = ctx.portfolio.equity
    if not (equity > 0 and math.isfinite(equity)):
        return targets, None
    tradable, mark = ctx.tradable, ctx.mark
    pending: dict[int, float] = {}
    for o in working:
        if o.leg is not Leg.ENTRY:
            continue
        i = index.get(o.symbol)
        if i is None or tradable[i] or not own(o.client_order_id):
            continue
        price = float(mark[i])
        rest = o.remaining
        if not (price > 0 and math.isfinite(price) and rest > _EPS):
            continue
        pending[i] = pending.get(i, 0.0) + o.side.sign * rest * price / equity
    if not pending:
        return targets, None
    hold = np.array(ctx.portfolio.weights, dtype=float)
    out = np.array(targets, dtype=float)
    for i, w in pending.items():
        hold[i] += w
        out[i] = hold[i]
    return out, hold


def withdrawn_entries(
    targets: np.ndarray,
    ctx: BarContext,
    working: Sequence[Order],
    index: dict[str, int],
    own: Callable[[str], bool],
    frozen: Set[str] = frozenset(),
) -> list[Order]:
    """This run's working entries to cancel with the plan: nothing of them filled, in a
    symbol held flat, whose target after the risk chain is 0 or on the entry's other side.
    `frozen`: symbols whose book is being reconciled or that split at the next session."""
    out: list[Order] = []
    held = ctx.portfolio.quantity
    for o in working:
        if o.leg is not Leg.ENTRY or o.filled_quantity > _EPS or o.symbol in frozen:
            continue
        i = index.get(o.symbol)
        if i is None or held[i] != 0 or not own(o.client_order_id):
            continue
        if float(targets[i]) * o.side.sign <= 0:
            out.append(o)
    return out
