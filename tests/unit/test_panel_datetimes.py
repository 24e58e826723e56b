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
