"""Kelly x GARCH sizing: the Kelly fraction and its inputs from closed trades, the GARCH fit and
its recursion against `arch`'s own forecast, the fallback, the volatility scalar, monthly
rebalancing, restart safety and the sizing invariants."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from arch import arch_model
from arch.univariate import ConstantMean, ZeroMean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import tradingd_plugins.sizing.garch as garch_mod
from tradingd.core.ports import BarContext, PortfolioView, SizingPlugin
from tradingd.core.types import CrossSection
from tradingd.engine.history import HistoryBuffer
from tradingd_plugins.sizing.garch import (
    ewma_variance,
    garch_filter,
    garch_fit,
    garch_forecast,
    garch_volatility,
    log_returns,
    try_garch_fit,
)
from tradingd_plugins.sizing.kelly_garch import (
    KellyGarch,
    KellyGarchConfig,
    kelly_fraction,
    target_weights,
    trade_stats,
    vol_scalar,
)

# ----------------------------------------------------------------------------- helpers


def Cfg(**kw):
    """The config with fits applied on the bar they are asked for (lag 0, inline) and no
    cache between runs: what most tests here check. The lagged runner has its own tests."""
    return KellyGarchConfig(
        **{"fit_lag_bars": 0, "fit_executor": "inline", "fit_cache_dir": "", **kw}
    )


def garch_paths(n_bars, n_symbols, seed=0, omega=2e-6, alpha=0.08, beta=0.9, scale=None):
    """Simulated GARCH(1,1) log returns, (n_bars, n_symbols)."""
    rng = np.random.default_rng(seed)
    s2 = np.full(n_symbols, omega / (1 - alpha - beta))
    if scale is not None:
        s2 = s2 * np.asarray(scale) ** 2
    om = omega if scale is None else omega * np.asarray(scale) ** 2
    out = np.empty((n_bars, n_symbols))
    for t in range(n_bars):
        out[t] = np.sqrt(s2) * rng.standard_normal(n_symbols)
        s2 = om + alpha * out[t] ** 2 + beta * s2
    return out


class Market:
    """Bars pushed one at a time into a HistoryBuffer, and the BarContext of the newest."""

    def __init__(self, close, capacity=None, start="2021-01-04", symbols=None):
        self.close = np.asarray(close, dtype=float)
        n = self.close.shape[1]
        self.symbols = symbols or tuple(f"S{i}" for i in range(n))
        self.times = pd.bdate_range(start, periods=len(self.close), tz="UTC").to_pydatetime()
        self.history = HistoryBuffer(n, capacity or len(self.close))
        self.t = -1
        self.bar = None

    def push(self, k=1):
        for _ in range(k):
            self.t += 1
            c = self.close[self.t]
            n = len(c)
            self.bar = CrossSection(
                self.times[self.t], c, c, c, c, np.ones(n), np.ones(n), np.zeros(n)
            )
            self.history.push(self.bar)
        return self

    def ctx(self, quantity=None, avg_price=None, realized=None, weights=None, equity=1e5):
        n = len(self.symbols)
        z = np.zeros(n)
        return BarContext(
            time=self.bar.time,
            index=self.t,
            symbols=self.symbols,
            bar=self.bar,
            mark=self.bar.close,
            tradable=~np.isnan(self.bar.close),
            history=self.history,
            features={},
            portfolio=PortfolioView(
                cash=equity,
                equity=equity,
                quantity=z if quantity is None else np.asarray(quantity, float),
                weights=z if weights is None else np.asarray(weights, float),
                peak_equity=equity,
                day_start_equity=equity,
                avg_price=z if avg_price is None else np.asarray(avg_price, float),
                realized_pnl=z if realized is None else np.asarray(realized, float),
            ),
        )


def prices(returns, p0=100.0):
    r = np.asarray(returns, dtype=float)
    return p0 * np.exp(np.vstack([np.zeros((1, r.shape[1])), np.cumsum(r, axis=0)]))


def flat_ctx(symbols, time, quantity, avg_price, realized, equity=1e5):
    """A context for Kelly tests (no history needed with volatility = "none")."""
    n = len(symbols)
    c = np.full(n, 100.0)
    bar = CrossSection(time, c, c, c, c, np.ones(n), np.ones(n), np.zeros(n))
    return BarContext(
        time=time,
        index=0,
        symbols=symbols,
        bar=bar,
        mark=c,
        tradable=np.ones(n, bool),
        history=HistoryBuffer(n, 2),
        features={},
        portfolio=PortfolioView(
            cash=equity,
            equity=equity,
            quantity=np.asarray(quantity, float),
            weights=np.zeros(n),
            peak_equity=equity,
            day_start_equity=equity,
            avg_price=np.asarray(avg_price, float),
            realized_pnl=np.asarray(realized, float),
        ),
    )


T0 = pd.Timestamp("2021-03-01", tz="UTC").to_pydatetime()

# ----------------------------------------------------------------------------- Kelly


def test_kelly_fraction_matches_hand_computation():
    assert kelly_fraction(0.55, 1.5) == pytest.approx(0.55 - 0.45 / 1.5)  # the prior: 0.25
    assert kelly_fraction(0.55, 1.5) == pytest.approx(0.25)
    assert kelly_fraction(0.6, 2.0) == pytest.approx(0.4)
    assert kelly_fraction(0.5, 1.0) == pytest.approx(0.0)
    assert kelly_fraction(0.4, 1.0) == pytest.approx(-0.2)  # no edge: negative
    assert kelly_fraction(0.7, math.inf) == 0.7  # no losing trade
    assert kelly_fraction(1.0, 3.0) == 1.0
    assert kelly_fraction(0.3, 0.0) == -math.inf  # no winning trade
    for bad in ((1.2, 1.0), (-0.1, 1.0), (0.5, -1.0), (0.5, math.nan)):
        with pytest.raises(ValueError):
            kelly_fraction(*bad)


def test_trade_stats_by_hand():
    w, r = trade_stats([0.1, -0.05, 0.2, -0.1, 0.0])
    assert w == pytest.approx(2 / 5)  # the flat trade counts, but is no win
    assert r == pytest.approx(((0.1 + 0.2) / 2) / ((0.05 + 0.1) / 2))
    assert trade_stats([0.1, 0.2]) == (1.0, math.inf)
    assert trade_stats([-0.1, -0.2]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        trade_stats([])


def test_prior_before_min_trades_and_the_estimate_after():
    cfg = Cfg(volatility="none", min_trades=3, kelly_window=10, max_position=1.0)
    p = KellyGarch(cfg, ("A", "B"))
    score = np.array([0.8, np.nan])
    # (quantity, avg_price, realized P&L) of A per bar; B stays flat.
    path = [
        (0, 0, 0.0),  # first sight
        (10, 100, -1.0),  # open: 10 @ 100, commission 1 (base = 0 before the open)
        (0, 0, 98.0),  # close +100 gross, commission 1: trade P&L 98 on cost 1000
        (20, 50, 97.0),  # open 20 @ 50 (base 98)
        (0, 0, 46.0),  # close: P&L 46 - 98 = -52 on cost 1000
        (5, 200, 45.0),  # open 5 @ 200 (base 46)
        (10, 210, 44.0),  # add 5 @ 220: avg 210, cost now 2100 (the largest seen)
        (0, 0, 243.0),  # close 10 @ 230: P&L 243 - 46 = 197 on cost 2100
    ]
    prior_w = 0.25 * 0.5 * 0.8
    for k, (q, avg, rp) in enumerate(path):
        ctx = flat_ctx(("A", "B"), T0, [q, 0], [avg, 0], [rp, 0])
        w = p.size(score, ctx)
        if k < len(path) - 1:
            assert p.kelly_inputs == (0.55, 1.5, "prior"), k
            assert w[0] == pytest.approx(prior_w), k
        assert w[1] == 0.0
    np.testing.assert_allclose(p.trades, [0.098, -0.052, 197 / 2100])
    win, ratio, source = p.kelly_inputs
    assert source == "trades"
    assert win == pytest.approx(2 / 3)
    assert ratio == pytest.approx(((0.098 + 197 / 2100) / 2) / 0.052)
    f = win - (1 - win) / ratio
    assert 0 < f < cfg.max_kelly
    assert p.kelly == pytest.approx(f)
    assert w[0] == pytest.approx(f * 0.5 * 0.8)


def test_trades_are_a_rolling_window_and_the_estimate_is_clamped():
    cfg = Cfg(volatility="none", min_trades=2, kelly_window=3, max_position=1.0)
    p = KellyGarch(cfg, ("A",))
    rp = 0.0
    p.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [rp]))
    for pnl in (-50.0, -50.0, 10.0, 20.0, 30.0):  # two losers, then three winners
        p.size(np.array([0.5]), flat_ctx(("A",), T0, [10], [100], [rp]))
        rp += pnl
        w = p.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [rp]))
    np.testing.assert_allclose(p.trades, [0.01, 0.02, 0.03])  # the losers left the window
    assert p.kelly_inputs[:2] == (1.0, math.inf)
    assert p.kelly == cfg.max_kelly  # f = 1 clamped
    assert w[0] == pytest.approx(cfg.max_kelly * 0.5 * 0.5)
    # Losers only: no edge, no position.
    q = KellyGarch(cfg, ("A",))
    rp = 0.0
    q.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [rp]))
    for _ in range(2):
        q.size(np.array([0.5]), flat_ctx(("A",), T0, [10], [100], [rp]))
        rp -= 5.0
        w = q.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [rp]))
    assert q.kelly == 0.0 and w[0] == 0.0


def test_a_record_with_no_edge_expires_and_the_prior_comes_back():
    """Found by the research runs: with f = 0 no position opens, so no trade closes to change
    the estimate, and the strategy stayed off for the rest of the run. Trades older than
    kelly_max_age_bars leave the window; the prior then sizes again (and survives a restart)."""
    cfg = Cfg(
        volatility="none", min_trades=2, kelly_window=5, max_position=1.0, kelly_max_age_bars=10
    )
    p = KellyGarch(cfg, ("A",))
    rp = 0.0
    p.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [rp]))
    for _ in range(2):  # two losers: no edge
        p.size(np.array([0.5]), flat_ctx(("A",), T0, [10], [100], [rp]))
        rp -= 5.0
        w = p.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [rp]))
    assert p.kelly == 0.0 and w[0] == 0.0
    flat = flat_ctx(("A",), T0, [0], [0], [rp])
    for _ in range(7):  # the losers are 1 and 3 bars old here; 8 and 10 after the loop
        w = p.size(np.array([0.5]), flat)
    assert p.kelly_inputs[2] == "trades" and w[0] == 0.0  # still within the age limit
    state = json.loads(json.dumps(p.state()))
    w = p.size(np.array([0.5]), flat)
    w = p.size(np.array([0.5]), flat)  # the first loser is now 11 bars old: gone
    assert p.trades == (pytest.approx(-0.005),) and p.kelly_inputs[2] == "prior"
    assert w[0] == pytest.approx(0.25 * 0.5 * 0.5)
    r = KellyGarch(cfg, ("A",))
    r.restore(state)
    r.size(np.array([0.5]), flat)
    assert r.size(np.array([0.5]), flat)[0] == pytest.approx(w[0])  # the same after a restart
    never = KellyGarch(dataclasses.replace(cfg, kelly_max_age_bars=0), ("A",))
    never.restore(state)
    for _ in range(30):
        assert never.size(np.array([0.5]), flat)[0] == 0.0  # 0 = the record never expires


def test_flip_and_a_round_trip_between_two_bars_are_trades():
    cfg = Cfg(volatility="none", max_position=1.0, allow_short=True)
    p = KellyGarch(cfg, ("A",))
    s = np.array([0.8])
    w0 = p.size(s, flat_ctx(("A",), T0, [0], [0], [0.0], equity=1e5))
    assert w0[0] == pytest.approx(0.1)
    path = [
        (0, 0, -30.0),  # bought and stopped out before the next bar: -30 on 0.1 x 1e5
        (10, 100, -31.0),  # open long (base -30)
        (-10, 90, -133.0),  # flip at 90: long closes with -133 - (-30); short opens (base -133)
        (0, 0, -34.0),  # short covered at 80: -34 - (-133) = 99 on 10 x 90
    ]
    for q, avg, rp in path:
        p.size(s, flat_ctx(("A",), T0, [q], [avg], [rp]))
    np.testing.assert_allclose(p.trades, [-30 / 10_000, -103 / 1000, 99 / 900])


def test_a_round_trip_between_two_bars_is_a_return_on_what_was_bought():
    """Sizing wants 5% of 100,000; the risk chain (say the VaR) cut the entry to 2.5%: 25
    shares at 100, 2,500 (the portfolio's opened_cost moves by that). Stopped out at 98
    before the next sized bar: -50 / 2,500 = -0.02 by hand, not -50 on the plugin's own
    5,000. The plugin's checkpoint between the two bars gives the same trade."""
    p = KellyGarch(Cfg(volatility="none", min_trades=1), ("A", "B"))

    def view(realized, opened):
        ctx = flat_ctx(("A", "B"), T0, [0, 0], [0, 0], realized)
        pf = dataclasses.replace(ctx.portfolio, opened_cost=np.asarray(opened, float))
        return dataclasses.replace(ctx, portfolio=pf)

    s = np.array([1.0, 0.0])
    # 1,000 of A bought before (a trade that closed flat, P&L 0: no return recorded).
    for _ in range(2):
        assert p.size(s, view([0.0, 0.0], [1_000.0, 0.0]))[0] == pytest.approx(0.05)
    restarted = KellyGarch(Cfg(volatility="none", min_trades=1), ("A", "B"))
    restarted.restore(json.loads(json.dumps(p.state(), allow_nan=False)))
    for plugin in (p, restarted):
        plugin.size(s, view([-50.0, 0.0], [3_500.0, 0.0]))
        assert plugin.trades == (pytest.approx(-0.02),)


def test_a_view_without_pnl_keeps_the_prior():
    p = KellyGarch(Cfg(volatility="none", min_trades=0), ("A",))
    ctx = flat_ctx(("A",), T0, [0], [0], [0.0])
    pf = ctx.portfolio
    bare = BarContext(
        time=ctx.time,
        index=0,
        symbols=ctx.symbols,
        bar=ctx.bar,
        mark=ctx.mark,
        tradable=ctx.tradable,
        history=ctx.history,
        features={},
        portfolio=PortfolioView(pf.cash, pf.equity, pf.quantity, pf.weights, 1e5, 1e5),
    )
    assert p.size(np.array([1.0]), bare)[0] == pytest.approx(0.05)  # capped
    assert p.trades == ()


# ----------------------------------------------------------------------------- GARCH


def test_garch_fit_forecast_equals_arch_forecast():
    r = garch_paths(600, 1, seed=3)[:, 0]
    params = garch_fit(r)
    assert params is not None and params.nobs == 600
    res = arch_model(r * 100, mean="Constant", vol="GARCH", p=1, q=1, dist="normal").fit(disp="off")
    np.testing.assert_allclose(
        [params.mu * 100, params.omega * 1e4, params.alpha, params.beta],
        res.params.values,
        rtol=1e-10,
    )
    arch_next = res.forecast(horizon=1, reindex=False).variance.values[-1, 0] / 1e4
    assert params.sigma2 == pytest.approx(arch_next, rel=1e-10)
    assert 0 < params.persistence < 1
    assert params.unconditional_variance == pytest.approx(
        params.omega / (1 - params.alpha - params.beta)
    )
    vol = garch_volatility(r)
    assert vol == pytest.approx(math.sqrt(params.sigma2 * 252))


def test_recursion_between_fits_matches_arch_forecast_on_the_same_params():
    r = garch_paths(700, 1, seed=5)[:, 0]
    params = garch_fit(r[:500])
    assert params is not None
    s2 = params.sigma2
    for x in r[500:650]:
        s2 = garch_forecast(params.omega, params.alpha, params.beta, s2, x - params.mu)
    fixed = arch_model(r[:650] * 100, mean="Constant", vol="GARCH", p=1, q=1).fix(
        [params.mu * 100, params.omega * 1e4, params.alpha, params.beta]
    )
    expected = fixed.forecast(horizon=1, reindex=False).variance.values[-1, 0] / 1e4
    assert float(s2) == pytest.approx(expected, rel=1e-9)
    # The vectorised filter from the fit's forecast gives the same.
    s2f = garch_filter(
        r[500:650, None], params.mu, params.omega, params.alpha, params.beta, params.sigma2
    )
    assert float(s2f[0]) == pytest.approx(expected, rel=1e-9)


def test_plugin_recursion_matches_arch_forecast_including_skipped_bars():
    n_sym, window = 3, 400
    rets = garch_paths(480, n_sym, seed=11, alpha=0.12, beta=0.8, scale=[1.0, 1.5, 2.5])
    close = prices(rets)  # 481 bars
    cfg = Cfg(garch_window=window, min_fit_obs=200)
    p = KellyGarch(cfg, tuple(f"S{i}" for i in range(n_sym)))
    m = Market(close, capacity=window + 1)
    m.push(window + 1)  # bar index 400: the window holds returns 0..399
    p.size(np.full(n_sym, 0.5), m.ctx())
    assert p.methods == {"S0": "garch", "S1": "garch", "S2": "garch"}
    first, direct = (
        p.garch_params("S2"),
        garch_fit(log_returns(close[: window + 1, 2]), min_obs=200),
    )
    assert (first.mu, first.omega, first.alpha, first.beta, first.sigma2) == (
        direct.mu,
        direct.omega,
        direct.alpha,
        direct.beta,
        direct.sigma2,
    )
    # No view from here on: out of the (active) fit scope, so no refit, only the recursion.
    for step in (1, 1, 3, 1, 20):  # 3 and 20: bars the plugin did not size (warm-up, catch-up)
        m.push(step)
        p.size(np.full(n_sym, np.nan), m.ctx())
    assert p.fits == n_sym
    seen = m.t  # returns 0 .. seen-1 are in the variance
    for i in range(n_sym):
        gp = p.garch_params(f"S{i}")
        r = log_returns(close[: seen + 1, i])
        fixed = arch_model(r * 100, mean="Constant", vol="GARCH", p=1, q=1).fix(
            [gp.mu * 100, gp.omega * 1e4, gp.alpha, gp.beta]
        )
        expected = fixed.forecast(horizon=1, reindex=False).variance.values[-1, 0] / 1e4
        assert p.forecast_variance[i] == pytest.approx(expected, rel=1e-9)


def test_refits_are_staggered_across_bars():
    n_sym = 10
    close = prices(garch_paths(330, n_sym, seed=2))
    cfg = Cfg(garch_window=300, min_fit_obs=200, refit_bars=5, fit_scope="all", initial_fit=False)
    p = KellyGarch(cfg, tuple(f"S{i}" for i in range(n_sym)))
    m = Market(close, capacity=301).push(301)
    per_bar = []
    for _ in range(10):
        before = p.fits
        p.size(np.full(n_sym, 0.5), m.ctx())
        per_bar.append(p.fits - before)
        m.push()
    assert per_bar == [2] * 10  # 10 symbols / 5 bars, never all at once
    assert p.fits == 20


def test_active_scope_fits_only_symbols_that_could_hold_a_position():
    n_sym = 4
    close = prices(garch_paths(260, n_sym, seed=4))
    cfg = Cfg(garch_window=250, min_fit_obs=200)
    p = KellyGarch(cfg, tuple(f"S{i}" for i in range(n_sym)))
    m = Market(close, capacity=251).push(251)
    score = np.array([0.5, -0.5, np.nan, 0.0])
    p.size(score, m.ctx(quantity=[0, 0, 0, 5], avg_price=[0, 0, 0, 100]))
    # S0 long candidate, S3 held; S1 (short, not allowed), S2 (no view) stay on EWMA.
    assert p.methods == {"S0": "garch", "S1": "ewma", "S2": "ewma", "S3": "garch"}
    assert np.isfinite(p.forecast_variance).all()


class _FakeModel:
    def __init__(self, outcome):
        self.outcome = outcome

    def fit(self, **kw):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _arch_fit(r, mean, start):
    """The fit as arch documents it: arch_model(...).fit(starting_values=...)."""
    import warnings

    sv = None
    if start is not None:
        sv = np.array(([start.mu * 100] if mean == "constant" else []) + [
            start.omega * 1e4, start.alpha, start.beta
        ])  # fmt: skip
    # arch_model(r * 100, mean=..., vol="GARCH", p=1, q=1, dist="normal", rescale=False)
    # builds this, with arch's own GARCH and Normal: ours differ only by the C library's log
    # and power (garch._libm_classes, tested on their own below).
    garch_cls, normal_cls, _ = garch_mod._libm_classes()
    cls = ConstantMean if mean == "constant" else ZeroMean
    model = cls(
        r * 100, volatility=garch_cls(p=1, o=0, q=1), distribution=normal_cls(), rescale=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit(disp="off", show_warning=False, starting_values=sv)
    return res


@pytest.mark.parametrize("mean", ["constant", "zero"])
def test_warm_started_fits_equal_arch_model_fits_bit_for_bit(mean):
    """The warm start skips arch's grid of starting values (garch._warm_garch): the optimiser
    must take exactly the path arch_model's fit takes with the same starting values."""
    paths = garch_paths(900, 6, seed=31, alpha=0.09, beta=0.88, scale=np.linspace(0.5, 3, 6))
    compared = 0
    for j in range(paths.shape[1]):
        r = paths[:, j]
        first, why = try_garch_fit(r[:500], mean=mean)
        assert first is not None, why
        starts = [
            None,
            first,  # the usual warm start: the previous window's fit
            dataclasses.replace(first, alpha=0.6, beta=0.6),  # outside arch's constraints
        ]
        for start in starts:
            for end in (520, 700, 900):
                ours, why = try_garch_fit(r[end - 500 : end], mean=mean, starting=start)
                ref = _arch_fit(r[end - 500 : end], mean, start)
                assert ours is not None, why
                # (in try_garch_fit's units: arch's percentages converted back the same way)
                got = [ours.mu, ours.omega, ours.alpha, ours.beta]
                want = [
                    float(ref.params["mu"]) / 100.0 if mean == "constant" else 0.0,
                    float(ref.params["omega"]) / 1e4,
                    float(ref.params["alpha[1]"]),
                    float(ref.params["beta[1]"]),
                ]
                assert [x.hex() for x in got] == [x.hex() for x in want], (j, end, start)
                compared += 1
    assert compared == 6 * 3 * 3


def _fake_arch(outcome):
    return lambda *a, **k: _FakeModel(outcome)


def _fake_result(flag=0, mu=0.01, omega=0.02, alpha=0.1, beta=0.85):
    return SimpleNamespace(
        convergence_flag=flag,
        optimization_result=SimpleNamespace(message="Iteration limit reached"),
        params={"mu": mu, "omega": omega, "alpha[1]": alpha, "beta[1]": beta},
        conditional_volatility=np.ones(600),
        loglikelihood=-700.0,
    )


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (RuntimeError("singular matrix"), "fit error: RuntimeError: singular matrix"),
        (_fake_result(flag=9), "did not converge (flag 9: Iteration limit reached)"),
        (_fake_result(alpha=0.3, beta=0.7), "non-stationary fit"),
        (_fake_result(omega=float("nan")), "non-finite parameters"),
        # alpha at arch's lower bound: the forecast never reacts to a shock (a simulated
        # GARCH path with alpha 0.08 fitted alpha = 1e-10; a -35% day left its vol at 0.118)
        (_fake_result(alpha=1e-10, beta=0.9), "degenerate fit (alpha = 1e-10: shocks never"),
        (_fake_result(alpha=0.0, beta=0.0), "degenerate fit (alpha = 0: shocks never"),
        (_fake_result(alpha=0.00099, beta=0.95), "degenerate fit (alpha = 0.00099"),
    ],
)
def test_failed_fit_falls_back_to_ewma_and_is_logged(monkeypatch, outcome, reason):
    rets = garch_paths(300, 2, seed=8)
    m = Market(prices(rets), capacity=301).push(301)
    p = KellyGarch(Cfg(garch_window=300, min_fit_obs=200), ("AAA", "BBB"))
    monkeypatch.setattr(garch_mod, "_model", _fake_arch(outcome))
    with capture_logs() as logs:
        w = p.size(np.array([0.6, np.nan]), m.ctx())
    falls = [e for e in logs if e["event"] == "sizing.garch_fallback"]
    assert len(falls) == 1
    assert falls[0]["symbol"] == "AAA" and falls[0]["log_level"] == "warning"
    assert falls[0]["reason"].startswith(reason)
    assert falls[0]["fallback"] == "ewma(lambda=0.94)"
    assert p.methods["AAA"] == "ewma" and p.fallbacks == 1
    expected = ewma_variance(rets[:, 0], 0.94)
    assert p.forecast_variance[0] == pytest.approx(float(expected), rel=1e-12)
    assert 0 < w[0] <= 0.05  # still sized, on the fallback's volatility


