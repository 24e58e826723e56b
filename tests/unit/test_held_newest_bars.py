"""The live feed's rule for a newest bar that jumps beyond `max_spike` (feeds/suspect.py),
as a property over random price paths with one-bar spikes and lasting gaps, daily and hourly
bars, and lookbacks from 1 bar (the held bar must be judged by the next answer) to 5 (whose
windows' start slides past the gaps: the window's first bar is judged with the bar before
it, not as a spike against the two after it): a bar the feed serves (marked, traded) is
never one a later answer drops or restates, and with repair "spike" the bars served and
stored make exactly the history a backtest of the rows holds."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.core.errors import DataError, RetryableError
from tradingd.feeds.validate import validate_frame
from tradingd.feeds.vendor import Validation, VendorFeed, combine, naive_utc, parse_interval

FIRST = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday; every day is a bar here
WARM = 4  # bars before the first live one


class RowsSource:
    """A BarSource over fixed raw rows of one symbol, validated as the vendor clients do."""

    name = "rows"

    def __init__(self, raw: pd.DataFrame, repair: tuple[str, ...]) -> None:
        self.raw = raw
        self.validation = Validation(repair=repair, max_gap_days=30)
        self.caller = SimpleNamespace(redact=str, status=lambda: {"ok": True})

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def fetch(self, symbols: Any, interval: Any, start: datetime, end: datetime, **_: Any):
        t = self.raw["time"]
        part = self.raw[(t >= naive_utc(start)) & (t <= naive_utc(end))]
        return combine(self.name, {"AAA": part}, self.validation, parse_interval(interval))

    def status(self) -> dict[str, Any]:
        return {"ok": True}


def raw_rows(
    moves: list[float], events: list[tuple[str, float]], interval: str = "1d"
) -> pd.DataFrame:
    """Daily (or hourly: `interval` "60m") bars of AAA, every day (hour) a bar: a walk of
    `moves`, each bar with its event: ("", 1) nothing,
    ("spike", k) this bar alone at k times, ("gap", k) this bar and every later one."""
    level, gap = 100.0, 1.0
    closes = []
    for move, (kind, k) in zip(moves, events, strict=True):
        level *= 1.0 + move
        if kind == "gap":
            gap *= k
        # Six significant figures, not 4 decimals: gaps of 1/30 compound below 0.00005, and
        # a close rounded to 0 is a bad row of another kind (non_positive), not a jump.
        closes.append(float(f"{level * gap * (k if kind == 'spike' else 1.0):.6g}"))
    c = np.array(closes)
    return pd.DataFrame(
        {
            "time": pd.date_range(
                naive_utc(FIRST), periods=len(c), freq="D" if interval == "1d" else "h"
            ),
            "open": c,
            "high": c,
            "low": c,
            "close": c,
            "volume": 1000.0,
            "split": 1.0,
            "dividend": 0.0,
        }
    )


async def live(
    raw: pd.DataFrame, repair: tuple[str, ...], interval: str = "1d", lookback: int = 5
) -> tuple[dict, dict, set]:
    """Every bar from the WARM-th on, as the live feed serves it: {time: close} of the bars
    served, {time: close} of the bars stored late, and the bars that a later answer dropped
    (`feed.row_dropped`) or said restated (`data.restated`)."""
    now = [FIRST]
    feed = VendorFeed(
        RowsSource(raw, repair), ["AAA"], interval, lookback_bars=lookback, clock=lambda: now[0]
    )
    step = parse_interval(interval).delta
    served: dict[pd.Timestamp, float] = {}
    stored: dict[pd.Timestamp, float] = {}
    changed: set[pd.Timestamp] = set()
    times = list(raw["time"])
    for i in range(WARM, len(times)):
        t = times[i].to_pydatetime().replace(tzinfo=UTC)
        now[0] = t + step
        with capture_logs() as logs:
            try:
                bar = await feed.bars(t)
            except RetryableError:  # more bad rows than an answer may drop: none served
                continue
        assert bar is not None
        changed |= {pd.Timestamp(e["row"]) for e in logs if e["event"] == "feed.row_dropped"}
        changed |= {pd.Timestamp(e["bar"]) for e in logs if e["event"] == "data.restated"}
        if bar.valid[0]:
            served[times[i]] = float(bar.close[0])
        for late in feed.take_late_bars():
            stored[naive_utc(late.time)] = float(late.close[0])
    return served, stored, changed


EVENTS = st.one_of(
    st.just(("", 1.0)),
    st.tuples(st.sampled_from(["spike", "gap"]), st.sampled_from([12.0, 1 / 12, 30.0, 1 / 30])),
)


@st.composite
def paths(draw: st.DrawFn) -> tuple[pd.DataFrame, str, int]:
    """A path, its interval and the feed's lookback: long enough for the window's start to
    slide past an early gap (a daily window of 5 bars is 11 days)."""
    interval = draw(st.sampled_from(["1d", "60m"]))
    lookback = draw(st.sampled_from([1, 2, 5]))
    n = draw(st.integers(WARM + 3, 24))
    moves = draw(st.lists(st.floats(-0.05, 0.05), min_size=n, max_size=n))
    events = [("", 1.0)] * WARM + draw(st.lists(EVENTS, min_size=n - WARM, max_size=n - WARM))
    return raw_rows(moves, events, interval), interval, lookback


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths())
async def test_no_served_bar_is_later_dropped_or_repaired(
    path: tuple[pd.DataFrame, str, int],
) -> None:
    raw, interval, lookback = path
    served, stored, changed = await live(raw, ("spike",), interval, lookback)
    assert not served.keys() & changed, "a bar served was restated later"
    backtest = validate_frame(  # hourly labels are UTC instants, as the feed reads them
        raw, source="bt", symbol="AAA", repair="spike", max_gap_days=30, timezone="UTC"
    )
    want = dict(zip(backtest["time"], backtest["close"], strict=True))
    for when, close in served.items():
        assert close == want[when], f"served {when} at {close}, the backtest holds {want[when]}"
    # Every bar but the newest (not judged yet) is in the history as the backtest holds it.
    assert not served.keys() & stored.keys()
    history = served | stored
    for when in raw["time"].iloc[WARM:-1]:
        assert history.get(when) == want[when], when


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths())
async def test_strict_no_served_bar_is_later_dropped(path: tuple[pd.DataFrame, str, int]) -> None:
    """Strict (no repairs): the next bar's answer drops a reversed spike; never one served,
    also once a later window starts at it (the bar before a gap)."""
    raw, interval, lookback = path
    served, stored, dropped = await live(raw, (), interval, lookback)
    assert not served.keys() & dropped
    assert not served.keys() & stored.keys()


def test_a_split_that_explains_the_move_is_no_jump() -> None:
    """A 1-for-20 reverse split multiplies the price by 20; a 2-for-1 with the raw price of
    the old shares is a jump (the coefficient does not explain it). Only the newest bar is
    named, and only with `open_end`."""
    from tradingd.feeds.suspect import newest_jumps

    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04"] * 2),
            "symbol": ["A"] * 3 + ["B"] * 3,
            "open": [10.0, 10.0, 200.0] * 2,
            "high": [10.0, 10.0, 200.0] * 2,
            "low": [10.0, 10.0, 200.0] * 2,
            "close": [10.0, 10.0, 200.0] * 2,
            "volume": 1.0,
            "split": [1.0, 1.0, 0.05, 1.0, 1.0, 2.0],
            "dividend": 0.0,
        }
    )
    out = validate_frame(frame, source="t", symbol=None, open_end=True)
    assert newest_jumps(out).tolist()[:5] == [pytest.approx(np.nan, nan_ok=True)] * 5
    assert newest_jumps(out)[5] == 5.0  # the previous close in the bar's share basis
    assert not np.isfinite(
        newest_jumps(validate_frame(frame, source="t", symbol=None, open_end=True, max_spike=0))
    ).any()
    with pytest.raises(DataError, match="spike"):  # without open_end the newest is judged
        validate_frame(frame, source="t", symbol=None)


def test_the_first_bar_of_an_open_start_answer_is_a_neighbour_only() -> None:
    """The bar before a 10x gap, first in an answer, is 10x from both bars after it: judged
    with those only it is a spike; with `open_start` (a live answer's window) it is not
    judged, and the bar after it is judged with it, as a backtest of the whole history
    judges both."""
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]),
            "open": [10.0, 120.0, 121.0, 122.0],
            "high": [10.0, 120.0, 121.0, 122.0],
            "low": [10.0, 120.0, 121.0, 122.0],
            "close": [10.0, 120.0, 121.0, 122.0],
            "volume": 1.0,
            "split": 1.0,
            "dividend": 0.0,
        }
    )
    with pytest.raises(DataError, match="spike"):
        validate_frame(frame, source="t", symbol="A", open_end=True)
    out = validate_frame(frame, source="t", symbol="A", open_end=True, open_start=True)
    assert out["close"].tolist() == [10.0, 120.0, 121.0, 122.0]
    spike = frame.assign(**{c: [10.0, 120.0, 10.5, 10.6] for c in ("open", "high", "low", "close")})
    with pytest.raises(DataError, match="spike"):  # the second bar: both neighbours
        validate_frame(spike, source="t", symbol="A", open_end=True, open_start=True)
