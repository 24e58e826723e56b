"""Exceptions named by what the operator must do about them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TradingdError(Exception):
    """Base of every error tradingd raises on purpose."""


class ConfigError(TradingdError):
    """Fix the configuration, or the set-up it needs (a file or folder it names, a package to
    install): names the key, the bad value and the valid choices. Nothing changes by itself,
    so `tradingd run` and `tradingd retrain` exit with EX_CONFIG (`tradingd.__main__`), which
    their systemd units do not restart: restarts only repeated it until the start limit. Not
    so ServiceUnavailable and instance_lock.AnotherDaemonRunning, which may end by themselves
    (`tradingd.__main__.exit_code`)."""


class ServiceUnavailable(ConfigError):
    """A configured service (PostgreSQL, Redis) could not be used at start: no answer in
    time, a host not found, something else answering, or a refusal for now (too many
    connections, loading). Check that the service runs and that its URL names it. The usual
    cause is the URL, hence a ConfigError; but a service that comes back ends it by itself,
    so `tradingd run` exits 2, which systemd restarts (not EX_CONFIG)."""


class DataError(TradingdError):
    """Fix or repair the input data: names the file, symbol and row."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        symbol: str | None = None,
        row: int | str | None = None,
    ) -> None:
        where = ", ".join(
            f"{k}={v}" for k, v in (("file", source), ("symbol", symbol), ("row", row)) if v
        )
        super().__init__(f"{message} ({where})" if where else message)
        self.source = source
        self.symbol = symbol
        self.row = row


class DataFileUnusable(DataError, ConfigError):
    """The data file a live run was configured to replay (`data.path` of a recorded feed)
    is missing, unreadable or invalid at start: the operator's to fix, so a ConfigError too
    (`tradingd run` exits EX_CONFIG, which systemd does not restart). As a plain DataError it
    exited 2, and the unit restarted it every 10 s until "start-limit-hit" hid the cause."""


class PluginError(TradingdError):
    """A plugin could not be found, loaded or configured: fix the plugin or its config."""


class PluginFault(TradingdError):
    """A plugin raised while handling a bar: the plugin has a bug; the run stops.

    `module`, the plugin class's module, when the plugin's own code raised `cause`: the
    message then ends with where (`raised_at`), since the CLI prints the message alone and
    "RuntimeError: boom" did not say which of the plugin's lines to look at. The whole
    traceback stays on `__cause__`, for the engine's `plugin.failed` log line."""

    def __init__(
        self,
        plugin: str,
        stage: str,
        bar_time: object,
        cause: BaseException,
        *,
        module: str | None = None,
    ) -> None:
        where = raised_at(cause, module) if module else None
        super().__init__(
            f"plugin {plugin!r} failed in {stage} at bar {bar_time}: "
            f"{type(cause).__name__}: {cause}" + (f" ({where})" if where else "")
        )
        self.plugin = plugin
        self.stage = stage
        self.bar_time = bar_time
        self.where = where

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its message: the default (the class called with the message alone)
        # failed to unpickle, so a fault in a walk-forward or validation worker process
        # broke the pool instead of reaching the parent; the cause may not pickle at all.
        return (_rebuilt_fault, (str(self), self.plugin, self.stage, self.bar_time, self.where))


def _rebuilt_fault(
    message: str, plugin: str, stage: str, bar_time: object, where: str | None
) -> PluginFault:
    fault = PluginFault.__new__(PluginFault)
    TradingdError.__init__(fault, message)
    fault.plugin, fault.stage, fault.bar_time, fault.where = plugin, stage, bar_time, where
    return fault


def raised_at(exc: BaseException, module: str) -> str | None:
    """Where `exc` was raised, as "file:line, in function": the innermost frame of its
    traceback in the package of `module` (a plugin's own code, not numpy's or pandas'
    frames below it), else its last frame outside tradingd; None when only tradingd's
    frames are there (an output check of the engine's own, not the plugin's line)."""
    import traceback

    package = module.partition(".")[0]
    own = other = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        name = str(frame.f_globals.get("__name__", ""))
        top = name.partition(".")[0]
        here = f"{frame.f_code.co_filename}:{line}, in {frame.f_code.co_name}"
        if top == package:
            own = here
        elif top != _OURS:
            other = here
    return own or other


