"""What the statistical tests of `validation` share: the names of the tests, the shape of
a result (null hypothesis, statistic, p-value, reject), the input checks, the Newey-West
long-run covariance and the sample moments. One place, so that the test modules
(`sharpe_tests`, `return_tests`, `var_backtests`), the trial count and the validator treat
input, NaN and rejection alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["HEADLINE", "TESTS", "newey_west_lags"]

# Tests by name, in report order. "sharpe_ratio" is the headline.
TESTS = (
    "sharpe_ratio",
    "sharpe_ratio_t",
    "mean_return",
    "mean_return_hac",
    "jarque_bera",
    "ljung_box",
    "ljung_box_squared",
    "autocorrelation_robust",
    "var_kupiec",
    "var_christoffersen",
    "expected_shortfall",
    "drawdown",
    "probabilistic_sharpe",
    "deflated_sharpe",
)
HEADLINE = "sharpe_ratio"
_NAN = math.nan


def _clean(v: Any) -> Any:
    """Plain JSON-able Python values (NaN stays a float NaN, as in PerformanceAnalyzer)."""
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_clean(x) for x in v]
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        f = float(v)
        return f if math.isfinite(f) else _NAN
    return v


def _finite(returns: Any, what: str = "returns") -> np.ndarray:
    try:
        r = np.asarray(returns, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers") from None
    if r.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {r.shape}")
    return r


def _usable(r: np.ndarray, min_size: int) -> bool:
    return r.size >= min_size and bool(np.all(np.isfinite(r)))


def _dispersion(mean: float, sd: float) -> bool:
    """Whether a deviation is more than rounding noise around the mean (a constant series
    computes a deviation of ~1e-17, and every ratio of it would be noise)."""
    return sd > 0.0 and sd > 1e-10 * abs(mean)


def _varies(x: np.ndarray) -> bool:
    return _dispersion(float(np.mean(x)), float(np.std(x)))


def _p_value(z: float, alternative: str, df: float | None = None) -> float:
    """The p-value of `z` under the normal, or Student's t with `df` degrees of freedom."""
    if not math.isfinite(z):
        return _NAN
    dist = stats.norm if df is None else stats.t(df)
    if alternative == "greater":
        return float(dist.sf(z))
    if alternative == "less":
        return float(dist.cdf(z))
    return float(2.0 * dist.sf(abs(z)))


def _reject(p: float, alpha: float) -> bool:
    return bool(math.isfinite(p) and p < alpha)


def newey_west_lags(n: int) -> int:
    """Newey & West's (1994) rule of thumb, floor(4 (n / 100) ** (2 / 9)), statsmodels'
    default; at most n - 1."""
    if n < 2:
        return 0
    return min(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)), n - 1)


def _lags(n: int, hac_lags: int) -> int:
    return newey_west_lags(n) if hac_lags < 0 else min(hac_lags, max(n - 1, 0))


def _long_run_covariance(moments: np.ndarray, lags: int) -> np.ndarray:
    """Newey-West (Bartlett) long-run covariance of the columns' sample means, times n."""
    from statsmodels.stats.sandwich_covariance import S_hac_simple

    m = np.asarray(moments, dtype=float)
    if m.ndim == 1:
        m = m[:, None]
    centred = m - m.mean(axis=0)
    return np.atleast_2d(S_hac_simple(centred, nlags=lags)) / m.shape[0]


def _empty_test(null: str, reference: str, **extra: Any) -> dict[str, Any]:
    return {
        "null": null,
        "statistic": _NAN,
        "p_value": _NAN,
        "reject": False,
        "reference": reference,
        **extra,
    }


def _moments(r: np.ndarray) -> tuple[float, float]:
    """Population skewness and (non-excess) kurtosis, as Bailey & Lopez de Prado use."""
    return float(stats.skew(r, bias=True)), float(stats.kurtosis(r, fisher=False, bias=True))
