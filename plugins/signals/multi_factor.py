"""Multi-factor scoring (the specification's "Trading Strategy: Multi-Factor Scoring").

Ten factors in three groups, each read from the engine's feature catalogue (nothing is
computed here but the cross-sectional arithmetic, so a replay and the live daemon score the same
numbers by construction):

  group / factor        catalogue feature                       higher score when
  momentum
    rsi                 rsi_{rsi_period} (RSI / 100, 0-1)       RSI is strong
    macd                macd_hist_norm (histogram / close)      MACD is above its signal line
    roc                 roc_{roc_period}                        price rose over the period
    price_momentum      trend_{trend_fast}_{trend_slow}         the fast SMA is above the slow
  volatility
    atr                 natr_{atr_period} (ATR / close)         ATR is LOW (enters negated)
    bollinger_position  bb_position (0 lower, 1 upper band)     close is near the upper band
    volatility_regime   vol_regime_{vol_short}_{vol_long}       volatility is FALLING (negated)
  mean_reversion
    rsi_divergence      rsi_div_{rsi_period}_{divergence_bars}  RSI held up better than price
    bollinger_reversion bb_reversion (band widths outside)      close is below the lower band
    oversold_overbought rsi_obos_{rsi_period}_{oversold}_{overbought}
                                                                RSI is oversold

Each factor is oriented so that higher means "more bullish" under the usual reading (the ATR and
volatility-regime features enter with a minus sign: the low-volatility effect, and risk-off when
short-term volatility rises above its long-run level). MACD and Bollinger periods are the
engine's `[features.indicators]`; the other periods are this plugin's parameters, with the
specification's defaults (RSI 14, ROC 10, ATR 14, oversold / overbought at RSI 30 / 70).

Per bar:
  1. The universe is the symbols that are ready (every required feature past its warm-up; the
     engine's `ctx.ready`, or `tradable` in a hand-built context) and have finite values.
  2. Each factor is normalised across that universe: `normalize = "rank"` (average ranks
     mapped to [-1, 1]; robust to outliers and to the different units of the factors) or
     `"zscore"` (capped at +/- `z_cap`). Symbols outside the universe do not move anyone's
     normalised value. Fewer than two symbols: no cross-section, no view.
  3. Factor weights are normalised within their group (by the sum of their absolute values)
     and group weights across groups, so the weighted sum of rank-normalised factors stays in
     [-1, 1]. A negative weight turns a factor (or group) around; a weight of 0 removes the
     factor, and its feature is not required.
  4. The score is tanh(sum / `scale`) (`output = "tanh"`), or the sum's own cross-sectional
     rank in [-1, 1] (`output = "rank"`: a uniform spread of views every bar). Symbols outside
     the universe get NaN ("no view").

Defaults. The specification names the factors but gives no weights. Factors weigh equally
within their group (no evidence here to prefer one), and the groups weigh momentum 0.5,
volatility 0.25, mean reversion 0.25: the strategy is "multi-factor momentum", so momentum leads
and the two other groups together balance it (mean reversion partly opposes momentum by design;
at equal group weights they would largely cancel). The short-term price trend is the 5-bar over
the 20-bar moving average (a smoothed trend, where ROC is point-to-point); the volatility regime
compares 20- and 120-bar return volatility (as `default_v1` does); the RSI divergence looks back
14 bars, one RSI period. `scale = 0.5` maps a typical rank-weighted sum (about +/- 0.2) to
scores of about +/- 0.4 and the extreme (+/- 1) to +/- 0.96.

`factor_scores(ctx)` and `group_scores(ctx)` give the normalised factors and each group's part
(for attribution). In a config (unknown keys are errors that name them):

    [[signals]]
    name = "multi_factor"
    [signals.params]
    normalize = "rank"
    group_weights = { momentum = 0.5, volatility = 0.25, mean_reversion = 0.25 }
    momentum = { macd = 0.0 }      # drops the MACD factor (and its feature)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from tradingd.core.ports import BarContext
from tradingd.features.catalog import cross_section, cross_section_rows

NORMALIZE = ("rank", "zscore")
OUTPUT = ("tanh", "rank")
GROUPS = ("momentum", "volatility", "mean_reversion")
# -1: the catalogue's value points the other way (higher = less attractive)
ORIENTATION = {"atr": -1.0, "volatility_regime": -1.0}


def _check_weights(obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        w = getattr(obj, f.name)
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise ValueError(f"{f.name} must be a finite number, got {w!r}")


@dataclass(frozen=True)
class MomentumWeights:
    rsi: float = 1.0
    macd: float = 1.0
    roc: float = 1.0
    price_momentum: float = 1.0

    def __post_init__(self) -> None:
        _check_weights(self)


@dataclass(frozen=True)
class VolatilityWeights:
    atr: float = 1.0
    bollinger_position: float = 1.0
    volatility_regime: float = 1.0

    def __post_init__(self) -> None:
        _check_weights(self)


@dataclass(frozen=True)
class MeanReversionWeights:
    rsi_divergence: float = 1.0
    bollinger_reversion: float = 1.0
    oversold_overbought: float = 1.0

    def __post_init__(self) -> None:
        _check_weights(self)


@dataclass(frozen=True)
class GroupWeights:
    momentum: float = 0.5
    volatility: float = 0.25
    mean_reversion: float = 0.25

    def __post_init__(self) -> None:
        _check_weights(self)


@dataclass(frozen=True)
class MultiFactorConfig:
    group_weights: GroupWeights = field(default_factory=GroupWeights)
    momentum: MomentumWeights = field(default_factory=MomentumWeights)
    volatility: VolatilityWeights = field(default_factory=VolatilityWeights)
    mean_reversion: MeanReversionWeights = field(default_factory=MeanReversionWeights)
    normalize: str = "rank"  # rank | zscore: each factor across the universe at the bar
    z_cap: float = 3.0  # zscore only: |z| capped here (0 = no cap)
    output: str = "tanh"  # tanh | rank: how the weighted sum becomes a score in [-1, 1]
    scale: float = 0.5  # tanh only: score = tanh(weighted sum / scale)
    rsi_period: int = 14
    roc_period: int = 10
    trend_fast: int = 5
    trend_slow: int = 20
    atr_period: int = 14
    vol_short: int = 20
    vol_long: int = 120
    divergence_bars: int = 14
    oversold: int = 30
    overbought: int = 70

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ValueError(
                f"normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}"
            )
        if self.output not in OUTPUT:
            raise ValueError(f"output must be one of {', '.join(OUTPUT)}, got {self.output!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if not self.z_cap >= 0:
            raise ValueError(f"z_cap must be >= 0 (0 = no cap), got {self.z_cap}")
        for key in ("rsi_period", "roc_period", "atr_period", "divergence_bars"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 1 <= self.trend_fast < self.trend_slow:
            raise ValueError(
                "trend_fast must be >= 1 and < trend_slow, "
                f"got {self.trend_fast}, {self.trend_slow}"
            )
        if not 2 <= self.vol_short < self.vol_long:
            raise ValueError(
                f"vol_short must be >= 2 and < vol_long, got {self.vol_short}, {self.vol_long}"
            )
        if not 0 < self.oversold < self.overbought < 100:
            raise ValueError(
                "oversold and overbought must satisfy 0 < oversold < overbought < 100 "
                f"(RSI points), got {self.oversold}, {self.overbought}"
            )
        live = [g for g in GROUPS if getattr(self.group_weights, g) != 0]
        if not live:
            raise ValueError("group_weights: at least one group needs a nonzero weight")
        for g in live:
            if all(getattr(getattr(self, g), f.name) == 0 for f in fields(getattr(self, g))):
                raise ValueError(
                    f"group_weights.{g} = {getattr(self.group_weights, g)} but every {g}.* "
                    f"factor weight is 0: give a factor a weight or set group_weights.{g} = 0"
                )

    def factor_features(self) -> dict[str, str]:
        """factor -> the catalogue feature it reads."""
        return {
            "rsi": f"rsi_{self.rsi_period}",
            "macd": "macd_hist_norm",
            "roc": f"roc_{self.roc_period}",
            "price_momentum": f"trend_{self.trend_fast}_{self.trend_slow}",
            "atr": f"natr_{self.atr_period}",
            "bollinger_position": "bb_position",
            "volatility_regime": f"vol_regime_{self.vol_short}_{self.vol_long}",
            "rsi_divergence": f"rsi_div_{self.rsi_period}_{self.divergence_bars}",
            "bollinger_reversion": "bb_reversion",
            "oversold_overbought": (
                f"rsi_obos_{self.rsi_period}_{self.oversold}_{self.overbought}"
            ),
        }

    def weights(self) -> dict[str, tuple[float, dict[str, float]]]:
        """group -> (group weight, {factor: weight within the group}), each normalised by
        the sum of absolute values; groups and factors of weight 0 are left out."""
        total = sum(abs(getattr(self.group_weights, g)) for g in GROUPS)
        out: dict[str, tuple[float, dict[str, float]]] = {}
        for g in GROUPS:
            gw = getattr(self.group_weights, g)
            if gw == 0:
                continue
            ws = {f.name: getattr(getattr(self, g), f.name) for f in fields(getattr(self, g))}
            within = sum(abs(w) for w in ws.values())
            out[g] = (gw / total, {f: w / within for f, w in ws.items() if w != 0})
        return out

    def effective_weights(self) -> dict[str, float]:
        """factor -> its weight in the final sum of oriented, normalised factors (nonzero
        only; the absolute values sum to 1)."""
        return {f: gw * w for gw, ws in self.weights().values() for f, w in ws.items()}


class MultiFactor:
    kind: ClassVar[str] = "signal"
    Config = MultiFactorConfig

    def __init__(self, config: MultiFactorConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "multi_factor"
        self.groups = config.weights()
        feats = config.factor_features()
        # factor -> catalogue feature, for the factors that count and nothing else
        self.features = {f: feats[f] for _, ws in self.groups.values() for f in ws}

    def required_features(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.features.values()))

    def universe(self, ctx: BarContext) -> np.ndarray:
        """(N,) bool: the symbols scored at this bar."""
        ok = np.asarray(ctx.tradable, bool).copy()
        if ctx.ready is not None:
            ok &= ctx.ready
        for feat in self.features.values():
            ok &= np.isfinite(ctx.features[feat])
        return ok

    def factor_scores(self, ctx: BarContext) -> dict[str, np.ndarray]:
        """factor -> (N,) normalised across the universe and oriented; NaN outside it."""
        c = self.config
        ok = self.universe(ctx)
        # All factors at once: they share the universe, so one ranking of the (factors, N)
        # matrix (cross_section_rows) instead of a dozen array calls per factor every bar.
        factors = list(self.features.items())
        if not factors:
            return {}
        x = np.where(
            ok,
            np.stack([np.asarray(ctx.features[f], dtype=np.float64) for _, f in factors]),
            np.nan,
        )
        normalised = cross_section_rows(x, c.normalize)
        out: dict[str, np.ndarray] = {}
        for row, (factor, _) in enumerate(factors):
            z = normalised[row] * ORIENTATION.get(factor, 1.0)
            if c.normalize == "zscore" and c.z_cap > 0:
                z = np.clip(z, -c.z_cap, c.z_cap)
            out[factor] = z
        return out

    def group_scores(self, ctx: BarContext) -> dict[str, np.ndarray]:
        """group -> (N,) weighted mean of its normalised factors (the group's contribution
        before the group weight); NaN outside the universe."""
        z = self.factor_scores(ctx)
        out: dict[str, np.ndarray] = {}
        for g, (_, ws) in self.groups.items():
            acc = np.zeros(len(ctx.symbols))
            for f, w in ws.items():
                acc += w * z[f]
            out[g] = acc
        return out

    def score(self, ctx: BarContext) -> np.ndarray:
        c = self.config
        total = np.zeros(len(ctx.symbols))
        for g, part in self.group_scores(ctx).items():
            total += self.groups[g][0] * part
        if c.output == "rank":
            return cross_section(total, "rank")
        return np.tanh(total / c.scale)
