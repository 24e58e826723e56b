"""`alpaca_sdk.DeadlineSession` answers as requests' own session does wherever no deadline
is met: a redirect's body, a TLS failure while reading the body (the callers classify
requests' exceptions, not urllib3's), and the socket timeout of a connection it has given
back to the pool (another thread's by then). Loopback servers only."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3.response

from tradingd.alpaca_sdk import DeadlineSession
from tradingd.feeds.resilience import classify

MOVED = b"<html><body>301 Moved Permanently</body></html>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one pooled connection for many requests

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/moved"):
            status, body = 301, MOVED
        else:
            status, body = 200, b'{"ok": true}'
        self.send_response(status)
        if status == 301:
            self.send_header("Location", "https://example.invalid/v2/account")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def _server(handler: type[BaseHTTPRequestHandler] | None = None) -> Iterator[str]:
    """A loopback HTTP host of `handler` (this file's by default) on a free port: its URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler or _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_redirects_body_is_kept():
    """alpaca-py asks without following redirects; requests read the 301's body itself, and
    reading the spent stream again made the answer's text empty (alpaca-py then returned
    None: "the account is a NoneType" instead of the page that said why)."""
    with _server() as url:
        plain = requests.Session().get(f"{url}/moved", allow_redirects=False, timeout=5)
        ours = DeadlineSession(5.0).get(f"{url}/moved", allow_redirects=False)
    assert plain.text == MOVED.decode()  # what requests' own session gives
    assert (ours.status_code, ours.text) == (301, MOVED.decode())


def test_a_tls_failure_in_the_body_is_requests_ssl_error(monkeypatch):
    """urllib3's SSLError escaped the body's read unconverted: neither the feeds' classifier
    nor the broker's calls knew it (requests' own read says requests.exceptions.SSLError,
    a connection failure, retried)."""

    def broken(self: object, *args: object, **kw: object) -> bytes:
        raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")

    with _server() as url:
        monkeypatch.setattr(urllib3.response.HTTPResponse, "_fp_read", broken)
        with pytest.raises(requests.exceptions.SSLError) as plain:
            requests.Session().get(url, timeout=5)
        with pytest.raises(requests.exceptions.SSLError) as ours:
            DeadlineSession(5.0).get(url)
    assert classify(ours.value, "alpaca") is not None
    assert classify(ours.value, "alpaca").kind == classify(plain.value, "alpaca").kind


def test_a_connection_given_back_to_the_pool_keeps_the_timeout_its_next_user_set(
    monkeypatch,
):
    """The read that meets the body's end gives the connection back to the pool; the
    session went on setting its socket's timeout after that (its next read, then putting
    its own back), over the timeout of the thread that had taken the connection since."""
    session = DeadlineSession(5.0)
    taken: list[float | None] = []
    taken_sock: list[object] = []
    read1 = urllib3.response.HTTPResponse.read1

    def read_then_taken(self: urllib3.response.HTTPResponse, *args: object, **kw: object):
        before = self.connection
        chunk = read1(self, *args, **kw)
        if before is not None and self.connection is None and not taken:
            # Given back: another thread takes it and sets its own read timeout.
            before.sock.settimeout(0.05)
            taken.append(0.05)
            taken_sock.append(before.sock)
        return chunk

    monkeypatch.setattr(urllib3.response.HTTPResponse, "read1", read_then_taken)
    with _server() as url:
        assert session.get(url).json() == {"ok": True}
    assert taken == [0.05] and taken_sock
    assert taken_sock[0].gettimeout() == 0.05  # type: ignore[attr-defined]
