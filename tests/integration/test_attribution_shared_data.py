"""Attribution of the default strategy (the ML ensemble 0.6 and the multi-factor score 0.4,
Kelly x GARCH sizing, the default risk chain) on real stocks of the shared S&P 500 data,
against the bundled S&P 500 index. Half a year of trading (2017 H1, warmed up on 2016) on
eight stocks, with the model's prediction cache and the GARCH fit cache in the test's own
folder. Skips, with the reason, when ../shared/data is absent."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import statsmodels.api as sm

from tradingd.analysis.attribution import (
    COSTS,
    RESIDUAL,
    UNATTRIBUTED,
    AttributionAnalyzer,
    AttributionConfig,
)
from tradingd.analysis.performance import PerformanceAnalyzer, align_benchmark, simple_returns

SYMBOLS = ["AAPL", "MSFT", "XOM", "JPM", "JNJ", "GE", "PG", "WMT"]


def test_the_default_strategy_is_attributed_to_its_four_components(sp500_parquet, tmp_path):
    from arch.data import sp500

    from tradingd.backtest import run_backtest
    from tradingd.config import load_config
    from tradingd.feeds.loaders import load_panel

    panel = load_panel(
        "parquet", str(sp500_parquet), symbols=SYMBOLS, start="2016-01-01", end="2017-06-30"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[run]
start = "2017-01-01"
[[signals]]
name = "ml_ensemble"
weight = 0.6
params = {{ cache_dir = "{tmp_path / "predictions"}" }}
[[signals]]
name = "multi_factor"
weight = 0.4
[sizing]
name = "kelly_garch"
[sizing.params]
kelly_multiplier = 0.5
target_vol = 0.15
max_position = 0.05
fit_cache_dir = "{tmp_path / "garch"}"
[storage]
url = "sqlite:///{tmp_path / "s.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    config = load_config(["config/default.toml", cfg], env={})
    outcome = asyncio.run(run_backtest(config, panel=panel, output_dir=tmp_path / "o"))
    analyzer = AttributionAnalyzer(AttributionConfig(record_tolerance=0.0))
    out = asyncio.run(analyzer.analyze(config, panel=panel, record=tmp_path / "o"))

    assert out["replay"]["max_equity_difference"] == 0.0  # the replay is the run
    assert out["replay"]["final_quantity_difference"] == 0.0
    assert out["replay"]["score_mismatches"] == 0
    comp = out["components"]
    by = {r["line"]: r for r in comp["rows"]}
    names = ["ml_ensemble", *(f"multi_factor.{g}" for g in ("momentum", "volatility",
                                                             "mean_reversion"))]  # fmt: skip
    assert [r["line"] for r in comp["rows"] if r["kind"] == "component"] == names
    assert all(by[n]["pnl"] != 0 for n in names)
    assert comp["keying_decisions"] > 20
    assert by[UNATTRIBUTED]["pnl"] == 0.0
    assert abs(by[RESIDUAL]["pnl"]) < 1e-6
    assert comp["total_return"] == pytest.approx(outcome.summary["total_return"], rel=1e-12)
    assert comp["sum_of_lines"] == pytest.approx(comp["total_return"], abs=1e-12)
    assert -by[COSTS]["pnl"] == pytest.approx(
        outcome.summary["commission_paid"] + outcome.summary["slippage_paid"], rel=1e-9
    )
    # the ML score supplies a real part of the decisions' scores, the groups the rest
    shares = [by[n]["mean_abs_score_share"] for n in names]
    assert math.fsum(shares) == pytest.approx(1.0)
    assert all(0.02 < s < 0.9 for s in shares)

    # the beta decomposition against statsmodels and the PerformanceAnalyzer's beta
    risk = out["risk"]
    eq = np.asarray(outcome.result.equity)
    r = simple_returns(eq, config.run.initial_capital)
    b = align_benchmark(outcome.result.times, sp500.load()["Close"])
    ok = np.isfinite(b)
    assert risk["benchmark_bars"] == int(ok.sum()) > 100
    fit = sm.OLS(r[ok], sm.add_constant(b[ok])).fit()
    assert risk["beta"] == pytest.approx(fit.params[1], rel=1e-10)
    assert risk["alpha_per_bar"] == pytest.approx(fit.params[0], rel=1e-8)
    assert risk["r_squared"] == pytest.approx(fit.rsquared, rel=1e-10)
    assert risk["beta"] == pytest.approx(
        PerformanceAnalyzer().calculate_risk_metrics(outcome)["beta"], rel=1e-12
    )
    parts = risk["systematic_return"] + risk["idiosyncratic_return"] + risk["unaligned_return"]
    assert parts == pytest.approx(comp["total_return"], abs=1e-12)
    assert math.fsum(r["beta"] for r in comp["rows"]) == pytest.approx(risk["beta"], rel=1e-9)
