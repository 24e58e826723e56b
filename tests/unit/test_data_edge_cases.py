"""Data edge cases: empty files, blank lines, time-zone offsets, implausible prices and volumes,
and the one-line summary of repairs."""

from __future__ import annotations

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
from tradingd.feeds.validate import (
    DEFAULT_MAX_SPIKE,
    DEFAULT_MAX_VOLUME,
    DEFAULT_TIMEZONE,
    REPAIRS,
    validate_frame,
)

HEADER = "date,open,high,low,close,volume"
GOOD = [  # lines 2..6
    "2020-01-02,10,11,9,10,100",
    "2020-01-03,10,11,9,10.5,200",
    "2020-01-06,10.5,12,10,11,300",
    "2020-01-07,11,12,10,11.5,0",
    "2020-01-08,11.5,13,11,12,500",
]


def write_csv(path: Path, lines: list[str], header: str = HEADER, end: str = "\n") -> Path:
    path.write_text("\n".join([header, *lines]) + end)
    return path


def with_line(index: int, line: str) -> list[str]:
    lines = list(GOOD)
    lines[index] = line
    return lines


def days(*values: str) -> np.ndarray:
    return np.array([np.datetime64(v, "ns") for v in values])


def assert_names(exc: DataError, path: Path, symbol: str | None, row: int | str | None) -> None:
    msg = str(exc)
    assert f"file={path}" in msg, msg
    if symbol is not None:
        assert f"symbol={symbol}" in msg, msg
        assert exc.symbol == symbol
    if row is not None:
        assert re.search(rf"row={re.escape(str(row))}\)", msg), msg
        assert exc.row == row


def repairs(logs: list[dict], what: str) -> list[dict]:
    return [e for e in logs if e["event"] == "data.repair" and e["what"] == what]


# --- an empty per-symbol file is an error, never a silently missing symbol ---------------------


@pytest.mark.parametrize("symbols", [None, ["AAA", "EMPTY"]])
def test_empty_per_symbol_csv_is_an_error(tmp_path: Path, symbols: list[str] | None) -> None:
    write_csv(tmp_path / "AAA.csv", GOOD)
    empty = write_csv(tmp_path / "EMPTY.csv", [])
    with pytest.raises(DataError, match="no rows") as err:
        load_panel("csv", str(tmp_path), symbols=symbols, repair=["all"])
    assert_names(err.value, empty, "EMPTY", None)
    # Other symbols are unaffected when the empty one is not asked for.
    assert load_panel("csv", str(tmp_path), symbols=["AAA"]).symbols == ("AAA",)


def test_per_symbol_file_of_only_blank_lines_is_empty(tmp_path: Path) -> None:
    empty = write_csv(tmp_path / "EMPTY.csv", ["", "  "])
    with pytest.raises(DataError, match="no rows") as err:
        load_panel("csv", str(empty))
    assert_names(err.value, empty, "EMPTY", None)


def test_empty_parquet_files_are_errors(tmp_path: Path) -> None:
    cols = {"time": pd.Series([], dtype="datetime64[ns]")}
    cols |= {c: pd.Series([], dtype=float) for c in ("open", "high", "low", "close", "volume")}
    d = tmp_path / "pq"
    d.mkdir()
    pd.DataFrame(cols).to_parquet(d / "EMPTY.parquet")
    with pytest.raises(DataError, match="no rows") as err:
        load_panel("parquet", str(d))
    assert_names(err.value, d / "EMPTY.parquet", "EMPTY", None)
    long = tmp_path / "long.parquet"
    pd.DataFrame({"symbol": pd.Series([], dtype=str), **cols}).to_parquet(long)
    with pytest.raises(DataError, match="no rows") as err:
        load_panel("parquet", str(long))
    assert_names(err.value, long, None, None)


