"""`tradingd retrain` publishes by switching the `current` link of its model root: a folder
there is refused before any training."""

from __future__ import annotations

import os

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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_published_version_folder_follows_the_umask(tmp_path, monkeypatch, umask):
    """The staging folder (tempfile.mkdtemp) is 0700, and it was published as it was: a
    daemon running as another user could not read the model `tradingd retrain` published,
    where `tradingd train`'s folders follow the umask."""
    import json
    import shutil
    import stat
    import types

    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    def train(config, panel, out, model_config, log, **kw):  # the shipped pair, as if trained
        for f in default_model_dir().iterdir():  # into `out` as it is (not its mode)
            shutil.copy(f, out / f.name)
        card = json.loads((out / "card.json").read_text())
        card["model_version"] = "fresh"
        (out / "card.json").write_text(json.dumps(card))
        return card

    monkeypatch.setattr(rt, "train", train)
    monkeypatch.setattr(rt, "gate", lambda card, policy: (True, "passes"))
    before = os.umask(umask)
    try:
        out = rt.retrain(Config(), types.SimpleNamespace(times=()), root=tmp_path / "m")  # type: ignore[arg-type]
    finally:
        os.umask(before)
    assert out.published
    folder = tmp_path / "m" / "versions" / "fresh"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert (tmp_path / "m" / "current").resolve() == folder.resolve()
