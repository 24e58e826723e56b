"""Checks and optional repairs of bar tables before they become a `Panel`.

`validate_frame` takes one symbol's bars, or a long table of many symbols, with columns named
loosely (case-insensitive, common aliases), and returns a clean long table with the columns
`time, symbol, open, high, low, close, volume, split, dividend`: sorted by symbol then time,
times datetime64[ns] UTC-naive, floats everywhere else.

Every problem either raises `DataError` naming the file, the symbol and the row (the line number
for CSV input, else the bar's timestamp), or, when its repair is enabled, is fixed and logged as
a structlog "data.repair" event with the fields source, symbol, rows (how many rows were changed,
dropped or accepted) and what (the repair name). Nothing is dropped or changed silently.

Repairs (enable by name, or "all"):
  nan           rows with a missing/non-numeric time, OHLC or volume are dropped (a missing
                volume drops the row too: inventing 0 would fake a no-trade bar).
  non_positive  rows with a price <= 0 or a negative volume are dropped. Zero volume is legal.
  high_low      high < low, or open/close outside [low, high]: high and low are widened to the
                max/min of open, high, low, close.
  duplicates    repeated timestamps of a symbol: the last occurrence in input order is kept.
  order         timestamps not increasing: the rows are sorted.
  gaps          more than `max_gap_days` calendar days between consecutive bars is accepted and
                logged. No bars are ever invented.
Always on (not data errors): split coefficients within 1e-4 relative of a simple fraction
(denominator <= 1000) are snapped to it, e.g. 7.000007 -> 7.0; a missing split/dividend value
in a present column becomes 1.0/0.0. Both are logged. A split <= 0 or a negative dividend is
always an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pandas as pd
import structlog

from ..core.errors import ConfigError, DataError

log = structlog.get_logger(__name__)

REPAIRS = ("nan", "non_positive", "high_low", "duplicates", "order", "gaps")
PRICE_COLUMNS = ("open", "high", "low", "close")
OUTPUT_COLUMNS = ("time", "symbol", *PRICE_COLUMNS, "volume", "split", "dividend")
DEFAULT_MAX_GAP_DAYS = 7.0
SPLIT_SNAP_TOLERANCE = 1e-4
SPLIT_SNAP_MAX_DENOMINATOR = 1000
_LOG_SAMPLE = 5

# Normalised name (lower case, spaces/dashes as underscores) -> canonical column.
ALIASES: dict[str, str] = {
    "time": "time",
    "date": "time",
    "datetime": "time",
    "timestamp": "time",
    "symbol": "symbol",
    "ticker": "symbol",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "split": "split",
    "split_coefficient": "split",
    "dividend": "dividend",
    "dividend_amount": "dividend",
    "dividends": "dividend",
}


def parse_repairs(repair: Sequence[str] | str) -> frozenset[str]:
    """The enabled repair names; "all" enables every one. Unknown names are a ConfigError."""
    names = [repair] if isinstance(repair, str) else list(repair)
    out: set[str] = set()
    for name in names:
        key = str(name).strip().lower()
        if key == "all":
            out.update(REPAIRS)
        elif key in REPAIRS:
            out.add(key)
        else:
            raise ConfigError(
                f"data repair {name!r} is unknown; valid choices: {', '.join((*REPAIRS, 'all'))}"
            )
    return frozenset(out)


def _normalise_name(col: object) -> str:
    return str(col).strip().lower().replace(" ", "_").replace("-", "_")


def canonical_columns(columns: Sequence[object]) -> dict[object, str]:
    """Map each recognised input column to its canonical name (first match wins)."""
    mapping: dict[object, str] = {}
    taken: set[str] = set()
    for col in columns:
        canon = ALIASES.get(_normalise_name(col))
        if canon is not None and canon not in taken:
            mapping[col] = canon
            taken.add(canon)
    return mapping


def find_column(df: pd.DataFrame, canonical: str) -> object | None:
    """The input column that maps to `canonical`, or None."""
    for col, canon in canonical_columns(list(df.columns)).items():
        if canon == canonical:
            return col
    return None


def _fmt_time(ts: object) -> str:
    t = pd.Timestamp(ts)
    if pd.isna(t):
        return "NaT"
    return t.strftime("%Y-%m-%d") if t == t.normalize() else t.isoformat()


class _Ctx:
    """Where rows came from, to name them in errors and logs."""

    def __init__(self, source: str, first_line: int | None) -> None:
        self.source = source
        self.first_line = first_line

    def label(self, frame: pd.DataFrame, pos: int) -> int | str:
        """What a user can find: the CSV line, else the timestamp, else the input index."""
        index = frame.index[pos]
        if self.first_line is not None:
            return int(index) + self.first_line
        t = frame["time"].iat[pos]
        return f"index {index}" if pd.isna(t) else _fmt_time(t)

    def fail(self, frame: pd.DataFrame, mask: np.ndarray, message: str) -> DataError:
        """A DataError at the earliest input row of `mask`."""
        rows = np.flatnonzero(mask)
        pos = int(rows[np.argmin(frame.index.to_numpy()[rows])])
        return DataError(
            message.format(n=len(rows), pos=pos),
            source=self.source,
            symbol=str(frame["symbol"].iat[pos]),
            row=self.label(frame, pos),
        )

    def log_repair(
        self,
        what: str,
        frame: pd.DataFrame,
        mask: np.ndarray,
        *,
        level: str = "warning",
        detail: np.ndarray | None = None,
        **kw: object,
    ) -> None:
        """One log line per symbol with the count and the first few rows of `mask`.

        `frame` is sorted by symbol, so each symbol's rows are contiguous.
        """
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            return
        codes = frame["_code"].to_numpy()[rows]
        _, starts, counts = np.unique(codes, return_index=True, return_counts=True)
        times = frame["time"].to_numpy()
        for start, count in zip(starts, counts, strict=True):
            sample = rows[start : start + min(count, _LOG_SAMPLE)]
            fields = {
                "source": self.source,
                "symbol": str(frame["symbol"].iat[int(sample[0])]),
                "rows": int(count),
                "what": what,
                "times": [_fmt_time(times[i]) for i in sample],
            }
            if self.first_line is not None:
                fields["lines"] = [self.label(frame, int(i)) for i in sample]
            if detail is not None:
                fields["values"] = [detail[i] for i in sample]
            getattr(log, level)("data.repair", **fields, **kw)


def _parse_times(raw: pd.Series, ctx: _Ctx, frame_for_errors: pd.DataFrame) -> pd.Series:
    """datetime64[ns], UTC-naive. tz-aware input is converted to UTC first."""
    dtype = raw.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        t = raw.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(dtype):
        t = raw
    elif pd.api.types.is_numeric_dtype(dtype) and not raw.isna().all():
        raise DataError(
            f"time column has numeric type {dtype}; expected dates or date-times as text",
            source=ctx.source,
        )
    else:
        t = pd.to_datetime(raw, utc=True, errors="coerce")
        bad = t.isna() & raw.notna()
        if bad.any():  # inferred from the first value; retry allowing mixed formats
            t = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
            bad = (t.isna() & raw.notna()).to_numpy()
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                raise ctx.fail(
                    frame_for_errors,
                    bad,
                    f"{{n}} row(s) with an unparseable time, first {raw.iat[pos]!r}",
                )
        t = t.dt.tz_localize(None)
    return t.astype("datetime64[ns]")


def _time_bound(value: str, *, end: bool) -> np.datetime64:
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if end and ts == ts.normalize():  # a date: include the whole day
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return np.datetime64(ts.to_datetime64(), "ns")


def _normalise(
    df: pd.DataFrame, *, ctx: _Ctx, symbol: str | None, start: str | None, end: str | None
) -> pd.DataFrame:
    """Canonical columns and types, filtered by date, stably sorted by symbol."""
    if find_column(df, "time") is None and isinstance(df.index, pd.DatetimeIndex):
        df = df.reset_index()
    mapping = canonical_columns(list(df.columns))
    have = set(mapping.values())
    required = ["time", *PRICE_COLUMNS, "volume"] + (["symbol"] if symbol is None else [])
    missing = [c for c in required if c not in have]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found columns {[str(c) for c in df.columns]}",
            source=ctx.source,
            symbol=symbol,
        )
    src = {canon: df[col] for col, canon in mapping.items()}
    out = pd.DataFrame(index=df.index)
    out["time"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    if symbol is None:
        sym = src["symbol"]
        if sym.isna().any():
            probe = out.assign(symbol="?")
            raise ctx.fail(probe, sym.isna().to_numpy(), "{n} row(s) without a symbol")
        out["symbol"] = sym.astype(str).to_numpy()
    else:
        out["symbol"] = symbol
        if "symbol" in src:
            other = (src["symbol"].astype(str) != symbol).to_numpy()
            if other.any():
                raise ctx.fail(
                    out.assign(symbol=src["symbol"].astype(str).to_numpy()),
                    other,
                    f"{{n}} row(s) of another symbol in the file for {symbol!r}",
                )
    out["time"] = _parse_times(src["time"], ctx, out)
    for name in (*PRICE_COLUMNS, "volume"):
        out[name] = pd.to_numeric(src[name], errors="coerce").astype("float64")
    for name, default in (("split", 1.0), ("dividend", 0.0)):
        if name in src:
            out[name] = pd.to_numeric(src[name], errors="coerce").astype("float64")
        else:
            out[name] = default

    if start is not None or end is not None:
        t = out["time"].to_numpy()
        keep = np.ones(len(out), dtype=bool)
        if start is not None:
            keep &= t >= _time_bound(start, end=False)
        if end is not None:
            keep &= t <= _time_bound(end, end=True)
        keep |= np.isnat(t)  # a missing time is a data problem, not out of range
        out = out[keep]

    codes, _ = pd.factorize(out["symbol"], sort=True)
    if len(codes) > 1 and np.any(codes[1:] < codes[:-1]):
        order = np.argsort(codes, kind="stable")
        out = out.iloc[order]
        codes = codes[order]
    out["_code"] = codes
    return out


def _check_values(frame: pd.DataFrame, ctx: _Ctx, repairs: frozenset[str]) -> pd.DataFrame:
    # nan: time, OHLC and volume must be present and finite.
    cols = (*PRICE_COLUMNS, "volume")
    values = {c: frame[c].to_numpy() for c in cols}
    bad_cols = {c: ~np.isfinite(v) for c, v in values.items()}
    bad_cols["time"] = np.isnat(frame["time"].to_numpy())
    nan = np.logical_or.reduce(list(bad_cols.values()))
    if nan.any():
        if "nan" not in repairs:
            first = int(np.flatnonzero(nan)[np.argmin(frame.index.to_numpy()[nan])])
            which = [c for c, m in bad_cols.items() if m[first]]
            raise ctx.fail(
                frame,
                nan,
                f"{{n}} row(s) with a missing or non-numeric value, first in {which}; "
                "enable repair 'nan' to drop them",
            )
        ctx.log_repair("nan", frame, nan, action="dropped")
        frame = frame[~nan]

    # non_positive: prices > 0, volume >= 0 (zero volume is legal).
    prices = frame[list(PRICE_COLUMNS)].to_numpy()
    price_bad = np.any(prices <= 0, axis=1)
    vol_bad = frame["volume"].to_numpy() < 0
    bad = price_bad | vol_bad
    if bad.any():
        if "non_positive" not in repairs:
            if price_bad.any():
                raise ctx.fail(
                    frame,
                    price_bad,
                    "{n} row(s) with a price <= 0; enable repair 'non_positive' to drop them",
                )
            raise ctx.fail(
                frame,
                vol_bad,
                "{n} row(s) with a negative volume; enable repair 'non_positive' to drop them",
            )
        ctx.log_repair("non_positive", frame, bad, action="dropped")
        frame = frame[~bad]

    # split/dividend: a missing value in a present column is the default; bad values are errors.
    split = frame["split"].to_numpy()
    dividend = frame["dividend"].to_numpy()
    missing = np.isnan(split) | np.isnan(dividend)
    if missing.any():
        ctx.log_repair("split_dividend_default", frame, missing, action="set to 1.0 / 0.0")
        frame = frame.assign(
            split=np.where(np.isnan(split), 1.0, split),
            dividend=np.where(np.isnan(dividend), 0.0, dividend),
        )
        split = frame["split"].to_numpy()
        dividend = frame["dividend"].to_numpy()
    if np.any(~np.isfinite(split) | (split <= 0)):
        raise ctx.fail(frame, ~np.isfinite(split) | (split <= 0), "{n} row(s) with a split <= 0")
    if np.any(~np.isfinite(dividend) | (dividend < 0)):
        raise ctx.fail(
            frame, ~np.isfinite(dividend) | (dividend < 0), "{n} row(s) with a dividend < 0"
        )

    # high_low: low <= open, close <= high.
    o, h, lo, c = (frame[n].to_numpy() for n in PRICE_COLUMNS)
    bad = (h < lo) | (o > h) | (o < lo) | (c > h) | (c < lo)
    if bad.any():
        if "high_low" not in repairs:
            raise ctx.fail(
                frame,
                bad,
                "{n} row(s) with high < low or open/close outside [low, high]; "
                "enable repair 'high_low' to widen high/low",
            )
        ctx.log_repair("high_low", frame, bad, action="high/low set to max/min of OHLC")
        stack = np.stack([o, h, lo, c])
        frame = frame.assign(high=stack.max(axis=0), low=stack.min(axis=0))
    return frame


def _steps(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row i >= 1: time step to row i-1 (ns) and whether row i-1 is the same symbol."""
    t = frame["time"].to_numpy().view("int64")
    codes = frame["_code"].to_numpy()
    same = np.zeros(len(t), dtype=bool)
    step = np.zeros(len(t), dtype=np.int64)
    if len(t) > 1:
        same[1:] = codes[1:] == codes[:-1]
        step[1:] = t[1:] - t[:-1]
    return step, same


