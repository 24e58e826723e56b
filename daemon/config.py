"""Typed, frozen configuration: TOML files plus TRADINGD_* environment overrides.

Every section is a frozen dataclass whose defaults are the reference specification's values,
so a missing file still means "the documented defaults". Unknown keys are errors that list the
valid keys: a typo must never silently fall back to a default in a service that trades.

Environment overrides: `TRADINGD_<SECTION>__<KEY>=value`, e.g.
`TRADINGD_COSTS__COMMISSION_PCT=0.002` (values parsed as TOML scalars when possible; nested
tables as `TRADINGD_FEATURES__INDICATORS__RSI=10`). `DATABASE_URL` and `REDIS_URL` override
`storage.url` and `cache.url`. Plugin lists (`[[signals]]`, `[[risk]]`) are set in files only.
Any other `TRADINGD_*` variable is an error unless it is in `NON_CONFIG_ENV` or an
`[[alerts.targets]]` `url_env` names it: a misspelt override (`TRADINGD_COSTS_COMMISSION_PCT`,
one underscore) must not be silently ignored.

Every value is checked here, when the configuration is built, not when it is first used: a
replay must not run for an hour and then die on a bad close time. Checks that need the outside
world (plugins, writable folders, reachable services) are in `preflight.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from .alerts import AlertsConfig
from .core.endpoints import is_loopback as _is_loopback_host
from .core.endpoints import is_postgres_url
from .core.errors import ConfigError
from .features.catalog import FEATURE_SETS
from .features.indicators import IndicatorConfig
from .health import HealthConfig
from .secrets import mask_url, redact

# Plugin parameters that say where a plugin keeps a cache between runs (ml_ensemble's
# predictions, kelly_garch's GARCH fits), not what it decides: like the `cache` section,
# they are not part of a run's identity (`app.run_id_for`, `run_continuation`). A notebook's
# run puts them under the user's cache folder, so its run id followed $HOME; a daemon whose
# cache moved to another disk began a new run, its simulated account from the start.
CACHE_PARAMS = frozenset({"cache_dir", "fit_cache_dir"})


T = TypeVar("T")

# `TRADINGD_*` environment variables that are not configuration overrides. Extend this list
# when a new one is documented; anything else of that prefix must be `<SECTION>__<KEY>`.
NON_CONFIG_ENV = frozenset(
    {
        "TRADINGD_REQUIRE_SERVICES",  # tests and CI: fail instead of skipping without services
        "TRADINGD_HEALTH_TOKEN",  # the health endpoint's bearer token
        "TRADINGD_BUILD_COMMIT",  # read by the build (build_commit.py), harmless when exported
        "TRADINGD_KILL_AT",  # restart-safety tests: SIGKILL at a named point (tradingd.faults)
        "TRADINGD_LOCK_DIR",  # the machine-wide account locks' folder (instance_lock)
        "TRADINGD_TASK_WORKER",  # set in the worker processes of analysis.parallel
        "TRADINGD_SHARED_DATA",  # tests: where the shared data sets live
        "TRADINGD_SHARED_FIXTURES",  # tests: where the shared recorded fixtures live
        "TRADINGD_TEST_PG_URL",  # tests: the PostgreSQL to use
        "TRADINGD_TEST_REDIS_URL",  # tests: the Redis to use
    }
)

# Marks a string field that holds a date or datetime: TOML's unquoted dates (and environment
# values such as 2010-01-01, which parse as TOML dates) are accepted and stored as ISO text.
_DATE_FIELD = "iso-date"
DateStr = Annotated[str, _DATE_FIELD]

_DATE_FORMAT = '"YYYY-MM-DD" or an ISO datetime "YYYY-MM-DDTHH:MM[:SS][+HH:MM]" ("" for no bound)'
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?"
)
# A name that becomes part of a file name (run ids name the output folder and audit files).
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f]")


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    # Fixed run id; empty means "<name>-<hash of the config>", stable across reruns so that
    # client order ids of the same decisions are the same (idempotent resubmission).
    run_id: str = ""
    initial_capital: float = 100_000.0
    output_dir: str = "var/runs"
    start: DateStr = ""
    end: DateStr = ""
    # Trading without any risk rule must be a deliberate choice: an empty `risk` list is an
    # error unless this is true (a forgotten overlay must not remove every limit silently).
    allow_no_risk: bool = False

    def __post_init__(self) -> None:
        _finite(self, "run")
        _safe_name("run.name", self.name, allow_empty=False)
        _safe_name("run.run_id", self.run_id, allow_empty=True)
        # The run id goes into every order's client_order_id (`run|YYYYmmddTHHMMSS|symbol|
        # leg|attempt`, which Alpaca limits to 128 characters: about 40 besides the id) and
        # into file names (the audit log's, at most 255 bytes): a longer name failed at the
        # first order, or at the audit log's opening with a traceback, after the data loaded.
        # A derived id is the name and 20 characters more ("-backtest-" and a 10-digit hash).
        _short_name("run.name", self.name, RUN_ID_MAX_CHARS - 20)
        _short_name("run.run_id", self.run_id, RUN_ID_MAX_CHARS)
        _require(self.initial_capital > 0, "run.initial_capital", self.initial_capital, "> 0")
        _require(bool(self.output_dir.strip()), "run.output_dir", self.output_dir, "a folder")
        bounds = {}
        for key in ("start", "end"):
            value = getattr(self, key)
            if isinstance(value, date):  # built in code with a date: same as from TOML
                value = _iso(value)
                object.__setattr__(self, key, value)
            bounds[key] = _parse_date(f"run.{key}", value)
        lo, hi = bounds["start"], bounds["end"]
        if lo is not None and hi is not None and lo.date() > hi.date():
            raise ConfigError(
                f"run.start = {self.start!r} is after run.end = {self.end!r}: "
                "the run window must not be empty"
            )


@dataclass(frozen=True)
class DataConfig:
    source: str = "bundled"  # bundled | csv | parquet
    path: str = ""
    layout: str = "auto"  # auto | long | per_symbol
    symbols: tuple[str, ...] = ()
    max_symbols: int = 0  # 0 = all
    repair: tuple[str, ...] = ()
    max_gap_days: int = 7
    # Plausibility: a one-bar price jump of more than this factor that reverts (0 = off).
    max_spike: float = 10.0
    # Plausibility: shares per bar above this are absurd (0 = off).
    max_volume: float = 1e12
    # The exchange's time zone: times written with a UTC offset are converted to it, and it
    # decides which session a daily bar belongs to.
    timezone: str = "America/New_York"
    # How text dates are written (strftime, e.g. "%d/%m/%Y"); "" = inferred from the first.
    date_format: str = ""

    def __post_init__(self) -> None:
        _finite(self, "data")
        _choice("data.source", self.source, ("bundled", "csv", "parquet"))
        from .feeds.validate import check_date_format, check_limits

        # Their errors lead with `data.<key> = value`, so that load_config names the file or
        # the environment variable that set it (a "data: " before them blamed the file that
        # set [data]).
        check_limits(max_spike=self.max_spike, max_volume=self.max_volume, timezone=self.timezone)
        check_date_format(self.date_format)
        _choice("data.layout", self.layout, ("auto", "long", "per_symbol"))
        if self.source != "bundled" and not self.path:
            raise ConfigError(f"data.path is required when data.source = {self.source!r}")
        seen: set[str] = set()
        for i, sym in enumerate(self.symbols):
            _require(
                isinstance(sym, str) and bool(sym.strip()),
                f"data.symbols[{i}]",
                sym,
                "a non-empty symbol",
            )
            if sym in seen:
                raise ConfigError(f"data.symbols lists {sym!r} twice")
            seen.add(sym)
        _require(self.max_symbols >= 0, "data.max_symbols", self.max_symbols, ">= 0 (0 = no limit)")
        _require(self.max_gap_days >= 1, "data.max_gap_days", self.max_gap_days, ">= 1")
        if self.repair:
            from .feeds.validate import parse_repairs  # pandas: only when repairs are asked

            try:
                parse_repairs(self.repair)
            except ConfigError as exc:
                raise ConfigError(f"data.repair = {list(self.repair)!r}: {exc}") from None


@dataclass(frozen=True)
class CostsConfig:
    commission_pct: float = 0.001  # 0.1% of notional (specification)
    slippage_pct: float = 0.0005  # 0.05% (specification)
    half_spread_bps: float = 0.0
    min_commission: float = 0.0

    def __post_init__(self) -> None:
        _finite(self, "costs")
        # Fractions, not percentages: 5.0 would mean 500% of every trade, which is never
        # intended and would silently make every trade a loss.
        for key in ("commission_pct", "slippage_pct"):
            value = getattr(self, key)
            _require(
                0 <= value < MAX_COST_FRACTION,
                f"costs.{key}",
                value,
                f"a fraction in [0, {MAX_COST_FRACTION}) (0.001 = 0.1% of the traded value)",
            )
        _require(
            0 <= self.half_spread_bps < MAX_HALF_SPREAD_BPS,
            "costs.half_spread_bps",
            self.half_spread_bps,
            f"in basis points in [0, {MAX_HALF_SPREAD_BPS:g}) (10 = 0.1%)",
        )
        _require(self.min_commission >= 0, "costs.min_commission", self.min_commission, ">= 0")


# Upper bounds that catch a percentage written where a fraction is expected (5.0 for 5%).
MAX_COST_FRACTION = 0.1
MAX_HALF_SPREAD_BPS = 1000.0


@dataclass(frozen=True)
class AlpacaConfig:
    """The Alpaca paper broker (tradingd.brokers.alpaca). Keys only from the environment:
    APCA_API_KEY_ID, APCA_API_SECRET_KEY."""

    base_url: str = "https://paper-api.alpaca.markets"
    stream_url: str = ""  # "" = derived from base_url (wss://host/stream)
    stream_enabled: bool = True
    poll_interval_s: float = 5.0
    # Open orders are polled this often while the stream is up too: a trade update lost on a
    # live connection is made up by it (0 = never).
    open_orders_check_s: float = 300.0
    request_timeout_s: float = 10.0
    call_timeout_s: float = 30.0
    max_attempts: int = 3
    time_in_force: str = "day"
    exit_time_in_force: str = "gtc"
    bracket_time_in_force: str = "gtc"
    extended_hours: bool = False
    # Alpaca allows 200 requests per minute per account: calls wait for their turn rather
    # than meet 429s (0 = no client-side limit); burst = calls that go at once from rest.
    rate_limit_per_minute: int = 200
    rate_limit_burst: int = 20
    max_in_flight: int = 4  # orders of one batch sent at once (sells first, then buys)
    # Splits announced in Alpaca's corporate actions (the market-data API at data_url), read
    # once a session day beside the bars: a symbol splitting at the next open is held for
    # that bar (README, "Splits in a held symbol, live"). false: the split is found at the
    # ex-date's bar only.
    splits_ahead: bool = True
    # "" = feed.alpaca.base_url when the feed is Alpaca and sets one, else
    # https://data.alpaca.markets with Alpaca's own trading hosts, else base_url (a proxy or a
    # test server that answers both APIs). See app.corporate_actions_url.
    data_url: str = ""

    @property
    def effective_data_url(self) -> str:
        if self.data_url:
            return self.data_url
        return "https://data.alpaca.markets" if self.is_alpacas_host else self.base_url

    @property
    def is_alpacas_host(self) -> bool:
        """`base_url` is one of Alpaca's own hosts."""
        host = (urlsplit(self.base_url).hostname or "").rstrip(".")
        return host == "alpaca.markets" or host.endswith(".alpaca.markets")

    @property
    def is_loopback(self) -> bool:
        """`base_url` is on this machine (a test server), not an account: Alpaca's hosts,
        and a proxy in front of them, are anywhere else."""
        host = (urlsplit(self.base_url).hostname or "").rstrip(".").lower()
        if host.endswith(".localhost"):  # RFC 6761: every such name is loopback
            return True
        # The one reading of "this machine" (127.1 as the OS reads it, never a lookup).
        return _is_loopback_host(host.partition("%")[0])  # (an IPv6 zone id aside)

    def __post_init__(self) -> None:
        _finite(self, "broker.alpaca")
        _require(
            self.rate_limit_per_minute >= 0,
            "broker.alpaca.rate_limit_per_minute",
            self.rate_limit_per_minute,
            ">= 0 (0 = no limit)",
        )
        if self.rate_limit_per_minute > 1:
            _require(
                0 < self.rate_limit_burst < self.rate_limit_per_minute,
                "broker.alpaca.rate_limit_burst",
                self.rate_limit_burst,
                f"> 0 and below rate_limit_per_minute ({self.rate_limit_per_minute})",
            )
        _require(self.max_in_flight >= 1, "broker.alpaca.max_in_flight", self.max_in_flight, ">= 1")
        _require(
            self.open_orders_check_s >= 0,
            "broker.alpaca.open_orders_check_s",
            self.open_orders_check_s,
            ">= 0 (0 = never)",
        )
        for name in ("poll_interval_s", "request_timeout_s", "call_timeout_s"):
            _require(getattr(self, name) > 0, f"broker.alpaca.{name}", getattr(self, name), "> 0")
        _require(self.max_attempts >= 1, "broker.alpaca.max_attempts", self.max_attempts, ">= 1")
        for name in ("time_in_force", "exit_time_in_force", "bracket_time_in_force"):
            _choice(f"broker.alpaca.{name}", getattr(self, name), ("day", "gtc"))
        _check_url("broker.alpaca.base_url", self.base_url, ("http", "https"))
        _check_url("broker.alpaca.stream_url", self.stream_url, ("ws", "wss"), allow_empty=True)
        _check_url("broker.alpaca.data_url", self.data_url, ("http", "https"), allow_empty=True)


