"""The held-out test split of `tradingd train` and the retrain gate that judges it.

One validation set early-stopped the CNN, calibrated the confidence, made the card's metrics
and decided whether `tradingd retrain` published: metrics measured on the windows that tuned
the model. The test split is carved out of the end of the validation span (purged by
`horizon` bars) and tunes nothing; the gate judges it, and falls back to the validation
metrics only for a card trained before it existed, saying so. No TensorFlow here: the
split is checked on hand-made windows and the gate on edited copies of the shipped card.
"""

from __future__ import annotations

import json
import math
import shutil
import types

import numpy as np
import pytest
import tradingd_models.retrain as rt
from structlog.testing import capture_logs
from tradingd_models.config import ModelConfig

from tradingd.config import Config, build
from tradingd.core.errors import ConfigError
from tradingd.inference.onnx import ModelCard

# ----------------------------------------------------------------------------- the split


def windows(bars: list[int], n_bars: int = 20) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """prepare_ml_data's output as it would be for validation windows ending at `bars`
    (each for symbols 0 and 1, in time then symbol order) and 4 training windows."""
    times = np.arange("2020-01-01", n_bars, dtype="datetime64[D]").astype("datetime64[ns]")
    ends = np.repeat(np.asarray(bars, dtype=np.int64), 2)
    n = len(ends)
    data = {
        "x_train": np.zeros((4, 3, 1), np.float32),
        "y_train": np.arange(4, dtype=np.float32),
        "t_train": times[[0, 0, 1, 1]],
        "symbol_train": np.array([0, 1, 0, 1]),
        "x_val": np.arange(n, dtype=np.float32).reshape(n, 1, 1).repeat(3, axis=1),
        "y_val": np.arange(n, dtype=np.float32),
        "t_val": times[ends],
        "symbol_val": np.tile([0, 1], len(bars)),
    }
    return data, times


@pytest.mark.parametrize(
    ("bars", "share", "horizon", "val_bars", "test_bars"),
    [
        # 10 validation bars, the last half tested: bars 15..19; 13 and 14 purged, their
        # 2-bar targets reaching bars 15 and 16
        (list(range(10, 20)), 0.5, 2, [10, 11, 12], [15, 16, 17, 18, 19]),
        # the last 30%: bars 17..19, bar 16 purged (a 1-bar target)
        (list(range(10, 20)), 0.3, 1, [10, 11, 12, 13, 14, 15], [17, 18, 19]),
        # bars without windows (14, 15): the share counts the bars that have windows, the
        # purge the data's bars: bar 13's 2-bar target is bar 15, before the test's first
        # bar 16, so nothing is purged
        ([10, 11, 12, 13, 16, 17, 18, 19], 0.5, 2, [10, 11, 12, 13], [16, 17, 18, 19]),
    ],
)
def test_the_test_windows_are_the_validation_spans_end_after_a_purge(
    bars, share, horizon, val_bars, test_bars
):
    from tradingd_models.training import hold_out_test

    data, times = windows(bars)
    out = hold_out_test(data, times, share, horizon)
    assert list(np.unique(out["t_val"])) == list(times[val_bars])
    assert list(np.unique(out["t_test"])) == list(times[test_bars])
    # both symbols' windows of each bar, with their own targets and inputs
    assert len(out["y_val"]) == 2 * len(val_bars) and len(out["y_test"]) == 2 * len(test_bars)
    position = {b: i for i, b in enumerate(bars)}
    want_test = [2 * position[b] + s for b in test_bars for s in (0, 1)]
    assert out["y_test"].tolist() == want_test
    assert out["x_test"][:, 0, 0].tolist() == want_test
    assert out["symbol_test"].tolist() == [0, 1] * len(test_bars)
    # no validation label reaches a test bar
    last_val = int(np.searchsorted(times, out["t_val"].max()))
    assert last_val + horizon < int(np.searchsorted(times, out["t_test"].min()))
    # the training windows are as they were
    for k in ("x_train", "y_train", "t_train", "symbol_train"):
        assert out[k] is data[k]


def test_no_validation_windows_give_no_test_windows():
    from tradingd_models.training import hold_out_test

    data, times = windows([])
    out = hold_out_test(data, times, 0.5, 1)
    assert len(out["y_val"]) == len(out["y_test"]) == 0


