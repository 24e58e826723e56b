"""Training, ONNX export, parity and the ML plugin, on a tiny model (the train extra)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the train extra (TensorFlow) is not installed")
pytest.importorskip("sklearn", reason="the train extra (scikit-learn) is not installed")

import onnxruntime as ort
from tradingd_models.cnn_lstm import CNNLSTMModel
from tradingd_models.config import ModelConfig
from tradingd_models.forest import RandomForestModel
from tradingd_models.training import train

from tradingd.app import build_engine, load_data
from tradingd.config import PluginSpec, load_config
from tradingd.core.errors import ConfigError
from tradingd.features.catalog import resolve_set
from tradingd.features.engineer import compute_batch, prepare_ml_data
from tradingd.inference.onnx import CNN_LSTM_ARCHITECTURE, model_input, raw_outputs, sha256_file

TINY = ModelConfig(cnn_filters=8, lstm_units=8, epochs=2, rf_n_estimators=10, rf_max_depth=4)


def small_config():
    cfg = load_config([], env={})
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, start="2014-01-01"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = small_config()
    card = train(cfg, load_data(cfg), out, TINY, log=lambda m: None)
    return out, card


@pytest.fixture(scope="module")
def real_windows():
    cfg = small_config()
    panel = load_data(cfg)
    names = resolve_set("default_v1")
    f = compute_batch(panel, names, dtype=np.float32)
    return prepare_ml_data(f, names, panel.close, panel.split, panel.times)


def test_card_says_what_the_model_is(tiny_model):
    out, card = tiny_model
    assert (
        card["feature_set"]["name"] == "default_v1" and len(card["feature_set"]["features"]) == 20
    )
    assert card["window"] == 60 and card["target"]["kind"] == "forward_log_return"
    assert card["architecture"] == CNN_LSTM_ARCHITECTURE  # the newest bar reaches the LSTM
    assert card["bar"] == "1d"  # the bundled data's: the horizon and confidence are daily
    assert card["train_range"][1] < card["validation_range"][0]  # chronological
    # From run.start (2014-01-01), the bars before it warming up: it trained from 1999.
    assert "2014-01-01" <= card["train_range"][0] < "2014-01-10"
    assert card["data"]["range"][0] < "2000-01-01"  # loaded for the warm-up all the same
    assert card["data"]["symbols"] == ["NASDAQ", "SP500"] and len(card["data"]["sha256"]) == 64
    for m in ("cnn_lstm", "random_forest"):
        assert card["files"][m]["sha256"] == sha256_file(out / card["files"][m]["path"])
    # The validation span of before the test split: its first windows validate, its last
    # (after a purge of `horizon` bars) are the held-out test, the training windows as they were.
    span = _validation_span()
    assert card["samples"]["train"] == span["n_train"]
    assert card["validation_range"][1] < card["test_range"][0]
    assert card["test_range"][1] == str(span["t"].max())[:10]
    days = span["t"].astype("datetime64[D]").astype(str)
    y_val = span["y"][days <= card["validation_range"][1]]
    y_test = span["y"][days >= card["test_range"][0]]
    assert (card["samples"]["validation"], card["samples"]["test"]) == (len(y_val), len(y_test))
    assert len(y_val) + len(y_test) < len(span["y"])  # a purged bar between them
    for split, y in (("validation", y_val), ("test", y_test)):
        m = card["metrics"][split]
        for k in ("cnn_lstm", "random_forest", "ensemble", "zero", "persistence", "always_up"):
            assert {"mse", "directional_accuracy", "ic"} <= set(m[k])
            assert m[k]["n"] == len(y)
        # the zero forecast's error is E[y^2], on the split's own windows
        assert m["zero"]["mse"] == pytest.approx(np.mean(np.square(y)), rel=1e-6)
    # The confidence is calibrated on the validation windows alone: the residual std of the
    # exported ensemble there (the ONNX files match the trained models to 1e-5), not over
    # the test windows too.
    sc = card["scaler"]
    x = ((span["x"] - np.float32(sc["mean"])) / np.float32(sc["scale"])).astype(np.float32)
    weights = card["ensemble"]["weights"]
    p = sum(
        weights[m] * np.ravel(raw_outputs(out / card["files"][m]["path"], model_input(m, x)))
        for m in ("cnn_lstm", "random_forest")
    )
    resid = span["y"] - p
    std = card["ensemble"]["residual_std"]
    assert std == pytest.approx(np.std(resid[days <= card["validation_range"][1]]), rel=1e-3)
    assert std != pytest.approx(np.std(resid), rel=1e-3)
    assert set(card["feature_importance"]) == set(card["feature_set"]["features"])
    assert abs(sum(card["feature_importance"].values()) - 1.0) < 1e-9  # MDI sums to 1
    assert "tensorflow-cpu" in card["versions"] or "tensorflow" in card["versions"]
    assert json.loads((out / "card.json").read_text())["model_version"] == card["model_version"]
    # The export was compared with the trained models on the validation windows, in the card.
    parity = card["export_parity"]
    assert parity["rows"] == card["samples"]["validation"]
    assert set(parity["max_abs_diff"]) == {"cnn_lstm", "random_forest"}
    assert all(0 <= d <= parity["tolerance"] for d in parity["max_abs_diff"].values())


def test_a_model_trained_on_intraday_bars_records_their_length(tmp_path):
    """The card had no bar length, so a daemon could not tell a model of 5-minute returns
    from a daily one. The data's bars are recorded, not live.bar's (the config's live bar
    need not be the training data's): said when they differ."""
    cfg = small_config()
    panel = load_data(cfg)
    panel = dataclasses.replace(panel, **{f: getattr(panel, f)[-1500:] for f in _PANEL_ARRAYS})
    days = np.repeat(np.datetime64("2024-01-08") + np.arange(20), 78)[: len(panel.times)]
    minutes = np.tile(14 * 60 + 30 + 5 * np.arange(78), 20)[: len(panel.times)]
    times = days.astype("datetime64[ns]") + minutes.astype("timedelta64[m]")
    lines: list[str] = []
    card = train(
        dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, start="")),
        dataclasses.replace(panel, times=times),
        tmp_path / "m",
        dataclasses.replace(TINY, epochs=1),
        log=lines.append,
    )
    assert card["bar"] == "5m"
    assert json.loads((tmp_path / "m" / "card.json").read_text())["bar"] == "5m"
    (said,) = [line for line in lines if "trained on 5m bars" in line]
    assert "live.bar = 1d" in said


