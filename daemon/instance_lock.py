"""One daemon per store and account: a second tradingd on the same pair refuses to start.

Two daemons writing the same append-only tables would double every order, fill and equity
row, and two daemons trading one broker account would double every order. So the daemon takes
this lock before it opens the store, and holds it for its whole life.

The lock identity is (store, account). `account` is a string the caller derives, for example
`account_for("alpaca", key_id)` or `"simulated:<run name>"`; it is only ever stored, logged
and shown as a hash, so a key that slips into it does not leak.

Two kinds, both freed by the operating system or the database when the holder dies, even by
SIGKILL, so a crash can never leave a stuck lock:

* PostgreSQL (`postgresql://`, `postgres://`): a session-level `pg_try_advisory_lock(bigint)`
  on a dedicated connection kept open for the daemon's lifetime; the key is a stable 64-bit
  hash of "tradingd" and the account (advisory locks are per database, so the database is part
  of the identity). The server frees the lock when the session ends. The holder's pid, host and
  start time go into the table `tradingd_instance` only so a refusal can name the holder; the
  advisory lock, not the table, is the truth (a row left by a crashed holder is overwritten).
  The session asks the server for TCP keepalives, so a holder whose machine vanished without
  closing its connection loses the lock within about a minute, not after the OS default of
  hours.
* SQLite (`sqlite:///path`) and stores that are not shared (`sqlite:///:memory:`): a lock file
  held with `flock(LOCK_EX | LOCK_NB)` on a descriptor kept open for the process lifetime; the
  kernel releases it when the process dies. The file is `<db path>.<hash>.lock` next to the
  database, or `tradingd-<hash>.lock` in `lock_dir` (default for an in-memory store: the
  system temporary folder). The holder's pid, host and start time are written into the file
  for the refusal message; a file left by a killed process is not locked and does not block.
  What flock's error means is `core.flock`'s: held refuses (`AnotherDaemonRunning`), a
  filesystem without locks is `LocksUnsupported` (a set-up mistake: a ConfigError too, exit
  EX_CONFIG, never waited for as a database that is down), and any other failure (EIO,
  EBADF, EACCES, ...) is `LockFileFailed`, which stops the start at once: never read as "no
  locks here".

The broker account, machine-wide. Both locks above sit with the store, so two daemons of one
configuration in two working folders (a relative `sqlite:///var/paper.db`) or on two
databases never meet, and would trade one broker account twice. A daemon that trades a real
broker account therefore also takes `acquire_account_lock`: a lock file named by the account
alone in one folder per user (`account_lock_dir`: `$TRADINGD_LOCK_DIR`, else
`~/.cache/tradingd/locks`; not `$XDG_RUNTIME_DIR`, which a login shell has and a service
has not, so the two would lock in two folders). Two users sharing `$TRADINGD_LOCK_DIR` meet
too when they share a group: a lock file is made 0640 (`LOCK_FILE_MODE`), so the second
opens the first one's read-only, which flock locks all the same; a folder on NFS is warned
about (flock there may not be reliable). Not 0644: flock takes an exclusive lock through a
read-only descriptor, so any local user able to read a lock file could hold it and keep
every daemon and backtest of that store from starting. The group is the trust boundary:
share `$TRADINGD_LOCK_DIR` between users through a group (a setgid folder), and a user
outside it gets an error naming the file, never a start without the lock. The open does not
follow a symbolic link (`O_NOFOLLOW`): one planted at the lock's path would have had its
target truncated and overwritten by the holder record. Nor is a lock folder another user can
change used (`check_lock_dir`): one of theirs outside this user's groups, one writable by
all without the sticky bit (repaired when it is ours), or their symbolic link; its owner
could delete the lock file under its holder, and a second daemon would lock a new one. The
account of an Alpaca daemon is
`broker_account("alpaca", key_id, base_url)`, whose endpoint is normalised first: the same
account written `http://127.0.0.1:8080`, `http://LOCALHOST:8080/` or with `:443` after
`https://` is one lock, not two. Nothing on one host can see a daemon on another: that is
the operator's to prevent (see the README).

Losing the lock while running. A PostgreSQL lock lives exactly as long as its connection: a
restarted database, a network cut or `pg_terminate_backend` frees it. Call `check()`
periodically (every heartbeat, say). It returns True while the lock is held without a break.
It returns False when the lock was lost since the previous call, after trying once to take it
again; `held` then says whether that worked. The rule for the caller:

* `check()` True: carry on.
* `check()` False and `held` True: the lock was re-acquired, nobody else holds it now; log it
  and carry on.
* `check()` False and `held` False: another daemon took over (`last_error` is an
  `AnotherDaemonRunning` naming it): stop trading. Or the database cannot be reached to
  prove either way (any other `last_error`): the lock is unproven. The daemon's
  `InstanceLockService` then carries on (the store rides out the outage with its spool, and
  no other daemon can take the lock from a database it cannot reach either), shows it in
  /ready and checks again after 0.25 s, doubling up to 5 s.

The service does not wait for its next periodic check to learn that a PostgreSQL lock's
session closed: asyncpg's termination listener on the lock connection makes it check at once
(milliseconds after the server ends the session or the socket resets). A session whose peer
vanished without closing (a cut cable) is not seen by the client until the periodic check
(30 s); the server frees its lock after its keepalive (about a minute).

A lock file cannot be lost while its descriptor is open; its `check()` only notices the file
being deleted or replaced underneath it (which would let a second daemon lock a new file) and
then follows the same rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pwd
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .core import flock

# One account is one lock however its URL is written.
from .core.endpoints import endpoint as broker_endpoint
from .core.endpoints import is_postgres_url
from .core.errors import ConfigError, StorageError
from .core.lazy import LazyModule
from .secrets import mask_url, scrub
from .storage.factory import sqlite_path

if TYPE_CHECKING:
    import asyncpg
else:
    # Imported at the first use of a PostgreSQL lock: a backtest into a SQLite file takes
    # its run lock from here (app._run_lock) and never needs asyncpg, whose import was most
    # of that command's set-up (about 30 ms, 77 million instructions, benchmarks/replay.py).
    asyncpg = LazyModule("asyncpg")

log = structlog.get_logger(__name__)

NAMESPACE = "tradingd"
TABLE = "tradingd_instance"
MEMORY = ":memory:"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Serialises the creation of the holder table by several processes (any fixed key, distinct
# from the store's own DDL key and from every instance key with overwhelming probability).
_DDL_KEY = int.from_bytes(
    hashlib.sha256(b"tradingd instance table ddl").digest()[:8], "big", signed=True
)


def _pg_errors() -> tuple[type[BaseException], ...]:
    """What a PostgreSQL lock's calls may raise. A function, not a module constant: the tuple
    names asyncpg's classes, which imports asyncpg (see above), and an `except` clause
    evaluates it only when an exception reaches it. InternalClientError: what asyncpg raises
    on a connection whose server ended the session unasked (pg_terminate_backend, a server
    restart) before it noticed the socket closing."""
    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        asyncio.TimeoutError,
    )


# How long giving a PostgreSQL lock up at stop waits for the server (its two statements, then
# the close): a stop with a hung database must end within systemd's TimeoutStopSec.
RELEASE_WAIT_S = 3.0

# Server-side TCP keepalive of the lock session: a holder whose host died without closing the
# connection is noticed (and its lock freed) after about idle + interval * count seconds.
_KEEPALIVE = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}


class LocksUnsupported(StorageError, ConfigError):
    """The lock file's filesystem does not do file locks (`core.flock`: ENOLCK, ENOTSUP,
    ENOSYS, EINVAL). The store's lock stops the start; the account lock is then said and
    left to the store's lock, as for a lock folder that cannot be written. A set-up mistake
    (the lock's folder is on such a filesystem) that no restart ends: a ConfigError too, so
    `tradingd run` exits with EX_CONFIG, which systemd does not restart, and the start does
    not wait for it as for a database that is down."""


class LockFileFailed(StorageError):
    """flock failed on the lock file for another reason (EBADF, EIO, EACCES, ...): nothing
    says locks are unsupported there, so the start stops rather than run unlocked beside a
    holder it cannot see. Not waited for as a database that is down."""


class LockDirUnsafe(LockFileFailed, ConfigError):
    """The lock file's folder can be changed by a user other than this one, root and its
    group (`check_lock_dir`): another user's folder outside this user's groups, one every
    local user may write without the sticky bit that keeps them from removing our files
    (not ours to repair), or a symbolic link another user owns. Whoever can change the
    folder can delete the lock file under a running daemon, or point the folder elsewhere,
    and a second daemon then locks a new file beside it. A set-up mistake no restart ends:
    a LockFileFailed (the start stops, the account lock included) and a ConfigError (exit
    EX_CONFIG)."""


class AnotherDaemonRunning(ConfigError):
    """Another tradingd holds the lock for this store and account: stop it, or point this one
    at another store or account."""

    def __init__(self, message: str, *, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


def account_for(kind: str, identity: str) -> str:
    """An account string for `acquire_instance_lock` that never contains `identity` in clear:
    `account_for("alpaca", key_id)` -> `"alpaca:<16 hex digits>"`."""
    return f"{kind}:{_digest(identity)}"


def broker_account(kind: str, key_id: str, base_url: str) -> str:
    """The lock account of a broker account: its key id at its normalised endpoint
    (`broker_endpoint`), hashed by `account_for`. Every place that locks a broker account
    derives it here, so the daemon and `tradingd reset-halt` name the same lock."""
    return account_for(kind, f"{key_id}@{broker_endpoint(base_url)}")


def account_hash(account: str) -> str:
    """How an account is shown in logs, messages, the lock file and the holder table."""
    return _digest(account)


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def advisory_key(account: str, schema: str | None = None) -> int:
    """The signed 64-bit PostgreSQL advisory lock key of `account`: stable across processes,
    machines and Python versions (sha256, not `hash()`)."""
    parts = [NAMESPACE, *([schema] if schema else []), account]
    raw = hashlib.sha256("\0".join(parts).encode("utf-8")).digest()[:8]
    return int.from_bytes(raw, "big", signed=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def holder_text(holder: dict[str, Any]) -> str:
    """Who holds a lock, for messages: 'another tradingd (pid ... on host ..., since ...,
    store ...)' (the store when the holder recorded it: a lock file does)."""
    if holder.get("pid") is None:
        extra = holder.get("unknown") or "its pid and host are not recorded yet"
        return f"another tradingd ({extra})"
    store = f", store {holder['store']}" if holder.get("store") else ""
    return (
        f"another tradingd (pid {holder['pid']} on host {holder.get('host') or '?'}, "
        f"since {holder.get('started_at') or '?'}{store})"
    )


