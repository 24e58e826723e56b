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
