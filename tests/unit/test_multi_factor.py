"""The multi-factor signal: factors from the catalogue, normalised across the universe at the
bar, weighted by factor and group, one score per symbol in [-1, 1] (NaN: no view)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import run_engine
from hypothesis import given, settings
from hypothesis import strategies as st
from plugin_context import bar_context

from tradingd.config import ConfigError, PluginSpec, build
from tradingd.engine.plugins import load_plugin
from tradingd.features.catalog import Catalog
from tradingd_plugins.signals.multi_factor import (
    GroupWeights,
    MeanReversionWeights,
    MomentumWeights,
    MultiFactor,
    MultiFactorConfig,
    VolatilityWeights,
)

MOMENTUM = ("rsi_14", "macd_hist_norm", "roc_10", "trend_5_20")
VOLATILITY = ("natr_14", "bb_position", "vol_regime_20_120")
MEAN_REVERSION = ("rsi_div_14_14", "bb_reversion", "rsi_obos_14_30_70")
ALL = (*MOMENTUM, *VOLATILITY, *MEAN_REVERSION)


def features(n, seed=0, **override):
    """Plausible values of every default feature for n symbols (override some by name)."""
    rng = np.random.default_rng(seed)
    f = {
        "rsi_14": rng.uniform(0.2, 0.8, n),
        "macd_hist_norm": rng.normal(0, 0.005, n),
        "roc_10": rng.normal(0, 0.05, n),
        "trend_5_20": rng.normal(0, 0.02, n),
        "natr_14": rng.uniform(0.01, 0.04, n),
        "bb_position": rng.uniform(-0.2, 1.2, n),
        "vol_regime_20_120": rng.uniform(0.6, 1.6, n),
        "rsi_div_14_14": rng.normal(0, 1.5, n),
        "bb_reversion": np.where(rng.random(n) < 0.3, rng.normal(0, 0.2, n), 0.0),
        "rsi_obos_14_30_70": np.where(rng.random(n) < 0.3, rng.uniform(-1, 1, n), 0.0),
    }
    f.update({k: np.asarray(v, float) for k, v in override.items()})
    return f


def syms(n):
    return tuple(f"S{i}" for i in range(n))


def plugin(n=4, **cfg):
    return MultiFactor(MultiFactorConfig(**cfg), syms(n))


# ----------------------------------------------------------------------------- features


def test_required_features_are_exactly_the_factors_read_and_in_the_catalogue():
    p = plugin()
    assert p.required_features() == ALL
    cat = Catalog()
    for name in p.required_features():
        cat.node(name)  # every factor is a catalogue feature (unknown names raise)
    # a plugin reads nothing it did not ask for
    f = features(4)
    seen = []

    class Spy(dict):
        def __getitem__(self, k):
            seen.append(k)
            return super().__getitem__(k)

    p.score(dataclasses.replace(bar_context(syms(4)), features=Spy(f)))
    assert set(seen) == set(ALL)


def test_zero_weights_drop_their_features_and_periods_follow_the_config():
    p = plugin(
        momentum=MomentumWeights(macd=0.0),
        volatility=VolatilityWeights(atr=2.0, bollinger_position=0.0, volatility_regime=0.0),
        group_weights=GroupWeights(mean_reversion=0.0),
        rsi_period=7,
        atr_period=21,
    )
    assert p.required_features() == ("rsi_7", "roc_10", "trend_5_20", "natr_21")
    p = plugin(group_weights=GroupWeights(momentum=0.0, volatility=0.0, mean_reversion=1.0))
    assert p.required_features() == ("rsi_div_14_14", "bb_reversion", "rsi_obos_14_30_70")
    p = plugin(divergence_bars=5, oversold=20, overbought=80, vol_short=10, vol_long=60)
    assert {"rsi_div_14_5", "rsi_obos_14_20_80", "vol_regime_10_60"} <= set(p.required_features())


# ----------------------------------------------------------------------------- ordering


def test_strongest_momentum_features_rank_highest_in_the_momentum_group():
    n = 6
    f = features(n, seed=3)
    for name in MOMENTUM:  # S4 leads on every momentum feature, S1 trails on all
        f[name][4] = f[name].max() + 0.01
        f[name][1] = f[name].min() - 0.01
    for normalize in ("rank", "zscore"):
        p = plugin(n, normalize=normalize)
        mom = p.group_scores(bar_context(syms(n), f))["momentum"]
        assert np.argmax(mom) == 4 and np.argmin(mom) == 1
        if normalize == "rank":
            assert mom[4] == pytest.approx(1.0) and mom[1] == pytest.approx(-1.0)
    # with only the momentum group weighted, it decides the final order too
    only = plugin(n, group_weights=GroupWeights(momentum=1.0, volatility=0.0, mean_reversion=0))
    s = only.score(bar_context(syms(n), f))
    assert np.argmax(s) == 4 and np.argmin(s) == 1


def test_high_atr_and_rising_volatility_score_lower():
    n = 5
    f = features(n, seed=1)
    f["natr_14"] = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    f["vol_regime_20_120"] = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    f["bb_position"] = np.full(n, 0.5)
    vol = plugin(n).group_scores(bar_context(syms(n), f))["volatility"]
    # rank: natr and regime each -1 .. 1 reversed, bb_position tied at 0; weights 1/3 each
    np.testing.assert_allclose(vol, -2 / 3 * np.array([-1, -0.5, 0, 0.5, 1]))


def _two_camps():
    """A leads on momentum, B on mean reversion, C sits in the middle; volatility is flat."""
    f = {}
    for name in MOMENTUM:
        f[name] = np.array([3.0, 1.0, 2.0])
    for name in MEAN_REVERSION:
        f[name] = np.array([1.0, 3.0, 2.0])
    for name in VOLATILITY:
        f[name] = np.array([0.5, 0.5, 0.5])
    return bar_context(("A", "B", "C"), f)


def test_group_weights_change_the_order_as_computed_by_hand():
    ctx = _two_camps()
    # rank-normalised: momentum group A=+1 B=-1 C=0, mean reversion A=-1 B=+1 C=0, volatility 0
    default = plugin(3).score(ctx)  # groups 0.5 / 0.25 / 0.25
    np.testing.assert_allclose(default, np.tanh(np.array([0.25, -0.25, 0.0]) / 0.5))
    assert default[0] > default[2] > default[1]
    mr = plugin(3, group_weights=GroupWeights(momentum=0.2, volatility=0.0, mean_reversion=0.8))
    flipped = mr.score(ctx)
    np.testing.assert_allclose(flipped, np.tanh(np.array([-0.6, 0.6, 0.0]) / 0.5))
    assert flipped[1] > flipped[2] > flipped[0]
    # weights need not sum to 1: only their proportions count
    scaled = plugin(3, group_weights=GroupWeights(momentum=2.0, volatility=0.0, mean_reversion=8))
    np.testing.assert_allclose(scaled.score(ctx), flipped)


def test_factor_weights_within_a_group_and_negative_weights():
    f = features(3, seed=0)
    f["rsi_14"] = np.array([0.7, 0.5, 0.3])  # A > B > C
    f["roc_10"] = np.array([-0.1, 0.0, 0.1])  # C > B > A
    ctx = bar_context(("A", "B", "C"), f)
    only_mom = GroupWeights(momentum=1.0, volatility=0.0, mean_reversion=0.0)
    w = MomentumWeights(rsi=3.0, macd=0.0, roc=1.0, price_momentum=0.0)
    s = plugin(3, group_weights=only_mom, momentum=w, output="rank").score(ctx)
    assert s[0] > s[1] > s[2]  # rsi outweighs roc 3:1
    # by hand: 0.75 * rsi_rank + 0.25 * roc_rank = [0.5, 0, -0.5]
    s = plugin(3, group_weights=only_mom, momentum=w).score(ctx)
    np.testing.assert_allclose(s, np.tanh(np.array([0.5, 0.0, -0.5]) / 0.5))
    # a negative weight turns the factor around
    neg = MomentumWeights(rsi=-1.0, macd=0.0, roc=0.0, price_momentum=0.0)
    s = plugin(3, group_weights=only_mom, momentum=neg).score(ctx)
    assert s[2] > s[1] > s[0]


def test_rank_output_spreads_scores_over_minus_one_to_one():
    n = 7
    s = plugin(n, output="rank").score(bar_context(syms(n), features(n, seed=9)))
    np.testing.assert_allclose(np.sort(s), np.linspace(-1, 1, n))


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("normalize", ["rank", "zscore"])
def test_adding_a_constant_to_a_factor_across_symbols_changes_nothing(normalize):
    n = 6
    f = features(n, seed=4)
    p = plugin(n, normalize=normalize)
    base = p.score(bar_context(syms(n), f))
    shifted = {
        k: v + (0.37 if k in ("rsi_14", "natr_14", "rsi_div_14_14") else 0.0) for k, v in f.items()
    }
    np.testing.assert_allclose(p.score(bar_context(syms(n), shifted)), base, atol=1e-12)
    # and scaling a factor by a positive number neither
    scaled = {k: v * (25.0 if k == "macd_hist_norm" else 1.0) for k, v in f.items()}
    np.testing.assert_allclose(p.score(bar_context(syms(n), scaled)), base, atol=1e-12)
    # ... while a change that is not the same for every symbol does change scores
    f2 = dict(f, roc_10=f["roc_10"] + np.arange(n) * 0.1)
    assert not np.allclose(p.score(bar_context(syms(n), f2)), base)


def test_zscore_caps_outliers():
    n = 20
    f = features(n, seed=2)
    f["roc_10"][0] = 1e3
    p = plugin(n, normalize="zscore", z_cap=1.5)
    z = p.factor_scores(bar_context(syms(n), f))["roc"]
    assert z[0] == 1.5 and np.all(np.abs(z) <= 1.5)
    uncapped = plugin(n, normalize="zscore", z_cap=0.0)
    assert uncapped.factor_scores(bar_context(syms(n), f))["roc"][0] > 4


@pytest.mark.parametrize("normalize", ["rank", "zscore"])
def test_symbols_not_ready_get_no_view_and_do_not_move_the_others(normalize):
    f5 = features(5, seed=6)
    p5, p3 = plugin(5, normalize=normalize), plugin(3, normalize=normalize)
    keep = [0, 2, 4]
    alone = p3.score(bar_context(syms(3), {k: v[keep] for k, v in f5.items()}))
    # S1 is not ready (the engine hands a plugin 0.0 there), S3 has no bar
    engine_like = {k: np.where([True, False, True, True, True], v, 0.0) for k, v in f5.items()}
    s = p5.score(
        bar_context(
            syms(5),
            engine_like,
            tradable=[True, True, True, False, True],
            ready=[True, False, True, False, True],
        )
    )
    assert np.isnan(s[[1, 3]]).all()
    np.testing.assert_allclose(s[keep], alone, atol=1e-12)
    # the same from NaN feature values (no `ready` mask, e.g. a hand-built context)
    with_nan = {k: v.copy() for k, v in f5.items()}
    with_nan["bb_reversion"][1] = np.nan
    with_nan["rsi_14"][3] = np.inf
    s = p5.score(bar_context(syms(5), with_nan))
    assert np.isnan(s[[1, 3]]).all()
    np.testing.assert_allclose(s[keep], alone, atol=1e-12)


def test_fewer_than_two_ready_symbols_is_no_view():
    f = features(3)
    s = plugin(3).score(bar_context(syms(3), f, ready=[False, True, False]))
    assert np.isnan(s).all()


# ----------------------------------------------------------------------------- config


def _config_error(params):
    with pytest.raises(ConfigError) as e:
        build(MultiFactorConfig, params, "signals[0].params")
    return str(e.value)


def test_config_errors_name_the_bad_key():
    assert "signals[0].params.momentm" in _config_error({"momentm": {}})
    msg = _config_error({"momentum": {"rsii": 1.0}})
    assert "signals[0].params.momentum.rsii" in msg and "price_momentum" in msg  # valid keys
    assert "group_weights.volatility" in _config_error({"group_weights": {"volatility": "x"}})
    assert "normalize" in _config_error({"normalize": "median"})
    assert "output" in _config_error({"output": "sigmoid"})
    assert "scale" in _config_error({"scale": 0.0})
    assert "trend_fast" in _config_error({"trend_fast": 20, "trend_slow": 20})
    assert "vol_short" in _config_error({"vol_short": 1})
    assert "oversold" in _config_error({"oversold": 70, "overbought": 30})
    assert "divergence_bars" in _config_error({"divergence_bars": 0})
    msg = _config_error(
        {
            "group_weights": {"momentum": 1.0, "volatility": 0.0, "mean_reversion": 0.0},
            "momentum": {"rsi": 0.0, "macd": 0.0, "roc": 0.0, "price_momentum": 0.0},
        }
    )
    assert "group_weights.momentum" in msg
    msg = _config_error({"group_weights": {"momentum": 0, "volatility": 0, "mean_reversion": 0}})
    assert "group_weights" in msg
    with pytest.raises(ValueError, match="rsi_divergence"):
        MeanReversionWeights(rsi_divergence=float("nan"))


def test_loads_through_the_entry_point_with_nested_params():
    spec = PluginSpec(
        "multi_factor",
        params={"normalize": "zscore", "mean_reversion": {"bollinger_reversion": 0.0}},
    )
    p = load_plugin(spec, "signal", syms(3), "signals[0]")
    assert isinstance(p, MultiFactor) and p.config.normalize == "zscore"
    assert "bb_reversion" not in p.required_features()
    with pytest.raises(ConfigError, match=r"signals\[0\]\.params\.volatility\.atrr"):
        load_plugin(
            PluginSpec("multi_factor", params={"volatility": {"atrr": 1}}),
            "signal",
            syms(3),
            "signals[0]",
        )


# ----------------------------------------------------------------------------- property

# Finite values far beyond any feature's range, plus the NaN and inf a not-ready or broken
# value could be (the engine hands plugins finite values, but a plugin must not rely on it).
_value = st.one_of(
    st.floats(-1e12, 1e12),
    st.sampled_from([0.0, 0.5, 1.0, np.nan, np.inf, -np.inf]),
)
_weight = st.sampled_from([0.0, 0.5, 1.0, -1.0, 3.0])


@st.composite
def _case(draw):
    n = draw(st.integers(1, 8))
    feats = {k: draw(st.lists(_value, min_size=n, max_size=n)) for k in ALL}
    ready = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    group = GroupWeights(*(draw(st.sampled_from([0.0, 0.25, 1.0])) for _ in range(3)))
    if not any(dataclasses.astuple(group)):
        group = GroupWeights()
    cfg = dict(
        group_weights=group,
        momentum=MomentumWeights(draw(_weight), 1.0, draw(_weight), draw(_weight)),
        volatility=VolatilityWeights(draw(_weight), draw(_weight), 1.0),
        mean_reversion=MeanReversionWeights(draw(_weight), 1.0, draw(_weight)),
        normalize=draw(st.sampled_from(["rank", "zscore"])),
        z_cap=draw(st.sampled_from([0.0, 3.0])),
        output=draw(st.sampled_from(["tanh", "rank"])),
        scale=draw(st.sampled_from([0.01, 0.5, 10.0])),
    )
    return n, feats, ready, cfg


@settings(max_examples=300, deadline=None)
@given(_case())
def test_scores_are_in_minus_one_to_one_or_nan(case):
    n, feats, ready, cfg = case
    p = MultiFactor(MultiFactorConfig(**cfg), syms(n))
    ctx = bar_context(syms(n), feats, ready=ready)
    s = p.score(ctx)
    assert s.shape == (n,)
    assert np.all(np.isnan(s) | ((s >= -1.0) & (s <= 1.0)))
    ok = p.universe(ctx)
    assert np.isnan(s[~ok]).all()  # no view outside the universe, ever
    if ok.sum() >= 2:
        assert np.isfinite(s[ok]).all()  # and a view for everyone in it


# ----------------------------------------------------------------------------- engine


@pytest.mark.integration
async def test_backtest_on_bundled_data_trades_with_the_catalogue_features(engine_config):
    """The real engine, the bundled S&P 500 / NASDAQ series, multi_factor as the signal."""
    cfg = dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, start="2003-01-01", end="2004-12-31"),
        signals=(PluginSpec("multi_factor"),),
    )
    engine, result, rows = await run_engine(cfg, "backtest", None)
    ((plugin_, _),) = engine.pipeline.signals
    assert isinstance(plugin_, MultiFactor)
    assert set(plugin_.required_features()) == set(ALL)
    assert set(ALL) <= set(engine.features.names)  # computed by the engine, not the plugin
    assert result.orders > 0 and len(rows["fills"]) > 0
    assert {o["symbol"] for o in rows["orders"]} <= set(engine.symbols)
