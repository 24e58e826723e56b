"""`Panel.datetimes()` is each stored time as a UTC `datetime`, in order: what converting the
times one `pd.Timestamp` at a time gives, microseconds included."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.feeds.panel import FIELDS, Panel


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
        min_size=0,
        max_size=30,
        unique=True,
    )
)
def test_datetimes_are_the_times_as_utc_datetimes(times: list[datetime]) -> None:
    stored = np.array(sorted(times), dtype="datetime64[ns]")
    empty = np.zeros((len(stored), 1))
    panel = Panel(stored, ("A",), *(empty for _ in FIELDS))
    got = panel.datetimes()
    expected = [ts.to_pydatetime() for ts in pd.DatetimeIndex(stored, tz=UTC)]
    assert got == expected == [t.replace(tzinfo=UTC) for t in sorted(times)]
    assert all(type(t) is datetime and t.tzinfo is UTC for t in got)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.integers(-(2**62), 2**62).map(lambda ns: ns - ns % 1000),  # whole microseconds
        min_size=1,
        max_size=20,
        unique=True,
    ),
    st.booleans(),
)
def test_datetimes_before_1970_and_with_nanoseconds_are_what_pandas_gives(ns, nanos) -> None:
    """datetimes() converts by numpy, without pandas: before 1970 too (a negative count of
    nanoseconds); times with nanoseconds, which a datetime cannot hold, go to pandas."""
    stored = np.array(sorted(ns), dtype="int64").view("datetime64[ns]")
    if nanos:
        stored = stored + np.timedelta64(1, "ns")
    empty = np.zeros((len(stored), 1))
    panel = Panel(stored, ("A",), *(empty for _ in FIELDS))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas: "Discarding nonzero nanoseconds"
        expected = pd.DatetimeIndex(stored, tz=UTC).to_pydatetime().tolist()
        got = panel.datetimes()
    assert got == expected
    assert all(type(t) is datetime and t.tzinfo is UTC for t in got)
