"""Splits known ahead of their ex-date, for a live engine on a broker that owns the account.

Why: Alpaca splits a held position before the ex-date's session opens (what it does with
open orders in it is not relied on here: the run's own are cancelled); the book learns of
the split from the ex-date's own bar (its `split` field), after that session's close. An
order decided at the bar before (pre-split shares and prices) then fills at the ex-date's
open in post-split terms and is booked before the bar's split is applied on top of it; a
stop rests at a pre-split price far above the post-split one; a reverse split's fraction,
paid in cash by the broker, stays in the book.

What this does (the engine calls it; replays never build one):
- `refresh` asks the corporate-actions source once per session day for the universe's splits
  going ex in the next week. A failure is a warning naming the symbols held or ordered and
  nothing is assumed: the day's decisions go on as before, and the next bar asks again.
- `due(t)`: the splits whose ex-date is the next session after bar `t`; the engine holds those
  symbols for that bar (no order, its resting orders cancelled, no exit placed) and keeps them
  in `held` until the ex-date's bar applies the split. `held` is in the checkpoint.
- `expected(symbol, book)`: what the broker may hold meanwhile (before or after its split), so
  a reconciliation on the ex-date before its bar agrees instead of blocking.
- `applied(t, split)`: at a bar, the held splits it carries are done; one the bar should carry
  and does not is a warning (the book stays as the feed has it, and reconciliation says so).
"""

from __future__ import annotations

import math
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
    ) -> None:
        self.source = source
        self.symbols = tuple(symbols)
        self._day_of = day_of
        self._next_day = next_day
        self._index = {s: i for i, s in enumerate(self.symbols)}
        # The splits announced, by symbol, not yet applied by a bar (the earliest first).
        self.known: dict[str, Split] = {}
        # Symbols held for a split at the next session, until its bar applies it.
        self.held: dict[str, Split] = {}
        self._fetched_for: date | None = None
        self.last_error: str | None = None

    async def refresh(self, t: datetime, at_risk: Callable[[], Sequence[str]]) -> None:
        """The announced splits, once per session day of `t`. `at_risk()`: the symbols held
        or ordered, named in the warning when the source fails."""
        day = self._day_of(t)
        if self._fetched_for == day:
            return
        try:
            found = await self.source.splits(
                self.symbols, day + timedelta(days=1), day + timedelta(days=LOOKAHEAD_DAYS)
            )
        except Exception as exc:  # any failure: warned, never read as "no split"
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "split.lookup_failed",
                time=t,
                symbols=sorted(at_risk()),
                error=self.last_error,
                rule="no split is assumed absent: these symbols trade as before, and a split "
                "at the next open is found only by reconciliation and the ex-date's bar; "
                "asked again at the next bar",
            )
            return
        self.last_error = None
        self._fetched_for = day
        self.known = {s.symbol: s for s in reversed(found) if s.ex_date > day}

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

    def applied(self, t: datetime, split: np.ndarray, valid: np.ndarray) -> list[tuple[int, Split]]:
        """The held splits bar `t` applied (column, split): no longer held. One whose ex-date
        has come and whose bar carries no split is dropped with a warning; one whose bar is
        missing waits for the symbol's next bar (the feed carries the split to it)."""
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
                    rule="the book is not adjusted (the feed's split field decides); "
                    "reconciliation holds the symbol if the broker has split it",
                )
            else:
                continue
            del self.held[sym]
            self.known.pop(sym, None)
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
        self.source.close()
