"""Shared fixtures: where the real services and the shared data live, and how to skip.

Integration tests use the real PostgreSQL and Redis on localhost (TRADINGD_TEST_PG_URL and
TRADINGD_TEST_REDIS_URL override the addresses). When a service is unreachable its tests skip
with a reason, unless TRADINGD_REQUIRE_SERVICES=1 (as CI sets), where they fail instead.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRADINGD_SHARED_DATA", ROOT.parent / "shared" / "data"))
SP500_PARQUET = SHARED_DATA / "sp500_daily_1999_2018.parquet"

# The validated-data cache (cache.data, on by default) writes under $XDG_CACHE_HOME: the tests,
# and the CLI processes they start, use a folder of their own, not the user's ~/.cache.
_CACHE_HOME = tempfile.mkdtemp(prefix="tradingd-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)
# The machine-wide account locks (instance_lock.account_lock_dir) likewise: the tests' fake
# Alpacas would leave a lock file a run in ~/.cache/tradingd/locks, and two test workers that
# use one fake address would refuse each other. Per worker; the processes a test starts share it.
_LOCK_DIR = tempfile.mkdtemp(prefix="tradingd-test-locks-")
os.environ["TRADINGD_LOCK_DIR"] = _LOCK_DIR
atexit.register(shutil.rmtree, _LOCK_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _structlog_as_it_was():
    """structlog's configuration is the process's: a test that configured it (the CLI's
    `main` run in-process calls `configure_logging`) left its level filter to the tests after
    it in the same worker, and their `capture_logs` saw no info or debug lines (nine loader
    tests failed, by test order only). Each test leaves it as it found it."""
    import structlog

    configured, before = structlog.is_configured(), structlog.get_config()
    yield
    if structlog.is_configured() == configured and structlog.get_config() == before:
        return
    if configured:
        structlog.configure(**before)
    else:
        structlog.reset_defaults()


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


# The import packages and the checkout folders they are built from.
PACKAGES = (("tradingd", "daemon"), ("tradingd_plugins", "plugins"), ("tradingd_models", "models"))


def stale_install(root: Path = ROOT) -> list[str]:
    """The checkout's source files that differ from the imported package's copy: after
    `pip install .` (not `-e`), an edit in the checkout reached neither `tradingd` nor the
    tests, which passed on the code as installed. Empty for an editable install (the
    checkout is what is imported) and for an install of the checkout as it is."""
    import importlib

    stale = []
    for package, folder in PACKAGES:
        source = root / folder
        try:
            installed = Path(importlib.import_module(package).__file__ or "").parent
        except ImportError:
            continue
        if not source.is_dir() or installed.resolve() == source.resolve():
            continue
        # Every .py file of the folder is in the built package: one the copy lacks was
        # added after the install (and one the checkout lacks, deleted).
        mine = {p.relative_to(source) for p in source.rglob("*.py") if "__pycache__" not in p.parts}
        theirs = {
            p.relative_to(installed)
            for p in installed.rglob("*.py")
            if "__pycache__" not in p.parts
        }
        for rel in sorted(mine | theirs):
            ours, copy = source / rel, installed / rel
            if rel not in mine or rel not in theirs or copy.read_bytes() != ours.read_bytes():
                stale.append(f"{folder}/{rel.as_posix()}")
    return stale


def pytest_configure(config: pytest.Config) -> None:
    stale = stale_install()
    if stale:
        raise pytest.UsageError(
            f"the installed tradingd differs from this checkout in {len(stale)} file(s) "
            f"({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}): the tests would "
            "test the installed copy, not your edits. Install the checkout editable "
            '(pip install -e ".[dev]") or install it again'
        )


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


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "1m"):
    """A tmpfs of `size` mounted at `folder` (made here) for the block, unmounted after: a
    disk that really fills up. Skips the test where mounting is not allowed (not root)."""
    import subprocess

    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"a tmpfs mount is not possible here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def deep_path(base: Path, length: int) -> Path:
    """A folder path of exactly `length` characters under `base` (names of 200 at most): the
    path-length checks' tests, which must not depend on where the temporary folder is."""
    path = str(base)
    while len(path) < length:
        path += "/" + "d" * min(200, length - len(path) - 1)
    assert len(path) == length
    return Path(path)