@dataclass(frozen=True)
class BrokerConfig:
    # simulated; alpaca (live mode, keys required); auto (live mode: alpaca when the keys are
    # in the environment, else simulated). Backtests always use the simulated broker.
    kind: str = "auto"
    # Largest fraction of one bar's volume a single order may take; 0 = unlimited.
    max_volume_participation: float = 0.1
    # Bars an entry order may stay open before it is cancelled; 0 = good till cancelled.
    order_ttl_bars: int = 5
    allow_short: bool = False
    alpaca: AlpacaConfig = field(default_factory=AlpacaConfig)

    def __post_init__(self) -> None:
        _finite(self, "broker")
        _choice("broker.kind", self.kind, ("simulated", "alpaca", "auto"))
        _require(
            0 <= self.max_volume_participation <= 1,
            "broker.max_volume_participation",
            self.max_volume_participation,
            "in [0, 1] (0 = unlimited)",
        )
        _require(
            self.order_ttl_bars >= 0,
            "broker.order_ttl_bars",
            self.order_ttl_bars,
            ">= 0 (0 = good till cancelled)",
        )


@dataclass(frozen=True)
class OrdersConfig:
    # Trade a symbol only when its target weight differs from the held weight by more than
    # this, so that price drift does not cause a stream of tiny rebalancing orders.
    rebalance_band: float = 0.01
    min_trade_value: float = 100.0
    fractional: bool = False
    # Protect every new position with a stop-loss and a take-profit (see the
    # engine/planner.py docstring for the orders each mode gives, per broker).
    brackets: bool = True
    # Stop-loss (specification: 2% from entry, 2 x ATR, or trailing):
    #   "pct": a stop at entry -/+ stop_loss_pct;
    #   "atr": a stop at entry -/+ atr_multiple x ATR(atr_period) of the deciding bar;
    #   "trailing": a trailing stop stop_loss_pct below the best price since it was placed.
    stop_mode: str = "pct"
    stop_loss_pct: float = 0.02  # specification: 2% from entry
    atr_multiple: float = 2.0  # specification: 2 x ATR
    atr_period: int = 14  # specification: ATR over 14 bars
    # Take-profit (specification: 4% from entry, 2:1 reward to risk, or trailing):
    #   "pct": a limit at entry +/- take_profit_pct;
    #   "reward_risk": a limit reward_risk times the stop's distance from entry;
    #   "trailing": no price target: the stop trails the best price (at the stop's
    #   distance), so it locks gains in as the price runs and is the position's exit.
    take_profit_mode: str = "pct"
    take_profit_pct: float = 0.04  # specification: 4% from entry
    reward_risk: float = 2.0  # specification: 2:1
    # Live: an order the broker refused for a transient reason (request budget spent, buying
    # power held by the batch's own sells) is tried again within the bar under the next
    # attempt number, after retry_delay_s, doubling each time. Replays never retry.
    retry_attempts: int = 2
    retry_delay_s: float = 5.0

    def __post_init__(self) -> None:
        _finite(self, "orders")
        _require(
            0 <= self.retry_attempts <= 10, "orders.retry_attempts", self.retry_attempts, "0..10"
        )
        _require(self.retry_delay_s >= 0, "orders.retry_delay_s", self.retry_delay_s, ">= 0")
        _require(
            0 <= self.rebalance_band < 1,
            "orders.rebalance_band",
            self.rebalance_band,
            "a fraction of equity in [0, 1)",
        )
        _require(self.min_trade_value >= 0, "orders.min_trade_value", self.min_trade_value, ">= 0")
        _require(
            0 < self.take_profit_pct <= 1,
            "orders.take_profit_pct",
            self.take_profit_pct,
            "a fraction in (0, 1] (0.04 = 4% from entry)",
        )
        _require(
            0 < self.stop_loss_pct < 1,
            "orders.stop_loss_pct",
            self.stop_loss_pct,
            "a fraction in (0, 1) (0.02 = 2% from entry)",
        )
        _choice("orders.stop_mode", self.stop_mode, ("pct", "atr", "trailing"))
        _choice(
            "orders.take_profit_mode", self.take_profit_mode, ("pct", "reward_risk", "trailing")
        )
        _require(
            0 < self.atr_multiple <= 20,
            "orders.atr_multiple",
            self.atr_multiple,
            "a number in (0, 20] (2.0 = a stop 2 x ATR from entry)",
        )
        _require(
            isinstance(self.atr_period, int)
            and not isinstance(self.atr_period, bool)
            and 1 <= self.atr_period <= 500,
            "orders.atr_period",
            self.atr_period,
            "a whole number of bars in 1..500",
        )
        _require(
            0 < self.reward_risk <= 100,
            "orders.reward_risk",
            self.reward_risk,
            "a number in (0, 100] (2.0 = a take-profit twice as far as the stop)",
        )
        if self.take_profit_mode == "reward_risk" and self.stop_mode != "atr":
            # A short's take-profit sits reward_risk x stop_loss_pct below entry: above zero.
            _require(
                self.reward_risk * self.stop_loss_pct < 1,
                "orders.reward_risk",
                self.reward_risk,
                f"below 1 / stop_loss_pct = {1 / self.stop_loss_pct:g} (a short's "
                "take-profit would be at or below a price of 0)",
            )
        for key, value in (
            ("stop_mode", self.stop_mode),
            ("take_profit_mode", self.take_profit_mode),
        ):
            # Modes only shape the exits of brackets: without them they would silently do
            # nothing, and a position the operator believes protected would not be.
            _require(
                self.brackets or value == "pct",
                f"orders.{key}",
                value,
                '"pct" unless orders.brackets = true (the modes shape the protective exits '
                "that brackets place)",
            )


