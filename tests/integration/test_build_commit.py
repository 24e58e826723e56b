"""The source commit a built package records (build_commit.py, the setuptools build hook), and
what an installed copy says of it.

Installed with the README's `pip install ".[dev]"` (non-editable), the systemd venv or the
Docker image, tradingd is no git checkout: `--version` said "commit unknown", environment.json
had `"source": null`, and two builds of version 0.1.0 could never be told apart. Here real
wheels are built from a copy of this tree (as pip builds it: in-tree, setuptools.build_meta,
without build isolation where this environment's setuptools can build the project) and read
as an installed copy reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tradingd.build_info import Build, build_from_environment
from tradingd.environment import source_revision

ROOT = Path(__file__).resolve().parents[2]
# What pyproject.toml builds from (MANIFEST.in and build_commit.py: the hook).
BUILD_INPUTS = ("pyproject.toml", "README.md", "MANIFEST.in", "build_commit.py")
PACKAGES = ("daemon", "plugins", "models")
# Where the hook leaves the record in the built package (environment.BUILD_RECORD reads it).
RECORD = "tradingd/_build_source.json"


def _clean_env(**extra: str) -> dict[str, str]:
    drop = ("TRADINGD_BUILD_COMMIT", "GIT_DIR", "GIT_WORK_TREE", "PYTHONPATH")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=_clean_env(),
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def backend() -> dict[str, str]:
    """The environment a build runs in: this one, whose setuptools must build the project
    (pyproject.toml requires >= 77, for the license field; the dev extra installs it). A test
    does not download one: nothing may reach the network at test time."""
    version = metadata.version("setuptools")
    if int(version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {version} cannot build this project: pip install '.[dev]'")
    return {}


def _pip_wheel(
    src: Path, out: Path, backend: dict[str, str], **env: str
) -> subprocess.CompletedProcess[str]:
    """`pip wheel` of `src` as `pip install .` builds it (in-tree, setuptools.build_meta),
    without build isolation: nothing is fetched, the backend is `backend`'s."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    return subprocess.run(
        [*cmd, "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_clean_env(**backend, **env),
    )


