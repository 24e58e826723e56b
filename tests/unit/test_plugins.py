from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.config import PluginSpec
from tradingd.core.errors import ConfigError, PluginError
from tradingd.core.ports import RiskPlugin, SignalPlugin, SizingPlugin
from tradingd.engine.plugins import available, load_plugin

SYMS = ("A", "B")
BUILTINS = {
    "momentum": "signal",
    "sma_cross": "signal",
    "equal_weight": "sizing",
    "max_position": "risk",
    "max_open_positions": "risk",
    "max_gross_exposure": "risk",
    "drawdown_guard": "risk",
    "stale_data": "risk",
}


def test_builtins_are_registered_through_entry_points():
    eps = available()
    for name, kind in BUILTINS.items():
        assert name in eps, f"{name} missing from the tradingd.plugins entry points"
        assert eps[name].load().kind == kind


@pytest.mark.parametrize(
    "name,kind,proto",
    [
        ("momentum", "signal", SignalPlugin),
        ("equal_weight", "sizing", SizingPlugin),
        ("drawdown_guard", "risk", RiskPlugin),
    ],
)
def test_builtins_satisfy_their_protocol(name, kind, proto):
    assert isinstance(load_plugin(PluginSpec(name), kind, SYMS, "x"), proto)


def test_unknown_plugin_names_key_and_choices():
    with pytest.raises(ConfigError) as e:
        load_plugin(PluginSpec("momentun"), "signal", SYMS, "signals[0]")
    msg = str(e.value)
    assert "signals[0].name = 'momentun'" in msg
    assert "momentum" in msg and "sma_cross" in msg


def test_wrong_kind_lists_plugins_of_the_right_kind():
    with pytest.raises(
        ConfigError,
        match=r"sizing.name = 'momentum' is a 'signal' plugin.*"
        r"valid choices: equal_weight",
    ):
        load_plugin(PluginSpec("momentum"), "sizing", SYMS, "sizing")


def test_unknown_and_bad_parameters():
    with pytest.raises(ConfigError, match=r"signals\[0\].params.lookbak.*valid keys: lookback"):
        load_plugin(PluginSpec("momentum", params={"lookbak": 5}), "signal", SYMS, "signals[0]")
    with pytest.raises(ConfigError, match=r"signals\[0\].params.lookback must be an integer"):
        load_plugin(
            PluginSpec("momentum", params={"lookback": "long"}), "signal", SYMS, "signals[0]"
        )
    with pytest.raises(ConfigError, match=r"lookback must be >= 1"):
        load_plugin(PluginSpec("momentum", params={"lookback": 0}), "signal", SYMS, "signals[0]")


def test_plugin_that_fails_to_import_is_an_error_naming_it():
    broken = EntryPoint("broken", "no_such_module_xyz:Thing", "tradingd.plugins")
    with pytest.raises(PluginError, match=r"'broken'.*no_such_module_xyz.*failed to import"):
        load_plugin(PluginSpec("broken"), "signal", SYMS, "signals[0]", registry={"broken": broken})


def test_a_pipeline_reads_the_installed_plugins_once(monkeypatch):
    """Each read scans every installed distribution (~27 ms): a pipeline of ten plugins,
    built twice per command (the checks, then the engine), read them twenty times."""
    import tradingd.engine.plugins as plugins_mod
    from tradingd.app import build_pipeline
    from tradingd.config import load_config
    from tradingd.preflight import load_pipeline

    reads = []
    real = plugins_mod.entry_points

    def counting(**kw):
        reads.append(kw)
        return real(**kw)

    monkeypatch.setattr(plugins_mod, "entry_points", counting)
    config = load_config([], env={})
    assert len(config.risk) + len(config.signals) + 1 > 2  # several plugins to load
    load_pipeline(config)
    assert len(reads) == 1
    pipeline = build_pipeline(config, ("SP500", "NASDAQ"))
    assert len(reads) == 2
    assert len(pipeline.risks) == len(config.risk)


