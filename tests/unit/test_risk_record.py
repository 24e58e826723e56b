"""RiskRecord: every verdict counted and logged at debug (one line each), restrictions
opened and lifted at warning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from tradingd.core.types import RiskVerdict
from tradingd.engine.accounting import RiskRecord

T = datetime(2020, 1, 2, tzinfo=UTC)


def test_each_verdict_is_counted_and_logged_and_a_restriction_opens_and_lifts():
    rec = RiskRecord()
    rejects = [
        RiskVerdict(
            "max_open_positions", f"S{i}", "reject", "max open positions 10 reached", 0.05, 0.0
        )
        for i in range(3)
    ]
    halt = RiskVerdict("drawdown_guard", None, "halt", "drawdown 21%", rule="max_drawdown")
    with capture_logs() as logs:
        rec.on_bar(T, [*rejects, halt])
        rec.on_bar(T + timedelta(days=1), [])
    lines = [e for e in logs if e["event"] == "risk.verdict"]
    assert [(e["log_level"], e["symbol"], e["action"]) for e in lines] == [
        ("debug", "S0", "reject"),
        ("debug", "S1", "reject"),
        ("debug", "S2", "reject"),
        ("debug", None, "halt"),
    ]
    assert lines[3]["rule"] == "max_drawdown" and lines[0]["reason"] == rejects[0].reason
    assert rec.counts == {
        "max_open_positions/max_open_positions": 3,
        "drawdown_guard/max_drawdown": 1,
    }
    events = [(e["event"], e["log_level"]) for e in logs if e["event"] != "risk.verdict"]
    assert events == [
        ("risk.restriction_started", "warning"),
        ("risk.restriction_lifted", "warning"),
    ]
    assert [(p.rule, p.bars) for p in rec.periods] == [("max_drawdown", 1)]


def test_at_info_level_no_verdict_line_is_made_and_every_verdict_is_counted():
    import logging

    import structlog

    before = structlog.get_config()
    try:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        rec = RiskRecord()
        rejects = [
            RiskVerdict("max_position", f"S{i}", "clip", "too big", 0.2, 0.1) for i in range(5)
        ]
        with capture_logs() as logs:
            rec.on_bar(T, rejects)
            rec.on_bar(T + timedelta(days=1), rejects[:2])
        assert logs == []
        assert rec.counts == {"max_position/max_position": 7}
    finally:
        structlog.configure(**before)


def test_a_restored_record_continues_its_counts_and_the_restriction_in_force():
    """A live restart built a new record: the counts restarted from 0 (the summary's
    `verdicts` total, restored, no longer matched them), and a halt in force since before
    the restart was reported from the first bar after it, and said to start again. The
    record's state goes through the checkpoint's JSON and continues."""
    import json

    from tradingd.storage.buffered import to_json

    rec = RiskRecord()
    halt = RiskVerdict("drawdown_guard", None, "halt", "drawdown 21%", rule="max_drawdown")
    loss = RiskVerdict("drawdown_guard", None, "halt", "daily loss 6%", rule="daily_loss_limit")
    clip = RiskVerdict("max_position", "S0", "clip", "too big", 0.2, 0.1)
    rec.on_bar(T, [loss, clip])
    rec.on_bar(T + timedelta(days=1), [halt])  # the daily loss lifts, the drawdown starts
    rec.on_bar(T + timedelta(days=2), [halt, clip])
    assert rec.halting

    again = RiskRecord()
    again.restore(json.loads(to_json(rec.state())))
    assert again.halting
    with capture_logs() as logs:
        again.on_bar(T + timedelta(days=3), [halt])
        again.finish(T + timedelta(days=3))
    assert [e["event"] for e in logs if e["event"].startswith("risk.restriction")] == [
        "risk.restriction_in_force_at_end"
    ]
    assert again.counts == {
        "drawdown_guard/daily_loss_limit": 1,
        "drawdown_guard/max_drawdown": 3,
        "max_position/max_position": 2,
    }
    assert [(p.rule, p.start, p.end, p.bars) for p in again.periods] == [
        ("daily_loss_limit", T, T, 1),
        ("max_drawdown", T + timedelta(days=1), T + timedelta(days=3), 3),
    ]
    assert not again.halting


def test_a_record_restored_from_nothing_is_empty():
    """A checkpoint written before the record was kept in it: the record starts empty."""
    rec = RiskRecord()
    rec.restore({})
    assert rec.counts == {} and rec.periods == [] and not rec.halting
