"""The Yahoo client against a loopback Yahoo (recorded fixtures and synthetic bars)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from fakes import BarBook, fixture_json, need_fixtures
from fakes.yahoo_server import YahooFake, day_epoch
from structlog.testing import capture_logs

from tradingd.core.errors import RetryableError
from tradingd.feeds.resilience import ResilientCaller, SourceConfig, SourceError
from tradingd.feeds.response_cache import ResponseCache
from tradingd.feeds.vendor import Session, VendorFeed, parse_interval
from tradingd.feeds.yahoo import YahooClient, chunk_windows

NOW = datetime(2024, 3, 6, 22, 0, tzinfo=UTC)  # a Wednesday, after the close (21:00 UTC)
AAPL_2020 = "chart_AAPL_1d_2020-08-31_to_2020-11-07_div_split.json"


async def no_sleep(_: float) -> None:
    return None


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
async def fake():
    async with YahooFake(BarBook(now=NOW)) as server:
        yield server


@pytest.fixture
async def make_client(fake):
    clients: list[YahooClient] = []

    async def make(session: Session | None = None, **cfg) -> YahooClient:
        cfg = {"max_attempts": 3, "backoff_base_s": 0.0, "timeout_s": 2.0, **cfg}
        caller = ResilientCaller("yahoo", SourceConfig(**cfg), sleep=no_sleep)
        client = YahooClient(
            base_url=fake.url, caller=caller, session=session, clock=lambda: fake.book.now
        )
        await client.start()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.stop()


def chart_body(
    symbol: str,
    closes: dict[date, float | None],
    *,
    splits: dict[str, dict] | None = None,
    dividends: dict[str, dict] | None = None,
) -> dict:
    """A daily New York chart answer with Yahoo's (split-adjusted) closes; `None` is a
    day without trade data (every OHLCV value null, as Yahoo sends it)."""
    days = sorted(closes)
    q: dict[str, list] = {k: [] for k in ("open", "high", "low", "close", "volume")}
    for d in days:
        c = closes[d]
        for k, v in (
            ("open", c),
            ("high", None if c is None else round(c * 1.01, 4)),
            ("low", None if c is None else round(c * 0.99, 4)),
            ("close", c),
            ("volume", None if c is None else 1_000_000),
        ):
            q[k].append(v)
    result: dict = {
        "meta": {"symbol": symbol, "exchangeTimezoneName": "America/New_York", "priceHint": 2},
        "timestamp": [day_epoch(d) for d in days],
        "indicators": {"quote": [q]},
    }
    events = {k: v for k, v in (("splits", splits), ("dividends", dividends)) if v}
    if events:
        result["events"] = events
    return {"chart": {"result": [result], "error": None}}


def split_on(day: date, num: float, den: float = 1) -> dict[str, dict]:
    t = day_epoch(day)
    return {str(t): {"date": t, "numerator": num, "denominator": den, "splitRatio": f"{num}:{den}"}}


def dividend_on(day: date, amount: float) -> dict[str, dict]:
    t = day_epoch(day)
    return {str(t): {"date": t, "amount": amount}}


def one(result, symbol):
    assert symbol not in result.errors, result.errors
    return result.for_symbol(symbol)


# ----------------------------------------------------------------------------- recorded


async def test_recorded_aapl_daily_with_split_and_dividend(fake, make_client):
    need_fixtures()
    fake.serve_recorded("AAPL", AAPL_2020)
    client = await make_client()
    res = await client.fetch(["AAPL"], "1d", utc(2020, 8, 31), utc(2020, 11, 6))
    df = one(res, "AAPL")
    assert list(df.columns) == [
        "time",
        "symbol",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "split",
        "dividend",
    ]
    assert len(df) == 49
    first = df.iloc[0]
    # Labelled by the session date at 00:00 (Yahoo stamps 13:30 UTC, the New York open).
    assert first["time"] == pd.Timestamp("2020-08-31")
    assert first["close"] == pytest.approx(129.0399932861328)
    assert first["volume"] == 225702700
    assert first["split"] == 4.0
    div = df[df["dividend"] > 0]
    assert list(div["time"]) == [pd.Timestamp("2020-11-06")]
    assert div["dividend"].iloc[0] == pytest.approx(0.205)
    assert (df["split"] != 1.0).sum() == 1

    req = fake.requests[0]
    assert req.path == "/v8/finance/chart/AAPL"
    assert req.query["interval"] == "1d" and "split" in req.query["events"]
    assert int(req.query["period1"]) <= int(utc(2020, 8, 31).timestamp())
    assert req.headers["User-Agent"].startswith("Mozilla/5.0")


async def test_bars_before_a_split_come_out_raw(fake, make_client):
    """Yahoo's closes before a split are split-adjusted; the client multiplies them back."""
    need_fixtures()
    body = fixture_json("yahoo", AAPL_2020)
    r = body["chart"]["result"][0]
    # 2020-08-28 as Yahoo shows it today (adjusted; raw: O 504.05 H 505.77 L 498.31 C 499.23,
    # volume 46,907,479; chartPreviousClose of the fixture is 124.808).
    r["timestamp"].insert(0, 1598621400)
    q = r["indicators"]["quote"][0]
    for k, v in (
        ("open", 126.0125),
        ("high", 126.4425),
        ("low", 124.5775),
        ("close", 124.8075),
        ("volume", 187629916),
    ):
        q[k].insert(0, v)
    r["indicators"]["adjclose"][0]["adjclose"].insert(0, 121.69)
    fake.faults.respond_next(body)
    client = await make_client()
    df = one(await client.fetch(["AAPL"], "1d", utc(2020, 8, 28), utc(2020, 11, 6)), "AAPL")
    pre, split_day = df.iloc[0], df.iloc[1]
    assert pre["time"] == pd.Timestamp("2020-08-28")
    assert pre["close"] == pytest.approx(499.23)
    assert pre["close"] == pytest.approx(4 * 124.8075)
    assert (pre["open"], pre["high"], pre["low"]) == pytest.approx((504.05, 505.77, 498.31))
    assert pre["volume"] == 46907479
    assert pre["split"] == 1.0
    assert split_day["time"] == pd.Timestamp("2020-08-31") and split_day["split"] == 4.0
    assert split_day["close"] == pytest.approx(129.04, abs=1e-4)  # after the split: unchanged


