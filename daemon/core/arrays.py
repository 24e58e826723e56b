"""numpy's C entry points for the array calls the engine makes on every bar.

`np.count_nonzero(a)` is a Python function behind numpy's dispatch decorator; with no axis it
calls the C `count_nonzero` of numpy's multiarray module, and that call is all the work: the
wrapper is about 160 of its 250 ns on a 496-symbol row (numpy 2.4). `np.copyto`, `np.dot`,
`np.where` and `np.putmask` are C functions behind the `__array_function__` dispatch, which
calls a Python dispatcher first: 150-200 ns of each call. A replay bar makes a dozen of these
calls on the engine's own arrays (plain ndarrays, which never override `__array_function__`),
2% of its instructions (issue 12). Arrays a plugin hands over keep numpy's public functions.

The C functions are not public API, so they are looked up where numpy 2 and numpy 1.26 keep
them, and numpy's public function stands in where one is missing: the same answers either way
(tests/unit/test_arrays.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np


def _c_function(name: str) -> Callable[..., Any]:
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if callable(fn):
            return fn
    public: Callable[..., Any] = getattr(np, name)
    return public


count_nonzero: Callable[[Any], int] = _c_function("count_nonzero")
"""Nonzero (and NaN) elements of the whole array, as `np.count_nonzero(a)` (no axis)."""
copyto: Callable[..., None] = _c_function("copyto")
"""`np.copyto` (`where=` included) for ndarrays."""
dot: Callable[[Any, Any], Any] = _c_function("dot")
"""`np.dot` for ndarrays."""
where: Callable[[Any, Any, Any], np.ndarray] = _c_function("where")
"""`np.where(condition, x, y)` for ndarrays."""
putmask: Callable[[Any, Any, Any], None] = _c_function("putmask")
"""`np.putmask(a, mask, values)`: values of the same shape, where mask (a third less than
`copyto(..., where=)` on a 496-symbol row: numpy's masked copy goes element by element)."""

F64 = np.dtype(np.float64)
"""float64's dtype: `a.dtype is F64` tells a float64 array at the cost of an attribute."""


def scalar(value: float) -> np.ndarray:
    """`value` as a read-only 0-d float64 array, for an operand that is the same on every bar:
    numpy turns a Python float operand into such an array on every call (1,000-1,600 of the
    5,000-6,500 instructions of a comparison or division on a 496-symbol row). Only where the
    other operand is float64 (or the constant is exact in every float type, as 0 and 1 are,
    compared for equality): a Python float takes the array's dtype (NEP 50), a 0-d float64
    array does not, so a float32 row would be compared or divided in float64."""
    a = np.array(value, dtype=np.float64)
    a.flags.writeable = False
    return a
