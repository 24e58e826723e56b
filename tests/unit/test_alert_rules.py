"""What the live daemon alerts on (tradingd.alert_rules), and that webhook URLs stay secret in
the configuration an operator sees and the run id."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np

from tradingd.alert_rules import AlertRules
from tradingd.alerts import DAILY_SUMMARY, KILL_SWITCH, REPEATED_ERRORS, RISK_LIMIT, STALE_DATA
from tradingd.app import run_id_for
from tradingd.config import load_config
from tradingd.core.types import RiskVerdict

TOKEN = "T0KEN-abcdef-0123456789"


@dataclass
class Recorder:
    conditions: list[tuple[str, str, bool]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    texts: dict[tuple[str, str], str] = field(default_factory=dict)

    def condition(self, kind: str, key: str, failing: bool, **kw: Any) -> None:
        self.conditions.append((kind, key, failing))
        self.texts[(kind, key)] = kw.get("text", "")

    def event(self, kind: str, key: str, **_: Any) -> None:
        self.events.append((kind, key))

    def last(self, kind: str) -> bool | None:
        found = [f for k, _, f in self.conditions if k == kind]
        return found[-1] if found else None


class Guard:
    name = "drawdown_guard"
    halted = False


class Stale:
    name = "stale_data"
    feed_stale = False
    feed_reason = ""

    def __init__(self) -> None:
        self.blocked: dict[str, str] = {}

    def stale_symbols(self) -> dict[str, str]:
        return dict(self.blocked)


def engine(*risks: Any) -> SimpleNamespace:
    return SimpleNamespace(
        pipeline=SimpleNamespace(risks=list(risks)),
        portfolio=SimpleNamespace(
            equity=100.0, cash=50.0, peak_equity=120.0, quantity=np.array([1.0, 0.0])
        ),
        feed=SimpleNamespace(),
        broker=SimpleNamespace(),
        bars_unavailable=0,
        broker_failures=0,
        trading_state="active",
        on_bar_unavailable=[],
    )


T0 = datetime(2024, 3, 4, 21, 0, tzinfo=UTC)


def test_kill_switch_and_stale_data_are_conditions_that_follow_the_plugins():
    guard, stale = Guard(), Stale()
    rec = Recorder()
    rules = AlertRules(rec, engine(guard, stale))
    rules.after_bar(T0, [])
    assert rec.last(KILL_SWITCH) is False and rec.last(STALE_DATA) is False
    guard.halted = True
    stale.blocked = {"AAPL": "no bar for 3 bars"}
    rules.after_bar(T0 + timedelta(days=1), [])
    assert rec.last(KILL_SWITCH) is True and rec.last(STALE_DATA) is True
    guard.halted, stale.blocked = False, {}
    rules.after_bar(T0 + timedelta(days=2), [])
    assert rec.last(KILL_SWITCH) is False and rec.last(STALE_DATA) is False


def test_two_instances_of_a_guard_alert_apart():
    """Two drawdown guards with their own limits: keyed by the plugin's name, the second
    (not halted) resolved the first's kill switch on every bar it fired. Each instance is
    its own condition, the second keyed `name#2` as in the checkpoint."""
    first, second = Guard(), Guard()
    rec = Recorder()
    rules = AlertRules(rec, engine(first, second))
    first.halted = True
    rules.after_bar(T0, [])
    kill = {key: failing for kind, key, failing in rec.conditions if kind == KILL_SWITCH}
    assert kill == {"drawdown_guard": True, "drawdown_guard#2": False}


def test_a_book_level_restriction_alerts_once_when_it_starts_and_once_when_it_lifts():
    """The guard returns its verdict on every bar of a halt: as an event, `risk_limit` was
    sent again each time the dedup window passed, as long as the halt lasted (80 in a run).
    It is a condition per plugin and rule now: one firing, one resolution."""
    from tradingd.alerts import Alerter, AlertsConfig

    alerter = Alerter(AlertsConfig(dedup_window_s=0.0))
    rules = AlertRules(alerter, engine())
    clip = RiskVerdict("max_position", "AAPL", "clip", "too big")
    halt = RiskVerdict("drawdown_guard", None, "halt", "drawdown 21%", rule="max_drawdown")
    day = RiskVerdict("drawdown_guard", None, "halt", "daily loss 6%", rule="daily_loss_limit")
    sent: list[tuple[str, str]] = []
    emit = alerter._emit

    def recording(kind, key, state, *args, **kw):  # type: ignore[no-untyped-def]
        if kind == RISK_LIMIT:
            sent.append((key, state))
        return emit(kind, key, state, *args, **kw)

    alerter._emit = recording  # type: ignore[method-assign]
    bars = [[clip, halt, day], [halt, day], [halt], [halt], [halt], [clip], [], [halt]]
    for i, verdicts in enumerate(bars):
        rules.after_bar(T0 + timedelta(hours=i), verdicts)
    assert sent == [
        ("drawdown_guard/max_drawdown", "firing"),
        ("drawdown_guard/daily_loss_limit", "firing"),
        ("drawdown_guard/daily_loss_limit", "resolved"),
        ("drawdown_guard/max_drawdown", "resolved"),
        ("drawdown_guard/max_drawdown", "firing"),  # a new halt
    ]


def test_a_limit_that_binds_on_every_other_bar_fires_once_and_resolves_once():
    """A scale verdict of max_gross_exposure on every other minute bar (gross hovering at
    its cap) fired and resolved at every bar as a condition (10 alerts in 10 bars): it
    resolves only once absent for the dedup window of bar time."""
    from tradingd.alerts import Alerter, AlertsConfig

    alerter = Alerter(AlertsConfig(dedup_window_s=600.0))
    rules = AlertRules(alerter, engine())
    scale = RiskVerdict("max_gross_exposure", None, "scale", "gross 1.02 above 1.00")
    sent: list[str] = []
    emit = alerter._emit

    def recording(kind, key, state, *args, **kw):  # type: ignore[no-untyped-def]
        if kind == RISK_LIMIT:
            sent.append(state)
        return emit(kind, key, state, *args, **kw)

    alerter._emit = recording  # type: ignore[method-assign]
    minute = timedelta(minutes=1)
    for i in range(20):
        rules.after_bar(T0 + i * minute, [scale] if i % 2 == 0 else [])
    assert sent == ["firing"]
    for i in range(20, 31):  # 10 minutes without it
        rules.after_bar(T0 + i * minute, [])
    assert sent == ["firing", "resolved"]


def test_a_restriction_firing_before_a_restart_is_resolved_after_it():
    """The checkpoint keeps the risk limits firing (`Alerter.assume_firing`): one that ended
    while the daemon was down is resolved at the first bar, one still in force is not sent
    again."""
    from tradingd.alerts import Alerter, AlertsConfig

    alerter = Alerter(AlertsConfig(dedup_window_s=0.0))
    since = T0.isoformat()
    alerter.assume_firing(
        [
            {"kind": RISK_LIMIT, "key": "drawdown_guard/max_drawdown", "since": since},
            {"kind": RISK_LIMIT, "key": "drawdown_guard/daily_loss_limit", "since": since},
        ]
    )
    rules = AlertRules(alerter, engine())
    halt = RiskVerdict("drawdown_guard", None, "halt", "drawdown 21%", rule="max_drawdown")
    rules.after_bar(T0, [halt])
    assert [a["key"] for a in alerter.firing()] == ["drawdown_guard/max_drawdown"]
    assert alerter.alerts == 1  # the daily loss's resolution alone


def test_the_kill_switch_says_what_lifts_it_by_the_guards_recovery():
    """Under the default cool-off the alert said entries were blocked until a deliberate
    reset, though the guard lifts itself after `cooloff_bars`."""
    from tradingd_plugins.risk.drawdown import DrawdownGuard, DrawdownGuardConfig

    texts = {}
    for recovery in ("cooloff", "halt", "scale"):
        config = DrawdownGuardConfig(recovery=recovery, cooloff_bars=15)
        guard = DrawdownGuard(config, ("A", "B"))
        guard.restore({"halted": 0})
        rec = Recorder()
        AlertRules(rec, engine(guard)).after_bar(T0, [])
        assert rec.last(KILL_SWITCH) is True
        texts[recovery] = rec.texts[(KILL_SWITCH, "drawdown_guard")]
    assert "cool-off of 15 bars" in texts["cooloff"]
    assert "resumes by itself" in texts["cooloff"]
    assert "until a deliberate reset" not in texts["cooloff"]
    assert "until a deliberate reset (tradingd reset-halt" in texts["halt"]
    assert "scaled to 50%" in texts["scale"] and "by itself" in texts["scale"]
    flat = DrawdownGuard(DrawdownGuardConfig(recovery="halt", flatten_on_breach=True), ())
    flat.restore({"halted": 3})
    rec = Recorder()
    AlertRules(rec, engine(flat)).after_bar(T0, [])
    assert rec.texts[(KILL_SWITCH, "drawdown_guard")].startswith("The book is closed")


def test_repeated_errors_need_several_bars_in_a_row_and_clear():
    """An unavailable bar is never stepped: the engine calls `bar_unavailable` (the hook the
    rules register on it), not `after_bar`. Through a live engine:
    tests/integration/test_engine_followups.py."""
    rec = Recorder()
    e = engine()
    rules = AlertRules(rec, e, repeated_after=3)
    assert e.on_bar_unavailable == [rules.bar_unavailable]
    for _ in range(2):
        e.bars_unavailable += 1
        rules.bar_unavailable(T0)
    assert rec.last(REPEATED_ERRORS) is False
    e.bars_unavailable += 1
    rules.bar_unavailable(T0)
    assert rec.last(REPEATED_ERRORS) is True
    rules.after_bar(T0, [])  # a good bar
    assert rec.last(REPEATED_ERRORS) is False
    for _ in range(2):
        e.bars_unavailable += 1
        rules.bar_unavailable(T0)
    e.broker_failures += 1
    rules.after_bar(T0, [])  # stepped, but the broker was unreachable: a third bad bar
    assert rec.last(REPEATED_ERRORS) is True


def test_a_daily_summary_when_the_exchange_day_changes():
    rec = Recorder()
    rules = AlertRules(rec, engine())
    rules.after_bar(datetime(2024, 3, 4, 15, 0, tzinfo=UTC), [])
    rules.after_bar(datetime(2024, 3, 4, 20, 0, tzinfo=UTC), [])  # same New York day
    assert not [e for e in rec.events if e[0] == DAILY_SUMMARY]
    rules.after_bar(datetime(2024, 3, 5, 15, 0, tzinfo=UTC), [])
    assert rec.events == [(DAILY_SUMMARY, "2024-03-04")]


def test_a_daily_summary_of_daily_bars_is_labelled_with_their_session_date():
    """A daily bar's time is its session's date at 00:00 UTC: in New York that is the
    evening before, and Monday's summary was labelled with Sunday's date."""
    rec = Recorder()
    rules = AlertRules(rec, engine(), daily_bars=True)
    rules.after_bar(datetime(2025, 6, 9, tzinfo=UTC), [])  # Monday's session
    rules.after_bar(datetime(2025, 6, 10, tzinfo=UTC), [])
    assert rec.events == [(DAILY_SUMMARY, "2025-06-09")]


def test_webhook_urls_never_show_in_the_public_config_nor_change_the_run_id(tmp_path):
    cfg = tmp_path / "alerts.toml"
    cfg.write_text(f"""
