from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tradingd.config import Config, CostsConfig, load_config
from tradingd.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_toml_equals_builtin_defaults():
    # The documented file and the code must not drift apart.
    assert load_config([ROOT / "config" / "default.toml"], env={}) == Config()


def test_specification_defaults():
    c = Config()
    assert c.costs.commission_pct == 0.001
    assert c.costs.slippage_pct == 0.0005
    risk = {s.name: s.params for s in c.risk}
    assert risk["max_position"]["max_position_pct"] == 0.05
    assert risk["max_open_positions"]["max_open_positions"] == 10
    assert risk["drawdown_guard"] == {"max_drawdown_pct": 0.20, "daily_loss_limit_pct": 0.05}
    assert (c.orders.stop_loss_pct, c.orders.take_profit_pct) == (0.02, 0.04)
    assert c.cache.expiry_s == 3600


@pytest.mark.parametrize("name", ["backtest.toml", "paper.toml", "demo.toml", "ml.toml"])
def test_shipped_overlays_load(name):
    c = load_config([ROOT / "config" / "default.toml", ROOT / "config" / name], env={})
    assert c.run.name != "default"


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[costs]\ncomission_pct = 0.002\n")
    with pytest.raises(ConfigError) as e:
        load_config([p], env={})
    msg = str(e.value)
    assert "costs.comission_pct" in msg
    assert "commission_pct" in msg and "slippage_pct" in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[cost]\ncommission_pct = 0.002\n")
    with pytest.raises(ConfigError, match=r"cost.*valid keys:.*costs"):
        load_config([p], env={})


def test_bad_type_and_bad_value(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[costs]\ncommission_pct = "a lot"\n')
    with pytest.raises(ConfigError, match=r"costs.commission_pct must be a number"):
        load_config([p], env={})
    p.write_text("[costs]\ncommission_pct = -0.1\n")
    with pytest.raises(ConfigError, match=r"costs.commission_pct = -0.1 is invalid"):
        load_config([p], env={})


def test_bad_choice_lists_choices(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\nsource = "excel"\n')
    with pytest.raises(ConfigError, match=r"data.source.*bundled, csv, parquet"):
        load_config([p], env={})


def test_env_overrides_and_later_files_win(tmp_path):
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text("[costs]\ncommission_pct = 0.002\nslippage_pct = 0.001\n")
    b.write_text("[costs]\ncommission_pct = 0.003\n")
    c = load_config(
        [a, b],
        env={
            "TRADINGD_COSTS__SLIPPAGE_PCT": "0.0007",
            "DATABASE_URL": "postgresql://x@h/db",
            "REDIS_URL": "redis://h:6379/1",
        },
    )
    assert c.costs == dataclasses.replace(CostsConfig(), commission_pct=0.003, slippage_pct=0.0007)
    assert c.storage.url == "postgresql://x@h/db"
    assert c.cache.url == "redis://h:6379/1"


def test_env_unknown_section_and_key():
    with pytest.raises(ConfigError, match=r"TRADINGD_COST__X.*valid sections"):
        load_config([], env={"TRADINGD_COST__X": "1"})
    with pytest.raises(ConfigError, match=r"costs.x"):
        load_config([], env={"TRADINGD_COSTS__X": "1"})


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not found"):
        load_config([tmp_path / "nope.toml"], env={})
    p = tmp_path / "bad.toml"
    p.write_text("[costs\n")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config([p], env={})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().costs.commission_pct = 1.0  # type: ignore[misc]


def test_an_overlay_naming_another_sizing_plugin_drops_the_previous_ones_params(tmp_path):
    """`[sizing] name = "equal_weight"` over the default's kelly_garch kept kelly_garch's
    params: refused as unknown keys the user never wrote (or, where the new plugin has a key
    of that name, applied silently). The same plugin named again still merges its params."""
    swap = tmp_path / "swap.toml"
    swap.write_text('[sizing]\nname = "equal_weight"\n')
    c = load_config([ROOT / "config" / "default.toml", swap], env={})
    assert c.sizing.name == "equal_weight" and c.sizing.params == {}
    same = tmp_path / "same.toml"
    same.write_text('[sizing]\nname = "kelly_garch"\nweight = 1.0\n')
    c = load_config([ROOT / "config" / "default.toml", same], env={})
    assert c.sizing.params["kelly_multiplier"] == 0.5  # kept: the same plugin
    only_params = tmp_path / "params.toml"
    only_params.write_text("[sizing.params]\ntarget_vol = 0.1\n")
    c = load_config([ROOT / "config" / "default.toml", only_params], env={})
    assert c.sizing.name == "kelly_garch" and c.sizing.params == {"target_vol": 0.1}


def test_onnxruntime_telemetry_is_off_unless_the_operator_says_otherwise():
    """onnxruntime's Linux telemetry looked up and called mobile.events.data.microsoft.com
    from the demo (seen with strace); its opt-out must be set before it starts."""
    import subprocess
    import sys

    code = "import os, tradingd; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr
    env["ORT_DISABLE_TELEMETRY"] = "0"  # the operator's choice stands
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "0", out.stderr