def test_fallbacks_of_one_batch_are_one_log_line_naming_them(monkeypatch):
    rets = garch_paths(300, 30, seed=8)
    m = Market(prices(rets), capacity=301).push(301)
    symbols = tuple(f"S{i:02d}" for i in range(30))
    p = KellyGarch(Cfg(garch_window=300, min_fit_obs=200, fit_scope="all"), symbols)
    monkeypatch.setattr(garch_mod, "_model", _fake_arch(_fake_result(alpha=0.3, beta=0.7)))
    with capture_logs() as logs:
        p.size(np.full(30, 0.5), m.ctx())
    [line] = [e for e in logs if e["event"] == "sizing.garch_fallback"]
    assert line["symbols"] == 30 and p.fallbacks == 30
    named = {line["symbol"], *line["others"]}
    assert len(named) == 20 and named <= set(symbols)  # bounded, the count says the rest
    assert all(r.startswith("non-stationary fit") for r in line["others"].values())


def test_a_symbol_falling_back_again_is_not_warned_about_again(monkeypatch):
    """A warning when a symbol's fit falls back after one that had not (or on its first);
    repeats are debug lines that count them (`again`), until a fit of it succeeds; the end
    of the run logs the totals."""
    rets = garch_paths(310, 4, seed=8)
    m = Market(prices(rets), capacity=301).push(301)
    p = KellyGarch(
        Cfg(garch_window=300, min_fit_obs=200, fit_scope="all", refit_bars=1),
        ("S0", "S1", "S2", "S3"),
    )
    bad, good = _fake_result(alpha=0.3, beta=0.7), _fake_result()
    with capture_logs() as logs:
        for outcome in (bad, bad, bad, good, bad):  # every symbol refits on every bar
            monkeypatch.setattr(garch_mod, "_model", _fake_arch(outcome))
            p.size(np.full(4, 0.5), m.ctx())
            m.push()
        p.close()
    falls = [e for e in logs if e["event"] == "sizing.garch_fallback"]
    assert [e["log_level"] for e in falls] == ["warning", "debug", "debug", "warning"]
    assert [(e["symbols"], e["again"]) for e in falls] == [(4, 0), (4, 4), (4, 4), (4, 0)]
    assert p.fallbacks == 16 and p.fits == 20
    [summary] = [e for e in logs if e["event"] == "sizing.garch_fallback_summary"]
    assert (summary["fits"], summary["fallbacks"], summary["on_fallback_now"]) == (20, 16, 4)


