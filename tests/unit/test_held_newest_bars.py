"""The live feed's rule for a newest bar that jumps beyond `max_spike` (feeds/suspect.py),
as a property over random price paths with one-bar spikes and lasting gaps, daily and hourly
bars, and lookbacks from 1 bar (the held bar must be judged by the next answer) to 5 (whose
windows' start slides past the gaps: the window's first bar is judged with the bar before
it, not as a spike against the two after it): a bar the feed serves (marked, traded) is
never one a later answer drops or restates, and with repair "spike" the bars served and
stored make exactly the history a backtest of the rows holds; the jump bars carry splits and
dividends, which a held bar's next served bar carries (the book gets all of them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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

FIRST = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday; every weekday (hour) is a bar here
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
    moves: list[float],
    events: list[tuple[str, float]],
    interval: str = "1d",
    actions: list[tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """Daily (or hourly: `interval` "60m") bars of AAA, every weekday (hour) a bar (a
    weekend's daily bar is refused: validate.py's `_check_weekends`): a walk of
    `moves`, each bar with its event: ("", 1) nothing,
    ("spike", k) this bar alone at k times, ("gap", k) this bar and every later one;
    `actions`: each bar's (split, dividend), none by default."""
    level, gap = 100.0, 1.0
    closes = []
    split, dividend = zip(*(actions or [(1.0, 0.0)] * len(moves)), strict=True)
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
                naive_utc(FIRST), periods=len(c), freq="B" if interval == "1d" else "h"
            ),
            "open": c,
            "high": c,
            "low": c,
            "close": c,
            "volume": 1000.0,
            "split": np.array(split, dtype=np.float64),
            "dividend": np.array(dividend, dtype=np.float64),
        }
    )


def gap_with_dividend(n: int) -> tuple[pd.DataFrame, pd.Timestamp]:
    """`n` flat daily bars of AAA whose bar WARM + 2 gaps 12x (and stays) and carries a
    dividend of 5.0: the held bar whose action must reach the book once. (rows, its time)"""
    events = [("", 1.0)] * n
    events[WARM + 2] = ("gap", 12.0)
    raw = raw_rows([0.0] * n, events)
    ex = raw["time"].iat[WARM + 2]
    raw.loc[raw["time"] == ex, "dividend"] = 5.0
    return raw, ex


async def live(
    raw: pd.DataFrame,
    repair: tuple[str, ...],
    interval: str = "1d",
    lookback: int = 5,
    actions: dict | None = None,
) -> tuple[dict, dict, set]:
    """Every bar from the WARM-th on, as the live feed serves it: {time: close} of the bars
    served, {time: close} of the bars stored late, and the bars that a later answer dropped
    (`feed.row_dropped`) or said restated (`data.restated`); `actions` is filled with
    {time: (split, dividend)} of the bars served. A served bar that carried a held bar's
    action is stored again after it as the vendor has it (the same prices): not a late bar."""
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
            if actions is not None:
                actions[times[i]] = (float(bar.split[0]), float(bar.dividend[0]))
        for late in feed.take_late_bars():
            when = naive_utc(late.time)
            if when == times[i] and when in served:  # the carrying bar, as the vendor has it
                assert float(late.close[0]) == served[when]
                continue
            stored[naive_utc(late.time)] = float(late.close[0])
    return served, stored, changed


EVENTS = st.one_of(
    st.just(("", 1.0)),
    st.tuples(st.sampled_from(["spike", "gap"]), st.sampled_from([12.0, 1 / 12, 30.0, 1 / 30])),
)


# A jump bar's corporate action (split, dividend): none, a split, a dividend, both.
ACTIONS = st.sampled_from([(1.0, 0.0), (2.0, 0.0), (0.5, 0.0), (1.0, 1.5), (3.0, 0.25)])


