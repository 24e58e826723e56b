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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import structlog

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
