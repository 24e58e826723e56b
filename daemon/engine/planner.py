"""From target weights to orders.

Targets are fractions of equity; orders are whole shares (unless fractional trading is on)
priced off the decision bar's close and filled by the broker at the next bar. A band around the
current weight suppresses orders that would only chase price drift.

Protective exits (bracket legs, and the stand-alone exits that replace them) promise the
shares they protect to the broker, so no other order can sell those shares: neither the
simulated broker nor Alpaca accepts a sale of shares that working exits hold. A cut of a
protected position therefore has to move its exits first; see `OrderPlanner`.

Protective exits by mode (`[orders]`, with `brackets = true`). `entry` is the decision bar's
close (the price the entry is sized at), `d` the stop's distance from it:

* stop_mode "pct": d = entry x stop_loss_pct. "atr": d = atr_multiple x ATR(atr_period), the
  feature `atr_<period>` at the decision bar (the planner asks the engine for it:
  `required_features`). "trailing": a trailing stop stop_loss_pct from the best price seen.
* take_profit_mode "pct": a limit at entry x (1 +/- take_profit_pct). "reward_risk": a limit
  reward_risk x d beyond entry (for a trailing stop, d = entry x stop_loss_pct, where it
  starts). "trailing": there is no price target. The stop trails the best price since it
  was placed, at the stop's distance (stop_loss_pct; for "atr", atr_multiple x ATR over the
  close of the bar that places it), so it only ever moves in the position's favour: it
  limits the loss at first and locks the gain in as the price runs, and the position is
  closed when the price falls back that far from its best. "pct" and "atr" stops therefore
  become trailing stops under it, and with stop_mode "trailing" it is the same order.

Which orders that gives, the same with every broker (a replay places exactly the orders a
live run would, so what it shows is what the live account can hold):

* A held position is not added to (either mode): its exits work, and Alpaca refuses an order
  while an opposite one of the account works in the symbol ("potential wash trade
  detected"). It keeps its size until it is cut or closed; a new position gets its full
  target at entry.

* A fixed stop with a fixed take-profit (stop "pct" or "atr", take-profit "pct" or
  "reward_risk"): a bracket, market entry + take-profit limit + stop (one cancels the
  other), held until the entry fills and then protecting what it filled. Alpaca takes it as
  one `bracket` order; the simulated broker works the legs from the entry's bar.
* A trailing stop (stop "trailing", or take-profit "trailing"): Alpaca takes no trailing stop
  as a bracket leg (nor in an OTO or OCO order), so the entry goes alone, and once it has
  filled the next decision finds the held shares without exits and protects them with a
  stand-alone trailing stop (`protective_exits`), which then works between bars. With a
  fixed take-profit too (stop "trailing", take-profit "pct" or "reward_risk") the take-profit
  is a limit in one OCO group with the trailing stop, priced from the position's average
  entry price. The entry's own bar is not protected (the stop is placed at its close).
  Alpaca cannot hold that pair either (a trailing stop cannot be in its `oco`, and a
  stand-alone take-profit would hold the shares the stop needs): there the trailing stop is
  placed and the take-profit refused with that reason (see `alpaca_mapping`), so on Alpaca
  use take_profit_mode "trailing" with a trailing stop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np
import structlog

from ..config import OrdersConfig
from ..core.frozen import fast_init
from ..core.orders import bracket_orders, market_order, protective_exits, resized_exits
from ..core.ports import BarContext
from ..core.types import Leg, Order, OrderStatus, Side

log = structlog.get_logger(__name__)

# A hard risk cut (`RiskVerdict.hard`) is carried out within the rebalance band when the
# position weighs more than its cut target plus this fraction of it. 0 traded the drift of
# every cut position every bar while a limit kept binding (a drawdown guard scaling the book
# bar after bar under water: +20% fills, hundreds of sells of a few hundred dollars); 10%
# holds a hard limit to within a tenth of itself, as the band holds a cap to within a point,
# and trims a cut position again only after a 10% move. A constant, not a setting: a setting
# would be part of every run's identity.
HARD_CUT_TOLERANCE = 0.10
_HARD_OVER = 1.0 + HARD_CUT_TOLERANCE

# Quantities are floats (fractional shares, split ratios): compare with a tolerance.
_EPS = 1e-9


def required_features(config: OrdersConfig) -> tuple[str, ...]:
    """The features the planner reads from `ctx.features`: the ATR of an "atr" stop. The
    composition root computes them with the plugins' (`app.feature_names`) and the engine
    counts them in a symbol's readiness, so no position opens before its stop can be set."""
    if config.brackets and config.stop_mode == "atr":
        return (f"atr_{config.atr_period}",)
    return ()


