"""`nan_to_zero` is `np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)`: the same values
(signs of zero included), float64, and a new array the caller may write into."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tradingd_plugins.risk.finite import nan_to_zero

_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-308, -5.0, 0.05]),
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        arrays(np.float64, st.integers(0, 40), elements=_FLOATS),
        arrays(np.float32, st.integers(0, 12), elements=st.floats(width=32)),
        arrays(np.int64, st.integers(0, 12)),
        arrays(np.bool_, st.integers(0, 12)),
    ),
    st.booleans(),
)
def test_the_same_as_nan_to_num(values: np.ndarray, as_list: bool) -> None:
    given_values = values.tolist() if as_list else values
    expected = np.nan_to_num(np.asarray(given_values, dtype=np.float64), nan=0.0)
    got = nan_to_zero(given_values)
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))
    if isinstance(given_values, np.ndarray):
        assert not np.shares_memory(got, given_values)  # the caller may write into it


def test_a_single_value_gives_what_nan_to_num_gives() -> None:
    for value in (1.5, -0.0, np.nan, np.inf):
        got, expected = nan_to_zero(value), np.nan_to_num(np.asarray(value, np.float64), nan=0.0)
        assert type(got) is type(expected) and np.array_equal(got, expected)
