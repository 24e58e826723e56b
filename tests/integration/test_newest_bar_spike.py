"""A live feed's newest bar that jumps beyond `max_spike` from the previous close (feeds/
suspect.py), against the loopback Yahoo vendor with the real client and validation: held back
(NaN: not marked, not traded), then kept if the move held or dropped/repaired as a
backtest's load does. Before, a bad tick after a move passed validation (judged against the
two closes before it), was marked (a drawdown halt "until reset") and traded, and the next
answer dropped it; a real gap was refused, or served at the previous close."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest
from fakes import BarBook
from fakes.yahoo_server import YahooFake
from structlog.testing import capture_logs

from tradingd.core.ports import BarContext
from tradingd.core.types import CrossSection
from tradingd.engine.history import HistoryBuffer
from tradingd.engine.portfolio import Portfolio
from tradingd.feeds.resilience import ResilientCaller, SourceConfig
from tradingd.feeds.validate import DEFAULT_MAX_SPIKE, validate_frame
from tradingd.feeds.vendor import Validation, VendorFeed
from tradingd.feeds.yahoo import YahooClient
from tradingd_plugins.risk.drawdown import DrawdownGuard, DrawdownGuardConfig

SYMBOLS = ("AAA", "BBB", "CCC")
AAA = 0


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Ticks(BarBook):
    """The book's bars with AAA's prices multiplied by `factor[day]` (a move, a bad tick)."""

    factor: dict[date, float]

    def daily(self, symbol: str, first: date, last: date):  # type: ignore[no-untyped-def]
        out = super().daily(symbol, first, last)
        for b in out:
            k = self.factor.get(b.day, 1.0) if symbol == "AAA" else 1.0
            b.open, b.high, b.low, b.close = (
                round(x * k, 2) for x in (b.open, b.high, b.low, b.close)
            )
        return out


async def no_sleep(_: float) -> None:
    return None


def feed_on(fake: YahooFake, book: BarBook, repair: tuple[str, ...]) -> VendorFeed:
    caller = ResilientCaller(
        "yahoo",
        SourceConfig(max_attempts=2, backoff_base_s=0.0, timeout_s=2.0),
        sleep=no_sleep,
    )
    client = YahooClient(
        base_url=fake.url,
        caller=caller,
        clock=lambda: book.now,
        validation=Validation(repair=repair),
    )
    return VendorFeed(client, SYMBOLS, clock=lambda: book.now)


def backtest_rows(book: BarBook, last: date, repair: tuple[str, ...]) -> pd.DataFrame:
    """The same bars as a backtest's load holds them (every row known: a spike is judged by
    its reversal)."""
    rows = [
        {
            "time": b.day.isoformat(),
            "symbol": s,
            "open": b.open,
            "high": b.high,
            "low": b.low,
            "close": b.close,
            "volume": b.volume,
            "split": 1.0,
            "dividend": 0.0,
        }
        for s in SYMBOLS
        for b in book.daily(s, date(2024, 2, 20), last)
    ]
    return validate_frame(pd.DataFrame(rows), source="stored", symbol=None, repair=repair)


def said(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event]


def guard_verdict(guard: DrawdownGuard, book: Portfolio, bar: CrossSection) -> bool:
    """Marks `book` at `bar` as the engine does (NaN keeps the last mark) and asks the
    drawdown guard; True when it halts."""
    valid = bar.close == bar.close
    book.mark_to_market(bar.close, valid, bar.time)
    history = HistoryBuffer(len(SYMBOLS), 4)
    history.push(bar)
    ctx = BarContext(
        time=bar.time,
        index=0,
        symbols=SYMBOLS,
        bar=bar,
        mark=book.mark,
        tradable=valid,
        history=history,
        features={},
        portfolio=book.view(),
        ready=np.ones(len(SYMBOLS), dtype=bool),
    )
    guard.check(np.zeros(len(SYMBOLS)), ctx)
    return guard.halted


@pytest.mark.parametrize("repair", [(), ("spike",)], ids=["strict", "repair"])
async def test_a_bad_tick_after_a_move_is_held_back_not_marked_or_traded(repair):
    """AAA doubles on 5 March (a real move), prints 0.17x of the 4th's close on the 6th (a
    bad tick: 0.085x of the 5th's, within 10x of the 4th's) and is back on the 7th."""
    book = Ticks(now=utc(2024, 3, 5, 21, 5))
    book.factor = {date(2024, 3, d): 2.0 for d in range(5, 12)} | {date(2024, 3, 6): 0.17}
    async with YahooFake(book) as fake:
        feed = feed_on(fake, book, repair)
        await feed.start()
        try:
            before = await feed.bars(utc(2024, 3, 5))
            assert before.valid.all()
            # A portfolio all in AAA at the 5th's close, and a guard that halts until reset.
            held = Portfolio(SYMBOLS, 0.0)
            held.quantity[AAA] = 100.0
            guard = DrawdownGuard(DrawdownGuardConfig(recovery="halt"), SYMBOLS)
            assert not guard_verdict(guard, held, before)
            equity = held.equity

            book.now = utc(2024, 3, 6, 21, 5)
            with capture_logs() as logs:
                tick = await feed.bars(utc(2024, 3, 6))
            assert not guard_verdict(guard, held, tick)  # before: halted, until reset
            assert held.equity == equity == 100.0 * before.close[AAA]
            assert np.isnan(tick.close[AAA])  # no bar: not tradable, not marked
            assert tick.valid[1:].all()
            (warning,) = said(logs, "feed.bar_suspect")
            assert warning["log_level"] == "warning" and warning["symbol"] == "AAA"
            assert warning["previous_close"] == before.close[AAA]
            assert warning["max_spike"] == DEFAULT_MAX_SPIKE
            assert warning["prices"]["close"] < before.close[AAA] / DEFAULT_MAX_SPIKE

            book.now = utc(2024, 3, 7, 21, 5)
            with capture_logs() as logs:
                after = await feed.bars(utc(2024, 3, 7))
                stored = feed.take_late_bars()
            assert not guard_verdict(guard, held, after)
            (reversed_,) = said(logs, "feed.suspect_reversed")
            assert reversed_["action"] == ("repaired" if repair else "dropped")
            assert not said(logs, "feed.suspect_confirmed")
            # The 7th, 12x the print as it came, is held a bar too (strict as well: the
            # print is dropped, and the 7th jumps from it as it came): a backtest judges a
            # bar against its neighbours as they came.
            assert np.isnan(after.close[AAA]) and after.valid[1:].all()
            if not repair:
                assert stored == []  # dropped (a backtest without the repair refuses it)
                assert said(logs, "feed.row_dropped")
            else:  # repaired, the 6th is stored as a backtest of the same rows holds it
                bt = backtest_rows(book, date(2024, 3, 8), repair)
                aaa = bt[bt["symbol"] == "AAA"].set_index("time")["close"]
                (row,) = stored
                assert row.close[AAA] == aaa[pd.Timestamp("2024-03-06")]
            book.now = utc(2024, 3, 8, 21, 5)
            with capture_logs() as logs:
                third = await feed.bars(utc(2024, 3, 8))
                stored = feed.take_late_bars()
            assert third.valid.all()
            assert [e["bar"] for e in said(logs, "feed.suspect_confirmed")] == ["2024-03-07"]
            (row,) = stored
            (seventh,) = book.daily("AAA", date(2024, 3, 7), date(2024, 3, 7))
            assert row.close[AAA] == seventh.close  # the move held: as it came
            if not repair:
                return
            assert row.close[AAA] == aaa[pd.Timestamp("2024-03-07")]
            # The feed's history of the window is the backtest's but for its newest bar.
            bt = backtest_rows(book, date(2024, 3, 8), repair)
            aaa = bt[bt["symbol"] == "AAA"].set_index("time")["close"]
            history = await feed.history(utc(2024, 2, 20), utc(2024, 3, 8))
            assert len(history.times) == len(aaa)
            np.testing.assert_array_equal(history.close[:-1, AAA], aaa.to_numpy()[:-1])
        finally:
            await feed.stop()


@pytest.mark.parametrize("repair", [(), ("spike",)], ids=["strict", "repair"])
async def test_a_gap_that_holds_is_traded_from_the_next_bar(repair):
    """AAA opens at 10.5x on 6 March and stays there: held back at its bar, confirmed by the
    next, stored as the vendor has it and served from then on (a bar later than a backtest,
    which trades it at its bar). Before, it was refused, or served at the previous close."""
    book = Ticks(now=utc(2024, 3, 5, 21, 5))
    book.factor = {date(2024, 3, d): 10.5 for d in range(6, 12)}
    async with YahooFake(book) as fake:
        feed = feed_on(fake, book, repair)
        await feed.start()
        try:
            before = await feed.bars(utc(2024, 3, 5))
            book.now = utc(2024, 3, 6, 21, 5)
            with capture_logs() as logs:
                gap = await feed.bars(utc(2024, 3, 6))
            assert np.isnan(gap.close[AAA]) and gap.valid[1:].all()
            assert [e["symbol"] for e in said(logs, "feed.bar_suspect")] == ["AAA"]
            assert feed.take_late_bars() == []

            book.now = utc(2024, 3, 7, 21, 5)
            with capture_logs() as logs:
                after = await feed.bars(utc(2024, 3, 7))
                stored = feed.take_late_bars()
            assert after.valid.all()
            assert after.close[AAA] > before.close[AAA] * DEFAULT_MAX_SPIKE
            (confirmed,) = said(logs, "feed.suspect_confirmed")
            assert confirmed["symbol"] == "AAA"
            assert not said(logs, "feed.bar_suspect")  # said once, at its bar
            (row,) = stored
            bt = backtest_rows(book, date(2024, 3, 7), repair)
            want = bt[(bt["symbol"] == "AAA") & (bt["time"] == "2024-03-06")]
            assert row.time == utc(2024, 3, 6)
            assert row.close[AAA] == want["close"].iat[0] == confirmed["prices"][3]
            assert np.isnan(row.close[1:]).all()
        finally:
            await feed.stop()


@pytest.mark.parametrize("repair", [(), ("spike",)], ids=["strict", "repair"])
async def test_a_served_gap_is_not_judged_again_at_the_start_of_a_later_window(repair):
    """AAA jumps 10.5x on Friday 8 March and stays there; the gap is held, confirmed on the
    11th and served. On the 18th the answer's window (lookback 5: 11 days back) starts at the
    7th, the bar before the gap: judged against the two bars after it only (10.5x from both),
    it looked like a spike and was dropped (`feed.row_dropped`, strict) or restated
    (`data.restated`, repair), a bar served and traded ten days before. The window's first
    bar is judged with the bar before it, as a backtest of the whole history judges it."""
    book = Ticks(now=utc(2024, 3, 5, 21, 5))
    book.factor = {date(2024, 3, d): 10.5 for d in range(8, 31)}
    async with YahooFake(book) as fake:
        feed = feed_on(fake, book, repair)
        await feed.start()
        try:
            served: dict[date, float] = {}
            events: list[dict] = []
            for day in pd.bdate_range("2024-03-05", "2024-03-22").date:
                book.now = utc(day.year, day.month, day.day, 21, 5)
                with capture_logs() as logs:
                    bar = await feed.bars(utc(day.year, day.month, day.day))
                    feed.take_late_bars()
                events += logs
                if not np.isnan(bar.close[AAA]):
                    served[day] = float(bar.close[AAA])
            assert date(2024, 3, 7) in served and date(2024, 3, 11) in served
            assert [e["bar"] for e in said(events, "feed.bar_suspect")] == ["2024-03-08"]
            assert [e["bar"] for e in said(events, "feed.suspect_confirmed")] == ["2024-03-08"]
            assert not said(events, "feed.row_dropped")
            assert not said(events, "data.restated")
            assert not said(events, "feed.suspect_reversed")
            # Everything served is what a backtest of the whole history holds.
            bt = backtest_rows(book, date(2024, 3, 22), repair)
            aaa = bt[bt["symbol"] == "AAA"].set_index("time")["close"]
            for day, close in served.items():
                assert close == aaa[pd.Timestamp(day)], day
        finally:
            await feed.stop()
