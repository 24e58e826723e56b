"""The market's part of a run's return: the beta decomposition of its per-bar returns into
systematic and idiosyncratic return and risk (`beta_decomposition`), and the table of a
`PnLAttribution`'s lines with each line's beta against the same benchmark
(`component_attribution`). Pure functions of arrays, apart from the ledger, which knows
nothing of a benchmark.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .attribution_ledger import PnLAttribution
from .return_metrics import beta, simple_returns

__all__ = ["beta_decomposition", "component_attribution"]

_NAN = math.nan


def _weights(equity: np.ndarray, cap: float) -> np.ndarray:
    """E_{t-1} / E_0: what turns a bar's return into money over the initial capital."""
    return np.concatenate(([cap], equity[:-1])) / cap


def beta_decomposition(
    equity: Any,
    initial_capital: float,
    benchmark_returns: Any,
    periods_per_year: float = 252.0,
) -> dict[str, float]:
    """Systematic against idiosyncratic return and risk of an equity curve.

    OLS of the per-bar simple returns on the benchmark's, with an intercept, over the bars
    where both are known: r_t = alpha + beta b_t + e_t (beta = cov(r, b) / var(b), the
    `PerformanceAnalyzer`'s). Per bar, the systematic return is beta b_t and the
    idiosyncratic one r_t - beta b_t = alpha + e_t. Variance shares: var(beta b) / var(r) =
    R^2 and var(r - beta b) / var(r) = 1 - R^2 (OLS residuals are uncorrelated with b in
    the sample). Return contributions are money over the initial capital,
    sum_t part_t E_{t-1} / E_0; the bars without a benchmark return make `unaligned_return`,
    so systematic + idiosyncratic + unaligned = total return."""
    e = np.asarray(equity, dtype=float).ravel()
    cap = float(initial_capital)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"initial_capital must be positive, got {initial_capital!r}")
    if not np.isfinite(e).all():
        raise ValueError("equity contains NaN or inf")
    b = np.asarray(benchmark_returns, dtype=float).ravel()
    if b.size != e.size:
        raise ValueError(f"benchmark returns ({b.size}) and equity ({e.size}) differ in length")
    ppy = float(periods_per_year)
    r = simple_returns(e, cap)
    w = _weights(e, cap)
    both = np.isfinite(r) & np.isfinite(b)
    rb, bb = r[both], b[both]
    n = int(both.sum())
    bt = beta(rb, bb) if n >= 3 else _NAN
    total = float(e[-1] / cap - 1.0) if e.size else 0.0
    out: dict[str, float] = {
        "bars": int(e.size),
        "benchmark_bars": n,
        "total_return": total,
        "beta": bt,
        "beta_stderr": _NAN,
        "alpha_per_bar": _NAN,
        "alpha_annualised": _NAN,
        "r_squared": _NAN,
        "correlation": _NAN,
        "systematic_variance_share": _NAN,
        "idiosyncratic_variance_share": _NAN,
        "total_volatility": float(np.std(rb, ddof=1)) * math.sqrt(ppy) if n >= 2 else _NAN,
        "systematic_volatility": _NAN,
        "idiosyncratic_volatility": _NAN,
        "systematic_return": _NAN,
        "idiosyncratic_return": _NAN,
        "unaligned_return": float(np.sum((r * w)[~both])) if np.isfinite(r).all() else _NAN,
    }
    if not math.isfinite(bt) or not np.isfinite(r).all():
        return out
    a = float(np.mean(rb) - bt * np.mean(bb))
    sys_r = bt * bb
    idio = rb - sys_r
    resid = idio - a
    var_r = float(np.var(rb, ddof=1))
    var_b = float(np.var(bb, ddof=1))
    share = float(np.var(sys_r, ddof=1)) / var_r if var_r > 0 else _NAN
    growth = 1.0 + a
    out.update(
        {
            "beta_stderr": math.sqrt(float(np.sum(resid**2)) / (n - 2) / (var_b * (n - 1))),
            "alpha_per_bar": a,
            "alpha_annualised": growth**ppy - 1.0 if growth > 0 else _NAN,
            "r_squared": share,
            "correlation": math.copysign(math.sqrt(share), bt) if math.isfinite(share) else _NAN,
            "systematic_variance_share": share,
            "idiosyncratic_variance_share": float(np.var(idio, ddof=1)) / var_r
            if var_r > 0
            else _NAN,
            "systematic_volatility": float(np.std(sys_r, ddof=1)) * math.sqrt(ppy),
            "idiosyncratic_volatility": float(np.std(idio, ddof=1)) * math.sqrt(ppy),
            "systematic_return": float(np.sum(sys_r * w[both])),
            "idiosyncratic_return": float(np.sum(idio * w[both])),
        }
    )
    return out


