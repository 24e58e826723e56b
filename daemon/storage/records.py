"""Rows of one table held as columns, read as dicts.

A backtest's report has its orders and fills as columns already (`BufferedStore.recorded`
makes them column by column, the way the writer does); its CSV files and the summary read
them by column. Making a dict per row was a third of the report's rows' cost inside the
timed replay (21,000 rows at 496 symbols), for dicts that `tradingd backtest` never read.
A caller that does read rows (`BacktestOutcome.orders`, `strategy_api`'s frames) gets each
row's dict when it reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload


class Records(Sequence[dict[str, Any]]):
    """`fetch`'s list of dicts, as columns: equal to that list, row for row. Each read of a
    row makes a new dict (a change to one is not kept)."""

    __slots__ = ("_columns", "names")

    def __init__(self, names: Sequence[str], columns: Sequence[list[Any]]) -> None:
        if len(names) != len(columns):
            raise ValueError(f"{len(names)} names for {len(columns)} columns")
        if len({len(c) for c in columns}) > 1:
            raise ValueError(f"columns of different lengths: {sorted({len(c) for c in columns})}")
        self.names: tuple[str, ...] = tuple(names)
        self._columns = list(columns)

    @classmethod
    def of_dicts(cls, rows: Sequence[Mapping[str, Any]]) -> Records:
        """Rows given as dicts (a read back): the first row's keys are the columns, and a
        key another row lacks is ""."""
        if isinstance(rows, Records):
            return rows
        names = list(rows[0]) if rows else []
        return cls(names, [[r.get(k, "") for r in rows] for k in names])

    def column(self, name: str) -> list[Any]:
        """The values of one column, in row order (the list itself: do not change it)."""
        try:
            return self._columns[self.names.index(name)]
        except ValueError:
            raise KeyError(f"no column {name!r}; the columns are {list(self.names)}") from None

    @property
    def columns(self) -> list[list[Any]]:
        """Every column, in `names` order (the lists themselves: do not change them)."""
        return self._columns

    def __len__(self) -> int:
        return len(self._columns[0]) if self._columns else 0

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        return dict(zip(self.names, (c[i] for c in self._columns), strict=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self.names
        for values in zip(*self._columns, strict=True):
            yield dict(zip(names, values, strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Records) and self.names == other.names:
            return self._columns == other._columns
        # As lists of dicts compare: row by row, whatever the order of the keys.
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (mutable columns, like a list)

    def __repr__(self) -> str:
        return f"Records({len(self)} rows: {', '.join(self.names)})"