@dataclass(frozen=True)
class PluginSpec:
    """One configured plugin: its registered name, weight (signals only) and parameters."""

    name: str
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"plugin name {self.name!r} is invalid: must be a plugin's name")
        if not isinstance(self.params, Mapping):
            raise ConfigError(f"plugin {self.name!r}: params must be a table")


def _default_signals() -> tuple[PluginSpec, ...]:
    return (PluginSpec("ml_ensemble", 0.6), PluginSpec("multi_factor", 0.4))


def _default_sizing() -> PluginSpec:
    return PluginSpec(
        "kelly_garch",
        params={"kelly_multiplier": 0.5, "target_vol": 0.15, "max_position": 0.05},
    )


def _default_risk() -> tuple[PluginSpec, ...]:
    return (
        PluginSpec("max_position", params={"max_position_pct": 0.05}),
        # The rules that refuse candidates before the count: counted first, a slot whose
        # pick a later rule refused stayed empty (docs/SPECIFICATION.md, "The order of the
        # risk rules").
        PluginSpec("correlation_limit", params={"max_correlation": 0.7, "window": 60}),
        PluginSpec("sector_exposure", params={"max_sector_pct": 0.20, "sectors_csv": ""}),
        PluginSpec(
            "drawdown_guard", params={"max_drawdown_pct": 0.20, "daily_loss_limit_pct": 0.05}
        ),
        PluginSpec("max_open_positions", params={"max_open_positions": 10}),
        PluginSpec("max_gross_exposure", params={"max_gross_exposure": 1.0}),
        # Last: the one limit a later cut could break (dropping a hedge can raise VaR).
        PluginSpec(
            "portfolio_var", params={"max_var_pct": 0.02, "confidence": 0.95, "window": 250}
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
        _choice("features.set", self.set, tuple(FEATURE_SETS))
        _choice("features.cross_sectional", self.cross_sectional, ("rank", "zscore"))
        _require(self.history_bars >= 1, "features.history_bars", self.history_bars, ">= 1")
        for i, name in enumerate(self.extra):
            _require(
                isinstance(name, str) and bool(name.strip()),
                f"features.extra[{i}]",
                name,
                "a feature name",
            )
        _finite(self.indicators, "features.indicators")


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///var/tradingd.db"
    batch_size: int = 5000
    # Buffered rows are written at the latest this long after the previous write, so a live
    # daemon's records reach the database within seconds, not when a batch fills; and a
    # replay's writer works beside the engine on small batches, so the run's end waits only
    # for the last one (at 1.0 s, the writer still had up to a second's rows to write after
    # the last bar: a 496-symbol replay waited 0.04 s for them, 0.004-0.016 s at 0.1 s).
    flush_interval_s: float = 0.1
    signals: str = "decisions"  # decisions | all | none
    # A live run on PostgreSQL keeps trading through a database outage: writes go to a local,
    # fsync'ed spool (at most spool_max_bytes; "" = var/spool/<database>) and are written
    # exactly once when the database is back; another store never spools, and a spool_dir
    # set with it is warned about at start (preflight: storage.spool_dir_unused).
    # start_retry_s: how long one attempt of a live start retries a database that is down
    # (then the start tries again, with backoff).
    spool_dir: str = ""
    spool_max_bytes: int = 268_435_456
    start_retry_s: float = 60.0
    # PostgreSQL: how long one statement may wait for the server's answer before the write
    # counts as an outage (spooled, live) or fails (a backtest). It bounds how long a hung
    # server or a table lock another session holds freezes the engine (it was 60 s, fixed).
    command_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        _finite(self, "storage")
        _require(
            self.spool_max_bytes >= 4096, "storage.spool_max_bytes", self.spool_max_bytes, ">= 4096"
        )
        _require(self.start_retry_s >= 0, "storage.start_retry_s", self.start_retry_s, ">= 0")
        _require(
            self.command_timeout_s > 0,
            "storage.command_timeout_s",
            self.command_timeout_s,
            "> 0 seconds",
        )
        _check_storage_url(self.url)
        _choice("storage.signals", self.signals, ("decisions", "all", "none"))
        _require(self.batch_size > 0, "storage.batch_size", self.batch_size, "> 0")
        _require(
            self.flush_interval_s >= 0,
            "storage.flush_interval_s",
            self.flush_interval_s,
            ">= 0 seconds (0 = write at every record)",
        )


@dataclass(frozen=True)
class CacheConfig:
    url: str = ""  # empty = in-process memory; redis://host:6379/0 for Redis
    expiry_s: float = 3600.0  # specification: REDIS_EXPIRY
    # Publish the engine's state at most this often (wall-clock seconds), so a fast replay
    # does not turn into a Redis benchmark.
    publish_interval_s: float = 1.0
    # The validated data of csv/parquet sources, kept on disk so a rerun on unchanged files
    # skips reading and checking them (feeds/panel_cache.py); "" = $XDG_CACHE_HOME or
    # ~/.cache, under tradingd/panels. Least recently used entries go beyond data_max_mb.
    data: bool = True
    data_dir: str = ""
    data_max_mb: float = 2048.0
    # A backtest's prepared features, kept on disk so a rerun on the same data and features
    # skips computing them (features/batch_cache.py); "" = beside the data cache, under
    # tradingd/features. The S&P 500 file with the default strategy's 24 features: ~470 MB.
    features: bool = True
    features_dir: str = ""
    features_max_mb: float = 2048.0

    def __post_init__(self) -> None:
        _finite(self, "cache")
        _check_cache_url(self.url)
        _require(self.data_max_mb >= 0, "cache.data_max_mb", self.data_max_mb, ">= 0 MB")
        _require(
            self.features_max_mb >= 0, "cache.features_max_mb", self.features_max_mb, ">= 0 MB"
        )
        _require(self.expiry_s > 0, "cache.expiry_s", self.expiry_s, "> 0 seconds")
        _require(
            self.publish_interval_s >= 0,
            "cache.publish_interval_s",
            self.publish_interval_s,
            ">= 0 seconds",
        )


LIVE_BARS = ("1d", "1m", "5m", "15m", "30m", "60m")
# A fill that has not reached the book's events after this long is not one in flight.
_RECONCILE_CONFIRM_MAX_S = 300.0


@dataclass(frozen=True)
class LiveConfig:
    # Bar interval: 1d (labelled by session date) or 1m/5m/15m/30m/60m (labelled by start, UTC).
    bar: str = "1d"
    # The exchange calendar (exchange-calendars names): sessions, holidays, half days, the
    # time zone and the close of every session come from it.
    calendar: str = "XNYS"
    # Wait after the close before pulling the bar, so the data vendor has published it.
    delay_s: float = 300.0
    # Accelerated time for tests and demos: 0 = real time; otherwise bars of the calendar
    # are released at this many per second.
    bars_per_second: float = 0.0
    # A scheduler tick that releases any bar whose firing was missed (machine suspend).
    heartbeat_s: float = 60.0
    # Bars of history fetched at start so every feature and model input is ready at the
    # first live bar (the default model needs a 60-bar window of features that need ~35).
    # A vendor warm-up fetches more when a plugin reads a longer history (app.warmup_needed:
    # kelly_garch's GARCH window), so live decisions match a backtest's.
    warmup_bars: int = 300
    # The book against the broker's positions (Alpaca): at start and this often.
    reconcile_interval_s: float = 300.0
    # A new position difference is read again this long after, and blocks the symbol only
    # if it stands: a fill the broker's positions already hold has its event booked by then.
    # Raise it for a broker whose fills reach its positions well before their events do.
    reconcile_confirm_s: float = 5.0

    def __post_init__(self) -> None:
        _finite(self, "live")
        _choice("live.bar", self.bar, LIVE_BARS)
        _require(
            isinstance(self.calendar, str) and self.calendar.strip() != "",
            "live.calendar",
            self.calendar,
            "an exchange calendar name such as XNYS",
        )
        # At most a day: 1e9 (31 years) passed, and the clock then released no bar ever.
        _require(
            0 <= self.delay_s <= 86_400,
            "live.delay_s",
            self.delay_s,
            "between 0 and 86,400 seconds (a day; a daily bar released after the next "
            "session's open is not traded)",
        )
        _require(
            self.bars_per_second >= 0,
            "live.bars_per_second",
            self.bars_per_second,
            ">= 0 (0 = real time)",
        )
        # Bounded both ways: 1e-9 was a loop running the calendar without pause, 1e12 no
        # heartbeat at all (a release missed in a suspend waited for the next close).
        _require(
            0.01 <= self.heartbeat_s <= 3600,
            "live.heartbeat_s",
            self.heartbeat_s,
            "between 0.01 and 3600 seconds",
        )
        _require(self.warmup_bars >= 0, "live.warmup_bars", self.warmup_bars, ">= 0")
        _require(
            self.reconcile_interval_s > 0,
            "live.reconcile_interval_s",
            self.reconcile_interval_s,
            "> 0 seconds",
        )
        # The symbol is held (no trade) between the two checks, so the wait is bounded. It
        # may exceed the interval: the engine waits the shorter of the two (a configuration
        # with reconcile_interval_s = 4 was valid before this key existed, and must load).
        _require(
            0 < self.reconcile_confirm_s <= _RECONCILE_CONFIRM_MAX_S,
            "live.reconcile_confirm_s",
            self.reconcile_confirm_s,
            f"> 0 and <= {_RECONCILE_CONFIRM_MAX_S:g} seconds (the symbol is held while it waits)",
        )


def _check_source_calls(source: str, call: Mapping[str, Any]) -> None:
    from .feeds.resilience import SourceConfig

    try:
        SourceConfig.for_source(source, **dict(call))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"feed.{source}.call: {exc}") from None


@dataclass(frozen=True)
class YahooFeedConfig:
    base_url: str = "https://query2.finance.yahoo.com"
    include_prepost: bool = False
    # Timeout, retries, circuit breaker, budgets and concurrency: SourceConfig fields
    # (timeout_s, max_attempts, backoff_base_s, backoff_max_s, breaker_failure_threshold,
    # breaker_reset_timeout_s, max_concurrency, per_minute, per_day, max_body_bytes); empty =
    # the defaults.
    call: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_url("feed.yahoo.base_url", self.base_url, ("http", "https"))
        _check_source_calls("yahoo", self.call)


@dataclass(frozen=True)
class AlphaVantageFeedConfig:
    # The key only from the environment: ALPHA_VANTAGE_API_KEY.
    base_url: str = "https://www.alphavantage.co"
    datatype: str = "json"  # json | csv
    adjusted: bool = False  # TIME_SERIES_DAILY_ADJUSTED (a premium function): splits, dividends
    extended_hours: bool = False
    # The specification's budget is the default: 5 calls per minute, 500 per day.
    call: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_url("feed.alphavantage.base_url", self.base_url, ("http", "https"))
        _choice("feed.alphavantage.datatype", self.datatype, ("json", "csv"))
        _check_source_calls("alphavantage", self.call)


@dataclass(frozen=True)
class AlpacaFeedConfig:
    # Keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY. "" = alpaca-py's data host.
    base_url: str = ""
    feed: str = "iex"  # iex (free plan) | sip
    derive_actions: bool = True  # splits and dividends from Alpaca's adjusted series
    max_symbols_per_request: int = 100
    call: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_url("feed.alpaca.base_url", self.base_url, ("http", "https"), allow_empty=True)
        _choice("feed.alpaca.feed", self.feed, ("iex", "sip", "otc", "boats"))
        _require(
            self.max_symbols_per_request >= 1,
            "feed.alpaca.max_symbols_per_request",
            self.max_symbols_per_request,
            ">= 1",
        )
        _check_source_calls("alpaca", self.call)


FEED_SOURCES = ("recorded", "yahoo", "alphavantage", "alpaca")


@dataclass(frozen=True)
class FeedConfig:
    """Where the live daemon's bars come from. "recorded" serves the configured [data] through
    the live path (demos, tests); a vendor fetches them for `data.symbols`."""

    source: str = "recorded"
    # Bars fetched before each live bar: validation sees neighbours, a split on the window is
    # handled, and a symbol's bar posted late is noticed and stored (feed.bar_late), not
    # stepped: the bar's decisions were made without it. The answer has one bar more, the
    # neighbour the window's first bar is judged with (feeds/suspect.py).
    lookback_bars: int = 5
    repair: tuple[str, ...] = ()
    yahoo: YahooFeedConfig = field(default_factory=YahooFeedConfig)
    alphavantage: AlphaVantageFeedConfig = field(default_factory=AlphaVantageFeedConfig)
    alpaca: AlpacaFeedConfig = field(default_factory=AlpacaFeedConfig)

    def __post_init__(self) -> None:
        _choice("feed.source", self.source, FEED_SOURCES)
        _require(self.lookback_bars >= 1, "feed.lookback_bars", self.lookback_bars, ">= 1")
        if self.repair:
            from .feeds.validate import parse_repairs

            try:
                parse_repairs(self.repair)
            except ConfigError as exc:
                raise ConfigError(f"feed.repair: {exc}") from None


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto (console on a terminal, JSON otherwise) | json | console
    audit_dir: str = "var/audit"
    audit_max_bytes: int = 50_000_000
    audit_backups: int = 10
    # A backtest keeps the newest this many backtests' audit logs in `audit_dir` (its own
    # included) and removes older ones at its start; live runs' logs are never removed by
    # it (audit_prune.py). 0 keeps them all.
    audit_keep_runs: int = 20
    # A plugin call (score, observe, size, check) that takes longer is a warning naming the
    # plugin, the stage and the bar (`engine.plugin_slow`); 0 = off.
    slow_plugin_s: float = 5.0

    def __post_init__(self) -> None:
        _finite(self, "log")
        _choice("log.format", self.format, ("auto", "json", "console"))
        _choice("log.level", self.level, ("debug", "info", "warning", "error"))
        _require(bool(self.audit_dir.strip()), "log.audit_dir", self.audit_dir, "a folder")
        _require(
            self.audit_max_bytes >= 1024,
            "log.audit_max_bytes",
            self.audit_max_bytes,
            ">= 1024 bytes",
        )
        _require(self.audit_backups >= 0, "log.audit_backups", self.audit_backups, ">= 0")
        _require(
            self.audit_keep_runs >= 0,
            "log.audit_keep_runs",
            self.audit_keep_runs,
            ">= 0 (the backtests' audit logs kept; 0 keeps them all)",
        )
        _require(self.slow_plugin_s >= 0, "log.slow_plugin_s", self.slow_plugin_s, ">= 0 (0 = off)")


@dataclass(frozen=True)
class Config:
    """The whole configuration.

    `to_json()` holds every value in clear (credentials included): for code that needs them,
    never for output. Everything printed, logged or stored uses `to_public_dict()` /
    `to_public_json()`, where URLs and secret values are masked. The run id hashes the
    public JSON on purpose: rotating a database password must not change the run id (and with
    it every client order id), and the hashed text is exactly the one stored with the run, so
    a stored run's id can be recomputed from its stored configuration.
    """

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    costs: CostsConfig = field(default_factory=CostsConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    orders: OrdersConfig = field(default_factory=OrdersConfig)
    signals: tuple[PluginSpec, ...] = field(default_factory=_default_signals)
    sizing: PluginSpec = field(default_factory=_default_sizing)
    risk: tuple[PluginSpec, ...] = field(default_factory=_default_risk)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Webhooks for the live daemon's alerts (tradingd.alerts): URLs are secrets.
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def __post_init__(self) -> None:
        if not self.signals:
            raise ConfigError("signals: at least one signal plugin must be configured")
        for i, spec in enumerate(self.signals):
            # A weight of 0 or below never trades (or trades against the signal) silently.
            _require(
                math.isfinite(spec.weight) and spec.weight > 0,
                f"signals[{i}].weight",
                spec.weight,
                "a finite number > 0",
            )
        for where, spec in self._plugins():
            _finite_params(f"{where}.params", spec.params)
            if not where.startswith("signals") and spec.weight != 1.0:
                # Only signals are weighted (their scores' mean): a weight on the sizing or a
                # risk rule was accepted and ignored, as if it did something.
                raise ConfigError(
                    f"{where}.weight = {spec.weight!r}: only [[signals]] have a weight (their "
                    "scores' weighted mean); remove it here"
                )
        if not self.risk and not self.run.allow_no_risk:
            raise ConfigError(
                "risk = [] configures no risk rule at all; trading without limits must be "
                "deliberate: add [[risk]] plugins, or set [run] allow_no_risk = true"
            )
        if self.feed.source == "alpaca" and self.live.bar == "60m":
            # Alpaca's 1Hour bars start on the clock hour (09:00, 10:00 New York); the
            # exchange calendar's 60m bars on the session open (09:30, 10:30): no label would
            # ever match, and every hourly bar would be "late", then lost.
            raise ConfigError(
                'live.bar = "60m" with feed.source = "alpaca": Alpaca\'s hourly bars start on '
                "the clock hour, the calendar's on the 09:30 open, so none would match; use "
                '"30m" with Alpaca, or feed.source = "yahoo" for 60m bars'
            )
        if self.feed.source != "recorded" and not self.data.symbols:
            raise ConfigError(
                f"feed.source = {self.feed.source!r} needs the universe in data.symbols "
                '(e.g. symbols = ["AAPL", "MSFT"]): a vendor is asked for named symbols'
            )

    def _plugins(self) -> list[tuple[str, PluginSpec]]:
        return [
            *((f"signals[{i}]", s) for i, s in enumerate(self.signals)),
            ("sizing", self.sizing),
            *((f"risk[{i}]", s) for i, s in enumerate(self.risk)),
        ]

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self) -> str:
        """Every value in clear, credentials included: never print, log or store this."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def to_public_dict(self) -> dict[str, Any]:
        """`to_dict()` with credentials masked (see `secrets.redact`): safe to show and keep.
        Webhook URLs carry their token in the path, which URL masking does not see: the
        alerts section is shown as its own `public()` form."""
        out = redact(self.to_dict())
        out["alerts"] = self.alerts.public()
        return out

    def to_public_json(self) -> str:
        """The masked configuration as canonical JSON: what is stored with a run and hashed
        into its id."""
        return json.dumps(self.to_public_dict(), sort_keys=True, default=str)


# ----------------------------------------------------------------------------- loading


def load_config(
    paths: typing.Sequence[str | Path | Mapping[str, Any]] = (),
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge TOML files in order (later wins), then environment overrides, then validate.
    An item may be a table already read from a file (one that can be read only once)."""
    merged: dict[str, Any] = {}
    notes: list[dict[str, Any]] = []
    origins: dict[str, str] = {}  # dotted key -> the file that set it last
    named_by_default = False  # a file's [sizing] params went to the built-in plugin
    for p in paths:
        table = p if isinstance(p, Mapping) else _read_toml(Path(p))
        source = "a table" if isinstance(p, Mapping) else str(p)
        sizing = table.get("sizing")
        first = not isinstance(merged.get("sizing"), Mapping)
        if first and isinstance(sizing, Mapping) and "name" not in sizing:
            # [sizing] params without a name change the plugin already named: with no file
            # before naming one, the built-in default's (its params kept, merged key by key
            # as over an earlier file's). Built with nothing to start from, the file was
            # refused for a missing `name` the user meant to leave as it was.
            default = _default_sizing()
            merged["sizing"] = {"name": default.name, "params": dict(default.params)}
            _note_origins(merged["sizing"], "", origins, "sizing")  # built in: no file
            named_by_default = True
        notes += _replaced_lists(merged, table, source)
        notes += _replaced_params(merged, table, source, origins)
        if _other_sizing(merged.get("sizing"), table.get("sizing")):
            # The earlier plugin's keys are gone: an error in the new one's is not theirs.
            for key in [k for k in origins if k.startswith("sizing.")]:
                del origins[key]
        if not isinstance(p, Mapping):
            _note_origins(table, str(p), origins)
        _deep_merge(merged, table)
    sources: dict[str, str] = {}
    _apply_env(merged, os.environ if env is None else env, sources)
    for key in sources:  # set by the environment in the end: no file is to blame
        origins[key] = ""
    try:
        config = build(Config, merged, "")
    except ConfigError as exc:
        # A value from the environment: say which variable, not only the key (the key's
        # files said nothing wrong).
        text = str(exc)
        # The key leads a wrong value's message; an unknown key's ("unknown key(s) a.b")
        # names it after the words.
        at = {var: _names_key(text, key) for key, var in sources.items()}
        named = sorted((var for var, pos in at.items() if pos >= 0), key=at.__getitem__)
        if named and named[0] not in text:
            raise ConfigError(f"{text} (from the environment variable {named[0]})") from None
        # With several -c files, the one that set the key.
        where = _origin_of(text, origins)
        if where is not None and len(paths) > 1 and where not in text:
            raise ConfigError(f"{text} (set in {where})") from None
        raise
    object.__setattr__(config, "overlay_notes", tuple(notes))
    # What was read, for the log's first line (`log_overlay_notes`: `config.files`).
    files = [str(Path(p).resolve()) for p in paths if not isinstance(p, Mapping)]
    object.__setattr__(config, "files", tuple(files))
    # For errors found later (a service that does not answer): the variable a URL came from,
    # else the file that set it (`url_label`).
    object.__setattr__(config, "env_sources", dict(sources))
    url_files = {k: origins[k] for k in ("storage.url", "cache.url") if origins.get(k)}
    object.__setattr__(config, "url_files", url_files)
    # For errors found later, in the plugins' own params (`name_origin`); with one file, too,
    # when its [sizing] params went to the built-in plugin, which that file does not name.
    kept = len(paths) > 1 or named_by_default
    object.__setattr__(config, "key_origins", origins if kept else {})
    return config


_URL_PARTS = {
    "DB_HOST": "DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD",
    "REDIS_HOST": "REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_DB",
}


def url_label(config: Config, dotted: str, variable: str) -> str:
    """The setting a URL is and where its value came from, for an error about it: the
    variable that set it (`storage.url (DATABASE_URL)`, or the variables it was made of,
    DB_HOST and its family), else the file (`storage.url (set in /etc/tradingd/live.toml)`),
    else the built-in default, with `variable` named as a way to set it. Naming DATABASE_URL
    whatever set the URL sent an operator who set DB_HOST, or `storage.url` in a `-c` file,
    looking for a variable never set."""
    source = getattr(config, "env_sources", {}).get(dotted)
    if source:
        return f"{dotted} ({_URL_PARTS.get(source, source)})"
    where = getattr(config, "url_files", {}).get(dotted)
    if where:
        return f"{dotted} (set in {where})"
    return f"{dotted} (the default; set it in a -c file or {variable})"


def name_origin(config: Config, exc: ConfigError) -> None:
    """With several -c files, add the file that set the key an error names to its text
    (in place, keeping its type): errors of a plugin's params are found when the plugin is
    built, after load_config, and named only `risk[0].params: ...`."""
    origins = getattr(config, "key_origins", None)
    if not origins:
        return
    text = str(exc)
    where = _origin_of(text, origins)
    if where is not None and where not in text:
        exc.args = (f"{text} (set in {where})", *exc.args[1:])


def _note_origins(table: Mapping[str, Any], source: str, out: dict[str, str], at: str = "") -> None:
    for key, value in table.items():
        dotted = f"{at}.{key}" if at else str(key)
        out[dotted] = source
        if isinstance(value, Mapping):
            _note_origins(value, source, out, dotted)


_KEY_IN_ERROR = re.compile(r"^(?:unknown key\(s\) )?([A-Za-z0-9_.\[\]]+)")
# A plugin's own error names its param after the section: "sizing.params: target_vol must be".
_PARAM_IN_ERROR = re.compile(r"^: (?:unknown key\(s\) )?([A-Za-z0-9_]+)")


def _origin_of(text: str, origins: Mapping[str, str]) -> str | None:
    """The file that set the key an error names (its longest known prefix), or None."""
    m = _KEY_IN_ERROR.match(text)
    if m is None:
        return None
    key = m.group(1)
    param = _PARAM_IN_ERROR.match(text[m.end() :]) if key.endswith(".params") else None
    if param is not None:
        # [sizing] params merge key by key: the file that set this param, not the last one
        # that set any.
        key = f"{key}.{param.group(1)}"
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    for n in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:n]))
        if found is not None:
            return found or None  # "": the environment set it
    return None


