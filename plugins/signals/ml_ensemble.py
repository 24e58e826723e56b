"""The ML signal: the CNN+BiLSTM and random-forest pair through onnxruntime.

Each bar the plugin appends the engine's feature values to a per-symbol window (it never
computes an indicator itself), then predicts for every symbol with a full window in one
batched call per model. Predictions are cached by (model version, symbol, bar time), in memory
and in `cache_dir` between runs, so a second replay of the same bars does not run the models
again (a different model version never reads another's predictions).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import ClassVar

import numpy as np
import structlog

from tradingd.core.ports import BarContext
from tradingd.inference.onnx import EnsemblePredictor, ModelPair

log = structlog.get_logger(__name__)


def default_model_dir() -> Path:
    return Path(str(files("tradingd_models") / "default"))


@dataclass(frozen=True)
class MlEnsembleConfig:
    model_dir: str = ""  # empty: the default model shipped with tradingd
    threshold: float = 0.0  # 0: the card's confidence threshold (0.55)
    cache_size: int = 200_000
    threads: int = 0  # onnxruntime intra-op threads; 0 = one per core
    # Predictions are kept here across runs, one file per model version ("" = in memory only).
    cache_dir: str = "var/cache/predictions"
    cache_versions: int = 5  # prediction files kept (newest first); older versions' are removed

    def __post_init__(self) -> None:
        if self.threshold and not 0.5 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0.5, 1), got {self.threshold}")


class MlEnsemble:
    kind: ClassVar[str] = "signal"
    Config = MlEnsembleConfig

    def __init__(self, config: MlEnsembleConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "ml_ensemble"
        self.symbols = symbols
        self._dir = Path(config.model_dir) if config.model_dir else default_model_dir()
        self._loaded_from = self._dir.resolve()
        self.pair = ModelPair(self._dir, config.threads)
        card = self.pair.card
        ens = card.data["ensemble"]
        self.predictor = EnsemblePredictor(ens["weights"], ens["residual_std"])
        self.threshold = config.threshold or float(ens["threshold"])
        self.version = card.version
        self.feature_set = card.feature_set  # checked against the engine's at start-up
        self.features = card.feature_set.features
        self.window = card.window
        n, f = len(symbols), len(self.features)
        self._buf = np.zeros((self.window, n, f), dtype=np.float32)
        self._pos = np.full(n, -1, dtype=np.int64)
        self._filled = np.zeros(n, dtype=np.int64)
        self._cache: OrderedDict[tuple[str, str, object], float] = OrderedDict()
        self.model_calls = 0
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
        ens = pair.card.data["ensemble"]
        self.pair = pair
        self.predictor = EnsemblePredictor(ens["weights"], ens["residual_std"])
        self.version = pair.card.version
        log.info("model.reloaded", version=self.version, path=str(target))

    def score(self, ctx: BarContext) -> np.ndarray:
        self._maybe_reload()
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
        full = np.flatnonzero(ready & (self._filled >= self.window))
        out = np.full(len(self.symbols), np.nan)
        if full.size == 0:
            return out
        pred = np.empty(full.size)
        todo = []
        for k, j in enumerate(full.tolist()):
            hit = self._cache.get((self.version, self.symbols[j], ctx.time))
            if hit is None:
                todo.append(k)
            else:
                pred[k] = hit
        if todo:
            cols = full[todo]
            back = np.arange(self.window - 1, -1, -1)[:, None]
            t_idx = (self._pos[cols][None, :] - back) % self.window  # (window, B) oldest first
            windows = self._buf[t_idx, cols[None, :]].transpose(1, 0, 2)  # (B, window, F)
            ens = self.predictor.combine_predictions(self.pair.predict(windows))
            self.model_calls += 1
            pred[todo] = ens
            for k, v in zip(todo, ens.tolist(), strict=True):
                self._remember((self.version, self.symbols[full[k]], ctx.time), v)
        signal, conf = self.predictor.generate_signal(pred, self.threshold)
        out[full] = signal * conf
        return out

    def _cache_file(self) -> Path | None:
        return (
            Path(self.config.cache_dir) / f"{self.version}.json" if self.config.cache_dir else None
        )

    def _load_cache(self) -> None:
        path = self._cache_file()
        if path is None or not path.exists():
            return
        try:
            rows = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:  # a cache is never worth failing for
            log.warning("prediction_cache.unreadable", path=str(path), error=str(exc))
            return
        for sym, t, v in rows[-self.config.cache_size :]:
            self._cache[(self.version, sym, datetime.fromisoformat(t))] = float(v)
        log.info("prediction_cache.loaded", path=str(path), entries=len(self._cache))

    def close(self) -> None:
        """Called by the engine at the end of a run: keep this version's predictions."""
        path = self._cache_file()
        if path is None or not self._cache:
            return
        rows = [
            (s, t.isoformat(), v) for (ver, s, t), v in self._cache.items() if ver == self.version
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, path)
        # One file per model version: weekly retraining must not grow the folder forever.
        files = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[self.config.cache_versions :]:
            if old != path:
                old.unlink(missing_ok=True)

    def _remember(self, key: tuple[str, str, object], value: float) -> None:
        self._cache[key] = value
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
