"""What plugins are given cannot be made writeable again (issue: the plugin-author trial).

A read-only flag on an array numpy lets be turned back on when the array owns its memory or
any array under it is writeable: `w = ctx.history.window("close", 5); w.setflags(write=True);
w[-1] *= 2` (the usual answer to "assignment destination is read-only") went through, and
every other plugin read the changed closes, in a run that ended with exit 0. Each input the
engine keeps or shares (the history buffer, the marks, the portfolio view, the book the risk
chain judges, the feature rows, the replayed bar) is now refused, on the array handed out and
on its `.base`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from plugin_context import make_context

from tradingd.core.arrays import read_only_alias, read_only_copy
from tradingd.core.types import CrossSection, Leg, Order, Side
from tradingd.engine.history import HistoryBuffer
from tradingd.engine.portfolio import Portfolio
from tradingd.engine.working_entries import with_working_entries
from tradingd.features.batch_cache import FeatureCache
from tradingd.features.catalog import Catalog
from tradingd.features.source import BatchFeatureSource, StreamingFeatureSource
from tradingd.feeds.panel import FIELDS, Panel

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def assert_stays_read_only(a: np.ndarray) -> None:
    """`a`, and every array under it (`.base`), refuse to be made writeable."""
    assert not a.flags.writeable
    seen = a
    while isinstance(seen, np.ndarray):
        with pytest.raises(ValueError, match="WRITEABLE"):
            seen.setflags(write=True)
        seen = seen.base


def cross_section(close: np.ndarray, split: np.ndarray | None = None, k: int = 0) -> CrossSection:
    n = close.size
    return CrossSection(
        T0 + timedelta(days=k),
        close,
        close,
        close,
        close,
        np.full(n, 100.0),
        np.ones(n) if split is None else split,
        np.zeros(n),
    )


@pytest.mark.parametrize("shape", [(7,), (3, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.bool_])
def test_the_read_only_helpers_keep_the_values_and_refuse_writes(shape, dtype):
    a = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(dtype)
    copy, alias = read_only_copy(a), read_only_alias(a)
    for got in (copy, alias, copy[1:], alias[1:]):
        assert_stays_read_only(got)
    for got in (copy, alias):
        assert got.dtype == a.dtype and got.shape == a.shape
        np.testing.assert_array_equal(got, a)
    a[(0,) * a.ndim] = not a[(0,) * a.ndim]
    assert alias[(0,) * a.ndim] == a[(0,) * a.ndim]  # the alias follows its writer
    assert copy[(0,) * a.ndim] != a[(0,) * a.ndim]  # the copy does not


def test_a_history_window_cannot_be_made_writeable_and_keeps_following_the_bars():
    h = HistoryBuffer(3, 4)
    for k in range(3):
        h.push(cross_section(np.array([10.0, 20.0, 30.0]) + k, k=k))
    w = h.window("close", 2)
    before = w.copy()
    assert_stays_read_only(w)
    np.testing.assert_array_equal(h.window("close", 2), before)
    # The engine still writes, splits included: a 2-for-1 in the second symbol.
    h.push(cross_section(np.array([20.0, 11.5, 40.0]), split=np.array([1.0, 2.0, 1.0]), k=3))
    np.testing.assert_array_equal(h.window("close", 2), [[12.0, 11.0, 32.0], [20.0, 11.5, 40.0]])
    assert_stays_read_only(h.window("volume", 4))


def test_the_marks_and_the_portfolio_view_cannot_be_made_writeable():
    pf = Portfolio(("A", "B", "C"), 1_000.0)
    close = np.array([10.0, np.nan, 30.0])
    pf.mark_to_market(close, close == close)
    partly = pf.mark  # a symbol without a mark yet
    pf.mark_to_market(np.array([11.0, 20.0, 31.0]), np.ones(3, dtype=bool))
    view = pf.view()
    inputs = {
        "mark before every symbol had a bar": partly,
        "mark": pf.mark,
        **{f.name: getattr(view, f.name) for f in dataclasses.fields(view)},
    }
    arrays = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
    assert {"quantity", "weights", "avg_price", "realized_pnl", "opened_cost"} <= arrays.keys()
    for a in arrays.values():
        assert_stays_read_only(a)
    np.testing.assert_array_equal(partly, [10.0, np.nan, 30.0])
    np.testing.assert_array_equal(pf.mark, [11.0, 20.0, 31.0])


def test_the_book_with_working_entries_cannot_be_made_writeable():
    """The risk chain's book when an entry waits in a symbol without a bar."""
    ctx = make_context(("A", "B"), np.array([[100.0, 50.0], [101.0, np.nan]]))
    entry = Order("mine-1", "B", Side.BUY, 10.0, T0, leg=Leg.ENTRY)
    targets, judged = with_working_entries(
        np.array([0.1, 0.0]), ctx, [entry], {"A": 0, "B": 1}, lambda _: True
    )
    assert judged is not None
    assert judged.portfolio.quantity[1] == 10.0  # as if filled
    assert targets[1] == judged.portfolio.weights[1] > 0
    for a in (judged.portfolio.quantity, judged.portfolio.weights):
        assert_stays_read_only(a)


