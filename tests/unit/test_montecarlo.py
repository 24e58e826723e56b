"""Monte Carlo (issue 11 point 3): bootstrap of daily returns (IID and stationary block, from
`arch`) and reshuffled trade order.

Independent checks: path statistics against empyrical-reloaded; the chunks' draws against
`arch.bootstrap` driven by the documented SeedSequence streams; the IID bootstrap's spread of
the Sharpe ratio against Lo's (2002) IID-normal standard error; the trade-order paths against
all orders of a tiny example enumerated by hand; the automatic block length against
`arch.bootstrap.optimal_block_length`. Results must not depend on where or in which order the
chunks ran (a process pool, a reversed map).
"""

from __future__ import annotations

import itertools
import json
import math
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from arch.bootstrap import IIDBootstrap, StationaryBootstrap, optimal_block_length
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.analysis import montecarlo as mc
from tradingd.analysis.montecarlo import MonteCarloConfig, MonteCarloSimulator, simulate
from tradingd.analysis.performance import max_drawdown, per_bar_rate, sharpe_ratio
from tradingd.core.errors import ConfigError
from tradingd.core.types import Fill, Side

RF_BAR = per_bar_rate(0.02)


@pytest.fixture(scope="module")
def returns() -> np.ndarray:
    return np.random.default_rng(7).normal(0.0004, 0.012, 750)


def small(**kw) -> MonteCarloConfig:
    return MonteCarloConfig(**{"paths": 200, "chunk_size": 64, **kw})


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_mapping():
    c = MonteCarloConfig()
    assert c.paths >= 1000 and c.block_length == 0 and c.methods == mc.DEFAULT_METHODS
    assert c.risk_free_rate == 0.02 and c.bars_a_year == 252
    assert c.periods_per_year is None  # the run's own, else 252
    c2 = MonteCarloConfig.from_mapping({"paths": 5000, "seed": 9, "methods": ["iid"]})
    assert (c2.paths, c2.seed, c2.methods) == (5000, 9, ("iid",))


@pytest.mark.parametrize(
    "table, word",
    [
        ({"pathz": 10}, "pathz"),
        ({"paths": "many"}, "paths"),
        ({"paths": 0}, "paths"),
        ({"block_length": 0.5}, "block_length"),
        ({"methods": ["iid", "jackknife"]}, "methods"),
        ({"methods": []}, "methods"),
        ({"seed": -1}, "seed"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"paths": True}, "paths"),
    ],
)
def test_config_rejects_bad_tables(table, word):
    with pytest.raises(ConfigError, match=word):
        MonteCarloConfig.from_mapping(table)


# ----------------------------------------------------------------------------- statistics


def test_path_statistics_match_empyrical(returns):
    rng = np.random.default_rng(1)
    paths = np.vstack([returns, rng.permutation(returns), rng.normal(-0.001, 0.02, 750)])
    s = mc.path_statistics(paths, RF_BAR, 252.0)
    for i, r in enumerate(paths):
        assert s["final_return"][i] == pytest.approx(ep.cum_returns_final(r), rel=1e-10)
        assert s["sharpe"][i] == pytest.approx(ep.sharpe_ratio(r, risk_free=RF_BAR), rel=1e-10)
        assert s["max_drawdown"][i] == pytest.approx(-ep.max_drawdown(r), rel=1e-10)
        # and the analyzer's own functions (drawdown from the initial capital)
        assert s["max_drawdown"][i] == pytest.approx(max_drawdown(np.cumprod(1 + r), 1.0))
        assert s["sharpe"][i] == pytest.approx(sharpe_ratio(r, RF_BAR), rel=1e-12)