@fast_init
@dataclass(frozen=True, slots=True)
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

    With a trailing stop (see the module docstring) an entry has no legs: once it has filled,
    the shares held without exits (the whole new position, or the shares an increase added)
    get stand-alone exits of their own (`protective_exits`), a lot like any other, so the
    rules above apply to them unchanged. A cut re-places a trailing stop like any exit; the
    re-placed stop trails from where it is placed (no broker takes a starting high).

    Prices that cannot make valid exits (no ATR for the symbol at the bar, a take-profit at
    or below 0) open nothing: a position is never opened without the exits configured for
    it; each such case is logged (`planner.entry_not_protected`).
    """

    def __init__(self, config: OrdersConfig, run_id: str, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.run_id = run_id
        self.symbols = symbols
        self._index = {s: i for i, s in enumerate(symbols)}
        atr = required_features(config)
        self._atr = atr[0] if atr else None
        # The stop is a trailing stop: entries go alone, held shares get stand-alone exits.
        self._trailing = config.brackets and "trailing" in (
            config.stop_mode,
            config.take_profit_mode,
        )

    def required_features(self) -> tuple[str, ...]:
        return required_features(self.config)

    def plan(
        self,
        targets: np.ndarray,
        ctx: BarContext,
        open_orders: Sequence[Order],
        unreconciled: AbstractSet[str] = frozenset(),
        hard: AbstractSet[int] = frozenset(),
    ) -> Plan:
        """`hard`: indices of the symbols a risk rule cut with a hard verdict this bar
        (`RiskVerdict.hard`): a position weighing more than its target plus
        `HARD_CUT_TOLERANCE` of it is cut to the target even within the rebalance band.
        `unreconciled`: symbols whose book differs from the broker's (reconciliation). No
        exit is placed in them, restored or re-placed: sized from the book, they sold shares
        the broker no longer held (refused every bar, or, with shorting allowed, a
        take-profit that opened a short). Their working exits are kept, not resized
        (cancelled to be re-placed, the position stayed without a stop until the block
        lifted; the broker refuses what it cannot fill); those that cannot belong to the
        book's position (the wrong side, a position closed) are still cancelled."""
        cfg = self.config
        equity = ctx.portfolio.equity
        if not equity > 0:
            return Plan([], [])
        busy: set[int] = set()  # a working entry: wait for it instead of stacking another
        exits_by_symbol: dict[int, list[Order]] = {}
        for o in open_orders:
            i = self._index[o.symbol]
            if o.leg is Leg.ENTRY:
                busy.add(i)
            else:
                exits_by_symbol.setdefault(i, []).append(o)

        held = ctx.portfolio.quantity
        trade = rebalance_trades(cfg, targets, ctx, busy, equity, hard)
        if not exits_by_symbol and not self._trailing and not (cfg.brackets and held.any()):
            if not trade:
                return Plan([], [])  # the usual bar: no target moved beyond the band, no exits
            if not cfg.brackets:
                # Plain rebalancing (no exits anywhere): the loop below would make exactly
                # these, a market order per traded symbol in universe order (`trade` has
                # no working entry and no zero delta: `rebalance_trades`).
                run_id, t, symbols = self.run_id, ctx.time, self.symbols
                return Plan(
                    [market_order(run_id, t, symbols[i], trade[i]) for i in sorted(trade)], []
                )

        orders: list[Order] = []
        cancel: list[str] = []
        protect: set[int] = set()
        if cfg.brackets:
            # Held shares without exits are protected: with a trailing stop, an entry filled
            # since the last bar; with fixed exits, shares whose bracket legs are gone (a GTC
            # order expired at the broker, a leg cancelled there, a re-placed exit not sent).
            protect = set(((held != 0) & ctx.tradable).nonzero()[0].tolist()) - busy
        frozen = {self._index[s] for s in unreconciled} if unreconciled else set()
        protect -= frozen
        for i in sorted(trade.keys() | exits_by_symbol.keys() | protect):
            if i in busy:
                continue
            sym = self.symbols[i]
            h = float(held[i])
            d = trade.get(i, 0.0)
            if cfg.brackets and h != 0 and (h + d) * h < 0:
                d = -h  # a flip: close now, open the other side later with its own bracket
            elif cfg.brackets and h != 0 and d * h > 0:
                # No top-up of a held position: its exits work at the broker (or are placed
                # now for bare shares), and Alpaca refuses an entry while an opposite order
                # of the account works in the symbol ("potential wash trade detected"). A
                # replay booked the top-ups Alpaca refused every bar; cancelling the exits
                # to add would leave the held shares bare until the entry fills, longer when
                # it fills in parts or the run is paused. The position keeps its size.
                d = 0.0
            exits = exits_by_symbol.get(i, [])
            kept = self._keep(h, d)
            covered = 0.0
            if exits:
                replaced, cancelled, covered = self._fit_exits(
                    exits, h, kept, ctx, resize=i not in frozen
                )
                orders.extend(replaced)
                cancel.extend(cancelled)
            if i in protect and kept - covered > _EPS * max(1.0, kept):
                orders.extend(self._protect(i, math.copysign(kept - covered, h), ctx))
            if d == 0:
                continue
            if cfg.brackets and abs(h + d) > abs(h) and not self._trailing:
                orders.extend(self._bracket(i, d, ctx))
            else:
                # With a trailing stop the entry goes alone: its shares get their exits on
                # the first bar after it has filled (see `_protect`).
                orders.append(market_order(self.run_id, ctx.time, sym, d, Leg.ENTRY))
        return Plan(orders, cancel)

    def _bracket(self, i: int, d: float, ctx: BarContext) -> list[Order]:
        """A bracket for `d` new shares of symbol `i`, priced from the decision bar's close
        (see the module docstring); [] (logged) when no valid exits can be priced."""
        cfg = self.config
        sym = self.symbols[i]
        p = float(ctx.bar.close[i])
        long = d > 0
        s = cfg.stop_loss_pct
        if self._atr is None:
            sl = p * (1 - s) if long else p * (1 + s)
            # reward_risk: the stop is s x entry away, the take-profit reward_risk times that.
            t = cfg.take_profit_pct if cfg.take_profit_mode == "pct" else cfg.reward_risk * s
            tp = p * (1 + t) if long else p * (1 - t)
        else:
            atr = self._feature(ctx, self._atr, i)
            if not atr > 0:
                return self._unprotected(sym, f"no {self._atr} for the symbol at this bar")
            dist = cfg.atr_multiple * atr
            sl = p - dist if long else p + dist
            if cfg.take_profit_mode == "pct":
                t = cfg.take_profit_pct
                tp = p * (1 + t) if long else p * (1 - t)
            else:
                tp = p + cfg.reward_risk * dist if long else p - cfg.reward_risk * dist
        tp, sl = round_price(tp), round_price(sl)
        if not (tp > 0 and sl > 0 and (tp > sl if long else tp < sl)):
            return self._unprotected(
                sym, f"exits priced at take-profit {tp:g} and stop {sl:g} from {p:g}"
            )
        return bracket_orders(self.run_id, ctx.time, sym, d, tp, sl)

    def _protect(self, i: int, held: float, ctx: BarContext) -> list[Order]:
        """Stand-alone exits for `held` shares of symbol `i` that have none (signed like the
        position): a trailing stop, and the take-profit when one is fixed, priced from the
        position's average entry price (the decision bar's close if the book has none)."""
        if not self._trailing:
            return self._protect_fixed(i, held, ctx)
        cfg = self.config
        sym = self.symbols[i]
        p = float(ctx.bar.close[i])
        if self._atr is None:
            trail = cfg.stop_loss_pct
        else:
            atr = self._feature(ctx, self._atr, i)
            # Alpaca takes the trailing distance in percent with two decimals.
            trail = round(cfg.atr_multiple * atr / p, 4) if atr > 0 and p > 0 else math.nan
            if not 0 < trail < 1:
                return self._unprotected(
                    sym, f"trailing distance {trail:g} from {self._atr} is not in (0, 1)", held
                )
        tp: float | None = None
        if cfg.take_profit_mode != "trailing":
            avg = ctx.portfolio.avg_price
            entry = float(avg[i]) if avg is not None else math.nan
            entry = entry if math.isfinite(entry) and entry > 0 else p
            # reward_risk: the trailing stop starts stop_loss_pct from entry.
            pct = cfg.take_profit_mode == "pct"
            t = cfg.take_profit_pct if pct else cfg.reward_risk * cfg.stop_loss_pct
            tp = round_price(entry * (1 + t) if held > 0 else entry * (1 - t))
            if not tp > 0:
                return self._unprotected(sym, f"take-profit at {tp:g} from {entry:g}", held)
        return protective_exits(
            self.run_id, ctx.time, sym, held, trail_pct=trail, take_profit_price=tp
        )

    def _protect_fixed(self, i: int, held: float, ctx: BarContext) -> list[Order]:
        """A fixed stop and take-profit (one OCO pair) for `held` shares whose exits are gone,
        at the prices a bracket bought at the position's average entry would have had (for
        "atr", the deciding bar's ATR: the entry's is not kept). Where the close has already
        crossed the stop (the shares were bare when it fell there), both are priced from the
        close instead, as a new entry's would be, and logged: a stop on the wrong side of
        the price is refused by a broker or executes at once, and neither is a decision
        the configuration made."""
        cfg = self.config
        sym = self.symbols[i]
        p = float(ctx.bar.close[i])
        avg = ctx.portfolio.avg_price
        entry = float(avg[i]) if avg is not None else math.nan
        entry = entry if math.isfinite(entry) and entry > 0 else p
        long = held > 0
        sign = 1.0 if long else -1.0
        if self._atr is None:
            s = cfg.stop_loss_pct

            def dist(base: float) -> float:
                return base * s

        else:
            atr = self._feature(ctx, self._atr, i)
            if not atr > 0:
                return self._unprotected(sym, f"no {self._atr} for the symbol at this bar", held)

            def dist(base: float) -> float:
                return cfg.atr_multiple * atr

        def prices(base: float) -> tuple[float, float]:
            d = dist(base)
            pct = cfg.take_profit_mode == "pct"
            t = base * cfg.take_profit_pct if pct else cfg.reward_risk * d
            return round_price(base + sign * t), round_price(base - sign * d)

        tp, sl = prices(entry)
        if not p > 0 or (sl >= p if long else sl <= p):
            crossed = sl
            tp, sl = prices(p)
            log.warning(
                "planner.exits_rebased",
                symbol=sym,
                held=held,
                entry=entry,
                close=p,
                stop_from_entry=crossed,
                stop=sl,
                take_profit=tp,
                reason="the shares had no exits and the close is beyond the entry's stop",
            )
        if not (tp > 0 and sl > 0 and (tp > sl if long else tp < sl)):
            return self._unprotected(
                sym, f"exits priced at take-profit {tp:g} and stop {sl:g} from {p:g}", held
            )
        log.warning("planner.exits_restored", symbol=sym, held=held, take_profit=tp, stop=sl)
        return protective_exits(
            self.run_id, ctx.time, sym, held, stop_price=sl, take_profit_price=tp
        )

    def _feature(self, ctx: BarContext, name: str, i: int) -> float:
        values = ctx.features.get(name)
        if values is None:
            raise ValueError(
                f"orders.stop_mode = {self.config.stop_mode!r} needs the feature {name!r}, "
                "which the engine did not compute: include OrderPlanner.required_features() "
                "in the engine's features"
            )
        v = float(values[i])
        return v if math.isfinite(v) else math.nan

    @staticmethod
    def _unprotected(symbol: str, reason: str, held: float | None = None) -> list[Order]:
        if held is None:
            log.warning(
                "planner.entry_not_protected",
                symbol=symbol,
                reason=reason,
                rule="no entry without its exits: the position is not opened",
            )
        else:
            log.warning(
                "planner.exits_not_placed",
                symbol=symbol,
                held=held,
                reason=reason,
                rule="tried again at the next bar",
            )
        return []

    @staticmethod
    def _keep(h: float, d: float) -> float:
        """Shares of the current position `h` that remain after trading `d`."""
        new = h + d
        if h == 0 or new * h <= 0:
            return 0.0
        return min(abs(new), abs(h))

    def _fit_exits(
        self, exits: list[Order], h: float, kept: float, ctx: BarContext, *, resize: bool = True
    ) -> tuple[list[Order], list[str], float]:
        """Cancels and replacements so the exits protect at most `kept` shares (newest lots
        give way first); exits that cannot belong to the position are cancelled. Also
        returns the shares the exits protect afterwards. Not `resize` (a symbol blocked by
        reconciliation): only those that cannot belong to it are cancelled, the rest kept
        as they are (nothing re-placed)."""
        exit_side = Side.SELL if h > 0 else Side.BUY if h < 0 else None
        cancel = [
            o.client_order_id
            for o in exits
            if o.status is not OrderStatus.HELD and (o.side is not exit_side or kept <= 0)
        ]
        if kept <= 0:
            return [], cancel, 0.0
        lots: dict[str, list[Order]] = {}
        for o in exits:
            if o.side is exit_side and o.status is not OrderStatus.HELD:
                lots.setdefault(o.oco_group or o.client_order_id, []).append(o)
        # Oldest first (stable: submission order breaks ties); each sells its largest member.
        ordered = sorted(lots.values(), key=lambda members: min(m.created_at for m in members))
        sizes = [max(m.remaining for m in members) for members in ordered]
        if not resize:
            return [], cancel, min(sum(sizes), kept)
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
        return replacements, cancel, min(sum(sizes), kept)


