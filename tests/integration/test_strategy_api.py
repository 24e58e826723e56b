"""The specification's Strategy and Backtesting APIs (tradingd.strategy_api) are facades: the
same numbers as the plugins, the planner and `tradingd backtest` they front."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import hypothesis
import numpy as np
import pandas as pd
import pytest
from hypothesis import strategies as st
from plugin_context import bar_context, make_context

from tradingd.app import load_data, run_id_for
from tradingd.backtest import run_backtest
from tradingd.brokers.simulated import SimulatedBroker
from tradingd.config import Config, PluginSpec, build, load_config
from tradingd.core.errors import DataError
from tradingd.core.orders import bracket_orders
from tradingd.core.types import Leg
from tradingd.engine.engine import Engine
from tradingd.engine.planner import OrderPlanner
from tradingd.feeds.loaders import load_frame
from tradingd.inference import onnx
from tradingd.strategy_api import (
    BacktestEngine,
    EnsemblePredictor,
    PositionSizer,
    RiskManager,
    SignalGenerator,
    panel_from_frames,
)
from tradingd_plugins.risk.limits import (
    MaxOpenPositions,
    MaxOpenPositionsConfig,
    MaxPosition,
    MaxPositionConfig,
)
from tradingd_plugins.signals.ml_ensemble import default_model_dir
from tradingd_plugins.signals.multi_factor import MultiFactor, MultiFactorConfig
from tradingd_plugins.sizing.garch import garch_volatility, log_returns
from tradingd_plugins.sizing.kelly_garch import kelly_fraction, target_weights

ROOT = Path(__file__).resolve().parents[2]
START, END = "2017-01-01", "2017-12-31"  # a year of trading after 18 years of warm-up
SPEC_SIGNALS = ["ml_ensemble", "multi_factor"]


def bundled_frames() -> dict[str, pd.DataFrame]:
    """The default data source, as a notebook user gets it: one OHLCV frame per symbol."""
    frame = load_frame("bundled")
    return {s: g.drop(columns="symbol").set_index("time") for s, g in frame.groupby("symbol")}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    # The ML plugin finds var/models/current under the cwd, and `tradingd backtest` keeps its
    # prediction and GARCH caches there.
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spec_objects():
    return SignalGenerator(), PositionSizer(), RiskManager(), EnsemblePredictor()


# ----------------------------------------------------------------------------- (1) backtest


def equivalent_config(tmp_path: Path) -> Config:
    """What a `tradingd backtest` user writes for the specification's strategy: the default
    config plus an overlay (strategy sections only where the defaults are something else)."""
    base = Config()
    overlay = f"""
[run]
start = "{START}"
end = "{END}"
[costs]
commission_pct = 0.001
slippage_pct = 0.0005
[storage]
url = "sqlite:///:memory:"
[log]
audit_dir = "{tmp_path / "audit"}"
"""
    if [s.name for s in base.signals] != SPEC_SIGNALS:
        overlay += """
[[signals]]
name = "ml_ensemble"
weight = 0.6
[[signals]]
name = "multi_factor"
weight = 0.4
"""
    if base.sizing.name != "kelly_garch":
        overlay += '[sizing]\nname = "kelly_garch"\nparams = {}\n'
    path = tmp_path / "overlay.toml"
    path.write_text(overlay)
    return load_config([ROOT / "config" / "default.toml", path], env={})


async def test_run_backtest_equals_tradingd_backtest_on_the_bundled_data(in_tmp):
    config = equivalent_config(in_tmp)
    engine = BacktestEngine(initial_capital=100000.0, commission=0.001, slippage=0.0005)
    objects = spec_objects()

    # The facade's configuration is the one a CLI user writes (the audit folder aside).
    built = engine.config_for(*objects, start=START, end=END)
    public = {k: v for k, v in built.to_public_dict().items() if k != "log"}
    assert public == {k: v for k, v in config.to_public_dict().items() if k != "log"}
    assert run_id_for(built, "backtest") == run_id_for(config, "backtest")

    # Called from inside a running event loop, as in a notebook: the run goes to a thread.
    out = engine.run_backtest(bundled_frames(), *objects, start=START, end=END)
    ref = await run_backtest(config, output_dir=in_tmp / "ref")  # what `tradingd backtest` runs

    # The same decisions on data passed from Python: the record says so, and its id with it.
    assert out["config"].data.source == "frames" and out["run_id"] != ref.run_id
    assert out["metrics"]["models"][0]["plugin"] == "ml_ensemble"
    assert len(out["fills"]) > 10  # the strategy trades
    assert out["final_equity"] == pytest.approx(ref.result.equity[-1], rel=1e-12)
    curve = out["equity_curve"]
    assert list(curve.index) == list(pd.DatetimeIndex(ref.result.times))
    np.testing.assert_allclose(curve.to_numpy(), ref.result.equity, rtol=1e-12)

    def as_facade(rows):  # the ids (the run's, and the order ids made from it) aside
        return pd.DataFrame(rows).replace(ref.run_id, out["run_id"], regex=True)

    pd.testing.assert_frame_equal(out["fills"], as_facade(ref.fills), rtol=1e-12)
    pd.testing.assert_frame_equal(out["orders"], as_facade(ref.orders), rtol=1e-12)
    assert out["trades"] is out["fills"]
    assert set(out["metrics"]) == set(ref.summary)
    # The data by their digest: the frames' (config.json's data.digest); the bundled series
    # none.
    data = out["metrics"]["data"]
    assert data == {"source": "frames", "digest": out["config"].data.digest}
    assert ref.summary["data"] == {"source": "bundled"}
    for key, value in {**ref.summary, "run_id": out["run_id"], "data": data}.items():
        got = out["metrics"][key]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-9, nan_ok=True), key
        else:
            assert got == value, key
    assert out["output_dir"] is None  # nothing written without an output folder


def test_frames_make_the_panel_the_loaders_make(in_tmp):
    config = equivalent_config(in_tmp)
    ours = panel_from_frames(bundled_frames(), config, end=END)
    theirs = load_data(config)
    assert ours.symbols == theirs.symbols == ("NASDAQ", "SP500")
    np.testing.assert_array_equal(ours.times, theirs.times)
    for field in ("open", "high", "low", "close", "volume", "split", "dividend"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    # A yfinance-style frame (capitalised columns, an unnamed DatetimeIndex) is accepted too.
    raw = bundled_frames()["SP500"][["open", "high", "low", "close", "volume"]]
    raw = raw.rename(columns=str.capitalize).rename_axis(None)
    alt = panel_from_frames({"SP500": raw}, config, end=END)
    np.testing.assert_array_equal(alt.close[:, 0], theirs.close[:, 1])


def _day_first(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The frames with their dates as text, day first (13/01/1999), in a time column."""
    out = {}
    for symbol, df in frames.items():
        text = df.rename_axis("time").reset_index()
        out[symbol] = text.assign(time=text["time"].dt.strftime("%d/%m/%Y"))
    return out


