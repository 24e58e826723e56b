"""Files written whole or not at all: each to a temporary name in its own folder, flushed to
disk (fsync), then renamed over the file it replaces. A full disk, an I/O error or an
interruption leaves the files as they were before (the temporary ones removed), never a
truncated one: `tradingd report` on a full disk left a report.html of 401 kB of its 5 MB
in the run's folder, which a browser opened as a report.

Several files are written as one: every temporary file first, the renames only once all of
them are on disk, so a report.html is never left beside the report.json of another report.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TextIO

#: The random part of a temporary name (`temp_name`), in hex characters.
TEMP_TOKEN = 8


def temp_name(name: str, pid: str, token: str) -> str:
    """The temporary name a writer gives file `name` until its rename (hidden: a dot first):
    this module's and the backtest record's, which `is_temp` knows again."""
    return f".{name}.{pid}.{token}.tmp"


_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{{{TEMP_TOKEN}}}\.tmp$")


def is_temp(name: str, names: Collection[str]) -> bool:
    """Whether `name` is a writer's temporary file (`temp_name`) of one of `names`."""
    match = _TEMP_RE.match(name)
    return match is not None and match["name"] in names


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts: it cannot be signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


#: How long a dead writer's temporary file must have been left untouched to be removed.
DEAD_TEMP_AGE_S = 600.0


def remove_dead_writers_temps(folder: Path, names: Collection[str]) -> list[str]:
    """The temporary files (`temp_name`) of `names` in `folder` whose writer process is gone
    (a SIGKILL or a power cut mid-write) and that were not touched for `DEAD_TEMP_AGE_S`,
    removed; a living writer's are left. Without it a
    killed `tradingd report` left its hidden 5 MB temporary report beside the report for
    good. Best effort: a file that cannot be listed or removed is left, not an error."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    now = time.time()
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or match["name"] not in names or pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            # Untouched for DEAD_TEMP_AGE_S too: a writer in another pid namespace (another
            # container on a shared volume) looks dead here while it writes.
            if (
                entry.is_file(follow_symlinks=False)
                and now - entry.stat(follow_symlinks=False).st_mtime > DEAD_TEMP_AGE_S
            ):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


#: What goes into a file: its text, or a function writing it to the open file.
Content = str | Callable[[TextIO], object]


def write_atomically(files: Mapping[Path, Content], *, newline: str | None = None) -> None:
    """Write each of `files` (path: content) in UTF-8, all or none of them replaced.

    On failure raises `FileNotWritten` (an OSError) whose `filename` is the file that could
    not be written (its final name, not the temporary one) and whose `errno` and `strerror`
    say why; no temporary file is left. `newline`: as `open`'s ("" for CSV writers)."""
    pid, token = str(os.getpid()), secrets.token_hex(TEMP_TOKEN // 2)
    folders: dict[Path, set[str]] = {}
    for path in files:
        folders.setdefault(path.parent, set()).add(path.name)
    for folder, names in folders.items():
        remove_dead_writers_temps(folder, names)
    staged: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            tmp = path.with_name(temp_name(path.name, pid, token))
            staged.append((tmp, path))
            try:
                # Not tempfile.mkstemp: its files are private (0600), these the umask's.
                with tmp.open("x", encoding="utf-8", newline=newline) as fh:
                    if isinstance(content, str):
                        fh.write(content)
                    else:
                        content(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise _naming(exc, path) from exc
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _naming(exc, path) from exc
        for folder in {path.parent for _, path in staged}:
            _sync_folder(folder)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()


class FileNotWritten(OSError):
    """A file `write_atomically` could not write (its errno, strerror and final name): told
    from an OSError reading what went into it."""


def _naming(exc: OSError, path: Path) -> FileNotWritten:
    return FileNotWritten(exc.errno, exc.strerror or str(exc), str(path))


def _sync_folder(folder: Path) -> None:
    """The renames on disk too (best effort: not every filesystem lets a folder be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def unwritable(exc: FileNotWritten, elsewhere: str) -> str:
    """The error for a file `write_atomically` could not write: which, why, what to do
    (`elsewhere`: how to write it to another place, e.g. "write the report elsewhere with
    --output FOLDER")."""
    import errno

    where = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = f"free space there and run it again, or {elsewhere}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"make it writable for this user and run it again, or {elsewhere}"
    else:
        advice = f"run it again once that is resolved, or {elsewhere}"
    return f"cannot write {where}: {exc.strerror or exc} (it is left as it was): {advice}"
