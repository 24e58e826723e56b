from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tradingd.core.types import Fill, Side
from tradingd.engine.portfolio import Portfolio

T = datetime(2020, 1, 2, tzinfo=UTC)


_ids = itertools.count(1)


def fill(sym, side, qty, price, commission=0.0, slippage=0.0):
    n = next(_ids)
    return Fill(f"f{n}", f"o{n}", sym, side, qty, price, commission, slippage, T, price)


def test_buy_sell_realised_pnl_and_cash():
    pf = Portfolio(("A", "B"), 10_000.0)
    pf.apply_fill(fill("A", Side.BUY, 10, 100.0, commission=1.0))
    pf.apply_fill(fill("A", Side.BUY, 10, 110.0, commission=1.0))
    assert pf.avg_price[0] == 105.0
    pf.apply_fill(fill("A", Side.SELL, 5, 120.0, commission=0.5))
    assert pf.quantity[0] == 15
    assert pf.realized_pnl[0] == pytest.approx(5 * 15.0 - 2.5)  # net of all commissions
    assert pf.cash == pytest.approx(10_000 - 1000 - 1100 - 2 + 600 - 0.5)
    eq = pf.mark_to_market(np.array([130.0, np.nan]), np.array([True, False]))
    assert eq == pytest.approx(pf.cash + 15 * 130.0)
    assert pf.commission_paid == pytest.approx(2.5)


def test_flip_from_long_to_short():
    pf = Portfolio(("A",), 10_000.0)
    pf.apply_fill(fill("A", Side.BUY, 10, 100.0))
    pf.apply_fill(fill("A", Side.SELL, 15, 90.0))
    assert pf.quantity[0] == -5
    assert pf.avg_price[0] == 90.0
    assert pf.realized_pnl[0] == pytest.approx(-100.0)


def test_split_keeps_value_and_cost_basis():
    pf = Portfolio(("AAPL",), 100_000.0)
    pf.apply_fill(fill("AAPL", Side.BUY, 100, 645.57))
    before = pf.mark_to_market(np.array([645.57]), np.array([True]))
    pf.apply_splits(np.array([7.0]))
    assert pf.quantity[0] == 700
    assert pf.avg_price[0] == pytest.approx(645.57 / 7)
    # Before the new close arrives, the adjusted mark leaves equity unchanged.
    assert pf.mark_to_market(np.array([np.nan]), np.array([False])) == pytest.approx(before)


def test_dividend_paid_to_holders_and_by_shorts():
    pf = Portfolio(("A", "B"), 1_000.0)
    pf.apply_fill(fill("A", Side.BUY, 10, 10.0))
    pf.apply_fill(fill("B", Side.SELL, 4, 10.0))
    paid = pf.apply_dividends(np.array([0.5, 0.25]))
    assert paid == pytest.approx(10 * 0.5 - 4 * 0.25)
    assert pf.cash == pytest.approx(1_000 - 100 + 40 + 4.0)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B"]),
            st.booleans(),
            st.integers(1, 50),
            st.floats(1.0, 500.0),
            st.floats(0.0, 5.0),
        ),
        max_size=30,
    )
)
def test_ledger_invariants(trades):
    """Cash and positions follow from the fills alone, and the costs ledger equals the fills."""
    pf = Portfolio(("A", "B"), 1_000_000.0)
    fills = []
    for sym, buy, qty, price, comm in trades:
        f = fill(
            sym, Side.BUY if buy else Side.SELL, qty, price, commission=comm, slippage=comm / 2
        )
        fills.append(f)
        pf.apply_fill(f)
    for i, sym in enumerate(("A", "B")):
        assert pf.quantity[i] == pytest.approx(
            sum(f.signed_quantity for f in fills if f.symbol == sym)
        )
    cash = 1_000_000.0 - sum(f.signed_quantity * f.price + f.commission for f in fills)
    assert pf.cash == pytest.approx(cash)
    assert pf.commission_paid == pytest.approx(sum(f.commission for f in fills))
    assert pf.slippage_paid == pytest.approx(sum(f.slippage for f in fills))
    marks = np.array([100.0, 200.0])
    eq = pf.mark_to_market(marks, np.array([True, True]))
    assert eq == pytest.approx(pf.cash + float(pf.quantity @ marks))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.floats(0.01, 1e4)), min_size=3, max_size=3),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 12),
)
def test_mark_is_the_last_close_and_nan_before_the_first(bars, restore_at):
    """`mark` against the last close seen per symbol, kept here in plain Python, before and
    after every symbol has had a bar (where it becomes a copy, not a where()), and after a
    restore to an earlier book, where symbols can be without a mark again."""
    pf = Portfolio(("A", "B", "C"), 1_000.0)
    last = [None, None, None]
    saved = None
    for k, row in enumerate(bars):
        close = np.array([np.nan if c is None else c for c in row])
        pf.mark_to_market(close, close == close)
        last = [c if c is not None else prev for c, prev in zip(row, last, strict=True)]
        if k == restore_at // 2:
            saved = (pf.state(), list(last))
        got = pf.mark
        want = [np.nan if c is None else c for c in last]
        np.testing.assert_array_equal(got, want)
        # A copy (not the book's marks), which nothing can make writeable: it is ctx.mark,
        # read by every plugin of the bar and the planner after the one that might write.
        assert not np.shares_memory(got, pf._mark)
        with pytest.raises(ValueError, match="WRITEABLE"):
            got.setflags(write=True)
        if k == restore_at and saved is not None:
            pf.restore(saved[0])
            last = saved[1]
            np.testing.assert_array_equal(pf.mark, [np.nan if c is None else c for c in last])


