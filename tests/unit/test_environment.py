"""A run's environment record: what it says must be what this process runs with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pandas as pd
import pytest

from tradingd.environment import (
    DISPATCH_VARIABLES,
    environment,
    numpy_simd,
    package_versions,
    source_revision,
)


def test_package_versions_are_the_imported_ones_and_none_when_absent():
    got = package_versions(("numpy", "pandas", "no-such-distribution-tradingd"))
    assert got == {
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "no-such-distribution-tradingd": None,
    }


def _simd_in_child(env: dict[str, str]) -> dict[str, list[str]]:
    code = (
        "import json; from tradingd.environment import numpy_simd; print(json.dumps(numpy_simd()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_numpy_simd_lists_what_numpy_dispatches_to_and_sees_it_switched_off():
    simd = numpy_simd()
    if not simd["found"]:
        pytest.skip("this CPU offers numpy no dispatchable extension beyond its baseline")
    # numpy refuses to disable a baseline feature, and disabling one disables those implied
    # by it: switch off the newest found one, which nothing found later depends on.
    newest = simd["found"][-1]
    off = _simd_in_child({"NPY_DISABLE_CPU_FEATURES": newest})
    assert newest in simd["found"] and newest not in off["found"]
    assert off["baseline"] == simd["baseline"]
    assert _simd_in_child({}) == simd


def test_dispatch_variables_are_recorded_and_nothing_else_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("NPY_DISABLE_CPU_FEATURES", raising=False)
    monkeypatch.setenv("ALPACA_SECRET_KEY", "do-not-record-me")
    env = environment()
    assert env["dispatch_variables"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert "NPY_DISABLE_CPU_FEATURES" not in env["dispatch_variables"]
    assert set(env["dispatch_variables"]) <= set(DISPATCH_VARIABLES)
    assert "do-not-record-me" not in json.dumps(env)


def _git(cwd, *args):
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, timeout=30)


def _one_commit_repo(tmp_path):
    """A git repository at tmp_path/repo with one commit of a.py, and that commit's id."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return repo, head


def test_source_revision_names_the_commit_and_uncommitted_changes(tmp_path):
    repo, head = _one_commit_repo(tmp_path)
    assert source_revision(repo) == {"commit": head, "uncommitted_changes": False}
    (repo / "a.py").write_text("x = 2\n")
    assert source_revision(repo) == {"commit": head, "uncommitted_changes": True}
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    assert source_revision(outside) is None
    # An installed copy in an untracked folder of some checkout (a virtualenv inside a
    # project) is not that checkout's source: no commit is named.
    venv = repo / ".venv" / "site-packages" / "tradingd"
    venv.mkdir(parents=True)
    (venv / "environment.py").write_text("")
    assert source_revision(venv) is None


def test_a_part_that_cannot_be_read_is_recorded_as_its_error(monkeypatch):
    import tradingd.environment as env_mod

    def broken():
        raise OSError("no such library")

    monkeypatch.setattr(env_mod, "blas", broken)
    env = env_mod.environment()
    assert env["blas"] == {"error": "OSError('no such library')"}
    assert env["packages"]["numpy"] == np.__version__  # the rest is still read


def test_source_revision_is_of_the_folder_not_of_a_git_dir_in_the_environment(
    tmp_path, monkeypatch
):
    mine, other = tmp_path / "mine", tmp_path / "other"
    heads = {}
    for repo in (mine, other):
        repo.mkdir()
        _git(repo, "init", "-q")
        (repo / "a.py").write_text(repo.name)
        _git(repo, "add", "a.py")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
        heads[repo] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert source_revision(mine) == {"commit": heads[mine], "uncommitted_changes": False}


def _plugin_dist(root, version: str) -> None:
    """A third-party plugin package as pip installs it: its module, and dist-info naming the
    module's top-level package and registering the plugin."""
    (root / "envplug_mod").mkdir(parents=True)
    (root / "envplug_mod" / "__init__.py").write_text(f"VERSION = {version!r}\n")
    info = root / f"envplug-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: envplug\nVersion: {version}\n")
    (info / "top_level.txt").write_text("envplug_mod\n")
    (info / "entry_points.txt").write_text("[tradingd.plugins]\nenvplug = envplug_mod:EnvPlug\n")


