"""The Alpha Vantage client against a loopback Alpha Vantage (recorded and synthetic)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pandas as pd
import pytest
from fakes import BarBook, fixture_text, need_fixtures
from fakes.alphavantage_server import AlphaVantageFake
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError
from tradingd.feeds.alphavantage import ENV_KEY, AlphaVantageClient
from tradingd.feeds.resilience import ResilientCaller, SourceConfig
from tradingd.feeds.response_cache import ResponseCache

KEY = "AVKEY-9f8e7d6c5b4a"  # distinctive, so a leak anywhere is found
REC_NOW = datetime(2026, 5, 16, 12, 0, tzinfo=UTC)  # the Saturday after the recording
NOW = datetime(2024, 3, 6, 22, 0, tzinfo=UTC)


async def no_sleep(_: float) -> None:
    return None


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
async def fake():
    async with AlphaVantageFake(BarBook(now=NOW), api_key=KEY) as server:
        yield server


@pytest.fixture
async def make_client(fake):
    made: list[AlphaVantageClient] = []

    async def make(*, cache: ResponseCache | None = None, **kw) -> AlphaVantageClient:
        cfg = {"max_attempts": 3, "backoff_base_s": 0.0, "timeout_s": 2.0}
        cfg |= {k: kw.pop(k) for k in list(kw) if k in SourceConfig.__dataclass_fields__}
        caller = ResilientCaller("alphavantage", SourceConfig(**cfg), sleep=no_sleep)
        client = AlphaVantageClient(
            api_key=kw.pop("api_key", KEY),
            base_url=fake.url,
            caller=caller,
            cache=cache,
            clock=lambda: fake.book.now,
            **kw,
        )
        await client.start()
        made.append(client)
        return client

    yield make
    for c in made:
        await c.stop()


def one(result, symbol):
    assert symbol not in result.errors, result.errors
    return result.for_symbol(symbol)


# ----------------------------------------------------------------------------- recorded


@pytest.mark.parametrize("datatype", ["json", "csv"])
async def test_recorded_daily_raw(fake, make_client, datatype):
    need_fixtures()
    fake.serve_recorded("IBM")
    client = await make_client(datatype=datatype)
    df = one(
        await client.fetch(["IBM"], "1d", utc(2026, 4, 20), utc(2026, 5, 15), now=REC_NOW), "IBM"
    )
    assert len(df) == 20
    assert df["time"].is_monotonic_increasing
    assert df["time"].iloc[0] == pd.Timestamp("2026-04-20")
    last = df.iloc[-1]
    assert last["time"] == pd.Timestamp("2026-05-15")
    assert (last["open"], last["high"], last["low"], last["close"]) == pytest.approx(
        (218.20, 220.91, 217.615, 219.30)
    )
    assert last["volume"] == 6154450
    assert (df["split"] == 1.0).all() and (df["dividend"] == 0.0).all()
    q = fake.requests[-1].query
    assert q["function"] == "TIME_SERIES_DAILY" and q["symbol"] == "IBM"
    assert q["datatype"] == datatype and q["apikey"] == KEY


@pytest.mark.parametrize("datatype", ["json", "csv"])
async def test_recorded_daily_adjusted_carries_dividend_raw_prices(fake, make_client, datatype):
    need_fixtures()
    fake.serve_recorded("IBM")
    client = await make_client(datatype=datatype, adjusted=True)
    df = one(
        await client.fetch(["IBM"], "1d", utc(2026, 4, 20), utc(2026, 5, 15), now=REC_NOW), "IBM"
    ).set_index("time")
    assert df.loc[pd.Timestamp("2026-05-08"), "dividend"] == pytest.approx(1.69)
    assert (df["dividend"] > 0).sum() == 1
    # Raw close, not the adjusted one (229.62102225102612).
    assert df.loc[pd.Timestamp("2026-05-07"), "close"] == pytest.approx(231.31)
    assert (df["split"] == 1.0).all()
    assert fake.requests[-1].query["function"] == "TIME_SERIES_DAILY_ADJUSTED"


@pytest.mark.parametrize("datatype", ["json", "csv"])
async def test_recorded_intraday_labelled_by_start_in_utc(fake, make_client, datatype):
    need_fixtures()
    fake.serve_recorded("IBM")
    client = await make_client(datatype=datatype)
    df = one(
        await client.fetch(
            ["IBM"], "5m", utc(2026, 5, 15, 22), utc(2026, 5, 15, 23, 55), now=REC_NOW
        ),
        "IBM",
    )
    assert len(df) == 24
    # "2026-05-15 19:55:00" US/Eastern (EDT) is 23:55 UTC.
    assert df["time"].iloc[-1] == pd.Timestamp("2026-05-15 23:55")
    assert df["time"].iloc[0] == pd.Timestamp("2026-05-15 22:00")
    assert df["close"].iloc[-1] == pytest.approx(219.0)
    q = fake.requests[-1].query
    assert (q["function"], q["interval"], q["adjusted"], q["extended_hours"]) == (
        "TIME_SERIES_INTRADAY",
        "5min",
        "false",
        "false",
    )


@pytest.mark.parametrize(
    ("fixture", "kind", "retryable"),
    [
        ("note_call_frequency_legacy_5min_500day.json", "soft_error", True),
        ("information_rate_limit_2025.json", "soft_error", True),
        ("information_rate_limit_25day_2024.json", "soft_error", False),
        ("information_premium_endpoint.json", "plan", False),
        ("information_demo_key.json", "plan", False),
        ("error_invalid_api_call.json", "soft_error", False),
        ("error_apikey_invalid_or_missing.json", "auth", False),
        ("empty_object_no_data.json", "not_found", False),
    ],
)
@pytest.mark.parametrize("datatype", ["json", "csv"])
async def test_recorded_soft_errors_are_errors_not_data(
    fake, make_client, fixture, kind, retryable, datatype
):
    need_fixtures()
    client = await make_client(datatype=datatype, max_attempts=2, breaker_failure_threshold=10)
    body = fixture_text("alphavantage", fixture)
    fake.faults.respond_next(body, n=2)
    res = await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["IBM"]
    assert (err.kind, err.retryable) == (kind, retryable)
    assert fake.count == (2 if retryable else 1)
    assert res.frame.empty


async def test_throttle_note_is_retried_then_data(fake, make_client):
    client = await make_client()
    fake.faults.throttle(1)  # a Note, HTTP 200
    df = one(await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6)), "AAA")
    assert len(df) == 4 and fake.count == 2
    assert client.status()["last_error"]["kind"] == "soft_error"


# ----------------------------------------------------------------------------- the key


async def test_key_from_the_environment_and_required(fake, monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)
    with pytest.raises(ConfigError, match=ENV_KEY):
        await AlphaVantageClient(base_url=fake.url).start()
    monkeypatch.setenv(ENV_KEY, KEY)
    client = AlphaVantageClient(base_url=fake.url, clock=lambda: fake.book.now)
    await client.start()
    try:
        res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
        assert len(one(res, "AAA")) == 4
        cfg = client.caller.config
        assert (cfg.per_minute, cfg.per_day) == (5.0, 500)  # the specification's budget
        assert KEY not in repr(client)
    finally:
        await client.stop()


async def test_key_never_in_logs_exceptions_or_cache_keys(fake, make_client, redis_url):
    cache = ResponseCache.from_url(redis_url, ttl_s=60)
    await cache.start()
    try:
        client = await make_client(cache=cache, max_attempts=2)
        with capture_logs() as logs:
            # An error body that quotes the request URL with the key, twice (5xx, retried).
            leak = f"upstream failed for /query?function=X&apikey={KEY}&symbol=AAA key {KEY}"
            fake.faults.respond_next(leak, status=500, content_type="text/plain", n=2)
            res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
            err = res.errors["AAA"]
            assert err.kind == "http_5xx"
            assert KEY not in str(err) and KEY not in err.message and "apikey=***" in str(err)
            # A closed window that gets cached.
            res = await client.fetch(["BBB"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
            assert len(one(res, "BBB")) == 4
        assert logs, "failures are logged"
        assert KEY not in repr(logs)
        assert KEY not in repr(client.status())
        keys = [k async for k in cache.primary._client.scan_iter("tradingd:md:alphavantage:*")]
        assert keys, "the closed window was cached"
        assert all(KEY.encode() not in k for k in keys)
        assert KEY.encode() not in b"".join(keys)
        for k in keys:
            await cache.primary._client.delete(k)
    finally:
        await cache.stop()


# ----------------------------------------------------------------------------- synthetic


async def test_daily_budget_fails_fast_and_names_it(fake, make_client):
    client = await make_client(per_day=3, max_concurrency=1)
    res = await client.fetch(["A", "B", "C", "D"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert set(res.errors) == {"D"}
    assert res.errors["D"].kind == "budget" and "per_day" in res.errors["D"].message
    assert fake.count == 3


async def test_in_progress_daily_bar_is_not_served(fake, make_client):
    fake.book.now = utc(2024, 3, 6, 18, 0)  # 13:00 New York: today's bar is partial
    client = await make_client()
    df = one(await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6)), "AAA")
    assert df["time"].iloc[-1] == pd.Timestamp("2024-03-05")


async def test_intraday_is_raw_across_a_split(fake, make_client):
    book = fake.book
    book.add_split("SPL", date(2024, 3, 6), 2.0)
    client = await make_client()
    df = one(
        await client.fetch(["SPL"], "30m", utc(2024, 3, 5, 14, 30), utc(2024, 3, 6, 20, 30)), "SPL"
    )
    bars = [b for b in book.intraday("SPL", 30, utc(2024, 3, 5, 14, 30), utc(2024, 3, 6, 21))]
    assert list(df["time"]) == [pd.Timestamp(b.start.replace(tzinfo=None)) for b in bars]
    assert df["close"].to_numpy() == pytest.approx([b.close for b in bars], abs=1e-4)
    # Raw: the price halves across the split (the vendor's adjusted view would not jump).
    day5 = df[df["time"] < pd.Timestamp("2024-03-06")]["close"].iloc[-1]
    day6 = df[df["time"] >= pd.Timestamp("2024-03-06")]["close"].iloc[0]
    assert day6 / day5 == pytest.approx(0.5, rel=0.05)


async def test_malformed_and_down_then_recovers(fake, make_client):
    client = await make_client(max_attempts=2, breaker_failure_threshold=50)
    fake.faults.malformed_next(2)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors["AAA"].kind == "malformed"
    fake.faults.down(2)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors["AAA"].kind == "http_5xx"
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert len(one(res, "AAA")) == 4


async def test_empty_series_is_no_bars(fake, make_client):
    client = await make_client()
    fake.faults.empty_next(1)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors == {} and res.frame.empty


async def test_unknown_symbol_is_an_error_message(fake, make_client):
    client = await make_client()
    res = await client.fetch(["NOPE", "AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors["NOPE"].kind == "soft_error"
    assert "Invalid API call" in res.errors["NOPE"].message
    assert len(one(res, "AAA")) == 4


@pytest.mark.parametrize("adjusted", [False, True])
async def test_unadjusted_daily_bars_say_splits_are_not_booked(fake, make_client, adjusted):
    """With the default adjusted = false (the only mode of a free key) a 4-for-1 was served as
    a 75% one-day loss with split 1.0 on every bar and nothing said: the client filled in
    split 1.0 and dividend 0.0, so validation never saw that the answer has no such columns."""
    fake.book.add_split("AAA", date(2024, 3, 4), 4.0)
    with capture_logs() as logs:
        client = await make_client(adjusted=adjusted)
    started = [e for e in logs if e["event"] == "feed.no_corporate_actions"]
    with capture_logs() as logs:
        df = one(await client.fetch(["AAA"], "1d", utc(2024, 2, 27), utc(2024, 3, 6)), "AAA")
    suspects = {e["kind"]: e for e in logs if e["event"] == "data.suspect"}
    ex = df[df["time"] == pd.Timestamp("2024-03-04")].index[0]
    # The raw close falls to about a quarter of the previous one, split booked or not.
    assert df["close"][ex] / df["close"][ex - 1] == pytest.approx(0.25, rel=0.05)
    if adjusted:
        assert not started and not suspects and df["split"][ex] == 4.0
        return
    (said,) = started
    assert said["log_level"] == "warning" and "adjusted = true" in said["rule"]
    # Said once, when the client starts; not again for every symbol of every answer.
    assert set(suspects) == {"split_like_jump"}
    (jump,) = suspects["split_like_jump"]["examples"]
    assert (jump["symbol"], jump["time"]) == ("AAA", "2024-03-04")


async def test_a_soft_error_quoting_the_key_is_redacted(fake, make_client, monkeypatch):
    """Alpha Vantage's daily-limit Information quotes the key in an HTTP 200 body ("We have
    detected your API key as <KEY> ..."): `soft_error` put it verbatim into the SourceError,
    `FetchResult.errors` and the collector's `errors` (the HTTP-error and parse-error paths
    redacted; this one did not)."""
    from tradingd.feeds.alphavantage import parse_body, soft_error
    from tradingd.feeds.collector import MarketDataCollector

    said = (
        f"We have detected your API key as {KEY} and our standard API rate limit is 25 "
        "requests per day. Please subscribe to any of the premium plans at "
        "https://www.alphavantage.co/premium/ to instantly remove all daily rate limits."
    )
    client = await make_client(max_attempts=1)
    with capture_logs() as logs:
        fake.faults.respond_next({"Information": said}, n=2)
        res = await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
        err = res.errors["IBM"]
        assert err.kind == "soft_error" and "25 requests per day" in err.message
        assert "API key as ***" in err.message
        assert KEY not in err.message and KEY not in str(err) and KEY not in repr(res.errors)
        async with MarketDataCollector(alphavantage=client) as mdc:
            await mdc.get_multiple_symbols_data(["IBM"], source="alphavantage")
            assert "IBM" in mdc.errors
            assert KEY not in repr(mdc.errors) and KEY not in str(mdc.errors["IBM"])
    assert logs and KEY not in repr(logs)
    assert KEY not in repr(client.status())
    # Without the key registered (a parser's caller, a cached body of another key).
    assert KEY not in str(soft_error({"Information": said}, "IBM"))
    with pytest.raises(Exception) as raised:
        parse_body(json.dumps({"Information": said}), "IBM")
    assert KEY not in str(raised.value)
    # The invalid-key Error Message has no key in it: nothing of it is masked.
    text = "the parameter apikey is invalid or missing."
    assert "apikey is invalid" in soft_error({"Error Message": text}).message


DAYS = ("2024-03-06", "2024-03-05", "2024-03-04", "2024-03-01")  # newest first, as the vendor


def adjusted_body(datatype: str, day: str, field: str, value: str | None) -> str:
    """A TIME_SERIES_DAILY_ADJUSTED answer whose `field` on `day` is `value` (None: absent
    from the JSON row, an empty CSV cell)."""
    names = ("open", "high", "low", "close", "adjusted close", "volume")
    names += ("dividend amount", "split coefficient")
    rows = {}
    for i, d in enumerate(DAYS):
        c = 100.0 - i
        values = [c, c + 1, c - 1, c, c, 1000, 0.0, 1.0]
        row = {f"{k + 1}. {n}": str(v) for k, (n, v) in enumerate(zip(names, values, strict=True))}
        if d == day:
            key = next(k for k in row if k.endswith(field))
            if value is None:
                del row[key]
            else:
                row[key] = value
        rows[d] = row
    if datatype == "json":
        meta = {"2. Symbol": "IBM", "5. Time Zone": "US/Eastern"}
        return json.dumps({"Meta Data": meta, "Time Series (Daily)": rows})
    header = ["timestamp", *(n.replace(" ", "_") for n in names)]
    lines = [",".join(header)]
    for d, row in rows.items():
        cells = [row.get(f"{k + 1}. {n}", "") for k, n in enumerate(names)]
        lines.append(",".join([d, *cells]))
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("datatype", ["json", "csv"])
@pytest.mark.parametrize(
    ("field", "value", "default"),
    [("split coefficient", "N/A", "1.0"), ("dividend amount", "abc", "0.0")],
)
async def test_an_unreadable_split_or_dividend_refuses_the_answer(
    fake, make_client, datatype, field, value, default
):
    """A split coefficient or dividend amount present but not a number ("N/A") became split
    1.0 / dividend 0.0 with a debug line (`pd.to_numeric(errors="coerce")`, then
    validation's default for a missing value): a 2:1 split lost so, and the book held the
    wrong number of shares. It refuses the symbol's answer now (`malformed`), naming the
    field and the date, as Yahoo's client does for an unreadable split."""
    body = adjusted_body(datatype, "2024-03-04", field, value)
    ctype = "text/csv" if datatype == "csv" else "application/json"
    fake.faults.respond_next(body, content_type=ctype)
    client = await make_client(datatype=datatype, adjusted=True, max_attempts=1)
    res = await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["IBM"]
    assert err.kind == "malformed" and err.symbol == "IBM" and res.frame.empty
    assert field in err.message and repr(value) in err.message and "2024-03-04" in err.message
    assert f"not read as {default}" in err.message


@pytest.mark.parametrize("datatype", ["json", "csv"])
async def test_an_absent_split_field_is_the_default(fake, make_client, datatype):
    fake.faults.respond_next(
        adjusted_body(datatype, "2024-03-04", "split coefficient", None),
        content_type="text/csv" if datatype == "csv" else "application/json",
    )
    client = await make_client(datatype=datatype, adjusted=True)
    df = one(await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6)), "IBM")
    assert len(df) == 4 and (df["split"] == 1.0).all() and (df["dividend"] == 0.0).all()