@pytest.mark.parametrize("share", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_the_test_share_must_leave_both_splits(share):
    with pytest.raises(ValueError, match=r"test_share_of_validation must be in \(0, 1\)"):
        ModelConfig(test_share_of_validation=share)
    # as a config file's key (NaN is refused before, as any key's)
    with pytest.raises(ConfigError, match=r"^model[:.] ?test_share_of_validation"):
        build(ModelConfig, {"test_share_of_validation": share}, "model")


def test_min_test_windows_is_checked_as_the_other_minimums():
    with pytest.raises(ValueError, match="min_test_windows must be >= 1, got 0"):
        ModelConfig(min_test_windows=0)
    assert ModelConfig().min_test_windows == 50


# ----------------------------------------------------------------------------- the gate

POLICY = rt.RetrainPolicy(min_directional_accuracy=0.5, max_mse_ratio=1.05)


def split(da: float, mse_ratio: float) -> dict[str, dict[str, float]]:
    """A split's metrics as a card has them: the ensemble's and the zero forecast's."""
    zero = 1e-4
    return {
        "ensemble": {"mse": mse_ratio * zero, "directional_accuracy": da, "ic": 0.0, "n": 100},
        "zero": {"mse": zero, "directional_accuracy": math.nan, "ic": math.nan, "n": 100},
    }


PASSES, FAILS = split(0.56, 0.98), split(0.44, 0.98)
WORSE_THAN_ZERO = split(0.56, 1.2)


@pytest.mark.parametrize(
    ("validation", "test", "ok", "said"),
    [
        (PASSES, FAILS, False, "test split: directional accuracy 0.4400 below the floor"),
        (PASSES, WORSE_THAN_ZERO, False, "test split: MSE 1.200x the zero forecast's"),
        (FAILS, PASSES, True, "test split: directional accuracy 0.5600"),
    ],
)
def test_the_gate_judges_the_test_split(validation, test, ok, said):
    card = {"model_version": "v", "metrics": {"validation": validation, "test": test}}
    with capture_logs() as logs:
        passed, reason = rt.gate(card, POLICY)
    assert (passed, reason.startswith(said)) == (ok, True), reason
    assert not [e for e in logs if e["event"] == "model.retrain.no_test_split"]


def test_a_card_without_a_test_split_is_judged_on_validation_said_so():
    card = {"model_version": "old", "metrics": {"validation": PASSES}}
    with capture_logs() as logs:
        passed, reason = rt.gate(card, POLICY)
    assert passed
    assert reason.startswith("validation split (the card has no test split")
    said = [e for e in logs if e["event"] == "model.retrain.no_test_split"]
    assert len(said) == 1 and said[0]["judged_on"] == "validation"
    assert said[0]["log_level"] == "warning" and said[0]["version"] == "old"


def shipped_pair_trainer(metrics: dict[str, object] | None):
    """A stand-in for `train`: the shipped pair copied into the staging folder with its
    card's metrics replaced by `metrics` (None: its test split removed, a card as every
    training before the split wrote it)."""
    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    def train(config, panel, out, model_config, log, **kw):
        for f in default_model_dir().iterdir():
            shutil.copy(f, out / f.name)
        card = json.loads((out / "card.json").read_text())
        card["model_version"] = "candidate"
        if metrics is not None:
            card["metrics"] = {**card["metrics"], **metrics}
        else:
            card["metrics"].pop("test", None)
            card.pop("test_range", None)
        (out / "card.json").write_text(json.dumps(card))
        return card

    return train


@pytest.mark.parametrize(
    ("validation", "test", "published"),
    [(PASSES, FAILS, False), (FAILS, PASSES, True)],
)
def test_retrain_publishes_on_the_test_metrics(tmp_path, monkeypatch, validation, test, published):
    monkeypatch.setattr(rt, "train", shipped_pair_trainer({"validation": validation, "test": test}))
    root = tmp_path / "m"
    with capture_logs() as logs:
        out = rt.retrain(Config(), types.SimpleNamespace(times=()), root=root)  # type: ignore[arg-type]
    assert out.published is published
    assert out.judged_on == "test" and out.metrics == test
    assert out.reason.startswith("test split: ")
    assert rt.current_version(root) == ("candidate" if published else None)
    event = "model.retrain.published" if published else "model.retrain.rejected"
    [line] = [e for e in logs if e["event"] == event]
    assert line["judged_on"] == "test" and line["metrics"] == test
    if published:  # a card with the test split is one the daemon loads and serves
        assert ModelCard.load(root / "current").version == "candidate"


def test_an_old_card_still_loads_and_retrain_says_it_judged_validation(tmp_path, monkeypatch):
    """A card trained before the test split (the shipped one was, until it was retrained):
    it loads as it did, and a gate given such a card judges its validation metrics, saying
    so in the answer and the log."""
    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    shipped = ModelCard.load(default_model_dir())
    monkeypatch.setattr(rt, "train", shipped_pair_trainer(None))
    # any validation figures pass: the test is of which split is judged, not of the model
    policy = rt.RetrainPolicy(min_directional_accuracy=0.0, max_mse_ratio=1e9)
    root = tmp_path / "m"
    with capture_logs() as logs:
        out = rt.retrain(Config(), types.SimpleNamespace(times=()), root=root, policy=policy)  # type: ignore[arg-type]
    assert out.published and out.judged_on == "validation"
    assert out.metrics == shipped.data["metrics"]["validation"]
    assert out.reason.startswith("validation split (the card has no test split")
    assert [e["judged_on"] for e in logs if e["event"] == "model.retrain.no_test_split"] == [
        "validation"
    ]
    assert ModelCard.load(root / "current").version == "candidate"


def test_training_data_spaced_as_no_run_replays_is_refused_before_any_model(tmp_path):
    """The card records the data's bar length (`bar`): data 10 minutes apart has none a run
    can serve it on (a backtest of it is refused the same way), so `tradingd train` names
    the spacing before it builds anything."""
    import dataclasses

    from conftest import make_panel
    from tradingd_models.training import train

    panel = make_panel(n_bars=300, split_at=None)
    tens = np.datetime64("2024-01-08T14:30") + np.arange(300) * np.timedelta64(10, "m")
    with pytest.raises(ConfigError, match="training data: the data's bars are 10 minutes apart"):
        train(Config(), dataclasses.replace(panel, times=tens), tmp_path / "m", log=print)
    assert not (tmp_path / "m").exists()