[[alerts.targets]]
url = "https://hooks.slack.com/services/T000/B000/{TOKEN}"
format = "slack"
""")
    with_alerts = load_config([cfg], env={})
    assert with_alerts.alerts.targets[0].url.endswith(TOKEN)
    assert TOKEN not in with_alerts.to_public_json()
    assert run_id_for(with_alerts, "live") == run_id_for(load_config([], env={}), "live")


def test_between_bars_the_broker_and_source_are_checked_only_while_trading():
    """Conditions were read only after a bar: with daily bars a broker outage on a Saturday
    alerted on Monday evening. Not while the engine starts or once it stops (a broker not
    tried yet, or stopped on purpose, is not down), and the interval is read at each tick
    (a SIGHUP may change it; 0 = only after bars)."""
    from tradingd.alert_rules import AlertTicker
    from tradingd.alerts import BROKER_DOWN

    rec = Recorder()
    rec.config = SimpleNamespace(check_interval_s=30.0)  # type: ignore[attr-defined]
    e = engine()
    state = {"started": False, "connected": False}  # not started yet
    e.broker = SimpleNamespace(status=lambda: dict(state))
    e.trading_started, e.controls_closed = False, False
    ticker = AlertTicker(AlertRules(rec, e), rec)
    assert not ticker.check() and rec.last(BROKER_DOWN) is None  # starting
    e.trading_started = True
    state.update(started=True, connected=False)  # down, and no bar comes
    assert ticker.check() and rec.last(BROKER_DOWN) is True
    state.update(connected=True)
    assert ticker.check() and rec.last(BROKER_DOWN) is False
    rec.config = SimpleNamespace(check_interval_s=0.0)  # type: ignore[attr-defined]
    assert not ticker.check()  # only after bars now
    rec.config = SimpleNamespace(check_interval_s=30.0)  # type: ignore[attr-defined]
    e.controls_closed = True  # stopping: the broker stops on purpose
    state.update(started=False)
    n = len(rec.conditions)
    assert not ticker.check() and len(rec.conditions) == n
    assert not rec.events  # no bar: no daily summary, no risk events


async def test_the_ticker_runs_on_its_own_between_bars():
    import asyncio

    from tradingd.alert_rules import AlertTicker
    from tradingd.alerts import BROKER_DOWN

    checked = asyncio.Event()

    class Watching(Recorder):
        config = SimpleNamespace(check_interval_s=0.01)

        def condition(self, kind: str, key: str, failing: bool, **kw: Any) -> None:
            super().condition(kind, key, failing, **kw)
            if kind == BROKER_DOWN and failing:
                checked.set()

    rec = Watching()
    e = engine()
    e.broker = SimpleNamespace(status=lambda: {"started": True, "connected": False})
    ticker = AlertTicker(AlertRules(rec, e), rec)
    await ticker.start()
    try:
        await asyncio.wait_for(checked.wait(), timeout=10)
    finally:
        await ticker.stop()
    assert rec.last(BROKER_DOWN) is True


def test_a_database_that_is_down_is_alerted_and_a_failed_spool_is_critical():
    """The store spooling its writes (the database down) showed in /ready only: no alert
    kind existed for it. Degraded is a warning, a spool that cannot be replayed critical."""
    from tradingd.alerts import CRITICAL, DATABASE_DOWN, WARNING

    seen: list[tuple[bool, str]] = []

    class Severity(Recorder):
        def condition(self, kind: str, key: str, failing: bool, **kw: Any) -> None:
            super().condition(kind, key, failing, **kw)
            if kind == DATABASE_DOWN:
                seen.append((failing, kw["severity"]))

    rec = Severity()
    e = engine()
    status = {"ok": True, "state": "ok", "detail": "database writing"}
    e.store = SimpleNamespace(status=lambda: dict(status))
    rules = AlertRules(rec, e)
    rules.after_bar(T0, [])
    status.update(ok=False, state="degraded", detail="database unreachable; 3 batches spooled")
    rules.between_bars()
    status.update(state="failed", detail="replaying the spool failed")
    rules.after_bar(T0 + timedelta(days=1), [])
    status.update(ok=True, state="ok")
    rules.after_bar(T0 + timedelta(days=2), [])
    assert [f for f, _ in seen] == [False, True, True, False]
    assert seen[1][1] == WARNING and seen[2][1] == CRITICAL


def test_a_redis_outage_that_lasts_is_alerted_for_the_cache_and_the_publisher():
    """A 10-minute Redis outage sent no alert (no kind existed for it; only the log and
    /ready said it). One that lasts past the threshold is `redis_down`, per part, a warning;
    a short one is not; the in-process cache (no Redis) is not looked at."""
    from tradingd.alerts import WARNING

    REDIS_DOWN = "redis_down"  # the kind a webhook receives

    seen: list[tuple[str, bool, str]] = []

    class Severity(Recorder):
        def condition(self, kind: str, key: str, failing: bool, **kw: Any) -> None:
            super().condition(kind, key, failing, **kw)
            if kind == REDIS_DOWN:
                seen.append((key, failing, kw["severity"]))

    def since(seconds: float) -> str:
        return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()

    up = {"ok": True, "available": True, "down_since": None, "detail": "redis ok"}
    cache, pub = dict(up), dict(up)
    rec = Severity()
    e = engine()
    e.cache = SimpleNamespace(status=lambda: dict(cache))
    e.publisher = SimpleNamespace(status=lambda: dict(pub))
    rules = AlertRules(rec, e)
    rules.between_bars()
    down = {"ok": False, "available": False, "detail": "redis unavailable (SET: ...)"}
    cache.update(down, down_since=since(60))  # a restart's minute: no alert
    pub.update(down, down_since=since(60))
    rules.between_bars()
    assert rec.last(REDIS_DOWN) is False  # not yet long enough
    cache.update(down_since=since(10.6 * 60))  # the trial's outage, which sent nothing
    rules.after_bar(T0, [])
    assert ("cache", True, WARNING) in seen and ("publisher", True, WARNING) not in seen
    assert "SET" in rec.texts[(REDIS_DOWN, "cache")]
    cache.update(up)
    rules.between_bars()
    assert seen[-2:] == [("cache", False, WARNING), ("publisher", False, WARNING)]
    # Without Redis (a MemoryCache, the NullPublisher: no down_since) nothing is said.
    rec2 = Severity()
    e2 = engine()
    e2.cache = SimpleNamespace(status=lambda: {"ok": True, "detail": "memory"})
    AlertRules(rec2, e2).between_bars()
    assert rec2.last(REDIS_DOWN) is None


def test_intraday_daily_summaries_are_of_the_calendars_sessions():
    """The alert rules' day of an intraday live run was data.timezone's: on XTKS with the
    default New York zone a Tokyo session was split in two summaries at 13:00 JST."""
    from zoneinfo import ZoneInfo

    from tradingd.app import _alerting

    config = load_config([{"live": {"calendar": "XTKS", "bar": "5m"}}], env={})
    eng = SimpleNamespace(run=SimpleNamespace(run_id="r"), after_bar=[], extra_parts=[])
    _alerting(config, eng)  # type: ignore[arg-type]
    (after_bar,) = eng.after_bar
    rules = after_bar.__self__
    assert rules.tz == ZoneInfo("Asia/Tokyo") and not rules.daily_bars
    daily = load_config([{"live": {"calendar": "XTKS"}}], env={})
    eng = SimpleNamespace(run=SimpleNamespace(run_id="r"), after_bar=[], extra_parts=[])
    _alerting(daily, eng)  # type: ignore[arg-type]
    assert eng.after_bar[0].__self__.daily_bars  # daily bars: dated by their label


def test_a_symbol_the_broker_refuses_as_untradable_alerts_until_it_trades_again():
    """A symbol Alpaca no longer trades got a refused order at every bar and no alert: the
    broker's held symbols (`status()["untradable"]`) fire `untradable_asset` per symbol,
    resolved once the broker holds it no more (the firing ones read from the alerter, as
    after a restart)."""
    from tradingd.alerts import UNTRADABLE_ASSET

    class Firing(Recorder):
        def firing(self) -> list[dict[str, Any]]:
            on: dict[tuple[str, str], bool] = {}
            for kind, key, failing in self.conditions:
                on[(kind, key)] = failing
            return [{"kind": k, "key": key} for (k, key), f in on.items() if f]

    rec = Firing()
    e = engine()
    held = {"S00": 'alpaca: asset "S00" is not tradable (HTTP 422), since 2024-03-04'}
    e.broker = SimpleNamespace(status=lambda: {"untradable": dict(held)})
    rules = AlertRules(rec, e)
    rules.after_bar(T0, [])
    assert (UNTRADABLE_ASSET, "S00", True) in rec.conditions
    assert "is not tradable" in rec.texts[(UNTRADABLE_ASSET, "S00")]
    held.clear()
    rules.after_bar(T0 + timedelta(days=1), [])
    assert (UNTRADABLE_ASSET, "S00", False) in rec.conditions
    assert not [c for c in rec.firing() if c["kind"] == UNTRADABLE_ASSET]


def test_an_untradable_alert_from_before_a_restart_waits_for_the_brokers_assets():
    """A restarted broker's holds are known once it has read its assets (`assets_read`):
    resolved before (at a tick between its start and that read), the alert fired again
    when the symbol was held, paging the operator twice for one asset."""
    from tradingd.alerts import UNTRADABLE_ASSET

    class Restored(Recorder):
        def firing(self) -> list[dict[str, Any]]:
            on = {(UNTRADABLE_ASSET, "S00"): True}
            for kind, key, failing in self.conditions:
                on[(kind, key)] = failing
            return [{"kind": k, "key": key} for (k, key), f in on.items() if f]

    rec = Restored()
    e = engine()
    status: dict[str, Any] = {"untradable": {}, "assets_read": False}
    e.broker = SimpleNamespace(status=lambda: dict(status))
    rules = AlertRules(rec, e)
    rules.between_bars()
    assert (UNTRADABLE_ASSET, "S00", False) not in rec.conditions
    status["assets_read"] = True  # read: S00 trades again
    rules.between_bars()
    assert (UNTRADABLE_ASSET, "S00", False) in rec.conditions


def _daily_rules(calendar: str, bar: str) -> tuple[AlertRules, Recorder]:
    """The live daemon's alert rules for `calendar` and `bar` (`app._alerting`), recording."""
    from tradingd.app import _alerting

    config = load_config([{"live": {"calendar": calendar, "bar": bar}}], env={})
    eng = SimpleNamespace(run=SimpleNamespace(run_id="r"), after_bar=[], extra_parts=[])
    _alerting(config, eng)  # type: ignore[arg-type]
    rules = eng.after_bar[0].__self__
    rec = Recorder()
    rules.alerter, rules.engine = rec, engine()
    return rules, rec