def test_frames_with_text_dates_are_read_with_data_date_format(in_tmp):
    """The frames path ignored `data.date_format`: day-first text dates were refused even
    with the format set, where the file loaders read them with it."""
    frames = bundled_frames()
    base = Config()
    config = dataclasses.replace(base, data=dataclasses.replace(base.data, date_format="%d/%m/%Y"))
    ours = panel_from_frames(_day_first(frames), config, end=END)
    theirs = panel_from_frames(frames, config, end=END)
    assert ours.symbols == theirs.symbols
    np.testing.assert_array_equal(ours.times, theirs.times)
    np.testing.assert_array_equal(ours.close, theirs.close)
    # The file loaders read the same text the same way.
    path = in_tmp / "day_first.csv"
    pd.concat([f.assign(symbol=s) for s, f in _day_first(frames).items()]).to_csv(path, index=False)
    loaded = load_data(
        dataclasses.replace(
            config,
            data=dataclasses.replace(config.data, source="csv", path=str(path)),
            run=dataclasses.replace(config.run, end=END),
        )
    )
    np.testing.assert_array_equal(ours.times, loaded.times)
    # And a run takes the base configuration's format.
    out = BacktestEngine(base_config=config).run_backtest(
        _day_first(frames), start="2017-11-01", end="2017-12-31"
    )
    assert out["equity_curve"].index[-1] == pd.Timestamp("2017-12-29", tz="UTC")
    # A format that does not read the text names the row and the value.
    month_first = dataclasses.replace(
        base, data=dataclasses.replace(base.data, date_format="%m/%d/%Y")
    )
    with pytest.raises(DataError, match=r"'13/01/1999'.*symbol=NASDAQ"):
        panel_from_frames(_day_first(frames), month_first)


def test_ambiguous_day_first_frames_are_refused_naming_where_the_format_is_set():
    """As the file loaders do, naming the row and the value; the advice points at the
    base configuration's data.date_format, the setting that reaches frames."""
    with pytest.raises(DataError) as err:
        panel_from_frames(_day_first(bundled_frames()))
    text = str(err.value)
    assert "'13/01/1999'" in text and "row=index" in text and "symbol=NASDAQ" in text
    assert "data.date_format" in text and "base_config" in text
    assert "[data]" not in text


def test_facade_objects_follow_the_built_in_defaults():
    base = Config()
    sg, ps, rm, _ = spec_objects()
    # The specification's limits are the defaults' (a drift in either is caught here).
    assert rm.plugin_specs(base.risk)[: len(base.risk)] == base.risk
    assert rm.orders == base.orders
    assert ps.config.kelly_multiplier == 0.5 and ps.config.target_vol == 0.15
    if base.sizing.name == "kelly_garch":
        assert ps.plugin_spec(base.sizing) == base.sizing
    if [s.name for s in base.signals] != SPEC_SIGNALS:
        pytest.skip(f"default signals are {[s.name for s in base.signals]}, not {SPEC_SIGNALS}")
    assert sg.plugin_specs(base.signals) == base.signals
    built = BacktestEngine().config_for(*spec_objects())
    assert (built.signals, built.sizing, built.risk, built.orders) == (
        base.signals,
        base.sizing,
        base.risk,
        base.orders,
    )


@pytest.mark.parametrize(
    "dropped",
    [
        ("max_open_positions",),
        ("max_open_positions", "drawdown_guard"),
        ("max_position", "max_open_positions", "drawdown_guard"),
    ],
    ids=["count", "count_and_drawdown", "all_three"],
)
def test_a_risk_plugin_the_chain_lacks_goes_where_the_built_in_chain_runs_it(dropped):
    """`RiskManager.plugin_specs` appended a missing `max_open_positions` after
    `portfolio_var`: the count then kept the largest of the targets VaR had cut, and a
    candidate a refusing rule dropped was never replaced. It goes after the refusing rules
    and before `max_gross_exposure` and VaR now, as in the built-in chain; the chain's own
    plugins (here `stale_data`) keep their places."""
    default = Config().risk
    base = tuple(s for s in default if s.name not in dropped)
    built = RiskManager(max_open_positions=7).plugin_specs(base)
    assert [s.name for s in built] == [s.name for s in default]
    assert dict((s.name, s) for s in built)["max_open_positions"].params == {
        "max_open_positions": 7
    }
    # A plugin the built-in chain has not keeps its place, after VaR here.
    with_stale = (*base, PluginSpec("stale_data"))
    names = [s.name for s in RiskManager().plugin_specs(with_stale)]
    assert names == [*(s.name for s in default), "stale_data"]
    engine = BacktestEngine(base_config=dataclasses.replace(Config(), risk=base))
    assert [s.name for s in engine.config_for(risk_manager=RiskManager()).risk] == [
        s.name for s in default
    ]


