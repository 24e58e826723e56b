"""Model roots laid out as `tradingd retrain` publishes them (`versions/<v>` and the
`current` link), for the ML plugin's location and reload tests:

    from published_models import feed, publish, publish_two, switch

`publish(root, v)` copies the shipped pair as version `v` and points `current` at it;
`publish_two(base)` gives "first" (current) and "second" (not switched to); `switch(root, v)`
swaps `current` atomically, as a publish does; `feed(plugin, bars)` scores random bars.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from tradingd.inference.onnx import DEFAULT_MODEL_ROOT
from tradingd_plugins.signals.ml_ensemble import MlEnsemble, default_model_dir

SYMBOLS = ("A", "B")


def publish(root: Path, version: str) -> Path:
    """A copy of the shipped pair laid out as `tradingd retrain` publishes it."""
    target = root / "versions" / version
    shutil.copytree(default_model_dir(), target)
    card = json.loads((target / "card.json").read_text())
    card["model_version"] = version  # to tell the copy from the shipped pair
    (target / "card.json").write_text(json.dumps(card))
    os.symlink(os.path.relpath(target, root), root / "current")
    return target


def publish_two(base: Path) -> tuple[Path, Path]:
    """Versions "first" (`current`) and "second" (published, not switched to) under base's
    model root; returns the root and second's folder."""
    root = base / DEFAULT_MODEL_ROOT
    publish(root, "first")
    second = root / "versions" / "second"
    shutil.copytree(root / "versions" / "first", second)
    card = json.loads((second / "card.json").read_text())
    card["model_version"] = "second"
    (second / "card.json").write_text(json.dumps(card))
    return root, second


def switch(root: Path, version: str) -> None:
    """What `tradingd retrain` does on publishing: `current` swapped atomically."""
    tmp = root / "current.new"
    os.symlink(os.path.relpath(root / "versions" / version, root), tmp)
    os.replace(tmp, root / "current")


def publish_folder(root: Path, version: str, folder: Path) -> Path:
    """`folder` moved under root's versions as `version` (its card keeps its model_version)."""
    return Path(shutil.move(folder, root / "versions" / version))


def feed(p: MlEnsemble, bars: int, seed: int = 3) -> np.ndarray:
    """`bars` bars of random (finite, non-zero) features scored by `p`; the last scores."""
    from plugin_context import bar_context

    rng = np.random.default_rng(seed)
    out = np.full(len(p.symbols), np.nan)
    for _ in range(bars):
        feats = {f: rng.normal(size=len(p.symbols)) for f in p.features}
        out = p.score(bar_context(p.symbols, feats))
    return out