async def test_an_invalid_key_is_auth_and_stops_a_feed_at_its_first_bar(fake, make_client):
    """ "the parameter apikey is invalid or missing" was a `soft_error`: a running feed asked
    again at every bar (a RetryableError each), for as long as the daemon ran. It is kind
    `auth` now, which a feed stops on (FatalError), as on Alpaca's 401, naming the variable."""
    from tradingd.core.errors import FatalError
    from tradingd.feeds.vendor import VendorFeed

    client = await make_client(api_key="not-the-key", max_attempts=3)
    res = await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["IBM"]
    assert (err.kind, err.retryable) == ("auth", False) and ENV_KEY in err.message
    assert fake.count == 1  # not retried
    feed = VendorFeed(client, ["IBM", "AAA"], "1d", clock=lambda: NOW)
    with pytest.raises(FatalError, match=f"auth.*{ENV_KEY}.*check the credentials"):
        await feed.bars(utc(2024, 3, 6))


async def test_a_time_series_row_that_is_not_an_object_is_malformed(fake, make_client):
    """A row that is a string raised AttributeError in pandas: reported as a bug of ours
    (`internal`, at error level with a traceback). It is `malformed` (retried), naming the
    row."""
    body = json.loads(adjusted_body("json", "2024-03-04", "split coefficient", "1.0"))
    body["Time Series (Daily)"]["2024-03-04"] = "oops"
    fake.faults.respond_next(body)
    client = await make_client(adjusted=True, max_attempts=1)
    with capture_logs() as logs:
        res = await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["IBM"]
    assert err.kind == "malformed" and err.retryable
    assert "row 2024-03-04 is 'oops', not an object" in err.message
    assert not [e for e in logs if e["event"] == "source.internal_error"]


@pytest.mark.parametrize("status", [200, 502])
async def test_a_body_that_is_not_utf8_is_a_malformed_answer(fake, make_client, status):
    """An answer with a byte that is not UTF-8 raised a bare UnicodeDecodeError out of the
    client, which the collector took for a bug of ours (`source.internal_error`, with a
    traceback). It is a `malformed` answer, retried as one, naming the status."""
    fake.faults.respond_next(b'{"Meta Data": "\xff\xfe"}', status=status, n=2)
    client = await make_client(max_attempts=2)
    res = await client.fetch(["IBM"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["IBM"]
    assert (err.kind, err.status, err.retryable) == ("malformed", status, True)
    assert f"HTTP {status}" in err.message and "UnicodeDecodeError" in err.message
    assert fake.count == 2  # retried
