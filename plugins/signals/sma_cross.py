"""Moving-average crossover: +1 while the fast average is above the slow one, -1 below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tradingd.core.ports import BarContext


@dataclass(frozen=True)
class SmaCrossConfig:
    fast: int = 50
    slow: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.fast < self.slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={self.fast}, slow={self.slow}")


class SmaCross:
    kind: ClassVar[str] = "signal"
    Config = SmaCrossConfig

    def __init__(self, config: SmaCrossConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "sma_cross"

    def required_features(self) -> tuple[str, ...]:
        return (f"sma_{self.config.fast}", f"sma_{self.config.slow}")

    def score(self, ctx: BarContext) -> np.ndarray:
        fast = ctx.features[f"sma_{self.config.fast}"]
        slow = ctx.features[f"sma_{self.config.slow}"]
        return np.sign(fast - slow)  # NaN while either average is warming up
