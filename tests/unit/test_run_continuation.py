"""Which stored live run a live start continues (tradingd.run_continuation): only a
configuration that differs in settings that do not define a run continues one; anything that
changes what the run decides makes a new run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        ("signals[0].params.cache_dir", False),
        ("sizing.params.fit_cache_dir", False),
        ("sizing.params.target_vol", True),
        ("risk[1].params.cache_dir", False),
        ("storage.url", False),
        ("storage.spool_max_bytes", False),
        ("health.port", False),
        ("live.reconcile_interval_s", False),
        ("live.reconcile_confirm_s", False),
        ("live.bar", True),
        ("live.calendar", True),
        ("feed.yahoo.call.timeout_s", False),
        ("feed.yahoo.base_url", True),
        ("feed.source", True),
        ("broker.alpaca.request_timeout_s", False),
        ("feed.alpaca.max_symbols_per_request", False),
        ("live.warmup_bars", True),
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


def test_choose_takes_the_fitting_run_active_last(config: Config) -> None:
    """Least recently active first in `stored`. The derived run wins only when it was the
    one active last: an operator who went back from a run a changed file had begun to the
    earlier run keeps the earlier one."""
    changed = _with_risk_param(config, 0, max_position_pct=0.01)
    public = config.to_public_json()
    data = dataclasses.replace(config.data, symbols=("A",))
    other_symbols = dataclasses.replace(config, data=data)
    stored = [
        StoredLiveRun("n-live-0000000001", public),
        StoredLiveRun("n-live-0000000002", public),  # the fitting run active last
        StoredLiveRun("n-live-0000000003", other_symbols.to_public_json()),
        StoredLiveRun("n-live-0000000004", None),
        StoredLiveRun("n-live-0000000005", "{not json"),
        StoredLiveRun("n-live-0000000006", "[1, 2]"),
    ]
    assert choose(changed, "n-live-ffffffffff", stored) == (
        "n-live-0000000002",
        ["risk[0].params.max_position_pct"],
    )
    # The derived run, active last of those that fit: a plain restart of it.
    derived = StoredLiveRun("n-live-ffffffffff", changed.to_public_json())
    assert choose(changed, derived.run_id, [*stored, derived]) == (None, [])
    # The derived run, abandoned for an earlier one since: the earlier one goes on.
    assert choose(changed, derived.run_id, [derived, *stored])[0] == "n-live-0000000002"
    assert choose(changed, "n-live-ffffffffff", stored[2:]) == (None, [])


def test_a_demos_pace_is_not_the_run_but_turning_the_replay_on_or_off_is(config: Config) -> None:
    def paced(rate: float) -> dict:
        return _public(
            dataclasses.replace(config, live=dataclasses.replace(config.live, bars_per_second=rate))
        )

    assert differences(paced(20.0), paced(5.0)) == (True, ["live.bars_per_second"])
    assert differences(paced(0.0), paced(5.0))[0] is False  # the real clock -> a replay
    assert differences(paced(5.0), paced(0.0))[0] is False


def test_a_plugins_params_never_count_as_a_setting_added_at_its_default(config: Config) -> None:
    """The default config's plugin in that place may be another plugin: a parameter of the
    same name and value there says nothing about this one's."""
    stored = _public(config)
    current = _public(config)
    sizing_params = current["sizing"]["params"]
    assert sizing_params, "the default sizing plugin has params"
    key, value = next(iter(sizing_params.items()))
    del stored["sizing"]["params"][key]
    ok, differ = differences(stored, current)
    assert not ok and differ == [f"sizing.params.{key}"]
    assert value == current["sizing"]["params"][key]


async def test_sqlite_lists_the_live_runs_of_a_name_by_last_activity(tmp_path) -> None:
    from run_lookup import check_live_run_configs

    from tradingd.storage.factory import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    await store.start()
    try:
        await check_live_run_configs(store)
    finally:
        await store.stop()