def test_config_for_maps_every_facade_parameter():
    sg = SignalGenerator(
        0.6,
        ml_weight=0.7,
        factor_weight=0.3,
        factor_weights={"rsi": 0.5, "atr": 0.25, "bollinger_reversion": 0.25},
    )
    ps = PositionSizer(kelly_fraction=0.25, target_volatility=0.10, refit_bars=5)
    rm = RiskManager(0.04, 0.15, 0.03, 0.06, max_open_positions=8, brackets=True)
    config = BacktestEngine(50_000.0, 0.002, 0.001).config_for(sg, ps, rm, start=START, end=END)
    assert (config.run.initial_capital, config.run.start, config.run.end) == (50_000.0, START, END)
    assert (config.costs.commission_pct, config.costs.slippage_pct) == (0.002, 0.001)
    ml, mf = config.signals
    assert (ml.name, ml.weight, ml.params["threshold"]) == ("ml_ensemble", 0.7, 0.6)
    assert (mf.name, mf.weight) == ("multi_factor", 0.3)
    effective = build(MultiFactorConfig, mf.params, "params").effective_weights()
    assert effective == pytest.approx({"rsi": 0.5, "atr": 0.25, "bollinger_reversion": 0.25})
    assert config.sizing.name == "kelly_garch"
    assert {
        k: config.sizing.params[k] for k in ("kelly_multiplier", "target_vol", "refit_bars")
    } == {
        "kelly_multiplier": 0.25,
        "target_vol": 0.10,
        "refit_bars": 5,
    }
    risk = {s.name: dict(s.params) for s in config.risk}
    assert risk["max_position"]["max_position_pct"] == 0.04
    assert risk["max_open_positions"]["max_open_positions"] == 8
    assert risk["drawdown_guard"]["max_drawdown_pct"] == 0.15
    o = config.orders
    assert (o.stop_loss_pct, o.take_profit_pct, o.brackets) == (0.03, 0.06, True)
    assert config.storage.url == "sqlite:///:memory:"
    # None keeps the default configuration's part as it is.
    plain = BacktestEngine().config_for()
    assert (plain.signals, plain.sizing, plain.risk) == (
        Config().signals,
        Config().sizing,
        Config().risk,
    )


def test_the_max_position_size_caps_the_sizing_as_well_as_the_risk_rule():
    """RiskManager(max_position_size_pct=0.10) set only the risk rule's cap; the sizing kept
    its own 5%, so anything above 0.05 changed nothing. It is one setting: both caps."""
    from structlog.testing import capture_logs

    def caps(*objects):
        with capture_logs() as logs:
            config = BacktestEngine().config_for(None, *objects)
        risk = {s.name: dict(s.params) for s in config.risk}["max_position"]["max_position_pct"]
        warned = [e for e in logs if e["event"] == "strategy_api.max_position_differs"]
        return config.sizing.params["max_position"], risk, len(warned)

    assert caps(None, RiskManager(max_position_size_pct=0.10)) == (0.10, 0.10, 0)
    assert caps(PositionSizer(kelly_fraction=1.0), RiskManager(0.10)) == (0.10, 0.10, 0)
    # A sizer given its own cap: the smaller holds, and the difference is said.
    assert caps(PositionSizer(max_position=0.08), RiskManager(0.10)) == (0.08, 0.10, 1)
    assert caps(PositionSizer(max_position=0.20), RiskManager(0.10)) == (0.10, 0.10, 1)
    assert caps(PositionSizer(max_position=0.10), RiskManager(0.10)) == (0.10, 0.10, 0)
    # The defaults stay the default configuration's (the CLI's figures).
    default = BacktestEngine().config_for(None, PositionSizer(), RiskManager())
    assert (default.sizing, default.risk) == (Config().sizing, Config().risk)


# ----------------------------------------------------------------------------- (2) signals


def test_generate_ml_signal_is_the_ensemble_rule():
    sg = SignalGenerator()
    assert sg.generate_ml_signal(0.01, 0.60) == (1, 0.60)
    assert sg.generate_ml_signal(-0.01, 0.55) == (-1, 0.55)  # at the threshold: a signal
    assert sg.generate_ml_signal(0.01, 0.549) == (0, 0.549)
    assert sg.generate_ml_signal(0.0, 0.90) == (0, 0.90)
    # Against the predictor the ml_ensemble plugin uses.
    ep = EnsemblePredictor()
    pred = np.array([-0.02, -0.004, -0.001, 0.0, 0.0012, 0.003, 0.015])
    signal, conf = ep.generate_signal(pred, 0.55)
    for p, s, c in zip(pred, signal, conf, strict=True):
        assert sg.generate_ml_signal(p, c) == (int(s), c)


def test_multi_factor_score_is_the_weighted_sum_and_the_plugin_score():
    sg = SignalGenerator()
    # The specification's sum, by hand.
    assert sg.generate_multi_factor_score(
        pd.Series({"rsi": 0.5, "atr": -1.0, "x": 9.0}), {"rsi": 0.4, "atr": 0.1}
    ) == pytest.approx(0.1)
    # With the plugin's normalised factors and default weights: the plugin's sum before tanh.
    rng = np.random.default_rng(3)
    symbols = [f"S{i}" for i in range(7)]
    plugin = MultiFactor(MultiFactorConfig(), tuple(symbols))
    cols = plugin.required_features()
    feats = pd.DataFrame(rng.normal(0.0, 1.0, (7, len(cols))), index=symbols, columns=cols)
    z = sg.factor_scores(feats)
    raw = np.array([sg.generate_multi_factor_score(z.loc[s]) for s in symbols])
    expected = plugin.score(bar_context(symbols, {c: feats[c].to_numpy() for c in cols}))
    np.testing.assert_allclose(np.tanh(raw / MultiFactorConfig().scale), expected, rtol=1e-12)
    np.testing.assert_allclose(sg.multi_factor_scores(feats).to_numpy(), expected, rtol=1e-12)


