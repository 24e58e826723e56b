"""Which model the ML plugin loads does not depend on how tradingd was installed: an explicit
`model_dir`, else `var/models/current` under the working directory (where `tradingd retrain`
publishes), else the pair shipped with the package; the plugin says which (`model_path`)."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from published_models import SYMBOLS, feed, publish, publish_folder, publish_two, switch
from structlog.testing import capture_logs

from tradingd.core.errors import ConfigError
from tradingd.inference.onnx import DEFAULT_MODEL_ROOT, PUBLISHED_MODEL_DIR
from tradingd_plugins.signals.ml_ensemble import MlEnsemble, MlEnsembleConfig, default_model_dir

SHIPPED_VERSION = json.loads((default_model_dir() / "card.json").read_text())["model_version"]


def _of_model(event: dict) -> bool:
    """A `model.*` event other than the one a card trained before `cnn_lstm/2` gets at every
    load (`model.newest_bar_ignored`): these tests copy the shipped card, whatever its age."""
    return event["event"].startswith("model.") and event["event"] != "model.newest_bar_ignored"


def load(model_dir=""):
    with capture_logs() as logs:
        p = MlEnsemble(MlEnsembleConfig(model_dir=model_dir, cache_dir=""), SYMBOLS)
    (where,) = [e for e in logs if e["event"] == "model.location"]
    return p, where


def test_an_empty_working_directory_loads_the_shipped_pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p, where = load()
    assert p.model_path == str(default_model_dir().resolve())
    assert Path(p.model_path).is_absolute() and p.version == SHIPPED_VERSION
    assert where["path"] == p.model_path and "shipped" in where["reason"]


def test_a_published_model_under_the_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = publish(tmp_path / DEFAULT_MODEL_ROOT, "published-1")
    p, where = load()
    assert p.version == "published-1"
    assert p.model_path == str(target.resolve())
    assert PUBLISHED_MODEL_DIR in where["reason"] and where["version"] == "published-1"
    # It follows the link from any working directory once loaded.
    monkeypatch.chdir(tmp_path.parent)
    assert p._dir.resolve() == target.resolve()


def test_an_explicit_model_dir_is_used_or_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    publish(tmp_path / DEFAULT_MODEL_ROOT, "published-2")
    mine = publish(tmp_path / "elsewhere", "mine")
    p, where = load("elsewhere/current")  # relative to the working directory
    assert p.version == "mine" and p.model_path == str(mine.resolve())
    assert where["reason"] == "model_dir is set"
    # A model_dir that does not exist never falls back to another model.
    with pytest.raises(ConfigError, match="model_dir 'no/such/model' does not exist"):
        load("no/such/model")


def test_a_broken_published_link_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    publish(root, "gone")
    shutil.rmtree(root / "versions" / "gone")
    with pytest.raises(ConfigError, match="broken link"):
        load()


def test_retrain_publishes_under_var_models_by_default():
    from tradingd_models.retrain import retrain

    assert inspect.signature(retrain).parameters["root"].default == "var/models"
    assert PUBLISHED_MODEL_DIR == "var/models/current"


def test_a_backtest_keeps_its_model_when_a_new_one_is_published_mid_run(tmp_path, monkeypatch):
    """A replay is one model from its first bar to its last: a `tradingd retrain` publishing
    while it runs must not switch it half-way (its decisions and results would come from two
    models, and its summary would name only the second). A live daemon still takes the new
    one up (test_models.py: ..._and_the_plugin_follows)."""
    import asyncio
    import dataclasses

    from tradingd.app import build_engine
    from tradingd.config import PluginSpec, load_config
    from tradingd.storage.factory import open_store

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)

    cfg = load_config([], env={})
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, start="2017-01-01"),
        signals=(PluginSpec("ml_ensemble", params={"threshold": 0.5, "cache_dir": ""}),),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / 's.db'}"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )
    switched_at = []

    def on_bar(seen: int, t) -> None:
        if engine.bars_processed == 20 and not switched_at:
            switch(root, "second")
            switched_at.append(t)

    engine = build_engine(cfg, "backtest", on_bar=on_bar)
    plugin = engine.pipeline.signals[0][0]
    assert plugin.version == "first"
    with capture_logs() as logs:
        result = asyncio.run(engine.run_until_done())
    assert switched_at and result.bars > 40  # the switch came with bars still to run
    assert (root / "current").resolve() == second.resolve()
    assert plugin.version == "first" and "versions/first" in plugin.model_path
    assert not [e for e in logs if e["event"].startswith("model.reload")]

    async def sources() -> set[str]:
        store = open_store(cfg.storage.url)
        await store.start()
        try:
            return {r["source"] for r in await store.fetch("signals", engine.run.run_id)}
        finally:
            await store.stop()

    assert asyncio.run(sources()) == {"ml_ensemble@first"}

    # A live engine does not pin: its plugin takes a switch up at its next bar.
    live_cfg = dataclasses.replace(cfg, feed=dataclasses.replace(cfg.feed, source="recorded"))
    live_engine = build_engine(live_cfg, "live")
    following = live_engine.pipeline.signals[0][0]
    assert following.version == "second"
    switch(root, "first")
    following._maybe_reload()
    assert following.version == "first"
    following.close()


def test_a_reloaded_model_reads_its_own_cache_file(tmp_path, monkeypatch):
    """After a switch the new version's predictions come from its own file (read at its
    first prediction), and the file keeps them: a reload must not skip the read and then
    overwrite the file with only this run's entries."""
    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    cache = tmp_path / "cache"
    windows = np.random.default_rng(3).normal(size=(3, 60, 20)).astype(np.float32)

    def plugin() -> MlEnsemble:
        return MlEnsemble(MlEnsembleConfig(cache_dir=str(cache)), SYMBOLS)

    earlier = plugin()  # a run on "first" leaves its predictions of `windows`
    earlier.predict(windows)
    earlier.close()
    switch(root, "second")
    p = plugin()
    p.predict(windows[:1])  # "second" predicts (another salt) and fills its own file
    assert p.model_calls == 1
    switch(root, "first")
    p._maybe_reload()
    assert p.version == "first"
    p.predict(windows)  # all three from first.npz, read now
    assert p.model_calls == 1 and p.cache_hits == 3
    p.close()
    assert plugin().cache_entries == 3  # first.npz still holds all three


