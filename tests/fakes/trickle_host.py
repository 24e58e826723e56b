"""A loopback HTTP host whose first answers trickle their body (a byte every `drip_s`, never
all of it), and whose later answers come whole: a slow drip that a per-read timeout never
trips (requests' and urllib3's timeouts are per socket read).

    with trickle_host(trickled=2, body='{"bars": {}, "next_page_token": null}') as host:
        ...  # host.url; host.wait_dropped(2) once the client gave the two up
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class TrickleHost:
    def __init__(self, url: str, trickled: int, body: str, drip_s: float) -> None:
        self.url = url
        self.trickled = trickled
        self.body = body.encode()
        self.drip_s = drip_s
        self.connections: list[socket.socket] = []
        self.requests: list[str] = []  # each request's first line, in order
        self.dropped = 0  # trickled answers the client closed before their end
        self._cond = threading.Condition()
        self.closed = threading.Event()

    def wait_dropped(self, n: int, timeout_s: float) -> bool:
        """True once the client closed `n` trickled answers (False after `timeout_s`)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.dropped >= n, timeout_s)

    def serve(self, conn: socket.socket, index: int) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            with self._cond:
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
            if index >= self.trickled:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body) + self.body
                )
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000\r\n\r\n"
            )
            while not self.closed.is_set():  # a byte at a time, for as long as it is read
                conn.sendall(b" ")
                time.sleep(self.drip_s)  # the host's pace, not a wait of the test's
        except OSError:
            if index < self.trickled and not self.closed.is_set():
                with self._cond:
                    self.dropped += 1
                    self._cond.notify_all()
        finally:
            conn.close()


@contextmanager
def trickle_host(trickled: int, body: str, drip_s: float = 0.02) -> Iterator[TrickleHost]:
    """`TrickleHost.url` trickles the body of its first `trickled` connections' answers and
    answers the later ones with `body` (HTTP 200, JSON) at once."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    host = TrickleHost(f"http://127.0.0.1:{srv.getsockname()[1]}", trickled, body, drip_s)

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            index = len(host.connections)
            host.connections.append(conn)
            threading.Thread(
                target=host.serve, args=(conn, index), daemon=True, name="trickle-host"
            ).start()

    threading.Thread(target=accept, daemon=True, name="trickle-host-accept").start()
    try:
        yield host
    finally:
        host.closed.set()
        srv.close()
        for c in host.connections:
            c.close()
