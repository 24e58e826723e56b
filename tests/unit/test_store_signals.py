"""The signals table records what changed: decisions, not holds (storage.signals="decisions").

A hold is a target equal to the symbol's current weight (how sizing and risk plugins say "keep
what you have"); it drifts with the price every bar and is no decision. What stays readable:
the target in force at any bar is the symbol's last row at or before it."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.types import RunInfo
from tradingd.storage.sqlite import SqliteStore

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SYMS = ("AAA", "BBB", "CCC", "DDD")


def run_info() -> RunInfo:
    return RunInfo("r1", "live", T0, "{}", SYMS, 100_000.0)


async def rows_of(store: SqliteStore) -> list[tuple[datetime, str, float]]:
    await store.flush()
    return [
        (r["time"], r["symbol"], r["target_weight"]) for r in await store.fetch("signals", "r1")
    ]


def in_force(rows: list[tuple[datetime, str, float]], t: datetime) -> dict[str, float]:
    """What a reader gets: per symbol, the target of its last row at or before t (else 0)."""
    out = dict.fromkeys(SYMS, 0.0)
    for when, sym, w in rows:
        if when <= t:
            out[sym] = w
    return out


def test_a_drifting_hold_writes_no_row_and_the_decision_stays_readable(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.start()
        try:
            await store.begin_run(run_info())
            scores = np.ones(4)
            # bar 0: buy AAA at 5%; bars 1-3: AAA has no bar, the sizing holds it at its
            # weight, which moves with the price; bar 4: AAA tradable again, still 5%.
            weights = [0.0, 0.0512, 0.0498, 0.0531, 0.0505]
            for k, w in enumerate(weights):
                tgt = np.array([0.05 if k in (0, 4) else w, 0.0, 0.0, 0.0])
                cur = np.array([w, 0.0, 0.0, 0.0])
                store.record_signals("r1", T0 + k * DAY, SYMS, scores, tgt, weights=cur)
            rows = await rows_of(store)
            assert rows == [(T0, "AAA", 0.05)]  # one decision, no row per held bar
            assert in_force(rows, T0 + 3 * DAY)["AAA"] == 0.05
        finally:
            await store.stop()

    asyncio.run(main())


def test_orders_and_zero_crossings_always_have_a_row(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "s.db")
        await store.start()
        try:
            await store.begin_run(run_info())
            s = np.ones(4)
            w0 = np.zeros(4)
            store.record_signals("r1", T0, SYMS, s, np.array([0.05, 0, 0, 0]), weights=w0)
            # Same target, but the plan rebalances AAA (its weight left the band): a row
            # explains the order.
            w1 = np.array([0.07, 0, 0, 0])
            t1 = np.array([0.05, 0, 0, 0])
            store.record_signals("r1", T0 + DAY, SYMS, s, t1, ordered=["AAA"], weights=w1)
            # A hold that ends a decision: AAA's position is gone (weight 0) and the plugin
            # holds it at that weight: the 5% in force ends, so a row says so.
            w2 = np.zeros(4)
            store.record_signals("r1", T0 + 2 * DAY, SYMS, s, np.zeros(4), weights=w2)
            rows = await rows_of(store)
            assert rows == [
                (T0, "AAA", 0.05),
                (T0 + DAY, "AAA", 0.05),
                (T0 + 2 * DAY, "AAA", 0.0),
            ]
        finally:
            await store.stop()

    asyncio.run(main())


# One bar of a run: per symbol (target, current weight, ordered). The target is a hold
# (equal to the weight) with some probability, else a fresh decision from a small set (so
# that equal decisions recur), or NaN (no view).
weights_st = st.sampled_from([0.0, 0.01, 0.0503, 0.0497, -0.02])
decisions_st = st.sampled_from([0.0, 0.05, -0.05, 0.1])


@st.composite
def bar(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[str]]:
    tgt, cur, ordered = [], [], []
    for sym in SYMS:
        w = draw(weights_st)
        kind = draw(st.sampled_from(("hold", "decide", "decide", "nan")))
        tgt.append(w if kind == "hold" else (np.nan if kind == "nan" else draw(decisions_st)))
        cur.append(w)
        if np.isfinite(tgt[-1]) and draw(st.booleans()):
            ordered.append(sym)
    return np.array(tgt), np.array(cur), ordered


async def record(store: SqliteStore, bars: list, start: int) -> None:
    for k, (tgt, cur, ordered) in enumerate(bars, start):
        store.record_signals(
            "r1", T0 + k * DAY, SYMS, np.ones(4), tgt, "m", ordered=ordered, weights=cur
        )


@settings(max_examples=60, deadline=None)
@given(bars=st.lists(bar(), min_size=1, max_size=12), cut=st.integers(0, 12))
def test_decisions_are_complete_minimal_and_survive_a_restart(bars, cut) -> None:
    """For any bars: (1) every ordered symbol has a row at its bar, with the bar's target;
    (2) at every bar, a symbol whose target is finite and not a hold reads back (last row at
    or before the bar) as that target; (3) a row is written only for an order, a changed
    non-hold target, or a hold that crosses zero; (4) a run stopped after any bar and resumed
    (resume_run restores the decisions in force from the table) writes exactly the rows of
    an uninterrupted run."""
    cut = min(cut, len(bars))

    async def main(directory: Path) -> None:
        full = SqliteStore(directory / "full.db")
        await full.start()
        await full.begin_run(run_info())
        await record(full, bars, 0)
        rows = await rows_of(full)
        await full.stop()

        before = SqliteStore(directory / "cut.db")
        await before.start()
        await before.begin_run(run_info())
        await record(before, bars[:cut], 0)
        if cut:
            before.record_checkpoint("r1", T0 + (cut - 1) * DAY, {"portfolio": {}})
        await before.stop()
        after = SqliteStore(directory / "cut.db")
        await after.start()
        await after.resume_run(run_info())
        await record(after, bars[cut:], cut)
        resumed = await rows_of(after)
        await after.stop()
        assert resumed == rows  # (4)

        last = dict.fromkeys(SYMS, 0.0)
        by_bar: dict[datetime, dict[str, float]] = {}
        for when, sym, w in rows:
            by_bar.setdefault(when, {})[sym] = w
        for k, (tgt, cur, ordered) in enumerate(bars):
            t = T0 + k * DAY
            got = by_bar.get(t, {})
            force = in_force(rows, t)
            for i, sym in enumerate(SYMS):
                if sym in ordered:
                    assert got.get(sym) == tgt[i]  # (1)
                if np.isfinite(tgt[i]) and tgt[i] != cur[i]:
                    assert force[sym] == tgt[i]  # (2)
                if sym in got:  # (3)
                    crossed = (tgt[i] == 0) != (last[sym] == 0)
                    changed = tgt[i] != last[sym] and (tgt[i] != cur[i] or crossed)
                    assert sym in ordered or changed
                    last[sym] = got[sym]

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))


def _rule(last: np.ndarray, tgt: np.ndarray, cur: np.ndarray | None, ordered: list[int]):
    """The decision rule in array form (the definition the store's per-symbol path for a
    few changed targets must equal): rows where the target is finite and changed and not a
    hold (unless it crosses zero), plus every ordered symbol with a finite target."""
    finite = np.isfinite(tgt)
    mask = finite & (tgt != last)
    if cur is not None:
        mask &= (tgt != cur) | ((tgt == 0.0) != (last == 0.0))
    mask[ordered] = True
    mask &= finite
    last[mask] = tgt[mask]
    return mask.nonzero()[0]


VALUES = [0.0, -0.0, 0.05, 0.1, -0.05, float("nan"), float("inf"), float("-inf"), 1e-300]


@st.composite
def wide_bar(draw, n: int):
    """A bar over n symbols: each target a hold (equal to its weight), or one of a few
    values shared with the weights, so holds, zero crossings, NaN and inf all occur; and
    sometimes a bar where most targets move (the array path: more than `_FEW` changed)."""
    cur = np.array([draw(st.sampled_from(VALUES)) for _ in range(n)])
    kinds = draw(st.lists(st.sampled_from(["hold", "value"]), min_size=n, max_size=n))
    tgt = np.array(
        [
            cur[i] if kind == "hold" else draw(st.sampled_from(VALUES))
            for i, kind in enumerate(kinds)
        ]
    )
    ordered = draw(st.lists(st.integers(0, n - 1), max_size=5))
    with_weights = draw(st.booleans())
    return tgt, (cur if with_weights else None), ordered


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.sampled_from([3, 40, 80]), length=st.integers(1, 8))
def test_the_rows_are_the_array_rule_bar_for_bar_on_either_path(
    data, n, length, tmp_path_factory
) -> None:
    """Bit for bit (indices, scores, targets) with the array rule on every bar, at widths where
    a bar changes a few targets (the per-symbol path) or many (the array path)."""
    syms = tuple(f"S{i:03d}" for i in range(n))
    store = SqliteStore(tmp_path_factory.mktemp("sig") / "s.db")
    last = np.zeros(n)
    for k in range(length):
        tgt, cur, ordered = data.draw(wide_bar(n))
        scores = np.linspace(-1, 1, n)
        store.record_signals(
            "r1",
            T0 + k * DAY,
            syms,
            scores,
            tgt,
            "m",
            ordered=[syms[i] for i in ordered],
            weights=cur,
        )
        want = _rule(last, tgt, cur, ordered)
        chunk = store._signals[-1] if store._signals else None
        if want.size == 0:
            assert chunk is None or chunk[1] != T0 + k * DAY
            continue
        assert chunk is not None and chunk[1] == T0 + k * DAY
        idx, (s, t) = chunk[3], chunk[4]
        assert idx.tolist() == want.tolist()
        assert s.tobytes() == scores[want].tobytes()
        assert t.tobytes() == tgt[want].tobytes()
    assert store._last_targets["r1"].tobytes() == last.tobytes()