def _check_time(
    frame: pd.DataFrame, ctx: _Ctx, repairs: frozenset[str], max_gap_days: float
) -> pd.DataFrame:
    step, same = _steps(frame)
    back = same & (step < 0)
    if (same & (step <= 0)).any():  # else strictly increasing: no duplicates possible
        if back.any() and "order" not in repairs:
            raise ctx.fail(
                frame,
                back,
                "{n} row(s) with a timestamp earlier than the row before; "
                "enable repair 'order' to sort them",
            )
        later = frame.duplicated(["_code", "time"], keep="first").to_numpy()
        if later.any():
            if "duplicates" not in repairs:
                raise ctx.fail(
                    frame,
                    later,
                    "{n} row(s) repeating an earlier timestamp of the same symbol; "
                    "enable repair 'duplicates' to keep the last",
                )
            dropped = frame.duplicated(["_code", "time"], keep="last").to_numpy()
            ctx.log_repair("duplicates", frame, dropped, action="dropped, kept the last")
            frame = frame[~dropped]
            step, same = _steps(frame)
            back = same & (step < 0)
        if back.any():
            ctx.log_repair("order", frame, back, action="sorted by time")
            frame = frame.sort_values(["_code", "time"], kind="stable")
            step, same = _steps(frame)

    max_gap = int(pd.Timedelta(days=max_gap_days).value)
    gap = same & (step > max_gap)
    if gap.any():
        if "gaps" not in repairs:
            raise ctx.fail(
                frame,
                gap,
                f"{{n}} gap(s) of more than {max_gap_days:g} days between bars; "
                "enable repair 'gaps' to accept them (no bars are invented)",
            )
        ctx.log_repair("gaps", frame, gap, action="accepted, no bars invented")
    return frame