# The package of tradingd's own modules (whose frames are the boundary, not the plugin).
_OURS = __name__.partition(".")[0]


class RetryableError(TradingdError):
    """A transient failure (network, rate limit); the caller retries with backoff."""


class FatalError(TradingdError):
    """Stop the daemon: continuing would risk wrong orders or lost records."""


class SourceRefused(FatalError, ConfigError):
    """The data source refuses every symbol for what only the operator can change: the keys
    or their plan, or a warm-up it refuses for good, every time (bars older than it serves,
    symbols it does not know). Change the keys, the plan, the warm-up, the symbols or the
    source. A ConfigError too, so `tradingd run` exits with EX_CONFIG, which systemd does
    not restart: a restart asked the same, was refused the same, until the start limit."""


class StorageError(TradingdError):
    """The store is unreachable or rejected a write: check DATABASE_URL and the database."""


class DatabaseOfAnotherBuild(StorageError, ConfigError):
    """The database's tables are not this build's: a newer build added columns (run that
    build, or restore the database saved before the upgrade), or another program made them
    (use a new database or schema). Only the operator can end it, so a service command exits
    EX_CONFIG and systemd does not restart it into the same refusal every 10 s."""


class StoreDamaged(StorageError, ConfigError):
    """The SQLite store fails SQLite's own check (`PRAGMA quick_check`): damaged pages, most
    often a backup copied over a database whose `-wal` file (a killed daemon's) was left
    beside it, which SQLite then merges into the copy. A live run resumed from it without a
    word and wrote on. Only the operator mends it (restore the backup again, without the old
    `-wal`), so a ConfigError: `tradingd run` exits EX_CONFIG, which systemd does not
    restart."""


class StoreCheckStopped(StorageError):
    """A stop (SIGTERM) came while the SQLite store checked its file at a live start
    (`PRAGMA quick_check`, minutes on a large store): the check was interrupted rather than
    waited for (it held a SIGTERM past the unit's stop timeout). Not a failure: the engine
    ends the start as a stop before the first bar, and the next start checks again."""


class CheckpointUnusable(ConfigError):
    """A live run's stored state cannot be continued: a value of its checkpoint (cash NaN or
    null, a short position a long-only run cannot hold, ...) or of an order intent stored
    after it (a quantity that is not a positive number) is not one the run could have
    written: edited by hand or damaged. Names the run, the checkpoint, the field and the
    value. Resuming from it traded on a wrong book (no orders, NULL equity rows, a drawdown
    halt) or crashed with a traceback in a restart loop; nothing but the operator mends
    it (restore the database's backup, correct the row, or start a new run), so a
    ConfigError (`tradingd run` exits EX_CONFIG, which systemd does not restart)."""


class ControlRefusedError(TradingdError):
    """An operator's control cannot act now (the daemon is starting or has stopped): nothing
    was changed. Send it again when the message says."""


class EngineStoppedError(ControlRefusedError):
    """The engine has stopped trading (the daemon is stopping or has stopped): an operator's
    control can neither take effect nor be stored. Send it again once the daemon runs."""


class ControlInvalidError(TradingdError):
    """An operator's control names what it cannot act on (a symbol unknown, not blocked, or
    whose difference changed since; a body that is no such request): nothing was changed.
    `status` is the HTTP answer's (400, 404 or 409), `refused` names each symbol and why."""

    def __init__(
        self, message: str, status: int = 409, refused: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.refused = dict(refused or {})


class ControlNotStoredError(TradingdError):
    """An operator's control is in effect in this process, but the store failed to keep it:
    a restart before the store recovers would lose it. Fix the store, then send it again."""

    def __init__(self, state: str, cause: BaseException, what: str = "", then: str = "") -> None:
        # `what` is in effect (by default the trading state), `then` what to do (by default
        # send the control again).
        super().__init__(
            f"{what or f'trading state {state!r}'} is in effect, but storing it failed "
            f"({type(cause).__name__}: {cause}); "
            f"{then or 'send the control again once the store works'}"
        )
        self.state = state
