"""Summary statistics of one backtest or paper-trading run.

Conventions, chosen once here so every report agrees:

* The equity curve is the equity at each bar close. `initial_capital` is the equity *before*
  the first bar, so a run of n bars has n per-bar returns (the first one against the initial
  capital). This keeps total return, the compounded per-bar returns and the annualisation
  ("n bars / periods_per_year years") mutually consistent, and it counts first-bar costs.
* The running peak used for drawdowns starts at the initial capital, for the same reason.
* A metric that is undefined (too few bars, zero dispersion, no losing trade, ...) is NaN,
  never inf and never an exception: reports, JSON and databases handle NaN uniformly, while
  an inf or a crash would hide every other number of the run.
* Trade statistics replay the fills per symbol with average-cost accounting. The fills
  carry no corporate actions, so a split between entry and exit skews the per-trade PnL
  (not the equity-based metrics, which come from the engine's equity curve).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from ..core.types import Fill

__all__ = [
    "ClosedTrade",
    "calmar_ratio",
    "closed_trades",
    "drawdown_series",
    "format_summary",
    "summarize",
]

# A standard deviation this small relative to the mean is floating-point noise (e.g. a
# steadily compounding curve whose returns differ only in the last ulp), not risk; dividing
# by it would report a meaningless astronomical ratio.
_REL_NOISE = 1e-10
#: A run shorter than this many years (63 daily bars of 252) has its annual figures marked
#: as extrapolated (`short_run`): 1% over one bar printed as 1,127% a year, unqualified.
SHORT_RUN_YEARS = 0.25
# A position smaller than this fraction of the traded quantities counts as flat, so
# fractional-share rounding does not leave a phantom remainder that the next fill "closes".
_FLAT_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """The realised result of one fill that reduced an existing position."""

    symbol: str
    time: datetime
    quantity: float  # the part of the fill that closed the position, always > 0
    entry_price: float  # average cost of the position being reduced
    exit_price: float
    direction: int  # +1 closing a long, -1 closing a short
    pnl: float  # after the closing share of this fill's commission
    # True when this fill took the position to flat (or through it): the end of a round trip.
    # A rebalance trim is a closing fill but not the end of a round trip.
    ends_round_trip: bool = False


def drawdown_series(equity: np.ndarray | Sequence[float]) -> np.ndarray:
    """Fraction below the running peak at each point (0 at a new high).

    Exceeds 1 only if equity turns negative (a leveraged wipe-out). Points before any
    positive peak have no meaningful drawdown and are NaN.
    """
    e = np.asarray(equity, dtype=float)
    if e.size == 0:
        return np.zeros(0)
    peak = np.maximum.accumulate(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, 1.0 - e / peak, np.nan)
    # 1 - e/peak can come out as -1e-17 at a new high; a drawdown is never negative.
    return np.where(np.isnan(dd), dd, np.maximum(dd, 0.0))


def closed_trades(fills: Sequence[Fill]) -> list[ClosedTrade]:
    """Replay fills in the given (execution) order, per symbol, with average-cost accounting.

    A fill that flips a position (sell 15 while long 10) closes 10 and opens a short of 5 at
    the fill price; its commission is split pro rata so only the closing share burdens the
    realised PnL. Entry commissions are not charged to the trade: they are already in the
    equity curve and in `commission_paid`, and allocating them would need lot tracking.
    """
    positions: dict[str, tuple[float, float]] = {}  # symbol -> (signed quantity, avg cost)
    out: list[ClosedTrade] = []
    for f in fills:
        qty = float(f.quantity)
        if qty <= 0:
            continue
        pos, avg = positions.get(f.symbol, (0.0, 0.0))
        sign = f.side.sign
        if pos == 0 or (pos > 0) == (sign > 0):
            new_pos = pos + sign * qty
            avg = (avg * abs(pos) + f.price * qty) / abs(new_pos)
            positions[f.symbol] = (new_pos, avg)
            continue
        closed = min(qty, abs(pos))
        direction = 1 if pos > 0 else -1
        commission = f.commission * closed / qty
        pnl = (f.price - avg) * closed * direction - commission
        new_pos = pos + sign * qty
        flat = abs(new_pos) <= _FLAT_TOL * max(abs(pos), qty)
        ends = flat or (new_pos > 0) != (pos > 0)
        out.append(ClosedTrade(f.symbol, f.time, closed, avg, f.price, direction, pnl, ends))
        if flat:
            positions[f.symbol] = (0.0, 0.0)
        elif (new_pos > 0) != (pos > 0):
            positions[f.symbol] = (new_pos, f.price)  # flipped: the remainder opens here
        else:
            positions[f.symbol] = (new_pos, avg)  # reducing keeps the average cost
    return out


def _ratio(num: float, den: float) -> float:
    """num/den, or NaN where the quotient would be undefined or pure rounding noise."""
    if not (math.isfinite(num) and math.isfinite(den)) or den <= _REL_NOISE * abs(num):
        return math.nan
    return num / den


def calmar_ratio(annual: float, max_dd: float) -> float:
    """Annual return / max drawdown; NaN without a drawdown, and for a run ruined (a drawdown
    of 100% or more: equity at or below zero), whose every ratio is NaN (docs/ANALYSIS.md),
    not -1 / 1.1. The one definition: the run's summary printed -1.00 for a ruined run
    while the analyzer's was NaN."""
    return _ratio(annual, max_dd) if 0 < max_dd < 1 else math.nan


