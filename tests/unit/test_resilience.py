"""ResilientCaller: timeouts, retries with backoff, circuit breaker, budgets, concurrency,
secrets kept out of messages. No real sleeping: backoff sleeps and clocks are injected."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError, RetryableError
from tradingd.feeds.resilience import (
    CircuitBreaker,
    ResilientCaller,
    SourceConfig,
    SourceError,
    SourceUnavailable,
    error_for_status,
    make_error,
    probe_due_wait_s,
    redact,
)
from tradingd.metrics import SOURCE_ERRORS, SOURCE_UP


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def caller(name: str = "test", clock: Clock | None = None, **cfg) -> tuple[ResilientCaller, Sleeps]:
    sleeps = Sleeps()
    c = ResilientCaller(name, SourceConfig(**cfg), sleep=sleeps, clock=clock or Clock())
    return c, sleeps


class Script:
    """An attempt function that fails with the given errors, then returns 'ok'."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def http(status: int, body: str = "x") -> SourceError:
    return error_for_status("test", status, body)


async def test_429_is_retried_with_backoff_then_succeeds():
    c, sleeps = caller(max_attempts=4, backoff_base_s=1.0, backoff_max_s=8.0, jitter=False)
    fn = Script(http(429, "Too Many Requests"), http(429, "Too Many Requests"))
    assert await c.call(fn) == "ok"
    assert fn.calls == 3
    assert sleeps.waits == [1.0, 2.0]  # exponential, no jitter
    assert c.status()["ok"] is True
    assert c.status()["last_error"]["kind"] == "http_429"


async def test_jittered_backoff_stays_within_the_exponential_bound():
    c, sleeps = caller(
        max_attempts=6, backoff_base_s=1.0, backoff_max_s=4.0, breaker_failure_threshold=10
    )
    fn = Script(*(http(503) for _ in range(5)))
    assert await c.call(fn) == "ok"
    assert len(sleeps.waits) == 5
    bounds = [1, 2, 4, 4, 4]
    assert all(0 <= w <= b for w, b in zip(sleeps.waits, bounds, strict=True))


async def test_retry_after_is_honoured_and_capped():
    c, sleeps = caller(max_attempts=3, backoff_max_s=5.0)
    fn = Script(
        error_for_status("test", 429, "slow down", retry_after="2"),
        error_for_status("test", 429, "slow down", retry_after="60"),
    )
    assert await c.call(fn) == "ok"
    assert sleeps.waits == [2.0, 5.0]


def _broker_retry_after(value: str | None) -> float | None:
    """What the Alpaca broker waits for a 429 with this Retry-After (alpaca-py's error)."""
    from alpaca.common.exceptions import APIError

    from tradingd.brokers.alpaca import _retry_after

    response = SimpleNamespace(status_code=429, headers={"Retry-After": value})
    return _retry_after(
        APIError('{"message": "rate limit exceeded"}', SimpleNamespace(response=response))
    )


async def test_a_retry_after_date_is_honoured_and_read_as_the_broker_reads_it():
    """The feeds took seconds only: a 429 whose Retry-After is an HTTP date (RFC 9110's
    other form) had none, and the retry came after a short backoff, into the throttle. The
    broker read dates with a parser of its own. One parser serves both; seconds unchanged."""
    now = datetime.now(UTC)
    in_two_minutes = format_datetime(now + timedelta(seconds=120), usegmt=True)
    an_hour_ago = format_datetime(now - timedelta(hours=1), usegmt=True)

    def feed(value: str | None) -> float | None:
        return error_for_status("test", 429, "slow down", retry_after=value).retry_after_s

    assert feed(in_two_minutes) == pytest.approx(120, abs=10)
    assert _broker_retry_after(in_two_minutes) == pytest.approx(120, abs=10)
    assert feed(an_hour_ago) == _broker_retry_after(an_hour_ago) == 0.0  # retry now
    # Seconds as before: the feeds take None (no hint: their own backoff) where the broker
    # takes 0 (no hint, but a 429's tries).
    for value, by_feed, by_broker in [
        ("7", 7.0, 7.0),
        (" 2.5 ", 2.5, 2.5),
        ("0", 0.0, 0.0),
        ("-1", None, 0.0),
        ("inf", None, 0.0),
        ("soon", None, 0.0),
        ("", None, 0.0),
        (None, None, 0.0),
    ]:
        assert (feed(value), _broker_retry_after(value)) == (by_feed, by_broker), value

    c, sleeps = caller(max_attempts=2, backoff_base_s=0.5, backoff_max_s=30.0)
    fn = Script(error_for_status("test", 429, "slow down", retry_after=in_two_minutes))
    assert await c.call(fn) == "ok"
    assert sleeps.waits == [30.0]  # the date's wait, capped


