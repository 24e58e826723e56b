"""A service's base URL in one spelling (`endpoint`), wherever two spellings of one URL must
mean one thing: the lock of a broker account (instance_lock: one account, one daemon) and the
key of a vendor's cached answers (feeds.response_cache: one endpoint, one set of answers)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# One machine's loopback under its usual spellings. Merging them can only make the account
# lock stricter (a server on 127.0.0.1:P and another on [::1]:P would count as one account,
# and the second daemon is refused with a message), never let two daemons trade one account;
# for a cache key it is one server under two names.
_LOOPBACK = {"localhost", "localhost.localdomain", "::1", "0:0:0:0:0:0:0:1"}


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
    if host in _LOOPBACK or host.startswith("127.") or host == "::ffff:127.0.0.1":
        host = "loopback"
    if ":" in host:
        host = f"[{host}]"
    port = port or _DEFAULT_PORTS.get(scheme)
    path = re.sub("/{2,}", "/", parts.path).rstrip("/")
    return f"{scheme}://{host}{f':{port}' if port else ''}{path}"
