"""A live daemon and a split in a symbol it holds or orders, against the loopback Alpaca.

Alpaca splits a position before the ex-date's session opens and keeps the open orders as
they were; the book learned of the split only from the ex-date's bar. An entry decided the
bar before filled in post-split terms and was split again by the book; the run's exits kept
pre-split prices; a reverse split's fraction stayed in the book and blocked the symbol for
good. The daemon now reads the splits announced in Alpaca's corporate actions (alpaca-py's
real client, served by the fake) and holds a symbol splitting at the next session for that
bar. Each test runs the whole live engine: a first process up to the bar before the ex-date,
the account split while it is down (as Alpaca does overnight), a second process that
reconciles at its start (what a heartbeat does during the ex-date's session) and steps the
ex-date's bar. No test sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sqlite3
import sys
import time
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import make_panel
from fakes.alpaca_trading_server import AlpacaTradingFake, running_fake
from fakes.hung_host import hung_host
from live_on_fake import live_on_fake
from structlog.testing import capture_logs

from tradingd.app import build_engine, health_inputs
from tradingd.core.types import Split
from tradingd.engine import splits_ahead
from tradingd.feeds.panel import Panel

RUN = "split-ahead"
EX = 63  # the ex-date's bar; trading starts at bar 60


@pytest.fixture
def fake(monkeypatch):
    with running_fake(monkeypatch, cash=1_000_000.0) as server:
        yield server


class _Scripted:
    """Long S00 from the first traded bar; long S01 from the bar before the ex-date (an
    entry decided then, for the ex-date's open)."""

    kind: ClassVar[str] = "signal"
    name = "scripted"

    def __init__(self, s01_from: Any) -> None:
        self.s01_from = s01_from

    def required_features(self) -> tuple[str, ...]:
        return ()

    def score(self, ctx: Any) -> np.ndarray:
        score = np.zeros(len(ctx.symbols))
        score[0] = 1.0
        if ctx.time >= self.s01_from:
            score[1] = 1.0
        return score


def _split_panel(ratio: float, columns: list[int], not_in_bar: tuple[int, ...] = ()) -> Panel:
    """make_panel's 90 bars with `columns` split by `ratio` at bar EX (prices divided,
    volume multiplied from then on), as a feed shows a split; `not_in_bar`: columns whose
    bar EX has the post-split prices and no split (a vendor posting the split event late)."""
    p = make_panel(n_bars=90, split_at=None)
    arrays = {name: getattr(p, name).copy() for name in ("open", "high", "low", "close", "volume")}
    split = p.split.copy()
    for j in columns:
        for name in ("open", "high", "low", "close"):
            arrays[name][EX:, j] /= ratio
        arrays["volume"][EX:, j] *= ratio
        split[EX, j] = 1.0 if j in not_in_bar else ratio
    return Panel(
        times=p.times, symbols=p.symbols, split=split, dividend=p.dividend.copy(), **arrays
    )


def _config(engine_config: Any, fake: AlpacaTradingFake, panel: Panel) -> Any:
    _, config = live_on_fake(engine_config, fake, RUN)
    return dataclasses.replace(
        config,
        orders=dataclasses.replace(config.orders, brackets=True),
        broker=dataclasses.replace(
            config.broker,
            alpaca=dataclasses.replace(config.broker.alpaca, data_url=fake.url),
        ),
    )


def _engine(config: Any, panel: Panel, stop_at: Any) -> Any:
    engine = build_engine(config, "live", panel=panel)
    engine.pipeline.signals = [(_Scripted(panel.datetimes()[EX - 1]), 1.0)]
    engine.after_bar.append(lambda t, v: engine.request_stop() if t >= stop_at else None)
    return engine


def _alerts(engine: Any) -> list[Any]:
    """The reconciliation alerts `engine` raises, as sent."""
    sent: list[Any] = []
    condition = engine.alerter.condition

    def recording(*args: Any, **kwargs: Any) -> Any:
        alert = condition(*args, **kwargs)
        if alert is not None and alert.kind == "reconciliation":
            sent.append(alert)
        return alert

    engine.alerter.condition = recording
    return sent


async def _up_to_the_eve(engine_config, fake, ratio, panel=None):  # type: ignore[no-untyped-def]
    """The first process, through the bar before the ex-date: S00 bought at bar 60 (filled
    at its close), its bracket's exits resting; the split announced for S00 and S01 (the
    bars: `panel`, by default both split at EX by `ratio`)."""
    panel = _split_panel(ratio, [0, 1]) if panel is None else panel
    config = _config(engine_config, fake, panel)
    times = panel.datetimes()
    entry_price = float(panel.close[60, 0])
    fake.fill_on_submit = lambda o: entry_price if o.symbol == "S00" else None
    new, old = (ratio, 1.0) if ratio >= 1 else (1.0, round(1 / ratio))
    for sym in ("S00", "S01"):
        fake.call(fake.announce_split, sym, times[EX].date(), new, old)
    first = _engine(config, panel, times[EX - 1])
    event = first.alerter.event
    first.told = told = []  # the one-off alerts it sends

    def recording(*args: Any, **kwargs: Any) -> Any:
        alert = event(*args, **kwargs)
        if alert is not None:
            told.append(alert)
        return alert

    first.alerter.event = recording
    with capture_logs() as logs:
        await first.run_until_done()
    return panel, config, first, logs


def _open_run_orders(fake: AlpacaTradingFake, sym: str) -> list[Any]:
    """The orders open in `sym` (the run's: the account has no other), legs included."""
    return [o for o in fake.orders.values() if o.symbol == sym and o.is_open]


def _overnight(fake: AlpacaTradingFake, panel: Panel, new: float, old: float) -> None:
    """What Alpaca does before the ex-date's open: both positions split (the fraction paid
    at the ex-date's close), the orders kept; a working entry in S01 fills at the open."""
    for j, sym in enumerate(("S00", "S01")):
        price = float(panel.close[EX, j])
        fake.call(fake.split_position, sym, new, old, cash_in_lieu_price=price)
    for o in _open_run_orders(fake, "S01"):
        if o.parent_id is None and o.side == "buy":
            fake.call(fake.fill, o.client_order_id, price=float(panel.open[EX, 1]))


def _position(fake: AlpacaTradingFake, sym: str) -> float:
    return fake.positions_book.get(sym, (0.0, 0.0))[0]


async def test_a_forward_split_holds_the_symbol_a_bar_and_the_book_equals_the_account(
    engine_config, fake
):
    panel, config, first, logs = await _up_to_the_eve(engine_config, fake, 4.0)
    held = first.portfolio.quantity_of("S00")
    assert held > 0, "S00 must be held with its exits resting before the ex-date"
    working_at_eve = _open_run_orders(fake, "S00") + _open_run_orders(fake, "S01")

    _overnight(fake, panel, 4.0, 1.0)
    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    with capture_logs() as later:
        await second.run_until_done()

    for sym in ("S00", "S01"):
        assert second.portfolio.quantity_of(sym) == _position(fake, sym), sym
    assert second.portfolio.quantity_of("S00") == 4 * held
    assert not alerts and "S00" not in second.reconcile_blocked
    assert any(e["event"] == "reconcile.split_expected" for e in later)
    [ahead] = [e for e in logs if e["event"] == "split.ahead" and e["symbol"] == "S00"]
    assert ahead["ratio"] == "4:1" and ahead["log_level"] == "warning"
    [told] = [a for a in first.told if a.title.startswith("S00 ")]
    assert told.severity == "info" and "4:1" in told.title
    _, status, _ = health_inputs(first)  # /status at the eve: the held splits
    assert {(h["symbol"], h["split"], h["ex_date"]) for h in status()["splits"]["held"]} == {
        (sym, "4:1", panel.datetimes()[EX].date().isoformat()) for sym in ("S00", "S01")
    }
    assert status()["splits"]["last_error"] is None
    # The bar before the ex-date sent nothing in S00 or S01, and cancelled S00's exits: its
    # plan did, not a second cancellation beside it (the split was known at that bar).
    assert not working_at_eve
    assert not [e for e in logs + later if e["event"] == "split.orders_cancelled"]
    # Exits again, for the split position at post-split prices.
    close = float(panel.close[EX, 0])
    exits = _open_run_orders(fake, "S00")
    stops = [o for o in exits if o.stop_price is not None]
    limits = [o for o in exits if o.limit_price is not None and o.stop_price is None]
    assert stops and limits
    assert all(o.qty == 4 * held for o in exits)
    assert all(close / 2 < o.stop_price < close for o in stops)
    assert all(close < o.limit_price < 2 * close for o in limits)


async def test_a_reverse_split_pays_the_fraction_in_cash_and_flatten_trades_the_rest(
    engine_config, fake
):
    panel, config, first, _ = await _up_to_the_eve(engine_config, fake, 0.1)
    held = first.portfolio.quantity_of("S00")
    assert held >= 10 and held % 10, "the position must keep whole shares and a fraction"

    _overnight(fake, panel, 1.0, 10.0)
    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    cash_before = None

    def cash_at_eve(i: int, t: Any) -> None:
        nonlocal cash_before
        if cash_before is None:
            cash_before = second.portfolio.cash

    second._on_bar = cash_at_eve  # called for the replayed bars before the ex-date's
    with capture_logs() as logs:
        await second.run_until_done()

    whole = math.floor(held / 10)
    assert second.portfolio.quantity_of("S00") == whole == _position(fake, "S00")
    [paid] = [e for e in logs if e["event"] == "split.cash_in_lieu"]
    close = float(panel.close[EX, 0])
    assert paid["symbol"] == "S00" and paid["price"] == close
    assert paid["cash"] == pytest.approx((held / 10 - whole) * close)
    assert not alerts and "S00" not in second.reconcile_blocked
    # In the audit log too, with the bar's time.
    lines = [json.loads(x) for x in second.audit.path.read_text().splitlines()]
    [audited] = [x for x in lines if x["event"] == "cash_in_lieu"]
    assert audited["symbol"] == "S00" and audited["cash"] == pytest.approx(paid["cash"])
    assert audited["shares"] == paid["shares"] and audited["price"] == close
    assert audited["time"] == panel.datetimes()[EX].isoformat()

    # A third start, flattening: S00 is not blocked, so its whole shares are sold.
    posted = len(fake.posted_orders())
    third = _engine(config, panel, panel.datetimes()[EX + 1])
    await third.set_trading_state("flattening")
    with capture_logs() as logs:
        await third.run_until_done()
    assert "S00" not in third.reconcile_blocked
    assert not [e for e in logs if e["event"] == "control.flatten_skipped"]
    sells = [
        b for b in fake.posted_orders()[posted:] if b["symbol"] == "S00" and b["side"] == "sell"
    ]
    assert [float(b["qty"]) for b in sells if b.get("type") == "market"] == [whole]


@pytest.mark.parametrize("ratio", [4.0, 0.1])
async def test_an_announced_split_whose_bar_lacks_it_is_applied_when_its_prices_show_it(
    engine_config, fake, ratio
):
    """A vendor posting the split event late: S00's ex-date bar has the post-split prices
    and split 1.0, the account was split overnight. The book kept the pre-split shares: a
    4:1 was a 75% loss and a drawdown halt, a 1:10 a false 9x gain that a market sell of
    90% of the real position took off the account."""
    panel = _split_panel(ratio, [0, 1], not_in_bar=(0,))
    panel, config, first, _ = await _up_to_the_eve(engine_config, fake, ratio, panel)
    held = first.portfolio.quantity_of("S00")
    new, old = (ratio, 1.0) if ratio >= 1 else (1.0, round(1 / ratio))
    _overnight(fake, panel, new, old)
    posted = len(fake.posted_orders())

    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    with capture_logs() as logs:
        await second.run_until_done()

    split = math.floor(held * ratio + 1e-9)
    assert second.portfolio.quantity_of("S00") == split == _position(fake, "S00")
    assert not alerts and not second.reconcile_blocked
    assert second.trading_state == "active"
    [applied] = [e for e in logs if e["event"] == "split.from_announcement"]
    assert applied["symbol"] == "S00" and applied["log_level"] == "warning"
    assert applied["ratio"] == ("4:1" if ratio > 1 else "1:10")
    assert "corporate actions" in applied["source"]
    assert not [e for e in logs if e["event"] in ("split.not_in_bar", "split.unconfirmed")]
    if ratio < 1:
        [paid] = [e for e in logs if e["event"] == "split.cash_in_lieu"]
        assert paid["symbol"] == "S00" and paid["shares"] == pytest.approx(held / 10 - split)
    # No market order in S00 (the reverse split's false gain sold 90% of the account's);
    # its exits again, for the split position at post-split prices, as with the split in
    # the bar.
    sent = [b for b in fake.posted_orders()[posted:] if b["symbol"] == "S00"]
    assert not [b for b in sent if b.get("type") == "market"]
    close = float(panel.close[EX, 0])
    exits = _open_run_orders(fake, "S00")
    stops = [o for o in exits if o.stop_price is not None]
    assert stops and all(o.qty == split for o in exits)
    assert all(close / 2 < o.stop_price < close for o in stops)
    # The history is split-adjusted as for a split in the bar: no crash between the bars.
    if second.history.capacity >= 2:
        before, at = second.history.window("close", 2)[:, 0]
        assert before == pytest.approx(float(panel.close[EX - 1, 0]) / ratio)
        assert at == float(panel.close[EX, 0])


async def test_an_announced_split_neither_in_its_bar_nor_its_prices_holds_the_symbol(
    engine_config, fake
):
    """The account split 4:1 overnight, but S00's ex-date bar shows no split, neither in
    its split field nor in its prices: nothing to book it on. The symbol is held (no order)
    and alerted, and the difference says what happened, not that a bar will split it."""
    panel = _split_panel(4.0, [1])  # S00 unmoved, no split
    panel, config, first, _ = await _up_to_the_eve(engine_config, fake, 4.0, panel)
    held = first.portfolio.quantity_of("S00")
    _overnight(fake, panel, 4.0, 1.0)
    posted = len(fake.posted_orders())

    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    with capture_logs() as logs:
        await second.run_until_done()

    assert second.portfolio.quantity_of("S00") == held and _position(fake, "S00") == 4 * held
    why = second.reconcile_blocked["S00"]
    assert "announced 4:1 split" in why and "check the account" in why
    assert "ex-date's bar" not in why  # no bar is still to split it
    [said] = [e for e in logs if e["event"] == "split.unconfirmed"]
    assert said["symbol"] == "S00" and said["log_level"] == "error"
    [alert] = [a for a in alerts if a.key == "S00"]
    assert alert.severity == "critical" and "4:1" in alert.text
    assert not [b for b in fake.posted_orders()[posted:] if b["symbol"] == "S00"]
    assert not _open_run_orders(fake, "S00")
    # S01's bar shows its split: applied as ever.
    assert "S01" not in second.reconcile_blocked


def _lookup_off(config: Any) -> Any:
    """`config` with broker.alpaca.splits_ahead = false: splits found by the bar and by
    reconciliation only (the fallback of a lookup off or failing)."""
    alpaca = dataclasses.replace(config.broker.alpaca, splits_ahead=False)
    return dataclasses.replace(config, broker=dataclasses.replace(config.broker, alpaca=alpaca))


async def test_without_the_lookup_the_split_bar_that_makes_the_book_agree_releases_the_symbol(
    engine_config, fake
):
    """The lookup off: the account split 4:1 overnight, reconciliation at the start blocks
    S00 (split-shaped), and the ex-date's bar splits the book to the broker's quantity. The
    block lasted until the next round (300 s): no exits placed at that bar, the pre-split
    stop resting at four times the post-split price."""
    panel = _split_panel(4.0, [0])
    config = _lookup_off(_config(engine_config, fake, panel))
    entry_price = float(panel.close[60, 0])
    fake.fill_on_submit = lambda o: entry_price if o.symbol == "S00" else None
    first = _engine(config, panel, panel.datetimes()[EX - 1])
    await first.run_until_done()
    held = first.portfolio.quantity_of("S00")
    fake.call(fake.split_position, "S00", 4.0, 1.0)

    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    blocked: dict[Any, set[str]] = {}
    second.after_bar.insert(0, lambda t, v: blocked.__setitem__(t, set(second.reconcile_blocked)))
    with capture_logs() as logs:
        await second.run_until_done()

    assert alerts[0].key == "S00" and alerts[0].severity == "warning"  # at the start
    assert blocked[panel.datetimes()[EX]] == set()
    assert second.portfolio.quantity_of("S00") == 4 * held == _position(fake, "S00")
    [resolved] = [e for e in logs if e["event"] == "reconcile.resolved"]
    assert resolved["symbol"] == "S00" and resolved["time"] == panel.datetimes()[EX]
    assert "S00" not in {a["key"] for a in second.alerter.firing()}
    # Its exits at that bar, for the split position at post-split prices.
    close = float(panel.close[EX, 0])
    exits = _open_run_orders(fake, "S00")
    stops = [o for o in exits if o.stop_price is not None]
    assert stops and all(o.qty == 4 * held for o in exits)
    assert all(close / 2 < o.stop_price < close for o in stops)


@pytest.mark.parametrize(("new", "old"), [(3, 2), (1, 10)])
async def test_without_the_lookup_a_split_leaving_a_fraction_pays_it_in_cash(
    engine_config, fake, new, old
):
    """The lookup off, a 3:2 (or 1:10) split: the account holds the floor of the split
    position (its fraction paid in cash). Only whole ratios were recognised (a 3:2 was a
    critical "unexplained" difference at the start), and after the bar the book kept the
    fraction the account paid out, blocking the symbol for good."""
    ratio = new / old
    panel = _split_panel(ratio, [0])
    config = _lookup_off(_config(engine_config, fake, panel))
    entry_price = float(panel.close[60, 0])
    fake.fill_on_submit = lambda o: entry_price if o.symbol == "S00" else None
    first = _engine(config, panel, panel.datetimes()[EX - 1])
    await first.run_until_done()
    held = first.portfolio.quantity_of("S00")
    assert held * ratio % 1, "the position must leave a fraction of a share"
    close = float(panel.close[EX, 0])
    fake.call(fake.split_position, "S00", float(new), float(old), cash_in_lieu_price=close)

    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    with capture_logs() as logs:
        await second.run_until_done()

    assert alerts[0].key == "S00" and alerts[0].severity == "warning"
    assert f"{new}:{old}, as a split would" in alerts[0].text
    whole = math.floor(held * ratio)
    assert second.portfolio.quantity_of("S00") == whole == _position(fake, "S00")
    [paid] = [e for e in logs if e["event"] == "split.cash_in_lieu"]
    assert paid["symbol"] == "S00" and paid["shares"] == pytest.approx(held * ratio - whole)
    assert paid["cash"] == pytest.approx((held * ratio - whole) * close)
    assert "S00" not in second.reconcile_blocked
    assert "S00" not in {a["key"] for a in second.alerter.firing()}


async def test_a_failed_lookup_is_a_warning_and_trading_goes_on_as_before(engine_config, fake):
    fake.fail_corporate_actions(n=1000, status=403)
    _, _, first, logs = await _up_to_the_eve(engine_config, fake, 4.0)

    # Asked once and warned once (the failure's backoff), not at every bar.
    assert len(fake._ca_failures) == 1000 - 1
    [failed] = [e for e in logs if e["event"] == "split.lookup_failed"]
    assert failed["log_level"] == "warning" and "403" in failed["error"]
    assert "403" in first.splits_ahead.last_error
    [alert] = [a for a in first.alerter.firing() if a["key"] == "corporate_actions"]
    assert alert["kind"] == "source_down" and alert["severity"] == "warning"
    _, status, _ = health_inputs(first)
    assert "403" in status()["splits"]["last_error"] and status()["splits"]["held"] == []
    assert not [e for e in logs if e["event"] == "split.ahead"]
    # As before: the entry decided at the eve is sent and S00's exits stay.
    assert [o for o in _open_run_orders(fake, "S01") if o.parent_id is None]
    assert _open_run_orders(fake, "S00")


async def test_a_restart_between_the_eve_and_the_ex_date_bar_still_knows_the_split(
    engine_config, fake
):
    panel, config, first, _ = await _up_to_the_eve(engine_config, fake, 4.0)
    held = first.portfolio.quantity_of("S00")
    _overnight(fake, panel, 4.0, 1.0)
    fake.fail_corporate_actions(n=1000, status=403)  # the source is no help after the restart

    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    blocked_at_start: list[str] = []
    second.after_bar.insert(0, lambda t, v: blocked_at_start.extend(second.reconcile_blocked))
    with capture_logs() as logs:
        await second.run_until_done()

    assert not blocked_at_start and not alerts
    said = [e for e in logs if e["event"] == "reconcile.split_expected"]
    assert said and said[0]["broker"] == 4 * held and said[0]["book"] == held
    assert second.portfolio.quantity_of("S00") == 4 * held == _position(fake, "S00")


async def test_a_restart_on_the_ex_date_asks_when_the_eve_lookup_failed(engine_config, fake):
    """The eve's lookup failed (the only one before the ex-date with daily bars); the daemon
    restarts on the ex-date with the source working again: its start-up asks for the splits
    going ex from the day of its next bar, so the 1:10 is expected by the reconciliation and
    applied by the ex-date's bar, its fraction paid in cash."""
    fake.fail_corporate_actions(n=1000, status=500)
    panel, config, first, logs = await _up_to_the_eve(engine_config, fake, 0.1)
    assert [e for e in logs if e["event"] == "split.lookup_failed"]
    assert not first.splits_ahead.held
    held = first.portfolio.quantity_of("S00")
    assert held >= 10 and held % 10
    _overnight(fake, panel, 1.0, 10.0)
    fake.call(fake.corporate_actions_work)

    second = _engine(config, panel, panel.datetimes()[EX])
    alerts = _alerts(second)
    blocked_at_start: list[str] = []
    second.after_bar.insert(0, lambda t, v: blocked_at_start.extend(second.reconcile_blocked))
    with capture_logs() as later:
        await second.run_until_done()

    whole = math.floor(held / 10)
    assert second.portfolio.quantity_of("S00") == whole == _position(fake, "S00")
    assert not blocked_at_start and not alerts and not second.reconcile_blocked
    said = [e for e in later if e["event"] == "reconcile.split_expected" and e["symbol"] == "S00"]
    assert said and said[0]["book"] == held and said[0]["ratio"] == "1:10"
    [paid] = [e for e in later if e["event"] == "split.cash_in_lieu"]
    assert paid["symbol"] == "S00"
    assert paid["cash"] == pytest.approx((held / 10 - whole) * float(panel.close[EX, 0]))


async def test_a_hung_corporate_actions_host_does_not_hold_up_the_bars(engine_config, fake):
    """A host that accepts and never answers: the run's first bar waits for the day's lookup
    at most quick_s, the other bars not at all (one lookup in flight, never a second request
    beside it); before, every bar waited out the request's timeout and its retries."""
    panel = _split_panel(4.0, [0, 1])
    config = _config(engine_config, fake, panel)
    with hung_host() as host:
        config = dataclasses.replace(
            config,
            broker=dataclasses.replace(
                config.broker,
                alpaca=dataclasses.replace(
                    config.broker.alpaca,
                    data_url=host.url,
                    request_timeout_s=1.0,
                    call_timeout_s=3.0,
                ),
            ),
        )
        engine = _engine(config, panel, panel.datetimes()[EX + 5])
        engine.splits_ahead.quick_s = 0.2
        source = engine.splits_ahead.source
        asked = []
        splits = source.splits

        async def counted(*args: Any) -> Any:
            asked.append(args[1:])
            return await splits(*args)

        source.splits = counted
        t0 = time.monotonic()
        await engine.run_until_done()
        took = time.monotonic() - t0

    assert engine.bars_processed > 5
    assert len(asked) == 1 and len(host.connections) <= 3  # that lookup's attempts
    assert engine.splits_ahead.done_for is None
    # 0.2 s of waiting in all; the bound leaves room for a busy machine (before: each bar
    # asked again, waiting out timeouts and retries until the breaker opened: ~10 s here).
    assert took < 5.0


async def test_a_backtest_never_asks_for_corporate_actions(engine_config, monkeypatch):
    """The simulated broker splits at the bar, as the book does: a replay builds no source
    (keys in the environment, broker.kind alpaca) and applies the panel's split as before."""
    from tradingd.feeds import corporate_actions

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a backtest asked for corporate actions")

    monkeypatch.setattr(corporate_actions.AlpacaSplits, "splits", refuse)
    monkeypatch.setenv("APCA_API_KEY_ID", "k")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "s")
    config = dataclasses.replace(
        engine_config, broker=dataclasses.replace(engine_config.broker, kind="alpaca")
    )
    engine = build_engine(config, "backtest", panel=make_panel(n_bars=200))
    result = await engine.run_until_done()
    assert engine.splits_ahead is None
    assert result.bars > 0 and engine._splits == 1


