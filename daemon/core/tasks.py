"""Ending a part's background tasks at its stop, on Python 3.11.

There `asyncio.wait_for` can lose a cancellation: when the cancel lands as the awaited call
completes, it returns the call's result and the cancel is gone (CPython gh-86296, fixed in
3.12 by building `wait_for` on `asyncio.timeout`). alpaca-py's stream, the Alpaca broker's
REST calls (`wait_for` around the request's thread) and redis-py's command writes
(`send_packed_command`, the published state's SET) all use it. A task that loops
(on an event, a sleep) then goes on, and a stop that cancelled it once and awaited it
(`task.cancel()`, then `gather`) waited for ever, on an idle event loop: a SIGTERM does not
help (`Engine.request_stop` only sets flags), the third one kills the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any] | None],
    *,
    rounds: int = 5,
    wait_s: float = 2.0,
    lost: Callable[[asyncio.Task[Any]], None] | None = None,
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` (None: never started) and wait for them, cancelling again, up to
    `rounds` times `wait_s`, a task still running: one that swallowed its cancellation
    (module docstring) ends at the next cancel. `lost(task)` is called for each such task
    before it is cancelled again, for the caller to say so. Returns the tasks still
    running after the last round: left, for the caller to name.

    The tasks' exceptions are retrieved, not raised (as `gather(..., return_exceptions=
    True)` did): a background task that failed was logged where it failed."""
    given = [t for t in tasks if t is not None]
    pending = {t for t in given if not t.done()}
    ended = [t for t in given if t.done()]
    for n in range(rounds):
        if not pending:
            break
        for task in pending:
            if n > 0 and lost is not None:
                lost(task)
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=wait_s)
        ended.extend(done)
    for task in ended:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at collection
    return pending
