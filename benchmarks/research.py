"""The strategy on the S&P 500 stocks of ../shared/data, out of sample (issue 10 point 6).

Reproduces every number of docs/RESEARCH.md. Run from the checkout (the data path is relative):

    python benchmarks/research.py all            # train, validate, test, baselines, table
    python benchmarks/research.py train          # the two model pairs (tradingd train)
    python benchmarks/research.py validate       # factors, combined, factors-prior on 2009-2012
    python benchmarks/research.py test           # the 8 variants of docs/RESEARCH.md, 2013-2018
    python benchmarks/research.py baselines      # equal-weight buy-and-hold and the S&P 500 index
    python benchmarks/research.py table          # the results table from var/runs/*/summary.json

Periods (chronological, nothing after a period's start is seen by what trades it):
  * model: trained on bars up to 2008-12-31 (its last 20% of windows decide early stopping);
    the same pair is used in the validation and the test period (not retrained on 2009-2012:
    no time on this machine; so in the test it is 4-10 years stale, never ahead);
  * validation 2009-01-01 .. 2012-12-31: the only period on which settings were looked at;
  * test 2013-01-01 .. 2018-12-31: run once per variant, no choice made on it.
History before a run's start warms up features, model windows and signals (no trading on it).

Everything written goes under var/ (never committed): var/research/*.toml overlays and logs,
var/models/research-to2008/ model pair, var/runs/research-*/ run records.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = "../shared/data/sp500_daily_1999_2018.parquet"
OUT = Path("var/research")
SEED = 20261201
TRAIN_SYMBOLS = 30  # random symbols (listed by 2000-01-31) the models are trained on
VAL = ("2009-01-01", "2012-12-31")
TEST = ("2013-01-01", "2018-12-31")
TRAIN_END = {"to2008": "2008-12-31"}  # one model pair, used in validation and test

MODEL_TOML = """[model]
time_steps = 60
cnn_filters = 16
cnn_kernel_size = 2
lstm_units = 16
dropout_rate = 0.3
batch_size = 256
epochs = 4
learning_rate = 0.001
validation_split = 0.2
early_stopping_patience = 2
rf_n_estimators = 30
rf_max_depth = 6
rf_random_state = 42
seed = 42
horizon = 1
ensemble_weights = [0.6, 0.4]
confidence_threshold = 0.55
"""

SIZING = (
    'name = "kelly_garch"\nparams = {{ kelly_multiplier = 0.5, target_vol = 0.15, '
    'max_position = 0.05, refit_bars = 63, fit_scope = "active"{extra} }}\n'
)


def _symbols() -> tuple[list[str], list[str]]:
    df = pd.read_parquet(DATA, columns=["symbol", "date"])
    first = df.groupby("symbol")["date"].min()
    every = sorted(first.index)
    early = sorted(first.index[first <= pd.Timestamp("2000-01-31")])
    rng = np.random.default_rng(SEED)
    train = sorted(rng.choice(early, TRAIN_SYMBOLS, replace=False).tolist())
    return every, train


def _universe(n: int) -> list[str]:
    """All 496 symbols (n = 0) or a random subset of n (fixed seed SEED + 1)."""
    every, _ = _symbols()
    if not n or n >= len(every):
        return every
    rng = np.random.default_rng(SEED + 1)
    return sorted(rng.choice(every, n, replace=False).tolist())


def _toml_list(xs: list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in xs) + "]"


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    print("$", " ".join(cmd), f"> {log}", flush=True)
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    dt = time.perf_counter() - t0
    print(f"  rc={rc} in {dt:.0f} s", flush=True)
    if rc:
        sys.exit(f"failed: see {log}")
    return dt


def train() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    _, syms = _symbols()
    (OUT / "model.toml").write_text(MODEL_TOML)
    for name, end in TRAIN_END.items():
        overlay = OUT / f"train_{name}.toml"
        overlay.write_text(
            f'[run]\nname = "research-train-{name}"\nstart = ""\nend = "{end}"\n\n'
            f'[data]\nsource = "parquet"\npath = "{DATA}"\nlayout = "long"\n'
            f"symbols = {_toml_list(syms)}\n"
        )
        _run(
            [
                "tradingd",
                "train",
                "-c",
                "config/default.toml",
                "-c",
                str(overlay),
                "--model-config",
                str(OUT / "model.toml"),
                "--out",
                f"var/models/research-{name}",
            ],
            OUT / f"train_{name}.log",
        )


PRIOR = ", kelly_window = 1000000, min_trades = 1000000"

VARIANTS = {
    # name: (signals toml, sizing extra params)
    "combined": ("ml+mf", ""),
    "factors": ("mf", ""),
    "ml": ("ml", ""),
    "combined-novol": ("ml+mf", ', volatility = "none"'),
    "combined-monthly": ("ml+mf", ', rebalance = "monthly"'),
    # Diagnostics: the Kelly fraction held at its prior (W 0.55, R 1.5: f = 0.25) for the whole
    # run (min_trades never reached). With the default, once the strategy's own closed trades
    # give f <= 0 it sizes every position at 0, no trade closes again and f never recovers
    # (see docs/RESEARCH.md): these runs show what the signals do when they keep trading.
    "factors-prior": ("mf", PRIOR),
    "combined-prior": ("ml+mf", PRIOR),
    "ml-prior": ("ml", PRIOR),
    "combined-novol-prior": ("ml+mf", PRIOR + ', volatility = "none"'),
}


def _signals(kind: str, model: str) -> str:
    ml = (
        f'[[signals]]\nname = "ml_ensemble"\nweight = {{w}}\n'
        f'params = {{{{ model_dir = "{model}" }}}}\n'
    )
    mf = '[[signals]]\nname = "multi_factor"\nweight = {w}\n'
    if kind == "ml+mf":
        return ml.format(w=0.6) + "\n" + mf.format(w=0.4)
    if kind == "ml":
        return ml.format(w=1.0)
    return mf.format(w=1.0)


def backtests(period: str, variants: list[str], n_symbols: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    start, end = VAL if period == "val" else TEST
    model = "var/models/research-to2008"
    universe = _universe(n_symbols)
    for v in variants:
        kind, extra = VARIANTS[v]
        run_id = f"research-{period}-{v}" + (f"-n{n_symbols}" if n_symbols else "")
        overlay = OUT / f"{run_id}.toml"
        data = f"symbols = {_toml_list(universe)}\n" if n_symbols else ""
        overlay.write_text(
            f'[run]\nname = "{run_id}"\nrun_id = "{run_id}"\nstart = "{start}"\nend = "{end}"\n\n'
            f"[data]\n{data}\n{_signals(kind, model)}\n[sizing]\n{SIZING.format(extra=extra)}"
        )
        _run(
            [
                "tradingd",
                "backtest",
                "-c",
                "config/default.toml",
                "-c",
                "config/research.toml",
                "-c",
                str(overlay),
                "--json",
                "--no-progress",
            ],
            OUT / f"{run_id}.log",
        )


def _metrics(equity: pd.Series, start: str) -> dict[str, float]:
    """The backtest summary's formulas (daemon/analysis/metrics.py) on a benchmark equity curve:
    no costs, no trades."""
    base = float(equity[equity.index < pd.Timestamp(start)].iloc[-1])  # close before start
    e = np.concatenate(([base], equity[equity.index >= pd.Timestamp(start)].to_numpy(float)))
    rets = e[1:] / e[:-1] - 1.0
    n = len(rets)
    growth = float(np.prod(1 + rets))
    curve = np.concatenate(([1.0], np.cumprod(1 + rets)))
    dd = 1 - curve / np.maximum.accumulate(curve)
    return {
        "annual_return": growth ** (252 / n) - 1,
        "annual_volatility": float(np.std(rets, ddof=1)) * math.sqrt(252),
        "sharpe": float(np.mean(rets) / np.std(rets, ddof=1)) * math.sqrt(252),
        "max_drawdown": float(dd.max()),
        "total_return": growth - 1,
        "bars": n,
    }


def baselines(n_symbols: int) -> dict[str, dict[str, float]]:
    """Equal weight of the same universe (adjusted closes, dividends reinvested, no costs),
    daily-rebalanced and buy-once, and the S&P 500 index (price index, bundled arch series)."""
    universe = _universe(n_symbols)
    df = pd.read_parquet(DATA, columns=["symbol", "date", "adj_close"])
    px = df[df.symbol.isin(universe)].pivot(index="date", columns="symbol", values="adj_close")
    out: dict[str, dict[str, float]] = {}
    for period, (start, end) in (("val", VAL), ("test", TEST)):
        p = px[px.index <= pd.Timestamp(end)]
        before = p[p.index < pd.Timestamp(start)].index[-1]
        p = p[p.index >= before]
        r = p.pct_change().iloc[1:]
        # daily-rebalanced: mean return of the names with a return that day
        ew = (1 + r.mean(axis=1, skipna=True)).cumprod()
        ew = pd.concat([pd.Series([1.0], index=[before]), ew])
        out[f"{period}-ew-daily"] = _metrics(ew, start)
        # buy once at the close before the start, equal money in every name priced then; held
        held = p.columns[p.loc[before].notna()]
        v = (p[held] / p.loc[before, held]).ffill().mean(axis=1)
        out[f"{period}-ew-buyonce"] = _metrics(v, start)
        out[f"{period}-ew-buyonce"]["names"] = len(held)
        from arch.data import sp500

        idx = sp500.load()["Adj Close"]
        idx.index = pd.to_datetime(idx.index)
        idx = idx[(idx.index <= pd.Timestamp(end))]
        out[f"{period}-sp500"] = _metrics(idx, start)
    OUT.mkdir(parents=True, exist_ok=True)
    name = "baselines" + (f"-n{n_symbols}" if n_symbols else "") + ".json"
    (OUT / name).write_text(json.dumps(out, indent=2))
    return out


COLS = [
    ("annual_return", "ann. return", "pct"),
    ("annual_volatility", "volatility", "pct"),
    ("sharpe", "Sharpe", "f2"),
    ("max_drawdown", "max DD", "pct"),
    ("win_rate", "win rate", "pct"),
    ("round_trips", "round trips", "int"),
    ("closing_fills", "closing fills", "int"),
    ("fills", "fills", "int"),
    ("turnover_pa", "turnover / yr", "x"),
    ("costs", "costs", "usd"),
    ("exposure", "avg gross", "pct"),
]


def _fmt(v: object, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "pct":
        return f"{float(v) * 100:.1f}%"
    if kind == "f2":
        return f"{float(v):.2f}"
    if kind == "int":
        return f"{int(v):,d}"
    if kind == "x":
        return f"{float(v):.1f}x"
    return f"${float(v):,.0f}"


def table(n_symbols: int) -> None:
    suffix = f"-n{n_symbols}" if n_symbols else ""
    bl = (
        json.loads((OUT / f"baselines{suffix}.json").read_text())
        if (OUT / f"baselines{suffix}.json").exists()
        else {}
    )
    for period in ("val", "test"):
        rows = []
        for v in VARIANTS:
            p = Path("var/runs") / f"research-{period}-{v}{suffix}" / "summary.json"
            if not p.exists():
                continue
            s = json.loads(p.read_text())
            s = s.get("summary", s)
            years = s["bars"] / 252
            s["turnover_pa"] = s["turnover"] / years
            s["costs"] = s["commission_paid"] + s["slippage_paid"]
            rows.append((v, s))
        for b in ("ew-daily", "ew-buyonce", "sp500"):
            if f"{period}-{b}" in bl:
                rows.append((b, bl[f"{period}-{b}"]))
        if not rows:
            continue
        print(f"\n{period} {VAL if period == 'val' else TEST}, universe {suffix or 'all 496'}")
        print("| run | " + " | ".join(c[1] for c in COLS) + " |")
        print("|---" * (len(COLS) + 1) + "|")
        for name, s in rows:
            print(f"| {name} | " + " | ".join(_fmt(s.get(k), kind) for k, _, kind in COLS) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["all", "train", "validate", "test", "baselines", "table"])
    ap.add_argument("--symbols", type=int, default=0, help="random subset of N symbols (0: all)")
    ap.add_argument(
        "--variants", default="", help="comma-separated subset of " + ",".join(VARIANTS)
    )
    a = ap.parse_args()
    chosen = a.variants.split(",") if a.variants else None
    if a.step in ("all", "train"):
        train()
    if a.step in ("all", "validate"):
        backtests("val", chosen or ["factors", "combined", "factors-prior"], a.symbols)
    if a.step in ("all", "test"):
        backtests(
            "test",
            chosen
            or [
                "combined",
                "factors",
                "ml",
                "combined-novol",
                "factors-prior",
                "combined-prior",
                "combined-novol-prior",
            ],
            a.symbols,
        )
    if a.step in ("all", "baselines"):
        baselines(a.symbols)
    if a.step in ("all", "table", "baselines"):
        table(a.symbols)


if __name__ == "__main__":
    main()
