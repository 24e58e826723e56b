"""Every interface between tradingd's parts, in one place.

The engine only knows these protocols; `tradingd.app` is the one place that picks concrete
clocks, feeds, brokers, stores and caches. Plugins see a `BarContext`, never the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .frozen import fast_init
from .types import BrokerUpdate, CrossSection, Fill, Order, RiskVerdict, RunInfo

# ----------------------------------------------------------------------------- lifecycle


class Service(Protocol):
    """Long-lived parts start and stop explicitly; no constructor touches the event loop."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


# ----------------------------------------------------------------------------- the swaps


class Clock(Service, Protocol):
    """Yields bar times. Replay: the next stored bar at once. Live: each bar close."""

    def __aiter__(self) -> AsyncIterator[datetime]: ...
    def request_stop(self) -> None: ...


class Feed(Service, Protocol):
    """Market data for a fixed universe."""

    @property
    def symbols(self) -> tuple[str, ...]: ...

    async def bars(self, t: datetime) -> CrossSection | None:
        """The cross-section at bar time t, or None when no symbol has a bar then."""
        ...


class Broker(Service, Protocol):
    async def submit(self, orders: Sequence[Order]) -> list[Order]:
        """Accept orders; returns their acknowledged state (NEW, HELD or REJECTED).
        Submitting a client_order_id twice returns the existing order, never a second one."""
        ...

    async def cancel(self, client_order_id: str, reason: str) -> Order | None: ...

    async def on_bar(self, bar: CrossSection) -> BrokerUpdate:
        """Called first thing at each bar: fills and order changes since the previous bar."""
        ...

    def open_orders(self) -> list[Order]: ...


