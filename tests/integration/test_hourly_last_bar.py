"""The newest closed hourly bar, through the collector and each vendor client against its
loopback fake: 60m bars start on the 09:30 open, not on the clock hour, and the session's
last one (15:30 New York) closes at 16:00."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from fakes import BarBook
from fakes.alpaca_data_server import AlpacaDataFake
from fakes.alphavantage_server import AlphaVantageFake
from fakes.yahoo_server import YahooFake

from tradingd.feeds.alpaca_data import AlpacaDataClient
from tradingd.feeds.alphavantage import AlphaVantageClient
from tradingd.feeds.collector import MarketDataCollector
from tradingd.feeds.resilience import ResilientCaller, SourceConfig
from tradingd.feeds.yahoo import YahooClient

AV_KEY = "AVKEY1234567"


async def no_sleep(_: float) -> None:
    return None


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def caller(name: str) -> ResilientCaller:
    return ResilientCaller(name, SourceConfig(max_attempts=1, backoff_base_s=0.0), sleep=no_sleep)


# (now, the newest closed 60m label in UTC, how many 60m bars of that session have closed)
CASES = [
    # 16:05 EDT, after the close: the 15:30 hour closed at 16:00 (seven bars).
    (utc(2024, 3, 12, 20, 5), "2024-03-12 19:30", 7),
    # 11:40 EDT: the 09:30 and 10:30 hours have closed, the 10:30 one at 11:30.
    (utc(2024, 3, 12, 15, 40), "2024-03-12 14:30", 2),
    # 16:05 EST, the Friday before the change to daylight time.
    (utc(2024, 3, 8, 21, 5), "2024-03-08 20:30", 7),
    # 10:30 EST exactly: the first hour closes now.
    (utc(2024, 3, 8, 15, 30), "2024-03-08 14:30", 1),
]


@pytest.mark.parametrize(("now", "last", "today"), CASES)
async def test_collector_serves_the_newest_closed_hour_from_every_source(now, last, today):
    book = BarBook(now=now)
    async with (
        YahooFake(book) as yf,
        AlphaVantageFake(book, api_key=AV_KEY) as avf,
        AlpacaDataFake(book, key_id="kid-123456", secret="secret-123456") as apf,
    ):
        clock = lambda: book.now  # noqa: E731
        mdc = MarketDataCollector(
            yahoo=YahooClient(base_url=yf.url, caller=caller("yahoo"), clock=clock),
            alphavantage=AlphaVantageClient(
                api_key=AV_KEY, base_url=avf.url, caller=caller("alphavantage"), clock=clock
            ),
            alpaca=AlpacaDataClient(
                api_key="kid-123456",
                secret_key="secret-123456",
                base_url=apf.url,
                caller=caller("alpaca"),
                clock=clock,
            ),
            clock=clock,
        )
        async with mdc:
            got = {
                "yahoo": await mdc.get_yahoo_finance_data("AAA", period="1d", interval="60m"),
                "alphavantage": await mdc.get_alpha_vantage_intraday_data("AAA", interval="60min"),
                "alpaca": (
                    await mdc.get_multiple_symbols_data(
                        ["AAA"], source="alpaca", period="1d", interval="60m"
                    )
                )["AAA"],
            }
    session_day = pd.Timestamp(last).normalize()
    for source, df in got.items():
        assert df["time"].iloc[-1] == pd.Timestamp(last), source
        assert (df["time"] >= session_day).sum() == today, source
        assert (df["time"].dt.minute == 30).all(), source  # on the open's grid
