"""/ready's reconciliation check before the book was ever compared with the broker's
positions: it said ok, "book agrees with the broker (at None)", while the broker had not
been reached (the start's round failed, or had not run yet)."""

from __future__ import annotations

from conftest import live_run


async def test_ready_says_not_reconciled_until_the_broker_was_compared(engine_config):
    from tradingd.app import build_engine, health_inputs
    from tradingd.core.errors import RetryableError

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    reachable = [False]

    async def positions() -> dict[str, float]:
        if not reachable[0]:
            raise RetryableError("Alpaca trading API unreachable")
        return dict(zip(engine.symbols, map(float, engine.portfolio.quantity), strict=True))

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine.reconcile_interval_s = 3600.0  # only the rounds the test makes
    checks, _status, _controls = health_inputs(engine)
    (recon,) = [c for c in checks if c.name == "reconciliation"]
    probes = {"starting": recon.probe()}
    start = engine.clock.start

    async def clock_start() -> None:
        probes["start's round failed"] = recon.probe()
        reachable[0] = True
        await engine._reconcile()
        probes["reconciled"] = recon.probe()
        engine.request_stop()
        await start()

    engine.clock.start = clock_start  # type: ignore[method-assign]
    await engine.run_until_done()

    starting, failed, reconciled = probes.values()
    assert not starting.ok and starting.detail.startswith("not reconciled yet")
    assert not failed.ok and failed.detail.startswith("not reconciled yet")
    assert "Alpaca trading API unreachable" in failed.detail
    assert reconciled.ok and "None" not in reconciled.detail
    assert str(engine.last_reconciled_at) in reconciled.detail
