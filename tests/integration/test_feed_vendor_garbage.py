"""The Yahoo and Alpha Vantage clients against a loopback server answering what no vendor
should: an answer too long to be a time series, garbage in the fields the clients parse.
Each is a `malformed` answer naming what is wrong, never a bug of ours (`internal`, with a
traceback) nor bars read wrong."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from aiohttp import web
from fakes import fixture_json, fixture_text, need_fixtures
from structlog.testing import capture_logs

from tradingd.feeds.alphavantage import AlphaVantageClient
from tradingd.feeds.resilience import DEFAULT_MAX_BODY_BYTES, ResilientCaller, SourceConfig
from tradingd.feeds.yahoo import YahooClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AAPL_2020 = "chart_AAPL_1d_2020-08-31_to_2020-11-07_div_split.json"
Y_NOW = datetime(2020, 11, 9, 22, tzinfo=UTC)
Y_WINDOW = (datetime(2020, 9, 1, tzinfo=UTC), datetime(2020, 11, 6, tzinfo=UTC))
AV_NOW = datetime(2026, 5, 18, 22, tzinfo=UTC)
AV_WINDOW = (datetime(2026, 4, 21, tzinfo=UTC), datetime(2026, 5, 15, tzinfo=UTC))
AV_5M = (datetime(2026, 5, 15, 13, 30, tzinfo=UTC), datetime(2026, 5, 15, 19, 55, tzinfo=UTC))
MB = 1024 * 1024


async def no_sleep(_: float) -> None:
    return None


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server answering every request with `handler`; yields its URL and the
    paths asked for."""
    asked: list[str] = []

    async def h(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", h)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", asked
    finally:
        await runner.cleanup()


def answer(body: str | bytes | dict[str, Any], ctype: str = "application/json") -> Handler:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    raw = data.encode() if isinstance(data, str) else data

    async def h(_: web.Request) -> web.StreamResponse:
        return web.Response(body=raw, headers={"Content-Type": ctype})

    return h


def padded(head: bytes, tail: bytes, pad_mb: int, *, declare: bool) -> Handler:
    """`head`, `pad_mb` MB of 'x', `tail`: chunked (no Content-Length) unless `declare`."""

    async def h(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declare:
            resp.content_length = len(head) + pad_mb * MB + len(tail)
        await resp.prepare(request)
        try:
            await resp.write(head)
            for _ in range(pad_mb):
                await resp.write(b"x" * MB)
            await resp.write(tail)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client hung up: what the cap should make it do
        return resp

    return h


def caller(source: str, **cfg: Any) -> ResilientCaller:
    config = {"max_attempts": 1, "backoff_base_s": 0.0, "timeout_s": 10.0, **cfg}
    return ResilientCaller(source, SourceConfig(**config), sleep=no_sleep)


async def yahoo_errors(handler: Handler, **cfg: Any) -> dict[str, tuple[str, str]]:
    async with serve(handler) as (url, _):
        client = YahooClient(base_url=url, caller=caller("yahoo", **cfg))
        await client.start()
        try:
            with capture_logs() as logs:
                res = await client.fetch(["AAPL"], "1d", *Y_WINDOW, now=Y_NOW)
        finally:
            await client.stop()
    assert not [e for e in logs if e["event"] == "source.internal_error"], logs
    return {s: (e.kind, str(e)) for s, e in res.errors.items()}


async def av_fetch(
    handler: Handler, interval: str = "1d", *, datatype: str = "json", **cfg: Any
) -> tuple[Any, list[dict[str, Any]]]:
    async with serve(handler) as (url, _):
        client = AlphaVantageClient(
            api_key="AVKEY-1234",
            base_url=url,
            caller=caller("alphavantage", **cfg),
            datatype=datatype,
        )
        await client.start()
        window = AV_WINDOW if interval == "1d" else AV_5M
        try:
            with capture_logs() as logs:
                res = await client.fetch(["IBM"], interval, *window, now=AV_NOW)
        finally:
            await client.stop()
    assert not [e for e in logs if e["event"] == "source.internal_error"], logs
    return res, logs


async def av_errors(handler: Handler, interval: str = "1d", **kw: Any) -> dict[str, Any]:
    res, _ = await av_fetch(handler, interval, **kw)
    return {s: (e.kind, str(e)) for s, e in res.errors.items()}


# ----------------------------------------------------------------------------- body size


def test_the_body_cap_is_a_source_setting_of_64_mb_by_default():
    assert SourceConfig().max_body_bytes == DEFAULT_MAX_BODY_BYTES == 64 * MB
    assert SourceConfig.for_source("yahoo", max_body_bytes=MB).max_body_bytes == MB
    with pytest.raises(Exception, match="max_body_bytes"):
        SourceConfig(max_body_bytes=0)


@pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content_length"])
async def test_a_yahoo_answer_longer_than_the_cap_is_refused_unread(declare):
    """A valid chart JSON padded to 40 MB (400 MB in the trial, which raised the daemon's
    RSS by 2 GB) was read whole and accepted: now refused at the cap (1 MB here), by its
    Content-Length or as it is read, a malformed answer naming the cap."""
    head = b'{"chart": {"error": null, "result": [{"meta": {}, "pad": "'
    errors = await yahoo_errors(padded(head, b'"}]}}', 40, declare=declare), max_body_bytes=MB)
    kind, text = errors["AAPL"]
    assert kind == "malformed"
    assert f"cap of {MB} bytes (max_body_bytes)" in text
    assert ("Content-Length" in text) == declare


async def test_an_alphavantage_answer_longer_than_the_cap_is_refused_unread():
    head = b'{"Meta Data": {}, "Time Series (Daily)": {}, "pad": "'
    errors = await av_errors(padded(head, b'"}', 40, declare=False), max_body_bytes=MB)
    kind, text = errors["IBM"]
    assert kind == "malformed" and f"cap of {MB} bytes (max_body_bytes)" in text


async def test_an_answer_within_the_cap_is_read_as_before():
    need_fixtures()
    body = fixture_text("yahoo", AAPL_2020)
    assert await yahoo_errors(answer(body), max_body_bytes=len(body.encode())) == {}


# ----------------------------------------------------------------------------- garbage fields


def yahoo_with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = copy.deepcopy(fixture_json("yahoo", AAPL_2020))
    change(body["chart"]["result"][0])
    return body


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(result: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = result
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def _ms(result: dict[str, Any]) -> None:
    result["timestamp"] = [t * 1000 for t in result["timestamp"]]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_ms, "timestamp[0] (49 of 49) 1598880600000 is not a time in epoch seconds"),
        (_set("timestamp.3", 1e20), "timestamp[3] (1 of 49) 1e+20 is not a time in epoch"),
        (_set("meta", [1]), "meta is not an object: [1]"),
        (_set("meta.exchangeTimezoneName", "Mars/Olympus"), "'Mars/Olympus' is not a time zone"),
        (_set("meta.exchangeTimezoneName", 5), "exchangeTimezoneName is not a time zone name"),
        (_set("meta.currentTradingPeriod", "x"), "meta.currentTradingPeriod is not an object"),
        (_set("meta.currentTradingPeriod.regular.end", 1e20), "regular.end 1e+20 is not a time"),
        (_set("indicators", [1]), "indicators is not an object"),
        (_set("timestamp.3", None), "timestamp[3] None is not a number of epoch seconds"),
        (_set("timestamp.3", True), "timestamp[3] True is not a number of epoch seconds"),
        (_set("timestamp.3", [1598880600]), "timestamp[3] [1598880600] is not a number"),
        (_set("timestamp.3", -3e9), "timestamp[3] (1 of 49) -3000000000.0 is not a time"),
        (_set("events.splits.1598880600.date", 1e20), "'1598880600'].date 1e+20 is not a time"),
    ],
    ids=[
        "stamps_in_ms",
        "stamp_huge",
        "meta_list",
        "tz_unknown",
        "tz_int",
        "trading_period_str",
        "session_end_huge",
        "indicators_list",
        "stamp_null",
        "stamp_true",
        "stamp_nested",
        "stamp_before_1900",
        "split_date_huge",
    ],
)
async def test_yahoo_garbage_is_a_malformed_answer_naming_the_field(change, named):
    """Stamps in milliseconds ("Localizing Timestamps ... year 52636"), a `meta` that is
    not an object (AttributeError), an unknown time zone: reported as a bug of ours
    (`internal`, a traceback in source.internal_error, not retried). Each is the vendor's
    malformed answer now, naming the field."""
    need_fixtures()
    errors = await yahoo_errors(answer(yahoo_with(change)))
    kind, text = errors["AAPL"]
    assert kind == "malformed", text
    assert named in text


