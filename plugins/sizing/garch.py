"""GARCH(1,1) volatility, as pure functions: a fit with the `arch` package, the one-step
recursion that carries a fit forward bar by bar, and the RiskMetrics EWMA fallback.

Units: everything here is in decimal returns (0.01 = 1%) and their variances. `arch` is
fitted on percentage returns (returns x 100, the scale its optimiser is tuned for) and the
parameters are converted back: mu / 100, omega / 100**2; alpha and beta have no unit.

The conditional variance sigma2 always means the forecast for the *next* bar, known after
the last return seen:

    sigma2[t+1] = omega + alpha * (r[t] - mu)**2 + beta * sigma2[t]

`garch_forecast` is one step of that for any number of series at once; `garch_filter` runs it
over a window. EWMA (RiskMetrics 1996, lambda 0.94 for daily data) is the same recursion with
omega = 0, alpha = 1 - lambda, beta = lambda and mu = 0, so a universe where some symbols have
a GARCH fit and others the fallback is updated by one array expression.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..gaps import fill_interior_gaps

# `arch` is imported where a fit is made: importing it takes 1.5-2 s (scipy.stats, its
# numba-or-Python recursions), and a replay whose fits come from the fit cache, or run in the
# worker process, never fits in the engine's process.

#: RiskMetrics' decay for daily returns: the documented fallback estimator.
EWMA_LAMBDA = 0.94
#: Fewest returns `garch_fit` accepts (three parameters and a variance level need data;
#: below a year of daily bars a GARCH fit is mostly noise).
MIN_FIT_OBS = 100
MEANS = ("constant", "zero")
#: A fit with alpha + beta this close to 1 is on the optimiser's stationarity boundary
#: (arch constrains alpha + beta <= 1, and lands on either side of 1 by rounding): treated as
#: non-stationary, so that the same data never flips between accepted and rejected.
STATIONARITY_TOL = 1e-6
#: A fit with alpha below this is degenerate, refused like the boundary above: alpha is the
#: weight of the newest squared shock, and at arch's lower bound (0, where its optimiser
#: lands for many series: 1e-10 on a simulated path whose true alpha is 0.08, 5 of 94
#: accepted S&P 500 windows) no shock ever moves the forecast; a -35% day left one fit's
#: annualised vol at 0.118 for a whole refit period. 1e-3 sits in the gap between those
#: boundary fits (at most ~1e-9) and fitted ones (daily equity fits: 0.02-0.15; 0.004 the
#: lowest of 40 i.i.d. test series that were not at 0): at 1e-3 a 10-sigma day adds a
#: tenth of a day's variance, 5% to the vol, where EWMA (alpha 0.06) adds 6 days' worth.
MIN_ALPHA = 1e-3


def _import_arch() -> None:
    import arch.univariate  # noqa: F401


# Logarithms and powers here go through the C library, not numpy's loops: numpy picks its
# loop for log, exp and power by the CPU's SIMD features, and its AVX-512 log differs from
# the AVX2 one in the last bit for some prices (np.log(40.4)). A GARCH fit or a variance
# one ULP apart then sizes a position a few shares apart, and a ranking strategy's whole path
# changes: the S&P 500 backtest gave 1,870 fills on an AVX-512 machine and 2,234 with numpy's
# AVX-512 loops off (benchmarks/RESULTS.md). The C library's log is the same whatever numpy
# dispatches to; `scipy.special.xlogy(1, x)` is that log, vectorised. (OpenBLAS' kernels,
# chosen by CPU too, still reach a fit through its optimiser: see `_libm_classes`.)
_LOG_2PI = math.log(2.0 * math.pi)


@functools.cache
def _xlogy() -> Any:
    from scipy.special import xlogy  # ~0.2 s to import: only where a log is taken

    return xlogy


def libm_log(x: np.ndarray) -> np.ndarray:
    """`np.log(x)` computed by the C library's `log` (math.log's): the same bits on every
    CPU, where numpy's own loop depends on the SIMD features it finds."""
    return np.asarray(_xlogy()(1.0, np.asarray(x, dtype=np.float64)), dtype=np.float64)


