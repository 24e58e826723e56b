"""`_builds_by_bar`: which process start (`run_builds`) decided which bar."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.replay_check import BuildSpan, _build_of, _builds_by_bar

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def _reference(times, rows, differing):  # type: ignore[no-untyped-def]
    """The scan of every start per bar that `_builds_by_bar` replaced (16dba53)."""
    starts = sorted(rows, key=lambda r: r["started_at"])
    spans: list[BuildSpan] = []
    owner: object = object()
    for t in times:
        row = None
        for r in starts:
            if r["resumed_after"] is None or r["resumed_after"] < t:
                row = r
        if row is not owner:
            owner = row
            build = None if row is None else _build_of(row)
            spans.append(BuildSpan(build, t, t))
        span = spans[-1]
        span.last, span.bars = t, span.bars + 1
        span.differing += t in differing
    return spans


def _row(n: int, started: Any, resumed: Any, version: str | None = None) -> dict[str, Any]:
    return {
        "started_at": started,
        "resumed_after": resumed,
        "version": version or f"0.{n}",
        "source_commit": f"{n:040x}",
        "uncommitted_changes": None if n % 3 == 0 else n % 2,
    }


def _minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


@settings(max_examples=300, deadline=None)
@given(
    bars=st.lists(st.integers(0, 60), max_size=40, unique=True).map(sorted),
    starts=st.lists(
        st.tuples(st.integers(0, 8), st.none() | st.integers(-2, 62), st.booleans()), max_size=8
    ),
    differing=st.sets(st.integers(0, 60)),
)
def test_each_bar_goes_to_the_same_start_as_the_scan_did(bars, starts, differing):
    # Ties in start time, starts without resumed_after, out-of-order resumes (a start that
    # resumed from an earlier bar), and two starts of one build (same version: still two spans).
    times = [_minute(i) for i in bars]
    rows = [
        _row(n, _minute(s), None if r is None else _minute(r), "same" if dup else None)
        for n, (s, r, dup) in enumerate(starts)
    ]
    diff = {_minute(i) for i in differing}
    assert _builds_by_bar(times, rows, diff) == _reference(times, rows, diff)


@functools.total_ordering
class _Counted:
    """A bar time that counts the comparisons made with it."""

    seen = 0

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Counted) and self.v == other.v

    def __lt__(self, other: _Counted) -> bool:
        _Counted.seen += 1
        return self.v < other.v

    def __hash__(self) -> int:
        return hash(self.v)


def test_a_long_run_with_many_starts_is_not_bars_times_starts():
    # A year of minute bars against hundreds of restarts (a crash loop) was tens of millions
    # of comparisons; each bar now bisects the starts.
    n_bars, n_starts, every = 20_000, 400, 50
    times = [_Counted(i) for i in range(n_bars)]
    rows = [_row(k, k, None if k == 0 else _Counted(k * every - 1)) for k in range(n_starts)]
    _Counted.seen = 0
    spans = _builds_by_bar(times, rows, set())  # type: ignore[arg-type]
    assert _Counted.seen < 30 * n_bars, _Counted.seen  # the scan made n_bars * n_starts
    assert [s.build.version if s.build else None for s in spans] == [
        f"0.{k}" for k in range(n_starts)
    ]
    assert [s.bars for s in spans] == [every] * (n_starts - 1) + [n_bars - every * (n_starts - 1)]
