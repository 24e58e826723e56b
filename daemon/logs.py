"""structlog set-up: JSON lines for services, readable console output on a terminal.

Everything that logs ends up in the same stream in the same format: tradingd's own structlog
loggers, and the standard-library loggers of the libraries it uses (APScheduler, asyncio,
aiohttp, websockets, `warnings`), which go through structlog's `ProcessorFormatter`. In JSON
mode every record is one JSON object on one line, an exception included (its traceback is the
`exception` string of that object), never a multi-line traceback in plain text.

Library loggers are kept at WARNING whatever `log.level` says (their INFO and DEBUG lines are
per request or per scheduler firing: noise at 20 bars a second), and APScheduler's loggers are
set to WARNING explicitly, so a misfire or a failed job is seen but a firing is not.
`set_level` changes the level of a running process (SIGHUP). `unfiltered` is a logger whose
lines are written whatever the level (a daemon's stop and exit lines).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, MutableMapping
from datetime import date
from typing import Any

import structlog

from .secrets import mask_values

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Standard-library loggers set deliberately (not inherited from the root logger).
LIBRARY_LEVELS = {
    # "Running job ...", "Job ... executed successfully" at INFO on every firing; "Run time of
    # job ... was missed", "Execution of job ... skipped" and job errors at WARNING/ERROR.
    "apscheduler": logging.WARNING,
    "apscheduler.scheduler": logging.WARNING,
    "apscheduler.executors.default": logging.WARNING,
    # One INFO line per HTTP request to the health server (scrapes every few seconds).
    "aiohttp.access": logging.WARNING,
}

_current: dict[str, str] = {}


def sparse(count: int) -> bool:
    """Whether the `count`-th occurrence of something repeated is logged: the 1st, 10th,
    100th, ..., so a thing that happens every bar is heard, with its count, without a line
    per bar."""
    return str(count).rstrip("0") == "1"


class Once:
    """The facts already said, for a warning about one fact that every answer repeats (a
    vendor's event, carried by each answer whose window covers its date: every bar of a
    session at 5-minute bars): said once per process, not once per answer. Bounded (the
    oldest forgotten beyond `limit`, said again if it comes back) and thread-safe (answers
    are parsed on worker threads)."""

    def __init__(self, limit: int = 4096) -> None:
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def first(self, key: Hashable) -> bool:
        """Whether `key` is new (then remembered): the caller says it only then."""
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)
            return True

    def forget(self, key: Hashable) -> None:
        """`key` is no longer so (an order's quantity can be read again): said again, as new,
        if it comes back."""
        with self._lock:
            self._seen.pop(key, None)


class _MaskEnvSecrets:
    """The last processor before rendering: every credential of the environment (at
    configuration time; `secrets.env_secrets`) replaced by *** in each string of the event,
    the formatted traceback included. The cleaners at each source mask what they know to
    look for; this catches what they do not see: a library's own log line quoting a key
    (alpaca-py's stream logged a close reason quoting the key id in clear) and an
    exception's message inside `exc_info`, which no processor masked."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        if self._secrets:
            for key, value in event.items():
                if isinstance(value, str):
                    masked = mask_values(value, self._secrets)
                    if masked is not value:
                        event[key] = masked
        return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    import os

    from .secrets import env_secrets

    mask = _MaskEnvSecrets(env_secrets(os.environ))
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    if use_json and stderr_is_journal():
        renderer = _JournalPriority(renderer)
    stream: Any = _StderrBesideProgressBars(renderer)  # a TextIO as far as writers care
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _iso_datetimes,
            mask,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(level, renderer, stream, mask)
    _current.update(level=level, format=fmt)


def set_level(level: str) -> None:
    """Change the level of every logger of a running process (the format stays)."""
    if level not in _LEVELS:
        raise ValueError(f"log level {level!r} is invalid; valid: {', '.join(_LEVELS)}")
    configure_logging(level, _current.get("format", "auto"))


def unfiltered(name: str) -> Any:
    """A logger that writes every line whatever `log.level` says, through the same
    processors, format and stream as the others (each line keeps its own level): for the
    few lines that must always be there, a daemon's `tradingd.stop_requested` and
    `tradingd.exit` (info lines: at `log.level = "warning"`, or after a SIGHUP that raised
    it, a clean stop left no line saying where and why the daemon stopped). Configuration
    is read at each call (`cache_logger_on_first_use` is off), so a reconfiguration
    applies to it too."""
    return structlog.wrap_logger(
        None,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        logger_factory_args=(name,),  # as structlog.get_logger(name)
    )


def current_level() -> str | None:
    """The level set by the last `configure_logging` (None before the first)."""
    return _current.get("level")


class _OwnHandler(logging.StreamHandler):
    """The handler this module puts on the root logger (replaced on every reconfiguration,
    without touching handlers others added, e.g. pytest's)."""


def _route_stdlib(level: str, renderer: Any, stream: Any, mask: _MaskEnvSecrets) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _strip_event,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _iso_datetimes,
            mask,
            renderer,
        ],
    )
    handler = _OwnHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    wanted = _LEVELS[level]
    # Libraries: warnings and errors only (as before, when Python's last-resort handler
    # printed them as plain text); tradingd's own standard-library loggers follow log.level.
    root.setLevel(max(wanted, logging.WARNING))
    logging.getLogger("tradingd").setLevel(wanted)
    for name, lib_level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(max(lib_level, wanted))
    logging.captureWarnings(True)  # warnings.warn(...) as log records, not stderr text


