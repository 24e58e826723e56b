"""The Alpaca market-data client (alpaca-py underneath) against a loopback Alpaca."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from datetime import UTC, date, datetime

import pandas as pd
import pytest
from fakes import BarBook, fixture_json, need_fixtures
from fakes.alpaca_data_server import AlpacaDataFake
from fakes.hung_host import hung_host
from fakes.trickle_host import trickle_host
from structlog.testing import capture_logs

from tradingd import metrics
from tradingd.core.errors import ConfigError
from tradingd.feeds.alpaca_data import ENV_KEY_ID, ENV_SECRET_KEY, AlpacaDataClient
from tradingd.feeds.resilience import ResilientCaller, SourceConfig

KEY_ID, SECRET = "PKTESTKEYID123456", "sEcReT-0123456789abcdef"
NOW = datetime(2024, 3, 6, 22, 0, tzinfo=UTC)


async def no_sleep(_: float) -> None:
    return None


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
async def fake():
    async with AlpacaDataFake(BarBook(now=NOW), key_id=KEY_ID, secret=SECRET) as server:
        yield server


@pytest.fixture
async def make_client(fake):
    made: list[AlpacaDataClient] = []

    async def make(**kw) -> AlpacaDataClient:
        # A timeout no loopback answer meets even on a loaded machine (CI beside other
        # work: a 2 s one timed a page of 11,700 bars out, and the count of requests the
        # retry tests assert had one more); tests of timeouts set their own.
        cfg = {"max_attempts": 3, "backoff_base_s": 0.0, "timeout_s": 20.0}
        cfg |= {k: kw.pop(k) for k in list(kw) if k in SourceConfig.__dataclass_fields__}
        caller = ResilientCaller("alpaca", SourceConfig(**cfg), sleep=kw.pop("sleep", no_sleep))
        opts = {
            "api_key": KEY_ID,
            "secret_key": SECRET,
            "base_url": fake.url,
            "caller": caller,
            "clock": lambda: fake.book.now,
            **kw,
        }
        client = AlpacaDataClient(**opts)
        await client.start()
        # Were alpaca-py's own retries on, they would not sleep 3 s each here either.
        client._client._retry_wait = 0
        made.append(client)
        return client

    yield make
    for c in made:
        await c.stop()


def one(result, symbol):
    assert symbol not in result.errors, result.errors
    return result.for_symbol(symbol)


# ----------------------------------------------------------------------------- recorded


async def test_recorded_two_symbols_labelled_by_new_york_date(fake, make_client):
    need_fixtures()
    fake.faults.respond_next(
        fixture_json("alpaca", "marketdata", "bars_multi_AAPL_NIO_1Day_single_page.json")
    )
    client = await make_client(derive_actions=False)
    res = await client.fetch(["AAPL", "NIO"], "1d", utc(2021, 10, 13), utc(2021, 10, 15))
    aapl, nio = one(res, "AAPL"), one(res, "NIO")
    # Stamped 2021-10-13T04:00:00Z (New York midnight): labelled 2021-10-13 00:00.
    assert list(aapl["time"]) == [pd.Timestamp(f"2021-10-{d}") for d in (13, 14, 15)]
    assert aapl["close"].tolist() == pytest.approx([140.91, 143.76, 144.84])
    assert aapl["volume"].iloc[0] == 78993712
    assert nio["open"].iloc[2] == pytest.approx(37.0)
    q = fake.requests[0]
    assert q.path == "/v2/stocks/bars"
    assert q.query["symbols"] == "AAPL,NIO" and q.query["timeframe"] == "1Day"
    assert q.query["adjustment"] == "raw" and q.query["feed"] == "iex"
    assert q.headers["APCA-API-KEY-ID"] == KEY_ID


async def test_recorded_pagination_chain_is_merged(fake, make_client):
    need_fixtures()
    for page in (
        "bars_multi_META_1Day_limit2_page1.json",
        "bars_multi_META_1Day_limit2_page2.json",
        "bars_multi_empty.json",
    ):
        fake.faults.respond_next(fixture_json("alpaca", "marketdata", page))
    client = await make_client(derive_actions=False)
    df = one(await client.fetch(["META"], "1d", utc(2022, 6, 8), utc(2022, 6, 13)), "META")
    assert list(df["time"]) == [pd.Timestamp(f"2022-06-{d}") for d in ("08", "09", "10", "13")]
    assert df["close"].tolist() == pytest.approx([196.64, 184.0, 175.57, 164.26])
    assert (
        fake.requests[1].query["page_token"]
        == "TUVUQXxEfDIwMjItMDYtMDlUMDQ6MDA6MDAuMDAwMDAwMDAwWg=="
    )


async def test_recorded_empty_and_sip_forbidden(fake, make_client):
    need_fixtures()
    client = await make_client(derive_actions=False, feed="sip")
    fake.faults.respond_next(fixture_json("alpaca", "marketdata", "bars_multi_empty.json"))
    res = await client.fetch(["AAPL"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors == {} and res.frame.empty
    fake.faults.respond_next(
        fixture_json("alpaca", "errors", "403_marketdata_sip_not_permitted.json"), status=403
    )
    fake.reset_stats()
    # Another window: the first one's (empty) answer is cached.
    res = await client.fetch(["AAPL"], "1d", utc(2024, 3, 2), utc(2024, 3, 5))
    err = res.errors["AAPL"]
    assert (err.kind, err.status) == ("auth", 403)
    assert "recent SIP data" in err.message
    assert fake.count == 1  # not retried


# ----------------------------------------------------------------------------- synthetic


async def test_split_and_dividend_derived_from_adjusted_series(fake, make_client):
    book = fake.book
    book.add_split("AAA", date(2024, 3, 4), 4.0)
    book.add_dividend("BBB", date(2024, 3, 5), 0.5)
    client = await make_client()
    res = await client.fetch(["AAA", "BBB"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    aaa = one(res, "AAA").set_index("time")
    bbb = one(res, "BBB").set_index("time")
    assert list(aaa.index) == [pd.Timestamp(f"2024-03-0{d}") for d in (4, 5, 6)]
    # The split is on the window's first bar: derived from the bar before it (margin).
    assert aaa["split"].tolist() == [4.0, 1.0, 1.0]
    assert bbb["dividend"].tolist() == pytest.approx([0.0, 0.5, 0.0], abs=1e-4)
    expected = {b.day: b.close for b in book.daily("AAA", date(2024, 3, 4), date(2024, 3, 6))}
    assert aaa["close"].tolist() == pytest.approx(list(expected.values()))
    adjustments = sorted({r.query["adjustment"] for r in fake.requests})
    assert adjustments == ["all", "raw", "split"]


async def test_without_derivation_actions_are_not_reported(fake, make_client):
    fake.book.add_split("AAA", date(2024, 3, 4), 4.0)
    client = await make_client(derive_actions=False)
    df = one(await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6)), "AAA")
    assert (df["split"] == 1.0).all()
    assert {r.query["adjustment"] for r in fake.requests} == {"raw"}


async def test_intraday_labels_are_bar_starts_in_utc(fake, make_client):
    client = await make_client(derive_actions=False)
    df = one(
        await client.fetch(["AAA"], "15m", utc(2024, 3, 6, 14, 30), utc(2024, 3, 6, 15, 0)), "AAA"
    )
    assert list(df["time"]) == [
        pd.Timestamp(f"2024-03-06 {t}") for t in ("14:30", "14:45", "15:00")
    ]


async def test_in_progress_daily_bar_is_not_served(fake, make_client):
    fake.book.now = utc(2024, 3, 6, 18, 0)
    client = await make_client()
    df = one(await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6)), "AAA")
    assert df["time"].iloc[-1] == pd.Timestamp("2024-03-05")


async def test_wrong_keys_are_an_auth_error_not_retried(fake, make_client):
    client = await make_client(secret_key="wrong-secret-value", derive_actions=False)
    with capture_logs() as logs:
        res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["AAA"]
    assert (err.kind, err.status) == ("auth", 401)
    assert "not authorized" in err.message
    assert fake.count == 1
    text = repr(logs) + str(err) + repr(client.status()) + repr(client)
    assert "wrong-secret-value" not in text and SECRET not in text


async def test_keys_from_the_environment(fake, monkeypatch):
    monkeypatch.delenv(ENV_KEY_ID, raising=False)
    monkeypatch.delenv(ENV_SECRET_KEY, raising=False)
    with pytest.raises(ConfigError, match=ENV_KEY_ID):
        await AlpacaDataClient(base_url=fake.url).start()
    monkeypatch.setenv(ENV_KEY_ID, KEY_ID)
    monkeypatch.setenv(ENV_SECRET_KEY, SECRET)
    client = AlpacaDataClient(base_url=fake.url, clock=lambda: fake.book.now)
    await client.start()
    try:
        res = await client.fetch(["AAA"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
        assert len(one(res, "AAA")) == 3
    finally:
        await client.stop()


def source_calls() -> float:
    """The counter's value; 0 before the process's first Alpaca call makes its sample."""
    value = metrics.REGISTRY.get_sample_value("tradingd_source_calls_total", {"source": "alpaca"})
    return 0.0 if value is None else value


def failures(logs) -> list[tuple]:
    return [
        (e["kind"], e["status"], e["attempt"]) for e in logs if e["event"] == "source.call.failed"
    ]


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        (lambda f: f.throttle(1, retry_after="7"), "http_429", 429),
        (lambda f: f.fail_next(1, status=504), "http_5xx", 504),
    ],
    ids=["429", "504"],
)
async def test_429_and_504_are_retried_by_the_caller_one_request_per_attempt(
    fake, make_client, fault, kind, status
):
    """alpaca-py's own retries (3 x a fixed 3 s in the worker thread) are off: each attempt
    of the caller (its limiter, breaker, backoff, Retry-After) is one request."""
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = await make_client(derive_actions=False, sleep=sleep, backoff_max_s=30.0)
    fault(fake.faults)
    calls = source_calls()
    with capture_logs() as logs:
        df = one(await client.fetch(["AAA"], "1d", utc(2024, 3, 4), utc(2024, 3, 6)), "AAA")
    assert len(df) == 3
    assert fake.count == 2 == client.caller.calls == source_calls() - calls
    assert failures(logs) == [(kind, status, 1)]
    assert len(sleeps) == 1
    if status == 429:
        assert sleeps == [7.0]  # its Retry-After


async def test_a_throttled_source_gets_one_request_per_attempt_and_no_more(fake, make_client):
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = await make_client(derive_actions=False, max_attempts=3, sleep=sleep)
    fake.faults.throttle(20, retry_after="1")
    with capture_logs() as logs:
        res = await client.fetch(["AAA"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert (res.errors["AAA"].kind, res.errors["AAA"].status) == ("http_429", 429)
    assert fake.count == 3 == client.caller.calls  # not 3 x 4
    assert failures(logs) == [("http_429", 429, n) for n in (1, 2, 3)]
    assert sleeps == [1.0, 1.0]


async def test_a_stop_while_a_request_hangs_leaves_no_thread_to_wait_for(make_client):
    """The requests run on daemon threads: neither the stop nor the interpreter's exit (which
    joins a ThreadPoolExecutor's workers) waits for one hung in a request."""
    before = set(threading.enumerate())
    with hung_host() as host:
        client = await make_client(
            derive_actions=False, base_url=host.url, timeout_s=30.0, max_attempts=1
        )
        task = asyncio.create_task(client.fetch(["AAA"], "1d", utc(2024, 3, 4), utc(2024, 3, 6)))
        for _ in range(1000):
            if host.connections:
                break
            await asyncio.sleep(0.01)
        assert host.connections  # the request is in flight, and never answered
        await client.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        assert any(t.name.startswith("alpaca-data") for t in new)  # still in its request
        assert [t.name for t in new if not t.daemon] == []


