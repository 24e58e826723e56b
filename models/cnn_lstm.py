"""The CNN+BiLSTM regressor of the reference specification (Keras 3, TensorFlow backend)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tradingd.inference.onnx import CNN_LSTM_ARCHITECTURE

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
    """Conv1D (valid, kernel `cnn_kernel_size`) -> MaxPooling1D(2, same) -> BiLSTM -> Dense.

    The pooling pads (`ARCHITECTURE`, recorded in the model card): every conv output reaches
    the LSTM, the newest bar's included, for an even or odd `time_steps`. A causal conv with
    valid pooling would keep it for even windows only (T outputs, T odd rounded down)."""

    ARCHITECTURE = CNN_LSTM_ARCHITECTURE

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
                # padding="same": with "valid" an odd number of conv outputs (time_steps - 1
                # of them for an even window) was rounded down and the last one, the only one
                # that sees the window's newest bar, dropped: the model ignored bar t.
                layers.MaxPooling1D(2, padding="same"),
                layers.Dropout(c.dropout_rate),
                layers.Bidirectional(layers.LSTM(c.lstm_units)),
                layers.Dropout(c.dropout_rate),
                layers.Dense(output_dim),
            ]
        )
        self._compile()
        self.history: dict[str, list[float]] = {}

    def _compile(self) -> None:
        import keras

        self.model.compile(optimizer=keras.optimizers.Adam(self.config.learning_rate), loss="mse")

    def train(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        progress: Callable[[int, dict[str, float]], object] | None = None,
    ) -> dict[str, Any]:
        """`progress(epoch, losses)` after each epoch (1-based): a training of minutes said
        nothing until its end (a retrain under systemd logged nothing for 8 minutes)."""
        import keras

        c = self.config
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=c.early_stopping_patience, restore_best_weights=True
        )
        callbacks: list[Any] = [stop]
        if progress is not None:
            callbacks.append(
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda epoch, logs: progress(
                        epoch + 1, {k: float(v) for k, v in (logs or {}).items()}
                    )
                )
            )
        h = self.model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            batch_size=c.batch_size,
            epochs=c.epochs,
            callbacks=callbacks,
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
        """The model with its weights; the format by the name's suffix: ".keras" (Keras 3's
        own) or ".h5" / ".hdf5" (HDF5, the specification's)."""
        self.model.save(str(Path(path) / filename))

    def load_model(self, path: str, filename: str) -> None:
        """A model `save_model` wrote, in either format, loaded uncompiled and compiled as
        this class compiles (Adam at this instance's config's learning rate, MSE): Keras 3
        cannot rebuild the compiled loss an HDF5 file names ("Could not deserialize
        'keras.metrics.mse'"), and its HDF5 saving drops the optimizer from the model's compile
        config, so a ".keras" file saved after an ".h5" one came back with RMSprop. The
        optimizer starts afresh. The file's input must be this instance's time_steps x
        n_features."""
        import keras

        file = Path(path) / filename
        model = keras.models.load_model(str(file), compile=False)
        want = tuple(self.model.input_shape[1:])
        got = tuple(model.input_shape[1:])
        if got != want:
            shape = ", ".join(map(str, got))
            raise ValueError(
                f"model file {file}: its input per window is ({shape}) (time steps, features), "
                f"this CNNLSTMModel's is {want}: construct it as CNNLSTMModel({shape}) to "
                "load this file"
            )
        self.model = model
        self._compile()
