"""core/arrays.py: numpy's C functions answer as numpy's public ones do."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tradingd.core import arrays

values = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=40),
)


@given(values)
def test_count_nonzero_is_numpys(a):
    got, want = arrays.count_nonzero(a), np.count_nonzero(a)
    assert got == want and type(got) is type(want)


@given(st.lists(st.floats(allow_nan=True), max_size=30))
def test_count_nonzero_counts_nan_and_takes_lists(xs):
    a = np.array(xs, dtype=np.float64)
    assert arrays.count_nonzero(a) == sum(1 for x in xs if x != 0) == np.count_nonzero(a)
    assert arrays.count_nonzero(xs) == np.count_nonzero(xs)


def test_they_are_numpys_c_functions_not_the_python_wrappers():
    # The point of the module (issue 12): where numpy has it, the wrapper is skipped.
    assert arrays.count_nonzero is not np.count_nonzero
    for fn in (arrays.count_nonzero, arrays.copyto, arrays.dot, arrays.where, arrays.putmask):
        assert type(fn).__name__ == "builtin_function_or_method"
        assert not hasattr(fn, "_implementation")  # np.copyto & co. are dispatchers around it


rows = hnp.arrays(np.float64, st.integers(0, 40), elements=st.floats(allow_nan=True, width=64))


@given(st.data())
def test_copyto_dot_and_where_are_numpys(data):
    a = data.draw(rows)
    b = data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(-1e6, 1e6)))
    mask = data.draw(hnp.arrays(np.bool_, a.shape))
    got, want = b.copy(), b.copy()
    arrays.copyto(got, a, where=mask)
    np.copyto(want, a, where=mask)
    np.testing.assert_array_equal(got, want)
    arrays.copyto(got, 0.0, where=mask)
    np.copyto(want, 0.0, where=mask)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(arrays.where(mask, a, np.nan), np.where(mask, a, np.nan))
    with np.errstate(all="ignore"):  # NaN and overflow are part of the draw
        assert np.array_equal(arrays.dot(a, b), np.dot(a, b), equal_nan=True)


@given(st.data())
def test_putmask_is_copyto_where(data):
    a = data.draw(rows)
    mark = data.draw(hnp.arrays(np.float64, a.shape, elements=st.floats(allow_nan=True)))
    valid = a == a
    got, want = mark.copy(), mark.copy()
    arrays.putmask(got, valid, a)
    np.copyto(want, a, where=valid)
    np.testing.assert_array_equal(got, want)


@given(rows, st.floats(allow_nan=True, width=64))
def test_a_0d_operand_answers_as_the_python_float_for_float64_rows(a, c):
    """`scalar(c)` stands in for `c` beside a float64 row: the same comparisons and the same
    quotients, bit for bit (NaN where numpy gives NaN)."""
    s = arrays.scalar(c)
    assert s.shape == () and s.dtype == np.float64 and not s.flags.writeable
    assert (a > s).tolist() == (a > c).tolist()
    assert (a != s).tolist() == (a != c).tolist()
    with np.errstate(all="ignore"):
        assert (a / s).tobytes() == (a / c).tobytes()
    assert arrays.where(a > 0, a, s).tobytes() == arrays.where(a > 0, a, c).tobytes()


def test_a_0d_operand_is_not_a_python_float_beside_float32():
    """Why the plugins check for float64 first (NEP 50): beside a float32 row a Python float
    takes float32, a 0-d float64 array makes it float64, and 0.1 compares otherwise."""
    row = np.array([0.1], dtype=np.float32)
    assert not (row > 0.1)[0]
    assert (row > arrays.scalar(0.1))[0]
    assert (row / arrays.scalar(0.2)).dtype == np.float64 != (row / 0.2).dtype
    # Equality with 1 is exact in every float type: the split check needs no dtype check.
    for dt in (np.float16, np.float32, np.float64, np.int64):
        r = np.array([1, 2, 0], dtype=dt)
        assert (r != arrays.scalar(1.0)).tolist() == (r != 1.0).tolist() == [False, True, True]
