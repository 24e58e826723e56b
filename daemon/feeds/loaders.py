"""Load bar history from the bundled series, CSV or Parquet into a validated `Panel`.

Sources:
  bundled  the S&P 500 and NASDAQ Composite indices shipped inside `arch` (symbols "SP500" and
           "NASDAQ", daily 1999-2018): the offline default, no path.
  csv      `path` is a file or a directory of files (one per symbol, `AAPL.csv`; two files of
           one symbol, `XOM.csv` and `XOM.CSV` or `xom.csv`, are an error naming both).
  parquet  the same with `.parquet` / `.pq` files.
Layouts (csv/parquet): "long" is one table with a symbol column; "per_symbol" is one table per
symbol named by its file stem (a directory, or a single file); "auto" picks per_symbol for a
directory, else long when the table has a symbol column, else per_symbol.

Every table goes through `validate_frame` (see validate.py for the checks and repairs). A file
with no rows (a header only) is an error naming it, never a silently missing symbol; a requested
symbol whose bars all fall outside `start`/`end` is left out with a warning naming it, its first
and last bar and the window (`data.suspect`, kind `no_bars_in_window`); with no symbols
asked for, such symbols are counted in one warning naming the first few
(`symbols_outside_window`). Blank lines of a CSV
are not data: they are skipped, and the line numbers in errors stay those of the file.
A CSV's symbol column is read as text ("0700" stays "0700", not the number 700).
Each load logs its repairs in one "data.repairs" line (the details at debug level).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from ..core.errors import ConfigError, DataError
from ..core.lazy import LazyModule
from .panel import Panel
from .validate import (
    DATA_ADVICE,
    DEFAULT_MAX_GAP_DAYS,
    DEFAULT_MAX_SPIKE,
    DEFAULT_MAX_VOLUME,
    DEFAULT_TIMEZONE,
    MISSING_BAR_SHARE,
    PRICE_COLUMNS,
    SUSPECT_RULES,
    Advice,
    RepairSummary,
    canonical_columns,
    check_date_format,
    check_limits,
    find_column,
    parse_repairs,
    recognised_columns,
    validate_frame,
)

if TYPE_CHECKING:
    import pandas as pd
else:  # imported at its first use (core/lazy.py): a backtest from the panel cache needs none
    pd = LazyModule("pandas")

log = structlog.get_logger(__name__)

SOURCES = ("bundled", "csv", "parquet")
LAYOUTS = ("auto", "long", "per_symbol")
BUNDLED_SYMBOLS = ("NASDAQ", "SP500")
_SUFFIXES = {"csv": (".csv",), "parquet": (".parquet", ".pq")}
CSV_FIRST_LINE = 2  # the header is line 1


def _choice(kind: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(f"data {kind} {value!r} is unknown; valid choices: {', '.join(valid)}")
    return value


def _available_message(requested: Sequence[str], available: Sequence[str], source: str) -> str:
    missing = [s for s in requested if s not in set(available)]
    shown = ", ".join(sorted(available)[:10])
    more = f" and {len(available) - 10} more" if len(available) > 10 else ""
    return f"symbol(s) {missing} not in {source}; available: {shown}{more}"


def _check_symbols(requested: Sequence[str] | None, available: Sequence[str], source: str) -> None:
    if requested is None:
        return
    if any(s not in set(available) for s in requested):
        raise DataError(_available_message(requested, available, source), source=source)


def _stem(path: Path, source: str) -> str:
    """The symbol a file holds: its name without the known suffix (BRK.B.csv -> BRK.B)."""
    for suffix in _SUFFIXES[source]:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _drop_blank_lines(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Drop the rows of blank (or whitespace-only) lines, keeping the index: row i is still
    line i + CSV_FIRST_LINE. A line of empty fields (",,,") is data with missing values."""
    if raw.empty:
        return raw
    candidates = np.flatnonzero(raw.iloc[:, 1:].isna().all(axis=1).to_numpy())
    if len(candidates) == 0:
        return raw
    first = raw.iloc[candidates, 0]
    candidates = candidates[(first.isna() | first.astype(str).str.strip().eq("")).to_numpy()]
    if len(candidates) == 0:
        return raw
    lines = path.read_bytes().splitlines()
    blank = [
        i
        for i in candidates
        if (n := int(raw.index[i]) + CSV_FIRST_LINE - 1) >= len(lines) or not lines[n].strip()
    ]
    return raw.drop(index=raw.index[blank]) if blank else raw


