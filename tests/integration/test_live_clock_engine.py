"""The live engine on the real-time clock, its time driven by a settable `now`: each heartbeat
of the clock moves it on by `STEP` (a fake day is ~150 heartbeats of a millisecond), so a
test reaches the next session without waiting for it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from conftest import make_panel
from structlog.testing import capture_logs
from test_intraday_backtest import intraday_panel

from tradingd.clock.live import LiveClock
from tradingd.config import LiveConfig
from tradingd.core.errors import RetryableError

STEP = timedelta(minutes=10)
# Tuesday 2020-04-14 closes 16:00 New York (20:00 UTC); Wednesday opens 13:30 UTC.
LABEL = datetime(2020, 4, 14, tzinfo=UTC)
BEFORE = datetime(2020, 4, 13, tzinfo=UTC)
NEXT = datetime(2020, 4, 15, tzinfo=UTC)
NEXT_OPEN = datetime(2020, 4, 15, 13, 30, tzinfo=UTC)


class FakeTime:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def _clock_moving_on(
    engine: Any,
    live: LiveConfig,
    now: FakeTime,
    resume_after: datetime,
    move: Callable[[datetime], datetime],
) -> None:
    """The engine's live clock on `now`, which each heartbeat moves on to `move(now)`."""
    clock = LiveClock(live, now=now, heartbeat_s=0.001, resume_after=resume_after)
    tick = clock._tick

    async def tick_and_move_on() -> None:
        await tick()
        now.t = move(now.t)

    clock._tick = tick_and_move_on  # type: ignore[method-assign]
    engine.clock = clock


def _record_steps(engine: Any) -> list[tuple[datetime, bool | None]]:
    """The (bar time, trade) of each step the engine takes from now on."""
    stepped: list[tuple[datetime, bool | None]] = []
    step = engine.step

    async def recording(bar, trade=None):  # type: ignore[no-untyped-def]
        stepped.append((bar.time, trade))
        await step(bar, trade)

    engine.step = recording
    return stepped


def _engine(engine_config, now: FakeTime, delay_s: float = 5, move=None):  # type: ignore[no-untyped-def]
    """A live engine warmed up through BEFORE, its clock releasing LABEL at `now`; each
    heartbeat moves the time on by STEP, or to `move(now)`."""
    from tradingd.app import build_engine

    panel = make_panel(n_bars=90, split_at=None)
    config = dataclasses.replace(
        engine_config,
        live=LiveConfig(delay_s=delay_s),
        run=dataclasses.replace(engine_config.run, start=LABEL.date().isoformat(), run_id="t-l"),
    )
    engine = build_engine(config, "live", panel=panel)
    _clock_moving_on(engine, config.live, now, BEFORE, move or (lambda t: t + STEP))
    stepped = _record_steps(engine)
    engine.after_bar.append(lambda t, v: engine.request_stop() if t >= NEXT else None)
    return engine, stepped


def _late_source(engine, now: FakeTime, posted) -> list[datetime]:  # type: ignore[no-untyped-def]
    """LABEL's bar is "not there yet" until `posted()`; returns when LABEL was asked for."""
    bars = engine.feed.bars
    asked: list[datetime] = []

    async def vendor(t):  # type: ignore[no-untyped-def]
        if t == LABEL:
            asked.append(now())
            if not posted():
                raise RetryableError(f"yahoo: no bar yet for session {t.isoformat()}")
        return await bars(t)

    engine.feed.bars = vendor
    return asked


async def test_a_daily_bar_posted_after_its_release_is_asked_again_and_traded(engine_config):
    """The vendor posted the bar a few seconds after close + delay_s: the first fetch found
    none, nothing asked again, and the bar was only recovered (without trading) at the next
    day's release: the day went untraded. It is asked for again on the heartbeat and trades
    when it comes before the next open; one line says it is late, one that it came."""
    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    calls = [0]

    def posted() -> bool:
        calls[0] += 1
        return calls[0] > 3

    asked = _late_source(engine, now, posted)
    with capture_logs() as logs:
        await engine.run_until_done()
    assert dict(stepped)[LABEL] is None  # traded (decided by the run's start), not caught up
    assert all(t < NEXT_OPEN for t in asked) and len(asked) == 4
    events = [e["event"] for e in logs if e.get("time") == LABEL]
    assert events.count("bar.unavailable") == 1 and events.count("bar.arrived_late") == 1
    [unavailable] = [e for e in logs if e["event"] == "bar.unavailable"]
    assert unavailable["retry"] == (
        f"in 0.001 s, the wait doubling, until {NEXT_OPEN.isoformat()} (the next session's open),"
        " then next bar"
    )
    assert "bar.recovered" not in events and "bar.still_unavailable" in events
    assert engine.bars_unavailable == 1 and engine.bars_never_traded == 0


