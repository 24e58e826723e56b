"""The daemon's event-loop handler of errors nobody awaited (`loop_exception`): asyncpg sets a
connection's loss on an internal future nobody awaits when the database goes away
mid-operation, and asyncio logged it as an error with a traceback during an outage the store
had already reported (the outage test's "no error logged" failed on a loaded machine)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from structlog.testing import capture_logs

from tradingd.__main__ import loop_exception


def _handle(exc: BaseException) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    loop = asyncio.new_event_loop()
    passed: list[dict[str, Any]] = []
    loop.default_exception_handler = passed.append  # type: ignore[method-assign]
    context = {"message": "Future exception was never retrieved", "exception": exc}
    try:
        with capture_logs() as logs:
            loop_exception(loop, context)
    finally:
        loop.close()
    return logs, passed


def test_a_lost_database_connection_nobody_awaited_is_a_warning():
    lost = asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    )
    for exc in (lost, ConnectionResetError("reset by peer")):
        logs, passed = _handle(exc)
        assert passed == []
        [line] = logs
        assert (
            line["log_level"] == "warning"
            and line["event"] == "asyncio.connection_loss_unretrieved"
        )
        assert type(exc).__name__ in line["error"]


def test_any_other_error_nobody_awaited_goes_to_asyncios_handler():
    for exc in (ValueError("a bug"), asyncpg.exceptions.UniqueViolationError("duplicate")):
        logs, passed = _handle(exc)
        assert logs == [] and [c["exception"] for c in passed] == [exc]
