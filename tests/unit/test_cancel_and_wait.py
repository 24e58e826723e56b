"""core/tasks.py: a stop ends a background task that lost its cancellation (as
`asyncio.wait_for` loses one on Python 3.11) instead of waiting on it for ever, and names a
task that never ends. Bounded: each wait has a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from tradingd.core.tasks import cancel_and_wait


async def _losing_one_cancel(never: asyncio.Event) -> None:
    """Loses its first cancel, then waits for an event nobody sets: the fill booker after
    3.11's wait_for returned the answer that landed with the stop's cancel."""
    with contextlib.suppress(asyncio.CancelledError):
        await never.wait()
    await never.wait()


async def _deaf(never: asyncio.Event) -> None:
    """Loses every cancel, until `never` is set."""
    while not never.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await never.wait()


async def test_a_task_that_lost_its_cancel_is_cancelled_again():
    never = asyncio.Event()
    losing = asyncio.create_task(_losing_one_cancel(never), name="late-fills")
    plain = asyncio.create_task(never.wait(), name="state")
    await asyncio.sleep(0)  # both waiting
    lost: list[str] = []

    left = await asyncio.wait_for(
        cancel_and_wait(
            [losing, None, plain], wait_s=0.2, lost=lambda t: lost.append(t.get_name())
        ),
        5,
    )

    assert left == set()
    assert losing.cancelled() and plain.cancelled()
    assert lost == ["late-fills"]


async def test_a_task_that_never_ends_is_left_and_returned():
    never = asyncio.Event()
    deaf = asyncio.create_task(_deaf(never), name="deaf")
    await asyncio.sleep(0)

    left = await asyncio.wait_for(cancel_and_wait([deaf], rounds=3, wait_s=0.05), 5)

    assert left == {deaf}
    never.set()  # (it ends: the test's loop closes after)
    await asyncio.wait({deaf}, timeout=5)
    assert deaf.done()


async def test_an_exception_of_a_task_is_retrieved_not_raised():
    async def failing() -> None:
        raise ValueError("logged where it failed")

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    task = asyncio.create_task(failing())
    await asyncio.wait({task}, timeout=5)

    assert await cancel_and_wait([task]) == set()
    del task
    gc.collect()
    assert reported == []  # not "Task exception was never retrieved"
