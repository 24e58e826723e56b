"""/ready's `feed` check while a source's call is retried (feeds/resilience.py `status`).

A single timed-out attempt failed the check for as long as the call's backoff and next
attempt took, though the retry then served the bar: an operator's readiness probe flapped
on one slow answer. An attempt being retried now leaves the check ok (its detail names the
retry and the failure); a call that spends its retries, or the breaker opening, fails it,
so a dead vendor still does, within one call."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from fakes import BarBook
from fakes.yahoo_server import YahooFake

from tradingd.feeds.resilience import ResilientCaller, SourceConfig, SourceError, make_error
from tradingd.feeds.vendor import VendorFeed
from tradingd.feeds.yahoo import YahooClient
from tradingd.health import status_check

NOW = datetime(2024, 3, 6, 22, 0, tzinfo=UTC)  # a Wednesday, after the close
BAR = datetime(2024, 3, 6, tzinfo=UTC)


class GatedSleep:
    """The backoff sleep: says when a call starts one, and returns only when released."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, _: float) -> None:
        self.started.set()
        await self.release.wait()


def timeout() -> SourceError:
    return make_error("test", "timeout", "no answer in 10 s")


async def test_a_call_being_retried_is_ok_one_that_spent_its_retries_is_not():
    sleep = GatedSleep()
    c = ResilientCaller("test", SourceConfig(max_attempts=3), sleep=sleep)
    failures = [timeout()]

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "bars"

    call = asyncio.create_task(c.call(attempt))
    async with asyncio.timeout(5):
        await sleep.started.wait()
    st = c.status()
    assert st["ok"] is True, st  # was False: the check failed while the call was retried
    assert (st["retrying"], st["circuit"]) == (1, "closed")
    assert st["last_error"]["kind"] == "timeout"
    sleep.release.set()
    assert await call == "bars"
    assert (c.status()["ok"], c.status()["retrying"]) == (True, 0)

    # Every attempt times out: the call gives up, and the check fails until an answer.
    failures[:] = [timeout()] * 3
    with pytest.raises(SourceError):
        await c.call(attempt)
    st = c.status()
    assert (st["ok"], st["gave_up"], st["retrying"], st["circuit"]) == (False, True, 0, "closed")
    failures[:] = [make_error("test", "not_found", "no such symbol", retryable=False)]
    with pytest.raises(SourceError):
        await c.call(attempt)  # the source answered (a 404): up again
    assert c.status()["ok"] is True


async def test_the_breaker_opening_fails_the_check_while_calls_are_retried():
    """A dead vendor under many concurrent calls: their first attempts open the circuit
    before any call spends its retries, and the check fails then."""
    sleep = GatedSleep()
    c = ResilientCaller(
        "test", SourceConfig(max_attempts=4, breaker_failure_threshold=3), sleep=sleep
    )

    async def dead() -> str:
        raise timeout()

    calls = [asyncio.create_task(c.call(dead)) for _ in range(3)]
    async with asyncio.timeout(5):
        while c.retrying < 3:
            await asyncio.sleep(0)
    st = c.status()
    assert (st["ok"], st["circuit"], st["gave_up"]) == (False, "open", False)
    sleep.release.set()
    for call in calls:
        with pytest.raises(SourceError):
            await call


async def test_ready_feed_check_stays_ok_while_a_timed_out_yahoo_call_is_retried():
    """The real Yahoo client against a loopback Yahoo whose first answer is too slow: while
    the call waits to retry, /ready's `feed` check (health.status_check over the feed's
    status) is ok and says what is retried; the retry serves the bar."""
    sleep = GatedSleep()
    async with YahooFake(BarBook(now=NOW)) as fake:
        caller = ResilientCaller(
            "yahoo", SourceConfig(max_attempts=2, timeout_s=0.2, backoff_base_s=0.0), sleep=sleep
        )
        client = YahooClient(base_url=fake.url, caller=caller, clock=lambda: fake.book.now)
        feed = VendorFeed(client, ("AAA", "BBB"), "1d", clock=lambda: fake.book.now)
        check = status_check("feed", feed.status)
        await feed.start()
        try:
            fake.faults.delay_next(1, 0.6)
            bar = asyncio.create_task(feed.bars(BAR))
            async with asyncio.timeout(5):
                await sleep.started.wait()
            res = check.probe()
            assert res.ok, res.detail
            assert res.detail.startswith("ok; 1 call(s) being retried after timeout")
            assert "not ready once a call spends its retries or the circuit opens" in res.detail
            sleep.release.set()
            served = await bar
            assert served is not None and served.valid.all()
            res = check.probe()
            assert (res.ok, res.detail) == (True, "ok")

            # A dead vendor still fails the check: a call (a window not cached) spends its
            # retries.
            fake.faults.down(1000)
            res = await client.fetch(["AAA"], "1d", datetime(2024, 2, 1, tzinfo=UTC), BAR)
            assert res.errors["AAA"].kind == "http_5xx"
            res = check.probe()
            assert not res.ok
            assert "the call spent its retries; the next fetch asks again" in res.detail
        finally:
            await feed.stop()