def _build(src: Path, out: Path, backend: dict[str, str], **env: str) -> Path:
    done = _pip_wheel(src, out, backend, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("tradingd-*.whl")
    return wheel


def _record(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as zf:
        return json.loads(zf.read(RECORD))


def _installed(wheel: Path, where: Path) -> Path:
    """The wheel unpacked as pip installs a pure-Python wheel into site-packages."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(where)
    return where


def _build_of(site: Path) -> Build:
    """The build an installed copy names in its environment.json."""
    version = metadata.version("tradingd")
    return build_from_environment(
        {"packages": {"tradingd": version}, "source": source_revision(site / "tradingd")}
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This tree's build inputs in a folder of their own, without .git (as a Docker build
    context has them)."""
    src = tmp_path_factory.mktemp("build") / "tradingd-src"
    src.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    return src


@pytest.fixture(scope="module")
def checkout(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git checkout of the tree, with two commits of one version."""
    repo = tmp_path_factory.mktemp("checkout") / "tradingd"
    shutil.copytree(tree, repo)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


@pytest.fixture(scope="module")
def git_builds(
    checkout: Path, backend: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The checkout's first and second commit, each built into a wheel, then a build with a
    tracked file edited after the second (all in-tree, so later builds reuse the first's
    build/ folder, as pip's in-tree builds do)."""
    out = tmp_path_factory.mktemp("wheels")
    first = _git(checkout, "rev-parse", "HEAD")
    wheel_a = _build(checkout, out / "a", backend)
    readme = checkout / "README.md"
    readme.write_text(readme.read_text() + "\nA later commit.\n")
    _git(checkout, "commit", "-q", "-am", "second")
    second = _git(checkout, "rev-parse", "HEAD")
    wheel_b = _build(checkout, out / "b", backend)
    readme.write_text(readme.read_text() + "\nNot committed.\n")
    wheel_edited = _build(checkout, out / "edited", backend)
    _git(checkout, "checkout", "-q", "--", "README.md")
    return {"first": first, "second": second, "a": wheel_a, "b": wheel_b, "edited": wheel_edited}


def test_a_wheel_built_from_a_git_checkout_records_its_head_and_the_install_names_it(
    git_builds: dict[str, Any], tmp_path: Path
):
    first, second = git_builds["first"], git_builds["second"]
    assert first != second
    assert _record(git_builds["a"])["commit"] == first
    assert _record(git_builds["a"])["uncommitted_changes"] is False
    assert _record(git_builds["b"])["commit"] == second
    edited = _record(git_builds["edited"])
    assert (edited["commit"], edited["uncommitted_changes"]) == (second, True)

    site = _installed(git_builds["a"], tmp_path / "site")
    assert source_revision(site / "tradingd") == {
        "commit": first,
        "uncommitted_changes": False,
        "from": "build",
    }
    # `tradingd --version` of the installed copy, in a process that imports it from there.
    code = (
        "import sys, tradingd; from tradingd.__main__ import main\n"
        f"assert tradingd.__file__.startswith({str(site)!r}), tradingd.__file__\n"
        "main(['--version'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(site)),
    )
    assert done.returncode == 0, done.stderr
    version = metadata.version("tradingd")
    assert done.stdout.strip() == (
        f"tradingd {version}, commit {first[:12]} (recorded when the package was built)"
    )


def test_two_installed_builds_of_one_version_are_told_apart_by_their_commits(
    git_builds: dict[str, Any], tmp_path: Path
):
    """What `tradingd report`, replay-check and the Upgrading check compare: with no commit
    both were "tradingd 0.1.0", never different."""
    a = _build_of(_installed(git_builds["a"], tmp_path / "a"))
    b = _build_of(_installed(git_builds["b"], tmp_path / "b"))
    again = _build_of(_installed(git_builds["a"], tmp_path / "a-again"))
    assert a.version == b.version
    assert (a.commit, b.commit) == (git_builds["first"], git_builds["second"])
    assert a.recorded_at_build and b.recorded_at_build
    assert a.differs_from(b) and b.differs_from(a)
    assert not a.differs_from(again)


def test_without_git_the_build_takes_tradingd_build_commit_and_refuses_a_short_one(
    tree: Path, backend: dict[str, str], tmp_path: Path
):
    """A Docker build context has no .git: the Dockerfile's build argument names the commit.
    Without it, or any checkout, the build records none, as before."""
    commit = "c0ffee" * 6 + "abcd"
    wheel = _build(tree, tmp_path / "env", backend, TRADINGD_BUILD_COMMIT=commit.upper())
    assert _record(wheel)["commit"] == commit
    site = _installed(wheel, tmp_path / "site")
    assert source_revision(site / "tradingd") == {
        "commit": commit,
        "uncommitted_changes": None,  # edits in the context beyond the commit: not known
        "from": "build",
    }

    short = _pip_wheel(tree, tmp_path / "short", backend, TRADINGD_BUILD_COMMIT="c0ffee1")
    assert short.returncode != 0
    assert "TRADINGD_BUILD_COMMIT='c0ffee1' is not a full git commit id" in (
        short.stdout + short.stderr
    )

    unknown = _build(tree, tmp_path / "none", backend)
    assert _record(unknown)["commit"] is None
    assert source_revision(_installed(unknown, tmp_path / "site-none") / "tradingd") is None


def test_a_wheel_built_from_the_sdist_keeps_the_checkouts_commit(
    checkout: Path, git_builds: dict[str, Any], backend: dict[str, str], tmp_path: Path
):
    """`python -m build` makes the sdist, then the wheel from the unpacked sdist, which has
    no .git: the sdist carries the checkout's record."""
    sdists = tmp_path / "sdist"
    sdists.mkdir()
    make = "import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", make, str(sdists)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=checkout,
        env=_clean_env(**backend),
    )
    assert done.returncode == 0, done.stderr
    (sdist,) = sdists.glob("*.tar.gz")
    shutil.unpack_archive(sdist, tmp_path / "unpacked")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    assert not (unpacked / ".git").exists()
    record = _record(_build(unpacked, tmp_path / "wheel", backend))
    assert (record["commit"], record["uncommitted_changes"]) == (git_builds["second"], False)


def _hook():  # build_commit.py: at the project root, where setuptools loads it from
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_commit", ROOT / "build_commit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a checkout owned by another user")
def test_a_root_install_of_another_users_checkout_still_records_its_commit(checkout: Path):
    """`sudo pip install .` of a user's checkout (systemd/README.md): git refuses a checkout
    owned by another user ("dubious ownership"), and the build would record no commit."""
    head = _git(checkout, "rev-parse", "HEAD")
    shutil.chown(checkout, user="nobody")
    shutil.chown(checkout / ".git", user="nobody")
    try:
        refused = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        assert "dubious ownership" in refused.stderr  # what git does without the hook's trust
        assert _hook().from_checkout(checkout)["commit"] == head
    finally:
        shutil.chown(checkout, user=0)
        shutil.chown(checkout / ".git", user=0)


def test_the_docker_build_stage_has_the_hook_and_the_commit_argument():
    """No Docker engine here: the Dockerfile's build stage must copy what the build runs (the
    hook) and pass TRADINGD_BUILD_COMMIT to it, and the docs' build command must set it."""
    build_stage = (ROOT / "Dockerfile").read_text().split("FROM ")[1]
    copied = " ".join(line for line in build_stage.splitlines() if line.startswith("COPY "))
    assert all(name in copied.split() for name in BUILD_INPUTS)
    arg = build_stage.index("ARG TRADINGD_BUILD_COMMIT")
    assert arg < build_stage.index("RUN pip wheel")
    command = "docker build --build-arg TRADINGD_BUILD_COMMIT=$(git rev-parse HEAD) -t tradingd ."
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / "Dockerfile").read_text()


def _upgrade_commands() -> list[str]:
    """The commands systemd/README.md's upgrade runs in the checkout, in order."""
    text = (ROOT / "systemd" / "README.md").read_text()
    block = text[text.index("To upgrade,") : text.index("Check\n`tradingd --version`")]
    return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.startswith("    ")]


