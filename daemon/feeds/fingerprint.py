"""A fingerprint of a backtest's data files: what a record names its data by.

Why: a backtest's run id, config.json and environment.json named its data by `data.path`
alone. A file rewritten in place (prices after some date changed, its mtime restored) gave
the same run id: the rerun replaced the first run's record, and `tradingd compare` of the two
said "the same configuration" and "the same environment", unable to name the cause.

What is hashed: the bytes of the files the load reads (`data.source` csv or parquet; for a
folder, every data file in it, as the data cache's key lists them, since an added file can
shadow another). The digest of a single file is its SHA-256, what `sha256sum FILE` prints; of
a folder, the SHA-256 of its files' `sha256sum` lines (`<hex>  <name>\\n`, in name order).
The file's bytes, not the bars picked from it: the digest can be made from the configuration
alone, before and without a load (the run id is derived in the start-up checks, a sweep's
parent and a replay of a record too), and `sha256sum` checks it. A file re-saved with the same
bars (another compression) is other data to it; `data.symbols`, `run.end` and the repairs
that pick the bars from the file are in config.json and the run id already. The bundled
series have none: they ship in the `arch` package, whose version environment.json records.
A panel passed in Python (`strategy_api`'s frames) has its own digest, in `data.digest`.

Cost: hashing is about 0.03 s for the 43 MB S&P 500 Parquet file (SHA-NI; about 0.15 s
without), against 0.09 s for the load from the data cache. So the digest is kept under the
data cache's keys of the files (resolved path, size, mtime, ctime, inode: `panel_cache.
_input_files`), hashed into one key for a file or a whole folder, in this process and, when
the data cache is on, in `file_digests.json` in its folder: unchanged files are not read
again; a rewritten one (a new ctime, whatever mtime was restored) makes its file or folder
hashed again. The memo is bounded (`MEMO_ENTRIES`) and never makes a run fail: a memo that
cannot be read or written only costs a hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from .panel_cache import _input_files

log = structlog.get_logger(__name__)

#: The memo file in the data cache's folder (`_evict` leaves files not its own alone).
MEMO_FILE = "file_digests.json"
#: Digests kept in the memo (in this process and on disk), the oldest dropped first: one per
#: version of a data file or folder (its files' keys hashed into one), about 150 bytes each.
#: One entry a file made a folder of more files than this hash most of them again at every
#: call, and two folders of 600 files evict each other's.
MEMO_ENTRIES = 1024
_MEMO_FORMAT = 2

_memo: OrderedDict[str, str] = OrderedDict()


def data_fingerprint(
    source: str, path: str | None, memo_dir: Path | None = None
) -> dict[str, Any] | None:
    """{"source", "sha256", "files", "bytes"} of the data files `source` and `path` name, or
    None when there are none to hash (the bundled series, no path, a missing or unreadable
    file: the load then says what is wrong). `memo_dir`: the data cache's folder, where the
    digests are kept between runs (None: in this process only)."""
    inputs = _input_files(source, path)
    if not inputs:
        return None
    root = Path(str(path)).resolve()
    total = sum(int(f["size"]) for f in inputs)
    # The data cache's key of every file (path, size, mtime, ctime, inode), as one: any file
    # changed, added or removed is another version of the whole, hashed again.
    key = hashlib.sha256(
        "\n".join(
            "|".join(str(f[k]) for k in ("path", "size", "mtime_ns", "ctime_ns", "inode"))
            for f in inputs
        ).encode()
    ).hexdigest()
    sha = _memo.get(key)
    disk = None
    if sha is None and memo_dir is not None:
        disk = _read_memo(memo_dir)
        sha = disk.get(key)
    if sha is None:
        lines = []
        for f in inputs:
            try:
                with open(f["path"], "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError:
                return None
            name = Path(f["path"]).name if len(inputs) == 1 else _relative(f["path"], root)
            lines.append(f"{digest}  {name}\n")
        if len(inputs) == 1 and not root.is_dir():
            sha = lines[0].split(" ", 1)[0]
        else:
            sha = hashlib.sha256("".join(lines).encode()).hexdigest()
        if disk is not None and memo_dir is not None:
            disk[key] = sha
            _write_memo(memo_dir, disk)
    _remember(key, sha)
    return {"source": source, "sha256": sha, "files": len(inputs), "bytes": total}


def _relative(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return Path(file).name


def _remember(key: str, digest: str) -> None:
    _memo[key] = digest
    _memo.move_to_end(key)
    while len(_memo) > MEMO_ENTRIES:
        _memo.popitem(last=False)


def _read_memo(memo_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((memo_dir / MEMO_FILE).read_text(encoding="utf-8"))
        if data.get("format") != _MEMO_FORMAT:
            return {}
        digests = data["digests"]
        return {
            str(k): v
            for k, v in digests.items()
            if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
        }
    except FileNotFoundError:
        return {}
    except Exception as exc:  # damaged or unreadable: rebuilt, never trusted, never fatal
        log.debug("data.digest_memo_unreadable", path=str(memo_dir / MEMO_FILE), error=str(exc))
        return {}


def _write_memo(memo_dir: Path, digests: dict[str, str]) -> None:
    """The memo with the newest `MEMO_ENTRIES` digests, written to a temporary name and
    renamed into place (two runs writing at once: the last one's stays, the other's digests
    are hashed again when next needed)."""
    kept = dict(list(digests.items())[-MEMO_ENTRIES:])
    text = json.dumps({"format": _MEMO_FORMAT, "digests": kept})
    tmp = memo_dir / f".{MEMO_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, memo_dir / MEMO_FILE)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.debug("data.digest_memo_unwritable", path=str(memo_dir), error=str(exc))


def data_digest(data: Any) -> str | None:
    """A summary.json `data` record's digest as "sha256 <hex>" (data files) or "frames <hex>"
    (frames passed in Python: `strategy_api.frames_data`); None without one."""
    if not isinstance(data, Mapping):
        return None
    for key, label in (("sha256", "sha256"), ("digest", "frames")):
        if isinstance(data.get(key), str) and data[key]:
            return f"{label} {data[key]}"
    return None


def data_text(data: Any) -> str:
    """A summary.json `data` record in a line, its digest and what it covers: `tradingd
    backtest`'s last lines and `tradingd compare`'s (here, not in the analysis package:
    a backtest from the data cache imports no pandas)."""
    if not isinstance(data, Mapping):
        return f"not readable ({data!r})"
    digest = data_digest(data)
    source = str(data.get("source", "?"))
    if digest is None:
        if source == "bundled":  # shipped in a package: its version is the data's
            return "the bundled series, no digest (arch's version is in environment.json)"
        return f"source {source}, no digest"
    files, size = data.get("files"), data.get("bytes")
    if isinstance(files, int) and isinstance(size, int):
        return f"{digest} ({source}, {files:,} file{'s' if files != 1 else ''}, {size:,} bytes)"
    return f"{digest} ({source})"
