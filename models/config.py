"""Model hyperparameters: the reference specification's `ModelConfig` values are the defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    time_steps: int = 60
    cnn_filters: int = 64
    cnn_kernel_size: int = 2
    lstm_units: int = 100
    dropout_rate: float = 0.3
    batch_size: int = 32
    epochs: int = 50
    learning_rate: float = 0.001
    validation_split: float = 0.2
    # The last share of the validation span's bar times, held out as the test split: nothing
    # is fitted, early-stopped or calibrated on it, so its metrics (which the retrain gate
    # judges) were not chosen by the model's own tuning. Carved out of the validation span
    # (`horizon` bars purged between the two): the training windows are validation_split's.
    test_share_of_validation: float = 0.5
    early_stopping_patience: int = 10
    rf_n_estimators: int = 100
    rf_max_depth: int = 10
    rf_random_state: int = 42
    seed: int = 42
    horizon: int = 1  # bars ahead of the forward-return target
    ensemble_weights: tuple[float, float] = (0.6, 0.4)  # cnn_lstm, random_forest
    confidence_threshold: float = 0.55
    # Fewer windows than these is refused before any model is built: a model fitted on a
    # handful of windows, or validated or tested on them, is noise with a card that looks
    # like a model.
    min_train_windows: int = 200
    min_validation_windows: int = 50
    min_test_windows: int = 50

    def __post_init__(self) -> None:
        for name in (
            "time_steps",
            "cnn_filters",
            "cnn_kernel_size",
            "lstm_units",
            "batch_size",
            "epochs",
            "rf_n_estimators",
            "rf_max_depth",
            "horizon",
            "min_train_windows",
            "min_validation_windows",
            "min_test_windows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_steps < self.cnn_kernel_size:
            # Checked here, before any data is loaded: Keras' own error came after loading
            # and building the features, as a raw traceback (exit 1).
            raise ValueError(
                f"time_steps = {self.time_steps} is shorter than cnn_kernel_size = "
                f"{self.cnn_kernel_size}: the CNN+LSTM's convolution needs a window of at "
                "least its kernel's bars; raise time_steps or lower cnn_kernel_size"
            )
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if not 0 < self.validation_split < 1:
            raise ValueError(f"validation_split must be in (0, 1), got {self.validation_split}")
        if not 0 < self.test_share_of_validation < 1:
            # 0 would leave no held-out test (the gate judging the early-stopping windows
            # again), 1 no windows to early-stop and calibrate on.
            raise ValueError(
                "test_share_of_validation must be in (0, 1) (the share of the validation "
                "span held out as the test split; 0.5: its second half), got "
                f"{self.test_share_of_validation}"
            )
        if abs(sum(self.ensemble_weights) - 1.0) > 1e-9:
            raise ValueError(f"ensemble_weights must sum to 1, got {self.ensemble_weights}")
        if not 0.5 <= self.confidence_threshold < 1:
            raise ValueError("confidence_threshold must be in [0.5, 1)")