async def test_a_late_bar_that_comes_after_the_next_open_is_recovered_without_trading(
    engine_config,
):
    """Its orders would have been for an open that has passed: the heartbeat stops asking at
    the open (said once) and the bar is recovered, untraded, before the next day's bar."""
    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    asked = _late_source(engine, now, lambda: now.t >= NEXT_OPEN)
    with capture_logs() as logs:
        await engine.run_until_done()
    assert [t for t, _ in stepped if t >= LABEL] == [LABEL, NEXT]
    assert dict(stepped)[LABEL] is False and dict(stepped)[NEXT] is None
    [stopped] = [e for e in logs if e["event"] == "bar.retry_stopped"]
    assert stopped["time"] == LABEL and "next session opened" in stopped["reason"]
    assert len(asked) > 2  # asked again before the open, with no bar
    assert [e["time"] for e in logs if e["event"] == "bar.recovered"] == [LABEL]


async def test_bars_missed_in_an_outage_are_recovered_when_the_source_is_back_for_a_late_bar(
    engine_config,
):
    """The source down from Tuesday's release to 30 minutes after Wednesday's: Tuesday's bar
    was given up at Wednesday's open, and Wednesday's asked for again. When the source came
    back, Wednesday's bar arrived late and traded, but Tuesday's was declared lost
    (`bar.lost`, never stepped: the features ran across the hole), as it is not when the
    source comes back before a release. It is fetched and stepped untraded first."""
    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    back = datetime(2020, 4, 15, 20, 30, tzinfo=UTC)
    bars = engine.feed.bars
    asked: list[datetime] = []

    async def vendor(t):  # type: ignore[no-untyped-def]
        asked.append(t)
        if t >= LABEL and now.t < back:  # the warm-up's history came
            raise RetryableError("yahoo: no symbol could be fetched (kinds: http_5xx)")
        return await bars(t)

    engine.feed.bars = vendor
    with capture_logs() as logs:
        await engine.run_until_done()
    assert [(t, trade) for t, trade in stepped if t >= LABEL] == [(LABEL, False), (NEXT, None)]
    assert [e["time"] for e in logs if e["event"] == "bar.recovered"] == [LABEL]
    assert not [e for e in logs if e["event"] == "bar.lost"]
    [late] = [e for e in logs if e["event"] == "bar.arrived_late"]
    assert late["time"] == NEXT and late["trade"] is True
    # In time order: Tuesday's fetched (and stepped) before Wednesday's is asked for again.
    served = [t for t in asked if t >= LABEL][-2:]
    assert served == [LABEL, NEXT]
    assert engine.bars_never_traded == 1


async def test_a_bar_recovered_untraded_counts_as_never_traded(engine_config, tmp_path):
    """A bar that came only after it could trade was stepped untraded, yet the run ended
    with `bars_never_traded` 0 and no warning: a quant comparing the run with a backtest
    found a decision missing that nothing reported."""
    import json
    import sqlite3

    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    _late_source(engine, now, lambda: now.t >= NEXT_OPEN)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    untraded = [t for t, trade in stepped if t >= LABEL and trade is False]
    assert untraded == [LABEL] and result.bars_never_traded == len(untraded)
    [warned] = [e for e in logs if e["event"] == "run.bars_never_traded"]
    assert warned["bars"] == warned["recovered_untraded"] == 1 and warned["still_missing"] == 0
    [stop] = [e for e in logs if e["event"] == "engine.stop"]
    assert stop["bars_never_traded"] == 1
    with sqlite3.connect(tmp_path / "store.db") as con:
        (summary,) = con.execute("select summary from runs").fetchone()
    assert json.loads(summary)["bars_never_traded"] == 1


