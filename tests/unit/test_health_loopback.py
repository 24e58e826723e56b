"""`is_loopback`, the health server's check of its bind address and of a request's Host, as
the OS reads an address: the numeric forms getaddrinfo takes besides the dotted quad
("127.1" is 127.0.0.1) are loopback, and no host name but localhost is looked up."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tradingd.health import is_loopback


@pytest.mark.parametrize(
    "host",
    [
        "127.1",  # short IPv4 form: 127.0.0.1 to getaddrinfo, refused by `ipaddress`
        "127.0.1",
        "0x7f.1",
        "2130706433",
        "127.0.0.1",
        "127.8.9.10",
        " 127.1 ",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "localhost",
        "LocalHost",
    ],
)
def test_loopback_as_the_os_reads_it(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "0",  # 0.0.0.0: every interface
        "::",
        "1",  # 0.0.0.1
        "10.0.0.5",
        "10.1",
        "fe80::1%eth0",
        "example.com",
        "127.1.evil.example",
        "evil.localhost",
        "127.1\x00",
        "",
        "[]",
        "\u0661\u0662\u0667.1",  # other digits: a name, not an address
    ],
)
def test_not_loopback(host):
    assert not is_loopback(host)


def test_no_name_is_looked_up(monkeypatch):
    """A host name other than localhost may resolve to anything, and resolving it at start
    would wait on DNS: only numeric reads (AI_NUMERICHOST) are asked of the system."""
    calls: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def recording(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((host, args, kwargs))
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    for host in ("127.1", "example.com", "tradingd", "0x7f.1"):
        is_loopback(host)
    assert calls, "the short forms are read by getaddrinfo"
    for host, args, kwargs in calls:
        flags = kwargs.get("flags", args[3] if len(args) > 3 else 0)
        assert flags & socket.AI_NUMERICHOST, host
