"""A cache of raw vendor responses, in Redis when it is there and in process when it is not.

Keys name the source and the request without any secret: `md:<source>:<symbol>:<interval>:`
followed by a SHA-256 digest of the vendor's endpoint (`endpoint`: the base URL's scheme, host,
port and path, without credentials or query) and the canonical request (the clients never put
a key, a token or a secret into the request description they pass; the digest also keeps
stray values out of sight). Without the endpoint, two feeds of one source on different
endpoints (a staging fake and the real vendor, two data plans' hosts) sharing a Redis
database were served each other's answers. Values are the response bodies as bytes, so a
parser fix applies to cached entries too.

Which responses may be cached (decided by the clients, documented here once): only a request
whose window is entirely **closed** at `now`, i.e. the close of its last bar label has passed.
A daily request for a window that includes today's session before its close is never cached
(its last bar is still moving); the same request after the close is, under a key that names
the window's dates, so a later window never reuses it. Expiry: `ttl_s` (3600 s by default,
`cache.expiry_s` of the configuration), which also bounds how long a vendor's late correction
of a closed bar can stay unseen. Only an answer that parsed and validated is stored: the
clients fetch within `held_writes` and store the answers of the symbols that worked once
validation is done (`HeldWrites.commit`). Stored when received, a transient glitch (a null
volume on the newest bar, a duplicated live row) was read back by every retry of the bar for
`ttl_s`, with no request, though the vendor was clean a minute later. Nor is an answer whose
newest bar is recent and lacks a symbol's bar that the others have (its last bar not posted
yet): every later ask within `ttl_s` was served that answer, without the symbol's bar, after
the vendor had it (`vendor.lacking_newest_bar`, `cache.response.partial_not_stored`).

Redis failures never fail a data call. `from_url` builds the primary with `open_cache`, a
`ResilientCache`: it falls back to its own in-process `MemoryCache` (at most 2,000 entries of
at most 1 MB each, with TTL) while Redis is down, reconnects in the background with backoff and
jitter, and never raises; `status()` then says which backend answers. A primary that raises
(a plain `RedisCache`, a test double) is handled here the same way: `get`/`set` fall back to
this object's `MemoryCache`, count the failure in CACHE_REQUESTS{result="error"}, and try the
primary again after `retry_after_s`; a primary that was down at start is connected later the
same way. Without a primary (no REDIS_URL) the in-process cache is the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import structlog

from ..cache.memory import MemoryCache
from ..core.endpoints import endpoint
from ..core.errors import RetryableError
from ..core.ports import Cache
from ..metrics import CACHE_REQUESTS
from .resilience import redact

log = structlog.get_logger(__name__)

# Set by `fresh_reads`: every get misses (tasks started within inherit it).
_FRESH: ContextVar[bool] = ContextVar("tradingd_fresh_reads", default=False)


@contextlib.contextmanager
def fresh_reads() -> Iterator[None]:
    """Within, every read misses and the vendor is asked again; answers are still stored.
    For a window whose answer lacked a bar that should be in it: a vendor that posts a bar
    seconds late had its answer without the bar cached for `ttl_s`, and every retry of the
    bar read that answer back (the bar was lost)."""
    token = _FRESH.set(True)
    try:
        yield
    finally:
        _FRESH.reset(token)


# Set by `held_writes`: writes wait there for the validation of the answers they store.
_HELD: ContextVar[HeldWrites | None] = ContextVar("tradingd_held_writes", default=None)


class HeldWrites:
    """Response-cache writes held until the answers they store are known to be good. Each
    write names the symbols its answer holds; `commit` stores those whose symbols were all
    served and drops the rest, so a retry asks the vendor again instead of reading back an
    answer that was refused."""

    def __init__(self) -> None:
        self._writes: list[tuple[ResponseCache, str, bytes, float, tuple[str, ...]]] = []

    def add(
        self, cache: ResponseCache, key: str, value: bytes, ttl: float, symbols: tuple[str, ...]
    ) -> None:
        self._writes.append((cache, key, value, ttl, symbols))

    def __len__(self) -> int:
        return len(self._writes)

    async def commit(self, refused: Collection[str], incomplete: Collection[str] = ()) -> int:
        """Store the held answers but those holding a symbol in `refused` (its answer did not
        parse or validate) or in `incomplete` (its answer lacks the recent bar the others
        have, which the vendor may still post: `vendor.lacking_newest_bar`). Called once; the
        writes are then gone. Returns how many answers were not stored for `incomplete`
        alone (the caller says which bar and symbols)."""
        writes, self._writes = self._writes, []
        dropped = partial = 0
        for cache, key, value, ttl, symbols in writes:
            if refused and any(s in refused for s in symbols):
                dropped += 1
                continue
            if incomplete and any(s in incomplete for s in symbols):
                partial += 1
                continue
            await cache.write(key, value, ttl)
        if dropped:
            log.debug("cache.response.not_stored", answers=dropped, refused=sorted(refused)[:10])
        return partial


@contextlib.contextmanager
def held_writes() -> Iterator[HeldWrites]:
    """Within (tasks started within inherit it), `ResponseCache.set` with `symbols` holds
    its write in the yielded `HeldWrites` instead of storing it; the caller commits them once
    the answers are validated. Leaving without a commit (an error, a cancellation) stores
    nothing."""
    held = HeldWrites()
    token = _HELD.set(held)
    try:
        yield held
    finally:
        _HELD.reset(token)


DEFAULT_TTL_S = 3600.0


def cache_key(
    source: str, symbol: str, interval: str, request: Mapping[str, Any], *, base_url: str
) -> str:
    """`md:<source>:<symbol>:<interval>:<digest>` of `endpoint(base_url)` and `request`;
    `request` must not hold secrets (a value under a secret-sounding name is refused, so a
    mistake fails loudly in tests)."""
    for name in request:
        low = str(name).lower()
        if any(part in low for part in ("apikey", "api_key", "secret", "token", "password")):
            raise ValueError(f"cache key request field {name!r} looks like a secret")
    canonical = json.dumps(
        {
            "endpoint": endpoint(base_url),
            "request": {str(k): request[k] for k in sorted(request, key=str)},
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return f"md:{source}:{symbol}:{interval}:{digest}"


class ResponseCache:
    """`primary` (e.g. the RedisCache of `open_cache(url)`; None = in-process only) with an
    in-process fallback. Not started caches are started by `start()`; a start failure is a
    warning, not an error."""

    def __init__(
        self,
        primary: Cache | None = None,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        fallback: MemoryCache | None = None,
        retry_after_s: float = 30.0,
        max_fallback_value_bytes: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s > 0:
            raise ValueError(f"response cache ttl_s must be > 0, got {ttl_s!r}")
        self.primary = primary
        self.fallback = fallback or MemoryCache(max_entries=2_000)
        self.ttl_s = float(ttl_s)
        self.retry_after_s = retry_after_s
        # The in-process fallback is bounded by entry count; this bounds its bytes too (a
        # multi-year history answer is not worth keeping in the daemon's memory).
        self.max_fallback_value_bytes = max_fallback_value_bytes
        self._clock = clock
        self._down_until: float | None = None if primary is not None else float("inf")
        self._started = False
        self.hits = 0
        self.misses = 0
        self.errors = 0

    @classmethod
    def from_url(cls, url: str | None, **kw: Any) -> ResponseCache:
        """From a cache URL as `open_cache` takes it ('' / memory:// = in-process only)."""
        from ..cache.factory import open_cache

        url = (url or "").strip()
        primary = None
        if url not in ("", "memory://"):
            primary = open_cache(
                url,
                name="responses",
                fallback_max_entries=2_000,
                max_fallback_value_bytes=kw.get("max_fallback_value_bytes", 1_000_000),
            )
        return cls(primary, **kw)

    @property
    def using_primary(self) -> bool:
        """Answers come from the primary (for a ResilientCache: Redis is up, not its
        in-process fallback)."""
        return (
            self.primary is not None
            and self._down_until is None
            and bool(getattr(self.primary, "available", True))
        )

    async def start(self) -> None:
        await self.fallback.start()
        self._started = True
        if self.primary is not None:
            await self._connect()

    async def stop(self) -> None:
        if self.primary is not None:
            try:
                await self.primary.stop()
            except Exception as exc:  # stopping must not fail the daemon's shutdown
                log.warning("cache.response.stop_failed", error=redact(exc))
        await self.fallback.stop()
        self._started = False

    async def _connect(self) -> bool:
        assert self.primary is not None
        try:
            await self.primary.start()
        except (RetryableError, OSError) as exc:
            self._mark_down("start", exc)
            return False
        if self._down_until is not None:
            log.info("cache.response.primary_back")
        self._down_until = None
        return True

    def _mark_down(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        CACHE_REQUESTS.labels(result="error").inc()
        if self._down_until is None:
            log.warning(
                "cache.response.primary_down",
                op=op,
                error=redact(exc),
                fallback="memory",
                retry_after_s=self.retry_after_s,
            )
        self._down_until = self._clock() + self.retry_after_s

    async def _primary_ready(self) -> bool:
        if self.primary is None:
            return False
        if self._down_until is None:
            return True
        if self._clock() < self._down_until:
            return False
        return await self._connect()

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = None
        if _FRESH.get():
            self.misses += 1
            CACHE_REQUESTS.labels(result="miss").inc()
            return None
        if await self._primary_ready():
            assert self.primary is not None
            try:
                value = await self.primary.get(key)
            except (RetryableError, OSError) as exc:
                self._mark_down("GET", exc)
        if value is None:
            value = await self.fallback.get(key)
        if value is None:
            self.misses += 1
            CACHE_REQUESTS.labels(result="miss").inc()
        else:
            self.hits += 1
            CACHE_REQUESTS.labels(result="hit").inc()
        return value

    async def set(
        self, key: str, value: bytes, ttl_s: float | None = None, *, symbols: Sequence[str] = ()
    ) -> None:
        """Store `value` under `key`; within `held_writes`, a write naming the `symbols` its
        answer holds waits for their validation (`HeldWrites.commit`)."""
        ttl = self.ttl_s if ttl_s is None else ttl_s
        held = _HELD.get()
        if held is not None and symbols:
            held.add(self, key, value, ttl, tuple(symbols))
            return
        await self.write(key, value, ttl)

    async def write(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` now, in the primary or else in the fallback."""
        if await self._primary_ready():
            assert self.primary is not None
            try:
                await self.primary.set(key, value, ttl)
                return
            except (RetryableError, OSError) as exc:
                self._mark_down("SET", exc)
        if len(value) <= self.max_fallback_value_bytes:
            await self.fallback.set(key, value, ttl)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": "primary" if self.using_primary else "memory",
            "primary_configured": self.primary is not None,
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "ttl_s": self.ttl_s,
        }
        primary_status = getattr(self.primary, "status", None)
        if callable(primary_status):
            out["primary"] = primary_status()
        return out