def test_a_reloaded_model_decides_with_its_own_cards_threshold(tmp_path, monkeypatch):
    """The threshold came from the first card only: after a switch to a model whose card says
    0.9, the daemon kept trading its forecasts at 0.55, where a restart, a backtest or a
    replay-check of that model would not."""
    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)
    card = json.loads((second / "card.json").read_text())
    card["ensemble"]["threshold"] = 0.9
    (second / "card.json").write_text(json.dumps(card))
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    first = p.threshold
    assert first != 0.9
    switch(root, "second")
    p._maybe_reload()
    assert (p.version, p.threshold) == ("second", 0.9)
    assert p.threshold == MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS).threshold
    # A threshold the config sets stays the config's.
    pinned = MlEnsemble(MlEnsembleConfig(cache_dir="", threshold=0.6), SYMBOLS)
    switch(root, "first")
    pinned._maybe_reload()
    assert (pinned.version, pinned.threshold) == ("first", 0.6)
    p.close()
    pinned.close()


def test_a_daemon_started_before_the_first_publish_takes_it_up(tmp_path, monkeypatch):
    """With nothing published at its start the plugin ran the shipped pair and watched the
    shipped folder: the first model `tradingd retrain` published was never taken up, and the
    next restart switched models without a word."""
    monkeypatch.chdir(tmp_path)
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    pinned = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    pinned.pin_model()  # a replay's
    assert p.version == SHIPPED_VERSION
    p._maybe_reload()
    assert p.version == SHIPPED_VERSION  # nothing published: nothing changes
    publish(tmp_path / DEFAULT_MODEL_ROOT, "first")
    with capture_logs() as logs:
        p._maybe_reload()
    assert p.version == "first" and "versions/first" in p.model_path
    assert [e["event"] for e in logs if _of_model(e)] == [
        "model.published_found",
        "model.reloaded",
    ]
    # A replay keeps the model it started with.
    pinned._maybe_reload()
    assert pinned.version == SHIPPED_VERSION
    p.close()
    pinned.close()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_reload_to_a_model_answering_nan_or_inf_is_refused_and_the_old_one_serves(
    tmp_path, monkeypatch, value
):
    """The daemon logged model.reloaded and served pred=[inf inf] (every symbol bought at
    confidence 1.0). Now the warm-up of the new model refuses it, as a corrupt file is
    refused: model.reload_failed names the file, the old model keeps serving."""
    from tiny_models import graph, model_folder

    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    bad = model_folder(tmp_path / "bad", cnn_lstm=graph(tmp_path / "g.onnx", (60, 20), value=value))
    publish_folder(root, "bad", bad)
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    w = np.random.default_rng(2).normal(size=(2, 60, 20)).astype(np.float32)
    before = p.predict(w)
    switch(root, "bad")
    with capture_logs() as logs:
        p._maybe_reload()
    (failed,) = [e for e in logs if _of_model(e)]
    assert failed["event"] == "model.reload_failed" and failed["log_level"] == "error"
    assert f"versions/bad/cnn_lstm.onnx output {value}" in failed["error"]
    assert p.version == "first" and "versions/first" in p.model_path
    np.testing.assert_array_equal(p.predict(w), before)
    p.close()


