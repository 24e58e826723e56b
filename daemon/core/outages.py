"""An outage as a run of failures of one thing (a broker a live engine's bars could not reach,
a data source that did not deliver them, Alpaca's order polls), from its first failure to
the first success after it: counted, and said at a bounded rate by its owner.

The daemon runs for months: an outage must not write one identical line a failure (an hour's
outage at 1-minute bars was 60 lines, at 5-second polls 720), and nothing may be dropped
unseen. `Outage` decides when a failure's line is due and keeps the counts the lines carry;
the owner writes them (engine/outages.py: BrokerOutage, FeedOutage; AlpacaBroker's polls):
- the first failure is due at once (said in full, as before);
- later ones are counted; one is due once `repeat_first` has passed since the last line,
  the wait doubling up to `repeat_max` (at 1-minute failures and the defaults: at 0, 5, 15,
  35, 75 and 135 minutes, then every hour), and it carries the counts since the last line
  and in all;
  those between are the owner's debug lines;
- the first success ends it (`recovered`: its length, from the first failure, and counts);
- a stop during an outage says its counts (`stopping`), the failures since the last line
  included.

Times are the owner's: bar times for an engine's bars (the same lines in a replay of the
bars), the wall clock for what runs on it. A time before the last line's (the wall clock
stepped back) restarts the wait from it: no line is due early, and none later than the wait
after the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

REPEAT_FIRST = timedelta(minutes=5)
REPEAT_MAX = timedelta(hours=1)


@dataclass(frozen=True)
class Due:
    """A failure whose line is due (`Outage.failed`): the outage's first (`first`), or a
    repeat, with the counts since the last line (this failure's included) and the wait
    until the next (`next_after`)."""

    first: bool
    since_last_line: dict[str, int]
    next_after: timedelta


@dataclass(frozen=True)
class Summary:
    """An outage as it stands (at its end, at a stop): its first and last failure, length
    (`down_for`: from its first failure to `at`), counts in all and since the last line, and
    its last error."""

    since: datetime
    last_failed: datetime
    at: datetime | None
    counts: dict[str, int]
    since_last_line: dict[str, int]
    error: str

    @property
    def down_for(self) -> timedelta | None:
        return None if self.at is None else self.at - self.since

    def fields(self) -> dict[str, Any]:
        """For a log line: since, last_failed, down_for (text) and down_for_s, the counts."""
        d = self.down_for
        return {
            "since": self.since,
            "last_failed": self.last_failed,
            "down_for": duration_text(d) if d is not None else None,
            "down_for_s": d.total_seconds() if d is not None else None,
            **self.counts,
        }


class Outage:
    """The current outage of one thing, if any (`since` None: none). `counts` are the
    owner's (bars, orders, symbols ...), summed over the outage; the failures themselves
    are counted under `unit` (the outage's first included)."""

    def __init__(
        self,
        repeat_first: timedelta = REPEAT_FIRST,
        repeat_max: timedelta = REPEAT_MAX,
        *,
        unit: str = "failures",
    ):
        if repeat_first <= timedelta(0) or repeat_max < repeat_first:
            raise ValueError(
                f"an outage's repeat waits must be positive and repeat_max >= repeat_first: "
                f"repeat_first={repeat_first}, repeat_max={repeat_max}"
            )
        self.repeat_first = repeat_first
        self.repeat_max = repeat_max
        self.unit = unit
        self._reset()

    def _reset(self) -> None:
        self.since: datetime | None = None  # its first failure
        self.last_failed: datetime | None = None
        self.error = ""
        self.counts: dict[str, int] = {}
        self._unsaid: dict[str, int] = {}
        self._said_at: datetime | None = None
        self._wait = self.repeat_first

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def failures(self) -> int:
        return self.counts.get(self.unit, 0)

    def count(self, **counts: int) -> None:
        """Add to the outage's counts without a failure (what a failure led to later: a bar
        given up, lost), said with the next line. Outside an outage: nothing."""
        if self.since is None:
            return
        for k, n in counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
            self._unsaid[k] = self._unsaid.get(k, 0) + n

    def failed(self, t: datetime, error: str, **counts: int) -> Due | None:
        """A failure at `t` (`error`; `counts` what it missed): counted. Whether its line is
        due (`Due`: the outage's first, or a repeat), else None (the owner says it at debug).
        """
        if self.since is None:
            self._reset()
            self.since, self._said_at = t, t
            self.last_failed, self.error = t, error
            self.counts = {self.unit: 1, **counts}
            return Due(True, {}, self.repeat_first)
        self.last_failed, self.error = t, error
        self.count(**{self.unit: 1}, **counts)
        assert self._said_at is not None
        if t < self._said_at:  # the wall clock stepped back: the wait runs from here
            self._said_at = t
        if t - self._said_at < self._wait:
            return None
        self._wait = min(self._wait * 2, self.repeat_max)
        self._said_at = t
        unsaid, self._unsaid = self._unsaid, {}
        return Due(False, unsaid, self._wait)

    def recovered(self, t: datetime) -> Summary | None:
        """A success at `t`: the outage, if one, ends; its summary (None: there was none)."""
        summary = self.summary(t)
        if summary is not None:
            self._reset()
        return summary

    def forget(self) -> None:
        """No outage, whatever there was (a stop that said its counts: the next start counts
        afresh)."""
        self._reset()

    def summary(self, t: datetime | None) -> Summary | None:
        """The outage as it stands at `t` (a stop: its counts since the last line too), or
        None."""
        if self.since is None:
            return None
        assert self.last_failed is not None
        return Summary(
            since=self.since,
            last_failed=self.last_failed,
            at=t,
            counts=dict(self.counts),
            since_last_line=dict(self._unsaid),
            error=self.error,
        )


def duration_text(d: timedelta) -> str:
    """A duration as "1:05:00" or "2 days, 0:00:00" (timedelta's own text)."""
    return str(d)
