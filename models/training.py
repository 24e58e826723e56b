"""`tradingd train`: data -> features -> windows -> both models -> ONNX -> model card.

Everything that decides the model is in the card: the feature set and its version, the window,
the target, the date ranges, a hash of the training data, the scaling, validation and test
metrics next to naive baselines, the ONNX files' hashes and the library versions. The models
are trained with fixed seeds and deterministic TensorFlow ops, so the same config and data
give the same model.

Three chronological splits: training windows fit the scaler and both models; validation
windows early-stop the CNN+LSTM and calibrate the ensemble's confidence (`residual_std`), so
their metrics are optimistic; the test windows after them (`hold_out_test`) serve nothing but
the card's `metrics.test`, which `tradingd retrain`'s gate judges.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tradingd.app import bar_of_data, config_window
from tradingd.config import Config
from tradingd.core.atomic_file import pid_alive, write_atomically
from tradingd.core.errors import ConfigError, TradingdError
from tradingd.features.catalog import Catalog, feature_set_id, resolve_set
from tradingd.features.engineer import compute_batch, prepare_ml_data
from tradingd.feeds.panel import Panel
from tradingd.inference.onnx import (
    CARD_FORMAT,
    CNN_LSTM_ARCHITECTURE,
    MODELS,
    fingerprint,
    model_input,
    raw_outputs,
)

from .config import ModelConfig
from .evaluate import baselines, metrics


def data_hash(panel: Panel) -> str:
    h = hashlib.sha256()
    h.update("|".join(panel.symbols).encode())
    h.update(panel.times.astype("datetime64[ns]").tobytes())
    for f in ("open", "high", "low", "close", "volume", "split"):
        h.update(np.ascontiguousarray(getattr(panel, f)).tobytes())
    return h.hexdigest()


def _dates(times: np.ndarray) -> list[str]:
    t = pd.DatetimeIndex(times)
    return [str(t.min().date()), str(t.max().date())] if len(t) else ["", ""]


def run_start(config: Config, times: np.ndarray) -> np.datetime64 | None:
    """`run.start` as a bar time of bars `times` (naive UTC, as bars are stored), None when
    not set. Training windows end from it on, as a backtest trades from it on: the trial
    that set 2004-01-01 got a model trained from 2000 (all the data up to run.end was used).
    Read as the backtest reads it (`app.config_window`): for intraday bars a date is a
    session day of live.calendar. Read as a UTC day, an XASX Monday's first bars (from
    23:00 UTC on Sunday) ended no training window, unlike the backtest that trades them."""
    start = config_window(config, times)[0]
    if start is None:
        return None
    return np.datetime64(start.replace(tzinfo=None), "ns")


class TooFewWindows(ConfigError, ValueError):
    """The data holds too few complete windows for the model config (none, or fewer than
    its min_train_windows / min_validation_windows / min_test_windows). Named with the
    window and the data's range; raised before any model is built (Keras' fit on an empty
    set was a KeyError: 'loss' traceback). Below the floors, `windows` and `minimum` are the
    (training, validation, test) counts and floors and `ranges` their date ranges, so that a
    caller (the walk-forward) can say what would pass in its own terms; None otherwise."""

    windows: tuple[int, int, int] | None = None
    minimum: tuple[int, int, int] | None = None
    ranges: tuple[str, str, str] | None = None


def hold_out_test(
    data: dict[str, np.ndarray], times: np.ndarray, share: float, horizon: int
) -> dict[str, np.ndarray]:
    """`prepare_ml_data`'s windows with the last `share` of the validation span's bar times
    moved to a test split (`x_test`, `y_test`, `t_test`, `symbol_test`). Validation windows
    whose target reaches into the test span are dropped (purged, as training windows are
    at the validation span), so no validation label overlaps a test bar. The training
    windows are untouched: the same model is trained, only what early stopping and the
    calibration see is less. One validation set early-stopped the CNN, calibrated the
    confidence, made the card's metrics and decided the retrain gate: metrics measured on
    the windows that tuned the model, and a publish decision made on them."""
    t_val = data["t_val"]
    bar = np.searchsorted(times, t_val)  # each validation window's last bar, in `times`
    used = np.unique(bar)
    cut = used[int(len(used) * (1 - share))] if len(used) else 0  # first test bar
    test = bar >= cut
    val = bar + horizon < cut
    out = dict(data)
    for key in ("x", "y", "t", "symbol"):
        held = data[f"{key}_val"]
        out[f"{key}_val"], out[f"{key}_test"] = held[val], held[test]
    return out


def training_windows(
    panel: Panel,
    names: Sequence[str],
    catalog: Catalog,
    mc: ModelConfig,
    start: np.datetime64 | None,
) -> dict[str, Any]:
    """The windows `train` fits, validates and tests on: the features (float32), their
    windows ending from `start` (`prepare_ml_data`), the test split held out
    (`hold_out_test`). ValueError "no complete window" when there is none. Also what
    benchmarks/spec_thresholds.py measures, so it times the step `tradingd train` takes."""
    feats = compute_batch(panel, names, catalog, dtype=np.float32)
    data = prepare_ml_data(
        feats,
        names,
        panel.close,
        panel.split,
        panel.times,
        window=mc.time_steps,
        horizon=mc.horizon,
        validation_fraction=mc.validation_split,
        start=start,
    )
    return hold_out_test(data, panel.times, mc.test_share_of_validation, mc.horizon)


def _model_root_of(path: Path) -> tuple[Path, str] | None:
    """The model root (`tradingd retrain`'s layout: `versions/<v>/` and a `current` link) that
    `path` (resolved) is inside, and which part of it: None when it is in none."""
    for p in (path, *path.parents):
        if p.parent.name == "versions":
            root = p.parent.parent
            if (root / "current").is_symlink() or any(p.parent.glob("*/card.json")):
                return root, f"versions/{p.name}"
    return None


def check_out_dir(out_dir: str | Path) -> Path:
    """`tradingd train --out` must be a new folder of its own: not a model root's `current`
    link or a folder under its `versions/` (published models, never modified once written:
    a running daemon kept serving the old files while the folder held new ones, and a
    restart switched models without a word), and not a folder that already holds a model
    (its card or ONNX files). Refused with what to do instead."""
    out = Path(out_dir)
    resolved = out.resolve()
    fix = (
        "train into another --out (a new folder), or publish with `tradingd retrain --root "
        "ROOT`, which trains into a new version folder and switches `current` atomically"
    )
    if out.name == "current" and (out.is_symlink() or (out.parent / "versions").is_dir()):
        raise ConfigError(
            f"--out = {str(out_dir)!r} is the model root {out.parent}'s `current` link, which "
            f"names the published model a daemon serves; {fix}"
        )
    inside = _model_root_of(resolved)
    if inside is not None:
        root, part = inside
        through = f" (through a link: it resolves to {resolved})" if resolved != out else ""
        raise ConfigError(
            f"--out = {str(out_dir)!r} is inside the published model folder {part} of the "
            f"model root {root}{through}: a published version is never modified once "
            f"written; {fix}"
        )
    if resolved.is_dir():
        held = sorted(
            f.name for f in resolved.iterdir() if f.name == "card.json" or f.suffix == ".onnx"
        )
        if held:
            raise ConfigError(
                f"--out = {str(out_dir)!r} already holds a model ({', '.join(held)}); it is "
                f"not overwritten: {fix}, or remove the folder first"
            )
    return out


def train(
    config: Config,
    panel: Panel,
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    *,
    log: Any = print,
    from_run_start: bool = True,
    staging: bool = False,
) -> dict[str, Any]:
    """Train both models on `panel`'s windows and write them with their card to `out_dir`.
    `from_run_start`: windows end from `run.start` on (`tradingd train`); False for a
    caller whose panel is already the training span (`retrain`'s rolling window, which a
    daemon's run.start must not cut further). `out_dir` is checked (`check_out_dir`) unless
    `staging` (`retrain`'s own staging folder under `versions/`)."""

    mc = model_config or ModelConfig()
    if not staging:
        check_out_dir(out_dir)
    t0 = time.perf_counter()
    f = config.features
    names = resolve_set(f.set)
    catalog = Catalog(f.indicators, f.cross_sectional)
    fsid = feature_set_id(f.set, names, f.indicators, f.cross_sectional)
    start = run_start(config, panel.times) if from_run_start else None
    span = _dates(panel.times)
    try:
        bar = bar_of_data(panel)
    except ConfigError as exc:
        raise ConfigError(f"training data: {exc}") from None
    if bar != config.live.bar:
        log(
            f"trained on {bar} bars (the data's), not on live.bar = {config.live.bar}: a run "
            f"on {config.live.bar} bars warns at start (model.bar_differs)"
        )
    shape = (
        f"window {mc.time_steps} bars + horizon {mc.horizon} (model time_steps, horizon), "
        f"data {len(panel.times)} bars from {span[0]} to {span[1]}"
        + (f", windows ending from run.start = {config.run.start}" if start is not None else "")
    )
    if start is not None and len(panel.times) and start > panel.times.max():
        raise TooFewWindows(
            f"no training window: run.start = {config.run.start} is after the data's last bar "
            f"({span[1]}; {shape}): set run.start within the data, or load data up to it"
        )
    try:
        data = training_windows(panel, names, catalog, mc, start)
    except ValueError as exc:
        if "no complete window" not in str(exc):
            raise
        raise TooFewWindows(
            f"no complete training window ({shape}): every window either reaches into the "
            "features' warm-up or has no target bar after it; give more bars (an earlier "
            "data start or later run.end), an earlier run.start, or a shorter time_steps"
        ) from None
    if from_run_start and config.run.start:
        log(f"windows ending from run.start = {config.run.start} (earlier bars warm up)")
    xt, yt, xv, yv = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    xs, ys = data["x_test"], data["y_test"]
    log(f"windows: {len(xt)} train, {len(xv)} validation, {len(xs)} test, shape {xt.shape[1:]}")
    if (
        len(xt) < mc.min_train_windows
        or len(xv) < mc.min_validation_windows
        or len(xs) < mc.min_test_windows
    ):
        exc = TooFewWindows(
            f"too few windows to train on: {len(xt)} training (train range "
            f"{' to '.join(_dates(data['t_train']))}), {len(xv)} validation (validation "
            f"range {' to '.join(_dates(data['t_val']))}) and {len(xs)} test (test range "
            f"{' to '.join(_dates(data['t_test']))}), the minimum is "
            f"{mc.min_train_windows}, {mc.min_validation_windows} and {mc.min_test_windows} "
            f"(model min_train_windows, min_validation_windows, min_test_windows; the test "
            f"windows are the last test_share_of_validation = {mc.test_share_of_validation} "
            f"of the validation span; {shape}): give more bars or symbols, or an earlier "
            "run.start"
        )
        exc.windows = (len(xt), len(xv), len(xs))
        exc.minimum = (mc.min_train_windows, mc.min_validation_windows, mc.min_test_windows)
        exc.ranges = tuple(  # type: ignore[assignment]
            " to ".join(_dates(data[k])) for k in ("t_train", "t_val", "t_test")
        )
        raise exc
    # Early stopping sees the validation windows only, never the test ones.
    cnn, rf, mean, scale, fit = fit_models(xt, yt, xv, yv, mc, log)
    w_cnn, w_rf = mc.ensemble_weights

    def forecasts(x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The windows scaled, and each model's and the ensemble's forecasts on them."""
        xsc = ((x - mean.astype(np.float32)) / scale.astype(np.float32)).astype(np.float32)
        p = {"cnn_lstm": cnn.predict(xsc), "random_forest": rf.predict(xsc)}
        return xsc, {**p, "ensemble": w_cnn * p["cnn_lstm"] + w_rf * p["random_forest"]}

    xvs, p_val = forecasts(xv)
    _, p_test = forecasts(xs)
    # Calibrated on the validation windows only: the test windows tune nothing.
    residual_std = float(np.std(yv - p_val["ensemble"])) or 1e-12
    final = Path(out_dir)
    # `tradingd train` writes into a staging folder beside --out and publishes it whole
    # (`_publish`): a kill or a full disk while exporting left a cut ONNX file or card in
    # --out, which the next train refused ("already holds a model") and a daemon loaded.
    out = final if staging else _staging_folder(final)
    try:
        cnn.export_onnx(out / "cnn_lstm.onnx")
        rf.export_onnx(out / "random_forest.onnx")
        parity = export_parity(out, xvs, {m: p_val[m] for m in MODELS})
        files = {
            m: {
                "path": f"{m}.onnx",
                "sha256": hashlib.sha256((out / f"{m}.onnx").read_bytes()).hexdigest(),
            }
            for m in ("cnn_lstm", "random_forest")
        }
        card = {
            # Not bumped for the test split: the format names what the daemon reads (it refuses
            # any other), and `test_range`, `samples.test` and `metrics.test` are additions it
            # does not read. A card without them (trained before) has no test split.
            "format": CARD_FORMAT,
            "model_version": "",  # filled in below from the exported models' outputs
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "feature_set": {
                "name": fsid.name,
                "version": fsid.version,
                "features": list(fsid.features),
            },
            # The data's bar length: the horizon, residual_std and confidence are of its
            # returns. A card without it was trained on daily bars (all before it was recorded).
            "bar": bar,
            "window": mc.time_steps,
            # The CNN+LSTM's layout: a card without it ignores the newest bar (ModelPair warns).
            "architecture": CNN_LSTM_ARCHITECTURE,
            "target": {
                "kind": "forward_log_return",
                "horizon_bars": mc.horizon,
                "price": "close, split-adjusted as known at the window's last bar",
            },
            "scaler": {
                "kind": "standard",
                "fitted_on": "training windows only",
                "mean": mean.tolist(),
                "scale": scale.tolist(),
            },
            "train_range": _dates(data["t_train"]),
            "validation_range": _dates(data["t_val"]),
            "test_range": _dates(data["t_test"]),
            "samples": {"train": len(xt), "validation": len(xv), "test": len(xs)},
            "splits": {
                "train": "fits the scaler and both models",
                "validation": "early-stops the CNN+LSTM and calibrates residual_std: its metrics "
                "are optimistic",
                "test": "held out: nothing is fitted, early-stopped or calibrated on it; "
                "`tradingd retrain` publishes on its metrics",
                "purge_bars": mc.horizon,
            },
            "data": {
                "source": config.data.source,
                "path": config.data.path,
                "symbols": list(panel.symbols),
                "range": _dates(panel.times),
                "sha256": data_hash(panel),
            },
            "model_config": asdict(mc),
            "metrics": {
                "validation": split_metrics(yv, p_val, _last_return(xv, names)),
                "test": split_metrics(ys, p_test, _last_return(xs, names)),
                "training_history": fit,
            },
            "ensemble": {
                "weights": {"cnn_lstm": w_cnn, "random_forest": w_rf},
                "threshold": mc.confidence_threshold,
                "residual_std": residual_std,
                "confidence": "Phi(|p| / residual_std)",
            },
            "feature_importance": rf.get_feature_importance(names),
            "files": files,
            "export_parity": parity,
            "versions": _versions(),
            "training": {
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
        }
        card["model_version"] = version = fingerprint(out, card)
        card["model_version_basis"] = (
            "outputs of both models (one onnxruntime thread) on a fixed probe input + scaling"
        )
        write_atomically({out / "card.json": json.dumps(card, indent=2, default=float) + "\n"})
        if not staging:
            _publish(out, final)
    finally:
        if not staging and out.exists():
            shutil.rmtree(out, ignore_errors=True)
    log(
        f"trained in {card['training']['seconds']} s, peak RSS "
        f"{card['training']['peak_rss_mb']} MB; model {version} written to {final}"
    )
    return card


_STAGING = ".train-"


def _staging_folder(final: Path) -> Path:
    """A new hidden folder beside `final` (the same file system, so publishing is a rename),
    named for it and this process; staging folders of trainings of `final` killed before
    they published (their process gone) are removed first."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}{_STAGING}"
    for old in parent.glob(f"{glob_escape(prefix)}*"):
        pid = old.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _publish(staged: Path, final: Path) -> None:
    """Move a finished model from its staging folder to `final`: one rename when `final`
    is new or an empty folder; otherwise (a folder of other files, which `check_out_dir`
    allows) file by file with card.json last, so the card, which the daemon and
    `check_out_dir` look for, appears only beside whole ONNX files. Checked again first: a
    training started at the same time may have published into `final` meanwhile."""
    check_out_dir(final)
    # mkdtemp makes its folder 0700 whatever the umask; --out follows the umask, as before.
    os.chmod(staged, 0o777 & ~process_umask())
    try:
        os.replace(staged, final)
        return
    except OSError:
        if not final.is_dir():
            raise
    names = sorted(p.name for p in staged.iterdir())
    for name in sorted(names, key=lambda n: n == "card.json"):
        shutil.move(str(staged / name), str(final / name))


def process_umask() -> int:
    """The process's umask (read by setting it, then set back: training is one thread)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _last_return(x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Each window's last `ret_1` (the persistence forecast), zeros without that feature."""
    if "ret_1" not in names:
        return np.zeros(len(x), dtype=x.dtype)
    return x[:, -1, list(names).index("ret_1")]


def split_metrics(
    y: np.ndarray, forecast: dict[str, np.ndarray], last_ret: np.ndarray
) -> dict[str, Any]:
    """The card's metrics of one split: each model's and the ensemble's, next to the naive
    baselines on the same windows."""
    out: dict[str, Any] = {m: metrics(y, forecast[m]) for m in (*MODELS, "ensemble")}
    out.update(baselines(y, last_ret))
    return out


# The most an exported ONNX model's output may differ from its framework model's on the
# validation windows (the served model is the ONNX one; the card's metrics are the
# framework's). Measured: 1e-7 (the CNN+LSTM, float32) and 3e-9 (the forest).
EXPORT_PARITY_ATOL = 1e-5


class ExportMismatch(TradingdError):
    """An exported model that does not compute what was trained."""


def export_parity(out: Path, xvs: np.ndarray, expected: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each exported model's outputs on the scaled validation windows against its framework
    model's: the card's metrics and the live confidence come from the framework models,
    the daemon serves the ONNX files, and nothing compared the two outside the tests. Above
    `EXPORT_PARITY_ATOL` the export is refused and its files removed."""
    measured: dict[str, float] = {}
    for m, want in expected.items():
        path = out / f"{m}.onnx"
        got = raw_outputs(path, model_input(m, xvs))
        diff = np.abs(np.ravel(got).astype(np.float64) - np.ravel(want).astype(np.float64))
        measured[m] = float(diff.max()) if diff.size else 0.0
        if not measured[m] <= EXPORT_PARITY_ATOL:  # NaN too
            for f in expected:
                (out / f"{f}.onnx").unlink(missing_ok=True)
            raise ExportMismatch(
                f"the exported {path.name} differs from the trained {m} by up to "
                f"{measured[m]:.3g} on the {len(xvs)} validation windows (at most "
                f"{EXPORT_PARITY_ATOL:g} is accepted): the export is not the model that was "
                "trained and validated; nothing is written (check the converter versions: "
                "tf2onnx, skl2onnx, onnxruntime)"
            )
    return {
        "rows": len(xvs),
        "max_abs_diff": measured,
        "tolerance": EXPORT_PARITY_ATOL,
        "on": "validation windows, scaled",
    }


def fit_models(
    xt: np.ndarray,
    yt: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    mc: ModelConfig,
    log: Any = print,
) -> tuple[Any, Any, np.ndarray, np.ndarray, dict[str, Any]]:
    """Scaler on the training windows only, then both models. Returns (cnn, rf, mean, scale,
    training info)."""
    from .cnn_lstm import CNNLSTMModel
    from .forest import RandomForestModel

    flat = xt.reshape(-1, xt.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    scale = flat.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature carries nothing; leave it at zero
    del flat

    def scaled(x: np.ndarray) -> np.ndarray:
        return ((x - mean.astype(np.float32)) / scale.astype(np.float32)).astype(np.float32)

    xts, xvs = scaled(xt), scaled(xv)
    cnn = CNNLSTMModel(xt.shape[1], xt.shape[2], config=mc)

    def epoch_done(epoch: int, losses: dict[str, float]) -> None:
        said = ", ".join(f"{k} {v:.6g}" for k, v in sorted(losses.items()))
        log(f"cnn_lstm epoch {epoch}/{mc.epochs}: {said}")

    fit = cnn.train(xts, yt, xvs, yv, progress=epoch_done)
    log(f"cnn_lstm: {fit['epochs_run']} epochs, best {fit['best_epoch']}")
    rf = RandomForestModel.from_config(mc)
    rf.train(xts, yt)
    return cnn, rf, mean, scale, fit


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in (
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "scikit-learn",
        "skl2onnx",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
        "ta-lib",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out
