"""Ensemble and confidence as documented in tradingd.inference.onnx (no TensorFlow needed)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from tradingd.core.errors import ConfigError
from tradingd.inference.onnx import EnsemblePredictor, ModelCard


def test_combination_weights_and_confidence_definition():
    e = EnsemblePredictor({"cnn_lstm": 0.6, "random_forest": 0.4}, residual_std=0.01)
    p = e.combine_predictions(
        {"cnn_lstm": np.array([0.01, -0.02, 0.0]), "random_forest": np.array([0.02, 0.01, 0.0])}
    )
    np.testing.assert_allclose(p, [0.014, -0.008, 0.0])
    conf = e.confidence(p)
    phi = [0.5 * (1 + math.erf(abs(x) / 0.01 / math.sqrt(2))) for x in p]
    np.testing.assert_allclose(conf, phi)
    assert conf[2] == 0.5  # no forecast, no confidence beyond a coin flip
    signal, _ = e.generate_signal(p, threshold=0.55)
    # |p|/s = 1.4 -> Phi = 0.919 (buy); 0.8 -> 0.788 (sell); 0 -> hold
    np.testing.assert_array_equal(signal, [1.0, -1.0, 0.0])
    signal, _ = e.generate_signal(p, threshold=0.85)
    np.testing.assert_array_equal(signal, [1.0, 0.0, 0.0])


def test_bad_ensemble_settings():
    with pytest.raises(ValueError, match="sum to 1"):
        EnsemblePredictor({"cnn_lstm": 0.6, "random_forest": 0.5})
    with pytest.raises(ValueError, match="residual_std"):
        EnsemblePredictor(residual_std=0.0)


def test_missing_or_broken_card(tmp_path):
    with pytest.raises(ConfigError, match="no model card"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text('{"window": 60}')
    with pytest.raises(ConfigError, match="lacks 'feature_set'"):
        ModelCard.load(tmp_path)


def _pop(*keys):  # type: ignore[no-untyped-def]
    def edit(card):  # type: ignore[no-untyped-def]
        for k in keys[:-1]:
            card = card[k]
        del card[keys[-1]]

    return edit


def _set(*keys, value):  # type: ignore[no-untyped-def]
    def edit(card):  # type: ignore[no-untyped-def]
        for k in keys[:-1]:
            card = card[k]
        card[keys[-1]] = value

    return edit


DAMAGED_CARDS = [
    (_pop("format"), "lacks 'format'"),
    (_set("format", value="tradingd-model-card/0"), "'format' is not 'tradingd-model-card/1'"),
    (_set("format", value="other-card/2"), "'format' is not 'tradingd-model-card/1'"),
    (_set("format", value=2), "'format' is not 'tradingd-model-card/1'"),
    (
        _set("format", value="tradingd-model-card/2"),
        "'format' is 'tradingd-model-card/2', newer than 'tradingd-model-card/1', the card "
        "format this tradingd reads: this card was written by a newer tradingd: upgrade "
        "tradingd (or re-export the model with this version)",
    ),
    (_pop("train_range"), "lacks 'train_range'"),
    (_pop("validation_range"), "lacks 'validation_range'"),
    (_set("train_range", value=["2012"]), "'train_range' must be two ISO dates"),
    (_set("train_range", value="1999-09-20"), "'train_range' must be two ISO dates"),
    (_set("train_range", value=None), "'train_range' must be two ISO dates"),
    (_set("train_range", value=[None, None]), "'train_range' must be two ISO dates"),
    (_set("train_range", value=["", ""]), "'train_range' must be two ISO dates"),
    (_set("train_range", value=["1999-09-20", "2015-02-30"]), "'train_range' must be two ISO"),
    (_set("train_range", value=["19990920", "20150219"]), "'train_range' must be two ISO dates"),
    (
        _set("train_range", value=["2015-02-19", "1999-09-20"]),
        "'train_range' must list its first date before its last",
    ),
    (
        _set("validation_range", value=["2017-01-23", "2015-02-23"]),
        "'validation_range' must list its first date before its last",
    ),
    (
        _set("validation_range", value=["2015-02-18", "2017-01-23"]),
        "'validation_range' starts 2015-02-18, before 'train_range' ends (2015-02-19)",
    ),
    (_pop("model_version"), "lacks 'model_version'"),
    (_set("model_version", value="../elsewhere"), "'model_version' must be a name"),
    (_pop("feature_set", "version"), "lacks 'feature_set.version'"),
    (_set("window", value="60"), "'window' must be a whole number of bars >= 1"),
    (_set("scaler", value=[]), "'scaler' must be a JSON object"),
    (_pop("scaler", "mean"), "lacks 'scaler.mean'"),
    (_pop("scaler", "scale"), "lacks 'scaler.scale'"),
    (_set("scaler", "mean", value=[0.0] * 19), "'scaler.mean' has 19 values, not one for each"),
    (_set("scaler", "scale", value=[0.0] * 20), "'scaler.scale' must be > 0"),
    (_set("scaler", "mean", value=[None] * 20), "'scaler.mean' must be a list of finite numbers"),
    (_pop("files", "random_forest"), "lacks 'files.random_forest'"),
    (_pop("files", "cnn_lstm", "path"), "lacks 'files.cnn_lstm.path'"),
    (_pop("files", "cnn_lstm", "sha256"), "lacks 'files.cnn_lstm.sha256'"),
    (_set("files", "cnn_lstm", "sha256", value=12), "'files.cnn_lstm.sha256' must be a SHA-256"),
    (_pop("ensemble", "weights"), "lacks 'ensemble.weights'"),
    (_pop("ensemble", "residual_std"), "lacks 'ensemble.residual_std'"),
    (_pop("ensemble", "threshold"), "lacks 'ensemble.threshold'"),
    (
        _set("ensemble", "weights", value={"cnn_lstm": 0.7, "random_forest": 0.4}),
        "'ensemble.weights' must be finite numbers that sum to 1",
    ),
    (
        _set("ensemble", "weights", value={"cnn_lstm": 1.0}),
        "'ensemble.weights' must give a weight to each of cnn_lstm, random_forest",
    ),
    (_set("ensemble", "residual_std", value=0.0), "'ensemble.residual_std' must be a finite"),
    (_set("ensemble", "threshold", value="0.55"), "'ensemble.threshold' must be in [0.5, 1)"),
]


def _damaged_copy(tmp_path, edit):  # type: ignore[no-untyped-def]
    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    d = tmp_path / "model"
    shutil.copytree(default_model_dir(), d)
    card = json.loads((d / "card.json").read_text())
    edit(card)
    (d / "card.json").write_text(json.dumps(card))
    return d


@pytest.mark.parametrize(("edit", "message"), DAMAGED_CARDS)
def test_a_damaged_card_is_named_with_its_file_and_key(tmp_path, edit, message):
    """Nested keys were read unchecked: a card without scaler.mean was a KeyError ('mean')
    at the first use, reported as the plugin's params failing to start."""
    d = _damaged_copy(tmp_path, edit)
    with pytest.raises(ConfigError) as exc:
        ModelCard.load(d)
    assert str(exc.value).startswith(f"model card {d / 'card.json'}")
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_pop("scaler", "mean"), "lacks 'scaler.mean'"),
        (
            _set("ensemble", "weights", value={"cnn_lstm": 0.7, "random_forest": 0.4}),
            "'ensemble.weights' must be finite numbers that sum to 1",
        ),
        # Loaded before, and `backtest.model_fitted_after` / `backtest.in_sample` said
        # nothing: `fitted_span` found no dates in it.
        (_set("train_range", value=["2012"]), "'train_range' must be two ISO dates"),
        (
            _set("format", value="tradingd-model-card/3"),
            "this card was written by a newer tradingd: upgrade tradingd",
        ),
    ],
)
def test_the_start_up_check_blames_a_damaged_card_not_the_params(tmp_path, edit, message):
    """What `tradingd backtest` printed: 'signals[0].name = 'ml_ensemble': the plugin failed
    to start with its params: KeyError: 'mean'', and weights that do not sum to 1 as
    'signals[0].params: ensemble weights must sum to 1'."""
    from tradingd.config import load_config
    from tradingd.preflight import load_pipeline

    d = _damaged_copy(tmp_path, edit)
    signal = {"name": "ml_ensemble", "params": {"model_dir": str(d), "cache_dir": ""}}
    config = load_config([{"signals": [signal]}], env={})
    with pytest.raises(ConfigError) as exc:
        load_pipeline(config)
    assert str(exc.value).startswith(f"model card {d / 'card.json'}") and message in str(exc.value)


