"""Circuit breakers from the reference specification: max drawdown 20%, daily loss 5%.

Breaching either blocks new exposure: targets may only move toward zero (reductions and exits
still go through, entries and increases do not). The drawdown halt persists until equity
recovers above the limit; the daily-loss block lasts for the bar on which it was breached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tradingd.core.ports import BarContext, RiskDecision
from tradingd.core.types import RiskVerdict


@dataclass(frozen=True)
class DrawdownGuardConfig:
    max_drawdown_pct: float = 0.20
    daily_loss_limit_pct: float = 0.05
    # Close everything on a drawdown breach instead of only blocking new exposure.
    flatten_on_breach: bool = False

    def __post_init__(self) -> None:
        for name in ("max_drawdown_pct", "daily_loss_limit_pct"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v}")


class DrawdownGuard:
    kind: ClassVar[str] = "risk"
    Config = DrawdownGuardConfig

    def __init__(self, config: DrawdownGuardConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "drawdown_guard"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        pf = ctx.portfolio
        c = self.config
        drawdown = 1.0 - pf.equity / pf.peak_equity if pf.peak_equity > 0 else 0.0
        day_loss = 1.0 - pf.equity / pf.day_start_equity if pf.day_start_equity > 0 else 0.0
        if drawdown >= c.max_drawdown_pct:
            reason = f"drawdown {drawdown:.2%} >= limit {c.max_drawdown_pct:.2%}"
            if c.flatten_on_breach:
                return RiskDecision(
                    np.zeros_like(targets),
                    (
                        RiskVerdict(
                            self.name, None, "flatten", reason, drawdown, c.max_drawdown_pct
                        ),
                    ),
                )
            return self._block(targets, pf.weights, reason, drawdown, c.max_drawdown_pct)
        if day_loss >= c.daily_loss_limit_pct:
            reason = f"daily loss {day_loss:.2%} >= limit {c.daily_loss_limit_pct:.2%}"
            return self._block(targets, pf.weights, reason, day_loss, c.daily_loss_limit_pct)
        return RiskDecision(targets)

    def _block(
        self, targets: np.ndarray, current: np.ndarray, reason: str, value: float, limit: float
    ) -> RiskDecision:
        # Keep a target only if it moves the position toward zero without crossing it.
        toward_zero = (np.abs(targets) <= np.abs(current)) & (targets * current >= 0)
        out = np.where(toward_zero, targets, current)
        return RiskDecision(out, (RiskVerdict(self.name, None, "halt", reason, value, limit),))