@pytest.mark.parametrize("when", ["a second ago", "an hour ago", "0 s"])
async def test_a_retry_after_already_past_waits_the_ordinary_backoff(when):
    """A Retry-After date already past (the server's clock behind ours) reads as 0 s: taken
    as the wait, the four attempts of a call came within milliseconds, into the throttle.
    The hint is a floor under the backoff, not a replacement for it."""
    now = datetime.now(UTC)
    value = {
        "a second ago": format_datetime(now - timedelta(seconds=1), usegmt=True),
        "an hour ago": format_datetime(now - timedelta(hours=1), usegmt=True),
        "0 s": "0",
    }[when]
    c, sleeps = caller(max_attempts=4, backoff_base_s=1.0, backoff_max_s=8.0, jitter=False)
    fn = Script(*(error_for_status("test", 429, "slow down", retry_after=value) for _ in range(3)))
    assert await c.call(fn) == "ok"
    assert sleeps.waits == [1.0, 2.0, 4.0]


async def test_a_retry_after_longer_than_the_backoff_is_waited_up_to_the_cap():
    c, sleeps = caller(max_attempts=4, backoff_base_s=1.0, backoff_max_s=30.0, jitter=False)
    fn = Script(*(error_for_status("test", 429, "slow down", retry_after="7") for _ in range(3)))
    assert await c.call(fn) == "ok"
    assert sleeps.waits == [7.0, 7.0, 7.0]

    c, sleeps = caller(max_attempts=4, backoff_base_s=1.0, backoff_max_s=30.0, jitter=False)
    fn = Script(*(error_for_status("test", 429, "slow down", retry_after="3") for _ in range(3)))
    assert await c.call(fn) == "ok"
    assert sleeps.waits == [3.0, 3.0, 4.0]  # the backoff, once it is the longer

    c, sleeps = caller(max_attempts=2, backoff_base_s=1.0, backoff_max_s=5.0, jitter=False)
    assert await c.call(Script(error_for_status("test", 429, "x", retry_after="7"))) == "ok"
    assert sleeps.waits == [5.0]


@pytest.mark.parametrize(
    ("status", "kind"), [(404, "not_found"), (400, "http_4xx"), (422, "http_4xx"), (401, "auth")]
)
async def test_client_errors_are_not_retried(status, kind):
    c, sleeps = caller(max_attempts=5)
    fn = Script(http(status))
    with pytest.raises(SourceError) as info:
        await c.call(fn)
    assert info.value.kind == kind
    assert not isinstance(info.value, RetryableError)
    assert fn.calls == 1 and sleeps.waits == []
    # The source answered: it is up, and the breaker does not count it.
    assert c.breaker.consecutive_failures == 0
    assert c.status()["ok"] is True


async def test_gives_up_after_max_attempts_with_a_retryable_error():
    c, sleeps = caller(max_attempts=3, breaker_failure_threshold=10)
    fn = Script(*(http(500) for _ in range(10)))
    with pytest.raises(SourceUnavailable) as info:
        await c.call(fn)
    assert isinstance(info.value, RetryableError)
    assert info.value.kind == "http_5xx" and info.value.status == 500
    assert fn.calls == 3 and len(sleeps.waits) == 2
    assert c.status()["ok"] is False


