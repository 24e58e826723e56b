"""`tradingd lookahead-check`: does any plugin decide a bar from data after it?

A backtest with the data cut after bar T must decide every bar up to T exactly as the
backtest over the whole history. The engine proves that for itself by construction, but a
plugin can still reach the future: the arrays it is given are views whose `.base` is the
whole panel (`ctx.bar.close.base`, `ctx.features[name].base`). The difference such a peek
makes shows only in what the plugins decided (a cut run's orders and fills, and `tradingd
compare` of its record, show nothing of a score that changed at its last bar), so this runs
the configured backtest over the whole history and again with the data cut after each of a
few dates, collects what every plugin decided at every bar, and compares them, bit for bit.

What is collected, per traded bar, in memory (no store on disk, no audit log, no record
folder): the features the plugins were given with `ready`, every signal plugin's scores (each
plugin's own, not only the combined score), the combined score the sizing sees, the sizing's
targets, each risk plugin's targets and verdicts, the targets after risk and the order intents
(`engine/decisions.py`'s record, as `replay_check` collects it). Each is kept as a digest;
values only at the bars a report shows (the first few decided, and the last few before each
cut). The first stage that differs at the first bar that differs names the plugin: what
follows it (the combined score, the sizing, the orders) differs because of it.

A cut run is given a copy of the panel's rows up to its cut (not a view: `.base` of a view
reaches the rows after it), so nothing after the cut is loaded or reachable through the engine.
Not reached: a plugin that reads the future from its own files or the network, or keeps
state in a module between runs of one process (the runs share one process with `--workers 0`;
a worker process runs several).

Nondeterminism (unseeded randomness, a set's order, the clock) differs between runs too. So
the earliest cut is run twice: two runs of the same data that differ say the plugin is not
reproducible, which the report says apart from a difference that only the future explains.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import hashlib
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from .core.errors import ConfigError, PluginFault, TradingdError
from .feeds.panel import FIELDS, Panel

if TYPE_CHECKING:
    from .config import Config
    from .core.ports import BarContext
    from .engine.engine import Pipeline

log = structlog.get_logger(__name__)

DEFAULT_CUTS = 4
# Bars whose values (not only digests) are kept: the first decided, and the last before
# each cut (where a peek shows).
KEEP_FIRST = 3
KEEP_BEFORE_CUT = 3
# Symbols shown per difference.
SHOWN = 5


# ---------------------------------------------------------------- collecting decisions


def _digest(value: Any) -> bytes:
    """A digest equal for bit-equal values, NaN equal to NaN (whatever its payload)."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, value)
    return h.digest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        if a.dtype.kind == "f":
            a = np.where(np.isnan(a), np.nan, a)  # one NaN bit pattern
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k in value:
            h.update(repr(k).encode())
            _feed(h, value[k])
        h.update(b"}")
    elif isinstance(value, list | tuple):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(value, float) and math.isnan(value):
        h.update(b"nan")
    else:
        h.update(repr(value).encode())


class _Collector:
    """What the taps saw at the bar under way, made a bar's digests when the engine has
    decided it (`Engine.on_decision`). Warm-up bars call the signals too, never decide: a
    new bar's first value drops what an earlier bar left."""

    def __init__(self, keep: frozenset[datetime]) -> None:
        self.keep = keep
        self._time: datetime | None = None
        self._pending: dict[str, Any] = {}
        self.digests: dict[datetime, dict[str, bytes]] = {}
        self.values: dict[datetime, dict[str, Any]] = {}

    def put(self, time: datetime, stage: str, value: Any) -> None:
        if time != self._time:
            self._time, self._pending = time, {}
        self._pending[stage] = value

    def decided(self, t: datetime, record: Mapping[str, Any]) -> None:
        seen = self._pending if self._time == t else {}
        stages = {
            **seen,
            "targets": dict(record["targets"]),
            "orders": [tuple(i) for i in record["intents"]],
        }
        self._time, self._pending = None, {}
        self.digests[t] = {k: _digest(v) for k, v in stages.items()}
        if t in self.keep or len(self.digests) <= KEEP_FIRST:
            self.values[t] = stages


