"""A split coefficient no company has ever had (1e300, 1/5000) is refused as a split <= 0
is, naming the file and row; it passed with a `data.suspect` warning
(split_without_price_move), and a position multiplied by it is not a position."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tradingd.core.errors import DataError
from tradingd.feeds.loaders import load_frame
from tradingd.feeds.validate import SPLIT_MAX, SPLIT_MIN


def _bars(split: float) -> pd.DataFrame:
    days = pd.bdate_range("2018-01-02", periods=6)
    frame = pd.DataFrame(
        {
            "symbol": "AAA",
            "date": days,
            "open": 10.0,
            "high": 10.5,
            "low": 9.5,
            "close": 10.0,
            "volume": 1000.0,
            "dividend": 0.0,
            "split": 1.0,
        }
    )
    frame.loc[3, "split"] = split
    if split != 1.0:  # the prices show it, so only the bound can refuse it
        frame.loc[3:, ["open", "high", "low", "close"]] /= split
    return frame


def _write(tmp_path: Path, frame: pd.DataFrame, kind: str) -> Path:
    path = tmp_path / f"bars.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def test_the_bounds_are_one_thousandth_to_a_thousand():
    assert (SPLIT_MIN, SPLIT_MAX) == (1 / 1000, 1000.0)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("split", [1e300, 2000.0, 1 / 5000])
def test_an_absurd_split_is_an_error_naming_the_file_and_row(tmp_path, kind, split):
    path = _write(tmp_path, _bars(split), kind)
    with pytest.raises(DataError) as info:
        load_frame(kind, str(path), layout="long")
    text = str(info.value)
    assert "1 row(s) with a split coefficient outside [1/1000, 1000]" in text
    assert f"first {split:g}" in text
    assert f"file={path}" in text and "symbol=AAA" in text
    assert ("row=5" if kind == "csv" else "row=2018-01-05") in text


@pytest.mark.parametrize("split", [50.0, 1 / 32, 1000.0, 1 / 1000])
def test_splits_within_the_bounds_load(tmp_path, split):
    frame = load_frame("csv", str(_write(tmp_path, _bars(split), "csv")), layout="long")
    assert frame["split"].tolist().count(split) == 1


def test_the_shared_datas_splits_are_within_the_bounds(sp500_parquet):
    split = pd.read_parquet(sp500_parquet, columns=["split"])["split"].dropna()
    assert (split != 1.0).sum() == 453
    assert split.min() >= SPLIT_MIN and split.max() <= SPLIT_MAX