@functools.cache
def _libm_classes() -> tuple[type, type, type]:
    """arch's GARCH and normal distribution with the numpy calls of a fit that depend on
    numpy's SIMD loops replaced by the C library's: the EWMA weights 0.94 ** k (numpy's
    power) of the backcast and of the variance bounds, and the likelihood's log(sigma2), also
    in the grid of a cold fit's starting values. Everything else is arch's own code; a test
    fits many series with numpy's SIMD loops on and off and compares the parameters exactly.
    Not covered: the BLAS under the optimiser, whose kernels also differ by CPU (the fit
    cache records them: `garch_fits.blas_kind`)."""
    from arch.univariate import GARCH, Normal
    from arch.univariate.volatility import ewma_recursion
    from arch.utility.array import to_array_1d

    def ewma_weights(tau: int) -> np.ndarray:
        # arch's 0.94 ** np.arange(tau) / its sum, with Python's float power (the C library's
        # pow); numpy's power differs with AVX-512 in 2 of the 75 weights.
        w = np.array([0.94**k for k in range(tau)])
        return np.asarray(w / sum(w))

    class _LibmGARCH(GARCH):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._normal = _LibmNormal()  # the likelihood of a cold fit's grid of starts

        def backcast(self, resids: Any) -> float:
            # arch's GARCH.backcast, with the weights above.
            tau = min(75, resids.shape[0])
            w = ewma_weights(tau)
            return float(np.sum((np.absolute(resids[:tau]) ** self.power) * w))

        def variance_bounds(self, resids: Any, power: float = 2.0) -> Any:
            # arch's VolatilityProcess.variance_bounds, line for line, with the weights above.
            nobs = resids.shape[0]
            tau = min(75, nobs)
            w = ewma_weights(tau)
            var_bound = np.zeros(nobs)
            initial_value = w.dot(resids[:tau] ** 2.0)
            ewma_recursion(0.94, to_array_1d(resids), var_bound, resids.shape[0], initial_value)
            var_bounds = np.vstack((var_bound / 1e6, var_bound * 1e6)).T
            var = float(np.var(resids))
            min_upper_bound = 1 + float(np.max(resids**2.0))
            lower_bound, upper_bound = var / 1e8, 1e7 * (1 + float(np.max(resids**2.0)))
            var_bounds[var_bounds[:, 0] < lower_bound, 0] = lower_bound
            var_bounds[var_bounds[:, 1] < min_upper_bound, 1] = min_upper_bound
            var_bounds[var_bounds[:, 1] > upper_bound, 1] = upper_bound
            if power != 2.0:
                var_bounds **= power / 2.0
            return np.ascontiguousarray(var_bounds)

    class _LibmNormal(Normal):
        def loglikelihood(
            self, parameters: Any, resids: Any, sigma2: Any, individual: bool = False
        ) -> Any:
            # arch's Normal.loglikelihood, with the C library's log.
            lls = -0.5 * (_LOG_2PI + libm_log(sigma2) + resids**2.0 / sigma2)
            return lls if individual else np.sum(lls)

    class _WarmGARCH(_LibmGARCH):
        """arch's GARCH(1,1) whose `starting_values()` is the warm start, instead of arch's
        search of a 64-point grid of likelihoods (about 40% of a warm-started fit's time).

        Why this changes no number: when `fit()` is given starting values, arch uses the
        grid's winner only to standardise the residuals for the error distribution's own
        starting values and bounds, and the normal distribution has neither; the optimiser
        starts from the values given. A test fits many series both ways and compares the
        parameters exactly. Only used with a warm start and normal errors."""

        def __init__(self, warm: np.ndarray) -> None:
            super().__init__(p=1, o=0, q=1)
            self._warm = np.array(warm, dtype=np.float64)

        def starting_values(self, resids: np.ndarray) -> np.ndarray:
            return self._warm.copy()

    return _LibmGARCH, _LibmNormal, _WarmGARCH


