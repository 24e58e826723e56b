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


_frombuffer = np.frombuffer


def read_only_copy(a: np.ndarray) -> np.ndarray:
    """A copy of `a` that nothing can make writeable again, for an array handed to plugins.

    `a.setflags(write=False)` is not enough: numpy lets an array that owns its memory be
    made writeable again (`setflags(write=True)`, the usual answer to "assignment
    destination is read-only"), and a view of one through its `.base`. This copy's memory
    is an immutable `bytes`, which numpy refuses to write into: `setflags(write=True)`
    raises ValueError ("cannot set WRITEABLE flag to True of this array"), on it and on any
    view of it. It costs less than `.copy()` plus `setflags` (0.9 against 1.2 us on a
    496-symbol row)."""
    out = _frombuffer(a.tobytes(), a.dtype)
    return out if a.ndim == 1 else out.reshape(a.shape)


def read_only_alias(a: np.ndarray) -> np.ndarray:
    """An array over `a`'s own memory that `setflags` cannot make writeable, for a buffer
    the engine keeps writing (through `a`, which it keeps to itself) and plugins read.

    Made once: its memory is a read-only `memoryview`, so `setflags(write=True)` raises
    ValueError on it, on every slice of it, and on the `.base` of a slice (which a flag
    on the buffer itself did not stop: numpy lets an array that owns its memory be made
    writeable again). Against the accident, not intent: the memoryview's `.obj` is `a`
    itself, so a walk down `.base.base.obj` reaches it; closing that would take a copy of
    the buffer at every write (`read_only_copy`), the whole panel's for a replay's bar."""
    return np.asarray(a.data.toreadonly())
