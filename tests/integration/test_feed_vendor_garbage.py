"""The Yahoo and Alpha Vantage clients against a loopback server answering what no vendor
should: an answer too long to be a time series, garbage in the fields the clients parse.
Each is a `malformed` answer naming what is wrong, never a bug of ours (`internal`, with a
traceback) nor bars read wrong."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from fakes import fixture_text, need_fixtures
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
