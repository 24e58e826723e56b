"""`Records`: a table's rows held as columns must read exactly like the list of dicts that
`fetch` returns (the report's orders and fills are `Records` since they stopped being made
into dicts inside the timed replay), and the report's users (CSV files, Fill objects) must
get the same from either form."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.backtest import _fills_of, _write_rows
from tradingd.storage.records import Records

NAMES = ("a", "b", "c")
values = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.datetimes(timezones=st.just(UTC)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({n: values for n in NAMES}), max_size=12), st.data())
def test_records_read_like_their_list_of_dicts(rows, data):
    columns = [[r[n] for r in rows] for n in NAMES]
    rec = Records(NAMES, columns)
    assert len(rec) == len(rows)
    assert list(rec) == rows and rec == rows and rows == rec
    assert [rec[i] for i in range(len(rows))] == rows
    assert [rec[-i] for i in range(1, len(rows) + 1)] == [rows[-i] for i in range(1, len(rows) + 1)]
    lo = data.draw(st.integers(-15, 15))
    hi = data.draw(st.integers(-15, 15))
    step = data.draw(st.sampled_from([1, 2, -1, 3]))
    assert rec[lo:hi:step] == rows[lo:hi:step]
    assert Records.of_dicts(rows) == rec if rows else len(Records.of_dicts(rows)) == 0
    for n in NAMES:
        assert rec.column(n) == [r[n] for r in rows]
    if rows:
        changed = [dict(r) for r in rows]
        changed[-1]["c"] = ("not", "equal")
        assert rec != changed
        assert rec != rows[:-1]


def test_records_refuse_what_is_not_a_table():
    rec = Records(("a",), [[1, 2]])
    with pytest.raises(IndexError, match="row 2 of 2"):
        rec[2]
    with pytest.raises(IndexError):
        rec[-3]
    with pytest.raises(KeyError, match="no column 'b'"):
        rec.column("b")
    with pytest.raises(ValueError, match="2 names for 1 columns"):
        Records(("a", "b"), [[1]])
    with pytest.raises(ValueError, match="different lengths"):
        Records(("a", "b"), [[1], [1, 2]])
    # A row read is a new dict: changing it changes nothing held.
    rec[0]["a"] = 99
    assert rec.column("a") == [1, 2]
    # A key another row lacks reads as "" (as the CSV writer wrote it).
    assert Records.of_dicts([{"a": 1, "b": 2}, {"a": 3}]).column("b") == [2, ""]
    assert rec != "ab" and rec != 3


def _fill_rows(n: int) -> list[dict]:
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    return [
        {
            "run_id": "r",
            "fill_id": f"o{i}#1",
            "client_order_id": f"o{i}",
            "symbol": "ABC" if i % 2 else "XYZ",
            "side": "buy" if i % 3 else "sell",
            "quantity": 10.0 + i,
            "price": 100.5 + i,
            "commission": 0.25,
            "slippage": math.nan if i == 2 else 0.01 * i,
            "time": t0 + timedelta(days=i // 2),
            "reference_price": 100.0 + i,
        }
        for i in range(7)
    ]


def test_the_report_reads_records_as_it_reads_dicts(tmp_path):
    rows = _fill_rows(7)
    rec = Records.of_dicts(rows)
    assert isinstance(rec, Records)
    by_column, by_row = _fills_of(rec), _fills_of(rows)
    assert len(by_column) == 7
    assert [repr(f) for f in by_column] == [repr(f) for f in by_row]  # (NaN: repr, not ==)
    # Each Fill holds its row's values, field by field (the side as its enum).
    for fill, row in zip(by_row, rows, strict=True):
        made = {f: getattr(fill, f) for f in row if hasattr(fill, f)}
        assert made.keys() == set(row) - {"run_id"}
        assert repr(made) == repr({f: (fill.side if f == "side" else row[f]) for f in made})
        assert fill.side.value == row["side"]
    _write_rows(tmp_path / "columns.csv", rec)
    _write_rows(tmp_path / "dicts.csv", rows)
    # The reference: a csv row per dict, times in ISO form (what a DictWriter wrote before),
    # an undefined number an empty cell.
    reference = io.StringIO(newline="")
    w = csv.writer(reference)
    w.writerow(rows[0])
    for r in rows:
        w.writerow(
            [v.isoformat() if isinstance(v, datetime) else "" if v != v else v for v in r.values()]
        )
    for name in ("columns.csv", "dicts.csv"):
        with (tmp_path / name).open(newline="") as fh:
            assert fh.read() == reference.getvalue()
    assert "2020-01-02T00:00:00+00:00" in reference.getvalue()
    _write_rows(tmp_path / "empty.csv", Records(("a",), [[]]))
    assert (tmp_path / "empty.csv").read_text() == ""