def _exposure_from_scratch(pf: Portfolio) -> tuple[float, float]:
    v = pf.quantity * np.where(pf.has_mark, pf.mark, 0.0)
    eq = pf.equity if pf.equity > 0 else float("nan")
    return float(np.abs(v).sum()) / eq, float(v.sum()) / eq


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["fill", "bar", "split", "view", "exposure", "save", "restore"]),
            st.integers(0, 2),
            st.floats(1.0, 500.0),
        ),
        max_size=30,
    )
)
@example(  # a 3-for-1 split that moves the last bit of quantity x mark (found by search)
    [("fill", 0, 300.0), ("bar", 0, 2.5077188594297146), ("view", 0, 1.0), ("split", 0, 300.0)]
)
def test_exposure_after_a_view_follows_every_change_of_the_book(events):
    """`view` keeps quantity x mark for the bar's `exposure`: a fill, a split or a new mark
    between the two must not leave a stale sum (the same bits as computed from scratch)."""
    syms = ("A", "B", "C")
    pf = Portfolio(syms, 1e6)
    pf.mark_to_market(np.full(3, 100.0), np.ones(3, dtype=bool))
    saved = pf.state()
    for kind, i, x in events:
        if kind == "fill":
            pf.apply_fill(fill(syms[i], Side.BUY if x > 250 else Side.SELL, 10.0, x))
        elif kind == "bar":
            close = np.full(3, np.nan)
            close[i] = x
            pf.mark_to_market(close, ~np.isnan(close))
        elif kind == "split":
            # 3-for-1 and 1-for-3 too: they change the last bits of quantity x mark (2 and
            # 0.5 scale exactly, so a stale sum after them could go unnoticed).
            split = np.ones(3)
            split[i] = 2.0 if x > 375 else 3.0 if x > 250 else 0.5 if x > 125 else 1 / 3
            pf.apply_splits(split)
        elif kind == "view":
            pf.view()
        elif kind == "save":
            saved = pf.state()
        elif kind == "restore":
            pf.restore(saved)
        assert pf.exposure() == _exposure_from_scratch(pf)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 1200), st.integers(0, 2**32 - 1), st.booleans())
def test_exposure_of_a_wide_book_is_numpys_two_sums(n, seed, shorts):
    """Both sums come from one reduction over two rows: the same pairwise sum per row as
    numpy's own, bit for bit, at every width (pairwise summation starts at 8 values)."""
    rng = np.random.default_rng(seed)
    syms = tuple(f"S{i}" for i in range(n))
    pf = Portfolio(syms, 1e12)  # equity stays positive with shorts
    q = np.trunc(rng.uniform(-1000 if shorts else 0, 1000, n)) * (rng.random(n) < 0.3)
    pf.quantity[:] = q
    close = rng.uniform(0.2, 3000.0, n)
    pf.mark_to_market(close, rng.random(n) < 0.9)
    expected = _exposure_from_scratch(pf)
    assert pf.exposure() == expected  # without a view: multiplied here
    pf.view()
    assert pf.exposure() == expected  # the view's values


