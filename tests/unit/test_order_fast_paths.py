"""The fast paths of order building and of the simulated broker give exactly what the general
paths give: the same ids, the same orders field for field, the same fills, rejections and
reasons. Each fast path is compared with the path it short-cuts, on generated inputs."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradingd.brokers.simulated import SimulatedBroker, SimulatedBrokerConfig, _BarState
from tradingd.core.orders import bracket_orders, market_order
from tradingd.core.types import (
    BrokerUpdate,
    CrossSection,
    Leg,
    Order,
    OrderStatus,
    OrderType,
    Side,
    _stamp,
    client_order_id,
    order_to_dict,
)

SYMS = ("AAA", "BBB", "CCC")
T0 = datetime(2024, 1, 2, 16, 0, tzinfo=UTC)

# ----------------------------------------------------------------------------- ids


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.one_of(
        st.none(),
        st.integers(min_value=-23 * 60, max_value=23 * 60).map(
            lambda m: timezone(timedelta(minutes=m))
        ),
    ),
)
def test_stamp_is_strftime_for_every_year_and_zone(naive: datetime, tz: timezone | None) -> None:
    t = naive.replace(tzinfo=tz)
    # __wrapped__: the formatting itself, not a cached result of an earlier example.
    assert _stamp.__wrapped__(t, t.utcoffset()) == f"{t:%Y%m%dT%H%M%S}"
    assert client_order_id("r", t, "AAA", Leg.ENTRY).split("|")[1] == f"{t:%Y%m%dT%H%M%S}"


def test_ids_follow_each_datetime_object_not_the_last_instant() -> None:
    """The last stamp is reused for the same datetime object only: the same instant in
    another zone (an equal datetime) has its own wall-clock stamp, in any order of calls."""
    utc = datetime(2024, 3, 1, 21, 0, tzinfo=UTC)
    ny = utc.astimezone(timezone(timedelta(hours=-5)))
    assert utc == ny
    for t, stamp in [(utc, "20240301T210000"), (ny, "20240301T160000")] * 2:
        assert client_order_id("r", t, "AAA", Leg.ENTRY).split("|")[1] == stamp
        assert client_order_id("r", t, "BBB", Leg.ENTRY) == f"r|{stamp}|BBB|entry|1"


def test_an_id_without_a_bar_time_is_refused_even_as_the_first_call() -> None:
    """A fresh process (the last-stamp cache as at import): None is no bar time, not a match
    for the cache's empty start."""
    import subprocess
    import sys

    code = (
        "from tradingd.core.types import Leg, client_order_id\n"
        "try:\n"
        "    print(client_order_id('r', None, 'AAA', Leg.ENTRY))\n"
        "except AttributeError:\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "refused"


def test_stamp_of_a_datetime_subclass_uses_its_own_strftime() -> None:
    class Odd(datetime):
        def strftime(self, fmt: str) -> str:
            return "odd"

        def __format__(self, fmt: str) -> str:
            return "odd"

    t = Odd(2024, 1, 2, tzinfo=UTC)
    assert _stamp.__wrapped__(t, t.utcoffset()) == "odd"


@settings(max_examples=300, deadline=None)
@given(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9).filter(
        lambda q: q != 0
    ),
    st.sampled_from([*Leg, "tp.r", "sl.p"]),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_market_order_is_the_keyword_built_order(qty: float, leg: Leg, when: datetime) -> None:
    when = when.replace(tzinfo=UTC)
    built = market_order("run", when, "AAA", qty, leg)
    expected = Order(
        client_order_id=client_order_id("run", when, "AAA", leg),
        symbol="AAA",
        side=Side.BUY if qty > 0 else Side.SELL,
        quantity=abs(float(qty)),
        created_at=when,
        type=OrderType.MARKET,
        leg=leg,
    )
    assert built == expected
    assert type(built.quantity) is float and built.side is expected.side


# ----------------------------------------------------------------------------- broker


class _Account:
    def __init__(self, cash: float, positions: dict[str, float]) -> None:
        self.cash = cash
        self.positions = dict(positions)

    def quantity_of(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0)

    def apply(self, update: BrokerUpdate) -> None:
        for f in update.fills:
            self.cash -= f.signed_quantity * f.price + f.commission
            self.positions[f.symbol] = self.positions.get(f.symbol, 0.0) + f.signed_quantity


class GeneralPathBroker(SimulatedBroker):
    """The broker with its fast paths taken out: every bar goes through `_matching_order`
    and `_is_active` (the path for bars with OCO groups), expiry through `_is_active`, and
    every fill of a market order is checked against `_trigger`, which the fast path skips,
    and every fill's quantity against `_fillable`."""

    _pending: dict[str, Order]  # declared by the base class (for mypy)

    async def on_bar(self, bar: CrossSection) -> BrokerUpdate:
        self._seq += 1
        self._now = bar.time
        if not self._open:
            if not self._pending:
                return BrokerUpdate()
            pending = self._pending
            self._pending = {}
            return BrokerUpdate(orders=[o.snapshot() for o in pending.values()])
        state = _BarState(time=bar.time, cash=float(self._account.cash))
        state.changed.update(self._pending)
        self._pending = {}
        self._apply_splits(bar, state)
        candidates = list(self._open.values())
        for side in (Side.SELL, Side.BUY):
            for o in self._matching_order(candidates, side, bar):
                if self._is_active(o):
                    self._match(o, bar, state)
        ttl = self._config.order_ttl_bars
        for o in candidates:
            if not self._is_active(o):
                continue
            o.bars_open += 1
            if ttl and o.leg is Leg.ENTRY and o.bars_open >= ttl:
                self._close(
                    o,
                    OrderStatus.CANCELLED,
                    f"expired: still open after {ttl} bars (order_ttl_bars={ttl})",
                    state.changed,
                )
        return BrokerUpdate(
            fills=state.fills, orders=[o.snapshot() for o in state.changed.values()]
        )

    def _match(
        self,
        order: Order,
        bar: CrossSection,
        state: _BarState,
        activated_at: float | None = None,
    ) -> None:
        expected = None
        if order.type is OrderType.MARKET:
            j = self._index[order.symbol]
            open_ = activated_at if activated_at is not None else float(bar.open[j])
            high, low = float(bar.high[j]), float(bar.low[j])
            expected = self._trigger(order, open_, high, low, activated_at is None)
        volume = float(bar.volume[self._index[order.symbol]])
        fillable = self._fillable(order, volume) if volume > 0 else None  # no bar: no fill
        n = len(state.fills)
        super()._match(order, bar, state, activated_at)
        if len(state.fills) > n:  # the quantity `_fillable` allows on this bar
            assert state.fills[n].quantity == fillable
        if expected is not None and len(state.fills) > n:
            first = state.fills[n]
            assert first.client_order_id == order.client_order_id
            assert (first.price, first.reference_price) == expected


def _dump(o: Order) -> str:
    return repr(order_to_dict(o))


@st.composite
def _decisions(draw: st.DrawFn, t: int) -> list[Order]:
    """The orders submitted after bar t: market entries and exits of every kind, brackets,
    OCO pairs, duplicates and invalid ones."""
    out: list[Order] = []
    when = T0 + timedelta(days=t)
    for k in range(draw(st.integers(0, 4))):
        sym = draw(st.sampled_from(SYMS))
        kind = draw(
            st.sampled_from(["market", "market", "market", "bracket", "exit", "oco", "bad"])
        )
        qty = float(draw(st.integers(1, 400)))
        sign = draw(st.sampled_from([1, 1, -1]))
        if kind == "market":
            out.append(market_order("run", when, sym, sign * qty, draw(st.sampled_from(Leg))))
        elif kind == "bracket":
            tp, sl = (110.0, 90.0) if sign > 0 else (90.0, 110.0)
            out.extend(bracket_orders("run", when, sym, sign * qty, tp, sl))
        elif kind in ("exit", "oco"):
            otype = draw(
                st.sampled_from(
                    [OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP]
                )
            )
            side = Side.SELL if sign > 0 else Side.BUY
            o = Order(
                client_order_id=f"run|{t}|{sym}|x{k}|1",
                symbol=sym,
                side=side,
                quantity=qty,
                created_at=when,
                type=otype,
                limit_price=draw(st.floats(90, 110)) if otype.name.endswith("LIMIT") else None,
                stop_price=draw(st.floats(90, 110))
                if otype in (OrderType.STOP, OrderType.STOP_LIMIT)
                else None,
                trail_pct=draw(st.floats(0.01, 0.2)) if otype is OrderType.TRAILING_STOP else None,
                leg=Leg.EXIT,
            )
            if kind == "oco":
                twin = dataclasses.replace(
                    o,
                    client_order_id=f"run|{t}|{sym}|y{k}|1",
                    type=OrderType.STOP,
                    stop_price=draw(st.floats(90, 110)),
                    limit_price=None,
                    trail_pct=None,
                )
                o.oco_group = twin.oco_group = o.client_order_id
                out.extend([o, twin])
            else:
                out.append(o)
        else:
            bad = market_order("run", when, sym, sign * qty)
            bad.client_order_id += f"#bad{k}"
            bad.quantity = draw(st.sampled_from([math.nan, -1.0, 0.0]))
            bad.symbol = draw(st.sampled_from([sym, "ZZZ"]))
            out.append(bad)
    resubmit: bool = draw(st.booleans())
    if out and resubmit:
        out.append(out[0])  # a resubmission: a duplicate id
    return out


@st.composite
def _bar(draw: st.DrawFn, t: int) -> CrossSection:
    n = len(SYMS)
    arr = {k: np.full(n, np.nan) for k in ("open", "high", "low", "close", "volume")}
    split = np.ones(n)
    for j in range(n):
        if draw(st.integers(0, 9)) == 0:
            continue  # no bar for this symbol
        prices = [draw(st.floats(85, 115)) for _ in range(4)]
        arr["open"][j], arr["close"][j] = prices[0], prices[3]
        arr["high"][j], arr["low"][j] = max(prices), min(prices)
        arr["volume"][j] = draw(st.sampled_from([0.0, 500.0, 3000.0, 1e6]))
        if draw(st.integers(0, 19)) == 0:
            split[j] = draw(st.sampled_from([2.0, 0.5, 3.0]))
    return CrossSection(time=T0 + timedelta(days=t), split=split, dividend=np.zeros(n), **arr)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.sampled_from(
        [
            SimulatedBrokerConfig(),
            SimulatedBrokerConfig(max_volume_participation=0.0, order_ttl_bars=0),
            SimulatedBrokerConfig(order_ttl_bars=1, half_spread_bps=5.0, min_commission=1.0),
            SimulatedBrokerConfig(allow_short=True, max_volume_participation=0.5),
        ]
    ),
    st.sampled_from([2_000.0, 50_000.0, 1e7]),
)
def test_fast_paths_give_what_the_general_path_gives(
    data: st.DataObject, cfg: SimulatedBrokerConfig, cash: float
) -> None:
    positions = {"AAA": 300.0, "BBB": 0.0, "CCC": 50.0}
    fast_acct, slow_acct = _Account(cash, positions), _Account(cash, positions)
    fast = SimulatedBroker(cfg, SYMS, fast_acct, closed_history=7)
    slow = GeneralPathBroker(cfg, SYMS, slow_acct, closed_history=7)

    # Every order the fast broker hands out, as it was then: a closed order is reported as
    # the broker's own object (closed orders never change), an open one as a copy; neither
    # may change afterwards, whatever later bars, fills, splits and cancels do.
    reported: list[tuple[Order, str]] = []

    async def run() -> None:
        for t in range(data.draw(st.integers(1, 12))):
            bar = data.draw(_bar(t))
            u_fast, u_slow = await fast.on_bar(bar), await slow.on_bar(bar)
            reported.extend((o, _dump(o)) for o in u_fast.orders)
            assert u_fast.fills == u_slow.fills
            assert [_dump(o) for o in u_fast.orders] == [_dump(o) for o in u_slow.orders]
            fast_acct.apply(u_fast)
            slow_acct.apply(u_slow)
            assert [_dump(o) for o in fast.open_orders()] == [_dump(o) for o in slow.open_orders()]
            if fast.open_orders() and data.draw(st.integers(0, 4)) == 0:
                cid = data.draw(st.sampled_from([o.client_order_id for o in fast.open_orders()]))
                a, b = await fast.cancel(cid, "by hand"), await slow.cancel(cid, "by hand")
                assert a is not None and b is not None and _dump(a) == _dump(b)
            placed = data.draw(_decisions(t))
            # Each broker gets its own copies: neither may see what the other did to them.
            acked_fast = await fast.submit([o.snapshot() for o in placed])
            acked_slow = await slow.submit([o.snapshot() for o in placed])
            assert [_dump(o) for o in acked_fast] == [_dump(o) for o in acked_slow]
            reported.extend((o, _dump(o)) for o in acked_fast)
        assert fast.state() == slow.state()
        assert fast_acct.cash == slow_acct.cash and fast_acct.positions == slow_acct.positions

    asyncio.run(run())
    assert [_dump(o) for o, _ in reported] == [then for _, then in reported]