def _read(
    path: Path, source: str, symbols: Sequence[str] | None = None
) -> tuple[pd.DataFrame, int | None]:
    """The raw table and the file line of its first row (CSV only). For Parquet, `symbols`
    lets a long table be read for those symbols only (see `_parquet_selection`)."""
    try:
        if source == "csv":
            # Blank lines are read (as all-NaN rows) so index i is line i + 2, then dropped.
            raw = pd.read_csv(path, skip_blank_lines=False, dtype=_symbol_as_text(path))
            return _drop_blank_lines(raw, path), CSV_FIRST_LINE
        columns, filters = _parquet_selection(path, symbols)
        raw = _read_parquet_rows(path, columns, filters) if columns and filters else None
        if raw is None:
            raw = pd.read_parquet(path, columns=columns, filters=filters)
        _release_arrow_memory()
        return raw, None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {source} file: {exc}", source=str(path)) from exc


def _symbol_as_text(path: Path) -> dict[str, type]:
    """read_csv's dtype for the symbol column (if the header has one): text. Guessed, a
    numeric-looking ticker became a number and lost its leading zeros (Hong Kong's "0700"
    and "0005" became 700 and 5, and a request for "0700" found no such symbol)."""
    header = pd.read_csv(path, nrows=0).columns
    return {
        str(c): str for c, canon in canonical_columns(list(header)).items() if canon == "symbol"
    }


def _parquet_selection(
    path: Path, symbols: Sequence[str] | None
) -> tuple[list[str] | None, list[tuple[str, str, list[str]]] | None]:
    """The columns and rows of a Parquet file worth reading: a run over 20 of 500 symbols
    must not pay (in time and memory) for the other 480, nor for columns validation never
    looks at (an adjusted close, say). Columns are pruned only when every bar column is
    recognised (else the full read lets a missing-column error list what the file has);
    rows only for a string symbol column (other types keep the exact `astype(str)` match
    of `_files`). (None, None) reads the whole file, as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    mapping = canonical_columns(schema.names)
    found = set(mapping.values())
    wanted = recognised_columns(schema.names)  # both columns of a clash: validation names them
    columns = [str(c) for c in wanted] if found >= {"time", *PRICE_COLUMNS, "volume"} else None
    filters = None
    sym_col = next((c for c, canon in mapping.items() if canon == "symbol"), None)
    if columns is not None and sym_col is not None and symbols:
        kind = schema.field(sym_col).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            filters = [(str(sym_col), "in", sorted(set(symbols)))]
    return columns, filters


def _read_parquet_rows(
    path: Path, columns: list[str], filters: list[tuple[str, str, list[str]]]
) -> pd.DataFrame | None:
    """`pd.read_parquet(path, columns=columns, filters=filters)` (one "in" filter on a
    string column), read batch by batch and filtered as it goes: pyarrow's filtered read
    holds whole columns before it filters (a 406 MB peak for 100 of the S&P 500 file's 496
    symbols, a 26 MB panel; 273-287 MB this way). The table is converted by pandas' own
    function, as `read_parquet` converts it. None where the two could differ: an index
    stored as columns (pandas adds those columns to the read), duplicated column names (its
    error), or pandas' function not where this pandas version had it; the caller then reads
    with `pd.read_parquet`."""
    try:
        from pandas.io._util import arrow_table_to_pandas
    except ImportError:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ((col, _, values),) = filters
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    meta = schema.pandas_metadata or {}
    if any(not isinstance(c, dict) for c in meta.get("index_columns", [])):
        return None
    if len(set(schema.names)) != len(schema.names):  # pandas' read names the duplicate
        return None
    wanted = pa.array(values, type=schema.field(col).type)
    keep = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    parts = []
    for batch in pf.iter_batches(batch_size=65_536, columns=columns):
        parts.append(batch.select(columns).filter(pc.is_in(batch.column(col), value_set=wanted)))
    table = pa.Table.from_batches(parts, schema=keep)
    del parts
    return arrow_table_to_pandas(table)


def _release_arrow_memory() -> None:
    """pyarrow keeps the buffers of a read in its own pool (hundreds of MB for a large file)
    after the table has become a DataFrame; hand them back to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _release_memory() -> None:
    """After a load, the long table and its copies are garbage, but neither pyarrow's pool
    nor glibc's heap returns freed memory to the system unasked: without this, a backtest
    over 20 symbols kept ~500 MB resident for its whole replay."""
    _release_arrow_memory()
    if sys.platform.startswith("linux"):
        # Not glibc (musl, say): no malloc_trim, nothing to trim.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _symbols_in(path: Path, column: object) -> list[str]:
    """Every symbol of a long Parquet file (an error message lists what a bad request
    could have asked for); reads that one column only."""
    col = pd.read_parquet(path, columns=[str(column)])[column].astype(str)
    _release_arrow_memory()
    return col.unique().tolist()


