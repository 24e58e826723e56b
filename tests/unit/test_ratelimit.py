"""Request budgets: at most N requests in any window, which a vendor that counts in windows
(Alpaca 200/min, Alpha Vantage 5/min) accepts without a 429."""

from __future__ import annotations

import asyncio

import pytest
from aiolimiter import AsyncLimiter
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.ratelimit import window_limiter


def greedy_admissions(limiter: AsyncLimiter, seconds: float, step: float) -> list[float]:
    """Times (virtual) at which a caller that always wants more gets through, over
    `seconds`, checking every `step` seconds: the worst case for the vendor."""

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        now = [0.0]
        loop.time = lambda: now[0]  # type: ignore[method-assign]
        times: list[float] = []
        while now[0] <= seconds:
            while limiter.has_capacity():
                await limiter.acquire()  # has capacity: returns without waiting
                times.append(now[0])
            now[0] += step
        return times

    return asyncio.run(run())


def most_in_any_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@settings(max_examples=25, deadline=None)
@given(
    limit=st.integers(min_value=2, max_value=300),
    burst_share=st.floats(min_value=0.0, max_value=1.0),
)
def test_never_more_than_the_limit_in_any_window(limit: int, burst_share: float) -> None:
    burst = max(1, min(limit - 1, round(limit * burst_share)))
    times = greedy_admissions(window_limiter(limit, 60.0, burst), 240.0, 0.02)
    assert most_in_any_window(times, 60.0) <= limit
    # ...and it is not needlessly slow: over 4 minutes it uses most of the budget.
    assert len(times) >= 0.9 * 4 * (limit - burst)


def test_aiolimiter_taken_literally_would_break_the_budget() -> None:
    """Why window_limiter exists: AsyncLimiter(N, 60) admits about 2N in the first minute."""
    times = greedy_admissions(AsyncLimiter(200, 60.0), 120.0, 0.25)
    assert most_in_any_window(times, 60.0) > 300
    times = greedy_admissions(window_limiter(200, 60.0, 20), 120.0, 0.25)
    assert most_in_any_window(times, 60.0) <= 200


def test_fractional_budget_and_bad_arguments() -> None:
    times = greedy_admissions(window_limiter(0.5, 60.0), 600.0, 1.0)
    assert most_in_any_window(times, 120.0) <= 1
    with pytest.raises(ValueError, match="limit"):
        window_limiter(0)
    with pytest.raises(ValueError, match="burst"):
        window_limiter(10, 60.0, 10)
