"""Feature catalogue and batch computation: values, no lookahead, bad data, ML windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.errors import ConfigError, DataError
from tradingd.features.catalog import FEATURE_SETS, Catalog, cross_section, feature_set_id
from tradingd.features.engineer import compute_batch, prepare_ml_data
from tradingd.features.indicators import IndicatorConfig, IndicatorEngine
from tradingd.feeds.panel import Panel

DEFAULT = FEATURE_SETS["default_v1"]


def panel_from(close, *, high=None, low=None, open_=None, volume=None, split=None):
    close = np.asarray(close, dtype=float)
    if close.ndim == 1:
        close = close[:, None]
    t, n = close.shape
    times = pd.bdate_range("2010-01-01", periods=t).to_numpy(dtype="datetime64[ns]")
    high = close * 1.01 if high is None else np.asarray(high, float).reshape(t, n)
    low = close * 0.99 if low is None else np.asarray(low, float).reshape(t, n)
    open_ = close if open_ is None else np.asarray(open_, float).reshape(t, n)
    volume = np.full((t, n), 1e6) if volume is None else np.asarray(volume, float).reshape(t, n)
    split = np.ones((t, n)) if split is None else np.asarray(split, float).reshape(t, n)
    return Panel(
        times,
        tuple(f"S{i}" for i in range(n)),
        open_,
        high,
        low,
        close,
        volume,
        split,
        np.zeros((t, n)),
    )


def random_panel(t=400, n=4, seed=1):
    rng = np.random.default_rng(seed)
    close = 40 * np.exp(np.cumsum(rng.normal(0, 0.02, (t, n)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, (t, n)))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, (t, n)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, (t, n)))
    volume = rng.integers(1e5, 1e6, (t, n)).astype(float)
    if n > 1:  # the last symbol lists late
        for a in (close, open_, high, low, volume):
            a[:30, -1] = np.nan
    return panel_from(close, high=high, low=low, open_=open_, volume=volume)


# ----------------------------------------------------------------------------- IndicatorEngine


def test_indicator_engine_seed_api_matches_talib():
    p = random_panel(n=1)
    df = pd.DataFrame(
        {
            "Open": p.open[:, 0],
            "High": p.high[:, 0],
            "Low": p.low[:, 0],
            "Close": p.close[:, 0],
            "Volume": p.volume[:, 0],
        }
    )
    out = IndicatorEngine(IndicatorConfig(rsi=10)).calculate_all_indicators(df)
    for col in (
        "rsi",
        "macd",
        "macd_signal",
        "macd_hist",
        "roc",
        "stoch_k",
        "stoch_d",
        "adx",
        "bb_upper",
        "bb_middle",
        "bb_lower",
        "atr",
        "natr",
        "trange",
        "obv",
        "mfi",
        "volume_roc",
    ):
        assert col in out.columns, col
    np.testing.assert_allclose(out["rsi"], talib.RSI(p.close[:, 0], 10), equal_nan=True)
    np.testing.assert_allclose(out["volume_roc"], talib.ROC(p.volume[:, 0], 10), equal_nan=True)
    assert "rsi" not in df.columns  # the input is left alone


def test_indicator_engine_bad_input_names_column_and_row():
    df = pd.DataFrame(
        {
            "open": [1.0, 2.0],
            "high": [1.0, 2.0],
            "low": [1.0, np.nan],
            "close": [1.0, 2.0],
            "volume": [1.0, 1.0],
        },
        index=pd.to_datetime(["2020-01-01", "2020-01-02"]),
    )
    with pytest.raises(DataError, match=r"NaN in column 'low'.*2020-01-02"):
        IndicatorEngine().calculate_volatility_indicators(df)
    with pytest.raises(DataError, match="lacks column"):
        IndicatorEngine().calculate_volume_indicators(df.drop(columns="volume"))


def test_indicator_periods_are_validated():
    with pytest.raises(ValueError, match="macd_fast must be < macd_slow"):
        IndicatorConfig(macd_fast=30)


# ----------------------------------------------------------------------------- values


def test_basic_feature_values_by_hand():
    close = [10.0, 11.0, 9.9, 10.89]
    p = panel_from(
        close,
        high=[10.5, 11.5, 10.0, 11.0],
        low=[9.5, 10.5, 9.0, 10.0],
        open_=[10.0, 10.0, 11.0, 10.0],
    )
    f = compute_batch(
        p,
        [
            "ret_1",
            "log_ret_1",
            "hl_range",
            "oc_range",
            "support_2",
            "resistance_2",
            "return_2",
            "sma_2",
            "lag_1_ret_1",
        ],
    )
    np.testing.assert_allclose(f["ret_1"][:, 0], [np.nan, 0.1, -0.1, 0.1])
    np.testing.assert_allclose(f["log_ret_1"][1:, 0], np.log([1.1, 0.9, 1.1]))
    np.testing.assert_allclose(f["hl_range"][:, 0], [0.1, 1 / 11, 1 / 9.9, 1 / 10.89])
    np.testing.assert_allclose(f["oc_range"][:, 0], [0.0, 0.1, -0.1, 0.089])
    np.testing.assert_allclose(
        f["support_2"][1:, 0], [11 / 9.5 - 1, 9.9 / 9.0 - 1, 10.89 / 9.0 - 1]
    )
    np.testing.assert_allclose(
        f["resistance_2"][1:, 0], [11 / 11.5 - 1, 9.9 / 11.5 - 1, 10.89 / 11 - 1]
    )
    np.testing.assert_allclose(f["return_2"][:, 0], [np.nan, np.nan, -0.01, -0.01])
    np.testing.assert_allclose(f["sma_2"][:, 0], [np.nan, 10.5, 10.45, 10.395])
    np.testing.assert_allclose(f["lag_1_ret_1"][:, 0], [np.nan, np.nan, 0.1, -0.1])


def test_indicator_features_are_talib_scaled():
    p = random_panel(n=1)
    f = compute_batch(p, ["rsi_14", "adx_14", "natr_14", "macd_hist_norm", "stoch_k"])
    c, h, lo = p.close[:, 0], p.high[:, 0], p.low[:, 0]
    np.testing.assert_allclose(f["rsi_14"][:, 0], talib.RSI(c, 14) / 100, equal_nan=True)
    np.testing.assert_allclose(f["adx_14"][:, 0], talib.ADX(h, lo, c, 14) / 100, equal_nan=True)
    np.testing.assert_allclose(f["natr_14"][:, 0], talib.NATR(h, lo, c, 14) / 100, equal_nan=True)
    np.testing.assert_allclose(f["macd_hist_norm"][:, 0], talib.MACD(c)[2] / c, equal_nan=True)
    np.testing.assert_allclose(
        f["stoch_k"][:, 0], talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)[0] / 100, equal_nan=True
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([np.nan, np.inf, -3.0, -0.0, 0.0, 0.5, 1.0, 2.0, 7.25])
        | st.floats(-1e6, 1e6),
        max_size=30,
    )
)
def test_cross_sectional_rank_is_the_average_rank_of_ties(values):
    """The rank of each finite value among the finite ones (ties share their average rank,
    -0.0 ties with 0.0), mapped to [-1, 1]: scipy's rankdata, an independent implementation;
    fewer than two finite values: NaN everywhere."""
    from scipy.stats import rankdata

    v = np.array(values, dtype=float)
    got = cross_section(v, "rank")
    ok = np.isfinite(v)
    assert np.isnan(got[~ok]).all()
    if ok.sum() < 2:
        assert np.isnan(got).all()
        return
    expect = 2.0 * (rankdata(v[ok], method="average") - 1.0) / (ok.sum() - 1) - 1.0
    np.testing.assert_allclose(got[ok], expect, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([np.nan, -1.0, -0.0, 0.0, 0.25, 3.0]) | st.floats(-1e3, 1e3),
        min_size=2,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_cross_sectional_rank_does_not_depend_on_the_symbols_order(values, rnd):
    """Ranks follow their values bit for bit when the symbols are reordered, ties included:
    the order the sort leaves tied values in cannot matter (why it need not be stable)."""
    from tradingd.features.catalog import cross_section_rows

    v = np.array(values, dtype=float)
    perm = np.array(rnd.sample(range(v.size), v.size))
    np.testing.assert_array_equal(cross_section(v[perm], "rank"), cross_section(v, "rank")[perm])
    m = np.stack([v, v[::-1]])
    np.testing.assert_array_equal(
        cross_section_rows(m[:, perm], "rank"), cross_section_rows(m, "rank")[:, perm]
    )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.booleans(), min_size=1, max_size=12),
    st.data(),
    st.sampled_from(["rank", "zscore"]),
    st.booleans(),
)
def test_cross_section_rows_is_cross_section_of_each_row(k, present, data, method, shared):
    """The whole matrix at once gives each row's cross_section bit for bit: rows sharing
    their missing values (ranked together) or not (row by row), ties included."""
    from tradingd.features.catalog import cross_section_rows

    n = len(present)
    value = st.sampled_from([-1.0, -0.0, 0.0, 0.25, 3.0]) | st.floats(-1e3, 1e3)
    rows = []
    for _ in range(k):
        row = np.array(data.draw(st.lists(value, min_size=n, max_size=n)), dtype=float)
        mask = present if shared else data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        row[~np.array(mask)] = np.nan
        rows.append(row)
    matrix = np.stack(rows)
    expect = np.stack([cross_section(r, method) for r in matrix])
    np.testing.assert_array_equal(cross_section_rows(matrix, method), expect)


def test_cross_sectional_rank_and_zscore():
    v = np.array([3.0, np.nan, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(cross_section(v, "rank"), [1.0, np.nan, -1.0, 0.0, 0.0])
    z = cross_section(v, "zscore")
    x = np.array([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(z[[0, 2, 3, 4]], (x - x.mean()) / x.std())
    assert np.isnan(cross_section(np.array([1.0, np.nan]), "rank")).all()  # one value: undefined
    np.testing.assert_array_equal(cross_section(np.array([5.0, 5.0]), "zscore"), [0.0, 0.0])


def test_zscore_uses_only_the_trailing_window():
    x = np.arange(1.0, 31.0)
    f = compute_batch(panel_from(x), ["zscore_5_close"])["zscore_5_close"][:, 0]
    w = x[-5:]
    assert f[-1] == pytest.approx((w[-1] - w.mean()) / w.std(ddof=1))
    assert np.isnan(f[:4]).all()


# ----------------------------------------------------------------------------- no lookahead


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(5, 399), seed=st.integers(0, 3))
def test_no_lookahead_batch_values_at_t_ignore_the_future(cut, seed):
    """Every feature of the default set at bar t, computed on data up to t, equals the value at
    t computed on the whole history (including cross-sectional ones)."""
    p = random_panel(seed=seed)
    fields = {
        f: getattr(p, f).copy()
        for f in ("open", "high", "low", "close", "volume", "split", "dividend")
    }
    if cut + 1 < len(p.times):  # a 2-for-1 split after the cut must change nothing before it
        fields["split"][cut + 1, 0] = 2.0
        for f in ("open", "high", "low", "close"):
            fields[f][cut + 1 :, 0] /= 2.0
        fields["volume"][cut + 1 :, 0] *= 2.0
    full = Panel(p.times, p.symbols, **fields)
    short = Panel(p.times[: cut + 1], p.symbols, **{f: v[: cut + 1] for f, v in fields.items()})
    a = compute_batch(full, DEFAULT)
    b = compute_batch(short, DEFAULT)
    for name in DEFAULT:
        np.testing.assert_allclose(
            a[name][cut], b[name][cut], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name
        )


def test_a_feature_that_needs_the_future_cannot_be_registered():
    cat = Catalog()
    with pytest.raises(ConfigError, match="after its bar"):
        cat.window("peek", "close", "mean", 3, lag=-1)
    with pytest.raises(ConfigError, match="unknown feature"):
        cat.node("lead_1_close")
    node = cat.window("past_mean", "close", "mean", 3, lag=2)  # the past is fine
    f = compute_batch(panel_from(np.arange(1.0, 9.0)), ["past_mean"], cat)["past_mean"][:, 0]
    assert f[-1] == pytest.approx(np.mean([4.0, 5.0, 6.0]))
    assert node.name == "past_mean"


def test_custom_point_feature():
    cat = Catalog()
    cat.register("double_ret", ["ret_1"], lambda r: 2 * r)
    f = compute_batch(panel_from([10.0, 11.0]), ["double_ret"], cat)["double_ret"][:, 0]
    assert f[1] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="already exists"):
        cat.register("rsi_14", ["ret_1"], lambda r: r)


# ----------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("case", ["constant", "zero_volume", "single_bar", "gap", "split"])
def test_bad_data_gives_defined_values_never_inf(case):
    t = 200
    close = (
        np.full(t, 50.0)
        if case == "constant"
        else 50 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.01, t)))
    )
    high, low = close * 1.0, close * 1.0
    if case != "constant":
        high, low = close * 1.01, close * 0.99
    volume = np.zeros(t) if case == "zero_volume" else np.full(t, 1e5)
    split = np.ones(t)
    if case == "split":
        split[120] = 7.0
        close[120:] /= 7
        high[120:] /= 7
        low[120:] /= 7
        volume[120:] *= 7
    if case == "single_bar":
        close, high, low, volume, split = close[:1], high[:1], low[:1], volume[:1], split[:1]
    p = panel_from(close, high=high, low=low, open_=close, volume=volume, split=split)
    if case == "gap":  # a week without bars: the times jump, values stay defined
        times = p.times.copy()
        times[100:] += np.timedelta64(7, "D")
        p = Panel(times, p.symbols, p.open, p.high, p.low, p.close, p.volume, p.split, p.dividend)
    f = compute_batch(p, DEFAULT)
    for name, v in f.items():
        assert not np.isinf(v).any(), name
        # once warmed up, every feature has a value (cross-sectional needs 2 symbols)
        if case != "single_bar" and not name.startswith("cs_"):
            assert np.isfinite(v[-1]).all(), (case, name)
    if case == "constant":
        assert f["rsi_14"][-1, 0] == 0.0  # TA-Lib: no movement -> 0
        assert f["bb_position"][-1, 0] == 0.5 and f["zscore_20_obv"][-1, 0] == 0.0
    if case == "split":
        # the 7-for-1 split is not a -86% return
        assert abs(f["ret_1"][120, 0]) < 0.05


# ----------------------------------------------------------------------------- sets, ML data


def test_default_set_has_20_named_features_and_a_version():
    assert len(DEFAULT) == 20 and len(set(DEFAULT)) == 20
    a = feature_set_id("default_v1", DEFAULT, IndicatorConfig(), "rank")
    assert a.version == feature_set_id("default_v1", DEFAULT, IndicatorConfig(), "rank").version
    assert (
        a.version != feature_set_id("default_v1", DEFAULT, IndicatorConfig(rsi=10), "rank").version
    )
    assert a.version != feature_set_id("default_v1", DEFAULT, IndicatorConfig(), "zscore").version


def test_prepare_ml_data_windows_target_and_chronological_split():
    p = random_panel(t=300, n=3)
    names = ["ret_1", "hl_range"]
    f = compute_batch(p, names)
    d = prepare_ml_data(
        f, names, p.close, p.split, p.times, window=10, horizon=2, validation_fraction=0.25
    )
    assert d["x_train"].shape[1:] == (10, 2) and d["x_train"].dtype == np.float32
    # a window ending at t holds features t-9..t; the target is log(close[t+2] / close[t])
    t_end = np.flatnonzero(p.times == d["t_val"][0])[0]
    j = d["symbol_val"][0]
    np.testing.assert_allclose(d["x_val"][0][:, 0], f["ret_1"][t_end - 9 : t_end + 1, j], rtol=1e-6)
    assert d["y_val"][0] == pytest.approx(
        np.log(p.close[t_end + 2, j] / p.close[t_end, j]), rel=1e-6
    )
    # chronological with a purge: every training label ends before validation starts
    assert d["t_train"].max() < d["t_val"].min()
    first_val = np.flatnonzero(p.times == d["t_val"].min())[0]
    last_train = np.flatnonzero(p.times == d["t_train"].max())[0]
    assert last_train + 2 < first_val
    assert not np.isnan(d["x_train"]).any()  # warm-up windows left out


def test_prepare_ml_data_from_a_start_keeps_the_earlier_bars_as_warm_up():
    """`tradingd train` windows from run.start: the windows ending before it are left out,
    the bars before it still fill the first window (no warm-up lost at the start)."""
    p = random_panel(t=300, n=3)
    names = ["ret_1", "hl_range"]
    f = compute_batch(p, names)
    start = p.times[150]
    d = prepare_ml_data(f, names, p.close, p.split, p.times, window=10, start=start)
    assert d["t_train"].min() == start  # the first window ends at start, full
    assert d["x_train"].shape[0] == 3 * len(np.unique(d["t_train"]))
    assert d["t_train"].max() < d["t_val"].min()
    whole = prepare_ml_data(f, names, p.close, p.split, p.times, window=10)
    assert whole["t_train"].min() < start  # without it, from the first complete window


def test_verify_feature_set_names_the_mismatch():
    from tradingd.features.catalog import verify_feature_set

    a = feature_set_id("default_v1", DEFAULT, IndicatorConfig(), "rank")
    verify_feature_set(a, a, "model x")  # identical: fine
    fewer = feature_set_id("default_v1", DEFAULT[:-1], IndicatorConfig(), "rank")
    with pytest.raises(ConfigError, match=r"model x.*does not produce: \['cs_ret_1'\]"):
        verify_feature_set(a, fewer, "model x")
    other = feature_set_id("default_v1", DEFAULT, IndicatorConfig(rsi=9), "rank")
    with pytest.raises(ConfigError, match=r"version .* differ"):
        verify_feature_set(a, other, "model x")


def test_a_card_with_a_renamed_feature_names_it_and_the_card_file():
    """A card whose list was edited (rsi_14 replaced by rsi_7, its version left as trained)
    was said to have "feature set version A (trained) != B (configured: indicator periods or
    cross-sectional method differ)": neither the feature nor the card file was named."""
    from tradingd.features.catalog import FeatureSetId, engine_feature_set, verify_feature_set

    a = feature_set_id("default_v1", DEFAULT, IndicatorConfig(), "rank")
    i = DEFAULT.index("rsi_14")
    edited = FeatureSetId(a.name, (*DEFAULT[:i], "rsi_7", *DEFAULT[i + 1 :]), a.version)
    actual = engine_feature_set(edited, IndicatorConfig(), "rank")
    with pytest.raises(ConfigError) as exc:
        verify_feature_set(edited, actual, "plugin 'ml_ensemble'", "/m/card.json")
    said = str(exc.value)
    assert said.startswith("plugin 'ml_ensemble' (model card /m/card.json) expects feature set")
    assert f"at position {i} the card has 'rsi_7', the set 'rsi_14'" in said
    assert "indicator periods" not in said  # they are the same


