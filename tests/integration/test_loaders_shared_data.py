"""Loading the shared S&P 500 parquet (skips when the shared data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from tradingd.feeds.loaders import load_frame, load_panel


def test_few_symbols_with_dates_and_split_snapping(sp500_parquet: Path) -> None:
    with capture_logs() as logs:
        p = load_panel(
            "parquet",
            str(sp500_parquet),
            symbols=["AAPL", "MSFT", "A"],
            start="2014-01-01",
            end="2014-12-31",
        )
    assert p.symbols == ("A", "AAPL", "MSFT")
    assert len(p.times) == 252  # NYSE trading days in 2014
    assert p.n_bars == 3 * 252
    assert p.times[0] == np.datetime64("2014-01-02", "ns")
    assert p.times[-1] == np.datetime64("2014-12-31", "ns")
    aapl = p.symbols.index("AAPL")
    i = int(np.searchsorted(p.times, np.datetime64("2014-06-09", "ns")))
    assert p.split[i, aapl] == 7.0  # 7.000007 in the file, snapped exactly
    assert p.open[i, aapl] == 92.7  # raw, not adjusted
    assert np.count_nonzero(p.split != 1.0) == 1
    snaps = [e for e in logs if e["event"] == "data.repair" and e["what"] == "split_snap"]
    assert [(e["symbol"], e["rows"], e["times"]) for e in snaps] == [("AAPL", 1, ["2014-06-09"])]


def test_full_file_keeps_zero_volume_bars(sp500_parquet: Path) -> None:
    p = load_panel("parquet", str(sp500_parquet))
    assert len(p.symbols) == 496
    assert p.n_bars == 2_112_014
    assert np.count_nonzero(p.volume == 0) == 185  # zero volume is legal, not NaN
    abmd = p.symbols.index("ABMD")
    i = int(np.searchsorted(p.times, np.datetime64("2005-06-23", "ns")))
    assert p.volume[i, abmd] == 0.0
    assert p.close[i, abmd] == 9.91


# The file's bars with both a split and a dividend, by symbol (quants' review): on YUM, ROST,
# EL and HBI the dividend is the split ratio or the ratio - 1 (the vendor's leakage).
SPLIT_WITH_DIVIDEND = [
    ("ABT", "2004-05-03"),
    ("EL", "2011-11-23"),
    ("HBI", "2015-03-04"),
    ("HLT", "2017-01-04"),
    ("JCI", "2007-07-02"),
    ("LDOS", "2013-09-30"),
    ("MET", "2017-08-07"),
    ("ROST", "2015-06-12"),
    ("SO", "2001-04-03"),
    ("YUM", "2002-06-18"),
]


def test_every_bar_with_a_split_and_a_dividend_is_said(sp500_parquet: Path) -> None:
    """Each passed its own check (SO's 13.80 dividend is 39% of the previous close, under the
    50% limit), so a +52% overnight on a -38% price move was booked without a word. The
    whole file has exactly these 10; a warning shows 5 examples, so the other 5 are asked
    for by symbol."""
    with capture_logs() as logs:
        load_frame("parquet", str(sp500_parquet))
    (said,) = [e for e in logs if e.get("kind") == "split_with_dividend"]
    assert said["event"] == "data.suspect" and said["log_level"] == "warning"
    assert said["count"] == 10
    shown = [(e["symbol"], e["time"]) for e in said["examples"]]
    assert shown == SPLIT_WITH_DIVIDEND[:5]

    rest = [sym for sym, _ in SPLIT_WITH_DIVIDEND[5:]]
    with capture_logs() as logs:
        load_frame("parquet", str(sp500_parquet), symbols=rest)
    (said,) = [e for e in logs if e.get("kind") == "split_with_dividend"]
    assert said["count"] == 5
    assert [(e["symbol"], e["time"]) for e in said["examples"]] == SPLIT_WITH_DIVIDEND[5:]
    so = said["examples"][3]
    assert (so["split"], so["dividend"], so["previous_close"], so["open"]) == (
        1.5,
        13.8,
        35.29,
        21.95,
    )
    assert so["overnight_return"] == pytest.approx(0.5195, abs=1e-4)  # booked; the price: -38%


def test_every_split_the_price_does_not_show_is_said(sp500_parquet: Path) -> None:
    """Splits of 1.5x or more whose overnight move is nearer no move than the split: the
    file's 3 damaged rows (ANTM's 2.0 and GNRC's 0.30 on unmoved prices, JCI's 0.25 with the
    price up 57%), none of its real splits; the other kinds keep their counts."""
    with capture_logs() as logs:
        load_frame("parquet", str(sp500_parquet))
    counts = {e["kind"]: e["count"] for e in logs if e.get("event") == "data.suspect"}
    assert counts == {
        "split_without_price_move": 3,
        "large_dividend": 14,
        "split_with_dividend": 10,
    }
    (said,) = [e for e in logs if e.get("kind") == "split_without_price_move"]
    assert [(e["symbol"], e["time"]) for e in said["examples"]] == [
        ("ANTM", "2002-03-18"),
        ("GNRC", "2010-02-12"),
        ("JCI", "2007-07-02"),
    ]


def test_a_requested_symbol_listed_after_the_window_is_named(sp500_parquet: Path) -> None:
    """CHTR's first bar is 2010-01-05: in a run ending 2009-12-31 it left the universe and
    no log line said so (the summary just counted one symbol fewer)."""
    with capture_logs() as logs:
        p = load_panel(
            "parquet",
            str(sp500_parquet),
            symbols=["AAPL", "CHTR"],
            start="2009-01-01",
            end="2009-12-31",
        )
    assert p.symbols == ("AAPL",)
    (said,) = [e for e in logs if e.get("kind") == "no_bars_in_window"]
    assert said["event"] == "data.suspect" and said["count"] == 1
    assert said["examples"] == [
        {
            "source": str(sp500_parquet),
            "symbol": "CHTR",
            "first_bar": "2010-01-05",
            "last_bar": "2018-12-31",
            "start": "2009-01-01",
            "end": "2009-12-31",
        }
    ]


def test_every_symbol_of_a_run_before_their_listing_is_counted(sp500_parquet: Path) -> None:
    """A 1999-2001 run over every symbol of the S&P 500 file had 389 of its 496 names and
    no log line said so: the 107 listed after 2001 are counted in one warning."""
    with capture_logs() as logs:
        p = load_panel("parquet", str(sp500_parquet), start="1999-01-01", end="2001-12-31")
    assert len(p.symbols) == 389
    (said,) = [e for e in logs if e.get("kind") == "symbols_outside_window"]
    assert said["count"] == 107 and len(said["examples"]) == 10
    assert all(e["first_bar"] > "2001-12-31" for e in said["examples"])
