"""The feature catalogue: names, what each is computed from, and the versioned feature sets.

A feature is a small expression over a symbol's own bars: TA-Lib indicator outputs, point-wise
formulas, trailing windows (lag, mean, std, min, max, ratio, z-score) and cross-sectional
normalisation across the universe at one bar. The same expression is evaluated in batch
(`tradingd.features.engineer.compute_batch`) and streaming (`StreamingFeatures`); windows only
ever reach back (`lag` >= 0, lengths >= 1), so no feature can be built that needs data after
its bar. Names carry their parameters (`rsi_14`, `ret_std_20`, `zscore_20_obv`), so a model
card lists exactly what a model was trained on.

Scale: prices are split-adjusted as of the bar being computed. Each node has a degree in price
and volume (`macd` scales with price, `obv` with volume, `rsi` with neither), which is how the
batch path reproduces that semantics from one fully adjusted series.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from .indicators import IndicatorConfig

Degree = tuple[int, int]  # (price, volume)

# How TA-Lib outputs scale when prices are divided (and volumes multiplied) by a split factor.
OUTPUT_DEGREE: dict[str, Degree] = {
    "macd": (1, 0),
    "macd_signal": (1, 0),
    "macd_hist": (1, 0),
    "bb_upper": (1, 0),
    "bb_middle": (1, 0),
    "bb_lower": (1, 0),
    "atr": (1, 0),
    "trange": (1, 0),
    "obv": (0, 1),
}


@dataclass(frozen=True)
class Node:
    name: str
    degree: Degree = (0, 0)
    deps: tuple[Node, ...] = ()


@dataclass(frozen=True)
class BarNode(Node):
    field_name: str = "close"


@dataclass(frozen=True)
class IndicatorNode(Node):
    kind: str = ""
    params: tuple[Any, ...] = ()
    output: str = ""


@dataclass(frozen=True)
class PointNode(Node):
    fn: Callable[..., np.ndarray] = field(default=lambda *a: a[0], compare=False)


@dataclass(frozen=True)
class WindowNode(Node):
    op: str = "mean"  # mean | std | min | max | lag | ratio | zscore
    length: int = 1  # values in the window, oldest first, current last


@dataclass(frozen=True)
class CrossNode(Node):
    method: str = "rank"  # rank | zscore


WINDOW_OPS = ("mean", "std", "min", "max", "lag", "ratio", "zscore")
CROSS_METHODS = ("rank", "zscore")
_STD_EPS = 1e-12


def window_op(op: str, w: np.ndarray) -> np.ndarray:
    """`w` holds windows along axis 0 (oldest first). Shared by batch and streaming so that
    both do the same arithmetic. A window with a NaN gives NaN (not ready)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if op == "mean":
            return w.mean(axis=0)
        if op == "min":
            return w.min(axis=0)
        if op == "max":
            return w.max(axis=0)
        if op == "lag":
            return w[0].copy()
        if op == "ratio":
            return w[-1] / w[0] - 1.0
        mean = w.mean(axis=0)
        std = w.std(axis=0, ddof=1) if w.shape[0] > 1 else np.zeros_like(mean)
        # Constant windows: rounding can leave a std of 1e-17 instead of 0; call it 0.
        flat = std <= _STD_EPS * np.maximum(np.abs(mean), 1.0)
        if op == "std":
            return np.where(flat, 0.0, std)
        if op == "zscore":
            z = (w[-1] - mean) / np.where(flat, 1.0, std)
            return np.where(flat & ~np.isnan(std), 0.0, z)
    raise KeyError(f"unknown window op {op!r}")


def cross_section(values: np.ndarray, method: str) -> np.ndarray:
    """Normalise one bar's values across the symbols that have one: rank mapped to [-1, 1]
    (ties share their average rank) or z-score. Fewer than two values: not defined (NaN)."""
    out = np.full(values.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(values))
    m = ok.size
    if m < 2:
        return out
    x = values[ok]
    if method == "rank":
        order = np.argsort(x)
        xs = x[order]
        position = np.arange(m, dtype=float)
        # Ties share their average rank. The sort already groups them (no np.unique, which
        # sorted again: most of this function's cost, run for each factor at every bar by
        # multi_factor). A group's positions are the same consecutive numbers whichever
        # order its members come in, so their mean is too: no stable sort needed (numpy's
        # default sort is the vectorised one, 44 against 66 us for multi_factor's 11 x 496).
        start = np.empty(m, dtype=bool)
        start[0] = True
        np.not_equal(xs[1:], xs[:-1], out=start[1:])
        if not start.all():
            group = np.cumsum(start) - 1
            position = (np.bincount(group, weights=position) / np.bincount(group))[group]
        ranks = np.empty(m)
        ranks[order] = position
        out[ok] = 2.0 * ranks / (m - 1) - 1.0
        return out
    mean = x.mean()
    std = x.std()
    out[ok] = 0.0 if std <= _STD_EPS * max(abs(mean), 1.0) else (x - mean) / std
    return out


