"""Daily bars dated on a weekend and volumes that are not whole shares (validate.py's
`_check_weekends` and `_check_whole_volumes`): both passed without a word, from files and
from vendors. Each is now refused naming the symbol and the bar (a file's line), or with its
repair ('weekend', 'volume') dropped and logged; a vendor's answer drops such an older bar
(`feed.row_dropped`) and refuses the symbol when it is the newest, as any bad bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tradingd.core.errors import DataError
from tradingd.feeds.loaders import load_frame
from tradingd.feeds.validate import validate_frame
from tradingd.feeds.vendor import Validation, combine, parse_interval

DAILY = parse_interval("1d")
HEADER = "date,open,high,low,close,volume"


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def week(volumes: list[float] | None = None, *, days: list[str] | None = None) -> pd.DataFrame:
    """One symbol's daily bars (Mon 2024-03-04 .. Fri 2024-03-08 by default), flat prices."""
    days = days or ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08"]
    n = len(days)
    return pd.DataFrame(
        {
            "time": pd.to_datetime(days),
            "open": 10.0,
            "high": 10.5,
            "low": 9.5,
            "close": 10.0,
            "volume": np.full(n, 1000.0) if volumes is None else np.asarray(volumes, float),
            "split": 1.0,
            "dividend": 0.0,
        }
    )


# ----------------------------------------------------------------------------- weekends


def test_a_weekend_bar_in_a_file_is_refused_naming_line_symbol_date_and_day(tmp_path):
    path = write_csv(
        tmp_path / "XYZ.csv",
        ["2024-03-07,10,11,9,10,100", "2024-03-09,10,11,9,10,100", "2024-03-11,10,11,9,10,100"],
    )
    with pytest.raises(DataError) as info:
        load_frame("csv", str(path))
    text = str(info.value)
    assert "dated on a Saturday or a Sunday, first 2024-03-09 (a Saturday)" in text
    assert "symbol=XYZ" in text and "row=3" in text  # the file's line
    assert "enable repair 'weekend'" in text


def test_repair_weekend_drops_the_bar_and_logs_symbol_and_date(tmp_path):
    path = write_csv(
        tmp_path / "XYZ.csv",
        ["2024-03-08,10,11,9,10,100", "2024-03-10,10,11,9,10,100", "2024-03-11,10,11,9,10,100"],
    )
    with capture_logs() as logs:
        frame = load_frame("csv", str(path), repair=["weekend"])
    assert frame["time"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-08", "2024-03-11"]
    [said] = [e for e in logs if e["event"] == "data.repair"]
    assert (said["what"], said["symbol"], said["times"], said["lines"]) == (
        "weekend",
        "XYZ",
        ["2024-03-10"],
        [3],
    )
    assert said["values"] == ["Sunday"]
    [summary] = [e for e in logs if e["event"] == "data.repairs"]
    assert summary["rows"] == {"weekend": 1}


def test_intraday_bars_are_not_judged_by_weekday():
    """Only daily bars: an intraday series (e.g. a 24/7 one) is not refused for a
    Saturday's bar here."""
    times = pd.date_range("2024-03-09 14:30", periods=4, freq="h", tz="UTC")
    df = week(days=[str(t) for t in times])
    out = validate_frame(df, source="mem", symbol="X", interval="intraday", timezone="UTC")
    assert len(out) == 4


def test_repair_all_includes_weekend():
    df = week(days=["2024-03-08", "2024-03-09", "2024-03-11"])
    with capture_logs():
        out = validate_frame(df, source="mem", symbol="X", repair="all")
    assert out["time"].dt.day_of_week.tolist() == [4, 0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=30, unique=True))
def test_weekend_property_exactly_the_weekend_bars_go(offsets):
    """Whatever the days: strict validation refuses iff one is a Saturday or Sunday, and the
    repair keeps exactly the weekdays."""
    days = sorted(pd.Timestamp("2024-01-01") + pd.Timedelta(days=k) for k in offsets)
    df = week(days=[d.strftime("%Y-%m-%d") for d in days])
    weekdays = [d for d in days if d.day_of_week < 5]
    opts = {"source": "mem", "symbol": "X", "max_gap_days": 1000, "interval": "1d"}
    if len(weekdays) < len(days):
        with pytest.raises(DataError, match="Saturday or a Sunday"):
            validate_frame(df, **opts)
    else:
        assert len(validate_frame(df, **opts)) == len(days)
    with capture_logs():
        out = validate_frame(df, **opts, repair=["weekend"])
    assert list(out["time"]) == weekdays


