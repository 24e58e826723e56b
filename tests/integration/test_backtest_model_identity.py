"""A backtest's run id names the model it ran, by content: with `model_dir` empty the plugin
loads `var/models/current`, which `tradingd retrain` moves, and the rerun of one config on
the next model took the earlier run's id and replaced its record (store rows, audit, run
folder). A live run's id does not change with the model: it continues across swaps."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
from pathlib import Path

from tiny_models import graph, model_folder

from tradingd.app import run_id_for
from tradingd.backtest import run_backtest
from tradingd.config import PluginSpec, load_config
from tradingd.inference.onnx import DEFAULT_MODEL_ROOT
from tradingd.storage.factory import open_store


def _point_current(root: Path, folder: Path) -> None:
    """`current` switched to `folder` as `tradingd retrain` switches it."""
    tmp = root / "current.new"
    os.symlink(os.path.relpath(folder, root), tmp)
    os.replace(tmp, root / "current")


def _two_models(base: Path) -> tuple[Path, Path, Path]:
    """Versions "a" and "b" under base's model root (cnn_lstm answering 0.05 and 0.03 for
    every window: buys), and a copy of "a" under another name; returns their folders."""
    root = base / DEFAULT_MODEL_ROOT
    folders = []
    for name, value in (("a", 0.05), ("b", 0.03)):
        g = graph(base / f"{name}.onnx", (60, 20), "constant", value)

        def edit(card, name=name):
            card["model_version"] = f"tiny-{name}"

        folders.append(model_folder(root / "versions" / name, cnn_lstm=g, edit=edit))
    copy = root / "versions" / "a-copy"
    shutil.copytree(folders[0], copy)
    return folders[0], folders[1], copy


def _config(tmp_path: Path):
    cfg = load_config([], env={})
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(
            cfg.run, start="2017-01-01", end="2017-03-31", output_dir=str(tmp_path / "runs")
        ),
        signals=(PluginSpec("ml_ensemble", params={"cache_dir": ""}),),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / 's.db'}"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )


async def _signal_sources(url: str, run_id: str) -> set[str]:
    store = open_store(url)
    await store.start()
    try:
        return {r["source"] for r in await store.fetch("signals", run_id)}
    finally:
        await store.stop()


def test_backtests_on_two_published_models_are_two_runs_and_keep_both_records(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    a, b, a_copy = _two_models(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    cfg = _config(tmp_path)

    _point_current(root, a)
    first = asyncio.run(run_backtest(cfg))
    assert run_id_for(cfg, "backtest") == first.run_id  # the id a sweep or preflight derives
    live_a = run_id_for(cfg, "live")

    _point_current(root, b)
    second = asyncio.run(run_backtest(cfg))
    assert second.run_id != first.run_id
    assert run_id_for(cfg, "backtest") == second.run_id
    # A live run continues across a model swap: its id is the config's alone.
    assert run_id_for(cfg, "live") == live_a

    # Both records survive: run folders and the store's rows.
    for outcome, version in ((first, "tiny-a"), (second, "tiny-b")):
        summary = json.loads((outcome.output_dir / "summary.json").read_text())
        assert summary["run_id"] == outcome.run_id
        assert [m["version"] for m in summary["models"]] == [version]
        stored = asyncio.run(_signal_sources(cfg.storage.url, outcome.run_id))
        assert stored == {f"ml_ensemble@{version}"}

    # The same model (by content, wherever its folder) is the same run.
    _point_current(root, a_copy)
    assert run_id_for(cfg, "backtest") == first.run_id


def test_backtests_of_one_config_on_two_models_count_as_two_trials(tmp_path, monkeypatch):
    """The trial count (deflated Sharpe ratio) agrees with the run ids: one config run on two
    published models is two variants tried, from the folders and, once a folder is gone,
    from the ledger; a rerun on the same model is still one."""
    from tradingd.analysis.trials import count_trials

    monkeypatch.chdir(tmp_path)
    a, b, _ = _two_models(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    cfg = _config(tmp_path)
    runs = Path(cfg.run.output_dir)
    _point_current(root, a)
    first = asyncio.run(run_backtest(cfg))
    asyncio.run(run_backtest(cfg))  # a rerun: the same variant
    assert count_trials(runs).trials == 1
    _point_current(root, b)
    asyncio.run(run_backtest(cfg))
    assert count_trials(runs).trials == 2
    shutil.rmtree(first.output_dir)  # the ledger still counts the model-a variant
    counted = count_trials(runs)
    assert counted.trials == 2 and counted.runs == 2


def test_a_card_edited_under_one_version_is_another_model(tmp_path, monkeypatch):
    """The id hashed the version and the ONNX files only: a card whose threshold or scaler
    was edited under the same version (as the prediction cache's salt counts it) decides
    otherwise, yet took the same id and replaced the earlier run's record."""
    monkeypatch.chdir(tmp_path)
    a, _, copy = _two_models(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    _point_current(root, a)
    config = _config(tmp_path)
    first = run_id_for(config, "backtest")
    card = json.loads((copy / "card.json").read_text())
    card["ensemble"]["threshold"] = 0.95
    (copy / "card.json").write_text(json.dumps(card))
    _point_current(root, copy)
    assert run_id_for(config, "backtest") != first
    card = json.loads((copy / "card.json").read_text())
    card["ensemble"]["threshold"] = json.loads((a / "card.json").read_text())["ensemble"][
        "threshold"
    ]
    card["scaler"]["mean"] = [m + 1.0 for m in card["scaler"]["mean"]]
    (copy / "card.json").write_text(json.dumps(card))
    assert run_id_for(config, "backtest") != first