def rebalance_trades(
    cfg: OrdersConfig,
    targets: np.ndarray,
    ctx: BarContext,
    busy: AbstractSet[int],
    equity: float,
    hard: AbstractSet[int] = frozenset(),
) -> dict[int, float]:
    """Symbol index -> signed shares to trade toward its target: the rule of
    `rebalance_trades_full`, evaluated only where it can trade, with bit-identical results.

    A symbol with no target and no position never trades: its delta is 0 (or NaN without a
    price) and its weight is off by 0 (or NaN), so neither the band nor the closing rule
    holds. That leaves a dozen of hundreds of symbols on a typical bar, few enough that
    plain float arithmetic on them beats numpy (a microsecond or more per call, whatever
    the length). Python floats are IEEE doubles like float64 and each step is the same
    single operation, so the results are the same bits; other dtypes (float32 arithmetic
    differs) and values Python cannot take the same way (a price of 0, inf or NaN: division
    by zero, truncation of inf) go through numpy on the same subset."""
    held = ctx.portfolio.quantity
    # One ufunc: a float is true when nonzero (NaN included), as `!= 0` tests it.
    active = np.logical_or(targets, held).nonzero()[0]
    if not active.size:
        return {}
    price = ctx.bar.close
    index = active.tolist()
    free = ctx.tradable[active].tolist()
    if busy:
        free = [ok and i not in busy for i, ok in zip(index, free, strict=True)]
    if not (
        targets.dtype == held.dtype == price.dtype == np.float64
        and math.isfinite(equity)
        and equity != 0
    ):
        return _band_rule(
            cfg,
            active,
            targets[active],
            held[active],
            price[active],
            np.array(free),
            equity,
            _hard_mask(active, hard),
        )
    band, min_trade, fractional = cfg.rebalance_band, cfg.min_trade_value, cfg.fractional
    out: dict[int, float] = {}
    rows = zip(
        index,
        targets[active].tolist(),
        held[active].tolist(),
        price[active].tolist(),
        free,
        strict=True,
    )
    for i, t, h, p, ok in rows:
        if not ok:
            continue
        w = h * p / equity
        # Off by more than the band, or a hard cut to carry out (`RiskVerdict.hard`).
        off = abs(t - w) > band or (i in hard and abs(w) > abs(t) * _HARD_OVER)
        if t != 0 and not off:
            # Not closing and within the band (a NaN weight compares False, as in numpy):
            # no trade, whatever the rest of the rule gives. Most held symbols of a bar stop
            # here, before their share count is worked out.
            continue
        raw = t * equity / p if p != 0 else math.nan
        if not (math.isfinite(raw) and math.isfinite(h)):
            # No price, a price of 0 or inf, an overflow: numpy's answer, which plain
            # floats would not give (division by zero, truncation of inf raise).
            one = np.array([i])
            out.update(
                _band_rule(
                    cfg,
                    one,
                    targets[one],
                    held[one],
                    price[one],
                    [True],
                    equity,
                    _hard_mask(one, hard),
                )
            )
            continue
        delta = (raw if fractional else float(math.trunc(raw))) - h
        closing = t == 0 and h != 0
        if delta != 0 and (closing or (off and abs(delta * p) >= min_trade)):
            out[i] = -h if closing else delta
    return out


