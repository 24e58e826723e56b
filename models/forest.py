"""The random-forest regressor on flattened windows (scikit-learn)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import ModelConfig


class RandomForestModel:
    def __init__(
        self, n_estimators: int = 100, max_depth: int = 10, random_state: int = 42, n_jobs: int = -1
    ) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.model = RandomForestRegressor(
            n_estimators=n_estimators, max_depth=max_depth, random_state=random_state, n_jobs=n_jobs
        )
        self.time_steps = 0
        self.n_features = 0

    @classmethod
    def from_config(cls, c: ModelConfig) -> RandomForestModel:
        return cls(c.rf_n_estimators, c.rf_max_depth, c.rf_random_state)

    def train(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.time_steps, self.n_features = x_train.shape[1], x_train.shape[2]
        self.model.fit(x_train.reshape(len(x_train), -1), y_train)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x.reshape(len(x), -1).astype(np.float32))

    def get_feature_importance(self, feature_names: Sequence[str]) -> dict[str, float]:
        """Mean decrease in impurity, summed over the time steps of each feature (a window is
        flattened time-major: step 0 features, step 1 features, ...)."""
        imp = self.model.feature_importances_.reshape(self.time_steps, self.n_features).sum(0)
        ranked = sorted(zip(feature_names, imp.tolist(), strict=True), key=lambda kv: -kv[1])
        return dict(ranked)

    def export_onnx(self, path: str | Path) -> None:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        onx = convert_sklearn(
            self.model,
            initial_types=[("x", FloatTensorType([None, self.time_steps * self.n_features]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        Path(path).write_bytes(onx.SerializeToString())

    def save_model(self, path: str, filename: str) -> None:
        with (Path(path) / filename).open("wb") as fh:
            pickle.dump(self.model, fh)

    def load_model(self, path: str, filename: str) -> None:
        with (Path(path) / filename).open("rb") as fh:
            self.model = pickle.load(fh)
