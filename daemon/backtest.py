"""`tradingd backtest`: replay stored history through the engine and write the run's record."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import structlog
from tqdm import tqdm

from .analysis.metrics import summarize
from .analysis.record_names import WALKFORWARD_FILE, WALKFORWARD_FILES
from .analysis.splits import restate_for_splits
from .app import (
    FITTED_AFTER_RULE,
    build_engine,
    data_fingerprint_of,
    fitted_after,
    fitted_span,
    load_pinned,
    model_card,
    pipeline_run_inputs,
    run_defaults,
    session_bars_only,
)
from .config import Config
from .core import flock
from .core.atomic_file import TEMP_TOKEN, is_temp, temp_name
from .core.errors import TradingdError
from .core.types import Fill, Side
from .engine.engine import Engine, EngineResult
from .environment import environment
from .feeds.fingerprint import data_digest
from .feeds.panel import Panel
from .preflight import check_record_folder
from .storage.records import Records

log = structlog.get_logger(__name__)


class StopRequest:
    """A stop asked of a running backtest from outside it (the command's SIGINT and SIGTERM
    handlers). Set from a plain signal handler: the replay does not yield to the event loop
    between bars, so a loop's signal handler would only run after the last one. It only
    sets flags, which is safe at any bytecode boundary. Once the replay is over (`over`),
    a signal is the handler's to deal with (an interruption, as in any other command)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.over = False
        self._engine: Engine | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self._engine is not None:
            self._engine.request_stop()

    def attach(self, engine: Engine) -> None:
        """From here on a request stops `engine` after its current bar (at once if one came
        before)."""
        self._engine = engine
        if self.reason is not None:
            engine.request_stop()

    def detach(self) -> None:
        """The replay is over: a request can stop nothing any more."""
        self._engine = None
        self.over = True

    def what_it_stops(self) -> str:
        """What a request made now does, for the line saying it was taken: before an engine
        is attached (the data loading, the engine being built: seconds on a cold load) no
        bar is under way, and that step finishes before the stop; after, the bar under way
        does. "after the bar under way" was said during the load too."""
        if self._engine is None:
            return (
                "the backtest stops once the step under way (loading the data, building the "
                "engine) ends, before its first bar"
            )
        return "the backtest stops after the bar under way (when its plugins' calls return)"