def rebalance_trades_full(
    cfg: OrdersConfig,
    targets: np.ndarray,
    ctx: BarContext,
    busy: AbstractSet[int],
    equity: float,
    hard: AbstractSet[int] = frozenset(),
) -> dict[int, float]:
    """The rule over every symbol (the definition `rebalance_trades` must equal): trade the
    whole-share difference to the target when the weight is off by more than the band (or,
    for a symbol in `hard`, weighs more than its target plus `HARD_CUT_TOLERANCE` of it in
    absolute weight) and the trade is worth at least `min_trade_value`, or close a position
    whose target is 0; only symbols with a bar and no working entry."""
    n = len(targets)
    working = np.zeros(n, dtype=bool)
    working[list(busy)] = True
    index = np.arange(n)
    return _band_rule(
        cfg,
        index,
        targets,
        ctx.portfolio.quantity,
        ctx.bar.close,
        ctx.tradable & ~working,
        equity,
        _hard_mask(index, hard),
    )


def _hard_mask(index: np.ndarray, hard: AbstractSet[int]) -> np.ndarray | None:
    """Which of `index` a hard verdict cut (None: none)."""
    if not hard:
        return None
    return np.array([i in hard for i in index.tolist()], dtype=bool)


def _band_rule(
    cfg: OrdersConfig,
    index: np.ndarray,
    targets: np.ndarray,
    held: np.ndarray,
    price: np.ndarray,
    free: np.ndarray | list[bool],
    equity: float,
    hard: np.ndarray | None = None,
) -> dict[int, float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        raw_qty = targets * equity / price
        target_qty = raw_qty if cfg.fractional else np.trunc(raw_qty)
        delta = target_qty - held
        current_w = held * price / equity
        closing = (targets == 0) & (held != 0)
        off = np.abs(targets - current_w) > cfg.rebalance_band
        if hard is not None:
            off |= hard & (np.abs(current_w) > np.abs(targets) * _HARD_OVER)
        wanted = (off & (np.abs(delta * price) >= cfg.min_trade_value)) | closing
    picked = (wanted & free & (delta != 0)).nonzero()[0].tolist()
    return {int(index[k]): float(-held[k] if closing[k] else delta[k]) for k in picked}


def round_price(price: float) -> float:
    """US equities above $1 trade in whole cents; sub-penny prices are rejected by brokers."""
    return round(price, 2) if price >= 1 else round(price, 4) if math.isfinite(price) else price
