"""The splits source (tradingd.feeds.corporate_actions) through alpaca-py's real
`CorporateActionsClient` against the loopback Alpaca, and the book's cash in lieu."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from tradingd.engine.portfolio import Portfolio
from tradingd.feeds.corporate_actions import AlpacaSplits, Split, parse_splits
from tradingd.feeds.resilience import SourceConfig, SourceError


def _source(fake) -> AlpacaSplits:  # type: ignore[no-untyped-def]
    return AlpacaSplits(
        fake.key_id,
        fake.secret_key,
        base_url=fake.url,
        config=SourceConfig(max_attempts=1, timeout_s=5.0),
        request_timeout_s=5.0,
    )


async def test_splits_are_read_across_pages_for_the_symbols_and_window_asked(fake):
    fake.announce_split("AAA", date(2026, 3, 2), 4, 1)
    fake.announce_split("BBB", date(2026, 3, 3), 1, 10)
    fake.announce_split("CCC", date(2026, 3, 3), 3, 2)  # not asked for
    fake.announce_split("AAA", date(2026, 4, 1), 2, 1)  # after the window
    fake.corporate_actions_page_size = 1
    source = _source(fake)
    try:
        found = await source.splits(["AAA", "BBB"], date(2026, 3, 1), date(2026, 3, 8))
    finally:
        source.close()

    assert found == [Split("AAA", date(2026, 3, 2), 4.0), Split("BBB", date(2026, 3, 3), 0.1)]
    assert [s.text() for s in found] == ["4:1", "1:10"]
    asked = [r for r in fake.requests if r.path == "/v1/corporate-actions"]
    assert len(asked) == 2  # one page each: alpaca-py followed next_page_token
    q = asked[0].query
    assert q["symbols"] == "AAA,BBB" and q["types"] == "forward_split,reverse_split"
    assert (q["start"], q["end"]) == ("2026-03-01", "2026-03-08")
    assert set(asked[0].auth_headers) == {"APCA-API-KEY-ID", "APCA-API-SECRET-KEY"}


async def test_the_window_is_on_the_process_date_as_alpaca_documents(fake):
    """Alpaca's data API filters start/end by process date: a split processed after the
    window is not listed, whatever its ex-date."""
    fake.announce_split("AAA", date(2026, 3, 2), 4, 1, process_date=date(2026, 3, 10))
    fake.announce_split("BBB", date(2026, 2, 27), 2, 1, process_date=date(2026, 3, 2))
    source = _source(fake)
    try:
        found = await source.splits(["AAA", "BBB"], date(2026, 3, 1), date(2026, 3, 8))
    finally:
        source.close()
    assert found == [Split("BBB", date(2026, 2, 27), 2.0)]


async def test_the_data_fake_announces_its_books_splits_in_alpacas_shape():
    """The market-data fake serves the BarBook's splits (what its adjusted bars show) to the
    same client: 4:1, 1:10 and 3:2 come back as announced."""
    from fakes import BarBook
    from fakes.alpaca_data_server import AlpacaDataFake

    book = BarBook()
    book.add_split("AAA", date(2024, 3, 7), 4.0)
    book.add_split("BBB", date(2024, 3, 8), 0.1)
    book.add_split("CCC", date(2024, 3, 11), 1.5)
    book.add_split("AAA", date(2024, 1, 2), 2.0)  # before the window
    async with AlpacaDataFake(book, key_id="kid", secret="sec") as data:
        source = AlpacaSplits("kid", "sec", base_url=data.url, config=SourceConfig(max_attempts=1))
        try:
            found = await source.splits(["AAA", "BBB", "CCC"], date(2024, 3, 7), date(2024, 3, 13))
        finally:
            source.close()
    assert [(s.symbol, s.ex_date, s.text()) for s in found] == [
        ("AAA", date(2024, 3, 7), "4:1"),
        ("BBB", date(2024, 3, 8), "1:10"),
        ("CCC", date(2024, 3, 11), "3:2"),
    ]


async def test_a_refusal_is_a_source_error_without_the_keys(fake):
    fake.fail_corporate_actions(status=403)
    source = _source(fake)
    try:
        with pytest.raises(SourceError) as err:
            await source.splits(["AAA"], date(2026, 3, 1), date(2026, 3, 8))
    finally:
        source.close()
    assert "403" in str(err.value) or err.value.kind == "auth"
    assert fake.secret_key not in str(err.value) and fake.key_id not in str(err.value)


async def test_a_429_waits_its_retry_after_capped_by_the_max_backoff(fake):
    """The corporate-actions client dropped a 429's Retry-After: the caller's retry came
    after its own short backoff (0.5 s at first), into the same throttle. It waits the
    Retry-After, as the data feed and the broker do, up to `backoff_max_s`."""
    fake.announce_split("AAA", date(2026, 3, 2), 4, 1)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    config = SourceConfig(max_attempts=3, timeout_s=5.0, backoff_base_s=0.5, backoff_max_s=30.0)
    source = AlpacaSplits(fake.key_id, fake.secret_key, base_url=fake.url, config=config)
    source.caller._sleep = sleep  # no test sleeps
    try:
        fake.throttle(1, retry_after="7")
        found = await source.splits(["AAA"], date(2026, 3, 1), date(2026, 3, 8))
        fake.throttle(1, retry_after="120")
        again = await source.splits(["AAA"], date(2026, 3, 1), date(2026, 3, 8))
    finally:
        source.close()
    assert found == again == [Split("AAA", date(2026, 3, 2), 4.0)]
    assert sleeps == [7.0, 30.0]


def test_a_malformed_split_is_refused_naming_where():
    body = {"reverse_splits": [{"symbol": "XYZ", "old_rate": 10, "ex_date": "2026-03-02"}]}
    with pytest.raises(ValueError, match=r"reverse_splits\[0\] \(XYZ\): no field 'new_rate'"):
        parse_splits(body, ["XYZ"])
    body = {"forward_splits": [{"symbol": "XYZ", "new_rate": 0, "old_rate": 1, "ex_date": "x"}]}
    with pytest.raises(ValueError, match=r"forward_splits\[0\] \(XYZ\)"):
        parse_splits(body, ["XYZ"])


def test_cash_in_lieu_pays_the_fraction_and_keeps_the_average():
    pf = Portfolio(("XYZ",), 1_000.0)
    pf.quantity[0], pf.avg_price[0] = 6.5, 80.0
    shares, cash = pf.cash_in_lieu(0, 100.0)
    assert (shares, cash) == (0.5, 50.0)
    assert pf.quantity_of("XYZ") == 6.0 and pf.cash == 1_050.0
    assert pf.avg_price[0] == 80.0 and pf.realized_pnl[0] == pytest.approx(10.0)
    assert pf.cash_in_lieu(0, 100.0) == (0.0, 0.0)  # whole shares: nothing
    assert np.isfinite(pf.revalue())


def test_the_data_host_follows_the_trading_host():
    from tradingd.config import AlpacaConfig

    assert AlpacaConfig().effective_data_url == "https://data.alpaca.markets"
    assert AlpacaConfig(base_url="https://api.alpaca.markets").effective_data_url == (
        "https://data.alpaca.markets"
    )
    # A proxy or a test server answers both APIs; an explicit data_url wins.
    assert AlpacaConfig(base_url="http://127.0.0.1:9").effective_data_url == "http://127.0.0.1:9"
    given = AlpacaConfig(data_url="https://proxy.example/data")
    assert given.effective_data_url == "https://proxy.example/data"


def test_the_next_session_skips_weekends_and_holidays():
    """The engine holds a symbol at the bar before its ex-date: the next session comes from
    the exchange's calendar (Thanksgiving 2026 is Thursday 26 November)."""
    from datetime import UTC, datetime

    from tradingd.clock.live import LiveClock
    from tradingd.config import LiveConfig

    clock = LiveClock(LiveConfig())
    wednesday = datetime(2026, 11, 25, tzinfo=UTC)
    friday = datetime(2026, 12, 4, tzinfo=UTC)
    assert clock.session_day(wednesday) == date(2026, 11, 25)
    assert clock.next_session_day(wednesday) == date(2026, 11, 27)
    assert clock.next_session_day(friday) == date(2026, 12, 7)
    accelerated = LiveClock(LiveConfig(bars_per_second=10.0), [wednesday, friday])
    assert accelerated.next_session_day(wednesday) == date(2026, 12, 4)
    assert accelerated.next_session_day(friday) is None
