"""The PnL attribution ledger: what moved a run's equity bar by bar (`Ledger`: marks,
splits, dividends, fills) and its split into the signal components, `unattributed`, `costs`
and the accounting `residual` (`attribute_pnl`). Pure math on arrays and tables, apart from
the replay that records the decisions it needs (docs/ATTRIBUTION.md has the method).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ..core.types import Fill, Leg, parse_client_order_id
from .attribution_components import _SCORE_TOL

__all__ = [
    "COSTS",
    "RESIDUAL",
    "UNATTRIBUTED",
    "Ledger",
    "PnLAttribution",
    "attribute_pnl",
    "make_ledger",
    "portfolio_marks",
]

UNATTRIBUTED = "unattributed"
COSTS = "costs"
RESIDUAL = "residual"
_NAN = math.nan

# Share quantities below this are what is left of a closed position after rounding.
_FLAT = 1e-9
# A score within this fraction of the sum of its contributions' magnitudes is rounding noise
# of their cancellation (exactly opposite ranks add up to 1e-17, not 0): no split.
_NOISE = 1e-12


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