def _refusal(holder: dict[str, Any], store: str, account: str, where: str) -> AnotherDaemonRunning:
    return AnotherDaemonRunning(
        f"{holder_text(holder)} holds the lock for this store and account "
        f"(store {store}, account {account_hash(account)}, {where}); "
        "stop it or point this one at another store/account",
        holder=holder,
    )


class InstanceLock:
    """A held instance lock. `release()` is idempotent; `async with` releases on exit."""

    kind = "none"

    def __init__(self, store: str, account: str) -> None:
        self.store = store  # shown form: masked URL or file path, never a secret
        self.account = account_hash(account)
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started_at = _now()
        self.released = False
        self.held = False
        self.lost_count = 0
        self.last_error: Exception | None = None
        # Called (no arguments, from the event loop) the moment the lock is seen to end
        # without a check: the session of a PostgreSQL lock closing. InstanceLockService
        # sets it to check at once instead of at its next interval.
        self.on_session_end: Callable[[], None] | None = None
        self._account = account

    async def check(self) -> bool:
        """True while the lock is held without a break; see the module docstring."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether the lock is held and nothing has yet been seen to end it: no I/O, for a
        check before every bar. False does not say who holds it now: `check()` does."""
        return self.held and not self.released

    async def release(self) -> None:
        """Give the lock up (idempotent); after it, `check()` is False."""
        raise NotImplementedError

    async def _take(self) -> None:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Holder information for logs and /health: no secrets (masked URL, hashed account)."""
        return {
            "kind": self.kind,
            "store": self.store,
            "account": self.account,
            "lock": self._where(),
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at,
            "held": self.held,
            "lost_count": self.lost_count,
        }

    def _holder_record(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at,
            "account": self.account,
            "store": self.store,  # shown form: a file path or a masked URL
        }

    def _refuse(self, holder: dict[str, Any]) -> AnotherDaemonRunning:
        return _refusal(holder, self.store, self._account, self._where())

    async def __aenter__(self) -> InstanceLock:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    def _lost(self, reason: str) -> None:
        self.held = False
        self.lost_count += 1
        log.warning("instance_lock.lost", reason=reason, **self.describe())

    def _reacquire_result(self, error: Exception | None) -> bool:
        """check()'s answer after a loss: always False, with `last_error` set. Logged by the
        caller, which knows what it does about it (InstanceLockService: carries on while the
        database cannot be reached, stops when another daemon holds the lock). Logged here
        too, it said "stop trading" every 5 s of a database outage the daemon traded
        through, and "reacquired" twice."""
        self.last_error = error
        return False


# PostgreSQL -------------------------------------------------------------------------------


class PostgresInstanceLock(InstanceLock):
    kind = "postgresql"

    def __init__(
        self,
        url: str,
        account: str,
        *,
        schema: str | None,
        connect_timeout: float,
        command_timeout: float,
    ) -> None:
        super().__init__(mask_url(url), account)
        if schema is not None and not _IDENT.match(schema):
            raise ConfigError(
                f"instance lock: schema {schema!r} is not a valid identifier "
                "(letters, digits and _, not starting with a digit)"
            )
        self.key = advisory_key(account, schema)
        self.schema = schema
        self._url = url
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._conn: asyncpg.Connection | None = None
        self._op = asyncio.Lock()

    def _where(self) -> str:
        return f"PostgreSQL advisory lock {self.key}"

    def alive(self) -> bool:
        conn = self._conn
        return self.held and not self.released and conn is not None and not conn.is_closed()

    def _session_ended(self, conn: asyncpg.Connection) -> None:
        """asyncpg's termination listener of the lock session: the server ended it (a
        restart, pg_terminate_backend) or the socket broke, and the server has freed the
        advisory lock, so another daemon may take it now. Waiting for the next periodic
        check let a second daemon in and both traded for up to its interval (30 s). Not for
        our own close (release, or a session replaced by check())."""
        if conn is not self._conn or self.released:
            return
        then = (
            "checking it now"
            if self.on_session_end is not None
            else "not watched: taken again only at its next check()"
        )
        log.warning(
            "instance_lock.session_ended",
            reason=f"the PostgreSQL session holding the advisory lock closed; {then}",
            **self.describe(),
        )
        if self.on_session_end is not None:
            self.on_session_end()

    @property
    def _table(self) -> str:
        return f'"{self.schema}".{TABLE}' if self.schema else TABLE

    @property
    def _classid_objid(self) -> tuple[int, int]:
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return unsigned >> 32, unsigned & 0xFFFF_FFFF

    def _storage_error(self, what: str, e: BaseException) -> StorageError:
        detail = scrub(f"{type(e).__name__}: {e}", self._url)
        return StorageError(f"{what} PostgreSQL at {self.store}: {detail}")

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self._url,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings={"application_name": "tradingd instance lock", **_KEEPALIVE},
            )
        except _pg_errors() as e:
            raise self._storage_error("instance lock: cannot connect to", e) from e

    async def _take(self) -> None:
        """Connect, try the advisory lock, record the holder; raises AnotherDaemonRunning or
        StorageError. On success `_conn` is the session that holds the lock."""
        conn = await self._connect()
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", self.key)
            if not got:
                try:
                    holder = await self._holder(conn)
                except _pg_errors() as e:  # naming the holder is a courtesy, the refusal is not
                    holder = {"unknown": f"cannot read who: {type(e).__name__}"}
                raise self._refuse(holder)
            await self._record(conn)
        except AnotherDaemonRunning:
            await self._close(conn)
            raise
        except _pg_errors() as e:
            conn.terminate()
            raise self._storage_error("instance lock: failed on", e) from e
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.held = True
        conn.add_termination_listener(self._session_ended)

    async def _record(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", _DDL_KEY)
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                "lock_key bigint PRIMARY KEY, account text NOT NULL, pid integer NOT NULL, "
                "host text NOT NULL, started_at text NOT NULL, backend_pid integer NOT NULL, "
                "acquired_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(
                f"INSERT INTO {self._table} "
                "(lock_key, account, pid, host, started_at, backend_pid, acquired_at) "
                "VALUES ($1, $2, $3, $4, $5, pg_backend_pid(), now()) "
                "ON CONFLICT (lock_key) DO UPDATE SET account = EXCLUDED.account, "
                "pid = EXCLUDED.pid, host = EXCLUDED.host, started_at = EXCLUDED.started_at, "
                "backend_pid = EXCLUDED.backend_pid, acquired_at = EXCLUDED.acquired_at",
                self.key,
                self.account,
                self.pid,
                self.host,
                self.started_at,
            )

    async def _holder(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """Who holds the key: the PostgreSQL session from pg_locks (the truth), and the
        tradingd process from the table when its row belongs to that session."""
        classid, objid = self._classid_objid
        backend = await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1 "
            "LIMIT 1",
            classid,
            objid,
        )
        holder: dict[str, Any] = {"backend_pid": backend}
        try:
            row = await conn.fetchrow(
                f"SELECT pid, host, started_at, backend_pid FROM {self._table} WHERE lock_key = $1",
                self.key,
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            row = None
        if row is not None and (backend is None or row["backend_pid"] == backend):
            holder.update(pid=row["pid"], host=row["host"], started_at=row["started_at"])
        else:
            holder["unknown"] = (
                f"PostgreSQL session {backend}; its pid and host are not recorded yet"
                if backend is not None
                else "its pid and host are not recorded"
            )
        return holder

    async def _still_held(self, conn: asyncpg.Connection) -> bool:
        classid, objid = self._classid_objid
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND classid = $1::bigint::oid "
            "AND objid = $2::bigint::oid AND objsubid = 1",
            classid,
            objid,
        )
        return bool(n)

    async def check(self) -> bool:
        async with self._op:
            if self.released:
                return False
            if self.held and self._conn is not None and not self._conn.is_closed():
                try:
                    if await self._still_held(self._conn):
                        return True
                    reason = "the session no longer holds the advisory lock"
                except Exception as e:  # any failure: the lock cannot be shown to be held
                    reason = scrub(f"lock connection lost: {type(e).__name__}: {e}", self._url)
                self._lost(reason)
            elif self.held:
                self._lost("lock connection closed")
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            try:
                await self._take()
            except (AnotherDaemonRunning, StorageError) as e:
                return self._reacquire_result(e)
            return self._reacquire_result(None)

    async def release(self) -> None:
        async with self._op:
            if self.released:
                return
            self.released = True
            conn, self._conn = self._conn, None
            was_held, self.held = self.held, False
            if conn is None:
                return
            if was_held and not conn.is_closed():
                try:
                    # A hung server held a SIGTERM here for 30 s (two statements and the
                    # close, 10 s each): the stop is bounded, and ending the session frees
                    # the lock all the same once the server notices.
                    async with asyncio.timeout(RELEASE_WAIT_S):
                        await conn.execute(
                            f"DELETE FROM {self._table} "
                            "WHERE lock_key = $1 AND backend_pid = pg_backend_pid()",
                            self.key,
                        )
                        await conn.fetchval("SELECT pg_advisory_unlock($1::bigint)", self.key)
                except _pg_errors() as e:
                    log.warning(
                        "instance_lock.release_failed",
                        error=self._explain(e),
                        hint="the session is ended instead: the server frees the lock when it "
                        "sees it gone",
                        **self.describe(),
                    )
                    conn.terminate()
                    log.info("instance_lock.released", **self.describe())
                    return
            await self._close(conn)
            log.info("instance_lock.released", **self.describe())

    def _explain(self, e: BaseException) -> str:
        """`e` as "Type: message" for a log, without the URL's password. A timeout has no
        message (release_failed logged `error: ""`): it says after how long."""
        if isinstance(e, TimeoutError) and not str(e):
            return f"TimeoutError: no answer within {RELEASE_WAIT_S:g} s"
        return scrub(f"{type(e).__name__}: {e}", self._url)

    async def _close(self, conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), min(self._connect_timeout, RELEASE_WAIT_S))
        except _pg_errors():
            conn.terminate()
        except asyncio.CancelledError:
            conn.terminate()
            raise


# Lock file --------------------------------------------------------------------------------


# Owner read-write (the holder record), group read (a user sharing the lock folder through a
# group locks through a read-only descriptor), nobody else: see the module docstring.
LOCK_FILE_MODE = 0o640


class FileInstanceLock(InstanceLock):
    kind = "file"

    def __init__(self, store: str, account: str, path: Path) -> None:
        super().__init__(store, account)
        self.path = path
        self._fd: int | None = None

    def _where(self) -> str:
        return f"lock file {self.path}"

    async def _take(self) -> None:
        """Open and lock the file, write the holder; raises AnotherDaemonRunning or
        StorageError. Local file calls that never wait (LOCK_NB), so no thread is needed."""
        for _ in range(3):
            fd = self._open_and_lock()
            # Locked a file someone deleted or replaced after we opened it: lock the new one.
            if self._same_file(fd):
                break
            os.close(fd)
        else:
            raise StorageError(f"instance lock: {self.path} keeps being replaced; cannot lock it")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            # Another user's file (see _open_and_lock): locked, but our record cannot go in,
            # so a refusal by us names whatever it holds (a previous holder, or nothing).
            log.warning(
                "instance_lock.holder_not_recorded",
                path=str(self.path),
                reason="the lock file is another user's and read-only to this one",
            )
            self._fd = fd
            self.held = True
            return
        try:
            data = json.dumps(self._holder_record()).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as e:
            os.close(fd)
            raise StorageError(
                f"instance lock: cannot write lock file {self.path}: {e}"
                + _disk_advice(e, self.path)
            ) from e
        self._fd = fd
        self.held = True

    def _open_and_lock(self) -> int:
        try:
            # Not writable by every local user even under a umask of 0 (see check_lock_dir).
            self.path.parent.mkdir(mode=LOCK_DIR_MODE, parents=True, exist_ok=True)
            check_lock_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, LOCK_FILE_MODE)
        except PermissionError as e:
            # A lock file another user of our group created (TRADINGD_LOCK_DIR shared by two
            # users) is 0640 to us: flock works on a read-only descriptor, so the lock is
            # still tested. Only a file that can be neither created nor opened leaves it
            # unavailable: an error, never a start without the lock.
            try:
                fd = os.open(self.path, os.O_RDONLY | _OPEN_FLAGS)
            except FileNotFoundError:
                # No such file: the folder is what this user cannot write (or make). The
                # message named a file that does not exist as "another user's".
                folder = self.path.parent
                what = (
                    f"the lock folder {folder} is not writable to this user"
                    if folder.is_dir()
                    else f"the lock folder {folder} cannot be made (its parent is not "
                    "writable to this user)"
                )
                raise StorageError(
                    f"instance lock: cannot create lock file {self.path}: {what} "
                    f"({e.strerror}): give this user write access to it (users sharing a lock "
                    "folder share it through a group)"
                ) from e
            except OSError:
                raise StorageError(
                    f"instance lock: cannot open lock file {self.path}: {e} (another user's, "
                    "not readable to this one? users sharing a lock folder share a group)"
                ) from e
        except OSError as e:
            raise StorageError(
                f"instance lock: cannot open lock file {self.path}: {e}"
                + _disk_advice(e, self.path)
            ) from e
        _narrow_mode(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if flock.is_held(e):
                raise self._refuse(self._read_holder()) from None
            if flock.is_unsupported(e):
                raise LocksUnsupported(
                    f"instance lock: the filesystem of {self.path} does not support file locks "
                    f"({flock.errno_text(e)}): put the lock on a local disk"
                ) from e
            raise LockFileFailed(
                f"instance lock: cannot lock {self.path} ({flock.errno_text(e)}): not started "
                "unlocked, as another daemon could then run beside this one unseen; fix the "
                "file or its disk, or lock elsewhere (TRADINGD_LOCK_DIR, lock_dir)"
            ) from e
        return fd

    def _read_holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
            holder = json.loads(text)
            if isinstance(holder, dict) and holder.get("pid") is not None:
                return holder
        except (OSError, ValueError):
            pass
        return {"unknown": "its pid and host are not written to the lock file yet"}

    def _same_file(self, fd: int) -> bool:
        """Whether `fd` is still the file at `path` (not deleted or replaced since)."""
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    async def check(self) -> bool:
        if self.released:
            return False
        if self.held and self._fd is not None and self._same_file(self._fd):
            return True
        if self.held:
            self._lost("lock file deleted or replaced")
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            await self._take()
        except (AnotherDaemonRunning, StorageError) as e:
            return self._reacquire_result(e)
        return self._reacquire_result(None)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        fd, self._fd = self._fd, None
        self.held = False
        if fd is None:
            return
        # Never unlink the file: another process may already wait on this inode, and an
        # unlinked-then-recreated file would let two processes hold "the" lock at once.
        with contextlib.suppress(OSError):
            if self._same_file(fd):
                os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        log.info("instance_lock.released", **self.describe())


class AccountLock(FileInstanceLock):
    """The machine-wide lock of a broker account (see the module docstring): a lock file
    named by the account alone, whose holder record names the holder's store."""

    kind = "account"

    def _refuse(self, holder: dict[str, Any]) -> AnotherDaemonRunning:
        return AnotherDaemonRunning(
            f"{holder_text(holder)} trades this broker account (account "
            f"{account_hash(self._account)}, {self._where()}); one daemon per broker account "
            "on this machine, whatever its store: stop it, or give this one an account of "
            "its own (other API keys)",
            holder=holder,
        )


