"""Checks of what a plugin returns that need the universe's symbols: a labelled output (a
pandas Series) lined up on them, and a risk verdict's names. The engine calls these off its
fast path (an ndarray of scores or targets, a bar without verdicts costs nothing here) and
turns what they raise into the plugin's PluginFault."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import numpy as np

from ..core.types import RISK_ACTIONS, RiskVerdict

_ORDER_HINT = "return an array in ctx.symbols order, or a Series indexed by symbol"


def by_symbol(given: Any, symbols: Sequence[str]) -> Any:
    """A Series (anything with an `index` of labels) as an array in `symbols` order; any
    other output as it is.

    numpy reads a Series by position: one sorted by value or reversed scored (or sized)
    the wrong symbols without a word. Its labels are taken at their word when they are
    exactly the universe's symbols, in any order; a default index (0 .. n-1, in order) is
    read by position; else (a symbol missing, one unknown, one twice) nothing safe can be
    made of it, and the error names them."""
    labels = getattr(given, "index", None)
    if labels is None or callable(labels):  # a list's .index is a method, not labels
        return given
    # Here only for a labelled output: a backtest whose plugins return arrays (and a rerun
    # from the panel cache) never imports pandas (tests/integration/test_backtest_imports.py).
    import pandas as pd

    index = pd.Index(labels)
    if isinstance(index, pd.RangeIndex) and index.equals(pd.RangeIndex(len(symbols))):
        # pd.Series(scores) or its .rank(): positions, as an array is read (such plugins
        # were right before Series were lined up by label). A Series reordered since has
        # lost its RangeIndex and is checked as labels below.
        return np.asarray(given)
    if index.equals(pd.Index(symbols)):
        return np.asarray(given)
    if index.has_duplicates:
        twice = index[index.duplicated()].unique()
        raise ValueError(f"the Series' index holds {_few(twice)} more than once: {_ORDER_HINT}")
    where = index.get_indexer(symbols)
    missing = [s for s, i in zip(symbols, where.tolist(), strict=True) if i < 0]
    unknown = index.difference(pd.Index(symbols))
    if missing or len(unknown):
        said = [f"lacks {_few(missing)}"] if missing else []
        said += [f"holds {_few(unknown)}, not in the universe"] if len(unknown) else []
        raise ValueError(f"the Series' index {' and '.join(said)}: {_ORDER_HINT}")
    return np.asarray(given)[where]


def verdict_error(name: str, verdicts: Sequence[Any], universe: Container[str]) -> Exception | None:
    """What is wrong with a risk plugin's verdicts, or None.

    A verdict is counted and reported by its `plugin` and `symbol` (the summary's
    risk_verdicts_by_rule, the halted symbols, the alerts): with the two swapped, the
    summary said "AAPL/AAPL" and a verdict covered no symbol. `symbol` is one of the
    universe's or None (the whole book); `plugin` is the emitting plugin's own name;
    `action` one of RISK_ACTIONS (a misspelt "halted" halted nothing). The other fields may
    be empty by design (`rule` "": the plugin's one rule; `requested`, `allowed` NaN: no
    number)."""
    for v in verdicts:
        if not isinstance(v, RiskVerdict):
            return TypeError(f"a verdict is {type(v).__name__}, not RiskVerdict")
        if v.plugin != name:
            return ValueError(
                f"a verdict names the plugin {v.plugin!r} (symbol {v.symbol!r}), not "
                f"{name!r}: RiskVerdict's fields are (plugin, symbol, action, reason, ...); "
                "give the plugin's own name (self.name) first"
            )
        symbol = v.symbol
        if symbol is not None and not (isinstance(symbol, str) and symbol in universe):
            return ValueError(
                f"a verdict's symbol {symbol!r} is not in the universe: give one of "
                "ctx.symbols, or None for a verdict about the whole book"
            )
        if not (isinstance(v.action, str) and v.action in RISK_ACTIONS):
            return ValueError(
                f"a verdict's action {v.action!r} (symbol {symbol!r}) is none of "
                f"{', '.join(sorted(RISK_ACTIONS))}: give one of these (another word was "
                "counted and never acted on)"
            )
    return None


def _few(labels: Any, shown: int = 5) -> str:
    items = [str(s) for s in list(labels)[:shown]]
    more = f" (and {len(labels) - shown} more)" if len(labels) > shown else ""
    return ", ".join(items) + more
