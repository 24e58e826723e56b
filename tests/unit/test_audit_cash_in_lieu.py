"""A split's cash in lieu in the audit log: one line with its bar's time, dropped with that
bar's records when a resumed run books the bar again (`truncate_after`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tradingd.audit import AuditLog

T = datetime(2026, 3, 2, 21, tzinfo=UTC)


def _lines(path):  # type: ignore[no-untyped-def]
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cash_in_lieu_is_a_line_kept_or_dropped_with_its_bar(tmp_path):
    a = AuditLog(tmp_path, "r", flush_interval_s=0.0)
    (tmp_path / "r.jsonl.live").touch()  # a live run's log
    a.cash_in_lieu(T, "S00", 0.9, 12.5, 11.25)
    a.cash_in_lieu(T + timedelta(days=1), "S01", 0.5, 10.0, 5.0)
    a.flush(force=True)
    [first, second] = _lines(a.path)
    assert first == {
        "event": "cash_in_lieu",
        "time": T.isoformat(),
        "symbol": "S00",
        "shares": 0.9,
        "price": 12.5,
        "cash": 11.25,
    }
    assert second["symbol"] == "S01"
    assert a.truncate_after(T) == 1
    a.close()
    assert [r["symbol"] for r in _lines(a.path)] == ["S00"]
