"""A run's record folder read by the analysis (`tradingd report`, the analyzer): a damaged
or edited folder is refused naming what is wrong, never analysed into wrong numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tradingd.analysis.run_records import run_record


def _folder(tmp_path: Path, *, fills: bool = True) -> Path:
    out = tmp_path / "rec"
    out.mkdir(parents=True)
    t0 = datetime(2020, 1, 2, tzinfo=UTC)
    lines = ["time,equity,gross_exposure"]
    for i, e in enumerate((100_000.0, 101_000.0, 99_000.0, 102_000.0)):
        lines.append(f"{(t0 + timedelta(days=i)).isoformat()},{e},0.5")
    (out / "equity.csv").write_text("\n".join(lines) + "\n")
    summary = {
        "run_id": "r",
        "initial_capital": 100_000.0,
        "fills": 2 if fills else 0,
        "bars": 4,
        "end": "2020-01-05",
    }
    (out / "summary.json").write_text(json.dumps(summary))
    if fills:
        (out / "fills.csv").write_text(
            "fill_id,client_order_id,symbol,side,quantity,price,commission,slippage,time\n"
            f"f1,o1,AAA,buy,10,100,1,0,{(t0 + timedelta(days=1)).isoformat()}\n"
            f"f2,o2,AAA,sell,10,110,1,0,{(t0 + timedelta(days=3)).isoformat()}\n"
        )
    (out / "splits.csv").write_text("symbol,time,split\n")
    return out


def test_a_good_folder_reads(tmp_path: Path) -> None:
    rec = run_record(_folder(tmp_path))
    assert rec.equity.tolist() == [100_000.0, 101_000.0, 99_000.0, 102_000.0]
    assert len(rec.fills) == 2 and rec.initial_capital == 100_000.0


def test_equity_rows_out_of_order_are_refused(tmp_path: Path) -> None:
    """Sorted backwards, the report said a total return of 0 from 2008-12-31 to 2005-01-03.
    The refusal named a row of no file ("row 1"): it names equity.csv and its line."""
    out = _folder(tmp_path)
    header, *rows = (out / "equity.csv").read_text().splitlines()
    (out / "equity.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"^{out}/equity.csv line 3 \(the header is line 1\): time "
        r"'2020-01-04T00:00:00\+00:00' is not after the one before \('2020-01-05T00:00:00"
        r"\+00:00'\): equity times must increase bar by bar",
    ):
        run_record(out)
    (out / "equity.csv").write_text("\n".join([header, rows[0], rows[0], *rows[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"equity.csv line 3 .*: time '2020-01-02T"):  # twice
        run_record(out)


def test_an_equity_file_that_is_not_the_curve_its_summary_describes_is_refused(
    tmp_path: Path,
) -> None:
    """Cut by a copy stopped midway, it was analysed as the whole run: 333 bars beside a
    summary of 3,523 to 2018-12-31, exit 0."""
    out = _folder(tmp_path)
    text = (out / "equity.csv").read_text()
    for cut, rows, last in (
        (text[: text.rindex("2020-01-05")], 3, "2020-01-04"),  # a whole row
        (text[: text.rindex("2020-01-05") + 5], 4, "2020-"),  # half of one
        (text[:-12], 4, r"2020-01-05T00:00:00\+00:00 \(its line cut short\)"),  # equity 1.0 read
    ):
        (out / "equity.csv").write_text(cut)
        with pytest.raises(
            ValueError,
            match=rf"equity.csv holds {rows} bars, the last at {last}.*summary.json counts 4 "
            r"bars to 2020-01-05: the record is incomplete",
        ):
            run_record(out)
    # As many rows, but not to the summary's last day (an edited file).
    (out / "equity.csv").write_text(text.replace("2020-01-05", "2020-01-06"))
    with pytest.raises(ValueError, match=r"holds 4 bars, the last at 2020-01-06T.*to 2020-01-05"):
        run_record(out)
    # The last bar's date as written, as the summary took it: 23:00 at -05:00 is 04:00 UTC
    # on the next day, and still the summary's end.
    (out / "equity.csv").write_text(
        text.replace("2020-01-05T00:00:00+00:00", "2020-01-05T23:00:00-05:00")
    )
    assert run_record(out).times[-1].isoformat() == "2020-01-06T04:00:00+00:00"


@pytest.mark.parametrize("capital", ["abc", [100_000], True, -1, None])
def test_an_initial_capital_that_is_not_a_positive_number_names_the_file_and_key(
    tmp_path: Path, capital: object
) -> None:
    """A text was float()'s own ValueError naming no file, a list a TypeError (a traceback
    from `tradingd report`), and true read as a capital of 1."""
    out = _folder(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    if capital is None:  # none in the summary: the config's, named as its key there
        del summary["initial_capital"]
        (out / "config.json").write_text(json.dumps({"run": {"initial_capital": "1e5 USD"}}))
        file, key, shown = "config.json", "run.initial_capital", "'1e5 USD'"
    else:
        summary["initial_capital"] = capital
        file, key, shown = "summary.json", "initial_capital", repr(capital)
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError) as refused:
        run_record(out)
    assert str(refused.value).startswith(
        f"{out / file}: {key} {shown} is not a positive number (the equity before the first "
        "bar): the record is damaged or edited"
    )


def test_a_missing_fills_file_the_summary_counts_is_refused(tmp_path: Path) -> None:
    """It read as 'no trades': costs 0 and 0 round trips beside a summary of 17,400 in costs."""
    out = _folder(tmp_path)
    (out / "fills.csv").unlink()
    with pytest.raises(ValueError, match=r"no fills.csv, but its summary.json counts 2 fills"):
        run_record(out)
    assert run_record(_folder(tmp_path / "none", fills=False)).fills == ()  # none to have


def test_an_unreadable_summary_names_the_file(tmp_path: Path) -> None:
    out = _folder(tmp_path)
    (out / "summary.json").write_text("")
    with pytest.raises(ValueError, match=r"summary.json cannot be read as JSON"):
        run_record(out)


@pytest.mark.parametrize(
    "text", ["", "fill_id,client_order_id,symbol,side,quantity,price,commission,slippage,time\n"]
)
def test_an_empty_fills_file_the_summary_counts_is_refused(tmp_path: Path, text: str) -> None:
    """Empty or header-only, it read as 'no trades' beside the summary's 145 round trips."""
    out = _folder(tmp_path)
    (out / "fills.csv").write_text(text)
    with pytest.raises(ValueError, match=r"no fill in its fills.csv, but .* counts 2 fills"):
        run_record(out)
    none = _folder(tmp_path / "none", fills=False)
    (none / "fills.csv").write_text(text)
    assert run_record(none).fills == ()  # the summary counts none: nothing missing


