"""A run as the analysis reads it: `RunRecord`, and `run_record`, which normalises every
shape a run comes in (the engine's dict or `BacktestOutcome`, a run record folder, rows read
back from a store) into one. The one place that knows those shapes, so the analyzers,
the Monte Carlo and the reports take any of them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import pandas as pd
import structlog

from ..core.json_file import json_object_file as _json_file
from ..core.types import Fill, Side
from .record_names import WALKFORWARD_FILE, WALKFORWARD_FILES
from .return_metrics import _arr
from .splits import restate_for_splits

__all__ = [
    "DEFAULT_PERIODS_PER_YEAR",
    "WALKFORWARD_FILE",
    "WALKFORWARD_FILES",
    "RunRecord",
    "check_record_complete",
    "daily_bars_a_year",
    "is_walkforward_folder",
    "periods_per_year_for",
    "record_folder",
    "restate_for_splits",
    "run_record",
    "stored_run_results",
]

log = structlog.get_logger(__name__)

#: The bars a year of daily bars on a calendar of 252 sessions (New York's): what a run
#: that records no `periods_per_year` annualised with, and what returns of no run are
#: annualised with unless the caller says otherwise.
DEFAULT_PERIODS_PER_YEAR = 252.0
#: Calendar days in a year, on average over the leap years: what daily bars measured by
#: their own dates are counted per (`daily_bars_a_year`).
DAYS_A_YEAR = 365.25


def is_walkforward_folder(path: str | Path) -> bool:
    """Whether `path` is a walk-forward's results folder (it has walkforward.json), which is
    no run record although it has an equity.csv (the stitched out-of-sample curve): its
    folds ran in memory, and the curve is no one run's, with no initial capital of its own.
    `tradingd report` refuses one; the trial count leaves it out (`trials.count_trials`)."""
    return (Path(path) / WALKFORWARD_FILE).is_file()


@dataclass(frozen=True)
class RunRecord:
    """A run as the analysis needs it, whatever it came from."""

    times: pd.DatetimeIndex
    equity: np.ndarray
    initial_capital: float
    gross_exposure: np.ndarray | None = None
    fills: tuple[Fill, ...] = ()
    run_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The record folder it was read from ("" for a run in memory): errors name its files.
    source: str = ""


def _num(row: Mapping[str, Any], key: str, default: float) -> float:
    value = row.get(key)
    return default if value is None else float(value)


def _fill(row: Mapping[str, Any]) -> Fill:
    """A fill from a stored row (the `fills` table's columns; costs default to 0)."""
    t = row.get("time")
    time = pd.Timestamp(t).to_pydatetime() if t is not None else datetime.min
    return Fill(
        fill_id=str(row.get("fill_id", "")),
        client_order_id=str(row.get("client_order_id", "")),
        symbol=str(row["symbol"]),
        side=Side(str(row["side"]).lower()),
        quantity=float(row["quantity"]),
        price=float(row["price"]),
        commission=_num(row, "commission", 0.0),
        slippage=_num(row, "slippage", 0.0),
        time=time,
        reference_price=_num(row, "reference_price", math.nan),
    )


def _fills(fills: Any) -> tuple[Fill, ...]:
    if fills is None:
        return ()
    if isinstance(fills, pd.DataFrame):
        rows: Iterable[Any] = fills.to_dict("records")
    else:
        rows = fills
    return tuple(f if isinstance(f, Fill) else _fill(f) for f in rows)


def _curve(equity: Any, times: Any) -> tuple[pd.DatetimeIndex, np.ndarray]:
    if isinstance(equity, pd.Series):
        return pd.DatetimeIndex(pd.to_datetime(equity.index)), equity.to_numpy(dtype=float)
    e = _arr(equity)
    if times is None:
        raise ValueError("an equity curve without times needs `times` (or pass a pd.Series)")
    return pd.DatetimeIndex(pd.to_datetime(times)), e


def _capital(value: Any) -> float | None:
    """The initial capital as a float, or None when it is no positive finite number: float()
    named no file for "abc", raised a TypeError for a list, and read true as 1."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | np.number):
        return None
    try:
        cap = float(value)
    except ValueError:
        return None
    return cap if math.isfinite(cap) and cap > 0 else None


def _out_of_order(idx: pd.DatetimeIndex) -> int | None:
    """The first row not after the one before (None: the times increase). A curve out of
    order reads as another run (its "start" after its "end", a total return of the wrong
    sign): an edited or damaged record, refused."""
    if idx.is_monotonic_increasing and idx.is_unique:
        return None
    steps = np.flatnonzero(np.diff(idx.asi8) <= 0)
    return int(steps[0]) + 1 if steps.size else 0


def _record(
    equity: Any,
    times: Any,
    initial_capital: Any,
    gross_exposure: Any = None,
    fills: Any = None,
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
    splits: Mapping[str, Iterable[tuple[Any, float]]] | None = None,
) -> RunRecord:
    idx, e = _curve(equity, times)
    if len(idx) != e.size:
        raise ValueError(f"equity ({e.size}) and times ({len(idx)}) differ in length")
    if initial_capital is None:
        raise ValueError("the run's initial_capital is missing (the equity before the first bar)")
    cap = _capital(initial_capital)
    if cap is None:
        raise ValueError(f"initial_capital must be a positive number, got {initial_capital!r}")
    if not np.all(np.isfinite(e)):
        raise ValueError("equity contains NaN or inf")
    at = _out_of_order(idx)
    if at is not None:
        raise ValueError(
            f"equity times must increase bar by bar; row {at} ({idx[at]}) is not after the "
            f"one before ({idx[at - 1] if at else 'none'})"
        )
    gx = None
    if gross_exposure is not None:
        gx = (
            gross_exposure.to_numpy(dtype=float)
            if isinstance(gross_exposure, pd.Series)
            else _arr(gross_exposure)
        )
        if gx.size != e.size:
            raise ValueError(f"gross_exposure ({gx.size}) and equity ({e.size}) differ in length")
    restated = tuple(restate_for_splits(_fills(fills), splits))
    return RunRecord(idx, e, cap, gx, restated, run_id, dict(extra or {}))


def _read_splits(path: Path) -> dict[str, list[tuple[Any, float]]] | None:
    """A record folder's splits.csv (None: the folder has none, written before it was)."""
    file = path / "splits.csv"
    if not file.exists():
        return None
    try:
        rows = pd.read_csv(file)
        times = pd.to_datetime(rows["time"], utc=True, format="ISO8601")
        factors = pd.to_numeric(rows["split"], errors="coerce").to_numpy(dtype=float)
        symbols = rows["symbol"].astype(str).tolist()
    except (ValueError, KeyError, pd.errors.ParserError) as exc:
        raise ValueError(f"{file} cannot be read as the run's split events: {exc}") from None
    # A factor is the shares after the event per share before it, a positive number, as
    # the data's checks (`feeds.validate`) let through: 0 was a ZeroDivisionError in
    # `restate_for_splits` (it divides the prices by it), a negative one negative prices.
    _bad_row(
        file,
        rows,
        "split",
        ~(np.isfinite(factors) & (factors > 0)),
        "a split factor (a finite number > 0)",
    )
    out: dict[str, list[tuple[Any, float]]] = {}
    for sym, t, c in zip(symbols, times, factors.tolist(), strict=True):
        out.setdefault(sym, []).append((t, c))
    return out


def _whole_curve(file: Path, eq: pd.DataFrame, summary: Mapping[str, Any], *, end: bool) -> None:
    """The curve the summary describes, or an error: a cut equity.csv (a copy stopped
    midway, a full disk) was analysed as the whole run, 333 bars beside a summary of 3,523.
    The summary's `bars` counts the rows equity.csv was written from (the traded bars, no
    warm-up) and its `end` is the last one's date in its own offset (`metrics.summarize`).
    A cut (rows missing, or a last line without its end, whose number may read whole) is
    looked for before the times are read (`end` off): it is an incomplete record, not a bad
    time. Any other disagreement after their order is checked (`end`): a bar written twice
    or rows sorted backwards are named by line there (`_in_order`)."""
    bars, last_day = summary.get("bars"), summary.get("end")
    if not isinstance(bars, int) or isinstance(bars, bool):
        return  # a summary of another kind, or edited: nothing to compare with
    last = str(eq["time"].iloc[-1]) if len(eq) and "time" in eq else ""
    cut = not end and len(eq) and _ends_within_a_line(file)
    if not end and not cut and len(eq) >= bars:
        return
    if end and len(eq) == bars:
        if not (last and isinstance(last_day, str) and last_day):
            return
        if pd.Timestamp(last).date().isoformat() == last_day:
            return
    raise ValueError(
        f"{file} holds {len(eq)} bars, the last at {last or 'none'}"
        f"{' (its line cut short)' if cut else ''}, but {file.parent / 'summary.json'} "
        f"counts {bars} bars to {last_day}: the record is incomplete or edited (run the "
        "backtest again)"
    )


def _ends_within_a_line(file: Path) -> bool:
    """Every line `backtest.write_outputs` writes ends with a line break."""
    with file.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) not in (b"\n", b"\r")