def test_combine_signals_is_the_engines_weighted_mean():
    sg = SignalGenerator()  # 0.6 / 0.4
    action, score = sg.combine_signals(1, 0.7, 0.5)
    assert (action, score) == (1, pytest.approx(0.6 * 0.7 + 0.4 * 0.5))
    assert sg.combine_signals(0, 0.5, -0.3) == (-1, pytest.approx(-0.12))
    assert sg.combine_signals(-1, 0.8, 0.0) == (-1, pytest.approx(-0.48))
    assert sg.combine_signals(None, None, 0.25) == (1, 0.25)  # no ML view: the factor alone
    assert sg.combine_signals(0, 0.6, 0.0) == (0, 0.0)  # hold
    # Against Engine._score with ml_ensemble (signal x confidence) and multi_factor plugins.
    ep = EnsemblePredictor()
    pred = np.array([0.012, -0.006, 0.0005, np.nan, -0.02, 0.004])
    factor = np.array([-0.3, 0.2, 0.9, 0.4, np.nan, -0.05])
    signal, conf = ep.generate_signal(np.nan_to_num(pred), 0.55)
    ml_scores = np.where(np.isnan(pred), np.nan, signal * conf)
    for weights in ((0.6, 0.4), (2.0, 1.0)):
        sg = SignalGenerator(ml_weight=weights[0], factor_weight=weights[1])
        plugins = [
            (SimpleNamespace(name="ml_ensemble", score=lambda ctx: ml_scores), weights[0]),
            (SimpleNamespace(name="multi_factor", score=lambda ctx: factor), weights[1]),
        ]
        fake = SimpleNamespace(
            symbols=tuple("ABCDEF"),
            pipeline=SimpleNamespace(signals=plugins),
            _call=Engine._call,
            _slow_plugin_s=float("inf"),  # as the engine keeps log.slow_plugin_s = 0
            _scored=0,
            _no_view={},
        )
        engine_score = Engine._score(fake, SimpleNamespace(time=None))
        for i in range(6):
            no_view = np.isnan(pred[i])
            ml = (None, None) if no_view else sg.generate_ml_signal(pred[i], conf[i])
            action, score = sg.combine_signals(*ml, factor[i])
            assert score == engine_score[i] or (math.isnan(score) and np.isnan(engine_score[i]))
            assert action == int(np.sign(np.nan_to_num(engine_score[i])))


def test_parts_that_cancel_are_a_hold():
    """-1 x 0.6 x 0.6 + 0.9 x 0.4 is 0, but rounds to 5.55e-17: it was a buy."""
    action, score = SignalGenerator().combine_signals(-1, 0.6, 0.9)
    assert (action, score) == (0, pytest.approx(0.0, abs=1e-15))
    assert SignalGenerator().combine_signals(1, 0.6, -0.8)[0] == 1  # a real score keeps its sign


def test_a_facade_object_in_the_wrong_place_is_named():
    """run_backtest(data, PositionSizer()) failed deep inside: AttributeError: 'PositionSizer'
    object has no attribute 'plugin_specs'."""
    engine = BacktestEngine()
    with pytest.raises(
        TypeError, match=r"signal_generator must be a SignalGenerator.*PositionSizer"
    ):
        engine.run_backtest({"X": pd.DataFrame()}, PositionSizer())
    with pytest.raises(TypeError, match=r"risk_manager must be a RiskManager or None, got str"):
        engine.config_for(risk_manager="0.05")


def test_the_ml_threshold_is_the_model_cards_unless_given_however_model_dir_is_passed(in_tmp):
    """The facade compared its default 0.55 against the base configuration's card before
    the predictor's model_dir was swapped in: a model_dir in the base configuration got
    threshold 0.55 over its card's 0.9, the same model given as EnsemblePredictor(model_dir=)
    got its card's. Now the card decides unless a threshold is given, either way."""
    import json
    import shutil

    thr09 = in_tmp / "thr09"
    shutil.copytree(default_model_dir(), thr09)
    card = json.loads((thr09 / "card.json").read_text())
    card["ensemble"]["threshold"] = 0.9
    (thr09 / "card.json").write_text(json.dumps(card))
    in_base = dataclasses.replace(
        Config(),
        signals=(
            dataclasses.replace(
                _spec_named(Config(), "ml_ensemble"), params={"model_dir": str(thr09)}
            ),
            _spec_named(Config(), "multi_factor"),
        ),
    )

    def ml_params(sg: SignalGenerator, base: Config, predictor=None) -> dict:
        config = BacktestEngine(base_config=base).config_for(sg, ensemble_predictor=predictor)
        return dict(_spec_named(config, "ml_ensemble").params)

    by_predictor = EnsemblePredictor(model_dir=str(thr09))
    for given, expected in ((None, {}), (0.55, {"threshold": 0.55}), (0.6, {"threshold": 0.6})):
        sg = SignalGenerator() if given is None else SignalGenerator(given)
        assert ml_params(sg, in_base) == {"model_dir": str(thr09), **expected}, given
        assert ml_params(sg, Config(), by_predictor) == {"model_dir": str(thr09), **expected}
    # Not given: the generator's own rule uses the default configuration's card (shipped).
    assert SignalGenerator().confidence_threshold == 0.55
    assert not SignalGenerator().threshold_given and SignalGenerator(0.55).threshold_given


def _spec_named(config: Config, name: str):
    return next(s for s in config.signals if s.name == name)


def test_ensemble_predictor_is_the_engines():
    ep = EnsemblePredictor()
    card = onnx.ModelCard.load(default_model_dir()).data["ensemble"]
    assert isinstance(ep, onnx.EnsemblePredictor)
    assert ep.weights == card["weights"] and ep.residual_std == card["residual_std"]
    combined = ep.combine_predictions(
        {"cnn_lstm": np.array([0.01]), "random_forest": np.array([0.02])}
    )
    np.testing.assert_allclose(combined, [0.6 * 0.01 + 0.4 * 0.02])
    signal, conf = ep.generate_signal(combined, 0.55)
    assert signal[0] == 1.0 and conf[0] == pytest.approx(
        0.5 * (1 + math.erf(0.014 / card["residual_std"] / math.sqrt(2)))
    )