async def test_yahoo_stamps_before_1970_are_daily_history_not_garbage():
    """Yahoo's daily history goes back to 1962, stamped with negative epoch seconds: the
    1970 floor refused every long history as malformed."""
    need_fixtures()

    def before_1970(result: dict[str, Any]) -> None:
        shift = 1598880600 - (-252322200)  # the first bar to 1962-01-02 14:30 UTC
        result["timestamp"] = [t - shift for t in result["timestamp"]]

    errors = await yahoo_errors(answer(yahoo_with(before_1970)))
    assert "AAPL" not in errors or errors["AAPL"][0] != "malformed", errors


async def test_a_yahoo_chart_error_that_is_a_bare_string_is_a_malformed_answer():
    """Yahoo's `chart.error` is an object (code, description): a bare string was the final
    `http_4xx` "boom: ", not the unreadable answer it is (retried as one)."""
    need_fixtures()
    body = copy.deepcopy(fixture_json("yahoo", AAPL_2020))
    body["chart"]["error"] = "boom"
    errors = await yahoo_errors(answer(body))
    kind, text = errors["AAPL"]
    assert kind == "malformed", text
    assert "chart.error is not an object (code, description): 'boom'" in text


def av_with(fixture: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = copy.deepcopy(fixture_json("alphavantage", fixture))
    change(body)
    return body


def _av_tz(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["Meta Data"]["6. Time Zone"] = value

    return change


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_av_tz("Mars/Base"), "Meta Data '6. Time Zone': 'Mars/Base' is not a time zone"),
        (_av_tz(5), "Meta Data '6. Time Zone' is not a time zone name: 5"),
        (lambda body: body.__setitem__("Meta Data", [1]), "'Meta Data' is not an object: [1]"),
    ],
    ids=["tz_unknown", "tz_int", "meta_list"],
)
async def test_alphavantage_garbage_meta_is_a_malformed_answer_naming_the_field(change, named):
    """An unknown or non-text `Time Zone` raised ZoneInfoNotFoundError, a `Meta Data` that
    is not an object AttributeError: both `internal` (a bug of ours, with a traceback)."""
    need_fixtures()
    body = av_with("time_series_intraday_5min_IBM.json", change)
    errors = await av_errors(answer(body), "5m")
    kind, text = errors["IBM"]
    assert kind == "malformed", text
    assert named in text


