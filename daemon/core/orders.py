"""Order builders shared by the engine and every broker.

Ids come from `client_order_id`, so rebuilding the same decision after a restart yields the
same ids and a broker recognises the resubmission as a duplicate instead of doubling it.
Signed quantities are what the engine computes (target minus current position); brokers
want a positive quantity and a side, so the conversion lives here, once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from math import isfinite

from .types import Leg, Order, OrderStatus, OrderType, Side, client_order_id

# Suffix of the leg part of a re-placed exit's id ("tp.r"): the bracket legs decided at the
# same bar time keep the plain "tp"/"sl", so the two can never collide.
RESIZED_SUFFIX = ".r"
# Suffix of the exits placed for shares already held ("sl.p", "tp.p"; see `protective_exits`),
# distinct from a bracket's legs and from re-placed exits decided at the same bar time.
PROTECT_SUFFIX = ".p"

_MARKET = OrderType.MARKET
_BUY = Side.BUY
_SELL = Side.SELL


def _side_and_quantity(signed_qty: float) -> tuple[Side, float]:
    # Zero has no side: a caller asking for it has a bug upstream, better to fail loudly.
    if not isfinite(signed_qty) or signed_qty == 0:
        raise ValueError(f"signed_qty must be a finite non-zero number, got {signed_qty!r}")
    return (_BUY if signed_qty > 0 else _SELL), abs(float(signed_qty))


def _positive_price(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive price, got {value!r}")
    return float(value)


def market_order(
    run_id: str, bar_time: datetime, symbol: str, signed_qty: float, leg: Leg = Leg.ENTRY
) -> Order:
    """A market order for `signed_qty` shares (positive buys, negative sells)."""
    side, qty = _side_and_quantity(signed_qty)
    # Positional: the planner builds one per traded symbol per bar, and keyword arguments
    # cost this 19-field dataclass's __init__ about three times as much. The order is
    # client_order_id, symbol, side, quantity, created_at, type, limit_price, stop_price,
    # trail_pct, leg (tests/unit/test_order_fast_paths.py checks it against keywords).
    return Order(
        client_order_id(run_id, bar_time, symbol, leg),
        symbol,
        side,
        qty,
        bar_time,
        _MARKET,
        None,
        None,
        None,
        leg,
    )


def bracket_orders(
    run_id: str,
    bar_time: datetime,
    symbol: str,
    signed_qty: float,
    take_profit_price: float,
    stop_loss_price: float,
) -> list[Order]:
    """A market entry plus its take-profit limit and stop-loss stop, in that order.

    The exits are HELD children of the entry in one OCO group (named by the entry id): they
    protect exactly the shares the entry buys (or shorts), so they must not work before the
    entry fills and must not both execute. Prices on the wrong side of each other are a
    caller bug (a long's take-profit below its stop would exit at once), hence ValueError.
    """
    side, qty = _side_and_quantity(signed_qty)
    tp = _positive_price("take_profit_price", take_profit_price)
    sl = _positive_price("stop_loss_price", stop_loss_price)
    if side is Side.BUY and not tp > sl:
        raise ValueError(f"a long bracket needs take_profit_price > stop_loss_price ({tp} <= {sl})")
    if side is Side.SELL and not tp < sl:
        raise ValueError(
            f"a short bracket needs take_profit_price < stop_loss_price ({tp} >= {sl})"
        )
    entry = market_order(run_id, bar_time, symbol, signed_qty, Leg.ENTRY)
    exit_side = Side.SELL if side is Side.BUY else Side.BUY
    take_profit = Order(
        client_order_id=client_order_id(run_id, bar_time, symbol, Leg.TAKE_PROFIT),
        symbol=symbol,
        side=exit_side,
        quantity=qty,
        created_at=bar_time,
        type=OrderType.LIMIT,
        limit_price=tp,
        leg=Leg.TAKE_PROFIT,
        parent_id=entry.client_order_id,
        oco_group=entry.client_order_id,
        status=OrderStatus.HELD,
    )
    stop_loss = Order(
        client_order_id=client_order_id(run_id, bar_time, symbol, Leg.STOP_LOSS),
        symbol=symbol,
        side=exit_side,
        quantity=qty,
        created_at=bar_time,
        type=OrderType.STOP,
        stop_price=sl,
        leg=Leg.STOP_LOSS,
        parent_id=entry.client_order_id,
        oco_group=entry.client_order_id,
        status=OrderStatus.HELD,
    )
    return [entry, take_profit, stop_loss]


def resized_exits(
    run_id: str, bar_time: datetime, exits: Sequence[Order], quantity: float
) -> list[Order]:
    """Replacements for the working exits of one protected lot (the members of one OCO
    group, or one stand-alone exit), for `quantity` shares instead of theirs.

    Everything that defines the protection is kept: side, type, limit, stop and trailing
    distance, leg. A bracket's stop does not move because part of the position was sold.
    What changes: the quantity; the parent (gone: the replacements protect shares already
    held, so they work at once, stand-alone, like an Alpaca `oco` order); the ids, which
    come from `bar_time` (the bar that decided the change), so they are new and distinct
    from the originals yet the same when the decision is rebuilt after a restart; and the
    OCO group, named after the first replacement, as a bracket's is after its entry.
    """
    if not exits:
        raise ValueError("resized_exits needs at least one exit to replace")
    if not (math.isfinite(quantity) and quantity > 0):
        raise ValueError(f"quantity must be a finite positive number, got {quantity!r}")
    symbol = exits[0].symbol
    out: list[Order] = []
    used: dict[str, int] = {}
    for o in exits:
        if o.symbol != symbol:
            raise ValueError(f"exits of one lot must share a symbol: {o.symbol!r} != {symbol!r}")
        tag = f"{o.leg}{RESIZED_SUFFIX}"
        used[tag] = used.get(tag, 0) + 1
        if used[tag] > 1:  # two members with the same role (say two stand-alone exits)
            tag = f"{tag}{used[tag]}"
        out.append(
            Order(
                client_order_id=client_order_id(run_id, bar_time, symbol, tag),
                symbol=symbol,
                side=o.side,
                quantity=float(quantity),
                created_at=bar_time,
                type=o.type,
                limit_price=o.limit_price,
                stop_price=o.stop_price,
                trail_pct=o.trail_pct,
                leg=o.leg,
            )
        )
    if len(out) > 1:
        group = out[0].client_order_id
        for o in out:
            o.oco_group = group
    return out


def protective_exits(
    run_id: str,
    bar_time: datetime,
    symbol: str,
    held_qty: float,
    *,
    trail_pct: float | None = None,
    stop_price: float | None = None,
    take_profit_price: float | None = None,
) -> list[Order]:
    """Stand-alone exits for `held_qty` shares already held (signed: positive protects a
    long, so the exits sell): a trailing stop `trail_pct` from the best price since it
    became active, or a stop at `stop_price` (exactly one of the two), and, with
    `take_profit_price`, a take-profit limit, in one OCO group named after the first (the
    limit, as Alpaca names an `oco` order after it).

    They have no parent (their shares are bought already) and work at once. This is how a
    position is protected when its stop cannot be a bracket leg: Alpaca takes no trailing
    stop as a leg, so the entry goes alone and these follow once it has filled. A fixed stop
    protects shares whose bracket legs are gone (expired or cancelled at the broker). Ids come
    from `bar_time` with the `PROTECT_SUFFIX`, so a rebuilt decision maps to the same ids."""
    side, qty = _side_and_quantity(held_qty)
    if (trail_pct is None) == (stop_price is None):
        raise ValueError("protective_exits needs exactly one of trail_pct and stop_price")
    if trail_pct is not None and not (math.isfinite(trail_pct) and 0 < trail_pct < 1):
        raise ValueError(f"trail_pct must be in (0, 1), got {trail_pct!r}")
    if stop_price is not None:
        stop_price = _positive_price("stop_price", stop_price)
    exit_side = Side.SELL if side is Side.BUY else Side.BUY
    out: list[Order] = []
    if take_profit_price is not None:
        tp = _positive_price("take_profit_price", take_profit_price)
        out.append(
            Order(
                client_order_id=client_order_id(
                    run_id, bar_time, symbol, f"{Leg.TAKE_PROFIT}{PROTECT_SUFFIX}"
                ),
                symbol=symbol,
                side=exit_side,
                quantity=qty,
                created_at=bar_time,
                type=OrderType.LIMIT,
                limit_price=tp,
                leg=Leg.TAKE_PROFIT,
            )
        )
    out.append(
        Order(
            client_order_id=client_order_id(
                run_id, bar_time, symbol, f"{Leg.STOP_LOSS}{PROTECT_SUFFIX}"
            ),
            symbol=symbol,
            side=exit_side,
            quantity=qty,
            created_at=bar_time,
            type=OrderType.TRAILING_STOP if trail_pct is not None else OrderType.STOP,
            trail_pct=float(trail_pct) if trail_pct is not None else None,
            stop_price=stop_price,
            leg=Leg.STOP_LOSS,
        )
    )
    if len(out) > 1:
        for o in out:
            o.oco_group = out[0].client_order_id
    return out
