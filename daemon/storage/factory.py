"""Pick the store from DATABASE_URL's scheme."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ..core.endpoints import is_postgres_url
from ..core.errors import ConfigError
from ..secrets import mask_url
from .spool import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    from .buffered import BufferedStore

# How long one PostgreSQL statement waits for the server's answer (storage.command_timeout_s).
DEFAULT_COMMAND_TIMEOUT_S = 15.0

VALID_SCHEMES = (
    "sqlite:///path.db (relative), sqlite:////abs/path.db, sqlite:///:memory:, "
    "postgresql://..., postgres://..."
)


def sqlite_path(url: str) -> str:
    """The file path of a sqlite:/// URL: `sqlite:///data/x.db` is relative to the working
    directory, `sqlite:////var/x.db` absolute, `sqlite:///:memory:` in memory. A URL's path
    is percent-encoded (`sp%20ace` is the folder `sp ace`, `%25` a literal `%`; a `%` that
    starts no escape stays as written): read undecoded, the store was made in a folder named
    `sp%20ace`. Every reader of the store's path (the store, its locks, the start-up checks)
    reads it here, so all of them name one file."""
    try:
        path = unquote(url[len("sqlite:///") :].split("?", 1)[0], errors="strict")
    except UnicodeDecodeError:
        raise ConfigError(
            f"DATABASE_URL {url!r} is invalid: its path's percent-escapes are not UTF-8 text; "
            "write the path's characters as they are, or escape their UTF-8 bytes"
        ) from None
    if not path:
        raise ConfigError(f"DATABASE_URL {url!r} names no file; valid: {VALID_SCHEMES}")
    if "\0" in path:
        raise ConfigError(
            f"DATABASE_URL {url!r} is invalid: its path holds a NUL character (%00), which "
            "no file name can; remove it"
        )
    return path


def missing_sqlite_store(url: str) -> Path | None:
    """The absolute path of the SQLite file `url` names when that file does not exist, else
    None (a file that exists, an in-memory store, PostgreSQL). A command that only reads a
    stored run asks this before opening the store: opening a SQLite store creates the file,
    its schema and its lock files, so `tradingd reset-halt` run with the wrong URL (an
    operator's shell without the unit's DATABASE_URL) left an empty var/paper.db behind."""
    url = (url or "").strip()
    if not url.lower().startswith("sqlite:///"):
        return None
    db = sqlite_path(url)
    if db == ":memory:":
        return None
    path = Path(db).expanduser().absolute()
    return None if path.exists() else path


def open_store(
    url: str,
    batch_size: int = 5000,
    schema: str | None = None,
    signals: str = "decisions",
    flush_interval_s: float = 0.1,
    *,
    spool: bool = True,
    spool_dir: str | None = None,
    spool_max_bytes: int = DEFAULT_MAX_BYTES,
    start_retry_s: float = 0.0,
    command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
) -> BufferedStore:
    """A not-yet-started store for `url`. `schema` applies to PostgreSQL only (SQLite has
    one namespace per file and ignores it), and so do the spool settings (`spool`: keep
    running through a database outage by spooling writes to `spool_dir`, at most
    `spool_max_bytes`; `start_retry_s`: how long `start()` waits for a server that is down;
    `command_timeout_s`: how long one statement waits for the server's answer).
    See storage/postgres.py."""
    url = (url or "").strip()
    lower = url.lower()
    if lower.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(
            sqlite_path(url),
            batch_size=batch_size,
            signals=signals,
            flush_interval_s=flush_interval_s,
        )
    if is_postgres_url(url):
        from .postgres import PostgresStore

        return PostgresStore(
            url,
            batch_size=batch_size,
            schema=schema,
            signals=signals,
            flush_interval_s=flush_interval_s,
            spool=spool,
            spool_dir=spool_dir or None,
            spool_max_bytes=spool_max_bytes,
            start_retry_s=start_retry_s,
            command_timeout=command_timeout_s,
        )
    raise ConfigError(
        f"DATABASE_URL {mask_url(url)!r} has an unsupported scheme; valid: {VALID_SCHEMES}"
    )
