"""Backtests of the historical VaR and expected-shortfall forecasts of a run's returns:
the forecasts from past returns only, Kupiec's proportion of failures, Christoffersen's
independence test with its exact null distribution, and Acerbi & Szekely's Z2. Apart from
the other tests because they judge forecasts, not the returns' distribution
(docs/VALIDATION.md).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
from scipy import special, stats

from .stat_common import _empty_test, _finite, _reject

__all__ = [
    "christoffersen_independence",
    "es_backtest_z2",
    "historical_var_es",
    "independence_null_distribution",
    "kupiec_pof",
]


def historical_var_es(
    returns: Any, tail: float = 0.05, window: int = 250, min_history: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """Each bar's historical VaR and ES forecast (positive losses) from the returns *before*
    it: a rolling window of `window` bars (the first forecast at bar `window`), or with
    `window` = 0 all earlier bars from bar `min_history`. NaN where there is no forecast,
    and where the bars it would come from are all the same return: a run that never traded
    forecast a VaR of 0, never exceeded it, and Kupiec's test rejected it (p = 3e-24) for a
    risk it never took. The estimators are return_metrics.var_historical /
    cvar_historical: the linearly interpolated `tail` quantile, and the mean of the
    floor((m - 1) tail) + 1 worst of m."""
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
        flat = np.flatnonzero(np.ptp(w, axis=1) == 0) + window
        var[flat] = np.nan
        es[flat] = np.nan
        return var, es
    # Expanding: keep the past sorted (one insertion a bar) and read the same estimators off
    # it, instead of sorting the whole history again for every bar.
    first = max(min_history, 1)
    if n <= first or not np.all(np.isfinite(r)):
        return var, es
    past = sorted(r[:first].tolist())
    for t in range(first, n):
        if past[0] == past[-1]:  # no dispersion: no forecast
            bisect.insort(past, float(r[t]))
            continue
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
    p-value is reported as `asymptotic_p_value`. With no hit, or only hits, there is no
    order to test: NaN, no rejection."""
    h = np.asarray(hits, dtype=bool)
    null, ref = "VaR exceedances are independent", "Christoffersen (1998); Lancaster (1961)"
    if h.size < 2:
        return _empty_test(null, ref, transitions=[[0, 0], [0, 0]])
    n00, n01, n10, n11 = _transitions(h)
    if h.all() or not h.any():
        # Every order of no hit (or of only hits) is the same order: nothing to test, where
        # the mid-p value of that one point said 0.5
        return _empty_test(null, ref, transitions=[[n00, n01], [n10, n11]])
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
