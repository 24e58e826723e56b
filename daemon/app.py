"""The composition root: the one place that picks concrete clocks, feeds, brokers and stores.

`build_engine(config, mode)` returns an Engine; replay and live differ only in the three
parts chosen here (clock, feed, broker). Nothing else in tradingd branches on the mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import structlog

from .audit import AuditLog
from .brokers.simulated import SimulatedBroker, SimulatedBrokerConfig
from .cache.factory import open_cache
from .clock.live import LiveClock
from .clock.replay import ReplayClock
from .config import Config
from .core.errors import ConfigError
from .core.ports import Broker, Clock, FeatureSource, Feed
from .core.types import RunInfo
from .engine.engine import Engine, Pipeline
from .engine.planner import OrderPlanner
from .engine.plugins import load_plugin
from .engine.portfolio import Portfolio
from .features.catalog import Catalog, feature_set_id, verify_feature_set
from .features.source import BatchFeatureSource, StreamingFeatureSource
from .feeds.history import HistoryFeed, RecordedLiveFeed
from .feeds.loaders import load_panel
from .feeds.panel import Panel
from .storage.factory import open_store

log = structlog.get_logger(__name__)

MODES = ("backtest", "live")


def run_id_for(config: Config, mode: str) -> str:
    """Stable across reruns of the same config: the same decisions get the same order ids."""
    if config.run.run_id:
        return config.run.run_id
    digest = hashlib.sha256(config.to_json().encode()).hexdigest()[:10]
    return f"{config.run.name}-{mode}-{digest}"


def load_data(config: Config) -> Panel:
    """The configured bars up to `run.end`. History before `run.start` is kept: it warms up
    features, model windows and signals, and trading starts at `run.start` (see
    `trade_start`). Data after `run.end` is never loaded, so it cannot leak into a run."""
    d = config.data
    panel = load_panel(
        d.source,
        d.path or None,
        layout=d.layout,
        symbols=d.symbols or None,
        start=None,
        end=config.run.end or None,
        repair=d.repair,
        max_gap_days=d.max_gap_days,
    )
    if d.max_symbols and len(panel.symbols) > d.max_symbols:
        panel = panel.select(symbols=panel.symbols[: d.max_symbols])
    return panel


def trade_start(config: Config, panel: Panel) -> datetime | None:
    """The first bar time that may trade (None: from the first bar). Dates without a time
    zone are UTC, like the stored bar times."""
    if not config.run.start:
        return None
    ts = pd.Timestamp(config.run.start)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    start = ts.to_pydatetime()
    if len(panel.times) and start > panel.datetimes()[-1]:
        raise ConfigError(
            f"run.start = {config.run.start!r} is after the last bar of the data "
            f"({panel.datetimes()[-1]:%Y-%m-%d}): nothing to trade"
        )
    return start


def build_pipeline(config: Config, symbols: tuple[str, ...]) -> Pipeline:
    if not config.signals:
        raise ConfigError("signals: at least one signal plugin must be configured")
    signals = [
        (load_plugin(spec, "signal", symbols, f"signals[{i}]"), spec.weight)
        for i, spec in enumerate(config.signals)
    ]
    sizing = load_plugin(config.sizing, "sizing", symbols, "sizing")
    risks = [load_plugin(spec, "risk", symbols, f"risk[{i}]") for i, spec in enumerate(config.risk)]
    return Pipeline(signals=signals, sizing=sizing, risks=risks)


@dataclass(frozen=True)
class Swaps:
    """The parts that make a run replay or live: clock, feed and broker, and with the feed
    how features are computed (batch over the stored history, or streaming bar by bar)."""

    clock: Clock
    feed: Feed
    broker: Broker
    features: FeatureSource


def feature_names(config: Config, pipeline: Pipeline) -> tuple[str, ...]:
    return tuple(sorted(pipeline.required_features() | set(config.features.extra)))


def verify_model_features(config: Config, pipeline: Pipeline) -> None:
    """A plugin that was trained on a feature set (it has `feature_set`) must get exactly
    those features, computed with the same periods: otherwise start-up stops here."""
    f = config.features
    catalog = make_catalog(config)
    for plugin, _ in pipeline.signals:
        expected = getattr(plugin, "feature_set", None)
        if expected is None:
            continue
        for name in expected.features:
            try:
                catalog.node(name)
            except ConfigError as exc:
                raise ConfigError(
                    f"plugin {plugin.name!r}: its model needs feature {name!r}, "
                    f"which this engine cannot produce ({exc})"
                ) from None
        actual = feature_set_id(expected.name, expected.features, f.indicators, f.cross_sectional)
        verify_feature_set(expected, actual, f"plugin {plugin.name!r}")


def choose_swaps(
    config: Config, mode: str, panel: Panel, portfolio: Portfolio, names: tuple[str, ...]
) -> Swaps:
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is invalid; valid choices: {', '.join(MODES)}")
    c = config.costs
    b = config.broker
    broker = SimulatedBroker(
        SimulatedBrokerConfig(
            commission_pct=c.commission_pct,
            slippage_pct=c.slippage_pct,
            half_spread_bps=c.half_spread_bps,
            min_commission=c.min_commission,
            max_volume_participation=b.max_volume_participation,
            order_ttl_bars=b.order_ttl_bars,
            allow_short=b.allow_short,
        ),
        panel.symbols,
        portfolio,
    )
    catalog = make_catalog(config)
    if mode == "backtest":
        feed = HistoryFeed(panel)
        features = BatchFeatureSource(panel, names, catalog)
        return Swaps(ReplayClock(feed.times), feed, broker, features)
    live_feed = RecordedLiveFeed(panel)
    calendar = live_feed.times if config.live.bars_per_second > 0 else None
    streaming = StreamingFeatureSource(len(panel.symbols), names, catalog)
    return Swaps(LiveClock(config.live, calendar), live_feed, broker, streaming)


def make_catalog(config: Config) -> Catalog:
    return Catalog(config.features.indicators, config.features.cross_sectional)


def build_engine(
    config: Config,
    mode: str,
    *,
    panel: Panel | None = None,
    on_bar: Callable[[int, datetime], None] | None = None,
    before_stop: Callable[[Engine], Awaitable[None]] | None = None,
) -> Engine:
    panel = panel if panel is not None else load_data(config)
    symbols = panel.symbols
    run_id = run_id_for(config, mode)
    pipeline = build_pipeline(config, symbols)
    portfolio = Portfolio(symbols, config.run.initial_capital)
    verify_model_features(config, pipeline)
    names = feature_names(config, pipeline)
    swaps = choose_swaps(config, mode, panel, portfolio, names)
    store = open_store(
        config.storage.url,
        batch_size=config.storage.batch_size,
        signals=config.storage.signals,
        flush_interval_s=config.storage.flush_interval_s,
    )
    run = RunInfo(
        run_id=run_id,
        mode=mode,
        started_at=datetime.now(UTC),
        config_json=config.to_json(),
        symbols=symbols,
        initial_capital=config.run.initial_capital,
    )
    lg = config.log
    return Engine(
        run=run,
        clock=swaps.clock,
        feed=swaps.feed,
        broker=swaps.broker,
        store=store,
        cache=open_cache(config.cache.url or None),
        pipeline=pipeline,
        features=swaps.features,
        planner=OrderPlanner(config.orders, run_id, symbols),
        portfolio=portfolio,
        audit=AuditLog(lg.audit_dir, run_id, lg.audit_max_bytes, lg.audit_backups),
        curve_maxlen=None if mode == "backtest" else 100_000,
        publish_interval_s=config.cache.publish_interval_s,
        cache_ttl_s=config.cache.expiry_s,
        on_bar=on_bar,
        before_stop=before_stop,
        record_bars=mode == "live",
        history_bars=config.features.history_bars,
        trade_from=trade_start(config, panel),
    )


async def import_bars(config: Config, chunk: int = 250) -> int:
    """Write the configured data source's bars into the store (idempotent upserts)."""
    panel = load_data(config)
    store = open_store(config.storage.url, batch_size=config.storage.batch_size)
    await store.start()
    try:
        times = panel.datetimes()
        for lo in range(0, len(times), chunk):
            await store.write_bars(
                panel.symbols,
                [panel.row(i, times[i]) for i in range(lo, min(lo + chunk, len(times)))],
            )
    finally:
        await store.stop()
    log.info("bars.imported", bars=panel.n_bars, symbols=len(panel.symbols), url=config.storage.url)
    return panel.n_bars
