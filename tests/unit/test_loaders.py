"""Loaders and validation: small hand-written files, every bad-input kind, error and repair."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError, DataError
from tradingd.feeds.loaders import load_frame, load_panel
from tradingd.feeds.validate import REPAIRS, validate_frame

HEADER = "date,open,high,low,close,volume"
# Lines 2..6 of a good per-symbol CSV (header is line 1).
GOOD = [
    "2020-01-02,10,11,9,10,100",
    "2020-01-03,10,11,9,10.5,200",
    "2020-01-06,10.5,12,10,11,300",
    "2020-01-07,11,12,10,11.5,0",
    "2020-01-08,11.5,13,11,12,500",
]


def write_csv(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def days(*values: str) -> np.ndarray:
    return np.array([np.datetime64(v, "ns") for v in values])


def repairs_logged(logs: list[dict], what: str) -> list[dict]:
    return [e for e in logs if e["event"] == "data.repair" and e["what"] == what]


def assert_names(exc: DataError, path: Path, symbol: str, row: int | str) -> None:
    msg = str(exc)
    assert f"file={path}" in msg
    assert f"symbol={symbol}" in msg
    assert re.search(rf"row={re.escape(str(row))}\)", msg), msg
    assert exc.row == row
    assert exc.symbol == symbol


# --- good input -------------------------------------------------------------------------------


@pytest.fixture
def per_symbol_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bars"
    d.mkdir()
    write_csv(
        d / "MSFT.csv",
        [
            "2020-01-03,100,101,99,100.5,1000,2.0,0.0",
            "2020-01-06,100.5,102,100,101,1100,1.0,0.25",
        ],
        header="Date,Open,High,Low,Close,Volume,Split_Coefficient,Dividend_Amount",
    )
    write_csv(
        d / "AAPL.csv",
        [
            "2020-01-02,10,11,9,10.5,100,10.4",
            "2020-01-03,10.5,12,10,11,200,10.9",
            "2020-01-06,11,11.5,10.5,11.2,0,11.1",
        ],
        header="Date,Open,High,Low,Close,Volume,Adj Close",
    )
    (d / "notes.txt").write_text("not a data file")
    return d


def test_per_symbol_dir_builds_panel_with_nan_and_defaults(per_symbol_dir: Path) -> None:
    p = load_panel("csv", str(per_symbol_dir))
    assert p.symbols == ("AAPL", "MSFT")
    np.testing.assert_array_equal(p.times, days("2020-01-02", "2020-01-03", "2020-01-06"))
    assert p.close.shape == (3, 2)
    np.testing.assert_array_equal(p.close[:, 0], [10.5, 11, 11.2])
    np.testing.assert_array_equal(p.close[:, 1], [np.nan, 100.5, 101])
    np.testing.assert_array_equal(p.open[:, 1], [np.nan, 100, 100.5])
    np.testing.assert_array_equal(p.volume[:, 0], [100, 200, 0])  # zero volume stays 0
    # AAPL has no split/dividend columns; MSFT has no bar on 01-02: defaults 1.0 / 0.0.
    np.testing.assert_array_equal(p.split, [[1, 1], [1, 2], [1, 1]])
    np.testing.assert_array_equal(p.dividend, [[0, 0], [0, 0], [0, 0.25]])
    assert p.times.dtype == np.dtype("datetime64[ns]")


def test_symbols_filter_and_inclusive_dates(per_symbol_dir: Path) -> None:
    p = load_panel("csv", str(per_symbol_dir), symbols=["MSFT"], end="2020-01-03")
    assert p.symbols == ("MSFT",)
    np.testing.assert_array_equal(p.times, days("2020-01-03"))
    p = load_panel("csv", str(per_symbol_dir), start="2020-01-03", end="2020-01-06")
    np.testing.assert_array_equal(p.times, days("2020-01-03", "2020-01-06"))
    np.testing.assert_array_equal(p.close[:, 0], [11, 11.2])
    with pytest.raises(DataError, match="no bars from 2021-01-01 on") as info:
        load_panel("csv", str(per_symbol_dir), start="2021-01-01")
    # Where the data are is said: it read "no bars between 2021-01-01 and the end".
    assert "the data's bars (2 symbol(s)) run from 2020-01-02 to 2020-01-06" in str(info.value)
    with pytest.raises(DataError, match="no bars up to 2019-12-31; the data's bars"):
        load_panel("csv", str(per_symbol_dir), end="2019-12-31")


def test_unknown_symbol_lists_available(per_symbol_dir: Path) -> None:
    with pytest.raises(DataError, match=r"\['IBM'\].*available: AAPL, MSFT"):
        load_panel("csv", str(per_symbol_dir), symbols=["AAPL", "IBM"])


def test_numeric_looking_tickers_keep_their_leading_zeros(tmp_path: Path) -> None:
    """Hong Kong's "0700" and "0005" are symbols, not the numbers 700 and 5."""
    header = "symbol,date,open,high,low,close,volume"
    path = write_csv(
        tmp_path / "hk.csv",
        ["0700,2020-01-02,10,11,9,10,100", "0005,2020-01-02,20,21,19,20,100",
         "0700,2020-01-03,10,11,9,10.5,100", "0005,2020-01-03,20,21,19,20.5,100"],
        header=header,
    )  # fmt: skip
    p = load_panel("csv", str(path), symbols=["0700", "0005"])
    assert p.symbols == ("0005", "0700")
    np.testing.assert_array_equal(p.close, [[20, 10], [20.5, 10.5]])
    # A per-symbol file's own symbol column is compared as text too.
    d = tmp_path / "per_symbol"
    d.mkdir()
    write_csv(d / "0700.csv", ["0700,2020-01-02,10,11,9,10,100"], header=header)
    assert load_panel("csv", str(d)).symbols == ("0700",)


@pytest.mark.parametrize(
    ("source", "names"),
    [("csv", ("XOM.CSV", "XOM.csv")), ("parquet", ("XOM.parquet", "XOM.pq"))],
)
def test_two_files_of_one_symbol_in_a_folder_are_an_error(
    tmp_path: Path, source: str, names: tuple[str, str]
) -> None:
    """Neither file of XOM is taken over the other by the sort order of their names."""
    d = tmp_path / "bars"
    d.mkdir()
    frame = pd.DataFrame(
        {"date": ["2020-01-02"], "open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0],
         "volume": [1.0]}
    )  # fmt: skip
    for name in (*names, f"AAPL.{names[1].split('.')[1]}"):
        if source == "csv":
            frame.to_csv(d / name, index=False)
        else:
            frame.to_parquet(d / name)
    with pytest.raises(DataError, match="two files for symbol 'XOM'") as err:
        load_panel(source, str(d))
    assert all(repr(name) in str(err.value) for name in names)
    assert err.value.symbol == "XOM"


def _window_drops(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "data.suspect" and e["kind"] == "no_bars_in_window"]