def cross_section_rows(values: np.ndarray, method: str) -> np.ndarray:
    """`cross_section` of each row of a (K, N) matrix, the same numbers bit for bit. Rows
    that all lack values in the same places (several factors of one universe, as
    multi_factor scores them at every bar) are ranked together in one set of array calls
    instead of one set per row; anything else (and z-scores) goes row by row."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"cross_section_rows needs a (K, N) matrix, got shape {values.shape}")
    k = values.shape[0]
    finite = np.isfinite(values)
    if method != "rank" or k < 2 or not (finite == finite[0]).all():
        out = np.empty(values.shape)
        for r in range(k):
            out[r] = cross_section(values[r], method)
        return out
    out = np.full(values.shape, np.nan)
    ok = np.flatnonzero(finite[0])
    m = ok.size
    if m < 2:
        return out
    x = values[:, ok]
    order = np.argsort(x, axis=1)  # (not stable: see cross_section)
    xs = np.take_along_axis(x, order, axis=1)
    position = np.broadcast_to(np.arange(m, dtype=float), (k, m))
    # As in cross_section, ties from the sort; a row's first value always starts a group,
    # so the groups of the flattened rows never span two rows. (cross_section keeps its own
    # 1-D copy of these lines: through this 2-D form one row measured 1.8x slower.)
    start = np.empty((k, m), dtype=bool)
    start[:, 0] = True
    np.not_equal(xs[:, 1:], xs[:, :-1], out=start[:, 1:])
    if not start.all():
        group = np.cumsum(start.ravel()) - 1
        flat = position.ravel()
        position = ((np.bincount(group, weights=flat) / np.bincount(group))[group]).reshape(k, m)
    ranks = np.empty((k, m))
    np.put_along_axis(ranks, order, position, axis=1)
    out[:, ok] = 2.0 * ranks / (m - 1) - 1.0
    return out


def _sdiv(a: np.ndarray, b: np.ndarray, default: float) -> np.ndarray:
    """a / b, with `default` where b is exactly zero (and a is known); NaN stays NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(a / b, dtype=np.float64)
    zero = (b == 0) & ~np.isnan(a)
    if np.any(zero):
        out = np.where(zero, default, out)
    return out


# ----------------------------------------------------------------------------- sets

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    # 20 scale-free features: one window of these (60 x 20) is the models' input.
    "default_v1": (
        "ret_1",
        "hl_range",
        "oc_range",
        "rsi_14",
        "macd_hist_norm",
        "roc_10",
        "stoch_k",
        "adx_14",
        "bb_position",
        "bb_width",
        "natr_14",
        "mfi_14",
        "volume_roc_10",
        "rsi_macd",
        "ret_std_20",
        "support_20",
        "resistance_20",
        "vol_regime_20_120",
        "zscore_20_obv",
        "cs_ret_1",
    ),
}


@dataclass(frozen=True)
class FeatureSetId:
    """What a trained model records and checks: the names, in order, and a version hash that
    also covers the indicator periods and the cross-sectional method behind those names."""

    name: str
    features: tuple[str, ...]
    version: str


def feature_set_id(
    name: str, features: Sequence[str], indicators: IndicatorConfig, cross_method: str
) -> FeatureSetId:
    text = "|".join([name, *features, repr(indicators), cross_method, "catalog-v1"])
    return FeatureSetId(name, tuple(features), hashlib.sha256(text.encode()).hexdigest()[:12])


