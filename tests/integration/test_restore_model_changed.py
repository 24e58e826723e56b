"""A run restored or moved without the model it traded on: an empty `model_dir` loads
`var/models/current` under the working directory when it exists, else the shipped model, so
a store and audit log restored onto a host without `var/models` (or a unit with another
`WorkingDirectory`) continued the run on another model with an info line alone
(`model.location`). The checkpoint now keeps the signals' sources (plugin and model
version) of its last bar, and a resume on other ones says so (`run.model_changed`)."""

from __future__ import annotations

from conftest import live_run
from structlog.testing import capture_logs


def _stop_after(engine, n: int) -> None:  # type: ignore[no-untyped-def]
    traded: list[object] = []

    def after(t: object, v: object) -> None:
        traded.append(t)
        if len(traded) >= n:
            engine.request_stop()

    engine.after_bar.append(after)


def _set_model(engine, version: str | None) -> None:  # type: ignore[no-untyped-def]
    """The first signal stands for a model-backed one (`version`, as ml_ensemble has)."""
    plugin = engine.pipeline.signals[0][0]
    plugin.version = version


async def test_resume_on_another_model_is_warned(engine_config):
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    _set_model(first, "retrained-7")
    _stop_after(first, 2)
    await first.run_until_done()

    same = build_engine(config, "live", panel=panel)
    _set_model(same, "retrained-7")
    _stop_after(same, 1)
    with capture_logs() as logs:
        await same.run_until_done()
    assert same.resumed_from is not None
    assert not [e for e in logs if e["event"] == "run.model_changed"]

    moved = build_engine(config, "live", panel=panel)
    _set_model(moved, "shipped-1")  # var/models not restored: the shipped pair
    _stop_after(moved, 1)
    with capture_logs() as logs:
        await moved.run_until_done()
    [warned] = [e for e in logs if e["event"] == "run.model_changed"]
    assert warned["log_level"] == "warning"
    assert warned["checkpoint_sources"] == "momentum@retrained-7"
    assert warned["sources"] == "momentum@shipped-1"
    assert "var/models" in warned["hint"]
