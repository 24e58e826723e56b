"""Start-up of a live run on a vendor feed: which history warms it up and which bars it trades."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from tradingd.app import plan_live
from tradingd.clock.calendar import ExchangeCalendar
from tradingd.config import Config, ConfigError, LiveConfig, RunConfig

SECOND = timedelta(seconds=1)


def d(y: int, m: int, day: int) -> datetime:
    return datetime(y, m, day, tzinfo=UTC)


@pytest.fixture(scope="module")
def xnys() -> ExchangeCalendar:
    return ExchangeCalendar("XNYS", "1d", start="2024-01-01", end="2025-01-31")


def test_real_time_warms_up_through_the_bar_before_the_last_closed_one(xnys):
    """Started on Saturday 30 November 2024: the last closed bar is Friday's half day (29th);
    the warm-up ends on the 27th (the 28th is Thanksgiving) and the clock releases the 29th
    at once, so the current bar is traded and nothing before it."""
    config = Config(live=LiveConfig(warmup_bars=3))
    plan = plan_live(config, xnys, datetime(2024, 11, 30, 12, tzinfo=UTC))
    assert plan.calendar is None
    assert (plan.warm_from, plan.warm_until) == (d(2024, 11, 25), d(2024, 11, 27))
    assert len(xnys.bars_between(plan.warm_from, plan.warm_until)) == 3


def test_before_the_close_the_last_closed_bar_is_the_previous_session(xnys):
    # Monday 2 December 2024, 15:00 New York (20:00 UTC): today's bar has not closed yet.
    plan = plan_live(
        Config(live=LiveConfig(warmup_bars=2)), xnys, datetime(2024, 12, 2, 20, tzinfo=UTC)
    )
    assert plan.warm_until == d(2024, 11, 27)  # the bar before Friday the 29th


def test_accelerated_replays_the_run_window_after_warming_up_before_it(xnys):
    config = Config(
        run=RunConfig(start="2024-11-25", end="2024-12-03"),
        live=LiveConfig(bars_per_second=10.0, warmup_bars=2),
    )
    plan = plan_live(config, xnys, datetime(2025, 1, 15, tzinfo=UTC))
    assert plan.calendar == [
        d(2024, 11, 25), d(2024, 11, 26), d(2024, 11, 27), d(2024, 11, 29),
        d(2024, 12, 2), d(2024, 12, 3),
    ]  # fmt: skip
    assert (plan.warm_from, plan.warm_until) == (d(2024, 11, 21), d(2024, 11, 22))


def test_accelerated_needs_a_start(xnys):
    with pytest.raises(ConfigError, match=r"run\.start"):
        plan_live(Config(live=LiveConfig(bars_per_second=5.0)), xnys, d(2024, 12, 2))


@pytest.fixture(scope="module")
def xnys_years() -> ExchangeCalendar:
    return ExchangeCalendar("XNYS", "1d", start="2020-01-01", end="2025-01-31")


def test_the_warm_up_holds_the_bars_asked_for_across_holidays(xnys_years):
    """300 bars asked, 294 fetched: the span was estimated at five sessions a week, and the
    year's holidays fell outside it."""
    config = Config(
        run=RunConfig(start="2024-12-02", end="2024-12-03"),
        live=LiveConfig(bars_per_second=10.0, warmup_bars=300),
    )
    plan = plan_live(config, xnys_years, datetime(2025, 1, 15, tzinfo=UTC))
    assert plan.warm_from is not None and plan.warm_until is not None
    assert len(xnys_years.bars_between(plan.warm_from, plan.warm_until)) == 300
    assert plan.warm_until == d(2024, 11, 29)


def test_a_live_warm_up_covers_what_the_default_pipeline_reads(xnys_years):
    """The default strategy's kelly_garch fits GARCH on the last 500 returns of its history;
    a vendor warm-up of live.warmup_bars (300) gave it 293 live, against 500 in a backtest
    of the same span: other fits, other sizes and orders from the first live bar."""
    from tradingd.app import build_pipeline, feature_names, make_catalog, warmup_needed
    from tradingd.features.catalog import warmup

    config = Config(
        run=RunConfig(start="2024-12-02", end="2024-12-03"),
        live=LiveConfig(bars_per_second=10.0, warmup_bars=300),
    )
    symbols = ("AAA", "BBB", "CCC")
    pipeline = build_pipeline(config, symbols)
    names = feature_names(config, pipeline)
    needed = warmup_needed(pipeline, names, make_catalog(config))
    plan = plan_live(config, xnys_years, datetime(2025, 1, 15, tzinfo=UTC), needed)
    assert plan.warm_from is not None and plan.warm_until is not None
    got = len(xnys_years.bars_between(plan.warm_from, plan.warm_until))
    reads = [p.history_bars() for p in pipeline.plugins() if hasattr(p, "history_bars")]
    assert got >= max(reads) > config.live.warmup_bars
    # And every feature has its value, with a model window of them behind the first bar.
    catalog = make_catalog(config)
    windows = [getattr(p, "window", 1) for p, _ in pipeline.signals]
    assert got >= max(warmup(catalog.node(n)) + 1 for n in names) + max(windows) - 1


