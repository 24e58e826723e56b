"""The mistakes a user makes with `tradingd train` / `retrain`, said as errors (exit 2) naming
what and where, before the data is loaded or any model is trained: an `--out` onto a
published model, a model config without its `[model]` table, too little data, a serving
model that does not exist yet. Most tests run `main()` in-process with the data load
replaced by a tripwire (proof it was never reached); the data ones train nothing either (the
refusal comes before the models are built)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog

from tradingd.__main__ import main
from tradingd.core.errors import ConfigError


class Tripwire(Exception):
    """Raised by a replaced step that the checks must prevent from ever running."""


def write_config(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "small.toml"
    p.write_text(f"""
[run]
start = "2017-01-01"
end = "2017-12-31"
output_dir = "{tmp_path / "runs"}"
[storage]
url = "sqlite:///{tmp_path / "cli.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
{extra}
""")
    return p


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """`main(argv)` in `tmp_path`, the data load a tripwire and the train extra taken as
    installed. Returns (exit code, stdout, stderr)."""
    import tradingd.app
    from tradingd import preflight

    def trip(*_a, **_k):
        raise Tripwire("the checks let the command load its data")

    monkeypatch.setattr(tradingd.app, "load_data", trip)
    monkeypatch.setattr(preflight, "_importable", lambda module: True)
    for name in list(os.environ):
        if name in ("DATABASE_URL", "REDIS_URL") or (
            name.startswith("TRADINGD_") and name != "TRADINGD_REQUIRE_SERVICES"
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    saved = structlog.get_config()

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    structlog.configure(**saved)


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
    root, v1 = published_root(tmp_path)
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
