"""The program's files are not world-readable (security trial F4): `tradingd` adds 027 to the
umask it was started with, and never loosens a stricter one."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs `main()` as the program does (no argv), with the command replaced by one that reports
# the umask it runs under, from a process started with the umask given.
PROGRAM = """
import os, sys
os.umask(int(sys.argv[1], 8))
folder = sys.argv[2]
import tradingd.__main__ as cli

def report(args):
    made = os.path.join(folder, "made.txt")
    with open(made, "w") as f:
        f.write("x")
    print(oct(os.stat(made).st_mode & 0o777), oct(os.umask(0o077)))
    return 0

cli._command = report
sys.argv = ["tradingd", "config"]
sys.exit(cli.main())
"""


@pytest.mark.parametrize(
    ("started", "mode", "umask"),
    [
        ("022", "0o640", "0o27"),  # the usual default: files were 0644, world-readable
        ("002", "0o640", "0o27"),  # a per-user group's default: group-writable no more
        ("000", "0o640", "0o27"),
        ("077", "0o600", "0o77"),  # an operator's stricter umask is kept as it is
        ("067", "0o600", "0o67"),
    ],
)
def test_the_program_never_makes_world_readable_files(tmp_path, started, mode, umask):
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, started, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.split() == [mode, umask], out.stderr


def test_an_embedded_call_leaves_the_callers_umask_alone(monkeypatch):
    import os

    import tradingd.__main__ as cli

    monkeypatch.setattr(cli, "_command", lambda args: 0)
    old = os.umask(0o022)
    try:
        assert cli.main(["config"]) == 0
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)