async def test_alphavantage_known_time_zones_still_read():
    need_fixtures()
    body = av_with("time_series_intraday_5min_IBM.json", _av_tz("UTC"))
    res, _ = await av_fetch(answer(body), "5m")
    assert not res.errors and len(res.frame) > 0


# ----------------------------------------------------------------------------- truncated CSV


def _cut_in_last_volume(text: str) -> str:
    return text.rstrip("\r\n")[:-4]  # "...,5584901" -> "...,558"


def _cut_in_half(text: str) -> str:
    return text[: len(text) // 2 + 7]


def _last_row_short(text: str) -> str:
    return text.rstrip("\r\n").rsplit(",", 2)[0] + "\n"


@pytest.mark.parametrize(
    ("cut", "named"),
    [
        (_cut_in_last_volume, "truncated CSV: the body ends mid-line"),
        (_cut_in_half, "truncated CSV: the body ends mid-line"),
        (_last_row_short, "truncated CSV: its last row has 4 of the header's 6 fields"),
    ],
    ids=["in_last_volume", "in_half", "last_row_short"],
)
async def test_a_truncated_alphavantage_csv_is_refused_not_read_short(cut, named):
    """A CSV cut 4 characters before its end gave the oldest bar a volume of 558 (for
    5,584,901) without a word; cut in half, the older half was silently missing. A body
    that does not end with a newline, or whose last row is short of fields, is now a
    malformed answer (retried as one), not bars."""
    need_fixtures()
    text = fixture_text("alphavantage", "time_series_daily_IBM.csv")
    res, _ = await av_fetch(answer(cut(text), "text/csv"), datatype="csv")
    assert res.frame.empty
    kind, message = res.errors["IBM"].kind, str(res.errors["IBM"])
    assert kind == "malformed" and named in message


def _row_changed(text: str, change: Callable[[str], str], row: int = 5) -> str:
    lines = text.splitlines(keepends=True)
    lines[row] = change(lines[row].rstrip("\r\n")) + "\n"
    return "".join(lines)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda row: row.rsplit(",", 1)[0], "first at line 6 with 5: '2026-05-11,"),
        (lambda row: row.rsplit(",", 3)[0], "first at line 6 with 3"),
        (lambda row: row + ",7", "first at line 6 with 7"),
    ],
    ids=["volume_missing", "three_missing", "one_more"],
)
async def test_a_damaged_middle_row_of_an_alphavantage_csv_refuses_the_answer(change, named):
    """A row short of fields in the middle of the body was read with its missing cells as
    NaN: the bar was dropped (`feed.row_dropped`), a gap that shifted every indicator over
    the lookback, while only a short last row refused the answer. A damaged row's cells
    cannot be placed (a missing one shifts the rest), so the whole answer is `malformed`,
    asked again, as a truncated one is; the bars are never read short."""
    need_fixtures()
    text = _row_changed(fixture_text("alphavantage", "time_series_daily_IBM.csv"), change)
    res, logs = await av_fetch(answer(text, "text/csv"), datatype="csv")
    assert res.frame.empty
    err = res.errors["IBM"]
    assert err.kind == "malformed" and err.retryable
    assert "damaged CSV: 1 row(s) without the header's 6 fields" in str(err)
    assert named in str(err)
    assert not [e for e in logs if e["event"] == "feed.row_dropped"]


