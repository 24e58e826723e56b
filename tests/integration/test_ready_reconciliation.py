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


async def test_ready_says_a_first_round_put_off_by_fills_is_tried_again(engine_config):
    """A first round that found fills arriving while it read the positions compares at the
    next interval; /ready said the book would be compared "once the warm-up is done", with
    the warm-up long over."""
    from tradingd.app import build_engine, health_inputs

    panel, config = live_run(engine_config)
    engine = build_engine(config, "live", panel=panel)
    arriving = [False]

    async def positions() -> dict[str, float]:
        arriving[0] = True  # a fill reaches the broker while its positions are read
        return dict(zip(engine.symbols, map(float, engine.portfolio.quantity), strict=True))

    book = engine._book_late_updates

    async def booking() -> int:
        booked = await book()
        came, arriving[0] = arriving[0], False
        return booked + int(came)  # the one that came is booked (counted) here

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine._book_late_updates = booking  # type: ignore[method-assign]
    engine.reconcile_interval_s = 3600.0
    checks, _status, _controls = health_inputs(engine)
    (recon,) = [c for c in checks if c.name == "reconciliation"]
    probes = []
    start = engine.clock.start

    async def clock_start() -> None:
        probes.append(recon.probe())  # after the start's round, put off
        engine.request_stop()
        await start()

    engine.clock.start = clock_start  # type: ignore[method-assign]
    await engine.run_until_done()
    [put_off] = probes
    assert engine.last_reconciled_at is None and engine.reconcile_error is None
    assert not put_off.ok and put_off.detail.startswith("not reconciled yet")
    assert "warm-up" not in put_off.detail
    assert "fills arrived" in put_off.detail and "every 3600 s" in put_off.detail