# ----------------------------------------------------------------------------- (2) sizing


def test_position_sizer_is_the_kelly_garch_rule():
    ps = PositionSizer()
    assert ps.calculate_kelly_criterion(0.55, 1.5) == pytest.approx(0.25)
    assert ps.calculate_kelly_criterion(0.55, 1.5) == kelly_fraction(0.55, 1.5)
    assert ps.calculate_kelly_criterion(0.4, 1.0) == pytest.approx(-0.2)  # no edge: unclamped
    # Prior Kelly 0.25 x half Kelly x confidence 0.6 x (15% / 25%) = 4.5% of 100,000.
    shares, capital = ps.get_position_size(0.6, 0.25, 100_000.0, 50.0)
    assert (shares, capital) == (90.0, pytest.approx(4_500.0))
    w = target_weights(np.array([0.6]), np.array([0.25**2 / 252]), 0.25, ps.config)[0]
    assert capital == pytest.approx(w * 100_000.0, rel=1e-12)
    # Scalar clipped to 2, weight capped at max_position 5%; whole shares.
    assert ps.get_position_size(1.0, 0.05, 100_000.0, 33.0) == (151.0, pytest.approx(5_000.0))
    assert ps.get_position_size(-0.8, 0.2, 100_000.0, 50.0) == (0.0, 0.0)  # long-only
    assert ps.get_position_size(0.8, float("nan"), 100_000.0, 50.0) == (0.0, 0.0)
    # Own trade statistics instead of the prior: 0.6 - 0.4 / 2 = 0.4 (x 0.5 x 0.2 x 1 = 4%).
    _, capital = ps.get_position_size(
        0.2, 0.15, 100_000.0, 50.0, win_rate=0.6, avg_win_loss_ratio=2.0
    )
    assert capital == pytest.approx(100_000.0 * 0.4 * 0.5 * 0.2 * 1.0)


def test_garch_volatility_is_arch_s_one_step_forecast():
    from arch import arch_model

    close = bundled_frames()["SP500"]["close"].to_numpy()
    r = log_returns(close)[-500:]
    ps = PositionSizer()
    vol = ps.calculate_garch_volatility(r)
    res = arch_model(r * 100, mean="Constant", vol="GARCH", p=1, q=1, rescale=False).fit(disp="off")
    by_arch = math.sqrt(res.forecast(horizon=1).variance.iloc[-1, 0] / 1e4 * 252)
    assert vol == pytest.approx(by_arch, rel=1e-6)
    assert vol == garch_volatility(r, min_obs=ps.config.min_fit_obs)
    # The plugin's window: only the last garch_window returns count.
    assert ps.calculate_garch_volatility(log_returns(close)) == pytest.approx(vol, rel=1e-12)
    assert math.isnan(ps.calculate_garch_volatility(r[:10]))  # below min_vol_obs: unknown


# ----------------------------------------------------------------------------- (2) risk


@pytest.mark.parametrize("side, sign", [("long", 1.0), ("short", -1.0)])
def test_stop_and_take_profit_are_the_planners_bracket_prices(side, sign):
    rm = RiskManager()
    entry = 123.457
    sl = rm.calculate_stop_loss_price(entry, side)
    tp = rm.calculate_take_profit_price(entry, side)
    hand = {"long": (120.99, 128.40), "short": (125.93, 118.52)}  # 2% / 4%, whole cents
    assert (sl, tp) == hand[side]
    planner = OrderPlanner(dataclasses.replace(rm.orders, brackets=True), "r", ("A",))
    ctx = make_context(["A"], np.array([[entry]]), equity=100_000.0)
    plan = planner.plan(np.array([sign * 0.05]), ctx, [])
    legs = {o.leg: o for o in plan.orders}
    assert legs[Leg.STOP_LOSS].stop_price == sl
    assert legs[Leg.TAKE_PROFIT].limit_price == tp
    qty = legs[Leg.ENTRY].quantity * sign
    assert [o.stop_price or o.limit_price for o in bracket_orders("r", ctx.time, "A", qty, tp, sl)][
        1:
    ] == [tp, sl]
    assert rm.calculate_stop_loss_price(entry, side.upper()) == sl
    buy_side = {"long": "buy", "short": "sell"}[side]
    assert rm.calculate_take_profit_price(entry, buy_side) == tp


def test_validate_new_trade_uses_the_limit_plugins():
    rm = RiskManager()
    assert rm.validate_new_trade("AAPL", "buy", 40, 100.0, 100_000.0, 3) == (True, "ok")
    ok, reason = rm.validate_new_trade("AAPL", "long", 60, 100.0, 100_000.0, 3)
    ctx = make_context(["AAPL"], equity=100_000.0)
    plugin = MaxPosition(MaxPositionConfig(0.05), ("AAPL",))
    assert (ok, reason) == (False, plugin.check(np.array([0.06]), ctx).verdicts[0].reason)
    assert reason == "target 0.0600 exceeds max position 0.0500"
    assert rm.validate_new_trade("AAPL", "short", 60, 100.0, 100_000.0, 0)[0] is False
    assert rm.validate_new_trade("AAPL", "buy", 40, 100.0, 100_000.0, 9) == (True, "ok")
    ok, reason = rm.validate_new_trade("AAPL", "buy", 40, 100.0, 100_000.0, 10)
    syms = [*"ABCDEFGHIJ", "AAPL"]
    ctx = make_context(syms, quantity=[1.0] * 10 + [0.0])
    plugin = MaxOpenPositions(MaxOpenPositionsConfig(10), tuple(syms))
    verdicts = plugin.check(np.r_[np.full(10, 0.01), 0.04], ctx).verdicts
    assert (ok, reason) == (False, verdicts[0].reason) == (False, "max open positions 10 reached")
    assert RiskManager(max_open_positions=12).validate_new_trade("X", "buy", 1, 10.0, 1e5, 10)[0]