# syslog priorities of the levels, for journald (`stderr_is_journal`).
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def stderr_is_journal() -> bool:
    """Whether standard error is a systemd journal stream: systemd sets JOURNAL_STREAM to
    its device and inode (not inherited meaningfully by a redirected stderr, hence the
    comparison). Every JSON line went to the journal at priority info, so `journalctl -p
    err -u tradingd` showed none of the daemon's errors."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def journal_prefix(level: str) -> str:
    """The `<N>` prefix journald reads as a line's priority (SyslogLevelPrefix, on by
    default) and strips, or "" when standard error is not the journal."""
    return f"<{_PRIORITY.get(level, 6)}>" if stderr_is_journal() else ""


class _JournalPriority:
    """The renderer's line with its level's syslog priority in front (`<3>{...}` for an
    error): journald stores the line without it, at that priority."""

    def __init__(self, render: Any) -> None:
        self._render = render

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        level = str(event.get("level") or name or "info").lower()
        return f"<{_PRIORITY.get(level, 6)}>{self._render(logger, name, event)}"


class _LostLines:
    """The log lines standard error did not take (a full or failing disk under it, a closed
    stream, a reader gone): counted, not raised. A log call raising OSError crashed whatever
    called it: an alert's error line ended a live daemon mid-bar (exit 1, its run's row
    never ended), a full log disk at start ended it with no message anywhere. One count per
    process (a SIGHUP's reconfiguration keeps it): the first line written again is preceded
    by a warning, `log.lines_lost`, with how many were lost, since when and why."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # reentrant: a signal handler's line may come mid-write
        self.count = 0
        self.since = ""
        self.error = ""

    def lost(self, exc: BaseException) -> None:
        with self.lock:
            if not self.count:
                self.since = _now()
                self.error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.count += 1
        metrics = sys.modules.get(f"{__package__}.metrics")  # never imported here: loaded
        if metrics is not None:  # by every daemon and backtest, and an import may log
            with contextlib.suppress(Exception):
                metrics.LOG_LINES_LOST.inc()


_LOST = _LostLines()
# What a write to standard error raises when it cannot take the line: OSError (ENOSPC, EIO,
# EPIPE, EBADF), ValueError (a closed stream), AttributeError (no stream: sys.stderr None).
_WRITE_ERRORS = (OSError, ValueError, AttributeError)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _StderrBesideProgressBars:
    """Standard error that lets a progress bar keep its line: while a tqdm bar is shown, each
    log line is written in tqdm's external-write mode (bar cleared, line written, bar drawn
    again), so log lines neither overwrite the bar nor get overwritten by it. Resolves
    sys.stderr at each write, so redirection (and test capture) still works.

    Never raises: a line standard error does not take is dropped and counted (`_LostLines`,
    and the metric `tradingd_log_lines_lost`), and the first line it takes again comes after
    a `log.lines_lost` warning in the same format (`render`: the configured renderer). That
    warning starts with a newline, ending a line the disk cut when it filled up."""

    def __init__(self, render: Any = None) -> None:
        self._render = render
        self._unflushed = False

    def write(self, s: str) -> int:
        with _LOST.lock:
            if _LOST.count and not self._say_lost():
                _LOST.lost(OSError("still failing"))
                return len(s)
            self._unflushed = True  # (the descriptor's write clears it: nothing buffered)
            try:
                return self._write(s)
            except _WRITE_ERRORS as exc:
                self._unflushed = False
                _LOST.lost(exc)
                return len(s)

    def flush(self) -> None:
        with _LOST.lock:
            unflushed, self._unflushed = self._unflushed, False
            try:
                sys.stderr.flush()
            except _WRITE_ERRORS as exc:
                if unflushed:  # a line taken into a buffer, not written: lost here
                    _LOST.lost(exc)

    def _write(self, s: str) -> int:
        from tqdm import tqdm

        if getattr(tqdm, "_instances", None):
            with tqdm.external_write_mode(file=sys.stderr):
                return sys.stderr.write(s)
        fd = _own_stderr_fd()
        if fd is None:
            return sys.stderr.write(s)
        # The process's own stderr: written to its descriptor, so that a line is either
        # written or counted lost. Through the text stream, a line that failed stayed in
        # its buffer and came out once the disk had space again (counted lost all the
        # same), and so did every `log.lines_lost` warning tried meanwhile, each with a
        # larger count. What others wrote through the stream goes first, as before.
        with contextlib.suppress(*_WRITE_ERRORS):
            sys.stderr.flush()
        data = s.encode(getattr(sys.stderr, "encoding", None) or "utf-8", "backslashreplace")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self._unflushed = False
        return len(s)

    def _say_lost(self) -> bool:
        """Write the `log.lines_lost` warning; whether standard error took it."""
        event: dict[str, Any] = {
            "lines": _LOST.count,
            "since": _LOST.since,
            "error": _LOST.error,
            "detail": "standard error could not take these log lines (a full or failing "
            "disk, a closed stream): they were dropped, not written",
            "event": "log.lines_lost",
            "level": "warning",
            "timestamp": _now(),
        }
        try:
            line = self._render(None, "warning", event) if self._render else str(event)
        except Exception:  # a renderer's failure must not stop the lines after it
            line = str(event)
        try:
            self._write(f"\n{line}\n")
            sys.stderr.flush()
        except _WRITE_ERRORS:
            return False
        _LOST.count = 0
        return True


def _own_stderr_fd() -> int | None:
    """The descriptor of the process's own standard error when `sys.stderr` is still it
    (not replaced: a test's capture, a notebook's stream), else None."""
    own = sys.__stderr__
    if own is None or sys.stderr is not own:
        return None
    try:
        return own.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _strip_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Library messages may end in a newline (a formatted warning does)."""
    if isinstance(event.get("event"), str):
        event["event"] = event["event"].rstrip()
    return event


def _iso_datetimes(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Bar times are logged everywhere; make them readable ISO strings, not reprs."""
    for k, v in event.items():
        if isinstance(v, date):
            event[k] = v.isoformat()
    return event


class RunLogging:
    """structlog left unconfigured prints every line of every level: a notebook cell would
    get a debug line per split and per risk verdict (thousands for an S&P 500 run). So the
    strategy API's runs (`tradingd.strategy_api`) and `AttributionAnalyzer.analyze`'s replay
    log warnings and errors only, unless the host configured structlog itself (e.g.
    `tradingd.logs.configure_logging("info")` first), and structlog is left unconfigured
    again afterwards. Only the level: the standard library's logging is not touched.

    structlog's setting is the process's, and runs overlap: an interrupted run still
    finishing its bar goes on beside the next cell's. Each run taking the setting as its own
    made the second take the first's warnings-only for the host's, and the first's end
    reset it under the second. So the runs share it: a run that finds structlog
    unconfigured sets it, and the last run to end resets it, only while it is still the
    runs' (the host may have configured structlog since)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._ours: dict[str, Any] | None = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not structlog.is_configured():
                warnings_only = structlog.make_filtering_bound_logger(logging.WARNING)
                structlog.configure(wrapper_class=warnings_only)
                self._ours = structlog.get_config()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if not self._active and self._ours is not None:
                    ours, self._ours = self._ours, None
                    now = structlog.get_config()
                    if structlog.is_configured() and all(now[k] is v for k, v in ours.items()):
                        structlog.reset_defaults()


warnings_only_unless_configured = RunLogging()
