"""The composition root: the one place that picks concrete clocks, feeds, brokers and stores.

`build_engine(config, mode)` returns an Engine; replay and live differ only in the three
parts chosen here (clock, feed, broker). Nothing else in tradingd branches on the mode.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from zoneinfo import ZoneInfo

import numpy as np
import structlog

from .audit import AuditLog, audit_path
from .brokers.simulated import SimulatedBroker, SimulatedBrokerConfig
from .cache.factory import open_cache
from .clock.replay import ReplayClock
from .config import CACHE_PARAMS, LIVE_BARS, Config, PluginSpec, name_origin
from .core.errors import ConfigError, ControlRefusedError, DataError, EngineStoppedError
from .core.lazy import LazyModule
from .core.ports import Broker, Clock, FeatureSource, Feed, Store
from .core.types import CrossSection, RunInfo
from .engine import plugins as plugin_registry
from .engine.engine import Engine, Pipeline
from .engine.planner import OrderPlanner
from .engine.planner import required_features as planner_features
from .engine.plugins import check_names, instance_keys, load_plugin
from .engine.portfolio import Portfolio
from .features.batch_cache import FeatureCache
from .features.batch_cache import default_cache_dir as features_cache_dir
from .features.catalog import Catalog, engine_feature_set, verify_feature_set, warmup
from .features.source import BatchFeatureSource, StreamingFeatureSource
from .feeds.history import HistoryFeed, RecordedLiveFeed
from .feeds.panel import Panel
from .feeds.panel_cache import cached_load_panel, default_cache_dir
from .secrets import mask_url
from .storage.factory import open_store

if TYPE_CHECKING:
    import pandas as pd
else:  # imported at its first use (core/lazy.py): a backtest from the panel cache needs none
    pd = LazyModule("pandas")

log = structlog.get_logger(__name__)

MODES = ("backtest", "live")
# Config sections that do not change what a run decides (see run_id_for).
_OPERATIONAL = frozenset({"health", "log", "cache", "alerts"})


def run_id_for(config: Config, mode: str, inputs: Sequence[Any] | None = None) -> str:
    """Stable across reruns of the same config: the same decisions get the same order ids.

    A backtest's id also names what its plugins decide from besides their params
    (`plugin_run_inputs`: the ML plugin's model, by content): with `model_dir` empty a
    `tradingd retrain` moves `var/models/current`, and the rerun of a config on the new model
    took the earlier model's id, replacing its record (rows, audit, run folder) and its
    place in the trial count. `inputs`: those the built plugins report (`run_inputs`), else
    read from the config. A live run's id names none: it continues across model swaps.

    A backtest's id names its data files by content too (`data_fingerprint_of`: their
    SHA-256, for data.source csv or parquet): a file rewritten in place, its mtime restored,
    kept the id, and the rerun replaced the first run's record (rows, audit, run folder)
    with one on other data; so does a walk-forward's (its folder and its folds' prefix). A
    live run's id does not: its identity is its configuration, and its data grow. A fixed
    `run.run_id` is the id whatever the data (the backtest warns when the record it
    replaces was made on other data: `backtest.remove_earlier_record`)."""
    if config.run.run_id:
        return config.run.run_id
    # The public (masked) config without its operational sections: a changed password, log
    # level, health port or cache address is the same run (the same order ids).
    decisive = {k: v for k, v in config.to_public_dict().items() if k not in _OPERATIONAL}
    for section in ("signals", "sizing", "risk"):
        decisive[section] = _without_cache_params(decisive.get(section))
    if mode == "backtest":
        inputs = plugin_run_inputs(config) if inputs is None else inputs
        if inputs:  # (none: the id it always had)
            decisive["plugin_inputs"] = list(inputs)
    if mode in ("backtest", "walkforward"):
        # A walk-forward's id is its folder's and its folds' prefix: the same file rewritten
        # replaced the first analysis as a backtest's record was.
        data = data_fingerprint_of(config)
        if data is not None:  # (none, the bundled series and frames: the id they had)
            decisive["data_sha256"] = data["sha256"]
    digest = hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()
    digest = digest[:10]
    return f"{config.run.name}-{mode}-{digest}"


def plugin_specs(config: Config) -> list[tuple[str, PluginSpec]]:
    """Every configured plugin with where it is configured (`signals[0]`, `sizing`,
    `risk[1]`), in the pipeline's order: how run inputs name their plugin."""
    return [
        *((f"signals[{i}]", s) for i, s in enumerate(config.signals)),
        ("sizing", config.sizing),
        *((f"risk[{i}]", s) for i, s in enumerate(config.risk)),
    ]


def plugin_run_inputs(config: Config) -> list[dict[str, Any]]:
    """What the configured plugins would read besides their params, as they would read it
    now: for each plugin class with a `run_inputs_of(config)` classmethod, its answer (the
    ML plugin: its model's version and file hashes). A plugin that cannot be found or
    configured is left out: building it fails, naming it."""
    from .config import build

    eps = plugin_registry.available()
    out: list[dict[str, Any]] = []
    for where, spec in plugin_specs(config):
        ep = eps.get(spec.name)
        try:
            cls = ep.load() if ep is not None else None
            of = getattr(cls, "run_inputs_of", None)
            if not callable(of):
                continue
            config_cls: Any = getattr(cls, "Config", None)
            plugin_config = build(config_cls, dict(spec.params), f"{where}.params")
        except Exception:  # the build of the pipeline says what is wrong with it
            continue
        out.append({"plugin": where, "inputs": of(plugin_config)})
    return out


def pipeline_run_inputs(pipeline: Pipeline, config: Config) -> list[dict[str, Any]]:
    """`plugin_run_inputs` as the built plugins report it (`run_inputs()`): what the run
    decides with, even when `var/models/current` was switched while they were built."""
    plugins = [
        *(p for p, _ in pipeline.signals),
        pipeline.sizing,
        *pipeline.risks,
    ]
    out: list[dict[str, Any]] = []
    for (where, _), plugin in zip(plugin_specs(config), plugins, strict=True):
        of = getattr(plugin, "run_inputs", None)
        if callable(of):
            out.append({"plugin": where, "inputs": of()})
    return out


def _without_cache_params(plugins: Any) -> Any:
    """A plugin section of the public config (a list of specs, or sizing's one) with its
    params as `trial_ledger.canonical_params` gives them: without those in `CACHE_PARAMS`,
    and each number in the type the plugin's Config declares, so `kelly_multiplier = 1` and
    `= 1.0` (one strategy, the same fills) are one run. A param written at the plugin's
    default is kept: run_continuation continues a run whose id matches without comparing
    configs, and a file that dropped a pinned value whose default an upgrade changed would
    continue the pinned run with the new value."""
    from .analysis.trial_ledger import canonical_params

    if isinstance(plugins, list):
        return [_without_cache_params(spec) for spec in plugins]
    if isinstance(plugins, dict) and isinstance(plugins.get("params"), dict):
        params = {k: v for k, v in plugins["params"].items() if k not in CACHE_PARAMS}
        return {**plugins, "params": canonical_params(plugins.get("name"), params)}
    return plugins


async def continued_live_run(config: Config) -> str | None:
    """The id of the stored live run this live start continues when it is not the one the
    configuration derives (a risk limit applied by SIGHUP since, a new setting at its
    default: see run_continuation); None to run under the derived id (or `run.run_id`).
    Reads the runs of the configured store, waiting `storage.start_retry_s` for a
    PostgreSQL that is down, as the daemon's own start does; the store is closed again."""
    if config.run.run_id:
        return None
    from .run_continuation import continued_run_id
    from .storage.buffered import DatabaseUnavailable
    from .storage.factory import missing_sqlite_store

    st = config.storage
    if missing_sqlite_store(st.url) is not None:
        # Nothing stored, nothing to continue. Opened, the lookup created the file before
        # the start took its locks: a start the account lock refused left var/<name>.db.
        return None
    delay = 1.0
    while True:
        store = open_store(
            st.url,
            spool=False,
            start_retry_s=st.start_retry_s,
            command_timeout_s=st.command_timeout_s,
        )
        try:
            await store.start()
        except DatabaseUnavailable as exc:
            # Still down after start_retry_s: waited for like the engine's own start (a stop
            # abandons the wait), not an exit that systemd's start limit turns into a failed
            # unit.
            log.warning(
                "startup.retry", part="store (run lookup)", error=str(exc), retry_in_s=delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
            continue
        try:
            return await continued_run_id(config, run_id_for(config, "live"), store)
        finally:
            await store.stop()


def data_cache_dir(config: Config) -> Path | None:
    """The data cache's folder (`cache.data_dir`, else the user's cache folder), or None with
    the data cache off."""
    c = config.cache
    if not c.data:
        return None
    return Path(c.data_dir).expanduser() if c.data_dir else default_cache_dir()


_PINNED = "_pinned_data_fingerprint"


def data_fingerprint_of(config: Config) -> dict[str, Any] | None:
    """`feeds.fingerprint.data_fingerprint` of the configured data files (None for the
    bundled series and frames), its digests kept in the data cache's folder when that
    cache is on: what a backtest's run id hashes and its summary.json records as `data`.
    While a run holds it (`load_pinned`), the one taken around its load."""
    from .feeds.fingerprint import data_fingerprint

    pinned = getattr(config, _PINNED, None)
    if pinned is not None:
        return cast(dict[str, Any] | None, pinned[0])
    d = config.data
    if d.source not in ("csv", "parquet"):
        return None
    return data_fingerprint(d.source, d.path or None, data_cache_dir(config))


def load_pinned(config: Config) -> Panel:
    """The configured data loaded (`load_data`), and their fingerprint held by `config`
    from now on (`data_fingerprint_of` answers it): taken before and after the load, which
    must agree. Give it a run's own copy (`copy.copy(config)`), never a caller's. The file
    was hashed again at each use (the run id, the record's `data`, a walk-forward's folder
    at its start and its results at its end): a file rewritten meanwhile (a data refresh
    landing during a run) named other bytes than those traded, and the next rerun on them
    replaced the record without a word."""
    from .core.errors import DataError

    before = data_fingerprint_of(config)
    panel = load_data(config)
    after = data_fingerprint_of(config)
    if before != after:
        raise DataError(
            "the data files changed while they were loaded (their SHA-256 "
            f"{(before or {}).get('sha256')} before, {(after or {}).get('sha256')} after): "
            "run again once they are written",
            source=config.data.path or None,
        )
    object.__setattr__(config, _PINNED, (after,))
    return panel


def calendar_has_weekend_sessions(name: str) -> bool:
    """Whether the exchange calendar `name` holds sessions on Saturdays and Sundays ("24/7":
    crypto). Its daily bars dated then are sessions, which the loader otherwise refuses as
    shifted dates (validate.py, `_check_weekends`). The default XNYS is answered without
    building a calendar (about 0.3 s a backtest)."""
    if name == "XNYS":
        return False
    from .clock.calendar import ExchangeCalendar

    try:
        mask = ExchangeCalendar(name, "1d").weekmask
    except ConfigError:  # an unknown name: the run's own calendar check names it
        return False
    return len(mask) == 7 and mask[5:] != "00"


# A replay's (and `tradingd fetch`'s) bound on one PostgreSQL statement (build_engine).
REPLAY_COMMAND_TIMEOUT_S = 600.0


def calendar_timezone(name: str) -> str:
    """The zone where exchange calendar `name` dates its sessions (`calendar_zone`), for the
    loader's intraday checks by session; "" for a name the run's own calendar check will
    refuse. XNYS is answered without building a calendar."""
    if name == "XNYS":
        return "America/New_York"
    from .clock.calendar import calendar_zone

    try:
        return str(calendar_zone(name))
    except ConfigError:
        return ""


def calendar_evening_start(name: str) -> str:
    """Where exchange calendar `name`'s sessions open the evening before their date (CMES:
    "17:00:00" Chicago), that local time, for the loader's session days; "" where they open
    on their own date, and for a name the run's own calendar check will refuse. XNYS is
    answered without building a calendar."""
    if name == "XNYS":
        return ""
    from .clock.calendar import evening_session_start

    try:
        opens = evening_session_start(name)
    except ConfigError:
        return ""
    return "" if opens is None else opens.isoformat()


def run_bound(
    value: str, *, end: bool, daily: bool, calendar: str, data_timezone: str = "UTC"
) -> datetime:
    """`run.start` (end=False: the first bar label in the window) or `run.end` (end=True: the
    last, inclusive) as an aware UTC time, read as the data load reads it (`load_data`).
    Daily bars: a date is the session labelled with it (00:00 UTC; a time without an offset
    is UTC, like the labels). Intraday: a date is a session day of the run's exchange
    calendar `calendar` (`validate.session_bound`: in its zone, not data.timezone, which
    is used only for a name no calendar has). Trading read the dates as UTC days while
    the load read them in data.timezone: on XASX 60-minute bars (the session opens 23:00 UTC
    the day before) run.start's first bars were loaded but only warmed up on."""
    if daily:
        at = _utc(value)
        if end and len(value) <= 10:  # a date: the whole day
            at += timedelta(days=1) - timedelta(microseconds=1)
        return at
    from .feeds.validate import session_bound

    evening = calendar_evening_start(calendar)
    bound = session_bound(
        value,
        end=end,
        zone=calendar_timezone(calendar) or data_timezone,
        evening_start=wall_time.fromisoformat(evening) if evening else None,
    )
    return _aware(bound)


def run_window(
    start: str, end: str, times: np.ndarray, *, calendar: str, data_timezone: str = "UTC"
) -> tuple[datetime | None, datetime | None]:
    """`run.start` and `run.end` ("" = unset: None) as the first and last bar labels of bars
    `times` a run includes, read as `load_data` and `trade_start` read them (`run_bound`,
    daily or intraday by the spacing of `times`). What `tradingd train`'s windows and the
    walk-forward's folds are cut by: they read the dates as UTC days, so on XASX bars
    (a session opening 23:00 UTC the evening before its date) run.start's first bars fell
    in the training span before the windows or the fold before the test, and a date of
    run.end left out that session's bars."""
    daily = daily_bars(times)

    def bound(value: str, is_end: bool) -> datetime | None:
        if not value:
            return None
        return run_bound(
            value, end=is_end, daily=daily, calendar=calendar, data_timezone=data_timezone
        )

    return bound(start, False), bound(end, True)


def daily_bars(times: np.ndarray) -> bool:
    """Whether bar times `times` are daily (sessions), as `run_window` and `bar_of_data` tell."""
    return _spacing(times) is None


def config_window(config: Config, times: np.ndarray) -> tuple[datetime | None, datetime | None]:
    """`run_window` of `config`'s run.start, run.end, live.calendar and data.timezone."""
    return run_window(
        config.run.start,
        config.run.end,
        times,
        calendar=config.live.calendar,
        data_timezone=config.data.timezone,
    )


def _aware(label: np.datetime64) -> datetime:
    """A naive UTC nanosecond label as an aware UTC datetime (to the microsecond below)."""
    micros = int(label.astype("datetime64[us]").astype(np.int64))
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def load_data(config: Config) -> Panel:
    """The configured bars up to `run.end`. History before `run.start` is kept: it warms up
    features, model windows and signals, and trading starts at `run.start` (see
    `trade_start`). Data after `run.end` is never loaded, so it cannot leak into a run."""
    d, c = config.data, config.cache
    load = functools.partial(
        cached_load_panel,
        data_cache_dir(config),
        int(c.data_max_mb * 1_000_000),
        source=d.source,
        path=d.path or None,
        layout=d.layout,
        start=None,
        end=config.run.end or None,
        repair=d.repair,
        max_gap_days=d.max_gap_days,
        max_spike=d.max_spike,
        max_volume=d.max_volume,
        timezone=d.timezone,
        date_format=d.date_format,
        weekend_sessions=calendar_has_weekend_sessions(config.live.calendar),
        session_timezone=calendar_timezone(config.live.calendar),
        session_evening_start=calendar_evening_start(config.live.calendar),
    )
    if d.max_symbols and not d.symbols:
        first = _first_symbols(load, d.max_symbols, d.source, d.path, d.layout, config.run.end)
        if first is not None:
            return session_bars_only(config, first)
    panel = load(symbols=d.symbols or None)
    if d.max_symbols and len(panel.symbols) > d.max_symbols:
        panel = panel.select(symbols=panel.symbols[: d.max_symbols])
    return session_bars_only(config, panel)


def _first_symbols(
    load: Callable[..., Panel], n: int, source: str, path: str, layout: str, end: str
) -> Panel | None:
    """`data.max_symbols = n` with no `data.symbols`: the panel of the first `n` symbols by
    name of those the whole load keeps, read alone. Loading every symbol and then keeping
    `n` peaked as high as the whole file (~720 MB for 50 of the S&P 500 file's 496 stocks).
    The first `n` names are read alone; a symbol among them without bars up to `run.end`
    makes room for the next name, so the symbols are those the whole load's first `n`
    are. The same panel (times, symbols, every array): each symbol's bars are checked on
    their own, and every bar the checks keep has a close, so the times are the bars of
    these symbols either way. None (the whole load then runs, as before) where the names
    cannot be listed without a load (`_symbol_names`), where there are no more than `n`,
    and where a load of the first ones fails: the whole load reports the file's errors."""
    names = _symbol_names(source, path, layout, end)
    if names is None or len(names) <= n:
        return None
    m = n
    while True:
        try:
            panel = load(symbols=names[:m])
        except DataError:
            return None
        if len(panel.symbols) >= n:
            return panel.select(symbols=panel.symbols[:n])
        if m >= len(names):
            return None
        m = min(len(names), m + n - len(panel.symbols))


def _symbol_names(source: str, path: str, layout: str, end: str) -> list[str] | None:
    """The symbols of the data, sorted as a panel sorts its symbols, where a load of some of
    them reads and checks those alone: a folder of one file per symbol (csv or parquet), or
    a long Parquet file whose symbol column is text without gaps and whose times are typed
    (text times are read in a format inferred from the whole column; a subset could infer
    another). None otherwise, or where the data cannot be listed (the whole load then says
    what is wrong). A long file's names come from its symbol column's dictionaries and, with
    `end` (`run.end`), its times: a name whose every bar is days after `end` (surely none up
    to it, whatever the time zones) is not listed, so no load is spent finding it has no
    bars (a name listed without any still makes room for the next, `_first_symbols`).
    Reading both takes ~50 ms for the S&P 500 file, and no pandas."""
    from .feeds import loaders
    from .feeds.validate import TIME_OF_DAY, canonical_columns

    if source not in ("csv", "parquet") or not path:
        return None
    where = Path(path)
    try:
        if where.is_dir():
            return None if layout == "long" else sorted(loaders._files_by_symbol(where, source))
        if source != "parquet" or layout == "per_symbol" or not where.is_file():
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns, filters = loaders._parquet_selection(where, ["?"])
        if columns is None or filters is None:  # not a long table read by symbols
            return None
        ((column, _, _),) = filters
        schema = pq.read_schema(where)
        canon = canonical_columns(schema.names)
        times = [str(c) for c, name in canon.items() if name == "time"]
        if TIME_OF_DAY in canon.values() or len(times) != 1:
            return None
        if not pa.types.is_timestamp(schema.field(times[0]).type):
            return None
        # Later than any bar up to `end` (a date, or a time with an offset of hours) can be.
        after = (np.datetime64(end[:10], "D") + 3).astype("datetime64[ns]") if end else None
        maybe: dict[str, bool] = {}  # name -> whether it may have bars up to `end`
        reader = pq.ParquetFile(where, read_dictionary=[column])
        for group in range(reader.metadata.num_row_groups):
            read = [column] if after is None else [column, times[0]]
            table = reader.read_row_group(group, columns=read).unify_dictionaries()
            for batch in table.combine_chunks().to_batches():
                symbols = batch.column(0)
                if symbols.null_count:  # a row without a symbol: the whole load's error
                    return None
                size = len(symbols.dictionary)
                rows = _numbers(symbols.indices)
                seen = np.bincount(rows, minlength=size)
                hit = seen
                if after is not None:
                    stamp = batch.column(1)
                    if stamp.null_count:  # a row without a time: the whole load decides
                        return None
                    # As stored: the wall time, or the UTC instant of a zoned time.
                    unit = stamp.type.unit
                    limit = after.astype(f"datetime64[{unit}]").astype(np.int64)
                    early = _numbers(stamp.cast(pa.int64())) <= limit
                    hit = np.bincount(rows[early], minlength=size)
                for name, n_seen, n_hit in zip(
                    symbols.dictionary.to_pylist(), seen.tolist(), hit.tolist(), strict=True
                ):
                    if n_seen:
                        maybe[str(name)] = maybe.get(str(name), False) or n_hit > 0
        return sorted(s for s, ok in maybe.items() if ok)
    except (OSError, ValueError, TypeError, DataError, ConfigError, ImportError):
        return None


def _numbers(array: Any) -> np.ndarray:
    """An Arrow integer array without nulls as a NumPy view of its buffer (its `to_numpy`
    imports pandas, ~0.2 s a backtest from the data cache never spends otherwise)."""
    dtype = np.dtype(str(array.type))
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )


