"""Checks of what a plugin returns that need the universe's symbols: a risk verdict's names.
The engine calls these off its fast path (a bar without verdicts costs nothing here) and
turns what they find into the plugin's PluginFault."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from ..core.types import RiskVerdict


def verdict_error(name: str, verdicts: Sequence[Any], universe: Container[str]) -> Exception | None:
    """What is wrong with a risk plugin's verdicts, or None.

    A verdict is counted and reported by its `plugin` and `symbol` (the summary's
    risk_verdicts_by_rule, the halted symbols, the alerts): with the two swapped, the
    summary said "AAPL/AAPL" and a verdict covered no symbol. `symbol` is one of the
    universe's or None (the whole book); `plugin` is the emitting plugin's own name. The
    other fields may be empty by design (`rule` "": the plugin's one rule; `requested`,
    `allowed` NaN: no number)."""
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
    return None
