"""Feature values in two modes that give one answer.

- `compute_batch(panel, names)`: whole histories at once (replay, training): TA-Lib on each
  symbol's own bars, trailing windows as strided views, then cross-sectional steps per bar.
- `StreamingFeatures.update(bar)`: one new bar for the whole universe (the live daemon):
  incremental TA-Lib-exact indicators and per-symbol ring buffers, nothing recomputed.

Split semantics (both modes): a value at bar t is computed on prices adjusted for the splits
known at t, never for a later one (that would be lookahead, and it also changes TA-Lib's
tie-breaking on exact price ties). Batch mode evaluates each stretch between two splits on the
history adjusted as of that stretch; streaming mode rescales its state when a split arrives.

A value is NaN until the feature is ready (warm-up) or when the symbol has no bar at t.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..core.types import CrossSection
from ..feeds.panel import Panel
from .catalog import (
    BarNode,
    Catalog,
    CrossNode,
    IndicatorNode,
    Node,
    PointNode,
    WindowNode,
    cross_section,
    topological,
    window_op,
)
from .indicators import BAR_FIELDS, INPUTS, talib_outputs

# ----------------------------------------------------------------------------- batch


def splits_after(split: np.ndarray) -> np.ndarray:
    """after[t, j] = product of symbol j's split coefficients strictly after bar t."""
    rev = np.cumprod(split[::-1], axis=0)[::-1]
    out = np.ones_like(split)
    out[:-1] = rev[1:]
    return out


def compute_batch(
    panel: Panel, names: Sequence[str], catalog: Catalog | None = None, dtype: type = np.float64
) -> dict[str, np.ndarray]:
    """Every named feature for every bar and symbol: {name: (T, N) array}."""
    cat = catalog or Catalog()
    wanted = [cat.node(n) for n in dict.fromkeys(names)]
    order = topological(wanted)
    per_symbol = [n for n in order if not isinstance(n, CrossNode)]
    t_len, n_sym = panel.close.shape
    # Full (T, N) matrices only for what is returned and what cross-sections read; the rest
    # lives per symbol for the duration of one symbol's evaluation.
    keep = {n.name for n in wanted} | {n.deps[0].name for n in order if isinstance(n, CrossNode)}
    # Every column is written below, a block of symbols at a time.
    out: dict[str, np.ndarray] = {
        n.name: np.empty((t_len, n_sym), dtype=dtype) for n in order if n.name in keep
    }
    fields = bar_fields(per_symbol)
    read = ("close", "split", *(f for f in fields if f != "close"))
    for j0 in range(0, n_sym, _BLOCK):
        j1 = min(j0 + _BLOCK, n_sym)
        # A few symbols' columns transposed at once: each symbol's history is then one
        # contiguous row to scan and gather from, where a column of the (T, N) panel is
        # strided (a cache line for each of its values), and its results go back the same
        # way. The panel's values themselves, so the same arithmetic and bits.
        block = {f: np.ascontiguousarray(getattr(panel, f)[:, j0:j1].T) for f in read}
        done = {name: np.full((j1 - j0, t_len), np.nan, dtype=dtype) for name in out}
        for jj in range(j1 - j0):
            _evaluate_symbol(jj, block, fields, per_symbol, done)
        for name, values in done.items():
            out[name][:, j0:j1] = values.T
    for node in order:
        if isinstance(node, CrossNode):
            src = out[node.deps[0].name]
            dst = out[node.name]
            for t in range(t_len):
                dst[t] = cross_section(src[t].astype(np.float64), node.method)
    return {n.name: out[n.name] for n in wanted}


_UNREAD = np.empty(0)
# Symbols transposed at a time: 8 columns of 4,822 bars (300 KB a field) stay in a core's cache
# while they are transposed; 64 did not, and cost what the contiguous reads saved.
_BLOCK = 8