def session_bars_only(config: Config, panel: Panel) -> Panel:
    """Intraday data without the bars the live clock never releases: those outside the
    sessions of `live.calendar` (pre- and post-market rows, after a half day's early close,
    on weekends and holidays, in a lunch break). A replay of them traded 08:00 and 17:00
    bars, and bars after a 13:00 close, that no live run of the same configuration ever
    sees. One warning says what was dropped. Bars off the live clock's grid (hour-aligned
    60-minute bars) are an error (`_check_grid`).

    Daily data is returned as it is, but bars on days without a session of the calendar
    (weekend bars of crypto data on XNYS) are said in one warning (how many, the first),
    and the panel is marked with the bars a year its dates hold (`data_bars_a_year`), what
    the run annualises with: the calendar's 252 read two years of daily crypto bars as
    2.9, the annual return -1.81% for a CAGR of -2.61% (`_check_daily_sessions`).

    Every replay's entry point applies it (`load_data`, and `run_backtest` / `build_engine`
    to a panel passed in): only `load_data` did, and the same bars passed to the Python API
    replayed their pre-market rows. A panel it returns is marked with the calendar, so a
    second call (`run_backtest`, then `build_engine`) neither checks again nor warns again."""
    name = config.live.calendar
    if panel.__dict__.get(_SESSIONS_OF) == name:
        return panel
    spacing = _intraday_spacing(panel)
    if spacing is None:
        return _check_daily_sessions(panel, name)
    from .clock.calendar import ExchangeCalendar

    first, last = panel.datetimes()[0], panel.datetimes()[-1]
    try:
        # Session windows are the same for every bar length: the 1-minute calendar's.
        exchange = ExchangeCalendar(
            name,
            "1m",
            start=(first - timedelta(days=1)).date(),
            end=(last + timedelta(days=1)).date(),
        )
    except ConfigError as exc:
        raise ConfigError(
            f"live.calendar = {name!r}: the intraday data ({first:%Y-%m-%d} .. "
            f"{last:%Y-%m-%d}) is replayed on the live clock's sessions, which cannot be "
            f"built: {exc}"
        ) from None
    why = exchange.outside_sessions(panel.times)
    keep = why == ""
    _check_grid(exchange, panel, keep, spacing)
    _warn_missing_bars(name, panel.times[keep], spacing)
    if keep.all():
        _warn_longer_bars(panel, spacing)
        return _sessions_checked(panel, name)
    split, dividend, moved, lost = _carry_actions(panel, keep)
    _warn_outside_session(exchange, panel, why, moved, lost)
    kept = Panel(
        times=panel.times[keep],
        symbols=panel.symbols,
        open=panel.open[keep],
        high=panel.high[keep],
        low=panel.low[keep],
        close=panel.close[keep],
        volume=panel.volume[keep],
        split=split,
        dividend=dividend,
    )
    _warn_longer_bars(kept, spacing)
    return _sessions_checked(kept, name)


# The key, in a Panel's instance dict, of the calendar whose sessions it holds only.
_SESSIONS_OF = "_sessions_of"
# The key, in a daily Panel's instance dict, of the bars a year its dates hold, when some of
# them are no session of the calendar (`_check_daily_sessions`).
_BARS_A_YEAR = "_bars_a_year"


def data_bars_a_year(panel: Panel | None) -> float | None:
    """The bars a year daily data with bars on days its calendar has no session holds
    (`session_bars_only` marks it); None for data on the calendar's sessions (the
    calendar's count is the run's then: `bars_a_year`)."""
    return None if panel is None else panel.__dict__.get(_BARS_A_YEAR)


def _check_daily_sessions(panel: Panel, calendar: str) -> Panel:
    """Daily `panel`, marked with the bars a year its dates hold when some of its bars fall
    on days without a session of `calendar`, said in one warning. Only data with weekend
    bars is checked against the calendar (building it costs ~0.3 s a backtest, and a
    holiday bar alone moves the annualisation by well under 1%)."""
    days = np.unique(np.asarray(panel.times, dtype="datetime64[D]"))
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday: Monday is 0
    if days.size < 2 or not (weekday >= 5).any():
        return _sessions_checked(panel, calendar)
    from .analysis.run_records import daily_bars_a_year
    from .clock.calendar import CalendarRangeError, ExchangeCalendar

    first, last = days[0].item(), days[-1].item()
    try:
        exchange = ExchangeCalendar(
            calendar, "1d", start=first - timedelta(days=7), end=last + timedelta(days=7)
        )
        sessions = np.array(
            [
                np.datetime64(t.date(), "D")
                for t in exchange.bars_between(
                    datetime(first.year, first.month, first.day, tzinfo=UTC),
                    datetime(last.year, last.month, last.day, tzinfo=UTC),
                )
            ],
            dtype="datetime64[D]",
        )
    except (ConfigError, CalendarRangeError) as exc:
        log.info("data.sessions_not_checked", calendar=calendar, error=str(exc))
        return _sessions_checked(panel, calendar)
    off = days[~np.isin(days, sessions)]
    if off.size:
        ppy = daily_bars_a_year(days)
        log.warning(
            "data.off_session_days",
            bars=int(off.size),
            of=int(days.size),
            first=str(off[0]),
            calendar=calendar,
            periods_per_year=ppy,
            detail=f"{off.size} of the {days.size} daily bars fall on days without a "
            f"{calendar} session (first {off[0]}): the run annualises with the bars a year "
            f"the data's dates hold, {ppy:g}, not the calendar's "
            f"{sessions_per_year(calendar)}; for a market that trades every day set "
            "live.calendar = '24/7', which the live run then uses too",
        )
        panel.__dict__[_BARS_A_YEAR] = ppy
    return _sessions_checked(panel, calendar)


def _sessions_checked(panel: Panel, calendar: str) -> Panel:
    """`panel`, marked as holding only bars of `calendar`'s sessions (a Panel's arrays are
    not changed once it is made: a new panel, from `select` or a slice, is checked anew)."""
    # (Frozen: into the instance's dict directly, as Panel.datetimes caches its list.)
    panel.__dict__[_SESSIONS_OF] = calendar
    return panel


def _check_grid(exchange: Any, panel: Panel, inside: np.ndarray, spacing: int) -> None:
    """DataError when most bars within the sessions are off the grid of the live clock's
    bars of the data's length, which start at each session's open. Hour-aligned 60-minute
    bars (09:00, 10:00, ..., 15:00 New York: Alpaca's 1Hour) lost their 09:00 bar, which
    holds 09:30-10:00 of regular trading, among the pre-market rows of one warning, and
    every other bar was half an hour off the live clock's 09:30, 10:30, ..., 15:30: the
    replay could not match a live run, and nothing said so. Not resampled here: which
    finer bars make a session-aligned bar is the operator's data to decide."""
    bar = _bar_named(spacing)
    if bar is None or not inside.any():
        return  # not a bar length a replay runs: bar_of_data says so
    times = panel.times[inside]
    offsets = exchange.grid_offsets(times, timedelta(seconds=spacing))
    off = np.flatnonzero(offsets != 0)
    if len(off) * 2 <= len(times):
        return
    first = int(off[0])
    at = pd.Timestamp(times[first], tz="UTC").tz_convert(exchange.tz)
    grid = at - pd.Timedelta(int(offsets[first]), "ns")
    past = pd.Timedelta(int(offsets[first]), "ns")
    minutes = f"{past.total_seconds() / 60:g} minutes"
    raise DataError(
        f"the data's {bar} bars are not the live clock's: {len(off):,} of the {len(times):,} "
        f"bars within the sessions of live.calendar = {exchange.name!r} start off its {bar} "
        f"grid (the first, {at.isoformat()}, {minutes} after the live clock's bar "
        f"{grid.isoformat()}). The live clock's {bar} bars start at the session open and "
        f"every {spacing // 60} minutes after (60m on XNYS: 09:30, 10:30, ..., 15:30), each "
        "labelled by its start; bars aligned to the clock hour (09:00, 10:00, ..., as "
        "Alpaca's 1Hour bars are) put the session's first half hour in a 09:00 bar before "
        "the open, and every other bar half an hour off the live run's, so a replay of them "
        "cannot match a live run. Nothing was resampled: resample finer bars (1m to 30m) to "
        f"{bar} bars that start at the session open (a source whose {bar} bars do: Yahoo's "
        "60m), or backtest the finer bars themselves"
    )


def _warn_missing_bars(calendar: str, times: np.ndarray, spacing: int) -> None:
    """One warning when intraday data lacks bars the live clock would release between its
    first and last bar (a missing hour, a missing session). The replay steps past them while
    a live run would release, fetch and decide them, so the two step different bars; only a
    gap of `data.max_gap_days` calendar days was said (about 500 missing 5-minute bars
    passed without a word). Said, not repaired: which bars are missing is the data's to fix."""
    bar = _bar_named(spacing)
    if bar is None or times.size < 2:
        return  # not a bar length a replay runs (bar_of_data says so), or nothing to span
    from .clock.calendar import CalendarRangeError, ExchangeCalendar

    have = np.asarray(times, dtype="datetime64[ns]")
    first, last = (pd.Timestamp(have[0], tz="UTC"), pd.Timestamp(have[-1], tz="UTC"))
    try:
        grid = ExchangeCalendar(
            calendar,
            bar,
            start=(first - timedelta(days=1)).date(),
            end=(last + timedelta(days=1)).date(),
        )
        expected = grid.labels_between(first, last).view("datetime64[ns]")
    except (ConfigError, CalendarRangeError) as exc:
        log.info("data.bars_missing_not_checked", calendar=calendar, error=str(exc))
        return
    missing = np.setdiff1d(expected, have)
    if missing.size == 0:
        return
    from .feeds.validate import session_days

    zone = str(grid.tz)
    days_missing = np.setdiff1d(session_days(missing, zone), session_days(have, zone))
    log.warning(
        "data.bars_missing",
        calendar=calendar,
        bar=bar,
        missing=int(missing.size),
        expected=int(expected.size),
        sessions_missing=len(days_missing),
        first_missing=[pd.Timestamp(t, tz="UTC").isoformat() for t in missing[:5]],
        detail=(
            f"the data lacks {missing.size:,} of the {expected.size:,} {bar} bars that "
            f"live.calendar = {calendar!r} has between its first and last bar"
            + (f" ({len(days_missing)} whole session(s))" if days_missing.size else "")
            + ": the replay steps past them, while a live run would release, fetch and "
            "decide each; fill the file's gaps if they were trading bars"
        ),
    )


