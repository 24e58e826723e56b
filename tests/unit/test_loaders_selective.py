"""A long Parquet file is read for the requested symbols and the bar columns only, with the
same panel (and the same errors) as a full read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.core.errors import DataError
from tradingd.feeds import loaders
from tradingd.feeds.loaders import load_panel
from tradingd.feeds.panel import FIELDS, Panel

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]


def long_frame(symbols: list[Any], n_days: int = 6) -> pd.DataFrame:
    rows = []
    for k, sym in enumerate(symbols):
        for d in pd.bdate_range("2021-03-01", periods=n_days):
            px = 10.0 + k + 0.1 * d.day
            rows.append((sym, d, px, px + 1, px - 1, px + 0.5, 1000.0 + k, px * 0.9))
    return pd.DataFrame(
        rows, columns=["symbol", "date", "open", "high", "low", "close", "volume", "adj_close"]
    )


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each file read of the loader (`_read`): the columns and the rows it returned."""
    calls: list[dict[str, Any]] = []
    real = loaders._read

    def read(path: Any, source: str, symbols: Any = None) -> Any:
        out = real(path, source, symbols)
        calls.append({"columns": list(out[0].columns), "rows": len(out[0])})
        return out

    monkeypatch.setattr(loaders, "_read", read)
    return calls


def assert_same_panel(a: Panel, b: Panel) -> None:
    assert a.symbols == b.symbols
    np.testing.assert_array_equal(a.times, b.times)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_reads_only_requested_symbols_and_bar_columns(
    tmp_path: Path, spy: list[dict[str, Any]]
) -> None:
    path = tmp_path / "long.parquet"
    long_frame(SYMBOLS).to_parquet(path)
    got = load_panel("parquet", str(path), symbols=["CCC", "AAA"])
    assert spy[-1]["rows"] == 2 * 6  # not the 24 rows of the file
    assert "adj_close" not in spy[-1]["columns"]
    full = load_panel("parquet", str(path))
    assert_same_panel(got, full.select(symbols=("AAA", "CCC")))


def test_missing_symbol_still_names_the_whole_files_symbols(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    long_frame(SYMBOLS).to_parquet(path)
    with pytest.raises(DataError, match=r"\['ZZZ'\] not in .*available: AAA, BBB, CCC, DDD"):
        load_panel("parquet", str(path), symbols=["AAA", "ZZZ"])


def test_header_only_file_is_an_empty_file_error_with_symbols_requested(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    long_frame(SYMBOLS).iloc[:0].to_parquet(path)
    with pytest.raises(DataError, match="no rows of bars"):
        load_panel("parquet", str(path), symbols=["AAA"])


def test_non_string_symbol_column_matches_as_text(tmp_path: Path) -> None:
    """Integer symbols (a permno, say) match their text as before: no arrow filter there."""
    path = tmp_path / "long.parquet"
    long_frame([101, 202, 303]).to_parquet(path)
    p = load_panel("parquet", str(path), symbols=["202"])
    assert p.symbols == ("202",)
    assert p.n_bars == 6


def test_missing_bar_column_error_lists_every_column(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    long_frame(SYMBOLS).drop(columns="volume").to_parquet(path)
    with pytest.raises(DataError, match=r"missing required column\(s\) \['volume'\].*adj_close"):
        load_panel("parquet", str(path), symbols=["AAA"])


def test_date_index_is_still_read(tmp_path: Path) -> None:
    """A table written with its dates as the (pandas) index keeps them with a column subset."""
    path = tmp_path / "AAA.parquet"
    long_frame(["AAA"]).drop(columns="symbol").set_index("date").to_parquet(path)
    p = load_panel("parquet", str(path))
    assert p.symbols == ("AAA",)
    assert len(p.times) == 6


def _files(tmp_path: Path) -> dict[str, Path]:
    """Long tables as different writers leave them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = long_frame(SYMBOLS)
    out = {}
    out["pandas"] = tmp_path / "pandas.parquet"
    frame.to_parquet(out["pandas"])
    out["shuffled rows, zoned times"] = tmp_path / "zoned.parquet"
    zoned = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    zoned["date"] = zoned["date"].dt.tz_localize("America/New_York")
    zoned.to_parquet(out["shuffled rows, zoned times"])
    out["pyarrow, no pandas metadata"] = tmp_path / "arrow.parquet"
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, out["pyarrow, no pandas metadata"], row_group_size=5)
    out["row groups of 7"] = tmp_path / "groups.parquet"
    frame.to_parquet(out["row groups of 7"], row_group_size=7)
    return out


@pytest.mark.parametrize(
    "kind",
    ["pandas", "shuffled rows, zoned times", "pyarrow, no pandas metadata", "row groups of 7"],
)
@pytest.mark.parametrize("wanted", [["CCC", "AAA"], ["BBB"], ["ZZZ"], SYMBOLS])
def test_the_batchwise_read_is_pandas_read(tmp_path: Path, kind: str, wanted: list[str]) -> None:
    """Filtered batch by batch (less memory), the same DataFrame as pd.read_parquet's
    filtered read: columns, dtypes, index, row order."""
    path = _files(tmp_path)[kind]
    columns, filters = loaders._parquet_selection(path, wanted)
    assert columns and filters
    got = loaders._read_parquet_rows(path, columns, filters)
    assert got is not None
    pd.testing.assert_frame_equal(got, pd.read_parquet(path, columns=columns, filters=filters))


def test_an_index_stored_as_columns_is_left_to_pandas(tmp_path: Path) -> None:
    path = tmp_path / "indexed.parquet"
    long_frame(SYMBOLS).set_index("date").to_parquet(path)
    columns, filters = loaders._parquet_selection(path, ["AAA"])
    assert filters is not None
    assert loaders._read_parquet_rows(path, columns or [], filters) is None
    p = load_panel("parquet", str(path), symbols=["AAA"])  # pandas' read, as before
    assert p.symbols == ("AAA",) and len(p.times) == 6


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=4),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    st.randoms(use_true_random=False),
)
def test_from_long_places_each_symbol_like_sorted_searchsorted(names: list[str], rnd: Any) -> None:
    """Symbols are coded by factorizing (no Python string per row); the columns must be the
    sorted order of the names, as the searchsorted over sorted names placed them."""
    rows = [(n, d) for n in names for d in range(3) if rnd.random() < 0.8] or [(names[0], 0)]
    rnd.shuffle(rows)
    df = pd.DataFrame(
        {
            "time": pd.to_datetime([d for _, d in rows], unit="D"),
            "symbol": [n for n, _ in rows],
            **{f: np.arange(len(rows), dtype=float) + k for k, f in enumerate(FIELDS)},
        }
    )
    p = Panel.from_long(df)
    symbols = tuple(sorted(df["symbol"].unique()))
    assert p.symbols == symbols
    si = np.searchsorted(np.array(symbols, dtype=object), df["symbol"].to_numpy(dtype=object))
    ti = np.searchsorted(p.times, df["time"].to_numpy())
    for k, f in enumerate(FIELDS):
        np.testing.assert_array_equal(getattr(p, f)[ti, si], np.arange(len(rows)) + k)


def test_duplicated_columns_are_a_data_error_naming_them(tmp_path: Path) -> None:
    """The batchwise read leaves such a file to pandas' read, whose error names the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = long_frame(SYMBOLS)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column("close", pa.array(frame["close"] * 2))
    path = tmp_path / "dup.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match="close"):
        load_panel("parquet", str(path), symbols=["AAA"])