def _replaced_lists(
    merged: Mapping[str, Any], table: Mapping[str, Any], source: str
) -> list[dict[str, Any]]:
    """`[[risk]]` and `[[signals]]` of a later file replace the earlier list whole (TOML
    arrays are not merged): a file that tightens one limit drops every other rule, the
    drawdown guard included. That is kept (a list is the file's whole answer), but said:
    `log_overlay_notes` logs each as `config.list_replaced`, naming the file and the
    plugins dropped. The first file to list them replaces only the built-in defaults (7 risk
    rules): that is how a chain is configured, not a file undoing another's, and a warning
    on every run of a single file taught to ignore the one that matters. It is noted at
    info level (`config.defaults_replaced`), the built-in rules it leaves out named."""

    def names(items: list[Any]) -> list[str]:
        return [str(i.get("name")) for i in items if isinstance(i, Mapping)]

    out: list[dict[str, Any]] = []
    defaults = {"risk": _default_risk, "signals": _default_signals}
    for key in ("risk", "signals"):
        old, new = merged.get(key), table.get(key)
        event = "config.list_replaced"
        if old is None and isinstance(new, list):
            old = [{"name": spec.name} for spec in defaults[key]()]
            event = "config.defaults_replaced"
        if not (isinstance(old, list) and isinstance(new, list)):
            continue
        dropped = [n for n in names(old) if n not in names(new)]
        if dropped:
            out.append(
                {"event": event, "file": source, "key": key, "dropped": dropped, "now": names(new)}
            )
    return out


