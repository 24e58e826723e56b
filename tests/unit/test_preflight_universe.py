"""Preflight instantiates the plugins before the data (and so the universe) is known: with
no configured symbols they get an empty universe, never a made-up symbol that their own
checks then report (sector_exposure warned "PREFLIGHT has no sector" on every new user's
first backtest of the default config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.preflight import load_pipeline

CONFIG = """
[data]
source = "bundled"
[[signals]]
name = "momentum"
[sizing]
name = "equal_weight"
[[risk]]
name = "sector_exposure"
params = {{ max_sector_pct = {pct}, sectors_csv = "" }}
"""


def test_no_symbol_is_invented_for_the_plugins(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(pct=0.2))
    config = load_config([cfg], env={})
    with capture_logs() as logs:
        pipeline = load_pipeline(config)
    (risk,) = pipeline.risks
    assert risk.name == "sector_exposure"
    assert not [e for e in logs if e["event"] == "risk.sector_unmapped"], logs
    assert all("PREFLIGHT" not in repr(e) for e in logs), logs


def test_bad_parameters_still_fail_without_a_universe(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(pct=-1.0))
    config = load_config([cfg], env={})
    with pytest.raises(ConfigError, match=r"risk\[0\].params: max_sector_pct"):
        load_pipeline(config)
