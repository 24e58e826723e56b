"""One walk-forward fold, start to end, in whatever process it is sent to.

`run_fold(task)` (1) retrains the ml_ensemble model pair on the fold's bars up to its training
end (`tradingd_models.training.train`, the code of `tradingd train`), (2) replays the fold
through the engine of `tradingd backtest` (`tradingd.app.build_engine`) with that model,
trading from the training window (or the test window) on, and (3) takes the fitted state at
the training end: every plugin's `state()` (Kelly trade window, GARCH parameters, drawdown
guard), the book, the Kelly inputs and the GARCH parameters by symbol. It returns plain data
(JSON values and lists), so the same fold gives the same answer in this process, a local
worker or on a Ray node, and nothing is left behind on the worker (the model and the fold's
store live in a temporary folder).

Everything the fold reads is in the task: its slice of the panel ends at the fold's test end,
and the model is trained on a slice that ends at the training end, so no bar after the
training end can reach the model, and the engine's decisions up to the training end see
only bars up to them (the engine reveals one bar per step).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, PluginSpec
from ..feeds.panel import FIELDS, Panel
from .parallel import in_worker
from .walkforward_folds import (
    Fold,
    WalkForwardConfig,
    WalkForwardError,
    bar_datetime,
    bar_label,
    run_label,
)

ML_PLUGIN = "ml_ensemble"


@dataclass(frozen=True)
class FoldTask:
    """Everything one fold needs. `panel` holds the bars `offset .. fold.test_end` of the full
    panel; `model_lo` is where the model's training slice starts (full-panel index)."""

    config: Config
    wf: WalkForwardConfig
    fold: Fold
    panel: Panel
    offset: int
    model_lo: int
    retrain: bool
    run_prefix: str


def rows(panel: Panel, lo: int, hi: int) -> Panel:
    """Bars lo..hi (inclusive) of `panel`, every symbol kept (one universe for all folds)."""
    if not 0 <= lo <= hi < len(panel.times):
        raise WalkForwardError(
            f"bar range {lo}..{hi} is outside the panel (0..{len(panel.times) - 1})"
        )
    return Panel(
        panel.times[lo : hi + 1],
        panel.symbols,
        *(np.ascontiguousarray(getattr(panel, f)[lo : hi + 1]) for f in FIELDS),
    )


def uses_ml(config: Config) -> bool:
    return any(s.name == ML_PLUGIN for s in config.signals)