def _evaluate_symbol(
    jj: int,
    block: Mapping[str, np.ndarray],
    fields: Sequence[str],
    per_symbol: Sequence[Node],
    done: Mapping[str, np.ndarray],
) -> None:
    """Row `jj` of a transposed block (one symbol): its per-symbol features into `done`."""
    rows = np.flatnonzero(~np.isnan(block["close"][jj]))
    if rows.size == 0:
        return
    split = block["split"][jj][rows]
    # Segments between splits: within one, the prices as adjusted at its bars are the same
    # series, so one evaluation over the history up to the segment's end serves all of them.
    # No split: one segment, one evaluation.
    starts = [0, *np.flatnonzero(split != 1.0).tolist()]
    ends = [*starts[1:], rows.size]
    for lo, hi in zip(starts, ends, strict=True):
        if lo == hi:
            continue
        r = rows[:hi]
        # Only the fields the nodes read (a momentum needs the close alone): each is a gather
        # along the symbol's row and a division, per stretch.
        if len(starts) == 1:
            # No split: every factor is 1 (x / 1.0 is x, in float64), nothing to adjust.
            bars = {f: block[f][jj][r].astype(np.float64, copy=False) for f in fields}
        else:
            g = splits_after(split[:hi, None])[:, 0]
            bars = {
                f: block[f][jj][r] * g if f == "volume" else block[f][jj][r] / g for f in fields
            }
        values: dict[str, np.ndarray] = {}
        cache: dict[tuple[str, tuple[object, ...]], dict[str, np.ndarray]] = {}
        for node in per_symbol:
            values[node.name] = _batch_node(node, values, bars, cache)
            if node.name in done:
                done[node.name][jj, rows[lo:hi]] = values[node.name][lo:hi]


_ENDS_OPS = frozenset({"ratio", "lag"})  # window_op's ops that read w[0] and w[-1] alone


class _Ends:
    """`sliding_window_view(src, length).T` as far as w[0] and w[-1] go, which is all that
    window_op reads for `_ENDS_OPS`: the same arrays, so the same arithmetic and bits."""

    __slots__ = ("_first", "_last")

    def __init__(self, src: np.ndarray, length: int) -> None:
        self._first = src[: src.size - length + 1]
        self._last = src[length - 1 :]

    def __getitem__(self, i: int) -> np.ndarray:
        if i == 0:
            return self._first
        if i == -1:
            return self._last
        raise IndexError(f"only the first and last values of a window are kept, not {i}")


def bar_fields(nodes: Sequence[Node]) -> tuple[str, ...]:
    """The bar fields that evaluating `nodes` reads, in `BAR_FIELDS` order."""
    read: set[str] = set()
    for node in nodes:
        if isinstance(node, BarNode):
            read.add(node.field_name)
        elif isinstance(node, IndicatorNode):
            # An unknown kind reads everything: talib_outputs names it ("unknown indicator").
            read.update(INPUTS.get(node.kind, BAR_FIELDS))
    return tuple(f for f in BAR_FIELDS if f in read)


def _batch_node(
    node: Node,
    values: Mapping[str, np.ndarray],
    bars: Mapping[str, np.ndarray],
    cache: dict[tuple[str, tuple[object, ...]], dict[str, np.ndarray]],
) -> np.ndarray:
    if isinstance(node, BarNode):
        return bars[node.field_name]
    if isinstance(node, IndicatorNode):
        key = (node.kind, node.params)
        if key not in cache:
            # A field the kind does not read is not built (`bar_fields`): an empty array.
            cache[key] = talib_outputs(
                node.kind, node.params, *(bars.get(f, _UNREAD) for f in BAR_FIELDS)
            )
        return cache[key][node.output]
    if isinstance(node, PointNode):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(node.fn(*(values[d.name] for d in node.deps)), dtype=np.float64)
    if isinstance(node, WindowNode):
        src = values[node.deps[0].name]
        res = np.full(src.shape, np.nan)
        length = node.length
        if src.size >= length:
            if node.op in _ENDS_OPS:
                # Only the windows' first and last values: two slices, not the windows'
                # view (its construction cost more than the arithmetic, per stretch).
                res[length - 1 :] = window_op(node.op, _Ends(src, length))  # type: ignore[arg-type]
            else:
                w = sliding_window_view(src, length).T  # (length, T - length + 1)
                res[length - 1 :] = window_op(node.op, w)
        return res
    raise TypeError(f"cannot evaluate {type(node).__name__} per symbol")


# ----------------------------------------------------------------------------- streaming


class _Window:
    """Per-symbol ring buffers: each symbol's own last `length` values, oldest first."""

    def __init__(self, n_symbols: int, length: int, degree: tuple[int, int]) -> None:
        self.length = length
        self.degree = degree
        self.buf = np.full((length, n_symbols), np.nan)
        self.pos = np.full(n_symbols, -1, dtype=np.int64)
        self._cols = np.arange(n_symbols)
        self._back = np.arange(length - 1, -1, -1)[:, None]

    def push(self, x: np.ndarray, valid: np.ndarray, split: np.ndarray) -> None:
        pd_, vd = self.degree
        if (pd_ or vd) and (split != 1.0).any():
            cols = np.flatnonzero(split != 1.0)
            s = split[cols]
            self.buf[:, cols] *= s ** (vd - pd_)
        v = np.flatnonzero(valid)
        p = (self.pos[v] + 1) % self.length
        self.pos[v] = p
        self.buf[p, v] = x[v]

    def windows(self) -> np.ndarray:
        idx = (self.pos[None, :] - self._back) % self.length
        return self.buf[idx, self._cols]


