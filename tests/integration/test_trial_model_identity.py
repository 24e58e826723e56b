"""The trial count (deflated Sharpe ratio) tells models apart as the run id does: by what
the plugins report they decide from (`run_inputs`: the ML plugin's model by version, ONNX
files and card), not by a `version` attribute. Two models of one version with other files
were one trial and two run ids; a signal whose `version` attribute changed was two trials
and one run id."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import _StubEntryPoint, make_panel
from published_models import switch
from tiny_models import graph, model_folder

from tradingd.analysis.trials import count_trials
from tradingd.backtest import run_backtest
from tradingd.config import PluginSpec, load_config
from tradingd.inference.onnx import DEFAULT_MODEL_ROOT


def _same_version_other_files(root: Path, tmp: Path) -> None:
    """Versions "a" and "b" whose cards both say model_version "tiny" and whose cnn_lstm
    files differ (answering 0.05 and 0.03: both buy)."""
    for name, value in (("a", 0.05), ("b", 0.03)):
        g = graph(tmp / f"{name}.onnx", (60, 20), "constant", value)

        def edit(card):
            card["model_version"] = "tiny"

        model_folder(root / "versions" / name, cnn_lstm=g, edit=edit)


def test_two_models_of_one_version_with_other_files_are_two_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    _same_version_other_files(root, tmp_path)
    cfg = load_config([], env={})
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(
            cfg.run, start="2017-01-01", end="2017-03-31", output_dir=str(tmp_path / "runs")
        ),
        signals=(PluginSpec("ml_ensemble", params={"cache_dir": ""}),),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / 's.db'}"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )
    runs = Path(cfg.run.output_dir)
    outcomes = []
    for name in ("a", "b"):
        switch(root, name)
        outcomes.append(asyncio.run(run_backtest(cfg)))
    assert outcomes[0].run_id != outcomes[1].run_id  # the run ids tell them apart
    assert [m["version"] for o in outcomes for m in o.summary["models"]] == ["tiny", "tiny"]
    assert count_trials(runs).trials == 2
    # From the ledger too, once the folders are gone.
    for o in outcomes:
        shutil.rmtree(o.output_dir)
    assert count_trials(runs).trials == 2


@dataclass(frozen=True)
class _VersionedConfig:
    pass


class _Versioned:
    """A third-party signal with a `version` attribute and no `run_inputs`: what it says of
    itself is not in its run id."""

    kind: ClassVar[str] = "signal"
    Config = _VersionedConfig
    version: ClassVar[str] = "1"

    def __init__(self, config: _VersionedConfig, symbols: tuple[str, ...]) -> None:
        self.name = "versioned"

    def required_features(self) -> tuple[str, ...]:
        return ()

    def score(self, ctx):  # type: ignore[no-untyped-def]
        return np.where(ctx.tradable, 1.0, np.nan)


@pytest.fixture
def versioned(monkeypatch):
    from tradingd.engine import plugins as registry

    eps = dict(registry.available())
    eps["versioned"] = _StubEntryPoint("versioned", _Versioned)
    monkeypatch.setattr(registry, "available", lambda: eps)


def test_a_version_attribute_without_run_inputs_moves_neither_the_run_id_nor_the_trials(
    engine_config, versioned, tmp_path, monkeypatch
):
    """Its run id hashes no version, so the rerun after the attribute changed replaced the
    first run's folder: one run, and the count said two trials."""
    panel = make_panel(n_bars=90, split_at=None)
    cfg = dataclasses.replace(
        engine_config,
        run=dataclasses.replace(engine_config.run, run_id="", output_dir=str(tmp_path / "runs")),
        signals=(PluginSpec("versioned", 1.0, {}),),
    )
    first = asyncio.run(run_backtest(cfg, panel=panel))
    monkeypatch.setattr(_Versioned, "version", "2")
    second = asyncio.run(run_backtest(cfg, panel=panel))
    assert first.run_id == second.run_id
    summary = json.loads((second.output_dir / "summary.json").read_text())
    assert [m["version"] for m in summary["models"]] == ["2"]
    assert count_trials(Path(cfg.run.output_dir)).trials == 1
