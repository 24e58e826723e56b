"""Deliberate retries under the next attempt number (issue 9, point 2).

Alpaca refuses a client_order_id it has seen, even after a rejection, so the engine retries a
decision that was refused for a transient reason (buying power still held by the batch's own
sells, the request budget spent) under `…|attempt+1`, and never sends an attempt twice. The
live engine runs in this process against the loopback Alpaca (tests/fakes), whose first order
POST answers 403 "insufficient buying power"."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake, need_fixtures
from structlog.testing import capture_logs

from tradingd.app import build_engine
from tradingd.config import load_config
from tradingd.core.types import Side, parse_client_order_id

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, fake: AlpacaTradingFake, retry_attempts: int) -> Path:
    cfg = tmp_path / "retry.toml"
    cfg.write_text(f"""
[run]
run_id = "retry"
start = "2016-06-01"
end = "2016-07-15"
initial_capital = 1000000.0
[live]
bars_per_second = 500.0
[orders]
retry_attempts = {retry_attempts}
retry_delay_s = 0.0
[broker]
kind = "alpaca"
[broker.alpaca]
base_url = "{fake.url}"
stream_url = "{fake.stream_url}"
poll_interval_s = 0.05
[storage]
url = "sqlite:///{tmp_path / "retry.db"}"
[health]
enabled = false
[log]
audit_dir = "{tmp_path / "audit"}"
""")
    return cfg


async def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retry_attempts: int,
    prepare: Callable[[Any, AlpacaTradingFake], None] | None = None,
):
    need_fixtures()
    fake = AlpacaTradingFake(cash=1_000_000.0, fill_on_submit=lambda o: 100.0)
    fake.start_in_thread()
    try:
        monkeypatch.setenv("APCA_API_KEY_ID", fake.key_id)
        monkeypatch.setenv("APCA_API_SECRET_KEY", fake.secret_key)
        fake.fail_next_order("insufficient_buying_power")
        config = load_config(
            [ROOT / "config/default.toml", _config(tmp_path, fake, retry_attempts)]
        )
        engine = build_engine(config, "live")
        if prepare is not None:
            prepare(engine, fake)
        await engine.run_until_done()
        at_alpaca = sorted(fake.used_client_order_ids)
        posts = [r["client_order_id"] for r in fake.posted_orders()]
    finally:
        fake.stop_thread()
    con = sqlite3.connect(tmp_path / "retry.db")
    try:
        stored = dict(con.execute("SELECT client_order_id, status FROM orders").fetchall())
        fills = [r[0] for r in con.execute("SELECT client_order_id FROM fills").fetchall()]
        # order_events holds each state of an order once (a retry's intent and its
        # acknowledgement were two equal rows).
        repeated = con.execute(
            "SELECT client_order_id, status, count(*) FROM order_events "
            "GROUP BY client_order_id, status, filled_quantity, reason, time "
            "HAVING count(*) > 1"
        ).fetchall()
    finally:
        con.close()
    assert repeated == []
    return posts, at_alpaca, stored, fills


async def test_a_transient_refusal_is_retried_under_the_next_attempt(tmp_path, monkeypatch):
    posts, at_alpaca, stored, fills = await _run(tmp_path, monkeypatch, retry_attempts=2)

    first = posts[0]
    p = parse_client_order_id(first)
    assert p is not None and p.attempt == 1
    retry = f"{p.head}|{p.tag}|2"
    assert stored[first] == "rejected"
    assert posts.index(retry) == 1  # the same decision again, at once, before anything else
    assert retry in at_alpaca and first not in at_alpaca
    assert retry in fills  # the retry traded
    assert len(posts) == len(set(posts))  # no attempt was sent twice
    assert all(parse_client_order_id(c).attempt == 1 for c in posts if c not in (first, retry))  # type: ignore[union-attr]


async def test_without_retries_the_refused_decision_stays_rejected(tmp_path, monkeypatch):
    posts, at_alpaca, stored, fills = await _run(tmp_path, monkeypatch, retry_attempts=0)

    first = posts[0]
    assert stored[first] == "rejected"
    assert all(parse_client_order_id(c).attempt == 1 for c in posts)  # type: ignore[union-attr]
    assert first not in at_alpaca and first not in fills


def _sells_fail_once(cut: list[str]) -> Callable[[Any, AlpacaTradingFake], None]:
    """The first batch with sells and buys: every POST of its sells answers 503, so the
    broker raises before the buy wave (`cut`: the ids of that batch's buys and their legs)."""

    def prepare(engine: Any, fake: AlpacaTradingFake) -> None:
        real_submit = engine.broker.submit

        async def submit(orders):  # type: ignore[no-untyped-def]
            entries = {o.client_order_id: o.side for o in orders if o.parent_id is None}
            if cut or set(entries.values()) != {Side.SELL, Side.BUY}:
                return await real_submit(orders)
            buys = {cid for cid, side in entries.items() if side is Side.BUY}
            cut.extend(o.client_order_id for o in orders if {o.client_order_id, o.parent_id} & buys)
            for _ in range(3 * len(orders)):
                fake.fail_next_order(503, {"code": 50300000, "message": "service unavailable"})
            try:
                return await real_submit(orders)
            finally:
                fake.call(fake._order_failures.clear)

        engine.broker.submit = submit

    return prepare


async def test_the_buys_of_a_batch_cut_short_by_failed_sells_are_closed_in_the_store(
    tmp_path, monkeypatch
):
    """The operator's 2024-05-31 batch: its sells got 504s and its buy was never posted. The
    buy's stored intent stayed `new` after the run ended, nothing logged it, and later
    checkpoints moved past it (a restart never looked at it). Now it is closed as
    cancelled ("not placed"), and nothing the broker never received stays `new`."""
    cut: list[str] = []
    with capture_logs() as logs:
        posts, at_alpaca, _, _ = await _run(
            tmp_path, monkeypatch, retry_attempts=2, prepare=_sells_fail_once(cut)
        )
    assert cut, "no batch had sells and buys"
    assert not set(cut) & set(posts)  # the buys were never sent
    con = sqlite3.connect(tmp_path / "retry.db")
    try:
        closed = dict(
            con.execute(
                f"SELECT client_order_id, reason FROM orders WHERE client_order_id IN "
                f"({','.join('?' * len(cut))}) AND status = 'cancelled'",
                cut,
            ).fetchall()
        )
        # A bracket's legs are at Alpaca under ids of its own: what was sent is the entry.
        working = con.execute(
            "SELECT client_order_id, coalesce(parent_id, client_order_id) FROM orders "
            "WHERE status IN ('new', 'held')"
        ).fetchall()
    finally:
        con.close()
    assert sorted(closed) == sorted(cut)
    assert all(r.startswith("not placed") for r in closed.values())
    assert [c for c, sent_as in working if sent_as not in at_alpaca] == []
    [warned] = [e for e in logs if e["event"] == "orders.not_placed"]
    assert sorted(warned["orders"]) == sorted(cut)
