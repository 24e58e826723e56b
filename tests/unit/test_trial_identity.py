"""A strategy variant's identity survives an upgrade: a build that adds a setting at its
default writes it into every later config.json, and the record of an earlier build lacks it.
Hashing the whole file made the same strategy two trials after each upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tradingd.analysis.trial_ledger import TRIALS_LEDGER, config_hash_v2, legacy_config_hash
from tradingd.analysis.trials import config_hash, count_trials
from tradingd.config import Config
from tradingd.reload import flatten


def _full() -> dict:
    """A config.json as this build writes it, with a non-default strategy."""
    cfg = json.loads(Config().to_public_json())
    cfg["orders"]["rebalance_band"] = 0.07
    return cfg


def _write(root: Path, name: str, config: dict, seed: int) -> None:
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    equity = 1e5 * np.cumprod(1 + rng.normal(0.0003, 0.01, 60))
    times = pd.bdate_range("2015-01-02", periods=equity.size, tz="UTC")
    pd.DataFrame({"time": [t.isoformat() for t in times], "equity": equity}).to_csv(
        d / "equity.csv", index=False
    )
    (d / "config.json").write_text(json.dumps(config))
    (d / "summary.json").write_text(json.dumps({"run_id": name, "initial_capital": 1e5}))


def test_a_record_lacking_a_setting_this_build_added_at_its_default_is_the_same_trial(
    tmp_path,
):
    new = _full()
    old = _full()
    del old["data"]["date_format"]  # an earlier build's record: it had no such setting
    changed = _full()
    changed["data"]["date_format"] = "%Y%m%d"
    _write(tmp_path, "after-upgrade", new, 1)
    _write(tmp_path, "before-upgrade", old, 1)
    _write(tmp_path, "other-format", changed, 2)
    tc = count_trials(tmp_path, risk_free_rate=0.0)
    assert tc.trials == 2
    assert sorted(map(sorted, tc.configs.values())) == [
        ["after-upgrade", "before-upgrade"],
        ["other-format"],
    ]


_SCALARS = sorted(
    k
    for k in flatten(json.loads(Config().to_public_json()))
    if "." in k
    and "[" not in k
    and "#" not in k
    and ".params" not in k
    and k != "orders.rebalance_band"  # off its default in `_full`
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(_SCALARS), unique=True, max_size=12))
def test_dropping_settings_at_their_default_keeps_the_variant(dropped):
    """Any settings an older build lacked, at their defaults here: one variant."""
    cfg = _full()
    trimmed = json.loads(json.dumps(cfg))
    for key in dropped:
        *parents, leaf = key.split(".")
        node = trimmed
        for part in parents:
            node = node[part]
        node.pop(leaf)
    assert config_hash(trimmed) == config_hash(cfg)


def test_a_table_whose_every_setting_is_missing_is_at_its_defaults():
    """Found by the property test above: a config lacking every setting of [feed.yahoo]
    (an empty table left) hashed as another variant."""
    cfg = _full()
    trimmed = json.loads(json.dumps(cfg))
    trimmed["feed"]["yahoo"] = {}
    assert config_hash(trimmed) == config_hash(cfg)


def test_a_setting_off_its_default_and_the_plugin_lists_still_tell_variants_apart():
    base = _full()
    band = _full()
    band["orders"]["rebalance_band"] = 0.08
    assert config_hash(band) != config_hash(base)
    fewer = _full()
    fewer["risk"] = fewer["risk"][:1]  # a shorter chain is not "the rest at default"
    assert config_hash(fewer) != config_hash(base)
    params = _full()
    params["risk"][0]["params"] = {"max_position_pct": 0.07}  # off max_position's default
    assert config_hash(params) != config_hash(base)


def test_an_old_ledger_line_naming_a_present_folder_is_not_another_trial(tmp_path):
    """A ledger line of an earlier build holds the whole file's hash: it is the folder's."""
    cfg = _full()
    _write(tmp_path, "run-a", cfg, 1)
    (tmp_path / TRIALS_LEDGER).write_text(
        json.dumps(
            {"run_id": "run-a", "config_hash": legacy_config_hash(cfg), "bars": 60}
            | {"mean": 0.001, "std": 0.01}
        )
        + "\n"
        + json.dumps({"run_id": "gone", "config_hash": "0123456789abcdef", "bars": 60})
        + "\n"
    )
    tc = count_trials(tmp_path, risk_free_rate=0.0)
    assert tc.trials == 2  # run-a's variant, and the replaced "gone"
    assert sorted(map(sorted, tc.configs.values())) == [
        ["gone (folder replaced by a rerun)"],
        ["run-a"],
    ]


def test_counting_trials_over_records_without_splits_csv_warns_of_nothing(tmp_path):
    """The trial count reads equity curves, which restating fills for splits does not
    change: a warning per record older than splits.csv said nothing it needs."""
    from structlog.testing import capture_logs

    for k, name in enumerate(("old-1", "old-2", "old-3")):
        cfg = _full()
        cfg["orders"]["rebalance_band"] = 0.01 * (k + 1)
        _write(tmp_path, name, cfg, k)
        (tmp_path / name / "fills.csv").write_text(
            "time,symbol,side,quantity,price\n2015-01-05T00:00:00+00:00,AAA,buy,10,100.0\n"
        )
    with capture_logs() as logs:
        tc = count_trials(tmp_path, risk_free_rate=0.0)
    assert len(tc.sharpe_ratios) == 3
    assert [e for e in logs if e["event"] == "analysis.fills_not_restated"] == []
    # Reading one such record for its fills says it once, and when it matters.
    from tradingd.analysis.run_records import run_record

    with capture_logs() as logs:
        run_record(tmp_path / "old-1")
    (warned,) = [e for e in logs if e["event"] == "analysis.fills_not_restated"]
    assert "if a traded symbol split during the run, the round-trip" in warned["detail"]
    assert "are wrong" in warned["detail"]


def _float_for_int(value):
    """`value` with every int written as a float (a bool stays a bool)."""
    if isinstance(value, dict):
        return {k: _float_for_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_float_for_int(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


_PARAM_VALUES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(-100, 100), max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["sizing", "signals", "risk"]),
    st.dictionaries(st.sampled_from(["a", "b", "min_trades", "window", "x"]), _PARAM_VALUES),
)
def test_a_config_and_its_float_for_int_rewrite_are_one_variant(section, params):
    """`kelly_multiplier = 1` and `= 1.0` ran alike and counted as two trials."""
    cfg = _full()
    spec = cfg[section] if section == "sizing" else cfg[section][0]
    spec["params"] = {**spec["params"], **params}
    assert config_hash(_float_for_int(cfg)) == config_hash(cfg)


def test_a_bool_is_not_the_number_one():
    one, true = _full(), _full()
    one["sizing"]["params"]["use_thing"] = 1
    true["sizing"]["params"]["use_thing"] = True
    assert config_hash(one) != config_hash(true)


@settings(max_examples=30, deadline=None)
@given(st.sets(st.sampled_from(["min_trades", "refit_bars", "fit_lag_bars", "kelly_multiplier"])))
def test_a_plugin_param_written_at_its_own_default_is_not_another_variant(written):
    """`min_trades = 20` (kelly_garch's default) written out made another trial."""
    from tradingd_plugins.sizing.kelly_garch import KellyGarch

    base = _full()
    explicit = _full()
    for name in written:
        explicit["sizing"]["params"][name] = getattr(KellyGarch.Config(), name)
    assert config_hash(explicit) == config_hash(base)
    off = _full()
    off["sizing"]["params"]["min_trades"] = 21
    assert config_hash(off) != config_hash(base)


def test_a_plugin_cache_folder_is_not_another_variant():
    """A rerun differing only in fit_cache_dir kept its run id but added a ledger entry."""
    a, b = _full(), _full()
    a["sizing"]["params"]["fit_cache_dir"] = "var/cache/garch"
    b["sizing"]["params"]["fit_cache_dir"] = "var/cache/garch-w2"
    assert config_hash(a) == config_hash(b) == config_hash(_full())


def test_an_unknown_plugins_params_are_compared_as_written(tmp_path):
    from structlog.testing import capture_logs

    from tradingd.analysis import trial_ledger

    trial_ledger._plugin_config.cache_clear()
    bare, written = _full(), _full()
    bare["sizing"] = {"name": "no_such_sizer", "params": {}, "weight": 1.0}
    written["sizing"] = {"name": "no_such_sizer", "params": {"k": 20}, "weight": 1.0}
    with capture_logs() as logs:
        assert config_hash(bare) != config_hash(written)
    assert [e["plugin"] for e in logs if e["event"] == "trials.plugin_defaults_unknown"] == [
        "no_such_sizer"
    ]


def test_a_version_2_ledger_line_names_its_folder(tmp_path):
    """The hash scheme changed (version 3): a line of version 2 still names its folder."""
    cfg = _full()
    cfg["sizing"]["params"]["fit_cache_dir"] = "var/cache/garch"  # v2 hashed it
    _write(tmp_path, "run-a", cfg, 1)
    (tmp_path / TRIALS_LEDGER).write_text(
        json.dumps({"run_id": "run-a", "config_hash": config_hash_v2(cfg), "hash_version": 2})
        + "\n"
    )
    assert count_trials(tmp_path, risk_free_rate=0.0).trials == 1


def test_a_version_3_ledger_line_names_its_folder(tmp_path):
    """Version 4 hashes the run's inputs (what its run id hashes) where version 3 hashed the
    models' versions: a line of version 3, with or without the models, still names its
    folder, which holds both (summary.json `models`, `run_inputs`)."""
    from tradingd.analysis.trial_ledger import config_hash_v3

    cfg = _full()
    _write(tmp_path, "run-a", cfg, 1)
    summary = json.loads((tmp_path / "run-a" / "summary.json").read_text())
    summary["models"] = [{"plugin": "ml_ensemble", "version": "v1", "signal": 0}]
    identity = {"model_version": "v1", "sha256": ["a" * 64, "b" * 64], "card": "c" * 16}
    summary["run_inputs"] = [{"plugin": "signals[0]", "inputs": identity}]
    (tmp_path / "run-a" / "summary.json").write_text(json.dumps(summary))
    ledger = tmp_path / TRIALS_LEDGER
    for key in (config_hash_v3(cfg, models=["v1"]), config_hash_v3(cfg)):
        ledger.write_text(json.dumps({"run_id": "run-a", "config_hash": key, "hash_version": 3}))
        assert count_trials(tmp_path, risk_free_rate=0.0).trials == 1
    # A line of this version for another model of the same version: another variant.
    other = [{"plugin": "signals[0]", "inputs": {**identity, "card": "d" * 16}}]
    line = {"run_id": "run-a", "config_hash": config_hash(cfg, run_inputs=other), "hash_version": 4}
    ledger.write_text(json.dumps(line))
    assert count_trials(tmp_path, risk_free_rate=0.0).trials == 2


def _plugins(code: str, builtin: str = "1" * 16) -> dict:
    """An environment.json's plugins: a third-party signal and a built-in sizing."""
    return {
        "plugins": [
            {"key": "signals[0]", "name": "mine", "package": "my_pkg", "code": code},
            {
                "key": "sizing",
                "name": "kelly_garch",
                "package": "tradingd_plugins",
                "code": builtin,
            },
        ]
    }


def test_a_third_party_plugins_code_makes_the_variant_and_tradingds_own_does_not(tmp_path):
    """An author's edit of a plugin, rerun under one config, was one variant with the run
    before it. tradingd's own plugins change with its upgrades, which make no variant."""
    cfg = _full()
    for name, env in (
        ("run-a", _plugins("a" * 16)),
        ("run-b", _plugins("a" * 16, builtin="2" * 16)),  # another tradingd: the same
        ("run-c", _plugins("c" * 16)),  # the plugin edited: another variant
    ):
        _write(tmp_path, name, cfg, 1)
        (tmp_path / name / "environment.json").write_text(json.dumps(env))
    tc = count_trials(tmp_path, risk_free_rate=0.0)
    assert sorted(map(sorted, tc.configs.values())) == [["run-a", "run-b"], ["run-c"]]


def test_a_version_4_ledger_line_names_its_folder(tmp_path):
    """Version 5 hashes the plugins' code, version 4 did not: a line of version 4 still
    names the folder of its config (whose code it did not see), not another variant."""
    cfg = _full()
    _write(tmp_path, "run-a", cfg, 1)
    (tmp_path / "run-a" / "environment.json").write_text(json.dumps(_plugins("a" * 16)))
    line = {"run_id": "run-a", "config_hash": config_hash(cfg), "hash_version": 4}
    (tmp_path / TRIALS_LEDGER).write_text(json.dumps(line) + "\n")
    assert count_trials(tmp_path, risk_free_rate=0.0).trials == 1


def test_an_environment_json_that_cannot_be_read_is_a_variant_of_its_own(tmp_path):
    from structlog.testing import capture_logs

    cfg = _full()
    for name in ("run-a", "run-b"):
        _write(tmp_path, name, cfg, 1)
    (tmp_path / "run-b" / "environment.json").write_text("{cut")
    with capture_logs() as logs:
        tc = count_trials(tmp_path, risk_free_rate=0.0)
    assert tc.trials == 2 and "run:run-b" in tc.configs
    [said] = [e for e in logs if e["event"] == "trials.environment_unread"]
    assert said["folder"] == str(tmp_path / "run-b") and "environment.json" in said["reason"]