_PANEL_ARRAYS = ("times", "open", "high", "low", "close", "volume", "split", "dividend")


def test_an_export_that_differs_from_the_trained_model_is_refused(tmp_path, monkeypatch):
    """Nothing compared the ONNX files (served) with the framework models (whose outputs
    made the card's metrics and the live confidence) outside the tests: a converter
    regression would have served another model than the one validated."""
    import tradingd_models.training as training

    monkeypatch.setattr(training, "EXPORT_PARITY_ATOL", -1.0)  # any difference is too much
    cfg = small_config()
    out = tmp_path / "model"
    with pytest.raises(training.ExportMismatch, match=r"exported cnn_lstm\.onnx differs"):
        train(cfg, load_data(cfg), out, TINY, log=lambda m: None)
    assert not out.exists()  # no ONNX file, no card
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor a staging folder


def test_a_training_cut_short_while_writing_leaves_no_model_and_the_rerun_trains(
    tmp_path, monkeypatch
):
    """A full disk (or a kill) while `tradingd train` exported left a cut ONNX file in --out,
    and the rerun was refused: "already holds a model". Now the model is written to a
    staging folder beside --out and published whole; a staging folder a killed training
    left (its process gone) is removed by the next training of the same --out."""
    import errno

    import tradingd_models.training as training

    cfg = small_config()
    out = tmp_path / "model"
    dead = tmp_path / f".model{training._STAGING}999999999-abc"  # no such process
    dead.mkdir()
    (dead / "cnn_lstm.onnx").write_bytes(b"cut")
    (tmp_path / "notes.txt").write_text("mine")

    def full_disk(self, path):
        path.write_bytes(b"cut")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    from tradingd_models.forest import RandomForestModel

    monkeypatch.setattr(RandomForestModel, "export_onnx", full_disk)
    panel = load_data(cfg)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, panel, out, TINY, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    card = train(cfg, panel, out, TINY, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "card.json",
        "cnn_lstm.onnx",
        "random_forest.onnx",
    ]
    assert json.loads((out / "card.json").read_text())["model_version"] == card["model_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes.txt"]


