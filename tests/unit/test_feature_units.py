"""Every catalogue feature states its units: `rsi_14` is RSI / 100 (TA-Lib's 0-100 oscillators
and percentages are divided by 100), while the README said only "RSI", and a quant's
`rsi_14 < 30` never fired. A new catalogue name without a stated unit fails here."""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradingd.core.errors import ConfigError
from tradingd.features.catalog import FEATURE_SETS, Catalog, feature_unit


def _builtin_names() -> tuple[set[str], set[str]]:
    """The names `Catalog._builtin` parses, read from its source: the patterns it matches
    with `re.fullmatch` and the names it compares `name` with (or looks up in a dict)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Catalog._builtin)))
    patterns: set[str] = set()
    literals: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "fullmatch"
            and isinstance(node.args[0], ast.Constant)
        ):
            patterns.add(node.args[0].value)
        elif isinstance(node, ast.Compare) and getattr(node.left, "id", None) == "name":
            for c in ast.walk(node.comparators[0]):
                if isinstance(c, ast.Constant) and isinstance(c.value, str):
                    literals.add(c.value)
        elif (
            isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", None) == "bar"
            and isinstance(node.value, ast.Dict)
        ):  # the bar fields: {"open": ..., ...}
            literals.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return patterns, literals


PATTERNS, LITERALS = _builtin_names()


def test_the_source_reading_finds_the_catalogue():
    assert {"close", "volume", "ret_1", "bb_position", "obv", "stoch_k"} <= LITERALS
    assert r"(rsi|roc|adx|mfi|natr|volume_roc)_(\d+)" in PATTERNS and len(PATTERNS) >= 14


@pytest.mark.parametrize("name", sorted(LITERALS))
def test_every_fixed_catalogue_name_states_its_units(name):
    Catalog().node(name)  # a catalogue name
    assert feature_unit(name), f"{name}: add its units to catalog.FEATURE_UNITS"


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_every_catalogue_pattern_states_its_units(pattern):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True))
    def check(name: str) -> None:
        try:
            Catalog().node(name)
        except (ConfigError, KeyError, RecursionError):
            return  # not a feature (e.g. lag_1_ of an unknown name)
        assert feature_unit(name), f"{name}: add its units to catalog.FEATURE_UNITS"

    check()


@pytest.mark.parametrize(
    "name,scale",
    [
        ("rsi_14", "RSI / 100"),
        ("adx_14", "ADX / 100"),
        ("mfi_14", "/ 100"),
        ("roc_10", "/ 100"),
        ("natr_14", "ATR / close"),
        ("volume_roc_10", "/ 100"),
        ("stoch_k", "/ 100"),
        ("lag_2_rsi_14", "RSI / 100"),
        ("cs_rank_rsi_14", "-1 to 1"),
    ],
)
def test_the_features_divided_by_100_say_so(name, scale):
    assert scale in feature_unit(name)


def test_tradingd_features_prints_each_features_units(capsys, monkeypatch):
    from tradingd.__main__ import main

    monkeypatch.delenv("TRADINGD_FEATURES__SET", raising=False)
    assert main(["features"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["units"]) == out["features"] == list(FEATURE_SETS["default_v1"])
    assert all(out["units"].values())
    assert out["units"]["rsi_14"].startswith("RSI / 100")
