"""Typed, frozen configuration: TOML files plus TRADINGD_* environment overrides.

Every section is a frozen dataclass whose defaults are the reference specification's values,
so a missing file still means "the documented defaults". Unknown keys are errors that list the
valid keys: a typo must never silently fall back to a default in a service that trades.

Environment overrides: `TRADINGD_<SECTION>__<KEY>=value`, e.g.
`TRADINGD_COSTS__COMMISSION_PCT=0.002` (values parsed as TOML scalars when possible).
`DATABASE_URL` and `REDIS_URL` override `storage.url` and `cache.url`. Plugin lists
(`[[signals]]`, `[[risk]]`) are set in files only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .core.errors import ConfigError
from .features.indicators import IndicatorConfig

T = TypeVar("T")


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    # Fixed run id; empty means "<name>-<hash of the config>", stable across reruns so that
    # client order ids of the same decisions are the same (idempotent resubmission).
    run_id: str = ""
    initial_capital: float = 100_000.0
    output_dir: str = "var/runs"
    start: str = ""
    end: str = ""

    def __post_init__(self) -> None:
        _require(self.initial_capital > 0, "run.initial_capital", self.initial_capital, "> 0")


@dataclass(frozen=True)
class DataConfig:
    source: str = "bundled"  # bundled | csv | parquet
    path: str = ""
    layout: str = "auto"  # auto | long | per_symbol
    symbols: tuple[str, ...] = ()
    max_symbols: int = 0  # 0 = all
    repair: tuple[str, ...] = ()
    max_gap_days: int = 7

    def __post_init__(self) -> None:
        _choice("data.source", self.source, ("bundled", "csv", "parquet"))
        _choice("data.layout", self.layout, ("auto", "long", "per_symbol"))
        if self.source != "bundled" and not self.path:
            raise ConfigError(f"data.path is required when data.source = {self.source!r}")


@dataclass(frozen=True)
class CostsConfig:
    commission_pct: float = 0.001  # 0.1% of notional (specification)
    slippage_pct: float = 0.0005  # 0.05% (specification)
    half_spread_bps: float = 0.0
    min_commission: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _require(getattr(self, f.name) >= 0, f"costs.{f.name}", getattr(self, f.name), ">= 0")


@dataclass(frozen=True)
class BrokerConfig:
    kind: str = "simulated"  # simulated | alpaca (a later issue)
    max_volume_participation: float = 0.1
    order_ttl_bars: int = 5
    allow_short: bool = False

    def __post_init__(self) -> None:
        _choice("broker.kind", self.kind, ("simulated",))
        _require(
            0 <= self.max_volume_participation <= 1,
            "broker.max_volume_participation",
            self.max_volume_participation,
            "in [0, 1]",
        )


@dataclass(frozen=True)
class OrdersConfig:
    # Trade a symbol only when its target weight differs from the held weight by more than
    # this, so that price drift does not cause a stream of tiny rebalancing orders.
    rebalance_band: float = 0.01
    min_trade_value: float = 100.0
    fractional: bool = False
    # Attach take-profit / stop-loss legs (one cancels the other) to new entries.
    brackets: bool = False
    take_profit_pct: float = 0.04  # specification: 4% from entry
    stop_loss_pct: float = 0.02  # specification: 2% from entry

    def __post_init__(self) -> None:
        _require(self.rebalance_band >= 0, "orders.rebalance_band", self.rebalance_band, ">= 0")
        _require(self.take_profit_pct > 0, "orders.take_profit_pct", self.take_profit_pct, "> 0")
        _require(
            0 < self.stop_loss_pct < 1, "orders.stop_loss_pct", self.stop_loss_pct, "in (0, 1)"
        )


@dataclass(frozen=True)
class PluginSpec:
    """One configured plugin: its registered name, weight (signals only) and parameters."""

    name: str
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)


def _default_signals() -> tuple[PluginSpec, ...]:
    return (PluginSpec("momentum", 1.0, {"lookback": 126}),)


def _default_risk() -> tuple[PluginSpec, ...]:
    return (
        PluginSpec("max_position", params={"max_position_pct": 0.05}),
        PluginSpec("max_open_positions", params={"max_open_positions": 10}),
        PluginSpec("max_gross_exposure", params={"max_gross_exposure": 1.0}),
        PluginSpec(
            "drawdown_guard", params={"max_drawdown_pct": 0.20, "daily_loss_limit_pct": 0.05}
        ),
    )


@dataclass(frozen=True)
class FeaturesConfig:
    # The named, versioned feature set that feeds the models (see features/catalog.py).
    set: str = "default_v1"
    # Features computed every bar besides those the plugins ask for.
    extra: tuple[str, ...] = ()
    cross_sectional: str = "rank"  # rank | zscore: the method of `cs_<feature>`
    # Raw bars kept for plugins that read `ctx.history` directly.
    history_bars: int = 2
    indicators: IndicatorConfig = field(default_factory=IndicatorConfig)

    def __post_init__(self) -> None:
        _choice("features.cross_sectional", self.cross_sectional, ("rank", "zscore"))
        _require(self.history_bars >= 1, "features.history_bars", self.history_bars, ">= 1")


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///var/tradingd.db"
    batch_size: int = 5000
    # Buffered rows are written at the latest this long after the previous write, so a live
    # daemon's records reach the database within seconds, not when a batch fills.
    flush_interval_s: float = 1.0
    signals: str = "decisions"  # decisions | all | none

    def __post_init__(self) -> None:
        _choice("storage.signals", self.signals, ("decisions", "all", "none"))
        _require(self.batch_size > 0, "storage.batch_size", self.batch_size, "> 0")


@dataclass(frozen=True)
class CacheConfig:
    url: str = ""  # empty = in-process memory; redis://host:6379/0 for Redis
    expiry_s: float = 3600.0  # specification: REDIS_EXPIRY
    # Publish the engine's state at most this often (wall-clock seconds), so a fast replay
    # does not turn into a Redis benchmark.
    publish_interval_s: float = 1.0


@dataclass(frozen=True)
class LiveConfig:
    bar: str = "1d"
    close_time: str = "16:00"
    timezone: str = "America/New_York"
    # Wait after the close before pulling the bar, so the data vendor has published it.
    delay_s: float = 300.0
    # Accelerated time for tests and demos: 0 = real time; otherwise bars of the calendar
    # are released at this many per second.
    bars_per_second: float = 0.0

    def __post_init__(self) -> None:
        _choice("live.bar", self.bar, ("1d",))


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto (console on a terminal, JSON otherwise) | json | console
    audit_dir: str = "var/audit"
    audit_max_bytes: int = 50_000_000
    audit_backups: int = 10

    def __post_init__(self) -> None:
        _choice("log.format", self.format, ("auto", "json", "console"))
        _choice("log.level", self.level, ("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    costs: CostsConfig = field(default_factory=CostsConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    orders: OrdersConfig = field(default_factory=OrdersConfig)
    signals: tuple[PluginSpec, ...] = field(default_factory=_default_signals)
    sizing: PluginSpec = field(
        default_factory=lambda: PluginSpec(
            "equal_weight", params={"max_positions": 10, "gross_exposure": 0.5}
        )
    )
    risk: tuple[PluginSpec, ...] = field(default_factory=_default_risk)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


# ----------------------------------------------------------------------------- loading


def load_config(
    paths: typing.Sequence[str | Path] = (), env: Mapping[str, str] | None = None
) -> Config:
    """Merge TOML files in order (later wins), then environment overrides, then validate."""
    merged: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _deep_merge(merged, data)
    _apply_env(merged, os.environ if env is None else env)
    return build(Config, merged, "")


def build(cls: type[T], data: Any, where: str) -> T:
    """Construct dataclass `cls` from plain data, rejecting unknown keys and bad types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _coerce(non_none[0], value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _apply_env(merged: dict[str, Any], env: Mapping[str, str]) -> None:
    if env.get("DATABASE_URL"):
        merged.setdefault("storage", {})["url"] = env["DATABASE_URL"]
    if env.get("REDIS_URL"):
        merged.setdefault("cache", {})["url"] = env["REDIS_URL"]
    sections = {f.name for f in dataclasses.fields(Config)} - {"signals", "risk", "sizing"}
    for key, raw in env.items():
        if not key.startswith("TRADINGD_") or "__" not in key:
            continue
        section, _, name = key[len("TRADINGD_") :].lower().partition("__")
        if section not in sections:
            raise ConfigError(
                f"environment variable {key}: unknown section {section!r}; "
                f"valid sections: {', '.join(sorted(sections))}"
            )
        merged.setdefault(section, {})[name] = _parse_scalar(raw)


def _parse_scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict) and k != "params":
            _deep_merge(into[k], v)
        else:
            into[k] = v


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: must be {rule}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is invalid; valid choices: {', '.join(choices)}")
