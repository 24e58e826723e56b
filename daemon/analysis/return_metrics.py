"""Metric functions of a run's per-bar returns and equity curve: growth and volatility,
the risk-adjusted ratios, drawdowns, tail risk (VaR and CVaR) and the benchmark-relative
metrics (beta, alpha, tracking error, information ratio, correlation).

Pure functions of arrays, apart from `PerformanceAnalyzer`, so that the analyzer, the Monte
Carlo, the validator, the attribution and the reports compute each number the same way. The
conventions (simple returns, annualisation, sample deviations, NaN for an undefined metric)
are those of `performance` and docs/ANALYSIS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from .metrics import _REL_NOISE, _ratio, calmar_ratio, drawdown_series

__all__ = [
    "DrawdownPeriod",
    "alpha",
    "annual_return",
    "annual_volatility",
    "beta",
    "calmar_ratio",
    "correlation",
    "cvar_historical",
    "cvar_parametric",
    "downside_deviation",
    "drawdown_periods",
    "information_ratio",
    "max_drawdown",
    "per_bar_rate",
    "sharpe_ratio",
    "simple_returns",
    "sortino_ratio",
    "total_return",
    "tracking_error",
    "var_historical",
    "var_parametric",
]

_NAN = math.nan


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


# The largest annual risk-free rate taken as meant: above it (or below its negative) it is
# a percentage written where a fraction is expected, as costs refuse 1.5 for 0.15%. A 2
# meant as 2% was 200% a year (every Sharpe ratio deeply negative, the verdicts with it).
MAX_ANNUAL_RATE = 0.5


def check_annual_rate(key: str, value: float) -> None:
    """Refuses a risk-free rate outside [-MAX_ANNUAL_RATE, MAX_ANNUAL_RATE] (`key` names the
    setting), with the fraction meant when it reads as a percentage."""
    if -MAX_ANNUAL_RATE <= value <= MAX_ANNUAL_RATE:
        return
    hint = ""
    if abs(value) / 100.0 <= MAX_ANNUAL_RATE:
        hint = f"; for {value:g}% write {value / 100.0:g}"
    raise ConfigError(
        f"{key} = {value!r} is invalid: must be an annual rate as a fraction in "
        f"[-{MAX_ANNUAL_RATE:g}, {MAX_ANNUAL_RATE:g}] (0.02 = 2% a year){hint}"
    )


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


# ----------------------------------------------------------------------------- tail risk


def var_historical(returns: Any, tail: float = 0.05) -> float:
    """One-bar loss not exceeded with probability 1 - tail: -percentile(r, 100 x tail)."""
    r = _finite_returns(returns, 1)
    if r is None:
        return _NAN
    return -float(np.percentile(r, 100.0 * tail)) + 0.0  # + 0.0: a flat run's 0, not -0.0


def cvar_historical(returns: Any, tail: float = 0.05) -> float:
    """Mean loss of the floor((n - 1) x tail) + 1 worst bars (empyrical's tail)."""
    r = _finite_returns(returns, 1)
    if r is None:
        return _NAN
    k = int((r.size - 1) * tail)
    return -float(np.mean(np.partition(r, k)[: k + 1])) + 0.0


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
    return -(mu + z * sigma) + 0.0


def cvar_parametric(returns: Any, tail: float = 0.05) -> float:
    """Normal expected shortfall: -(mu - sigma phi(z) / tail)."""
    p = _normal(returns, tail)
    if p is None:
        return _NAN
    mu, sigma, z = p
    return -(mu - sigma * NormalDist().pdf(z) / tail) + 0.0


# ----------------------------------------------------------------------------- benchmark-relative


def _pair(returns: Any, benchmark: Any) -> tuple[np.ndarray, np.ndarray]:
    """The bars where the benchmark is known (it may lack some), or none at all when a return
    is NaN: the run was ruined (equity <= 0) and every ratio is NaN. The bars after the ruin
    were dropped before, and the rest gave a beta of 36."""
    r, b = _arr(returns), _arr(benchmark)
    if r.size != b.size:
        raise ValueError(f"returns ({r.size}) and benchmark ({b.size}) differ in length")
    if not np.all(np.isfinite(r)):
        return np.zeros(0), np.zeros(0)
    ok = np.isfinite(b)
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
