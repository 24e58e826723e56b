"""The sizing rule never sizes a position of unknown risk: an infinite (or NaN, zero,
negative) variance gives no vol scalar and no position. An infinite variance was clipped to
`min_vol_scalar` (0.1) and sized: score 0.5, Kelly 0.25 gave a weight of 0.00625."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tradingd_plugins.sizing.kelly_garch import KellyGarchConfig, target_weights, vol_scalar


@pytest.mark.parametrize("s2", [math.inf, -math.inf, math.nan, 0.0, -1e-4])
def test_an_unusable_variance_sizes_nothing(s2):
    c = KellyGarchConfig()
    assert np.isnan(vol_scalar(np.array([s2]), c)[0])
    w = target_weights(np.array([0.5, 0.5]), np.array([s2, 1e-4]), 0.25, c)
    assert w[0] == 0.0 and w[1] > 0.0
    assert target_weights(np.array([0.5]), np.array([1e-4]), 0.25, c)[0] == w[1]
