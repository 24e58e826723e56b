"""Out-of-sample evaluation: train up to a date, measure only on bars after it.

    python -m tradingd_models.evaluation bundled   # S&P 500 + NASDAQ indices (the default data)
    python -m tradingd_models.evaluation shared    # ../shared/data: first 100 symbols

Training uses bars up to `--train-end` (its last 20% validate and early-stop the CNN); the
test bars come after `--train-end` and are used for nothing but the numbers printed here. The
same default configuration as `tradingd train`; `--stride` thins the training windows (every
k-th bar) when a universe is too large to train on every window on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tradingd.config import load_config
from tradingd.features.catalog import Catalog, resolve_set
from tradingd.features.engineer import compute_batch, prepare_ml_data
from tradingd.feeds.loaders import load_panel

from .config import ModelConfig
from .evaluate import baselines, metrics
from .training import fit_models

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("bundled", "shared"))
    ap.add_argument("--train-start", default="")
    ap.add_argument("--train-end", default="2014-12-31")
    ap.add_argument("--test-end", default="2018-12-31")
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.which == "bundled":
        panel = load_panel("bundled", start=args.train_start or None, end=args.test_end)
    else:
        path = SHARED / "sp500_daily_1999_2018.parquet"
        panel = load_panel(
            "parquet", str(path), start=args.train_start or "2000-01-01", end=args.test_end
        )
        panel = panel.select(symbols=panel.symbols[: args.symbols])
    cfg = load_config([], env={})
    names = resolve_set(cfg.features.set)
    feats = compute_batch(
        panel,
        names,
        Catalog(cfg.features.indicators, cfg.features.cross_sectional),
        dtype=np.float32,
    )
    split_at = np.datetime64(args.train_end) + np.timedelta64(1, "D")
    mc = ModelConfig(epochs=args.epochs)
    # 1. train + validation from bars up to train_end only
    n_train_bars = int(np.searchsorted(panel.times, np.datetime64(split_at, "ns")))
    inner = prepare_ml_data(
        {n: v[:n_train_bars] for n, v in feats.items()},
        names,
        panel.close[:n_train_bars],
        panel.split[:n_train_bars],
        panel.times[:n_train_bars],
        window=mc.time_steps,
        horizon=mc.horizon,
        validation_fraction=mc.validation_split,
        stride=args.stride,
    )
    # 2. the test windows: every bar after train_end (their history may reach back into it)
    outer = prepare_ml_data(
        feats,
        names,
        panel.close,
        panel.split,
        panel.times,
        window=mc.time_steps,
        horizon=mc.horizon,
        split_at=split_at,
    )
    xt, yt, xv, yv = inner["x_train"], inner["y_train"], inner["x_val"], inner["y_val"]
    xs, ys = outer["x_val"], outer["y_val"]
    print(
        f"{len(panel.symbols)} symbols; train {len(xt)} windows "
        f"({str(inner['t_train'].min())[:10]}..{str(inner['t_train'].max())[:10]}), "
        f"validation {len(xv)}, test {len(xs)} ({str(outer['t_val'].min())[:10]}.."
        f"{str(outer['t_val'].max())[:10]})",
        file=sys.stderr,
    )
    cnn, rf, mean, scale, fit = fit_models(
        xt, yt, xv, yv, mc, log=lambda m: print(m, file=sys.stderr)
    )
    xss = ((xs - mean.astype(np.float32)) / scale.astype(np.float32)).astype(np.float32)
    p_cnn, p_rf = cnn.predict(xss), rf.predict(xss)
    p_ens = 0.6 * p_cnn + 0.4 * p_rf
    last_ret = xs[:, -1, list(names).index("ret_1")]
    result = {
        "data": args.which,
        "symbols": len(panel.symbols),
        "train_windows": len(xt),
        "validation_windows": len(xv),
        "test_windows": len(xs),
        "train_range": [str(inner["t_train"].min())[:10], str(inner["t_train"].max())[:10]],
        "test_range": [str(outer["t_val"].min())[:10], str(outer["t_val"].max())[:10]],
        "stride": args.stride,
        "epochs_run": fit["epochs_run"],
        "best_epoch": fit["best_epoch"],
        "test": {
            "cnn_lstm": metrics(ys, p_cnn),
            "random_forest": metrics(ys, p_rf),
            "ensemble": metrics(ys, p_ens),
            **baselines(ys, last_ret),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
