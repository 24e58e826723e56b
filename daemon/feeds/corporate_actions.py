"""Upcoming stock splits from Alpaca's corporate-actions data API, for the live engine.

Why: Alpaca splits a held position (open orders in it are not relied on) before the
ex-date's session opens, while the live feed shows the split only in the ex-date's own bar,
after that session's close (`alpaca_data.derive_actions`). A daemon that learns of the split
then has already traded the ex-date's open in pre-split terms. This source tells the engine
the day before (`engine/splits_ahead.py` holds the symbol for that bar).

The request goes through alpaca-py's `CorporateActionsClient` (`GET /v1/corporate-actions` on
the data host, `symbols`, `types=forward_split,reverse_split`, `start`/`end` inclusive;
alpaca-py follows `next_page_token` and merges the pages into
`{"forward_splits": [...], "reverse_splits": [...]}`), in a worker thread under the
`ResilientCaller`'s timeout, retries and breaker; requests gets the same timeout through the
client's session (alpaca-py sets none), per read and as each request's deadline, the body's
read included (`alpaca_sdk.DeadlineSession`). alpaca-py's own 429/504 retries are off: they sleep
inside the worker thread, which a timed-out call cannot stop; a 429's Retry-After goes to the
caller, which waits it (up to its `backoff_max_s`). The keys are scrubbed from every
message. A split's ratio is `new_rate / old_rate` (4.0 for 4:1, 0.1 for 1:10).

Alpaca's docs say `start`/`end` select by process date and that actions may appear late; for
a split the process date is its ex-date as others have observed (not verified here against a
real account): the window is asked from the first session day whose bar is still to come, so
a split is found on its ex-date's eve or, at the latest, before that day's bar. alpaca-py
deprecates the trading API's `/v2/corporate_actions/announcements` in favour of this one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import requests

from ..alpaca_sdk import DaemonWorker, DeadlineSession, no_sdk_retries
from ..core.types import Split
from .resilience import ResilientCaller, SourceConfig, error_for_status, make_error

SOURCE = "alpaca_corporate_actions"
DATA_URL = "https://data.alpaca.markets"
# Symbols per request: the query string stays well below URL limits for 500 symbols.
SYMBOLS_PER_REQUEST = 100
_KINDS = {"forward_splits": "forward_split", "reverse_splits": "reverse_split"}


def parse_splits(body: Mapping[str, Any], wanted: Sequence[str]) -> list[Split]:
    """The splits of `body` (alpaca-py's merged pages) for `wanted` symbols. A malformed
    entry raises ValueError naming its list, position, symbol and field: a split read wrong
    would scale a position wrongly, so none of the answer is used."""
    if not isinstance(body, Mapping):
        raise ValueError(f"corporate actions are a {type(body).__name__}, not an object")
    keep = set(wanted)
    out: list[Split] = []
    for key in _KINDS:
        rows = body.get(key) or []
        if not isinstance(rows, list):
            raise ValueError(f"{key} is a {type(rows).__name__}, not a list")
        for n, row in enumerate(rows):
            where = f"{key}[{n}]"
            if not isinstance(row, Mapping):
                raise ValueError(f"{where} is a {type(row).__name__}, not an object")
            sym = row.get("symbol")
            if not isinstance(sym, str) or not sym:
                raise ValueError(f"{where}: symbol {sym!r} is not a ticker")
            where += f" ({sym})"
            try:
                new, old = float(row["new_rate"]), float(row["old_rate"])
                ex = date.fromisoformat(str(row["ex_date"]))
            except KeyError as exc:
                raise ValueError(f"{where}: no field {exc}") from None
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            if not (new > 0 and old > 0 and math.isfinite(new) and math.isfinite(old)):
                raise ValueError(f"{where}: rates {new!r}/{old!r} must be positive numbers")
            if sym in keep and new != old:
                out.append(Split(sym, ex, new / old))
    return sorted(out, key=lambda s: (s.ex_date, s.symbol))


class AlpacaSplits:
    """Announced splits of a universe from Alpaca's corporate-actions API. See the module
    docstring."""

    name = SOURCE

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        *,
        base_url: str = DATA_URL,
        config: SourceConfig | None = None,
        request_timeout_s: float = 10.0,
    ) -> None:
        self._keys = (api_key, secret_key)
        self.base_url = base_url.rstrip("/")
        self.caller = ResilientCaller(SOURCE, config or SourceConfig.for_source("alpaca"))
        self.caller.add_secret(api_key)
        self.caller.add_secret(secret_key)
        self._request_timeout_s = request_timeout_s
        self._client: Any = None
        self._pool: DaemonWorker | None = None

    def __repr__(self) -> str:  # never show the keys
        return f"AlpacaSplits(base_url={self.base_url!r})"

    def _ensure(self) -> Any:
        if self._client is None:
            from alpaca.data.historical.corporate_actions import CorporateActionsClient

            client = CorporateActionsClient(
                self._keys[0], self._keys[1], raw_data=True, url_override=self.base_url
            )
            client._session = DeadlineSession(
                self._request_timeout_s,
                remedy="no day's announcements are that long: check broker.alpaca.data_url "
                "(the cap is fixed)",
            )
            no_sdk_retries(client)  # the caller retries, with backoff, outside the thread
            self._client = client
            self._pool = DaemonWorker("alpaca-ca")
        return self._client

    def close(self) -> None:
        """The worker thread and the session (the engine's stop): a request in flight is not
        waited for, here or at the interpreter's exit (the thread is a daemon)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._client is not None:
            self._client._session.close()
            self._client = None

    def _get_sync(self, symbols: list[str], start: date, end: date) -> Any:
        from alpaca.common.exceptions import APIError
        from alpaca.data.enums import CorporateActionsType
        from alpaca.data.requests import CorporateActionsRequest

        req = CorporateActionsRequest(
            symbols=symbols,
            types=[CorporateActionsType.FORWARD_SPLIT, CorporateActionsType.REVERSE_SPLIT],
            start=start,
            end=end,
        )
        try:
            return self._ensure().get_corporate_actions(req)
        except APIError as exc:
            status = exc.status_code or 0
            if status:
                response = exc.response
                raise error_for_status(
                    SOURCE,
                    status,
                    str(exc),
                    retry_after=response.headers.get("Retry-After")
                    if response is not None
                    else None,
                    secrets=self.caller.secrets,
                ) from None
            raise make_error(SOURCE, "malformed", self.caller.redact(exc)[:300]) from None
        except ValueError as exc:
            if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
                raise
            raise make_error(SOURCE, "malformed", self.caller.redact(exc)[:300]) from None

    async def splits(self, symbols: Sequence[str], start: date, end: date) -> list[Split]:
        """The splits of `symbols` processed from `start` through `end` (inclusive; a split's
        process date is its ex-date). Raises
        the caller's SourceError when Alpaca cannot answer, or a malformed one naming the
        entry that is wrong."""
        self._ensure()
        out: list[Split] = []
        for i in range(0, len(symbols), SYMBOLS_PER_REQUEST):
            chunk = list(symbols[i : i + SYMBOLS_PER_REQUEST])

            async def attempt(chunk: list[str] = chunk) -> Any:
                assert self._pool is not None
                return await asyncio.wrap_future(
                    self._pool.submit(self._get_sync, chunk, start, end)
                )

            body = await self.caller.call(attempt, what=f"splits {start}..{end}")
            try:
                out.extend(parse_splits(body, chunk))
            except ValueError as exc:
                raise make_error(SOURCE, "malformed", str(exc)[:300]) from None
        return out
