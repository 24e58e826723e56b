"""alpaca_sdk.DaemonWorker: calls run in order on daemon threads; after shutdown a call is
refused at once (it waited forever: no thread took it, or one read the stop marker first)."""

from __future__ import annotations

import threading

import pytest

from tradingd.alpaca_sdk import DaemonWorker


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