# Column names a file of bars has at least one of (any case): without one, its first line
# is no header of bars (an HTML error page saved as .csv, another table).
_BAR_WORDS = frozenset({"date", "time", "datetime", "timestamp", "open", "high", "low", "close"})


def _not_empty(raw: pd.DataFrame, path: Path, symbol: str | None) -> pd.DataFrame:
    if raw.empty:
        names = [str(c) for c in raw.columns]
        if not any(n.strip().lower() in _BAR_WORDS for n in names):
            # An HTML page saved as .csv was "a header only": its one line read as names.
            first = ",".join(names)
            raise DataError(
                "the file is not a table of bars: its first line names none of the columns "
                f"of bars (date or time, open, high, low, close): {first[:80]!r}",
                source=str(path),
                symbol=symbol,
            )
        raise DataError(
            "the file has no rows of bars (a header only)", source=str(path), symbol=symbol
        )
    return raw


def _bundled(symbols: Sequence[str] | None) -> list[tuple[pd.DataFrame, str, str]]:
    _check_symbols(symbols, BUNDLED_SYMBOLS, "bundled")
    wanted = BUNDLED_SYMBOLS if symbols is None else tuple(dict.fromkeys(symbols))
    out = []
    for sym in wanted:
        raw = _bundled_frame(sym.lower())
        # Raw OHLC and volume; "Adj Close" is not used (split=1, dividend=0 by default).
        frame = raw[["Open", "High", "Low", "Close", "Volume"]].rename_axis("time").reset_index()
        out.append((frame, f"bundled:arch.data.{sym.lower()}", sym))
    return out


def _bundled_frame(name: str) -> pd.DataFrame:
    """What `arch.data.<name>.load()` returns, without importing `arch`: its import (the
    models, scipy, numba when installed) takes 1-1.7 s, most of the default backtest's
    start-up, and a replay of the bundled series needs none of it (GARCH fits import it where
    they run). The file is read by arch's own reader, `arch/data/utility.py` (it imports
    only pandas), loaded from arch's folder as a module of its own. Wherever arch keeps
    either elsewhere (another version), its loader is imported and used, as before."""
    spec = importlib.util.find_spec("arch")  # finds the package without running it
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    data = Path(folders[0]) / "data" if folders else None
    if data is not None and (data / name / f"{name}.csv.gz").is_file():
        reader = importlib.util.spec_from_file_location(
            "tradingd_arch_data_utility", data / "utility.py"
        )
        if reader is not None and reader.loader is not None:
            try:
                utility = importlib.util.module_from_spec(reader)
                reader.loader.exec_module(utility)
                # load_file(file_base, filename) reads filename beside file_base, as
                # arch.data.<name>.load() calls it with its own __file__.
                frame = utility.load_file(str(data / name / "__init__.py"), f"{name}.csv.gz")
            except Exception as exc:  # another arch's reader: its own loader, below
                log.info("data.bundled_reader_fallback", name=name, error=str(exc))
            else:
                if isinstance(frame, pd.DataFrame):
                    return frame
    module = importlib.import_module(f"arch.data.{name}")
    return module.load()


def data_files(directory: Path, source: str) -> list[Path]:
    """The files of `source`'s kind in a per-symbol directory, sorted (what a load reads
    from, and what the panel cache fingerprints)."""
    suffixes = _SUFFIXES[source]
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.name.lower().endswith(suffixes)
    )


