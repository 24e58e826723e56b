"""The specification's model classes save and load as it says (save_model / load_model), on
tiny models trained for one epoch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")
pytest.importorskip("sklearn", reason="the train extra (scikit-learn) is not installed")

from tradingd_models.cnn_lstm import CNNLSTMModel
from tradingd_models.config import ModelConfig

TINY = ModelConfig(
    cnn_filters=4, lstm_units=4, epochs=1, batch_size=16, rf_n_estimators=5, rf_max_depth=3
)
STEPS, FEATURES = 10, 4


def _windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, STEPS, FEATURES)).astype(np.float32)
    return x, (0.01 * x[:, -1, 0]).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    x, y = _windows(48)
    xv, yv = _windows(16, seed=1)
    m = CNNLSTMModel(STEPS, FEATURES, config=TINY)
    m.train(x, y, xv, yv)
    return m


@pytest.mark.parametrize("filename", ["cnn.h5", "cnn.keras"])
def test_cnn_lstm_round_trips_in_hdf5_and_keras_format(cnn, tmp_path, filename):
    """HDF5 is the specification's format; Keras 3 could not load the compiled loss it wrote
    ("Could not deserialize 'keras.metrics.mse'")."""
    x, y = _windows(8, seed=2)
    cnn.save_model(str(tmp_path), filename)
    loaded = CNNLSTMModel(STEPS, FEATURES, config=TINY)
    loaded.load_model(str(tmp_path), filename)
    np.testing.assert_allclose(loaded.predict(x), cnn.predict(x), rtol=0, atol=1e-6)
    # compiled as the class compiles it (the .keras case runs after an .h5 save, which made
    # Keras drop the optimizer from the .keras file: it came back as RMSprop)
    assert type(loaded.model.optimizer).__name__ == "Adam"
    assert float(loaded.model.optimizer.learning_rate) == pytest.approx(TINY.learning_rate)
    loaded.train(x, y, x, y)


def test_cnn_lstm_refuses_a_file_of_another_window_shape(cnn, tmp_path):
    cnn.save_model(str(tmp_path), "cnn.h5")
    other = CNNLSTMModel(STEPS + 2, FEATURES, config=TINY)
    with pytest.raises(ValueError, match=r"cnn\.h5.*\(10, 4\).*CNNLSTMModel\(10, 4\)"):
        other.load_model(str(tmp_path), "cnn.h5")
