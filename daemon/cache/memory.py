"""In-process cache: bounded, with per-entry TTL; the default when no Redis is configured,
and the fallback of the Redis cache while Redis is down."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryCache:
    """At most `max_entries` entries; a write beyond that evicts the oldest-written entry.
    With `max_value_bytes`, a larger value is not kept (and removes the key's older value),
    so memory is bounded by entries x value size. Expired entries are never returned.
    `clock` (seconds, monotonic) is injectable for tests."""

    def __init__(
        self,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        max_value_bytes: int | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_value_bytes is not None and max_value_bytes < 0:
            raise ValueError(f"max_value_bytes must be >= 0, got {max_value_bytes}")
        self.max_entries = max_entries
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        # key -> (value, expiry time or None)
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._data.clear()

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self._clock() >= expires:
            del self._data[key]
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if ttl_s is not None and ttl_s <= 0:
            self._data.pop(key, None)  # already expired
            return
        if self.max_value_bytes is not None and len(value) > self.max_value_bytes:
            self._data.pop(key, None)  # too big to keep; never return the older value
            return
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._data[key] = (bytes(value), expires)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
