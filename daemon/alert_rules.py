"""What the live daemon alerts on, read from the engine after every bar (and the data
source's and the broker's conditions also every `alerts.check_interval_s` between bars:
`AlertTicker`).

`tradingd.alerts.Alerter` delivers (deduplicated, rate-limited); this module decides. Stateful
conditions fire once when they start and once when they clear (the alerter keeps the state):
- `kill_switch`: a risk plugin that can halt (`halted`) is halted: critical;
- `stale_data`: the stale-data gate blocks symbols or the whole feed;
- `source_down`: the market-data source's status is not ok (circuit open, errors);
- `broker_down`: the broker is not connected;
- `untradable_asset`: the broker refuses orders in a symbol as not tradable (Alpaca's
  `untradable`; keyed by symbol): no order is placed in it until it trades again (a
  warning; resolved then);
- `database_down`: the store spools its writes (database unreachable: warning) or cannot
  replay its spool (critical: the operator must act; a full spool stops the run);
- `redis_down`: the cache or the publisher has been without Redis (down, or refusing it)
  for `REDIS_ALERT_AFTER_S` (keyed `cache` / `publisher`; a warning: trading goes on from
  the in-process cache, events are dropped);
- `repeated_errors`: `repeated_after` bars in a row without a bar from the feed (a bar the
  clock released that the source could not deliver counts: the engine calls
  `bar_unavailable` for it, as it never steps it), or with the broker unreachable when
  orders were due;
- `risk_limit`: a risk plugin halts, flattens or scales the book (keyed by plugin and rule):
  fires at the first bar with such a verdict, resolves at the first bar without one. The
  drawdown guard returns its verdict on every bar of a halt: as an event it was sent again
  each time the dedup window passed, for as long as the halt lasted.
Events (one per key within the alerter's dedup window):
- `daily_summary`: at the first bar of a new exchange day, the previous day's close.
Reconciliation differences are reported by the code that finds them
(`condition(RECONCILIATION, symbol...)` in the engine's reconciliation).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from .alerts import (
    BROKER_DOWN,
    CRITICAL,
    DAILY_SUMMARY,
    DATABASE_DOWN,
    INFO,
    KILL_SWITCH,
    REDIS_DOWN,
    REPEATED_ERRORS,
    RISK_LIMIT,
    SOURCE_DOWN,
    STALE_DATA,
    UNTRADABLE_ASSET,
    WARNING,
    kill_switch_title,
)
from .core.sessions import session_date
from .engine.plugins import instance_keys

log = structlog.get_logger(__name__)

_BOOK_ACTIONS = frozenset({"halt", "flatten", "scale"})

# A Redis outage alerts once it has lasted this long: trading goes on without it, and a
# Redis restart takes seconds. It was seen only in the log and /ready (a 10-minute outage
# sent nothing).
REDIS_ALERT_AFTER_S = 300.0


class AlertRules:
    def __init__(
        self,
        alerter: Any,
        engine: Any,
        *,
        timezone: str = "America/New_York",
        repeated_after: int = 3,
        daily_bars: bool = False,
        evening_start: time | None = None,
    ) -> None:
        self.alerter = alerter
        self.engine = engine
        self.tz = ZoneInfo(timezone)
        # Where sessions open the evening before their date (CMES: 17:00 Chicago), that
        # local time: an intraday bar from it on is the next day's (`session_date`, as the
        # live clock and the portfolio's day count it). By the local date one CME session
        # had two daily summaries, split at Chicago midnight.
        self.evening_start = evening_start
        # A daily bar's time is its session's date at 00:00 UTC (a label, as stored), which
        # New York time puts on the evening before: "daily summary" of a Sunday.
        self.daily_bars = daily_bars
        self.repeated_after = repeated_after
        self._day: date | None = None
        self._day_close: dict[str, Any] | None = None
        self._unavailable_seen = 0
        self._broker_failures_seen = 0
        self._bad_bars = 0
        self._limits: set[str] | None = None  # the risk_limit keys firing (None: not read yet)
        # A firing risk_limit's key -> the bar from which its verdicts stopped (resolved once
        # they stay away for the dedup window).
        self._absent_since: dict[str, datetime] = {}
        # An unavailable bar is never stepped: the engine calls this hook for it instead of
        # `after_bar` (the daemon registers `after_bar`; this one goes with the rules).
        hooks = getattr(engine, "on_bar_unavailable", None)
        if isinstance(hooks, list):
            hooks.append(self.bar_unavailable)

    def after_bar(self, t: datetime, verdicts: list[Any]) -> None:
        """Called by the engine after each trading bar (never raises: alerting must not stop
        trading)."""
        try:
            self._evaluate(t, verdicts)
        except Exception:  # pragma: no cover - a bug here is logged, trading goes on
            log.exception("alerts.rules_failed")

    def between_bars(self) -> None:
        """The conditions that change while no bar comes (the data source, the broker):
        checked every `alerts.check_interval_s` as well (`AlertTicker`). With daily bars the
        broker going down on a Saturday alerted on Monday evening. Never raises."""
        try:
            self._services()
        except Exception:  # pragma: no cover - a bug here is logged, trading goes on
            log.exception("alerts.rules_failed")

    def _evaluate(self, t: datetime, verdicts: list[Any]) -> None:
        a, e = self.alerter, self.engine
        # Keyed per instance (`name#2` for a second one): by name, a halted guard's alert
        # was resolved at once by an unhalted second instance of the same plugin.
        for key, plugin in instance_keys(e.pipeline.risks):
            halted = getattr(plugin, "halted", None)
            if isinstance(halted, bool):
                a.condition(
                    KILL_SWITCH,
                    key,
                    halted,
                    title=kill_switch_title(key),
                    text=kill_switch_text(plugin),
                    severity=CRITICAL,
                    fields={"equity": round(e.portfolio.equity, 2), "bar": t.isoformat()},
                )
            stale = getattr(plugin, "stale_symbols", None)
            if callable(stale):
                symbols = stale()
                feed = bool(getattr(plugin, "feed_stale", False))
                a.condition(
                    STALE_DATA,
                    key,
                    feed or bool(symbols),
                    title="stale market data" + (": the whole feed" if feed else ""),
                    text=getattr(plugin, "feed_reason", "")
                    if feed
                    else ", ".join(f"{s} ({r})" for s, r in list(symbols.items())[:10]),
                    severity=WARNING,
                    fields={"symbols": len(symbols)},
                )
        self._risk_limits(t, verdicts)
        self._services()
        self._repeated(e)
        self._daily(t)

    def _risk_limits(self, t: datetime, verdicts: list[Any]) -> None:
        """`risk_limit` per plugin and rule: firing while its verdicts restrict the book,
        resolved once none has come for the alerter's `dedup_window_s` of bar time (at the
        next bar, with daily bars and the default 600 s): a limit that binds on every other
        bar (gross exposure hovering at its cap, with minute bars) fired and resolved at
        every bar. The limits firing before a restart (kept in the checkpoint,
        `Alerter.assume_firing`) are taken from the alerter at the first bar, so one that
        ended while the daemon was down still sends its resolution."""
        a = self.alerter
        if self._limits is None:
            firing = getattr(a, "firing", None)
            known = firing() if callable(firing) else []
            self._limits = {c["key"] for c in known if c["kind"] == RISK_LIMIT}
        now: dict[str, Any] = {}
        for v in verdicts:
            if v.action in _BOOK_ACTIONS:
                now.setdefault(f"{v.plugin}/{v.rule or v.plugin}", v)
        window = float(getattr(getattr(a, "config", None), "dedup_window_s", 0.0) or 0.0)
        lingering = set()
        for key in self._limits - now.keys():
            since = self._absent_since.setdefault(key, t)
            if (t - since).total_seconds() >= window:
                del self._absent_since[key]
                a.condition(RISK_LIMIT, key, False)
            else:
                lingering.add(key)
        for key in now:
            self._absent_since.pop(key, None)
        for key, v in now.items():
            a.condition(
                RISK_LIMIT,
                key,
                True,
                title=f"risk limit {key}: {v.action}",
                text=v.reason,
                severity=WARNING,
            )
        self._limits = set(now) | lingering

    def bar_unavailable(self, t: datetime) -> None:
        """Called by the engine for a bar the clock released that the source could not
        deliver (never stepped, so `after_bar` does not run for it): a bad bar for
        `repeated_errors`. Never raises."""
        try:
            self._repeated(self.engine)
        except Exception:  # pragma: no cover - a bug here is logged, trading goes on
            log.exception("alerts.rules_failed", bar=t.isoformat())

    def _services(self) -> None:
        a, e = self.alerter, self.engine
        feed_status = getattr(e.feed, "status", None)
        if callable(feed_status):
            st = feed_status()
            ok = bool(st.get("ok", True)) if isinstance(st, dict) else True
            a.condition(
                SOURCE_DOWN,
                "feed",
                not ok,
                title="market-data source unwell",
                text=str(st.get("detail", "")) if isinstance(st, dict) else "",
                severity=WARNING,
            )
        broker_status = getattr(e.broker, "status", None)
        if callable(broker_status):
            st = dict(broker_status())
            up = bool(st.get("started", True) and st.get("connected", True))
            a.condition(
                BROKER_DOWN,
                "broker",
                not up,
                title="broker not connected",
                text=str(st.get("last_error") or ""),
                severity=CRITICAL,
            )
            # Before the broker has read its assets (`assets_read`), a symbol held before a
            # restart is not in `untradable` yet: its alert is not resolved meanwhile.
            self._untradable(st.get("untradable"), known=st.get("assets_read") is not False)
        store_status = getattr(getattr(e, "store", None), "status", None)
        if callable(store_status):
            # Writes spooled while the database is down: nothing lost yet, but a restart on
            # another machine, or a full spool, would. /ready said so; no alert did.
            st = store_status()
            if isinstance(st, dict) and "ok" in st:
                a.condition(
                    DATABASE_DOWN,
                    "store",
                    not st["ok"],
                    title="database unreachable: writes spooled"
                    if st.get("state") == "degraded"
                    else "database writes failing",
                    text=str(st.get("detail", "")),
                    severity=WARNING if st.get("state") == "degraded" else CRITICAL,
                )

        for key in ("cache", "publisher"):
            self._redis(key, getattr(e, key, None))

    def _untradable(self, held: Any, *, known: bool = True) -> None:
        """`untradable_asset` per symbol the broker refuses orders in (its status's
        `untradable`: symbol -> why): a symbol no longer tradable got a refused order at
        every bar and no alert. Resolved once the broker holds it no more; those firing
        before a restart are taken from the alerter, and resolved only once the broker
        has read its assets (`known`): resolved before, they fired again at the first
        refused order, paging the operator twice for one asset."""
        now = dict(held) if isinstance(held, dict) else {}
        firing = getattr(self.alerter, "firing", None)
        for a in firing() if callable(firing) and known else []:
            if a["kind"] == UNTRADABLE_ASSET and a["key"] not in now:
                self.alerter.condition(UNTRADABLE_ASSET, a["key"], False)
        for symbol, why in now.items():
            self.alerter.condition(
                UNTRADABLE_ASSET,
                symbol,
                True,
                title=f"{symbol}: the broker refuses its orders (not tradable)",
                text=f"{why}. No order is placed in {symbol} until the broker's asset is "
                "tradable again (looked at with a back-off); its position stays as it is: "
                "check the asset at the broker (delisted, halted, renamed).",
                severity=WARNING,
            )

    def _redis(self, key: str, part: Any) -> None:
        """`redis_down` for the engine's cache or publisher (`key`), when it has had no Redis
        for `REDIS_ALERT_AFTER_S`. Parts without Redis (in-process cache, no publisher) have
        no `down_since` in their status and are not looked at."""
        part_status = getattr(part, "status", None)
        st = part_status() if callable(part_status) else None
        if not isinstance(st, dict) or "down_since" not in st:
            return
        since = st.get("down_since")
        long = False
        if not st.get("available", True) and isinstance(since, str):
            try:
                began = datetime.fromisoformat(since)
            except ValueError:
                began = None
            long = began is not None and (datetime.now(UTC) - began).total_seconds() >= (
                REDIS_ALERT_AFTER_S
            )
        self.alerter.condition(
            REDIS_DOWN,
            key,
            long,
            title=f"Redis unavailable to the {key} for over {REDIS_ALERT_AFTER_S / 60:g} minutes",
            text=str(st.get("detail", "")),
            severity=WARNING,
        )

    def _repeated(self, e: Any) -> None:
        new_errors = (e.bars_unavailable - self._unavailable_seen) + (
            e.broker_failures - self._broker_failures_seen
        )
        self._unavailable_seen, self._broker_failures_seen = e.bars_unavailable, e.broker_failures
        self._bad_bars = self._bad_bars + 1 if new_errors else 0
        failing = self._bad_bars >= self.repeated_after
        self.alerter.condition(
            REPEATED_ERRORS,
            "bars",
            failing,
            # The resolution keeps the firing's title ("errors on 0 bars in a row" said it).
            title=f"errors on {self._bad_bars} bars in a row" if failing else "",
            text=f"bars unavailable: {e.bars_unavailable}, broker failures: {e.broker_failures}",
            severity=WARNING,
        )

    def _daily(self, t: datetime) -> None:
        day = (
            t.astimezone(UTC).date()
            if self.daily_bars
            else session_date(t, self.tz, self.evening_start)
        )
        pf = self.engine.portfolio
        if self._day is not None and day != self._day and self._day_close is not None:
            self.alerter.event(
                DAILY_SUMMARY,
                self._day.isoformat(),
                title=f"daily summary {self._day.isoformat()}",
                text=f"equity {self._day_close['equity']:.2f}",
                severity=INFO,
                fields=self._day_close,
            )
        self._day = day
        self._day_close = {
            "equity": round(pf.equity, 2),
            "cash": round(pf.cash, 2),
            "positions": int((pf.quantity != 0).sum()),
            "drawdown": round(1 - pf.equity / pf.peak_equity, 4) if pf.peak_equity > 0 else 0.0,
            "trading_state": self.engine.trading_state,
        }


_RESET = "tradingd reset-halt or POST /reset-halt"


def kill_switch_text(plugin: Any) -> str:
    """What lifts a halted plugin, from its own configuration (`recovery`): under the
    drawdown guard's default cool-off the alert said only a deliberate reset would, though
    the guard lifts itself after `cooloff_bars`."""
    c: Any = getattr(plugin, "config", None)
    recovery = getattr(c, "recovery", None)
    flat = bool(getattr(c, "flatten_on_breach", False))
    what = "The book is closed and kept flat" if flat else "New entries are blocked"
    if recovery == "halt":
        return f"{what} until a deliberate reset ({_RESET})."
    if recovery == "cooloff":
        return (
            f"{what} for a cool-off of {c.cooloff_bars} bars (fewer if equity is back within "
            "the limit sooner); then the peak is re-based and trading resumes by itself. "
            f"A reset ({_RESET}) lifts it at once."
        )
    if recovery == "scale":
        what = (
            "The book is kept flat"
            if flat
            else f"Targets are scaled to {c.underwater_exposure:.0%}"
        )
        return (
            f"{what} while the drawdown is beyond the limit; full size returns by itself "
            f"once equity is back within it, or at a reset ({_RESET})."
        )
    return f"{what} while {plugin.name} is halted; a reset ({_RESET}) lifts it."


class AlertTicker:
    """An engine part: `AlertRules.between_bars` every `alerts.check_interval_s` (read from
    the alerter's settings at each tick, so a SIGHUP that changes it applies) while the
    engine trades: not while it starts (a broker not tried yet is not down) nor once it
    stops (a broker stopped on purpose is not down either)."""

    IDLE_S = 30.0  # how often a setting of 0 (only after bars) is looked at again

    def __init__(self, rules: AlertRules, alerter: Any) -> None:
        self.rules = rules
        self.alerter = alerter
        self._task: asyncio.Task[None] | None = None

    def interval_s(self) -> float:
        return float(getattr(self.alerter.config, "check_interval_s", 0.0))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._tick(), name="alert-ticker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def check(self) -> bool:
        """One tick: the conditions evaluated, when they should be (True then)."""
        engine = self.rules.engine
        trading = getattr(engine, "trading_started", True)
        if self.interval_s() > 0 and trading and not getattr(engine, "controls_closed", False):
            self.rules.between_bars()
            return True
        return False

    async def _tick(self) -> None:
        while True:
            interval = self.interval_s()
            await asyncio.sleep(interval if interval > 0 else self.IDLE_S)
            self.check()
