"""Pick the cache from REDIS_URL."""

from __future__ import annotations

from ..core.errors import ConfigError
from ..core.ports import Cache
from ..secrets import mask_url

VALID = "'' or memory:// (in-process), redis://host:port/db, rediss://host:port/db"


def open_cache(url: str | None, prefix: str = "tradingd:") -> Cache:
    """A not-yet-started cache: in-process when url is empty, None or memory://."""
    url = (url or "").strip()
    if url in ("", "memory://"):
        from .memory import MemoryCache

        return MemoryCache()
    if url.lower().startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisCache

        return RedisCache(url, prefix=prefix)
    raise ConfigError(f"cache URL {mask_url(url)!r} has an unsupported scheme; valid: {VALID}")
