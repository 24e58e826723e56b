"""Checks and optional repairs of bar tables before they become a `Panel`.

`validate_frame` takes one symbol's bars, or a long table of many symbols, with columns named
loosely (case-insensitive, common aliases), and returns a clean long table with the columns
`time, symbol, open, high, low, close, volume, split, dividend`: sorted by symbol then time,
times datetime64[ns] naive bar labels (see Times), floats everywhere else.

Columns: a date column beside a time column (Date, Time) are one timestamp, the date and the
time of day; any other two columns of one name (Date beside Datetime, Close beside CLOSE) are an
error naming both.

Times: naive input (dates, or date-times without an offset) is the exchange's wall time. Input
with UTC offsets (also mixed offsets, e.g. -05:00 in winter and -04:00 in summer, or UTC stamps
such as 05:00Z) is converted to the exchange's time zone (`timezone`, America/New_York by
default), so a daily bar stamped at New York midnight is the same date as an undated one; daily
bars stamped at 00:00 in their own offset (every bar of the symbol: 2015-01-02T00:00:00+00:00,
as tradingd's equity.csv and Tiingo write days) are dates, taken as written. A file
that mixes times with and without an offset is an error, and so are two distinct instants that
become the same wall time (the repeated hour when daylight saving ends): both name the row.
Text dates are read in the format pandas infers from the first value, unless `date_format`
(strftime, e.g. "%d/%m/%Y"; for a Date and a Time column, of the two joined by a space) says
it. A file whose dates fit no single format is read value by value, but not when that would
read some numeric dates day first (13/01/2014) and others month first (02/01/2014): that is an
error naming the rows and the formats to choose from.
The output times are bar labels, as everywhere in the engine: a daily bar is its session date
at 00:00 (whatever time of day it was stamped with), an intraday bar its start instant in UTC
(naive datetime64[ns] in both cases; `Panel.datetimes()` marks them UTC).

Every problem either raises `DataError` naming the file, the symbol and the row (the line number
for CSV input, else the bar's timestamp), or, when its repair is enabled, is fixed and logged as
a structlog "data.repair" event at debug level with the fields source, symbol, rows (how many
rows were changed, dropped or accepted) and what (the repair name). Each load also logs one
"data.repairs" line at info level with the number of rows and symbols per kind. Nothing is
dropped or changed silently.

Repairs (enable by name, or "all"):
  nan           rows with a missing/non-numeric time, OHLC or volume are dropped (a missing
                volume drops the row too: inventing 0 would fake a no-trade bar).
  non_positive  rows with a price <= 0 or a negative volume are dropped. Zero volume is legal.
  volume        rows with a volume above `max_volume` (an absurd value, e.g. 1e300, that
                would overflow the models' inputs), or with a volume that is not a whole
                number of shares (1234.5; 1234.0 is whole), are dropped. Equities trade whole
                shares and every source here sends raw share counts: a fractional volume is
                a corrupt value, a unit mix-up (thousands, lots) or a split-adjusted count
                beside raw prices, and no rounding of it is the shares that traded.
  weekend       daily bars dated on a Saturday or a Sunday are dropped: no exchange of these
                feeds holds a session then, so such a bar is a date shifted by a time zone,
                or a bar of another calendar. (A weekday check, not an exchange calendar:
                a holiday bar is left alone, see `_check_weekends`.)
  high_low      high < low, or open/close outside [low, high]: high and low are widened to the
                max/min of open, high, low, close.
  duplicates    repeated timestamps of a symbol: the last occurrence in input order is kept.
  order         timestamps not increasing: the rows are sorted.
  gaps          more than `max_gap_days` calendar days between consecutive bars is accepted and
                logged. No bars are ever invented.
  spike         a one-bar price spike: a price more than `max_spike` times above (or below
                1/`max_spike` of) the closes of both neighbouring bars of its symbol, after
                adjusting them for the bar's split coefficients, i.e. a jump that reverts at the
                next bar (the first and last bar of a symbol have one neighbour only). The
                outlying prices are replaced by the previous close (the next one for a first
                bar) and high/low re-widened; the bar, its volume, split and dividend are kept.
                With `open_end` (a live feed's answer, whose last bar per symbol is the newest
                one: its reversal is not known yet), the last bar of each symbol is not
                judged; the output's extra column `jump_from` says which of them jump beyond
                `max_spike` from the previous close, for the feed to hold back (see
                feeds/suspect.py). With `open_start` (the same answer, whose window is cut
                before its first bar), the first bar of each symbol is not judged either: it
                has no left neighbour in the answer, only the neighbour of the bar after it
                (judged against the two bars after it, the bar before a real gap looked like
                a spike once a later window started at it).
  repeated_actions  intraday bars: a split (or a dividend) on more than one bar of a
                symbol's session (the exchange date of the bar's start in `timezone`), as a
                daily action table joined onto 5-minute bars puts it on all 78 of the
                ex-date's bars, which the engine books 78 times (a 2-for-1 doubles the
                position 78 times). The action is kept on the session's first bar that
                carries it; the later bars' split is set to 1.0 (dividend to 0.0), logged
                with their count and values.
Always on (not data errors): split coefficients within 1e-4 relative of a simple fraction
(denominator <= 1000) are snapped to it, e.g. 7.000007 -> 7.0; a missing split/dividend value
in a present column becomes 1.0/0.0. Both are logged. A split <= 0, a split outside
[1/1000, 1000] (`SPLIT_MIN`, `SPLIT_MAX`: the shared S&P 500 data's 453 splits lie within
1/32 .. 50; a split of 1e300 passed with a data.suspect warning only) or a negative dividend
is always an error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import structlog

from ..core.errors import ConfigError, DataError
from ..core.lazy import LazyModule

if TYPE_CHECKING:
    import pandas as pd
else:  # imported at its first use (core/lazy.py): a backtest from the panel cache needs none
    pd = LazyModule("pandas")

log = structlog.get_logger(__name__)

REPAIRS = (
    "nan",
    "non_positive",
    "volume",
    "weekend",
    "high_low",
    "duplicates",
    "order",
    "gaps",
    "spike",
    "repeated_actions",
)
PRICE_COLUMNS = ("open", "high", "low", "close")
OUTPUT_COLUMNS = ("time", "symbol", *PRICE_COLUMNS, "volume", "split", "dividend")
DEFAULT_MAX_GAP_DAYS = 7.0
# The real S&P 500 data (496 stocks, 1999-2018) peaks at 4.7x (a bad low tick of EMR) and at
# 3.8e9 shares a day (C, 2009-12-17): the defaults leave it untouched.
DEFAULT_MAX_SPIKE = 10.0  # 0 disables the check
DEFAULT_MAX_VOLUME = 1e12  # shares per bar; 0 disables the check
# A volume this close to a whole number is whole (float noise of a computed count, e.g. a
# vendor's split-adjusted volume divided back); beyond it, a fractional volume (`_check_values`).
WHOLE_VOLUME_TOLERANCE = 1e-6
# datetime64[D] day 0 (1970-01-01) was a Thursday: (day + 3) % 7 is Monday 0 .. Sunday 6.
_EPOCH_WEEKDAY = 3
_WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DEFAULT_TIMEZONE = "America/New_York"
# Beyond these a corporate action is logged as suspect (`data.suspect`), not refused.
SUSPECT_SPLIT_RATIO = 4.0
# A split at least this large either way (a 3-for-2, a 2-for-3) is also suspect when the
# overnight move is nearer to no move than to the split (`_unshown_splits`); smaller ones (a
# 5% stock dividend, a spin-off's 1.011) are within a day's noise and cannot be judged so.
SUSPECT_UNSHOWN_MIN_SPLIT = 1.5
SUSPECT_DIVIDEND_FRACTION = 0.5
# Without a split column, an open within SPLIT_LIKE_TOLERANCE of the previous close over (or
# times, a reverse split) one of these ratios is logged as suspect (`split_like_jump`).
SPLIT_LIKE_RATIOS = (2.0, 3.0, 4.0, 10.0)
SPLIT_LIKE_TOLERANCE = 0.05
SPLIT_SNAP_TOLERANCE = 1e-4
SPLIT_SNAP_MAX_DENOMINATOR = 1000
# A split coefficient outside these is refused (an error naming the row), not suspect: the
# largest splits on record are about 1:100 (reverse 1:200); the shared data's 1/32 .. 50.
SPLIT_MIN = 1 / 1000
SPLIT_MAX = 1000.0
_LOG_SAMPLE = 5
# Suspect kinds whose warning names every case, not the first few: each is a requested symbol
# left out of the run, a change of its universe that must be findable in the log.
SUSPECT_NAME_ALL = frozenset({"no_bars_in_window"})

# The time-of-day column of a table with a "date" and a "time" column (see `_map_columns`).
TIME_OF_DAY = "time_of_day"
# Normalised name (lower case, spaces/dashes as underscores) -> canonical column. Two columns
# of one canonical name are an error, except "date" and "time" together: date and time of day.
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


def check_limits(*, max_spike: float, max_volume: float, timezone: str) -> None:
    """ConfigError for a plausibility threshold or a time zone that cannot work, naming the
    setting as `data.key = value` (how the configuration's errors lead, so that the one
    that set it, a file or an environment variable, is named after it)."""
    if not (max_spike == 0 or max_spike > 1):  # also catches NaN
        raise ConfigError(
            f"data.max_spike = {max_spike!r} is invalid: must be > 1 (a price ratio), or 0 "
            "to disable the check"
        )
    if not max_volume >= 0:
        raise ConfigError(
            f"data.max_volume = {max_volume!r} is invalid: must be > 0 (shares per bar), "
            "or 0 to disable the check"
        )
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"data.timezone = {timezone!r} is invalid: not an IANA time zone name, e.g. "
            "America/New_York"
        ) from exc


def check_date_format(date_format: str, key: str = "data.date_format") -> None:
    """ConfigError for a `date_format` that cannot read dates: it must be a strftime format
    ("%d/%m/%Y") that reads back what it writes; "" (pandas infers it) is fine. `key`: the
    setting named in the error."""
    if not date_format:
        return
    from datetime import datetime

    sample = datetime(2001, 2, 3, 4, 5, 6)
    try:
        ok = (
            "%" in date_format
            and datetime.strptime(sample.strftime(date_format), date_format).date() == sample.date()
        )
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"{key} = {date_format!r} is invalid: not a strftime format that reads a date, "
            'e.g. "%d/%m/%Y" (day first), "%m/%d/%Y" (month first), "%d.%m.%Y %H:%M"'
        )


class RepairSummary:
    """Rows and symbols repaired per kind over one load: one info line instead of hundreds."""

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.symbols: Counter[str] = Counter()
        # Values that pass the checks but are implausible (see `_suspect_actions`): kind ->
        # (count, the first few examples). Not repaired: logged, one warning per kind.
        self.suspects: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    def add(self, what: str, rows: int) -> None:
        self.rows[what] += rows
        self.symbols[what] += 1

    def suspect(self, kind: str, examples: list[dict[str, Any]], count: int = 0) -> None:
        """`count` rows of `kind` (at least one per example), with some examples."""
        n, kept = self.suspects.get(kind, (0, []))
        kept = kept + examples
        if kind not in SUSPECT_NAME_ALL:
            kept = kept[: 2 * _LOG_SAMPLE]
        self.suspects[kind] = (n + max(count, len(examples)), kept)

    def log(self, source: str, **extra: Any) -> None:
        if self.rows:
            log.info(
                "data.repairs",
                source=source,
                rows=dict(sorted(self.rows.items())),
                symbols=dict(sorted(self.symbols.items())),
                **extra,
            )
        for kind, (n, examples) in sorted(self.suspects.items()):
            log.warning(
                "data.suspect",
                source=source,
                kind=kind,
                count=n,
                examples=examples,
                rule=SUSPECT_RULES[kind],
            )


# A daily bar a symbol lacks is said (`missing_bar`) when at least this share of the other
# symbols listed that day have one.
MISSING_BAR_SHARE = 0.9

# What each `data.suspect` kind means and what the load did about it (nothing: the values
# are booked as given, and the operator decides).
SUSPECT_RULES = {
    "no_corporate_actions": "the file (or the vendor's answer, e.g. Alpha Vantage's with "
    "feed.alphavantage.adjusted = false) has no split and/or dividend column: none are booked, "
    "so its prices are taken as adjusted; raw prices of a stock that split would book the "
    "split as a crash (add the columns, or use a source that carries them)",
    "split_like_jump": "no split column, and the open is near the previous close over (or "
    f"times) {', '.join(f'{r:g}' for r in SPLIT_LIKE_RATIOS)}: if it is a split, it is "
    "booked as a crash (or a jump) of the position's value and of every return feature; "
    "check the symbol's splits (use split-adjusted prices, or a source that carries splits)",
    "split_without_price_move": f"a split coefficient the prices do not show: the previous "
    f"close over the bar's open, per the split, is beyond {SUSPECT_SPLIT_RATIO:g}x either way "
    "(a 2-for-1 halves the price), or, for a split of at least "
    f"{SUSPECT_UNSHOWN_MIN_SPLIT:g}x either way, the open is nearer the previous close than "
    "the split would put it (a 2-for-1 with the price unmoved: the position doubles, its "
    "value with it); booked as given: check the coefficient",
    "large_dividend": f"a dividend of at least {SUSPECT_DIVIDEND_FRACTION:.0%} of the previous "
    "close; booked as given: check it (a special dividend, or a wrong unit)",
    "split_with_dividend": "a split and a dividend on the same bar: the split is applied "
    "first, then the dividend is paid per post-split share (split x (open + dividend) over "
    "the previous close is the overnight return booked), so a dividend in pre-split terms, or "
    "one the split already accounts for (a spin-off counted twice, a dividend equal to the "
    "split ratio or the ratio - 1), is booked as a phantom gain; booked as given: check the "
    "symbol's actions that day against another source and correct the file",
    "no_bars_in_window": "the symbol has bars in the source (its first and last are named), "
    "but none between the load's start and end (run.start, run.end): it is left out of the "
    "run, whose universe is then smaller than the symbols asked for; widen the window, or "
    "take the symbol out of data.symbols",
    "symbols_outside_window": "data.symbols is empty (every symbol of the data), and these "
    "symbols have bars in the source (the first few are named, with their first and last "
    "bar) but none between the load's start and end (run.start, run.end): they are not in "
    "the run, whose universe is smaller than the data's by `count` symbols (listed after "
    "the window, or delisted before it); widen the window, or list data.symbols to choose "
    "the universe",
    "ends_early": "the symbol's bars stop before the others' (a delisting, a merger, a file cut "
    "short): a position held then stays in the book at its last close and cannot be sold",
    "missing_bar": "the symbol has no daily bar on a day when at least "
    f"{MISSING_BAR_SHARE:.0%} of the other symbols listed then have one, between its own first "
    "and last bar (a halt, or a row missing from the file): the replay makes no decision and "
    "no fill for it that day, and its next bar's return spans both days; add the row if it "
    "traded",
    "stale_repeat": "a live feed's newest bar repeats the symbol's previous bar exactly (open, "
    "high, low, close and volume, the volume above 0): more likely the vendor serving a stale "
    "row for a session it has no data for yet than a session that traded the same prices and "
    "shares to the unit; served and traded as it came (a halt shows as no bar, not a repeat): "
    "check the symbol at the vendor; a later answer that corrects it says data.restated",
}


def _suspect_actions(frame: pd.DataFrame, ctx: _Ctx) -> None:
    """Corporate actions that pass the checks (a positive split, a non-negative dividend)
    but that the prices contradict: a split of 100 with no price move multiplies a position
    by 100, a dividend of 1e6 a thousand times the account. Real data has oddities too (the
    S&P 500 set: split ratios between 0.5x and 3.3x of the price move, a few dividends
    above the price), so these are warnings, counted for the load, not errors."""
    split = frame["split"].to_numpy()
    dividend = frame["dividend"].to_numpy()
    events = (split != 1.0) | (dividend > 0)
    if not events.any():
        return
    codes = frame["_code"].to_numpy()
    prev = _shift(frame["close"].to_numpy(), codes, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = prev / (frame["open"].to_numpy() * split)
        frac = dividend / prev
    odd_split = (split != 1.0) & np.isfinite(ratio)
    odd_split &= (ratio > SUSPECT_SPLIT_RATIO) | (ratio < 1.0 / SUSPECT_SPLIT_RATIO)
    odd_split |= _unshown_splits(split, ratio)
    big_div = (dividend > 0) & np.isfinite(frac) & (frac >= SUSPECT_DIVIDEND_FRACTION)
    _say_suspect(frame, ctx, "split_without_price_move", odd_split, prev, split)
    _say_suspect(frame, ctx, "large_dividend", big_div, prev, dividend)
    _suspect_split_with_dividend(frame, ctx, prev)


def _unshown_splits(split: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """Per row: a split of at least `SUSPECT_UNSHOWN_MIN_SPLIT` either way that the overnight
    move (previous close over open; `ratio` is that move over the split) shows less than
    half of, in log terms: the price is nearer to no split than to this one. The 4x rule
    alone let a 2-for-1 with the price unmoved pass (ratio 0.5), three days in a row, each
    doubling the position. The S&P 500 file has 3 such rows (ANTM 2002-03-18, 2.0 on an
    unmoved price; GNRC 2010-02-12, 0.30 unmoved; JCI 2007-07-02, 0.25 with the price up
    57%); its other splits of 1.5x or more show at least 2/3 of theirs."""
    with np.errstate(divide="ignore", invalid="ignore"):
        to_split = np.abs(np.log(ratio))  # how far the move is from the split
        to_none = np.abs(np.log(ratio * split))  # how far from no split at all
        large = np.abs(np.log(split)) >= np.log(SUSPECT_UNSHOWN_MIN_SPLIT)
    return np.asarray(large & np.isfinite(ratio) & (to_none < to_split))


def _suspect_split_with_dividend(frame: pd.DataFrame, ctx: _Ctx, prev: np.ndarray) -> None:
    """Bars with both a split and a dividend. Each can pass its own check and the pair still
    be wrong: the engine pays the dividend per post-split share, so a dividend in pre-split
    terms, or a spin-off also recorded in the split, is booked as a gain the prices never
    made (SO on 2001-04-03 in the S&P 500 file: +52% booked on a -38% price move). Only the
    data can say which it is: the examples carry the booked overnight return to judge by."""
    split = frame["split"].to_numpy()
    dividend = frame["dividend"].to_numpy()
    both = (split != 1.0) & (dividend > 0)
    if not both.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        booked = split * (frame["open"].to_numpy() + dividend) / prev - 1.0
    fields = {"split": split, "dividend": dividend, "overnight_return": booked}
    _say_suspect(frame, ctx, "split_with_dividend", both, prev, fields=fields)


def _say_suspect(
    frame: pd.DataFrame,
    ctx: _Ctx,
    kind: str,
    mask: np.ndarray,
    prev: np.ndarray,
    value: np.ndarray | None = None,
    *,
    fields: dict[str, np.ndarray] | None = None,
) -> None:
    """The rows of `mask` counted as suspect `kind`, the first few as examples: symbol, day,
    the suspect `value` (if any), the previous close and the open, then `fields` (name ->
    per-row values) where one value does not tell the story."""
    rows = np.flatnonzero(mask)
    if not rows.size:
        return
    times = frame["time"].to_numpy()
    symbols = frame["symbol"].to_numpy()
    opens = frame["open"].to_numpy()
    examples = []
    for i in rows[:_LOG_SAMPLE]:
        example: dict[str, Any] = {
            "source": ctx.source,
            "symbol": str(symbols[i]),
            "time": _fmt_time(times[i]),
        }
        if value is not None:
            example["value"] = float(value[i])
        example["previous_close"] = float(prev[i])
        example["open"] = float(opens[i])
        for name, values in (fields or {}).items():
            example[name] = float(values[i])
        examples.append(example)
    ctx.summary.suspect(kind, examples, int(rows.size))


def _suspect_jumps(frame: pd.DataFrame, ctx: _Ctx) -> None:
    """Bars of data without a split column whose open moved from the previous close as a
    split would (`SPLIT_LIKE_RATIOS`, either way): raw prices across an unrecorded split. A
    4-for-1 is under the spike limit and never reverts, so nothing else names the symbol
    and the day; real moves of that size are rare enough to be worth a look too."""
    codes = frame["_code"].to_numpy()
    prev = _shift(frame["close"].to_numpy(), codes, 1)
    opens = frame["open"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        move = opens / prev
    like = np.zeros(len(frame), dtype=bool)
    for ratio in SPLIT_LIKE_RATIOS:
        for target in (1.0 / ratio, ratio):
            like |= np.abs(move / target - 1.0) <= SPLIT_LIKE_TOLERANCE
    _say_suspect(frame, ctx, "split_like_jump", like, prev)


def _normalise_name(col: object) -> str:
    return str(col).strip().lower().replace(" ", "_").replace("-", "_")


def _map_columns(
    columns: Sequence[object],
) -> tuple[dict[object, str], list[tuple[object, object, str]]]:
    """Each recognised column's canonical name (the first of several wins), and the clashes:
    (first column, other column, canonical name) for every further column of one name. A
    "date" column beside a "time" column is one timestamp in two parts, no clash: the date is
    "time", the other "time_of_day" (joined by `_join_date_time`)."""
    names = {_normalise_name(c) for c in columns}
    split_time = {"date", "time"} <= names
    mapping: dict[object, str] = {}
    first: dict[str, object] = {}
    clashes: list[tuple[object, object, str]] = []
    for col in columns:
        name = _normalise_name(col)
        canon = TIME_OF_DAY if split_time and name == "time" else ALIASES.get(name)
        if canon is None:
            continue
        if canon in first:
            clashes.append((first[canon], col, canon))
            continue
        mapping[col] = canon
        first[canon] = col
    return mapping, clashes


def canonical_columns(columns: Sequence[object]) -> dict[object, str]:
    """Map each recognised input column to its canonical name (first match wins; validation
    refuses a table where two columns name one: see `_map_columns`)."""
    return _map_columns(columns)[0]


def recognised_columns(columns: Sequence[object]) -> list[object]:
    """Every column a load looks at: the canonical ones, and the others of a clash (so that
    validation sees, and names, both)."""
    return [c for c in columns if ALIASES.get(_normalise_name(c)) is not None]


def _refuse_clashes(columns: Sequence[object], ctx: _Ctx, symbol: str | None) -> None:
    """Two columns for one canonical name (Date beside Datetime, Close beside CLOSE): taking
    the first silently ignored the other, e.g. a Time column, so every minute of a day was one
    repeated date."""
    clashes = _map_columns(columns)[1]
    if clashes:
        a, b, canon = clashes[0]
        raise DataError(
            f"columns {str(a)!r} and {str(b)!r} both name the {canon} column; keep one "
            "(rename or drop the other). A Date column beside a Time column is read as one "
            "timestamp: date and time of day",
            source=ctx.source,
            symbol=symbol,
        )


def _join_date_time(date: pd.Series, clock: pd.Series) -> pd.Series:
    """One timestamp per row from a date and a time-of-day column ("10/26/2015" and "09:30"
    -> "10/26/2015 09:30"), as text for `_parse_times`. A row missing either part has no time
    (an error, or dropped by repair 'nan')."""
    text = (date.astype(str) + " " + clock.astype(str)).to_numpy(dtype=object)
    missing = (date.isna() | clock.isna()).to_numpy()
    return pd.Series(np.where(missing, None, text), index=date.index, dtype=object)


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


def _first(frame: pd.DataFrame, mask: np.ndarray) -> int:
    """The position of the earliest input row of `mask` (frames are re-sorted by symbol)."""
    rows = np.flatnonzero(mask)
    return int(rows[np.argmin(frame.index.to_numpy()[rows])])


def _quote(value: object) -> str:
    """repr(value), safe inside a message that is later str.format-ed."""
    return repr(value).replace("{", "{{").replace("}", "}}")


_REPAIR_HINT = re.compile(r"enable repair '([a-z_]+)'")
_REPAIR_ADVICE = re.compile(r"enable repair '[a-z_]+'.*$", re.S)


@dataclass(frozen=True)
class Advice:
    """Where a load's settings are set, for the advice its errors give: the data's keys in
    [data] (and [feed]) by default; a file with settings of its own (a benchmark: its own
    date format, no repairs) says so, instead of pointing at keys that never reach it."""

    repair: str | None = "in [data], or in [feed] for a vendor"  # None: no repairs apply
    without_repair: str = ""  # the advice instead of a repair, when `repair` is None
    date_format: str = "date_format in [data]"  # where the format is said
    date_format_key: str = "date_format"  # the key, in the example given


DATA_ADVICE = Advice()


class RowsError(DataError):
    """The DataError of a check, which names its earliest row, with `per_symbol`: the error
    as it reads for each symbol that has rows failing the check (that symbol's count and
    earliest row). `vendor.combine` drops (or refuses) every symbol's bad row from one
    validation of a universe's table; one row per validation re-validated the whole table
    for each bad row, quadratic in the symbols (500 x 300 bars, one bad row each: 115 s).
    `per_symbol` is optional so that the error survives a pickle (args only)."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        symbol: str | None = None,
        row: int | str | None = None,
        per_symbol: dict[str, DataError] | None = None,
    ) -> None:
        super().__init__(message, source=source, symbol=symbol, row=row)
        self.per_symbol = per_symbol or {}


