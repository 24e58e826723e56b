"""What the daemon's alpaca-py REST clients share: the broker's `TradingClient`, the data
feed's `StockHistoricalDataClient` and the corporate-actions client.

* `no_sdk_retries`: alpaca-py's `RESTClient._request` retries a 429 or 504 itself (3 times,
  a fixed 3 s sleep, no backoff, Retry-After ignored) inside the worker thread that runs the
  call. The caller's timeout cannot stop that thread, its retries are not seen by the
  caller's rate limiter or breaker, and a call given up by the caller went on being sent.
  Off, every request is one attempt of the caller's own retries (`ResilientCaller` for the
  data clients, tenacity in the broker), which back off and honour Retry-After.
* `DaemonWorker`: the threads that run those synchronous calls. They are daemon threads, so
  neither a stop nor the interpreter's exit waits for a request hung in one.
* `DeadlineSession`: the requests session given to a client (alpaca-py takes no timeout: its
  `RESTClient` sends `self._session.request(method, url, **opts)` and reads `.text` /
  `.json()`, so the session is the one place to bound a request). requests' timeout is per
  socket operation (connect, and each read), and so is urllib3's `Timeout(total=...)` (its
  docs: "a server [that] streams one byte every fifteen seconds" never trips a 20 s
  timeout), so an answer trickling its body kept a worker thread for as long as it dripped:
  two of them held both threads of the data client's pool, queueing every later request
  until it timed out in the queue. The session streams the body in a loop against a
  monotonic deadline instead, and gives up at it. It also caps the body's size
  (`max_body_bytes`, the data sources' `DEFAULT_MAX_BODY_BYTES` unless given): a longer
  answer (by its Content-Length, or as read) is refused unread with `BodyTooLarge`, a
  `requests.ContentDecodingError` (kind `malformed`), not buffered whole in the thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog
from urllib3.exceptions import DecodeError, HTTPError, ProtocolError, ReadTimeoutError, SSLError

from .feeds.resilience import DEFAULT_MAX_BODY_BYTES, FEED_BODY_REMEDY, body_too_large

log = structlog.get_logger(__name__)


def no_sdk_retries(client: Any) -> bool:
    """Turn alpaca-py's own 429/504 retries off on `client` (a `RESTClient`); False, with a
    warning, when this alpaca-py has not the attributes they are set by. Its constructor
    takes no 0 for either knob (a falsy value is its default), hence the attributes."""
    if hasattr(client, "_retry") and hasattr(client, "_retry_codes"):
        client._retry = 0
        client._retry_codes = []
        return True
    log.warning("alpaca.sdk_retries_unknown", client=type(client).__name__)
    return False


class DaemonWorker:
    """Daemon threads (`threads`, started as calls come) running calls in order (a
    ThreadPoolExecutor's workers are joined at the interpreter's exit: a request hung at the
    stop held the exit until requests' timeout, which is per read, so longer for a host
    trickling bytes). A call still running at `shutdown` is abandoned with its thread; the
    calls queued behind it are cancelled."""

    def __init__(self, name: str, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"a worker needs at least one thread, got {threads}")
        self._name = name
        self._size = threads
        self._jobs: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._closed:
            # A call after the stop would wait forever (no thread takes it, or a thread
            # reads the stop's marker first) or start a thread anew: refused, as a
            # ThreadPoolExecutor refuses it.
            raise RuntimeError(f"{self._name}: cannot run a call after shutdown")
        fut: Future[Any] = Future()
        self._jobs.put((fut, fn, args))
        if len(self._threads) < self._size:
            n = len(self._threads)
            name = self._name if self._size == 1 else f"{self._name}_{n}"
            thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        return fut

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # the caller's future carries it
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def shutdown(self) -> None:
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(max(len(self._threads), 1)):
            self._jobs.put(None)


class DeadlineExceeded(requests.exceptions.ReadTimeout):
    """A request's whole time (connect, headers and body) passed its deadline: abandoned."""


class BodyTooLarge(requests.exceptions.ContentDecodingError):
    """An answer's body longer than the session's `max_body_bytes`: refused unread (an
    answer that cannot be read: `malformed` for the data clients and the broker)."""