def _model(x: np.ndarray, mean: str, warm_vol: np.ndarray | None) -> Any:
    """`arch_model(x, mean=..., vol="GARCH", p=1, q=1, dist="normal", rescale=False)`, with
    the grid search skipped when there is a warm start, and the C library's log and power
    (see `_libm_classes`)."""
    from arch.univariate import ConstantMean, ZeroMean

    garch, normal, warm = _libm_classes()
    vol = garch(p=1, o=0, q=1) if warm_vol is None else warm(warm_vol)
    cls = ConstantMean if mean == "constant" else ZeroMean
    return cls(x, volatility=vol, distribution=normal(), rescale=False)


@dataclass(frozen=True)
class GarchParams:
    """A GARCH(1,1) fit in decimal-return units. `sigma2` is the one-step-ahead conditional
    variance after the last return of the fitted sample (arch's `forecast(horizon=1)`)."""

    mu: float
    omega: float
    alpha: float
    beta: float
    sigma2: float
    nobs: int

    @property
    def persistence(self) -> float:
        return self.alpha + self.beta

    @property
    def unconditional_variance(self) -> float:
        p = self.persistence
        return self.omega / (1.0 - p) if p < 1.0 else math.inf


@dataclass(frozen=True)
class _Candidate:
    """An optimiser's answer before the acceptance rules, in arch's units (percentage
    returns): its parameters, its one-step forecast `s2` and its log-likelihood."""

    mu: float
    omega: float
    alpha: float
    beta: float
    s2: float
    loglik: float


def _prepare(returns: np.ndarray, mean: str, min_obs: int) -> tuple[np.ndarray | None, str]:
    """The returns to fit (finite, decimal), or None and why they cannot be fitted."""
    if mean not in MEANS:
        raise ValueError(f"mean must be one of {', '.join(MEANS)}, got {mean!r}")
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < max(min_obs, 10):
        return None, f"too few returns ({r.size} < {max(min_obs, 10)})"
    if not np.any(r != r[0]):
        return None, "constant returns (no variance to model)"
    return r, ""