def engine_feature_set(
    expected: FeatureSetId, indicators: IndicatorConfig, cross_method: str
) -> FeatureSetId:
    """The feature set this engine stands for, to check a model card's `expected` against
    (`verify_feature_set`): the card's names under the configured indicator periods and
    cross-sectional method, in the order of the named set when the card lists that set's
    features in another order (`tradingd train` records a set in its own order). Built from
    the card's list alone, a reordered card only differed in its version, and was said to
    have been trained with other indicator periods."""
    names = expected.features
    known = FEATURE_SETS.get(expected.name)
    if known is not None and tuple(known) != tuple(names) and sorted(known) == sorted(names):
        names = known
    return feature_set_id(expected.name, names, indicators, cross_method)


def verify_feature_set(
    expected: FeatureSetId, actual: FeatureSetId, where: str, card: str | Path | None = None
) -> None:
    """Stop start-up when a model would be fed other features than it was trained on.
    `card`: the model card's file, named in the error."""
    if expected == actual:
        return
    where = f"{where} (model card {card})" if card else where
    missing = [f for f in expected.features if f not in actual.features]
    problems = []
    named = FEATURE_SETS.get(expected.name)
    renamed = named is not None and sorted(named) != sorted(expected.features)
    if named is not None and renamed and not missing:
        # A card whose list was edited (a name replaced): the engine computes the card's
        # names, the version differs, and was blamed on the indicator periods.
        the_set = FeatureSetId(expected.name, tuple(named), "")
        problems.append(
            f"its feature list is not that of feature set {expected.name!r} (features.set): "
            f"{_first_difference(expected, the_set, 'the set')}; the card's version was "
            "computed from another list: restore the card the model was trained with, or "
            "retrain"
        )
    if missing:
        problems.append(f"features the engine does not produce: {missing}")
    if list(expected.features) != list(actual.features) and not missing:
        problems.append(
            f"the same features in another order ({_first_difference(expected, actual)}): "
            "the model takes its inputs by position; restore the card's list to the order "
            "the model was trained on"
        )
    if expected.version != actual.version and not (renamed and not missing):
        problems.append(
            f"feature set version {expected.version} (trained) != {actual.version} (configured:"
            " indicator periods or cross-sectional method differ)"
        )
    raise ConfigError(f"{where} expects feature set {expected.name!r}: " + "; ".join(problems))


def _first_difference(
    expected: FeatureSetId, actual: FeatureSetId, other: str = "the engine's order"
) -> str:
    pairs = zip(expected.features, actual.features, strict=False)  # (lengths may differ)
    for i, (a, b) in enumerate(pairs):
        if a != b:
            return f"at position {i} the card has {a!r}, {other} {b!r}"
    theirs = "the engine" if other == "the engine's order" else other
    return f"the card lists {len(expected.features)}, {theirs} {len(actual.features)}"