def test_a_requested_symbol_with_no_bars_in_the_window_is_named(tmp_path: Path) -> None:
    """CHTR (first bar 2010-01-05) asked for in a run ending 2009-12-31: the run had 9 of the
    10 symbols and no log line named CHTR. A file missing the symbol is an error; bars all
    outside the window are a deliberate, logged drop: each symbol with its first and last
    bar and the window, every one of them (not the first few examples)."""
    d = tmp_path / "bars"
    d.mkdir()
    write_csv(d / "AAA.csv", GOOD)  # 2020-01-02 .. 2020-01-08
    late = [f"2021-{line[5:]}" for line in GOOD]  # 2021-01-02 .. 2021-01-08
    write_csv(d / "CHTR.csv", late)
    with capture_logs() as logs:
        p = load_panel("csv", str(d), symbols=["AAA", "CHTR"], end="2020-12-31")
    assert p.symbols == ("AAA",)
    (said,) = _window_drops(logs)
    assert said["log_level"] == "warning" and said["count"] == 1
    assert said["examples"] == [
        {
            "source": str(d / "CHTR.csv"),
            "symbol": "CHTR",
            "first_bar": "2021-01-02",
            "last_bar": "2021-01-08",
            "start": None,
            "end": "2020-12-31",
        }
    ]
    assert "left out of the run" in said["rule"]
    with capture_logs() as logs:  # every symbol in the data: counted, not named as asked for
        assert load_panel("csv", str(d), end="2020-12-31").symbols == ("AAA",)
    assert not _window_drops(logs)

    # A long table, twelve symbols out of the window: each is named, before and after it.
    rows = [f"AAA,{line}" for line in GOOD]
    names = [f"S{i:02d}" for i in range(12)]
    for k, name in enumerate(names):
        year = "2019" if k % 2 else "2021"
        rows += [f"{name},{year}-{line[5:]}" for line in GOOD]
    long = write_csv(tmp_path / "long.csv", rows, header="symbol," + HEADER)
    with capture_logs() as logs:
        p = load_panel(
            "csv", str(long), symbols=["AAA", *names], start="2020-01-01", end="2020-12-31"
        )
    assert p.symbols == ("AAA",)
    (said,) = _window_drops(logs)
    assert said["count"] == 12
    assert [(e["symbol"], e["first_bar"], e["last_bar"]) for e in said["examples"]] == [
        (name, f"{year}-01-02", f"{year}-01-08")
        for k, name in enumerate(names)
        for year in ["2019" if k % 2 else "2021"]
    ]
    assert {(e["start"], e["end"]) for e in said["examples"]} == {("2020-01-01", "2020-12-31")}


def test_every_symbol_loaded_says_how_many_had_no_bars_in_the_window(tmp_path: Path) -> None:
    """With data.symbols empty, symbols with bars in the file but none in the window left
    the run without a word (a 1999-2001 run on the S&P 500 file: 107 names fewer than the
    file). None was asked for, so one warning counts them and names the first few, not one
    line each; a directory of per-symbol files says it the same way."""
    rows = [f"AAA,{line}" for line in GOOD]
    names = [f"S{i:02d}" for i in range(12)]
    rows += [f"{name},2021-{line[5:]}" for name in names for line in GOOD]
    long = write_csv(tmp_path / "long.csv", rows, header="symbol," + HEADER)
    with capture_logs() as logs:
        p = load_panel("csv", str(long), end="2020-12-31")
    assert p.symbols == ("AAA",)
    assert not _window_drops(logs)  # not named as requested symbols gone missing
    (said,) = [e for e in logs if e.get("kind") == "symbols_outside_window"]
    assert said["event"] == "data.suspect" and said["log_level"] == "warning"
    assert said["count"] == 12
    assert [e["symbol"] for e in said["examples"]] == names[:10]  # the first few, not all
    assert said["examples"][0]["first_bar"] == "2021-01-02"
    assert said["examples"][0]["end"] == "2020-12-31"
    assert "data.symbols is empty" in said["rule"] and "list data.symbols" in said["rule"]

    d = tmp_path / "bars"
    d.mkdir()
    write_csv(d / "AAA.csv", GOOD)
    # GOOD's days 53 weeks on: weekdays still (2021-01-02 is a Saturday, which the load
    # without a window below would refuse).
    later = [f"{(pd.Timestamp(ln[:10]) + pd.Timedelta(weeks=53)).date()}{ln[10:]}" for ln in GOOD]
    write_csv(d / "CHTR.csv", later)
    with capture_logs() as logs:
        assert load_panel("csv", str(d), end="2020-12-31").symbols == ("AAA",)
    (said,) = [e for e in logs if e.get("kind") == "symbols_outside_window"]
    assert said["count"] == 1 and said["examples"][0]["symbol"] == "CHTR"
    with capture_logs() as logs:  # every symbol has bars in the window: nothing to say
        load_panel("csv", str(d))
    assert not [e for e in logs if e.get("kind") == "symbols_outside_window"]


def test_long_parquet_matches_hand_values(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "Symbol": ["MSFT", "AAPL", "MSFT", "AAPL"],
            "Timestamp": pd.to_datetime(["2020-01-03", "2020-01-02", "2020-01-06", "2020-01-03"]),
            "OPEN": [100.0, 10.0, 100.5, 10.5],
            "HIGH": [101.0, 11.0, 102.0, 12.0],
            "LOW": [99.0, 9.0, 100.0, 10.0],
            "CLOSE": [100.5, 10.5, 101.0, 11.0],
            "VOLUME": [1000, 100, 1100, 200],
            "split": [1.0, 1.0, 3.0, 1.0],
        }
    )
    path = tmp_path / "long.parquet"
    df.to_parquet(path)
    p = load_panel("parquet", str(path))
    assert p.symbols == ("AAPL", "MSFT")
    np.testing.assert_array_equal(p.times, days("2020-01-02", "2020-01-03", "2020-01-06"))
    np.testing.assert_array_equal(p.close, [[10.5, np.nan], [11, 100.5], [np.nan, 101]])
    np.testing.assert_array_equal(p.split, [[1, 1], [1, 1], [1, 3]])
    np.testing.assert_array_equal(p.dividend, np.zeros((3, 2)))
    assert load_panel("parquet", str(path), layout="long").symbols == ("AAPL", "MSFT")
    assert load_panel("parquet", str(path), symbols=["MSFT"]).symbols == ("MSFT",)
    with pytest.raises(DataError, match=r"\['IBM'\].*available: AAPL, MSFT"):
        load_panel("parquet", str(path), symbols=["IBM"])


def test_per_symbol_parquet_dir_and_single_file(tmp_path: Path) -> None:
    d = tmp_path / "pq"
    d.mkdir()
    frame = pd.DataFrame(
        {"time": ["2020-01-02", "2020-01-03"], "open": [1.0, 2.0], "high": [1.5, 2.5],
         "low": [0.5, 1.5], "close": [1.2, 2.2], "volume": [10, 20]}
    )  # fmt: skip
    frame.to_parquet(d / "BRK.B.parquet")
    frame.assign(close=[1.3, 2.3]).to_parquet(d / "XOM.parquet")
    p = load_panel("parquet", str(d))
    assert p.symbols == ("BRK.B", "XOM")
    np.testing.assert_array_equal(p.close, [[1.2, 1.3], [2.2, 2.3]])
    single = load_panel("parquet", str(d / "XOM.parquet"), layout="per_symbol")
    assert single.symbols == ("XOM",)
    assert load_panel("parquet", str(d / "XOM.parquet")).symbols == ("XOM",)  # auto


def test_tz_aware_times_become_bar_labels(tmp_path: Path) -> None:
    """Daily bars (one per exchange date) are labelled by their session date, whatever time
    of day they carry; intraday bars by their start instant in UTC."""
    path = write_csv(
        tmp_path / "SPY.csv",
        ["2020-01-02T14:30:00Z,10,11,9,10,1", "2020-01-03T09:30:00-05:00,10,11,9,10,1"],
        header="timestamp,open,high,low,close,volume",
    )
    p = load_panel("csv", str(path))
    np.testing.assert_array_equal(p.times, days("2020-01-02", "2020-01-03"))
    pq = tmp_path / "QQQ.parquet"
    pd.DataFrame(
        {"datetime": pd.DatetimeIndex(["2020-07-01 09:30", "2020-07-01 09:35"],
                                      tz="America/New_York"),
         "open": [1.0, 1.0], "high": [1.0, 1.0], "low": [1.0, 1.0], "close": [1.0, 1.0],
         "volume": [0, 0]}
    ).to_parquet(pq)  # fmt: skip
    np.testing.assert_array_equal(
        load_panel("parquet", str(pq)).times, days("2020-07-01T13:30", "2020-07-01T13:35")
    )
    # Naive intraday times are the exchange's wall time.
    naive = write_csv(
        tmp_path / "IWM.csv",
        ["2020-01-02 09:30,10,11,9,10,1", "2020-01-02 09:35,10,11,9,10,1"],
        header="timestamp,open,high,low,close,volume",
    )
    np.testing.assert_array_equal(
        load_panel("csv", str(naive)).times, days("2020-01-02T14:30", "2020-01-02T14:35")
    )
    # A daily file stamped at the close keeps its dates.
    closes = write_csv(
        tmp_path / "DIA.csv",
        ["2020-01-02 16:00,10,11,9,10,1", "2020-01-03 16:00,10,11,9,10,1"],
        header="timestamp,open,high,low,close,volume",
    )
    np.testing.assert_array_equal(
        load_panel("csv", str(closes)).times, days("2020-01-02", "2020-01-03")
    )


