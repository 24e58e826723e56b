"""Time-series price momentum: long what has risen over the lookback, short what has fallen.

The score is tanh(return over `lookback` bars / `scale`), so its sign is the direction of the
trend and its size saturates smoothly; `skip` excludes the most recent bars, the usual guard
against short-term reversal (Jegadeesh and Titman's 12-1 momentum uses skip = 21).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tradingd.core.ports import BarContext


@dataclass(frozen=True)
class MomentumConfig:
    lookback: int = 126
    skip: int = 0
    scale: float = 0.2

    def __post_init__(self) -> None:
        if self.lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {self.lookback}")
        if not 0 <= self.skip < self.lookback:
            raise ValueError(f"skip must be in [0, lookback), got {self.skip}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


class Momentum:
    kind: ClassVar[str] = "signal"
    Config = MomentumConfig

    def __init__(self, config: MomentumConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "momentum"
        self._name = self._feature()  # read on every bar: built once (the config is frozen)

    def _feature(self) -> str:
        c = self.config
        # The return from t-lookback to t-skip is the (lookback-skip)-bar return, skip bars ago.
        ret = f"return_{c.lookback - c.skip}"
        return f"lag_{c.skip}_{ret}" if c.skip else ret

    def required_features(self) -> tuple[str, ...]:
        return (self._name,)

    def score(self, ctx: BarContext) -> np.ndarray:
        x = ctx.features[self._name] / self.config.scale
        # tanh into the quotient's own array (a new one): one array made a bar, not two.
        return np.tanh(x, out=x)