async def test_recorded_6309T_three_for_one_split_unadjusted(fake, make_client):
    need_fixtures()
    fake.serve_recorded("6309.T", "chart_6309.T_1d_range1mo_div_split.json")
    tokyo = Session(timezone="Asia/Tokyo", close="15:30")
    client = await make_client(session=tokyo)
    after_close = utc(2025, 5, 19, 6, 31)
    df = one(
        await client.fetch(["6309.T"], "1d", utc(2025, 4, 21), utc(2025, 5, 19), now=after_close),
        "6309.T",
    )
    assert df["time"].iloc[0] == pd.Timestamp("2025-04-21")  # Tokyo session dates
    pre = df[df["time"] < pd.Timestamp("2025-04-28")]
    assert len(pre) == 5
    assert pre["close"].iloc[0] == pytest.approx(4285.0)  # 1428.33 x 3
    assert pre["volume"].iloc[0] == pytest.approx(49900)  # 149700 / 3
    ex = df[df["time"] == pd.Timestamp("2025-04-28")].iloc[0]
    assert ex["split"] == 3.0 and ex["dividend"] == pytest.approx(73.0)
    assert ex["close"] == pytest.approx(1378.0)
    assert df["time"].iloc[-1] == pd.Timestamp("2025-05-19")

    # Before the session's close (06:30 UTC, from currentTradingPeriod) its bar is not served.
    df = one(
        await client.fetch(
            ["6309.T"], "1d", utc(2025, 4, 21), utc(2025, 5, 19), now=utc(2025, 5, 19, 6, 29)
        ),
        "6309.T",
    )
    assert df["time"].iloc[-1] == pd.Timestamp("2025-05-16")


async def test_recorded_intraday_in_progress_bar_is_never_served(fake, make_client):
    need_fixtures()
    fake.serve_recorded("AAPL", "chart_AAPL_5m_range1d_midsession.json")
    client = await make_client()
    rmt = datetime.fromtimestamp(1791208707, UTC)  # regularMarketTime, 13:58:27 UTC
    start, end = utc(2026, 10, 5, 13, 30), utc(2026, 10, 5, 13, 55)
    df = one(await client.fetch(["AAPL"], "5m", start, end, now=rmt), "AAPL")
    # Labelled by bar start in UTC; the 13:55 bar closes at 14:00, the 13:58:27 pseudo bar
    # (volume 0, O=H=L=C) is the live price, never a bar.
    assert list(df["time"]) == [pd.Timestamp(f"2026-10-05 13:{m}") for m in (30, 35, 40, 45, 50)]
    assert df["close"].iloc[0] == pytest.approx(336.0736083984375)
    df = one(await client.fetch(["AAPL"], "5m", start, end, now=utc(2026, 10, 5, 14, 0)), "AAPL")
    assert df["time"].iloc[-1] == pd.Timestamp("2026-10-05 13:55")
    assert (df["volume"] > 0).all()


async def test_recorded_null_bars_are_skipped(fake, make_client):
    need_fixtures()
    fake.serve_recorded("7203.T", "chart_7203.T_5m_range1d_null_bars.json")
    client = await make_client()
    df = one(
        await client.fetch(
            ["7203.T"], "5m", utc(2026, 10, 5), utc(2026, 10, 5, 6, 30), now=utc(2026, 10, 6)
        ),
        "7203.T",
    )
    assert len(df) == 5  # 10 stamps: 4 null (lunch break), 1 closing pseudo bar (volume 0)
    assert df[["open", "high", "low", "close", "volume"]].notna().all().all()
    assert df["time"].iloc[-1] == pd.Timestamp("2026-10-05 06:20")


async def test_recorded_weekend_window_is_empty_not_an_error(fake, make_client):
    need_fixtures()
    fake.serve_recorded("AAPL", "chart_AAPL_1m_weekend_no_bars.json")
    client = await make_client()
    res = await client.fetch(["AAPL"], "1m", utc(2025, 2, 1), utc(2025, 2, 1, 23, 59))
    assert res.errors == {}
    assert res.frame.empty


async def test_recorded_error_bodies(fake, make_client):
    need_fixtures()
    client = await make_client()
    for name, status, kind in (
        ("chart_unknown_symbol_404.json", 404, "not_found"),
        ("chart_5m_range_too_old_422.json", 422, "http_4xx"),
        ("chart_invalid_interval_400.json", 400, "http_4xx"),
    ):
        fake.reset_stats()
        fake.faults.respond_next(fixture_json("yahoo", name), status=status)
        res = await client.fetch(["AAPL"], "1d", NOW - timedelta(days=5), utc(2024, 3, 6))
        err = res.errors["AAPL"]
        assert (err.kind, err.status) == (kind, status)
        assert fake.count == 1  # not retried
    assert (
        "within the last 60 days"
        in fixture_json("yahoo", "chart_5m_range_too_old_422.json")["chart"]["error"]["description"]
    )


# ----------------------------------------------------------------------------- synthetic


async def test_synthetic_split_and_dividend_raw_like_stored_data(fake, make_client):
    book = fake.book
    book.add_split("XYZ", date(2024, 3, 4), 4.0)
    book.add_dividend("XYZ", date(2024, 3, 5), 0.5)
    client = await make_client()
    df = one(await client.fetch(["XYZ"], "1d", utc(2024, 2, 26), utc(2024, 3, 6)), "XYZ")
    expected = book.daily("XYZ", date(2024, 2, 26), date(2024, 3, 6))
    assert list(df["time"]) == [pd.Timestamp(b.day) for b in expected]
    assert df["close"].to_numpy() == pytest.approx([b.close for b in expected], abs=0.011)
    assert df["volume"].to_numpy() == pytest.approx([b.volume for b in expected], abs=1)
    assert df.set_index("time")["split"].to_dict()[pd.Timestamp("2024-03-04")] == 4.0
    assert df.set_index("time")["dividend"].to_dict()[pd.Timestamp("2024-03-05")] == 0.5
    assert (df["split"] != 1).sum() == 1 and (df["dividend"] != 0).sum() == 1