def _warn_longer_bars(panel: Panel, spacing: int) -> None:
    """One warning when some symbols' own bars are longer than the data's (hourly symbols
    in a 5-minute file): the replay steps the data's bars, so such a symbol is decided once
    an hour, its orders wait an hour for a bar to fill on, and `order_ttl_bars` counts the
    data's bars: every entry of every hourly symbol expired unfilled, and the summary only
    counted the expiries. Said, not refused: whether the file should hold one bar length is
    the operator's to decide. A symbol's length is its most common spacing within a day,
    looked for only in symbols with bars on fewer than half the data's times (in blocks of
    rows: a 2-year 1-minute file of 500 symbols is 0.8 GB of closes)."""
    close, n = panel.close, len(panel.times)
    counts = np.zeros(len(panel.symbols), dtype=np.int64)
    for start in range(0, n, 8192):
        counts += np.count_nonzero(~np.isnan(close[start : start + 8192]), axis=0)
    times = np.asarray(panel.times, dtype="datetime64[s]").astype(np.int64)
    days = times // 86_400
    longer: dict[str, int] = {}
    for j in np.flatnonzero((counts >= 3) & (counts * 2 < n)).tolist():
        has_bar = ~np.isnan(close[:, j])
        t, d = times[has_bar], days[has_bar]
        gaps = np.diff(t)[d[1:] == d[:-1]]
        if gaps.size == 0:
            continue
        values, freq = np.unique(gaps, return_counts=True)
        own = int(values[np.argmax(freq)])
        if own >= 2 * spacing and own % spacing == 0:
            longer[panel.symbols[j]] = own
    if not longer:
        return
    named = {s: _spacing_text(g) for s, g in list(longer.items())[:10]}
    log.warning(
        "data.bar_lengths_mixed",
        bar=_spacing_text(spacing),
        symbols=len(longer),
        of=len(panel.symbols),
        longer=named,
        detail=(
            f"{len(longer)} of the {len(panel.symbols)} symbols have longer bars than the "
            f"data's {_spacing_text(spacing)} (their most common spacing within a session): "
            "the replay steps the data's bars, so these symbols are decided only at their own "
            "bars, their orders wait for their next bar to fill, and order_ttl_bars counts "
            "the data's bars (their entries can expire unfilled: the summary's "
            "orders_expired); backtest each bar length in a file of its own"
        ),
    )


def _carry_actions(panel: Panel, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The kept rows' split and dividend, with those of dropped rows moved to the symbol's
    next kept bar: a vendor books a split on the ex-date's first row, which with extended
    hours is a 04:00 bar; dropped with it, the split would show as a crash. Returns (split,
    dividend, moved, lost: events with no later kept bar of their symbol)."""
    split, dividend = panel.split[keep].copy(), panel.dividend[keep].copy()
    kept = np.flatnonzero(keep)
    event = (panel.split != 1.0) | (panel.dividend != 0.0)
    rows, cols = np.nonzero(event & ~keep[:, None])
    moved = lost = 0
    for r, j in zip(rows.tolist(), cols.tolist(), strict=True):
        later = np.searchsorted(kept, r)
        has_bar = ~np.isnan(panel.close[kept[later:], j])
        if not has_bar.any():
            lost += 1
            continue
        k = later + int(np.argmax(has_bar))
        split[k, j] *= panel.split[r, j]
        dividend[k, j] += panel.dividend[r, j]
        moved += 1
    return split, dividend, moved, lost


def _warn_outside_session(
    exchange: Any, panel: Panel, why: np.ndarray, moved: int, lost: int
) -> None:
    """The one warning of `session_bars_only`: how many bars of each kind, the first and
    the last of each in the exchange's time, and what keeps them."""
    kinds, counts = np.unique(why[why != ""], return_counts=True)
    dropped, kept = int(counts.sum()), int((why == "").sum())
    hints = []
    if dropped > kept:
        # A crypto or FX file under the default XNYS calendar, or bars labelled by their end:
        # most of the data would go with one warning among many lines.
        hints.append(
            f"more bars dropped than kept ({dropped} of {dropped + kept}): for a market that "
            "trades around the clock set live.calendar = '24/7'; bars labelled by their end "
            "(a 16:00 bar for 15:59-16:00) must be relabelled by their start"
        )
    end_labelled, sessions = _end_labelled_sessions(exchange, panel.times, why)
    if end_labelled * 2 > sessions:
        hints.append(
            f"{end_labelled} of the {sessions} sessions kept have one bar dropped, at their "
            "close (16:00 on XNYS), and none at their open: bars labelled by their end "
            "(09:31 ... 16:00 for 1-minute bars) look like that, and pass, each read one bar "
            "late and each session's last dropped; relabel them by their start (one bar "
            "length earlier). A closing-auction bar at the close, after bars labelled by "
            "their start, is rightly dropped"
        )
    extra = {"hint": "; ".join(hints)} if hints else {}
    examples = {}
    for kind in kinds.tolist():
        rows = np.unique(np.flatnonzero(why == kind)[[0, -1]])
        at = pd.DatetimeIndex(panel.times[rows], tz="UTC").tz_convert(exchange.tz)
        examples[kind] = [t.isoformat() for t in at]
    log.warning(
        "data.outside_session",
        bars=dropped,
        kept=kept,
        by_kind=dict(zip(kinds.tolist(), counts.tolist(), strict=True)),
        examples=examples,
        calendar=exchange.name,
        actions_moved=moved,
        actions_lost=lost,
        rule="intraday bars outside the sessions of live.calendar are dropped before the run: "
        "the live clock never releases them, so a replay that traded them could not match "
        "the live run (a split or dividend on a dropped bar moves to the symbol's next bar); "
        "a bar's label is its start (09:30 is the first minute of a New York session)",
        keep="the live clock has no extended-hours setting (broker.alpaca.extended_hours, "
        "feed.alphavantage.extended_hours and feed.yahoo.include_prepost do not change which "
        "bars it releases): to trade these bars, set live.calendar to a calendar whose "
        "sessions hold them (e.g. '24/7'), which the live run then uses too",
        **extra,
    )


def _end_labelled_sessions(exchange: Any, times: np.ndarray, why: np.ndarray) -> tuple[int, int]:
    """(sessions that look labelled by their bars' end, sessions with bars kept): a session
    whose only bar dropped after its close is at the close exactly (16:00; 13:00 on a half
    day), and whose first bar kept is not at its open (09:31, not 09:30). Bars labelled so
    lose only that bar, far too few for the more-dropped-than-kept hint, while every bar is
    read one bar late. `why`: `outside_sessions` of `times` (naive UTC)."""
    kept = why == ""
    if not kept.any():
        return 0, 0
    day = (
        pd.DatetimeIndex(times, tz="UTC").tz_convert(exchange.tz).tz_localize(None).normalize()
    ).to_numpy(dtype="datetime64[D]")
    days = np.unique(day[kept])
    after = np.flatnonzero(np.isin(why, ("after_close", "half_day_close")))
    if not after.size:
        return 0, len(days)
    just_before = times[after] - np.timedelta64(1, "ns")
    at_close = exchange.outside_sessions(just_before) == ""  # the instant before: in session
    after_days, after_count = np.unique(day[after], return_counts=True)
    close_days = np.unique(day[after[at_close]])
    one_at_close = after_days[(after_count == 1) & np.isin(after_days, close_days)]
    # The first kept bar of each session, and whether it is at the open (the instant
    # before it is outside the session).
    kept_rows = np.flatnonzero(kept)
    firsts = kept_rows[np.unique(day[kept_rows], return_index=True)[1]]
    opening = exchange.outside_sessions(times[firsts] - np.timedelta64(1, "ns")) != ""
    late_open = day[firsts][~opening]
    return int(np.isin(one_at_close, late_open).sum()), len(days)


def trade_start(config: Config, panel: Panel) -> datetime | None:
    """The first bar time that may trade (None: from the first bar): run.start read as the
    data load reads its window (`run_bound`): for daily bars the session of that date, for
    intraday bars the first of live.calendar's session day (XASX's 23:00 UTC the evening
    before; it was read as a UTC day, and that session's first bars only warmed up)."""
    start = config_window(config, panel.times)[0]
    if start is None:
        return None
    if len(panel.times) and start > panel.datetimes()[-1]:
        last = f"{panel.datetimes()[-1]:%Y-%m-%d}"
        if config.run.end:
            # The data was loaded up to run.end: its last bar is not the data's end. A gap of
            # more than a long weekend before run.start is the data ending, not a holiday.
            why = (
                "a holiday or weekend window?"
                if (start - panel.datetimes()[-1]).days <= 4
                else "the data ends before run.start"
            )
            raise ConfigError(
                f"no bar between run.start = {config.run.start!r} and run.end = "
                f"{config.run.end!r} (the last bar up to run.end is {last}: {why}): "
                "nothing to trade"
            )
        raise ConfigError(
            f"run.start = {config.run.start!r} is after the last bar of the data "
            f"({last}): nothing to trade"
        )
    return start


def warn_if_clipped(config: Config, panel: Panel) -> None:
    """A run.start before the data's first bar, or a run.end after its last, by more than a
    long weekend: the run covers less than was asked, said once (`run.window_clipped`) with
    both ranges. A 1995 start on data from 1999 ran from 1999 without a word, and read as a
    run over the years asked for."""
    if not len(panel.times) or not (config.run.start or config.run.end):
        return
    first, last = panel.datetimes()[0], panel.datetimes()[-1]
    start, end = config_window(config, panel.times)
    early = start is not None and (first - start).days > 4
    late = end is not None and (end - last).days > 4
    if not (early or late):
        return
    said = []
    if early:
        said.append(f"run.start = {config.run.start!r} is before the data's first bar")
    if late:
        said.append(f"run.end = {config.run.end!r} is after the data's last bar")
    actual_start = max(first, start) if start is not None else first
    log.warning(
        "run.window_clipped",
        requested=[config.run.start or None, config.run.end or None],
        actual=[actual_start.date().isoformat(), last.date().isoformat()],
        detail=" and ".join(said) + ": the run covers only the bars the data has",
    )


# New York's calendar and its exchange_calendars aliases: 252 sessions a year by name.
NEW_YORK_CALENDARS = frozenset({"XNYS", "NYSE", "NASDAQ", "BATS", "XNAS", "ARCX", "OOTC", "XASE"})
# The years another calendar's sessions are counted in (`sessions_per_year`): fixed, not the
# ten before today, so a rerun of a backtest next year annualises (and kelly_garch sizes)
# as this one did.
SESSIONS_COUNTED_IN = (2016, 2025)


@functools.cache
def sessions_per_year(calendar: str) -> int:
    """Sessions a year on `calendar`: 252 for New York (by name, as every default of the
    analysis counts: building the calendar to count them cost every daily backtest 0.3 s of
    import and 60 MB for the same 252), 365 for `24/7`; any other calendar's own count,
    the mean of the years `SESSIONS_COUNTED_IN` rounded (XTKS 244, XHKG 246, XLON 253). With 252
    everywhere a Tokyo run's Sharpe ratio and volatility were annualised with 3% too many
    sessions a year, and kelly_garch's volatility with them."""
    if calendar in NEW_YORK_CALENDARS:
        return 252
    if calendar == "24/7":
        return 365
    from .clock.calendar import CalendarRangeError, ExchangeCalendar

    first, last = SESSIONS_COUNTED_IN
    try:
        # A month either side: the count takes only years the calendar holds whole.
        exchange = ExchangeCalendar(
            calendar, "1d", start=f"{first - 1}-12-01", end=f"{last + 1}-01-31"
        )
        return round(exchange.sessions_per_year(years=last - first + 1, before=last + 1))
    except (ConfigError, CalendarRangeError) as exc:
        raise ConfigError(f"live.calendar = {calendar!r}: {exc}") from None


@functools.cache
def bars_per_session(calendar: str, bar: str) -> int:
    """Bars of `bar` length in a regular session of `calendar` (XNYS: 390 one-minute bars,
    78 of 5m, 7 of 60m: six full ones and the half hour from 15:30). From the calendar the
    live clock releases bars by, and a replay keeps its data's bars by
    (`session_bars_only`), so the count is the bars a run steps in a session."""
    from .clock.calendar import ExchangeCalendar

    try:
        return ExchangeCalendar(calendar, bar).bars_per_session()
    except ConfigError as exc:
        raise ConfigError(f"live.calendar = {calendar!r}: {exc}") from None


def run_defaults(config: Config, bar: str = "1d", data_ppy: float | None = None) -> dict[str, Any]:
    """What the run knows better than a plugin's defaults. Intraday live bars: a plugin that
    annualises per-bar figures (`periods_per_year`, kelly_garch's volatility) counts 252
    sessions of bars, not 252 bars: with the daily 252 a 5-minute bar's volatility was read
    as a day's, and every position sized at the cap. A calendar counts its own sessions a
    year (`sessions_per_year`: 365 on `24/7`, 244 on XTKS), daily bars included. `data_ppy`:
    the bars a year of daily data with bars on days the calendar has no session
    (`data_bars_a_year`), which the run then counts instead. Set in a plugin's params, it
    stays."""
    if bar == "1d" and data_ppy is not None:
        return {"periods_per_year": float(data_ppy)}
    ppy = bars_a_year(config.live.calendar, bar)
    # Daily bars in New York: the plugins' own 252. Elsewhere the calendar's count.
    return {} if bar == "1d" and ppy == 252 else {"periods_per_year": float(ppy)}


def bars_a_year(calendar: str, bar: str) -> int:
    """Bars of `bar` length a year on `calendar`: its sessions a year, times its bars a
    session for an intraday bar (what a run annualises with: `run_defaults`, a replay's
    stored `replay_bars`, and a stored live run read back, `run_records.stored_run_results`)."""
    days = sessions_per_year(calendar)
    return days if bar == "1d" else days * bars_per_session(calendar, bar)


#: The key of a replay's stored configuration (`runs.config_json`) that holds its data's bar
#: and the bars a year its summary annualises with: `{"bar": "5m", "periods_per_year":
#: 19656.0}`. No setting (a replay's bar is its data's): `stored_config_json` adds it.
REPLAY_BARS_KEY = "replay_bars"
#: The key of a replay's stored configuration that holds its data's split events, as its
#: record folder's splits.csv does: `{"AAPL": [["2014-06-09T00:00:00+00:00", 7.0]]}` (symbol:
#: [[ISO time, coefficient]], oldest first; {} for data without one).
REPLAY_SPLITS_KEY = "replay_splits"


def stored_config_json(
    config: Config,
    mode: str,
    bar: str,
    splits: Mapping[str, Sequence[tuple[datetime, float]]] | None = None,
    data_ppy: float | None = None,
) -> str:
    """The configuration stored with a run (`runs.config_json`): the public one, and for a
    replay its data's bar and bars a year (`REPLAY_BARS_KEY`), as its run folder's summary
    annualises (`backtest.run_backtest`), and its data's split events (`REPLAY_SPLITS_KEY`,
    `backtest.split_events`). A replay's summary in the store holds only its bar count and
    its configuration no bar (its data's), so an intraday replay read back from the store
    (`run_records.stored_run_results`) was annualised with 252 bars a year, its Sharpe
    ratio sqrt(bars a day) too small; and a replay writes no bars to the store, so its fills
    read back were not restated for splits: a 2-for-1 in a held symbol read as a flip to
    short, its round trips and win rate not the record folder's. A live run's bar is its
    `live.bar` and its splits are in the bars it writes; its stored configuration stays the
    public one (a live start compares it with its own: `run_continuation`)."""
    public = config.to_public_json()
    if mode == "live":
        return public
    stored = json.loads(public)
    stored[REPLAY_BARS_KEY] = {
        "bar": bar,
        "periods_per_year": float(
            run_defaults(config, bar, data_ppy).get("periods_per_year", 252.0)
        ),
    }
    stored[REPLAY_SPLITS_KEY] = {
        symbol: [[t.isoformat(), float(c)] for t, c in events]
        for symbol, events in sorted((splits or {}).items())
    }
    return json.dumps(stored, sort_keys=True, default=str)


def build_pipeline(
    config: Config, symbols: tuple[str, ...], bar: str = "1d", data_ppy: float | None = None
) -> Pipeline:
    """The configured plugins for `symbols`, on bars of length `bar` (the data's: "1d" for a
    backtest, live.bar for a live run or a replay of one); `data_ppy` as `run_defaults`."""
    if not config.signals:
        raise ConfigError("signals: at least one signal plugin must be configured")
    # The installed plugins, read once for the pipeline (each read scans every installed
    # distribution's entry points: ~27 ms, ten times for the default strategy).
    eps = plugin_registry.available()  # looked up at call time: tests register plugins there
    defaults = run_defaults(config, bar, data_ppy)
    try:
        signals = [
            (load_plugin(spec, "signal", symbols, f"signals[{i}]", eps, defaults), spec.weight)
            for i, spec in enumerate(config.signals)
        ]
        sizing = load_plugin(config.sizing, "sizing", symbols, "sizing", eps, defaults)
        risks = [
            load_plugin(spec, "risk", symbols, f"risk[{i}]", eps, defaults)
            for i, spec in enumerate(config.risk)
        ]
        # A name another plugin goes by (the two would be mixed up), as the start-up check
        # (`preflight.load_pipeline`) refuses it: the Python API (`tradingd.backtest`,
        # `build_engine`) comes here without it. On the command line's path both check, each
        # the plugins it built (a few dictionary look-ups).
        check_names(
            [
                (f"signals[{i}]", spec.name, p)
                for i, (spec, (p, _)) in enumerate(zip(config.signals, signals, strict=True))
            ]
            + [("sizing", config.sizing.name, sizing)]
            + [
                (f"risk[{i}]", spec.name, r)
                for i, (spec, r) in enumerate(zip(config.risk, risks, strict=True))
            ]
        )
    except ConfigError as exc:
        name_origin(config, exc)  # "risk[0].params: ... (set in paper.toml)"
        raise
    return Pipeline(signals=signals, sizing=sizing, risks=risks)


def prepare_for_replay(pipeline: Pipeline) -> None:
    """A backtest is one model from its first bar to its last: signal plugins that would
    take up a model published mid-run (`pin_model`, see `core.ports`) keep the one they
    loaded. And no clock paces it: plugins whose background work it waits for run that work
    at full priority (`for_replay`)."""
    for plugin in pipeline.plugins():
        for name in ("pin_model", "for_replay"):
            hook = getattr(plugin, name, None)
            if callable(hook):
                hook()


@dataclass(frozen=True)
class Swaps:
    """The parts that make a run replay or live: clock, feed and broker, and with the feed
    how features are computed (batch over the stored history, or streaming bar by bar)."""

    clock: Clock
    feed: Feed
    broker: Broker
    features: FeatureSource


def feature_names(config: Config, pipeline: Pipeline) -> tuple[str, ...]:
    # The order planner's too (an ATR stop needs the ATR): see OrderPlanner.required_features.
    planner = planner_features(config.orders)
    return tuple(sorted(pipeline.required_features() | set(planner) | set(config.features.extra)))


def verify_model_features(
    config: Config, pipeline: Pipeline, symbols: Sequence[str] | None = None
) -> None:
    """A plugin that was trained on a feature set (it has `feature_set`) must get exactly
    those features, computed with the same periods: otherwise start-up stops here. With the
    run's `symbols`, a model with cross-sectional features learned over another universe is
    warned about (`model.universe_differs`; a model taken up mid-run: `warn_model_bar`)."""
    f = config.features
    catalog = make_catalog(config)
    for plugin, _ in pipeline.signals:
        expected = getattr(plugin, "feature_set", None)
        if expected is None:
            continue
        if symbols is not None:
            _warn_other_universe(plugin, expected.features, symbols)
        for name in expected.features:
            try:
                catalog.node(name)
            except ConfigError as exc:
                raise ConfigError(
                    f"plugin {plugin.name!r}: its model needs feature {name!r}, "
                    f"which this engine cannot produce ({exc})"
                ) from None
        actual = engine_feature_set(expected, f.indicators, f.cross_sectional)
        card = getattr(getattr(getattr(plugin, "pair", None), "card", None), "path", None)
        verify_feature_set(expected, actual, f"plugin {plugin.name!r}", card)


def model_card(plugin: Any) -> Mapping[str, Any] | None:
    """The card (`card.json`'s content) of the model a signal plugin runs, or None for a
    plugin without one (`ml_ensemble` holds it as `pair.card`)."""
    data = getattr(getattr(getattr(plugin, "pair", None), "card", None), "data", None)
    return data if isinstance(data, Mapping) else None


def fitted_span(card: Mapping[str, Any] | None) -> tuple[date, date] | None:
    """The first training date and the last date a model was fitted on (None when the card
    does not say): the last validation date moved on by the card's `target.horizon_bars`
    bars. The last validation window's target is the return that many bars after its end,
    so those bars' prices were fitted on too: the span ended at the window's own end, which
    left the horizon's bars (1 for every card so far, 5 for a horizon-5 card) out of sample.
    Bars are counted as weekdays (a holiday in between makes the span a bar short, never
    long); intraday bars as 6.5-hour sessions of them, in whole days. A card loaded by
    `ModelCard.load` always says: one whose `train_range` or `validation_range` is no pair of
    ordered ISO dates is refused there, not passed here to silence these checks."""
    if card is None:
        return None
    try:
        first = date.fromisoformat(str(card["train_range"][0])[:10])
        last = date.fromisoformat(
            str((card.get("validation_range") or card["train_range"])[1])[:10]
        )
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    horizon = horizon_bars(card)
    minutes = _BAR_MINUTES.get(str(card.get("bar", "1d")))
    days = horizon if minutes is None else math.ceil(horizon * minutes / 390)
    last = np.busday_offset(np.datetime64(last, "D"), days, roll="forward").astype(date)
    return first, last


_BAR_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "60m": 60}


