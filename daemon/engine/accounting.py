"""What the risk layer and the broker refused, kept per run so that nothing halts or rejects
trading silently: counts per plugin and rule, the periods in which a rule restricted trading,
and rejections by reason. The engine feeds these each bar; the summary reads them.

Restrictions ("halt", "flatten", "scale" verdicts: rules that stop or shrink new exposure)
are logged at warning level when they start and when they lift, because a backtest that
stopped trading in its third year must say so where the user looks. Clips and rejections of
single targets are routine and stay at debug level, counted here.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from ..core.types import Order, OrderStatus, RiskVerdict

log = structlog.get_logger(__name__)

RESTRICTING = frozenset({"halt", "flatten", "scale"})
# Verdicts that stop new exposure outright: the run's working entries that add to a position
# are cancelled on such a bar (see `RiskRecord.halting`).
BLOCKING = frozenset({"halt", "flatten"})
# A run that restricts on and off for decades keeps its first periods in full and counts
# the rest, so the record stays bounded.
MAX_PERIODS = 1000


def _debug_of(logger: Any) -> Any:
    """The logger's debug method, or None when its level filters debug lines out."""
    enabled = getattr(logger, "is_enabled_for", None)
    return logger.debug if enabled is None or enabled(logging.DEBUG) else None


def rule_of(v: RiskVerdict) -> str:
    return v.rule or v.plugin


@dataclass
class Restriction:
    plugin: str
    rule: str
    action: str
    start: datetime
    end: datetime
    bars: int
    reason: str  # the reason given on the first bar

    def to_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "rule": self.rule,
            "action": self.action,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "bars": self.bars,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Restriction:
        return cls(
            str(d["plugin"]),
            str(d["rule"]),
            str(d["action"]),
            datetime.fromisoformat(d["from"]),
            datetime.fromisoformat(d["to"]),
            int(d["bars"]),
            str(d.get("reason", "")),
        )


class RiskRecord:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.periods: list[Restriction] = []
        self.periods_dropped = 0
        self._open: dict[tuple[str, str], Restriction] = {}
        # The last bar's verdicts held a halt or flatten: kept as the open restrictions
        # change (not per bar), so the engine reads one attribute on the usual bar.
        self.halting = False

    def on_bar(self, time: datetime, verdicts: Sequence[RiskVerdict]) -> None:
        if not verdicts and not self._open:
            return  # nothing said and nothing in force: the usual bar
        seen: set[tuple[str, str]] = set()
        # One logger for the bar, and none when debug lines are filtered out: through the
        # module's proxy each call binds a new one (~5 us), and a replay meets hundreds of
        # thousands of verdicts (one per rejected entry).
        debug = _debug_of(log.bind()) if verdicts else None
        for v in verdicts:
            rule = rule_of(v)
            self.counts[f"{v.plugin}/{rule}"] += 1
            if debug is not None:
                debug(
                    "risk.verdict",
                    plugin=v.plugin,
                    rule=rule,
                    symbol=v.symbol,
                    action=v.action,
                    reason=v.reason,
                    requested=v.requested,
                    allowed=v.allowed,
                )
            if v.action not in RESTRICTING:
                continue
            key = (v.plugin, rule)
            if key in seen:
                continue
            seen.add(key)
            current = self._open.get(key)
            if current is None:
                self._open[key] = Restriction(v.plugin, rule, v.action, time, time, 1, v.reason)
                log.warning(
                    "risk.restriction_started",
                    plugin=v.plugin,
                    rule=rule,
                    action=v.action,
                    time=time,
                    reason=v.reason,
                )
            else:
                current.end = time
                current.bars += 1
        for key in [k for k in self._open if k not in seen]:
            self._close(self._open.pop(key), time)
        self.halting = any(r.action in BLOCKING for r in self._open.values())

    def state(self) -> dict[str, Any]:
        """What a live run's checkpoint keeps of the record: a restart built a new one, so
        the summary's counts restarted from 0 beside the restored `verdicts` total, and a
        halt in force was reported from the first bar after the restart, its start logged
        again."""
        return {
            "counts": dict(self.counts),
            "periods": [r.to_dict() for r in self.periods],
            "periods_dropped": self.periods_dropped,
            "open": [r.to_dict() for r in self._open.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """The record of `state()`: the restrictions in force continue (not started again)."""
        self.counts = Counter({str(k): int(v) for k, v in (state.get("counts") or {}).items()})
        self.periods = [Restriction.from_dict(d) for d in state.get("periods") or ()]
        self.periods_dropped = int(state.get("periods_dropped", 0))
        opened = (Restriction.from_dict(d) for d in state.get("open") or ())
        self._open = {(r.plugin, r.rule): r for r in opened}
        self.halting = any(r.action in BLOCKING for r in self._open.values())

    def finish(self, time: datetime | None) -> None:
        """At the end of the run: a restriction still in force is reported as such."""
        self.halting = False
        for key in list(self._open):
            r = self._open.pop(key)
            log.warning(
                "risk.restriction_in_force_at_end",
                plugin=r.plugin,
                rule=r.rule,
                action=r.action,
                since=r.start,
                bars=r.bars,
                reason=r.reason,
            )
            self._keep(r)

    def _close(self, r: Restriction, lifted_at: datetime) -> None:
        log.warning(
            "risk.restriction_lifted",
            plugin=r.plugin,
            rule=r.rule,
            action=r.action,
            since=r.start,
            time=lifted_at,
            bars=r.bars,
        )
        self._keep(r)

    def _keep(self, r: Restriction) -> None:
        if len(self.periods) < MAX_PERIODS:
            self.periods.append(r)
        else:
            self.periods_dropped += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def restricted_bars(self) -> int:
        return sum(r.bars for r in self.periods) + sum(r.bars for r in self._open.values())


def reason_kind(reason: str) -> str:
    """'insufficient buying power (required: 1234.50, available: 99.00)' ->
    'insufficient buying power': the reason without its numbers and names, for counting."""
    head = re.split(r"[(:'\"\d]", reason, maxsplit=1)[0].strip()
    return head or reason.strip() or "unspecified"


_REJECTED = OrderStatus.REJECTED  # a global: a class attribute of an enum is slow on 3.11


class RejectionRecord:
    """Orders the broker refused, at submission or later at fill time (a buy that finds too
    little cash at the next open): each is logged at warning level once and counted."""

    def __init__(self, explain: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[str] = set()
        # The first rejection of each kind may carry what the engine knows about its cause
        # (e.g. targets asking for more than the cash buys): 167 rejections for buying power,
        # none naming the sizing that caused them, left the user to guess.
        self._explain = explain

    def on_orders(self, orders: Iterable[Order], stage: str) -> None:
        for o in orders:
            if o.status is not _REJECTED or o.client_order_id in self._seen:
                continue
            self._seen.add(o.client_order_id)
            if len(self._seen) > 100_000:  # ids only guard against double counting
                self._seen.clear()
            kind = reason_kind(o.reason)
            first = kind not in self.counts
            self.counts[kind] += 1
            why = self._explain(kind) if first and self._explain is not None else {}
            log.warning(
                "order.rejected",
                stage=stage,
                symbol=o.symbol,
                side=str(o.side),
                quantity=o.quantity,
                cid=o.client_order_id,
                reason=o.reason,
                **why,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())