async def test_bars_caught_up_after_a_stall_count_as_never_traded_once_across_a_restart(
    engine_config,
):
    """The daemon stalled (or was suspended) past two releases: the older bar was stepped
    untraded (`bar.catch_up`) and counted nowhere, so /status, /metrics and the summary said
    every bar was traded. The count is the run's: a restart continues it, and the bars it
    replays up to its checkpoint (released together again) are not counted twice."""
    from tradingd import metrics
    from tradingd.app import health_inputs

    # Wednesday's bar has closed too when the stalled daemon's clock releases Tuesday's.
    now = FakeTime(datetime(2020, 4, 15, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    untraded = [t for t, trade in stepped if t >= LABEL and trade is False]
    assert untraded == [LABEL] and dict(stepped)[NEXT] is None
    assert result.bars_never_traded == len(untraded)
    _checks, status, _controls = health_inputs(engine)
    assert status()["bars_never_traded"] == len(untraded)
    assert metrics.BARS_NEVER_TRADED._value.get() == len(untraded)
    [warned] = [e for e in logs if e["event"] == "run.bars_never_traded"]
    assert warned["bars"] == warned["caught_up_untraded"] == len(untraded)

    # Restarted two days on, stalled again: Tuesday and Wednesday come again (replayed up to
    # the checkpoint, not counted), Thursday is caught up untraded, Friday trades.
    later = FakeTime(datetime(2020, 4, 17, 20, 0, 5, tzinfo=UTC))
    restarted, stepped = _engine(engine_config, later)
    restarted.after_bar.clear()
    friday = datetime(2020, 4, 17, tzinfo=UTC)
    restarted.after_bar.append(lambda t, v: restarted.request_stop() if t >= friday else None)
    result = await restarted.run_until_done()
    assert restarted.resumed_from == NEXT
    caught_up = [t for t, trade in stepped if t > NEXT and trade is False]
    assert caught_up == [datetime(2020, 4, 16, tzinfo=UTC)]
    assert result.bars_never_traded == len(untraded) + len(caught_up)
    assert metrics.BARS_NEVER_TRADED._value.get() == result.bars_never_traded


async def test_a_start_after_the_bars_trade_deadline_steps_it_without_trading(engine_config):
    """Started Wednesday 10:30 New York with Tuesday's bar the newest closed: the clock
    releases it alone (no newer bar: no catch-up), and it traded at midday, its orders
    filling at a price it never saw. Its orders were for Wednesday's open, which has passed:
    it is stepped untraded, said and counted as the backlog's catch-up is; the next trades."""
    now = FakeTime(NEXT_OPEN + timedelta(hours=1))
    engine, stepped = _engine(engine_config, now)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert [(t, trade) for t, trade in stepped if t >= LABEL] == [(LABEL, False), (NEXT, None)]
    [caught_up] = [e for e in logs if e["event"] == "bar.catch_up"]
    assert caught_up["time"] == LABEL and caught_up["deadline"] == NEXT_OPEN
    assert result.bars_never_traded == 1
    [warned] = [e for e in logs if e["event"] == "run.bars_never_traded"]
    assert warned["caught_up_untraded"] == 1


async def test_after_a_suspend_past_the_next_open_the_bar_released_alone_is_not_traded(
    engine_config,
):
    """Suspended on Tuesday 14:00 New York, resumed Wednesday 11:00: the heartbeat after the
    resume releases Tuesday's bar alone and it traded at Wednesday midday."""
    tuesday_2pm = datetime(2020, 4, 14, 18, tzinfo=UTC)
    resumed = NEXT_OPEN + timedelta(hours=1, minutes=30)
    now = FakeTime(tuesday_2pm)
    engine, stepped = _engine(
        engine_config, now, move=lambda t: resumed if t < resumed else t + STEP
    )
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert [(t, trade) for t, trade in stepped if t >= LABEL] == [(LABEL, False), (NEXT, None)]
    assert [e["time"] for e in logs if e["event"] == "bar.catch_up"] == [LABEL]
    assert result.bars_never_traded == 1


def test_a_late_bar_may_trade_until_the_next_sessions_open():
    clock = LiveClock(LiveConfig(delay_s=5), now=FakeTime(LABEL))
    assert clock.trade_deadline(LABEL) == NEXT_OPEN
    thursday = datetime(2020, 4, 9, tzinfo=UTC)  # Good Friday closed: Monday's open
    assert clock.trade_deadline(thursday) == datetime(2020, 4, 13, 13, 30, tzinfo=UTC)
    assert LiveClock(LiveConfig(bars_per_second=1.0), [LABEL]).trade_deadline(LABEL) is None


async def test_a_bar_released_again_after_the_wall_clock_stepped_back_trades_once(engine_config):
    """The wall clock jumps past Tuesday's close and back: Tuesday's bar, released early, is
    not there (bar.unavailable), comes at its time on the heartbeat and trades; the clock's
    release of it at its real time then steps nothing."""
    now = FakeTime(datetime(2020, 4, 14, 12, tzinfo=UTC))
    close = datetime(2020, 4, 14, 20, tzinfo=UTC)
    steps = [close + timedelta(hours=1), close - timedelta(minutes=1)]  # ahead, then back

    def move(t: datetime) -> datetime:  # minutes around the close: asked again within them
        if steps:
            return steps.pop(0)
        return t + (timedelta(minutes=1) if t < close + timedelta(hours=1) else STEP)

    # delay_s 30 minutes: the vendor posts at the close, before the clock's 20:30 release.
    engine, stepped = _engine(engine_config, now, delay_s=1800, move=move)
    _late_source(engine, now, lambda: now.t >= close)
    with capture_logs() as logs:
        await engine.run_until_done()
    assert [t for t, _ in stepped if t >= LABEL] == [LABEL, NEXT]
    assert dict(stepped)[LABEL] is None
    events = [e["event"] for e in logs]
    assert "clock.stepped_back" in events and "bar.arrived_late" in events
    assert [e["time"] for e in logs if e["event"] == "bar.released_again"] == [LABEL]


async def test_status_says_when_the_next_bar_is_released_and_whether_the_market_is_open(
    engine_config,
):
    """/status never said when the next bar was due nor whether the exchange trades now: a
    daemon quiet all night looked the same as a stuck one."""
    from tradingd.app import build_engine, health_inputs
    from tradingd.health.server import public

    now = FakeTime(datetime(2020, 4, 14, 15, tzinfo=UTC))  # Tuesday, 11:00 in New York
    engine, _ = _engine(engine_config, now)
    checks, status, _controls = health_inputs(engine)
    clock = engine.clock
    await clock.start()
    try:
        # Tuesday's bar closes 16:00 New York (20:00 UTC) and is released delay_s later.
        assert status()["next_bar_release"] == datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC)
        assert status()["market_open"] is True
        assert public(status())["next_bar_release"] == "2020-04-14T20:00:05+00:00"
        now.t = datetime(2020, 4, 14, 21, tzinfo=UTC)  # closed; the heartbeat arms Wednesday
        await clock._tick()
        assert status()["market_open"] is False
        assert status()["next_bar_release"] == datetime(2020, 4, 15, 20, 0, 5, tzinfo=UTC)
    finally:
        await clock.stop()
    replay = build_engine(engine_config, "backtest", panel=make_panel(n_bars=90, split_at=None))
    replay_checks, replay_status, _controls = health_inputs(replay)
    assert replay_status()["next_bar_release"] is None
    assert replay_status()["market_open"] is None
    # /ready shows the calendar's end (LiveClock.calendar_status); a replay has no calendar.
    (calendar,) = [c for c in checks if c.name == "calendar"]
    result = calendar.probe()
    assert result.ok and "XNYS" in result.detail and result.data["ends"] is None
    assert "calendar" not in [c.name for c in replay_checks]


async def test_a_restart_after_the_next_open_promises_no_retry_for_its_missing_bar(
    engine_config,
):
    """Restarted after Wednesday's open, Tuesday's bar (released at once, missing) can no
    longer trade: it was promised a retry "until" the past open, waited a heartbeat, then
    logged that the retry stopped. It waits for the next bar, said so once."""
    now = FakeTime(NEXT_OPEN + timedelta(hours=1))
    engine, stepped = _engine(engine_config, now)
    asked = _late_source(engine, now, lambda: now.t >= NEXT_OPEN + timedelta(hours=2))
    with capture_logs() as logs:
        await engine.run_until_done()
    [unavailable] = [e for e in logs if e["event"] == "bar.unavailable"]
    assert unavailable["time"] == LABEL and unavailable["retry"] == "next bar"
    assert not [e for e in logs if e["event"] == "bar.retry_stopped"]
    assert asked[0] == NEXT_OPEN + timedelta(hours=1) and len(asked) == 2  # then at recovery
    assert [t for t, _ in stepped if t >= LABEL] == [LABEL, NEXT]
    assert dict(stepped)[LABEL] is False  # recovered before the next bar, untraded


async def test_a_clock_that_fails_while_a_late_bar_is_asked_for_stops_the_asking(engine_config):
    """A failed firing only woke the wait: the engine asked for the late bar until its
    deadline (about 64 hours for a Friday bar) on a clock that would release nothing more.
    The clock's failure ends the run, as it does between bars."""
    import pytest

    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, _ = _engine(engine_config, now)
    clock = engine.clock
    asked = _late_source(engine, now, lambda: False)
    fetch = engine.feed.bars

    def broken(at: datetime) -> None:
        raise RuntimeError("exchange calendar unreadable")

    async def clock_fails_at_the_first_ask(t):  # type: ignore[no-untyped-def]
        if t == LABEL and not asked:
            clock._extend_calendar = broken  # type: ignore[method-assign]
            await clock._tick()  # the heartbeat's firing fails while the bar is missing
        return await fetch(t)

    engine.feed.bars = clock_fails_at_the_first_ask
    with pytest.raises(RuntimeError, match="exchange calendar unreadable"):
        await engine.run_until_done()
    assert len(asked) == 1


async def test_a_clock_wait_puts_a_stop_and_released_bars_before_its_failure(engine_config):
    """`wait` raised a failed firing before it looked at a stop or at bars already released:
    a stop that met a failure became an error exit, and those bars were never stepped. It
    now answers in the iterator's order."""
    import asyncio

    import pytest

    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, _ = _engine(engine_config, now)
    clock = engine.clock
    clock._event = asyncio.Event()
    clock._failure = RuntimeError("exchange calendar unreadable")
    clock._pending.append(LABEL)
    await clock.wait(0.01)  # a released bar first: the iterator hands it over
    clock._pending.clear()
    clock._stopped = True
    await clock.wait(0.01)  # a stop: no error exit
    clock._stopped = False
    with pytest.raises(RuntimeError, match="exchange calendar unreadable"):
        await clock.wait(0.01)


async def test_releases_the_clock_drops_past_its_backlog_count_as_never_traded_once(
    engine_config, monkeypatch
):
    """A daemon stalled past more releases than the clock keeps (`clock.live.backlog_dropped`)
    never stepped the oldest ones, and `bars_never_traded` counted none of them: /status,
    /metrics and the summary said those bars were traded. They count once: a restart from
    the checkpoint after them continues the count and does not count them again."""
    from tradingd import metrics
    from tradingd.app import health_inputs
    from tradingd.clock import live

    monkeypatch.setattr(live, "_MAX_PENDING", 2)
    friday = datetime(2020, 4, 17, tzinfo=UTC)
    # Tuesday to Friday have closed when the stalled daemon's clock releases them: it keeps
    # Thursday and Friday, drops Tuesday and Wednesday.
    now = FakeTime(datetime(2020, 4, 17, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    engine.after_bar.clear()
    engine.after_bar.append(lambda t, v: engine.request_stop() if t >= friday else None)
    with capture_logs() as logs:
        result = await engine.run_until_done()
    assert [(t, trade) for t, trade in stepped if t >= LABEL] == [
        (datetime(2020, 4, 16, tzinfo=UTC), False),
        (friday, None),
    ]
    assert result.bars_never_traded == 2 + 1  # dropped, and Thursday caught up untraded
    assert engine.clock.dropped == 2
    _checks, status, _controls = health_inputs(engine)
    assert status()["bars_never_traded"] == 3
    assert metrics.BARS_NEVER_TRADED._value.get() == 3
    [warned] = [e for e in logs if e["event"] == "run.bars_never_traded"]
    assert warned["bars"] == 3 and warned["dropped_by_clock"] == 2
    assert warned["caught_up_untraded"] == 1

    # Restarted on Monday, not stalled: the count continues from the checkpoint (Friday's).
    monkeypatch.setattr(live, "_MAX_PENDING", 10_000)
    monday = datetime(2020, 4, 20, tzinfo=UTC)
    restarted, stepped = _engine(
        engine_config, FakeTime(datetime(2020, 4, 20, 20, 0, 5, tzinfo=UTC))
    )
    restarted.after_bar.clear()
    restarted.after_bar.append(lambda t, v: restarted.request_stop() if t >= monday else None)
    result = await restarted.run_until_done()
    assert restarted.resumed_from == friday and restarted.clock.dropped == 0
    assert (monday, None) in stepped
    assert result.bars_never_traded == 3


async def test_a_plan_a_killed_process_was_carrying_out_is_finished_past_its_deadline(
    engine_config,
):
    """Restarted during the next session, the bar after the checkpoint (released alone,
    past its trade deadline) was stepped untraded, and the plan the killed process was
    carrying out for it (its cancels sent, a stop taken off for its replacement; its orders
    stored as intents) was dropped at the next bar without a word. It is finished, said."""
    from tradingd.core.orders import market_order

    now = FakeTime(NEXT_OPEN + timedelta(hours=1))
    engine, stepped = _engine(engine_config, now)
    symbol = engine.symbols[0]
    # What _resume sets from the stored intents of the bar the killed process was in.
    intent = market_order("t-l", LABEL, symbol, 1)
    engine._interrupted = (LABEL, ["sent-before-the-kill"], [intent])
    with capture_logs() as logs:
        await engine.run_until_done()
    events = [e["event"] for e in logs]
    assert "resume.interrupted_plan_late" in events and "resume.interrupted_plan" in events
    assert "resume.interrupted_plan_dropped" not in events
    assert dict(stepped)[LABEL] is not False  # traded: the plan's rest went out
    assert engine.broker.order(intent.client_order_id) is not None  # sent to the broker


async def test_a_plan_whose_bar_was_stepped_untraded_is_said_dropped(engine_config):
    """A plan of a bar that did not trade after the restart (a newer bar released behind
    it) is not sent; that it is dropped is said, with what it held."""
    from tradingd.core.orders import market_order

    now = FakeTime(NEXT_OPEN + timedelta(hours=1))
    engine, _stepped = _engine(engine_config, now)
    earlier = LABEL - timedelta(days=1)
    intent = market_order("t-l", earlier, engine.symbols[0], 1)
    engine._interrupted = (earlier, ["sent-before-the-kill"], [intent])
    with capture_logs() as logs:
        await engine.run_until_done()
    (dropped,) = [e for e in logs if e["event"] == "resume.interrupted_plan_dropped"]
    assert (dropped["time"], dropped["cancels"], dropped["orders"]) == (earlier, 1, 1)
    assert engine.broker.order(intent.client_order_id) is None


async def test_a_plan_a_killed_process_was_carrying_out_is_said_dropped_while_paused(
    engine_config,
):
    """Restarted paused (the operator's pause is in the checkpoint), the plan the killed
    process was carrying out for the bar is not sent (a pause stops every new order), and
    that it is dropped is said with the reason: it was dropped without a word."""
    from tradingd.core.orders import market_order

    now = FakeTime(NEXT_OPEN - timedelta(hours=1))
    engine, stepped = _engine(engine_config, now)
    intent = market_order("t-p", LABEL, engine.symbols[0], 1)
    engine._interrupted = (LABEL, ["sent-before-the-kill"], [intent])
    engine.trading_state = "paused"
    with capture_logs() as logs:
        await engine.run_until_done()
    assert LABEL in dict(stepped)
    (dropped,) = [e for e in logs if e["event"] == "resume.interrupted_plan_dropped"]
    assert (dropped["time"], dropped["cancels"], dropped["orders"]) == (LABEL, 1, 1)
    assert dropped["reason"] == "trading is paused"
    assert "resume.interrupted_plan" not in [e["event"] for e in logs]
    assert engine.broker.order(intent.client_order_id) is None


async def test_an_intraday_bar_not_delivered_says_its_retry_ends_at_the_next_release(
    engine_config,
):
    """A 5-minute bar the source does not have at its release is asked for again until the
    clock releases the next bar, five minutes on (`bar.retry_stopped`); `bar.unavailable`
    promised a retry until the next session's open, the next day."""
    from tradingd.app import build_engine

    panel = intraday_panel(5, sessions=3)
    times = [pd.Timestamp(t).tz_localize("UTC").to_pydatetime() for t in panel.times]
    k = 78 + 40  # the second session's 12:50 New York bar (17:50 UTC)
    label, after = times[k], times[k + 1]
    config = dataclasses.replace(
        engine_config,
        live=LiveConfig(bar="5m", delay_s=5),
        run=dataclasses.replace(engine_config.run, run_id="t-5m"),
    )
    engine = build_engine(config, "live", panel=panel)
    now = FakeTime(label + timedelta(minutes=5, seconds=5))  # its release
    _clock_moving_on(engine, config.live, now, times[k - 1], lambda t: t + timedelta(seconds=30))
    bars = engine.feed.bars

    async def vendor(t):  # type: ignore[no-untyped-def]
        if t == label:
            raise RetryableError(f"alpaca: no bar yet for {t.isoformat()}")
        return await bars(t)

    engine.feed.bars = vendor
    engine.after_bar.append(lambda t, v: engine.request_stop() if t >= after else None)
    with capture_logs() as logs:
        await engine.run_until_done()
    [unavailable] = [e for e in logs if e["event"] == "bar.unavailable"]
    next_release = after + timedelta(minutes=5, seconds=5)
    assert unavailable["time"] == label
    assert unavailable["retry"] == (
        f"in 0.001 s, the wait doubling, until the next bar's release at "
        f"{next_release.isoformat()}, "
        "then next bar"
    )
    [stopped] = [e for e in logs if e["event"] == "bar.retry_stopped"]
    assert stopped["time"] == label and stopped["reason"] == "the clock released another bar"


async def test_a_one_minute_bar_a_few_seconds_late_is_asked_again_before_the_next_release(
    engine_config,
):
    """A 1-minute bar posted 10 s after its release: the asking waited the clock's heartbeat
    (60 s) first, the next bar's release came before it and the bar was recovered without
    trading. The first wait is now a quarter of what is left before the next release; the
    bar comes on the second asking and trades. The clock's waits move a fake time on and
    release the next bar when they reach it, as the real clock's firing would."""
    from tradingd.app import build_engine

    panel = intraday_panel(1, sessions=2, n_symbols=3)
    times = [pd.Timestamp(t).tz_localize("UTC").to_pydatetime() for t in panel.times]
    k = 390 + 200  # the second session's 12:50 New York bar
    label = times[k]
    config = dataclasses.replace(
        engine_config,
        live=LiveConfig(bar="1m", delay_s=5),
        run=dataclasses.replace(engine_config.run, run_id="t-1m"),
    )
    engine = build_engine(config, "live", panel=panel)
    release = label + timedelta(minutes=1, seconds=5)
    now = FakeTime(release)
    clock = LiveClock(config.live, now=now, resume_after=times[k - 1])  # heartbeat 60 s
    engine.clock = clock
    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)
        due = clock.next_release_at
        if due is not None and now.t + timedelta(seconds=seconds) >= due:
            now.t = due
            await clock._tick()  # the next bar's firing: the real wait returns on it
        else:
            now.t += timedelta(seconds=seconds)

    clock.wait = wait  # type: ignore[method-assign]
    bars = engine.feed.bars
    asked: list[datetime] = []

    async def vendor(t):  # type: ignore[no-untyped-def]
        if t == label:
            asked.append(now.t)
            if now.t < release + timedelta(seconds=10):
                raise RetryableError(f"alpaca: no bar yet for {t.isoformat()}")
        return await bars(t)

    engine.feed.bars = vendor
    stepped = _record_steps(engine)
    engine.after_bar.append(lambda t, v: engine.request_stop() if t >= label else None)
    with capture_logs() as logs:
        await engine.run_until_done()
    events = [e["event"] for e in logs]
    assert "bar.retry_stopped" not in events and events.count("bar.arrived_late") == 1
    assert waits[0] == pytest.approx(60 / 4) and len(asked) == 2
    assert asked[-1] < release + timedelta(minutes=1)  # before the next release
    assert (label, None) in stepped or (label, True) in stepped
    [unavailable] = [e for e in logs if e["event"] == "bar.unavailable"]
    assert unavailable["retry"].startswith("in 15 s, the wait doubling, until the next bar's")


async def test_a_feed_outage_over_many_intraday_bars_is_said_at_its_start_counted_and_ended(
    engine_config,
):
    """The source down for two hours of 5-minute bars: each bar wrote the warnings
    `bar.unavailable` and `bar.retry_stopped`, and each lost when the source came back a
    `bar.lost`: 72 warnings for 24 bars, a day of 1-minute bars 1170. The first bar is said
    in full; later bars are debug lines, counted and said in `feed.still_unavailable` once 5
    minutes of bars have passed since the last line, the wait doubling up to an hour (their
    `bar.retry_stopped` with them); the first `bar.lost` is said, the rest counted; the bar
    the source delivers says `feed.recovered` with the outage's length and counts."""
    from tradingd.app import build_engine, health_inputs
    from tradingd.engine.outages import REPEAT_FIRST, REPEAT_MAX

    panel = intraday_panel(5, sessions=3)
    times = [pd.Timestamp(t).tz_localize("UTC").to_pydatetime() for t in panel.times]
    k, n = 78 + 20, 24  # from the second session's 11:10 New York bar, 24 bars (2 hours)
    down, back = times[k : k + n], times[k + n]
    config = dataclasses.replace(
        engine_config,
        live=LiveConfig(bar="5m", delay_s=5),
        run=dataclasses.replace(engine_config.run, run_id="t-5m-down"),
    )
    engine = build_engine(config, "live", panel=panel)
    now = FakeTime(down[0] + timedelta(minutes=5, seconds=5))  # its release
    _clock_moving_on(engine, config.live, now, times[k - 1], lambda t: t + timedelta(seconds=30))
    bars = engine.feed.bars

    async def vendor(t):  # type: ignore[no-untyped-def]
        if t in down:  # never delivered, also when asked again
            raise RetryableError("alpaca: no symbol could be fetched (kinds: http_5xx)")
        return await bars(t)

    engine.feed.bars = vendor
    engine.after_bar.append(lambda t, v: engine.request_stop() if t >= back else None)
    _checks, status, _controls = health_inputs(engine)
    shown: dict[datetime, dict | None] = {}  # /status's feed_outage as a bar is first asked for
    stepped: list[dict | None] = []  # and after the bar the source delivered is stepped
    engine.after_bar.append(lambda t, v: stepped.append(status()["feed_outage"]))
    asked = engine.feed.bars

    async def vendor_watched(t):  # type: ignore[no-untyped-def]
        shown.setdefault(t, status()["feed_outage"])
        return await asked(t)

    engine.feed.bars = vendor_watched
    with capture_logs() as logs:
        await engine.run_until_done()
    assert engine.bars_unavailable == n  # every bar counted: repeated_errors, /metrics

    def lines(event: str, level: str | None = None) -> list[dict]:
        return [e for e in logs if e["event"] == event and level in (None, e["log_level"])]

    [first] = lines("bar.unavailable", "warning")
    assert first["time"] == down[0] and first["symbols"] == len(engine.symbols)
    # The repeats: 5, 15, 35, 75 minutes of bars after the first (the wait doubles).
    due, wait, expected = timedelta(0), REPEAT_FIRST, []
    while due + wait <= down[-1] - down[0]:
        due, wait = due + wait, min(wait * 2, REPEAT_MAX)
        expected.append(down[0] + due)
    repeats = lines("feed.still_unavailable", "warning")
    assert [e["time"] for e in repeats] == expected and len(expected) < n // 4
    said = [down[0], *expected]
    # Every later bar is one debug line (a debug log reads as before); none is left out of
    # the counts.
    assert [e["time"] for e in lines("bar.unavailable", "debug")] == down[1:]
    for before, line in zip(said[:-1], repeats, strict=True):
        assert line["bars_since_last_line"] == down.index(line["time"]) - down.index(before)
        assert line["bars"] == down.index(line["time"]) + 1 and line["since"] == down[0]
    # Each bar's retries stopped at the next release: said with the bars said.
    stopped = lines("bar.retry_stopped")
    assert [e["time"] for e in stopped] == down
    assert [e["time"] for e in stopped if e["log_level"] == "warning"] == said
    # The bars never delivered are lost when the next one comes: the first said.
    lost = lines("bar.lost")
    assert [e["time"] for e in lost] == down and {e["newer"] for e in lost} == {back}
    assert [e["log_level"] for e in lost] == ["warning"] + ["debug"] * (n - 1)
    [end] = lines("feed.recovered")
    assert (end["time"], end["since"], end["last_unavailable"]) == (back, down[0], down[-1])
    assert end["down_for_s"] == (back - down[0]).total_seconds()
    assert (end["bars"], end["given_up"], end["lost"], end["recovered"]) == (n, n, n, 0)
    assert engine.bars_never_traded == n
    # /status's feed_outage: none before its first bar, then the outage as it goes on (the
    # bars before the one asked for), none once the source delivered a bar.
    assert shown[down[0]] is None
    for i, t in enumerate([*down[1:], back], start=1):
        now_shown = shown[t]
        assert now_shown is not None and now_shown["since"] == down[0]
        assert now_shown["last_unavailable"] == down[i - 1] and now_shown["bars"] == i
        assert now_shown["error"].startswith("alpaca: no symbol could be fetched")
    assert shown[back]["given_up"] == n  # type: ignore[index]
    assert stepped and stepped[-1] is None


async def test_a_calendars_last_bar_posted_late_is_traded_then_the_run_ends(engine_config):
    """A calendar that ends (the package's `bound_max`; here one built with an end): its
    last bar, posted a little after close + delay_s, was never traded. The clock failed at
    the firing that released it (no next close to arm), and `wait` raised that failure into
    the engine's retry of the late bar: engine.failed, exit 2. Now the bar is asked for
    again until its trade deadline and traded, and the run ends by itself, named."""
    from tradingd.clock.calendar import ExchangeCalendar

    now = FakeTime(datetime(2020, 4, 14, 20, 0, 5, tzinfo=UTC))
    engine, stepped = _engine(engine_config, now)
    engine.clock._exchange = ExchangeCalendar("XNYS", "1d", start="2020-01-02", end="2020-04-14")
    engine.clock._own_exchange = False  # one of the caller's, as the daemon's shared one
    calls = [0]

    def posted() -> bool:
        calls[0] += 1
        return calls[0] > 3

    asked = _late_source(engine, now, posted)
    with capture_logs() as logs:
        await engine.run_until_done()
    assert dict(stepped)[LABEL] is None  # traded
    assert [t for t, _ in stepped if t >= LABEL] == [LABEL]
    assert len(asked) == 4 and all(t < NEXT_OPEN for t in asked)
    events = [e["event"] for e in logs]
    assert "clock.live.failed" not in events and "engine.failed" not in events
    [ended] = [e for e in logs if e["event"] == "clock.calendar_ended"]
    assert ended["last_bar"] == LABEL.isoformat()
    assert events.index("bar.arrived_late") < events.index("clock.calendar_ended")
    assert engine.bars_never_traded == 0
