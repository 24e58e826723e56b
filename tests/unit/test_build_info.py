"""`tradingd --version` and the build identity the report and replay-check compare."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from tradingd.build_info import Build, build_from_environment


def test_version_prints_the_version_and_the_commit(capsys):
    from tradingd.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.strip()
    source = Path(__import__("tradingd").__file__).resolve().parent
    head = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if head:  # a checkout
        assert out.startswith(f"tradingd {version('tradingd')}, commit {head[:12]}")
    else:  # an installed copy (CI installs the project): no commit to name, and said so
        assert out == f"tradingd {version('tradingd')} (no git checkout: commit unknown)"


def test_builds_differ_by_commit_where_both_have_one_else_by_version():
    a = Build("0.1.0", "a" * 40)
    assert a.differs_from(Build("0.1.0", "b" * 40))
    assert not a.differs_from(Build("0.1.0", "a" * 40, True))  # same commit, edited
    assert a.differs_from(Build("0.2.0", None))
    assert not a.differs_from(Build(None, None))  # unknown: not said to differ
    env = {"packages": {"tradingd": "0.1.0"}, "source": None}
    assert build_from_environment(env) == Build("0.1.0", None, None)
    assert build_from_environment({"source": {"error": "x"}}) == Build()
