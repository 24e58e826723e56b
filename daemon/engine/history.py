"""A fixed-size, split-adjusted window of past bars for the whole universe.

A double-written ring buffer: every row is stored twice, `capacity` rows apart, so the last n
rows are always one contiguous (n, N) view, with no copy and no concatenation per bar. Memory
is fixed at start-up whatever the length of the run.

Raw prices jump at a split; features over a window that straddles the split must not. When a
bar carries a split coefficient s for a symbol, the rows already in the buffer are divided by s
(volume multiplied), which uses only what is known at that bar: no lookahead.

Writing is deferred until a window is read: `push` keeps the bar (at most `capacity` of
them: an older one would be overwritten before anyone could see it), and `window` first
writes the kept bars in order, with the same arithmetic in the same order as writing each
at its push. Most strategies read no raw history (their features are computed in batch),
and for them a replay then copies no row at all. A pushed bar's arrays must therefore not
change afterwards: feeds build new arrays for every bar (a Panel row is a read-only view).

Windows are slices of a read-only alias of the buffer (`core.arrays.read_only_alias`), which
nothing can make writeable: a flag on each window left the buffer behind it writeable, so
`w.setflags(write=True)` (the usual answer to "assignment destination is read-only") was
allowed, and a plugin that then wrote into its window changed the closes every other plugin
read, at that bar and later ones. Only `_write` writes, through the buffer itself.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..core.arrays import read_only_alias
from ..core.types import CrossSection

FIELDS = ("open", "high", "low", "close", "volume")
_PRICE_FIELDS = ("open", "high", "low", "close")


class HistoryBuffer:
    def __init__(self, n_symbols: int, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"history capacity must be >= 1, got {capacity}")
        self._cap = capacity
        self._buf = {f: np.full((2 * capacity, n_symbols), np.nan) for f in FIELDS}
        # What `window` slices: the same memory, read-only for good (see the docstring).
        self._shown = {f: read_only_alias(b) for f, b in self._buf.items()}
        self._pos = capacity - 1
        self._len = 0
        # Bars pushed and not written yet, oldest first (see the module docstring).
        self._pending: deque[CrossSection] = deque(maxlen=capacity)

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def length(self) -> int:
        return self._len

    def push(self, bar: CrossSection) -> None:
        self._pending.append(bar)
        self._len += 1

    def window(self, field: str, n: int) -> np.ndarray:
        if n > self._cap or n < 1:
            raise ValueError(self._refusal(n))
        pending = self._pending
        while pending:
            self._write(pending.popleft())
        end = self._pos + self._cap + 1
        # Read-only, and cannot be made writeable: a plugin writing into its window changed
        # the buffer, so every later window (its own at the next bar, other plugins') read
        # the changed prices.
        return self._shown[field][end - n : end]

    def _refusal(self, n: int) -> str:
        """Why a window of n bars is refused: "buffer holds 1..5" did not say that the
        plugin's own `history_bars()` sets how much is kept (the PluginFault around this
        names the plugin)."""
        if n < 1:
            return f"window of {n} bars requested: ask for 1 bar or more"
        return (
            f"window of {n} bars requested, but the history keeps {self._cap} (the largest "
            "history_bars() of the plugins, and features.history_bars): declare "
            f"history_bars() returning at least {n} in the plugin that reads it"
        )

    def _write(self, bar: CrossSection) -> None:
        split = bar.split
        if (split != 1.0).any():
            cols = np.flatnonzero(split != 1.0)
            s = split[cols]
            for f in _PRICE_FIELDS:
                self._buf[f][:, cols] /= s
            self._buf["volume"][:, cols] *= s
        p = self._pos + 1
        if p == self._cap:
            p = 0
        q = p + self._cap
        for f in FIELDS:
            row = getattr(bar, f)
            buf = self._buf[f]
            buf[p] = row
            buf[q] = row
        self._pos = p


class HistoryReader:
    """What a plugin is given as `ctx.history` (`core.ports.HistoryView`): the engine's
    buffer's `window` and `length`, without its `push`. The buffer itself was handed out,
    and a plugin calling `ctx.history.push(bar)` added a bar to every plugin's history (and
    shifted `length`, which `ctx.index` counts). Made once per engine: `window` is the
    buffer's own bound method, so a read costs no call more. Against the accident, not
    intent (as `core.arrays.read_only_alias`): the buffer is reachable through `window`."""

    __slots__ = ("_buffer", "window")

    def __init__(self, buffer: HistoryBuffer) -> None:
        self._buffer = buffer
        self.window = buffer.window

    @property
    def length(self) -> int:
        """Bars seen so far."""
        return self._buffer._len
