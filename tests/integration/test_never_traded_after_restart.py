"""Bars a live run missed while its daemon was down: a restart's warm-up steps the bars
since its checkpoint untraded (`warmup.from_checkpoint`), and `bars_never_traded` counted
none of them, so an operator reading /status or /metrics after an outage saw a run that had
traded every bar. They count once each: the count is in the checkpoint, and a second
restart neither loses it nor counts them again.

The demo's recorded feed stands in for a vendor: the restart's warm-up serves the recorded
history through a few bars past the checkpoint, as a vendor's warm-up through the last
closed bar does after an outage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from conftest import live_run
from structlog.testing import capture_logs

MISSED = 4  # bars released while the daemon was down


def _history_through(engine, times: list[datetime], last: datetime):  # type: ignore[no-untyped-def]
    """A warm-up serving the recorded bars up to `last` (a vendor's history at a restart)."""

    async def bars(resumed_from: datetime | None = None) -> AsyncIterator:  # type: ignore[type-arg]
        for t in times:
            if t > last:
                return
            bar = await engine.feed.bars(t)
            if bar is not None:
                yield bar

    return bars


def _traded_then_stop(engine, n: int) -> None:  # type: ignore[no-untyped-def]
    """Stop `engine` once this process has traded `n` bars."""
    traded: list[datetime] = []

    def after(t: datetime, v: object) -> None:
        traded.append(t)
        if len(traded) >= n:
            engine.request_stop()

    engine.after_bar.append(after)


async def test_bars_missed_while_down_count_as_never_traded_once(engine_config):
    from tradingd import metrics
    from tradingd.app import build_engine, health_inputs

    panel, config = live_run(engine_config)
    times = list(panel.datetimes())
    first = build_engine(config, "live", panel=panel)
    _traded_then_stop(first, 3)
    assert (await first.run_until_done()).bars_never_traded == 0  # its warm-up is history
    checkpoint = first.last_bar_time
    assert checkpoint is not None
    down_until = times[times.index(checkpoint) + MISSED]

    restarted = build_engine(config, "live", panel=panel)
    restarted._warmup = _history_through(restarted, times, down_until)
    _traded_then_stop(restarted, 2)
    with capture_logs() as logs:
        result = await restarted.run_until_done()
    assert restarted.resumed_from == checkpoint
    assert result.bars_never_traded == MISSED
    _checks, status, _controls = health_inputs(restarted)
    assert status()["bars_never_traded"] == MISSED
    assert metrics.BARS_NEVER_TRADED._value.get() == MISSED
    [warned] = [e for e in logs if e["event"] == "run.bars_never_traded"]
    assert warned["caught_up_untraded"] == MISSED

    # Restarted again without an outage: the count continues, nothing counted twice.
    again = build_engine(config, "live", panel=panel)
    again._warmup = _history_through(again, times, down_until)
    _traded_then_stop(again, 1)
    assert (await again.run_until_done()).bars_never_traded == MISSED
    assert metrics.BARS_NEVER_TRADED._value.get() == MISSED


async def test_a_restart_during_the_first_warm_up_counts_its_history_as_no_missed_bar(
    engine_config,
):
    """A run stopped in its first warm-up has never gone live: the bars its restart's
    warm-up steps after that checkpoint are history before its start, not missed bars."""
    from tradingd.app import build_engine

    panel, config = live_run(engine_config)
    first = build_engine(config, "live", panel=panel)
    real = first._warmup
    assert real is not None

    async def stop_midway(resumed_from: datetime | None = None) -> AsyncIterator:  # type: ignore[type-arg]
        n = 0
        async for bar in real(resumed_from):
            yield bar
            n += 1
            if n == 30:
                first.request_stop()

    first._warmup = stop_midway
    await first.run_until_done()
    assert first.last_bar_time is not None and first.bars_processed == 0

    restarted = build_engine(config, "live", panel=panel)
    _traded_then_stop(restarted, 2)
    result = await restarted.run_until_done()
    assert restarted.resumed_from == first.last_bar_time
    assert result.warmup_bars > 0 and result.bars_never_traded == 0
