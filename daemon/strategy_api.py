"""The reference specification's Strategy and Backtesting APIs, as thin facades.

For notebooks: the classes and methods of the specification's API Reference
(`SignalGenerator`, `PositionSizer`, `RiskManager`, `EnsemblePredictor`, `BacktestEngine`)
call the plugins and the engine that `tradingd backtest` runs, so the numbers are the same:

    from tradingd.feeds.loaders import load_frame
    from tradingd.strategy_api import (BacktestEngine, EnsemblePredictor, PositionSizer,
                                       RiskManager, SignalGenerator)

    frame = load_frame("bundled")
    data = {s: g.drop(columns="symbol").set_index("time") for s, g in frame.groupby("symbol")}
    out = BacktestEngine(100_000.0, 0.001, 0.0005).run_backtest(
        data, SignalGenerator(), PositionSizer(), RiskManager(), EnsemblePredictor(),
        start="2016-01-01", end="2017-12-31")
    out["equity_curve"], out["fills"], out["metrics"]

What fronts what:

* `SignalGenerator` -> the signal plugins `ml_ensemble` (weight `ml_weight`) and
  `multi_factor` (weight `factor_weight`). The engine combines signal scores as a weighted
  mean over the plugins that have a view (`Engine._score`), and `ml_ensemble` scores
  signal x confidence, so `combine_signals` is (ml_signal x ml_confidence x ml_weight +
  factor_score x factor_weight) / (ml_weight + factor_weight), which is the specification's
  sum when the weights add up to 1 (the defaults 0.6 and 0.4; the specification gives no
  numbers). The buy / sell / hold of `combine_signals` is the sign of that score: the sizing
  plugin gives a position to a positive score (its size grows with the score), none to a
  score of 0 or "no view", and treats a negative score as a short (0, i.e. sell what is held,
  unless `allow_short`).
* `PositionSizer` -> the `kelly_garch` sizing plugin and its pure functions
  (`garch_volatility`, `kelly_fraction`, `target_weights`): no formula is repeated here.
* `RiskManager` -> the risk plugins `max_position`, `max_open_positions` (their own checks
  and reason texts) and `drawdown_guard` (`max_portfolio_risk_pct` is its max drawdown), and
  the order planner's stop-loss / take-profit prices (`orders.stop_loss_pct`,
  `orders.take_profit_pct`, rounded to the tick as the planner does).
* `EnsemblePredictor` -> `tradingd.inference.onnx.EnsemblePredictor` (same methods), whose
  weights and residual standard deviation default to the model card of the model the
  `ml_ensemble` plugin would load, so `EnsemblePredictor()` is the engine's predictor.
* `BacktestEngine.run_backtest` -> `tradingd.backtest.run_backtest` on a `Config` built from
  the built-in defaults (equal to `config/default.toml`), with the capital, costs and the
  strategy taken from the facade objects, and a `Panel` built from the given frames with the
  loaders' own validation. `config_for` returns that `Config`; written as TOML it is what
  `tradingd backtest -c` runs.

Passing None for a facade object keeps that part of the default configuration as it is
(e.g. `signal_generator=None` runs the default signal plugins, whatever they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import structlog

from tradingd_plugins.risk.drawdown import DrawdownGuardConfig
from tradingd_plugins.risk.limits import (
    MaxOpenPositions,
    MaxOpenPositionsConfig,
    MaxPosition,
    MaxPositionConfig,
)
from tradingd_plugins.signals.ml_ensemble import MlEnsembleConfig, locate_model
from tradingd_plugins.signals.multi_factor import GROUPS, MultiFactor, MultiFactorConfig
from tradingd_plugins.sizing.garch import ewma_variance, garch_volatility
from tradingd_plugins.sizing.kelly_garch import KellyGarchConfig, kelly_fraction, target_weights

from .analysis.attribution import AttributionAnalyzer
from .analysis.montecarlo import MonteCarloConfig, MonteCarloSimulator
from .analysis.performance import PerformanceAnalyzer
from .analysis.validation import StatisticalValidator, ValidationConfig
from .config import Config, DataConfig, PluginSpec, build
from .core.errors import ConfigError, DataError
from .core.ports import BarContext, PortfolioView
from .core.types import CrossSection
from .engine.history import HistoryBuffer
from .engine.planner import round_price
from .feeds.panel import Panel
from .feeds.panel_cache import cache_root
from .feeds.validate import Advice, RepairSummary, find_column, validate_frame
from .inference.onnx import EnsemblePredictor as _OnnxEnsemblePredictor
from .inference.onnx import ModelCard
from .logs import warnings_only_unless_configured as _warnings_only_unless_configured
from .storage.schema import TABLES

if TYPE_CHECKING:
    from .backtest import StopRequest

__all__ = [
    "AttributionAnalyzer",
    "BacktestEngine",
    "EnsemblePredictor",
    "MonteCarloConfig",
    "MonteCarloSimulator",
    "PerformanceAnalyzer",
    "PositionSizer",
    "RiskManager",
    "SignalGenerator",
    "StatisticalValidator",
    "ValidationConfig",
    "panel_from_frames",
    "trade_side",
]

log = structlog.get_logger(__name__)

ML, FACTORS, SIZING = "ml_ensemble", "multi_factor", "kelly_garch"
# How long an interrupted run gets to finish its bar and close its writer and worker
# processes before the interrupt is raised all the same (the run then ends on its own).
INTERRUPT_WAIT_S = 60.0
# A combined score this close to 0 is a hold: float rounding of a sum that is 0 (-1 x 0.6 x
# 0.6 + 0.9 x 0.4 gave 5.55e-17, a buy).
HOLD_TOLERANCE = 1e-12
LONG_TYPES, SHORT_TYPES = ("long", "buy"), ("short", "sell")
# The plugins' caches kept between runs: (plugin, its parameter, the folder under the user's
# cache). Their defaults (var/cache/...) are relative: a daemon's working folder is its
# checkout, a notebook's is wherever the notebook happens to be.
PLUGIN_CACHES = ((ML, "cache_dir", "predictions"), (SIZING, "fit_cache_dir", "garch"))


def _defaults() -> Config:
    """The built-in defaults (equal to config/default.toml; no environment overrides)."""
    return Config()


def _checked(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a plugin's or the config's validation; its error becomes a ValueError naming
    the facade parameter."""
    try:
        return fn(*args, **kwargs)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ValueError(f"{what}: {exc}") from None


def _spec(specs: Sequence[PluginSpec], name: str) -> PluginSpec | None:
    return next((s for s in specs if s.name == name), None)