async def test_every_attempt_has_a_timeout():
    c, _ = caller(timeout_s=0.05, max_attempts=2)
    calls = 0

    async def hang() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(SourceUnavailable) as info:
        await c.call(hang)
    assert info.value.kind == "timeout"
    assert calls == 2


async def test_network_exceptions_are_classified():
    c, _ = caller(max_attempts=1)
    with pytest.raises(SourceUnavailable) as info:
        await c.call(Script(ConnectionResetError("peer reset")))
    assert info.value.kind == "connection"


async def test_breaker_opens_after_n_failures_and_half_opens_after_reset_time():
    clock = Clock()
    c, _ = caller(
        clock=clock, max_attempts=1, breaker_failure_threshold=3, breaker_reset_timeout_s=30
    )
    failing = Script(*(http(503) for _ in range(100)))
    for _ in range(3):
        with pytest.raises(SourceUnavailable):
            await c.call(failing)
    assert c.breaker.state == CircuitBreaker.OPEN
    assert failing.calls == 3

    # Open: calls fail at once, the source is not called, the engine sees a RetryableError;
    # counted, but no warning per refused call (the breaker's transitions are logged).
    with capture_logs() as logs, pytest.raises(SourceUnavailable) as info:
        await c.call(failing)
    assert info.value.kind == "circuit_open"
    assert not [e for e in logs if e["event"] == "source.call.failed" and e["log_level"] != "debug"]
    assert failing.calls == 3
    st = c.status()
    assert st["circuit"] == "open" and st["ok"] is False and st["consecutive_failures"] == 3
    assert SOURCE_UP.labels(source="test")._value.get() == 0

    # After the reset time (no real sleep): one probe; it fails -> open again.
    clock.t += 30
    assert c.breaker.state == CircuitBreaker.HALF_OPEN
    with pytest.raises(SourceUnavailable) as info:
        await c.call(failing)
    assert info.value.kind == "http_5xx"
    assert failing.calls == 4
    assert c.breaker.state == CircuitBreaker.OPEN

    # The source comes back: the next probe closes the circuit.
    clock.t += 30
    ok = Script()
    assert await c.call(ok) == "ok"
    assert c.breaker.state == CircuitBreaker.CLOSED
    assert c.status()["ok"] is True and c.status()["consecutive_failures"] == 0
    assert SOURCE_UP.labels(source="test")._value.get() == 1


async def test_throttled_calls_count_once_each_when_their_retries_are_spent():
    """A 429 is the source answering (up, asking us to slow down), paced by the backoff and
    Retry-After. Counted per attempt, two calls throttled on every try (4 attempts each with
    Alpaca's data defaults, threshold 5) opened the circuit and refused every call for a
    minute. Each throttled call that gives up counts once; a source that keeps throttling
    still opens the circuit, after `breaker_failure_threshold` calls."""
    clock = Clock()
    c, _ = caller(
        clock=clock, max_attempts=4, breaker_failure_threshold=5, breaker_reset_timeout_s=60
    )
    throttled = Script(*(http(429, "Too Many Requests") for _ in range(100)))
    for n in (1, 2):
        with pytest.raises(SourceUnavailable) as info:
            await c.call(throttled)
        assert info.value.kind == "http_429"
        assert c.breaker.state == CircuitBreaker.CLOSED and c.breaker.consecutive_failures == n
    assert throttled.calls == 8
    assert await c.call(Script(http(429), http(429))) == "ok"  # through on its third try
    assert c.breaker.consecutive_failures == 0
    for _ in range(5):
        with pytest.raises(SourceUnavailable):
            await c.call(throttled)
    assert c.breaker.state == CircuitBreaker.OPEN
    # Half-open, a throttled probe is no verdict: the next call probes again.
    clock.t += 60
    with pytest.raises(SourceUnavailable) as info:
        await c.call(Script(*(http(429) for _ in range(4))))
    assert c.breaker.state == CircuitBreaker.OPEN  # its retries spent: counted, open again
    clock.t += 60
    assert await c.call(Script(http(429))) == "ok"  # a throttled try, then the answer
    assert c.breaker.state == CircuitBreaker.CLOSED


