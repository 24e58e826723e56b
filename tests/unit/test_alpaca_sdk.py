"""alpaca_sdk.DaemonWorker: calls run in order on daemon threads; after shutdown a call is
refused at once (it waited forever: no thread took it, or one read the stop marker first)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import pytest
from test_deadline_session import _server

from tradingd.alpaca_sdk import BodyTooLarge, DaemonWorker, DeadlineSession
from tradingd.feeds.resilience import DEFAULT_MAX_BODY_BYTES, classify


def test_calls_run_on_daemon_threads_and_return_their_results() -> None:
    worker = DaemonWorker("w", threads=2)
    names: list[tuple[str, bool]] = []

    def call(x: int) -> int:
        t = threading.current_thread()
        names.append((t.name, t.daemon))
        return x * 2

    assert [worker.submit(call, i).result(timeout=5) for i in range(3)] == [0, 2, 4]
    assert all(daemon for _, daemon in names)
    assert {n for n, _ in names} <= {"w_0", "w_1"}
    worker.shutdown()


@pytest.mark.parametrize("started", [False, True])
def test_a_call_after_shutdown_is_refused_at_once(started: bool) -> None:
    worker = DaemonWorker("w", threads=2)
    if started:
        assert worker.submit(lambda: 1).result(timeout=5) == 1
    worker.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        worker.submit(lambda: 2)


def test_calls_queued_behind_a_hung_one_are_cancelled_at_shutdown() -> None:
    worker = DaemonWorker("w")
    release = threading.Event()
    started = threading.Event()

    def hang() -> str:
        started.set()
        release.wait(10)
        return "late"

    hung = worker.submit(hang)
    assert started.wait(5)
    queued = worker.submit(lambda: "never")
    worker.shutdown()
    assert queued.cancelled()
    release.set()
    assert hung.result(timeout=5) == "late"  # abandoned with its thread, not killed


# ----------------------------------------------------------------------------- body size


@contextmanager
def _padded_server(size: int, *, declare: bool) -> Iterator[str]:
    """A loopback host answering `size` bytes of JSON-ish padding, with a Content-Length
    when `declare`, else chunked."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            chunk = b"x" * (256 * 1024)
            try:
                if declare:
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    for _ in range(size // len(chunk)):
                        self.wfile.write(chunk)
                else:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for _ in range(size // len(chunk)):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up

    with _server(Handler) as url:
        yield url


def test_the_sessions_cap_is_the_data_sources_default() -> None:
    assert DeadlineSession(5.0).max_body_bytes == DEFAULT_MAX_BODY_BYTES


@pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content_length"])
def test_an_answer_longer_than_the_cap_is_refused_unread(declare: bool) -> None:
    """The session counted the bytes it read and buffered any number of them (1-2 GB in
    the trial before the deadline): an answer over `max_body_bytes` is refused (by its
    Content-Length, or as read), its connection closed, a malformed answer for the data
    clients naming the size and the cap."""
    cap = 1024 * 1024
    with _padded_server(40 * cap, declare=declare) as url:
        session = DeadlineSession(10.0, max_body_bytes=cap)
        with pytest.raises(BodyTooLarge) as info:
            session.get(f"{url}/v2/stocks/bars")
        assert DeadlineSession(10.0).get(f"{url}/v2/stocks/bars").content == b"x" * 40 * cap
        session.close()
    text = str(info.value)
    assert text.startswith("GET /v2/stocks/bars: the answer's body")
    assert f"cap of {cap} bytes (max_body_bytes)" in text
    assert ("Content-Length" in text) == declare
    err = classify(info.value, "alpaca")
    assert err is not None and err.kind == "malformed" and err.retryable


def test_the_brokers_refusal_for_size_names_its_base_url_not_a_setting_it_lacks() -> None:
    """The broker's and the corporate actions' sessions keep the fixed 64 MB cap: their
    refusal told the operator to raise a `call.max_body_bytes` they do not have."""
    from tradingd.brokers.alpaca import AlpacaBroker, AlpacaBrokerConfig

    broker = AlpacaBroker(AlpacaBrokerConfig(base_url="http://127.0.0.1:9"), ("k" * 20, "s" * 40))
    client = broker._make_client()
    session = client._session
    assert isinstance(session, DeadlineSession)
    assert session.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    text = str(session._too_large("get", "http://127.0.0.1:9/v2/account", 10**9))
    assert "check broker.alpaca.base_url (the broker's cap is fixed)" in text
    assert "call.max_body_bytes" not in text
    data = DeadlineSession(5.0)  # a data feed's: its setting named
    assert "raise its call.max_body_bytes" in str(data._too_large("get", "/v2/stocks/bars"))