def test_a_date_column_and_a_time_column_are_one_timestamp(tmp_path: Path) -> None:
    """Symbol,Date,Time: every minute of a day is its own bar, not one repeated date."""
    path = write_csv(
        tmp_path / "minutes.csv",
        ["AAA,10/26/2015,09:30,10,11,9,10,1", "AAA,10/26/2015,09:31,10,11,9,10.5,1",
         "AAA,10/27/2015,09:30,10,11,9,11,1"],
        header="Symbol,Date,Time,Open,High,Low,Close,Volume",
    )  # fmt: skip
    p = load_panel("csv", str(path))
    np.testing.assert_array_equal(  # New York wall times (EDT) as UTC instants
        p.times, days("2015-10-26T13:30", "2015-10-26T13:31", "2015-10-27T13:30")
    )
    np.testing.assert_array_equal(p.close[:, 0], [10, 10.5, 11])
    # A Parquet date column and a time-of-day column, likewise.
    pq = tmp_path / "minutes.parquet"
    pd.DataFrame(
        {"date": pd.to_datetime(["2015-10-26", "2015-10-26"]), "time": ["09:30", "09:31"],
         "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}
    ).to_parquet(pq)  # fmt: skip
    np.testing.assert_array_equal(
        load_panel("parquet", str(pq)).times, days("2015-10-26T13:30", "2015-10-26T13:31")
    )


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_two_columns_of_one_name_are_an_error_naming_both(tmp_path: Path, source: str) -> None:
    """Date beside Datetime cannot be combined: neither is taken over the other."""
    frame = pd.DataFrame(
        {"Date": ["2020-01-02", "2020-01-03"], "Datetime": ["2020-01-02 16:00", "2020-01-03 16:00"],
         "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}
    )  # fmt: skip
    path = tmp_path / f"XYZ.{source}"
    frame.to_csv(path, index=False) if source == "csv" else frame.to_parquet(path)
    with pytest.raises(DataError, match="columns 'Date' and 'Datetime' both name the time") as err:
        load_panel(source, str(path))
    assert err.value.source == str(path)


# Day-first dates whose first value is ambiguous: Jan 2, Jan 5, ..., Jan 13 (line 7).
DAY_FIRST = ["02/01/2015", "05/01/2015", "06/01/2015", "07/01/2015", "08/01/2015", "13/01/2015"]


@pytest.mark.parametrize("sep", ["/", "."])
def test_day_first_dates_are_never_read_two_ways(tmp_path: Path, sep: str) -> None:
    """02/01 then 13/01: pandas inferred month first from the first date, then read 13/01
    on its own, day first: Feb 1 and Jan 13 in one file, a mix repair 'order' then sorted."""
    dates = [d.replace("/", sep) for d in DAY_FIRST]
    path = write_csv(tmp_path / "XYZ.csv", [f"{d},10,11,9,10,1" for d in dates])
    for repair in ([], ["order"], ["all"]):
        with pytest.raises(DataError, match="can only be day first") as err:
            load_panel("csv", str(path), repair=repair)
        assert_names(err.value, path, "XYZ", 7)
        msg = str(err.value)
        assert repr(dates[-1]) in msg and f"{dates[0]!r} (row 2)" in msg
        assert f"date_format = '%d{sep}%m{sep}%Y' (day first)" in msg
    p = load_panel("csv", str(path), date_format=f"%d{sep}%m{sep}%Y")
    np.testing.assert_array_equal(p.times, days(*(f"2015-01-{d[:2]}" for d in DAY_FIRST)))
    # Month-first dates, or day-first ones whose first date says so, need no format.
    us = write_csv(tmp_path / "US.csv", [f"{d[3:5]}/{d[:2]}/2015,10,11,9,10,1" for d in DAY_FIRST])
    assert len(load_panel("csv", str(us)).times) == 6
    eu = write_csv(tmp_path / "EU.csv", [f"{d}/2015,10,11,9,10,1" for d in ("13/01", "19/01")])
    np.testing.assert_array_equal(
        load_panel("csv", str(eu)).times, days("2015-01-13", "2015-01-19")
    )


def test_a_date_format_that_does_not_fit_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", GOOD)
    with pytest.raises(DataError, match=r"unparseable time \(date_format '%d/%m/%Y'\)") as err:
        load_panel("csv", str(path), date_format="%d/%m/%Y")
    assert_names(err.value, path, "XYZ", 2)
    with pytest.raises(ConfigError, match="date_format = 'dd/mm/yyyy' is invalid: not a strftime"):
        load_panel("csv", str(path), date_format="dd/mm/yyyy")
    # A Date and a Time column: the format reads the two joined by a space.
    minutes = write_csv(
        tmp_path / "M.csv",
        ["13.01.2015,09:30,10,11,9,10,1", "13.01.2015,09:31,10,11,9,10,1"],
        header="date,time,open,high,low,close,volume",
    )
    np.testing.assert_array_equal(
        load_panel("csv", str(minutes), date_format="%d.%m.%Y %H:%M").times,
        days("2015-01-13T14:30", "2015-01-13T14:31"),
    )


def test_bundled_source() -> None:
    p = load_panel("bundled")
    assert p.symbols == ("NASDAQ", "SP500")
    assert len(p.times) == 5031
    assert p.n_bars == 2 * 5031
    assert p.times[0] == np.datetime64("1999-01-04", "ns")
    assert p.times[-1] == np.datetime64("2018-12-31", "ns")
    assert p.open[0, 1] == pytest.approx(1229.22998)  # S&P 500 open on 1999-01-04, raw
    assert np.all(p.split == 1.0) and np.all(p.dividend == 0.0)
    only = load_panel("bundled", symbols=["SP500"], start="1999-01-05", end="1999-01-07")
    assert only.symbols == ("SP500",)
    np.testing.assert_array_equal(only.times, days("1999-01-05", "1999-01-06", "1999-01-07"))
    with pytest.raises(DataError, match="available: NASDAQ, SP500"):
        load_panel("bundled", symbols=["DJIA"])


@pytest.mark.parametrize("name", ["nasdaq", "sp500"])
def test_bundled_series_are_arch_s_own_load_without_importing_arch(
    name, monkeypatch, tmp_path
) -> None:
    """The same frame as `arch.data.<name>.load()`, read without running arch's import (which
    takes 1-1.7 s); and the same through arch's loader when arch is not where we look or its
    reader is not what we expect."""
    import importlib
    import importlib.util
    import subprocess
    import sys

    from tradingd.feeds import loaders

    expected = importlib.import_module(f"arch.data.{name}").load()
    pd.testing.assert_frame_equal(loaders._bundled_frame(name), expected)
    broken = tmp_path / "utility.py"
    broken.write_text("raise ImportError('a reader that needs the rest of arch')\n")
    real = importlib.util.spec_from_file_location
    with monkeypatch.context() as m:
        m.setattr(loaders.importlib.util, "spec_from_file_location", lambda n, p: real(n, broken))
        pd.testing.assert_frame_equal(loaders._bundled_frame(name), expected)
    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name: None)
    pd.testing.assert_frame_equal(loaders._bundled_frame(name), expected)
    code = (
        "import sys; from tradingd.feeds.loaders import load_panel; load_panel('bundled');"
        "print(sorted(m for m in sys.modules if m == 'arch' or m.startswith('arch.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- configuration errors ---------------------------------------------------------------------


def test_unknown_source_layout_repair_are_config_errors(per_symbol_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"'yahoo'.*bundled, csv, parquet"):
        load_panel("yahoo")
    with pytest.raises(ConfigError, match=r"'wide'.*auto, long, per_symbol"):
        load_panel("csv", str(per_symbol_dir), layout="wide")
    with pytest.raises(ConfigError, match=r"'fill'.*" + ", ".join(REPAIRS) + ", all"):
        load_panel("csv", str(per_symbol_dir), repair=["nan", "fill"])
    with pytest.raises(ConfigError, match="directory"):
        load_panel("csv", str(per_symbol_dir), layout="long")
    with pytest.raises(ConfigError, match="needs a path"):
        load_panel("csv")


# --- bad input: one error test and one repair test per kind -----------------------------------


def bad_file(tmp_path: Path, index: int, line: str) -> Path:
    lines = list(GOOD)
    lines[index] = line
    return write_csv(tmp_path / "XYZ.csv", lines)


def test_missing_columns_always_error(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "XYZ.csv", ["2020-01-02,10,11,9,10"], header="date,o,high,low,close"
    )
    with pytest.raises(DataError) as err:
        load_panel("csv", str(path), repair=["all"])
    msg = str(err.value)
    assert "['open', 'volume']" in msg and "['date', 'o', 'high', 'low', 'close']" in msg
    assert f"file={path}" in msg and "symbol=XYZ" in msg
    long_path = write_csv(tmp_path / "long.csv", GOOD)
    with pytest.raises(DataError, match=r"\['symbol'\]"):
        load_panel("csv", str(long_path), layout="long")


def test_nan_error_names_line(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 2, "2020-01-06,10.5,12,10,,300")  # line 4
    with pytest.raises(DataError, match=r"missing or non-numeric.*\['close'\]") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 4)


def test_nan_repair_drops_and_logs(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines[2] = "2020-01-06,10.5,12,10,,300"  # line 4: close missing
    lines[3] = "2020-01-07,11,12,10,11.5,"  # line 5: volume missing alone: dropped too
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["nan"])
    np.testing.assert_array_equal(p.times, days("2020-01-02", "2020-01-03", "2020-01-08"))
    (entry,) = repairs_logged(logs, "nan")
    assert entry["rows"] == 2 and entry["symbol"] == "XYZ" and entry["source"] == str(path)
    assert entry["lines"] == [4, 5] and entry["times"] == ["2020-01-06", "2020-01-07"]


def test_blank_line_is_skipped_and_lines_stay_right(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines.insert(1, "")  # line 3 is empty: not data
    path = write_csv(tmp_path / "XYZ.csv", lines)
    assert len(load_panel("csv", str(path)).times) == 5
    lines[3] = "2020-01-06,10.5,12,10,,300"  # line 5
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with pytest.raises(DataError) as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 5)


def test_non_positive_price_error(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 1, "2020-01-03,10,11,0,10.5,200")  # line 3: low = 0
    with pytest.raises(DataError, match="price <= 0") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 3)


