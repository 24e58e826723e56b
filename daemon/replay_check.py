"""`tradingd replay-check RUN`: replay a live run's stored bars through the backtest path and
report every bar where features, model outputs or decisions differ from what the live run
stored (see engine/decisions.py).

How: the run's stored configuration (its public form, operational sections dropped) is
rebuilt with the live run id (so order ids compare), the bars the live run recorded are read
back from the store for its universe, and a backtest engine runs over them with trading
starting at the live run's first decision, its decisions collected instead of stored. Each
live decision is then compared with the replay's for the same bar.

What compares: for a run on the simulated broker, everything (features, scores, targets,
intents): replay and live fill the same way. With a real broker, fills differ from the
simulation: targets and intents are compared on the bars before the first fill was booked,
live or in the replay (until then both books are the starting cash), features and model
outputs on every
bar (`decisions_comparable` is False). A live process that restarted warmed up again from
another first bar; its bars compare features and scores only, on a replay that starts where
that process started. Decision differences on bars where decisions are not compared are
not dropped: they are listed apart (`not_counted`), with the count of bars whose decisions
were compared (`decisions_compared`), so "0 differ" never reads as "the orders matched"
where they were not compared.
"""

from __future__ import annotations

import bisect
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import structlog

from .build_info import Build, this_build
from .config import Config, build
from .core.errors import ConfigError
from .engine.decisions import compare
from .feeds.panel import FIELDS, Panel
from .storage.factory import open_store

log = structlog.get_logger(__name__)

_DROP = ("health", "log", "cache", "alerts", "storage")


@dataclass
class BarDifference:
    time: datetime
    differences: list[str]


@dataclass
class BuildSpan:
    """The bars one live process decided, with the build it ran (None: the process recorded
    none, so it was a build from before builds were recorded)."""

    build: Build | None
    first: datetime
    last: datetime
    bars: int = 0
    differing: int = 0

    def other_than(self, replaying: Build) -> bool:
        return self.build is None or self.build.differs_from(replaying)

    def label(self) -> str:
        if self.build is None:
            return "an earlier tradingd build (one that recorded no build identity)"
        return self.build.label()

    def to_dict(self, replaying: Build) -> dict[str, Any]:
        return {
            "build": None if self.build is None else self.build.as_dict(),
            "first_bar": self.first.isoformat(),
            "last_bar": self.last.isoformat(),
            "bars": self.bars,
            "differing": self.differing,
            "other_than_replaying": self.other_than(replaying),
        }


@dataclass
class ReplayReport:
    run_id: str
    bars_compared: int = 0
    bars_missing_in_replay: list[datetime] = field(default_factory=list)
    differing: list[BarDifference] = field(default_factory=list)
    decisions_comparable: bool = True
    segments: int = 1
    # Bars whose targets and intents were compared (the others compare features and scores).
    decisions_compared: int = 0
    # Decision differences on bars where decisions are not compared (an external broker's
    # book after its first fill, a restarted process's bars): shown, not counted.
    not_counted: list[BarDifference] = field(default_factory=list)
    # The signal sources (plugins with their model versions) the live run decided with, and
    # the replay's, where they differ ({live: replay}): a live run that took up a model
    # `tradingd retrain` published is replayed with today's, and every later bar differs.
    sources_differ: dict[str, str] = field(default_factory=dict)
    # Which build decided which bars (`run_builds`), and the one replaying: after an upgrade
    # every bar the changed code touches differs, and that is the first thing to say.
    builds: list[BuildSpan] = field(default_factory=list)
    replayed_by: Build = field(default_factory=Build)
    # Settings of the configuration given (-c, the environment) that define a run and
    # differ from the run's stored ones: the replay does not use them (it replays the run
    # as it was configured), and a "0 differ" read as their verdict.
    settings_not_used: list[str] = field(default_factory=list)

    @property
    def other_builds(self) -> list[BuildSpan]:
        """The spans of bars decided by another build than the one replaying."""
        return [b for b in self.builds if b.other_than(self.replayed_by)]

    @property
    def ok(self) -> bool:
        return not self.differing and not self.bars_missing_in_replay

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "bars_compared": self.bars_compared,
            "segments": self.segments,
            "decisions_comparable": self.decisions_comparable,
            "decisions_compared": self.decisions_compared,
            "decision_differences_not_counted": [
                {"time": d.time.isoformat(), "differences": d.differences} for d in self.not_counted
            ],
            "sources_differ": dict(self.sources_differ),
            "settings_not_used": list(self.settings_not_used),
            "replayed_by": self.replayed_by.as_dict(),
            "builds": [b.to_dict(self.replayed_by) for b in self.builds],
            "bars_missing_in_replay": [t.isoformat() for t in self.bars_missing_in_replay],
            "differing_bars": [
                {"time": d.time.isoformat(), "differences": d.differences} for d in self.differing
            ],
        }