def test_report_of_a_summary_that_is_not_an_object_is_a_named_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[]` in summary.json was a traceback (exit 1) from `tradingd report`."""
    import structlog

    from tradingd.__main__ import main

    out = _folder(tmp_path)
    (out / "summary.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    saved = structlog.get_config()
    try:
        code = main(["report", str(out), "--no-validation", "--output", str(tmp_path / "o")])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "tradingd: error:" in err and "summary.json holds list, not a JSON object" in err


def _drop_column(file: Path, name: str) -> None:
    rows = [line.split(",") for line in file.read_text().splitlines()]
    at = rows[0].index(name)
    file.write_text("\n".join(",".join(r[:at] + r[at + 1 :]) for r in rows) + "\n")


def _edit_cell(file: Path, line: int, column: str, value: str) -> None:
    rows = [line_.split(",") for line_ in file.read_text().splitlines()]
    rows[line - 1][rows[0].index(column)] = value
    file.write_text("\n".join(",".join(r) for r in rows) + "\n")


_DAMAGE = {
    "a fills column missing": (
        lambda out: _drop_column(out / "fills.csv", "price"),
        r"fills.csv has no price column \(its columns: fill_id,.*time\)",
    ),
    "an equity column missing": (
        lambda out: _drop_column(out / "equity.csv", "time"),
        r"equity.csv has no time column",
    ),
    "an empty equity file": (
        lambda out: (out / "equity.csv").write_text(""),
        r"equity.csv cannot be read as the run's equity curve: No columns to parse",
    ),
    "an equity value that is not a number": (
        lambda out: _edit_cell(out / "equity.csv", 3, "equity", "abc"),
        r"equity.csv line 3 \(the header is line 1\): equity 'abc' is not a finite number",
    ),
    "an empty equity cell": (
        lambda out: _edit_cell(out / "equity.csv", 4, "equity", ""),
        r"equity.csv line 4 .*: equity \(empty\) is not a finite number",
    ),
    # NaN written in the cell: "(empty)" too, and the person repairing the file looked for
    # an empty cell
    "an equity written as NaN": (
        lambda out: _edit_cell(out / "equity.csv", 4, "equity", "NaN"),
        r"equity.csv line 4 .*: equity 'NaN' is not a finite number",
    ),
    "an equity that is not finite": (
        lambda out: _edit_cell(out / "equity.csv", 2, "equity", "inf"),
        r"equity.csv line 2 .*: equity inf is not a finite number",
    ),
    "a gross exposure that is not a number": (
        lambda out: _edit_cell(out / "equity.csv", 2, "gross_exposure", "half"),
        r"equity.csv line 2 .*: gross_exposure 'half' is not a number",
    ),
    "a time that is not one": (
        lambda out: _edit_cell(out / "equity.csv", 5, "time", "2020-01-05 at noon"),
        r"equity.csv line 5 .*: time '2020-01-05 at noon' is not an ISO 8601 time",
    ),
    "a fill price that is not a number": (
        lambda out: _edit_cell(out / "fills.csv", 3, "price", "1l0"),
        r"fills.csv line 3 .*: price '1l0' is not a finite number",
    ),
    "a fill side that is not one": (
        lambda out: _edit_cell(out / "fills.csv", 2, "side", "long"),
        r"fills.csv line 2 .*: side 'long' is not buy or sell",
    ),
    "a fill time that is not one": (
        lambda out: _edit_cell(out / "fills.csv", 2, "time", "yesterday"),
        r"fills.csv line 2 .*: time 'yesterday' is not an ISO 8601 time",
    ),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_a_damaged_record_file_is_refused_naming_the_file_and_where(
    tmp_path: Path, damage: str
) -> None:
    """pandas' and float()'s own errors named no file, column or row (a missing column was a
    KeyError, and a traceback from `tradingd report`)."""
    edit, message = _DAMAGE[damage]
    out = _folder(tmp_path)
    edit(out)
    with pytest.raises(ValueError, match=message):
        run_record(out)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("fills", "fills.csv has no price column"),
        ("config", "config.json cannot be read as JSON"),
        ("config-list", "config.json holds list, not a JSON object"),
        ("capital-list", "summary.json: initial_capital [1] is not a positive number"),
    ],
)
def test_report_of_a_damaged_record_is_a_named_error_not_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    message: str,
) -> None:
    """A fills.csv without its price column ended `tradingd report` in a traceback
    (KeyError: 'price'), a corrupt config.json in a JSON error naming no file, and a list for
    the initial capital in float()'s TypeError."""
    import structlog

    from tradingd.__main__ import main

    out = _folder(tmp_path)
    if damage == "fills":
        _drop_column(out / "fills.csv", "price")
    elif damage == "capital-list":  # a TypeError from float(), a traceback
        summary = json.loads((out / "summary.json").read_text())
        (out / "summary.json").write_text(json.dumps({**summary, "initial_capital": [1]}))
    else:
        (out / "config.json").write_text("[1, 2]" if damage == "config-list" else '{"run": ')
    monkeypatch.chdir(tmp_path)
    saved = structlog.get_config()
    try:
        code = main(["report", str(out), "--no-validation", "--output", str(tmp_path / "o")])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"tradingd: error: run {out}: {out}/{message}" in err


def test_a_fills_file_cut_short_is_refused(tmp_path: Path) -> None:
    """Half its lines kept (a copy stopped midway), it was analysed as the whole run: 246
    round trips instead of 494, exit 0."""
    out = _folder(tmp_path)
    text = (out / "fills.csv").read_text()
    (out / "fills.csv").write_text(text[: text.rindex("f2,")])  # its last row gone
    with pytest.raises(
        ValueError,
        match=rf"^{out}/fills.csv holds 1 fills, but {out}/summary.json counts 2 fills: the "
        r"record is incomplete or edited \(run the backtest again\)$",
    ):
        run_record(out)
    # As many rows, the last cut within its time (read whole, but not as written).
    (out / "fills.csv").write_text(text[:-7])
    with pytest.raises(ValueError, match=r"holds 2 fills \(its last line cut short\), but"):
        run_record(out)
    (out / "fills.csv").write_text(text + text[text.index("f2,") :].replace("f2,", "f3,"))
    with pytest.raises(ValueError, match=r"holds 3 fills, but .* counts 2 fills"):
        run_record(out)  # edited: a row more
    summary = json.loads((out / "summary.json").read_text())
    del summary["fills"]  # a summary that counts none: nothing to compare with
    (out / "summary.json").write_text(json.dumps(summary))
    assert len(run_record(out).fills) == 3


_ORDERS = (
    "run_id,client_order_id,symbol,side,type,quantity,status,reason\n"
    "r,o1,AAA,buy,market,10,filled,\n"
    'r,o2,AAA,sell,market,10,filled,"a reason, on\ntwo lines"\n'
    "r,o3,AAA,sell,market,10,cancelled,not sent: an order being cancelled had filled\n"
)


def test_an_orders_file_without_the_orders_its_summary_counts_is_refused(
    tmp_path: Path,
) -> None:
    """The summary counts the orders sent; orders.csv has a row for each of them, and one
    for each order closed without being sent (more rows are a valid record)."""
    out = _folder(tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "orders": 2}))
    (out / "orders.csv").write_text(_ORDERS)
    assert len(run_record(out).fills) == 2  # 3 rows (one quoted over two lines) for 2 sent
    (out / "orders.csv").write_text(_ORDERS[: _ORDERS.index("r,o2")])
    with pytest.raises(
        ValueError,
        match=rf"^{out}/orders.csv holds 1 orders, but {out}/summary.json counts 2 orders "
        r"sent: the record is incomplete or edited \(run the backtest again\)$",
    ):
        run_record(out)
    (out / "orders.csv").write_text("")  # empty: none of them
    with pytest.raises(ValueError, match=r"orders.csv holds 0 orders, but .* counts 2 orders"):
        run_record(out)
    (out / "orders.csv").write_bytes(b"run_id,client_order_id\nr,o\xff1\n")
    with pytest.raises(ValueError, match=r"orders.csv cannot be read as the run's orders: "):
        run_record(out)
    (out / "orders.csv").unlink()  # a copy of the files the analysis reads: not refused
    assert len(run_record(out).fills) == 2
    (out / "orders.csv").write_text("")
    (out / "summary.json").write_text(json.dumps({**summary, "orders": 0}))
    assert len(run_record(out).fills) == 2  # none sent: none to have


_BAD_VALUES = {
    "a quantity of 0": ("quantity", "0", r"quantity 0 is not a positive number"),
    "a negative quantity": ("quantity", "-10", r"quantity -10 is not a positive number"),
    "a price of 0": ("price", "0", r"price 0 is not a positive number"),
    "a negative price": ("price", "-110.5", r"price -110.5 is not a positive number"),
    "a negative commission": (
        "commission",
        "-1",
        r"commission -1 is not a cost \(a number >= 0\)",
    ),
    "a negative slippage": ("slippage", "-0.5", r"slippage -0.5 is not a cost"),
    "a fill after the last bar": (
        "time",
        "2020-01-06T00:00:00+00:00",
        r"time '2020-01-06T00:00:00\+00:00' is not within the run \(2020-01-02T00:00:00\+00:00"
        r" to 2020-01-05T00:00:00\+00:00, the first and last bars of .*/equity.csv\)",
    ),
    "a fill before the first bar": (
        "time",
        "2020-01-01T23:59:59+00:00",
        r"time '2020-01-01T23:59:59\+00:00' is not within the run",
    ),
}


@pytest.mark.parametrize("damage", list(_BAD_VALUES))
def test_a_fill_value_no_run_writes_is_refused_naming_file_line_and_column(
    tmp_path: Path, damage: str
) -> None:
    """A quantity <= 0 was skipped without a word by the round trips and the Monte Carlo's
    trade order; a negative cost or a fill outside the run's bars was analysed as it was."""
    column, value, message = _BAD_VALUES[damage]
    out = _folder(tmp_path)
    _edit_cell(out / "fills.csv", 3, column, value)
    with pytest.raises(
        ValueError, match=rf"^{out}/fills.csv line 3 \(the header is line 1\): {message}"
    ):
        run_record(out)


def test_fill_values_at_their_bounds_read(tmp_path: Path) -> None:
    """No cost (0), an empty one (NaN, as a store gives it back), a fill at the first and at
    the last bar, the same instant in another offset: a run writes these."""
    out = _folder(tmp_path)
    _edit_cell(out / "fills.csv", 2, "commission", "0")
    _edit_cell(out / "fills.csv", 2, "slippage", "")
    _edit_cell(out / "fills.csv", 2, "time", "2020-01-01T19:00:00-05:00")  # the first bar
    _edit_cell(out / "fills.csv", 3, "time", "2020-01-05T00:00:00+00:00")  # the last
    fills = run_record(out).fills
    assert [f.commission for f in fills] == [0.0, 1.0] and fills[0].slippage != fills[0].slippage


def test_a_negative_gross_exposure_is_refused(tmp_path: Path) -> None:
    """|long| + |short| over the equity is never negative (NaN when the equity is not
    positive, which reads)."""
    out = _folder(tmp_path)
    _edit_cell(out / "equity.csv", 3, "gross_exposure", "nan")
    assert run_record(out).gross_exposure is not None
    _edit_cell(out / "equity.csv", 4, "gross_exposure", "-0.5")
    with pytest.raises(
        ValueError,
        match=rf"^{out}/equity.csv line 4 \(the header is line 1\): gross_exposure -0.5 is not "
        r"a number >= 0",
    ):
        run_record(out)


@pytest.mark.parametrize("factor", ["0", "-2", "nan", "NaN", "NULL", "inf", "", None, "two"])
def test_a_split_factor_that_is_not_a_positive_number_is_refused(
    tmp_path: Path, factor: str | None
) -> None:
    """0 was a ZeroDivisionError (a traceback from `tradingd report`) when a fill before it
    was restated; a negative factor made its prices negative. A NaN written in the cell was
    shown as "(empty)", as an empty one: it is shown as written (None: the cell absent)."""
    out = _folder(tmp_path)
    last = "AAA,2020-01-04T00:00:00+00:00" + ("" if factor is None else f",{factor}")
    (out / "splits.csv").write_text(
        f"symbol,time,split\nBBB,2020-01-03T00:00:00+00:00,2.0\n{last}\n"
    )
    # As pandas read the column (floats: the other row's 2.0); a NaN as it is written.
    shown = {
        "0": "0.0",
        "-2": "-2.0",
        "inf": "inf",
        "": r"\(empty\)",
        None: r"\(empty\)",
    }.get(factor, f"'{factor}'")
    with pytest.raises(
        ValueError,
        match=rf"^{out}/splits.csv line 3 \(the header is line 1\): split {shown} is not a "
        r"split factor \(a finite number > 0\)$",
    ):
        run_record(out)


def test_a_split_is_applied_to_the_fills_before_it(tmp_path: Path) -> None:
    out = _folder(tmp_path)
    (out / "splits.csv").write_text("symbol,time,split\nAAA,2020-01-04T00:00:00+00:00,2\n")
    bought, sold = run_record(out).fills
    assert (bought.quantity, bought.price) == (20.0, 50.0)  # restated: before the split
    assert (sold.quantity, sold.price) == (10.0, 110.0)  # after it: in its shares already