def test_rows_outside_the_dates_are_not_an_empty_file(tmp_path: Path) -> None:
    write_csv(tmp_path / "AAA.csv", GOOD)
    write_csv(tmp_path / "BBB.csv", ["2021-01-04,1,1,1,1,1"])
    assert load_panel("csv", str(tmp_path), end="2020-12-31").symbols == ("AAA",)


# --- blank lines are not data ------------------------------------------------------------------


def test_trailing_blank_lines_load_without_repair(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", GOOD, end="\n\n")
    assert len(load_panel("csv", str(path)).times) == 5
    path = write_csv(tmp_path / "XYZ.csv", GOOD, end="\n\n  \n\n")
    assert len(load_panel("csv", str(path), repair=["all"]).times) == 5
    crlf = tmp_path / "CRLF.csv"
    crlf.write_bytes(("\r\n".join([HEADER, *GOOD]) + "\r\n\r\n").encode())
    assert len(load_panel("csv", str(crlf)).times) == 5


def test_blank_lines_inside_keep_line_numbers_right(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines.insert(1, "")  # line 3 is empty
    lines.insert(3, "   ")  # line 5 holds blanks only
    lines[5] = "2020-01-07,11,12,10,,0"  # line 7: close missing
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with pytest.raises(DataError, match="missing or non-numeric") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 7)
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["nan"])
    assert len(p.times) == 4
    (entry,) = repairs(logs, "nan")
    assert entry["lines"] == [7] and entry["rows"] == 1


def test_a_line_of_empty_fields_is_still_missing_data(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", with_line(2, ",,,,,"))  # line 4
    with pytest.raises(DataError, match="missing or non-numeric") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 4)


# --- time zones: normalised to the exchange's, never doubling the bars -------------------------

# New York midnight across the 2020-03-08 change to daylight-saving time: -05:00, then -04:00.
NY_MIDNIGHTS = ["2020-03-05", "2020-03-06", "2020-03-09", "2020-03-10"]
OFFSETS = ["-05:00", "-05:00", "-04:00", "-04:00"]


def test_mixed_offsets_become_exchange_dates_and_match_naive_dates(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "AWARE.csv",
        [f"{d}T00:00:00{o},10,11,9,10,1" for d, o in zip(NY_MIDNIGHTS, OFFSETS, strict=True)],
    )
    write_csv(tmp_path / "NAIVE.csv", [f"{d},10,11,9,10,1" for d in NY_MIDNIGHTS])
    write_csv(  # how a vendor stamps daily bars in UTC: New York midnight is 05:00Z or 04:00Z
        tmp_path / "ZULU.csv",
        [f"{d}T0{5 if o == '-05:00' else 4}:00:00Z,10,11,9,10,1" for d, o in
         zip(NY_MIDNIGHTS, OFFSETS, strict=True)],
    )  # fmt: skip
    p = load_panel("csv", str(tmp_path))
    np.testing.assert_array_equal(p.times, days(*NY_MIDNIGHTS))  # 4 times, not 8 or 12
    assert p.n_bars == 12


def test_three_years_of_offset_stamped_bars_do_not_double(tmp_path: Path) -> None:
    dates = pd.bdate_range("2016-01-04", "2018-12-31")[:754]
    stamps = dates.tz_localize("America/New_York")  # -05:00 in winter, -04:00 in summer
    assert {s.strftime("%z") for s in stamps} == {"-0500", "-0400"}
    write_csv(tmp_path / "AWARE.csv", [f"{s.isoformat()},10,11,9,10,1" for s in stamps])
    write_csv(tmp_path / "NAIVE.csv", [f"{d.date()},10,11,9,10,1" for d in dates])
    p = load_panel("csv", str(tmp_path))
    assert len(p.times) == 754  # was 1,508: the offset-stamped bars landed at 04:00/05:00
    assert p.n_bars == 2 * 754