CCC_BARS = json.dumps(
    {
        "bars": {
            "CCC": [{"t": "2024-03-04T05:00:00Z", "o": 10, "h": 11, "l": 9, "c": 10.5, "v": 9}]
        },
        "next_page_token": None,
    }
)


async def test_answers_trickling_their_body_free_their_threads_at_the_deadline(make_client):
    """requests' timeout is per read: an answer dripping a byte every 20 ms never timed
    out, and its worker thread read it for as long as it dripped, long after the caller gave
    up. Two of them held both threads of the pool, and every later request waited in the
    queue until it timed out there. Each request now has an overall deadline (timeout_s,
    the body's read included): the trickling answers are abandoned (said, and their
    connections closed), and the next request has a thread."""
    with trickle_host(trickled=2, body=CCC_BARS) as host:
        client = await make_client(
            derive_actions=False,
            base_url=host.url,
            timeout_s=1.0,
            max_attempts=1,
            max_concurrency=2,
            breaker_failure_threshold=10,
            max_symbols_per_request=1,
        )
        with capture_logs() as logs:
            slow = await client.fetch(["AAA", "BBB"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
            assert {s: e.kind for s, e in slow.errors.items()} == {
                "AAA": "timeout",
                "BBB": "timeout",
            }
            res = await client.fetch(["CCC"], "1d", utc(2024, 3, 4), utc(2024, 3, 4))
            assert one(res, "CCC")["close"].tolist() == [10.5]  # it timed out in the queue
            assert await asyncio.to_thread(host.wait_dropped, 2, 10.0)
        assert len(host.requests) == 3
        abandoned = [e for e in logs if e["event"] == "alpaca.request_abandoned"]
        assert len(abandoned) == 2
        assert {(e["method"], e["path"]) for e in abandoned} == {("GET", "/v2/stocks/bars")}
        assert all(e["read_bytes"] > 0 and e["deadline_s"] == 1.0 for e in abandoned)


def test_the_session_reads_a_whole_answer_and_abandons_a_trickle_at_its_deadline():
    """`DeadlineSession` on its own: a per-read timeout (5 s) that a drip never trips, a
    deadline (0.3 s) that ends the request; a whole answer reads as requests reads it."""
    import time

    import requests

    from tradingd.alpaca_sdk import DeadlineExceeded, DeadlineSession

    with trickle_host(trickled=1, body=CCC_BARS) as host:
        session = DeadlineSession(5.0, deadline_s=0.3)
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout) as info:
            session.get(host.url + "/v2/stocks/bars")
        assert isinstance(info.value, DeadlineExceeded)
        assert time.monotonic() - started < 3.0  # not the 5 s of a read, nor for ever
        assert host.wait_dropped(1, 10.0)
        answer = session.get(host.url + "/v2/stocks/bars", params={"symbols": "CCC"})
        assert answer.status_code == 200
        assert answer.text == CCC_BARS and answer.json()["bars"]["CCC"][0]["c"] == 10.5
        session.close()


TRUNCATED = b'{"fetched_at": "2024-03-06T22:00:00+00:00", "body": "{\\"bars\\": {'
NO_BODY = json.dumps({"fetched_at": "2024-03-06T22:00:00+00:00", "answer": {}}).encode()
BAD_BODY = json.dumps({"fetched_at": "2024-03-06T22:00:00+00:00", "body": '{"bars'}).encode()


@pytest.mark.parametrize(
    "entry",
    [TRUNCATED, NO_BODY, BAD_BODY, b"[1, 2]"],
    ids=["truncated", "no_body", "bad_body", "list"],
)
async def test_a_corrupt_cache_entry_is_logged_and_asked_for_again(fake, make_client, entry):
    """A truncated or foreign entry in a shared cache: a warning and the vendor's bars (it
    raised a JSONDecodeError or KeyError out of the fetch, which stopped the daemon)."""
    client = await make_client(derive_actions=False)
    window = (utc(2024, 3, 4), utc(2024, 3, 6))
    first = one(await client.fetch(["AAA"], "1d", *window), "AAA")
    keys = list(client.cache.fallback._data)
    assert len(keys) == 1  # the closed window's answer
    await client.cache.fallback.set(keys[0], entry, 60)
    fake.reset_stats()
    with capture_logs() as logs:
        again = one(await client.fetch(["AAA"], "1d", *window), "AAA")
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["alpaca.cache.bad_entry"]
    assert fake.count == 1
    pd.testing.assert_frame_equal(again, first)
    # The answer fetched again replaced the bad entry.
    pd.testing.assert_frame_equal(one(await client.fetch(["AAA"], "1d", *window), "AAA"), first)
    assert fake.count == 1


async def test_5xx_timeout_and_malformed(fake, make_client):
    client = await make_client(
        derive_actions=False, timeout_s=0.2, max_attempts=2, breaker_failure_threshold=20
    )
    fake.faults.fail_next(1, status=500)
    assert len(one(await client.fetch(["A"], "1d", utc(2024, 3, 4), utc(2024, 3, 6)), "A")) == 3
    # (Each step asks for another window: a closed window's answer is cached.)
    fake.faults.delay_next(1, 0.6)
    assert len(one(await client.fetch(["A"], "1d", utc(2024, 3, 1), utc(2024, 3, 5)), "A")) == 3
    assert client.caller.last_error.kind == "timeout"
    fake.faults.malformed_next(2)
    res = await client.fetch(["A"], "1d", utc(2024, 2, 27), utc(2024, 3, 4))
    assert res.errors["A"].kind == "malformed"


async def test_fifty_symbols_in_chunks_with_bounded_concurrency(fake, make_client):
    client = await make_client(max_symbols_per_request=5, max_concurrency=2)
    fake.faults.hold_s = 0.01
    symbols = [f"S{i:02d}" for i in range(50)]
    res = await client.fetch(symbols, "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert res.errors == {}
    assert set(res.frame["symbol"]) == set(symbols)
    assert fake.count == 30  # 10 chunks x (raw, split, all)
    assert fake.max_in_flight == 2


async def test_answers_are_parsed_off_the_event_loop(fake, make_client, monkeypatch):
    """A warm-up page (100 symbols x 500 bars) is a long parse: not on the loop, which
    serves the health server and the broker's updates meanwhile."""
    import threading

    import tradingd.feeds.alpaca_data as alpaca_data

    threads: list[int] = []
    parse = alpaca_data.bars_to_long

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return parse(*args, **kwargs)

    monkeypatch.setattr(alpaca_data, "bars_to_long", recording)
    client = await make_client()
    res = await client.fetch(["AAA", "BBB"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert set(res.frame["symbol"]) == {"AAA", "BBB"}
    assert threads
    assert threading.get_ident() not in threads


# ----------------------------------------------------------------------------- odd answers


@pytest.mark.parametrize(
    "body",
    [
        "",
        "null",
        "[]",
        '{"bars": null, "next_page_token": null}',
        '{"bars": {"A": null}, "next_page_token": null}',
    ],
    ids=["empty", "null", "list", "bars_null", "symbol_null"],
)
async def test_a_200_answer_of_an_unexpected_shape_is_malformed(fake, make_client, body):
    """HTTP 200 with a body that is not Alpaca's bars object: alpaca-py's page loop raised
    TypeError or AttributeError, which left `fetch` (and `VendorFeed.bars`, and the engine's
    loop, which retries RetryableError only: the daemon exited). Yahoo and Alpha Vantage
    call such an answer `malformed`, retried by the caller; so does this client now."""
    client = await make_client(derive_actions=False, max_attempts=2)
    fake.faults.respond_next(body, n=2)
    res = await client.fetch(["A"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert res.errors["A"].kind == "malformed"
    assert fake.count == 2  # retried: the source is unwell, not the request wrong


async def test_a_feed_on_unreadable_answers_raises_a_retryable_error(fake):
    """The same answers through `VendorFeed.bars`: the bar is late (RetryableError), which
    the engine's loop retries, instead of an exception that ends the daemon."""
    from tradingd.core.errors import RetryableError
    from tradingd.feeds.vendor import VendorFeed

    caller = ResilientCaller(
        "alpaca", SourceConfig(max_attempts=2, backoff_base_s=0.0, timeout_s=2.0), sleep=no_sleep
    )
    client = AlpacaDataClient(
        api_key=KEY_ID,
        secret_key=SECRET,
        base_url=fake.url,
        caller=caller,
        clock=lambda: NOW,
        derive_actions=False,
    )
    feed = VendorFeed(client, ["A", "B"], "1d", clock=lambda: NOW)
    await feed.start()
    try:
        fake.faults.respond_next('{"bars": null, "next_page_token": null}', n=2)
        with pytest.raises(RetryableError, match="malformed"):
            await feed.bars(utc(2024, 3, 6))
        assert feed.status()["failed"]["A"]["kind"] == "malformed"
    finally:
        await feed.stop()


async def test_an_unexpected_exception_in_a_chunk_fails_its_symbols_only(
    fake, make_client, monkeypatch
):
    """A bug of ours while handling one chunk's answer (here: deriving the actions) fails
    that chunk's symbols as `internal`, said at error level with the traceback; the other
    chunks are served. It left `fetch` before, with every chunk's bars."""
    import tradingd.feeds.alpaca_data as alpaca_data

    derive = alpaca_data.derive_actions

    def broken(raw, split_adj, all_adj):
        if "A" in set(raw["symbol"]):
            raise ZeroDivisionError("a bug")
        return derive(raw, split_adj, all_adj)

    monkeypatch.setattr(alpaca_data, "derive_actions", broken)
    client = await make_client(max_symbols_per_request=2)
    with capture_logs() as logs:
        res = await client.fetch(["A", "B", "C"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert {s: e.kind for s, e in res.errors.items()} == {"A": "internal", "B": "internal"}
    assert "ZeroDivisionError: a bug" in res.errors["A"].message
    assert len(one(res, "C")) == 3
    said = [e for e in logs if e["event"] == "source.internal_error"]
    assert len(said) == 1 and said[0]["log_level"] == "error"
    assert said[0]["symbols"] == ["A", "B"] and said[0]["exc_info"]


# ----------------------------------------------------------------------------- pages

# 1-minute bars of 10 sessions (390 a session) x 3 symbols: 11,700 bars, two pages of
# Alpaca's 10,000.
PAGED = (["A", "B", "C"], "1m", utc(2024, 2, 22, 14, 30), utc(2024, 3, 6, 20, 59))


async def test_each_page_is_one_request_of_the_caller(fake, make_client):
    """alpaca-py walked `next_page_token` itself inside one attempt: the per-minute limiter
    took one token for every page of it, and SOURCE_CALLS counted one request. Each page is
    now an attempt of its own (its limiter token, its timeout, its retries)."""
    client = await make_client(derive_actions=False, per_minute=200.0)
    calls = source_calls()
    res = await client.fetch(*PAGED)
    assert res.errors == {}
    assert len(res.frame) == 11_700
    assert fake.count == 2 == client.caller.calls == source_calls() - calls
    assert "page_token" not in fake.requests[0].query
    assert fake.requests[1].query["page_token"]
    assert {r.query["limit"] for r in fake.requests} == {"10000"}


async def test_a_failed_page_is_asked_for_again_alone(fake, make_client):
    """A 503 on the second page retries that page, from its token: the walk was one attempt,
    and its retry fetched the first page again."""
    client = await make_client(derive_actions=False)
    fake.faults.delay_next(1, 0.0)  # the first page answers as usual
    fake.faults.fail_next(1, status=503)
    res = await client.fetch(*PAGED)
    assert res.errors == {} and len(res.frame) == 11_700
    assert fake.count == 3
    tokens = [r.query.get("page_token") for r in fake.requests]
    assert tokens[0] is None and tokens[1] == tokens[2] is not None


async def test_each_page_has_the_timeout_of_one_request(fake, make_client):
    """`timeout_s` bounded the whole walk: a window of k pages failed whenever k pages took
    longer than it, at every attempt alike, so a long catch-up could never be fetched.
    Each page (2.6 s and its rendering here) now has the timeout (5 s) to itself. The two
    pages take longer than 5 s whatever the machine's load; one page leaves 2.4 s for the
    fake's rendering of its bars and the client's parsing (a 0.75 s margin timed out under
    a load of 7, and 1.5 s about one run in six under a load of 6-9)."""
    client = await make_client(derive_actions=False, timeout_s=5.0, max_attempts=1)
    fake.faults.delay_s = 2.6  # every request answers after 2.6 s (and its rendering)
    res = await client.fetch(*PAGED)
    assert res.errors == {}
    assert len(res.frame) == 11_700 and fake.count == 2


async def test_pages_that_never_end_are_given_up_at_what_the_window_can_fill(fake, make_client):
    """Only a token that came twice ended the walk: a server handing out new tokens for ever
    (and no bars) was followed for ever, a request a page. The window of 3 daily bars of one
    symbol fills one page; the walk gives up after 6 (twice that and the page, and two a
    symbol), naming why."""
    for i in range(40):
        fake.faults.respond_next({"bars": {}, "next_page_token": f"token-{i}"})
    client = await make_client(derive_actions=False, max_attempts=1)
    res = await client.fetch(["A"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert fake.count == 6
    err = res.errors["A"]
    assert err.kind == "malformed" and "still a next_page_token after 6 pages" in err.message


# ----------------------------------------------------------------------------- bad bars


def _day_bars(closes):
    return [
        {"t": f"2024-03-0{d}T05:00:00Z", "o": c, "h": c + 1, "l": c - 1, "c": c, "v": 1000}
        for d, c in zip((4, 5, 6), closes, strict=True)
    ]


async def test_a_bad_bar_refuses_its_symbol_only_and_names_the_bar(fake, make_client):
    """One bar lacking `v`, with a `t` that is not a time, or `null` failed the whole
    request (up to 100 symbols) as `malformed` with a message naming neither the symbol
    nor the bar (`bars_to_long` parsed every symbol's bars at once). A field missing or
    `null` is NaN now, which validation drops (an older bar) or refuses (the newest), as a
    Yahoo `null`; a bar without a readable time or not an object refuses its symbol only,
    naming the bar."""
    bars = {s: _day_bars([10.0, 11.0, 12.0]) for s in ("A", "B", "C", "D")}
    del bars["B"][0]["v"]  # an older bar without volume: dropped by validation (a gap)
    bars["C"][1]["t"] = "2024-03-0X"
    bars["D"][2] = None
    fake.faults.respond_next({"bars": bars, "next_page_token": None})
    client = await make_client(derive_actions=False, max_attempts=1)
    with capture_logs() as logs:
        res = await client.fetch(["A", "B", "C", "D"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert fake.count == 1
    assert len(one(res, "A")) == 3
    b = one(res, "B")
    assert list(b["time"]) == [pd.Timestamp("2024-03-05"), pd.Timestamp("2024-03-06")]
    gap = [e for e in logs if e.get("symbol") == "B" and "2024-03-04" in repr(e)]
    assert gap and "volume" in repr(gap)
    c, d = res.errors["C"], res.errors["D"]
    assert (c.kind, d.kind) == ("malformed", "malformed")
    assert c.symbol == "C" and "bar 1 of 3" in c.message and "'2024-03-0X'" in c.message
    assert d.symbol == "D" and "bar 2 of 3 is None, not an object" in d.message
    said = {e["symbol"] for e in logs if e["event"] == "alpaca.bar_unreadable"}
    assert said == {"C", "D"}


async def test_a_bad_bar_in_an_adjusted_table_refuses_its_symbol_only(fake, make_client):
    """The split-adjusted table's bar without a time: its symbol is refused (its actions
    would be derived from a table missing a bar), the other symbol is served."""
    good = {"bars": {s: _day_bars([10.0, 11.0, 12.0]) for s in ("A", "B")}}
    bad = {"bars": {s: _day_bars([10.0, 11.0, 12.0]) for s in ("A", "B")}}
    del bad["bars"]["B"][2]["t"]
    for body in (good, bad, good):
        fake.faults.respond_next({**body, "next_page_token": None})
    client = await make_client(max_attempts=1)
    res = await client.fetch(["A", "B"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert len(one(res, "A")) == 3
    err = res.errors["B"]
    assert err.kind == "malformed" and err.symbol == "B"
    assert "split-adjusted bars: bar 2 of 3 has t missing" in err.message


async def test_the_configured_body_cap_holds_for_the_alpaca_data_feed(fake, make_client):
    """`feed.alpaca.call.max_body_bytes` was not passed to the data client's session, which
    kept the 64 MB default: an answer over the configured cap is refused as malformed."""
    need_fixtures()
    body = fixture_json("alpaca", "marketdata", "bars_multi_AAPL_NIO_1Day_single_page.json")
    fake.faults.respond_next(body)
    client = await make_client(derive_actions=False, max_body_bytes=200, max_attempts=1)
    res = await client.fetch(["AAPL", "NIO"], "1d", utc(2021, 10, 13), utc(2021, 10, 15))
    assert res.frame.empty and set(res.errors) == {"AAPL", "NIO"}
    err = res.errors["AAPL"]
    assert err.kind == "malformed" and "max_body_bytes" in str(err), err
