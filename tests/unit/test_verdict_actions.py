"""A risk verdict's `action` is one the engine knows: a kill switch that said "halted" (not
"halt") was counted in the summary's verdicts and never stopped an entry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tradingd.core.errors import PluginFault
from tradingd.core.types import RiskVerdict
from tradingd.engine.accounting import BLOCKING, RESTRICTING
from tradingd.engine.engine import Engine

SYMBOLS = ("S0", "S1", "S2")
# The actions RiskVerdict documents (daemon/core/types.py); what the engine acts on is a
# subset of them.
DOCUMENTED = ("clip", "reject", "scale", "flatten", "halt")


class _Emitting:
    """A risk plugin that halves the targets and says so with one verdict of `action`."""

    kind, name = "risk", "guard"

    def __init__(self, action: object) -> None:
        self.action = action

    def check(self, targets: np.ndarray, ctx: object) -> object:
        from tradingd.core.ports import RiskDecision

        verdict = RiskVerdict(self.name, None, self.action, "drawdown 21%")  # type: ignore[arg-type]
        return RiskDecision(targets * 0.5, (verdict,))


def _risk(action: object) -> list[RiskVerdict]:
    engine = Engine.__new__(Engine)  # only what _risk reads
    engine.symbols = SYMBOLS
    engine._universe = frozenset(SYMBOLS)
    engine.long_only = engine._may_short = False
    engine._repairs = {}
    engine._slow_plugin_s = 5.0
    engine.pipeline = SimpleNamespace(risks=[_Emitting(action)])
    ctx = SimpleNamespace(time="2024-03-01 16:00")
    _, verdicts = engine._risk(np.full(len(SYMBOLS), 0.2), ctx)  # type: ignore[arg-type]
    return verdicts


def test_the_actions_the_engine_acts_on_are_documented_ones():
    assert BLOCKING <= RESTRICTING <= set(DOCUMENTED)


@pytest.mark.parametrize("action", DOCUMENTED)
def test_a_documented_action_is_taken(action):
    [verdict] = _risk(action)
    assert verdict.action == action


@pytest.mark.parametrize("action", ["halted", "Halt", "halt ", "", None, 3])
def test_an_unknown_action_stops_the_run_naming_plugin_bar_and_the_valid_actions(action):
    with pytest.raises(PluginFault) as caught:
        _risk(action)
    text = str(caught.value)
    assert "'guard' failed in check at bar 2024-03-01 16:00" in text
    assert f"action {action!r}" in text
    assert all(a in text for a in DOCUMENTED)