def test_undefined_statistics_are_nan_not_errors():
    s = mc.path_statistics(np.array([[0.01], [0.0]]))
    assert np.isnan(s["sharpe"]).all()  # one bar: no deviation
    assert s["final_return"][0] == pytest.approx(0.01)
    flat = mc.path_statistics(np.zeros((1, 5)))
    assert math.isnan(flat["sharpe"][0]) and flat["max_drawdown"][0] == 0.0
    out = simulate([0.01], small(methods=("iid",)))
    assert math.isnan(out["methods"]["iid"]["sharpe"]["mean"])


# ----------------------------------------------------------------------------- the bootstraps


def test_chunks_draw_arch_bootstraps_from_spawned_seed_sequences(returns):
    cfg = small(block_length=5.0, methods=("iid", "stationary"))
    tasks = mc.plan_chunks(mc.monte_carlo_input(returns), cfg)
    assert [t.paths for t in tasks if t.method == "iid"] == [64, 64, 64, 8]
    for task in (tasks[1], tasks[-1]):
        # The documented stream: SeedSequence(seed).spawn(..)[method].spawn(..)[chunk]
        seq = np.random.SeedSequence(cfg.seed).spawn(4)[mc.METHODS.index(task.method)]
        rng = np.random.default_rng(seq.spawn(task.chunk + 1)[task.chunk])
        if task.method == "iid":
            bs = IIDBootstrap(returns, seed=rng)
        else:
            bs = StationaryBootstrap(5.0, returns, seed=rng)
        draws = np.array([d[0][0] for d in bs.bootstrap(task.paths)])
        want = mc.path_statistics(draws, cfg.rf_bar)
        got = mc.simulate_chunk(task)
        for key in mc.STATISTICS:
            np.testing.assert_array_equal(getattr(got, key), want[key])


def test_same_seed_same_numbers_other_seed_other_numbers(returns):
    a = simulate(returns, small())
    b = simulate(returns, small())
    c = simulate(returns, small(seed=2))
    assert json.dumps(a) == json.dumps(b)
    assert a["methods"]["iid"]["sharpe"]["mean"] != c["methods"]["iid"]["sharpe"]["mean"]


def _reversed_map(fn, tasks):
    """Runs the chunks last to first and hands the results back in that order."""
    return [fn(t) for t in reversed(list(tasks))]


def test_results_do_not_depend_on_where_or_in_which_order_chunks_ran(returns):
    cfg = small(paths=300, chunk_size=50)
    pnls = np.random.default_rng(3).normal(20, 300, 40)
    data = mc.monte_carlo_input(returns, trade_pnls=pnls, initial_capital=1e4)
    serial = mc.simulate_with_paths(data, cfg)
    shuffled = mc.simulate_with_paths(data, cfg, map_fn=_reversed_map)
    with ProcessPoolExecutor(2) as pool:
        remote = mc.simulate_with_paths(data, cfg, map_fn=pool.map)
    for other in (shuffled, remote):
        assert json.dumps(other[0]) == json.dumps(serial[0])
        for method in cfg.methods:
            for key in mc.STATISTICS:
                np.testing.assert_array_equal(other[1][method][key], serial[1][method][key])


def test_combine_rejects_missing_or_duplicate_chunks(returns):
    tasks = mc.plan_chunks(mc.monte_carlo_input(returns), small(methods=("iid",)))
    results = [mc.simulate_chunk(t) for t in tasks]
    with pytest.raises(ValueError, match="chunks"):
        mc.combine(results[:1] + results[2:])
    with pytest.raises(ValueError, match="chunks"):
        mc.combine(results + results[:1])


def test_iid_bootstrap_spread_of_sharpe_matches_lo_standard_error():
    r = np.random.default_rng(11).normal(0.0005, 0.01, 1000)
    cfg = MonteCarloConfig(paths=2000, methods=("iid",), risk_free_rate=0.0)
    _, values = mc.simulate_with_paths(r, cfg)
    sr = float(np.mean(r) / np.std(r, ddof=1))
    lo_se = math.sqrt((1 + sr**2 / 2) / r.size) * math.sqrt(252)  # Lo (2002), IID normal
    s = values["iid"]["sharpe"]
    assert np.std(s, ddof=1) == pytest.approx(lo_se, rel=0.08)
    assert np.mean(s) == pytest.approx(sr * math.sqrt(252), abs=0.1 * lo_se)


