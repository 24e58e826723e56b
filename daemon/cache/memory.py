"""In-process cache: bounded, with per-entry TTL; the default when no Redis is configured,
and the fallback of the Redis cache while Redis is down."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# A daemon that runs for months on its in-process cache (no Redis, or Redis down for days)
# must not hold more than this: live answers are keyed by their window's end, so each bar
# writes new keys and the old ones are never read (nor expired by a read) again.
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
# How often a write also drops every expired entry (seconds of the cache's clock).
SWEEP_EVERY_S = 60.0


class MemoryCache:
    """At most `max_entries` entries and `max_bytes` bytes of values; a write beyond either
    evicts the oldest-written entries. With `max_value_bytes`, a larger value is not kept
    (and removes the key's older value). Expired entries are never returned, and a write
    drops them all at most every `SWEEP_EVERY_S` (they are not left to the bounds: an
    entry nobody reads again would otherwise stay until evicted). `clock` (seconds,
    monotonic) is injectable for tests."""

    def __init__(
        self,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        max_value_bytes: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_value_bytes is not None and max_value_bytes < 0:
            raise ValueError(f"max_value_bytes must be >= 0, got {max_value_bytes}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_entries = max_entries
        self.max_value_bytes = max_value_bytes
        self.max_bytes = max_bytes
        self._clock = clock
        # key -> (value, expiry time or None)
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._next_sweep = clock() + SWEEP_EVERY_S

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        """The values' bytes held now."""
        return self._bytes

    def _pop(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0])

    def _sweep(self, now: float) -> None:
        expired = [k for k, (_, exp) in self._data.items() if exp is not None and now >= exp]
        for k in expired:
            self._pop(k)
        self._next_sweep = now + SWEEP_EVERY_S

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self._clock() >= expires:
            self._pop(key)
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        if ttl_s is not None and ttl_s <= 0:
            self._pop(key)  # already expired
            return
        size = len(value)
        if (self.max_value_bytes is not None and size > self.max_value_bytes) or (
            size > self.max_bytes
        ):
            self._pop(key)  # too big to keep; never return the older value
            return
        expires = None if ttl_s is None else now + ttl_s
        self._pop(key)
        self._data[key] = (bytes(value), expires)
        self._bytes += size
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            _, (old, _) = self._data.popitem(last=False)
            self._bytes -= len(old)