class DeadlineSession(requests.Session):
    """A requests session whose every request has `timeout_s` per socket operation (connect,
    each read: requests' own timeout, unless the call gives one) and `deadline_s` in all
    (default `timeout_s`), the body's read included: the body is read as it arrives
    (`read1`, one socket read at a time, each given at most the time left), and at the
    deadline the response is closed, `alpaca.request_abandoned` logged (method, path,
    bytes read, seconds) and `DeadlineExceeded` (a `requests.ReadTimeout`: kind `timeout`
    for the caller) raised, so the worker thread is free again. What the deadline cannot
    cut short: the connect and the headers, each read of which still has `timeout_s` (a
    host trickling its headers is bounded by http.client's limits on their size only). A
    call asking for `stream=True` reads the body itself, unbounded as before.

    `max_body_bytes`: a body longer than that (its Content-Length, or the bytes read,
    decompressed) is refused: the response closed, `BodyTooLarge` raised naming the size and
    the cap and `remedy`. Unbounded, a padded answer was buffered whole (a GB within the
    deadline)."""

    CHUNK = 64 * 1024

    def __init__(
        self,
        timeout_s: float,
        deadline_s: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        remedy: str = FEED_BODY_REMEDY,
    ) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.deadline_s = timeout_s if deadline_s is None else deadline_s
        self.max_body_bytes = max_body_bytes
        self.remedy = remedy  # what a refusal for size tells the operator to do

    def request(self, method: Any, url: Any, *args: Any, **kw: Any) -> requests.Response:
        if len(args) < 7:  # else timeout was given positionally (7th after url)
            kw.setdefault("timeout", self.timeout_s)
        # `stream` is the 11th argument after url, or a keyword.
        streams = args[10] if len(args) >= 11 else kw.get("stream")
        if streams:  # the caller reads the body itself
            return super().request(method, url, *args, **kw)
        started = time.monotonic()
        if len(args) >= 11:
            args = (*args[:10], True, *args[11:])
        else:
            kw["stream"] = True
        response = super().request(method, url, *args, **kw)
        try:
            # A redirect's body was read by requests (`resolve_redirects` reads it): the
            # stream is spent, and reading it again made the answer's text empty.
            if not response._content_consumed:
                self._read_body(response, started, method, url)
        except BaseException:
            response.close()
            raise
        return response

    def _read_body(
        self, response: requests.Response, started: float, method: Any, url: Any
    ) -> None:
        """The body into `response.content` (as requests' own read puts it there), read
        against the deadline `started + deadline_s`."""
        raw = response.raw
        deadline = started + self.deadline_s
        declared = response.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large(method, url, int(declared))
        parts: list[bytes] = []
        size = 0
        # Each read waits the time left at most; the socket's own timeout is put back after
        # (a pooled connection's next request sends on it before urllib3 sets it again).
        conn = getattr(raw, "connection", None)
        sock = getattr(conn, "sock", None)
        per_read = sock.gettimeout() if sock is not None else None
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._abandon(method, url, size, started)
                if sock is not None and raw.connection is conn:  # (not once released)
                    sock.settimeout(left if per_read is None else min(left, per_read))
                try:
                    chunk = raw.read1(self.CHUNK, decode_content=True)
                except ReadTimeoutError as exc:
                    if time.monotonic() >= deadline:
                        self._abandon(method, url, size, started)
                    raise requests.exceptions.ReadTimeout(exc, response=response) from None
                except ProtocolError as exc:  # as requests' own read says them
                    raise requests.exceptions.ChunkedEncodingError(exc) from None
                except DecodeError as exc:
                    raise requests.exceptions.ContentDecodingError(exc) from None
                except SSLError as exc:  # a TLS failure mid-body: requests says SSLError
                    raise requests.exceptions.SSLError(exc, response=response) from None
                except HTTPError as exc:  # any other of urllib3's: a connection failure
                    raise requests.exceptions.ConnectionError(exc, response=response) from None
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
                if size > self.max_body_bytes:
                    parts.clear()  # not held by the traceback's frame
                    raise self._too_large(method, url)
        finally:
            # Not once the connection went back to the pool (the read that met the body's
            # end released it): another thread may hold it already, with its own timeout.
            if sock is not None and conn is not None and raw.connection is conn:
                with contextlib.suppress(OSError):
                    sock.settimeout(per_read)
        # requests' own attributes for a body read (`Response.content` sets the same two).
        response._content = b"".join(parts)
        response._content_consumed = True

    def _too_large(self, method: Any, url: Any, declared: int | None = None) -> BodyTooLarge:
        what = f"{str(method).upper()} {urlsplit(str(url)).path}"
        return BodyTooLarge(f"{what}: {body_too_large(self.max_body_bytes, declared, self.remedy)}")

    def _abandon(self, method: Any, url: Any, size: int, started: float) -> None:
        elapsed = time.monotonic() - started
        log.warning(
            "alpaca.request_abandoned",
            method=str(method).upper(),
            path=urlsplit(str(url)).path,
            read_bytes=size,
            elapsed_s=round(elapsed, 3),
            deadline_s=self.deadline_s,
            rule="an answer still arriving at the request's deadline (a host trickling its "
            "body) is given up and its connection closed, freeing the worker thread",
        )
        raise DeadlineExceeded(
            f"{str(method).upper()} {urlsplit(str(url)).path}: no whole answer in "
            f"{self.deadline_s:g} s ({size} bytes read)"
        )