def _stream_classes() -> dict[str, Any]:
    from . import talib_stream as ts

    return {
        "rsi": lambda n, p: ts.Rsi(n, *p),
        "roc": lambda n, p: ts.Roc(n, p[0], field="close", name="roc"),
        "volume_roc": lambda n, p: ts.Roc(n, p[0], field="volume", name="volume_roc"),
        "macd": lambda n, p: ts.Macd(n, *p),
        "stoch": lambda n, p: ts.Stoch(n, *p),
        "adx": lambda n, p: ts.Adx(n, *p),
        "bbands": lambda n, p: ts.BBands(n, *p),
        "atr": lambda n, p: ts.Atr(n, *p),
        "trange": lambda n, p: ts.TRange(n),
        "obv": lambda n, p: ts.Obv(n),
        "mfi": lambda n, p: ts.Mfi(n, *p),
    }


class StreamingFeatures:
    """Updates every named feature from one new cross-section, for the live daemon."""

    def __init__(
        self, names: Sequence[str], n_symbols: int, catalog: Catalog | None = None
    ) -> None:
        self.catalog = cat = catalog or Catalog()
        self.names = tuple(dict.fromkeys(names))
        self._order = topological([cat.node(n) for n in self.names])
        self._indicators: dict[tuple[str, tuple[object, ...]], Any] = {}
        self._windows: dict[str, _Window] = {}
        classes = _stream_classes()
        for node in self._order:
            if isinstance(node, IndicatorNode):
                key = (node.kind, node.params)
                if key not in self._indicators:
                    self._indicators[key] = classes[node.kind](n_symbols, node.params)
            elif isinstance(node, WindowNode):
                self._windows[node.name] = _Window(n_symbols, node.length, node.deps[0].degree)
        self.bars_seen = 0

    def update(self, bar: CrossSection) -> dict[str, np.ndarray]:
        valid = ~np.isnan(bar.close)
        outputs: dict[tuple[str, tuple[object, ...]], dict[str, np.ndarray]] = {}
        for key, ind in self._indicators.items():
            outputs[key] = ind.update(
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.volume,
                valid,
                bar.split,
            )
        values: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            for node in self._order:
                if isinstance(node, BarNode):
                    v = getattr(bar, node.field_name)
                elif isinstance(node, IndicatorNode):
                    v = outputs[(node.kind, node.params)][node.output]
                elif isinstance(node, PointNode):
                    v = np.asarray(node.fn(*(values[d.name] for d in node.deps)), dtype=np.float64)
                elif isinstance(node, WindowNode):
                    win = self._windows[node.name]
                    win.push(values[node.deps[0].name], valid, bar.split)
                    v = np.where(valid, window_op(node.op, win.windows()), np.nan)
                else:
                    assert isinstance(node, CrossNode)
                    v = cross_section(values[node.deps[0].name], node.method)
                values[node.name] = v
        self.bars_seen += 1
        return {n: values[n] for n in self.names}


# ----------------------------------------------------------------------------- ML windows


