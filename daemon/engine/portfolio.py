"""Cash, positions and profit and loss of one book, as arrays over the universe.

Accounting identity kept at every bar: equity = cash + sum(quantity x mark). Cash moves only
through fills (notional and commission) and dividends; quantity only through fills and splits.
Costs are accumulated from the fills themselves, so the ledger can be checked against them.
"""

from __future__ import annotations

import math
from datetime import date, datetime, tzinfo
from datetime import time as wall_time
from typing import Any

import numpy as np

from ..core.arrays import count_nonzero, dot, putmask, scalar
from ..core.errors import CheckpointUnusable
from ..core.numbers import is_finite_real
from ..core.ports import PortfolioView
from ..core.sessions import session_date
from ..core.types import Fill, Side

_sum = np.add.reduce
# Compared for equality: 1 is exact in every float type, so any dtype compares the same.
_ONE = scalar(1.0)
absolute, divide, multiply = np.absolute, np.divide, np.multiply
# `_frombuffer(row.tobytes())`: `core.arrays.read_only_copy` of a float64 row (every array
# of the book is one), spelled out: a Python call less for each of the six arrays a bar.
_frombuffer = np.frombuffer
# The book's numbers a checkpoint holds, each checked at a restore (`Portfolio.restore`).
_SCALARS = (
    "cash",
    "commission_paid",
    "slippage_paid",
    "dividends_received",
    "equity",
    "peak_equity",
    "prev_equity",
)
_ARRAYS = ("quantity", "avg_price", "realized_pnl", "mark")
# A long-only book's quantity below this is a short (float noise of fills and splits is not).
_SHORT = -1e-9