async def test_old_window_is_unadjusted_for_splits_after_it(fake, make_client):
    """Yahoo adjusts old bars for splits up to today: a window that ends before a split must
    still come out raw (the client asks for the later split events)."""
    book = fake.book
    book.add_split("OLD", date(2024, 3, 4), 2.0)
    client = await make_client()
    df = one(await client.fetch(["OLD"], "1d", utc(2024, 2, 12), utc(2024, 2, 23)), "OLD")
    expected = book.daily("OLD", date(2024, 2, 12), date(2024, 2, 23))
    assert df["close"].to_numpy() == pytest.approx([b.close for b in expected], abs=0.011)
    assert (df["split"] == 1.0).all()
    assert any(r.query.get("events") == "split" for r in fake.requests)


async def test_in_progress_daily_bar_waits_for_the_close(fake, make_client):
    book = fake.book
    book.now = utc(2024, 3, 6, 18, 0)  # 13:00 New York
    client = await make_client()
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert one(res, "AAA")["time"].iloc[-1] == pd.Timestamp("2024-03-05")
    book.now = utc(2024, 3, 6, 21, 1)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert one(res, "AAA")["time"].iloc[-1] == pd.Timestamp("2024-03-06")


async def test_a_daily_bar_yahoo_shows_trading_is_not_closed_by_a_fast_local_clock(fake):
    """The machine's clock 20 minutes ahead (21:10 UTC, Yahoo at 20:50, the close at 21:00):
    the session's bar, stamped with its last trade, was taken for the closed one (traded
    on, then restated at the next bar), with no word of the clock."""
    book = fake.book
    book.now = utc(2024, 3, 6, 20, 50)
    ahead = timedelta(minutes=20)
    caller = ResilientCaller("yahoo", SourceConfig(backoff_base_s=0.0), sleep=no_sleep)
    client = YahooClient(base_url=fake.url, caller=caller, clock=lambda: book.now + ahead)
    feed = VendorFeed(
        client, ["AAA", "BBB"], "1d", clock=lambda: book.now + ahead, is_session=lambda t: True
    )
    label = utc(2024, 3, 6)
    await feed.start()
    try:
        with capture_logs() as logs, pytest.raises(RetryableError, match="no bar yet"):
            await feed.bars(label)  # pending, asked again
        [said] = [e for e in logs if e["event"] == "yahoo.clock_ahead"]  # once, not a symbol
        assert said["log_level"] == "warning" and said["session"] == "2024-03-06"
        assert (said["ahead_s_at_least"], said["ahead_s_at_most"]) == (600.0, 1200.0)
        assert said["vendor_last_trade"] == "2024-03-06T20:50:00+00:00"
        book.now = utc(2024, 3, 6, 21, 0)  # Yahoo's session closed
        bar = await feed.bars(label)
        assert bar is not None
        finals = [book.daily(s, date(2024, 3, 6), date(2024, 3, 6))[0] for s in ("AAA", "BBB")]
        assert list(bar.close) == pytest.approx([f.close for f in finals], abs=0.011)
        assert list(bar.volume) == [f.volume for f in finals]
    finally:
        await feed.stop()


async def test_a_recorded_closed_daily_bar_is_served_however_its_last_trade_is_stamped(
    fake, make_client
):
    """Recorded after the close: 6309.T's last bar stamped with its last trade (at the
    close), 1301.T's at the open with a last trade after the close: both closed."""
    need_fixtures()
    for symbol, fixture, day in (
        ("6309.T", "chart_6309.T_1d_range1mo_div_split.json", "2025-05-19"),
        ("1301.T", "chart_1301.T_1d_range1mo.json", "2024-12-06"),
    ):
        fake.serve_recorded(symbol, fixture)
        fake.book.now = utc(*map(int, day.split("-")), 7, 0)  # 16:00 Tokyo
        client = await make_client(Session(timezone="Asia/Tokyo"))
        with capture_logs() as logs:
            res = await client.fetch([symbol], "1d", utc(2024, 11, 1), fake.book.now)
        assert one(res, symbol)["time"].iloc[-1] == pd.Timestamp(day)
        assert not [e for e in logs if e["event"] == "yahoo.clock_ahead"]


