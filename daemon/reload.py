"""Reloading the configuration of a running daemon (SIGHUP).

`tradingd run` re-reads the same configuration files (and the process environment, which a
signal cannot change) on SIGHUP and hands the result to `reload_config(engine, old, new)`,
which applies what can change under a running engine without a restart and reports the rest:

* `log.level`: every logger, at once (`tradingd.logs.set_level`);
* risk limits: the `params` of a risk plugin whose name and position in `[[risk]]` are
  unchanged. The new params are parsed into the plugin's own `Config` class and checked by
  building a throw-away instance (exactly what start-up would reject is rejected), then the
  running plugin's `config` attribute is replaced (or its `reconfigure(config)` called, if it
  has one): its state (a drawdown guard's peak and halt, say) is kept. A plugin that derives
  anything from its config when it is built (a sector map, a quantile) must offer
  `reconfigure`. New params that read more history than the engine keeps (its buffer is
  sized at start) are not applied: restart needed;
* alert targets (`[alerts]`): through the running alerter's `reconfigure(config)`, when the
  daemon has an alerter that offers it (otherwise reported as not reloaded).

Anything else that changed (symbols, data, feed, broker, storage, cache, health, signals,
sizing, a risk plugin added, removed or moved, `log.format`, audit settings, ...) is reported
as "not reloaded: restart needed", by key, never by value (values may hold credentials).

A new configuration that is invalid is rejected as a whole and nothing is applied: one that
does not load (`load_config` raises), a risk limit its plugin refuses, a plugin that does not
exist or params its `Config` does not accept (also for sections that would only change at
the next restart: a restart must not be the moment that finds out). The report's `config` is
the configuration the daemon runs with afterwards: the old one with what was applied swapped
in, which is what the next SIGHUP compares against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .config import Config, PluginSpec, build, load_config
from .core.errors import ConfigError, TradingdError
from .engine.plugins import RUN_KEYS, naming_plugin
from .logs import unfiltered

log = structlog.get_logger(__name__)

RESTART_NEEDED = "restart needed"


@dataclass
class ReloadReport:
    """What a reload did. `applied` and `not_reloaded` are configuration keys
    (`log.level`, `risk[0].params.max_position_pct`, `data.symbols`); `error` is set when the
    new configuration was rejected (then nothing was applied); `changes` holds old and new
    value of each applied key (log level and risk limits only, which are not secret);
    `notes` explains what was skipped and why; `config` is the running configuration after
    the reload."""

    applied: list[str] = field(default_factory=list)
    not_reloaded: list[str] = field(default_factory=list)
    error: str | None = None
    changes: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: Config | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def reload_config(engine: Any, old: Config, new: Config, *, alerter: Any = None) -> ReloadReport:
    """Apply to the running `engine` what is safe to change from `old` to `new` (see the
    module docstring). `alerter` is the daemon's alerter (default: `engine.alerter` if the
    engine has one)."""
    report = ReloadReport(config=old)
    actions: list[Callable[[], None]] = []
    effective: dict[str, Any] = {}
    try:
        _check_plugins(old, new)
        risk_done = _stage_risk(engine, old, new, report, actions, effective)
        alerts = _stage_alerts(engine, old, new, report, effective, alerter)
        _stage_log(old, new, report, actions, effective)
    except TradingdError as exc:
        return ReloadReport(error=str(exc), config=old)
    handled = {"log.level", "alerts"} | ({"risk"} if risk_done else set())
    for key in changed_keys(old, new):
        if not any(_under(key, h) for h in handled) and key not in report.not_reloaded:
            report.not_reloaded.append(key)
    # Apply: the alerter first, the only step that may still refuse (nothing else is
    # applied then); the rest are assignments.
    if alerts is not None:
        try:
            alerts()
        except Exception as exc:
            return ReloadReport(error=f"alerts: {type(exc).__name__}: {exc}", config=old)
    for act in actions:
        act()
    report.config = dataclasses.replace(old, **effective) if effective else old
    return report


def reload_from_files(
    engine: Any,
    old: Config,
    paths: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    alerter: Any = None,
) -> ReloadReport:
    """Re-read `paths` (and the environment) like start-up did, then `reload_config`."""
    try:
        new = load_config(paths, env)
        from .config import log_overlay_notes

        log_overlay_notes(new)
    except TradingdError as exc:
        return ReloadReport(error=str(exc), config=old)
    return reload_config(engine, old, new, alerter=alerter)


def log_report(report: ReloadReport, **fields: Any) -> None:
    """The outcome as structured log lines: one for what was applied (or that nothing
    changed), one warning listing every key that needs a restart, or one error for a
    rejected configuration."""
    if report.error is not None:
        log.error(
            "config.reload_rejected",
            error=report.error,
            detail="the new configuration is invalid: nothing was applied, the running "
            "configuration is kept",
            **fields,
        )
        return
    # Written whatever the level (`logs.unfiltered`): a SIGHUP that lowered `log.level` to
    # "warning" filtered out its own confirmation, and nothing said it had been applied.
    always = unfiltered(__name__)
    if report.applied:
        always.info(
            "config.reloaded",
            applied=report.applied,
            changes=report.changes,
            notes=report.notes or None,
            **fields,
        )
    elif not report.not_reloaded:
        always.info("config.reload_unchanged", detail="nothing changed", **fields)
    if report.not_reloaded:
        log.warning(
            "config.not_reloaded",
            keys=report.not_reloaded,
            detail=f"not reloaded: {RESTART_NEEDED}",
            notes=report.notes or None,
            **fields,
        )


# ----------------------------------------------------------------------------- staging


def _stage_log(
    old: Config,
    new: Config,
    report: ReloadReport,
    actions: list[Callable[[], None]],
    effective: dict[str, Any],
) -> None:
    if old.log.level == new.log.level:
        return
    from .logs import set_level

    level = new.log.level
    actions.append(lambda: set_level(level))
    report.applied.append("log.level")
    report.changes["log.level"] = [old.log.level, level]
    effective["log"] = dataclasses.replace(old.log, level=level)


def _stage_risk(
    engine: Any,
    old: Config,
    new: Config,
    report: ReloadReport,
    actions: list[Callable[[], None]],
    effective: dict[str, Any],
) -> bool:
    """Stage new risk limits; False when the risk chain itself changed (restart)."""
    if old.risk == new.risk:
        return True
    risks = list(getattr(getattr(engine, "pipeline", None), "risks", ()))
    names = [s.name for s in new.risk]
    if [s.name for s in old.risk] != names or len(risks) != len(names):
        report.notes.append(
            "risk: plugins were added, removed or reordered; only the limits of an "
            "unchanged chain are reloaded"
        )
        return False
    symbols = tuple(getattr(engine, "symbols", ()))
    history = getattr(engine, "history", None)
    capacity = getattr(history, "capacity", None)
    specs = list(old.risk)
    for i, (o, n) in enumerate(zip(old.risk, new.risk, strict=True)):
        if o.params == n.params:
            continue
        plugin = risks[i]
        where = f"risk[{i}].params"
        config = _plugin_config(type(plugin), n, where, running=getattr(plugin, "config", None))
        bars = _validate_instance(type(plugin), config, symbols, where)
        if capacity is not None and bars > capacity:
            # The history buffer is sized at start for the longest window any plugin reads:
            # applied, the plugin's next check would ask for more and stop the daemon.
            report.not_reloaded.extend(
                f"{where}.{key}" for key in _changed_params(o.params, n.params)
            )
            report.notes.append(
                f"risk[{i}] ({n.name}): its new params read {bars} bars of history and the "
                f"running engine keeps {capacity}; nothing of it was applied (restart needed)"
            )
            continue
        for key in _changed_params(o.params, n.params):
            path = f"{where}.{key}"
            report.applied.append(path)
            report.changes[path] = [_lookup(o.params, key), _lookup(n.params, key)]
        actions.append(_swap_config(plugin, config))
        specs[i] = dataclasses.replace(o, params=n.params)
    for i, (o, n) in enumerate(zip(old.risk, new.risk, strict=True)):
        if o.weight != n.weight:  # not used for risk plugins; never applied
            report.not_reloaded.append(f"risk[{i}].weight")
    effective["risk"] = tuple(specs)
    return True


def _stage_alerts(
    engine: Any,
    old: Config,
    new: Config,
    report: ReloadReport,
    effective: dict[str, Any],
    alerter: Any,
) -> Callable[[], None] | None:
    before, after = getattr(old, "alerts", None), getattr(new, "alerts", None)
    if before == after:
        return None
    target = alerter if alerter is not None else getattr(engine, "alerter", None)
    reconfigure = getattr(target, "reconfigure", None)
    if not callable(reconfigure):
        report.not_reloaded.append("alerts")
        report.notes.append(
            "alerts: the daemon has no running alerter that can be reconfigured "
            "(no reconfigure method)"
        )
        return None
    report.applied.append("alerts")
    effective["alerts"] = after
    return lambda: reconfigure(after)


def _swap_config(plugin: Any, config: Any) -> Callable[[], None]:
    def swap() -> None:
        reconfigure = getattr(plugin, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(config)
        else:
            plugin.config = config  # frozen dataclass replaced whole; plugin state kept

    return swap


# ----------------------------------------------------------------------------- checks


def _plugin_config(cls: type, spec: PluginSpec, where: str, running: Any = None) -> Any:
    """The new params' config; a value the run gave the plugin (`engine.plugins.RUN_KEYS`,
    such as an intraday `periods_per_year`) stays unless the new params set it."""
    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        raise ConfigError(f"{where}: plugin {spec.name!r} has no Config class")
    params = dict(spec.params)
    for key in RUN_KEYS:
        if key not in params and running is not None and hasattr(running, key):
            params[key] = getattr(running, key)
    try:
        return build(config_cls, params, where)
    except ConfigError as exc:
        naming_plugin(exc, where.removesuffix(".params"), spec.name)
        raise


def _validate_instance(cls: type, config: Any, symbols: tuple[str, ...], where: str) -> int:
    """What start-up would refuse (the plugin's constructor checks) is refused here. Returns
    the bars of history the instance reads (`history_bars()`, 0 when it says nothing)."""
    try:
        instance = cls(config, symbols)
    except (ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        reads = getattr(instance, "history_bars", None)
        return int(reads()) if callable(reads) else 0
    finally:
        close = getattr(instance, "close", None)
        if callable(close):
            close()


def _check_plugins(old: Config, new: Config) -> None:
    """Every plugin of `new` that differs from `old` exists, is of its kind and accepts its
    params (its Config class is built; it is not instantiated: a signal may load a model)."""
    from .engine.plugins import available

    eps: dict[str, Any] | None = None
    pairs: list[tuple[str, str, PluginSpec, PluginSpec | None]] = [
        ("signal", f"signals[{i}]", s, old.signals[i] if i < len(old.signals) else None)
        for i, s in enumerate(new.signals)
    ]
    pairs.append(("sizing", "sizing", new.sizing, old.sizing))
    pairs += [
        ("risk", f"risk[{i}]", s, old.risk[i] if i < len(old.risk) else None)
        for i, s in enumerate(new.risk)
    ]
    for kind, where, spec, before in pairs:
        if before == spec:
            continue
        eps = available() if eps is None else eps
        ep = eps.get(spec.name)
        if ep is None:
            raise ConfigError(
                f"{where}.name = {spec.name!r}: no such plugin; valid choices: "
                + ", ".join(sorted(eps))
            )
        try:
            cls = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"{where}.name = {spec.name!r}: the plugin failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if getattr(cls, "kind", None) != kind:
            raise ConfigError(f"{where}.name = {spec.name!r} is not a {kind!r} plugin")
        _plugin_config(cls, spec, f"{where}.params")


# ----------------------------------------------------------------------------- diffs


def changed_keys(old: Config, new: Config) -> list[str]:
    """The keys whose values differ, as dotted paths (`data.symbols`, `risk[0].params.x`).
    A list of tables (plugins) of the same length is compared entry by entry, any other
    list as one value."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    keys = [*a, *(k for k in b if k not in a)]
    changed = [k for k in keys if a.get(k, _NO) != b.get(k, _NO)]
    # A plugin list that grew or shrank is one change ("risk"), not one per shifted entry.
    resized = {k.split("#", 1)[0] for k in changed if k.endswith("#len")}
    out: list[str] = []
    for k in changed:
        section = k.split("[", 1)[0].split("#", 1)[0]
        key = section if section in resized else k
        if key not in out:
            out.append(key)
    return out


_NO = object()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, Mapping) for v in value)
        and _is_plugin_list(prefix)
    ):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        out[f"{prefix}#len"] = len(value)  # a list that grew or shrank is a change of its own
    else:
        out[prefix] = value
    return out


def _is_plugin_list(prefix: str) -> bool:
    return prefix in ("signals", "risk")


def _under(key: str, section: str) -> bool:
    return key == section or key.startswith((f"{section}.", f"{section}[", f"{section}#"))


def _changed_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    fa, fb = flatten(dict(a)), flatten(dict(b))
    keys = [*fa, *(k for k in fb if k not in fa)]
    return [k for k in keys if fa.get(k, _NO) != fb.get(k, _NO) and k]


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value
