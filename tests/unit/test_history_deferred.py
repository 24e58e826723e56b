"""Deferred writes of the history buffer: whenever windows are read, they hold exactly the
bits that writing every bar at its push gave (the buffer before writes were deferred)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.types import CrossSection
from tradingd.engine.history import FIELDS, HistoryBuffer

T0 = datetime(2020, 1, 1, tzinfo=UTC)


class EagerHistory:
    """The buffer as it was: each push back-adjusts the rows for its split, then writes."""

    def __init__(self, n: int, cap: int) -> None:
        self.rows: list[dict[str, np.ndarray]] = []
        self.n, self.cap = n, cap

    def push(self, bar: CrossSection) -> None:
        cols = np.flatnonzero(bar.split != 1.0)
        for row in self.rows:
            for f in ("open", "high", "low", "close"):
                row[f][cols] /= bar.split[cols]
            row["volume"][cols] *= bar.split[cols]
        self.rows.append({f: np.array(getattr(bar, f), dtype=float) for f in FIELDS})
        self.rows = self.rows[-self.cap :]

    def window(self, field: str, n: int) -> np.ndarray:
        out = np.full((n, self.n), np.nan)
        tail = [r[field] for r in self.rows[-n:]]
        if tail:
            out[n - len(tail) :] = tail
        return out


def make_bar(rng: np.random.Generator, n: int, split_p: float) -> CrossSection:
    close = rng.uniform(1, 500, n)
    close[rng.random(n) < 0.1] = np.nan
    split = np.where(rng.random(n) < split_p, rng.choice([2.0, 3.0, 0.1, 1.5, 7.0], n), 1.0)
    return CrossSection(
        T0,
        close * 0.99,
        close * 1.01,
        close * 0.98,
        close,
        rng.uniform(0, 1e6, n),
        split,
        np.zeros(n),
    )


@settings(max_examples=80, deadline=None)
@given(
    cap=st.integers(1, 9),
    n=st.integers(1, 5),
    steps=st.lists(st.tuples(st.booleans(), st.integers(1, 9)), max_size=40),
    split_p=st.sampled_from([0.0, 0.2, 0.6]),
    seed=st.integers(0, 2**32 - 1),
)
def test_windows_equal_eager_writes_bit_for_bit(cap, n, steps, split_p, seed) -> None:
    rng = np.random.default_rng(seed)
    lazy, eager = HistoryBuffer(n, cap), EagerHistory(n, cap)
    for read, k in steps:
        bar = make_bar(rng, n, split_p)
        lazy.push(bar)
        eager.push(bar)
        if read:  # plugins read at some bars and not at others
            k = min(k, cap)
            for f in FIELDS:
                got, want = lazy.window(f, k), eager.window(f, k)
                assert got.tobytes() == want.tobytes(), f
    for f in FIELDS:
        assert lazy.window(f, cap).tobytes() == eager.window(f, cap).tobytes(), f
    assert lazy.length == len(steps)


def test_push_copies_nothing_until_a_window_is_read() -> None:
    """A replay whose plugins read no raw history pays one append per bar: no row copy."""
    h = HistoryBuffer(3, 4)
    rng = np.random.default_rng(1)
    for _ in range(10):
        h.push(make_bar(rng, 3, 0.0))
    assert np.isnan(h._buf["close"]).all()  # nothing written yet
    assert h.length == 10
    last = make_bar(rng, 3, 0.0)
    h.push(last)
    np.testing.assert_array_equal(h.window("close", 1)[0], last.close)