def test_a_warm_up_near_the_calendars_first_bar_takes_the_bars_there_are():
    """Widening the span until it held the bars asked for ran past the calendar's first
    session: an accelerated run starting there ended in CalendarRangeError."""
    calendar = ExchangeCalendar("XNYS", "1d", start="2024-01-02", end="2025-01-31")
    config = Config(
        run=RunConfig(start="2024-03-01", end="2024-03-05"),
        live=LiveConfig(bars_per_second=10.0, warmup_bars=300),
    )
    plan = plan_live(config, calendar, datetime(2025, 1, 15, tzinfo=UTC))
    assert plan.warm_from == d(2024, 1, 2) and plan.warm_until == d(2024, 2, 29)


def test_a_restart_after_a_long_outage_warms_up_from_its_checkpoint(xnys_years):
    """Down from 31 July to 4 December 2024, a warm-up of the last 20 bars before the
    restart skipped August to November: the checkpoint's open entry filled months late at a
    split price, and nothing in between was stepped. The warm-up now reaches back to n bars
    before the first bar after the checkpoint, so every bar since it is stepped."""
    from tradingd.app import _from_checkpoint

    config = Config(live=LiveConfig(warmup_bars=20))
    plan = plan_live(config, xnys_years, datetime(2024, 12, 4, 22, tzinfo=UTC))
    assert plan.warm_from is not None and plan.warm_until is not None
    assert plan.warm_from > d(2024, 11, 1)  # the plan alone: the last 20 bars
    checkpoint = d(2024, 7, 31)
    start = _from_checkpoint(xnys_years, checkpoint, plan.warm_from, plan.warm_until, 20)
    bars = xnys_years.bars_between(start, plan.warm_until)
    # Every session from 1 August (the first after the checkpoint) to the warm-up's end...
    sessions = xnys_years.bars_between(d(2024, 8, 1), plan.warm_until)
    assert [b for b in bars if b > checkpoint] == sessions
    assert sessions[0] == d(2024, 8, 1) and len(sessions) > 80
    # ...after 20 bars up to the checkpoint, for the features.
    assert len([b for b in bars if b <= checkpoint]) == 20
    assert max(b for b in bars if b <= checkpoint) == checkpoint


def test_a_restart_within_the_warm_up_keeps_the_planned_warm_up(xnys_years):
    from tradingd.app import _from_checkpoint

    config = Config(live=LiveConfig(warmup_bars=20))
    plan = plan_live(config, xnys_years, datetime(2024, 12, 4, 22, tzinfo=UTC))
    assert plan.warm_from is not None and plan.warm_until is not None
    for checkpoint in (plan.warm_from, d(2024, 11, 29), plan.warm_until):
        got = _from_checkpoint(xnys_years, checkpoint, plan.warm_from, plan.warm_until, 20)
        assert got == plan.warm_from


def test_a_checkpoint_too_far_back_to_step_through_is_refused_with_what_to_do():
    from tradingd import app

    minutes = ExchangeCalendar("XNYS", "1m", start="2024-01-02", end="2025-01-31")
    config = Config(live=LiveConfig(bar="1m", warmup_bars=30))
    plan = plan_live(config, minutes, datetime(2024, 12, 4, 22, tzinfo=UTC))
    assert plan.warm_from is not None and plan.warm_until is not None
    with pytest.raises(ConfigError, match=r"checkpoint is at 2024-02-01.*run\.name"):
        app._from_checkpoint(minutes, d(2024, 2, 1), plan.warm_from, plan.warm_until, 30)


@pytest.mark.parametrize("name", ["XSES", "XSHG", "XBOM"])
def test_a_start_after_a_bounded_calendars_last_close_runs_its_last_bar_then_exits_78(name):
    """A calendar the installed exchange_calendars records only to a date (its bound_max).
    Started after its last close, the plan asked the calendar about `now`, past its end:
    CalendarRangeError, exit 2, restarted by systemd into the same error, and the last bar
    (not released yet, or released and still able to trade) was lost. It plans that bar as
    the clock's first release; once it can no longer trade, the start exits 78 saying to
    upgrade the package (no restart helps)."""
    import warnings

    import exchange_calendars as xcals

    from tradingd.__main__ import EX_CONFIG, exit_code
    from tradingd.clock.calendar import CalendarEnded
    from tradingd.clock.live import LiveClock

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if xcals.get_calendar(name).bound_max() is None:
            pytest.skip(f"the installed exchange_calendars has no end for {name}")
    cal = ExchangeCalendar(name, "1d")
    close = cal.coverage[1]
    last = cal.last_closed(close)
    config = Config(live=LiveConfig(warmup_bars=3, delay_s=300, calendar=name))
    deadline = LiveClock(config.live, exchange=cal).trade_deadline(last)
    assert deadline is not None and deadline > close
    for now in (close + timedelta(minutes=3), close + timedelta(hours=1), deadline - SECOND):
        plan = plan_live(config, cal, now)
        assert plan.warm_until is not None and plan.warm_until < last  # released by the clock
        assert cal.bars_between(plan.warm_until, last) == [plan.warm_until, last]
        clock = LiveClock(config.live, exchange=cal, now=lambda: now)  # noqa: B023
        assert clock.market_open() is False  # /status until the run stops
    for now in (deadline, close + timedelta(days=40)):
        with pytest.raises(CalendarEnded, match="upgrade exchange-calendars") as err:
            plan_live(config, cal, now)
        assert exit_code(err.value, "run") == EX_CONFIG