def test_a_bar_without_dividends_leaves_cash_alone_even_in_a_nan_book():
    """The dividend product runs on every bar: with no dividend anywhere it pays nothing,
    also when a broken book (NaN shares) makes the product NaN; a NaN dividend still
    counts as one, as it did when the engine checked for dividends first."""
    pf = Portfolio(("A", "B"), 1_000.0)
    pf.apply_fill(fill("A", Side.BUY, 10, 10.0))
    assert pf.apply_dividends(np.zeros(2)) == 0.0
    pf.quantity[1] = np.nan
    assert pf.apply_dividends(np.zeros(2)) == 0.0
    assert pf.cash == 900.0 and pf.dividends_received == 0.0
    assert np.isnan(pf.apply_dividends(np.array([0.5, 0.0])))
    assert np.isnan(pf.cash)


def test_a_bar_without_splits_changes_nothing():
    pf = Portfolio(("A", "B"), 1_000.0)
    pf.apply_fill(fill("A", Side.BUY, 10, 10.0))
    pf.mark_to_market(np.array([11.0, 12.0]), np.ones(2, dtype=bool))
    before = pf.state()
    assert pf.apply_splits(np.ones(2)) == []
    assert pf.state() == before
    assert pf.apply_splits(np.array([1.0, np.nan])) == [1]  # NaN is not 1: as before


def _apply_fill_numpy(pf: Portfolio, f: Fill) -> None:
    """`apply_fill` as it was written in numpy scalars: the reference for the float form."""
    i = pf.symbols.index(f.symbol)
    q = f.signed_quantity
    old = float(pf.quantity[i])
    new = old + q
    pf._cash -= q * f.price + f.commission
    if old == 0.0 or np.copysign(1.0, old) == np.copysign(1.0, q):
        pf.avg_price[i] = (pf.avg_price[i] * abs(old) + f.price * abs(q)) / abs(new)
    else:
        closed = min(abs(q), abs(old))
        pf.realized_pnl[i] += closed * (f.price - pf.avg_price[i]) * np.copysign(1.0, old)
        if abs(q) > abs(old):
            pf.avg_price[i] = f.price
        elif abs(new) < 1e-12:
            pf.avg_price[i] = 0.0
            new = 0.0
    pf.realized_pnl[i] -= f.commission
    pf.quantity[i] = new
    pf.commission_paid += f.commission
    pf.slippage_paid += f.slippage
    pf.fill_count += 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B"]),
            st.sampled_from([Side.BUY, Side.SELL]),
            st.one_of(st.floats(0.0, 1e4), st.sampled_from([0.0, 1.0, 3.0, 1e-13, 10.0])),
            st.floats(0.01, 1e4),
            st.floats(0.0, 50.0),
        ),
        max_size=25,
    )
)
def test_apply_fill_gives_the_bits_of_its_numpy_form(fills):
    """The book after each fill, bit for bit against the numpy-scalar form: buys, sells,
    flips, closes to (almost) nothing, fills of no shares into no position (numpy's 0/0)."""
    a, b = Portfolio(("A", "B"), 1e6), Portfolio(("A", "B"), 1e6)
    with np.errstate(invalid="ignore", divide="ignore"):
        for sym, side, qty, price, commission in fills:
            f = fill(sym, side, qty, price, commission=commission, slippage=commission / 3)
            a.apply_fill(f)
            _apply_fill_numpy(b, f)
            for name in ("quantity", "avg_price", "realized_pnl"):
                assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
            assert (a.cash, a.commission_paid, a.slippage_paid, a.fill_count) == (
                b.cash,
                b.commission_paid,
                b.slippage_paid,
                b.fill_count,
            )


def test_mark_after_a_restore_to_other_symbols_with_as_many_marks():
    """`mark`'s factor is cached by the count of marked symbols; a restore can bring as
    many marks on other symbols, and must not be shown through the old factor."""
    pf = Portfolio(("A", "B", "C"), 1_000.0)
    pf.mark_to_market(np.array([10.0, np.nan, np.nan]), np.array([True, False, False]))
    np.testing.assert_array_equal(pf.mark, [10.0, np.nan, np.nan])  # the factor for {A}
    state = pf.state()
    state["mark"], state["has_mark"] = [0.0, 5.0, 0.0], [False, True, False]
    pf.restore(state)
    np.testing.assert_array_equal(pf.mark, [np.nan, 5.0, np.nan])