def test_a_replay_sums_its_fallbacks_up_at_its_end_instead_of_warning_at_each_batch(
    monkeypatch,
):
    """The README's S&P 500 replay printed 1,190 `sizing.garch_fallback` warnings: a replay
    logs its batches at debug and its end warns once, with the symbols and the reasons'
    kinds. A live run still warns at each batch (the test above)."""
    rets = garch_paths(310, 4, seed=8)
    m = Market(prices(rets), capacity=301).push(301)
    p = KellyGarch(
        Cfg(garch_window=300, min_fit_obs=200, fit_scope="all", refit_bars=1),
        ("S0", "S1", "S2", "S3"),
    )
    p.for_replay()
    bad, degenerate, good = (
        _fake_result(alpha=0.3, beta=0.7),
        _fake_result(alpha=1e-10, beta=0.9),
        _fake_result(),
    )
    with capture_logs() as logs:
        for outcome in (bad, good, degenerate):
            monkeypatch.setattr(garch_mod, "_model", _fake_arch(outcome))
            p.size(np.full(4, 0.5), m.ctx())
            m.push()
        p.close()
    falls = [e for e in logs if e["event"] == "sizing.garch_fallback"]
    assert [e["log_level"] for e in falls] == ["debug", "debug"]
    [summary] = [e for e in logs if e["event"] == "sizing.garch_fallback_summary"]
    assert summary["log_level"] == "warning"
    assert (summary["fits"], summary["fallbacks"], summary["symbols"]) == (12, 8, 4)
    assert summary["reasons"] == {"non-stationary fit": 4, "degenerate fit": 4}
    assert summary["fallback"] == "ewma(lambda=0.94)"


def test_a_restart_does_not_warn_again_about_symbols_already_on_the_fallback(monkeypatch):
    """The "warned until a fit succeeds" memory is part of the checkpoint: a restarted
    process that sees the same symbol fall back again logs it at debug, as one process
    would; a checkpoint written before it existed restores as "none warned yet"."""
    rets = garch_paths(310, 2, seed=8)
    m = Market(prices(rets), capacity=301).push(301)
    cfg = Cfg(garch_window=300, min_fit_obs=200, fit_scope="all", refit_bars=1)
    bad = _fake_arch(_fake_result(alpha=0.3, beta=0.7))
    monkeypatch.setattr(garch_mod, "_model", bad)
    first = KellyGarch(cfg, ("S0", "S1"))
    first.size(np.full(2, 0.5), m.ctx())
    m.push()
    state = json.loads(json.dumps(first.state()))
    old = {k: v for k, v in state.items() if k != "fallen"}
    levels = []
    for saved in (state, old):
        again = KellyGarch(cfg, ("S0", "S1"))
        again.restore(saved)
        with capture_logs() as logs:
            again.size(np.full(2, 0.5), m.ctx())
        [line] = [e for e in logs if e["event"] == "sizing.garch_fallback"]
        levels.append((line["log_level"], line["again"]))
    assert levels == [("debug", 2), ("warning", 0)]


def test_a_fit_with_alpha_at_arch_s_lower_bound_is_refused_and_one_above_the_floor_kept(
    monkeypatch,
):
    """arch itself lands on alpha = 0 for many series (here i.i.d. normal returns: alpha 0,
    beta 0.99, a variance that no shock moves): refused like the stationarity boundary, so
    the facade and the plugin use EWMA, which reacts. A fit just above the floor stands."""
    r = np.random.default_rng(0).standard_normal(300) * 0.01
    params, why = try_garch_fit(r)
    assert params is None
    assert why.startswith("degenerate fit (alpha = ") and "shocks never move" in why
    crash = np.r_[r, np.log(0.65)]  # then a -35% day
    ewma = math.sqrt(float(ewma_variance(crash[np.isfinite(crash)])) * 252)
    assert garch_volatility(crash) == pytest.approx(ewma, rel=1e-12) and ewma > 0.5
    monkeypatch.setattr(garch_mod, "_model", _fake_arch(_fake_result(alpha=0.001, beta=0.9)))
    kept, why = try_garch_fit(r)
    assert why == "" and kept is not None and kept.alpha == 0.001


def test_a_cached_fit_from_before_the_alpha_floor_is_not_reused(tmp_path):
    """The fit cache stores verdicts, not the data: a degenerate fit accepted by an earlier
    build (alpha 1e-10) must not come back as accepted, so the earlier format is ignored."""
    from tradingd_plugins.sizing.garch_fits import FitCache, blas_kind, fit_key

    r = np.random.default_rng(0).standard_normal(300) * 0.01
    key = fit_key((r, "constant", None, 250))
    cache = FitCache(str(tmp_path), 10)
    assert cache.path is not None
    accepted = [1e-4, 2e-6, 1e-10, 0.98, 1e-4, 300]
    cache.path.write_text(
        json.dumps(
            {
                "format": "tradingd-garch-fits/2",
                "blas": blas_kind(),
                "entries": [[key.hex(), accepted, ""]],
            }
        )
    )
    with capture_logs() as logs:
        assert FitCache(str(tmp_path), 10).get(key) is None
    assert [e["reason"] for e in logs if e["event"] == "garch_cache.ignored"] == ["another format"]


def test_try_garch_fit_reasons_without_arch():
    assert try_garch_fit(np.full(300, 0.01))[1] == "constant returns (no variance to model)"
    assert try_garch_fit(np.full(5, 0.01))[1].startswith("too few returns")
    assert garch_fit(np.r_[np.nan, np.nan]) is None
    with pytest.raises(ValueError):
        try_garch_fit(np.ones(300), mean="ar1")