def test_a_model_dir_that_is_a_file_or_a_card_that_is_a_folder_is_named(tmp_path):
    """Both ended as 'the plugin failed to start with its params: NotADirectoryError' (or
    IsADirectoryError), through the start-up check too."""
    from tradingd.config import load_config
    from tradingd.preflight import load_pipeline

    a_file = tmp_path / "model.onnx"
    a_file.write_bytes(b"x")
    with pytest.raises(ConfigError, match=rf"model_dir {a_file} is not a folder: point"):
        ModelCard.load(a_file)
    (tmp_path / "m" / "card.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"model card .*card.json cannot be read"):
        ModelCard.load(tmp_path / "m")
    signal = {"name": "ml_ensemble", "params": {"model_dir": str(a_file), "cache_dir": ""}}
    with pytest.raises(ConfigError, match="is not a folder"):
        load_pipeline(load_config([{"signals": [signal]}], env={}))


def test_a_missing_or_unloadable_model_file_is_named(tmp_path):
    """Reported as the plugin's params failing to start: 'FileNotFoundError: [Errno 2] ...'
    for a file the card names and the folder lacks, 'InvalidProtobuf: ...' for a truncated
    file whose hash the card was given."""
    from tradingd.inference.onnx import ModelPair, sha256_file

    d = _damaged_copy(tmp_path, lambda card: None)
    (d / "random_forest.onnx").unlink()
    with pytest.raises(ConfigError, match=r"random_forest.onnx, named by its card, is missing"):
        ModelPair(d)
    d = _damaged_copy(tmp_path / "truncated", lambda card: None)
    (d / "cnn_lstm.onnx").write_bytes((d / "cnn_lstm.onnx").read_bytes()[:5000])
    card = json.loads((d / "card.json").read_text())
    card["files"]["cnn_lstm"]["sha256"] = sha256_file(d / "cnn_lstm.onnx")
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match=r"cnn_lstm.onnx matches its card but onnxruntime"):
        ModelPair(d)
    # A folder where the file should be (or one it may not read): named as the file's, not
    # as the plugin's params failing (IsADirectoryError before).
    d = _damaged_copy(tmp_path / "folder", lambda card: None)
    (d / "random_forest.onnx").unlink()
    (d / "random_forest.onnx").mkdir()
    with pytest.raises(ConfigError, match=r"random_forest.onnx, named by its card, cannot be read"):
        ModelPair(d)


