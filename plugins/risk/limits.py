"""Portfolio limits from the reference specification: position size, position count, gross."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tradingd.core.arrays import count_nonzero
from tradingd.core.ports import BarContext, RiskDecision
from tradingd.core.types import RiskVerdict

from .finite import nan_to_zero


@dataclass(frozen=True)
class MaxPositionConfig:
    max_position_pct: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.max_position_pct <= 1:
            raise ValueError(f"max_position_pct must be in (0, 1], got {self.max_position_pct}")


class MaxPosition:
    """Clips every target to +/- max_position_pct of equity."""

    kind: ClassVar[str] = "risk"
    Config = MaxPositionConfig

    def __init__(self, config: MaxPositionConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.symbols = symbols
        self.name = "max_position"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        cap = self.config.max_position_pct
        over = np.abs(np.asarray(targets)) > cap + 1e-12
        if not count_nonzero(over):
            # Every bar, and nearly always nothing to clip: a count is a fifth of nonzero().
            return RiskDecision(targets)
        over = over.ravel().nonzero()[0]
        # A NaN target counts as none (as in the other rules): never above the cap, it
        # went through np.clip into the clipped targets as NaN.
        out = np.clip(nan_to_zero(targets), -cap, cap)
        verdicts = tuple(
            RiskVerdict(
                self.name,
                self.symbols[i],
                "clip",
                f"target {targets[i]:.4f} exceeds max position {cap:.4f}",
                float(targets[i]),
                float(out[i]),
            )
            for i in over.tolist()
        )
        return RiskDecision(out, verdicts)


@dataclass(frozen=True)
class MaxOpenPositionsConfig:
    max_open_positions: int = 10

    def __post_init__(self) -> None:
        if self.max_open_positions < 1:
            raise ValueError(f"max_open_positions must be >= 1, got {self.max_open_positions}")


class MaxOpenPositions:
    """Allows at most N nonzero targets; held positions keep priority over new entries, then
    larger targets win. Rejected entries become 0 with a verdict."""

    kind: ClassVar[str] = "risk"
    Config = MaxOpenPositionsConfig

    def __init__(self, config: MaxOpenPositionsConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.symbols = symbols
        self.name = "max_open_positions"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        n = self.config.max_open_positions
        # A NaN target counts as none (as in the other rules): nonzero to flatnonzero, it
        # was counted as open, and a held symbol's kept its slot.
        t = nan_to_zero(targets)
        nz = np.flatnonzero(t)
        if nz.size <= n:
            return RiskDecision(targets)
        held = ctx.portfolio.quantity[nz] != 0
        order = np.lexsort((-np.abs(t[nz]), ~held))  # held first, then by size
        drop = nz[order[n:]]
        out = t
        out[drop] = 0.0
        verdicts = tuple(
            RiskVerdict(
                self.name,
                self.symbols[i],
                "reject",
                f"max open positions {n} reached",
                float(targets[i]),
                0.0,
            )
            for i in drop.tolist()
        )
        return RiskDecision(out, verdicts)


@dataclass(frozen=True)
class MaxGrossExposureConfig:
    max_gross_exposure: float = 1.0

    def __post_init__(self) -> None:
        # A fraction of equity (1.0 = 100%): 100.0 (10,000%) passed as a cap that caps
        # nothing. No US equity broker lends past 4x (Reg T: 2x overnight, 4x intraday).
        if not 0 < self.max_gross_exposure <= 4:
            raise ValueError(
                f"max_gross_exposure must be in (0, 4] (a fraction of equity: 1.0 = 100%; no "
                f"broker lends past 4x), got {self.max_gross_exposure}"
            )


class MaxGrossExposure:
    """Scales all targets down proportionally when their gross exceeds the limit."""

    kind: ClassVar[str] = "risk"
    Config = MaxGrossExposureConfig

    def __init__(self, config: MaxGrossExposureConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "max_gross_exposure"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        # A NaN target counts as none (as in the sector, correlation and VaR rules): summed
        # as is, one NaN made the gross NaN and every scaled target NaN.
        t = nan_to_zero(targets)
        gross = float(np.abs(t).sum())
        cap = self.config.max_gross_exposure
        if gross <= cap + 1e-12:
            return RiskDecision(targets)
        factor = cap / gross
        return RiskDecision(
            t * factor,
            (
                RiskVerdict(
                    self.name,
                    None,
                    "scale",
                    f"gross exposure {gross:.4f} above limit {cap:.4f}",
                    gross,
                    cap,
                ),
            ),
        )