def test_a_revaluation_between_bars_leaves_the_next_bars_daily_loss_whole():
    """A stop filled between bars at 90 on a mark of 100 (a live broker): revalued for
    /status, the equity was then taken as the next bar's previous close, and the loss left
    out of the drawdown guard's daily loss limit (a backtest counts it)."""
    t = datetime(2024, 1, 2, tzinfo=UTC)
    pf = Portfolio(("A",), 10_000.0)
    pf.apply_fill(Fill("f1", "o1", "A", Side.BUY, 50.0, 100.0, 0.0, 0.0, t))
    close = pf.mark_to_market(np.array([100.0]), np.array([True]))
    assert close == 10_000.0
    pf.apply_fill(Fill("f2", "o2", "A", Side.SELL, 50.0, 90.0, 0.0, 0.0, t))
    assert pf.revalue() == 9_500.0 and pf.peak_equity == 10_000.0
    pf.mark_to_market(np.array([91.0]), np.array([True]))
    assert pf.prev_equity == 10_000.0  # the last close, before the fill
    assert pf.equity == 9_500.0 and (pf.prev_equity - pf.equity) / pf.prev_equity == 0.05


def test_intraday_bars_measure_the_days_loss_from_the_previous_sessions_close():
    """With live.bar = "5m" the day's start was the previous *bar's* close: a session that
    fell 0.5% a bar for 13 bars (6%) never passed drawdown_guard's 5% daily loss limit."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from tradingd.core.ports import BarContext
    from tradingd.core.types import Fill, Side
    from tradingd_plugins.risk.drawdown import DrawdownGuard, DrawdownGuardConfig

    syms = ("SPY",)
    ny = ZoneInfo("America/New_York")
    pf = Portfolio(syms, 100_000.0, session_tz=ny)
    guard = DrawdownGuard(
        DrawdownGuardConfig(max_drawdown_pct=0.5, daily_loss_limit_pct=0.05), syms
    )
    day1 = datetime(2015, 1, 2, 15, 55, tzinfo=ny).astimezone(UTC)  # the last bar of a session
    pf.apply_fill(Fill("f1", "o1", "SPY", Side.BUY, 1000.0, 100.0, 0.0, 0.0, day1, 100.0))
    pf.mark_to_market(np.array([100.0]), np.array([True]), day1)
    open2 = datetime(2015, 1, 5, 9, 35, tzinfo=ny).astimezone(UTC)
    price, fired, starts = 100.0, [], set()
    for k in range(13):
        price *= 0.995
        t = open2 + timedelta(minutes=5 * k)
        pf.mark_to_market(np.array([price]), np.array([True]), t)
        view = pf.view()
        starts.add(view.day_start_equity)
        ctx = BarContext(
            time=t, index=k, symbols=syms, bar=None, mark=np.array([price]),
            tradable=np.array([True]), history=None, features={}, portfolio=view,
            ready=np.array([True]),
        )  # fmt: skip
        fired.append(
            any(v.rule == "daily_loss_limit" for v in guard.check(np.ones(1), ctx).verdicts)
        )
    assert starts == {100_000.0}  # the previous session's last close, all session long
    loss = [1 - 100.0 * 0.995 ** (k + 1) / 100.0 for k in range(13)]  # the session's loss so far
    assert fired == [x > 0.05 for x in loss] and fired[-1]

    # A checkpoint keeps the session: a restart mid-session does not reset the day's start.
    again = Portfolio(syms, 100_000.0, session_tz=ny)
    again.restore(pf.state())
    t = open2 + timedelta(minutes=5 * 13)
    again.mark_to_market(np.array([price]), np.array([True]), t)
    assert again.view().day_start_equity == 100_000.0
    # The next session starts from this one's last close.
    again.mark_to_market(np.array([price]), np.array([True]), t + timedelta(days=1))
    assert again.view().day_start_equity == pytest.approx(1000.0 * price)
    # Daily bars (no session zone): each bar's start is the previous bar's close, as before.
    daily = Portfolio(syms, 100_000.0)
    daily.apply_fill(Fill("f1", "o1", "SPY", Side.BUY, 1000.0, 100.0, 0.0, 0.0, day1, 100.0))
    daily.mark_to_market(np.array([100.0]), np.array([True]), day1)
    daily.mark_to_market(np.array([99.0]), np.array([True]), open2)
    daily.mark_to_market(np.array([98.0]), np.array([True]), open2 + timedelta(minutes=5))
    assert daily.view().day_start_equity == pytest.approx(99_000.0)


def test_only_intraday_live_runs_count_the_day_from_the_previous_session():
    from zoneinfo import ZoneInfo

    from tradingd.app import session_zone
    from tradingd.config import load_config

    def bar(value: str):
        return load_config([{"live": {"bar": value}}], env={})

    assert session_zone(bar("5m"), "5m") == ZoneInfo("America/New_York")
    assert session_zone(bar("1d"), "1d") is None
    assert session_zone(bar("5m"), "1d") is None  # a backtest of daily data


def test_opened_cost_counts_what_opened_or_added_to_a_position():
    """The cost of the shares bought or sold short to open or add to a position, summed by
    hand: reductions and covers add nothing, a flip adds its new side only. It stays when
    the position is gone (a position opened and closed between two bars keeps its cost),
    in the view and across a checkpoint."""
    pf = Portfolio(("A", "B"), 10_000.0)
    steps = [
        (Side.BUY, 10, 100.0, 1_000.0),  # opens 10 long
        (Side.BUY, 5, 110.0, 1_550.0),  # adds 5: + 550
        (Side.SELL, 8, 120.0, 1_550.0),  # reduces: nothing bought
        (Side.SELL, 12, 90.0, 2_000.0),  # closes 7, opens 5 short at 90: + 450
        (Side.BUY, 5, 80.0, 2_000.0),  # covers: flat, the cost stays
    ]
    for side, qty, price, expected in steps:
        pf.apply_fill(fill("A", side, qty, price, commission=1.0))
        assert pf.opened_cost[0] == pytest.approx(expected)
    assert pf.quantity[0] == 0 and pf.opened_cost[1] == 0.0
    view = pf.view()
    np.testing.assert_array_equal(view.opened_cost, [2_000.0, 0.0])
    assert not view.opened_cost.flags.writeable
    again = Portfolio(("A", "B"), 10_000.0)
    again.restore(pf.state())
    np.testing.assert_array_equal(again.opened_cost, [2_000.0, 0.0])
    older = {k: v for k, v in pf.state().items() if k != "opened_cost"}
    again.restore(older)  # a checkpoint from before it was kept: counted from here
    np.testing.assert_array_equal(again.opened_cost, [0.0, 0.0])


def _saved_book() -> tuple[Portfolio, dict]:
    pf = Portfolio(("A", "B"), 1000.0, allow_short=False, run_id="live-ck")
    pf.mark_to_market(np.array([10.0, 20.0]), np.array([True, True]))
    pf.apply_fill(fill("A", Side.BUY, 5, 10.0, commission=1.0))
    pf.mark_to_market(np.array([11.0, 20.0]), np.array([True, True]))
    return pf, pf.state()


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("cash", "NaN", "portfolio.cash = 'NaN'"),  # a hand edit: float("NaN") resumed
        ("cash", None, "portfolio.cash = None"),  # float(None): a TypeError traceback
        ("equity", 1e400, "portfolio.equity = inf"),
        ("quantity", [-50.0, 0.0], "portfolio.quantity of A = -50.0"),  # long only
        ("quantity", [5.0], "portfolio.quantity = [5.0]"),
        ("mark", [11.0, None], "portfolio.mark of B = None"),
        ("fill_count", -1, "portfolio.fill_count = -1"),
    ],
)
def test_a_checkpoint_value_tradingd_never_writes_refuses_the_restore(field, value, named):
    from tradingd.core.errors import CheckpointUnusable, ConfigError

    _, state = _saved_book()
    again = Portfolio(("A", "B"), 1000.0, allow_short=False, run_id="live-ck")
    before = again.state()
    with pytest.raises(CheckpointUnusable) as e:
        again.restore({**state, field: value}, datetime(2024, 3, 1, 21, tzinfo=UTC))
    msg = str(e.value)
    assert named in msg and "run 'live-ck' at 2024-03-01 21:00:00+00:00" in msg
    assert "start a new run" in msg
    assert isinstance(e.value, ConfigError)  # EX_CONFIG: systemd does not restart into it
    assert again.state() == before  # nothing of the bad book was taken


def test_a_short_in_a_checkpoint_is_restored_where_shorts_are_allowed():
    _, state = _saved_book()
    pf = Portfolio(("A", "B"), 1000.0, allow_short=True)
    pf.restore({**state, "quantity": [-5.0, 0.0]})
    assert pf.quantity.tolist() == [-5.0, 0.0]
    # A flat symbol's NaN average (stored as null) is restored as before.
    pf.restore({**state, "quantity": [5.0, 0.0], "avg_price": [10.2, None]})
    assert math.isnan(pf.avg_price[1]) and pf.state()["cash"] == state["cash"]


def test_an_intraday_day_is_the_calendars_session_not_data_timezones_day():
    """With live.calendar = "XTKS" and data.timezone left at New York, the day's loss restarted
    at New York midnight (13:00 in Tokyo, in the afternoon session), so a loss over the whole
    session was counted from 13:00 and daily_loss_limit never tripped. The session's day is
    the calendar's (Asia/Tokyo), as the live clock's `session_day`."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from tradingd.app import session_zone
    from tradingd.config import load_config

    config = load_config([{"live": {"calendar": "XTKS", "bar": "5m"}}], env={})
    assert config.data.timezone == "America/New_York"
    zone = session_zone(config, "5m")
    assert zone == ZoneInfo("Asia/Tokyo")
    assert session_zone(config, "1d") is None

    pf = Portfolio(("AAA",), 100_000.0, session_tz=zone)
    last_close = datetime(2024, 6, 19, 5, 55, tzinfo=UTC)  # 14:55 JST, 2024-06-19
    pf.apply_fill(Fill("f1", "o1", "AAA", Side.BUY, 1000.0, 100.0, 0.0, 0.0, last_close, 100.0))
    pf.mark_to_market(np.array([100.0]), np.array([True]), last_close)
    day_start = pf.view().day_start_equity
    opening = datetime(2024, 6, 20, 0, 0, tzinfo=UTC)  # 09:00 JST 06-20 (20:00 New York 06-19)
    price = 100.0
    for k in range(0, 6 * 60, 5):  # through 15:00 JST, 00:00 in New York among them
        price -= 0.5
        pf.mark_to_market(np.array([price]), np.array([True]), opening + timedelta(minutes=k))
        assert pf.view().day_start_equity == day_start, opening + timedelta(minutes=k)


