"""The engine's reconciliation rounds come every `reconcile_interval_s` (300 s by default),
and at once when the broker asks for one (`reconcile_wanted`: Alpaca sets it when an answer
contradicted an order, `alpaca.order_answer_mismatch`). Before, the book and the broker
were compared only at the next round, up to five minutes after the contradiction."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from tradingd.engine.engine import Engine


async def test_a_round_the_broker_asks_for_comes_at_once_and_the_ask_is_used_up():
    wanted = asyncio.Event()
    rounds = asyncio.Queue[int]()
    count = 0

    async def reconcile() -> None:
        nonlocal count
        count += 1
        await rounds.put(count)

    engine = SimpleNamespace(
        broker=SimpleNamespace(reconcile_wanted=wanted),
        reconcile_interval_s=300.0,
        _reconcile=reconcile,
    )
    task = asyncio.create_task(Engine._reconcile_every(engine))  # type: ignore[arg-type]
    try:
        wanted.set()
        assert await asyncio.wait_for(rounds.get(), 5.0) == 1
        assert not wanted.is_set()  # used up: the next round waits for the next ask
        wanted.set()
        assert await asyncio.wait_for(rounds.get(), 5.0) == 2
        assert rounds.empty()
    finally:
        task.cancel()


async def test_a_broker_that_cannot_ask_gets_its_rounds_at_the_interval():
    rounds = asyncio.Queue[float]()
    loop = asyncio.get_running_loop()

    async def reconcile() -> None:
        await rounds.put(loop.time())

    engine = SimpleNamespace(
        broker=SimpleNamespace(), reconcile_interval_s=0.05, _reconcile=reconcile
    )
    start = loop.time()
    task = asyncio.create_task(Engine._reconcile_every(engine))  # type: ignore[arg-type]
    try:
        first = await asyncio.wait_for(rounds.get(), 5.0)
        assert first - start >= 0.05
    finally:
        task.cancel()
