"""`data.max_symbols = N` with `data.symbols` empty reads the first N symbols alone (a folder's
N files; a long Parquet file's rows of N symbols) instead of every symbol before keeping N:
the same panel (times, symbols, every array) as the whole load then `select`, the code it
replaced (`_whole_then_first`), and the same errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import SP500_PARQUET

from tradingd import app
from tradingd.config import load_config
from tradingd.core.errors import DataError
from tradingd.feeds import loaders
from tradingd.feeds.panel import FIELDS, Panel

# Symbols by name: "AAA" lists after the run's end, "ABC" has a gap and a split, "B.X" a
# dot, "BBB" starts late; "aaz" sorts after every capital.
STARTS = {
    "AAA": "2021-06-01",
    "ABC": "2021-01-04",
    "ACE": "2021-01-04",
    "B.X": "2021-01-20",
    "BBB": "2021-02-15",
    "CCC": "2021-01-04",
    "DDD": "2021-01-11",
    "aaz": "2021-01-05",
}


def _bars(sym: str, k: int) -> pd.DataFrame:
    days = pd.bdate_range(STARTS[sym], periods=40)
    if sym == "ABC":
        days = days.delete(range(5, 9))  # missing bars
    if sym == "DDD":
        days = days[::2]  # every other day: times of its own
    rng = np.random.default_rng(k)
    close = 20 + k + np.cumsum(rng.normal(0, 0.2, len(days)))
    split = np.ones(len(days))
    if sym == "ABC":
        split[10] = 2.0
        close[10:] /= 2
    return pd.DataFrame(
        {
            "symbol": sym,
            "date": days,
            "open": close * 0.99,
            "high": close * 1.02,
            "low": close * 0.97,
            "close": close,
            "volume": 1000.0 + k,
            "split": split,
            "dividend": 0.0,
        }
    )


def _long() -> pd.DataFrame:
    """Every symbol's bars, the symbols in no order of their names."""
    frames = [_bars(s, k) for k, s in enumerate(STARTS)]
    return pd.concat([frames[i] for i in (5, 0, 7, 2, 6, 1, 4, 3)], ignore_index=True)


def _write(tmp_path: Path, kind: str) -> tuple[str, str]:
    """(source, path) of the bars written as `kind`."""
    frame = _long()
    if kind == "long parquet":
        path = tmp_path / "long.parquet"
        frame.to_parquet(path, index=False)
        return "parquet", str(path)
    source = "csv" if "csv" in kind else "parquet"
    folder = tmp_path / kind.replace(" ", "_")
    folder.mkdir()
    for sym, rows in frame.groupby("symbol"):
        rows = rows.drop(columns="symbol")
        if source == "csv":
            rows.to_csv(folder / f"{sym}.csv", index=False)
        else:
            rows.to_parquet(folder / f"{sym}.parquet", index=False)
    return source, str(folder)


def _config(
    source: str,
    path: str,
    tmp_path: Path,
    *,
    end: str = "2021-03-31",
    cache: bool = True,
    **data: Any,
) -> Any:
    return load_config(
        [
            {
                "run": {"end": end},
                "data": {"source": source, "path": path, **data},
                "cache": {"data_dir": str(tmp_path / "cache"), "data": cache},
            }
        ],
        env={},
    )


def _whole_then_first(config: Any) -> Panel:
    """`load_data` before: every symbol loaded, then the first `max_symbols` kept."""
    n = config.data.max_symbols
    whole = dataclasses.replace(config, data=dataclasses.replace(config.data, max_symbols=0))
    panel = app.load_data(whole)
    if n and len(panel.symbols) > n:
        panel = panel.select(symbols=panel.symbols[:n])
    return panel