def test_the_plugins_are_recorded_with_the_distribution_and_version_that_provide_them(
    tmp_path, monkeypatch
):
    """A rerun after a third-party plugin's upgrade has the same run id and replaced the
    earlier record: nothing in environment.json told the two apart."""
    import importlib

    from tradingd.config import load_config

    config = load_config(
        [{"signals": [{"name": "envplug"}], "sizing": {"name": "equal_weight"}}], env={}
    )
    old, new = tmp_path / "v1", tmp_path / "v2"
    _plugin_dist(old, "0.1.0")
    _plugin_dist(new, "0.2.0")
    monkeypatch.syspath_prepend(str(old))
    importlib.invalidate_caches()
    first = environment(config)["plugins"]
    code = first[0].pop("code")
    assert first[0] == {
        "key": "signals[0]",
        "name": "envplug",
        "module": "envplug_mod",
        "distribution": "envplug",
        "version": "0.1.0",
        "editable": None,  # no direct_url.json: not said
        "package": "envplug_mod",
    }
    tradingd = metadata.version("tradingd")
    builtin = first[1].pop("code")
    first[1].pop("editable")  # (as this checkout is installed)
    assert first[1] == {
        "key": "sizing",
        "name": "equal_weight",
        "module": "tradingd_plugins.sizing.equal_weight",
        "distribution": "tradingd",
        "version": tradingd,
        "package": "tradingd_plugins",
    }
    assert isinstance(code, str) and len(code) == 16 and isinstance(builtin, str)
    assert [p["key"] for p in first[2:]] == [f"risk[{i}]" for i in range(len(config.risk))]
    assert all(p["distribution"] == "tradingd" for p in first[2:])
    monkeypatch.setattr(sys, "path", [str(new), *(p for p in sys.path if p != str(old))])
    importlib.invalidate_caches()
    assert environment(config)["plugins"][0]["version"] == "0.2.0"
    # Without a config (the benchmarks' record) there is no plugin part.
    assert "plugins" not in environment()


def test_a_plugin_distribution_is_read_from_its_entry_point_without_scanning_every_package(
    tmp_path, monkeypatch
):
    """Every backtest's output step read the file list of every installed distribution to
    name the plugins' (0.13-0.15 s with TensorFlow and Ray installed): the distribution that
    registered a plugin is asked first, and it installs the plugin's module."""
    import importlib

    from tradingd.config import load_config

    def scan() -> None:
        raise AssertionError("every distribution's file list was read")

    config = load_config(
        [{"signals": [{"name": "envplug"}], "sizing": {"name": "equal_weight"}}], env={}
    )
    _plugin_dist(tmp_path, "0.3.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(metadata, "packages_distributions", scan)
    plugins = environment(config)["plugins"]
    assert plugins[0]["distribution"] == "envplug" and plugins[0]["version"] == "0.3.0"
    assert all(p["distribution"] == "tradingd" for p in plugins[1:])


def test_a_plugin_registered_for_another_distributions_module_names_the_one_installing_it(
    tmp_path, monkeypatch
):
    """An entry point may name a module another distribution installs: the record names the
    distribution whose code runs, found by the full scan."""
    import importlib

    from tradingd.config import load_config

    (tmp_path / "envmod_pkg").mkdir()
    (tmp_path / "envmod_pkg" / "__init__.py").write_text("")
    for name, version, top, eps in (
        ("envreg", "1.0", "envreg_pkg", "[tradingd.plugins]\nenvcross = envmod_pkg:X\n"),
        ("envmod", "2.5", "envmod_pkg", ""),
    ):
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "top_level.txt").write_text(f"{top}\n")
        if eps:
            (info / "entry_points.txt").write_text(eps)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    config = load_config(
        [{"signals": [{"name": "envcross"}], "sizing": {"name": "equal_weight"}}], env={}
    )
    first = environment(config)["plugins"][0]
    assert (first["module"], first["distribution"], first["version"]) == (
        "envmod_pkg",
        "envmod",
        "2.5",
    )


def test_a_checkout_git_refuses_is_said_not_recorded_as_no_source(monkeypatch, tmp_path):
    """Run as a user who does not own the checkout, git refuses it ("dubious ownership") and
    environment.json's source was null without a word. The reason and the fix are logged."""
    from structlog.testing import capture_logs

    def refused(cmd, **kw):  # type: ignore[no-untyped-def]
        return subprocess.CompletedProcess(
            cmd, 128, "", f"fatal: detected dubious ownership in repository at '{tmp_path}'\n"
        )

    monkeypatch.setattr(subprocess, "run", refused)
    with capture_logs() as logs:
        assert source_revision(tmp_path / "daemon") is None
    [said] = [e for e in logs if e["event"] == "environment.source_unknown"]
    assert "dubious ownership" in said["reason"]
    assert said["fix"] == f"git config --global --add safe.directory {tmp_path}"


def _record(folder, **record) -> None:
    (folder / "_build_source.json").write_text(json.dumps(record))


def test_an_installed_copy_names_the_commit_its_build_recorded_and_a_checkout_wins(tmp_path):
    """An installed copy (no checkout) named no commit: the build hook records it now. In a
    checkout (an editable install) the checkout is read, since it may have changed since."""
    installed = tmp_path / "site-packages" / "tradingd"
    installed.mkdir(parents=True)
    assert source_revision(installed) is None  # built before the hook
    _record(installed, commit="a" * 40, uncommitted_changes=True, read_from="git checkout")
    assert source_revision(installed) == {
        "commit": "a" * 40,
        "uncommitted_changes": True,
        "from": "build",
    }
    _record(installed, commit=None, uncommitted_changes=None, read_from=None)
    assert source_revision(installed) is None  # built without a commit: unknown, as before

    repo, head = _one_commit_repo(tmp_path)
    _record(repo, commit="b" * 40, uncommitted_changes=False, read_from="git checkout")
    assert source_revision(repo) == {"commit": head, "uncommitted_changes": False}