def _csv(file: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(file)
    except ValueError as exc:  # pandas' parser errors, an empty file, bytes not UTF-8
        raise ValueError(
            f"{file} cannot be read as {what}: {exc} (run the backtest again)"
        ) from None


def _columns(file: Path, frame: pd.DataFrame, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(
            f"{file} has no {', '.join(missing)} column (its columns: "
            f"{', '.join(map(str, frame.columns)) or 'none'}): the record is damaged or edited"
        )


def _bad_row(file: Path, frame: pd.DataFrame, column: str, bad: np.ndarray, want: str) -> None:
    """The first `bad` row refused by file, line and column: pandas' and float()'s own
    errors named none of them, and a missing column (`_columns`) was a KeyError, which
    `tradingd report` showed as a traceback."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = frame[column].iloc[i]
        if isinstance(value, str):
            shown = repr(value)
        elif pd.isna(value):
            shown = _missing_cell(file, column, i)
        else:
            shown = str(value)
        raise ValueError(
            f"{file} line {i + 2} (the header is line 1): {column} {shown} is not {want}"
        )


def _missing_cell(file: Path, column: str, row: int) -> str:
    """How a cell pandas read as missing (NaN) is written in `file`: "(empty)" for an empty
    or absent cell, else its text as written ('nan', 'NULL': pandas reads those as NaN
    too). Both were "(empty)", and a NaN written in a cell and a cell left empty are
    different defects to the person repairing the file. Read again (with every cell as
    text) only here, on the way to an error."""
    try:
        cells = pd.read_csv(file, usecols=[column], dtype=str, keep_default_na=False, nrows=row + 1)
        text = cells[column].iloc[row]
    except (OSError, ValueError, KeyError, IndexError):  # changed since: say what it can be
        return "(empty or NaN)"
    return "(empty)" if not isinstance(text, str) or not text.strip() else repr(text)


def _numbers(file: Path, frame: pd.DataFrame, column: str, *, finite: bool = False) -> np.ndarray:
    """The column as floats; an empty cell is NaN unless `finite` (then refused, as text
    that is not a number always is)."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) if finite else np.isnan(values) & raw.notna().to_numpy()
    _bad_row(file, frame, column, bad, "a finite number" if finite else "a number")
    return values


def _times(file: Path, frame: pd.DataFrame) -> pd.Series:
    times = pd.to_datetime(frame["time"], utc=True, format="ISO8601", errors="coerce")
    _bad_row(file, frame, "time", times.isna().to_numpy(), "an ISO 8601 time")
    return times


def _in_order(file: Path, frame: pd.DataFrame, times: pd.Series) -> None:
    """The curve's times increasing, or an error naming the file and the line where they
    stop (`_record` named a row of no file)."""
    at = _out_of_order(pd.DatetimeIndex(times))
    if at is None:
        return
    before = repr(frame["time"].iloc[at - 1]) if at else "none"
    raise ValueError(
        f"{file} line {at + 2} (the header is line 1): time {frame['time'].iloc[at]!r} is not "
        f"after the one before ({before}): equity times must increase bar by bar; the record "
        "is damaged or edited (run the backtest again)"
    )


def _fill_columns(file: Path, fills: pd.DataFrame, bars: pd.Series) -> pd.DataFrame:
    """The fills with their times and numbers parsed, each checked (`_fill` reads them).
    A value no run writes is refused, not skipped: a quantity <= 0 was passed over without
    a word by the round trips (`metrics.closed_trades`) and the Monte Carlo's trade order.
    Quantity and price are > 0; commission and slippage >= 0 (the simulated broker's
    slippage is |price - reference| x quantity, Alpaca's 0: `Fill.slippage`); an empty
    cost is NaN, as a store gives back; a fill is at one of the run's bars (`bars`, the
    equity curve's times: none is filled in the warm-up, none after the last bar)."""
    _columns(file, fills, ("symbol", "side", "quantity", "price", "time"))
    out = fills.copy()
    out["time"] = times = _times(file, fills)
    for column in ("quantity", "price"):
        out[column] = values = _numbers(file, fills, column, finite=True)
        _bad_row(file, fills, column, values <= 0, "a positive number")
    for column in ("commission", "slippage", "reference_price"):
        if column in fills:
            out[column] = values = _numbers(file, fills, column)
            if column != "reference_price":
                _bad_row(file, fills, column, values < 0, "a cost (a number >= 0)")
    sides = fills["side"].astype(str).str.lower()
    _bad_row(file, fills, "side", ~sides.isin([s.value for s in Side]).to_numpy(), "buy or sell")
    if len(bars):
        first, last = bars.iloc[0], bars.iloc[-1]
        outside = ((times < first) | (times > last)).to_numpy()
        _bad_row(
            file,
            fills,
            "time",
            outside,
            f"within the run ({first.isoformat()} to {last.isoformat()}, the first and last "
            f"bars of {file.parent / 'equity.csv'})",
        )
    return out


def check_fill_count(file: Path, rows: int, counted: Any) -> None:
    """fills.csv's `rows` fills against the summary's `counted` (where it counts them, and
    the file has any: an empty one is the caller's own error), its last line whole: a copy
    cut short was analysed as the whole run (246 round trips of 494), and `compare` read it
    as a run that traded less. A last line cut inside its last field still parses, as a
    smaller number."""
    if not rows or not isinstance(counted, int) or isinstance(counted, bool):
        return
    cut = _ends_within_a_line(file)
    if rows == counted and not cut:
        return
    raise ValueError(
        f"{file} holds {rows} fills{' (its last line cut short)' if cut else ''}, but "
        f"{file.parent / 'summary.json'} counts {counted} fills: the record is incomplete or "
        "edited (run the backtest again)"
    )


def _all_orders(path: Path, summary: Mapping[str, Any]) -> None:
    """orders.csv, where the folder has one, with a row for each order the summary's
    `orders` counts (where it counts them). Only fewer rows are refused: the count is of the
    orders sent (`Engine`'s acknowledgements), and orders.csv also has a row for each order
    closed without being sent (a broker failure before the send, an order dropped after a
    fill in its symbol); each sent order has one row (a retry has an id of its own). A
    folder without orders.csv is not refused: the analysis reads no order, and a record
    copied with only the files it reads (equity.csv, fills.csv, summary.json) is whole."""
    counted = summary.get("orders")
    file = path / "orders.csv"
    if not isinstance(counted, int) or isinstance(counted, bool) or not file.exists():
        return
    try:
        with file.open(newline="", encoding="utf-8") as fh:
            rows = max(sum(1 for _ in csv.reader(fh)) - 1, 0)  # less the header
    except (ValueError, csv.Error) as exc:  # bytes not UTF-8, a NUL
        raise ValueError(
            f"{file} cannot be read as the run's orders: {exc} (run the backtest again)"
        ) from None
    if rows >= counted:
        return
    raise ValueError(
        f"{file} holds {rows} orders, but {path / 'summary.json'} counts {counted} orders "
        "sent: the record is incomplete or edited (run the backtest again)"
    )


#: Files `backtest.write_outputs` writes only before a summary.json (which it writes last):
#: a folder with any of them and no summary.json is a record cut short, not an old one.
_WRITTEN_BEFORE_SUMMARY = ("orders.csv", "splits.csv", "environment.json")


def check_record_complete(path: Path, summary: Mapping[str, Any]) -> None:
    """The checks of a record folder's completeness beyond its curve and fills (which
    `record_folder` makes as it reads them): a summary.json where the folder holds files a
    backtest writes only before one (a process killed between its last renames: it was
    compared and reported as a record made before data digests were), and orders.csv's
    rows against the summary's count (`_all_orders`). ValueError naming the file.
    `tradingd report` (through `record_folder`) and `tradingd compare` both make them."""
    if not summary and not (path / "summary.json").exists():
        held = [n for n in _WRITTEN_BEFORE_SUMMARY if (path / n).exists()]
        if held:
            raise ValueError(
                f"{path} has no summary.json, but holds {', '.join(held)}, which a backtest "
                "writes before it: the record is incomplete (its writer was killed before "
                "its end; run the backtest again)"
            )
    _all_orders(path, summary)


def _gross(file: Path, eq: pd.DataFrame) -> np.ndarray:
    """equity.csv's gross exposure: (|long| + |short|) / equity, never negative (NaN when
    the equity is not positive, an empty cell as a store gives it back)."""
    gx = _numbers(file, eq, "gross_exposure")
    _bad_row(file, eq, "gross_exposure", gx < 0, "a number >= 0 (|long| + |short| / equity)")
    return gx


def record_folder(
    path: Path, *, warn_unrestated: bool = True, with_fills: bool = True
) -> RunRecord:
    """A run's record folder as `tradingd backtest` writes it. `warn_unrestated` off: the
    caller reads the equity curve only (`trials.count_trials`), which the restatement of
    the fills does not change, and a warning per older folder said nothing it needs.
    `with_fills` off: the record without its fills (`fills` empty), for a caller that reads
    fills.csv itself (`compare`): a fill object each, restated, was most of a large
    record's reading (12 s of 500,000 fills)."""
    eq_file = path / "equity.csv"
    if not eq_file.exists():
        raise ValueError(f"{path} is not a run record: it has no equity.csv")
    eq = _csv(eq_file, "the run's equity curve")
    _columns(eq_file, eq, ("time", "equity"))
    capital = None
    summary: dict[str, Any] = {}
    where = (path / "summary.json", "initial_capital")
    if where[0].exists():
        summary = _json_file(where[0])
        capital = summary.get("initial_capital")
    _whole_curve(eq_file, eq, summary, end=False)
    times = _times(eq_file, eq)
    _in_order(eq_file, eq, times)
    if capital is None and (path / "config.json").exists():
        where = (path / "config.json", "run.initial_capital")
        run = _json_file(where[0]).get("run")
        capital = run.get("initial_capital") if isinstance(run, dict) else None
    if capital is not None and _capital(capital) is None:
        raise ValueError(
            f"{where[0]}: {where[1]} {capital!r} is not a positive number (the equity before "
            "the first bar): the record is damaged or edited (run the backtest again)"
        )
    fills_file = path / "fills.csv"
    fills = None
    if with_fills and fills_file.exists() and fills_file.stat().st_size > 0:
        fills = _csv(fills_file, "the run's fills")
        check_fill_count(fills_file, len(fills), summary.get("fills"))
        if len(fills):
            fills = _fill_columns(fills_file, fills, times)
    if with_fills and (fills is None or not len(fills)) and summary.get("fills"):
        # "No trades" would be a wrong answer: the costs and round trips would read 0. An
        # empty or header-only fills.csv said it silently, as a missing one did before.
        what = "no fills.csv" if not fills_file.exists() else "no fill in its fills.csv"
        raise ValueError(
            f"{path} has {what}, but its summary.json counts {summary['fills']} fills: "
            "the record is incomplete (run the backtest again)"
        )
    if with_fills:
        check_record_complete(path, summary)
    gx = None if "gross_exposure" not in eq else _gross(eq_file, eq)
    splits = _read_splits(path)
    if splits is None and fills is not None and len(fills) and warn_unrestated:
        log.warning(
            "analysis.fills_not_restated",
            folder=str(path),
            detail="the record has no splits.csv (written by tradingd backtest since "
            "2026-12-05): if a traded symbol split during the run, the round-trip "
            "statistics (round_trips, win_rate, profit_factor, avg_win, avg_loss) are "
            "wrong, a sale of the shares a split added scored as a new short. The "
            "equity-based metrics are right. Run the backtest again for a record that has it",
        )
    record = _record(
        _numbers(eq_file, eq, "equity", finite=True),
        times,
        capital,
        gx,
        fills,
        str(summary.get("run_id", "")),
        {"metrics": summary} if summary else None,
        splits,
    )
    _whole_curve(eq_file, eq, summary, end=True)
    return dataclasses.replace(record, source=str(path))


def run_record(backtest_results: Any) -> RunRecord:
    """Normalise what a backtest returns: the `BacktestEngine.run_backtest` dict (or any
    mapping with `equity_curve` as a pd.Series, or an array plus `times`, and
    `initial_capital`; optional `gross_exposure` and `fills`), the engine's
    `BacktestOutcome`, a run record folder (str or Path), or a `stored_run_results` dict."""
    if isinstance(backtest_results, RunRecord):
        return backtest_results
    if isinstance(backtest_results, str | Path):
        return record_folder(Path(backtest_results))
    if isinstance(backtest_results, Mapping):
        d = backtest_results
        if "equity_curve" not in d:
            raise ValueError(
                "backtest results need an 'equity_curve' (keys given: "
                f"{', '.join(map(str, d)) or 'none'})"
            )
        metrics = d.get("metrics") or {}
        capital = d.get("initial_capital", metrics.get("initial_capital"))
        return _record(
            d["equity_curve"],
            d.get("times"),
            capital,
            d.get("gross_exposure"),
            d.get("fills", d.get("trades")),
            str(d.get("run_id", "")),
            {"metrics": metrics} if metrics else None,
            d.get("splits"),
        )
    result = getattr(backtest_results, "result", None)
    summary = getattr(backtest_results, "summary", None)
    if result is not None and isinstance(summary, Mapping):  # backtest.BacktestOutcome
        return _record(
            result.equity,
            result.times,
            summary.get("initial_capital"),
            result.gross_exposure,
            backtest_results.fills,
            str(getattr(backtest_results, "run_id", "")),
            {"metrics": dict(summary)},
            getattr(backtest_results, "splits", None),
        )
    raise TypeError(
        "backtest results must be the dict BacktestEngine.run_backtest returns, a "
        f"BacktestOutcome or a run record folder, got {type(backtest_results).__name__}"
    )


def _recorded_periods_per_year(run: RunRecord | None) -> tuple[bool, Any, str]:
    """Whether the run's summary records a `periods_per_year`, the value as written (checked
    where it is taken) and the file it is in, for messages."""
    summary = run.extra.get("metrics") if run is not None else None
    if run is None or not isinstance(summary, Mapping) or "periods_per_year" not in summary:
        return False, None, ""
    where = str(Path(run.source) / "summary.json") if run.source else "the run's summary"
    return True, summary["periods_per_year"], where


def _positive_number(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _dates(times: Any) -> np.ndarray:
    """Each time's calendar date (datetime64[D]) in its own zone: daily bars are stamped
    at midnight of their date, or at a close in the exchange's zone."""
    idx = pd.DatetimeIndex(pd.to_datetime(times))
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    return np.asarray(idx.normalize().to_numpy(), dtype="datetime64[D]")


def daily_bars_a_year(times: Any) -> float:
    """The bars a year of daily bars measured by their own dates: distinct dates over the
    calendar days from the first to the last, times 365.25, rounded (365 for a bar every
    day, 251 or 252 for New York's sessions, 261 for every weekday). What data that trades
    on days its calendar has no session annualises with (`app.session_bars_only`, and
    `periods_per_year_for` for a run with weekend bars): the calendar's 252 read a year
    of crypto bars as 1.45 years, its CAGR and volatility scaled by sqrt(252 / 365)."""
    days = np.unique(_dates(times))
    if days.size < 2:
        return DEFAULT_PERIODS_PER_YEAR
    span = int((days[-1] - days[0]).astype(np.int64)) + 1
    return float(round(days.size / span * DAYS_A_YEAR))


def weekend_bars(times: Any) -> np.ndarray:
    """The dates (datetime64[D]) of daily bars that fall on a Saturday or a Sunday: no
    session on New York's calendar (nor most others). Empty for intraday bars (several on
    one date): their sessions are the configured calendar's business (`session_bars_only`)."""
    days = _dates(times)
    if days.size < 2 or np.unique(days).size != days.size:
        return np.empty(0, dtype="datetime64[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday: Monday is 0
    return days[weekday >= 5]


def _measured_bars_a_year(run: RunRecord | None, setting: str) -> float | None:
    """The bars a year a run that records none annualises with when its daily bars fall
    on weekends (a crypto curve passed as a bare Series): its own count
    (`daily_bars_a_year`), said; None otherwise (252, the sessions of New York)."""
    if run is None or run.times.size < 2:
        return None
    weekend = weekend_bars(run.times)
    if weekend.size == 0:
        return None
    ppy = daily_bars_a_year(run.times)
    log.warning(
        "analysis.weekend_bars",
        bars=int(weekend.size),
        first=str(weekend[0]),
        periods_per_year=ppy,
        detail=f"{weekend.size} of the run's {run.times.size} daily bars fall on a weekend "
        f"(first {weekend[0]}), when New York's calendar has no session: the run is "
        f"annualised with the bars a year its own dates hold, {ppy:g}, not 252; set "
        f"{setting} to choose",
    )
    return ppy


def periods_per_year_for(given: float | None, run: RunRecord | None, setting: str) -> float:
    """The bars a year to annualise `run` with: `given` (the analysis configuration's
    `setting`, e.g. "analysis.periods_per_year") when set, else the run's own, else 252.

    A backtest of intraday bars annualises its summary with 252 sessions of them and records
    it (`periods_per_year` in summary.json: 98,280 for 1-minute bars; a daily run on a
    calendar of other than 252 sessions records its own too). A run that records none and
    whose daily bars fall on weekends is annualised with the bars a year its dates hold
    (`daily_bars_a_year`, said in a warning): 252 read 365 crypto bars as 1.45 years.
    Only `tradingd report` took
    it: from Python a 1-minute run's Sharpe ratio was its report's over sqrt(390), silently.
    A `given` that differs from the run's is used, with a warning naming both. The run's is
    checked only when taken: one that is no positive number (`true`, read as 1; a string)
    is a damaged or edited record, refused naming the file; a caller who set their own
    still gets an analysis."""
    recorded, value, where = _recorded_periods_per_year(run)
    if given is not None:
        if _positive_number(value) and not math.isclose(given, value, rel_tol=1e-12):
            log.warning(
                "analysis.periods_per_year_not_the_runs",
                setting=setting,
                periods_per_year=given,
                runs_periods_per_year=value,
                source=where,
                detail=f"{setting} = {given:g} annualises the run, which annualised its own "
                f"summary with {value:g} bars a year ({where}): its annual figures and "
                "ratios differ from the summary's; leave periods_per_year unset to use the "
                "run's",
            )
        return float(given)
    if not recorded:
        measured = _measured_bars_a_year(run, setting)
        return DEFAULT_PERIODS_PER_YEAR if measured is None else measured
    if not _positive_number(value):
        raise ValueError(
            f"{where}: periods_per_year {value!r} is not a positive number (the bars in a "
            "year the run annualised with): the record is damaged or edited; run the "
            f"backtest again, or set the analysis's own ({setting}; the [analysis] table of "
            "an analysis config sets it for every table of a report)"
        )
    return float(value)


async def stored_run_results(store: Any, run_id: str, *, partial: bool = False) -> dict[str, Any]:
    """A run read back from a started store (its `runs`, `equity` and `fills` rows), in the
    shape `BacktestEngine.run_backtest` returns, for `PerformanceAnalyzer`.

    A replay that did not reach its last bar (stopped early, failed, or killed: no end stored) is
    refused: its metrics would read like the whole run's, which is why `tradingd backtest`
    writes no report for one. `partial=True` returns it anyway, flagged `"partial": True`
    and said in the log. A live run is what it has done so far, running or ended."""
    runs = await store.fetch("runs", run_id)
    if not runs:
        # Named: an SQLite path with a typo is a new, empty database (the store creates it),
        # and "not in this store" did not say which store was read.
        where = getattr(store, "safe_url", None) or getattr(store, "path", None) or "this store"
        raise ValueError(f"run {run_id!r} is not in {where}")
    run = runs[-1]
    equity = await store.fetch("equity", run_id)
    unfinished = _unfinished(run, equity)
    if unfinished and not partial:
        raise ValueError(
            f"run {run_id!r} {unfinished}: its metrics would read like a finished run's. "
            "Run the backtest again to its end, or pass partial=True to analyse the bars "
            "it reached"
        )
    if unfinished:
        log.warning("analysis.partial_run", run_id=run_id, detail=f"the run {unfinished}")
    fills = await store.fetch("fills", run_id)
    times = pd.DatetimeIndex([r["time"] for r in equity], name="time")
    splits = await _stored_splits(store, run, fills, equity[-1]["time"] if equity else None)
    return {
        "run_id": run_id,
        "equity_curve": pd.Series(
            [float(r["equity"]) for r in equity], index=times, name="equity", dtype=float
        ),
        "gross_exposure": pd.Series(
            [float(r["gross_exposure"]) for r in equity],
            index=times,
            name="gross_exposure",
            dtype=float,
        ),
        "fills": pd.DataFrame(fills),
        "initial_capital": float(run["initial_capital"]),
        "metrics": _with_bars_a_year(run),
        "splits": splits,
        "partial": bool(unfinished),
    }


def _with_bars_a_year(run: Mapping[str, Any]) -> dict[str, Any]:
    """The stored summary, with the bars a year of the run's own bar when the summary
    records none: a stored run's summary holds only its bar count, so a 5-minute run read
    back from the store was annualised as 252 bars a year, its Sharpe ratio sqrt(78) too
    small. A live run's bar is its `live.bar` (on `live.calendar`) in its stored
    configuration; a replay's is its data's, which its stored configuration holds under
    `replay_bars` (`app.stored_config_json`) with the bars a year its summary annualised
    with. A replay stored before that (no `replay_bars`) is read as 252 bars a year, said
    (`analysis.replay_bar_unknown`). A `replay_bars.periods_per_year` that is no positive
    number is taken as written, and refused where it is taken (`periods_per_year_for`),
    as a summary's is."""
    summary = run.get("summary")
    out = dict(summary) if isinstance(summary, Mapping) else {}
    if "periods_per_year" in out:
        return out
    try:
        raw = run.get("config_json")
        stored = json.loads(raw) if isinstance(raw, str) else raw or {}
        if not isinstance(stored, Mapping):
            raise TypeError(type(stored).__name__)
    except (TypeError, ValueError):
        stored = None  # a configuration not readable
    if run.get("mode") == "live":
        if stored is None:
            return out  # the default, as before
        try:
            live = stored.get("live") or {}
            bar, calendar = str(live.get("bar", "1d")), str(live.get("calendar", "XNYS"))
        except AttributeError:
            return out
        from ..app import bars_a_year

        ppy: Any = float(bars_a_year(calendar, bar))
    else:
        from ..app import REPLAY_BARS_KEY

        replay = stored.get(REPLAY_BARS_KEY) if stored is not None else None
        if not isinstance(replay, Mapping) or "periods_per_year" not in replay:
            log.warning(
                "analysis.replay_bar_unknown",
                run_id=str(run.get("run_id", "")),
                periods_per_year=DEFAULT_PERIODS_PER_YEAR,
                detail=f"the stored configuration of replay {run.get('run_id')!r} does not "
                f"say its data's bar ({REPLAY_BARS_KEY}: stored since this release; the "
                "replay is older, or its configuration damaged): it is annualised with 252 "
                "bars a year, daily bars on New York's calendar. For intraday data or "
                "another calendar set periods_per_year (the analysis's configuration), or "
                "analyse its run folder (its summary.json records its own)",
            )
            return out
        ppy = replay["periods_per_year"]
    if ppy != DEFAULT_PERIODS_PER_YEAR:
        out["periods_per_year"] = ppy
    return out


def _unfinished(run: Mapping[str, Any], equity: list[dict[str, Any]]) -> str:
    """How a stored replay fell short of its last bar ("" when it did not, or is live).
    A live run ends by being stopped and has no last bar: its record so far is the run.
    A replay's end is stored when its loop ends (`Engine`), marked `stopped_early` when
    that was before its last bar, `failed` (with the error) when an exception ended it; none
    stored is a replay killed, or still running."""
    if run.get("mode") == "live":
        return ""
    summary = run.get("summary")
    if run.get("ended_at") is None or summary is None:
        why = "has no end stored (killed, or still running)"
    elif isinstance(summary, Mapping) and summary.get("failed"):
        why = f"failed before its last bar ({summary.get('error') or 'no error recorded'})"
    elif isinstance(summary, Mapping) and summary.get("stopped_early"):
        why = "was stopped before its last bar (stopped_early)"
    else:
        return ""
    reached = f"{len(equity)} traded bars stored"
    if equity:
        reached += f", through {pd.Timestamp(equity[-1]['time']).isoformat()}"
    end = _configured_end(run.get("config_json"))
    return f"{why}: {reached}" + (f", of a replay to {end}" if end else "")


def _configured_end(config_json: Any) -> str:
    try:
        end = json.loads(config_json)["run"]["end"]
    except (TypeError, ValueError, KeyError):
        return ""
    return str(end) if end else ""


async def _stored_splits(
    store: Any, run: Mapping[str, Any], fills: list[dict[str, Any]], end: Any
) -> dict[str, list[tuple[Any, float]]]:
    """The split events of the run's traded symbols up to its last bar, so a round trip
    across a split is scored in one kind of share, as a record folder's `splits.csv` does
    for a backtest. A replay's are stored with its configuration (`app.REPLAY_SPLITS_KEY`:
    it writes no bars); a live run's, and a replay's stored before that, are the `split`
    column of the store's `bars` (a live run writes every bar it trades on). A traded
    symbol with neither stays unrestated, with a warning that its round trips are wrong
    across a split."""
    splits: dict[str, list[tuple[Any, float]]] = {}
    if not fills or end is None:
        return splits
    run_id = str(run.get("run_id", ""))
    traded = sorted({str(f["symbol"]) for f in fills})
    stored = _replay_splits(run)
    if stored is not None:
        for symbol in traded:
            if events := [(t, c) for t, c in stored.get(symbol, ()) if t <= end]:
                splits[symbol] = events
        return splits
    missing = []
    for symbol in traded:
        bars = await store.fetch_bars(symbol)
        if not bars:
            missing.append(symbol)
            continue
        events = [
            (b["time"], float(c))
            for b in bars
            if (c := b["split"]) is not None and math.isfinite(c) and c != 1.0 and b["time"] <= end
        ]
        if events:
            splits[symbol] = events
    if missing:
        log.warning(
            "analysis.fills_not_restated",
            run_id=run_id,
            symbols=missing[:10],
            count=len(missing),
            detail=f"the store holds no split events of these traded symbols (run {run_id!r} "
            "is a replay stored before its split events were, or the store has lost a live "
            "run's bars): if one of them split during the run, the round-trip statistics "
            "(round_trips, win_rate, profit_factor, avg_win, avg_loss) are wrong, a sale of "
            "the shares a split added scored as a new short. The equity-based metrics are "
            "right. Analyse the run's record folder (its splits.csv has the events), or run "
            "the backtest again",
        )
    return splits


def _replay_splits(run: Mapping[str, Any]) -> dict[str, list[tuple[datetime, float]]] | None:
    """A replay's split events as stored with its configuration (`app.REPLAY_SPLITS_KEY`);
    None for a live run, or a replay stored before them (or whose configuration cannot be
    read: `_with_bars_a_year` says so). Events that are not (ISO time, finite coefficient
    > 0) are a damaged record, refused naming the run."""
    from ..app import REPLAY_SPLITS_KEY

    if run.get("mode") == "live":
        return None
    try:
        raw = run.get("config_json")
        stored = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    if not isinstance(stored, Mapping) or REPLAY_SPLITS_KEY not in stored:
        return None
    out: dict[str, list[tuple[datetime, float]]] = {}
    try:
        for symbol, events in stored[REPLAY_SPLITS_KEY].items():
            out[str(symbol)] = sorted(
                (_aware(datetime.fromisoformat(t)), float(c)) for t, c in events
            )
            if not all(math.isfinite(c) and c > 0 for _, c in out[str(symbol)]):
                raise ValueError("a coefficient that is not a finite number > 0")
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"run {run.get('run_id')!r}: the split events stored with its configuration "
            f"({REPLAY_SPLITS_KEY} in runs.config_json) cannot be read ({exc}): the record is "
            "damaged or edited; analyse the run's record folder, or run the backtest again"
        ) from None
    return out


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
