"""The report's standard extra sections: the StatisticalValidator's tests and its Monte Carlo,
and (when asked, since it replays the run) the return attribution, shaped as the flat tables
`report.build_report` renders.

Why a module of its own: the report renders any JSON-like section and imports none of the
analyses (so a report still builds when one of them cannot run); this is where the CLI's
choice of what a report holds is made, once, for `tradingd report` and `backtest --report`.
Each table keeps every scalar number of its source; lists (confidence intervals) become
"[lo, hi]" text, and nested detail stays in the analysis's own JSON (`validation` in
report.json holds the whole validator output).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The columns of the tests' grid; the rest of a test's numbers go into its "detail" text.
_COLUMNS = ("null", "statistic", "p_value", "reject")


def _num(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.6g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_num(v) for v in x) + "]"
    return str(x)


def _test_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One test as a row: the common columns, every other scalar as "key=value" text (one
    grid of 14 tests with ~40 sparse columns would not be readable), the reference last."""
    out: dict[str, Any] = {k: row.get(k) for k in _COLUMNS}
    skip = {*_COLUMNS, "reference"}
    out["detail"] = "; ".join(
        f"{k}={_num(v)}" for k, v in row.items() if k not in skip and not isinstance(v, Mapping)
    )
    out["reference"] = row.get("reference", "")
    return out


def validation_sections(validation: Mapping[str, Any]) -> dict[str, Any]:
    """`StatisticalValidator.validate_performance` output -> three sections: the verdict
    (headline test, trials behind the deflated Sharpe ratio, Monte Carlo settings), the tests
    (a row each) and the Monte Carlo (a row per method and statistic)."""
    trials = validation.get("trials") or {}
    mc = validation.get("monte_carlo") or {}
    verdict = {
        "verdict from": validation.get("verdict_test", validation.get("headline")),
        "significant": validation.get("significant"),
        "headline test": validation.get("headline"),
        "headline test alone (before the trial count)": validation.get(
            "significant_before_trials", validation.get("significant")
        ),
        "significance level (alpha)": validation.get("alpha"),
        # The Sharpe-ratio tests' and the Monte Carlo's (the run summary's Sharpe is at 0%).
        "risk-free rate (annual)": (validation.get("config") or {}).get("risk_free_rate"),
        "strategy variants tried (trials)": trials.get("trials"),
        "trials counted from": trials.get("source"),
        "Monte Carlo paths per method": mc.get("paths"),
        "Monte Carlo seed": mc.get("seed"),
        "block length (stationary bootstrap)": mc.get("block_length"),
    }
    tests = {name: _test_row(row) for name, row in (validation.get("tests") or {}).items()}
    paths: dict[str, Any] = {}
    for method, stats in (mc.get("methods") or {}).items():
        for stat, row in stats.items():
            if isinstance(row, Mapping):
                paths[f"{method}: {stat}"] = {
                    k: v for k, v in row.items() if not isinstance(v, (Mapping, list))
                }
    return {
        "Statistical validation": verdict,
        "Statistical tests": tests,
        "Monte Carlo": paths,
    }


def attribution_sections(attribution: Mapping[str, Any]) -> dict[str, Any]:
    """`attribute_run` output -> the component lines (they add up to the run's return) and
    the beta decomposition."""
    comps = attribution.get("components") or {}
    lines = {
        str(r.get("line")): {k: v for k, v in r.items() if not isinstance(v, (Mapping, list))}
        for r in comps.get("rows") or []
    }
    risk = attribution.get("risk") or {}
    return {
        "Attribution: return by component": lines,
        "Attribution: systematic and idiosyncratic risk": {
            k: v for k, v in risk.items() if not isinstance(v, (Mapping, list))
        },
    }
