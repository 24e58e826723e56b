"""Stale market data is a fault: no new exposure on prices the daemon cannot trust.

A symbol is *stale* when, at the current bar,

* ``missing``: its close has been NaN in more than `max_missing_bars` consecutive
  cross-sections the plugin saw (the feed delivers bars, but not for this symbol);
* ``age`` (only with `max_age`): its last real bar is more than `max_age` bars old, counted
  on the exchange calendar when one is given (`use_calendar`), so bars the feed never
  delivered at all (the engine skips those) count too; without a calendar, counted in bars
  the engine processed (`BarContext.index`);
* ``unchanged``: more than `max_unchanged_bars` consecutive real bars repeat the real bar
  before them, where a repeat means close, high and low all equal (NaN equals NaN) and the
  volume 0, NaN or equal to the earlier bar's. A real market prints new prices; a vendor
  serving a cached or forward-filled bar does not. Missing bars in between neither end nor
  extend a run of repeats.

The whole *feed* is stale when fewer than `min_fresh_share` of the symbols that were
delivering recently have a bar (a non-NaN close) at this bar: a feed that stays connected but
delivers next to nothing. "Delivering recently" means a real bar and not itself missing for
more than `max_missing_bars` bars (so listings, delistings and long halts do not count); while
the feed is stale that reference set is frozen, so the feed cannot turn "fresh" merely
because everything has been gone for long enough. `min_fresh_share = 0` turns the rule off.

While a symbol (or the whole feed) is stale, its target may not open or increase exposure:
a larger target on the same side is clipped to the current weight (position value / equity,
from `ctx.portfolio.quantity` and `ctx.mark`), a new entry is refused (target 0), and a flip
through zero is cut to zero. Reductions and exits go through unchanged. Each change is a
`RiskVerdict` (rule ``"stale_data"``, action ``"reject"`` for a refused entry, ``"clip"``
otherwise) whose reason says why the symbol is stale. Symbols that are not stale are never
touched.

This plugin never blocks an exit, but it cannot make one possible: a symbol without a bar at
this bar (NaN close) is not tradable (`ctx.tradable`), and the order planner places no order
for it, whatever the target. Its exit waits for its next bar.

Staleness clears by itself: a stale symbol is fresh again at its first *changed* real bar
(a bar that is not a repeat in the sense above); a bar that merely repeats the last known
one does not clear it. The feed is fresh again as soon as the share is back.

Transitions (a symbol turning stale or fresh, the feed turning stale or fresh) are logged
once each, at warning (stale) and info (fresh) level, as one event per bar and kind with up
to 20 symbols named; nothing is logged on bars without a transition. `stale_symbols()`,
`feed_stale`, `stale_counts()` and `status()` give the state to the health server and the
metrics. Memory is a fixed set of arrays the size of the universe.

The plugin only sees the bars on which the engine asks it (not warm-up or catch-up bars);
at its first bar it takes the previous bar from `ctx.history` when that holds one. Its
state lives in memory: after a restart it starts again from that first bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

import numpy as np
import structlog

from tradingd.core.ports import BarContext, RiskDecision
from tradingd.core.types import RiskVerdict

from .finite import nan_to_zero

log = structlog.get_logger(__name__)

RULE = "stale_data"
# Reason codes, in order of precedence when several hold at once.
_FRESH, _MISSING, _AGE, _UNCHANGED = 0, 1, 2, 3
REASONS = ("missing", "age", "unchanged")  # label values of `stale_counts()`
# Symbols named per transition log event (the rest are counted).
LOG_SYMBOLS = 20


class BarCalendar(Protocol):
    """What the plugin needs of `tradingd.clock.calendar.ExchangeCalendar`."""

    def bars_between(self, start: datetime, end: datetime) -> list[datetime]: ...


def _count(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class StaleDataConfig:
    # Stale after more than this many consecutive bars without a bar (NaN close).
    max_missing_bars: int = 2
    # Stale after more than this many consecutive bars repeating the one before (close, high,
    # low equal; volume 0, NaN or equal). Intraday universes of thin names may need more.
    max_unchanged_bars: int = 5
    # Stale when the last real bar is more than this many calendar bars old; None: off.
    max_age: int | None = None
    # The whole feed is stale when fewer than this share of the recently delivering symbols
    # have a bar; 0 turns the rule off.
    min_fresh_share: float = 0.5

    def __post_init__(self) -> None:
        _count(self.max_missing_bars, "max_missing_bars", 0)
        _count(self.max_unchanged_bars, "max_unchanged_bars", 1)
        if self.max_age is not None:
            _count(self.max_age, "max_age", 1)
        share = self.min_fresh_share
        if not (
            isinstance(share, int | float)
            and not isinstance(share, bool)
            and math.isfinite(share)
            and 0 <= share <= 1
        ):
            raise ValueError(f"min_fresh_share must be in [0, 1], got {share!r}")


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


class StaleData:
    """Blocks new exposure in symbols whose data is stale (see the module doc)."""

    kind: ClassVar[str] = "risk"
    Config = StaleDataConfig

    def __init__(
        self,
        config: StaleDataConfig,
        symbols: tuple[str, ...],
        calendar: BarCalendar | None = None,
    ) -> None:
        self.config = config
        self.symbols = tuple(symbols)
        self.name = "stale_data"
        self._calendar = calendar
        self._calendar_failed = False
        n = len(self.symbols)
        # Per symbol: the last real bar, and the runs counted since.
        self._prev = {f: np.full(n, np.nan) for f in ("close", "high", "low", "volume")}
        self._seen = np.zeros(n, dtype=bool)  # has had a real bar
        self._missing = np.zeros(n, dtype=np.int64)
        self._unchanged = np.zeros(n, dtype=np.int64)
        self._last_pos = np.zeros(n, dtype=np.int64)  # bar position of the last real bar
        # Per symbol: stale or not, why (a code and the count that decided it: bars missing,
        # bars of age, repeats; words only when asked for), and since which bar position.
        self._code = np.zeros(n, dtype=np.int8)
        self._count = np.zeros(n, dtype=np.int64)
        self._since = np.zeros(n, dtype=np.int64)
        # The feed rule's reference set: symbols delivering recently.
        self._live = np.zeros(n, dtype=bool)
        self._feed_stale = False
        self._feed_reason = ""
        self._feed_since: datetime | None = None
        # Where the plugin is: the bar it saw last, its engine index and calendar position.
        self._time: datetime | None = None
        self._index = 0
        self._pos = 0

    # -- wiring -------------------------------------------------------------------------------

    def use_calendar(self, calendar: BarCalendar | None) -> None:
        """Count bar ages (`max_age`) on the exchange calendar: bars the feed never delivered
        count. Without one, ages count the bars the engine processed."""
        self._calendar = calendar
        self._calendar_failed = False

    def required_features(self) -> tuple[str, ...]:
        return ()

    # -- state for the health server and metrics ----------------------------------------------

    @property
    def feed_stale(self) -> bool:
        """The whole feed is stale: every symbol is blocked from new exposure."""
        return self._feed_stale

    @property
    def feed_reason(self) -> str:
        return self._feed_reason

    def stale_symbols(self) -> dict[str, str]:
        """Symbol -> why it is stale, for the symbols stale on their own account (the feed
        rule is `feed_stale`)."""
        return {self.symbols[i]: self._reason(i) for i in np.flatnonzero(self._code).tolist()}

    def stale_counts(self) -> dict[str, int]:
        """Stale symbols per reason (bounded label set `REASONS`), for a gauge."""
        counts = np.bincount(self._code, minlength=len(REASONS) + 1)
        return {r: int(counts[i + 1]) for i, r in enumerate(REASONS)}

    def status(self) -> Mapping[str, Any]:
        """For `tradingd.health.status_check`: ok when neither the feed nor any symbol is
        stale; `detail` says what is (a few symbols named, the rest counted)."""
        stale = self.stale_symbols()
        parts = []
        if self._feed_stale:
            parts.append(f"feed stale since {_iso(self._feed_since)}: {self._feed_reason}")
        if stale:
            names = sorted(stale)
            shown = ", ".join(f"{s} ({stale[s]})" for s in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            parts.append(f"{len(names)} of {len(self.symbols)} symbols stale: {shown}{more}")
        ok = not parts
        return {
            "ok": ok,
            "detail": "data fresh" if ok else "; ".join(parts),
            "feed_stale": self._feed_stale,
            "feed_reason": self._feed_reason,
            "stale_symbols": stale,
            "counts": self.stale_counts(),
            "last_bar": _iso(self._time),
        }

    # -- the check ----------------------------------------------------------------------------

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        if ctx.time != self._time:  # the same bar twice changes nothing
            self._update(ctx)
        blocked = self._code != _FRESH
        if self._feed_stale:
            blocked = np.ones_like(blocked)
        if not blocked.any():
            return RiskDecision(targets)
        current = self._current_weights(ctx)
        same_side = targets * current >= 0
        toward_zero = same_side & (np.abs(targets) <= np.abs(current))
        allowed = np.where(toward_zero, targets, np.where(same_side, current, 0.0))
        out = np.where(blocked, allowed, targets)
        changed = np.flatnonzero(blocked & (out != targets))
        if not changed.size:
            return RiskDecision(targets)
        verdicts = []
        for i in changed.tolist():
            want, got, cur = float(targets[i]), float(out[i]), float(current[i])
            if cur == 0.0:
                action, what = "reject", "new entry refused"
            elif want * cur < 0:
                action, what = "clip", "flip cut to zero (the exit goes through)"
            else:
                action, what = "clip", f"increase clipped to the current weight {cur:.4f}"
            why = [self._reason(i)] if self._code[i] else []
            if self._feed_stale:
                why.append(f"whole feed stale: {self._feed_reason}")
            reason = f"stale data ({'; '.join(why)}): {what}"
            verdicts.append(
                RiskVerdict(self.name, self.symbols[i], action, reason, want, got, RULE)
            )
        return RiskDecision(out, tuple(verdicts))

    @staticmethod
    def _current_weights(ctx: BarContext) -> np.ndarray:
        pf = ctx.portfolio
        fallback = nan_to_zero(pf.weights)
        if not (pf.equity > 0 and math.isfinite(pf.equity)):
            return fallback
        with np.errstate(invalid="ignore"):
            w = pf.quantity * ctx.mark / pf.equity
        return np.where(np.isfinite(w), w, fallback)

    # -- state --------------------------------------------------------------------------------

    def _update(self, ctx: BarContext) -> None:
        c = self.config
        bar = ctx.bar
        first = self._time is None
        if first:
            self._seed(ctx)
        else:
            self._pos += self._bars_since(ctx.time, ctx.index)
        self._time, self._index = ctx.time, ctx.index
        pos = self._pos

        close = np.asarray(bar.close, dtype=np.float64)
        have = ~np.isnan(close)
        # The feed rule, on the reference set as it was before this bar.
        ref = int(self._live.sum())
        fresh = int((self._live & have).sum())
        feed_now = ref > 0 and fresh < c.min_fresh_share * ref

        # Runs of missing and repeated bars.
        vol = np.asarray(bar.volume, dtype=np.float64)
        repeat = (
            have
            & self._seen
            & _same(close, self._prev["close"])
            & _same(np.asarray(bar.high, dtype=np.float64), self._prev["high"])
            & _same(np.asarray(bar.low, dtype=np.float64), self._prev["low"])
            & (np.isnan(vol) | (vol == 0) | _same(vol, self._prev["volume"]))
        )
        changed = have & ~repeat
        self._missing = np.where(have, 0, self._missing + 1)
        self._unchanged = np.where(
            changed, 0, np.where(repeat, self._unchanged + 1, self._unchanged)
        )
        for f, prev in self._prev.items():
            np.copyto(prev, np.asarray(getattr(bar, f), dtype=np.float64), where=have)
        self._last_pos[have] = pos
        self._seen |= have

        # Symbol rules: what holds now, in order of precedence.
        missing = self._seen & (self._missing > c.max_missing_bars)
        age = pos - self._last_pos
        old = self._seen & (age > c.max_age) if c.max_age is not None else np.zeros_like(missing)
        repeated = self._unchanged > c.max_unchanged_bars
        code = np.where(
            missing, _MISSING, np.where(old, _AGE, np.where(repeated, _UNCHANGED, _FRESH))
        ).astype(np.int8)
        # Stale stays stale until a changed bar: a symbol that comes back with a repeat of its
        # last bar keeps its reason.
        was = self._code != _FRESH
        keep = was & (code == _FRESH) & ~changed
        code = np.where(keep, self._code, code)
        now = code != _FRESH
        turned_stale = np.flatnonzero(now & ~was)
        turned_fresh = np.flatnonzero(was & ~now)
        counts = np.where(missing, self._missing, np.where(old, age, self._unchanged))
        self._count = np.where(now & ~keep, counts, self._count)
        self._since[turned_stale] = pos
        self._code = code
        if turned_stale.size:
            log.warning(
                "risk.stale_data_symbols_stale",
                plugin=self.name,
                time=ctx.time,
                count=int(turned_stale.size),
                symbols={self.symbols[i]: self._reason(i) for i in turned_stale[:LOG_SYMBOLS]},
                more=max(0, int(turned_stale.size) - LOG_SYMBOLS),
                stale_now=int(now.sum()),
            )
        if turned_fresh.size:
            log.info(
                "risk.stale_data_symbols_fresh",
                plugin=self.name,
                time=ctx.time,
                count=int(turned_fresh.size),
                symbols={
                    self.symbols[i]: int(pos - self._since[i]) for i in turned_fresh[:LOG_SYMBOLS]
                },  # symbol -> bars it was stale
                more=max(0, int(turned_fresh.size) - LOG_SYMBOLS),
                stale_now=int(now.sum()),
            )

        # The whole feed.
        if feed_now:
            self._feed_reason = (
                f"{fresh} of {ref} recently delivering symbols have a bar "
                f"({fresh / ref:.0%} < {c.min_fresh_share:.0%})"
            )
        if feed_now and not self._feed_stale:
            self._feed_since = ctx.time
            log.warning(
                "risk.stale_data_feed_stale",
                plugin=self.name,
                time=ctx.time,
                fresh=fresh,
                of=ref,
                min_fresh_share=c.min_fresh_share,
            )
        elif self._feed_stale and not feed_now:
            log.info(
                "risk.stale_data_feed_fresh",
                plugin=self.name,
                time=ctx.time,
                fresh=fresh,
                of=ref,
                since=self._feed_since,
            )
            self._feed_reason = ""
            self._feed_since = None
        self._feed_stale = feed_now
        # The reference set: symbols delivering now join it; while the feed is healthy,
        # symbols gone for longer than max_missing_bars leave it (frozen while it is stale).
        self._live |= have
        if not feed_now:
            self._live &= self._missing <= c.max_missing_bars

    def _reason(self, i: int) -> str:
        c, k, n = self.config, int(self._code[i]), int(self._count[i])
        if k == _MISSING:
            return f"no bar for {n} bars (limit {c.max_missing_bars})"
        if k == _AGE:
            return f"last bar {n} bars old (limit {c.max_age})"
        if k == _UNCHANGED:
            return f"bar unchanged for {n} bars (limit {c.max_unchanged_bars})"
        return ""

    def _seed(self, ctx: BarContext) -> None:
        """At the first bar: the previous bar from the engine's history, when it has one."""
        h = ctx.history
        try:
            if h.length < 2:
                return
            rows = {f: np.asarray(h.window(f, 2)[0], dtype=np.float64) for f in self._prev}
        except (ValueError, AttributeError, TypeError, IndexError):
            return  # a history of one bar: start from this one
        if rows["close"].shape != (len(self.symbols),):
            return
        have = ~np.isnan(rows["close"])
        for f, prev in self._prev.items():
            np.copyto(prev, rows[f], where=have)
        self._seen |= have
        self._live |= have
        self._last_pos[have] = -1
        self._missing = np.where(have, 0, self._missing)

    def _bars_since(self, t: datetime, index: int) -> int:
        """Bars from the last bar seen to t (t included): on the calendar when there is one
        (bars the feed never delivered count), else the bars the engine processed."""
        assert self._time is not None
        processed = index - self._index if index > self._index else 1
        if self._calendar is None or self._calendar_failed or t <= self._time:
            return processed
        try:
            labels = self._calendar.bars_between(self._time, t)
        except (ValueError, TypeError) as exc:  # CalendarRangeError is a ValueError
            # Once: ages then count processed bars, which is what a run without one does.
            self._calendar_failed = True
            log.warning(
                "risk.stale_data_calendar_unusable",
                plugin=self.name,
                time=t,
                error=str(exc),
                hint="bar ages now count the bars the engine processed",
            )
            return processed
        expected = sum(1 for x in labels if x > self._time)
        return max(expected, processed)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None