class _Tap:
    def __init__(self, inner: Any, collector: _Collector, label: str) -> None:
        self._inner = inner
        self.__wrapped__ = inner  # the plugin's own code, for a fault's line (`_fault_at`)
        self._collector = collector
        self._label = label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _SignalTap(_Tap):
    def __init__(self, inner: Any, collector: _Collector, label: str, first: bool) -> None:
        super().__init__(inner, collector, label)
        self._first = first

    def score(self, ctx: BarContext) -> Any:
        if self._first:  # what every plugin is given: features (the engine's) and ready
            given = {"ready": np.array(ctx.ready)}
            given.update({n: np.array(v) for n, v in sorted(ctx.features.items())})
            self._collector.put(ctx.time, "features", given)
        s = self._inner.score(ctx)
        self._collector.put(ctx.time, self._label, _array(s, ctx.symbols))
        return s


class _SizingTap(_Tap):
    def size(self, score: np.ndarray, ctx: BarContext) -> Any:
        self._collector.put(ctx.time, "score (combined)", np.array(score, dtype=np.float64))
        t = self._inner.size(score, ctx)
        self._collector.put(ctx.time, self._label, _array(t, ctx.symbols))
        return t


class _RiskTap(_Tap):
    def check(self, targets: np.ndarray, ctx: BarContext) -> Any:
        decision = self._inner.check(targets, ctx)
        verdicts = [
            (v.symbol, v.action, v.rule, v.requested, v.allowed, v.reason)
            for v in getattr(decision, "verdicts", ()) or ()
        ]
        out = _array(getattr(decision, "targets", None), ctx.symbols)
        self._collector.put(ctx.time, self._label, {"targets": out, "verdicts": verdicts})
        return decision


def _array(given: Any, symbols: Sequence[str]) -> Any:
    """A plugin's output as float64 per symbol (a Series lined up on the symbols), or its
    repr when it is none (the engine refuses it and names the plugin)."""
    from .engine.plugin_outputs import by_symbol

    try:
        return np.array(by_symbol(given, symbols), dtype=np.float64)
    except Exception:
        return repr(given)


def _labels(names: Sequence[str]) -> list[str]:
    """Plugin names, with `#k` for the second and later of one name."""
    out, seen = [], dict[str, int]()
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def install_taps(pipeline: Pipeline, collector: _Collector) -> list[str]:
    """Taps around every plugin of `pipeline`; returns the stages in the order a bar goes
    through them."""
    sig = _labels([p.name for p, _ in pipeline.signals])
    risk = _labels([r.name for r in pipeline.risks])
    signal_stages = [f"signal {n}" for n in sig]
    sizing_stage = f"sizing {pipeline.sizing.name}"
    risk_stages = [f"risk {n}" for n in risk]
    pipeline.signals = [
        (_SignalTap(p, collector, label, k == 0), w)  # type: ignore[misc]
        for k, (label, (p, w)) in enumerate(zip(signal_stages, pipeline.signals, strict=True))
    ]
    pipeline.sizing = _SizingTap(pipeline.sizing, collector, sizing_stage)  # type: ignore[assignment]
    pipeline.risks = [
        _RiskTap(r, collector, label)  # type: ignore[misc]
        for label, r in zip(risk_stages, pipeline.risks, strict=True)
    ]
    return [
        "features",
        *signal_stages,
        "score (combined)",
        sizing_stage,
        *risk_stages,
        "targets",
        "orders",
    ]


