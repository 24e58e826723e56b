"""Variants tried under one run id: each rerun replaces the folder, and the trial ledger
beside the folders keeps the count the deflated Sharpe ratio needs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_panel

from tradingd.analysis.trial_ledger import TRIALS_LEDGER
from tradingd.analysis.trials import count_trials
from tradingd.backtest import run_backtest


def _with_lookback(config, lookback: int):
    (signal,) = config.signals
    return dataclasses.replace(
        config,
        signals=(dataclasses.replace(signal, params={"lookback": lookback}),),
        run=dataclasses.replace(config.run, run_id="mystrat"),
    )


def _sharpe(equity, capital: float) -> float:
    e = np.asarray(equity, dtype=float)
    r = np.r_[e[0] / capital - 1, e[1:] / e[:-1] - 1]
    return float(np.mean(r) / np.std(r, ddof=1) * math.sqrt(252))


async def test_variants_rerun_under_one_run_id_all_count_as_trials(engine_config, tmp_path):
    """Five lookbacks under run_id "mystrat" left one folder: 1 trial, no Sharpe variance,
    and the mildest deflation. Now each variant counts, with its own Sharpe ratio."""
    panel = make_panel(n_bars=160, split_at=None)
    root = Path(engine_config.run.output_dir)
    sharpes = []
    for lookback in (10, 20, 40):
        config = _with_lookback(engine_config, lookback)
        out = await run_backtest(config, panel=panel, output_dir=root / "mystrat")
        sharpes.append(_sharpe(out.result.equity, config.run.initial_capital))
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["mystrat"]
    tc = count_trials(root, risk_free_rate=0.0)
    assert tc.trials == 3
    assert sorted(tc.sharpe_ratios.values()) == pytest.approx(sorted(sharpes), rel=1e-9)
    assert tc.sharpe_variance == pytest.approx(np.var(sharpes, ddof=1), rel=1e-9)
    # A rerun of a variant already tried is not another trial, nor another line.
    lines = (root / TRIALS_LEDGER).read_text().splitlines()
    await run_backtest(_with_lookback(engine_config, 20), panel=panel, output_dir=root / "mystrat")
    assert (root / TRIALS_LEDGER).read_text().splitlines() == lines
    assert count_trials(root, risk_free_rate=0.0).trials == 3


def test_a_cut_ledger_line_is_skipped_and_said(tmp_path):
    from structlog.testing import capture_logs

    (tmp_path / TRIALS_LEDGER).write_text(
        '{"run_id": "a", "config_hash": "h1", "bars": 9, "mean": 0.001, "std": 0.01}\n{"run_'
    )
    with capture_logs() as logs:
        tc = count_trials(tmp_path, risk_free_rate=0.0)
    assert tc.trials == 1
    assert tc.sharpe_ratios["h1"] == pytest.approx(0.001 / 0.01 * math.sqrt(252))
    assert [e["lines"] for e in logs if e["event"] == "trials.ledger_lines_skipped"] == [1]


async def test_variants_written_to_one_output_folder_all_count_as_trials(engine_config, tmp_path):
    """A sweep writing every variant to one --output folder (`--output var/sweep/latest
    --report`) left one folder and no ledger: each report counted 1 trial "from run records
    under var/sweep". The ledger is the --output folder's own, which the count from its
    parent (the record's report) reads with the folder."""
    panel = make_panel(n_bars=120, split_at=None)
    latest = tmp_path / "sweep" / "latest"
    ids = set()
    for lookback in (10, 20, 40):
        (signal,) = engine_config.signals
        config = dataclasses.replace(
            engine_config,
            signals=(dataclasses.replace(signal, params={"lookback": lookback}),),
            run=dataclasses.replace(engine_config.run, run_id=""),  # derived per variant
        )
        ids.add((await run_backtest(config, panel=panel, output_dir=latest)).run_id)
    assert len(ids) == 3  # three run ids, one folder
    assert [p.name for p in latest.parent.iterdir() if p.is_dir()] == ["latest"]
    assert len((latest / TRIALS_LEDGER).read_text().splitlines()) == 3
    assert count_trials(latest.parent, risk_free_rate=0.0).trials == 3
    # Nothing beside the folder: its parent may be any folder (/tmp for --output /tmp/x),
    # whose other runs must not count these as theirs through a ledger there.
    assert not (latest.parent / TRIALS_LEDGER).exists()
    # Under run.output_dir (the runs root) the root's ledger is written.
    root = Path(engine_config.run.output_dir)
    await run_backtest(engine_config, panel=panel)
    assert (root / TRIALS_LEDGER).exists()
