"""A fold whose training window holds fewer model windows than the floors says what would
pass in the walk-forward's terms (--train, [walkforward.model] min_*_windows), not "an
earlier run.start", which cannot change a fold's training windows."""

from __future__ import annotations

import pytest
from conftest import make_panel

pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")

from tradingd.analysis.walkforward import WalkForwardAnalyzer
from tradingd.analysis.walkforward_folds import WalkForwardConfig, WalkForwardError
from tradingd.analysis.walkforward_run import rows, split_bars, train_model
from tradingd.config import load_config

MODEL = {
    "time_steps": 5,
    "epochs": 1,
    "min_train_windows": 100,
    "min_validation_windows": 75,
    "min_test_windows": 60,
}


class FloorsPassed(Exception):
    pass


def _train(train: int, tmp_path, monkeypatch, *, fit=None):
    """train_model on a fold's model slice: the model's warm-up, then `train` bars."""
    import tradingd_models.training as training

    if fit is not None:
        monkeypatch.setattr(training, "fit_models", fit)
    config = load_config([], env={})
    wf = WalkForwardConfig(train=train, test=20, step=10, threads=0, model=MODEL)
    panel = make_panel(n_symbols=6, n_bars=400, split_at=None)
    lookback = WalkForwardAnalyzer(config, wf).model_lookback(panel)
    return train_model(config, rows(panel, 0, lookback + train - 1), tmp_path, wf)


def _passes(*a, **k):
    raise FloorsPassed


def test_too_few_windows_names_the_train_length_and_floors_that_pass(tmp_path, monkeypatch):
    with pytest.raises(WalkForwardError) as e:
        _train(100, tmp_path, monkeypatch)
    msg = str(e.value)
    assert "run.start" in msg and "earlier run.start" not in msg
    assert "[walkforward.model] min_train_windows, min_validation_windows" in msg
    assert "min_validation_windows = 54 would pass this fold" in msg
    need = int(msg.split("give --train ")[1].split()[0])
    # the --train it names passes the floors, one bar fewer does not
    with pytest.raises(FloorsPassed):
        _train(need, tmp_path, monkeypatch, fit=_passes)
    with pytest.raises(WalkForwardError, match="too few windows"):
        _train(need - 1, tmp_path, monkeypatch, fit=_passes)


def test_split_bars_is_the_trainings_split():
    """The bundled data's first fold (2 symbols, train 252, horizon 1): 398 training, 48
    validation and 52 test windows."""
    assert split_bars(251, 0.2, 0.5, 1) == [199, 24, 26]