def test_daily_bars_stamped_at_midnight_in_their_offset_keep_their_dates(tmp_path: Path) -> None:
    """00:00Z is a date label (tradingd's equity.csv, Tiingo), not 19:00 New York the day
    before: the dates are as written and line up with plain-date files. The close in UTC
    (21:00Z in winter, 20:00Z in summer) and midnight in another offset give their own date too."""
    dates = ["2015-01-02", "2015-01-05", "2015-07-01", "2015-07-02"]
    write_csv(tmp_path / "PLAIN.csv", [f"{d},10,11,9,10,1" for d in dates])
    write_csv(tmp_path / "ZULU.csv", [f"{d}T00:00:00+00:00,10,11,9,10,1" for d in dates])
    write_csv(tmp_path / "TOKYO.csv", [f"{d}T00:00:00+09:00,10,11,9,10,1" for d in dates])
    write_csv(
        tmp_path / "CLOSE.csv",
        [f"{d}T{21 if d < '2015-03' else 20}:00:00Z,10,11,9,10,1" for d in dates],
    )
    p = load_panel("csv", str(tmp_path), repair=["gaps"])  # January to July
    np.testing.assert_array_equal(p.times, days(*dates))  # 4 days, not 8 (nor Sundays)
    assert not np.isnan(p.close).any()
    # A tz-aware Parquet column at UTC midnight, likewise.
    pq = tmp_path / "pq"
    pq.mkdir()
    pd.DataFrame(
        {"date": pd.DatetimeIndex(dates, tz="UTC"), "open": 10.0, "high": 11.0, "low": 9.0,
         "close": 10.0, "volume": 1.0}
    ).to_parquet(pq / "XYZ.parquet")  # fmt: skip
    np.testing.assert_array_equal(
        load_panel("parquet", str(pq), repair=["gaps"]).times, days(*dates)
    )


def test_tradingd_s_own_daily_times_read_back_to_the_same_dates(tmp_path: Path) -> None:
    """The times of a run's equity.csv (`Panel.datetimes()` as isoformat) are its bars' dates."""
    p = load_panel("csv", str(write_csv(tmp_path / "XYZ.csv", GOOD)))
    stamps = [t.isoformat() for t in p.datetimes()]
    assert stamps[0] == "2020-01-02T00:00:00+00:00"
    again = write_csv(tmp_path / "again.csv", [f"{t},10,11,9,10,1" for t in stamps])
    np.testing.assert_array_equal(load_panel("csv", str(again)).times, p.times)


def test_timezone_is_configurable(tmp_path: Path) -> None:
    # 03:00 UTC is still the previous day in New York, already the same day in London: the
    # exchange's time zone decides which session a daily bar belongs to.
    path = write_csv(tmp_path / "XYZ.csv", ["2020-01-02T03:00:00+00:00,10,11,9,10,1"])
    assert load_panel("csv", str(path)).times[0] == np.datetime64("2020-01-01", "ns")
    london = load_panel("csv", str(path), timezone="Europe/London")
    assert london.times[0] == np.datetime64("2020-01-02", "ns")
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        load_panel("csv", str(path), timezone="Mars/Olympus")