@st.composite
def paths(draw: st.DrawFn) -> tuple[pd.DataFrame, str, int]:
    """A path, its interval and the feed's lookback: long enough for the window's start to
    slide past an early gap (a daily window of 5 bars is 11 days). Spike and gap bars may
    carry a split or a dividend (and a bar after them one too)."""
    interval = draw(st.sampled_from(["1d", "60m"]))
    lookback = draw(st.sampled_from([1, 2, 5]))
    n = draw(st.integers(WARM + 3, 24))
    moves = draw(st.lists(st.floats(-0.05, 0.05), min_size=n, max_size=n))
    events = [("", 1.0)] * WARM + draw(st.lists(EVENTS, min_size=n - WARM, max_size=n - WARM))
    actions = [(1.0, 0.0)] * n
    # An hourly path (at most 24 bars: one or two sessions) has each action on one bar at
    # most: an action goes ex once a session, and a second bar carrying it in the session is
    # refused (validate.py's `_check_session_actions`), by the backtest and the feed alike.
    taken: set[str] = set()
    for i in range(WARM, n):
        if events[i][0] or (events[i - 1][0] and draw(st.booleans())):
            split, dividend = draw(ACTIONS)
            if interval == "60m":
                kinds = {k for k, on in (("split", split != 1.0), ("dividend", dividend > 0)) if on}
                if kinds & taken:
                    continue
                taken |= kinds
            actions[i] = (split, dividend)
    return raw_rows(moves, events, interval, actions), interval, lookback


def booked(actions: list[tuple[float, float]]) -> tuple[float, float]:
    """What one share held over bars with these (split, dividend) becomes, as the engine
    books them (split, then the dividend per post-split share): shares and cash."""
    shares, cash = 1.0, 0.0
    for split, dividend in actions:
        shares *= split
        cash += shares * dividend
    return shares, cash


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths())
async def test_no_served_bar_is_later_dropped_or_repaired(
    path: tuple[pd.DataFrame, str, int],
) -> None:
    raw, interval, lookback = path
    actions: dict[pd.Timestamp, tuple[float, float]] = {}
    served, stored, changed = await live(raw, ("spike",), interval, lookback, actions)
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
    # Every split and dividend through the last bar served reached the book, a held bar's at
    # the next bar served: the shares and cash of one share held, as over the backtest's bars.
    if served:
        last = max(served)
        bt = backtest[(backtest["time"] >= raw["time"].iat[WARM]) & (backtest["time"] <= last)]
        want_booked = booked(list(zip(bt["split"], bt["dividend"], strict=True)))
        got = booked([actions[when] for when in sorted(actions)])
        assert got == pytest.approx(want_booked, rel=1e-9), (got, want_booked)


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


class LateSplit(RowsSource):
    """The vendor posts the split of bar `ex` one answer late (a late split event or adjusted
    table): the answers asked at the bar after it and later have it."""

    def __init__(self, raw: pd.DataFrame, ex: pd.Timestamp, split: float, now: list) -> None:
        super().__init__(raw.assign(split=1.0), ())
        self.late, self.ex, self.split, self.now = raw, ex, split, now

    async def fetch(self, symbols: Any, interval: Any, start: datetime, end: datetime, **_: Any):
        if naive_utc(self.now[0]) > self.ex + pd.Timedelta(days=1):
            self.raw = self.late
        return await super().fetch(symbols, interval, start, end)


async def served_bars(feed: VendorFeed, raw: pd.DataFrame, now: list) -> tuple[list, list, list]:
    """Every bar from the WARM-th on as served: (close, split, dividend) each, the late bars
    taken after each, and the logs."""
    out, late, logs = [], [], []
    for when in raw["time"].iloc[WARM:]:
        t = when.to_pydatetime().replace(tzinfo=UTC)
        now[0] = t + pd.Timedelta(days=1)
        with capture_logs() as said:
            bar = await feed.bars(t)
        logs += said
        out.append((float(bar.close[0]), float(bar.split[0]), float(bar.dividend[0])))
        late += [
            (naive_utc(b.time), float(b.split[0]), float(b.dividend[0]))
            for b in feed.take_late_bars()
        ]
    return out, late, logs