async def test_unknown_symbol_fails_alone(fake, make_client):
    client = await make_client()
    res = await client.fetch(["AAA", "NOPE", "BBB"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert set(res.errors) == {"NOPE"}
    assert res.errors["NOPE"].kind == "not_found"
    assert set(res.frame["symbol"]) == {"AAA", "BBB"}
    assert sum(1 for r in fake.requests if r.path.endswith("/NOPE")) == 1


async def test_too_old_intraday_window_is_a_422_not_retried(fake, make_client):
    client = await make_client()
    res = await client.fetch(["AAA"], "5m", NOW - timedelta(days=100), NOW - timedelta(days=99))
    err = res.errors["AAA"]
    assert (err.kind, err.status) == ("http_4xx", 422)
    assert "60 days" in err.message
    assert fake.count == 1


def chart_windows(fake) -> list[tuple[datetime, datetime]]:
    """(period1, period2) of each chart request the fake had, in order."""
    return [
        (
            datetime.fromtimestamp(int(r.query["period1"]), UTC),
            datetime.fromtimestamp(int(r.query["period2"]), UTC),
        )
        for r in fake.requests
        if "period1" in r.query
    ]


def test_chunk_windows_stay_within_the_span_and_share_one_bar():
    m1, m5 = parse_interval("1m"), parse_interval("5m")
    week = 7 * 86400
    assert chunk_windows(0, week, m1) == [(0, week)]  # exactly 7 days: one request
    assert chunk_windows(0, week + 1, m1) == [(0, week), (week - 60, week + 1)]
    windows = chunk_windows(0, 30 * 86400, m1)
    assert all(0 < hi - lo <= week for lo, hi in windows)
    assert windows[0][0] == 0 and windows[-1][1] == 30 * 86400
    assert all(b[0] == a[1] - 60 for a, b in pairwise(windows))
    assert chunk_windows(0, 50 * 86400, m5) == [(0, 50 * 86400)]  # 5m: no span of its own


async def test_a_1m_window_over_7_days_is_asked_for_in_chunks_and_stitched(fake, make_client):
    """Yahoo answers a request for more than 7 days of 1m bars with a 422 ("Only 7 days worth
    of 1m granularity data are allowed to be fetched per request"), even within the 30 days
    it keeps: a warm-up or catch-up of more than 7 days of minute bars was refused for good,
    with advice that did not name the limit. The window is now asked for in chunks of 7
    days at most, consecutive ones sharing a bar, and the answers stitched: every bar once."""
    client = await make_client()
    start, end = utc(2024, 2, 26, 15, 0), utc(2024, 3, 6, 20, 59)  # 10:00 NY Monday .. close
    res = await client.fetch(["AAA"], "1m", start, end)
    df = one(res, "AAA")
    windows = chart_windows(fake)
    assert len(windows) == 2
    assert all(p2 - p1 <= timedelta(days=7) for p1, p2 in windows)
    (_, seam_end), (seam_start, _) = windows
    assert seam_start < seam_end  # the seam's bar (Monday 14:59 UTC) was asked for twice
    seam = pd.Timestamp(seam_start.replace(tzinfo=None))
    assert (df["time"] == seam).sum() == 1
    assert df["time"].is_unique and df["time"].is_monotonic_increasing
    # Monday from 10:00 New York, six whole sessions, and Wednesday's to the close.
    assert len(df) == 360 + 6 * 390 + 390
    assert df["time"].iloc[0] == pd.Timestamp("2024-02-26 15:00")
    assert df["time"].iloc[-1] == pd.Timestamp("2024-03-06 20:59")


async def test_a_split_in_a_later_chunk_unadjusts_the_earlier_chunks_bars(fake, make_client):
    """Each chunk's answer is split-adjusted to today, but only the chunk holding the split
    carries its event: the stitched answer has all events, so every chunk's bars come out
    raw, and the split sits once on its ex-date's first bar."""
    fake.book.add_split("AAA", date(2024, 3, 5), 2.0)
    client = await make_client()
    df = one(
        await client.fetch(["AAA"], "1m", utc(2024, 2, 26, 15), utc(2024, 3, 6, 20, 59)), "AAA"
    )
    assert len(chart_windows(fake)) == 2
    assert df.loc[df["split"] != 1.0, ["time", "split"]].values.tolist() == [
        [pd.Timestamp("2024-03-05 14:30"), 2.0]
    ]
    for t in (utc(2024, 2, 26, 15), utc(2024, 3, 4, 14, 59), utc(2024, 3, 5, 14, 30)):
        row = df[df["time"] == pd.Timestamp(t.replace(tzinfo=None))].iloc[0]
        assert row["open"] == pytest.approx(fake.book.raw("AAA", t, t.date()), abs=0.011)


async def test_a_warm_up_of_more_than_7_days_of_1m_bars_is_served(fake, make_client):
    """The feed's warm-up (`VendorFeed.history`) over 8 sessions of 1m bars: it raised
    FatalError ("asking again cannot help"), the daemon stopping at its warm-up."""
    client = await make_client()
    feed = VendorFeed(client, ["AAA", "BBB"], "1m", clock=lambda: fake.book.now)
    hist = await feed.history(utc(2024, 2, 26, 14, 30), utc(2024, 3, 6, 20, 59))
    assert hist.symbols == ("AAA", "BBB")
    assert len(hist.times) == 8 * 390 and len(set(hist.times.tolist())) == 8 * 390
    assert np.isfinite(hist.close).all()


async def test_a_1m_window_older_than_30_days_is_still_the_clear_422(fake, make_client):
    """Chunks do not hide Yahoo's other limit: 1m bars are kept 30 days. The oldest chunk is
    asked for first, its 422 names the limit, and the later chunks are not asked for."""
    client = await make_client()
    res = await client.fetch(["AAA"], "1m", NOW - timedelta(days=40), NOW - timedelta(days=20))
    err = res.errors["AAA"]
    assert (err.kind, err.status) == ("http_4xx", 422)
    assert "within the last 30 days" in err.message
    assert fake.count == 1


CRUMB = '{"chart":{"result":null,"error":{"code":"Unauthorized","description":"Invalid Crumb"}}}'


@pytest.mark.parametrize("status", [401, 403])
async def test_401_or_403_is_yahoos_gate_retried_and_counted_by_the_breaker(
    fake, make_client, status
):
    """Yahoo has no credentials: a 401 'Invalid Crumb' or a 403 is its cookie-and-crumb gate
    (or a block of this address), nothing the operator's configuration can fix. It was kind
    `auth`: not retried, the breaker told the source was up, and a feed whose every symbol
    got it stopped the daemon ("check the credentials"). Now kind `blocked`: retried with
    backoff, counted by the breaker, which opens and spares the source meanwhile."""
    client = await make_client(max_attempts=3, breaker_failure_threshold=3)
    fake.faults.fail_next(3, status=status, body=CRUMB)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["AAA"]
    assert (err.kind, err.status, err.retryable) == ("blocked", status, True)
    assert "Invalid Crumb" in err.message
    assert fake.count == 3
    assert client.caller.breaker.state == "open"
    assert client.status()["ok"] is False


async def test_bad_interval_is_a_400(fake, make_client):
    client = await make_client()
    with pytest.raises(SourceError) as info:
        await client.chart("AAA", {"interval": "5h", "range": "1d"}, key=None, now=NOW)
    assert (info.value.kind, info.value.status) == ("http_4xx", 400)
    assert "5h is not supported" in info.value.message


async def test_a_redirect_names_where_it_points_and_is_not_followed(fake, make_client):
    """Yahoo answers an EU address with a 302 to its consent page. Redirects are not
    followed (a data API must not send us elsewhere); the error read "HTTP 302: (empty
    body)", naming neither where to nor what to check."""
    consent = "https://consent.yahoo.com/v2/collectConsent?sessionId=3_cc-session"
    fake.faults.respond_next(
        "", status=302, content_type="text/html", headers={"Location": consent}
    )
    client = await make_client()
    with pytest.raises(SourceError) as info:
        await client.chart("AAA", {"interval": "1d", "range": "5d"}, key=None, now=NOW)
    err = info.value
    assert (err.kind, err.status) == ("http_4xx", 302)
    assert consent in err.message and "not followed" in err.message
    assert fake.count == 1  # not retried, and the consent page was never asked


async def test_429_is_retried_then_succeeds(fake, make_client):
    client = await make_client(max_attempts=4)
    fake.faults.throttle(2)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert len(one(res, "AAA")) == 4
    assert fake.count == 3
    assert client.status()["last_error"]["kind"] == "http_429"
    assert client.status()["ok"] is True


async def test_timeout_then_success(fake, make_client):
    client = await make_client(timeout_s=0.2, max_attempts=2)
    fake.faults.delay_next(1, 0.6)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert len(one(res, "AAA")) == 4
    assert client.caller.last_error.kind == "timeout"


@pytest.mark.parametrize(
    ("inject", "kind"),
    [("malformed_next", "malformed"), ("down", "http_5xx"), ("reset_next", "connection")],
)
async def test_faults_exhausting_retries_are_reported_by_kind(fake, make_client, inject, kind):
    client = await make_client(max_attempts=2, breaker_failure_threshold=10)
    # aiohttp retries a request once by itself on a dropped pooled connection: enough faults.
    getattr(fake.faults, inject)(4 if inject == "reset_next" else 2)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors["AAA"].kind == kind
    assert res.errors["AAA"].retryable
    # The source recovers by itself.
    fake.faults.clear()
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert len(one(res, "AAA")) == 4


async def test_malformed_once_is_retried(fake, make_client):
    client = await make_client(max_attempts=2)
    fake.faults.malformed_next(1)
    assert len(one(await client.fetch(["A"], "1d", utc(2024, 3, 1), utc(2024, 3, 6)), "A")) == 4


async def test_empty_bar_list_and_null_bars(fake, make_client):
    client = await make_client()
    fake.faults.empty_next(1)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert res.errors == {} and res.frame.empty
    fake.faults.null_next(1)
    res = await client.fetch(["AAA"], "5m", utc(2024, 3, 6, 14, 30), utc(2024, 3, 6, 15, 30))
    assert len(one(res, "AAA")) == 12  # 13 bars, the null one skipped


async def test_fifty_symbols_with_bounded_concurrency(fake, make_client):
    client = await make_client(max_concurrency=4)
    fake.faults.hold_s = 0.02
    symbols = [f"S{i:02d}" for i in range(50)]
    res = await client.fetch(symbols, "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert res.errors == {}
    assert set(res.frame["symbol"]) == set(symbols)
    assert 2 <= fake.max_in_flight <= 4
    assert client.caller.max_in_flight <= 4


async def test_closed_windows_are_cached_open_ones_are_not(fake, make_client):
    client = await make_client()
    await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    n = fake.count
    again = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    assert fake.count == n and len(one(again, "AAA")) == 4
    fake.book.now = utc(2024, 3, 7, 15, 0)  # Thursday's session in progress
    await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 7))
    await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 7))
    assert fake.count == n + 2