def run_fold(task: FoldTask) -> dict[str, Any]:
    """Retrain, replay and snapshot one fold (see the module docstring)."""
    t0 = time.perf_counter()
    if in_worker():
        quiet_logging(task.config)
    fold, off = task.fold, task.offset
    times = task.panel.times
    train_end = bar_datetime(times[fold.train_end - off])
    model: dict[str, Any] | None = None
    train_s = 0.0
    with (
        pinned(task.wf.threads),
        tempfile.TemporaryDirectory(prefix=f"tradingd-wf{fold.index:03d}-") as tmp,
    ):
        model_dir = None
        if task.retrain:
            pin_threads(task.wf.threads)
            t1 = time.perf_counter()
            model_panel = rows(task.panel, task.model_lo - off, fold.train_end - off)
            model = train_model(task.config, model_panel, Path(tmp) / "model", task.wf)
            train_s = time.perf_counter() - t1
            model_dir = str(Path(tmp) / "model")
        start, end = fold_window(task)
        cfg = fold_config(
            task.config,
            run_id=f"{task.run_prefix}-f{fold.index:03d}",
            start=start,
            end=end,
            model_dir=model_dir,
            threads=task.wf.threads,
            tmp=Path(tmp),
        )
        t2 = time.perf_counter()
        engine_panel = rows(task.panel, fold.lo - off, fold.test_end - off)
        result, snapshot, fills = asyncio.run(_replay(cfg, engine_panel, train_end))
        replay_s = time.perf_counter() - t2
    fill_times = [_as_datetime(r["time"]) for r in fills]
    test_fills = [r for r, t in zip(fills, fill_times, strict=True) if t > train_end]
    return {
        "fold": fold.index,
        **fold.dates(times, offset=off),
        "train_end_equity": snapshot["equity"],
        "model": model,
        "models": snapshot.pop("models", []),
        "params": snapshot["params"],
        "state_at_train_end": snapshot["state"],
        "equity": {
            "time": [bar_label(t) for t in result.times],
            "equity": [float(x) for x in result.equity],
            "gross_exposure": [float(x) for x in result.gross_exposure],
        },
        "fills": {
            "in_sample": len(fills) - len(test_fills),
            "test": len(test_fills),
            "test_costs": float(
                sum(float(r["commission"]) + float(r["slippage"]) for r in test_fills)
            ),
        },
        "timing": {
            "train_s": round(train_s, 3),
            "replay_s": round(replay_s, 3),
            "total_s": round(time.perf_counter() - t0, 3),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
    }


def quiet_logging(config: Config) -> None:
    """A fold worker logs warnings and errors only (a fold's engine says a dozen things at
    info level; hundreds of folds would bury the progress bar), in the configured format."""
    from ..logs import configure_logging

    level = config.log.level if config.log.level in ("warning", "error") else "warning"
    configure_logging(level, config.log.format)


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a fold's process: the numerical libraries' thread pools at `threads`
    ({} for 0: the libraries' defaults)."""
    if threads <= 0:
        return {}
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        # joblib's n_jobs=-1 (the random forest): with one thread, scikit-learn adds its
        # trees' predictions in one order (with more, in the order the threads finish).
        "LOKY_MAX_CPU_COUNT": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[None]:
    """The fold's thread counts, wherever it runs: BLAS and OpenMP pools of this process
    (threadpoolctl: numpy may be imported already, so the environment alone is too late),
    and the environment that child processes (the GARCH fit worker) start with. OpenBLAS's
    thread count changes arch's GARCH estimates in the last digits, TensorFlow's thread
    count its sums, and joblib's the random forest's (see `thread_env`)."""
    if threads <= 0:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        raise WalkForwardError(
            f"walkforward.threads = {threads} needs threadpoolctl (pip install threadpoolctl); "
            "or set walkforward.threads = 0"
        ) from None
    env = thread_env(threads)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pin_threads(threads: int) -> None:
    """TensorFlow's thread counts, before it starts (its sums depend on them, so a fold
    trained with other counts is another model). 0 leaves TensorFlow's defaults."""
    if threads <= 0:
        return
    import tensorflow as tf

    th = tf.config.threading
    if (th.get_intra_op_parallelism_threads(), th.get_inter_op_parallelism_threads()) == (
        threads,
        threads,
    ):
        return
    try:
        th.set_intra_op_parallelism_threads(threads)
        th.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        raise WalkForwardError(
            f"walkforward.threads = {threads} cannot be applied: TensorFlow already runs in "
            "this process with other thread counts, and its results depend on them. Run the "
            "folds in worker processes (workers >= 1) or set walkforward.threads = 0"
        ) from None


def fold_window(task: FoldTask) -> tuple[str, str]:
    """The fold's `run.start` and `run.end`: its training window's first bar (warmup =
    "train") or its test window's, and its test window's last, each written so that the
    fold's backtest reads that very bar (`run_label`)."""
    from ..app import daily_bars

    fold, off, times = task.fold, task.offset, task.panel.times
    start = fold.train_start if task.wf.warmup == "train" else fold.test_start
    daily = daily_bars(times)
    return run_label(times[start - off], daily), run_label(times[fold.test_end - off], daily)


def train_model(config: Config, panel: Panel, out: Path, wf: WalkForwardConfig) -> dict[str, Any]:
    """The model pair of `tradingd train` on `panel` (the fold's bars up to its training
    end), and what the stability report needs from its card: the validation metrics (which
    early-stopped and calibrated the model: optimistic) and, for a card with a held-out test
    split, its `test_range` and `test` metrics (`metrics.test`, what `tradingd retrain`
    judges). Both splits lie within the fold's training span."""
    from tradingd_models.training import TooFewWindows, train

    try:
        # The fold's bars are its training span: run.start (the out-of-sample start) must
        # not cut them (tradingd train windows from it).
        card = train(
            config, panel, out, wf.model_config(), log=lambda m: None, from_run_start=False
        )
    except TooFewWindows as exc:
        if exc.windows is None:
            raise WalkForwardError(f"training the fold's model failed: {exc}") from None
        raise WalkForwardError(too_few_windows(exc, wf)) from None
    except ValueError as exc:  # e.g. no complete window in a too-short training window
        raise WalkForwardError(f"training the fold's model failed: {exc}") from None
    out_card = {
        "model_version": card["model_version"],
        "train_range": card["train_range"],
        "validation_range": card["validation_range"],
        "samples": card["samples"],
        "validation": card["metrics"]["validation"],
        "training_history": card["metrics"]["training_history"],
        "feature_importance": card["feature_importance"],
        "data_sha256": card["data"]["sha256"],
        "data_range": card["data"]["range"],
        "model_config": card["model_config"],
    }
    if "test" in card["metrics"]:
        out_card["test_range"] = card["test_range"]
        out_card["test"] = card["metrics"]["test"]
    return out_card


SPLITS = ("training", "validation", "test")
FLOORS = ("min_train_windows", "min_validation_windows", "min_test_windows")


def split_bars(bars: int, validation_split: float, test_share: float, horizon: int) -> list[int]:
    """The bars whose windows `tradingd_models.training.train` puts in its training,
    validation and test splits, of `bars` consecutive window-end bars (as
    `prepare_ml_data` and `hold_out_test` split them: the last `validation_split` of the bars
    validate, the last `test_share` of those test, `horizon` bars purged before each cut)."""
    cut = int(bars * (1 - validation_split))
    val = bars - cut
    test_cut = int(val * (1 - test_share))
    return [max(cut - horizon, 0), max(test_cut - horizon, 0), val - test_cut]


def too_few_windows(exc: Any, wf: WalkForwardConfig) -> str:
    """`TooFewWindows` below the model's floors, said in the walk-forward's terms. A fold
    trains on exactly `train` bars (run.start only places the folds), so the remedies are a
    longer `--train`, more symbols, or lower floors in `[walkforward.model]`. The `--train`
    given is estimated: this fold's windows per bar of each split, held, on the bars
    `train` would give (the last `horizon` bars have no target)."""
    mc = wf.model_config()
    got, floor, ranges = exc.windows, exc.minimum, exc.ranges
    split = (mc.validation_split, mc.test_share_of_validation, mc.horizon)
    bars_now = split_bars(wf.train - mc.horizon, *split)
    per_bar = [g / b if b > 0 else 0.0 for g, b in zip(got, bars_now, strict=True)]
    need = None
    if all(p > 0 for p in per_bar):
        for train in range(wf.train + 1, 100 * wf.train + 1):
            bars = split_bars(train - mc.horizon, *split)
            if all(
                math.floor(b * p + 1e-9) >= f for b, p, f in zip(bars, per_bar, floor, strict=True)
            ):
                need = train
                break
    counts = ", ".join(f"{g} {name} ({r})" for g, name, r in zip(got, SPLITS, ranges, strict=True))
    short = [f"{key} = {g}" for g, f, key in zip(got, floor, FLOORS, strict=True) if g < f]
    minimum = ", ".join(f"{f} {name}" for f, name in zip(floor, SPLITS, strict=True))
    longer = (
        f"give --train {need} or more (walkforward.train, now {wf.train}; estimated at this "
        f"fold's {per_bar[1]:.3g} windows per bar; the first fold then starts later), "
        if need is not None
        else f"give a longer --train (walkforward.train, now {wf.train}), "
    )
    return (
        f"training the fold's model failed: too few windows in its {wf.train} training bars "
        f"(walkforward.train): {counts}; the model needs at least {minimum} "
        f"([walkforward.model] {', '.join(FLOORS)}; the last "
        f"{mc.validation_split:g} of the windows' bars validate, the last "
        f"{mc.test_share_of_validation:g} of those test). A fold trains on exactly "
        f"walkforward.train bars, whatever run.start says: {longer}more symbols, or lower "
        f"the floor in [walkforward.model] ({'; '.join(short)} would pass this fold; "
        "fewer windows make a noisier model and metrics)"
    )


def fold_config(
    config: Config,
    *,
    run_id: str,
    start: str,
    end: str,
    model_dir: str | None,
    threads: int,
    tmp: Path,
) -> Config:
    """The fold's copy of the configuration: its run window and id, its model, and a store,
    audit log and prediction cache of its own (folds never share a file), no Redis, no GARCH
    fit cache, no feature cache (each fold's window would be an entry of its own: hundreds
    of folds would write gigabytes through the cache's bound, evicting a researcher's
    backtests, and a rerun would find none of them left)."""

    def ml(spec: PluginSpec) -> PluginSpec:
        if spec.name != ML_PLUGIN:
            return spec
        params = dict(spec.params)
        if model_dir is not None:
            params["model_dir"] = model_dir
        params["cache_dir"] = ""
        if threads > 0:
            params["threads"] = threads
        return dataclasses.replace(spec, params=params)

    sizing = config.sizing
    if sizing.name == "kelly_garch":
        # Fits computed now, never read from the cache: a cached fit may come from another
        # thread count (see `pinned`), and folds never share a file.
        sizing = dataclasses.replace(sizing, params={**sizing.params, "fit_cache_dir": ""})
    return dataclasses.replace(
        config,
        sizing=sizing,
        run=dataclasses.replace(config.run, run_id=run_id, start=start, end=end),
        storage=dataclasses.replace(config.storage, url="sqlite:///:memory:", signals="none"),
        cache=dataclasses.replace(config.cache, url="", features=False),
        log=dataclasses.replace(config.log, audit_dir=str(tmp / "audit")),
        signals=tuple(ml(s) for s in config.signals),
    )


async def _replay(
    config: Config, panel: Panel, train_end: datetime
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    from ..app import build_engine

    box: dict[str, Any] = {}

    def on_bar(i: int, t: datetime) -> None:
        if t == train_end:
            box["snapshot"] = snapshot(box["engine"])

    async def collect(engine: Any) -> None:
        box["fills"] = await engine.store.fetch("fills", engine.run.run_id)

    engine = build_engine(config, "backtest", panel=panel, on_bar=on_bar, before_stop=collect)
    box["engine"] = engine
    result = await engine.run_until_done()
    if "snapshot" not in box:  # every panel time is a bar of the replay
        raise WalkForwardError(f"the replay never reached the training end {train_end}")
    box["snapshot"]["models"] = _models_in_test(engine, result.times, train_end)
    return result, box["snapshot"], box.get("fills", [])


def _models_in_test(engine: Any, times: Sequence[datetime], train_end: datetime) -> list[Any]:
    """The fold's models, each with the test bars inside its own training or validation
    period (`in_sample`): a walk-forward that does not retrain replays the configured model,
    and the shipped one was fitted on 1999-2018, so its "out-of-sample" windows were the
    model's training data, unsaid."""
    from ..backtest import _models

    test = [t for t in times if t > train_end]
    return json_values(_models(engine, test).get("models", []))


def snapshot(engine: Any) -> dict[str, Any]:
    """The state fitted up to this bar: every plugin's checkpoint state, the book, the Kelly
    inputs and the GARCH parameters by symbol."""
    p = engine.pipeline
    states = {}
    for plugin in p.plugins():
        state = getattr(plugin, "state", None)
        if callable(state):
            states[plugin.name] = json_values(state())
    return {
        "equity": float(engine.portfolio.equity),
        "state": {"plugins": states, "portfolio": json_values(engine.portfolio.state())},
        "params": sizing_params(p.sizing, states.get(p.sizing.name)),
    }


def sizing_params(plugin: Any, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """Kelly inputs and per-symbol GARCH(1,1) parameters of a Kelly x GARCH sizing plugin
    ({} for another). The GARCH parameters come from its checkpoint state, with the fits
    asked for up to this bar (on returns up to it) and still in flight applied, as the
    next bars (fit_lag_bars) will apply them."""
    out: dict[str, Any] = {}
    if hasattr(plugin, "kelly_inputs"):
        w, r, source = plugin.kelly_inputs
        out["kelly"] = {
            "win_rate": float(w),
            "win_loss_ratio": float(r),
            "fraction": float(plugin.kelly),
            "source": source,
            "trades": len(plugin.trades),
        }
    if state is None or not {"mu", "omega", "alpha", "beta", "method"} <= set(state):
        return out
    from tradingd_plugins.sizing.garch_fits import params_from_json

    n = len(plugin.symbols)
    arr = {k: [_num(x) for x in state[k]] for k in ("mu", "omega", "alpha", "beta")}
    method = list(state["method"])
    pending = state.get("pending_fits") or []
    if isinstance(pending, dict):  # a checkpoint of before fit_lag_bars > 1: one batch
        pending = [pending]
    # Every batch in flight, in the order asked: a later fit of a symbol replaces an earlier.
    fits = [fit for batch in pending for fit in batch.get("fits", [])]
    for i, p_json, _why, _s2 in fits:
        fit = params_from_json(p_json)
        if fit is None:
            method[i] = 1  # failed: the EWMA fallback
            arr["mu"][i], arr["omega"][i] = 0.0, 0.0
            lam = getattr(plugin.config, "ewma_lambda", 0.94)
            arr["alpha"][i], arr["beta"][i] = 1 - lam, lam
        else:
            method[i] = 2
            for k, v in zip(("mu", "omega", "alpha", "beta"), fit[:4], strict=True):
                arr[k][i] = float(v)
    names = {0: "none", 1: "ewma", 2: "garch"}
    out["garch"] = {
        plugin.symbols[i]: {
            "method": names.get(int(method[i]), str(method[i])),
            **{k: arr[k][i] for k in ("mu", "omega", "alpha", "beta")},
        }
        for i in range(n)
    }
    return out


def json_values(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays as Python ones, non-finite floats as None."""
    if isinstance(obj, Mapping):
        return {str(k): json_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_values(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_values(obj.tolist())
    if isinstance(obj, np.generic):
        return json_values(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _as_datetime(t: Any) -> datetime:
    return bar_datetime(t)
