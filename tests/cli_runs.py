"""`tradingd` run in-process by the CLI tests: a small config, a clean environment, steps a
check must never reach replaced by a tripwire (one place; the CLI-validation, train-mistake
and report tests each wrote their own)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tradingd.__main__ import EX_CONFIG, main


class Tripwire(Exception):
    """Raised by a replaced step that the checks must prevent from ever running."""


def config_error_code(command: str) -> int:
    """How `command` exits on a configuration mistake: 78 (EX_CONFIG) for the commands the
    systemd units run, which do not restart it; 2 for every other command."""
    return EX_CONFIG if command in ("run", "retrain") else 2


def write_config(tmp_path: Path, extra: str = "") -> Path:
    """A one-year run over the bundled data, its store, runs and audit log under tmp_path."""
    p = tmp_path / "small.toml"
    p.write_text(f"""
[run]
start = "2017-01-01"
end = "2017-12-31"
output_dir = "{tmp_path / "runs"}"
[storage]
url = "sqlite:///{tmp_path / "cli.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
{extra}
""")
    return p


def tripwires(monkeypatch: pytest.MonkeyPatch, steps: list[tuple[object, str]], what: str) -> None:
    """Each (module, name) replaced by a function raising Tripwire(what)."""

    def trip(*_a: object, **_k: object) -> None:
        raise Tripwire(what)

    for module, name in steps:
        monkeypatch.setattr(module, name, trip)


def in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """`main(argv)` in tmp_path, without the shell's service URLs and TRADINGD_* settings
    (CI's TRADINGD_REQUIRE_SERVICES kept): returns (exit code, stdout, stderr). The logging
    configuration `main` sets is undone by conftest's `_structlog_as_it_was`."""
    for name in list(os.environ):
        if name in ("DATABASE_URL", "REDIS_URL") or (
            name.startswith("TRADINGD_") and name != "TRADINGD_REQUIRE_SERVICES"
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
