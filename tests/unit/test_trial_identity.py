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

from tradingd.analysis.trial_ledger import TRIALS_LEDGER, legacy_config_hash
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


def test_a_setting_off_its_default_and_the_plugin_lists_still_tell_variants_apart():
    base = _full()
    band = _full()
    band["orders"]["rebalance_band"] = 0.08
    assert config_hash(band) != config_hash(base)
    fewer = _full()
    fewer["risk"] = fewer["risk"][:1]  # a shorter chain is not "the rest at default"
    assert config_hash(fewer) != config_hash(base)
    params = _full()
    params["risk"][0]["params"] = {}  # a plugin's params are its own, not the default's
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
    assert "matters only if a traded symbol split during the run" in warned["detail"]
