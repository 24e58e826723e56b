"""structlog set-up: JSON lines for services, readable console output on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from datetime import date
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _iso_datetimes,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=_StderrBesideProgressBars()),
        cache_logger_on_first_use=False,
    )


class _StderrBesideProgressBars:
    """Standard error that lets a progress bar keep its line: while a tqdm bar is shown, each
    log line is written in tqdm's external-write mode (bar cleared, line written, bar drawn
    again), so log lines neither overwrite the bar nor get overwritten by it. Resolves
    sys.stderr at each write, so redirection (and test capture) still works."""

    def write(self, s: str) -> int:
        from tqdm import tqdm

        if getattr(tqdm, "_instances", None):
            with tqdm.external_write_mode(file=sys.stderr):
                return sys.stderr.write(s)
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def _iso_datetimes(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Bar times are logged everywhere; make them readable ISO strings, not reprs."""
    for k, v in event.items():
        if isinstance(v, date):
            event[k] = v.isoformat()
    return event
