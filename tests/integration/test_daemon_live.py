"""The live daemon end to end, as a process: `tradingd run` against loopback servers that
answer like Yahoo (market data) and Alpaca (orders, the trade-updates stream), with the real
PostgreSQL and Redis. Bars are pulled, features and signals computed, orders sent to Alpaca,
fills received over the stream, positions and equity stored; /ready, /metrics and /status are
read over HTTP while it runs. Mid-run the data source goes down for several bars and one
symbol of the universe is unknown to it: the daemon stays up, says what is wrong, and
recovers by itself when the source returns."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "NOPE"]  # NOPE: unknown to the data vendor
TOKEN = "test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    # The daemon has a token: /status and /metrics need it (/health and /ready do not).
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fakes():
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes import BarBook
    from fakes.alpaca_trading_server import AlpacaTradingFake, need_fixtures
    from fakes.yahoo_server import YahooFake

    need_fixtures()
    book = BarBook()
    yahoo = YahooFake(book)
    alpaca = AlpacaTradingFake(cash=100_000.0)
    yahoo_url = yahoo.start_in_thread()
    alpaca.start_in_thread()
    # The market: every open order fills at the book's price.
    stop = alpaca.fill_open_orders_every(lambda sym: book.value(sym, book.now), 0.1)
    try:
        yield book, yahoo, yahoo_url, alpaca, stop
    finally:
        stop.set()
        yahoo.stop_thread()
        alpaca.stop_thread()


def test_daemon_trades_live_against_vendor_and_broker_servers(fakes, pg_url, redis_url, tmp_path):
    _book, yahoo, yahoo_url, alpaca, market_closed = fakes
    port = _free_port()
    run_id = f"e2e-{os.getpid()}-{int(time.time())}"
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[run]
name = "e2e"
run_id = "{run_id}"
start = "2024-01-02"
end = "2024-08-30"
output_dir = "{tmp_path / "runs"}"
[data]
symbols = {json.dumps(SYMBOLS)}
[feed]
source = "yahoo"
[feed.yahoo]
base_url = "{yahoo_url}"
[feed.yahoo.call]
max_attempts = 2
backoff_base_s = 0.01
backoff_max_s = 0.05
breaker_failure_threshold = 3
breaker_reset_timeout_s = 0.5
[broker]
kind = "alpaca"
[broker.alpaca]
base_url = "{alpaca.url}"
stream_url = "{alpaca.stream_url}"
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 3, gross_exposure = 0.9 }}
[orders]
brackets = false  # the id comparisons below count one Alpaca order per engine order
[live]
bars_per_second = 3.0
warmup_bars = 60
[storage]
url = "{pg_url}"
flush_interval_s = 0.2
[cache]
url = "{redis_url}"
[health]
port = {port}
[log]
audit_dir = "{tmp_path / "audit"}"
format = "json"
""")
    env = {
        **os.environ,
        "APCA_API_KEY_ID": alpaca.key_id,
        "APCA_API_SECRET_KEY": alpaca.secret_key,
        "TRADINGD_HEALTH_TOKEN": TOKEN,
    }
    env.pop("TRADINGD_REQUIRE_SERVICES", None)
    # Another process subscribes to the daemon's channels (bars, signals, orders, fills).
    import redis as redis_sync

    subscriber = redis_sync.Redis.from_url(redis_url).pubsub()
    subscriber.psubscribe(f"tradingd:{run_id}:*")
    err = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradingd", "run", "-c", str(ROOT / "config/default.toml"),
         "-c", str(cfg)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        status = lambda: json.loads(_get(f"{base}/status")[1])  # noqa: E731

        def traded() -> dict | None:
            try:
                s = status()
            except (OSError, ValueError):
                return None
            return s if s.get("positions") and s.get("bars", 0) >= 8 else None

        s = _wait(traded, 90, "positions at the broker after several live bars", proc)
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:  # no token needed
            assert r.status == 200
        assert set(s["positions"]) <= set(SYMBOLS) - {"NOPE"}

        published: dict[str, list[dict]] = {}

        def received_every_kind() -> bool:
            while (msg := subscriber.get_message(timeout=0.05)) is not None:
                if msg["type"] == "pmessage":
                    kind = msg["channel"].decode().rsplit(":", 1)[1]
                    published.setdefault(kind, []).append(json.loads(msg["data"]))
            return {"bars", "signals", "orders", "fills", "state"} <= published.keys()

        _wait(received_every_kind, 30, "bars, signals, orders, fills on Redis channels", proc)
        fill = published["fills"][0]
        assert fill["run_id"] == run_id and fill["data"]["fills"][0]["symbol"] in SYMBOLS
        assert set(published["bars"][-1]["data"]["bars"]) <= set(SYMBOLS)
        subscriber.close()
        assert s["equity"] > 0 and s["last_bar_time"].startswith("2024-")

        # Readiness names what is wrong: the unknown symbol has no data.
        code, body = _get(f"{base}/ready")
        ready = json.loads(body)
        assert code == 503 and ready["failing"] == ["feed"], body
        assert ready["checks"]["broker"]["ok"] and ready["checks"]["last_bar"]["ok"]
        assert "NOPE" in json.dumps(ready["checks"]["feed"])

        # The source goes down for several bars: the daemon stays up and says so.
        bars_before = status()["bars"]
        # 503 for the next 12 requests: with retries and the circuit breaker's probes (one
        # per breaker_reset_timeout_s once open) that is an outage of several bars.
        yahoo.faults.down(12)

        def errors_seen() -> bool:
            text = _get(f"{base}/metrics")[1]
            return 'tradingd_source_errors_total{kind="http_5xx",source="yahoo"}' in text

        _wait(errors_seen, 30, "5xx errors of the source in /metrics", proc)
        assert proc.poll() is None, "the daemon must survive a source outage"

        # ... and recovers by itself: bars keep coming after the outage.
        _wait(lambda: status()["bars"] >= bars_before + 5, 60, "bars after the outage", proc)
        from prometheus_client.parser import text_string_to_metric_families

        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(_get(f"{base}/metrics")[1])
            for s in family.samples
        }
        assert samples[("tradingd_bars_processed_total", ())] > 5
        assert samples[("tradingd_stage_seconds_count", (("stage", "total"),))] > 5
        assert samples[("tradingd_orders_total", (("status", "filled"),))] > 0
        assert samples[("tradingd_source_calls_total", (("source", "yahoo"),))] > 5
        assert samples[("tradingd_equity", ())] > 0

        # Operator controls, with the token: pause stops new orders, flatten sells
        # everything (and stays paused), resume trades again.
        def post(path: str, token: str | None = TOKEN) -> tuple[int, dict]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            req = urllib.request.Request(f"{base}{path}", method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, {}

        assert post("/pause", token=None)[0] == 401
        assert post("/pause", token="wrong-token-0123456789")[0] == 401
        code, answer = post("/pause")
        assert code == 200 and status()["trading_state"] == "paused", answer
        posted = len(alpaca.posted_orders())
        seen = status()["bars"]
        _wait(lambda: status()["bars"] >= seen + 3, 30, "bars while paused", proc)
        assert len(alpaca.posted_orders()) == posted  # nothing new was sent
        assert post("/flatten")[0] == 200
        # Flat and paused: the flatten bar has been carried out (a protective exit may have
        # emptied the book before it).
        _wait(
            lambda: not status()["positions"] and status()["trading_state"] == "paused",
            30,
            "a flat, paused book after /flatten",
            proc,
        )
        assert post("/resume")[0] == 200 and status()["trading_state"] == "active"
        _wait(lambda: status()["positions"], 30, "positions again after /resume", proc)

        # The market stops filling; once the daemon has processed a bar after that, it has
        # seen every fill the broker made (they are pushed over the stream as they happen).
        market_closed.set()
        seen = status()["bars"]
        _wait(lambda: status()["bars"] > seen + 1, 30, "a bar after the last fill", proc)

    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        err.close()
    log = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert alpaca.secret_key not in log and TOKEN not in log

    # What it did is stored in PostgreSQL: every fill the broker reported, and the equity.
    import asyncpg

    async def rows():
        conn = await asyncpg.connect(pg_url)
        try:
            fills = await conn.fetch("select * from fills where run_id = $1", run_id)
            equity = await conn.fetch("select * from equity where run_id = $1", run_id)
            first = await conn.fetchval(
                "select min(created_at) from orders where run_id = $1", run_id
            )
            return fills, equity, first
        finally:
            await conn.close()

    import asyncio

    fills, equity, first_order = asyncio.run(rows())
    # Warmed up on the feed's history: the first live bar (the first session of 2024) trades.
    assert first_order.date().isoformat() == "2024-01-02"
    filled_at_broker = {o.client_order_id for o in alpaca.orders.values() if o.filled_qty > 0}
    assert filled_at_broker and {f["client_order_id"] for f in fills} == filled_at_broker
    assert {f["symbol"] for f in fills} <= set(SYMBOLS) - {"NOPE"}
    assert len(equity) >= 10
