"""Is a backtest's result more than luck? The specification's `StatisticalValidator`.

Every test takes the run's per-bar simple returns (docs/ANALYSIS.md conventions) and gives a
dict with its null hypothesis, statistic, p-value and whether the null is rejected at
`alpha`. docs/VALIDATION.md has each method, its reference and its calibration. In short:

* Sharpe ratio (the headline): H0 "Sharpe ratio <= 0" against "> 0" (configurable). The
  standard error is Opdyke's (2007) delta-method one, with the moment covariance estimated
  by Newey-West (Bartlett kernel) as Lo (2002) does for non-IID returns: it allows fat
  tails, skewness and serial dependence, reduces to Mertens (2002) for IID returns (lags
  = 0) and to Lo's sqrt((1 + SR^2 / 2) / n) for IID normal ones (both also reported). The
  plain t-test of the excess returns (scipy's `ttest_1samp`) is reported next to it.
* Mean return: Student's t-test (scipy) and a Newey-West version.
* Jarque-Bera (scipy) and Ljung-Box (statsmodels), on the returns and on their squares
  (McLeod & Li 1983: volatility clustering). Ljung-Box assumes IID returns and rejects
  uncorrelated heteroskedastic ones far too often, so a heteroskedasticity-robust test of
  autocorrelation (Lobato, Nankervis & Savin 2001) is given beside it.
* VaR backtest: each day's historical VaR forecast uses only the returns before it (an
  expanding window by default, or rolling); Kupiec's (1995) proportion-of-failures test and
  Christoffersen's (1998) independence test of the hits (exact conditional p-value).
* Expected shortfall backtest: Acerbi & Szekely's (2014) Z2 statistic with its p-value
  simulated under the forecast distributions (each day's historical window).
* Drawdown: the run's maximum drawdown against those of its own days in other orders (or of
  bootstrapped paths, `montecarlo`): a drawdown deeper than the returns explain.
* Probabilistic Sharpe ratio (Bailey & Lopez de Prado 2012) and deflated Sharpe ratio
  (Bailey & Lopez de Prado 2014), the latter for the number of strategy variants tried,
  which the run records give (`count_trials`) or the configuration states.

Numbers that cannot be computed (too few bars, no dispersion) are NaN and their tests do not
reject; malformed input raises ValueError. Everything random is seeded.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special, stats

from ..core.errors import ConfigError
from .montecarlo import (
    DEFAULT_METHODS,
    MapFn,
    MonteCarloConfig,
    MonteCarloInput,
    _is_returns,
    monte_carlo_input,
    simulate_with_paths,
)
from .performance import per_bar_rate, run_record, simple_returns

__all__ = [
    "ALTERNATIVES",
    "DEFAULT_IGNORED_CONFIG",
    "TESTS",
    "StatisticalValidator",
    "TrialCount",
    "ValidationConfig",
    "calibration",
    "christoffersen_independence",
    "clopper_pearson",
    "config_hash",
    "count_trials",
    "deflated_sharpe_ratio",
    "drawdown_test",
    "es_backtest_z2",
    "expected_max_sharpe",
    "historical_var_es",
    "independence_null_distribution",
    "jarque_bera_test",
    "kupiec_pof",
    "ljung_box_test",
    "mean_return_test",
    "newey_west_lags",
    "null_strategy_returns",
    "probabilistic_sharpe_ratio",
    "robust_autocorrelation_test",
    "sharpe_ratio_test",
    "sharpe_standard_error",
]

ALTERNATIVES = ("greater", "two-sided", "less")
DRAWDOWN_METHODS = ("permutation", "stationary", "iid")
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
EULER_GAMMA = float(np.euler_gamma)
_NAN = math.nan

# Parts of a run's config.json that do not make it another strategy variant: where it is
# written, its name, the database, caches, logs, alerts, health port and live-only settings.
DEFAULT_IGNORED_CONFIG: tuple[str, ...] = (
    "run.name",
    "run.run_id",
    "run.output_dir",
    "storage",
    "cache",
    "log",
    "alerts",
    "health",
    "live",
)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ValidationConfig:
    """What the validator assumes and how hard it looks.

    `trials` = 0: the number of strategy variants tried is counted from the run records
    (`runs_root`, or the folder holding the validated run's folder), else 1.
    `trials_sharpe_variance` is the variance of the trials' *annualised* Sharpe ratios; 0:
    from the run records when at least two variants have an equity curve, else the
    estimation noise alone, 1 / (n - 1) per bar. `hac_lags` = -1: Newey-West's
    floor(4 (n / 100) ** (2 / 9)). `var_window` = 0: an expanding VaR window from
    `var_min_history` bars (the default: a rolling historical quantile corrects itself after
    each hit and made Kupiec's test reject 0.3% of correct forecasts instead of 5%);
    otherwise a rolling window of that many bars. `drawdown_method`: the resampling the
    drawdown test compares with ("permutation", exact when days are exchangeable)."""

    alpha: float = 0.05
    alternative: str = "greater"
    risk_free_rate: float = 0.02
    periods_per_year: float = 252.0
    sharpe_benchmark: float = 0.0  # annualised: the Sharpe ratio the PSR is measured against
    hac_lags: int = -1
    ljung_box_lags: int = 10
    var_confidence: float = 0.95
    var_window: int = 0
    var_min_history: int = 250
    es_simulations: int = 1000
    paths: int = 1000
    seed: int = 1
    block_length: float = 0.0
    chunk_size: int = 250
    drawdown_method: str = "permutation"
    trials: int = 0
    trials_sharpe_variance: float = 0.0
    runs_root: str = ""

    def __post_init__(self) -> None:
        ints = (
            "hac_lags",
            "ljung_box_lags",
            "var_window",
            "var_min_history",
            "es_simulations",
            "paths",
            "seed",
            "chunk_size",
            "trials",
        )
        for key in ints:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"validation.{key} must be an integer, got {value!r}")
        floats = (
            "alpha",
            "risk_free_rate",
            "periods_per_year",
            "sharpe_benchmark",
            "var_confidence",
            "block_length",
            "trials_sharpe_variance",
        )
        for key in floats:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"validation.{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"validation.{key} must be finite, got {value!r}")
        checks = (
            (0 < self.alpha < 0.5, "alpha", "in (0, 0.5)"),
            (self.alternative in ALTERNATIVES, "alternative", f"one of {ALTERNATIVES}"),
            (self.risk_free_rate > -1, "risk_free_rate", "> -1"),
            (self.periods_per_year > 0, "periods_per_year", "> 0"),
            (self.hac_lags >= -1, "hac_lags", ">= 0, or -1 for automatic"),
            (self.ljung_box_lags >= 1, "ljung_box_lags", ">= 1"),
            (0.5 <= self.var_confidence < 1, "var_confidence", "in [0.5, 1)"),
            (self.var_window == 0 or self.var_window >= 20, "var_window", "0 or >= 20"),
            (self.var_min_history >= 20, "var_min_history", ">= 20"),
            (self.es_simulations >= 1, "es_simulations", ">= 1"),
            (self.paths >= 1, "paths", ">= 1"),
            (self.seed >= 0, "seed", ">= 0"),
            (self.block_length == 0 or self.block_length >= 1, "block_length", "0 or >= 1"),
            (self.chunk_size >= 1, "chunk_size", ">= 1"),
            (self.drawdown_method in DRAWDOWN_METHODS, "drawdown_method", str(DRAWDOWN_METHODS)),
            (self.trials >= 0, "trials", ">= 0 (0 = from the run records)"),
            (self.trials_sharpe_variance >= 0, "trials_sharpe_variance", ">= 0"),
        )
        for ok, key, what in checks:
            if not ok:
                raise ConfigError(f"validation.{key} = {getattr(self, key)!r} must be {what}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "validation") -> ValidationConfig:
        """From a TOML table (unknown keys and bad types are ConfigErrors naming the key)."""
        from ..config import build

        return build(cls, data, where)

    @property
    def tail(self) -> float:
        return round(1.0 - self.var_confidence, 12)

    @property
    def rf_bar(self) -> float:
        return per_bar_rate(self.risk_free_rate, self.periods_per_year)

    def monte_carlo(self, methods: Sequence[str] | None = None) -> MonteCarloConfig:
        """The Monte Carlo the validator runs: `methods`, or the default resamplings plus
        the drawdown test's."""
        if methods is None:
            methods = DEFAULT_METHODS + tuple(
                m for m in (self.drawdown_method,) if m not in DEFAULT_METHODS
            )
        return MonteCarloConfig(
            paths=self.paths,
            seed=self.seed,
            block_length=float(self.block_length),
            chunk_size=self.chunk_size,
            methods=tuple(methods),
            risk_free_rate=float(self.risk_free_rate),
            periods_per_year=float(self.periods_per_year),
        )


# ----------------------------------------------------------------------------- helpers


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


def _p_value(z: float, alternative: str) -> float:
    if not math.isfinite(z):
        return _NAN
    if alternative == "greater":
        return float(stats.norm.sf(z))
    if alternative == "less":
        return float(stats.norm.cdf(z))
    return float(2.0 * stats.norm.sf(abs(z)))


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


# ----------------------------------------------------------------------------- Sharpe ratio


def sharpe_standard_error(excess: Any, lags: int = 0) -> float:
    """Standard error of the per-bar Sharpe ratio mu / sigma of `excess` returns.

    Opdyke (2007): the delta method on the first two raw moments, Var(SR) = g' Gamma g / n
    with g = (m2 / sigma^3, -mu / (2 sigma^3)), Gamma the long-run covariance of (x, x^2)
    by Newey-West with `lags` (0 = IID, where this is exactly Mertens' (2002)
    (1 + SR^2 / 2 - skew SR + (kurt - 3) / 4 SR^2) / n with population moments)."""
    x = _finite(excess, "excess returns")
    n = x.size
    if not _usable(x, 3):
        return _NAN
    mu = float(np.mean(x))
    m2 = float(np.mean(x * x))
    var = m2 - mu * mu
    if not var > 1e-20 * max(m2, 1e-300):
        return _NAN
    s3 = var**1.5
    g = np.array([m2 / s3, -mu / (2.0 * s3)])
    gamma = _long_run_covariance(np.column_stack((x, x * x)), lags)
    v = float(g @ gamma @ g) / n
    return math.sqrt(v) if v > 0 else _NAN


def sharpe_ratio_test(
    returns: Any,
    rf_bar: float = 0.0,
    *,
    hac_lags: int = -1,
    alternative: str = "greater",
    alpha: float = 0.05,
    periods_per_year: float = 252.0,
) -> dict[str, Any]:
    """H0: the Sharpe ratio of the excess returns r - rf_bar is 0 (<= 0 for "greater").

    The headline z = SR / SE uses Opdyke's robust standard error (`sharpe_standard_error`
    with Newey-West lags); the plain t-test (scipy's ttest_1samp of the excess returns, whose
    t is SR x sqrt(n)) and Lo's IID-normal standard error are reported beside it. SR is per
    bar with the sample deviation (ddof = 1); `sharpe_ratio` is it x sqrt(P), and the
    two-sided 1 - alpha confidence interval is annualised the same way."""
    r = _finite(returns)
    n = int(r.size)
    null = "Sharpe ratio <= 0" if alternative == "greater" else "Sharpe ratio = 0"
    if alternative == "less":
        null = "Sharpe ratio >= 0"
    ref = "Opdyke (2007); Lo (2002); Newey & West (1987)"
    if not _usable(r, 3):
        return _empty_test(null, ref, n=n, significant=False, sharpe_ratio=_NAN)
    x = r - rf_bar
    mu, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    if not _dispersion(mu, sd):
        return _empty_test(null, ref, n=n, significant=False, sharpe_ratio=_NAN)
    sr = mu / sd
    lags = _lags(n, hac_lags)
    se = sharpe_standard_error(x, lags)
    z = sr / se if se > 0 else _NAN
    p = _p_value(z, alternative)
    tt = stats.ttest_1samp(x, 0.0, alternative=alternative)
    q = float(stats.norm.ppf(1.0 - alpha / 2.0))
    ann = math.sqrt(periods_per_year)
    ci = [(sr - q * se) * ann, (sr + q * se) * ann] if math.isfinite(se) else [_NAN, _NAN]
    return {
        "null": null,
        "alternative": alternative,
        "n": n,
        "sharpe_ratio": sr * ann,
        "sharpe_per_period": sr,
        "statistic": z,
        "p_value": p,
        "reject": _reject(p, alpha),
        "significant": _reject(p, alpha),
        "standard_error": se,
        "standard_error_iid": sharpe_standard_error(x, 0),
        "standard_error_iid_normal": math.sqrt((1.0 + sr * sr / 2.0) / n),
        "hac_lags": lags,
        "t_statistic": float(tt.statistic),
        "t_p_value": float(tt.pvalue),
        "confidence_interval": ci,
        "confidence": 1.0 - alpha,
        "reference": ref,
    }


def _moments(r: np.ndarray) -> tuple[float, float]:
    """Population skewness and (non-excess) kurtosis, as Bailey & Lopez de Prado use."""
    return float(stats.skew(r, bias=True)), float(stats.kurtosis(r, fisher=False, bias=True))


def probabilistic_sharpe_ratio(
    sharpe: float, n: int, skew: float, kurtosis: float, benchmark: float = 0.0
) -> float:
    """Bailey & Lopez de Prado (2012): P(true SR > benchmark) =
    Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2)), with SR and
    SR* per bar (not annualised) and the non-excess kurtosis (3 for a normal)."""
    den = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe
    vals = (sharpe, skew, kurtosis, benchmark)
    if n < 2 or not all(math.isfinite(v) for v in vals) or not den > 0:
        return _NAN
    return float(stats.norm.cdf((sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(den)))


def expected_max_sharpe(trials: int, variance: float) -> float:
    """Bailey & Lopez de Prado (2014), eq. for SR*_0: the expected maximum of `trials`
    independent Sharpe ratios with zero mean and this variance (in the same units),
    sqrt(V) ((1 - gamma) Phi^-1(1 - 1 / N) + gamma Phi^-1(1 - 1 / (N e))). 0 for one trial:
    nothing was selected."""
    if trials < 1 or not (math.isfinite(variance) and variance >= 0):
        return _NAN
    if trials == 1:
        return 0.0
    a = stats.norm.ppf(1.0 - 1.0 / trials)
    b = stats.norm.ppf(1.0 - 1.0 / (trials * math.e))
    return float(math.sqrt(variance) * ((1.0 - EULER_GAMMA) * a + EULER_GAMMA * b))


def deflated_sharpe_ratio(
    sharpe: float, n: int, skew: float, kurtosis: float, trials: int, variance: float
) -> dict[str, float]:
    """Bailey & Lopez de Prado (2014): the PSR against the expected maximum Sharpe ratio of
    `trials` unskilled variants (all per bar; `variance` of the trials' per-bar Sharpe
    ratios)."""
    sr0 = expected_max_sharpe(trials, variance)
    dsr = probabilistic_sharpe_ratio(sharpe, n, skew, kurtosis, sr0) if math.isfinite(sr0) else _NAN
    return {"expected_max_sharpe_per_period": sr0, "deflated_sharpe_ratio": dsr}


# ----------------------------------------------------------------------------- mean, shape, memory


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
    and the same test with a Newey-West standard error (`hac_*`, normal p-value)."""
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
    hac_p = _p_value(hac_z, alternative)
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


# ----------------------------------------------------------------------------- VaR and ES


def historical_var_es(
    returns: Any, tail: float = 0.05, window: int = 250, min_history: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """Each bar's historical VaR and ES forecast (positive losses) from the returns *before*
    it: a rolling window of `window` bars (the first forecast at bar `window`), or with
    `window` = 0 all earlier bars from bar `min_history`. NaN where there is no forecast.
    The estimators are performance.var_historical / cvar_historical: the linearly
    interpolated `tail` quantile, and the mean of the floor((m - 1) tail) + 1 worst of m."""
    r = _finite(returns)
    n = r.size
    var = np.full(n, np.nan)
    es = np.full(n, np.nan)
    if window > 0:
        if n <= window:
            return var, es
        w = np.lib.stride_tricks.sliding_window_view(r, window)[:-1]
        var[window:] = -np.percentile(w, 100.0 * tail, axis=1)
        k = int((window - 1) * tail)
        es[window:] = -np.mean(np.partition(w, k, axis=1)[:, : k + 1], axis=1)
        return var, es
    # Expanding: keep the past sorted (one insertion a bar) and read the same estimators off
    # it, instead of sorting the whole history again for every bar.
    first = max(min_history, 1)
    if n <= first or not np.all(np.isfinite(r)):
        return var, es
    past = sorted(r[:first].tolist())
    for t in range(first, n):
        pos = (t - 1) * tail  # numpy's "linear" percentile position
        lo = math.floor(pos)
        hi = min(lo + 1, t - 1)
        a, b = past[lo], past[hi]
        var[t] = -(a + (b - a) * (pos - lo))
        k = int((t - 1) * tail)
        es[t] = -math.fsum(past[: k + 1]) / (k + 1)
        bisect.insort(past, float(r[t]))
    return var, es


def kupiec_pof(hits: Any, tail: float, *, alpha: float = 0.05) -> dict[str, Any]:
    """Kupiec (1995) proportion of failures: H0 P(hit) = tail. LR = -2 ln(L(tail) / L(x / T))
    with x hits in T forecasts, chi-squared with 1 degree of freedom."""
    h = np.asarray(hits, dtype=bool)
    t, x = int(h.size), int(h.sum())
    null, ref = f"VaR is exceeded with probability {tail:g}", "Kupiec (1995)"
    if t == 0:
        return _empty_test(null, ref, forecasts=0, exceedances=0, expected=0.0)
    phat = x / t
    ll0 = special.xlogy(t - x, 1.0 - tail) + special.xlogy(x, tail)
    ll1 = special.xlogy(t - x, 1.0 - phat) + special.xlogy(x, phat)
    lr = max(-2.0 * float(ll0 - ll1), 0.0)
    p = float(stats.chi2.sf(lr, 1))
    return {
        "null": null,
        "forecasts": t,
        "exceedances": x,
        "expected": t * tail,
        "rate": phat,
        "statistic": lr,
        "p_value": p,
        "reject": _reject(p, alpha),
        "reference": ref,
    }


def _independence_lr(n00: Any, n01: Any, n10: Any, n11: Any) -> Any:
    """Christoffersen's LR_ind from the transition counts (arrays or scalars)."""
    n00, n01, n10, n11 = (np.asarray(v, dtype=float) for v in (n00, n01, n10, n11))
    with np.errstate(invalid="ignore", divide="ignore"):
        pi01 = np.where(n00 + n01 > 0, n01 / np.maximum(n00 + n01, 1), 0.0)
        pi11 = np.where(n10 + n11 > 0, n11 / np.maximum(n10 + n11, 1), 0.0)
        pi = (n01 + n11) / np.maximum(n00 + n01 + n10 + n11, 1)
    ll0 = special.xlogy(n00 + n10, 1.0 - pi) + special.xlogy(n01 + n11, pi)
    ll1 = (
        special.xlogy(n00, 1.0 - pi01)
        + special.xlogy(n01, pi01)
        + special.xlogy(n10, 1.0 - pi11)
        + special.xlogy(n11, pi11)
    )
    return np.maximum(-2.0 * (ll0 - ll1), 0.0)


def _transitions(h: np.ndarray) -> tuple[int, int, int, int]:
    a, b = h[:-1], h[1:]
    return (
        int(np.sum(~a & ~b)),
        int(np.sum(~a & b)),
        int(np.sum(a & ~b)),
        int(np.sum(a & b)),
    )


def _log_comb(n: Any, k: Any) -> Any:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def independence_null_distribution(bars: int, hits: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact distribution of Christoffersen's LR_ind over all orders of `hits` hits
    among `bars` bars (equally likely when hits are IID, whatever their probability): the
    values and their probabilities. An order is fixed by the number R of runs of hits and
    whether it starts and ends with one; there are C(hits - 1, R - 1) C(misses - 1, Z - 1)
    such orders, Z the number of runs of misses."""
    ones, zeros = int(hits), int(bars) - int(hits)
    if ones <= 0 or zeros <= 0:
        return np.zeros(1), np.ones(1)
    runs = np.arange(1, min(ones, zeros + 1) + 1)
    first = np.repeat([1, 1, 0, 0], runs.size)
    last = np.repeat([1, 0, 1, 0], runs.size)
    runs = np.tile(runs, 4)
    zruns = runs - first * last + (1 - first) * (1 - last)  # Z = R - 1, R or R + 1
    ok = (zruns >= 1) & (zruns <= zeros)
    runs, first, last, zruns = runs[ok], first[ok], last[ok], zruns[ok]
    n11 = ones - runs
    n01, n10 = runs - first, runs - last
    n00 = bars - 1 - n01 - n10 - n11
    values = _independence_lr(n00, n01, n10, n11)
    logp = _log_comb(ones - 1, runs - 1) + _log_comb(zeros - 1, zruns - 1)
    return np.asarray(values, dtype=float), np.exp(logp - _log_comb(bars, ones))


def christoffersen_independence(hits: Any, *, alpha: float = 0.05) -> dict[str, Any]:
    """Christoffersen (1998): H0 a VaR exceedance is as likely after an exceedance as after a
    quiet day (first-order Markov alternative), LR_ind.

    With ~5% hits the chi-squared(1) approximation is poor (few consecutive hits: it
    over-rejects). The p-value is instead exact and conditional on the number of hits: the
    distribution of LR_ind over all orders of the hits (`independence_null_distribution`,
    a permutation test computed in closed form), as a mid-p value (Lancaster 1961),
    P(LR > observed) + P(LR = observed) / 2, since LR takes few values. The chi-squared
    p-value is reported as `asymptotic_p_value`."""
    h = np.asarray(hits, dtype=bool)
    null, ref = "VaR exceedances are independent", "Christoffersen (1998); Lancaster (1961)"
    if h.size < 2:
        return _empty_test(null, ref, transitions=[[0, 0], [0, 0]])
    n00, n01, n10, n11 = _transitions(h)
    lr = float(_independence_lr(n00, n01, n10, n11))
    asymptotic = float(stats.chi2.sf(lr, 1))
    values, probs = independence_null_distribution(int(h.size), int(h.sum()))
    tol = 1e-9 * max(lr, 1.0)
    above = float(np.sum(probs[values > lr + tol]))
    ties = float(np.sum(probs[np.abs(values - lr) <= tol]))
    p = min(1.0, above + 0.5 * ties)
    return {
        "null": null,
        "transitions": [[n00, n01], [n10, n11]],
        "statistic": lr,
        "p_value": p,
        "asymptotic_p_value": asymptotic,
        "reject": _reject(p, alpha),
        "reference": ref,
    }


def es_backtest_z2(
    returns: Any,
    tail: float = 0.05,
    window: int = 250,
    min_history: int = 250,
    *,
    simulations: int = 1000,
    seed: int = 1,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Acerbi & Szekely (2014) test 2: Z2 = sum_t X_t I_t / (T tail ES_t) + 1 over the T
    bars with a forecast (X_t the return, I_t its VaR exceedance, ES_t > 0 the forecast
    shortfall). H0: the forecast distributions are right; a negative Z2 means the shortfall
    was underestimated. The one-sided p-value is simulated as the authors prescribe: each
    X_t redrawn from its own forecast distribution (the historical window the forecast came
    from), `simulations` times, p = (1 + #{Z2_sim <= Z2}) / (simulations + 1)."""
    r = _finite(returns)
    null = "the historical ES forecasts are not too small"
    ref = "Acerbi & Szekely (2014), test Z2"
    var, es = historical_var_es(r, tail, window, min_history)
    days = np.flatnonzero(np.isfinite(var) & np.isfinite(es) & (es > 0))
    if days.size == 0 or not np.all(np.isfinite(r)):
        return _empty_test(null, ref, forecasts=int(days.size), simulations=0)
    t = days.size
    x = r[days]
    v, e = var[days], es[days]
    scale = 1.0 / (t * tail * e)
    z2 = float(np.sum(x * (x < -v) * scale)) + 1.0
    start = days - window if window > 0 else np.zeros(t, dtype=int)
    size = np.full(t, window) if window > 0 else days.astype(int)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(101,)))
    sims = np.empty(simulations)
    step = max(1, 2_000_000 // max(t, 1))  # bound the draw matrix to ~16 MB
    for lo in range(0, simulations, step):
        k = min(step, simulations - lo)
        idx = start + np.floor(rng.random((k, t)) * size).astype(int)
        xs = r[idx]
        sims[lo : lo + k] = np.sum(xs * (xs < -v) * scale, axis=1) + 1.0
    p = float((1 + np.sum(sims <= z2)) / (simulations + 1))
    return {
        "null": null,
        "forecasts": int(t),
        "exceedances": int(np.sum(x < -v)),
        "statistic": z2,
        "p_value": p,
        "reject": _reject(p, alpha),
        "simulations": int(simulations),
        "simulated_mean": float(np.mean(sims)),
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


# ----------------------------------------------------------------------------- trials


def _drop(tree: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def config_hash(config: Mapping[str, Any], ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG) -> str:
    """A run configuration's identity as a strategy variant: sha256 of its canonical JSON
    without the `ignore`d keys (dotted paths) that do not change what the run decides."""
    tree = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    for key in ignore:
        _drop(tree, key)
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrialCount:
    """The strategy variants the run records show: distinct configurations, each with the
    annualised Sharpe ratio of its first run (sorted by folder name) that has an equity
    curve."""

    root: str
    runs: int
    configs: Mapping[str, tuple[str, ...]]
    sharpe_ratios: Mapping[str, float]

    @property
    def trials(self) -> int:
        return len(self.configs)

    @property
    def sharpe_variance(self) -> float:
        """Sample variance (ddof = 1) of the variants' annualised Sharpe ratios (NaN for
        fewer than two)."""
        s = np.array([v for v in self.sharpe_ratios.values() if math.isfinite(v)])
        return float(np.var(s, ddof=1)) if s.size >= 2 else _NAN

    def as_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "root": self.root,
                "runs": self.runs,
                "trials": self.trials,
                "sharpe_variance": self.sharpe_variance,
                "configs": {k: list(v) for k, v in self.configs.items()},
                "sharpe_ratios": dict(self.sharpe_ratios),
            }
        )


def count_trials(
    runs_root: str | Path,
    *,
    risk_free_rate: float = 0.02,
    periods_per_year: float = 252.0,
    ignore: Iterable[str] = DEFAULT_IGNORED_CONFIG,
) -> TrialCount:
    """Count the strategy variants tried from the run folders under `runs_root` (as
    `tradingd backtest` writes them: `<root>/<run_id>/config.json`, `equity.csv`,
    `summary.json`). Folders with the same `config_hash` are reruns of one variant; a folder
    without config.json counts as its own variant (by its run id)."""
    root = Path(runs_root)
    if not root.is_dir():
        raise ValueError(f"runs root {str(root)!r} is not a folder")
    ignore = tuple(ignore)
    configs: dict[str, list[str]] = {}
    runs = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        cfg_file = folder / "config.json"
        if cfg_file.exists():
            try:
                cfg = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{cfg_file} is not valid JSON: {exc}") from None
            if not isinstance(cfg, dict):
                raise ValueError(f"{cfg_file} is not a configuration table")
            key = config_hash(cfg, ignore)
        elif (folder / "summary.json").exists() or (folder / "equity.csv").exists():
            key = "run:" + folder.name
        else:
            continue  # not a run record
        runs += 1
        configs.setdefault(key, []).append(folder.name)
    rf_bar = per_bar_rate(risk_free_rate, periods_per_year)
    sharpes: dict[str, float] = {}
    for key, folders in configs.items():
        for name in folders:
            if not (root / name / "equity.csv").exists():
                continue
            try:
                rec = run_record(root / name)
            except ValueError:
                continue
            r = simple_returns(rec.equity, rec.initial_capital)
            if r.size >= 3 and np.all(np.isfinite(r)):
                x = r - rf_bar
                sd = float(np.std(x, ddof=1))
                sharpes[key] = (
                    float(np.mean(x)) / sd * math.sqrt(periods_per_year) if sd > 0 else _NAN
                )
            break
    return TrialCount(str(root), runs, {k: tuple(v) for k, v in configs.items()}, sharpes)


# ----------------------------------------------------------------------------- validator


class StatisticalValidator:
    """The specification's StatisticalValidator (see the module for the tests)."""

    def __init__(self, config: ValidationConfig | None = None) -> None:
        self.config = config or ValidationConfig()

    # -- the specification's methods ------------------------------------------------------
    def validate_performance(
        self,
        backtest_results: Any,
        *,
        trials: int | None = None,
        sharpe_variance: float | None = None,
        map_fn: MapFn | None = None,
    ) -> dict[str, Any]:
        """Every test on a run (anything `performance.run_record` accepts, or per-bar
        returns), its Monte Carlo, and the verdict of the headline Sharpe-ratio test.
        `trials` / `sharpe_variance` (annualised) override the configuration and the run
        records for the deflated Sharpe ratio."""
        c = self.config
        rec = None
        if isinstance(backtest_results, MonteCarloInput) or _is_returns(backtest_results):
            inp = monte_carlo_input(backtest_results)
        else:
            rec = run_record(backtest_results)
            inp = monte_carlo_input(rec)
        r = inp.returns
        trial_info = self._trials(backtest_results, trials, sharpe_variance, r.size)
        mc_summary, values = simulate_with_paths(inp, c.monte_carlo(), map_fn=map_fn)
        tests = self.run_tests(r, trials=trial_info, bootstrap=values, run=inp)
        head = tests[HEADLINE]
        return _clean(
            {
                "run_id": inp.run_id,
                "bars": int(r.size),
                "start": rec.times[0].isoformat() if rec is not None and r.size else None,
                "end": rec.times[-1].isoformat() if rec is not None and r.size else None,
                "headline": HEADLINE,
                "significant": bool(head["reject"]),
                "alpha": c.alpha,
                "tests": tests,
                "trials": trial_info,
                "monte_carlo": mc_summary,
                "config": dataclasses.asdict(c),
            }
        )

    def test_sharpe_ratio_significance(
        self, returns: Any, risk_free_rate: float | None = None
    ) -> dict[str, Any]:
        """Sharpe-ratio significance with the robust (Opdyke / Newey-West) standard error;
        `risk_free_rate` is annual (default: the configuration's, 2%)."""
        c = self.config
        rf = c.risk_free_rate if risk_free_rate is None else float(risk_free_rate)
        rf_bar = per_bar_rate(rf, c.periods_per_year)
        out = sharpe_ratio_test(
            _finite(returns),
            rf_bar,
            hac_lags=c.hac_lags,
            alternative=c.alternative,
            alpha=c.alpha,
            periods_per_year=c.periods_per_year,
        )
        out["risk_free_rate"] = rf
        return _clean(out)

    def test_mean_return_significance(self, returns: Any) -> dict[str, Any]:
        c = self.config
        return _clean(
            mean_return_test(
                _finite(returns),
                alternative=c.alternative,
                alpha=c.alpha,
                hac_lags=c.hac_lags,
                periods_per_year=c.periods_per_year,
            )
        )

    def bootstrap_analysis(
        self, returns: Any, n_bootstrap: int | None = None, *, map_fn: MapFn | None = None
    ) -> dict[str, Any]:
        """IID and stationary block bootstrap of the returns (`montecarlo`): mean, deviation,
        5th / 50th / 95th percentiles of final return, Sharpe ratio and max drawdown, and the
        percentile confidence interval (1 - alpha) of the Sharpe ratio from the stationary
        bootstrap."""
        c = self.config
        paths = c.paths if n_bootstrap is None else int(n_bootstrap)
        if paths < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
        cfg = dataclasses.replace(c.monte_carlo(("iid", "stationary")), paths=paths)
        summary, values = simulate_with_paths(_finite(returns), cfg, map_fn=map_fn)
        s = values["stationary"]["sharpe"]
        ci = (
            [float(v) for v in np.percentile(s, [50 * c.alpha, 100 - 50 * c.alpha])]
            if np.all(np.isfinite(s))
            else [_NAN, _NAN]
        )
        return _clean(
            {
                "n_bootstrap": paths,
                "block_length": summary["block_length"],
                "iid": summary["methods"]["iid"],
                "stationary": summary["methods"]["stationary"],
                "sharpe_confidence_interval": ci,
                "confidence": 1.0 - c.alpha,
                "seed": c.seed,
            }
        )

    # -- the other tests ------------------------------------------------------------------
    def run_tests(
        self,
        returns: Any,
        names: Iterable[str] = TESTS,
        *,
        trials: Mapping[str, Any] | None = None,
        bootstrap: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        run: MonteCarloInput | None = None,
        map_fn: MapFn | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The named tests (TESTS) on per-bar returns. `trials`: as `_trials` gives it
        (default: the configured count, else 1); `bootstrap`: per-method path statistics
        already simulated (else the drawdown test simulates its own)."""
        c = self.config
        r = _finite(returns)
        names = tuple(names)
        unknown = [n for n in names if n not in TESTS]
        if unknown:
            raise ValueError(f"unknown test(s) {unknown}; valid: {', '.join(TESTS)}")
        out: dict[str, dict[str, Any]] = {}
        rf_bar = c.rf_bar
        sharpe = None
        if {"sharpe_ratio", "sharpe_ratio_t"} & set(names):
            sharpe = sharpe_ratio_test(
                r,
                rf_bar,
                hac_lags=c.hac_lags,
                alternative=c.alternative,
                alpha=c.alpha,
                periods_per_year=c.periods_per_year,
            )
        mean = None
        if {"mean_return", "mean_return_hac"} & set(names):
            mean = mean_return_test(
                r,
                alternative=c.alternative,
                alpha=c.alpha,
                hac_lags=c.hac_lags,
                periods_per_year=c.periods_per_year,
            )
        var_forecasts = None
        for name in names:
            if name == "sharpe_ratio":
                assert sharpe is not None
                out[name] = sharpe
            elif name == "sharpe_ratio_t":
                assert sharpe is not None
                p = sharpe.get("t_p_value", _NAN)
                out[name] = {
                    "null": sharpe["null"],
                    "statistic": sharpe.get("t_statistic", _NAN),
                    "p_value": p,
                    "reject": _reject(p, c.alpha),
                    "reference": "Student (1908): t = SR x sqrt(n), IID normal returns",
                }
            elif name == "mean_return":
                assert mean is not None
                out[name] = mean
            elif name == "mean_return_hac":
                assert mean is not None
                out[name] = {
                    "null": mean["null"],
                    "statistic": mean.get("hac_statistic", _NAN),
                    "p_value": mean.get("hac_p_value", _NAN),
                    "reject": bool(mean.get("hac_reject", False)),
                    "hac_lags": mean.get("hac_lags", 0),
                    "reference": "Newey & West (1987)",
                }
            elif name == "jarque_bera":
                out[name] = jarque_bera_test(r, alpha=c.alpha)
            elif name == "ljung_box":
                out[name] = ljung_box_test(r, lags=c.ljung_box_lags, alpha=c.alpha)
            elif name == "ljung_box_squared":
                out[name] = ljung_box_test(r, lags=c.ljung_box_lags, squared=True, alpha=c.alpha)
            elif name == "autocorrelation_robust":
                out[name] = robust_autocorrelation_test(r, lags=c.ljung_box_lags, alpha=c.alpha)
            elif name in ("var_kupiec", "var_christoffersen"):
                if var_forecasts is None:
                    var_forecasts = self._var_hits(r)
                hits, info = var_forecasts
                if name == "var_kupiec":
                    out[name] = {**kupiec_pof(hits, c.tail, alpha=c.alpha), **info}
                else:
                    out[name] = {**christoffersen_independence(hits, alpha=c.alpha), **info}
            elif name == "expected_shortfall":
                out[name] = es_backtest_z2(
                    r,
                    c.tail,
                    c.var_window,
                    c.var_min_history,
                    simulations=c.es_simulations,
                    seed=c.seed,
                    alpha=c.alpha,
                )
            elif name == "drawdown":
                out[name] = self._drawdown(r, bootstrap, run, map_fn)
            elif name in ("probabilistic_sharpe", "deflated_sharpe"):
                out[name] = self._psr(r, name, trials)
        return out

    # -- internals ------------------------------------------------------------------------
    def _var_hits(self, r: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        c = self.config
        var, _ = historical_var_es(r, c.tail, c.var_window, c.var_min_history)
        ok = np.isfinite(var) & np.isfinite(r)
        info = {
            "var_confidence": c.var_confidence,
            "window": c.var_window if c.var_window else "expanding",
            "first_forecast": int(np.argmax(ok)) if ok.any() else None,
        }
        return r[ok] < -var[ok], info

    def _drawdown(
        self,
        r: np.ndarray,
        bootstrap: Mapping[str, Mapping[str, np.ndarray]] | None,
        run: MonteCarloInput | None,
        map_fn: MapFn | None,
    ) -> dict[str, Any]:
        c = self.config
        method = c.drawdown_method
        if not _usable(r, 2):
            return drawdown_test(_NAN, [], alpha=c.alpha, method=method)
        if bootstrap is None or method not in bootstrap:
            inp = run if run is not None else MonteCarloInput(r, np.zeros(0))
            _, bootstrap = simulate_with_paths(inp, c.monte_carlo((method,)), map_fn=map_fn)
        wealth = np.concatenate(([1.0], np.cumprod(1.0 + r)))
        peak = np.maximum.accumulate(wealth)
        observed = float(np.max(1.0 - wealth / peak))
        return drawdown_test(
            observed, bootstrap[method]["max_drawdown"], alpha=c.alpha, method=method
        )

    def _psr(self, r: np.ndarray, name: str, trials: Mapping[str, Any] | None) -> dict[str, Any]:
        c = self.config
        ppy = c.periods_per_year
        if name == "probabilistic_sharpe":
            null, ref = (
                f"Sharpe ratio <= {c.sharpe_benchmark:g} (annualised)",
                "Bailey & Lopez de Prado (2012)",
            )
        else:
            null, ref = (
                "Sharpe ratio <= the expected best of the trials without skill",
                "Bailey & Lopez de Prado (2014)",
            )
        if not _usable(r, 3):
            return _empty_test(null, ref)
        x = r - c.rf_bar
        mu, sd = float(np.mean(x)), float(np.std(x, ddof=1))
        if not _dispersion(mu, sd):
            return _empty_test(null, ref)
        sr = mu / sd
        skew, kurt = _moments(x)
        n = int(x.size)
        common = {
            "null": null,
            "n": n,
            "sharpe_ratio": sr * math.sqrt(ppy),
            "skewness": skew,
            "kurtosis": kurt,
            "reference": ref,
        }
        if name == "probabilistic_sharpe":
            bench = c.sharpe_benchmark / math.sqrt(ppy)
            psr = probabilistic_sharpe_ratio(sr, n, skew, kurt, bench)
            p = 1.0 - psr if math.isfinite(psr) else _NAN
            return {
                **common,
                "benchmark_sharpe": c.sharpe_benchmark,
                "statistic": psr,
                "probabilistic_sharpe_ratio": psr,
                "p_value": p,
                "reject": _reject(p, c.alpha),
            }
        info = dict(trials or self._trials(None, None, None, n))
        count = int(info["trials"])
        variance = float(info["sharpe_variance"]) / ppy  # per bar
        d = deflated_sharpe_ratio(sr, n, skew, kurt, count, variance)
        dsr = d["deflated_sharpe_ratio"]
        p = 1.0 - dsr if math.isfinite(dsr) else _NAN
        # The familywise p-value of the best of `count` independent trials (Sidak), the
        # multiple-testing haircut of Harvey & Liu (2015), from the PSR(0) p-value.
        psr0 = probabilistic_sharpe_ratio(sr, n, skew, kurt, 0.0)
        sidak = 1.0 - psr0**count if math.isfinite(psr0) else _NAN
        return {
            **common,
            "trials": count,
            "trials_source": info.get("source", ""),
            "sharpe_variance": info["sharpe_variance"],
            "sharpe_variance_source": info.get("variance_source", ""),
            "expected_max_sharpe": d["expected_max_sharpe_per_period"] * math.sqrt(ppy),
            "statistic": dsr,
            "deflated_sharpe_ratio": dsr,
            "p_value": p,
            "reject": _reject(p, c.alpha),
            "sidak_p_value": sidak,
            "sidak_reject": _reject(sidak, c.alpha),
        }

    def _trials(
        self,
        results: Any,
        trials: int | None,
        sharpe_variance: float | None,
        bars: int | None,
    ) -> dict[str, Any]:
        """How many variants were tried and how much their Sharpe ratios vary (annualised):
        the argument, else the configuration, else the run records, else 1 / the noise."""
        c = self.config
        count_: TrialCount | None = None
        root = c.runs_root
        if not root and isinstance(results, str | Path) and Path(results).is_dir():
            root = str(Path(results).resolve().parent)
        wanted = (trials is None and c.trials == 0) or (
            sharpe_variance is None and c.trials_sharpe_variance == 0
        )
        if wanted and root and Path(root).is_dir():
            count_ = count_trials(
                root, risk_free_rate=c.risk_free_rate, periods_per_year=c.periods_per_year
            )
        if trials is not None:
            if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
                raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
            n_trials, source = trials, "argument"
        elif c.trials:
            n_trials, source = c.trials, "config"
        elif count_ is not None and count_.trials >= 1:
            n_trials, source = count_.trials, f"run records under {count_.root}"
        else:
            n_trials, source = 1, "default (no run records)"
        if sharpe_variance is not None:
            if not (math.isfinite(sharpe_variance) and sharpe_variance >= 0):
                raise ValueError(f"sharpe_variance must be >= 0, got {sharpe_variance!r}")
            variance, vsource = float(sharpe_variance), "argument"
        elif c.trials_sharpe_variance:
            variance, vsource = float(c.trials_sharpe_variance), "config"
        elif count_ is not None and math.isfinite(count_.sharpe_variance):
            variance, vsource = count_.sharpe_variance, f"run records under {count_.root}"
        else:
            n = int(bars or 0)
            variance = c.periods_per_year / (n - 1) if n > 1 else _NAN
            vsource = "estimation noise only: 1 / (n - 1) per bar"
        out: dict[str, Any] = {
            "trials": int(n_trials),
            "source": source,
            "sharpe_variance": variance,
            "variance_source": vsource,
        }
        if count_ is not None:
            out["records"] = count_.as_dict()
        return out


# ----------------------------------------------------------------------------- calibration


def null_strategy_returns(
    strategies: int,
    days: int,
    *,
    seed: int = 1,
    rule: str = "momentum",
    positions: str = "long_short",
    source: str = "normal",
    lookback: int = 20,
    volatility: float = 0.01,
) -> np.ndarray:
    """Per-bar returns (strategies x days) of strategies without an edge by construction.

    Prices are random walks: IID zero-mean simple returns (`source` "normal", or "student_t"
    with 4 degrees of freedom scaled to `volatility`), or, for "sp500", random stretches of
    the real S&P 500 index returns bundled with `arch` (which have a drift: use the "random"
    rule, i.e. sign-randomised positions, so that the mean is 0 by symmetry). Each day's
    position comes from earlier prices only: "momentum" = the sign of the last `lookback`
    days' return, "random" = a fair coin. `positions`: "long_short" (+-1) or "long_flat"
    (1 / 0). With normal returns and long/short positions the strategy's returns are exactly
    IID N(0, volatility^2), so every test's null hypothesis holds."""
    if strategies < 1 or days < 2:
        raise ValueError(f"need strategies >= 1 and days >= 2, got {strategies}, {days}")
    if rule not in ("momentum", "random"):
        raise ValueError(f"rule must be 'momentum' or 'random', got {rule!r}")
    if positions not in ("long_short", "long_flat"):
        raise ValueError(f"positions must be 'long_short' or 'long_flat', got {positions!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(202,)))
    total = days + lookback
    if source == "normal":
        r = rng.normal(0.0, volatility, (strategies, total))
    elif source == "student_t":
        df = 4.0
        r = rng.standard_t(df, (strategies, total)) * volatility / math.sqrt(df / (df - 2.0))
    elif source == "sp500":
        from arch.data import sp500

        real = sp500.load()["Adj Close"].pct_change().dropna().to_numpy()
        if real.size < total:
            raise ValueError(f"the bundled S&P 500 has {real.size} returns, fewer than {total}")
        starts = rng.integers(0, real.size - total + 1, strategies)
        r = real[starts[:, None] + np.arange(total)]
    else:
        raise ValueError(f"source must be 'normal', 'student_t' or 'sp500', got {source!r}")
    if rule == "momentum":
        c = np.concatenate((np.zeros((strategies, 1)), np.cumsum(r, axis=1)), axis=1)
        past = c[:, lookback:total] - c[:, : total - lookback]  # sum of r[t-L .. t-1]
        up = past >= 0
    else:
        up = rng.random((strategies, days)) < 0.5
    pos = np.where(up, 1.0, -1.0 if positions == "long_short" else 0.0)
    return pos * r[:, lookback:]


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson 1934) binomial confidence interval of k / n (scipy)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def calibration(
    validator: StatisticalValidator,
    returns: np.ndarray,
    names: Sequence[str] = (HEADLINE,),
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Each named test's rejection rate over the rows of `returns` (strategies without an
    edge: see `null_strategy_returns`), with its 95% and 99% Clopper-Pearson intervals. A
    calibrated test rejects about `alpha` of them."""
    rows = np.atleast_2d(np.asarray(returns, dtype=float))
    counts = dict.fromkeys(names, 0)
    defined = dict.fromkeys(names, 0)
    for i, row in enumerate(rows):
        res = validator.run_tests(row, names)
        for name in names:
            if math.isfinite(float(res[name]["p_value"])):
                defined[name] += 1
            counts[name] += bool(res[name]["reject"])
        if progress is not None:
            progress(i)
    n = rows.shape[0]
    out: dict[str, Any] = {}
    for name in names:
        k = counts[name]
        out[name] = {
            "strategies": n,
            "defined": defined[name],
            "rejections": k,
            "rate": k / n,
            "ci95": list(clopper_pearson(k, n, 0.95)),
            "ci99": list(clopper_pearson(k, n, 0.99)),
        }
    return {"alpha": validator.config.alpha, "tests": out}