def test_tz_aware_start_end_use_the_exchange_time_zone(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", GOOD)
    p = load_panel("csv", str(path), start="2020-01-03T00:00-05:00", end="2020-01-07T00:00-05:00")
    np.testing.assert_array_equal(p.times, days("2020-01-03", "2020-01-06", "2020-01-07"))


def test_naive_and_offset_times_in_one_file_are_refused(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "XYZ.csv",
        [
            "2020-01-02,10,11,9,10,1",
            "2020-01-03,10,11,9,10,1",
            "2020-01-06T00:00-05:00,10,11,9,10,1",
        ],
    )
    with pytest.raises(DataError, match="UTC offset") as err:
        load_panel("csv", str(path), repair=["all"])
    assert_names(err.value, path, "XYZ", 4)


def test_times_colliding_after_normalisation_are_refused(tmp_path: Path) -> None:
    # 01:30 EDT and 01:30 EST on 2020-11-01 are an hour apart but the same New York wall time.
    path = write_csv(
        tmp_path / "XYZ.csv",
        ["2020-11-01T01:30:00-04:00,10,11,9,10,1", "2020-11-01T01:30:00-05:00,10,11,9,10,1"],
    )
    with pytest.raises(DataError, match="America/New_York") as err:
        load_panel("csv", str(path), repair=["all"])
    assert_names(err.value, path, "XYZ", 3)
    pq = tmp_path / "XYZ.parquet"
    instants = pd.DatetimeIndex(["2020-11-01 05:30", "2020-11-01 06:30"], tz="UTC")
    pd.DataFrame(
        {"time": instants, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}
    ).to_parquet(pq)
    with pytest.raises(DataError, match="America/New_York") as err:
        load_panel("parquet", str(pq), repair=["all"])
    assert_names(err.value, pq, "XYZ", "2020-11-01T01:30:00")
    assert len(load_panel("parquet", str(pq), timezone="UTC").times) == 2


_OFFSET_CHOICES = ["Z", "+00:00", "-04:00", "-05:00", "+09:00", "-0330"]
_BASE = pd.Timestamp("2020-10-31T22:00:00Z")  # a few hours either side of the fall-back hour


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 10 * 60), min_size=1, max_size=20, unique=True),
    st.data(),
)
def test_normalising_offsets_keeps_distinct_instants(
    minutes: list[int], data: st.DataObject
) -> None:
    instants = [_BASE + pd.Timedelta(minutes=m) for m in sorted(minutes)]
    offsets = data.draw(
        st.lists(st.sampled_from(_OFFSET_CHOICES), min_size=len(instants), max_size=len(instants))
    )
    text = []
    for t, off in zip(instants, offsets, strict=True):
        if off == "Z":
            text.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
        else:
            sign = -1 if off[0] == "-" else 1
            delta = pd.Timedelta(hours=int(off[1:3]), minutes=int(off[-2:])) * sign
            text.append((t.tz_localize(None) + delta).strftime("%Y-%m-%dT%H:%M:%S") + off)
    df = pd.DataFrame({"time": text, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
                       "volume": 1.0})  # fmt: skip
    local = [t.tz_convert(DEFAULT_TIMEZONE).tz_localize(None) for t in instants]
    check = {
        "source": "mem",
        "symbol": "S",
        "max_gap_days": 1000,
        "repair": ["order"],
        "interval": "intraday",
    }
    if len(set(local)) < len(instants):
        with pytest.raises(DataError, match="collide"):
            validate_frame(df, **check)
        return
    with capture_logs():
        out = validate_frame(df, **check)
    # Intraday bars are labelled by their UTC instant: the offsets never change the instant.
    assert out["time"].nunique() == len(instants)
    assert out["time"].tolist() == [t.tz_localize(None) for t in instants]


# --- plausibility: one-bar spikes ---------------------------------------------------------------


def test_spike_error_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", with_line(2, "2020-01-06,10500,12000,10000,11000,300"))
    with pytest.raises(DataError, match=r"spike.*enable repair 'spike'") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 4)
    assert len(load_panel("csv", str(path), max_spike=2000).times) == 5
    assert len(load_panel("csv", str(path), max_spike=0).times) == 5  # 0 disables the check


def test_spike_in_one_field_and_downwards(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", with_line(2, "2020-01-06,10.5,12000,10,11,300"))
    with pytest.raises(DataError, match="spike") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 4)
    path = write_csv(tmp_path / "XYZ.csv", with_line(3, "2020-01-07,11,12,0.011,11.5,0"))
    with pytest.raises(DataError, match="spike") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 5)