def test_ewma_is_riskmetrics():
    r = np.array([0.01, -0.02, 0.015, 0.0, -0.01])
    s2 = np.mean(r**2)
    for x in r:
        s2 = 0.94 * s2 + 0.06 * x * x
    assert float(ewma_variance(r)) == pytest.approx(s2)
    with pytest.raises(ValueError):
        ewma_variance(r, 1.0)
    np.testing.assert_allclose(log_returns(np.array([[100.0], [110.0]]))[0], np.log(1.1))


@settings(max_examples=200, deadline=None)
@given(
    r=st.lists(
        st.floats(-0.5, 0.5, allow_subnormal=False) | st.just(math.nan), min_size=1, max_size=600
    ),
    mu=st.floats(-0.01, 0.01),
    omega=st.floats(0, 1e-4),
    alpha=st.floats(0, 0.3),
    beta=st.floats(0, 0.95),
    start=st.none() | st.floats(1e-6, 1e-2),
)
def test_one_series_is_filtered_as_a_column_of_many(r, mu, omega, alpha, beta, start):
    """One series takes a loop on Python floats; a column of a (T, N) window the numpy
    recursion: the same variance, bit for bit (NaN residuals keep it, an all-NaN series has
    none)."""
    one = np.array(r)
    got = garch_filter(one, mu, omega, alpha, beta, start)
    if start is None:  # the backcast of one series (a column's sums in another order)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            start = np.nanmean((one - mu) * (one - mu))
    many = np.column_stack([one, np.linspace(-0.02, 0.02, one.size)])
    ref = garch_filter(many, np.array([mu, 0.0]), omega, alpha, beta, np.array([start, 1e-4]))
    assert got.shape == ()
    np.testing.assert_array_equal(got, ref[0])


# ----------------------------------------------------------------------------- volatility scalar


def test_vol_scalar_halves_the_weight_when_forecast_vol_doubles():
    cfg = Cfg(max_position=1.0, min_vol_scalar=0.01, max_vol_scalar=100.0)
    s2 = np.array([1e-4, 4e-4])  # daily vol 1% and 2%
    w = target_weights(np.array([0.5, 0.5]), s2, 0.25, cfg)
    assert w[1] == pytest.approx(w[0] / 2)
    assert w[0] == pytest.approx(0.25 * 0.5 * 0.5 * 0.15 / (0.01 * math.sqrt(252)))
    np.testing.assert_allclose(vol_scalar(s2, cfg), 0.15 / (np.sqrt(s2 * 252)))
    # Clipped at the configured range, NaN without a variance.
    tight = Cfg()
    np.testing.assert_allclose(vol_scalar(np.array([1e-9, 1.0]), tight), [2.0, 0.1])
    assert np.isnan(vol_scalar(np.array([np.nan, 0.0]), tight)).all()


@pytest.mark.parametrize("volatility", ["ewma", "garch"])
def test_plugin_weight_halves_for_a_series_with_twice_the_volatility(volatility):
    r = garch_paths(400, 1, seed=21)[:, 0]
    rets = np.column_stack([r, 2 * r])
    cfg = Cfg(
        volatility=volatility,
        garch_window=400,
        min_fit_obs=200,
        max_position=1.0,
        min_vol_scalar=0.001,
        max_vol_scalar=1000.0,
        garch_mean="zero",
    )
    p = KellyGarch(cfg, ("ONE", "TWO"))
    m = Market(prices(rets), capacity=401).push(401)
    w = p.size(np.array([0.5, 0.5]), m.ctx())
    assert set(p.methods.values()) == {volatility}
    v = p.forecast_variance
    # EWMA is exactly scale-equivariant; the GARCH optimiser to its tolerance.
    rel = 1e-12 if volatility == "ewma" else 2e-3
    assert v[1] == pytest.approx(4 * v[0], rel=rel)
    assert w[1] == pytest.approx(w[0] / 2, rel=rel)


def test_volatility_none_drops_the_scalar_and_unknown_variance_means_no_position():
    cfg = Cfg(volatility="none", max_position=1.0)
    p = KellyGarch(cfg, ("A",))
    assert p.size(np.array([0.4]), flat_ctx(("A",), T0, [0], [0], [0]))[0] == pytest.approx(
        0.25 * 0.5 * 0.4
    )
    # Too few returns for any variance: no position.
    m = Market(prices(garch_paths(10, 1)), capacity=501).push(11)
    q = KellyGarch(Cfg(), ("A",))
    assert q.size(np.array([0.9]), m.ctx())[0] == 0.0
    assert np.isnan(q.forecast_variance[0])


def test_a_symbol_listed_late_gets_a_variance_once_it_has_enough_returns():
    rets = garch_paths(80, 2, seed=1)
    close = prices(rets)
    close[:50, 1] = np.nan  # lists at bar 50
    cfg = Cfg(garch_window=60, min_fit_obs=50, min_vol_obs=20)
    p = KellyGarch(cfg, ("OLD", "NEW"))
    m = Market(close, capacity=61).push(61)
    p.size(np.array([0.5, 0.5]), m.ctx())
    assert np.isnan(p.forecast_variance[1])
    for _ in range(10):
        m.push()
        w = p.size(np.array([0.5, 0.5]), m.ctx())
    assert np.isfinite(p.forecast_variance[1]) and w[1] > 0  # 20 returns since listing


# ----------------------------------------------------------------------------- monthly


def test_monthly_rebalance_holds_targets_but_exits_at_once():
    syms = ("A", "B", "C", "D")
    cfg = Cfg(volatility="none", rebalance="monthly", max_position=1.0)
    p = KellyGarch(cfg, syms)
    days = pd.to_datetime(["2021-01-27", "2021-01-28", "2021-01-29", "2021-02-01"], utc=True)
    f = 0.25 * 0.5

    def ctx(i, quantity):
        c = flat_ctx(syms, days[i].to_pydatetime(), quantity, np.full(4, 100.0), np.zeros(4))
        return c

    w0 = p.size(np.array([0.8, 0.4, -0.5, 0.8]), ctx(0, [0, 0, 0, 0]))
    np.testing.assert_allclose(w0, [f * 0.8, f * 0.4, 0, f * 0.8])  # first bar: rebalance
    # Mid-month: A keeps its target (not the fresh 0.6 one), B's score no longer passes:
    # exit; C may not enter until February; D was never filled (or stopped out): stays flat.
    w1 = p.size(np.array([0.6, 0.0, 0.9, 0.8]), ctx(1, [10, 5, 0, 0]))
    np.testing.assert_allclose(w1, [f * 0.8, 0, 0, 0])
    # A's score turns against the position: exit at once.
    w2 = p.size(np.array([-0.3, 0.9, 0.9, 0.8]), ctx(2, [10, 0, 0, 0]))
    np.testing.assert_allclose(w2, [0, 0, 0, 0])
    # The first bar of February: fresh targets for all.
    w3 = p.size(np.array([0.5, 0.9, 0.9, 0.8]), ctx(3, [0, 0, 0, 0]))
    np.testing.assert_allclose(w3, [f * 0.5, f * 0.9, f * 0.9, f * 0.8])


def test_untradable_symbols_keep_their_weight():
    p = KellyGarch(Cfg(volatility="none"), ("A", "B"))
    c = flat_ctx(("A", "B"), T0, [0, 0], [0, 0], [0, 0])
    c = BarContext(
        time=c.time,
        index=0,
        symbols=c.symbols,
        bar=c.bar,
        mark=c.mark,
        tradable=np.array([True, False]),
        history=c.history,
        features={},
        portfolio=PortfolioView(1e5, 1e5, np.array([0, 3.0]), np.array([0, 0.02]), 1e5, 1e5),
    )
    np.testing.assert_allclose(p.size(np.array([0.2, np.nan]), c), [0.25 * 0.5 * 0.2, 0.02])


# ----------------------------------------------------------------------------- restart safety


def _bars_with_trades(m, bars, seed=0):
    """(score, ctx) of `bars` new bars, with a book that opens and closes positions."""
    rng = np.random.default_rng(seed)
    n = len(m.symbols)
    q = np.zeros(n)
    avg = np.zeros(n)
    rp = np.zeros(n)
    for _ in range(bars):
        m.push()
        score = np.where(rng.random(n) < 0.1, np.nan, rng.uniform(-1, 1, n))
        yield score, m.ctx(quantity=q, avg_price=avg, realized=rp)
        # The next bar's book: flip positions on randomly, book some P&L.
        flip = rng.random(n) < 0.3
        closing = flip & (q != 0)
        rp = rp + np.where(closing, rng.normal(20, 50, n), 0.0)
        q = np.where(flip, np.where(q != 0, 0.0, 10.0), q)
        avg = np.where(q != 0, np.where(avg > 0, avg, m.close[m.t]), 0.0)


def _sized_until(cfg: Cfg, n_sym: int, until: int):  # type: ignore[no-untyped-def]
    """A KellyGarch sized bar by bar over simulated GARCH paths with trades, up to bar
    `until`: (the plugin, its symbols, the bars that follow)."""
    close = prices(garch_paths(300, n_sym, seed=13, scale=np.linspace(0.8, 2.0, n_sym)))
    syms = tuple(f"S{i}" for i in range(n_sym))
    a = KellyGarch(cfg, syms)
    m = Market(close, capacity=151).push(200)
    gen = _bars_with_trades(m, 60, seed=1)
    for score, ctx in gen:
        a.size(score, ctx)
        if m.t == until:
            break
    return a, syms, gen


@pytest.mark.parametrize(
    "lag", [0, 1, 3], ids=["same-bar fits", "fits in flight", "three bars of fits in flight"]
)
def test_state_restore_round_trip_sizes_identically(lag):
    lagged = {"fit_lag_bars": lag, "fit_executor": "thread"} if lag else {}
    cfg = Cfg(
        garch_window=150, min_fit_obs=120, refit_bars=4, min_trades=5, allow_short=True, **lagged
    )
    a, syms, gen = _sized_until(cfg, 6, 240)
    assert len(a.trades) >= cfg.min_trades  # the Kelly estimate is in use
    assert "garch" in a.methods.values()
    saved = json.loads(json.dumps(a.state(), allow_nan=False))  # strict JSON
    # Lagged: the checkpoint holds the fits asked for and not yet applied.
    assert len(saved["pending_fits"] or ()) == (lag > 0) + (lag == 3) * 2
    b = KellyGarch(cfg, syms)
    b.restore(saved)
    sized = 0
    for _ in range(8):  # the next bars, with refits among them
        score, ctx = next(gen)
        wa, wb = a.size(score, ctx), b.size(score, ctx)
        np.testing.assert_array_equal(wa, wb)
        sized += np.count_nonzero(wa)
    assert sized > 0
    np.testing.assert_array_equal(a.forecast_variance, b.forecast_variance)
    assert json.dumps(a.state(), allow_nan=False) == json.dumps(b.state(), allow_nan=False)


