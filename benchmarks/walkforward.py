"""Walk-forward with retraining over 100 symbols x 10 years of ../shared/data: wall time with
1 and 2 workers, the measured scaling, and the projected time of the whole analysis on N
workers (issue 11 point 8; docs/WALKFORWARD.md).

    python benchmarks/walkforward.py                          # 2 folds, the specification's model
    python benchmarks/walkforward.py --folds 2 --epochs 1     # cap the CNN's epochs
    python benchmarks/walkforward.py --model rf_n_estimators=20 --workers 1,2 --json
    python benchmarks/walkforward.py --calibrate-epoch        # + seconds per CNN epoch

Run from the checkout (the strategy is config/default.toml + config/backtest.toml: the
specification's ML ensemble + multi-factor signal, Kelly x GARCH sizing and the full risk
chain, on the first `--symbols` symbols, out of sample `--start`..`--end`).

A fold retrains the specification's network (CNN+BiLSTM and a 100-tree random forest) on
its training window and replays lookback + training + test bars through the engine. A
whole analysis is about 117 such folds, many hours on this 2-core machine. So `--folds K`
measures the first K folds with each worker count, and the total is projected:

    T(N) = overhead + ceil(F / N) x (mean fold time with the folds of 2 workers side by side)

F is the number of folds of the period. `overhead` is the 1-worker wall time less the sum of
its folds' times (process start, imports, the data sent to workers, the tables). The
projection assumes N cores as fast as these, one fold per core (threads = 1), and about
1.3 GB of memory per worker. With `--epochs` below the early stop of the specification's
network (the default model stopped after 32 epochs), training is cut short. The projection
is then for that cap; `--calibrate-epoch` measures the seconds per epoch to correct it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config" / "default.toml", REPO / "config" / "backtest.toml"]
PROJECT_N = (1, 2, 4, 8, 16, 32, 64)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git": rev,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def strategy(args: argparse.Namespace) -> Any:
    import dataclasses

    from tradingd.config import load_config

    os.chdir(REPO)  # the configs' data path is relative to the checkout
    cfg = load_config([str(p) for p in CONFIGS])
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, name="wfbench", start=args.start, end=args.end),
        data=dataclasses.replace(cfg.data, max_symbols=args.symbols),
    )


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.model:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    if args.epochs:
        out["epochs"] = args.epochs
    return out


def calibrate_epoch(config: Any, panel: Any, wf: Any, analyzer: Any) -> dict[str, float]:
    """Seconds per epoch of the fold-0 CNN with one thread: two epochs timed by a callback
    (the first includes tracing; the second is the steady cost)."""
    import numpy as np

    from tradingd.analysis.walkforward_run import pin_threads, pinned, rows
    from tradingd.features.catalog import Catalog, resolve_set
    from tradingd.features.engineer import compute_batch, prepare_ml_data

    task = analyzer.tasks(panel)[0]
    mc = wf.model_config()
    p = rows(task.panel, task.model_lo - task.offset, task.fold.train_end - task.offset)
    f = config.features
    names = resolve_set(f.set)
    feats = compute_batch(p, names, Catalog(f.indicators, f.cross_sectional), dtype=np.float32)
    d = prepare_ml_data(
        feats,
        names,
        p.close,
        p.split,
        p.times,
        window=mc.time_steps,
        horizon=mc.horizon,
        validation_fraction=mc.validation_split,
    )
    with pinned(wf.threads):
        pin_threads(wf.threads)
        import keras
        from tradingd_models.cnn_lstm import CNNLSTMModel

        times: list[float] = []

        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                times.append(time.perf_counter() - self.t)

        m = CNNLSTMModel(mc.time_steps, len(names), config=mc)
        m.model.fit(
            d["x_train"],
            d["y_train"],
            validation_data=(d["x_val"], d["y_val"]),
            batch_size=mc.batch_size,
            epochs=2,
            callbacks=[Clock()],
            verbose=0,
        )
    return {"first_epoch_s": times[0], "epoch_s": times[-1], "train_windows": len(d["x_train"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--start", default="2009-01-01", help="first out-of-sample day")
    ap.add_argument("--end", default="2018-12-31")
    ap.add_argument("--folds", type=int, default=2, help="folds measured per worker count")
    ap.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2")
    ap.add_argument("--epochs", type=int, default=0, help="cap the CNN's epochs (0: 50)")
    ap.add_argument("--model", action="append", default=[], help="ModelConfig KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="threads per fold")
    ap.add_argument("--calibrate-epoch", action="store_true")
    ap.add_argument("--full-epochs", type=int, default=32, help="epochs of a full training")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from tradingd.analysis.walkforward import WalkForwardAnalyzer
    from tradingd.analysis.walkforward_folds import WalkForwardConfig
    from tradingd.app import load_data
    from tradingd.logs import configure_logging

    configure_logging("warning", "console")
    config = strategy(args)
    t0 = time.perf_counter()
    panel = load_data(config)
    load_s = time.perf_counter() - t0
    wf_all = WalkForwardConfig(threads=args.threads, model=model_overrides(args))
    total_folds = len(WalkForwardAnalyzer(config, wf_all).folds(panel))
    wf = WalkForwardConfig(threads=args.threads, model=wf_all.model, max_folds=args.folds)
    out: dict[str, Any] = {
        "machine": machine(),
        "symbols": len(panel.symbols),
        "bars": len(panel.times),
        "period": [args.start, args.end],
        "data_load_s": round(load_s, 2),
        "folds_in_period": total_folds,
        "folds_measured": args.folds,
        "model": wf.model_config().__dict__,
        "threads_per_fold": args.threads,
        "runs": {},
    }
    for w in (int(x) for x in args.workers.split(",")):
        analyzer = WalkForwardAnalyzer(config, wf, workers=w, progress=sys.stderr.isatty())
        t1 = time.perf_counter()
        res = analyzer.run(panel)
        wall = time.perf_counter() - t1
        folds = [
            f["timing"]
            | {"epochs_run": (f.get("model") or {}).get("training_history", {}).get("epochs_run")}
            for f in res["folds"]
        ]
        out["runs"][w] = {
            "wall_s": round(wall, 1),
            "fold_s": [round(f["total_s"], 1) for f in folds],
            "train_s": [round(f["train_s"], 1) for f in folds],
            "replay_s": [round(f["replay_s"], 1) for f in folds],
            "epochs_run": [f["epochs_run"] for f in folds],
            "train_windows": [(f.get("model") or {}).get("samples") for f in res["folds"]],
            "folds_per_hour": round(len(folds) / wall * 3600, 2),
        }
        print(f"{w} worker(s): {len(folds)} folds in {wall:.1f} s", file=sys.stderr)
    runs = out["runs"]
    if 1 in runs:
        r1 = runs[1]
        overhead = max(0.0, r1["wall_s"] - sum(r1["fold_s"]))
        per_fold = {w: sum(r["fold_s"]) / len(r["fold_s"]) for w, r in runs.items()}
        busy = per_fold[max(runs)] if len(runs) > 1 else per_fold[1]
        out["overhead_s"] = round(overhead, 1)
        out["mean_fold_s"] = {w: round(v, 1) for w, v in per_fold.items()}
        if 2 in runs:
            out["scaling_1_to_2"] = round(runs[2]["folds_per_hour"] / r1["folds_per_hour"], 3)
        out["projected_s"] = {
            n: round(overhead + math.ceil(total_folds / n) * (per_fold[1] if n == 1 else busy))
            for n in PROJECT_N
        }
    if args.calibrate_epoch:
        cal = calibrate_epoch(config, panel, wf, WalkForwardAnalyzer(config, wf))
        out["calibration"] = {k: round(v, 2) for k, v in cal.items()}
        run_epochs = runs[min(runs)]["epochs_run"][0] or 0
        extra = max(0, args.full_epochs - run_epochs) * cal["epoch_s"]
        out["projected_full_epochs_s"] = {
            n: round(v + math.ceil(total_folds / n) * extra) for n, v in out["projected_s"].items()
        }
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(report(out))
    return 0


def report(o: dict[str, Any]) -> str:
    lines = [
        f"walk-forward benchmark: {o['symbols']} symbols, out of sample {o['period'][0]}.."
        f"{o['period'][1]} ({o['folds_in_period']} folds of train 252 / test 63 / step 21), "
        f"{o['folds_measured']} folds measured, {o['threads_per_fold']} thread(s) per fold",
        f"model: epochs {o['model']['epochs']}, CNN {o['model']['cnn_filters']}/"
        f"{o['model']['lstm_units']}, RF {o['model']['rf_n_estimators']} trees depth "
        f"{o['model']['rf_max_depth']}",
    ]
    for w, r in o["runs"].items():
        lines.append(
            f"  {w} worker(s): wall {r['wall_s']} s; per fold {r['fold_s']} s (train "
            f"{r['train_s']}, replay {r['replay_s']}, epochs {r['epochs_run']})"
        )
    if "scaling_1_to_2" in o:
        lines.append(f"  scaling 1 -> 2 workers: x{o['scaling_1_to_2']} (ideal 2)")
    for key, title in (("projected_s", "projected"), ("projected_full_epochs_s", "full epochs")):
        if key in o:
            lines.append(
                f"  {title}, all {o['folds_in_period']} folds: "
                + ", ".join(f"{n} workers {v / 3600:.1f} h" for n, v in o[key].items())
            )
    lines.append(f"machine: {o['machine']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
