"""Reconciliation of the book with the broker's positions (issue 9, point 3): a position the
run never ordered stops trading in that symbol and shows in /ready; it is never adopted or
overwritten; when the two agree again the symbol trades again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from restart_harness import ROOT, write_config
from structlog.testing import capture_logs

from tradingd.app import build_engine, health_inputs
from tradingd.config import load_config


async def test_an_unexplained_broker_position_blocks_the_symbol_until_it_agrees(tmp_path: Path):
    cfg = write_config(tmp_path, "recon", start="2016-01-01", end="2016-12-31", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    stray = {"SP500": 7.0}  # at the broker, never ordered by this run
    ready_while_blocked: list[bool] = []

    async def positions() -> dict[str, float]:
        book = {s: float(q) for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True)}
        for sym, extra in stray.items():
            book[sym] = book.get(sym, 0.0) + extra
        return book

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine.reconcile_interval_s = 0.05
    checks, _status, _controls = health_inputs(engine)
    (recon,) = [c for c in checks if c.name == "reconciliation"]

    original_step = engine.step

    async def step(bar, trade=None):  # type: ignore[no-untyped-def]
        await original_step(bar, trade)
        if engine.bars_processed == 60:
            ready_while_blocked.append(recon.probe().ok)
        if engine.bars_processed == 120:
            stray.clear()  # the operator closed the stray position at the broker

    engine.step = step  # type: ignore[method-assign]
    with capture_logs() as logs:
        result = await engine.run_until_done()

    # Alerted once as it was found, resolved once the two agree (no resolution was sent).
    said = [
        (e["event"], e["severity"])
        for e in logs
        if e["event"].startswith("alert.") and e.get("kind") == "reconciliation"
    ]
    assert said == [("alert.firing", "critical"), ("alert.resolved", "critical")]
    assert not [a for a in engine.alerter.firing() if a["kind"] == "reconciliation"]
    assert ready_while_blocked == [False]
    assert result.verdicts_by_rule.get("reconciliation/unreconciled_position", 0) > 0
    orders = await _orders(tmp_path / "recon.db")
    first_order_times = sorted(t for t, sym in orders if sym == "SP500")
    # Nothing in SP500 while it was blocked (the first 120 bars); orders in it afterwards.
    assert first_order_times, "SP500 must trade again once the books agree"
    assert all(t >= _bar_time(tmp_path / "recon.db", 120) for t in first_order_times)
    assert engine.reconcile_blocked == {} and recon.probe().ok


async def test_no_exit_is_placed_in_a_blocked_symbol(tmp_path: Path):
    """A protected position closed by hand (its exits cancelled, the shares sold): the
    symbol was blocked, but the planner restored exits for the book's shares every bar,
    sales of shares the broker no longer held (114 rejections at Alpaca; with shorting
    allowed a take-profit filled and opened a short)."""
    cfg = write_config(tmp_path, "recon-exits", start="2016-01-01", end="2016-06-30", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    gone: dict[str, float] = {}  # sold by hand at the broker: the book's quantity then

    async def positions() -> dict[str, float]:
        book = {s: float(q) for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True)}
        for sym, q in gone.items():
            book[sym] -= q
        return book

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine.reconcile_interval_s = 0.05
    planned_while_blocked: list[list[Any]] = []
    plan = engine.planner.plan

    def planning(*args: Any) -> Any:
        made = plan(*args)
        for sym in gone.keys() & engine.reconcile_blocked.keys():
            planned_while_blocked.append([o for o in made.orders if o.symbol == sym])
        return made

    engine.planner.plan = planning  # type: ignore[method-assign]
    original_step = engine.step

    async def step(bar, trade=None):  # type: ignore[no-untyped-def]
        await original_step(bar, trade)
        protected = {o.symbol for o in engine.broker.open_orders() if o.leg.value != "entry"}
        held = [s for s in sorted(protected) if engine.portfolio.quantity_of(s) > 0]
        if not gone and held:
            gone[held[0]] = engine.portfolio.quantity_of(held[0])
        for o in engine.broker.open_orders():
            if o.symbol in gone:  # cancelled by hand, then refused as Alpaca refuses them
                await engine.broker.cancel(o.client_order_id, "no shares at the broker")

    engine.step = step  # type: ignore[method-assign]
    await engine.run_until_done()

    assert gone and planned_while_blocked, "the closed position must be blocked while it trades"
    assert all(orders == [] for orders in planned_while_blocked)


async def test_a_difference_is_alerted_only_when_it_stands_at_a_second_check(tmp_path: Path):
    """GET /v2/positions already held a fill whose event was still on the way: the check
    found the book 15 short, blocked the symbol, raised a critical alert and held /ready at
    503 until the next round (300 s by default). A difference is now compared again
    shortly after: gone (the fill booked) or moved (an order filling), it is not alerted;
    the same at both checks (a real one), it blocks the symbol as before."""
    cfg = write_config(tmp_path, "recon2", start="2016-01-01", end="2017-12-31", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    # Broker's SP500 beyond the book at each positions() call: the start's (1) and each
    # round's, a round with a new difference reading twice. In flight at 3, gone at 4;
    # moving at 5-6; standing from 8 on (blocked at the second reading, 9).
    extra = {3: 15.0, 5: 5.0, 6: 10.0}
    calls: list[int] = []

    async def positions() -> dict[str, float]:
        calls.append(len(calls) + 1)
        n = calls[-1]
        book = {s: float(q) for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True)}
        book["SP500"] += extra.get(n, 7.0 if n >= 8 else 0.0)
        return book

    engine.broker.positions = positions  # type: ignore[attr-defined]
    # The moving difference is an order of ours filling: one works in SP500 (a moving
    # difference with none is someone else's trading, blocked: test_a_moving_difference_*).
    engine._symbols_with_open_orders = lambda: {"SP500"}  # type: ignore[method-assign]
    engine.reconcile_interval_s = 0.01
    checks, _status, _controls = health_inputs(engine)
    (recon,) = [c for c in checks if c.name == "reconciliation"]
    ready: list[tuple[int, bool]] = []
    engine.after_bar.append(lambda t, v: ready.append((len(calls), recon.probe().ok)))
    engine.after_bar.append(lambda t, v: engine.request_stop() if len(calls) >= 10 else None)
    with capture_logs() as logs:
        await engine.run_until_done()

    assert len(calls) >= 10, "the run ended before the rounds the test needs"
    events = [e for e in logs if e["event"].startswith("reconcile.")]
    [difference] = [e for e in events if e["event"] == "reconcile.difference"]
    assert (difference["broker"] - difference["book"]) == 7.0
    assert [e["symbol"] for e in events if e["event"] == "reconcile.settled"] == ["SP500"]
    assert [e["symbol"] for e in events if e["event"] == "reconcile.unsettled"] == ["SP500"]
    assert all(ok for n, ok in ready if n < 9) and ready[0][0] < 9
    assert [ok for n, ok in ready if n >= 9] and not any(ok for n, ok in ready if n >= 9)
    assert list(engine.reconcile_blocked) == ["SP500"]


async def _orders(db: Path) -> list[tuple[str, str]]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT created_at, symbol FROM orders").fetchall()
    finally:
        con.close()


def _bar_time(db: Path, n: int) -> str:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT time FROM equity ORDER BY time LIMIT 1 OFFSET ?", (n - 1,)
        ).fetchone()[0]
    finally:
        con.close()


async def test_a_difference_alerted_before_a_restart_is_resolved_after_it(tmp_path: Path):
    """The checkpoint kept no reconciliation alert: fixed at the broker while the daemon was
    down (the usual order), the critical alert was never resolved; still there, it was
    alerted a second time. The checkpoint keeps it; the first check after the restart
    resolves it when the book and the broker agree."""
    import asyncio

    cfg = write_config(tmp_path, "recon2", start="2016-01-01", end="2016-03-31", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    await engine.run_until_done()  # a book and a checkpoint to take the alert into
    alerter = engine.alerter
    alerter.condition("reconciliation", "SP500", True, title="position difference in SP500")
    engine._checkpoint(engine._last_checkpoint[0])
    kept = [a for a in engine._last_checkpoint[1]["alerts"] if a["kind"] == "reconciliation"]
    assert [a["key"] for a in kept] == ["SP500"]

    restarted = build_engine(config, "live")
    restarted.alerter.assume_firing(kept)  # as _resume does with the checkpoint's alerts

    async def positions() -> dict[str, float]:  # the broker agrees with the book now
        return {
            s: float(q)
            for s, q in zip(restarted.symbols, restarted.portfolio.quantity, strict=True)
        }

    restarted.broker.positions = positions  # type: ignore[attr-defined]
    restarted._bar_lock = asyncio.Lock()
    with capture_logs() as logs:
        await restarted._reconcile()
    said = [(e["event"], e.get("key")) for e in logs if e.get("kind") == "reconciliation"]
    assert said == [("alert.resolved", "SP500")]
    assert not [a for a in restarted.alerter.firing() if a["kind"] == "reconciliation"]


async def test_a_symbol_is_held_while_its_difference_is_checked_again(tmp_path: Path):
    """Between a new difference's two checks (5 s) the symbol traded as usual: with minute
    bars a real difference could trade a bar before it was confirmed. It is held (its
    target is its weight) for those seconds, without an alert or a /ready failure."""
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    cfg = write_config(tmp_path, "recon4", start="2016-01-01", end="2016-03-31", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    i = engine.symbols.index("SP500")
    weights = np.zeros(len(engine.symbols))
    ctx = SimpleNamespace(portfolio=SimpleNamespace(weights=weights))
    wanted = np.full(len(engine.symbols), 0.05)
    seen: list[tuple[float, list[str]]] = []
    calls: list[int] = []

    async def positions() -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:  # the second check: what a bar stepped now would do
            held, verdicts = engine._hold_unreconciled(wanted, ctx, [])
            seen.append((float(held[i]), [v.rule for v in verdicts]))
        book = {s: float(q) for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True)}
        book["SP500"] += 3.0  # a real difference
        return book

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine.reconcile_confirm_s = 0.0
    engine._bar_lock = asyncio.Lock()
    await engine._reconcile()
    assert seen == [(0.0, ["unreconciled_position"])]  # held at its weight, 0
    assert list(engine.reconcile_blocked) == ["SP500"]  # then confirmed and blocked
    assert engine._reconcile_checking == {}
    # and outside a check nothing is held for a symbol that is not blocked
    engine.reconcile_blocked = {}
    held, verdicts = engine._hold_unreconciled(wanted, ctx, [])
    assert held[i] == 0.05 and verdicts == []


def _scripted(tmp_path: Path, name: str):  # type: ignore[no-untyped-def]
    """A live engine whose broker holds the book plus `gaps[n]` of SP500 at its n-th read of
    the positions in a round (reset per round), with `ours` the symbols it has orders
    working in. Rounds are called directly: no clock, no sleep (confirmation wait 0)."""
    import asyncio

    cfg = write_config(tmp_path, name, start="2016-01-01", end="2016-03-31", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    script: dict[str, Any] = {"gaps": [0.0], "read": 0, "ours": set()}

    async def positions() -> dict[str, float]:
        gaps = script["gaps"]
        book = {s: float(q) for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True)}
        book["SP500"] += gaps[min(script["read"], len(gaps) - 1)]
        script["read"] += 1
        return book

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine._symbols_with_open_orders = lambda: set(script["ours"])  # type: ignore[method-assign]
    engine.reconcile_confirm_s = 0.0
    condition = engine.alerter.condition
    engine.alerts_sent = []  # type: ignore[attr-defined]  # the texts alerted

    def spy(kind: str, key: str, firing: bool, **kw: Any) -> Any:
        if firing:
            engine.alerts_sent.append(kw.get("text", ""))  # type: ignore[attr-defined]
        return condition(kind, key, firing, **kw)

    engine.alerter.condition = spy

    async def round_(gaps: list[float], ours: set[str]) -> int:
        script.update(gaps=gaps, read=0, ours=ours)
        engine._bar_lock = asyncio.Lock()
        await engine._reconcile()
        return int(script["read"])

    return engine, round_


async def test_a_moving_difference_with_no_order_of_ours_is_blocked(tmp_path: Path):
    """A difference that moved between its two checks was never blocked: right for an order
    of ours filling in parts, but with none working in the symbol (a trade by hand, another
    program on the same keys) the positions drifted at every round, unblocked and unalerted.
    With no order of ours working, it is blocked and alerted at its first round."""
    engine, round_ = _scripted(tmp_path, "recon5")
    with capture_logs() as logs:
        await round_([3.0, 5.0], set())
    assert list(engine.reconcile_blocked) == ["SP500"]
    [text] = engine.alerts_sent
    assert "moved from 3 to 5" in text and "no order of ours" in text
    assert "no order of ours" in engine.reconcile_blocked["SP500"]  # what /ready shows
    assert not [e for e in logs if e["event"] == "reconcile.unsettled"]
    with capture_logs() as logs:
        await round_([0.0], set())  # the other trader closed it: released and resolved
    assert engine.reconcile_blocked == {}
    assert [e["event"] for e in logs if e.get("kind") == "reconciliation"] == ["alert.resolved"]


async def test_a_difference_moving_beside_an_order_of_ours_is_blocked_at_its_third_round(
    tmp_path: Path,
):
    """An order of ours working explains a moving difference for a round or two, not for
    ever: someone else may trade beside a resting order."""
    engine, round_ = _scripted(tmp_path, "recon6")
    for gaps in ([3.0, 5.0], [6.0, 8.0]):
        await round_(gaps, {"SP500"})
        assert engine.reconcile_blocked == {}  # an order filling in parts: not yet
    await round_([0.0], {"SP500"})  # it settled: the count starts again
    for gaps in ([1.0, 2.0], [4.0, 6.0]):
        await round_(gaps, {"SP500"})
        assert engine.reconcile_blocked == {}
    await round_([9.0, 11.0], {"SP500"})
    assert list(engine.reconcile_blocked) == ["SP500"]
    [text] = engine.alerts_sent
    assert "moved from 9 to 11" in text and "still moving after 3 rounds" in text


async def test_a_foreign_order_working_does_not_put_off_the_block(tmp_path: Path):
    """The symbols with an order of ours working came from the broker's open orders, and a
    live broker lists the foreign ones it follows too: a limit placed by hand in the symbol
    counted as ours, and the foreign fill moving the position was blocked only at its third
    round. Only the run's own orders (the replacement of one edited at the broker included:
    `origin`) count, as for the fills booked."""
    from datetime import UTC, datetime

    from tradingd.core.orders import market_order

    engine, round_ = _scripted(tmp_path, "recon8")
    del engine._symbols_with_open_orders  # the engine's own, not the script's
    at = datetime(2016, 1, 4, tzinfo=UTC)
    by_hand = market_order("by-hand", at, "SP500", 10.0)
    ours = market_order(engine.run.run_id, at, "SP500", 10.0)
    edited = market_order("alpaca-replacement", at, "SP500", 10.0)
    working: list[Any] = [by_hand]
    engine.broker.open_orders = lambda: list(working)  # type: ignore[method-assign]
    # The replacement of an order of ours edited at the broker stands for it.
    engine.broker.origin = lambda cid: (  # type: ignore[attr-defined]
        ours.client_order_id if cid == edited.client_order_id else cid
    )

    await round_([3.0, 5.0], set())  # `ours` is not read: the engine's method is
    assert list(engine.reconcile_blocked) == ["SP500"]  # at the end of its first round
    assert engine._symbols_with_open_orders() == set()
    [text] = engine.alerts_sent
    assert "moved from 3 to 5" in text and "no order of ours" in text

    # An order of ours (or its edited replacement) beside it still defers the block.
    for mine in (ours, edited):
        await round_([0.0], set())  # agreed again: released
        assert engine.reconcile_blocked == {}
        working[:] = [by_hand, mine]
        assert engine._symbols_with_open_orders() == {"SP500"}
        await round_([3.0, 5.0], set())
        assert engine.reconcile_blocked == {}
        engine._reconcile_moving = {}


def test_no_difference_drifts_unblocked(tmp_path: Path):
    """Whatever the broker's readings and our orders: a difference with no order of ours
    working is blocked at the end of its round; none stays unblocked three rounds in a row;
    a first moving round beside an order of ours is not blocked; agreeing releases."""
    import asyncio

    from hypothesis import given, settings
    from hypothesis import strategies as st

    engine, round_ = _scripted(tmp_path, "recon7")
    gap = st.sampled_from([0.0, 3.0, 5.0, 7.0])

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(gap, gap, st.booleans()), min_size=1, max_size=8))
    def check(rounds: list[tuple[float, float, bool]]) -> None:
        engine.reconcile_blocked, engine._reconcile_moving = {}, {}
        unblocked_in_a_row = 0
        for first, second, ours in rounds:
            was_blocked = "SP500" in engine.reconcile_blocked
            was_moving = "SP500" in engine._reconcile_moving
            reads = asyncio.run(round_([first, second], {"SP500"} if ours else set()))
            last = second if reads == 2 else first
            blocked = "SP500" in engine.reconcile_blocked
            unblocked_in_a_row = unblocked_in_a_row + 1 if last and not blocked else 0
            assert blocked == bool(last) or ours, (first, second, ours)
            assert unblocked_in_a_row < 3
            if ours and first and second and first != second and not (was_blocked or was_moving):
                assert not blocked  # an order of ours filling in parts: not at once
            if not last:
                assert not blocked

    check()


def test_the_configured_confirmation_wait_reaches_the_live_engine(tmp_path: Path):
    """live.reconcile_confirm_s was not passed where the live engine is built: the engine
    kept its 5 s whatever the operator set."""
    cfg = write_config(tmp_path, "recon8", start="2016-01-01", end="2016-03-31", rate=500.0)
    slow = tmp_path / "slow.toml"
    slow.write_text("[live]\nreconcile_confirm_s = 42.0\n")
    config = load_config([ROOT / "config/default.toml", cfg, slow], env={})
    assert build_engine(config, "live").reconcile_confirm_s == 42.0


async def test_a_position_outside_the_universe_is_said_once_and_left_alone(tmp_path: Path):
    """The account held positions in symbols outside the universe (another run's, by hand):
    reconciliation left them alone without a word. Said once per symbol (a warning), never
    compared, blocked or alerted; a flat one says nothing."""
    import asyncio

    cfg = write_config(tmp_path, "recon-out", start="2016-01-01", end="2016-03-31", rate=500.0)
    config = load_config([ROOT / "config/default.toml", cfg], env={})
    engine = build_engine(config, "live")
    outside = {"GME": 10.0, "AMC": -3.0, "FLAT": 0.0}

    async def positions() -> dict[str, float]:
        book = {s: float(q) for s, q in zip(engine.symbols, engine.portfolio.quantity, strict=True)}
        return {**book, **outside}

    engine.broker.positions = positions  # type: ignore[attr-defined]
    engine.reconcile_confirm_s = 0.0
    with capture_logs() as logs:
        for _ in range(3):
            engine._bar_lock = asyncio.Lock()
            await engine._reconcile()
    said = [e for e in logs if e["event"] == "reconcile.outside_universe"]
    assert sorted((e["symbol"], e["broker"], e["log_level"]) for e in said) == [
        ("AMC", -3.0, "warning"),
        ("GME", 10.0, "warning"),
    ]
    assert all("not this run's" in e["rule"] and "left alone" in e["rule"] for e in said)
    assert engine.reconcile_blocked == {}
    assert not [e for e in logs if e["event"] == "reconcile.difference"]