def snap_split(value: float) -> float:
    """The nearest simple fraction when within the tolerance, else the value itself."""
    frac = Fraction(value).limit_denominator(SPLIT_SNAP_MAX_DENOMINATOR)
    snapped = float(frac)
    if abs(snapped - value) <= SPLIT_SNAP_TOLERANCE * abs(value):
        return snapped
    return value


def _snap_splits(frame: pd.DataFrame, ctx: _Ctx) -> pd.DataFrame:
    split = frame["split"].to_numpy()
    candidates = np.flatnonzero(split != 1.0)
    if len(candidates) == 0:
        return frame
    uniq, inverse = np.unique(split[candidates], return_inverse=True)
    snapped = np.array([snap_split(float(v)) for v in uniq])
    new = snapped[inverse]
    changed = new != split[candidates]
    if not changed.any():
        return frame
    rows = candidates[changed]
    mask = np.zeros(len(split), dtype=bool)
    mask[rows] = True
    out = split.copy()
    out[rows] = new[changed]
    detail = np.empty(len(split), dtype=object)
    for i in rows:
        detail[i] = f"{float(split[i])!r}->{float(out[i])!r}"
    ctx.log_repair(
        "split_snap",
        frame,
        mask,
        level="info",
        detail=detail,
        action="snapped to a simple fraction",
    )
    return frame.assign(split=out)


def validate_frame(
    df: pd.DataFrame,
    *,
    source: str,
    symbol: str | None,
    repair: Sequence[str] | str = (),
    max_gap_days: float = DEFAULT_MAX_GAP_DAYS,
    start: str | None = None,
    end: str | None = None,
    first_line: int | None = None,
) -> pd.DataFrame:
    """Check (and, where enabled, repair) bars; return the clean long table.

    `symbol` names the bars of a one-symbol frame; None means `df` is a long table with a
    symbol column. `source` names the file in errors and logs. `first_line` is the file line of
    the input's index 0 (2 for a CSV with a header line): errors then name lines, otherwise
    timestamps. `start`/`end` (inclusive dates) drop out-of-range rows before checking.
    """
    repairs = parse_repairs(repair)
    ctx = _Ctx(source, first_line)
    frame = _normalise(df, ctx=ctx, symbol=symbol, start=start, end=end)
    frame = _check_values(frame, ctx, repairs)
    frame = _check_time(frame, ctx, repairs, max_gap_days)
    frame = _snap_splits(frame, ctx)
    return frame.loc[:, list(OUTPUT_COLUMNS)].reset_index(drop=True)