def test_exit_conditions_follow_the_simulated_broker():
    rm = RiskManager()
    assert rm.check_position_exit_conditions(97.9, 100.0, "long")[0] is True
    assert "stop-loss" in rm.check_position_exit_conditions(98.0, 100.0, "long")[1]
    assert "take-profit" in rm.check_position_exit_conditions(104.0, 100.0, "long")[1]
    assert rm.check_position_exit_conditions(101.0, 100.0, "long")[0] is False
    assert "stop-loss" in rm.check_position_exit_conditions(102.5, 100.0, "short")[1]
    assert "take-profit" in rm.check_position_exit_conditions(95.0, 100.0, "sell")[1]
    assert rm.check_position_exit_conditions(99.0, 100.0, "short")[0] is False
    # The broker's triggers on a bar at that price (open = high = low).
    broker = SimpleNamespace(_slipped=lambda price, buy: price)
    for side, buy in (("long", False), ("short", True)):
        sl = rm.calculate_stop_loss_price(100.0, side)
        tp = rm.calculate_take_profit_price(100.0, side)
        for p in np.linspace(94.0, 106.0, 121):
            stop = SimulatedBroker._stop_hit(broker, sl, buy, p, p, p) is not None
            limit = SimulatedBroker._limit_hit(tp, buy, p, p, p) is not None
            exit_, reason = rm.check_position_exit_conditions(p, 100.0, side)
            assert exit_ == (stop or limit)
            assert reason.startswith("stop-loss") == stop
            assert reason.startswith("take-profit") == limit


# ----------------------------------------------------------------------------- (3) errors


def test_bad_inputs_are_clear_errors():
    rm = RiskManager()
    with pytest.raises(ValueError, match=r"'hold'.*valid: long, buy, short, sell"):
        rm.calculate_stop_loss_price(100.0, "hold")
    with pytest.raises(ValueError, match="'hold'"):
        rm.check_position_exit_conditions(100.0, 100.0, "hold")
    with pytest.raises(ValueError, match=r"entry_price.*-5"):
        rm.calculate_take_profit_price(-5.0, "long")
    with pytest.raises(ValueError, match=r"price .*-100"):
        rm.validate_new_trade("AAPL", "buy", 10, -100.0, 100_000.0, 0)
    with pytest.raises(ValueError, match="open_positions_count"):
        rm.validate_new_trade("AAPL", "buy", 10, 100.0, 100_000.0, -1)
    with pytest.raises(ValueError, match="price"):
        PositionSizer().get_position_size(0.6, 0.2, 100_000.0, -1.0)
    with pytest.raises(ValueError, match="max_position_size_pct"):
        RiskManager(max_position_size_pct=1.5)
    with pytest.raises(ValueError, match="kelly_multiplier"):
        PositionSizer(kelly_fraction=2.0)
    with pytest.raises(ValueError, match=r"unknown key.*bogus.*valid keys"):
        PositionSizer(bogus=1)
    with pytest.raises(ValueError, match="ml_weight"):
        SignalGenerator(ml_weight=0.0)
    with pytest.raises(ValueError, match="confidence_threshold"):
        SignalGenerator(confidence_threshold=0.4)
    with pytest.raises(ValueError, match=r"unknown factor.*'nope'"):
        SignalGenerator(factor_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="ml_signal"):
        SignalGenerator().combine_signals(2, 0.6, 0.1)
    with pytest.raises(KeyError, match="'macd'"):
        SignalGenerator().generate_multi_factor_score(pd.Series({"rsi": 0.1}), {"macd": 1.0})
    with pytest.raises(ValueError, match="initial_capital"):
        BacktestEngine(initial_capital=-1.0)
    with pytest.raises(ValueError, match="commission"):
        BacktestEngine(commission=5.0)
    with pytest.raises(ValueError, match="model card"):
        BacktestEngine().config_for(
            SignalGenerator(),
            ensemble_predictor=EnsemblePredictor({"cnn_lstm": 0.5, "random_forest": 0.5}),
        )


def test_bad_frames_are_data_errors_naming_symbol_and_row():
    frames = bundled_frames()
    engine = BacktestEngine()
    with pytest.raises(DataError, match=r"missing required column.*\['close'\].*symbol=SP500"):
        engine.run_backtest({**frames, "SP500": frames["SP500"].drop(columns="close")})
    bad = frames["NASDAQ"].copy()
    bad.loc[pd.Timestamp("2005-03-01"), "low"] = -1.0
    with pytest.raises(DataError, match=r"symbol=NASDAQ, row=2005-03-01"):
        engine.run_backtest({"NASDAQ": bad})
    with pytest.raises(TypeError, match=r"data\['SP500'\] must be a pandas DataFrame"):
        engine.run_backtest({"SP500": frames["SP500"].to_numpy()})
    with pytest.raises(ValueError, match="non-empty dict"):
        engine.run_backtest({})
    with pytest.raises(DataError, match=r"no rows.*symbol=SP500"):
        engine.run_backtest({"SP500": frames["SP500"].iloc[:0]})


def test_the_record_says_the_data_came_from_frames_and_the_id_follows_it(in_tmp):
    """config.json said source "bundled" whatever frames were passed, and the run id ignored
    them: a report replayed the bundled series, and other data counted as the same trial."""
    import json

    frames = bundled_frames()
    run = BacktestEngine().run_backtest
    out = run(frames, start="2017-10-01", end="2017-12-31", output_dir=in_tmp / "a")
    data = json.loads((in_tmp / "a" / "config.json").read_text())["data"]
    assert data["source"] == "frames"
    assert (data["symbols"], data["last"]) == (["NASDAQ", "SP500"], "2017-12-29 00:00:00")
    assert data["first"].startswith("1999-01-04") and len(data["digest"]) == 16
    again = run(frames, start="2017-10-01", end="2017-12-31")
    assert again["run_id"] == out["run_id"]  # the same frames: the same run
    other = {s: f.assign(close=f["close"] * 1.01) for s, f in frames.items()}
    other = {s: f.assign(high=f[["high", "close"]].max(axis=1)) for s, f in other.items()}
    moved = run(other, start="2017-10-01", end="2017-12-31")
    assert moved["run_id"] != out["run_id"]
    assert moved["config"].data.digest != out["config"].data.digest