def _other_sizing(old: Any, new: Any) -> bool:
    """A later [sizing] that names another plugin than the earlier one (no name: the same)."""
    return (
        isinstance(old, Mapping)
        and isinstance(new, Mapping)
        and "name" in new
        and new["name"] != old.get("name")
    )


def _replaced_params(
    merged: Mapping[str, Any],
    table: Mapping[str, Any],
    source: str,
    origins: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Params an earlier file set that a later one drops, said as `config.params_replaced`
    (a plugin fell back to its own default for them, e.g. a 3% position cap back to 5%).
    [sizing] params merge key by key while the later file names the same plugin (or none);
    a later file naming another plugin starts from none of the earlier one's params (a key
    of the same name would mean something else to it). A `[[risk]]`/`[[signals]]` entry of
    a later list is whole, as its list is: an entry repeating a plugin of the earlier list
    keeps only the params it writes."""
    out: list[dict[str, Any]] = []
    old, new = merged.get("sizing"), table.get("sizing")
    if _other_sizing(old, new):
        assert isinstance(old, Mapping) and isinstance(new, Mapping)
        was = old.get("params")
        # Only what a file set: the built-in plugin's own params (which a file of params
        # without a name started from) were said as dropped, though nobody wrote them.
        dropped = [
            k
            for k in (sorted(was) if isinstance(was, Mapping) else [])
            if (origins or {}).get(f"sizing.params.{k}") != ""
        ]
        if dropped:
            rule = (
                "[sizing] naming another plugin in a later file starts from its own defaults: "
                "the earlier plugin's params do not apply to it; write the params it needs"
            )
            out.append(_params_note(source, "sizing", new["name"], dropped, rule))
            out[-1]["was"] = str(old.get("name"))
    for key in ("risk", "signals"):
        before, after = merged.get(key), table.get(key)
        if not (isinstance(before, list) and isinstance(after, list)):
            continue  # the built-in lists hold only defaults: nothing an operator set is lost
        earlier: dict[str, list[Mapping[str, Any]]] = {}  # by name, in order (a rule twice)
        for item in before:
            if isinstance(item, Mapping):
                params = item.get("params")
                earlier.setdefault(str(item.get("name")), []).append(
                    params if isinstance(params, Mapping) else {}
                )
        for i, item in enumerate(after):
            if not isinstance(item, Mapping) or not earlier.get(str(item.get("name"))):
                continue
            was = earlier[str(item["name"])].pop(0)
            params = item.get("params")
            dropped = sorted(set(was) - set(params if isinstance(params, Mapping) else {}))
            if dropped:
                rule = (
                    f"a [[{key}]] entry in a later file is whole, as its list is: params it "
                    "does not write are the plugin's defaults, not the earlier file's; repeat "
                    "the ones to keep"
                )
                out.append(_params_note(source, f"{key}[{i}]", item["name"], dropped, rule))
    return out


def _params_note(
    source: str, key: str, plugin: Any, dropped: list[str], rule: str
) -> dict[str, Any]:
    return {
        "event": "config.params_replaced",
        "file": source,
        "key": key,
        "plugin": str(plugin),
        "dropped": dropped,
        "rule": rule,
    }


def log_overlay_notes(config: Config) -> None:
    """Log what `load_config` read and noted while merging (after logging is configured)."""
    import structlog

    files = getattr(config, "files", None)
    if files is not None:
        # Run outside the checkout, no config/default.toml is found and the built-in
        # defaults are used: said nowhere before, though an edited default.toml then
        # changed nothing.
        structlog.get_logger("tradingd.config").info(
            "config.files", files=list(files) or "none: the built-in defaults"
        )
    for note in getattr(config, "overlay_notes", ()):
        note = dict(note)
        event = note.pop("event", "config.list_replaced")
        logger = structlog.get_logger("tradingd.config")
        if event == "config.defaults_replaced":
            note["rule"] = (
                f"[[{note['key']}]] replaces the built-in list: the built-in entries it does "
                "not list are off"
            )
            logger.info(event, **note)
            continue
        if event == "config.list_replaced":
            note["rule"] = (
                f"[[{note['key']}]] in a later file replaces the whole list; repeat the "
                "entries to keep"
            )
        logger.warning(event, **note)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    # A NUL byte is valid UTF-8 but never in a TOML file: it is a binary file (a database, an
    # archive) given by mistake, and tomllib's message about it would not say so.
    nul = raw.find(b"\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not a UTF-8 TOML file (undecodable byte at offset "
            f"{exc.start}); pass a .toml text file"
        ) from None
    if nul >= 0:
        raise ConfigError(
            f"config file {path} is not a UTF-8 TOML file (binary content: NUL byte at offset "
            f"{nul}); pass a .toml text file"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def build(cls: type[T], data: Any, where: str) -> T:
    """Construct dataclass `cls` from plain data, rejecting unknown keys and bad types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = set(fields)
        if cls is PluginSpec and not where.startswith("signals"):
            # Only [[signals]] take a weight (refused elsewhere, in Config): listed for
            # [sizing] too, it was offered, then refused.
            valid.discard("weight")
        raise ConfigError(
            f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    missing = [
        name
        for name, f in fields.items()
        if f.init
        and name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        # Said as the key, not as Python's "__init__() missing 1 required positional argument".
        keys = ", ".join(_join(where, k) for k in missing)
        rule = "it has no default"
        if cls is PluginSpec:
            rule = 'a plugin\'s table names its plugin (name = "...")'
            if where.endswith("]"):
                rule += (
                    "; a [[signals]] or [[risk]] entry is whole (its list replaces the "
                    "earlier one) and takes no name from an earlier file"
                )
        raise ConfigError(f"{keys} is missing: {rule}")
    kwargs = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if cls is PluginSpec and where and not str(exc).startswith(where):
            # A plugin's own check names no table: "plugin name '' is invalid" said not
            # which of [sizing], [[signals]] or [[risk]] held it.
            raise ConfigError(f"{where}: {exc}") from None
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        if _DATE_FIELD in tp.__metadata__ and isinstance(value, date):
            value = _iso(value)
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        # The first type that takes the value (an `int | str` takes "abc"; it was held to
        # the first type alone, and refused).
        errors = []
        for a in non_none:
            try:
                return _coerce(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{where} = {value!r} fits none of its types: " + "; ".join(errors))
    if origin is typing.Literal:
        # Compared with its type too: `Literal[1]` does not take True, nor "1".
        if any(value == a and type(value) is type(a) for a in args):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{where} = {value!r} is invalid; valid choices: {choices}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must be a list of {len(args)}, got {value!r}")
            items = list(args)
        else:
            items = [args[0] if args else Any] * len(value)
        pairs = enumerate(zip(items, value, strict=True))
        out = [_coerce(t, v, f"{where}[{i}]") for i, (t, v) in pairs]
        return tuple(out) if origin is tuple else out
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
            if not math.isfinite(value):
                raise ConfigError(
                    f"{where} = {value!r} is invalid: must be a finite number (not nan or inf)"
                )
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        hint = f" (a date: write it as {_DATE_FORMAT})" if isinstance(value, date) else ""
        raise ConfigError(f"{where} must be a string, got {value!r}{hint}")
    return value


def _apply_env(
    merged: dict[str, Any], env: Mapping[str, str], sources: dict[str, str] | None = None
) -> None:
    """Environment overrides into `merged`; `sources`: each overridden key's variable."""
    for key in ("DATABASE_URL", "REDIS_URL"):
        if env.get(key):
            _no_newline(key, env[key])
    _spec_variables(merged, env)
    if env.get("DATABASE_URL"):
        merged.setdefault("storage", {})["url"] = env["DATABASE_URL"].strip()
    if env.get("REDIS_URL"):
        merged.setdefault("cache", {})["url"] = env["REDIS_URL"].strip()
    if sources is not None:
        for dotted, url, host in (
            ("storage.url", "DATABASE_URL", "DB_HOST"),
            ("cache.url", "REDIS_URL", "REDIS_HOST"),
        ):
            if env.get(url) or env.get(host):
                sources[dotted] = url if env.get(url) else host
    sections = {f.name for f in dataclasses.fields(Config)} - {"signals", "risk", "sizing"}
    webhooks = _alert_url_envs(merged)
    for key, raw in sorted(env.items()):
        if not key.startswith("TRADINGD_") or key in NON_CONFIG_ENV or key in webhooks:
            continue
        path = key[len("TRADINGD_") :].lower().split("__")
        if len(path) < 2 or not all(path):
            raise ConfigError(
                f"environment variable {key} is not a configuration override: the form is "
                "TRADINGD_<SECTION>__<KEY> with two underscores between section and key "
                f"(e.g. TRADINGD_COSTS__COMMISSION_PCT); other TRADINGD_ variables: "
                f"{', '.join(sorted(NON_CONFIG_ENV))}"
            )
        section = path[0]
        if section not in sections:
            raise ConfigError(
                f"environment variable {key}: unknown section {section!r}; "
                f"valid sections: {', '.join(sorted(sections))}"
            )
        _no_newline(key, raw)
        table = merged
        for i, part in enumerate(path[:-1]):
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"environment variable {key}: {'.'.join(path[: i + 1])} is not a table"
                )
            table = nxt
        table[path[-1]] = _parse_scalar(raw)
        if sources is not None:
            sources[".".join(path)] = key


def _alert_url_envs(merged: Mapping[str, Any]) -> frozenset[str]:
    """The variables an `[[alerts.targets]]` `url_env` names: a webhook URL, not an
    override, whatever its name. `config/default.toml`'s example (`TRADINGD_ALERT_URL`) made
    every command exit 78 ("not a configuration override") once it was set as told.
    Malformed targets are left to `AlertsConfig.from_mapping` to name."""
    alerts = merged.get("alerts")
    targets = alerts.get("targets") if isinstance(alerts, Mapping) else None
    if not isinstance(targets, list | tuple):
        return frozenset()
    return frozenset(
        t["url_env"]
        for t in targets
        if isinstance(t, Mapping) and isinstance(t.get("url_env"), str)
    )


def _names_key(text: str, key: str) -> int:
    """Where the message names `key` (a dotted key, not a longer key it begins); -1: not."""
    m = re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", text)
    return m.start() if m else -1


def _spec_variables(merged: dict[str, Any], env: Mapping[str, str]) -> None:
    """The specification's deployment variables (DB_HOST, DB_PORT, DB_NAME, DB_USER,
    DB_PASSWORD; REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_DB), as docker-compose sets
    them, mapped onto storage.url and cache.url. DATABASE_URL / REDIS_URL, when set, win.
    REDIS_DB (the specification's RedisConfig) was ignored without a word: the cache used
    database 0 whatever it said."""
    from urllib.parse import quote

    for key in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD", "REDIS_HOST",
                "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB"):  # fmt: skip
        if env.get(key):
            _no_newline(key, env[key])
    # Without its HOST a family's other variables were ignored: a misspelt DB_HOST left a
    # daemon trading on the local SQLite file, with no checkpoint of its own when found.
    for host, url, parts in (
        ("DB_HOST", "DATABASE_URL", ("DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")),
        ("REDIS_HOST", "REDIS_URL", ("REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB")),
    ):
        orphans = [k for k in parts if env.get(k)]
        if orphans and not env.get(host) and not env.get(url):
            raise ConfigError(
                f"environment variable(s) {', '.join(orphans)} set without {host}: they are "
                f"used only with {host} (or replaced by {url}); set {host}, or unset them"
            )
    if env.get("DB_HOST"):
        user = quote(env.get("DB_USER", "postgres"), safe="")
        password = env.get("DB_PASSWORD", "")
        auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
        # PostgreSQL URLs may list several hosts ("db1,db2"), the port applying to the last.
        host = ",".join(_url_host("DB_HOST", h, "DB_PORT") for h in env["DB_HOST"].split(","))
        port = _url_port("DB_PORT", env.get("DB_PORT", "5432"), "storage.url")
        name = quote(env.get("DB_NAME", "tradingd"), safe="")
        merged.setdefault("storage", {})["url"] = f"postgresql://{auth}{host}:{port}/{name}"
    if env.get("REDIS_HOST"):
        host = _url_host("REDIS_HOST", env["REDIS_HOST"], "REDIS_PORT", several=False)
        port = _url_port("REDIS_PORT", env.get("REDIS_PORT", "6379"), "cache.url")
        # A Redis password without a user (Redis' `requirepass`), as DB_PASSWORD is encoded.
        secret = env.get("REDIS_PASSWORD", "")
        auth = f":{quote(secret, safe='')}@" if secret else ""
        db = env.get("REDIS_DB", "0").strip()
        if not (db.isascii() and db.isdigit()):
            raise ConfigError(
                f"environment variable REDIS_DB = {db!r} is invalid: must be a Redis database "
                "number (0, 1, ...)"
            )
        merged.setdefault("cache", {})["url"] = f"redis://{auth}{host}:{port}/{int(db)}"


# What would end a URL's host or change its meaning: a user, a path, a query, a port list.
_NOT_IN_HOST = re.compile(r"[\s/@?#\[\]\\%,]")


def _url_host(var: str, raw: str, port_var: str, *, several: bool = True) -> str:
    """`raw` (one host of DB_HOST or REDIS_HOST) as a URL writes it: an IPv6 literal in
    brackets (`::1:25432` was read as host `:` and port `:1:25432`, failing at the connect
    with an int() error blamed on DATABASE_URL), its zone's `%` as `%25`. Anything else that
    is not a host name or IPv4 address (a port, a user, a path) is refused here, naming the
    variable: built into the URL it was accepted or failed as the URL's fault."""
    import ipaddress

    host = raw.strip()
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in inner:
        try:
            ipaddress.IPv6Address(inner.replace("%25", "%"))
        except ValueError:
            pass
        else:
            return f"[{inner.replace('%25', '%').replace('%', '%25')}]"
    elif inner == host and host and not _NOT_IN_HOST.search(host):
        return host
    raise ConfigError(
        f"environment variable {var} = {raw!r} is invalid: must be a host name or an IP "
        "address (IPv6 with or without [ ])"
        + (", or several separated by commas" if several else "")
        + f", without a port (that is {port_var}), user or path"
    )


def _is_port(text: str) -> bool:
    """`text` is a TCP port as a URL writes it: ASCII digits making 1..65535. `str.isdigit`
    alone takes other scripts' digits and superscripts: '٨٠' was read by int() as 80 and
    passed into a URL no client reads so, '²' made int() raise an error naming no key."""
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _url_port(var: str, raw: str, key: str) -> str:
    port = raw.strip()
    if not _is_port(port):
        raise ConfigError(
            f"environment variable {var} = {raw!r} is invalid: must be a port number in "
            f"1..65535 (the port of {key})"
        )
    return port


def _no_newline(key: str, raw: str) -> None:
    """A newline in an environment value is a quoting accident (a pasted block, a heredoc),
    and through TOML parsing it could even smuggle in a second key."""
    if "\n" in raw or "\r" in raw:
        raise ConfigError(
            f"environment variable {key} = {mask_url(raw)!r} is invalid: it contains a "
            "newline; a value must be a single line"
        )


def _parse_scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any], where: str = "") -> None:
    """Table by table and key by key, [sizing] params included (a local file that sets one
    param keeps the team file's others); lists are replaced. Tables are copied, so that a
    table given to `load_config` is never changed by a later one merged into it."""
    for k, v in new.items():
        if isinstance(v, Mapping):
            if where == "" and k == "sizing" and _other_sizing(into.get(k), v):
                # Another sizing plugin: the previous one's params (and weight) are not its.
                # Merged key by key they were kept, refused as unknown keys the user never
                # wrote, or applied silently where the new plugin has a key of that name.
                # `_replaced_params` says which were dropped.
                into[k] = {}
            if not isinstance(into.get(k), dict):
                into[k] = {}
            _deep_merge(into[k], v, _join(where, k))
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


