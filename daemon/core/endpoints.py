"""A service's base URL in one spelling (`endpoint`), wherever two spellings of one URL must
mean one thing: the lock of a broker account (instance_lock: one account, one daemon) and the
key of a vendor's cached answers (feeds.response_cache: one endpoint, one set of answers).
And whether a host is this machine (`is_loopback`), one reading for every part that asks: the
health server's bind address and Host check, the alerts' plain-HTTP warning, the endpoint's
loopback spelling. And whether a store URL is PostgreSQL (`is_postgres_url`), one reading for
the config check, the store factory, the instance lock and the start-up checks."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# One machine's loopback under its usual spellings. Merging them can only make the account
# lock stricter (a server on 127.0.0.1:P and another on [::1]:P would count as one account,
# and the second daemon is refused with a message), never let two daemons trade one account;
# for a cache key it is one server under two names.
_LOOPBACK = {"localhost", "localhost.localdomain", "::1", "0:0:0:0:0:0:0:1"}


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    """Whether a store URL names PostgreSQL (either scheme, any case, spaces around)."""
    return (url or "").strip().lower().startswith(POSTGRES_SCHEMES)


def endpoint(base_url: str) -> str:
    """The endpoint as one spelling: scheme and host lower-cased, the default port made
    explicit, the loopback host's spellings (localhost, 127.x.x.x, ::1) as one, slashes after
    the path and repeated ones dropped, user info, query and fragment dropped (clients send
    credentials apart, and they never reach a lock name or a cache key). The path stays: it
    is part of where the requests go."""
    raw = (base_url or "").strip()
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")  # urlsplit lower-cases it
    try:
        port = parts.port
    except ValueError:
        port = None
    if not scheme or not host:
        return raw.rstrip("/").lower()  # not a URL a client could use: as written
    # (Not "127." as a prefix: 127.0.0.1.nip.io is a name, which may point anywhere.)
    if host in _LOOPBACK or is_loopback(host):
        host = "loopback"
    if ":" in host:
        host = f"[{host}]"
    port = port or _DEFAULT_PORTS.get(scheme)
    path = re.sub("/{2,}", "/", parts.path).rstrip("/")
    return f"{scheme}://{host}{f':{port}' if port else ''}{path}"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, "localhost"),
    read as the OS reads it when binding or connecting: the numeric forms getaddrinfo takes
    besides the dotted quad ("127.1", "0x7f.1", "2130706433": 127.0.0.1) too, which
    `ipaddress` refuses (a server bound to 127.1 was warned about as listening elsewhere).
    Never a DNS lookup: a host name other than localhost may resolve to anything, and is
    not asked about (AI_NUMERICHOST)."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    addresses = numeric_addresses(name) if name else []
    return bool(addresses) and all(_loopback_ip(a) for a in addresses)


def numeric_addresses(name: str) -> list[str]:
    """The addresses a numeric host `name` stands for, as getaddrinfo reads it without any
    lookup (AI_NUMERICHOST); [] for a host name, or anything else that is no address."""
    try:
        return [str(ipaddress.ip_address(name))]  # the usual forms, without a system call
    except ValueError:
        pass
    if "\x00" in name:  # the C call would read only what is before it
        return []
    try:
        infos = socket.getaddrinfo(name, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):  # a name, not an address
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def canonical_address(host: str) -> str | None:
    """The address a numeric host stands for, in its usual spelling ("127.1" -> "127.0.0.1",
    "[::1]" -> "::1"); None for a host name (or a name of several addresses)."""
    found = numeric_addresses(host.strip().strip("[]")) if host else []
    return found[0] if len(found) == 1 else None


def _loopback_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
