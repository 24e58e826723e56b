"""The mistakes a user makes with `tradingd train` / `retrain`, said as errors (exit 2; 78 from
`retrain`, which systemd runs: `config_error_code`) naming
what and where, before the data is loaded or any model is trained: an `--out` onto a
published model, a model config without its `[model]` table, too little data, a serving
model that does not exist yet. Most tests run `main()` in-process with the data load
replaced by a tripwire (proof it was never reached); the data ones train nothing either (the
refusal comes before the models are built)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from cli_runs import Tripwire, config_error_code, in_process, tripwires, write_config

from tradingd.core.errors import ConfigError


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`main(argv)` in `tmp_path`, the data load a tripwire and the train extra taken as
    installed. Returns (exit code, stdout, stderr)."""
    import tradingd.app
    from tradingd import preflight

    tripwires(
        monkeypatch, [(tradingd.app, "load_data")], "the checks let the command load its data"
    )
    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    return in_process(monkeypatch, tmp_path, capsys)


def published_root(tmp_path: Path) -> tuple[Path, Path]:
    """A model root as `tradingd retrain` leaves it: versions/v1 with a card, current -> it."""
    root = tmp_path / "mr"
    v1 = root / "versions" / "v1"
    v1.mkdir(parents=True)
    (v1 / "card.json").write_text("{}")
    (v1 / "cnn_lstm.onnx").write_bytes(b"onnx")
    os.symlink("versions/v1", root / "current")
    return root, v1


# ----------------------------------------------------------------------------- 1: --out


@pytest.mark.parametrize(
    ("out", "said"),
    [
        ("mr/current", "`current` link"),
        ("mr/versions/v1", "published model folder versions/v1"),
        ("mr/versions/v2", "published model folder versions/v2"),  # a new one there
        ("mr/current/sub", "published model folder versions/v1"),
        ("elsewhere", "resolves to"),  # a link of the user's own into versions/v1
        ("m_old", "already holds a model (card.json, cnn_lstm.onnx)"),
    ],
)
def test_train_out_onto_a_published_or_existing_model_is_refused(cli, tmp_path, out, said):
    """`train --out var/models/current` rewrote the published model in place: a running
    daemon kept serving the old one, and its restart switched models without a word."""
    _, v1 = published_root(tmp_path)
    os.symlink(v1, tmp_path / "elsewhere")
    old = tmp_path / "m_old"
    old.mkdir()
    (old / "card.json").write_text("{}")
    (old / "cnn_lstm.onnx").write_bytes(b"onnx")
    before = sorted((p.name, p.stat().st_size) for p in v1.iterdir())
    code, stdout, err = cli("train", "-c", str(write_config(tmp_path)), "--out", out)
    assert (code, stdout) == (2, ""), err  # and the load_data tripwire was not reached
    assert f"--out = {out!r}" in err and said in err
    assert "another --out" in err and "tradingd retrain" in err
    assert sorted((p.name, p.stat().st_size) for p in v1.iterdir()) == before


def test_train_library_call_checks_its_out_folder_too(tmp_path):
    from tradingd_models.training import train

    from tradingd.config import Config

    _, v1 = published_root(tmp_path)
    with pytest.raises(ConfigError, match="published model folder versions/v1"):
        train(Config(), None, v1)  # type: ignore[arg-type]  # refused before the data


def test_train_into_a_new_or_empty_folder_passes_the_check(tmp_path):
    from tradingd_models.training import check_out_dir

    published_root(tmp_path)
    (tmp_path / "empty").mkdir()
    for out in ("new/sub", "empty", "mr/trained"):
        check_out_dir(tmp_path / out)


# ----------------------------------------------------------------------------- 2: --model-config


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[modle]\nepochs = 1\n", "unknown [modle]"),
        ("epochs = 1\n", "unknown epochs (a top-level key)"),
        ("[model]\nepochs = 1\n[run]\nname = 'x'\n", "unknown [run]"),
        ("", "no [model] table"),
        ("[model]\nepoch = 1\n", "model.epoch"),
        ("[model]\ntime_steps = 0\n", "time_steps must be >= 1"),
        # shorter than the conv kernel: Keras' raw traceback (exit 1) after the data load
        ("[model]\ntime_steps = 1\n", "time_steps = 1 is shorter than cnn_kernel_size = 2"),
        ("[model]\ntime_steps = 3\ncnn_kernel_size = 4\n", "raise time_steps or lower"),
    ],
)
def test_a_model_config_without_its_model_table_is_refused(cli, tmp_path, text, said):
    """`[modle]` or top-level keys were read as an empty [model]: the full-size defaults
    (50 epochs of 64 filters and 100 units) trained for hours without a word."""
    mc = tmp_path / "tiny.toml"
    mc.write_text(text)
    code, out, err = cli(
        "train", "-c", str(write_config(tmp_path)), "--model-config", str(mc), "--out", "o"
    )
    assert (code, out) == (2, ""), err  # and the load_data tripwire was not reached
    assert f"model config {mc}: " in err and said in err


# ----------------------------------------------------------------------------- 3: too little data


@pytest.fixture(scope="module")
def bundled_panel():
    from tradingd.app import load_data
    from tradingd.config import load_config

    return load_data(load_config([], env={}))  # 2 series, 1999-01-04 to 2018-12-31


def last_bars(panel, n: int):
    from tradingd.feeds.panel import FIELDS, Panel

    return Panel(panel.times[-n:], panel.symbols, *(getattr(panel, f)[-n:] for f in FIELDS))


