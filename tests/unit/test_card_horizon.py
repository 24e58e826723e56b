"""A card's `target.horizon_bars` is read, not ignored: a model forecasting more than one bar
ahead is served with one warning at load, and its live accuracy is scored over its own
horizon (a horizon-5 card back-tested without a word, scored against next-bar moves)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError
from tradingd.inference.onnx import ModelPair
from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig, default_model_dir


def _folder(tmp_path: Path, horizon: object) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    card = json.loads((folder / "card.json").read_text())
    card["target"]["horizon_bars"] = horizon
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _said(folder: Path) -> list[dict]:
    structlog.reset_defaults()
    with capture_logs() as logs:
        ModelPair(folder, threads=1)
        ModelPair(folder, threads=1)  # a second load of the card (a backtest's run): not again
    return [e for e in logs if e["event"] == "model.horizon_not_one"]


def test_a_horizon_5_card_is_served_with_one_warning(tmp_path):
    (said,) = _said(_folder(tmp_path, 5))
    assert said["horizon_bars"] == 5 and said["log_level"] == "warning"
    assert "5 bars ahead" in said["rule"] and said["card"].endswith("card.json")


def test_a_one_bar_card_is_not_warned_of(tmp_path):
    assert _said(_folder(tmp_path, 1)) == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, "5", True])
def test_a_horizon_that_is_no_bar_count_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"'target\.horizon_bars' must be a whole number"):
        ModelPair(_folder(tmp_path, bad), threads=1)


def test_live_accuracy_is_scored_over_the_cards_horizon(tmp_path):
    plugin = MlEnsemble(
        MlEnsembleConfig(model_dir=str(_folder(tmp_path, 5)), cache_dir=""), ("A", "B")
    )
    assert plugin.accuracy()["horizon_bars"] == 5