def _files_by_symbol(directory: Path, source: str) -> dict[str, Path]:
    """Symbol -> its file in a per-symbol directory. Two files of one symbol (XOM.CSV beside
    XOM.csv, XOM.parquet beside XOM.pq) are an error naming both: reading one would silently
    drop the other, and which one won depended on the names' sort order."""
    by_symbol: dict[str, Path] = {}
    # Tickers are case-insensitive: aapl.csv beside AAPL.csv loaded two symbols, the
    # stock's exposure twice.
    by_ticker: dict[str, Path] = {}
    for p in data_files(directory, source):
        sym = _stem(p, source)
        if (seen := by_ticker.get(sym.upper())) is not None:
            raise DataError(
                f"two files for symbol {sym!r}: {seen.name!r} and {p.name!r}; "
                "keep one of them (move or rename the other) so the data of the symbol is not "
                "a guess",
                source=str(directory),
                symbol=sym,
            )
        by_symbol[sym] = by_ticker[sym.upper()] = p
    return by_symbol


def _files(
    path: Path, source: str, layout: str, symbols: Sequence[str] | None
) -> list[tuple[pd.DataFrame, str, str | None, int | None]]:
    """(raw table, file name, symbol or None for a long table, first line) per file."""
    if path.is_dir():
        if layout == "long":
            raise ConfigError(
                f"data layout 'long' needs a file, but {str(path)!r} is a directory; "
                "use layout 'per_symbol' or 'auto'"
            )
        by_symbol = _files_by_symbol(path, source)
        if not by_symbol:
            raise DataError(
                f"no {'/'.join(_SUFFIXES[source])} files in the directory", source=str(path)
            )
        _check_symbols(symbols, list(by_symbol), str(path))
        wanted = sorted(by_symbol) if symbols is None else list(dict.fromkeys(symbols))
        out: list[tuple[pd.DataFrame, str, str | None, int | None]] = []
        for sym in wanted:
            raw, first_line = _read(by_symbol[sym], source)
            out.append((_not_empty(raw, by_symbol[sym], sym), str(by_symbol[sym]), sym, first_line))
        return out
    if not path.exists():
        # A relative path is read from the directory tradingd runs in: say which one it was.
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()}: {path.absolute()})"
        raise DataError(f"{source} path does not exist{where}", source=str(path))
    # A long table is read for the requested symbols only; a per-symbol file is one symbol.
    subset = symbols if source == "parquet" and layout != "per_symbol" else None
    raw, first_line = _read(path, source, subset)
    sym_col = find_column(raw, "symbol")
    if layout == "per_symbol" or (layout == "auto" and sym_col is None):
        stem = _stem(path, source)
        _check_symbols(symbols, [stem], str(path))
        return [(_not_empty(raw, path, stem), str(path), stem, first_line)]
    if sym_col is not None and symbols is not None:
        col = raw[sym_col].astype(str)
        available = col.unique().tolist()
        present = set(available)
        if subset and any(s not in present for s in symbols):
            available = _symbols_in(path, sym_col)  # read by symbol: name the whole file's
        if not available:
            _not_empty(raw, path, None)  # a header-only file
        _check_symbols(symbols, available, str(path))
        raw = raw[col.isin(list(symbols)).to_numpy()]  # keeps the index: lines stay right
    else:
        _not_empty(raw, path, None)
    return [(raw, str(path), None, first_line)]