class FeatureSource(Protocol):
    """Feature values at one bar for the whole universe: precomputed in batch for a replay,
    updated incrementally for the live daemon. Both give the same numbers (tested)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def at(self, bar: CrossSection) -> Mapping[str, np.ndarray]:
        """{name: (N,) values at bar.time}; NaN where not ready or no bar."""
        ...


class Store(Service, Protocol):
    """Persistence. `record_*` buffer rows; `flush` writes them in batches."""

    async def begin_run(self, run: RunInfo) -> None: ...
    async def end_run(self, run_id: str, summary: Mapping[str, Any]) -> None: ...
    async def write_bars(self, symbols: Sequence[str], bars: Sequence[CrossSection]) -> None: ...

    def record_signals(
        self,
        run_id: str,
        time: datetime,
        symbols: Sequence[str],
        scores: np.ndarray,
        targets: np.ndarray,
        source: str = "",
        *,
        ordered: Collection[str] = (),
        weights: np.ndarray | None = None,
    ) -> None:
        """A decision row where the plan orders a symbol (`ordered`) or its target moved,
        not where the target holds the symbol at its current weight (`weights`)."""
        ...

    def record_orders(
        self,
        run_id: str,
        orders: Sequence[Order],
        *,
        intent: bool = False,
        booked_at: datetime | None = None,
    ) -> Sequence[tuple[Any, ...]] | None:
        """The records kept, if the store keeps them as `storage.rows.ORDER_VALUES` tuples
        (the engine passes them on to `AuditSink.orders`), else None. `intent`: a live run's
        orders stored before they are sent; from then on a state that repeats its order's
        last stored one (the broker's answer to an intent, say) adds no event. `booked_at`:
        the bar a live run records them at (what a resume deletes after its checkpoint by;
        their own times are the broker's clock)."""
        ...

    def record_fills(
        self, run_id: str, fills: Sequence[Fill], booked_at: datetime | None = None
    ) -> Sequence[tuple[Any, ...]] | None: ...
    def record_positions(
        self,
        run_id: str,
        time: datetime,
        symbols: Sequence[str],
        quantity: np.ndarray,
        avg_price: np.ndarray,
        mark: np.ndarray,
    ) -> None: ...
    def record_equity(
        self,
        run_id: str,
        time: datetime,
        cash: float,
        equity: float,
        gross_exposure: float,
        net_exposure: float,
    ) -> None: ...

    async def maybe_flush(self) -> None:
        """Flush when a buffer has reached the batch size; cheap otherwise."""
        ...

    async def flush(self) -> None: ...

    async def write_behind(self) -> None:
        """Start writing everything buffered; `flush` waits for it."""
        ...

    async def fetch(self, table: str, run_id: str) -> list[dict[str, Any]]:
        """Rows of one run from `orders`, `fills`, `equity`, `positions` or `signals`."""
        ...

    def keep_records(self, tables: Collection[str] = ("orders", "fills")) -> bool:
        """Keep the run's order states and fills (a replay's, for its report) for
        `recorded`; False if this store cannot."""
        ...

    async def recorded(self, table: str, run_id: str) -> Sequence[dict[str, Any]]:
        """`fetch(table, run_id)` as it reads once the writes commit: for kept records
        (`keep_records`) made without waiting for them, otherwise after a flush."""
        ...


class AuditSink(Protocol):
    """Where every order state and fill is also written, apart from the operational log."""

    def orders(
        self,
        orders: Sequence[Order],
        records: Sequence[tuple[Any, ...]] | None = None,
        booked_at: datetime | None = None,
    ) -> None:
        """`records`: the store's records of these orders (`Store.record_orders`), which
        an audit log may keep instead of making its own: the same objects, pickled once
        when both go to one writer process. `booked_at`: the bar a live run recorded these
        states at (as for `fills`)."""
        ...

    def fills(
        self,
        fills: Sequence[Fill],
        booked_at: datetime | None = None,
        records: Sequence[tuple[Any, ...]] | None = None,
    ) -> None: ...
    def flush(self, force: bool = False) -> None:
        """Write what waits when due; `force`: every line recorded so far is written before
        it returns (a failed write raises)."""
        ...

    def close(self) -> None: ...


class Cache(Service, Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...


# ----------------------------------------------------------------------------- plugins


class HistoryView(Protocol):
    """Split-adjusted past bars, newest last. Never contains data after the current bar."""

    def window(self, field: str, n: int) -> np.ndarray:
        """The last n rows of `field` (open/high/low/close/volume) as an (n, N) array;
        rows before the first bar are NaN."""
        ...

    @property
    def length(self) -> int:
        """Bars seen so far."""
        ...


@fast_init
@dataclass(frozen=True, slots=True)
class PortfolioView:
    cash: float
    equity: float
    quantity: np.ndarray  # (N,) signed shares
    weights: np.ndarray  # (N,) signed position value / equity
    peak_equity: float
    # Equity at the previous session's last close (daily bars: the previous bar's close).
    day_start_equity: float
    # (N,) average entry price of the open position (0 when flat) and cumulative realized
    # P&L net of commissions per symbol: enough for a plugin to learn from its own closed
    # trades (Kelly sizing) without a second book of its own. None in hand-built test views.
    avg_price: np.ndarray | None = None
    realized_pnl: np.ndarray | None = None
    # (N,) cumulative cost (price x shares, before commission) of the fills that opened or
    # added to a position, long or short: the cost of a position opened and closed between
    # two bars (a bracket stopped out on its entry bar), which the fields above do not keep.
    # None in hand-built test views.
    opened_cost: np.ndarray | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class BarContext:
    """Everything a plugin may use at bar t. Built once per bar, shared by all plugins."""

    time: datetime
    # The bar's position among the bars this engine was given, from 0, warm-up bars
    # included: a backtest counts from the data's first bar, not from run.start (3646 at a
    # run.start 14 years into the daily data; 0 at the first traded bar only when the data
    # starts there), a live run from the first warm-up bar of its process (so from 0 again
    # after a restart). Always ctx.history.length - 1. For counting bars (every k-th bar),
    # not a date, and not a count of traded bars.
    index: int
    symbols: tuple[str, ...]
    bar: CrossSection
    mark: np.ndarray  # (N,) last known close, NaN before a symbol's first bar
    tradable: np.ndarray  # (N,) bool: has a bar at t
    history: HistoryView
    # name -> (N,) finite values at t (0.0 where a symbol is not ready: check `ready`); the
    # engine's is a read-only mapping of read-only arrays (every later plugin reads it too)
    features: Mapping[str, np.ndarray]
    portfolio: PortfolioView
    # (N,) bool: has a bar at t and every feature the plugins asked for is past its warm-up.
    # The engine gives symbols that are not ready no score, whatever a plugin returns.
    ready: np.ndarray | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class RiskDecision:
    targets: np.ndarray
    verdicts: tuple[RiskVerdict, ...] = ()


# Any plugin may also define `history_bars() -> int`: the raw bars it reads from ctx.history
# (a return window for correlation or VaR, a GARCH fit). The engine keeps the largest of these
# and `features.history_bars`, so a plugin never finds its window silently cut short.
# A plugin with work in flight between bars (kelly_garch's GARCH fits) may define
# `async settle() -> None`: a live engine awaits it before each checkpoint (before `state()`),
# so the wait happens without blocking the event loop (streams, health, alerts go on).
# A signal plugin that follows a model published while it runs (ml_ensemble and
# `var/models/current`) may define `pin_model() -> None`: the composition root
# (`app.build_engine`) calls it for a backtest, so one run is one model from start to end; a
# live daemon's is not pinned, and takes up a newly published model at its next bar.
# Such a plugin should define `check_reloaded_models(check) -> None`: the root hands it the
# run's checks of a model (`app.warn_model_bar`: trained on bars of another length, then
# over another universe with cross-sectional features; in a replay, fitted on its bars still
# to come), and the plugin calls `check(card, at)` (the new model's
# `inference.onnx.ModelCard`; `at`: the time of the first bar it would decide, None when not
# known) before the model serves; a `ConfigError` from it refuses the model (the loaded one
# serves on).
# A signal plugin may define `async prepare_bar(ctx) -> None`: the engine awaits it before
# `score(ctx)` on each trading bar (not on warm-up bars), for work the plugin must finish
# before it scores and can do off the event loop (ml_ensemble loads a newly published model
# in a worker thread). `score` must still work without it (a plugin scored by hand).
# Any plugin may define `for_replay() -> None`, called by the same root for a backtest before
# its first bar: no clock paces a replay, so background work the engine waits for (kelly_garch's
# fit worker) should run at full priority.


@runtime_checkable
class SignalPlugin(Protocol):
    """Scores every symbol in [-1, 1] (positive = want to be long); NaN = no view.

    Optional: `observe(ctx) -> None`, called instead of `score` on warm-up bars (before the
    run trades), for a plugin that keeps state of its own (e.g. model input windows) and can
    update it more cheaply than it can score. Without it, warm-up bars call `score` and drop
    the result."""

    kind: ClassVar[str]  # "signal"
    name: str

    def required_features(self) -> tuple[str, ...]: ...
    def score(self, ctx: BarContext) -> np.ndarray: ...


@runtime_checkable
class SizingPlugin(Protocol):
    """Turns the combined score into target weights (signed fraction of equity per symbol)."""

    kind: ClassVar[str]  # "sizing"
    name: str

    def required_features(self) -> tuple[str, ...]: ...
    def size(self, score: np.ndarray, ctx: BarContext) -> np.ndarray: ...


@runtime_checkable
class RiskPlugin(Protocol):
    """Adjusts target weights; every change comes back as a verdict with a reason.

    `targets` is read-only (the previous plugin's, or the sizing's): return a new array.
    The engine enforces the verdicts where it matters most: a target raised in absolute
    weight or flipped in sign without a verdict for its symbol (or one for the whole book,
    symbol None) stops the run as the plugin's fault. Cuts without one are not refused."""

    kind: ClassVar[str]  # "risk"
    name: str

    def required_features(self) -> tuple[str, ...]: ...
    def check(self, targets: np.ndarray, ctx: BarContext) -> RiskDecision: ...


class AccountView(Protocol):
    """What a simulated broker may ask of the book it trades for (cash and positions at the
    start of the bar, before this bar's fills)."""

    @property
    def cash(self) -> float: ...

    def quantity_of(self, symbol: str) -> float: ...