def test_negative_volume_error(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 3, "2020-01-07,11,12,10,11.5,-5")  # line 5
    with pytest.raises(DataError, match="negative volume") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 5)


def test_non_positive_repair_drops_and_logs(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines[1] = "2020-01-03,10,11,-1,10.5,200"  # line 3
    lines[3] = "2020-01-07,11,12,10,11.5,-5"  # line 5
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["non_positive"])
    np.testing.assert_array_equal(p.times, days("2020-01-02", "2020-01-06", "2020-01-08"))
    (entry,) = repairs_logged(logs, "non_positive")
    assert entry["rows"] == 2 and entry["lines"] == [3, 5]


def test_high_low_error(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 3, "2020-01-07,11,9.5,10,11.5,0")  # line 5: high < low
    with pytest.raises(DataError, match="high < low") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 5)


def test_high_low_repair_widens_and_logs(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines[3] = "2020-01-07,11,9.5,10,11.5,0"  # o=11 h=9.5 l=10 c=11.5 -> h=11.5 l=9.5
    lines[4] = "2020-01-08,13.5,13,11,12,500"  # open above high -> h=13.5 l=11
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["high_low"])
    np.testing.assert_array_equal(p.high[:, 0], [11, 11, 12, 11.5, 13.5])
    np.testing.assert_array_equal(p.low[:, 0], [9, 9, 10, 9.5, 11])
    np.testing.assert_array_equal(p.open[:, 0], [10, 10, 10.5, 11, 13.5])
    (entry,) = repairs_logged(logs, "high_low")
    assert entry["rows"] == 2 and entry["lines"] == [5, 6]


def test_duplicates_error(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 3, "2020-01-06,10.5,12,10,11.9,300")  # line 5 repeats line 4's date
    with pytest.raises(DataError, match="repeating an earlier timestamp") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 5)


def test_duplicates_repair_keeps_last_and_logs(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 3, "2020-01-06,10.5,12,10,11.9,300")
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["duplicates"])
    np.testing.assert_array_equal(
        p.times, days("2020-01-02", "2020-01-03", "2020-01-06", "2020-01-08")
    )
    np.testing.assert_array_equal(p.close[:, 0], [10, 10.5, 11.9, 12])  # the last 01-06 row
    (entry,) = repairs_logged(logs, "duplicates")
    assert entry["rows"] == 1 and entry["lines"] == [4]  # line 4 was dropped


def test_order_error(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines[1], lines[2] = lines[2], lines[1]  # line 3 = 01-06, line 4 = 01-03
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with pytest.raises(DataError, match="earlier than the row before") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 4)


def test_order_repair_sorts_and_logs(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines[1], lines[2] = lines[2], lines[1]
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["order"])
    np.testing.assert_array_equal(
        p.times, days("2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08")
    )
    np.testing.assert_array_equal(p.close[:, 0], [10, 10.5, 11, 11.5, 12])
    (entry,) = repairs_logged(logs, "order")
    assert entry["rows"] == 1 and entry["lines"] == [4]


def test_gap_error(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 4, "2020-01-20,11.5,13,11,12,500")  # line 6: 13 days after 01-07
    with pytest.raises(DataError, match="more than 7 days") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 6)
    # A wider tolerance accepts it; exactly 7 days is not a gap.
    assert len(load_panel("csv", str(path), max_gap_days=13).times) == 5
    week = bad_file(tmp_path, 4, "2020-01-14,11.5,13,11,12,500")
    assert len(load_panel("csv", str(week)).times) == 5


def test_gap_repair_accepts_logs_and_invents_nothing(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 4, "2020-01-20,11.5,13,11,12,500")
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["gaps"])
    np.testing.assert_array_equal(
        p.times, days("2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-20")
    )
    (entry,) = repairs_logged(logs, "gaps")
    assert entry["rows"] == 1 and entry["lines"] == [6]


def test_errors_in_long_table_name_the_symbol_and_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "long.csv",
        [
            "MSFT,2020-01-02,100,101,99,100,10",
            "AAPL,2020-01-02,10,11,9,10,10",
            "MSFT,2020-01-03,100,101,99,100,10",
            "AAPL,2020-01-03,10,11,9,,10",  # line 5
        ],
        header="symbol,date,open,high,low,close,volume",
    )
    with pytest.raises(DataError) as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "AAPL", 5)
    with pytest.raises(DataError) as err:  # filtering symbols keeps the line numbers
        load_panel("csv", str(path), symbols=["AAPL"])
    assert_names(err.value, path, "AAPL", 5)
    assert load_panel("csv", str(path), symbols=["MSFT"]).n_bars == 2
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["all"])
    np.testing.assert_array_equal(p.close, [[10, 100], [np.nan, 100]])
    (entry,) = repairs_logged(logs, "nan")
    assert entry["symbol"] == "AAPL" and entry["rows"] == 1 and entry["lines"] == [5]


