"""The CNN+BiLSTM regressor of the reference specification (Keras 3, TensorFlow backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def set_seeds(seed: int) -> None:
    """Same data, same seed, same model: Python, NumPy and TensorFlow seeds plus
    deterministic TensorFlow ops (slower, but a retrain must reproduce the model)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class CNNLSTMModel:
    def __init__(
        self,
        time_steps: int,
        n_features: int,
        output_dim: int = 1,
        config: ModelConfig | None = None,
    ) -> None:
        import keras
        from keras import layers

        self.config = c = config or ModelConfig()
        set_seeds(c.seed)
        self.model = keras.Sequential(
            [
                keras.Input(shape=(time_steps, n_features), name="x"),
                layers.Conv1D(c.cnn_filters, c.cnn_kernel_size, activation="relu"),
                layers.MaxPooling1D(2),
                layers.Dropout(c.dropout_rate),
                layers.Bidirectional(layers.LSTM(c.lstm_units)),
                layers.Dropout(c.dropout_rate),
                layers.Dense(output_dim),
            ]
        )
        self.model.compile(optimizer=keras.optimizers.Adam(c.learning_rate), loss="mse")
        self.history: dict[str, list[float]] = {}

    def train(
        self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
    ) -> dict[str, Any]:
        import keras

        c = self.config
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=c.early_stopping_patience, restore_best_weights=True
        )
        h = self.model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            batch_size=c.batch_size,
            epochs=c.epochs,
            callbacks=[stop],
            shuffle=True,
            verbose=0,
        )
        self.history = {k: [float(v) for v in vals] for k, vals in h.history.items()}
        best = int(np.argmin(self.history["val_loss"]))
        return {
            "epochs_run": len(self.history["loss"]),
            "best_epoch": best + 1,
            "best_val_loss": self.history["val_loss"][best],
        }

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, batch_size=1024, verbose=0)[:, 0]

    def export_onnx(self, path: str | Path) -> None:
        self.model.export(str(path), format="onnx", verbose=False)

    def save_model(self, path: str, filename: str) -> None:
        self.model.save(str(Path(path) / filename))

    def load_model(self, path: str, filename: str) -> None:
        import keras

        self.model = keras.models.load_model(str(Path(path) / filename))