def horizon_bars(card: Mapping[str, Any]) -> int:
    """The card's `target.horizon_bars` (1 when it says none, or nothing usable: every card
    trained before it was recorded had a one-bar target)."""
    h = (card.get("target") or {}).get("horizon_bars", 1)
    return h if isinstance(h, int) and not isinstance(h, bool) and h >= 1 else 1


def fitted_after(fitted: tuple[date, date], times: Sequence[datetime]) -> list[datetime]:
    """The bars of `times` before the first date the model was fitted on (`fitted`: its
    `fitted_span`): the model was fitted on data after each of them, so its forecasts there
    carry their future (look-ahead through the model). Not in-sample, so `backtest.in_sample`
    said nothing: a model trained from 2012 back-tested on 2005-2010 without a word."""
    return [t for t in times if t.date() < fitted[0]]


FITTED_AFTER_RULE = (
    "the model was fitted on data after these bars (its fitted_on starts after them): its "
    "forecasts there know their future, a look-ahead through the model; train on data "
    "ending before the run (the training config's run.end before this run's run.start)"
)


def warn_replay_in_sample(pipeline: Pipeline, times: Sequence[datetime]) -> None:
    """An accelerated live replay (the demo, replay-check) over bars inside a model's
    training or validation period: said for backtests (`backtest.in_sample`), not here, so
    the demo traded 2017 on a model validated through 2018 without a word."""
    for plugin, _ in pipeline.signals:
        version = getattr(plugin, "version", None)
        check_replay_in_sample(model_card(plugin), times, plugin=plugin.name, version=version)


def check_replay_in_sample(
    card: Mapping[str, Any] | None,
    times: Sequence[datetime],
    *,
    plugin: str,
    version: Any,
    path: Any = None,
) -> None:
    """`replay.in_sample` of a model (`card`: `card.json`'s content) over a replay's bars
    `times`: at start (`warn_replay_in_sample`) and for a model taken up mid-replay, over
    the bars still to come (`_check_reloaded_model`). `path`: its card, named when given."""
    fitted = fitted_span(card)
    if fitted is None:
        return
    named = {} if path is None else {"card": str(path)}
    before = fitted_after(fitted, times)
    if before:
        log.warning(
            "replay.model_fitted_after",
            plugin=plugin,
            version=version,
            **named,
            fitted_on=[d.isoformat() for d in fitted],
            run=[times[0].date().isoformat(), times[-1].date().isoformat()],
            bars=len(before),
            of=len(times),
            rule=FITTED_AFTER_RULE,
        )
    inside = [t for t in times if fitted[0] <= t.date() <= fitted[1]]
    if not inside:
        return
    log.warning(
        "replay.in_sample",
        plugin=plugin,
        version=version,
        **named,
        fitted_on=[d.isoformat() for d in fitted],
        bars=len(inside),
        of=len(times),
        rule="these bars are in the model's training or validation period: the "
        "replay's decisions there are in-sample",
    )


def _warn_other_universe(plugin: Any, features: Sequence[str], symbols: Sequence[str]) -> None:
    """`check_model_universe` of the model a signal plugin loaded at start (a model it takes
    up mid-run: `warn_model_bar`'s reload check)."""
    name = getattr(plugin, "name", type(plugin).__name__)
    path = getattr(getattr(getattr(plugin, "pair", None), "card", None), "path", None)
    version = getattr(plugin, "version", None)
    card = model_card(plugin)
    check_model_universe(card, features, symbols, plugin=name, version=version, path=path)


def check_model_universe(
    card: Mapping[str, Any] | None,
    features: Sequence[str],
    symbols: Sequence[str],
    *,
    plugin: str,
    version: Any,
    path: Any,
) -> None:
    """A cross-sectional feature (cs_*) means what the universe makes it: over the shipped
    model's 2 index series a cross-sectional rank is only ever +-1, over 500 stocks it is
    continuous. The feature set's version does not name the universe, so a model trained on
    one and run on another started without a word: warned about (`model.universe_differs`)
    when the card (`card.json`'s content) names the symbols it was trained on."""
    cross = [n for n in features if n.startswith("cs_")]
    trained = (card.get("data") or {}).get("symbols") if card is not None else None
    if not cross or not isinstance(trained, list) or set(trained) == set(symbols):
        return
    log.warning(
        "model.universe_differs",
        plugin=plugin,
        version=version,
        card=None if path is None else str(path),
        cross_sectional=cross,
        trained_on=len(trained),
        trained_examples=sorted(map(str, trained))[:5],
        run_symbols=len(symbols),
        rule="cross-sectional features are relative to the universe: learned over another "
        "one, they mean something else here; train the model on this universe",
    )


def warn_model_bar(
    pipeline: Pipeline,
    bar: str,
    symbols: Sequence[str] | None = None,
    replay: Sequence[datetime] | None = None,
) -> None:
    """A model trained on bars of another length than the run's (`model.bar_differs`,
    `check_model_bar`), at start and for every model a signal plugin takes up mid-run: a
    plugin that follows a published model offers `check_reloaded_models(check)` (see
    `core.ports`), and is handed the same check, which it runs on each new model before it
    serves. A live daemon took up a model retrained on other bars (`tradingd retrain`
    publishing to `var/models/current`) without a word: only the start was checked. With
    the run's `symbols`, the check of a model taken up mid-run also warns of one trained
    over another universe (`check_model_universe`, which `verify_model_features` runs at
    start), after the bar check, so a model refused for its bar is not warned of too. With
    the bars a replay (a recorded feed's live run) trades (`replay`), it also warns of one
    fitted on the bars still to come (`replay.in_sample`, as `warn_replay_in_sample` at
    start): a model retrained over the replayed years and taken up mid-replay decided
    inside its own training span without a word, where a restart said it at once."""
    for plugin, _ in pipeline.signals:
        name = getattr(plugin, "name", type(plugin).__name__)
        card = model_card(plugin)
        if card is not None:
            path = getattr(getattr(getattr(plugin, "pair", None), "card", None), "path", None)
            version = getattr(plugin, "version", None)
            check_model_bar(card, bar, plugin=name, version=version, path=path)
        watch = getattr(plugin, "check_reloaded_models", None)
        if callable(watch):
            run = None if symbols is None else tuple(symbols)
            replayed = None if replay is None else tuple(replay)
            check = functools.partial(
                _check_reloaded_model, bar=bar, symbols=run, plugin=name, replay=replayed
            )
            watch(check)


def _check_reloaded_model(
    card: Any,
    at: datetime | None = None,
    *,
    bar: str,
    symbols: Sequence[str] | None,
    plugin: str,
    replay: Sequence[datetime] | None = None,
) -> None:
    """`check_model_bar`, then `check_model_universe` (with the run's `symbols`), of a model
    a plugin is about to take up mid-run (`card`: its `inference.onnx.ModelCard`), named by
    its own version and card; then, in a replay (`replay`: its traded bars, in order),
    `check_replay_in_sample` over its bars from `at` (the bar the model decides first)."""
    data = card.data
    version = data.get("model_version") if isinstance(data, Mapping) else None
    check_model_bar(data, bar, plugin=plugin, version=version, path=card.path)
    if symbols is not None:
        features = card.feature_set.features
        check_model_universe(
            data, features, symbols, plugin=plugin, version=version, path=card.path
        )
    if replay is not None and at is not None and isinstance(data, Mapping):
        ahead = replay[bisect.bisect_left(replay, at) :]
        check_replay_in_sample(data, ahead, plugin=plugin, version=version, path=card.path)


def check_model_bar(
    card: Mapping[str, Any], bar: str, *, plugin: str, version: Any, path: Any
) -> None:
    """A model trained on bars of another length than the run's is warned about
    (`model.bar_differs`): its horizon is so many of its own bars, and its residual_std and
    confidence are calibrated on their returns, yet the shipped daily model started on 1-
    and 5-minute bars without a word. A card without `bar` was trained on daily bars
    (every card before `tradingd train` recorded it, the models shipped until 2026-12-07
    included); one whose
    `bar` is not a bar length is refused (ConfigError), naming the card (`path`)."""
    trained = card.get("bar", "1d")
    if trained not in LIVE_BARS:
        raise ConfigError(
            f"model card {path}: bar = {trained!r} is not a bar length "
            f"({', '.join(LIVE_BARS)}): train the model again, or correct the card"
        )
    if trained == bar:
        return
    said = (
        f"its card's bar = {trained}"
        if "bar" in card
        else "its card records no bar length: every card trained before tradingd "
        "recorded it was trained on daily bars"
    )
    horizon = (card.get("target") or {}).get("horizon_bars", "?")
    log.warning(
        "model.bar_differs",
        plugin=plugin,
        version=version,
        card=None if path is None else str(path),
        trained_on=trained,
        run_bar=bar,
        rule=f"the model was trained on {trained} bars ({said}) and runs on {bar} bars: "
        f"its target is the return {horizon} {trained} bar(s) ahead and its "
        "residual_std and confidence are calibrated on such returns, so its forecasts "
        "and confidence mean something else here; train a model on bars of this length "
        "(tradingd train on such data)",
    )