def test_stationary_bootstrap_keeps_the_dependence_iid_destroys():
    rng = np.random.default_rng(5)
    e = rng.normal(0, 0.01, 2000)
    r = np.empty_like(e)
    r[0] = e[0]
    for t in range(1, e.size):  # AR(1), phi = 0.6: trends make deep drawdowns
        r[t] = 0.6 * r[t - 1] + e[t]
    block = mc.automatic_block_length(r)
    assert block == pytest.approx(float(optimal_block_length(r)["stationary"].iloc[0]))
    assert block > 5
    _, values = mc.simulate_with_paths(
        r, MonteCarloConfig(paths=400, methods=("iid", "stationary"), risk_free_rate=0.0)
    )
    iid, sb = values["iid"]["max_drawdown"], values["stationary"]["max_drawdown"]
    # Variance of a sum grows by (1 + phi) / (1 - phi) = 4 with the dependence kept.
    assert np.median(sb) > 1.5 * np.median(iid)
    observed = max_drawdown(np.cumprod(1 + r), 1.0)
    # The run's own drawdown is less of an outlier among the paths that keep its dependence.
    assert np.mean(iid >= observed) < np.mean(sb >= observed)


def test_white_noise_block_length_is_at_least_one_bar():
    assert mc.automatic_block_length(np.random.default_rng(2).normal(0, 1, 500)) >= 1.0
    assert mc.automatic_block_length([0.01] * 3) == 1.0


def test_permutation_paths_are_reorderings_of_the_days(returns):
    cfg = MonteCarloConfig(paths=50, methods=("permutation",), risk_free_rate=0.0)
    _, values = mc.simulate_with_paths(returns, cfg)
    v = values["permutation"]
    np.testing.assert_allclose(v["final_return"], np.prod(1 + returns) - 1, rtol=1e-12)
    sr = np.mean(returns) / np.std(returns, ddof=1) * math.sqrt(252)
    np.testing.assert_allclose(v["sharpe"], sr, rtol=1e-10)
    assert np.std(v["max_drawdown"]) > 0.01  # the order is what moves the drawdown
    assert "permutation" not in MonteCarloConfig().methods  # opt-in


# ----------------------------------------------------------------------------- trade order


def _hand_max_drawdown(pnls, capital):
    equity = capital + np.cumsum(np.r_[0.0, pnls])
    peak = np.maximum.accumulate(equity)
    return float(np.max(1 - equity / peak))


def test_trade_order_paths_are_orders_of_the_round_trips():
    pnls = np.array([10.0, -20.0, 5.0, -7.0])
    want = {round(_hand_max_drawdown(p, 100.0), 12) for p in itertools.permutations(pnls)}
    cfg = MonteCarloConfig(paths=600, methods=("trade_order",), chunk_size=100)
    data = mc.monte_carlo_input([0.0, 0.0], trade_pnls=pnls, initial_capital=100.0)
    summary, values = mc.simulate_with_paths(data, cfg)
    got = values["trade_order"]
    assert {round(v, 12) for v in got["max_drawdown"]} == want  # 600 paths hit all 24 orders
    np.testing.assert_allclose(got["final_return"], pnls.sum() / 100.0, rtol=0, atol=1e-14)
    t = summary["methods"]["trade_order"]
    assert t["final_return"]["observed"] == pytest.approx(-0.12)
    assert t["max_drawdown"]["observed"] == pytest.approx(_hand_max_drawdown(pnls, 100.0))
    assert t["sharpe_is_per_trade"] is True
    # per-trade Sharpe of the observed order, by hand
    eq = 100.0 + np.cumsum(np.r_[0.0, pnls])
    per = pnls / eq[:-1]
    assert t["sharpe"]["observed"] == pytest.approx(np.mean(per) / np.std(per, ddof=1))


