"""Tests of a run's returns beyond the Sharpe ratio: is the mean return positive
(Student and Newey-West), are the returns normal (Jarque-Bera), do they or their squares
remember (Ljung-Box, and a heteroskedasticity-robust test), and is the max drawdown deeper
than the resampled paths explain. Pure functions of arrays (docs/VALIDATION.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from .stat_common import (
    _empty_test,
    _finite,
    _lags,
    _long_run_covariance,
    _moments,
    _p_value,
    _reject,
    _usable,
    _varies,
)

__all__ = [
    "drawdown_test",
    "jarque_bera_test",
    "ljung_box_test",
    "mean_return_test",
    "robust_autocorrelation_test",
]

_NAN = math.nan


def mean_return_test(
    returns: Any,
    *,
    alternative: str = "greater",
    alpha: float = 0.05,
    hac_lags: int = -1,
    periods_per_year: float = 252.0,
) -> dict[str, Any]:
    """H0: the mean per-bar return is 0 (<= 0 for "greater"). Student's one-sample t-test
    (scipy.stats.ttest_1samp), with the two-sided 1 - alpha confidence interval of the mean,
    and the same test with a Newey-West standard error (`hac_*`, p-value from t(n - 1))."""
    r = _finite(returns)
    n = int(r.size)
    null = {"greater": "mean return <= 0", "less": "mean return >= 0"}.get(
        alternative, "mean return = 0"
    )
    ref = "Student (1908); Newey & West (1987)"
    if not _usable(r, 3) or not _varies(r):
        return _empty_test(null, ref, n=n, significant=False, mean=_NAN)
    res = stats.ttest_1samp(r, 0.0, alternative=alternative)
    mean = float(np.mean(r))
    se = float(np.std(r, ddof=1)) / math.sqrt(n)
    q = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1))
    lags = _lags(n, hac_lags)
    hac_var = float(_long_run_covariance(r, lags)[0, 0]) / n
    hac_se = math.sqrt(hac_var) if hac_var > 0 else _NAN
    hac_z = mean / hac_se if hac_se > 0 else _NAN
    hac_p = _p_value(hac_z, alternative, df=n - 1)  # t(n - 1): see sharpe_ratio_test
    p = float(res.pvalue)
    return {
        "null": null,
        "alternative": alternative,
        "n": n,
        "mean": mean,
        "annual_mean": mean * periods_per_year,
        "statistic": float(res.statistic),
        "p_value": p,
        "reject": _reject(p, alpha),
        "significant": _reject(p, alpha),
        "standard_error": se,
        "confidence_interval": [mean - q * se, mean + q * se],
        "confidence": 1.0 - alpha,
        "hac_lags": lags,
        "hac_standard_error": hac_se,
        "hac_statistic": hac_z,
        "hac_p_value": hac_p,
        "hac_reject": _reject(hac_p, alpha),
        "reference": ref,
    }


def jarque_bera_test(returns: Any, *, alpha: float = 0.05) -> dict[str, Any]:
    """H0: the returns are normal (skewness 0, kurtosis 3): scipy.stats.jarque_bera,
    chi-squared with 2 degrees of freedom (asymptotic)."""
    r = _finite(returns)
    null, ref = "returns are normally distributed", "Jarque & Bera (1980)"
    if not _usable(r, 3) or not _varies(r):
        return _empty_test(null, ref, n=int(r.size))
    res = stats.jarque_bera(r)
    skew, kurt = _moments(r)
    p = float(res.pvalue)
    return {
        "null": null,
        "n": int(r.size),
        "statistic": float(res.statistic),
        "p_value": p,
        "reject": _reject(p, alpha),
        "skewness": skew,
        "kurtosis": kurt,
        "reference": ref,
    }


def ljung_box_test(
    returns: Any, *, lags: int = 10, squared: bool = False, alpha: float = 0.05
) -> dict[str, Any]:
    """H0: no autocorrelation up to `lags` (statsmodels' acorr_ljungbox, chi-squared with
    `lags` degrees of freedom). `squared` tests the squared demeaned returns instead
    (McLeod & Li 1983): no volatility clustering. Uses min(lags, n // 5) lags."""
    r = _finite(returns)
    what = "squared returns" if squared else "returns"
    null = f"no autocorrelation of the {what}"
    ref = "Ljung & Box (1978)" + ("; McLeod & Li (1983)" if squared else "")
    k = min(int(lags), int(r.size) // 5)
    if not _usable(r, 10) or k < 1 or not _varies(r):
        return _empty_test(null, ref, n=int(r.size), lags=k)
    from statsmodels.stats.diagnostic import acorr_ljungbox

    x = (r - np.mean(r)) ** 2 if squared else r
    if not _varies(x):
        return _empty_test(null, ref, n=int(r.size), lags=k)
    res = acorr_ljungbox(x, lags=[k], return_df=True)
    stat, p = float(res["lb_stat"].iloc[-1]), float(res["lb_pvalue"].iloc[-1])
    return {
        "null": null,
        "n": int(r.size),
        "lags": k,
        "statistic": stat,
        "p_value": p,
        "reject": _reject(p, alpha),
        "reference": ref,
    }


def robust_autocorrelation_test(
    returns: Any, *, lags: int = 10, alpha: float = 0.05
) -> dict[str, Any]:
    """H0: no autocorrelation up to `lags`, allowing for conditional heteroskedasticity.

    Ljung-Box assumes IID returns under H0, so volatility clustering (or a strategy that is
    flat part of the time) makes it reject uncorrelated returns far too often. This is the
    heteroskedasticity-robust Box-Pierce statistic of Lobato, Nankervis & Savin (2001) for
    returns that are a martingale difference: Q = c' V^-1 c, c_k = sum_t x_t x_{t-k} and
    V_jk = sum_t x_t^2 x_{t-j} x_{t-k} (x demeaned, t from `lags` on), chi-squared with
    `lags` degrees of freedom. It is the LM form of White's (1980) robust test that the
    coefficients of the regression of x_t on its lags are 0 (n R^2 of regressing 1 on
    x_t x_{t-k}, Wooldridge 1990). Uses min(lags, n // 5) lags."""
    r = _finite(returns)
    null = "no autocorrelation of the returns (heteroskedasticity allowed)"
    ref = "Lobato, Nankervis & Savin (2001); White (1980)"
    k = min(int(lags), int(r.size) // 5)
    if not _usable(r, 10) or k < 1 or not _varies(r):
        return _empty_test(null, ref, n=int(r.size), lags=k)
    x = r - np.mean(r)
    y = x[k:]
    lagged = np.column_stack([x[k - j : x.size - j] for j in range(1, k + 1)])
    z = lagged * y[:, None]
    c = z.sum(axis=0)
    v = z.T @ z
    try:
        q = float(c @ np.linalg.solve(v, c))
    except np.linalg.LinAlgError:
        return _empty_test(null, ref, n=int(r.size), lags=k)
    p = float(stats.chi2.sf(q, k)) if math.isfinite(q) else _NAN
    return {
        "null": null,
        "n": int(r.size),
        "lags": k,
        "statistic": q,
        "p_value": p,
        "reject": _reject(p, alpha),
        "reference": ref,
    }


# ----------------------------------------------------------------------------- drawdown


def drawdown_test(
    observed: float, bootstrap: Any, *, alpha: float = 0.05, method: str = ""
) -> dict[str, Any]:
    """H0: the run's maximum drawdown is what its own return distribution produces. p =
    (1 + #{bootstrap max drawdown >= observed}) / (paths + 1): small when the drawdown is
    deeper than nearly every resampled path's (bad luck, a regime change, or dependence
    the resampling does not keep)."""
    b = np.asarray(bootstrap, dtype=float)
    null = "the max drawdown is not larger than the bootstrap distribution explains"
    ref = "Efron (1979); Politis & Romano (1994)"
    if not math.isfinite(observed) or b.size == 0 or not np.all(np.isfinite(b)):
        return _empty_test(null, ref, method=method, paths=int(b.size))
    if np.min(b) == np.max(b) == observed:
        # Every path the same as the run (a run that never traded: all 0): nothing to test,
        # NaN as the other tests give for no dispersion, not p = 1.
        return _empty_test(null, ref, method=method, paths=int(b.size))
    p = float((1 + np.sum(b >= observed)) / (b.size + 1))
    return {
        "null": null,
        "method": method,
        "paths": int(b.size),
        "statistic": float(observed),
        "p_value": p,
        "reject": _reject(p, alpha),
        "bootstrap_median": float(np.median(b)),
        "bootstrap_p95": float(np.percentile(b, 95.0)),
        "reference": ref,
    }