def test_parquet_errors_name_the_timestamp(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "symbol": ["AAPL", "MSFT", "MSFT", "MSFT"],
            "date": pd.to_datetime(["2020-01-02", "2020-01-02", "2020-01-03", "2020-01-03"]),
            "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.0, "volume": 5.0,
        }
    )  # fmt: skip
    path = tmp_path / "long.parquet"
    df.to_parquet(path)
    with pytest.raises(DataError, match="repeating") as err:
        load_panel("parquet", str(path))
    assert_names(err.value, path, "MSFT", "2020-01-03")
    df.loc[0, "high"] = 8.0
    df.to_parquet(path)
    with pytest.raises(DataError, match="high < low") as err:
        load_panel("parquet", str(path))
    assert_names(err.value, path, "AAPL", "2020-01-02")


def test_split_snapping_and_bad_split(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "XYZ.csv",
        [
            "2020-01-02,10,11,9,10,100,1",
            "2020-01-03,10,11,9,10,100,7.000007",  # line 3: snapped to 7
            "2020-01-06,10,11,9,10,100,1.5",  # exact: untouched, not logged
            "2020-01-07,10,11,9,10,100,1.00049",  # 4.9e-4 from 1: too far, kept
            "2020-01-08,10,11,9,10,100,0.33333333",  # line 6: snapped to 1/3
        ],
        header="date,open,high,low,close,volume,split",
    )
    with capture_logs() as logs:
        p = load_panel("csv", str(path))
    np.testing.assert_array_equal(p.split[:, 0], [1, 7, 1.5, 1.00049, 1 / 3])
    (entry,) = repairs_logged(logs, "split_snap")
    assert entry["rows"] == 2 and entry["lines"] == [3, 6]
    assert entry["values"][0] == "7.000007->7.0"
    zero = write_csv(
        tmp_path / "XYZ.csv",
        ["2020-01-02,10,11,9,10,100,1", "2020-01-03,10,11,9,10,100,0"],  # line 3: split 0
        header="date,open,high,low,close,volume,split",
    )
    with pytest.raises(DataError, match="split <= 0") as err:
        load_panel("csv", str(zero), repair=["all"])
    assert_names(err.value, zero, "XYZ", 3)


def test_unparseable_time_names_line(tmp_path: Path) -> None:
    path = bad_file(tmp_path, 2, "yesterday,10.5,12,10,11,300")
    with pytest.raises(DataError, match=r"unparseable time.*'yesterday'") as err:
        load_panel("csv", str(path), repair=["all"])
    assert_names(err.value, path, "XYZ", 4)


def test_repair_all_fixes_everything_at_once(tmp_path: Path) -> None:
    lines = [
        "2020-01-03,10,11,9,10.5,200",
        "2020-01-02,10,11,9,10,100",  # order
        "2020-01-06,10.5,12,10,,300",  # nan
        "2020-01-07,11,10,12,11.5,0",  # high_low
        "2020-01-07,11,12,10,11.6,0",  # duplicate: kept (last)
        "2020-01-20,11.5,13,11,12,500",  # gap
    ]
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with capture_logs() as logs:
        frame = load_frame("csv", str(path), repair=["all"])
    assert frame["time"].tolist() == list(
        pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-07", "2020-01-20"])
    )
    assert frame["close"].tolist() == [10, 10.5, 11.6, 12]
    counts = {e["what"]: e["rows"] for e in logs if e["event"] == "data.repair"}
    assert counts == {"nan": 1, "high_low": 1, "duplicates": 1, "order": 1, "gaps": 1}


# --- property: order and duplicates ----------------------------------------------------------


@st.composite
def shuffled_bars(draw: st.DrawFn) -> tuple[pd.DataFrame, list[int]]:
    n = draw(st.integers(1, 12))
    steps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    day = np.cumsum(steps)
    low = draw(st.lists(st.floats(1, 100), min_size=n, max_size=n))
    span = draw(st.lists(st.floats(0, 10), min_size=n, max_size=n))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3 * n))
    lo = np.array(low)[rows]
    hi = lo + np.array(span)[rows]
    df = pd.DataFrame(
        {
            # Business days: a weekend bar is a check of its own, not this test's subject.
            "time": pd.bdate_range("2020-01-01", periods=int(day.max()) + 1)[day[rows]],
            "open": lo,
            "high": hi,
            "low": lo,
            "close": hi,
            "volume": np.arange(len(rows), dtype=float),  # position in the input
        }
    )
    return df, [int(day[r]) for r in rows]


@settings(max_examples=150, deadline=None)
@given(shuffled_bars())
def test_order_and_duplicates_property(case: tuple[pd.DataFrame, list[int]]) -> None:
    df, key = case
    # Gaps and spikes (the prices are random) are not the subject.
    check = {"source": "mem", "symbol": "S", "max_gap_days": 1000, "max_spike": 0}
    with capture_logs():
        out = validate_frame(df, **check, repair=["order", "duplicates"])
    t = out["time"].to_numpy()
    assert np.all(t[1:] > t[:-1])
    assert len(out) <= len(set(key))
    assert len(out) == len(set(key))  # nothing but duplicates is dropped
    last = {k: i for i, k in enumerate(key)}  # the last occurrence of each timestamp wins
    assert out["volume"].tolist() == [float(last[k]) for k in sorted(last)]

    strictly_increasing = all(a < b for a, b in itertools.pairwise(key))
    if strictly_increasing:
        validate_frame(df, **check, repair=())
    else:
        with pytest.raises(DataError, match=r"earlier than the row before|repeating"):
            validate_frame(df, **check, repair=())


# --- corporate actions the prices contradict ---------------------------------------------------

ACTIONS = "date,open,high,low,close,volume,split,dividend"


def _suspects(logs: list[dict]) -> dict[str, dict]:
    return {e["kind"]: e for e in logs if e["event"] == "data.suspect"}


def test_corporate_actions_the_prices_contradict_are_logged(tmp_path: Path) -> None:
    """A split of 100 with no price move, a dividend of a million, a file without the
    split and dividend columns: accepted silently before, and a backtest booked a 100-fold
    position or a thousand-fold account (or a 2-for-1 split as a 50% crash)."""
    d = tmp_path / "bars"
    d.mkdir()
    write_csv(
        d / "GOOD.csv",  # a real 2-for-1: the price halves with the coefficient, and a dividend
        [
            "2020-01-02,100,101,99,100,1000,1,0",
            "2020-01-03,50,51,49,50,2000,2,0",
            "2020-01-06,50,51,49,50,2000,1,0.5",
        ],
        header=ACTIONS,
    )
    write_csv(
        d / "BOGUS.csv",
        [
            "2019-12-30,100,101,99,100,1000,1,0",
            "2019-12-31,100,101,99,100,1000,1,0",
            "2020-01-02,100,101,99,100,1000,1,0",
            "2020-01-03,100,101,99,100,1000,100,0",  # no price move
            "2020-01-06,100,101,99,100,1000,1,1000000",
            "2020-01-07,100,101,99,100,1000,1,0",
        ],
        header=ACTIONS,
    )
    with capture_logs() as logs:
        load_panel("csv", path=str(d), layout="per_symbol")
    found = _suspects(logs)
    assert set(found) == {"split_without_price_move", "large_dividend"}
    split = found["split_without_price_move"]
    assert split["count"] == 1 and split["examples"][0]["symbol"] == "BOGUS"
    assert split["examples"][0]["time"] == "2020-01-03" and split["examples"][0]["value"] == 100
    assert found["large_dividend"]["examples"][0]["time"] == "2020-01-06"
    assert all(e["log_level"] == "warning" for e in found.values())

    bare = tmp_path / "bare"
    bare.mkdir()
    write_csv(bare / "RAW.csv", GOOD)
    with capture_logs() as logs:
        load_panel("csv", path=str(bare), layout="per_symbol")
    (missing,) = _suspects(logs).values()
    assert missing["kind"] == "no_corporate_actions"
    assert missing["examples"][0]["missing_columns"] == ["split", "dividend"]
    with capture_logs() as logs:
        load_panel("bundled")  # index series: no corporate actions to carry, no warning
    assert not _suspects(logs)


