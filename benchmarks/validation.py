"""Calibration of the StatisticalValidator and the speed of the Monte Carlo (issue 11 point 8).

    python benchmarks/validation.py all          # everything below, ~10 min on 2 cores
    python benchmarks/validation.py calibration  # each test's rejection rate, null strategies
    python benchmarks/validation.py dsr          # selection bias: best of N trials, PSR vs DSR
    python benchmarks/validation.py montecarlo   # 10,000 paths, IID and stationary, 19 years
    python benchmarks/validation.py all --json out.json   # + every number as JSON

Calibration: strategies with no edge by construction (`validation.null_strategy_returns`),
1,260 days each (5 years), risk-free rate 0 (their excess return is 0). For each test, the
share of strategies whose null is rejected at 5%, with its 95% Clopper-Pearson interval. A
calibrated test rejects 5%. Setups:

* ``normal``: 20-day momentum, long/short, on IID normal random walks. The strategy's returns
  are then exactly IID N(0, 1%^2), so every test's null holds (mean 0, Sharpe 0, normal,
  no autocorrelation, a correct VaR / ES if the forecast were exact, no extra drawdown).
  10,000 strategies for the cheap tests, `--expensive` (1,000) for the simulated ones
  (expected shortfall: 1,000 simulations each; drawdown: 1,000 stationary-bootstrap paths).
* ``long_flat``: the same rule long/flat: returns are zero half the time (not normal, but
  mean and Sharpe 0).
* ``sp500_signs``: random stretches of the real S&P 500 index returns (arch's bundled data,
  1999-2018) with fair-coin positions: mean 0 by symmetry, real fat tails and volatility
  clustering (so Jarque-Bera and Ljung-Box on squares *should* reject: their null is false).

Monte Carlo: 10,000 paths of each bootstrap on a 19-year daily series: the equal-weight,
daily-rebalanced portfolio of the ../shared/data stocks listed over 1999-12-31 .. 2018-12-31
(4,779 returns), or the bundled S&P 500 index (5,030) when the shared data is absent.
Timed serially, and with `--workers` local processes through the `map_fn` hook (the results
are checked to be identical).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tradingd.analysis import montecarlo as mc
from tradingd.analysis import validation as va

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "sp500_daily_1999_2018.parquet"
# The simulated tests (1,000 simulations or paths each) run on fewer strategies; the deflated
# Sharpe ratio needs several trials, which one strategy is not.
EXPENSIVE = ("expected_shortfall", "drawdown")
CHEAP = tuple(t for t in va.TESTS if t not in EXPENSIVE and t != "deflated_sharpe")
SETUPS = {
    "normal": {"rule": "momentum", "positions": "long_short", "source": "normal"},
    "long_flat": {"rule": "momentum", "positions": "long_flat", "source": "normal"},
    "sp500_signs": {"rule": "random", "positions": "long_short", "source": "sp500"},
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return rev
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git": git_revision(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return info


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


# ----------------------------------------------------------------------------- calibration


def calibrate(
    setup: str, strategies: int, expensive: int, days: int, seed: int, tests: tuple[str, ...]
) -> dict[str, Any]:
    returns = va.null_strategy_returns(strategies, days, seed=seed, **SETUPS[setup])
    v = va.StatisticalValidator(va.ValidationConfig(risk_free_rate=0.0))
    out: dict[str, Any] = {"setup": setup, "days": days, "seed": seed, "tests": {}}
    cheap = tuple(t for t in tests if t in CHEAP)
    costly = tuple(t for t in tests if t in EXPENSIVE)
    for names, rows in ((cheap, returns), (costly, returns[:expensive])):
        if not names:
            continue
        t0 = time.perf_counter()
        cal = va.calibration(v, rows, names)
        elapsed = time.perf_counter() - t0
        for name, res in cal["tests"].items():
            out["tests"][name] = {**res, "seconds_for_all_tests_of_this_batch": elapsed}
        say(f"  {setup}: {len(names)} tests on {rows.shape[0]} strategies in {elapsed:.1f} s")
    if "drawdown" in costly and expensive:
        # The same test against the stationary block bootstrap instead of permutations.
        sb = va.StatisticalValidator(
            va.ValidationConfig(risk_free_rate=0.0, drawdown_method="stationary")
        )
        t0 = time.perf_counter()
        res = va.calibration(sb, returns[:expensive], ["drawdown"])["tests"]["drawdown"]
        elapsed = time.perf_counter() - t0
        out["tests"]["drawdown (stationary bootstrap)"] = {
            **res,
            "seconds_for_all_tests_of_this_batch": elapsed,
        }
        say(f"  {setup}: drawdown (stationary) on {expensive} strategies in {elapsed:.1f} s")
    return out


def print_calibration(results: list[dict[str, Any]]) -> None:
    for res in results:
        print(f"\n### setup {res['setup']} ({res['days']} days, seed {res['seed']})\n")
        print("| test | strategies | rejections | rate | 95% Clopper-Pearson |")
        print("|---|---|---|---|---|")
        for name, t in res["tests"].items():
            lo, hi = t["ci95"]
            print(
                f"| {name} | {t['strategies']:,} | {t['rejections']:,} | {pct(t['rate'])} | "
                f"[{pct(lo)}, {pct(hi)}] |"
            )


# ----------------------------------------------------------------------------- selection bias


def selection(researchers: int, trials: int, days: int, seed: int) -> dict[str, Any]:
    """Each researcher tries `trials` null strategies and keeps the best Sharpe ratio; how
    often does each test call the kept one significant at 5%?"""
    v = va.StatisticalValidator(va.ValidationConfig(risk_free_rate=0.0))
    naive_sharpe = naive_psr = dsr = sidak = 0
    ppy = 252.0
    t0 = time.perf_counter()
    for i in range(researchers):
        r = va.null_strategy_returns(trials, days, seed=seed * 1_000_003 + i)
        sr = r.mean(axis=1) / r.std(axis=1, ddof=1) * math.sqrt(ppy)
        best = r[int(np.argmax(sr))]
        variance = float(np.var(sr, ddof=1))  # of the trials' annualised Sharpe ratios
        res = v.run_tests(
            best,
            ["sharpe_ratio", "probabilistic_sharpe", "deflated_sharpe"],
            trials={"trials": trials, "sharpe_variance": variance, "source": "benchmark"},
        )
        naive_sharpe += res["sharpe_ratio"]["reject"]
        naive_psr += res["probabilistic_sharpe"]["reject"]
        dsr += res["deflated_sharpe"]["reject"]
        sidak += res["deflated_sharpe"]["sidak_reject"]
    elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {"researchers": researchers, "trials": trials, "days": days}
    for name, k in (
        ("sharpe_ratio", naive_sharpe),
        ("psr", naive_psr),
        ("dsr", dsr),
        ("sidak", sidak),
    ):
        out[name] = {
            "rejections": int(k),
            "rate": k / researchers,
            "ci95": list(va.clopper_pearson(int(k), researchers, 0.95)),
        }
    out["seconds"] = elapsed
    return out


def print_selection(results: list[dict[str, Any]]) -> None:
    print("\n### selection bias: the best of N null strategies (1,260 days)\n")
    print(
        "| trials N | researchers | Sharpe test on the best | PSR(0) | DSR (N, V from the "
        "trials) | Sidak-adjusted PSR(0) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        cells = [
            f"{pct(r[k]['rate'])} [{pct(r[k]['ci95'][0])}, {pct(r[k]['ci95'][1])}]"
            for k in ("sharpe_ratio", "psr", "dsr", "sidak")
        ]
        print(f"| {r['trials']} | {r['researchers']:,} | " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------- Monte Carlo


def nineteen_years() -> tuple[np.ndarray, str]:
    if DATA.exists():
        import pandas as pd

        raw = pd.read_parquet(DATA, columns=["symbol", "date", "adj_close"])
        wide = raw.pivot(index="date", columns="symbol", values="adj_close")
        wide = wide.loc["1999-12-31":"2018-12-31"].dropna(axis=1)
        r = wide.pct_change().iloc[1:].mean(axis=1).to_numpy()
        return r, f"equal-weight daily-rebalanced, {wide.shape[1]} stocks of {DATA.name}"
    from arch.data import sp500

    r = sp500.load()["Adj Close"].pct_change().dropna().to_numpy()
    return r, "bundled S&P 500 index (arch), shared data absent"


def time_montecarlo(paths: int, workers: int, repeats: int) -> dict[str, Any]:
    r, what = nineteen_years()
    out: dict[str, Any] = {"series": what, "bars": int(r.size), "paths": paths, "methods": {}}
    block = mc.automatic_block_length(r)
    out["block_length"] = block
    for method in ("iid", "stationary"):
        cfg = mc.MonteCarloConfig(paths=paths, methods=(method,), block_length=block)
        times = []
        serial = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            serial = mc.simulate(r, cfg)
            times.append(time.perf_counter() - t0)
        entry: dict[str, Any] = {
            "seconds": times,
            "median_seconds": float(np.median(times)),
            "summary": serial["methods"][method] if serial else None,
        }
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                t0 = time.perf_counter()
                par = mc.simulate(r, cfg, map_fn=pool.map)
                entry[f"seconds_{workers}_processes"] = time.perf_counter() - t0
            entry["identical_to_serial"] = json.dumps(par) == json.dumps(serial)
        out["methods"][method] = entry
        say(f"  {method}: {paths:,} paths x {r.size:,} bars in {np.median(times):.2f} s")
    return out


def print_montecarlo(res: dict[str, Any]) -> None:
    print(f"\n### Monte Carlo: {res['paths']:,} paths of {res['bars']:,} daily returns")
    print(f"series: {res['series']}; stationary mean block length {res['block_length']:.2f}\n")
    print("| method | serial (median) | processes | identical | final return mean [p5, p95] "
          "| Sharpe mean [p5, p95] | max DD mean [p5, p95] |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for method, e in res["methods"].items():
        s = e["summary"]
        cells = []
        for key in ("final_return", "sharpe", "max_drawdown"):
            d = s[key]
            cells.append(f"{d['mean']:.3f} [{d['p5']:.3f}, {d['p95']:.3f}]")
        par = [k for k in e if k.startswith("seconds_") and k.endswith("processes")]
        ptxt = f"{e[par[0]]:.2f} s ({par[0].split('_')[1]})" if par else "-"
        print(
            f"| {method} | {e['median_seconds']:.2f} s | {ptxt} | "
            f"{e.get('identical_to_serial', '-')} | " + " | ".join(cells) + " |"
        )


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["all", "calibration", "dsr", "montecarlo"])
    p.add_argument("--strategies", type=int, default=10_000, help="for the cheap tests")
    p.add_argument("--expensive", type=int, default=1_000, help="for ES and drawdown tests")
    p.add_argument("--other", type=int, default=1_000, help="strategies of the other setups")
    p.add_argument("--days", type=int, default=1260)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--second-seed", type=int, default=7, help="headline test again")
    p.add_argument("--paths", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    results: dict[str, Any] = {"machine": machine_info()}
    t_all = time.perf_counter()
    if a.what in ("all", "calibration"):
        say("calibration ...")
        cal = [calibrate("normal", a.strategies, a.expensive, a.days, a.seed, CHEAP + EXPENSIVE)]
        cal.append(calibrate("normal", a.strategies, 0, a.days, a.second_seed, ("sharpe_ratio",)))
        for setup in ("long_flat", "sp500_signs"):
            cal.append(calibrate(setup, a.other, a.other, a.days, a.seed, CHEAP + EXPENSIVE))
        results["calibration"] = cal
        print_calibration(cal)
    if a.what in ("all", "dsr"):
        say("selection bias ...")
        sel = [selection(1000, 10, a.days, a.seed), selection(500, 100, a.days, a.seed)]
        results["selection"] = sel
        print_selection(sel)
    if a.what in ("all", "montecarlo"):
        say("Monte Carlo ...")
        results["montecarlo"] = time_montecarlo(a.paths, a.workers, a.repeats)
        print_montecarlo(results["montecarlo"])
    results["seconds"] = time.perf_counter() - t_all
    print(f"\nmachine: {json.dumps(results['machine'])}; total {results['seconds']:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