# XASX opens 10:00 Sydney: 23:00 UTC the day before in March (AEDT, UTC+11); 60-minute bars
# 10:00 .. 15:00, the last closing 16:00 Sydney (05:00 UTC).
XASX_MONDAY_OPEN = datetime(2024, 3, 10, 23, tzinfo=UTC)  # Monday 11 March's first bar
XASX_TUESDAY_LAST = datetime(2024, 3, 12, 4, tzinfo=UTC)  # Tuesday 12 March's last bar


@pytest.fixture(scope="module")
def xasx_hours() -> ExchangeCalendar:
    return ExchangeCalendar("XASX", "60m", start="2024-01-02", end="2024-06-28")


def test_an_accelerated_xasx_replay_steps_run_starts_session_through_run_ends(xasx_hours):
    """run.start = Monday 11 March, run.end = Tuesday 12th: read as UTC days, the replay
    began at Monday 00:00 UTC (Monday's first bar, 23:00 UTC on Sunday, only warmed up on)
    and stepped Wednesday's first bar (23:00 UTC on Tuesday). A backtest of the same dates
    trades Monday's and Tuesday's sessions, and so does the replay now, whatever
    data.timezone."""
    from tradingd.config import DataConfig

    for zone in ("America/New_York", "Australia/Sydney", "UTC"):
        config = Config(
            run=RunConfig(start="2024-03-11", end="2024-03-12"),
            live=LiveConfig(bars_per_second=10.0, warmup_bars=2, calendar="XASX", bar="60m"),
            data=DataConfig(timezone=zone),
        )
        plan = plan_live(config, xasx_hours, datetime(2024, 6, 1, tzinfo=UTC))
        assert plan.calendar is not None
        assert plan.calendar[0] == XASX_MONDAY_OPEN, zone
        assert plan.calendar[-1] == XASX_TUESDAY_LAST, zone
        sydney = {t.astimezone(xasx_hours.tz).date().isoformat() for t in plan.calendar}
        assert sydney == {"2024-03-11", "2024-03-12"}
        assert len(plan.calendar) == 2 * 6
        assert plan.warm_until == datetime(2024, 3, 8, 4, tzinfo=UTC)  # Friday's last bar


def test_an_accelerated_replay_of_a_bounded_calendars_past_window_runs(xasx_hours):
    """XSES is recorded only to 2026-12-31 (exchange-calendars 4.13): a replay of a past
    window, started after that end, steps the window; one ending on the calendar's last day
    ends at its last close; one past it says to upgrade the package."""
    import warnings

    import exchange_calendars as xcals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bound = xcals.get_calendar("XSES").bound_max()
    if bound is None:
        pytest.skip("the installed exchange_calendars has no end for XSES")
    cal = ExchangeCalendar("XSES", "60m", start="2026-06-01")
    after = cal.coverage[1] + timedelta(days=30)
    # XSES: 09:00 .. 17:00 Singapore (UTC+8), a lunch break 12:00 .. 13:00.
    window = Config(
        run=RunConfig(start="2026-11-02", end="2026-11-03"),
        live=LiveConfig(bars_per_second=10.0, warmup_bars=2, calendar="XSES", bar="60m"),
    )
    plan = plan_live(window, cal, after)
    assert plan.calendar is not None
    assert plan.calendar[0] == datetime(2026, 11, 2, 1, tzinfo=UTC)
    assert {t.astimezone(cal.tz).date().isoformat() for t in plan.calendar} == {
        "2026-11-02",
        "2026-11-03",
    }
    last_day = dataclasses.replace(window, run=RunConfig(start="2026-12-30", end=str(bound)))
    plan = plan_live(last_day, cal, after)
    assert plan.calendar is not None and plan.calendar[-1] < cal.coverage[1]
    assert cal.close_of(plan.calendar[-1]) == cal.coverage[1]
    past = dataclasses.replace(window, run=RunConfig(start="2026-12-30", end="2027-01-06"))
    with pytest.raises(ConfigError, match=r"run\.end = '2027-01-06' is past .*upgrade exchange"):
        plan_live(past, cal, after)
