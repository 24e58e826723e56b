"""One test of "a finite real number" for values read back from JSON, TOML or a card, and
one of "the same share quantity" for the book, the broker and reconciliation.

A bool is an int to Python (`True` would pass as 1.0) and JSON's NaN and Infinity are floats:
a checkpoint's cash, a card's weights and a stored event's numbers must be neither.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard


def is_finite_real(v: Any) -> TypeGuard[int | float]:
    """`v` is an int or float (not a bool) and finite."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def same_quantity(a: float, b: float) -> bool:
    """Whether two share quantities are the same within 1e-6 of a share (relative above one
    share; reconciliation's tolerance): Alpaca keeps 9 decimals of a fractional quantity."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
