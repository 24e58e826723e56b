"""`app._utc` (run.start, run.end as UTC datetimes) parses ISO 8601 with the standard
library: the same instants, and the same tzinfo, as pandas' parser gave before, which it
still uses for any other text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.app import _utc


def _by_pandas(text: str) -> datetime:
    ts = pd.Timestamp(text)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


offsets = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    offsets,
    st.sampled_from(["date", "seconds", "micros", "Z"]),
)
def test_iso_times_are_the_instants_pandas_gave(t: datetime, tz, form: str) -> None:
    if form == "date":
        text = t.date().isoformat()
    elif form == "Z":
        text = t.replace(microsecond=0).isoformat() + "Z"
    else:
        t = t.replace(tzinfo=tz)
        text = t.isoformat(timespec="seconds" if form == "seconds" else "microseconds")
    got, want = _utc(text), _by_pandas(text)
    assert got == want and got.tzinfo is want.tzinfo is UTC, text


def test_other_text_still_goes_to_pandas() -> None:
    """Not ISO 8601 (config refuses it for run.start, but a caller may pass it)."""
    assert _utc("June 1, 2017") == datetime(2017, 6, 1, tzinfo=UTC)