async def test_cached_body_is_not_reparsed_with_a_later_clock(fake):
    """A cached answer only yields bars closed when it was fetched."""
    cache = ResponseCache()
    await cache.start()
    caller = ResilientCaller("yahoo", SourceConfig(backoff_base_s=0.0), sleep=no_sleep)
    client = YahooClient(base_url=fake.url, caller=caller, cache=cache)
    await client.start()
    try:
        fake.book.now = utc(2024, 3, 6, 20, 0)  # in session
        params = {"interval": "1d", "range": "5d", "events": "div|split"}
        result, fetched = await client.chart("AAA", params, key="k", now=fake.book.now)
        assert fetched == fake.book.now
        result2, fetched2 = await client.chart("AAA", params, key="k", now=utc(2024, 3, 9))
        assert fetched2 == fetched and fake.count == 1
        assert result2["timestamp"] == result["timestamp"]
    finally:
        await client.stop()
        await cache.stop()


async def test_collector_period_request_uses_range(fake, make_client):
    client = await make_client()
    res = await client.fetch_period(["AAA"], "5d", "1d")
    df = one(res, "AAA")
    assert df["time"].iloc[-1] == pd.Timestamp("2024-03-06")
    assert fake.requests[0].query["range"] == "5d"


async def test_answers_are_parsed_off_the_event_loop(fake, make_client, monkeypatch):
    """At 500 symbols the parse is a second or more of CPU a bar: on the loop it would
    stall the health server and the broker's updates for that long."""
    import threading

    import tradingd.feeds.yahoo as yahoo

    threads: list[int] = []
    parse = yahoo.parse_chart

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return parse(*args, **kwargs)

    monkeypatch.setattr(yahoo, "parse_chart", recording)
    client = await make_client()
    res = await client.fetch(["AAA", "BBB"], "1d", utc(2024, 3, 4), utc(2024, 3, 6))
    assert set(res.frame["symbol"]) == {"AAA", "BBB"}
    assert len(threads) == 2
    assert threading.get_ident() not in threads


# ---------------------------------------------------------- events on a day without bars

WEEK = [date(2024, 2, 26) + timedelta(days=i) for i in range(5)]  # Mon 26 .. Fri 1 March


def carried(logs: list[dict]) -> list[tuple]:
    return [
        (e["symbol"], e["action"], e["date"], e["bar"])
        for e in logs
        if e["event"] == "yahoo.event_carried"
    ]


