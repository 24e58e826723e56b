"""`tradingd reset-halt RUN` against a real daemon process that runs RUN: refused, whatever
broker keys the operator's shell has. The lock it took was the broker account's, derived from
the shell's own Alpaca keys: a shell with keys other than the daemon's (the systemd unit keeps
them in a file only the daemon reads) took another account's lock, answered
`"reset": ["drawdown_guard"]` with exit 0, and the daemon's next bar wrote the halt back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restart_harness import ROOT, start_daemon


def _config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "halt.toml"
    # Slow enough to be running still when the command is tried (a year of bars at 20 a
    # second), halting early (a drawdown of 0.2% halts it for good).
    cfg.write_text(f"""
[run]
name = "halt"
run_id = "halttest"
start = "2016-06-01"
end = "2017-12-31"
[live]
bars_per_second = 20.0
[[risk]]
name = "drawdown_guard"
params = {{ max_drawdown_pct = 0.002, daily_loss_limit_pct = 0.05, recovery = "halt" }}
[storage]
url = "{url}"
[health]
enabled = false
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    return cfg


def _reset_halt(cfg: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    conf = ["-c", str(ROOT / "config/default.toml"), "-c", str(cfg)]
    return subprocess.run(
        [sys.executable, "-m", "tradingd", "reset-halt", *conf, "halttest"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def pg_database(pg_url: str):
    """A PostgreSQL database of its own (the daemon stores in the public schema), dropped
    after."""
    import asyncio
    import uuid

    import asyncpg

    name = f"tradingd_reset_halt_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _stored_plugins(url: str) -> dict:
    """The plugins' states in the run's last stored checkpoint."""
    import asyncio
    import sqlite3

    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = con.execute("SELECT state FROM checkpoints ORDER BY bar_time").fetchall()
        finally:
            con.close()
        return json.loads(rows[-1][0])["plugins"]

    import asyncpg

    async def fetch() -> str:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return await conn.fetchval(
                "SELECT state::text FROM checkpoints ORDER BY bar_time DESC LIMIT 1"
            )
        finally:
            await conn.close()

    return json.loads(asyncio.run(fetch()))["plugins"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'halt.db'}"
    return request.getfixturevalue("pg_database")


def test_reset_halt_is_refused_while_a_daemon_runs_the_run(tmp_path: Path, store_url: str):
    cfg = _config(tmp_path, store_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "TRADINGD_"))}
    # Another account's keys than the daemon's, which runs without any (simulated broker).
    env.update(APCA_API_KEY_ID="AKX", APCA_API_SECRET_KEY="whatever")
    daemon = start_daemon(cfg)
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:  # bounded by the run itself
            if b"risk.restriction_started" in line:
                break
        else:
            pytest.fail("the daemon ended before the drawdown guard halted it")
        refused = _reset_halt(cfg, env)
        assert daemon.poll() is None, "the daemon ended first: the test proves nothing"
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    assert "is in use by another tradingd" in refused.stderr
    assert f"pid {daemon.pid}" in refused.stderr
    assert "POST /reset-halt" in refused.stderr
    assert refused.stdout == ""
    # The daemon gone, the same command lifts the halt its last checkpoint stored.
    assert _stored_plugins(store_url)["drawdown_guard"]["halted"] is not None
    done = _reset_halt(cfg, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["reset"] == ["drawdown_guard"]
    assert _stored_plugins(store_url)["drawdown_guard"]["halted"] is None


def _lock_sessions(url: str, terminate: bool = False) -> int:
    """The advisory locks the daemon's lock sessions hold (its instance lock and its run's
    lock); with `terminate`, their sessions are ended first (what a PostgreSQL restart does
    to them) and 0 is returned."""
    import asyncio

    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            if terminate:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'tradingd instance lock' "
                    "AND datname = current_database()"
                )
                return 0
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND a.application_name = 'tradingd instance lock' "
                    "AND a.datname = current_database()"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(run())


def test_reset_halt_is_refused_after_the_daemon_s_lock_sessions_ended(
    tmp_path: Path, pg_database: str
):
    """A PostgreSQL restart (here: its lock sessions ended) freed the run's lock, which the
    daemon never took again (only its instance lock was watched): `reset-halt` from a shell
    with other keys then answered `"reset": ["drawdown_guard"]`, exit 0, behind the running
    daemon's back (its next bar wrote the halt back). The daemon now takes the run's lock
    again at once, and the command is refused as before the restart."""
    import time

    cfg = _config(tmp_path, pg_database)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "TRADINGD_"))}
    env.update(APCA_API_KEY_ID="AKX", APCA_API_SECRET_KEY="whatever")
    daemon = start_daemon(cfg)
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:  # bounded by the run itself
            if b"risk.restriction_started" in line:
                break
        else:
            pytest.fail("the daemon ended before the drawdown guard halted it")
        held = _lock_sessions(pg_database)
        assert held == 2  # the instance lock and the run's lock
        _lock_sessions(pg_database, terminate=True)
        deadline = time.monotonic() + 10
        while _lock_sessions(pg_database) < held and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = _reset_halt(cfg, env)
        assert daemon.poll() is None, "the daemon ended first: the test proves nothing"
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
    assert refused.returncode == 2, refused.stdout + refused.stderr[-2000:]
    assert "is in use by another tradingd" in refused.stderr
    assert f"pid {daemon.pid}" in refused.stderr
    assert refused.stdout == ""
