#!/usr/bin/env python3
"""The reference specification's time and memory thresholds, measured on tradingd's own code.

    python benchmarks/spec_thresholds.py            # demo, 50 and 496 symbols, ~7 min on 2 CPUs
    python benchmarks/spec_thresholds.py --quick    # the bundled demo data only, ~3 min
    python benchmarks/spec_thresholds.py --full     # + 496 symbols' backtest and the whole
                                                    #   demo training, ~+25 min
    python benchmarks/spec_thresholds.py --json

The specification's `TestConfig` ("Testing" > "Test Configuration") sets, with no data size:

    time (s)     indicator_calculation 10, feature_generation 5, ml_training 30,
                 backtest_execution 30
    memory (MB)  indicator_calculation 500, feature_generation 200, ml_model_creation 300

Steps (each run is a fresh Python process of its own, in a new temporary folder, so its
memory, imports and caches are its own; the data is loaded and the step's modules imported
before the step, and are not in its seconds):

- indicator_calculation: every TA-Lib indicator of the specification (RSI, MACD line, signal
  and histogram, ROC, Stochastic %K/%D, ADX, Bollinger upper/middle/lower, ATR, NATR, true
  range, OBV, MFI, volume ROC) over every symbol, `tradingd.features.engineer.compute_batch`
  in float64 (what a replay computes).
- feature_generation: the models' feature set (`[features] set`, default_v1: 20 features,
  indicators included) as `tradingd train` computes it (compute_batch, float32);
  feature_generation+windows adds the training windows (`prepare_ml_data`, 60 bars x 20
  features per sample, and the held-out test split), the spec's FeatureEngineer's last step.
- ml_model_creation: building the CNN+BiLSTM (60 x 20 input, config/model.toml = the spec's
  ModelConfig) and the random forest, with Keras/TensorFlow and scikit-learn imported before
  (`warm`) and with their import counted (`cold`, as a first test in a fresh process sees).
- ml_training: `tradingd_models.training.fit_models` (scaler, CNN+BiLSTM with early stopping,
  random forest of 100 trees) on the windows of feature_generation+windows, with
  config/model.toml. A whole training runs until early stopping (the shipped model: 16
  epochs on the demo data, 929 s on a loaded 2-CPU machine; the one before it 466.8 s on a
  quiet one), too long for this script: the CNN runs --train-epochs epochs (1) and the
  forest --train-trees trees (10), and the `proj.` row projects them to the shipped
  training's epochs (its card) and 100 trees; --full trains the whole. The 50-symbol
  training (164,000 training windows, ~1 GB) is projected from the demo's, scaled by the
  training windows, never run.
- backtest_execution: `tradingd.backtest.run_backtest` as `tradingd backtest` runs it (data
  loaded by it, config/default.toml; + config/backtest.toml for the S&P 500 stocks), fresh
  caches (a first run: no model predictions or GARCH fits kept from an earlier run).

Memory, per step: `peak MB` is the process's peak RSS (VmHWM) over setup and step;
`+MB` is the step's own peak RSS (VmHWM, reset through /proc/self/clear_refs before the step)
minus the RSS before it; `tracemalloc MB` is the peak of a separate run under tracemalloc,
started just before the step (what the specification's `profile_memory` measures: Python's and
NumPy's allocations only, not TensorFlow's or TA-Lib's own C++ memory). A backtest's writer
process is a child of its own: `children_peak_mb` in the details is the largest child's peak
RSS, which counts the parent's pages a forked child shares (TensorFlow's import forks one of
~590 MB), so it overstates what a child adds. `CPU s`: the step's user + system CPU time,
children included (the machine's load stretches the wall seconds, not this).

Workloads: `demo` = the bundled S&P 500 and NASDAQ index series inside `arch` (2 symbols x
5,031 days, 1999-2018; always there); `sp50` / `sp496` = the first 50 / all 496 stocks of
`../shared/data/sp500_daily_1999_2018.parquet` (1999-11-01..2018-12-31, the backtest from
2000-01-01 as config/backtest.toml), skipped with a reason when that file is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
SP500 = SHARED / "data" / "sp500_daily_1999_2018.parquet"

TIME_LIMIT_S = {
    "indicator_calculation": 10.0,
    "feature_generation": 5.0,
    "ml_training": 30.0,
    "backtest_execution": 30.0,
}
MEMORY_LIMIT_MB = {
    "indicator_calculation": 500,
    "feature_generation": 200,
    "ml_model_creation": 300,
}
INDICATORS = (
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "roc_10",
    "stoch_k",
    "stoch_d",
    "adx_14",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "atr_14",
    "natr_14",
    "trange",
    "obv",
    "mfi_14",
    "volume_roc_10",
)
WORKLOAD_SYMBOLS = {"sp50": 50, "sp496": 496}
# The epochs the shipped model's training ran (demo data), read from its card.
SHIPPED_EPOCHS = int(
    json.loads((REPO / "models" / "default" / "card.json").read_text())["metrics"][
        "training_history"
    ]["epochs_run"]
)


# ----------------------------------------------------------------------------- child side


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its waited-for children (a backtest's
    writer process): on a loaded machine the wall time is not the code's."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _config(workload: str) -> Any:
    from tradingd.config import load_config

    files: list[Any] = [str(REPO / "config" / "default.toml")]
    if workload != "demo":
        files.append(str(REPO / "config" / "backtest.toml"))
        files.append({"data": {"max_symbols": WORKLOAD_SYMBOLS[workload]}})
    return load_config(files, env={})


def _model_config() -> Any:
    from tradingd.__main__ import _model_config as read

    return read(str(REPO / "config" / "model.toml"))


def _features(config: Any, panel: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    import numpy as np

    from tradingd.features.catalog import Catalog, resolve_set
    from tradingd.features.engineer import compute_batch

    names = resolve_set(config.features.set)
    catalog = Catalog(config.features.indicators, config.features.cross_sectional)
    return names, compute_batch(panel, names, catalog, dtype=np.float32)


def _windows(config: Any, panel: Any, mc: Any) -> dict[str, Any]:
    """The features and windows as `tradingd train` builds them (its own function)."""
    from tradingd_models.training import run_start, training_windows

    from tradingd.features.catalog import Catalog, resolve_set

    names = resolve_set(config.features.set)
    catalog = Catalog(config.features.indicators, config.features.cross_sectional)
    return training_windows(panel, names, catalog, mc, run_start(config, panel.times))


def child(step: str, workload: str, trace: bool, epochs: int, trees: int) -> dict[str, Any]:
    """Set the step up, then run it once, measured. Returns the measures as a dict."""
    import dataclasses

    t_setup = time.perf_counter()
    info: dict[str, Any] = {}
    if step == "ml_model_creation":
        mc = _model_config()
        if workload == "warm":
            import keras
            import sklearn.ensemble
            import tensorflow

        def run() -> None:
            from tradingd_models.cnn_lstm import CNNLSTMModel
            from tradingd_models.forest import RandomForestModel

            cnn = CNNLSTMModel(mc.time_steps, 20, config=mc)
            RandomForestModel.from_config(mc)
            info["cnn_parameters"] = int(cnn.model.count_params())

    elif step == "backtest_execution":
        import asyncio

        import tradingd.app  # noqa: F401
        from tradingd.backtest import run_backtest

        config = _config(workload)

        def run() -> None:
            out = asyncio.run(run_backtest(config, output_dir=Path("var/runs/bench")))
            info["bars"] = out.summary.get("bars", len(out.result.times))
            info["symbols"] = out.summary["symbols"]
            info["orders"] = out.summary["orders"]
            info["fills"] = len(out.fills)
            info["final_equity"] = out.summary.get("final_equity")

    else:
        import numpy as np

        from tradingd.app import load_data
        from tradingd.features.catalog import Catalog
        from tradingd.features.engineer import compute_batch

        config = _config(workload)
        panel = load_data(config)
        info["symbols"], info["days"] = len(panel.symbols), len(panel.times)
        info["bars"] = int(panel.n_bars)
        if step == "indicator_calculation":
            catalog = Catalog(config.features.indicators, config.features.cross_sectional)

            def run() -> None:
                out = compute_batch(panel, INDICATORS, catalog, dtype=np.float64)
                info["result_mb"] = sum(v.nbytes for v in out.values()) / 2**20

        elif step == "feature_generation":

            def run() -> None:
                _, out = _features(config, panel)
                info["features"] = len(out)
                info["result_mb"] = sum(v.nbytes for v in out.values()) / 2**20

        elif step == "feature_generation+windows":
            mc = _model_config()

            def run() -> None:
                data = _windows(config, panel, mc)
                info["windows"] = {s: len(data[f"y_{s}"]) for s in ("train", "val", "test")}
                info["result_mb"] = sum(v.nbytes for v in data.values()) / 2**20

        elif step == "ml_training":
            import keras  # noqa: F401
            import sklearn.ensemble  # noqa: F401
            import tensorflow  # noqa: F401
            from tradingd_models.training import fit_models

            mc = _model_config()
            mc = dataclasses.replace(
                mc, epochs=epochs or mc.epochs, rf_n_estimators=trees or mc.rf_n_estimators
            )
            info["epochs_capped"], info["trees"] = bool(epochs), mc.rf_n_estimators
            data = _windows(config, panel, mc)
            xt, yt, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
            info["windows"] = {"train": len(xt), "val": len(xv)}
            del data

            def run() -> None:
                t0 = time.perf_counter()

                def log(msg: str) -> None:  # fit_models says this after the CNN, before the RF
                    if msg.startswith("cnn_lstm:"):
                        info["cnn_s"] = time.perf_counter() - t0
                        info["cnn_log"] = msg

                _, _, _, _, fit = fit_models(xt, yt, xv, yv, mc, log)
                info["rf_s"] = time.perf_counter() - t0 - info["cnn_s"]
                info["epochs_run"] = fit["epochs_run"]

        else:
            raise SystemExit(f"unknown step {step!r}")
    setup_s = time.perf_counter() - t_setup
    setup_peak = _status_mb("VmHWM")
    rss_before = _status_mb("VmRSS")
    reset = _reset_peak()
    if trace:
        import tracemalloc

        tracemalloc.start()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    traced = None
    if trace:
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    step_peak = _status_mb("VmHWM")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "step": step,
        "workload": workload,
        "seconds": seconds,
        "cpu_s": cpu,
        "setup_s": setup_s,
        "rss_before_mb": rss_before,
        "peak_mb": max(setup_peak, step_peak),
        "step_increase_mb": (step_peak - rss_before) if reset else None,
        "tracemalloc_mb": traced,
        "children_peak_mb": children,
        **info,
    }


# ----------------------------------------------------------------------------- parent side


def run_child(root: Path, n: int, args: list[str]) -> dict[str, Any]:
    cwd = root / f"run{n}"  # beside root/shared, so config/backtest.toml's ../shared resolves
    cwd.mkdir()
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(cwd / "xdg"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-15:]
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n" + "\n".join(tail))
    return json.loads(lines[-1])


def _fmt(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the bundled demo data only")
    ap.add_argument(
        "--full", action="store_true", help="+ 496 symbols' backtest, the demo's whole training"
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of the cheap steps (median)")
    ap.add_argument(
        "--train-epochs",
        type=int,
        default=1,
        help="CNN epochs run (0: model.toml's, to early stop)",
    )
    ap.add_argument(
        "--train-trees", type=int, default=10, help="forest trees fitted (0: model.toml's 100)"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("STEP", "WORKLOAD"), help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(*args.child, args.trace, args.train_epochs, args.train_trees)
        print(json.dumps(res, default=float))
        return 0

    workloads = ["demo"]
    skipped: list[str] = []
    if args.quick:
        skipped.append("sp50, sp496: --quick")
    elif not SP500.is_file():
        skipped.append(f"sp50, sp496: {SP500} not found (the shared data is not in the repo)")
    else:
        workloads += ["sp50", "sp496"]
    r = args.repeats
    # (step, workload, runs, trace run): backtest and training are the expensive ones.
    plan: list[tuple[str, str, int, bool]] = [
        ("ml_model_creation", w, r, True) for w in ("cold", "warm")
    ]
    for w in workloads:
        plan += [("indicator_calculation", w, r, True), ("feature_generation", w, r, True)]
        if w != "sp496":  # 496 symbols' windows: ~2.1 M x 60 x 20 float32 = ~10 GB
            plan.append(("feature_generation+windows", w, r if w == "demo" else 1, w == "demo"))
        else:
            skipped.append("feature_generation+windows, ml_training at sp496: its windows "
                           "alone are ~2.1 M x 60 x 20 float32 = ~10 GB")  # fmt: skip
        if w == "demo":
            plan.append(("ml_training", w, 1, False))
        if w != "sp496" or args.full:
            plan.append(("backtest_execution", w, r if w == "demo" else 1, False))
    if "sp50" in workloads and not args.full:
        skipped.append(
            "ml_training at sp50: projected from the demo's rates (hours, ~1 GB of windows)"
        )
    if "sp496" in workloads and not args.full:
        skipped.append("backtest_execution at sp496: a first run takes 4-9 min (--full runs it)")

    if args.full:
        args.train_epochs = args.train_trees = 0  # the spec's training, whole
    train_args = ["--train-epochs", str(args.train_epochs), "--train-trees", str(args.train_trees)]
    load = os.getloadavg()
    results: list[dict[str, Any]] = []
    n = 0
    with tempfile.TemporaryDirectory(prefix="tradingd-spec-") as tmp:
        root = Path(tmp)
        if SHARED.is_dir():
            (root / "shared").symlink_to(SHARED)
        for step, w, runs, trace in plan:
            rows = []
            for _ in range(runs):
                n += 1
                rows.append(run_child(root, n, [step, w, *train_args]))
                print(f"  {step} {w}: {rows[-1]['seconds']:.2f} s, peak "
                      f"{rows[-1]['peak_mb']:.0f} MB", file=sys.stderr)  # fmt: skip
            row = dict(rows[-1])
            row["runs_s"] = [round(x["seconds"], 2) for x in rows]
            row["seconds"] = statistics.median(x["seconds"] for x in rows)
            row["cpu_s"] = statistics.median(x["cpu_s"] for x in rows)
            row["peak_mb"] = statistics.median(x["peak_mb"] for x in rows)
            if all(x["step_increase_mb"] is not None for x in rows):
                row["step_increase_mb"] = statistics.median(x["step_increase_mb"] for x in rows)
            if trace:
                n += 1
                traced = run_child(root, n, [step, w, "--trace"])
                row["tracemalloc_mb"] = traced["tracemalloc_mb"]
            results.append(row)
    load_end = os.getloadavg()

    # The spec's whole training, projected from a shortened one: the CNN's time per epoch x
    # the shipped training's epochs, the forest's time x 100 / the trees fitted (each tree is
    # fitted alike); the 50 symbols' from the demo's, scaled by their training windows (an
    # epoch's steps and the forest's samples; a forest's fit grows a little faster than that).
    projected = []
    for x in [x for x in results if x["step"] == "ml_training"]:
        if x["epochs_capped"] or x["trees"] < 100:
            per_epoch = x["cnn_s"] / x["epochs_run"]
            rf = x["rf_s"] * 100 / x["trees"]
            projected.append(
                {
                    **x,
                    "projected": True,
                    "cpu_s": None,
                    "seconds": per_epoch * SHIPPED_EPOCHS + rf,
                    "note": f"CNN {per_epoch:.1f} s/epoch x {SHIPPED_EPOCHS} epochs + forest "
                    f"{x['rf_s']:.1f} s x 100/{x['trees']} trees",
                }
            )
    windows = [x for x in results if x["step"] == "feature_generation+windows"]
    win50 = next((x for x in windows if x["workload"] == "sp50"), None)
    demo = next((x for x in projected if x["workload"] == "demo"), None)
    if win50 is not None and demo is not None:
        scale = win50["windows"]["train"] / demo["windows"]["train"]
        projected.append(
            {
                "step": "ml_training",
                "workload": "sp50",
                "projected": True,
                "seconds": demo["seconds"] * scale,
                "windows": win50["windows"],
                "note": f"the demo's projection x {scale:.1f} (training windows); not run",
            }
        )
    results += projected

    header = (
        f"{'step':27} {'workload':8} {'seconds':>8} {'CPU s':>7} {'peak MB':>8} {'+MB':>7} "
        f"{'tracemalloc':>11} {'limit':>12}  met"
    )
    print(header)
    print("-" * len(header))
    for x in results:
        step = x["step"]
        base = step.split("+")[0]
        tl, ml = TIME_LIMIT_S.get(base), MEMORY_LIMIT_MB.get(base)
        met = []
        if tl is not None:
            met.append(f"time {'yes' if x['seconds'] <= tl else 'NO'}")
        if ml is not None and not x.get("projected"):
            tm, inc = x.get("tracemalloc_mb"), x.get("step_increase_mb")
            if tm is not None:
                met.append(f"tracemalloc {'yes' if tm <= ml else 'NO'}")
            if inc is not None:
                met.append(f"+RSS {'yes' if inc <= ml else 'NO'}")
        limit = " / ".join(s for s in (tl and f"{tl:g} s", ml and f"{ml} MB") if s)
        name = step + (" (proj.)" if x.get("projected") else "")
        print(
            f"{name:27} {x['workload']:8} {x['seconds']:8.2f} {_fmt(x.get('cpu_s'), 1):>7} "
            f"{_fmt(None if x.get('projected') else x.get('peak_mb')):>8} "
            f"{_fmt(None if x.get('projected') else x.get('step_increase_mb')):>7} "
            f"{_fmt(x.get('tracemalloc_mb')):>11} {limit:>12}  {', '.join(met)}"
        )
    print()
    for x in results:
        extra = {
            k: x[k]
            for k in ("runs_s", "setup_s", "symbols", "days", "bars", "windows", "epochs_run",
                      "cnn_s", "rf_s", "cnn_parameters", "orders", "fills", "final_equity",
                      "children_peak_mb", "result_mb", "note")
            if k in x
        }  # fmt: skip
        print(f"{x['step']} {x['workload']}: " + json.dumps(extra, default=float))
    for s in skipped:
        print(f"skipped: {s}")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.platform()}, python "
        f"{platform.python_version()}; load average {load[0]:.2f} at start, {load_end[0]:.2f} "
        "at end"
    )
    if args.json:
        print(
            json.dumps(
                {"results": results, "skipped": skipped, "load": [load, load_end]}, default=float
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
