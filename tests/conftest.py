"""Shared fixtures: where the real services and the shared data live, and how to skip.

Integration tests use the real PostgreSQL and Redis on localhost (TRADINGD_TEST_PG_URL and
TRADINGD_TEST_REDIS_URL override the addresses). When a service is unreachable its tests skip
with a reason, unless TRADINGD_REQUIRE_SERVICES=1 (as CI sets), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRADINGD_SHARED_DATA", ROOT.parent / "shared" / "data"))
SP500_PARQUET = SHARED_DATA / "sp500_daily_1999_2018.parquet"

PG_URL = os.environ.get("TRADINGD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRADINGD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _reachable(url: str, default_port: int) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), 2):
            return True
    except OSError:
        return False


def _need(service: str, url: str, port: int) -> None:
    if _reachable(url, port):
        return
    msg = f"{service} not reachable at {url}"
    if os.environ.get("TRADINGD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{msg}, and TRADINGD_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(msg)


@pytest.fixture
def pg_url() -> str:
    _need("PostgreSQL", PG_URL, 5432)
    return PG_URL


@pytest.fixture
def redis_url() -> str:
    _need("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
def sp500_parquet() -> Path:
    if not SP500_PARQUET.exists():
        pytest.skip(f"shared data not present at {SP500_PARQUET}")
    return SP500_PARQUET


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its folder so the runner can pick categories by marker."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for category in ("unit", "integration", "performance"):
            if category in parts:
                item.add_marker(getattr(pytest.mark, category))


@pytest.fixture
def run_async():
    """For hypothesis tests, which cannot be async themselves."""
    return asyncio.run
