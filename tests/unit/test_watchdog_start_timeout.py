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