def _merged(params: Mapping[str, Any], config_cls: type, values: Mapping[str, Any]) -> dict:
    """`params` with `values` set where they differ from what `params` already means (its
    own value, else the plugin's default), so an unchanged facade leaves the spec as it is."""
    default = config_cls()
    out = dict(params)
    for key, value in values.items():
        if value != params.get(key, getattr(default, key)):
            out[key] = value
    return out


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and not v > 0):
        raise ValueError(
            f"{name} must be a finite {'positive ' if positive else ''}number, got {v!r}"
        )
    return v


def _in_range(name: str, value: Any, lo: float, hi: float, *, nan_ok: bool = False) -> float:
    """A number in [lo, hi] (NaN too when `nan_ok`: no view), else a ValueError naming it: a
    string ("0.7") or a value out of range was taken as given."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    v = float(value)
    if (math.isnan(v) and not nan_ok) or not (math.isnan(v) or lo <= v <= hi):
        raise ValueError(
            f"{name} must be in [{lo:g}, {hi:g}]{' or NaN (no view)' if nan_ok else ''}, got {v!r}"
        )
    return v


def trade_side(trade_type: str) -> int:
    """+1 for "long"/"buy", -1 for "short"/"sell" (case-insensitive); anything else is a
    ValueError naming it."""
    key = trade_type.strip().lower() if isinstance(trade_type, str) else None
    if key in LONG_TYPES:
        return 1
    if key in SHORT_TYPES:
        return -1
    raise ValueError(
        f"trade_type {trade_type!r} is unknown; valid: {', '.join(LONG_TYPES + SHORT_TYPES)}"
    )


def _context(
    symbols: Sequence[str],
    close: np.ndarray,
    *,
    quantity: np.ndarray | None = None,
    equity: float = 1.0,
    features: Mapping[str, np.ndarray] | None = None,
) -> BarContext:
    """A one-bar context, the shape the engine gives plugins, for calling a plugin on
    numbers a notebook user has at hand."""
    n = len(symbols)
    c = np.asarray(close, dtype=np.float64)
    ones = np.ones(n)
    bar = CrossSection(pd.Timestamp.now(tz="UTC").to_pydatetime(), c, c, c, c, ones, ones, 0 * ones)
    history = HistoryBuffer(n, 1)
    history.push(bar)
    q = np.zeros(n) if quantity is None else np.asarray(quantity, dtype=np.float64)
    weights = q * c / equity
    return BarContext(
        time=bar.time,
        index=0,
        symbols=tuple(symbols),
        bar=bar,
        mark=c,
        tradable=np.ones(n, dtype=bool),
        history=history,
        features=dict(features or {}),
        portfolio=PortfolioView(equity, equity, q, weights, equity, equity),
    )


# ----------------------------------------------------------------------------- signals


class SignalGenerator:
    """The specification's SignalGenerator over the `ml_ensemble` and `multi_factor` plugins.

    `confidence_threshold` is `ml_ensemble`'s threshold. None (the default) leaves it to the
    configuration: the threshold the base configuration gives the plugin, else the model
    card's of whichever model the run loads (`model_dir` given in the base configuration or
    by `EnsemblePredictor(model_dir=...)` alike); the attribute then holds the default
    configuration's model card's (0.55 for the shipped model), which `generate_ml_signal`
    uses. A threshold given here is the plugin's whatever the card says.
    `factor_weights` ({factor: weight}, factors as `multi_factor` names them: rsi, macd, roc,
    price_momentum, atr, bollinger_position, volatility_regime, rsi_divergence,
    bollinger_reversion, oversold_overbought) become the plugin's factor and group weights;
    None keeps the plugin's (momentum 0.5, volatility 0.25, mean reversion 0.25, factors equal
    within their group).
    """

    def __init__(
        self,
        confidence_threshold: float | None = None,
        ml_weight: float = 0.6,
        factor_weight: float = 0.4,
        factor_weights: Mapping[str, float] | None = None,
    ) -> None:
        # Whether the plugin's threshold is set here (see plugin_specs): compared with the base
        # configuration's card instead, a model_dir given in the base configuration got the
        # default 0.55 over its card's 0.9, and the same model given by EnsemblePredictor did not.
        self.threshold_given = confidence_threshold is not None
        if confidence_threshold is None:
            ml = _spec(_defaults().signals, ML)
            confidence_threshold = _ml_threshold(ml.params if ml is not None else {})
        self.confidence_threshold = _finite("confidence_threshold", confidence_threshold)
        _checked("confidence_threshold", MlEnsembleConfig, threshold=self.confidence_threshold)
        if not self.confidence_threshold:
            raise ValueError("confidence_threshold must be in [0.5, 1), got 0")
        # The engine refuses signal weights <= 0 (Config: signals[i].weight).
        self.ml_weight = _finite("ml_weight", ml_weight, positive=True)
        self.factor_weight = _finite("factor_weight", factor_weight, positive=True)
        self.factor_weights = None if factor_weights is None else dict(factor_weights)
        base = _spec(_defaults().signals, FACTORS)
        self._factor_params = dict(base.params) if base is not None else {}
        # Validates the weights (names, numbers, not all zero) with the plugin's own checks.
        self.factor_config = self.multi_factor_config(self._factor_params)

    # -- the specification's methods ------------------------------------------------------
    def generate_ml_signal(self, ml_prediction: float, ml_confidence: float) -> tuple[int, float]:
        """(signal, confidence): sign(prediction) when confidence >= threshold, else 0, as
        `EnsemblePredictor.generate_signal` decides it for the `ml_ensemble` plugin."""
        p = _finite("ml_prediction", ml_prediction)
        conf = _finite("ml_confidence", ml_confidence)
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"ml_confidence must be in [0, 1], got {conf!r}")
        signal = np.where(conf >= self.confidence_threshold, np.sign(p), 0.0)
        return int(signal), conf

    def generate_multi_factor_score(
        self,
        features: pd.Series | Mapping[str, float],
        factor_weights: Mapping[str, float] | None = None,
    ) -> float:
        """The specification's weighted sum: sum of features[factor] x weight.

        `factor_weights` defaults to the weights the plugin runs with
        (`factor_config.effective_weights()`: this generator's `factor_weights`, or the
        plugin's defaults, scaled so that their absolute values sum to 1). The plugin first
        normalises each factor across the universe at the bar (ranks in [-1, 1], oriented so
        higher is more bullish) and maps the sum to tanh(sum / scale): with `features` =
        one symbol's row of `factor_scores(...)` this sum is the plugin's, before the tanh
        (`multi_factor_scores(...)` gives the plugin's final score). NaN features give NaN.
        """
        weights = factor_weights if factor_weights is not None else self._weights()
        missing = [f for f in weights if f not in features]
        if missing:
            have = ", ".join(map(str, features.keys()))
            raise KeyError(f"features lack factor(s) {missing}; they have: {have}")
        score = 0.0
        for factor, weight in weights.items():
            score += float(features[factor]) * float(weight)
        return score

    def combine_signals(
        self, ml_signal: int, ml_confidence: float, factor_score: float
    ) -> tuple[int, float]:
        """(action, score): the engine's combined score and its sign (1 buy, -1 sell, 0 hold).

        score = (ml_signal x ml_confidence x ml_weight + factor_score x factor_weight) /
        (ml_weight + factor_weight), over the parts that have a view (a NaN part, e.g. the ML
        window not yet full, is left out, as `Engine._score` does); NaN when neither has one.
        A score within `HOLD_TOLERANCE` of 0 (parts that cancel, up to rounding) is a hold.
        `ml_confidence` must be in [0, 1] (as `generate_ml_signal` takes it) and
        `factor_score` in [-1, 1] (a signal plugin's score, as the engine refuses others);
        None or NaN: no view."""
        conf = (
            math.nan
            if ml_confidence is None
            else _in_range("ml_confidence", ml_confidence, 0.0, 1.0, nan_ok=True)
        )
        ml = math.nan if ml_signal is None else float(ml_signal) * conf
        if not math.isnan(ml) and int(ml_signal) not in (-1, 0, 1):
            raise ValueError(f"ml_signal must be -1, 0 or 1, got {ml_signal!r}")
        factor = (
            math.nan
            if factor_score is None
            else _in_range("factor_score", factor_score, -1.0, 1.0, nan_ok=True)
        )
        num = den = 0.0
        for s, w in ((ml, self.ml_weight), (factor, self.factor_weight)):
            if not math.isnan(s):
                num += w * s
                den += w
        score = num / den if den > 0 else math.nan
        if math.isnan(score) or abs(score) < HOLD_TOLERANCE:
            return 0, score
        return int(np.sign(score)), score

    # -- the plugin's view ----------------------------------------------------------------
    def factor_scores(self, features: pd.DataFrame) -> pd.DataFrame:
        """`MultiFactor.factor_scores` of one bar. `features`: rows = symbols, columns = the
        catalogue features the plugin reads (`MultiFactor.required_features()`, e.g. rsi_14,
        natr_14). Out: the normalised, oriented factors, one column per factor name."""
        plugin, ctx = self._plugin(features)
        z = plugin.factor_scores(ctx)
        return pd.DataFrame(z, index=features.index)[list(plugin.features)]

    def multi_factor_scores(self, features: pd.DataFrame) -> pd.Series:
        """`MultiFactor.score` of one bar (what the engine combines): a Series by symbol."""
        plugin, ctx = self._plugin(features)
        return pd.Series(plugin.score(ctx), index=features.index, name=FACTORS)

    def multi_factor_config(self, params: Mapping[str, Any] | None = None) -> MultiFactorConfig:
        return _checked(
            "factor_weights", build, MultiFactorConfig, self._factor_spec_params(params), "params"
        )

    def plugin_specs(self, base: Sequence[PluginSpec]) -> tuple[PluginSpec, ...]:
        """The `[[signals]]` this generator stands for: `ml_ensemble` and `multi_factor` with
        its weights, keeping the parameters `base` gives them (base's order when it has both).
        The ML threshold is set only when one was given (`threshold_given`): otherwise the
        plugin's own setting decides, its model card's unless the configuration sets one."""
        ml, mf = _spec(base, ML), _spec(base, FACTORS)
        ml_params = dict(ml.params) if ml is not None else {}
        if self.threshold_given:
            ml_params["threshold"] = self.confidence_threshold
        specs = {
            ML: PluginSpec(ML, self.ml_weight, ml_params),
            FACTORS: PluginSpec(
                FACTORS,
                self.factor_weight,
                self._factor_spec_params(mf.params if mf is not None else {}),
            ),
        }
        names = [s.name for s in base if s.name in specs]
        order = names if len(names) == 2 else [ML, FACTORS]
        return tuple(specs[n] for n in order)

    def _factor_spec_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(self._factor_params if params is None else params)
        if self.factor_weights is None:
            return out
        valid = {
            f.name: g for g in GROUPS for f in dataclasses.fields(getattr(MultiFactorConfig(), g))
        }
        unknown = sorted(set(self.factor_weights) - set(valid))
        if unknown:
            raise ValueError(
                f"factor_weights: unknown factor(s) {unknown}; valid: {', '.join(valid)}"
            )
        # Flat weights w -> group weight sum|w| and factor weights w: the plugin's effective
        # weight of a factor is then w / sum|w| over all factors.
        for g in GROUPS:
            ws = {f: float(self.factor_weights.get(f, 0.0)) for f, gg in valid.items() if gg == g}
            out[g] = ws
            out.setdefault("group_weights", {})
            out["group_weights"] = {**out["group_weights"], g: sum(abs(w) for w in ws.values())}
        return out

    def _weights(self) -> dict[str, float]:
        return self.factor_config.effective_weights()

    def _plugin(self, features: pd.DataFrame) -> tuple[MultiFactor, BarContext]:
        symbols = tuple(map(str, features.index))
        plugin = MultiFactor(self.factor_config, symbols)
        missing = [f for f in plugin.required_features() if f not in features.columns]
        if missing:
            raise KeyError(f"features lack column(s) {missing} that multi_factor reads")
        cols = {f: features[f].to_numpy(dtype=np.float64) for f in plugin.required_features()}
        return plugin, _context(symbols, np.ones(len(symbols)), features=cols)


def _ml_threshold(params: Mapping[str, Any]) -> float:
    """The confidence threshold `ml_ensemble` uses with `params` (0: its model card's)."""
    t = float(params.get("threshold", MlEnsembleConfig().threshold))
    return t or float(_card(str(params.get("model_dir", ""))).data["ensemble"]["threshold"])


def _card(model_dir: str) -> ModelCard:
    path, _ = locate_model(model_dir)
    return ModelCard.load(path)


# ----------------------------------------------------------------------------- ML ensemble


class EnsemblePredictor(_OnnxEnsemblePredictor):
    """`tradingd.inference.onnx.EnsemblePredictor` (`combine_predictions`, `confidence`,
    `generate_signal`), with the weights and residual standard deviation of the model card
    that `ml_ensemble` would load from `model_dir` when they are not given, so that
    `EnsemblePredictor()` is the engine's predictor. `model_dir` None: the default
    configuration's `ml_ensemble` model_dir; "" = var/models/current when it exists, else the
    shipped model. (The class it extends defaults residual_std to 1.0, which makes every daily
    forecast a hold.) In `run_backtest`, a `model_dir` that is not None becomes the plugin's."""

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        residual_std: float | None = None,
        *,
        model_dir: str | None = None,
    ) -> None:
        self.model_dir = model_dir
        if weights is None or residual_std is None:
            if model_dir is None:
                spec = _spec(_defaults().signals, ML)
                model_dir = str(spec.params.get("model_dir", "")) if spec is not None else ""
            ens = _card(model_dir).data["ensemble"]
            weights = ens["weights"] if weights is None else weights
            residual_std = float(ens["residual_std"]) if residual_std is None else residual_std
        super().__init__(weights, residual_std)


# ----------------------------------------------------------------------------- sizing


class PositionSizer:
    """The specification's PositionSizer over the `kelly_garch` plugin.

    `kelly_fraction` is the plugin's `kelly_multiplier` (0.5: half Kelly), `target_volatility`
    its `target_vol`; any other `KellyGarchConfig` field may be given by name (`params`).
    Unset fields are the default configuration's `kelly_garch` parameters, else the plugin's.
    `risk_free_rate` is kept for the specification's signature: the Kelly x GARCH rule has no
    risk-free term, and `tradingd backtest`'s metrics use 0. In `run_backtest` with a
    `RiskManager`, the sizing's `max_position` is the RiskManager's max position size unless
    given here (see `RiskManager`).
    """

    def __init__(
        self,
        risk_free_rate: float = 0.02,
        kelly_fraction: float = 0.5,
        target_volatility: float = 0.15,
        **params: Any,
    ) -> None:
        self.risk_free_rate = _finite("risk_free_rate", risk_free_rate)
        # Whether this sizer's cap is its own: else RiskManager's max position size sets it.
        self.max_position_given = "max_position" in params
        base = _defaults().sizing
        values = {
            **(dict(base.params) if base.name == SIZING else {}),
            "kelly_multiplier": kelly_fraction,
            "target_vol": target_volatility,
            **params,
        }
        self.config: KellyGarchConfig = _checked(
            "PositionSizer", build, KellyGarchConfig, values, "kelly_garch"
        )
        self.fractional = _defaults().orders.fractional

    @property
    def kelly_fraction(self) -> float:
        return self.config.kelly_multiplier

    @property
    def target_volatility(self) -> float:
        return self.config.target_vol

    def calculate_garch_volatility(self, returns: np.ndarray | pd.Series) -> float:
        """Annualised one-step-ahead volatility of `returns` (decimal; the plugin uses log
        returns of the close), as the plugin estimates it at a fit: GARCH(1,1) with `arch` on
        the last `garch_window` returns, the EWMA fallback when the fit fails or there are
        fewer than `min_fit_obs`, NaN below `min_vol_obs` (no variance: no position)."""
        c = self.config
        r = np.asarray(returns, dtype=np.float64).ravel()
        r = r[np.isfinite(r)][-c.garch_window :]
        if r.size < c.min_vol_obs or c.volatility == "none":
            return math.nan
        if c.volatility == "ewma":
            return math.sqrt(float(ewma_variance(r, c.ewma_lambda)) * c.periods_per_year)
        return garch_volatility(
            r,
            periods_per_year=c.periods_per_year,
            mean=c.garch_mean,
            lam=c.ewma_lambda,
            min_obs=c.min_fit_obs,
        )

    def calculate_kelly_criterion(self, win_rate: float, avg_win_loss_ratio: float) -> float:
        """The specification's W - (1 - W) / R (unclamped; the sizing clamps it to
        [0, max_kelly]). `win_rate` in [0, 1]; `avg_win_loss_ratio` finite and > 0 (0 gave
        -inf)."""
        w = _in_range("win_rate", win_rate, 0.0, 1.0)
        r = _finite("avg_win_loss_ratio", avg_win_loss_ratio, positive=True)
        return kelly_fraction(w, r)

    def get_position_size(
        self,
        signal_confidence: float,
        asset_volatility: float,
        account_balance: float,
        price: float,
        *,
        win_rate: float | None = None,
        avg_win_loss_ratio: float | None = None,
    ) -> tuple[float, float]:
        """(shares, capital): capital = account_balance x the plugin's target weight
        (sign(score) x Kelly x multiplier x |score| x target_vol / asset_volatility, the
        scalar clipped to [min_vol_scalar, max_vol_scalar], capped at max_position; 0 for a
        short without allow_short or a NaN confidence or volatility); shares = capital / price,
        whole shares as the order planner trades them unless `orders.fractional`.
        `signal_confidence` is the signed score in [-1, 1] (NaN: none). The Kelly
        fraction comes from `win_rate` / `avg_win_loss_ratio`, by default the plugin's prior
        (0.55, 1.5: the fraction it uses until 20 trades have closed)."""
        c = self.config
        balance = _finite("account_balance", account_balance, positive=True)
        px = _finite("price", price, positive=True)
        # The combined score (sign: the side; NaN: no view): 1.5 sized as 1.5, "0.7" as 0.7.
        score = _in_range("signal_confidence", signal_confidence, -1.0, 1.0, nan_ok=True)
        vol = asset_volatility
        if not (isinstance(vol, float | np.floating) and math.isnan(vol)):
            vol = _finite("asset_volatility", vol, positive=True)
        vol = float(vol)
        w = c.prior_win_rate if win_rate is None else win_rate
        r = c.prior_win_loss_ratio if avg_win_loss_ratio is None else avg_win_loss_ratio
        kelly = self.calculate_kelly_criterion(w, r)
        sigma2 = None if c.volatility == "none" else np.array([vol * vol / c.periods_per_year])
        weight = float(target_weights(np.array([score]), sigma2, kelly, c)[0])
        capital = weight * balance
        shares = capital / px if self.fractional else float(np.trunc(capital / px))
        return shares, capital

    def plugin_spec(self, base: PluginSpec) -> PluginSpec:
        """The `[sizing]` this sizer stands for (base's parameters kept where they agree)."""
        params = dict(base.params) if base.name == SIZING else {}
        values = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        weight = base.weight if base.name == SIZING else 1.0
        return PluginSpec(SIZING, weight, _merged(params, KellyGarchConfig, values))


# ----------------------------------------------------------------------------- risk


class RiskManager:
    """The specification's RiskManager over the risk plugins and the order planner.

    max_position_size_pct -> `max_position.max_position_pct` and the sizing's cap
    (`kelly_garch.max_position`): the specification has one max position size, and a risk
    cap above the sizing's changed nothing. A `PositionSizer(max_position=...)` given its own
    keeps it when smaller: the smaller of the two holds, with a warning that they differ.
    max_open_positions ->
    `max_open_positions`; max_portfolio_risk_pct -> `drawdown_guard.max_drawdown_pct` (the
    specification's 20% max drawdown; daily_loss_limit_pct its daily loss limit);
    stop_loss_pct / take_profit_pct -> `orders.stop_loss_pct` / `orders.take_profit_pct`,
    which the planner places as bracket legs when `orders.brackets` is on (`brackets`: None
    keeps the default configuration's choice). The levels here are those of the "pct" stop
    and take-profit modes (the specification's 2% / 4% from entry).
    """

    def __init__(
        self,
        max_position_size_pct: float = 0.05,
        max_portfolio_risk_pct: float = 0.20,
        stop_loss_pct: float = 0.02,
        take_profit_pct: float = 0.04,
        *,
        max_open_positions: int = 10,
        daily_loss_limit_pct: float = 0.05,
        brackets: bool | None = None,
    ) -> None:
        self.max_position_size_pct = _finite("max_position_size_pct", max_position_size_pct)
        self.max_portfolio_risk_pct = _finite("max_portfolio_risk_pct", max_portfolio_risk_pct)
        self.daily_loss_limit_pct = _finite("daily_loss_limit_pct", daily_loss_limit_pct)
        self.max_open_positions = max_open_positions
        self.position_config = _checked(
            "max_position_size_pct", MaxPositionConfig, self.max_position_size_pct
        )
        self.open_positions_config = _checked(
            "max_open_positions", MaxOpenPositionsConfig, max_open_positions
        )
        self.drawdown_config = _checked(
            "max_portfolio_risk_pct / daily_loss_limit_pct",
            DrawdownGuardConfig,
            max_drawdown_pct=self.max_portfolio_risk_pct,
            daily_loss_limit_pct=self.daily_loss_limit_pct,
        )
        base = _defaults().orders
        self.orders = _checked(
            "stop_loss_pct / take_profit_pct",
            dataclasses.replace,
            base,
            stop_loss_pct=_finite("stop_loss_pct", stop_loss_pct),
            take_profit_pct=_finite("take_profit_pct", take_profit_pct),
            brackets=base.brackets if brackets is None else bool(brackets),
        )
        self.brackets = brackets

    @property
    def stop_loss_pct(self) -> float:
        return self.orders.stop_loss_pct

    @property
    def take_profit_pct(self) -> float:
        return self.orders.take_profit_pct

    def calculate_stop_loss_price(self, entry_price: float, trade_type: str) -> float:
        """entry x (1 - stop_loss_pct) for a long, x (1 + ...) for a short, to the tick: the
        planner's stop of a "pct" bracket decided at `entry_price`."""
        side = trade_side(trade_type)
        p = _finite("entry_price", entry_price, positive=True)
        s = self.orders.stop_loss_pct
        return round_price(p * (1 - s) if side > 0 else p * (1 + s))

    def calculate_take_profit_price(self, entry_price: float, trade_type: str) -> float:
        """entry x (1 + take_profit_pct) for a long, x (1 - ...) for a short, to the tick."""
        side = trade_side(trade_type)
        p = _finite("entry_price", entry_price, positive=True)
        t = self.orders.take_profit_pct
        return round_price(p * (1 + t) if side > 0 else p * (1 - t))

    def validate_new_trade(
        self,
        symbol: str,
        trade_type: str,
        quantity: float,
        price: float,
        current_portfolio_value: float,
        open_positions_count: int,
    ) -> tuple[bool, str]:
        """(allowed, reason) for opening `quantity` shares of `symbol` beside
        `open_positions_count` open positions, by the `max_position` and `max_open_positions`
        plugins themselves (reason: their verdict's text; "ok" when both pass). The engine
        clips an oversized target to the cap rather than dropping it; here it is refused."""
        if not isinstance(symbol, str) or not symbol.strip():
            raise ValueError(f"symbol must be a non-empty string, got {symbol!r}")
        side = trade_side(trade_type)
        qty = _finite("quantity", quantity, positive=True)
        px = _finite("price", price, positive=True)
        value = _finite("current_portfolio_value", current_portfolio_value, positive=True)
        if isinstance(open_positions_count, bool) or not isinstance(open_positions_count, int):
            raise ValueError(
                f"open_positions_count must be an integer, got {open_positions_count!r}"
            )
        if open_positions_count < 0:
            raise ValueError(f"open_positions_count must be >= 0, got {open_positions_count}")
        # The universe: the open positions (held, at a weight too small to matter) and the
        # new trade's symbol, flat, with its target weight.
        held = [f"held-{i}" for i in range(open_positions_count)]
        symbols = (*held, symbol)
        n = len(symbols)
        quantity_held = np.r_[np.ones(n - 1), 0.0]
        ctx = _context(symbols, np.full(n, px), quantity=quantity_held, equity=value)
        targets = np.r_[np.full(n - 1, 1e-9), side * qty * px / value]
        plugins = (
            MaxPosition(self.position_config, symbols),
            MaxOpenPositions(self.open_positions_config, symbols),
        )
        for plugin in plugins:
            decision = plugin.check(targets, ctx)
            for v in decision.verdicts:
                if v.symbol == symbol:
                    return False, v.reason
        return True, "ok"

    def check_position_exit_conditions(
        self, current_price: float, position_entry_price: float, trade_type: str
    ) -> tuple[bool, str]:
        """(exit, reason): whether the position's stop-loss or take-profit (priced as above)
        is reached at `current_price`, with the simulated broker's rule (a stop fills when
        the price is at or through it, a take-profit limit when at or beyond it)."""
        side = trade_side(trade_type)
        p = _finite("current_price", current_price, positive=True)
        sl = self.calculate_stop_loss_price(position_entry_price, trade_type)
        tp = self.calculate_take_profit_price(position_entry_price, trade_type)
        if (p <= sl) if side > 0 else (p >= sl):
            return True, f"stop-loss: price {p:g} reached the stop {sl:g}"
        if (p >= tp) if side > 0 else (p <= tp):
            return True, f"take-profit: price {p:g} reached the target {tp:g}"
        return False, f"no exit: price {p:g} is between the exits at {sl:g} and {tp:g}"

    def plugin_specs(self, base: Sequence[PluginSpec]) -> tuple[PluginSpec, ...]:
        """`base`'s risk chain with these limits set, in base's order. A plugin base lacks
        goes where the built-in chain runs it (`_risk_position`): `max_open_positions` after
        the rules that refuse candidates and before `max_gross_exposure` and `portfolio_var`.
        Appended after VaR, the count kept the largest targets of what VaR had cut, and a
        candidate a refusing rule had dropped was never replaced by the next one
        (docs/SPECIFICATION.md, "The order of the risk rules")."""
        values: dict[str, tuple[type, dict[str, Any]]] = {
            "max_position": (MaxPositionConfig, {"max_position_pct": self.max_position_size_pct}),
            "max_open_positions": (
                MaxOpenPositionsConfig,
                {"max_open_positions": self.max_open_positions},
            ),
            "drawdown_guard": (
                DrawdownGuardConfig,
                {
                    "max_drawdown_pct": self.max_portfolio_risk_pct,
                    "daily_loss_limit_pct": self.daily_loss_limit_pct,
                },
            ),
        }
        out = []
        for spec in base:
            if spec.name in values:
                cls, vals = values.pop(spec.name)
                spec = PluginSpec(spec.name, spec.weight, _merged(spec.params, cls, vals))
            out.append(spec)
        for name, (cls, vals) in values.items():
            out.insert(_risk_position(out, name), PluginSpec(name, 1.0, _merged({}, cls, vals)))
        return tuple(out)


def _risk_position(chain: Sequence[PluginSpec], name: str) -> int:
    """Where in `chain` the risk plugin `name` goes: before the first plugin the built-in
    chain (`Config().risk`) runs after it, else at the end. Plugins the built-in chain does
    not have (`stale_data`, a third party's) are passed over: they keep their places."""
    order = [s.name for s in _defaults().risk]
    if name not in order:
        return len(chain)
    later = set(order[order.index(name) + 1 :])
    return next((i for i, s in enumerate(chain) if s.name in later), len(chain))


# ----------------------------------------------------------------------------- data

# Where frames' settings are set, for the advice the loaders' errors give: [data] of a TOML
# file never reaches a notebook's frames; the Config it passes does.
FRAMES_ADVICE = Advice(
    repair="in data.repair of the Config given (BacktestEngine(base_config=...))",
    date_format="data.date_format of the Config given (BacktestEngine(base_config=...), "
    "panel_from_frames(data, config))",
    date_format_key="date_format",
)


def panel_from_frames(
    data: Mapping[str, pd.DataFrame], config: Config | None = None, *, end: str | None = None
) -> Panel:
    """A Panel of per-symbol OHLCV frames, each checked by the loaders' `validate_frame` with
    `config.data`'s repairs and limits (a bad frame is a DataError naming the symbol and the
    row), up to `end` (inclusive), limited to `data.max_symbols` as `load_data` does.

    A frame has columns open, high, low, close, volume (any case; split and dividend
    optional) and its times in a time/date column or a DatetimeIndex. Times written as text
    are read as the file loaders read them: with `data.date_format` (e.g. "%d/%m/%Y") when
    set, else in the format inferred, and day-first dates in a column read month first are
    refused, naming the row and the value."""
    whole = config or _defaults()
    d = whole.data
    from .app import calendar_evening_start, calendar_timezone

    # `end` of intraday bars is a session day of live.calendar, as run.end is for load_data.
    zone = calendar_timezone(whole.live.calendar)
    evening = calendar_evening_start(whole.live.calendar)
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty dict of {symbol: DataFrame}")
    summary = RepairSummary()
    frames = []
    for symbol, df in data.items():
        if not isinstance(symbol, str) or not symbol.strip():
            raise ValueError(f"data keys must be symbols (non-empty strings), got {symbol!r}")
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"data[{symbol!r}] must be a pandas DataFrame, got {type(df).__name__}")
        source = f"data[{symbol!r}]"
        if df.empty:
            raise DataError("the frame has no rows of bars", source=source, symbol=symbol)
        if find_column(df, "time") is None and isinstance(df.index, pd.DatetimeIndex):
            df = df.rename_axis("time")
        frames.append(
            validate_frame(
                df,
                source=source,
                symbol=symbol,
                repair=d.repair,
                max_gap_days=d.max_gap_days,
                max_spike=d.max_spike,
                max_volume=d.max_volume,
                timezone=d.timezone,
                end=end or None,
                summary=summary,
                date_format=d.date_format,
                advice=FRAMES_ADVICE,
                session_timezone=zone,
                session_evening_start=evening,
            )
        )
    summary.log("frames")
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        raise DataError(f"no bars up to {end or 'the end'}", source="frames")
    panel = Panel.from_long(frame)
    if d.max_symbols and len(panel.symbols) > d.max_symbols:
        panel = panel.select(symbols=panel.symbols[: d.max_symbols])
    return panel


@dataclasses.dataclass(frozen=True)
class FramesData(DataConfig):
    """`config.data` of a run on frames passed in Python: source "frames", the symbols, the
    first and last bar time and a digest of the bars (what the run id hashes, so other data
    is another run). The record said source "bundled" whatever was passed: `tradingd report
    --attribution` replayed the bundled index series, and trial counting took runs on other
    data for one. Such data cannot be loaded again from the configuration."""

    source: str = "frames"
    first: str = ""
    last: str = ""
    digest: str = ""

    def __post_init__(self) -> None:
        # The limits and repairs are checked as DataConfig checks them; only the source is new.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)}
        DataConfig(**{**fields, "source": "bundled", "path": ""})


def _buffer(a: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes, not copied."""
    return a.data.cast("B")


def frames_data(data: DataConfig, panel: Panel) -> FramesData:
    """`data` (the limits and repairs the frames were checked with) describing `panel`."""
    h = hashlib.sha256()
    h.update("\0".join(panel.symbols).encode())
    # The arrays' own buffers (hashlib reads them as they are): .tobytes() copied each
    # field, about 20 MB apiece for the S&P 500 file over 20 years.
    times = np.ascontiguousarray(panel.times.astype("datetime64[ns]", copy=False))
    h.update(_buffer(times.view(np.int64)))  # (a datetime64 array exports no buffer)
    for name in ("open", "high", "low", "close", "volume", "split", "dividend"):
        h.update(_buffer(np.ascontiguousarray(getattr(panel, name), dtype=np.float64)))
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(DataConfig)}
    return FramesData(
        **{**fields, "source": "frames", "path": "", "symbols": tuple(panel.symbols)},
        first=str(pd.Timestamp(panel.times[0])),
        last=str(pd.Timestamp(panel.times[-1])),
        digest=h.hexdigest()[:16],
    )


# ----------------------------------------------------------------------------- backtest


class BacktestEngine:
    """The specification's BacktestEngine: `tradingd backtest`'s engine on given frames.

    `base_config` (default: the built-in defaults, without `TRADINGD_*` environment
    overrides) supplies everything the facade objects do not say. What a run writes:

    * the run's record (equity.csv, orders.csv, fills.csv, splits.csv, config.json,
      summary.json, environment.json, as `tradingd backtest` writes them) and its audit/
      folder, only when `run_backtest(..., output_dir=...)` asks for them, in that folder;
      without it they go to a temporary folder removed when the run ends;
    * the caches a rerun gains from, in the user's cache folder (`$XDG_CACHE_HOME`, else
      ~/.cache, under tradingd/): features/ (unless `cache.features_dir` names another;
      `cache.features = false` keeps none), and the ML predictions
      (predictions/) and GARCH fits (garch/) unless `base_config` names those plugins'
      own `cache_dir` / `fit_cache_dir` (then there; "" keeps none);
    * nothing in the working folder, and no database (the store is in-memory SQLite)."""

    def __init__(
        self,
        initial_capital: float = 100000.0,
        commission: float = 0.001,
        slippage: float = 0.0005,
        *,
        base_config: Config | None = None,
    ) -> None:
        self.base_config = base_config or _defaults()
        b = self.base_config
        self.initial_capital = _finite("initial_capital", initial_capital, positive=True)
        self.commission = _finite("commission", commission)
        self.slippage = _finite("slippage", slippage)
        self._run = _checked(
            "initial_capital", dataclasses.replace, b.run, initial_capital=self.initial_capital
        )
        self._costs = _checked(
            "commission / slippage",
            dataclasses.replace,
            b.costs,
            commission_pct=self.commission,
            slippage_pct=self.slippage,
        )

    def config_for(
        self,
        signal_generator: SignalGenerator | None = None,
        position_sizer: PositionSizer | None = None,
        risk_manager: RiskManager | None = None,
        ensemble_predictor: _OnnxEnsemblePredictor | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
    ) -> Config:
        """The Config `run_backtest` runs (None: that part of `base_config` unchanged)."""
        _expect("signal_generator", signal_generator, SignalGenerator)
        _expect("position_sizer", position_sizer, PositionSizer)
        _expect("risk_manager", risk_manager, RiskManager)
        _expect("ensemble_predictor", ensemble_predictor, _OnnxEnsemblePredictor)
        b = self.base_config
        signals = (
            b.signals if signal_generator is None else signal_generator.plugin_specs(b.signals)
        )
        if ensemble_predictor is not None:
            if _spec(signals, ML) is None:
                log.warning(
                    "strategy_api.predictor_unused",
                    reason="no ml_ensemble signal in this configuration",
                    signals=[s.name for s in signals],
                )
            signals = _with_predictor(signals, ensemble_predictor)
        orders = b.orders
        if risk_manager is not None:
            brackets = risk_manager.brackets
            orders = _checked(
                "RiskManager",
                dataclasses.replace,
                b.orders,
                stop_loss_pct=risk_manager.stop_loss_pct,
                take_profit_pct=risk_manager.take_profit_pct,
                brackets=b.orders.brackets if brackets is None else brackets,
            )
        window = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
        run = _checked("start / end", dataclasses.replace, self._run, **window)
        return _checked(
            "BacktestEngine",
            dataclasses.replace,
            b,
            run=run,
            costs=self._costs,
            signals=signals,
            sizing=_sizing_capped(b.sizing, position_sizer, risk_manager),
            risk=b.risk if risk_manager is None else risk_manager.plugin_specs(b.risk),
            orders=orders,
            # In memory: a notebook's runs leave no database behind (the run id stays stable).
            storage=dataclasses.replace(b.storage, url="sqlite:///:memory:"),
        )

    def run_backtest(
        self,
        data: Mapping[str, pd.DataFrame],
        signal_generator: SignalGenerator | None = None,
        position_sizer: PositionSizer | None = None,
        risk_manager: RiskManager | None = None,
        ensemble_predictor: _OnnxEnsemblePredictor | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        output_dir: str | Path | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Replay `data` ({symbol: OHLCV frame}) through the engine and return the run:

        run_id, equity_curve (pd.Series by bar time), gross_exposure, fills (DataFrame, also
        as `trades`), orders (DataFrame), metrics (the summary `tradingd backtest` prints and
        writes), final_equity, config (the Config run), output_dir (None unless given) and
        engine_result. Bars before `start` warm up features and models without trading
        (run.start); bars after `end` are not used (None: the base configuration's window).
        The run goes to a worker thread with its own event loop, so it works inside a running
        one (a notebook); an interrupt (KeyboardInterrupt, a notebook's "interrupt kernel")
        stops it after its current bar, waits up to `INTERRUPT_WAIT_S` for it to close its
        writer and worker processes, and is raised again. `run_backtest_async` awaits it.
        Logs warnings and errors only, unless structlog was configured before the call
        (`tradingd.logs.configure_logging`)."""
        from .backtest import StopRequest

        stop = StopRequest()
        coro = self.run_backtest_async(
            data,
            signal_generator,
            position_sizer,
            risk_manager,
            ensemble_predictor,
            start=start,
            end=end,
            output_dir=output_dir,
            progress=progress,
            stop=stop,
        )
        return _run_in_thread(coro, stop)

    async def run_backtest_async(
        self,
        data: Mapping[str, pd.DataFrame],
        signal_generator: SignalGenerator | None = None,
        position_sizer: PositionSizer | None = None,
        risk_manager: RiskManager | None = None,
        ensemble_predictor: _OnnxEnsemblePredictor | None = None,
        *,
        start: str | None = None,
        end: str | None = None,
        output_dir: str | Path | None = None,
        progress: bool = False,
        stop: StopRequest | None = None,
    ) -> dict[str, Any]:
        """`run_backtest`, awaited. `stop`: a request from outside (`StopRequest.request`)
        ends the replay after its current bar and raises `BacktestStopped`."""
        from .backtest import run_backtest

        with (
            _warnings_only_unless_configured(),
            tempfile.TemporaryDirectory(prefix="tradingd-backtest-") as tmp,
        ):
            config = self.config_for(
                signal_generator,
                position_sizer,
                risk_manager,
                ensemble_predictor,
                start=start,
                end=end,
            )
            panel = panel_from_frames(data, config, end=config.run.end or None)
            # The record and the run id say which data was run, not the configured source.
            config = dataclasses.replace(config, data=frames_data(config.data, panel))
            config = _caches_in_user_cache(config)
            out = Path(output_dir) if output_dir is not None else Path(tmp) / "run"
            audit = (out if output_dir is not None else Path(tmp)) / "audit"
            # The audit log is operational (not part of the run id): beside the record.
            config = dataclasses.replace(
                config, log=dataclasses.replace(config.log, audit_dir=str(audit))
            )
            outcome = await run_backtest(
                config, panel=panel, output_dir=out, progress=progress, stop=stop
            )
        result = outcome.result
        times = pd.DatetimeIndex(result.times, name="time")
        fills = _frame("fills", outcome.fills)
        return {
            "run_id": outcome.run_id,
            "equity_curve": pd.Series(result.equity, index=times, name="equity", dtype=float),
            "gross_exposure": pd.Series(
                result.gross_exposure, index=times, name="gross_exposure", dtype=float
            ),
            "fills": fills,
            "trades": fills,
            # The fills are in the shares of their day; the analysis restates them with these.
            "splits": outcome.splits,
            "orders": _frame("orders", outcome.orders),
            "metrics": outcome.summary,
            "final_equity": float(result.equity[-1]) if result.equity else self.initial_capital,
            "initial_capital": self.initial_capital,
            "config": config,
            "output_dir": Path(output_dir) if output_dir is not None else None,
            "engine_result": result,
        }


def _caches_in_user_cache(config: Config) -> Config:
    """`config` with the plugins' caches (`PLUGIN_CACHES`) that it leaves at their relative
    defaults moved to the user's cache folder (`$XDG_CACHE_HOME` or ~/.cache, under
    tradingd/, beside the data and feature caches): a notebook run wrote var/cache/ into
    whatever folder the notebook ran from. They are kept rather than dropped, since a rerun
    skips the model's inference and the GARCH fits with them. A folder the configuration
    names (even the default's, or "" for none) is its own choice and is kept."""

    def moved(spec: PluginSpec) -> PluginSpec:
        for name, key, folder in PLUGIN_CACHES:
            if spec.name == name and key not in spec.params:
                params = {**spec.params, key: str(cache_root() / folder)}
                return PluginSpec(spec.name, spec.weight, params)
        return spec

    return dataclasses.replace(
        config, signals=tuple(moved(s) for s in config.signals), sizing=moved(config.sizing)
    )


def _run_in_thread(coro: Any, stop: StopRequest) -> dict[str, Any]:
    """Run `coro` to its end in a thread of its own (an event loop may be running in this
    one: a notebook's). An interrupt while waiting for it stops the run rather than leaving
    it to go on beside the next cell's (`_stop_run`), then is raised again. Waited for by an
    event, not `Thread.join`: a join interrupted by KeyboardInterrupt marks the thread as
    ended in Python 3.11, and joins after it return at once."""
    box: dict[str, Any] = {}
    done = threading.Event()

    async def main() -> Any:
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        return await coro

    def work() -> None:
        try:
            box["out"] = asyncio.run(main())
        except BaseException as exc:
            box["err"] = exc
        finally:
            done.set()

    t = threading.Thread(target=work, name="tradingd-backtest")
    t.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        _stop_run(t, done, box, stop)
        raise
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


def _stop_run(
    t: threading.Thread, done: threading.Event, box: Mapping[str, Any], stop: StopRequest
) -> None:
    """Stop the run of thread `t`: the replay after its current bar (`stop`: the replay does
    not yield to its loop between bars, so it is asked by a flag, as the command's SIGINT
    handler does) and its task at its next await (loading, the writer's start), then wait,
    at most `INTERRUPT_WAIT_S`, for it to close its writer and worker processes. A second
    interrupt stops the waiting."""
    stop.request("SIGINT")
    loop, task = box.get("loop"), box.get("task")
    if loop is not None and task is not None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            loop.call_soon_threadsafe(task.cancel)
    if done.wait(INTERRUPT_WAIT_S):
        t.join()
        return
    log.warning(
        "strategy_api.run_still_stopping",
        thread=t.name,
        waited_s=INTERRUPT_WAIT_S,
        detail="the interrupted backtest has not finished closing; it ends on its own",
    )


def _expect(name: str, value: Any, cls: type) -> None:
    """A facade object in the wrong place (run_backtest(data, PositionSizer())) failed deep
    inside with an AttributeError: a TypeError naming the parameter and the order instead."""
    if value is not None and not isinstance(value, cls):
        raise TypeError(
            f"{name} must be a {cls.__name__} or None, got {type(value).__name__}: the facade "
            "objects go in the order signal_generator, position_sizer, risk_manager, "
            "ensemble_predictor (None for a part left to the configuration), or by name"
        )


def _sizing_capped(
    base: PluginSpec, sizer: PositionSizer | None, risk: RiskManager | None
) -> PluginSpec:
    """The `[sizing]` of `sizer` (None: `base`) with the risk manager's max position size as
    its cap (`kelly_garch.max_position`), or the smaller of the two when the sizer was given
    its own (a warning says they differ). Another sizing plugin is left as it is."""
    spec = base if sizer is None else sizer.plugin_spec(base)
    if risk is None or spec.name != SIZING:
        return spec
    cap = risk.max_position_size_pct
    if sizer is not None and sizer.max_position_given:
        own = sizer.config.max_position
        if not math.isclose(own, cap, rel_tol=1e-12):
            log.warning(
                "strategy_api.max_position_differs",
                position_sizer_max_position=own,
                risk_manager_max_position_size_pct=cap,
                used=min(own, cap),
                detail="the smaller cap holds; give one max position size to both",
            )
        cap = min(own, cap)
    params = _merged(spec.params, KellyGarchConfig, {"max_position": cap})
    _checked("max_position_size_pct", build, KellyGarchConfig, params, "kelly_garch")
    return PluginSpec(spec.name, spec.weight, params)


def _with_predictor(
    signals: Sequence[PluginSpec], predictor: _OnnxEnsemblePredictor
) -> tuple[PluginSpec, ...]:
    """`ml_ensemble` reads its ensemble weights and residual std from its model card: a
    predictor is honoured by its `model_dir`, and one whose numbers differ from that card's
    cannot be run (refused rather than silently ignored)."""
    out = []
    for spec in signals:
        if spec.name == ML:
            params = dict(spec.params)
            model_dir = getattr(predictor, "model_dir", None)
            if model_dir is not None and model_dir != params.get("model_dir", ""):
                params["model_dir"] = model_dir
            path, _ = locate_model(str(params.get("model_dir", "")))
            ens = ModelCard.load(path).data["ensemble"]
            if dict(predictor.weights) != dict(ens["weights"]) or not math.isclose(
                predictor.residual_std, float(ens["residual_std"]), rel_tol=1e-12
            ):
                raise ValueError(
                    f"ensemble_predictor has weights {predictor.weights} and residual_std "
                    f"{predictor.residual_std!r}, but the ml_ensemble plugin uses its model "
                    f"card's ({path}: weights {ens['weights']}, residual_std "
                    f"{ens['residual_std']!r}): pass EnsemblePredictor(model_dir=...) for the "
                    "model to run, or export a model with those numbers"
                )
            spec = PluginSpec(spec.name, spec.weight, params)
        out.append(spec)
    return tuple(out)


def _frame(table: str, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    if rows:
        return pd.DataFrame(list(rows))  # (dicts, as from a read back: the same dtypes)
    return pd.DataFrame(columns=list(TABLES[table].insert_columns))