def test_a_card_listing_its_set_in_another_order_is_said_to_be_reordered():
    """The engine's feature set was built from the card's own list: a card with two features
    swapped only differed in its version and was said to have been trained with other
    'indicator periods or cross-sectional method'. The set's own order is the reference."""
    from tradingd.features.catalog import FeatureSetId, engine_feature_set, verify_feature_set

    a = feature_set_id("default_v1", DEFAULT, IndicatorConfig(), "rank")
    assert engine_feature_set(a, IndicatorConfig(), "rank") == a
    swapped = FeatureSetId(a.name, (DEFAULT[1], DEFAULT[0], *DEFAULT[2:]), a.version)
    actual = engine_feature_set(swapped, IndicatorConfig(), "rank")
    assert actual == a
    with pytest.raises(ConfigError) as exc:
        verify_feature_set(swapped, actual, "model x")
    assert str(exc.value) == (
        "model x expects feature set 'default_v1': the same features in another order (at "
        f"position 0 the card has {DEFAULT[1]!r}, the engine's order {DEFAULT[0]!r}): the "
        "model takes its inputs by position; restore the card's list to the order the model "
        "was trained on"
    )
    # Reordered and trained with other periods: both said.
    with pytest.raises(ConfigError, match=r"another order .*; feature set version .* differ"):
        verify_feature_set(
            swapped, engine_feature_set(swapped, IndicatorConfig(rsi=9), "rank"), "x"
        )
    # A card that lacks one of its set's features is no reordering of it.
    fewer = feature_set_id("default_v1", DEFAULT[:-1], IndicatorConfig(), "rank")
    assert engine_feature_set(fewer, IndicatorConfig(), "rank") == fewer