# ----------------------------------------------------------------------------- tables


def component_attribution(pnl: PnLAttribution, benchmark_returns: Any = None) -> dict[str, Any]:
    """The table of a `PnLAttribution`: one row per line with its money (`pnl`), its
    `return` (pnl / initial capital; the rows add up to `total_return`), for components the
    mean share of the score's magnitude they supplied, and with a benchmark each line's
    `beta` (of its per-bar return contributions; the lines' betas add up to the run's) and
    `systematic_return` (beta_line x benchmark return, as money over the initial capital)."""
    cap = pnl.initial_capital
    money = pnl.lines.sum(axis=0)
    final = float(pnl.equity[-1]) if pnl.equity.size else cap
    total = final / cap - 1.0
    b = None if benchmark_returns is None else np.asarray(benchmark_returns, dtype=float).ravel()
    if b is not None and b.size != len(pnl.lines):
        raise ValueError(f"benchmark returns ({b.size}) and bars ({len(pnl.lines)}) differ")
    per_bar = pnl.returns().to_numpy()
    w = _weights(pnl.equity, cap)
    both = np.isfinite(b) & np.isfinite(per_bar).all(axis=1) if b is not None else None
    # Line betas only where the run's own beta is defined (the same bars and the same test
    # of a benchmark that moves), so that they add up to it.
    market = (
        both is not None
        and int(both.sum()) >= 3
        and math.isfinite(beta(per_bar[both].sum(axis=1), b[both]))  # type: ignore[index]
    )
    rows = []
    for j, line in enumerate(pnl.lines.columns):
        kind = "component" if line in pnl.components else line  # unattributed, costs, residual
        row: dict[str, Any] = {
            "line": line,
            "kind": kind,
            "pnl": float(money[line]),
            "return": float(money[line]) / cap,
            "mean_abs_score_share": pnl.mean_abs_score_share.get(line, _NAN),
            "beta": _NAN,
            "systematic_return": _NAN,
        }
        if market:
            bt = _line_beta(per_bar[both, j], b[both])  # type: ignore[index]
            row["beta"] = bt
            if math.isfinite(bt):
                row["systematic_return"] = float(np.sum(bt * b[both] * w[both]))  # type: ignore[index]
        rows.append(row)
    return {
        "method": "score_decomposition",
        "initial_capital": cap,
        "final_equity": final,
        "total_pnl": final - cap,
        "total_return": total,
        "sum_of_lines": float(math.fsum(r["return"] for r in rows)),
        "rows": rows,
        "decisions": pnl.decisions,
        "keying_decisions": pnl.keying_decisions,
        "keying_decisions_unknown": pnl.keying_decisions_unknown,
        "position_bars": pnl.position_bars,
        "unattributed_position_bars": pnl.unattributed_position_bars,
        "max_abs_share": pnl.max_abs_share,
    }


def _line_beta(x: np.ndarray, b: np.ndarray) -> float:
    """cov(x, b) / var(b), additive over lines (unlike `return_metrics.beta`, no line is NaN
    for being constant: a line that never moves has beta 0)."""
    bc = b - b.mean()
    vb = float(np.mean(bc * bc))
    if not vb > 0:
        return _NAN
    return float(np.mean(bc * (x - x.mean())) / vb)
