"""A broker outage as a live engine's bars see it (`Engine.step`): the bars whose orders or
cancels could not reach the broker (RetryableError), from the first to the first bar that
gets through again.

Said at a bounded rate, nothing dropped: the first failing bar is one error line,
`broker.unavailable`, with the orders it could not place (as every failing bar was, so a
1-minute run down for an hour wrote 60 identical error lines, and for days thousands). Later
bars of the same outage are counted; an error line `broker.still_unavailable` says how many
bars and orders were missed since the last line and in all, once `REPEAT_FIRST` of bar time
has passed since it, the wait doubling up to `REPEAT_MAX` (a daily run says every bar; a
1-minute run down for an hour says 4 lines: at 0, 5, 15 and 35 minutes). The bars between
are debug lines. The first bar that reaches the broker again logs `broker.recovered` with
the outage's length (its first failing bar to that bar) and its counts. A bar that has
nothing to send neither fails nor ends an outage: it says nothing of the broker.

Bar times, not the wall clock: a live bar is stepped as it is released, and the lines are
the same in a replay of the bars (tests, an accelerated live run).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

log = structlog.get_logger(__name__)

REPEAT_FIRST = timedelta(minutes=5)
REPEAT_MAX = timedelta(hours=1)


class BrokerOutage:
    """The current broker outage of a live engine, if any (`since` None: none)."""

    def __init__(self, repeat_first: timedelta = REPEAT_FIRST, repeat_max: timedelta = REPEAT_MAX):
        self.repeat_first = repeat_first
        self.repeat_max = repeat_max
        self.since: datetime | None = None  # its first failing bar
        self.last_failed: datetime | None = None
        self.bars = 0  # failing bars, the first included
        self.orders = 0  # orders those bars planned and could not place (or not know placed)
        self.error = ""
        self._said_at: datetime | None = None
        self._wait = repeat_first
        self._unsaid_bars = 0
        self._unsaid_orders = 0

    def failed(self, t: datetime, error: str, orders: int) -> bool:
        """Bar `t` could not reach the broker (`error`; `orders` of its plan not placed):
        counted, and logged if due. Whether this bar's lines are said (the first failing bar,
        or a due repeat): the caller says its own (the orders closed as not placed) at the
        same rate."""
        if self.since is None:
            self.since, self._said_at, self._wait = t, t, self.repeat_first
            self.bars, self.orders = 1, orders
            self.last_failed, self.error = t, error
            self._unsaid_bars = self._unsaid_orders = 0
            log.error(
                "broker.unavailable",
                time=t,
                error=error,
                orders=orders,
                then=(
                    "each bar plans again from the broker's state; the bars of this outage "
                    "are counted and said in broker.still_unavailable (at most every "
                    f"{_text(self.repeat_max)}), its end in broker.recovered"
                ),
            )
            return True
        self.bars += 1
        self.orders += orders
        self.last_failed, self.error = t, error
        self._unsaid_bars += 1
        self._unsaid_orders += orders
        assert self._said_at is not None
        if t - self._said_at < self._wait:
            log.debug("broker.still_unavailable", time=t, error=error, orders=orders)
            return False
        self._wait = min(self._wait * 2, self.repeat_max)
        log.error(
            "broker.still_unavailable",
            time=t,
            error=error,
            since=self.since,
            down_for=_text(t - self.since),
            bars=self.bars,
            orders=self.orders,
            bars_since_last_line=self._unsaid_bars,
            orders_since_last_line=self._unsaid_orders,
            next_line_after=_text(self._wait),
        )
        self._said_at = t
        self._unsaid_bars = self._unsaid_orders = 0
        return True

    def got_through(self, t: datetime) -> None:
        """Bar `t` reached the broker (its cancels and orders sent): the outage, if one, ends."""
        if self.since is None:
            return
        log.info(
            "broker.recovered",
            time=t,
            since=self.since,
            last_failed=self.last_failed,
            down_for=_text(t - self.since),
            down_for_s=(t - self.since).total_seconds(),
            bars=self.bars,
            orders=self.orders,
            last_error=self.error,
        )
        self.since = self.last_failed = self._said_at = None
        self.bars = self.orders = self._unsaid_bars = self._unsaid_orders = 0
        self.error = ""

    def at_stop(self, t: datetime | None) -> None:
        """The run stops during an outage: its counts in one line (the bars since the last
        line were said at debug only)."""
        if self.since is None:
            return
        log.error(
            "broker.still_unavailable",
            time=t,
            error=self.error,
            since=self.since,
            down_for=_text(t - self.since) if t is not None else None,
            bars=self.bars,
            orders=self.orders,
            bars_since_last_line=self._unsaid_bars,
            orders_since_last_line=self._unsaid_orders,
            stopping=True,
        )

    def status(self) -> dict[str, Any] | None:
        """For /status: the outage going on (since, last failing bar, bars and orders missed,
        the last error), None when the last bar that sent anything reached the broker."""
        if self.since is None:
            return None
        return {
            "since": self.since,
            "last_failed": self.last_failed,
            "bars": self.bars,
            "orders": self.orders,
            "error": self.error,
        }


def _text(d: timedelta) -> str:
    """A duration as "1:05:00" or "2 days, 0:00:00" (timedelta's own text)."""
    return str(d)