async def test_split_and_dividend_on_a_null_bar_go_to_the_next_bar(fake, make_client):
    """Yahoo sends a day without trade data as a null bar: a 2:1 split and a dividend dated
    on it are put on the symbol's next bar (said), not lost while the split still
    un-adjusts the bars before it (a silent -50% in the book)."""
    wed, thu = WEEK[2], WEEK[3]
    fake.faults.respond_next(
        chart_body(
            "SPL",
            dict(zip(WEEK, [50.0, 50.5, None, 51.0, 51.5], strict=True)),
            splits=split_on(wed, 2),
            dividends=dividend_on(wed, 0.25),
        )
    )
    client = await make_client()
    with capture_logs() as logs:
        df = one(await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1)), "SPL")
    assert list(df["time"]) == [pd.Timestamp(d) for d in (*WEEK[:2], *WEEK[3:])]
    # Before the split: raw (Yahoo's adjusted x 2), as before.
    assert list(df["close"]) == pytest.approx([100.0, 101.0, 51.0, 51.5])
    assert list(df["volume"]) == [500_000, 500_000, 1_000_000, 1_000_000]
    assert list(df["split"]) == [1.0, 1.0, 2.0, 1.0]
    assert list(df["dividend"]) == pytest.approx([0.0, 0.0, 0.25, 0.0])
    assert sorted(carried(logs)) == [
        ("SPL", "dividend", "2024-02-28", thu.isoformat()),
        ("SPL", "split", "2024-02-28", thu.isoformat()),
    ]
    assert {e["log_level"] for e in logs if e["event"] == "yahoo.event_carried"} == {"warning"}


async def test_an_event_warning_is_said_once_not_at_every_answer_that_carries_it(fake, make_client):
    """Each answer whose window covers a carried split, a refused dividend or a pending
    event repeated its warning: at 5-minute bars, every bar of the session. A client says
    each once; the bars still carry the event every time."""
    wed, thu = WEEK[2], WEEK[3]
    body = chart_body(
        "SPL",
        dict(zip(WEEK, [50.0, 50.5, None, 51.0, 51.5], strict=True)),
        splits=split_on(wed, 2),
        dividends=dividend_on(wed, 0.25) | _without(dividend_on(WEEK[1], 0.5), "amount"),
    )
    client = await make_client()
    frames = []
    with capture_logs() as logs:
        for _ in range(3):
            fake.faults.respond_next(body)
            res = await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1))
            frames.append(one(res, "SPL"))
    assert sorted(carried(logs)) == [
        ("SPL", "dividend", "2024-02-28", thu.isoformat()),
        ("SPL", "split", "2024-02-28", thu.isoformat()),
    ]
    assert len([e for e in logs if e["event"] == "yahoo.dividend_refused"]) == 1
    for df in frames:
        assert list(df["split"]) == [1.0, 1.0, 2.0, 1.0]
        assert list(df["dividend"]) == pytest.approx([0.0, 0.0, 0.25, 0.0])


async def test_dividend_on_a_null_bar_before_a_split_is_restated_per_post_split_share(
    fake, make_client
):
    """A dividend carried onto a bar that splits is paid per post-split share (the engine
    splits first), as `suspect.carry_action` combines them: 0.50 a share on Tuesday is 0.25 a
    share of Wednesday's 2:1 split."""
    tue, wed = WEEK[1], WEEK[2]
    fake.faults.respond_next(
        chart_body(
            "SPL",
            dict(zip(WEEK, [50.0, None, 50.5, 51.0, 51.5], strict=True)),
            splits=split_on(wed, 2),
            dividends=dividend_on(tue, 0.25),  # Yahoo's amount is adjusted for the split too
        )
    )
    client = await make_client()
    with capture_logs() as logs:
        df = one(await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1)), "SPL")
    row = df.set_index("time").loc[pd.Timestamp(wed)]
    assert (row["split"], row["dividend"]) == (2.0, pytest.approx(0.25))
    assert df["close"].iloc[0] == pytest.approx(100.0)
    assert carried(logs) == [("SPL", "dividend", "2024-02-27", wed.isoformat())]


async def test_event_after_the_last_bar_waits_for_the_next_answer(fake, make_client):
    """A split dated on a null bar that ends the answer has no bar to go to yet: it is left
    out, said, and the next answer (whose window covers its date, so Yahoo sends the event
    again) puts it on the bar after it."""
    fri, mon = WEEK[4], date(2024, 3, 4)
    closes = dict(zip(WEEK, [50.0, 50.5, 51.0, 51.5, None], strict=True))
    fake.faults.respond_next(chart_body("SPL", closes, splits=split_on(fri, 2)))
    client = await make_client()
    with capture_logs() as logs:
        df = one(await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1)), "SPL")
    assert list(df["close"]) == pytest.approx([100.0, 101.0, 102.0, 103.0])
    assert (df["split"] == 1.0).all()
    [pending] = [e for e in logs if e["event"] == "yahoo.event_pending"]
    assert pending["log_level"] == "warning"
    assert (pending["symbol"], pending["action"], pending["date"]) == ("SPL", "split", "2024-03-01")
    assert pending["last_bar"] == "2024-02-29"

    fake.faults.respond_next(chart_body("SPL", closes | {mon: 52.0}, splits=split_on(fri, 2)))
    with capture_logs() as logs:
        df = one(await client.fetch(["SPL"], "1d", utc(2024, 2, 27), utc(2024, 3, 4)), "SPL")
    assert df.set_index("time")["split"].to_dict()[pd.Timestamp(mon)] == 2.0
    assert carried(logs) == [("SPL", "split", "2024-03-01", mon.isoformat())]


MAR = [date(2024, 3, 4) + timedelta(days=i) for i in range(4)]  # Mon 4 .. Thu 7 (NOW: Wed)


