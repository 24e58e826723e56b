"""EnsemblePredictor refuses predictions and thresholds it cannot combine or judge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tradingd.inference.onnx import EnsemblePredictor
from tradingd.strategy_api import SignalGenerator

E = EnsemblePredictor({"cnn_lstm": 0.6, "random_forest": 0.4}, residual_std=0.01)


def test_predictions_of_unequal_length_are_refused_naming_the_models():
    """[0.1] was broadcast over the other model's two windows: [0.1, 0.16]."""
    with pytest.raises(ValueError, match=r"random_forest have shape \(1,\), those of cnn_lstm"):
        E.combine_predictions({"cnn_lstm": [0.1, 0.2], "random_forest": [0.1]})


def test_a_missing_or_unweighted_model_is_refused_by_name():
    with pytest.raises(ValueError, match=r"missing: random_forest"):
        E.combine_predictions({"cnn_lstm": [0.1]})
    with pytest.raises(ValueError, match=r"not weighted: xgb"):
        E.combine_predictions({"cnn_lstm": [0.1], "random_forest": [0.1], "xgb": [9.0]})


def test_matching_predictions_combine_as_before():
    out = E.combine_predictions({"cnn_lstm": [0.01, -0.02], "random_forest": [0.02, 0.01]})
    np.testing.assert_allclose(out, [0.014, -0.008])
    assert E.combine_predictions({"cnn_lstm": 0.01, "random_forest": 0.02}) == pytest.approx(0.014)


@pytest.mark.parametrize("bad", [0.3, 0.0, 1.0, 1.5, math.nan, "0.6", True])
def test_generate_signal_refuses_a_threshold_outside_the_confidence_range(bad):
    """Confidence is at least 0.5: 0.3 traded every non-zero forecast, as 0.5 does, where
    SignalGenerator and ml_ensemble refuse it."""
    with pytest.raises(ValueError, match=r"threshold must be a confidence in \[0.5, 1\)"):
        E.generate_signal(np.array([0.01]), bad)
    if not isinstance(bad, str | bool) and not (isinstance(bad, float) and math.isnan(bad)):
        with pytest.raises(ValueError, match=r"0.5, 1"):
            SignalGenerator(confidence_threshold=bad)


def test_generate_signal_accepts_the_range_ends():
    signal, _ = E.generate_signal(np.array([0.01, 0.0]), 0.5)
    np.testing.assert_array_equal(signal, [1.0, 0.0])
    signal, _ = E.generate_signal(np.array([0.01]), np.float32(0.99))
    np.testing.assert_array_equal(signal, [0.0])