# ----------------------------------------------------------------------------- volumes


def test_whole_float_volumes_pass_fractional_ones_are_refused_naming_field_symbol_date():
    assert validate_frame(week([1234.0] * 5), source="mem", symbol="X")["volume"].iat[0] == 1234
    with pytest.raises(DataError) as info:
        validate_frame(week([1234.0, 1234.0, 1234.5, 1.0, 2.0]), source="mem", symbol="X")
    text = str(info.value)
    assert "volume is not a whole number of shares, first 1234.5 on 2024-03-06" in text
    assert "symbol=X" in text and "row=2024-03-06" in text
    assert "enable repair 'volume'" in text


def test_a_fractional_volume_in_a_file_names_its_line_and_date(tmp_path):
    path = write_csv(
        tmp_path / "XYZ.csv", ["2024-03-07,10,11,9,10,100", "2024-03-08,10,11,9,10,0.5"]
    )
    with pytest.raises(DataError, match=r"first 0.5 on 2024-03-08.*symbol=XYZ, row=3"):
        load_frame("csv", str(path))


def test_repair_volume_drops_a_fractional_volume_with_a_log():
    with capture_logs() as logs:
        out = validate_frame(
            week([1.0, 2.5, 3.0, 4.0, 5.0]), source="mem", symbol="X", repair=["volume"]
        )
    assert out["volume"].tolist() == [1.0, 3.0, 4.0, 5.0]
    [said] = [e for e in logs if e["event"] == "data.repair"]
    assert (said["what"], said["symbol"], said["times"], said["values"]) == (
        "volume",
        "X",
        ["2024-03-05"],
        [2.5],
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**12), st.sampled_from([0.0, 0.25, 0.5, 0.999]))
def test_volume_property_whole_iff_no_fraction(shares, fraction):
    df = week([float(shares)] * 4 + [shares + fraction])
    if fraction == 0.0 or shares + fraction == float(shares):  # beyond float precision: whole
        validate_frame(df, source="mem", symbol="X", max_volume=0)
    else:
        with pytest.raises(DataError, match="not a whole number of shares"):
            validate_frame(df, source="mem", symbol="X", max_volume=0)


# ----------------------------------------------------------------------------- vendors


@pytest.mark.parametrize(
    ("bad", "day"),
    [
        (week(days=["2024-03-04", "2024-03-05", "2024-03-09", "2024-03-11", "2024-03-12"]),
         "2024-03-09"),
        (week([1.0, 2.0, 3.5, 4.0, 5.0]), "2024-03-06"),
    ],
    ids=["weekend", "fractional_volume"],
)  # fmt: skip
def test_a_vendors_older_bad_bar_is_dropped_naming_symbol_and_date(bad, day):
    with capture_logs() as logs:
        res = combine("v", {"AAA": bad, "BBB": week()}, Validation(), DAILY)
    assert not res.errors
    assert len(res.for_symbol("AAA")) == 4 and len(res.for_symbol("BBB")) == 5
    [dropped] = [e for e in logs if e["event"] == "feed.row_dropped"]
    assert (dropped["symbol"], dropped["row"]) == ("AAA", day)
    assert day in dropped["reason"]  # the date is in the text too
    assert pd.Timestamp(day) not in set(res.for_symbol("AAA")["time"])


@pytest.mark.parametrize(
    "bad",
    [
        week(days=["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-09"]),
        week([1.0, 2.0, 3.0, 4.0, 5.5]),
    ],
    ids=["weekend", "fractional_volume"],
)
def test_a_vendors_bad_newest_bar_refuses_the_symbol(bad):
    with capture_logs():
        res = combine("v", {"AAA": bad, "BBB": week()}, Validation(), DAILY)
    assert res.errors["AAA"].kind == "invalid_data"
    assert "symbol=AAA" in str(res.errors["AAA"])
    assert len(res.for_symbol("BBB")) == 5