def test_intraday_live_bars_annualise_per_bar_figures_with_their_own_count():
    """kelly_garch annualised a bar's variance with 252 whatever live.bar was: on 5-minute
    bars a 20%-volatility stock read as a 2.3% one, and every position was sized at the
    cap. A live run on intraday bars gives plugins 252 sessions of bars, unless their
    params say otherwise; a backtest (daily bars) keeps 252."""
    import numpy as np

    from tradingd.app import build_pipeline
    from tradingd.config import load_config
    from tradingd.engine.plugins import RUN_KEYS
    from tradingd.reload import _plugin_config
    from tradingd_plugins.sizing.kelly_garch import vol_scalar

    def pipeline(bar: str, mode: str, **params):
        sizing = {"name": "kelly_garch", "params": {"fit_cache_dir": "", **params}}
        config = load_config([{"live": {"bar": bar}, "sizing": sizing}], env={})
        data_bar = bar if mode == "live" else "1d"  # as build_engine decides it
        return build_pipeline(config, ("AAA", "BBB"), data_bar)

    five = pipeline("5m", "live").sizing.config
    assert five.periods_per_year == 252 * 78
    assert pipeline("60m", "live").sizing.config.periods_per_year == 252 * 7
    assert pipeline("1d", "live").sizing.config.periods_per_year == 252
    assert pipeline("5m", "backtest").sizing.config.periods_per_year == 252
    assert pipeline("5m", "live", periods_per_year=1000.0).sizing.config.periods_per_year == 1000
    # A 20%-volatility stock on 5-minute bars is scaled as one (target 15%: 0.75).
    var_5m = 0.20**2 / 252 / 78
    assert vol_scalar(np.array([var_5m]), five)[0] == pytest.approx(
        five.target_vol / 0.20, rel=1e-9
    )
    # A SIGHUP's new params keep the run's value unless they set one.
    assert "periods_per_year" in RUN_KEYS
    spec = PluginSpec("kelly_garch", params={"fit_cache_dir": "", "max_kelly": 0.4})
    again = _plugin_config(type(pipeline("5m", "live").sizing), spec, "sizing", running=five)
    assert again.periods_per_year == 252 * 78 and again.max_kelly == 0.4


def test_a_model_with_cross_sectional_features_on_another_universe_is_warned():
    """The shipped model's cs_ret_1 was learned over 2 index series, where a cross-sectional
    rank is only ever +-1; the README's S&P 500 run gives it 496 stocks, where it is
    continuous. The feature set's version does not name the universe: it started silently."""
    from structlog.testing import capture_logs

    from tradingd.app import build_pipeline, verify_model_features
    from tradingd.config import load_config

    config = load_config([], env={})  # the default strategy: ml_ensemble, the shipped model
    own = ("NASDAQ", "SP500")
    pipeline = build_pipeline(config, own)
    with capture_logs() as logs:
        verify_model_features(config, pipeline, own)
    assert not [e for e in logs if e["event"] == "model.universe_differs"]
    with capture_logs() as logs:
        verify_model_features(config, pipeline, ("AAPL", "MSFT", "XOM"))
    (warned,) = [e for e in logs if e["event"] == "model.universe_differs"]
    assert warned["trained_on"] == 2 and warned["run_symbols"] == 3
    assert "cs_ret_1" in warned["cross_sectional"]


class _EP:
    def __init__(self, name: str, cls: type) -> None:
        self.name, self._cls, self.value = name, cls, f"test:{cls.__name__}"

    def load(self) -> type:
        return self._cls


def _signal_class(**attrs):  # type: ignore[no-untyped-def]
    import dataclasses

    import numpy as np

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config, symbols):  # type: ignore[no-untyped-def]
        self.symbols = symbols

    body = {
        "kind": "signal",
        "Config": Config,
        "__init__": __init__,
        "required_features": lambda self: (),
        "score": lambda self, ctx: np.zeros(len(self.symbols)),
        **attrs,
    }
    return type("Mine", (), {k: v for k, v in body.items() if v is not None})