def small_panel(t: int = 40, n: int = 4) -> Panel:
    rng = np.random.default_rng(5)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(t, n)), axis=0))
    times = pd.bdate_range("2019-01-01", periods=t).to_numpy(dtype="datetime64[ns]")
    return Panel(times, tuple(f"S{i}" for i in range(n)), close, close * 1.01, close * 0.99,
                 close, np.full((t, n), 1e6), np.ones((t, n)), np.zeros((t, n)))  # fmt: skip


def test_a_replayed_bar_cannot_be_made_writeable_nor_the_panel_behind_it():
    """`ctx.bar.close.base.setflags(write=True)` went through on a replay: the rows were
    read-only views of the panel's arrays, flagged read-only too, but an array that owns
    its memory can be made writeable again, and a plugin then rewrote the prices of every
    later bar (what the other plugins and the broker read)."""
    p = small_panel()
    before = {f: getattr(p, f).copy() for f in FIELDS}
    times = p.datetimes()
    for i in (0, len(times) - 1):
        bar = p.row(i, times[i])
        for f in FIELDS:
            got = getattr(bar, f)
            assert_stays_read_only(got)
            assert got.base is not None and got.base.shape == (len(times), len(p.symbols))
            np.testing.assert_array_equal(got, before[f][i])
    for f in FIELDS:  # the panel itself is the caller's, and unchanged
        np.testing.assert_array_equal(getattr(p, f), before[f])


@pytest.mark.parametrize("cached", [False, True], ids=["computed", "from the cache"])
def test_batch_feature_rows_cannot_be_made_writeable(tmp_path, cached):
    """From the cache the values are a copy-on-write map: a row of it, flagged read-only,
    was made writeable again (the trial's `ctx.features["ret_1"]`)."""
    p, names = small_panel(), ("ret_1", "rsi_14")
    cache = FeatureCache(tmp_path, 10**9) if cached else None
    if cached:
        BatchFeatureSource(p, names, Catalog(), cache=cache).prepare(())  # fills the entry
    src = BatchFeatureSource(p, names, Catalog(), cache=cache)
    ready_at = src.prepare(("rsi_14",))
    t = p.datetimes()[-1]
    bar = p.row(len(p.times) - 1, t)
    rows = src.at(bar)
    want = {k: v.copy() for k, v in rows.items()}
    for v in rows.values():
        assert_stays_read_only(v)
    assert ready_at(bar) is not None
    for k, v in src.at(bar).items():
        np.testing.assert_array_equal(v, want[k])


@pytest.mark.parametrize("prepared", [False, True])
def test_streaming_feature_values_cannot_be_made_writeable(prepared):
    """Live, the engine cleaned each bar's values itself, into a copy it could only flag
    read-only. Prepared (as the engine does), the source cleans them: NaN and inf are 0,
    and the readiness row says where every required feature was finite, as the engine
    computed it."""
    p, names, required = small_panel(), ("close", "ret_1", "sma_5"), ("ret_1", "sma_5")
    raw = StreamingFeatureSource(len(p.symbols), names, Catalog())
    src = StreamingFeatureSource(len(p.symbols), names, Catalog())
    ready_at = src.prepare(required) if prepared else None
    for i, t in enumerate(p.datetimes()):
        bar = p.row(i, t)
        want, got = raw.at(bar), src.at(bar)
        for name, v in got.items():
            assert_stays_read_only(v)
            finite = np.isfinite(want[name])
            np.testing.assert_array_equal(
                v, np.where(finite, want[name], 0.0) if prepared else want[name]
            )
        if ready_at is not None:
            ready = np.logical_and.reduce([np.isfinite(want[n]) for n in required])
            np.testing.assert_array_equal(ready_at(bar), ready)
            assert i > 0 or not ready.any()  # the first bar has no return yet
    if ready_at is not None:
        with pytest.raises(RuntimeError, match="before at"):
            ready_at(p.row(0, p.datetimes()[0]))


class _UnpreparedSource:
    """A feature source without `prepare` (a third party's): the engine cleans its values
    and makes the readiness row itself, bar by bar (`Engine._features`)."""

    names = ("a", "b")

    def __init__(self) -> None:
        self.values = {"a": np.array([1.0, np.nan, 3.0]), "b": np.array([1.0, 2.0, 3.0])}

    def at(self, bar: CrossSection) -> dict[str, np.ndarray]:
        return self.values


def test_an_unprepared_sources_values_and_readiness_cannot_be_made_writeable():
    """Cleaned by the engine into a copy (or, all finite, a view of the source's own array:
    a streaming feature's state) flagged read-only, which `setflags(write=True)` undid."""
    from types import SimpleNamespace

    from tradingd.core.arrays import read_only_copy
    from tradingd.engine.engine import Engine

    src = _UnpreparedSource()
    engine = SimpleNamespace(features=src, _ready_at=None, _required=("a", "b"))
    valid = read_only_copy(np.array([True, True, False]))
    bar = cross_section(np.ones(3))
    features, ready = Engine._features(engine, bar, valid)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ready, [True, False, False])
    np.testing.assert_array_equal(features["a"], [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(features["b"], src.values["b"])
    for a in (ready, features["a"], features["b"]):
        assert_stays_read_only(a)