def make_panel(n_symbols: int = 8, n_bars: int = 300, seed: int = 7, split_at: int | None = 150):
    """A deterministic random-walk universe with one 4-for-1 split, some missing bars and
    dividends: enough to exercise every corporate-action path without the shared data."""
    import numpy as np
    import pandas as pd

    from tradingd.feeds.panel import Panel

    rng = np.random.default_rng(seed)
    times = pd.bdate_range("2020-01-01", periods=n_bars).to_numpy(dtype="datetime64[ns]")
    rets = rng.normal(0.0004, 0.015, size=(n_bars, n_symbols)) + rng.normal(
        0, 0.0008, size=n_symbols
    )
    close = 50.0 * np.exp(np.cumsum(rets, axis=0))
    split = np.ones_like(close)
    if split_at is not None:
        split[split_at, 0] = 4.0
        close[split_at:, 0] /= 4.0
    open_ = close * np.exp(rng.normal(0, 0.004, size=close.shape))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.005, size=close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.005, size=close.shape)))
    volume = rng.integers(100_000, 1_000_000, size=close.shape).astype(float)
    dividend = np.zeros_like(close)
    dividend[60::63, 1] = 0.25
    # The last symbol lists late (no bars before bar 40).
    for arr in (open_, high, low, close, volume):
        arr[:40, -1] = np.nan
    return Panel(
        times=times,
        symbols=tuple(f"S{i:02d}" for i in range(n_symbols)),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        split=split,
        dividend=dividend,
    )


def live_run(engine_config):
    """90 bars through a live engine at 400 a second: 60 of warm-up, 30 traded."""
    import dataclasses

    from tradingd.config import LiveConfig

    panel = make_panel(n_bars=90, split_at=None)
    start = panel.datetimes()[60].date().isoformat()
    return panel, dataclasses.replace(
        engine_config,
        live=LiveConfig(bars_per_second=400.0),
        # Its own run id: a replay of engine_config's may not erase a live run's record.
        run=dataclasses.replace(engine_config.run, start=start, run_id="test-live"),
    )


@pytest.fixture
def synthetic_panel():
    return make_panel()


def engine_toml(tmp_path):
    """The file of `engine_config`: a small, fast configuration writing everything under
    tmp_path (a test that runs the CLI puts its own file after it)."""
    cfg = tmp_path / "engine.toml"
    cfg.write_text(f"""
[run]
run_id = "test-run"
output_dir = "{tmp_path / "runs"}"
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 3, gross_exposure = 0.9 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.3 }}
[orders]
brackets = false
[storage]
url = "sqlite:///{tmp_path / "store.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    return cfg


@pytest.fixture
def engine_config(tmp_path):
    """A small, fast configuration writing everything under tmp_path."""
    from tradingd.config import load_config

    return load_config([engine_toml(tmp_path)], env={})


async def run_engine(config, mode, panel, check=None, plugins=None):
    """Run an engine to the end; returns (engine, result, rows of orders/fills/equity/events).

    `check(engine, bar_index, time)` is called after every bar. `plugins` maps names to extra
    signal plugin classes used instead of the configured signals (test doubles)."""
    from tradingd.app import build_engine

    rows = {}

    async def collect(engine):
        for table in ("orders", "fills", "equity", "order_events"):
            rows[table] = await engine.store.fetch(table, engine.run.run_id)
        rows["bars"] = await engine.store.fetch_bars()

    engine = None

    def on_bar(i, t):
        if check is not None:
            check(engine, i, t)

    if plugins:
        import dataclasses

        from tradingd.config import PluginSpec
        from tradingd.engine import plugins as registry

        eps = dict(registry.available())
        for name, cls in plugins.items():
            eps[name] = _StubEntryPoint(name, cls)
        config = dataclasses.replace(config, signals=tuple(PluginSpec(n) for n in plugins))
        original = registry.available
        registry.available = lambda: eps
        try:
            engine = build_engine(config, mode, panel=panel, on_bar=on_bar, before_stop=collect)
        finally:
            registry.available = original
    else:
        engine = build_engine(config, mode, panel=panel, on_bar=on_bar, before_stop=collect)
    result = await engine.run_until_done()
    return engine, result, rows


class _StubEntryPoint:
    def __init__(self, name, cls):
        self.name, self._cls, self.value = name, cls, f"test:{cls.__name__}"

    def load(self):
        return self._cls


@pytest.fixture
async def fake():
    """The loopback Alpaca trading server (tests/fakes), on this test's event loop."""
    from fakes.alpaca_trading_server import AlpacaTradingFake, need_fixtures

    need_fixtures()
    server = AlpacaTradingFake()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