def _builds_by_bar(
    times: Sequence[datetime], rows: Sequence[dict[str, Any]], differing: set[datetime]
) -> list[BuildSpan]:
    """The bars (in time order) grouped by the build that decided them: each process start
    (`run_builds`, by start) decides the bars after its `resumed_after` until a later start
    takes over; a bar before every recorded start was decided by an unrecorded build."""
    starts = sorted(rows, key=lambda r: r["started_at"])
    # A bar's start is the latest one (by start) whose `resumed_after` is before the bar (or
    # None): the latest of those without one, or, by bisect over the others sorted by
    # `resumed_after`, the latest of the prefix before the bar. Not a scan of every start
    # per bar: run_builds grows a row per process start, crash loops included.
    fresh = max((i for i, r in enumerate(starts) if r["resumed_after"] is None), default=-1)
    order = sorted(
        (i for i, r in enumerate(starts) if r["resumed_after"] is not None),
        key=lambda i: starts[i]["resumed_after"],
    )
    keys = [starts[i]["resumed_after"] for i in order]
    latest: list[int] = []
    for i in order:
        latest.append(max(i, latest[-1]) if latest else i)
    spans: list[BuildSpan] = []
    owner: object = object()
    for t in times:
        k = bisect.bisect_left(keys, t)  # the starts resumed strictly before t
        i = max(fresh, latest[k - 1] if k else -1)
        row = starts[i] if i >= 0 else None
        if row is not owner:
            owner = row
            build = None if row is None else _build_of(row)
            spans.append(BuildSpan(build, t, t))
        span = spans[-1]
        span.last, span.bars = t, span.bars + 1
        span.differing += t in differing
    return spans


def _build_of(row: Mapping[str, Any]) -> Build:
    edited = row["uncommitted_changes"]
    return Build(row["version"], row["source_commit"], None if edited is None else bool(edited))


def _panel(rows: Sequence[dict[str, Any]], symbols: tuple[str, ...], since: datetime) -> Panel:
    df = pd.DataFrame([r for r in rows if r["symbol"] in set(symbols) and r["time"] >= since])
    if df.empty:
        raise ConfigError("replay-check: the store holds no bars of this run's universe")
    times = np.sort(df["time"].unique())
    ti = np.searchsorted(times, df["time"].to_numpy())
    index = {s: i for i, s in enumerate(symbols)}
    si = df["symbol"].map(index).to_numpy()
    arrays = {}
    for f in FIELDS:
        fill = 1.0 if f == "split" else (0.0 if f == "dividend" else np.nan)
        arr = np.full((len(times), len(symbols)), fill, dtype=np.float64)
        arr[ti, si] = df[f].to_numpy(dtype=np.float64)
        arrays[f] = arr
    naive = pd.DatetimeIndex(times).tz_convert("UTC").tz_localize(None)
    return Panel(times=naive.to_numpy(dtype="datetime64[ns]"), symbols=symbols, **arrays)


def replay_config(stored: dict[str, Any], run_id: str, start: datetime, audit_dir: str) -> Config:
    data = {k: v for k, v in stored.items() if k not in _DROP}
    data["run"] = {**data.get("run", {}), "run_id": run_id, "start": start.isoformat(), "end": ""}
    data["feed"] = {**data.get("feed", {}), "source": "recorded"}
    data["log"] = {"audit_dir": audit_dir}
    data["storage"] = {"url": "sqlite:///:memory:"}
    return build(Config, data, "")


# Keys a replay sets itself (the live run's id, where its trading starts and ends).
_REPLAY_SETS = frozenset({"run.run_id", "run.start", "run.end"})


def _not_used(stored: dict[str, Any], given: Config) -> list[str]:
    """The settings of `given` that define a run (`run_continuation.defines_the_run`) and
    differ from the run's `stored` configuration: what the operator may think is replayed
    (`TRADINGD_ORDERS__STOP_LOSS_PCT=0.05 tradingd replay-check RUN` said "0 differ" of
    the stored stop loss, and nothing of the one given)."""
    from .run_continuation import defines_the_run, differences

    _, differ = differences(stored, json.loads(given.to_public_json()))
    return [k for k in differ if k not in _REPLAY_SETS and defines_the_run(k)]