def test_a_session_opening_the_evening_before_keeps_one_day_start_across_midnight():
    """CMES sessions open at 17:00 Chicago the evening before their date: the day was the
    bar's local date, so the day's loss base reset at Chicago midnight, mid-session (the
    README: the day's loss counts from the previous session's last close)."""
    from datetime import timedelta

    from tradingd.app import session_evening_start, session_zone
    from tradingd.clock.calendar import ExchangeCalendar
    from tradingd.config import load_config

    config = load_config([{"live": {"calendar": "CMES", "bar": "60m"}}], env={})
    zone, evening = session_zone(config, "60m"), session_evening_start(config, "60m")
    assert evening is not None and evening.hour == 17
    assert session_evening_start(config, "1d") is None
    cal = ExchangeCalendar("CMES", "60m", start="2026-11-02", end="2026-12-04")
    monday = cal.bars_between(  # the 2026-11-30 session's last bar, then 2026-12-01's
        datetime(2026, 11, 30, 21, tzinfo=UTC), datetime(2026, 12, 1, 22, tzinfo=UTC)
    )
    last_close, session = monday[0], monday[1:]
    assert session[0] == datetime(2026, 11, 30, 23, tzinfo=UTC) and len(session) > 12
    pf = Portfolio(("AAA",), 100_000.0, session_tz=zone, evening_start=evening)
    pf.apply_fill(Fill("f1", "o1", "AAA", Side.BUY, 1000.0, 100.0, 0.0, 0.0, last_close, 100.0))
    pf.mark_to_market(np.array([100.0]), np.array([True]), last_close)
    price = 100.0
    pf.mark_to_market(np.array([price]), np.array([True]), session[0])
    day_start = pf.view().day_start_equity
    for t in session[1:]:  # through 00:00 Chicago (06:00 UTC)
        price -= 0.5
        pf.mark_to_market(np.array([price]), np.array([True]), t)
        assert pf.view().day_start_equity == day_start, t
    # The next session (its first bar at 17:00 Chicago on the 1st) starts a new day.
    pf.mark_to_market(np.array([price]), np.array([True]), session[-1] + timedelta(hours=2))
    assert pf.view().day_start_equity == pf.equity != day_start
