"""WalkForwardAnalyzer: the fold schedule, stitching, per-fold metrics, stability and decay
tables (checked against hand formulas, numpy/pandas and empyrical), and the no-lookahead
property of a fold (its model and fitted state do not change when the bars after its
training end are altered; they do when a training bar is)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import empyrical as ep
import numpy as np
import pandas as pd
import pytest
from conftest import make_panel
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.analysis import walkforward_cli as cli
from tradingd.analysis.parallel import run_tasks
from tradingd.analysis.performance import PerformanceConfig, per_bar_rate
from tradingd.analysis.walkforward import WalkForwardAnalyzer, write_outputs
from tradingd.analysis.walkforward_folds import (
    WalkForwardConfig,
    WalkForwardError,
    make_folds,
)
from tradingd.analysis.walkforward_run import json_values, run_fold
from tradingd.analysis.walkforward_tables import (
    decay,
    fold_metrics,
    garch_frame,
    independent_every,
    series_stability,
    stability,
    stitch,
)
from tradingd.config import PluginSpec, load_config
from tradingd.feeds.panel import Panel

PERF = PerformanceConfig(benchmark="")
TINY_MODEL = {
    "time_steps": 5,
    "cnn_filters": 4,
    "lstm_units": 4,
    "epochs": 1,
    "rf_n_estimators": 5,
    "rf_max_depth": 3,
}


def tiny_config(signals: tuple[PluginSpec, ...] | None = None):
    """The default strategy with a GARCH that can fit on a few hundred synthetic bars, fitted
    inline (no fit worker process), and the Kelly prior kept (min_trades 100; the closed
    trades are still collected) so that positions open on these random walks."""
    c = load_config([], env={})
    sizing = PluginSpec(
        "kelly_garch",
        params={
            "garch_window": 100,
            "min_fit_obs": 60,
            "refit_bars": 10,
            "fit_executor": "inline",
            "fit_cache_dir": "",
            "kelly_window": 100,
            "min_trades": 100,
        },
    )
    return dataclasses.replace(c, sizing=sizing, signals=signals or c.signals)


def tiny_wf(**kw) -> WalkForwardConfig:
    base = {
        "train": 100,
        "test": 20,
        "step": 10,
        "lookback_bars": 150,
        "max_folds": 2,
        "threads": 0,
        "model": TINY_MODEL,
    }
    return WalkForwardConfig(**{**base, **kw})


def tiny_panel(n_bars: int = 280) -> Panel:
    return make_panel(n_symbols=6, n_bars=n_bars, seed=11)


# The bars the shipped model needs before a fold's first bar when it is not retrained, on
# tiny_panel's data: the features' warm-up of 120 plus its card's window of 60, less 1
# (test_a_lookback_shorter_than_the_configured_models_window_is_refused_without_retraining).
SHIPPED_MODEL_LOOKBACK = 179


# ----------------------------------------------------------------------------- schedule


def test_default_settings_are_the_specifications():
    c = WalkForwardConfig()
    assert (c.train, c.test, c.step) == (252, 63, 21)


def test_schedule_by_hand():
    times = pd.bdate_range("2020-01-01", periods=400).to_numpy()
    folds = make_folds(times, WalkForwardConfig(train=100, test=30, step=10, lookback_bars=50))
    # first test bar after lookback + train = 150 bars; full test windows up to bar 399
    assert [f.test_start for f in folds] == list(range(150, 371, 10))
    f0, last = folds[0], folds[-1]
    assert (f0.lo, f0.train_start, f0.train_end, f0.test_end, f0.stitch_end) == (
        0,
        50,
        149,
        179,
        159,
    )
    assert (last.test_start, last.test_end, last.stitch_end) == (370, 399, 399)


@given(
    n=st.integers(min_value=40, max_value=600),
    lookback=st.integers(min_value=0, max_value=60),
    train=st.integers(min_value=2, max_value=120),
    test=st.integers(min_value=1, max_value=90),
    step_frac=st.floats(min_value=0.01, max_value=1.0),
    max_folds=st.integers(min_value=0, max_value=5),
)
@settings(max_examples=200, deadline=None)
def test_every_stitched_bar_is_traded_by_exactly_one_fold_trained_before_it(
    n, lookback, train, test, step_frac, max_folds
):
    step = max(1, min(test, int(test * step_frac)))
    cfg = WalkForwardConfig(
        train=train, test=test, step=step, lookback_bars=lookback, max_folds=max_folds
    )
    times = pd.bdate_range("2000-01-03", periods=n).to_numpy()
    if n < lookback + train + test:
        with pytest.raises(WalkForwardError, match="too few bars"):
            make_folds(times, cfg)
        return
    folds = make_folds(times, cfg)
    owner: dict[int, int] = {}
    for f in folds:
        assert f.lo == f.train_start - lookback >= 0  # the full lookback is there
        assert f.train_end - f.train_start + 1 == train
        assert f.test_start == f.train_end + 1 and f.test_end - f.test_start + 1 == test
        assert f.test_end < n
        for b in range(f.test_start, f.stitch_end + 1):
            assert b not in owner  # exactly one fold
            owner[b] = f.index
    bars = sorted(owner)
    assert bars == list(range(folds[0].test_start, folds[-1].test_end + 1))  # no gap
    if not max_folds:  # every full test window that fits
        assert folds[-1].test_end + step >= n
    for b, k in owner.items():
        assert folds[k].train_end < b  # trained strictly before the bar it trades
        # the newest fold whose test window holds b
        assert all(not (f.test_start <= b <= f.test_end) for f in folds[k + 1 :])


def test_schedule_respects_run_start_and_end():
    times = pd.bdate_range("2020-01-01", periods=500).to_numpy()
    cfg = WalkForwardConfig(train=100, test=20, step=10, lookback_bars=20)
    folds = make_folds(times, cfg, start="2020-09-01", end="2021-06-30")
    t = pd.DatetimeIndex(times)
    assert t[folds[0].test_start] == pd.Timestamp("2020-09-01")
    assert t[folds[-1].test_end] <= pd.Timestamp("2021-06-30")
    assert t[folds[-1].test_end + cfg.step] > pd.Timestamp("2021-06-30")


def test_a_run_start_after_the_data_says_the_data_ends_before_it():
    """run.start after the data's last bar said "too few bars for one fold ... leaves 0
    test bars", where `tradingd backtest` names the cause (the data ends before run.start)."""
    times = pd.bdate_range("2016-01-01", "2018-12-31").to_numpy()
    cfg = WalkForwardConfig(train=100, test=20, step=10, lookback_bars=20)
    with pytest.raises(WalkForwardError) as e:
        make_folds(times, cfg, start="2019-06-01")
    assert "the data ends before run.start" in str(e.value)
    assert "after the last bar of the data (2018-12-31)" in str(e.value)
    assert "too few bars" not in str(e.value)
    # With run.end (the data loaded up to it): as the backtest says it.
    with pytest.raises(WalkForwardError, match=r"run.end is 2018-12-31: the data ends before"):
        make_folds(times, cfg, start="2019-06-01", end="2019-12-31")
    with pytest.raises(WalkForwardError, match="a holiday or weekend window"):
        make_folds(times, cfg, start="2019-01-01", end="2019-01-01")
    # A start within the data with too few bars after it is still "too few bars".
    with pytest.raises(WalkForwardError, match="too few bars for one fold"):
        make_folds(times, cfg, start="2018-12-20")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"step": 70}, "step .* must not exceed"),
        ({"train": 1}, "train must be an integer >= 2"),
        ({"test": 0}, "test must be an integer >= 1"),
        ({"lookback_bars": -1}, "lookback_bars"),
        ({"warmup": "both"}, "warmup = 'both' is invalid"),
        ({"retrain": "sometimes"}, "retrain"),
        ({"threads": 1.5}, "threads"),
        ({"max_folds": True}, "max_folds"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        WalkForwardConfig(**kw)


def test_from_mapping_checks_keys_types_and_model_fields():
    assert WalkForwardConfig.from_mapping({"train": 10, "test": 5, "step": 5}).train == 10
    with pytest.raises(ValueError, match=r"unknown key.*walkforward\.trian"):
        WalkForwardConfig.from_mapping({"trian": 10})
    with pytest.raises(ValueError, match=r"walkforward\.test must be an integer"):
        WalkForwardConfig.from_mapping({"test": "63"})
    with pytest.raises(ValueError, match=r"walkforward\.model\.epoch"):
        WalkForwardConfig.from_mapping({"model": {"epoch": 2}})
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        WalkForwardConfig.from_mapping({"model": {"epochs": 0}})


# ----------------------------------------------------------------------------- tables


def fake_fold(k: int, times: list[str], equity: list[float], train_end: str, stitch_end: str):
    return {
        "fold": k,
        "initial_capital": 100.0,
        "train_end": train_end,
        "stitch_end": stitch_end,
        "equity": {"time": times, "equity": equity, "gross_exposure": [0.5] * len(times)},
    }


def test_stitch_by_hand():
    d = [f"2021-01-{i:02d}" for i in range(4, 12)]
    # fold 0 trades d0..d5 (in sample d0, d1), stitched d2..d3; fold 1 trades d2..d7,
    # stitched d4..d7 (its whole test window: the last fold)
    f0 = fake_fold(0, d[:6], [101, 102, 100, 105, 106, 90], d[1], d[3])
    f1 = fake_fold(1, d[2:], [99, 98, 99, 110, 121, 121], d[3], d[7])
    s = stitch([f0, f1], 1000.0)
    r = [100 / 102 - 1, 105 / 100 - 1, 99 / 98 - 1, 110 / 99 - 1, 121 / 110 - 1, 0.0]
    assert list(s.index.strftime("%Y-%m-%d")) == d[2:]
    np.testing.assert_allclose(s["return"], r, rtol=1e-14)
    np.testing.assert_allclose(s["equity"], 1000.0 * np.cumprod(1 + np.array(r)), rtol=1e-14)
    assert list(s["fold"]) == [0, 0, 1, 1, 1, 1]
    assert list(s["horizon"]) == [1, 2, 1, 2, 3, 4]  # bars since the fold's training end


def test_stitch_refuses_overlapping_segments():
    d = [f"2021-01-{i:02d}" for i in range(4, 10)]
    f0 = fake_fold(0, d[:4], [101, 102, 100, 105], d[0], d[3])
    f1 = fake_fold(1, d[1:], [99, 98, 99, 110, 121], d[1], d[5])
    with pytest.raises(ValueError, match="overlap"):
        stitch([f0, f1], 100.0)


def test_fold_metrics_against_empyrical():
    rng = np.random.default_rng(5)
    e = 100 * np.cumprod(1 + rng.normal(0.001, 0.01, 120))
    times = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2021-01-04", periods=120)]
    f = fake_fold(0, times, list(e), times[79], times[89])
    perf = PerformanceConfig(risk_free_rate=0.03, benchmark="")
    m = fold_metrics(f, perf)
    r_in = pd.Series(e[:80]).pct_change().to_numpy(copy=True)
    r_in[0] = e[0] / 100 - 1
    r_out = e[80:] / e[79:-1] - 1  # the test window starts from the training end's equity
    rf = per_bar_rate(0.03)
    assert m["test"]["bars"] == 40 and m["in_sample"]["bars"] == 80
    assert m["test"]["sharpe"] == pytest.approx(ep.sharpe_ratio(r_out, risk_free=rf), rel=1e-10)
    assert m["in_sample"]["sharpe"] == pytest.approx(ep.sharpe_ratio(r_in, risk_free=rf), rel=1e-10)
    assert m["test"]["total_return"] == pytest.approx(e[-1] / e[79] - 1, rel=1e-12)
    assert m["test"]["max_drawdown"] == pytest.approx(-ep.max_drawdown(r_out), rel=1e-10)
    a_in, a_out = ep.annual_return(r_in), ep.annual_return(r_out)
    want = a_out / a_in if a_in > 0 else math.nan
    assert m["walk_forward_efficiency"] == pytest.approx(want, rel=1e-10, nan_ok=True)


def test_decay_by_fold_and_by_horizon_against_hand_computation():
    rng = np.random.default_rng(9)
    step, test = 5, 15
    folds = []
    for k in range(6):
        times = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2021-01-04", periods=40)]
        # in sample 25 bars, test 15 bars whose drift falls with the fold index
        r = np.concatenate(
            [rng.normal(0.001, 0.01, 25), rng.normal(0.002 - 0.0006 * k, 0.01, test)]
        )
        f = fake_fold(k, times, list(100 * np.cumprod(1 + r)), times[24], times[24 + step])
        f["metrics"] = fold_metrics(f, PERF)
        f["_r"] = r
        folds.append(f)
    d = decay(folds, step, PERF)
    sharpe = np.array([f["metrics"]["test"]["sharpe"] for f in folds])
    slope, intercept = np.polyfit(np.arange(6.0), sharpe, 1)  # independent OLS
    got = d["by_fold"]["sharpe_trend"]["all_folds"]
    assert got["slope"] == pytest.approx(slope, rel=1e-9)
    assert got["intercept"] == pytest.approx(intercept, rel=1e-9)
    assert got["spearman_rho"] == pytest.approx(
        pd.Series(np.arange(6.0)).corr(pd.Series(sharpe), method="spearman"), rel=1e-12
    )
    pooled = np.array([f["_r"][25:] for f in folds])  # (fold, horizon 1..15)
    rf = per_bar_rate(PERF.risk_free_rate)
    for b in d["by_horizon"]["buckets"]:
        block = pooled[:, b["from_bar"] - 1 : b["to_bar"]].ravel()
        assert b["n"] == block.size == 6 * step
        assert b["mean_return"] == pytest.approx(block.mean(), rel=1e-10)
        assert b["sharpe"] == pytest.approx(ep.sharpe_ratio(block, risk_free=rf), rel=1e-9)
    assert [b["from_bar"] for b in d["by_horizon"]["buckets"]] == [1, 6, 11]
    h = np.tile(np.arange(1.0, 16.0), 6)
    assert d["by_horizon"]["return_trend"]["slope"] == pytest.approx(
        np.polyfit(h, pooled.ravel(), 1)[0], rel=1e-9
    )


@given(st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=0, max_size=30))
@settings(max_examples=100, deadline=None)
def test_series_stability_against_pandas(values):
    s = series_stability(values)
    x = pd.Series(values, dtype=float)
    assert s["n"] == len(values)
    if len(values) >= 2:
        assert s["std"] == pytest.approx(x.std(ddof=1), rel=1e-9, abs=1e-12)
        assert s["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
    else:
        assert math.isnan(s["std"])
    if len(values) >= 3 and x.iloc[:-1].nunique() > 1 and x.iloc[1:].nunique() > 1:
        assert s["lag1_autocorrelation"] == pytest.approx(x.autocorr(1), rel=1e-7, abs=1e-9)
    if len(values) >= 3 and x.nunique() > 1:
        want = pd.Series(np.arange(len(values)), dtype=float).corr(x, method="spearman")
        assert s["trend_spearman_rho"] == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.filterwarnings("error")
@given(
    st.lists(st.integers(-5, 5), min_size=3, max_size=20),
    st.sampled_from([1e-200, 1e-250, 1e-300]),
)
@settings(max_examples=60, deadline=None)
def test_series_stability_autocorrelation_does_not_depend_on_scale(ints, scale):
    """The same series 1e-200 times smaller has the same lag-1 autocorrelation, without
    numpy warnings (deviations that small underflowed to 0 inside np.corrcoef: warnings,
    and a clipped +-1 or NaN where pandas gives the series' own value)."""
    values = np.array(ints, dtype=float)
    want = series_stability(values)["lag1_autocorrelation"]
    got = series_stability(values * scale)["lag1_autocorrelation"]
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_garch_frame_persistence_and_long_run_volatility():
    fold = {
        "params": {
            "garch": {
                "A": {"method": "garch", "mu": 0.0, "omega": 2e-6, "alpha": 0.08, "beta": 0.9},
                "B": {"method": "ewma", "mu": 0.0, "omega": 0.0, "alpha": 0.06, "beta": 0.94},
            }
        }
    }
    g = garch_frame(fold).set_index("symbol")
    assert g.loc["A", "persistence"] == pytest.approx(0.98)
    assert g.loc["A", "long_run_vol"] == pytest.approx(math.sqrt(2e-6 / 0.02 * 252))
    assert math.isnan(g.loc["B", "long_run_vol"])  # EWMA has no long-run level


# ----------------------------------------------------------------------------- folds


def same(a, b) -> bool:
    """Equal as plain data, NaN equal to NaN (as the JSON files write them: null)."""
    return json.dumps(json_values(a), sort_keys=True) == json.dumps(json_values(b), sort_keys=True)


def alter_after(panel: Panel, last: int, seed: int = 3) -> Panel:
    """Bars after index `last` replaced by another random walk (prices and volume)."""
    rng = np.random.default_rng(seed)
    f = np.exp(np.cumsum(rng.normal(0, 0.03, panel.close.shape), axis=0))
    f[: last + 1] = 1.0
    vol = panel.volume.copy()
    vol[last + 1 :] *= rng.uniform(0.2, 3.0, vol[last + 1 :].shape)
    return dataclasses.replace(
        panel,
        open=panel.open * f,
        high=panel.high * f,
        low=panel.low * f,
        close=panel.close * f,
        volume=vol,
    )


@pytest.fixture(scope="module")
def lookahead_runs():
    """Fold 0 retrained on the panel (in a local worker process) and on the panel altered
    after the training end (on a local Ray instance when Ray is installed, else in another
    local worker), at the same time, one thread each. Equal fitted state then shows both
    that nothing after the training end reaches a fold and that the retrained model does
    not depend on where it was trained."""
    pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")
    panel = tiny_panel()
    wf = WalkForwardAnalyzer(tiny_config(), tiny_wf(max_folds=1, threads=1), workers=0)
    task = wf.tasks(panel)[0]
    later = wf.tasks(alter_after(panel, task.fold.train_end))[0]
    try:
        import ray
    except ImportError:
        return task, *run_tasks(run_fold, [task, later], workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with ThreadPoolExecutor(2) as pool:
            here = pool.submit(run_tasks, run_fold, [task], workers=1)
            there = pool.submit(run_tasks, run_fold, [later], ray_address="auto")
            return task, here.result()[0], there.result()[0]
    finally:
        ray.shutdown()


def test_a_fold_sees_nothing_after_its_training_end(lookahead_runs):
    _, base, later = lookahead_runs
    assert base["train_end"] == later["train_end"]
    # the model: same training data, same network, same validation metrics
    assert base["model"] is not None
    assert same(later["model"], base["model"])
    # every fitted state at the training end (Kelly trades, GARCH fits, drawdown guard, book)
    assert same(later["state_at_train_end"], base["state_at_train_end"])
    assert same(later["params"], base["params"])
    assert base["params"]["kelly"]["source"] in ("prior", "trades")
    assert "garch" in {v["method"] for v in base["params"]["garch"].values()}
    # the in-sample replay is the same bar for bar; the test window is not
    n_in = base["equity"]["time"].index(base["train_end"]) + 1
    assert later["equity"]["equity"][:n_in] == base["equity"]["equity"][:n_in]
    assert later["equity"]["equity"][n_in:] != base["equity"]["equity"][n_in:]
    assert max(base["equity"]["gross_exposure"][n_in:]) > 0  # it traded out of sample
    assert base["timing"]["pid"] != later["timing"]["pid"]  # two processes


def test_the_lookahead_check_would_see_a_change_before_the_training_end():
    """The same comparison notices one training bar changed (without the model: the
    shipped one, so that no TensorFlow is needed here)."""
    panel = tiny_panel(320)
    wf = WalkForwardAnalyzer(
        tiny_config(),
        tiny_wf(max_folds=1, retrain="never", lookback_bars=SHIPPED_MODEL_LOOKBACK),
        workers=0,
    )
    task = wf.tasks(panel)[0]
    bump = panel.close.copy()
    bump[task.fold.train_end - 40] *= 1.05
    changed = dataclasses.replace(panel, close=bump, high=np.fmax(panel.high, bump))
    base, earlier = run_fold(task), run_fold(wf.tasks(changed)[0])
    assert base["model"] is None  # not retrained
    assert not same(earlier["state_at_train_end"], base["state_at_train_end"])
    later = run_fold(wf.tasks(alter_after(panel, task.fold.train_end))[0])
    assert same(later["state_at_train_end"], base["state_at_train_end"])


def test_the_model_is_trained_on_bars_up_to_the_training_end_only(lookahead_runs):
    _, base, _ = lookahead_runs
    m = base["model"]
    assert m["data_range"][1] == base["train_end"]
    assert m["validation_range"][1] < m["test_range"][0]  # the held-out test split after it
    assert m["test_range"][1] < base["train_end"]  # the last label is the training end
    # its first complete input window ends at (or just before) the training window's start
    assert m["train_range"][0] <= base["train_start"]
    assert m["samples"]["test"] > 0 and set(m["test"]) == set(m["validation"])


def _split(mse: float, zero_mse: float, accuracy: float, ic: float) -> dict:
    """A card's metrics of one split, as `models.training.split_metrics` shapes them."""
    return {
        "ensemble": {"mse": mse, "directional_accuracy": accuracy, "ic": ic},
        "zero": {"mse": zero_mse},
    }


def _card(test: bool) -> dict:
    card = {
        "model_version": "v1",
        "train_range": ["2020-01-01", "2020-06-30"],
        "validation_range": ["2020-07-01", "2020-09-30"],
        "test_range": ["2020-10-02", "2020-12-31"],
        "samples": {"train": 120, "validation": 40, "test": 35},
        "metrics": {
            "validation": _split(0.5, 1.0, 0.6, 0.2),
            "test": _split(0.9, 1.2, 0.52, 0.05),
            "training_history": {"epochs_run": 3, "best_epoch": 2},
        },
        "feature_importance": {"rsi": 1.0},
        "data": {"sha256": "x", "range": ["2020-01-01", "2020-12-31"]},
        "model_config": {},
    }
    if not test:  # a card trained before the test split
        del card["test_range"], card["metrics"]["test"], card["samples"]["test"]
    return card


@pytest.mark.parametrize("test", [True, False])
def test_the_models_test_split_metrics_reach_the_stability_table(monkeypatch, tmp_path, test):
    """The card's held-out test metrics (what `tradingd retrain` judges) were dropped: the
    stability table had the validation metrics alone, which early-stopped and calibrated
    the model. A card without a test split has no model_test_* (not NaNs, not zeros)."""
    import tradingd_models.training as training

    from tradingd.analysis.walkforward_run import train_model
    from tradingd.analysis.walkforward_tables import parameter_row

    monkeypatch.setattr(training, "train", lambda *a, **k: _card(test))
    model = train_model(tiny_config(), tiny_panel(), tmp_path, tiny_wf())
    row = parameter_row({"fold": 0, "train_end": "2020-12-31", "model": model}, PERF)
    assert (row["model_val_mse_ratio"], row["model_val_ic"]) == (0.5, 0.2)
    if test:
        assert model["test_range"] == ["2020-10-02", "2020-12-31"]
        assert row["model_test_mse_ratio"] == pytest.approx(0.75)
        assert row["model_test_directional_accuracy"] == 0.52
        assert (row["model_test_ic"], row["model_test_samples"]) == (0.05, 35)
    else:
        assert "test" not in model and "test_range" not in model
        assert not [k for k in row if k.startswith("model_test")]


def test_the_tables_annualise_as_the_folds_backtests_unless_configured():
    """A year of 5-minute bars is 252 sessions of 78 (what each fold's backtest annualises
    its summary with); the tables took 252, and `tradingd walkforward` could not say
    otherwise. Set, the configuration's is kept."""
    daily = tiny_panel()
    times = pd.Timestamp("2024-01-08 14:30") + pd.to_timedelta(np.arange(78) * 5, "m")
    five = make_panel(n_symbols=2, n_bars=78, seed=3, split_at=None)
    five = dataclasses.replace(five, times=times.to_numpy(dtype="datetime64[ns]"))
    wf = WalkForwardAnalyzer(tiny_config(), tiny_wf(), performance=PERF)
    assert wf.performance_for(five).periods_per_year == 252 * 78
    assert wf.performance_for(daily).periods_per_year == 252
    given = PerformanceConfig(benchmark="", periods_per_year=100)
    wf = WalkForwardAnalyzer(tiny_config(), tiny_wf(), performance=given)
    assert wf.performance_for(five).periods_per_year == 100


# ----------------------------------------------------------------------------- end to end


def test_cli_end_to_end_without_a_model(tmp_path, capsys):
    """The command on a strategy without ML (nothing to retrain), in this process: files,
    strict JSON, and a stitched curve that is the product of the folds' segments."""
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text("[walkforward]\ntrain = 100\ntest = 20\nstep = 10\nlookback_bars = 150\n")
    panel = tiny_panel(290)  # three folds
    config = tiny_config(signals=(PluginSpec("multi_factor"),))
    args = type("A", (), {})()
    for k, v in {
        "train": None,
        "test": None,
        "step": None,
        "lookback": None,
        "folds": 3,
        "warmup": None,
        "retrain": None,
        "epochs": None,
        "threads": 0,
    }.items():
        setattr(args, k, v)
    engine_files, table = cli.split_config_files([str(wf_file)])
    assert engine_files == ["config/default.toml"] or not engine_files  # default when present
    wf = cli.walkforward_config(table, args)
    assert (wf.train, wf.test, wf.step, wf.max_folds, wf.threads) == (100, 20, 10, 3, 0)
    analyzer = WalkForwardAnalyzer(config, wf, workers=0, performance=PERF)
    assert not analyzer.retrain()
    res = analyzer.run(panel)
    out = write_outputs(res, tmp_path / "out")
    names = {p.name for p in out.iterdir()}
    assert {"walkforward.json", "folds.json", "equity.csv", "folds.csv", "decay.csv"} <= names
    assert {"stability.csv", "stability_summary.csv", "garch_params.csv"} <= names

    def no_nan(x):
        raise AssertionError(f"{x} in strict JSON")

    doc = json.loads((out / "walkforward.json").read_text(), parse_constant=no_nan)
    assert len(doc["folds"]) == 3 and doc["retrained"] is False
    eq = pd.read_csv(out / "equity.csv")
    assert len(eq) == 10 + 10 + 20 == res["stitched"]["bars"]
    seg = 1.0
    for f in res["folds"]:
        c = pd.Series(f["equity"]["equity"], index=f["equity"]["time"])
        start = c.index.get_loc(f["train_end"])
        seg *= c[f["stitch_end"]] / c.iloc[start]
    assert eq["equity"].iloc[-1] / config.run.initial_capital == pytest.approx(seg, rel=1e-12)
    perf = doc["stitched"]["analysis"]["performance"]
    assert perf["total_return"] == pytest.approx(seg - 1, rel=1e-9)
    print(cli.format_summary(cli.summarize(res, out)))
    assert "walk-forward: 3 folds" in capsys.readouterr().out


def test_folds_write_no_feature_cache_entries(tmp_path):
    """Each fold replays its own window: as cache entries they would churn the feature cache
    (hundreds of folds) and evict the researcher's backtests."""

    features = tmp_path / "features"
    config = tiny_config(signals=(PluginSpec("multi_factor"),))
    config = dataclasses.replace(
        config, cache=dataclasses.replace(config.cache, features=True, features_dir=str(features))
    )
    wf = WalkForwardConfig(train=100, test=20, step=10, lookback_bars=150, max_folds=2)
    res = WalkForwardAnalyzer(config, wf, workers=0, performance=PERF).run(tiny_panel(290))
    assert len(res["folds"]) == 2
    assert not features.exists() or not any(features.iterdir())


def test_a_file_with_walkforward_holds_nothing_else(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[walkforward]\ntrain = 10\n[run]\nname = 'x'\n")
    with pytest.raises(ValueError, match=r"must hold nothing else.*run"):
        cli.split_config_files([str(bad)])
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[walkforward]\ntrain = 10\n[walkforward.model]\nepochs = 2\nlstm_units = 4\n")
    b.write_text("[walkforward.model]\nepochs = 3\n")
    _, table = cli.split_config_files([str(a), str(b)])
    assert table == {"train": 10, "model": {"epochs": 3, "lstm_units": 4}}  # later wins


def test_a_config_file_that_can_be_read_once_counts(tmp_path):
    """`-c <(printf ...)`: the walk-forward read the pipe to look for [walkforward], then
    load_config read it again, empty, and the run used the other files alone."""
    import os
    import threading

    from tradingd.config import load_config

    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as fh:  # blocks until the reader opens it; written once
            fh.write('[run]\nstart = "2018-06-01"\nend = "2018-12-31"\n')

    writer = threading.Thread(target=write)
    writer.start()
    engine, table = cli.split_config_files([str(fifo)])
    writer.join(timeout=10)
    assert table == {} and engine == [{"run": {"start": "2018-06-01", "end": "2018-12-31"}}]
    config = load_config(engine, env={})
    assert (config.run.start, config.run.end) == ("2018-06-01", "2018-12-31")


def test_a_lookback_shorter_than_the_models_warm_up_is_refused_naming_the_bars():
    """`--lookback 10` under a retrained model was capped silently: each fold's model fitted
    on the input windows complete inside its training window only (138 of 252 bars on the
    bundled data), with no word but the engine's run.warmup_inside_window."""
    from tradingd.analysis.walkforward import feature_warmup

    panel = tiny_panel()
    config = tiny_config()
    need = feature_warmup(config, panel) + TINY_MODEL["time_steps"] - 1
    assert 60 < need < 150  # the model's need is the larger: it is the one refused here
    wf = WalkForwardAnalyzer(config, tiny_wf(lookback_bars=40, max_folds=1), workers=0)
    with pytest.raises(WalkForwardError) as refused:
        wf.tasks(panel)
    text = str(refused.value)
    assert "walkforward.lookback_bars (--lookback) = 40 " in text
    assert f"{need} for the retrained model" in text
    assert f"fit on the last {100 - (need - 40)} of the 100 training bars" in text
    assert "60 for the sizing's first GARCH fit (kelly_garch's min_fit_obs = 60" in text
    assert "could not fit before training bar 21" in text
    assert f"--lookback {need} or more" in text
    # Exactly the need: the model's slice starts so that its first complete input window
    # ends at the training start (nothing of the training window is lost).
    (task,) = WalkForwardAnalyzer(
        config, tiny_wf(lookback_bars=need, max_folds=1), workers=0
    ).tasks(panel)
    assert task.model_lo == task.fold.train_start - need


def test_a_lookback_shorter_than_the_garch_warm_up_is_refused():
    """Without retraining, the sizing's GARCH alone needs min_fit_obs returns before the
    first bar traded: with fewer, the in-sample replay sized on EWMA until they were there
    (the bundled data's fold with --lookback 10 had no GARCH fit at its training end). A
    strategy without the model: what the configured model needs is the next test's."""
    panel = tiny_panel()
    config = tiny_config(signals=(PluginSpec("multi_factor"),))

    def tasks(**kw):
        wf = tiny_wf(max_folds=1, retrain="never", **kw)
        return WalkForwardAnalyzer(config, wf, workers=0).tasks(panel)

    with pytest.raises(WalkForwardError, match=r"= 59 .*60 for the sizing's first GARCH fit"):
        tasks(lookback_bars=59)
    assert len(tasks(lookback_bars=60)) == 1
    # Trading from the test window on, the training window holds the returns.
    assert len(tasks(lookback_bars=10, warmup="none")) == 1
    assert len(tasks(lookback_bars=10, warmup="none", train=50)) == 1  # 10 + 50 returns
    with pytest.raises(WalkForwardError, match=r"= 9 .*: 10 for the sizing.*before test bar 2 "):
        tasks(lookback_bars=9, warmup="none", train=50)


def test_a_lookback_shorter_than_the_configured_models_window_is_refused_without_retraining():
    """`--retrain never` replays the configured model, whose card says its input window (60
    bars for the shipped one): the lookback was checked against it only when the model was
    retrained, so with --lookback 150 each fold's model predicted nothing before its 30th
    training bar (the features' warm-up and the window first), unsaid."""
    from tradingd.analysis.walkforward import feature_warmup
    from tradingd.inference.onnx import ModelCard
    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    panel = tiny_panel(320)
    config = tiny_config()
    window = ModelCard.load(default_model_dir()).window
    need = feature_warmup(config, panel) + window - 1
    assert window == 60 and need == SHIPPED_MODEL_LOOKBACK

    def tasks(**kw):
        wf = tiny_wf(max_folds=1, retrain="never", **kw)
        return WalkForwardAnalyzer(config, wf, workers=0).tasks(panel)

    with pytest.raises(WalkForwardError) as refused:
        tasks(lookback_bars=150)
    text = str(refused.value)
    assert "walkforward.lookback_bars (--lookback) = 150 " in text
    assert f"{need} for the configured model (not retrained: --retrain never; " in text
    assert f"its card's window of {window} bars ({default_model_dir()}), less 1)" in text
    assert f"the model could not predict before training bar {need - 150 + 1}" in text
    assert f"--lookback {need} or more" in text
    assert len(tasks(lookback_bars=need)) == 1
    # Trading from the test window on, the training window holds the model's first bars.
    assert len(tasks(lookback_bars=need - 100, warmup="none")) == 1
    with pytest.raises(WalkForwardError, match=rf"= 70 .*before test bar {need - 100 - 70 + 1}"):
        tasks(lookback_bars=70, warmup="none")
    # A strategy without the model: nothing of it to check.
    no_ml = tiny_config(signals=(PluginSpec("multi_factor"),))
    wf = tiny_wf(max_folds=1, retrain="never", lookback_bars=60)
    assert len(WalkForwardAnalyzer(no_ml, wf, workers=0).tasks(panel)) == 1


def test_warmup_none_trades_only_the_test_window():
    panel = tiny_panel()
    wf = WalkForwardAnalyzer(
        tiny_config(), tiny_wf(max_folds=1, retrain="never", warmup="none"), workers=0
    )
    r = run_fold(wf.tasks(panel)[0])
    assert r["equity"]["time"][0] == r["test_start"]  # nothing traded before the test window
    assert len(r["equity"]["time"]) == 20
    k = r["params"]["kelly"]  # the state at the training end: nothing sized yet
    assert (k["source"], k["trades"]) == ("prior", 0)
    m = fold_metrics({**r, "initial_capital": 100_000.0}, PERF)
    assert m["in_sample"]["bars"] == 0 and math.isnan(m["in_sample"]["sharpe"])
    assert m["test"]["bars"] == 20 and math.isnan(m["walk_forward_efficiency"])


def test_the_command_runs_from_config_files(tmp_path, capsys):
    """`tradingd walkforward` through the `tradingd` command: tradingd's config files plus a
    [walkforward] file, options over both, files written, a JSON summary printed."""

    strategy = tmp_path / "strategy.toml"
    strategy.write_text(
        '[run]\nstart = "2012-01-03"\nend = "2012-12-31"\n'
        '[[signals]]\nname = "multi_factor"\n'
        '[sizing]\nname = "kelly_garch"\nparams = { fit_executor = "inline", fit_cache_dir = "" }\n'
        '[log]\naudit_dir = "' + str(tmp_path / "audit") + '"\n'
    )
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text("[walkforward]\ntest = 42\nstep = 21\nthreads = 0\n")
    import structlog

    from tradingd.__main__ import main

    saved = structlog.get_config()
    out = tmp_path / "out"
    argv = ["-c", "config/default.toml", "-c", str(strategy), "-c", str(wf_file)]
    try:
        code = main(
            ["walkforward", *argv, "--folds", "2", "--workers", "0", "--out", str(out), "--json"]
        )
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["folds"] == 2 and summary["test"] == 42 and summary["retrained"] is False
        oos = summary["out_of_sample"]
        assert oos["first"] == "2012-01-03" and oos["bars"] == 21 + 42  # first step + last test
        assert (out / "walkforward.json").exists() and (out / "equity.csv").exists()
        # The results folder is no run record (equity.csv notwithstanding): `tradingd report`
        # failed on it with "the run's initial_capital is missing".
        assert main(["report", str(out), "--no-validation"]) == 2
        err = capsys.readouterr().err
        assert f"tradingd: error: {out} is a walk-forward results folder" in err
        assert "not a run record" in err and "folds.csv" in err
        assert not (out / "report.html").exists()
        # Nor a strategy variant of the runs beside it (it was counted as one, with a
        # warning that its Sharpe ratio could not be read): known by the same file.
        from tradingd.analysis.trials import count_trials

        tc = count_trials(tmp_path)
        assert (tc.trials, tc.runs, tc.walkforward_folders) == (0, 0, ("out",))
        # A bad setting is the CLI's error line and exit code 2, not a traceback.
        assert main(["walkforward", *argv, "--step", "50", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "tradingd: error:" in err and "step (50) must not exceed" in err
    finally:
        structlog.configure(**saved)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs holding an earlier walk-forward's walkforward.json, filled up but for
    a few bytes; skipped where mounting is not allowed."""
    from conftest import small_tmpfs

    with small_tmpfs(tmp_path / "small") as mnt:
        out = mnt / "wf"
        out.mkdir()
        (out / "walkforward.json").write_text('{"earlier": true}\n')
        with (mnt / "filler").open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        yield out


def test_results_the_disk_cannot_take_leave_the_earlier_ones_and_say_so(
    tmp_path, capsys, full_disk
):
    """A full disk under --out cut walkforward.json to nothing and ended the command with a
    traceback (exit 1). The files are written to temporary names and renamed once all are
    on disk: the earlier results stay whole, no partial or temporary file is left, and the
    error names the file, the cause and what to do, exit 2."""
    strategy = tmp_path / "strategy.toml"
    strategy.write_text(
        '[run]\nstart = "2012-01-03"\nend = "2012-12-31"\n'
        '[[signals]]\nname = "multi_factor"\n'
        '[sizing]\nname = "equal_weight"\n'
        '[log]\naudit_dir = "' + str(tmp_path / "audit") + '"\n'
    )
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text("[walkforward]\ntest = 42\nstep = 21\nthreads = 0\n")
    import structlog

    from tradingd.__main__ import main

    before = {p.name: p.read_bytes() for p in full_disk.iterdir()}
    saved = structlog.get_config()
    argv = ["-c", "config/default.toml", "-c", str(strategy), "-c", str(wf_file)]
    try:
        code = main(
            ["walkforward", *argv, "--folds", "2", "--workers", "0", "--out", str(full_disk)]
        )
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("tradingd: error: ")]
    assert line.startswith(
        f"tradingd: error: cannot write {full_disk / 'walkforward.json'}: No space left on device"
    )
    assert "free space" in line and "--out FOLDER" in line
    # (The folder's record lock, `.record.lock`, empty, stays: the lock of the next writer.)
    after = {p.name: p.read_bytes() for p in full_disk.iterdir()}
    assert after.pop(".record.lock", b"") == b""
    assert after == before


def test_the_summary_says_the_decay_is_a_slope_not_a_sharpe_ratio():
    """ "decay: out-of-sample Sharpe 23.0976 per fold" beside a stitched Sharpe of -8.00
    read as a second Sharpe ratio; it is the slope of the folds' Sharpe ratios."""
    summary = {
        "folds": 4,
        "train": 252,
        "test": 63,
        "step": 21,
        "retrained": True,
        "out_of_sample": {"first": "2015-01-02", "last": "2015-07-01", "bars": 126},
        "total_return": -0.1,
        "annual_return": -0.2,
        "sharpe": -8.0,
        "risk_free_rate": 0.02,
        "max_drawdown": -0.15,
        "sharpe_trend_per_fold": 23.0976,
        "sharpe_trend_p": math.nan,
        "sharpe_trend_independent_folds": 2,
        "sharpe_by_horizon": {"1-21": -3.1},
        "median_walk_forward_efficiency": math.nan,
        "wall_s": 1.0,
        "output_dir": "wf",
    }
    text = cli.format_summary(summary)
    assert "Sharpe (risk-free 2%) -8.00," in text
    assert "decay: out-of-sample Sharpe changes by +23.10 per fold (slope; p = n/a over 2" in text
    falling = cli.format_summary({**summary, "sharpe_trend_per_fold": -0.5})
    assert "Sharpe changes by -0.50 per fold (slope" in falling
    assert text.splitlines()[1].startswith("out of sample 2015-01-02 .. 2015-07-01 (126 bars)")


def test_a_summary_whose_test_bars_are_in_the_models_fit_does_not_call_them_out_of_sample():
    """retrain = "never" on a model fitted over the test windows: the first line said "out
    of sample ... Sharpe 2.77", corrected only on the next line."""
    summary = {
        "folds": 1,
        "train": 252,
        "test": 63,
        "step": 63,
        "retrained": False,
        "out_of_sample": {"first": "2015-01-02", "last": "2015-04-01", "bars": 63},
        "total_return": 0.1,
        "annual_return": 0.4,
        "sharpe": 2.77,
        "risk_free_rate": 0.02,
        "max_drawdown": -0.05,
        "sharpe_trend_per_fold": math.nan,
        "sharpe_trend_p": math.nan,
        "sharpe_trend_independent_folds": 1,
        "sharpe_by_horizon": {"1-21": 2.0},
        "median_walk_forward_efficiency": math.nan,
        "wall_s": 1.0,
        "output_dir": "wf",
    }
    inside = {"bars": 63, "of": 63, "folds": [0], "fitted_on": [["2010-01-04", "2016-12-30"]]}
    lines = cli.format_summary({**summary, "model_in_sample": inside}).splitlines()
    assert lines[1].startswith("test windows (all in-sample for the model) 2015-01-02 ..")
    assert lines[2].startswith("NOT out of sample for the model: 63 of 63 test bars")
    assert not any("out of sample" in line or "out-of-sample" in line for line in lines[:2])
    assert lines[3].startswith("decay: test-window Sharpe changes by n/a")
    some = {**inside, "bars": 20}
    lines = cli.format_summary({**summary, "model_in_sample": some}).splitlines()
    assert lines[1].startswith("test windows (partly in-sample for the model) 2015-01-02 ..")
    assert lines[2].startswith("NOT out of sample for the model: 20 of 63 test bars")


def test_a_walk_forward_without_the_train_extra_says_it_can_run_without_retraining(
    tmp_path, capsys, monkeypatch
):
    """The README's walk-forward (an ml_ensemble signal, retrain = "auto") needs the train
    extra, which the quick start does not install: the error said only how to install it,
    though `--retrain never` walks forward with the shipped model as it is."""
    import structlog

    from tradingd.__main__ import main
    from tradingd.preflight import TRAIN_MODULES

    monkeypatch.setitem(sys.modules, sorted(TRAIN_MODULES)[0], None)  # not importable
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text('[walkforward]\nretrain = "auto"\n')
    strategy = tmp_path / "strategy.toml"
    strategy.write_text('[log]\naudit_dir = "' + str(tmp_path / "audit") + '"\n')
    argv = ["-c", "config/default.toml", "-c", str(strategy), "-c", str(wf_file)]
    saved = structlog.get_config()
    try:
        code = main(["walkforward", *argv, "--out", str(tmp_path / "out")])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "train extra" in err and "tradingd[train]" in err
    assert "--retrain never" in err
    assert not (tmp_path / "out" / "walkforward.json").exists()


def test_fold_trend_p_values_count_only_folds_whose_windows_do_not_overlap():
    """Consecutive test windows of the default schedule share 42 of 63 bars, and a fold's
    test window lies in later folds' training: the per-fold Sharpe ratios are autocorrelated,
    and the OLS and Spearman p-values (which assume independent folds) rejected "no decay"
    for 24% of walk-forwards of IID returns at a nominal 5%."""
    from tradingd.analysis.performance import PerformanceConfig
    from tradingd.analysis.walkforward_tables import decay, fold_metrics

    perf = PerformanceConfig(risk_free_rate=0.0, benchmark="")
    train, test, step, k = 252, 63, 21, 30
    n = train + test + step * (k - 1)
    labels = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2001-01-01", periods=n)]
    rng = np.random.default_rng(11)
    rejected, sims = 0, 60
    for _ in range(sims):
        r = rng.normal(0.0, 0.01, n)
        folds = []
        for i in range(k):
            lo, hi = i * step, i * step + train + test
            f = {
                "fold": i,
                "initial_capital": 1e5,
                "train_end": labels[lo + train - 1],
                "equity": {
                    "time": labels[lo:hi],
                    "equity": (1e5 * np.cumprod(1 + r[lo:hi])).tolist(),
                    "gross_exposure": [1.0] * (hi - lo),
                },
            }
            f["metrics"] = fold_metrics(f, perf)
            folds.append(f)
        d = decay(folds, step, perf)
        trend = d["by_fold"]["sharpe_trend"]
        assert trend["n"] == k and trend["n_independent"] == 10  # every 3rd: 63 / 21
        rejected += trend["p_value"] < 0.05
        # In against out of sample: a fold's test window is in the next 15 folds' training,
        # which leaves 2 independent folds: no p-value.
        assert d["in_vs_out"]["sharpe"]["n_independent"] == 2
        assert math.isnan(d["in_vs_out"]["sharpe"]["p_value"])
    assert rejected / sims < 0.15  # 24% before; about 6% (10 folds) over 400 walk-forwards


def test_the_fold_trend_s_slope_stderr_and_p_values_are_of_one_regression():
    """The slope was over all 8 folds and its stderr and p over every 3rd: the CLI printed
    one regression's slope with another's p-value."""
    from tradingd.analysis.walkforward_tables import _regression

    x = np.arange(9.0)
    y = np.array([0.5, 0.9, 0.1, 0.3, -0.2, 0.8, 0.2, 0.6, -0.4])
    got = _regression(x, y, every=3)
    xi, yi = x[::3], y[::3]  # folds 0, 3, 6: 0.5, 0.3, 0.2
    # Least squares by hand over the three independent folds: x - 3 = -3, 0, 3
    slope = (-3 * 0.5 + 0 * 0.3 + 3 * 0.2) / 18.0
    assert got["slope"] == pytest.approx(slope, rel=1e-12)
    assert got["n_independent"] == 3
    resid = yi - (yi.mean() + slope * (xi - 3.0))
    stderr = math.sqrt(float(resid @ resid) / 1.0 / 18.0)  # 1 degree of freedom
    assert got["slope_stderr"] == pytest.approx(stderr, rel=1e-12)
    t = slope / stderr  # Student t with 1 df: p = 1 - 2 atan(|t|) / pi
    assert got["p_value"] == pytest.approx(1.0 - 2.0 * math.atan(abs(t)) / math.pi, rel=1e-9)
    assert got["all_folds"]["n"] == 9


@pytest.mark.parametrize(
    "n, p",
    # A perfect rank order: 2 of the n! orders are as extreme (rho = +1 and -1)
    [(3, 1 / 3), (4, 1 / 12), (5, 1 / 60), (8, 2 / 40320)],
)
def test_spearman_p_of_a_perfect_order_is_exact_at_few_folds(n, p):
    """scipy's t approximation gives p = 0 for any |rho| = 1 (a 3-fold decay 'significant')."""
    from tradingd.analysis.walkforward_tables import _regression, series_stability

    x = np.arange(n, dtype=float) * 3.0
    y = -(np.arange(n, dtype=float) ** 2)
    assert _regression(x, y)["spearman_p"] == pytest.approx(p, rel=1e-12)
    assert series_stability(y)["trend_p"] == pytest.approx(p, rel=1e-12)


def test_spearman_p_at_4_folds_counts_the_orders_as_extreme():
    """Ranks 1 3 2 4 against 1 2 3 4: rho = 0.8. Of the 24 orders of 4 ranks, rho >= 0.8 for
    1 2 3 4, 2 1 3 4, 1 3 2 4 and 1 2 4 3 (4 of them) and <= -0.8 for their reverses: 8/24."""
    from tradingd.analysis.walkforward_tables import spearman_p

    assert spearman_p(np.arange(4.0), np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(1 / 3)


def test_test_windows_inside_the_models_own_period_are_said_not_out_of_sample():
    """retrain = "never" replays the configured model: the shipped one was fitted on
    1999-2018, and a walk-forward over those years labelled its test windows out of sample
    without a word (a backtest warns: backtest.in_sample)."""
    from pathlib import Path

    from structlog.testing import capture_logs

    wf = WalkForwardAnalyzer(
        tiny_config(), tiny_wf(max_folds=1, retrain="never", warmup="none"), workers=0
    )
    late = tiny_panel()  # 2020: after the shipped model's last date
    early = dataclasses.replace(
        late,
        times=pd.bdate_range("2010-01-04", periods=len(late.times)).to_numpy("datetime64[ns]"),
    )
    r = run_fold(wf.tasks(early)[0])
    (m,) = [m for m in r["models"] if m["plugin"] == "ml_ensemble"]
    assert m["fitted_on"][0] <= "2010-01-04" and m["fitted_on"][1] >= "2011-01-01"
    assert m["in_sample"]["bars"] == m["in_sample"]["of"] == 20  # every test bar
    with capture_logs() as logs:
        out = wf.assemble([r], early)
    assert out["model_in_sample"]["bars"] == 20 and out["model_in_sample"]["folds"] == [r["fold"]]
    assert [e["bars"] for e in logs if e["event"] == "walkforward.in_sample"] == [20]
    text = cli.format_summary(cli.summarize(out, Path("wf-out")))
    assert "NOT out of sample for the model: 20 of 20 test bars" in text
    assert text.startswith("walk-forward: 1 fold (")  # not "1 folds"
    # Folds whose test windows overlap: each stitched bar counted once, of the stitched bars
    # (summed over folds, 40 "test bars" were said of a 30-bar result).
    two = WalkForwardAnalyzer(
        tiny_config(), tiny_wf(max_folds=2, retrain="never", warmup="none"), workers=0
    )
    both = two.assemble([run_fold(t) for t in two.tasks(early)], early)
    n = both["stitched"]["bars"]
    assert both["model_in_sample"]["bars"] == both["model_in_sample"]["of"] == n < 40
    r2 = run_fold(wf.tasks(late)[0])
    assert all("in_sample" not in m for m in r2["models"])
    assert wf.assemble([r2], late)["model_in_sample"] is None


def test_a_stability_trends_rho_and_p_value_are_of_the_same_folds():
    """rho was over every fold and the p-value over the folds whose windows do not overlap:
    a statistic printed beside another sample's p-value."""
    from scipy import stats

    values = [5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 2.5, 6.0, 1.5]
    s = series_stability(values, every=2)
    independent = values[::2]
    want = stats.spearmanr(np.arange(9)[::2], independent).statistic
    assert s["trend_spearman_rho"] == pytest.approx(want)
    assert s["trend_spearman_rho_all_folds"] == pytest.approx(
        stats.spearmanr(np.arange(9), values).statistic
    )
    assert s["trend_independent_folds"] == len(independent)


def test_stability_summary_has_its_header_when_no_parameter_was_fitted(tmp_path):
    """momentum + equal_weight fit nothing: stability_summary.csv was a 0-byte file, which
    `pd.read_csv` refuses (EmptyDataError). It has its columns, and no row."""
    config = dataclasses.replace(
        tiny_config(signals=(PluginSpec("momentum"),)), sizing=PluginSpec("equal_weight")
    )
    wf = WalkForwardAnalyzer(config, tiny_wf(warmup="none"), workers=0, performance=PERF)
    res = wf.run(tiny_panel())
    assert res["stability"]["summary"] == {}  # nothing fitted
    out = write_outputs(res, tmp_path / "out")
    summary = pd.read_csv(out / "stability_summary.csv")
    assert summary.empty
    assert list(summary.columns) == ["parameter", *series_stability(np.arange(4.0))]
    # The same columns as a summary with rows (tiny_config's Kelly and GARCH).
    fitted = WalkForwardAnalyzer(
        tiny_config(signals=(PluginSpec("multi_factor"),)),
        tiny_wf(warmup="none"),
        workers=0,
        performance=PERF,
    )
    full = pd.read_csv(
        write_outputs(fitted.run(tiny_panel()), tmp_path / "full") / "stability_summary.csv"
    )
    assert len(full) and list(full.columns) == list(summary.columns)


def test_the_summary_says_the_risk_free_rate_its_sharpe_ratio_is_in_excess_of():
    """The walk-forward's line said "Sharpe -0.97", in excess of a 2% risk-free rate, where
    the backtest's summary says "Sharpe ratio (risk-free 0%)": the same strategy's two
    Sharpe ratios could differ in sign without a word why. It says its rate too."""
    config = dataclasses.replace(
        tiny_config(signals=(PluginSpec("momentum"),)), sizing=PluginSpec("equal_weight")
    )
    perf = PerformanceConfig(risk_free_rate=0.03, benchmark="")
    wf = WalkForwardAnalyzer(config, tiny_wf(warmup="none"), workers=0, performance=perf)
    res = wf.run(tiny_panel())
    summary = cli.summarize(res, Path("wf-out"))
    assert summary["risk_free_rate"] == 0.03
    sharpe = res["stitched"]["analysis"]["performance"]["sharpe"]
    assert f"Sharpe (risk-free 3%) {sharpe:.2f}, max drawdown" in cli.format_summary(summary)
    for rate, said in ((0.02, "2%"), (0.0, "0%"), (0.025, "2.5%")):
        text = cli.format_summary({**summary, "risk_free_rate": rate})
        assert f"Sharpe (risk-free {said}) {sharpe:.2f}," in text


def test_epochs_for_a_walk_forward_that_retrains_nothing_are_refused(tmp_path, capsys):
    """`--epochs` sets each fold's training: with `--retrain never` (or no ml_ensemble
    signal) nothing trains, and the option was dropped without a word; refused, as
    `backtest --no-validation` without --report is."""
    import structlog

    from tradingd.__main__ import main

    strategy = tmp_path / "strategy.toml"
    strategy.write_text('[log]\naudit_dir = "' + str(tmp_path / "audit") + '"\n')
    argv = ["-c", "config/default.toml", "-c", str(strategy), "--out", str(tmp_path / "out")]
    saved = structlog.get_config()
    try:
        code = main(["walkforward", *argv, "--retrain", "never", "--epochs", "5"])
    finally:
        structlog.configure(**saved)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--epochs" in err and 'walkforward.retrain = "never"' in err
    assert not (tmp_path / "out" / "walkforward.json").exists()


def _warmup_none_folds(k: int, train: int, test: int, step: int) -> list[dict]:
    """`k` folds as warmup "none" leaves them: each traded curve is its test window only."""
    labels = [d.strftime("%Y-%m-%d") for d in pd.bdate_range("2001-01-01", periods=2000)]
    folds = []
    for i in range(k):
        start = train + i * step  # the test window's first bar
        t = labels[start : start + test]
        equity = {"time": t, "equity": list(1e5 + np.arange(test)), "gross_exposure": [0.5] * test}
        kelly = {"win_rate": 0.5 + 0.01 * i, "win_loss_ratio": 1.2, "fraction": 0.1,
                 "source": "trades", "trades": 30}  # fmt: skip
        folds.append(
            {"fold": i, "train_end": labels[start - 1], "initial_capital": 1e5, "equity": equity,
             "params": {"kelly": kelly}}
        )  # fmt: skip
    return folds


def test_independent_folds_count_the_training_window_when_warmup_none_trades_only_the_test():
    """With warmup "none" a fold's traded curve is its test window (63 bars), and the folds
    "independent" for the parameter trends and in-vs-out were every 3rd (63 / 21), whose
    training windows overlap by 80%; WALKFORWARD.md promises every ceil(315 / 21) = 15th."""
    folds = _warmup_none_folds(30, 252, 63, 21)
    assert independent_every(folds, 21, test_only=False, window=252 + 63) == 15
    assert independent_every(folds, 21, test_only=True) == 3  # test windows: as before
    s = stability(folds, PERF, step=21, window=252 + 63)["summary"]["kelly_win_rate"]
    assert s["trend_independent_folds"] == 2  # folds 0 and 15 (10 before)
    assert math.isnan(s["trend_p"])  # fewer than 3: no p-value
    for k in range(6):
        folds[k]["metrics"] = fold_metrics(folds[k], PERF)
    d = decay(folds[:6], 21, PERF, window=252 + 63)
    assert d["in_vs_out"]["sharpe"]["independent_every"] == 15


def test_the_walk_forward_counts_its_folds_apart_by_train_plus_test_with_warmup_none():
    config = tiny_config(signals=(PluginSpec("multi_factor"),))
    wf = tiny_wf(max_folds=4, retrain="never", warmup="none")
    res = WalkForwardAnalyzer(config, wf, workers=0, performance=PERF).run(tiny_panel(320))
    assert res["decay"]["in_vs_out"]["sharpe"]["independent_every"] == 12  # (100 + 20) / 10


@pytest.fixture(scope="module")
def plain_results():
    """A walk-forward that fits nothing (momentum + equal_weight): no garch_params.csv."""
    config = dataclasses.replace(
        tiny_config(signals=(PluginSpec("momentum"),)), sizing=PluginSpec("equal_weight")
    )
    return WalkForwardAnalyzer(config, tiny_wf(warmup="none"), workers=0, performance=PERF).run(
        tiny_panel()
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".record.lock"}


def test_a_rerun_into_the_same_out_leaves_none_of_the_earlier_walk_forwards_files(
    tmp_path, plain_results
):
    """A kelly_garch walk-forward, then an equal_weight one into the same --out: the first
    one's garch_params.csv stayed beside the second's results, as if it were theirs."""
    out = tmp_path / "out"
    out.mkdir()
    # the earlier walk-forward's (a GARCH sizing), and a temporary file of a writer killed
    (out / "walkforward.json").write_text("{}")
    (out / "garch_params.csv").write_text("fold,symbol\n0,AAA\n")
    (out / "feature_importance.csv").write_text("fold,f\n")
    (out / ".equity.csv.4242.0123abcd.tmp").write_text("half")
    (out / "notes.txt").write_text("mine")
    write_outputs(plain_results, out)
    names = set(_files(out))
    assert not names & {"garch_params.csv", "feature_importance.csv"}
    assert ".equity.csv.4242.0123abcd.tmp" not in names and "notes.txt" in names
    assert json.loads((out / "walkforward.json").read_text())["folds"]


def test_a_walk_forward_that_fails_to_write_leaves_the_earlier_results_whole(
    tmp_path, plain_results, monkeypatch
):
    """Files were written in place one by one: a failure midway left half of the new
    results beside half of the earlier ones."""
    import errno

    from tradingd.analysis import walkforward

    out = write_outputs(plain_results, tmp_path / "out")
    before = _files(out)

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(walkforward, "_fold_row", full)  # folds.csv, after three files
    changed = dict(plain_results, stitched={**plain_results["stitched"]})
    changed["stitched"]["equity"] = [x * 2 for x in plain_results["stitched"]["equity"]]
    with pytest.raises(OSError, match="No space"):
        write_outputs(changed, out)
    assert _files(out) == before


@pytest.mark.parametrize(
    "held",
    [
        # a backtest's record
        {"summary.json": '{"run_id": "r"}', "equity.csv": "time,equity\n", "orders.csv": ""},
        # a user's folder
        {"equity.csv": "mine\n", "notes.txt": "mine"},
    ],
)
def test_a_walk_forward_is_not_written_into_a_backtest_record_or_other_files(
    tmp_path, plain_results, held
):
    """`walkforward --out` into a backtest's record replaced its equity.csv and left its
    orders, fills and summary beside a walk-forward's curve."""
    from tradingd.core.errors import TradingdError

    out = tmp_path / "out"
    out.mkdir()
    for name, text in held.items():
        (out / name).write_text(text)
    with pytest.raises(TradingdError) as caught:
        write_outputs(plain_results, out)
    said = str(caught.value)
    assert str(out) in said and "empty or new folder with --out" in said
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != ".record.lock"} == held
