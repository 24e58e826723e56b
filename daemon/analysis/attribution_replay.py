"""The attribution's replay of a backtest: taps (thin stand-ins for the signal plugins, the
sizing and the last risk plugin) that record each decision's scores and targets and change
nothing, and the deterministic re-run of the engine with them (`replay_run`). The only part
of the attribution that runs the engine; the math it feeds is in `attribution_ledger`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import structlog

from .attribution_components import (
    _SCORE_TOL,
    _components_of,
    _group_parts,
    score_contributions,
)
from .attribution_ledger import Ledger, _utc_index, make_ledger, portfolio_marks
from .run_records import RunRecord, run_record

if TYPE_CHECKING:
    from ..config import Config
    from ..core.ports import BarContext
    from ..engine.engine import Engine, Pipeline
    from ..feeds.panel import Panel

__all__ = ["Replay", "replay_run"]

log = structlog.get_logger(__name__)


class _Tap:
    """Stands in for a plugin in the engine's pipeline and forwards everything to it."""

    def __init__(self, inner: Any, recorder: _Recorder, label: str = "") -> None:
        self._inner = inner
        self.__wrapped__ = inner  # the plugin's own code, for a fault's line (`_fault_at`)
        self._recorder = recorder
        self._label = label

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _SignalTap(_Tap):
    def score(self, ctx: BarContext) -> Any:
        s = self._inner.score(ctx)
        parts = _group_parts(self._inner, ctx) if self._recorder.split_groups else None
        self._recorder.signal(self._label, ctx.time, s, parts)
        return s


class _SizingTap(_Tap):
    def size(self, score: np.ndarray, ctx: BarContext) -> Any:
        self._recorder.combined(ctx.time, score)
        targets = self._inner.size(score, ctx)
        if self._recorder.final is self:
            self._recorder.targets(ctx, targets)
        return targets


class _RiskTap(_Tap):
    def check(self, targets: np.ndarray, ctx: BarContext) -> Any:
        decision = self._inner.check(targets, ctx)
        self._recorder.targets(ctx, getattr(decision, "targets", targets))
        return decision


class _Recorder:
    """Collects, per trading bar, the decisions with a nonzero target and the components of
    their scores. Only rows of nonzero targets are kept (a handful per bar)."""

    def __init__(self, symbols: tuple[str, ...], weights: dict[str, float], split_groups: bool):
        self.symbols = symbols
        self.weights = weights
        self.split_groups = split_groups
        self.final: _Tap | None = None
        self._scores: dict[str, tuple[Any, np.ndarray, dict[str, np.ndarray] | None]] = {}
        self._combined: tuple[Any, np.ndarray] | None = None
        self.rows: list[tuple[Any, ...]] = []
        self.columns: list[str] | None = None
        self.mismatches = 0

    def signal(self, name: str, time: Any, s: Any, parts: dict[str, np.ndarray] | None) -> None:
        self._scores[name] = (time, np.array(s, dtype=float), parts)

    def combined(self, time: Any, score: np.ndarray) -> None:
        self._combined = (time, np.array(score, dtype=float))

    def targets(self, ctx: BarContext, targets: Any) -> None:
        t = np.nan_to_num(np.asarray(targets, dtype=float), nan=0.0)
        idx = np.flatnonzero(t != 0)
        if idx.size == 0:
            return
        stale = [n for n, (at, _, _) in self._scores.items() if at != ctx.time]
        if stale or self._combined is None or self._combined[0] != ctx.time:
            raise RuntimeError(
                f"attribution replay: the scores of bar {ctx.time} were not all seen "
                f"(stale: {stale or 'combined score'})"
            )
        contrib = score_contributions(
            {n: s[idx] for n, (_, s, _) in self._scores.items()},
            self.weights,
            {
                n: {g: v[idx] for g, v in parts.items()}
                for n, (_, _, parts) in self._scores.items()
                if parts is not None
            },
        )
        names = list(contrib)
        if self.columns is None:
            self.columns = names
        elif names != self.columns:
            raise RuntimeError(
                f"attribution replay: components changed from {self.columns} "
                f"to {names} at {ctx.time}"
            )
        c = np.column_stack([contrib[n] for n in names])
        score = self._combined[1][idx]
        total = c.sum(axis=1)
        off = np.isfinite(score) & (
            np.abs(total - score) > _SCORE_TOL * np.maximum(1, np.abs(score))
        )
        if off.any():
            # Never expected (the engine's own formula): counted, and those rows unattributed.
            self.mismatches += int(off.sum())
            log.warning("attribution.score_mismatch", time=ctx.time, symbols=int(off.sum()))
            c[off] = np.nan
        for j, i in enumerate(idx.tolist()):
            self.rows.append((ctx.time, self.symbols[i], float(t[i]), float(score[j]), *c[j]))

    def frame(self, components: Sequence[str]) -> pd.DataFrame:
        cols = ["time", "symbol", "target", "score", *(self.columns or components)]
        return pd.DataFrame(self.rows, columns=cols)


