"""A working entry counts in the risk chain's book, and one the chain cuts is withdrawn.

The planner waits for a symbol's working entry (it never stacks another order on it), and a
sizing plugin holds a symbol without a bar at its current weight. Together these let an
entry waiting for its symbol's next bar (placed on the last bar the symbol had, a halted
stock, a day's gap in the data) weigh nothing in the risk chain: `max_open_positions`, the
sector, correlation and VaR limits gave its slot to another entry, and both filled, one
position over the limit. So the chain sees such an entry as held, at the shares and weight
it will have once it fills (`with_working_entries`): every limit keeps it before a new
entry, as it keeps a position. And an entry the chain then cuts (below what it will buy by
more than `planner.HARD_CUT_TOLERANCE`), or that the strategy no longer wants, is cancelled
before anything of it fills (`withdrawn_entries`) instead of being left to fill in full and
be sold back a bar later. The symbol stays busy for the planner on that bar: a live
cancel may come back unconfirmed (the entry may still fill), so what the target asks for
is placed at the next bar, from the broker's state then.

A sale of a held position is not counted as done (the position stays in the book until it
fills). An entry with shares filled is left alone (its bracket legs protect what it bought;
the next bar's plan trades the position like any other), as is one in a symbol whose book is
being reconciled or that splits at the next session (no trade there:
`Engine._hold_unreconciled`). Another run's entry on a shared live account is not this
run's to count or cancel (`own`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence, Set

import numpy as np

from ..core.arrays import read_only_copy
from ..core.ports import BarContext
from ..core.types import Leg, Order
from .planner import HARD_CUT_TOLERANCE

_EPS = 1e-9


def with_working_entries(
    targets: np.ndarray,
    ctx: BarContext,
    working: Sequence[Order],
    index: dict[str, int],
    own: Callable[[str], bool],
) -> tuple[np.ndarray, BarContext | None]:
    """The targets and the context the risk chain judges: in a symbol without a bar that
    has a working entry of this run, the book holds what the entry has still to buy or sell
    (shares, and their weight at the symbol's last price), and the target is that weight.
    The context is None when no entry waits in a symbol without a bar (the usual bar: the
    targets are returned as they were, the bar's context serves)."""
    if not working:
        return targets, None
    pf = ctx.portfolio
    equity = pf.equity
    if not (equity > 0 and math.isfinite(equity)):
        return targets, None
    tradable, mark = ctx.tradable, ctx.mark
    held = pf.quantity
    pending: dict[int, float] = {}
    for o in working:
        if o.leg is not Leg.ENTRY:
            continue
        i = index.get(o.symbol)
        if i is None or tradable[i] or not own(o.client_order_id):
            continue
        if o.side.sign * float(held[i]) < 0:
            # A sale of a long (a cover of a short): the position stays held until it fills.
            # Counted as done, it gave the position's room away, and a closing sale that
            # expired before the symbol's next bar left the book one position over.
            continue
        price = float(mark[i])
        rest = o.remaining
        if not (price > 0 and math.isfinite(price) and rest > _EPS):
            continue
        pending[i] = pending.get(i, 0.0) + o.side.sign * rest
    if not pending:
        return targets, None
    quantity = np.array(pf.quantity, dtype=float)
    hold = np.array(pf.weights, dtype=float)
    out = np.array(targets, dtype=float)
    for i, shares in pending.items():
        quantity[i] += shares
        hold[i] += shares * float(mark[i]) / equity
        out[i] = hold[i]
    # Read-only for good, as the portfolio view's own (`core.arrays.read_only_copy`).
    book = dataclasses.replace(pf, quantity=read_only_copy(quantity), weights=read_only_copy(hold))
    return out, dataclasses.replace(ctx, portfolio=book)


def withdrawn_entries(
    targets: np.ndarray,
    sized: np.ndarray,
    ctx: BarContext,
    working: Sequence[Order],
    index: dict[str, int],
    own: Callable[[str], bool],
    frozen: Set[str] = frozenset(),
) -> list[Order]:
    """This run's working entries to cancel with the plan: nothing of them filled, in a
    symbol held flat, whose target after the risk chain (`targets`) is 0 or on the entry's
    other side, or, in a symbol without a bar, cut by the chain (below `sized`, its input)
    to less than the entry buys by more than `HARD_CUT_TOLERANCE` of it. Not the last in a
    symbol with a bar: there the entry's weight at the current price drifts from the
    sizing's target as the price moves, and an entry waiting on bars without volume was
    cancelled and placed again every few bars. `frozen`: symbols whose book is being
    reconciled or that split at the next session."""
    out: list[Order] = []
    held = ctx.portfolio.quantity
    equity = ctx.portfolio.equity
    tradable = ctx.tradable
    for o in working:
        if o.leg is not Leg.ENTRY or o.filled_quantity > _EPS or o.symbol in frozen:
            continue
        i = index.get(o.symbol)
        if i is None or held[i] != 0 or not own(o.client_order_id):
            continue
        t = float(targets[i])
        if t * o.side.sign <= 0:
            out.append(o)
            continue
        if tradable[i]:
            continue
        buys = o.remaining * float(ctx.mark[i]) / equity if equity > 0 else math.nan
        if abs(t) < abs(float(sized[i])) and abs(t) < buys * (1.0 - HARD_CUT_TOLERANCE):
            out.append(o)
    return out