# ----------------------------------------------------------------------------- checks


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: must be {rule}")


def _check_url(
    key: str, value: str, schemes: tuple[str, ...], *, allow_empty: bool = False
) -> None:
    """A service URL: checked here, not found out by the first call (a bad feed URL was a
    traceback per symbol and a warm-up retried forever; a bad stream URL a crash, exit 1)."""
    if allow_empty and value == "":
        return
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        fine = parts.scheme.lower() in schemes and bool(parts.hostname)
    except ValueError:  # "http://[::1" (an unclosed IPv6 host), "http://host:notaport"
        fine = False
    if not fine:
        raise ConfigError(
            f"{key} = {mask_url(value)!r} is invalid: must be a {'/'.join(schemes)} URL with a "
            f"host, e.g. {schemes[-1]}://example.com"
            + (' (or "" for the default)' if allow_empty else "")
        )
    host = parts.hostname or ""
    canonical = _short_address(host)
    if canonical is not None:
        # The OS reads 127.1 as 127.0.0.1, but aiohttp (the feeds' client) refuses such a
        # URL at its first request ("not a canonical IPv4 address"): said here, the same for
        # every URL setting, whichever client it goes to.
        raise ConfigError(
            f"{key} = {mask_url(value)!r} is invalid: its host {host!r} is a short form of "
            f"the address {canonical}: write {canonical} (HTTP clients refuse the short form)"
        )


