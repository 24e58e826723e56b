"""The ML signal: the CNN+BiLSTM and random-forest pair through onnxruntime.

Each bar the plugin appends the engine's feature values to a per-symbol window (it never
computes an indicator itself), then predicts for every symbol with a full window in one
batched call per model.

Which model: `model_dir` when set (it must exist); otherwise `var/models/current` under the
working directory when it exists (where `tradingd retrain` publishes); otherwise the pair
shipped inside the package. The choice and its reason are logged (`model.location`), and the
plugin exposes `model_path` (the resolved directory) and `version` for the run's summary.

Prediction cache: the models' inputs depend on more than (symbol, bar time): cross-sectional
features on the universe, recursive indicators on where the data starts. So a prediction is
keyed by a hash of exactly what the models see, the float32 (window, features) array of that
symbol, salted with the model version and the ensemble weights (BLAKE2b, 128 bits). A
different universe, data start or model can never be served another run's prediction, and a
rerun of the same bars still skips onnxruntime. Predictions are kept in memory (at most
`cache_size`) and in `cache_dir` between runs, one file per model version (the newest
`cache_versions` files are kept); an unreadable file is ignored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import structlog

from tradingd.core.errors import ConfigError
from tradingd.core.ports import BarContext
from tradingd.inference.onnx import PUBLISHED_MODEL_DIR, EnsemblePredictor, ModelPair

log = structlog.get_logger(__name__)

CACHE_FORMAT = "tradingd-prediction-cache/2"


def default_model_dir() -> Path:
    """The model pair shipped inside the package: the fallback when nothing else is set."""
    return Path(str(files("tradingd_models") / "default"))


def locate_model(model_dir: str, cwd: str | Path | None = None) -> tuple[Path, str]:
    """The model directory a plugin configured with `model_dir` loads, and why (for the log).

    An explicit `model_dir` must exist (no silent fallback). An empty one means the model
    `tradingd retrain` published under the working directory (`var/models/current`) when
    there is one, else the pair shipped with the package."""
    base = Path.cwd() if cwd is None else Path(cwd)
    if model_dir:
        path = Path(model_dir).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise ConfigError(
                f"ml_ensemble: model_dir {model_dir!r} does not exist ({path}); point it at a "
                "folder with card.json and both ONNX files, or leave it empty for "
                f"{PUBLISHED_MODEL_DIR} (else the shipped model)"
            )
        return path, "model_dir is set"
    published = base / PUBLISHED_MODEL_DIR
    if published.exists():
        return published, f"model_dir is empty and {PUBLISHED_MODEL_DIR} exists"
    if published.is_symlink():  # a publication gone wrong must not silently change the model
        raise ConfigError(
            f"ml_ensemble: {published} is a broken link (its target "
            f"{os.readlink(published)!r} is missing): repair it, or set model_dir"
        )
    return default_model_dir(), f"model_dir is empty and there is no {published}: shipped model"


def cache_salt(version: str, weights: Mapping[str, float]) -> Any:
    """A BLAKE2b state holding everything besides the window that the cached value depends on:
    the model version (models, scaler, feature-set version) and the ensemble weights."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([CACHE_FORMAT, version, sorted(weights.items())]).encode())
    return h


@dataclass(frozen=True)
class MlEnsembleConfig:
    # empty: var/models/current when it exists (see locate_model), else the shipped model
    model_dir: str = ""
    threshold: float = 0.0  # 0: the card's confidence threshold (0.55)
    cache_size: int = 200_000
    threads: int = 0  # onnxruntime intra-op threads; 0 = one per core
    # Predictions are kept here across runs, one file per model version ("" = in memory only).
    cache_dir: str = "var/cache/predictions"
    cache_versions: int = 5  # prediction files kept (newest first); older versions' are removed

    def __post_init__(self) -> None:
        if self.threshold and not 0.5 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0.5, 1), got {self.threshold}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        if self.cache_versions < 1:
            raise ValueError(f"cache_versions must be >= 1, got {self.cache_versions}")


