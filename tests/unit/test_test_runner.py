"""The README's test command: workers and coverage as documented in tests/test_runner.py."""

from __future__ import annotations

import argparse

import pytest
import test_runner as tr


def _args(**over):
    base = dict(category="all", save=False, workers=2, cov=False, pytest_args=[])
    return argparse.Namespace(**{**base, **over})


def test_parallel_without_coverage_by_default(monkeypatch):
    parsed = _parse(monkeypatch, ["--category", "unit"])
    assert parsed.cov is False and parsed.workers == tr.available_cpus()
    cmd = tr.pytest_command(_args(category="unit", workers=3), have_xdist=True)
    assert cmd[cmd.index("-n") + 1] == "3" and "-m" in cmd and "unit" in cmd
    assert not any(a.startswith("--cov") for a in cmd)


def test_one_worker_or_no_xdist_runs_in_this_process(capsys):
    assert "-n" not in tr.pytest_command(_args(workers=1), have_xdist=True)
    assert "-n" not in tr.pytest_command(_args(workers=4), have_xdist=False)
    assert "pytest-xdist is not installed" in capsys.readouterr().err


def test_cov_and_passthrough_arguments(monkeypatch):
    cmd = tr.pytest_command(_args(cov=True, pytest_args=["-k", "engine"]), have_xdist=True)
    assert "--cov=tradingd" in cmd and "--cov=tradingd_plugins" in cmd
    assert cmd[-2:] == ["-k", "engine"]
    assert _parse(monkeypatch, ["--cov"]).cov is True
    assert _parse(monkeypatch, ["--cov", "--no-cov"]).cov is False


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_a_bad_worker_count_is_refused(bad, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        _parse(monkeypatch, ["--workers", bad])
    assert f"--workers must be >= 1 or 'auto', got {bad!r}" in capsys.readouterr().err


def _parse(monkeypatch, argv):
    """The runner's own parser and command, stopped before pytest runs."""
    seen = {}
    monkeypatch.setattr(tr.pytest, "main", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    tr.main(argv)
    cmd = seen["cmd"]
    workers = int(cmd[cmd.index("-n") + 1]) if "-n" in cmd else 1
    return argparse.Namespace(cov=any(a.startswith("--cov") for a in cmd), workers=workers)


def test_a_test_file_after_the_separator_is_what_runs():
    """`-- tests/integration/test_restart_kill.py` ran the whole suite: tests/ came first."""
    here = str(tr.ROOT / "tests" / "unit" / "test_test_runner.py")
    cmd = tr.pytest_command(_args(pytest_args=[here, "-q"]), have_xdist=True)
    assert str(tr.ROOT / "tests") not in cmd and cmd[-2:] == [here, "-q"]
    with_node = tr.pytest_command(_args(pytest_args=[here + "::test_x"]), have_xdist=True)
    assert str(tr.ROOT / "tests") not in with_node
    assert str(tr.ROOT / "tests") in tr.pytest_command(_args(pytest_args=["-k", "x"]), True)
