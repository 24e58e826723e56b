"""Performance and risk analysis of a run: the specification's `PerformanceAnalyzer`.

Conventions (docs/ANALYSIS.md has the table with formulas, empyrical's differences and the
test tolerances). They extend those of `metrics.py`, whose summary they agree with:

* Returns are *simple* per-bar returns r_t = E_t / E_{t-1} - 1 of the equity curve (bar
  closes), never log returns, for every metric, as empyrical computes them. The first one is
  against the initial capital (the equity *before* the first bar), so n bars give n returns
  and their product is the total return. A return after a non-positive equity is NaN, and
  every ratio of such a run (a leveraged wipe-out) is NaN.
* A year is `periods_per_year` bars: the configuration's when it sets one, else the run's
  own (the `periods_per_year` an intraday backtest's summary records: 252 sessions of its
  bars), else 252 (trading days; `run_records.periods_per_year_for`). With 252 written for
  it, annualisation is compound growth for
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

The metric functions live in `return_metrics` and `trade_metrics`, the benchmark's loading
and alignment in `benchmark` and the reading of a run's shapes in `run_records`; this module
holds the configuration and the analyzer, and re-exports them all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError
from .benchmark import (
    BENCHMARK_SOURCES,
    align_benchmark,
    benchmark_curve,
    benchmark_levels,
    level_curve,
    level_returns,
    levels_at,
    load_benchmark,
)
from .metrics import closed_trades
from .return_metrics import (
    DrawdownPeriod,
    _cagr,
    alpha,
    annual_return,
    annual_volatility,
    beta,
    calmar_ratio,
    check_annual_rate,
    correlation,
    cvar_historical,
    cvar_parametric,
    downside_deviation,
    drawdown_periods,
    information_ratio,
    max_drawdown,
    per_bar_rate,
    sharpe_ratio,
    simple_returns,
    sortino_ratio,
    total_return,
    tracking_error,
    var_historical,
    var_parametric,
)
from .run_records import (
    DEFAULT_PERIODS_PER_YEAR,
    RunRecord,
    periods_per_year_for,
    run_record,
    stored_run_results,
)
from .trade_metrics import (
    annual_turnover,
    average_loss,
    average_win,
    profit_factor,
    round_trip_pnls,
    win_rate,
)

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
    "benchmark_curve",
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

_NAN = math.nan


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PerformanceConfig:
    """What the analysis assumes. `benchmark` is a symbol ("" for no benchmark) of
    `benchmark_source`: "bundled" (the S&P 500 "SP500" and NASDAQ Composite "NASDAQ" index
    series shipped with `arch`), or "csv" / "parquet" with `benchmark_path` (a file or a
    folder, in the loaders' layouts)."""

    risk_free_rate: float = 0.02  # annual, the specification's
    # None: the run's own (its summary's, an intraday backtest's 252 sessions of its bars),
    # else 252. Set, it is used whatever the run's (a warning says when they differ).
    periods_per_year: float | None = None
    var_confidence: float = 0.95
    benchmark: str = "SP500"
    benchmark_source: str = "bundled"
    benchmark_path: str = ""
    # strftime of the benchmark file's text dates ("" infers them), as data.date_format is
    # the data's: a day-first benchmark file had no way to say so.
    benchmark_date_format: str = ""

    def __post_init__(self) -> None:
        for key in ("risk_free_rate", "periods_per_year", "var_confidence"):
            value = getattr(self, key)
            if key == "periods_per_year" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"analysis.{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"analysis.{key} must be finite, got {value!r}")
        check_annual_rate("analysis.risk_free_rate", self.risk_free_rate)
        if not self.bars_a_year > 0:
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
        if self.benchmark_date_format:
            from ..feeds.validate import check_date_format

            check_date_format(self.benchmark_date_format, "analysis.benchmark_date_format")
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

    @property
    def bars_a_year(self) -> float:
        """`periods_per_year`, or 252 where it is left to a run and there is none (a walk-
        forward's stitched curve, returns of no run)."""
        return DEFAULT_PERIODS_PER_YEAR if self.periods_per_year is None else self.periods_per_year

    def for_run(self, run: RunRecord | None) -> PerformanceConfig:
        """This configuration with the bars a year to annualise `run` with
        (`periods_per_year_for`): what the analysis of a run uses and reports."""
        ppy = periods_per_year_for(self.periods_per_year, run, "analysis.periods_per_year")
        return dataclasses.replace(self, periods_per_year=ppy)


# ----------------------------------------------------------------------------- analyzer


def _iso(t: Any) -> str | None:
    return None if t is None else pd.Timestamp(t).isoformat()


class PerformanceAnalyzer:
    """The specification's PerformanceAnalyzer over a run (see the module's conventions).

    `config`: a `PerformanceConfig` (default: 2% risk-free rate, the run's own bars a year
    (252 for daily bars), 95% VaR, the bundled S&P 500 index as benchmark). `benchmark`: a
    level series (prices or an index, by time) to use instead of loading the configured
    one; pass an empty Series for none. The configured benchmark is loaded once, on first
    use."""

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
        c = self.config.for_run(rec)
        ppy = c.bars_a_year
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
        # The levels at the bars once: their returns, and the growth over the run from them.
        at, base = levels_at(rec.times, levels)
        b = level_returns(at, base)
        # A ruined run's returns are NaN from the ruin on (equity <= 0): its bars are kept, so
        # every ratio against the benchmark is NaN, as ANALYSIS.md says; dropping them left a
        # beta of 36 from the bars before the ruin.
        ruined = not np.all(np.isfinite(r))
        both = np.isfinite(b) & (ruined | np.isfinite(r))
        rb, bb = r[both], b[both]
        nb = int(both.sum())
        bench_annual = annual_return(bb, ppy) if nb else _NAN
        curve = level_curve(at, base, 1.0)
        seen = curve[np.isfinite(curve)]
        bench_growth = float(seen[-1]) if seen.size else _NAN
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
            # From the levels over the run (the last carried over a missing day), as the
            # report's benchmark line: the compounded known returns lost a missing day's move.
            "benchmark_total_return": bench_growth - 1.0 if nb else _NAN,
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
            # A run that starts on the benchmark's first day has no benchmark return for
            # its first bar (no earlier level to compare with): every run on the bundled
            # data does. Only other bars missing are news.
            first_only = nb == n - 1 and not np.isfinite(b[0])
            (log.info if first_only else log.warning)(
                "analysis.benchmark_partial",
                bars=n,
                benchmark_bars=nb,
                benchmark=benchmark_info["name"],
                detail="benchmark-relative metrics use only the bars both series have"
                + ("; the first bar has no earlier benchmark level" if first_only else ""),
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
