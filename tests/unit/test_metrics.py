"""Backtest summary metrics against hand-computed values on tiny curves."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tradingd.analysis.metrics import (
    closed_trades,
    drawdown_series,
    format_summary,
    summarize,
)
from tradingd.core.types import Fill, Side

T0 = datetime(2020, 1, 2, 21, 0, tzinfo=UTC)

EXPECTED_KEYS = [
    "start",
    "end",
    "bars",
    "initial_capital",
    "final_equity",
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_duration_bars",
    "calmar",
    "fills",
    "closing_fills",
    "round_trips",
    "win_rate",
    "avg_win",
    "avg_loss",
    "profit_factor",
    "exposure",
    "time_in_market",
    "commission_paid",
    "slippage_paid",
    "turnover",
]


def _times(n: int) -> list[datetime]:
    return [T0 + timedelta(days=i) for i in range(n)]


def _run(equity, *, initial=100.0, fills=(), exposure=None, **kw):
    e = np.asarray(equity, dtype=float)
    gx = np.zeros(e.size) if exposure is None else np.asarray(exposure, dtype=float)
    return summarize(
        e, _times(e.size), list(fills), initial_capital=initial, gross_exposure=gx, **kw
    )


def _fill(n: int, symbol: str, side: Side, qty: float, price: float, comm: float = 0.0) -> Fill:
    return Fill(
        fill_id=f"f{n}",
        client_order_id=f"o{n}",
        symbol=symbol,
        side=side,
        quantity=qty,
        price=price,
        commission=comm,
        slippage=0.01 * qty,
        time=T0 + timedelta(days=n),
    )


def _assert_no_inf(summary: dict) -> None:
    for key, value in summary.items():
        if isinstance(value, float):
            assert not math.isinf(value), key


# --- equity-curve metrics ----------------------------------------------------------------


def test_keys_exact_and_types():
    s = _run([100, 110, 99, 121])
    assert list(s) == EXPECTED_KEYS
    for key in ("bars", "fills", "closing_fills", "round_trips", "max_drawdown_duration_bars"):
        assert type(s[key]) is int
    assert s["start"] == "2020-01-02"
    assert s["end"] == "2020-01-05"


def test_tiny_curve_by_hand():
    equity = np.array([100.0, 110.0, 99.0, 121.0])
    s = _run(equity, exposure=[0.0, 0.5, 1.0, 0.5])

    assert s["bars"] == 4
    assert s["final_equity"] == 121.0
    assert s["total_return"] == pytest.approx(0.21)
    assert s["annual_return"] == pytest.approx(1.21 ** (252 / 4) - 1)
    assert s["max_drawdown"] == pytest.approx(0.1)  # 110 -> 99
    assert s["max_drawdown_duration_bars"] == 1
    assert s["calmar"] == pytest.approx(s["annual_return"] / 0.1)

    # Returns are per bar, the first one against the initial capital (100 -> 100).
    rets = np.array([0.0, 0.1, -0.1, 121 / 99 - 1])
    sharpe = rets.mean() / np.std(rets, ddof=1) * math.sqrt(252)
    downside = math.sqrt(np.mean(np.minimum(rets, 0.0) ** 2))  # sqrt(0.01 / 4) = 0.05
    assert downside == pytest.approx(0.05)
    assert s["sharpe"] == pytest.approx(sharpe, rel=1e-12)
    assert s["sortino"] == pytest.approx(rets.mean() / downside * math.sqrt(252), rel=1e-12)
    assert s["annual_volatility"] == pytest.approx(np.std(rets, ddof=1) * math.sqrt(252))

    assert s["exposure"] == pytest.approx(0.5)
    assert s["time_in_market"] == pytest.approx(0.75)


def test_first_return_is_against_initial_capital():
    # Costs paid on the first bar show up as a first-bar loss and a drawdown.
    s = _run([99.0, 104.0], initial=100.0)
    assert s["total_return"] == pytest.approx(0.04)
    assert s["max_drawdown"] == pytest.approx(0.01)
    rets = np.array([-0.01, 104 / 99 - 1])
    assert s["sharpe"] == pytest.approx(rets.mean() / np.std(rets, ddof=1) * math.sqrt(252))


def test_risk_free_rate_and_periods_per_year():
    equity = np.array([100.0, 102.0, 101.0, 105.0, 104.0])
    s = _run(equity, periods_per_year=12, risk_free_rate=0.03)
    rets = equity / np.concatenate(([100.0], equity[:-1])) - 1
    excess = rets - (1.03 ** (1 / 12) - 1)
    assert s["sharpe"] == pytest.approx(excess.mean() / np.std(excess, ddof=1) * math.sqrt(12))
    downside = math.sqrt(np.mean(np.minimum(excess, 0) ** 2))
    assert s["sortino"] == pytest.approx(excess.mean() / downside * math.sqrt(12))
    assert s["annual_return"] == pytest.approx(1.04 ** (12 / 5) - 1)


def test_drawdown_duration_is_longest_underwater_stretch():
    s = _run([100, 90, 95, 99, 101, 100, 102])
    assert s["max_drawdown_duration_bars"] == 3
    assert s["max_drawdown"] == pytest.approx(0.1)


def test_drawdown_series():
    dd = drawdown_series(np.array([100.0, 120.0, 90.0, 130.0, 65.0]))
    np.testing.assert_allclose(dd, [0.0, 0.0, 0.25, 0.0, 0.5])
    assert drawdown_series(np.array([])).size == 0
    assert np.all(drawdown_series([5.0, 5.0, 5.0]) == 0.0)


# --- undefined values --------------------------------------------------------------------


def test_single_bar_is_nan_not_error():
    s = _run([105.0])
    assert s["bars"] == 1
    assert s["total_return"] == pytest.approx(0.05)
    for key in ("sharpe", "sortino", "annual_volatility"):
        assert math.isnan(s[key]), key
    assert s["max_drawdown"] == 0.0
    assert math.isnan(s["calmar"])
    _assert_no_inf(s)


def test_flat_equity_has_nan_ratios():
    s = _run([100.0] * 10)
    assert math.isnan(s["sharpe"])
    assert math.isnan(s["sortino"])
    assert math.isnan(s["calmar"])
    assert s["annual_volatility"] == 0.0
    assert s["max_drawdown"] == 0.0
    assert s["total_return"] == 0.0
    assert s["annual_return"] == 0.0
    _assert_no_inf(s)


def test_flat_equity_with_risk_free_rate_is_still_nan():
    s = _run([100.0] * 10, risk_free_rate=0.05)
    assert math.isnan(s["sharpe"])
    assert s["sortino"] < 0  # below the risk-free rate on every bar is a real downside
    _assert_no_inf(s)


def test_steady_compounding_is_not_an_astronomical_sharpe():
    # Returns identical up to rounding: the std is noise, not risk.
    s = _run(100.0 * 1.001 ** np.arange(1, 50))
    assert math.isnan(s["sharpe"])
    assert math.isnan(s["sortino"])  # no downside at all
    _assert_no_inf(s)


def test_huge_gain_over_few_bars_is_nan_not_inf():
    s = _run([1e6], initial=1.0)
    assert math.isnan(s["annual_return"])
    _assert_no_inf(s)


def test_ruin():
    s = _run([50.0, -10.0])
    assert s["total_return"] == pytest.approx(-1.1)
    assert s["annual_return"] == -1.0
    assert s["max_drawdown"] == pytest.approx(1.1)
    _assert_no_inf(s)


def test_empty_run():
    s = summarize(np.array([]), [], [], initial_capital=1000.0, gross_exposure=np.array([]))
    assert list(s) == EXPECTED_KEYS
    assert s["start"] == s["end"] == ""
    assert s["bars"] == 0
    assert s["final_equity"] == 1000.0
    assert s["total_return"] == 0.0
    assert s["max_drawdown"] == 0.0
    assert s["max_drawdown_duration_bars"] == 0
    assert s["fills"] == s["closing_fills"] == s["round_trips"] == 0
    assert s["commission_paid"] == s["turnover"] == 0.0
    for key in ("annual_return", "sharpe", "sortino", "calmar", "win_rate", "profit_factor"):
        assert math.isnan(s[key]), key
    assert math.isnan(s["exposure"])
    format_summary(s)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length"):
        summarize(
            np.array([1.0, 2.0]), _times(3), [], initial_capital=1.0, gross_exposure=np.zeros(2)
        )


def test_datetime64_times():
    times = np.array(["2021-03-01", "2021-03-02"], dtype="datetime64[ns]")
    s = summarize(np.array([1.0, 2.0]), times, [], initial_capital=1.0, gross_exposure=np.zeros(2))
    assert (s["start"], s["end"]) == ("2021-03-01", "2021-03-02")


# --- trade statistics --------------------------------------------------------------------


def _round_trip_fills() -> list[Fill]:
    b, s = Side.BUY, Side.SELL
    return [
        _fill(0, "AAA", b, 10, 100.0, 1.0),  # long 10 @ 100
        _fill(1, "BBB", s, 10, 50.0, 0.5),  # short 10 @ 50
        _fill(2, "AAA", b, 10, 110.0, 1.0),  # long 20 @ avg 105
        _fill(3, "AAA", s, 5, 120.0, 1.0),  # close 5: (120-105)*5 - 1 = 74
        _fill(4, "BBB", b, 4, 40.0, 0.5),  # close 4 short: (40-50)*4*-1 - 0.5 = 39.5
        _fill(5, "AAA", s, 15, 100.0, 2.0),  # close 15: (100-105)*15 - 2 = -77
        _fill(6, "CCC", b, 10, 20.0, 0.0),  # long 10 @ 20
        _fill(7, "CCC", s, 15, 22.0, 3.0),  # close 10: 20 - 3*10/15 = 18; short 5 @ 22
        _fill(8, "CCC", b, 5, 25.0, 0.0),  # close 5 short: (25-22)*5*-1 = -15
    ]


def test_closed_trades_pnl():
    trades = closed_trades(_round_trip_fills())
    assert [t.symbol for t in trades] == ["AAA", "BBB", "AAA", "CCC", "CCC"]
    assert [t.pnl for t in trades] == pytest.approx([74.0, 39.5, -77.0, 18.0, -15.0])
    assert [t.quantity for t in trades] == [5, 4, 15, 10, 5]
    assert [t.direction for t in trades] == [1, -1, 1, 1, -1]
    assert trades[0].entry_price == pytest.approx(105.0)
    assert trades[4].entry_price == pytest.approx(22.0)


def test_trade_statistics_in_summary():
    fills = _round_trip_fills()
    s = _run([100.0, 101.0], initial=100.0, fills=fills)
    assert s["fills"] == 9
    assert s["closing_fills"] == 5
    # AAA: in and back to flat (the 5-share trim is no round trip); BBB: still short 6;
    # CCC: long then flipped short (one ends), then the short closed (another ends).
    assert s["round_trips"] == 3
    assert [t.ends_round_trip for t in closed_trades(fills)] == [False, False, True, True, True]
    assert s["win_rate"] == pytest.approx(3 / 5)
    assert s["avg_win"] == pytest.approx((74 + 39.5 + 18) / 3)
    assert s["avg_loss"] == pytest.approx((-77 - 15) / 2)
    assert s["profit_factor"] == pytest.approx(131.5 / 92)
    assert s["commission_paid"] == pytest.approx(9.0)
    assert s["slippage_paid"] == pytest.approx(0.01 * sum(f.quantity for f in fills))
    notional = 1000 + 500 + 1100 + 600 + 160 + 1500 + 200 + 330 + 125
    assert s["turnover"] == pytest.approx(notional / 100.0)


def test_no_losses_gives_nan_profit_factor():
    fills = [_fill(0, "A", Side.BUY, 1, 10.0), _fill(1, "A", Side.SELL, 1, 12.0)]
    s = _run([100.0, 102.0], fills=fills)
    assert s["round_trips"] == s["closing_fills"] == 1
    assert s["win_rate"] == 1.0
    assert math.isnan(s["profit_factor"])
    assert math.isnan(s["avg_loss"])
    assert s["avg_win"] == pytest.approx(2.0)


def test_fractional_close_leaves_no_phantom_position():
    fills = [
        _fill(0, "A", Side.BUY, 0.1, 10.0),
        _fill(1, "A", Side.BUY, 0.2, 10.0),
        _fill(2, "A", Side.SELL, 0.3, 11.0),  # 0.1 + 0.2 != 0.3 in floating point
        _fill(3, "A", Side.SELL, 1.0, 12.0),  # opens a short, closes nothing
    ]
    trades = closed_trades(fills)
    assert len(trades) == 1
    assert trades[0].pnl == pytest.approx(0.3)


# --- formatting --------------------------------------------------------------------------


def test_format_summary():
    s = _run([100, 110, 99, 121], fills=_round_trip_fills())
    text = format_summary(s)
    *lines, note = text.splitlines()  # 4 bars: the annual figures' note last
    assert note.startswith("* annualised from 4 bars")
    assert len(lines) == len(EXPECTED_KEYS)
    assert "21.00%" in text  # total return
    assert "10.00%" in text  # max drawdown
    assert any(line.startswith("Win rate") and line.endswith("60.00%") for line in lines)
    assert any(line.startswith("Start") and line.endswith("2020-01-02") for line in lines)
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert "n/a" in format_summary(_run([100.0]))


def _halt(start: str, end: str, bars: int) -> dict:
    return {"plugin": "drawdown_guard", "rule": "max_drawdown", "action": "halt",
            "from": start, "to": end, "bars": bars, "reason": "drawdown"}  # fmt: skip


def test_restriction_periods_of_intraday_bars_show_their_times():
    """Two halts of one day of 1-minute bars read "2018-03-14 .. 2018-03-14" alike."""
    halts = [
        _halt("2018-03-14T18:22:00+00:00", "2018-03-14T18:23:00+00:00", 2),
        _halt("2018-03-14T18:26:00+00:00", "2018-03-14T18:46:00+00:00", 21),
    ]
    text = format_summary({"bar": "1m", "trading_restricted": halts})
    rows = [r for r in text.splitlines() if " .. " in r]
    assert [r.split(" (")[0].strip() for r in rows] == [
        "2018-03-14 18:22+00:00 .. 2018-03-14 18:23+00:00",
        "2018-03-14 18:26+00:00 .. 2018-03-14 18:46+00:00",
    ]
    # Daily bars (no `bar` in the summary): their dates, as before.
    daily = [_halt("2018-03-14T00:00:00+00:00", "2018-03-20T00:00:00+00:00", 5)]
    (row,) = format_summary({"trading_restricted": daily}).splitlines()[1:]
    assert row.strip().startswith("2018-03-14 .. 2018-03-20 (5 bars) drawdown_guard/")
    # A time an edited summary holds that is none is shown as written, not a traceback.
    edited = [_halt("2018-03-14 after lunch", "2018-03-14T18:46:00+00:00", 21)]
    (row,) = format_summary({"bar": "5m", "trading_restricted": edited}).splitlines()[2:]
    assert row.strip().startswith("2018-03-14 after lunch .. 2018-03-14 18:46+00:00 (21 bars)")


def test_a_restriction_period_of_one_bar_is_one_bar_not_1_bars():
    one = [_halt("2018-03-14T00:00:00+00:00", "2018-03-14T00:00:00+00:00", 1)]
    (row,) = format_summary({"trading_restricted": one}).splitlines()[1:]
    assert row.strip().startswith("2018-03-14 .. 2018-03-14 (1 bar) drawdown_guard/max_drawdown")


# --- properties --------------------------------------------------------------------------

positive_curves = st.lists(
    st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=60,
)


@given(curve=positive_curves, initial=st.floats(min_value=1e-3, max_value=1e9))
@settings(max_examples=200, deadline=None)
def test_max_drawdown_in_unit_interval_for_positive_curves(curve, initial):
    s = _run(curve, initial=initial)
    assert 0.0 <= s["max_drawdown"] < 1.0
    dd = drawdown_series(np.asarray(curve))
    assert np.all((dd >= 0) & (dd < 1))
    _assert_no_inf(s)


@given(
    # Returns on a 0.1% grid keep the curve well conditioned: an exact invariance cannot
    # survive rounding when returns differ only in their last bits.
    steps=st.lists(st.integers(min_value=-500, max_value=500), min_size=2, max_size=60),
    initial=st.floats(min_value=1.0, max_value=1e7),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
@settings(max_examples=200, deadline=None)
def test_scaling_leaves_relative_metrics_unchanged(steps, initial, scale):
    rets = np.asarray(steps, dtype=float) / 1000.0
    assume(np.std(rets) > 1e-6)
    curve = initial * np.cumprod(1.0 + rets)
    a = _run(curve, initial=initial)
    b = _run(curve * scale, initial=initial * scale)
    for key in ("total_return", "sharpe", "max_drawdown"):
        assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-9), (key, a[key], b[key])


def _row(text: str, label: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(label)]
    return line[len(label) :].strip()


def test_a_run_under_a_quarter_of_a_year_has_its_annual_figures_marked():
    """1% over one bar printed as an annual return of 1,127.00%, unqualified."""
    one = _run([101.0])
    text = format_summary(one)
    assert _row(text, "Annual return") == "1,127.40% *"
    assert text.splitlines()[-1].startswith("* annualised from 1 bars (under a quarter")
    five = format_summary({**_run([100.1, 100.05, 100.2, 100.3, 100.25]), "bars": 5})
    assert _row(five, "Sharpe ratio (risk-free 0%)").endswith(" *")
    # 63 bars of 252 are a quarter: not marked; nor a run whose periods_per_year makes its
    # 62 bars a longer span.
    rng = np.random.default_rng(1)
    quarter = _run(100 * np.cumprod(1 + rng.normal(0.001, 0.01, 63)))
    assert "*" not in format_summary(quarter)
    weekly = format_summary({**_run(np.linspace(100, 110, 62)), "periods_per_year": 52.0})
    assert "*" not in weekly


@given(st.floats(-1e-7, 0.0))
def test_no_figure_prints_as_a_negative_zero(x):
    """A flat run's historical VaR was -0.0, and a loss rounding to nothing printed
    "-0.00%": read as a loss."""
    from tradingd.analysis.metrics import _fmt

    for kind in ("pct", "money", "ratio"):
        assert not _fmt(x, kind).startswith("-0")
        assert not _fmt(-0.0, kind).startswith("-")


def test_a_flat_run_s_value_at_risk_is_zero_not_negative_zero():
    from tradingd.analysis import return_metrics as rm

    flat = np.zeros(300)
    for f in (rm.var_historical, rm.cvar_historical, rm.var_parametric, rm.cvar_parametric):
        assert math.copysign(1.0, f(flat)) == 1.0, f.__name__