async def test_a_backtest_meeting_a_nan_forecast_fails_naming_the_model_file(tmp_path, monkeypatch):
    """A cnn_lstm answering NaN for real windows (finite at the warm-up) ran a 2-year
    backtest to exit 0 with no fill and no warning. The run now stops at the first such
    forecast with the error naming the file and what came out."""
    import dataclasses

    from tiny_models import graph, model_folder

    from tradingd.app import build_engine
    from tradingd.config import PluginSpec, load_config
    from tradingd.core.errors import PluginFault

    monkeypatch.chdir(tmp_path)
    g = graph(tmp_path / "g.onnx", (60, 20), "nan_off_zero")
    d = model_folder(tmp_path / "nan", cnn_lstm=g)
    cfg = load_config([], env={})
    cfg = dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, start="2017-01-01", end="2017-03-31"),
        signals=(PluginSpec("ml_ensemble", params={"model_dir": str(d), "cache_dir": ""}),),
        storage=dataclasses.replace(cfg.storage, url=f"sqlite:///{tmp_path / 's.db'}"),
        log=dataclasses.replace(cfg.log, audit_dir=str(tmp_path / "audit")),
    )
    engine = build_engine(cfg, "backtest")
    with pytest.raises(PluginFault) as exc:
        await engine.run_until_done()
    assert f"model file {d / 'cnn_lstm.onnx'} output nan for 2 of 2 input windows" in str(exc.value)


def test_a_reload_to_a_forest_of_another_width_names_the_file(tmp_path, monkeypatch):
    """model.reload_failed said onnxruntime's 'Got: 1200 Expected: 1000', naming no file."""
    from tiny_models import graph, model_folder

    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    rf = graph(tmp_path / "rf.onnx", (1000,))
    publish_folder(root, "narrow", model_folder(tmp_path / "narrow", random_forest=rf))
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    switch(root, "narrow")
    with capture_logs() as logs:
        p._maybe_reload()
    (failed,) = [e for e in logs if _of_model(e)]
    assert failed["event"] == "model.reload_failed" and p.version == "first"
    target = (root / "versions" / "narrow").resolve()
    assert failed["error"].startswith(
        f"model file {target / 'random_forest.onnx'}: its input is 1000 per window, the "
        "card's window * features is 1200"
    )
    p.close()