def test_a_bar_with_both_a_split_and_a_dividend_is_said(tmp_path: Path) -> None:
    """SO on 2001-04-03 in the S&P 500 file: a 3-for-2 split and a 13.80 dividend on one bar
    (the Mirant spin-off counted twice), each within its own limit, and nothing checked them
    together: booked 1.5 x (21.95 + 13.80) / 35.29 - 1 = +52% overnight on a -38% price move,
    silently. Said now, with the return as booked; the values are still booked as given."""
    d = tmp_path / "bars"
    d.mkdir()
    write_csv(
        d / "SO.csv",
        [
            "2001-03-30,35,36,34,35.5,1000,1,0",
            "2001-04-02,35.5,36,35,35.29,1000,1,0",
            "2001-04-03,21.95,22.5,21.5,22,3000,1.5,13.80",  # both: said
            "2001-04-04,22,23,21,22,3000,1,0.2",  # a dividend alone: not said
            "2001-04-05,11,12,10,11,6000,2,0",  # a split alone: not said
        ],
        header=ACTIONS,
    )
    with capture_logs() as logs:
        p = load_panel("csv", path=str(d), layout="per_symbol")
    found = _suspects(logs)
    assert set(found) == {"split_with_dividend"}
    said = found["split_with_dividend"]
    assert said["log_level"] == "warning" and said["count"] == 1
    assert said["source"] == str(d)
    (example,) = said["examples"]
    booked = example.pop("overnight_return")
    assert booked == pytest.approx(1.5 * (21.95 + 13.80) / 35.29 - 1)  # +52%
    assert example == {
        "source": str(d / "SO.csv"),
        "symbol": "SO",
        "time": "2001-04-03",
        "previous_close": 35.29,
        "open": 21.95,
        "split": 1.5,
        "dividend": 13.8,
    }
    assert "booked as given" in said["rule"] and "post-split share" in said["rule"]
    i = int(np.searchsorted(p.times, np.datetime64("2001-04-03", "ns")))
    assert (p.split[i, 0], p.dividend[i, 0]) == (1.5, 13.8)  # booked as given


def test_a_split_the_price_does_not_show_at_all_is_said(tmp_path: Path) -> None:
    """A 2-for-1 on three days in a row with the price unmoved passed without a word: the
    split check said only a split more than 4x off the price move, and each day's 2.0 is
    0.5x of it, so the position was doubled three times (8x) silently. A split of 1.5x or
    more either way whose move is nearer no move than the split is said now; a real split,
    a small one (a 5% stock dividend within a day's noise) and a moved 3-for-2 are not."""
    d = tmp_path / "bars"
    d.mkdir()
    write_csv(
        d / "FLAT.csv",
        [
            "2020-01-02,100,101,99,100,1000,1,0",
            "2020-01-03,100,101,99,100,1000,2,0",  # unmoved: said
            "2020-01-06,100,101,99,100,1000,2,0",  # said
            "2020-01-07,100,101,99,100,1000,2,0",  # said
            "2020-01-08,100,101,99,100,1000,0.5,0",  # a 1-for-2 reverse, unmoved: said
            "2020-01-09,100,101,99,100,1000,1.05,0",  # 5%: within noise, not said
        ],
        header=ACTIONS,
    )
    write_csv(
        d / "REAL.csv",
        [
            "2020-01-02,100,101,99,100,1000,1,0",
            "2020-01-03,50,51,49,50,2000,2,0",  # halved: a real 2-for-1
            "2020-01-06,38,39,37,38,3000,1.5,0",  # 50 / 38 = 1.32 of 1.5: shown, not said
            "2020-01-07,38,39,37,38,3000,1,0",
        ],
        header=ACTIONS,
    )
    with capture_logs() as logs:
        p = load_panel("csv", path=str(d), layout="per_symbol")
    found = _suspects(logs)
    assert set(found) == {"split_without_price_move"}
    said = found["split_without_price_move"]
    assert said["log_level"] == "warning" and said["count"] == 4
    assert [(e["symbol"], e["time"], e["value"]) for e in said["examples"]] == [
        ("FLAT", "2020-01-03", 2.0),
        ("FLAT", "2020-01-06", 2.0),
        ("FLAT", "2020-01-07", 2.0),
        ("FLAT", "2020-01-08", 0.5),
    ]
    assert "price unmoved" in said["rule"] and "booked as given" in said["rule"]
    flat = p.symbols.index("FLAT")
    assert p.split[1:4, flat].tolist() == [2.0, 2.0, 2.0]  # booked as given


# Five-minute bars of 2024-06-27 (EDT, UTC-4: 13:30Z is the 09:30 open) and the next day.
INTRADAY = "timestamp,symbol,open,high,low,close,volume,split,dividend"


def _intraday_rows(symbol: str, day: str, n: int, split: float, dividend: float) -> list[str]:
    start = pd.Timestamp(f"{day} 13:30", tz="UTC")
    return [
        f"{(start + pd.Timedelta(minutes=5 * k)).isoformat()},{symbol},50,51,49,50,1000,"
        f"{split},{dividend}"
        for k in range(n)
    ]


def test_an_action_on_every_intraday_bar_of_a_session_is_refused(tmp_path: Path) -> None:
    """A daily action table joined onto 5-minute bars put the ex-date's split and dividend
    on every bar of the session: the backtest booked the dividend 78 times (+13,007.60 on
    four symbols) and doubled a 2-for-1 position 78 times, without a word. More than one bar
    with a split, or with a dividend, in one session of a symbol is refused, naming the
    file, the symbol, the first repeating bar, the session and how many bars carry it."""
    rows = [
        *_intraday_rows("AAA", "2024-06-26", 3, 1.0, 0.0),
        *_intraday_rows("AAA", "2024-06-27", 4, 1.0, 0.2),  # a dividend on all 4: refused
        *_intraday_rows("BBB", "2024-06-26", 3, 1.0, 0.0),
        *_intraday_rows("BBB", "2024-06-27", 1, 2.0, 0.0),  # once: fine
        *_intraday_rows("BBB", "2024-06-28", 2, 1.0, 0.0),
    ]
    path = write_csv(tmp_path / "m5.csv", rows, header=INTRADAY)
    with pytest.raises(DataError) as err:
        load_frame("csv", str(path))
    msg = str(err.value)
    assert msg.startswith("3 intraday bar(s) repeating a dividend already on an earlier bar")
    assert "session of 2024-06-27, where 4 bars carry a dividend" in msg
    assert 'repair = ["repeated_actions"]' in msg
    assert_names(err.value, path, "AAA", 6)  # line 6: the session's second bar

    split = [
        *_intraday_rows("CCC", "2024-06-26", 3, 1.0, 0.0),
        *_intraday_rows("CCC", "2024-06-27", 5, 2.0, 0.0),
    ]
    path = write_csv(tmp_path / "split.csv", split, header=INTRADAY)
    with pytest.raises(DataError, match=r"^4 intraday bar\(s\) repeating a split") as err:
        load_frame("csv", str(path))
    assert "where 5 bars carry a split (this bar's: 2)" in str(err.value)
    assert_names(err.value, path, "CCC", 6)