def choose_swaps(
    config: Config, mode: str, panel: Panel, portfolio: Portfolio, names: tuple[str, ...]
) -> Swaps:
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is invalid; valid choices: {', '.join(MODES)}")
    broker: Broker = _simulated(config, panel.symbols, portfolio)
    if mode == "live":
        broker = live_broker(broker, config, panel.symbols)
    catalog = make_catalog(config)
    if mode == "backtest":
        feed = HistoryFeed(panel)
        c = config.cache
        cache = None
        if c.features:  # (features_max_mb = 0: FeatureCache keys nothing, no cache)
            where = Path(c.features_dir).expanduser() if c.features_dir else features_cache_dir()
            cache = FeatureCache(where, int(c.features_max_mb * 1_000_000))
        features = BatchFeatureSource(panel, names, catalog, cache=cache)
        return Swaps(ReplayClock(feed.times), feed, broker, features)
    live_feed = RecordedLiveFeed(panel)
    # Bars before the start warm up at once (Engine warmup); the clock paces the rest.
    start = trade_start(config, panel)
    live_times = [t for t in live_feed.times if start is None or t >= start]
    calendar = live_times if config.live.bars_per_second > 0 else None
    streaming = StreamingFeatureSource(len(panel.symbols), names, catalog)
    from .clock.live import LiveClock  # APScheduler: not for a backtest

    clock = LiveClock(config.live, calendar, heartbeat_s=config.live.heartbeat_s)
    return Swaps(clock, live_feed, broker, streaming)


def recorded_warmup(
    panel: Panel, feed: Feed, start: datetime | None
) -> Callable[[datetime | None], AsyncIterator[CrossSection]] | None:
    """The recorded history before the start, served through the live feed itself, so the
    warm-up takes the same path as live bars."""
    if start is None:
        return None
    before = [t for t in panel.datetimes() if t < start]

    async def bars(resumed_from: datetime | None = None) -> AsyncIterator[CrossSection]:
        # (A resumed run's bars after its checkpoint are the clock's: it replays the record.)
        for t in before:
            bar = await feed.bars(t)
            if bar is not None:
                yield bar

    return bars


def _simulated(config: Config, symbols: tuple[str, ...], portfolio: Portfolio) -> Broker:
    c = config.costs
    b = config.broker
    return SimulatedBroker(
        SimulatedBrokerConfig(
            commission_pct=c.commission_pct,
            slippage_pct=c.slippage_pct,
            half_spread_bps=c.half_spread_bps,
            min_commission=c.min_commission,
            max_volume_participation=b.max_volume_participation,
            order_ttl_bars=b.order_ttl_bars,
            allow_short=b.allow_short,
        ),
        symbols,
        portfolio,
    )


def replays_on_an_account(config: Config) -> bool:
    """An accelerated clock (past bars, the demo's 2017) with a broker URL that is not a
    loopback test server: Alpaca's hosts, or a proxy in front of them, are an account, where
    each decision would be a real order at today's prices, bracket legs priced from years
    ago."""
    return config.live.bars_per_second > 0 and not config.broker.alpaca.is_loopback


def accelerated_on_an_account(config: Config) -> ConfigError:
    return ConfigError(
        f"broker.kind = alpaca with live.bars_per_second = {config.live.bars_per_second:g}: "
        "the accelerated clock replays past bars, and each decision would be sent to the "
        f"Alpaca account at {mask_url(config.broker.alpaca.base_url)} as a real order "
        "(only a loopback test server may take them); set live.bars_per_second = 0 (real "
        "time) or broker.kind = simulated"
    )


def live_broker(simulated: Broker, config: Config, symbols: tuple[str, ...]) -> Broker:
    """A live run's broker, for every feed: `broker.kind = "simulated"` is the simulated
    broker whatever keys the environment holds. Only the recorded feed's path checked the
    kind: with a vendor feed, a run set to simulated (a dry run of a new strategy on live
    data) sent its orders to the Alpaca account of the keys in the shell or unit file."""
    if config.broker.kind == "simulated":
        log.info("broker.simulated", reason="broker.kind = simulated")
        return simulated
    return _alpaca_or(simulated, config, symbols)


def _alpaca_or(simulated: Broker, config: Config, symbols: tuple[str, ...]) -> Broker:
    """The Alpaca paper broker when its keys are in the environment; without them
    `broker.kind = "auto"` keeps the simulated broker and "alpaca" is an error."""
    from .brokers.alpaca import AlpacaBroker, AlpacaBrokerConfig, alpaca_keys_from_env
    from .brokers.alpaca_mapping import (
        KEY_ID_ENV,
        SECRET_KEY_ENV,
        look_alike_key_names,
        missing_keys_error,
    )

    b = config.broker
    if replays_on_an_account(config):
        if b.kind == "alpaca":
            raise accelerated_on_an_account(config)
        log.warning(
            "broker.simulated",
            reason="live.bars_per_second > 0 replays past bars: the Alpaca keys in the "
            "environment are not used (broker.kind = auto)",
        )
        return simulated
    keys = alpaca_keys_from_env()
    if keys is None:
        if b.kind == "alpaca":
            raise missing_keys_error()
        # A warning: a real-time run on live data whose keys are missing (an env file
        # not read, a misspelt name) trades a simulated book an operator may not expect.
        log.warning(
            "broker.simulated",
            reason="no Alpaca keys in the environment (broker.kind = auto)",
            look_alike_variables=look_alike_key_names(),
            hint=f"set {KEY_ID_ENV} and {SECRET_KEY_ENV} to trade the paper account, or "
            "broker.kind = simulated to say this is meant",
        )
        return simulated
    a = b.alpaca
    return AlpacaBroker(
        AlpacaBrokerConfig(
            base_url=a.base_url,
            stream_url=a.stream_url or None,
            stream_enabled=a.stream_enabled,
            poll_interval_s=a.poll_interval_s,
            open_orders_check_s=a.open_orders_check_s,
            request_timeout_s=a.request_timeout_s,
            call_timeout_s=a.call_timeout_s,
            max_attempts=a.max_attempts,
            time_in_force=a.time_in_force,
            exit_time_in_force=a.exit_time_in_force,
            bracket_time_in_force=a.bracket_time_in_force,
            extended_hours=a.extended_hours,
            rate_limit_per_minute=a.rate_limit_per_minute,
            rate_limit_burst=a.rate_limit_burst,
            max_in_flight=a.max_in_flight,
        ),
        keys,
        symbols,
    )


def corporate_actions_url(config: Config) -> str:
    """Where the corporate actions are asked for: `broker.alpaca.data_url`; when empty and the
    feed is Alpaca with its own `feed.alpaca.base_url`, that data host (the one the bars come
    from); else `broker.alpaca.effective_data_url` (Alpaca's data host for Alpaca's trading
    hosts, else the broker's base_url)."""
    a = config.broker.alpaca
    if a.data_url:
        return a.data_url
    if config.feed.source == "alpaca" and config.feed.alpaca.base_url:
        return config.feed.alpaca.base_url
    return a.effective_data_url


# The first alpaca-py whose CorporateActionsClient asks /v1/corporate-actions (pyproject).
ALPACA_PY_FOR_SPLITS = "0.33"


def _alpaca_py_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alpaca-py")
    except PackageNotFoundError:
        return "(not installed)"


def _splits_ahead(config: Config, engine: Engine) -> Any:
    """Splits known ahead (engine/splits_ahead.py) for a live run on Alpaca's account: the
    broker splits positions before the ex-date's open. None for the simulated broker (it
    splits at the bar, as the book does), with broker.alpaca.splits_ahead = false, with an
    alpaca-py too old for the corporate-actions client (an error, once at the start), or
    without Alpaca's keys in the environment; each is logged (`split.ahead_off`)."""
    from .brokers.alpaca import AlpacaBroker
    from .brokers.alpaca_mapping import alpaca_keys_from_env
    from .engine.splits_ahead import SplitsAhead
    from .feeds.corporate_actions import AlpacaSplits
    from .feeds.resilience import SourceConfig

    a = config.broker.alpaca
    clock = engine.clock
    if not isinstance(engine.broker, AlpacaBroker):
        log.info(
            "split.ahead_off",
            reason=f"the broker is {type(engine.broker).__name__} (broker.kind = "
            f"{config.broker.kind!r}), not Alpaca's account: its positions split at the "
            "ex-date's bar, as the book's do",
        )
        return None
    if not a.splits_ahead:
        log.info(
            "split.ahead_off",
            reason="broker.alpaca.splits_ahead = false: a split is found at its ex-date's bar "
            "and by reconciliation only",
        )
        return None
    try:
        from alpaca.data.historical.corporate_actions import CorporateActionsClient  # noqa: F401
    except ImportError as exc:
        log.error(
            "split.ahead_off",
            reason=f"alpaca-py {_alpaca_py_version()} has no CorporateActionsClient ({exc}): "
            f"alpaca-py>={ALPACA_PY_FOR_SPLITS} is needed to look splits up ahead; a split "
            "is found at its ex-date's bar and by reconciliation only",
        )
        return None
    keys = alpaca_keys_from_env()
    if keys is None:
        log.warning(
            "split.ahead_off",
            reason="APCA_API_KEY_ID / APCA_API_SECRET_KEY not both set: the corporate actions "
            "cannot be asked for; a split is found at its ex-date's bar and by reconciliation "
            "only",
        )
        return None
    source = AlpacaSplits(
        *keys,
        base_url=corporate_actions_url(config),
        config=SourceConfig.for_source(
            "alpaca", timeout_s=a.call_timeout_s, max_attempts=a.max_attempts
        ),
        request_timeout_s=a.request_timeout_s,
    )
    return SplitsAhead(
        source,
        engine.symbols,
        clock.session_day,  # type: ignore[attr-defined]
        clock.next_session_day,  # type: ignore[attr-defined]
    )


def vendor_source(config: Config, cache: Any, session: Any = None) -> Any:
    """The configured market-data client (feed.source), with its resilience settings.
    `session`: when daily bars close (`feeds.vendor.Session`); give it the exchange's
    calendar, or a half day's bar (13:00 close) is held back by the client until 16:00."""
    from .feeds.resilience import SourceConfig
    from .feeds.vendor import Session, Validation

    f = config.feed
    d = config.data
    validation = Validation(
        repair=f.repair,
        max_gap_days=float(d.max_gap_days),
        extra={"max_spike": d.max_spike, "max_volume": d.max_volume, "timezone": d.timezone},
    )
    session = session if session is not None else Session(timezone=d.timezone)
    if f.source == "yahoo":
        from .feeds.yahoo import YahooClient

        y = f.yahoo
        return YahooClient(
            base_url=y.base_url,
            config=SourceConfig.for_source("yahoo", **dict(y.call)),
            cache=cache,
            include_prepost=y.include_prepost,
            validation=validation,
            session=session,
        )
    if f.source == "alphavantage":
        from .feeds.alphavantage import AlphaVantageClient

        a = f.alphavantage
        return AlphaVantageClient(
            base_url=a.base_url,
            config=SourceConfig.for_source("alphavantage", **dict(a.call)),
            cache=cache,
            datatype=a.datatype,
            adjusted=a.adjusted,
            extended_hours=a.extended_hours,
            timezone=d.timezone,
            validation=validation,
            session=session,
        )
    if f.source == "alpaca":
        from .feeds.alpaca_data import AlpacaDataClient

        p = f.alpaca
        return AlpacaDataClient(
            base_url=p.base_url or None,
            config=SourceConfig.for_source("alpaca", **dict(p.call)),
            cache=cache,
            feed=p.feed,
            derive_actions=p.derive_actions,
            max_symbols_per_request=p.max_symbols_per_request,
            validation=validation,
            session=session,
        )
    raise ConfigError(f"feed.source = {f.source!r} is not a vendor")


@dataclass(frozen=True)
class LivePlan:
    """What a live run on a vendor feed does at start: the history that warms it up (through
    `warm_until`, fetched at once) and the bars the clock releases after it."""

    warm_from: datetime | None
    warm_until: datetime | None
    calendar: list[datetime] | None  # accelerated: the bars to release; None: real time


def warmup_needed(pipeline: Pipeline, names: Sequence[str], catalog: Catalog) -> tuple[int, str]:
    """The bars a live start must see before its first traded bar for the pipeline to
    decide as a backtest with enough history would, and who needs them: the longest raw
    history a plugin reads (`history_bars()`: kelly_garch's GARCH window, 501 bars by
    default), or the longest feature warm-up plus a signal's window of them (the ML models'
    60 bars of features). Without it a vendor warm-up of `live.warmup_bars` (300) fitted the
    default strategy's GARCH on 293 returns, where the backtest had 500: other fits, other
    sizes, other orders, from the first live bar."""
    best, who = 0, ""
    for plugin in pipeline.plugins():
        reads = getattr(plugin, "history_bars", None)
        n = int(reads()) if callable(reads) else 0
        if n > best:
            best, who = n, f"{getattr(plugin, 'name', type(plugin).__name__)}'s history"
    features = max((warmup(catalog.node(n)) + 1 for n in names), default=0)
    # A signal that keeps a window of feature rows (ml_ensemble's model window).
    windows = [getattr(p, "window", 1) for p, _ in pipeline.signals]
    window = max((w for w in windows if isinstance(w, int) and w > 0), default=1)
    if features + window - 1 > best:
        best, who = features + window - 1, "the features' warm-up and the signals' windows"
    return best, who


def plan_live(
    config: Config, exchange: Any, now: datetime, needed: tuple[int, str] = (0, "")
) -> LivePlan:
    """Real time: warm up through the bar before the last closed one, and have the clock
    release the last closed bar at once, then each new close. That bar trades if its trade
    deadline (the next session's open, which its orders are for) is still ahead: a start
    after the close or over a weekend. A start during the next session steps it untraded
    (`Engine._catch_up`, counted in bars_never_traded): its orders would fill mid-session.
    Accelerated (bars_per_second > 0): release the calendar's bars from run.start to run.end
    (or the last closed bar), after warming up on the `warmup_bars` before them, or on what
    the pipeline needs (`needed`, from `warmup_needed`) when that is more."""
    live = config.live
    n = live.warmup_bars
    if needed[0] > n:
        log.info(
            "warmup.extended",
            bars=needed[0],
            configured=n,
            needed_by=needed[1],
            rule="live.warmup_bars is less than the pipeline reads: the warm-up fetches what "
            "it needs, so live decisions match a backtest's",
        )
        n = needed[0]
    if live.bars_per_second > 0:
        if not config.run.start:
            raise ConfigError(
                "live.bars_per_second > 0 with a vendor feed replays run.start .. run.end "
                "through the live path: set run.start"
            )
        calendar = _replay_bars(config, exchange, now)
        if not calendar:
            raise ConfigError(f"no bar of {exchange.name} between run.start and run.end")
        before = _bars_before(exchange, calendar[0], n)
        return LivePlan(before[0] if before else None, before[-1] if before else None, calendar)
    last = _last_closed_live(config, exchange, now)
    if last is None:
        return LivePlan(None, None, None)
    before = _bars_before(exchange, last, n)
    return LivePlan(before[0] if before else None, before[-1] if before else None, None)


