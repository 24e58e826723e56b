"""From target weights to orders.

Targets are fractions of equity; orders are whole shares (unless fractional trading is on)
priced off the decision bar's close and filled by the broker at the next bar. A band around the
current weight suppresses orders that would only chase price drift.

Protective exits (bracket legs, and the stand-alone exits that replace them) promise the
shares they protect to the broker, so no other order can sell those shares: neither the
simulated broker nor Alpaca accepts a sale of shares that working exits hold. A cut of a
protected position therefore has to move its exits first; see `OrderPlanner`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import OrdersConfig
from ..core.orders import bracket_orders, market_order, resized_exits
from ..core.ports import BarContext
from ..core.types import Leg, Order, OrderStatus, Side

# Quantities are floats (fractional shares, split ratios): compare with a tolerance.
_EPS = 1e-9


@dataclass(frozen=True)
class Plan:
    orders: list[Order]
    # Open protective exits to cancel before `orders` are submitted: their position is
    # closed, cut below what they protect, or gone. A cut re-places the exits it still
    # needs, resized, among `orders`.
    cancel: list[str]


class OrderPlanner:
    """Turns target weights into the orders (and cancels) of one bar.

    With `orders.brackets`, a new position is opened by a bracket: a market entry with a
    take-profit and a stop-loss (one cancels the other) that protect exactly the shares the
    entry buys. A symbol's exits are grouped into lots, one per OCO group (a bracket, or the
    pair that replaced one), each protecting its quantity at its own prices. Then:

    * Increase: the added shares get a bracket of their own, priced from the current close
      like any entry (they are bought about there). The existing lots are left alone: they
      keep protecting their shares at their prices, and nothing is left unprotected while
      the new entry works (its legs are held until it fills, then cover what it filled).
      Resizing the old exits to the larger position instead would either promise shares
      not bought yet (refused by the broker) or leave the old shares bare until the fill.
    * Cut: the exits must release the shares being sold. Shares with no exits are sold
      first (nothing to move). Beyond those, lots are taken newest first, undoing the most
      recent additions and keeping the original bracket longest; a lot taken entirely is
      cancelled, the one taken in part is cancelled and re-placed for what stays, as a
      stand-alone OCO take-profit + stop-loss at the lot's original prices (never re-based
      at the current price: a cut must not move the stop). The engine cancels before it
      submits, and cancelling frees the shares at once, so the sale is accepted in the same
      bar. Cancel and re-place rather than amend in place, because Alpaca's order replace
      cannot change the legs of a bracket, while cancelling the legs and submitting a sale
      plus an `oco` exit order is what it does accept; the replacements get new ids, built
      from the deciding bar's time (see `resized_exits`), so a rebuilt decision after a
      restart maps to the same orders.
    * Full exit (target 0, or under one share): every exit is cancelled and the whole
      position sold.
    * Flip (long to short or back) with brackets: the position is closed first; the new
      side opens on a later bar with its own bracket, as Alpaca will not take one order
      that both closes and reverses a position.

    Exits are also tidied when the symbol is not traded: exits left without a position, or
    on the wrong side of it, are cancelled; exits promising more than the position are cut
    back the same way. A symbol with a working entry is left alone: its legs are held, and
    its fills are not known yet.
    """

    def __init__(self, config: OrdersConfig, run_id: str, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.run_id = run_id
        self.symbols = symbols
        self._index = {s: i for i, s in enumerate(symbols)}

    def plan(self, targets: np.ndarray, ctx: BarContext, open_orders: Sequence[Order]) -> Plan:
        cfg = self.config
        equity = ctx.portfolio.equity
        if not equity > 0:
            return Plan([], [])
        busy = np.zeros(len(self.symbols), dtype=bool)
        exits_by_symbol: dict[int, list[Order]] = {}
        for o in open_orders:
            i = self._index[o.symbol]
            if o.leg is Leg.ENTRY:
                busy[i] = True  # wait for the working order instead of stacking another
            else:
                exits_by_symbol.setdefault(i, []).append(o)

        price = ctx.bar.close
        held = ctx.portfolio.quantity
        with np.errstate(invalid="ignore", divide="ignore"):
            raw_qty = targets * equity / price
            target_qty = raw_qty if cfg.fractional else np.trunc(raw_qty)
            delta = target_qty - held
            current_w = held * price / equity
            closing = (targets == 0) & (held != 0)
            wanted = (
                (np.abs(targets - current_w) > cfg.rebalance_band)
                & (np.abs(delta * price) >= cfg.min_trade_value)
            ) | closing
        candidates = np.flatnonzero(wanted & ctx.tradable & ~busy & (delta != 0))
        trade = {i: float(-held[i] if closing[i] else delta[i]) for i in candidates.tolist()}

        orders: list[Order] = []
        cancel: list[str] = []
        for i in sorted(trade.keys() | exits_by_symbol.keys()):
            if busy[i]:
                continue
            sym = self.symbols[i]
            h = float(held[i])
            d = trade.get(i, 0.0)
            if cfg.brackets and h != 0 and (h + d) * h < 0:
                d = -h  # a flip: close now, open the other side later with its own bracket
            exits = exits_by_symbol.get(i, [])
            if exits:
                kept = self._keep(h, d)
                replaced, cancelled = self._fit_exits(exits, h, kept, ctx)
                orders.extend(replaced)
                cancel.extend(cancelled)
            if d == 0:
                continue
            if cfg.brackets and abs(h + d) > abs(h):
                p = float(price[i])
                long = d > 0
                tp = p * (1 + cfg.take_profit_pct) if long else p * (1 - cfg.take_profit_pct)
                sl = p * (1 - cfg.stop_loss_pct) if long else p * (1 + cfg.stop_loss_pct)
                orders.extend(bracket_orders(self.run_id, ctx.time, sym, d, _tick(tp), _tick(sl)))
            else:
                orders.append(market_order(self.run_id, ctx.time, sym, d, Leg.ENTRY))
        return Plan(orders, cancel)

    @staticmethod
    def _keep(h: float, d: float) -> float:
        """Shares of the current position `h` that remain after trading `d`."""
        new = h + d
        if h == 0 or new * h <= 0:
            return 0.0
        return min(abs(new), abs(h))

    def _fit_exits(
        self, exits: list[Order], h: float, kept: float, ctx: BarContext
    ) -> tuple[list[Order], list[str]]:
        """Cancels and replacements so the exits protect at most `kept` shares (newest lots
        give way first); exits that cannot belong to the position are cancelled."""
        exit_side = Side.SELL if h > 0 else Side.BUY if h < 0 else None
        cancel = [
            o.client_order_id
            for o in exits
            if o.status is not OrderStatus.HELD and (o.side is not exit_side or kept <= 0)
        ]
        if kept <= 0:
            return [], cancel
        lots: dict[str, list[Order]] = {}
        for o in exits:
            if o.side is exit_side and o.status is not OrderStatus.HELD:
                lots.setdefault(o.oco_group or o.client_order_id, []).append(o)
        # Oldest first (stable: submission order breaks ties); each sells its largest member.
        ordered = sorted(lots.values(), key=lambda members: min(m.created_at for m in members))
        sizes = [max(m.remaining for m in members) for members in ordered]
        excess = sum(sizes) - kept
        replacements: list[Order] = []
        for members, size in zip(reversed(ordered), reversed(sizes), strict=True):
            if excess <= _EPS * max(1.0, kept):
                break
            cancel.extend(m.client_order_id for m in members)
            rest = size - excess
            if rest > _EPS * max(1.0, size):  # only the oldest lot touched can be left in part
                replacements = resized_exits(self.run_id, ctx.time, members, rest)
            excess -= size
        return replacements, cancel


def _tick(price: float) -> float:
    """US equities above $1 trade in whole cents; sub-penny prices are rejected by brokers."""
    return round(price, 2) if price >= 1 else round(price, 4) if math.isfinite(price) else price
