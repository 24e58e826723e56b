#!/usr/bin/env python3
"""Run the test suite by category: a thin wrapper over pytest markers, with coverage.

    python tests/test_runner.py --category all|unit|integration|performance [--save]

Categories follow the folders (tests/unit, tests/integration, tests/performance); `--save`
also writes a JUnit XML report to var/test-results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("unit", "integration", "performance", "all")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", choices=CATEGORIES, default="all")
    ap.add_argument("--save", action="store_true", help="write a JUnit XML report")
    ap.add_argument("--no-cov", action="store_true", help="skip coverage measurement")
    ap.add_argument("pytest_args", nargs="*", help="passed through to pytest")
    args = ap.parse_args(argv)

    cmd = [str(ROOT / "tests"), "-q", "-rs", "-p", "no:cacheprovider"]
    if args.category != "all":
        cmd += ["-m", args.category]
    if not args.no_cov:
        cmd += ["--cov=tradingd", "--cov=tradingd_plugins", "--cov-report=term:skip-covered"]
    if args.save:
        out = ROOT / "var" / "test-results"
        out.mkdir(parents=True, exist_ok=True)
        cmd += [f"--junitxml={out / f'{args.category}.xml'}"]
    cmd += args.pytest_args
    return pytest.main(cmd)


if __name__ == "__main__":
    sys.exit(main())
