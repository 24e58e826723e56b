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
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError
from ..core.types import Fill, Leg, parse_client_order_id
from .performance import (
    BENCHMARK_SOURCES,
    PerformanceConfig,
    RunRecord,
    align_benchmark,
    beta,
    load_benchmark,
    run_record,
    simple_returns,
)

if TYPE_CHECKING:
    from ..config import Config
    from ..core.ports import BarContext
    from ..engine.engine import Engine, Pipeline
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

log = structlog.get_logger(__name__)

UNATTRIBUTED = "unattributed"
COSTS = "costs"
RESIDUAL = "residual"
_NAN = math.nan
# A decision's components must add up to the engine's combined score to this tolerance
# (the engine divides by the sum of weights in another order: a few ulps).
_SCORE_TOL = 1e-9
# Share quantities below this are what is left of a closed position after rounding.
_FLAT = 1e-9
# A score within this fraction of the sum of its contributions' magnitudes is rounding noise
# of their cancellation (exactly opposite ranks add up to 1e-17, not 0): no split.
_NOISE = 1e-12


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AttributionConfig:
    """What the attribution assumes. The benchmark keys are those of `PerformanceConfig`
    (the bundled S&P 500 index by default; "" for none). `split_groups`: split a signal
    plugin that reports factor groups (`group_scores`, as multi_factor does) into one
    component per group. `record_tolerance`: the largest difference between the replay's
    equity and the run record's, relative to the initial capital, before the replay is
    refused as not being that run."""

    periods_per_year: float = 252.0
    benchmark: str = "SP500"
    benchmark_source: str = "bundled"
    benchmark_path: str = ""
    split_groups: bool = True
    record_tolerance: float = 1e-9

    def __post_init__(self) -> None:
        for key in ("periods_per_year", "record_tolerance"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"attribution.{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"attribution.{key} must be finite, got {value!r}")
        if not self.periods_per_year > 0:
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

    def performance_config(self) -> PerformanceConfig:
        """The benchmark part, in the form `performance.load_benchmark` takes."""
        return PerformanceConfig(
            periods_per_year=self.periods_per_year,
            benchmark=self.benchmark,
            benchmark_source=self.benchmark_source,
            benchmark_path=self.benchmark_path,
        )


# ----------------------------------------------------------------------------- scores


def score_contributions(
    scores: Mapping[str, Any],
    weights: Mapping[str, float],
    parts: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, np.ndarray]:
    """Each component's signed contribution to the engine's combined score, per symbol.

    `scores`: plugin -> (N,) score (NaN = no view); `weights`: plugin -> its signal weight;
    `parts`: plugin -> {group: (N,) weighted group sum} for plugins whose score is a
    function of a weighted sum of groups (multi_factor: score = tanh(sum / scale)).

    The combined score is the engine's weighted mean over the plugins with a view,
    S = sum_p w_p s_p / sum_{p with a view} w_p, so plugin p contributes w_p s_p / den. A
    grouped plugin's contribution is shared among its groups in proportion to their part
    of the sum x = sum_g part_g: contribution x part_g / x (tanh and the cross-sectional
    rank are not linear, so this is the only split that keeps the groups' signs and adds up
    to the plugin's score). Where x = 0 the score is 0 for tanh (every group gets 0); a
    nonzero score there (rank output) has no split: NaN. The result adds up to S wherever S
    is defined, and is 0 where no plugin has a view."""
    if not scores:
        raise ValueError("score_contributions needs at least one plugin's scores")
    unknown = sorted(set(scores) - set(weights))
    if unknown:
        raise ValueError(f"no weight for plugin(s) {', '.join(unknown)}")
    arrays = {p: np.asarray(s, dtype=float).ravel() for p, s in scores.items()}
    n = {a.size for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(
            f"plugin scores differ in length: { {p: a.size for p, a in arrays.items()} }"
        )
    size = n.pop()
    den = np.zeros(size)
    for p, s in arrays.items():
        w = float(weights[p])
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"the weight of plugin {p!r} must be finite and > 0, got {w!r}")
        den += np.where(np.isnan(s), 0.0, w)
    out: dict[str, np.ndarray] = {}
    for p, s in arrays.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            part = np.where(~np.isnan(s) & (den > 0), float(weights[p]) * s / den, 0.0)
        groups = (parts or {}).get(p)
        if not groups:
            out[p] = part
            continue
        g_arrays = {g: np.asarray(v, dtype=float).ravel() for g, v in groups.items()}
        if any(v.size != size for v in g_arrays.values()):
            raise ValueError(f"plugin {p!r}: group parts differ in length from its scores")
        x = np.zeros(size)
        for v in g_arrays.values():
            x = x + v
        for g, v in g_arrays.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where(x != 0, part * v / x, np.where(part == 0, 0.0, np.nan))
            out[f"{p}.{g}"] = share
    return out


def _group_parts(plugin: Any, ctx: BarContext) -> dict[str, np.ndarray] | None:
    """The weighted group sums of a plugin that exposes them (multi_factor's
    `group_scores` and `groups`: group -> (group weight, factor weights)), else None."""
    if not _grouped(plugin):
        return None
    groups = plugin.groups
    return {
        g: float(groups[g][0]) * np.asarray(v, dtype=float)
        for g, v in plugin.group_scores(ctx).items()
    }


def _grouped(plugin: Any) -> bool:
    return callable(getattr(plugin, "group_scores", None)) and isinstance(
        getattr(plugin, "groups", None), Mapping
    )


def _components_of(
    pipeline: Pipeline, split_groups: bool
) -> tuple[list[str], list[str], dict[str, float]]:
    """(a label per signal plugin: its name, with "#2", "#3" for a name configured again;
    the components; label -> signal weight)."""
    labels: list[str] = []
    names: list[str] = []
    weights: dict[str, float] = {}
    for plugin, weight in pipeline.signals:
        label, k = plugin.name, 1
        while label in weights:
            k += 1
            label = f"{plugin.name}#{k}"
        labels.append(label)
        weights[label] = float(weight)
        if split_groups and _grouped(plugin):
            names.extend(f"{label}.{g}" for g in plugin.groups)  # type: ignore[attr-defined]
        else:
            names.append(label)
    return labels, names, weights


# ----------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class Ledger:
    """What moved a run's equity, bar by bar (T bars, N symbols).

    `marks` are the portfolio's marks: each bar's close, or where a symbol has no bar the
    previous mark divided by the bar's split (`portfolio_marks`). `fills` has one row per
    fill: `bar` (the bar that booked it), `column` (the symbol's index), `quantity` (signed:
    + bought), `price`, `reference_price` and `commission`."""

    times: pd.DatetimeIndex
    symbols: tuple[str, ...]
    marks: np.ndarray
    split: np.ndarray
    dividend: np.ndarray
    fills: pd.DataFrame
    equity: np.ndarray
    initial_capital: float


def _utc_index(times: Any) -> pd.DatetimeIndex:
    """Times as a UTC index (naive times are taken as UTC, as `Panel.datetimes` labels them)."""
    idx = pd.DatetimeIndex(pd.to_datetime(times))
    return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")


def portfolio_marks(close: Any, split: Any = None) -> np.ndarray:
    """(T, N) marks as the engine's portfolio keeps them: the bar's close where there is
    one, else the previous mark divided by the bar's split (NaN before a symbol's first
    close)."""
    c = np.asarray(close, dtype=float)
    if c.ndim != 2:
        raise ValueError(f"close must be (bars, symbols), got shape {c.shape}")
    s = np.ones_like(c) if split is None else np.asarray(split, dtype=float)
    if s.shape != c.shape:
        raise ValueError(f"split {s.shape} and close {c.shape} differ in shape")
    out = np.empty_like(c)
    prev = np.full(c.shape[1], np.nan)
    for t in range(c.shape[0]):
        prev = np.where(np.isnan(c[t]), prev / s[t], c[t])
        out[t] = prev
    return out


def _fill_rows(fills: Any) -> list[Mapping[str, Any]]:
    if fills is None:
        return []
    if isinstance(fills, pd.DataFrame):
        return fills.to_dict("records")
    rows: list[Mapping[str, Any]] = []
    for f in fills:
        if isinstance(f, Fill):
            rows.append(
                {
                    "symbol": f.symbol,
                    "side": str(f.side),
                    "quantity": f.quantity,
                    "price": f.price,
                    "reference_price": f.reference_price,
                    "commission": f.commission,
                    "time": f.time,
                    "client_order_id": f.client_order_id,
                }
            )
        elif isinstance(f, Mapping):
            rows.append(f)
        else:
            raise ValueError(f"a fill must be a Fill or a mapping, got {type(f).__name__}")
    return rows


def _decider(row: Mapping[str, Any]) -> tuple[Any, bool]:
    """(the deciding bar's time or None, whether the order was a rebalance) of a fill: from
    explicit `decided_at` and `leg` values, else from a tradingd client order id
    (`run|YYYYmmddTHHMMSS|symbol|leg|attempt`)."""
    decided, leg = row.get("decided_at"), row.get("leg")
    if decided is None or (not isinstance(decided, str) and pd.isna(decided)):
        parsed = parse_client_order_id(str(row.get("client_order_id") or ""))
        if parsed is None:
            return None, False
        try:
            decided = datetime.strptime(parsed.stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return None, False
        leg = parsed.tag if leg is None else leg
    return decided, str(leg) == Leg.ENTRY.value


def _fill_table(fills: Any, times: pd.DatetimeIndex, symbols: tuple[str, ...]) -> pd.DataFrame:
    """The fills as the ledger's table. A fill is booked at the first bar at or after its
    `booked_at` (or, without one, its `time`): a live fill executed between two bars is
    booked at the next, as the engine books it. `decided` is the bar of the decision whose
    order it filled (-1: unknown) and `entry` whether that order was a rebalance (leg
    "entry"), not a protective exit."""
    col = {s: j for j, s in enumerate(symbols)}
    keys = (
        "bar",
        "column",
        "quantity",
        "price",
        "reference_price",
        "commission",
        "decided",
        "entry",
    )
    out: dict[str, list[Any]] = {k: [] for k in keys}
    stamps: list[Any] = []
    decided_at: list[Any] = []
    for k, r in enumerate(_fill_rows(fills)):
        sym = r.get("symbol")
        if sym not in col:
            raise ValueError(f"fill {k}: symbol {sym!r} is not in the ledger's symbols")
        side = str(r.get("side", "")).lower()
        if side not in ("buy", "sell"):
            raise ValueError(f"fill {k} ({sym}): side must be 'buy' or 'sell', got {side!r}")
        qty, price = float(r["quantity"]), float(r["price"])
        if not (math.isfinite(qty) and qty >= 0):
            raise ValueError(f"fill {k} ({sym}): quantity must be finite and >= 0, got {qty!r}")
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"fill {k} ({sym}): price must be finite and > 0, got {price!r}")
        ref = r.get("reference_price")
        ref = price if ref is None or not math.isfinite(float(ref)) else float(ref)
        commission = r.get("commission")
        commission = 0.0 if commission is None else float(commission)
        if not math.isfinite(commission):
            raise ValueError(f"fill {k} ({sym}): commission is not finite")
        booked = r.get("booked_at")
        stamp = booked if booked is not None and not pd.isna(booked) else r.get("time")
        if stamp is None or pd.isna(stamp):
            raise ValueError(f"fill {k} ({sym}) has no time")
        stamps.append(stamp)
        decided, entry = _decider(r)
        decided_at.append(decided)
        out["column"].append(col[sym])
        out["quantity"].append(qty if side == "buy" else -qty)
        out["price"].append(price)
        out["reference_price"].append(ref)
        out["commission"].append(commission)
        out["entry"].append(entry)
    if stamps:
        at = _utc_index(stamps)
        bars = times.searchsorted(at, side="left")
        late = np.flatnonzero(bars >= len(times))
        if late.size:
            raise ValueError(
                f"fill {int(late[0])} at {at[late[0]]} is after the ledger's last bar "
                f"({times[-1] if len(times) else 'no bars'})"
            )
        early = np.flatnonzero(at < times[0])
        if early.size:
            raise ValueError(
                f"fill {int(early[0])} at {at[early[0]]} is before the ledger's first bar "
                f"({times[0]})"
            )
        out["bar"] = bars.tolist()
        known = [i for i, d in enumerate(decided_at) if d is not None]
        decided = np.full(len(stamps), -1, dtype=np.int64)
        if known:
            decided[known] = times.get_indexer(_utc_index([decided_at[i] for i in known]))
        out["decided"] = decided.tolist()
    return pd.DataFrame(out).astype(
        {
            "bar": np.int64,
            "column": np.int64,
            "quantity": float,
            "price": float,
            "reference_price": float,
            "commission": float,
            "decided": np.int64,
            "entry": bool,
        }
    )


def make_ledger(
    times: Any,
    symbols: Sequence[str],
    marks: Any,
    equity: Any,
    initial_capital: float,
    fills: Any = None,
    split: Any = None,
    dividend: Any = None,
) -> Ledger:
    """A checked `Ledger`. `fills`: `Fill`s, mappings or a DataFrame with `symbol`, `side`,
    `quantity`, `price`, optional `reference_price` (missing: the price, i.e. no slippage),
    `commission`, and `time` or `booked_at`. `split` defaults to 1 and `dividend` to 0."""
    idx = _utc_index(times)
    syms = tuple(str(s) for s in symbols)
    if len(set(syms)) != len(syms):
        raise ValueError("symbols must be unique")
    if not idx.is_monotonic_increasing or not idx.is_unique:
        raise ValueError("times must be increasing and unique")
    shape = (len(idx), len(syms))
    m = np.asarray(marks, dtype=float)
    if m.shape != shape:
        raise ValueError(f"marks have shape {m.shape}, expected (bars, symbols) = {shape}")
    s = np.ones(shape) if split is None else np.asarray(split, dtype=float)
    d = np.zeros(shape) if dividend is None else np.asarray(dividend, dtype=float)
    for name, arr in (("split", s), ("dividend", d)):
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("split factors must be finite and > 0 (1 = no split)")
    d = np.nan_to_num(d, nan=0.0)
    e = np.asarray(equity, dtype=float).ravel()
    if e.size != len(idx):
        raise ValueError(f"equity ({e.size}) and times ({len(idx)}) differ in length")
    if not np.isfinite(e).all():
        raise ValueError("equity contains NaN or inf")
    cap = float(initial_capital)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"initial_capital must be positive, got {initial_capital!r}")
    return Ledger(idx, syms, m, s, d, _fill_table(fills, idx, syms), e, cap)