class _Ctx:
    """Where rows came from, to name them in errors and logs."""

    def __init__(
        self,
        source: str,
        first_line: int | None,
        summary: RepairSummary,
        advice: Advice = DATA_ADVICE,
    ) -> None:
        self.source = source
        self.first_line = first_line
        self.summary = summary
        self.advice = advice
        # The data has no split column (set by `_normalise`): see `_suspect_jumps`.
        self.split_absent = False
        # The bars are daily (set by `_normalise`): see `_check_weekends`.
        self.daily = False

    def label(self, frame: pd.DataFrame, pos: int) -> int | str:
        """What a user can find: the CSV line, else the timestamp, else the input index."""
        index = frame.index[pos]
        if self.first_line is not None:
            return int(index) + self.first_line
        t = frame["time"].iat[pos]
        return f"index {index}" if pd.isna(t) else _fmt_time(t)

    def fail(
        self, frame: pd.DataFrame, mask: np.ndarray, message: str | Callable[[int], str]
    ) -> RowsError:
        """A DataError at the earliest input row of `mask`, with the error as it reads for
        each symbol of `mask` alone (`RowsError.per_symbol`: its count, its earliest row).
        `message` is a `str.format` template ({n}: the rows); a callable makes it from the
        position of the row it names, when the text quotes a value of that row."""
        rows = np.flatnonzero(mask)
        pos = _first(frame, mask)
        symbols = frame["symbol"].to_numpy()
        # Each symbol's earliest row (input order) and count, for `per_symbol`.
        ordered = rows[np.argsort(frame.index.to_numpy()[rows], kind="stable")]
        named = pd.Series(symbols[ordered])
        known = named.notna().to_numpy()
        keys = named[known].astype(str).to_numpy()
        counts = Counter(keys.tolist())
        firsts = dict(zip(keys[::-1].tolist(), ordered[known][::-1].tolist(), strict=True))
        per_symbol = {
            sym: DataError(
                self._text(message, counts[sym], at),
                source=self.source,
                symbol=sym,
                row=self.label(frame, at),
            )
            for sym, at in firsts.items()
        }
        return RowsError(
            self._text(message, len(rows), pos),
            source=self.source,
            symbol=str(symbols[pos]),
            row=self.label(frame, pos),
            per_symbol=per_symbol,
        )

    def _text(self, message: str | Callable[[int], str], n: int, pos: int) -> str:
        """`message` for `n` rows, the first at `pos`, with the advice where it applies."""
        text = (message(pos) if callable(message) else message).format(n=n, pos=pos)
        where = self.advice.repair
        if where is None:  # no repair reaches these rows: the whole advice is another
            text = _REPAIR_ADVICE.sub(self.advice.without_repair, text, count=1)
        else:  # where a repair is enabled: the messages named the repair, not the key
            text = _REPAIR_HINT.sub(
                lambda m: f'{m.group(0)} (repair = ["{m.group(1)}"] {where})', text, count=1
            )
        return text

    def log_repair(
        self,
        what: str,
        frame: pd.DataFrame,
        mask: np.ndarray,
        *,
        detail: np.ndarray | None = None,
        **kw: object,
    ) -> None:
        """One debug line per symbol with the count and the first few rows of `mask`, counted
        in the load's summary.

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
            self.summary.add(what, int(count))
            log.debug("data.repair", **fields, **kw)


def _to_utc(text: pd.Index, date_format: str = "") -> tuple[pd.DatetimeIndex, bool]:
    """Parse distinct time strings to UTC instants (NaT where unparseable). Naive strings are
    read as UTC here: the caller keeps only their wall time. `date_format` (strftime) is the
    only format tried when given. Also returns whether values were read one by one, each with
    a format of its own (see `_day_month_clash`)."""
    if date_format:
        return pd.DatetimeIndex(
            pd.to_datetime(text, utc=True, errors="coerce", format=date_format)
        ), False
    t = pd.to_datetime(text, utc=True, errors="coerce")
    if not t.isna().any():
        return pd.DatetimeIndex(t), False
    # The format is inferred from the first value; retry allowing mixed ones.
    return pd.DatetimeIndex(pd.to_datetime(text, utc=True, errors="coerce", format="mixed")), True


# A numeric date with the day or the month first: 02/01/2014, 13.01.2014, 1-2-14 (then anything).
# A control character (C0, DEL, C1) in a symbol: no ticker has one, the order a broker gets
# would carry it, and PostgreSQL refuses a NUL in text ("UntranslatableCharacterError",
# naming nothing) where SQLite takes it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DAY_MONTH = re.compile(r"\s*(\d{1,2})([./-])(\d{1,2})\2(?:\d{4}|\d{2})(?!\d)")


def _day_month_clash(text: pd.Index) -> tuple[np.ndarray, np.ndarray] | None:
    """Per distinct string, when value-by-value parsing read some dates day first and others
    month first: (can only be day first, read month first though it could be either or must
    be). Such a file is day-first whose first date was ambiguous (02/01/2014: the format
    inferred from it is month first, 13/01 does not fit it, and each value is then read on
    its own, month first where it can): Jan 2 became Feb 1, Jan 13 stayed Jan 13, and repair
    'order' sorted the mix into a run on weekends. None when the readings agree."""
    first = np.zeros(len(text), dtype=np.int64)
    second = np.zeros(len(text), dtype=np.int64)
    for i, value in enumerate(text):
        m = _DAY_MONTH.match(value)
        if m is not None:
            first[i], second[i] = int(m.group(1)), int(m.group(3))
    shaped = (first >= 1) & (second >= 1)
    day_first = shaped & (first > 12) & (second <= 12)
    month_first = shaped & (first <= 12) & (first != second) & (second <= 31)
    if day_first.any() and month_first.any():
        return day_first, month_first
    return None


def _refuse_day_month_clash(
    text: pd.Index,
    codes: np.ndarray,
    clash: tuple[np.ndarray, np.ndarray],
    ctx: _Ctx,
    frame_for_errors: pd.DataFrame,
) -> DataError:
    """The error for `_day_month_clash`: the first day-first row, a row read month first, and
    the formats to choose from."""
    from pandas.tseries.api import guess_datetime_format

    present = codes >= 0

    def rows_of(uniq: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(codes), dtype=bool)
        mask[present] = uniq[codes[present]]
        return mask

    day_first, month_first = (rows_of(u) for u in clash)
    other = _first(frame_for_errors, month_first)
    d_value = text[codes[_first(frame_for_errors, day_first)]]
    m_value = text[codes[other]]
    day_fmt = guess_datetime_format(d_value, dayfirst=True) or "%d/%m/%Y"
    month_fmt = guess_datetime_format(m_value, dayfirst=False) or "%m/%d/%Y"
    return ctx.fail(
        frame_for_errors,
        day_first,
        f"{{n}} row(s) with a date that can only be day first, first {_quote(d_value)}, in a "
        f"file whose dates would otherwise be read month first, e.g. {_quote(m_value)} (row "
        f"{ctx.label(frame_for_errors, other)}): the day and month order is a guess, made two "
        f"ways in one file; say the file's format with {ctx.advice.date_format}, e.g. "
        f"{ctx.advice.date_format_key} = {_quote(day_fmt)} (day first) or {_quote(month_fmt)} "
        "(month first)",
    )


def _has_offset(text: str) -> bool:
    try:
        return pd.Timestamp(text).tzinfo is not None
    except (ValueError, TypeError, OverflowError):
        return False


def _offsets(text: pd.Index, parsed: pd.DatetimeIndex) -> np.ndarray:
    """Per distinct string: whether it carries a UTC offset (or a zone)."""
    ok = ~parsed.isna()
    probe: pd.DatetimeIndex | None = None
    try:
        probe = pd.DatetimeIndex(pd.to_datetime(text, errors="coerce"))
        if (probe.isna() & ok).any():  # some values did not fit the inferred format
            probe = pd.DatetimeIndex(pd.to_datetime(text, errors="coerce", format="mixed"))
    except (ValueError, TypeError):  # "Mixed timezones detected": decide value by value
        probe = None
    if probe is None:
        return np.array([_has_offset(v) for v in text], dtype=bool)
    return np.full(len(text), probe.tz is not None, dtype=bool)


def _to_exchange(
    utc: np.ndarray, tz: str, ctx: _Ctx, frame_for_errors: pd.DataFrame, raw: pd.Series
) -> np.ndarray:
    """UTC instants (datetime64[ns], NaT allowed) -> naive wall times in `tz`; two distinct
    instants on the same wall time are an error at the later one in input order."""
    local = (
        pd.DatetimeIndex(utc).tz_localize("UTC").tz_convert(tz).tz_localize(None).to_numpy()
    ).astype("datetime64[ns]")
    u = utc.view("int64")
    lt = local.view("int64")
    if len(pd.unique(lt)) < len(pd.unique(u)):
        pairs = pd.DataFrame({"l": lt, "u": u})
        first = pairs.groupby("l", sort=False)["u"].transform("first").to_numpy()
        bad = (u != first) & ~np.isnat(utc)
        pos = _first(frame_for_errors, bad)
        raise ctx.fail(
            frame_for_errors.assign(time=local),
            bad,
            f"{{n}} row(s) whose time collides with another row's after conversion to {tz} "
            f"(distinct instants on the same wall time, e.g. the repeated hour when daylight "
            f"saving ends), first {_quote(raw.iat[pos])}",
        )
    return local


# The times as written, each in its own offset (naive datetime64[ns]): asked for by
# `_label_bars` for daily bars only, as parsing text value by value costs.
Written = Callable[[], np.ndarray]


def _parse_times(
    raw: pd.Series, ctx: _Ctx, frame_for_errors: pd.DataFrame, tz: str, date_format: str = ""
) -> tuple[pd.Series, np.ndarray | None, Written | None]:
    """datetime64[ns], naive wall time of the exchange (`tz`); see the module docstring. With
    it, for times with an offset, the UTC instants and the times as written (else None).
    `date_format` (strftime) reads text times; "" infers it."""
    dtype = raw.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        utc = raw.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ns]")
        wall = _to_exchange(utc, tz, ctx, frame_for_errors, raw)

        def written_tz() -> np.ndarray:
            return raw.dt.tz_localize(None).to_numpy().astype("datetime64[ns]")

        return pd.Series(wall, index=raw.index), utc, written_tz
    if pd.api.types.is_datetime64_dtype(dtype):
        return raw.astype("datetime64[ns]"), None, None
    if pd.api.types.is_numeric_dtype(dtype) and not raw.isna().all():
        raise DataError(
            f"time column has numeric type {dtype}; expected dates or date-times as text",
            source=ctx.source,
        )
    # Text (or objects): parse each distinct value once.
    codes, uniq = pd.factorize(raw, use_na_sentinel=True)
    text = pd.Index([str(v) for v in uniq], dtype=object)
    parsed, guessed = _to_utc(text, date_format)
    bad_uniq = np.asarray(parsed.isna())
    if bad_uniq.any():
        bad = (codes >= 0) & bad_uniq[np.maximum(codes, 0)]
        pos = _first(frame_for_errors, bad)
        how = f" (date_format {_quote(date_format)})" if date_format else ""
        raise ctx.fail(
            frame_for_errors,
            bad,
            f"{{n}} row(s) with an unparseable time{how}, first {_quote(raw.iat[pos])}",
        )
    clash = _day_month_clash(text) if guessed else None
    if clash is not None:
        raise _refuse_day_month_clash(text, codes, clash, ctx, frame_for_errors)
    present = codes >= 0
    utc_uniq = parsed.tz_localize(None).to_numpy().astype("datetime64[ns]")
    utc = np.full(len(raw), np.datetime64("NaT"), dtype="datetime64[ns]")
    utc[present] = utc_uniq[codes[present]]
    if date_format:  # the format says whether the times carry an offset
        offset_uniq = np.full(len(text), "%z" in date_format or "%Z" in date_format)
    else:
        offset_uniq = _offsets(text, parsed) if len(text) else np.zeros(0, dtype=bool)
    if not offset_uniq.any():  # naive: the wall time as written
        return pd.Series(utc, index=raw.index), None, None
    if not offset_uniq.all():
        has = np.zeros(len(raw), dtype=bool)
        has[present] = offset_uniq[codes[present]]
        first = _first(frame_for_errors, present)
        mismatch = present & (has != has[first])
        pos = _first(frame_for_errors, mismatch)
        raise ctx.fail(
            frame_for_errors,
            mismatch,
            f"{{n}} row(s) {'without' if has[first] else 'with'} a UTC offset, first "
            f"{_quote(raw.iat[pos])}, in a file whose first time {_quote(raw.iat[first])} has "
            f"{'one' if has[first] else 'none'}; write every time of a file the same way",
        )
    wall = _to_exchange(utc, tz, ctx, frame_for_errors, raw)

    def written_text() -> np.ndarray:
        out = np.full(len(raw), np.datetime64("NaT"), dtype="datetime64[ns]")
        out[present] = _as_written(text, date_format)[codes[present]]
        return out

    return pd.Series(wall, index=raw.index), utc, written_text


def _as_written(text: pd.Index, date_format: str = "") -> np.ndarray:
    """Per distinct time string with an offset: its wall time in that offset, as written
    (naive datetime64[ns]; NaT where it cannot be read alone). Value by value: pandas reads
    mixed offsets only as UTC instants."""

    def one(value: str) -> np.datetime64:
        try:
            t = pd.to_datetime(value, format=date_format) if date_format else pd.Timestamp(value)
            return np.datetime64(t.tz_localize(None).as_unit("ns"), "ns")
        except (ValueError, TypeError, OverflowError):
            return np.datetime64("NaT", "ns")

    return np.array([one(v) for v in text], dtype="datetime64[ns]")


INTERVALS = ("auto", "1d", "intraday")


def _label_bars(
    wall: pd.Series,
    utc: np.ndarray | None,
    symbols: pd.Series,
    tz: str,
    interval: str,
    ctx: _Ctx,
    frame_for_errors: pd.DataFrame,
    written: Written | None = None,
) -> tuple[pd.Series, bool]:
    """Bar labels as the engine uses them: a daily bar is its session date at 00:00 (whatever
    time of day the source stamped it with: New York midnight, the 09:30 open, the close; a
    symbol stamped at 00:00 in its own offset is dated as written, see `_midnight_dates`); an
    intraday bar is its start instant in UTC. `interval="auto"` (files) calls a table daily
    when no symbol has two bars on one exchange date; vendor feeds say which they serve.
    Returns the labels and whether they are daily."""
    t = wall.to_numpy()
    codes = pd.factorize(symbols)[0]
    daily = not _two_times_a_day(codes, t) if interval == "auto" else interval == "1d"
    if daily:
        dates = t.astype("datetime64[D]")
        if written is not None:
            dates = _midnight_dates(dates, written(), codes)
        return pd.Series(dates.astype("datetime64[ns]"), index=wall.index), True
    if utc is not None:
        return pd.Series(utc, index=wall.index), False
    # Naive intraday times are the exchange's wall time: to UTC; a wall time that does not
    # exist or exists twice (daylight-saving switches) cannot be placed and is an error.
    local = pd.DatetimeIndex(t).tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    out = local.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[ns]")
    bad = np.isnat(out) & ~np.isnat(t)
    if bad.any():
        raise ctx.fail(
            frame_for_errors,
            bad,
            f"{{n}} intraday row(s) whose wall time in {tz} is ambiguous or does not exist "
            "(a daylight-saving switch); write intraday times with a UTC offset",
        )
    return pd.Series(out, index=wall.index), False


def _midnight_dates(dates: np.ndarray, written: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Daily dates, where a symbol's every bar is stamped at 00:00 in its own offset, taken as
    written: such a stamp is a date label (2015-01-02T00:00:00+00:00 is how tradingd's own
    equity.csv and Tiingo write a day), not an instant to convert. Converted to New York it
    was 19:00 the day before, so every bar was labelled a day early (2015-01-01, a holiday;
    Sundays), and next to plain-date files each symbol missed every other's days. Stamps at
    another time of day (the close, 21:00Z) are instants, converted as before."""
    present = ~np.isnat(written)
    midnight = present & (written == written.astype("datetime64[D]"))
    if not midnight.any():
        return dates
    off = np.bincount(codes[present & ~midnight], minlength=int(codes.max()) + 1)
    as_written = midnight & (off[codes] == 0)
    return np.where(as_written, written.astype("datetime64[D]"), dates)