def _fill(i, sym, side, qty, px, comm=0.0):
    t = datetime(2020, 1, 2, tzinfo=UTC) + timedelta(days=i)
    return Fill(f"f{i}#1", f"f{i}", sym, side, qty, px, comm, 0.0, t, px)


def test_a_run_record_gives_its_returns_and_round_trips():
    times = pd.date_range("2020-01-02", periods=6, freq="D", tz="UTC")
    equity = pd.Series([1000.0, 1010, 1005, 1020, 1000, 1030], index=times)
    fills = [
        _fill(0, "A", Side.BUY, 10, 10.0),
        _fill(1, "A", Side.SELL, 10, 12.0),  # +20
        _fill(2, "B", Side.BUY, 5, 20.0),
        _fill(3, "B", Side.SELL, 5, 18.0),  # -10
    ]
    results = {"equity_curve": equity, "initial_capital": 1000.0, "fills": fills}
    out = MonteCarloSimulator(small()).run(results)
    assert out["bars"] == 6 and out["round_trips"] == 2
    obs = out["methods"]["iid"]["final_return"]["observed"]
    assert obs == pytest.approx(0.03)
    t = out["methods"]["trade_order"]
    # The round trips make +10; the other +20 of the curve (no fill explains it) is the last
    # trade, so the trade paths end where the run did
    assert out["unclosed_pnl"] == pytest.approx(20.0)
    assert t["final_return"]["mean"] == pytest.approx(0.03)
    assert t["paths"] == 200
    # No round trip: the method is reported as skipped, not as numbers
    bare = MonteCarloSimulator(small()).run({"equity_curve": equity, "initial_capital": 1e3})
    assert bare["methods"]["trade_order"]["paths"] == 0


def test_a_flip_splits_its_commission_between_the_two_round_trips():
    fills = [
        _fill(0, "A", Side.BUY, 10, 10.0, comm=1.0),
        _fill(1, "A", Side.SELL, 15, 12.0, comm=1.5),  # closes the long, opens a short of 5
        _fill(2, "A", Side.BUY, 5, 11.0, comm=0.5),
    ]
    # Long: +2 a share on 10, less the entry's 1 and two thirds of the flip's 1.5.
    # Short: +1 a share on 5, less the other third of 1.5 and the cover's 0.5.
    np.testing.assert_allclose(mc.round_trip_pnls_after_costs(fills), [18.0, 4.0])


def test_the_trade_paths_end_at_the_run_s_equity():
    """Entry commissions, a dividend and a position still open at the end are the run's PnL
    too: the trade order's observed final return was the closed trips' alone (+1.5% on the
    quick start run against its +0.15%) yet was labelled as the run's."""
    times = pd.date_range("2020-01-02", periods=5, freq="D", tz="UTC")
    fills = [
        _fill(0, "A", Side.BUY, 10, 10.0, comm=1.0),
        _fill(1, "A", Side.SELL, 10, 12.0, comm=1.0),  # +20 less 2 of commissions
        _fill(2, "B", Side.BUY, 5, 20.0, comm=1.0),  # still held at 22 at the end
        _fill(3, "C", Side.BUY, 4, 5.0),
        _fill(3, "C", Side.SELL, 4, 4.0),  # -4
    ]
    # 1000 + 18 - 4 - 101 (B's cost) + 110 (B's value) + 2 (a dividend on B) = 1025
    equity = pd.Series([1000.0, 1010, 1000, 1020, 1025], index=times)
    results = {"equity_curve": equity, "initial_capital": 1000.0, "fills": fills}
    out = MonteCarloSimulator(small(methods=("trade_order",))).run(results)
    assert out["round_trips"] == 2
    assert out["unclosed_pnl"] == pytest.approx(11.0)  # 110 - 101 + 2
    t = out["methods"]["trade_order"]["final_return"]
    assert t["observed"] == pytest.approx(0.025, abs=1e-12)
    assert t["p5"] == pytest.approx(0.025, abs=1e-12) and t["p95"] == pytest.approx(0.025)


