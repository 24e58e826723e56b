"""What `tradingd train` gives the CNN's early stopping: the validation windows, never the
held-out test windows, and the training windows of before the test split. The CNN is a spy
that stops the training once it is handed its data (no TensorFlow, a second)."""

from __future__ import annotations

import numpy as np
import pytest
from cli_runs import Tripwire

from tradingd.app import load_data
from tradingd.config import load_config
from tradingd.features.catalog import resolve_set
from tradingd.features.engineer import compute_batch, prepare_ml_data
from tradingd.feeds.panel import FIELDS, Panel


@pytest.mark.parametrize("horizon", [1, 3])
def test_early_stopping_never_sees_a_test_window(tmp_path, monkeypatch, horizon):
    import tradingd_models.cnn_lstm as cnn_lstm
    from tradingd_models.config import ModelConfig
    from tradingd_models.training import train

    handed: dict[str, np.ndarray] = {}

    class Spy:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def train(self, x_train, y_train, x_val, y_val, progress=None):
            handed.update(y_train=y_train, y_val=y_val)
            raise Tripwire("the CNN was handed its windows")

    monkeypatch.setattr(cnn_lstm, "CNNLSTMModel", Spy)
    config = load_config([], env={})
    full = load_data(config)
    panel = Panel(full.times[-700:], full.symbols, *(getattr(full, f)[-700:] for f in FIELDS))
    share = 0.4
    mc = ModelConfig(horizon=horizon, test_share_of_validation=share)
    said: list[str] = []
    with pytest.raises(Tripwire):
        train(config, panel, tmp_path / "m", mc, log=said.append)

    # The windows of before the split, straight from prepare_ml_data.
    names = resolve_set(config.features.set)
    before = prepare_ml_data(
        compute_batch(panel, names, dtype=np.float32),
        names,
        panel.close,
        panel.split,
        panel.times,
        window=mc.time_steps,
        horizon=horizon,
        validation_fraction=mc.validation_split,
    )
    np.testing.assert_array_equal(handed["y_train"], before["y_train"])  # training as before
    # The validation span's bars, oldest first (2 symbols: 2 windows each); its last
    # 40% are the test's, and the `horizon` bars before them are purged.
    bars = np.unique(before["t_val"])
    first_test = int(len(bars) * (1 - share))
    n_val = 2 * (first_test - horizon)
    n_test = 2 * (len(bars) - first_test)
    seen = handed["y_val"]
    # Early stopping was handed the first validation windows, none of the purged or test ones.
    np.testing.assert_array_equal(seen, before["y_val"][:n_val])
    assert len(seen) + 2 * horizon + n_test == len(before["y_val"])
    assert said[-1].startswith(
        f"windows: {len(before['y_train'])} train, {n_val} validation, {n_test} test"
    )
