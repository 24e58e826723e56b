"""An on-disk cache of validated Panels, so reruns on unchanged inputs skip load and checks.

A researcher reruns backtests many times a day on the same file; reading, validating and
pivoting it costs seconds and most of the run's peak memory each time, and gives the same
result every time. An entry is only ever reused when nothing that decides the result can have
changed: the key covers every load parameter, each input file's size, times and inode,
the source text of the code that loads and validates (loaders.py, validate.py, panel.py) and
the versions of the libraries that parse the files. Anything else (a fix in validate.py, a
rewritten file, a different `end`) is a miss and a fresh load.

Entries are uncompressed `.npz` files (no pickle, so a planted file cannot run code), one per
key, written to a temporary name and renamed into place: a killed process or two concurrent
writers leave either a whole entry or none. The cache is bounded by `max_bytes`, evicting the
least recently used entries (a hit touches its entry's mtime).

The cache must never make a run fail or change what the operator sees: an unreadable entry
is deleted and the data loaded again, an unwritable directory is a warning and the run goes on
uncached, errors of the load itself propagate unchanged, and a hit logs the repairs the load
made (its "data.repairs" summary line, marked cached=True; the per-symbol details were logged
at debug level by the load that filled the entry).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from . import loaders, panel, validate
from .loaders import load_panel
from .panel import FIELDS, Panel
from .validate import (
    DEFAULT_MAX_GAP_DAYS,
    DEFAULT_MAX_SPIKE,
    DEFAULT_MAX_VOLUME,
    DEFAULT_TIMEZONE,
    RepairSummary,
)

log = structlog.get_logger(__name__)

# Bump when the entry layout or the meaning of a key changes: old entries then never match.
CACHE_FORMAT = 1
ENTRY_SUFFIX = ".npz"
_TMP_SUFFIX = ".tmp"
# A temporary file this old is the leftover of a killed writer, not one still being written.
_STALE_TMP_S = 3600.0


def cache_root() -> Path:
    """The user's XDG cache folder for tradingd: entries are disposable and per user (never
    next to the data, which may be shared or read-only)."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "tradingd"


def default_cache_dir() -> Path:
    """Where entries live unless configured: `cache_root()`/panels."""
    return cache_root() / "panels"


def cached_load_panel(
    cache_dir: Path | None,
    max_bytes: int,
    load: Callable[[RepairSummary], Panel] | None = None,
    *,
    source: str,
    path: str | None = None,
    layout: str = "auto",
    symbols: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    repair: Sequence[str] = (),
    max_gap_days: float = DEFAULT_MAX_GAP_DAYS,
    max_spike: float = DEFAULT_MAX_SPIKE,
    max_volume: float = DEFAULT_MAX_VOLUME,
    timezone: str = DEFAULT_TIMEZONE,
    date_format: str = "",
    weekend_sessions: bool = False,
    session_timezone: str = "",
    session_evening_start: str = "",
) -> Panel:
    """`load_panel` with the same arguments, from the cache when the inputs are unchanged.

    `load(summary)` does the real load on a miss, counting its repairs in `summary` (as
    `load_panel(..., summary=)` does); it must be the load these arguments describe (the
    key is built from the arguments, not from `load`). None means `load_panel` with them, which
    is the safe choice: a caller cannot then cache one load under another's key. `cache_dir`
    None or `max_bytes` <= 0 turns the cache off. The bundled series are never cached: they are
    tiny, and their files live inside a package the key does not look at.
    """
    args: dict[str, Any] = {
        "source": source,
        "path": path,
        "layout": layout,
        "symbols": symbols,
        "start": start,
        "end": end,
        "repair": repair,
        "max_gap_days": max_gap_days,
        "max_spike": max_spike,
        "max_volume": max_volume,
        "timezone": timezone,
        "date_format": date_format,
        "weekend_sessions": weekend_sessions,
        "session_timezone": session_timezone,
        "session_evening_start": session_evening_start,
    }
    # In the key as JSON lists (a lone string is one symbol or repair, as the loader reads it).
    params = {
        **args,
        "symbols": [symbols] if isinstance(symbols, str) else _list(symbols),
        "repair": [repair] if isinstance(repair, str) else _list(repair),
    }
    if not date_format:  # in the key only when set: the entries made before it stay valid
        del params["date_format"]
    if not weekend_sessions:  # the same
        del params["weekend_sessions"]
    if not session_timezone or session_timezone == timezone:  # the same
        del params["session_timezone"]
    if not session_evening_start:  # the same
        del params["session_evening_start"]
    if load is None:

        def load(summary: RepairSummary) -> Panel:
            return load_panel(**args, summary=summary)

    if cache_dir is None or max_bytes <= 0 or source == "bundled":
        return load(RepairSummary())
    inputs = _input_files(source, path)
    if inputs is None:  # nothing to fingerprint: the load reports what is wrong, uncached
        return load(RepairSummary())
    key = cache_key(params, inputs)
    entry = Path(cache_dir) / f"{key}{ENTRY_SUFFIX}"

    cached = _read_entry(entry, key)
    if cached is not None:
        result, repairs = cached
        with contextlib.suppress(OSError):  # a read-only cache still serves hits
            os.utime(entry)
        log.info("data.cache_hit", path=str(entry), key=key[:12])
        _summary_of(repairs).log(str(path), cached=True)  # as the load logged it
        return result

    started = time.perf_counter()
    summary = RepairSummary()
    result = load(summary)  # never wrapped: a DataError of the load is the caller's to see
    repairs = {
        "rows": dict(summary.rows),
        "symbols": dict(summary.symbols),
        # The suspect values' warnings are repeated on a cache hit, like the repairs.
        "suspects": {k: [n, ex] for k, (n, ex) in summary.suspects.items()},
    }
    _store(entry, key, result, repairs, max_bytes, time.perf_counter() - started)
    return result