def _same(a: Panel, b: Panel) -> None:
    assert a.symbols == b.symbols
    assert a.times.dtype == b.times.dtype and np.array_equal(a.times, b.times)
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        assert np.array_equal(x, y, equal_nan=True), f


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Each file read of the loader: (file name, the symbols it was read for)."""
    calls: list[tuple[str, Any]] = []
    real = loaders._read

    def read(path: Any, source: str, symbols: Any = None) -> Any:
        calls.append((Path(path).name, None if symbols is None else list(symbols)))
        return real(path, source, symbols)

    monkeypatch.setattr(loaders, "_read", read)
    return calls


KINDS = ["long parquet", "csv folder", "parquet folder"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7])
@pytest.mark.parametrize("cache", [True, False])
def test_same_panel_as_the_whole_load(tmp_path: Path, kind: str, n: int, cache: bool) -> None:
    source, path = _write(tmp_path, kind)
    config = _config(source, path, tmp_path, max_symbols=n, cache=cache)
    got = app.load_data(config)
    _same(got, _whole_then_first(config))
    assert len(got.symbols) == n
    _same(app.load_data(config), got)  # again (from the cache when it is on)


@pytest.mark.parametrize("kind", KINDS)
def test_reads_only_the_first_symbols(
    tmp_path: Path, kind: str, reads: list[tuple[str, Any]]
) -> None:
    source, path = _write(tmp_path, kind)
    got = app.load_data(_config(source, path, tmp_path, max_symbols=3, cache=False))
    # AAA has no bars up to run.end: its place goes to the next name.
    assert got.symbols == ("ABC", "ACE", "B.X")
    if kind == "long parquet":  # AAA's first bar is months after run.end: not even read
        assert reads == [("long.parquet", ["ABC", "ACE", "B.X"])]
    else:  # a folder: AAA is read, found empty, and the next name read too
        assert sorted({name.split(".")[0] for name, _ in reads}) == ["AAA", "ABC", "ACE", "B"]


@pytest.mark.parametrize("zone", [None, "UTC", "America/New_York", "Asia/Tokyo"])
@pytest.mark.parametrize("end", ["2021-05-30", "2021-05-31", "2021-06-01", "2021-06-02"])
def test_a_name_listing_near_the_end(
    tmp_path: Path, zone: str | None, end: str, reads: list[tuple[str, Any]]
) -> None:
    """AAA's first bar (2021-06-01) days around run.end, its times stored naive or in a
    zone: read, and left out or kept, as the whole load does."""
    path = tmp_path / "long.parquet"
    frame = _long()
    if zone is not None:
        frame["date"] = frame["date"].dt.tz_localize(zone)
    frame.to_parquet(path, index=False)
    config = _config("parquet", str(path), tmp_path, end=end, max_symbols=2, cache=False)
    got = app.load_data(config)
    _same(got, _whole_then_first(config))
    assert reads[0][1][0] == "AAA"  # listed: its first bar is within days of run.end
    assert ("AAA" in got.symbols) == (end >= "2021-06-01")


def test_every_symbol_in_the_window_keeps_the_whole_load(tmp_path: Path) -> None:
    """Fewer symbols with bars than max_symbols: the whole data, as before."""
    source, path = _write(tmp_path, "long parquet")
    config = _config(source, path, tmp_path, max_symbols=7)
    got = app.load_data(config)
    assert len(got.symbols) == 7  # AAA has no bars up to run.end
    _same(got, _whole_then_first(config))


def test_text_times_are_read_whole(tmp_path: Path, reads: list[tuple[str, Any]]) -> None:
    """Text times are read in a format inferred from the column: the whole column, as before."""
    path = tmp_path / "text.parquet"
    frame = _long()
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    frame.to_parquet(path, index=False)
    config = _config("parquet", str(path), tmp_path, max_symbols=2, cache=False)
    got = app.load_data(config)
    assert reads[0] == ("text.parquet", None)
    _same(got, _whole_then_first(config))


def test_an_error_in_the_first_symbols_is_the_whole_loads(tmp_path: Path) -> None:
    source, path = _write(tmp_path, "csv folder")
    bad = Path(path) / "ACE.csv"
    bad.write_text(bad.read_text().replace("\n2021-01-06,", "\n2021-01-06,-", 1))
    config = _config(source, path, tmp_path, max_symbols=3)
    with pytest.raises(DataError) as new:
        app.load_data(config)
    with pytest.raises(DataError) as old:
        _whole_then_first(config)
    assert str(new.value) == str(old.value)
    assert "ACE.csv" in str(new.value)


def test_two_files_of_one_symbol_is_still_an_error(tmp_path: Path) -> None:
    source, path = _write(tmp_path, "csv folder")
    (Path(path) / "zzz.csv").write_text((Path(path) / "DDD.csv").read_text())
    (Path(path) / "ZZZ.csv").write_text((Path(path) / "DDD.csv").read_text())
    with pytest.raises(DataError, match="two files for symbol"):
        app.load_data(_config(source, path, tmp_path, max_symbols=2))


def test_without_max_symbols_or_with_symbols_the_load_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache key (the load's arguments) of these configs is what it was."""
    source, path = _write(tmp_path, "long parquet")
    calls: list[dict[str, Any]] = []
    real = app.cached_load_panel

    def spy(*args: Any, **kwargs: Any) -> Panel:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(app, "cached_load_panel", spy)
    app.load_data(_config(source, path, tmp_path))
    app.load_data(_config(source, path, tmp_path, symbols=["DDD", "ABC", "CCC"], max_symbols=2))
    assert [c["symbols"] for c in calls] == [None, ("DDD", "ABC", "CCC")]
    calls.clear()
    got = app.load_data(_config(source, path, tmp_path, max_symbols=2))
    assert [list(c["symbols"]) for c in calls] == [["ABC", "ACE"]]
    assert got.symbols == ("ABC", "ACE")


@pytest.mark.skipif(not SP500_PARQUET.exists(), reason="the shared S&P 500 file is absent")
@pytest.mark.parametrize(("n", "end"), [(8, "2000-06-30"), (3, "2018-12-31")])
def test_same_panel_on_the_sp500_file(
    tmp_path: Path, n: int, end: str, reads: list[tuple[str, Any]]
) -> None:
    """ABBV, AAL and AAP list after mid-2000: the first 8 of the file are not the first 8
    names."""
    config = load_config(
        [
            {
                "run": {"end": end},
                "data": {"source": "parquet", "path": str(SP500_PARQUET), "max_symbols": n},
                "cache": {"data": False},
            }
        ],
        env={},
    )
    got = app.load_data(config)
    assert all(s is not None and len(s) < 20 for _, s in reads)
    _same(got, _whole_then_first(config))


@pytest.mark.parametrize("repair", [[], ["nan"]])
def test_rows_without_a_time_or_symbol(tmp_path: Path, repair: list[str]) -> None:
    """A row without a time is left to the load (an error, or dropped by repair 'nan'); a
    row without a symbol is the whole load's error, as before."""
    path = tmp_path / "long.parquet"
    frame = _long()
    frame.loc[3, "date"] = pd.NaT
    frame.to_parquet(path, index=False)
    config = _config("parquet", str(path), tmp_path, max_symbols=2, repair=repair, cache=False)
    if not repair:
        with pytest.raises(DataError) as new:
            app.load_data(config)
        with pytest.raises(DataError) as old:
            _whole_then_first(config)
        assert str(new.value) == str(old.value)
    else:
        _same(app.load_data(config), _whole_then_first(config))
    frame = _long()
    frame.loc[3, "symbol"] = None
    frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match="without a symbol"):
        app.load_data(config)