def _install_taps(
    pipeline: Pipeline, symbols: tuple[str, ...], split_groups: bool
) -> tuple[_Recorder, list[str]]:
    labels, components, weights = _components_of(pipeline, split_groups)
    rec = _Recorder(symbols, weights, split_groups)
    pipeline.signals = [
        (_SignalTap(p, rec, label), w)  # type: ignore[misc]
        for label, (p, w) in zip(labels, pipeline.signals, strict=True)
    ]
    pipeline.sizing = _SizingTap(pipeline.sizing, rec)  # type: ignore[assignment]
    if pipeline.risks:
        pipeline.risks[-1] = _RiskTap(pipeline.risks[-1], rec)  # type: ignore[call-overload]
        rec.final = pipeline.risks[-1]  # type: ignore[assignment]
    else:
        rec.final = pipeline.sizing  # type: ignore[assignment]
    return rec, components


@dataclass
class Replay:
    """A run replayed with taps: its record, its ledger, the decisions with the components
    of their scores, and checks that the replay is the run."""

    record: RunRecord
    ledger: Ledger
    decisions: pd.DataFrame
    components: tuple[str, ...]
    weights: dict[str, float]
    final_quantity: np.ndarray  # the engine's book at the end, to check the ledger against
    score_mismatches: int
    diagnostics: dict[str, Any] = field(default_factory=dict)


def _replay_config(config: Config, workdir: Path) -> Config:
    """The run's configuration with its identity kept (run id) and its side effects sent
    to a scratch place: an in-memory store and audit files in `workdir`."""
    from ..app import run_id_for

    return dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, run_id=run_id_for(config, "backtest")),
        storage=dataclasses.replace(config.storage, url="sqlite:///:memory:", signals="none"),
        log=dataclasses.replace(config.log, audit_dir=str(workdir / "audit")),
    )


async def _run(
    config: Config,
    panel: Panel,
    progress: bool,
    prepare: Any = None,
) -> tuple[Engine, Any, list[dict[str, Any]]]:
    import sys

    from tqdm import tqdm

    from ..app import build_engine

    fills: list[dict[str, Any]] = []

    async def collect(engine: Engine) -> None:
        fills.extend(await engine.store.fetch("fills", engine.run.run_id))

    bar = tqdm(
        total=len(panel.times),
        unit="bar",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.5,
        desc="replay",
    )
    with tempfile.TemporaryDirectory(prefix="tradingd-attribution-") as tmp:
        engine = build_engine(
            _replay_config(config, Path(tmp)),
            "backtest",
            panel=panel,
            on_bar=lambda i, t: bar.update(1),
            before_stop=collect,
        )
        extra = prepare(engine) if prepare is not None else None
        try:
            result = await engine.run_until_done()
        finally:
            bar.close()
    return engine, (result, extra), fills


async def replay_run(
    config: Config,
    *,
    panel: Panel | None = None,
    split_groups: bool = True,
    progress: bool = False,
) -> Replay:
    """Replay the backtest of `config` (on `panel`, or the configured data) with taps that
    record every plugin's scores and the final targets. Deterministic, so the replay is the
    run (`AttributionAnalyzer.analyze` checks it against the run's record when given)."""
    from ..app import load_data, run_defaults

    panel = panel if panel is not None else load_data(config)

    def prepare(engine: Engine) -> tuple[_Recorder, list[str]]:
        return _install_taps(engine.pipeline, engine.symbols, split_groups)

    engine, (result, (rec, components)), fills = await _run(config, panel, progress, prepare)
    times = _utc_index(result.times) if result.times else pd.DatetimeIndex([], tz="UTC")
    rows_of = {t: i for i, t in enumerate(_utc_index(panel.times))}
    rows = np.asarray([rows_of[t] for t in times], dtype=np.int64)
    marks = portfolio_marks(panel.close, panel.split)[rows]
    ledger = make_ledger(
        times,
        panel.symbols,
        marks,
        result.equity,
        config.run.initial_capital,
        fills=fills,
        split=panel.split[rows],
        dividend=panel.dividend[rows],
    )
    decisions = rec.frame(components)
    # The bars a year the run's summary annualised with (`backtest.run_backtest`), for an
    # attribution of a replay given no record.
    year = run_defaults(
        config, getattr(engine, "data_bar", "1d"), getattr(engine, "data_ppy", None)
    )
    record = run_record(
        {
            "equity_curve": np.asarray(result.equity, dtype=float),
            "times": times,
            "initial_capital": config.run.initial_capital,
            "gross_exposure": np.asarray(result.gross_exposure, dtype=float),
            "fills": fills,
            "run_id": result.run_id,
            "metrics": year,
        }
    )
    return Replay(
        record=record,
        ledger=ledger,
        decisions=decisions,
        components=tuple(components),
        weights=dict(rec.weights),
        final_quantity=engine.portfolio.quantity.copy(),
        score_mismatches=rec.mismatches,
        diagnostics={"warmup_bars": result.warmup_bars, "fills": len(fills)},
    )