def resolve_set(name: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    if name not in FEATURE_SETS:
        raise ConfigError(f"features.set = {name!r}: unknown; valid: {', '.join(FEATURE_SETS)}")
    return (*FEATURE_SETS[name], *(e for e in extra if e not in FEATURE_SETS[name]))


# ----------------------------------------------------------------------------- units

# What each catalogue feature is, in what units, by its name's pattern (the first that
# matches). Oscillators TA-Lib gives out of 100 (RSI, ADX, MFI, Stochastic) and its
# percentages (ROC, NATR) are divided by 100 here: `rsi_14 < 0.30` is RSI under 30, and
# `rsi_14 < 30` is always true. `{feature}`: the inner feature's own description.
# tests/unit/test_feature_units.py fails for a catalogue name this table does not cover.
FEATURE_UNITS: tuple[tuple[str, str], ...] = (
    (r"open|high|low|close", "price, split-adjusted as of the bar"),
    (r"volume", "shares, split-adjusted as of the bar"),
    (r"rsi_(\d+)", "RSI / 100: 0 to 1 (RSI 30 is 0.30)"),
    (r"roc_(\d+)", "rate of change over n bars / 100: a fraction (0.05 is +5%)"),
    (r"adx_(\d+)", "ADX / 100: 0 to 1 (ADX 25 is 0.25)"),
    (r"mfi_(\d+)", "money flow index / 100: 0 to 1 (MFI 20 is 0.20)"),
    (r"natr_(\d+)", "ATR / close (TA-Lib's NATR / 100): a fraction of the price"),
    (r"volume_roc_(\d+)", "volume's rate of change over n bars / 100: a fraction (0.5 is +50%)"),
    (r"atr_(\d+)", "price (average true range)"),
    (r"macd|macd_signal|macd_hist", "price (MACD line, signal line, histogram)"),
    (r"macd_norm|macd_signal_norm|macd_hist_norm", "the MACD value / close: a fraction"),
    (r"stoch_k|stoch_d", "Stochastic %K or %D / 100: 0 to 1 (80 is 0.80)"),
    (r"bb_upper|bb_middle|bb_lower", "price (Bollinger band)"),
    (
        r"bb_position",
        "(close - lower band) / (upper - lower): 0 at the lower band, 1 at the upper, below "
        "0 or above 1 outside them (0.5 where the bands are flat)",
    ),
    (r"bb_width", "(upper - lower band) / middle band: a fraction"),
    (r"trange", "price (true range)"),
    (r"obv", "shares (on-balance volume, summed from the first bar)"),
    (r"ret_1", "close / previous close - 1: a fraction (0.01 is +1%)"),
    (r"log_ret_1", "log(close / previous close)"),
    (r"hl_range", "(high - low) / close: a fraction"),
    (r"oc_range", "(close - open) / open: a fraction"),
    (r"rsi_macd", "(RSI / 100 - 0.5) x MACD histogram / ATR: unitless"),
    (r"return_(\d+)", "close / close n bars before - 1: a fraction"),
    (r"sma_(\d+)", "price (mean close over n bars)"),
    (r"volatility_(\d+)", "standard deviation of log_ret_1 over n bars: per bar, not annualised"),
    (r"ret_mean_(\d+)", "mean of ret_1 over n bars: a fraction per bar"),
    (
        r"ret_std_(\d+)",
        "standard deviation of ret_1 over n bars: a fraction per bar, not annualised",
    ),
    (r"support_(\d+)", "close / lowest low of n bars - 1: a fraction, 0 or more"),
    (r"resistance_(\d+)", "close / highest high of n bars - 1: a fraction, 0 or less"),
    (r"trend_(\d+)_(\d+)", "sma_n / sma_m - 1: a fraction"),
    (r"vol_regime_(\d+)_(\d+)", "ret_std_n / ret_std_m: a ratio (1: the same volatility)"),
    (
        r"rsi_div_(\d+)_(\d+)",
        "standard deviations: RSI's change over n bars minus close's, each in its own",
    ),
    (
        r"rsi_obos_(\d+)_(\d+)_(\d+)",
        "-1 to 1: RSI below lo (+) or above hi (-) as a fraction of the room beyond, 0 between "
        "(lo and hi in RSI points, 0 to 100)",
    ),
    (
        r"bb_reversion",
        "band widths outside the Bollinger bands: + below the lower, - above the upper, 0 inside",
    ),
    (r"lag_(\d+)_(.+)", "{feature}, k bars before"),
    (r"zscore_(\d+)_(.+)", "standard deviations of {feature} from its mean over n bars"),
    (r"cs_rank_(.+)", "rank of {feature} across the universe at the bar: -1 to 1"),
    (r"cs_z_(.+)", "z-score of {feature} across the universe at the bar: standard deviations"),
    (
        r"cs_(.+)",
        "{feature} across the universe at the bar, by features.cross_sectional: a rank from "
        "-1 to 1 (rank) or standard deviations (zscore)",
    ),
)


def feature_unit(name: str) -> str | None:
    """What the catalogue feature `name` is and its units (see FEATURE_UNITS); None for a
    name the table does not cover (a feature registered by user code)."""
    for pattern, text in FEATURE_UNITS:
        m = re.fullmatch(pattern, name)
        if m is None:
            continue
        if "{feature}" not in text:
            return text
        inner = m.groups()[-1]
        about = feature_unit(inner)
        return text.format(feature=f"{inner} ({about})" if about else inner)
    return None


# ----------------------------------------------------------------------------- parsing


class Catalog:
    """Parses feature names into nodes (memoised, so shared sub-expressions are one node)."""

    def __init__(
        self, indicators: IndicatorConfig | None = None, cross_method: str = "rank"
    ) -> None:
        if cross_method not in CROSS_METHODS:
            raise ConfigError(
                f"features.cross_sectional = {cross_method!r} is invalid; "
                f"valid choices: {', '.join(CROSS_METHODS)}"
            )
        self.ind = indicators or IndicatorConfig()
        self.cross_method = cross_method
        self._nodes: dict[str, Node] = {}
        self._custom: dict[str, tuple[tuple[str, ...], Callable[..., np.ndarray]]] = {}
        self._user_defined = False  # register() or window() was called

    @property
    def user_defined(self) -> bool:
        """Whether features defined at run time exist (their meaning is not in this package's
        code, so a cache of computed features cannot key them)."""
        return self._user_defined

    def register(self, name: str, deps: Sequence[str], fn: Callable[..., np.ndarray]) -> Node:
        """A custom point-wise feature of other features' current values. Only current and
        past values are reachable this way: a look into the future cannot be expressed."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(f"feature name {name!r} must be lower_snake_case")
        if name in self._nodes or self._builtin(name) is not None:
            raise ConfigError(f"feature {name!r} already exists")
        self._custom[name] = (tuple(deps), fn)
        self._user_defined = True
        return self.node(name)

    def window(self, name: str, source: str, op: str, length: int, lag: int = 0) -> Node:
        """A trailing-window feature. `lag` is how many bars back the window ends; a negative
        lag (a window ending after the current bar) is refused."""
        if lag < 0:
            raise ConfigError(
                f"feature {name!r} would need data {-lag} bar(s) after its bar; "
                "features may only use the past"
            )
        if op not in WINDOW_OPS or length < 1:
            raise ConfigError(
                f"feature {name!r}: window op must be one of {WINDOW_OPS} with length >= 1"
            )
        src = self.node(source)
        if lag:
            src = self._win(f"lag_{lag}_{source}", src, "lag", lag + 1)
        node = self._win(name, src, op, length)
        self._nodes[name] = node
        self._user_defined = True
        return node

    def node(self, name: str) -> Node:
        found = self._nodes.get(name)
        if found is not None:
            return found
        if name in self._custom:
            deps, fn = self._custom[name]
            made: Node | None = PointNode(name, (0, 0), tuple(self.node(d) for d in deps), fn)
        else:
            made = self._builtin(name)
        if made is None:
            raise ConfigError(
                f"unknown feature {name!r}; see tradingd.features.catalog "
                f"for the grammar (e.g. {', '.join(FEATURE_SETS['default_v1'][:6])})"
            )
        self._nodes[name] = made
        return made

    # -- built-ins ---------------------------------------------------------------------------
    def _ind(self, kind: str, params: tuple[Any, ...], output: str) -> Node:
        name = f"@{kind}{params}.{output}"
        node = self._nodes.get(name)
        if node is None:
            node = IndicatorNode(name, OUTPUT_DEGREE.get(output, (0, 0)), (), kind, params, output)
            self._nodes[name] = node
        return node

    def _win(self, name: str, src: Node, op: str, length: int) -> Node:
        node = self._nodes.get(name)
        if node is None:
            # ratios and z-scores are scale-free; means, extremes, lags and stds keep units
            degree = (0, 0) if op in ("ratio", "zscore") else src.degree
            node = WindowNode(name, degree, (src,), op, length)
            self._nodes[name] = node
        return node

    def _point(
        self,
        name: str,
        deps: Sequence[Node],
        fn: Callable[..., np.ndarray],
        degree: Degree = (0, 0),
    ) -> Node:
        return PointNode(name, degree, tuple(deps), fn)

    def _alias(self, name: str, node: Node) -> Node:
        """A public name for an indicator output, in its own units."""
        return PointNode(name, node.degree, (node,), lambda x: x)

    def _builtin(self, name: str) -> Node | None:
        c = self.ind
        bar = {"open": (1, 0), "high": (1, 0), "low": (1, 0), "close": (1, 0), "volume": (0, 1)}
        if name in bar:
            return BarNode(name, bar[name], (), name)
        close = lambda: self.node("close")  # noqa: E731
        pct = lambda kind, p, out: self._point(  # noqa: E731
            name, [self._ind(kind, p, out)], lambda x: x / 100.0
        )
        m = re.fullmatch(r"(rsi|roc|adx|mfi|natr|volume_roc)_(\d+)", name)
        if m:
            kind, n = m.group(1), int(m.group(2))
            if n < 1:
                return None
            return pct("atr" if kind == "natr" else kind, (n,), kind)
        m = re.fullmatch(r"atr_(\d+)", name)
        if m and int(m.group(1)) >= 1:
            return self._alias(name, self._ind("atr", (int(m.group(1)),), "atr"))
        macd = (c.macd_fast, c.macd_slow, c.macd_signal)
        if name in ("macd", "macd_signal", "macd_hist"):
            return self._alias(name, self._ind("macd", macd, name))
        if name in ("macd_norm", "macd_signal_norm", "macd_hist_norm"):
            return self._point(
                name, [self._ind("macd", macd, name[:-5]), close()], lambda x, cl: x / cl
            )
        if name in ("stoch_k", "stoch_d"):
            return pct("stoch", (c.stoch_fastk, c.stoch_slowk, c.stoch_slowd), name)
        bb = (c.bb_period, c.bb_nbdev)
        if name in ("bb_upper", "bb_middle", "bb_lower"):
            return self._alias(name, self._ind("bbands", bb, name))
        if name == "bb_position":
            parts = [
                self._ind("bbands", bb, "bb_upper"),
                self._ind("bbands", bb, "bb_lower"),
                close(),
            ]
            return self._point(name, parts, lambda u, lo, cl: _sdiv(cl - lo, u - lo, 0.5))
        if name == "bb_width":
            parts = [
                self._ind("bbands", bb, "bb_upper"),
                self._ind("bbands", bb, "bb_lower"),
                self._ind("bbands", bb, "bb_middle"),
            ]
            return self._point(name, parts, lambda u, lo, mid: _sdiv(u - lo, mid, 0.0))
        if name in ("trange", "obv"):
            return self._alias(name, self._ind(name, (), name))
        if name == "ret_1":
            return self._win(name, close(), "ratio", 2)
        if name == "log_ret_1":
            return self._point(name, [self.node("ret_1")], np.log1p)
        if name == "hl_range":
            return self._point(
                name,
                [self.node("high"), self.node("low"), close()],
                lambda h, lo, cl: (h - lo) / cl,
            )
        if name == "oc_range":
            return self._point(name, [self.node("open"), close()], lambda o, cl: (cl - o) / o)
        if name == "rsi_macd":
            parts = [
                self._ind("rsi", (c.rsi,), "rsi"),
                self._ind("macd", macd, "macd_hist"),
                self._ind("atr", (c.atr,), "atr"),
            ]
            return self._point(
                name, parts, lambda r, hist, atr: (r / 100.0 - 0.5) * _sdiv(hist, atr, 0.0)
            )
        m = re.fullmatch(r"return_(\d+)", name)
        if m and int(m.group(1)) >= 1:
            return self._win(name, close(), "ratio", int(m.group(1)) + 1)
        m = re.fullmatch(r"sma_(\d+)", name)
        if m and int(m.group(1)) >= 1:
            return self._win(name, close(), "mean", int(m.group(1)))
        m = re.fullmatch(r"volatility_(\d+)", name)
        if m and int(m.group(1)) >= 2:
            return self._win(name, self.node("log_ret_1"), "std", int(m.group(1)))
        m = re.fullmatch(r"ret_(mean|std)_(\d+)", name)
        if m and int(m.group(2)) >= 1:
            return self._win(name, self.node("ret_1"), m.group(1), int(m.group(2)))
        m = re.fullmatch(r"(support|resistance)_(\d+)", name)
        if m and int(m.group(2)) >= 1:
            n = int(m.group(2))
            ext = (
                self._win(f"min_low_{n}", self.node("low"), "min", n)
                if m.group(1) == "support"
                else self._win(f"max_high_{n}", self.node("high"), "max", n)
            )
            return self._point(name, [close(), ext], lambda cl, x: cl / x - 1.0)
        m = re.fullmatch(r"trend_(\d+)_(\d+)", name)
        if m and 1 <= int(m.group(1)) < int(m.group(2)):
            fast, slow = self.node(f"sma_{m.group(1)}"), self.node(f"sma_{m.group(2)}")
            return self._point(name, [fast, slow], lambda f, s: f / s - 1.0)
        m = re.fullmatch(r"vol_regime_(\d+)_(\d+)", name)
        if m and 2 <= int(m.group(1)) < int(m.group(2)):
            short, long_ = self.node(f"ret_std_{m.group(1)}"), self.node(f"ret_std_{m.group(2)}")
            return self._point(name, [short, long_], lambda s, lg: _sdiv(s, lg, 1.0))
        # -- mean-reversion factors (the multi-factor signal's), from the nodes above ----------
        m = re.fullmatch(r"rsi_div_(\d+)_(\d+)", name)
        if m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1:
            # RSI divergence against price over n bars: the change of RSI minus the change of
            # close, each in units of its own standard deviation over the same n + 1 bars (so
            # the two are comparable and the result is scale-free). Positive: RSI has held up
            # better than price (bullish divergence); negative: price rose without RSI.
            p, n = int(m.group(1)), int(m.group(2))
            rsi, cl = self.node(f"rsi_{p}"), close()
            parts = [
                rsi,
                self._win(f"lag_{n}_rsi_{p}", rsi, "lag", n + 1),
                self._win(f"@std{n + 1}(rsi_{p})", rsi, "std", n + 1),
                cl,
                self._win(f"lag_{n}_close", cl, "lag", n + 1),
                self._win(f"@std{n + 1}(close)", cl, "std", n + 1),
            ]
            return self._point(
                name,
                parts,
                lambda r, r0, rs, x, x0, xs: _sdiv(r - r0, rs, 0.0) - _sdiv(x - x0, xs, 0.0),
            )
        m = re.fullmatch(r"rsi_obos_(\d+)_(\d+)_(\d+)", name)
        if m:
            # Oversold / overbought: how far RSI is beyond its thresholds (RSI points out of
            # 100), as a fraction of the room beyond them: (lo - rsi) / lo below `lo` (up to
            # +1 at RSI 0), -(rsi - hi) / (100 - hi) above `hi` (down to -1), 0 in between.
            p, lo, hi = (int(g) for g in m.groups())
            if p < 1 or not 0 < lo < hi < 100:
                return None
            a, b = lo / 100.0, hi / 100.0
            return self._point(
                name,
                [self.node(f"rsi_{p}")],
                lambda r: np.maximum(a - r, 0.0) / a - np.maximum(r - b, 0.0) / (1.0 - b),
            )
        if name == "bb_reversion":
            # Distance outside the Bollinger bands in band widths: positive below the lower
            # band, negative above the upper band, 0 inside (then bb_position says where).
            return self._point(
                name,
                [self.node("bb_position")],
                lambda pos: np.maximum(-pos, 0.0) - np.maximum(pos - 1.0, 0.0),
            )
        m = re.fullmatch(r"lag_(\d+)_(.+)", name)
        if m:
            k = int(m.group(1))
            return self._win(name, self.node(m.group(2)), "lag", k + 1) if k >= 1 else None
        m = re.fullmatch(r"zscore_(\d+)_(.+)", name)
        if m and int(m.group(1)) >= 2:
            return self._win(name, self.node(m.group(2)), "zscore", int(m.group(1)))
        m = re.fullmatch(r"cs_(?:(rank|z)_)?(.+)", name)
        if m:
            method = {"rank": "rank", "z": "zscore", None: self.cross_method}[m.group(1)]
            src = self.node(m.group(2))
            if isinstance(src, CrossNode):
                return None
            return CrossNode(name, (0, 0), (src,), method)
        return None


def topological(nodes: Sequence[Node]) -> list[Node]:
    """Dependencies first; each node once."""
    seen: dict[str, Node] = {}

    def visit(n: Node) -> None:
        if n.name in seen:
            return
        for d in n.deps:
            visit(d)
        seen[n.name] = n

    for n in nodes:
        visit(n)
    return list(seen.values())


def warmup(node: Node) -> int:
    """Bars of a symbol's own history before the node can have a value (an upper bound for
    TA-Lib nodes, whose exact lookbacks the streaming indicators report)."""
    if isinstance(node, WindowNode):
        return warmup(node.deps[0]) + node.length - 1
    if isinstance(node, IndicatorNode):
        p = node.params
        # (a match, not a dict of every kind's formula: those index parameters that
        # one-parameter indicators such as RSI do not have)
        match node.kind:
            case "macd":
                return (p[1] - 1 + p[2] - 1) if p else 33
            case "stoch":
                return sum(p) - 2 if p else 17
            case "adx":
                return 2 * p[0] - 1 if p else 27
            case "bbands":
                return p[0] - 1 if p else 19
            case "trange":
                return 1
            case "obv":
                return 0
            case _:
                return int(p[0]) if p else 0
    return max((warmup(d) for d in node.deps), default=0)