def test_spike_repair_replaces_outliers_by_the_previous_close(tmp_path: Path) -> None:
    lines = with_line(1, "2020-01-03,10500,12000,10000,11000,200")  # every price is an outlier
    lines[4] = "2020-01-08,11.5,13000,11,12,500"  # line 6: only high, on the last bar
    path = write_csv(tmp_path / "XYZ.csv", lines)
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["spike"])
    np.testing.assert_array_equal(p.open[:, 0], [10, 10, 10.5, 11, 11.5])
    np.testing.assert_array_equal(p.high[:, 0], [11, 10, 12, 12, 12])
    np.testing.assert_array_equal(p.low[:, 0], [9, 10, 10, 10, 11])
    np.testing.assert_array_equal(p.close[:, 0], [10, 10, 11, 11.5, 12])
    np.testing.assert_array_equal(p.volume[:, 0], [100, 200, 300, 0, 500])  # the bar is kept
    (entry,) = repairs(logs, "spike")
    assert entry["rows"] == 2 and entry["lines"] == [3, 6]
    assert entry["values"] == [
        "open,high,low,close 10500/12000/10000/11000 vs close 10",
        "high 13000 vs close 11.5",
    ]


def test_first_bar_spike_is_checked_against_the_next_two(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", with_line(0, "2020-01-02,0.01,0.011,0.009,0.01,100"))
    with pytest.raises(DataError, match="spike") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 2)
    with capture_logs():
        p = load_panel("csv", str(path), repair=["spike"])
    np.testing.assert_array_equal(p.close[:, 0], [10.5, 10.5, 11, 11.5, 12])  # the next close
    # A spike on the second bar is that bar's, not the first's.
    path = write_csv(tmp_path / "XYZ.csv", with_line(1, "2020-01-03,10000,11000,9000,10500,1"))
    with pytest.raises(DataError, match=r"1 row\(s\) with a one-bar price spike") as err:
        load_panel("csv", str(path))
    assert_names(err.value, path, "XYZ", 3)
    # Two bars cannot tell which one is wrong: not checked.
    two = write_csv(tmp_path / "XYZ.csv", [GOOD[0], "2020-01-03,10000,11000,9000,10500,1"])
    assert len(load_panel("csv", str(two)).times) == 2


def test_real_splits_are_not_spikes(tmp_path: Path) -> None:
    header = "date,open,high,low,close,volume,split"
    lines = [
        "2020-01-02,10,11,9,10,100,1",
        "2020-01-03,10000,11000,9000,10000,1,0.001",  # 1-for-1000 reverse split
        "2020-01-06,10,11,9,10,100,1000",  # and a 1000-for-1 split the next day
        "2020-01-07,1,1.1,0.9,1,1000,10",  # 10-for-1 split on the last bar
    ]
    path = write_csv(tmp_path / "XYZ.csv", lines, header=header)
    assert len(load_panel("csv", str(path)).times) == 4
    no_splits = write_csv(tmp_path / "XYZ.csv", [ln.rsplit(",", 1)[0] for ln in lines])
    with pytest.raises(DataError, match="spike") as err:  # the same prices without the splits
        load_panel("csv", str(no_splits))
    assert_names(err.value, no_splits, "XYZ", 3)


def test_spike_check_does_not_cross_symbols(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "long.csv",
        ["AAA,2020-01-02,10,11,9,10,1", "AAA,2020-01-03,10,11,9,10,1",
         "BBB,2020-01-02,10000,11000,9000,10000,1", "BBB,2020-01-03,10000,11000,9000,10000,1"],
        header="symbol," + HEADER,
    )  # fmt: skip
    assert load_panel("csv", str(path)).n_bars == 4


