"""Return attribution of a run: which signal component earned the return, and how much of it
was the market's (docs/ATTRIBUTION.md has the method, the conventions and the references).

Components. The engine stores only the combined score of a bar (the `signals` table's
`score` and `target_weight`), not what each plugin or factor group said, so the components
are observed by replaying the run deterministically with taps: thin stand-ins for the signal
plugins, the sizing and the last risk plugin that record their outputs and change nothing
(the replay's equity is checked against the run's record). Each decision's combined score is
split into the signed contributions of the components (the ML signal, and the multi-factor
score's momentum, volatility and mean-reversion groups), and each bar's PnL of a position is
split in the proportions of the contributions of the decision that set the position (the
last rebalance that opened or added to it). PnL whose split is unknown goes to an explicit
`unattributed` line; costs (commission and slippage) and the accounting `residual` have lines
of their own, so the lines add up to the run's total return.

Risk. The per-bar returns are regressed on the benchmark's (ordinary least squares with an
intercept): beta x benchmark return is the systematic part of each bar, the rest the
idiosyncratic part, and their variance shares are R^2 and 1 - R^2.

Returns are money over the initial capital: a line's return is its PnL summed over the bars
divided by the initial capital, so the lines add up to the total return E_T / E_0 - 1 exactly
(up to rounding), with no linking of per-bar returns. Results are plain dicts of floats, ints
and strings (NaN where a number cannot be computed), for the JSON and HTML reports.

The components and the split of a score are in `attribution_components`, the replay in
`attribution_replay`, the PnL ledger in `attribution_ledger`, the beta decomposition and
the component table in `attribution_risk` and the re-runs without a component in
`attribution_counterfactual`; this module holds the configuration and the analyzer, and
re-exports them all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..build_info import Build, recorded_build, this_build
from ..core.errors import ConfigError
from ..logs import warnings_only_unless_configured
from .attribution_components import score_contributions
from .attribution_counterfactual import counterfactual_attribution
from .attribution_ledger import (
    COSTS,
    RESIDUAL,
    UNATTRIBUTED,
    Ledger,
    PnLAttribution,
    _utc_index,
    attribute_pnl,
    make_ledger,
    portfolio_marks,
)
from .attribution_models import refuse_other_data, replay_config
from .attribution_replay import Replay, replay_run
from .attribution_risk import beta_decomposition, component_attribution
from .benchmark import BENCHMARK_SOURCES, align_benchmark, load_benchmark
from .performance import PerformanceConfig
from .run_records import DEFAULT_PERIODS_PER_YEAR, RunRecord, periods_per_year_for, run_record

if TYPE_CHECKING:
    from ..config import Config
    from ..feeds.panel import Panel

__all__ = [
    "COSTS",
    "RESIDUAL",
    "UNATTRIBUTED",
    "AttributionAnalyzer",
    "AttributionConfig",
    "Ledger",
    "PnLAttribution",
    "Replay",
    "attribute_pnl",
    "attribute_run",
    "beta_decomposition",
    "component_attribution",
    "counterfactual_attribution",
    "make_ledger",
    "portfolio_marks",
    "replay_run",
    "score_contributions",
]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AttributionConfig:
    """What the attribution assumes. The benchmark keys are those of `PerformanceConfig`
    (the bundled S&P 500 index by default; "" for none). `split_groups`: split a signal
    plugin that reports factor groups (`group_scores`, as multi_factor does) into one
    component per group. `record_tolerance`: the largest difference between the replay's
    equity and the run record's, relative to the initial capital, before the replay is
    refused as not being that run. `periods_per_year` None: the run's own (its summary's,
    or for a replay without a record the bars a year its data's bars give), else 252."""

    periods_per_year: float | None = None
    benchmark: str = "SP500"
    benchmark_source: str = "bundled"
    benchmark_path: str = ""
    split_groups: bool = True
    record_tolerance: float = 1e-9

    def __post_init__(self) -> None:
        for key in ("periods_per_year", "record_tolerance"):
            value = getattr(self, key)
            if key == "periods_per_year" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"attribution.{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"attribution.{key} must be finite, got {value!r}")
        if not self.bars_a_year > 0:
            raise ConfigError(
                f"attribution.periods_per_year must be > 0, got {self.periods_per_year}"
            )
        if not self.record_tolerance >= 0:
            raise ConfigError(
                f"attribution.record_tolerance must be >= 0, got {self.record_tolerance}"
            )
        if not isinstance(self.split_groups, bool):
            raise ConfigError(
                f"attribution.split_groups must be true or false, got {self.split_groups!r}"
            )
        if self.benchmark_source not in BENCHMARK_SOURCES:
            raise ConfigError(
                f"attribution.benchmark_source {self.benchmark_source!r} is unknown; valid "
                f"choices: {', '.join(BENCHMARK_SOURCES)}"
            )
        if self.benchmark and self.benchmark_source != "bundled" and not self.benchmark_path:
            raise ConfigError(
                "attribution.benchmark_path is required when attribution.benchmark_source = "
                f"{self.benchmark_source!r}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "attribution") -> AttributionConfig:
        """From a TOML table (unknown keys and bad types are ConfigErrors naming the key)."""
        from ..config import build

        return build(cls, data, where)

    @property
    def bars_a_year(self) -> float:
        """`periods_per_year`, or 252 where it is left to a run and there is none."""
        return DEFAULT_PERIODS_PER_YEAR if self.periods_per_year is None else self.periods_per_year

    def for_run(self, run: RunRecord | None) -> AttributionConfig:
        """This configuration with the bars a year to annualise `run` with
        (`run_records.periods_per_year_for`)."""
        ppy = periods_per_year_for(self.periods_per_year, run, "attribution.periods_per_year")
        return dataclasses.replace(self, periods_per_year=ppy)

    def performance_config(self) -> PerformanceConfig:
        """The benchmark part, in the form `benchmark.load_benchmark` takes."""
        return PerformanceConfig(
            periods_per_year=self.periods_per_year,
            benchmark=self.benchmark,
            benchmark_source=self.benchmark_source,
            benchmark_path=self.benchmark_path,
        )


# ----------------------------------------------------------------------------- analyzer


def _compare(
    replayed: RunRecord,
    recorded: RunRecord,
    tolerance: float,
    recorded_by: Build | None = None,
) -> float:
    """The largest equity difference between the replay and the record, over the initial
    capital; ValueError when they are not the same run. It names the bar where they first
    part (the largest gap comes bars later, after the paths diverged, and said nothing of
    where to look) and, when the record names another commit than this build's
    (`recorded_by`), the build difference as the likely cause."""
    if (
        len(replayed.times) != len(recorded.times)
        or not (_utc_index(replayed.times).asi8 == _utc_index(recorded.times).asi8).all()
    ):
        raise ValueError(
            f"the replay has {len(replayed.times)} bars and the record {len(recorded.times)} "
            "(or other times): not the same run (config, data or dates differ)"
        )
    if replayed.initial_capital != recorded.initial_capital:
        raise ValueError(
            f"the replay starts with {replayed.initial_capital} and the record with "
            f"{recorded.initial_capital}: not the same run"
        )
    gap = np.abs(replayed.equity - recorded.equity) / recorded.initial_capital
    worst = float(gap.max()) if gap.size else 0.0
    if worst > tolerance:
        first = int(np.argmax(gap > tolerance))
        here = this_build()
        cause = "another model version, config or data?"
        then = "attribute it with the configuration, data and model it was made with"
        if recorded_by is not None and recorded_by.differs_from(here):
            cause = (
                f"likely the code: the record was made by {recorded_by.label()}, this is "
                f"{here.label()}; else another model version, config or data"
            )
            then = (
                "attribute it with the build that made it, or run the backtest again with "
                "this build and attribute that run"
            )
        raise ValueError(
            f"the replay's equity first differs from the record's at {recorded.times[first]} "
            f"(by {float(gap[first]):.3g} of the initial capital; at most {worst:.3g}, at "
            f"{recorded.times[int(np.argmax(gap))]}; tolerance {tolerance:g}): not the same "
            f"run ({cause}); attributing it would describe another run: {then}"
        )
    return worst


class AttributionAnalyzer:
    """Component and risk attribution of a run (see the module's docstring).

    `benchmark`: a level series to use instead of loading the configured one (an empty
    Series for none), as for `PerformanceAnalyzer`."""

    def __init__(
        self, config: AttributionConfig | None = None, *, benchmark: pd.Series | None = None
    ) -> None:
        self.config = config or AttributionConfig()
        self._benchmark = benchmark
        self._explicit = self._loaded = benchmark is not None

    def benchmark(self) -> pd.Series | None:
        if not self._loaded:
            self._benchmark = load_benchmark(self.config.performance_config())
            self._loaded = True
        return self._benchmark

    def benchmark_returns(self, times: Any) -> np.ndarray:
        levels = self.benchmark()
        n = len(times)
        if levels is None or len(levels) == 0:
            return np.full(n, np.nan)
        return align_benchmark(times, levels)

    def risk_decomposition(self, backtest_results: Any) -> dict[str, float]:
        """`beta_decomposition` of any run shape `run_records.run_record` reads, annualised
        with the run's own bars a year unless the configuration sets them."""
        rec = run_record(backtest_results)
        return beta_decomposition(
            rec.equity,
            rec.initial_capital,
            self.benchmark_returns(rec.times),
            self.config.for_run(rec).bars_a_year,
        )

    def attribute(self, replay: Replay, record: Any = None) -> dict[str, Any]:
        """Both attributions of a replay; `record` (any run shape) is the run it must
        reproduce. Annualised with the run's own bars a year (the record's, else the
        replay's) unless the configuration sets them."""
        worst = None
        recorded = None
        if record is not None:
            recorded = run_record(record)
            recorded_by = recorded_build(Path(record)) if isinstance(record, str | Path) else None
            worst = _compare(replay.record, recorded, self.config.record_tolerance, recorded_by)
        b = self.benchmark_returns(replay.record.times)
        pnl = attribute_pnl(replay.ledger, replay.decisions, replay.components)
        rec = replay.record
        levels = self.benchmark()
        c = self.config.for_run(recorded if recorded is not None else rec)
        return {
            "run_id": rec.run_id,
            "start": rec.times[0].isoformat() if len(rec.times) else None,
            "end": rec.times[-1].isoformat() if len(rec.times) else None,
            "components": component_attribution(pnl, b),
            "risk": beta_decomposition(rec.equity, rec.initial_capital, b, c.bars_a_year),
            "benchmark": {
                "name": ("given series" if self._explicit else c.benchmark)
                if levels is not None and len(levels)
                else "",
                "bars": int(np.isfinite(b).sum()),
            },
            "replay": {
                "compared_with_record": record is not None,
                "max_equity_difference": worst,
                # The ledger's book (from the fills) against the engine's: 0 unless the
                # fills do not tell the whole story.
                "final_quantity_difference": float(
                    np.max(np.abs(pnl.final_quantity - replay.final_quantity), initial=0.0)
                ),
                "score_mismatches": replay.score_mismatches,
                "signal_weights": dict(replay.weights),
                "components": list(replay.components),
                **replay.diagnostics,
            },
            "config": dataclasses.asdict(c),
        }

    async def analyze(
        self,
        run_config: Config,
        *,
        panel: Panel | None = None,
        record: Any = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Replay the run of `run_config` and attribute it (see `attribute`). A `record`
        folder is replayed with its run id and the models it names (`replay_config`).

        Logs warnings and errors only, unless structlog was configured before the call
        (`tradingd.logs.configure_logging`), as the strategy API's backtests do: left
        unconfigured, a notebook got a debug line per risk verdict of the replay."""
        with warnings_only_unless_configured():
            if isinstance(record, str | Path):
                run_config = replay_config(run_config, Path(record))
                if panel is None:  # a panel passed in is the caller's data, not the files'
                    refuse_other_data(run_config, Path(record))
            replay = await replay_run(
                run_config, panel=panel, split_groups=self.config.split_groups, progress=progress
            )
            return self.attribute(replay, record)


async def attribute_run(
    run_config: Config,
    *,
    panel: Panel | None = None,
    record: Any = None,
    config: AttributionConfig | None = None,
    benchmark: pd.Series | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`AttributionAnalyzer(config, benchmark=...).analyze(run_config, ...)`."""
    return await AttributionAnalyzer(config, benchmark=benchmark).analyze(
        run_config, panel=panel, record=record, progress=progress
    )
