"""A position closed by hand at Alpaca (or gone in a cash-out, or split without the book)
blocked its symbol for good: the book kept counting shares the account did not hold (equity,
drawdown, P&L), and the only advice was to buy them back. `POST /adopt` now takes the
account's quantity into the book, explicitly and per symbol, at the next bar: as a trade at
the bar's close (cash moves, equity continuous) or as a missed split (cash unchanged),
stored (`adjustments`) and audited, the symbol released; a request it cannot carry out is
refused with a 4xx naming the symbol and why. The whole live engine runs against the
loopback Alpaca and its own health server; no test sleeps for a fixed time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes.alpaca_trading_server import running_fake
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine, health_inputs
from tradingd.config import HealthConfig
from tradingd.health.server import HealthServer

RUN = "adopt-broker"
TOKEN = "adopt-test-token-0123456789"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


async def _bought_then_changed_by_hand(engine_config, fake, held_after: float):  # type: ignore[no-untyped-def]
    """One traded bar; while the daemon is down its first entry fills at 100 and the account's
    position is then changed by hand to `held_after` (times the fill: 0 closes it)."""
    panel, config = live_on_fake(engine_config, fake, RUN)
    first = build_engine(config, "live", panel=panel)
    first.after_bar.append(lambda t, v: first.request_stop())
    await first.run_until_done()
    entries = [o for o in fake.orders.values() if o.client_order_id.startswith(f"{RUN}|")]
    bought = entries[0]
    sym, qty = bought.symbol, float(bought.qty)
    fake.call(fake.fill, bought.client_order_id, price=100.0)
    fake.call(fake.set_position, sym, qty * held_after, 100.0)
    return panel, config, sym, qty


async def _run_with_requests(config, panel, requests):  # type: ignore[no-untyped-def]
    """The restarted engine with its health server; after its first bar (the symbol blocked
    at the start), `requests(post, engine)` sends controls; the run stops two bars after the
    last answer. Returns (engine, logs)."""
    # Ten bars a second: the requests (milliseconds each) are answered between two bars.
    config = dataclasses.replace(
        config, live=dataclasses.replace(config.live, bars_per_second=10.0)
    )
    engine = build_engine(config, "live", panel=panel)
    _checks, status, controls = health_inputs(engine)
    server = HealthServer(HealthConfig(port=0), status=status, controls=controls, token=TOKEN)
    await server.start()
    done: list[int] = []
    failed: list[BaseException] = []

    async def post(body: Any, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, str) else json.dumps(body)
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.post(f"{server.url}/adopt", data=data, headers=headers) as r,
        ):
            return r.status, json.loads(await r.text())

    async def send() -> None:
        try:
            await requests(post, engine)
        except BaseException as exc:  # an assertion in the requests: the run stops
            failed.append(exc)
            engine.request_stop()
        done.append(len(bars))

    bars: list[Any] = []

    def after(t, v):  # type: ignore[no-untyped-def]
        bars.append(t)
        if len(bars) == 1:
            asyncio.get_running_loop().create_task(send())
        if (done and len(bars) >= done[0] + 2) or len(bars) >= 27:
            engine.request_stop()

    engine.after_bar.append(after)
    try:
        with capture_logs() as logs:
            await engine.run_until_done()
    finally:
        await server.stop()
    if failed:
        raise failed[0]
    assert done, "the requests never finished"
    return engine, logs


def _rows(config: Any, sql: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(config.storage.url.removeprefix("sqlite:///"))
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_a_position_closed_by_hand_is_adopted_as_a_trade_at_the_bars_close(
    engine_config, fake
):
    panel, config, sym, qty = await _bought_then_changed_by_hand(engine_config, fake, 0.0)
    other = next(s for s in panel.symbols if s != sym)
    answers: dict[str, tuple[int, dict[str, Any]]] = {}

    async def requests(post, engine):  # type: ignore[no-untyped-def]
        assert sym in engine.reconcile_blocked  # blocked at the start: 0 held, qty booked
        answers["unknown"] = await post({"symbols": ["NOPE"]})
        answers["not_blocked"] = await post({"symbols": [other]})
        answers["no_split"] = await post({"symbols": [sym], "as": "split"})
        answers["bad_kind"] = await post({"symbols": [sym], "as": "gift"})
        answers["no_json"] = await post("{not json")
        answers["no_token"] = await post({"symbols": [sym]}, token="wrong-token-0123456789")
        # The account moves again after the round that blocked it: not the difference seen.
        fake.call(fake.set_position, sym, 3.0, 100.0)
        answers["changed"] = await post({"symbols": [sym]})
        fake.call(fake.set_position, sym, 0.0, 100.0)
        answers["ok"] = await post({"symbols": [sym]})

    engine, logs = await _run_with_requests(config, panel, requests)

    code, body = answers["unknown"]
    assert code == 404 and body["refused"] == {"NOPE": "not in this run's universe"}
    code, body = answers["not_blocked"]
    assert code == 409 and "not blocked" in body["refused"][other]
    code, body = answers["no_split"]
    assert code == 409 and "a split never opens, closes" in body["refused"][sym]
    assert answers["bad_kind"][0] == 400 and "gift" in answers["bad_kind"][1]["error"]
    assert answers["no_json"][0] == 400
    assert answers["no_token"][0] == 401
    code, body = answers["changed"]
    assert code == 409 and "changed since" in body["refused"][sym]
    code, body = answers["ok"]
    assert code == 200 and body["result"]["pending"][sym]["difference"] == -qty

    # The difference's advice names the control (it said to buy the shares back).
    [difference] = [e for e in logs if e["event"] == "reconcile.difference"]
    assert f'POST /adopt {{"symbols": ["{sym}"]}}' in difference["rule"]
    # Applied at a later bar: the book holds what the account holds, the symbol trades again.
    [adopted] = [e for e in logs if e["event"] == "control.adopted"]
    t = adopted["time"]
    assert engine.portfolio.quantity_of(sym) == 0.0
    assert sym not in engine.reconcile_blocked
    i = panel.symbols.index(sym)
    close = float(panel.close[panel.datetimes().index(t), i])
    # Stored, as an operator can query it.
    [row] = _rows(config, f"select * from adjustments where run_id = '{RUN}'")
    assert (row["symbol"], row["kind"], row["book_before"], row["quantity"]) == (
        sym,
        "trade",
        qty,
        0.0,
    )
    assert row["price"] == pytest.approx(close) and row["cash"] == pytest.approx(qty * close)
    # The cash got the shares' value at the close; the equity went on from the book's.
    equity = _rows(config, f"select time, cash, equity from equity where run_id = '{RUN}'")
    k = next(n for n, r in enumerate(equity) if r["time"].startswith(t.date().isoformat()))
    before, at = equity[k - 1], equity[k]
    assert at["cash"] == pytest.approx(before["cash"] + qty * close)
    # Nothing else held: the equity is the cash, what the book's qty shares were worth too.
    assert at["equity"] == pytest.approx(at["cash"])
    assert at["equity"] == pytest.approx(before["cash"] + qty * close)
    # Audited beside the bar's fills.
    lines = [
        json.loads(line)
        for f in Path(config.log.audit_dir).rglob("*")
        if f.is_file()
        for line in f.read_text(errors="replace").splitlines()
        if '"event": "adjustment"' in line
    ]
    [line] = lines
    assert line["symbol"] == sym and line["kind"] == "trade" and line["quantity"] == 0.0
    # The symbol trades again: what is open in it of this run was placed from that bar on
    # (the orders placed for the book's old quantity were cancelled).
    at_bar = t.strftime("%Y%m%dT%H%M%S")
    open_ids = [
        o.client_order_id
        for o in fake.orders.values()
        if o.client_order_id.startswith(f"{RUN}|") and o.symbol == sym and o.is_open
    ]
    assert all(cid.split("|")[1] >= at_bar for cid in open_ids), (open_ids, at_bar)


async def test_a_split_the_book_missed_is_adopted_with_cash_unchanged(engine_config, fake):
    panel, config, sym, qty = await _bought_then_changed_by_hand(engine_config, fake, 4.0)
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    cash: list[float] = []

    async def requests(post, engine):  # type: ignore[no-untyped-def]
        assert sym in engine.reconcile_blocked
        cash.append(engine.portfolio.cash)
        answers["ok"] = await post({"symbols": [sym], "as": "split"})

    engine, logs = await _run_with_requests(config, panel, requests)
    assert answers["ok"][0] == 200, answers["ok"]
    [adopted] = [e for e in logs if e["event"] == "control.adopted"]
    assert adopted["kind"] == "split" and adopted["cash"] == 0.0
    assert engine.portfolio.quantity_of(sym) == 4 * qty
    assert sym not in engine.reconcile_blocked
    i = panel.symbols.index(sym)
    assert engine.portfolio.avg_price[i] == pytest.approx(25.0)  # 100 / 4: the cost kept
    [row] = _rows(config, f"select * from adjustments where run_id = '{RUN}'")
    assert row["kind"] == "split" and row["cash"] == 0.0 and row["quantity"] == 4 * qty


async def test_an_adoption_answered_is_in_the_checkpoint_and_a_restart_applies_it(
    engine_config, fake
):
    """Answered, it is in the run's stored checkpoint (as a pause is): a stop before the next
    bar does not lose it, and the restarted run applies it at its first bar."""
    panel, config, sym, qty = await _bought_then_changed_by_hand(engine_config, fake, 0.0)
    stored: list[Any] = []

    async def requests(post, engine):  # type: ignore[no-untyped-def]
        code, body = await post({"symbols": [sym]})
        assert code == 200, body
        [row] = _rows(config, f"select state from checkpoints where run_id = '{RUN}'")
        stored.append(json.loads(row["state"]).get("adopt"))
        engine.request_stop()

    first, logs = await _run_with_requests(config, panel, requests)
    assert stored[0][sym]["broker"] == 0.0 and stored[0][sym]["book"] == qty
    if not [e for e in logs if e["event"] == "control.adopted"]:  # stopped before a bar
        assert first.portfolio.quantity_of(sym) == qty
        second = build_engine(config, "live", panel=panel)
        second.after_bar.append(lambda t, v: second.request_stop())
        with capture_logs() as logs:
            await second.run_until_done()
        assert [e["symbol"] for e in logs if e["event"] == "control.adopted"] == [sym]
        first = second
    assert first.portfolio.quantity_of(sym) == 0.0
    assert sym not in first.reconcile_blocked
    [row] = _rows(config, f"select * from adjustments where run_id = '{RUN}'")
    assert row["symbol"] == sym and row["book_before"] == qty


async def test_a_reverse_split_adopted_pays_the_fraction_in_cash(engine_config, fake):
    """A 1:10 of a position not a multiple of 10: Alpaca holds the whole shares and paid the
    fraction in cash. Adopted "as split", the cash stayed unchanged (the fraction never
    credited) and the average price was divided by 64/649, not by the true 1/10."""
    panel, config, sym, qty = await _bought_then_changed_by_hand(engine_config, fake, 1.0)
    assert qty >= 200 and qty % 10, "the entry must leave a fraction at 1:10"
    held = float(math.trunc(qty / 10))
    fake.call(fake.set_position, sym, held, 1000.0)
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    cash: list[float] = []

    async def requests(post, engine):  # type: ignore[no-untyped-def]
        assert sym in engine.reconcile_blocked
        cash.append(engine.portfolio.cash)
        answers["ok"] = await post({"symbols": [sym], "as": "split"})

    engine, logs = await _run_with_requests(config, panel, requests)
    assert answers["ok"][0] == 200, answers["ok"]
    [adopted] = [e for e in logs if e["event"] == "control.adopted"]
    t = adopted["time"]
    i = panel.symbols.index(sym)
    close = float(panel.close[panel.datetimes().index(t), i])
    fraction = qty / 10 - held
    assert adopted["kind"] == "split" and adopted["quantity"] == held
    assert adopted["cash"] == pytest.approx(fraction * close)
    assert engine.portfolio.quantity_of(sym) == held
    assert engine.portfolio.avg_price[i] == pytest.approx(1000.0)  # 100 x 10: the true ratio
    [row] = _rows(config, f"select * from adjustments where run_id = '{RUN}'")
    assert row["kind"] == "split" and row["quantity"] == held
    assert row["cash"] == pytest.approx(fraction * close)
    equity = _rows(config, f"select time, cash from equity where run_id = '{RUN}'")
    k = next(n for n, r in enumerate(equity) if r["time"].startswith(t.date().isoformat()))
    assert equity[k]["cash"] == pytest.approx(equity[k - 1]["cash"] + fraction * close)
    [paid] = [e for e in logs if e["event"] == "split.cash_in_lieu"]
    assert paid["symbol"] == sym and paid["shares"] == pytest.approx(fraction)


def test_a_split_adoption_fitting_several_ratios_is_refused(monkeypatch):
    """Rounded down, two ratios may fit one pair of quantities ("1:10 or 1:12"): the cash in
    lieu differs by which, so the split adoption is refused, naming what to do."""
    from fractions import Fraction

    from tradingd.engine import adopt, engine

    monkeypatch.setattr(
        engine,
        "_split_fits",
        lambda broker, book, min_blocks=20: ([Fraction(1, 10), Fraction(1, 12)], False),
    )
    why = adopt.split_refusal(64.0, 649.0)
    assert why is not None and "1:10 or 1:12" in why
    assert '"as": "trade"' in why and "account" in why


async def test_an_adoption_dropped_says_its_waits_again_when_asked_again():
    """The dropped path kept the symbol's waits said: the same symbol asked again and
    waiting for the same reason logged no `control.adopt_waits`."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from tradingd.engine import adopt

    adoptions = adopt.Adoptions()
    asked = adopt.Adoption("S00", "trade", 0.0, 10.0, datetime.now(UTC).isoformat())

    async def positions() -> dict[str, float]:
        return {"S00": 5.0}  # moved since asked: dropped

    engine = SimpleNamespace(
        adoptions=adoptions,
        symbols=["S00"],
        reconcile_blocked={"S00": "broker holds 0, the book 10"},
        portfolio=SimpleNamespace(quantity_of=lambda s: 10.0),
        _read_positions=positions,
    )
    bar = SimpleNamespace(time=datetime(2024, 1, 2, tzinfo=UTC))
    with capture_logs() as logs:
        adoptions.pending["S00"] = asked
        adoptions.waits("S00", "the broker does not answer")
        await adopt.apply_due(engine, bar)  # type: ignore[arg-type]
        assert "S00" not in adoptions.pending
        adoptions.pending["S00"] = asked
        adoptions.waits("S00", "the broker does not answer")
    said = [e["event"] for e in logs if e["event"].startswith("control.adopt")]
    assert said == ["control.adopt_waits", "control.adopt_dropped", "control.adopt_waits"]


def test_a_real_split_of_a_small_position_can_be_adopted_as_a_split():
    """Review: reconciliation's rule that a rounded-down split needs a large position (so a
    few shares bought by hand are not taken for one) also refused the operator's /adopt of
    a real 1:10 of 155 shares (the account holds 15) and a 3:2 of 25 (37), saying no split
    ratio fits and to adopt it as a trade, which books a sale of 140 pre-split shares at the
    post-split close. Asked by the operator, any size fits; the fraction is cash in lieu."""
    from fractions import Fraction

    from tradingd.engine import adopt
    from tradingd.engine.engine import _split_like

    assert _split_like(15.0, 155.0) is None  # reconciliation's own guess: unchanged
    assert adopt.split_refusal(15.0, 155.0) is None
    assert adopt._split_ratio(15.0, 155.0) == (Fraction(1, 10), False)
    assert adopt.split_refusal(37.0, 25.0) is None
    assert adopt._split_ratio(37.0, 25.0) == (Fraction(3, 2), False)
    assert adopt.split_refusal(9.0, 155.0) is not None  # no ratio at all still refused
