"""The trade stream's login: alpaca-py's `_auth` sends the keys and waits for the answer with
no timeout, so a server that accepted the socket and never answered left the stream
"connecting" for good (its pings kept the socket open). Our stream gives the login
`AUTH_TIMEOUT_S`, and alpaca-py's loop then closes the socket and reconnects after its
backoff, as for any connect that fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tradingd.brokers.alpaca import _TradeStream


class _SilentSocket:
    """A websocket that takes the login and never answers."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.waiting_cancelled = False

    async def send(self, message: str) -> None:
        self.sent.append(message)

    async def recv(self) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.waiting_cancelled = True
            raise


async def test_a_login_without_an_answer_is_given_up(monkeypatch) -> None:
    stream = _TradeStream("KEY", "SECRET", paper=True, raw_data=True, on_state=lambda up: None)
    monkeypatch.setattr(_TradeStream, "AUTH_TIMEOUT_S", 0.05)
    socket = _SilentSocket()
    stream._ws = socket
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30) as outer:
            await stream._auth()
    assert not outer.expired()  # the login's own timeout, not this test's
    assert socket.waiting_cancelled and '"authenticate"' in socket.sent[0]
