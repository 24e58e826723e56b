#!/usr/bin/env python3
"""Run the test suite by category: a thin wrapper over pytest markers.

    python tests/test_runner.py --category all|unit|integration|performance [--save]
        [--workers N] [--cov] [-- pytest arguments]

Categories follow the folders (tests/unit, tests/integration, tests/performance); `--save`
also writes a JUnit XML report to var/test-results/.

The tests run in one pytest worker per CPU (pytest-xdist, in the dev extra): many of them
wait on daemons, servers and databases of their own (on a 2-CPU VM: 805 s with 2 workers
without coverage, against 1,212 s in one process with coverage, the old default).
`--workers 1` runs them in this process (a debugger, `-x`, output in test order).
Coverage is measured only with `--cov`: under Python 3.11's tracer it doubles the time of
the CPU-bound tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("unit", "integration", "performance", "all")


def available_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def workers_arg(text: str) -> int:
    try:
        n = available_cpus() if text == "auto" else int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers must be >= 1 or 'auto', got {text!r}")
    return n


def pytest_command(args: argparse.Namespace, have_xdist: bool) -> list[str]:
    # A test file or folder after `--` is what to run: the whole tests/ folder was added in
    # front of it, so `-- tests/integration/test_restart_kill.py` ran all 2,000 tests.
    named = any(
        not a.startswith("-") and Path(a.split("::", 1)[0]).exists() for a in args.pytest_args
    )
    cmd = ([] if named else [str(ROOT / "tests")]) + ["-q", "-rs", "-p", "no:cacheprovider"]
    if args.category != "all":
        cmd += ["-m", args.category]
    if args.workers > 1:
        if not have_xdist:
            print(
                "test_runner: pytest-xdist is not installed (pip install '.[dev]'): "
                "running the tests in one process",
                file=sys.stderr,
            )
        else:
            # worksteal: an idle worker takes queued tests from a busy one, so the long
            # daemon tests do not all end up at the tail of one worker.
            cmd += ["-n", str(args.workers), "--dist", "worksteal"]
    if args.cov:
        cmd += ["--cov=tradingd", "--cov=tradingd_plugins", "--cov-report=term:skip-covered"]
    if args.save:
        out = ROOT / "var" / "test-results"
        out.mkdir(parents=True, exist_ok=True)
        cmd += [f"--junitxml={out / f'{args.category}.xml'}"]
    return cmd + args.pytest_args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", choices=CATEGORIES, default="all")
    ap.add_argument("--save", action="store_true", help="write a JUnit XML report")
    ap.add_argument(
        "--workers",
        type=workers_arg,
        default="auto",
        help="pytest worker processes (default: one per available CPU; 1: this process)",
    )
    ap.add_argument("--cov", action="store_true", help="measure and report coverage")
    ap.add_argument("--no-cov", dest="cov", action="store_false", help="no coverage (the default)")
    ap.add_argument("pytest_args", nargs="*", help="passed through to pytest")
    args = ap.parse_args(argv)
    have_xdist = importlib.util.find_spec("xdist") is not None
    return pytest.main(pytest_command(args, have_xdist))


if __name__ == "__main__":
    sys.exit(main())
