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

__all__ = ["REPEAT_FIRST", "REPEAT_MAX", "BrokerOutage", "FeedOutage"]


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


class FeedOutage:
    """The bars a live engine's data source did not deliver at their release (`feed.bars`
    raised RetryableError: no symbol could be fetched, or the bar is not posted yet), from
    the first to the first bar it delivers: an `Outage` of bars, said as the feed's.

    Each such bar wrote up to three warnings (`bar.unavailable`; intraday `bar.retry_stopped`
    when the next bar's release ended its retries; `bar.lost` once the bars kept to fetch
    again overflowed, or a newer bar came first), and each bar recovered later an info line
    (`bar.recovered`): a source down for an hour at 1-minute bars wrote 120 warnings. Now:
    - the outage's first bar is `bar.unavailable` in full (a warning, as before); its later
      bars are `bar.unavailable` debug lines, one a bar, and the warning
      `feed.still_unavailable` says the counts since the last line and in all once
      `REPEAT_FIRST` of bar time has passed since it, the wait doubling up to `REPEAT_MAX`
      (a daily run: every bar);
    - `bar.retry_stopped` is a warning for a bar whose line was said, else debug; the first
      `bar.lost` and the first `bar.recovered` of an outage are said as before, the later
      ones at debug: all counted (`given_up`, `lost`, `recovered`);
    - the first bar the source delivers logs `feed.recovered` (info) with the outage's
      length and counts; a stop during an outage says its counts.
    The engine's counters (`bars_unavailable`: `repeated_errors`; `bars_never_traded`)
    and /ready (the feed's own status) are not read from these lines and count every bar.
    """

    def __init__(
        self,
        symbols: int,
        repeat_first: timedelta = REPEAT_FIRST,
        repeat_max: timedelta = REPEAT_MAX,
    ):
        self.symbols = symbols  # each unavailable bar is every symbol's (none delivered)
        self._outage = Outage(repeat_first, repeat_max, unit="bars")
        self._said_bar: datetime | None = None  # the last bar whose line was said
        self._first_said: set[str] = set()  # of lost and recovered, said this outage

    @property
    def since(self) -> datetime | None:  # its first unavailable bar
        return self._outage.since

    @property
    def bars(self) -> int:
        return self._outage.counts.get("bars", 0)

    def unavailable(self, t: datetime, error: str, retry: str) -> None:
        """Bar `t` could not be fetched at its release (`error`; asked again: `retry`)."""
        due = self._outage.failed(t, error)
        self._said_bar = t if due is not None else self._said_bar
        if due is None or not due.first:
            log.debug("bar.unavailable", time=t, error=error, retry=retry)
        if due is None:
            return
        if due.first:
            self._first_said.clear()
            log.warning(
                "bar.unavailable",
                time=t,
                error=error,
                retry=retry,
                symbols=self.symbols,
                then=(
                    "the bars of this outage are counted and said in feed.still_unavailable "
                    f"(at most every {duration_text(self._outage.repeat_max)}), its end in "
                    "feed.recovered"
                ),
            )
            return
        assert self.since is not None
        counts = self._outage.counts
        log.warning(
            "feed.still_unavailable",
            time=t,
            error=error,
            retry=retry,
            since=self.since,
            down_for=duration_text(t - self.since),
            **self._counted(counts),
            **{f"{k}_since_last_line": n for k, n in self._counted(due.since_last_line).items()},
            next_line_after=duration_text(due.next_after),
        )

    def gave_up(self, t: datetime, **fields: Any) -> None:
        """The late retries of bar `t` stopped (`bar.retry_stopped`): said with its bar."""
        self._outage.count(given_up=1)
        said = self._outage.since is None or t == self._said_bar
        (log.warning if said else log.debug)("bar.retry_stopped", time=t, **fields)

    def lost(self, t: datetime, **fields: Any) -> None:
        """Bar `t` will never be stepped (`bar.lost`): the first of an outage said."""
        self._say_first("lost", log.warning, "bar.lost", time=t, **fields)

    def recovered_late(self, t: datetime) -> None:
        """Bar `t`, missed, came later and is stepped untraded (`bar.recovered`)."""
        self._say_first("recovered", log.info, "bar.recovered", time=t)

    def delivered(self, t: datetime) -> None:
        """The source delivered bar `t`: the outage, if one, ends."""
        ended = self._outage.recovered(t)
        if ended is None:
            return
        self._said_bar = None
        log.info(
            "feed.recovered",
            time=t,
            since=ended.since,
            last_unavailable=ended.last_failed,
            down_for=duration_text(t - ended.since),
            down_for_s=(t - ended.since).total_seconds(),
            symbols=self.symbols,
            **self._counted(ended.counts),
            last_error=ended.error,
        )

    def at_stop(self) -> None:
        """The run stops during an outage: its counts in one line (the bars since the last
        line were said at debug only)."""
        now = self._outage.summary(self._outage.last_failed)
        if now is None:
            return
        log.warning(
            "feed.still_unavailable",
            time=now.last_failed,
            error=now.error,
            since=now.since,
            down_for=duration_text(now.last_failed - now.since),
            **self._counted(now.counts),
            **{f"{k}_since_last_line": n for k, n in self._counted(now.since_last_line).items()},
            stopping=True,
        )

    def status(self) -> dict[str, Any] | None:
        """For /status: the outage going on (since, last unavailable bar, the counts of
        `feed.still_unavailable`, the last error), None once the source delivers a bar (or
        before it failed one)."""
        if self.since is None:
            return None
        return {
            "since": self.since,
            "last_unavailable": self._outage.last_failed,
            **self._counted(self._outage.counts),
            "error": self._outage.error,
        }

    def _say_first(self, kind: str, level: Any, event: str, **fields: Any) -> None:
        if self._outage.since is None:
            level(event, **fields)  # no outage going on: said as it was
            return
        self._outage.count(**{kind: 1})
        first = kind not in self._first_said
        self._first_said.add(kind)
        if first:
            level(
                event,
                **fields,
                then=f"the outage's later ones are debug lines, counted ({kind}) in "
                "feed.still_unavailable and feed.recovered",
            )
        else:
            log.debug(event, **fields)

    @staticmethod
    def _counted(counts: dict[str, int]) -> dict[str, int]:
        """bars, given_up, lost, recovered: each, 0 when none."""
        return {k: counts.get(k, 0) for k in ("bars", "given_up", "lost", "recovered")}
