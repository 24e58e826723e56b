"""The specification facades refuse out-of-range inputs as their siblings do, rather than
computing with them."""

from __future__ import annotations

import math

import pytest

from tradingd.strategy_api import PositionSizer, SignalGenerator


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 5.0, 0.1), r"ml_confidence must be in \[0, 1\].*5\.0"),  # was (1, 3.04)
        ((1, -0.2, 0.1), r"ml_confidence must be in \[0, 1\]"),
        ((1, 0.7, 50.0), r"factor_score must be in \[-1, 1\].*50\.0"),
        ((1, 0.7, -1.5), r"factor_score must be in \[-1, 1\]"),
        ((1, 0.7, math.inf), r"factor_score must be in \[-1, 1\]"),
        ((1, "0.7", 0.1), r"ml_confidence must be a number"),
        ((1, 0.7, "0.1"), r"factor_score must be a number"),
    ],
)
def test_combine_signals_refuses_out_of_range_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        SignalGenerator().combine_signals(*args)


def test_combine_signals_keeps_no_view_and_range_ends():
    sg = SignalGenerator()
    assert sg.combine_signals(None, None, 0.25) == (1, 0.25)
    assert sg.combine_signals(1, math.nan, 0.25) == (1, 0.25)
    assert sg.combine_signals(1, 0.7, math.nan) == (1, pytest.approx(0.7))
    assert sg.combine_signals(-1, 1.0, -1.0) == (-1, pytest.approx(-1.0))


def test_kelly_criterion_names_a_zero_or_bad_argument():
    ps = PositionSizer()
    with pytest.raises(ValueError, match=r"avg_win_loss_ratio must be a finite positive"):
        ps.calculate_kelly_criterion(0.5, 0)  # was -inf
    with pytest.raises(ValueError, match=r"avg_win_loss_ratio"):
        ps.calculate_kelly_criterion(0.5, -1.0)
    with pytest.raises(ValueError, match=r"win_rate must be in \[0, 1\]"):
        ps.calculate_kelly_criterion(1.2, 1.5)
    with pytest.raises(ValueError, match=r"win_rate must be a number"):
        ps.calculate_kelly_criterion("0.5", 1.5)
    assert ps.calculate_kelly_criterion(0.55, 1.5) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("confidence", "match"),
    [
        (1.5, r"signal_confidence must be in \[-1, 1\].*1\.5"),
        (-1.01, r"signal_confidence must be in \[-1, 1\]"),
        ("0.7", r"signal_confidence must be a number"),
        (math.inf, r"signal_confidence must be in \[-1, 1\]"),
    ],
)
def test_position_size_refuses_a_confidence_out_of_range(confidence, match):
    with pytest.raises(ValueError, match=match):
        PositionSizer().get_position_size(confidence, 0.25, 100_000.0, 50.0)


def test_position_size_refuses_a_volatility_given_as_text_and_keeps_nan():
    ps = PositionSizer()
    with pytest.raises(ValueError, match=r"asset_volatility must be a number"):
        ps.get_position_size(0.6, "0.25", 100_000.0, 50.0)
    with pytest.raises(ValueError, match=r"avg_win_loss_ratio"):
        ps.get_position_size(0.6, 0.25, 100_000.0, 50.0, win_rate=0.5, avg_win_loss_ratio=0)
    assert ps.get_position_size(math.nan, 0.25, 100_000.0, 50.0) == (0.0, 0.0)
    assert ps.get_position_size(0.8, math.nan, 100_000.0, 50.0) == (0.0, 0.0)
    assert ps.get_position_size(0.6, 0.25, 100_000.0, 50.0) == (90.0, pytest.approx(4_500.0))
