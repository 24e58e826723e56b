"""Which broker a live run on a vendor feed trades: `broker.kind` decides, whatever keys the
environment holds; missing or misspelt keys are said before anything trades."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tradingd.app import build_engine
from tradingd.brokers.simulated import SimulatedBroker
from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.preflight import check_config

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"APCA_API_KEY_ID": "AKTESTKEY", "APCA_API_SECRET_KEY": "test-secret-never-used"}


def live_config(tmp_path: Path, broker: str, env: dict[str, str]):
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[run]
name = "brokerchoice"
[data]
symbols = ["AAA", "BBB"]
[feed]
source = "yahoo"
[feed.yahoo]
base_url = "http://127.0.0.1:9/"
[broker]
kind = "{broker}"
[storage]
url = "sqlite:///{tmp_path / "run.db"}"
[health]
port = 0
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    return load_config([ROOT / "config/default.toml", cfg], env=env)


def without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(("APCA_", "ALPACA_")):
            monkeypatch.delenv(name)


def test_simulated_on_a_vendor_feed_never_uses_the_keys_in_the_environment(tmp_path, monkeypatch):
    """Only the recorded feed's path read `broker.kind`: on Yahoo's bars, a run set to the
    simulated broker (a dry run of a strategy on live data) sent its orders to the Alpaca
    account of the keys in the shell or the unit's env file."""
    monkeypatch.chdir(tmp_path)
    without_keys(monkeypatch)
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    config = live_config(tmp_path, "simulated", KEYS)
    engine = build_engine(config, "live")
    assert isinstance(engine.broker, SimulatedBroker)


def test_auto_without_keys_warns_and_names_a_misspelt_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    without_keys(monkeypatch)
    monkeypatch.setenv("APCA_API_KEY", "AKMISSPELT")  # tradingd reads APCA_API_KEY_ID
    monkeypatch.setenv("APCA_API_BASE_URL", "https://paper-api.alpaca.markets")  # not a key
    config = live_config(tmp_path, "auto", {})
    with capture_logs() as logs:
        engine = build_engine(config, "live")
    assert isinstance(engine.broker, SimulatedBroker)
    (said,) = [e for e in logs if e["event"] == "broker.simulated"]
    assert said["log_level"] == "warning"
    assert said["look_alike_variables"] == ["APCA_API_KEY"]
    assert "AKMISSPELT" not in repr(logs)


def test_alpaca_without_keys_is_refused_by_the_check_and_names_a_look_alike(tmp_path, monkeypatch):
    """Found only mid-start before, after the store was opened and the health server
    started. `tradingd config` warns instead: it is often run where the keys are not (an
    operator's shell; the unit reads them from its env file)."""
    monkeypatch.chdir(tmp_path)
    without_keys(monkeypatch)
    monkeypatch.setenv("ALPACA_SECRET_KEY", "misspelt-secret")
    config = live_config(tmp_path, "alpaca", {})
    with pytest.raises(ConfigError, match=r"APCA_API_KEY_ID.*ALPACA_SECRET_KEY is set") as e:
        check_config(config, "run")
    assert "misspelt-secret" not in str(e.value)
    assert not (tmp_path / "run.db").exists()
    with capture_logs() as logs:
        check_config(config, "config")
    (said,) = [e for e in logs if e["event"] == "config.broker_keys_missing"]
    assert said["log_level"] == "warning" and "ALPACA_SECRET_KEY is set" in said["detail"]
    assert "misspelt-secret" not in repr(logs)
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    with capture_logs() as logs:
        check_config(config, "run")  # with the keys: no error
        check_config(config, "config")
    assert not [e for e in logs if e["event"] == "config.broker_keys_missing"]


def test_the_shipped_paper_config_refuses_a_start_without_keys(tmp_path, monkeypatch):
    """Sandbox trial: the systemd unit (and the image) run config/paper.toml and promise exit
    78 for missing Alpaca keys, but paper.toml left broker.kind at "auto": without keys the
    daemon traded the simulated broker, READY and healthy, with only a warning."""
    from tradingd.__main__ import EX_CONFIG, exit_code

    monkeypatch.chdir(tmp_path)
    without_keys(monkeypatch)
    config = load_config([ROOT / "config/default.toml", ROOT / "config/paper.toml"], env={})
    assert config.broker.kind == "alpaca"
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID") as refused:
        check_config(config, "run")
    assert exit_code(refused.value, "run") == EX_CONFIG
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    check_config(config, "run")  # the README's "Paper trading for real": keys exported
