"""Which stored live run a live start continues (tradingd.run_continuation): only a
configuration that differs in settings that do not define a run continues one; anything that
changes what the run decides makes a new run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tradingd.config import Config, load_config
from tradingd.run_continuation import StoredLiveRun, choose, defines_the_run, differences


def _public(config: Config) -> dict:
    return json.loads(config.to_public_json())


@pytest.fixture
def config() -> Config:
    return load_config([], env={})


def _with_risk_param(config: Config, i: int, **params: object) -> Config:
    risk = list(config.risk)
    risk[i] = dataclasses.replace(risk[i], params={**risk[i].params, **params})
    return dataclasses.replace(config, risk=tuple(risk))


@pytest.mark.parametrize(
    ("key", "defines"),
    [
        ("risk[0].params.max_position_pct", False),
        ("risk[2].params", False),
        ("risk[0].name", True),
        ("risk#len", True),
        ("risk", True),
        ("signals[0].params.lookback", True),
        ("storage.url", False),
        ("storage.spool_max_bytes", False),
        ("health.port", False),
        ("live.reconcile_interval_s", False),
        ("live.bar", True),
        ("live.calendar", True),
        ("feed.yahoo.call.timeout_s", False),
        ("feed.yahoo.base_url", True),
        ("feed.source", True),
        ("broker.alpaca.request_timeout_s", False),
        ("broker.alpaca.base_url", True),
        ("broker.max_volume_participation", True),
        ("costs.commission_pct", True),
        ("run.initial_capital", True),
        ("run.output_dir", False),
        ("data.symbols", True),
    ],
)
def test_what_defines_a_live_run(key: str, defines: bool) -> None:
    assert defines_the_run(key) is defines


def test_a_changed_risk_limit_continues_and_is_named(config: Config) -> None:
    ok, differ = differences(_public(config), _public(_with_risk_param(config, 0, x_limit=0.5)))
    assert ok and differ == ["risk[0].params.x_limit"]


def test_a_risk_plugin_added_or_a_symbol_changed_does_not_continue(config: Config) -> None:
    fewer = dataclasses.replace(config, risk=config.risk[:-1])
    assert differences(_public(config), _public(fewer))[0] is False
    other = dataclasses.replace(config, data=dataclasses.replace(config.data, symbols=("AAA",)))
    ok, differ = differences(_public(config), _public(other))
    assert not ok and differ == ["data.symbols"]


def test_a_setting_an_earlier_build_did_not_have_counts_only_at_its_default(
    config: Config,
) -> None:
    """An upgrade adds a setting: the stored configuration lacks it. At its default the run
    is the same (the earlier build behaved so); set to something else it is not."""
    stored = _public(config)
    del stored["costs"]["min_commission"]
    assert differences(stored, _public(config)) == (True, [])
    costs = dataclasses.replace(config.costs, min_commission=1.0)
    costly = dataclasses.replace(config, costs=costs)
    assert differences(stored, _public(costly)) == (False, ["costs.min_commission"])


def test_choose_prefers_the_derived_run_then_the_latest_that_fits(config: Config) -> None:
    changed = _with_risk_param(config, 0, max_position_pct=0.01)
    public = config.to_public_json()
    data = dataclasses.replace(config.data, symbols=("A",))
    other_symbols = dataclasses.replace(config, data=data)
    stored = [
        StoredLiveRun("n-live-0000000001", public),
        StoredLiveRun("n-live-0000000002", public),  # the most recent that fits
        StoredLiveRun("n-live-0000000003", other_symbols.to_public_json()),
        StoredLiveRun("n-live-0000000004", None),
        StoredLiveRun("n-live-0000000005", "{not json"),
        StoredLiveRun("n-live-0000000006", "[1, 2]"),
    ]
    assert choose(changed, "n-live-ffffffffff", stored) == (
        "n-live-0000000002",
        ["risk[0].params.max_position_pct"],
    )
    # The derived run is stored: a plain restart of it, whatever else fits.
    assert choose(changed, "n-live-0000000001", stored) == (None, [])
    assert choose(changed, "n-live-ffffffffff", stored[2:]) == (None, [])
