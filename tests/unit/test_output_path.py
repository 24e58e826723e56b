"""A backtest writing to run.output_dir writes its record in `<run.output_dir>/<run id>`: that
folder, with the record's files in it, must fit the file system's path limit. Only the
parent folder was checked at start-up, so a path too long for the record passed and failed
after the whole replay (only --output was checked with the record's files)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import deep_path

from tradingd import backtest
from tradingd.app import run_id_for
from tradingd.config import Config, load_config
from tradingd.core.errors import ConfigError
from tradingd.preflight import check_config


class Tripwire(Exception):
    """Raised by the data load, which the check must come before."""


def _config(tmp_path: Path, output_dir: Path) -> Config:
    return load_config(
        [
            {
                "run": {"output_dir": str(output_dir)},
                "storage": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
                "log": {"audit_dir": str(tmp_path / "audit")},
            }
        ],
        env={},
    )


def _longest_fitting(tmp_path: Path) -> Path:
    """The longest run.output_dir whose run folder still holds the record's files."""
    # A derived id is `<run.name>-backtest-<10 hex digits>`: its length is the same for every
    # run.output_dir (which the digest covers).
    run_id = run_id_for(_config(tmp_path, tmp_path), "backtest")
    longest = max(len(n) for n in backtest.record_names())
    limit = os.pathconf(tmp_path, "PC_PATH_MAX") - 1  # bytes of a path, without its NUL
    return deep_path(tmp_path, limit - 1 - len(run_id) - 1 - longest)


def test_the_run_folder_in_run_output_dir_is_checked_with_the_records_files(tmp_path):
    fits = _longest_fitting(tmp_path)
    config = _config(tmp_path, fits)
    assert len(run_id_for(config, "backtest")) == len(
        run_id_for(_config(tmp_path, tmp_path), "backtest")
    )
    check_config(config, "backtest")  # the longest that fits passes
    too_long = _config(tmp_path, Path(f"{fits}x"))
    with pytest.raises(ConfigError) as e:
        check_config(too_long, "backtest")
    text = str(e.value)
    assert "run.output_dir's record folder" in text and "give a shorter path" in text
    assert run_id_for(too_long, "backtest") in text  # the folder named is the run's own
    assert not (tmp_path / ("d" * 200)).exists()  # nothing made


def test_a_backtest_refuses_a_record_folder_too_long_before_loading_its_data(tmp_path, monkeypatch):
    """The Python API (and a sweep's points) reach run_backtest without the CLI's check."""

    def trip(*_a, **_k):
        raise Tripwire("the data was loaded before the record folder was checked")

    monkeypatch.setattr(backtest, "load_pinned", trip)
    too_long = _config(tmp_path, Path(f"{_longest_fitting(tmp_path)}x"))
    with pytest.raises(ConfigError, match=r"run\.output_dir's record folder .* give a shorter"):
        asyncio.run(backtest.run_backtest(too_long))
    explicit = deep_path(tmp_path, os.pathconf(tmp_path, "PC_PATH_MAX") - 10)
    with pytest.raises(ConfigError, match=r"^output_dir = .*give a shorter path"):
        asyncio.run(backtest.run_backtest(_config(tmp_path, tmp_path), output_dir=explicit))
    # One that fits goes on to load the data.
    with pytest.raises(Tripwire):
        asyncio.run(backtest.run_backtest(_config(tmp_path, _longest_fitting(tmp_path))))