async def test_a_damaged_middle_row_is_asked_again_and_the_whole_answer_served():
    """Retried as any malformed answer: the next, whole, body is served in full."""
    need_fixtures()
    text = fixture_text("alphavantage", "time_series_daily_IBM.csv")
    bodies = [_row_changed(text, lambda row: row.rsplit(",", 1)[0]), text]

    async def h(_: web.Request) -> web.StreamResponse:
        return web.Response(text=bodies.pop(0), content_type="text/csv")

    res, _ = await av_fetch(h, datatype="csv", max_attempts=2)
    assert not res.errors and len(res.frame) == 19 and bodies == []


def _av_row_without(fixture: str, day: str, field: str) -> dict[str, Any]:
    def change(body: dict[str, Any]) -> None:
        series = next(v for k, v in body.items() if k.startswith("Time Series"))
        del series[day][field]

    return av_with(fixture, change)


@pytest.mark.parametrize(
    ("fixture", "interval", "day", "field"),
    [
        ("time_series_daily_IBM.json", "1d", "2026-05-05", "4. close"),
        ("time_series_daily_adjusted_IBM.json", "1d", "2026-05-05", "6. volume"),
        ("time_series_daily_IBM.json", "1d", "2026-05-15", "1. open"),  # the newest
        ("time_series_intraday_5min_IBM.json", "5m", "2026-05-15 18:30:00", "2. high"),
    ],
    ids=["daily_close", "adjusted_volume", "newest_open", "intraday_high"],
)
async def test_a_json_row_without_a_field_refuses_the_answer_naming_it(
    fixture, interval, day, field
):
    """The JSON twin of the damaged CSV row: a time-series row without "4. close" (or the
    adjusted series' "6. volume") was read with the field as NaN and its bar dropped by
    validation (`feed.row_dropped`, "missing or non-numeric"), a gap in the history that
    the CSV path refuses. It refuses the whole answer now (`malformed`, asked again),
    naming the symbol, the row's date and the field."""
    need_fixtures()
    res, logs = await av_fetch(answer(_av_row_without(fixture, day, field)), interval)
    assert res.frame.empty
    err = res.errors["IBM"]
    assert (err.kind, err.symbol, err.retryable) == ("malformed", "IBM", True)
    assert "damaged answer: Time Series" in str(err) and "IBM" in str(err)
    assert f"row {day} has no {field!r} (1 row(s)" in str(err)
    assert not [e for e in logs if e["event"] == "feed.row_dropped"]