async def _replay(
    config: Config, panel: Panel
) -> tuple[dict[datetime, tuple[str, dict[str, Any]]], datetime | None]:
    """The replay's (signal source, decision record) by bar, and the bar at which it booked
    its first fill."""
    from .app import build_engine

    got: dict[datetime, tuple[str, dict[str, Any]]] = {}
    # The live run's bar length: its sizing's periods_per_year and its day's start (intraday)
    # are those of live.bar, not of a daily backtest.
    engine = build_engine(config, "backtest", panel=panel, bar=config.live.bar)
    engine.on_decision = lambda t, source, record: got.__setitem__(t, (source, record))
    first_fill: list[datetime] = []
    record_fills = engine.store.record_fills

    def recording(run_id: str, fills: Any, booked_at: Any = None) -> Any:
        if fills and booked_at is not None and not first_fill:
            first_fill.append(booked_at)
        return record_fills(run_id, fills, booked_at)

    engine.store.record_fills = recording  # type: ignore[method-assign]
    await engine.run_until_done()
    return got, (first_fill[0] if first_fill else None)


async def replay_check(
    config: Config, run_id: str, overrides: dict[str, Any] | None = None
) -> ReplayReport:
    """Compare the live run `run_id` in the store of `config` with its replay. `overrides`
    (a nested mapping, e.g. {"orders": {"rebalance_band": 0.05}}) changes the replayed
    configuration: what would have differed, and from which bar."""
    store = open_store(config.storage.url, spool=False)
    await store.start()
    try:
        runs = await store.fetch("runs", run_id)
        if not runs:
            raise ConfigError(f"replay-check: no run {run_id!r} in {config.storage.url!r}")
        run = runs[0]
        if run["mode"] != "live":
            raise ConfigError(f"replay-check: run {run_id!r} is a {run['mode']} run, not live")
        decisions = await store.fetch("decisions", run_id)
        fills = await store.fetch("fills", run_id)
        build_rows = await store.fetch("run_builds", run_id)
        bars = await store.fetch_bars()
    finally:
        await store.stop()
    report = ReplayReport(run_id)
    if not decisions:
        return report
    stored_config = json.loads(run["config_json"])
    for section, values in (overrides or {}).items():
        stored_config[section] = {**stored_config.get(section, {}), **values}
    report.settings_not_used = _not_used(stored_config, config)  # (after the overrides)
    symbols = tuple(run["symbols"])
    broker_kind = stored_config.get("broker", {}).get("kind", "auto")
    # With a real broker the fills (and so the book behind each decision) are the broker's.
    report.decisions_comparable = broker_kind == "simulated" or not any(
        d["record"].get("broker") == "external" for d in decisions
    )
    # Until the first fill was booked, live or in the replay, an external broker's book is
    # the starting cash, as the replay's: decisions compare on the bars before it. A fill
    # without its booking bar (rows of an older build) counts from the bar it executed in.
    times = sorted(d["time"] for d in decisions)
    booked = []
    for f in fills:
        if f["booked_at"] is not None:
            booked.append(f["booked_at"])
        else:  # the newest bar at or before its execution: the bar that booked it
            k = bisect.bisect_right(times, f["time"])
            booked.append(times[k - 1] if k else f["time"])
    first_fill = min(booked) if booked else None
    segments: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        segments.setdefault(d["record"].get("first_bar", ""), []).append(d)
    report.segments = len(segments)
    with tempfile.TemporaryDirectory(prefix="tradingd-replay-check-") as audit:
        for k, (first_bar, rows) in enumerate(sorted(segments.items())):
            since = pd.Timestamp(first_bar).to_pydatetime() if first_bar else bars[0]["time"]
            panel = _panel(bars, symbols, since)
            cfg = replay_config(stored_config, run_id, rows[0]["time"], audit)
            replayed, replay_fill = await _replay(cfg, panel)
            until = min((x for x in (first_fill, replay_fill) if x is not None), default=None)
            for d in rows:
                t = d["time"]
                got = replayed.get(t)
                if got is None:
                    report.bars_missing_in_replay.append(t)
                    continue
                source, other = got
                report.bars_compared += 1
                diff = compare(d["record"], other)
                if d.get("source") and d["source"] != source:
                    report.sources_differ.setdefault(d["source"], source)
                    diff.insert(0, f"signals: live {d['source']}, replay {source}")
                whole = k == 0 and (report.decisions_comparable or until is None or t < until)
                if whole:
                    report.decisions_compared += 1
                else:
                    apart = [x for x in diff if not x.startswith(("features", "scores"))]
                    if apart:
                        report.not_counted.append(BarDifference(t, apart))
                    diff = [x for x in diff if x.startswith(("features", "scores"))]
                if diff:
                    report.differing.append(BarDifference(t, diff))
    report.replayed_by = this_build()
    report.builds = _builds_by_bar(
        sorted(d["time"] for d in decisions), build_rows, {d.time for d in report.differing}
    )
    log.info(
        "replay_check.done",
        run_id=run_id,
        bars=report.bars_compared,
        differing=len(report.differing),
        segments=report.segments,
        decisions_compared=report.decisions_compared,
        not_counted=len(report.not_counted),
    )
    return report


__all__ = ["BuildSpan", "ReplayReport", "replay_check", "replay_config"]