def test_a_build_record_that_cannot_be_read_is_logged_and_taken_as_unknown(tmp_path):
    from structlog.testing import capture_logs

    (tmp_path / "_build_source.json").write_text("{not json")
    with capture_logs() as logs:
        assert source_revision(tmp_path) is None
    [said] = [e for e in logs if e["event"] == "environment.build_record_unreadable"]
    assert said["file"] == str(tmp_path / "_build_source.json")
    assert "reinstall" in said["fix"]


def _editable_plugin(root, helper: str) -> None:
    """A plugin author's editable install: the package in its checkout (on the path), its
    class in one module and a helper it imports in another, the dist-info saying editable."""
    pkg = root / "src" / "edplug_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "signals.py").write_text("from .sub.helper import WANT\n\nclass EdPlug: ...\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "helper.py").write_text(helper)
    (pkg / "notes.txt").write_text("not code")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "signals.cpython-311.pyc").write_bytes(b"stale")
    info = root / "site" / "edplug-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edplug\nVersion: 0.0.1\n")
    (info / "top_level.txt").write_text("edplug_pkg\n")
    (info / "entry_points.txt").write_text(
        "[tradingd.plugins]\nedplug = edplug_pkg.signals:EdPlug\n"
    )
    (info / "direct_url.json").write_text(
        json.dumps({"dir_info": {"editable": True}, "url": (root / "src").as_uri()})
    )


def test_a_plugins_code_is_recorded_and_an_edit_of_any_of_its_files_changes_it(
    tmp_path, monkeypatch
):
    """An editable plugin's author edits its code and reruns: the same run id, the same
    version, and environment.json said nothing else, so two code versions were one record.
    The digest covers the package's code files (a helper the class imports, not only the
    class's module), not its bytecode cache or other files."""
    import importlib

    from tradingd.config import load_config

    _editable_plugin(tmp_path, "WANT = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    importlib.invalidate_caches()
    config = load_config(
        [{"signals": [{"name": "edplug"}], "sizing": {"name": "equal_weight"}}], env={}
    )
    first = environment(config)
    [mine] = [p for p in first["plugins"] if p["name"] == "edplug"]
    assert (mine["version"], mine["editable"], mine["package"]) == ("0.0.1", True, "edplug_pkg")
    files = first["plugin_code"]["edplug_pkg"]["files"]
    assert sorted(files) == ["__init__.py", "signals.py", "sub/__init__.py", "sub/helper.py"]
    assert first["plugin_code"]["edplug_pkg"]["code"] == mine["code"]
    assert first["plugin_code"]["tradingd_plugins"]["files"]  # the built-ins' too

    # Untouched: the same digest (a rerun on another machine from the same files too).
    assert environment(config)["plugin_code"] == first["plugin_code"]
    pkg = tmp_path / "src" / "edplug_pkg"
    (pkg / "notes.txt").write_text("edited, still not code")
    (pkg / "__pycache__" / "signals.cpython-311.pyc").write_bytes(b"other")
    assert environment(config)["plugin_code"] == first["plugin_code"]

    (pkg / "sub" / "helper.py").write_text("WANT = 2\n")
    second = environment(config)
    [edited] = [p for p in second["plugins"] if p["name"] == "edplug"]
    assert edited["version"] == mine["version"] and edited["code"] != mine["code"]
    changed = second["plugin_code"]["edplug_pkg"]["files"]
    assert [f for f in files if files[f] != changed[f]] == ["sub/helper.py"]


def test_tradingds_own_code_is_recorded_by_file_as_imported(tmp_path, monkeypatch):
    """Two runs made from different uncommitted edits of tradingd (a cost x1.5, then x2.0 in
    brokers/simulated.py) recorded only `uncommitted_changes: true`: compare said "the same
    environment" of two records whose equity differed by the edit."""
    import hashlib
    import importlib
    from pathlib import Path

    import tradingd
    from tradingd import environment as env_module

    recorded = environment()["tradingd_code"]
    assert set(recorded) == {"tradingd", "tradingd_plugins", "tradingd_models"}
    ours = Path(tradingd.__file__).parent  # the code imported, wherever it is installed
    files = recorded["tradingd"]["files"]
    want = hashlib.sha256((ours / "brokers" / "simulated.py").read_bytes()).hexdigest()[:16]
    assert files["brokers/simulated.py"] == want and "__init__.py" in files
    assert not [f for f in files if "__pycache__" in f]

    # An edit of one file changes the package's digest and that file's alone.
    pkg = tmp_path / "ownpkg"
    (pkg / "brokers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "brokers" / "__init__.py").write_text("")
    (pkg / "brokers" / "simulated.py").write_text("COST = 1.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(env_module, "OWN_PACKAGES", ("ownpkg",))
    first = env_module.own_code()["ownpkg"]
    (pkg / "brokers" / "simulated.py").write_text("COST = 2.0\n")
    second = env_module.own_code()["ownpkg"]
    assert first["code"] != second["code"]
    assert [f for f in first["files"] if first["files"][f] != second["files"][f]] == [
        "brokers/simulated.py"
    ]