@dataclass
class RunDecisions:
    """One backtest's decisions: digests per bar and stage, values at the kept bars, and
    how it ended (`error`: a failure, with the bar and plugin when a plugin's)."""

    label: str
    last_bar: datetime
    stages: list[str] = field(default_factory=list)
    digests: dict[datetime, dict[str, bytes]] = field(default_factory=dict)
    values: dict[datetime, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    error_bar: Any = None
    error_plugin: str | None = None


@dataclass(frozen=True)
class _Task:
    label: str
    config: Config
    panel: Panel
    keep: frozenset[datetime]


def _ending(config: Config, last: datetime) -> Config:
    """A cut run's config: `run.end` at its cut (the README's check: a backtest with
    run.end at T), so a configured run.end after the cut is not warned about as data
    missing (`run.window_clipped`) at every cut run."""
    return dataclasses.replace(config, run=dataclasses.replace(config.run, end=f"{last:%Y-%m-%d}"))


def _scratch_config(config: Config, run_id: str, audit_dir: str) -> Config:
    """One run id for every run (order ids compare), an in-memory store, no Redis, no
    feature cache written, and the run lock's file in a scratch folder."""
    return dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, run_id=run_id),
        storage=dataclasses.replace(config.storage, url="sqlite:///:memory:", signals="none"),
        cache=dataclasses.replace(config.cache, url="", features=False),
        log=dataclasses.replace(config.log, audit_dir=audit_dir),
    )


async def _decide(task: _Task) -> RunDecisions:
    from .app import build_engine
    from .engine.engine import NullAudit

    out = RunDecisions(task.label, task.panel.datetimes()[-1])
    collector = _Collector(task.keep)
    with tempfile.TemporaryDirectory(prefix="tradingd-lookahead-") as tmp:
        config = _scratch_config(task.config, task.config.run.run_id, tmp)
        engine = build_engine(config, "backtest", panel=task.panel)
        engine.audit = NullAudit()
        out.stages = install_taps(engine.pipeline, collector)
        engine.on_decision = lambda t, source, record: collector.decided(t, record)
        try:
            await engine.run_until_done()
        except PluginFault as exc:
            out.error, out.error_bar, out.error_plugin = str(exc), exc.bar_time, exc.plugin
        except TradingdError as exc:
            out.error = str(exc)
    out.digests, out.values = collector.digests, collector.values
    return out


def _run_task(task: _Task) -> RunDecisions:
    """One backtest (a `run_tasks` task: module level, picklable in and out)."""
    from .analysis.parallel import in_worker

    if in_worker():
        from .analysis.walkforward_run import quiet_logging

        quiet_logging(task.config)
    return asyncio.run(_decide(task))


# ---------------------------------------------------------------- cuts and comparison


def cut_panel(panel: Panel, last: int) -> Panel:
    """The rows 0..`last` of `panel` as arrays of their own: a view's `.base` would reach
    the rows after the cut."""
    return Panel(
        times=np.array(panel.times[: last + 1]),
        symbols=panel.symbols,
        **{f: np.array(getattr(panel, f)[: last + 1]) for f in FIELDS},
    )


