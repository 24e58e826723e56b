"""The specification's model classes save and load as it says (save_model / load_model), on
tiny models trained for one epoch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")
pytest.importorskip("sklearn", reason="the train extra (scikit-learn) is not installed")

from tradingd_models.cnn_lstm import CNNLSTMModel
from tradingd_models.config import ModelConfig
from tradingd_models.forest import RandomForestModel

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


@pytest.fixture()
def forest():
    x, y = _windows(40)
    m = RandomForestModel(n_estimators=5, max_depth=3, n_jobs=1)
    m.train(x, y)
    return m


def test_random_forest_keeps_its_window_shape_through_save_and_load(forest, tmp_path):
    names = ["a", "b", "c", "d"]
    x, _ = _windows(8, seed=2)
    forest.save_model(str(tmp_path), "rf.pkl")
    loaded = RandomForestModel()
    loaded.load_model(str(tmp_path), "rf.pkl")
    assert (loaded.time_steps, loaded.n_features) == (STEPS, FEATURES)
    assert loaded.get_feature_importance(names) == forest.get_feature_importance(names)
    np.testing.assert_array_equal(loaded.predict(x), forest.predict(x))


def test_random_forest_loads_an_old_pickle_of_the_bare_regressor(forest, tmp_path):
    """Before the shape was saved, only the regressor was pickled: its flattened width is
    known, its split into steps x features is not."""
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(forest.model))
    loaded = RandomForestModel()
    loaded.load_model(str(tmp_path), "old.pkl")
    x, _ = _windows(8, seed=2)
    np.testing.assert_array_equal(loaded.predict(x), forest.predict(x))
    flat = loaded.get_feature_importance([f"f{i}" for i in range(STEPS * FEATURES)])
    assert len(flat) == STEPS * FEATURES
    with pytest.raises(ValueError, match=r"40 flattened.*time_steps and n_features"):
        loaded.get_feature_importance(["a", "b", "c", "d"])


def test_random_forest_names_how_many_feature_names_it_expects(forest):
    with pytest.raises(ValueError, match=r"got 3 feature names; expected 4 .* or 40"):
        forest.get_feature_importance(["a", "b", "c"])
    flat = forest.get_feature_importance([f"f{i}" for i in range(STEPS * FEATURES)])
    assert len(flat) == STEPS * FEATURES
    assert abs(sum(flat.values()) - 1.0) < 1e-9


def test_random_forest_refuses_feature_importance_before_training():
    with pytest.raises(ValueError, match="not trained"):
        RandomForestModel().get_feature_importance(["a"])


def test_random_forest_refuses_a_file_that_is_not_a_forest(tmp_path):
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"something": 1}))
    with pytest.raises(ValueError, match=r"x\.pkl.*not a RandomForestModel"):
        RandomForestModel().load_model(str(tmp_path), "x.pkl")


def test_cnn_lstm_refuses_a_file_of_another_window_shape(cnn, tmp_path):
    cnn.save_model(str(tmp_path), "cnn.h5")
    other = CNNLSTMModel(STEPS + 2, FEATURES, config=TINY)
    with pytest.raises(ValueError, match=r"cnn\.h5.*\(10, 4\).*CNNLSTMModel\(10, 4\)"):
        other.load_model(str(tmp_path), "cnn.h5")


def test_two_exports_of_one_forest_are_byte_identical(tmp_path):
    """The ONNX file of an identical retrain is the same file (its sha256 in the card too):
    skl2onnx's default graph name is random per export."""
    x, y = _windows(48)
    rf = RandomForestModel(n_estimators=3, max_depth=2, random_state=0, n_jobs=1)
    rf.train(x, y)
    rf.export_onnx(tmp_path / "a.onnx")
    rf.export_onnx(tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
