"""Setuptools build hook (pyproject.toml's [tool.setuptools.cmdclass]): the built package
records the source commit it was built from, in `tradingd/_build_source.json`.

Why at build time: an installed copy (`pip install .`, the systemd venv, the Docker image)
is not a git checkout, so at run time it could not name its commit, and `tradingd --version`,
environment.json, `tradingd report` and replay-check could not tell two builds of one version
apart. The build is the last moment the checkout is at hand.

Where the commit comes from, first found wins:
1. the git checkout being built (with whether it had uncommitted changes);
2. the record an sdist made of its own checkout (a wheel built from the unpacked sdist,
   as `python -m build` does, has no .git);
3. the TRADINGD_BUILD_COMMIT variable (a Docker build context without .git: the Dockerfile's
   build argument of that name);
else the commit is recorded as unknown, as it was before.

Nothing is written into the source tree: the record goes to the build folder (and for an
editable install nowhere, since the checkout itself is read at run time).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

# Read by tradingd.environment.source_revision; the same name in the built package.
RECORD = "_build_source.json"
# An sdist's copy of the record, beside its pyproject.toml.
SDIST_RECORD = "build_source.json"
ENV = "TRADINGD_BUILD_COMMIT"
# The project root: this file sits beside pyproject.toml (setuptools loads it from there).
ROOT = Path(__file__).resolve().parent
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    # Not the repository of a GIT_DIR the caller's environment names (a build started from
    # a git hook). safe.directory: a root `pip install .` of a user's checkout is refused
    # by git otherwise ("dubious ownership"); the build already runs this tree's code (this
    # file), so trusting its git configuration adds nothing.
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    try:
        return subprocess.run(
            ["git", "-c", f"safe.directory={root}", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=30,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None


def from_checkout(root: Path) -> dict[str, Any] | None:
    """The checkout's HEAD and whether tracked files differ from it; None where `root` is
    not tracked by a checkout (an unpacked sdist, a Docker build context, a copy inside some
    other project's checkout, or no git installed)."""
    listed = _git(root, "ls-files", "--error-unmatch", "pyproject.toml")
    if listed is None or listed.returncode:
        return None
    head = _git(root, "rev-parse", "HEAD")
    if head is None or head.returncode:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    edited = bool(status.stdout.strip()) if status and status.returncode == 0 else None
    return {"commit": head.stdout.strip(), "uncommitted_changes": edited}


def from_environment(environ: dict[str, str]) -> dict[str, Any] | None:
    """TRADINGD_BUILD_COMMIT, a full commit id; unset or empty (a Docker build without the
    argument) is None. A short or malformed id is refused: it would compare unequal with the
    full id of the same commit, and two equal builds would be called different."""
    raw = environ.get(ENV, "").strip()
    if not raw:
        return None
    commit = raw.lower()
    if not _COMMIT.fullmatch(commit):
        raise SystemExit(
            f"{ENV}={raw!r} is not a full git commit id (40 hex digits): set it to the output "
            f"of `git rev-parse HEAD` in the checkout being built, or leave it unset"
        )
    # Whether the build context had edits beyond that commit is not known.
    return {"commit": commit, "uncommitted_changes": None}


def source_record(root: Path, environ: dict[str, str]) -> dict[str, Any]:
    """The record for a build of `root` (see the module's docstring for the order)."""
    found = from_checkout(root)
    how = "git checkout"
    if found is None and (root / SDIST_RECORD).is_file():
        shipped = json.loads((root / SDIST_RECORD).read_text(encoding="utf-8"))
        found, how = (shipped, "sdist") if shipped.get("commit") else (None, how)
    if found is None:
        found, how = from_environment(environ), ENV
    elif environ.get(ENV, "").strip() and environ[ENV].strip().lower() != found["commit"]:
        print(
            f"{ENV} ignored: the {how} being built is at commit {found['commit']}", file=sys.stderr
        )
    if found is None:
        print(
            f"tradingd: building without a source commit (no git checkout, no {ENV}): "
            "`tradingd --version` will say the commit is unknown",
            file=sys.stderr,
        )
        return {"commit": None, "uncommitted_changes": None, "read_from": None}
    return {**found, "read_from": how}


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


class BuildPy(build_py):
    """build_py that adds the source record to the built `tradingd` package (rewritten at
    every build: pip's in-tree builds reuse build/lib)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            _write(self._record_path(), source_record(ROOT, dict(os.environ)))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(self._record_path())]

    def _record_path(self) -> Path:
        return Path(self.build_lib) / "tradingd" / RECORD


class Sdist(sdist):
    """sdist that ships the checkout's record beside pyproject.toml, for the wheel that is
    later built from it without .git."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        record = source_record(ROOT, dict(os.environ))
        if record["commit"]:
            _write(Path(base_dir) / SDIST_RECORD, record)