def cut_rows(
    times: Sequence[datetime], first_traded: int, n: int, at: Sequence[str] = ()
) -> list[int]:
    """The last row kept by each cut: after the last bar on or before each date of `at`, or
    else `n` rows spread evenly over the traded bars (never the last bar: nothing to cut)."""
    last = len(times) - 1
    if at:
        rows = []
        for text in at:
            day = _date(text)
            end = datetime(day.year, day.month, day.day, tzinfo=times[0].tzinfo) + timedelta(1)
            k = bisect.bisect_left(times, end) - 1
            if k < first_traded:
                raise ConfigError(
                    f"--at {text}: before the first traded bar ({times[first_traded]:%Y-%m-%d})"
                )
            if k >= last:
                raise ConfigError(
                    f"--at {text}: on or after the data's last bar ({times[last]:%Y-%m-%d}): "
                    "nothing is cut"
                )
            rows.append(k)
        return sorted(set(rows))
    if n < 1:
        raise ConfigError(f"--cuts must be >= 1, got {n}")
    span = last - first_traded
    if span < 1:
        raise ConfigError("lookahead-check: fewer than two traded bars, nothing to cut")
    return sorted({first_traded + (j * span) // (n + 1) for j in range(1, n + 1)})


def _date(text: str) -> Any:
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--at {text!r}: not a date (YYYY-MM-DD)") from None


@dataclass
class Difference:
    time: datetime
    stage: str
    # Symbol (or item) -> (value with the data cut, value over the whole history).
    values: list[tuple[str, str, str]]
    also: list[str]  # the later stages that differ at that bar
    last_bar: bool  # the bar is the last before the cut

    @property
    def plugin(self) -> str | None:
        kind, _, name = self.stage.partition(" ")
        return name if kind in ("signal", "sizing", "risk") else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "stage": self.stage,
            "plugin": self.plugin,
            "last_bar_before_cut": self.last_bar,
            "values": [{"item": i, "cut": a, "whole": b} for i, a, b in self.values],
            "also_differ": self.also,
        }


@dataclass
class CutResult:
    """One cut run against the whole-history run (or, for the repeat, against the first
    run of the same cut)."""

    cut: datetime
    repeat: bool = False
    bars_compared: int = 0
    differing_bars: int = 0
    first: Difference | None = None
    missing: list[datetime] = field(default_factory=list)  # decided by one run only
    error: str | None = None  # the cut run failed where the whole run did not

    @property
    def ok(self) -> bool:
        return not self.differing_bars and not self.missing and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cut_after": self.cut.isoformat(),
            "repeat": self.repeat,
            "ok": self.ok,
            "bars_compared": self.bars_compared,
            "differing_bars": self.differing_bars,
            "first_difference": None if self.first is None else self.first.to_dict(),
            "decided_by_one_run_only": [t.isoformat() for t in self.missing],
            "error": self.error,
        }


