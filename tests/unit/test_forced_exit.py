"""The third stop signal exits at once. Outside the event loop (a start-up step) it is
handled by the plain signal handler, which must still write the `tradingd.forced_exit` event
as one JSON line: every line of the daemon's standard error is JSON (a plain-text line here
failed tests/integration/test_signals.py whenever the third signal beat the event loop)."""

from __future__ import annotations

import json
import signal

import pytest


def test_a_forced_exit_outside_the_loop_is_one_json_line(monkeypatch, capfd):
    from tradingd import __main__ as cli

    def fake_exit(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    daemon = cli._Daemon([])
    daemon.phase = "loading data"
    for _ in range(cli._FORCE_AFTER - 1):
        daemon._plain(signal.SIGTERM, None)
    with pytest.raises(SystemExit) as exited:
        daemon._plain(signal.SIGTERM, None)
    assert exited.value.code == 128 + signal.SIGTERM
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "tradingd.forced_exit"
    assert event["exit_code"] == 128 + signal.SIGTERM and event["signals"] == 3
    assert event["phase"] == "loading data" and event["signal"] == "SIGTERM"