async def test_a_json_row_without_a_field_is_asked_again_and_the_whole_answer_served():
    need_fixtures()
    whole = fixture_json("alphavantage", "time_series_daily_IBM.json")
    bodies = [_av_row_without("time_series_daily_IBM.json", "2026-05-05", "4. close"), whole]

    async def h(_: web.Request) -> web.StreamResponse:
        return web.json_response(bodies.pop(0))

    res, _ = await av_fetch(h, max_attempts=2)
    assert not res.errors and len(res.frame) == 19 and bodies == []
    assert pd.Timestamp("2026-05-05") in set(res.frame["time"])


def test_every_recorded_csv_answer_ends_with_a_newline():
    csvs = sorted(need_fixtures().glob("alphavantage/*.csv"))
    assert len(csvs) >= 4
    assert [p.name for p in csvs if not p.read_text().endswith("\n")] == []


@pytest.mark.parametrize(
    "fixture", ["time_series_daily_IBM.csv", "time_series_daily_adjusted_IBM.csv"]
)
async def test_the_recorded_csv_answers_read_whole(fixture):
    need_fixtures()
    text = fixture_text("alphavantage", fixture)
    res, _ = await av_fetch(answer(text, "text/csv"), datatype="csv")
    assert not res.errors and len(res.frame) == 19
    oldest = res.frame.iloc[0]
    assert (oldest["time"].date().isoformat(), oldest["volume"]) == ("2026-04-21", 5_584_901)


# ----------------------------------------------------------------------------- absurd split


async def test_an_absurd_alphavantage_split_coefficient_is_refused_naming_the_bar():
    """`8. split coefficient: "1e300"` passed validation with a data.suspect warning only
    (split_without_price_move); it is refused as a split <= 0 is, naming symbol and bar."""
    need_fixtures()
    body = fixture_json("alphavantage", "time_series_daily_adjusted_IBM.json")
    body["Time Series (Daily)"]["2026-05-05"]["8. split coefficient"] = "1e300"
    async with serve(answer(body)) as (url, _):
        client = AlphaVantageClient(
            api_key="AVKEY-1234", base_url=url, caller=caller("alphavantage"), adjusted=True
        )
        await client.start()
        try:
            res = await client.fetch(["IBM"], "1d", *AV_WINDOW, now=AV_NOW)
        finally:
            await client.stop()
    err = res.errors["IBM"]
    assert err.kind == "invalid_data"
    assert "split coefficient outside [1/1000, 1000], first 1e+300" in str(err)
    assert "symbol=IBM, row=2026-05-05" in str(err)