def load_frame(
    source: str,
    path: str | None = None,
    *,
    layout: str = "auto",
    symbols: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    repair: Sequence[str] = (),
    max_gap_days: float = DEFAULT_MAX_GAP_DAYS,
    max_spike: float = DEFAULT_MAX_SPIKE,
    max_volume: float = DEFAULT_MAX_VOLUME,
    timezone: str = DEFAULT_TIMEZONE,
    summary: RepairSummary | None = None,
    date_format: str = "",
    advice: Advice = DATA_ADVICE,
    weekend_sessions: bool = False,
    session_timezone: str = "",
    session_evening_start: str = "",
) -> pd.DataFrame:
    """The validated long table (time, symbol, open, high, low, close, volume, split, dividend).

    `max_spike` and `max_volume` are the plausibility thresholds of validate.py (0 disables
    one); `timezone` is the exchange's, for times written with a UTC offset; `date_format`
    (strftime, "" = inferred) reads the files' text times. `summary`
    receives the load's repair counts (logged here all the same): the panel cache keeps them
    to say them again when it serves the load from disk. `advice`: where the settings its
    errors advise are set (validate.Advice; a benchmark file has its own).
    `weekend_sessions`: the calendar holds weekend sessions (validate_frame).
    `session_timezone`: the calendar's zone, where intraday sessions are dated, and
    `session_evening_start` where they open the evening before (validate_frame).
    """
    _choice("source", source, SOURCES)
    _choice("layout", layout, LAYOUTS)
    parse_repairs(repair)  # a bad name fails before any file is read
    check_limits(max_spike=max_spike, max_volume=max_volume, timezone=timezone)
    check_date_format(date_format)
    if symbols is not None and isinstance(symbols, str):
        symbols = [symbols]
    summary = RepairSummary() if summary is None else summary
    opts: dict[str, Any] = {
        "repair": repair,
        "max_gap_days": max_gap_days,
        "max_spike": max_spike,
        "max_volume": max_volume,
        "timezone": timezone,
        "date_format": date_format,
        "start": start,
        "end": end,
        "summary": summary,
        "advice": advice,
        "weekend_sessions": weekend_sessions,
        "session_timezone": session_timezone,
        "session_evening_start": session_evening_start,
    }
    if source == "bundled":
        frames = [
            # Index series: no splits or dividends to carry.
            validate_frame(raw, source=name, symbol=sym, corporate_actions=False, **opts)
            for raw, name, sym in _bundled(symbols)
        ]
        where = "bundled"
    else:
        if not path:
            raise ConfigError(f"data source {source!r} needs a path (a file or a directory)")
        frames = [
            validate_frame(raw, source=name, symbol=sym, first_line=first, **opts)
            for raw, name, sym, first in _files(Path(path), source, layout, symbols)
        ]
        where = str(path)
    # Read before `_unrequested_outside_window` renames the kind; only for the error below.
    span = _span_outside_window(summary) if all(f.empty for f in frames) else None
    if symbols is None:
        _unrequested_outside_window(summary)
    summary.log(where)
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if frame.empty:
        window = (
            f"between {start} and {end}"
            if start and end
            else (f"from {start} on" if start else f"up to {end}" if end else "at all")
        )
        raise DataError(
            f"no bars {window}"
            + (
                f"; the data's bars ({span[0]} symbol(s)) run from {span[1]} to {span[2]}: "
                "move the run's window (run.start, run.end) onto them"
                if span is not None
                else ""
            ),
            source=where,
        )
    return frame


def _span_outside_window(summary: RepairSummary) -> tuple[int, str, str] | None:
    """How many symbols had bars outside the window only, and the first and last of those
    bars: said when no bar is left, so the error names where the data are (it said "no
    bars between the start and 2003-12-31" of data starting in 2010)."""
    said = summary.suspects.get("no_bars_in_window")
    if said is None or not said[1]:
        return None
    examples = said[1]  # every symbol (SUSPECT_NAME_ALL)
    first = min(str(e["first_bar"]) for e in examples)
    last = max(str(e["last_bar"]) for e in examples)
    return len(examples), first, last


def _unrequested_outside_window(summary: RepairSummary) -> None:
    """With no symbols asked for (every symbol of the data), symbols with bars in the
    source but none in the window were left out without a word: a 1999-2001 run on the S&P
    500 file had 107 names fewer than the file. None of them was asked for, so they are
    counted in one warning naming the first few (`symbols_outside_window`), not each
    named as a requested symbol gone missing (`no_bars_in_window`)."""
    said = summary.suspects.pop("no_bars_in_window", None)
    if said is not None:
        count, examples = said
        summary.suspect("symbols_outside_window", examples, count)