def _optimise(
    x: np.ndarray, mean: str, starting: GarchParams | None
) -> tuple[_Candidate | None, str]:
    """arch's fit of the percentage returns `x` from `starting` (None: arch's own grid of
    starting values): the candidate, or None when the optimiser raised, did not converge or
    gave non-finite values."""
    sv = warm_vol = None
    if starting is not None:
        warm_vol = np.array([starting.omega * 1e4, starting.alpha, starting.beta])
        sv = np.concatenate([[starting.mu * 100.0] if mean == "constant" else [], warm_vol])
    _import_arch()  # outside the try: a missing or broken arch is an error, not a failed fit
    try:
        model = _model(x, mean, warm_vol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = model.fit(disp="off", show_warning=False, starting_values=sv)
    except Exception as exc:  # arch raises a variety of errors on degenerate data
        return None, f"fit error: {type(exc).__name__}: {exc}"
    if res.convergence_flag != 0:
        msg = getattr(res.optimization_result, "message", "")
        return None, f"did not converge (flag {res.convergence_flag}: {msg})"
    p = res.params
    mu = float(p["mu"]) if mean == "constant" else 0.0
    omega, alpha, beta = float(p["omega"]), float(p["alpha[1]"]), float(p["beta[1]"])
    loglik = float(res.loglikelihood)
    if not all(math.isfinite(v) for v in (mu, omega, alpha, beta, loglik)):
        return None, "non-finite parameters"
    # The one-step forecast, from the last residual and conditional variance of the sample:
    # exactly what res.forecast(horizon=1) computes, without building its DataFrame.
    resid = float(x[-1]) - mu
    try:
        s2 = omega + alpha * resid * resid + beta * float(res.conditional_volatility[-1]) ** 2
    except OverflowError:  # (a float's ** raises where * gives inf): refused by `_accept`
        s2 = math.inf
    return _Candidate(mu, omega, alpha, beta, s2, loglik), ""


def _accept(c: _Candidate, nobs: int) -> tuple[GarchParams | None, str]:
    """The acceptance rules on a candidate: stationary (alpha + beta < 1 beyond
    STATIONARITY_TOL), not degenerate (alpha >= MIN_ALPHA), a positive finite variance."""
    if c.alpha + c.beta >= 1.0 - STATIONARITY_TOL:
        return None, f"non-stationary fit (alpha + beta = {c.alpha + c.beta:.9f}, not < 1)"
    if c.alpha < MIN_ALPHA:
        return None, f"degenerate fit (alpha = {c.alpha:.3g}: shocks never move the variance)"
    if not (math.isfinite(c.s2) and c.s2 > 0.0 and c.omega > 0.0):
        return None, f"invalid variance (omega {c.omega!r}, forecast {c.s2!r})"
    return GarchParams(c.mu / 100.0, c.omega / 1e4, c.alpha, c.beta, c.s2 / 1e4, nobs), ""


def try_garch_fit(
    returns: np.ndarray,
    *,
    mean: str = "constant",
    starting: GarchParams | None = None,
    min_obs: int = MIN_FIT_OBS,
) -> tuple[GarchParams | None, str]:
    """Fit GARCH(1,1) with normal errors to one series of decimal returns (NaN dropped), from
    one start: `starting` (a previous fit of the same series), else arch's own grid.

    Returns (params, "") or (None, reason): too few returns, an exception inside `arch`, an
    optimiser that did not converge (`convergence_flag` != 0), a non-stationary fit
    (alpha + beta >= 1, within STATIONARITY_TOL), a degenerate one (alpha < MIN_ALPHA: a
    variance no shock moves) or non-finite values. `arch` ignores a start that violates its
    constraints. A warm start can end at another, lower local maximum of the likelihood
    than arch's own start: `best_garch_fit` is what the sizing uses."""
    r, why = _prepare(returns, mean, min_obs)
    if r is None:
        return None, why
    c, why = _optimise(r * 100.0, mean, starting)
    return (None, why) if c is None else _accept(c, int(r.size))


def best_garch_fit(
    returns: np.ndarray,
    *,
    mean: str = "constant",
    starting: GarchParams | None = None,
    min_obs: int = MIN_FIT_OBS,
) -> tuple[GarchParams | None, str]:
    """`try_garch_fit`'s answer for the window's best fit: with a warm start, the window is
    also fitted from arch's own starting values, and the candidate with the higher
    log-likelihood is the one the acceptance rules judge (on a tie, or when the warm fit
    failed, arch's). Why: a warm start from the previous window's fit can stay on an interior
    local maximum below the window's maximum (2003-11-25 MCD: alpha 0.248, beta 0.052 and 34
    log-likelihood units below arch's 0.054 / 0.939, an annualised volatility of 0.37
    against 0.24), or keep an interior optimum where the maximum is on a boundary that the
    rules send to EWMA: the same window then gave another forecast, or was accepted or
    refused, according to the previous fit. With the better of the two, the forecast is the
    best fit found for the window whatever the start (never worse than arch's own fit)."""
    r, why = _prepare(returns, mean, min_obs)
    if r is None:
        return None, why
    x = r * 100.0
    cold, why = _optimise(x, mean, None)
    if starting is not None:
        warm, _ = _optimise(x, mean, starting)
        if warm is not None and (cold is None or warm.loglik > cold.loglik):
            cold = warm
    return (None, why) if cold is None else _accept(cold, int(r.size))


def garch_fit(
    returns: np.ndarray,
    *,
    mean: str = "constant",
    starting: GarchParams | None = None,
    min_obs: int = MIN_FIT_OBS,
) -> GarchParams | None:
    """`try_garch_fit` without the reason: the params, or None when the fit is not usable."""
    return try_garch_fit(returns, mean=mean, starting=starting, min_obs=min_obs)[0]


def garch_forecast(
    omega: np.ndarray | float,
    alpha: np.ndarray | float,
    beta: np.ndarray | float,
    sigma2: np.ndarray | float,
    eps: np.ndarray | float,
) -> np.ndarray:
    """One step of the GARCH(1,1) recursion for any number of series at once:
    omega + alpha * eps**2 + beta * sigma2, where eps = r - mu is the newest residual and
    sigma2 the variance that was forecast for it. A NaN residual (no bar) keeps sigma2."""
    eps = np.asarray(eps, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    nxt = omega + alpha * eps * eps + beta * sigma2
    return np.where(np.isnan(eps), sigma2, nxt)


def garch_filter(
    returns: np.ndarray,
    mu: np.ndarray | float,
    omega: np.ndarray | float,
    alpha: np.ndarray | float,
    beta: np.ndarray | float,
    sigma2: np.ndarray | float | None = None,
) -> np.ndarray:
    """Run the recursion over `returns` ((T,) or (T, N), oldest first; NaN rows skipped per
    series) from `sigma2` (default: the mean squared residual of the window, a backcast) and
    return the one-step-ahead variance after the last row, shape () or (N,)."""
    r = np.asarray(returns, dtype=np.float64)
    eps = r - np.asarray(mu, dtype=np.float64)
    if sigma2 is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            sigma2 = np.nanmean(eps * eps, axis=0)
    s2 = np.asarray(sigma2, dtype=np.float64)
    if eps.ndim == 1 and s2.ndim == 0 and np.ndim(omega) == np.ndim(alpha) == np.ndim(beta) == 0:
        # One series (an EWMA fallback, a fit's variance): the same recursion on Python
        # floats, which are IEEE doubles like float64, each step the same operations in the
        # same order (the same bits), ~50x faster than a numpy call per step.
        o, a, b, v = float(omega), float(alpha), float(beta), float(s2)
        for e in eps.tolist():
            if e == e:  # a NaN residual (no bar) keeps the variance
                v = o + a * e * e + b * v
        return np.asarray(v)
    for row in eps:
        s2 = garch_forecast(omega, alpha, beta, s2, row)
    return s2


def ewma_variance(returns: np.ndarray, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """RiskMetrics variance forecast after the last row: sigma2 <- lam * sigma2 + (1 - lam) *
    r**2 (zero mean), seeded with the mean square of the window. NaN where a series has no
    return at all."""
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lambda must be in (0, 1), got {lam}")
    return garch_filter(returns, 0.0, 0.0, 1.0 - lam, lam)


def garch_volatility(
    returns: np.ndarray,
    *,
    periods_per_year: float = 252.0,
    mean: str = "constant",
    lam: float = EWMA_LAMBDA,
    min_obs: int = MIN_FIT_OBS,
) -> float:
    """Annualised one-step-ahead volatility of one return series: GARCH(1,1) when the fit is
    usable, else the EWMA forecast (NaN for fewer than two returns). For facades."""
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    params = garch_fit(r, mean=mean, min_obs=min_obs)
    if params is not None:
        s2 = params.sigma2
    elif r.size >= 2:
        s2 = float(ewma_variance(r, lam))
    else:
        return math.nan
    return math.sqrt(s2 * periods_per_year)


def log_returns(close: np.ndarray) -> np.ndarray:
    """Log returns of a (T, ...) price window, oldest first: (T-1, ...). A missing or
    non-positive price inside the window (a price before and after it) counts as the last
    price before it (`tradingd_plugins.gaps`): the return into it is 0 and the move over the
    gap one return out of it. NaN where either price is missing or not positive before the
    first price or after the last (a listing, no bar yet, a delisting)."""
    c = fill_interior_gaps(np.asarray(close, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        lc = libm_log(np.where(c > 0, c, np.nan))  # not np.log: the same bits on every CPU
    return np.diff(lc, axis=0)