def never_fit(monkeypatch) -> None:
    import tradingd_models.training as training

    def trip(*_a, **_k):
        raise Tripwire("a model was fitted")

    monkeypatch.setattr(training, "fit_models", trip)


@pytest.mark.parametrize(
    ("bars", "start", "said"),
    [
        # the features' warm-up and the window take all 150 bars: Keras was never reached,
        # prepare_ml_data's ValueError was a traceback
        (150, "", "no complete training window (window 60 bars + horizon 1"),
        # 190 training and 48 validation windows: trained on (and Keras' fit on an empty
        # set, 0 windows, was a KeyError: 'loss' traceback)
        (300, "", "too few windows to train on: 190 training"),
        # blamed the warm-up
        (None, "2019-06-03", "run.start = 2019-06-03 is after the data's last bar (2018-12-31"),
    ],
)
def test_train_on_too_little_data_says_the_window_and_the_data(
    cli, tmp_path, monkeypatch, bundled_panel, bars, start, said
):
    import tradingd.app

    panel = bundled_panel if bars is None else last_bars(bundled_panel, bars)
    monkeypatch.setattr(tradingd.app, "load_data", lambda config: panel)
    never_fit(monkeypatch)
    cfg = write_config(tmp_path)
    if start:
        cfg.write_text(cfg.read_text().replace('start = "2017-01-01"', f'start = "{start}"'))
        cfg.write_text(cfg.read_text().replace('end = "2017-12-31"', 'end = "2019-12-31"'))
    code, out, err = cli("train", "-c", str(cfg), "--out", "o")
    assert (code, out) == (2, ""), err
    assert said in err
    first = str(panel.times[0])[:10]
    assert f"data {len(panel.times)} bars from {first} to 2018-12-31" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_the_minimum_windows_are_model_config_fields(tmp_path, bundled_panel, monkeypatch):
    from tradingd_models.config import ModelConfig
    from tradingd_models.training import TooFewWindows, train

    from tradingd.config import load_config

    never_fit(monkeypatch)
    cfg = load_config([], env={})
    # 190 training windows, and 48 in the validation span: 22 validation and 24 test (its
    # last 12 bars of 2 symbols), one bar purged between them
    few = ModelConfig(min_train_windows=100, min_validation_windows=20, min_test_windows=20)
    with pytest.raises(Tripwire):  # enough for these: training starts
        train(cfg, last_bars(bundled_panel, 300), tmp_path / "a", few, log=lambda m: None)
    more = ModelConfig(min_validation_windows=1, min_train_windows=1, min_test_windows=25)
    with pytest.raises(TooFewWindows) as refused:
        train(cfg, last_bars(bundled_panel, 300), tmp_path / "b", more, log=lambda m: None)
    said = re.search(
        r"22 validation \(validation range \S+ to (\S+)\) and 24 test \(test range (\S+) to "
        r"2018-12-28\), the minimum is 1, 1 and 25 \(model min_train_windows, "
        r"min_validation_windows, min_test_windows; the test windows are the last "
        r"test_share_of_validation = 0.5 of the validation span",
        str(refused.value),
    )
    assert said and said[1] < said[2], refused.value  # the test windows after the purge
    with pytest.raises(ValueError, match="min_train_windows must be >= 1"):
        ModelConfig(min_train_windows=0)


def test_retrain_on_too_few_bars_names_the_window_bars(cli, tmp_path, monkeypatch, bundled_panel):
    import tradingd.app

    monkeypatch.setattr(tradingd.app, "load_data", lambda config: bundled_panel)
    never_fit(monkeypatch)
    cfg = str(write_config(tmp_path))
    for bars, said in (("150", "no complete training window"), ("300", "too few windows")):
        code, out, err = cli("retrain", "-c", cfg, "--window-bars", bars, "--root", "mr")
        assert (code, out) == (config_error_code("retrain"), ""), err
        assert said in err and f"--window-bars {bars}:" in err
        assert f"data {bars} bars from " in err and "Traceback" not in err
        assert [p.name for p in (tmp_path / "mr" / "versions").iterdir()] == []


# ----------------------------------------------------------------------------- 4: served model


def ml_signal(model_dir: str, extra: str = "") -> str:
    return f"""
[[signals]]
name = "ml_ensemble"
params = {{ model_dir = "{model_dir}"{extra} }}
"""


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_training_does_not_need_the_served_model_to_exist(cli, tmp_path, command):
    """The start-up check built the ml_ensemble plugin, which loads its model: training the
    first model into the folder a config will serve from was refused ("model_dir ... does
    not exist")."""
    cfg = str(write_config(tmp_path, ml_signal(str(tmp_path / "models" / "new"))))
    with pytest.raises(Tripwire):  # the checks passed: the data load was reached
        cli(command, "-c", cfg)


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_training_still_checks_the_ml_plugins_params(cli, tmp_path, command):
    cfg = str(write_config(tmp_path, ml_signal(str(tmp_path / "new"), ", threshold = 2.0")))
    code, out, err = cli(command, "-c", cfg)
    assert (code, out) == (config_error_code(command), "")
    assert "signals[0].params" in err and "threshold must be in [0.5, 1)" in err


def test_serving_commands_still_need_the_served_model(cli, tmp_path):
    cfg = str(write_config(tmp_path, ml_signal(str(tmp_path / "models" / "new"))))
    code, out, err = cli("config", "-c", cfg)
    assert (code, out) == (2, "")
    assert "model_dir" in err and "does not exist" in err
