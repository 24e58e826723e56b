"""systemd's start timeout is extended while the start-up's warm-up runs. Sandbox trial
(from reading): a warm-up on Alpha Vantage's 5 calls a minute, ~75+ symbols, cannot reach
READY=1 within the unit's TimeoutStartSec=900; nothing extended it, so systemd killed the
start and restarted it, endlessly. The messages are read from a NOTIFY_SOCKET of our own."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tradingd.watchdog import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


async def _next(sock: socket.socket) -> str:
    return (await asyncio.to_thread(sock.recv, 4096)).decode()


async def test_the_start_timeout_is_extended_until_ready_then_no_more(notify_socket):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "set", "WATCHDOG_USEC": "120000000"})
    notifier.EXTEND_EVERY_S = 0.01
    await notifier.start()
    try:
        extensions = set()
        while len(extensions) < 3:  # at once, then renewed while the warm-up runs
            message = await _next(notify_socket)
            if message != "WATCHDOG=1":
                extensions.add(len(extensions))
                assert message == f"EXTEND_TIMEOUT_USEC={int(SystemdNotifier.EXTEND_BY_S * 1e6)}"
        assert SystemdNotifier.EXTEND_BY_S >= 60  # a stuck loop is still killed, but not soon
        notifier.ready()
        extender = notifier._extender
        assert extender is not None
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(extender, 5)
        notify_socket.setblocking(False)
        after_ready = []
        while True:
            try:
                after_ready.append(notify_socket.recv(4096).decode())
            except BlockingIOError:
                break
        assert "READY=1" in after_ready
        assert all(
            m.startswith(("EXTEND", "WATCHDOG"))
            for m in after_ready[: after_ready.index("READY=1")]
        )
        assert not any(m.startswith("EXTEND") for m in after_ready[after_ready.index("READY=1") :])
    finally:
        await notifier.stop()


async def test_outside_systemd_nothing_is_extended(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier({})
    await notifier.start()
    assert notifier._extender is None and notifier.sent == []
    await notifier.stop()


async def test_a_stop_during_start_up_ends_the_extensions_and_says_stopping_once(notify_socket):
    """Review: a SIGTERM during the warm-up ran the whole stop with the extender still
    sending EXTEND_TIMEOUT_USEC every minute; systemd applies it to the stopping state, so a
    wedged stop was never killed at TimeoutStopSec. The stop's first signal now ends them."""
    import threading

    got: list[str] = []
    reading = threading.Event()
    reading.set()

    def read() -> None:  # drained all along: a full socket queue would block the sender
        notify_socket.settimeout(0.05)
        while reading.is_set():
            try:
                got.append(notify_socket.recv(4096).decode())
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "set"})
    notifier.EXTEND_EVERY_S = 0.01
    await notifier.start()
    try:
        while not got:
            await asyncio.sleep(0.01)
        assert got[0].startswith("EXTEND_TIMEOUT_USEC=")
        notifier.stopping()  # the first stop signal (`_Daemon.on_signal`)
        extender = notifier._extender
        assert extender is not None
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(extender, 5)
        notifier.stopping()  # and the run's end: said once
        while "STOPPING=1" not in got:
            await asyncio.sleep(0.01)
    finally:
        reading.clear()
        reader.join(5)
        await notifier.stop()
    assert got.count("STOPPING=1") == 1
    assert not any(m.startswith("EXTEND") for m in got[got.index("STOPPING=1") :])


def test_the_first_stop_signal_tells_systemd_the_stop_has_begun():
    from tradingd.__main__ import _Daemon

    told: list[str] = []

    class Notifier:
        def stopping(self) -> None:
            told.append("stopping")

    daemon = _Daemon([])
    daemon.notifier = Notifier()
    daemon.on_signal(15)
    daemon.on_signal(2)
    assert told == ["stopping"]