@pytest.mark.parametrize("null_wednesday", [False, True], ids=["on_its_date", "carried"])
async def test_a_dividend_on_a_bar_not_yet_closed_waits_for_it_not_lost(
    fake, make_client, null_wednesday
):
    """Yahoo's answer ends with a bar stamped after `now` (Thursday's, at Wednesday 22:00):
    its dividend (dated on it, or carried to it from a null Wednesday) was put on that bar,
    which was then dropped as not closed: the dividend left the answer without a word (a
    carried one was even said applied at a bar never served). It is said pending, and the
    answer after Thursday's close books it on Thursday."""
    wed, thu = MAR[2], MAR[3]
    closes = dict(zip(MAR, [50.0, 50.5, None if null_wednesday else 51.0, 51.5], strict=True))
    body = chart_body("DIV", closes, dividends=dividend_on(wed if null_wednesday else thu, 0.4))
    client = await make_client()
    fake.faults.respond_next(body)
    with capture_logs() as logs:
        df = one(await client.fetch(["DIV"], "1d", utc(2024, 3, 4), utc(2024, 3, 7)), "DIV")
    assert pd.Timestamp(thu) not in set(df["time"])  # not closed: not served
    assert df["dividend"].sum() == 0.0
    assert carried(logs) == []  # not said applied at a bar that is not served
    [pending] = [e for e in logs if e["event"] == "yahoo.event_pending"]
    assert pending["log_level"] == "warning"
    assert (pending["symbol"], pending["action"], pending["amount"]) == ("DIV", "dividend", 0.4)
    assert pending["date"] == (wed if null_wednesday else thu).isoformat()
    assert "in progress" in pending["rule"]

    fake.book.now = utc(2024, 3, 7, 22)  # after Thursday's close
    fake.faults.respond_next(body)
    df = one(await client.fetch(["DIV"], "1d", utc(2024, 3, 4), utc(2024, 3, 7)), "DIV")
    assert df.set_index("time")["dividend"].to_dict()[pd.Timestamp(thu)] == pytest.approx(0.4)


async def test_a_weekend_daily_bar_from_yahoo_is_dropped_naming_symbol_and_date(fake, make_client):
    """A daily bar dated on a Saturday passed as a session of its own. An older one is
    dropped (`feed.row_dropped`, naming symbol and date), as any bad older bar of an answer;
    a newest one refuses the symbol's answer."""
    sat = date(2024, 3, 2)
    closes = dict(zip(WEEK, [50.0, 50.5, 51.0, 51.5, 52.0], strict=True))
    client = await make_client()
    fake.faults.respond_next(chart_body("WKD", closes | {sat: 52.5, date(2024, 3, 4): 53.0}))
    with capture_logs() as logs:
        res = await client.fetch(["WKD"], "1d", utc(2024, 2, 26), utc(2024, 3, 4))
    df = one(res, "WKD")
    assert pd.Timestamp(sat) not in set(df["time"]) and len(df) == 6
    [dropped] = [e for e in logs if e["event"] == "feed.row_dropped"]
    assert (dropped["symbol"], dropped["row"]) == ("WKD", "2024-03-02")
    assert "Saturday" in dropped["reason"]

    fake.faults.respond_next(chart_body("WKD", closes | {sat: 52.5}))
    res = await client.fetch(["WKD"], "1d", utc(2024, 2, 26), utc(2024, 3, 2))
    assert res.errors["WKD"].kind == "invalid_data"
    assert "2024-03-02 (a Saturday)" in str(res.errors["WKD"])


def _without(events: dict[str, dict], key: str) -> dict[str, dict]:
    return {k: {f: v for f, v in ev.items() if f != key} for k, ev in events.items()}


def _with(events: dict[str, dict], **fields) -> dict[str, dict]:
    return {k: ev | fields for k, ev in events.items()}


@pytest.mark.parametrize(
    ("events", "named"),
    [
        ({"splits": _without(split_on(WEEK[2], 2), "date")}, "events.splits"),
        ({"splits": _with(split_on(WEEK[2], 2), date="soon")}, "date"),
        ({"splits": _with(split_on(WEEK[2], 2), numerator=0)}, "numerator"),
        ({"splits": _with(split_on(WEEK[2], 2), denominator="x")}, "denominator"),
        ({"splits": {"1709130600": "2:1"}}, "events.splits"),
    ],
)
async def test_malformed_event_is_an_error_naming_it(fake, make_client, events, named):
    """An event Yahoo sent without a date, or a ratio or amount that is not a number, is a
    malformed answer for the symbol (never skipped silently)."""
    fake.faults.respond_next(
        chart_body("SPL", dict(zip(WEEK, [50.0, 50.5, 51.0, 51.5, 52.0], strict=True)), **events)
    )
    client = await make_client()
    res = await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1))
    err = res.errors["SPL"]
    assert (err.kind, err.symbol) == ("malformed", "SPL")
    assert named in err.message


@pytest.mark.parametrize(
    ("dividends", "named"),
    [
        (_without(dividend_on(WEEK[2], 0.25), "date"), "date"),
        (_without(dividend_on(WEEK[2], 0.25), "amount"), "amount"),
        (_with(dividend_on(WEEK[2], 0.25), amount="n/a"), "amount"),
        (_with(dividend_on(WEEK[2], 0.25), amount=-0.25), "amount"),
        ({"1709130600": "0.25"}, "not an object"),
    ],
)
async def test_a_malformed_dividend_is_left_out_with_a_warning_and_the_bars_kept(
    fake, make_client, dividends, named
):
    """Refusing the answer (as for a split) cost the symbol every bar of every answer whose
    window covers the event, its warm-up included; a dividend cannot leave the book with the
    wrong shares. The answer's bars and its other dividend are kept; the bad one is named."""
    good = dividend_on(WEEK[3], 0.10)
    fake.faults.respond_next(
        chart_body(
            "SPL",
            dict(zip(WEEK, [50.0, 50.5, 51.0, 51.5, 52.0], strict=True)),
            dividends=dividends | good,
        )
    )
    client = await make_client()
    with capture_logs() as logs:
        res = await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1))
    assert "SPL" not in res.errors
    df = one(res, "SPL")
    assert len(df) == 5 and df["dividend"].tolist() == [0.0, 0.0, 0.0, 0.10, 0.0]
    [said] = [e for e in logs if e["event"] == "yahoo.dividend_refused"]
    assert said["symbol"] == "SPL" and said["log_level"] == "warning"
    assert named in said["error"]