def prepare_ml_data(
    features: Mapping[str, np.ndarray],
    names: Sequence[str],
    close: np.ndarray,
    split: np.ndarray,
    times: np.ndarray,
    *,
    window: int = 60,
    horizon: int = 1,
    validation_fraction: float = 0.2,
    stride: int = 1,
    dtype: type = np.float32,
    split_at: np.datetime64 | None = None,
    start: np.datetime64 | None = None,
) -> dict[str, np.ndarray]:
    """Sliding windows (samples, window, features) with a forward log-return target.

    The target of a window ending at bar t is log(close[t + horizon] / close[t]) on prices
    adjusted for the splits in between. Samples are split chronologically by bar time: the
    last `validation_fraction` of the bar times validate; training samples whose target
    reaches into the validation period are dropped (purged), so no training label overlaps a
    validation bar. Windows with a missing (not ready) value are left out. `split_at` (a bar
    time) replaces the fraction: validation starts at the first bar at or after it. `start`
    (a bar time, `run.start` for `tradingd train`): windows ending before it are left out;
    the bars before it still fill the first windows and warm up the features, as the history
    before run.start warms up a backtest."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    t_len, n_sym = close.shape
    columns = [features[n] for n in names]
    if not columns or any(np.shape(c) != np.shape(columns[0]) for c in columns):
        np.stack(columns, axis=-1)  # numpy's own error, as the whole feature cube raised it
    after = splits_after(split)
    adj = close / after
    with np.errstate(invalid="ignore", divide="ignore"):
        target = np.full((t_len, n_sym), np.nan)
        target[:-horizon] = np.log(adj[horizon:] / adj[:-horizon])
    # First the samples alone, as (end bar, symbol) pairs: each symbol's window ends that
    # have no missing value and a target. The windows are copied once, into the outputs,
    # below; concatenating every symbol's windows, reordering them by time and then
    # splitting them held four copies at once (~3 GB for 50 stocks' 967 MB of windows).
    first_end = np.asarray(start).astype("datetime64[ns]") if start is not None else None
    per_symbol: list[tuple[int, np.ndarray]] = []
    for j in range(n_sym):
        if t_len < window:
            continue
        ends = np.arange(window - 1, t_len, stride)
        if first_end is not None:
            ends = ends[times[ends] >= first_end]
        # A window is complete when none of its bars has a missing feature: counted with a
        # running sum of the bars with one, not by looking into every window.
        missing = np.isnan(_symbol_features(columns, j)).any(axis=1)
        counted = np.concatenate(([0], np.cumsum(missing)))
        ok = (counted[ends + 1] == counted[ends + 1 - window]) & np.isfinite(target[ends, j])
        ends = ends[ok]
        if ends.size:
            per_symbol.append((j, ends))
    if not per_symbol:
        raise ValueError("no complete window: too few bars after the warm-up")
    t_idx = np.concatenate([ends for _, ends in per_symbol])
    s_idx = np.concatenate([np.full(ends.size, j) for j, ends in per_symbol])
    y_all = np.concatenate([target[ends, j].astype(dtype) for j, ends in per_symbol])
    order = np.lexsort((s_idx, t_idx))
    y_all, t_idx, s_idx = y_all[order], t_idx[order], s_idx[order]
    used = np.unique(t_idx)
    if split_at is not None:
        cut = int(np.searchsorted(times, np.asarray(split_at).astype("datetime64[ns]")))
    else:
        cut = used[int(len(used) * (1 - validation_fraction))]  # first validation bar index
    train = t_idx + horizon < cut
    val = t_idx >= cut
    x_train, x_val = _fill_windows(columns, per_symbol, order, (train, val), window, dtype)
    return {
        "x_train": x_train,
        "y_train": y_all[train],
        "x_val": x_val,
        "y_val": y_all[val],
        "t_train": times[t_idx[train]],
        "t_val": times[t_idx[val]],
        "symbol_train": s_idx[train],
        "symbol_val": s_idx[val],
    }


def _symbol_features(columns: Sequence[np.ndarray], j: int) -> np.ndarray:
    """Symbol `j`'s features as (T, F): its column of the (T, N, F) feature cube, without
    building the cube."""
    return np.stack([c[:, j] for c in columns], axis=-1)


def _fill_windows(
    columns: Sequence[np.ndarray],
    per_symbol: Sequence[tuple[int, np.ndarray]],
    order: np.ndarray,
    parts: Sequence[np.ndarray],
    window: int,
    dtype: type,
) -> list[np.ndarray]:
    """The windows (samples, window, F) of each of `parts` (masks over the samples in
    `order`), each array allocated once and filled symbol by symbol from its sliding
    windows. `per_symbol` lists the samples (symbol, window ends) in the order `order`
    sorts."""
    n_feat = len(columns)
    rank = np.empty(order.size, dtype=np.intp)
    rank[order] = np.arange(order.size)  # each sample's place in the sorted order
    outs: list[np.ndarray] = [np.empty((int(m.sum()), window, n_feat), dtype=dtype) for m in parts]
    slots = [np.cumsum(m) - 1 for m in parts]  # a sorted sample's row in its part
    at = 0
    for j, ends in per_symbol:
        place = rank[at : at + ends.size]
        at += ends.size
        win = sliding_window_view(_symbol_features(columns, j), window, axis=0)
        for out, mask, slot in zip(outs, parts, slots, strict=True):
            mine = mask[place]
            if mine.any():
                out[slot[place[mine]]] = np.transpose(win[ends[mine] - window + 1], (0, 2, 1))
    return outs
