"""Walk-forward on the shared S&P 500 data with the project's backtest configuration (its
risk chain and sector map, Kelly x GARCH sizing), the multi-factor signal alone (nothing to
retrain: the retraining itself is tested on synthetic data in tests/unit): three folds of
train 252 / test 21 / step 21 over 12 stocks in 2010.

Checks against independent computations: fold bounds are bars of the file, the stitched
curve is the product of the folds' own segment returns (empyrical's cum_returns_final), the
PerformanceAnalyzer of the stitched curve agrees, GARCH parameters are those of a
stationary fit, and a fold's fitted state at its training end does not change when the
file's later bars are altered. Skips, with the reason, when ../shared/data is absent."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import empyrical as ep
import numpy as np
import pandas as pd
import pytest

from tradingd.analysis.performance import PerformanceConfig
from tradingd.analysis.walkforward import WalkForwardAnalyzer
from tradingd.analysis.walkforward_folds import WalkForwardConfig
from tradingd.analysis.walkforward_run import json_values, run_fold
from tradingd.app import load_data
from tradingd.config import PluginSpec, load_config

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["AAPL", "MSFT", "XOM", "JPM", "JNJ", "GE", "PG", "WMT", "KO", "PFE", "INTC", "CSCO"]


@pytest.fixture(scope="module")
def setup(sp500_parquet):
    cfg = load_config([ROOT / "config" / "default.toml", ROOT / "config" / "backtest.toml"])
    sectors = ROOT.parent / "shared" / "data" / "sp500_sectors.csv"
    risk = tuple(
        dataclasses.replace(r, params={**r.params, "sectors_csv": str(sectors)})
        if r.name == "sector_exposure"
        else r
        for r in cfg.risk
    )
    sizing = dataclasses.replace(
        cfg.sizing, params={**cfg.sizing.params, "fit_executor": "inline", "refit_bars": 21}
    )
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, start="2010-01-04", end="2010-12-31"),
        data=dataclasses.replace(cfg.data, path=str(sp500_parquet), symbols=tuple(SYMBOLS)),
        signals=(PluginSpec("multi_factor"),),
        sizing=sizing,
        risk=risk,
    )
    wf = WalkForwardConfig(train=252, test=21, step=21, max_folds=3, threads=0)
    panel = load_data(cfg)
    analyzer = WalkForwardAnalyzer(cfg, wf, workers=0, performance=PerformanceConfig())
    return cfg, panel, analyzer, analyzer.run(panel)


def test_folds_are_bars_of_the_file_in_order(setup):
    _, panel, _, res = setup
    days = set(pd.DatetimeIndex(panel.times).strftime("%Y-%m-%d"))
    folds = res["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2] and not res["retrained"]
    for f in folds:
        for k in ("train_start", "train_end", "test_start", "test_end", "stitch_end"):
            assert f[k] in days
    assert folds[0]["test_start"] == "2010-01-04"  # the first bar on or after run.start
    for a, b in itertools.pairwise(folds):
        assert a["train_end"] < a["test_start"] <= a["stitch_end"] < b["test_start"]


def test_stitched_curve_is_the_product_of_the_fold_segments(setup):
    cfg, _, _, res = setup
    r = []
    for f in res["folds"]:
        eq = pd.Series(f["equity"]["equity"], index=f["equity"]["time"])
        seg = eq.loc[f["train_end"] : f["stitch_end"]]
        r += list(seg.pct_change().dropna())
    s = res["stitched"]
    assert s["bars"] == len(r) == 63 and s["first"] == "2010-01-04"
    total = ep.cum_returns_final(np.array(r))
    cap = cfg.run.initial_capital
    assert s["equity"][-1] / cap - 1 == pytest.approx(total, rel=1e-10, abs=1e-12)
    perf = s["analysis"]["performance"]
    assert perf["total_return"] == pytest.approx(total, rel=1e-10, abs=1e-12)
    assert perf["sharpe"] == pytest.approx(
        ep.sharpe_ratio(np.array(r), risk_free=(1.02) ** (1 / 252) - 1), rel=1e-9
    )
    assert perf["benchmark_bars"] > 0  # the bundled S&P 500 covers 2010


def test_fitted_garch_parameters_are_stationary_fits(setup):
    _, _, _, res = setup
    fitted = [
        (s, v)
        for f in res["folds"]
        for s, v in f["params"]["garch"].items()
        if v["method"] == "garch"
    ]
    assert fitted  # real stocks over two years of returns: GARCH fits, not only fallbacks
    for _, v in fitted:
        assert v["omega"] > 0 and v["alpha"] >= 0 and v["beta"] >= 0
        assert v["alpha"] + v["beta"] < 1
    k = res["folds"][0]["params"]["kelly"]
    assert 0 <= k["win_rate"] <= 1 and k["trades"] >= 0
    summary = res["stability"]["summary"]
    assert summary["garch_persistence_median"]["n"] == 3


def test_written_results_are_strict_json(setup, tmp_path):
    _, _, analyzer, res = setup
    out = analyzer.write(res, tmp_path)

    def no_nan(x):
        raise AssertionError(f"{x} in strict JSON")

    json.loads((out / "walkforward.json").read_text(), parse_constant=no_nan)
    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 3 and folds["test_bars"].tolist() == [21, 21, 21]
    assert math.isfinite(folds["test_sharpe"].iloc[0]) or folds["test_volatility"].iloc[0] == 0


def test_real_data_after_the_training_end_does_not_reach_the_fitted_state(setup):
    _, panel, analyzer, res = setup
    task = analyzer.tasks(panel)[0]
    cut = task.fold.train_end + 1
    rng = np.random.default_rng(1)
    f = np.ones_like(panel.close)
    f[cut:] = np.exp(np.cumsum(rng.normal(0, 0.02, f[cut:].shape), axis=0))
    altered = dataclasses.replace(
        panel, open=panel.open * f, high=panel.high * f, low=panel.low * f, close=panel.close * f
    )
    later = run_fold(analyzer.tasks(altered)[0])
    base = res["folds"][0]

    def same(a, b):
        return json.dumps(json_values(a), sort_keys=True) == json.dumps(
            json_values(b), sort_keys=True
        )

    assert same(later["state_at_train_end"], base["state_at_train_end"])
    assert same(later["params"], base["params"])
    assert later["equity"]["equity"] != base["equity"]["equity"]  # the test window did change
