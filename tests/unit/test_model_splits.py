"""The held-out test split of `tradingd train` and the retrain gate that judges it.

One validation set early-stopped the CNN, calibrated the confidence, made the card's metrics
and decided whether `tradingd retrain` published: metrics measured on the windows that tuned
the model. The test split is carved out of the end of the validation span (purged by
`horizon` bars) and tunes nothing; the gate judges it, and falls back to the validation
metrics only for a card trained before it existed, saying so. No TensorFlow here: the
split is checked on hand-made windows and the gate on edited copies of the shipped card.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from tradingd_models.config import ModelConfig

from tradingd.config import build
from tradingd.core.errors import ConfigError

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