# O_NOFOLLOW: a symbolic link at the lock's path is an error (ELOOP), not a file to truncate.
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


def _narrow_mode(fd: int) -> None:
    """A lock file of ours that an earlier release made 0644 (readable, so lockable, by
    every local user) loses what LOCK_FILE_MODE does not allow. Another user's file, or a
    filesystem that refuses, is left as it is: the lock works all the same."""
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~LOCK_FILE_MODE:
            os.fchmod(fd, st.st_mode & 0o777 & LOCK_FILE_MODE)


LOCK_DIR_ENV = "TRADINGD_LOCK_DIR"
# A lock folder the daemon makes: the owner's and its group's (the umask narrows it further).
LOCK_DIR_MODE = 0o775


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


def _user_name(uid: int) -> str:
    """The user's name for a command line (`sudo -u NAME`), else `#UID` (sudo's spelling)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def check_lock_dir(folder: Path) -> None:
    """Refuse (`LockDirUnsafe`) a lock folder a user other than this one, root and this
    user's groups can change, or repair one of ours that every local user may write.

    Whoever can change the folder can delete or rename a lock file under its holder (or
    swap the folder), and a second daemon then locks a new file at the same path while the
    first runs on: a folder another local user pre-created 0777 at `TRADINGD_LOCK_DIR`
    before the daemon's first start was used without a word. Trusted: a folder owned by
    this user or root; one owned by another user of one of this user's groups and not
    writable by all (a lock folder shared through a group, see the module docstring).
    Writable by all is fine with the sticky bit (as /tmp: nobody removes another's file),
    else it is repaired when the folder is ours (`chmod o-w`, logged as
    `instance_lock.lock_dir_repaired`) and refused when it is not. A symbolic link at the
    folder's path must be ours or root's too: its owner can point it elsewhere. A folder
    that cannot be examined is left to the open that follows, which names it."""
    euid = os.geteuid()
    try:
        link = os.lstat(folder)
        st = os.stat(folder)
    except OSError:
        return
    advice = (
        f"make it yours and not writable by all (chmod o-w), or set {LOCK_DIR_ENV} (lock_dir) "
        "to a folder of your own; users sharing a lock folder share it through a group "
        "(install -d -m 2770 -g GROUP ...)"
    )
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (euid, 0):
        raise LockDirUnsafe(
            f"instance lock: the lock folder {folder} is a symbolic link owned by "
            f"{_user(link.st_uid)}, not by this user ({_user(euid)}) or root: its owner can "
            f"point it elsewhere, where a second daemon would lock a file of its own; remove "
            f"it, or {advice}"
        )
    mode = stat.S_IMODE(st.st_mode)
    found = f"owned by {_user(st.st_uid)} with mode {mode:04o}"
    open_to_all = bool(mode & stat.S_IWOTH) and not mode & stat.S_ISVTX
    ours = st.st_uid == euid
    trusted = ours or st.st_uid == 0
    if not trusted and (st.st_gid not in {os.getegid(), *os.getgroups()} or mode & stat.S_IWOTH):
        # Most often an operator (root) running a command in a service's folder: "make it
        # yours" was followed, and the chown locked the service out of its own folder.
        owner = _user_name(st.st_uid)
        raise LockDirUnsafe(
            f"instance lock: the lock folder {folder} is {found}: not this user ({_user(euid)}), "
            f"root or a user of this user's groups, so its owner can delete the lock "
            f"file under a running daemon, and a second daemon would then lock a new one; "
            f"if it is the folder of a daemon that runs as {owner} (a service's var/), run "
            f"this command as that user (sudo -u {owner} ..., with the service's "
            'environment: systemd/README.md, "Admin commands") and leave the folder as it '
            f"is (made another user's, that daemon can no longer lock it); else {advice}"
        )
    if not open_to_all:
        return
    if ours:
        try:
            os.chmod(folder, mode & ~stat.S_IWOTH)
        except OSError as e:
            raise LockDirUnsafe(
                f"instance lock: the lock folder {folder} is {found}, writable by every local "
                f"user, and cannot be narrowed ({e}); {advice}"
            ) from e
        log.warning(
            "instance_lock.lock_dir_repaired",
            lock_dir=str(folder),
            mode_found=f"{mode:04o}",
            mode_now=f"{mode & ~stat.S_IWOTH:04o}",
            reason="a lock folder every local user may write lets any of them delete a lock "
            "file under its holder, so a second daemon locks a new one: made not writable by all",
        )
        return
    raise LockDirUnsafe(
        f"instance lock: the lock folder {folder} is {found}, writable by every local user "
        f"without the sticky bit: any of them can delete the lock file under a running daemon, "
        f"and a second daemon would then lock a new one; {advice}"
    )


def account_lock_dir() -> Path:
    """The folder of the machine-wide account locks: `$TRADINGD_LOCK_DIR`, else
    `~/.cache/tradingd/locks`. Every daemon of the host must see the same one (a service
    whose home is read-only sets TRADINGD_LOCK_DIR to a writable folder, and so must a
    daemon started by hand beside it)."""
    env = os.environ.get(LOCK_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tradingd" / "locks"


MOUNTS = "/proc/mounts"


def mount_type(path: Path) -> str | None:
    """The file system type of the mount holding `path` (its nearest existing folder), read
    from /proc/mounts; None where that cannot be read (not Linux)."""
    try:
        with open(MOUNTS, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        where = path.expanduser().absolute()
        while not where.exists() and where != where.parent:
            where = where.parent
        where = where.resolve()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts writes a space, tab, newline or backslash in a path as octal.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = where == Path(point) or Path(point) in where.parents
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fields[2])
    return None if best is None else best[1]


def account_lock_path(account: str, lock_dir: str | Path | None = None) -> Path:
    """Where the machine-wide lock file of `account` lives."""
    base = Path(lock_dir).expanduser() if lock_dir is not None else account_lock_dir()
    return base / f"account-{_digest(account)}.lock"


async def acquire_account_lock(
    account: str, store: str, *, lock_dir: str | Path | None = None, wait_s: float = 0.0
) -> AccountLock:
    """Take the machine-wide lock of the broker `account` for a daemon on `store` (only
    shown: a masked URL or a path), or raise `AnotherDaemonRunning` naming the holder and
    its store (after retrying for up to `wait_s`, for a holder that is just exiting), or
    `StorageError` when the lock file can be neither created nor opened (another user's
    lock file, readable but not writable, is locked through a read-only descriptor), or
    cannot be locked (`LocksUnsupported`, `LockFileFailed`)."""
    if not account:
        raise ConfigError("account lock: the account is empty (derive it from the broker account)")
    lock = AccountLock(store, account, account_lock_path(account, lock_dir))
    fs = mount_type(lock.path.parent)
    if fs is not None and fs.startswith("nfs"):
        log.warning(
            "instance_lock.lock_dir_on_nfs",
            lock_dir=str(lock.path.parent),
            fs=fs,
            reason="flock on NFS may not be reliable: set TRADINGD_LOCK_DIR to a local folder",
        )
    await _take(lock, wait_s, 0.0)
    log.info("instance_lock.acquired", **lock.describe())
    return lock


def lock_file_path(store_url: str, account: str, lock_dir: str | Path | None = None) -> Path:
    """Where the lock file of a SQLite store and account lives."""
    db = sqlite_path(store_url.strip())
    if db == MEMORY:
        identity = MEMORY  # not shared: only the account can collide
        base = Path(lock_dir) if lock_dir is not None else Path(tempfile.gettempdir())
        return base.expanduser() / f"tradingd-{_digest(identity + chr(0) + account)}.lock"
    resolved = Path(db).expanduser().resolve()
    name = _digest(str(resolved) + "\0" + account)
    if lock_dir is not None:
        return Path(lock_dir).expanduser() / f"tradingd-{name}.lock"
    return resolved.with_name(f"{resolved.name}.{name}.lock")


def _disk_advice(e: OSError, path: Path) -> str:
    """What to do about a lock file's full or read-only disk (", ..."), else ""."""
    folder = path.parent
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f": free space on the disk of {folder}"
    if e.errno == errno.EROFS:
        return f": {folder} is on a read-only filesystem: remount it read-write"
    return ""


# Entry point ------------------------------------------------------------------------------


async def acquire_instance_lock(
    store_url: str,
    account: str,
    *,
    lock_dir: str | Path | None = None,
    schema: str | None = None,
    wait_s: float = 0.0,
    unreachable_wait_s: float = 0.0,
    connect_timeout: float = 10.0,
    command_timeout: float = 10.0,
    shown: str | None = None,
) -> InstanceLock:
    """Take the lock for (`store_url`, `account`) or raise. `shown`: what the lock guards as
    logged and as a refused process reads it, for a file lock that guards no store (a
    replay's audit folder, locked in `lock_dir` under the memory URL); default the store.

    Raises `AnotherDaemonRunning` when another process holds it (after retrying for up to
    `wait_s` seconds, for a holder that is just exiting), `StorageError` when the database or
    the lock file cannot be reached (connection attempts time out after `connect_timeout`;
    a database that is down is tried again, with backoff, for up to `unreachable_wait_s`:
    the daemon's start waits for its database as the store does, `storage.start_retry_s`),
    and `ConfigError` for a URL of no known kind. `schema` (PostgreSQL only) makes the lock
    per schema and keeps the holder table there; `lock_dir` applies to SQLite only."""
    if not account:
        raise ConfigError("instance lock: the account is empty (derive it from the broker account)")
    url = (store_url or "").strip()
    lower = url.lower()
    lock: InstanceLock
    if is_postgres_url(url):
        lock = PostgresInstanceLock(
            url,
            account,
            schema=schema,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
        )
    elif lower.startswith("sqlite:///"):
        lock = FileInstanceLock(
            shown or _sqlite_shown(url), account, lock_file_path(url, account, lock_dir)
        )
    else:
        raise ConfigError(
            f"instance lock: store URL {mask_url(url)!r} has an unsupported scheme; "
            "valid: sqlite:///path.db, sqlite:///:memory:, postgresql://..., postgres://..."
        )
    await _take(lock, wait_s, unreachable_wait_s)
    log.info("instance_lock.acquired", **lock.describe())
    return lock


async def _take(lock: InstanceLock, wait_s: float, unreachable_wait_s: float) -> None:
    """`lock._take()`, retried while another holder lasts (`wait_s`) or the database is
    down (`unreachable_wait_s`)."""
    deadline = time.monotonic() + max(0.0, wait_s)
    down_deadline = time.monotonic() + max(0.0, unreachable_wait_s)
    delay = 0.5
    while True:
        try:
            await lock._take()
            break
        except AnotherDaemonRunning:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)
        except (LockFileFailed, LocksUnsupported):
            raise  # a file that cannot be locked, not a database that is down
        except StorageError as e:
            left = down_deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning(
                "instance_lock.waiting_for_database",
                error=str(e),
                retry_in_s=round(min(delay, left), 2),
                gives_up_in_s=round(left, 1),
            )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)


