"""What a walk-forward's folds add up to: the stitched out-of-sample curve, each fold's
in-sample and out-of-sample metrics, parameter stability across folds and performance decay
(docs/WALKFORWARD.md has the definitions and references).

Pure functions of the fold results `run_fold` returns; returns follow docs/ANALYSIS.md
(simple per-bar returns, 252 bars a year, sample deviations, the risk-free rate per bar as
(1 + rf) ** (1 / 252) - 1). A number that cannot be computed (too few folds, no dispersion)
is NaN.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .performance import (
    PerformanceConfig,
    annual_return,
    annual_volatility,
    max_drawdown,
    per_bar_rate,
    sharpe_ratio,
    simple_returns,
    total_return,
)

_NAN = float("nan")


def times_of(labels: Sequence[str]) -> pd.DatetimeIndex:
    """Bar labels (dates or ISO datetimes) as UTC times."""
    return pd.DatetimeIndex(pd.to_datetime(list(labels), utc=True, format="ISO8601"))


def _when(label: str) -> pd.Timestamp:
    return times_of([label])[0]


def fold_curve(fold: Mapping[str, Any]) -> pd.DataFrame:
    """A fold's traded bars: equity, gross exposure, the return of each bar (the first
    against the initial capital) and its segment ("in_sample" up to the training end,
    "test" after it) with the bar's distance from the training end (`horizon`, 1 = the
    first test bar; 0 in sample)."""
    eq = fold["equity"]
    t = times_of(eq["time"])
    e = np.asarray(eq["equity"], dtype=float)
    cap = float(fold["initial_capital"])
    test = np.asarray(t > _when(fold["train_end"]))
    return pd.DataFrame(
        {
            "equity": e,
            "gross_exposure": np.asarray(eq["gross_exposure"], dtype=float),
            "return": simple_returns(e, cap),
            "segment": np.where(test, "test", "in_sample"),
            "horizon": np.where(test, np.cumsum(test), 0),
        },
        index=t,
    )


def stitch(folds: Sequence[Mapping[str, Any]], initial_capital: float) -> pd.DataFrame:
    """One out-of-sample curve: each fold's bars from its test start to its stitch end,
    compounded from `initial_capital`. Each bar comes from exactly one fold, whose training
    ended before it. The book changes hands at each fold boundary without a cost (the next
    fold's positions were built in its own replay)."""
    parts = []
    for f in folds:
        c = fold_curve(f)
        keep = (c["segment"] == "test") & (c.index <= _when(f["stitch_end"]))
        part = c.loc[keep, ["return", "gross_exposure", "horizon"]].copy()
        part["fold"] = int(f["fold"])
        parts.append(part)
    if not parts:
        raise ValueError("no fold to stitch")
    out = pd.concat(parts)
    if not out.index.is_monotonic_increasing or out.index.has_duplicates:
        raise ValueError("fold segments overlap or are out of order: each bar needs one fold")
    out["equity"] = float(initial_capital) * np.cumprod(1.0 + out["return"].to_numpy())
    out.index.name = "time"
    return out[["equity", "return", "gross_exposure", "fold", "horizon"]]


def segment_metrics(equity: np.ndarray, base: float, perf: PerformanceConfig) -> dict[str, Any]:
    """Return, risk and Sharpe of a stretch of equity that started at `base`."""
    ppy = perf.bars_a_year
    r = simple_returns(equity, base) if equity.size else np.empty(0)
    return {
        "bars": int(equity.size),
        "total_return": total_return(r) if r.size else _NAN,
        "annual_return": annual_return(r, ppy),
        "volatility": annual_volatility(r, ppy),
        "sharpe": sharpe_ratio(r, per_bar_rate(perf.risk_free_rate, ppy), ppy),
        "max_drawdown": max_drawdown(equity, base) if equity.size else _NAN,
    }


def fold_metrics(fold: Mapping[str, Any], perf: PerformanceConfig) -> dict[str, Any]:
    """In-sample (the training window traded) and out-of-sample (the whole test window)
    metrics of one fold, and Pardo's walk-forward efficiency: out-of-sample over in-sample
    annualised return (NaN unless the in-sample return is positive)."""
    c = fold_curve(fold)
    e = c["equity"].to_numpy()
    ins = (c["segment"] == "in_sample").to_numpy()
    cap = float(fold["initial_capital"])
    base = float(e[ins][-1]) if ins.any() else cap
    m_in = segment_metrics(e[ins], cap, perf)
    m_test = segment_metrics(e[~ins], base, perf)
    a_in, a_test = m_in["annual_return"], m_test["annual_return"]
    wfe = a_test / a_in if math.isfinite(a_in) and a_in > 0 and math.isfinite(a_test) else _NAN
    return {"in_sample": m_in, "test": m_test, "walk_forward_efficiency": wfe}


# ----------------------------------------------------------------------------- decay


# Up to this many points Spearman's p-value is exact (all n! orders, 40,320 at 8): scipy's
# t approximation said p = 0 for any perfect rank order (exact at 3 points: 1/3) and rejected
# a true null 34% of the time at 3 points, 6% still at 8-10.
EXACT_SPEARMAN_MAX = 8


def spearman_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Spearman's rho of x and y (no NaN): exact by enumerating every
    order of y's ranks up to `EXACT_SPEARMAN_MAX` points, ties kept as midranks; scipy's t
    approximation above."""
    n = int(x.size)
    if n > EXACT_SPEARMAN_MAX:
        return float(stats.spearmanr(x, y).pvalue)
    rx = stats.rankdata(x) - (n + 1) / 2.0
    ry = stats.rankdata(y) - (n + 1) / 2.0
    orders = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
    # Every order has the same ranks, hence the same deviations: the covariance orders rho
    covs = ry[orders] @ rx
    observed = abs(float(ry @ rx))
    return float(np.mean(np.abs(covs) >= observed * (1.0 - 1e-12) - 1e-12))


def _samples(
    x: np.ndarray, y: np.ndarray, every: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) of the finite pairs among every `every`-th fold (the folds whose windows do
    not overlap), then (x, y) of all the finite pairs."""
    ok = np.isfinite(x) & np.isfinite(y)
    keep = np.zeros(x.size, dtype=bool)
    keep[:: max(1, every)] = True
    return x[ok & keep], y[ok & keep], x[ok], y[ok]


def _regression(x: np.ndarray, y: np.ndarray, every: int = 1) -> dict[str, Any]:
    """OLS of y on x (scipy.stats.linregress) and Spearman's rho, on the finite pairs.

    `every`: folds whose windows overlap are not independent observations, and both tests
    assume they are: on per-fold Sharpe ratios of overlapping test windows they rejected "no
    decay" 24% of the time at a nominal 5% (a spurious regression). So the regression and
    the correlation, with their p-values, are over every `every`-th fold, whose windows do
    not overlap (`n_independent` of them; NaN below 3): a slope over all folds printed next
    to the p-value of another regression's read as that slope's significance. `all_folds`
    has the slope, r and rho over every fold, as a description only."""
    xi, yi, x, y = _samples(x, y, every)
    keys = ("slope", "intercept", "r", "p_value", "slope_stderr", "spearman_rho", "spearman_p")
    out: dict[str, Any] = dict.fromkeys(keys, _NAN)
    out["n"] = int(x.size)
    out["n_independent"] = int(xi.size)
    out["independent_every"] = max(1, every)
    described = dict.fromkeys(("slope", "intercept", "r", "spearman_rho"), _NAN)
    if x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        lr = stats.linregress(x, y)
        described.update(
            slope=float(lr.slope),
            intercept=float(lr.intercept),
            r=float(lr.rvalue),
            spearman_rho=float(stats.spearmanr(x, y).statistic),
        )
    out["all_folds"] = {"n": int(x.size), **described}
    if xi.size >= 3 and np.ptp(xi) > 0 and np.ptp(yi) > 0:
        lri = stats.linregress(xi, yi)
        out.update(
            slope=float(lri.slope),
            intercept=float(lri.intercept),
            r=float(lri.rvalue),
            p_value=float(lri.pvalue),
            slope_stderr=float(lri.stderr),
            spearman_rho=float(stats.spearmanr(xi, yi).statistic),
            spearman_p=spearman_p(xi, yi),
        )
    return out


def independent_every(
    folds: Sequence[Mapping[str, Any]], step: int, test_only: bool, window: int | None = None
) -> int:
    """Every how many folds the windows no longer overlap: the test windows' (`test_only`),
    or the training and test windows' together (a fold's test window lies in later folds'
    training windows). `window`: the training and test bars of a fold (`train + test`),
    which the walk-forward passes; without it, the length of a fold's traded curve, which is
    that only when the fold traded its training window too (warmup "train"): with warmup
    "none" the curve is the test window alone, and "independent" folds overlapped by 80%."""
    if not test_only and window is not None:
        return max(1, math.ceil(window / max(1, step)))
    lengths = []
    for f in folds:
        c = fold_curve(f)
        test = int((c["segment"] == "test").sum())
        lengths.append(test if test_only else len(c))
    span = float(np.median(lengths)) if lengths else 0.0
    return max(1, math.ceil(span / max(1, step)))


def decay(
    folds: Sequence[Mapping[str, Any]],
    step: int,
    perf: PerformanceConfig,
    window: int | None = None,
) -> dict[str, Any]:
    """Performance decay over time and with distance from the training end (`window`: a
    fold's training and test bars, as `independent_every` takes it).

    * `by_fold`: out-of-sample Sharpe and return of each fold's whole test window against
      the fold index (a negative slope: the strategy's edge fades over the years).
    * `by_horizon`: every fold's test returns pooled by bars since the training end, in
      buckets of `step` bars (1-21, 22-42, ...), and the regression of the daily return on
      the horizon (a negative slope: the model goes stale as its training data ages).
      Pooled returns of overlapping test windows are not independent: the p-values are a
      guide, not a test.
    * `in_vs_out`: in-sample against out-of-sample Sharpe across folds, and the median
      walk-forward efficiency.
    The by-fold and in-vs-out regressions, with their p-values, are over folds whose windows
    do not overlap (see `_regression`); their `all_folds` describe every fold.
    """
    ppy = perf.bars_a_year
    rf = per_bar_rate(perf.risk_free_rate, ppy)
    idx = np.array([float(f["fold"]) for f in folds])
    metrics = [f["metrics"] for f in folds]
    oos_sharpe = np.array([m["test"]["sharpe"] for m in metrics], dtype=float)
    oos_return = np.array([m["test"]["total_return"] for m in metrics], dtype=float)
    is_sharpe = np.array([m["in_sample"]["sharpe"] for m in metrics], dtype=float)
    wfe = np.array([m["walk_forward_efficiency"] for m in metrics], dtype=float)
    pooled = []
    for f in folds:
        c = fold_curve(f)
        t = c[c["segment"] == "test"]
        pooled.append(pd.DataFrame({"horizon": t["horizon"], "return": t["return"]}))
    rets = pd.concat(pooled, ignore_index=True) if pooled else pd.DataFrame()
    buckets = []
    if len(rets):
        rets["bucket"] = (rets["horizon"] - 1) // step
        for b, g in rets.groupby("bucket"):
            r = g["return"].to_numpy()
            mean = float(np.mean(r))
            buckets.append(
                {
                    "bucket": int(b),
                    "from_bar": int(b) * step + 1,
                    "to_bar": int(g["horizon"].max()),
                    "n": int(r.size),
                    "mean_return": mean,
                    "annual_return": (1.0 + mean) ** ppy - 1.0 if mean > -1 else _NAN,
                    "sharpe": sharpe_ratio(r, rf, ppy),
                }
            )
    h = rets["horizon"].to_numpy(dtype=float) if len(rets) else np.empty(0)
    y = rets["return"].to_numpy(dtype=float) if len(rets) else np.empty(0)
    finite = wfe[np.isfinite(wfe)]
    tests_apart = independent_every(folds, step, test_only=True)
    folds_apart = independent_every(folds, step, test_only=False, window=window)
    return {
        "by_fold": {
            "sharpe_trend": _regression(idx, oos_sharpe, tests_apart),
            "return_trend": _regression(idx, oos_return, tests_apart),
        },
        "by_horizon": {"buckets": buckets, "return_trend": _regression(h, y)},
        "in_vs_out": {
            "sharpe": _regression(is_sharpe, oos_sharpe, folds_apart),
            "mean_in_sample_sharpe": _mean(is_sharpe),
            "mean_out_of_sample_sharpe": _mean(oos_sharpe),
            "median_walk_forward_efficiency": float(np.median(finite)) if finite.size else _NAN,
            "folds_with_efficiency": int(finite.size),
        },
    }


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else _NAN


# ----------------------------------------------------------------------------- stability


def parameter_row(fold: Mapping[str, Any], perf: PerformanceConfig) -> dict[str, Any]:
    """One fold's fitted parameters at its training end, as scalars: Kelly inputs, GARCH
    medians over the symbols fitted by GARCH, and the model's validation metrics and, when
    its card has a held-out test split, its test metrics (`model_test_*`; absent for a
    card without one)."""
    row: dict[str, Any] = {"fold": int(fold["fold"]), "train_end": fold["train_end"]}
    params = fold.get("params") or {}
    k = params.get("kelly")
    if k:
        row.update(
            kelly_win_rate=_f(k["win_rate"]),
            kelly_win_loss_ratio=_f(k["win_loss_ratio"]),
            kelly_fraction=_f(k["fraction"]),
            kelly_trades=int(k["trades"]),
            kelly_from_trades=int(k["source"] == "trades"),
        )
    g = garch_frame(fold)
    if len(g):
        fitted = g[g["method"] == "garch"]
        known = g[g["method"] != "none"]
        row["garch_symbols"] = len(fitted)
        row["garch_share"] = len(fitted) / len(known) if len(known) else _NAN
        for col in ("alpha", "beta", "persistence", "long_run_vol"):
            row[f"garch_{col}_median"] = float(fitted[col].median()) if len(fitted) else _NAN
    m = fold.get("model")
    if m:
        row.update(_split_metrics("model_val", m["validation"]))
        row.update(
            model_epochs_run=int(m["training_history"].get("epochs_run", 0)),
            model_best_epoch=int(m["training_history"].get("best_epoch", 0)),
            model_train_samples=int(m["samples"]["train"]),
        )
        if m.get("test"):
            row.update(_split_metrics("model_test", m["test"]))
            row["model_test_samples"] = int(m["samples"]["test"])
    return row


def _split_metrics(prefix: str, split: Mapping[str, Any]) -> dict[str, float]:
    """A model split's ensemble metrics (a card's `metrics.validation` or `metrics.test`):
    its MSE over the zero forecast's, directional accuracy and IC."""
    ens, zero = split["ensemble"], split["zero"]
    return {
        f"{prefix}_mse_ratio": _f(ens["mse"]) / _f(zero["mse"]) if _f(zero["mse"]) else _NAN,
        f"{prefix}_directional_accuracy": _f(ens["directional_accuracy"]),
        f"{prefix}_ic": _f(ens["ic"]),
    }


def garch_frame(fold: Mapping[str, Any], periods_per_year: float = 252.0) -> pd.DataFrame:
    """Per-symbol GARCH(1,1) parameters of a fold (decimal returns), with the persistence
    alpha + beta and the annualised long-run volatility sqrt(omega / (1 - persistence) x
    252) where the process is stationary."""
    g = (fold.get("params") or {}).get("garch") or {}
    if not g:
        return pd.DataFrame(columns=["symbol", "method", "mu", "omega", "alpha", "beta"])
    df = pd.DataFrame([{"symbol": s, **v} for s, v in g.items()])
    for col in ("mu", "omega", "alpha", "beta"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["persistence"] = df["alpha"] + df["beta"]
    with np.errstate(invalid="ignore", divide="ignore"):
        lr = np.where(
            (df["method"] == "garch") & (df["persistence"] < 1),
            np.sqrt(df["omega"] / (1 - df["persistence"]) * periods_per_year),
            np.nan,
        )
    df["long_run_vol"] = lr
    return df


def series_stability(x: Any, index: Any = None, every: int = 1) -> dict[str, Any]:
    """Across folds: mean, sample deviation, coefficient of variation, range, lag-1
    autocorrelation and the Spearman trend against the fold index. `every`: the trend's
    p-value (`trend_p`, exact up to `EXACT_SPEARMAN_MAX` folds) is over every `every`-th
    fold, whose training windows do not overlap (parameters fitted on overlapping windows
    drift together; see `_regression`)."""
    v = np.asarray(x, dtype=float)
    i = np.arange(v.size, dtype=float) if index is None else np.asarray(index, dtype=float)
    ii, vi, i, v = _samples(i, v, every)
    out: dict[str, Any] = {"n": int(v.size)}
    out["mean"] = float(np.mean(v)) if v.size else _NAN
    out["std"] = float(np.std(v, ddof=1)) if v.size > 1 else _NAN
    out["cv"] = out["std"] / abs(out["mean"]) if v.size > 1 and out["mean"] != 0 else _NAN
    out["min"] = float(np.min(v)) if v.size else _NAN
    out["max"] = float(np.max(v)) if v.size else _NAN
    ac = _NAN
    if v.size >= 3 and np.ptp(v[:-1]) > 0 and np.ptp(v[1:]) > 0:
        # A correlation does not depend on the scale of either series: each divided by its
        # largest magnitude first, values 1e-200 apart (whose deviations would underflow to
        # 0 inside np.corrcoef: a RuntimeWarning and a clipped +-1) correlate like any others.
        a, b = v[:-1], v[1:]
        ac = float(np.corrcoef(a / np.max(np.abs(a)), b / np.max(np.abs(b)))[0, 1])
    out["lag1_autocorrelation"] = ac
    # The trend's rho and p-value of one sample, the folds whose test windows do not overlap
    # (the rho of every fold was printed beside the p-value of those: its own key now).
    rho = p = rho_all = _NAN
    if v.size >= 3 and np.ptp(v) > 0 and np.ptp(i) > 0:
        rho_all = float(stats.spearmanr(i, v).statistic)
    if vi.size >= 3 and np.ptp(vi) > 0 and np.ptp(ii) > 0:
        rho = float(stats.spearmanr(ii, vi).statistic)
        p = spearman_p(ii, vi)
    out["trend_spearman_rho"], out["trend_p"] = rho, p
    out["trend_spearman_rho_all_folds"] = rho_all
    out["trend_independent_folds"] = int(vi.size)
    return out


def importance_frame(folds: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Random-forest feature importances (mean decrease in impurity), folds x features."""
    rows = {
        int(f["fold"]): f["model"]["feature_importance"]
        for f in folds
        if f.get("model") and f["model"].get("feature_importance")
    }
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def stability(
    folds: Sequence[Mapping[str, Any]],
    perf: PerformanceConfig,
    step: int = 1,
    window: int | None = None,
) -> dict[str, Any]:
    """Parameter stability across folds (see `series_stability` for each scalar); `step`:
    bars between fold starts and `window` a fold's training and test bars, for the trend
    p-values over non-overlapping folds (`independent_every`)."""
    table = pd.DataFrame([parameter_row(f, perf) for f in folds])
    idx = table["fold"].to_numpy(dtype=float) if len(table) else np.empty(0)
    apart = (
        independent_every(folds, step, test_only=False, window=window) if folds and step > 1 else 1
    )
    summary = {
        col: series_stability(pd.to_numeric(table[col], errors="coerce").to_numpy(), idx, apart)
        for col in table.columns
        if col not in ("fold", "train_end")
    }
    out: dict[str, Any] = {"table": table.to_dict("records"), "summary": summary}
    imp = importance_frame(folds)
    if len(imp):
        ranks = []
        for a, b in zip(imp.index[:-1], imp.index[1:], strict=True):
            x, y = imp.loc[a].to_numpy(float), imp.loc[b].to_numpy(float)
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                ranks.append(float(stats.spearmanr(x, y).statistic))
        top = imp.mean().sort_values(ascending=False)
        out["feature_importance"] = {
            "mean": {k: float(v) for k, v in top.items()},
            "std": {k: float(imp[k].std(ddof=1)) if len(imp) > 1 else _NAN for k in top.index},
            "consecutive_rank_correlation": float(np.mean(ranks)) if ranks else _NAN,
        }
    frames = [garch_frame(f, perf.bars_a_year).assign(fold=int(f["fold"])) for f in folds]
    frames = [g for g in frames if len(g)]
    if frames:
        g = pd.concat(frames, ignore_index=True)
        fitted = g[g["method"] == "garch"]
        per_symbol = fitted.groupby("symbol")["persistence"].agg(["count", "std"])
        per_symbol = per_symbol[per_symbol["count"] > 1]
        switches = 0.0
        pivot = g.pivot(index="fold", columns="symbol", values="method")
        if len(pivot) > 1:
            switches = float((pivot.iloc[1:].to_numpy() != pivot.iloc[:-1].to_numpy()).mean())
        out["garch"] = {
            "symbols_fitted_in_2_or_more_folds": len(per_symbol),
            "median_persistence_std_across_folds": float(per_symbol["std"].median())
            if len(per_symbol)
            else _NAN,
            "method_switch_rate": switches,
        }
    return out


def _f(x: Any) -> float:
    return _NAN if x is None else float(x)
