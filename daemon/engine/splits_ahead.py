"""Splits known ahead of their ex-date, for a live engine on a broker that owns the account.

Why: Alpaca splits a held position before the ex-date's session opens (what it does with
open orders in it is not relied on here: the run's own are cancelled); the book learns of
the split from the ex-date's own bar (its `split` field), after that session's close. An
order decided at the bar before (pre-split shares and prices) then fills at the ex-date's
open in post-split terms and is booked before the bar's split is applied on top of it; a
stop rests at a pre-split price far above the post-split one; a reverse split's fraction,
paid in cash by the broker, stays in the book.

What this does (the engine calls it; replays never build one):
- The lookup: the universe's splits going ex in the week from a session day whose bar has not
  been stepped (`window`), asked once per such day in a task of its own, off the bar's path:
  started when a bar is done for the next session day (so the eve's bar normally finds it
  done), at the start-up (before the first reconciliation: a split effective today, whose bar
  is still to come, is held), and again on the engine's heartbeat after a failure, or once
  the last answer is `refresh_s` old (an hour): a split announced after the day's lookup had
  answered was otherwise found only at the ex-date's own bar. A lookup
  that finds a split not known before tells `on_learned`: between bars (the eve's own lookup
  answering after its bar, the heartbeat's retry), the engine cancels its working orders in
  a symbol splitting at the next session, which no bar would before the open. A bar
  whose day has no lookup done waits for one at most `quick_s`, once per day. A failure is
  remembered: no new request before its backoff (`BACKOFF_S` doubling to `MAX_BACKOFF_S`),
  a warning once per day and kind of error naming the symbols held or ordered, `last_error`
  kept (/status) and `on_error` told (the engine's warning alert, cleared by a success).
  Nothing is assumed from a failure: the day's decisions go on as before.
- `due(t)`: the splits whose ex-date is after bar `t`'s day and no later than the next
  session's; the engine holds those symbols (no order, its resting orders cancelled, no exit
  placed) and keeps them in `held` until the ex-date's bar applies the split. `held` is in
  the checkpoint.
- `expected(symbol, book)`: what the broker may hold meanwhile (before or after its split), so
  a reconciliation on the ex-date before its bar agrees instead of blocking.
- `missing(t, split, valid)`: the held splits whose ex-date's bar is served without the split
  (a vendor posting the split event late). The broker has split the position already: the
  engine applies the announced ratio as the bar's split when the bar's prices show it
  (`shows_split`), and holds the symbol otherwise (never trading on the move).
- `applied(t, split)`: at a bar, the held splits it carries are done; one the bar should carry
  and does not is a warning (the book stays as the feed has it, and reconciliation says so);
  one whose ex-date bar is not served (NaN) waits for the next bar served (see `applied`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import structlog

from ..core.types import Split

log = structlog.get_logger(__name__)

# How far ahead splits are asked for: a week covers a long weekend's sessions.
LOOKAHEAD_DAYS = 7
# Without a calendar's next session: a split this many days ahead is held for (over a
# weekend and a holiday Monday; a Thursday's bar holds a Monday ex-date one bar early).
_NO_CALENDAR_DAYS = 4
_TOLERANCE = 1e-6
# What a bar (or the start-up) waits at most for the day's lookup, once a day.
QUICK_S = 3.0
# After a failed lookup, no new request for this long, doubled at each failure in a row.
BACKOFF_S = 60.0
MAX_BACKOFF_S = 1800.0
# A day's answer is asked for again once it is this old (on the heartbeat, or after a bar):
# announcements come at any hour, and one made after the eve's lookup answered must still
# cancel the run's orders before the open. An hour is 16 requests over a night.
REFRESH_S = 3600.0


def shows_split(previous_close: float, open_: float, ratio: float) -> bool:
    """Whether a bar's prices show a split of `ratio` the bar does not carry: the previous
    close over the bar's open is nearer the ratio than 1 (geometrically: a 4:1 moves the
    price to a quarter, a 1:10 to ten times), as validation's `split_without_price_move`
    compares a split with the move. A price missing or not positive shows nothing."""
    if not (previous_close > 0.0 and open_ > 0.0 and ratio > 0.0):
        return False  # NaN too
    move = math.log(previous_close / open_)
    return abs(move - math.log(ratio)) < abs(move)


def _log_crash(task: asyncio.Task[None]) -> None:
    """A lookup task that ended with an exception `_lookup` did not expect: logged (nothing
    awaits the task's result)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("split.lookup_crashed", task=task.get_name(), exc_info=exc)


class SplitSource(Protocol):
    async def splits(self, symbols: Sequence[str], start: date, end: date) -> list[Split]: ...

    def close(self) -> None: ...


class SplitsAhead:
    """See the module docstring. `day_of(t)` is bar `t`'s session date; `next_day(t)` the
    session date of the bar after `t` (None when no calendar can say)."""

    def __init__(
        self,
        source: SplitSource,
        symbols: Sequence[str],
        day_of: Callable[[datetime], date],
        next_day: Callable[[datetime], date | None],
        *,
        quick_s: float = QUICK_S,
        refresh_s: float = REFRESH_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.symbols = tuple(symbols)
        self._day_of = day_of
        self._next_day = next_day
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.quick_s = quick_s
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        # The splits announced, by symbol, not yet applied by a bar (the earliest first).
        self.known: dict[str, Split] = {}
        # Symbols held for a split at the next session, until its bar applies it.
        self.held: dict[str, Split] = {}
        # The latest session day whose lookup succeeded (its window starts there).
        self._fetched_for: date | None = None
        self._fetched_at = -math.inf  # monotonic time of that success
        self._task: asyncio.Task[None] | None = None
        self._task_for: date | None = None
        self._waited_for: date | None = None  # the day a bar (or the start-up) waited for
        self._retry_at = -math.inf
        self._backoff_s = BACKOFF_S
        self._warned: set[tuple[date, str]] = set()  # (day, kind): the failing day's only
        self._seen_split: set[Split] = set()  # held splits the broker was seen to have made
        self.lookups = 0  # requests started (a test counts them)
        self.last_error: str | None = None
        self.last_error_kind: str | None = None
        # Told the error of a failed lookup, None after one that worked (the engine alerts).
        self.on_error: Callable[[str | None], None] = lambda error: None
        # Told the splits a lookup found that were not known before it (the engine cancels
        # its working orders in one going ex at the next session: no bar may come before).
        self.on_learned: Callable[[Mapping[str, Split]], None] = lambda splits: None
        self.at_risk: Callable[[], Sequence[str]] = lambda: ()

    def day_of(self, t: datetime) -> date:
        """Bar `t`'s session day."""
        return self._day_of(t)

    def next_day(self, t: datetime) -> date:
        """The session day of the bar after `t`: the first day whose bar is not stepped."""
        return self._next_day(t) or self._day_of(t) + timedelta(days=1)

    @property
    def done_for(self) -> date | None:
        """The latest session day whose lookup succeeded."""
        return self._fetched_for

    def start(self, day: date) -> asyncio.Task[None] | None:
        """The lookup of the splits going ex from `day` (a session day whose bar is not
        stepped) through the week after it, in a task of its own: the one in flight if any,
        None when a later day's is done, `day`'s is done and younger than `refresh_s`, or a
        failure's backoff is running."""
        done = self._fetched_for
        if done is not None and (
            done > day or (done == day and self._monotonic() < self._fetched_at + self.refresh_s)
        ):
            return None
        if self._task is not None and not self._task.done():
            return self._task
        if self._monotonic() < self._retry_at:
            return None
        self._task_for = day
        self.lookups += 1
        self._task = asyncio.create_task(self._lookup(day), name=f"splits {day}")
        self._task.add_done_callback(_log_crash)
        return self._task

    async def wait_for_day(self, day: date) -> None:
        """At a bar (or the start-up) of session day `day`: when no lookup from `day` on has
        succeeded, its lookup is started (or the one in flight joined) and waited for at most
        `quick_s`, once per day; it goes on in the background after that."""
        if self._fetched_for is not None and self._fetched_for >= day:
            return
        if self._waited_for == day:
            return
        self._waited_for = day
        task = self.start(day)
        if task is not None:
            await asyncio.wait({task}, timeout=self.quick_s)

    async def _lookup(self, day: date) -> None:
        try:
            found = await self.source.splits(
                self.symbols, day, day + timedelta(days=LOOKAHEAD_DAYS)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: warned, never read as "no split"
            self._failed(day, exc)
            return
        self._retry_at = -math.inf
        self._backoff_s = BACKOFF_S
        if self.last_error is not None:
            log.info("split.lookup_recovered", day=day.isoformat())
        self.last_error = self.last_error_kind = None
        self._tell(None)
        if self._fetched_for is not None and self._fetched_for > day:
            return  # a later day's answer is here already
        self._fetched_for = day
        self._fetched_at = self._monotonic()
        known = {s.symbol: s for s in reversed(found) if s.ex_date >= day}
        learned = {sym: s for sym, s in known.items() if self.known.get(sym) != s}
        self.known = known
        if learned:
            self._learned(learned)

    def _failed(self, day: date, exc: Exception) -> None:
        kind = str(getattr(exc, "kind", "") or type(exc).__name__)
        retry_in = self._backoff_s
        self._retry_at = self._monotonic() + retry_in
        self._backoff_s = min(2 * self._backoff_s, MAX_BACKOFF_S)
        if self._fetched_for is not None and self._fetched_for >= day:
            # A refresh of a day already answered: that answer and the splits held stand,
            # so no "split lookup failing" warning and alert (a flaky source raised and
            # resolved one at each of a night's refreshes, saying a split at the next open
            # was not held for); asked again after the backoff.
            log.info(
                "split.refresh_failed",
                day=day.isoformat(),
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=retry_in,
                rule="the day's earlier answer stands; only a split announced since is "
                "not known until a refresh works",
            )
            return
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_kind = kind
        # Today's warnings only: a day's are not looked at again once a later day fails.
        self._warned = {w for w in self._warned if w[0] == day}
        if (day, kind) not in self._warned:
            self._warned.add((day, kind))
            log.warning(
                "split.lookup_failed",
                day=day.isoformat(),
                symbols=self._at_risk(),
                error=self.last_error,
                retry_in_s=retry_in,
                rule="no split is assumed absent: these symbols trade as before, and a split "
                "at the next open is found only by reconciliation and the ex-date's bar; "
                "asked again after the backoff (this warning once a day per kind of error)",
            )
        self._tell(self.last_error)

    def _tell(self, error: str | None) -> None:
        """`on_error` (the engine's alert): its failure is logged, never the lookup's."""
        try:
            self.on_error(error)
        except Exception:
            log.exception("split.on_error_failed", error=error)

    def _learned(self, splits: Mapping[str, Split]) -> None:
        """`on_learned`: its failure is logged, never the lookup's (the splits stay known:
        the next bar holds them)."""
        try:
            self.on_learned(splits)
        except Exception:
            log.exception("split.on_learned_failed", symbols=sorted(splits))

    def _at_risk(self) -> list[str] | None:
        """`at_risk()` sorted; None (logged) when it fails: the warning goes out anyway."""
        try:
            return sorted(self.at_risk())
        except Exception:
            log.exception("split.at_risk_failed")
            return None

    def status(self) -> dict[str, Any]:
        """For /status: the splits held, the last lookup's error, the day looked up."""
        return {
            "held": [{**s.to_dict(), "split": s.text()} for s in self.held.values()],
            "looked_up_for": self._fetched_for.isoformat() if self._fetched_for else None,
            "last_error": self.last_error,
        }

    def due(self, t: datetime) -> dict[str, Split]:
        """The splits at the session after bar `t` (added to `held`), and those held already
        whose bar has not come: the symbols no order may trade at this bar."""
        day = self._day_of(t)
        nxt = self._next_day(t) or day + timedelta(days=_NO_CALENDAR_DAYS)
        for sym, s in self.known.items():
            if day < s.ex_date <= nxt and sym not in self.held:
                self.held[sym] = s
                log.warning(
                    "split.ahead",
                    time=t,
                    symbol=sym,
                    ratio=s.text(),
                    ex_date=s.ex_date.isoformat(),
                    rule="no order in it for the ex-date's open and its resting orders are "
                    "cancelled; the ex-date's bar applies the split, and its exits are placed "
                    "again at post-split prices",
                )
        return dict(self.held)

    def expected(self, symbol: str, book: float) -> tuple[float, ...]:
        """The quantities the broker may hold for `book` while `symbol`'s split is held:
        the book's (not split yet), split, and split rounded toward zero (a fraction paid
        in cash). Empty when no split is held in it."""
        s = self.held.get(symbol)
        if s is None or not book:
            return ()
        split = book * s.ratio
        return (book, split, float(math.trunc(split + math.copysign(_TOLERANCE, split))))

    def first_seen(self, symbol: str) -> bool:
        """Whether the broker's split of `symbol`'s held split is seen for the first time
        (reconciliation says so once per split, not at every round of the ex-date)."""
        s = self.held[symbol]
        if s in self._seen_split:
            return False
        self._seen_split = {x for x in self._seen_split if x in self.held.values()}
        self._seen_split.add(s)
        return True

    def missing(self, t: datetime, split: np.ndarray, valid: np.ndarray) -> list[tuple[int, Split]]:
        """The held splits whose ex-date has come and whose bar `t` is served (`valid`) without
        a split (1.0), by column: Alpaca split the position before the session opened, and a
        vendor posting the split event late serves the bar with its prices moved and no split.
        The engine decides from the bar's prices (`shows_split`) before `applied` sees it."""
        day = self._day_of(t)
        return [
            (i, s)
            for sym, s in self.held.items()
            if s.ex_date <= day and split[i := self._index[sym]] == 1.0 and valid[i]
        ]

    def applied(self, t: datetime, split: np.ndarray, valid: np.ndarray) -> list[tuple[int, Split]]:
        """The held splits bar `t` applied (column, split): no longer held. One whose ex-date
        has come and whose bar carries no split (the engine gave it the announced ratio
        where its prices show it: `missing`) is dropped with a warning; one whose bar is
        missing (no bar: NaN) waits for the symbol's next bar. The live vendor feed carries a
        split to that bar only from an ex-date bar it held back (a jump beyond max_spike,
        feeds/suspect.py) and then kept: its split is served with the symbol's next bar. An
        ex-date bar that failed, was missing or was dropped is not carried: its split, if a
        later answer has it, is `data.late_action` (a bar posted late) and the next bar
        carries none: its prices, against the last close before the split, show it
        (`missing`)."""
        day = self._day_of(t)
        done: list[tuple[int, Split]] = []
        for sym, s in list(self.held.items()):
            if s.ex_date > day:
                continue
            i = self._index[sym]
            if split[i] != 1.0:
                if abs(split[i] - s.ratio) > 1e-3 * s.ratio:
                    log.warning(
                        "split.ratio_differs",
                        time=t,
                        symbol=sym,
                        announced=s.text(),
                        bar=float(split[i]),
                        rule="the bar's split is applied; reconciliation compares the result",
                    )
                done.append((i, s))
            elif valid[i]:
                log.warning(
                    "split.not_in_bar",
                    time=t,
                    symbol=sym,
                    announced=s.text(),
                    ex_date=s.ex_date.isoformat(),
                    rule="the bar's prices do not show it either: the book is not split; "
                    "the engine holds the symbol until reconciliation finds the book and the "
                    "broker agree",
                )
            else:
                continue
            del self.held[sym]
            self.known.pop(sym, None)
            self._seen_split.discard(s)
        return done

    def state(self) -> dict[str, Any]:
        return {
            "held": [s.to_dict() for s in self.held.values()],
            "known": [s.to_dict() for s in self.known.values()],
        }

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """A checkpoint's splits (absent from one written before they were kept)."""
        if not state:
            return
        self.held = {s.symbol: s for s in map(Split.from_dict, state.get("held", ()))}
        self.known = {s.symbol: s for s in map(Split.from_dict, state.get("known", ()))}

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.source.close()