# How soon InstanceLockService looks again at a lock it could not prove held (the database
# unreachable): from this, doubling, up to the max.
UNPROVEN_RETRY_MIN_S = 0.25
UNPROVEN_RETRY_MAX_S = 5.0


def _sqlite_shown(url: str) -> str:
    db = sqlite_path(url)
    return db if db == MEMORY else str(Path(db).expanduser().resolve())


class InstanceLockService:
    """The lock as one of the engine's parts: taken first at start (before the store opens),
    released last at stop, and checked every `check_interval_s` in between, and at once when
    the session of a PostgreSQL lock closes (asyncpg's termination listener: a database
    restart, `pg_terminate_backend`, a reset connection), so a second daemon starting after a
    restart finds this one holding the lock again rather than the lock free. When it is lost
    to another daemon, `on_lost` is called once: the daemon stops trading rather than run
    beside another one. The engine asks `ensure_held()` before each bar's decisions: no I/O
    while the session is alive; a check first when it has ended.

    `machine_wide` (a real broker account): also the account's machine-wide lock
    (`acquire_account_lock`, in `account_lock_dir`), taken after the store's so that a second
    daemon on the same store is still told about the store. A lock folder that cannot be
    written (a service whose home is read-only) is logged, shown in /ready (still ok), and
    leaves the store's lock alone to guard the account: refusing would stop every such
    deployment, while the daemons it could miss are the ones started in other folders. So
    does a lock folder on a filesystem without file locks (`LocksUnsupported`); a lock file
    that cannot be locked for any other reason (`LockFileFailed`: EIO, EBADF, ...) stops the
    start, the store's lock released."""

    def __init__(
        self,
        store_url: str,
        account: str,
        *,
        lock_dir: str | Path | None = None,
        wait_s: float = 5.0,
        unreachable_wait_s: float = 0.0,
        check_interval_s: float = 30.0,
        on_lost: Callable[[str], None] | None = None,
        machine_wide: bool = False,
        account_lock_dir: str | Path | None = None,
    ) -> None:
        self.machine_wide = machine_wide
        self.account_lock_dir = account_lock_dir
        self.account_lock: AccountLock | None = None
        self.account_lock_error: str | None = None
        self.store_url = store_url
        self.account = account
        self.lock_dir = lock_dir
        self.wait_s = wait_s
        self.unreachable_wait_s = unreachable_wait_s
        self.check_interval_s = check_interval_s
        self.on_lost = on_lost
        self.lock: InstanceLock | None = None
        self.lost: str | None = None
        # Set once another daemon was found holding a lock: `on_lost` was called.
        self.stopped_by_loss = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._checking = asyncio.Lock()

    async def start(self) -> None:
        self.lock = await acquire_instance_lock(
            self.store_url,
            self.account,
            lock_dir=self.lock_dir,
            wait_s=self.wait_s,
            unreachable_wait_s=self.unreachable_wait_s,
        )
        if self.machine_wide:
            try:
                self.account_lock = await acquire_account_lock(
                    self.account,
                    self.lock.store,
                    lock_dir=self.account_lock_dir,
                    wait_s=self.wait_s,
                )
            except LockFileFailed:
                # Not "unavailable": the lock failed, and the account would run unlocked.
                await self.lock.release()
                raise
            except StorageError as e:
                self.account_lock_error = (
                    f"{e}; only the store's lock guards this account: set {LOCK_DIR_ENV} to a "
                    "folder every tradingd of this host can write"
                )
                log.warning("instance_lock.account_lock_unavailable", error=self.account_lock_error)
            except BaseException:
                await self.lock.release()
                raise
        self.watch(self.lock)

    def watch(self, lock: InstanceLock) -> None:
        """Check `lock` as `start` checks its own: every `check_interval_s`, and at once when
        its PostgreSQL session ends (taken again, or `on_lost` once another holds it). For a
        lock the caller took: a live run's own lock (`app.RunLock`), which a database
        restart freed for good while the daemon ran on, so a `reset-halt` or a second
        daemon of the run could take it. `stop` releases it."""
        self.lock = lock
        lock.on_session_end = self._wake_now
        self._task = asyncio.create_task(self._watch(), name="instance-lock-check")

    async def _account_lock_taken(self) -> bool:
        """Whether another daemon took the account lock (its file deleted underneath us and
        locked anew by the other): the store's lock cannot see that daemon."""
        lock = self.account_lock
        if lock is None or await lock.check() or lock.held:
            return False
        if isinstance(lock.last_error, AnotherDaemonRunning):
            return True
        log.warning("instance_lock.unproven", error=str(lock.last_error), **lock.describe())
        return False

    def _wake_now(self) -> None:
        """The lock's `on_session_end`: check at once, not at the next interval."""
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the lock's session ends meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _watch(self) -> None:
        assert self.lock is not None
        retry = UNPROVEN_RETRY_MIN_S
        while True:
            if self.lost:
                # Unproven (the database unreachable): look again soon, with backoff up to
                # 5 s, so that a database back from a restart sees this daemon take its lock
                # again before a second daemon starting meanwhile can.
                await self._pause(min(self.check_interval_s, retry))
                retry = min(retry * 2, UNPROVEN_RETRY_MAX_S)
            else:
                retry = UNPROVEN_RETRY_MIN_S
                await self._pause(self.check_interval_s)
            if await self._check_once():
                return

    async def ensure_held(self) -> bool:
        """For the engine before each bar's decisions: False when the daemon must not trade
        this bar (another daemon holds the lock: `on_lost` has been called), True otherwise.
        No I/O while the lock's session is alive. When it has ended and no check has said
        what that means yet, the check runs now (or the one running is waited for), so a bar
        is not decided on a lock another daemon may have taken. While the lock is unproven
        (the database unreachable) the answer is True without I/O: the rule of the module
        docstring (the store spools; nobody takes the lock from a database nobody reaches),
        and the watcher retries within `UNPROVEN_RETRY_MAX_S`."""
        if self.stopped_by_loss:
            return False
        lock = self.lock
        if lock is None or self.lost is not None or lock.alive():
            return True
        await self._check_once()
        return not self.stopped_by_loss

    async def _check_once(self) -> bool:
        """One check of the locks, and what follows from it; True when the daemon was told
        to stop (`on_lost`). Serialised: the watcher and `ensure_held` never check at once,
        and a check that finds the lock alive again after a wait costs one query."""
        async with self._checking:
            if self.stopped_by_loss:
                return True
            return await self._check_locked()

    async def _check_locked(self) -> bool:
        assert self.lock is not None
        if await self._account_lock_taken():
            assert self.account_lock is not None
            self.lost = str(self.account_lock.last_error)
            log.error("instance_lock.lost", error=self.lost, **self.account_lock.describe())
            return self._stop_trading()
        ok = await self.lock.check()
        if ok and self.lost is None:
            return False
        if self.lock.held:
            # After an outage, or lost and taken again within this check.
            if self.lost is not None or not ok:
                log.warning("instance_lock.reacquired", **self.lock.describe())
            self.lost = None
            return False
        self.lost = str(self.lock.last_error or "lock lost")
        if not isinstance(self.lock.last_error, AnotherDaemonRunning):
            # The database is unreachable (an outage the store rides out with its
            # spool): the lock is unproven, not taken by another daemon. /ready says so;
            # the daemon stops only when another daemon holds the lock.
            log.warning("instance_lock.unproven", error=self.lost, **self.lock.describe())
            return False
        log.error("instance_lock.lost", error=self.lost, **self.lock.describe())
        return self._stop_trading()

    def _stop_trading(self) -> bool:
        self.stopped_by_loss = True
        if self.on_lost is not None:
            assert self.lost is not None
            self.on_lost(self.lost)
        return True

    async def stop_watching(self) -> None:
        """End the checks; the lock stays held (`stop` releases it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.lock is not None:
            self.lock.on_session_end = None

    async def stop(self) -> None:
        await self.stop_watching()
        if self.account_lock is not None:
            await self.account_lock.release()
        if self.lock is not None:
            await self.lock.release()

    def status(self) -> dict[str, Any]:
        info = self.lock.describe() if self.lock is not None else {}
        ok = self.lock is not None and self.lost is None
        detail = "held" if ok else (self.lost or "not taken")
        if self.machine_wide:
            account = self.account_lock.describe() if self.account_lock is not None else {}
            info["account_lock"] = account or {"held": False, "detail": self.account_lock_error}
        return {"ok": ok, "detail": detail, **info}