def test_a_cme_session_opening_the_evening_before_has_one_daily_summary():
    """CMES's 2026-12-01 session opens 17:00 Chicago on Nov 30 (23:00 UTC): by the local
    date its bars were two days, and a "daily summary 2026-11-30" came at Chicago
    midnight, mid-session. The session's day is the clock's and the portfolio's
    (`core.sessions.session_date`): one summary, when the next session opens."""
    from tradingd.clock.calendar import ExchangeCalendar

    rules, rec = _daily_rules("CMES", "60m")
    cal = ExchangeCalendar("CMES", "60m", start="2026-11-02", end="2026-12-04")
    session = cal.bars_between(
        datetime(2026, 11, 30, 23, tzinfo=UTC), datetime(2026, 12, 1, 21, tzinfo=UTC)
    )
    assert session[0] == datetime(2026, 11, 30, 23, tzinfo=UTC) and len(session) > 12
    for t in session:  # through 00:00 Chicago (06:00 UTC)
        rules.after_bar(t, [])
    assert rec.events == []
    rules.after_bar(datetime(2026, 12, 1, 23, tzinfo=UTC), [])  # the next session's open
    assert rec.events == [(DAILY_SUMMARY, "2026-12-01")]


def test_an_xnys_intraday_daily_summary_is_still_its_new_york_date():
    """XNYS sessions open on their own date: a bar's day is its New York date, as before."""
    rules, rec = _daily_rules("XNYS", "5m")
    assert rules.evening_start is None
    rules.after_bar(datetime(2024, 3, 4, 14, 30, tzinfo=UTC), [])
    rules.after_bar(datetime(2024, 3, 4, 20, 55, tzinfo=UTC), [])  # 15:55 New York
    assert rec.events == []
    rules.after_bar(datetime(2024, 3, 5, 14, 30, tzinfo=UTC), [])
    assert rec.events == [(DAILY_SUMMARY, "2024-03-04")]
