"""`tradingd run` refuses a recorded feed on the real-time clock (live.bars_per_second = 0,
the defaults): it warmed up, then waited for bars after now that stored history never has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from tradingd.__main__ import EX_CONFIG, main
from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.preflight import check_config

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = (
    "feed.source = 'recorded' replays stored history: set live.bars_per_second > 0 "
    "(config/demo.toml: 20), or a vendor feed for real time"
)


def small(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "rt.toml"
    p.write_text(f"""
[run]
name = "rtrecorded"
start = "2017-01-01"
[storage]
url = "sqlite:///{tmp_path / "rt.db"}"
[health]
port = 0
[log]
audit_dir = "{tmp_path / "audit"}"
{extra}
""")
    return p


class Tripwire(Exception):
    """Raised by a step the check must prevent from ever running."""


def test_run_refuses_a_recorded_feed_in_real_time_before_anything_starts(
    tmp_path, monkeypatch, capsys
):
    import tradingd.app

    def trip(*_a, **_k):
        raise Tripwire("the check let the daemon load its data")

    for name in ("load_data", "import_bars", "build_engine"):
        monkeypatch.setattr(tradingd.app, name, trip)
    monkeypatch.chdir(tmp_path)
    cfg = small(tmp_path)
    saved = structlog.get_config()  # `tradingd run` configures logging in-process
    try:
        code = main(["run", "-c", str(ROOT / "config/default.toml"), "-c", str(cfg)])
    finally:
        structlog.configure(**saved)
    assert code == EX_CONFIG  # a configuration mistake: not restarted by systemd
    assert MESSAGE in capsys.readouterr().err
    assert not (tmp_path / "rt.db").exists()  # no store, no lock: refused at the check


def test_only_run_is_refused(tmp_path):
    config = load_config([ROOT / "config/default.toml", small(tmp_path)], env={})
    check_config(config, "backtest")  # the same defaults are a backtest's
    with pytest.raises(ConfigError, match=r"set live\.bars_per_second > 0"):
        check_config(config, "run")


@pytest.mark.parametrize("overlay", ["demo.toml", "paper.toml"])
def test_the_readmes_daemon_commands_pass(overlay, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # their var/ folders are made here, not in the checkout
    if overlay == "paper.toml":  # "Paper trading for real" exports the account's keys first
        for k, v in KEYS.items():
            monkeypatch.setenv(k, v)
    config = load_config([ROOT / "config/default.toml", ROOT / "config" / overlay], env={})
    check_config(config, "run")


KEYS = {"APCA_API_KEY_ID": "AKDEMOKEY", "APCA_API_SECRET_KEY": "demo-secret-never-used"}


def test_the_demo_with_alpaca_keys_in_the_environment_trades_on_the_simulated_broker(
    tmp_path, monkeypatch
):
    """The README tells paper traders to export their keys; the demo (2017 bars at 20 a
    second) then picked the Alpaca account (`broker.kind = auto`) and sent 2017's decisions
    to it as real orders, without a word."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine
    from tradingd.brokers.simulated import SimulatedBroker

    monkeypatch.chdir(tmp_path)
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    demo = load_config([ROOT / "config/default.toml", ROOT / "config/demo.toml"], env=KEYS)
    assert demo.broker.kind == "simulated"
    check_config(demo, "run")
    # And a demo-like overlay that leaves broker.kind = auto: simulated too, said as a warning.
    auto = load_config(
        [ROOT / "config/default.toml", small(tmp_path, "[live]\nbars_per_second = 20.0")],
        env=KEYS,
    )
    assert auto.broker.kind == "auto"
    with capture_logs() as logs:
        engine = build_engine(auto, "live")
    assert isinstance(engine.broker, SimulatedBroker)
    said = [e for e in logs if e["event"] == "broker.simulated"]
    assert said and said[0]["log_level"] == "warning"
    assert "bars_per_second" in said[0]["reason"]


