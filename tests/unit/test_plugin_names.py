"""A configured plugin's `name` is its own (found by the plugin-author trial).

A copy of `momentum.py`, registered under another name, that kept `self.name = "momentum"`
ran beside the built-in `momentum`: its failure was reported as "plugin 'momentum' failed",
and the verdict counts, stored signal records and lookahead check mixed the two. The
start-up check (`tradingd config`, and every command before it works) refuses it, naming
both; the same plugin configured twice keeps working (`name#2`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tradingd.__main__ import main
from tradingd.app import build_pipeline
from tradingd.config import load_config
from tradingd.core.errors import ConfigError
from tradingd.engine import plugins as registry
from tradingd.engine.plugins import check_names, instance_keys
from tradingd.preflight import load_pipeline
from tradingd_plugins.risk.drawdown import DrawdownGuard
from tradingd_plugins.signals.momentum import Momentum


class MyMomentum(Momentum):
    """The copy: another class, the built-in's name kept."""


class Unnamed(Momentum):
    """A plugin that leaves `name` to its registration."""

    def __init__(self, config: Any, symbols: tuple[str, ...]) -> None:
        super().__init__(config, symbols)
        del self.name


class _EP:
    def __init__(self, name: str, cls: type) -> None:
        self.name, self._cls, self.value = name, cls, f"test:{cls.__name__}"

    def load(self) -> type:
        return self._cls


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = {
        **registry.available(),
        "mymom": _EP("mymom", MyMomentum),
        "unnamed": _EP("unnamed", Unnamed),
        "guard_copy": _EP("guard_copy", DrawdownGuard),
    }
    monkeypatch.setattr(registry, "available", lambda: eps)


def _config(tmp_path: Path, signals: list[str], risk: list[str] = ("max_position",)) -> Any:
    return load_config(
        [
            {
                "signals": [{"name": s} for s in signals],
                "sizing": {"name": "equal_weight"},
                "risk": [{"name": r} for r in risk],
                "log": {"audit_dir": str(tmp_path / "audit")},
                "storage": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            }
        ],
        env={},
    )


def _built(config: Any) -> Any:
    """The Python API's path (`tradingd.backtest`, `build_engine`): it did not check."""
    return build_pipeline(config, ("AAA", "BBB"))


# The start-up check's loader, and the one a run builds its pipeline with.
LOADERS = pytest.mark.parametrize("load", [load_pipeline, _built], ids=["preflight", "app"])


@LOADERS
def test_a_copy_keeping_another_plugins_name_is_refused_naming_both(tmp_path, load):
    config = _config(tmp_path, ["momentum", "mymom"])
    with pytest.raises(ConfigError) as e:
        load(config)
    text = str(e.value)
    assert text.startswith("signals[1].name = 'mymom' and signals[0].name = 'momentum'")
    assert "both go by the name 'momentum'" in text
    assert "self.name = 'mymom'" in text  # the copy is told what to do, not the built-in


@LOADERS
def test_across_kinds_too(tmp_path, load):
    # A risk plugin registered as `guard_copy` whose name is the built-in drawdown guard's.
    config = _config(tmp_path, ["momentum"], ["drawdown_guard", "guard_copy"])
    with pytest.raises(ConfigError, match=r"^risk\[1\]\.name = 'guard_copy' and risk\[0\]"):
        load(config)


@pytest.mark.parametrize(
    ("signals", "risk"),
    [
        (["momentum", "momentum"], ["max_position"]),  # the same plugin twice
        (["mymom"], ["max_position"]),  # the copy alone: its name is no one else's
        (["momentum", "unnamed"], ["max_position"]),  # no name: the registered one
        (["momentum"], ["drawdown_guard", "drawdown_guard"]),  # two guards: `name#2`
    ],
)
@LOADERS
def test_names_that_are_their_own_pass(tmp_path, signals, risk, load):
    pipeline = load(_config(tmp_path, signals, risk))
    keys = [k for k, _ in instance_keys(pipeline.plugins())]
    assert len(set(keys)) == len(keys)


def test_a_name_that_is_another_instances_key_is_refused():
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    configured = [
        ("risk[0]", "drawdown_guard", Named("drawdown_guard")),
        ("risk[1]", "drawdown_guard", Named("drawdown_guard")),
        ("risk[2]", "odd", Named("drawdown_guard#2")),
    ]
    with pytest.raises(ConfigError, match=r"^risk\[2\]\.name = 'odd' and risk\[1\]"):
        check_names(configured)


def test_tradingd_config_refuses_it(tmp_path, capsys):
    cfg = tmp_path / "clash.toml"
    cfg.write_text(
        f"""
[[signals]]
name = "momentum"
[[signals]]
name = "mymom"
[storage]
url = "sqlite:///{tmp_path / "store.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
"""
    )
    assert main(["config", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "error: signals[1].name = 'mymom' and signals[0].name = 'momentum'" in err
