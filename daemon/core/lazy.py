"""A module imported at its first use rather than at its importer's.

Why: pandas (and pyarrow, which it imports) took about 0.2 s of the 0.5 s that importing
`tradingd backtest` cost, and a backtest whose data comes from the panel cache never calls
it: only reading and validating raw files, and parsing dates, do. Modules on that path name
pandas through a `LazyModule` at run time (and import it for the type checker only).
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module `name`: the first attribute read imports it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr == "_name":
            # Protocol lookups (copy, pickle) and an instance not initialised: not the
            # module's (reading `_name` here would recurse).
            raise AttributeError(attr)
        # After the first call importlib answers from sys.modules (a dict lookup); these
        # modules' uses are per file or per call, never per bar.
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<LazyModule {self._name!r}>"