def test_alpaca_on_an_account_with_an_accelerated_clock_is_refused(tmp_path, monkeypatch):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    cfg = small(tmp_path, '[live]\nbars_per_second = 20.0\n[broker]\nkind = "alpaca"')
    config = load_config([ROOT / "config/default.toml", cfg], env=KEYS)
    with pytest.raises(ConfigError, match=r"real order.*broker\.kind = simulated") as e:
        check_config(config, "run")
    assert "paper-api.alpaca.markets" in str(e.value)

    def with_base(url: str, name: str) -> Any:
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(
            small(tmp_path).read_text()
            + '[live]\nbars_per_second = 20.0\n[broker]\nkind = "alpaca"\n'
            + f'[broker.alpaca]\nbase_url = "{url}"\n'
        )
        return load_config([ROOT / "config/default.toml", cfg], env=KEYS)

    # Alpaca's host written with a trailing dot, a proxy in front of it, credentials in the
    # URL (masked in the message): refused. Only a loopback test server is allowed.
    for i, url in enumerate(
        [
            "https://paper-api.alpaca.markets./",
            "https://alpaca-gw.corp.example",
            "https://u:pw@gw.example",
        ]
    ):
        with pytest.raises(ConfigError, match="real order"):
            check_config(with_base(url, f"refused{i}"), "run")
    with pytest.raises(ConfigError) as e:
        check_config(with_base("https://u:pw@gw.example", "masked"), "run")
    assert "pw" not in str(e.value)
    loopback = [
        "http://127.0.0.1:9",
        "http://localhost:9",
        "http://[::1]:9",
        "http://[::ffff:127.0.0.1]:9",
    ]
    for i, url in enumerate(loopback):
        check_config(with_base(url, f"loopback{i}"), "run")


def test_the_demo_says_its_bars_are_in_the_models_fitted_period(tmp_path, monkeypatch):
    """The demo replays 2017 with the shipped model, validated through 2018-12-28: a
    backtest says `backtest.in_sample` of such bars, the live replay said nothing."""
    from structlog.testing import capture_logs

    from tradingd.app import build_engine

    monkeypatch.chdir(tmp_path)
    demo = load_config([ROOT / "config/default.toml", ROOT / "config/demo.toml"], env={})
    with capture_logs() as logs:
        engine = build_engine(demo, "live")
    (said,) = [e for e in logs if e["event"] == "replay.in_sample"]
    card = engine.pipeline.signals[0][0].pair.card.data
    assert said["log_level"] == "warning" and said["plugin"] == "ml_ensemble"
    # to the last validation window's target bar: the horizon's weekdays after its end
    import numpy as np

    last = np.busday_offset(
        np.datetime64(card["validation_range"][1], "D"), card["target"]["horizon_bars"]
    ).astype(object)
    assert said["fitted_on"] == [card["train_range"][0], last.isoformat()]
    # Every replayed bar from 2017-01-01 to that date, of all from then on.
    from datetime import date

    from tradingd.app import load_data

    days = [t.date() for t in load_data(demo).datetimes() if t.date() >= date(2017, 1, 1)]
    assert (said["bars"], said["of"]) == (sum(d <= last for d in days), len(days))
    assert said["bars"] > 0
    # A window after the model's last fitted date is not in-sample: nothing said. (The
    # data's last bar, 2018-12-31, after a model validated to 2018-12-27: fitted to 12-28.)
    import shutil

    from tradingd_plugins.signals import ml_ensemble

    model = tmp_path / "model"
    shutil.copytree(ml_ensemble.default_model_dir(), model)
    edited = json.loads((model / "card.json").read_text())
    edited["validation_range"][1] = "2018-12-27"
    (model / "card.json").write_text(json.dumps(edited))
    monkeypatch.setattr(ml_ensemble, "default_model_dir", lambda: model)
    later = tmp_path / "later.toml"
    later.write_text('[run]\nstart = "2018-12-31"\n')
    with capture_logs() as logs:
        build_engine(
            load_config([ROOT / "config/default.toml", ROOT / "config/demo.toml", later], env={}),
            "live",
        )
    assert not [e for e in logs if e["event"] == "replay.in_sample"]