def _replay_bars(config: Config, exchange: Any, now: datetime) -> list[datetime]:
    """The bars an accelerated vendor replay steps: from run.start through run.end (or the
    last closed at `now`), the dates read as a backtest of the same bars reads them
    (`run_bound`): intraday, a session day of the exchange. Read as UTC days, an XASX date
    (its session opening 23:00 UTC the evening before) had its first bars only warmed up,
    and the next session's first bars were stepped after run.end. A run.end on or after the
    last day of a calendar the installed exchange_calendars ends (XSES: 2026-12-31), and
    built through, ends at its last close: asked about the day's end, the calendar refused."""
    daily = exchange.step is None
    start = run_bound(config.run.start, end=False, daily=daily, calendar=exchange.name)
    if not config.run.end:
        last = exchange.last_closed(now)
        return exchange.bars_between(start, last) if last else []
    if daily:  # a session's label is its date: the next day's 00:00 UTC bounds its close
        bound = _utc(config.run.end)
        until = bound + timedelta(days=1)
    else:
        bound = run_bound(config.run.end, end=True, daily=False, calendar=exchange.name)
        until = bound + exchange.step  # the bar labelled at the bound closes by then
    covered = exchange.coverage[1]
    end_day = date.fromisoformat(config.run.end[:10])
    if min(until, now) > covered and end_day <= exchange.built_through:
        until = covered  # no session after the calendar's last, which it holds up to run.end
    from .clock.calendar import CalendarRangeError

    try:
        last = exchange.last_closed(min(until, now))
    except CalendarRangeError as exc:
        raise ConfigError(
            f"run.end = {config.run.end!r} is past the sessions the {exchange.name} calendar "
            f"holds (through {exchange.last_session}): set run.end on or before it. {exc}"
        ) from None
    return exchange.bars_between(start, min(last, bound)) if last else []


def _last_closed_live(config: Config, exchange: Any, now: datetime) -> datetime | None:
    """The newest bar closed at `now`, no later than the calendar's last close: past the end
    of a calendar the installed exchange_calendars ends (its `bound_max`) the last bar is
    still released (by the clock, at once) and traded until its trade deadline. Asked past
    that end, the calendar raised CalendarRangeError (exit 2): systemd restarted it into the
    same error, and a start before the last bar's release did not trade it. Once the last
    bar can no longer trade, CalendarEnded (exit 78): only an upgrade of the package ends
    it."""
    from .clock.calendar import CalendarEnded, CalendarRangeError

    try:
        return cast(datetime | None, exchange.last_closed(now))
    except CalendarRangeError:
        last_close = exchange.coverage[1]
        if now <= last_close:
            raise
    last = cast(datetime | None, exchange.last_closed(last_close))
    from .clock.live import LiveClock

    clock = LiveClock(config.live, exchange=exchange, now=lambda: now)
    deadline = clock.trade_deadline(last) if last is not None else None
    if last is None or deadline is None or now >= deadline:
        hint = getattr(exchange, "upgrade_hint", lambda: "")() or (
            "build the calendar with a later end"
        )
        raise CalendarEnded(
            f"live.calendar = {exchange.name!r} ends with the bar of "
            f"{last.isoformat() if last else None} (last close {last_close.isoformat()}), "
            f"which could trade until {deadline.isoformat() if deadline else None}; now is "
            f"{now.isoformat()}: nothing is left to run. {hint[:1].upper()}{hint[1:]}"
        )
    log.warning(
        "calendar.last_bar",
        calendar=exchange.name,
        last_bar=last.isoformat(),
        trade_deadline=deadline.isoformat(),
        rule="the calendar ends with this bar: it is released at once and traded, then the "
        "run stops (clock.calendar_ended)",
    )
    return last


# The most bars a restart steps through to catch up from its checkpoint (a year of daily
# bars is 252; 50,000 one-minute bars are about four months): beyond, the fetch alone would
# be hours and gigabytes, and the operator decides (a new run, or the run continued).
MAX_CATCH_UP_BARS = 50_000


def _from_checkpoint(
    exchange: Any, checkpoint: datetime, warm_from: datetime, warm_until: datetime, n: int
) -> datetime:
    """Where a resumed real-time run's warm-up starts: at `warm_from`, or earlier when the
    daemon was down longer than the warm-up. Every bar after the checkpoint must be stepped
    (the open orders fill at those bars, their splits and dividends reach the book); a
    warm-up of the last n bars before now skipped the rest, and an entry decided before a
    split filled months later at the split price, its stop at the old one firing at once.
    So it starts n bars before the first bar after the checkpoint."""
    if checkpoint >= warm_from:
        return warm_from
    missed = [b for b in exchange.bars_between(checkpoint, warm_until) if b > checkpoint]
    if not missed or missed[0] >= warm_from:
        return warm_from
    if len(missed) > MAX_CATCH_UP_BARS:
        raise ConfigError(
            f"the run's checkpoint is at {checkpoint.isoformat()}, {len(missed)} bars ago "
            f"(more than {MAX_CATCH_UP_BARS:,} to step through at start): start a new run "
            "(another run.name)"
        )
    before = _bars_before(exchange, missed[0], n)
    start = before[0] if before else missed[0]
    log.warning(
        "warmup.from_checkpoint",
        checkpoint=checkpoint,
        first_missed=missed[0],
        missed_bars=len(missed),
        first=start,
        planned_first=warm_from,
        rule="the daemon was down longer than the warm-up: the bars since the checkpoint are "
        "stepped untraded (open orders fill, splits and dividends are booked) before the "
        "first traded bar",
    )
    return start


def _card_rate(live: Mapping[str, Any]) -> str:
    """The card's directional accuracy that the model check puts beside the live one,
    naming its split: the held-out test split's, or the validation windows' for a card
    without one (they early-stopped and calibrated the model: optimistic)."""
    if live.get("card_split") == "test":
        return f"card's test split {_share(live.get('card'))}"
    return (
        f"card's validation windows {_share(live.get('validation'))}, no test split: "
        "optimistic, they tuned the model"
    )


def _share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) and value == value else "n/a"


def _bars_before(exchange: Any, t: datetime, n: int) -> list[datetime]:
    """The n bar labels strictly before t on the exchange's calendar (fewer only where the
    calendar has no more). The span is widened until it holds n: an estimate of five
    sessions a week missed the holidays (300 asked, 294 fetched)."""
    if n <= 0:
        return []
    step = exchange.step or timedelta(days=1)
    per_day = max(1, int(timedelta(hours=6, minutes=30) / step)) if exchange.step else 1
    days = int(n / per_day * 7 / 5) + 10
    first = exchange.coverage[0]
    while True:
        # Not before the calendar's first bar: a run starting near it gets the bars there
        # are (warmup.short says so), not a CalendarRangeError.
        start = max(t - timedelta(days=days), first)
        labels = [b for b in exchange.bars_between(start, t) if b < t]
        if len(labels) >= n or start == first or days > 2 * (n / per_day * 7 / 5) + 400:
            return labels[-n:]
        days = int(days * 1.25) + 10