async def test_the_lookup_waits_for_a_postgresql_that_is_down_as_the_start_does(
    config: Config,
) -> None:
    """The lookup's store did not spool, and only a spooling PostgresStore waited
    `storage.start_retry_s`: a live start exited 2 at once where it had waited for a
    database restarting beside it (under systemd, the unit failed). Each attempt waits
    `start_retry_s`; then the lookup tries again with backoff, until the database answers
    or a stop abandons it (it is not an exit either)."""
    import asyncio

    from structlog.testing import capture_logs

    from tradingd.app import continued_live_run

    storage = dataclasses.replace(
        config.storage, url="postgresql://u:pw@127.0.0.1:1/db", start_retry_s=0.3
    )
    down = dataclasses.replace(config, storage=storage)
    with capture_logs() as logs:
        lookup = asyncio.create_task(continued_live_run(down))

        async def retried() -> None:
            while not [e for e in logs if e["event"] == "startup.retry"]:
                assert not lookup.done(), lookup.exception()
                await asyncio.sleep(0.01)

        await asyncio.wait_for(retried(), 30)
        assert not lookup.done()
        lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lookup
    assert [e for e in logs if e["event"] == "storage.start.retry"]
    (retry,) = [e for e in logs if e["event"] == "startup.retry"]
    assert retry["part"] == "store (run lookup)" and "gave up after" in retry["error"]
    assert all("pw@" not in str(e) for e in logs)


def test_a_plugins_cache_folder_is_not_part_of_the_run_id(tmp_path):
    """A plugin's cache folder (ml_ensemble's cache_dir, kelly_garch's fit_cache_dir) says
    where files go: a daemon whose caches moved to another disk began a new run (its
    simulated account from the start), and a notebook run's id followed $HOME. What the
    plugin decides by (any other parameter) still makes another run."""
    from tradingd.app import run_id_for
    from tradingd.config import load_config

    def config(ml: str, sizing: str) -> Path:
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.toml"
        path.write_text(
            '[[signals]]\nname = "ml_ensemble"\nweight = 0.6\n'
            f"[signals.params]\n{ml}\n"
            '[[signals]]\nname = "multi_factor"\nweight = 0.4\n'
            '[sizing]\nname = "kelly_garch"\n'
            f"[sizing.params]\n{sizing}\n"
        )
        return path

    def rid(ml: str, sizing: str) -> str:
        return run_id_for(load_config([config(ml, sizing)], env={}), "live")

    base = rid("", "")
    assert rid('cache_dir = "/mnt/a"', 'fit_cache_dir = "/mnt/b"') == base
    assert rid('cache_dir = "/elsewhere"', "") == base
    assert rid("threshold = 0.7", "") != base
    assert rid("", "target_vol = 0.2") != base


def _sizing(config: Config, **params: object) -> Config:
    return dataclasses.replace(
        config, sizing=dataclasses.replace(config.sizing, params={**config.sizing.params, **params})
    )


_KELLY_FLOATS = ("kelly_multiplier", "target_vol", "max_position")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(_KELLY_FLOATS), st.integers(0, 5))
def test_a_float_param_written_as_an_int_is_the_same_run(key, value):
    """`kelly_multiplier = 1` and `= 1.0` (kelly_garch's Config holds 1.0 for both; the same
    fills) got two run ids: two folders, and a live start with the other spelling began a
    new run. A number is compared in the type the plugin declares."""
    from tradingd.app import run_id_for

    config = load_config([], env={})
    as_int = run_id_for(_sizing(config, **{key: value}), "live")
    assert run_id_for(_sizing(config, **{key: float(value)}), "live") == as_int
    assert run_id_for(_sizing(config, **{key: value + 0.5}), "live") != as_int


def test_a_plugin_param_written_at_its_default_keeps_its_own_run_id(config):
    """Decided: a param written at the plugin's default still makes another run id (not so
    for the trial count). `choose` continues a run whose id matches without comparing
    configs: were `min_trades = 20` dropped from the id, a file that no longer pinned it
    after an upgrade changed the default would continue the pinned run on the new value."""
    from tradingd.app import run_id_for

    assert run_id_for(_sizing(config, min_trades=20), "live") != run_id_for(config, "live")


def test_a_live_run_stored_under_the_old_id_of_an_int_spelling_is_continued(config):
    """The ids of configs writing an int for a float param changed: their stored live run
    is continued (its config is this one's), not begun again."""
    current = _sizing(config, kelly_multiplier=1)
    stored = [StoredLiveRun("default-live-0123456789", current.to_public_json())]
    assert choose(current, "default-live-ffffffffff", stored) == ("default-live-0123456789", [])