def test_a_run_with_no_round_trip_has_no_trade_order_to_shuffle():
    times = pd.date_range("2020-01-02", periods=3, freq="D", tz="UTC")
    equity = pd.Series([1000.0, 1005, 1012], index=times)
    fills = [_fill(0, "B", Side.BUY, 5, 20.0, comm=1.0)]  # bought and held
    out = MonteCarloSimulator(small()).run(
        {"equity_curve": equity, "initial_capital": 1e3, "fills": fills}
    )
    assert out["round_trips"] == 0 and out["methods"]["trade_order"]["paths"] == 0


# ----------------------------------------------------------------------------- output, input


def test_summary_has_the_issue_statistics_and_is_json(returns):
    out = simulate(returns, small(), keep_paths=True)
    for method in ("iid", "stationary"):
        m = out["methods"][method]
        for key in ("final_return", "sharpe", "max_drawdown"):
            d = m[key]
            assert d["p5"] <= d["p50"] <= d["p95"]
            assert set(d) >= {"mean", "std", "p5", "p95", "observed", "observed_rank"}
            v = np.asarray(m["values"][key])
            assert d["mean"] == pytest.approx(np.mean(v))
            assert d["p5"] == pytest.approx(np.percentile(v, 5))
            assert d["std"] == pytest.approx(np.std(v, ddof=1))
    assert out["block_length_source"] == "politis-white"
    json.loads(json.dumps(out))
    assert simulate(returns, small(block_length=7.0))["block_length"] == 7.0


@pytest.mark.parametrize(
    "bad, word",
    [
        ([0.01, float("nan")], "NaN"),
        (np.zeros((3, 3)), "one-dimensional"),
        ([0.01, -1.5], "below -1"),
        ({"no": "curve"}, "equity_curve"),
        (42, "returns"),
    ],
)
def test_bad_input_is_a_value_error(bad, word):
    with pytest.raises(ValueError, match=word):
        simulate(bad, small())


def test_trade_pnls_need_the_capital():
    with pytest.raises(ValueError, match="initial_capital"):
        mc.monte_carlo_input([0.01, 0.02], trade_pnls=[5.0, -3.0])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-0.2, 0.2, allow_nan=False), min_size=2, max_size=60),
    st.integers(0, 2**32 - 1),
)
def test_invariants_hold_for_any_returns(r, seed):
    out = simulate(r, MonteCarloConfig(paths=40, chunk_size=16, seed=seed))
    for method in ("iid", "stationary"):
        d = out["methods"][method]
        dd = d["max_drawdown"]
        assert 0.0 <= dd["p5"] <= dd["p95"] <= 1.0
        fr = d["final_return"]
        assert -1.0 <= fr["p5"] <= fr["p50"] <= fr["p95"]
        for key in ("final_return", "sharpe", "max_drawdown"):
            assert not any(isinstance(v, float) and math.isinf(v) for v in d[key].values())


