"""`tradingd run` on a Yahoo feed whose warm-up Yahoo can never serve: 5-minute bars older
than 60 days, which Yahoo refuses with HTTP 422 every time. The warm-up raised RetryableError
and the engine retried it without end (`warmup.retry`, backoff to 60 s): the daemon never went
live and never said why it could not. It exits now, and the operator reads on stderr and in
the last log line which vendor refused what, and what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakes import BarBook
from fakes.yahoo_server import YahooFake

from tradingd.__main__ import EX_CONFIG

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def yahoo_url():
    fake = YahooFake(BarBook(now=datetime.now(UTC)))  # the daemon runs on the real clock
    url = fake.start_in_thread()
    try:
        yield url
    finally:
        fake.stop_thread()


def exit_code_or_retried(proc: subprocess.Popen, stderr: Path, timeout_s: float) -> int | None:
    """The process's exit code; None as soon as its warm-up is retried a second time (the
    old behaviour, for good) or when `timeout_s` passes first."""
    for _ in range(int(timeout_s / 0.2)):
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stderr.read_text().count('"warmup.retry"') >= 2:
                return None
    return None


def test_a_warm_up_yahoo_refuses_for_good_stops_the_daemon_and_says_why(yahoo_url, tmp_path):
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[run]
name = "warmrefused"
[data]
symbols = ["AAA", "BBB"]
[feed]
source = "yahoo"
[feed.yahoo]
base_url = "{yahoo_url}"
[live]
bar = "5m"
delay_s = 5.0
warmup_bars = 6000  # about 77 sessions of 5-minute bars: beyond Yahoo's 60 days
[storage]
url = "sqlite:///{tmp_path / "run.db"}"
[health]
port = 0
[log]
audit_dir = "{tmp_path / "audit"}"
format = "json"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    env.pop("TRADINGD_REQUIRE_SERVICES", None)
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tradingd", "run", "-c", str(ROOT / "config/default.toml"),
             "-c", str(cfg)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            code = exit_code_or_retried(proc, stderr, timeout_s=120)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    text = stderr.read_text()
    assert code is not None, (
        f"the warm-up was retried instead: {text.count('warmup.retry')} warmup.retry line(s)"
    )
    # A configuration mistake (EX_CONFIG, not restarted by systemd): a restart asked the
    # same and was refused the same; it exited 2, restarted until the start limit.
    assert code == EX_CONFIG  # an error of the run, named (not a crash: 1)
    printed = [line for line in text.splitlines() if line.startswith("tradingd: error:")]
    assert len(printed) == 1
    for said in ("yahoo", "5m", "60 days", "live.warmup_bars", "feed.source"):
        assert said in printed[0], said
    logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    last = [e for e in logged if e.get("event") == "tradingd.exit"]
    assert last and last[-1]["level"] == "error" and "60 days" in last[-1]["reason"]
    assert last[-1]["phase"] == "warm-up"
    assert not [e for e in logged if e.get("event") == "warmup.retry"]
