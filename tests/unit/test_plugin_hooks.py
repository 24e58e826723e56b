"""A third-party plugin's hook mistakes are errors naming the plugin and the hook, found when
the plugin is built where they can be (not a traceback, and not only at a live run's first
bar): `required_features()`, `history_bars()`, `settle`, `state()` and the constructor."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.config import PluginSpec
from tradingd.core.errors import ConfigError, PluginError, PluginFault
from tradingd.engine.engine import Engine, Pipeline
from tradingd.engine.plugins import load_plugin
from tradingd.storage.buffered import path_text, to_json, unstorable

SYMS = ("A", "B")
T = datetime(2015, 6, 3, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class _Config:
    lookback: int = 3


class _Signal:
    """A signal whose hooks each test replaces."""

    kind = "signal"
    Config = _Config
    name = "theirs"

    def __init__(self, config: _Config, symbols: tuple[str, ...]) -> None:
        self.symbols = symbols

    def required_features(self) -> Any:
        return ()

    def score(self, ctx: Any) -> np.ndarray:
        return np.zeros(len(self.symbols))


class _EP:
    def __init__(self, cls: type) -> None:
        self.name, self._cls, self.value = "theirs", cls, f"their_pkg:{cls.__name__}"

    def load(self) -> type:
        return self._cls


def _with(**hooks: Any) -> type:
    return type("Theirs", (_Signal,), hooks)


def _load(cls: type) -> Any:
    return load_plugin(PluginSpec("theirs"), "signal", SYMS, "signals[0]", {"theirs": _EP(cls)})


def _pipeline(plugin: Any) -> Pipeline:
    sizing = load_plugin(PluginSpec("equal_weight"), "sizing", SYMS, "sizing")
    return Pipeline(signals=[(plugin, 1.0)], sizing=sizing)


@pytest.mark.parametrize("answer", [None, 3, "rsi_14", ("rsi_14", 1)])
def test_required_features_that_are_not_names_are_refused_when_built(answer):
    """None ended `tradingd config` in "TypeError: 'NoneType' object is not iterable"."""
    cls = _with(required_features=lambda self: answer)
    with pytest.raises(ConfigError, match=r"plugin 'theirs'.*required_features\(\) must return"):
        _load(cls)
    # A pipeline built without the loader (the Python API) says the same.
    plugin = object.__new__(cls)
    plugin.symbols = SYMS
    with pytest.raises(ConfigError, match=r"plugin 'theirs'.*required_features\(\)"):
        _pipeline(plugin).feature_owners()


def test_required_features_may_be_any_iterable_of_names():
    plugin = _load(_with(required_features=lambda self: ["ret_1", "rsi_14"]))
    assert _pipeline(plugin).feature_owners() == {"ret_1": "theirs", "rsi_14": "theirs"}


@pytest.mark.parametrize("answer", [None, 30.5, 30.0, -5, True, "30"])
def test_history_bars_that_are_not_a_count_are_refused_when_built(answer):
    """None was "int() argument must be ... not 'NoneType'" at the engine's start; 30.5 was
    read as 30 bars and -5 ignored, both without a word."""
    cls = _with(history_bars=lambda self: answer)
    with pytest.raises(ConfigError, match=r"plugin 'theirs'.*history_bars\(\) must return"):
        _load(cls)
    plugin = object.__new__(cls)
    plugin.symbols = SYMS
    with pytest.raises(ConfigError, match=r"plugin 'theirs'.*history_bars\(\)"):
        _pipeline(plugin).history_bars()


def test_history_bars_may_be_a_numpy_integer():
    plugin = _load(_with(history_bars=lambda self: np.int64(30)))
    assert _pipeline(plugin).history_bars() == 30


@pytest.mark.parametrize("asked", [10**9, np.int64(10**12)])
def test_a_history_longer_than_the_limit_is_refused_naming_plugin_value_and_limit(asked):
    """A plugin answering 10**9 had the engine allocate its history buffer of 10**9 bars for
    every symbol (80 bytes a symbol a bar): memory ran out, or the OOM killer ended the run,
    with no word of which plugin asked."""
    cls = _with(history_bars=lambda self: asked)
    with pytest.raises(ConfigError) as e:
        _load(cls)
    from tradingd.engine.plugins import MAX_HISTORY_BARS

    text = str(e.value)
    assert "plugin 'theirs'" in text
    assert f"{int(asked):,}" in text and f"{MAX_HISTORY_BARS:,}" in text
    plugin = object.__new__(cls)
    plugin.symbols = SYMS
    with pytest.raises(ConfigError, match=r"plugin 'theirs'.*over the limit"):
        _pipeline(plugin).history_bars()


def test_the_history_limit_is_a_year_of_minute_bars_or_more_and_holds_exactly():
    from tradingd.engine.plugins import MAX_HISTORY_BARS

    assert MAX_HISTORY_BARS >= 252 * 390  # a year of one-minute XNYS bars
    plugin = _load(_with(history_bars=lambda self: MAX_HISTORY_BARS))
    assert _pipeline(plugin).history_bars() == MAX_HISTORY_BARS
    with pytest.raises(ConfigError, match=r"over the limit"):
        _load(_with(history_bars=lambda self: MAX_HISTORY_BARS + 1))


def test_a_plain_settle_is_refused_when_built_and_named_if_it_reaches_a_live_bar():
    """A `def settle(self)` passed every backtest, then stopped a live run at its first bar
    with "object NoneType can't be used in 'await' expression"."""
    cls = _with(settle=lambda self: None)
    with pytest.raises(PluginError, match=r"plugin 'theirs'.*settle\(\) must be a coroutine"):
        _load(cls)

    async def fine(self: Any) -> None:
        return None

    assert _load(_with(settle=fine)).name == "theirs"
    # One that reaches the engine anyway (built without the loader) is a PluginFault.
    plugin = object.__new__(cls)
    engine = SimpleNamespace(pipeline=_pipeline(plugin), _last_time=T)
    with pytest.raises(PluginFault, match=r"plugin 'theirs' failed in settle at bar 2015-06-03"):
        asyncio.run(Engine._settle_plugins(engine))  # type: ignore[arg-type]


def _states(plugin: Any) -> dict[str, Any]:
    engine = SimpleNamespace(pipeline=_pipeline(plugin), _signal_states={}, _last_time=T)
    return Engine._plugin_states(engine)  # type: ignore[arg-type]


def test_a_state_that_raises_is_a_plugin_fault_naming_the_plugin_and_hook():
    """A KeyError in state() was a bare traceback that ended `tradingd run` in its warm-up."""

    def state(self: Any) -> Any:
        raise KeyError("ewma_window")

    plugin = _load(_with(state=state))
    with pytest.raises(PluginFault, match=r"'theirs' failed in state at bar .*KeyError.*ewma"):
        _states(plugin)


def test_a_state_holding_an_object_is_said_once_naming_the_key():
    """It was checkpointed as "<object object at 0x...>", with no word, and handed so to
    restore() after a restart. It is still kept as text (stopping the daemon for it failed
    only live runs, at their first checkpoint), and said once per plugin and key."""
    from structlog.testing import capture_logs

    from tradingd.engine import engine as engine_module

    engine_module._STATE_TEXT_SAID.clear()
    value = {"n": 3, "o": [1.0, object()]}
    plugin = _load(_with(state=lambda self: value))
    with capture_logs() as logs:
        assert _states(plugin)["theirs"] is value
        _states(plugin)  # the next checkpoint: not said again
    said = [e for e in logs if e["event"] == "plugin.state_kept_as_text"]
    assert len(said) == 1
    assert (said[0]["plugin"], said[0]["key"], said[0]["type"]) == (
        "theirs",
        "state()['o'][1]",
        "object",
    )
    # What a checkpoint keeps as values is kept.
    ok = {"n": np.int64(3), "w": np.array([0.5, np.nan]), "t": T, "s": {"A"}, "none": None}
    plugin = _load(_with(state=lambda self: ok))
    assert _states(plugin)["theirs"] is ok


_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=3),
        st.datetimes(timezones=st.just(UTC)),
        st.integers(-(2**63), 2**63 - 1).map(np.int64),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=12,
)


class _Opaque:
    def __str__(self) -> str:
        return "<opaque>"


def _put(value: Any, path: list[int]) -> Any:
    """`value` with an _Opaque object put in at the place `path` picks."""
    if isinstance(value, dict) and value and path:
        key = sorted(value)[path[0] % len(value)]
        return {**value, key: _put(value[key], path[1:])}
    if isinstance(value, list | tuple) and value and path:
        i = path[0] % len(value)
        items = list(value)
        items[i] = _put(items[i], path[1:])
        return type(value)(items)
    return _Opaque()


@settings(max_examples=200, deadline=None)
@given(value=_VALUES, path=st.lists(st.integers(0, 5), max_size=4))
def test_unstorable_finds_exactly_what_the_store_would_keep_as_text(value, path):
    """JSON-plain values pass; an object put anywhere is found, at its own path."""
    assert unstorable(value) is None
    assert "<opaque>" not in to_json(value)
    spoiled = _put(value, path)
    found = unstorable(spoiled)
    assert found is not None and isinstance(found[1], _Opaque)
    at: Any = spoiled
    for k in found[0]:
        at = at[k]
    assert at is found[1] and "<opaque>" in to_json(spoiled)
    # The path as the error prints it indexes the same value.
    assert eval("spoiled" + path_text(found[0])) is found[1]


def test_a_constructor_without_symbols_is_named_as_the_constructor_not_the_params():
    """Both were "signals[0].params: ...", pointing at params that were fine."""

    def no_symbols(self: Any, config: Any) -> None:
        pass

    with pytest.raises(PluginError) as e:
        _load(_with(__init__=no_symbols))
    text = str(e.value)
    assert "cannot be built" in text and "(config, symbols)" in text and ".params" not in text

    def broken(self: Any, config: Any, symbols: Any) -> None:
        self.window = len(config.lookback)  # TypeError: an int has no len()

    with pytest.raises(PluginError) as e:
        _load(_with(__init__=broken))
    text = str(e.value)
    assert text.startswith("signals[0].name = 'theirs': the plugin's constructor")
    assert "TypeError: object of type 'int' has no len()" in text and ".params" not in text

    def refuses(self: Any, config: Any, symbols: Any) -> None:
        raise ValueError("lookback must be >= 5, got 3")

    # A ValueError stays the params' refusal (the plugins' convention).
    with pytest.raises(ConfigError, match=r"^signals\[0\].params: lookback must be >= 5"):
        _load(_with(__init__=refuses))


def test_a_plain_prepare_bar_is_refused_when_built_and_an_async_one_is_awaited_before_score():
    """`prepare_bar(ctx)` is awaited by the engine before each trading bar's score(): a
    plain `def` would fail there, at a run's first traded bar; an exception in it is the
    plugin's fault, naming the hook."""
    with pytest.raises(PluginError, match=r"plugin 'theirs'.*prepare_bar\(\) must be a corou"):
        _load(_with(prepare_bar=lambda self, ctx: None))
    seen: list[Any] = []

    async def prepare(self: Any, ctx: Any) -> None:
        seen.append(ctx)

    async def failing(self: Any, ctx: Any) -> None:
        raise ValueError("no model")

    ctx = SimpleNamespace(time=T)
    for hook in (prepare, failing):
        plugin = _load(_with(prepare_bar=hook))
        engine = SimpleNamespace(_preparers=((plugin, plugin.prepare_bar),))
        if hook is prepare:
            asyncio.run(Engine._prepare_signals(engine, ctx))  # type: ignore[arg-type]
            assert seen == [ctx]
            continue
        with pytest.raises(PluginFault, match=r"'theirs' failed in prepare_bar at bar 2015-06"):
            asyncio.run(Engine._prepare_signals(engine, ctx))  # type: ignore[arg-type]


