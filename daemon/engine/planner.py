"""From target weights to orders.

Targets are fractions of equity; orders are whole shares (unless fractional trading is on)
priced off the decision bar's close and filled by the broker at the next bar. A band around the
current weight suppresses orders that would only chase price drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import OrdersConfig
from ..core.orders import bracket_orders, market_order
from ..core.ports import BarContext
from ..core.types import Leg, Order


@dataclass(frozen=True)
class Plan:
    orders: list[Order]
    # Open protective legs to cancel because their position is being closed.
    cancel: list[str]


class OrderPlanner:
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
        legs_by_symbol: dict[int, list[str]] = {}
        for o in open_orders:
            i = self._index[o.symbol]
            if o.leg is Leg.ENTRY:
                busy[i] = True  # wait for the working order instead of stacking another
            else:
                legs_by_symbol.setdefault(i, []).append(o.client_order_id)

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

        orders: list[Order] = []
        cancel: list[str] = []
        for i in candidates.tolist():
            sym = self.symbols[i]
            d = float(delta[i])
            if closing[i]:
                d = -float(held[i])
                cancel.extend(legs_by_symbol.get(i, ()))
            opening = held[i] == 0 and d != 0
            if cfg.brackets and opening:
                p = float(price[i])
                long = d > 0
                tp = p * (1 + cfg.take_profit_pct) if long else p * (1 - cfg.take_profit_pct)
                sl = p * (1 - cfg.stop_loss_pct) if long else p * (1 + cfg.stop_loss_pct)
                orders.extend(bracket_orders(self.run_id, ctx.time, sym, d, _tick(tp), _tick(sl)))
            else:
                orders.append(market_order(self.run_id, ctx.time, sym, d, Leg.ENTRY))
        return Plan(orders, cancel)


def _tick(price: float) -> float:
    """US equities above $1 trade in whole cents; sub-penny prices are rejected by brokers."""
    return round(price, 2) if price >= 1 else round(price, 4) if math.isfinite(price) else price