def test_batch_source_prepare_cleans_once_and_keeps_readiness():
    """A replay cleans the whole history before the first bar (BatchFeatureSource.prepare):
    each bar then gets 0 where a value was NaN or inf, and `ready` where every required
    feature was finite, as the engine's per-bar check gives them."""
    from tradingd.features.catalog import Catalog as Cat
    from tradingd.features.source import BatchFeatureSource

    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(80, 3)), axis=0))
    close[30:35, 1] = np.nan  # a gap: NaN features after it until the windows refill
    panel = panel_from(close)
    names = ("ret_1", "rsi_14")
    raw = compute_batch(panel, names, Cat())
    src = BatchFeatureSource(panel, names, Cat())
    ready_at = src.prepare(("rsi_14",))
    assert src.prepare(("rsi_14",)) is ready_at  # the same set again: the same answer
    with pytest.raises(RuntimeError, match="already prepared"):
        src.prepare(("ret_1",))  # the raw values are gone: refused, not wrong
    times = panel.datetimes()
    for bar_i, t in enumerate(times):
        bar = panel.row(bar_i, t)
        got = src.at(bar)
        for n in names:
            finite = np.isfinite(raw[n][bar_i])
            assert (got[n][~finite] == 0.0).all()
            np.testing.assert_array_equal(got[n][finite], raw[n][bar_i][finite])
        np.testing.assert_array_equal(ready_at(bar), np.isfinite(raw["rsi_14"][bar_i]))
    first, last = panel.row(0, times[0]), panel.row(79, times[79])
    assert not ready_at(first).any() and ready_at(last).all()
    assert BatchFeatureSource(panel, names, Cat()).prepare(())(last) is None