def test_the_documented_upgrade_installs_no_module_the_new_commit_deleted(
    tree: Path, backend: dict[str, str], tmp_path: Path
) -> None:
    """Sandbox trial: the upgrade step `pip install .` from the same checkout after a git
    pull installed modules the pull had deleted: setuptools builds in the checkout's build/
    folder and copies what it finds in build/lib into the new wheel. The documented
    commands, run here between two in-tree builds, leave no deleted module in the second."""
    commands = _upgrade_commands()
    install = next(i for i, c in enumerate(commands) if "/venv/bin/pip install ." in c)
    cleanup = [c.removeprefix("sudo ") for c in commands[:install] if c != "git pull"]
    assert cleanup, commands
    src = tmp_path / "checkout"
    shutil.copytree(tree, src)
    gone = src / "daemon" / "zz_deleted_upstream.py"
    gone.write_text("DELETED = True\n")
    with zipfile.ZipFile(_build(src, tmp_path / "old", backend)) as zf:
        assert "tradingd/zz_deleted_upstream.py" in zf.namelist()  # the old install had it
    gone.unlink()  # the pull
    for command in cleanup:
        subprocess.run(command, shell=True, cwd=src, check=True, timeout=60)
    with zipfile.ZipFile(_build(src, tmp_path / "new", backend)) as zf:
        assert "tradingd/zz_deleted_upstream.py" not in zf.namelist()
