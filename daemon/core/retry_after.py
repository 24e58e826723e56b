"""The one reader of an HTTP Retry-After header: the data feeds, the corporate actions, the
broker and the alert sinks wait what it gives, so they agree on both of HTTP's forms."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """The seconds a Retry-After header asks for, in either of HTTP's forms (delta-seconds
    or a date, RFC 9110). None when absent, unreadable or negative seconds: the caller
    backs off as it would without one. A date already past is 0: the server allows the
    retry now, and the callers wait their backoff all the same (a hint is a floor under it)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC with no source zone (RFC 5322)
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