async def test_an_alpaca_py_without_the_corporate_actions_client_is_an_error_at_start(
    engine_config, fake, monkeypatch
):
    """An alpaca-py older than the pin: said once, as an error naming the version needed,
    at the start; no lookup is tried (it failed at every day's lookup with an ImportError,
    warned and alerted as if Alpaca did not answer)."""
    panel = _split_panel(4.0, [0])
    config = _config(engine_config, fake, panel)
    monkeypatch.setitem(sys.modules, "alpaca.data.historical.corporate_actions", None)
    with capture_logs() as logs:
        engine = build_engine(config, "live", panel=panel)
    assert engine.splits_ahead is None
    [off] = [e for e in logs if e["event"] == "split.ahead_off"]
    assert off["log_level"] == "error" and "alpaca-py>=0.33" in off["reason"]


async def test_a_split_learned_at_a_restart_cancels_the_runs_orders_in_it_before_any_bar(
    engine_config, fake, tmp_path
):
    """The eve's bar was decided before the split was known (here its lookup failed; a split
    announced after that bar is the same), so S00's exits and S01's entry still work at the
    broker. A restart before the ex-date's bar learns of the split at its start, and logged
    that the symbol's resting orders are cancelled, but nothing cancelled them before the
    ex-date's bar: Alpaca keeps them across the split, and a pre-split stop above the
    post-split price sells the position at the open. They are cancelled at the start now."""
    fake.fail_corporate_actions(n=1000, status=500)
    panel, config, _, _ = await _up_to_the_eve(engine_config, fake, 4.0)
    working = {o.client_order_id for o in _open_run_orders(fake, "S00")}
    assert working, "S00's exits rest at the broker after the eve"
    fake.call(fake.corporate_actions_work)

    second = _engine(config, panel, panel.datetimes()[EX])
    seen_at_ex: list[set[str]] = []
    step = second.step

    async def watching(bar: Any, trade: Any = None) -> None:
        if bar.time == panel.datetimes()[EX] and not seen_at_ex:
            seen_at_ex.append({o.client_order_id for o in fake.orders.values() if o.is_open})
        await step(bar, trade)

    second.step = watching
    with capture_logs() as logs:
        await second.run_until_done()

    assert seen_at_ex and not (seen_at_ex[0] & working)  # gone before the ex-date's bar
    [said] = [e for e in logs if e["event"] == "split.orders_cancelled"]
    assert "S00" in said["symbols"] and any("|S00|" in c for c in said["cancelled"])
    # Each stored cancel says the split caused it ("rebalance: position closed or cut").
    with sqlite3.connect(tmp_path / "store.db") as con:
        reasons = con.execute(
            "select reason from orders where symbol = 'S00' and status = 'cancelled'"
        ).fetchall()
    assert len(reasons) == len(working)
    assert all(r.startswith("split: S00") and "ex-date" in r for (r,) in reasons), reasons


