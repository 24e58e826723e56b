"""Streaming features the engine computes once per bar for every plugin.

Each feature is named by a pattern with its lookback in the name (`return_126`, `sma_50`), so
the history the engine must keep follows from the configured plugins. Features only read the
history window, which holds bars up to the current one: a feature cannot see the future. The
TA-Lib indicator set and the full feature engineering plug in here (a later issue).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..core.errors import ConfigError
from ..core.ports import HistoryView


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    lookback: int  # bars of history needed, including the current bar
    compute: Callable[[HistoryView], np.ndarray]


def _return(n: int) -> FeatureSpec:
    def f(h: HistoryView) -> np.ndarray:
        w = h.window("close", n + 1)
        return w[-1] / w[0] - 1.0

    return FeatureSpec(f"return_{n}", n + 1, f)


def _sma(n: int) -> FeatureSpec:
    def f(h: HistoryView) -> np.ndarray:
        return h.window("close", n).mean(axis=0)

    return FeatureSpec(f"sma_{n}", n, f)


def _volatility(n: int) -> FeatureSpec:
    def f(h: HistoryView) -> np.ndarray:
        w = h.window("close", n + 1)
        r = np.diff(np.log(w), axis=0)
        return r.std(axis=0, ddof=1)

    return FeatureSpec(f"volatility_{n}", n + 1, f)


_PATTERNS: dict[str, Callable[[int], FeatureSpec]] = {
    "return": _return,
    "sma": _sma,
    "volatility": _volatility,
}
_NAME = re.compile(r"^([a-z]+)_(\d+)$")


def resolve(name: str) -> FeatureSpec:
    m = _NAME.match(name)
    if not m or m.group(1) not in _PATTERNS or int(m.group(2)) < 1:
        raise ConfigError(
            f"unknown feature {name!r}; valid: " + ", ".join(f"{p}_<n>" for p in sorted(_PATTERNS))
        )
    return _PATTERNS[m.group(1)](int(m.group(2)))


class FeatureStage:
    """Computes the union of the features plugins asked for, once per bar."""

    def __init__(self, names: Iterable[str]) -> None:
        self._specs = [resolve(n) for n in sorted(set(names))]

    @property
    def lookback(self) -> int:
        return max((s.lookback for s in self._specs), default=1)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._specs)

    def compute(self, history: HistoryView) -> Mapping[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {s.name: s.compute(history) for s in self._specs}