def test_the_ensemble_plugin_warms_each_model_up_at_load_with_a_batch_of_its_universe(
    monkeypatch,
):
    """The first live bar must not pay onnxruntime's first call of a shape: the plugin runs
    each model once at load on a batch as wide as its universe, and the warm-up does not
    change what the models answer afterwards."""
    from tradingd.inference import onnx
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    calls: list[tuple[str, tuple[int, ...]]] = []
    original = onnx.OnnxModel.run

    def run(self, x):  # type: ignore[no-untyped-def]
        calls.append((self.input_name, tuple(x.shape)))
        return original(self, x)

    monkeypatch.setattr(onnx.OnnxModel, "run", run)
    symbols = tuple(f"S{i}" for i in range(37))
    plugin = MlEnsemble(MlEnsembleConfig(cache_dir="", cache_size=0), symbols)
    window, n_feat = plugin.window, len(plugin.features)
    assert sorted(shape for _, shape in calls) == sorted(
        [(37, window, n_feat), (37, window * n_feat)]
    )
    assert plugin.model_calls == 0
    x = np.random.default_rng(3).normal(size=(5, window, n_feat)).astype(np.float32)
    cold = onnx.ModelPair(plugin._dir, 1).predict(x)
    warm = plugin.pair.predict(x)
    for name in cold:
        np.testing.assert_array_equal(cold[name], warm[name])


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("slot", ["cnn_lstm", "random_forest"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_model_that_outputs_nan_or_inf_is_refused_at_load_naming_the_file(tmp_path, slot, value):
    """A cnn_lstm that always answered NaN ran a backtest to its end with no fill and no
    word; one answering inf bought every symbol at confidence 1.0 every bar. The warm-up at
    load now sees it and names the file and what came out."""
    from tiny_models import graph, model_folder

    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    dims = (60, 20) if slot == "cnn_lstm" else (1200,)
    d = model_folder(tmp_path / "m", **{slot: graph(tmp_path / "g.onnx", dims, value=value)})
    with pytest.raises(ConfigError) as exc:
        MlEnsemble(MlEnsembleConfig(model_dir=str(d), cache_dir=""), ("A", "B", "C"))
    text = str(exc.value)
    assert text.startswith(f"model file {d / f'{slot}.onnx'} output {value} for 3 of 3 input")
    assert "its inputs: finite" in text and "re-export or retrain" in text


def test_a_non_finite_output_met_later_stops_the_prediction_and_is_never_cached(tmp_path):
    """A model finite at the warm-up (its input there is the card's mean, all zeros once
    scaled) may answer NaN or inf for real windows: the prediction fails naming the file,
    and nothing is kept in the prediction cache (NaN was kept, and served as a hold)."""
    from tiny_models import graph, model_folder

    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    w = np.random.default_rng(5).normal(size=(3, 60, 20)).astype(np.float32)
    for kind, out in (("nan_off_zero", "nan"), ("inf_off_zero", "inf")):
        g = graph(tmp_path / f"{kind}.onnx", (1200,), kind)
        d = model_folder(tmp_path / kind, random_forest=g)
        p = MlEnsemble(MlEnsembleConfig(model_dir=str(d), cache_dir=str(tmp_path / "c")), ("A",))
        with pytest.raises(ConfigError, match=rf"random_forest.onnx output {out} for 3 of 3"):
            p.predict(w)
        assert p.cache_entries == 0
        p.close()
        assert not list((tmp_path / "c").glob("*.npz"))


def test_the_plugin_caches_no_ensemble_prediction_that_is_not_finite(monkeypatch):
    """Whatever the models' outputs add up to: an ensemble that is not finite is an error,
    not a cache entry."""
    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), ("A", "B"))
    nan = {"cnn_lstm": np.array([0.01, np.nan]), "random_forest": np.array([0.0, 0.0])}
    monkeypatch.setattr(p.pair, "predict", lambda windows: nan)
    with pytest.raises(ConfigError, match=r"not finite for 1 of 2 windows"):
        p.predict(np.zeros((2, p.window, len(p.features)), dtype=np.float32))
    assert p.cache_entries == 0


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_prediction_that_is_not_finite_is_no_signal(bad):
    """inf had confidence Phi(inf) = 1.0: a certain buy (or sell)."""
    e = EnsemblePredictor({"cnn_lstm": 0.6, "random_forest": 0.4}, residual_std=0.01)
    with pytest.raises(ValueError, match=r"must be finite.*1 not finite, first at index 1"):
        e.generate_signal(np.array([0.01, bad, 0.0]))