def test_train_into_a_folder_of_other_files_adds_the_model_beside_them(tiny_model, tmp_path):
    """`check_out_dir` allows a folder that holds no model: its files stay, the model's are
    added (the staging folder cannot be renamed over a folder that is not empty)."""
    cfg = small_config()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README").write_text("my notes")
    card = train(cfg, load_data(cfg), out, TINY, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "README",
        "card.json",
        "cnn_lstm.onnx",
        "random_forest.onnx",
    ]
    assert (out / "README").read_text() == "my notes"
    assert card["model_version"] == tiny_model[1]["model_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def _validation_span():
    """The training-window count and the validation span's windows, targets and times, as
    prepare_ml_data gives them (before the test split is carved out of the span)."""
    cfg = small_config()
    panel = load_data(cfg)
    names = resolve_set("default_v1")
    f = compute_batch(panel, names, dtype=np.float32)
    start = np.datetime64(cfg.run.start, "ns")
    d = prepare_ml_data(f, names, panel.close, panel.split, panel.times, start=start)
    return {"n_train": len(d["y_train"]), "x": d["x_val"], "y": d["y_val"], "t": d["t_val"]}


def test_onnx_matches_keras_and_sklearn_on_real_windows(real_windows, tmp_path):
    xt, yt, xv, yv = (real_windows[k] for k in ("x_train", "y_train", "x_val", "y_val"))
    cnn = CNNLSTMModel(60, 20, config=TINY)
    cnn.train(xt, yt, xv, yv)
    cnn.export_onnx(tmp_path / "c.onnx")
    s = ort.InferenceSession(str(tmp_path / "c.onnx"))
    onnx_pred = s.run(None, {s.get_inputs()[0].name: xv})[0][:, 0]
    np.testing.assert_allclose(onnx_pred, cnn.predict(xv), rtol=0, atol=1e-5)
    rf = RandomForestModel.from_config(TINY)
    rf.train(xt, yt)
    rf.export_onnx(tmp_path / "r.onnx")
    s = ort.InferenceSession(str(tmp_path / "r.onnx"))
    onnx_pred = s.run(None, {"x": xv.reshape(len(xv), -1)})[0][:, 0]
    np.testing.assert_allclose(onnx_pred, rf.predict(xv), rtol=0, atol=1e-6)


def test_retraining_on_the_same_data_reproduces_the_model(real_windows):
    xt, yt, xv, yv = (real_windows[k] for k in ("x_train", "y_train", "x_val", "y_val"))
    preds = []
    for _ in range(2):
        m = CNNLSTMModel(60, 20, config=TINY)
        m.train(xt, yt, xv, yv)
        preds.append(m.predict(xv))
    np.testing.assert_array_equal(preds[0], preds[1])


async def test_ml_plugin_backtest_and_prediction_cache(tiny_model, tmp_path):
    out, card = tiny_model
    cfg = small_config()
    cfg = dataclasses.replace(
        cfg,
        signals=(
            PluginSpec(
                "ml_ensemble",
                params={
                    "model_dir": str(out),
                    "threshold": 0.5,
                    "cache_dir": str(tmp_path / "cache"),
                },
            ),
        ),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / 's.db'}"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )
    engine = build_engine(cfg, "backtest")
    plugin = engine.pipeline.signals[0][0]
    assert plugin.version == card["model_version"]
    scored = []  # every bar the plugin is asked about (warm-up bars included)
    score = plugin.score
    plugin.score = lambda ctx: scored.append(ctx.time) or score(ctx)
    result = await engine.run_until_done()
    assert result.bars > 0 and plugin.model_calls > 0
    from tradingd.storage.factory import open_store

    store = open_store(cfg.storage.url)
    await store.start()
    try:
        signals = await store.fetch("signals", engine.run.run_id)
    finally:
        await store.stop()
    assert signals and {r["source"] for r in signals} == {f"ml_ensemble@{card['model_version']}"}
    # one batched model call per bar with a full window, never one per symbol
    assert plugin.model_calls <= len(scored)
    # the same bars again, in a new engine with a new plugin: every prediction comes from the
    # cache the first run left in cache_dir
    engine2 = build_engine(cfg, "backtest")
    plugin2 = engine2.pipeline.signals[0][0]
    result2 = await engine2.run_until_done()
    assert plugin2.model_calls == 0 and plugin2.cache_hits > 0
    assert result2.equity == result.equity


def test_card_feature_problems_stop_startup(tiny_model, tmp_path):
    out, _ = tiny_model
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("cnn_lstm.onnx", "random_forest.onnx"):
        (bad / f).write_bytes((out / f).read_bytes())
    c = json.loads((out / "card.json").read_text())
    c["feature_set"]["features"][-1] = "bogus_feature_7"
    (bad / "card.json").write_text(json.dumps(c))
    cfg = dataclasses.replace(
        small_config(), signals=(PluginSpec("ml_ensemble", params={"model_dir": str(bad)}),)
    )
    with pytest.raises(ConfigError, match="needs feature 'bogus_feature_7'"):
        build_engine(cfg, "backtest")
    # trained with other indicator periods than configured
    cfg2 = dataclasses.replace(
        small_config(), signals=(PluginSpec("ml_ensemble", params={"model_dir": str(out)}),)
    )
    cfg2 = dataclasses.replace(
        cfg2,
        features=dataclasses.replace(
            cfg2.features, indicators=dataclasses.replace(cfg2.features.indicators, rsi=9)
        ),
    )
    with pytest.raises(ConfigError, match="version"):
        build_engine(cfg2, "backtest")
    # a tampered model file
    (bad / "card.json").write_text((out / "card.json").read_text())
    (bad / "random_forest.onnx").write_bytes(b"x" + (out / "random_forest.onnx").read_bytes())
    with pytest.raises(ConfigError, match="does not match its card"):
        build_engine(
            dataclasses.replace(
                cfg2,
                features=small_config().features,
                signals=(PluginSpec("ml_ensemble", params={"model_dir": str(bad)}),),
            ),
            "backtest",
        )


def test_backtest_process_never_imports_tensorflow_or_sklearn(tiny_model, tmp_path):
    out, _ = tiny_model
    cfg = tmp_path / "ml.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        [run]
        start = "2014-01-01"
        [[signals]]
        name = "ml_ensemble"
        params = {{ model_dir = "{out}" }}
        [storage]
        url = "sqlite:///{tmp_path / "p.db"}"
        [log]
        audit_dir = "{tmp_path / "audit"}"
    """)
    )
    code = textwrap.dedent(f"""
        import sys
        from tradingd.__main__ import main
        rc = main(["backtest", "-c", "{cfg}", "--json", "--output", "{tmp_path / "out"}"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("tensorflow", "keras", "sklearn", "tf2onnx", "skl2onnx"))
        print("HEAVY", heavy)
        sys.exit(rc)
    """)
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ},
    )
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_retrain_publishes_only_past_the_floor_and_the_plugin_follows(tmp_path):
    import asyncio

    from tradingd_models.retrain import RetrainPolicy, current_version, retrain

    from tradingd.feeds.history import HistoryFeed
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    cfg = small_config()
    panel = load_data(cfg)
    root = tmp_path / "models"

    def passing(window: int) -> RetrainPolicy:  # a gate every candidate clears
        return RetrainPolicy(window_bars=window, min_directional_accuracy=0.0, max_mse_ratio=1e9)

    from structlog.testing import capture_logs

    with capture_logs() as logs:
        first = retrain(cfg, panel, root, passing(700), TINY)
    assert first.published and current_version(root) == first.version
    # Its steps and each epoch said as it trains (a retrain of minutes said nothing).
    steps = [e["step"] for e in logs if e["event"] == "model.retrain.progress"]
    epochs = [s for s in steps if s.startswith("cnn_lstm epoch ")]
    ran = json.loads((root / "current" / "card.json").read_text())["metrics"]
    assert len(epochs) == ran["training_history"]["epochs_run"] >= 1, steps
    assert (
        epochs[0].startswith(f"cnn_lstm epoch 1/{TINY.epochs}: loss ") and "val_loss" in epochs[0]
    )
    assert any(s.startswith("windows: ") for s in steps)
    # judged on the candidate's held-out test windows, said so
    published = json.loads((root / "current" / "card.json").read_text())
    assert first.judged_on == "test" and first.reason.startswith("test split: ")
    assert json.dumps(first.metrics) == json.dumps(published["metrics"]["test"])  # NaN too
    plugin = MlEnsemble(MlEnsembleConfig(model_dir=str(root / "current")), panel.symbols)
    assert plugin.version == first.version

    # An impossible floor: the candidate is rejected and `current` does not move.
    rejected = retrain(
        cfg, panel, root, RetrainPolicy(window_bars=650, min_directional_accuracy=0.99), TINY
    )
    assert not rejected.published and "below the floor" in rejected.reason
    assert current_version(root) == first.version
    assert not any(p.name.startswith(".staging") for p in (root / "versions").iterdir())

    # A candidate that passes is swapped in, and the plugin loads it at its next bar.
    second = retrain(cfg, panel, root, passing(650), dataclasses.replace(TINY, seed=7))
    assert second.published and current_version(root) == second.version != first.version
    feed = HistoryFeed(panel)
    bar = asyncio.run(feed.bars(feed.times[-1]))
    from tradingd.core.ports import BarContext, PortfolioView
    from tradingd.engine.history import HistoryBuffer

    n = len(panel.symbols)
    feats = {f: np.zeros(n) for f in plugin.features}
    ctx = BarContext(
        bar.time,
        0,
        panel.symbols,
        bar,
        bar.close,
        np.ones(n, bool),
        HistoryBuffer(n, 2),
        feats,
        PortfolioView(1.0, 1.0, np.zeros(n), np.zeros(n), 1.0, 1.0),
        np.ones(n, bool),
    )
    plugin.score(ctx)
    assert plugin.version == second.version

    # Without a model config, the current model's hyperparameters, not the specification's
    # (the CLI passes none: it trained the default network whatever was running).
    third = retrain(cfg, panel, root, passing(600))
    card = json.loads((root / "versions" / third.version / "card.json").read_text())
    assert card["model_config"]["cnn_filters"] == TINY.cnn_filters  # not the default 64
    assert card["model_config"]["seed"] == 7  # the current (second) model's
    # A candidate of another window is not published: a running daemon refuses it
    # (model.reload_refused) while `current` would name it.
    other = retrain(cfg, panel, root, passing(600), dataclasses.replace(TINY, time_steps=20))
    assert not other.published and "window" in other.reason
    assert current_version(root) == third.version


def test_train_twice_gives_the_same_model_version(tiny_model, tmp_path):
    _, card = tiny_model
    cfg = small_config()
    again = train(cfg, load_data(cfg), tmp_path / "again", TINY, log=lambda m: None)
    assert again["model_version"] == card["model_version"]
    assert again["data"]["sha256"] == card["data"]["sha256"]


def test_model_config_file_holds_the_specification_defaults(tmp_path):
    import tomllib
    from pathlib import Path

    from tradingd.config import build

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "config" / "model.toml").read_text())["model"]
    assert build(ModelConfig, data, "model") == ModelConfig()
    bad = tmp_path / "m.toml"
    bad.write_text("[model]\nlstm_unit = 10\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tradingd",
            "train",
            "--model-config",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and "model.lstm_unit" in r.stderr and "lstm_units" in r.stderr


def test_prediction_cache_keeps_a_bounded_number_of_versions(tiny_model, tmp_path):
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    out, _ = tiny_model
    cache = tmp_path / "cache"
    cache.mkdir()
    # files left by earlier model versions, oldest first (.json: the previous format)
    for k, name in enumerate(("old0.npz", "old1.json", "old2.npz", "old3.json")):
        f = cache / name
        f.write_text("[]")
        os.utime(f, (1_000_000 + k, 1_000_000 + k))
    plugin = MlEnsemble(
        MlEnsembleConfig(model_dir=str(out), cache_dir=str(cache), cache_versions=3),
        ("NASDAQ", "SP500"),
    )
    window = np.zeros((1, plugin.window, len(plugin.features)), dtype=np.float32)
    pred = plugin.predict(window)
    plugin.close()
    kept = sorted(p.name for p in cache.iterdir())
    # (and the folder's lock file, which saves merging into a file take)
    assert kept == sorted([f"{plugin.version}.npz", "old3.json", "old2.npz", ".lock"])
    again = MlEnsemble(
        MlEnsembleConfig(model_dir=str(out), cache_dir=str(cache)), ("NASDAQ", "SP500")
    )
    assert again.cache_entries == 1
    np.testing.assert_array_equal(again.predict(window), pred)
    assert again.model_calls == 0
