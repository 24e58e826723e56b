"""Which tradingd build made a record: its version and source commit, as `environment()`
reads them.

Why apart: after an upgrade, a run record, a report or a replay-check made by this build
is compared with what another build decided. Every bar a changed feature or rule touches
then differs, and "the code changed" is the first thing to say, before the model, the
config or the data. `tradingd --version`, `tradingd report` and `tradingd replay-check`
name the builds with this one helper.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Build", "build_from_environment", "recorded_build", "this_build"]


@dataclass(frozen=True)
class Build:
    """A build's identity: None where it could not be read (an installed copy built
    without a git checkout or TRADINGD_BUILD_COMMIT has no commit). `recorded_at_build`:
    the commit is the one the package was built from, not a checkout's now; it names the
    same code either way, so it takes no part in comparing builds."""

    version: str | None = None
    commit: str | None = None
    uncommitted_changes: bool | None = None
    recorded_at_build: bool = field(default=False, compare=False)

    @property
    def known(self) -> bool:
        return self.version is not None or self.commit is not None

    def label(self) -> str:
        parts = [f"tradingd {self.version or '(version unknown)'}"]
        if self.commit:
            edited = " with uncommitted changes" if self.uncommitted_changes else ""
            parts.append(f"commit {self.commit[:12]}{edited}")
        return ", ".join(parts)

    def differs_from(self, other: Build) -> bool:
        """Whether the two are known to be other code: by commit where both have one (a
        version number is not bumped per commit), else by version."""
        if self.commit and other.commit:
            return self.commit != other.commit
        if self.version and other.version:
            return self.version != other.version
        return False

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "commit": self.commit,
            "uncommitted_changes": self.uncommitted_changes,
        }


def build_from_environment(env: Mapping[str, Any]) -> Build:
    """The build an `environment()` dict (a record's environment.json) names."""
    packages = env.get("packages")
    version = packages.get("tradingd") if isinstance(packages, Mapping) else None
    source = env.get("source")
    commit = source.get("commit") if isinstance(source, Mapping) else None
    edited = source.get("uncommitted_changes") if isinstance(source, Mapping) else None
    origin = source.get("from") if isinstance(source, Mapping) else None
    return Build(
        version if isinstance(version, str) else None,
        commit if isinstance(commit, str) and commit else None,
        edited if isinstance(edited, bool) else None,
        recorded_at_build=origin == "build",
    )


@functools.cache
def this_build() -> Build:
    """The running build (read once: a git call and package metadata)."""
    from .environment import environment

    return build_from_environment(environment())


# The environment.json files said unreadable (`recorded_build`): the report and its note
# line both ask, and one warning a file says it.
_unreadable_said: set[Path] = set()


def recorded_build(folder: Path) -> Build | None:
    """The build that wrote a run record folder, from its environment.json; None for a
    record without one (older than environment.json) or one that cannot be read. The
    report measures the run without it and goes on, but says so for one that cannot be
    read (`report.environment_unreadable`, naming the file): taken silently as a record
    without one, a record of other code read as comparable with this build's runs."""
    file = folder / "environment.json"
    if not file.exists():
        return None
    from .analysis.run_records import _json_file  # (pandas: only a report reads records)

    try:
        env = _json_file(file)
    except ValueError as exc:
        if file not in _unreadable_said:
            _unreadable_said.add(file)
            import structlog

            structlog.get_logger(__name__).warning(
                "report.environment_unreadable",
                file=str(file),
                reason=str(exc),
                detail="which build made the record is not known: the report cannot say "
                "whether it was made by other code than this build, nor a replay that "
                "differs blame the code",
            )
        return None
    return build_from_environment(env)