def short_run(bars: int, periods_per_year: float) -> bool:
    """Whether `bars` are under SHORT_RUN_YEARS of `periods_per_year`: their annual figures
    (CAGR, volatility, the ratios) extrapolate a few bars to a year, and are shown marked."""
    return 0 < bars < SHORT_RUN_YEARS * periods_per_year


def unsigned_zero(text: str) -> str:
    """`text` without the minus of a negative zero ("-0.00%" -> "0.00%"): a flat run's VaR
    of -0.0, or a loss that rounds to nothing, read as a loss."""
    if text.startswith("-") and not any(c in "123456789" for c in text):
        return text[1:]
    return text


def _iso_date(t: Any) -> str:
    if isinstance(t, datetime):
        return t.date().isoformat()
    if isinstance(t, date):
        return t.isoformat()
    return str(np.datetime64(t, "D"))


def _finite_or_nan(x: float) -> float:
    return float(x) if math.isfinite(x) else math.nan


def summarize(
    equity: np.ndarray,
    times: Sequence[datetime] | np.ndarray,
    fills: Sequence[Fill],
    *,
    initial_capital: float,
    gross_exposure: np.ndarray,
    periods_per_year: float = 252.0,
    risk_free_rate: float = 0.0,
) -> dict[str, float | int | str]:
    """One flat dict per run, so it can go straight into a table, a log line or a database row.

    Ratios use per-bar excess returns over a per-bar risk-free rate compounded down from the
    annual one. The Sortino downside deviation averages over *all* bars (not only losing
    ones), which is the usual target-semideviation definition. `profit_factor` is NaN when
    there is no losing trade rather than inf. Inconsistent inputs (mismatched lengths,
    non-finite equity, non-positive capital) are caller bugs and raise ValueError.
    """
    e = np.asarray(equity, dtype=float).ravel()
    gx = np.asarray(gross_exposure, dtype=float).ravel()
    n = int(e.size)
    if len(times) != n or gx.size != n:
        raise ValueError(
            f"equity ({n}), times ({len(times)}) and gross_exposure ({gx.size}) "
            "must have the same length"
        )
    if not (math.isfinite(initial_capital) and initial_capital > 0):
        raise ValueError(f"initial_capital must be positive, got {initial_capital}")
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be positive, got {periods_per_year}")
    if not np.all(np.isfinite(e)):
        raise ValueError("equity contains NaN or inf")

    nan = math.nan
    ppy = float(periods_per_year)
    final = float(e[-1]) if n else float(initial_capital)
    total_return = final / initial_capital - 1.0

    if n == 0:
        annual_return = nan
    elif final <= 0:
        annual_return = -1.0  # ruin: nothing left to compound
    else:
        try:
            annual_return = (final / initial_capital) ** (ppy / n) - 1.0
        except OverflowError:  # a huge gain annualised over very few bars
            annual_return = nan

    # Per-bar returns, the first against the initial capital (see module docstring).
    prev = np.concatenate(([initial_capital], e[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        rets = np.where(prev > 0, e / prev - 1.0, np.nan)
    rf_bar = (1.0 + risk_free_rate) ** (1.0 / ppy) - 1.0
    excess = rets - rf_bar
    sqrt_ppy = math.sqrt(ppy)
    if n >= 2 and np.all(np.isfinite(rets)):
        annual_volatility = float(np.std(rets, ddof=1)) * sqrt_ppy
        mean_excess = float(np.mean(excess))
        sharpe = _ratio(mean_excess, float(np.std(excess, ddof=1))) * sqrt_ppy
        downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
        sortino = _ratio(mean_excess, downside) * sqrt_ppy
    else:
        annual_volatility = sharpe = sortino = nan

    dd = drawdown_series(np.concatenate(([initial_capital], e)))[1:]
    max_drawdown = float(np.max(dd)) if n else 0.0
    max_dd_duration = 0
    run = 0
    for underwater in dd > 0:
        run = run + 1 if underwater else 0
        max_dd_duration = max(max_dd_duration, run)
    calmar = calmar_ratio(annual_return, max_drawdown)

    trades = closed_trades(fills)
    pnls = np.array([t.pnl for t in trades], dtype=float)
    wins = pnls[pnls > 0]
    losses = pnls[pnls < 0]
    win_rate = float(wins.size / pnls.size) if pnls.size else nan
    avg_win = float(np.mean(wins)) if wins.size else nan
    avg_loss = float(np.mean(losses)) if losses.size else nan
    profit_factor = float(np.sum(wins)) / abs(float(np.sum(losses))) if losses.size else nan

    notional = sum(abs(f.notional) for f in fills)

    summary: dict[str, float | int | str] = {
        "start": _iso_date(times[0]) if n else "",
        "end": _iso_date(times[-1]) if n else "",
        "bars": n,
        "initial_capital": float(initial_capital),
        "final_equity": final,
        "total_return": total_return,
        "annual_return": annual_return,
        "annual_volatility": annual_volatility,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown": max_drawdown,
        "max_drawdown_duration_bars": max_dd_duration,
        "calmar": calmar,
        "fills": len(fills),
        # Fills that reduced a position (exits and rebalance trims): what win_rate counts.
        "closing_fills": len(trades),
        # Positions opened from flat and taken back to flat (a flip ends one and starts one).
        "round_trips": sum(1 for t in trades if t.ends_round_trip),
        "win_rate": win_rate,
        "avg_win": avg_win,
        "avg_loss": avg_loss,
        "profit_factor": profit_factor,
        "exposure": float(np.mean(gx)) if n else nan,
        "time_in_market": float(np.mean(gx > 0)) if n else nan,
        "commission_paid": float(sum(f.commission for f in fills)),
        "slippage_paid": float(sum(f.slippage for f in fills)),
        "turnover": notional / initial_capital,
    }
    return {k: _finite_or_nan(v) if isinstance(v, float) else v for k, v in summary.items()}


_MAX_LISTED = 20

_LABELS: dict[str, tuple[str, str]] = {
    # key: (label, kind) where kind picks the number format
    "start": ("Start", "str"),
    "end": ("End", "str"),
    "bars": ("Bars", "int"),
    "initial_capital": ("Initial capital", "money"),
    "final_equity": ("Final equity", "money"),
    "total_return": ("Total return", "pct"),
    "annual_return": ("Annual return", "pct"),
    "annual_volatility": ("Annual volatility", "pct"),
    # The summary's risk-free rate is 0; the report's analysis takes 2% (performance config):
    # the same run's two Sharpe ratios can differ in sign, so each says which it is.
    "sharpe": ("Sharpe ratio (risk-free 0%)", "ratio"),
    "sortino": ("Sortino ratio (risk-free 0%)", "ratio"),
    "max_drawdown": ("Max drawdown", "pct"),
    "max_drawdown_duration_bars": ("Max drawdown duration (bars)", "int"),
    "calmar": ("Calmar ratio", "ratio"),
    "fills": ("Fills", "int"),
    "closing_fills": ("Closing fills (exits and trims)", "int"),
    "round_trips": ("Round trips (flat to flat)", "int"),
    "win_rate": ("Win rate (of closing fills)", "pct"),
    "avg_win": ("Average win", "money"),
    "avg_loss": ("Average loss", "money"),
    "profit_factor": ("Profit factor", "ratio"),
    "exposure": ("Average gross exposure", "pct"),
    "time_in_market": ("Time in market", "pct"),
    "commission_paid": ("Commission paid", "money"),
    "slippage_paid": ("Slippage paid", "money"),
    "turnover": ("Turnover (x initial capital)", "ratio"),
}


def _fmt(value: float | int | str, kind: str) -> str:
    if isinstance(value, str):
        return value or "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if kind == "int" or isinstance(value, int | np.integer):
        return f"{int(value):,d}"
    if kind == "pct":
        return unsigned_zero(f"{value * 100:,.2f}%")
    if kind == "money":
        return unsigned_zero(f"{value:,.2f}")
    if kind == "num":
        return f"{value:,g}"
    return unsigned_zero(f"{value:.2f}")


#: The summary's figures annualised from its bars: marked for a short run (`short_run`).
_ANNUALISED = ("annual_return", "annual_volatility", "sharpe", "sortino", "calmar")


_MORE_LABELS: dict[str, tuple[str, str]] = {
    "bar": ("Bar", "str"),
    "periods_per_year": ("Bars a year (annual figures)", "num"),
    "warmup_bars": ("Warm-up bars before the start (no trading)", "int"),
    "orders": ("Orders", "int"),
    "rejections": ("Orders rejected", "int"),
    "orders_expired": ("Orders expired (order_ttl_bars)", "int"),
    "risk_verdicts": ("Risk verdicts", "int"),
    "trading_restricted_bars": ("Bars with trading restricted by a risk rule", "int"),
    "dividends_received": ("Dividends received", "money"),
}


def _bound(value: Any, intraday: bool) -> str:
    """A restriction period's first or last bar: its date, with its time (and offset) for
    intraday bars, whose two halts on one day read "2018-03-14 .. 2018-03-14" alike."""
    text = str(value)
    if not intraday:
        return text[:10]
    try:
        return datetime.fromisoformat(text).isoformat(sep=" ", timespec="minutes")
    except ValueError:  # an edited summary: shown as written
        return text


def _period(p: Mapping[str, Any], intraday: bool = False) -> str:
    bars = f"{p['bars']} bar" + ("" if p["bars"] == 1 else "s")  # "(1 bar)", not "(1 bars)"
    return (
        f"{_bound(p['from'], intraday)} .. {_bound(p['to'], intraday)} ({bars}) "
        f"{p['plugin']}/{p['rule']}: {p['action']}"
    )


def format_summary(summary: Mapping[str, Any]) -> str:
    """Two aligned columns for the terminal; unknown keys are shown too, so callers may add
    their own entries without touching this module. Tables (counts by rule or reason) and
    lists (restriction periods, models) are shown as indented rows under their key.
    Restriction periods of intraday bars (the summary's `bar`) show their times too."""
    intraday = str(summary.get("bar", "1d")) != "1d"
    bars, ppy = summary.get("bars"), summary.get("periods_per_year", 252.0)
    short = (
        isinstance(bars, int)
        and isinstance(ppy, int | float)
        and ppy > 0
        and short_run(bars, float(ppy))
    )
    rows: list[tuple[str, str]] = []
    for key, value in summary.items():
        label, kind = _LABELS.get(key) or _MORE_LABELS.get(
            key, (key.replace("_", " ").capitalize(), "ratio")
        )
        if isinstance(value, Mapping):
            if value:
                rows.append((label, ""))
                rows.extend((f"  {k}", _fmt(v, "int")) for k, v in value.items())
            continue
        if isinstance(value, list):
            if value:
                rows.append((label, str(len(value))))
                for item in value[:_MAX_LISTED]:
                    if isinstance(item, Mapping) and "from" in item:
                        rows.append((f"  {_period(item, intraday)}", ""))
                    elif isinstance(item, Mapping):
                        rows.append(("  " + ", ".join(f"{k}={v}" for k, v in item.items()), ""))
                    else:
                        rows.append((f"  {item}", ""))
                if len(value) > _MAX_LISTED:
                    rows.append((f"  ... {len(value) - _MAX_LISTED} more in summary.json", ""))
            continue
        text = _fmt(value, kind)
        if short and key in _ANNUALISED and text != "n/a":
            text += " *"
        rows.append((label, text))
    if not rows:
        return ""
    if short:
        rows.append(
            (
                f"* annualised from {bars} bars (under a quarter of a year of {ppy:g}): "
                "an extrapolation, not a rate to expect",
                "",
            )
        )
    # Rows without a value (headings, listed periods) do not widen the label column.
    width = max((len(label) for label, v in rows if v), default=0)
    vwidth = max(len(v) for _, v in rows)
    return "\n".join(
        f"{label:<{width}}  {v:>{vwidth}}" if v else label.rstrip() for label, v in rows
    )