def _shown(a: Any, b: Any, symbols: Sequence[str]) -> list[tuple[str, str, str]]:
    """A few of the items where `a` and `b` differ, as text."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape:
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            same = ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))
        else:
            same = np.asarray(a == b)
        idx = np.flatnonzero(~same.reshape(-1))[:SHOWN]
        name = (lambda i: symbols[i]) if a.ndim == 1 and len(a) == len(symbols) else str
        return [(name(int(i)), repr(a.flat[i].item()), repr(b.flat[i].item())) for i in idx]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[tuple[str, str, str]] = []
        for k in list(dict.fromkeys([*a, *b])):
            if k not in a or k not in b:
                out.append((str(k), repr(a.get(k, "absent")), repr(b.get(k, "absent"))))
            elif _digest(a[k]) != _digest(b[k]):
                inner = _shown(a[k], b[k], symbols)
                out.extend((f"{k} {i}", x, y) for i, x, y in inner)
                if not inner:
                    out.append((str(k), repr(a[k])[:200], repr(b[k])[:200]))
            if len(out) >= SHOWN:
                break
        return out[:SHOWN]
    if isinstance(a, list) and isinstance(b, list):
        for k, (x, y) in enumerate(zip(a, b, strict=False)):
            if _digest(x) != _digest(y):
                return [(f"#{k}", repr(x), repr(y))]
        return [("count", str(len(a)), str(len(b)))]
    return [("value", repr(a)[:200], repr(b)[:200])]


def compare_runs(
    cut: RunDecisions, whole: RunDecisions, symbols: Sequence[str], repeat: bool = False
) -> CutResult:
    """Every bar `cut` decided, and every bar up to its last that `whole` decided, stage by
    stage in pipeline order: the first differing stage of the first differing bar."""
    res = CutResult(cut.last_bar, repeat=repeat, error=cut.error)
    times = sorted({*cut.digests, *(t for t in whole.digests if t <= cut.last_bar)})
    for t in times:
        a, b = cut.digests.get(t), whole.digests.get(t)
        if a is None or b is None:
            if a is None and cut.error is not None and _at_or_after(t, cut.error_bar):
                continue  # the cut run had failed by then: said as its error
            res.missing.append(t)
            continue
        res.bars_compared += 1
        differ = [s for s in cut.stages if a.get(s) != b.get(s)]
        if not differ:
            continue
        res.differing_bars += 1
        if res.first is None:
            va, vb = cut.values.get(t), whole.values.get(t)
            shown = (
                _shown(va[differ[0]], vb[differ[0]], symbols)
                if va is not None and vb is not None
                else [("values", "not kept at this bar", "not kept at this bar")]
            )
            res.first = Difference(t, differ[0], shown, differ[1:], t == cut.last_bar)
    return res


def _at_or_after(t: datetime, bar: Any) -> bool:
    try:
        return bool(bar is not None and t >= bar)
    except TypeError:
        return True


@dataclass
class LookaheadReport:
    run_id: str
    whole_first: datetime | None
    whole_last: datetime
    cuts: list[CutResult]
    repeat: CutResult | None
    bars_decided: int

    @property
    def reproducible(self) -> bool:
        return self.repeat is None or self.repeat.ok

    @property
    def ok(self) -> bool:
        return self.reproducible and all(c.ok for c in self.cuts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "reproducible": self.reproducible,
            "backtests": len(self.cuts) + 1 + (self.repeat is not None),
            "bars_decided_whole_history": self.bars_decided,
            "whole_history": [
                None if self.whole_first is None else self.whole_first.isoformat(),
                self.whole_last.isoformat(),
            ],
            "cuts": [c.to_dict() for c in self.cuts],
            "repeat": None if self.repeat is None else self.repeat.to_dict(),
        }


def lookahead_check(
    config: Config,
    *,
    cuts: int = DEFAULT_CUTS,
    at: Sequence[str] = (),
    symbols: Sequence[str] = (),
    workers: int = 0,
    panel: Panel | None = None,
    repeat: bool = True,
    progress: bool = False,
) -> LookaheadReport:
    """Run the backtest of `config` over the whole history, after each cut, and (`repeat`)
    the earliest cut twice, and compare what the plugins decided (the module docstring)."""
    from .analysis.parallel import run_tasks
    from .app import load_data, run_id_for, session_bars_only, trade_start

    panel = load_data(config) if panel is None else session_bars_only(config, panel)
    if symbols:
        try:
            panel = panel.select(symbols=tuple(dict.fromkeys(symbols)))
        except KeyError as exc:
            raise ConfigError(f"--symbols: {exc.args[0]}") from None
    if not len(panel.times):
        raise ConfigError("lookahead-check: the data has no bars")
    times = panel.datetimes()
    start = trade_start(config, panel)
    first_traded = 0 if start is None else bisect.bisect_left(times, start)
    rows = cut_rows(times, first_traded, cuts, at)
    keep = frozenset(times[i] for r in rows for i in range(max(0, r - KEEP_BEFORE_CUT + 1), r + 1))
    run_id = run_id_for(config, "backtest")
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_id=run_id))
    tasks = [_Task("whole", config, panel, keep)]
    tasks += [
        _Task(f"cut {times[r]:%Y-%m-%d}", _ending(config, times[r]), cut_panel(panel, r), keep)
        for r in rows
    ]
    if repeat:
        tasks.append(
            _Task("repeat", _ending(config, times[rows[0]]), cut_panel(panel, rows[0]), keep)
        )
    log.info(
        "lookahead_check.start",
        run_id=run_id,
        backtests=len(tasks),
        cuts=[times[r].isoformat() for r in rows],
        symbols=len(panel.symbols),
    )
    got = run_tasks(_run_task, tasks, workers=workers, progress=progress, desc="lookahead")
    whole = got[0]
    if whole.error is not None:
        raise TradingdError(f"lookahead-check: the whole-history backtest failed: {whole.error}")
    results = [compare_runs(c, whole, panel.symbols) for c in got[1 : 1 + len(rows)]]
    again = compare_runs(got[-1], got[1], panel.symbols, repeat=True) if repeat else None
    decided = sorted(whole.digests)
    report = LookaheadReport(
        run_id, decided[0] if decided else None, whole.last_bar, results, again, len(decided)
    )
    log.info(
        "lookahead_check.done",
        run_id=run_id,
        ok=report.ok,
        reproducible=report.reproducible,
        differing_cuts=sum(not c.ok for c in results),
    )
    return report


# ---------------------------------------------------------------- text


def _where(d: Difference) -> str:
    what = {
        "features": "the features the plugins were given (the engine's, or the data's)",
        "score (combined)": "the combined score (no signal plugin's own differs)",
        "targets": "the targets after risk (the engine's holds, no plugin's output)",
        "orders": "the order intents (the planner's, no plugin's output)",
    }.get(d.stage)
    if what is None:
        kind, _, name = d.stage.partition(" ")
        part = {"signal": "scores", "sizing": "targets", "risk": "targets or verdicts"}[kind]
        what = f"{kind} plugin {name!r} (its {part})"
    return what


def report_lines(report: LookaheadReport) -> list[str]:
    n = len(report.cuts)
    again = report.repeat is not None
    out = [
        f"lookahead-check of {report.run_id}: {n + 1 + again} backtests: the whole history "
        f"({report.bars_decided} bars decided), {n} with the data cut"
        + (", and the earliest cut again (reproducible?)" if again else "")
    ]
    if report.repeat is not None:
        out += _cut_lines(report.repeat, "second run", "first run")
    if not report.reproducible:
        out.append(
            "NOT REPRODUCIBLE: two runs on the same data decided differently: a plugin is "
            "nondeterministic (randomness without a seed, a set's order, the clock, state "
            "kept between runs); the differences below can be that as well as lookahead"
        )
    for c in report.cuts:
        out += _cut_lines(c, "cut", "whole history")
    if report.ok:
        out.append(
            "no lookahead found: every cut run decided its bars as the whole-history run did "
            "(a plugin reading the future from its own files is not covered)"
        )
    elif report.reproducible:
        out.append(
            "LOOKAHEAD: a plugin decided a bar differently when the data after it was cut; a "
            "difference at the last bar before a cut is what reading later data gives (a "
            "difference can also be nondeterminism the repeated run did not show)"
        )
    return out


def _cut_lines(c: CutResult, ours: str, theirs: str) -> list[str]:
    name = "repeat" if c.repeat else "cut"
    head = f"{name} after {c.cut.isoformat()}: {c.bars_compared} bar(s) compared"
    if c.ok:
        return [head + ", identical"]
    lines = [head + f", {c.differing_bars} differ"]
    d = c.first
    if d is not None:
        pos = " (the last bar before the cut)" if d.last_bar and not c.repeat else ""
        lines.append(f"  first difference at {d.time.isoformat()}{pos}: {_where(d)}")
        for item, a, b in d.values:
            lines.append(f"    {item}: {a} {ours}, {b} {theirs}")
        if d.also:
            lines.append(f"    also differing at that bar: {', '.join(d.also)}")
    if c.missing:
        lines.append(
            f"  {len(c.missing)} bar(s) decided by one run only, first {c.missing[0].isoformat()}"
        )
    if c.error is not None:
        lines.append(
            f"  the {'repeated' if c.repeat else 'cut'} run failed where the whole run did "
            f"not (a plugin reading past the data it was given?): {c.error}"
        )
    return lines


__all__ = [
    "CutResult",
    "Difference",
    "LookaheadReport",
    "compare_runs",
    "cut_panel",
    "cut_rows",
    "install_taps",
    "lookahead_check",
    "report_lines",
]
