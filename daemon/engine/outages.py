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
the same in a replay of the bars (tests, an accelerated live run). The counting and the pace
are core/outages.py's `Outage`, which Alpaca's failing polls share (on the wall clock).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

from ..core.outages import REPEAT_FIRST, REPEAT_MAX, Outage, duration_text

log = structlog.get_logger(__name__)

__all__ = ["REPEAT_FIRST", "REPEAT_MAX", "BrokerOutage"]


class BrokerOutage:
    """The current broker outage of a live engine, if any (`since` None: none): an `Outage`
    (core/outages.py) of bars, said as the broker's."""

    def __init__(self, repeat_first: timedelta = REPEAT_FIRST, repeat_max: timedelta = REPEAT_MAX):
        self._outage = Outage(repeat_first, repeat_max, unit="bars")

    @property
    def repeat_first(self) -> timedelta:
        return self._outage.repeat_first

    @property
    def repeat_max(self) -> timedelta:
        return self._outage.repeat_max

    @property
    def since(self) -> datetime | None:  # its first failing bar
        return self._outage.since

    @property
    def last_failed(self) -> datetime | None:
        return self._outage.last_failed

    @property
    def bars(self) -> int:  # failing bars, the first included
        return self._outage.counts.get("bars", 0)

    @property
    def orders(self) -> int:  # orders those bars planned and could not place (or know placed)
        return self._outage.counts.get("orders", 0)

    @property
    def error(self) -> str:
        return self._outage.error

    def failed(self, t: datetime, error: str, orders: int) -> bool:
        """Bar `t` could not reach the broker (`error`; `orders` of its plan not placed):
        counted, and logged if due. Whether this bar's lines are said (the first failing bar,
        or a due repeat): the caller says its own (the orders closed as not placed) at the
        same rate."""
        due = self._outage.failed(t, error, orders=orders)
        if due is None:
            log.debug("broker.still_unavailable", time=t, error=error, orders=orders)
            return False
        if due.first:
            log.error(
                "broker.unavailable",
                time=t,
                error=error,
                orders=orders,
                then=(
                    "each bar plans again from the broker's state; the bars of this outage "
                    "are counted and said in broker.still_unavailable (at most every "
                    f"{duration_text(self.repeat_max)}), its end in broker.recovered"
                ),
            )
            return True
        assert self.since is not None
        log.error(
            "broker.still_unavailable",
            time=t,
            error=error,
            since=self.since,
            down_for=duration_text(t - self.since),
            bars=self.bars,
            orders=self.orders,
            bars_since_last_line=due.since_last_line.get("bars", 0),
            orders_since_last_line=due.since_last_line.get("orders", 0),
            next_line_after=duration_text(due.next_after),
        )
        return True

    def got_through(self, t: datetime) -> None:
        """Bar `t` reached the broker (its cancels and orders sent): the outage, if one, ends."""
        ended = self._outage.recovered(t)
        if ended is None:
            return
        log.info("broker.recovered", time=t, **ended.fields(), last_error=ended.error)

    def at_stop(self, t: datetime | None) -> None:
        """The run stops during an outage: its counts in one line (the bars since the last
        line were said at debug only)."""
        now = self._outage.summary(t)
        if now is None:
            return
        log.error(
            "broker.still_unavailable",
            time=t,
            error=now.error,
            since=now.since,
            down_for=duration_text(now.down_for) if now.down_for is not None else None,
            bars=self.bars,
            orders=self.orders,
            bars_since_last_line=now.since_last_line.get("bars", 0),
            orders_since_last_line=now.since_last_line.get("orders", 0),
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
