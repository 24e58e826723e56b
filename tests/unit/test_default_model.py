"""The shipped model pair: installed with the package, intact, and in step with the config."""

from __future__ import annotations

import numpy as np

from tradingd.config import Config
from tradingd.features.catalog import feature_set_id, resolve_set
from tradingd.inference.onnx import ModelPair
from tradingd_plugins.signals.ml_ensemble import default_model_dir


def test_default_model_ships_and_matches_the_default_feature_set():
    pair = ModelPair(default_model_dir())  # hashes and shapes checked on load
    card = pair.card
    f = Config().features
    expected = feature_set_id(f.set, resolve_set(f.set), f.indicators, f.cross_sectional)
    # If this fails, the default features changed: retrain with `tradingd train`.
    assert card.feature_set == expected
    assert card.window == 60 and len(card.feature_set.features) == 20
    out = pair.predict(np.zeros((3, 60, 20), dtype=np.float32))
    assert set(out) == {"cnn_lstm", "random_forest"}
    assert all(v.shape == (3,) and np.isfinite(v).all() for v in out.values())
    # the same input gives the same forecast for every symbol in the batch
    assert np.ptp(out["cnn_lstm"]) == 0.0
