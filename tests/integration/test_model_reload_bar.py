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


async def test_a_live_reload_saves_and_reads_the_cache_files_off_the_event_loop(
    engine_config, tmp_path, monkeypatch
):
    """After the load, the switch saved the outgoing version's prediction cache (merged
    with its file and written: up to ~70 MB) on the event loop, and the next score() read
    the new version's file there. Here the save and the read each block until another
    coroutine of the loop releases them: it must run while each is in progress."""
    from tradingd.app import build_engine

    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    cache_dir = tmp_path / "cache"
    events = {s: (threading.Event(), threading.Event()) for s in ("save", "read")}
    released: dict[str, bool] = {}

    def blocking(step, version, real):
        def wrapped(self, *args, **kwargs):
            started, release = events[step]
            if self.version == version and not started.is_set():
                started.set()
                released[step] = release.wait(timeout=5)  # False: the loop never answered
            return real(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        ml.MlEnsemble, "_save_cache", blocking("save", "first", ml.MlEnsemble._save_cache)
    )
    monkeypatch.setattr(
        ml.MlEnsemble, "_load_cache", blocking("read", "second", ml.MlEnsemble._load_cache)
    )
    panel = make_panel(n_symbols=3, n_bars=200, split_at=None)
    config = dataclasses.replace(
        engine_config,
        signals=(PluginSpec("ml_ensemble", 1.0, {"cache_dir": str(cache_dir)}),),
        live=LiveConfig(bars_per_second=400.0),
        run=dataclasses.replace(
            engine_config.run, start=panel.datetimes()[170].date().isoformat(), run_id="cache"
        ),
    )
    engine = build_engine(config, "live", panel=panel)
    plugin = engine.pipeline.signals[0][0]
    assert plugin.version == "first"
    # Switched once the first model has predictions to save.
    engine.after_bar.append(
        lambda t, v: plugin.model_calls < 3 or events["save"][0].is_set() or switch(root, "second")
    )

    async def meanwhile() -> None:
        for step in ("save", "read"):
            started, release = events[step]
            assert await asyncio.to_thread(started.wait, 30)
            release.set()

    result, _ = await asyncio.gather(engine.run_until_done(), meanwhile())
    assert released == {"save": True, "read": True}  # the loop ran during both
    assert plugin.version == "second" and result.bars == 30
    # The outgoing version's predictions were kept; the new version's too, at the stop.
    assert sorted(p.name for p in cache_dir.glob("*.npz")) == ["first.npz", "second.npz"]
    # The new version's store was read once, and serves: it holds this run's predictions.
    assert plugin._cache_read and plugin.cache_entries > 0


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


async def test_a_switch_saves_the_outgoing_cache_and_serves_the_incoming_file(
    tmp_path, monkeypatch
):
    """The switch's cache files, done by `prepare_bar` in a worker thread: the outgoing
    version's predictions are kept in its file, and the new version's file, read there and
    adopted by the plugin, serves the bar (hits, not model calls)."""
    from plugin_context import bar_context

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)
    cache = str(tmp_path / "cache")
    warm = ml.MlEnsemble(ml.MlEnsembleConfig(model_dir=str(second), cache_dir=cache), SYMBOLS)
    rng = np.random.default_rng(4)
    ctx = bar_context(SYMBOLS, {f: rng.normal(size=len(SYMBOLS)) for f in warm.features})
    feed(warm, 61)
    warm.score(ctx)
    warm.close()  # second's file: this bar's windows among them
    p = ml.MlEnsemble(ml.MlEnsembleConfig(cache_dir=cache), SYMBOLS)
    feed(p, 61)
    kept = p.cache_entries
    assert p.version == "first" and kept > 0
    threads: list[tuple[str, str, bool]] = []
    for name in ("_save_cache", "_load_cache"):
        real = getattr(ml.MlEnsemble, name)

        def recording(self, *args, _real=real, _name=name, **kwargs):
            main = threading.current_thread() is threading.main_thread()
            threads.append((_name, self.version, main))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(ml.MlEnsemble, name, recording)
    switch(root, "second")
    await p.prepare_bar(ctx)
    assert threads == [("_save_cache", "first", False), ("_load_cache", "second", False)]
    calls, hits = p.model_calls, p.cache_hits
    p.score(ctx)
    assert p.version == "second" and len(threads) == 2  # nothing read again by score
    assert p.model_calls == calls and p.cache_hits == hits + len(SYMBOLS)
    first = ml.MlEnsemble(
        ml.MlEnsembleConfig(model_dir=str(root / "versions" / "first"), cache_dir=cache), SYMBOLS
    )
    assert first.cache_entries == kept
    monkeypatch.undo()
    for q in (p, first):
        q.close()


async def test_a_stop_during_a_switch_skips_the_incoming_files_read(tmp_path, monkeypatch):
    """A stop (the bar's task cancelled) while the worker saves the outgoing cache: the save
    completes (its predictions are kept), but the new version's file is not read for a
    plugin that is closing: the read (up to ~70 MB) ran anyway, and the interpreter's exit
    waited for it inside the stop's budget."""
    from plugin_context import bar_context

    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    cache = str(tmp_path / "cache")
    p = ml.MlEnsemble(ml.MlEnsembleConfig(cache_dir=cache), SYMBOLS)
    rng = np.random.default_rng(5)
    ctx = bar_context(SYMBOLS, {f: rng.normal(size=len(SYMBOLS)) for f in p.features})
    feed(p, 61)
    p.score(ctx)  # predictions of "first" to save at the switch
    saving, release = threading.Event(), threading.Event()
    calls: list[str] = []
    real_save, real_load = ml.MlEnsemble._save_cache, ml.MlEnsemble._load_cache

    def slow_save(self, *args, **kwargs):
        saving.set()
        assert release.wait(30), "the test never released the save"
        calls.append("save")
        return real_save(self, *args, **kwargs)

    def load(self, *args, **kwargs):
        calls.append(f"load {self.version}")
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ml.MlEnsemble, "_save_cache", slow_save)
    monkeypatch.setattr(ml.MlEnsemble, "_load_cache", load)
    switch(root, "second")
    task = asyncio.create_task(p.prepare_bar(ctx))
    assert await asyncio.to_thread(saving.wait, 30)  # the worker is in the outgoing save
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await asyncio.get_running_loop().shutdown_default_executor()  # the worker has finished
    assert calls == ["save"]  # saved; "second"'s file not read for a stopping plugin
    monkeypatch.undo()
    first = ml.MlEnsemble(
        ml.MlEnsembleConfig(model_dir=str(root / "versions" / "first"), cache_dir=cache), SYMBOLS
    )
    assert first.cache_entries > 0  # the outgoing predictions reached the file
    first.close()
