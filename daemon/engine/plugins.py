"""Finding, configuring and calling plugins.

Plugins (built-in and third-party alike) register in the entry-point group `tradingd.plugins`.
A plugin is a class with `kind` ("signal", "sizing" or "risk"), a frozen `Config` dataclass and
`__init__(config, symbols)`. A plugin that fails to import is an error naming it: never a skip.
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, is_dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import structlog

from ..config import ConfigError, PluginSpec, build
from ..core.errors import PluginError, TradingdError

log = structlog.get_logger(__name__)

GROUP = "tradingd.plugins"
# Plugin params the run may set where the config does not (`load_plugin`'s run_defaults).
RUN_KEYS = frozenset({"periods_per_year"})
KINDS = ("signal", "sizing", "risk")
# The most raw bars a plugin may read from ctx.history (`history_bars()`). The engine keeps
# the history of every symbol twice over in five float64 fields (engine.history: 80 bytes a
# symbol a bar), allocated whole at start: 100,000 bars (a year of one-minute XNYS bars is
# 98,280) is 8 MB a symbol, 4 GB for 500. A plugin answering 10**9 asked for 80 GB a symbol.
MAX_HISTORY_BARS = 100_000


def instance_keys(plugins: Iterable[Any]) -> list[tuple[str, Any]]:
    """Each plugin's key in a checkpoint's `plugins`: its name, and `name#2`, `name#3` for
    later instances of the same plugin (two drawdown guards with their own limits). Keyed by
    name alone, the second overwrote the first: a halted guard came back unhalted after a
    restart. The first instance keeps the plain name, as checkpoints written before had it.
    The same key names a risk plugin's instance in its verdicts (the summary's counts, the
    restrictions), its kill-switch and stale-data alerts and its health check."""
    seen: dict[str, int] = {}
    out = []
    for plugin in plugins:
        n = seen[plugin.name] = seen.get(plugin.name, 0) + 1
        out.append((plugin.name if n == 1 else f"{plugin.name}#{n}", plugin))
    return out


def check_names(configured: Iterable[tuple[str, str, Any]]) -> None:
    """Each configured plugin's `name` (its own, or the one it is registered under, see
    `_checked`) must be its alone: a ConfigError naming both plugins otherwise.
    `configured`: (config key, registered name, built plugin), in pipeline order.

    The engine tells plugins apart by `name`: its errors ("plugin 'momentum' failed"),
    the summary's verdict counts, the stored signal records, the checkpoint's keys and the
    lookahead check. A copy of `momentum.py` registered under another name that kept
    `self.name = "momentum"` ran beside the built-in one, and its failures blamed the
    built-in. The same plugin configured twice is one name on purpose (two drawdown
    guards with their own limits): its later instances are `name#2`, `name#3`
    (`instance_keys`), and a plugin whose own name is such a key is refused too."""
    plugins = list(configured)
    first: dict[str, tuple[str, str]] = {}
    for where, registered, plugin in plugins:
        name = plugin.name
        other = first.setdefault(name, (where, registered))
        if other[1] != registered:
            raise ConfigError(_name_clash(name, (where, registered), other))
    keys: dict[str, tuple[str, str]] = {}
    for (key, _), (where, registered, _) in zip(
        instance_keys(p for _, _, p in plugins), plugins, strict=True
    ):
        other = keys.setdefault(key, (where, registered))
        if other[0] != where:
            raise ConfigError(_name_clash(key, (where, registered), other))


def _name_clash(name: str, later: tuple[str, str], earlier: tuple[str, str]) -> str:
    """Two configured plugins (config key, registered name) that both go by `name`."""
    own = [f"{w}.name = {r!r}" for w, r in (later, earlier)]
    renamed = [r for _, r in (later, earlier) if r != name] or [later[1]]
    return (
        f"{own[0]} and {own[1]} are two plugins that both go by the name {name!r} (the "
        "plugin's `name`): the run's errors, verdict counts, stored signals, checkpoint "
        "and lookahead check would mix them up. Give the plugin registered as "
        f"{renamed[0]!r} a name of its own in its code (self.name = {renamed[0]!r}, the name "
        "it is registered under, or leave `name` unset to get that one)"
    )


@dataclass(frozen=True)
class LoadedPlugin:
    spec: PluginSpec
    instance: Any


def registered() -> dict[str, list[EntryPoint]]:
    """Every target each plugin name is registered for, in the order Python finds them.

    The same target found twice (one package on two paths) counts once."""
    out: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        targets = out.setdefault(ep.name, [])
        if all(t.value != ep.value for t in targets):
            targets.append(ep)
    return out


def available() -> dict[str, EntryPoint]:
    """The plugin names that name one plugin. A name two packages register (a quant's
    `momentum` beside the built-in one) is left out: which one Python finds first depends on
    the install order, so using either would silently run a plugin nobody chose
    (`load_plugin` refuses it by name, `tradingd plugins` lists it as a clash)."""
    return {name: eps[0] for name, eps in registered().items() if len(eps) == 1}


def load_class(name: str, ep: EntryPoint) -> Any:
    """The plugin class `ep` names; PluginError naming the plugin when it fails to import
    (building a configured plugin, and `tradingd plugins NAME`)."""
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(
            f"plugin {name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def clash_text(name: str, targets: list[EntryPoint]) -> str:
    """What the operator reads about a name registered more than once."""
    return f"plugin name {name!r} is registered by more than one package: " + ", ".join(
        f"{_dist_name(ep)} ({ep.value})" for ep in targets
    )


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return str(getattr(dist, "name", None) or "an unnamed package")


def load_plugin(
    spec: PluginSpec,
    kind: str,
    symbols: tuple[str, ...],
    where: str,
    registry: Mapping[str, EntryPoint] | None = None,
    run_defaults: Mapping[str, Any] | None = None,
) -> Any:
    """The configured plugin, built. `run_defaults`: values the run knows better than a
    plugin's own defaults (`periods_per_year` of intraday bars), given to a plugin whose
    `Config` has that field and whose params do not set it."""
    eps = available() if registry is None else registry
    ep = eps.get(spec.name)
    if ep is None:
        targets = registered().get(spec.name, [])
        if len(targets) > 1:
            raise ConfigError(
                f"{where}.name = {spec.name!r}: {clash_text(spec.name, targets)}; uninstall "
                "one of them or register yours under another name in its entry points"
            )
        # The names of this kind (a misspelled signal was offered sizing and risk plugins).
        same_kind = sorted(n for n, e in eps.items() if _kind_of(e) == kind)
        raise ConfigError(
            f"{where}.name = {spec.name!r}: no such {kind} plugin; valid choices: "
            + ", ".join(same_kind)
        )
    cls = load_class(spec.name, ep)
    got = getattr(cls, "kind", None)
    if got != kind:
        same_kind = sorted(n for n, e in eps.items() if _kind_of(e) == kind)
        raise ConfigError(
            f"{where}.name = {spec.name!r} is a {got!r} plugin, not a {kind!r} plugin; "
            f"valid choices: {', '.join(same_kind)}"
        )
    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        raise PluginError(f"plugin {spec.name!r} ({ep.value}) has no Config class")
    try:
        config = _config(config_cls, spec, where, run_defaults or {})
    except ConfigError as exc:
        naming_plugin(exc, where, spec.name)
        raise
    plugin = _construct(cls, config, symbols, spec.name, where, ep.value)
    return _checked(plugin, spec.name, kind, ep.value)


def _construct(
    cls: Any, config: Any, symbols: tuple[str, ...], name: str, where: str, target: str
) -> Any:
    """The plugin built as `cls(config, symbols)`. A ValueError is its params refused (the
    plugins' convention); anything else is the constructor's own failure, named as such: a
    constructor without `symbols`, or a TypeError inside it, was reported as
    "signals[0].params: ...", sending the user to params that were fine."""
    try:
        inspect.signature(cls).bind(config, symbols)
    except TypeError as exc:
        raise PluginError(
            f"{where}.name = {name!r}: the plugin ({target}) cannot be built: tradingd calls "
            f"{getattr(cls, '__name__', target)}(config, symbols) and its constructor does not "
            f"take those two arguments ({exc}); give its __init__ the parameters "
            "(self, config, symbols)"
        ) from None
    except ValueError:  # no signature to read (a builtin): the call says
        pass
    try:
        return cls(config, symbols)
    except TradingdError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{where}.params: {exc}") from exc
    except Exception as exc:
        raise PluginError(
            f"{where}.name = {name!r}: the plugin's constructor ({target}) failed: "
            f"{type(exc).__name__}: {exc} (a bug in the plugin, or a resource it needs)"
        ) from exc


def naming_plugin(exc: ConfigError, where: str, name: str) -> None:
    """`exc`, an error of the params of the plugin at `where` (`signals[0]`), with the
    plugin's name added (in place, keeping its type): "unknown key(s) signals[0].params.barz"
    named a list position, and with several signals the user counted entries to find which.
    The key stays first, as `config.name_origin` reads it there."""
    text = str(exc)
    if repr(name) not in text:
        exc.args = (f"{text} ({where} is the plugin {name!r})", *exc.args[1:])


def _config(config_cls: type, spec: PluginSpec, where: str, run_defaults: Mapping[str, Any]) -> Any:
    """The plugin's Config from its params and the run's defaults for fields they leave
    unset. A run default is given in the field's declared type where it is whole (the run
    counts 365.0 sessions; an `int` field takes 365), and a value the field still refuses
    is named as the run's: "sizing.params.periods_per_year must be an integer" blamed a
    setting the user never wrote."""
    params = dict(spec.params)
    fields = {f.name for f in dataclasses.fields(config_cls)} if is_dataclass(config_cls) else set()
    given = {
        key: _as_declared(config_cls, key, value)
        for key, value in run_defaults.items()
        if key in RUN_KEYS and key in fields and key not in params
    }
    for key, value in given.items():
        log.info("plugin.run_default", plugin=spec.name, where=where, key=key, value=value)
    try:
        return build(config_cls, {**params, **given}, f"{where}.params")
    except ConfigError as exc:
        if not given:
            raise
        try:
            build(config_cls, params, f"{where}.params")
        except ConfigError:
            raise exc from None  # the params' own error (they are read first), as it was
        keys = ", ".join(f"{k} = {v!r}" for k, v in given.items())
        raise ConfigError(
            f"plugin {spec.name!r} ({where}) refuses {keys}, which the run supplied (counted "
            f"from live.calendar and live.bar), not your params: {exc}. Set the value in "
            f"{where}.params, or declare the field in the plugin's Config as a float"
        ) from None


def _as_declared(config_cls: type, key: str, value: Any) -> Any:
    """`value` as an int where the field is declared `int` (or `int | None`) and the value
    is a whole float; else as it is (`build` converts an int for a float field)."""
    if not (isinstance(value, float) and value.is_integer()):
        return value
    try:
        hint = typing.get_type_hints(config_cls).get(key)
    except Exception:  # an annotation that does not resolve: `build` names it
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return int(value) if hint is int else value


# What the engine calls on a plugin of each kind (core.ports' protocols).
_METHODS = {"signal": ("score",), "sizing": ("size",), "risk": ("check",)}


def _checked(plugin: Any, name: str, kind: str, where: str) -> Any:
    """The plugin's contract checked when it is built, not at its first bar: a plugin
    without `name` ended the first traded bar in an AttributeError traceback (exit 1).
    A missing `name` is its registered name; a missing method is an error naming it."""
    if not isinstance(getattr(plugin, "name", None), str):
        try:
            plugin.name = name
        except AttributeError:
            raise PluginError(
                f"plugin {name!r} ({where}) has no `name` (str) and none can be set on it: "
                "give its class a `name` attribute"
            ) from None
    missing = [
        m
        for m in ("required_features", *_METHODS.get(kind, ()))
        if not callable(getattr(plugin, m, None))
    ]
    if missing:
        raise PluginError(
            f"plugin {name!r} ({where}) lacks {', '.join(f'{m}()' for m in missing)}, which a "
            f"{kind} plugin must have (see tradingd.core.ports)"
        )
    _check_hooks(plugin, name, where)
    return plugin


# The hooks the engine, the reload and the composition root call without awaiting
# (core.ports; README "Optional hooks"): an `async def` among them passed the start-up check,
# then its coroutine was dropped unawaited (observe, close, a SIGHUP's reconfigure, which
# the reload reported "applied"), checkpointed as text (state) or refused at the first
# trading bar as "values (object), not numbers" after the whole warm-up (score, size).
_PLAIN_HOOKS = (
    "required_features",
    "score",
    "observe",
    "size",
    "check",
    "history_bars",
    "state",
    "restore",
    "reconfigure",
    "close",
    "pin_model",
    "for_replay",
    "check_reloaded_models",
    "run_inputs",
    "run_inputs_of",
    "params_for_run_inputs",
)


def _check_hooks(plugin: Any, name: str, where: str) -> None:
    """The hooks' answers checked when the plugin is built, where a mistake is one clear
    error: `required_features()` returning None ended `tradingd config` in a TypeError
    traceback, `history_bars()` returning None the engine's start, and a plain (not async)
    `settle()` passed every backtest to fail at a live run's first bar (`prepare_bar()`
    alike: awaited every trading bar, a plain one fails there). Every other hook must be a
    plain def (`_PLAIN_HOOKS`), checked first: an async `required_features` is named as such."""
    for hook in _PLAIN_HOOKS:
        method = getattr(plugin, hook, None)
        if method is not None and (
            inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)
        ):
            raise PluginError(
                f"plugin {name!r} ({where}): {hook}() must be a plain def, and "
                f"{getattr(method, '__qualname__', hook)} is an async def: the engine calls "
                "it without awaiting, so its body would never run (only settle() and "
                "prepare_bar() are awaited)"
            )
    feature_names(plugin)  # raises naming the plugin
    hb = getattr(plugin, "history_bars", None)
    if hb is not None:
        history_bars_of(plugin)
    settle = getattr(plugin, "settle", None)
    if settle is not None and not inspect.iscoroutinefunction(settle):
        raise PluginError(
            f"plugin {name!r} ({where}): settle() must be a coroutine function (`async def "
            f"settle(self) -> None`), and {getattr(settle, '__qualname__', 'settle')} is not: "
            "a live run awaits it before each checkpoint"
        )
    prepare = getattr(plugin, "prepare_bar", None)
    if prepare is not None and not inspect.iscoroutinefunction(prepare):
        raise PluginError(
            f"plugin {name!r} ({where}): prepare_bar() must be a coroutine function (`async "
            f"def prepare_bar(self, ctx) -> None`), and "
            f"{getattr(prepare, '__qualname__', 'prepare_bar')} is not: the engine awaits it "
            "before each trading bar's score()"
        )


def _plugin_name(plugin: Any) -> str:
    return str(getattr(plugin, "name", None) or type(plugin).__name__)


def feature_names(plugin: Any) -> tuple[str, ...]:
    """The plugin's `required_features()`, which must be feature names (an iterable of str,
    not one str: "ret_1" was read letter by letter), or a ConfigError naming the plugin (as
    an unknown feature it asks for is)."""
    name = _plugin_name(plugin)
    try:
        asked = plugin.required_features()
    except Exception as exc:
        raise ConfigError(
            f"plugin {name!r}: required_features() raised {type(exc).__name__}: {exc}"
        ) from exc
    try:
        if isinstance(asked, str | bytes):
            raise TypeError
        names = tuple(asked)
        if not all(isinstance(n, str) for n in names):
            raise TypeError
    except TypeError:
        raise ConfigError(
            f"plugin {name!r}: required_features() must return feature names (a tuple of "
            f"str, e.g. ('ret_1',); () for none), got {asked!r}"
        ) from None
    return names


def history_bars_of(plugin: Any) -> int:
    """The plugin's `history_bars()`: a whole number from 0 to MAX_HISTORY_BARS (a numpy
    integer too), or a ConfigError naming the plugin. A float (30.5) was truncated, a
    negative count ignored, None ended the engine's start in a traceback from int(), and a
    huge count had the engine allocate its history until memory ran out."""
    name = _plugin_name(plugin)
    try:
        got = plugin.history_bars()
    except Exception as exc:
        raise ConfigError(
            f"plugin {name!r}: history_bars() raised {type(exc).__name__}: {exc}"
        ) from exc
    try:
        if isinstance(got, bool):
            raise TypeError
        n = operator.index(got)
    except TypeError:
        n = -1
    if n < 0:
        raise ConfigError(
            f"plugin {name!r}: history_bars() must return the raw bars it reads from "
            f"ctx.history, a whole number >= 0, got {got!r}"
        )
    if n > MAX_HISTORY_BARS:
        raise ConfigError(
            f"plugin {name!r}: history_bars() = {n:,} is over the limit of "
            f"{MAX_HISTORY_BARS:,} bars of raw history (the engine holds every bar of it for "
            "every symbol in memory); read a shorter window, or compute the long-run figure "
            "as a feature or inside the plugin"
        )
    return n


def _kind_of(ep: EntryPoint) -> str | None:
    try:
        return getattr(ep.load(), "kind", None)
    except Exception:
        return None