async def test_half_open_lets_one_probe_through_at_a_time():
    clock = Clock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.record_failure()
    clock.t += 10
    assert breaker.allow() is True
    assert breaker.allow() is False  # a second caller waits for the probe's verdict
    breaker.record_success()
    assert breaker.allow() is True


async def test_daily_budget_is_an_error_naming_the_budget_not_a_hang():
    day = [datetime(2024, 3, 6, 12, tzinfo=UTC)]
    c = ResilientCaller(
        "av", SourceConfig(per_day=3, max_attempts=3), sleep=Sleeps(), wall_clock=lambda: day[0]
    )
    for _ in range(3):
        assert await c.call(Script()) == "ok"
    fn = Script()
    with pytest.raises(SourceError) as info:
        await c.call(fn)
    assert info.value.kind == "budget"
    assert "per_day" in str(info.value) and "3" in str(info.value)
    assert fn.calls == 0
    assert c.status()["budget"]["remaining_today"] == 0
    day[0] += timedelta(days=1)  # a new UTC day
    assert await c.call(fn) == "ok"


async def test_a_used_up_daily_budget_warns_once_a_day_and_counts_the_rest():
    # It warned at every refused call until midnight UTC: at a symbol a bar, hundreds a day.
    day = [datetime(2024, 3, 6, 12, tzinfo=UTC)]
    c = ResilientCaller(
        "av", SourceConfig(per_day=2, max_attempts=1), sleep=Sleeps(), wall_clock=lambda: day[0]
    )
    with capture_logs() as logs:
        for _ in range(2):
            assert await c.call(Script()) == "ok"
        for _ in range(5):
            with pytest.raises(SourceError, match="per_day"):
                await c.call(Script())
        assert c.status()["budget"]["refused_today"] == 5
        day[0] += timedelta(days=1)
        for _ in range(2):
            assert await c.call(Script()) == "ok"
        for _ in range(3):
            with pytest.raises(SourceError, match="per_day"):
                await c.call(Script())
    failed = [e for e in logs if e["event"] == "source.call.failed"]
    assert [e["log_level"] for e in failed] == ["warning"] + ["debug"] * 4 + ["warning"] + [
        "debug"
    ] * 2
    assert all(e["kind"] == "budget" for e in failed)
    [reset] = [e for e in logs if e["event"] == "source.budget.reset"]
    assert (reset["day"], reset["refused"], reset["per_day"]) == ("2024-03-06", 5, 2)
    assert c.status()["budget"]["refused_today"] == 3


async def test_per_minute_budget_keeps_the_pace():
    c, _ = caller(per_minute=5)
    assert await c.call(Script()) == "ok"  # from rest, the burst (1 of 5) goes at once
    # The next call must wait for capacity (15 s at 5/min with a burst of 1): not now.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(c.call(Script()), 0.1)
    assert c.calls == 1