def test_a_folder_that_failed_to_load_is_tried_again_once_repaired_in_place(tmp_path, monkeypatch):
    """After model.reload_failed (the old model serving: right), re-copying good files into
    that folder, as the error advises, was ignored until a restart, without a word: the
    folder was marked loaded before the attempt. Now it is tried again when its files
    change (not at every bar), and the plugin's status says that `current` names a model
    that is not served."""
    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    assert p.status()["ok"] is True
    cnn = second / "cnn_lstm.onnx"
    good = cnn.read_bytes()
    cnn.write_bytes(good[:5000])  # a half-copied publication
    switch(root, "second")

    def bars(n: int) -> list[tuple[str, str]]:
        with capture_logs() as logs:
            for _ in range(n):
                p._maybe_reload()
        return [(e["event"], e["log_level"]) for e in logs if _of_model(e)]

    assert bars(1) == [("model.reload_failed", "error")]
    assert p.version == "first"
    st = p.status()
    assert st["ok"] is False and st["not_served"] == str(second.resolve())
    assert st["detail"].startswith(f"{root / 'current'} names {second.resolve()}, which is not")
    assert "does not match its card" in st["detail"] and "serving first from" in st["detail"]
    assert bars(5) == []  # no log flood while nothing changes
    cnn.write_bytes(good)  # repaired in place
    assert bars(3) == [("model.reload_retry", "info"), ("model.reloaded", "info")]
    assert p.version == "second" and p.status()["ok"] is True
    # Failed again, then the link pointed back at the model served: nothing left to report.
    (second / "random_forest.onnx").unlink()
    switch(root, "first")
    assert [e for e, _ in bars(1)] == ["model.reloaded"]
    switch(root, "second")
    assert bars(2) == [("model.reload_failed", "error")]
    switch(root, "first")
    assert bars(2) == [] and p.status()["ok"] is True and p.version == "first"
    p.close()


def _publish_nan_on_real_windows(tmp_path: Path, root: Path) -> Path:
    """A version "nanlater" whose cnn_lstm is finite on the card's mean (the warm-up's
    input) and NaN on any other window."""
    from tiny_models import graph, model_folder

    g = graph(tmp_path / "nan.onnx", (60, 20), "nan_off_zero")
    publish_folder(root, "nanlater", model_folder(tmp_path / "nanlater", cnn_lstm=g))
    return root / "versions" / "nanlater"


def test_a_reload_to_a_model_answering_nan_on_real_windows_is_refused(tmp_path, monkeypatch):
    """A published model that passed the reload's warm-up (the card's mean) but answered NaN
    on real windows was taken up, and the daemon stopped at its next bar (exit 2), then
    crash-looped on the same `current`. The candidate is now tried on the bar's windows
    first: refused, the old model serves, the status names the folder."""
    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    bad = _publish_nan_on_real_windows(tmp_path, root)
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    assert np.isfinite(feed(p, 60)).all()
    switch(root, "nanlater")
    with capture_logs() as logs:
        scores = feed(p, 1, seed=4)
    assert np.isfinite(scores).all()
    (failed,) = [e for e in logs if _of_model(e)]
    assert failed["event"] == "model.reload_failed"
    assert f"{bad.resolve() / 'cnn_lstm.onnx'} output nan" in failed["error"]
    assert p.version == "first"
    status = p.status()
    assert status["ok"] is False and status["not_served"] == str(bad.resolve())
    p.close()


def test_a_start_on_a_model_answering_nan_names_its_folder_and_the_way_back(tmp_path, monkeypatch):
    """Started on such a model, the first real bar's error said "model file
    .../current/cnn_lstm.onnx output nan ...: re-export or retrain the model": neither the
    version folder nor that a restart fails the same way until `current` is rolled back."""
    monkeypatch.chdir(tmp_path)
    root, _ = publish_two(tmp_path)
    bad = _publish_nan_on_real_windows(tmp_path, root)
    switch(root, "nanlater")
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)  # the warm-up passes
    with pytest.raises(ConfigError) as exc:
        feed(p, 60)
    text = str(exc.value)
    assert f"model {p.version} in {bad.resolve()}" in text
    assert "output nan" in text
    assert f"point {root / 'current'} back at the version served before it" in text