async def test_a_held_gap_bars_dividend_is_paid_at_the_next_bar_served() -> None:
    """A 12x gap bar going ex a 5.0 dividend is held (no bar), confirmed at the next answer:
    its dividend is served with the next bar (it was only on the stored late bar), said; the
    stored bars keep it at its own bar, and the next bar as the vendor has it."""
    raw, ex = gap_with_dividend(8)
    now = [FIRST]
    feed = VendorFeed(RowsSource(raw, ()), ["AAA"], "1d", lookback_bars=5, clock=lambda: now[0])
    out, late, logs = await served_bars(feed, raw, now)
    assert np.isnan(out[2][0])
    assert out[3] == (1200.0, 1.0, 5.0)
    assert sum(d for _, _, d in out if d) == 5.0  # once
    assert late == [(ex, 1.0, 5.0), (raw["time"].iat[WARM + 3], 1.0, 0.0)]
    (said,) = [e for e in logs if e["event"] == "feed.held_action_carried"]
    assert said["symbol"] == "AAA" and said["held_bars"] == [ex.isoformat()]
    assert said["served"] == {"split": 1.0, "dividend": 5.0}


async def test_a_split_posted_an_answer_late_reaches_the_book_and_splits_ahead() -> None:
    """A 1:20 reverse split (the price x20) whose split field comes an answer late: its bar is
    a jump when served, so held; the next answer has the split (which explains the move) and
    keeps the bar: its split is served with the next bar. It was never served: the book kept
    20x the shares marked at 20x the price, and splits_ahead dropped the announced split
    (`split.not_in_bar`). The dividend of a bar after it is in the split's share basis."""
    from datetime import timedelta

    from tradingd.core.types import Split
    from tradingd.engine.splits_ahead import SplitsAhead

    ev = [("", 1.0)] * 8
    ev[WARM + 2] = ("gap", 20.0)
    actions = [(1.0, 0.0)] * 8
    actions[WARM + 2] = (0.05, 0.0)
    actions[WARM + 3] = (1.0, 1.0)
    raw = raw_rows([0.0] * 8, ev, actions=actions)
    ex = raw["time"].iat[WARM + 2]
    now = [FIRST]
    feed = VendorFeed(
        LateSplit(raw, ex, 0.05, now), ["AAA"], "1d", lookback_bars=5, clock=lambda: now[0]
    )
    out, late, logs = await served_bars(feed, raw, now)
    assert out[1][0] == 100.0 and np.isnan(out[2][0])
    assert out[3] == (2000.0, 0.05, 1.0)
    assert booked([(s, d) for _, s, d in out]) == booked(actions[WARM:])
    assert late == [(ex, 0.05, 0.0), (raw["time"].iat[WARM + 3], 1.0, 1.0)]
    assert not [e for e in logs if e["event"] in ("data.revised", "data.late_action")]

    class NoSource:
        async def splits(self, *_: Any) -> list:
            return []

        def close(self) -> None:
            return None

    ahead = SplitsAhead(
        NoSource(), ["AAA"], lambda t: t.date(), lambda t: t.date() + timedelta(days=1)
    )
    ahead.held["AAA"] = Split("AAA", ex.date(), 0.05)
    t_ex, t_next = (
        w.to_pydatetime().replace(tzinfo=UTC) for w in raw["time"].iloc[WARM + 2 : WARM + 4]
    )
    with capture_logs() as said:
        assert ahead.applied(t_ex, np.array([1.0]), np.array([False])) == []  # waits
        done = ahead.applied(t_next, np.array([out[3][1]]), np.array([True]))
    assert done == [(0, Split("AAA", ex.date(), 0.05))]
    assert not [e for e in said if e["event"] == "split.not_in_bar"]