class Portfolio:
    def __init__(
        self,
        symbols: tuple[str, ...],
        initial_cash: float,
        session_tz: tzinfo | None = None,
        *,
        evening_start: wall_time | None = None,
        allow_short: bool = True,
        run_id: str = "",
    ) -> None:
        """`session_tz`: intraday bars, the exchange's time zone: the day's loss is measured
        from the last close of the previous session (the bar time's date there, the next
        day's from `evening_start` on, where sessions open the evening before: CMES 17:00),
        not from the previous bar's. None: each bar is a session (daily bars). By the local
        date alone a CME session's loss base reset at Chicago midnight, mid-session.
        `allow_short` (the
        run's `broker.allow_short`) and `run_id` are for `restore`: a long-only run refuses
        a checkpoint with a short position, and its error names the run."""
        n = len(symbols)
        self.allow_short = allow_short
        self.run_id = run_id
        self._session_tz = session_tz
        self._evening_start = evening_start
        # The session date of the last bar marked (intraday bars only).
        self._day: date | None = None
        self.symbols = symbols
        self._index = {s: i for i, s in enumerate(symbols)}
        self.initial_cash = initial_cash
        self._cash = float(initial_cash)
        self.quantity = np.zeros(n)
        self.avg_price = np.zeros(n)
        self.realized_pnl = np.zeros(n)
        # Cost of the shares bought or sold short to open or add to a position, cumulative
        # (`PortfolioView.opened_cost`).
        self.opened_cost = np.zeros(n)
        # Last known close; 0 until a symbol's first bar (has_mark says which are real).
        self._mark = np.zeros(n)
        self.has_mark = np.zeros(n, dtype=bool)
        # Every symbol has had a bar (has_mark only grows, until a restore): `mark` is then a
        # plain copy, not a where() over the flags, on every later bar.
        self._all_marked = False
        # `mark`'s factor (1 where has_mark, NaN where not) and the has_mark count it is for.
        self._shown = np.ones(n)
        self._shown_count = -1
        self.commission_paid = 0.0
        self.slippage_paid = 0.0
        self.dividends_received = 0.0
        self.fill_count = 0
        self.equity = float(initial_cash)
        self.peak_equity = float(initial_cash)
        # The equity the day's loss is measured from (`PortfolioView.day_start_equity`): the
        # last close of the previous session.
        self.prev_equity = float(initial_cash)
        # The equity at the last bar's close: the next session's `prev_equity`, which a
        # revaluation between bars must not move.
        self._close_equity = float(initial_cash)
        # quantity x mark as `view` computed it, until the book or the marks change through
        # the methods below (each drops it): the bar's `exposure` then sums it instead of
        # multiplying again. A direct write into `quantity` or the marks would not drop it.
        self._values: np.ndarray | None = None
        # Row 1 holds those values, row 0 their absolutes: `exposure` sums both rows in one
        # reduction (the same pairwise sum per row as two calls, tested) instead of two.
        self._value_rows = np.zeros((2, n))
        # Where `view` computes the weights, and `mark` its product, before copying them.
        self._weights_row = np.zeros(n)

    # AccountView ---------------------------------------------------------------------------
    @property
    def cash(self) -> float:
        return self._cash

    def quantity_of(self, symbol: str) -> float:
        return float(self.quantity[self._index[symbol]])

    # events --------------------------------------------------------------------------------
    def apply_splits(self, split: np.ndarray) -> list[int]:
        """A k-for-1 split multiplies shares by k and divides prices by k; value is unchanged."""
        changed = split != _ONE
        if not count_nonzero(changed):
            # The usual bar (11 in 12 of the 496 symbols' bars have no split): a count is a
            # fifth of nonzero() and its list.
            return []
        cols = changed.nonzero()[0]
        self._values = None
        s = split[cols]
        self.quantity[cols] *= s
        self.avg_price[cols] /= s
        self._mark[cols] /= s
        return cols.tolist()

    def cash_in_lieu(self, i: int, price: float) -> tuple[float, float]:
        """The fraction of a share a split left in symbol `i`, sold at `price`: (shares,
        cash). A broker pays a reverse split's fraction in cash; kept in the book, it is a
        share the account does not hold. The fraction's profit against the average entry is
        realised; the rest keeps its average."""
        q = self.quantity.item(i)
        whole = float(math.trunc(q + math.copysign(1e-9, q)))
        frac = q - whole
        if abs(frac) <= 1e-9 or not math.isfinite(price):
            return 0.0, 0.0
        self._values = None
        cash = frac * price
        self._cash += cash
        self.realized_pnl[i] = self.realized_pnl.item(i) + frac * (price - self.avg_price.item(i))
        self.quantity[i] = whole
        if whole == 0.0:
            self.avg_price[i] = 0.0
        return frac, cash

    def adjust(self, symbol: str, quantity: float, price: float, time: datetime) -> float:
        """The book's quantity in `symbol` set to `quantity` as a trade of the difference at
        `price` (an operator's `POST /adopt`: the account traded without this run, by hand
        or a cash-out): cash moves by -difference x price and the closed part's profit is
        realised, as a fill without costs would book it; not counted as a fill (no order
        made it). Equity at `price` is unchanged. Returns the cash moved."""
        i = self._index[symbol]
        delta = quantity - self.quantity.item(i)
        if not delta:
            return 0.0
        fills = self.fill_count
        side = Side.BUY if delta > 0 else Side.SELL
        self.apply_fill(Fill("adjustment", "", symbol, side, abs(delta), price, 0.0, 0.0, time))
        self.fill_count = fills
        self.quantity[i] = quantity  # exactly the account's (no rounding residue)
        if quantity == 0.0:
            self.avg_price[i] = 0.0
        return -delta * price

    def rescale(self, symbol: str, quantity: float, ratio: float | None = None) -> float:
        """The book's quantity in `symbol` set to `quantity` as a split the book missed (an
        operator's `POST /adopt` "split"): cash unchanged, the cost basis kept (the average
        price scaled by the inverse ratio: `ratio`, new shares per old, or quantity over
        the book's). A split whose fraction of a share the broker paid in cash is scaled by
        its ratio to the fractional quantity, then `cash_in_lieu` sells the fraction: the
        average is the split's, not the whole shares' over the old. Returns the ratio."""
        i = self._index[symbol]
        old = self.quantity.item(i)
        if ratio is None:
            ratio = quantity / old
        self._values = None
        self.quantity[i] = quantity
        self.avg_price[i] = self.avg_price.item(i) / ratio
        return ratio

    def apply_dividends(self, dividend: np.ndarray) -> float:
        """Cash dividends on the ex-date go to holders of the previous close (shorts pay)."""
        paid = float(dot(self.quantity, dividend))
        # Called on every bar, also without dividends: the product is then 0 and nothing is
        # paid, except NaN from a book that is already NaN, which a bar with no dividend must
        # not spread into cash (NaN counts as a dividend, as it always did).
        if not paid or (paid != paid and not count_nonzero(dividend)):
            return 0.0
        self._cash += paid
        self.dividends_received += paid
        return paid

    def apply_fill(self, fill: Fill) -> None:
        # In Python floats (`item`), not numpy scalars: for a fill of Python floats (what
        # every broker here makes), the same IEEE operations in the same order, so the same
        # bits (tested against the numpy form), at a fraction of the cost of numpy's scalar
        # arithmetic, on every fill of a replay. A division by zero (a fill of no shares
        # into no position) keeps numpy's answer (NaN, where Python raises). What differs:
        # an infinite or overflowing fill no longer draws numpy's RuntimeWarnings, and a
        # float32 price would be computed in float32 where numpy promoted it.
        self._values = None
        i = self._index[fill.symbol]
        qty = fill.quantity
        q = fill.side.sign * qty  # Fill.signed_quantity
        price, commission = fill.price, fill.commission
        quantity, avg, pnl = self.quantity, self.avg_price, self.realized_pnl
        old = quantity.item(i)
        new = old + q
        self._cash -= q * price + commission
        realized = pnl.item(i)
        if old == 0.0 or math.copysign(1.0, old) == math.copysign(1.0, q):
            opened = abs(q)
            if new != 0.0:
                avg[i] = (avg.item(i) * abs(old) + price * abs(q)) / abs(new)
            else:
                avg[i] = (avg[i] * abs(old) + price * abs(q)) / abs(new)  # numpy's 0/0
        else:
            closed = min(abs(q), abs(old))
            opened = abs(q) - closed  # the new side of a flip
            realized += closed * (price - avg.item(i)) * math.copysign(1.0, old)
            if abs(q) > abs(old):
                avg[i] = price  # the position flipped side
            elif abs(new) < 1e-12:
                avg[i] = 0.0
                new = 0.0
        pnl[i] = realized - commission
        if opened:
            self.opened_cost[i] = self.opened_cost.item(i) + price * opened
        quantity[i] = new
        self.commission_paid += commission
        self.slippage_paid += fill.slippage
        self.fill_count += 1

    def mark_to_market(
        self, close: np.ndarray, valid: np.ndarray, time: datetime | None = None
    ) -> float:
        self._values = None
        putmask(self._mark, valid, close)  # as copyto(mark, close, where=valid)
        if not self._all_marked:  # once every symbol has had a bar, nothing is left to add
            self.has_mark |= valid
        if self._session_tz is None or time is None:
            self.prev_equity = self._close_equity
        else:
            # Intraday: a new session's first bar takes the last close as its day start;
            # the session's later bars keep it (else the daily loss limit was a per-bar one).
            day = session_date(time, self._session_tz, self._evening_start)
            if day != self._day:
                self.prev_equity = self._close_equity
                self._day = day
        self.equity = self._close_equity = self._cash + float(dot(self.quantity, self._mark))
        if self.equity > self.peak_equity:
            self.peak_equity = self.equity
        return self.equity

    def revalue(self) -> float:
        """Equity at the last marks, after fills booked between bars (a live broker's exits
        and next-open entries): cash and quantities moved, the marks did not."""
        self._values = None
        # Not the close's equity (`prev_equity` of the next bar: a loss realised between bars
        # counts in that bar's daily loss, as in a backtest) nor the peak (stale marks).
        self.equity = self._cash + float(dot(self.quantity, self._mark))
        return self.equity

    # durable state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything the book is, as JSON values, for a live run's checkpoint."""
        return {
            "symbols": list(self.symbols),
            "cash": self._cash,
            "quantity": self.quantity.tolist(),
            "avg_price": self.avg_price.tolist(),
            "realized_pnl": self.realized_pnl.tolist(),
            "opened_cost": self.opened_cost.tolist(),
            "mark": self._mark.tolist(),
            "has_mark": self.has_mark.tolist(),
            "commission_paid": self.commission_paid,
            "slippage_paid": self.slippage_paid,
            "dividends_received": self.dividends_received,
            "fill_count": self.fill_count,
            "equity": self.equity,
            "peak_equity": self.peak_equity,
            "prev_equity": self.prev_equity,
            "session_day": None if self._day is None else self._day.isoformat(),
        }

    def restore(self, state: dict[str, Any], bar_time: datetime | None = None) -> None:
        """The book of a checkpoint (same universe, in the same order: else refused).

        Every number is checked first (`_checked`), and the book is left as it was when one
        is wrong: a checkpoint is JSON in the database, which a hand edit or damage can make
        say anything, and restored as it was a NaN cash resumed silently (no order, NULL
        equity rows), a null one crashed the start with a traceback (a restart loop), and a
        negative quantity in a long-only run was taken as a short (the drawdown guard then
        halted). `bar_time`, the checkpoint's bar, only names it in the error."""
        if list(state["symbols"]) != list(self.symbols):
            raise ValueError(
                "the checkpoint's universe differs from this run's: a run's symbols are part "
                "of its identity (run id), so this checkpoint belongs to another run"
            )
        scalars, arrays, fill_count = self._checked(state, bar_time)
        self._cash = scalars["cash"]
        self._values = None
        for name in _ARRAYS:
            getattr(self, "_mark" if name == "mark" else name)[:] = arrays[name]
        self.opened_cost[:] = arrays["opened_cost"]
        self.has_mark[:] = np.asarray(state["has_mark"], dtype=bool)
        self._all_marked = False
        self._shown_count = -1
        self.commission_paid = scalars["commission_paid"]
        self.slippage_paid = scalars["slippage_paid"]
        self.dividends_received = scalars["dividends_received"]
        self.fill_count = fill_count
        self.equity = self._close_equity = scalars["equity"]
        self.peak_equity = scalars["peak_equity"]
        self.prev_equity = scalars["prev_equity"]
        day = state.get("session_day")  # absent from checkpoints written before it was kept
        self._day = None if day is None else date.fromisoformat(day)

    def _checked(
        self, state: dict[str, Any], bar_time: datetime | None
    ) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
        """The checkpoint's numbers, each a finite number (arrays: one per symbol); with
        `allow_short` false, no quantity below zero. Raises CheckpointUnusable naming the
        run, the checkpoint, the field and the value."""

        def bad(field: str, value: Any, why: str) -> CheckpointUnusable:
            at = f" at {bar_time}" if bar_time is not None else ""
            return CheckpointUnusable(
                f"the checkpoint of run {self.run_id!r}{at} holds portfolio.{field} = "
                f"{value!r}: {why}. tradingd never writes that (the row was edited by hand "
                "or damaged), so the run was not resumed from it: restore the checkpoints "
                "row from a backup of the database, or correct the value; or start a new "
                "run (another run.name)"
            )

        scalars: dict[str, float] = {}
        for name in _SCALARS:
            v = state.get(name)
            if not is_finite_real(v):
                raise bad(name, v, "not a finite number")
            scalars[name] = float(v)
        arrays: dict[str, np.ndarray] = {}
        # opened_cost is absent from checkpoints written before it was kept: counted from
        # the restore on.
        for name, v in [(a, state.get(a)) for a in _ARRAYS] + [
            ("opened_cost", state.get("opened_cost", [0.0] * len(self.symbols)))
        ]:
            if not isinstance(v, list) or len(v) != len(self.symbols):
                raise bad(name, v, f"not a list of {len(self.symbols)} numbers, one a symbol")
            for k, (sym, x) in enumerate(zip(self.symbols, v, strict=True)):
                if name == "avg_price" and x is None and arrays["quantity"][k] == 0.0:
                    continue  # a flat symbol's NaN average (a fill of no shares), kept so
                if not is_finite_real(x):
                    raise bad(f"{name} of {sym}", x, "not a finite number")
            arrays[name] = np.asarray(v, dtype=np.float64)
        if not self.allow_short:
            for sym, q in zip(self.symbols, arrays["quantity"].tolist(), strict=True):
                if q < _SHORT:
                    raise bad(
                        f"quantity of {sym}",
                        q,
                        "a short position, and this run is long only (broker.allow_short = false)",
                    )
        fill_count = state.get("fill_count")
        if isinstance(fill_count, bool) or not isinstance(fill_count, int) or fill_count < 0:
            raise bad("fill_count", fill_count, "not a whole number >= 0")
        return scalars, arrays, fill_count

    # views ---------------------------------------------------------------------------------
    @property
    def mark(self) -> np.ndarray:
        """Last close per symbol, NaN before a symbol's first bar."""
        if not self._all_marked:
            n = count_nonzero(self.has_mark)
            if n < self.has_mark.size:
                # The marks times 1 where a symbol has one and NaN where not: the values of
                # np.where(has_mark, mark, nan) (x * 1 is x, 0 * NaN is NaN) at a third of
                # its cost, a bar at a time while symbols are still to list (many of the
                # 496's early years). has_mark only grows, so its count says when the
                # factor is stale; restore drops it.
                if n != self._shown_count:
                    self._shown = np.where(self.has_mark, 1.0, np.nan)
                    self._shown_count = int(n)
                return _frombuffer(
                    multiply(self._mark, self._shown, out=self._weights_row).tobytes()
                )
            self._all_marked = True
        # Read-only for good (`read_only_copy`): `ctx.mark`, which every plugin of the bar
        # and the planner read after the plugin that might write into it.
        return _frombuffer(self._mark.tobytes())

    def position_values(self) -> np.ndarray:
        return self.quantity * self._mark

    def unrealized_pnl(self) -> np.ndarray:
        return self.quantity * (self._mark - self.avg_price)

    def exposure(self) -> tuple[float, float]:
        """Gross and net exposure as fractions of equity."""
        rows = self._value_rows
        if self._values is None:
            multiply(self.quantity, self._mark, out=rows[1])  # position_values
        absolute(rows[1], out=rows[0])
        # add.reduce is what ndarray.sum calls (the same sum), without its Python wrapper.
        gross, net = _sum(rows, axis=1).tolist()
        eq = self.equity if self.equity > 0 else math.nan
        return gross / eq, net / eq

    def view(self) -> PortfolioView:
        eq = self.equity
        # position_values, into the row `exposure` sums.
        v = self._values = multiply(self.quantity, self._mark, out=self._value_rows[1])
        # Into a scratch row: the copy below is the one array the weights make.
        weights = self._weights_row
        if eq > 0:
            divide(v, eq, out=weights)
        else:
            weights.fill(0.0)
        # Positional, in field order (cash, equity, quantity, weights, peak_equity,
        # day_start_equity, avg_price, realized_pnl, opened_cost): built every bar.
        # Read-only copies that cannot be made writeable again (`read_only_copy`): the
        # planner reads the same view after the plugins (a plugin that wrote 1,000 into
        # `quantity` had the planner sell 1,000 shares a bar, refused), and a flag alone
        # was undone by `setflags(write=True)`.
        fb = _frombuffer
        return PortfolioView(
            self._cash,
            eq,
            fb(self.quantity.tobytes()),
            fb(weights.tobytes()),
            self.peak_equity,
            self.prev_equity,
            fb(self.avg_price.tobytes()),
            fb(self.realized_pnl.tobytes()),
            fb(self.opened_cost.tobytes()),
        )
