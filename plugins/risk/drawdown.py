"""Circuit breakers from the reference specification: max drawdown 20%, daily loss 5%.

Breaching the daily loss limit blocks new exposure for the bar on which it happened: targets
may only move toward zero (reductions and exits still go through, entries and increases do
not; a target on the other side of a held position closes it and opens nothing, as
`stale_data` does).

Breaching the drawdown limit starts a halt, and what ends it is the operator's choice
(`recovery`), because the right answer differs between a live account and a backtest:

* ``"cooloff"`` (the default): entries stay blocked for `cooloff_bars` bars (or until equity
  is back within the limit, if sooner); then the peak is re-based to the equity of that bar
  and trading resumes, so a later fall of another `max_drawdown_pct` from there trips it
  again. Measured from the all-time peak, a flat book can never climb back within the limit,
  so without a re-base the first breach would freeze a backtest for the rest of its history
  (the 500-stock backtest stopped trading in December 2002 that way).
* ``"halt"``: entries stay blocked until a deliberate `reset()`: right for a live account,
  where a person should look before trading resumes (`config/paper.toml` chooses it). In a
  backtest it never lifts, which the summary shows.
* ``"scale"``: while under water beyond the limit, targets are scaled by
  `underwater_exposure` instead of blocked; full size returns once equity is back within the
  limit of the peak.

`flatten_on_breach` closes every position when the drawdown limit is breached (and keeps the
book flat while halted) instead of only blocking new exposure.

The peak is the plugin's own (starting from the portfolio's peak when it first sees the book)
so that a re-base does not touch the portfolio. Every bar on which the guard restricts trading
returns a verdict with its rule (`max_drawdown` or `daily_loss_limit`); after the breach's
own bar a halt's reason names the breach (its bar and drawdown) and the drawdown now. The
engine logs a warning when a restriction starts and when it lifts and reports the periods in
the summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import numpy as np
import structlog

from tradingd.core.ports import BarContext, RiskDecision
from tradingd.core.types import RiskVerdict

log = structlog.get_logger(__name__)

RECOVERY = ("cooloff", "halt", "scale")
#: A drawdown or daily loss within this of its limit is at the limit, a breach (`>=`, as the
#: reasons say): 1 - 80000 / 100000 is 0.19999999999999996, below 0.20, and a 20% fall from
#: the peak was no breach, where 1 - 95000 / 100000 (0.050000000000000044) halted at 5%.
#: The fractions' rounding is ~1e-16; 1e-12 of equity is a thousandth of a cent per $10 M.
LIMIT_TOL = 1e-12


def at_limit(value: float, limit: float) -> bool:
    """`value >= limit`, with a value a rounding below the limit counted as at it."""
    return value >= limit - LIMIT_TOL


@dataclass(frozen=True)
class DrawdownGuardConfig:
    max_drawdown_pct: float = 0.20
    daily_loss_limit_pct: float = 0.05
    # Close everything on a drawdown breach instead of only blocking new exposure.
    flatten_on_breach: bool = False
    # What ends a drawdown halt: cooloff | halt (until reset) | scale (see the module doc).
    recovery: str = "cooloff"
    # "cooloff": bars to stay blocked before the peak is re-based (21 = about a month).
    cooloff_bars: int = 21
    # "scale": fraction of each target allowed while under water beyond the limit.
    underwater_exposure: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_drawdown_pct", "daily_loss_limit_pct"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.recovery not in RECOVERY:
            raise ValueError(
                f"recovery must be one of {', '.join(RECOVERY)}, got {self.recovery!r}"
            )
        if isinstance(self.cooloff_bars, bool) or not (
            isinstance(self.cooloff_bars, int) and self.cooloff_bars >= 1
        ):
            raise ValueError(f"cooloff_bars must be an integer >= 1, got {self.cooloff_bars!r}")
        if not (
            isinstance(self.underwater_exposure, int | float)
            and math.isfinite(self.underwater_exposure)
            and 0 <= self.underwater_exposure < 1
        ):
            raise ValueError(
                f"underwater_exposure must be in [0, 1), got {self.underwater_exposure!r}"
            )


class DrawdownGuard:
    kind: ClassVar[str] = "risk"
    Config = DrawdownGuardConfig

    def __init__(self, config: DrawdownGuardConfig, symbols: tuple[str, ...]) -> None:
        self.config = config
        self.name = "drawdown_guard"
        self._peak: float | None = None
        self._rebase_next = False
        self._halted_bars: int | None = None  # None: not halted; else bars since the breach
        # The bar of the breach that started the halt and the drawdown then, for its reason.
        self._breach_time: datetime | None = None
        self._breach_drawdown: float | None = None

    @property
    def halted(self) -> bool:
        return self._halted_bars is not None

    def reset(self) -> None:
        """The deliberate reset that ends a `recovery = "halt"` halt: the peak is re-based to
        the equity of the next bar."""
        if self._halted_bars is not None:
            log.warning("risk.drawdown_reset", plugin=self.name)
        self._halted_bars = None
        self._breach_time = self._breach_drawdown = None
        self._peak = None
        self._rebase_next = True

    def state(self) -> dict[str, Any]:
        """The kill switch survives a restart (the engine keeps this in its checkpoint): a
        halted guard stays halted until a deliberate reset, and its reason still names the
        breach."""
        t = self._breach_time
        return {
            "peak": self._peak,
            "rebase_next": self._rebase_next,
            "halted": self._halted_bars,
            "breach_time": None if t is None else t.isoformat(),
            "breach_drawdown": self._breach_drawdown,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._peak = None if state.get("peak") is None else float(state["peak"])
        self._rebase_next = bool(state.get("rebase_next", False))
        halted = state.get("halted")
        self._halted_bars = None if halted is None else int(halted)
        # Absent from checkpoints written before the reason named the breach.
        t, dd = state.get("breach_time"), state.get("breach_drawdown")
        self._breach_time = None if t is None else datetime.fromisoformat(t)
        self._breach_drawdown = None if dd is None else float(dd)

    def status(self) -> Mapping[str, Any]:
        """For `/ready` and `tradingd health` (`tradingd.health.status_check`): a halt that
        waits for a person (`recovery = "halt"`) is not ready, since the daemon opens nothing
        until the reset; with /ready at 200 and `trading_state` "active" an operator saw a
        healthy daemon. A cool-off or scaled exposure ends by itself: said, and ready."""
        c = self.config
        halted = self._halted_bars is not None
        t = self._breach_time
        data: dict[str, Any] = {
            "halted": halted,
            "recovery": c.recovery,
            "breach_time": None if t is None else t.isoformat(),
            "breach_drawdown": self._breach_drawdown,
            "max_drawdown_pct": c.max_drawdown_pct,
        }
        if not halted:
            return {"ok": True, "detail": "not halted", **data}
        since = "since an earlier breach" if t is None else f"since the breach at {t.isoformat()}"
        if self._breach_drawdown is not None:
            since += f" (drawdown {self._breach_drawdown:.2%}, limit {c.max_drawdown_pct:.2%})"
        if c.recovery == "halt":
            detail = (
                f"kill switch halted {since}: no new exposure until reset "
                "(POST /reset-halt, or tradingd reset-halt RUN while no daemon runs)"
            )
            return {"ok": False, "detail": detail, **data}
        ends = "cool-off" if c.recovery == "cooloff" else "exposure scaled while under water"
        return {"ok": True, "detail": f"restricted {since}: {ends}, ends by itself", **data}

    def required_features(self) -> tuple[str, ...]:
        return ()

    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision:
        pf = ctx.portfolio
        c = self.config
        if self._peak is None:
            self._peak = pf.equity if self._rebase_next else pf.peak_equity
            self._rebase_next = False
            if self._peak <= 0 or not math.isfinite(self._peak):
                self._peak = pf.equity
        self._peak = max(self._peak, pf.equity)
        drawdown = 1.0 - pf.equity / self._peak if self._peak > 0 else 0.0
        breached = at_limit(drawdown, c.max_drawdown_pct)

        if self._halted_bars is not None:
            self._halted_bars += 1
            if c.recovery == "cooloff" and (not breached or self._halted_bars >= c.cooloff_bars):
                if breached:
                    log.info(
                        "risk.drawdown_peak_rebased",
                        plugin=self.name,
                        old_peak=self._peak,
                        new_peak=pf.equity,
                        after_bars=self._halted_bars,
                    )
                    self._peak = pf.equity
                    drawdown, breached = 0.0, False
                self._halted_bars = None
            elif c.recovery == "scale" and not breached:
                self._halted_bars = None
        elif breached:
            self._halted_bars = 0
            self._breach_time, self._breach_drawdown = ctx.time, drawdown

        if self._halted_bars is not None:
            limit = c.max_drawdown_pct
            if c.recovery == "halt":
                why = "until reset"
            elif c.recovery == "cooloff":
                why = f"cool-off bar {self._halted_bars + 1} of {c.cooloff_bars}"
            else:
                why = f"exposure scaled to {c.underwater_exposure:.0%}"
            reason = self._halt_reason(drawdown, why)
            if c.flatten_on_breach:
                return RiskDecision(
                    np.zeros_like(targets),
                    (
                        RiskVerdict(
                            self.name, None, "flatten", reason, drawdown, limit, "max_drawdown"
                        ),
                    ),
                )
            if c.recovery == "scale":
                return RiskDecision(
                    targets * c.underwater_exposure,
                    (
                        # Hard: the scaling is carried out within the rebalance band too
                        # (halving 2% positions moved none of them: a 1% difference).
                        RiskVerdict(
                            self.name,
                            None,
                            "scale",
                            reason,
                            drawdown,
                            limit,
                            "max_drawdown",
                            hard=True,
                        ),
                    ),
                )
            return self._block(targets, pf.weights, reason, drawdown, limit, "max_drawdown")
        day_loss = 1.0 - pf.equity / pf.day_start_equity if pf.day_start_equity > 0 else 0.0
        if at_limit(day_loss, c.daily_loss_limit_pct):
            reason = f"daily loss {day_loss:.2%} >= limit {c.daily_loss_limit_pct:.2%}"
            return self._block(
                targets, pf.weights, reason, day_loss, c.daily_loss_limit_pct, "daily_loss_limit"
            )
        return RiskDecision(targets)

    def _halt_reason(self, drawdown: float, why: str) -> str:
        """At the breach, the drawdown against the limit; on the later bars of a halt, the
        breach that started it and the drawdown now: under `recovery = "halt"` the halt holds
        with the drawdown back below the limit, and the reason must not say it is above."""
        limit = self.config.max_drawdown_pct
        if self._halted_bars == 0:
            return f"drawdown {drawdown:.2%} >= limit {limit:.2%} ({why})"
        t, then = self._breach_time, self._breach_drawdown
        if t is None or then is None:  # restored from a checkpoint that did not record it
            since = "halted since an earlier breach"
        else:
            when = t.strftime("%Y-%m-%d %H:%M %Z").rstrip()
            since = f"halted since the breach on {when} (drawdown then {then:.2%})"
        return f"{since}; drawdown now {drawdown:.2%} (limit {limit:.2%}); {why}"

    def _block(
        self,
        targets: np.ndarray,
        current: np.ndarray,
        reason: str,
        value: float,
        limit: float,
        rule: str,
    ) -> RiskDecision:
        # A target that moves the position toward zero without crossing it is kept; one that
        # flips the position is cut to zero (the exit goes through, the new side does not
        # open); an entry or increase stays at the current weight.
        same_side = targets * current >= 0
        toward_zero = same_side & (np.abs(targets) <= np.abs(current))
        out = np.where(toward_zero, targets, np.where(same_side, current, 0.0))
        return RiskDecision(
            out, (RiskVerdict(self.name, None, "halt", reason, value, limit, rule),)
        )
