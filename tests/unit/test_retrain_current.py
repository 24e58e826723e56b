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


def test_prune_keeps_the_rollback_target_and_orders_versions_by_their_cards(tmp_path, monkeypatch):
    """`_prune` removed by modification time over every folder of `versions/`: after one
    publish with keep = 5 it deleted the version the publish replaced (the rollback target)
    and kept newer hand-made or touched folders. Published versions are ordered by their
    cards' created_at; the current one and the one it replaced are never removed; a folder
    that is not a published version (its card's model_version is not its name) is left
    alone, and said."""
    import json
    import shutil
    import types

    from structlog.testing import capture_logs

    from tradingd_plugins.signals.ml_ensemble import default_model_dir

    root = tmp_path / "m"
    versions = root / "versions"

    def version(name: str, day: int, model_version: str | None = None) -> None:
        folder = versions / name
        shutil.copytree(default_model_dir(), folder)
        card = json.loads((folder / "card.json").read_text())
        card["model_version"] = model_version or name
        card["created_at"] = f"2026-01-{day:02d}T00:00:00+00:00"
        (folder / "card.json").write_text(json.dumps(card))

    for day, name in enumerate(["v1", "v2", "v3", "v4", "v5", "v6"], start=1):
        version(name, day)
    # the current model, the oldest, touched last (newest mtime would not save the others)
    os.symlink("versions/v1", root / "current")
    version("copy-of-v6", 20, model_version="v6")  # hand-made: not a published version
    (versions / "notes").mkdir()  # a folder of the operator's
    for name in ("v2", "v3"):  # touched: their mtime newest, their cards old
        os.utime(versions / name)

    def train(config, panel, out, model_config, log, **kw):  # a new version, as if trained
        for f in default_model_dir().iterdir():
            shutil.copy(f, out / f.name)
        card = json.loads((out / "card.json").read_text())
        card["model_version"], card["created_at"] = "v7", "2026-01-30T00:00:00+00:00"
        (out / "card.json").write_text(json.dumps(card))
        return card

    monkeypatch.setattr(rt, "train", train)
    monkeypatch.setattr(rt, "gate", lambda card, policy: (True, "passes"))
    policy = rt.RetrainPolicy(keep=3)
    with capture_logs() as logs:
        out = rt.retrain(Config(), types.SimpleNamespace(times=()), root=root, policy=policy)  # type: ignore[arg-type]
    assert out.published and rt.current_version(root) == "v7"
    # the newest 3 by their cards (v7, v6, v5) and v1, the version v7 replaced
    left = sorted(p.name for p in versions.iterdir() if not p.name.startswith("."))
    assert left == ["copy-of-v6", "notes", "v1", "v5", "v6", "v7"]
    (pruned,) = [e for e in logs if e["event"] == "model.retrain.pruned"]
    assert pruned["removed"] == ["v2", "v3", "v4"]
    (skipped,) = [e for e in logs if e["event"] == "model.retrain.prune_skipped"]
    assert skipped["folders"] == ["copy-of-v6", "notes"]
