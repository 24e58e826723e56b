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


def test_the_conversion_is_made_once_and_each_caller_gets_its_own_list() -> None:
    """A backtest's set-up asks for the times five times: one conversion serves them all, and
    a caller that changes its list changes nobody else's; the rows by time are one shared
    mapping. A pickled panel (a parallel sweep's worker) carries neither."""
    import pickle

    stored = np.array(["2020-01-02", "2020-01-03", "2020-01-06"], dtype="datetime64[ns]")
    empty = np.zeros((3, 1))
    panel = Panel(stored, ("A",), *(empty for _ in FIELDS))
    calls = []
    real = Panel._datetimes

    def counted(self):
        calls.append(1)
        return real(self)

    Panel._datetimes = counted
    try:
        first = panel.datetimes()
        first.append("changed")
        second = panel.datetimes()
        rows = panel.time_rows()
        copy = pickle.loads(pickle.dumps(panel))
        assert "_datetimes" not in copy.__dict__ and "_time_rows" not in copy.__dict__
        assert copy.datetimes() == second
    finally:
        Panel._datetimes = real
    assert len(calls) == 2  # the panel's one conversion, and the copy's own
    assert second == [datetime(2020, 1, d, tzinfo=UTC) for d in (2, 3, 6)]
    assert rows == {t: i for i, t in enumerate(second)} and panel.time_rows() is rows
