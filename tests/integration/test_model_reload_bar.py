"""A live daemon taking up a newly published model (`var/models/current` switched) at a
bar: the load runs off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

from conftest import make_panel
from published_models import publish_two, switch

import tradingd_plugins.signals.ml_ensemble as ml
from tradingd.config import LiveConfig, PluginSpec


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
