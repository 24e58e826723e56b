"""A loopback host that accepts connections and never answers (a hung endpoint)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class HungHost:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: list[socket.socket] = []
        # Set at the first connection: a test waits for it instead of a fixed delay.
        self.connected = threading.Event()


@contextmanager
def hung_host() -> Iterator[HungHost]:
    """`HungHost.url` accepts and never answers; `connections` counts what was accepted."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    host = HungHost(f"http://127.0.0.1:{srv.getsockname()[1]}")

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            host.connections.append(c)
            host.connected.set()

    threading.Thread(target=accept, daemon=True, name="hung-host").start()
    try:
        yield host
    finally:
        srv.close()
        for c in host.connections:
            c.close()