def test_bad_thresholds_are_config_errors(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", GOOD)
    with pytest.raises(ConfigError, match="max_spike"):
        load_panel("csv", str(path), max_spike=1.0)
    with pytest.raises(ConfigError, match="max_volume"):
        load_panel("csv", str(path), max_volume=-1.0)


# --- plausibility: volume -----------------------------------------------------------------------


def test_absurd_volume_error_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", with_line(3, "2020-01-07,11,12,10,11.5,1e300"))
    with pytest.raises(DataError, match=r"volume above 1e\+12.*enable repair 'volume'") as err:
        load_panel("csv", str(path), repair=[r for r in REPAIRS if r != "volume"])
    assert_names(err.value, path, "XYZ", 5)
    assert len(load_panel("csv", str(path), max_volume=0).times) == 5  # 0 disables the check
    with pytest.raises(DataError, match=r"volume above 400") as err:
        load_panel("csv", str(write_csv(tmp_path / "XYZ.csv", GOOD)), max_volume=400)
    assert_names(err.value, tmp_path / "XYZ.csv", "XYZ", 6)


def test_absurd_volume_repair_drops_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "XYZ.csv", with_line(3, "2020-01-07,11,12,10,11.5,1e300"))
    with capture_logs() as logs:
        p = load_panel("csv", str(path), repair=["volume"])
    np.testing.assert_array_equal(p.times, days("2020-01-02", "2020-01-03", "2020-01-06",
                                                "2020-01-08"))  # fmt: skip
    assert np.all(np.isfinite(p.volume))
    (entry,) = repairs(logs, "volume")
    assert entry["rows"] == 1 and entry["lines"] == [5]


def test_defaults() -> None:
    assert DEFAULT_MAX_SPIKE == 10.0
    assert DEFAULT_MAX_VOLUME == 1e12
    assert DEFAULT_TIMEZONE == "America/New_York"
    assert {"spike", "volume"} <= set(REPAIRS)


# --- notices: one summary line at info, the details at debug ------------------------------------


def test_repairs_are_summarised_in_one_info_line(tmp_path: Path) -> None:
    header = HEADER + ",split"
    for sym in ("AAA", "BBB", "CCC"):
        write_csv(tmp_path / f"{sym}.csv", [f"{ln},1" for ln in GOOD[:-1]] +
                  ["2020-01-08,5.75,6.5,5.5,6,1000,2.0000001"], header=header)  # fmt: skip
    write_csv(tmp_path / "DDD.csv", with_line(1, "2020-01-03,10,11,9,,200"))
    with capture_logs() as logs:
        load_frame("csv", str(tmp_path), repair=["nan"])
    info = [e for e in logs if e["log_level"] in ("info", "warning", "error")]
    # These files have no dividend column (DDD no split column either): one warning line
    # for the load says so, beside the one info line of repairs.
    (suspect,) = [e for e in info if e["event"] == "data.suspect"]
    assert suspect["kind"] == "no_corporate_actions" and suspect["count"] == 4
    assert [e for e in info if e is not suspect] == [
        {
            "event": "data.repairs",
            "log_level": "info",
            "source": str(tmp_path),
            "rows": {"nan": 1, "split_snap": 3},
            "symbols": {"nan": 1, "split_snap": 3},
        }
    ]
    details = [e for e in logs if e["event"] == "data.repair"]
    assert len(details) == 4 and {e["log_level"] for e in details} == {"debug"}
    with capture_logs() as logs:
        load_frame("csv", str(tmp_path), symbols=["DDD"], repair=["nan"])
    assert [e["rows"] for e in logs if e["event"] == "data.repairs"] == [{"nan": 1}]
    with capture_logs() as logs:  # nothing repaired: nothing said but the missing column
        load_frame("csv", str(tmp_path), symbols=["AAA"], end="2020-01-07")
    assert [(e["event"], e["kind"]) for e in logs] == [("data.suspect", "no_corporate_actions")]


