"""`storage.spool_dir` on a store that never spools (SQLite) is said at start, not ignored
without a word: the demo configuration with TRADINGD_STORAGE__SPOOL_DIR naming a file ran on
as if it were not set."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tradingd.config import load_config
from tradingd.preflight import check_config

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.toml"


def _demo(tmp_path: Path, **env: str):
    overrides = {
        "log": {"audit_dir": str(tmp_path / "audit")},
        "storage": {"url": f"sqlite:///{tmp_path / 'demo.db'}"},
    }
    return load_config([DEMO, overrides], env=env)


def _said(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "storage.spool_dir_unused"]


@pytest.mark.parametrize("command", ["run", "config"])
def test_a_spool_dir_on_sqlite_is_warned_once_naming_it_and_why(tmp_path, command):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    config = _demo(tmp_path, TRADINGD_STORAGE__SPOOL_DIR=str(not_a_folder))
    with capture_logs() as logs:
        check_config(config, command)
    (line,) = _said(logs)
    assert line["log_level"] == "warning"
    assert line["spool_dir"] == str(not_a_folder)
    assert line["setting"] == "storage.spool_dir (TRADINGD_STORAGE__SPOOL_DIR)"
    assert line["store"] == config.storage.url
    assert "PostgreSQL" in line["rule"] and "not used" in line["rule"]


def test_no_word_without_a_spool_dir_or_for_a_backtest(tmp_path):
    with capture_logs() as logs:
        check_config(_demo(tmp_path), "run")
        # A backtest never spools, on any store: the setting is a live run's.
        config = _demo(tmp_path, TRADINGD_STORAGE__SPOOL_DIR=str(tmp_path / "spool"))
        check_config(config, "backtest", output_dir=tmp_path / "out")
    assert _said(logs) == []


def test_no_word_on_postgresql(tmp_path):
    config = load_config(
        [
            DEMO,
            {
                "log": {"audit_dir": str(tmp_path / "audit")},
                "storage": {
                    "url": "postgresql://127.0.0.1:5432/test",
                    "spool_dir": str(tmp_path / "spool"),
                },
            },
        ],
        env={},
    )
    with capture_logs() as logs:
        check_config(config, "config")
    assert _said(logs) == []
