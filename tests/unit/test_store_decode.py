"""BufferedStore._decode (what `fetch` returns) against its per-row definition: every table,
any mix of missing, NaN and text values, times shared by rows."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.errors import StorageError
from tradingd.storage.schema import TABLES, Table
from tradingd.storage.sqlite import SqliteStore


def _decode_per_row(store: Any, table: Table, rows: list[tuple[Any, ...]]) -> list[dict]:
    """The definition (how `_decode` was first written): a dict per row, then each kind of
    column converted in place."""
    cols = table.insert_columns
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        for c in table.columns_of("time"):
            if d[c] is not None:
                d[c] = store._decode_time(d[c])
        for c in table.columns_of("json"):
            if d[c] is not None:
                d[c] = json.loads(d[c])
        for c in table.columns_of("float", optional=False):
            d[c] = math.nan if d[c] is None else float(d[c])
        for c in table.columns_of("float", optional=True):
            if d[c] is not None:
                v = float(d[c])
                d[c] = None if math.isnan(v) else v
        out.append(d)
    return out


_T0 = datetime(2020, 1, 1, tzinfo=UTC)


def _value(kind: str) -> st.SearchStrategy[Any]:
    if kind == "time":
        # A few distinct times, so that rows share them (the memo's case).
        return st.one_of(
            st.none(), st.integers(0, 3).map(lambda k: (_T0 + timedelta(days=k)).isoformat())
        )
    if kind == "json":
        return st.one_of(
            st.none(), st.dictionaries(st.text(max_size=3), st.integers()).map(json.dumps)
        )
    if kind == "float":
        return st.one_of(
            st.none(), st.just(math.nan), st.floats(), st.integers(-5, 5), st.just("1.5")
        )
    return st.one_of(st.none(), st.text(max_size=4), st.integers())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", sorted(TABLES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_is_the_per_row_definition(name: str, data: st.DataObject) -> None:
    table = TABLES[name]
    store = SqliteStore(":memory:")
    kinds = [c.kind for c in table.columns if c.name in table.insert_columns]
    assert len(kinds) == len(table.insert_columns)
    rows = data.draw(st.lists(st.tuples(*(_value(k) for k in kinds)), max_size=8))
    got = store._decode(table, rows)
    want = _decode_per_row(store, table, rows)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        assert all(_same(g[k], w[k]) for k in w), (g, w)


def test_decode_names_the_table_when_its_rows_have_other_columns() -> None:
    table = TABLES["fills"]
    store = SqliteStore(":memory:")
    with pytest.raises(StorageError, match="fills: rows of 2 columns, expected"):
        store._decode(table, [("a", "b"), ("c", "d")])
    with pytest.raises(StorageError, match="fills: rows of 1 and 2 columns, expected"):
        store._decode(table, [("a", "b"), ("c",)])


@pytest.mark.parametrize("name", ["orders", "fills", "equity"])
@settings(max_examples=30, deadline=None)
@given(data=st.data(), part=st.integers(1, 4))
def test_decoding_in_parts_is_decoding_whole(name: str, data: st.DataObject, part: int) -> None:
    """`fetch` decodes a run's rows in parts from the end, dropping each part's rows (the
    report's read-back is a replay's memory peak): the same dicts in the same order as one
    decode of them all, times shared across parts, and nothing of the rows left behind."""
    import tradingd.storage.buffered as buffered

    table = TABLES[name]
    store = SqliteStore(":memory:")
    kinds = [c.kind for c in table.columns if c.name in table.insert_columns]
    rows = data.draw(st.lists(st.tuples(*(_value(k) for k in kinds)), max_size=11))
    want = store._decode(table, rows)
    taken = list(rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(buffered, "_DECODE_ROWS", part)
        got = store._decode_taking(table, taken)
    assert taken == []
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        assert all(_same(g[k], w[k]) for k in w), (g, w)
    # One datetime per distinct text, whichever part it came from.
    for c in table.columns_of("time"):
        seen: dict[datetime, int] = {}
        for g in got:
            if g[c] is not None:
                assert seen.setdefault(g[c], id(g[c])) == id(g[c])
