"""A thread that runs jobs in submission order, one at a time, behind a bounded queue.

The SQLite store's connection lives on one: every database call runs there, so the event
loop never waits on SQLite (what aiosqlite did), and a live run's record batches are written
there while the engine waits for its next bar. It does not make a replay faster: making rows
is Python work and would take turns with the engine for the interpreter lock (replays write
in a process: storage/child.py).

Jobs are plain callables; `submit` returns a `concurrent.futures.Future` (await it with
`asyncio.wrap_future`). The queue is bounded: `submit` blocks while `max_jobs` jobs wait,
which is the back-pressure of last resort (callers that must not block an event loop keep
their own count of jobs in flight, below that bound). A job's exception is set on its future,
never lost; the thread itself keeps running.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class WriterThread:
    def __init__(self, name: str, max_jobs: int = 16) -> None:
        if max_jobs < 1:
            raise ValueError(f"writer thread {name}: max_jobs must be >= 1, got {max_jobs}")
        self.name = name
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=max_jobs)
        # Daemon: a process that ends without stopping its store (a crash) must not hang on
        # it; what was not written is lost then, as rows still in memory always were.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue `fn` after every job submitted before it; blocks while the queue is full."""
        if self._closed:
            raise RuntimeError(f"writer thread {self.name} is closed")
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut

    def close(self, timeout: float | None = None) -> None:
        """Run the jobs already queued, then end the thread and wait for it."""
        if not self._closed:
            self._closed = True
            self._jobs.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # the job's caller decides; the thread goes on
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            del item, fn, fut
