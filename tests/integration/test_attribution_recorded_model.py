"""The attribution's replay of a kept run record loads the model the record was made with,
not the one `var/models/current` names now (`tradingd retrain` moved it): it replayed the
current model and said "not the same run". When that model is gone, the error names both
models and what the operator can do."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest
from published_models import switch
from tiny_models import graph, model_folder

from tradingd.analysis.attribution import AttributionConfig, attribute_run
from tradingd.backtest import run_backtest
from tradingd.config import PluginSpec, load_config
from tradingd.core.errors import ConfigError
from tradingd.inference.onnx import DEFAULT_MODEL_ROOT


def _publish(root: Path, version: str, value: float, tmp: Path) -> Path:
    """A version whose cnn_lstm answers `value` for every window (a long or a short book)."""

    def edit(card):
        card["model_version"] = version

    g = graph(tmp / f"{version}.onnx", (60, 20), "constant", value)
    return model_folder(root / "versions" / version, cnn_lstm=g, edit=edit)


def _config(tmp_path: Path):
    cfg = load_config([], env={})
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(
            cfg.run, start="2017-01-01", end="2017-03-31", output_dir=str(tmp_path / "runs")
        ),
        signals=(PluginSpec("ml_ensemble", params={"cache_dir": "", "threshold": 0.5}),),
        sizing=PluginSpec("equal_weight", params={"max_positions": 2, "gross_exposure": 0.9}),
        risk=(PluginSpec("max_position", params={"max_position_pct": 0.5}),),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / 's.db'}"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )


def _attribute(cfg, record: Path):
    no_benchmark = AttributionConfig(benchmark="")
    return asyncio.run(attribute_run(cfg, record=record, config=no_benchmark))


def _report(folder: Path, out: Path, capsys) -> tuple[int, str]:
    """`tradingd report FOLDER --attribution` (the run's own configuration): (code, stderr)."""
    from tradingd.__main__ import main

    code = main(["report", str(folder), "--no-validation", "--attribution", "--output", str(out)])
    return code, capsys.readouterr().err


def test_the_attribution_of_a_record_replays_the_model_it_was_made_with(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    _publish(root, "long", 0.05, tmp_path)
    _publish(root, "short", -0.05, tmp_path)
    switch(root, "long")
    cfg = _config(tmp_path)
    made = asyncio.run(run_backtest(cfg))
    assert made.summary["fills"] > 0
    switch(root, "short")  # a retrain published since
    on_short = asyncio.run(run_backtest(cfg))
    assert on_short.summary["final_equity"] != made.summary["final_equity"]

    got = _attribute(cfg, made.output_dir)
    assert got["run_id"] == made.run_id
    assert got["replay"]["compared_with_record"] is True
    assert got["replay"]["max_equity_difference"] <= 1e-9
    code, err = _report(made.output_dir, tmp_path / "report", capsys)
    assert code == 0, err

    # That version deleted from the model store: a clear error, not "not the same run".
    shutil.rmtree(root / "versions" / "long")
    with pytest.raises(ConfigError) as exc:
        _attribute(cfg, made.output_dir)
    text = str(exc.value)
    assert text.startswith(f"run {made.run_id}: signals[0] (ml_ensemble): ")
    assert "the run was made with model long (files " in text
    assert "loads short (files " in text
    assert f"put that version's folder back under {root / 'versions'}" in text
    assert "model_dir names a copy of it" in text
    assert "not the same run" not in text
    code, err = _report(made.output_dir, tmp_path / "gone", capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last == f"tradingd: error: {text}"
