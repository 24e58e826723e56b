"""`python -m tests.fakes` (tests/fakes/__main__.py), the operator's launcher of the vendor
fakes, as a process: it prints settings that tradingd's own configuration reads as the
fakes' loopback addresses and keys, the fakes answer there with those keys, and SIGTERM stops
them with exit 0. Refusals (a non-loopback host, missing fixtures) exit 2 naming the fix."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest
from fakes.alpaca_trading_server import need_fixtures

from tradingd.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, "-m", "tests.fakes"]


def _lines(stream: IO[str]) -> queue.Queue[str | None]:
    """The stream's lines as they come (None at its end), read on a thread, so the test
    waits for the launcher's output with a deadline instead of a blocking readline."""
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _settings(proc: subprocess.Popen[str]) -> dict[str, str]:
    """The `export NAME=value` lines printed before `# ready`."""
    assert proc.stdout is not None
    lines = _lines(proc.stdout)
    settings: dict[str, str] = {}
    while True:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError("the launcher printed no `# ready` within 60 s") from None
        if line is None:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the launcher ended before `# ready`: {stderr[-2000:]}")
        if line.startswith("# ready"):
            return settings
        if line.startswith("export "):
            name, _, value = shlex.split(line, comments=True)[1].partition("=")
            settings[name] = value


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_launcher_prints_settings_serves_on_loopback_and_stops_on_sigterm() -> None:
    need_fixtures()
    proc = subprocess.Popen(
        [*LAUNCH, "--alpaca", "--yahoo", "--alphavantage"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        env = _settings(proc)

        # tradingd's own configuration reads them over the README's files: every name is a
        # key it knows.
        config = load_config([ROOT / "config/default.toml", ROOT / "config/paper.toml"], env=env)
        alpaca = config.broker.alpaca
        assert config.broker.kind == "alpaca" and alpaca.is_loopback
        assert config.feed.source == "yahoo"
        urls = {
            "trading": alpaca.base_url,
            "data": alpaca.data_url,
            "yahoo": config.feed.yahoo.base_url,
            "alphavantage": config.feed.alphavantage.base_url,
        }
        assert config.feed.alpaca.base_url == urls["data"]
        assert {urlsplit(u).hostname for u in urls.values()} == {"127.0.0.1"}
        assert len({urlsplit(u).port for u in urls.values()}) == 4, urls
        assert alpaca.stream_url == "ws" + urls["trading"].removeprefix("http") + "/stream"

        # Each fake answers there, with the printed keys.
        keys = {
            "APCA-API-KEY-ID": env["APCA_API_KEY_ID"],
            "APCA-API-SECRET-KEY": env["APCA_API_SECRET_KEY"],
        }
        status, body = _get(f"{urls['trading']}/v2/account", keys)
        assert status == 200 and float(json.loads(body)["cash"]) > 0, body
        status, body = _get(f"{urls['data']}/v2/stocks/bars?symbols=AAPL&timeframe=1Day", keys)
        assert status == 200 and json.loads(body)["bars"]["AAPL"], body
        status, body = _get(f"{urls['yahoo']}/v8/finance/chart/AAPL?interval=1d&range=5d")
        assert status == 200 and json.loads(body)["chart"]["result"][0]["timestamp"], body
        av_key = env["ALPHA_VANTAGE_API_KEY"]
        status, body = _get(
            f"{urls['alphavantage']}/query?function=TIME_SERIES_DAILY&symbol=AAPL&apikey={av_key}"
        )
        assert status == 200 and json.loads(body)["Time Series (Daily)"], body
        # Without the keys the fake Alpaca refuses, as Alpaca does.
        assert _get(f"{urls['trading']}/v2/account")[0] == 403

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        with pytest.raises(urllib.error.URLError):
            _get(f"{urls['yahoo']}/v8/finance/chart/AAPL?interval=1d&range=5d")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--yahoo", "--host", "0.0.0.0"], {}, "--allow-non-loopback"),
        (["--alpaca"], {"TRADINGD_SHARED_FIXTURES": "/nonexistent"}, "TRADINGD_SHARED_FIXTURES"),
        ([], {}, "--alpaca, --yahoo and/or --alphavantage"),
    ],
)
def test_launcher_refuses_with_the_fix_named(
    args: list[str], env: dict[str, str], said: str
) -> None:
    done = subprocess.run(
        [*LAUNCH, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert "# ready" not in done.stdout