async def test_a_bar_fetched_again_carries_the_held_action_again() -> None:
    """The engine discards a fetched bar (`_fetch_late`: it came after the next session
    opened) and fetches it again (`_recover_missed`), stepping only the second answer: the
    held bar's dividend carried to the first answer is carried by the second too (said at
    info), not lost; the bar after it carries nothing."""
    raw, ex = gap_with_dividend(9)
    now = [FIRST]
    feed = VendorFeed(RowsSource(raw, ()), ["AAA"], "1d", lookback_bars=5, clock=lambda: now[0])
    served = []
    for i in range(WARM, WARM + 5):
        t = raw["time"].iat[i].to_pydatetime().replace(tzinfo=UTC)
        now[0] = t + pd.Timedelta(days=1)
        with capture_logs() as logs:
            bar = await feed.bars(t)
            if i == WARM + 3:
                first, bar = bar, await feed.bars(t)  # discarded, then fetched again
                assert (first.close[0], first.dividend[0]) == (1200.0, 5.0)
                (again,) = [e for e in logs if e["event"] == "feed.held_action_reserved"]
                assert again["log_level"] == "info" and again["held_bars"] == [ex.isoformat()]
        served.append((float(bar.close[0]), float(bar.split[0]), float(bar.dividend[0])))
    assert served[3] == (1200.0, 1.0, 5.0)
    assert served[4] == (1200.0, 1.0, 0.0)


async def test_a_bar_never_stepped_passes_its_carried_action_to_the_next_bar() -> None:
    """The bar a held bar's dividend was carried to is served, then given up by the engine
    (`bar.lost`: a newer bar came before it could be stepped, `Engine._feed_bar_lost`): the
    dividend goes to the symbol's next bar served. Kept only for that bar being served
    again, it was trimmed away and never reached the book, silently."""
    raw, ex = gap_with_dividend(10)
    now = [FIRST]
    feed = VendorFeed(RowsSource(raw, ()), ["AAA"], "1d", lookback_bars=5, clock=lambda: now[0])
    stepped = []
    for i in range(WARM, WARM + 6):
        t = raw["time"].iat[i].to_pydatetime().replace(tzinfo=UTC)
        now[0] = t + pd.Timedelta(days=1)
        with capture_logs() as logs:
            bar = await feed.bars(t)
            if i == WARM + 3:
                assert float(bar.dividend[0]) == 5.0  # carried to it, but it is never stepped
                feed.bar_lost(t)
                (said,) = [e for e in logs if e["event"] == "feed.held_action_carried_on"]
                assert said["held_bars"] == [ex.isoformat()]
                continue
        stepped.append(float(bar.dividend[0]))
    assert sum(stepped) == 5.0  # paid once, at the next bar stepped
    assert stepped[-2:] == [5.0, 0.0]


@pytest.mark.parametrize("warm_to", [2, 3])
async def test_a_restart_before_the_held_bar_is_judged_still_carries_its_action(
    warm_to: int,
) -> None:
    """The process stops after the held bar (stepped as no bar, the checkpoint covers it):
    the checkpoint keeps the feed's held bars (`held_state`, through the store's JSON); the
    restarted feed's warm-up history (to the held bar, or past it) judges the bar as the
    live answer would have, and its dividend is carried to the symbol's next bar served and
    stored at its own bar. Before, the warm-up judged it as any bar, replayed it without
    the book, and the dividend never reached the book, silently."""
    import json

    from tradingd.storage.buffered import to_json

    raw, ex = gap_with_dividend(9)
    now = [FIRST]

    def feed() -> VendorFeed:
        return VendorFeed(RowsSource(raw, ()), ["AAA"], "1d", lookback_bars=5, clock=lambda: now[0])

    def at(i: int) -> datetime:
        return raw["time"].iat[i].to_pydatetime().replace(tzinfo=UTC)

    before = feed()
    for i in range(WARM, WARM + 3):
        now[0] = at(i) + pd.Timedelta(days=1)
        bar = await before.bars(at(i))
    assert np.isnan(bar.close[0])  # held
    state = json.loads(to_json(before.held_state()))

    after = feed()
    after.restore_held(state)
    now[0] = at(WARM + warm_to) + pd.Timedelta(days=1)
    await after.history(at(0), at(WARM + warm_to))  # to the held bar: held again
    after.take_late_bars()
    served = []
    with capture_logs() as logs:
        for i in range(WARM + warm_to + 1, WARM + 5):
            now[0] = at(i) + pd.Timedelta(days=1)
            bar = await after.bars(at(i))
            served.append((float(bar.split[0]), float(bar.dividend[0])))
    assert served[0] == (1.0, 5.0)
    assert sum(d for _, d in served) == 5.0  # once
    (said,) = [e for e in logs if e["event"] == "feed.held_action_carried"]
    assert said["held_bars"] == [ex.isoformat()]