def load_panel(
    source: str,
    path: str | None = None,
    *,
    layout: str = "auto",
    symbols: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    repair: Sequence[str] = (),
    max_gap_days: float = DEFAULT_MAX_GAP_DAYS,
    max_spike: float = DEFAULT_MAX_SPIKE,
    max_volume: float = DEFAULT_MAX_VOLUME,
    timezone: str = DEFAULT_TIMEZONE,
    summary: RepairSummary | None = None,
    date_format: str = "",
    weekend_sessions: bool = False,
    session_timezone: str = "",
    session_evening_start: str = "",
) -> Panel:
    """Bars of `source` as a Panel: symbols sorted, times the union of all bar times.
    `summary`, `weekend_sessions`, `session_timezone`, `session_evening_start`: as for
    `load_frame`."""
    frame = load_frame(
        source,
        path,
        layout=layout,
        symbols=symbols,
        start=start,
        end=end,
        repair=repair,
        max_gap_days=max_gap_days,
        max_spike=max_spike,
        max_volume=max_volume,
        timezone=timezone,
        summary=summary,
        date_format=date_format,
        weekend_sessions=weekend_sessions,
        session_timezone=session_timezone,
        session_evening_start=session_evening_start,
    )
    # The checks' intermediates are garbage now, but glibc keeps freed heap memory until
    # asked: trimmed here, the panel's arrays reuse it instead of adding to the load's peak
    # (-60 MB for the S&P 500 file).
    _release_memory()
    panel = Panel.from_long(frame)
    del frame  # the long table is garbage from here: give its memory back before the run
    _release_memory()
    _ends_early(panel, summary)
    _missing_bars(panel, summary)
    return panel


def _missing_bars(panel: Panel, summary: RepairSummary | None) -> None:
    """Daily bars a symbol lacks on days most of the other listed symbols have one (a halt,
    or a row missing from the file): the replay skipped it without a word, the symbol's next
    return spanning two days, and only a gap of `data.max_gap_days` was said. Logged as
    `data.suspect` (`missing_bar`, kept in the load's summary like `_ends_early`). Intraday
    data is not judged: an illiquid symbol's minute without a trade is no missing row."""
    times = np.asarray(panel.times, dtype="datetime64[ns]")
    if times.size < 3 or (times.astype("datetime64[D]") != times).any():
        return
    has = ~np.isnan(panel.close)
    n = has.shape[0]
    listed_any = has.any(axis=0)
    first = np.where(listed_any, np.argmax(has, axis=0), n)
    last = np.where(listed_any, n - 1 - np.argmax(has[::-1], axis=0), -1)
    rows = np.arange(n)[:, None]
    inside = (rows >= first) & (rows <= last)
    others_listed = inside.sum(axis=1)[:, None] - 1
    others_with = has.sum(axis=1)[:, None]
    gap = inside & ~has & (others_listed >= 1)
    gap &= others_with >= MISSING_BAR_SHARE * others_listed
    if not gap.any():
        return
    at, cols = np.nonzero(gap)
    examples = [
        {"symbol": panel.symbols[j], "time": str(times[t])[:10]}
        for t, j in zip(at[:10].tolist(), cols[:10].tolist(), strict=True)
    ]
    kind = "missing_bar"
    count = int(at.size)
    log.warning(
        "data.suspect",
        kind=kind,
        count=count,
        symbols=int(np.unique(cols).size),
        examples=examples,
        rule=SUSPECT_RULES[kind],
    )
    if summary is not None:
        summary.suspect(kind, examples, count)


# A symbol whose bars stop more than this many of the panel's bars before its end is said.
ENDS_EARLY_BARS = 5


def _ends_early(panel: Panel, summary: RepairSummary | None) -> None:
    """Symbols whose data ends before the others' (a delisting, a merger, a file cut short):
    a position held then stays in the book at its last close until the run ends, and cannot
    be sold. Logged as `data.suspect` (kept in the load's summary, so a cached load says it
    again); the run goes on as the data says."""
    valid = ~np.isnan(panel.close)
    if not valid.size:
        return
    n = valid.shape[0]
    last = n - 1 - np.argmax(valid[::-1], axis=0)  # each column's last bar
    after = np.where(valid.any(axis=0), n - 1 - last, 0)
    cols = np.flatnonzero(after > ENDS_EARLY_BARS)
    if not cols.size:
        return
    times = panel.times
    examples = [
        {
            "symbol": panel.symbols[j],
            "last_bar": str(times[last[j]])[:10],
            "bars_after": int(after[j]),
        }
        for j in cols[:10].tolist()
    ]
    kind = "ends_early"
    log.warning(
        "data.suspect", kind=kind, count=int(cols.size), examples=examples, rule=SUSPECT_RULES[kind]
    )
    if summary is not None:
        summary.suspect(kind, examples, int(cols.size))
