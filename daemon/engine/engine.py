"""The per-bar pipeline, the same for replay backtests and live paper trading.

    bars(t) -> splits, dividends -> broker fills (orders of t-1 at t's open) -> mark to market
            -> features(t) -> signal plugins -> sizing -> risk plugins -> orders -> broker
            -> store / audit / cache

The engine never asks which mode it is in: the clock, the feed and the broker it is given
decide that (see `tradingd.app`). Everything on the hot path works on the cross-section of the
universe as arrays; only orders and fills, a handful per bar, are Python objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import numbers
import re
import time as _time
import weakref
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
    Set,
)
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import structlog

from .. import faults, metrics
from ..alerts import (
    CRITICAL,
    INFO,
    KILL_SWITCH,
    RECONCILIATION,
    RISK_LIMIT,
    SOURCE_DOWN,
    UNTRADABLE_ASSET,
    WARNING,
    kill_switch_title,
)
from ..core.arrays import count_nonzero, read_only_alias, read_only_copy, scalar, where
from ..core.errors import (
    ConfigError,
    ControlNotStoredError,
    EngineStoppedError,
    PluginFault,
    RetryableError,
    StoreCheckStopped,
)
from ..core.numbers import same_quantity
from ..core.ports import (
    AuditSink,
    BarContext,
    Broker,
    Cache,
    Clock,
    FeatureSource,
    Feed,
    RiskDecision,
    RiskPlugin,
    SignalPlugin,
    SizingPlugin,
    Store,
)
from ..core.tasks import cancel_and_wait
from ..core.types import (
    BrokerUpdate,
    CrossSection,
    Fill,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    RiskVerdict,
    RunInfo,
    Side,
    next_attempt,
    order_from_dict,
    order_to_dict,
    parse_client_order_id,
)
from ..logs import Once, sparse
from ..publisher import bars_payload, fills_payload, orders_payload, signals_payload
from ..secrets import mask_text
from ..storage.buffered import booked_through, path_text, unstorable
from . import adopt, collector
from .accounting import BLOCKING, RejectionRecord, RiskRecord, rule_of
from .decisions import decision_record
from .history import HistoryBuffer, HistoryReader
from .outages import BrokerOutage, FeedOutage
from .planner import OrderPlanner, Plan
from .plugin_outputs import by_symbol, verdict_error
from .plugins import feature_names, history_bars_of, instance_keys
from .portfolio import Portfolio
from .splits_ahead import Split, SplitsAhead, shows_split
from .working_entries import with_working_entries, withdrawn_entries

log = structlog.get_logger(__name__)

# The clock of the plugin calls' timing (`Engine._slow`): a name of its own, one lookup.
_perf_counter = _time.perf_counter

CHECKPOINT_FORMAT = "tradingd-checkpoint/1"
# The checkpoint row of a live run that stored an operator's control before deciding any bar
# (`Engine._store_before_first_bar`): its key marks it, its time is no bar's. `_resume` takes
# only the trading state from it; the first bar's checkpoint replaces it.
BEFORE_FIRST_BAR = "before_first_bar"
_NO_BAR_YET = datetime(1970, 1, 1, tzinfo=UTC)


def _order_of(row: dict[str, Any]) -> Order:
    """An order as the store returns it (an intent stored before it was sent)."""
    return Order(
        client_order_id=row["client_order_id"],
        symbol=row["symbol"],
        side=Side(row["side"]),
        quantity=float(row["quantity"]),
        created_at=row["created_at"],
        type=OrderType(row["type"]),
        limit_price=row["limit_price"],
        stop_price=row["stop_price"],
        trail_pct=row["trail_pct"],
        leg=Leg(row["leg"]),
        parent_id=row["parent_id"],
        oco_group=row["oco_group"],
        status=OrderStatus(row["status"]),
        filled_quantity=float(row["filled_quantity"] or 0.0),
        reason=row["reason"] or "",
    )


def _interrupted_plan(
    state: dict[str, Any] | None, intents: list[Order]
) -> tuple[datetime, list[str], list[Order]] | None:
    """The plan of the bar after the checkpoint as a killed process stored it: its cancels
    (the checkpoint's `intent`) and its orders (the intents of that bar)."""
    intent = (state or {}).get("intent")
    if intent is not None:
        at = datetime.fromisoformat(intent["time"])
    elif intents:
        at = min(o.created_at for o in intents)
    else:
        return None
    # Of a decision tried more than once (a deliberate retry), only the last attempt is
    # carried out: an earlier one might get through now as well, and double it.
    of_bar = [(o, parse_client_order_id(o.client_order_id)) for o in intents if o.created_at == at]
    latest: dict[tuple[str, str], int] = {}
    for _, p in of_bar:
        if p is not None:
            latest[(p.head, p.tag)] = max(latest.get((p.head, p.tag), 0), p.attempt)
    orders = []
    for o, p in of_bar:
        if p is not None and p.attempt < latest[(p.head, p.tag)]:
            continue
        o.status = OrderStatus.HELD if o.parent_id is not None else OrderStatus.NEW
        o.filled_quantity, o.reason = 0.0, ""
        orders.append(o)
    return at, list(intent["cancel"]) if intent is not None else [], orders


class NullAudit:
    """For embedded uses (tests, notebooks) that want no audit files."""

    def orders(
        self, orders: Sequence[Order], records: Any = None, booked_at: datetime | None = None
    ) -> None:
        return None

    def fills(
        self, fills: Sequence[Fill], booked_at: datetime | None = None, records: Any = None
    ) -> None:
        return None

    def flush(self, force: bool = False) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(repr=False)
class EngineResult:
    run_id: str
    bars: int
    times: list[datetime]
    equity: list[float]
    gross_exposure: list[float]
    fills: int
    orders: int
    verdicts: int
    stopped_early: bool = False
    # Risk verdicts per "plugin/rule", the periods in which a rule restricted trading, and
    # broker rejections by reason: nothing that stops trading may pass unseen.
    verdicts_by_rule: dict[str, int] = field(default_factory=dict)
    restrictions: list[dict[str, Any]] = field(default_factory=list)
    restrictions_not_listed: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    # Entry orders the simulated broker cancelled by `order_ttl_bars` (0 for other brokers).
    orders_expired: int = 0
    # Bars before `trade_from` that only warmed up features and signals (no orders).
    warmup_bars: int = 0
    # First bar at which at least one symbol had every feature its plugins need.
    first_ready: datetime | None = None
    # Live bars released but never traded: lost, still missing at the end, or delivered
    # only after they could trade (recovered untraded): decisions a backtest made and this
    # run did not.
    bars_never_traded: int = 0
    # What the run's end warned of, one entry each (`{"warning": "signal_without_view",
    # "plugin": ..., "bars": ...}`): for a report to repeat beside the results.
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        # Short: asyncio.run formats the finished task (and so this result) when it puts
        # back the SIGINT handler; the generated repr printed every bar's equity (tens of
        # milliseconds at the end of each long replay).
        last = f"{self.equity[-1]:.2f}" if self.equity else "none"
        return (
            f"EngineResult(run_id={self.run_id!r}, bars={self.bars}, fills={self.fills}, "
            f"orders={self.orders}, verdicts={self.verdicts}, final_equity={last}, "
            f"stopped_early={self.stopped_early})"
        )


@dataclass
class Pipeline:
    """The configured plugins: signals with their weights, one sizing, a chain of risks."""

    signals: list[tuple[SignalPlugin, float]]
    sizing: SizingPlugin
    risks: list[RiskPlugin] = field(default_factory=list)

    def required_features(self) -> set[str]:
        return set(self.feature_owners())

    def feature_owners(self) -> dict[str, str]:
        """Each feature a plugin asks for, and the first plugin that asks (to name it in an
        error). A plugin's answer must be feature names (`plugins.feature_names`): a plain
        string ("ret_1") was read letter by letter, and None was a TypeError traceback."""
        owners: dict[str, str] = {}
        for p in self.plugins():
            name = getattr(p, "name", type(p).__name__)
            for n in feature_names(p):
                owners.setdefault(n, name)
        return owners

    def plugins(self) -> list[Any]:
        """Every plugin, in pipeline order: signals, sizing, risks."""
        return [p for p, _ in self.signals] + [self.sizing, *self.risks]

    def history_bars(self) -> int:
        """The longest raw-bar window any plugin reads from ctx.history (0 if none says);
        an answer that is not a count is an error naming the plugin (`history_bars_of`)."""
        return max(
            (history_bars_of(p) for p in self.plugins() if hasattr(p, "history_bars")),
            default=0,
        )


_T = TypeVar("_T")

# At a stop, how long the broker's last updates may take (systemd's TimeoutStopSec is 60 s).
_STOP_UPDATES_S = 15.0


def _legs_after_cancel(
    kept: list[Order], by_id: Mapping[str, Order], cancelled: Set[str]
) -> list[Order]:
    """`kept` as the cancels of the entries `cancelled` (ids in `by_id`) leave it: a bracket
    leg HELD for a cancelled entry that filled in part works from the cancel, protecting what
    the entry bought (both brokers activate it so), and one whose entry bought nothing is
    cancelled with it. The planner counts no HELD leg (its shares are not bought yet), and
    the cancelled entry no longer made the symbol wait: a halt that cancelled an entry filled
    in part saw those shares bare and placed a second stop and take-profit, which the broker
    refused (the legs held the shares: "insufficient qty available"); a flatten's sale of
    them was refused the same way, a bar before the legs were cancelled."""
    out: list[Order] = []
    for o in kept:
        parent = o.parent_id
        if parent is None or parent not in cancelled or o.status is not OrderStatus.HELD:
            out.append(o)
            continue
        bought = by_id[parent].filled_quantity
        if bought > 1e-9:
            leg = o.snapshot()
            leg.status = OrderStatus.NEW
            leg.quantity = bought
            out.append(leg)
    return out


def _same_gap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two (broker, book) readings differ by the same quantity (the book may have traded
    between them): the same difference, not a fill still being booked."""
    return abs((a[0] - a[1]) - (b[0] - b[1])) <= 1e-6 * max(1.0, *map(abs, (*a, *b)))


# Missed live bars remembered for the next release (a year of daily bars).
_MISSED_BARS_KEPT = 260
# A released bar the source has not delivered yet is asked for again on the clock's
# heartbeat, the wait doubling up to this: a vendor posting a few minutes late is seen within
# minutes, and one posting hours late is asked a dozen times an hour, not sixty.
_LATE_BAR_MAX_WAIT_S = 600.0
# The first wait is at most a quarter of the time the bar may still trade in (an intraday
# bar: until the next release), at least this: a 1-minute bar waited a whole heartbeat (60 s)
# and the next release came first, so a bar a few seconds late was never asked for again.
_LATE_BAR_MIN_WAIT_S = 1.0


class _WallClock(Protocol):
    """What `_fetch_late` needs of a real-time clock (`clock.live.LiveClock`)."""

    @property
    def heartbeat_s(self) -> float: ...
    @property
    def backlog(self) -> int: ...
    def now(self) -> datetime: ...
    # Raises the clock's failure, as its iterator does: a failed clock releases nothing.
    async def wait(self, seconds: float) -> None: ...


# A position difference not seen before is compared again this long after (or after the
# reconcile interval, if shorter): a fill the broker's positions already hold, its event
# still on the way, is booked by then (its stream or poll, well under a second). The
# default of live.reconcile_confirm_s, for an engine built without a configuration.
_RECONCILE_CONFIRM_S = 5.0
# A difference still moving after this many rounds in a row is blocked even with an order
# of ours working in the symbol: a fill lagging its event at every round is not believable
# for long, someone else trading beside that order is.
_RECONCILE_MOVING_ROUNDS = 3
_NO_ORDER_OF_OURS = (
    "moving with no order of ours working in it (someone else trades the account: by "
    "hand, or another program on the same keys)"
)
_KEPT_MOVING = f"still moving after {_RECONCILE_MOVING_ROUNDS} rounds beside an order of ours"


# The ratios a split of a held position is recognised at (`_split_like`), forward (2:1,
# 3:2) and reversed (1:10, 2:3): the whole ratios splits use, and the fractional ones
# (a 3:2 was a critical "unexplained" difference, blocking the symbol for good).
_SPLIT_RATIOS = (
    *(Fraction(k) for k in (2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 25, 30, 40, 50)),
    Fraction(3, 2),
    Fraction(4, 3),
    Fraction(5, 4),
    Fraction(5, 2),
)


# A broker's quantity the book's times a ratio fits only rounded down (the fraction paid in
# cash) is named a split only when the book holds at least this many times the ratio's
# denominator (40 shares for 3:2, 200 for 1:10). The fraction lost is then under one such
# block of the book's shares: under 1/20 (5%) of the position; and the difference is then at
# least 20 x |p - q| - 1 >= 19 shares for a p:q split. Without the floor a hand trade of
# one share in a small position fit one (8 -> 7 read as 5:4, 5 -> 6 as 4:3 or 5:4) and was
# only a warning, which `POST /adopt` "split" then took in without paying for the share.
_SPLIT_ROUNDED_MIN_BLOCKS = 20


def _split_fits(
    broker: float, book: float, min_blocks: int = _SPLIT_ROUNDED_MIN_BLOCKS
) -> tuple[list[Fraction], bool]:
    """The ratios (new shares per old) at which a split turns the book's quantity into the
    broker's, and whether exactly (else rounded down, the fraction paid in cash); none for
    a position opened, closed or turned. The exact ones first: failing any, those that fit
    rounded down where the book holds at least `min_blocks` times the ratio's denominator
    (reconciliation's guess: `_SPLIT_ROUNDED_MIN_BLOCKS`; an operator's `POST /adopt` of a
    split: 1, any size, the fraction then booked as cash in lieu)."""
    if broker * book <= 0:
        return [], False
    held, booked = abs(broker), abs(book)
    ratios = _SPLIT_RATIOS if held > booked else tuple(1 / r for r in _SPLIT_RATIOS)
    fits = [r for r in ratios if abs(held - booked * r) <= 1e-6 * max(1.0, held)]
    if fits:
        return fits, True
    return [
        r
        for r in ratios
        if booked >= min_blocks * r.denominator and math.trunc(booked * r + 1e-9) == held
    ], False


def _split_like(broker: float, book: float) -> str | None:
    """The ratio ("4:1", "1:10", "3:2") at which a split turns the book's quantity into the
    broker's, or None. Alpaca splits a position before the ex-date's session opens and the
    book only at that date's bar (the feed's `split` field): a difference of that shape is
    most likely a split on its way, not a stranger's trade, and is worded (and alerted) so.
    The broker holds the book times the ratio exactly or, failing any such ratio, rounded
    down (the fraction paid in cash) in a position large enough (`_split_fits`); where
    several ratios fit, each is named. A position gone to 0 is never called a split."""
    fits, _exact = _split_fits(broker, book)
    return " or ".join(f"{r.numerator}:{r.denominator}" for r in fits) or None


def _difference_text(broker: float, book: float, missed: Split | None = None) -> str:
    """The why of a difference, with what to expect when it has a split's shape; `missed`:
    the announced split whose ex-date's bar came without it (`Engine._announced_splits`),
    after which no bar is expected to split the book."""
    why = f"broker holds {broker:g}, the book {book:g}"
    if missed is not None:
        return (
            f"{why}: the announced {missed.text()} split at {missed.ex_date.isoformat()} is "
            "neither in its bar nor shown by its prices, so the book is not split; check the "
            "account and the symbol's prices at the feed"
        )
    ratio = _split_like(broker, book)
    if ratio is not None:
        why += (
            f": {ratio}, as a split would; the book applies a split at its ex-date's bar (the "
            "feed's split field); if none comes, check the account"
        )
    return why


def _hold_splits(ahead: SplitsAhead, alerter: Any, t: datetime) -> dict[str, Split]:
    """`ahead.due(t)`: the splits held from now on (those not held before), each with its
    alert event when there is an `alerter`."""
    before = set(ahead.held)
    due = ahead.due(t)
    new = {sym: due[sym] for sym in sorted(due.keys() - before)}
    for sym, s in new.items():
        if alerter is None:
            break
        # Once per split, for an operator who routes it: nothing to do but know why the
        # symbol does not trade at this bar and its exits go and come back.
        alerter.event(
            RECONCILIATION,
            f"{sym} split {s.ex_date.isoformat()}",
            title=f"{sym} splits {s.text()} at the next session",
            text=_split_hold_text(s) + "; its exits are placed again after it",
            severity=INFO,
        )
    return new


def _split_hold_text(s: Split) -> str:
    return (
        f"splits {s.text()} at its ex-date {s.ex_date.isoformat()}: no order in it until that "
        "bar applies the split"
    )


# The reason a cancel of the plan gives its order (orders.csv, the store, the audit log) when
# nothing else decided it: the planner's, for the exits of a position it closes or cuts.
_REBALANCE_CANCEL = "rebalance: position closed or cut"
_WITHDRAWN_CANCEL = (
    "rebalance: entry withdrawn, the strategy's target is 0 or on the other side of it"
)
_FLATTEN_CANCEL = "flatten: the operator's /flatten"
_NO_REASONS: Mapping[str, str] = MappingProxyType({})


class _FeatureValues(dict[str, np.ndarray]):
    """A bar's feature values (`ctx.features`). A read of a feature no plugin declared was
    a bare `KeyError: 'rsi_14'`; it now says what to do. `__missing__` runs only on a miss:
    a read that finds its feature costs what a plain dict's does."""

    def __missing__(self, key: str) -> np.ndarray:
        computed = ", ".join(sorted(self)) or "none"
        raise KeyError(
            f"feature {key!r} is not computed in this run: declare it in the plugin's "
            f"required_features() (or list it in features.extra); computed: {computed}"
        )


def _verdict_text(v: RiskVerdict) -> str:
    name = v.plugin if not v.rule or v.rule == v.plugin else f"{v.plugin}/{v.rule}"
    return f"{name} {v.action}: {v.reason}"


def _risk_cancel_reason(
    verdicts: Sequence[RiskVerdict], symbol: str, actions: Set[str] | None = None
) -> str:
    """The reason of a cancel the risk chain caused in `symbol`: "risk: " and the verdicts
    covering it (its own and the whole book's; only those of `actions` if given), each
    named by its plugin and rule. It said "rebalance: position closed or cut" whatever
    caused it, a halt's or a sector cap's cancel as a strategy's rebalance."""
    said = dict.fromkeys(
        _verdict_text(v)
        for v in verdicts
        if v.symbol in (symbol, None) and (actions is None or v.action in actions)
    )
    if not said:
        return "risk: the risk chain cut the target (no verdict said why)"
    return "risk: " + "; ".join(said)


def _gap(reading: tuple[float, float] | None) -> float:
    """A (broker, book) reading's difference; none read (it appeared later) is 0."""
    return 0.0 if reading is None else reading[0] - reading[1]


# (plugin, where in its state) already said to hold a value a checkpoint keeps only as text.
_STATE_TEXT_SAID: set[tuple[str, str]] = set()


def _state_of(plugin: Any, state: Callable[[], Any], t: datetime | None) -> Any:
    """A plugin's `state()` for the checkpoint; an exception in it is a PluginFault naming
    the plugin and the hook (it was a bare traceback that stopped a live run in its
    warm-up). A value JSON cannot keep (a timedelta, a Decimal, an object) is a logged,
    deliberate repair: kept as its text, as before, and said once per plugin and key, with
    what restore() will be given. It was said nowhere ("<object object at 0x...>" handed to
    restore after a restart); stopping the daemon for it instead failed only live runs,
    since a backtest never calls state(), at the first checkpoint of a run that had passed
    every backtest."""
    try:
        got = state()
    except PluginFault:
        raise
    except Exception as exc:
        raise _fault_at(plugin, "state", t, exc) from exc
    found = unstorable(got)
    if found is not None:
        where, bad = found
        said = (_name(plugin), path_text(where))
        if said not in _STATE_TEXT_SAID:
            _STATE_TEXT_SAID.add(said)
            log.error(
                "plugin.state_kept_as_text",
                plugin=said[0],
                key=f"state(){said[1]}",
                type=type(bad).__name__,
                rule="a checkpoint keeps JSON values (numbers, text, booleans, None, lists, "
                "mappings, numpy values and arrays, datetimes); this one is kept as its text, "
                "which restore() is given after a restart: store it as one of these and "
                "rebuild it in restore()",
            )
    return got


_NO_HARD: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _EmptyPlan:
    orders: tuple[Order, ...] = ()
    cancel: tuple[str, ...] = ()


_NO_PLAN = _EmptyPlan()


def _no_heartbeat(*, busy: bool = False) -> None:
    return None


# A warm-up failing with the same error this many times over at least this long is said
# once as an error (`warmup.stuck`): backoff reaches its 60 s cap by the 7th attempt.
_WARMUP_STUCK_ATTEMPTS = 10
# A warm-up's bars stored, and checkpointed, this many at a time (`_store_warmup_batch`): a
# kill in a warm-up steps at most this many bars again at the restart.
WARMUP_BATCH_BARS = 64
_WARMUP_STUCK_S = 300.0