def test_a_checkpoint_with_fits_in_flight_in_the_earlier_format_restores():
    """Checkpoints written before fit_lag_bars could exceed 1 held one batch as a dict (asked
    for at the checkpoint's bar): they restore as that batch."""
    close = prices(garch_paths(330, 3, seed=29))
    cfg = Cfg(
        garch_window=300, min_fit_obs=200, refit_bars=3, fit_scope="all",
        fit_lag_bars=1, fit_executor="thread",
    )  # fmt: skip
    a = KellyGarch(cfg, ("S0", "S1", "S2"))
    m = Market(close, capacity=301).push(301)
    a.size(np.full(3, 0.5), m.ctx())
    m.push()
    a.size(np.full(3, 0.5), m.ctx())  # S1's refit is in flight
    saved = json.loads(json.dumps(a.state()))
    [batch] = saved["pending_fits"]
    old = {**saved, "pending_fits": {"initial": batch["initial"], "fits": batch["fits"]}}
    b = KellyGarch(cfg, ("S0", "S1", "S2"))
    b.restore(old)
    m.push()
    wa, wb = a.size(np.full(3, 0.5), m.ctx()), b.size(np.full(3, 0.5), m.ctx())
    np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.forecast_variance, b.forecast_variance)
    assert a.fits == 4 and b.fits == 1  # b applied the one restored batch (S1)
    a.close()
    b.close()


def test_restart_after_missed_bars_catches_up_exactly():
    n_sym = 3
    close = prices(garch_paths(260, n_sym, seed=17))
    cfg = Cfg(garch_window=200, min_fit_obs=150, refit_bars=50, fit_scope="all")
    a = KellyGarch(cfg, ("A", "B", "C"))
    m = Market(close, capacity=201).push(210)
    score = np.full(n_sym, 0.5)
    a.size(score, m.ctx())
    b = KellyGarch(cfg, ("A", "B", "C"))
    b.restore(json.loads(json.dumps(a.state())))
    m.push(4)  # bars the restarted process only warmed up on
    a.size(score, m.ctx())  # in-process: 4 bars of recursion
    with capture_logs() as logs:
        b.size(score, m.ctx())  # restarted: finds its last bar 4 rows back
    assert not any(e["event"] == "sizing.variance_resync" for e in logs)
    np.testing.assert_array_equal(b.forecast_variance, a.forecast_variance)


def test_restart_beyond_the_window_refilters_the_variance():
    n_sym = 3
    close = prices(garch_paths(600, n_sym, seed=17, alpha=0.1, beta=0.8))
    cfg = Cfg(garch_window=200, min_fit_obs=150)
    a = KellyGarch(cfg, ("A", "B", "C"))
    m = Market(close, capacity=201).push(210)
    a.size(np.full(n_sym, 0.5), m.ctx())
    b = KellyGarch(cfg, ("A", "B", "C"))
    b.restore(json.loads(json.dumps(a.state())))
    no_view = np.full(n_sym, np.nan)  # out of the fit scope: no refit, only the recursion
    for _ in range(300):  # longer than the window: the restarted process's last bar is gone
        m.push()
        a.size(no_view, m.ctx())
    with capture_logs() as logs:
        b.size(no_view, m.ctx())
    assert any(e["event"] == "sizing.variance_resync" for e in logs)
    # Same parameters, filtered from the window's start: the start is forgotten (beta^200).
    np.testing.assert_allclose(b.forecast_variance, a.forecast_variance, rtol=1e-6)


def test_restore_rejects_another_universe_and_versions():
    p = KellyGarch(Cfg(), ("A", "B"))
    st_ = p.state()
    with pytest.raises(ValueError, match="2 symbols"):
        KellyGarch(Cfg(), ("A",)).restore(st_)
    with pytest.raises(ValueError, match="version"):
        p.restore({**st_, "version": 99})
    # A state saved before any bar was sized (a warm-up checkpoint) restores to a fresh start.
    q = KellyGarch(Cfg(volatility="none"), ("A", "B"))
    q.restore(json.loads(json.dumps(st_)))
    assert q.size(np.array([0.4, np.nan]), flat_ctx(("A", "B"), T0, [0, 0], [0, 0], [0, 0]))[
        0
    ] == pytest.approx(0.05)


# ----------------------------------------------------------------------------- invariants


_PROPERTY_MARKET = Market(prices(garch_paths(40, 6, seed=99, scale=[0.5, 1, 1, 2, 3, 8])), 31)
_PROPERTY_MARKET.push(40)

scores = st.lists(
    st.one_of(st.floats(-1, 1, allow_nan=False), st.just(float("nan"))), min_size=6, max_size=6
)


def test_the_fit_cache_file_is_read_at_first_use_not_when_the_plugin_is_built(tmp_path):
    """The start-up checks build every plugin only to see that it starts: a plugin that is
    never sized reads nothing (25,000 fits: 0.24 s for the S&P 500 run)."""
    from tradingd_plugins.sizing.garch_fits import FitCache

    c = FitCache(str(tmp_path), 5)
    c.put(b"a", (None, "a"))
    c.save()
    with capture_logs() as logs:
        built = FitCache(str(tmp_path), 5)
        KellyGarch(Cfg(fit_cache_dir=str(tmp_path)), ("S0",)).close()
    assert not [e for e in logs if e["event"].startswith("garch_cache")]
    with capture_logs() as logs:
        assert built.get(b"a") == (None, "a")
    assert [e["event"] for e in logs] == ["garch_cache.loaded"]
    fits_file(tmp_path).unlink()
    later = FitCache(str(tmp_path), 5)
    assert len(later) == 0  # read when asked, and the file is gone by then


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    score=scores,
    min_score=st.floats(0, 0.9),
    allow_short=st.booleans(),
    cap=st.floats(0.001, 0.3),
    multiplier=st.floats(0.05, 1.0),
    volatility=st.sampled_from(["ewma", "none"]),
)
def test_weights_are_capped_zero_without_a_view_and_never_short_unless_allowed(
    score, min_score, allow_short, cap, multiplier, volatility
):
    cfg = Cfg(
        volatility=volatility,
        garch_window=30,
        min_vol_obs=20,
        min_fit_obs=20,
        min_score=min_score,
        allow_short=allow_short,
        max_position=cap,
        kelly_multiplier=multiplier,
    )
    p = KellyGarch(cfg, _PROPERTY_MARKET.symbols)
    s = np.array(score)
    w = p.size(s, _PROPERTY_MARKET.ctx())
    assert w.shape == s.shape and np.isfinite(w).all()
    assert (np.abs(w) <= cap + 1e-15).all()
    no_view = np.isnan(s) | (np.abs(s) <= min_score)
    assert (w[no_view] == 0).all()
    if not allow_short:
        assert (w >= 0).all()
    assert (np.sign(w[w != 0]) == np.sign(s[w != 0])).all()


@settings(max_examples=200, deadline=None)
@given(
    score=scores,
    sigma2=st.lists(st.one_of(st.floats(0, 1.0), st.just(float("nan"))), min_size=6, max_size=6),
    kelly=st.floats(-5, 5),
    min_score=st.floats(0, 0.9),
    allow_short=st.booleans(),
    cap=st.floats(0.001, 1.0),
)
def test_target_weights_invariants(score, sigma2, kelly, min_score, allow_short, cap):
    cfg = Cfg(min_score=min_score, allow_short=allow_short, max_position=cap)
    s = np.array(score)
    w = target_weights(s, np.array(sigma2), kelly, cfg)
    assert np.isfinite(w).all() and (np.abs(w) <= cap).all()
    assert (w[np.isnan(s) | (np.abs(s) <= min_score) | ~(np.array(sigma2) > 0)] == 0).all()
    if not allow_short:
        assert (w >= 0).all()
    if kelly <= 0:
        assert (w == 0).all()


# ----------------------------------------------------------------------------- plumbing


def test_protocol_history_and_config_validation():
    p = KellyGarch(Cfg(garch_window=300), ("A",))
    assert isinstance(p, SizingPlugin)
    assert p.history_bars() == 301
    assert p.required_features() == ()
    for bad in (
        {"rebalance": "weekly"},
        {"volatility": "gjr"},
        {"fit_scope": "some"},
        {"garch_mean": "ar"},
        {"min_trades": 200, "kelly_window": 100},
        {"max_position": 0.0},
        {"min_vol_scalar": 2.0, "max_vol_scalar": 1.0},
        {"refit_bars": 0},
        {"refit_bars": True},
        {"ewma_lambda": 1.0},
        {"kelly_multiplier": 1.5},
        {"prior_win_rate": 1.5},
        {"min_fit_obs": 600},
        {"min_vol_obs": 600},
    ):
        with pytest.raises(ValueError):
            KellyGarchConfig(**bad)


# ------------------------------------------------------- lagged fits, their runner and cache


def _run(cfg, close, n_bars, symbols=None, score=0.5):
    """Size `n_bars` bars after the first 301; the weights and variances of each bar."""
    n = close.shape[1]
    p = KellyGarch(cfg, symbols or tuple(f"S{i}" for i in range(n)))
    m = Market(close, capacity=301).push(301)
    out = []
    for _ in range(n_bars):
        w = p.size(np.full(n, score), m.ctx())
        out.append((w, p.forecast_variance.copy(), p._bars - 1))
        m.push()
    return p, out


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_lagged_fits_equal_same_bar_fits_from_the_next_bar_wherever_they_run(executor):
    """A fit asked for at bar t applies from t+1; from then on the state is the same as when
    it applied at t (same window, same warm start), bit for bit, whichever runner fitted it."""
    close = prices(garch_paths(330, 2, seed=21, alpha=0.1, beta=0.85, scale=[1.0, 2.0]))
    kw = {"garch_window": 300, "min_fit_obs": 200, "refit_bars": 5, "fit_scope": "all"}
    _, now = _run(Cfg(**kw), close, 22)
    lagged, later = _run(Cfg(**kw, fit_lag_bars=1, fit_executor=executor), close, 22)
    compared = differed = 0
    for (w0, v0, k), (w1, v1, _) in zip(now, later, strict=True):
        if k % 5 in (2, 3, 4):  # S0 refits on bars 0, 5, ..; S1 on 1, 6, ..: none due here
            np.testing.assert_array_equal(v1, v0)
            np.testing.assert_array_equal(w1, w0)
            compared += 1
        elif k % 5 == 0:  # S0's fit: applied now at lag 0, from the next bar at lag 1
            differed += v1[0] != v0[0]
    assert compared == 12 and differed == 5
    assert lagged.fits == 2 + 8  # the initial fit of both, then 4 refits each (the 22nd bar's
    # requests are still in flight)