def test_a_dangling_current_link_fails_the_model_check(tmp_path, monkeypatch):
    """The served version's folder deleted: `current` dangles and the next start fails
    (`locate_model`), yet /ready's model check passed, the dangling link resolving to the
    served path. The status now fails naming the link, once in the log, and passes again
    when the link names a folder."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / DEFAULT_MODEL_ROOT
    first = publish(root, "first")
    kept = shutil.copytree(first, tmp_path / "kept")
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    shutil.rmtree(first)

    with capture_logs() as logs:
        for _ in range(3):
            p._maybe_reload()
    assert [e["event"] for e in logs] == ["model.link_broken"]
    st = p.status()
    assert st["ok"] is False and st["version"] == "first"
    assert (
        f"the next start will fail: point {root / 'current'} at a version folder" in (st["detail"])
    )
    with pytest.raises(ConfigError, match="broken link"):
        load()  # what that start would say

    shutil.copytree(kept, first)  # the folder back
    p._maybe_reload()
    assert p.status()["ok"] is True and p.version == "first"
    p.close()


def test_a_start_loads_the_folder_it_resolved_even_if_current_moves_meanwhile(
    tmp_path, monkeypatch
):
    """The start resolved `current` for `model_path` and then loaded through the link: a
    `tradingd retrain` publishing in between (simulated here at the load) gave a plugin
    whose model_path named one version and whose model was another."""
    import tradingd_plugins.signals.ml_ensemble as ml

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)
    real = ml.ModelPair

    def published_meanwhile(directory, threads=0):
        switch(root, "second")
        return real(directory, threads)

    monkeypatch.setattr(ml, "ModelPair", published_meanwhile)
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    assert "versions/first" in p.model_path
    assert p.version == "first" and p.pair.card.path.parent == Path(p.model_path)
    monkeypatch.setattr(ml, "ModelPair", real)
    p._maybe_reload()  # the publish is taken up at the next bar, as any other
    assert p.version == "second" and p.model_path == str(second.resolve())
    p.close()


def test_a_reload_to_a_model_of_another_shape_names_both_values_and_what_to_do(
    tmp_path, monkeypatch
):
    """model.reload_refused said only "trained on another feature set or window", where a
    start on the same folder named the first difference and both versions: it says what
    the start says, the candidate's window beside the served one's, and what to do."""
    import tradingd_plugins.signals.ml_ensemble as ml

    monkeypatch.chdir(tmp_path)
    root, second = publish_two(tmp_path)
    card = json.loads((second / "card.json").read_text())
    features = card["feature_set"]["features"]
    features[0], features[1] = features[1], features[0]
    card["feature_set"]["version"] = "000000000000"
    (second / "card.json").write_text(json.dumps(card))
    p = MlEnsemble(MlEnsembleConfig(cache_dir=""), SYMBOLS)
    served = p.pair.card.feature_set
    switch(root, "second")
    with capture_logs() as logs:
        p._maybe_reload()
    (refused,) = [e for e in logs if _of_model(e)]
    assert refused["event"] == "model.reload_refused" and p.version == "first"
    reason = refused["reason"]
    assert str(second.resolve() / "card.json") in reason
    assert f"at position 0 the card has {features[0]!r}, the engine's order {features[1]!r}" in (
        reason
    )
    assert f"version 000000000000 (trained) != {served.version}" in reason
    assert "restart" in reason and "retrain" in reason
    # A window of another length (its ONNX files would fail to load first: the card's alone)
    shape = ml._Shape(served, p.window * 2, len(SYMBOLS))
    other = ml._other_shape(p.pair.card, shape)
    assert f"window = {p.window} bars, the served model's {p.window * 2}" in other
    assert ml._other_shape(p.pair.card, ml._Shape(served, p.window, 2)) == ""
    p.close()