def test_rows_kept_for_an_engine_that_never_takes_them_are_bounded(monkeypatch) -> None:
    """An engine that does not record bars never calls `take_late_bars`: every held bar an
    answer kept added a row for the store for the daemon's life. Bounded in rows (frames of
    one row and of many count alike), the newest kept, what is dropped said."""
    import tradingd.feeds.vendor as vendor

    monkeypatch.setattr(vendor, "_LATE_ROWS_KEPT", 50)
    raw = raw_rows([0.0] * 8, [("", 1.0)] * 8)
    feed = VendorFeed(RowsSource(raw, ()), ["AAA"], "1d", lookback_bars=5)
    with capture_logs() as logs:
        for i in range(200):
            row = raw.iloc[[i % len(raw)]].assign(symbol="AAA")
            feed._keep_judged([row])
        feed._keep_judged([raw.assign(symbol="AAA")])  # one frame of 8 rows
    rows = sum(len(f) for f in feed._late_rows)
    assert 0 < rows <= 50
    assert len(feed._late_rows[-1]) == 8  # the newest kept
    said = [e for e in logs if e["event"] == "feed.late_rows_dropped"]
    assert said and sum(e["rows"] for e in said) == 200 + 8 - rows  # nothing dropped unsaid


async def test_a_held_bar_after_the_checkpoint_is_stepped_by_the_warm_up_not_carried_too() -> None:
    """A warm-up's history holds its newest bar (a 12x gap with a dividend); a stop mid
    catch-up checkpoints an earlier bar with that held bar in the feed's state. The restart
    (a day later) warms up from the checkpoint and steps the gap bar with the book, its
    dividend included: restoring the held bar as well carried the dividend to the first live
    bar, paid twice. Over the restart's warm-up and its live bar it is paid once."""
    import json

    from tradingd.storage.buffered import to_json

    raw, _ = gap_with_dividend(9)
    now = [FIRST]

    def make() -> VendorFeed:
        return VendorFeed(RowsSource(raw, ()), ["AAA"], "1d", lookback_bars=5, clock=lambda: now[0])

    def at(i: int) -> datetime:
        return raw["time"].iat[i].to_pydatetime().replace(tzinfo=UTC)

    before = make()
    now[0] = at(WARM + 2) + timedelta(days=1)
    first = await before.history(at(0), at(WARM + 2))
    assert all(float(first.row(i, t).dividend[0]) == 0.0 for i, t in enumerate(first.datetimes()))
    state = json.loads(to_json(before.held_state()))  # as the checkpoint stores it
    assert state["held"]  # the gap bar, held

    after = make()
    after.restore_held(state, at(WARM + 1))  # the checkpoint's bar: before the held one
    now[0] = at(WARM + 3) + timedelta(days=1)
    warm = await after.history(at(WARM + 2), at(WARM + 3))  # the catch-up after it
    paid = [float(warm.row(i, t).dividend[0]) for i, t in enumerate(warm.datetimes())]
    now[0] = at(WARM + 4) + timedelta(days=1)
    live = await after.bars(at(WARM + 4))
    assert sum(paid) == 5.0
    assert float(live.dividend[0]) == 0.0