class MlEnsemble:
    kind: ClassVar[str] = "signal"
    Config = MlEnsembleConfig

    def __init__(self, config: MlEnsembleConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "ml_ensemble"
        self.symbols = symbols
        self._dir, why = locate_model(config.model_dir)
        self._loaded_from = self._dir.resolve()
        self.model_path = str(self._loaded_from)  # what this run loaded, for its summary
        self.pair = ModelPair(self._dir, config.threads)
        card = self.pair.card
        ens = card.data["ensemble"]
        self.predictor = EnsemblePredictor(ens["weights"], ens["residual_std"])
        self.threshold = config.threshold or float(ens["threshold"])
        self.version = card.version
        log.info("model.location", path=self.model_path, version=self.version, reason=why)
        self.feature_set = card.feature_set  # checked against the engine's at start-up
        self.features = card.feature_set.features
        self.window = card.window
        n, f = len(symbols), len(self.features)
        self._buf = np.zeros((self.window, n, f), dtype=np.float32)
        self._pos = np.full(n, -1, dtype=np.int64)
        self._filled = np.zeros(n, dtype=np.int64)
        self._back = np.arange(self.window - 1, -1, -1)[:, None]
        self._salt = cache_salt(self.version, self.predictor.weights)
        # (model version, BLAKE2b of version + weights + window) -> ensemble prediction
        self._cache: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self.model_calls = 0
        self.cache_hits = 0
        self._load_cache()

    def required_features(self) -> tuple[str, ...]:
        return self.features

    def _maybe_reload(self) -> None:
        """A model root's `current` link may have been switched by `tradingd retrain`: load
        the new version between bars. A candidate trained on other features is refused."""
        target = self._dir.resolve()
        if target == self._loaded_from:
            return
        self._loaded_from = target
        try:
            pair = ModelPair(self._dir, self.config.threads)
        except Exception as exc:  # keep trading on the model that works
            log.error("model.reload_failed", path=str(target), error=str(exc))
            return
        if pair.card.feature_set != self.feature_set or pair.card.window != self.window:
            log.error(
                "model.reload_refused",
                path=str(target),
                reason="trained on another feature set or window",
            )
            return
        self._save_cache()  # the outgoing version's predictions, before its key changes
        ens = pair.card.data["ensemble"]
        self.pair = pair
        self.predictor = EnsemblePredictor(ens["weights"], ens["residual_std"])
        self.version = pair.card.version
        self.model_path = str(target)
        self._salt = cache_salt(self.version, self.predictor.weights)
        self._load_cache()
        log.info("model.reloaded", version=self.version, path=str(target))

    def cache_keys(self, windows: np.ndarray) -> list[tuple[str, bytes]]:
        """One key per window of `windows` (B, window, features): what the models would see."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        keys = []
        for w in x:
            h = self._salt.copy()
            h.update(w)
            keys.append((self.version, h.digest()))
        return keys

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Ensemble predictions for `windows` (B, window, features), unscaled float32: from the
        cache when the same input was seen, else one batched call per model."""
        keys = self.cache_keys(windows)
        pred = np.empty(len(keys))
        todo = []
        for k, key in enumerate(keys):
            hit = self._cache.get(key)
            if hit is None:
                todo.append(k)
            else:
                pred[k] = hit
                self._cache.move_to_end(key)
        self.cache_hits += len(keys) - len(todo)
        if todo:
            ens = self.predictor.combine_predictions(self.pair.predict(windows[todo]))
            self.model_calls += 1
            pred[todo] = ens
            for k, v in zip(todo, ens.tolist(), strict=True):
                self._remember(keys[k], v)
        return pred

    def observe(self, ctx: BarContext) -> None:
        """A warm-up bar (before the run trades): fill the windows, predict nothing. The
        engine calls this instead of `score` before `run.start`, so years of history before
        the start cost a buffer update per bar, not a model call."""
        self._push(ctx)

    def score(self, ctx: BarContext) -> np.ndarray:
        self._maybe_reload()
        ready = self._push(ctx)
        full = np.flatnonzero(ready & (self._filled >= self.window))
        out = np.full(len(self.symbols), np.nan)
        if full.size == 0:
            return out
        t_idx = (self._pos[full][None, :] - self._back) % self.window  # (window, B) oldest first
        windows = np.ascontiguousarray(self._buf[t_idx, full[None, :]].transpose(1, 0, 2))
        signal, conf = self.predictor.generate_signal(self.predict(windows), self.threshold)
        out[full] = signal * conf
        return out

    def _push(self, ctx: BarContext) -> np.ndarray:
        ready = ctx.ready if ctx.ready is not None else ctx.tradable
        idx = np.flatnonzero(ready)
        if idx.size:
            row = np.stack([ctx.features[f][idx] for f in self.features], axis=-1)
            p = (self._pos[idx] + 1) % self.window
            self._pos[idx] = p
            self._buf[p, idx] = row
            self._filled[idx] += 1
        # A symbol that misses readiness starts its window again: windows are consecutive bars.
        self._filled[~ready] = 0
        return ready

    def _cache_file(self) -> Path | None:
        return (
            Path(self.config.cache_dir) / f"{self.version}.json" if self.config.cache_dir else None
        )

    def _load_cache(self) -> None:
        path = self._cache_file()
        if path is None or not self.config.cache_size or not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            if not (
                isinstance(data, dict)
                and data.get("format") == CACHE_FORMAT
                and data.get("model_version") == self.version
            ):
                # e.g. a file from before predictions were keyed by their inputs: never reused
                log.info("prediction_cache.ignored", path=str(path), reason="another format")
                return
            rows = [
                ((self.version, bytes.fromhex(k)), float(v))
                for k, v in data["entries"][-self.config.cache_size :]
            ]
        except (OSError, ValueError, TypeError, KeyError) as exc:  # never worth failing for
            log.warning("prediction_cache.unreadable", path=str(path), error=str(exc))
            return
        self._cache.update(rows)
        while len(self._cache) > self.config.cache_size:  # e.g. another version's, on reload
            self._cache.popitem(last=False)
        log.info("prediction_cache.loaded", path=str(path), entries=len(self._cache))

    def close(self) -> None:
        """Called by the engine at the end of a run: keep this version's predictions."""
        self._save_cache()

    def _save_cache(self) -> None:
        path = self._cache_file()
        if path is None or not self._cache:
            return
        entries = [(d.hex(), v) for (ver, d), v in self._cache.items() if ver == self.version]
        data = {"format": CACHE_FORMAT, "model_version": self.version, "entries": entries}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        # One file per model version: weekly retraining must not grow the folder forever.
        newest = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in newest[self.config.cache_versions :]:
            if old != path:
                old.unlink(missing_ok=True)

    def _remember(self, key: tuple[str, bytes], value: float) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