def test_batch_source_release_drops_the_histories_and_refuses_later_bars():
    """After a replay's last bar the engine releases the whole histories (they were the
    largest thing left when the report is read back): the arrays are freed, and a bar asked
    for afterwards is an error that says why, not an empty row."""
    import gc
    import weakref

    from tradingd.features.catalog import Catalog as Cat
    from tradingd.features.source import BatchFeatureSource

    rng = np.random.default_rng(6)
    panel = panel_from(100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(40, 2)), axis=0)))
    src = BatchFeatureSource(panel, ("ret_1", "rsi_14"), Cat())
    ready_at = src.prepare(("rsi_14",))
    times = panel.datetimes()
    bar = panel.row(30, times[30])
    values = weakref.ref(src.at(bar)["rsi_14"].base)
    ready = weakref.ref(ready_at(bar).base)
    stranger = panel.row(0, times[0] - (times[1] - times[0]))
    with pytest.raises(KeyError, match="no bar at"):
        src.at(stranger)
    src.release()
    gc.collect()
    assert values() is None and ready() is None
    assert src.names == ("ret_1", "rsi_14")
    for call in (src.at, ready_at):
        with pytest.raises(RuntimeError, match=r"after release\(\)"):
            call(bar)
    with pytest.raises(RuntimeError, match=r"to prepare after release\(\)"):
        src.prepare(("ret_1",))