def test_repair_repeated_actions_keeps_the_sessions_first_bar(tmp_path: Path) -> None:
    """With repair 'repeated_actions' the action stays on the first bar of the session that
    carries it and the later bars' are reset (split 1.0, dividend 0.0), logged with the
    count, the session and the bars that carried it. The session is the exchange date, not
    the UTC one: 01:00Z on 2024-06-28 is 21:00 New York on the 27th (an extended-hours bar),
    still that session; 13:30Z on the 28th is the next session."""
    rows = [
        *_intraday_rows("AAA", "2024-06-26", 2, 1.0, 0.0),
        *_intraday_rows("AAA", "2024-06-27", 3, 2.0, 0.2),
        "2024-06-28T01:00:00+00:00,AAA,50,51,49,50,1000,1.0,0.2",  # the 27th in New York
        "2024-06-28T13:30:00+00:00,AAA,50,51,49,50,1000,1.0,0.2",  # next session: kept
        *_intraday_rows("BBB", "2024-06-26", 2, 1.0, 0.0),
        *_intraday_rows("BBB", "2024-06-27", 2, 1.0, 0.0),
    ]
    path = write_csv(tmp_path / "m5.csv", rows, header=INTRADAY)
    with capture_logs() as logs:
        frame = load_frame("csv", str(path), repair=["repeated_actions"])
    aaa = frame[frame["symbol"] == "AAA"]
    assert aaa["split"].tolist() == [1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert aaa["dividend"].tolist() == [0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.2]
    (said,) = repairs_logged(logs, "repeated_actions")
    assert said["symbol"] == "AAA" and said["rows"] == 3 and said["lines"] == [5, 6, 7]
    assert said["values"] == [
        "session 2024-06-27: split 2 (3 bars), dividend 0.2 (4 bars)",
        "session 2024-06-27: split 2 (3 bars), dividend 0.2 (4 bars)",
        "session 2024-06-27: dividend 0.2 (4 bars)",
    ]
    (summary,) = [e for e in logs if e["event"] == "data.repairs"]
    assert summary["rows"] == {"repeated_actions": 3}


def test_daily_bars_are_not_judged_as_sessions_of_intraday_bars(tmp_path: Path) -> None:
    """Daily bars carry one action each on consecutive sessions: nothing to repeat."""
    path = write_csv(
        tmp_path / "d.csv",
        [
            "2020-01-02,AAA,100,101,99,100,1000,1,0.2",
            "2020-01-03,AAA,100,101,99,100,1000,1,0.2",
        ],
        header="date,symbol,open,high,low,close,volume,split,dividend",
    )
    frame = load_frame("csv", str(path))
    assert frame["dividend"].tolist() == [0.2, 0.2]


def test_a_jump_like_a_split_in_data_without_a_split_column_is_said(tmp_path: Path) -> None:
    """Without a split column (Alpha Vantage's unadjusted daily answers) a 4-for-1 was booked
    as a 75% one-day crash, and nothing named the symbol or the day: the load only said the
    column was missing. An open near 1/2, 1/3, 1/4 or 1/10 of the previous close (or that
    multiple, a reverse split) is said; an ordinary move, or a jump the split column
    explains, is not."""
    d = tmp_path / "bars"
    d.mkdir()
    rows = [
        "2020-01-02,100,101,99,100,1000",
        "2020-01-03,100,101,99,100,1000",
        "2020-01-06,25.5,26,25,25.5,4000",  # 25.5 / 100 = 0.255: a 4-for-1, 2% off 1/4
        "2020-01-07,25.5,26,25,25.5,4000",
        "2020-01-08,17,18,16,17,4000",  # 17 / 25.5 = 2/3: not a split ratio
        "2020-01-09,17,18,16,17,4000",
        "2020-01-10,68,69,67,68,1000",  # 68 / 17 = 4: a 1-for-4 reverse split
        "2020-01-13,68,69,67,68,1000",
    ]
    write_csv(d / "RAW.csv", rows)
    with capture_logs() as logs:
        load_panel("csv", path=str(d), layout="per_symbol")
    found = _suspects(logs)
    assert set(found) == {"no_corporate_actions", "split_like_jump"}
    jump = found["split_like_jump"]
    assert jump["log_level"] == "warning" and jump["count"] == 2
    assert [(e["symbol"], e["time"], e["previous_close"], e["open"]) for e in jump["examples"]] == [
        ("RAW", "2020-01-06", 100.0, 25.5),
        ("RAW", "2020-01-10", 17.0, 68.0),
    ]
    explained = tmp_path / "explained"
    explained.mkdir()
    splits = ["1", "1", "4", "1", "1", "1", "0.25", "1"]
    write_csv(
        explained / "RAW.csv",
        [f"{r},{s},0" for r, s in zip(rows, splits, strict=True)],
        header=ACTIONS,
    )
    with capture_logs() as logs:
        load_panel("csv", path=str(explained), layout="per_symbol")
    assert not _suspects(logs)


def test_a_symbol_whose_data_ends_before_the_others_is_said(tmp_path: Path) -> None:
    """KO's bars stopping in May while the others ran to December: a position held stayed in
    the book at its last price to the end, unsellable, and nothing said so."""
    d = tmp_path / "bars"
    d.mkdir()
    days = pd.bdate_range("2020-01-01", periods=20)
    full = [f"{t:%Y-%m-%d},10,11,9,10,100,1,0" for t in days]
    write_csv(d / "AAA.csv", full, header=ACTIONS)
    write_csv(d / "KO.csv", full[:8], header=ACTIONS)  # 12 bars before the end
    write_csv(d / "BBB.csv", full[:-3], header=ACTIONS)  # 3 before: a few missing, not said
    with capture_logs() as logs:
        p = load_panel("csv", path=str(d), layout="per_symbol")
    assert p.symbols == ("AAA", "BBB", "KO")
    (said,) = [e for e in logs if e["event"] == "data.suspect"]
    assert said["kind"] == "ends_early" and said["count"] == 1 and said["log_level"] == "warning"
    assert said["examples"] == [
        {"symbol": "KO", "last_bar": f"{days[7]:%Y-%m-%d}", "bars_after": 12}
    ]


def test_a_panels_read_only_rows_are_not_pickled_twice() -> None:
    """The read-only views `row()` makes were pickled with the panel (a copy each: twice the
    bytes) when it went to a worker process."""
    import pickle

    from conftest import make_panel

    panel = make_panel(n_bars=50, split_at=None)
    before = len(pickle.dumps(panel))
    row = panel.row(3, panel.datetimes()[3])
    assert not row.close.flags.writeable
    assert len(pickle.dumps(panel)) == before
    copy = pickle.loads(pickle.dumps(panel))
    assert np.array_equal(copy.row(3, panel.datetimes()[3]).close, row.close, equal_nan=True)


def test_a_missing_relative_data_path_names_the_directory_it_was_read_from(tmp_path, monkeypatch):
    """`csv path does not exist (file=data/nope.csv)`: run from another directory, the user
    could not see where tradingd had looked."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as caught:
        load_panel("csv", "data/nope.csv")
    text = str(caught.value)
    assert f"relative to {tmp_path}: {tmp_path / 'data' / 'nope.csv'}" in text
    with pytest.raises(DataError) as absolute:
        load_panel("csv", tmp_path / "nope.csv")
    assert "relative to" not in str(absolute.value)


def test_the_configured_date_format_reaches_the_backtests_load(tmp_path: Path) -> None:
    """`data.date_format` was checked but not passed on by `load_data`: the day-first error
    advised a setting that changed nothing in `tradingd backtest`."""
    from tradingd.app import load_data
    from tradingd.config import load_config

    path = write_csv(tmp_path / "XYZ.csv", [f"{d},10,11,9,10,1" for d in DAY_FIRST])
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[data]\nsource = "csv"\npath = "{path}"\ndate_format = "%d/%m/%Y"\n'
        "[cache]\ndata = false\nfeatures = false\n"
    )
    panel = load_data(load_config([cfg], env={}))
    np.testing.assert_array_equal(panel.times, days(*(f"2015-01-{d[:2]}" for d in DAY_FIRST)))


def test_two_files_of_one_ticker_in_other_cases_are_an_error(tmp_path: Path) -> None:
    """aapl.csv beside AAPL.csv loaded two symbols: the stock's exposure twice."""
    d = tmp_path / "bars"
    d.mkdir()
    for name in ("AAPL.csv", "aapl.csv", "MSFT.csv"):
        write_csv(d / name, ["2020-01-02,10,11,9,10,100"], header="date,open,high,low,close,volume")
    with pytest.raises(DataError, match="two files for symbol") as err:
        load_panel("csv", str(d))
    assert "'AAPL.csv'" in str(err.value) and "'aapl.csv'" in str(err.value)


@pytest.mark.parametrize("cell", [" XOM ", "XOM ", "   "])
def test_a_symbol_cell_with_spaces_around_it_or_empty_is_an_error(tmp_path: Path, cell) -> None:
    """ " XOM " was traded as a symbol of its own, beside "XOM"."""
    path = write_csv(
        tmp_path / "long.csv",
        ["XOM,2020-01-02,10,11,9,10,100", f"{cell},2020-01-03,10,11,9,10,100"],
        header="symbol,date,open,high,low,close,volume",
    )
    with pytest.raises(DataError, match="empty or has spaces around it") as err:
        load_panel("csv", str(path))
    assert "line 3" in str(err.value) or "row" in str(err.value)


@pytest.mark.parametrize("bad", ["X\x00OM", "XOM\x07", "X\x1bOM"])
def test_a_symbol_with_a_control_character_is_refused_naming_file_and_symbol(
    tmp_path: Path, bad: str
) -> None:
    """A NUL in a long Parquet file's symbol was taken: SQLite stored it, PostgreSQL refused
    the batch with UntranslatableCharacterError, naming neither the file nor the symbol."""
    path = tmp_path / "long.parquet"
    pd.DataFrame(
        {
            "symbol": ["XOM", bad],
            "date": ["2020-01-02", "2020-01-02"],
            "open": [10.0, 10.0],
            "high": [11.0, 11.0],
            "low": [9.0, 9.0],
            "close": [10.0, 10.0],
            "volume": [100.0, 100.0],
        }
    ).to_parquet(path)
    with pytest.raises(DataError, match="symbol holds a control character") as err:
        load_panel("parquet", str(path))
    assert repr(bad) in str(err.value) and str(path) in str(err.value)


def test_a_file_name_with_a_control_character_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    write_csv(
        d / "XOM.csv", ["2020-01-02,10,11,9,10,100"], header="date,open,high,low,close,volume"
    )
    write_csv(
        d / "X\x01M.csv", ["2020-01-02,10,11,9,10,100"], header="date,open,high,low,close,volume"
    )
    with pytest.raises(DataError, match="taken from the file's name, holds a control") as err:
        load_panel("csv", str(d))
    assert "'X\\x01M'" in str(err.value)


def test_one_ticker_in_two_cases_in_a_long_table_is_an_error(tmp_path: Path) -> None:
    """ "aapl" and "AAPL" rows loaded two symbols: the stock's exposure twice."""
    path = write_csv(
        tmp_path / "long.csv",
        ["AAPL,2020-01-02,10,11,9,10,100", "aapl,2020-01-03,10,11,9,10,100",
         "MSFT,2020-01-02,10,11,9,10,100"],
        header="symbol,date,open,high,low,close,volume",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"one ticker written in other cases \(\['AAPL', 'aapl'\]"):
        load_panel("csv", str(path))


@pytest.mark.parametrize(
    "first",
    ["<html><body>Not found</body></html>", "name,amount", '{"error": "rate limited"}'],
)
def test_a_file_whose_only_line_is_no_header_of_bars_says_it_is_not_bars(tmp_path, first):
    """An HTML error page saved as AAPL.csv was "the file has no rows of bars (a header
    only)": its one line read as column names. A real header without rows still says so."""
    page = tmp_path / "AAPL.csv"
    page.write_text(first + "\n")
    with pytest.raises(DataError, match="not a table of bars: its first line names none") as e:
        load_panel("csv", str(page))
    assert repr(first[:80]) in str(e.value) and "AAPL.csv" in str(e.value)
    header = tmp_path / "MSFT.csv"
    header.write_text(HEADER + "\n")
    with pytest.raises(DataError, match=r"no rows of bars \(a header only\)"):
        load_panel("csv", str(header))


def test_repeated_actions_are_judged_by_the_calendars_sessions_not_data_timezone():
    """An XTKS session (00:00-06:00 UTC) spans two New York dates: judged by data.timezone
    (America/New_York), a dividend joined onto each of its 5-minute bars was kept on two of
    them (booked twice) with the repair on. `session_timezone` (live.calendar's zone, as
    load_data passes it) dates the sessions."""
    rows = [
        dict(
            time=t.strftime("%Y-%m-%dT%H:%M:%SZ"),
            open=100.0,
            high=101.0,
            low=99.0,
            close=100.0,
            volume=1000,
            split=1.0,
            dividend=0.5 if day == "2025-05-20" else 0.0,
        )
        for day in ("2025-05-19", "2025-05-20", "2025-05-21")
        for t in pd.date_range(f"{day} 00:00", f"{day} 05:55", freq="5min")
    ]
    out = validate_frame(
        pd.DataFrame(rows),
        source="t.csv",
        symbol="7203.T",
        repair="repeated_actions",
        interval="intraday",
        session_timezone="Asia/Tokyo",
    )
    kept = out[out["dividend"] > 0]
    assert [str(t) for t in kept["time"]] == ["2025-05-20 00:00:00"]


def test_a_daily_bar_one_symbol_lacks_while_the_others_have_it_is_said(tmp_path: Path) -> None:
    """AAPL's row of one day removed, the other symbols all trading: the replay skipped AAPL
    that day (no decision, its next return spanning two days) and nothing said so; only a
    gap of `data.max_gap_days` was. A day most others lack too (a holiday row of one
    symbol's vendor) is not named."""
    d = tmp_path / "bars"
    d.mkdir()
    days = pd.bdate_range("2020-01-01", periods=20)
    full = [f"{t:%Y-%m-%d},10,11,9,10,100,1,0" for t in days]
    write_csv(d / "AAA.csv", full, header=ACTIONS)
    write_csv(d / "BBB.csv", full[:5] + full[6:], header=ACTIONS)  # day 5 missing
    write_csv(d / "CCC.csv", full, header=ACTIONS)
    with capture_logs() as logs:
        load_panel("csv", path=str(d), layout="per_symbol")
    (said,) = [e for e in logs if e["event"] == "data.suspect"]
    assert said["kind"] == "missing_bar" and said["count"] == 1 and said["symbols"] == 1
    assert said["log_level"] == "warning"
    assert said["examples"] == [{"symbol": "BBB", "time": f"{days[5]:%Y-%m-%d}"}]
    # Day 7 has a bar of AAA only: most symbols lack it, so it is not BBB's or CCC's gap.
    write_csv(d / "BBB.csv", full[:7] + full[8:], header=ACTIONS)
    write_csv(d / "CCC.csv", full[:7] + full[8:], header=ACTIONS)
    with capture_logs() as logs:
        load_panel("csv", path=str(d), layout="per_symbol")
    assert [e for e in logs if e["event"] == "data.suspect"] == []