def _utc(text: str) -> datetime:
    """A configured time (run.start, run.end) in UTC; one without an offset is UTC. Config
    checks these are ISO 8601, which the standard library parses (pandas' parser, imported
    only then, takes any other text as before)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        ts = pd.Timestamp(text)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.to_pydatetime()
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def vendor_swaps(
    config: Config,
    symbols: tuple[str, ...],
    broker: Broker,
    names: tuple[str, ...],
    needed: tuple[int, str] = (0, ""),
) -> tuple[Swaps, Callable[[datetime | None], AsyncIterator[CrossSection]] | None]:
    """Live on a market-data vendor: the feed, the calendar clock, and the warm-up (of at
    least `needed` bars: `warmup_needed`)."""
    from .clock.calendar import ExchangeCalendar
    from .feeds.response_cache import ResponseCache
    from .feeds.vendor import Session, VendorFeed

    live = config.live
    exchange = ExchangeCalendar(live.calendar, live.bar)
    step = exchange.step
    if step is not None and live.bars_per_second == 0 and live.delay_s >= step.total_seconds():
        # The default (300 s) is for daily bars, which vendors post minutes late.
        log.warning(
            "live.delay_exceeds_bar",
            delay_s=live.delay_s,
            bar=live.bar,
            rule="each bar is pulled live.delay_s after its close, when the next bar has "
            "closed too: orders reach the broker a bar or more later than a backtest's "
            "next-open fill assumes; set live.delay_s to a few seconds for intraday bars",
        )
    daily = exchange if live.bar == "1d" else ExchangeCalendar(live.calendar, "1d")
    plan = plan_live(config, exchange, datetime.now(UTC), needed)
    cache = ResponseCache.from_url(config.cache.url or None, ttl_s=config.cache.expiry_s)
    # One session for the feed and its client: the client holds back a daily bar until its
    # session's close, which on a half day is 13:00 (the calendar's), not 16:00. Without the
    # calendar the Alpaca and Alpha Vantage clients refused a half day's bar until 16:00,
    # and the day went untraded (caught up the next session).
    session = Session(timezone=exchange.tz.key, calendar=daily)
    source = vendor_source(config, cache, session)
    feed = VendorFeed(
        source,
        symbols,
        live.bar,
        lookback_bars=config.feed.lookback_bars,
        session=session,
        calendar=exchange,
        owned=(cache,),
    )
    from .clock.live import LiveClock  # APScheduler: not for a backtest

    clock = LiveClock(
        live,
        plan.calendar,
        exchange=exchange,
        resume_after=plan.warm_until,
        heartbeat_s=live.heartbeat_s,
    )
    streaming = StreamingFeatureSource(len(symbols), names, make_catalog(config))
    warmup = None
    if plan.warm_from is not None and plan.warm_until is not None:
        planned_from, warm_until = plan.warm_from, plan.warm_until
        n = max(live.warmup_bars, needed[0])

        async def bars(resumed_from: datetime | None = None) -> AsyncIterator[CrossSection]:
            warm_from = planned_from
            if plan.calendar is None and resumed_from is not None:
                warm_from = _from_checkpoint(exchange, resumed_from, planned_from, warm_until, n)
            history = await feed.history(warm_from, warm_until)
            log.info(
                "warmup.history",
                source=config.feed.source,
                first=warm_from,
                last=warm_until,
                bars=len(history.times),
            )
            if len(history.times) < needed[0]:
                log.warning(
                    "warmup.short",
                    bars=len(history.times),
                    needed=needed[0],
                    needed_by=needed[1],
                    rule="the source returned less history than the pipeline reads: its "
                    "first live decisions rest on less than a backtest's would",
                )
            for i, t in enumerate(history.datetimes()):
                yield history.row(i, t)

        warmup = bars
    return Swaps(clock, feed, broker, streaming), warmup


def make_catalog(config: Config) -> Catalog:
    return Catalog(config.features.indicators, config.features.cross_sectional)


def build_engine(
    config: Config,
    mode: str,
    *,
    panel: Panel | None = None,
    on_bar: Callable[[int, datetime], None] | None = None,
    before_stop: Callable[[Engine], Awaitable[None]] | None = None,
    after_last_bar: Callable[[Engine], Awaitable[None]] | None = None,
    run_id: str | None = None,
    bar: str | None = None,
) -> Engine:
    """The engine of `config` for `mode` ("live", or a replay: "backtest"). `on_bar`,
    `before_stop` and `after_last_bar` are the Engine's hooks (see its parameters); `run_id`
    the id to run under instead of `run_id_for`'s (a live start that continues a stored run:
    `continued_live_run`). `bar`: the data's bar length, when a replay is of a live run's
    bars (`replay_check`); by default live.bar live, daily in a backtest."""
    vendor = mode == "live" and config.feed.source != "recorded"
    if vendor:
        symbols = tuple(sorted(dict.fromkeys(config.data.symbols)))
    else:
        # The same bars replay alike whether loaded here or passed in (session_bars_only).
        panel = load_data(config) if panel is None else session_bars_only(config, panel)
        symbols = panel.symbols
    st = config.storage
    store = open_store(
        st.url,
        batch_size=st.batch_size,
        signals=st.signals,
        flush_interval_s=st.flush_interval_s,
        # A backtest must not "finish" with rows still in a spool: only live runs spool.
        spool=mode == "live",
        spool_dir=st.spool_dir or None,
        spool_max_bytes=st.spool_max_bytes,
        start_retry_s=st.start_retry_s if mode == "live" else 0.0,
        # The bound is for a live run's outages (then spooled); a replay has no spool and no
        # retry, and a statement it waits on is its own work (deleting an earlier record of
        # its run id): it fails only past REPLAY_COMMAND_TIMEOUT_S.
        command_timeout_s=(
            st.command_timeout_s
            if mode == "live"
            else max(st.command_timeout_s, REPLAY_COMMAND_TIMEOUT_S)
        ),
    )
    # A replay's writer process starts first: it imports while the models load and the
    # features are computed (SqliteStore.prestart).
    prestart = getattr(store, "prestart", None) if mode != "live" else None
    if prestart is not None:
        prestart()
    try:
        hooks = _Hooks(on_bar, before_stop, after_last_bar)
        if bar:
            data_bar = bar
        elif mode == "live":
            data_bar = config.live.bar
            if panel is not None:  # a recorded feed: its file's bars are the run's
                check_recorded_bar(config, panel)
        else:
            assert panel is not None
            data_bar = bar_of_data(panel)
        return _assemble(config, mode, store, run_id, symbols, panel, hooks, data_bar)
    except BaseException:
        close = getattr(store, "close_unstarted", None)
        if close is not None:
            close()
        raise


_MINUTES_BAR = {1: "1m", 5: "5m", 15: "15m", 30: "30m", 60: "60m"}


def _intraday_spacing(panel: Panel) -> int | None:
    """The most common spacing in seconds of the bars within a day; None for daily bars
    (labelled at midnight, or sessions labelled at another hour)."""
    return _spacing(panel.times)


def _spacing(labels: np.ndarray) -> int | None:
    """`_intraday_spacing` of bar times `labels`."""
    times = np.asarray(labels, dtype="datetime64[ns]")
    if times.size < 2 or not (times.astype("datetime64[D]") != times).any():
        return None
    gaps = np.diff(times).astype("timedelta64[s]").astype(np.int64)  # seconds: 30 s is not 0
    gaps = gaps[gaps > 0]
    within = gaps[gaps < 12 * 3600]
    if within.size * 2 <= gaps.size:
        return None  # sessions labelled at another hour (a close), across DST changes too
    values, counts = np.unique(within, return_counts=True)
    return int(values[np.argmax(counts)])


def _bar_named(seconds: int | None) -> str | None:
    """The bar length `_intraday_spacing`'s `seconds` is ("1d" for None); None for a spacing
    no run steps (7 minutes, 30 seconds)."""
    if seconds is None:
        return "1d"
    return _MINUTES_BAR.get(seconds // 60) if seconds % 60 == 0 else None


def _spacing_text(seconds: int) -> str:
    if seconds % 60:
        return f"{seconds} seconds"
    return "1 minute" if seconds == 60 else f"{seconds // 60} minutes"


def _bars_text(bar: str) -> str:
    return "daily bars" if bar == "1d" else f"{bar} bars"


def check_recorded_bar(config: Config, panel: Panel) -> None:
    """ConfigError unless the bars of a recorded feed's data are live.bar long. The live run
    took live.bar as its data's bar unchecked: a 5-minute file under the default "1d" ran
    silently with the day's loss counted bar to bar (the daily loss limit never tripped)
    and kelly_garch reading a bar's volatility as a day's; a daily file under "5m" dated
    its daily summaries on Sundays. Data of fewer than two bars cannot tell and passes."""
    if panel.n_bars < 2:
        return
    seconds = _intraday_spacing(panel)
    found = _bar_named(seconds)
    if found == config.live.bar:
        return
    where = f"data.path = {config.data.path!r}" if config.data.path else "the data"
    if found is None:
        assert seconds is not None
        raise ConfigError(
            f"live.bar = {config.live.bar!r}, but the bars of {where} (the recorded feed's) "
            f"are {_spacing_text(seconds)} apart (most often): a run steps daily bars or "
            f"{', '.join(_MINUTES_BAR.values())} bars; resample the data to one of them"
        )
    raise ConfigError(
        f"live.bar = {config.live.bar!r}, but {where} (the recorded feed's) holds "
        f'{_bars_text(found)}: set live.bar = "{found}", or point data.path at '
        f"{_bars_text(config.live.bar)}"
    )


def bar_of_data(panel: Panel) -> str:
    """The bar length of a replay's data: "1d" for bars labelled at midnight (sessions),
    else the most common spacing of its bars within a day. A backtest of 5-minute bars ran
    them as daily ones: kelly_garch read a bar's volatility as a day's, the daily loss limit
    counted bar to bar, and the summary annualised with 252 bars a year (a -59% run over two
    months printed an annual return of -5.9%), unlike the live run of the same bars."""
    seconds = _intraday_spacing(panel)
    if seconds is None:
        return "1d"
    found = _bar_named(seconds)
    if found is None:
        raise ConfigError(
            f"the data's bars are {_spacing_text(seconds)} apart (most often): a replay runs daily "
            f"bars or {', '.join(_MINUTES_BAR.values())} bars; resample the data to one of them"
        )
    log.info(
        "backtest.intraday",
        bar=found,
        rule="intraday bars: the run counts sessions of "
        "them (periods_per_year, the day's loss, the summary's annual figures)",
    )
    return found


class _Hooks(NamedTuple):
    on_bar: Callable[[int, datetime], None] | None
    before_stop: Callable[[Engine], Awaitable[None]] | None
    after_last_bar: Callable[[Engine], Awaitable[None]] | None


def _assemble(
    config: Config,
    mode: str,
    store: Store,
    run_id: str | None,
    symbols: tuple[str, ...],
    panel: Panel | None,
    hooks: _Hooks,
    bar: str = "1d",
) -> Engine:
    """build_engine's parts around its store; `run_id` None: `run_id_for`'s, with the
    models the plugins loaded (a backtest's id names them)."""
    vendor = mode == "live" and config.feed.source != "recorded"
    data_ppy = data_bars_a_year(panel) if mode != "live" else None
    pipeline = build_pipeline(config, symbols, bar, data_ppy)
    if run_id is None:
        run_id = run_id_for(config, mode, pipeline_run_inputs(pipeline, config))
    if mode != "live":
        prepare_for_replay(pipeline)
    portfolio = Portfolio(
        symbols,
        config.run.initial_capital,
        session_tz=session_zone(config, bar),
        evening_start=session_evening_start(config, bar),
        allow_short=config.broker.allow_short,
        run_id=run_id,
    )
    verify_model_features(config, pipeline, symbols)
    trade_from = None
    replayed = None
    if not vendor:
        assert panel is not None
        trade_from = trade_start(config, panel)
        if mode == "live":  # a recorded feed's live run replays past bars
            replayed = [t for t in panel.datetimes() if trade_from is None or t >= trade_from]
    warn_model_bar(pipeline, bar, symbols, replayed)
    names = feature_names(config, pipeline)
    warmup: Callable[[datetime | None], AsyncIterator[CrossSection]] | None
    if vendor:
        broker = live_broker(_simulated(config, symbols, portfolio), config, symbols)
        needed = warmup_needed(pipeline, names, make_catalog(config))
        swaps, warmup = vendor_swaps(config, symbols, broker, names, needed)
    else:
        assert panel is not None
        swaps = choose_swaps(config, mode, panel, portfolio, names)
        warn_if_clipped(config, panel)
        if replayed is not None:
            warn_replay_in_sample(pipeline, replayed)
        warmup = recorded_warmup(panel, swaps.feed, trade_from) if mode == "live" else None
    run = RunInfo(
        run_id=run_id,
        mode=mode,
        started_at=datetime.now(UTC),
        config_json=stored_config_json(config, mode, bar, _split_events(mode, panel), data_ppy),
        symbols=symbols,
        initial_capital=config.run.initial_capital,
    )
    lg = config.log
    if vendor:
        # A stale-data gate counts the calendar's bars, so a bar the feed never delivered
        # still ages a symbol's data.
        for risk in pipeline.risks:
            use_calendar = getattr(risk, "use_calendar", None)
            exchange = getattr(swaps.clock, "exchange", None)
            if use_calendar is not None and exchange is not None:
                use_calendar(exchange)
    engine = Engine(
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
        # Live: the audit lines of a bar are written before its checkpoint can commit, so a
        # crash never leaves the store ahead of the audit (see AuditLog.truncate_after).
        audit=AuditLog(
            lg.audit_dir,
            run_id,
            lg.audit_max_bytes,
            lg.audit_backups,
            flush_interval_s=0.0 if mode == "live" else 1.0,
            # A replay's audit lines are made in the store's writer process when it has one:
            # one process beside the engine, not two (ChildWriter.share).
            share_writer=getattr(store, "writer_process", None),
            # Bounds the folder's replay logs at a replay's start (live: never called).
            keep_runs=lg.audit_keep_runs,
        ),
        curve_maxlen=None if mode == "backtest" else 100_000,
        publish_interval_s=config.cache.publish_interval_s,
        cache_ttl_s=config.cache.expiry_s,
        on_bar=hooks.on_bar,
        before_stop=hooks.before_stop,
        after_last_bar=hooks.after_last_bar,
        record_bars=mode == "live",
        history_bars=config.features.history_bars,
        trade_from=trade_from,
        warmup=warmup,
        live_metrics=mode == "live",
        durable=mode == "live",
        reconcile_interval_s=config.live.reconcile_interval_s,
        reconcile_confirm_s=config.live.reconcile_confirm_s,
        retry_attempts=config.orders.retry_attempts if mode == "live" else 0,
        retry_delay_s=config.orders.retry_delay_s,
        long_only=not config.broker.allow_short,
        slow_plugin_s=config.log.slow_plugin_s,
        publisher=_publisher(config, run_id) if mode == "live" else None,
    )
    if mode == "live":
        engine.splits_ahead = _splits_ahead(config, engine)
    if mode != "live":
        engine.lock = _run_lock(config, run_id)
    else:
        engine.lock = _instance_lock(config, engine)

        def run_lock_lost(reason: str) -> None:
            log.error("run.stopping", reason=f"run lock lost: {reason}")
            engine.request_stop()

        # Taken before the store; watched as the instance lock is (a database restart
        # ends its session, and with it the lock).
        engine.extra_parts.append(_run_lock(config, run_id, on_lost=run_lock_lost))
        _alerting(config, engine)
        # Every live bar's inputs and decisions, for `tradingd replay-check`.
        engine.on_decision = lambda t, source, record: store.record_decision(  # type: ignore[attr-defined]
            run_id, t, source, record
        )
    engine.data_bar = bar  # type: ignore[attr-defined]  # the summary's annual figures
    engine.data_ppy = data_ppy  # type: ignore[attr-defined]  # and of off-session daily bars
    return engine


def _split_events(mode: str, panel: Panel | None) -> dict[str, list[tuple[datetime, float]]]:
    """A replay's split events (`backtest.split_events`), stored with its configuration:
    the store holds no bars of a replay to read them from. None live: its bars hold them."""
    if mode == "live" or panel is None:
        return {}
    from .backtest import split_events

    return split_events(panel)


def _run_lock(config: Config, run_id: str, on_lost: Callable[[str], None] | None = None) -> Any:
    """One engine of a run id at a time per store and per audit folder. A replay starts by
    deleting its run id's rows and audit log (begin_run), so a second one started meanwhile
    would erase the first's record and then interleave its records with it (a rerun in
    another terminal, a sweep script that fixed run.run_id); a live run continues its run
    id's record, which a replay started at the same moment could erase between its check
    and its delete (begin_run refuses a live run's record it sees).

    The lock files (one empty file per run id, never unlinked: see instance_lock) live
    beside what already grows by one entry per run id: the audit folder (beside each run's
    audit log), and for a SQLite file `<db>.locks/` (the database keeps each run's rows);
    PostgreSQL takes an advisory lock. A memory store shares nothing: replays with audit
    folders of their own (a sweep's points, walk-forward folds) never meet, and their
    temporary folders take the files with them.

    `on_lost` (a live run, which holds the lock for months): its PostgreSQL lock is watched
    and taken again when its session ends (`RunLock`); `on_lost` is called if another
    process has it by then."""
    from .instance_lock import MEMORY
    from .storage.factory import sqlite_path

    audit_dir = Path(config.log.audit_dir).expanduser()
    url = config.storage.url.strip()
    # (what it guards, store URL, lock folder, the name it locks)
    locks: list[tuple[str, str, Path | None, str]] = []
    if url.lower().startswith("sqlite:///"):
        db = sqlite_path(url)
        if db != MEMORY:
            path = Path(db).expanduser().resolve()
            locks.append((f"the store {path}", url, path.with_name(f"{path.name}.locks"), run_id))
    else:
        locks.append(("the store", url, None, run_id))
    # By the audit file's name: two run ids can share one ("a+b" and "a_b").
    log_name = audit_path(audit_dir, run_id).name
    locks.append((f"the audit folder {audit_dir}", f"sqlite:///{MEMORY}", audit_dir, log_name))
    return RunLock(run_id, bool(config.run.run_id), locks, on_lost=on_lost)


class RunLock:
    """The engine's part that holds `_run_lock`'s locks for the run. A replay's engine
    releases it after everything else (the audit log's last lines included).

    With `on_lost` (a live daemon), each PostgreSQL lock is watched as the instance lock is
    (`InstanceLockService.watch`): the lock lives as long as its session, and a database
    restart ended it while the daemon ran on without it, so `tradingd reset-halt` (which
    meets a running daemon by this lock only) rewrote the checkpoint behind its back, and a
    second daemon of the run under another broker account was no longer refused by it.
    The session's end is noticed at once and the lock taken again; another process holding
    it by then calls `on_lost` (the daemon stops). A lock file cannot end while it is open:
    not watched."""

    def __init__(
        self,
        run_id: str,
        fixed_id: bool,
        locks: list[tuple[str, str, Path | None, str]],
        refusal: Callable[[str, dict[str, Any]], str] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.fixed_id = fixed_id  # run.run_id was set, not derived from the config
        self.locks = locks  # (what it guards, store URL, lock folder, the name it locks)
        self.held: list[Any] = []
        # The refusal's text (what it guards, the holder), for a user other than an engine.
        self._refuse = refusal or self._refusal
        self.on_lost = on_lost
        self.watchers: list[Any] = []  # InstanceLockService per watched lock

    async def start(self) -> None:
        from .instance_lock import (
            MEMORY,
            AnotherDaemonRunning,
            InstanceLockService,
            PostgresInstanceLock,
            acquire_instance_lock,
        )

        try:
            for what, url, lock_dir, name in self.locks:
                # The audit folder's lock is a file lock under the memory URL: logged as
                # the folder it guards, not as a store ":memory:".
                shown = str(lock_dir) if url == f"sqlite:///{MEMORY}" and lock_dir else None
                try:
                    lock = await acquire_instance_lock(
                        url, f"replay:{name}", lock_dir=lock_dir, shown=shown
                    )
                except AnotherDaemonRunning as exc:
                    # AnotherDaemonRunning, not a plain ConfigError: `tradingd run` exits 2
                    # on it (the holder may be ending), which systemd restarts; a
                    # ConfigError exits 78, which it does not.
                    raise AnotherDaemonRunning(
                        self._refuse(what, exc.holder), holder=exc.holder
                    ) from None
                self.held.append(lock)
                if self.on_lost is not None and isinstance(lock, PostgresInstanceLock):
                    watcher = InstanceLockService(url, f"replay:{name}", on_lost=self.on_lost)
                    watcher.watch(lock)
                    self.watchers.append(watcher)
        except BaseException:
            await self.stop()
            raise

    def _refusal(self, what: str, holder: dict[str, Any]) -> str:
        from .instance_lock import holder_text

        advice = (
            "set run.run_id to another name for this run"
            if self.fixed_id
            else "the same configuration derives the same run id: set run.run_id to a name of "
            "its own for this run"
        )
        return (
            f"run {self.run_id!r} is in use by {holder_text(holder)} with {what}: a "
            "replay starts by deleting its run id's records and a live run continues them, "
            f"so the two would erase and mix each other's; wait for it to end, or {advice}"
        )

    async def stop(self) -> None:
        watchers, self.watchers = self.watchers, []
        for watcher in watchers:
            await watcher.stop_watching()
        held, self.held = self.held, []
        for lock in reversed(held):
            await lock.release()


def _alerting(config: Config, engine: Engine) -> None:
    """Alerts of the live daemon (tradingd.alert_rules decides, tradingd.alerts delivers to
    the configured webhooks; without targets they are only logged)."""
    from .alert_rules import AlertRules, AlertTicker
    from .alerts import Alerter

    alerter = Alerter(config.alerts, run=engine.run.run_id)
    engine.alerter = alerter  # type: ignore[attr-defined]
    engine.extra_parts.append(alerter)
    zone = session_zone(config, config.live.bar)  # None: daily bars, dated by their label
    rules = AlertRules(
        alerter,
        engine,
        timezone=config.data.timezone if zone is None else zone.key,
        daily_bars=zone is None,
        evening_start=session_evening_start(config, config.live.bar),
    )
    engine.after_bar.append(rules.after_bar)
    engine.extra_parts.append(AlertTicker(rules, alerter))


def _publisher(config: Config, run_id: str) -> Any:
    """Bars, signals, orders and fills on Redis channels `tradingd:<run>:*` for other
    processes; none without a Redis cache."""
    if not config.cache.url or config.cache.url.strip() == "memory://":
        return None
    from .publisher import open_publisher

    return open_publisher(config.cache.url, run_id)


def _instance_lock(config: Config, engine: Engine) -> Any:
    """One daemon per store and broker account: the Alpaca account (by key id and normalised
    endpoint, hashed; held machine-wide too, whatever the store) or, for the simulated
    broker, the run. Losing the lock stops the engine."""
    from .instance_lock import InstanceLockService, broker_account

    key_id = getattr(engine.broker, "_key_id", None)
    if key_id:
        account = broker_account("alpaca", key_id, config.broker.alpaca.base_url)
    else:
        account = f"simulated:{engine.run.run_id}"

    def lost(reason: str) -> None:
        log.error("run.stopping", reason=f"instance lock lost: {reason}")
        engine.request_stop()

    return InstanceLockService(
        config.storage.url,
        account,
        on_lost=lost,
        # A database that is down at start is waited for, as the store waits for it.
        unreachable_wait_s=config.storage.start_retry_s,
        machine_wide=bool(key_id),
    )


def session_zone(config: Config, bar: str = "1d") -> ZoneInfo | None:
    """Where a session's bars are several (`bar` intraday: a live run's, or a replay of one),
    the time zone of live.calendar, whose sessions the live clock releases bars by
    (`LiveClock.session_day`), as the alert rules' days: the day's loss then counts from the
    previous session's last close, not the previous bar's. None: every bar is a session.

    Not data.timezone, which only reads the data's naive timestamps: with it an XTKS run's
    day restarted at New York midnight (13:00 in Tokyo, mid-session) and its daily loss
    limit never tripped. Where the two differ, one line says which counts what."""
    if bar == "1d":
        return None
    from .clock.calendar import calendar_zone

    zone = calendar_zone(config.live.calendar)
    if zone.key != config.data.timezone:
        log.info(
            "run.session_zone",
            calendar=config.live.calendar,
            session_zone=zone.key,
            data_timezone=config.data.timezone,
            rule="a session's day (the daily loss, daily summaries) is counted in "
            "live.calendar's time zone; data.timezone only reads naive timestamps of the data",
        )
    return zone


def session_evening_start(config: Config, bar: str = "1d") -> wall_time | None:
    """With `session_zone`: where live.calendar's sessions open the evening before their
    date (CMES: 17:00 Chicago), that local time, from which a bar counts in the next day's
    session (`Portfolio`'s day); None for daily bars and other calendars."""
    if bar == "1d":
        return None
    from .clock.calendar import evening_session_start

    return evening_session_start(config.live.calendar)


async def import_bars(config: Config, chunk: int = 250) -> int:
    """Write the configured data source's bars into the store (idempotent upserts)."""
    panel = load_data(config)
    store = open_store(
        config.storage.url,
        batch_size=config.storage.batch_size,
        spool=False,
        command_timeout_s=max(config.storage.command_timeout_s, REPLAY_COMMAND_TIMEOUT_S),
    )
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
    log.info(
        "bars.imported",
        bars=panel.n_bars,
        symbols=len(panel.symbols),
        url=mask_url(config.storage.url),
    )
    return panel.n_bars


class EngineControls:
    """`POST /pause`, `/resume`, `/flatten` (token-protected by the health server): pause
    stops new orders from the next bar on (open orders stay with the broker); resume trades
    again; flatten plans every target at zero on the next bar, then stays paused until
    resumed, so a flattened book is not rebuilt behind the operator's back. Each is in the
    run's stored checkpoint when it answers, a new run's first bar or not (a restart keeps it);
    one made before the start has read the run's record is stored once it has, or at a stop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _answer(self, action: str, before: str) -> dict[str, Any]:
        after = self.engine.trading_state
        log.warning("control." + action, before=before, after=after)
        return {"action": action, "before": before, "state": after}

    async def pause(self) -> dict[str, Any]:
        before = self.engine.trading_state
        # A pause while flattening lets the flattening finish (it pauses after). Paused
        # already, it is stored again: the operator may be re-sending one whose store
        # failed (503), which lived in memory only.
        state = "flattening" if before == "flattening" else "paused"
        await self.engine.set_trading_state(state)
        return self._answer("pause", before)

    async def resume(self) -> dict[str, Any]:
        before = self.engine.trading_state
        await self.engine.set_trading_state("active")
        return self._answer("resume", before)

    async def flatten(self) -> dict[str, Any]:
        before = self.engine.trading_state
        await self.engine.set_trading_state("flattening")
        return self._answer("flatten", before)

    async def reset_halt(self) -> dict[str, Any]:
        """The deliberate reset of every halted kill switch (risk plugins with `halted` and
        `reset()`), in the run's stored checkpoint when it answers, as pause and resume are:
        left to the next bar's checkpoint, a restart before that bar halted the run again.
        Nothing halted, it is stored again all the same: the operator may be re-sending one
        whose store failed (503), which lived in memory only."""
        run_id = self.engine.run.run_id
        stopped = EngineStoppedError(
            f"the engine of run {run_id} has stopped: no kill switch was reset; use "
            "`tradingd reset-halt` while no daemon runs, or send it again once the daemon "
            "runs"
        )
        if self.engine.controls_closed:
            raise stopped
        if not self.engine.trading_started:
            # The resumed checkpoint's kill switches would overwrite a reset made now.
            raise ControlRefusedError(
                f"the engine of run {run_id} is starting: no kill switch was reset; send it "
                "again once it trades (GET /ready answers 200)"
            )
        from .core.errors import ControlNotStoredError

        answer: dict[str, Any] = {}

        def reset() -> None:
            answer.update(reset_halts(self.engine.pipeline.risks))

        try:
            await self.engine.change_plugins(reset, stopped)
        except ControlNotStoredError as exc:
            # Said as the reset, and what a restart now would do (503, "stored": false, as
            # for pause).
            cause = exc.__cause__ or exc
            raise ControlNotStoredError(
                exc.state,
                cause,
                what=f"the kill switch reset ({', '.join(answer['reset']) or 'none halted now'})",
                then="a restart now would halt the run again: send POST /reset-halt again once "
                "the store works",
            ) from cause
        return answer

    async def adopt(self, body: Any) -> dict[str, Any]:
        """`POST /adopt` {"symbols": [...], "as": "trade"|"split"}: the broker's quantity
        taken into the book in symbols reconciliation blocked, checked now, kept in the
        run's checkpoint and applied at the next bar (engine/adopt.py); ControlInvalidError
        (4xx, naming each symbol and why) for one it refuses: nothing is adopted then."""
        from .engine.adopt import ask

        return await ask(self.engine, body)


def reset_halts(risks: Any) -> dict[str, Any]:
    reset = []
    for key, plugin in instance_keys(risks):
        if getattr(plugin, "halted", False) is True and callable(getattr(plugin, "reset", None)):
            plugin.reset()
            reset.append(key)
    log.warning("control.reset_halt", reset=reset)
    return {"action": "reset-halt", "reset": reset}


def health_inputs(
    engine: Engine,
) -> tuple[list[Any], Callable[[], dict[str, Any]], EngineControls]:
    """What the health server reads: checks, a status source, controls (kept state only; see
    `tradingd.health`)."""
    from .health import Check, CheckResult, status_check

    alerter = getattr(engine, "alerter", None)

    def next_bar() -> tuple[datetime | None, bool | None]:
        # Read at each call: a test or the daemon may put the live clock in after this.
        release = getattr(engine.clock, "next_release_at", None)
        market_open = getattr(engine.clock, "market_open", None)
        return (
            release.astimezone(UTC) if isinstance(release, datetime) else None,
            market_open() if callable(market_open) else None,
        )

    def described(o: Any) -> dict[str, Any]:
        return {
            "client_order_id": o.client_order_id,
            "symbol": o.symbol,
            "side": str(o.side),
            "type": str(o.type),
            "quantity": o.quantity,
            "filled_quantity": o.filled_quantity,
            "status": str(o.status),
        }

    def status() -> dict[str, Any]:
        p = engine.portfolio
        release, market_open = next_bar()
        own, foreign = engine.open_orders_by_owner()
        return {
            "run_id": engine.run.run_id,
            "mode": engine.run.mode,
            "equity": p.equity,
            "cash": p.cash,
            "drawdown": 1.0 - p.equity / p.peak_equity if p.peak_equity > 0 else 0.0,
            "positions": {
                s: {"quantity": float(q), "avg_price": float(a)}
                for s, q, a in zip(engine.symbols, p.quantity, p.avg_price, strict=True)
                if q != 0
            },
            # This run's; the orders on the account it did not place (by hand, another
            # run's: followed by the broker, never booked as this run's) apart.
            "open_orders": [described(o) for o in own],
            "foreign_open_orders": [described(o) for o in foreign],
            "last_bar_time": engine.last_bar_time,
            "next_bar_release": release,
            "market_open": market_open,
            "bars": engine.bars_processed,
            "bars_never_traded": engine.bars_never_traded,
            # The broker outage the bars see now (since, last failing bar, bars and orders
            # missed, the last error; broker.unavailable ... broker.recovered), or None.
            "broker_outage": engine.broker_outage.status(),
            # The data source's outage the bars see now (since, last unavailable bar, bars,
            # given_up, lost, recovered, the last error; bar.unavailable ... feed.recovered),
            # or None.
            "feed_outage": engine.feed_outage.status(),
            "model_version": engine.signal_source,
            "trading_state": engine.trading_state,
            "resumed_from": engine.resumed_from,
            "catching_up_to": engine.catching_up_to,
            "alerts": alerter.status() if alerter is not None else None,
            # The splits held for (symbol, ratio, ex_date) and the last lookup's error; None
            # when splits are not looked up (a replay, the simulated broker, no keys).
            "splits": engine.splits_ahead.status() if engine.splits_ahead is not None else None,
        }

    checks: list[Any] = []
    clock = engine.clock
    from .clock.live import LiveClock  # APScheduler: not for a backtest

    if isinstance(clock, LiveClock):

        def last_bar() -> CheckResult:
            expected = clock.expected_latest()
            last = engine.last_bar_time
            data = {"last": last, "expected": expected}
            if expected is None or (last is not None and last >= expected):
                return CheckResult(True, f"last bar {last}", data)
            in_hand = engine.bar_in_progress
            if in_hand is not None and in_hand >= expected:
                # Released and being fetched or stepped: a slow vendor's fetch (minutes at
                # Alpha Vantage's rate) failed /ready for part of every bar.
                return CheckResult(
                    True, f"bar {in_hand} released: being fetched and stepped (last {last})", data
                )
            failing = engine.warmup_failing  # (None once the warm-up is over)
            if failing is not None:
                # Not the warm-up's usual lag: its source fails (retried with backoff).
                return CheckResult(
                    False,
                    f"warming up: the source failed {failing[0]} time(s) and is retried: "
                    f"{failing[1]}",
                    data,
                )
            if engine.warming_up:
                # The history before the first live bar, stepped at once: behind by design,
                # not a feed that is late (which "older than expected" read as).
                stepped = (
                    "no history bar stepped yet"
                    if last is None
                    else f"{engine.warmup_bars} history bars stepped, the last {last}"
                )
                return CheckResult(
                    False,
                    f"warming up: {stepped}; trading starts at the first live bar "
                    f"(expected {expected})",
                    data,
                    expected=True,
                )
            if last is None:
                return CheckResult(False, f"no bar yet: the first was expected at {expected}", data)
            return CheckResult(False, f"last bar {last} older than expected {expected}", data)

        checks.append(Check("last_bar", last_bar))
        # The exchange calendar's end (exchange-calendars builds some to a date only): not
        # ready a month before the daemon would stop at it, while an upgrade can still come.
        checks.append(status_check("calendar", clock.calendar_status))
    feed_status = getattr(engine.feed, "status", None)
    if callable(feed_status):
        checks.append(status_check("feed", feed_status))
    broker_status = getattr(engine.broker, "status", None)
    if callable(broker_status):

        def broker() -> CheckResult:
            st = dict(broker_status())
            ok = bool(st.get("started", True) and st.get("connected", True))
            detail = f"{st.get('broker', 'broker')}: " + (
                f"connected, updates by {st.get('mode', '?')}" if ok else "not connected"
            )
            if not ok and st.get("last_error"):
                # Why, where the broker knows (a 429, a timeout): "not connected" alone sent
                # the operator to the network while Alpaca was refusing the calls.
                detail += f" (last error at {st.get('last_error_at')}: {st['last_error']})"
            if st.get("keys_refused"):
                # Revoked or wrong keys mid-run: no order is sent until they are taken again.
                ok, detail = (
                    False,
                    (
                        f"{st.get('broker', 'broker')}: keys refused since "
                        f"{st.get('keys_refused_at')} ({st['keys_refused']}); no order is sent"
                    ),
                )
            if st.get("blocked"):
                ok, detail = False, f"{st.get('broker', 'broker')}: may not trade ({st['blocked']})"
            untradable = st.get("untradable")
            if untradable and isinstance(untradable, dict):
                # Symbols held because the broker refuses their orders as not tradable: a
                # hold as reconciliation's, the operator's to look at.
                shown = "; ".join(f"{s} ({why})" for s, why in sorted(untradable.items())[:5])
                more = f" and {len(untradable) - 5} more" if len(untradable) > 5 else ""
                ok = False
                detail += f"; no order sent in symbols it refuses as not tradable: {shown}{more}"
            return CheckResult(ok, detail, st)

        checks.append(Check("broker", broker))

    def cache() -> CheckResult:
        # The cache is optional (the engine goes on without it), but an operator who
        # configured Redis wants to know it is gone.
        cache_status = getattr(engine.cache, "status", None)
        if callable(cache_status):
            st = dict(cache_status())
            return CheckResult(bool(st.get("ok", True)), str(st.get("detail", "cache")), st)
        if engine.cache_error is None:
            return CheckResult(True, "cache ok")
        return CheckResult(False, f"cache unavailable: {engine.cache_error}")

    if callable(getattr(engine.broker, "positions", None)):

        def reconciliation() -> CheckResult:
            data = {
                "blocked": dict(engine.reconcile_blocked),
                "last": engine.last_reconciled_at,
                "error": engine.reconcile_error,
            }
            if engine.reconcile_blocked:
                syms = ", ".join(sorted(engine.reconcile_blocked))
                return CheckResult(False, f"positions differ from the broker's: {syms}", data)
            last, error = data["last"], data["error"]
            if last is None:
                # Never compared (the first round runs after the warm-up; one the broker did
                # not answer, or that fills arriving put off, is tried again every
                # live.reconcile_interval_s): it said "book agrees with the broker (at None)"
                # with the broker never reached.
                if error is None and not engine.trading_started:
                    return CheckResult(
                        False,
                        "not reconciled yet: the book is compared with "
                        "the broker's positions once the warm-up is done",
                        data,
                    )
                if error is None:
                    # Past the warm-up: the round runs, or it was put off. Said as the warm-up
                    # still running, it misled an operator whose warm-up was long done.
                    return CheckResult(
                        False,
                        "not reconciled yet: the first comparison with the broker's positions "
                        "has not completed (it is running, or fills arrived while the "
                        "positions were read and it is tried again every "
                        f"{engine.reconcile_interval_s:g} s)",
                        data,
                    )
                return CheckResult(
                    False,
                    f"not reconciled yet: the broker's positions could not be read ({error}); "
                    f"tried again every {engine.reconcile_interval_s:g} s",
                    data,
                )
            if error is not None:
                return CheckResult(
                    True,
                    f"book agreed with the broker at {last}; the last check failed: {error}",
                    data,
                )
            return CheckResult(True, f"book agrees with the broker (at {last})", data)

        checks.append(Check("reconciliation", reconciliation))
    for part, name in ((engine.publisher, "publisher"), (engine.lock, "instance_lock")):
        part_status = getattr(part, "status", None)
        if callable(part_status):
            checks.append(status_check(name, part_status))
    for key, risk in instance_keys(engine.pipeline.risks):  # `name#2`: a second instance
        risk_status = getattr(risk, "status", None)
        if callable(risk_status):  # e.g. stale_data: symbols blocked for stale data
            checks.append(status_check(key, risk_status))

    def models() -> CheckResult:
        # Model cards were verified at start-up (a bad card stops it); report what is loaded,
        # and how often its forecasts have got the next bar's direction right since the
        # start (the specification's "ML model accuracy"; reported, not a readiness test).
        loaded: dict[str, Any] = {}
        said = []
        unserved = []  # a published model that failed to load: the old one serves
        for plugin, _ in engine.pipeline.signals:
            version = getattr(plugin, "version", None)
            if version is None:
                continue
            entry = {"version": version, "path": getattr(plugin, "model_path", None)}
            plugin_status = getattr(plugin, "status", None)
            if callable(plugin_status):
                st = plugin_status()
                if not st.get("ok", True):
                    entry["not_served"] = st.get("not_served")
                    unserved.append(f"{plugin.name}: {st.get('detail')}")
            accuracy = getattr(plugin, "accuracy", None)
            if callable(accuracy):
                entry["live"] = live = accuracy()
                rate = live.get("directional_accuracy")
                if rate is not None:
                    said.append(
                        f"{plugin.name} direction right {rate:.1%} of {live['forecasts']} "
                        f"forecasts over {live['bars']} bars ({_card_rate(live)})"
                    )
            loaded[plugin.name] = entry
        detail = "; ".join([*unserved, f"{len(loaded)} model(s) loaded", *said])
        return CheckResult(not unserved, detail, loaded)

    def database() -> CheckResult:
        # A PostgreSQL store reports a database outage (writes spooled, degraded); SQLite
        # writes to a local file and has nothing to report.
        store_status = getattr(engine.store, "status", None)
        if callable(store_status):
            st = dict(store_status())
            return CheckResult(bool(st.get("ok", True)), str(st.get("detail", "store")), st)
        return CheckResult(True, f"store {type(engine.store).__name__} writing")

    checks += [Check("cache", cache), Check("model", models), Check("database", database)]
    return checks, status, EngineControls(engine)
