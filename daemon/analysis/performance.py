"""Performance and risk analysis of a run: the specification's `PerformanceAnalyzer`.

Conventions (docs/ANALYSIS.md has the table with formulas, empyrical's differences and the
test tolerances). They extend those of `metrics.py`, whose summary they agree with:

* Returns are *simple* per-bar returns r_t = E_t / E_{t-1} - 1 of the equity curve (bar
  closes), never log returns, for every metric, as empyrical computes them. The first one is
  against the initial capital (the equity *before* the first bar), so n bars give n returns
  and their product is the total return. A return after a non-positive equity is NaN, and
  every ratio of such a run (a leveraged wipe-out) is NaN.
* A year is `periods_per_year` bars (252 trading days). Annualisation: compound growth for
  returns (CAGR = growth ** (252 / n) - 1, alpha = (1 + mean daily alpha) ** 252 - 1),
  sqrt(252) for deviations (volatility, downside deviation, tracking error), and
  mean x 252 / (deviation x sqrt(252)) = mean / deviation x sqrt(252) for the ratios
  (Sharpe, Sortino, information ratio).
* Standard deviations are *sample* ones (ddof = 1), as empyrical's. Beta is
  cov(r, b) / var(b) with the same normalisation on both sides (so ddof cancels); the
  downside deviation is the root mean square of the shortfalls below the target over *all*
  bars (target semideviation, mean over n).
* The risk-free rate (`risk_free_rate`, annual, from the configuration: 2% as the
  specification's) is applied per bar as the compounded-down rate
  rf_bar = (1 + rf) ** (1 / 252) - 1: Sharpe, Sortino and the downside deviation use the
  excess returns r_t - rf_bar (rf_bar is the Sortino target), and alpha is Jensen's alpha of
  the excess returns. The excess return over the risk-free rate is annual_return - rf.
* The benchmark (the S&P 500 index of the bundled data by default; any symbol of a data
  source, or a file, by configuration) is turned into per-bar returns on the run's own bars:
  its level at each bar's date (an exact date match), so a bar that the benchmark lacks, and
  the bar after it, have no benchmark return. Benchmark-relative metrics (alpha, beta,
  excess return, information ratio, tracking error, correlation) use the bars where both
  returns are known (`benchmark_bars` of them). A level series with splits and dividends is
  made a total-return index the way the engine books them (split first, then the dividend
  per post-split share): 1 + r_t = split_t x (close_t + dividend_t) / close_{t-1}.
* VaR and CVaR are one-bar losses at `var_confidence` (95%), reported as *positive*
  fractions of equity (like `max_drawdown`). Historical VaR is the linearly interpolated
  5th percentile of the returns; historical CVaR is the mean of the k = floor((n - 1) x 0.05)
  + 1 worst returns (empyrical's estimator: the tail that the percentile falls in).
  Parametric ones assume normal returns with the sample mean and deviation:
  VaR = -(mu + z sigma), CVaR = -(mu - sigma phi(z) / 0.05), z = Phi^-1(0.05).
* Drawdowns are measured from the running peak of the equity, which starts at the initial
  capital (as in `metrics.py`). A drawdown period's duration is the number of bars spent
  below the peak: from the bar after the peak up to (not including) the bar at which the
  equity is back at the peak, or to the last bar if it never recovers.
  `max_drawdown_duration_bars` is the longest such period (the same number as the summary's
  key of that name); `deepest_drawdown_duration_bars` is the period of the maximum drawdown
  (the first one, if several are equally deep up to rounding).
* Trade statistics are per *round trip*: the closing fills of `metrics.closed_trades`
  (average-cost accounting, commission of the closing share included, entry commission not)
  summed per symbol from a position's opening to its return to flat (a flip ends one round
  trip and opens the next). Positions still open at the end are not counted. Win rate is the
  share of round trips with a positive PnL; a profit factor without a losing trip is NaN.
* `exposure` is the mean gross exposure (sum of |position value| / equity, averaged over
  bars); `time_in_market` the share of bars with any position. `annual_turnover` is the
  traded value (buys and sells, |quantity x price|) over the mean equity, per year (one
  round trip of the whole equity is 2). Costs are the fills' commissions and slippage
  (slippage and half-spread in money against the reference price).
* An undefined metric (too few bars, zero dispersion, no benchmark overlap, no losing trip)
  is NaN, never inf and never an exception. Inconsistent inputs (no equity curve,
  mismatched lengths, non-positive initial capital) are caller bugs and raise ValueError.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError
from ..core.types import Fill, Side
from .metrics import _REL_NOISE, ClosedTrade, _ratio, closed_trades, drawdown_series

__all__ = [
    "BENCHMARK_SOURCES",
    "DrawdownPeriod",
    "PerformanceAnalyzer",
    "PerformanceConfig",
    "RunRecord",
    "align_benchmark",
    "alpha",
    "annual_return",
    "annual_turnover",
    "annual_volatility",
    "average_loss",
    "average_win",
    "benchmark_levels",
    "beta",
    "calmar_ratio",
    "correlation",
    "cvar_historical",
    "cvar_parametric",
    "downside_deviation",
    "drawdown_periods",
    "information_ratio",
    "load_benchmark",
    "max_drawdown",
    "per_bar_rate",
    "profit_factor",
    "round_trip_pnls",
    "run_record",
    "sharpe_ratio",
    "simple_returns",
    "sortino_ratio",
    "stored_run_results",
    "total_return",
    "tracking_error",
    "var_historical",
    "var_parametric",
    "win_rate",
]

log = structlog.get_logger(__name__)

BENCHMARK_SOURCES = ("bundled", "csv", "parquet")
# The benchmark level before a run's first bar (its first return's base) may be at most this
# many calendar days older than the first bar (a long weekend and a holiday), as the loaders'
# default `data.max_gap_days`: anything older is not that bar's previous session.
_MAX_BASE_GAP_DAYS = 7
_NAN = math.nan


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PerformanceConfig:
    """What the analysis assumes. `benchmark` is a symbol ("" for no benchmark) of
    `benchmark_source`: "bundled" (the S&P 500 "SP500" and NASDAQ Composite "NASDAQ" index
    series shipped with `arch`), or "csv" / "parquet" with `benchmark_path` (a file or a
    folder, in the loaders' layouts)."""

    risk_free_rate: float = 0.02  # annual, the specification's
    periods_per_year: float = 252.0
    var_confidence: float = 0.95
    benchmark: str = "SP500"
    benchmark_source: str = "bundled"
    benchmark_path: str = ""

    def __post_init__(self) -> None:
        for key in ("risk_free_rate", "periods_per_year", "var_confidence"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"analysis.{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"analysis.{key} must be finite, got {value!r}")
        if not self.risk_free_rate > -1.0:
            raise ConfigError(f"analysis.risk_free_rate must be > -1, got {self.risk_free_rate}")
        if not self.periods_per_year > 0:
            raise ConfigError(f"analysis.periods_per_year must be > 0, got {self.periods_per_year}")
        if not 0.5 <= self.var_confidence < 1.0:
            raise ConfigError(
                f"analysis.var_confidence must be in [0.5, 1), got {self.var_confidence}"
            )
        if self.benchmark_source not in BENCHMARK_SOURCES:
            raise ConfigError(
                f"analysis.benchmark_source {self.benchmark_source!r} is unknown; valid "
                f"choices: {', '.join(BENCHMARK_SOURCES)}"
            )
        if self.benchmark and self.benchmark_source != "bundled" and not self.benchmark_path:
            raise ConfigError(
                "analysis.benchmark_path is required when analysis.benchmark_source = "
                f"{self.benchmark_source!r}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "analysis") -> PerformanceConfig:
        """From a TOML table (unknown keys and bad types are ConfigErrors naming the key)."""
        from ..config import build

        return build(cls, data, where)

    @property
    def tail(self) -> float:
        """The VaR tail probability (0.05 for 95%), rounded so 1 - 0.95 is exactly 0.05."""
        return round(1.0 - self.var_confidence, 12)


# ----------------------------------------------------------------------------- returns


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=float).ravel()


def _pow(base: float, exponent: float) -> float:
    """base ** exponent, NaN where it overflows or is not a real number."""
    if not (math.isfinite(base) and math.isfinite(exponent)) or base < 0:
        return _NAN
    try:
        out = base**exponent
    except OverflowError:
        return _NAN
    return out if math.isfinite(out) else _NAN


def simple_returns(equity: Any, initial_capital: float) -> np.ndarray:
    """Per-bar simple returns, the first against the initial capital (NaN after equity <= 0)."""
    e = _arr(equity)
    prev = np.concatenate(([float(initial_capital)], e[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prev > 0, e / prev - 1.0, np.nan)


def per_bar_rate(annual_rate: float, periods_per_year: float = 252.0) -> float:
    """The per-bar rate that compounds to `annual_rate` over a year."""
    return (1.0 + annual_rate) ** (1.0 / periods_per_year) - 1.0


def total_return(returns: Any) -> float:
    """Compounded return of the bars (0 for no bar, NaN if a return is not finite)."""
    r = _arr(returns)
    if not np.all(np.isfinite(r)):
        return _NAN
    return float(np.prod(1.0 + r)) - 1.0


def annual_return(returns: Any, periods_per_year: float = 252.0) -> float:
    """CAGR: (1 + total) ** (periods_per_year / n) - 1; -1 after a total loss; NaN for no bar."""
    r = _arr(returns)
    if r.size == 0:
        return _NAN
    growth = 1.0 + total_return(r)
    if not math.isfinite(growth):
        return _NAN
    return _cagr(growth, r.size, periods_per_year)


def _cagr(growth: float, bars: int, periods_per_year: float) -> float:
    if bars == 0 or not math.isfinite(growth):
        return _NAN
    if growth <= 0:
        return -1.0  # ruin: nothing left to compound
    return _pow(growth, periods_per_year / bars) - 1.0


def _finite_returns(returns: Any, min_size: int) -> np.ndarray | None:
    r = _arr(returns)
    if r.size < min_size or not np.all(np.isfinite(r)):
        return None
    return r


def annual_volatility(returns: Any, periods_per_year: float = 252.0) -> float:
    r = _finite_returns(returns, 2)
    if r is None:
        return _NAN
    return float(np.std(r, ddof=1)) * math.sqrt(periods_per_year)


def sharpe_ratio(returns: Any, risk_free: float = 0.0, periods_per_year: float = 252.0) -> float:
    """mean(r - rf) / std(r - rf, ddof=1) x sqrt(periods_per_year); `risk_free` per bar."""
    r = _finite_returns(returns, 2)
    if r is None:
        return _NAN
    x = r - risk_free
    return _ratio(float(np.mean(x)), float(np.std(x, ddof=1))) * math.sqrt(periods_per_year)


def _downside(r: np.ndarray, target: float) -> float:
    return math.sqrt(float(np.mean(np.minimum(r - target, 0.0) ** 2)))


def downside_deviation(returns: Any, target: float = 0.0, periods_per_year: float = 252.0) -> float:
    """Annualised root mean square of the shortfalls below `target` (per bar), over all bars."""
    r = _finite_returns(returns, 1)
    if r is None:
        return _NAN
    return _downside(r, target) * math.sqrt(periods_per_year)


def sortino_ratio(returns: Any, target: float = 0.0, periods_per_year: float = 252.0) -> float:
    """mean(r - target) x ppy / downside_deviation; NaN without any shortfall."""
    r = _finite_returns(returns, 2)
    if r is None:
        return _NAN
    mean = float(np.mean(r - target))
    return _ratio(mean, _downside(r, target)) * math.sqrt(periods_per_year)


# ----------------------------------------------------------------------------- drawdowns


@dataclass(frozen=True)
class DrawdownPeriod:
    """One stretch below the running peak. Indexes are bars of the run (0 = first bar);
    `peak` is -1 when the peak is the initial capital; `recovery` is the first bar back at
    the peak, None if the run ends below it."""

    peak: int
    trough: int
    recovery: int | None
    depth: float  # fraction below the peak at the trough, > 0
    duration: int  # bars below the peak: recovery - peak - 1, or n - 1 - peak

    @property
    def recovered(self) -> bool:
        return self.recovery is not None


def _wealth(equity: Any, initial_capital: float) -> np.ndarray:
    return np.concatenate(([float(initial_capital)], _arr(equity)))


def drawdown_periods(equity: Any, initial_capital: float) -> list[DrawdownPeriod]:
    """The stretches of the equity below its running peak (which starts at the initial
    capital), in time order."""
    dd = drawdown_series(_wealth(equity, initial_capital))[1:]
    under = np.nan_to_num(dd, nan=0.0) > 0
    out: list[DrawdownPeriod] = []
    n = under.size
    i = 0
    while i < n:
        if not under[i]:
            i += 1
            continue
        j = i
        while j < n and under[j]:
            j += 1
        trough = i + int(np.argmax(dd[i:j]))
        out.append(
            DrawdownPeriod(
                peak=i - 1,
                trough=trough,
                recovery=j if j < n else None,
                depth=float(dd[trough]),
                duration=j - i,
            )
        )
        i = j
    return out


def max_drawdown(equity: Any, initial_capital: float) -> float:
    """Largest fraction below the running peak (0 for a curve that never falls)."""
    dd = drawdown_series(_wealth(equity, initial_capital))[1:]
    return float(np.nanmax(dd)) if dd.size and not np.all(np.isnan(dd)) else 0.0


def calmar_ratio(annual: float, max_dd: float) -> float:
    """Annual return / max drawdown; NaN without a drawdown."""
    return _ratio(annual, max_dd) if max_dd > 0 else _NAN


# ----------------------------------------------------------------------------- tail risk


def var_historical(returns: Any, tail: float = 0.05) -> float:
    """One-bar loss not exceeded with probability 1 - tail: -percentile(r, 100 x tail)."""
    r = _finite_returns(returns, 1)
    if r is None:
        return _NAN
    return -float(np.percentile(r, 100.0 * tail))


def cvar_historical(returns: Any, tail: float = 0.05) -> float:
    """Mean loss of the floor((n - 1) x tail) + 1 worst bars (empyrical's tail)."""
    r = _finite_returns(returns, 1)
    if r is None:
        return _NAN
    k = int((r.size - 1) * tail)
    return -float(np.mean(np.partition(r, k)[: k + 1]))


def _normal(returns: Any, tail: float) -> tuple[float, float, float] | None:
    r = _finite_returns(returns, 2)
    if r is None:
        return None
    return float(np.mean(r)), float(np.std(r, ddof=1)), NormalDist().inv_cdf(tail)


def var_parametric(returns: Any, tail: float = 0.05) -> float:
    """Normal VaR: -(mu + z sigma), z the `tail` quantile of the standard normal."""
    p = _normal(returns, tail)
    if p is None:
        return _NAN
    mu, sigma, z = p
    return -(mu + z * sigma)


def cvar_parametric(returns: Any, tail: float = 0.05) -> float:
    """Normal expected shortfall: -(mu - sigma phi(z) / tail)."""
    p = _normal(returns, tail)
    if p is None:
        return _NAN
    mu, sigma, z = p
    return -(mu - sigma * NormalDist().pdf(z) / tail)


# ----------------------------------------------------------------------------- benchmark


def _pair(returns: Any, benchmark: Any) -> tuple[np.ndarray, np.ndarray]:
    r, b = _arr(returns), _arr(benchmark)
    if r.size != b.size:
        raise ValueError(f"returns ({r.size}) and benchmark ({b.size}) differ in length")
    ok = np.isfinite(r) & np.isfinite(b)
    return r[ok], b[ok]


def _dispersed(x: np.ndarray) -> bool:
    """Whether x varies by more than floating-point noise around its mean."""
    sd = float(np.std(x))
    return sd > 0 and sd > _REL_NOISE * abs(float(np.mean(x)))


def beta(returns: Any, benchmark: Any) -> float:
    """cov(r, b) / var(b) over the bars where both are known."""
    r, b = _pair(returns, benchmark)
    if r.size < 2 or not _dispersed(b):
        return _NAN
    bc = b - np.mean(b)
    return float(np.mean(bc * (r - np.mean(r))) / np.mean(bc * bc))


def alpha(
    returns: Any,
    benchmark: Any,
    risk_free: float = 0.0,
    periods_per_year: float = 252.0,
    *,
    beta_value: float | None = None,
) -> float:
    """Annualised Jensen's alpha: (1 + mean((r - rf) - beta (b - rf))) ** ppy - 1."""
    r, b = _pair(returns, benchmark)
    bt = beta(r, b) if beta_value is None else beta_value
    if r.size < 2 or not math.isfinite(bt):
        return _NAN
    daily = float(np.mean((r - risk_free) - bt * (b - risk_free)))
    return _pow(1.0 + daily, periods_per_year) - 1.0


def tracking_error(returns: Any, benchmark: Any, periods_per_year: float = 252.0) -> float:
    """Annualised sample deviation of the active returns r - b."""
    r, b = _pair(returns, benchmark)
    if r.size < 2:
        return _NAN
    return float(np.std(r - b, ddof=1)) * math.sqrt(periods_per_year)


def information_ratio(returns: Any, benchmark: Any, periods_per_year: float = 252.0) -> float:
    """Annualised mean active return over tracking error: mean / std(ddof=1) x sqrt(ppy)."""
    r, b = _pair(returns, benchmark)
    if r.size < 2:
        return _NAN
    a = r - b
    sd = float(np.std(a, ddof=1))
    # Active returns that are rounding noise of the returns themselves (a curve against a
    # rescaled copy of itself) are no active risk: undefined, not a ratio of two noises.
    if sd <= _REL_NOISE * float(np.max(np.abs(np.concatenate((r, b))))):
        return _NAN
    return _ratio(float(np.mean(a)), sd) * math.sqrt(periods_per_year)


def correlation(returns: Any, benchmark: Any) -> float:
    """Pearson correlation of the returns with the benchmark's."""
    r, b = _pair(returns, benchmark)
    if r.size < 2 or not (_dispersed(r) and _dispersed(b)):
        return _NAN
    rc, bc = r - np.mean(r), b - np.mean(b)
    c = float(np.sum(rc * bc) / math.sqrt(float(np.sum(rc * rc)) * float(np.sum(bc * bc))))
    return max(-1.0, min(1.0, c))


def _session_dates(times: Any) -> pd.DatetimeIndex:
    """Each time's calendar date in its own zone (daily bars are stamped at midnight)."""
    idx = pd.DatetimeIndex(pd.to_datetime(times))
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    return idx.normalize()


def _utc(idx: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def benchmark_levels(frame: pd.DataFrame) -> pd.Series:
    """A total-return level series from a validated OHLCV table of one symbol (time, close,
    optional split and dividend), as the engine books a holding: split first, then the
    dividend per post-split share."""
    f = frame.sort_values("time")
    close = f["close"].to_numpy(dtype=float)
    split = f["split"].to_numpy(dtype=float) if "split" in f else np.ones_like(close)
    div = f["dividend"].to_numpy(dtype=float) if "dividend" in f else np.zeros_like(close)
    growth = np.ones_like(close)
    growth[1:] = split[1:] * (close[1:] + div[1:]) / close[:-1]
    levels = close[0] * np.cumprod(growth) if close.size else close
    return pd.Series(levels, index=pd.DatetimeIndex(f["time"]), name="benchmark")


def align_benchmark(times: Any, levels: pd.Series) -> np.ndarray:
    """The benchmark's return on each of the run's bars (NaN where unknown).

    The level at a bar is the benchmark's on the same date; the first bar's base is the
    benchmark's last level before that date if it is at most a week older. Intraday runs
    (several bars a day) match on the exact time instead."""
    bar_idx = pd.DatetimeIndex(pd.to_datetime(times))
    n = len(bar_idx)
    if n == 0 or levels is None or len(levels) == 0:
        return np.full(n, np.nan)
    lv = pd.Series(np.asarray(levels, dtype=float), index=pd.DatetimeIndex(levels.index))
    bar_dates = _session_dates(bar_idx)
    daily = bar_dates.is_unique
    if daily:
        keys = bar_dates
        lv.index = _session_dates(lv.index)
    else:  # intraday: exact times, compared in UTC (naive times are taken as UTC)
        keys = _utc(bar_idx)
        lv.index = _utc(lv.index)
    lv = lv[~lv.index.duplicated(keep="last")].sort_index()
    lv = lv[np.isfinite(lv.to_numpy()) & (lv.to_numpy() > 0)]
    at = lv.reindex(keys).to_numpy(dtype=float)
    before = lv[lv.index < keys[0]]
    base = _NAN
    if len(before):
        gap = keys[0] - before.index[-1]
        if not daily or gap <= pd.Timedelta(days=_MAX_BASE_GAP_DAYS):
            base = float(before.iloc[-1])
    prev = np.concatenate(([base], at[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return at / prev - 1.0


def load_benchmark(config: PerformanceConfig) -> pd.Series | None:
    """The configured benchmark's total-return levels (None when `benchmark` is "")."""
    if not config.benchmark:
        return None
    from ..feeds.loaders import load_frame

    frame = load_frame(
        config.benchmark_source,
        config.benchmark_path or None,
        symbols=[config.benchmark],
    )
    if "symbol" in frame:
        frame = frame[frame["symbol"] == config.benchmark]
    return benchmark_levels(frame)


# ----------------------------------------------------------------------------- trades


def round_trip_pnls(trades: Iterable[ClosedTrade]) -> np.ndarray:
    """The PnL of each finished round trip (its closing fills summed), in order of the fill
    that took the position back to flat."""
    open_pnl: dict[str, float] = {}
    out: list[float] = []
    for t in trades:
        pnl = open_pnl.pop(t.symbol, 0.0) + t.pnl
        if t.ends_round_trip:
            out.append(pnl)
        else:
            open_pnl[t.symbol] = pnl
    return np.asarray(out, dtype=float)


def win_rate(pnls: Any) -> float:
    p = _arr(pnls)
    return float(np.mean(p > 0)) if p.size else _NAN


def profit_factor(pnls: Any) -> float:
    """Gross profit / gross loss; NaN without a loss."""
    p = _arr(pnls)
    losses = p[p < 0]
    if not losses.size:
        return _NAN
    return float(np.sum(p[p > 0])) / abs(float(np.sum(losses)))


def average_win(pnls: Any) -> float:
    p = _arr(pnls)
    wins = p[p > 0]
    return float(np.mean(wins)) if wins.size else _NAN


def average_loss(pnls: Any) -> float:
    """Mean of the losing PnLs (negative)."""
    p = _arr(pnls)
    losses = p[p < 0]
    return float(np.mean(losses)) if losses.size else _NAN


def annual_turnover(traded_value: float, equity: Any, periods_per_year: float = 252.0) -> float:
    """Traded value (buys + sells) over the mean equity, per year."""
    e = _arr(equity)
    if e.size == 0:
        return _NAN
    mean = float(np.mean(e))
    if not mean > 0:
        return _NAN
    return traded_value / mean * periods_per_year / e.size


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RunRecord:
    """A run as the analysis needs it, whatever it came from."""

    times: pd.DatetimeIndex
    equity: np.ndarray
    initial_capital: float
    gross_exposure: np.ndarray | None = None
    fills: tuple[Fill, ...] = ()
    run_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def _num(row: Mapping[str, Any], key: str, default: float) -> float:
    value = row.get(key)
    return default if value is None else float(value)


def _fill(row: Mapping[str, Any]) -> Fill:
    """A fill from a stored row (the `fills` table's columns; costs default to 0)."""
    t = row.get("time")
    time = pd.Timestamp(t).to_pydatetime() if t is not None else datetime.min
    return Fill(
        fill_id=str(row.get("fill_id", "")),
        client_order_id=str(row.get("client_order_id", "")),
        symbol=str(row["symbol"]),
        side=Side(str(row["side"]).lower()),
        quantity=float(row["quantity"]),
        price=float(row["price"]),
        commission=_num(row, "commission", 0.0),
        slippage=_num(row, "slippage", 0.0),
        time=time,
        reference_price=_num(row, "reference_price", math.nan),
    )


def _fills(fills: Any) -> tuple[Fill, ...]:
    if fills is None:
        return ()
    if isinstance(fills, pd.DataFrame):
        rows: Iterable[Any] = fills.to_dict("records")
    else:
        rows = fills
    return tuple(f if isinstance(f, Fill) else _fill(f) for f in rows)


def _curve(equity: Any, times: Any) -> tuple[pd.DatetimeIndex, np.ndarray]:
    if isinstance(equity, pd.Series):
        return pd.DatetimeIndex(pd.to_datetime(equity.index)), equity.to_numpy(dtype=float)
    e = _arr(equity)
    if times is None:
        raise ValueError("an equity curve without times needs `times` (or pass a pd.Series)")
    return pd.DatetimeIndex(pd.to_datetime(times)), e


def _record(
    equity: Any,
    times: Any,
    initial_capital: Any,
    gross_exposure: Any = None,
    fills: Any = None,
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
) -> RunRecord:
    idx, e = _curve(equity, times)
    if len(idx) != e.size:
        raise ValueError(f"equity ({e.size}) and times ({len(idx)}) differ in length")
    if initial_capital is None:
        raise ValueError("the run's initial_capital is missing (the equity before the first bar)")
    cap = float(initial_capital)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"initial_capital must be positive, got {initial_capital!r}")
    if not np.all(np.isfinite(e)):
        raise ValueError("equity contains NaN or inf")
    gx = None
    if gross_exposure is not None:
        gx = (
            gross_exposure.to_numpy(dtype=float)
            if isinstance(gross_exposure, pd.Series)
            else _arr(gross_exposure)
        )
        if gx.size != e.size:
            raise ValueError(f"gross_exposure ({gx.size}) and equity ({e.size}) differ in length")
    return RunRecord(idx, e, cap, gx, _fills(fills), run_id, dict(extra or {}))


def _from_directory(path: Path) -> RunRecord:
    """A run's record folder as `tradingd backtest` writes it."""
    eq_file = path / "equity.csv"
    if not eq_file.exists():
        raise ValueError(f"{path} is not a run record: it has no equity.csv")
    eq = pd.read_csv(eq_file)
    times = pd.to_datetime(eq["time"], utc=True, format="ISO8601")
    capital = None
    summary: dict[str, Any] = {}
    if (path / "summary.json").exists():
        summary = json.loads((path / "summary.json").read_text())
        capital = summary.get("initial_capital")
    if capital is None and (path / "config.json").exists():
        capital = (
            json.loads((path / "config.json").read_text()).get("run", {}).get("initial_capital")
        )
    fills_file = path / "fills.csv"
    fills = None
    if fills_file.exists() and fills_file.stat().st_size > 0:
        fills = pd.read_csv(fills_file)
        if len(fills):
            fills["time"] = pd.to_datetime(fills["time"], utc=True, format="ISO8601")
    gx = eq.get("gross_exposure")
    return _record(
        eq["equity"].to_numpy(dtype=float),
        times,
        capital,
        None if gx is None else gx.to_numpy(dtype=float),
        fills,
        str(summary.get("run_id", "")),
        {"metrics": summary} if summary else None,
    )


def run_record(backtest_results: Any) -> RunRecord:
    """Normalise what a backtest returns: the `BacktestEngine.run_backtest` dict (or any
    mapping with `equity_curve` as a pd.Series, or an array plus `times`, and
    `initial_capital`; optional `gross_exposure` and `fills`), the engine's
    `BacktestOutcome`, a run record folder (str or Path), or a `stored_run_results` dict."""
    if isinstance(backtest_results, RunRecord):
        return backtest_results
    if isinstance(backtest_results, str | Path):
        return _from_directory(Path(backtest_results))
    if isinstance(backtest_results, Mapping):
        d = backtest_results
        if "equity_curve" not in d:
            raise ValueError(
                "backtest results need an 'equity_curve' (keys given: "
                f"{', '.join(map(str, d)) or 'none'})"
            )
        metrics = d.get("metrics") or {}
        capital = d.get("initial_capital", metrics.get("initial_capital"))
        return _record(
            d["equity_curve"],
            d.get("times"),
            capital,
            d.get("gross_exposure"),
            d.get("fills", d.get("trades")),
            str(d.get("run_id", "")),
            {"metrics": metrics} if metrics else None,
        )
    result = getattr(backtest_results, "result", None)
    summary = getattr(backtest_results, "summary", None)
    if result is not None and isinstance(summary, Mapping):  # backtest.BacktestOutcome
        return _record(
            result.equity,
            result.times,
            summary.get("initial_capital"),
            result.gross_exposure,
            backtest_results.fills,
            str(getattr(backtest_results, "run_id", "")),
            {"metrics": dict(summary)},
        )
    raise TypeError(
        "backtest results must be the dict BacktestEngine.run_backtest returns, a "
        f"BacktestOutcome or a run record folder, got {type(backtest_results).__name__}"
    )


async def stored_run_results(store: Any, run_id: str) -> dict[str, Any]:
    """A run read back from a started store (its `runs`, `equity` and `fills` rows), in the
    shape `BacktestEngine.run_backtest` returns, for `PerformanceAnalyzer`."""
    runs = await store.fetch("runs", run_id)
    if not runs:
        raise ValueError(f"run {run_id!r} is not in this store")
    run = runs[-1]
    equity = await store.fetch("equity", run_id)
    fills = await store.fetch("fills", run_id)
    times = pd.DatetimeIndex([r["time"] for r in equity], name="time")
    return {
        "run_id": run_id,
        "equity_curve": pd.Series(
            [float(r["equity"]) for r in equity], index=times, name="equity", dtype=float
        ),
        "gross_exposure": pd.Series(
            [float(r["gross_exposure"]) for r in equity],
            index=times,
            name="gross_exposure",
            dtype=float,
        ),
        "fills": pd.DataFrame(fills),
        "initial_capital": float(run["initial_capital"]),
        "metrics": run.get("summary") or {},
    }


# ----------------------------------------------------------------------------- analyzer


def _iso(t: Any) -> str | None:
    return None if t is None else pd.Timestamp(t).isoformat()


class PerformanceAnalyzer:
    """The specification's PerformanceAnalyzer over a run (see the module's conventions).

    `config`: a `PerformanceConfig` (default: 2% risk-free rate, 252 bars a year, 95% VaR,
    the bundled S&P 500 index as benchmark). `benchmark`: a level series (prices or an index,
    by time) to use instead of loading the configured one; pass an empty Series for none.
    The configured benchmark is loaded once, on first use."""

    def __init__(
        self, config: PerformanceConfig | None = None, *, benchmark: pd.Series | None = None
    ) -> None:
        self.config = config or PerformanceConfig()
        self._benchmark = benchmark
        self._explicit = self._loaded = benchmark is not None

    # -- the specification's methods ------------------------------------------------------
    def calculate_performance_metrics(self, backtest_results: Any) -> dict[str, float]:
        """Returns, risk-adjusted ratios, benchmark-relative returns and trade statistics."""
        return self._analyze(run_record(backtest_results))["performance"]

    def calculate_risk_metrics(self, backtest_results: Any) -> dict[str, float]:
        """Volatility, downside deviation, drawdowns, VaR / CVaR, beta, tracking error and
        correlation with the benchmark."""
        return self._analyze(run_record(backtest_results))["risk"]

    def analyze_performance(self, backtest_results: Any) -> dict[str, Any]:
        """Both metric sets, the maximum drawdown's dates, the benchmark used, the
        configuration and the run's own summary (`metrics`) when it has one."""
        record = run_record(backtest_results)
        out = self._analyze(record)
        metrics = record.extra.get("metrics")
        if metrics:
            out["summary"] = dict(metrics)
        return out

    # -- internals ------------------------------------------------------------------------
    def benchmark(self) -> pd.Series | None:
        if not self._loaded:
            self._benchmark = load_benchmark(self.config)
            self._loaded = True
        return self._benchmark

    def _analyze(self, rec: RunRecord) -> dict[str, Any]:
        c = self.config
        ppy = float(c.periods_per_year)
        n = int(rec.equity.size)
        cap = rec.initial_capital
        r = simple_returns(rec.equity, cap)
        rf_bar = per_bar_rate(c.risk_free_rate, ppy)
        final = float(rec.equity[-1]) if n else cap
        total = final / cap - 1.0
        annual = _cagr(final / cap, n, ppy)

        periods = drawdown_periods(rec.equity, cap)
        max_dd = max((p.depth for p in periods), default=0.0)
        # The first of the deepest periods: depths equal up to rounding count as a tie, so
        # rescaling the curve does not switch between them.
        deepest = next((p for p in periods if p.depth >= max_dd * (1 - 1e-9)), None)

        levels = self.benchmark()
        b = align_benchmark(rec.times, levels) if levels is not None else np.full(n, np.nan)
        both = np.isfinite(r) & np.isfinite(b)
        rb, bb = r[both], b[both]
        nb = int(both.sum())
        bench_annual = annual_return(bb, ppy) if nb else _NAN
        strat_annual = annual_return(rb, ppy) if nb else _NAN
        bt = beta(rb, bb)

        pnls = round_trip_pnls(closed_trades(rec.fills))
        gx = rec.gross_exposure
        commission = float(sum(f.commission for f in rec.fills))
        slippage = float(sum(f.slippage for f in rec.fills))
        traded = float(sum(abs(f.notional) for f in rec.fills))

        performance: dict[str, float] = {
            "bars": n,
            "initial_capital": cap,
            "final_equity": final,
            "total_return": total,
            "annual_return": annual,
            "risk_free_rate": float(c.risk_free_rate),
            "excess_return_risk_free": annual - c.risk_free_rate,
            "benchmark_bars": nb,
            "benchmark_total_return": total_return(bb) if nb else _NAN,
            "benchmark_annual_return": bench_annual,
            "excess_return": strat_annual - bench_annual,
            "alpha": alpha(rb, bb, rf_bar, ppy, beta_value=bt),
            "sharpe": sharpe_ratio(r, rf_bar, ppy),
            "sortino": sortino_ratio(r, rf_bar, ppy),
            "calmar": calmar_ratio(annual, max_dd),
            "information_ratio": information_ratio(rb, bb, ppy),
            "round_trips": int(pnls.size),
            "win_rate": win_rate(pnls),
            "profit_factor": profit_factor(pnls),
            "avg_win": average_win(pnls),
            "avg_loss": average_loss(pnls),
            "exposure": float(np.mean(gx)) if gx is not None and n else _NAN,
            "time_in_market": float(np.mean(gx > 0)) if gx is not None and n else _NAN,
            "annual_turnover": annual_turnover(traded, rec.equity, ppy),
            "commission_paid": commission,
            "slippage_paid": slippage,
            "costs_paid": commission + slippage,
        }
        tail = c.tail
        risk: dict[str, float] = {
            "annual_volatility": annual_volatility(r, ppy),
            "downside_deviation": downside_deviation(r, rf_bar, ppy) if n else _NAN,
            "max_drawdown": max_dd,
            "max_drawdown_duration_bars": max((p.duration for p in periods), default=0),
            "deepest_drawdown_duration_bars": deepest.duration if deepest else 0,
            "var_confidence": float(c.var_confidence),
            "var_historical": var_historical(r, tail),
            "cvar_historical": cvar_historical(r, tail),
            "var_parametric": var_parametric(r, tail),
            "cvar_parametric": cvar_parametric(r, tail),
            "beta": bt,
            "tracking_error": tracking_error(rb, bb, ppy),
            "correlation": correlation(rb, bb),
        }

        def when(i: int | None) -> str | None:
            if i is None or i < 0:
                return None
            return _iso(rec.times[i])

        peak = None
        if deepest is not None:
            peak = "initial capital" if deepest.peak < 0 else when(deepest.peak)
        drawdown: dict[str, Any] = {
            "max_drawdown": max_dd,
            "peak": peak,
            "trough": when(deepest.trough) if deepest else None,
            "recovery": when(deepest.recovery) if deepest else None,
            "recovered": deepest.recovered if deepest else True,
            "duration_bars": deepest.duration if deepest else 0,
            "periods": len(periods),
        }
        bench_times = rec.times[both]
        has_benchmark = levels is not None and len(levels) > 0
        benchmark_info: dict[str, Any] = {
            "name": ("given series" if self._explicit else c.benchmark) if has_benchmark else "",
            "source": ("argument" if self._explicit else c.benchmark_source)
            if has_benchmark
            else "",
            "path": "" if self._explicit else c.benchmark_path,
            "bars": nb,
            "first": _iso(bench_times[0]) if nb else None,
            "last": _iso(bench_times[-1]) if nb else None,
        }
        if has_benchmark and nb < n:
            log.warning(
                "analysis.benchmark_partial",
                bars=n,
                benchmark_bars=nb,
                benchmark=benchmark_info["name"],
                detail="benchmark-relative metrics use only the bars both series have",
            )
        clean = {
            "performance": {k: _clean(v) for k, v in performance.items()},
            "risk": {k: _clean(v) for k, v in risk.items()},
        }
        return {
            "run_id": rec.run_id,
            "start": _iso(rec.times[0]) if n else None,
            "end": _iso(rec.times[-1]) if n else None,
            **clean,
            "drawdown": drawdown,
            "benchmark": benchmark_info,
            "config": dataclasses.asdict(c),
        }


def _clean(v: float | int) -> float | int:
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return int(v)
    f = float(v)
    return f if math.isfinite(f) else _NAN