class Engine:
    # The risk chain's list and each plugin's label in it (`_risk`): made at the first bar.
    _risk_labels: tuple[list[Any], list[str | None]] | None = None
    _signal_keys: tuple[list[Any], list[str]] | None = None

    def __init__(
        self,
        *,
        run: RunInfo,
        clock: Clock,
        feed: Feed,
        broker: Broker,
        store: Store,
        cache: Cache,
        pipeline: Pipeline,
        features: FeatureSource,
        planner: OrderPlanner,
        portfolio: Portfolio,
        audit: AuditSink | None = None,
        curve_maxlen: int | None = None,
        publish_interval_s: float = 1.0,
        cache_ttl_s: float = 3600.0,
        on_bar: Callable[[int, datetime], None] | None = None,
        # Called after the last bar while its rows are written (it may use
        # `Store.recorded`; `fetch` would not see them yet)...
        after_last_bar: Callable[[Engine], Awaitable[None]] | None = None,
        # ... and once every row is written (it may read the store back).
        before_stop: Callable[[Engine], Awaitable[None]] | None = None,
        record_bars: bool = False,
        history_bars: int = 2,
        trade_from: datetime | None = None,
        warmup: Callable[[datetime | None], AsyncIterator[CrossSection]] | None = None,
        live_metrics: bool = False,
        durable: bool = False,
        publisher: Any = None,
        lock: Any = None,
        reconcile_interval_s: float = 300.0,
        reconcile_confirm_s: float = _RECONCILE_CONFIRM_S,
        retry_attempts: int = 0,
        retry_delay_s: float = 5.0,
        long_only: bool = False,
        slow_plugin_s: float = 5.0,
    ) -> None:
        self.run = run
        # A plugin call that takes longer is a warning (`_slow`); 0 = never (log.slow_plugin_s).
        self._slow_plugin_s = slow_plugin_s if slow_plugin_s > 0 else float("inf")
        # broker.allow_short = false: a negative target becomes 0 (see _no_shorts). Checked
        # only where the sizing may go short: a built-in whose config says allow_short =
        # false (their default) never does, and the check is a microsecond every bar.
        self._decide_long_only(pipeline, long_only)
        # Targets repaired per (plugin, stage, kind), to log the 1st, 10th, 100th (this
        # engine's: a walk-forward fold's first repair is said too).
        self._repairs: dict[tuple[str, str, str], int] = {}
        self.clock = clock
        self.feed = feed
        self.broker = broker
        self.store = store
        self.cache = cache
        self.pipeline = pipeline
        _label_instances(pipeline.plugins())  # `name#2` in its faults (`_name`)
        # The signal plugins' optional `async prepare_bar(ctx)` (core.ports), found once.
        self._preparers = tuple(
            (plugin, prepare)
            for plugin, _ in pipeline.signals
            if callable(prepare := getattr(plugin, "prepare_bar", None))
        )
        self.planner = planner
        self.portfolio = portfolio
        self.audit: AuditSink = audit or NullAudit()
        # Bars, signals, orders and fills for other processes (Redis pub/sub; live only).
        self.publisher = publisher
        # One daemon per store and account (tradingd.instance_lock): taken before the store.
        self.lock = lock
        self.symbols = run.symbols
        self._symbol_index = {s: i for i, s in enumerate(run.symbols)}
        # A risk verdict's symbol is one of these or None (`plugin_outputs.verdict_error`).
        self._universe = frozenset(self.symbols)
        self.features = features
        # Deliberate retries of transiently refused orders (orders.retry_attempts, live).
        self.retry_attempts = retry_attempts
        self.retry_delay_s = retry_delay_s
        # The planner's features (an ATR stop's ATR) count like the plugins': a symbol is
        # ready only when its exits can be priced too.
        needed = pipeline.required_features() | set(planner.required_features())
        missing = needed - set(features.names)
        if missing:
            raise ValueError(
                f"feature source lacks {sorted(missing)} that plugins or the order planner require"
            )
        self._required = tuple(sorted(needed))
        # A source that can (batch and streaming, `prepare`) cleans its values itself and
        # gives each bar's readiness row: the batch one once for the whole history, the
        # streaming one as it makes each bar's values. Only a source without `prepare` has
        # its values cleaned and checked bar by bar in _features.
        prepare = getattr(features, "prepare", None)
        self._ready_at: Callable[[CrossSection], np.ndarray | None] | None = (
            prepare(self._required) if callable(prepare) else None
        )
        self.history = HistoryBuffer(len(self.symbols), max(history_bars, pipeline.history_bars()))
        # What plugins see of it (ctx.history): window and length, no push; made once.
        self._history_view = HistoryReader(self.history)
        self._times: deque[datetime] = deque(maxlen=curve_maxlen)
        self._equity: deque[float] = deque(maxlen=curve_maxlen)
        self._gross: deque[float] = deque(maxlen=curve_maxlen)
        self._bars = 0
        self._orders = 0
        self._verdicts = 0
        self._publish_interval = publish_interval_s
        self._cache_ttl = cache_ttl_s
        self._last_publish = -float("inf")
        self._on_bar = on_bar
        self._after_last_bar = after_last_bar
        self._before_stop = before_stop
        # Live bars exist nowhere else once the vendor's window has moved on: keep them.
        self._record_bars = record_bars
        # A warm-up's bars not stored yet (`_warm_up`): stored in batches, each followed by
        # the checkpoint of its last bar. None outside a warm-up: a live bar is stored at once.
        self._warmup_unstored: list[CrossSection] | None = None
        self._warmup_uncheckpointed = 0
        self._stop_requested = False
        # Bars before this time feed history, features and (stateful) signals, but nothing
        # is decided, ordered or counted in the run's results: a start date must not cut
        # the warm-up (indicators, model windows) out of the data.
        self._trade_from = trade_from
        # Live runs: bars before the first live bar, fetched at start (see _warm_up).
        self._warmup = warmup
        self._warmup_bars = 0
        self._warming_up = False  # set while `_warm_up` steps the history bars (/ready)
        # (attempts, last error) while the warm-up's source fails and is retried (/ready).
        self._warmup_failing: tuple[int, str] | None = None
        # Bars this process scored, and per signal plugin (by id) how many of the first ones
        # it had no view at, up to its first view (`_score`): a signal that returned NaN at
        # every bar traded nothing, exit 0, without a word.
        self._scored = 0
        self._no_view: dict[int, int] = {}
        # How many of the first bars scored the sizing returned no finite target at (NaN for
        # every symbol), up to its first target (`_size`): repaired to 0 bar by bar with
        # `engine.targets_repaired` lines only, its run traded nothing, exit 0.
        self._no_target = 0
        self._warnings: list[dict[str, Any]] = []
        self._splits = 0
        self._seen = 0
        self._first_ready: datetime | None = None
        self._last_time: datetime | None = None
        self.risk_record = RiskRecord()
        self.rejections = RejectionRecord(explain=self._explain_rejection)
        self.broker_failures = 0  # bars whose orders or cancels could not reach the broker
        # The outage those bars are part of: one error line at its first, the rest counted
        # and said at a bounded rate, one at its end (`broker.recovered`).
        self.broker_outage = BrokerOutage()
        self.bars_unavailable = 0
        # The source's outage those bars are part of: its first bar said in full, the rest
        # counted and said at a bounded rate, one line at its end (`feed.recovered`).
        self.feed_outage = FeedOutage(len(self.symbols))
        # Live bars released but never traded: the source delivered them neither at their
        # release nor before a newer bar (`bar.lost`), still missing when the run ends, or
        # only after they could trade (`bar.recovered`, of which `_recovered_untraded`); or
        # caught up untraded because the daemon was stalled or down when they could trade
        # (`_catch_up`, a restart's warm-up after its checkpoint: `_caught_up_untraded`).
        # The run's count, not this process's: in every checkpoint, restored by a restart
        # (`_never_traded` counts a bar before the step that checkpoints it, so a bar is
        # counted once whichever process steps it).
        self.bars_never_traded = 0
        self._recovered_untraded = 0
        self._caught_up_untraded = 0
        # Releases the live clock dropped past its backlog's bound (its `dropped`), counted
        # so far: never stepped, so never traded (`_count_dropped_releases`).
        self._releases_dropped = 0
        # The run's clock has released a bar to it (here, or in an earlier process: from
        # the checkpoint). A restart's warm-up bars after the checkpoint are then bars the
        # run missed while down; before, they are history before its first live bar.
        self._went_live = False
        # The live bar the clock released and the engine is fetching or stepping now (None
        # between bars, and while a bar the source did not deliver is asked for again): /ready
        # did not pass while a slow vendor's fetch of the newest bar ran (minutes at Alpha
        # Vantage's rate), as if the feed were late.
        self.bar_in_progress: datetime | None = None
        # Operator controls (POST /pause, /resume, /flatten): active | paused | flattening.
        # In every checkpoint, and stored when a control answers (set_trading_state).
        self.trading_state = "active"
        # An operator's control made before the engine traded (while it starts): it wins
        # over the state a resumed checkpoint brings.
        self._operator_state: str | None = None
        # The run's stored record is read (resumed or begun), and `_last_checkpoint` is its
        # checkpoint: a control is stored at once from then on. Before, a row written for it
        # would be overwritten by (or overwrite) what the start reads.
        self._run_open = False
        # This process made or reopened the run's row and has not ended it: a failure then
        # ends it marked failed (`_end_failed_run`); one before leaves the row as it was.
        self._record_begun = False
        self.cache_error: str | None = None
        self.last_flush_at: datetime | None = None
        # Prometheus metrics per bar (the live daemon); replay skips them: they cost time
        # per bar and nobody scrapes a backtest.
        self._live_metrics = live_metrics
        self._count_orders = live_metrics and not getattr(broker, "reports_order_metrics", False)
        # A live run continues after a restart (store.resume_run): a checkpoint after every
        # bar, order intents stored before they are sent. Replays start afresh (begin_run:
        # the store's rows and the audit log of an earlier run with this run id go).
        self._durable = durable
        # Bars up to this time were decided by an earlier process of this run: they only
        # bring features and signal windows up to date (no fill, split, order or record).
        self._restored_through: datetime | None = None
        # Set once a resumed run is past the bars it replays (`catching_up_to` None): the
        # fill booker waits for it (`_book_fills_as_they_arrive`).
        self._caught_up = asyncio.Event()
        # A resumed run's signal plugins' saved states (checkpoint key -> (restore, state)),
        # restored after the bars up to the checkpoint are replayed (see _resume).
        self._signal_states: dict[str, tuple[Callable[[Any], Any], Any]] = {}
        self._last_targets: np.ndarray | None = None
        self.resumed_from: datetime | None = None
        # The last checkpoint (bar time, state), written or resumed from: fills booked
        # between bars are stored just after it; an intent re-records it with the cancels
        # of the bar being carried out.
        self._last_checkpoint: tuple[datetime, dict[str, Any]] | None = None
        # After a resume on a broker that keeps its own book: the interrupted bar's stored
        # plan (time, cancels, orders), carried out as it was decided (see step).
        self._interrupted: tuple[datetime, list[str], list[Order]] | None = None
        # The intents stored after the checkpoint (by client id), while the bar that carries
        # them out again is to come: what the broker reports of them meanwhile (looked up
        # by its resume) is in the book at once but recorded after that bar has recorded
        # their intents again, with its time (`_hold_redone`, `_record_redone`). Booked
        # before, stamped just after the checkpoint, an order's events read filled -> new
        # -> filled, and its fill was dated a bar before the order was placed.
        self._redo: dict[str, Order] | None = None
        self._held_back: list[BrokerUpdate] = []
        # The last `booked_at` of what was booked between bars after the last checkpoint
        # (None: nothing): a clean stop checkpoints it (`_checkpoint_at_stop`).
        self._booked_late: datetime | None = None
        self._first_bar: datetime | None = None  # the first bar this process processed
        # Book against the broker's positions (a broker with `positions()`): at start and
        # every reconcile_interval_s. A difference nothing explains blocks trading in the
        # symbol (symbol -> why) until a later reconciliation finds them equal again.
        self.reconcile_interval_s = reconcile_interval_s
        self.reconcile_confirm_s = reconcile_confirm_s  # live.reconcile_confirm_s
        self.reconcile_blocked: dict[str, str] = {}
        # The broker's quantity of each blocked symbol at the round that blocked it: a bar
        # whose split makes the book equal to it releases the symbol at that bar
        # (`_release_split_blocks`), not only at the next round.
        self._blocked_broker: dict[str, float] = {}
        # The operator's adoptions of the broker's quantity in blocked symbols (POST /adopt),
        # asked and not yet applied: applied at the next bar (engine/adopt.py).
        self.adoptions = adopt.Adoptions()
        # Splits known ahead from the broker's corporate actions (live on Alpaca; set by the
        # composition root): a symbol splitting at the next session is held for that bar.
        self.splits_ahead: SplitsAhead | None = None
        # Announced splits whose ex-date's bar came without them and whose prices did not
        # show them (`_announced_splits`): the symbol is blocked and its difference worded
        # so until reconciliation releases it (one per symbol at most).
        self._splits_missed: dict[str, Split] = {}
        # Cancellations for a split a lookup learns between bars (`_on_split_learned`),
        # cancelled at the stop: the next start-up cancels what they left.
        self._split_cancels: set[asyncio.Task[None]] = set()
        # Symbols with a new difference between its two checks (symbol -> why): held like
        # blocked ones for those seconds, so a real difference cannot trade a minute bar
        # before it is confirmed; neither shown in /ready nor alerted.
        self._reconcile_checking: dict[str, str] = {}
        # Rounds in a row a symbol's difference moved between its two checks (`_reconcile`).
        self._reconcile_moving: dict[str, int] = {}
        self.last_reconciled_at: datetime | None = None
        self.reconcile_error: str | None = None
        # Broker positions outside the universe already said (`_position_differences`).
        self._outside_said = Once(limit=1024)
        self._bar_lock: asyncio.Lock | None = None
        # Set as the parts stop: a control then answers that the engine stopped (the store
        # that would keep it is going).
        self._controls_closed = False
        # Set by request_stop for what waits on something else than bars (the warm-up's
        # history fetch); made in the loop when first needed.
        self._stop_event: asyncio.Event | None = None
        # Liveness for the health server, set by the composition root (not a constructor
        # argument): busy=True when a bar starts, busy=False while waiting for the next.
        self.on_heartbeat: Callable[..., None] = _no_heartbeat
        # Called once the run is warmed up and its clock started (systemd READY=1).
        self.on_ready: Callable[[], None] = lambda: None
        # Called as the start-up enters a step the operator should see named ("warm-up",
        # also while it retries a source that is down).
        self.on_phase: Callable[[str], None] = lambda phase: None
        # Called with each trading bar's decision record (live: stored for replay-check).
        self.on_decision: Callable[[datetime, str, dict[str, Any]], None] | None = None
        # Called after every trading bar with its time and risk verdicts (alert rules).
        self.after_bar: list[Callable[[datetime, list[RiskVerdict]], None]] = []
        # Called with the time of a bar the clock released that the source could not deliver
        # (never stepped, so `after_bar` does not run for it: repeated_errors counts it).
        self.on_bar_unavailable: list[Callable[[datetime], None]] = []
        # A replay's, once its store and audit log have dropped the run id's earlier record
        # (a backtest drops its earlier output files then).
        self.after_begin: list[Callable[[], object]] = []
        # Started and stopped with the engine's parts (the alerter: tradingd.alerts).
        self.extra_parts: list[Any] = []

    # lifecycle -----------------------------------------------------------------------------
    async def _check_account_cash(self) -> None:
        """A new live run books `run.initial_capital` as its cash and sizes every order from
        it, but a broker that owns an account (Alpaca) holds its own money. With less cash
        there, a 30,000 account was traded as a 100,000 book: entries sized for money it did
        not have (rejected for buying power, or bought on margin), and the drawdown guard
        and /status watched an imaginary book. Refused at start, naming both. More cash is
        fine: a run may manage part of an account."""
        snapshot = getattr(self.broker, "snapshot", None)
        if not callable(snapshot):
            return
        unchecked = (
            "the account's cash could not be read: run.initial_capital is taken as the run's "
            "money unchecked"
        )
        try:
            done, account = await self._unless_stopped(snapshot())
        except RetryableError as exc:
            log.warning("account.not_checked", error=str(exc), rule=unchecked)
            return
        if not done or account is None:
            return
        book = float(self.portfolio.cash)
        try:
            cash = float(account.cash)
        except (TypeError, ValueError):
            cash = math.nan
        if not math.isfinite(cash):
            # A broker's answer that is no amount (NaN, inf): the check below told the
            # operator to set run.initial_capital to at most "nan" (or passed, for inf).
            log.warning(
                "account.not_checked",
                error=f"the broker's account cash {repr(account.cash)[:40]} is not a number",
                rule=unchecked,
            )
            return
        if not cash >= book - 0.005:
            raise ConfigError(
                f"the broker's account has {cash:,.2f} {account.currency} in cash (equity "
                f"{account.equity:,.2f}), less than run.initial_capital = {book:,.2f}: the run "
                "would size its orders for money the account does not have; set "
                "run.initial_capital to at most the account's cash"
            )
        log.info("account.cash", account_cash=cash, account_equity=account.equity, run_cash=book)

    async def _record_build(self, resume: Any) -> None:
        """Which build decides this process's bars (storage.schema.RUN_BUILDS): a run
        continued across an upgrade is decided by two codes, and replay-check says which."""
        record = getattr(self.store, "record_build", None)
        if record is not None:
            from ..build_info import this_build

            after = resume.bar_time if resume is not None else None
            await record(self.run.run_id, datetime.now(UTC), after, this_build().as_dict())

    async def _warn_if_not_continuing(self) -> None:
        """A new live run beside live runs of the same name under other ids: the config
        changed in a part that defines the run (`tradingd run` continues a stored run whose
        config differs only in other parts: run_continuation), so this start begins afresh
        (a simulated account's cash from the start) instead of continuing. Said once,
        loudly: it looked like a restart."""
        m = re.fullmatch(r"(.+-live-)[0-9a-f]{10}", self.run.run_id)
        named = getattr(self.store, "live_runs_named", None)
        if m is None or named is None:
            return
        # LIKE in SQLite ignores case, and the prefix also matches longer names that start
        # with it ("demo-live-x-live-..."): only `<this name>-live-<hash>` counts.
        shape = re.compile(re.escape(m.group(1)) + r"[0-9a-f]{10}")
        others = [r for r in await named(m.group(1)) if r != self.run.run_id and shape.fullmatch(r)]
        if others:
            log.warning(
                "run.not_continued",
                run_id=self.run.run_id,
                earlier=others,
                hint="the configuration differs from theirs in a part that defines the run, "
                "so this is a new run, not a restart of theirs; to continue one of them, "
                "start with the configuration it ran with, or set run.run_id to its id",
            )

    async def _keep_operator_state(self) -> None:
        """A control answered while a part's start was retried (the broker down), then a
        stop before the run was resumed: the run's stored checkpoint takes the state, as
        `_resume` would have stored it. Else the next start came back active and traded."""
        state = self._operator_state
        fetch = getattr(self.store, "fetch", None)
        if state is None or not self._durable or fetch is None:
            return
        try:
            rows = await fetch("checkpoints", self.run.run_id)
            if not rows:
                # No bar decided yet (a new run): its record is made as this start would
                # have made it (a row stored without it, `begin_run` deletes), with the
                # control's row, which the next start resumes.
                await self._open_run_record()
                await self._store_before_first_bar(state)
                # resume_run made (or reopened) the run's record and nothing else ends it:
                # ended as this start's stop would have, no bar decided.
                await self.store.end_run(self.run.run_id, {"bars": 0})
                return
            self._last_checkpoint = (rows[-1]["bar_time"], rows[-1]["state"])
            await self._store_trading_state(state)
        except Exception as exc:
            log.error("control.not_stored", state=state, error=str(exc))

    async def _open_run_record(self) -> Any:
        """The run's stored record, made or reopened (`resume_run`: its resume point, None for
        a new run). The audit log first refuses a replay's log of this run id
        (AuditLog.check_live) before the store records the run: a refused start left an empty
        run record in another store, which the next start resumed."""
        check_live = getattr(self.audit, "check_live", None)
        if check_live is not None:
            check_live()
        return await self.store.resume_run(self.run)  # type: ignore[attr-defined]

    async def _start_part(self, part: Any) -> bool:
        """Start one part; a live one that cannot reach its service yet (RetryableError: the
        broker down or refusing for now) is tried again with backoff, /health alive and a
        stop honoured, as the warm-up retries its data source. It exited with code 2, the
        code of a configuration error, and systemd's start limit could then leave the
        service failed after a short outage. False: stopped while retrying."""
        from ..storage.buffered import DatabaseUnavailable

        delay = 1.0
        while True:
            try:
                # A stop abandons a start that waits (the store retries a database that is
                # down for storage.start_retry_s on each attempt: past the unit's stop timeout).
                started, _ = await self._unless_stopped(part.start())
                return started
            except (RetryableError, DatabaseUnavailable) as exc:
                # DatabaseUnavailable: PostgreSQL still down after storage.start_retry_s. It
                # exited 2, and a reboot or a database maintenance of some minutes left the
                # unit failed by systemd's start limit; a running daemon spools instead.
                if self.run.mode != "live":
                    raise
                log.warning(
                    "startup.retry", part=type(part).__name__, error=str(exc), retry_in_s=delay
                )
                if await self._sleep_unless_stopped(delay):
                    return False
                delay = min(delay * 2, 60.0)

    def _warn_of_foreign_orders(self) -> None:
        """A live run that finds orders open at the broker in its universe that it did not
        place (by hand, or by another program; `_placed_by_us`): the broker follows them,
        and the planner places no entry in a symbol with a working one, so the run never
        traded those symbols, and only the broker's start-up line counted them. At every
        start, a restart too: it warned only at a new run's, and a restarted one followed
        the orders of its checkpoint without a word (the checkpoint keeps only this run's
        orders now, `_checkpoint`)."""
        self._say_foreign_orders(self._others_in_universe(self.broker.open_orders()))

    def _others_in_universe(self, orders: Iterable[Any]) -> list[Any]:
        """The orders of `orders` in the run's universe that this run did not place."""
        universe = set(self.symbols)
        own = self._placed_by_us
        return [o for o in orders if o.symbol in universe and not own(o.client_order_id)]

    def _warn_of_orders_found_mid_run(self) -> None:
        """Orders the broker found after the start that this run did not place (placed by
        hand meanwhile): said and alerted as at the start. Only the broker's own warning
        said them, and the run stayed out of the symbol without an alert."""
        take = getattr(self.broker, "take_foreign_orders", None)
        if take is None:
            return
        found = self._others_in_universe(o for o in take() if o.in_universe)
        self._say_foreign_orders(found, found_mid_run=True)

    async def _watch_foreign_orders(self, found: asyncio.Event) -> None:
        while True:
            await found.wait()
            try:
                self._warn_of_orders_found_mid_run()  # clears `found` (take_foreign_orders)
            except Exception:  # a bug: said, and the next one found is said again
                found.clear()
                log.exception("broker.foreign_orders_check_failed")

    def _say_foreign_orders(self, foreign: Sequence[Any], *, found_mid_run: bool = False) -> None:
        if not foreign:
            return
        symbols = sorted({o.symbol for o in foreign})
        log.warning(
            "broker.foreign_open_orders",
            symbols=symbols,
            orders=[o.client_order_id for o in foreign][:20],
            found_mid_run=found_mid_run,
            rule="no new entries in these symbols while the orders are open: cancel them at "
            "the broker, or let them fill",
        )
        alerter = getattr(self, "alerter", None)
        if alerter is not None:
            # Mid-run, keyed by the symbols: the start's alert within the dedup window
            # swallowed a hand order placed minutes later in another symbol.
            key = "foreign-orders" + (":" + ",".join(symbols) if found_mid_run else "")
            alerter.event(
                "reconciliation",
                key,
                title="orders open at the broker that this run did not place: "
                + ", ".join(symbols),
                text="no new entries in these symbols while they are open",
                severity="warning",
            )

    async def set_trading_state(self, state: str) -> None:
        """An operator's pause, resume or flatten, stored at once: between bars, the last
        checkpoint again with the new state (before the first bar, a row of its own). Kept
        only in memory until the next bar's checkpoint, a pause was lost by a restart before
        that bar (hours, with daily bars), and the restarted daemon traded."""
        if self._controls_closed:
            raise self._stopped_error(state)
        if self._bar_lock is None:
            # Starting: it wins over a resumed checkpoint's state (_resume stores it), and
            # once the checkpoint is resumed (the warm-up: minutes, with a source that is
            # down) it is stored at once, as between bars.
            self.trading_state = self._operator_state = state
            await self._store_trading_state(state)
            return
        async with self._bar_lock:
            if self._controls_closed:  # closed while this waited for the bar
                raise self._stopped_error(state)
            self.trading_state = state
            await self._store_trading_state(state)

    def _stopped_error(self, state: str) -> EngineStoppedError:
        return EngineStoppedError(
            f"the engine of run {self.run.run_id} has stopped: trading state {state!r} was "
            "not set; send the control again once the daemon runs"
        )

    @property
    def controls_closed(self) -> bool:
        """The engine stopped: an operator's control now neither acts nor is stored."""
        return self._controls_closed

    @property
    def trading_started(self) -> bool:
        """Past the start-up (resume and warm-up): bars are being decided."""
        return self._bar_lock is not None

    async def _store_trading_state(self, state: str) -> None:
        """The last checkpoint again with `state` (see `_record_again`); with none yet, the
        run's row of `_store_before_first_bar`. Before the run's record is read, nothing:
        `_operator_state` keeps it for `_controls_stored_from_now` (or a stop's
        `_keep_operator_state`)."""
        if self._last_checkpoint is not None:
            await self._record_again({"trading_state": state}, state)
        elif self._run_open:
            await self._store_before_first_bar(state)

    async def _store_before_first_bar(self, state: str) -> None:
        """A run that decided no bar has no checkpoint for a control to rewrite, and the
        control waited for the first bar's: a pause during a warm-up whose source was down
        (minutes and more) was answered, lost by a restart, and the new run traded. Its
        checkpoint row holds only the state (`BEFORE_FIRST_BAR`) until that bar's replaces
        it. ControlNotStoredError (naming `state`) when the store fails."""
        if not self._durable:
            return
        row = {BEFORE_FIRST_BAR: True, "trading_state": state}
        self.store.record_checkpoint(self.run.run_id, _NO_BAR_YET, row)  # type: ignore[attr-defined]
        try:
            await self.store.flush()
        except Exception as exc:
            raise ControlNotStoredError(state, exc) from exc

    async def _controls_stored_from_now(self) -> None:
        """The run's record is read (`_last_checkpoint` is its checkpoint, or None): a
        control is stored at once from now on, and one answered while the daemon started is
        stored now, not at the first bar (a stop before that bar lost it, and the next
        start traded)."""
        self._run_open = True
        if self._operator_state is None:
            return
        try:
            await self._store_trading_state(self._operator_state)
        except ControlNotStoredError as exc:
            log.warning("control.not_stored", error=str(exc))

    async def _record_again(self, changes: dict[str, Any], state: str) -> None:
        """The last checkpoint again with `changes`, stored at once (nothing before a run's
        first checkpoint: see `_store_trading_state`). ControlNotStoredError (naming
        `state`) when the store fails: in effect here, and the next bar's checkpoint carries
        it too."""
        if not self._durable or self._last_checkpoint is None:
            return
        t, saved = self._last_checkpoint
        saved = {**saved, **changes}
        self._last_checkpoint = (t, saved)
        self.store.record_checkpoint(self.run.run_id, t, saved)  # type: ignore[attr-defined]
        try:
            await self.store.flush()
        except Exception as exc:
            raise ControlNotStoredError(state, exc) from exc

    async def change_plugins(self, change: Callable[[], _T], stopped: Exception) -> _T:
        """An operator's change to the plugins' state (POST /reset-halt), made between bars
        and stored at once, as a trading state is: left to the next bar's checkpoint, a stop
        before that bar (hours, with daily bars) brought the halt back with its old peak.
        Raises `stopped` once the engine has stopped (nothing changed), ControlNotStoredError
        when the store fails (the change is in effect here; the next bar's checkpoint
        carries it)."""
        if self._bar_lock is None:
            # Starting: the checkpoint it resumes would overwrite the change (see trading_started).
            raise RuntimeError("change_plugins is for an engine that trades (trading_started)")
        if self._controls_closed:
            raise stopped
        async with self._bar_lock:
            if self._controls_closed:  # closed while this waited for the bar
                raise stopped
            result = change()
            if self._durable and self._last_checkpoint is not None:
                kept = self._last_checkpoint[1].get("plugins") or {}
                plugins = {**kept, **self._plugin_states()}
                await self._record_again({"plugins": plugins}, self.trading_state)
        return result

    def _plannable_orders(self) -> Sequence[Order]:
        """The broker's open orders the planner may act on: all of a simulated broker's
        (they are this run's); of a live account's, this run's own (an edited one's
        replacement too: `_placed_by_us`) and every working entry. Another run's protective
        exits on the same account were cancelled by the planner as exits of a position this
        run does not hold, leaving that run's shares unprotected; another run's entry still
        keeps new entries out of its symbol. The replacement of this run's stop, moved by
        hand at Alpaca, was hidden from the planner, which then placed a second stop."""
        orders = self.broker.open_orders()
        if getattr(self.broker, "state", None) is not None:
            return orders
        own = self._placed_by_us
        return [o for o in orders if o.leg is Leg.ENTRY or own(o.client_order_id)]

    def open_orders_by_owner(self) -> tuple[list[Order], list[Order]]:
        """The broker's open orders as (this run's, the others'), for /status: a simulated
        broker's are all this run's; on a live account, this run's are those
        `_placed_by_us` (an edited one's replacement too), the others were placed by hand or
        by another run (the broker follows them; `broker.foreign_open_orders`). /status
        listed another run's bracket legs as this run's open orders, beside no position."""
        orders = self.broker.open_orders()
        if getattr(self.broker, "state", None) is not None:
            return list(orders), []
        own = self._placed_by_us
        mine: list[Order] = []
        others: list[Order] = []
        for o in orders:
            (mine if own(o.client_order_id) else others).append(o)
        return mine, others

    def _is_own(self, client_order_id: str) -> bool:
        """An order id this run made (`run|bar time|symbol|leg|attempt`): a live account
        also holds other runs' orders and orders placed by hand."""
        return client_order_id.startswith(f"{self.run.run_id}|")

    def _placed_by_us(self, client_order_id: str) -> bool:
        """`_is_own` of the order a live broker's order stands for: the replacement of an
        order edited at the broker carries the broker's id, and `origin` names the order it
        replaced. The rule wherever an open or reported order is sorted: the updates the
        engine books, the orders that explain a moving reconcile difference, the orders the
        planner may act on, and those a flatten or a halt cancels (`_own_updates`,
        `_symbols_with_open_orders`, `_plannable_orders`, `_flatten_orders`). `_is_own`
        alone is for the intents this run stored (an edit's replacement is never one)."""
        origin = getattr(self.broker, "origin", None)
        return self._is_own(origin(client_order_id) if origin is not None else client_order_id)

    def _flatten_bar(
        self,
        targets: np.ndarray,
        ctx: BarContext,
        unreconciled: Set[str],
        splitting: Mapping[str, Split] | None = None,
    ) -> tuple[np.ndarray, Sequence[Order], list[str]]:
        """An operator's flatten at this bar: the targets (0), the open orders the planner
        sees and the entries to cancel (`_flatten_orders`); "paused" once it is done.

        Not in a symbol whose book and broker differ (`unreconciled`): the book's quantity
        is not what the account holds, and selling it sold shares that were not there (a
        short in a long-only run) or left the rest. Such a symbol keeps its weight, as
        every other order in it is held back (`_hold_unreconciled`), with a warning naming
        it. One being checked again (seconds) is waited for; one blocked is left to the
        operator, and the flatten ends without it ("paused", `left_held`), or it would
        stay "flattening" as long as the difference stands."""
        t = ctx.time
        pf = self.portfolio
        flat = np.zeros_like(targets)
        skipped: dict[str, str] = {}
        if unreconciled:
            weights = ctx.portfolio.weights
            why = {
                **self._untradable(),
                **{sym: _split_hold_text(s) for sym, s in (splitting or {}).items()},
                **self._reconcile_checking,
                **self.reconcile_blocked,
            }
            for sym in sorted(unreconciled):
                i = self.symbols.index(sym)
                flat[i] = weights[i]
                if pf.quantity[i]:
                    skipped[sym] = why.get(sym, "being checked")
        if skipped:
            log.warning(
                "control.flatten_skipped",
                time=t,
                symbols=skipped,
                rule="no order in a symbol whose book differs from the broker's position: "
                "close it at the broker yourself (then POST /adopt takes the account's "
                "quantity into the book), or bring the account back to the book's quantity, "
                "and send /flatten again once /ready's reconciliation check passes",
            )
        # Left to the operator and not waited for: a symbol blocked by reconciliation, and
        # one the broker refuses to trade (it stayed "flattening" while the asset did).
        blocked = self.reconcile_blocked.keys() | self._untradable().keys()
        orders, adding, working = self._flatten_orders(pf.quantity, blocked=blocked)
        held = pf.quantity
        if blocked:
            held = held.copy()
            held[[self.symbols.index(s) for s in blocked]] = 0.0
        if not adding and not working and not held.any():
            self.trading_state = "paused"
            left = sorted(s for s in blocked if pf.quantity_of(s))
            log.warning("control.flattened", time=t, left_held=left)
        else:
            log.warning("control.flatten_planned", time=t, cancel_entries=adding)
        return flat, orders, adding

    def _flatten_orders(
        self, held: np.ndarray, only: set[str] | None = None, blocked: Set[str] = frozenset()
    ) -> tuple[list[Order], list[str], bool]:
        """For a flattening bar (or a risk halt's: `_halted_orders`): the open orders the
        planner sees, and the working entries of this run that would add to a position (or
        open one), to be cancelled with the plan (in the symbols `only`, if given), and
        whether another order of this run still works. The planner skips a symbol with a
        working entry (it waits for it), so a flatten left such a position held and went on
        to "paused": it closes it now. A closing order still working is left to fill; the
        state stays "flattening" until nothing is held and nothing of this run works (but
        in the symbols `blocked` by reconciliation, whose exits are kept: `_flatten_bar`).
        An order of this run edited at the broker is its replacement (`_placed_by_us`): by
        the run-id prefix alone a halt left the edited entry buying. The bracket legs of a
        cancelled entry are shown as the cancel leaves them (`_legs_after_cancel`)."""
        orders = list(self._plannable_orders())
        index = {s: i for i, s in enumerate(self.symbols)}
        own = self._placed_by_us
        adding: list[str] = []
        for o in orders:
            i = index.get(o.symbol)
            if o.leg is not Leg.ENTRY or i is None or not own(o.client_order_id):
                continue
            if only is not None and o.symbol not in only:
                continue
            h = float(held[i])
            if (o.side is Side.BUY and h >= 0) or (o.side is Side.SELL and h <= 0):
                adding.append(o.client_order_id)
        cancelled = set(adding)
        kept = [o for o in orders if o.client_order_id not in cancelled]
        if cancelled:
            kept = _legs_after_cancel(kept, {o.client_order_id: o for o in orders}, cancelled)
        working = any(own(o.client_order_id) for o in kept if o.symbol not in blocked)
        return kept, adding, working

    def _withdraw_entries(
        self,
        targets: np.ndarray,
        sized: np.ndarray,
        ctx: BarContext,
        working: Sequence[Order],
        unreconciled: Set[str],
        t: datetime,
        verdicts: Sequence[RiskVerdict] = (),
    ) -> dict[str, str]:
        """This run's working entries the risk chain or the strategy dropped before anything
        of them filled (`working_entries.withdrawn_entries`), cancelled with the plan: their
        ids and each cancel's reason, the risk verdicts that cut the symbol's target when
        the sizing's target (`sized`) still wanted the entry, the strategy's rebalance
        otherwise; logged, naming them."""
        gone = withdrawn_entries(
            targets, sized, ctx, working, self._symbol_index, self._placed_by_us, unreconciled
        )
        if not gone:
            return {}
        index = self._symbol_index
        why = {
            o.client_order_id: (
                _WITHDRAWN_CANCEL
                if float(sized[index[o.symbol]]) * o.side.sign <= 0
                else _risk_cancel_reason(verdicts, o.symbol)
            )
            for o in gone
        }
        log.info(
            "engine.entries_withdrawn",
            time=t,
            symbols=sorted({o.symbol for o in gone}),
            cancel_entries=list(why),
            reason="nothing filled, and the target after the risk chain is 0, on the other "
            "side, or cut below what the entry buys",
            reasons=why,
        )
        return why

    def _exit_cancel_reasons(
        self,
        cancel: Sequence[str],
        sized: np.ndarray,
        chained: np.ndarray,
        verdicts: Sequence[RiskVerdict],
        default: str,
    ) -> dict[str, str]:
        """The reasons of the planner's cancels (the exits of a position it closes or cuts):
        the risk verdicts covering the symbol where the chain changed its target (`chained`,
        the sizing's `sized` before it), else `default` (the rebalance's, or a flatten's)."""
        if not cancel:
            return {}
        if chained is sized or default is not _REBALANCE_CANCEL:
            return dict.fromkeys(cancel, default)
        symbol_of = {o.client_order_id: o.symbol for o in self.broker.open_orders()}
        index = self._symbol_index
        out: dict[str, str] = {}
        for cid in cancel:
            sym = symbol_of.get(cid)
            i = index.get(sym) if sym is not None else None
            cut = i is not None and float(chained[i]) != float(sized[i])
            out[cid] = _risk_cancel_reason(verdicts, sym) if cut and sym else default
        return out

    def _halted_orders(
        self, held: np.ndarray, verdicts: Sequence[RiskVerdict], t: datetime
    ) -> tuple[list[Order], dict[str, str]]:
        """For a bar whose risk verdicts halt or flatten (a kill switch, a daily loss limit):
        the open orders the planner sees, and this run's working entries that add exposure,
        cancelled with the plan, in every symbol (a verdict without one) or in the verdicts'.
        The planner waits for a symbol's working entry, so an entry still filling in parts
        (volume participation, a limit) went on filling through the halt, every bar of it
        without an expiry, and a flatten left those shares held. Each cancel's reason names
        the verdicts that halt its symbol."""
        symbols = {v.symbol for v in verdicts if v.action in BLOCKING}
        only = None if None in symbols else {s for s in symbols if s is not None}
        kept, adding, _ = self._flatten_orders(held, only)
        if not adding:
            return kept, {}
        symbol_of = {o.client_order_id: o.symbol for o in self._plannable_orders()}
        why = {
            cid: _risk_cancel_reason(verdicts, symbol_of.get(cid, ""), BLOCKING) for cid in adding
        }
        log.warning("risk.entries_cancelled", time=t, cancel_entries=adding, reasons=why)
        return kept, why

    async def _cancel_then_check(
        self, plan: Plan | _EmptyPlan, t: datetime, why: Mapping[str, str] = _NO_REASONS
    ) -> Plan:
        """The plan's cancels, each with its reason in `why` (the rebalance's where it has
        none); then its orders, less those in a symbol where an order being
        cancelled had filled meanwhile (a live broker executes between the plan and the
        cancel: a protective stop hit). The plan counted on those shares: its sale, sent
        anyway, sold them a second time, a short sale in a long-only run. Such orders are
        recorded as cancelled, not sent; the next bar plans from the book again."""
        known = {o.client_order_id: o.filled_quantity for o in self.broker.open_orders()}
        moved: set[str] = set()
        for cid in plan.cancel:
            cancelled = await self.broker.cancel(cid, why.get(cid, _REBALANCE_CANCEL))
            if cancelled is not None:
                one = [cancelled]
                self._record_orders(one, self._booked(t))
                self._publish_items("orders", one, t)
                # Only an order open when the plan was made: a resumed plan's cancel of one
                # closed before the restart returns its old fills, booked long ago.
                was = known.get(cid)
                if was is not None and cancelled.filled_quantity > was + 1e-9:
                    moved.add(cancelled.symbol)
        if not moved:
            return Plan(orders=list(plan.orders), cancel=list(plan.cancel))
        dropped = [o for o in plan.orders if o.symbol in moved]
        for o in dropped:
            o.status = OrderStatus.CANCELLED
            o.reason = "not sent: an order being cancelled in this symbol had filled"
            o.updated_at = t
        if dropped:
            self._record_orders(dropped, self._booked(t))
            self._publish_items("orders", dropped, t)
            log.warning(
                "plan.dropped_after_fill",
                time=t,
                symbols=sorted(moved),
                orders=[o.client_order_id for o in dropped],
            )
        return Plan(
            orders=[o for o in plan.orders if o.symbol not in moved], cancel=list(plan.cancel)
        )

    def request_stop(self) -> None:
        """Finish the current bar, then stop cleanly (SIGTERM lands here)."""
        self._stop_requested = True
        self.clock.request_stop()
        if self._stop_event is not None:
            self._stop_event.set()  # a warm-up waiting on its source
        interrupt = getattr(self.store, "interrupt_check", None)
        if interrupt is not None:
            interrupt()  # a SQLite store's check at a live start: minutes, not waited for

    async def run_until_done(self) -> EngineResult:
        # The pipeline as the run has it (it may be another since the engine was made).
        _label_instances(self.pipeline.plugins())
        resend = getattr(self.cache, "resend_on_recovery", None)
        if resend is not None:  # the published state back at once when Redis is
            resend(f"{self.run.run_id}:state")
        # The clock starts last, after the warm-up: connect, warm up, then trade.
        parts = tuple(
            p
            for p in (
                self.lock,
                *self.extra_parts,
                self.store,
                self.cache,
                self.publisher,
                self.feed,
                self.broker,
            )
            if p is not None
        )
        started: list[Any] = []
        live = froze = replaying = False
        reconciler: asyncio.Task[None] | None = None
        booker: asyncio.Task[None] | None = None
        foreign_watch: asyncio.Task[None] | None = None
        refresher: asyncio.Task[None] | None = None
        splits_task: asyncio.Task[None] | None = None

        async def end_background() -> None:
            # The run's background tasks, as they stand when called (one list for the three
            # ends: the stop, a failure, the finally).
            await self._end_tasks(
                reconciler, booker, foreign_watch, refresher, splits_task, *self._split_cancels
            )

        # Live bars the source did not deliver at their release, fetched again before the
        # next bar that arrives (bounded: a source down for weeks loses the oldest).
        missed: deque[datetime] = deque(maxlen=_MISSED_BARS_KEPT)
        # A live daemon's instance lock (InstanceLockService) answers before each bar whether
        # it is still held; a replay's run lock has no such check.
        ensure_held = getattr(self.lock, "ensure_held", None)
        try:
            for part in parts:
                if not await self._start_part(part):
                    log.info("engine.stopped_before_start", run_id=self.run.run_id)
                    if self.store in started:
                        await self._keep_operator_state()
                    return self.result()
                started.append(part)
            structlog.contextvars.bind_contextvars(run_id=self.run.run_id)
            if self._durable:
                try:
                    stored = await self._open_run_record()
                except StoreCheckStopped:
                    # A SIGTERM during the SQLite store's check of its file: a stop before
                    # the first bar, as one while the parts started.
                    log.info("engine.stopped_before_start", run_id=self.run.run_id)
                    return self.result()
                self._record_begun = True
                # A control's row is no bar: a run that decided none starts as a new one.
                resume = self._without_control_row(stored)
                await self._record_build(resume)
                if resume is not None:
                    await self._resume(resume)
                    self._warn_of_foreign_orders()
                else:
                    await self._controls_stored_from_now()
                    await self._warn_if_not_continuing()
                    self._warn_of_foreign_orders()
                    await self._check_account_cash()
                session = getattr(self.audit, "session", None)
                if session is not None:
                    session(
                        started_at=datetime.now(UTC),
                        resumed_from=self.resumed_from,
                        # What the engine decided: a run with only a control's row is
                        # new. The store holds it all the same, so the earlier process's
                        # audit lines are this run's, not set aside.
                        resumed=resume is not None,
                        keep_log=stored is not None,
                    )
                await self._publish(force=True)  # the state from the start, not the first bar
            else:
                if self._stop_requested:
                    # Stopped while its parts started (a backtest's signal): the run's record
                    # and an earlier run's of this id are left as they were.
                    log.info("engine.stopped_before_start", run_id=self.run.run_id)
                    return self.result()
                # Before the store deletes anything: a refused replay leaves it as it was.
                replayable = getattr(self.audit, "check_replayable", None)
                if replayable is not None:
                    replayable()
                await self.store.begin_run(self.run)
                self._record_begun = True
                begin = getattr(self.audit, "begin_run", None)
                if begin is not None and (removed := begin()):
                    log.info("audit.earlier_run_removed", run_id=self.run.run_id, files=removed)
                for hook in self.after_begin:
                    hook()
            log.info(
                "engine.start",
                mode=self.run.mode,
                symbols=len(self.symbols),
                history_bars=self.history.capacity,
                features=list(self.features.names),
            )
            await self._warm_up()
            # The start-up heap out of the collector's generations (engine/collector.py).
            if self.run.mode == "live":
                live, froze = True, collector.live_started()
            else:
                collector.replay_started()
                replaying = True
            self._bar_lock = asyncio.Lock()
            if self.splits_ahead is not None and not self._stop_requested:
                self._wire_splits_ahead()
                last = self._last_bar_seen()
                if last is not None:
                    # Before the first reconciliation: a split going ex on the day of the
                    # next bar (a restart on the ex-date) is held and expected, and applied
                    # by its bar.
                    done, due = await self._unless_stopped(
                        self._splits_due(last, day=self.splits_ahead.next_day(last))
                    )
                    if done and due:
                        await self._unless_stopped(self._cancel_before_split(due, last))
                splits_task = asyncio.create_task(self._splits_every(), name="splits")
            if not self._stop_requested and callable(getattr(self.broker, "positions", None)):
                # A stop while the broker hangs must not wait out its calls' timeouts.
                wanted = getattr(self.broker, "reconcile_wanted", None)
                if wanted is not None:
                    wanted.clear()  # this round covers what start-up and resume said
                await self._unless_stopped(self._reconcile())
                if not self._stop_requested:
                    reconciler = asyncio.create_task(self._reconcile_every(), name="reconcile")
                arrived = getattr(self.broker, "fills_arrived", None)
                if not self._stop_requested and arrived is not None:
                    booker = asyncio.create_task(
                        self._book_fills_as_they_arrive(arrived), name="late-fills"
                    )
                found = getattr(self.broker, "foreign_found", None)
                if not self._stop_requested and found is not None:
                    foreign_watch = asyncio.create_task(
                        self._watch_foreign_orders(found), name="foreign-orders"
                    )
            if not self._stop_requested and self._durable:
                refresher = asyncio.create_task(self._refresh_state_every(), name="state")
            if not self._stop_requested:
                await self.clock.start()
                started.append(self.clock)
                self.on_ready()
            self.on_heartbeat()
            # The clock's own iterator (not a generator around it): one async step a bar.
            async for t in _no_times() if self._stop_requested else self.clock:
                self._count_dropped_releases()  # before the step that checkpoints them
                if live:
                    if self._released_again(t, missed):
                        continue
                    self.bar_in_progress = t
                # Twice a bar: a replay's no-op is not called (a call costs what a bar's
                # dozen attribute reads do).
                if self.on_heartbeat is not _no_heartbeat:
                    self.on_heartbeat(busy=True)
                if missed:
                    await self._recover_missed(missed)  # older first: fetched in time order
                    if self._stop_requested:
                        break
                try:
                    if live:
                        # A vendor's fetch of a large universe takes minutes at its rate
                        # limit: a stop does not wait for it (nothing is decided yet; the
                        # next start's warm-up fetches the bar).
                        done, bar = await self._unless_stopped(self.feed.bars(t))
                        if not done:
                            break
                    else:
                        bar = await self.feed.bars(t)
                except RetryableError as exc:
                    # No bar from the source (down, throttled, not posted yet): nothing is
                    # decided on a bar the daemon does not have. The feed reports it in
                    # /ready and /metrics; it is asked for again while it may still trade
                    # (`_fetch_late`), else the next release fetches it again first.
                    self.bars_unavailable += 1
                    self.bar_in_progress = None  # asked for again: /ready names it late
                    deadline = self._late_bar_deadline(t) if live else None
                    # The outage's first bar is a warning; later bars are counted and said
                    # at a bounded rate (FeedOutage; each bar a debug line).
                    first_wait, retry = self._late_retry(deadline)
                    self.feed_outage.unavailable(t, str(exc), retry)
                    for unavailable in self.on_bar_unavailable:
                        unavailable(t)
                    bar = (
                        None
                        if deadline is None
                        else await self._fetch_late(t, deadline, first_wait, missed)
                    )
                    if bar is None:
                        if len(missed) == missed.maxlen:
                            self.feed_outage.lost(missed[0], reason="too many missed")
                            self._never_traded()
                            self._feed_bar_lost(missed[0])
                        missed.append(t)
                if bar is not None:
                    self._went_live = True
                    if reconciler is None and not self._durable:
                        # Nothing else takes the bar lock (it keeps the reconciler's book
                        # checks and an operator's controls between bars): a replay spares
                        # its five calls every bar.
                        self.feed_outage.delivered(t)
                        await self.step(bar, self._catch_up(t))
                    else:
                        if ensure_held is not None and not await ensure_held():
                            # The lock's session ended and another daemon holds it now
                            # (a PostgreSQL restart): this bar is not decided here. No I/O
                            # while the session is alive (InstanceLockService.ensure_held).
                            break
                        while missed:  # still not delivered, and a newer bar is here
                            lost = missed.popleft()
                            self.feed_outage.lost(lost, newer=t)
                            self._never_traded()
                            self._feed_bar_lost(lost)
                        self.feed_outage.delivered(t)  # its lost bars counted in its line
                        async with self._bar_lock:
                            await self.step(bar, self._catch_up(t))
                        await self._store_late_bars()
                self.bar_in_progress = None
                if self.on_heartbeat is not _no_heartbeat:
                    self.on_heartbeat()
                if self._stop_requested:
                    break
            self.bar_in_progress = None  # (a stop during a fetch left the loop with it set)
            # Nothing reads features after the last bar: a replay's whole histories go before
            # its report is read back (BatchFeatureSource.release).
            release = getattr(self.features, "release", None)
            if release is not None:
                release()
            await end_background()
            await self._book_final_updates()
            self._checkpoint_at_stop()
            self.feed_outage.at_stop()
            self._warn_of_untraded_bars(missed)
            self.broker_outage.at_stop(self._last_time)
            if self._splits:
                log.info("corporate.splits_applied", splits=self._splits)
            self.risk_record.finish(self._last_time)
            self._warn_if_never_ready()
            self._warn_of_signals_without_view()
            self._warn_of_sizing_without_targets()
            result = self.result()
            reported = False
            try:
                if self._after_last_bar is not None:
                    # The last rows go to the writer first, and the hook runs while they
                    # are written: a backtest's report is made from the store's records
                    # meanwhile (Store.recorded), not read back after them.
                    await self.store.write_behind()
                    await self._after_last_bar(self)
                reported = True
            finally:
                if reported:
                    # The audit log's last lines written before the row says the run ended
                    # well: a write that fails there (a full audit folder) ends it failed
                    # (below). A replay's store goes on when the audit log's part of their
                    # shared writer process fails, so the end was stored as a finished
                    # run's beside a cut log. (A failed report ends the run failed anyway.)
                    self.audit.flush(force=True)
                # The loop is over: the run's record ends even if its report failed.
                ended: dict[str, Any] = {"bars": result.bars}
                if result.bars_never_traded:
                    ended["bars_never_traded"] = result.bars_never_traded
                if result.stopped_early and self.run.mode != "live":
                    # A replay that did not reach its last bar (a signal, the lock lost);
                    # every live run ends by being stopped.
                    ended["stopped_early"] = True
                await self.store.end_run(self.run.run_id, ended)
                self._record_begun = False
            await self._publish(force=True)
            await self.store.flush()
            if self._before_stop is not None:
                await self._before_stop(self)
            log.info(
                "engine.stop",
                bars=result.bars,
                fills=result.fills,
                equity=self.portfolio.equity,
                stopped_early=result.stopped_early,
                bars_never_traded=result.bars_never_traded,
            )
            return result
        except Exception as exc:
            if isinstance(exc, PluginFault):
                # The CLI prints the fault's one line; the log keeps its whole traceback (the
                # plugin's frames are on its __cause__), in a live daemon's log as a replay's.
                log.error(
                    "plugin.failed",
                    plugin=exc.plugin,
                    stage=exc.stage,
                    time=exc.bar_time,
                    where=exc.where,
                    exc_info=exc,
                )
            # The background tasks end first: one booking fills or orders between bars
            # stored them after the run's row was ended as failed.
            await end_background()
            await self._end_failed_run(exc)
            raise
        finally:
            # Still running when the loop failed.
            await end_background()
            if self._bar_lock is not None:
                async with self._bar_lock:  # a control storing its state finishes first
                    self._controls_closed = True
            self._controls_closed = True
            if live:
                collector.live_ended(froze)
            if replaying:
                collector.replay_ended()
            # The lock last, after the audit log's last lines: the next holder may delete
            # or rewrite what it guards (a replay's begin_run).
            lock = self.lock if self.lock in started else None
            try:
                for part in reversed(started):
                    if part is lock:
                        continue
                    try:
                        await part.stop()
                    except Exception:  # stopping must reach every part
                        log.exception("engine.stop_failed", part=type(part).__name__)
                self.close_held()
            finally:
                try:
                    if lock is not None:
                        await lock.stop()
                except Exception:
                    log.exception("engine.stop_failed", part=type(lock).__name__)
                finally:
                    structlog.contextvars.unbind_contextvars("run_id")

    async def _end_failed_run(self, exc: Exception) -> None:
        """A run that ends by an exception: its row ended and marked failed with the error's
        first line, and `engine.failed` logged. The row looked like a run still going (or
        killed), and the log had no end of the run. A live run's row is reopened by its next
        start all the same (`resume_run` reads the checkpoint, not the end): a crash still
        resumes."""
        lines = str(exc).strip().splitlines()
        error = mask_text(f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)
        if not self._record_begun:
            # Refused before the run's row was made (a second instance, a live run's id):
            # the run it names may be alive in another process, and `engine.failed` with
            # its run id fired alerts on a run that was not failing.
            log.error("engine.start_refused", run_id=self.run.run_id, error=error)
            return  # an earlier run's row stays
        log.error("engine.failed", run_id=self.run.run_id, bars=self._bars, error=error)
        self._record_begun = False
        try:
            await self.store.end_run(
                self.run.run_id, {"bars": self._bars, "failed": True, "error": error}
            )
        except Exception as store_exc:  # the store itself may be what failed
            log.error("engine.failure_not_stored", error=str(store_exc))

    @staticmethod
    async def _end_tasks(*tasks: asyncio.Task[None] | None) -> None:
        """The run's background tasks (reconciliation, fills between bars, the published
        state, split look-ups), cancelled and waited for, each cancelled again while it
        runs on: one that lost its cancel (`asyncio.wait_for` around a broker call on
        3.11, core/tasks.py) went on, a reconciler to its next round and the next, the
        fill booker back to waiting for a fill that never came, and the stop waited with
        it for ever. One still running after five rounds is left, named (the loop's close
        ends it)."""

        def lost(task: asyncio.Task[Any]) -> None:
            stack = task.get_stack(limit=1)
            log.warning(
                "engine.task_cancel_lost",
                task=task.get_name(),
                waiting_at=f"{stack[0].f_code.co_name}:{stack[0].f_lineno}" if stack else None,
                rule="cancelled again: a stop must not wait on it",
            )

        left = await cancel_and_wait(tasks, lost=lost)
        if left:
            log.error("engine.tasks_not_stopped", tasks=sorted(t.get_name() for t in left))

    def close_held(self) -> None:
        """The audit log and what the plugins hold (worker processes, files): at the end of
        a run, or for an engine that was built and never run. Every part is closed even
        when one fails: the audit log's own error at its close (a full disk) skipped the
        splits-ahead source, the store's writer and every plugin's worker. The first
        error of the engine's own parts is raised once all are closed."""
        first: BaseException | None = None
        # A replay store's writer process, started with the engine (SqliteStore.prestart),
        # when the store itself never started.
        close_unstarted = getattr(self.store, "close_unstarted", None)
        splits = self.splits_ahead
        for part, close_part in (
            ("audit", self.audit.close),
            ("splits_ahead", None if splits is None else splits.close),
            ("store", close_unstarted),
        ):
            if close_part is None:
                continue
            try:
                close_part()
            except BaseException as e:
                if first is not None:
                    log.error("engine.close_failed", part=part, error=f"{type(e).__name__}: {e}")
                else:
                    first = e
        for plugin in self.pipeline.plugins():
            close = getattr(plugin, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # cleanup must reach every plugin, and not hide the outcome
                    log.exception("plugin.close_failed", plugin=getattr(plugin, "name", "?"))
        if first is not None:
            raise first

    def _explain_rejection(self, kind: str) -> dict[str, Any]:
        """What the first buying-power rejection of a run adds to its warning: when the last
        targets put more than the whole equity into longs, the cause is the strategy, not
        the market (a sizing without a gross limit in the risk chain), and the operator is
        told which plugin and what to change."""
        if kind != "insufficient buying power" or self._last_targets is None:
            return {}
        t = self._last_targets
        longs = float(t[t > 0].sum())
        if not longs > 1.0 + 1e-9:
            return {}
        sizing = self.pipeline.sizing
        name = getattr(sizing, "name", type(sizing).__name__)
        return {
            "targets_long": round(longs, 4),
            "sizing": name,
            "hint": (
                f"the targets after sizing ({name!r}) and the risk chain put {longs:.0%} of "
                "equity into long positions, more than the cash buys: lower the sizing's "
                "exposure or add the max_gross_exposure risk rule"
            ),
        }

    def _booked(self, t: datetime) -> datetime | None:
        """The bar an order state is recorded at, for a live run's store rows and audit
        lines (see `_record_orders`); a replay's go without it (nothing resumes them)."""
        return t if self._durable else None

    def _record_orders(self, orders: Sequence[Order], booked_at: datetime | None) -> None:
        """Order states into the store and the audit log (the store's records, the same
        objects), both with the bar that recorded them: what a resume deletes and a
        restart's `truncate_after` drops by, so the two keep the same states."""
        kept = self.store.record_orders(self.run.run_id, orders, booked_at=booked_at)
        self.audit.orders(orders, kept, booked_at)

    def _book_acked(self, acked: list[Order], t: datetime) -> None:
        self._orders += len(acked)
        self._record_orders(acked, self._booked(t))
        if self.publisher is not None:
            self._publish_items("orders", acked, t)
        self.rejections.on_orders(acked, "submit")
        if self._count_orders:
            for o in acked:
                metrics.ORDERS.labels(status=str(o.status)).inc()

    def _settle_unsent(
        self, exc: RetryableError, unsent: Sequence[Order], t: datetime, said: bool = True
    ) -> None:
        """After a broker failure, the stored intents whose fate is known are closed now, in
        the same bar: those the broker answered (`answered` on the error) as answered, and
        those never sent (`not_sent`, or the whole plan when the failure came before the
        submit: a cancel) as cancelled. Before, they stayed `new` in the store for good: a
        later restart re-checks only the intents after its checkpoint. An order whose send
        outcome is unknown is in neither: the broker looks it up and reports it. Said at the
        outage's rate (`said`; BrokerOutage), else at debug: every bar of an outage closes
        the orders it planned."""
        answered = list(getattr(exc, "answered", ()))
        if answered:
            self._book_acked(answered, t)
        closed = list(getattr(exc, "not_sent", ()))
        for o in unsent:
            o.status = OrderStatus.CANCELLED
            o.reason = f"not placed: the broker failed before it was sent ({exc})"
            o.updated_at = t
            closed.append(o)
        if not closed:
            return
        self._record_orders(closed, self._booked(t))
        self._publish_items("orders", closed, t)
        (log.warning if said else log.debug)(
            "orders.not_placed",
            time=t,
            orders=[o.client_order_id for o in closed],
            hint="closed as cancelled: the broker failed before they were sent; the next "
            "bar decides again",
        )

    async def _retry_refused(
        self, acked: list[Order], t: datetime, transient: Callable[[Order], bool]
    ) -> None:
        """Deliberate retries, within the bar, of orders the broker refused for a transient
        reason (it says which, `transient`: a spent request budget, buying power still held
        by the batch's own sells). Each retry is the same decision under the next attempt
        number, because Alpaca never accepts an id twice, stored as an intent before it is
        sent like any order; a bracket is retried whole. The simulated broker has no such
        refusals (no `retryable_rejection`: the caller does not come here)."""
        for attempt in range(self.retry_attempts):
            refused = [o for o in acked if o.status is OrderStatus.REJECTED and transient(o)]
            if not refused:
                return
            delay = self.retry_delay_s * 2**attempt
            log.warning(
                "orders.retry",
                time=t,
                orders=[o.client_order_id for o in refused],
                attempt=attempt + 2,
                in_s=delay,
            )
            await asyncio.sleep(delay)
            renamed = {o.client_order_id: next_attempt(o.client_order_id) for o in refused}
            retry = []
            for o in refused:
                again = o.snapshot()
                again.client_order_id = renamed[o.client_order_id]
                again.parent_id = renamed.get(o.parent_id or "", o.parent_id)
                again.oco_group = renamed.get(o.oco_group or "", o.oco_group)
                again.status = OrderStatus.HELD if again.parent_id else OrderStatus.NEW
                again.reason, again.filled_quantity, again.updated_at = "", 0.0, None
                retry.append(again)
            if self._durable:
                self.store.record_orders(
                    self.run.run_id, retry, intent=True, booked_at=self._booked(t)
                )
                await self.store.flush()
                faults.reached("intent")
            acked = await self.broker.submit(retry)
            faults.reached("sent")
            self._book_acked(acked, t)

    async def _resume(self, resume: Any) -> None:
        """Continue a stored live run from its checkpoint: the book, the simulated broker's
        open orders, the plugins' own state (kill switches; the signals' once the bars up to
        the checkpoint are replayed), the operator's pause. The bars up to the checkpoint are
        replayed for features only; a bar after it that was cut short is decided again, with
        the same order ids, so what reached the broker is not doubled."""
        self._restored_through = resume.bar_time
        self.resumed_from = resume.bar_time
        truncate = getattr(self.audit, "truncate_after", None)
        if truncate is not None:
            # As the store (resume_run): after what the checkpoint's book holds, which a
            # clean stop carries past its bar (`_checkpoint_at_stop`).
            through = getattr(resume, "booked_through", None) or resume.bar_time
            dropped = truncate(through, resume.stopped_cleanly)
            if dropped:
                log.info("audit.truncated", after=through, records=dropped)
            await self._warn_if_audit_behind()
        st = resume.state
        if st is not None:
            if st.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(
                    f"checkpoint of run {self.run.run_id} has format {st.get('format')!r}, "
                    f"this build reads {CHECKPOINT_FORMAT}: finish that run with the build "
                    "that wrote it, or start a new run (another run.name)"
                )
            self.portfolio.restore(st["portfolio"], resume.bar_time)
            restore = getattr(self.broker, "restore", None)
            if st.get("broker") is not None and restore is not None:
                restore(st["broker"])
            saved = st.get("plugins", {})
            signals = {id(plugin) for plugin, _ in self.pipeline.signals}
            for key, plugin in instance_keys(self.pipeline.plugins()):
                fn = getattr(plugin, "restore", None)
                base = key.split("#")[0]
                if key not in saved and base in saved and f"{base}#2" not in saved:
                    # A checkpoint from before instances had keys of their own: its one
                    # entry (the last instance's) went to every instance, as it did then.
                    stored = base
                else:
                    stored = key
                if fn is None or stored not in saved:
                    continue
                if id(plugin) in signals:
                    # The replay of the bars up to the checkpoint feeds the signals again
                    # (_replay_restored): restored first, a stateful signal counted those
                    # bars twice. Restored once they are replayed (_restore_signals).
                    self._signal_states[key] = (fn, saved[stored])
                else:
                    fn(saved[stored])
            self.trading_state = st.get("trading_state", "active")
            if self._operator_state is not None:
                log.info(
                    "control.kept_over_checkpoint",
                    state=self._operator_state,
                    checkpoint_state=self.trading_state,
                )
                self.trading_state = self._operator_state
            self._bars = int(st.get("bars", 0))
            self._orders = int(st.get("orders", 0))
            self._verdicts = int(st.get("verdicts", 0))
            # A checkpoint of an earlier build has neither: its run went live if it traded.
            self._went_live = bool(st.get("went_live", self._bars > 0))
            self.bars_never_traded = 0
            self._never_traded(int(st.get("bars_never_traded", 0)))
            if st.get("risk") is not None:  # (not in a checkpoint of an earlier build)
                self.risk_record.restore(st["risk"])
            alerter = getattr(self, "alerter", None)
            if alerter is not None and st.get("alerts"):
                alerter.assume_firing(st["alerts"])
            if st.get("targets") is not None:
                self._last_targets = np.asarray(st["targets"], dtype=np.float64)
            if self.splits_ahead is not None:
                self.splits_ahead.restore(st.get("splits_ahead"))
            self.adoptions.restore(st.get(adopt.CHECKPOINT_KEY))
            restore_held = getattr(self.feed, "restore_held", None)
            if restore_held is not None:  # before the warm-up, whose history judges them
                restore_held(st.get("feed"), resume.bar_time)
        if st is not None:
            self._warn_if_model_changed(st.get("signal_sources"))
        if resume.bar_time is not None and st is not None:
            self._last_checkpoint = (resume.bar_time, st)
            if self._live_metrics:
                metrics.LAST_BAR_TIME.set(resume.bar_time.timestamp())
                self._money_metrics()  # 0 until the next bar, a weekend away, before
        await self._controls_stored_from_now()
        resume_broker = getattr(self.broker, "resume", None)
        if resume_broker is not None:
            known = [order_from_dict(d) for d in (st or {}).get("open_orders", [])]
            # This run's intents only (the store also holds orders the broker reported).
            intents = [
                _order_of(r) for r in resume.unconfirmed if self._is_own(r["client_order_id"])
            ]
            delay = 1.0
            while True:
                try:
                    await resume_broker(known, intents)
                    break
                except RetryableError as exc:
                    # The broker is unreachable at start: nothing is traded before the book
                    # and the broker agree, so wait (with backoff, /health alive) and retry.
                    log.warning("resume.broker_retry", error=str(exc), retry_in_s=delay)
                    if await self._sleep_unless_stopped(delay):
                        return
                    delay = min(delay * 2, 60.0)
            if getattr(self.broker, "state", None) is None:
                if intents:
                    self._redo = {o.client_order_id: o.snapshot() for o in intents}
                self._interrupted = _interrupted_plan(st, intents)
        pf = self.portfolio
        log.info(
            "run.resumed",
            after=resume.bar_time,
            equity=pf.equity,
            cash=pf.cash,
            positions=int(np.count_nonzero(pf.quantity)),
            open_orders=len(self.broker.open_orders()),
            trading_state=self.trading_state,
            unconfirmed_intents=len(resume.unconfirmed),
        )

    async def _warn_if_audit_behind(self) -> None:
        """Say when the audit log lacks fills the store holds. A live process writes a bar's
        lines before the store commits it, so a crash never leaves the store ahead; a
        restore does: an audit folder backed up before the store (or not restored at all)
        went on with the restored run's later fills missing from it, without a word.

        A log with no fill line is not behind for that alone: rotated with no backup
        (`log.audit_backups = 0`) or by logrotate (copytruncate, compress, dateext), its
        fills are in files it does not read, and every restart warned until the next fill.
        It is behind when none of its files (nor its `.live` mark) is there: the folder not
        restored; or when its
        earliest record is of a bar at or before the store's last fill (it began before
        that fill and lacks it); records that all begin after it are a rotated log's."""
        audit_last = getattr(self.audit, "last_fill_time", None)
        store_last = getattr(self.store, "last_fill_time", None)
        if audit_last is None or store_last is None:
            return
        stored = await store_last(self.run.run_id)
        if stored is None:
            return
        logged = audit_last()
        if logged is not None and logged >= stored:
            return
        if logged is None and self._audit_rotated_since(stored):
            return
        log.warning(
            "audit.behind_store",
            audit_log=str(getattr(self.audit, "path", "")),
            audit_last_fill=logged,
            store_last_fill=stored,
            hint="the audit log lacks the fills the store holds after its last one (an "
            "audit folder restored from an older backup than the store, or not restored): "
            "the run goes on and appends to it; restore the audit folder from the same "
            "backup as the store, or take the missing records from the store's orders, "
            "order_events and fills tables",
        )

    def _audit_rotated_since(self, stored: datetime) -> bool:
        """See `_warn_if_audit_behind`: the audit log's files are there, and the records
        they hold (if any) all begin after `stored`, the store's last fill."""
        present = getattr(self.audit, "files_present", None)
        first = getattr(self.audit, "first_record_time", None)
        if present is None or first is None or not present():
            return False
        earliest = first()
        return earliest is None or earliest > stored

    def _warn_if_model_changed(self, stored: Any) -> None:
        """Say when the run resumes on other signals' sources (plugins and model versions)
        than its checkpoint's bar decided with. An empty `model_dir` loads the model
        `tradingd retrain` published under the working directory (`var/models/current`), or
        the shipped one when there is none: a store restored, or a run moved, without that
        folder went on deciding with the shipped model, said only by an info line. Not
        refused: a model retrained while the daemon was stopped is a change the operator
        made. A checkpoint of an earlier build has no sources: nothing to compare."""
        if not isinstance(stored, str):
            return
        now = self._signal_source()
        if stored == now:
            return
        log.warning(
            "run.model_changed",
            checkpoint_sources=stored,
            sources=now,
            checkpoint_bar=self.resumed_from,
            hint="the run continues with other signals or model versions than its last "
            "bar's: after a restore or a move, copy var/models/ (the models `tradingd "
            "retrain` published, which an empty model_dir loads from the working "
            "directory) from the old host, or set model_dir, and restart; a model retrained "
            "while the daemon was stopped is expected here",
        )

    def _without_control_row(self, resume: Any) -> Any:
        """A run whose stored row is a control's (`BEFORE_FIRST_BAR`) has decided no bar:
        read as a checkpoint, its 1970 time went down the resumed path, which skips a new
        run's checks (the account's cash) and records a resume after 1970. Only its trading
        state is kept (unless one answered during this start wins); it is a new run (None),
        or, with intents stored (a first bar cut short), one without a checkpoint, whose
        intents the broker looks up."""
        st = None if resume is None else resume.state
        if st is None or not st.get(BEFORE_FIRST_BAR):
            return resume
        if self._operator_state is None:
            self.trading_state = str(st.get("trading_state", "active"))
        if not resume.unconfirmed:
            return None
        return dataclasses.replace(resume, bar_time=None, state=None, booked_through=None)

    def _plugin_states(self) -> dict[str, Any]:
        """Each plugin's `state()`, by its checkpoint key (`instance_keys`); a signal's that
        is not restored yet (the replay up to the checkpoint goes on) is the checkpoint's."""
        out: dict[str, Any] = {}
        pending = self._signal_states
        for key, plugin in instance_keys(self.pipeline.plugins()):
            fn = getattr(plugin, "state", None)
            if key in pending:
                out[key] = pending[key][1]
            elif fn is not None and callable(fn):
                out[key] = _state_of(plugin, fn, self._last_time)
        return out

    def _restore_signals(self) -> None:
        """The signal plugins' checkpointed state, once the bars up to the checkpoint have
        been replayed (or none of them came): each is then exactly the checkpoint's, while a
        plugin without `state()` has rebuilt its windows from the replay."""
        pending, self._signal_states = self._signal_states, {}
        for fn, saved in pending.values():
            fn(saved)

    def _kill_switches(self, alerter: Any) -> list[dict[str, Any]]:
        """The kill switches firing once this bar's alert rules have run (they run after the
        checkpoint): the risk plugins halted now, as the rules will read them, with the
        alerter's own record where it has one. The alerter's list alone was a bar late: a
        stop on the breach's bar alerted the halt again after the restart, and one after a
        reset-halt sent its resolution twice."""
        firing = {a["key"]: a for a in alerter.firing() if a["kind"] == KILL_SWITCH}
        out = []
        for key, plugin in instance_keys(self.pipeline.risks):
            if getattr(plugin, "halted", None) is True:
                out.append(
                    firing.get(key)
                    or {
                        "kind": KILL_SWITCH,
                        "key": key,
                        "severity": CRITICAL,
                        "title": kill_switch_title(key),
                        "since": datetime.now(UTC).isoformat(),
                    }
                )
        return out

    def _risk_limits(self, alerter: Any, open_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The `risk_limit` conditions firing once this bar's alert rules have run: the
        restrictions in force after this bar (`RiskRecord`, keyed by plugin and rule as the
        rules key them), with the alerter's own record where it has one. A restart then
        neither alerts a halt in force again nor leaves one that ended unresolved."""
        firing = {a["key"]: a for a in alerter.firing() if a["kind"] == RISK_LIMIT}
        out = []
        for r in open_:
            key = f"{r['plugin']}/{r['rule']}"
            out.append(
                firing.get(key)
                or {
                    "kind": RISK_LIMIT,
                    "key": key,
                    "severity": WARNING,
                    "title": f"risk limit {key}: {r['action']}",
                    "since": datetime.now(UTC).isoformat(),
                }
            )
        return out

    def _checkpoint(self, t: datetime, extra: Mapping[str, Any] | None = None) -> None:
        """Everything a restarted process needs to continue after bar `t` (see _resume),
        with `extra` (a clean stop's: `_checkpoint_at_stop`)."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "portfolio": self.portfolio.state(),
            "trading_state": self.trading_state,
            "bars": self._bars,
            "orders": self._orders,
            "verdicts": self._verdicts,
            # The run's count (see __init__), and whether it had gone live, for a restart.
            "bars_never_traded": self.bars_never_traded,
            "went_live": self._went_live,
            "targets": self._last_targets.tolist() if self._last_targets is not None else None,
            # The counts and restrictions of the summary, and the kill switches alerted: a
            # restart continues them (not counted from 0, not started or alerted again).
            "risk": self.risk_record.state(),
            # The signals and model versions this bar decided with: a resume on others (a
            # restore or move without var/models) is said (`_warn_if_model_changed`).
            "signal_sources": self._signal_source(),
        }
        alerter = getattr(self, "alerter", None)
        if alerter is not None:
            state["alerts"] = (
                self._kill_switches(alerter)
                + self._risk_limits(alerter, state["risk"]["open"])
                # A position difference alerted: a restart neither alerts it again nor leaves
                # it unresolved once the two agree (`_reconcile`).
                + [a for a in alerter.firing() if a["kind"] == RECONCILIATION]
                # An asset the broker does not trade: a restart reads the broker's assets
                # before the first bar and keeps it firing, or resolves it if it trades
                # again (`AlertRules._untradable`); it fired again after each restart.
                + [a for a in alerter.firing() if a["kind"] == UNTRADABLE_ASSET]
            )
        broker_state = getattr(self.broker, "state", None)
        if broker_state is not None:
            state["broker"] = broker_state()
        else:
            # The broker keeps its own book: remember what of this run was open, to follow
            # it from the fills the book holds after a restart. Not another's (by hand, another
            # run's): listed here, a restarted broker followed it as a known order of this run,
            # and nothing warned of it as foreign (`_warn_of_foreign_orders`); the broker
            # adopts it again at its start, as a new run's does.
            own = self._placed_by_us
            state["open_orders"] = [
                order_to_dict(o) for o in self.broker.open_orders() if own(o.client_order_id)
            ]
        state["plugins"] = self._plugin_states()
        if self.adoptions.pending:  # asked, not applied yet: a restart applies them
            state[adopt.CHECKPOINT_KEY] = self.adoptions.state()
        if self.splits_ahead is not None:
            # A restart between the bar that held a symbol and its ex-date's bar still knows
            # the split (reconciliation, the cash in lieu), whatever the source says then.
            state["splits_ahead"] = self.splits_ahead.state()
        held_state = getattr(self.feed, "held_state", None)  # a live vendor feed's
        if held_state is not None and (held := held_state()) is not None:
            # Its held-back bars and the actions not carried yet: a restart before the
            # answer that judges them still gets their split or dividend to the book.
            state["feed"] = held
        if self._booked_late is not None and self._booked_late > t:
            # Booked between bars after `t` (a clean stop's last updates): in this book, so
            # a resume keeps them (storage.buffered.booked_through).
            state["booked_through"] = self._booked_late.isoformat()
        if extra:
            state.update(extra)
        self._last_checkpoint = (t, state)
        self.store.record_checkpoint(self.run.run_id, t, state)  # type: ignore[attr-defined]

    async def _reconcile_every(self) -> None:
        # A broker that can ask for a round (Alpaca, after an answer that contradicted an
        # order: `alpaca.order_answer_mismatch`) gets it at once; the book and the broker
        # were compared only at the next round, up to `reconcile_interval_s` (300 s) later.
        wanted: asyncio.Event | None = getattr(self.broker, "reconcile_wanted", None)
        while True:
            if wanted is None:
                await asyncio.sleep(self.reconcile_interval_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wanted.wait(), self.reconcile_interval_s)
                wanted.clear()
            try:
                await self._reconcile()
            except Exception as exc:
                # Not the broker being away (that is RetryableError, handled inside): a bug
                # or an answer nobody expected. The task ended without a word, /ready kept
                # the last good round, and the stop raised it (skipping the run's end).
                self.reconcile_error = f"{type(exc).__name__}: {exc}"
                log.exception("reconcile.failed", retry_in_s=self.reconcile_interval_s)

    async def _book_fills_as_they_arrive(self, arrived: Callable[[], Awaitable[None]]) -> None:
        """A live broker's fills between bars, booked (stored, published: /status, the
        cache) as they arrive, under the bar lock. They waited for the next reconciliation
        round (`live.reconcile_interval_s`, 300 s) or bar: /status showed a filled exit's
        position and its legs as working for tens of seconds after `alpaca.fill`. Each fill
        is booked once: the broker's `updates` hands it to whoever asks first. Not before
        the first bar; one arriving while a resumed run replays its completed bars is
        booked as soon as the replay is past them."""
        assert self._bar_lock is not None
        while True:
            await arrived()
            if self.catching_up_to is not None:
                # Booked once the replay is past its completed bars: a fill that arrived
                # during it waited for the next reconciliation round, the next live bar
                # being up to a day away.
                await self._caught_up.wait()
            try:
                async with self._bar_lock:
                    # What has arrived, no request: a poll under the bar lock kept a bar
                    # due meanwhile waiting for Alpaca (the stream down, every fill a poll
                    # found woke this and polled again).
                    await self._book_late_updates(poll=False)
            except Exception:  # a bug or an unexpected answer: said; the next bar books them
                log.exception("broker.late_fills_failed")

    async def _reconcile(self) -> None:
        """Compare the book with the broker's positions, after booking what the broker has
        reported and the engine has not yet (those are not differences). Rules:
        - equal (within 1e-6 of a share): nothing; a symbol blocked earlier is released;
        - the broker holds a quantity the book does not (a position never ordered by this
          run, a fill missed, a trade by hand), by the same amount at two checks
          `reconcile_confirm_s` apart: trading in the symbol stops, it shows in /ready
          and is alerted, never adopted or overwritten silently. One check alone is no
          proof: the positions may hold a fill whose event is still on the way (booked a
          moment later), and that was alerted as critical and held /ready at 503 for a
          whole interval. A difference that moved between the checks is blocked too when
          no order of ours in the symbol was working at either check (nothing of ours can
          be filling: someone trades the account by hand, another program on the same
          keys), or when it has moved at `_RECONCILE_MOVING_ROUNDS` rounds in a row;
          otherwise (an order of ours filling in parts) it waits for the next round;
        - the broker unreachable: tried again at the next round (logged once per failure).
        At each check, a difference beside an order of ours working has the broker check
        its open orders first (`_check_orders_beside`): a fill whose stream event was lost
        is booked, no difference. Symbols outside the universe are not this run's and are
        not compared."""
        first = await self._position_differences()
        if first is None:
            return
        ordering = self._symbols_with_open_orders()
        new = {sym: d for sym, d in first.items() if sym not in self.reconcile_blocked}
        if new:
            delay = min(self.reconcile_confirm_s, self.reconcile_interval_s)
            log.info("reconcile.recheck", symbols=sorted(new), in_s=delay)
            self._reconcile_checking = {
                sym: f"broker holds {b:g}, the book {k:g}; being checked again"
                for sym, (b, k) in new.items()
            }
            try:
                await asyncio.sleep(delay)  # the bar lock released: bars go on meanwhile
                again = await self._position_differences()
            finally:
                self._reconcile_checking = {}
            if again is None:
                return
            ordering |= self._symbols_with_open_orders()
        else:
            again = first
        blocked: dict[str, str] = {}
        moving: dict[str, int] = {}
        for sym, (broker, book) in again.items():
            if sym in self.reconcile_blocked:
                blocked[sym] = _difference_text(broker, book, self._splits_missed.get(sym))
            elif sym in new and _same_gap(new[sym], (broker, book)):
                blocked[sym] = self._position_difference(sym, broker, book)
            elif sym not in ordering:
                blocked[sym] = self._position_difference(
                    sym, broker, book, moved_from=_gap(new.get(sym)), rule=_NO_ORDER_OF_OURS
                )
            elif (rounds := self._reconcile_moving.get(sym, 0) + 1) >= _RECONCILE_MOVING_ROUNDS:
                blocked[sym] = self._position_difference(
                    sym, broker, book, moved_from=_gap(new.get(sym)), rule=_KEPT_MOVING
                )
            else:
                moving[sym] = rounds
                log.info(
                    "reconcile.unsettled",
                    symbol=sym,
                    broker=broker,
                    book=book,
                    rounds=rounds,
                    rule="not the same at two checks, an order of ours working in it (filling "
                    f"in parts): compared again at the next round, blocked if still moving "
                    f"at round {_RECONCILE_MOVING_ROUNDS}",
                )
        self._reconcile_moving = moving
        for sym in set(new) - set(again):
            log.info("reconcile.settled", symbol=sym, rule="gone at the second check")
        for sym in set(self.reconcile_blocked) - set(blocked):
            log.info("reconcile.resolved", symbol=sym)
            self._splits_missed.pop(sym, None)
        alerter = getattr(self, "alerter", None)
        if alerter is not None:
            # Every difference alerted and not found now is resolved: those of this process,
            # and those a restart took over from the checkpoint (fixed at the broker while
            # the daemon was down, the usual order: their alert never resolved before).
            for a in alerter.firing():
                if a["kind"] == RECONCILIATION and a["key"] not in again:
                    alerter.condition(RECONCILIATION, a["key"], False)
        self.reconcile_blocked = blocked
        self._blocked_broker = {sym: again[sym][0] for sym in blocked}
        self.last_reconciled_at = datetime.now(UTC)
        log.info("reconcile.done", symbols=len(self.symbols), blocked=sorted(blocked))

    async def _position_differences(self) -> dict[str, tuple[float, float]] | None:
        """{symbol: (broker's quantity, book's)} where they differ, under the bar lock; None
        when the broker cannot answer or fills arrived while its positions were read."""
        assert self._bar_lock is not None
        async with self._bar_lock:
            try:
                held = await self._read_positions()
                if held is None:
                    return None
                out = self._differences(held)
                if out and await self._check_orders_beside(out):
                    # Fills of ours the broker had not reported: booked, so compared again
                    # on positions read after them.
                    held = await self._read_positions()
                    if held is None:
                        return None
                    out = self._differences(held)
            except RetryableError as exc:
                self.reconcile_error = str(exc)
                log.warning("reconcile.unavailable", error=str(exc))
                return None
            self.reconcile_error = None
            self._say_outside_universe(held)
            return out

    async def _read_positions(self) -> Mapping[str, float] | None:
        """The broker's positions, with the fills it reported before and during the read
        booked; None when fills arrived during it (the positions may or may not include
        them: compared at the next round, not on a moving picture)."""
        await self._book_late_updates()
        held: Mapping[str, float] = await self.broker.positions()  # type: ignore[attr-defined]
        if await self._book_late_updates():
            log.info("reconcile.deferred", reason="fills arrived during the check")
            return None
        return held

    def _differences(self, held: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        """{symbol: (broker's quantity, book's)} where they differ (a split's expected
        difference aside)."""
        quantity = self.portfolio.quantity
        out: dict[str, tuple[float, float]] = {}
        for i, sym in enumerate(self.symbols):
            book = float(quantity[i])
            broker = float(held.get(sym, 0.0))
            if not same_quantity(book, broker):
                if self._split_expected(sym, broker, book):
                    continue
                out[sym] = (broker, book)
        return out

    async def _check_orders_beside(self, differences: Mapping[str, Any]) -> int:
        """A difference in a symbol with an order of ours working may be a fill of ours the
        broker has not reported: a live stream loses an event now and then with the
        connection up (Alpaca's known behaviour), and the broker asks for its orders only
        with the stream down. Those orders are checked at the broker (`check_open_orders`)
        and what it finds booked; returns the number of fills booked. Before, such a fill
        was booked only by the broker's periodic check (5 minutes) and the symbol blocked as
        unexplained meanwhile, with a critical alert. Paced by the rounds: at most once
        per check, two a round, and only beside such a difference. Raises RetryableError
        when the broker cannot answer (the round is then tried again at the next one)."""
        check = getattr(self.broker, "check_open_orders", None)
        if check is None:
            return 0
        beside = sorted(set(differences) & self._symbols_with_open_orders())
        if not beside:
            return 0
        await check()
        booked = await self._book_late_updates(poll=False)
        if booked:
            log.warning(
                "reconcile.unreported_fills",
                symbols=beside,
                fills=booked,
                rule="fills of this run's orders the broker had not reported (a lost stream "
                "event): found by checking its orders, booked before comparing again",
            )
        return booked

    def _say_outside_universe(self, held: Mapping[str, float]) -> None:
        """Positions the broker holds in symbols outside the universe: not this run's, so
        not compared and left alone, said once per symbol (a warning); before, the account
        held them without a word, and an operator took the run to manage them."""
        index = self._symbol_index
        for sym, qty in held.items():
            if sym in index or not abs(float(qty)) > 1e-9:
                continue
            if self._outside_said.first(sym):
                log.warning(
                    "reconcile.outside_universe",
                    symbol=sym,
                    broker=float(qty),
                    rule="a position outside this run's universe: not this run's, not "
                    "compared and left alone (said once per symbol)",
                )

    def _split_expected(self, sym: str, broker: float, book: float) -> bool:
        """Whether the broker holds what a split held in `sym` makes of the book's quantity
        (Alpaca splits before the ex-date's session opens, the book at that date's bar): the
        two agree, and the symbol is not blocked or alerted."""
        ahead = self.splits_ahead
        if ahead is None:
            return False
        for e in ahead.expected(sym, book):
            if abs(broker - e) <= 1e-6 * max(1.0, abs(e)):
                if broker != book and ahead.first_seen(sym):
                    log.info(
                        "reconcile.split_expected",
                        symbol=sym,
                        broker=broker,
                        book=book,
                        ratio=ahead.held[sym].text(),
                        ex_date=ahead.held[sym].ex_date.isoformat(),
                        rule="the broker has split the position; the book does at the "
                        "ex-date's bar (said once per split)",
                    )
                return True
        return False

    def _symbols_with_open_orders(self) -> set[str]:
        """Symbols with an order of ours working, as the engine has booked it: an order whose
        last fill is not yet booked is still listed, so a symbol outside this set has no
        fill of ours on the way (see `_reconcile`). Not another's (by hand, another run's:
        a live broker lists the foreign orders it follows): one working beside a moving
        difference is no fill of ours, and it put off the block to the third round."""
        return {
            o.symbol for o in self.broker.open_orders() if self._placed_by_us(o.client_order_id)
        }

    def _position_difference(
        self,
        sym: str,
        broker: float,
        book: float,
        *,
        moved_from: float | None = None,
        rule: str = "unexplained (the same at two checks)",
    ) -> str:
        """A difference found to be real: logged, alerted; returns the why. `moved_from`:
        the difference at the first check, when it was not the same at the second. One of
        a split's shape is a warning, not critical: it is expected to clear at the ex-date's
        bar, and the symbol is held the same either way."""
        why = _difference_text(broker, book, self._splits_missed.get(sym))
        if moved_from is not None:
            why += f" (the difference moved from {moved_from:g} to {broker - book:g}: {rule})"
        split = _split_like(broker, book)
        said = {"symbol": sym, "broker": broker, "book": book}
        stops = (
            f"{rule}: trading in the symbol stops until they agree; once the account's "
            f'quantity is right, POST /adopt {{"symbols": ["{sym}"]}} takes it into the book'
        )
        if split is None:
            log.error("reconcile.difference", **said, rule=stops)
        else:
            log.warning("reconcile.difference", **said, split_ratio=split, rule=stops)
        alerter = getattr(self, "alerter", None)
        if alerter is not None:
            # A condition: resolved when the two agree again (`_reconcile`).
            alerter.condition(
                RECONCILIATION,
                sym,
                True,
                title=f"position difference in {sym}",
                text=why + "; trading in it stops until they agree (POST /adopt takes the "
                "account's quantity into the book once it is right)",
                severity=WARNING if split else CRITICAL,
            )
        return why

    def _warn_of_untraded_bars(self, missed: deque[datetime]) -> None:
        """At the run's end: the bars never traded (still missing now, plus those lost or
        recovered untraded earlier) in one warning and in the summary. A run whose last bars
        were all unavailable (a vendor's circuit open) ended "run finished", each bar logged
        once as unavailable and nothing saying they were never traded; one whose bars came
        too late to trade counted none of them, and a comparison with a backtest found
        decisions missing that nothing had reported."""
        # Not in a checkpoint (none follows): a restart's warm-up steps and counts them.
        self._never_traded(len(missed))
        self._count_dropped_releases()
        if not self.bars_never_traded:
            return
        log.warning(
            "run.bars_never_traded",
            bars=self.bars_never_traded,
            still_missing=len(missed),
            recovered_untraded=self._recovered_untraded,
            caught_up_untraded=self._caught_up_untraded,
            dropped_by_clock=self._releases_dropped,
            first_missing=missed[0] if missed else None,
            last_missing=missed[-1] if missed else None,
            hint="the run's count (a restart continues it): bars the data source did not "
            "deliver in time to trade (bar.unavailable; recovered_untraded of them came later "
            "and were stepped untraded), and caught_up_untraded bars this process stepped "
            "untraded because the daemon was stalled or down when they could trade "
            "(bar.catch_up, warmup.from_checkpoint), and dropped_by_clock releases the clock "
            "dropped past its backlog's bound (clock.live.backlog_dropped, never stepped): "
            "nothing was decided or ordered on them; "
            "check the source's errors and the daemon's outages in the log and /metrics",
        )
        missed.clear()

    def _feed_bar_lost(self, t: datetime) -> None:
        """Tell a live vendor feed that bar `t` will never be stepped (`bar.lost`): what it
        carried to `t` (a held bar's split or dividend, `VendorFeed.bar_lost`) goes to the
        symbol's next bar served instead of nowhere. Replay feeds have no such hook."""
        lost = getattr(self.feed, "bar_lost", None)
        if lost is not None:
            lost(t)

    def _never_traded(self, n: int = 1) -> None:
        """Count `n` released bars the run did not trade, and show the run's count in
        /metrics (tradingd_bars_never_traded). Called before the step of such a bar, whose
        checkpoint then holds it: a restart resumes the count and does not step it again."""
        self.bars_never_traded += n
        if self._live_metrics:
            metrics.BARS_NEVER_TRADED.set(self.bars_never_traded)

    def _count_dropped_releases(self) -> None:
        """The releases the live clock dropped past its backlog's bound since the last call
        (`clock.live.backlog_dropped`), counted as never traded: they are never stepped.
        Called before each bar from the clock, so before the step whose checkpoint holds
        them (a restart from an earlier checkpoint steps them in its warm-up and counts them
        there instead), and at the run's end."""
        dropped = getattr(self.clock, "dropped", 0)
        if dropped > self._releases_dropped:
            self._never_traded(dropped - self._releases_dropped)
            self._releases_dropped = dropped

    def _could_trade(self, t: datetime) -> bool:
        """Whether the bar at `t` was one the run could trade: from its start on, and not
        one an earlier process completed (a resumed run replays those up to its checkpoint,
        `_replay_restored`, counted by that process if it did not trade them)."""
        through = self._restored_through
        return (self._trade_from is None or t >= self._trade_from) and (
            through is None or t > through
        )

    def _missed_while_down(self, t: datetime) -> bool:
        """Whether a restart's warm-up bar at `t` is one the run could have traded: after
        the checkpoint it resumed, of a run that had gone live (not history before its
        first live bar)."""
        return self._went_live and self.resumed_from is not None and self._could_trade(t)

    async def _recover_missed(self, missed: deque[datetime]) -> None:
        """The bars the source failed to deliver at their release, before the bar that has
        now arrived: fetched again and stepped as catch-up bars (features, history, model
        windows and the stored bars complete; nothing traded on a past bar). Before, each
        was lost for good: the live features were computed across the hole, unlike a
        backtest of the same data. Stops at the first that still fails (kept for the next
        release); one still missing when a newer bar arrives is logged as lost."""
        assert self._bar_lock is not None
        while missed and not self._stop_requested:
            t = missed[0]
            try:
                done, bar = await self._unless_stopped(self.feed.bars(t))
            except RetryableError:
                return  # still down: kept, tried again before the next release's bar
            if not done:
                return  # a stop: the bar is not fetched, nor those after it
            missed.popleft()
            if bar is None:
                continue
            self.feed_outage.recovered_late(t)  # the outage's first said, the rest counted
            self._never_traded()  # a decision this run did not make: said at its end
            self._recovered_untraded += 1
            self.on_heartbeat(busy=True)  # each a bar's work: /health sees it going on
            async with self._bar_lock:
                await self.step(bar, False)

    def _released_again(self, t: datetime, missed: deque[datetime]) -> bool:
        """The wall clock stepped forward, then back (`clock.stepped_back`): the clock
        releases again the bars it released early. Those still missing are fetched as this
        release, not also as missed ones; one stepped meanwhile is skipped (True), so nothing
        is stepped or traded twice."""
        while missed and missed[-1] >= t:
            missed.pop()
        if self._last_time is None or t > self._last_time:
            return False
        log.warning("bar.released_again", time=t, last=self._last_time, rule="already stepped")
        return True

    def _trade_deadline(self, t: datetime) -> datetime | None:
        """The clock's trade deadline of the released bar `t` (the next session's open
        after its close: its orders are for that open); None for a clock without wall time
        (replay, accelerated), whose every bar trades in its turn."""
        deadline = getattr(self.clock, "trade_deadline", None)
        return deadline(t) if callable(deadline) else None

    def _too_late_to_trade(self, until: datetime | None) -> bool:
        """Whether a released bar, its trade deadline `until`, can no longer trade:
        the clock released a newer bar (the daemon was stalled, suspended or down: the
        newest trades), or the deadline passed (a start, or a resume from a suspend, during
        the next session: its orders would fill at a price it never saw). One rule for a
        bar stepped (`_catch_up`) and for one asked for again (`_late_bar_deadline`)."""
        if getattr(self.clock, "backlog", 0):
            return True
        return until is not None and cast(_WallClock, self.clock).now() >= until

    def _late_bar_deadline(self, t: datetime) -> datetime | None:
        """Until when the released bar `t` may still trade if it arrives late (the clock's
        rule: the next session's open); None when the clock has none (accelerated, replay),
        or when it could not trade any more (`_too_late_to_trade`: a restart after the open,
        a catch-up). Those were promised a retry "until" a past time, waited a heartbeat
        for nothing, then logged that they stopped."""
        until = self._trade_deadline(t)
        if until is None or self._too_late_to_trade(until):
            return None
        return until

    def _late_retry(self, deadline: datetime | None) -> tuple[float, str]:
        """The first wait before `_fetch_late` asks for a late bar again, and
        `bar.unavailable`'s `retry` saying when and until when. The wait is the clock's
        heartbeat, or a quarter of what is left before the asking stops when that is shorter
        (at least `_LATE_BAR_MIN_WAIT_S`). The asking also stops when the clock releases the
        next bar, which for an intraday bar comes first (a bar's length later, not at the
        next session's open): the line named the next day's open while the asking stopped
        at the next release (`bar.retry_stopped`, "the clock released another bar")."""
        if deadline is None:
            return 0.0, "next bar"
        release = getattr(self.clock, "next_release_at", None)
        if isinstance(release, datetime) and release < deadline:
            until, text = release, f"the next bar's release at {release.isoformat()}"
        else:
            until, text = deadline, f"{deadline.isoformat()} (the next session's open)"
        clock = cast(_WallClock, self.clock)
        left = (until - clock.now()).total_seconds()
        wait = min(clock.heartbeat_s, max(_LATE_BAR_MIN_WAIT_S, left / 4))
        return wait, f"in {wait:.3g} s, the wait doubling, until {text}, then next bar"

    async def _fetch_late(
        self,
        t: datetime,
        deadline: datetime,
        wait: float,
        missed: deque[datetime] | None = None,
    ) -> CrossSection | None:
        """A released bar the source did not deliver (a vendor posts a daily bar a little
        after close + delay_s): asked for again after `wait` (`_late_retry`: the clock's
        heartbeat, or less when the next release is near), the wait doubling up to
        `_LATE_BAR_MAX_WAIT_S`, while it may still trade: before `deadline` and before
        the clock releases another bar. Before, it waited for the next release and was then
        stepped without trading: the day was lost. The bar when it came in time, else None
        (kept as missed: recovered without trading before the next bar). One line when it
        comes or is given up, not one an attempt; /ready names it meanwhile (last_bar).

        `missed`, the older bars the source did not deliver either, are recovered first at
        each attempt (`_recover_missed`: fetched and stepped untraded, in time order), as
        before a bar on time: a source that came back while this bar was asked for again
        had them all declared lost (`bar.lost`) when this one arrived, the features run
        across the hole."""
        clock = cast(_WallClock, self.clock)  # it has a trade deadline: `_late_bar_deadline`
        attempts = 1
        while True:
            self.on_heartbeat()  # waiting, not stuck in a bar
            await clock.wait(wait)
            if self._stop_requested:
                return None
            reason = None
            if clock.now() >= deadline:
                reason = "the next session opened: its orders would miss their open"
            elif clock.backlog:
                reason = "the clock released another bar"
            if reason is None:
                attempts += 1
                self.on_heartbeat(busy=True)
                if missed:
                    await self._recover_missed(missed)  # older first: fetched in time order
                    if self._stop_requested:
                        return None
                try:
                    done, bar = await self._unless_stopped(self.feed.bars(t))
                except RetryableError as exc:
                    wait = min(wait * 2, _LATE_BAR_MAX_WAIT_S)
                    log.debug("bar.still_unavailable", time=t, error=str(exc), retry_in_s=wait)
                    continue
                if not done:
                    return None
                if clock.now() < deadline:
                    log.info("bar.arrived_late", time=t, attempts=attempts, trade=bar is not None)
                    return bar
                reason = "it came after the next session opened"  # fetched again later
            # Said with its bar's bar.unavailable (FeedOutage: a bar counted, not said, is
            # given up at debug), counted either way.
            self.feed_outage.gave_up(
                t,
                attempts=attempts,
                reason=reason,
                then="fetched again before the next bar and stepped without trading",
            )
            return None

    async def _store_late_bars(self) -> None:
        """Bars a vendor posted after their release for some symbols (`feed.bar_late`): not
        stepped (their bar's decisions are made), but stored, so the stored bars are the
        vendor's history and replay-check shows what they would have changed."""
        take = getattr(self.feed, "take_late_bars", None)
        if take is None or not self._record_bars:
            return
        late = take()
        if late:
            await self.store.write_bars(self.symbols, late)

    async def _book_final_updates(self) -> None:
        """The broker's last updates before the run ends. On a stop request, within
        `_STOP_UPDATES_S`: a broker that hangs (each of its calls up to its timeout, and
        retried) kept the stop past systemd's TimeoutStopSec (60 s), which then killed the
        process without its exit line. What is not booked then, the next start books: its
        resume reads the broker's orders and fills against the store."""
        if not self._stop_requested:
            await self._book_final_checked()
            return
        try:
            async with asyncio.timeout(_STOP_UPDATES_S):
                await self._book_final_checked()
        except TimeoutError:
            log.warning(
                "engine.stop_updates_unfinished",
                timeout_s=_STOP_UPDATES_S,
                rule="the broker did not answer in time: fills it reports later are booked "
                "by the next start (it reads the broker's orders)",
            )

    async def _book_final_checked(self) -> None:
        """`_book_late_updates`, the orders of ours still working checked at the broker
        first (`check_open_orders`), whatever the stream's state: a fill whose event the
        stream lost (the connection up) was never asked for, and a run that ended before
        the broker's periodic check finished without it stored. Not checked when the broker
        cannot answer (said; the next start reads the broker's orders)."""
        check = getattr(self.broker, "check_open_orders", None)
        checked = False
        if check is not None and self._seen and self._symbols_with_open_orders():
            try:
                await check()
                checked = True
            except RetryableError as exc:
                log.warning(
                    "engine.stop_orders_unchecked",
                    error=str(exc),
                    rule="the orders still working were not checked at the broker: fills "
                    "it has not reported are booked by the next start (it reads the "
                    "broker's orders)",
                )
        if checked:
            await self._book_late_updates(poll=False)  # no second request for the same
        else:
            await self._book_late_updates()

    async def _book_late_updates(self, *, poll: bool = True) -> int:
        """A live broker executes between bars: fills that arrived after the last bar are
        booked and stored (as they arrive: `_book_fills_as_they_arrive`; before the run
        stops, before a reconciliation); a broker without `updates()` has none. Returns the
        number of fills booked."""
        updates = getattr(self.broker, "updates", None)
        if updates is None or self._seen == 0:
            return 0
        update = self._own_updates(await (updates() if poll else updates(poll=False)))
        for fill in update.fills:
            self.portfolio.apply_fill(fill)
        # Booked after the last checkpoint, in the book from the next one on (the audit's
        # order lines, too: a resumed run drops them with the fills).
        # Just after what the last checkpoint's book holds (its bar, or a clean stop's last
        # bookings after it: `booked_through`), so a resume drops exactly these.
        through = self._checkpoint_through()
        booked_at = through + timedelta(microseconds=1) if through is not None else None
        record = self._hold_redone(update)
        if record.fills:
            kept = self.store.record_fills(self.run.run_id, record.fills, booked_at)
            self.audit.fills(record.fills, booked_at, kept)
        if update.fills:
            log.info("broker.late_fills", fills=len(update.fills))
        if record.orders:
            self._record_orders(record.orders, booked_at)
        if (record.fills or record.orders) and booked_at is not None:
            self._booked_late = booked_at  # what a clean stop checkpoints
        if update.fills or update.orders:
            # To the writer now, not at the next bar (a day away, with daily bars).
            self.audit.flush()
            await self.store.write_behind()
            # And to the operator: /status, /metrics, the published fills, orders and state
            # showed the book of the last bar until the next one (64 hours over a weekend).
            if update.fills:
                self.portfolio.revalue()
                self._money_metrics()
            t = self.last_bar_time or datetime.now(UTC)
            self._publish_items("fills", update.fills, t)
            self._publish_items("orders", update.orders, t)
            await self._publish(force=True)
        return len(update.fills)

    def _own_updates(self, update: BrokerUpdate) -> BrokerUpdate:
        """What a live broker reports, less the orders this run did not place (by hand, or
        another run on the account; the replacement of an order edited at the broker is
        the order it replaced's: `origin`). Their fills were booked as this run's and the
        next bar sold the operator's shares as its own, with no difference for
        reconciliation to see; not booked, the position they move differs from the book,
        and reconciliation stops trading in the symbol. A simulated broker's are all ours."""
        if getattr(self.broker, "state", None) is not None:
            return update
        own = self._placed_by_us
        fills = [f for f in update.fills if own(f.client_order_id)]
        orders = [o for o in update.orders if own(o.client_order_id)]
        if len(fills) == len(update.fills) and len(orders) == len(update.orders):
            return update
        for f in update.fills:
            if not own(f.client_order_id):
                log.warning(
                    "broker.foreign_fill",
                    client_order_id=f.client_order_id,
                    symbol=f.symbol,
                    side=str(f.side),
                    quantity=f.quantity,
                    rule="not this run's order: not booked; reconciliation compares the "
                    "position it moved",
                )
        return BrokerUpdate(fills=fills, orders=orders)

    def _hold_redone(self, update: BrokerUpdate) -> BrokerUpdate:
        """`update` less what it reports of the intents a restart carries out again
        (`_redo`): those are in the book at once (the caller applies every fill), and
        recorded by `_record_redone` once their bar has recorded the intents again."""
        redo = self._redo
        if redo is None or not (update.fills or update.orders):
            return update
        held = BrokerUpdate(
            fills=[f for f in update.fills if f.client_order_id in redo],
            orders=[o for o in update.orders if o.client_order_id in redo],
        )
        if not (held.fills or held.orders):
            return update
        self._held_back.append(held)
        return BrokerUpdate(
            fills=[f for f in update.fills if f.client_order_id not in redo],
            orders=[o for o in update.orders if o.client_order_id not in redo],
        )

    def _record_redone(self, t: datetime, planned: Sequence[Order] = ()) -> None:
        """The intents stored after the checkpoint, once bar `t` has carried them out again
        (or dropped their plan): each the plan did not record again (`planned`; an earlier
        attempt, a dropped plan's) first as it was stored, at its own bar, then what the
        broker reported of them since the restart (`_hold_redone`), at `t`, the bar whose
        book first holds it. Their events read as an uninterrupted run's: the intent, then
        the broker's states."""
        redo, held = self._redo, self._held_back
        self._redo, self._held_back = None, []
        if redo is None:
            return
        again = {o.client_order_id for o in planned}
        intents = []
        for o in sorted(redo.values(), key=lambda o: o.created_at):
            if o.client_order_id in again:
                continue
            intent = o.snapshot()
            intent.status = OrderStatus.HELD if o.parent_id is not None else OrderStatus.NEW
            intent.filled_quantity, intent.reason = 0.0, ""
            intents.append(intent)
        for intent in intents:
            self.store.record_orders(
                self.run.run_id, [intent], intent=True, booked_at=self._booked(intent.created_at)
            )
        booked = self._booked(t)
        for update in held:
            if update.fills:
                kept = self.store.record_fills(self.run.run_id, update.fills, t)
                self.audit.fills(update.fills, t, kept)
            if update.orders:
                self._record_orders(update.orders, booked)

    def _checkpoint_through(self) -> datetime | None:
        """The last `booked_at` the last checkpoint's book holds (None: no checkpoint)."""
        last = self._last_checkpoint
        return None if last is None else booked_through(last[0], last[1])

    def _checkpoint_at_stop(self) -> None:
        """A clean stop's last checkpoint, when it (or the fill booker) booked broker updates
        after the last bar's checkpoint: the same bar, with the book that holds them and
        their stamp as `booked_through`, so the next start keeps them (store and audit log)
        instead of dropping them and counting on the broker to report them again, which it
        does only while it still has the orders. None while a restart's interrupted plan is
        still to be carried out (the next start does it from the same checkpoint), nor when
        bars were stepped after the last checkpoint (a warm-up's batch not stored)."""
        last, through = self._last_checkpoint, self._checkpoint_through()
        if (
            not self._durable
            or last is None
            or through is None
            or self._booked_late is None
            or self._booked_late <= through
            or self._redo is not None
            or self._last_time != last[0]
            or self._warmup_uncheckpointed
        ):
            return
        saved = last[1]
        # The bar's book as its `positions` rows have it (rows are written on change): the
        # next bar writes the rows of what was booked after it (storage: resume_run).
        recorded = saved.get("positions_recorded", saved.get("portfolio", {}).get("quantity"))
        try:
            self.audit.flush()
            self._checkpoint(
                last[0], None if recorded is None else {"positions_recorded": recorded}
            )
        except Exception:  # a plugin's state() failing at the stop: the old behaviour
            log.exception(
                "engine.stop_checkpoint_failed",
                rule="not checkpointed: the next start drops what was booked after the last "
                "bar and reads it again from the broker",
            )
            return
        log.info("engine.stop_checkpoint", bar=last[0], booked_through=self._booked_late)

    def _money_metrics(self) -> None:
        """tradingd_equity, _cash and _drawdown from the book (live)."""
        if not self._live_metrics:
            return
        pf = self.portfolio
        metrics.EQUITY.set(pf.equity)
        metrics.CASH.set(pf.cash)
        peak = pf.peak_equity
        metrics.DRAWDOWN.set(1.0 - pf.equity / peak if peak > 0 else 0.0)
        for plugin, _ in self.pipeline.signals:
            accuracy = getattr(plugin, "accuracy", None)
            if callable(accuracy):  # (a label per signal plugin: a bounded set)
                rate = accuracy().get("directional_accuracy")
                metrics.MODEL_ACCURACY.labels(plugin=plugin.name).set(
                    float("nan") if rate is None else float(rate)
                )

    async def _refresh_state_every(self) -> None:
        """The published state between bars: its cache key expires after cache.expiry_s
        (an hour), and with daily bars it was written once a day, so the key was gone
        most of the time (and after a Redis restart until the next bar)."""
        assert self._bar_lock is not None
        while True:
            await asyncio.sleep(max(1.0, self._cache_ttl / 3))
            try:
                async with self._bar_lock:
                    await self._publish(force=True)
            except Exception:  # a bug or an unexpected answer: said, and tried again
                log.exception("state.refresh_failed")

    def _catch_up(self, t: datetime) -> bool | None:
        """False (a step that does not trade) when the bar can no longer trade
        (`_too_late_to_trade`): a newer bar has closed already (the daemon was stalled or
        down), or its trade deadline has passed (released alone after the next session
        opened: a start, or a resume from a suspend, mid-session; it traded at midday). The
        bar only brings the features up to date; the next one trades. None otherwise: the
        step decides by the run's start. A replay's clock has neither: None."""
        newer = getattr(self.clock, "backlog", 0)
        until = None if newer else self._trade_deadline(t)
        if not self._too_late_to_trade(until):
            return None
        if not newer and self._interrupted is not None and self._interrupted[0] == t:
            # The bar a killed process was carrying out: its cancels went out (a stop taken
            # off for its replacement), its orders did not. Stepped untraded, the plan was
            # dropped and the position left as the kill left it, unsaid. Carried out late.
            log.warning(
                "resume.interrupted_plan_late",
                time=t,
                deadline=until,
                rule="a plan begun before the kill is finished, past its trade deadline",
            )
            return None
        if newer:
            log.info("bar.catch_up", time=t, newer=newer)
        else:
            log.info(
                "bar.catch_up",
                time=t,
                deadline=until,
                rule="released after its trade deadline (the next session's open, which "
                "its orders were for): stepped without trading",
            )
        if self._could_trade(t):
            # Released to trade, stepped untraded: counted before its step checkpoints.
            self._never_traded()
            self._caught_up_untraded += 1
        return False

    async def _warm_up(self) -> None:
        """History before the first live bar, processed at once (not paced by the clock):
        features, history and stateful signals come up to date; nothing is traded."""
        if self._warmup is None:
            return
        self.on_phase("warm-up")
        self._warming_up = True
        try:
            await self._warm_up_bars(self._warmup)
        finally:
            self._warming_up, self._warmup_failing = False, None

    async def _warm_up_bars(
        self, warmup: Callable[[datetime | None], AsyncIterator[CrossSection]]
    ) -> None:
        n = 0
        first: datetime | None = None
        delay = 1.0
        attempt = 0
        same: tuple[str, datetime, int] | None = None  # the last error, since when, times
        said_stuck = False
        while True:
            try:
                # Told the checkpoint it continues: the bars since it must all be stepped.
                bars = warmup(self.resumed_from).__aiter__()
                # Its bars stored and checkpointed in batches (`WARMUP_BATCH_BARS`); an
                # error drops the batch and its checkpoint together, and a restart steps
                # them again from the last checkpoint.
                self._warmup_unstored, self._warmup_uncheckpointed = [], 0
                try:
                    while (bar := await self._next_unless_stopped(bars)) is not None:
                        self.on_heartbeat(busy=True)
                        if self._missed_while_down(bar.time):
                            # Released while the daemon was down: never traded by the run.
                            self._never_traded()
                            self._caught_up_untraded += 1
                        await self.step(bar, trade=False)
                        self._warmup_failing = None
                        first = first or bar.time
                        n += 1
                        if self._stop_requested:
                            break
                    if self._last_time is not None:
                        await self._store_warmup_batch(self._last_time)
                finally:
                    self._warmup_unstored = None
                    close = getattr(bars, "aclose", None)
                    if close is not None:
                        await close()
                break
            except RetryableError as exc:
                if n:  # bars were processed: a retry would process them twice
                    raise
                # The source is down at start-up: keep trying (with backoff, /health alive,
                # /ready naming the source) rather than exit and be restarted in a loop.
                attempt += 1
                text = str(exc)
                self._warmup_failing = (attempt, text)
                same = (
                    (text, datetime.now(UTC), 1)
                    if same is None or same[0] != text
                    else (text, same[1], same[2] + 1)
                )
                log.warning(
                    "warmup.retry",
                    error=text,
                    retry_in_s=delay,
                    attempt=attempt,
                    same_error_since=same[1].isoformat(timespec="seconds"),
                )
                if (
                    not said_stuck
                    and same[2] >= _WARMUP_STUCK_ATTEMPTS
                    and (datetime.now(UTC) - same[1]).total_seconds() >= _WARMUP_STUCK_S
                ):
                    # A defect in the vendor's answer (a split "0:1", a newest bar refused)
                    # answers the same at every retry: kept retrying (a vendor may correct
                    # it), but said once as an error, not only as the hundredth warning.
                    said_stuck = True
                    log.error(
                        "warmup.stuck",
                        error=text,
                        attempts=same[2],
                        since=same[1].isoformat(timespec="seconds"),
                        hint="the source has answered the same for this long: check the "
                        "symbol and the data it names (data.symbols, the vendor's bars), or "
                        "the source's status; the warm-up keeps retrying",
                    )
                if await self._sleep_unless_stopped(delay):
                    return
                delay = min(delay * 2, 60.0)
        if self._stop_requested:
            log.info("engine.warm_up_stopped", bars=n, first=first, last=self._last_time)
        else:
            log.info("engine.warmed_up", bars=n, first=first, last=self._last_time)

    async def _store_warmup_batch(self, t: datetime) -> None:
        """Store the warm-up's bars not stored yet, then the checkpoint after bar `t`, their
        last: a checkpoint never names a bar the store lacks (a restart steps none before
        it again). One transaction a bar made a live start on PostgreSQL spend 45% of its
        warm-up waiting on the database (4,300 bars of the demo: about 40 s)."""
        pending = self._warmup_unstored
        if pending:
            await self.store.write_bars(self.symbols, pending)
            pending.clear()
        if self._durable and self._warmup_uncheckpointed:
            self._warmup_uncheckpointed = 0
            self._checkpoint(t)
            await self.store.maybe_flush()

    async def _next_unless_stopped(self, bars: AsyncIterator[CrossSection]) -> CrossSection | None:
        """The next warm-up bar, or None at the end or on a stop request. A vendor's history
        is fetched before its first bar (a minute and more under Alpha Vantage's 5 calls a
        minute): a SIGTERM waited for all of it, beyond systemd's stop timeout."""
        done, bar = await self._unless_stopped(_anext_or_none(bars))
        return bar if done else None

    async def _unless_stopped(self, aw: Coroutine[Any, Any, _T]) -> tuple[bool, _T | None]:
        """(True, what `aw` returns), or (False, None) when a stop request came first: `aw`
        is then cancelled. Its exception is raised. For waits a SIGTERM must not sit out (a
        vendor's history, a database that is down at start)."""
        if self._stop_requested:
            close = getattr(aw, "close", None)
            if close is not None:
                close()  # never started: no "was never awaited" warning
            return False, None
        stop = self._stop_event = self._stop_event or asyncio.Event()
        task = asyncio.ensure_future(aw)
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            return False, None
        return True, task.result()

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Wait, waking early on a stop request; True when a stop was requested."""
        deadline = _time.monotonic() + seconds
        while not self._stop_requested and _time.monotonic() < deadline:
            self.on_heartbeat()
            await asyncio.sleep(min(0.2, max(0.0, deadline - _time.monotonic())))
        return self._stop_requested

    def result(self) -> EngineResult:
        return EngineResult(
            run_id=self.run.run_id,
            bars=self._bars,
            times=list(self._times),
            equity=list(self._equity),
            gross_exposure=list(self._gross),
            fills=self.portfolio.fill_count,
            orders=self._orders,
            verdicts=self._verdicts,
            stopped_early=self._stop_requested,
            verdicts_by_rule=dict(self.risk_record.counts),
            restrictions=[r.to_dict() for r in self.risk_record.periods],
            restrictions_not_listed=self.risk_record.periods_dropped,
            rejections=dict(self.rejections.counts),
            orders_expired=int(getattr(self.broker, "expired", 0)),
            warmup_bars=self._warmup_bars,
            first_ready=self._first_ready,
            bars_never_traded=self.bars_never_traded,
            warnings=list(self._warnings),
        )

    @property
    def last_bar_time(self) -> datetime | None:
        """The time of the last bar the run processed (None before the first). A resumed
        run's checkpoint counts while the bars up to it are replayed for features: /status
        showed the replay's bar times, going back from what it showed before the restart."""
        t, through = self._last_time, self._restored_through
        if through is not None and (t is None or t < through):
            return through
        return t

    @property
    def bars_processed(self) -> int:
        return self._bars

    @property
    def warming_up(self) -> bool:
        """Whether the start's warm-up is stepping history bars now (nothing traded yet)."""
        return self._warming_up

    @property
    def warmup_failing(self) -> tuple[int, str] | None:
        """(attempts, the last error) while the warm-up's source fails and is retried."""
        return self._warmup_failing

    @property
    def warmup_bars(self) -> int:
        """History bars the warm-up has stepped so far."""
        return self._warmup_bars

    @property
    def catching_up_to(self) -> datetime | None:
        """The checkpoint a resumed run is still replaying its completed bars up to (for
        features only: `_replay_restored`), None once it is past it or when nothing was
        restored. A demo's recorded feed does that after the clock started; a live feed's
        missed bars are warm-up history instead, before it."""
        through = self._restored_through
        if through is None or (self._last_time is not None and self._last_time >= through):
            return None
        return through

    @property
    def signal_source(self) -> str:
        """Signal plugins with their model versions (e.g. "ml_ensemble@2024.11")."""
        return self._signal_source()

    def _warn_if_never_ready(self) -> None:
        if self._required and self._first_ready is None and self._bars:
            log.warning(
                "run.never_ready",
                bars=self._bars,
                warmup_bars=self._warmup_bars,
                hint="no symbol finished the warm-up of its features within the data: the "
                "run cannot trade; give it more history before run.start or a longer window",
            )

    def _warn_of_signals_without_view(self) -> None:
        """Each signal plugin that had no view (NaN for every symbol) at every bar this run
        scored, once, at the end: a NaN target is logged (`engine.targets_repaired`), a
        signal that never had a view was not, and its run ended with no order and exit 0.
        Not when no symbol was ever ready (`run.never_ready` says why already)."""
        bars = self._scored
        if not bars or (self._required and self._first_ready is None):
            return
        for plugin, _ in self.pipeline.signals:
            if self._no_view.get(id(plugin), 0) != bars:
                continue
            name = _name(plugin)
            log.warning(
                "run.signal_without_view",
                plugin=name,
                bars=bars,
                hint="score() returned NaN (no view) for every symbol at every bar: nothing "
                "was traded on this signal; check what it waits for (its features, "
                "ctx.ready, history_bars(), its own conditions)",
            )
            self._warnings.append({"warning": "signal_without_view", "plugin": name, "bars": bars})

    def _warn_of_sizing_without_targets(self) -> None:
        """The sizing plugin when it returned no finite target (NaN for every symbol) at
        every bar this run scored, once, at the end, as `_warn_of_signals_without_view`: each
        NaN target was repaired to 0 and logged (`engine.targets_repaired`, the 1st, 10th,
        100th...), and nothing said that the run could not trade at all. Not when no symbol
        was ever ready (`run.never_ready` says why already)."""
        bars = self._scored
        if not bars or self._no_target != bars or (self._required and self._first_ready is None):
            return
        name = _name(self.pipeline.sizing)
        log.warning(
            "run.sizing_without_targets",
            plugin=name,
            bars=bars,
            hint="size() returned NaN (no target) for every symbol at every bar: each was "
            "repaired to 0 and nothing was traded; check what it waits for (the scores it is "
            "given, its features, ctx.ready, its own conditions)",
        )
        self._warnings.append({"warning": "sizing_without_targets", "plugin": name, "bars": bars})

    # the pipeline --------------------------------------------------------------------------
    async def step(self, bar: CrossSection, trade: bool | None = None) -> None:
        """One bar through the pipeline. `trade=False` makes it a warm-up bar (no decision,
        no order, no record); None decides by the run's start (`trade_from`)."""
        pf = self.portfolio
        run_id = self.run.run_id
        m = self._live_metrics
        if self._first_bar is None:
            self._first_bar = bar.time
        if self._restored_through is not None:
            if bar.time <= self._restored_through:
                self._replay_restored(bar)
                if bar.time == self._restored_through:
                    self._caught_up.set()
                if m:  # a warm-up bar too (README: the counter includes them)
                    metrics.BARS_PROCESSED.inc()
                return
            self._caught_up.set()  # the checkpoint's own bar not served: past it all the same
            if self._signal_states:
                self._restore_signals()  # the first bar after the checkpoint
        t_start = t0 = _time.perf_counter() if m else 0.0
        if self.splits_ahead is not None and self.splits_ahead.held:
            bar = self._announced_splits(bar)
        split_cols = pf.apply_splits(bar.split)
        if split_cols:
            self._splits += len(split_cols)
            # Hundreds over a long replay: each at debug, the count at the end of the run.
            log.debug(
                "corporate.split",
                time=bar.time,
                symbols={self.symbols[i]: float(bar.split[i]) for i in split_cols},
            )
        if self.splits_ahead is not None and self.splits_ahead.held:
            self._settle_splits(bar)
        if split_cols and self._blocked_broker:
            await self._release_split_blocks(bar, split_cols)
        # Without a check for any dividend first: the product is all the check costs (nine in
        # ten of the 496 symbols' bars have a dividend somewhere).
        pf.apply_dividends(bar.dividend)
        self.history.push(bar)
        if self._record_bars:
            if self._warmup_unstored is not None:
                self._warmup_unstored.append(bar)
            else:
                await self.store.write_bars(self.symbols, [bar])

        self._seen += 1
        self._last_time = bar.time
        update = await self.broker.on_bar(bar)
        if update.fills or update.orders:
            update = self._own_updates(update)
        booking = self._hold_redone(update) if self._redo is not None else update
        if update.fills:
            for fill in update.fills:
                pf.apply_fill(fill)
            faults.reached("fill")
            # With the bar that booked them (not only the broker's execution time): a
            # resumed run drops the fills booked after its checkpoint, and exactly those are
            # missing from the checkpoint's book.
            if booking.fills:
                kept = self.store.record_fills(run_id, booking.fills, bar.time)
                self.audit.fills(booking.fills, bar.time, kept)
            if self.publisher is not None:
                self._publish_items("fills", update.fills, bar.time)
        if update.orders:
            if booking.orders:
                self._record_orders(booking.orders, self._booked(bar.time))
            if self.publisher is not None:
                self._publish_items("orders", update.orders, bar.time)
            self.rejections.on_orders(update.orders, "fill")
            if self._count_orders:
                for o in update.orders:
                    metrics.ORDERS.labels(status=str(o.status)).inc()
        if self.adoptions.pending and self._bar_lock is not None and trade is not False:
            # The operator's POST /adopt: the book takes the broker's quantity before the bar
            # is marked and planned (engine/adopt.py).
            await adopt.apply_due(self, bar)
        if m:
            t0 = self._lap("broker_updates", t0)

        # ~isnan in one ufunc (NaN alone is unequal to itself). What the plugins get is
        # read-only (bar, history, features, book): the planner and later plugins read the
        # same arrays (a plugin clearing `tradable` stopped all orders). And read-only for
        # good (`core.arrays.read_only_copy`, spelled out): a fresh array flagged read-only
        # was made writeable again by `setflags(write=True)`.
        close = bar.close
        valid = _frombuffer((close == close).tobytes(), _BOOL)
        equity = pf.mark_to_market(close, valid, bar.time)
        features, ready = self._features(bar, valid)
        if m:
            t0 = self._lap("features", t0)
        mark = pf.mark  # read-only for good already (`Portfolio.mark`)
        # Positional, in field order (time, index, symbols, bar, mark, tradable, history,
        # features, portfolio, ready): keywords cost its constructor a third more, every bar.
        ctx = BarContext(
            bar.time,
            self._seen - 1,
            self.symbols,
            bar,
            mark,
            valid,
            self._history_view,
            features,
            pf.view(),
            ready,
        )
        if self._first_ready is None and (not self._required or ready.any()):
            self._first_ready = bar.time
            if self._required and self._bars:
                # Expected when the data starts where the run starts; a surprise (warning)
                # when a start date was given and there was not enough history before it.
                (log.warning if self._trade_from is not None else log.info)(
                    "run.warmup_inside_window",
                    first_ready=bar.time,
                    bars_without_any_ready_symbol=self._bars,
                    hint="the features were not ready when trading started: give the run "
                    "more history before run.start",
                )
        if trade is None:
            trade = self._trade_from is None or bar.time >= self._trade_from
        if not trade:
            # Warm-up: signal plugins see the bar (they may keep windows of their own), but
            # nothing is sized, checked, ordered or recorded.
            self._observe(ctx)
            self._warmup_bars += 1
            if self._durable:
                if self._warmup_unstored is None:
                    self._checkpoint(bar.time)
                    await self.store.maybe_flush()
                else:
                    self._warmup_uncheckpointed += 1
                    if self._warmup_uncheckpointed >= WARMUP_BATCH_BARS:
                        await self._store_warmup_batch(bar.time)
            if m:
                metrics.BARS_PROCESSED.inc()
            if self._on_bar is not None:
                self._on_bar(self._seen, bar.time)
            return
        if self.publisher is not None:
            self.publisher.publish("bars", bars_payload(bar, self.symbols))
        if self._preparers:
            await self._prepare_signals(ctx)
        score = self._score(ctx)
        self._scored += 1
        if self._required and count_nonzero(ready) < ready.size:
            score = where(ready, score, _NAN)  # warm-up never reaches a decision
        if m:
            t0 = self._lap("signals", t0)
        # A copy the sizing cannot write into, nor make writeable (`read_only_copy`, spelled
        # out): the score is stored and published after it, and may be a signal's own array
        # (a view of it, flagged read-only, was made writeable by `setflags(write=True)`).
        shown = _frombuffer(score.tobytes())
        targets = self._size(shown, ctx)
        if m:
            t0 = self._lap("sizing", t0)
        # This run's working entries, for the chain's book (`working_entries`); the planner
        # reads the same list from a simulated broker (nothing changes it before the plan).
        working = self._plannable_orders()
        hold = None
        risk_ctx = ctx
        if working:
            targets, book = with_working_entries(
                targets, ctx, working, self._symbol_index, self._placed_by_us
            )
            if book is not None:
                risk_ctx, hold = book, book.portfolio.weights
        sized = targets  # before the risk chain: where a hard cut starts from
        targets, verdicts = self._risk(targets, risk_ctx)
        chained, chain_verdicts = targets, verdicts  # the chain's, before any hold below
        if verdicts:
            self._verdicts += len(verdicts)
            if m:
                for v in verdicts:
                    metrics.RISK_VERDICTS.labels(plugin=v.plugin, rule=rule_of(v)).inc()
        unreconciled: Set[str] = frozenset()
        splitting: Mapping[str, Split] = {}
        if self.splits_ahead is not None:
            splitting = await self._splits_due(bar.time)
        untradable = self._untradable()
        if self.reconcile_blocked or self._reconcile_checking or splitting or untradable:
            targets, verdicts = self._hold_unreconciled(
                targets, ctx, verdicts, splitting, hold, untradable
            )
            unreconciled = (
                self.reconcile_blocked.keys()
                | self._reconcile_checking.keys()
                | splitting.keys()
                | untradable.keys()
            )
        self.risk_record.on_bar(bar.time, verdicts)
        if m:
            t0 = self._lap("risk", t0)

        paused = False
        # The entries cancelled with the plan, each with its cancel's reason.
        adding: dict[str, str] = {}
        exits_cancelled = _REBALANCE_CANCEL  # the planner's cancels' reason, unless risk's
        open_orders: Sequence[Order] = ()
        if self.trading_state == "flattening":
            # An operator's flatten: every target is zero but where the book and the broker
            # differ; exits go through the planner like any rebalance (and take their
            # protective legs with them).
            targets, open_orders, flattened = self._flatten_bar(
                targets, ctx, unreconciled, splitting
            )
            adding = dict.fromkeys(flattened, _FLATTEN_CANCEL)
            exits_cancelled = _FLATTEN_CANCEL
            paused = self.trading_state == "paused"
        elif self.trading_state == "paused":
            paused = True  # an operator's pause: no new orders; open ones stay at the broker
            if self.risk_record.halting:  # but not the entries a halt stops
                _, adding = self._halted_orders(pf.quantity, verdicts, bar.time)
        elif self.risk_record.halting:
            open_orders, adding = self._halted_orders(pf.quantity, verdicts, bar.time)
        else:
            simulated = getattr(self.broker, "state", None) is not None
            open_orders = working if simulated else self._plannable_orders()
            if working:
                # Cancelled with the plan; the planner still sees them this bar (their
                # symbols wait: a live cancel may come back unconfirmed, the entry filling).
                adding = self._withdraw_entries(
                    targets, sized, ctx, working, unreconciled, bar.time, chain_verdicts
                )
        plan = (
            _NO_PLAN
            if paused
            else self.planner.plan(
                targets, ctx, open_orders, unreconciled, self._hard_cuts(verdicts, sized, targets)
            )
        )
        # Each cancel's reason, for its order's record: a cancel the risk chain caused names
        # its verdicts (it said "rebalance: position closed or cut" whatever caused it).
        why: dict[str, str] | None = None
        if plan.cancel or adding:
            why = {
                **adding,
                **self._exit_cancel_reasons(
                    plan.cancel, sized, chained, chain_verdicts, exits_cancelled
                ),
            }
        if adding:
            plan = Plan(orders=list(plan.orders), cancel=[*adding, *plan.cancel])
        interrupted, self._interrupted = self._interrupted, None
        interrupted_plan = None
        if interrupted is not None and (interrupted[0] != bar.time or paused):
            # Its bar was stepped without trading (a newer bar released behind it), or the
            # operator paused trading (no new orders, this plan's rest neither): the plan's
            # rest is not sent; the broker's state, read again, decides a later bar.
            log.warning(
                "resume.interrupted_plan_dropped",
                time=interrupted[0],
                cancels=len(interrupted[1]),
                orders=len(interrupted[2]),
                now=bar.time,
                reason="trading is paused" if interrupted[0] == bar.time else "stepped untraded",
            )
            self._record_redone(bar.time)
        if interrupted is not None and interrupted[0] == bar.time and not paused:
            # The bar a killed process was carrying out, as it decided it (from the same
            # checkpoint): deciding again would see the broker after its cancels and fills.
            plan = interrupted_plan = Plan(orders=interrupted[2], cancel=interrupted[1])
            log.info(
                "resume.interrupted_plan",
                time=bar.time,
                cancels=len(interrupted[1]),
                orders=len(interrupted[2]),
            )
        if splitting:
            why = {} if why is None else why
            plan = self._without_splitting(plan, splitting, why)
        submitting = False
        sending = bool(plan.orders or plan.cancel)  # the broker is asked: a bar that tells
        try:
            if self._durable and (plan.orders or plan.cancel):
                # The intent, cancels included, is stored before any of it reaches the
                # broker: after a crash, the restarted process carries it out (see _resume).
                self.store.record_orders(
                    run_id, plan.orders, intent=True, booked_at=self._booked(bar.time)
                )
                if plan.cancel and self._last_checkpoint is not None:
                    at, state = self._last_checkpoint
                    intent = {"time": bar.time.isoformat(), "cancel": list(plan.cancel)}
                    self.store.record_checkpoint(run_id, at, {**state, "intent": intent})  # type: ignore[attr-defined]
                await self.store.flush()
                faults.reached("intent")
            if interrupted_plan is not None and self._redo is not None:
                # After the intents it recorded again: what the broker reported of them
                # since the restart (their fills, their legs released), at this bar.
                self._record_redone(bar.time, plan.orders)
            if plan.cancel:
                plan = await self._cancel_then_check(plan, bar.time, why or _NO_REASONS)
            if plan.orders:
                submitting = True
                acked = await self.broker.submit(plan.orders)
                faults.reached("sent")
                self._book_acked(acked, bar.time)
                transient = getattr(self.broker, "retryable_rejection", None)
                if transient is not None:
                    await self._retry_refused(acked, bar.time, transient)
        except RetryableError as exc:
            # The broker is unreachable or its answer unknown: this bar's orders are not
            # sent (or not known to be). The next bar plans again from the broker's state,
            # in which an order whose outcome is unknown is still working until the broker
            # has looked it up (AlpacaBroker._follow_unconfirmed): never sent twice.
            self.broker_failures += 1
            # The outage's first bar is an error line; later bars are counted and said at
            # a bounded rate (an hour's outage at 1-minute bars was 60 identical lines).
            said = self.broker_outage.failed(bar.time, str(exc), len(plan.orders))
            # A resumed plan's orders may have reached the broker before the restart: the
            # broker's resume looked them up; they are not closed here.
            unsent = plan.orders if not submitting and interrupted_plan is None else ()
            self._settle_unsent(exc, unsent, bar.time, said)
        else:
            if sending:
                self.broker_outage.got_through(bar.time)

        if m:
            t0 = self._lap("orders", t0)
        if self.on_decision is not None:
            record = decision_record(
                self.symbols, self._required, features, ready, score, targets, plan.orders
            )
            # Where this process's features started (a restart warms up again) and whether
            # the book follows the simulation (a replay can then compare every decision).
            record["first_bar"] = self._first_bar.isoformat() if self._first_bar else None
            record["broker"] = "simulated" if hasattr(self.broker, "state") else "external"
            self.on_decision(bar.time, self._signal_source(), record)
        gross, net = pf.exposure()
        # A decision row where the plan orders a symbol or its target moved, not where a
        # plugin holds it at its (drifting) current weight (see BufferedStore.record_signals).
        self.store.record_signals(
            run_id,
            bar.time,
            self.symbols,
            score,
            targets,
            self._signal_source(),
            ordered=[o.symbol for o in plan.orders] if plan.orders else (),
            # A working entry's weight counted (`working_entries`): holding it is no decision.
            weights=ctx.portfolio.weights if hold is None else hold,
        )
        if self.publisher is not None:
            self.publisher.publish(
                "signals",
                signals_payload(bar.time, self.symbols, score, targets, self._signal_source()),
            )
        self.store.record_positions(
            run_id, bar.time, self.symbols, pf.quantity, pf.avg_price, ctx.mark
        )
        self.store.record_equity(run_id, bar.time, pf.cash, equity, gross, net)
        self._last_targets = targets
        self._bars += 1
        if self._durable:
            await self._settle_plugins()
        # The audit first: a live audit log writes the bar's lines before this returns, and
        # the store's writer may commit the bar's checkpoint as soon as it is handed over, so
        # a crash never leaves the store ahead of the audit (AuditLog.truncate_after). The
        # checkpoint is made after the audit's write, too: made before it, a write that
        # failed (a full disk) left it in the store's buffer, and the stop's last flush
        # committed a checkpoint past the audit's last line (the bar's fill was then never
        # in the audit log: the restart truncated the torn line and went on from the store).
        self.audit.flush()
        if self._durable:
            self._checkpoint(bar.time)
            # A live bar's rows and checkpoint go to the writer now, whatever the interval:
            # the next bar may be a day away, and a write of the bar's order intents within
            # the interval left them in memory until then (a crash lost them).
            await self.store.write_behind()
        else:
            await self.store.maybe_flush()
        if m:
            self._lap("store", t0)
            self._lap("total", t_start)
            metrics.BARS_PROCESSED.inc()
            self._money_metrics()
            metrics.LAST_BAR_TIME.set(bar.time.timestamp())
        self._times.append(bar.time)
        self._equity.append(equity)
        self._gross.append(gross)
        if not _time.monotonic() - self._last_publish < self._publish_interval:
            await self._publish()  # due: checked here, without a coroutine on the other bars
        for hook in self.after_bar:
            hook(bar.time, verdicts)
        if self._on_bar is not None:
            self._on_bar(self._seen, bar.time)

    def _untradable(self) -> dict[str, str]:
        """The universe's symbols whose orders the broker refuses as not tradable (Alpaca's
        `untradable`: why, since when), held as an unreconciled one is until it trades."""
        read = getattr(self.broker, "untradable", None)
        if not callable(read):
            return {}
        return {sym: why for sym, why in read().items() if sym in self._symbol_index}

    def _hold_unreconciled(
        self,
        targets: np.ndarray,
        ctx: BarContext,
        verdicts: list[RiskVerdict],
        splitting: Mapping[str, Split] | None = None,
        hold: np.ndarray | None = None,
        untradable: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, list[RiskVerdict]]:
        """No trade in a symbol whose position differs from the broker's (or is being
        checked again), that splits at the next session (`splitting`), or whose orders the
        broker refuses as not tradable (`untradable`: a new order, refused, at every bar):
        its target is its current weight (and the planner places no exit in it:
        `OrderPlanner.plan`'s `unreconciled`), or `hold`'s, the weight with a working entry
        counted where one waits for the symbol's bar (`working_entries.with_working_entries`)."""
        targets = targets.copy()
        index = self._symbol_index
        weights = ctx.portfolio.weights if hold is None else hold
        held = {
            sym: (f"position differs from the broker's ({why})", "unreconciled_position")
            for sym, why in {**self._reconcile_checking, **self.reconcile_blocked}.items()
        }
        for sym, s in (splitting or {}).items():
            held.setdefault(sym, (_split_hold_text(s), "split_ahead"))
        for sym, why in (untradable or {}).items():
            held.setdefault(sym, (f"the broker refuses orders in it ({why})", "untradable_asset"))
        for sym, (why, rule) in held.items():
            i = index[sym]
            if targets[i] != weights[i]:
                verdicts = [
                    *verdicts,
                    RiskVerdict(
                        "reconciliation",
                        sym,
                        "reject",
                        why,
                        float(targets[i]),
                        float(weights[i]),
                        rule=rule,
                    ),
                ]
                targets[i] = weights[i]
        return targets, verdicts

    async def _splits_due(self, t: datetime, *, day: date | None = None) -> Mapping[str, Split]:
        """The symbols splitting at the session after bar `t` or held for a split whose bar
        has not come (engine/splits_ahead.py). The day's lookup runs in a task of its own:
        this waits for it at most `quick_s`, once a day, when none has succeeded for bar
        `t`'s day (`day`: the start-up's, the day after its last bar), and starts the next
        day's lookup without waiting for it."""
        ahead = self.splits_ahead
        assert ahead is not None
        await ahead.wait_for_day(day or ahead.day_of(t))
        _hold_splits(ahead, getattr(self, "alerter", None), t)
        ahead.start(ahead.next_day(t))  # off the bar's path: the next bar normally finds it done
        return dict(ahead.held)

    def _last_bar_seen(self) -> datetime | None:
        """The last bar the book has seen: the checkpoint's (its bars are replayed as the
        clock brings them) or the warm-up's or a stepped one's."""
        return max(
            (t for t in (self._last_time, self._restored_through) if t is not None),
            default=None,
        )

    def _wire_splits_ahead(self) -> None:
        """The symbols a failed lookup names, and its warning alert (cleared by a lookup
        that works)."""
        ahead = self.splits_ahead
        assert ahead is not None

        def at_risk() -> list[str]:
            held = {self.symbols[i] for i in self.portfolio.quantity.nonzero()[0].tolist()}
            return sorted(held | self._symbols_with_open_orders())

        def on_error(error: str | None) -> None:
            alerter = getattr(self, "alerter", None)
            if alerter is None:
                return
            alerter.condition(
                SOURCE_DOWN,
                "corporate_actions",
                error is not None,
                title="split lookup failing",
                text=f"Alpaca's corporate actions do not answer ({error}): a split at the "
                "next open is not held for; reconciliation and the ex-date's bar find it"
                if error
                else "",
                severity=WARNING,
            )

        ahead.at_risk = at_risk
        ahead.on_error = on_error
        ahead.on_learned = self._on_split_learned

    def _on_split_learned(self, splits: Mapping[str, Split]) -> None:
        """`SplitsAhead.on_learned`: a lookup found splits not known before. One that goes ex
        at the next session and no bar has held is held now, and this run's working orders
        in it cancelled, in a task of its own (it waits for a bar in progress): the eve's
        bar was decided without it (announced after that bar, its lookup failed or slow), and
        no bar comes before the ex-date's open, where Alpaca keeps the orders as they were."""
        if self._stop_requested or self._bar_lock is None:
            return
        task = asyncio.create_task(self._cancel_learned_splits(splits), name="splits learned")
        self._split_cancels.add(task)
        task.add_done_callback(self._split_cancels.discard)

    async def _cancel_learned_splits(self, splits: Mapping[str, Split]) -> None:
        """Under the bar lock, from the last bar seen: a split that bar (or the start-up)
        held had its orders cancelled then and is not cancelled for again (a lookup
        answering it a second time, a split known at the eve's bar); once the ex-date's bar
        has come the split is no longer due, so its exits, placed again post-split, stay."""
        ahead = self.splits_ahead
        assert ahead is not None and self._bar_lock is not None
        async with self._bar_lock:
            last = self._last_bar_seen()
            if last is None or self._stop_requested:
                return  # no bar seen: this run has decided no order yet
            held = _hold_splits(ahead, getattr(self, "alerter", None), last)
            if not held:
                return
            try:
                await self._cancel_split_orders(held, last)
            except Exception:  # logged here: nothing awaits this task
                log.exception(
                    "split.orders_cancel_failed",
                    symbols=sorted(held),
                    learned=sorted(splits),
                    rule="this run's orders in these symbols may work across the split: "
                    "cancel them at the broker before the open, or restart (the start-up "
                    "cancels them)",
                )

    async def _splits_every(self) -> None:
        """A failed lookup is asked for again on the heartbeat once its backoff is over (one
        that learns of a split at the next session cancels this run's orders in it:
        `_on_split_learned`). A failure to start it is logged and the next heartbeat tries
        again (this task is only gathered at the stop: an exception would end the retries
        silently)."""
        ahead = self.splits_ahead
        assert ahead is not None
        wait = float(getattr(self.clock, "heartbeat_s", 60.0) or 60.0)
        while True:
            await asyncio.sleep(wait)
            if self._last_time is None:
                continue
            try:
                ahead.start(ahead.next_day(self._last_time))
            except Exception:  # the loop goes on: the next heartbeat asks again
                log.exception("split.retry_failed", last_bar=self._last_time)

    async def _cancel_before_split(self, splitting: Mapping[str, Split], t: datetime) -> None:
        """At start-up, this run's working orders in a symbol that splits at the next
        session, cancelled now, as the bar before it would have (`_without_splitting`): that
        bar was decided before the split was known (announced after it, or its lookup
        failed), and no bar comes before the ex-date's open, where Alpaca keeps the orders
        as they were: a pre-split stop above the post-split price sold the position at the
        open, while `split.ahead` said its resting orders were cancelled. Placed again by
        the ex-date's bar, post-split. A split a lookup learns later, between bars, has them
        cancelled then (`_on_split_learned`)."""
        assert self._bar_lock is not None
        async with self._bar_lock:
            await self._cancel_split_orders(splitting, t)

    async def _cancel_split_orders(self, splitting: Mapping[str, Split], t: datetime) -> None:
        """This run's working orders in `splitting`'s symbols cancelled outside a bar's plan,
        the bar lock held, as that plan would have (`_without_splitting`); said once
        (`split.orders_cancelled`) when there were any."""
        why: dict[str, str] = {}
        plan = self._without_splitting(_NO_PLAN, splitting, why)
        if not plan.cancel:
            return
        await self._cancel_then_check(plan, t, why)
        log.warning(
            "split.orders_cancelled",
            symbols=sorted(splitting),
            cancelled=list(plan.cancel),
            rule="a symbol splitting at the next session has no working order of this run "
            "across the split; its exits are placed again after it",
        )

    def _without_splitting(
        self,
        plan: Plan | _EmptyPlan,
        splitting: Mapping[str, Split],
        why: dict[str, str] | None = None,
    ) -> Plan:
        """`plan` with no order in a symbol that splits before the next open, and this run's
        working orders in it cancelled: Alpaca splits the position and keeps the orders as
        they were, so a stop or an entry priced and sized before the split would work after
        it (a stop above the post-split price fills at the open). The exits are placed again,
        post-split, once the ex-date's bar has applied the split. The split is the reason of
        each cancel it adds (put into `why`)."""
        cancel = list(plan.cancel)
        for o in self.broker.open_orders():
            if (
                o.symbol in splitting
                and self._placed_by_us(o.client_order_id)
                and o.client_order_id not in cancel
            ):
                cancel.append(o.client_order_id)
                if why is not None:
                    why[o.client_order_id] = (
                        f"split: {o.symbol} {_split_hold_text(splitting[o.symbol])}"
                    )
        orders = [o for o in plan.orders if o.symbol not in splitting]
        return Plan(orders=orders, cancel=cancel)

    def _announced_splits(self, bar: CrossSection) -> CrossSection:
        """`bar` with the announced ratio as its split where a held split's ex-date bar is
        served without it and its prices show it (`splits_ahead.shows_split`: a vendor
        posting the split event late): Alpaca split the position before the open, so the
        book, the history and the exits go as for a split in the bar (before, the book kept
        the pre-split shares at post-split prices: a false loss halting on drawdown, and a
        1:10 reverse split a false 9x gain whose rebalance sold most of the real position).
        Where the prices do not show it, the book is not split, the symbol is blocked (no
        order, alerted) until reconciliation finds the book and the broker agree."""
        ahead = self.splits_ahead
        assert ahead is not None
        missing = ahead.missing(bar.time, bar.split, bar.close == bar.close)
        if not missing:
            return bar
        split = bar.split.copy()
        mark = self.portfolio.mark  # the last close before this bar, pre-split
        for i, s in missing:
            sym = s.symbol
            said = {
                "time": bar.time,
                "symbol": sym,
                "ratio": s.text(),
                "ex_date": s.ex_date.isoformat(),
                "previous_close": float(mark[i]),
                "open": float(bar.open[i]),
            }
            if shows_split(float(mark[i]), float(bar.open[i]), s.ratio):
                split[i] = s.ratio
                log.warning(
                    "split.from_announcement",
                    **said,
                    source="alpaca corporate actions",
                    rule="the bar carries no split, its prices moved as the announced split "
                    "would: the announced ratio is applied as the bar's split (the broker "
                    "split the position before the open)",
                )
                continue
            self._splits_missed[sym] = s
            why = (
                f"the announced {s.text()} split at {s.ex_date.isoformat()} is neither in its "
                "bar nor shown by its prices: the book is not split; check the account and "
                "the symbol's prices at the feed"
            )
            self.reconcile_blocked[sym] = why
            log.error(
                "split.unconfirmed",
                **said,
                rule="no order in the symbol until reconciliation finds the book and the "
                "broker agree",
            )
            alerter = getattr(self, "alerter", None)
            if alerter is not None:
                # Resolved by the round that finds the two equal (`_reconcile`).
                alerter.condition(
                    RECONCILIATION,
                    sym,
                    True,
                    title=f"announced split of {sym} not in its bar",
                    text=why + "; trading in it stops until the book and the broker agree",
                    severity=CRITICAL,
                )
        if (split == bar.split).all():
            return bar
        return dataclasses.replace(bar, split=split)

    def _settle_splits(self, bar: CrossSection) -> None:
        """The held splits this bar applied: released, and a fraction of a share a split left
        of a whole position paid as cash in lieu at the bar's close (Alpaca pays the
        fraction; the account holds whole shares)."""
        ahead = self.splits_ahead
        assert ahead is not None
        for i, s in ahead.applied(bar.time, bar.split, bar.close == bar.close):
            self._cash_in_lieu(bar, i)
            log.info("split.applied", time=bar.time, symbol=s.symbol, ratio=s.text())

    def _cash_in_lieu(self, bar: CrossSection, i: int, ratio: float | None = None) -> float:
        """The fraction of a share bar's split (or `ratio`'s: a split the operator adopts,
        `adopt.apply_due`) left of a whole position in column `i`, paid as cash in lieu at
        the bar's close (Alpaca pays the fraction; the account holds whole shares). Returns
        the cash paid."""
        pf = self.portfolio
        q = float(pf.quantity[i])
        before = q / (float(bar.split[i]) if ratio is None else ratio)
        if not q or abs(before - round(before)) > 1e-6 * max(1.0, abs(before)):
            return 0.0
        shares, cash = pf.cash_in_lieu(i, float(bar.close[i]))
        if not shares:
            return 0.0
        symbol = self.symbols[i]
        log.info(
            "split.cash_in_lieu",
            time=bar.time,
            symbol=symbol,
            shares=shares,
            price=float(bar.close[i]),
            cash=cash,
            rule="a split's fraction of a share is paid in cash, at the ex-date's "
            "close; the account's amount may differ by the price Alpaca uses",
        )
        # Where a user can find it again: the audit log, beside the bar's fills (the equity
        # row of the bar holds the cash).
        record = getattr(self.audit, "cash_in_lieu", None)
        if record is not None:
            record(bar.time, symbol, shares, float(bar.close[i]), cash)
        return cash

    async def _release_split_blocks(self, bar: CrossSection, cols: Sequence[int]) -> None:
        """Blocked symbols whose split at `bar` made the book equal the broker's quantity
        at the round that blocked them (the account split before the open, the book at the
        ex-date's bar, unannounced or with the lookup off), a fraction of a share the split
        left paid in cash where the broker holds the whole shares (`_cash_in_lieu`, as for
        a split looked up ahead; it stayed in the book, a difference for good): released
        at this bar, this run's
        working orders in them (placed before the split: Alpaca keeps them as they were)
        cancelled, so the bar's plan places their exits again, post-split. Released only
        at the next round before (up to `reconcile_interval_s` later), and then the
        pre-split exits stayed: a stop at four times a 4:1 split's price. A difference
        arising since the round is found by the next one as any other."""
        t = bar.time
        seen = self._blocked_broker
        quantity = self.portfolio.quantity
        released: set[str] = set()
        for i in cols:
            sym = self.symbols[i]
            broker = seen.get(sym)
            if broker is None or sym not in self.reconcile_blocked:
                continue
            book = float(quantity[i])
            if book != broker and math.trunc(book + math.copysign(1e-9, book)) == broker:
                self._cash_in_lieu(bar, i)  # the broker holds the split's whole shares
                book = float(quantity[i])
            if not same_quantity(book, broker):
                continue
            self._release_blocked(sym)
            log.info(
                "reconcile.resolved",
                symbol=sym,
                time=t,
                rule="the bar's split made the book equal the broker's quantity at the last "
                "reconciliation: released at this bar, its exits placed again post-split",
            )
            released.add(sym)
        if not released:
            return
        await self._cancel_ours_in(
            released,
            t,
            lambda sym: f"split: {sym} split at this bar; placed before it",
            "split.orders_cancelled",
            "placed before the split the account and the book have both made: cancelled, "
            "its exits placed again at this bar, post-split",
        )

    def _release_blocked(self, sym: str) -> None:
        """`sym` trades again: its reconcile block, the broker's quantity that block was of,
        a missed split's record and its reconciliation alert all ended (a bar's split that
        made the two agree, an operator's `POST /adopt`)."""
        self.reconcile_blocked.pop(sym, None)
        self._blocked_broker.pop(sym, None)
        self._splits_missed.pop(sym, None)
        alerter = getattr(self, "alerter", None)
        if alerter is not None:
            alerter.condition(RECONCILIATION, sym, False)

    async def _cancel_ours_in(
        self,
        symbols: Collection[str],
        t: datetime,
        reason: Callable[[str], str],
        event: str,
        rule: str,
    ) -> None:
        """Cancel this run's open orders in `symbols` (each with `reason(symbol)`) and say so
        (`event`, `rule`): orders placed for a quantity the book no longer holds (a split
        released, an adoption), so that the bar's plan places the exits again."""
        why = {
            o.client_order_id: reason(o.symbol)
            for o in self.broker.open_orders()
            if o.symbol in symbols and self._placed_by_us(o.client_order_id)
        }
        if why:
            await self._cancel_then_check(Plan(orders=[], cancel=list(why)), t, why)
            log.warning(event, time=t, symbols=sorted(symbols), cancelled=list(why), rule=rule)

    def _replay_restored(self, bar: CrossSection) -> None:
        """A bar an earlier process of this run completed: history, features and the signal
        plugins' windows catch up; the book, the broker and the store do not see it again."""
        self.history.push(bar)
        self._seen += 1
        self._last_time = bar.time
        valid = read_only_copy(~np.isnan(bar.close))  # as in `step`
        features, ready = self._features(bar, valid)
        ctx = BarContext(
            time=bar.time,
            index=self._seen - 1,
            symbols=self.symbols,
            bar=bar,
            mark=self.portfolio.mark,
            tradable=valid,
            history=self._history_view,
            features=features,
            portfolio=self.portfolio.view(),
            ready=ready,
        )
        if self._first_ready is None and (not self._required or ready.any()):
            self._first_ready = bar.time
        self._observe(ctx)

    def _publish_items(self, kind: str, items: Sequence[Any], t: datetime) -> None:
        if self.publisher is not None and items:
            payload = fills_payload(items, t) if kind == "fills" else orders_payload(items, t)
            self.publisher.publish(kind, payload)

    @staticmethod
    def _lap(stage: str, since: float) -> float:
        now = _time.perf_counter()
        metrics.STAGE_SECONDS.labels(stage=stage).observe(now - since)
        return now

    async def _settle_plugins(self) -> None:
        """Let plugins finish work in flight before their state is checkpointed, awaiting
        it: a plugin's `state()` would otherwise block the event loop while it waits."""
        for plugin in self.pipeline.plugins():
            settle = getattr(plugin, "settle", None)
            if settle is not None and callable(settle):
                try:
                    await settle()  # a coroutine function (checked when the plugin is built)
                except PluginFault:
                    raise
                except Exception as exc:
                    raise _fault_at(plugin, "settle", self._last_time, exc) from exc

    def _signal_source(self) -> str:
        """Plugin instance keys (`instance_keys`: a signal configured twice is `name` and
        `name#2`, not "q_trend,q_trend"), with the model version for model-backed ones (it
        can change when a retrained model is swapped in mid-run). The keys are made again
        only when the signals list is another (as `_risk_labels`)."""
        signals = self.pipeline.signals
        keyed = self._signal_keys
        if keyed is None or keyed[0] is not signals or len(keyed[1]) != len(signals):
            plugins = [p for p, _ in signals]
            keyed = self._signal_keys = (signals, [k for k, _ in instance_keys(plugins)])
            _label_instances(plugins)
        parts = []
        for (plugin, _), key in zip(signals, keyed[1]):  # noqa: B905 (made from `signals`)
            version = getattr(plugin, "version", None)
            parts.append(f"{key}@{version}" if version else key)
        return ",".join(parts)

    def _features(
        self, bar: CrossSection, valid: np.ndarray
    ) -> tuple[Mapping[str, np.ndarray], np.ndarray]:
        """Feature values for the plugins: finite everywhere (NaN and inf never reach a
        plugin), with `ready` saying which symbols have every required feature.

        Read-only, the mapping and its arrays: one BarContext is shared by every plugin of
        the bar, and a plugin that replaced or removed a feature changed the next plugin's
        inputs (silently, or with a KeyError blamed on that one). A write raises in the
        writer, whose call names it. The batch source's rows are read-only views already
        (`BatchFeatureSource.prepare`); the proxy costs one small object a bar. `ready` is
        read-only too, made here each bar: a signal narrowing it in place (`ok = ctx.ready;
        ok &= ...`) took the view from every later plugin's scores and from the decision.

        And read-only for good, `ready` and the values cleaned here (`core.arrays`): a fresh
        array, or a view of a writeable one, flagged read-only was made writeable again by
        `setflags(write=True)`. `valid` (ctx.tradable) is read-only for good already, so it
        is `ready` itself when no feature is required."""
        raw = self.features.at(bar)
        if self._ready_at is not None:
            row = self._ready_at(bar)
            # `read_only_copy`, spelled out: a Python call less, every bar.
            ready = _frombuffer((valid & row).tobytes(), _BOOL) if row is not None else valid
            return MappingProxyType(_FeatureValues(raw)), ready
        # A source without `prepare` (the engine's own are prepared): cleaned here.
        mask = valid.copy()
        out: dict[str, np.ndarray] = _FeatureValues()
        for name, v in raw.items():
            finite = np.isfinite(v)
            if name in self._required:
                mask &= finite
            # An alias when it is the source's own array (a streaming feature's state).
            out[name] = (
                read_only_alias(v) if finite.all() else read_only_copy(np.where(finite, v, 0.0))
            )
        return MappingProxyType(out), read_only_copy(mask)

    def _observe(self, ctx: BarContext) -> None:
        """A warm-up bar for each signal plugin: its optional `observe(ctx)` (update state
        only, e.g. a model's input windows) or else `score(ctx)` with the result unused."""
        for plugin, _ in self.pipeline.signals:
            observe = getattr(plugin, "observe", None)
            t0 = _perf_counter()
            if observe is not None:
                self._call(plugin, "observe", observe, ctx)
            else:
                self._call(plugin, "score", plugin.score, ctx)
            if (took := _perf_counter() - t0) > self._slow_plugin_s:
                self._slow(plugin, "score" if observe is None else "observe", ctx.time, took)

    async def _prepare_signals(self, ctx: BarContext) -> None:
        """Each signal plugin's `prepare_bar(ctx)`, awaited before the bar's scores: work a
        plugin must finish before it scores and can do off the event loop (ml_ensemble loads
        a newly published model in a worker thread: inside score() it stopped the health
        endpoint, the heartbeat and the broker's stream while it loaded)."""
        for plugin, prepare in self._preparers:
            try:
                await prepare(ctx)
            except PluginFault:
                raise
            except Exception as exc:
                raise _fault(plugin, "prepare_bar", ctx, exc) from exc

    def _score(self, ctx: BarContext) -> np.ndarray:
        """Weighted mean of the plugins' scores over the plugins that have a view."""
        n = len(self.symbols)
        signals = self.pipeline.signals
        scores = []
        for plugin, _ in signals:
            t0 = _perf_counter()
            try:  # inline `_call`: a frame less for every plugin call of every bar
                given = plugin.score(ctx)
                if type(given) is _NDARRAY and given.dtype is _F64:
                    s = given  # the common case, taken as it is: two identity tests
                else:
                    # A Series is lined up on the symbols (by_symbol); None, text,
                    # booleans, complex numbers or a mapping fail here, before numpy's
                    # conversion (which named none of them), as the plugin's fault.
                    given = by_symbol(given, self.symbols)
                    _refuse_non_numbers(given, "score")
                    s = _floats(given)
            except PluginFault:
                raise
            except Exception as exc:
                raise _fault(plugin, "score", ctx, exc) from exc
            if (took := _perf_counter() - t0) > self._slow_plugin_s:
                self._slow(plugin, "score", ctx.time, took)
            if s.shape == (n,) and count_nonzero(np.abs(s) <= _SCORE_BOUND) == n:
                scores.append(s)  # all finite and in range (NaN and inf fail <=): one check
                continue
            s = _check_array(plugin, "score", s, n, ctx.time, allow_nan=True, symbols=self.symbols)
            outside = np.abs(s) > _SCORE_LIMIT  # NaN compares False: ignored
            if count_nonzero(outside):
                raise PluginFault(
                    _name(plugin),
                    "score",
                    ctx.time,
                    ValueError(
                        "scores must lie in [-1, 1] or be NaN: "
                        + _values_at(outside, s, self.symbols)
                    ),
                )
            # While a plugin has had no view at any bar so far (not read again after one):
            # said at the run's end (`_warn_of_signals_without_view`).
            key = id(plugin)
            if self._no_view.get(key, 0) == self._scored and not count_nonzero(s == s):
                self._no_view[key] = self._scored + 1
            scores.append(s)
        if len(scores) == 1 and signals[0][1] > 0:
            return scores[0]
        num = np.zeros(n)
        den = np.zeros(n)
        for s, (_, weight) in zip(scores, signals, strict=True):
            ok = ~np.isnan(s)
            num[ok] += weight * s[ok]
            den[ok] += weight
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    def _decide_long_only(self, pipeline: Pipeline, long_only: bool) -> None:
        self.long_only = long_only
        sizing_config = getattr(pipeline.sizing, "config", None)
        built_in = type(pipeline.sizing).__module__.startswith("tradingd_plugins.")
        says_long = built_in and getattr(sizing_config, "allow_short", True) is False
        self._may_short = long_only and not says_long

    def _size(self, score: np.ndarray, ctx: BarContext) -> np.ndarray:
        p = self.pipeline.sizing
        t0 = _perf_counter()
        try:
            t = p.size(score, ctx)
        except PluginFault:
            raise
        except Exception as exc:
            raise _fault(p, "size", ctx, exc) from exc
        if (took := _perf_counter() - t0) > self._slow_plugin_s:
            self._slow(p, "size", ctx.time, took)
        # While the sizing has had no finite target at any bar so far (not looked at again
        # after one): said at the run's end (`_warn_of_sizing_without_targets`). Before
        # `_check_array`, which repairs NaN targets to 0.
        if self._no_target == self._scored - 1 and not _any_target(t):
            self._no_target = self._scored
        t = _check_array(
            p,
            "size",
            t,
            len(self.symbols),
            ctx.time,
            allow_nan=False,
            symbols=self.symbols,
            repairs=self._repairs,
        )
        if self._may_short and count_nonzero(t < 0):
            t = self._no_shorts(p, "size", t, ctx.time)
        return t

    def _no_shorts(self, plugin: Any, stage: str, t: np.ndarray, when: datetime) -> np.ndarray:
        """A negative target where the broker may not short (`broker.allow_short = false`)
        is a target of zero: close the long, do not open a short. Sent as it was, the sale
        asked for more shares than held and was refused whole, so the long was not closed
        either (and a broker account that may short opened one). Logged (a deliberate
        repair), as `engine.targets_repaired`, naming the plugin and stage that went short."""
        short = t < 0
        _repaired(plugin, stage, when, "short_target", short, self.symbols, self._repairs)
        return np.where(short, 0.0, t)

    def _risk(self, targets: np.ndarray, ctx: BarContext) -> tuple[np.ndarray, list[RiskVerdict]]:
        """The risk chain, each plugin given the previous one's targets. Given as a read-only
        view (not the array itself, which the sizing or an earlier plugin may reuse): a
        plugin that zeroed its input in place changed the targets with no verdict. And a
        plugin may cut a target without a verdict, but not raise its absolute weight or
        flip its sign without one for the symbol (or the whole book): see `_raised`.

        A negative target where the broker may not short is 0 after each plugin that made
        one (`_no_shorts`, as after sizing): the sizing's repair alone let a risk plugin's
        flip reach the planner, so a backtest sent shorts refused one by one and a live
        account that may short opened them. After each, not after the chain: the next plugin
        judges the targets that will be traded, and the log line names the one that went
        short."""
        verdicts: list[RiskVerdict] = []
        long_only = self.long_only
        risks = self.pipeline.risks
        labelled = self._risk_labels
        if labelled is None or labelled[0] is not risks:
            # A risk plugin's verdicts are counted, alerted and reported by its name; a
            # second instance of one plugin (two drawdown guards with their own limits) by
            # its checkpoint key, `name#2` (None: the name, unchanged). Said as one, the
            # summary's counts and the restrictions of the two merged.
            labels = [None if k == p.name else k for k, p in instance_keys(risks)]
            labelled = self._risk_labels = (risks, labels)
            _label_instances(risks)
        # Each plugin is given a copy it cannot write into nor make writeable (`read_only_copy`,
        # spelled out): a view of the targets, flagged read-only, was made writeable by
        # `setflags(write=True)`. One copy for the chain while its plugins return the array
        # they were given (most plugins at most bars), a new one after a plugin that did not.
        given = None
        for r, label in zip(risks, labelled[1]):  # noqa: B905 (made from `risks`)
            if targets is not given:
                given = _frombuffer(targets.tobytes())
            t0 = _perf_counter()
            try:
                decision = r.check(given, ctx)
            except PluginFault:
                raise
            except Exception as exc:
                raise _fault(r, "check", ctx, exc) from exc
            if (took := _perf_counter() - t0) > self._slow_plugin_s:
                self._slow(r, "check", ctx.time, took)
            if not isinstance(decision, RiskDecision):
                raise PluginFault(
                    _name(r),
                    "check",
                    ctx.time,
                    TypeError(f"returned {type(decision).__name__}, not RiskDecision"),
                )
            targets = _check_array(
                r,
                "check",
                decision.targets,
                len(self.symbols),
                ctx.time,
                allow_nan=False,
                symbols=self.symbols,
                repairs=self._repairs,
            )
            if decision.verdicts:
                error = verdict_error(r.name, decision.verdicts, self._universe)
                if error is not None:
                    raise PluginFault(_name(r), "check", ctx.time, error)
                if label is None:
                    verdicts.extend(decision.verdicts)
                else:
                    verdicts.extend(dataclasses.replace(v, plugin=label) for v in decision.verdicts)
            # Unchanged (the same array back) in most plugins at most bars: no compare. Else
            # one pass: out * (given - out) < 0 where out is not between 0 and given, i.e.
            # raised in absolute weight or flipped in sign; the margin forgives rounding.
            if targets is given:
                continue
            if count_nonzero(targets * (given - targets) < _RAISE_MARGIN):
                self._raised(r, given, targets, decision.verdicts, ctx.time)
            if long_only and count_nonzero(targets < 0):
                targets = self._no_shorts(r, "check", targets, ctx.time)
        return targets, verdicts

    def _hard_cuts(
        self, verdicts: Sequence[RiskVerdict], before: np.ndarray, after: np.ndarray
    ) -> frozenset[int]:
        """The indices of the symbols a hard verdict covers (`RiskVerdict.hard`) whose
        target the risk chain cut (`after` below `before`, the sizing's, in absolute weight):
        the planner carries their cuts out even within the rebalance band
        (`planner.HARD_CUT_TOLERANCE`)."""
        if not verdicts:
            return _NO_HARD
        said = [v.symbol for v in verdicts if v.hard]
        if not said:
            return _NO_HARD
        if None in said:  # the whole book
            covered: Iterable[int] = range(len(self.symbols))
        else:
            named = set(said)
            covered = [i for i, s in enumerate(self.symbols) if s in named]
        return frozenset(i for i in covered if abs(after[i]) < abs(before[i]))

    def _raised(
        self,
        plugin: Any,
        given: np.ndarray,
        out: np.ndarray,
        verdicts: Sequence[RiskVerdict],
        t: datetime,
    ) -> None:
        """A risk plugin's raised or flipped targets, refused where no verdict of its own
        covers the symbol (RiskPlugin: every change comes back as a verdict). One that
        raised a target to 3.0 without a word had it sent. A verdict for the whole book
        (symbol None: a halt, a scale) covers every symbol."""
        said = {v.symbol for v in verdicts}
        if None in said:
            return
        raised = out * (given - out) < _RAISE_MARGIN
        if said:
            raised[[i for i, s in enumerate(self.symbols) if s in said]] = False
        if not count_nonzero(raised):
            return
        raise PluginFault(
            _name(plugin),
            "check",
            t,
            ValueError(
                "raised or flipped target weights without a verdict for the symbol (a risk "
                "plugin may cut targets freely; a raise or a sign flip must come with a "
                "RiskVerdict saying why): " + _values_at(raised, out, self.symbols, given)
            ),
        )

    def _slow(self, plugin: Any, stage: str, t: datetime, took: float) -> None:
        """A plugin call past `log.slow_plugin_s`, logged where it happened. A 40 s score()
        in the live daemon left no line (health's stall check sees the loop, not whose
        call held it; /health showed only max_lag_s), so a slow model or fit could not be
        told from a slow feed or store. Each such call, after it returns."""
        log.warning(
            "engine.plugin_slow",
            plugin=_name(plugin),
            stage=stage,
            time=t,
            seconds=round(took, 3),
            limit_s=self._slow_plugin_s,
            hint="the bar waited this long for the plugin; raise log.slow_plugin_s if it is "
            "expected (0 = off)",
        )

    @staticmethod
    def _call(plugin: Any, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """The boundary where plugin code runs: any exception becomes a PluginFault. The
        per-bar score, size and check calls have it inline (`_fault`)."""
        try:
            return fn(*args)
        except PluginFault:
            raise
        except Exception as exc:
            raise _fault(plugin, stage, args[-1], exc) from exc

    async def _publish(self, force: bool = False) -> None:
        now = _time.monotonic()
        if not force and now - self._last_publish < self._publish_interval:
            return
        self._last_publish = now
        pf = self.portfolio
        held = np.flatnonzero(pf.quantity)
        state = {
            "run_id": self.run.run_id,
            "mode": self.run.mode,
            # As /status: a restart's checkpoint until a later bar (its own traded bars
            # alone said null after a restart that stopped before trading).
            "bar_time": last.isoformat() if (last := self.last_bar_time) is not None else None,
            "bars": self._bars,
            "equity": pf.equity,
            "cash": pf.cash,
            "positions": {self.symbols[i]: float(pf.quantity[i]) for i in held.tolist()},
            "open_orders": len(self.broker.open_orders()),
            "updated_at": datetime.now(UTC).isoformat(),
        }
        if self.publisher is not None:
            self.publisher.publish("state", state)
        try:
            await self.cache.set(
                f"{self.run.run_id}:state", json.dumps(state).encode(), self._cache_ttl
            )
        except RetryableError as exc:
            # The cache is a convenience: an outage is reported (/ready), never fatal.
            if self.cache_error is None:
                log.warning("cache.unavailable", error=str(exc))
            self.cache_error = str(exc)
            return
        if self.cache_error is not None:
            log.info("cache.recovered")
        self.cache_error = None


# What a plugin's output is taken as without a conversion: float64 arrays (`_score`).
_NDARRAY = np.ndarray
_F64 = np.dtype(np.float64)
_BOOL = np.dtype(np.bool_)
# `_frombuffer(a.tobytes(), dtype)`: `core.arrays.read_only_copy` of a 1-d array, spelled out
# where it runs every bar (a Python call less).
_frombuffer = np.frombuffer

# Where a symbol is not ready: the scores are float64 here (`_score`), so a 0-d operand.
_NAN = scalar(np.nan)

# Scores lie in [-1, 1]; the margin forgives a plugin's rounding (tanh, a mean of weights).
_SCORE_LIMIT = 1.0 + 1e-12
_SCORE_BOUND = scalar(_SCORE_LIMIT)  # beside float64 scores (core/arrays.scalar)


async def _anext_or_none(bars: AsyncIterator[CrossSection]) -> CrossSection | None:
    try:
        return await anext(bars)
    except StopAsyncIteration:
        return None


async def _no_times() -> AsyncIterator[datetime]:
    """No bar: the clock is not iterated when a stop came before it started."""
    return
    yield


def _fault(plugin: Any, stage: str, ctx: BarContext, exc: Exception) -> PluginFault:
    """What a plugin's exception becomes (a PluginFault it raises goes on as it is)."""
    return _fault_at(plugin, stage, ctx.time, exc)


def _fault_at(plugin: Any, stage: str, t: object, exc: Exception) -> PluginFault:
    """A PluginFault for an exception out of the plugin's call, saying the line of the
    plugin's code that raised it (PluginFault's `module`). A wrapper the research commands
    put around a plugin (`lookahead-check`, attribution) names it as `__wrapped__`: the
    wrapper's module is not the plugin's code, and the line named was the wrapper's."""
    inner = plugin
    while (wrapped := getattr(inner, "__wrapped__", None)) is not None:
        inner = wrapped
    return PluginFault(_name(plugin), stage, t, exc, module=type(inner).__module__)


def _any_target(t: Any) -> bool:
    """Whether a sizing's answer has a number that is not NaN (one target at least). What
    is not an array is read as `_check_array` reads it (as numbers: a Series by position,
    which is all counting needs); what cannot be is left to `_check_array` to refuse."""
    if type(t) is not _NDARRAY or t.dtype is not _F64:
        try:
            _refuse_non_numbers(t, "size")
            t = _floats(t)
        except Exception:  # refused by `_check_array`, which says why
            return True
    return bool(count_nonzero(t == t))


def _check_array(
    plugin: Any,
    stage: str,
    arr: Any,
    n: int,
    t: datetime,
    *,
    allow_nan: bool,
    symbols: Sequence[str] | None = None,
    repairs: dict[tuple[str, str, str], int] | None = None,
) -> np.ndarray:
    if type(arr) is _NDARRAY and arr.dtype is _F64:
        a = arr  # the common case, taken as it is (as in `Engine._score`)
    else:
        try:
            if symbols is not None:  # a Series, lined up on the symbols (by_symbol)
                arr = by_symbol(arr, symbols)
            _refuse_non_numbers(arr, stage)
            a = _floats(arr)
        except (TypeError, ValueError) as exc:  # None, text, booleans, a mapping, ragged lists
            raise PluginFault(_name(plugin), stage, t, exc) from exc
    if a.shape != (n,):
        raise PluginFault(
            _name(plugin), stage, t, ValueError(f"returned shape {a.shape}, expected ({n},)")
        )
    if count_nonzero(np.isfinite(a)) == n:
        return a  # no NaN and no inf, the common case: two cheap calls (a.sum() costs more)
    inf = np.isinf(a)
    if count_nonzero(inf):  # as .any(), at a fifth of its cost
        raise PluginFault(
            _name(plugin),
            stage,
            t,
            ValueError("returned an infinite value: " + _values_at(inf, a, symbols)),
        )
    if not allow_nan:
        # Not all finite and no inf: a NaN. A NaN target means "no view": hold no position
        # rather than guess. Logged: a plugin returning NaN for held symbols sells them.
        nan = np.isnan(a)
        _repaired(plugin, stage, t, "nan_target", nan, symbols, repairs)
        a = np.where(nan, 0.0, a)
    return a


# Symbols named with their values in a fault about bad values (`_values_at`).
_SHOWN = 5

# A risk plugin's target counts as raised where out * (given - out) is below this (negative
# where |out| > |given| or the sign flips; about -given**2 x the relative raise): a rounding
# of a scaled target, or a float32 round trip (relative 6e-8) of weights up to 4 (400%), is
# not a raise; a raise of 0.1% of a 5% weight is.
_RAISE_MARGIN = scalar(-1e-6)


def _values_at(
    mask: np.ndarray,
    a: np.ndarray,
    symbols: Sequence[str] | None,
    before: np.ndarray | None = None,
) -> str:
    """The first `_SHOWN` symbols where `mask` holds, with their values (`before -> a` when
    given), and how many there are: the fault's text, so the entry is found among hundreds
    of symbols (index numbers where the symbols are not known). Built on the error path
    only."""
    where = np.flatnonzero(mask)
    shown = ", ".join(
        f"{symbols[i] if symbols is not None else i}"
        + (f"={float(a[i])!r}" if before is None else f" {float(before[i])!r} -> {float(a[i])!r}")
        for i in where[:_SHOWN].tolist()
    )
    more = ", ..." if where.size > _SHOWN else ""
    return f"{shown}{more} ({where.size} of {a.size} symbols)"


def _refuse_non_numbers(given: Any, stage: str) -> None:
    """Scores and weights are real numbers (float or integer arrays, or lists of them); the
    conversion to float64 takes more than that, and each would be traded on as a number:
    numeric text ("0.5" is 0.5), booleans (True is 1.0: a mask returned as targets asks for
    all the equity in each symbol; as scores, False is no opinion rather than short, so a
    mask is refused there too: convert it deliberately), dates, and complex numbers (the
    real part kept with only a ComplexWarning: half the answer). None among numbers (an
    object array) stays what it always was, NaN. Checked before the conversion, and only
    where the output is not float64 already: the conversion's own errors named neither the
    mistake nor the fix (None was "returned shape ()", a dict "float() argument must be a
    string or a real number", other text "could not convert string to float")."""
    if given is None:
        raise TypeError(
            "returned a RiskDecision whose targets are None"
            if stage == "check"
            else f"returned None: did {stage}() forget to return?"
        )
    if isinstance(given, Mapping):
        raise TypeError(
            f"returned a {type(given).__name__}, not an array: return an array in "
            "ctx.symbols order, or a Series indexed by symbol (pd.Series(d) of a dict)"
        )
    a = given if isinstance(given, np.ndarray) else np.asarray(given)
    kind = a.dtype.kind
    if kind in "fiu":
        return
    if kind == "O":
        values = a.ravel().tolist()
        bad = next((v for v in values if v is not None and not _is_real(v)), None)
        if bad is None:
            return
        kind = np.asarray([bad]).dtype.kind
    raise TypeError(
        f"returned {_KIND_NAMES.get(kind, 'values')} ({a.dtype}), not numbers{_HINTS.get(kind, '')}"
    )


def _floats(given: Any) -> np.ndarray:
    """A plugin's output (checked by `_refuse_non_numbers`) as float64, off the fast path (a
    float64 ndarray is taken as it is before this). A masked entry of a numpy masked array
    is no value, so NaN (no view as a score; a target repaired to 0 and logged): `asarray`
    dropped the mask and traded on whatever the masked slot held."""
    if isinstance(given, np.ma.MaskedArray):
        return np.ma.filled(given.astype(np.float64), np.nan)
    return np.asarray(given, dtype=np.float64)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


_KIND_NAMES = {
    "U": "text",
    "S": "text",
    "b": "booleans",
    "c": "complex numbers",
    "M": "datetime64 values",
    "m": "timedelta64 values",
}
_HINTS = {
    "U": ": return floats (np.asarray(x, dtype=float) if the text is meant as numbers)",
    "S": ": return floats (np.asarray(x, dtype=float) if the text is meant as numbers)",
    "b": ": convert a mask deliberately, e.g. np.where(mask, weight, 0.0) (True would be "
    "read as 1.0)",
    "c": ": return real ones",
}


_REPAIR_RULES = {
    "nan_target": "a NaN target is 0: no position in the symbol (a held one is sold)",
    "short_target": "broker.allow_short is false: a negative target is 0 (the long is closed, "
    "no short opened)",
}


def _repaired(
    plugin: Any,
    stage: str,
    t: datetime,
    kind: str,
    mask: np.ndarray,
    symbols: Sequence[str] | None,
    repairs: dict[tuple[str, str, str], int] | None = None,
) -> None:
    # An engine's counts per (plugin, stage, kind): logged at the 1st, 10th, 100th, ... so a
    # plugin that does it every bar is heard without a line per bar. Without: this call's.
    counts: dict[tuple[str, str, str], int] = {} if repairs is None else repairs
    key = (_name(plugin), stage, kind)
    n = counts[key] = counts.get(key, 0) + 1
    if sparse(n):
        where = np.flatnonzero(mask)
        log.warning(
            "engine.targets_repaired",
            plugin=key[0],
            stage=stage,
            time=t,
            kind=kind,
            symbols=[symbols[i] for i in where[:10].tolist()] if symbols else where[:10].tolist(),
            count=int(where.size),
            times_so_far=n,
            rule=_REPAIR_RULES[kind],
        )


def _name(plugin: Any) -> str:
    """What errors and logs call the plugin: its name, or its instance key (`name#2`) when
    it is a later instance of a plugin configured twice (`_label_instances`), so a fault
    names the instance that raised. Off the per-bar path (faults, repairs, slow calls)."""
    later = _LATER_INSTANCES.get(id(plugin))
    if later is not None and later[0]() is plugin:
        return later[1]
    return getattr(plugin, "name", type(plugin).__name__)


# The later instances of a plugin configured twice, by id: (a reference to the instance,
# its key `name#2`). With the instance, since an id is reused once its object is gone; a
# weak one where the plugin takes it, so an engine's plugins are not kept for the process.
# Empty unless a plugin is configured twice.
_LATER_INSTANCES: dict[int, tuple[Callable[[], Any], str]] = {}


def _label_instances(plugins: Iterable[Any]) -> None:
    """Note the instance keys (`plugins.instance_keys`) of the plugins that are a later
    instance (`name#2`), for `_name`. The first instance is its name, and not noted. Called
    where the engine takes its pipeline (and sees a new signals or risks list)."""
    named = [p for p in plugins if isinstance(getattr(p, "name", None), str)]
    for key, plugin in instance_keys(named):
        if key == plugin.name:
            continue
        for gone in [i for i, (ref, _) in _LATER_INSTANCES.items() if ref() is None]:
            del _LATER_INSTANCES[gone]
        try:
            ref: Callable[[], Any] = weakref.ref(plugin)
        except TypeError:  # __slots__ without __weakref__: kept
            ref = _Strong(plugin)
        _LATER_INSTANCES[id(plugin)] = (ref, key)


@dataclass(frozen=True, slots=True)
class _Strong:
    """A reference that is not weak, called as `weakref.ref` is."""

    target: Any

    def __call__(self) -> Any:
        return self.target
