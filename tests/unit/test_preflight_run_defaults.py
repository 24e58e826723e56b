"""The start-up check builds the plugins as the run does, run defaults included: built
without `periods_per_year` (what a live run on intraday bars or another calendar gives a
plugin), a plugin passed the check and failed the run, or failed the check of a run that
works."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tradingd.app import build_pipeline
from tradingd.config import Config, load_config
from tradingd.core.errors import ConfigError, TradingdError
from tradingd.engine import plugins as registry
from tradingd.preflight import check_config

SYMS = ("AAA", "BBB")


@dataclasses.dataclass(frozen=True)
class _CappedConfig:
    periods_per_year: float = 252.0


class _Capped:
    """Refuses more than 10,000 periods a year: fine on daily bars, not on 5-minute ones."""

    kind = "sizing"
    Config = _CappedConfig

    def __init__(self, config: _CappedConfig, symbols: tuple[str, ...]) -> None:
        if config.periods_per_year > 10_000:
            raise ValueError(f"periods_per_year must be <= 10000, got {config.periods_per_year}")
        self.config = config

    def required_features(self) -> tuple[str, ...]:
        return ()

    def size(self, score: np.ndarray, ctx: Any) -> np.ndarray:
        return np.zeros(len(score))


@dataclasses.dataclass(frozen=True)
class _NeedsRunConfig:
    periods_per_year: float  # no default: only the run supplies it


class _NeedsRun(_Capped):
    Config = _NeedsRunConfig  # type: ignore[assignment]

    def __init__(self, config: _NeedsRunConfig, symbols: tuple[str, ...]) -> None:
        self.config = config


class _EP:
    def __init__(self, name: str, cls: type) -> None:
        self.name, self._cls, self.value = name, cls, f"test:{cls.__name__}"

    def load(self) -> type:
        return self._cls


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = {
        **registry.available(),
        "capped": _EP("capped", _Capped),
        "needs_run": _EP("needs_run", _NeedsRun),
    }
    monkeypatch.setattr(registry, "available", lambda: eps)


def _config(tmp_path: Path, sizing: str, bar: str, calendar: str = "XNYS") -> Config:
    return load_config(
        [
            {
                "live": {"bar": bar, "calendar": calendar, "bars_per_second": 20.0},
                "sizing": {"name": sizing},
                "log": {"audit_dir": str(tmp_path / "audit")},
                "storage": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            }
        ],
        env={},
    )


def _verdict(call: Any) -> str | None:
    """None when `call()` passes, else the error's text."""
    try:
        call()
    except TradingdError as exc:
        return str(exc)
    return None


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(
    ("sizing", "bar", "calendar"),
    [
        ("capped", "5m", "XNYS"),  # the run refuses: 252 * 78 periods
        ("capped", "1d", "XNYS"),  # both pass
        ("needs_run", "5m", "XNYS"),  # only the run's default makes it whole
        ("needs_run", "1d", "24/7"),  # 365 sessions a year on a 24/7 calendar
        ("needs_run", "1d", "XNYS"),  # no run default on daily XNYS bars: both refuse
    ],
)
def test_the_live_checks_verdict_is_the_live_runs(
    tmp_path: Path, sizing: str, bar: str, calendar: str
) -> None:
    config = _config(tmp_path, sizing, bar, calendar)
    run = _verdict(lambda: build_pipeline(config, SYMS, config.live.bar))  # as build_engine
    check = _verdict(lambda: check_config(config, "run"))
    assert (check is None) == (run is None), (check, run)
    if run is not None:
        assert check == run


@pytest.mark.usefixtures("registered")
def test_the_config_command_refuses_what_a_live_run_of_it_would(tmp_path: Path) -> None:
    config = _config(tmp_path, "capped", "5m")
    with pytest.raises(ConfigError, match=r"sizing.params: periods_per_year must be <= 10000"):
        check_config(config, "config")
    # A backtest of daily data is built with daily defaults, and passes as its run would.
    check_config(config, "backtest", output_dir=tmp_path / "out")
    build_pipeline(config, SYMS, "1d")


def test_which_bars_each_command_checks(tmp_path: Path) -> None:
    from tradingd.preflight import run_bars

    config = _config(tmp_path, "equal_weight", "15m")
    assert run_bars(config, "run") == ("15m",)
    assert run_bars(config, "replay-check") == ("15m",)
    assert run_bars(config, "backtest") == ("1d",)
    assert run_bars(config, "config") == ("1d", "15m")
    daily = _config(tmp_path, "equal_weight", "1d")
    assert run_bars(daily, "config") == ("1d",)
