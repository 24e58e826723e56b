"""`tradingd --version` and the build identity the report and replay-check compare."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from tradingd.build_info import Build, build_from_environment


def test_version_prints_the_version_and_the_commit(capsys):
    """A checkout names its HEAD; an installed copy (CI installs the project from a clone)
    the commit its build recorded; one built without either says so and what to do."""
    from tradingd.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out.strip()
    source = Path(__import__("tradingd").__file__).resolve().parent
    head = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = source / "_build_source.json"
    built = json.loads(record.read_text()) if record.is_file() else {}
    if head:  # a checkout
        assert out.startswith(f"tradingd {version('tradingd')}, commit {head[:12]}")
    elif built.get("commit"):  # an installed copy built from a checkout
        edited = " with uncommitted changes" if built["uncommitted_changes"] else ""
        assert out == (
            f"tradingd {version('tradingd')}, commit {built['commit'][:12]}{edited} "
            "(recorded when the package was built)"
        )
    else:
        assert out.startswith(f"tradingd {version('tradingd')} (commit unknown:")


def _version_of(build: Build, monkeypatch, capsys) -> str:
    import tradingd.build_info
    from tradingd.__main__ import main

    monkeypatch.setattr(tradingd.build_info, "this_build", lambda: build)
    with pytest.raises(SystemExit):
        main(["--version"])
    return capsys.readouterr().out.strip()


def test_version_says_where_the_commit_came_from_or_how_to_get_one(monkeypatch, capsys):
    commit = "ab" * 20
    assert _version_of(Build("0.1.0", commit, False), monkeypatch, capsys) == (
        f"tradingd 0.1.0, commit {commit[:12]}"
    )
    built = Build("0.1.0", commit, None, recorded_at_build=True)
    assert _version_of(built, monkeypatch, capsys) == (
        f"tradingd 0.1.0, commit {commit[:12]} (recorded when the package was built)"
    )
    unknown = _version_of(Build("0.1.0"), monkeypatch, capsys)
    assert unknown.startswith("tradingd 0.1.0 (commit unknown:")
    assert "reinstall from a git checkout" in unknown and "TRADINGD_BUILD_COMMIT" in unknown


def test_builds_differ_by_commit_where_both_have_one_else_by_version():
    a = Build("0.1.0", "a" * 40)
    assert a.differs_from(Build("0.1.0", "b" * 40))
    assert not a.differs_from(Build("0.1.0", "a" * 40, True))  # same commit, edited
    assert a.differs_from(Build("0.2.0", None))
    assert not a.differs_from(Build(None, None))  # unknown: not said to differ
    env = {"packages": {"tradingd": "0.1.0"}, "source": None}
    assert build_from_environment(env) == Build("0.1.0", None, None)
    assert build_from_environment({"source": {"error": "x"}}) == Build()


def test_a_commit_recorded_at_build_is_the_same_code_as_a_checkouts():
    """Where the commit was read does not make two builds differ; the commit does."""
    commit = "c" * 40
    env = {"packages": {"tradingd": "0.1.0"}}
    built = build_from_environment(
        {**env, "source": {"commit": commit, "uncommitted_changes": False, "from": "build"}}
    )
    checkout = build_from_environment(
        {**env, "source": {"commit": commit, "uncommitted_changes": False}}
    )
    assert built.recorded_at_build and not checkout.recorded_at_build
    assert built == checkout and not built.differs_from(checkout)
    assert built.differs_from(Build("0.1.0", "d" * 40, recorded_at_build=True))
    # A run_builds row has no place for it: the same columns as before.
    assert built.as_dict() == {"version": "0.1.0", "commit": commit, "uncommitted_changes": False}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"packages": ', "cannot be read as JSON"),
        ("[1, 2]", "holds list, not a JSON object"),
        (b"\xff\xfe{}", "cannot be read as JSON"),
    ],
)
def test_an_unreadable_environment_json_is_said_naming_the_file(tmp_path, text, why):
    """It was taken as a record without one, unsaid: the report then never said a record of
    other code was, and a replay that differed did not blame the code. The report goes on
    (it measures the run without the build), saying why it names no build, once a file."""
    from structlog.testing import capture_logs

    from tradingd.build_info import recorded_build

    file = tmp_path / "environment.json"
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text)
    with capture_logs() as logs:
        assert recorded_build(tmp_path) is None
        assert recorded_build(tmp_path) is None  # the report and its note line both ask
    (said,) = [e for e in logs if e["event"] == "report.environment_unreadable"]
    assert said["log_level"] == "warning" and said["file"] == str(file)
    assert f"{file} {why}" in said["reason"]
    assert "which build made the record is not known" in said["detail"]
    # None without one (a record older than environment.json) is no news.
    with capture_logs() as logs:
        assert recorded_build(tmp_path / "elsewhere") is None
    assert logs == []