def _short_address(host: str) -> str | None:
    """The usual spelling of a numeric host in a form only the C library reads ("127.1",
    "2130706433" -> "127.0.0.1"); None for a name or an address `ipaddress` reads."""
    import ipaddress

    from .core.endpoints import canonical_address

    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        return canonical_address(host)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r} is invalid; valid choices: {', '.join(choices)}")


def _finite(obj: Any, section: str) -> None:
    """nan and inf pass every `>=` and `<` test by failing it silently; reject them for every
    float field, also when a config is built in code rather than loaded."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{section}.{f.name} = {value!r} is invalid: must be a finite number "
                "(not nan or inf)"
            )


def _finite_params(where: str, value: Any) -> None:
    """Plugin parameters are typed by the plugin, checked when it is loaded; nan and inf are
    rejected here already, so that no command accepts them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} = {value!r} is invalid: must be a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _finite_params(f"{where}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _finite_params(f"{where}[{i}]", v)


def _safe_name(key: str, value: str, *, allow_empty: bool) -> None:
    if not value and allow_empty:
        return
    if not value.strip() or _UNSAFE_NAME.search(value) or value in (".", ".."):
        raise ConfigError(
            f"{key} = {value!r} is invalid: must be a non-empty name without path separators "
            "or control characters (it names output folders and files)"
        )
    if "|" in value:
        # A run's orders are told from others' by `startswith(f"{run_id}|")`: under run id
        # "a|b", run "a" took them for its own (its /flatten, risk halts, reconciliation).
        raise ConfigError(
            f"{key} = {value!r} is invalid: must not contain '|', which separates the parts "
            "of every order's client_order_id (run|bar|symbol|leg|attempt): another run's "
            "orders would be taken for this run's, or this run's for another's"
        )


# The longest run id: its client_order_ids fit Alpaca's 128 characters with a 12-character
# symbol and a 3-digit attempt; its audit log's file name fits 255 bytes at 3 bytes a letter.
RUN_ID_MAX_CHARS = 84


def _short_name(key: str, value: str, limit: int) -> None:
    if len(value) > limit or len(value.encode()) > 3 * limit:
        raise ConfigError(
            f"{key} is {len(value)} characters ({len(value.encode())} bytes in UTF-8): at most "
            f"{limit} (and {3 * limit} bytes), since the run id names every order's "
            "client_order_id, which Alpaca limits to 128 characters, and the run's files; "
            "choose a shorter one"
        )


def _iso(value: date) -> str:
    """A TOML date or datetime as the text the rest of tradingd expects ("YYYY-MM-DD", or the
    full ISO datetime with its offset when it has one)."""
    return value.isoformat()


def _parse_date(key: str, value: str) -> datetime | None:
    if value == "":
        return None
    reason = ""
    if _DATE_RE.fullmatch(value) or _DATETIME_RE.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            reason = f" ({exc})"
    raise ConfigError(f"{key} = {value!r} is invalid{reason}: must be a date {_DATE_FORMAT}")


STORAGE_SCHEMES = "sqlite:///relative.db, sqlite:////absolute.db, postgresql://, postgres://"
CACHE_SCHEMES = '"" or memory:// (in-process), redis://host:port/db, rediss://, unix://'


def _check_storage_url(url: str) -> None:
    # The setting alone: `load_config` adds the variable or file that set it, if one did.
    key = "storage.url"
    lower = url.strip().lower()
    if lower.startswith("sqlite:///"):
        if not url.strip()[len("sqlite:///") :].split("?", 1)[0]:
            raise ConfigError(f"{key} = {mask_url(url)!r} is invalid: it names no file")
        return
    if is_postgres_url(url):
        _check_ports(key, url)
        return
    raise ConfigError(
        f"{key} = {mask_url(url)!r} is invalid: unsupported scheme; valid: {STORAGE_SCHEMES}"
    )


def _check_cache_url(url: str) -> None:
    key = "cache.url"
    lower = url.strip().lower()
    if lower in ("", "memory://"):
        return
    if lower.startswith("unix://"):
        redis_db_index(key, url)
        return
    if not lower.startswith(("redis://", "rediss://")):
        raise ConfigError(
            f"{key} = {mask_url(url)!r} is invalid: unsupported scheme; valid: {CACHE_SCHEMES}"
        )
    _check_ports(key, url)
    redis_db_index(key, url)


def _check_ports(key: str, url: str) -> None:
    """Every host's port is a number in 1..65535 (PostgreSQL URLs may list several hosts).
    Parsed by hand: urllib only fails on `.port` access, with a message that quotes
    nothing of the URL."""
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed "[" (it named nothing)
        raise ConfigError(f"{key} = {mask_url(url)!r} is invalid: {exc}") from None
    hosts = netloc.rpartition("@")[2]
    for host in hosts.split(","):
        if host.startswith("["):
            _, _, after = host.partition("]")
            port = after[1:] if after.startswith(":") else ""
        else:
            port = host.rpartition(":")[2] if ":" in host else ""
        if port and not _is_port(port):
            shown = mask_url(url)
            if f":{port}" in shown:
                raise ConfigError(
                    f"{key} = {shown!r} is invalid: port {port!r} must be a number in 1..65535"
                )
            # Not a port the masked URL shows: the start of a password with an unencoded "/"
            # (urllib ends the host there), which must not be quoted.
            raise ConfigError(
                f"{key} = {shown!r} is invalid: its port must be a number in 1..65535 (a "
                "password with '/', '?', '#' or '@' must be percent-encoded)"
            )


def redis_db_index(key: str, url: str) -> int:
    """The Redis database index of a URL (path `/N` or query `?db=N`), checked to be a
    non-negative integer. Whether the server has that many databases (16 by default) is
    asked of the server itself at start-up (`preflight.check_services`)."""
    parts = urlsplit(url.strip())
    candidates = []
    if parts.scheme.lower() != "unix":
        path = parts.path.strip("/")
        if path:
            candidates.append(path)
    candidates.extend(parse_qs(parts.query).get("db", []))
    db = 0
    for text in candidates:
        if not (text.isascii() and text.isdigit()):  # '²' is a digit int() refuses
            raise ConfigError(
                f"{key} = {mask_url(url)!r} is invalid: database index {text!r} must be an "
                "integer >= 0 (the server's `databases` setting bounds it, 16 by default)"
            )
        db = int(text)
    return db