# ----------------------------------------------------------------------------- PnL


@dataclass(frozen=True)
class PnLAttribution:
    """Money per bar and line (`lines`: the components, then `unattributed`, `costs`,
    `residual`), which adds up to the equity's change on every bar, and diagnostics."""

    lines: pd.DataFrame
    components: tuple[str, ...]
    initial_capital: float
    equity: np.ndarray
    final_quantity: np.ndarray
    position_bars: int
    unattributed_position_bars: int
    decisions: int
    keying_decisions: int
    keying_decisions_unknown: int
    mean_abs_score_share: dict[str, float]
    max_abs_share: float

    def returns(self) -> pd.DataFrame:
        """Each line's per-bar return: its money over the equity before the bar. The lines
        of a bar add up to that bar's simple return."""
        prev = np.concatenate(([self.initial_capital], self.equity[:-1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.lines.to_numpy() / np.where(prev > 0, prev, np.nan)[:, None]
        return pd.DataFrame(r, index=self.lines.index, columns=self.lines.columns)


def _decision_table(
    decisions: Any, ledger: Ledger, components: Sequence[str]
) -> tuple[dict[tuple[int, int], int], np.ndarray, np.ndarray]:
    """((bar, column) -> row, contributions (D, K), known (D,)) of the decisions with a
    nonzero target. A decision is known when its contributions are finite and add up to a
    score that is not 0 (nor rounding noise of its contributions: a score of 1e-17 made of
    contributions of +-0.1 has no meaningful split)."""
    k = len(components)
    empty: tuple[dict[tuple[int, int], int], np.ndarray, np.ndarray] = (
        {},
        np.zeros((0, k)),
        np.zeros(0, bool),
    )
    if decisions is None:
        return empty
    frame = decisions if isinstance(decisions, pd.DataFrame) else pd.DataFrame(list(decisions))
    if frame.empty:
        return empty
    missing = [c for c in ("time", "symbol", "target", *components) if c not in frame]
    if missing:
        raise ValueError(
            f"decisions lack column(s) {', '.join(missing)} (columns: "
            f"{', '.join(map(str, frame.columns))})"
        )
    target = np.nan_to_num(frame["target"].to_numpy(dtype=float), nan=0.0)
    frame = frame[target != 0]
    if frame.empty:
        return empty
    col = {s: j for j, s in enumerate(ledger.symbols)}
    unknown = sorted(set(frame["symbol"]) - set(col))
    if unknown:
        raise ValueError(f"decisions name symbol(s) not in the ledger: {', '.join(unknown[:5])}")
    at = _utc_index(frame["time"])
    bars = ledger.times.get_indexer(at)
    if (bars < 0).any():
        bad = at[int(np.flatnonzero(bars < 0)[0])]
        raise ValueError(f"decision at {bad} is not at one of the ledger's bar times")
    cols = [col[s] for s in frame["symbol"]]
    index = {(int(b), c): i for i, (b, c) in enumerate(zip(bars.tolist(), cols, strict=True))}
    if len(index) != len(cols):
        raise ValueError("decisions hold two rows for the same bar and symbol")
    c = frame[list(components)].to_numpy(dtype=float)
    total = c.sum(axis=1)
    if "score" in frame:
        score = frame["score"].to_numpy(dtype=float)
        both = np.isfinite(score) & np.isfinite(total)
        tol = _SCORE_TOL * np.maximum(1.0, np.abs(score))
        off = np.flatnonzero(both & (np.abs(total - score) > tol))
        if off.size:
            i = int(off[0])
            raise ValueError(
                f"decision {frame['symbol'].iloc[i]} at {at[i]}: the components add up to "
                f"{total[i]!r}, not to its score {score[i]!r}"
            )
        total = np.where(np.isfinite(score), total, np.nan)
    with np.errstate(invalid="ignore"):
        noise = _NOISE * np.abs(c).sum(axis=1)
        known = np.isfinite(c).all(axis=1) & np.isfinite(total) & (np.abs(total) > noise)
    return index, c, known


def attribute_pnl(ledger: Ledger, decisions: Any, components: Sequence[str]) -> PnLAttribution:
    """Each bar's change of equity, split into the components, `unattributed`, `costs` and
    the accounting `residual`.

    Per bar t and symbol i, with q the quantity held at the previous close, s the split, d
    the dividend, m the marks and the bar's fills f (signed quantity q_f, reference price
    ref_f): PnL = q s (m_t + d) - q m_{t-1} + sum_f q_f (m_t - ref_f), the position's gain
    from the previous close, dividends included, with slippage left to the costs. Costs =
    sum_f commission_f + q_f (price_f - ref_f). The residual is what the equity moved
    beyond PnL - costs (rounding, or cash flows the ledger does not know).

    `decisions`: rows (time, symbol, target, one column per component: its signed
    contribution to the combined score; optional `score`, checked against their sum). A
    position is keyed to the decision that set it: a rebalance fill (leg "entry") that opens
    the position, adds to it or flips it re-keys the symbol to its deciding bar's decision,
    from the bar the fill is booked on (that whole bar included). Trims, exits and protective
    fills do not re-key: the shares left were bought for the earlier reasons. The position's
    PnL on a bar is split in the proportions contribution / score of its key. PnL of a
    position with no key, or keyed to a decision whose split is unknown (no decision row
    with a nonzero target, a non-finite component, a score of 0), is `unattributed`."""
    comps = tuple(str(c) for c in components)
    if len(set(comps)) != len(comps) or set(comps) & {UNATTRIBUTED, COSTS, RESIDUAL}:
        raise ValueError(f"component names must be unique and not reserved, got {comps}")
    n_bars, n = ledger.marks.shape
    k = len(comps)
    index, d_c, d_known = _decision_table(decisions, ledger, comps)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_share = np.where(d_known[:, None], d_c / d_c.sum(axis=1, keepdims=True), 0.0)
    f = ledger.fills.sort_values("bar", kind="stable")
    f_bar = f["bar"].to_numpy()
    f_col = f["column"].to_numpy()
    f_q = f["quantity"].to_numpy()
    f_ref = f["reference_price"].to_numpy()
    f_cost = f["commission"].to_numpy() + f_q * (f["price"].to_numpy() - f_ref)
    f_row = np.asarray(
        [
            index.get((int(b), int(c)), -1) if e and b >= 0 else -1
            for b, c, e in zip(f["decided"], f_col, f["entry"], strict=True)
        ],
        dtype=np.int64,
    )
    f_edges = np.searchsorted(f_bar, np.arange(n_bars + 1), side="left")

    q = np.zeros(n)
    prev = np.full(n, np.nan)
    key = np.full(n, -1, dtype=np.int64)  # the decision row each symbol's position is keyed to
    mix = np.zeros((n, k))
    known = np.zeros(n, dtype=bool)
    keyed: set[int] = set()
    lines = np.zeros((n_bars, k + 3))
    e_prev = ledger.initial_capital
    position_bars = unattributed_bars = 0
    for t in range(n_bars):
        m, s, div = ledger.marks[t], ledger.split[t], ledger.dividend[t]
        carried = q * s
        pnl = np.zeros(n)
        held = q != 0
        if held.any():
            pnl[held] = carried[held] * (m[held] + div[held]) - q[held] * prev[held]
        active = held.copy()
        cost = 0.0
        for j in range(f_edges[t], f_edges[t + 1]):
            i = int(f_col[j])
            before = carried[i]
            after = before + f_q[j]
            pnl[i] += f_q[j] * (m[i] - f_ref[j])
            cost += float(f_cost[j])
            active[i] = True
            if abs(after) > abs(before) or after * before < 0:
                # An entry, addition or flip: the position is now what this order made it.
                row = int(f_row[j])
                key[i] = row
                known[i] = row >= 0 and bool(d_known[row])
                mix[i] = d_share[row] if known[i] else 0.0
                if row >= 0:
                    keyed.add(row)
            carried[i] = after
        if not np.isfinite(pnl[active]).all():
            bad = ledger.symbols[int(np.flatnonzero(active & ~np.isfinite(pnl))[0])]
            raise ValueError(
                f"{bad} is held or traded at {ledger.times[t]} but has no mark (price) there"
            )
        position_bars += int(active.sum())
        unattributed_bars += int((active & ~known).sum())
        lines[t, :k] = pnl[known] @ mix[known]
        lines[t, k] = float(np.sum(pnl[~known]))
        lines[t, k + 1] = -cost
        lines[t, k + 2] = (ledger.equity[t] - e_prev) - (float(np.sum(pnl)) - cost)
        carried[np.abs(carried) < _FLAT] = 0.0
        q = carried
        prev = m
        e_prev = ledger.equity[t]

    rows = np.asarray(sorted(r for r in keyed if d_known[r]), dtype=np.int64)
    used = d_c[rows]
    if used.size:
        mag = np.abs(used).sum(axis=1, keepdims=True)
        mean_abs = dict(zip(comps, (np.abs(used) / mag).mean(axis=0).tolist(), strict=True))
    else:
        mean_abs = dict.fromkeys(comps, _NAN)
    frame = pd.DataFrame(lines, index=ledger.times, columns=[*comps, UNATTRIBUTED, COSTS, RESIDUAL])
    return PnLAttribution(
        lines=frame,
        components=comps,
        initial_capital=ledger.initial_capital,
        equity=ledger.equity,
        final_quantity=q,
        position_bars=position_bars,
        unattributed_position_bars=unattributed_bars,
        decisions=int(d_known.size),
        keying_decisions=int(rows.size),
        keying_decisions_unknown=len(keyed) - int(rows.size),
        mean_abs_score_share=mean_abs,
        max_abs_share=float(np.max(np.abs(d_share[rows]))) if rows.size else _NAN,
    )


# ----------------------------------------------------------------------------- risk


def _weights(equity: np.ndarray, cap: float) -> np.ndarray:
    """E_{t-1} / E_0: what turns a bar's return into money over the initial capital."""
    return np.concatenate(([cap], equity[:-1])) / cap


def beta_decomposition(
    equity: Any,
    initial_capital: float,
    benchmark_returns: Any,
    periods_per_year: float = 252.0,
) -> dict[str, float]:
    """Systematic against idiosyncratic return and risk of an equity curve.

    OLS of the per-bar simple returns on the benchmark's, with an intercept, over the bars
    where both are known: r_t = alpha + beta b_t + e_t (beta = cov(r, b) / var(b), the
    `PerformanceAnalyzer`'s). Per bar, the systematic return is beta b_t and the
    idiosyncratic one r_t - beta b_t = alpha + e_t. Variance shares: var(beta b) / var(r) =
    R^2 and var(r - beta b) / var(r) = 1 - R^2 (OLS residuals are uncorrelated with b in
    the sample). Return contributions are money over the initial capital,
    sum_t part_t E_{t-1} / E_0; the bars without a benchmark return make `unaligned_return`,
    so systematic + idiosyncratic + unaligned = total return."""
    e = np.asarray(equity, dtype=float).ravel()
    cap = float(initial_capital)
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"initial_capital must be positive, got {initial_capital!r}")
    if not np.isfinite(e).all():
        raise ValueError("equity contains NaN or inf")
    b = np.asarray(benchmark_returns, dtype=float).ravel()
    if b.size != e.size:
        raise ValueError(f"benchmark returns ({b.size}) and equity ({e.size}) differ in length")
    ppy = float(periods_per_year)
    r = simple_returns(e, cap)
    w = _weights(e, cap)
    both = np.isfinite(r) & np.isfinite(b)
    rb, bb = r[both], b[both]
    n = int(both.sum())
    bt = beta(rb, bb) if n >= 3 else _NAN
    total = float(e[-1] / cap - 1.0) if e.size else 0.0
    out: dict[str, float] = {
        "bars": int(e.size),
        "benchmark_bars": n,
        "total_return": total,
        "beta": bt,
        "beta_stderr": _NAN,
        "alpha_per_bar": _NAN,
        "alpha_annualised": _NAN,
        "r_squared": _NAN,
        "correlation": _NAN,
        "systematic_variance_share": _NAN,
        "idiosyncratic_variance_share": _NAN,
        "total_volatility": float(np.std(rb, ddof=1)) * math.sqrt(ppy) if n >= 2 else _NAN,
        "systematic_volatility": _NAN,
        "idiosyncratic_volatility": _NAN,
        "systematic_return": _NAN,
        "idiosyncratic_return": _NAN,
        "unaligned_return": float(np.sum((r * w)[~both])) if np.isfinite(r).all() else _NAN,
    }
    if not math.isfinite(bt) or not np.isfinite(r).all():
        return out
    a = float(np.mean(rb) - bt * np.mean(bb))
    sys_r = bt * bb
    idio = rb - sys_r
    resid = idio - a
    var_r = float(np.var(rb, ddof=1))
    var_b = float(np.var(bb, ddof=1))
    share = float(np.var(sys_r, ddof=1)) / var_r if var_r > 0 else _NAN
    growth = 1.0 + a
    out.update(
        {
            "beta_stderr": math.sqrt(float(np.sum(resid**2)) / (n - 2) / (var_b * (n - 1))),
            "alpha_per_bar": a,
            "alpha_annualised": growth**ppy - 1.0 if growth > 0 else _NAN,
            "r_squared": share,
            "correlation": math.copysign(math.sqrt(share), bt) if math.isfinite(share) else _NAN,
            "systematic_variance_share": share,
            "idiosyncratic_variance_share": float(np.var(idio, ddof=1)) / var_r
            if var_r > 0
            else _NAN,
            "systematic_volatility": float(np.std(sys_r, ddof=1)) * math.sqrt(ppy),
            "idiosyncratic_volatility": float(np.std(idio, ddof=1)) * math.sqrt(ppy),
            "systematic_return": float(np.sum(sys_r * w[both])),
            "idiosyncratic_return": float(np.sum(idio * w[both])),
        }
    )
    return out


# ----------------------------------------------------------------------------- tables


def component_attribution(pnl: PnLAttribution, benchmark_returns: Any = None) -> dict[str, Any]:
    """The table of a `PnLAttribution`: one row per line with its money (`pnl`), its
    `return` (pnl / initial capital; the rows add up to `total_return`), for components the
    mean share of the score's magnitude they supplied, and with a benchmark each line's
    `beta` (of its per-bar return contributions; the lines' betas add up to the run's) and
    `systematic_return` (beta_line x benchmark return, as money over the initial capital)."""
    cap = pnl.initial_capital
    money = pnl.lines.sum(axis=0)
    final = float(pnl.equity[-1]) if pnl.equity.size else cap
    total = final / cap - 1.0
    b = None if benchmark_returns is None else np.asarray(benchmark_returns, dtype=float).ravel()
    if b is not None and b.size != len(pnl.lines):
        raise ValueError(f"benchmark returns ({b.size}) and bars ({len(pnl.lines)}) differ")
    per_bar = pnl.returns().to_numpy()
    w = _weights(pnl.equity, cap)
    both = np.isfinite(b) & np.isfinite(per_bar).all(axis=1) if b is not None else None
    # Line betas only where the run's own beta is defined (the same bars and the same test
    # of a benchmark that moves), so that they add up to it.
    market = (
        both is not None
        and int(both.sum()) >= 3
        and math.isfinite(beta(per_bar[both].sum(axis=1), b[both]))  # type: ignore[index]
    )
    rows = []
    for j, line in enumerate(pnl.lines.columns):
        kind = "component" if line in pnl.components else line  # unattributed, costs, residual
        row: dict[str, Any] = {
            "line": line,
            "kind": kind,
            "pnl": float(money[line]),
            "return": float(money[line]) / cap,
            "mean_abs_score_share": pnl.mean_abs_score_share.get(line, _NAN),
            "beta": _NAN,
            "systematic_return": _NAN,
        }
        if market:
            bt = _line_beta(per_bar[both, j], b[both])  # type: ignore[index]
            row["beta"] = bt
            if math.isfinite(bt):
                row["systematic_return"] = float(np.sum(bt * b[both] * w[both]))  # type: ignore[index]
        rows.append(row)
    return {
        "method": "score_decomposition",
        "initial_capital": cap,
        "final_equity": final,
        "total_pnl": final - cap,
        "total_return": total,
        "sum_of_lines": float(math.fsum(r["return"] for r in rows)),
        "rows": rows,
        "decisions": pnl.decisions,
        "keying_decisions": pnl.keying_decisions,
        "keying_decisions_unknown": pnl.keying_decisions_unknown,
        "position_bars": pnl.position_bars,
        "unattributed_position_bars": pnl.unattributed_position_bars,
        "max_abs_share": pnl.max_abs_share,
    }


def _line_beta(x: np.ndarray, b: np.ndarray) -> float:
    """cov(x, b) / var(b), additive over lines (unlike `performance.beta`, no line is NaN
    for being constant: a line that never moves has beta 0)."""
    bc = b - b.mean()
    vb = float(np.mean(bc * bc))
    if not vb > 0:
        return _NAN
    return float(np.mean(bc * (x - x.mean())) / vb)


# ----------------------------------------------------------------------------- replay


class _Tap:
    """Stands in for a plugin in the engine's pipeline and forwards everything to it."""

    def __init__(self, inner: Any, recorder: _Recorder, label: str = "") -> None:
        self._inner = inner
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
    from ..app import load_data

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
    record = run_record(
        {
            "equity_curve": np.asarray(result.equity, dtype=float),
            "times": times,
            "initial_capital": config.run.initial_capital,
            "gross_exposure": np.asarray(result.gross_exposure, dtype=float),
            "fills": fills,
            "run_id": result.run_id,
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


# ----------------------------------------------------------------------------- analyzer


def _compare(replayed: RunRecord, recorded: RunRecord, tolerance: float) -> float:
    """The largest equity difference between the replay and the record, over the initial
    capital; ValueError when they are not the same run."""
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
        at = recorded.times[int(np.argmax(gap))]
        raise ValueError(
            f"the replay's equity differs from the record's by {worst:.3g} of the initial "
            f"capital at {at} (tolerance {tolerance:g}): not the same run (another model "
            "version, config or data?); attributing it would describe another run"
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
        """`beta_decomposition` of any run shape `performance.run_record` reads."""
        rec = run_record(backtest_results)
        return beta_decomposition(
            rec.equity,
            rec.initial_capital,
            self.benchmark_returns(rec.times),
            self.config.periods_per_year,
        )

    def attribute(self, replay: Replay, record: Any = None) -> dict[str, Any]:
        """Both attributions of a replay; `record` (any run shape) is the run it must
        reproduce."""
        worst = None
        if record is not None:
            worst = _compare(replay.record, run_record(record), self.config.record_tolerance)
        b = self.benchmark_returns(replay.record.times)
        pnl = attribute_pnl(replay.ledger, replay.decisions, replay.components)
        rec = replay.record
        levels = self.benchmark()
        c = self.config
        return {
            "run_id": rec.run_id,
            "start": rec.times[0].isoformat() if len(rec.times) else None,
            "end": rec.times[-1].isoformat() if len(rec.times) else None,
            "components": component_attribution(pnl, b),
            "risk": beta_decomposition(rec.equity, rec.initial_capital, b, c.periods_per_year),
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
        """Replay the run of `run_config` and attribute it (see `attribute`)."""
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


# ----------------------------------------------------------------------------- counterfactual


def _without(config: Config, component: str) -> Config:
    """`config` with one component removed: a whole signal plugin (the engine's weighted
    mean renormalises over the others) or one group of a grouped plugin (its group weight
    set to 0; the plugin renormalises over its other groups). Components are named as
    `_components_of` names them ("plugin", "plugin#2", "plugin.group")."""
    from ..config import PluginSpec

    label, _, group = component.partition(".")
    name, _, nth = label.partition("#")
    occurrence = int(nth) if nth else 1
    seen = 0
    out: list[PluginSpec] = []
    for spec in config.signals:
        if spec.name == name:
            seen += 1
            if seen == occurrence:
                if not group:
                    continue
                params = dict(spec.params)
                gw = dict(params.get("group_weights") or {})
                gw[group] = 0.0
                params["group_weights"] = gw
                spec = PluginSpec(spec.name, spec.weight, params)
        out.append(spec)
    if seen < occurrence:
        raise ValueError(f"no signal plugin {component!r} in the configuration")
    if not out:
        raise ValueError(f"{component!r} is the only signal: nothing is left without it")
    return dataclasses.replace(config, signals=tuple(out))


async def counterfactual_attribution(
    run_config: Config, *, panel: Panel | None = None, progress: bool = False
) -> dict[str, Any]:
    """A second view, not additive: the run again without each component in turn. A
    component's marginal return is the full run's total return minus the total return of
    the run without it. Interactions (sizing, risk limits, a slot taken by another
    position) make the marginals differ from the score decomposition and not add up to the
    total; a component that cannot be removed (the only signal, or the last group) is NaN
    with the reason."""
    from ..app import load_data

    panel = panel if panel is not None else load_data(run_config)

    def components(engine: Engine) -> list[str]:
        return _components_of(engine.pipeline, True)[1]

    _, (base, names), _ = await _run(run_config, panel, progress, components)
    cap = run_config.run.initial_capital
    full = base.equity[-1] / cap - 1.0 if base.equity else 0.0
    rows = []
    for name in names:
        row: dict[str, Any] = {
            "component": name,
            "return_without": _NAN,
            "marginal_return": _NAN,
            "note": "",
        }
        try:
            variant = _without(run_config, name)
            _, (res, _), _ = await _run(variant, panel, progress)
        except (ValueError, ConfigError) as exc:
            row["note"] = str(exc)
        else:
            without = res.equity[-1] / cap - 1.0 if res.equity else 0.0
            row["return_without"] = without
            row["marginal_return"] = full - without
        rows.append(row)
    return {"method": "counterfactual", "total_return": full, "rows": rows}
