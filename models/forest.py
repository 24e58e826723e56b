"""The random-forest regressor on flattened windows (scikit-learn)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import ModelConfig

# What save_model pickles: {"format": SAVE_FORMAT, "model", "time_steps", "n_features"}.
# Before it, the bare regressor was pickled and the window shape lost.
SAVE_FORMAT = "tradingd.random_forest/1"


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
        """Mean decrease in impurity, ranked. One name per feature: summed over the time steps
        of each feature (a window is flattened time-major: step 0 features, step 1 features,
        ...). One name per flattened column (time_steps x n_features of them): per column."""
        imp = self._importances()
        names = list(feature_names)
        per_feature = bool(self.n_features) and len(names) == self.n_features
        if per_feature:
            imp = imp.reshape(self.time_steps, self.n_features).sum(0)
        elif len(names) != imp.size:
            if self.n_features:
                expected = (
                    f"{self.n_features} (one per feature) or {imp.size} (one per flattened "
                    f"column: {self.time_steps} time steps x {self.n_features} features, "
                    "time-major)"
                )
            else:
                expected = (
                    f"{imp.size} flattened column names: the model was loaded from a file "
                    "without its window shape; set time_steps and n_features to give one "
                    "name per feature"
                )
            raise ValueError(f"got {len(names)} feature names; expected {expected}")
        ranked = sorted(zip(names, imp.tolist(), strict=True), key=lambda kv: -kv[1])
        return dict(ranked)

    def _importances(self) -> np.ndarray:
        # an unfitted forest raises NotFittedError, an AttributeError
        imp = getattr(self.model, "feature_importances_", None)
        if imp is None:
            raise ValueError("the random forest is not trained: call train() or load_model()")
        imp = np.asarray(imp, dtype=np.float64)
        if self.n_features and imp.size != self.time_steps * self.n_features:
            raise ValueError(
                f"the forest has {imp.size} inputs, not time_steps x n_features = "
                f"{self.time_steps} x {self.n_features}"
            )
        return imp

    @property
    def n_inputs(self) -> int:
        """The flattened window width the forest was fitted on."""
        if self.n_features:
            return self.time_steps * self.n_features
        return int(getattr(self.model, "n_features_in_", 0))

    def export_onnx(self, path: str | Path) -> None:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        onx = convert_sklearn(
            self.model,
            initial_types=[("x", FloatTensorType([None, self.n_inputs]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            # skl2onnx names the graph with a random id by default: two exports of one forest
            # differed byte for byte (and so in sha256), a retrain never reproduced its file.
            name="random_forest",
        )
        Path(path).write_bytes(onx.SerializeToString())

    def save_model(self, path: str, filename: str) -> None:
        """The regressor with the window shape it was trained on (pickle)."""
        state = {
            "format": SAVE_FORMAT,
            "model": self.model,
            "time_steps": self.time_steps,
            "n_features": self.n_features,
        }
        with (Path(path) / filename).open("wb") as fh:
            pickle.dump(state, fh)

    def load_model(self, path: str, filename: str) -> None:
        """A file `save_model` wrote. One of an older version (the bare regressor, no window
        shape) loads too: it predicts on flattened windows, and `get_feature_importance`
        takes one name per flattened column until time_steps and n_features are set."""
        from sklearn.ensemble import RandomForestRegressor

        file = Path(path) / filename
        with file.open("rb") as fh:
            state = pickle.load(fh)
        if isinstance(state, dict) and state.get("format") == SAVE_FORMAT:
            model, steps, feats = state["model"], state["time_steps"], state["n_features"]
        else:
            model, steps, feats = state, 0, 0
        if not isinstance(model, RandomForestRegressor):
            raise ValueError(
                f"{file}: not a RandomForestModel file (it holds a {type(state).__name__}); "
                "give a file RandomForestModel.save_model wrote"
            )
        self.model, self.time_steps, self.n_features = model, int(steps), int(feats)
