from __future__ import annotations

import json
from datetime import UTC, datetime

import structlog

from tradingd.logs import configure_logging


def test_json_lines_for_services_and_console_for_people(capsys):
    try:
        configure_logging("info", "json")
        log = structlog.get_logger("t")
        log.info("order.filled", time=datetime(2020, 1, 2, tzinfo=UTC), qty=3)
        log.debug("hidden")  # below the level
        line = capsys.readouterr().err.strip()
        rec = json.loads(line)  # exactly one JSON object, debug filtered out
        assert rec["event"] == "order.filled" and rec["level"] == "info"
        assert rec["time"] == "2020-01-02T00:00:00+00:00"  # ISO, not a repr
        assert rec["timestamp"].endswith("Z")

        configure_logging("warning", "console")
        log = structlog.get_logger("t")
        log.info("quiet")
        log.warning("risk.halt", reason="drawdown")
        err = capsys.readouterr().err
        assert "quiet" not in err and "risk.halt" in err and "drawdown" in err
        assert not err.lstrip().startswith("{")
    finally:
        structlog.reset_defaults()