def test_a_batch_source_read_from_its_cache_releases_its_histories_too(tmp_path):
    """From the feature cache, the whole histories are the cached values and the packed
    bits of where they were finite: release drops both."""
    import gc
    import weakref

    from tradingd.features.batch_cache import FeatureCache
    from tradingd.features.catalog import Catalog as Cat
    from tradingd.features.source import BatchFeatureSource

    rng = np.random.default_rng(7)
    panel = panel_from(100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(40, 2)), axis=0)))
    cache = FeatureCache(tmp_path, 1 << 30)
    BatchFeatureSource(panel, ("rsi_14",), Cat(), cache=cache).prepare(("rsi_14",))
    src = BatchFeatureSource(panel, ("rsi_14",), Cat(), cache=cache)
    assert src._finite_bits is not None  # read from the cache, not computed
    bits = weakref.ref(src._finite_bits)
    ready_at = src.prepare(("rsi_14",))
    bar = panel.row(30, panel.datetimes()[30])
    values = weakref.ref(src.at(bar)["rsi_14"].base)
    assert ready_at(bar).all()
    src.release()
    gc.collect()
    assert values() is None and bits() is None


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 21), st.integers(0, 2**32 - 1))
def test_a_symbols_features_do_not_depend_on_its_neighbours(n, seed):
    """Per-symbol features of a wide panel equal those of each symbol's own one-column panel,
    bit for bit: compute_batch works through the symbols in blocks (transposed), so a symbol
    on a block's edge, one with no bar at all, or one with splits must come out as alone."""
    rng = np.random.default_rng(seed)
    t = 80
    close = np.exp(np.cumsum(rng.normal(0, 0.02, (t, n)), axis=0)) * 40
    close[rng.random((t, n)) < 0.05] = np.nan
    if n > 2:
        close[:, rng.integers(n)] = np.nan  # a symbol without any bar
    volume = rng.integers(1_000, 90_000, (t, n)).astype(float)
    volume[np.isnan(close)] = np.nan
    split = np.ones((t, n))
    hit = rng.random((t, n)) < 0.02
    split[hit] = rng.choice([2.0, 3.0, 0.5], hit.sum())
    times = np.arange(t).astype("datetime64[D]").astype("datetime64[ns]")
    fields = (close * 1.001, close * 1.01, close * 0.99, close, volume, split, np.zeros((t, n)))
    wide = Panel(times, tuple(f"S{j}" for j in range(n)), *fields)
    names = ["return_1", "return_10", "sma_5", "volatility_10", "rsi_14", "obv", "lag_2_return_3"]
    got = compute_batch(wide, names)
    for j in range(n):
        alone = Panel(times, (f"S{j}",), *(f[:, j : j + 1] for f in fields))
        own = compute_batch(alone, names)
        for name in names:
            assert got[name][:, j].tobytes() == own[name][:, 0].tobytes(), (name, j)