class BacktestStopped(Exception):
    """A backtest stopped before its last bar: it reports nothing (a partial replay's
    summary would read like the whole one's). `signal`: the signal's name, or None when the
    engine stopped on its own (its instance lock lost: see the log lines before)."""

    def __init__(
        self,
        signal: str | None,
        run_id: str | None,
        bars: int,
        of: int,
        through: datetime | None,
        warmup: int = 0,
    ) -> None:
        self.signal, self.run_id, self.bars, self.of, self.through, self.warmup = (
            signal,
            run_id,
            bars,
            of,
            through,
            warmup,
        )
        by = f"by {signal}" if signal else "by the engine (see the log lines before)"
        complete = through is not None and bars == of
        if complete:
            # The signal came after the last bar, before the report (the run ended whole).
            where, kept = "after its last bar", f"; the store holds run {run_id} whole"
        elif through is not None:
            # The bars count the warm-up before run.start, which the summary's `bars` of a
            # finished run does not: both said, or the two read as different runs.
            split = f": {warmup:,} warm-up, {bars - warmup:,} traded" if warmup else ""
            where = f"after {bars:,} of {of:,} bars{split} (through {through.isoformat()})"
            kept = f"; the store keeps run {run_id}'s rows up to there, marked stopped_early"
        else:
            where, kept = "before its first bar", ""
        super().__init__(f"backtest stopped {by} {where}: no report written{kept}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a sweep's or walk-forward's worker process too: rebuilt from its fields.
        return (
            type(self),
            (self.signal, self.run_id, self.bars, self.of, self.through, self.warmup),
        )


@dataclass(repr=False)
class BacktestOutcome:
    run_id: str
    summary: dict[str, Any]
    output_dir: Path
    result: EngineResult
    # Every order's final state and every fill, as `Store.fetch` reads them: a Sequence of
    # dicts (`Records` when made from the store's records: a row's dict is made when read).
    orders: Sequence[dict[str, Any]]
    fills: Sequence[dict[str, Any]]
    # The run's split events (symbol: [(time, coefficient)], oldest first): the fills are in
    # the shares of their day, and an analysis restates them with these (`split_events`).
    splits: Mapping[str, list[tuple[datetime, float]]] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        # Short: `asyncio.run(run_backtest(...))` formats its task, result included, when it
        # restores the SIGINT handler (Python 3.11's signal module builds an error message
        # from the handler's repr): the generated repr of every order, fill and bar of the
        # run took 0.17 s at 100 symbols, after the run.
        return (
            f"BacktestOutcome(run_id={self.run_id!r}, output_dir={str(self.output_dir)!r}, "
            f"bars={self.result.bars}, orders={len(self.orders)}, fills={len(self.fills)})"
        )


async def run_backtest(
    config: Config,
    *,
    panel: Panel | None = None,
    output_dir: str | Path | None = None,
    progress: bool | str = False,
    stop: StopRequest | None = None,
) -> BacktestOutcome:
    """`stop`: a request from outside (signals) ends the replay after its current bar and
    raises BacktestStopped; one made while data is loaded or the engine built lets that step
    finish, then nothing more starts. `progress`: True, a bar on a terminal; "log", a
    `backtest.progress` line at every tenth of the bars (a run whose stderr goes to a file:
    an 11-minute S&P 500 replay said nothing until its end). A `panel` passed in replays
    as `load_data`'s would: intraday bars outside live.calendar's sessions are dropped
    (`session_bars_only`), so its bar count, fills and split events are those of the bars
    stepped."""
    # Where the record goes fits its files, checked before the data is loaded or the replay
    # run (as `tradingd backtest` checks it): a path too long failed only after the replay.
    check_record_folder(config, output_dir, "output_dir")
    if output_dir is not None:
        # Before the data is loaded: a folder of the user's files (or a walk-forward's) is
        # refused at once, not after the replay.
        check_output_folder(
            Path(output_dir), "backtest", "--output", beside=own_names(config, Path(output_dir))
        )
    if panel is None:
        # The run's own copy holds the data's fingerprint taken around the load: the run id
        # and the record name the bytes traded, whatever the file holds later.
        config = copy.copy(config)
        panel = load_pinned(config)
    else:
        panel = session_bars_only(config, panel)
    if stop is not None and stop.reason is not None:
        raise BacktestStopped(stop.reason, None, 0, len(panel.times), None)
    bar = tqdm(
        total=len(panel.times),
        unit="bar",
        disable=progress is not True,
        file=sys.stderr,
        mininterval=0.5,
    )
    total = len(panel.times)
    tenth = max(1, total // 10)
    started = time.monotonic()

    def on_bar(seen: int, t: datetime) -> None:
        # `seen`: the bars stepped so far, this one included (the engine's count, not an
        # index: taken for one, every line named the bar before the one it counted).
        bar.update(1)
        if progress == "log" and (seen % tenth == 0 or seen == total):
            log.info(
                "backtest.progress",
                bars=seen,
                of=total,
                percent=round(100 * seen / total),
                bar_time=t,
                elapsed_s=round(time.monotonic() - started, 1),
            )

    rows: dict[str, Sequence[dict[str, Any]]] = {}

    async def collect(engine: Engine) -> None:
        # The report's orders and fills: made from the store's records while the writer
        # commits the last batch (or, where the store cannot, read back after it).
        for table in ("orders", "fills"):
            rows[table] = await engine.store.recorded(table, engine.run.run_id)

    engine = build_engine(config, "backtest", panel=panel, on_bar=on_bar, after_last_bar=collect)
    engine.store.keep_records()
    out = Path(output_dir or Path(config.run.output_dir) / engine.run.run_id)
    # Before the store drops the run id's earlier record (`remove_earlier_record` then
    # found the lock failing with the store's rows gone and the folder's files kept).
    try:
        label = "--output" if output_dir else "the record folder"
        check_output_folder(out, "backtest", label, beside=own_names(config, out))
        check_record_lock(out)
    except BaseException:
        bar.close()
        engine.close_held()  # built, never run: its writer process
        raise
    data = data_record(config)
    engine.after_begin.append(lambda: remove_earlier_record(out, engine.run.run_id, data))
    if stop is not None:
        if stop.reason is not None:
            bar.close()
            engine.close_held()  # built, never run: its writer process
            raise BacktestStopped(stop.reason, None, 0, len(panel.times), None)
        stop.attach(engine)
    try:
        result = await engine.run_until_done()
    finally:
        bar.close()
        if stop is not None:
            stop.detach()
    signal = stop.reason if stop is not None else None
    if result.stopped_early or signal is not None:
        # (A signal can also arrive after the last bar, while the run's end is written: the
        # run is whole then, but the command was asked to stop, and reports nothing.)
        seen = result.warmup_bars + result.bars
        stopped = BacktestStopped(
            signal, result.run_id, seen, len(panel.times), engine.last_bar_time, result.warmup_bars
        )
        log.warning(
            "backtest.stopped",
            run_id=result.run_id,
            signal=signal,
            bars=seen,
            of=len(panel.times),
            through=engine.last_bar_time,
            detail=str(stopped),
        )
        raise stopped
    fills = split_adjusted(_fills_of(rows.get("fills", [])), panel)
    # Intraday data: 252 sessions of bars a year (app.bar_of_data), not 252 bars.
    # Daily data with bars on days the calendar has no session: the bars a year it holds.
    ppy = run_defaults(
        config, getattr(engine, "data_bar", "1d"), getattr(engine, "data_ppy", None)
    ).get("periods_per_year", 252.0)
    metrics = summarize(
        np.asarray(result.equity, dtype=float),
        result.times,
        fills,
        initial_capital=config.run.initial_capital,
        gross_exposure=np.asarray(result.gross_exposure, dtype=float),
        periods_per_year=ppy,
    )
    summary: dict[str, Any] = {
        "run_id": result.run_id,
        "symbols": len(panel.symbols),
        **metrics,
        "warmup_bars": result.warmup_bars,
        "orders": result.orders,
        "rejections": sum(result.rejections.values()),
        "rejections_by_reason": dict(sorted(result.rejections.items())),
        "orders_expired": result.orders_expired,
        "risk_verdicts": result.verdicts,
        "risk_verdicts_by_rule": dict(sorted(result.verdicts_by_rule.items())),
        "trading_restricted_bars": sum(p["bars"] for p in result.restrictions),
        "trading_restricted": result.restrictions,
        "dividends_received": engine.portfolio.dividends_received,
        **_models(engine, result.times),
        # What the run id hashed besides the config (the ML plugin's model by content): the
        # trial count and a replay of the record read it (one identity for all three).
        "run_inputs": pipeline_run_inputs(engine.pipeline, config),
        # The data by content (`data_record`): what `tradingd compare` names "the data
        # differ" by. Here, not in config.json (the configuration as given, which loads as
        # one: an unknown key is an error) nor environment.json (the machine and the code).
        "data": data,
    }
    if result.restrictions_not_listed:
        summary["trading_restricted_not_listed"] = result.restrictions_not_listed
    if result.warnings:
        # What the run's end said of the whole run (a signal with no view at any bar): a
        # run that traded nothing for that reason says why where its numbers are read.
        summary["warnings"] = result.warnings
    # What the summary's annual figures used, and `tradingd report` annualises with unless
    # its analysis config sets analysis.periods_per_year: said for every run, so a daily
    # run's 252 (or 365 for data with weekend bars) is read, not assumed.
    summary["bar"] = getattr(engine, "data_bar", "1d")
    summary["periods_per_year"] = ppy
    splits = split_events(panel)
    write_outputs(
        out, config, result, summary, rows.get("orders", []), rows.get("fills", []), splits
    )
    _note_trial(out, config, result, summary["run_inputs"])
    return BacktestOutcome(
        result.run_id, summary, out, result, rows.get("orders", []), rows.get("fills", []), splits
    )


def _note_trial(
    out: Path, config: Config, result: EngineResult, run_inputs: Sequence[Any] = ()
) -> None:
    """The run in a trial ledger (`analysis.trials.record_trial`), for the deflated Sharpe
    ratio's count of the variants tried, which a rerun into the same folder would otherwise
    lose: a record folder under `run.output_dir` in the runs root's ledger; an --output
    folder elsewhere in a ledger inside that folder, which `count_trials` of its parent reads
    with it. (In the folder's parent, `--output /tmp/x` wrote /tmp/.trials.jsonl and every
    run later validated under /tmp counted such runs as its own; not noted at all, a sweep
    writing every variant to one --output folder counted 1 trial.) A ledger that cannot be
    written is said, not the backtest's end."""
    from .analysis.trial_ledger import TRIALS_LEDGER, plugin_code_in, record_trial

    try:
        # The code environment.json, just written, names: what the count reads back.
        plugin_code = plugin_code_in(out)
    except ValueError as exc:
        log.warning(
            "trials.plugin_code_unknown",
            error=str(exc),
            detail="the ledger line names the config without the plugins' code",
        )
        plugin_code = []
    root = Path(config.run.output_dir)
    ledger_dir = out.parent if out.parent.resolve() == root.resolve() else out
    try:
        record_trial(
            ledger_dir,
            result.run_id,
            config.to_public_dict(),
            result.equity,
            config.run.initial_capital,
            run_inputs,
            plugin_code,
        )
    except OSError as e:
        log.warning(
            "backtest.trial_not_recorded",
            file=str(ledger_dir / TRIALS_LEDGER),
            error=e.strerror or str(e),
            rule="the deflated Sharpe ratio's trial count may miss this variant once a rerun "
            "replaces its folder",
        )


def split_events(panel: Panel) -> dict[str, list[tuple[datetime, float]]]:
    """Each symbol's split events in the run's data (time, coefficient), oldest first: what
    an analysis of the run's fills needs to restate them (`split_adjusted` does it from the
    panel; a run's record folder keeps them in splits.csv)."""
    js, ks = np.nonzero((panel.split != 1.0).T)  # by symbol, then by row
    times = panel.datetimes()
    out: dict[str, list[tuple[datetime, float]]] = {}
    for j, k in zip(js.tolist(), ks.tolist(), strict=True):
        out.setdefault(panel.symbols[j], []).append((times[k], float(panel.split[k, j])))
    return out


def _bars_of(bars: Sequence[datetime], times: Sequence[datetime]) -> dict[str, Any]:
    """Which of a run's bars (`times`) a model warning counts, as summary.json records it."""
    return {
        "first": bars[0].isoformat(),
        "last": bars[-1].isoformat(),
        "bars": len(bars),
        "of": len(times),
    }


def _models(engine: Engine, times: Sequence[datetime] = ()) -> dict[str, Any]:
    """Which model a run used, by version and by the path it was loaded from, so a user can
    tell the shipped pair from a retrained one; and the traded bars that lie in the model's
    own training or validation period (`in_sample`, logged as `backtest.in_sample`; its
    last date moved on by the card's horizon), and those before the model's first training
    date (`fitted_after`, logged as `backtest.model_fitted_after`: the model was fitted on
    their future).

    Why: a backtest over dates the model was fitted or early-stopped on is in-sample and
    proves nothing, and nothing said so: `tradingd train` fits up to run.end, and a model
    that `tradingd retrain` published on recent data was taken up by a backtest of earlier
    years without a word."""
    out: dict[str, Any] = {}
    for i, (plugin, _) in enumerate(engine.pipeline.signals):
        version = getattr(plugin, "version", None)
        path = getattr(plugin, "model_path", None)
        if version is None and path is None:
            continue
        entry: dict[str, Any] = {"plugin": plugin.name, "version": version, "path": path}
        entry["signal"] = i  # its place in [[signals]], as `run_inputs` names it
        fitted = fitted_span(model_card(plugin))
        if fitted is not None:
            entry["fitted_on"] = [d.isoformat() for d in fitted]
            # The bars the model decided: from its first forecast (a plugin that says none
            # decided none; one that does not keep it, every bar). In the warm-up bars before
            # it the model had no view, so was fitted on their future to no effect.
            first = getattr(plugin, "first_forecast", times[0] if times else None)
            decided = [] if first is None else [t for t in times if t >= first]
            before = fitted_after(fitted, decided)
            if before:
                entry["fitted_after"] = _bars_of(before, times)
                log.warning(
                    "backtest.model_fitted_after",
                    plugin=plugin.name,
                    version=version,
                    fitted_on=entry["fitted_on"],
                    run=[decided[0].date().isoformat(), decided[-1].date().isoformat()],
                    bars=len(before),
                    of=len(times),
                    rule=FITTED_AFTER_RULE,
                )
            inside = [t for t in times if fitted[0] <= t.date() <= fitted[1]]
            if inside:
                entry["in_sample"] = _bars_of(inside, times)
                log.warning(
                    "backtest.in_sample",
                    plugin=plugin.name,
                    version=version,
                    fitted_on=entry["fitted_on"],
                    bars=len(inside),
                    of=len(times),
                    rule="these bars are in the model's training or validation period: its "
                    "results there are in-sample (test after the model's last date)",
                )
        out.setdefault("models", []).append(entry)
    return out


def split_adjusted(fills: list[Fill], panel: Panel) -> list[Fill]:
    """Fills restated in end-of-run shares, so that a round trip across a split (bought at
    645, sold at 95 after a 7-for-1) is scored by its real profit, not as an 85% loss
    (`run_records.restate_for_splits`, with the panel's split events)."""
    if not fills:
        return fills
    events = split_events(panel)
    if not events:
        return fills
    row = panel.time_rows()
    universe = set(panel.symbols)
    for f in fills:
        if f.time not in row or f.symbol not in universe:
            # A fill the panel has no bar or column for: not this run's, never restated.
            raise ValueError(
                f"fill {f.fill_id}: {f.symbol} at {f.time} is not in the run's data "
                f"({len(panel.symbols)} symbols, {len(row)} bars)"
            )
    return list(restate_for_splits(fills, events))


# The fills table's columns that make a Fill, in its fields' (and `_fill`'s) order.
_FILL_COLUMNS = tuple(f.name for f in dataclasses.fields(Fill))


def _fills_of(rows: Sequence[dict[str, Any]]) -> list[Fill]:
    """The fills table's rows as Fill objects, read by column (dicts read back are made
    columns first, as `_csv_rows` does)."""
    if not rows:
        return []
    table = Records.of_dicts(rows)
    return [_fill(*values) for values in zip(*map(table.column, _FILL_COLUMNS), strict=True)]


def _fill(
    fill_id: str,
    client_order_id: str,
    symbol: str,
    side: str,
    quantity: float,
    price: float,
    commission: float,
    slippage: float,
    time: datetime,
    reference_price: float,
) -> Fill:
    # Positional, and the side from a dict: Side(value) goes through EnumType.__call__, and
    # this runs for every fill of a run after it (Side(...) raises for an unknown side).
    return Fill(
        fill_id,
        client_order_id,
        symbol,
        _SIDE_OF.get(side) or Side(side),
        float(quantity),
        float(price),
        float(commission),
        float(slippage),
        time,
        float(reference_price),
    )


_SIDE_OF = {s.value: s for s in Side}


# What a run's folder holds: `write_outputs`'s files and `tradingd report`'s.
RECORD_FILES = (
    "equity.csv",
    "orders.csv",
    "fills.csv",
    "splits.csv",
    "config.json",
    "summary.json",
    "environment.json",
    "report.html",
    "report.json",
)


#: The lock file of a folder's record: `write_outputs` holds it for the whole write, so runs
#: sharing an --output folder write their records in turn (the last whole one stays).
RECORD_LOCK = ".record.lock"


def record_names() -> tuple[str, ...]:
    """Every name `write_outputs` creates in the folder, its temporary names included (at
    their longest): what the start-up check of --output probes, so that a path too long for
    them fails before the replay, not after it."""
    written = RECORD_FILES[:7]
    return (*written, RECORD_LOCK, *(temp_name(n, "9" * 10, "x" * TEMP_TOKEN) for n in written))


def remove_stale_temps(out: Path, names: Collection[str]) -> list[str]:
    """The temporary files (`core.atomic_file.temp_name` of one of `names`) a writer killed
    while writing left in `out`, removed: called under the folder's lock, where no living
    writer has one (each writes them only under it). They stayed through every later run.
    Only that pattern, only in `out`; one that cannot be removed is left, not an error."""
    try:
        entries = list(os.scandir(out))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not is_temp(entry.name, names):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    if removed:
        log.info(
            "record.temp_files_removed",
            folder=str(out),
            files=sorted(removed),
            detail="temporary files of a writer killed while writing this folder's record",
        )
    return removed


@dataclass(frozen=True)
class FolderHolds:
    """What a record's folder holds (`folder_holds`). `kind`: "empty" (no folder, or only
    the record's lock, a trial ledger and writers' temporary files), "backtest" (a
    backtest's record: its summary.json names `run_id`), "incomplete" (a backtest's record
    folder without its summary.json: one with the record's lock, which a rerun stopped
    early leaves without its record, or only record files, their environment.json
    tradingd's own, which a writer killed between its renames leaves),
    "walkforward" (it
    has walkforward.json) or "other" (anything else: no record of tradingd's). `names`:
    the entries it holds, for messages."""

    kind: str
    run_id: str | None = None
    names: tuple[str, ...] = ()

    def shown(self, limit: int = 6) -> str:
        listed = ", ".join(self.names[:limit])
        more = len(self.names) - limit
        return listed + (f" and {more} more" if more > 0 else "")


#: Names a record folder may hold that are no record's files (`folder_holds`).
_BESIDE_RECORD = frozenset({RECORD_LOCK, ".trials.jsonl"})
_WRITTEN_NAMES = frozenset({*RECORD_FILES, *WALKFORWARD_FILES})


def folder_holds(
    out: Path, *, lock_made: bool = False, beside: Collection[str] = ()
) -> FolderHolds:
    """What `out` holds, for the writers of a backtest's record and a walk-forward's results
    (`check_output_folder`): each writes only into an empty folder or one of its own kind.
    `lock_made`: the caller made the folder's lock file (it tells nothing of the folder).
    `beside`: names of the run's own that may be in the folder (its audit folder:
    `own_names`)."""
    try:
        names = sorted(os.listdir(out))
    except (FileNotFoundError, NotADirectoryError):
        return FolderHolds("empty")  # (a file in its place: the write names that)
    except OSError:
        return FolderHolds("empty")  # unreadable: the write says so
    own = tuple(
        n
        for n in names
        if n not in _BESIDE_RECORD and n not in beside and not is_temp(n, _WRITTEN_NAMES)
    )
    if not own:
        return FolderHolds("empty")
    if WALKFORWARD_FILE in own:
        return FolderHolds("walkforward", None, own)
    if "summary.json" in own:
        try:
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
        run_id = summary.get("run_id") if isinstance(summary, dict) else None
        if isinstance(run_id, str) and run_id:
            return FolderHolds("backtest", run_id, own)
        return FolderHolds("other", None, own)
    if (RECORD_LOCK in names and not lock_made) or (
        set(own) <= set(RECORD_FILES)
        # environment.json's shape, not config.json's alone: a user's config.json with
        # "run" and "data" tables (a copy kept from a record) was replaced as a record's.
        # A writer killed between its renames leaves its lock file, caught above.
        and _json_has(out / "environment.json", "packages", "source")
    ):
        # A record's folder (its writer's lock file: a rerun stopped early removed the
        # record, other files stay) or a record's files without summary.json, which
        # a writer killed between its renames leaves.
        return FolderHolds("incomplete", None, own)
    return FolderHolds("other", None, own)


def own_names(config: Config, out: Path) -> tuple[str, ...]:
    """What of the run's own may sit in its record folder besides the record: its audit
    folder when `log.audit_dir` is there (strategy_api's BacktestEngine puts it beside the
    record)."""
    audit = Path(config.log.audit_dir).expanduser()  # as the run opens it (app.py)
    try:
        within = audit.resolve().relative_to(out.resolve())
    except (OSError, ValueError):  # not under `out`
        return ()
    # At any depth ("rec/logs/audit": its first folder under `out`, which the replay
    # makes): only a folder directly in `out` was excused, and a record written with its
    # audit log one level deeper was refused after the whole replay.
    return within.parts[:1]


def _json_has(file: Path, *keys: str) -> bool:
    """Whether `file` is a JSON object with an object at each of `keys` (tradingd's
    environment.json: packages, source)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(data.get(k), dict) for k in keys)


def check_output_folder(
    out: Path, kind: str, label: str, *, lock_made: bool = False, beside: Collection[str] = ()
) -> FolderHolds:
    """`out` as the folder of a `kind` ("backtest" or "walkforward") record, or a
    TradingdError naming it, what it holds and what to do: an --output folder holding a
    user's files had them replaced without a word (config.json, equity.csv), a backtest
    into a walk-forward's folder replaced its equity.csv (and a walk-forward into a
    backtest's record its own), leaving a mix of the two. `label`: how the command names
    the folder (`--output`, `--out`). A backtest writes over a backtest's record, of any run
    id (a sweep's variants share an --output folder: README), and a walk-forward over a
    walk-forward's results; an incomplete backtest record is a backtest's to replace."""
    holds = folder_holds(out, lock_made=lock_made, beside=beside)
    ours = {
        "backtest": ("empty", "backtest", "incomplete"),
        "walkforward": ("empty", "walkforward"),
    }
    if holds.kind in ours[kind]:
        return holds
    writes = (
        "a backtest writes its record there (equity.csv, orders.csv, fills.csv, splits.csv, "
        "config.json, environment.json, summary.json), replacing files of those names"
        if kind == "backtest"
        else "a walk-forward writes its results there (walkforward.json, equity.csv, "
        "folds.csv, ...), replacing files of those names"
    )
    if holds.kind == "walkforward":
        what = "a walk-forward's results (it has walkforward.json)"
    elif holds.kind == "backtest":
        what = f"the record of backtest {holds.run_id} (its summary.json)"
    elif holds.kind == "incomplete":
        what = "a backtest's record folder without its summary.json"
    else:
        what = "files that are no tradingd record"
    option = "--output" if kind == "backtest" else "--out"
    raise TradingdError(
        f"{label} {out} holds {what} ({holds.shown()}); {writes}, so the folder is "
        f"refused and left as it is: choose an empty or new folder with {option}"
    )


@contextlib.contextmanager
def _record_locked(out: Path) -> Iterator[bool]:
    """The folder's record to this process alone until the block ends (flock on
    RECORD_LOCK: released when the file is closed, also by a process that dies). Yields
    whether the lock is held (False: a filesystem without locks, below).

    What flock's error means is `core.flock`'s. On a filesystem without locks (ENOLCK:
    some NFS and FUSE mounts) the record is written without the lock, with a warning
    (`backtest.record_unlocked`): runs sharing the folder may then mix their records, but a
    run alone there keeps its record (refused, its whole replay was lost at the end). Any
    other failure (EIO, EBADF, ...) is a TradingdError naming the lock file and the errno:
    the folder's record is not touched."""
    lock = out / RECORD_LOCK
    with lock.open("a", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as e:
            if not flock.is_unsupported(e):
                raise _record_lock_failed(lock, e) from e
            locked = False
            log.warning(
                "backtest.record_unlocked",
                path=str(lock),
                error=flock.errno_text(e),
                detail="this filesystem refuses file locks: the run's record is written "
                "without one, so runs writing into this folder at the same time (a parallel "
                "sweep sharing --output) may mix their records; give each run its own folder "
                "or use a local disk",
            )
        else:
            locked = True
        yield locked


def _record_lock_failed(lock: Path, e: OSError) -> TradingdError:
    return TradingdError(
        f"cannot lock the run's record folder: flock on {lock} failed "
        f"({flock.errno_text(e)}); the record there was not touched. Run it again once the "
        "file or its disk is fixed, or write elsewhere with --output"
    )


def check_record_lock(out: Path) -> None:
    """The lock of a folder holding a record (the one `remove_earlier_record` takes) tried
    before the run begins: one that fails (EIO, EBADF, ...) is the TradingdError of
    `_record_locked` now, before the store drops anything. Held (another run writing its
    record there) or a filesystem without locks is for the lock itself to handle; a folder
    that cannot be opened is the write's to report."""
    if not (out / "summary.json").is_file():
        return  # no record to remove: the lock is first taken at the end
    lock = out / RECORD_LOCK
    try:
        fh = lock.open("a", encoding="utf-8")
    except OSError:
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
        except OSError as e:
            if not (flock.is_held(e) or flock.is_unsupported(e)):
                raise _record_lock_failed(lock, e) from e


def data_record(config: Config) -> dict[str, Any]:
    """What a run's summary.json records of its data (`data`): for data files (csv,
    parquet), their SHA-256 as the run id hashes it, with how many files and bytes
    (`app.data_fingerprint_of`); for frames passed in Python, their digest (`data.digest`,
    which config.json and the run id hold too); the bundled series, the source alone (they
    ship in the `arch` package, whose version environment.json records). A record made
    before this has no `data`: `tradingd compare` says "not recorded"."""
    fingerprint = data_fingerprint_of(config)
    if fingerprint is not None:
        return fingerprint
    digest = getattr(config.data, "digest", "")
    if digest:
        return {"source": config.data.source, "digest": digest}
    return {"source": config.data.source}


def remove_earlier_record(
    out: Path, run_id: str, data: Mapping[str, Any] | None = None
) -> list[str]:
    """A rerun's store and audit log have just dropped the run id's earlier record: its
    files in the output folder go too, when the folder holds that run id's record (its
    summary.json names it; an --output folder may hold another run's). Else a rerun stopped
    early (or failed) left the earlier run's whole record there, which the store no longer
    held. Other files stay. Under the folder's lock: another run writing its record there
    meanwhile would have lost the files it had written so far. `data`: this run's
    `data_record`; a record of the same run id made on other data (a fixed `run.run_id`,
    whose id does not name the data) is removed with a warning naming both digests
    (`backtest.earlier_record_of_other_data`)."""
    if not (out / "summary.json").is_file():
        return []  # no record of a run here (and no folder to put a lock file in)
    try:
        with _record_locked(out):  # a lock that fails: TradingdError, before the replay
            return _remove_record_of(out, run_id, data)
    except OSError as e:
        # A folder this process cannot write: the write at the end says so (an error).
        log.warning(
            "backtest.earlier_record_kept",
            folder=str(out),
            run_id=run_id,
            error=f"{type(e).__name__}: {e}",
            detail="the earlier record of this run id could not be removed",
        )
        return []


def _remove_record_of(out: Path, run_id: str, data: Mapping[str, Any] | None) -> list[str]:
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        earlier = summary.get("run_id")
    except (OSError, ValueError, AttributeError):
        return []  # no record of a run here (or not one tradingd can read)
    if earlier != run_id:
        return []
    was, now = (data_digest(d) for d in (summary.get("data"), data))
    if was and now and was != now:
        log.warning(
            "backtest.earlier_record_of_other_data",
            run_id=run_id,
            folder=str(out),
            earlier_data=was,
            data=now,
            detail="the record replaced here was made on other data under the same run "
            "id (a fixed run.run_id names a run whatever its data): give each data set its "
            "own run.run_id or --output folder to keep both records",
        )
    removed = []
    for name in RECORD_FILES:
        path = out / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    if removed:
        log.info("backtest.earlier_record_removed", run_id=run_id, folder=str(out), files=removed)
    return removed


def write_outputs(
    out: Path,
    config: Config,
    result: EngineResult,
    summary: dict[str, Any],
    orders: Sequence[dict[str, Any]],
    fills: Sequence[dict[str, Any]],
    splits: Mapping[str, list[tuple[datetime, float]]] | None = None,
) -> None:
    """The run's record files. Each is written whole or not at all (a temporary file of this
    process renamed), summary.json last; a write that fails (a full disk) removes what this
    call wrote and says so: a cut orders.csv or an empty environment.json beside a complete
    summary.json read as a finished record, and `tradingd report` reported it.

    Runs sharing a folder (one --output for a sweep's variants) write in turn, under the
    folder's lock (RECORD_LOCK), and each first removes the record it replaces: with one
    temporary name for all, a run renamed or removed another's half-written file and exited
    2 after its whole replay, and the folder was left with a mix of two records."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock_made = not (out / RECORD_LOCK).exists()
        with _record_locked(out) as locked:
            _replaceable(out, result.run_id, lock_made, own_names(config, out))
            if locked:
                remove_stale_temps(out, RECORD_FILES)
            _write_record(out, config, result, summary, orders, fills, splits)
    except OSError as e:
        raise TradingdError(_unwritable(out, e, "")) from e


def _replaceable(out: Path, run_id: str, lock_made: bool, beside: Collection[str]) -> None:
    """The folder, under its lock, one this run may write its record into
    (`check_output_folder`, as at the start: its files may have changed during the replay),
    and the record it replaces said: another run id's (a sweep sharing --output: the last
    whole record stays, as README says), or one left incomplete."""
    holds = check_output_folder(
        out, "backtest", "the record folder", lock_made=lock_made, beside=beside
    )
    if holds.kind == "backtest" and holds.run_id != run_id:
        log.warning(
            "backtest.record_of_other_run_replaced",
            folder=str(out),
            run_id=run_id,
            replaced=holds.run_id,
            detail=f"the folder held the record of run {holds.run_id}, which this run's "
            f"record ({run_id}) replaces (the store keeps {holds.run_id}'s rows): give each "
            "run its own --output folder to keep both records",
        )
    elif holds.kind == "incomplete" and set(holds.names) & set(RECORD_FILES):
        log.warning(
            "backtest.incomplete_record_replaced",
            folder=str(out),
            run_id=run_id,
            files=list(holds.names),
            detail="the folder held a record without its summary.json (a run killed while "
            "writing it), which this run's record replaces",
        )


def _write_record(
    out: Path,
    config: Config,
    result: EngineResult,
    summary: dict[str, Any],
    orders: Sequence[dict[str, Any]],
    fills: Sequence[dict[str, Any]],
    splits: Mapping[str, list[tuple[datetime, float]]] | None,
) -> None:
    # The folder's record is this run's now: what is left of the one it replaces (another
    # run id's, in an --output folder; its report too) would sit beside it as if it were
    # this run's, and a failure below would leave that one's summary.json and equity.csv
    # beside none of its orders: a record in name only.
    for stale in RECORD_FILES:
        (out / stale).unlink(missing_ok=True)
    # What this call renamed into place, by identity: only these are removed on failure.
    written: list[tuple[Path, os.stat_result]] = []
    token = f"{os.getpid()}", secrets.token_hex(TEMP_TOKEN // 2)

    def put(name: str, write: Callable[[TextIO], object]) -> None:
        # Not tempfile.mkstemp: its files are private (0600), a record's are the umask's.
        tmp = out / temp_name(name, *token)
        try:
            with tmp.open("x", newline="", encoding="utf-8") as fh:
                write(fh)
                made = os.fstat(fh.fileno())
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
        written.append((out / name, made))

    def equity(fh: TextIO) -> None:
        w = csv.writer(fh)
        w.writerow(["time", "equity", "gross_exposure"])
        for t, e, g in zip(result.times, result.equity, result.gross_exposure, strict=True):
            w.writerow([t.isoformat(), repr(e), repr(g)])

    def split_rows(fh: TextIO) -> None:
        # The fills are in the shares of their day: an analysis of the folder (`tradingd
        # report`, the Monte Carlo's trade order) restates them with the run's splits.
        w = csv.writer(fh)
        w.writerow(["symbol", "time", "split"])
        for sym, events in sorted((splits or {}).items()):
            for t, coef in events:
                w.writerow([sym, t.isoformat(), repr(coef)])

    try:
        put("orders.csv", lambda fh: _csv_rows(fh, orders))
        put("fills.csv", lambda fh: _csv_rows(fh, fills))
        put("splits.csv", split_rows)
        # Masked: credentials in URLs never reach a run's record.
        put(
            "config.json",
            lambda fh: fh.write(json.dumps(config.to_public_dict(), indent=2, default=str)),
        )
        # What else the numbers depend on (package versions, the CPU features numpy
        # dispatches to, the plugins' distributions): another machine, or another version
        # of a third-party plugin, can give other fills from the same commit and config.
        put("environment.json", lambda fh: fh.write(json.dumps(environment(config), indent=2)))
        # Last two: `tradingd report` takes a folder with equity.csv for a record, so a
        # process killed between renames leaves none it would read as finished.
        put("equity.csv", equity)
        put("summary.json", lambda fh: fh.write(json.dumps(_jsonable(summary), indent=2)))
    except BaseException as e:
        for path, made in written:
            _unlink_if_same(path, made)
        if not isinstance(e, OSError):
            raise  # a stop (Ctrl-C) or a bug: the partial record is gone all the same
        raise TradingdError(
            _unwritable(
                out,
                e,
                "; its files were removed (an incomplete record would read as a finished one)",
            )
        ) from e


def _unlink_if_same(path: Path, made: os.stat_result) -> None:
    """Remove `path` if it is still the file this process made (not one another writer
    that takes no lock, an older tradingd, has put there since)."""
    with contextlib.suppress(OSError):
        now = path.stat()
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            path.unlink()


def _unwritable(out: Path, e: OSError, removed: str) -> str:
    """What failed, and what to do about that failure: free space was the advice for every
    error, a path too long (ENAMETOOLONG) and a folder removed meanwhile (ENOENT) too."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free space and run it again, or write elsewhere with --output"
    elif e.errno == errno.ENAMETOOLONG:
        advice = "give a shorter --output path (or run.output_dir) and run it again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = (
            "make the folder writable for this user (or the file system writable) and run "
            "it again, or write elsewhere with --output"
        )
    else:
        advice = "run it again once that is resolved, or write elsewhere with --output"
    return f"cannot write the run's record in {out}: {e.strerror or e}{removed}: {advice}"


def _write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        _csv_rows(fh, rows)


def _csv_rows(fh: TextIO, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        table = Records.of_dicts(rows)
        w = csv.writer(fh)
        w.writerow(table.names)
        # Column by column, each time formatted once (a bar's orders share it), and only the
        # columns that hold times go through `cell`: a DictWriter with a dict per row, and
        # then a call per value, were most of the time spent after a long replay (0.15 s for
        # the 21,000 orders and fills of a 496-symbol run).
        iso: dict[tuple[type, datetime, Any], str] = {}

        def cell(v: Any) -> Any:
            if isinstance(v, datetime):
                # Equal datetimes print differently with another offset (the same instant in
                # two zones, a wall time in the repeated hour of a DST change: `fold`) or
                # another class (pandas' Timestamp has its own isoformat).
                key = (type(v), v, v.utcoffset())
                text = iso.get(key)
                if text is None:
                    text = iso[key] = v.isoformat()
                return text
            return v

        columns = []
        for column in table.columns:
            if any(issubclass(t, datetime) for t in set(map(type, column))):
                column = list(map(cell, column))
            elif float in set(map(type, column)):
                # An undefined value (an unfilled order's average price) is an empty cell,
                # as None is, not the text "nan".
                column = ["" if v != v else v for v in column]
            columns.append(column)
        # (No fields: a row is still an empty line, as a DictWriter writes it.)
        w.writerows(zip(*columns, strict=True) if columns else [()] * len(rows))


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: undefined metrics become null."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float) and not np.isfinite(v):
            out[k] = None
        elif isinstance(v, np.generic):
            out[k] = v.item()
        elif isinstance(v, datetime):
            out[k] = v.astimezone(UTC).isoformat()
        else:
            out[k] = v
    return out
