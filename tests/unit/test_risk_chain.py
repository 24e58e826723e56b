"""The default risk chain as a whole (issue 10, point 5): whatever the signals, prices and the
book, the targets that leave the chain breach no limit of the specification.

The chain is the one `config/default.toml` configures, and `config/backtest.toml`'s (the same
rules and limits, the count after the rules that refuse candidates), each loaded by name
through the plugin loader, with a sector map written here, run in its order on random
targets, current weights and return histories. The limits are then measured by this test's
own code, written apart from the plugins: position size, position count, gross exposure,
gross per sector, the historical one-day 95% VaR (a plain sort), and the correlation of
every new entry with every other position (numpy.corrcoef over each pair's common days).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_context import closes_from_returns, make_context

from tradingd.config import load_config
from tradingd.engine.plugins import load_plugin

ROOT = Path(__file__).resolve().parents[2]
N = 16
SYMS = tuple(f"S{i:02d}" for i in range(N))
SECTORS = {s: f"X{i % 3}" for i, s in enumerate(SYMS)}  # three sectors of 5-6 names
DAYS = 260


CHAINS = ("default.toml", "backtest.toml")


def chain(tmp: Path, name: str = "default.toml"):
    csv = tmp / "sectors.csv"
    if not csv.exists():
        csv.write_text("symbol,sector\n" + "".join(f"{s},{x}\n" for s, x in SECTORS.items()))
    files = [ROOT / "config/default.toml"]
    if name != "default.toml":
        files.append(ROOT / "config" / name)
    config = load_config(files, env={})
    plugins = []
    for i, spec in enumerate(config.risk):
        if spec.name == "sector_exposure":
            spec = type(spec)(spec.name, spec.weight, {**spec.params, "sectors_csv": str(csv)})
        plugins.append(load_plugin(spec, "risk", SYMS, f"risk[{i}]"))
    return config, plugins


def var_of(w: np.ndarray, returns: np.ndarray, confidence: float) -> float:
    """Historical VaR: the ceil(n * 5%)-th worst day of the book's P&L, as a loss."""
    pnl = sorted(float(np.dot(day, w)) for day in returns)
    k = max(math.ceil(len(pnl) * (1 - confidence) - 1e-9), 1) - 1
    return -pnl[k]


def pair_corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~np.isnan(a) & ~np.isnan(b)
    x, y = a[ok], b[ok]
    if x.std() < 1e-12 or y.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@st.composite
def markets(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # A common factor plus noise: correlations from ~0 to ~0.95, volatilities 0.5%-4% a day.
    beta = rng.uniform(0.0, 1.5, N)
    vol = rng.uniform(0.005, 0.04, N)
    market = rng.normal(0, 0.01, DAYS)
    returns = beta * market[:, None] + vol * rng.standard_normal((DAYS, N))
    returns = np.clip(returns, -0.5, 0.5)
    targets = np.round(rng.uniform(0, 0.12, N) * (rng.random(N) < 0.8), 4)
    held = rng.random(N) < draw(st.floats(0, 0.6))
    weights = np.where(held, np.round(rng.uniform(0.005, 0.06, N), 4), 0.0)
    return returns, targets, weights


@pytest.mark.parametrize("name", CHAINS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(market=markets())
def test_no_target_that_passes_the_default_chain_breaches_a_limit(tmp_path_factory, market, name):
    returns, targets, weights = market
    config, plugins = chain(tmp_path_factory.getbasetemp(), name)
    params = {s.name: s.params for s in config.risk}
    ctx = make_context(SYMS, closes_from_returns(returns), weights=weights, capacity=DAYS + 1)
    out = targets.copy()
    for p in plugins:
        before = out
        out = np.asarray(p.check(before, ctx).targets, dtype=float)
        assert np.all(np.abs(out) <= np.abs(before) + 1e-12), p.name  # only ever shrinks
        assert np.all(out * before >= 0), p.name  # never flips a side

    cap = params["max_position"]["max_position_pct"]
    assert np.abs(out).max() <= cap + 1e-12
    assert np.count_nonzero(out) <= params["max_open_positions"]["max_open_positions"]
    assert np.abs(out).sum() <= params["max_gross_exposure"]["max_gross_exposure"] + 1e-12
    for sector in set(SECTORS.values()):
        members = [i for i, s in enumerate(SYMS) if SECTORS[s] == sector]
        assert np.abs(out[members]).sum() <= params["sector_exposure"]["max_sector_pct"] + 1e-9

    v = params["portfolio_var"]
    window = returns[-v["window"] :]
    assert var_of(out, window, v["confidence"]) <= v["max_var_pct"] + 1e-9

    c = params["correlation_limit"]
    recent = returns[-c["window"] :]
    entries = [i for i in range(N) if weights[i] == 0 and out[i] != 0]
    others = [j for j in range(N) if out[j] != 0]
    for i in entries:
        for j in others:
            if i != j:
                rho = np.sign(out[i]) * np.sign(out[j]) * pair_corr(recent[:, i], recent[:, j])
                assert rho <= c["max_correlation"] + 1e-9, (SYMS[i], SYMS[j], rho)


@pytest.mark.parametrize("name", CHAINS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(market=markets(), seed=st.integers(0, 2**32 - 1), underwater=st.booleans())
def test_the_default_chain_passes_the_engines_checks_on_its_risk_plugins(
    tmp_path_factory, market, seed, underwater, name
):
    """The engine hands each risk plugin read-only targets and refuses a target raised in
    absolute weight or flipped in sign without a verdict for the symbol or the book. The
    bundled plugins, run in the default chain's order through the engine, never trip
    either: on long and short targets and books, and under water (drawdown_guard holding
    positions whose targets cross zero, under its whole-book verdict)."""
    import dataclasses
    from types import SimpleNamespace

    from tradingd.engine.engine import Engine

    returns, targets, weights = market
    rng = np.random.default_rng(seed)
    targets = targets * rng.choice([-1.0, 1.0], N)
    weights = weights * rng.choice([-1.0, 1.0], N)
    _, plugins = chain(tmp_path_factory.getbasetemp(), name)
    ctx = make_context(SYMS, closes_from_returns(returns), weights=weights, capacity=DAYS + 1)
    if underwater:  # 30% below the peak: past the 20% limit
        peak = ctx.portfolio.equity / 0.7
        ctx = dataclasses.replace(
            ctx, portfolio=dataclasses.replace(ctx.portfolio, peak_equity=peak)
        )
    engine = Engine.__new__(Engine)  # only what _risk reads
    engine.symbols, engine._repairs, engine._slow_plugin_s = SYMS, {}, 5.0
    engine._universe = frozenset(SYMS)
    engine.long_only = False  # the targets and book here are long and short
    engine.pipeline = SimpleNamespace(risks=plugins)
    given_targets = targets.copy()
    out, verdicts = engine._risk(targets, ctx)
    np.testing.assert_array_equal(targets, given_targets)  # the input was not written
    if underwater:  # held at their weights where the target crossed zero: a verdict says so
        assert any(v.plugin == "drawdown_guard" and v.symbol is None for v in verdicts)
    else:
        assert np.all(np.abs(out) <= np.abs(targets) + 1e-12)