def test_a_plugin_without_a_name_gets_its_registered_one_when_it_is_built():
    """A plugin class without `name` passed every check, then ended the first traded bar in
    an AttributeError traceback (exit 1)."""
    eps = {"mine": _EP("mine", _signal_class())}
    plugin = load_plugin(PluginSpec("mine"), "signal", SYMS, "signals[0]", eps)
    assert plugin.name == "mine"


def test_a_plugin_without_a_method_of_its_kind_is_named_when_it_is_built():
    eps = {"mine": _EP("mine", _signal_class(score=None, required_features=None))}
    with pytest.raises(PluginError, match=r"'mine' .*lacks required_features\(\), score\(\)"):
        load_plugin(PluginSpec("mine"), "signal", SYMS, "signals[0]", eps)


def test_a_misspelled_plugin_is_offered_the_names_of_its_kind_only():
    with pytest.raises(ConfigError) as e:
        load_plugin(PluginSpec("momentun"), "signal", SYMS, "signals[0]")
    choices = str(e.value).split("valid choices: ", 1)[1]
    assert (
        "momentum" in choices and "equal_weight" not in choices and "drawdown_guard" not in choices
    )


def _install_dist(root, dist: str, entry: str) -> None:
    """A package's metadata on sys.path, as pip leaves it: only its entry points matter."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tradingd.plugins]\n{entry}\n")


def test_a_plugin_name_two_packages_register_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    # A quant's package registering `momentum` beside the built-in one: which of the two
    # Python found first depended on the install order, and nothing said there were two.
    _install_dist(tmp_path, "shadowplug", "momentum = shadow_mod:Shadow")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "momentum" not in available()
    with pytest.raises(ConfigError) as e:
        load_plugin(PluginSpec(name="momentum"), "signal", SYMS, "signals[0]")
    text = str(e.value)
    assert "signals[0].name = 'momentum'" in text
    assert "shadowplug (shadow_mod:Shadow)" in text
    assert "tradingd_plugins.signals.momentum" in text
    # The other plugins are unaffected, and the listing flags the clash.
    assert load_plugin(PluginSpec(name="equal_weight"), "sizing", SYMS, "sizing").name
    from tradingd.__main__ import _plugins

    assert _plugins() == 0
    out, err = capsys.readouterr()
    line = next(x for x in out.splitlines() if x.startswith("momentum "))
    assert "CLASH" in line and "shadowplug" in line
    assert "1 plugin name(s) registered by more than one package" in err


def test_the_listing_flags_a_plugin_of_no_known_kind(tmp_path, monkeypatch, capsys):
    """A plugin whose `kind` is misspelled ("signl") was listed like any other; only
    configuring it said it was no signal plugin."""
    (tmp_path / "typo_kind_mod.py").write_text(
        "class Typo:\n    kind = 'signl'\n\nclass NoKind:\n    pass\n"
    )
    _install_dist(tmp_path, "typoplug", "typo_signal = typo_kind_mod:Typo")
    _install_dist(tmp_path, "nokindplug", "no_kind = typo_kind_mod:NoKind")
    monkeypatch.syspath_prepend(str(tmp_path))
    from tradingd.__main__ import _plugins

    assert _plugins() == 0
    out, err = capsys.readouterr()
    lines = {x.split()[0]: x for x in out.splitlines()}
    assert lines["typo_signal"].split()[1] == "UNKNOWN"
    assert "kind 'signl', not one of signal, sizing, risk" in lines["typo_signal"]
    assert lines["no_kind"].split()[1] == "UNKNOWN" and "no kind" in lines["no_kind"]
    assert lines["momentum"].split()[1] == "signal"  # the others as before
    assert "2 plugin(s) of no known kind cannot be configured" in err


def test_the_same_target_found_twice_is_one_plugin(tmp_path, monkeypatch):
    # One package reachable on two paths registers the same target twice: not a clash.
    ep = available()["momentum"]
    _install_dist(tmp_path, "tradingd_copy", f"momentum = {ep.value}")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available()["momentum"].value == ep.value


def _sizing_class(ppy_type: type, default: Any):  # type: ignore[no-untyped-def]
    """A third-party sizing plugin whose Config declares `periods_per_year` as `ppy_type`."""
    import dataclasses

    import numpy as np

    Config = dataclasses.make_dataclass(
        "Config", [("periods_per_year", ppy_type, dataclasses.field(default=default))], frozen=True
    )

    def __init__(self, config, symbols):  # type: ignore[no-untyped-def]
        self.config = config

    body = {
        "kind": "sizing",
        "Config": Config,
        "__init__": __init__,
        "required_features": lambda self: (),
        "size": lambda self, score, ctx: np.zeros(len(score)),
    }
    return type("Theirs", (), body)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=1, max_value=10**7))
def test_a_whole_run_default_is_given_in_the_fields_declared_type(n):
    """A plugin declaring `periods_per_year: int` failed every 24/7 and intraday run with
    "sizing.params.periods_per_year must be an integer, got 365.0": the run's count was
    merged as a float, and the error blamed a setting the user never wrote."""
    for tp, default in ((int, 252), (float, 252.0), (int | None, None)):
        eps = {"theirs": _EP("theirs", _sizing_class(tp, default))}
        got = load_plugin(
            PluginSpec("theirs"), "sizing", SYMS, "sizing", eps, {"periods_per_year": float(n)}
        ).config.periods_per_year
        assert got == n and type(got) is (float if tp is float else int)


def test_a_run_default_the_field_refuses_is_named_as_the_runs():
    eps = {"theirs": _EP("theirs", _sizing_class(int, 252))}
    with pytest.raises(ConfigError) as e:
        load_plugin(
            PluginSpec("theirs"), "sizing", SYMS, "sizing", eps, {"periods_per_year": 1638.5}
        )
    text = str(e.value)
    assert "periods_per_year = 1638.5" in text and "the run supplied" in text
    assert "live.calendar" in text and "not your params" in text
    # The user's own value wins and is not the run's to blame.
    spec = PluginSpec("theirs", params={"periods_per_year": 12})
    got = load_plugin(spec, "sizing", SYMS, "sizing", eps, {"periods_per_year": 1638.5})
    assert got.config.periods_per_year == 12
    with pytest.raises(ConfigError) as e:
        bad = PluginSpec("theirs", params={"periods_per_year": "x"})
        load_plugin(bad, "sizing", SYMS, "sizing", eps, {"periods_per_year": 1638.5})
    assert str(e.value).startswith("sizing.params.periods_per_year must be an integer, got 'x'")


def test_a_params_error_names_the_plugin_as_well_as_its_place():
    """ "unknown key(s) signals[0].params.barz" named a list position only: with several
    signals the user counted entries to find which. The key stays first (the file that set
    it is found from it), the plugin is named after; a SIGHUP's reload says the same."""
    from tradingd.reload import _plugin_config

    with pytest.raises(
        ConfigError,
        match=r"^unknown key\(s\) signals\[1\]\.params\.lookbak; valid keys: .*"
        r"\(signals\[1\] is the plugin 'momentum'\)$",
    ):
        load_plugin(PluginSpec("momentum", params={"lookbak": 5}), "signal", SYMS, "signals[1]")
    with pytest.raises(
        ConfigError,
        match=r"^unknown key\(s\) risk\[2\]\.params\.max_pos; .*"
        r"\(risk\[2\] is the plugin 'max_position'\)$",
    ):
        cls = type(load_plugin(PluginSpec("max_position"), "risk", SYMS, "risk[2]"))
        _plugin_config(cls, PluginSpec("max_position", params={"max_pos": 0.1}), "risk[2].params")