@pytest.mark.parametrize("executor", ["inline", "thread", "process"])
def test_fits_lagged_three_bars_equal_same_bar_fits_once_applied(executor):
    """At fit_lag_bars = 3 a fit asked for at bar t applies at t+3, its variance carried over
    the bars between with the new parameters: from t+3 on, the state is bit for bit the one
    of applying it at t; before, the bars size on the previous parameters."""
    close = prices(garch_paths(335, 3, seed=23, alpha=0.1, beta=0.85, scale=[1.0, 1.5, 2.0]))
    kw = {
        "garch_window": 300,
        "min_fit_obs": 200,
        "refit_bars": 5,
        "fit_scope": "all",
        "initial_fit": False,
    }
    now_p, now = _run(Cfg(**kw), close, 30)
    lagged, later = _run(Cfg(**kw, fit_lag_bars=3, fit_executor=executor), close, 30)
    equal = differed = 0
    for (w0, v0, k), (w1, v1, _) in zip(now, later, strict=True):
        for i in range(3):  # symbol i refits on the bars where k % 5 == i
            if k >= i and (k - i) % 5 < 3:  # asked for within the last 3 bars: not applied
                differed += v1[i] != v0[i]
                continue
            assert v1[i] == v0[i] and w1[i] == w0[i], (k, i)
            equal += 1
    # 3 symbols x 30 bars: 18 bars each inside a lag window (where every variance differed,
    # so the comparison above is not vacuous), the other 36 bit for bit equal.
    assert equal == 36 and differed == 54
    # Applied: the requests of bars 0-26 (those of bars 27-29 are in flight at the end).
    assert lagged.fits == 17 and now_p.fits == 18
    lagged.close()


def test_a_killed_worker_with_several_requests_in_flight_loses_no_fit():
    close = prices(garch_paths(310, 3, seed=27))
    cfg = Cfg(
        garch_window=300, min_fit_obs=200, refit_bars=3, fit_scope="all", initial_fit=False,
        fit_lag_bars=3, fit_executor="process",
    )  # fmt: skip
    p = KellyGarch(cfg, ("S0", "S1", "S2"))
    m = Market(close, capacity=301).push(301)
    try:
        p.size(np.full(3, 0.5), m.ctx())  # S0's fit goes to the worker
        m.push()
        p.size(np.full(3, 0.5), m.ctx())  # S1's too: two requests in flight
        first = p._runner._worker
        first.proc.kill()
        first.proc.wait()
        with capture_logs() as logs:
            for _ in range(4):  # S2's request finds the worker gone; bars 3-5 apply all three
                m.push()
                p.size(np.full(3, 0.5), m.ctx())
        assert p.fits == 3 and p.methods == {"S0": "garch", "S1": "garch", "S2": "garch"}
        assert any(e["event"] == "sizing.garch_worker_lost" for e in logs)
        # S0 asked again at bar 3 (its first fit applied just before): a new, live worker.
        second = p._runner._worker
        assert second is not None and second is not first and second.proc.poll() is None
    finally:
        p.close()


def test_a_rerun_fits_nothing_and_a_changed_price_fits_again(tmp_path, monkeypatch):
    import tradingd_plugins.sizing.garch_fits as fits_mod

    fitted = []
    real = fits_mod.fit_many
    monkeypatch.setattr(fits_mod, "fit_many", lambda jobs: fitted.append(len(jobs)) or real(jobs))
    close = prices(garch_paths(330, 3, seed=5))
    cfg = Cfg(
        garch_window=300, min_fit_obs=200, refit_bars=4, fit_scope="all",
        fit_lag_bars=1, fit_cache_dir=str(tmp_path),
    )  # fmt: skip
    first, a = _run(cfg, close, 12)
    first.close()  # the engine's end of run: the outcomes go to the file
    assert sum(fitted) == first.fits == 11  # 3 initial, then one a bar on 8 of 11 bars
    assert fits_file(tmp_path).exists()
    fitted.clear()
    rerun, b = _run(cfg, close, 12)
    assert fitted == [] and rerun._cache.hits == rerun.fits  # nothing fitted again
    for (w0, v0, _), (w1, v1, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(w1, w0)
        np.testing.assert_array_equal(v1, v0)
    changed = close.copy()
    changed[305, 1] *= 1.01  # one price of S1 inside later windows
    _run(cfg, changed, 12)
    assert sum(fitted) > 0  # S1's windows from bar 305 on are new keys


def test_an_unreadable_fit_cache_is_ignored_with_a_warning(tmp_path):
    fits_file(tmp_path).write_text('{"format": "tradingd-garch-fits/2", "entries": [[')
    close = prices(garch_paths(305, 2, seed=6))
    cfg = Cfg(garch_window=300, min_fit_obs=200, fit_lag_bars=1, fit_cache_dir=str(tmp_path))
    with capture_logs() as logs:
        p, _ = _run(cfg, close, 3)
    [warn] = [e for e in logs if e["event"] == "garch_cache.unreadable"]
    assert str(tmp_path) in warn["path"] and warn["log_level"] == "warning"
    assert p.methods == {"S0": "garch", "S1": "garch"}  # fitted as if there were no cache
    p.close()
    assert json.loads(fits_file(tmp_path).read_text())["entries"]  # rewritten


def test_the_fit_cache_stays_within_its_bound_keeping_what_this_run_used(tmp_path):
    from tradingd_plugins.sizing.garch_fits import FitCache

    c = FitCache(str(tmp_path), 3)
    for k in (b"a", b"b", b"c"):
        c.put(k, (None, k.decode()))
    c.save()
    d = FitCache(str(tmp_path), 3)
    assert d.get(b"b") == (None, "b")  # used by this run
    d.put(b"x", (None, "x"))
    d.put(b"y", (None, "y"))
    assert len(d) == 3  # memory bounded: old unused entries went first
    d.save()
    e = FitCache(str(tmp_path), 3)
    assert {k for k in (b"a", b"b", b"c", b"x", b"y") if e.get(k)} == {b"b", b"x", b"y"}


def fits_file(folder):
    """The fit cache's file in folder for this process's BLAS."""
    from tradingd_plugins.sizing.garch_fits import blas_kind, cache_file_name

    return Path(folder) / cache_file_name(blas_kind())


def _file_keys(path):
    return [bytes.fromhex(k) for k, _, _ in json.loads(path.read_text())["entries"]]


def test_a_rerun_that_fits_nothing_leaves_the_fit_cache_file_as_it_is(tmp_path):
    import os

    from tradingd_plugins.sizing.garch_fits import FitCache

    path = fits_file(tmp_path)
    c = FitCache(str(tmp_path), 5)
    for k in (b"a", b"b", b"c"):
        c.put(k, ((0.0, 1e-6, 0.1, 0.8, 1e-4, 300), ""))
    c.save()
    written = os.stat(path)
    rerun = FitCache(str(tmp_path), 5)
    for k in (b"a", b"b"):  # the same fits asked for in the same order (and c not at all)
        got = rerun.get(k)
        assert got is not None
        rerun.put(k, got)  # as the plugin does with every outcome, those read here too
    rerun.save()
    kept = os.stat(path)
    assert (kept.st_ino, kept.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    # Used in another order: rewritten, this run's entries first.
    other = FitCache(str(tmp_path), 5)
    other.get(b"c")
    other.save()
    assert _file_keys(path) == [b"c", b"a", b"b"]
    assert os.stat(path).st_ino != kept.st_ino


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.lists(st.sampled_from(b"abcdef"), max_size=8),
    ops=st.lists(st.tuples(st.booleans(), st.sampled_from(b"abcdefgh")), max_size=10),
    size=st.integers(1, 6),
    resize=st.integers(1, 6),
)
def test_the_fit_cache_file_is_what_an_unconditional_save_would_write(
    tmp_path_factory, first, ops, size, resize
):
    """Skipping the write must never leave another file than writing would: after any
    sequence of gets and puts, the file holds this run's entries first, then the rest."""
    from tradingd_plugins.sizing.garch_fits import FitCache

    folder = tmp_path_factory.mktemp("fits")
    c = FitCache(str(folder), size)
    for k in first:
        c.put(bytes([k]), (None, chr(k)))
    c.save()
    d = FitCache(str(folder), resize)  # a run with another bound reads the same file
    for put, k in ops:
        key = bytes([k])
        if put:  # the outcome it has (a cache hit put back), or another one
            d.put(key, (None, chr(k) if k % 2 else "refit"))
        else:
            d.get(key)
    expected = (list(d._used) + list(d._old))[:resize]
    d.save()
    if d._used:
        assert _file_keys(fits_file(folder)) == expected
    e = FitCache(str(folder), resize)
    assert [e.get(k) for k in expected] == [d._used.get(k) or d._old.get(k) for k in expected]


def test_a_killed_worker_process_is_replaced_by_fitting_inline():
    close = prices(garch_paths(305, 2, seed=7))
    cfg = Cfg(garch_window=300, min_fit_obs=200, fit_lag_bars=1, fit_executor="process")
    p = KellyGarch(cfg, ("S0", "S1"))
    m = Market(close, capacity=301).push(301)
    try:
        p.size(np.full(2, 0.5), m.ctx())  # the initial fits go to the worker
        worker = p._runner._worker
        worker.proc.kill()
        worker.proc.wait()
        m.push()
        with capture_logs() as logs:
            p.size(np.full(2, 0.5), m.ctx())
        [lost] = [e for e in logs if e["event"] == "sizing.garch_worker_lost"]
        assert lost["action"] == "fitting inline" and str(worker.proc.pid) in lost["error"]
        assert p.methods == {"S0": "garch", "S1": "garch"} and p.fits == 2
        # This bar's request (S1's slot) went to a new worker.
        assert p._runner._worker is not None and p._runner._worker is not worker
    finally:
        p.close()


def test_the_worker_process_ends_with_its_parent_even_a_killed_one(tmp_path):
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, signal, numpy as np\n"
        "from tradingd_plugins.sizing.garch_fits import FitRunner\n"
        "r = FitRunner('process')\n"
        "r300 = np.random.default_rng(1).normal(0, 0.01, 300)\n"
        "reply = r.submit([(r300, 'constant', None, 200)])\n"
        "assert reply.result()[0][0] is not None\n"  # a real fit came back
        "print(r._worker.proc.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its killed parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"fit_lag_bars": 11}, "fit_lag_bars must be an integer 0-10"),
        ({"fit_lag_bars": -1}, "fit_lag_bars must be an integer 0-10"),
        ({"fit_lag_bars": 2.0}, "fit_lag_bars must be an integer 0-10"),
        ({"fit_lag_bars": 0, "fit_executor": "process"}, 'fit_executor must be "inline"'),
        ({"fit_executor": "gpu"}, "fit_executor must be one of inline, thread, process"),
        ({"fit_cache_size": -1}, "fit_cache_size must be an integer >= 0"),
    ],
)
def test_fit_runner_config_is_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        KellyGarchConfig(**bad)


@pytest.mark.parametrize("replay", [False, True])
def test_the_worker_process_fits_at_the_priority_it_is_given(replay):
    """The engine waits for the fits, live (before each bar's checkpoint) and in a replay
    (before its next bar): the worker runs at the engine's own priority in both."""
    import os

    plugin = KellyGarch(Cfg(fit_executor="process", fit_lag_bars=1), ("A",))
    if replay:
        plugin.for_replay()
    r = plugin._runner
    try:
        r300 = garch_paths(300, 1, seed=2)[:, 0]  # a fit arch accepts (alpha 0.06)
        [(params, why)] = r.submit([(r300, "constant", None, 200)]).result()
        assert params is not None, why  # answered: the worker is past its start-up
        with open(f"/proc/{r._worker.proc.pid}/stat") as f:
            nice = int(f.read().rsplit(")", 1)[1].split()[16])
        assert nice == os.nice(0), nice
    finally:
        r.close()
    assert r._worker is None