def _two_times_a_day(codes: np.ndarray, t: np.ndarray) -> bool:
    """Whether some symbol (`codes`: one integer per symbol) has two distinct times on one
    date. A repeated timestamp is a duplicate row (its own check), not a sign of intraday
    data; missing times (NaT) are left out.

    Why sorting integers: the same question asked of a (symbol text, date, time) DataFrame
    with drop_duplicates/duplicated took 1.1 s and ~200 MB for the 2.1 million rows of the
    S&P 500 file (every symbol made a Python string, every row hashed); this takes 0.2 s."""
    present = ~np.isnat(t)
    c = codes[present]
    x = t[present].astype("datetime64[ns]").view("int64")
    d = t[present].astype("datetime64[D]").view("int64")
    order = np.lexsort((x, d, c))
    c, d, x = c[order], d[order], x[order]
    distinct = np.ones(len(c), dtype=bool)  # the first row of each (symbol, date, time)
    distinct[1:] = (c[1:] != c[:-1]) | (d[1:] != d[:-1]) | (x[1:] != x[:-1])
    c, d = c[distinct], d[distinct]
    return bool(np.any((c[1:] == c[:-1]) & (d[1:] == d[:-1])))


def _time_bound(value: str, *, end: bool, tz: str) -> np.datetime64:
    """A start/end bound of daily labels (session dates, naive): a date is its session, a
    time with an offset is read in the exchange's zone `tz`."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert(tz).tz_localize(None)
    if end and ts == ts.normalize():  # a date: include the whole day
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return np.datetime64(ts.to_datetime64(), "ns")


def session_bound(
    value: str, *, end: bool, zone: str, evening_start: time | None = None
) -> np.datetime64:
    """`run.start` (end=False: the first label kept) or `run.end` (end=True: the last label
    kept, inclusive) as a bound of intraday bar labels (naive UTC, as they are stored).

    A date is a session day of the run's exchange calendar: the bars from 00:00 in its zone
    `zone` (live.calendar's) through the day's end, or, where sessions open the evening
    before their date (`evening_start`: CMES's 17:00 Chicago), from that time the day
    before up to it on the date. A time without an offset is the exchange's wall time; one
    with an offset is that instant. Not data.timezone, which only reads the data's naive
    timestamps: the load read run.start/run.end in it and trading as UTC days, so an XASX
    session (23:00 UTC the day before) had its first bars of run.start loaded but only warmed
    up on, and the first bars of the day after run.end stepped in an accelerated replay."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:  # an instant
        return np.datetime64(ts.tz_convert("UTC").tz_localize(None).to_datetime64(), "ns")
    if ts == ts.normalize():  # a date: its session day
        day = ts + pd.Timedelta(days=1) if end else ts
        if evening_start is not None:
            day = (
                day
                - pd.Timedelta(days=1)
                + pd.Timedelta(
                    hours=evening_start.hour,
                    minutes=evening_start.minute,
                    seconds=evening_start.second,
                )
            )
        bound = _localised(day, zone)
        if end:
            bound = bound - pd.Timedelta(1, "ns")
    else:
        bound = _localised(ts, zone)
    return np.datetime64(bound.tz_convert("UTC").tz_localize(None).to_datetime64(), "ns")


def _localised(wall: pd.Timestamp, zone: str) -> pd.Timestamp:
    """`wall` in `zone`; a wall time skipped by a change to summer time is the instant after
    the gap, and one repeated by the change back is its first (summer-time) instant."""
    return wall.tz_localize(zone, ambiguous=True, nonexistent="shift_forward")


def _normalise(
    df: pd.DataFrame,
    *,
    ctx: _Ctx,
    symbol: str | None,
    start: str | None,
    end: str | None,
    tz: str,
    interval: str = "auto",
    corporate_actions: bool = True,
    date_format: str = "",
    session_tz: str = "",
    evening_start: time | None = None,
) -> pd.DataFrame:
    """Canonical columns and types, filtered by date, stably sorted by symbol. Intraday
    bars are kept from run.start's session day to run.end's in `session_tz` (the run
    calendar's zone, "" = `tz`; `session_bound`), daily bars by their session dates."""
    if find_column(df, "time") is None and isinstance(df.index, pd.DatetimeIndex):
        df = df.reset_index()
    _refuse_clashes(list(df.columns), ctx, symbol)
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
    if TIME_OF_DAY in src:
        src["time"] = _join_date_time(src["time"], src.pop(TIME_OF_DAY))
    out = pd.DataFrame(index=df.index)
    out["time"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    if symbol is None:
        sym = src["symbol"]
        if sym.isna().any():
            probe = out.assign(symbol="?")
            raise ctx.fail(probe, sym.isna().to_numpy(), "{n} row(s) without a symbol")
        text = sym.astype(str)
        blank = (text.str.strip() != text) | (text == "")
        if blank.any():
            # " XOM " traded as a symbol of its own (beside "XOM", or unknown to the broker).
            raise ctx.fail(
                out.assign(symbol=text.map(repr).to_numpy()),
                blank.to_numpy(),
                "{n} row(s) whose symbol is empty or has spaces around it: correct the file "
                "(a symbol is the ticker alone)",
            )
        # Per distinct symbol, not per row: a long table repeats each a few thousand times.
        control = [u for u in text.unique() if _CONTROL.search(str(u))]
        if control:
            raise ctx.fail(
                out.assign(symbol=text.map(repr).to_numpy()),
                text.isin(control).to_numpy(),
                "{n} row(s) whose symbol holds a control character (shown as Python writes "
                "it, e.g. '\\x00'): correct the file (a symbol is the ticker alone)",
            )
        # Tickers are case-insensitive: "aapl" and "AAPL" rows loaded two symbols. (The
        # column's unique values, not via to_numpy(): 2 million Python strings, 0.3 s.)
        groups: dict[str, list[str]] = {}
        for name in text.unique():
            groups.setdefault(str(name).upper(), []).append(str(name))
        both = sorted(sorted(g) for g in groups.values() if len(g) > 1)
        if both:
            twice = {n for g in both for n in g}
            raise ctx.fail(
                out.assign(symbol=text.to_numpy()),
                text.isin(twice).to_numpy(),
                f"{{n}} row(s) of one ticker written in other cases ({both[0]}"
                f"{' and more' if len(both) > 1 else ''}): write each symbol one way",
            )
        out["symbol"] = text.array
    else:
        if _CONTROL.search(symbol):
            raise DataError(
                f"the symbol {symbol!r}, taken from the file's name, holds a control "
                "character: rename the file (its name is the ticker and the suffix alone)",
                source=ctx.source,
            )
        out["symbol"] = symbol
        if "symbol" in src:
            other = (src["symbol"].astype(str) != symbol).to_numpy()
            if other.any():
                raise ctx.fail(
                    out.assign(symbol=src["symbol"].astype(str).to_numpy()),
                    other,
                    f"{{n}} row(s) of another symbol in the file for {symbol!r}",
                )
    wall, utc, written = _parse_times(src["time"], ctx, out, tz, date_format)
    out["time"], daily = _label_bars(wall, utc, out["symbol"], tz, interval, ctx, out, written)
    ctx.daily = daily
    for name in (*PRICE_COLUMNS, "volume"):
        out[name] = pd.to_numeric(src[name], errors="coerce").astype("float64")
    absent = [name for name in ("split", "dividend") if name not in src]
    for name, default in (("split", 1.0), ("dividend", 0.0)):
        if name in src:
            out[name] = pd.to_numeric(src[name], errors="coerce").astype("float64")
        else:
            out[name] = default
    ctx.split_absent = corporate_actions and "split" in absent
    if absent and corporate_actions and len(out):
        ctx.summary.suspect(
            "no_corporate_actions",
            [{"source": ctx.source, "symbol": symbol, "missing_columns": absent}],
        )

    codes, names = pd.factorize(out["symbol"], sort=True)
    if start is not None or end is not None:
        t = out["time"].to_numpy()
        keep = np.ones(len(out), dtype=bool)
        for value, is_end in ((start, False), (end, True)):
            if value is None:
                continue
            if daily:  # a daily bar's label is its session date
                bound = _time_bound(value, end=is_end, tz=tz)
            else:
                bound = session_bound(
                    value, end=is_end, zone=session_tz or tz, evening_start=evening_start
                )
            keep &= (t <= bound) if is_end else (t >= bound)
        keep |= np.isnat(t)  # a missing time is a data problem, not out of range
        if not keep.all():
            kept = np.bincount(codes[keep], minlength=len(names)) > 0
            if not kept.all():
                _say_outside_window(ctx, names, codes, t, kept, start, end)
            # The kept symbols' codes numbered 0.. again, in the same (sorted) order.
            codes = (np.cumsum(kept) - 1)[codes[keep]]
            out = out[keep]

    if len(codes) > 1 and np.any(codes[1:] < codes[:-1]):
        order = np.argsort(codes, kind="stable")
        out = out.iloc[order]
        codes = codes[order]
    out["_code"] = codes
    return out


def _say_outside_window(
    ctx: _Ctx,
    names: Any,
    codes: np.ndarray,
    t: np.ndarray,
    kept: np.ndarray,
    start: str | None,
    end: str | None,
) -> None:
    """Symbols with bars, none of them in the window (`kept` False): they would leave the
    run without a word (CHTR, first bar 2010-01-05, in a run ending 2009-12-31 made a run
    of 9 symbols out of the 10 asked for). Each is named (`no_bars_in_window`) with its
    first and last bar, so the operator sees the universe shrink. Their rows have no
    missing time: those are kept by the window."""
    gone = ~kept[codes]
    first = np.full(len(names), np.iinfo(np.int64).max)
    last = np.full(len(names), np.iinfo(np.int64).min)
    tv = t.view("int64")
    np.minimum.at(first, codes[gone], tv[gone])
    np.maximum.at(last, codes[gone], tv[gone])
    examples = [
        {
            "source": ctx.source,
            "symbol": str(names[c]),
            "first_bar": _fmt_time(np.datetime64(int(first[c]), "ns")),
            "last_bar": _fmt_time(np.datetime64(int(last[c]), "ns")),
            "start": None if start is None else str(start),
            "end": None if end is None else str(end),
        }
        for c in np.flatnonzero(~kept)
    ]
    ctx.summary.suspect("no_bars_in_window", examples)


def _check_values(
    frame: pd.DataFrame, ctx: _Ctx, repairs: frozenset[str], max_volume: float
) -> pd.DataFrame:
    # nan: time, OHLC and volume must be present and finite.
    cols = (*PRICE_COLUMNS, "volume")
    values = {c: frame[c].to_numpy() for c in cols}
    bad_cols = {c: ~np.isfinite(v) for c, v in values.items()}
    bad_cols["time"] = np.isnat(frame["time"].to_numpy())
    nan = np.logical_or.reduce(list(bad_cols.values()))
    if nan.any():
        if "nan" not in repairs:

            def not_numeric(pos: int) -> str:
                which = [c for c, m in bad_cols.items() if m[pos]]
                return (
                    f"{{n}} row(s) with a missing or non-numeric value, first in {which}; "
                    "enable repair 'nan' to drop them"
                )

            raise ctx.fail(frame, nan, not_numeric)
        ctx.log_repair("nan", frame, nan, action="dropped")
        frame = frame[~nan]

    # non_positive: prices > 0, volume >= 0 (zero volume is legal).
    # Column by column (not a (rows, 4) copy of the prices): see `_spikes` on memory.
    price_bad = np.zeros(len(frame), dtype=bool)
    for column in PRICE_COLUMNS:
        price_bad |= frame[column].to_numpy() <= 0
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

    # volume: an absurd volume (e.g. 1e300) would overflow the models' inputs.
    if max_volume:
        bad = frame["volume"].to_numpy() > max_volume
        if bad.any():
            if "volume" not in repairs:
                volumes = frame["volume"].to_numpy()
                raise ctx.fail(
                    frame,
                    bad,
                    lambda pos: (
                        f"{{n}} row(s) with a volume above {max_volume:g}, first "
                        f"{volumes[pos]:g}; enable repair 'volume' to drop them"
                    ),
                )
            ctx.log_repair(
                "volume", frame, bad, detail=frame["volume"].to_numpy(), action="dropped"
            )
            frame = frame[~bad]
    frame = _check_whole_volumes(frame, ctx, repairs)

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
    absurd = (split < SPLIT_MIN) | (split > SPLIT_MAX)
    if absurd.any():
        raise ctx.fail(
            frame,
            absurd,
            lambda pos: (
                f"{{n}} row(s) with a split coefficient outside [1/{1 / SPLIT_MIN:g}, "
                f"{SPLIT_MAX:g}], first {float(split[pos]):g}: no split is that large (check "
                "the column; a share count multiplied by it is not a position)"
            ),
        )
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


def _check_whole_volumes(frame: pd.DataFrame, ctx: _Ctx, repairs: frozenset[str]) -> pd.DataFrame:
    """Volumes must be whole shares (1234.0 is; 1234.5 is not). A fractional count passed
    into the volume features and the fills' volume caps as if it were shares that traded;
    it is a corrupt cell, a unit mix-up or an adjusted count beside raw prices, and which
    one only the source can say: refused, or with repair 'volume' dropped (no rounding
    invents the shares)."""
    volumes = frame["volume"].to_numpy()
    bad = np.abs(volumes - np.round(volumes)) > WHOLE_VOLUME_TOLERANCE
    if not bad.any():
        return frame
    times = frame["time"].to_numpy()
    if "volume" not in repairs:
        raise ctx.fail(
            frame,
            bad,
            lambda pos: (
                f"{{n}} row(s) whose volume is not a whole number of shares, first "
                f"{float(volumes[pos])!r} on {_fmt_time(times[pos])}: the volume column "
                "must be raw share counts (not thousands, lots, or split-adjusted counts "
                "beside raw prices); enable repair 'volume' to drop them"
            ),
        )
    ctx.log_repair("volume", frame, bad, detail=volumes, action="dropped: not whole shares")
    return frame[~bad]


def _check_weekends(frame: pd.DataFrame, ctx: _Ctx, repairs: frozenset[str]) -> pd.DataFrame:
    """Daily bars dated on a Saturday or a Sunday. No exchange these feeds serve holds a
    session then: such a bar is a date shifted by a time zone (a Monday bar stamped at
    Sunday 20:00 New York), or a bar of another calendar, and it passed unremarked into
    the features as a session of its own. Refused, or with repair 'weekend' dropped.

    A weekday check, not an exchange calendar (exchange_calendars' XNYS): it is one integer
    operation per row (the S&P 500 file's 2.1 million rows in milliseconds), while building
    the calendar and matching its sessions added ~0.75 s to a load of ~1 s, and a holiday
    bar is a matter of the exchange (`data.timezone` is not one) and of the vendor (a
    vendor that posts a row for an unscheduled closing), not a sure error."""
    if not ctx.daily or frame.empty:
        return frame
    days = frame["time"].to_numpy().astype("datetime64[D]").view("int64")
    weekday = (days + _EPOCH_WEEKDAY) % 7
    bad = weekday >= 5
    if not bad.any():
        return frame
    times = frame["time"].to_numpy()
    if "weekend" not in repairs:
        raise ctx.fail(
            frame,
            bad,
            lambda pos: (
                f"{{n}} daily bar(s) dated on a Saturday or a Sunday, first "
                f"{_fmt_time(times[pos])} (a {_WEEKDAY_NAMES[int(weekday[pos])]}): no "
                "session is held then (a date shifted by a time zone, or another "
                "calendar's bar); enable repair 'weekend' to drop them"
            ),
        )
    detail = np.asarray(_WEEKDAY_NAMES, dtype=object)[weekday]
    ctx.log_repair("weekend", frame, bad, detail=detail, action="dropped")
    return frame[~bad]


def session_days(times: np.ndarray, tz: str) -> np.ndarray:
    """Per intraday bar label (its start in UTC, naive datetime64[ns]): its session, the
    exchange date of that start in `tz` (days since 1970-01-01), as `_two_times_a_day` dates
    the wall times it reads and `LiveClock.session_day` an intraday label."""
    local = pd.DatetimeIndex(times).tz_localize("UTC").tz_convert(tz).tz_localize(None)
    return np.asarray(local.to_numpy().astype("datetime64[D]").view("int64"))


def _check_session_actions(
    frame: pd.DataFrame, ctx: _Ctx, repairs: frozenset[str], tz: str
) -> pd.DataFrame:
    """Intraday bars: a split, or a dividend, on more than one bar of a symbol's session.
    An action belongs to its ex-date, once; the engine books it on every bar that carries
    it. A daily action table joined onto 5-minute bars put the dividend on all 78 bars of
    the ex-date (booked 78 times: +13,007.60 of cash that was never paid) and a 2-for-1 on
    all 78 (the position doubled 78 times), without a word. Refused, naming the session and
    how many bars carry it; with repair 'repeated_actions' kept on the session's first bar
    that carries it (as Yahoo's intraday answers place their actions) and reset on the
    others, logged. `frame` is sorted by symbol, then time (`_check_time`)."""
    if ctx.daily or frame.empty:
        return frame
    split = frame["split"].to_numpy()
    dividend = frame["dividend"].to_numpy()
    carried = {"split": split != 1.0, "dividend": dividend > 0}
    if not any(mask.sum() > 1 for mask in carried.values()):
        return frame
    codes = frame["_code"].to_numpy()
    sessions = session_days(frame["time"].to_numpy(), tz)
    later: dict[str, np.ndarray] = {}  # per action: a bar after its session's first with it
    bars: dict[str, np.ndarray] = {}  # per action and row: its session's bars carrying it
    for action, mask in carried.items():
        rows = np.flatnonzero(mask)
        keys = pd.DataFrame({"code": codes[rows], "session": sessions[rows]})
        repeated = np.zeros(len(frame), dtype=bool)
        repeated[rows] = keys.duplicated(keep="first").to_numpy()
        later[action] = repeated
        bars[action] = np.zeros(len(frame), dtype=np.int64)
        bars[action][rows] = keys.groupby(["code", "session"])["code"].transform("size")
    values = {"split": split, "dividend": dividend}
    first = next((a for a, repeated in later.items() if repeated.any()), None)
    if first is not None and "repeated_actions" not in repairs:
        value, count = values[first], bars[first]

        def message(pos: int) -> str:
            return (
                f"{{n}} intraday bar(s) repeating a {first} already on an earlier bar of "
                f"their session, first in the session of {_fmt_day(sessions[pos])}, where "
                f"{int(count[pos])} bars carry a {first} (this bar's: {float(value[pos]):g}): "
                "an action goes ex once, and each bar that carries it books it again (a "
                "daily action table joined onto intraday bars?); put it on the session's "
                "first bar only, or enable repair 'repeated_actions' to keep it there and "
                "reset the others"
            )

        raise ctx.fail(frame, later[first], message)
    either = later["split"] | later["dividend"]
    detail = np.empty(len(frame), dtype=object)
    for i in np.flatnonzero(either):
        parts = [
            f"{a} {float(values[a][i]):g} ({int(bars[a][i])} bars)"
            for a in ("split", "dividend")
            if later[a][i]
        ]
        detail[i] = f"session {_fmt_day(sessions[i])}: {', '.join(parts)}"
    ctx.log_repair(
        "repeated_actions",
        frame,
        either,
        detail=detail,
        action="reset: split 1.0, dividend 0.0; kept on the session's first bar carrying it",
    )
    return frame.assign(
        split=np.where(later["split"], 1.0, split),
        dividend=np.where(later["dividend"], 0.0, dividend),
    )


def _fmt_day(day: Any) -> str:
    """A session (days since 1970-01-01) as YYYY-MM-DD."""
    return str(np.datetime64(int(day), "D"))


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


def _shift(values: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """values[i - k] where row i - k is the same symbol as row i, else NaN (k < 0: ahead)."""
    out = np.full(len(values), np.nan)
    n = len(values)
    if abs(k) >= n:
        return out
    if k > 0:
        out[k:] = np.where(codes[k:] == codes[:-k], values[:-k], np.nan)
    else:
        out[:k] = np.where(codes[:k] == codes[-k:], values[-k:], np.nan)
    return out


def _spikes(
    frame: pd.DataFrame, max_spike: float, open_end: bool = False, open_start: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per row and price column: whether the price is an outlier of a one-bar spike; and per
    row the reference close (the previous close in the row's share basis, else the next).

    A price is an outlier when it is more than `max_spike` times above, or below 1/`max_spike`
    of, two neighbouring closes: the previous and the next one; for the first (last) bar of a
    symbol, the next (previous) two, so a spike on the second bar does not make the first one
    look like a spike. A symbol with fewer than three bars is not checked. `open_end`: the
    last bar of each symbol is never flagged (the newest bar of a live answer: judged against
    its two predecessors, a jump from a bar that had itself moved passed while a bad tick
    after a move did not, and a bar the next one would confirm was refused or repaired; the
    live feed holds a jump back until the next bar shows which it is). `open_start`: the
    first bar of each symbol is never flagged either (the first bar of a live answer's
    window: the bar before it is outside the window, and judged against the two bars after
    it, the bar before a gap that held, served and traded, was dropped or restated once a
    later window started at it; the feed fetches one bar more, which is the neighbour of
    the window's first bar, and then judges that one as a backtest of the whole history).
    """
    # Memory: every intermediate is one float per row (17 MB for the 2.1 million rows of the
    # S&P 500 file); they are dropped as soon as used, and the price columns are checked one
    # at a time, not as (rows, 4) matrices: this check was the load's peak (+360 MB).
    codes = frame["_code"].to_numpy()
    close = frame["close"].to_numpy()
    split = frame["split"].to_numpy()
    # A split coefficient s on a bar divides its prices by s: compare like with like, in the
    # share basis of the row being checked.
    split_next = _shift(split, codes, -1)
    prev1 = _shift(close, codes, 1) / split
    next1 = _shift(close, codes, -1) * split_next
    has_prev, has_next = ~np.isnan(prev1), ~np.isnan(next1)
    a = np.where(has_prev, prev1, next1)
    del prev1
    prev2 = _shift(close, codes, 2) / (split * _shift(split, codes, 1))
    next2 = _shift(close, codes, -2) * split_next * _shift(split, codes, -2)
    del split_next
    b = np.where(has_prev & has_next, next1, np.where(has_prev, prev2, next2))
    if open_end:
        b[has_prev & ~has_next] = np.nan  # NaN compares False: the newest bar is never flagged
    if open_start:
        b[~has_prev & has_next] = np.nan  # the first bar: a neighbour only, never flagged
    del prev2, next1, next2, has_prev, has_next
    low_bound = 1.0 / max_spike
    outlier = np.empty((len(frame), len(PRICE_COLUMNS)), dtype=bool)
    for k, column in enumerate(PRICE_COLUMNS):
        price = frame[column].to_numpy(dtype=np.float64)
        to_a = price / a
        to_b = price / b
        # NaN (a missing neighbour) compares False: never flagged.
        outlier[:, k] = (np.minimum(to_a, to_b) > max_spike) | (np.maximum(to_a, to_b) < low_bound)
    return outlier, a


# With `open_end`: the column naming each symbol's newest bar that jumps (see `_newest_jumps`).
JUMP_FROM = "jump_from"


def _newest_jumps(frame: pd.DataFrame, max_spike: float) -> np.ndarray:
    """Per row: for the last bar of each symbol, the previous close (in the bar's share
    basis, as `_spikes` reads it, before any repair) when one of the bar's prices is more
    than `max_spike` times above or below it; NaN otherwise. The one side of the spike rule
    the newest bar can be judged on: a bar within it is never flagged once its next bar is
    known, whatever that bar is (a flag needs both sides)."""
    codes = frame["_code"].to_numpy()
    close = frame["close"].to_numpy()
    prev = _shift(close, codes, 1) / frame["split"].to_numpy()
    last = np.isnan(_shift(close, codes, -1))
    jump = np.zeros(len(frame), dtype=bool)
    if max_spike:
        for column in PRICE_COLUMNS:
            ratio = frame[column].to_numpy(dtype=np.float64) / prev
            jump |= (ratio > max_spike) | (ratio < 1.0 / max_spike)  # NaN: no previous bar
    return np.where(jump & last, prev, np.nan)


def _check_spikes(
    frame: pd.DataFrame,
    ctx: _Ctx,
    repairs: frozenset[str],
    max_spike: float,
    open_end: bool = False,
    open_start: bool = False,
) -> pd.DataFrame:
    if not max_spike or len(frame) < 2:
        return frame
    outlier, ref = _spikes(frame, max_spike, open_end, open_start)
    bad: np.ndarray = np.asarray(outlier.any(axis=1))
    if not bad.any():
        return frame
    prices = frame[list(PRICE_COLUMNS)].to_numpy()
    detail = np.empty(len(frame), dtype=object)
    for i in np.flatnonzero(bad):
        fields = ",".join(c for c, o in zip(PRICE_COLUMNS, outlier[i], strict=True) if o)
        values = "/".join(f"{v:g}" for v in prices[i][outlier[i]])
        detail[i] = f"{fields} {values} vs close {ref[i]:g}"
    if "spike" not in repairs:
        raise ctx.fail(
            frame,
            bad,
            lambda pos: (
                f"{{n}} row(s) with a one-bar price spike (more than {max_spike:g}x above or "
                f"below the neighbouring closes, split-adjusted), first {detail[pos]}; "
                "enable repair 'spike' to replace the outliers by the previous close"
            ),
        )
    ctx.log_repair(
        "spike",
        frame,
        bad,
        detail=detail,
        action="outlying prices set to the previous close, high/low re-widened",
    )
    fixed = np.where(outlier, ref[:, None], prices)
    return frame.assign(
        open=fixed[:, 0], high=fixed.max(axis=1), low=fixed.min(axis=1), close=fixed[:, 3]
    )


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
    max_spike: float = DEFAULT_MAX_SPIKE,
    max_volume: float = DEFAULT_MAX_VOLUME,
    timezone: str = DEFAULT_TIMEZONE,
    start: str | None = None,
    end: str | None = None,
    first_line: int | None = None,
    summary: RepairSummary | None = None,
    interval: str = "auto",
    corporate_actions: bool = True,
    date_format: str = "",
    advice: Advice = DATA_ADVICE,
    open_end: bool = False,
    open_start: bool = False,
    weekend_sessions: bool = False,
    session_timezone: str = "",
    session_evening_start: str = "",
) -> pd.DataFrame:
    """Check (and, where enabled, repair) bars; return the clean long table.

    `symbol` names the bars of a one-symbol frame; None means `df` is a long table with a
    symbol column. `source` names the file in errors and logs. `first_line` is the file line of
    the input's index 0 (2 for a CSV with a header line): errors then name lines, otherwise
    timestamps. `start`/`end` (inclusive dates) drop out-of-range rows before checking: a
    daily bar by its session date, an intraday bar by the session day of the run's calendar
    (`session_timezone`, `session_evening_start`; see `session_bound`).
    `max_spike`/`max_volume` are the plausibility thresholds (0 disables), `timezone` the
    exchange's. `interval` is "1d", "intraday" or "auto" (see `_label_bars`). Repairs are
    counted in `summary`; without one, this call logs its own. `corporate_actions`: the
    data should carry split and dividend columns (raw prices of stocks); False for index
    series, which have none. `date_format` (strftime, e.g. "%d/%m/%Y") reads text times,
    of a Date and a Time column the two joined by a space; "" infers it (see Times).
    `advice`: where the settings its errors advise are set (`Advice`). `open_end`: the
    last bar of each symbol is the newest of a live answer, left to the feed by the spike
    check (see `_spikes`), and the output has the column `jump_from` (`_newest_jumps`).
    `open_start`: the first bar of each symbol is the first of a live answer's window, a
    neighbour only for the spike check (see `_spikes`). `weekend_sessions`: the run's
    calendar holds sessions on Saturdays and Sundays (`live.calendar = "24/7"`, crypto), so
    daily bars dated then are sessions, not errors (`_check_weekends`). `session_timezone`:
    the zone of the run calendar's sessions (`live.calendar`'s), where an intraday bar's
    session is dated (`_check_session_actions`); "" = `timezone`. An XTKS session spans two
    New York dates: by `data.timezone` a dividend repeated on its bars was kept twice.
    It is also the zone of the session days `start`/`end` name for intraday bars.
    `session_evening_start`: "HH:MM[:SS]" where the calendar's sessions open the evening
    before their date (CMES: "17:00"), "" otherwise (`clock.calendar.evening_session_start`).
    """
    if interval not in INTERVALS:
        raise ConfigError(
            f"interval {interval!r} is invalid; valid choices: {', '.join(INTERVALS)}"
        )
    repairs = parse_repairs(repair)
    check_limits(max_spike=max_spike, max_volume=max_volume, timezone=timezone)
    check_date_format(date_format)
    own = summary is None
    summary = RepairSummary() if summary is None else summary
    ctx = _Ctx(source, first_line, summary, advice)
    frame = _normalise(
        df,
        ctx=ctx,
        symbol=symbol,
        start=start,
        end=end,
        tz=timezone,
        interval=interval,
        corporate_actions=corporate_actions,
        date_format=date_format,
        session_tz=session_timezone,
        evening_start=time.fromisoformat(session_evening_start) if session_evening_start else None,
    )
    frame = _check_values(frame, ctx, repairs, max_volume)
    if not weekend_sessions:
        frame = _check_weekends(frame, ctx, repairs)
    frame = _check_time(frame, ctx, repairs, max_gap_days)
    frame = _check_session_actions(frame, ctx, repairs, session_timezone or timezone)
    frame = _snap_splits(frame, ctx)
    _suspect_actions(frame, ctx)
    if ctx.split_absent:
        _suspect_jumps(frame, ctx)
    columns = list(OUTPUT_COLUMNS)
    if open_end:  # before the repairs: the rule is on the previous bar as it came
        jumps = _newest_jumps(frame, max_spike)
    frame = _check_spikes(frame, ctx, repairs, max_spike, open_end, open_start)
    if open_end:
        frame = frame.assign(**{JUMP_FROM: jumps})
        columns.append(JUMP_FROM)
    if own:
        summary.log(source)
    return frame.loc[:, columns].reset_index(drop=True)
