"""Streaming indicators against TA-Lib in batch.

Every indicator is fed bar by bar for a universe of symbols (some listing late, some missing
bars in the middle) and compared, at every bar, with `talib.<FUNC>` run on that symbol's own
valid bars (NaN rows compressed out, TA-Lib run, result scattered back): same NaN pattern,
values equal to rtol 1e-9 (plus an atol of 1e-9 times the magnitude of the series).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from talib_reference import talib_reference

from tradingd.features import talib_stream as ts

RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# Helpers (also used by the shared-data integration test)


def run_stream(ind, o, h, lo, c, v, split=None) -> dict[str, np.ndarray]:
    """Feed a (T, N) panel bar by bar; NaN close means the symbol has no bar."""
    t_len, _ = c.shape
    valid = ~np.isnan(c)
    if split is None:
        split = np.ones_like(c)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ind.outputs}
    for t in range(t_len):
        res = ind.update(o[t], h[t], lo[t], c[t], v[t], valid[t], split[t])
        assert set(res) == set(ind.outputs)
        for name in ind.outputs:
            assert res[name].shape == (c.shape[1],)
            rows[name].append(res[name])
    return {name: np.vstack(rows[name]) if t_len else np.empty((0, c.shape[1])) for name in rows}


def reference_panel(ind, o, h, lo, c, v) -> dict[str, np.ndarray]:
    """TA-Lib per symbol on its own valid bars, scattered back into the (T, N) panel."""
    out = {name: np.full(c.shape, np.nan) for name in ind.outputs}
    for j in range(c.shape[1]):
        rows = np.flatnonzero(~np.isnan(c[:, j]))
        if rows.size == 0:
            continue
        cols = [np.ascontiguousarray(a[rows, j], dtype=np.float64) for a in (o, h, lo, c, v)]
        ref = talib_reference(ind, *cols)
        for name in ind.outputs:
            out[name][rows, j] = ref[name]
    return out


def assert_same(got: dict, want: dict, label: str = "") -> None:
    assert set(got) == set(want)
    for name in want:
        g, w = got[name], want[name]
        assert g.shape == w.shape
        gn, wn = np.isnan(g), np.isnan(w)
        bad = np.argwhere(gn != wn)
        assert bad.size == 0, f"{label}{name}: NaN pattern differs first at (t, sym) {bad[0]}"
        for j in range(w.shape[1]):
            col = ~wn[:, j]
            if not col.any():
                continue
            scale = max(float(np.max(np.abs(w[col, j]))), 1e-300)
            np.testing.assert_allclose(
                g[col, j],
                w[col, j],
                rtol=RTOL,
                atol=1e-9 * scale,
                err_msg=f"{label}{name} symbol {j}",
            )


def all_indicators(n: int) -> list:
    return [
        ts.Roc(n),
        ts.Roc(n, period=5, field="volume", name="vroc"),
        ts.Rsi(n),
        ts.Macd(n),
        ts.Stoch(n),
        ts.Adx(n),
        ts.BBands(n),
        ts.Atr(n),
        ts.TRange(n),
        ts.Obv(n),
        ts.Mfi(n),
    ]


KINDS = range(len(all_indicators(1)))
KIND_IDS = [f"{type(i).__name__}-{'-'.join(i.outputs)}" for i in all_indicators(1)]


def fresh(kind: int, n: int):
    """A new indicator (state is mutable: never share one between parametrized cases)."""
    return all_indicators(n)[kind]


def random_ohlcv(rng: np.random.Generator, t_len: int, n: int, level: float = 50.0):
    close = level * np.exp(np.cumsum(rng.normal(0.0003, 0.02, size=(t_len, n)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.006, size=close.shape))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.008, size=close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.008, size=close.shape)))
    volume = rng.integers(1_000, 1_000_000, size=close.shape).astype(float)
    return open_, high, low, close, volume


def blank(mask: np.ndarray, *arrays) -> None:
    for a in arrays:
        a[mask] = np.nan


def universe(seed: int = 11, t_len: int = 320, n: int = 7):
    """Random walks; symbol 1 lists late, 2 and 3 miss bars, 4 has a flat stretch and zero
    volume, 5 lists late and has gaps, 6 is quoted at a tiny price level."""
    rng = np.random.default_rng(seed)
    o, h, lo, c, v = random_ohlcv(rng, t_len, n)
    for a in (o, h, lo, c):
        a[:, 6] *= 1e-4
    for a in (o, h, lo, c):
        a[100:150, 4] = 42.5
    v[120:180, 4] = 0.0
    v[10:30, 0] = 0.0
    missing = np.zeros(c.shape, dtype=bool)
    missing[:60, 1] = True
    missing[:, 2] = rng.random(t_len) < 0.15
    missing[200:230, 3] = True
    missing[:130, 5] = True
    missing[150:, 5] = rng.random(t_len - 150) < 0.3
    blank(missing, o, h, lo, c, v)
    return o, h, lo, c, v


# --------------------------------------------------------------------------------------------
# Agreement with TA-Lib


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_matches_talib_on_a_ragged_universe(kind):
    ind = fresh(kind, 7)
    data = universe()
    assert_same(run_stream(ind, *data), reference_panel(ind, *data))


@pytest.mark.parametrize(
    "make",
    [
        lambda n: ts.Roc(n, period=3),
        lambda n: ts.Rsi(n, period=5),
        lambda n: ts.Macd(n, fast=5, slow=3, signal=4),  # slow < fast: TA-Lib swaps
        lambda n: ts.Macd(n, fast=3, slow=8, signal=1),
        lambda n: ts.Stoch(n, fastk=5, slowk=1, slowd=4),
        lambda n: ts.Adx(n, period=3),
        lambda n: ts.BBands(n, period=7, nbdev=1.0),
        lambda n: ts.Atr(n, period=4),
        lambda n: ts.Mfi(n, period=4),
    ],
)
def test_matches_talib_with_other_parameters(make):
    data = universe(seed=5, t_len=200)
    ind = make(7)
    assert_same(run_stream(ind, *data), reference_panel(ind, *data))


def test_lookback_is_talib_lookback():
    rng = np.random.default_rng(1)
    data = [a[:, :1] for a in random_ohlcv(rng, 120, 1)]
    for ind in all_indicators(1):
        ref = reference_panel(ind, *data)
        first = min(int(np.argmax(~np.isnan(ref[name][:, 0]))) for name in ind.outputs)
        assert first == ind.lookback, type(ind).__name__


def test_constant_prices_and_zero_volume():
    t_len = 80
    c = np.full((t_len, 1), 10.0)
    o, h, lo = c.copy(), c.copy(), c.copy()
    v = np.zeros((t_len, 1))
    for ind in all_indicators(1):
        assert_same(run_stream(ind, o, h, lo, c, v), reference_panel(ind, o, h, lo, c, v))
    v[:] = 5000.0
    for ind in all_indicators(1):
        assert_same(run_stream(ind, o, h, lo, c, v), reference_panel(ind, o, h, lo, c, v))


def test_flat_stretch_inside_a_random_walk():
    rng = np.random.default_rng(3)
    o, h, lo, c, v = random_ohlcv(rng, 200, 2)
    for a in (o, h, lo, c):
        a[60:110] = a[59]  # a halted symbol: flat bars, windows of identical values
    v[60:110] = 0.0
    for ind in all_indicators(2):
        assert_same(run_stream(ind, o, h, lo, c, v), reference_panel(ind, o, h, lo, c, v))


@pytest.mark.parametrize("step", [1e-6, 1e-9])
def test_tiny_moves(step):
    rng = np.random.default_rng(4)
    t_len = 150
    c = 100.0 + np.cumsum(rng.normal(0, step, size=(t_len, 2)), axis=0)
    o = c + rng.normal(0, step, size=c.shape)
    h = np.maximum(o, c) + np.abs(rng.normal(0, step, size=c.shape))
    lo = np.minimum(o, c) - np.abs(rng.normal(0, step, size=c.shape))
    v = rng.integers(0, 100, size=c.shape).astype(float)
    for ind in all_indicators(2):
        assert_same(run_stream(ind, o, h, lo, c, v), reference_panel(ind, o, h, lo, c, v))


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_exactly_the_lookback(extra):
    rng = np.random.default_rng(6)
    for ind in all_indicators(1):
        t_len = ind.lookback + extra
        if t_len <= 0:
            continue
        data = [a[:t_len, :1] for a in random_ohlcv(rng, t_len, 1)]
        got = run_stream(ind, *data)
        assert_same(got, reference_panel(ind, *data))
        n_values = int((~np.isnan(got[ind.outputs[0]])).sum())
        assert n_values == max(0, extra)


def test_a_single_bar():
    rng = np.random.default_rng(8)
    data = [a[:1] for a in random_ohlcv(rng, 1, 3)]
    for ind in all_indicators(3):
        assert_same(run_stream(ind, *data), reference_panel(ind, *data))


def test_invalid_symbols_are_not_read_and_keep_their_state():
    """Entries of symbols without a bar hold garbage (not NaN) and a split: both ignored."""
    rng = np.random.default_rng(9)
    o, h, lo, c, v = random_ohlcv(rng, 90, 3)
    valid = rng.random(c.shape) < 0.7
    valid[:, 0] = True
    masked = [np.where(valid, a, np.nan) for a in (o, h, lo, c, v)]
    for ind in all_indicators(3):
        rows: dict[str, list] = {name: [] for name in ind.outputs}
        for t in range(90):
            res = ind.update(
                o[t] * np.where(valid[t], 1.0, 1e6),
                h[t] * np.where(valid[t], 1.0, 1e6),
                lo[t],
                c[t] * np.where(valid[t], 1.0, -5.0),
                v[t],
                valid[t],
                np.where(valid[t], 1.0, 3.0),
            )
            for name in ind.outputs:
                rows[name].append(res[name])
        got = {name: np.vstack(r) for name, r in rows.items()}
        assert_same(got, reference_panel(ind, *masked), label=f"{type(ind).__name__} ")
        assert (ind.count == valid.sum(axis=0)).all()


def test_all_invalid_bar_changes_nothing():
    ind = ts.Rsi(3, period=2)
    nan = np.full(3, np.nan)
    res = ind.update(nan, nan, nan, nan, nan, np.zeros(3, dtype=bool), np.full(3, 2.0))
    assert all(np.isnan(v).all() for v in res.values())
    assert (ind.count == 0).all()


# --------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize("ratio", [4.0, 3.0])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_split_semantics(kind, ratio):
    """A symbol splits `ratio`-for-1 at bar k (symbol 0; symbol 2 lists at bar 90, after it).

    At bar t the live daemon knows only the splits up to t, so before the split its state
    is in pre-split units and from the split on in post-split units. The batch equivalent is
    TA-Lib on the fully split-adjusted series (pre-split prices / ratio, volumes * ratio),
    rescaled to the units known at t: multiplied by G_t ** PRICE_DEGREE and divided by
    G_t ** VOLUME_DEGREE, where G_t = ratio for t < k and 1 for t >= k. Streaming the RAW
    prices with split=ratio on bar k must give exactly that."""
    ind = fresh(kind, 3)
    rng = np.random.default_rng(21)
    t_len, k = 260, 130
    o, h, lo, c, v = random_ohlcv(rng, t_len, 3)  # split-adjusted
    blank(np.arange(t_len)[:, None] < np.array([0, 0, 90]), o, h, lo, c, v)
    g = np.where(np.arange(t_len) < k, ratio, 1.0)[:, None] * np.array([1.0, 1.0, 1.0])
    g[:, 1:] = 1.0
    raw = [a * g for a in (o, h, lo, c)] + [v / g]
    split = np.ones_like(c)
    split[k, 0] = ratio
    got = run_stream(ind, *raw, split=split)
    want = reference_panel(ind, o, h, lo, c, v)
    for name in ind.outputs:
        pd, vd = ts.PRICE_DEGREE.get(name, 0), ts.VOLUME_DEGREE.get(name, 0)  # vroc: ratio
        want[name] = want[name] * g**pd / g**vd
    assert_same(got, want)


def test_split_on_a_missing_bar_is_ignored():
    ind = ts.Obv(1)
    one = np.ones(1)
    ind.update(one, one, one, one, one * 10, np.array([True]), one)
    nan = np.full(1, np.nan)
    ind.update(nan, nan, nan, nan, nan, np.array([False]), np.full(1, 2.0))
    assert ind.obv[0] == 10.0


def test_degrees_cover_every_output():
    names = {name for ind in all_indicators(1) for name in ind.outputs} - {"vroc"}
    assert names == set(ts.PRICE_DEGREE) == set(ts.VOLUME_DEGREE)
    assert {k for k, d in ts.PRICE_DEGREE.items() if d == 1} == {
        "macd",
        "macd_signal",
        "macd_hist",
        "bb_upper",
        "bb_middle",
        "bb_lower",
        "atr",
        "trange",
    }
    assert {k for k, d in ts.VOLUME_DEGREE.items() if d == 1} == {"obv"}
    for ind in all_indicators(1):
        assert isinstance(ind, ts.Indicator)


# --------------------------------------------------------------------------------------------
# Property: random lengths, parameters and gaps


@st.composite
def indicator_cases(draw):
    kind = draw(st.sampled_from(["roc", "rsi", "macd", "stoch", "adx", "bb", "atr", "mfi", "obv"]))
    n = 3
    p = draw(st.integers(2, 9))
    if kind == "roc":
        ind = ts.Roc(
            n, period=draw(st.integers(1, 9)), field=draw(st.sampled_from(["close", "volume"]))
        )
    elif kind == "rsi":
        ind = ts.Rsi(n, period=p)
    elif kind == "macd":
        ind = ts.Macd(n, fast=p, slow=draw(st.integers(2, 12)), signal=draw(st.integers(1, 6)))
    elif kind == "stoch":
        ind = ts.Stoch(
            n,
            fastk=draw(st.integers(1, 8)),
            slowk=draw(st.integers(1, 4)),
            slowd=draw(st.integers(1, 4)),
        )
    elif kind == "adx":
        ind = ts.Adx(n, period=p)
    elif kind == "bb":
        ind = ts.BBands(n, period=p, nbdev=draw(st.sampled_from([0.5, 1.0, 2.0, 2.5])))
    elif kind == "atr":
        ind = ts.Atr(n, period=p)
    elif kind == "mfi":
        ind = ts.Mfi(n, period=p)
    else:
        ind = ts.Obv(n)
    t_len = draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**32 - 1))
    gap = draw(st.sampled_from([0.0, 0.2, 0.5]))
    return ind, t_len, seed, gap


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(indicator_cases())
def test_property_agrees_with_talib(case):
    ind, t_len, seed, gap = case
    rng = np.random.default_rng(seed)
    data = list(random_ohlcv(rng, t_len, 3))
    missing = rng.random((t_len, 3)) < gap
    missing[:, 0] = False
    missing[: t_len // 2, 2] = True
    blank(missing, *data)
    assert_same(run_stream(ind, *data), reference_panel(ind, *data))
