"""Ensemble and confidence as documented in tradingd.inference.onnx (no TensorFlow needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tradingd.core.errors import ConfigError
from tradingd.inference.onnx import EnsemblePredictor, ModelCard


def test_combination_weights_and_confidence_definition():
    e = EnsemblePredictor({"cnn_lstm": 0.6, "random_forest": 0.4}, residual_std=0.01)
    p = e.combine_predictions(
        {"cnn_lstm": np.array([0.01, -0.02, 0.0]), "random_forest": np.array([0.02, 0.01, 0.0])}
    )
    np.testing.assert_allclose(p, [0.014, -0.008, 0.0])
    conf = e.confidence(p)
    phi = [0.5 * (1 + math.erf(abs(x) / 0.01 / math.sqrt(2))) for x in p]
    np.testing.assert_allclose(conf, phi)
    assert conf[2] == 0.5  # no forecast, no confidence beyond a coin flip
    signal, _ = e.generate_signal(p, threshold=0.55)
    # |p|/s = 1.4 -> Phi = 0.919 (buy); 0.8 -> 0.788 (sell); 0 -> hold
    np.testing.assert_array_equal(signal, [1.0, -1.0, 0.0])
    signal, _ = e.generate_signal(p, threshold=0.85)
    np.testing.assert_array_equal(signal, [1.0, 0.0, 0.0])


def test_bad_ensemble_settings():
    with pytest.raises(ValueError, match="sum to 1"):
        EnsemblePredictor({"cnn_lstm": 0.6, "random_forest": 0.5})
    with pytest.raises(ValueError, match="residual_std"):
        EnsemblePredictor(residual_std=0.0)


def test_missing_or_broken_card(tmp_path):
    with pytest.raises(ConfigError, match="no model card"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text('{"window": 60}')
    with pytest.raises(ConfigError, match="lacks 'feature_set'"):
        ModelCard.load(tmp_path)


def test_the_ensemble_plugin_warms_each_model_up_at_load_with_a_batch_of_its_universe(
    monkeypatch,
):
    """The first live bar must not pay onnxruntime's first call of a shape: the plugin runs
    each model once at load on a batch as wide as its universe, and the warm-up does not
    change what the models answer afterwards."""
    from tradingd.inference import onnx
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    calls: list[tuple[str, tuple[int, ...]]] = []
    original = onnx.OnnxModel.run

    def run(self, x):  # type: ignore[no-untyped-def]
        calls.append((self.input_name, tuple(x.shape)))
        return original(self, x)

    monkeypatch.setattr(onnx.OnnxModel, "run", run)
    symbols = tuple(f"S{i}" for i in range(37))
    plugin = MlEnsemble(MlEnsembleConfig(cache_dir="", cache_size=0), symbols)
    window, n_feat = plugin.window, len(plugin.features)
    assert sorted(shape for _, shape in calls) == sorted(
        [(37, window, n_feat), (37, window * n_feat)]
    )
    assert plugin.model_calls == 0
    x = np.random.default_rng(3).normal(size=(5, window, n_feat)).astype(np.float32)
    cold = onnx.ModelPair(plugin._dir, 1).predict(x)
    warm = plugin.pair.predict(x)
    for name in cold:
        np.testing.assert_array_equal(cold[name], warm[name])
