"""A loopback Alpaca market data API (`GET /v2/stocks/bars`, `GET /v1/corporate-actions`), for
alpaca-py's data and corporate-actions clients.

    async with AlpacaDataFake(book, key_id="kid", secret="sec") as fake:
        AlpacaDataClient(api_key="kid", secret_key="sec", base_url=fake.url)
        fake.faults.respond_next(recorded_body)    # serve a recorded fixture once
        fake.faults.fail_next(1, status=504)       # a one-off 504 (the caller retries it)
        fake.faults.throttle(1, retry_after="2")   # a 429 with a Retry-After header

As the fixtures README asks: both auth headers required (missing: 403 `forbidden.`; wrong: 401
`request is not authorized`); `X-RateLimit-Limit/Remaining/Reset` on every answer and 429 with
the same headers when `rate_limit` requests were used (or `faults.throttle(n)`); `limit`
applies to the total across symbols, symbols sorted then time, an opaque `next_page_token`
(null on the last page); an empty range gives `{"bars":{},"next_page_token":null}`;
`sip_delay_minutes` > 0 makes `feed=sip` requests for data newer than that a 403 (the free
plan's "subscription does not permit querying recent SIP data").

Bars come from the `BarBook`: daily bars stamped at New York midnight in UTC (04:00Z/05:00Z),
intraday bars at their start; `adjustment` raw (as traded), split, dividend or all (the
multiplicative dividend convention); the session in progress at `book.now` is included (its
daily bar partial), as Alpaca does. Corporate actions are the book's splits (announced
before their ex-date, as Alpaca's are), grouped as `forward_splits` / `reverse_splits` with
`new_rate` / `old_rate` as the smallest whole ratio, filtered by `symbols`, `types` and
`start`/`end` on the process date (Alpaca's docs: the date filter is by process date; a
split's is its ex-date here, as others have observed), paged like the bars.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

import pandas as pd
from aiohttp import web

from . import FAULT, NY, BarBook, FakeServer, Fault, truncated

TIMEFRAMES = {"1Day": 0, "1D": 0, "1Hour": 60, "1H": 60}


def _minutes(tf: str) -> int | None:
    if tf in TIMEFRAMES:
        return TIMEFRAMES[tf]
    for suffix in ("Min", "T"):
        if tf.endswith(suffix) and tf[: -len(suffix)].isdigit():
            return int(tf[: -len(suffix)])
    return None


def _ts(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    t = pd.Timestamp(value)
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).to_pydatetime()


class AlpacaDataFake(FakeServer):
    def __init__(
        self,
        book: BarBook | None = None,
        key_id: str = "test-key-id",
        secret: str = "test-secret-key",
        rate_limit: int = 0,
        sip_delay_minutes: int = 0,
    ) -> None:
        super().__init__(book)
        self.key_id = key_id
        self.secret = secret
        self.rate_limit = rate_limit  # 0 = unlimited
        self.sip_delay_minutes = sip_delay_minutes
        self.used = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/stocks/bars", self.bars)
        app.router.add_get("/v1/corporate-actions", self.corporate_actions)

    def _headers(self) -> dict[str, str]:
        limit = self.rate_limit or 200
        reset = int((self.book.now + timedelta(minutes=1)).timestamp())
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - self.used)),
            "X-RateLimit-Reset": str(reset),
        }

    def _json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps(obj),
            content_type="application/json",
            headers={**self._headers(), **(headers or {})},
        )

    def vendor_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "throttle":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return self._json({"code": 42910000, "message": "rate limit exceeded"}, 429, extra)
        if fault.kind == "down":
            return self._json({"message": "service unavailable"}, 503)
        return None

    def _refused(self, request: web.Request) -> web.Response | None:
        """The auth and rate-limit answers every endpoint gives first."""
        key, secret = (request.headers.get(h) for h in ("APCA-API-KEY-ID", "APCA-API-SECRET-KEY"))
        if not key or not secret:
            return self._json({"message": "forbidden."}, 403)
        if key != self.key_id or secret != self.secret:
            return self._json({"code": 40110000, "message": "request is not authorized"}, 401)
        self.used += 1
        if self.rate_limit and self.used > self.rate_limit:
            return self._json({"code": 42910000, "message": "rate limit exceeded"}, 429)
        return None

    async def corporate_actions(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        q = dict(request.query)
        symbols = {s for s in q.get("symbols", "").split(",") if s}
        types = {t for t in q.get("types", "").split(",") if t}
        start = date.fromisoformat(q["start"]) if q.get("start") else self.book.today()
        end = date.fromisoformat(q["end"]) if q.get("end") else self.book.today()
        rows: list[dict[str, Any]] = []
        for sym in sorted(self.book.splits):
            for ex, ratio in sorted(self.book.splits[sym].items()):
                kind = "forward_split" if ratio > 1 else "reverse_split"
                if (symbols and sym not in symbols) or (types and kind not in types):
                    continue
                process = ex  # a split's process date is its ex-date (not verified)
                if not start <= process <= end:
                    continue
                rate = Fraction(ratio).limit_denominator(1000)
                row: dict[str, Any] = {
                    "corporate_action_type": kind,
                    "symbol": sym,
                    "new_rate": rate.numerator,
                    "old_rate": rate.denominator,
                    "process_date": process.isoformat(),
                    "ex_date": ex.isoformat(),
                    "record_date": ex.isoformat(),
                    "payable_date": ex.isoformat(),
                }
                if kind == "forward_split":
                    row["cusip"] = "000000000"
                else:
                    row["old_cusip"], row["new_cusip"] = "000000000", "000000001"
                rows.append(row)
        offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        limit = int(q.get("limit") or 1000)
        nxt = offset + limit
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in rows[offset:nxt]:
            grouped.setdefault(row["corporate_action_type"] + "s", []).append(row)
        token = base64.b64encode(str(nxt).encode()).decode() if nxt < len(rows) else None
        return self._json({"corporate_actions": grouped, "next_page_token": token})

    async def bars(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        q = dict(request.query)
        tf = q.get("timeframe", "1Day")
        minutes = _minutes(tf)
        if minutes is None:
            return self._json({"code": 42210000, "message": f"invalid timeframe {tf}"}, 422)
        book = self.book
        start = _ts(q.get("start"), datetime(1970, 1, 1, tzinfo=UTC))
        end = _ts(q.get("end"), book.now)
        if (
            self.sip_delay_minutes
            and q.get("feed") == "sip"
            and end > book.now - timedelta(minutes=self.sip_delay_minutes)
        ):
            return self._json(
                {"message": "subscription does not permit querying recent SIP data"}, 403
            )
        adjustment = q.get("adjustment", "raw")
        symbols = sorted(s for s in q.get("symbols", "").split(",") if s)
        rows: list[tuple[str, dict[str, Any]]] = []
        fault = request.get(FAULT)
        for sym in symbols:
            if sym in book.unknown or fault == "empty":
                continue
            rows.extend((sym, bar) for bar in self._bars(sym, minutes, start, end, adjustment))
        if q.get("sort") == "desc":
            rows.sort(key=lambda r: (r[0], r[1]["t"]), reverse=True)
        offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        limit = int(q.get("limit") or 1000)
        page = rows[offset : offset + limit]
        nxt = offset + limit
        token = base64.b64encode(str(nxt).encode()).decode() if nxt < len(rows) else None
        grouped: dict[str, list[dict[str, Any]]] = {}
        for sym, bar in page:
            grouped.setdefault(sym, []).append(bar)
        body = {"bars": grouped, "next_page_token": token}
        if fault == "malformed":
            return web.Response(
                text=truncated(json.dumps(body)),
                content_type="application/json",
                headers=self._headers(),
            )
        return self._json(body)

    def _bars(
        self, sym: str, minutes: int, start: datetime, end: datetime, adjustment: str
    ) -> list[dict[str, Any]]:
        book = self.book
        out = []
        if minutes == 0:
            bars = book.daily(sym, start.astimezone(NY).date(), end.astimezone(NY).date())
        else:
            bars = book.intraday(sym, minutes, start, end + timedelta(seconds=1))
        for b in bars:
            if minutes == 0:
                stamp = datetime.combine(b.day, datetime.min.time(), NY).astimezone(UTC)
                if not (start <= stamp <= end):
                    continue
            else:
                stamp = b.start
            price_factor, volume_factor = 1.0, 1.0
            if adjustment in ("split", "all"):
                price_factor = 1.0 / book.split_after(sym, b.day)
                volume_factor = book.split_after(sym, b.day)
            if adjustment in ("dividend", "all"):
                price_factor *= book.dividend_factor_after(sym, b.day)
            out.append(
                {
                    "t": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "o": round(b.open * price_factor, 6),
                    "h": round(b.high * price_factor, 6),
                    "l": round(b.low * price_factor, 6),
                    "c": round(b.close * price_factor, 6),
                    "v": round(b.volume * volume_factor),
                    "n": 1000,
                    "vw": round((b.high + b.low) / 2 * price_factor, 6),
                }
            )
        return out
