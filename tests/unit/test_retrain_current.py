"""`tradingd retrain` publishes by switching the `current` link of its model root: a folder
there is refused before any training."""

from __future__ import annotations

import pytest
import tradingd_models.retrain as rt

from tradingd.config import Config
from tradingd.core.errors import ConfigError


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_current_that_is_not_a_link_is_refused_before_training(tmp_path, monkeypatch, kind):
    """`tradingd train --out var/models/current` makes a folder: retrain trained for hours,
    then failed with an IsADirectoryError traceback at the publish, leaving a stray link."""
    root = tmp_path / "models"
    root.mkdir()
    current = root / "current"
    if kind == "folder":
        current.mkdir()
        (current / "card.json").write_text("{}")
    else:
        current.write_text("x")
    trained: list[bool] = []
    monkeypatch.setattr(rt, "train", lambda *a, **k: trained.append(True))
    with pytest.raises(ConfigError, match=rf"models/current is a {kind}, not the link.*ln -s"):
        rt.retrain(Config(), panel=None, root=root)  # type: ignore[arg-type]
    assert trained == []
    assert sorted(p.name for p in root.iterdir()) == ["current"]  # nothing made beside it
