"""Calibration of the validator's tests: strategies without an edge by construction
(`null_strategy_returns`) and each test's rejection rate over them with exact binomial
intervals (`calibration`). Used by the tests and benchmarks/validation.py to check that a
test rejects about `alpha` of true nulls; not part of validating a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from .stat_common import HEADLINE

if TYPE_CHECKING:
    from .validation import StatisticalValidator

__all__ = ["calibration", "clopper_pearson", "null_strategy_returns"]


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
