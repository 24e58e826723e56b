"""The store's records of orders and fills: every field, in the dataclass's order."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.types import Fill, Leg, Order, OrderStatus, OrderType, Side
from tradingd.storage import rows

T0 = datetime(2020, 1, 2, 14, 30, tzinfo=UTC)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_text = st.text(max_size=12)
_times = st.integers(0, 10_000).map(lambda m: T0 + timedelta(minutes=m))

orders = st.builds(
    Order,
    client_order_id=_text,
    symbol=_text,
    side=st.sampled_from(Side),
    quantity=_floats,
    created_at=_times,
    type=st.sampled_from(OrderType),
    limit_price=st.none() | _floats,
    stop_price=st.none() | _floats,
    trail_pct=st.none() | _floats,
    leg=st.sampled_from(Leg),
    parent_id=st.none() | _text,
    oco_group=st.none() | _text,
    status=st.sampled_from(OrderStatus),
    filled_quantity=_floats,
    avg_fill_price=_floats,
    reason=_text,
    updated_at=st.none() | _times,
    bars_open=st.integers(0, 10**6),
    trail_anchor=st.none() | _floats,
)
fills = st.builds(
    Fill,
    fill_id=_text,
    client_order_id=_text,
    symbol=_text,
    side=st.sampled_from(Side),
    quantity=_floats,
    price=_floats,
    commission=_floats,
    slippage=_floats,
    time=_times,
    reference_price=_floats,
)


def _by_getattr(obj: object) -> tuple[object, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.lists(orders, max_size=5), st.lists(fills, max_size=5))
def test_records_are_every_field_in_field_order(os_, fs):
    """The generated getters against getattr over `fields()`: the same objects (identity,
    so NaN and -0.0 count), one tuple per item, in order."""
    for getter, many, items in (
        (rows.ORDER_VALUES, rows.ORDER_RECORDS, os_),
        (rows.FILL_VALUES, rows.FILL_RECORDS, fs),
    ):
        expected = [_by_getattr(x) for x in items]
        for got in ([getter(x) for x in items], many(items)):
            assert len(got) == len(expected)
            for g, e in zip(got, expected, strict=True):
                assert type(g) is tuple and len(g) == len(e)
                assert all(a is b for a, b in zip(g, e, strict=True))


def test_a_record_is_a_snapshot_of_the_order():
    o = Order("cid", "A", Side.BUY, 10.0, T0)
    before = rows.ORDER_VALUES(o)
    o.filled_quantity = 10.0
    o.status = OrderStatus.FILLED
    assert before[rows.ORDER_FIELDS.index("filled_quantity")] == 0.0
    assert before[rows.ORDER_FIELDS.index("status")] is OrderStatus.NEW


def test_getters_take_attribute_names_only():
    with pytest.raises(ValueError, match="not attribute names"):
        rows._getters(("quantity", "x); import os; (y"))


def _block_reference(chunks, enc):  # type: ignore[no-untyped-def]
    """block_rows's rows made one by one from the chunks (the definition)."""
    out = []
    for run_id, t, symbols, idx, cols, tail in chunks:
        for k, i in enumerate(idx.tolist()):
            out.append((run_id, enc(t), symbols[int(i)], *(c.tolist()[k] for c in cols), *tail))
    return out


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "int64", "int32", "float16", "bool", "complex128"]
)
def test_packed_columns_are_plain_arrays_where_they_can_be_and_rows_are_the_same(dtype):
    """A packed batch's indices and columns are standard-library arrays (no numpy needed to
    read them in a writer process) when their type has one of the same size, else they stay
    numpy arrays; either way block_rows makes the rows the chunks hold, value for value
    (NaN, -0.0 and extremes included)."""
    import math
    from array import array

    import numpy as np

    syms = ("AAA", "BBB", "CCC", "DDD")
    t0 = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)
    if np.dtype(dtype).kind in "fc":
        big = np.finfo(dtype).max
        values = np.array([1.5, -0.0, math.nan, big, -7.25, 0.1], dtype=dtype)
    else:
        values = np.array([1, 0, -3, 2**31 - 1, 7, 5] if dtype != "bool" else [1, 0, 1, 1, 0, 0])
        values = values.astype(dtype)
    chunks = []
    for k, idx in enumerate([[0, 2], [1], [0, 1, 3], [3]]):
        ix = np.array(idx, dtype=np.intp)
        col = values[np.arange(len(idx)) + k % 3]
        chunks.append(("r", t0 + timedelta(days=k), syms, ix, (col, ix * 2.0), ("src",)))
    packed = rows.pack_blocks(chunks)
    plain = np.dtype(dtype).char in "bBhHiIlLqQfd"
    assert isinstance(packed.idx, array)
    assert isinstance(packed.cols[0], array) == plain and isinstance(packed.cols[1], array)
    got = rows.block_rows(packed, str)
    want = _block_reference(chunks, str)
    assert len(got) == len(want) == 7
    for g, w in zip(got, want, strict=True):
        assert [type(x) for x in g] == [type(x) for x in w]
        assert [repr(x) for x in g] == [repr(x) for x in w]  # NaN and -0.0 as they are