async def test_zero_dividend_is_a_no_op(fake, make_client):
    fake.faults.respond_next(
        chart_body(
            "SPL",
            dict(zip(WEEK, [50.0, 50.5, 51.0, 51.5, 52.0], strict=True)),
            dividends=dividend_on(WEEK[2], 0),
        )
    )
    client = await make_client()
    with capture_logs() as logs:
        df = one(await client.fetch(["SPL"], "1d", utc(2024, 2, 26), utc(2024, 3, 1)), "SPL")
    assert (df["dividend"] == 0.0).all() and len(df) == 5
    [said] = [e for e in logs if e["event"] == "yahoo.zero_dividend"]
    assert (said["symbol"], said["date"]) == ("SPL", "2024-02-28")


# ----------------------------------------------------------------------------- stale bars

SESSIONS_BEFORE = {  # closes of the sessions before 2024-03-06
    date(2024, 2, 27): 100.0,
    date(2024, 2, 28): 101.0,
    date(2024, 2, 29): 102.0,
    date(2024, 3, 1): 101.5,
    date(2024, 3, 4): 103.0,
    date(2024, 3, 5): 104.0,
}


def daily_feed_on(fake, symbols=("AAA",)):
    from tradingd.feeds.vendor import VendorFeed

    caller = ResilientCaller(
        "yahoo", SourceConfig(max_attempts=2, backoff_base_s=0.0, timeout_s=2.0), sleep=no_sleep
    )
    client = YahooClient(base_url=fake.url, caller=caller, clock=lambda: NOW)
    return VendorFeed(client, list(symbols), "1d", clock=lambda: NOW)


def stale_said(logs) -> list[dict]:
    return [e for e in logs if e["event"] == "data.suspect" and e["kind"] == "stale_repeat"]


async def test_a_newest_bar_repeating_the_previous_one_exactly_is_said_once(fake):
    """Yahoo's answer has a bar for the session that repeats the last one's open, high, low,
    close and volume to the unit: a stale row, not a session's trading. It was served and
    traded without a word; it is served as it came (as validation's suspect bars are) and
    said (`data.suspect`, kind `stale_repeat`), once for the symbol and bar."""
    fake.faults.respond_next(chart_body("AAA", SESSIONS_BEFORE | {date(2024, 3, 6): 104.0}), n=2)
    feed = daily_feed_on(fake)
    await feed.start()
    try:
        with capture_logs() as logs:
            bar = await feed.bars(utc(2024, 3, 6))
            again = await feed.bars(utc(2024, 3, 6))  # the engine fetching the bar again
    finally:
        await feed.stop()
    assert bar.close[0] == again.close[0] == 104.0  # served as it came
    said = stale_said(logs)
    assert len(said) == 1
    assert said[0]["log_level"] == "warning" and said[0]["count"] == 1
    assert said[0]["examples"][0]["symbol"] == "AAA"
    assert said[0]["examples"][0]["time"] == "2024-03-06"
    assert said[0]["examples"][0]["previous"] == "2024-03-05"
    assert "stale" in said[0]["rule"]


@pytest.mark.parametrize("case", ["moved", "no volume"])
async def test_a_newest_bar_that_traded_or_did_not_trade_is_not_called_stale(fake, case):
    """A close that moved is a session's trading; a repeat with no volume is a symbol that
    did not trade (its last price carried), which a vendor shows that way too."""
    body = chart_body(
        "AAA", SESSIONS_BEFORE | {date(2024, 3, 6): 104.5 if case == "moved" else 104.0}
    )
    if case == "no volume":
        quote = body["chart"]["result"][0]["indicators"]["quote"][0]
        quote["volume"][-2:] = [0, 0]
    fake.faults.respond_next(body)
    feed = daily_feed_on(fake)
    await feed.start()
    try:
        with capture_logs() as logs:
            await feed.bars(utc(2024, 3, 6))
    finally:
        await feed.stop()
    assert stale_said(logs) == []


async def test_a_body_that_is_not_utf8_is_a_malformed_answer(fake, make_client):
    fake.faults.respond_next(b'{"chart": "\xff"}', n=2)
    client = await make_client(max_attempts=2)
    res = await client.fetch(["AAA"], "1d", utc(2024, 3, 1), utc(2024, 3, 6))
    err = res.errors["AAA"]
    assert (err.kind, err.status, err.retryable) == ("malformed", 200, True)
    assert "UnicodeDecodeError" in err.message and fake.count == 2


def test_a_session_that_stopped_trading_before_its_close_is_closed_once_its_trade_is_old():
    """A symbol halted ten minutes before the close: its closed bar is stamped with that last
    trade, as a session still trading is. Asked three hours after the close it was held back
    until Yahoo's next session (and the machine's clock blamed); 30 minutes after its last
    trade it is the closed bar. Sooner, it waits (a clock that far ahead looks the same)."""
    need_fixtures()
    import copy

    from tradingd.feeds.yahoo import parse_chart

    result = fixture_json("yahoo", "chart_6309.T_1d_range1mo_div_split.json")["chart"]["result"][0]
    end = result["meta"]["currentTradingPeriod"]["regular"]["end"]
    session = Session(timezone="Asia/Tokyo")
    after = datetime.fromtimestamp(end + 3 * 3600, UTC)
    closed_day = parse_chart(copy.deepcopy(result), "1d", now=after, session=session)["time"]
    halted = copy.deepcopy(result)
    halted["meta"]["regularMarketTime"] = end - 600
    halted["timestamp"][-1] = end - 600
    for after_close_s, taken in ((3 * 3600, True), (300, False)):
        now = datetime.fromtimestamp(end + after_close_s, UTC)
        out = parse_chart(copy.deepcopy(halted), "1d", now=now, session=session)
        assert (out["time"].iloc[-1] == closed_day.iloc[-1]) is taken, after_close_s