async def test_a_split_the_heartbeat_learns_between_bars_cancels_the_runs_orders_before_the_open(
    engine_config, fake
):
    """A daemon that keeps running: the eve's bar decided with the splits known the day
    before, and its own lookup (for the ex-date) failed; the split is announced after that
    bar, and the heartbeat's retry, past the failure's backoff, learns of it during the night.
    Nothing took it up before the ex-date's bar, so S00's exits stayed: Alpaca keeps them
    across the split, and a pre-split stop above the post-split price sells the position at
    the open. The symbol is held and they are cancelled when the lookup learns of the split,
    as at a start-up, once (not at a second learning, nor after the ex-date's bar, whose
    post-split exits stay); the ex-date's bar places them again."""
    panel = _split_panel(4.0, [0])
    config = _config(engine_config, fake, panel)
    config = dataclasses.replace(config, live=dataclasses.replace(config.live, heartbeat_s=0.01))
    times = panel.datetimes()
    eve, ex = times[EX - 1], times[EX]
    entry_price = float(panel.close[60, 0])
    fake.fill_on_submit = lambda o: entry_price if o.symbol == "S00" else None
    engine = _engine(config, panel, times[EX + 1])
    alerts = _alerts(engine)
    ahead = engine.splits_ahead
    learned = asyncio.Event()
    splits = ahead.source.splits

    async def answered(*args: Any) -> Any:
        found = await splits(*args)
        if any(s.symbol == "S00" for s in found):
            learned.set()
        return found

    ahead.source.splits = answered

    async def settled() -> None:
        """The daemon's cancellations for the splits a lookup learned (the lookup's tasks
        start them), done."""
        pending = [t for t in asyncio.all_tasks() if t.get_name() == "splits learned"]
        await asyncio.gather(*pending)

    working: set[str] = set()
    held = 0.0
    bars = engine.feed.bars

    async def fetching(t: Any) -> Any:
        nonlocal held
        if t == eve:
            # The lookup the eve's bar decides with (the day before's) has answered; the one
            # it starts for the ex-date fails (a 403 is not retried; the backoff follows).
            task = ahead.start(ahead.day_of(eve))
            if task is not None:
                await task
            fake.call(fake.fail_corporate_actions, 1, 403)
        elif t == ex:
            task = ahead.start(ex.date())  # the eve's failing lookup, if still in flight
            if task is not None:
                await task
            assert ahead.last_error is not None and not ahead.held
            held = engine.portfolio.quantity_of("S00")
            working.update(o.client_order_id for o in _open_run_orders(fake, "S00"))
            # After the eve's bar: the split announced, the night past the backoff, and the
            # heartbeat (not a bar) asks again.
            fake.call(fake.announce_split, "S00", ex.date(), 4.0, 1.0)
            ahead._monotonic = lambda: time.monotonic() + splits_ahead.MAX_BACKOFF_S
            await asyncio.wait_for(learned.wait(), 10.0)
            task = ahead.start(ex.date())  # that lookup, if it has not finished
            if task is not None:
                await task
            await settled()
            # A second learning of it (a lookup answering it again) cancels nothing more.
            ahead.on_learned({"S00": ahead.known["S00"]})
            await settled()
            # Alpaca, before the open: the position split, the orders still open kept.
            fake.call(
                fake.split_position, "S00", 4.0, 1.0, cash_in_lieu_price=float(panel.close[EX, 0])
            )
            seen.append({o.client_order_id for o in _open_run_orders(fake, "S00")})
        elif t == times[EX + 1]:
            # Learned again after the ex-date's bar: its post-split exits stay.
            exits = {o.client_order_id for o in _open_run_orders(fake, "S00")}
            ahead.on_learned({"S00": Split("S00", ex.date(), 4.0)})
            await settled()
            after_ex.append((exits, {o.client_order_id for o in _open_run_orders(fake, "S00")}))
        return await bars(t)

    seen: list[set[str]] = []
    after_ex: list[tuple[set[str], set[str]]] = []
    engine.feed.bars = fetching
    with capture_logs() as logs:
        await engine.run_until_done()

    assert held > 0 and working, "S00 held with its exits resting after the eve"
    assert seen and not (seen[0] & working)  # gone before the ex-date's open
    [said] = [e for e in logs if e["event"] == "split.orders_cancelled"]
    assert said["symbols"] == ["S00"] and any("|S00|" in c for c in said["cancelled"])
    [ahead_said] = [e for e in logs if e["event"] == "split.ahead"]
    assert ahead_said["symbol"] == "S00" and ahead_said["ratio"] == "4:1"
    # The ex-date's bar: the book split as the account, no alert, exits placed again.
    assert engine.portfolio.quantity_of("S00") == 4 * held == _position(fake, "S00")
    assert not alerts and "S00" not in engine.reconcile_blocked
    close = float(panel.close[EX, 0])
    exits = _open_run_orders(fake, "S00")
    stops = [o for o in exits if o.stop_price is not None]
    assert stops and all(o.qty == 4 * held for o in exits)
    assert all(close / 2 < o.stop_price < close for o in stops)
    [(exits_then, exits_after)] = after_ex
    assert exits_then and exits_after == exits_then