def test_accept_copies_the_order_and_resets_only_its_lifecycle() -> None:
    broker = SimulatedBroker(
        SimulatedBrokerConfig(), SYMS, _Account(1e6, {"AAA": 10.0}), closed_history=5
    )
    incoming = Order(
        client_order_id="run|x|AAA|sl.p|1",
        symbol="AAA",
        side=Side.SELL,
        quantity=10.0,
        created_at=T0,
        type=OrderType.TRAILING_STOP,
        trail_pct=0.05,
        leg=Leg.STOP_LOSS,
        oco_group="g",
        status=OrderStatus.FILLED,
        filled_quantity=3.0,
        avg_fill_price=12.5,
        reason="stale",
        updated_at=T0 + timedelta(days=3),
        bars_open=4,
        trail_anchor=101.0,
    )
    before = _dump(incoming)
    (acked,) = asyncio.run(broker.submit([incoming]))
    expected = dataclasses.replace(
        incoming,
        status=OrderStatus.NEW,
        filled_quantity=0.0,
        avg_fill_price=math.nan,
        reason="",
        updated_at=T0,
        bars_open=0,
    )
    assert _dump(acked) == _dump(expected)
    assert math.isnan(acked.avg_fill_price)
    assert _dump(incoming) == before  # the caller's object is untouched
    (kept,) = broker.open_orders()
    assert kept is not incoming and _dump(kept) == _dump(expected)


def test_open_orders_of_an_empty_book_is_a_fresh_list() -> None:
    broker = SimulatedBroker(SimulatedBrokerConfig(), SYMS, _Account(1e6, {}))
    first = broker.open_orders()
    first.append(market_order("run", T0, "AAA", 1.0))
    assert broker.open_orders() == []