def test_a_few_constant_paths_leave_the_sharpe_summary_and_interval_defined():
    """A strategy flat most days (6 trading days of 250): one bootstrap path of only zeros
    has no Sharpe ratio, and that one path made the whole stationary Sharpe summary and the
    validator's confidence interval NaN. They are summarised over the defined paths, with
    the count of the others; too many undefined (over 5%) and the summary is NaN."""
    from tradingd.analysis.validation import StatisticalValidator, ValidationConfig

    rng = np.random.default_rng(5)
    r = np.zeros(250)
    r[rng.choice(250, 6, replace=False)] = rng.normal(0.01, 0.02, 6)
    cfg = MonteCarloConfig(paths=1000, risk_free_rate=0.0, methods=("iid", "stationary"))
    summary, values = mc.simulate_with_paths(r, cfg)
    sharpe = values["stationary"]["sharpe"]
    undefined = int(np.isnan(sharpe).sum())
    assert 0 < undefined <= 50  # the case: a few constant paths
    row = summary["methods"]["stationary"]["sharpe"]
    assert row["undefined_paths"] == undefined
    finite = sharpe[np.isfinite(sharpe)]
    assert row["p5"] == pytest.approx(np.percentile(finite, 5.0))
    assert row["p95"] == pytest.approx(np.percentile(finite, 95.0))
    out = StatisticalValidator(ValidationConfig(risk_free_rate=0.0, paths=1000)).bootstrap_analysis(
        r
    )
    lo, hi = out["sharpe_confidence_interval"]
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
    # Mostly undefined: no summary.
    assert math.isnan(mc._describe(np.array([np.nan] * 10 + [1.0] * 90))["p5"])


def test_a_statistic_the_method_cannot_change_has_no_rank():
    """A permutation keeps the final return and the Sharpe ratio, a trade-order shuffle the
    final return: their paths differ by rounding only, and ranks of 0.36 or 1.0 were
    reported beside them as if they meant something."""
    rng = np.random.default_rng(1)
    pnl, r = rng.normal(50, 400, 80), rng.normal(0.0003, 0.01, 300)
    inp = mc.monte_carlo_input(r, trade_pnls=pnl, initial_capital=1e5)
    cfg = MonteCarloConfig(paths=300, methods=("trade_order", "permutation"), risk_free_rate=0.0)
    summary, _ = mc.simulate_with_paths(inp, cfg)
    ranks = {
        (m, k): summary["methods"][m][k]["observed_rank"]
        for m in ("trade_order", "permutation")
        for k in ("final_return", "sharpe", "max_drawdown")
    }
    assert math.isnan(ranks["permutation", "final_return"])
    assert math.isnan(ranks["permutation", "sharpe"])
    assert math.isnan(ranks["trade_order", "final_return"])
    assert 0.0 <= ranks["permutation", "max_drawdown"] <= 1.0
    assert 0.0 <= ranks["trade_order", "max_drawdown"] <= 1.0


def test_the_automatic_block_keeps_volatility_clustering():
    """Politis & White's block is chosen for the mean, which returns without autocorrelation
    give 1 bar: the 'stationary' bootstrap was then the IID one and dropped the clustering
    that decides drawdowns (the docs promised it kept it). The squares' block counts too."""
    rng = np.random.default_rng(3)
    n, omega, alpha, beta = 1260, 2e-6, 0.10, 0.88  # GARCH(1,1): uncorrelated, clustered
    r, var = np.empty(n), omega / (1 - alpha - beta)
    for t in range(n):
        r[t] = np.sqrt(var) * rng.standard_normal()
        var = omega + alpha * r[t] ** 2 + beta * var
    levels_only = float(optimal_block_length(r)["stationary"].iloc[0])
    block = mc.automatic_block_length(r)
    assert levels_only < 3 and block > 10
    assert block == pytest.approx(float(optimal_block_length(r * r)["stationary"].iloc[0]))

    def lag1(x: np.ndarray) -> float:
        s = x * x
        return float(np.corrcoef(s[:-1], s[1:])[0, 1])

    cfg = MonteCarloConfig(paths=200, methods=("stationary",), risk_free_rate=0.0)
    bs = StationaryBootstrap(block, r, seed=np.random.default_rng(9))
    kept = np.mean([lag1(data[0][0]) for data in bs.bootstrap(200)])
    assert kept > 0.5 * lag1(r)  # the paths keep most of the clustering
    assert mc.plan_chunks(mc.monte_carlo_input(r), cfg)[0].block_length == block