def test_for_replay_replaces_a_worker_already_running_at_the_lowest_priority():
    """A process cannot take back the priority it gave up: a worker started at nice 19 (a
    deliberate `set_nice`) is ended (after answering what it was sent) and the next fits
    start one at nice 0."""
    import os

    plugin = KellyGarch(Cfg(fit_executor="process", fit_lag_bars=1), ("A",))
    r = plugin._runner
    r.set_nice(19)
    r300 = garch_paths(300, 1, seed=2)[:, 0]  # a fit arch accepts (alpha 0.06)

    def niceness() -> int:
        [(params, why)] = r.submit([(r300, "constant", None, 200)]).result()
        assert params is not None, why
        with open(f"/proc/{r._worker.proc.pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    try:
        mine = os.nice(0)
        assert niceness() == min(19, mine + 19)
        first = r._worker.proc
        plugin.for_replay()
        assert first.wait(timeout=30) == 0  # ended cleanly, not killed
        assert niceness() == mine
        assert r._worker.proc is not first
    finally:
        r.close()


def test_the_worker_ends_without_tearing_its_interpreter_down():
    """The worker exits at once when its stdin closes (every answer is flushed by then):
    the interpreter's teardown of numpy, SciPy and arch took about 0.5 s of a core, and a
    worker at nice 19 on a busy machine did not get that within FitWorker.close's 5 s and
    was killed (a CI run, under load, saw -9). Measured in CPU time used after the last
    answer, which does not depend on how busy the machine is."""
    import os
    import subprocess
    import sys

    from tradingd_plugins.sizing.garch_fits import read_frame, write_frame

    proc = subprocess.Popen(
        [sys.executable, "-m", "tradingd_plugins.sizing.garch_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        r300 = garch_paths(300, 1, seed=2)[:, 0]  # a fit arch accepts (alpha 0.06)
        write_frame(proc.stdin, [(r300, "constant", None, 200)])
        [(params, why)] = read_frame(proc.stdout)
        assert params is not None, why  # past its imports and a fit
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        before = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 0
    assert usage.ru_utime + usage.ru_stime - before < 0.15


def test_the_worker_ends_quietly_when_its_parent_is_gone_before_the_answer():
    """A walk-forward fold's process ended by Ctrl-C leaves its worker fitting: its answer
    meets a closed pipe. That printed a BrokenPipeError traceback after `tradingd:
    interrupted`."""
    import subprocess
    import sys

    from tradingd_plugins.sizing.garch_fits import write_frame

    proc = subprocess.Popen(
        [sys.executable, "-m", "tradingd_plugins.sizing.garch_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the parent gone: no reader of the answer, before the job is sent
    r300 = garch_paths(300, 1, seed=2)[:, 0]  # a fit arch accepts (alpha 0.06)
    write_frame(proc.stdin, [(r300, "constant", None, 200)])
    proc.stdin.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("argv", [["--nice"], ["--nice", "x"], ["--nice", "20"], ["--nice", "-1"]])
def test_the_worker_refuses_a_bad_niceness_before_reading_anything(argv, capsys):
    from tradingd_plugins.sizing.garch_worker import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "--nice" in capsys.readouterr().err


async def test_settle_waits_for_fits_in_flight_without_blocking_the_event_loop(monkeypatch):
    import asyncio
    import threading

    import tradingd_plugins.sizing.garch_fits as fits_mod

    release = threading.Event()
    real = fits_mod.fit_many

    def slow(jobs):
        assert release.wait(30), "the test never released the fit"
        return real(jobs)

    monkeypatch.setattr(fits_mod, "fit_many", slow)
    close = prices(garch_paths(305, 2, seed=9))
    cfg = Cfg(garch_window=300, min_fit_obs=200, fit_lag_bars=1, fit_executor="thread")
    p = KellyGarch(cfg, ("S0", "S1"))
    m = Market(close, capacity=301).push(301)
    try:
        p.size(np.full(2, 0.5), m.ctx())  # the initial fits, now blocked in the thread
        settling = asyncio.ensure_future(p.settle())
        ticks = 0
        while ticks < 5:  # the loop runs other tasks while the fits are in flight
            await asyncio.sleep(0)
            ticks += 1
        assert not settling.done() and p._flight[0].pending.reply is not None
        release.set()
        await asyncio.wait_for(settling, 30)
        assert p._flight[0].pending.reply is None  # state() will not wait
        saved = p.state()
        assert [f[0] for f in saved["pending_fits"][0]["fits"]] == [0, 1]
    finally:
        release.set()
        p.close()


def test_a_worker_starts_with_the_first_fits_and_ends_with_a_dropped_plugin():
    """Plugins built only to be checked (preflight, config validation) start no process, and
    a plugin dropped without close() does not leave one behind."""
    import asyncio
    import gc

    close = prices(garch_paths(305, 2, seed=10))
    cfg = Cfg(garch_window=300, min_fit_obs=200, fit_lag_bars=1, fit_executor="process")
    p = KellyGarch(cfg, ("S0", "S1"))
    assert p._runner._worker is None
    m = Market(close, capacity=301).push(301)
    p.size(np.full(2, 0.5), m.ctx())
    proc = p._runner._worker.proc
    assert proc.poll() is None
    # The first fits answered: the worker is past its imports and waits for more input. Its
    # start-up can outlast close()'s 5 s grace under load (it was then killed: -9), which
    # is not what this test is about.
    asyncio.run(p.settle())
    assert proc.poll() is None
    del p
    gc.collect()
    assert proc.wait(timeout=30) == 0  # it ended on its own, at the end of its input


def test_a_plugin_dropped_with_a_fit_in_flight_lets_the_worker_answer_it_and_end():
    """The other case of a dropped plugin: a request asked for and not applied yet. The
    worker answers it, then finds the end of its input and ends by itself (exit code 0),
    within close()'s grace: it is not killed."""
    import asyncio
    import gc
    import select

    close = prices(garch_paths(310, 2, seed=11))
    cfg = Cfg(
        garch_window=300, min_fit_obs=200, fit_lag_bars=1, fit_executor="process", refit_bars=1
    )
    p = KellyGarch(cfg, ("S0", "S1"))
    m = Market(close, capacity=301).push(301)
    p.size(np.full(2, 0.5), m.ctx())
    asyncio.run(p.settle())  # the worker is past its imports (see the test above)
    proc = p._runner._worker.proc
    m.push()
    p.size(np.full(2, 0.5), m.ctx())  # refit_bars = 1: both symbols refit, one bar later
    (batch,) = [b for b in p._flight if b.pending is not None and b.pending.reply is not None]
    assert batch.pending.reply.written.wait(60)  # sent whole: the worker has it to answer
    # Its answer is in the pipe, unread by the plugin (on a busy machine the fit itself can
    # take seconds: close() gives 5 s, which this test is not about).
    assert select.select([proc.stdout], [], [], 120)[0], "the worker never answered"
    assert proc.poll() is None
    del p, batch
    gc.collect()
    assert proc.wait(timeout=30) == 0  # answered, then ended at the end of its input: not killed


def test_sending_a_request_never_waits_for_the_worker_to_read_it():
    """A request (2 MB for 500 symbols) is larger than a pipe's buffer: sending it must not
    stall the bar while the worker is still starting (here: a process that never reads)."""
    import sys

    from tradingd_plugins.sizing.garch_fits import FitWorker, WorkerLost

    w = FitWorker([sys.executable, "-c", "import time; time.sleep(60)"])
    jobs = [(np.full(500, float(i)), "constant", None, 200) for i in range(500)]  # ~2 MB
    reply = w.send(jobs)  # returns although nothing reads the pipe
    second = w.send(jobs[:1])  # queued behind the first (fit_lag_bars > 1)
    assert w._writer.is_alive() and not reply.written.is_set()  # still writing: pipe full
    w.proc.kill()
    w.proc.wait()
    with pytest.raises(WorkerLost, match="is gone"):
        reply.result()
    with pytest.raises(WorkerLost):
        second.result()
    w.close()
    assert not w._writer.is_alive()
    w.close()


@pytest.mark.parametrize(("lag", "refit", "bars"), [(1, 2, 20), (3, 4, 19)])
def test_walkforward_parameters_at_a_bar_include_the_fits_still_in_flight(lag, refit, bars):
    """The walk-forward's fitted-parameter table at a training end applies every batch of
    fits still in flight (asked for on returns up to that bar, in the order asked), so it
    equals the parameters of fits applied on the bar they were asked for (bit for bit when
    a symbol's refits are further apart than the lag: the same warm start)."""
    from tradingd.analysis.walkforward_run import sizing_params

    close = prices(garch_paths(335, 3, seed=29, alpha=0.1, beta=0.85, scale=[1.0, 1.5, 2.0]))
    kw = {
        "garch_window": 300,
        "min_fit_obs": 200,
        "refit_bars": refit,
        "fit_scope": "all",
        "initial_fit": False,
    }
    now_p, _ = _run(Cfg(**kw), close, bars)
    lagged, _ = _run(Cfg(**kw, fit_lag_bars=lag, fit_executor="thread"), close, bars)
    state = lagged.state()
    # one batch (one symbol's refit) asked on each of the last `lag` bars, none applied yet
    assert len(state["pending_fits"]) == lag
    got = sizing_params(lagged, state)["garch"]
    want = sizing_params(now_p, now_p.state())["garch"]
    assert got == want
    # and not vacuously: without the batches in flight the table is an older one
    older = sizing_params(lagged, {**state, "pending_fits": None})["garch"]
    assert older != want
    lagged.close()


def test_the_plugin_imports_arch_only_to_fit():
    """Importing arch takes seconds; an engine whose fits come from the cache or the worker
    process never needs it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tradingd_plugins.sizing.kelly_garch\n"
        "assert 'arch' not in sys.modules, 'arch imported with the plugin'\n"
        "from tradingd_plugins.sizing.garch import try_garch_fit\n"
        "import numpy as np\n"
        "r = np.random.default_rng(0).normal(0, 0.01, 300)\n"
        "try_garch_fit(r)\n"
        "assert 'arch' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_without_arch_the_plugin_stops_at_start_up_and_fits_raise(monkeypatch):
    """arch is imported where a fit is made: a missing package must still stop the run at
    start-up, and a broken one raise at the fit, never pass as a failed fit (an EWMA
    fallback that would change the sizing silently)."""
    import builtins
    import importlib.util

    real_find, real_import = importlib.util.find_spec, builtins.__import__
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "arch" else real_find(n, *a)
    )
    with pytest.raises(ImportError, match="pip install arch"):
        KellyGarch(KellyGarchConfig(), ("A", "B"))
    monkeypatch.undo()

    def broken(name, *a, **k):
        if name.startswith("arch"):
            raise ImportError("arch is broken")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", broken)
    r = np.random.default_rng(1).normal(0, 0.01, 300)
    with pytest.raises(ImportError, match="arch is broken"):
        try_garch_fit(r)


def test_a_flipping_kelly_source_is_heard_without_a_line_per_flip(monkeypatch):
    """The source flips each time the closed trades in the window cross min_trades: a
    quick start logged 159 `sizing.kelly_source` lines of its 180."""
    cfg = Cfg(volatility="none")
    p = KellyGarch(cfg, ("A",))
    flips = iter(["trades", "prior"] * 60)  # 120 changes
    monkeypatch.setattr(KellyGarch, "kelly_inputs", property(lambda self: (0.55, 1.5, next(flips))))
    with capture_logs() as logs:
        for _ in range(120):
            p.size(np.array([0.5]), flat_ctx(("A",), T0, [0], [0], [0.0]))
    heard = [e["changes_so_far"] for e in logs if e["event"] == "sizing.kelly_source"]
    assert heard == [1, 10, 100]


def test_fits_the_worker_cannot_take_go_to_a_thread_not_the_event_loop(monkeypatch):
    """A worker that could not be started or written to (killed when out of memory): its
    fits were made inline, in submit, which runs on the event loop: 413 fits blocked it for
    6 s, and /health with it."""
    import threading

    from tradingd_plugins.sizing import garch_fits

    def cannot_start(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(12, "Cannot allocate memory")

    where: list[str] = []

    def recording(jobs):  # type: ignore[no-untyped-def]
        where.append(threading.current_thread().name)
        return [(None, "recorded")] * len(jobs)

    monkeypatch.setattr(garch_fits, "FitWorker", cannot_start)
    monkeypatch.setattr(garch_fits, "fit_many", recording)
    runner = garch_fits.FitRunner("process")
    try:
        with capture_logs() as logs:
            reply = runner.submit([("job",)])  # type: ignore[list-item]
        assert reply.result() == [(None, "recorded")]
        assert where and where[0] != threading.current_thread().name
        assert where[0].startswith("garch-fit")
        (lost,) = [e for e in logs if e["event"] == "sizing.garch_worker_lost"]
        assert lost["action"] == "fitting in a thread"
    finally:
        runner.close()


# ------------------------------------------------------------- a crash across missing bars


def _gap_then_crash(gap, seed=4, after=6):
    """Closes of S0, with no bar for `gap` days that reopens 30% lower, and S1, the same
    stock flat on those days (the closes the interior fill gives S0); then both go on alike."""
    base = prices(garch_paths(320, 1, seed=seed))[:, 0]  # 321 closes
    last = base[-1]
    tail = last * 0.7 * np.exp(np.cumsum(np.full(after, 0.001)))
    s1 = np.r_[base, np.full(gap, last), tail]
    s0 = np.r_[base, np.full(gap, np.nan), tail]
    return np.column_stack([s0, s1])


@pytest.mark.parametrize("gap", [1, 3])
@pytest.mark.parametrize("volatility", ["ewma", "garch"])
def test_a_crash_after_missing_bars_sizes_as_the_crash_without_the_gap(volatility, gap):
    """Before, both returns around a missing bar were NaN: a stock reopening 30% lower kept
    its calm EWMA vol (0.13) and its target at the 5% cap (the same crash without the gap:
    vol 1.4, target 0.7%). Now the move counts as one return out of the gap, and the
    recursion (bar by bar: S0's return into the gap is taken at the reopen) ends where S1's
    does, bit for bit, from the reopen on."""
    close = _gap_then_crash(gap)
    cfg = Cfg(volatility=volatility, garch_window=300, min_fit_obs=250, refit_bars=1000)
    # One plugin each: the same fit schedule (in one universe, S1 would refit a bar later).
    p0, p1 = KellyGarch(cfg, ("S0",)), KellyGarch(cfg, ("S1",))
    m0, m1 = (Market(close[:, [i]], capacity=301).push(315) for i in (0, 1))
    score = np.array([0.6])
    p0.size(score, m0.ctx())
    p1.size(score, m1.ctx())
    if volatility == "garch":
        assert p0.methods == {"S0": "garch"} and p1.methods == {"S1": "garch"}
        assert p0.garch_params("S0") == p1.garch_params("S1")
    calm = math.sqrt(p0.forecast_variance[0] * 252)
    while m0.t < len(close) - 1:
        m0.push(), m1.push()
        w0 = p0.size(score, m0.ctx(weights=[0.05]))
        w1 = p1.size(score, m1.ctx(weights=[0.05]))
        if m0.t > 320 + gap:  # reopened
            np.testing.assert_array_equal(p0.forecast_variance, p1.forecast_variance)
            np.testing.assert_array_equal(w0, w1)
        if m0.t == 321 + gap:
            vol = math.sqrt(p0.forecast_variance[0] * 252)
            # 0.15 vol before; over 1.0 now, a fifth of the cap or so (0.7% for vol 1.4)
            assert calm < 0.2 and vol > 1.0 and w0[0] < 0.25 * 0.05, (calm, vol, w0)


def test_a_restart_that_catches_up_across_a_gap_gives_the_uninterrupted_variance():
    """The recursion takes a gap's returns at the reopen; a restarted process that catches
    up over the gap and the reopen at once takes the same returns in the same order."""
    close = _gap_then_crash(3, after=12)[:, :1]
    cfg = Cfg(garch_window=300, min_fit_obs=250, refit_bars=1000, fit_scope="all")
    a = KellyGarch(cfg, ("S0",))
    m = Market(close, capacity=301).push(320)
    score = np.array([0.6])
    a.size(score, m.ctx())
    b = KellyGarch(cfg, ("S0",))
    b.restore(json.loads(json.dumps(a.state())))
    while m.t < 326:  # the gap is bars 321-323, the reopen 324
        m.push()
        a.size(score, m.ctx())
    with capture_logs() as logs:
        b.size(score, m.ctx())
    assert not any(e["event"] == "sizing.variance_resync" for e in logs)
    np.testing.assert_array_equal(b.forecast_variance, a.forecast_variance)
    assert math.sqrt(a.forecast_variance[0] * 252) > 0.5  # the crash counted


@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_fits_lagged_across_a_gap_equal_same_bar_fits_once_applied(executor):
    """S0 refits at bars 319 (initial), 325 and 331 (refit_bars 6); lagged 3 bars, a fit
    applies at 322 (inside the gap: carried over rows the gap holds) and 328. Once applied,
    the variance is bit for bit that of fits applied on the bar that asked."""
    close = _gap_then_crash(3, after=12)
    kw = {"garch_window": 300, "min_fit_obs": 250, "refit_bars": 6, "fit_scope": "all"}
    now = KellyGarch(Cfg(**kw), ("S0", "S1"))
    lagged = KellyGarch(Cfg(**kw, fit_lag_bars=3, fit_executor=executor), ("S0", "S1"))
    m = Market(close, capacity=301).push(320)
    score = np.array([0.6, 0.6])
    compared = 0
    while True:
        w0, w1 = now.size(score, m.ctx()), lagged.size(score, m.ctx())
        if m.t in (322, 323, 324, 328, 329, 330):
            assert now.methods["S0"] == lagged.methods["S0"]
            assert m.t > 324 or now.methods["S0"] == "garch"  # after the crash: a fallback
            np.testing.assert_array_equal(lagged.forecast_variance[0], now.forecast_variance[0])
            np.testing.assert_array_equal(w1[0], w0[0])
            compared += 1
        if m.t == len(close) - 1:
            break
        m.push()
    lagged.close()
    assert compared == 6


@pytest.mark.parametrize("cut", [322, 325])
def test_no_lookahead_targets_at_t_do_not_change_when_the_bars_after_t_are_cut(cut):
    """A history cut inside S0's gap (322: the gap is its end, NaN, no later close assumed)
    or just after the reopen (325) sizes every bar it has as the whole history does."""
    close = _gap_then_crash(3, after=8)
    kw = {"garch_window": 300, "min_fit_obs": 250, "refit_bars": 3, "fit_scope": "all"}

    def run(c):
        p = KellyGarch(Cfg(**kw), ("S0", "S1"))
        m = Market(c, capacity=301).push(316)
        out = [(p.size(np.array([0.6, 0.6]), m.ctx()), p.forecast_variance)]
        while m.t < len(c) - 1:
            m.push()
            out.append((p.size(np.array([0.6, 0.6]), m.ctx()), p.forecast_variance))
        return out

    full, short = run(close), run(close[: cut + 1])
    assert len(short) == cut + 1 - 315 and len(full) > len(short)
    for (w0, v0), (w1, v1) in zip(short, full, strict=False):
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(v0, v1)


def test_a_degenerate_fit_in_an_earlier_versions_checkpoint_is_not_used():
    """Fits with alpha below MIN_ALPHA are refused since 2026-12-06; a checkpoint written
    before held them, and the restarted daemon used them until the next refit."""
    from structlog.testing import capture_logs

    from tradingd_plugins.sizing.garch import MIN_ALPHA

    cfg = Cfg(garch_window=150, min_fit_obs=120, refit_bars=50, min_trades=5)
    a, syms, gen = _sized_until(cfg, 4, 230)
    saved = json.loads(json.dumps(a.state(), allow_nan=False))
    on_garch = [i for i, s in enumerate(syms) if a.methods[s] == "garch"]
    assert on_garch
    i = on_garch[0]
    saved["alpha"][i] = MIN_ALPHA / 1000  # as an earlier version accepted it
    b = KellyGarch(cfg, syms)
    with capture_logs() as logs:
        b.restore(saved)
    assert b.methods[syms[i]] == "none"
    [said] = [e for e in logs if e["event"] == "sizing.garch_degenerate_restored"]
    assert said["symbols"] == [syms[i]]
    score, ctx = next(gen)
    b.size(score, ctx)
    assert b.methods[syms[i]] == "ewma" and np.isfinite(b.forecast_variance[i])
    assert [b.methods[s] for s in syms if s != syms[i]] == [
        a.methods[s] for s in syms if s != syms[i]
    ]


def test_the_worker_fits_without_loading_matplotlib_or_writing_to_stderr(tmp_path):
    """Sandbox trial: under systemd (HOME read-only) the worker's `import arch.univariate`
    loaded matplotlib, which printed "mkdir -p failed for path .../.config/matplotlib" and
    "Matplotlib created a temporary cache directory" into the daemon's JSON journal. A HOME
    below a file stands for the read-only one here."""
    import os
    import subprocess
    import sys

    from tradingd_plugins.sizing.garch_fits import read_frame, write_frame

    (tmp_path / "file").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path / "file" / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradingd_plugins.sizing.garch_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        r300 = garch_paths(300, 1, seed=2)[:, 0]  # a fit arch accepts (alpha 0.06)
        write_frame(proc.stdin, [(r300, "constant", None, 200)])
        [(params, why)] = read_frame(proc.stdout)
        assert params is not None, why  # arch fits without matplotlib
        proc.stdin.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert err == "", err