_PLAIN = (
    "required_features",
    "score",
    "observe",
    "history_bars",
    "state",
    "restore",
    "reconfigure",
    "close",
    "pin_model",
    "for_replay",
    "check_reloaded_models",
    "run_inputs",
)


@pytest.mark.parametrize("hook", _PLAIN)
def test_an_async_hook_the_engine_does_not_await_is_refused_when_built(hook):
    """An `async def reconfigure` was never run on SIGHUP while the reload said "applied";
    an async score ran the whole warm-up to fail as "values (object), not numbers", an
    async observe or close never ran, an async state checkpointed a coroutine's text."""

    async def hooked(self: Any, *args: Any) -> Any:
        return None

    with pytest.raises(
        PluginError, match=rf"plugin 'theirs' \(their_pkg:Theirs\): {hook}\(\) must be a plain def"
    ):
        _load(_with(**{hook: hooked}))

    def plain(self: Any, *args: Any) -> Any:
        return () if hook == "required_features" else 0 if hook == "history_bars" else None

    assert _load(_with(**{hook: plain})).name == "theirs"


def test_async_size_and_check_are_refused_for_sizing_and_risk_plugins():
    async def size(self: Any, score: Any, ctx: Any) -> Any:
        return score

    async def check(self: Any, targets: Any, ctx: Any) -> Any:
        return targets

    for kind, hook, fn in (("sizing", "size", size), ("risk", "check", check)):
        cls = type("Theirs", (_Signal,), {"kind": kind, hook: fn})
        with pytest.raises(PluginError, match=rf"plugin 'theirs'.*{hook}\(\) must be a plain def"):
            load_plugin(PluginSpec("theirs"), kind, SYMS, kind, {"theirs": _EP(cls)})
