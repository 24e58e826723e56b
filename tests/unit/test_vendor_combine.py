"""`vendor.combine` (a vendor answer's bars of many symbols, validated in one table): the bad
older bars of every symbol are dropped in the same pass, not one row per pass. One row per
pass re-validated the whole universe's table for each bad row: 500 symbols x 300 bars with
one bad row each took 115 s, on the event loop's worker thread, every bar."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

import tradingd.feeds.vendor as vendor
from tradingd.core.errors import DataError
from tradingd.feeds.resilience import make_error
from tradingd.feeds.validate import JUMP_FROM, _fmt_time
from tradingd.feeds.vendor import (
    MAX_DROPPED_ROWS,
    Validation,
    _jumps_over_dropped,
    combine,
    empty_long,
    parse_interval,
    validate_bars,
)

DAILY = parse_interval("1d")


def bars(n: int = 12, seed: int = 0) -> pd.DataFrame:
    """A symbol's clean daily bars: a gentle random walk, volume 1e6, no actions."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    return pd.DataFrame(
        {
            "time": pd.date_range("2024-01-02", periods=n, freq="B"),
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": np.full(n, 1e6),
            "split": 1.0,
            "dividend": 0.0,
        }
    )


def with_bad(frame: pd.DataFrame, rows: list[int], column: str, value: float) -> pd.DataFrame:
    out = frame.copy()
    out.loc[rows, column] = value
    return out


def mixed() -> dict[str, pd.DataFrame]:
    """Symbols whose answers the drop rule treats each its own way."""
    spike = bars(seed=7)
    spike.loc[10, ["open", "high", "low", "close"]] *= 20  # the bar before the newest
    action = with_bad(bars(seed=5), [4], "volume", np.nan)
    action.loc[4, "split"] = 2.0
    return {
        "GOOD": bars(seed=1),
        "OLDNAN": with_bad(bars(seed=2), [3], "volume", np.nan),  # dropped
        "TWO": with_bad(with_bad(bars(seed=3), [2], "close", np.nan), [6], "volume", -5.0),
        "NEWEST": with_bad(bars(seed=4), [11], "close", np.nan),  # refused
        "MANY": with_bad(bars(seed=6), [1, 2, 3, 4, 5, 6], "volume", np.nan),  # refused
        "ACTION": action,  # its bad row carries a split: refused, not dropped
        "SPIKE": spike,  # a reverted spike: dropped in strict mode
        "ZLAST": bars(seed=8),
    }


def one_row_per_pass(source, parts, validation, interval=None):
    """The loop as it was (a reference): one bad row dropped, or one symbol refused, per
    validation of the whole table."""
    frames = [p.assign(symbol=s) for s, p in parts.items() if not p.empty]
    errors = {}
    table = pd.concat(frames, ignore_index=True)
    dropped: dict[str, int] = {}
    gone = []
    while not table.empty:
        try:
            frame = validate_bars(table, source=source, validation=validation, interval=interval)
            if gone and JUMP_FROM in frame:
                frame = _jumps_over_dropped(frame, pd.concat(gone), validation)
            return frame, errors
        except DataError as exc:
            bad = exc.symbol if exc.symbol in set(table["symbol"]) else None
            older = None
            if bad is not None and isinstance(exc.row, str):
                mine = table[table["symbol"] == bad]
                times = pd.to_datetime(mine["time"])
                hit = mine.index[
                    (times.map(_fmt_time) == exc.row).to_numpy() & (times < times.max()).to_numpy()
                ]
                acts = table.loc[hit]
                if len(hit) and (acts["split"] == 1.0).all() and (acts["dividend"] == 0.0).all():
                    older = hit
            if bad is not None and older is not None and dropped.get(bad, 0) < MAX_DROPPED_ROWS:
                dropped[bad] = dropped.get(bad, 0) + 1
                gone.append(table.loc[older, ["symbol", "time", "close"]])
                table = table.drop(index=older)
                continue
            failed = [bad] if bad is not None else sorted(set(table["symbol"]))
            for s in failed:
                errors[s] = make_error(source, "invalid_data", str(exc)[:500], symbol=s)
            table = table[~table["symbol"].isin(failed)]
    return empty_long(), errors


@pytest.mark.parametrize(
    "validation",
    [Validation(), Validation(open_end=True, open_start=True)],
    ids=["strict", "live"],
)
def test_every_symbols_bad_rows_in_one_pass_give_the_result_of_one_row_per_pass(validation):
    parts = mixed()
    expected, expected_errors = one_row_per_pass("yahoo", parts, validation, DAILY)
    with capture_logs() as logs:
        result = combine("yahoo", parts, validation, DAILY)
    pd.testing.assert_frame_equal(result.frame, expected)
    assert {s: e.kind for s, e in result.errors.items()} == {
        s: e.kind for s, e in expected_errors.items()
    }
    assert set(result.errors) == {"NEWEST", "MANY", "ACTION"}
    for symbol, err in result.errors.items():  # each refusal names its own symbol and row
        assert f"symbol={symbol}" in err.message
    # Its own count and row (the message of one validation of the whole table counted every
    # symbol's rows, and named the first symbol's).
    assert result.errors["NEWEST"].message.startswith("1 row(s) with a missing")
    assert "row=2024-01-17" in result.errors["NEWEST"].message
    dropped = sorted((e["symbol"], e["row"]) for e in logs if e["event"] == "feed.row_dropped")
    assert ("OLDNAN", "2024-01-05") in dropped and ("SPIKE", "2024-01-16") in dropped
    assert [s for s, _ in dropped].count("TWO") == 2
    if validation.open_end:  # the newest bar is judged from the spike as it came: held
        newest = result.frame[result.frame["symbol"] == "SPIKE"].iloc[-1]
        assert not np.isnan(newest[JUMP_FROM])


def test_validation_passes_do_not_grow_with_the_bad_symbols(monkeypatch):
    """Counted, not timed: one pass finds every symbol's bad row, the next serves the rest."""
    passes: list[int] = []
    validate = vendor.validate_bars

    def counting(*args, **kwargs):
        passes[-1] += 1
        return validate(*args, **kwargs)

    monkeypatch.setattr(vendor, "validate_bars", counting)
    for n_bad in (1, 8, 40):
        parts = {f"G{i:02d}": bars(seed=i) for i in range(5)}
        parts |= {
            f"B{i:02d}": with_bad(bars(seed=100 + i), [3], "volume", np.nan) for i in range(n_bad)
        }
        passes.append(0)
        result = combine("yahoo", parts, Validation(), DAILY)
        assert result.errors == {}
        assert len(result.frame) == len(parts) * 12 - n_bad
    assert passes == [2, 2, 2]


def test_an_internal_errors_message_is_redacted():
    """A bug's exception quoting a request URL reached the symbol's error (shown in `/ready`
    and alerts) with its credential parameters."""
    boom = ValueError("bad answer of https://x.test/query?function=D&apikey=AVKEY1234567")
    result = combine("alphavantage", {"IBM": boom}, Validation())
    err = result.errors["IBM"]
    assert err.kind == "internal" and "AVKEY1234567" not in err.message
    assert "apikey=***" in err.message and "ValueError" in err.message