async def test_max_concurrency_bounds_calls_in_flight():
    c, _ = caller(max_concurrency=3)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def work() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return 1

    tasks = [asyncio.create_task(c.call(work)) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert running == 3
    gate.set()
    assert sum(await asyncio.gather(*tasks)) == 10
    assert peak == 3 and c.max_in_flight == 3


async def test_secrets_never_reach_messages_logs_or_status():
    secret = "S3CR3T-KEY-123"
    c = ResilientCaller("av", SourceConfig(max_attempts=1), sleep=Sleeps(), secrets=[secret])
    body = f"bad request for https://x/query?function=F&apikey={secret}&symbol=IBM ({secret})"
    with capture_logs() as logs, pytest.raises(SourceError) as info:
        await c.call(Script(error_for_status("av", 400, body, secrets=c.secrets)), what=body)
    assert secret not in str(info.value)
    assert "apikey=***" in str(info.value)
    assert secret not in repr(logs)
    assert logs and logs[0]["event"] == "source.call.failed"
    assert secret not in repr(c.status())
    assert redact(f"?apikey={secret}&x=1") == "?apikey=***&x=1"
    assert redact(f"token is {secret}", [secret]) == "token is ***"


@pytest.mark.parametrize("pad", [0, 260])  # the credential inside the body's cut, or across it
async def test_a_body_echoing_the_request_headers_shows_no_credential(pad):
    """A server (or a proxy) that answers 500 with the request's headers: aiohttp sends a
    base URL's `user:password@` as `Authorization: Basic <base64>`, and the log line showed
    it, decodable."""
    import base64

    password = "SEKRIT-PROXY-PW-6666"
    basic = base64.b64encode(f"proxyuser:{password}".encode()).decode()
    bearer = "eyJhbGciOiJIUzI1NiJ9.c2VrcmV0.dG9rZW4"
    body = (
        "x" * pad
        + f" Authorization: Basic {basic} Proxy-Authorization: Bearer {bearer}"
        + f" url=http://proxyuser:{password}@127.0.0.1:18999/v8 "
    )
    c = ResilientCaller("yahoo", SourceConfig(max_attempts=1), sleep=Sleeps())
    with capture_logs() as logs, pytest.raises(SourceError) as info:
        await c.call(Script(error_for_status("yahoo", 500, body)), what="/v8/chart/AAPL")
    shown = str(info.value) + repr(logs) + repr(c.status())
    for secret in (basic, basic[:12], bearer, password):
        assert secret not in shown
    assert "Basic ***" in str(info.value) or pad  # (cut off by the 300-character limit)


async def test_error_metrics_count_by_kind():
    c, _ = caller(name="metrics-test", max_attempts=2)
    before = SOURCE_ERRORS.labels(source="metrics-test", kind="http_5xx")._value.get()
    assert await c.call(Script(http(502))) == "ok"
    after = SOURCE_ERRORS.labels(source="metrics-test", kind="http_5xx")._value.get()
    assert after == before + 1


def test_source_config_validation_and_vendor_defaults():
    av = SourceConfig.for_source("alphavantage")
    assert (av.per_minute, av.per_day) == (5.0, 500)
    assert SourceConfig.for_source("alphavantage", per_day=25).per_day == 25
    with pytest.raises(ConfigError, match="unknown setting"):
        SourceConfig.for_source("yahoo", retries=3)
    for bad in (
        {"timeout_s": 0},
        {"max_attempts": 0},
        {"max_concurrency": 0},
        {"per_day": -1},
        {"breaker_failure_threshold": 0},
        {"backoff_base_s": float("nan")},
    ):
        with pytest.raises(ConfigError):
            SourceConfig(**bad)


def test_error_kinds_for_statuses():
    assert http(429).kind == "http_429" and http(429).retryable
    assert http(503).kind == "http_5xx" and http(503).retryable
    assert http(404).kind == "not_found" and not http(404).retryable
    assert http(403).kind == "auth"
    assert make_error("x", "soft_error", "Note", retryable=True).retryable
    yahoo_404 = error_for_status(
        "yahoo",
        404,
        '{"chart":{"result":null,"error":{"code":"Not Found","description":"No data found"}}}',
    )
    assert "Not Found: No data found" in yahoo_404.message


def test_a_redirect_names_its_location_redacted():
    err = error_for_status(
        "alphavantage",
        301,
        "",
        location="https://www.alphavantage.co/query?function=X&apikey=SECRETKEY123",
        secrets=("SECRETKEY123",),
    )
    assert err.kind == "http_4xx" and not err.retryable
    assert "redirected to https://www.alphavantage.co/query?function=X" in err.message
    assert "SECRETKEY123" not in err.message
    assert "(no Location header)" in error_for_status("yahoo", 302, "").message


async def test_half_open_callers_wait_for_the_probe_verdict():
    clock = Clock()
    c, _ = caller(
        clock=clock,
        max_attempts=1,
        breaker_failure_threshold=1,
        breaker_reset_timeout_s=10,
        max_concurrency=4,
    )
    with pytest.raises(SourceUnavailable):
        await c.call(Script(http(503)))
    clock.t += 10
    calls = 0

    async def slow(result: int, fail: bool = False) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if fail:
            raise http(503)
        return result

    # The probe succeeds: every caller that waited for it is served, not turned away.
    assert await asyncio.gather(*(c.call(lambda: slow(1)) for _ in range(5))) == [1] * 5
    assert calls == 5 and c.breaker.state == CircuitBreaker.CLOSED

    # The probe fails: the waiters fail fast with circuit_open; only the probe was sent.
    with pytest.raises(SourceUnavailable):
        await c.call(Script(http(503)))
    clock.t += 10
    calls = 0
    results = await asyncio.gather(
        *(c.call(lambda: slow(1, fail=True)) for _ in range(4)), return_exceptions=True
    )
    assert calls == 1
    assert sorted(e.kind for e in results) == ["circuit_open"] * 3 + ["http_5xx"]


async def test_a_call_an_instant_before_the_probe_is_due_waits_for_it():
    """At 1-minute bars with a 60 s reset the breaker reopens to a probe at each release:
    the engine's retry of the bars missed in the outage came a few milliseconds before it
    and was refused, the new bar's fetch an instant later was the probe, and the missed
    bars were lost although the source had them back. A call up to a second early waits for
    the probe (once); one earlier still fails fast."""
    clock = Clock()
    c, sleeps = caller(
        clock=clock, max_attempts=1, breaker_failure_threshold=1, breaker_reset_timeout_s=60
    )
    with pytest.raises(SourceUnavailable):
        await c.call(Script(http(503)))
    clock.t += 50  # 10 s early: refused at once, no wait
    with pytest.raises(SourceUnavailable) as info:
        await c.call(Script())
    assert info.value.kind == "circuit_open" and sleeps.waits == []

    real_sleep = sleeps.__call__

    async def passing(seconds: float) -> None:  # the wait lets the clock reach the probe
        await real_sleep(seconds)
        clock.t += seconds

    c._sleep = passing
    clock.t += 9.996  # 4 ms early
    fn = Script()
    assert await c.call(fn) == "ok"
    assert fn.calls == 1 and c.breaker.state == CircuitBreaker.CLOSED
    assert sleeps.waits == [pytest.approx(0.004)]


async def test_a_call_a_little_over_a_second_before_the_probe_waits_for_it_at_a_long_reset():
    """A review found a bar release's calls could come 1.00-1.05 s before the probe that a
    failing call of about a second lined up: over the 1-s wait, refused, and the bars lost.
    At a 60 s reset a call up to 3 s early waits (5% of the reset); at a 10 s reset still 1 s;
    never more than 5 s."""
    assert probe_due_wait_s(60) == pytest.approx(3.0)
    assert probe_due_wait_s(10) == pytest.approx(1.0)
    assert probe_due_wait_s(3600) == pytest.approx(5.0)
    clock = Clock()
    c, sleeps = caller(
        clock=clock, max_attempts=1, breaker_failure_threshold=1, breaker_reset_timeout_s=60
    )
    with pytest.raises(SourceUnavailable):
        await c.call(Script(http(503)))
    real_sleep = sleeps.__call__

    async def passing(seconds: float) -> None:
        await real_sleep(seconds)
        clock.t += seconds

    c._sleep = passing
    clock.t += 60 - 1.05  # 1.05 s early
    fn = Script()
    assert await c.call(fn) == "ok"
    assert fn.calls == 1 and sleeps.waits == [pytest.approx(1.05)]


async def test_a_probe_that_fails_slowly_keeps_the_next_probe_on_time():
    """The reset time ran from when a probe failed: a probe failing after 1.5 s (a connection
    held, then closed) moved the next one 1.5 s later, past the bar release that a 60 s
    breaker of 1-minute bars lines up with, and that release's fetch was refused ("next probe
    in 1.5s") although the source was back. It runs from when the failing call was sent."""
    clock = Clock()
    c, _ = caller(
        clock=clock, max_attempts=1, breaker_failure_threshold=1, breaker_reset_timeout_s=60
    )

    async def slow_failure() -> str:
        clock.t += 1.5  # the failure takes 1.5 s to come
        raise http(503)

    with pytest.raises(SourceUnavailable):
        await c.call(slow_failure)  # sent at 1000.0: opens
    assert c.breaker.retry_in_s() == pytest.approx(58.5)
    clock.t = 1060.0  # the probe, on time
    with pytest.raises(SourceUnavailable):
        await c.call(slow_failure)  # sent at 1060.0, failed at 1061.5: reopens
    clock.t = 1120.0  # the next release: its probe is due now, not at 1121.5
    assert c.breaker.state == CircuitBreaker.HALF_OPEN
    assert await c.call(Script()) == "ok"


class SteppingClock(Clock):
    """A clock that, once armed with `reads`, answers them in turn (then the last one):
    the instants of successive reads, to put a breaker's reset time between two of them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[float] = []

    def __call__(self) -> float:
        if self.reads:
            self.t = self.reads.pop(0)
        return self.t


async def test_a_probe_taken_as_the_reset_time_passes_wakes_the_callers_waiting_for_it():
    """A call that had queued for its slot while the circuit opened read the breaker twice:
    open at the first read (so not a probe), half-open at the next (the reset time passed
    in between), and `allow` gave it the probe's slot. Its verdict then woke nobody: callers
    waiting for the probe waited until some later probe ended. Whether a call is the probe
    is now read from the slot it took."""
    clock = SteppingClock()
    c, _ = caller(
        clock=clock,
        max_attempts=1,
        breaker_failure_threshold=1,
        breaker_reset_timeout_s=10,
        max_concurrency=1,
    )
    failing, probing = asyncio.Event(), asyncio.Event()

    async def fails() -> int:
        await failing.wait()
        # The circuit opens at 1000 (record_failure's read); the queued call's next two
        # reads fall just before and just after the reset time.
        clock.reads = [1000.0, 1009.9999999, 1010.0000001]
        raise http(503)

    async def probe() -> int:
        await probing.wait()
        return 2

    first = asyncio.create_task(c.call(fails))
    await asyncio.sleep(0)  # it holds the only slot
    queued = asyncio.create_task(c.call(probe))
    await asyncio.sleep(0)  # admitted (the circuit closed), it queues for the slot
    failing.set()
    with pytest.raises(SourceUnavailable):
        await first
    while not c.breaker.probing:  # the queued call takes the probe's slot
        await asyncio.sleep(0)
    waiter = asyncio.create_task(c.call(lambda: asyncio.sleep(0, result=3)))
    await asyncio.sleep(0)  # half-open with a probe out: it waits for the verdict
    probing.set()
    assert await queued == 2 and c.breaker.state == CircuitBreaker.CLOSED
    async with asyncio.timeout(5):  # (a bound on the failure, not a wait for success)
        assert await waiter == 3


@pytest.mark.parametrize(
    ("circuit", "then"),
    [("closed", "retried with backoff"), ("open", "the circuit is open, next probe in 42.0 s")],
)
def test_the_feeds_ready_detail_names_the_failure_not_only_the_circuit(circuit, then):
    """A soak saw /ready's `feed` check fail with "circuit closed" while a timed-out call was
    retried: a detail that names nothing wrong. It names the failure, when, how many in a
    row and what follows."""
    from tradingd.feeds.vendor import VendorFeed

    class Source:
        name = "yahoo"

        def status(self) -> dict:
            return {
                "ok": False,
                "circuit": circuit,
                "consecutive_failures": 2,
                "retry_in_s": 42.0,
                "last_error": {
                    "kind": "timeout",
                    "message": "no answer in 10 s",
                    "symbol": None,
                    "at": "2026-12-07T16:05:15+00:00",
                },
            }

    status = VendorFeed(Source(), ("AAA", "BBB")).status()  # type: ignore[arg-type]
    assert not status["ok"]
    assert status["detail"] == (
        "last call failed (timeout: no answer in 10 s) at 2026-12-07T16:05:15+00:00; "
        f"2 failure(s) in a row; {then}"
    )
