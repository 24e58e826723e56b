"""What a live run's store and audit log keep across a restart on Alpaca (the loopback fake,
tests/fakes/alpaca_trading_server.py, through the real alpaca-py clients): every state an
order went through, once and in an order it can have happened in, and every fill with the
bar whose book first holds it (README, "Reading a run back").

- A clean stop (SIGTERM: `request_stop`) between bars books the broker's last updates and
  checkpoints them (`Engine._checkpoint_at_stop`): the next start keeps them, store and
  audit log, instead of dropping them (`audit.truncated`) and counting on Alpaca to report
  them again, which it does only while it still knows the order.
- A process that dies between sending a bar's orders and recording Alpaca's answer: the
  restart carries that bar out again, and records what Alpaca reported of its orders since
  after their intents, at that bar. Before, they were booked before the bar (stamped just
  after the previous checkpoint): the order's events read filled -> new -> filled and its
  fill was dated a bar before the order existed.

No test sleeps for a fixed time."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fakes.alpaca_trading_server import AlpacaTradingFake, running_fake
from live_on_fake import eventually, live_on_fake, open_buys
from structlog.testing import capture_logs

from tradingd.app import build_engine

RUN = "bookkeeping"


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        params = args[0] if len(args) == 1 and isinstance(args[0], dict) else args
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def audit_lines(directory: Path) -> list[dict[str, Any]]:
    """The order and fill lines of the run's audit log (one file: the runs are short)."""
    out = []
    for f in sorted(directory.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row["event"] in ("order", "fill"):
                out.append(row)
    return out


def with_brackets(engine_config: Any, fake: AlpacaTradingFake) -> tuple[Any, Any]:
    panel, config = live_on_fake(engine_config, fake, RUN)
    return panel, dataclasses.replace(
        config, orders=dataclasses.replace(config.orders, brackets=True)
    )


class Died(Exception):
    """The process dying where a test raises it, in-process (as `TRADINGD_KILL_AT` kills
    one): nothing after it is recorded, and the run's row ends as failed, so the next start
    resumes as after a kill."""


async def test_a_clean_stop_keeps_what_it_booked_after_the_last_bar(engine_config, fake, tmp_path):
    """SIGTERM between bars, right after Alpaca filled a bracket's entry: the stop books the
    fill and the legs' held -> new, and the next start keeps those rows and lines, even
    with Alpaca no longer reporting the (closed) entry. Before, the start dropped them
    (`audit.truncated`) and the entry's fill, its `filled` state and its legs' `new` were
    gone for good: Alpaca's lookup of the entry found nothing (404), and the book lacked
    the shares."""
    panel, config = with_brackets(engine_config, fake)
    first = build_engine(config, "live", panel=panel)
    seen: dict[str, Any] = {}

    def after(t: Any, v: Any) -> None:
        buys = open_buys(fake, RUN)
        if buys and not seen:  # the bar that placed entries: fill one, then stop
            o = buys[0]
            seen.update(cid=o.client_order_id, symbol=o.symbol, qty=o.qty, bar=t)
            fake.call(fake.fill, o.client_order_id, price=100.0)
            first.request_stop()

    first.after_bar.append(after)
    await first.run_until_done()
    assert seen, "the run placed no entry"
    cid, symbol = seen["cid"], seen["symbol"]
    assert first.portfolio.quantity_of(symbol) == seen["qty"]  # booked by the stop
    db = tmp_path / "store.db"
    events_sql = "SELECT rowid, client_order_id, status, booked_at FROM order_events ORDER BY rowid"
    fills_sql = "SELECT rowid, fill_id, quantity, booked_at FROM fills ORDER BY rowid"
    events, fills = rows(db, events_sql), rows(db, fills_sql)
    legs = {c for _, c, _, _ in events if c.startswith(cid.rsplit("|", 2)[0]) and c != cid}
    assert [s for _, c, s, _ in events if c == cid] == ["new", "filled"]
    assert all([s for _, c, s, _ in events if c == leg] == ["held", "new"] for leg in legs)
    assert [f[2] for f in fills] == [seen["qty"]]
    lines = audit_lines(tmp_path / "audit")

    # Alpaca keeps a closed order for a while only: gone, it cannot report it again.
    fake.call(
        lambda: [
            fake.orders.pop(k) for k, o in list(fake.orders.items()) if o.client_order_id == cid
        ]
    )
    second = build_engine(config, "live", panel=panel)
    second.after_bar.append(lambda t, v: second.request_stop())
    with capture_logs() as logs:
        await second.run_until_done()
    names = [e["event"] for e in logs]
    assert "audit.truncated" not in names
    assert "alpaca.reconcile.executed_since_checkpoint" not in names  # nothing asked of it
    # Every row and line the first process wrote is there as it was, the book holds the
    # shares, and nothing of the stop's was written twice.
    assert rows(db, events_sql)[: len(events)] == events
    assert rows(db, fills_sql) == fills
    assert audit_lines(tmp_path / "audit")[: len(lines)] == lines
    assert second.portfolio.quantity_of(symbol) == seen["qty"]
    assert not second.reconcile_blocked
    # The README's query of a holding period finds the fill booked between bars: the
    # period opens at the next bar's positions row, a bar after the fill's stamp.
    [(opened,)] = rows(db, "SELECT min(time) FROM positions WHERE symbol = ?", symbol)
    assert opened is not None, "the shares booked by the stop have no positions row"
    assert opened > fills[0][3]
    found = rows(
        db,
        readme_period_fills(),
        {"run": RUN, "symbol": symbol, "opened": opened, "closed": "9999-12-31T00:00:00+00:00"},
    )
    assert [r[1] for r in found] == [fills[0][1]]


def readme_period_fills() -> str:
    """The README's query of one holding period's fills, with `symbol = :symbol`."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("SELECT * FROM fills", text.index("-- one period"))
    sql = text[start : text.index(";", start)]
    return sql.replace("symbol = 'AAPL'", "symbol = :symbol")


async def test_a_bar_carried_out_again_records_its_orders_after_their_intents(
    engine_config, fake, tmp_path
):
    """Alpaca fills a bracket's market entry as it takes it; the process dies before the
    answer is recorded. The restart's resume finds the entries filled and the legs
    released, and the start books that (the book must hold it before reconciling) before
    the bar is carried out again. Recorded then, just after the checkpoint, the order's
    events read filled -> new -> held -> filled, and the fill was dated before the bar that
    placed it, outside the holding period the positions show (README's query)."""
    fake.fill_on_submit = lambda o: 100.0
    panel, config = with_brackets(engine_config, fake)
    first = build_engine(config, "live", panel=panel)
    real_submit = first.broker.submit

    async def submit(orders: Any) -> Any:
        await real_submit(orders)  # `TRADINGD_KILL_AT=sent`: the answer not recorded
        raise Died("killed after the send")

    first.broker.submit = submit  # type: ignore[method-assign]
    with pytest.raises(Died):
        await first.run_until_done()
    placed = {o.client_order_id: o for o in fake.orders.values() if o.parent_id is None}
    assert placed and all(o.status == "filled" for o in placed.values())

    second = build_engine(config, "live", panel=panel)
    second.after_bar.append(lambda t, v: second.request_stop())
    with capture_logs() as logs:
        await second.run_until_done()
    [redone] = [e for e in logs if e["event"] == "resume.interrupted_plan"]
    bar = redone["time"]
    assert any(e["event"] == "alpaca.reconcile.placed_before_crash" for e in logs)

    db = tmp_path / "store.db"
    bar_text = bar.isoformat(timespec="microseconds")
    for cid, o in placed.items():
        events = rows(
            db,
            "SELECT status, filled_quantity, booked_at FROM order_events"
            " WHERE client_order_id = ? ORDER BY rowid",
            cid,
        )
        # The intent, then Alpaca's answer: each state once, all at the bar that placed it.
        assert [(s, q) for s, q, _ in events] == [("new", 0.0), ("filled", o.qty)], cid
        assert {b for _, _, b in events} == {bar_text}
        # The fill too: the bar whose positions row first holds its shares, so the README's
        # holding-period query (booked_at BETWEEN the opening and closing rows) finds it.
        [(booked_at, qty)] = rows(
            db, "SELECT booked_at, quantity FROM fills WHERE client_order_id = ?", cid
        )
        assert booked_at == bar_text and qty == o.qty
        [(opened,)] = rows(
            db,
            "SELECT min(time) FROM positions WHERE symbol = ? AND quantity > 0",
            o.symbol,
        )
        assert opened == booked_at
        for leg in ("tp", "sl"):
            leg_id = cid.replace("|entry|", f"|{leg}|")
            states = rows(
                db,
                "SELECT status FROM order_events WHERE client_order_id = ? ORDER BY rowid",
                leg_id,
            )
            assert [s for (s,) in states] == ["held", "new"], leg_id
    # The audit log agrees: each order line after its intent's bar, no state twice in a row.
    lines = [r for r in audit_lines(tmp_path / "audit") if r.get("client_order_id") in placed]
    assert lines and all(r["booked_at"].startswith(bar.isoformat()[:19]) for r in lines)


async def test_what_is_booked_after_a_stop_checkpoint_is_dropped_by_a_later_crash_once(
    engine_config, fake, tmp_path
):
    """After a clean stop's checkpoint (`booked_through` past its bar), the next process
    books a take-profit's fill between bars and dies before a bar: its rows are stamped
    after what that checkpoint holds, so the start after drops them with the audit lines
    and Alpaca reports the fill again, once. Stamped at the bar plus 1 us like the stop's,
    they were kept, and reported again: the fill twice in the store."""
    panel, config = with_brackets(engine_config, fake)
    first = build_engine(config, "live", panel=panel)
    seen: dict[str, Any] = {}

    def after(t: Any, v: Any) -> None:
        buys = open_buys(fake, RUN)
        if buys and not seen:
            seen.update(cid=buys[0].client_order_id, symbol=buys[0].symbol)
            fake.call(fake.fill, buys[0].client_order_id, price=100.0)
            first.request_stop()

    first.after_bar.append(after)
    await first.run_until_done()
    tp = seen["cid"].replace("|entry|", "|tp|")
    assert [s for (s,) in rows(tmp_path / "store.db", "SELECT status FROM orders WHERE"
                                " client_order_id = ?", tp)] == ["new"]  # fmt: skip

    [entry] = fake.orders_with_client_id(seen["cid"])
    # Alpaca's own id of the take-profit leg (the engine names it `tp`).
    [tp_at_alpaca] = [i for i in entry.leg_ids if fake.orders[i].type == "limit"]
    second = build_engine(config, "live", panel=panel)
    real_bars = second.feed.bars

    async def bars(t: Any) -> Any:
        if second.catching_up_to is None:  # between bars, live
            fake.call(fake.fill, tp_at_alpaca, price=120.0)
            await eventually(lambda: second.portfolio.quantity_of(seen["symbol"]) == 0.0)
            raise Died("killed between bars")
        return await real_bars(t)

    second.feed.bars = bars  # type: ignore[method-assign]
    with pytest.raises(Died):
        await second.run_until_done()
    db = tmp_path / "store.db"
    [(booked_at,)] = rows(db, "SELECT booked_at FROM fills WHERE client_order_id = ?", tp)
    stop_stamp = rows(db, "SELECT booked_at FROM fills WHERE client_order_id = ?", seen["cid"])
    assert booked_at > stop_stamp[0][0]

    third = build_engine(config, "live", panel=panel)
    third.after_bar.append(lambda t, v: third.request_stop())
    with capture_logs() as logs:
        await third.run_until_done()
    assert any(e["event"] == "audit.truncated" for e in logs)
    fills = rows(db, "SELECT fill_id FROM fills ORDER BY rowid")
    assert len(fills) == len(set(fills)) == 2
    assert third.portfolio.quantity_of(seen["symbol"]) == 0.0
    lines = [r["fill_id"] for r in audit_lines(tmp_path / "audit") if r["event"] == "fill"]
    assert sorted(lines) == sorted(f for (f,) in fills)
