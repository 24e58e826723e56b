"""The CNN+LSTM's forecast depends on the window's newest bar (`cnn_lstm/2`), in Keras and in
its ONNX export, and a card trained before (no `architecture`) is served with one warning.

MaxPooling1D(2) with "valid" padding dropped the last conv output of a 60-bar window (59
outputs, rounded down to 29 pools), the only one that sees bar t: adding 5.0 to the newest
bar changed the forecast by exactly 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from tradingd.inference.onnx import CNN_LSTM_ARCHITECTURE, ModelPair, raw_outputs
from tradingd_plugins.signals.ml_ensemble import default_model_dir

FEATURES = 3


def _model(steps: int):
    pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")
    from tradingd_models.cnn_lstm import CNNLSTMModel
    from tradingd_models.config import ModelConfig

    return CNNLSTMModel(steps, FEATURES, config=ModelConfig(cnn_filters=4, lstm_units=4))


@pytest.mark.parametrize("steps", [10, 11, 60])
def test_the_forecast_depends_on_the_newest_bar_for_even_and_odd_windows(steps, tmp_path):
    model = _model(steps)
    x = np.random.default_rng(steps).normal(size=(8, steps, FEATURES)).astype(np.float32)
    bumped = x.copy()
    bumped[:, -1, :] += 5.0
    keras_moved = np.abs(model.predict(bumped) - model.predict(x))
    assert keras_moved.max() > 1e-4, "the newest bar does not reach the output"
    # the served model too: tf2onnx exports the padded pooling and keeps parity with Keras
    path = tmp_path / "cnn.onnx"
    model.export_onnx(path)
    onnx_x, onnx_bumped = (np.ravel(raw_outputs(path, a)) for a in (x, bumped))
    np.testing.assert_allclose(onnx_x, model.predict(x), rtol=0, atol=1e-5)
    np.testing.assert_allclose(onnx_bumped, model.predict(bumped), rtol=0, atol=1e-5)
    assert np.abs(onnx_bumped - onnx_x).max() > 1e-4


def test_the_model_stays_causal():
    """Padding the pooling adds no look-ahead: a window's forecast is of its own bars only,
    so changing the oldest bar changes it and nothing past the window exists to leak."""
    model = _model(11)
    x = np.random.default_rng(1).normal(size=(8, 11, FEATURES)).astype(np.float32)
    bumped = x.copy()
    bumped[:, 0, :] += 5.0
    assert np.abs(model.predict(bumped) - model.predict(x)).max() > 1e-4


def _folder(tmp_path: Path, architecture: str | None) -> Path:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    card = json.loads((folder / "card.json").read_text())
    card.pop("architecture", None)
    if architecture is not None:
        card["architecture"] = architecture
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _warnings(folder: Path) -> list[dict]:
    """Loaded twice, as a backtest does (the start-up check, then the run): said once."""
    structlog.reset_defaults()
    with capture_logs() as logs:
        ModelPair(folder, threads=1)
        ModelPair(folder, threads=1)
    return [e for e in logs if e["event"] == "model.newest_bar_ignored"]


def test_a_card_without_architecture_loads_with_one_warning_naming_the_remedy(tmp_path):
    warned = _warnings(_folder(tmp_path, None))
    assert len(warned) == 1
    assert warned[0]["log_level"] == "warning"
    assert "newest bar" in warned[0]["rule"] and "tradingd train" in warned[0]["rule"]
    assert warned[0]["card"].endswith("card.json")


def test_a_card_of_the_current_architecture_loads_without_it(tmp_path):
    assert _warnings(_folder(tmp_path, CNN_LSTM_ARCHITECTURE)) == []


def test_a_card_whose_architecture_is_no_name_is_refused(tmp_path):
    from tradingd.core.errors import ConfigError

    with pytest.raises(ConfigError, match="'architecture'"):
        ModelPair(_folder(tmp_path, ""), threads=1)
