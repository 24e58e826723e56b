"""A live daemon taking up a newly published model (`var/models/current` switched) at a
bar: the load runs off the event loop, and the candidate's try on the bar's windows is the
bar's prediction (not made twice)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_panel
from published_models import SYMBOLS, feed, publish, publish_folder, publish_two, switch

import tradingd_plugins.signals.ml_ensemble as ml
from tradingd.config import LiveConfig, PluginSpec
from tradingd.inference import onnx
from tradingd.inference.onnx import DEFAULT_MODEL_ROOT


async def test_a_live_reload_loads_the_new_model_off_the_event_loop(
    engine_config, tmp_path, monkeypatch
):
    """Loading the candidate's ONNX sessions and trying it on the bar's windows ran inside
    score(), on the event loop: the health endpoint, the heartbeat and the broker's stream
    waited for it. Here the load blocks until another coroutine of the loop releases it:
    that coroutine must run while the load is in progress."""
    from tradingd.app import build_engine

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)
    real = ml.ModelPair
    started, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def slow_load(directory, threads=0):
        if Path(directory) == second.resolve():
            started.set()
            released.append(release.wait(timeout=5))  # False: the loop never answered
        return real(directory, threads)

    monkeypatch.setattr(ml, "ModelPair", slow_load)
    panel = make_panel(n_symbols=3, n_bars=200, split_at=None)
    config = dataclasses.replace(
        engine_config,
        signals=(PluginSpec("ml_ensemble", 1.0, {"cache_dir": ""}),),
        live=LiveConfig(bars_per_second=400.0),
        run=dataclasses.replace(
            engine_config.run, start=panel.datetimes()[170].date().isoformat(), run_id="reload"
        ),
    )
    engine = build_engine(config, "live", panel=panel)
    plugin = engine.pipeline.signals[0][0]
    assert plugin.version == "first"
    engine.after_bar.append(lambda t, v: started.is_set() or switch(root, "second"))
    bars_at_release: list[int] = []

    async def meanwhile() -> None:
        assert await asyncio.to_thread(started.wait, 30)
        bars_at_release.append(engine.bars_processed)
        release.set()

    result, _ = await asyncio.gather(engine.run_until_done(), meanwhile())
    assert released == [True]  # the loop ran the other coroutine during the load
    assert plugin.version == "second" and plugin.model_path == str(second.resolve())
    assert result.bars == 30 and bars_at_release[0] < result.bars


def _second_differs(tmp_path: Path, root: Path) -> Path:
    """A version "tiny" whose cnn_lstm answers a constant: its forecasts differ from
    "first"'s, so a decision made with the wrong model shows."""
    from tiny_models import graph, model_folder

    g = graph(tmp_path / "c.onnx", (60, 20), "constant", 0.004)
    return publish_folder(root, "tiny", model_folder(tmp_path / "tiny", cnn_lstm=g))


@pytest.mark.parametrize("prepared", [False, True], ids=["score", "prepare_bar"])
async def test_a_reload_bar_predicts_its_windows_once(tmp_path, monkeypatch, prepared):
    """On the bar that took up a new model, its windows were predicted twice by that model:
    once to try it (NaN check), once for the decision. The try's predictions are the
    decision's now, which equals that of a plugin started on the new model."""
    from plugin_context import bar_context

    monkeypatch.chdir(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    publish(root, "first")
    tiny = _second_differs(tmp_path, root)
    p = ml.MlEnsemble(ml.MlEnsembleConfig(cache_dir=""), SYMBOLS)
    fresh = ml.MlEnsemble(ml.MlEnsembleConfig(model_dir=str(tiny), cache_dir=""), SYMBOLS)
    feed(p, 60)
    feed(fresh, 60)
    seen: list[np.ndarray] = []
    real = onnx.ModelPair.predict

    def counting(self, windows):
        if self.card.path.parent == tiny.resolve():
            seen.append(np.array(windows, dtype=np.float32))
        return real(self, windows)

    monkeypatch.setattr(onnx.ModelPair, "predict", counting)
    switch(root, "tiny")
    rng = np.random.default_rng(4)
    ctx = bar_context(SYMBOLS, {f: rng.normal(size=len(SYMBOLS)) for f in p.features})
    if prepared:
        await p.prepare_bar(ctx)
    scores = p.score(ctx)
    assert p.model_path == str(tiny.resolve())
    bar_windows = p._windows(np.arange(len(SYMBOLS)))
    assert sum(np.array_equal(w, bar_windows) for w in seen) == 1
    expected = fresh.score(ctx)
    np.testing.assert_array_equal(scores, expected)
    assert np.isfinite(scores).all()
    # The next bar predicts again (the try's values serve their own bar only).
    feed(p, 1, seed=5)
    assert sum(np.array_equal(w, p._windows(np.arange(len(SYMBOLS)))) for w in seen) == 1
    p.close()
    fresh.close()