def test_a_report_cannot_replay_a_record_of_frames_and_says_why(in_tmp, capsys):
    """`tradingd report --attribution` replays a run from its config.json: a facade run's
    record holds no bars, and the replay of the bundled series failed as "not the same
    run"; it now says the data came from Python."""
    import structlog

    from tradingd.__main__ import main

    BacktestEngine().run_backtest(
        bundled_frames(), start="2017-10-01", end="2017-12-31", output_dir=in_tmp / "a"
    )
    saved = structlog.get_config()
    try:
        code = main(["report", str(in_tmp / "a"), "--no-validation", "--attribution"])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2
    assert "its data was passed from Python" in err and "without --attribution" in err
    assert "Traceback" not in err


def test_output_dir_gets_the_runs_record_and_nothing_else_is_written(in_tmp):
    import json

    out = BacktestEngine().run_backtest(
        bundled_frames(), start="2017-10-01", end="2017-12-31", output_dir=in_tmp / "record"
    )
    record = in_tmp / "record"
    for name in (
        "equity.csv",
        "orders.csv",
        "fills.csv",
        "splits.csv",
        "config.json",
        "summary.json",
        "environment.json",
    ):
        assert (record / name).exists(), name
    summary = json.loads((record / "summary.json").read_text())
    env = json.loads((record / "environment.json").read_text())
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["pandas"] == pd.__version__
    assert summary["run_id"] == out["run_id"]
    assert summary["final_equity"] == pytest.approx(out["final_equity"], rel=1e-12)
    assert out["output_dir"] == record
    assert not (in_tmp / "var" / "tradingd.db").exists()  # the store was in memory
    assert not (in_tmp / "var" / "runs").exists()


def test_a_run_without_output_dir_writes_nothing_in_the_working_folder(in_tmp, monkeypatch):
    """The ML predictions and the GARCH fits kept between runs went to var/cache/ in the
    notebook's folder, whatever it was: they go to the user's cache folder, as the data and
    feature caches do, and a rerun still finds them there."""
    cache_home = in_tmp / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    cwd = in_tmp / "notebook"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    out = BacktestEngine().run_backtest(bundled_frames(), start="2017-10-01", end="2017-12-31")

    assert sorted(p.name for p in cwd.iterdir()) == []
    assert len(out["fills"]) > 0
    assert list((cache_home / "tradingd" / "predictions").glob("*.npz"))
    assert list((cache_home / "tradingd" / "garch").glob("garch-fits-*.json"))


def test_cache_folders_the_base_configuration_names_are_kept(in_tmp):
    base = Config()
    mine = {"ml": str(in_tmp / "my-predictions"), "garch": str(in_tmp / "my-fits")}
    base = dataclasses.replace(
        base,
        signals=tuple(
            dataclasses.replace(s, params={**s.params, "cache_dir": mine["ml"]})
            if s.name == "ml_ensemble"
            else s
            for s in base.signals
        ),
        sizing=dataclasses.replace(
            base.sizing, params={**base.sizing.params, "fit_cache_dir": mine["garch"]}
        ),
    )
    out = BacktestEngine(base_config=base).run_backtest(
        bundled_frames(), start="2017-10-01", end="2017-12-31"
    )
    assert list(Path(mine["ml"]).glob("*.npz"))
    assert list(Path(mine["garch"]).glob("garch-fits-*.json"))
    assert out["config"].sizing.params["fit_cache_dir"] == mine["garch"]


_NOTEBOOK = """
import sys, structlog
if sys.argv[1] == "configured":
    # The host's own choice: every level, to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from tradingd.feeds.loaders import load_frame
from tradingd.strategy_api import BacktestEngine
frame = load_frame("bundled")
data = {s: g.drop(columns="symbol").set_index("time") for s, g in frame.groupby("symbol")}
out = BacktestEngine().run_backtest(data, start="2017-10-01", end="2017-12-31")
print("RESULT", len(out["fills"]), structlog.is_configured())
"""


@pytest.mark.parametrize("host", ["unconfigured", "configured"])
def test_a_notebook_run_logs_warnings_only_unless_the_host_configured_logging(in_tmp, host):
    """structlog unconfigured prints every level: a notebook cell got a debug line per split
    and per risk verdict. A facade run keeps to warnings unless the host chose otherwise."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _NOTEBOOK, host],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=in_tmp,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1, out[-2000:]
    _, fills, configured = result[0].split()
    assert int(fills) > 0
    levels = {level for level in ("debug", "info") if f"[{level}" in out or f"level={level}" in out}
    if host == "unconfigured":
        assert levels == set(), out[-2000:]
        assert "[warning" in out  # the two index series have no sector: still said
        assert configured == "False"  # left unconfigured, as found
    else:
        assert levels == {"debug", "info"}, out[-2000:]
        assert configured == "True"


_INTERRUPTED_CELL = """
import asyncio, signal, threading, structlog
from tradingd import backtest
from tradingd.feeds.loaders import load_frame
from tradingd.strategy_api import BacktestEngine
frame = load_frame("bundled")
data = {s: g.drop(columns="symbol").set_index("time") for s, g in frame.groupby("symbol")}
replaying = threading.Event()
build_engine = backtest.build_engine
def build_and_tell(*args, **kwargs):
    engine = build_engine(*args, **kwargs)
    replaying.set()
    return engine
backtest.build_engine = build_and_tell
def interrupt():  # the notebook's "interrupt kernel", once the replay runs
    if replaying.wait(120):  # (to the main thread: another would leave its wait as it was)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
async def cell():  # as in Jupyter: an event loop runs (SIGINT: KeyboardInterrupt at once)
    return BacktestEngine().run_backtest(data, start="2017-01-01", end="2017-12-31")