def cache_key(params: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    """The hex SHA-256 naming an entry: everything that decides the loaded Panel."""
    decisive = {
        "format": CACHE_FORMAT,
        "params": params,
        "inputs": inputs,
        "code": _code_fingerprint(),
        "libraries": _library_versions(),
    }
    text = json.dumps(decisive, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else [str(v) for v in values]


def _input_files(source: str, path: str | None) -> list[dict[str, Any]] | None:
    """Every file the load could read, by resolved name, size, mtime, ctime and inode: a
    rewritten, replaced or touched file is a miss. For a directory, every data file in it
    (as loaders.`_files` picks them, before choosing symbols: an added file can shadow
    another with the same symbol).
    None when there is nothing to stat (no path, a missing path, an unknown source)."""
    if source not in loaders._SUFFIXES or not path:
        return None
    try:
        root = Path(path).resolve()
        files = loaders.data_files(root, source) if root.is_dir() else [root]
        out = []
        for f in files:
            st = f.stat()
            # ctime and inode too: `cp -p`, `rsync -t` and tar restore a new file's mtime (of
            # the same size, a stale hit), but not its ctime, and a renamed-in copy is a new
            # inode; a chmod or a move of the folder only costs a fresh load.
            out.append(
                {
                    "path": str(f),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "ctime_ns": st.st_ctime_ns,
                    "inode": st.st_ino,
                }
            )
    except OSError:
        return None
    return out


@functools.cache
def _code_fingerprint() -> dict[str, str]:
    """A change to how files are parsed, checked or pivoted must not reuse old results."""
    return {
        Path(str(m.__file__)).name: hashlib.sha256(Path(str(m.__file__)).read_bytes()).hexdigest()
        for m in (loaders, validate, panel)
    }


@functools.cache
def _library_versions() -> dict[str, str]:
    """pandas and pyarrow decide how times and numbers are parsed; an upgrade may change it.
    Their installed versions, read from the package metadata: importing them (0.2 s) only to
    ask would cost every load from the cache what it saves (core/lazy.py)."""
    return {"numpy": np.__version__, "pandas": _version("pandas"), "pyarrow": _version("pyarrow")}


def _version(name: str) -> str:
    """The version of the package `name` as imported when it already is; else its installed
    metadata; else (no metadata: a source tree on the path, a frozen build) by importing it."""
    module = sys.modules.get(name)
    if module is None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = importlib.import_module(name)
    return str(module.__version__)


# --- the load's repairs ---------------------------------------------------------------------


def _summary_of(counts: dict[str, Any]) -> RepairSummary:
    summary = RepairSummary()
    summary.rows.update({str(k): int(v) for k, v in counts.get("rows", {}).items()})
    summary.symbols.update({str(k): int(v) for k, v in counts.get("symbols", {}).items()})
    for kind, (n, examples) in counts.get("suspects", {}).items():
        summary.suspects[str(kind)] = (int(n), list(examples))
    return summary


# --- entries ---------------------------------------------------------------------------------


def _read_entry(entry: Path, key: str) -> tuple[Panel, dict[str, Any]] | None:
    """The Panel and repair counts of an entry, or None on a miss. A damaged entry (a
    truncated write that survived a crash, a disk error, a stranger's file) is a miss too: it
    is reported, deleted and rebuilt, never trusted and never fatal."""
    try:
        handle = open(entry, "rb")  # noqa: SIM115 (closed below)
    except (FileNotFoundError, NotADirectoryError):  # no entry (or no directory): a miss
        return None
    except OSError as exc:
        _unreadable(entry, exc)
        return None
    try:
        with handle, np.load(handle, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                raise ValueError("the entry was written for another key or format")
            times = z["times"]
            if times.dtype != np.dtype("datetime64[ns]") or times.ndim != 1:
                raise ValueError(f"times have dtype {times.dtype} and {times.ndim} dimension(s)")
            arrays = {}
            for name in FIELDS:
                arr = z[name]
                if arr.dtype != np.float64:
                    raise ValueError(f"field {name!r} has dtype {arr.dtype}")
                arrays[name] = arr
            symbols = tuple(str(s) for s in meta["symbols"])
            result = Panel(times=times, symbols=symbols, **arrays)
            repairs = dict(meta["repairs"])
    except Exception as exc:  # any damage at all is a miss; the load below decides
        _unreadable(entry, exc)
        return None
    return result, repairs


def _unreadable(entry: Path, exc: BaseException) -> None:
    log.warning("data.cache_unreadable", path=str(entry), error=f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        entry.unlink()


def _store(
    entry: Path,
    key: str,
    result: Panel,
    repairs: dict[str, Any],
    max_bytes: int,
    load_s: float,
) -> None:
    """Write the entry atomically and evict down to `max_bytes`; never raises (the run has
    its Panel already, a cache that cannot keep it only costs the next run time)."""
    meta = json.dumps(
        {"format": CACHE_FORMAT, "key": key, "symbols": list(result.symbols), "repairs": repairs},
        default=_json_default,
    ).encode()
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(meta, dtype=np.uint8),
        "times": np.asarray(result.times, dtype="datetime64[ns]"),
        **{name: getattr(result, name) for name in FIELDS},
    }
    # The data alone already too big: do not write what would be evicted at once.
    if sum(a.nbytes for a in arrays.values()) > max_bytes:
        _too_large(entry, sum(a.nbytes for a in arrays.values()), max_bytes)
        return
    directory = entry.parent
    tmp = _tmp_path(directory, key)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        size = tmp.stat().st_size
        if size > max_bytes:
            tmp.unlink()
            _too_large(entry, size, max_bytes)
            return
        os.replace(tmp, entry)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("data.cache_unwritable", path=str(directory), error=f"{exc}")
        return
    log.debug(
        "data.cache_stored",
        path=str(entry),
        key=key[:12],
        bytes=size,
        load_s=round(load_s, 3),
    )
    _evict(directory, keep=entry, max_bytes=max_bytes)


def _json_default(value: Any) -> Any:
    """Repair fields hold numpy scalars (volumes, counts) and the odd object: keep numbers
    numbers, anything else its text."""
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _tmp_path(directory: Path, key: str) -> Path:
    """Where an entry is written before its rename: a name of this writer's own, which
    `_evict` recognises (and deletes when a killed writer left it behind)."""
    return directory / f".{key}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"


def _too_large(entry: Path, size: int, max_bytes: int, event: str = "data") -> None:
    log.info(
        f"{event}.cache_skipped",
        path=str(entry),
        reason="entry larger than the cache's max_bytes",
        bytes=size,
        max_bytes=max_bytes,
    )


def _evict(
    directory: Path, *, keep: Path, max_bytes: int, event: str = "data", suffix: str = ENTRY_SUFFIX
) -> None:
    """Delete the least recently used entries until the directory's entries fit `max_bytes`
    (the entry just stored is kept: it alone fits). Stale temporary files of killed writers
    are deleted too; files that are not this cache's are never touched."""
    now = time.time()
    entries: list[tuple[float, int, Path]] = []
    try:
        listing = list(directory.iterdir())
    except OSError as exc:
        log.warning(f"{event}.cache_unwritable", path=str(directory), error=f"{exc}")
        return
    for p in listing:
        try:
            st = p.stat()
        except OSError:  # deleted meanwhile by another process's eviction
            continue
        if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX):
            if now - st.st_mtime > _STALE_TMP_S:
                with contextlib.suppress(OSError):
                    p.unlink()
            continue
        if _is_entry(p, suffix):
            entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _mtime, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if p == keep:
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning(f"{event}.cache_unwritable", path=str(p), error=f"{exc}")
            return
        total -= size
        log.debug(f"{event}.cache_evicted", path=str(p), bytes=size)


def _is_entry(p: Path, suffix: str = ENTRY_SUFFIX) -> bool:
    stem = p.name[: -len(suffix)] if p.name.endswith(suffix) else ""
    return len(stem) == 64 and all(c in "0123456789abcdef" for c in stem)