def _spike_rule(close: list[float], price: float, i: int, split: list[float], k: float) -> bool:
    """The documented rule for one price of row i of one symbol, row by row: compared with
    the previous and next closes (the next two for the first row, the previous two for the
    last), each brought into row i's share basis through the splits between them."""
    n = len(close)
    if n < 3:
        return False

    def basis(j: int) -> float:  # close j in row i's share basis
        c = close[j]
        for m in range(j + 1, i + 1):  # splits after j up to i divide earlier prices
            c /= split[m]
        for m in range(i + 1, j + 1):  # splits after i up to j: later prices multiplied back
            c *= split[m]
        return c

    refs = [i + 1, i + 2] if i == 0 else [i - 1, i - 2] if i == n - 1 else [i - 1, i + 1]
    ratios = [price / basis(j) for j in refs]
    return min(ratios) > k or max(ratios) < 1.0 / k


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(5, 50),  # close
            st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5]),  # split coefficient
            st.sampled_from([1.0, 1.0, 1.0, 30.0, 1 / 30]),  # a spike factor on the open
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 3),
)
def test_spike_flags_follow_the_rule_row_by_row(rows, n_symbols) -> None:
    """The vectorised check (one column at a time since 2026-12-03, to bound the load's
    memory) flags exactly the prices the per-row rule flags, over several symbols with
    splits, for each price column."""
    from tradingd.feeds.validate import _spikes

    k = 10.0
    records = []
    for s in range(n_symbols):
        for d, (c, sp, f) in enumerate(rows):
            c2 = c * (1 + 0.01 * s)
            records.append((s, d, c2 * f, c2 * 1.01, c2 * 0.99, c2, sp))
    frame = pd.DataFrame(records, columns=["_code", "day", "open", "high", "low", "close", "split"])
    outlier, _ = _spikes(frame, k)
    for s in range(n_symbols):
        part = frame[frame["_code"] == s]
        close, split = part["close"].tolist(), part["split"].tolist()
        for i, (_, row) in enumerate(part.iterrows()):
            for col_k, col in enumerate(("open", "high", "low", "close")):
                expect = _spike_rule(close, row[col], i, split, k)
                assert outlier[row.name, col_k] == expect, (s, i, col)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # symbol
            st.integers(0, 3),  # date
            st.sampled_from([0, 9, 16, None]),  # hour of the bar (None: a missing time)
        ),
        max_size=25,
    )
)
def test_daily_detection_matches_a_table_of_distinct_times(rows) -> None:
    """`interval = "auto"` calls a table daily when no symbol has two distinct times on one
    date (a repeated time is a duplicate, not intraday data). The integer sort gives what
    the same question asked of a pandas table of (symbol, date, time) gives."""
    from tradingd.feeds.validate import _two_times_a_day

    names = np.array([f"S{s}" for s, _, _ in rows], dtype=object)
    t = np.array(
        [
            np.datetime64("NaT", "ns")
            if h is None
            else np.datetime64("2024-03-01", "ns") + np.timedelta64(d, "D") + np.timedelta64(h, "h")
            for _, d, h in rows
        ],
        dtype="datetime64[ns]",
    )
    present = ~np.isnat(t)
    table = pd.DataFrame(
        {"s": names[present], "d": t[present].astype("datetime64[D]"), "t": t[present]}
    )
    expect = bool(table.drop_duplicates().duplicated(["s", "d"]).any())
    assert _two_times_a_day(pd.factorize(names)[0], t) is expect


def test_a_repair_hint_names_the_key_to_set():
    """ "enable repair 'nan'" named the repair, not where to enable it."""
    from tradingd.feeds.validate import validate_frame

    df = pd.DataFrame(
        {"time": ["2020-01-02", "2020-01-03"], "symbol": ["A", "A"], "open": [1.0, None],
         "high": [1.0, 1.0], "low": [1.0, 1.0], "close": [1.0, 1.0], "volume": [1.0, 1.0]}
    )  # fmt: skip
    with pytest.raises(DataError, match=r'enable repair \'nan\' \(repair = \["nan"\] in \[data\]'):
        validate_frame(df, source="x.csv", symbol=None)
