"""Loading the shared S&P 500 parquet (skips when the shared data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

from tradingd.feeds.loaders import load_panel


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