try:
    asyncio.new_event_loop().run_until_complete(cell())
    print("RESULT finished")
except KeyboardInterrupt:
    left = [t.name for t in threading.enumerate() if t.name.startswith(("tradingd", "garch"))]
    print("RESULT interrupted", replaying.is_set(), left, structlog.is_configured())
"""


def _cell_results(code: str, cwd):  # type: ignore[no-untyped-def]
    """The RESULT lines a notebook cell's code printed, run in a fresh interpreter in `cwd`
    (a real SIGINT needs a process of its own), and the process for the failure message."""
    import subprocess
    import sys

    # SIGINT as a notebook kernel has it, whatever this test process passed on: a child
    # inherits an ignored or blocked SIGINT. Once (CI, 2026-12-07) both interrupt tests of
    # one pytest worker ran as if no interrupt came (a run "finished", a run waiting 300 s
    # for one), not reproduced since; the interrupt under test must arrive.
    arm = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", arm + code], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    return [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")], proc


def test_an_interrupted_notebook_run_stops_and_leaves_nothing_running(in_tmp):
    """An interrupt in a notebook (an event loop running: the run in a thread) raised at
    once and left the run going: its threads and worker processes, structlog set to
    warnings-only, and an orphan that wiped the user's logging set up since when it ended.
    The run stops now, and its clean-up is done when KeyboardInterrupt arrives."""
    result, proc = _cell_results(_INTERRUPTED_CELL, in_tmp)
    assert result == ["RESULT interrupted True [] False"], (proc.stdout + proc.stderr)[-3000:]


def test_the_logging_a_run_changed_is_restored_only_while_it_is_the_runs():
    """A run that ended after the user configured structlog (an interrupted one ending
    late) reset the user's configuration."""
    import structlog

    from tradingd.strategy_api import _warnings_only_unless_configured

    structlog.reset_defaults()
    try:
        with _warnings_only_unless_configured():
            assert structlog.is_configured()  # the run's warnings-only
        assert not structlog.is_configured()  # left as found
        with _warnings_only_unless_configured():
            users = structlog.make_filtering_bound_logger(logging.DEBUG)
            structlog.configure(wrapper_class=users)  # the user's, meanwhile
        assert structlog.get_config()["wrapper_class"] is users
    finally:
        structlog.reset_defaults()


_OVERLAPPING_RUNS = """
import signal, threading, structlog
from tradingd import strategy_api
from tradingd.feeds.loaders import load_frame
from tradingd.strategy_api import BacktestEngine
from tradingd_plugins.signals import multi_factor
# The interrupt gives up waiting at once: run A is still in its long bar when B starts, as
# after the 60 s an interrupted run gets.
strategy_api.INTERRUPT_WAIT_S = 0.0
frame = load_frame("bundled")
data = {s: g.drop(columns="symbol").set_index("time") for s, g in frame.groupby("symbol")}
runs, lock = [], threading.Lock()
in_bar = [threading.Event(), threading.Event()]
release = [threading.Event(), threading.Event()]
score = multi_factor.MultiFactor.score
def long_first_bar(self, ctx):  # each run's first bar waits until the test releases it
    with lock:
        if threading.current_thread() not in runs:
            runs.append(threading.current_thread())
        k = runs.index(threading.current_thread())
    if not in_bar[k].is_set():
        in_bar[k].set()
        release[k].wait()
    return score(self, ctx)
multi_factor.MultiFactor.score = long_first_bar
def interrupt():  # the notebook's "interrupt kernel", while run A is in its bar
    if in_bar[0].wait(120):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
run = lambda: BacktestEngine().run_backtest(data, start="2017-11-01", end="2017-12-31")
try:
    run()
except KeyboardInterrupt:
    pass
a = [t for t in threading.enumerate() if t.name == "tradingd-backtest"]
out = {}
b = threading.Thread(target=lambda: out.update(b=run()))
b.start()
in_bar[1].wait(120)
seen = [len(a), structlog.is_configured()]  # B runs (A still stopping): warnings only
release[0].set()
a[0].join(120)
seen.append(structlog.is_configured())  # A has ended, B runs: still warnings only
release[1].set()
b.join(120)
seen += [structlog.is_configured(), len(out["b"]["fills"]) > 0]  # B has ended: as found
print("RESULT", *seen)
"""


def test_an_interrupted_run_ending_late_leaves_the_next_runs_logging_alone(in_tmp):
    """Run A interrupted in a long bar is still stopping when the user starts run B: A's end
    reset structlog under B (B then printed every debug line), since B had taken A's
    warnings-only setting for the user's own. The first run to start sets it, the last to
    end resets it."""
    result, proc = _cell_results(_OVERLAPPING_RUNS, in_tmp)
    assert result == ["RESULT 1 True True False True"], (proc.stdout + proc.stderr)[-3000:]


@hypothesis.given(st.data())
@hypothesis.settings(max_examples=100, deadline=None)
def test_overlapping_runs_keep_warnings_only_until_the_last_ends(data):
    """Whatever the order runs start and end in: structlog is the runs' warnings-only
    setting while any runs, and unconfigured again (as found) when none does."""
    import contextlib

    import structlog

    from tradingd.strategy_api import _warnings_only_unless_configured

    structlog.reset_defaults()
    active: list[contextlib.ExitStack] = []
    try:
        for _ in range(data.draw(st.integers(1, 12))):
            if active and data.draw(st.booleans()):
                i = data.draw(st.integers(0, len(active) - 1))
                active.pop(i).close()  # a run ends, not necessarily the last one started
            else:
                stack = contextlib.ExitStack()
                stack.enter_context(_warnings_only_unless_configured())
                active.append(stack)
            assert structlog.is_configured() == bool(active)
        while active:
            assert structlog.is_configured()
            active.pop(data.draw(st.integers(0, len(active) - 1))).close()
        assert not structlog.is_configured()
    finally:
        for stack in active:
            stack.close()
        structlog.reset_defaults()
