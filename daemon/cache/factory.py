"""Pick the cache from REDIS_URL."""

from __future__ import annotations

from typing import Any

from ..core.errors import ConfigError
from ..core.ports import Cache
from ..secrets import mask_url

VALID = "'' or memory:// (in-process), redis://host:port/db, rediss://host:port/db"


def open_cache(url: str | None, prefix: str = "tradingd:", **redis_options: Any) -> Cache:
    """A not-yet-started cache: in-process when url is empty, None or memory://; for a
    Redis URL a `ResilientCache` (Redis with an in-process fallback while Redis is down: it
    never raises and starts without Redis). `redis_options` go to `ResilientCache` (e.g.
    name, socket_timeout, fallback_max_entries, backoff_max_s)."""
    url = (url or "").strip()
    if url in ("", "memory://"):
        from .memory import MemoryCache

        return MemoryCache()
    if url.lower().startswith(("redis://", "rediss://", "unix://")):
        from .resilient import ResilientCache

        return ResilientCache(url, prefix=prefix, **redis_options)
    raise ConfigError(f"cache URL {mask_url(url)!r} has an unsupported scheme; valid: {VALID}")
