"""Request budgets of outside services ("N requests per minute") as aiolimiter buckets.

aiolimiter's `AsyncLimiter(max_rate, time_period)` is a leaky bucket: it admits a burst of
`max_rate` at once and then drains at `max_rate / time_period`. Taken literally for a budget
of N per minute (`AsyncLimiter(N, 60)`) it admits N at once and N more over the next minute:
up to 2N in one 60-s window, which a vendor counting in windows answers with 429s. A bucket
of `burst` that drains at (N - burst) per period admits at most N in any window of the period
(the burst plus what drains during it), which is the vendor's rule whatever its window.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter


def window_limiter(limit: float, period_s: float = 60.0, burst: int | None = None) -> AsyncLimiter:
    """A limiter admitting at most `limit` acquisitions in any `period_s` window.

    `burst` (default: a tenth of the limit, at least 1) is how many go at once from rest;
    the larger it is, the slower the steady rate: (limit - burst) per period, so it must stay
    below the limit. A budget of at most one request per period admits one request per
    `period_s / limit`."""
    if not limit > 0 or not period_s > 0:
        raise ValueError(f"limit and period must be > 0, got {limit} per {period_s} s")
    if limit <= 1:
        return AsyncLimiter(1, period_s / limit)
    if burst is None:
        burst = max(1, int(limit // 10))
    if not 1 <= burst < limit:
        raise ValueError(f"burst must be at least 1 and below the limit {limit}, got {burst}")
    return AsyncLimiter(burst, burst * period_s / (limit - burst))