# ----------------------------------------------------------------------------- input shapes


def test_a_forest_of_another_width_is_named_with_its_file_and_both_widths(tmp_path):
    """Only the CNN's input was checked against the card: a forest of another width ended
    start-up in onnxruntime's 'InvalidArgument ... index: 1 Got: 1200 Expected: 1000', naming
    no file."""
    from tiny_models import graph, model_folder

    from tradingd.inference.onnx import ModelPair

    rf = graph(tmp_path / "rf.onnx", (1000,))
    d = model_folder(tmp_path / "m", random_forest=rf)
    with pytest.raises(ConfigError) as exc:
        ModelPair(d)
    assert str(exc.value).startswith(
        f"model file {d / 'random_forest.onnx'}: its input is 1000 per window, the card's "
        "window * features is 1200 (window 60, 20 features): the card belongs to another model"
    )
    # The CNN's, named the same way (it named the folder only).
    d = _damaged_copy(tmp_path / "w30", _set("window", value=30))
    with pytest.raises(ConfigError) as exc:
        ModelPair(d)
    assert str(exc.value).startswith(
        f"model file {d / 'cnn_lstm.onnx'}: its input is 60 x 20 per window, the card's window "
        "x features is 30 x 20"
    )


def test_onnxruntime_refusing_an_input_is_named_with_the_model_file(tmp_path):
    """A file whose input width is left open but whose graph needs another one: what
    onnxruntime says comes with the file's path (the plugin's warm-up meets it at load)."""
    from tiny_models import graph, model_folder

    from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig

    rf = graph(tmp_path / "rf.onnx", ("width",), "shape_needs", 1000)
    d = model_folder(tmp_path / "m", random_forest=rf)
    with pytest.raises(ConfigError) as exc:
        MlEnsemble(MlEnsembleConfig(model_dir=str(d), cache_dir=""), ("A", "B"))
    assert str(exc.value).startswith(
        f"model file {d / 'random_forest.onnx'}: onnxruntime cannot run it on an input of "
        "shape (2, 1200) ("
    )


def test_the_start_up_check_says_a_reordered_card_lists_its_features_in_another_order(tmp_path):
    """Refused, rightly, but as 'indicator periods or cross-sectional method differ'."""
    from tradingd.app import verify_model_features
    from tradingd.config import load_config
    from tradingd.preflight import load_pipeline

    def swap(card):  # type: ignore[no-untyped-def]
        f = card["feature_set"]["features"]
        f[0], f[1] = f[1], f[0]

    d = _damaged_copy(tmp_path, swap)
    signal = {"name": "ml_ensemble", "params": {"model_dir": str(d), "cache_dir": ""}}
    config = load_config([{"signals": [signal]}], env={})
    with pytest.raises(ConfigError) as exc:
        verify_model_features(config, load_pipeline(config))
    assert str(exc.value).startswith(
        f"plugin 'ml_ensemble' (model card {d.resolve() / 'card.json'}) expects feature set "
        "'default_v1': the same features in another order (at position 0 the card has "
        "'hl_range', the engine's order 'ret_1')"
    )
    assert "indicator periods" not in str(exc.value)
